//! `nijigen demo`: the whole two-stage pipeline on tiny random-weight models, no download.
//!
//! The models ([`crate::demo`]) are written to a cache folder the first time (and again when
//! missing or built by another version), then `nijigen i2v` runs on them at a tiny size on
//! the CPU (or the GPU of a CUDA build). The outputs are noise-like pictures (the weights are random); what the demo shows
//! is every stage running, the files it writes, and what a real run needs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use super::common::{explain, resolve_device};
use super::i2v::{self, I2vRun, I2vSummary};
use super::settings;
use super::WithHint;
use crate::demo::{self, DemoModels};
use crate::pipeline;
use crate::pipeline::i2v::{I2vFiles, I2vRequest};
use crate::pipeline::image::{SdxlFiles, SdxlRequest};
use crate::pipeline::output::VideoTarget;
use crate::pipeline::plan::MemoryOptions;
use crate::pipeline::video::{WanFiles, WanRequest};
use crate::sampling::{SamplerKind, Scheduler};

#[derive(Debug, Args)]
#[command(
    after_help = "The weights are random: demo.png and demo.mp4 are noise-like \
    patterns. `nijigen demo` prints the files and the command of a real run at the end."
)]
pub struct DemoArgs {
    /// Where the tiny models are kept (default: $XDG_CACHE_HOME/nijigen/demo or
    /// ~/.cache/nijigen/demo); written when missing or stale.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Folder for demo.png and demo.mp4 (numbered names if they exist, unless --overwrite)
    /// [default: .]
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Replace existing demo.png / demo.mp4.
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of both stages [default: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// CPU threads (default: all cores) [default: 0]
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Compute device: auto (the first CUDA GPU of a CUDA build, else the CPU), cpu, cuda:N
    /// [default: auto]
    #[arg(long)]
    pub device: Option<String>,
    /// Also write every video frame as a PNG into DIR.
    #[arg(long, value_name = "DIR")]
    pub frames_dir: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl DemoArgs {
    fn output_dir(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| settings::DEMO_OUTPUT_DIR.into())
    }

    fn seed(&self) -> u64 {
        self.seed.unwrap_or(settings::DEMO_SEED)
    }
}

/// The demo's request: what `nijigen i2v` would be given.
const PROMPT: &str = "1girl, silver hair, school uniform, cherry blossoms, masterpiece";
const MOTION: &str = "she turns her head and smiles, petals falling in the wind";

/// The demo's run through the library: the still at 128 x 96, the video at 64 x 48 with 9
/// frames, few steps (well under a minute on two CPU cores), with `nijigen i2v`'s defaults
/// otherwise.
fn demo_run(m: &DemoModels, a: &DemoArgs) -> anyhow::Result<I2vRun> {
    let device = resolve_device(a.device.as_deref().unwrap_or(settings::DEVICE))?;
    let (video_path, still_path) = i2v::paired_paths(&a.output_dir().join("demo.mp4"), a.overwrite);
    let files = I2vFiles {
        image: SdxlFiles::single(&m.sdxl),
        video: WanFiles {
            model: m.dit.clone(),
            t5: Some(m.t5.clone()),
            clip_vision: Some(m.clip_vision.clone()),
            vae: Some(m.vae.clone()),
            ..WanFiles::default()
        },
    };
    let request = I2vRequest {
        image: SdxlRequest {
            prompt: PROMPT.into(),
            negative_prompt: String::new(),
            width: 128,
            height: 96,
            steps: 6,
            cfg: 6.0,
            sampler: SamplerKind::Euler,
            scheduler: Scheduler::Normal,
            seed: a.seed(),
            batch: 1,
            init_image: None,
            strength: 0.6,
            vae_tile: None,
            size_cond: None,
        },
        video: WanRequest {
            image: None,
            prompt: MOTION.into(),
            negative_prompt: None,
            width: 64,
            height: 48,
            frames: 9,
            steps: 4,
            cfg: 5.0,
            shift: None,
            sampler: SamplerKind::UniPcWan,
            scheduler: Scheduler::Simple,
            seed: a.seed(),
            vae_tile: None,
            keep_decoded: false,
            ..WanRequest::default()
        },
    };
    let memory = MemoryOptions {
        device,
        ..MemoryOptions::default()
    };
    let job = pipeline::i2v::prepare(files, request, &memory).map_err(explain)?;
    Ok(I2vRun {
        job,
        video: VideoTarget {
            path: video_path,
            frames_dir: a.frames_dir.clone(),
            fps: 8,
            qp: 20,
            overwrite: a.overwrite,
            image_file: Some(still_path.clone()),
        },
        still: still_path,
        threads: a.threads.unwrap_or(settings::THREADS),
    })
}

/// What `--json` prints.
#[derive(serde::Serialize)]
struct DemoSummary<'a> {
    cache_dir: &'a std::path::Path,
    models_built: bool,
    #[serde(flatten)]
    run: &'a I2vSummary,
}

const REAL_RUN: &str = "\
A real run needs these files (see README \"Quickstart\"), in a ComfyUI folder (--comfyui DIR)
or one models folder (--models-dir DIR or NIJIGEN_MODELS):
  still  an SDXL-family checkpoint, e.g. illustriousXL_v01.safetensors  (models/checkpoints)
  video  wan2.1-i2v-14b-480p-Q4_K_M.gguf   city96/Wan2.1-I2V-14B-480P-gguf  (models/diffusion_models)
         umt5-xxl-encoder-Q8_0.gguf        city96/umt5-xxl-encoder-gguf     (models/text_encoders)
         clip_vision_h.safetensors         Comfy-Org/Wan_2.1_ComfyUI_repackaged (models/clip_vision)
         wan_2.1_vae.safetensors           Comfy-Org/Wan_2.1_ComfyUI_repackaged (models/vae)
then:
  nijigen i2v --comfyui ~/ComfyUI --image-model illustriousXL_v01.safetensors \\
    --video-model wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf \\
    --clip-vision clip_vision_h.safetensors --video-vae wan_2.1_vae.safetensors \\
    -p '1girl, silver hair, school uniform, cherry blossoms, masterpiece' \\
    --motion 'she turns her head and smiles, petals falling in the wind' -o clip.mp4";

pub fn run(args: DemoArgs, quiet: bool) -> anyhow::Result<()> {
    let dir = match &args.cache_dir {
        Some(d) => d.clone(),
        None => demo::default_cache_dir().ok_or_else(|| WithHint {
            error: "no cache folder: neither XDG_CACHE_HOME nor HOME is set".into(),
            hint: "pass --cache-dir DIR".into(),
        })?,
    };
    let chatty = !quiet && !args.json;
    if chatty {
        eprintln!(
            "nijigen demo: tiny random-weight models of the real SDXL and Wan2.1 I2V \
             architectures, on the CPU"
        );
    }
    let models = demo::ensure(&dir)
        .with_context(|| format!("writing the demo models to {}", dir.display()))?;
    if chatty {
        eprintln!(
            "models: {} {}",
            if models.built {
                "written to"
            } else {
                "up to date in"
            },
            dir.display()
        );
    }
    let output_dir = args.output_dir();
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    let run = demo_run(&models, &args)?;
    let summary = i2v::execute_job(&run, quiet, chatty)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let s = DemoSummary {
            cache_dir: &dir,
            models_built: models.built,
            run: &summary,
        };
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
        return Ok(());
    }
    i2v::print_summary(&summary, false, quiet)?;
    if !quiet {
        writeln!(
            out,
            "\nThe weights are random, so {} and {} show noise-like patterns, not a picture:\n\
             the demo checks that every stage runs on this machine.\n\n{REAL_RUN}",
            summary.still.display(),
            summary.video.display()
        )?;
    }
    Ok(())
}
