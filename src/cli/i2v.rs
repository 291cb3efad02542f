//! `nijigen i2v`: both stages in one process: an SDXL still from the appearance prompt, saved
//! as PNG beside the video, then Wan2.1 animating it with the motion prompt.
//!
//! The command is `nijigen image` followed by `nijigen video -i still.png`: it builds the
//! arguments of both ([`I2vArgs::image_args`], [`I2vArgs::video_args`]) and runs their code, so
//! the two ways give the same files. Everything that can fail fast is checked before stage 1:
//! both requests, every file against its slot, and the memory plan of both stages.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;

use super::find::Search;
use super::image::{
    explain, parse_lora, parse_sampler, parse_scheduler, random_seed, run_options, ImageArgs,
};
use super::progress::{peak_rss_bytes, ram_text, timings_text, Progress};
use super::video::{Outputs, VideoArgs};
use super::WithHint;
use crate::media::png::write_png;
use crate::pipeline::i2v::{check_image_files, check_video_files, still_size};
use crate::pipeline::wan::{self, DEFAULT_FPS};
use crate::pipeline::Memory;
use crate::pipeline::{sdxl, InitImage, Timings};
use crate::runtime::plan::{Component, EncoderDevice, Offload, Plan};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Clone, Debug, Args)]
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

    /// Stage 2: Wan2.1 image-to-video DiT (GGUF of any quant, ComfyUI safetensors, diffusers).
    #[arg(long, value_name = "FILE", help_heading = "Models: video (stage 2)")]
    pub video_model: Option<PathBuf>,
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
    /// LoRA FILE[:WEIGHT] for the Wan DiT, repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]", value_parser = parse_lora, help_heading = "Models: video (stage 2)")]
    pub video_lora: Vec<(PathBuf, f32)>,

    /// What the still shows (appearance). Weights: (text:1.2).
    #[arg(long, short = 'p', default_value = "", help_heading = "Prompt")]
    pub prompt: String,
    /// What the still should avoid.
    #[arg(long, short = 'n', default_value = "", help_heading = "Prompt")]
    pub negative_prompt: String,
    /// What happens in the clip (default: the --prompt).
    #[arg(long, help_heading = "Prompt")]
    pub motion: Option<String>,
    /// What the clip should avoid (default: Wan's official negative prompt).
    #[arg(long, help_heading = "Prompt")]
    pub motion_negative: Option<String>,

    /// Video width (multiple of 16).
    #[arg(long, short = 'W', default_value_t = 832, help_heading = "Video")]
    pub width: u32,
    /// Video height (multiple of 16).
    #[arg(long, short = 'H', default_value_t = 480, help_heading = "Video")]
    pub height: u32,
    /// Frames, 4n + 1 (81 = 5 s at 16 fps).
    #[arg(long, default_value_t = 81, help_heading = "Video")]
    pub frames: usize,
    /// Frames per second of the output file.
    #[arg(long, default_value_t = DEFAULT_FPS, help_heading = "Video")]
    pub fps: u32,
    /// Still width (multiple of 8; default: about 1 MP at the video's aspect, e.g. 1344 for
    /// 832x480). The video stage fits the still to the video size (center crop, Lanczos).
    #[arg(long, help_heading = "Still")]
    pub image_width: Option<u32>,
    /// Still height (multiple of 8; default: about 1 MP at the video's aspect, e.g. 768).
    #[arg(long, help_heading = "Still")]
    pub image_height: Option<u32>,

    /// Still: sampling steps.
    #[arg(long, default_value_t = 25, help_heading = "Sampling")]
    pub image_steps: usize,
    /// Still: classifier-free guidance scale.
    #[arg(long, default_value_t = 6.0, help_heading = "Sampling")]
    pub image_cfg: f32,
    /// Still: sampler (euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, lcm, uni_pc).
    #[arg(long, default_value = "euler", value_parser = parse_sampler, help_heading = "Sampling")]
    pub image_sampler: SamplerKind,
    /// Still: scheduler (normal, karras, exponential, simple, sgm_uniform).
    #[arg(long, default_value = "normal", value_parser = parse_scheduler, help_heading = "Sampling")]
    pub image_scheduler: Scheduler,
    /// Video: sampling steps (4-8 with a distill LoRA such as lightx2v, with --video-cfg 1).
    #[arg(long, default_value_t = 30, help_heading = "Sampling")]
    pub video_steps: usize,
    /// Video: classifier-free guidance (1 = no negative pass, twice as fast).
    #[arg(long, default_value_t = 5.0, help_heading = "Sampling")]
    pub video_cfg: f32,
    /// Video: flow shift (default 3.0 up to 480p, 5.0 above).
    #[arg(long, help_heading = "Sampling")]
    pub shift: Option<f64>,
    /// Video: sampler (uni_pc is the official one).
    #[arg(long, default_value = "uni_pc", value_parser = parse_sampler, help_heading = "Sampling")]
    pub video_sampler: SamplerKind,
    /// Video: scheduler.
    #[arg(long, default_value = "simple", value_parser = parse_scheduler, help_heading = "Sampling")]
    pub video_scheduler: Scheduler,
    /// Seed of the still, and of the video unless --video-seed (default: random, printed).
    #[arg(long, help_heading = "Sampling")]
    pub seed: Option<u64>,
    /// Seed of the video (default: --seed).
    #[arg(long, help_heading = "Sampling")]
    pub video_seed: Option<u64>,
    /// Noise generator of both stages: torch (torch.randn on the CPU, as ComfyUI).
    #[arg(long, default_value = "torch", value_parser = ["torch"], help_heading = "Sampling")]
    pub rng: String,

    /// Output video: .mp4, .webp or .gif; the still is saved beside it as .png with its
    /// parameters. Both are numbered if either exists, unless --overwrite.
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
    /// H.264 quantiser (0 best .. 51).
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
    /// CPU threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0, help_heading = "Performance")]
    pub threads: usize,
    /// Still: decode with the SDXL VAE in tiles of SIZE pixels.
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub image_vae_tile: Option<u32>,
    /// Video: decode with the Wan VAE in spatial tiles of SIZE pixels.
    #[arg(long, value_name = "SIZE", help_heading = "Performance")]
    pub video_vae_tile: Option<u32>,
    /// Device memory each stage may use: 12G, 11.5GiB, 900M. Both stages' plans must fit it
    /// (checked before computing). Default on a GPU: its free memory less 256 MiB; with
    /// --device cpu a budget is simulated.
    #[arg(long, value_name = "SIZE", value_parser = super::plan::parse_budget, help_heading = "Memory")]
    pub vram_budget: Option<u64>,
    /// Weight offloading: auto, none, blocks, full.
    #[arg(long, default_value = "auto", value_parser = super::plan::parse_offload, help_heading = "Memory")]
    pub offload: Offload,
    /// Where the text encoders (and CLIP vision) run: auto, gpu, cpu.
    #[arg(long, default_value = "auto", value_parser = super::plan::parse_encoder_device, help_heading = "Memory")]
    pub text_encoder_device: EncoderDevice,
}

fn required(p: &Option<PathBuf>, flag: &str, what: &str) -> anyhow::Result<PathBuf> {
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

impl I2vArgs {
    /// The still's size: given, or [`still_size`] of the video (one side given: the other
    /// from the video's aspect, a multiple of 8).
    pub fn still_size(&self) -> (u32, u32) {
        let aspect = f64::from(self.width) / f64::from(self.height.max(1));
        let round8 = |v: f64| ((v / 8.0).round() as u32).max(1) * 8;
        match (self.image_width, self.image_height) {
            (Some(w), Some(h)) => (w, h),
            (Some(w), None) => (w, round8(f64::from(w) / aspect)),
            (None, Some(h)) => (round8(f64::from(h) * aspect), h),
            (None, None) => still_size(self.width, self.height),
        }
    }

    /// The arguments of `nijigen image` for stage 1, writing `still`.
    pub fn image_args(&self, model: PathBuf, still: PathBuf) -> ImageArgs {
        let (width, height) = self.still_size();
        ImageArgs {
            model,
            clip_l: self.clip_l.clone(),
            clip_g: self.clip_g.clone(),
            vae: self.image_vae.clone(),
            lora: self.image_lora.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width,
            height,
            batch: 1,
            init_image: None,
            strength: 0.6,
            original_size: None,
            crop: None,
            target_size: None,
            steps: self.image_steps,
            cfg: self.image_cfg,
            sampler: self.image_sampler,
            scheduler: self.image_scheduler,
            seed: self.seed,
            rng: self.rng.clone(),
            output: still,
            overwrite: self.overwrite,
            json: self.json,
            device: self.device.clone(),
            threads: self.threads,
            vae_tile: self.image_vae_tile,
            vram_budget: self.vram_budget,
            offload: self.offload,
            text_encoder_device: self.text_encoder_device,
        }
    }

    /// The arguments of `nijigen video -i still` for stage 2, writing `output`.
    pub fn video_args(&self, model: PathBuf, still: PathBuf, output: PathBuf) -> VideoArgs {
        VideoArgs {
            model,
            t5: self.t5.clone(),
            t5_tokenizer: self.t5_tokenizer.clone(),
            clip_vision: self.clip_vision.clone(),
            vae: self.video_vae.clone(),
            lora: self.video_lora.clone(),
            image: Some(still),
            prompt: self.motion.clone().unwrap_or_else(|| self.prompt.clone()),
            negative_prompt: self.motion_negative.clone(),
            width: Some(self.width),
            height: Some(self.height),
            frames: self.frames,
            fps: self.fps,
            steps: self.video_steps,
            cfg: self.video_cfg,
            shift: self.shift,
            sampler: self.video_sampler,
            scheduler: self.video_scheduler,
            seed: self.video_seed.or(self.seed),
            rng: self.rng.clone(),
            output,
            frames_dir: self.frames_dir.clone(),
            qp: self.qp,
            overwrite: self.overwrite,
            json: self.json,
            device: self.device.clone(),
            vae_tile: self.video_vae_tile,
            threads: self.threads,
            vram_budget: self.vram_budget,
            offload: self.offload,
            text_encoder_device: self.text_encoder_device,
        }
    }

    /// Both stages' arguments, with the model files required and the output names chosen
    /// (`still` beside the video).
    pub fn stages(&self) -> anyhow::Result<(ImageArgs, VideoArgs)> {
        let image_model = required(&self.image_model, "--image-model", "image model (stage 1)")?;
        let video_model = required(&self.video_model, "--video-model", "video model (stage 2)")?;
        let (video, still) = paired_paths(&self.output, self.overwrite);
        Ok((
            self.image_args(image_model, still.clone()),
            self.video_args(video_model, still, video),
        ))
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

/// Runs both stages and returns the summary (nothing printed on stdout); bare file names are
/// looked up with `find`.
pub fn execute(args: &I2vArgs, quiet: bool, find: &Search) -> anyhow::Result<I2vSummary> {
    super::plan::resolve_device(&args.device)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut args = I2vArgs {
        seed: Some(seed),
        ..args.clone()
    };
    // Requests, files, memory plans of both stages: before anything is computed.
    let (ia, va) = args.stages()?;
    sdxl::validate(&super::image::request(&ia, seed)?).map_err(explain)?;
    let video_seed = va.seed.unwrap_or(seed);
    wan::validate(&super::video::request(&va, None, video_seed)).map_err(explain)?;
    super::config::resolve_i2v(&mut args, find)?;
    let (ia, va) = args.stages()?;
    let mut image_req = super::image::request(&ia, seed)?;
    let mut video_req = super::video::request(&va, None, video_seed);
    let image_files = super::image::files(&ia);
    let video_files = super::video::files(&va);
    check_image_files(&image_files).map_err(explain)?;
    check_video_files(&video_files).map_err(explain)?;
    // One ledger for both stages (the peak is over the whole run); each component placed as
    // its stage's plan says.
    let memory = match (
        super::plan::memory_image(&ia)?,
        super::plan::memory_video(&va)?,
    ) {
        (Some((m1, p1)), Some((m2, p2))) => {
            let tile = |p: &Plan, c| p.get(c).and_then(|c| c.tile);
            image_req.vae_tile = image_req.vae_tile.or(tile(&p1, Component::VaeSdxl));
            video_req.vae_tile = video_req.vae_tile.or(tile(&p2, Component::VaeWan));
            let mut placements = m1.placements;
            placements.extend(m2.placements);
            Some((
                Memory {
                    accountant: m1.accountant,
                    placements,
                    device: m1.device,
                },
                p1,
            ))
        }
        _ => None,
    };
    let still_path = ia.output.clone();
    let mut outputs = Outputs::open(&va, &video_req)?;
    let opts = run_options(args.threads, memory.as_ref());
    let chatty = !quiet && !args.json;
    if chatty {
        eprintln!(
            "seed {seed}{}; still {}x{}, video {}x{}, {} frames",
            if video_seed == seed {
                String::new()
            } else {
                format!(" (video seed {video_seed})")
            },
            ia.width,
            ia.height,
            video_req.width,
            video_req.height,
            video_req.frames
        );
    }
    let start = Instant::now();

    // Stage 1: the still. `generate` releases the SDXL models before it returns.
    let mut progress = Progress::labelled(quiet, "1/2 still");
    image_req.seed = seed;
    let out = sdxl::generate(&image_files, &image_req, &opts, &mut |e| progress.event(e));
    progress.finish();
    let out = out.map_err(explain)?;
    let still = out
        .images
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("stage 1 returned no image"))?;
    write_png(
        &still_path,
        &still.rgb,
        still.width,
        still.height,
        &super::image::png_params(&ia, &image_req, 0),
    )
    .with_context(|| format!("writing {}", still_path.display()))?;
    let still_stage = StageReport {
        timings: out.timings,
        total_s: start.elapsed().as_secs_f64(),
    };
    let ram_between = rss_bytes();
    if chatty {
        eprintln!(
            "still: {} ({:.1} s); resident memory now {}",
            still_path.display(),
            still_stage.total_s,
            ram_text(ram_between)
        );
    }
    opts.check_cancel().map_err(explain)?;

    // Stage 2: the video from the still's pixels (the same bytes as the PNG).
    let t2 = Instant::now();
    video_req.image = Some(InitImage {
        rgb: still.rgb,
        width: still.width,
        height: still.height,
    });
    let mut progress = Progress::labelled(quiet, "2/2 video");
    let vout = outputs.render(&video_files, &video_req, &opts, &mut progress)?;
    let mut written = outputs.finish()?;
    let video_stage = StageReport {
        timings: vout.timings,
        total_s: t2.elapsed().as_secs_f64(),
    };
    let video = written[0].clone();
    written.insert(2, still_path.clone());
    Ok(I2vSummary {
        video,
        still: still_path,
        outputs: written,
        seed,
        video_seed,
        width: video_req.width,
        height: video_req.height,
        frames: vout.frames.len(),
        fps: args.fps,
        still_width: still.width,
        still_height: still.height,
        still_stage,
        video_stage,
        total_s: start.elapsed().as_secs_f64(),
        peak_ram_bytes: peak_rss_bytes(),
        ram_between_stages_bytes: ram_between,
        device: super::progress::DeviceUse::of(memory.as_ref().map(|(m, _)| m)),
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

pub fn run(args: I2vArgs, quiet: bool, find: &Search) -> anyhow::Result<()> {
    let summary = execute(&args, quiet, find)?;
    print_summary(&summary, args.json, quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> I2vArgs {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: I2vArgs,
        }
        Wrap::try_parse_from(std::iter::once("i2v").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn still_size_follows_the_video_or_the_flags() {
        assert_eq!(parse(&[]).still_size(), (1344, 768));
        assert_eq!(parse(&["-W", "480", "-H", "832"]).still_size(), (768, 1344));
        assert_eq!(parse(&["--image-width", "1024"]).still_size(), (1024, 592));
        assert_eq!(parse(&["--image-height", "960"]).still_size(), (1664, 960));
        let a = parse(&["--image-width", "800", "--image-height", "600"]);
        assert_eq!(a.still_size(), (800, 600));
        // Stage 2 gets the video size and the motion prompt (the prompt without one).
        let v = a.video_args("m".into(), "s.png".into(), "o.mp4".into());
        assert_eq!(
            (v.width, v.height, v.prompt.as_str()),
            (Some(832), Some(480), "")
        );
        let a = parse(&["-p", "girl", "--seed", "5", "--video-seed", "6"]);
        let v = a.video_args("m".into(), "s.png".into(), "o.mp4".into());
        assert_eq!((v.prompt.as_str(), v.seed), ("girl", Some(6)));
        assert_eq!(a.image_args("m".into(), "s.png".into()).seed, Some(5));
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
