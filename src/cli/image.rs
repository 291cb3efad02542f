//! `nijigen image`: stage 1 alone, an SDXL-family still from a prompt (or an init image).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::common::{explain, random_seed, resolve_device};
use super::find::{Search, Slot};
use super::progress::{Progress, Summary};
use crate::media::output::unique_path;
use crate::media::png::write_png;
use crate::pipeline::image::{self, InitImage, SdxlFiles, SdxlRequest, SizeCond};
use crate::pipeline::output::png_params;
use crate::pipeline::plan::MemoryOptions;
use crate::pipeline::RunOptions;
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
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = super::common::parse_lora, help_heading = "Models")]
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
    #[arg(long, default_value = "euler", value_parser = super::common::parse_sampler, help_heading = "Sampling")]
    pub sampler: SamplerKind,
    /// Scheduler: normal, karras, exponential, simple, sgm_uniform.
    #[arg(long, default_value = "normal", value_parser = super::common::parse_scheduler, help_heading = "Sampling")]
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
    #[arg(long, value_name = "SIZE", value_parser = super::common::parse_budget, help_heading = "Memory")]
    pub vram_budget: Option<u64>,
    /// Weight offloading: auto (the planner's choice), none (all resident), blocks (stream
    /// the denoiser's blocks), full (everything on the CPU).
    #[arg(long, default_value = "auto", value_parser = super::common::parse_offload, help_heading = "Memory")]
    pub offload: crate::pipeline::plan::Offload,
    /// Where the text encoders (and CLIP vision) run: auto (the planner's choice), gpu, cpu.
    #[arg(long, default_value = "auto", value_parser = super::common::parse_encoder_device, help_heading = "Memory")]
    pub text_encoder_device: crate::pipeline::plan::EncoderDevice,
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

/// Where the run may compute and put its weights.
pub(super) fn memory_options(a: &ImageArgs) -> anyhow::Result<MemoryOptions> {
    Ok(MemoryOptions {
        device: resolve_device(&a.device)?,
        vram_budget: a.vram_budget,
        offload: a.offload,
        encoders: a.text_encoder_device,
    })
}

pub fn run(mut args: ImageArgs, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let memory = memory_options(&args)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let req = request(&args, seed)?;
    image::validate(&req).map_err(explain)?;
    resolve(&mut args, find)?;
    let job = image::prepare(files(&args), req, &memory).map_err(explain)?;
    let memory = job.memory();
    let opts = RunOptions {
        threads: args.threads,
        memory: memory.clone(),
        cancel: Some(super::progress::cancel_flag()),
    };
    if !quiet && !args.json {
        eprintln!("seed {seed}");
    }
    let start = Instant::now();
    let mut progress = Progress::new(quiet);
    let out = job.run(&opts, &mut |e| progress.event(e));
    progress.finish();
    let out = out.map_err(explain)?;

    let paths = batch_paths(&args.output, args.batch, args.overwrite);
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
        outputs: paths.clone(),
        seed,
        timings: out.timings.clone(),
        total_s: start.elapsed().as_secs_f64(),
        peak_ram_bytes: super::progress::peak_rss_bytes(),
        device: super::progress::DeviceUse::of(memory.as_ref()),
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

/// Finds the files `image` names (after its request is checked: a bad size fails first).
pub fn resolve(a: &mut ImageArgs, find: &Search) -> anyhow::Result<()> {
    a.model = find.resolve(&a.model, Slot::Checkpoint, "--model")?;
    find.resolve_opt(&mut a.clip_l, Slot::TextEncoder, "--clip-l")?;
    find.resolve_opt(&mut a.clip_g, Slot::TextEncoder, "--clip-g")?;
    find.resolve_opt(&mut a.vae, Slot::Vae, "--vae")?;
    find.resolve_loras(&mut a.lora, "--lora")
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
