//! `nijigen video`: stage 2 alone, a Wan2.1 clip from a still (I2V) or from text (T2V model).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::common::{explain, random_seed, resolve_device};
use super::find::{Search, Slot};
use super::progress::{Progress, Summary};
use crate::pipeline::output::{VideoOutputs, VideoTarget};
use crate::pipeline::plan::MemoryOptions;
use crate::pipeline::video::{self, WanFiles, WanRequest, DEFAULT_FPS};
use crate::pipeline::{InitImage, RunOptions};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Debug, Args)]
#[command(after_help = "Example (12 GB card, city96 GGUF files):\n  \
    nijigen video --model wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf \\\n    \
    --clip-vision clip_vision_h.safetensors --vae wan_2.1_vae.safetensors \\\n    \
    -i still.png -p 'she turns her head and smiles, hair blowing in the wind' -o clip.mp4")]
pub struct VideoArgs {
    /// Wan2.1 DiT: GGUF (any quant), ComfyUI .safetensors, or a diffusers folder.
    /// A path, or a file name in --models-dir / --comfyui; default: `model` in nijigen.toml.
    #[arg(long, short = 'm', value_name = "FILE", default_value = "", hide_default_value = true, value_parser = super::find::any_path, help_heading = "Models")]
    pub model: PathBuf,
    /// umT5-XXL encoder: GGUF (tokenizer inside) or safetensors (with --t5-tokenizer).
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub t5: Option<PathBuf>,
    /// Tokenizer for a umT5 file without one: tokenizer.json or spiece.model.
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP vision H (clip_vision_h.safetensors), for I2V models.
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub clip_vision: Option<PathBuf>,
    /// Wan2.1 VAE (wan_2.1_vae.safetensors or the diffusers VAE).
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub vae: Option<PathBuf>,
    /// LoRA FILE[:WEIGHT] for the DiT (PEFT, kohya, ComfyUI diff), repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = super::common::parse_lora, help_heading = "Models")]
    pub lora: Vec<(PathBuf, f32)>,

    /// The first frame (I2V models).
    #[arg(long, short = 'i', value_name = "FILE", help_heading = "Prompt")]
    pub image: Option<PathBuf>,
    /// The motion: what happens in the clip.
    #[arg(long, short = 'p', default_value = "", help_heading = "Prompt")]
    pub prompt: String,
    /// What to avoid (default: Wan's official negative prompt).
    #[arg(long, short = 'n', help_heading = "Prompt")]
    pub negative_prompt: Option<String>,

    /// Width (multiple of 16; default 832, or the image's aspect at about 480p).
    #[arg(long, short = 'W', help_heading = "Video")]
    pub width: Option<u32>,
    /// Height (multiple of 16; default 480, or the image's aspect at about 480p).
    #[arg(long, short = 'H', help_heading = "Video")]
    pub height: Option<u32>,
    /// Frames, 4n + 1 (81 = 5 s at 16 fps).
    #[arg(long, default_value_t = 81, help_heading = "Video")]
    pub frames: usize,
    /// Frames per second of the output file.
    #[arg(long, default_value_t = DEFAULT_FPS, help_heading = "Video")]
    pub fps: u32,

    /// Sampling steps (4-8 with a distill LoRA such as lightx2v, with --cfg 1).
    #[arg(long, default_value_t = 30, help_heading = "Sampling")]
    pub steps: usize,
    /// Classifier-free guidance (1 = no negative pass, twice as fast).
    #[arg(long, default_value_t = 5.0, help_heading = "Sampling")]
    pub cfg: f32,
    /// Flow shift (default 3.0 up to 480p, 5.0 above).
    #[arg(long, help_heading = "Sampling")]
    pub shift: Option<f64>,
    /// Sampler: uni_pc (official), euler, dpmpp_2m, ...
    #[arg(long, default_value = "uni_pc", value_parser = super::common::parse_sampler, help_heading = "Sampling")]
    pub sampler: SamplerKind,
    /// Scheduler: simple, normal, ...
    #[arg(long, default_value = "simple", value_parser = super::common::parse_scheduler, help_heading = "Sampling")]
    pub scheduler: Scheduler,
    /// Seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Noise generator: torch (torch.randn on the CPU, as ComfyUI; same seed, same noise).
    #[arg(long, default_value = "torch", value_parser = ["torch"], help_heading = "Sampling")]
    pub rng: String,

    /// Output video: .mp4 (H.264), .webp or .gif (numbered if it exists, unless --overwrite).
    #[arg(
        long,
        short = 'o',
        default_value = "nijigen.mp4",
        help_heading = "Output"
    )]
    pub output: PathBuf,
    /// Also write every frame as DIR/frame_0000.png, ...
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub frames_dir: Option<PathBuf>,
    /// H.264 quantiser (0 best .. 51; 18-23 look clean on anime).
    #[arg(long, default_value_t = 20, help_heading = "Output")]
    pub qp: u8,
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
    /// Decode with the VAE in spatial tiles of SIZE pixels (less memory; seams blended).
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub vae_tile: Option<u32>,
    /// CPU threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0, help_heading = "Performance")]
    pub threads: usize,
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

/// The request `args` describe, with `image` as the first frame.
pub(super) fn request(args: &VideoArgs, image: Option<InitImage>, seed: u64) -> WanRequest {
    let (dw, dh) = match &image {
        Some(img) => video::size_for_image(img.width, img.height),
        None => (832, 480),
    };
    WanRequest {
        image,
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        width: args.width.unwrap_or(dw),
        height: args.height.unwrap_or(dh),
        frames: args.frames,
        steps: args.steps,
        cfg: args.cfg,
        shift: args.shift,
        sampler: args.sampler,
        scheduler: args.scheduler,
        seed,
        vae_tile: args.vae_tile,
        keep_decoded: false,
    }
}

/// The weight files `args` name.
pub(super) fn files(args: &VideoArgs) -> WanFiles {
    WanFiles {
        model: args.model.clone(),
        t5: args.t5.clone(),
        t5_tokenizer: args.t5_tokenizer.clone(),
        clip_vision: args.clip_vision.clone(),
        vae: args.vae.clone(),
        loras: args.lora.clone(),
    }
}

/// Where `args` puts the video.
pub(super) fn target(args: &VideoArgs) -> VideoTarget {
    VideoTarget {
        path: args.output.clone(),
        frames_dir: args.frames_dir.clone(),
        fps: args.fps,
        qp: args.qp,
        overwrite: args.overwrite,
        image_file: args.image.clone(),
    }
}

/// Where the run may compute and put its weights.
pub(super) fn memory_options(a: &VideoArgs) -> anyhow::Result<MemoryOptions> {
    Ok(MemoryOptions {
        device: resolve_device(&a.device)?,
        vram_budget: a.vram_budget,
        offload: a.offload,
        encoders: a.text_encoder_device,
    })
}

pub fn run(mut args: VideoArgs, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let memory = memory_options(&args)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let image = match &args.image {
        Some(path) => {
            let (rgb, width, height) = crate::media::image::load_rgb(path)?;
            Some(InitImage { rgb, width, height })
        }
        None => None,
    };
    let req = request(&args, image, seed);
    video::validate(&req).map_err(explain)?;
    // An output format we cannot write is refused before any model file is looked at.
    crate::media::video::VideoFormat::from_path(&args.output)?;
    resolve(&mut args, find)?;
    let job = video::prepare(files(&args), req, &memory).map_err(explain)?;
    let req = &job.request;
    let memory = job.memory();
    let shift = req
        .shift
        .unwrap_or_else(|| video::default_shift(req.width, req.height));
    let opts = RunOptions {
        threads: args.threads,
        memory: memory.clone(),
        cancel: Some(super::progress::cancel_flag()),
    };
    let mut outputs = VideoOutputs::open(&target(&args), &job.files, req)?;
    if !quiet && !args.json {
        eprintln!(
            "seed {seed}; {}x{}, {} frames, shift {shift}",
            req.width, req.height, req.frames
        );
    }
    let start = Instant::now();
    let mut progress = Progress::new(quiet);
    let out = job.run(&opts, &mut |e| progress.event(e), &mut |_, rgb| {
        Ok(outputs.push_frame(rgb)?)
    });
    progress.finish();
    let out = out.map_err(explain)?;
    let frames_note = outputs.frames_note();
    let paths = outputs.finish()?;
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
        writeln!(
            stdout,
            "wrote {} ({} frames)",
            paths[0].display(),
            out.frames.len()
        )?;
        if let Some(note) = frames_note {
            writeln!(stdout, "{note}")?;
        }
        writeln!(stdout, "{}", summary.line())?;
    }
    Ok(())
}
/// Finds the files `video` names (after its request is checked).
pub fn resolve(a: &mut VideoArgs, find: &Search) -> anyhow::Result<()> {
    a.model = find.resolve(&a.model, Slot::Diffusion, "--model")?;
    find.resolve_opt(&mut a.t5, Slot::TextEncoder, "--t5")?;
    find.resolve_opt(&mut a.t5_tokenizer, Slot::TextEncoder, "--t5-tokenizer")?;
    find.resolve_opt(&mut a.clip_vision, Slot::ClipVision, "--clip-vision")?;
    find.resolve_opt(&mut a.vae, Slot::Vae, "--vae")?;
    find.resolve_loras(&mut a.lora, "--lora")
}
