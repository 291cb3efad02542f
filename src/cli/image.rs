//! `nijigen image`: stage 1 alone, an SDXL-family still from a prompt (or an init image).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::find::Search;
use super::progress::{Progress, Summary};
use super::WithHint;
use crate::media::output::unique_path;
use crate::media::png::write_png;
use crate::media::{GenerationParams, LoraRef};
use crate::pipeline::sdxl::{self, InitImage, SdxlFiles, SdxlRequest, SizeCond};
use crate::pipeline::{Memory, PipelineError, RunOptions};
use crate::runtime::plan::{Component, Plan};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    nijigen image --model illustriousXL_v01.safetensors -p '1girl, cherry blossoms, masterpiece' -n 'lowres, bad anatomy' -o girl.png\n  \
    nijigen image --model sdxl-unet-Q4_K_M.gguf --clip-l clip_l.safetensors --clip-g clip_g.safetensors --vae sdxl_vae.safetensors -p '...'\n  \
    nijigen image --model animagine-xl-4.0.safetensors -p '...' --init-image sketch.png --strength 0.6")]
pub struct ImageArgs {
    /// SDXL-family checkpoint (.safetensors), UNet-only file (.gguf / .safetensors), or a
    /// diffusers folder.
    /// A path, or a file name in --models-dir / --comfyui; default: `model` in nijigen.toml.
    #[arg(long, short = 'm', value_name = "FILE", default_value = "", hide_default_value = true, value_parser = super::find::any_path, help_heading = "Models")]
    pub model: PathBuf,
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
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = parse_lora, help_heading = "Models")]
    pub lora: Vec<(PathBuf, f32)>,

    /// What to draw. Weights: (text:1.2), (text) = 1.1, [text] = 1/1.1, \( \) for literal
    /// parentheses.
    #[arg(long, short = 'p', default_value = "", help_heading = "Prompt")]
    pub prompt: String,
    /// What to avoid.
    #[arg(long, short = 'n', default_value = "", help_heading = "Prompt")]
    pub negative_prompt: String,

    /// Width in pixels (multiple of 8).
    #[arg(long, short = 'W', default_value_t = 1024, help_heading = "Image")]
    pub width: u32,
    /// Height in pixels (multiple of 8).
    #[arg(long, short = 'H', default_value_t = 1024, help_heading = "Image")]
    pub height: u32,
    /// Images drawn together from one noise tensor (as a ComfyUI batch).
    #[arg(long, default_value_t = 1, help_heading = "Image")]
    pub batch: usize,
    /// img2img: start from this image (resized and center-cropped to the output size).
    #[arg(long, value_name = "FILE", help_heading = "Image")]
    pub init_image: Option<PathBuf>,
    /// img2img denoise strength in (0, 1]: how much of the init image is redrawn.
    #[arg(long, default_value_t = 0.6, help_heading = "Image")]
    pub strength: f32,
    /// SDXL size conditioning: original size WxH (default: the image size).
    #[arg(long, value_name = "WxH", value_parser = parse_pair, help_heading = "Image")]
    pub original_size: Option<(u32, u32)>,
    /// SDXL size conditioning: crop LEFTxTOP (default 0x0).
    #[arg(long, value_name = "LEFTxTOP", value_parser = parse_pair, help_heading = "Image")]
    pub crop: Option<(u32, u32)>,
    /// SDXL size conditioning: target size WxH (default: the image size).
    #[arg(long, value_name = "WxH", value_parser = parse_pair, help_heading = "Image")]
    pub target_size: Option<(u32, u32)>,

    /// Sampling steps.
    #[arg(long, default_value_t = 25, help_heading = "Sampling")]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = no negative prompt pass).
    #[arg(long, default_value_t = 6.0, help_heading = "Sampling")]
    pub cfg: f32,
    /// Sampler: euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, lcm, uni_pc.
    #[arg(long, default_value = "euler", value_parser = parse_sampler, help_heading = "Sampling")]
    pub sampler: SamplerKind,
    /// Scheduler: normal, karras, exponential, simple, sgm_uniform.
    #[arg(long, default_value = "normal", value_parser = parse_scheduler, help_heading = "Sampling")]
    pub scheduler: Scheduler,
    /// Seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Noise generator: torch (torch.randn on the CPU, as ComfyUI; same seed, same noise).
    #[arg(long, default_value = "torch", value_parser = ["torch"], help_heading = "Sampling")]
    pub rng: String,

    /// Output PNG (numbered if it exists, unless --overwrite; with --batch, _01, _02, ...).
    #[arg(
        long,
        short = 'o',
        default_value = "nijigen.png",
        help_heading = "Output"
    )]
    pub output: PathBuf,
    /// Replace existing files.
    #[arg(long, help_heading = "Output")]
    pub overwrite: bool,
    /// Print a JSON summary on stdout.
    #[arg(long, help_heading = "Output")]
    pub json: bool,

    /// Compute device: auto (the first CUDA GPU of a CUDA build, else the CPU), cpu, cuda,
    /// cuda:N. `nijigen devices` lists them.
    #[arg(long, default_value = "auto", help_heading = "Performance")]
    pub device: String,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0, help_heading = "Performance")]
    pub threads: usize,
    /// Decode with the VAE in tiles of SIZE pixels (less memory; seams blended).
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub vae_tile: Option<u32>,
    /// Device memory the run may use: 12G, 11.5GiB, 900M (binary units); the plan must fit it
    /// (checked before computing). Default on a GPU: its free memory less 256 MiB; on the CPU:
    /// none (with a budget, --device cpu simulates the device).
    #[arg(long, value_name = "SIZE", value_parser = crate::cli::plan::parse_budget, help_heading = "Memory")]
    pub vram_budget: Option<u64>,
    /// Weight offloading: auto (the planner's choice), none (all resident), blocks (stream
    /// the denoiser's blocks), full (everything on the CPU).
    #[arg(long, default_value = "auto", value_parser = crate::cli::plan::parse_offload, help_heading = "Memory")]
    pub offload: crate::runtime::plan::Offload,
    /// Where the text encoders (and CLIP vision) run: auto (the planner's choice), gpu, cpu.
    #[arg(long, default_value = "auto", value_parser = crate::cli::plan::parse_encoder_device, help_heading = "Memory")]
    pub text_encoder_device: crate::runtime::plan::EncoderDevice,
}

pub(super) fn parse_lora(s: &str) -> Result<(PathBuf, f32), String> {
    crate::lora::parse_lora_spec(s).map_err(|e| e.to_string())
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

pub(super) fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse::<SamplerKind>().map_err(|e| e.to_string())
}

pub(super) fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    s.parse::<Scheduler>().map_err(|e| e.to_string())
}

/// A seed from the clock and the process (not cryptographic; printed so it can be reused).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xFFFF_FFFF
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

/// Adds hints to pipeline errors a user can act on.
pub(super) fn explain(e: PipelineError) -> anyhow::Error {
    let hint = match &e {
        PipelineError::WrongModel { .. } | PipelineError::Mismatch(_) => {
            "`nijigen info FILE` shows what a weight file contains"
        }
        PipelineError::MissingComponent { .. } => {
            "a path, or a bare file name found in --models-dir, NIJIGEN_MODELS or --comfyui"
        }
        PipelineError::Request(_) => "`--help` lists each option's accepted values",
        _ => return anyhow::Error::new(e),
    };
    anyhow::Error::new(WithHint {
        error: e.to_string(),
        hint: hint.into(),
    })
}

/// The request `args` describe (the init image read from its file).
pub(super) fn request(args: &ImageArgs, seed: u64) -> anyhow::Result<SdxlRequest> {
    let init_image = match &args.init_image {
        Some(path) => {
            let (rgb, width, height) = crate::media::image::load_rgb(path)?;
            Some(InitImage { rgb, width, height })
        }
        None => None,
    };
    let size_cond = (args.original_size.is_some()
        || args.crop.is_some()
        || args.target_size.is_some())
    .then(|| {
        let d = SizeCond::for_image(args.width, args.height);
        SizeCond {
            original: args.original_size.unwrap_or(d.original),
            crop: args.crop.unwrap_or(d.crop),
            target: args.target_size.unwrap_or(d.target),
        }
    });
    Ok(SdxlRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width,
        height: args.height,
        steps: args.steps,
        cfg: args.cfg,
        sampler: args.sampler,
        scheduler: args.scheduler,
        seed,
        batch: args.batch,
        init_image,
        strength: args.strength,
        vae_tile: args.vae_tile,
        size_cond,
    })
}

/// The weight files `args` name.
pub(super) fn files(args: &ImageArgs) -> SdxlFiles {
    SdxlFiles {
        model: args.model.clone(),
        clip_l: args.clip_l.clone(),
        clip_g: args.clip_g.clone(),
        vae: args.vae.clone(),
        loras: args.lora.clone(),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The A1111 `parameters` of image `index` of a batch.
pub(super) fn png_params(args: &ImageArgs, req: &SdxlRequest, index: usize) -> GenerationParams {
    let mut params = GenerationParams::new(req.prompt.clone());
    params.negative = req.negative_prompt.clone();
    params.steps = req.steps as u32;
    params.sampler = req.sampler.name().into();
    params.scheduler = req.scheduler.name().into();
    params.cfg = req.cfg;
    params.seed = req.seed;
    params.width = req.width;
    params.height = req.height;
    params.model = stem(&args.model);
    params.loras = args
        .lora
        .iter()
        .map(|(p, w)| LoraRef {
            name: stem(p),
            weight: *w,
            hash: None,
        })
        .collect();
    if req.init_image.is_some() {
        params
            .extra
            .push(("Denoising strength".into(), format!("{}", req.strength)));
    }
    if args.batch > 1 {
        params
            .extra
            .push(("Batch size".into(), args.batch.to_string()));
        params.extra.push(("Batch pos".into(), index.to_string()));
    }
    if let Some(t) = req.vae_tile {
        params.extra.push(("VAE tile".into(), t.to_string()));
    }
    params
}

/// Run options with the process-wide Ctrl-C flag and the memory plan (if any).
pub(super) fn run_options(threads: usize, memory: Option<&(Memory, Plan)>) -> RunOptions {
    RunOptions {
        threads,
        memory: memory.map(|(m, _)| m.clone()),
        cancel: Some(super::progress::cancel_flag()),
    }
}

/// The planner's VAE tile for `component` when the user chose none.
pub(super) fn planned_tile(
    chosen: Option<u32>,
    memory: Option<&(Memory, Plan)>,
    component: Component,
) -> Option<u32> {
    chosen.or_else(|| {
        memory
            .and_then(|(_, p)| p.get(component))
            .and_then(|c| c.tile)
    })
}

pub fn run(mut args: ImageArgs, quiet: bool, find: &Search) -> anyhow::Result<()> {
    super::plan::resolve_device(&args.device)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut req = request(&args, seed)?;
    sdxl::validate(&req).map_err(explain)?;
    super::config::resolve_image(&mut args, find)?;
    let memory = super::plan::memory_image(&args)?;
    req.vae_tile = planned_tile(req.vae_tile, memory.as_ref(), Component::VaeSdxl);
    let files = files(&args);
    let opts = run_options(args.threads, memory.as_ref());
    if !quiet && !args.json {
        eprintln!("seed {seed}");
    }
    let start = Instant::now();
    let mut progress = Progress::new(quiet);
    let out = sdxl::generate(&files, &req, &opts, &mut |e| progress.event(e));
    progress.finish();
    let out = out.map_err(explain)?;

    let paths = batch_paths(&args.output, args.batch, args.overwrite);
    for (i, (img, path)) in out.images.iter().zip(&paths).enumerate() {
        write_png(
            path,
            &img.rgb,
            img.width,
            img.height,
            &png_params(&args, &req, i),
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = Summary {
        outputs: paths.clone(),
        seed,
        timings: out.timings.clone(),
        total_s: start.elapsed().as_secs_f64(),
        peak_ram_bytes: super::progress::peak_rss_bytes(),
        device: super::progress::DeviceUse::of(memory.as_ref().map(|(m, _)| m)),
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
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
