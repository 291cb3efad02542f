//! `nijigen i2v`: both stages in one process: an SDXL still from the appearance prompt, saved
//! as PNG beside the video, then Wan2.1 animating it with the motion prompt.
//!
//! The command is `nijigen image` followed by `nijigen video -i still.png`: it builds the
//! settings of both ([`I2vSettings::image_settings`], [`I2vSettings::video_settings`]) and
//! runs their code, so the two ways give the same files. Everything that can fail fast is
//! checked before stage 1: both requests, every file against its slot, and the memory plan of
//! both stages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::common::{
    explain, parse_lora, parse_sampler, parse_scheduler, random_seed, resolve_device,
};
use super::common::{Setting, Source};
use super::find::{Search, Slot};
use super::image::ImageSettings;
use super::progress::{peak_rss_bytes, ram_text, timings_text, Progress};
use super::settings::{self, Layers, Pick};
use super::video::VideoSettings;
use super::WithHint;
use crate::media::png::write_png;
use crate::pipeline::i2v::{self, still_size, I2vFiles, I2vJob, I2vRequest};
use crate::pipeline::output::{png_params, VideoOutputs, VideoTarget};
use crate::pipeline::plan::MemoryOptions;
use crate::pipeline::plan::{EncoderDevice, Offload};
use crate::pipeline::{image, video, PipelineError, RunOptions, Timings};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Clone, Debug, Default, Args)]
#[command(after_help = "Example (12 GB card; see README \"Quickstart\"):\n  \
    nijigen i2v --image-model illustriousXL_v01.safetensors \\\n    \
    --video-model wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf \\\n    \
    --clip-vision clip_vision_h.safetensors --video-vae wan_2.1_vae.safetensors \\\n    \
    -p '1girl, silver hair, school uniform, cherry blossoms, masterpiece' \\\n    \
    --motion 'she turns her head and smiles, petals drifting in the wind' -o clip.mp4\n\n\
    Seeds: the still uses --seed; the video uses --video-seed, or --seed when it is not given.\n\
    `nijigen image --seed S` then `nijigen video -i STILL.png --seed S -W .. -H ..` gives the\n\
    same video.")]
pub struct I2vArgs {
    /// Stage 1: SDXL-family checkpoint (.safetensors), UNet-only file, or diffusers folder.
    #[arg(long, value_name = "FILE", help_heading = "Models: still (stage 1)")]
    pub image_model: Option<PathBuf>,
    /// CLIP-L text encoder, when the image model has none.
    #[arg(long, value_name = "FILE", help_heading = "Models: still (stage 1)")]
    pub clip_l: Option<PathBuf>,
    /// OpenCLIP bigG text encoder, when the image model has none.
    #[arg(long, value_name = "FILE", help_heading = "Models: still (stage 1)")]
    pub clip_g: Option<PathBuf>,
    /// SDXL VAE, when the image model has none or to replace it.
    #[arg(long, value_name = "FILE", help_heading = "Models: still (stage 1)")]
    pub image_vae: Option<PathBuf>,
    /// LoRA FILE[:WEIGHT] for the SDXL model, repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = parse_lora, help_heading = "Models: still (stage 1)")]
    pub image_lora: Vec<(PathBuf, f32)>,

    /// Stage 2: Wan image-to-video DiT (GGUF of any quant, ComfyUI safetensors, diffusers):
    /// Wan2.1 I2V, or Wan2.2 I2V-A14B's low-noise expert.
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub video_model: Option<PathBuf>,
    /// Wan2.2 I2V-A14B's high-noise expert; it samples the first steps.
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub video_high_noise_model: Option<PathBuf>,
    /// umT5-XXL encoder: GGUF (tokenizer inside) or safetensors (with --t5-tokenizer).
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub t5: Option<PathBuf>,
    /// Tokenizer for a umT5 file without one: tokenizer.json or spiece.model.
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP vision H (clip_vision_h.safetensors).
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub clip_vision: Option<PathBuf>,
    /// Wan2.1 VAE (wan_2.1_vae.safetensors).
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub video_vae: Option<PathBuf>,
    /// LoRA FILE[:WEIGHT] for the Wan DiT (the low-noise expert of a pair), repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = parse_lora, help_heading = "Models: video (stage 2)")]
    pub video_lora: Vec<(PathBuf, f32)>,
    /// LoRA FILE[:WEIGHT] for the high-noise expert, repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = parse_lora, help_heading = "Models: video (stage 2)")]
    pub video_high_noise_lora: Vec<(PathBuf, f32)>,
    #[command(flatten)]
    pub experts: super::video::ExpertArgs,

    // The defaults in "[default: ..]" are those of `settings` (a test checks they agree).
    /// What the still shows (appearance). Weights: (text:1.2) [default: ""]
    #[arg(long, short = 'p', help_heading = "Prompt")]
    pub prompt: Option<String>,
    /// What the still should avoid [default: ""]
    #[arg(long, short = 'n', help_heading = "Prompt")]
    pub negative_prompt: Option<String>,
    /// What happens in the clip (default: the --prompt).
    #[arg(long, help_heading = "Prompt")]
    pub motion: Option<String>,
    /// What the clip should avoid (default: Wan's official negative prompt).
    #[arg(long, help_heading = "Prompt")]
    pub motion_negative: Option<String>,

    /// Video width (multiple of 16) [default: 832]
    #[arg(long, short = 'W', help_heading = "Video")]
    pub width: Option<u32>,
    /// Video height (multiple of 16) [default: 480]
    #[arg(long, short = 'H', help_heading = "Video")]
    pub height: Option<u32>,
    /// Frames, 4n + 1 (81 = 5 s at 16 fps) [default: 81]
    #[arg(long, help_heading = "Video")]
    pub frames: Option<usize>,
    /// Frames per second of the output file [default: 16]
    #[arg(long, help_heading = "Video")]
    pub fps: Option<u32>,
    /// Still width (multiple of 8; default: about 1 MP at the video's aspect, e.g. 1344 for
    /// 832x480). The video stage fits the still to the video size (center crop, Lanczos).
    #[arg(long, help_heading = "Still")]
    pub image_width: Option<u32>,
    /// Still height (multiple of 8; default: about 1 MP at the video's aspect, e.g. 768).
    #[arg(long, help_heading = "Still")]
    pub image_height: Option<u32>,

    /// Still: sampling steps [default: 25]
    #[arg(long, help_heading = "Sampling")]
    pub image_steps: Option<usize>,
    /// Still: classifier-free guidance scale [default: 6]
    #[arg(long, help_heading = "Sampling")]
    pub image_cfg: Option<f32>,
    /// Still: sampler (ComfyUI's: euler, dpmpp_2m, dpmpp_2m_sde, uni_pc, ...; see `image
    /// --help`) [default: euler]
    #[arg(long, value_parser = parse_sampler, help_heading = "Sampling")]
    pub image_sampler: Option<SamplerKind>,
    /// Still: scheduler (ComfyUI's: normal, karras, simple, beta, ...) [default: normal]
    #[arg(long, value_parser = parse_scheduler, help_heading = "Sampling")]
    pub image_scheduler: Option<Scheduler>,
    /// Video: sampling steps (4-8 with a distill LoRA such as lightx2v, with --video-cfg 1)
    /// [default: 30]
    #[arg(long, help_heading = "Sampling")]
    pub video_steps: Option<usize>,
    /// Video: classifier-free guidance (1 = no negative pass, twice as fast) [default: 5]
    #[arg(long, help_heading = "Sampling")]
    pub video_cfg: Option<f32>,
    /// Video: flow shift (default 3.0 up to 480p, 5.0 above).
    #[arg(long, help_heading = "Sampling")]
    pub shift: Option<f64>,
    /// Video: sampler (unipc_wan is the official Wan solver; uni_pc is ComfyUI's)
    /// [default: unipc_wan]
    #[arg(long, value_parser = parse_sampler, help_heading = "Sampling")]
    pub video_sampler: Option<SamplerKind>,
    /// Video: scheduler [default: simple]
    #[arg(long, value_parser = parse_scheduler, help_heading = "Sampling")]
    pub video_scheduler: Option<Scheduler>,
    /// Seed of the still, and of the video unless --video-seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Seed of the video (default: --seed).
    #[arg(long, help_heading = "Sampling")]
    pub video_seed: Option<u64>,
    /// Noise generator of both stages: torch (torch.randn on the CPU, as ComfyUI) [default:
    /// torch]
    #[arg(long, value_parser = [settings::RNG], help_heading = "Sampling")]
    pub rng: Option<String>,

    /// Output video: .mp4, .webp or .gif; the still is saved beside it as .png with its
    /// parameters. Both are numbered if either exists, unless --overwrite [default:
    /// nijigen.mp4]
    #[arg(long, short = 'o', help_heading = "Output")]
    pub output: Option<PathBuf>,
    /// Also write every frame as DIR/frame_0000.png, ...
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub frames_dir: Option<PathBuf>,
    /// H.264 quantiser (0 best .. 51) [default: 20]
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
    /// CPU threads (default: all cores) [default: 0]
    #[arg(long, short = 't', help_heading = "Performance")]
    pub threads: Option<usize>,
    /// Still: decode with the SDXL VAE in tiles of SIZE pixels.
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub image_vae_tile: Option<u32>,
    /// Video: decode with the Wan VAE in spatial tiles of SIZE pixels.
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub video_vae_tile: Option<u32>,
    /// Video: step caching, off or easycache[:THRESH] (as `nijigen video --cache`)
    /// [default: off]
    #[arg(long, value_name = "METHOD", help_heading = "Performance")]
    pub video_cache: Option<String>,
    /// Device memory each stage may use: 12G, 11.5GiB, 900M. Both stages' plans must fit it
    /// (checked before computing). Default on a GPU: its free memory less 256 MiB; with
    /// --device cpu a budget is simulated.
    #[arg(long, value_name = "SIZE", value_parser = super::common::parse_budget, help_heading = "Memory")]
    pub vram_budget: Option<u64>,
    /// Weight offloading: auto, none, blocks, full [default: auto]
    #[arg(long, value_parser = super::common::parse_offload, help_heading = "Memory")]
    pub offload: Option<Offload>,
    /// Where the text encoders (and CLIP vision) run: auto, gpu, cpu [default: auto]
    #[arg(long, value_parser = super::common::parse_encoder_device, help_heading = "Memory")]
    pub text_encoder_device: Option<EncoderDevice>,
}

/// `nijigen i2v` resolved: each value from its flag, else nijigen.toml (`[image]` for the
/// still, `[video]` for the video, and the top-level keys), else the defaults of
/// [`settings::IMAGE`] and [`settings::VIDEO`]; made once, never changed.
#[derive(Clone, Debug)]
pub struct I2vSettings {
    /// Required ([`I2vSettings::stages`] fails without it).
    pub image_model: Option<Setting<PathBuf>>,
    pub clip_l: Option<Setting<PathBuf>>,
    pub clip_g: Option<Setting<PathBuf>>,
    pub image_vae: Option<Setting<PathBuf>>,
    pub image_lora: Vec<(PathBuf, f32)>,
    /// Required ([`I2vSettings::stages`] fails without it).
    pub video_model: Option<Setting<PathBuf>>,
    pub t5: Option<Setting<PathBuf>>,
    pub t5_tokenizer: Option<Setting<PathBuf>>,
    pub clip_vision: Option<Setting<PathBuf>>,
    pub video_vae: Option<Setting<PathBuf>>,
    pub video_lora: Vec<(PathBuf, f32)>,
    pub video_high_noise_model: Option<Setting<PathBuf>>,
    pub video_high_noise_lora: Vec<(PathBuf, f32)>,
    pub experts: super::video::ExpertArgs,
    pub prompt: String,
    pub negative_prompt: Setting<String>,
    /// `None`: the prompt.
    pub motion: Option<String>,
    /// `None`: Wan's official negative prompt.
    pub motion_negative: Option<Setting<String>>,
    pub width: Setting<u32>,
    pub height: Setting<u32>,
    pub frames: Setting<usize>,
    pub fps: Setting<u32>,
    pub image_width: Option<u32>,
    pub image_height: Option<u32>,
    pub image_steps: Setting<usize>,
    pub image_cfg: Setting<f32>,
    pub image_sampler: Setting<SamplerKind>,
    pub image_scheduler: Setting<Scheduler>,
    pub video_steps: Setting<usize>,
    pub video_cfg: Setting<f32>,
    pub shift: Option<Setting<f64>>,
    pub video_sampler: Setting<SamplerKind>,
    pub video_scheduler: Setting<Scheduler>,
    /// `None`: a random one, drawn when the run starts.
    pub seed: Option<u64>,
    pub video_seed: Option<u64>,
    pub output: PathBuf,
    pub frames_dir: Option<PathBuf>,
    pub qp: u8,
    pub overwrite: bool,
    pub json: bool,
    pub device: String,
    pub threads: Setting<usize>,
    pub image_vae_tile: Option<u32>,
    pub video_vae_tile: Option<u32>,
    /// `--video-cache`; `None`: off.
    pub video_cache: Option<crate::pipeline::step_cache::CacheSettings>,
    pub vram_budget: Option<Setting<u64>>,
    pub offload: Offload,
    pub text_encoder_device: EncoderDevice,
}

impl I2vSettings {
    /// Resolves `args` over `layers`.
    pub fn resolve(args: I2vArgs, layers: &Layers) -> anyhow::Result<I2vSettings> {
        let l = &layers.loaded;
        let (i, v) = (&l.file.image, &l.file.video);
        let (di, dv) = (settings::IMAGE, settings::VIDEO);
        let path = |flag, given: Option<PathBuf>, file: &Option<PathBuf>| {
            Pick::flag(flag, given).file(l, file.clone()).or_none()
        };
        Ok(I2vSettings {
            image_model: path("--image-model", args.image_model, &i.model),
            clip_l: path("--clip-l", args.clip_l, &i.clip_l),
            clip_g: path("--clip-g", args.clip_g, &i.clip_g),
            image_vae: path("--image-vae", args.image_vae, &i.vae),
            image_lora: args.image_lora,
            video_model: path("--video-model", args.video_model, &v.model),
            t5: path("--t5", args.t5, &v.t5),
            t5_tokenizer: path("--t5-tokenizer", args.t5_tokenizer, &v.t5_tokenizer),
            clip_vision: path("--clip-vision", args.clip_vision, &v.clip_vision),
            video_vae: path("--video-vae", args.video_vae, &v.vae),
            video_lora: args.video_lora,
            video_high_noise_model: path(
                "--video-high-noise-model",
                args.video_high_noise_model,
                &v.high_noise_model,
            ),
            video_high_noise_lora: args.video_high_noise_lora,
            experts: super::video::ExpertArgs {
                boundary: args.experts.boundary.or(v.boundary),
                high_noise_steps: args.experts.high_noise_steps.or(v.high_noise_steps),
                high_noise_cfg: args.experts.high_noise_cfg.or(v.high_noise_cfg),
                high_noise_sampler: args.experts.high_noise_sampler.or(settings::file_sampler(
                    &v.high_noise_sampler,
                    "video.high_noise_sampler",
                )?),
            },
            prompt: args.prompt.unwrap_or_else(|| settings::PROMPT.into()),
            negative_prompt: Pick::flag("--negative-prompt", args.negative_prompt)
                .file(l, i.negative_prompt.clone())
                .or(di.negative_prompt.into()),
            motion: args.motion,
            motion_negative: Pick::flag("--motion-negative", args.motion_negative)
                .file(l, v.negative_prompt.clone())
                .or_none(),
            width: Pick::flag("--width", args.width)
                .file(l, v.width)
                .or(dv.size.0),
            height: Pick::flag("--height", args.height)
                .file(l, v.height)
                .or(dv.size.1),
            frames: Pick::flag("--frames", args.frames)
                .file(l, v.frames)
                .or(dv.frames),
            fps: Pick::flag("--fps", args.fps).file(l, v.fps).or(dv.fps),
            image_width: args.image_width,
            image_height: args.image_height,
            image_steps: Pick::flag("--image-steps", args.image_steps)
                .file(l, i.steps)
                .or(di.steps),
            image_cfg: Pick::flag("--image-cfg", args.image_cfg)
                .file(l, i.cfg)
                .or(di.cfg),
            image_sampler: Pick::flag("--image-sampler", args.image_sampler)
                .file(l, settings::file_sampler(&i.sampler, "image.sampler")?)
                .or(di.sampler),
            image_scheduler: Pick::flag("--image-scheduler", args.image_scheduler)
                .file(
                    l,
                    settings::file_scheduler(&i.scheduler, "image.scheduler")?,
                )
                .or(di.scheduler),
            video_steps: Pick::flag("--video-steps", args.video_steps)
                .file(l, v.steps)
                .or(dv.steps),
            video_cfg: Pick::flag("--video-cfg", args.video_cfg)
                .file(l, v.cfg)
                .or(dv.cfg),
            shift: Pick::flag("--shift", args.shift).file(l, v.shift).or_none(),
            video_sampler: Pick::flag("--video-sampler", args.video_sampler)
                .file(l, settings::file_sampler(&v.sampler, "video.sampler")?)
                .or(dv.sampler),
            video_scheduler: Pick::flag("--video-scheduler", args.video_scheduler)
                .file(
                    l,
                    settings::file_scheduler(&v.scheduler, "video.scheduler")?,
                )
                .or(dv.scheduler),
            seed: args.seed,
            video_seed: args.video_seed,
            output: args.output.unwrap_or_else(|| dv.output.into()),
            frames_dir: args.frames_dir,
            qp: args.qp.unwrap_or(dv.qp),
            overwrite: args.overwrite,
            json: args.json,
            device: args.device.unwrap_or_else(|| settings::DEVICE.into()),
            threads: layers.threads(args.threads),
            image_vae_tile: args.image_vae_tile,
            video_vae_tile: args.video_vae_tile,
            video_cache: super::video::parse_cache(
                args.video_cache.or(v.cache.clone()).as_deref(),
            )?,
            vram_budget: layers.vram_budget(args.vram_budget)?,
            offload: args.offload.unwrap_or_default(),
            text_encoder_device: args.text_encoder_device.unwrap_or_default(),
        })
    }
}

fn required(
    p: &Option<Setting<PathBuf>>,
    flag: &str,
    what: &str,
) -> anyhow::Result<Setting<PathBuf>> {
    p.clone().ok_or_else(|| {
        WithHint {
            error: format!("no {what}: pass {flag} FILE"),
            hint: "`nijigen i2v --help` lists the files; `nijigen demo` runs without any".into(),
        }
        .into()
    })
}

/// The first free pair `stem.EXT` + `stem.png`, then `stem_0001.EXT` + `stem_0001.png`, ...
/// (the numbering of [`unique_path`]), so the video and its still share a name; `output` itself
/// with `overwrite`.
pub fn paired_paths(output: &Path, overwrite: bool) -> (PathBuf, PathBuf) {
    let pair = |v: PathBuf| {
        let s = v.with_extension("png");
        (v, s)
    };
    let free = |p: &Path| std::fs::symlink_metadata(p).is_err();
    let (video, still) = pair(output.to_path_buf());
    if overwrite || (free(&video) && free(&still)) {
        return (video, still);
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map_or_else(|| "mp4".into(), |e| e.to_string_lossy().into_owned());
    (1u64..)
        .map(|n| pair(output.with_file_name(format!("{stem}_{n:04}.{ext}"))))
        .find(|(v, s)| free(v) && free(s))
        .expect("an unbounded range has a free name")
}

impl I2vSettings {
    /// The still's size: given, or [`still_size`] of the video (one side given: the other
    /// from the video's aspect, a multiple of 8).
    pub fn still_size(&self) -> (u32, u32) {
        let (width, height) = (self.width.value, self.height.value);
        let aspect = f64::from(width) / f64::from(height.max(1));
        let round8 = |v: f64| ((v / 8.0).round() as u32).max(1) * 8;
        match (self.image_width, self.image_height) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, round8(f64::from(w) / aspect)),
            (None, Some(h)) => (round8(f64::from(h) * aspect), h),
            (None, None) => still_size(width, height),
        }
    }

    /// The settings of `nijigen image` for stage 1, writing `still`.
    pub fn image_settings(&self, model: Setting<PathBuf>, still: PathBuf) -> ImageSettings {
        let (width, height) = self.still_size();
        // The still's size is a flag's when that side was given, else derived (the default).
        let side = |v, given: Option<u32>, flag| match given {
            Some(_) => Setting::new(v, Source::Flag(flag)),
            None => Setting::new(v, Source::Default),
        };
        ImageSettings {
            model,
            clip_l: self.clip_l.clone(),
            clip_g: self.clip_g.clone(),
            vae: self.image_vae.clone(),
            lora: self.image_lora.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: side(width, self.image_width, "--image-width"),
            height: side(height, self.image_height, "--image-height"),
            batch: 1,
            init_image: None,
            strength: settings::IMAGE.strength,
            original_size: None,
            crop: None,
            target_size: None,
            steps: self.image_steps.clone(),
            cfg: self.image_cfg.clone(),
            sampler: self.image_sampler.clone(),
            scheduler: self.image_scheduler.clone(),
            seed: self.seed,
            output: still,
            overwrite: self.overwrite,
            json: self.json,
            device: self.device.clone(),
            threads: self.threads.clone(),
            vae_tile: self.image_vae_tile,
            vram_budget: self.vram_budget.clone(),
            offload: self.offload,
            text_encoder_device: self.text_encoder_device,
        }
    }

    /// The settings of `nijigen video -i still` for stage 2, writing `output`.
    pub fn video_settings(
        &self,
        model: Setting<PathBuf>,
        still: PathBuf,
        output: PathBuf,
    ) -> VideoSettings {
        VideoSettings {
            model,
            high_noise_model: self.video_high_noise_model.clone(),
            high_noise_lora: self.video_high_noise_lora.clone(),
            experts: self.experts.clone(),
            t5: self.t5.clone(),
            t5_tokenizer: self.t5_tokenizer.clone(),
            clip_vision: self.clip_vision.clone(),
            vae: self.video_vae.clone(),
            lora: self.video_lora.clone(),
            image: Some(still),
            prompt: self.motion.clone().unwrap_or_else(|| self.prompt.clone()),
            negative_prompt: self.motion_negative.clone(),
            width: Some(self.width.clone()),
            height: Some(self.height.clone()),
            frames: self.frames.clone(),
            fps: self.fps.clone(),
            steps: self.video_steps.clone(),
            cfg: self.video_cfg.clone(),
            shift: self.shift.clone(),
            sampler: self.video_sampler.clone(),
            scheduler: self.video_scheduler.clone(),
            seed: self.video_seed.or(self.seed),
            output,
            frames_dir: self.frames_dir.clone(),
            qp: self.qp,
            overwrite: self.overwrite,
            json: self.json,
            device: self.device.clone(),
            vae_tile: self.video_vae_tile,
            cache: self.video_cache,
            threads: self.threads.clone(),
            vram_budget: self.vram_budget.clone(),
            offload: self.offload,
            text_encoder_device: self.text_encoder_device,
        }
    }

    /// Both stages' settings, with the model files required and the output names chosen
    /// (`still` beside the video).
    pub fn stages(&self) -> anyhow::Result<(ImageSettings, VideoSettings)> {
        let image_model = required(&self.image_model, "--image-model", "image model (stage 1)")?;
        let video_model = required(&self.video_model, "--video-model", "video model (stage 2)")?;
        let (video, still) = paired_paths(&self.output, self.overwrite);
        Ok((
            self.image_settings(image_model, still.clone()),
            self.video_settings(video_model, still, video),
        ))
    }

    /// The same settings with every file found with `find` (after both requests are checked);
    /// each error names the i2v flag.
    pub fn located(&self, find: &Search) -> anyhow::Result<I2vSettings> {
        let at = |p: &Option<Setting<PathBuf>>, slot, flag| -> anyhow::Result<_> {
            Ok(match p {
                Some(p) => Some(Setting::new(
                    find.resolve(&p.value, slot, flag)?,
                    p.source.clone(),
                )),
                None => None,
            })
        };
        Ok(I2vSettings {
            image_model: at(&self.image_model, Slot::Checkpoint, "--image-model")?,
            clip_l: at(&self.clip_l, Slot::TextEncoder, "--clip-l")?,
            clip_g: at(&self.clip_g, Slot::TextEncoder, "--clip-g")?,
            image_vae: at(&self.image_vae, Slot::Vae, "--image-vae")?,
            video_model: at(&self.video_model, Slot::Diffusion, "--video-model")?,
            t5: at(&self.t5, Slot::TextEncoder, "--t5")?,
            t5_tokenizer: at(&self.t5_tokenizer, Slot::TextEncoder, "--t5-tokenizer")?,
            clip_vision: at(&self.clip_vision, Slot::ClipVision, "--clip-vision")?,
            video_vae: at(&self.video_vae, Slot::Vae, "--video-vae")?,
            image_lora: find.loras(&self.image_lora, "--image-lora")?,
            video_lora: find.loras(&self.video_lora, "--video-lora")?,
            video_high_noise_model: at(
                &self.video_high_noise_model,
                Slot::Diffusion,
                "--video-high-noise-model",
            )?,
            video_high_noise_lora: find
                .loras(&self.video_high_noise_lora, "--video-high-noise-lora")?,
            ..self.clone()
        })
    }
}

/// Time and figures of one stage.
#[derive(Debug, serde::Serialize)]
pub struct StageReport {
    pub timings: Timings,
    pub total_s: f64,
}

/// What `nijigen i2v --json` prints.
#[derive(Debug, serde::Serialize)]
pub struct I2vSummary {
    pub video: PathBuf,
    pub still: PathBuf,
    /// Every file written: video, its sidecar JSON, the still, the frames folder.
    pub outputs: Vec<PathBuf>,
    pub seed: u64,
    pub video_seed: u64,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: u32,
    pub still_width: u32,
    pub still_height: u32,
    pub still_stage: StageReport,
    pub video_stage: StageReport,
    pub total_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`).
    pub peak_ram_bytes: Option<u64>,
    /// Resident memory between the stages, after stage 1 released its models.
    pub ram_between_stages_bytes: Option<u64>,
    /// With `--video-cache`: as `nijigen video --json`'s `cache`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<serde_json::Value>,
    /// With a budget: the accountant's peak over both stages (on a GPU, or simulated with
    /// --device cpu), and the budget.
    #[serde(flatten)]
    pub device: super::progress::DeviceUse,
}

/// Current resident set size (Linux `VmRSS`).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Both stages checked and planned, with where their files go.
pub struct I2vRun {
    pub job: I2vJob,
    /// The still's PNG (beside the video).
    pub still: PathBuf,
    pub video: VideoTarget,
    pub threads: usize,
}

/// Runs both stages and returns the summary (nothing printed on stdout); bare file names are
/// looked up with `find`.
pub fn execute(s: &I2vSettings, quiet: bool, find: &Search) -> anyhow::Result<I2vSummary> {
    let device = resolve_device(&s.device)?;
    let seed = s.seed.unwrap_or_else(random_seed);
    let s = I2vSettings {
        seed: Some(seed),
        ..s.clone()
    };
    // Requests, files, memory plans of both stages: before anything is computed.
    let (ia, va) = s.stages()?;
    image::validate(&super::image::request(&ia, seed)?).map_err(explain)?;
    let video_seed = va.seed.unwrap_or(seed);
    let early = video::WanRequest {
        high_noise_steps: None,
        ..super::video::request(&va, None, video_seed, None)
    };
    video::validate(&early).map_err(explain)?;
    let (ia, va) = s.located(find)?.stages()?;
    let files = I2vFiles {
        image: super::image::files(&ia, find)?,
        video: super::video::files(&va, find)?,
    };
    let wan22 = video::wan22_defaults(&files.video).map_err(explain)?;
    let request = I2vRequest {
        image: super::image::request(&ia, seed)?,
        video: super::video::request(&va, None, video_seed, wan22),
    };
    let memory = MemoryOptions {
        fp8_cpu: Default::default(),
        device,
        vram_budget: s.vram_budget.as_ref().map(|b| b.value),
        offload: s.offload,
        encoders: s.text_encoder_device,
    };
    let job = i2v::prepare(files, request, &memory).map_err(explain)?;
    let run = I2vRun {
        job,
        still: ia.output.clone(),
        video: super::video::target(&va),
        threads: s.threads.value,
    };
    execute_job(&run, quiet, !quiet && !s.json)
}

/// Runs a prepared i2v job, writing the still, the video and its sidecar (and the frames
/// folder); `quiet`: no progress bars; `chatty`: the seed and the still's file on stderr.
pub fn execute_job(run: &I2vRun, quiet: bool, chatty: bool) -> anyhow::Result<I2vSummary> {
    let job = &run.job;
    let memory = job.memory();
    let (image_req, video_req) = (&job.image.request, &job.video.request);
    let (seed, video_seed) = (image_req.seed, video_req.seed);
    let mut outputs = VideoOutputs::open(&run.video, &job.video.files, video_req)?;
    let opts = RunOptions {
        fp8_cpu: Default::default(),
        threads: run.threads,
        memory: memory.clone(),
        cancel: Some(super::progress::cancel_flag()),
    };
    if chatty {
        eprintln!(
            "seed {seed}{}; still {}x{}, video {}x{}, {} frames",
            if video_seed == seed {
                String::new()
            } else {
                format!(" (video seed {video_seed})")
            },
            image_req.width,
            image_req.height,
            video_req.width,
            video_req.height,
            video_req.frames
        );
    }
    let start = Instant::now();
    let mut still_stage = None;
    let mut ram_between = None;
    let mut progress = Progress::new(quiet);
    let out = job.run(
        &opts,
        &mut |e| progress.event(e),
        &mut |still| {
            write_png(
                &run.still,
                &still.rgb,
                still.width,
                still.height,
                &png_params(&job.image.files, image_req, 0),
            )
            .map_err(|source| PipelineError::Output {
                path: run.still.clone(),
                source,
            })?;
            let total_s = start.elapsed().as_secs_f64();
            ram_between = rss_bytes();
            if chatty {
                eprintln!(
                    "still: {} ({total_s:.1} s); resident memory now {}",
                    run.still.display(),
                    ram_text(ram_between)
                );
            }
            still_stage = Some(total_s);
            Ok(())
        },
        &mut |_, rgb| Ok(outputs.push_frame(rgb)?),
    );
    progress.finish();
    let out = out.map_err(explain)?;
    let still_s = still_stage.unwrap_or_default();
    let mut written = outputs.finish()?;
    let still_stage = StageReport {
        timings: out.image.timings,
        total_s: still_s,
    };
    let video_stage = StageReport {
        timings: out.video.timings,
        total_s: start.elapsed().as_secs_f64() - still_s,
    };
    let video = written[0].clone();
    written.insert(2, run.still.clone());
    Ok(I2vSummary {
        video,
        still: run.still.clone(),
        outputs: written,
        seed,
        video_seed,
        width: video_req.width,
        height: video_req.height,
        frames: out.video.frames.len(),
        fps: run.video.fps,
        still_width: out.still.width,
        still_height: out.still.height,
        still_stage,
        video_stage,
        total_s: start.elapsed().as_secs_f64(),
        peak_ram_bytes: peak_rss_bytes(),
        ram_between_stages_bytes: ram_between,
        cache: video_req
            .cache
            .as_ref()
            .zip(out.video.cache.as_ref())
            .map(|(s, r)| super::progress::Summary::cache_json(s, r)),
        device: super::progress::DeviceUse::of(memory.as_ref()),
    })
}

/// Prints the summary: one JSON object with `json`, else the files and the time per stage.
pub fn print_summary(s: &I2vSummary, json: bool, quiet: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(s)?)?;
        return Ok(());
    }
    if quiet {
        return Ok(());
    }
    writeln!(
        out,
        "wrote {} ({}x{}, seed {})",
        s.still.display(),
        s.still_width,
        s.still_height,
        s.seed
    )?;
    writeln!(
        out,
        "wrote {} ({}x{}, {} frames at {} fps, seed {})",
        s.video.display(),
        s.width,
        s.height,
        s.frames,
        s.fps,
        s.video_seed
    )?;
    for p in s.outputs.iter().skip(3) {
        writeln!(out, "wrote {}", p.display())?;
    }
    for (name, st) in [("still", &s.still_stage), ("video", &s.video_stage)] {
        writeln!(
            out,
            "{name}: {}; {:.1} s",
            timings_text(&st.timings),
            st.total_s
        )?;
    }
    writeln!(
        out,
        "total {:.1} s; peak RAM {}{}",
        s.total_s,
        ram_text(s.peak_ram_bytes),
        s.device.text()
    )?;
    Ok(())
}

pub fn run(s: &I2vSettings, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let summary = execute(s, quiet, find)?;
    print_summary(&summary, s.json, quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `nijigen i2v ARGS` resolved with no environment and no config file.
    fn parse(args: &[&str]) -> I2vSettings {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: I2vArgs,
        }
        let a = Wrap::try_parse_from(std::iter::once("i2v").chain(args.iter().copied()))
            .unwrap()
            .a;
        I2vSettings::resolve(a, &Layers::default()).unwrap()
    }

    #[test]
    fn still_size_follows_the_video_or_the_flags() {
        let m = || Setting::new(PathBuf::from("m"), Source::Default);
        assert_eq!(parse(&[]).still_size(), (1344, 768));
        assert_eq!(parse(&["-W", "480", "-H", "832"]).still_size(), (768, 1344));
        assert_eq!(parse(&["--image-width", "1024"]).still_size(), (1024, 592));
        assert_eq!(parse(&["--image-height", "960"]).still_size(), (1664, 960));
        let a = parse(&["--image-width", "800", "--image-height", "600"]);
        assert_eq!(a.still_size(), (800, 600));
        // Stage 2 gets the video size and the motion prompt (the prompt without one).
        let v = a.video_settings(m(), "s.png".into(), "o.mp4".into());
        let value = |s: Option<Setting<u32>>| s.map(|s| s.value);
        assert_eq!(
            (value(v.width), value(v.height), v.prompt.as_str()),
            (Some(832), Some(480), "")
        );
        let a = parse(&["-p", "girl", "--seed", "5", "--video-seed", "6"]);
        let v = a.video_settings(m(), "s.png".into(), "o.mp4".into());
        assert_eq!((v.prompt.as_str(), v.seed), ("girl", Some(6)));
        let i = a.image_settings(m(), "s.png".into());
        assert_eq!(i.seed, Some(5));
        assert_eq!((i.width.value, i.width.source), (1344, Source::Default));
    }

    #[test]
    fn each_stage_takes_its_section_of_the_config_file() {
        let cfg = Path::new("/etc/nijigen.toml");
        let layers = Layers {
            loaded: crate::cli::settings::Loaded::from_text(
                cfg,
                "[image]\nmodel = \"sdxl.safetensors\"\nsteps = 12\nnegative_prompt = \"bad\"\n\
            [video]\nmodel = \"wan.gguf\"\nsteps = 4\nwidth = 640\nnegative_prompt = \"still\"\n",
            ),
            ..Layers::default()
        };
        let resolve = |args: &[&str]| {
            let a = Wrap::try_parse_from(std::iter::once("i2v").chain(args.iter().copied()))
                .unwrap()
                .a;
            I2vSettings::resolve(a, &layers).unwrap()
        };
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: I2vArgs,
        }
        let s = resolve(&["--video-steps", "6"]);
        let file = Source::File(cfg.into());
        assert_eq!((s.image_steps.value, &s.image_steps.source), (12, &file));
        assert_eq!(s.video_steps.value, 6);
        assert_eq!(s.video_steps.source, Source::Flag("--video-steps"));
        assert_eq!((s.width.value, s.height.value), (640, 480));
        assert_eq!(s.height.source, Source::Default);
        assert_eq!(s.negative_prompt.value, "bad");
        assert_eq!(s.motion_negative.as_ref().unwrap().value, "still");
        let (i, v) = s.stages().unwrap();
        assert_eq!(i.model.value, Path::new("sdxl.safetensors"));
        assert_eq!(v.model.value, Path::new("wan.gguf"));
        assert_eq!((i.steps.value, v.steps.value), (12, 6));
        // A flag wins over the file.
        let s = resolve(&["--image-model", "other.safetensors", "-W", "480"]);
        let image_model = s.image_model.unwrap();
        assert_eq!(image_model.value, Path::new("other.safetensors"));
        assert_eq!(image_model.source, Source::Flag("--image-model"));
        assert_eq!(s.width.value, 480);
    }

    #[test]
    fn video_and_still_share_a_free_name() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mp4");
        let png = dir.path().join("clip.png");
        assert_eq!(paired_paths(&out, false), (out.clone(), png.clone()));
        // The still's name taken: both move on to the same number.
        std::fs::write(&png, b"x").unwrap();
        let (v, s) = paired_paths(&out, false);
        assert_eq!(v, dir.path().join("clip_0001.mp4"));
        assert_eq!(s, dir.path().join("clip_0001.png"));
        // Now the video's numbered name taken too.
        std::fs::write(&v, b"x").unwrap();
        let (v2, s2) = paired_paths(&out, false);
        assert_eq!(v2, dir.path().join("clip_0002.mp4"));
        assert_eq!(s2, dir.path().join("clip_0002.png"));
        assert_eq!(paired_paths(&out, true), (out, png));
    }
}
