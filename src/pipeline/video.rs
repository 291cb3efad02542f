//! Stage 2: Wan2.1 image-to-video (and text-to-video with a T2V DiT), as the official code and
//! ComfyUI run it.
//!
//! 1. **Files** ([`WanFiles`]): the DiT (city96 GGUF of any quant type, ComfyUI safetensors, or
//!    a diffusers folder), umT5 (GGUF with its tokenizer in `tokenizer.ggml.*`, or safetensors
//!    with `--t5-tokenizer`), CLIP vision H (I2V only) and the Wan VAE. Sizes from the weights.
//! 2. **Text**: Wan's cleaning and the Unigram tokenizer (up to 511 pieces + `</s>`), umT5 over
//!    the real tokens, the output zero-padded to 512 rows (official `T5EncoderModel`). With CFG
//!    and no negative prompt, the official default negative prompt.
//! 3. **Image** (I2V): the still fitted to the video size (center crop, Lanczos), CLIP vision
//!    (224x224 bicubic, no crop; block 31 of 32, 257 tokens), and the condition
//!    `y = [mask (4 ch, 1 on latent frame 0), normalise(VAE.encode([image, 0 x (F-1)]))]`.
//! 4. **Sampling**: rectified flow, sigmas of the scheduler after `shift`, noise
//!    `torch.randn([1, 16, T, h, w], generator=torch.manual_seed(seed))` (CPU), CFG on the
//!    denoised predictions (ComfyUI), timestep = 1000 sigma. The DiT sees `[x, y]` (36 ch).
//! 5. **Decode**: de-normalise, the VAE one latent frame at a time (frame 0 -> 1 frame, later
//!    ones -> 4), frames handed out as they are decoded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::plan::{
    nothing_to_plan, open_net, open_required, spec, stage_plan, when_budgeted, Finished, Job,
    MemoryOptions, OpenFiles, StagePlan,
};
pub use super::{from_rgb8, to_rgb8, InitImage};
use super::{inspect, placed, Event, Options, PipelineError, RunOptions, Timings};
use crate::formats::names::Architecture;
use crate::formats::weights::Format;
use crate::ggml::TensorSet;
use crate::lora::{Adapters, LoraError, LoraFile, LoraTarget};
use crate::models::network;
use crate::models::wan_vae::{denormalize, normalize, LATENTS_MEAN, LATENTS_STD};
use crate::models::{ClipVision, Umt5Encoder, WanAttention, WanDit, WanVae};
use crate::models::{CLIP_VISION, DIT, T5, VAE_WAN};
use crate::runtime::{Fp8Load, WeightStore};
use crate::sampling::{
    apply_cfg, comfy_sampler_noise, Denoiser, FlowSchedule, ModelSampling, Parameterization,
    SamplerConfig, SamplerKind, Scheduler, TorchGenerator,
};
use crate::text::umt5::{Umt5Tokenizer, Umt5Tokens, TEXT_LEN};

/// The official default negative prompt (Wan2.1 `wan/configs/shared_config.py`).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// The 480p area (832 x 480): default sizes aim at it, and the default shift is 3.0 up to it,
/// 5.0 above (Wan's 480p / 720p settings).
pub const AREA_480P: u32 = 832 * 480;

/// Frames per second of Wan2.1's training data (`sample_fps`).
pub const DEFAULT_FPS: u32 = 16;

/// The weight files of stage 2.
#[derive(Clone, Debug, Default)]
pub struct WanFiles {
    /// The DiT: a GGUF / safetensors file or a diffusers folder (then the other components
    /// default to its subfolders).
    pub model: PathBuf,
    pub t5: Option<PathBuf>,
    /// tokenizer.json or spiece.model, for a umT5 file without tokenizer metadata.
    pub t5_tokenizer: Option<PathBuf>,
    pub clip_vision: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub loras: Vec<(PathBuf, f32)>,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct WanRequest {
    /// The first frame (I2V); `None` with a T2V model.
    pub image: Option<InitImage>,
    pub prompt: String,
    /// `None`: [`DEFAULT_NEGATIVE_PROMPT`].
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    /// 4n + 1.
    pub frames: usize,
    pub steps: usize,
    pub cfg: f32,
    /// `None`: [`default_shift`].
    pub shift: Option<f64>,
    pub sampler: SamplerKind,
    pub scheduler: Scheduler,
    pub seed: u64,
    /// Decode in spatial tiles of this many pixels (overlap 1/8 of it, blended); `None`: whole
    /// frames.
    pub vae_tile: Option<u32>,
    /// Keep the decoded float video in [`WanOutput::decoded`] (tests; 4 bytes per value).
    pub keep_decoded: bool,
}

impl Default for WanRequest {
    fn default() -> Self {
        WanRequest {
            image: None,
            prompt: String::new(),
            negative_prompt: None,
            width: 832,
            height: 480,
            frames: 81,
            steps: 30,
            cfg: 5.0,
            shift: None,
            sampler: SamplerKind::UniPc,
            scheduler: Scheduler::Simple,
            seed: 0,
            vae_tile: None,
            keep_decoded: false,
        }
    }
}

/// Wan's shift for a `width` x `height` video: 3.0 up to the 480p area, 5.0 above.
pub fn default_shift(width: u32, height: u32) -> f64 {
    if u64::from(width) * u64::from(height) <= u64::from(AREA_480P) {
        3.0
    } else {
        5.0
    }
}

/// The video size for an image of `w` x `h`: its aspect at about the 480p area, sides
/// multiples of 16.
pub fn size_for_image(w: u32, h: u32) -> (u32, u32) {
    if w == 0 || h == 0 {
        return (832, 480);
    }
    let aspect = f64::from(w) / f64::from(h);
    let height = (f64::from(AREA_480P) / aspect).sqrt();
    let width = height * aspect;
    let round16 = |v: f64| ((v / 16.0).round() as u32).max(1) * 16;
    (round16(width), round16(height))
}

/// One finished video.
#[derive(Clone, Debug)]
pub struct WanOutput {
    pub width: u32,
    pub height: u32,
    /// RGB8 HWC, one per frame.
    pub frames: Vec<Vec<u8>>,
    /// [3, F, H, W] in [-1, 1] when [`WanRequest::keep_decoded`].
    pub decoded: Option<Vec<f32>>,
    /// The final (normalised) latent [16, T, h, w].
    pub latent: Vec<f32>,
    pub seed: u64,
    pub shift: f64,
    pub timings: Timings,
}

/// Checks a request before anything is loaded.
pub fn validate(req: &WanRequest) -> Result<(), PipelineError> {
    let bad = |m: String| Err(PipelineError::Request(m));
    if req.width == 0 || req.height == 0 || req.width % 16 != 0 || req.height % 16 != 0 {
        return bad(format!(
            "size {}x{}: width and height must be positive multiples of 16",
            req.width, req.height
        ));
    }
    if req.width > 4096 || req.height > 4096 {
        return bad(format!(
            "size {}x{}: at most 4096 per side",
            req.width, req.height
        ));
    }
    if req.frames == 0 || (req.frames - 1) % 4 != 0 {
        let lo = (req.frames.saturating_sub(1) / 4) * 4 + 1;
        return bad(format!(
            "{} frames: Wan needs 4n + 1 frames (e.g. {lo} or {})",
            req.frames,
            lo + 4
        ));
    }
    if req.frames > 1001 {
        return bad(format!("{} frames: at most 1001", req.frames));
    }
    if req.steps == 0 || req.steps > 10_000 {
        return bad(format!("{} steps: use 1 to 10000", req.steps));
    }
    if !req.cfg.is_finite() || req.cfg < 0.0 {
        return bad(format!("cfg {}: must be a number >= 0", req.cfg));
    }
    if let Some(t) = req.vae_tile {
        if t < 64 || t % 16 != 0 {
            return bad(format!(
                "VAE tile {t}: use a multiple of 16, at least 64 pixels"
            ));
        }
    }
    if let Some(s) = req.shift {
        if !(s.is_finite() && s > 0.0) {
            return bad(format!("shift {s}: must be > 0"));
        }
    }
    Ok(())
}

/// Where each component is.
struct Stores {
    dit: (PathBuf, Arc<WeightStore>),
    t5: (PathBuf, Arc<WeightStore>),
    clip: Option<(PathBuf, Arc<WeightStore>)>,
    vae: (PathBuf, Arc<WeightStore>),
    tokenizer: Umt5Tokenizer,
}

/// The component files of a diffusers Wan folder.
fn diffusers_folder(dir: &Path, files: &mut WanFiles) -> Result<(), PipelineError> {
    let pick = |sub: &str, stem: &str| -> Option<PathBuf> {
        [
            format!("{stem}.safetensors"),
            format!("{stem}.safetensors.index.json"),
        ]
        .iter()
        .map(|c| dir.join(sub).join(c))
        .find(|p| p.is_file())
    };
    let Some(dit) = pick("transformer", "diffusion_pytorch_model") else {
        return Err(PipelineError::MissingComponent {
            what: format!(
                "{}: a folder without transformer/diffusion_pytorch_model.safetensors",
                dir.display()
            ),
            flag: "--model",
        });
    };
    files.model = dit;
    if files.t5.is_none() {
        files.t5 = pick("text_encoder", "model");
    }
    if files.t5_tokenizer.is_none() {
        files.t5_tokenizer = ["tokenizer.json", "spiece.model"]
            .iter()
            .map(|f| dir.join("tokenizer").join(f))
            .find(|p| p.is_file());
    }
    if files.clip_vision.is_none() {
        files.clip_vision = pick("image_encoder", "model");
    }
    if files.vae.is_none() {
        files.vae = pick("vae", "diffusion_pytorch_model");
    }
    Ok(())
}

fn open_as(
    opened: &OpenFiles,
    path: &Path,
    wanted: &[Architecture],
    what: &'static str,
) -> Result<(PathBuf, Arc<WeightStore>), PipelineError> {
    let store = opened.open(path)?;
    let d = store.detection();
    if !wanted.contains(&d.architecture) {
        return Err(PipelineError::WrongModel {
            path: path.to_path_buf(),
            found: inspect::found(&store),
            wanted: what,
        });
    }
    Ok((path.to_path_buf(), store))
}

impl Stores {
    fn open(
        opened: &OpenFiles,
        files: &WanFiles,
        needs_image: bool,
    ) -> Result<Stores, PipelineError> {
        let mut files = files.clone();
        if files.model.is_dir() {
            let dir = files.model.clone();
            diffusers_folder(&dir, &mut files)?;
        }
        let dit = open_as(
            opened,
            &files.model,
            &[Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V],
            "a Wan2.1 DiT",
        )?;
        let is_i2v = dit.1.detection().architecture == Architecture::WAN_DIT_I2V;
        if is_i2v && !needs_image {
            return Err(PipelineError::MissingComponent {
                what: format!(
                    "{} is an image-to-video model and needs the first frame",
                    files.model.display()
                ),
                flag: "--image",
            });
        }
        if !is_i2v && needs_image {
            return Err(PipelineError::Request(format!(
                "{} is a text-to-video model (no image branch): leave out --image, or pass an \
                 I2V model (e.g. wan2.1-i2v-14b-480p-Q4_K_M.gguf)",
                files.model.display()
            )));
        }
        let t5_path = files.t5.clone().ok_or(PipelineError::MissingComponent {
            what: "the umT5 text encoder is needed".into(),
            flag: "--t5",
        })?;
        let t5 = open_as(
            opened,
            &t5_path,
            &[Architecture::UMT5],
            "a umT5 text encoder",
        )?;
        // A GGUF carries its tokenizer as `tokenizer.ggml.*` metadata, a ComfyUI safetensors
        // file as the U8 tensor `spiece_model`; any other safetensors file has none (reading it
        // as one would report a sentencepiece parse error instead of the missing flag).
        let tokenizer = match (&files.t5_tokenizer, t5.1.embedded_spiece()) {
            (Some(p), _) => {
                Umt5Tokenizer::from_file(p).map_err(|e| PipelineError::Request(e.to_string()))?
            }
            // An embedded tokenizer that cannot be read is reported as such, not as missing.
            (None, Some(bytes)) => {
                Umt5Tokenizer::from_spiece_bytes(bytes, &t5_path).map_err(|e| {
                    PipelineError::EmbeddedTokenizer {
                        path: t5_path.clone(),
                        why: e.reason(),
                    }
                })?
            }
            (None, None) if t5.1.file().format() != Format::Gguf => {
                return Err(PipelineError::MissingComponent {
                    what: format!(
                        "{}: a {} umT5 has no tokenizer (tokenizer.json or spiece.model of \
                         google/umt5-xxl)",
                        t5_path.display(),
                        t5.1.file().format().name()
                    ),
                    flag: "--t5-tokenizer",
                })
            }
            (None, None) => Umt5Tokenizer::from_gguf_file(&t5_path).map_err(|e| {
                PipelineError::MissingComponent {
                    what: format!("{}: no tokenizer in the file ({e})", t5_path.display()),
                    flag: "--t5-tokenizer",
                }
            })?,
        };
        let clip = if is_i2v {
            let p = files
                .clip_vision
                .clone()
                .ok_or(PipelineError::MissingComponent {
                    what: "an I2V model needs the CLIP vision encoder (clip_vision_h.safetensors)"
                        .into(),
                    flag: "--clip-vision",
                })?;
            Some(open_as(
                opened,
                &p,
                &[Architecture::CLIP_VISION_H],
                "a CLIP vision encoder",
            )?)
        } else {
            None
        };
        let vae_path = files.vae.clone().ok_or(PipelineError::MissingComponent {
            what: "the Wan VAE (wan_2.1_vae.safetensors) is needed".into(),
            flag: "--vae",
        })?;
        let vae = open_as(opened, &vae_path, &[Architecture::WAN_VAE], "a Wan2.1 VAE")?;
        Ok(Stores {
            dit,
            t5,
            clip,
            vae,
            tokenizer,
        })
    }
}

fn load<'s>(
    (path, store): &'s (PathBuf, Arc<WeightStore>),
    component: &'static str,
    fp8: Fp8Load,
    events: &mut dyn FnMut(Event),
) -> Result<TensorSet<'s>, PipelineError> {
    let set = store.load_with(|_| true, fp8)?;
    events(Event::Loaded {
        component,
        path: path.clone(),
        bytes: set.data_bytes(),
    });
    Ok(set)
}

/// Receives each RGB8 frame (index, pixels) as soon as it is decoded.
pub type FrameSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), PipelineError> + 'a;

/// The models of stage 2, loaded.
pub struct WanModels<'w> {
    pub t5: Umt5Encoder<'w>,
    pub clip: Option<ClipVision<'w>>,
    pub dit: WanDit<'w>,
    pub vae: WanVae<'w>,
    tokenizer: &'w Umt5Tokenizer,
    sets: Sets<'w>,
    adapters: Option<&'w Adapters>,
    opts: RunOptions,
}

/// The loaded weight sets (memory-mapped), which device copies are made from.
struct Sets<'w> {
    t5: &'w TensorSet<'w>,
    clip: Option<&'w TensorSet<'w>>,
    dit: &'w TensorSet<'w>,
    vae: &'w TensorSet<'w>,
}

/// Opens `files`, loads the models and runs `f` on them; everything is released when it
/// returns. `needs_image`: whether the request has a first frame (checked against the DiT).
pub fn with_models<R>(
    files: &WanFiles,
    needs_image: bool,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    f: impl FnOnce(&mut WanModels<'_>, &mut dyn FnMut(Event)) -> Result<R, PipelineError>,
) -> Result<R, PipelineError> {
    with_models_in(&OpenFiles::default(), files, needs_image, opts, events, f)
}

/// [`with_models`] on files opened (or to be opened) in `opened`.
fn with_models_in<R>(
    opened: &OpenFiles,
    files: &WanFiles,
    needs_image: bool,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    f: impl FnOnce(&mut WanModels<'_>, &mut dyn FnMut(Event)) -> Result<R, PipelineError>,
) -> Result<R, PipelineError> {
    events(Event::Stage { name: "load" });
    let stores = Stores::open(opened, files, needs_image)?;
    let lora_files = files
        .loras
        .iter()
        .map(|(path, _)| {
            let f = LoraFile::open(path)?;
            f.check_targets(&[LoraTarget::WanDit])?;
            Ok(f)
        })
        .collect::<Result<Vec<_>, LoraError>>()?;
    let pairs: Vec<(&LoraFile, f32)> = lora_files
        .iter()
        .zip(&files.loras)
        .map(|(f, (_, w))| (f, *w))
        .collect();
    let threads = opts.cpu_threads();
    // What fp8 weights become: made at upload for a component on the device (no copy in RAM),
    // converted at load for one on the CPU.
    let mut parts = vec![
        (T5.component, &*stores.t5.1, ""),
        (DIT.component, &*stores.dit.1, ""),
        (VAE_WAN.component, &*stores.vae.1, ""),
    ];
    if let Some(c) = &stores.clip {
        parts.push((CLIP_VISION.component, &*c.1, ""));
    }
    let fp8 = opts.fp8_loads(&parts);
    let t5_set = load(&stores.t5, "t5", fp8[0], events)?;
    let clip_set = match &stores.clip {
        Some(c) => Some(load(c, "clip_vision", fp8[3], events)?),
        None => None,
    };
    let dit_set = load(&stores.dit, "dit", fp8[1], events)?;
    let vae_set = load(&stores.vae, "vae", fp8[2], events)?;
    let adapters = if pairs.is_empty() {
        None
    } else {
        let a = Adapters::build(&dit_set, "", LoraTarget::WanDit, &pairs)?;
        for r in a.reports() {
            tracing::info!(
                file = %r.file.display(),
                modules = r.applied,
                multiplier = r.multiplier,
                unmatched = r.unmatched.len(),
                unsupported = r.unsupported.len(),
                "LoRA applied to the DiT"
            );
        }
        Some(a)
    };
    let t5 = Umt5Encoder::new(&t5_set, "", threads)?;
    let clip = match &clip_set {
        Some(s) => Some(ClipVision::new(s, "", threads)?),
        None => None,
    };
    let mut dit = WanDit::new(&dit_set, "", threads)?;
    dit.set_attention(WanAttention::Flash);
    if let Some(a) = &adapters {
        dit.set_adapters(Some(a))?;
    }
    let vae = WanVae::new(&vae_set, "", threads)?;
    let cfg = dit.config();
    if t5.config().d_model != cfg.text_dim {
        return Err(PipelineError::Mismatch(format!(
            "{}: umT5 gives {}-wide tokens but the DiT takes {}: wrong --t5 for this model?",
            stores.t5.0.display(),
            t5.config().d_model,
            cfg.text_dim
        )));
    }
    if let (Some(c), Some(d)) = (&clip, cfg.image_dim) {
        if c.config().width != d {
            return Err(PipelineError::Mismatch(format!(
                "CLIP vision gives {}-wide tokens but the DiT takes {d}: wrong --clip-vision?",
                c.config().width
            )));
        }
    }
    let z = vae.config().z_dim;
    let wanted_in = if cfg.is_i2v() { 2 * z + 4 } else { z };
    if cfg.in_channels != wanted_in || cfg.out_channels != z {
        return Err(PipelineError::Mismatch(format!(
            "the DiT takes {} channels and returns {}, the VAE has {z} latent channels: wrong \
             --vae for this model?",
            cfg.in_channels, cfg.out_channels
        )));
    }
    let mut models = WanModels {
        t5,
        clip,
        dit,
        vae,
        tokenizer: &stores.tokenizer,
        sets: Sets {
            t5: &t5_set,
            clip: clip_set.as_ref(),
            dit: &dit_set,
            vae: &vae_set,
        },
        adapters: adapters.as_ref(),
        opts: opts.clone(),
    };
    f(&mut models, events)
}

/// Loads the models, generates the video of `req`, releases the models.
pub fn generate(
    files: &WanFiles,
    req: &WanRequest,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<WanOutput, PipelineError> {
    generate_frames(files, req, opts, events, &mut |_, _| Ok(()))
}

/// [`generate`], with each RGB8 frame given to `on_frame` as soon as it is decoded (index,
/// pixels); the load time is counted in the timings.
pub fn generate_frames(
    files: &WanFiles,
    req: &WanRequest,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    on_frame: &mut FrameSink<'_>,
) -> Result<WanOutput, PipelineError> {
    generate_in(&OpenFiles::default(), files, req, opts, events, on_frame)
}

/// [`generate_frames`] on files opened (or to be opened) in `opened`.
pub(crate) fn generate_in(
    opened: &OpenFiles,
    files: &WanFiles,
    req: &WanRequest,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    on_frame: &mut FrameSink<'_>,
) -> Result<WanOutput, PipelineError> {
    validate(req)?;
    let t0 = Instant::now();
    with_models_in(
        opened,
        files,
        req.image.is_some(),
        opts,
        events,
        |m, events| {
            let load_s = t0.elapsed().as_secs_f64();
            let mut out = m.generate(req, events, on_frame)?;
            out.timings.load_s = load_s;
            Ok(out)
        },
    )
}

/// A video run checked and planned ([`prepare`]).
pub type VideoJob = Job<WanFiles, WanRequest>;

impl VideoJob {
    /// Generates the video under `memory` (from [`VideoJob::memory`]; `None`: the CPU from
    /// the mapped files), each frame given to `on_frame` as it is decoded.
    pub fn run(
        &self,
        opts: &RunOptions,
        events: &mut dyn FnMut(Event),
        on_frame: &mut FrameSink<'_>,
    ) -> Result<WanOutput, PipelineError> {
        generate_in(
            &self.opened,
            &self.files,
            &self.request,
            opts,
            events,
            on_frame,
        )
    }
}

/// Checks `request` and plans it on `files` under `memory` (no plan on the CPU without a
/// budget); the planner's VAE tile fills an unset one.
pub fn prepare(
    files: WanFiles,
    request: WanRequest,
    memory: &MemoryOptions,
) -> Result<VideoJob, PipelineError> {
    prepare_in(OpenFiles::default(), files, request, memory)
}

/// [`prepare`] on files opened (or to be opened) in `opened`, which the job keeps.
pub(crate) fn prepare_in(
    opened: OpenFiles,
    files: WanFiles,
    mut request: WanRequest,
    memory: &MemoryOptions,
) -> Result<VideoJob, PipelineError> {
    validate(&request)?;
    let plan = when_budgeted(memory, || plan_video(&opened, &files, &request, memory))?;
    if let Some(p) = &plan {
        request.vae_tile = request.vae_tile.or(p.tile(VAE_WAN.component));
    }
    Ok(VideoJob {
        files,
        request,
        plan,
        opened,
    })
}

/// Checks, plans and generates `request` in one call (see [`prepare`] and [`VideoJob::run`]).
pub fn run(
    request: WanRequest,
    files: WanFiles,
    options: &Options,
    events: &mut dyn FnMut(Event),
    on_frame: &mut FrameSink<'_>,
) -> Result<VideoRun, PipelineError> {
    let job = prepare(files, request, &options.memory)?;
    let memory = job.memory();
    let output = job.run(&options.run_options(memory.clone()), events, on_frame)?;
    Ok(Finished {
        job,
        output,
        memory,
    })
}

/// What [`run`] returns.
pub type VideoRun = Finished<WanFiles, WanRequest, WanOutput>;

impl<'w> WanModels<'w> {
    /// Wan's tokenization of `prompt` (cleaned, 512 ids with the real length).
    pub fn tokenize(&self, prompt: &str) -> Umt5Tokens {
        self.tokenizer.encode_wan(prompt)
    }

    /// umT5 over the real tokens, zero-padded to 512 rows: row-major [512, d_model].
    pub fn encode_text(&mut self, prompt: &str) -> Result<Vec<f32>, PipelineError> {
        Ok(self.encode_texts(&[prompt])?.remove(0))
    }

    /// [`WanModels::encode_text`] for several prompts with one load of the encoder.
    pub fn encode_texts(&mut self, prompts: &[&str]) -> Result<Vec<Vec<f32>>, PipelineError> {
        let tokens: Vec<Umt5Tokens> = prompts.iter().map(|p| self.tokenize(p)).collect();
        let out = self.with_t5(|t5| {
            let d = t5.config().d_model;
            tokens
                .iter()
                .map(|tk| {
                    let mut out = t5.encode(tk.real())?;
                    out.resize(TEXT_LEN.max(tk.len) * d, 0.0);
                    Ok(out)
                })
                .collect()
        })?;
        // The plan frees the encoder after its use: its compute buffer too, on the CPU.
        self.t5.runner_mut().release()?;
        Ok(out)
    }

    /// CLIP vision tokens of the first frame (already at the video size), [257, width].
    pub fn encode_image(&mut self, img: &InitImage) -> Result<Vec<f32>, PipelineError> {
        if self.clip.is_none() {
            return Err(PipelineError::Request(
                "this DiT has no image branch (a T2V model)".into(),
            ));
        }
        let out = self.with_clip(|clip| {
            let pixels = clip.preprocess(&img.rgb, img.width as usize, img.height as usize)?;
            Ok(clip.encode(&pixels)?)
        })?;
        if let Some(c) = self.clip.as_mut() {
            c.runner_mut().release()?;
        }
        Ok(out)
    }

    /// Runs `f` on umT5: on the device when the memory plan puts it there (a copy that lives
    /// for this call), else on the CPU from the mapped file.
    fn with_t5<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut Umt5Encoder<'x>) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        placed::<Umt5Encoder, _>(&self.opts, &T5, &mut self.t5, (self.sets.t5, ""), None, f)
    }

    /// As [`WanModels::with_t5`] for CLIP vision (the model must have one).
    fn with_clip<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut ClipVision<'x>) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let (Some(cpu), Some(set)) = (self.clip.as_mut(), self.sets.clip) else {
            return Err(PipelineError::Request("no CLIP vision model".into()));
        };
        placed::<ClipVision, _>(&self.opts, &CLIP_VISION, cpu, (set, ""), None, f)
    }

    /// As [`WanModels::with_t5`] for the VAE.
    fn with_vae<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut WanVae<'x>) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let set = (self.sets.vae, "");
        placed::<WanVae, _>(&self.opts, &VAE_WAN, &mut self.vae, set, None, f)
    }

    /// As [`WanModels::with_t5`] for the DiT: resident, or its blocks streamed through the
    /// plan's slots, with the LoRA adapters attached.
    fn with_dit<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut WanDit<'x>, &RunOptions) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let opts = &self.opts;
        let set = (self.sets.dit, "");
        placed::<WanDit, _>(opts, &DIT, &mut self.dit, set, self.adapters, |m| {
            f(m, opts)
        })
    }

    /// The I2V condition `y` [4 + z, T, h, w]: the mask, then the normalised VAE latent of
    /// [image, zeros x (frames - 1)]. `img` must already be `width` x `height`.
    pub fn image_condition(
        &mut self,
        img: &InitImage,
        frames: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        let (w, h) = (img.width as usize, img.height as usize);
        let vc = self.vae.config();
        let (s, tf, z) = (vc.spatial_factor(), vc.temporal_factor(), vc.z_dim);
        let first = from_rgb8(&img.rgb, w, h);
        let plane = w * h;
        let mut video = vec![0f32; 3 * frames * plane];
        for c in 0..3 {
            video[c * frames * plane..][..plane].copy_from_slice(&first[c * plane..][..plane]);
        }
        let mut latent = self.with_vae(|vae| Ok(vae.encode(&video, frames, h, w)?))?;
        self.vae.runner_mut().release()?;
        normalize(&mut latent, &LATENTS_MEAN[..z], &LATENTS_STD[..z]);
        let t = 1 + (frames - 1) / tf;
        let lplane = (h / s) * (w / s);
        let mut y = vec![0f32; 4 * t * lplane];
        for c in 0..4 {
            y[c * t * lplane..][..lplane].fill(1.0);
        }
        y.extend_from_slice(&latent);
        Ok(y)
    }

    /// The DiT's velocity for the latent `x` [z, t, h, w] at `timestep` (1000 sigma).
    #[allow(clippy::too_many_arguments)]
    pub fn dit_forward(
        &mut self,
        x: &[f32],
        timestep: f32,
        text: &[f32],
        image: Option<&[f32]>,
        y: Option<&[f32]>,
        t: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        dit_forward(&mut self.dit, x, timestep, text, image, y, (t, h, w))
    }

    /// Decodes a normalised latent [z, t, h, w], handing each frame ([3, H, W] in [-1, 1]) to
    /// `on_frame`.
    pub fn vae_decode(
        &mut self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
        on_frame: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), PipelineError> {
        self.vae_decode_tiled(latent, (t, h, w), None, on_frame)
    }

    /// As [`WanModels::vae_decode`], in spatial tiles of `tile` pixels (overlap 1/8 of the
    /// tile, blended) when given.
    pub fn vae_decode_tiled(
        &mut self,
        latent: &[f32],
        (t, h, w): (usize, usize, usize),
        tile: Option<u32>,
        on_frame: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), PipelineError> {
        let z = self.vae.config().z_dim;
        let mut raw = latent.to_vec();
        denormalize(&mut raw, &LATENTS_MEAN[..z], &LATENTS_STD[..z]);
        self.with_vae(|vae| {
            match tile {
                Some(px) => {
                    let s = vae.config().spatial_factor();
                    let tl = (px as usize / s).max(2);
                    let overlap = (tl / 8).max(1);
                    vae.decode_frames_tiled(&raw, t, h, w, tl, overlap, |i, f| on_frame(i, f))?;
                }
                None => vae.decode_frames(&raw, t, h, w, |i, f| on_frame(i, f))?,
            }
            Ok(())
        })
    }

    /// Runs a whole request. `on_frame` gets each RGB8 frame as it is decoded.
    pub fn generate(
        &mut self,
        req: &WanRequest,
        events: &mut dyn FnMut(Event),
        on_frame: &mut FrameSink<'_>,
    ) -> Result<WanOutput, PipelineError> {
        validate(req)?;
        let mut timings = Timings::default();
        let t_enc = Instant::now();
        events(Event::Stage { name: "encode" });
        let (width, height) = (req.width, req.height);
        let use_cfg = req.cfg != 1.0;
        let neg = req
            .negative_prompt
            .as_deref()
            .unwrap_or(DEFAULT_NEGATIVE_PROMPT);
        let prompts: Vec<&str> = if use_cfg {
            vec![&req.prompt, neg]
        } else {
            vec![&req.prompt]
        };
        let mut encoded = self.encode_texts(&prompts)?.into_iter();
        let text = encoded.next().expect("one per prompt");
        let neg_text = encoded.next();
        let vc = self.vae.config();
        let (s, tf, z) = (vc.spatial_factor(), vc.temporal_factor(), vc.z_dim);
        let (lh, lw) = (height as usize / s, width as usize / s);
        let t = 1 + (req.frames - 1) / tf;
        let (clip, y) = match &req.image {
            Some(img) => {
                let rgb =
                    crate::media::image::fit_rgb(&img.rgb, img.width, img.height, width, height)?;
                let fitted = InitImage { rgb, width, height };
                let clip = self.encode_image(&fitted)?;
                let y = self.image_condition(&fitted, req.frames)?;
                (Some(clip), Some(y))
            }
            None => (None, None),
        };
        timings.encode_s = t_enc.elapsed().as_secs_f64();

        let shift = req.shift.unwrap_or_else(|| default_shift(width, height));
        let sampling = ModelSampling::Flow(FlowSchedule::new(shift)?);
        let sigmas = sampling.sigmas(req.scheduler, req.steps)?;
        let param = sampling.parameterization();
        let n = z * t * lh * lw;
        let noise = TorchGenerator::new(req.seed).randn(n);
        let x = param.noise_scaling(sigmas[0], &noise, &vec![0f32; n], true);
        let config = SamplerConfig::new(req.sampler, sampling.clone(), sigmas)?;
        let noise_source: Option<Box<dyn crate::sampling::NoiseSource + Send>> = config
            .needs_noise()
            .then(|| Box::new(comfy_sampler_noise(req.seed)) as _);
        let mut stepper = config.stepper(x, noise_source)?;

        events(Event::Stage { name: "sample" });
        let t_sample = Instant::now();
        self.with_dit(|dit, opts| {
            let mut denoiser = WanDenoiser {
                dit,
                opts,
                sampling: &sampling,
                param,
                text: &text,
                neg_text: neg_text.as_deref(),
                clip: clip.as_deref(),
                y: y.as_deref(),
                cfg: req.cfg,
                thw: (t, lh, lw),
            };
            super::run_steps(&mut stepper, &mut denoiser, opts, events)
        })?;
        let mut latent = stepper.into_x();
        param.inverse_noise_scaling(0.0, &mut latent);
        timings.sample_s = t_sample.elapsed().as_secs_f64();

        events(Event::Stage { name: "decode" });
        let t_dec = Instant::now();
        let (w, h) = (width as usize, height as usize);
        let plane = w * h;
        let mut frames = Vec::with_capacity(req.frames);
        let mut decoded = req.keep_decoded.then(|| vec![0f32; 3 * req.frames * plane]);
        let mut failed: Option<PipelineError> = None;
        let total_frames = req.frames;
        let cancel = self.opts.clone();
        self.vae_decode_tiled(&latent, (t, lh, lw), req.vae_tile, &mut |i, img| {
            if failed.is_some() || i >= total_frames {
                return;
            }
            if let Some(d) = decoded.as_mut() {
                for c in 0..3 {
                    d[(c * total_frames + i) * plane..][..plane]
                        .copy_from_slice(&img[c * plane..][..plane]);
                }
            }
            let rgb = to_rgb8(img, w, h);
            if let Err(e) = on_frame(i, &rgb).and_then(|()| cancel.check_cancel()) {
                failed = Some(e);
                return;
            }
            frames.push(rgb);
            events(Event::Decoded {
                index: i + 1,
                total: total_frames,
            });
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        timings.decode_s = t_dec.elapsed().as_secs_f64();
        Ok(WanOutput {
            width,
            height,
            frames,
            decoded,
            latent,
            seed: req.seed,
            shift,
            timings,
        })
    }
}

/// The DiT's velocity for `x` [z, t, h, w], with the I2V condition `y` appended as channels.
fn dit_forward(
    dit: &mut WanDit<'_>,
    x: &[f32],
    timestep: f32,
    text: &[f32],
    image: Option<&[f32]>,
    y: Option<&[f32]>,
    (t, h, w): (usize, usize, usize),
) -> Result<Vec<f32>, PipelineError> {
    let input;
    let x_in = match y {
        Some(y) => {
            let mut v = Vec::with_capacity(x.len() + y.len());
            v.extend_from_slice(x);
            v.extend_from_slice(y);
            input = v;
            &input[..]
        }
        None => x,
    };
    let out = dit.forward(x_in, timestep, text, image, t, h, w)?;
    let s = dit.last_stream_stats();
    if s.uploaded_bytes > 0 {
        tracing::debug!(
            uploaded_mib = s.uploaded_bytes >> 20,
            upload_s = s.upload.as_secs_f64(),
            waited_s = s.waited.as_secs_f64(),
            "dit blocks streamed"
        );
    }
    Ok(out)
}

/// The DiT as the sampler sees it, with CFG.
struct WanDenoiser<'m, 'x> {
    dit: &'m mut WanDit<'x>,
    opts: &'m RunOptions,
    sampling: &'m ModelSampling,
    param: Parameterization,
    text: &'m [f32],
    neg_text: Option<&'m [f32]>,
    clip: Option<&'m [f32]>,
    y: Option<&'m [f32]>,
    cfg: f32,
    thw: (usize, usize, usize),
}

impl Denoiser for WanDenoiser<'_, '_> {
    type Error = PipelineError;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, PipelineError> {
        let timestep = self.sampling.timestep(sigma);
        let x_in = self.param.scale_input(sigma, x);
        let vc = dit_forward(
            self.dit, &x_in, timestep, self.text, self.clip, self.y, self.thw,
        )?;
        let dc = self.param.denoised(sigma, &vc, x);
        match self.neg_text {
            Some(neg) => {
                self.opts.check_cancel()?;
                let vu = dit_forward(self.dit, &x_in, timestep, neg, self.clip, self.y, self.thw)?;
                let du = self.param.denoised(sigma, &vu, x);
                let mut out = vec![0f32; x.len()];
                apply_cfg(&du, &dc, self.cfg, &mut out);
                Ok(out)
            }
            None => Ok(dc),
        }
    }
}

/// Plans stage 2 (`nijigen video`) for `req` on `files`.
pub fn plan_video(
    opened: &OpenFiles,
    files: &WanFiles,
    req: &WanRequest,
    memory: &MemoryOptions,
) -> Result<StagePlan, PipelineError> {
    let shapes = network::Request {
        width: req.width,
        height: req.height,
        frames: req.frames,
        vae_tile: req.vae_tile,
    };
    let dit = open_net(opened, &files.model, &DIT)?.ok_or_else(|| PipelineError::NotA {
        path: files.model.clone(),
        what: DIT.label,
    })?;
    let forwards = if req.cfg == 1.0 { 1 } else { 2 };
    let mut specs = vec![spec(&DIT, &dit, &shapes)?.with_forwards(forwards)];
    let mut names = vec![(DIT.component, dit.file_name())];
    let mut fp8: Vec<_> = dit
        .fp8()
        .map(|w| (DIT.component, w, dit.q8_spec(&specs[0])))
        .into_iter()
        .collect();
    for (net, path, required) in [
        (&T5, &files.t5, true),
        (&CLIP_VISION, &files.clip_vision, false),
        (&VAE_WAN, &files.vae, true),
    ] {
        let Some(path) = path else {
            if required {
                return Err(nothing_to_plan(net.label, net.flag));
            }
            continue;
        };
        let part = open_required(opened, path, net)?;
        specs.push(spec(net, &part, &shapes)?);
        names.push((net.component, part.file_name()));
        fp8.extend(part.fp8().map(|w| {
            (
                net.component,
                w,
                part.q8_spec(specs.last().expect("pushed")),
            )
        }));
    }
    let what = format!("video {}x{}x{}", req.width, req.height, req.frames);
    stage_plan(memory, req.vae_tile, specs, names, fp8, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_image_aspect_at_480p() {
        assert_eq!(size_for_image(1664, 960), (832, 480));
        assert_eq!(size_for_image(960, 1664), (480, 832));
        assert_eq!(size_for_image(1024, 1024), (624, 624));
        let (w, h) = size_for_image(1920, 1080);
        assert_eq!((w % 16, h % 16), (0, 0));
        assert!((f64::from(w) / f64::from(h) - 16.0 / 9.0).abs() < 0.05);
    }

    #[test]
    fn shift_defaults_by_area() {
        assert_eq!(default_shift(832, 480), 3.0);
        assert_eq!(default_shift(1280, 720), 5.0);
    }

    #[test]
    fn frame_counts_must_be_4n_plus_1() {
        let mut r = WanRequest {
            frames: 80,
            ..WanRequest::default()
        };
        let e = validate(&r).unwrap_err().to_string();
        assert!(
            e.contains("4n + 1") && e.contains("77") && e.contains("81"),
            "{e}"
        );
        r.frames = 81;
        validate(&r).unwrap();
        r.width = 840;
        assert!(validate(&r)
            .unwrap_err()
            .to_string()
            .contains("multiples of 16"));
    }
}
