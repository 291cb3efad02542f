//! `nijigen video`: stage 2 alone, a Wan2.1 clip from a still (I2V) or from text (T2V model).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::common::{explain, random_seed, resolve_device, Setting};
use super::find::{Search, Slot};
use super::progress::{Progress, Summary};
use super::settings::{self, Layers, Pick};
use super::WithHint;
use crate::pipeline::output::{VideoOutputs, VideoTarget};
use crate::pipeline::plan::{EncoderDevice, MemoryOptions, Offload};
use crate::pipeline::video::{self, WanFiles, WanRequest};
use crate::pipeline::{InitImage, RunOptions};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Clone, Debug, Default, Args)]
#[command(after_help = "Example (12 GB card, city96 GGUF files):\n  \
    nijigen video --model wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf \\\n    \
    --clip-vision clip_vision_h.safetensors --vae wan_2.1_vae.safetensors \\\n    \
    -i still.png -p 'she turns her head and smiles, hair blowing in the wind' -o clip.mp4\n\n\
    Wan2.2 I2V-A14B (two experts; no CLIP vision; official settings by default):\n  \
    nijigen video --model Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf \\\n    \
    --high-noise-model Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf \\\n    \
    --vae wan_2.1_vae.safetensors -i still.png -p 'she waves' -o clip.mp4")]
pub struct VideoArgs {
    /// Wan DiT: GGUF (any quant), ComfyUI .safetensors, or a diffusers folder; for Wan2.2
    /// A14B the low-noise expert (or either expert alone). A path, or a file name in
    /// --models-dir / --comfyui; default: `model` in nijigen.toml.
    #[arg(long, short = 'm', value_name = "FILE", help_heading = "Models")]
    pub model: Option<PathBuf>,
    /// Wan2.2 A14B: the high-noise expert (e.g. wan2.2_i2v_high_noise_14B_fp8_scaled
    /// .safetensors); it samples the first steps, then --model the rest.
    #[arg(long, value_name = "FILE", help_heading = "Models")]
    pub high_noise_model: Option<PathBuf>,
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
    /// LoRA FILE[:WEIGHT] for the DiT (PEFT, kohya, ComfyUI diff), repeatable; with two
    /// experts, for the low-noise one (--model).
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = super::common::parse_lora, help_heading = "Models")]
    pub lora: Vec<(PathBuf, f32)>,
    /// LoRA FILE[:WEIGHT] for the high-noise expert, repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = super::common::parse_lora, help_heading = "Models")]
    pub high_noise_lora: Vec<(PathBuf, f32)>,

    // The defaults in "[default: ..]" are those of `settings` (a test checks they agree).
    /// The first frame (I2V models).
    #[arg(long, short = 'i', value_name = "FILE", help_heading = "Prompt")]
    pub image: Option<PathBuf>,
    /// The motion: what happens in the clip [default: ""]
    #[arg(long, short = 'p', help_heading = "Prompt")]
    pub prompt: Option<String>,
    /// What to avoid (default: Wan's official negative prompt).
    #[arg(long, short = 'n', help_heading = "Prompt")]
    pub negative_prompt: Option<String>,

    /// Width (multiple of 16; default 832, or the image's aspect at about 480p).
    #[arg(long, short = 'W', help_heading = "Video")]
    pub width: Option<u32>,
    /// Height (multiple of 16; default 480, or the image's aspect at about 480p).
    #[arg(long, short = 'H', help_heading = "Video")]
    pub height: Option<u32>,
    /// Frames, 4n + 1 (81 = 5 s at 16 fps) [default: 81]
    #[arg(long, help_heading = "Video")]
    pub frames: Option<usize>,
    /// Frames per second of the output file [default: 16]
    #[arg(long, help_heading = "Video")]
    pub fps: Option<u32>,

    /// Sampling steps (4-8 with a distill LoRA such as lightx2v, with --cfg 1; Wan2.2 A14B:
    /// 40) [default: 30]
    #[arg(long, help_heading = "Sampling")]
    pub steps: Option<usize>,
    /// Classifier-free guidance (1 = no negative pass, twice as fast; Wan2.2: 3.5 for I2V,
    /// 3.0 for T2V) [default: 5]
    #[arg(long, help_heading = "Sampling")]
    pub cfg: Option<f32>,
    /// Flow shift (default 3.0 up to 480p, 5.0 above; Wan2.2 A14B: 5.0 for I2V, 12 for T2V).
    #[arg(long, help_heading = "Sampling")]
    pub shift: Option<f64>,
    /// Sampler: unipc_wan (the official Wan solver), or a ComfyUI sampler: uni_pc, euler,
    /// dpmpp_2m, ... (`nijigen image --help` lists them) [default: unipc_wan]
    #[arg(long, value_parser = super::common::parse_sampler, help_heading = "Sampling")]
    pub sampler: Option<SamplerKind>,
    /// Scheduler: simple, normal, beta, ... (ComfyUI's) [default: simple]
    #[arg(long, value_parser = super::common::parse_scheduler, help_heading = "Sampling")]
    pub scheduler: Option<Scheduler>,
    /// Seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub experts: ExpertArgs,
    /// Noise generator: torch (torch.randn on the CPU, as ComfyUI; same seed, same noise)
    /// [default: torch]
    #[arg(long, value_parser = [settings::RNG], help_heading = "Sampling")]
    pub rng: Option<String>,

    /// Output video: .mp4 (H.264), .webp or .gif (numbered if it exists, unless --overwrite)
    /// [default: nijigen.mp4]
    #[arg(long, short = 'o', help_heading = "Output")]
    pub output: Option<PathBuf>,
    /// Also write every frame as DIR/frame_0000.png, ...
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub frames_dir: Option<PathBuf>,
    /// H.264 quantiser (0 best .. 51; 18-23 look clean on anime) [default: 20]
    #[arg(long, help_heading = "Output")]
    pub qp: Option<u8>,
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
    /// Decode with the VAE in spatial tiles of SIZE pixels (less memory; seams blended).
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub vae_tile: Option<u32>,
    /// Step caching: off, or easycache[:THRESH] (skips DiT passes predicted to change little;
    /// EasyCache's default threshold 0.05, higher skips more) [default: off]
    #[arg(long, value_name = "METHOD", help_heading = "Performance")]
    pub cache: Option<String>,
    /// CPU threads (default: all cores) [default: 0]
    #[arg(long, short = 't', help_heading = "Performance")]
    pub threads: Option<usize>,
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

/// How Wan2.2 A14B switches from the high-noise expert to the low-noise one (`nijigen video`,
/// `nijigen i2v`, `nijigen plan`).
#[derive(Clone, Debug, Default, Args)]
pub struct ExpertArgs {
    /// Two experts: the high-noise one samples while the timestep is at or above
    /// X x 1000 (default 0.9 for I2V, 0.875 for T2V, as Wan2.2).
    #[arg(long, value_name = "X", help_heading = "Sampling: Wan2.2 experts")]
    pub boundary: Option<f64>,
    /// Two experts: switch after N steps instead of by --boundary, in two sampler runs as
    /// ComfyUI's two KSamplerAdvanced nodes (its lightx2v 4-step template: 2).
    #[arg(long, value_name = "N", help_heading = "Sampling: Wan2.2 experts")]
    pub high_noise_steps: Option<usize>,
    /// Guidance of the high-noise expert (default: --cfg; Wan2.2 T2V: 4.0).
    #[arg(long, value_name = "X", help_heading = "Sampling: Wan2.2 experts")]
    pub high_noise_cfg: Option<f32>,
    /// Sampler of the high-noise expert (default: --sampler); a different one samples the
    /// phases in two runs.
    #[arg(long, value_parser = super::common::parse_sampler, help_heading = "Sampling: Wan2.2 experts")]
    pub high_noise_sampler: Option<SamplerKind>,
}

/// `nijigen video` resolved: each value from its flag, else nijigen.toml (`[video]` and the
/// top-level keys), else [`settings::VIDEO`]; made once, never changed. The settings a config
/// file can give carry their [`Source`](super::common::Source).
#[derive(Clone, Debug)]
pub struct VideoSettings {
    /// As given (a bare name is found when the run starts).
    pub model: Setting<PathBuf>,
    pub high_noise_model: Option<Setting<PathBuf>>,
    pub high_noise_lora: Vec<(PathBuf, f32)>,
    /// The switch between Wan2.2's experts; `high_noise_cfg` from the flag or the file.
    pub experts: ExpertArgs,
    pub t5: Option<Setting<PathBuf>>,
    pub t5_tokenizer: Option<Setting<PathBuf>>,
    pub clip_vision: Option<Setting<PathBuf>>,
    pub vae: Option<Setting<PathBuf>>,
    pub lora: Vec<(PathBuf, f32)>,
    pub image: Option<PathBuf>,
    pub prompt: String,
    /// `None`: Wan's official negative prompt.
    pub negative_prompt: Option<Setting<String>>,
    /// `None`: from the image's aspect, else [`settings::VIDEO`]'s size.
    pub width: Option<Setting<u32>>,
    pub height: Option<Setting<u32>>,
    pub frames: Setting<usize>,
    pub fps: Setting<u32>,
    pub steps: Setting<usize>,
    pub cfg: Setting<f32>,
    /// `None`: from the size ([`video::default_shift`]).
    pub shift: Option<Setting<f64>>,
    pub sampler: Setting<SamplerKind>,
    pub scheduler: Setting<Scheduler>,
    /// `None`: a random one, drawn when the run starts.
    pub seed: Option<u64>,
    pub output: PathBuf,
    pub frames_dir: Option<PathBuf>,
    pub qp: u8,
    pub overwrite: bool,
    pub json: bool,
    pub device: String,
    pub vae_tile: Option<u32>,
    /// `--cache`; `None`: off.
    pub cache: Option<crate::pipeline::step_cache::CacheSettings>,
    pub threads: Setting<usize>,
    pub vram_budget: Option<Setting<u64>>,
    pub offload: Offload,
    pub text_encoder_device: EncoderDevice,
}

impl VideoSettings {
    /// Resolves `args` over `layers`; fails without a model.
    pub fn resolve(args: VideoArgs, layers: &Layers) -> anyhow::Result<VideoSettings> {
        let l = &layers.loaded;
        let f = &l.file.video;
        let d = settings::VIDEO;
        let path = |flag, given: Option<PathBuf>, file: &Option<PathBuf>| {
            Pick::flag(flag, given).file(l, file.clone()).or_none()
        };
        let model = path("--model", args.model, &f.model).ok_or_else(|| WithHint {
            error: "no model: pass --model FILE".into(),
            hint: "or set `model` under [video] in nijigen.toml (`nijigen config` shows it)".into(),
        })?;
        let experts = ExpertArgs {
            boundary: args.experts.boundary.or(f.boundary),
            high_noise_steps: args.experts.high_noise_steps.or(f.high_noise_steps),
            high_noise_cfg: args.experts.high_noise_cfg.or(f.high_noise_cfg),
            high_noise_sampler: args.experts.high_noise_sampler.or(settings::file_sampler(
                &f.high_noise_sampler,
                "video.high_noise_sampler",
            )?),
        };
        Ok(VideoSettings {
            model,
            high_noise_model: path(
                "--high-noise-model",
                args.high_noise_model,
                &f.high_noise_model,
            ),
            high_noise_lora: args.high_noise_lora,
            experts,
            t5: path("--t5", args.t5, &f.t5),
            t5_tokenizer: path("--t5-tokenizer", args.t5_tokenizer, &f.t5_tokenizer),
            clip_vision: path("--clip-vision", args.clip_vision, &f.clip_vision),
            vae: path("--vae", args.vae, &f.vae),
            lora: args.lora,
            image: args.image,
            prompt: args.prompt.unwrap_or_else(|| settings::PROMPT.into()),
            negative_prompt: Pick::flag("--negative-prompt", args.negative_prompt)
                .file(l, f.negative_prompt.clone())
                .or_none(),
            width: Pick::flag("--width", args.width).file(l, f.width).or_none(),
            height: Pick::flag("--height", args.height)
                .file(l, f.height)
                .or_none(),
            frames: Pick::flag("--frames", args.frames)
                .file(l, f.frames)
                .or(d.frames),
            fps: Pick::flag("--fps", args.fps).file(l, f.fps).or(d.fps),
            steps: Pick::flag("--steps", args.steps)
                .file(l, f.steps)
                .or(d.steps),
            cfg: Pick::flag("--cfg", args.cfg).file(l, f.cfg).or(d.cfg),
            shift: Pick::flag("--shift", args.shift).file(l, f.shift).or_none(),
            sampler: Pick::flag("--sampler", args.sampler)
                .file(l, settings::file_sampler(&f.sampler, "video.sampler")?)
                .or(d.sampler),
            scheduler: Pick::flag("--scheduler", args.scheduler)
                .file(
                    l,
                    settings::file_scheduler(&f.scheduler, "video.scheduler")?,
                )
                .or(d.scheduler),
            seed: args.seed,
            output: args.output.unwrap_or_else(|| d.output.into()),
            frames_dir: args.frames_dir,
            qp: args.qp.unwrap_or(d.qp),
            overwrite: args.overwrite,
            json: args.json,
            device: args.device.unwrap_or_else(|| settings::DEVICE.into()),
            vae_tile: args.vae_tile,
            cache: parse_cache(args.cache.or(f.cache.clone()).as_deref())?,
            threads: layers.threads(args.threads),
            vram_budget: layers.vram_budget(args.vram_budget)?,
            offload: args.offload.unwrap_or_default(),
            text_encoder_device: args.text_encoder_device.unwrap_or_default(),
        })
    }
}

/// The request `s` describes, with `image` as the first frame; `wan22`: the official settings
/// of the Wan2.2 model given ([`video::wan22_defaults`]), which replace the built-in defaults
/// of the settings nobody set.
pub(super) fn request(
    s: &VideoSettings,
    image: Option<InitImage>,
    seed: u64,
    wan22: Option<video::Wan22Defaults>,
) -> WanRequest {
    let (dw, dh) = match &image {
        Some(img) => video::size_for_image(img.width, img.height),
        None => settings::VIDEO.size,
    };
    let value = |v: &Option<Setting<u32>>| v.as_ref().map(|v| v.value);
    let defaulted = |source: &super::common::Source| *source == super::common::Source::Default;
    let (steps, cfg, shift, high_noise_cfg) = match wan22 {
        Some(d) => (
            if defaulted(&s.steps.source) {
                d.steps
            } else {
                s.steps.value
            },
            if defaulted(&s.cfg.source) {
                d.cfg
            } else {
                s.cfg.value
            },
            s.shift.as_ref().map_or(d.shift, |v| v.value),
            // The high-noise expert's guidance follows --cfg when it is given.
            s.experts.high_noise_cfg.or(if defaulted(&s.cfg.source) {
                Some(d.high_noise_cfg)
            } else {
                None
            }),
        ),
        None => (
            s.steps.value,
            s.cfg.value,
            s.shift.as_ref().map_or_else(
                || {
                    let w = value(&s.width).unwrap_or(dw);
                    let h = value(&s.height).unwrap_or(dh);
                    video::default_shift(w, h)
                },
                |v| v.value,
            ),
            s.experts.high_noise_cfg,
        ),
    };
    WanRequest {
        image,
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.as_ref().map(|n| n.value.clone()),
        width: value(&s.width).unwrap_or(dw),
        height: value(&s.height).unwrap_or(dh),
        frames: s.frames.value,
        steps,
        cfg,
        shift: Some(shift),
        sampler: s.sampler.value,
        scheduler: s.scheduler.value,
        seed,
        vae_tile: s.vae_tile,
        keep_decoded: false,
        // The model's boundary (I2V or T2V), so that the metadata written before the run
        // names the switch it makes.
        boundary: s.experts.boundary.or(wan22.map(|d| d.boundary)),
        high_noise_steps: s.experts.high_noise_steps,
        high_noise_cfg,
        high_noise_sampler: s.experts.high_noise_sampler,
        cache: s.cache,
    }
}

/// `--cache` (or `cache` in nijigen.toml): `None` when off or not given.
pub(super) fn parse_cache(
    v: Option<&str>,
) -> anyhow::Result<Option<crate::pipeline::step_cache::CacheSettings>> {
    match v {
        None => Ok(None),
        Some(v) => crate::pipeline::step_cache::CacheSettings::parse(v).map_err(|e| {
            WithHint {
                error: e,
                hint: "e.g. --cache easycache:0.1 (higher skips more steps)".into(),
            }
            .into()
        }),
    }
}

/// The weight files `s` names, each found with `find`.
pub(super) fn files(s: &VideoSettings, find: &Search) -> anyhow::Result<WanFiles> {
    Ok(WanFiles {
        model: find.resolve(&s.model.value, Slot::Diffusion, "--model")?,
        high_noise_model: find.resolve_opt(
            s.high_noise_model.as_ref(),
            Slot::Diffusion,
            "--high-noise-model",
        )?,
        high_noise_loras: find.loras(&s.high_noise_lora, "--high-noise-lora")?,
        t5: find.resolve_opt(s.t5.as_ref(), Slot::TextEncoder, "--t5")?,
        t5_tokenizer: find.resolve_opt(
            s.t5_tokenizer.as_ref(),
            Slot::TextEncoder,
            "--t5-tokenizer",
        )?,
        clip_vision: find.resolve_opt(s.clip_vision.as_ref(), Slot::ClipVision, "--clip-vision")?,
        vae: find.resolve_opt(s.vae.as_ref(), Slot::Vae, "--vae")?,
        loras: find.loras(&s.lora, "--lora")?,
    })
}

/// "Wan2.2 I2V-A14B: high-noise expert for steps 1-2 of 4 (boundary 0.9), cfg 3.5 / 3.5":
/// what a run with two experts (or one Wan2.2 expert) does, for stderr.
pub(super) fn experts_line(
    files: &WanFiles,
    req: &WanRequest,
    wan22: Option<video::Wan22Defaults>,
) -> Option<String> {
    let model = wan22.map_or("Wan2.2", |d| d.model);
    if files.high_noise_model.is_none() {
        return wan22.map(|_| format!("{model}, one expert: {} steps, cfg {}", req.steps, req.cfg));
    }
    let shift = req
        .shift
        .unwrap_or_else(|| video::default_shift(req.width, req.height));
    let n = video::switch_step(req, shift).ok()?;
    let how = match (req.high_noise_steps, req.boundary) {
        (Some(_), _) => "--high-noise-steps".to_string(),
        (None, Some(b)) => format!("boundary {b}"),
        (None, None) => "boundary".to_string(),
    };
    Some(format!(
        "{model}: high-noise expert for {n} of {} steps ({how}), then the low-noise expert; \
            cfg {} / {}",
        req.steps,
        req.high_noise_cfg.unwrap_or(req.cfg),
        req.cfg
    ))
}

/// Where `s` puts the video.
pub(super) fn target(s: &VideoSettings) -> VideoTarget {
    VideoTarget {
        path: s.output.clone(),
        frames_dir: s.frames_dir.clone(),
        fps: s.fps.value,
        qp: s.qp,
        overwrite: s.overwrite,
        image_file: s.image.clone(),
    }
}

/// Where the run may compute and put its weights.
pub(super) fn memory_options(s: &VideoSettings) -> anyhow::Result<MemoryOptions> {
    Ok(MemoryOptions {
        fp8_cpu: Default::default(),
        device: resolve_device(&s.device)?,
        vram_budget: s.vram_budget.as_ref().map(|b| b.value),
        offload: s.offload,
        encoders: s.text_encoder_device,
    })
}

pub fn run(s: &VideoSettings, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let memory = memory_options(s)?;
    let seed = s.seed.unwrap_or_else(random_seed);
    let image = match &s.image {
        Some(path) => {
            let (rgb, width, height) = crate::media::image::load_rgb(path)?;
            Some(InitImage { rgb, width, height })
        }
        None => None,
    };
    // A bad size or frame count and an output format we cannot write are refused before any
    // model file is looked at (the switch step is checked once the model's steps are known).
    let early = WanRequest {
        high_noise_steps: None,
        ..request(s, None, seed, None)
    };
    video::validate(&early).map_err(explain)?;
    crate::media::video::VideoFormat::from_path(&s.output)?;
    let files = files(s, find)?;
    let wan22 = video::wan22_defaults(&files).map_err(explain)?;
    let req = request(s, image, seed, wan22);
    video::validate(&req).map_err(explain)?;
    let job = video::prepare(files, req, &memory).map_err(explain)?;
    let req = &job.request;
    let memory = job.memory();
    let shift = req
        .shift
        .unwrap_or_else(|| video::default_shift(req.width, req.height));
    let opts = RunOptions {
        fp8_cpu: Default::default(),
        threads: s.threads.value,
        memory: memory.clone(),
        cancel: Some(super::progress::cancel_flag()),
    };
    let mut outputs = VideoOutputs::open(&target(s), &job.files, req)?;
    if !quiet && !s.json {
        eprintln!(
            "seed {seed}; {}x{}, {} frames, shift {shift}",
            req.width, req.height, req.frames
        );
        if let Some(line) = experts_line(&job.files, req, wan22) {
            eprintln!("{line}");
        }
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
        cache: req
            .cache
            .as_ref()
            .zip(out.cache.as_ref())
            .map(|(s, r)| Summary::cache_json(s, r)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `nijigen video -m m.gguf ARGS` resolved with no environment and no config file.
    fn parse(args: &[&str]) -> VideoSettings {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: VideoArgs,
        }
        let a = Wrap::try_parse_from(["video", "-m", "m.gguf"].iter().chain(args).copied())
            .unwrap()
            .a;
        VideoSettings::resolve(a, &Layers::default()).unwrap()
    }

    #[test]
    fn wan22_models_get_the_official_settings_where_none_is_given() {
        let i2v = Some(video::WAN22_I2V);
        let r = request(&parse(&[]), None, 1, i2v);
        assert_eq!((r.steps, r.cfg, r.shift), (40, 3.5, Some(5.0)));
        assert_eq!((r.high_noise_cfg, r.boundary), (Some(3.5), Some(0.9)));
        let t2v = request(&parse(&[]), None, 1, Some(video::WAN22_T2V));
        assert_eq!(
            (t2v.cfg, t2v.high_noise_cfg, t2v.shift),
            (3.0, Some(4.0), Some(12.0))
        );
        assert_eq!(t2v.boundary, Some(0.875));
        // Flags win; the high-noise guidance follows --cfg unless given itself.
        let s = parse(&[
            "--steps",
            "4",
            "--cfg",
            "1",
            "--shift",
            "8",
            "--boundary",
            "0.8",
        ]);
        let r = request(&s, None, 1, i2v);
        assert_eq!(
            (r.steps, r.cfg, r.shift, r.boundary),
            (4, 1.0, Some(8.0), Some(0.8))
        );
        assert_eq!(r.high_noise_cfg, None);
        let r = request(
            &parse(&["--cfg", "1", "--high-noise-cfg", "2"]),
            None,
            1,
            i2v,
        );
        assert_eq!((r.cfg, r.high_noise_cfg), (1.0, Some(2.0)));
        // Wan2.1: the built-in defaults, the shift by area.
        let r = request(&parse(&[]), None, 1, None);
        assert_eq!(
            (r.steps, r.cfg, r.shift, r.boundary),
            (30, 5.0, Some(3.0), None)
        );
        let r = request(
            &parse(&["--high-noise-steps", "2", "--high-noise-sampler", "euler"]),
            None,
            1,
            None,
        );
        assert_eq!(
            (r.high_noise_steps, r.high_noise_sampler),
            (Some(2), Some(SamplerKind::Euler))
        );
    }
}
