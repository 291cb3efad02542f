//! `nijigen image`: stage 1 alone, an SDXL-family still from a prompt (or an init image).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::common::{explain, random_seed, resolve_device, Setting};
use super::find::{Search, Slot};
use super::progress::{Progress, Summary};
use super::settings::{self, Layers, Pick};
use super::WithHint;
use crate::media::output::unique_path;
use crate::media::png::write_png;
use crate::pipeline::image::{self, InitImage, SdxlFiles, SdxlRequest, SizeCond};
use crate::pipeline::output::png_params;
use crate::pipeline::plan::{EncoderDevice, MemoryOptions, Offload};
use crate::pipeline::RunOptions;
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Clone, Debug, Default, Args)]
#[command(after_help = "Examples:\n  \
    nijigen image --model illustriousXL_v01.safetensors -p '1girl, cherry blossoms, masterpiece' -n 'lowres, bad anatomy' -o girl.png\n  \
    nijigen image --model sdxl-unet-Q4_K_M.gguf --clip-l clip_l.safetensors --clip-g clip_g.safetensors --vae sdxl_vae.safetensors -p '...'\n  \
    nijigen image --model animagine-xl-4.0.safetensors -p '...' --init-image sketch.png --strength 0.6")]
pub struct ImageArgs {
    /// SDXL-family checkpoint (.safetensors), UNet-only file (.gguf / .safetensors), or a
    /// diffusers folder.
    /// A path, or a file name in --models-dir / --comfyui; default: `model` in nijigen.toml.
    #[arg(long, short = 'm', value_name = "FILE", help_heading = "Models")]
    pub model: Option<PathBuf>,
    /// CLIP-L text encoder (HF names), when the model file has none or to replace it.
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub clip_l: Option<PathBuf>,
    /// OpenCLIP bigG text encoder (HF or open_clip names).
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub clip_g: Option<PathBuf>,
    /// SDXL VAE (ldm or diffusers names).
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub vae: Option<PathBuf>,
    /// LoRA FILE[:WEIGHT] (kohya / LyCORIS LoCon / PEFT), repeatable; weight defaults to 1.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = super::common::parse_lora, help_heading = "Models")]
    pub lora: Vec<(PathBuf, f32)>,

    // The defaults in "[default: ..]" are those of `settings` (a test checks they agree).
    /// What to draw. Weights: (text:1.2), (text) = 1.1, [text] = 1/1.1, \( \) for literal
    /// parentheses [default: ""]
    #[arg(long, short = 'p', help_heading = "Prompt")]
    pub prompt: Option<String>,
    /// What to avoid [default: ""]
    #[arg(long, short = 'n', help_heading = "Prompt")]
    pub negative_prompt: Option<String>,

    /// Width in pixels (multiple of 8) [default: 1024]
    #[arg(long, short = 'W', help_heading = "Image")]
    pub width: Option<u32>,
    /// Height in pixels (multiple of 8) [default: 1024]
    #[arg(long, short = 'H', help_heading = "Image")]
    pub height: Option<u32>,
    /// Images drawn together from one noise tensor (as a ComfyUI batch) [default: 1]
    #[arg(long, help_heading = "Image")]
    pub batch: Option<usize>,
    /// img2img: start from this image (resized and center-cropped to the output size).
    #[arg(long, value_name = "FILE", help_heading = "Image")]
    pub init_image: Option<PathBuf>,
    /// img2img denoise strength in (0, 1]: how much of the init image is redrawn [default: 0.6]
    #[arg(long, help_heading = "Image")]
    pub strength: Option<f32>,
    /// SDXL size conditioning: original size WxH (default: the image size).
    #[arg(long, value_name = "WxH", value_parser = parse_pair, help_heading = "Image")]
    pub original_size: Option<(u32, u32)>,
    /// SDXL size conditioning: crop LEFTxTOP (default 0x0).
    #[arg(long, value_name = "LEFTxTOP", value_parser = parse_pair, help_heading = "Image")]
    pub crop: Option<(u32, u32)>,
    /// SDXL size conditioning: target size WxH (default: the image size).
    #[arg(long, value_name = "WxH", value_parser = parse_pair, help_heading = "Image")]
    pub target_size: Option<(u32, u32)>,

    /// Sampling steps [default: 25]
    #[arg(long, help_heading = "Sampling")]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (1 = no negative prompt pass) [default: 6]
    #[arg(long, help_heading = "Sampling")]
    pub cfg: Option<f32>,
    /// Sampler (ComfyUI's): euler, euler_ancestral, heun, dpmpp_2m, dpmpp_sde, dpmpp_2m_sde,
    /// dpmpp_3m_sde, res_multistep, er_sde, ddim, lcm, uni_pc, uni_pc_bh2 [default: euler]
    #[arg(long, value_parser = super::common::parse_sampler, help_heading = "Sampling")]
    pub sampler: Option<SamplerKind>,
    /// Scheduler (ComfyUI's): normal, karras, exponential, simple, sgm_uniform, ddim_uniform,
    /// beta, linear_quadratic, kl_optimal [default: normal]
    #[arg(long, value_parser = super::common::parse_scheduler, help_heading = "Sampling")]
    pub scheduler: Option<Scheduler>,
    /// Seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Noise generator: torch (torch.randn on the CPU, as ComfyUI; same seed, same noise)
    /// [default: torch]
    #[arg(long, value_parser = [settings::RNG], help_heading = "Sampling")]
    pub rng: Option<String>,

    /// Output PNG (numbered if it exists, unless --overwrite; with --batch, _01, _02, ...)
    /// [default: nijigen.png]
    #[arg(long, short = 'o', help_heading = "Output")]
    pub output: Option<PathBuf>,
    /// Replace existing files.
    #[arg(long, help_heading = "Output")]
    pub overwrite: bool,
    /// Print a JSON summary on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// Compute device: auto (the first CUDA GPU of a CUDA build, else the CPU), cpu, cuda,
    /// cuda:N. `nijigen devices` lists them [default: auto]
    #[arg(long, help_heading = "Performance")]
    pub device: Option<String>,
    /// CPU threads (default: all cores) [default: 0]
    #[arg(long, short = 't', help_heading = "Performance")]
    pub threads: Option<usize>,
    /// Decode with the VAE in tiles of SIZE pixels (less memory; seams blended).
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub vae_tile: Option<u32>,
    /// Device memory the run may use: 12G, 11.5GiB, 900M (binary units); the plan must fit it
    /// (checked before computing). Default on a GPU: its free memory less 256 MiB; on the CPU:
    /// none (with a budget, --device cpu simulates the device).
    #[arg(long, value_name = "SIZE", value_parser = super::common::parse_budget, help_heading = "Memory")]
    pub vram_budget: Option<u64>,
    /// Weight offloading: auto (the planner's choice), none (all resident), blocks (stream
    /// the denoiser's blocks), full (everything on the CPU) [default: auto]
    #[arg(long, value_parser = super::common::parse_offload, help_heading = "Memory")]
    pub offload: Option<Offload>,
    /// Where the text encoders (and CLIP vision) run: auto (the planner's choice), gpu, cpu
    /// [default: auto]
    #[arg(long, value_parser = super::common::parse_encoder_device, help_heading = "Memory")]
    pub text_encoder_device: Option<EncoderDevice>,
}

/// `nijigen image` resolved: each value from its flag, else nijigen.toml (`[image]` and the
/// top-level keys), else [`settings::IMAGE`]; made once, never changed. The settings a config
/// file can give carry their [`Source`](super::common::Source).
#[derive(Clone, Debug)]
pub struct ImageSettings {
    /// As given (a bare name is found when the run starts).
    pub model: Setting<PathBuf>,
    pub clip_l: Option<Setting<PathBuf>>,
    pub clip_g: Option<Setting<PathBuf>>,
    pub vae: Option<Setting<PathBuf>>,
    pub lora: Vec<(PathBuf, f32)>,
    pub prompt: String,
    pub negative_prompt: Setting<String>,
    pub width: Setting<u32>,
    pub height: Setting<u32>,
    pub batch: usize,
    pub init_image: Option<PathBuf>,
    pub strength: f32,
    pub original_size: Option<(u32, u32)>,
    pub crop: Option<(u32, u32)>,
    pub target_size: Option<(u32, u32)>,
    pub steps: Setting<usize>,
    pub cfg: Setting<f32>,
    pub sampler: Setting<SamplerKind>,
    pub scheduler: Setting<Scheduler>,
    /// `None`: a random one, drawn when the run starts.
    pub seed: Option<u64>,
    pub output: PathBuf,
    pub overwrite: bool,
    pub json: bool,
    pub device: String,
    pub threads: Setting<usize>,
    pub vae_tile: Option<u32>,
    pub vram_budget: Option<Setting<u64>>,
    pub offload: Offload,
    pub text_encoder_device: EncoderDevice,
}

impl ImageSettings {
    /// Resolves `args` over `layers`; fails without a model.
    pub fn resolve(args: ImageArgs, layers: &Layers) -> anyhow::Result<ImageSettings> {
        let l = &layers.loaded;
        let f = &l.file.image;
        let d = settings::IMAGE;
        let path = |flag, given: Option<PathBuf>, file: &Option<PathBuf>| {
            Pick::flag(flag, given).file(l, file.clone()).or_none()
        };
        let model = path("--model", args.model, &f.model).ok_or_else(|| WithHint {
            error: "no model: pass --model FILE".into(),
            hint: "or set `model` under [image] in nijigen.toml (`nijigen config` shows it)".into(),
        })?;
        Ok(ImageSettings {
            model,
            clip_l: path("--clip-l", args.clip_l, &f.clip_l),
            clip_g: path("--clip-g", args.clip_g, &f.clip_g),
            vae: path("--vae", args.vae, &f.vae),
            lora: args.lora,
            prompt: args.prompt.unwrap_or_else(|| settings::PROMPT.into()),
            negative_prompt: Pick::flag("--negative-prompt", args.negative_prompt)
                .file(l, f.negative_prompt.clone())
                .or(d.negative_prompt.into()),
            width: Pick::flag("--width", args.width)
                .file(l, f.width)
                .or(d.width),
            height: Pick::flag("--height", args.height)
                .file(l, f.height)
                .or(d.height),
            batch: args.batch.unwrap_or(d.batch),
            init_image: args.init_image,
            strength: args.strength.unwrap_or(d.strength),
            original_size: args.original_size,
            crop: args.crop,
            target_size: args.target_size,
            steps: Pick::flag("--steps", args.steps)
                .file(l, f.steps)
                .or(d.steps),
            cfg: Pick::flag("--cfg", args.cfg).file(l, f.cfg).or(d.cfg),
            sampler: Pick::flag("--sampler", args.sampler)
                .file(l, settings::file_sampler(&f.sampler, "image.sampler")?)
                .or(d.sampler),
            scheduler: Pick::flag("--scheduler", args.scheduler)
                .file(
                    l,
                    settings::file_scheduler(&f.scheduler, "image.scheduler")?,
                )
                .or(d.scheduler),
            seed: args.seed,
            output: args.output.unwrap_or_else(|| d.output.into()),
            overwrite: args.overwrite,
            json: args.json,
            device: args.device.unwrap_or_else(|| settings::DEVICE.into()),
            threads: layers.threads(args.threads),
            vae_tile: args.vae_tile,
            vram_budget: layers.vram_budget(args.vram_budget)?,
            offload: args.offload.unwrap_or_default(),
            text_encoder_device: args.text_encoder_device.unwrap_or_default(),
        })
    }
}

fn parse_pair(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once(['x', 'X', ','])
        .ok_or_else(|| format!("'{s}': expected AxB, e.g. 1024x1024"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("'{s}': expected AxB with whole numbers"))
    };
    Ok((num(a)?, num(b)?))
}

/// Output paths for a batch: `out.png`, or `out_01.png`, `out_02.png`, ...; each one numbered
/// further when it exists and `overwrite` is off.
pub fn batch_paths(output: &Path, batch: usize, overwrite: bool) -> Vec<PathBuf> {
    if batch <= 1 {
        return vec![unique_path(output, overwrite)];
    }
    let stem = output
        .file_stem()
        .map_or_else(|| "nijigen".into(), |s| s.to_string_lossy().into_owned());
    let ext = output
        .extension()
        .map_or_else(|| "png".into(), |s| s.to_string_lossy().into_owned());
    (1..=batch)
        .map(|i| {
            unique_path(
                &output.with_file_name(format!("{stem}_{i:02}.{ext}")),
                overwrite,
            )
        })
        .collect()
}

/// The request `s` describes (the init image read from its file).
pub(super) fn request(s: &ImageSettings, seed: u64) -> anyhow::Result<SdxlRequest> {
    let init_image = match &s.init_image {
        Some(path) => {
            let (rgb, width, height) = crate::media::image::load_rgb(path)?;
            Some(InitImage { rgb, width, height })
        }
        None => None,
    };
    let (width, height) = (s.width.value, s.height.value);
    let size_cond = (s.original_size.is_some() || s.crop.is_some() || s.target_size.is_some())
        .then(|| {
            let d = SizeCond::for_image(width, height);
            SizeCond {
                original: s.original_size.unwrap_or(d.original),
                crop: s.crop.unwrap_or(d.crop),
                target: s.target_size.unwrap_or(d.target),
            }
        });
    Ok(SdxlRequest {
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.value.clone(),
        width,
        height,
        steps: s.steps.value,
        cfg: s.cfg.value,
        sampler: s.sampler.value,
        scheduler: s.scheduler.value,
        seed,
        batch: s.batch,
        init_image,
        strength: s.strength,
        vae_tile: s.vae_tile,
        size_cond,
    })
}

/// The weight files `s` names, each found with `find` (a path as given, else a bare name in
/// the models folders).
pub(super) fn files(s: &ImageSettings, find: &Search) -> anyhow::Result<SdxlFiles> {
    Ok(SdxlFiles {
        model: find.resolve(&s.model.value, Slot::Checkpoint, "--model")?,
        clip_l: find.resolve_opt(s.clip_l.as_ref(), Slot::TextEncoder, "--clip-l")?,
        clip_g: find.resolve_opt(s.clip_g.as_ref(), Slot::TextEncoder, "--clip-g")?,
        vae: find.resolve_opt(s.vae.as_ref(), Slot::Vae, "--vae")?,
        loras: find.loras(&s.lora, "--lora")?,
    })
}

/// Where the run may compute and put its weights.
pub(super) fn memory_options(s: &ImageSettings) -> anyhow::Result<MemoryOptions> {
    Ok(MemoryOptions {
        fp8_cpu: Default::default(),
        device: resolve_device(&s.device)?,
        vram_budget: s.vram_budget.as_ref().map(|b| b.value),
        offload: s.offload,
        encoders: s.text_encoder_device,
    })
}

pub fn run(s: &ImageSettings, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let memory = memory_options(s)?;
    let seed = s.seed.unwrap_or_else(random_seed);
    let req = request(s, seed)?;
    // The request is checked before any model file is looked for (a bad size fails first).
    image::validate(&req).map_err(explain)?;
    let job = image::prepare(files(s, find)?, req, &memory).map_err(explain)?;
    let memory = job.memory();
    let opts = RunOptions {
        fp8_cpu: Default::default(),
        threads: s.threads.value,
        memory: memory.clone(),
        cancel: Some(super::progress::cancel_flag()),
    };
    if !quiet && !s.json {
        eprintln!("seed {seed}");
    }
    let start = Instant::now();
    let mut progress = Progress::new(quiet);
    let out = job.run(&opts, &mut |e| progress.event(e));
    progress.finish();
    let out = out.map_err(explain)?;

    let paths = batch_paths(&s.output, s.batch, s.overwrite);
    for (i, (img, path)) in out.images.iter().zip(&paths).enumerate() {
        write_png(
            path,
            &img.rgb,
            img.width,
            img.height,
            &png_params(&job.files, &job.request, i),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = Summary {
        cache: None,
        outputs: paths.clone(),
        seed,
        timings: out.timings.clone(),
        total_s: start.elapsed().as_secs_f64(),
        peak_ram_bytes: super::progress::peak_rss_bytes(),
        device: super::progress::DeviceUse::of(memory.as_ref()),
    };
    let mut stdout = std::io::stdout().lock();
    if s.json {
        writeln!(stdout, "{}", serde_json::to_string(&summary)?)?;
    } else if !quiet {
        for p in &paths {
            writeln!(stdout, "wrote {}", p.display())?;
        }
        writeln!(stdout, "{}", summary.line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_pairs() {
        assert_eq!(parse_pair("1024x768").unwrap(), (1024, 768));
        assert_eq!(parse_pair("0,16").unwrap(), (0, 16));
        assert!(parse_pair("1024").is_err());
        assert!(parse_pair("ax1").is_err());
    }

    /// `nijigen image ARGS` over `layers`.
    fn resolve(args: &[&str], layers: &Layers) -> anyhow::Result<ImageSettings> {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: ImageArgs,
        }
        let a = Wrap::try_parse_from(std::iter::once("image").chain(args.iter().copied()))?.a;
        ImageSettings::resolve(a, layers)
    }

    #[test]
    fn a_flag_wins_over_the_config_file_which_wins_over_the_default() {
        use super::super::common::Source;
        use super::super::settings::Loaded;
        let cfg = Path::new("/etc/nijigen.toml");
        let file = Layers {
            loaded: Loaded::from_text(
                cfg,
                "threads = 2\n[image]\nmodel = \"a.safetensors\"\nsteps = 12\n\
                 sampler = \"dpmpp_2m\"\nnegative_prompt = \"lowres\"\n",
            ),
            ..Layers::default()
        };
        let from_file = Source::File(cfg.into());
        let s = resolve(&["--steps", "30", "-m", "b.safetensors"], &file).unwrap();
        assert_eq!(
            (s.steps.value, &s.steps.source),
            (30, &Source::Flag("--steps"))
        );
        assert_eq!(s.model.value, Path::new("b.safetensors"));
        assert_eq!(s.model.source, Source::Flag("--model"));
        assert_eq!(
            (s.sampler.value, &s.sampler.source),
            (SamplerKind::Dpmpp2m, &from_file)
        );
        assert_eq!(s.negative_prompt.value, "lowres");
        assert_eq!((s.threads.value, &s.threads.source), (2, &from_file));
        // What neither gives: the defaults.
        assert_eq!(
            (s.cfg.value, &s.cfg.source),
            (settings::IMAGE.cfg, &Source::Default)
        );
        assert_eq!(s.width.value, settings::IMAGE.width);
        assert_eq!(s.output, Path::new(settings::IMAGE.output));
        assert_eq!((s.prompt.as_str(), s.device.as_str()), ("", "auto"));
        let s = resolve(&[], &file).unwrap();
        assert_eq!((s.steps.value, &s.steps.source), (12, &from_file));
        assert_eq!(
            (s.model.value.as_path(), &s.model.source),
            (Path::new("a.safetensors"), &from_file)
        );
        // No file: the defaults, and no model is an error (not an empty path).
        let none = Layers::default();
        let e = resolve(&["-p", "x"], &none).unwrap_err();
        assert_eq!(e.to_string(), "no model: pass --model FILE");
        let s = resolve(&["-m", "a.safetensors"], &none).unwrap();
        assert_eq!(
            (s.steps.value, &s.steps.source),
            (settings::IMAGE.steps, &Source::Default)
        );
        assert_eq!(s.negative_prompt.value, "");
        // `--model ""` is refused by clap, not taken as "not given".
        assert!(resolve(&["-m", ""], &none).is_err());
        // A bad sampler in the file names its key.
        let bad = Layers {
            loaded: Loaded::from_text(cfg, "[image]\nsampler = \"nope\"\n"),
            ..Layers::default()
        };
        let e = resolve(&["-m", "a.safetensors"], &bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("image.sampler in the config file"),
            "{e}"
        );
    }

    #[test]
    fn batch_outputs_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cat.png");
        assert_eq!(batch_paths(&out, 1, false), vec![out.clone()]);
        let many = batch_paths(&out, 3, false);
        assert_eq!(many[0], dir.path().join("cat_01.png"));
        assert_eq!(many[2], dir.path().join("cat_03.png"));
        std::fs::write(&out, b"x").unwrap();
        assert_ne!(batch_paths(&out, 1, false)[0], out);
        assert_eq!(batch_paths(&out, 1, true)[0], out);
    }
}
