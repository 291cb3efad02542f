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
use super::step_cache::{BlockStepCache, CacheReport, CacheSettings, Calibration, EasyCache};
pub use super::{from_rgb8, to_rgb8, InitImage};
use super::{inspect, placed, Event, Options, PipelineError, RunOptions, Timings};
use crate::formats::names::{self, Architecture};
use crate::formats::weights::Format;
use crate::ggml::TensorSet;
use crate::lora::{Adapters, LoraError, LoraFile, LoraTarget};
use crate::models::network;
use crate::models::wan_vae::{denormalize, normalize, LATENTS_MEAN, LATENTS_STD};
use crate::models::{ClipVision, Umt5Encoder, WanAttention, WanDit, WanDitKind, WanVae};
use crate::models::{CLIP_VISION, DIT, DIT_HIGH, T5, VAE_WAN};
use crate::runtime::{Fp8Load, WeightStore};
use crate::sampling::{
    apply_cfg, ksampler_sigmas, Denoiser, FlowSchedule, ModelSampling, Parameterization,
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

/// Wan2.2 A14B's switch between its experts for image-to-video: the high-noise expert samples
/// while the timestep is at or above `boundary x 1000` (`wan/configs/wan_i2v_A14B.py`).
pub const BOUNDARY_I2V: f64 = 0.9;
/// As [`BOUNDARY_I2V`] for text-to-video (`wan/configs/wan_t2v_A14B.py`).
pub const BOUNDARY_T2V: f64 = 0.875;

/// The official sampling settings of a Wan2.2 A14B model, which apply where the user gives
/// none (Wan2.2's `wan/configs/wan_{i2v,t2v}_A14B.py`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wan22Defaults {
    /// "I2V-A14B" or "T2V-A14B".
    pub model: &'static str,
    pub shift: f64,
    /// Guidance of the low-noise expert (`--cfg`).
    pub cfg: f32,
    /// Guidance of the high-noise expert (`--high-noise-cfg`).
    pub high_noise_cfg: f32,
    pub steps: usize,
    pub boundary: f64,
}

/// Wan2.2 I2V-A14B: shift 5, guidance 3.5 for both experts, 40 steps, boundary 0.9.
pub const WAN22_I2V: Wan22Defaults = Wan22Defaults {
    model: "I2V-A14B",
    shift: 5.0,
    cfg: 3.5,
    high_noise_cfg: 3.5,
    steps: 40,
    boundary: BOUNDARY_I2V,
};

/// Wan2.2 T2V-A14B: shift 12, guidance 3.0 (low noise) and 4.0 (high noise), 40 steps,
/// boundary 0.875.
pub const WAN22_T2V: Wan22Defaults = Wan22Defaults {
    model: "T2V-A14B",
    shift: 12.0,
    cfg: 3.0,
    high_noise_cfg: 4.0,
    steps: 40,
    boundary: BOUNDARY_T2V,
};

/// The weight files of stage 2.
#[derive(Clone, Debug, Default)]
pub struct WanFiles {
    /// The DiT: a GGUF / safetensors file or a diffusers folder (then the other components
    /// default to its subfolders). For Wan2.2 A14B, the low-noise expert (or either expert
    /// alone).
    pub model: PathBuf,
    /// Wan2.2 A14B: the high-noise expert, which samples the first steps.
    pub high_noise_model: Option<PathBuf>,
    pub t5: Option<PathBuf>,
    /// tokenizer.json or spiece.model, for a umT5 file without tokenizer metadata.
    pub t5_tokenizer: Option<PathBuf>,
    pub clip_vision: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    /// LoRAs of `model` (the low-noise expert of a pair).
    pub loras: Vec<(PathBuf, f32)>,
    /// LoRAs of the high-noise expert.
    pub high_noise_loras: Vec<(PathBuf, f32)>,
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
    /// With two experts: the high-noise expert samples while the timestep is at or above
    /// `boundary x 1000`; `None`: [`BOUNDARY_I2V`] or [`BOUNDARY_T2V`].
    pub boundary: Option<f64>,
    /// With two experts: the high-noise expert samples this many steps instead, in a sampler
    /// run of its own, and the low-noise expert the rest in a second one (ComfyUI's two
    /// KSamplerAdvanced nodes: a multistep sampler starts its history again at the switch).
    pub high_noise_steps: Option<usize>,
    /// The high-noise expert's guidance; `None`: `cfg`.
    pub high_noise_cfg: Option<f32>,
    /// The high-noise expert's sampler; `None`: `sampler`. A different one samples the two
    /// phases in two runs, as [`WanRequest::high_noise_steps`].
    pub high_noise_sampler: Option<SamplerKind>,
    /// Step caching (`--cache`); `None`: every DiT pass is computed.
    pub cache: Option<CacheSettings>,
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
            sampler: SamplerKind::UniPcWan,
            scheduler: Scheduler::Simple,
            seed: 0,
            vae_tile: None,
            keep_decoded: false,
            boundary: None,
            high_noise_steps: None,
            high_noise_cfg: None,
            high_noise_sampler: None,
            cache: None,
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
    /// With two experts: the steps the high-noise expert sampled (the switch step).
    pub high_noise_steps: Option<usize>,
    /// With `--cache`: the DiT passes computed and skipped.
    pub cache: Option<CacheReport>,
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
    if let Some(b) = req.boundary {
        if !(b.is_finite() && b > 0.0 && b < 1.0) {
            return bad(format!(
                "boundary {b}: use a number between 0 and 1 (Wan2.2: 0.9 for I2V, 0.875 for T2V)"
            ));
        }
    }
    if let Some(n) = req.high_noise_steps {
        if n > req.steps {
            return bad(format!(
                "--high-noise-steps {n}: more than the {} steps of the run",
                req.steps
            ));
        }
    }
    if let Some(c) = req.high_noise_cfg {
        if !c.is_finite() || c < 0.0 {
            return bad(format!("high-noise cfg {c}: must be a number >= 0"));
        }
    }
    if let Some(c) = &req.cache {
        // The cache counts one model call per step and branch.
        for s in [Some(req.sampler), req.high_noise_sampler]
            .into_iter()
            .flatten()
        {
            if matches!(s, SamplerKind::Heun | SamplerKind::DpmppSde) {
                return bad(format!(
                    "--cache {c} with the {s} sampler: the cache needs a sampler with one \
                     model call per step (euler, uni_pc, dpmpp_2m, ...)"
                ));
            }
        }
    }
    Ok(())
}

/// The number of steps the high-noise expert samples: those whose timestep (1000 sigma) is at
/// or above `boundary x 1000`, as the official code and diffusers pick the expert per step.
pub fn boundary_steps(sampling: &ModelSampling, sigmas: &[f32], boundary: f64) -> usize {
    let steps = sigmas.len().saturating_sub(1);
    // Timesteps run to 1000 (sigma 1).
    let limit = boundary * 1000.0;
    sigmas[..steps]
        .iter()
        .take_while(|&&s| f64::from(sampling.timestep(s)) >= limit)
        .count()
}

/// The step after which a run of `req` with two experts switches to the low-noise one:
/// `--high-noise-steps`, else by the boundary (default: [`BOUNDARY_I2V`] with a first frame,
/// [`BOUNDARY_T2V`] without) on the request's sigmas at `shift`.
pub fn switch_step(req: &WanRequest, shift: f64) -> Result<usize, PipelineError> {
    if let Some(n) = req.high_noise_steps {
        return Ok(n.min(req.steps));
    }
    let sampling = ModelSampling::Flow(FlowSchedule::new(shift)?);
    let sigmas = ksampler_sigmas(req.sampler, &sampling, req.scheduler, req.steps, 1.0)?;
    Ok(boundary_steps(
        &sampling,
        &sigmas,
        boundary_of(req, req.image.is_some()),
    ))
}

/// The boundary of `req`: given, or Wan2.2's for I2V or T2V.
fn boundary_of(req: &WanRequest, i2v: bool) -> f64 {
    req.boundary
        .unwrap_or(if i2v { BOUNDARY_I2V } else { BOUNDARY_T2V })
}

/// Where each component is.
struct Stores {
    dit: (PathBuf, Arc<WeightStore>),
    /// Wan2.2's high-noise expert.
    high: Option<(PathBuf, Arc<WeightStore>)>,
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
    // Wan2.2 A14B in diffusers: `transformer` is the high-noise expert, `transformer_2` the
    // low-noise one.
    if let Some(low) = pick("transformer_2", "diffusion_pytorch_model") {
        if files.high_noise_model.is_none() {
            files.high_noise_model = pick("transformer", "diffusion_pytorch_model");
        }
        files.model = low;
        return fill_components(dir, files, &pick);
    }
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
    fill_components(dir, files, &pick)
}

/// The other components of a diffusers folder, where not given.
fn fill_components(
    dir: &Path,
    files: &mut WanFiles,
    pick: &dyn Fn(&str, &str) -> Option<PathBuf>,
) -> Result<(), PipelineError> {
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

/// Checks the pair of experts `files` names, if any ([`check_experts`]), from their tensor
/// tables: before a run computes anything.
pub(crate) fn check_pair(opened: &OpenFiles, files: &WanFiles) -> Result<(), PipelineError> {
    check_high_loras(files)?;
    let mut files = files.clone();
    if files.model.is_dir() {
        let dir = files.model.clone();
        diffusers_folder(&dir, &mut files)?;
    }
    let Some(high) = &files.high_noise_model else {
        return Ok(());
    };
    let archs = [Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V];
    let low = open_as(opened, &files.model, &archs, "a Wan DiT")?;
    let high = open_as(opened, high, &archs, "a Wan2.2 high-noise expert")?;
    check_experts(&low, dit_kind(&low)?, &high, dit_kind(&high)?)
}

/// High-noise LoRAs need the high-noise expert (a diffusers folder with `transformer_2` has
/// one).
fn check_high_loras(files: &WanFiles) -> Result<(), PipelineError> {
    let pair = files.high_noise_model.is_some()
        || (files.model.is_dir() && files.model.join("transformer_2").is_dir());
    if pair || files.high_noise_loras.is_empty() {
        return Ok(());
    }
    Err(PipelineError::Experts {
        message: "--high-noise-lora without a high-noise expert".into(),
        hint: "add --high-noise-model FILE (the expert it applies to), or use --lora".into(),
    })
}

/// The official settings of the Wan2.2 A14B model `files` name, `None` for other models: a
/// pair of experts, an I2V expert alone (no CLIP branch), or a T2V DiT named as a Wan2.2 one.
/// Reads the tensor tables only.
pub fn wan22_defaults(files: &WanFiles) -> Result<Option<Wan22Defaults>, PipelineError> {
    let mut files = files.clone();
    if files.model.is_dir() {
        let dir = files.model.clone();
        diffusers_folder(&dir, &mut files)?;
    }
    let opened = OpenFiles::default();
    let dit = open_as(
        &opened,
        &files.model,
        &[Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V],
        "a Wan DiT",
    )?;
    Ok(match (dit_kind(&dit)?, files.high_noise_model.is_some()) {
        (WanDitKind::Wan22I2vExpert, _) => Some(WAN22_I2V),
        (WanDitKind::T2v, true) => Some(WAN22_T2V),
        (WanDitKind::T2v, false) if names::wan::is_wan22_by_name(&files.model) => Some(WAN22_T2V),
        _ => None,
    })
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
            "a Wan DiT",
        )?;
        let kind = dit_kind(&dit)?;
        let high = match &files.high_noise_model {
            Some(p) => {
                let high = open_as(
                    opened,
                    p,
                    &[Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V],
                    "a Wan2.2 high-noise expert",
                )?;
                check_experts(&dit, kind, &high, dit_kind(&high)?)?;
                Some(high)
            }
            None => None,
        };
        let is_i2v = kind != WanDitKind::T2v;
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
        let clip = if kind == WanDitKind::Wan21I2v {
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
            if let Some(p) = &files.clip_vision {
                tracing::warn!(
                    "{} is not used: {} has no CLIP image branch ({})",
                    p.display(),
                    files.model.display(),
                    if is_i2v {
                        "Wan2.2 takes the first frame as latent channels only"
                    } else {
                        "a text-to-video model"
                    }
                );
            }
            None
        };
        let vae_path = files.vae.clone().ok_or(PipelineError::MissingComponent {
            what: "the Wan VAE (wan_2.1_vae.safetensors) is needed".into(),
            flag: "--vae",
        })?;
        let vae = open_as(opened, &vae_path, &[Architecture::WAN_VAE], "a Wan2.1 VAE")?;
        Ok(Stores {
            dit,
            high,
            t5,
            clip,
            vae,
            tokenizer,
        })
    }
}

/// The kind of a Wan DiT file, from its tensor table (no weight read).
fn dit_kind((path, store): &(PathBuf, Arc<WeightStore>)) -> Result<WanDitKind, PipelineError> {
    let set = store.load_meta(|_| true)?;
    let c = crate::models::WanDitConfig::from_weights(&set, "")
        .map_err(|e| PipelineError::Mismatch(format!("{}: {e}", path.display())))?;
    Ok(c.kind())
}

/// What a file is, for the expert checks: "a Wan2.1 I2V DiT", "a Wan2.2 I2V-A14B expert", ...
fn kind_words(kind: WanDitKind, path: &Path) -> &'static str {
    match kind {
        WanDitKind::Wan21I2v => "a Wan2.1 I2V DiT (with the CLIP image branch)",
        WanDitKind::Wan22I2vExpert => "a Wan2.2 I2V-A14B expert",
        WanDitKind::T2v if names::wan::is_wan22_by_name(path) => "a Wan2.2 T2V-A14B expert",
        WanDitKind::T2v => "a Wan T2V DiT",
    }
}

/// Checks a pair of Wan2.2 experts: no Wan2.1 I2V DiT (it has the CLIP branch and no second
/// expert), both I2V or both T2V, the same sizes; warns when their names look swapped.
fn check_experts(
    low: &(PathBuf, Arc<WeightStore>),
    low_kind: WanDitKind,
    high: &(PathBuf, Arc<WeightStore>),
    high_kind: WanDitKind,
) -> Result<(), PipelineError> {
    let example = |which: &str| {
        let cap = if which == "high" { "High" } else { "Low" };
        format!(
            "e.g. wan2.2_i2v_{which}_noise_14B_fp8_scaled.safetensors or \
             Wan2.2-I2V-A14B-{cap}Noise-Q4_K_M.gguf"
        )
    };
    let err = |message: String, hint: String| Err(PipelineError::Experts { message, hint });
    if high_kind == WanDitKind::Wan21I2v {
        return err(
            format!(
                "--high-noise-model {} is {}, not a Wan2.2 expert",
                high.0.display(),
                kind_words(high_kind, &high.0)
            ),
            format!(
                "it takes Wan2.2's high-noise expert ({}); for Wan2.1 leave \
                 --high-noise-model out",
                example("high")
            ),
        );
    }
    if low_kind == WanDitKind::Wan21I2v {
        return err(
            format!(
                "--model {} is {}, but --high-noise-model is a Wan2.2 expert",
                low.0.display(),
                kind_words(low_kind, &low.0)
            ),
            format!(
                "pass Wan2.2's low-noise expert as --model ({})",
                example("low")
            ),
        );
    }
    if low_kind != high_kind {
        return err(
            format!(
                "the experts do not match: --model {} is {} but --high-noise-model {} is {}",
                low.0.display(),
                kind_words(low_kind, &low.0),
                high.0.display(),
                kind_words(high_kind, &high.0)
            ),
            "give the two experts of one model: both I2V (wan2.2_i2v_*) or both T2V \
             (wan2.2_t2v_*)"
                .into(),
        );
    }
    let sizes = |s: &(PathBuf, Arc<WeightStore>)| -> Result<_, PipelineError> {
        let set = s.1.load_meta(|_| true)?;
        let c = crate::models::WanDitConfig::from_weights(&set, "")
            .map_err(|e| PipelineError::Mismatch(format!("{}: {e}", s.0.display())))?;
        Ok((c.dim, c.layers, c.in_channels, c.text_dim))
    };
    let (a, b) = (sizes(low)?, sizes(high)?);
    if a != b {
        return err(
            format!(
                "the experts differ in size: --model {} has dim {}, {} blocks; \
                 --high-noise-model {} has dim {}, {} blocks",
                low.0.display(),
                a.0,
                a.1,
                high.0.display(),
                b.0,
                b.1
            ),
            "give the two experts of one model (Wan2.2 A14B: dim 5120, 40 blocks each); \
             `nijigen info FILE` shows what a file is"
                .into(),
        );
    }
    use names::wan::{expert_by_name, ExpertName};
    if expert_by_name(&low.0) == Some(ExpertName::HighNoise)
        || expert_by_name(&high.0) == Some(ExpertName::LowNoise)
    {
        tracing::warn!(
            "the experts look swapped by their names: --model takes the low-noise expert, \
            --high-noise-model the high-noise one ({} / {})",
            low.0.display(),
            high.0.display()
        );
    }
    Ok(())
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

/// Opens `loras` (path, multiplier) and checks that they are for a Wan DiT.
fn open_loras(loras: &[(PathBuf, f32)]) -> Result<Vec<LoraFile>, PipelineError> {
    Ok(loras
        .iter()
        .map(|(path, _)| {
            let f = LoraFile::open(path)?;
            f.check_targets(&[LoraTarget::WanDit])?;
            Ok(f)
        })
        .collect::<Result<Vec<_>, LoraError>>()?)
}

/// The adapters of `files` (with the multipliers of `loras`) on the DiT `set`; `None` without
/// LoRAs. `what` names the DiT in the log.
fn adapters_for(
    set: &TensorSet<'_>,
    files: &[LoraFile],
    loras: &[(PathBuf, f32)],
    what: &str,
) -> Result<Option<Adapters>, PipelineError> {
    if files.is_empty() {
        return Ok(None);
    }
    let pairs: Vec<(&LoraFile, f32)> = files.iter().zip(loras).map(|(f, (_, w))| (f, *w)).collect();
    let a = Adapters::build(set, "", LoraTarget::WanDit, &pairs)?;
    for r in a.reports() {
        tracing::info!(
            file = %r.file.display(),
            modules = r.applied,
            multiplier = r.multiplier,
            unmatched = r.unmatched.len(),
            unsupported = r.unsupported.len(),
            "LoRA applied to {what}"
        );
    }
    Ok(Some(a))
}

/// Receives each RGB8 frame (index, pixels) as soon as it is decoded.
pub type FrameSink<'a> = dyn FnMut(usize, &[u8]) -> Result<(), PipelineError> + 'a;

/// The models of stage 2, loaded.
pub struct WanModels<'w> {
    pub t5: Umt5Encoder<'w>,
    pub clip: Option<ClipVision<'w>>,
    /// The DiT; with two experts, the low-noise one.
    pub dit: WanDit<'w>,
    /// Wan2.2's high-noise expert.
    pub high: Option<WanDit<'w>>,
    pub vae: WanVae<'w>,
    tokenizer: &'w Umt5Tokenizer,
    sets: Sets<'w>,
    adapters: Option<&'w Adapters>,
    high_adapters: Option<&'w Adapters>,
    /// The high-noise expert's file: its pages are released once it is done.
    high_store: Option<&'w WeightStore>,
    /// What `--cache` did in the run so far.
    cache_report: Option<CacheReport>,
    opts: RunOptions,
}

/// Which DiT computes: the only one, or the low-noise expert of a pair; or the high-noise one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expert {
    Low,
    High,
}

/// The loaded weight sets (memory-mapped), which device copies are made from.
struct Sets<'w> {
    t5: &'w TensorSet<'w>,
    clip: Option<&'w TensorSet<'w>>,
    dit: &'w TensorSet<'w>,
    high: Option<&'w TensorSet<'w>>,
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
    check_high_loras(files)?;
    let lora_files = open_loras(&files.loras)?;
    let high_lora_files = open_loras(&files.high_noise_loras)?;
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
    if let Some(h) = &stores.high {
        parts.push((DIT_HIGH.component, &*h.1, ""));
    }
    let fp8 = opts.fp8_loads(&parts);
    let fp8_of = |c| {
        parts
            .iter()
            .zip(&fp8)
            .find(|((pc, _, _), _)| *pc == c)
            .map(|(_, f)| *f)
            .expect("each part has its fp8 choice")
    };
    let t5_set = load(&stores.t5, "t5", fp8_of(T5.component), events)?;
    let clip_set = match &stores.clip {
        Some(c) => Some(load(
            c,
            "clip_vision",
            fp8_of(CLIP_VISION.component),
            events,
        )?),
        None => None,
    };
    let high_set = match &stores.high {
        Some(h) => Some(load(h, "dit_high", fp8_of(DIT_HIGH.component), events)?),
        None => None,
    };
    let dit_set = load(&stores.dit, "dit", fp8_of(DIT.component), events)?;
    let vae_set = load(&stores.vae, "vae", fp8_of(VAE_WAN.component), events)?;
    let adapters = adapters_for(&dit_set, &lora_files, &files.loras, "the DiT")?;
    let high_adapters = match &high_set {
        Some(set) => adapters_for(
            set,
            &high_lora_files,
            &files.high_noise_loras,
            "the high-noise expert",
        )?,
        None => None,
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
    let high = match &high_set {
        Some(set) => {
            let mut h = WanDit::new(set, "", threads)?;
            h.set_attention(WanAttention::Flash);
            if let Some(a) = &high_adapters {
                h.set_adapters(Some(a))?;
            }
            Some(h)
        }
        None => None,
    };
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
    if cfg.is_i2v() && cfg.in_channels != wanted_in {
        return Err(PipelineError::Mismatch(format!(
            "the DiT takes {} channels, an image-to-video DiT over a {z}-channel VAE takes \
            {wanted_in} (noise, 4 mask, image latent): wrong --vae for this model?",
            cfg.in_channels
        )));
    }
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
        high,
        vae,
        tokenizer: &stores.tokenizer,
        sets: Sets {
            t5: &t5_set,
            clip: clip_set.as_ref(),
            dit: &dit_set,
            high: high_set.as_ref(),
            vae: &vae_set,
        },
        adapters: adapters.as_ref(),
        high_adapters: high_adapters.as_ref(),
        high_store: stores.high.as_ref().map(|h| &*h.1),
        cache_report: None,
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
    check_pair(&opened, &files)?;
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

    /// As [`WanModels::with_t5`] for a DiT: resident, or its blocks streamed through the
    /// plan's slots, with its LoRA adapters attached. Its device copy lives for this call, so
    /// the two experts of a pair are never on the device together.
    fn with_expert<R>(
        &mut self,
        expert: Expert,
        f: impl for<'x> FnOnce(&mut WanDit<'x>, &RunOptions) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let opts = &self.opts;
        match expert {
            Expert::Low => {
                let set = (self.sets.dit, "");
                placed::<WanDit, _>(opts, &DIT, &mut self.dit, set, self.adapters, |m| {
                    f(m, opts)
                })
            }
            Expert::High => {
                let (Some(cpu), Some(set)) = (self.high.as_mut(), self.sets.high) else {
                    return Err(PipelineError::Request(
                        "no high-noise expert (--high-noise-model)".into(),
                    ));
                };
                placed::<WanDit, _>(opts, &DIT_HIGH, cpu, (set, ""), self.high_adapters, |m| {
                    // Its buffers are leased under its own name ("dit_high compute").
                    m.runner_mut().set_name(DIT_HIGH.component.name());
                    f(m, opts)
                })
            }
        }
    }

    /// Whether a high-noise expert is loaded (Wan2.2 A14B with both experts).
    pub fn has_experts(&self) -> bool {
        self.high.is_some()
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

    /// `expert`'s velocity for the latent `x` [z, t, h, w] at `timestep` (1000 sigma), placed
    /// as the plan says, with its LoRAs; `y`: the I2V condition.
    #[allow(clippy::too_many_arguments)]
    pub fn expert_forward(
        &mut self,
        expert: Expert,
        x: &[f32],
        timestep: f32,
        text: &[f32],
        y: Option<&[f32]>,
        thw: (usize, usize, usize),
    ) -> Result<Vec<f32>, PipelineError> {
        self.with_expert(expert, |dit, _| {
            dit_forward(dit, x, timestep, text, None, y, thw, None)
        })
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
        dit_forward(&mut self.dit, x, timestep, text, image, y, (t, h, w), None)
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
        if let Some(c) = req.cache.filter(|c| c.is_block_cache()) {
            if self.dit.config().kind() != WanDitKind::Wan21I2v || self.high.is_some() {
                return Err(PipelineError::Request(format!(
                    "--cache {c}: its published calibration is for Wan2.1 I2V 14B (480p, \
                     720p) only; use --cache easycache for this model"
                )));
            }
        }
        let mut timings = Timings::default();
        let t_enc = Instant::now();
        events(Event::Stage { name: "encode" });
        let (width, height) = (req.width, req.height);
        let use_cfg =
            req.cfg != 1.0 || (self.high.is_some() && req.high_noise_cfg.is_some_and(|c| c != 1.0));
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
                // CLIP vision tokens for Wan2.1's image branch; Wan2.2 has none.
                let clip = match self.clip.is_some() {
                    true => Some(self.encode_image(&fitted)?),
                    false => None,
                };
                let y = self.image_condition(&fitted, req.frames)?;
                (clip, Some(y))
            }
            None => (None, None),
        };
        timings.encode_s = t_enc.elapsed().as_secs_f64();

        let shift = req
            .shift
            .unwrap_or_else(|| self.default_shift(width, height));
        let sampling = ModelSampling::Flow(FlowSchedule::new(shift)?);
        let sigmas = ksampler_sigmas(req.sampler, &sampling, req.scheduler, req.steps, 1.0)?;
        let n = z * t * lh * lw;
        let noise = TorchGenerator::new(req.seed).randn(n);
        let cond = Conditions {
            text: &text,
            neg_text: neg_text.as_deref(),
            clip: clip.as_deref(),
            y: y.as_deref(),
            thw: (t, lh, lw),
            cache: req.cache,
        };
        self.cache_report = req.cache.map(|_| CacheReport::default());
        events(Event::Stage { name: "sample" });
        let t_sample = Instant::now();
        let (mut latent, high_noise_steps) = match self.high.is_some() {
            false => {
                let phase = Phase::all(Expert::Low, req.sampler, req.cfg, req.steps);
                let x = self.sample_phase(
                    &sampling, &sigmas, &noise, None, &phase, req.seed, &cond, events,
                )?;
                (x, None)
            }
            true => {
                let (x, n) = self.sample_experts(req, &sampling, &sigmas, &noise, &cond, events)?;
                (x, Some(n))
            }
        };
        sampling
            .parameterization()
            .inverse_noise_scaling(0.0, &mut latent);
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
            high_noise_steps,
            cache: self.cache_report.take(),
            timings,
        })
    }

    /// The shift when the request gives none: Wan2.2 A14B's official one for an expert (5 for
    /// I2V, 12 for T2V), else Wan2.1's by area ([`default_shift`]).
    fn default_shift(&self, width: u32, height: u32) -> f64 {
        match self.wan22() {
            Some(d) => d.shift,
            None => default_shift(width, height),
        }
    }

    /// The official Wan2.2 settings when these models are Wan2.2 A14B experts: a pair, or one
    /// I2V expert (no CLIP branch, latent conditioning).
    fn wan22(&self) -> Option<Wan22Defaults> {
        let c = self.dit.config();
        match (self.high.is_some(), c.kind()) {
            (_, WanDitKind::Wan22I2vExpert) => Some(WAN22_I2V),
            (true, WanDitKind::T2v) => Some(WAN22_T2V),
            _ => None,
        }
    }

    /// Samples with both experts: the high-noise one for the first steps (by the boundary, or
    /// `high_noise_steps`), then the low-noise one. One sampler run over all steps switching
    /// the model (the official code, diffusers), or, with `--high-noise-steps` or a second
    /// sampler, two runs that hand over the latent (ComfyUI's two KSamplerAdvanced nodes).
    /// Returns the latent still scaled at sigma 0 and the switch step.
    #[allow(clippy::too_many_arguments)]
    fn sample_experts(
        &mut self,
        req: &WanRequest,
        sampling: &ModelSampling,
        sigmas: &[f32],
        noise: &[f32],
        cond: &Conditions<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<(Vec<f32>, usize), PipelineError> {
        let steps = sigmas.len() - 1;
        let boundary = boundary_of(req, self.dit.config().is_i2v());
        let high_steps = req
            .high_noise_steps
            .unwrap_or_else(|| boundary_steps(sampling, sigmas, boundary))
            .min(steps);
        let high_sampler = req.high_noise_sampler.unwrap_or(req.sampler);
        let high_cfg = req.high_noise_cfg.unwrap_or(req.cfg);
        let split = req.high_noise_steps.is_some() || high_sampler != req.sampler;
        tracing::info!(
            high_steps,
            steps,
            boundary,
            split,
            "two experts: the high-noise one samples the first steps"
        );
        let high = Phase {
            expert: Expert::High,
            sampler: high_sampler,
            cfg: high_cfg,
            steps: 0..high_steps,
            total: steps,
        };
        let low = Phase {
            expert: Expert::Low,
            sampler: req.sampler,
            cfg: req.cfg,
            steps: high_steps..steps,
            total: steps,
        };
        let seed = req.seed;
        let x = if !split || high_steps == 0 || high_steps == steps {
            // One run over all steps; the sampler of the phase that starts it.
            let sampler = if high_steps == 0 {
                req.sampler
            } else {
                high_sampler
            };
            let config = SamplerConfig::new(sampler, sampling.clone(), sigmas.to_vec())?;
            let mut stepper = start_stepper(&config, noise, None, seed)?;
            if !high.steps.is_empty() {
                self.run_phase(&mut stepper, sampling, &high, cond, events)?;
                self.high_done();
            }
            if !low.steps.is_empty() {
                self.run_phase(&mut stepper, sampling, &low, cond, events)?;
            }
            stepper.into_x()
        } else {
            // ComfyUI: the first KSamplerAdvanced returns its latent with the leftover noise
            // (inverse-scaled at its last sigma); the second adds no noise and scales it back.
            // Each KSamplerAdvanced computes the schedule for its own sampler (uni_pc drops
            // the penultimate sigma, the others do not) and takes its steps from it.
            let param = sampling.parameterization();
            let high_sigmas = ksampler_sigmas(high_sampler, sampling, req.scheduler, steps, 1.0)?;
            let s = high_sigmas[high_steps];
            let mut x = self.sample_phase(
                sampling,
                &high_sigmas[..=high_steps],
                noise,
                None,
                &high,
                seed,
                cond,
                events,
            )?;
            self.high_done();
            param.inverse_noise_scaling(s, &mut x);
            let zeros = vec![0f32; x.len()];
            let x = param.noise_scaling(sigmas[high_steps], &zeros, &x, false);
            self.sample_phase(
                sampling,
                &sigmas[high_steps..],
                &zeros,
                Some(x),
                &low,
                seed,
                cond,
                events,
            )?
        };
        Ok((x, high_steps))
    }

    /// The high-noise expert is done: its file's pages leave the resident set (the low-noise
    /// expert reads its own), whether its weights were used in place or copied to the device.
    fn high_done(&self) {
        if let Some(store) = self.high_store {
            if let Err(e) = store.file().release_pages() {
                tracing::debug!("could not release the high-noise expert's pages: {e}");
            }
        }
    }

    /// One sampler run of `phase` over `sigmas` from `noise` (or from `start`, a latent
    /// already at `sigmas[0]`); the latent at the last sigma, not inverse-scaled.
    #[allow(clippy::too_many_arguments)]
    fn sample_phase(
        &mut self,
        sampling: &ModelSampling,
        sigmas: &[f32],
        noise: &[f32],
        start: Option<Vec<f32>>,
        phase: &Phase,
        seed: u64,
        cond: &Conditions<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<Vec<f32>, PipelineError> {
        let config = SamplerConfig::new(phase.sampler, sampling.clone(), sigmas.to_vec())?;
        let mut stepper = start_stepper(&config, noise, start, seed)?;
        let local = Phase {
            steps: 0..stepper.total_steps(),
            ..phase.clone()
        };
        let offset = phase.steps.start;
        self.run_phase_at(&mut stepper, sampling, &local, offset, cond, events)?;
        Ok(stepper.into_x())
    }

    /// Runs `phase.steps` of `stepper` with `phase.expert` placed for them.
    fn run_phase(
        &mut self,
        stepper: &mut crate::sampling::Stepper<'_>,
        sampling: &ModelSampling,
        phase: &Phase,
        cond: &Conditions<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), PipelineError> {
        self.run_phase_at(stepper, sampling, phase, 0, cond, events)
    }

    /// [`WanModels::run_phase`], reporting step `i` of the stepper as step `offset + i` of
    /// `phase.total`.
    fn run_phase_at(
        &mut self,
        stepper: &mut crate::sampling::Stepper<'_>,
        sampling: &ModelSampling,
        phase: &Phase,
        offset: usize,
        cond: &Conditions<'_>,
        events: &mut dyn FnMut(Event),
    ) -> Result<(), PipelineError> {
        let param = sampling.parameterization();
        let neg_text = cond.neg_text.filter(|_| phase.cfg != 1.0);
        // Each phase (expert) its own cache, counting the whole run's steps.
        let mut cache = cond.cache.map(|c| {
            let per_step = if neg_text.is_some() { 2 } else { 1 };
            let first = offset + phase.steps.start;
            if c.is_block_cache() {
                let (_, lh, lw) = cond.thw;
                let cal = Calibration::for_size(8 * lw as u32, 8 * lh as u32);
                StepCache::Block(BlockStepCache::new(&c, cal, phase.total, per_step, first))
            } else {
                StepCache::Easy(EasyCache::new(&c, phase.total, per_step, first))
            }
        });
        let r = self.with_expert(phase.expert, |dit, opts| {
            let mut denoiser = WanDenoiser {
                dit,
                opts,
                sampling,
                param,
                text: cond.text,
                neg_text,
                clip: cond.clip,
                y: cond.y,
                cfg: phase.cfg,
                thw: cond.thw,
                cache: cache.as_mut(),
            };
            super::run_steps_until(
                stepper,
                &mut denoiser,
                opts,
                events,
                phase.steps.end,
                (offset, phase.total),
            )
        });
        if let (Some(total), Some(c)) = (self.cache_report.as_mut(), &cache) {
            total.add(match c {
                StepCache::Easy(e) => e.report(),
                StepCache::Block(b) => b.report(),
            });
        }
        r
    }
}

/// A run of `config` from `start` (a latent at its first sigma) or from `noise` scaled to it,
/// with ComfyUI's sampler noise for `seed` when the sampler draws noise.
fn start_stepper<'c>(
    config: &'c SamplerConfig,
    noise: &[f32],
    start: Option<Vec<f32>>,
    seed: u64,
) -> Result<crate::sampling::Stepper<'c>, PipelineError> {
    let x = match start {
        Some(x) => x,
        None => config.sampling().parameterization().noise_scaling(
            config.sigmas()[0],
            noise,
            &vec![0f32; noise.len()],
            true,
        ),
    };
    let source = config.comfy_noise(x.len(), seed)?;
    Ok(config.stepper(x, source)?)
}

/// A phase's step cache.
enum StepCache {
    Easy(EasyCache),
    Block(BlockStepCache),
}

/// What every DiT pass of a run sees besides the latent.
struct Conditions<'a> {
    text: &'a [f32],
    /// The negative prompt's text (when some phase uses CFG).
    neg_text: Option<&'a [f32]>,
    clip: Option<&'a [f32]>,
    y: Option<&'a [f32]>,
    thw: (usize, usize, usize),
    cache: Option<CacheSettings>,
}

/// The steps one expert samples, with its sampler and guidance.
#[derive(Clone, Debug)]
struct Phase {
    expert: Expert,
    sampler: SamplerKind,
    cfg: f32,
    /// Step indices of the whole run.
    steps: std::ops::Range<usize>,
    /// Steps of the whole run (for progress).
    total: usize,
}

impl Phase {
    /// All `steps` by one model.
    fn all(expert: Expert, sampler: SamplerKind, cfg: f32, steps: usize) -> Phase {
        Phase {
            expert,
            sampler,
            cfg,
            steps: 0..steps,
            total: steps,
        }
    }
}

/// The DiT's velocity for `x` [z, t, h, w], with the I2V condition `y` appended as channels;
/// `cache` may skip its blocks.
#[allow(clippy::too_many_arguments)]
fn dit_forward(
    dit: &mut WanDit<'_>,
    x: &[f32],
    timestep: f32,
    text: &[f32],
    image: Option<&[f32]>,
    y: Option<&[f32]>,
    (t, h, w): (usize, usize, usize),
    cache: Option<&mut BlockStepCache>,
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
    let cache = cache.map(|c| c as &mut dyn crate::models::wan_dit::BlockCache);
    let out = dit.forward_cached(x_in, timestep, text, image, (t, h, w), cache)?;
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
    /// `--cache`: decides which passes (or which block stacks) run.
    cache: Option<&'m mut StepCache>,
}

impl WanDenoiser<'_, '_> {
    /// One DiT pass on `x_in` with `text`, through the cache when there is one.
    fn forward(
        &mut self,
        x_in: &[f32],
        timestep: f32,
        text: &[f32],
    ) -> Result<Vec<f32>, PipelineError> {
        let (dit, clip, y, thw) = (&mut *self.dit, self.clip, self.y, self.thw);
        let t0 = Instant::now();
        match self.cache.as_deref_mut() {
            Some(StepCache::Easy(c)) => {
                let before = c.report().skipped_total();
                let out = c.call(x_in, || {
                    dit_forward(dit, x_in, timestep, text, clip, y, thw, None)
                })?;
                let skipped = c.report().skipped_total() > before;
                c.report_mut().time(skipped, t0.elapsed().as_secs_f64());
                Ok(out)
            }
            Some(StepCache::Block(c)) => {
                let before = c.report().skipped_total();
                let out = dit_forward(dit, x_in, timestep, text, clip, y, thw, Some(&mut *c))?;
                let skipped = c.report().skipped_total() > before;
                c.report_mut().time(skipped, t0.elapsed().as_secs_f64());
                Ok(out)
            }
            None => dit_forward(dit, x_in, timestep, text, clip, y, thw, None),
        }
    }
}

impl Denoiser for WanDenoiser<'_, '_> {
    type Error = PipelineError;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, PipelineError> {
        let timestep = self.sampling.timestep(sigma);
        let x_in = self.param.scale_input(sigma, x);
        let vc = self.forward(&x_in, timestep, self.text)?;
        let dc = self.param.denoised(sigma, &vc, x);
        match self.neg_text {
            Some(neg) => {
                self.opts.check_cancel()?;
                let vu = self.forward(&x_in, timestep, neg)?;
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
    check_pair(opened, files)?;
    let mut files = files.clone();
    if files.model.is_dir() {
        let dir = files.model.clone();
        diffusers_folder(&dir, &mut files)?;
    }
    let files = &files;
    let dit = open_net(opened, &files.model, &DIT)?.ok_or_else(|| PipelineError::NotA {
        path: files.model.clone(),
        what: DIT.label,
    })?;
    let forwards = |cfg: f32| if cfg == 1.0 { 1 } else { 2 };
    let mut specs = vec![spec(&DIT, &dit, &shapes)?.with_forwards(forwards(req.cfg))];
    let mut names = vec![(DIT.component, dit.file_name())];
    let mut fp8: Vec<_> = dit
        .fp8()
        .map(|w| (DIT.component, w, dit.q8_spec(&specs[0])))
        .into_iter()
        .collect();
    // Wan2.2's high-noise expert: its own component, freed before the low-noise one is placed.
    if let Some(path) = &files.high_noise_model {
        let high = open_required(opened, path, &DIT_HIGH)?;
        let cfg = req.high_noise_cfg.unwrap_or(req.cfg);
        specs.push(spec(&DIT_HIGH, &high, &shapes)?.with_forwards(forwards(cfg)));
        names.push((DIT_HIGH.component, high.file_name()));
        let last = specs.last().expect("pushed");
        fp8.extend(
            high.fp8()
                .map(|w| (DIT_HIGH.component, w, high.q8_spec(last))),
        );
    }
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
    let two = files.high_noise_model.is_some();
    let mut plan = stage_plan(memory, req.vae_tile, specs, names, fp8, what)?;
    if let Some(c) = &req.cache {
        // What the cache keeps, per CFG branch, in RAM (never on the device).
        let branches: u64 = if req.cfg != 1.0 { 2 } else { 1 };
        let latent_t = 1 + (req.frames as u64 - 1) / 4;
        let (lh, lw) = (u64::from(req.height) / 8, u64::from(req.width) / 8);
        let (what, bytes) = if c.is_block_cache() {
            let set = dit.store.load_meta(|_| true)?;
            let cfg = crate::models::WanDitConfig::from_weights(&set, "")?;
            let tokens = latent_t * (lh / 2) * (lw / 2);
            ("block residual", tokens * cfg.dim as u64 * 4)
        } else {
            ("velocity - latent difference", latent_t * lh * lw * 16 * 4)
        };
        plan.notes.push(format!(
            "cache {c}: {branches} {what}(s) kept in RAM, {} (no device memory)",
            super::plan::gib(branches * bytes)
        ));
    }
    if two {
        let ram = |c| plan.plan.get(c).map_or(0, |p| p.ram_peak());
        plan.notes.push(format!(
            "two experts, one after the other: dit_high samples the first steps and is freed \
             (device memory, and its file's pages released: {} of RAM) before dit is placed; \
             both files stay mapped, which takes no RAM until read ({} while dit samples)",
            super::plan::gib(ram(DIT_HIGH.component)),
            super::plan::gib(ram(DIT.component)),
        ));
    }
    Ok(plan)
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
