//! Stage 1: SDXL-family text-to-image (and img2img) with ComfyUI's semantics.
//!
//! 1. **Files** ([`SdxlFiles`]): a single-file ldm checkpoint (UNet, CLIP-L, bigG and VAE under
//!    `model.diffusion_model.`, `conditioner.embedders.{0,1}.`, `first_stage_model.`), a
//!    UNet-only file (GGUF of any quant type, or safetensors) with separate CLIP-L / bigG / VAE
//!    files, or a diffusers folder (`unet/`, `text_encoder/`, `text_encoder_2/`, `vae/`).
//!    Explicit component files win over the checkpoint's own. Every size comes from the weights.
//! 2. **Text** (ComfyUI `SDXLClipModel`): the prompt is split into 77-token chunks for both
//!    encoders ([`SdxlTokenizer`]); each chunk's CLIP-L and bigG penultimate hidden states are
//!    concatenated per token, chunks one after another; weighted tokens are moved away from the
//!    empty prompt's embedding, `z = (z - z_empty) w + z_empty`; the pooled vector is bigG's
//!    projected EOS state of the first chunk.
//! 3. **Sampling** (ComfyUI `KSampler`): sigmas of the scheduler (for img2img with strength `s`,
//!    the last `steps + 1` of `int(steps / s)`), initial noise `torch.randn([B, 4, h, w],
//!    generator=torch.manual_seed(seed))` on the CPU, scaled by `sqrt(1 + sigma^2)` for a full
//!    denoise and `sigma` otherwise, CFG on the denoised predictions, timestep = nearest entry
//!    of the schedule. When cond and uncond have different token counts, the shorter context is
//!    repeated up to their least common multiple, as ComfyUI does (attention over repeated keys
//!    is unchanged).
//! 4. **Decode**: the VAE decoder (optionally tiled), `(x + 1) / 2` to 8-bit with rounding.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::plan::{
    open_net, open_required, spec, stage_plan, when_budgeted, Finished, Job, MemoryOptions,
    OpenFiles, StagePlan,
};
pub use super::{from_rgb8, to_rgb8, InitImage};
use super::{inspect, placed, Event, Options, PipelineError, RunOptions, Timings};
use crate::formats::names::{Architecture, SDXL_CHECKPOINT_PREFIXES};
use crate::ggml::TensorSet;
use crate::lora::{Adapters, LoraError, LoraFile, LoraTarget};
use crate::models::network;
use crate::models::unet_sdxl::sdxl_added_cond;
use crate::models::{ClipTextModel, SdxlUnet, SdxlVae, UnetAttention};
use crate::models::{CLIP_G, CLIP_L, UNET, VAE_SDXL};
use crate::runtime::{Fp8Load, WeightStore};
use crate::sampling::{
    apply_cfg, ksampler_sigmas, Denoiser, DiscreteSchedule, ModelSampling, Parameterization,
    SamplerConfig, SamplerKind, Scheduler, TorchGenerator,
};
use crate::text::sdxl::{
    empty_chunk, SdxlTokenizer, SdxlTokens, TokenChunk, CHUNK_LEN, PAD_G, PAD_L,
};

/// The weight files of stage 1.
#[derive(Clone, Debug, Default)]
pub struct SdxlFiles {
    /// A checkpoint, a UNet-only file, or a diffusers folder.
    pub model: PathBuf,
    pub clip_l: Option<PathBuf>,
    pub clip_g: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    /// LoRA files with their multipliers, applied at run time.
    pub loras: Vec<(PathBuf, f32)>,
}

impl SdxlFiles {
    /// Everything from one checkpoint (or diffusers folder).
    pub fn single(model: impl Into<PathBuf>) -> SdxlFiles {
        SdxlFiles {
            model: model.into(),
            ..SdxlFiles::default()
        }
    }
}

/// SDXL size conditioning (`add_time_ids`): original size, crop offset, target size, in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeCond {
    pub original: (u32, u32),
    pub crop: (u32, u32),
    pub target: (u32, u32),
}

impl SizeCond {
    /// The defaults for a `width` x `height` image: original = target = the image, crop 0.
    pub fn for_image(width: u32, height: u32) -> SizeCond {
        SizeCond {
            original: (width, height),
            crop: (0, 0),
            target: (width, height),
        }
    }

    /// The 6 ids in ldm/ComfyUI order: original h, w, crop top, left, target h, w. `crop` is
    /// (left, top) like the other pairs' (width, height).
    pub fn time_ids(&self) -> [f32; 6] {
        [
            self.original.1 as f32,
            self.original.0 as f32,
            self.crop.1 as f32,
            self.crop.0 as f32,
            self.target.1 as f32,
            self.target.0 as f32,
        ]
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct SdxlRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub cfg: f32,
    pub sampler: SamplerKind,
    pub scheduler: Scheduler,
    pub seed: u64,
    /// Images drawn together (one noise tensor [batch, 4, h, w], as ComfyUI's batch).
    pub batch: usize,
    /// img2img source, RGB8 (resized and center-cropped to the output size).
    pub init_image: Option<InitImage>,
    /// img2img denoise strength in (0, 1] (ComfyUI `denoise`).
    pub strength: f32,
    /// Decode in tiles of this many pixels (overlap 1/8 of it); `None`: one piece.
    pub vae_tile: Option<u32>,
    /// `None`: [`SizeCond::for_image`].
    pub size_cond: Option<SizeCond>,
}

impl Default for SdxlRequest {
    fn default() -> Self {
        SdxlRequest {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 1024,
            height: 1024,
            steps: 25,
            cfg: 6.0,
            sampler: SamplerKind::Euler,
            scheduler: Scheduler::Normal,
            seed: 0,
            batch: 1,
            init_image: None,
            strength: 1.0,
            vae_tile: None,
            size_cond: None,
        }
    }
}

/// The text conditioning of one prompt.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Row-major [tokens, context width]: CLIP-L then bigG per token.
    pub context: Vec<f32>,
    pub tokens: usize,
    /// bigG's pooled (projected) output of the first chunk.
    pub pooled: Vec<f32>,
    /// CLIP-L's penultimate hidden states, row-major [tokens, width L] (before weighting).
    pub clip_l: Vec<f32>,
    /// bigG's penultimate hidden states, row-major [tokens, width G] (before weighting).
    pub clip_g: Vec<f32>,
}

/// One generated image.
#[derive(Clone, Debug)]
pub struct SdxlImage {
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major HWC.
    pub rgb: Vec<u8>,
    /// The VAE output, row-major [3, H, W] in [-1, 1].
    pub decoded: Vec<f32>,
    /// The final latent, row-major [4, H/8, W/8] (scaled, as the sampler ends).
    pub latent: Vec<f32>,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct SdxlOutput {
    pub images: Vec<SdxlImage>,
    pub seed: u64,
    pub timings: Timings,
    /// Whether the UNet was v-prediction (a `v_pred` key).
    pub v_prediction: bool,
}

/// Where a component's tensors are: which opened file, under which canonical prefix.
#[derive(Clone, Debug)]
struct Source {
    store: usize,
    prefix: String,
}

/// The opened files and where each component is.
struct Stores {
    stores: Vec<(PathBuf, Arc<WeightStore>)>,
    unet: Source,
    clip_l: Source,
    clip_g: Source,
    vae: Source,
    v_prediction: bool,
    zero_terminal_snr: bool,
}

/// The component files of a diffusers folder (`unet/`, `text_encoder/`, ...).
fn diffusers_folder(dir: &Path) -> Result<[PathBuf; 4], PipelineError> {
    let pick = |sub: &str, stem: &str| -> Result<PathBuf, PipelineError> {
        let d = dir.join(sub);
        let candidates = [
            format!("{stem}.safetensors"),
            format!("{stem}.fp16.safetensors"),
            format!("{stem}.safetensors.index.json"),
            format!("{stem}.fp16.safetensors.index.json"),
        ];
        candidates
            .iter()
            .map(|c| d.join(c))
            .find(|p| p.is_file())
            .ok_or_else(|| PipelineError::MissingComponent {
                what: format!(
                    "{}: a diffusers folder without {sub}/{stem}.safetensors",
                    dir.display()
                ),
                flag: match sub {
                    "unet" => "--model",
                    "text_encoder" => "--clip-l",
                    "text_encoder_2" => "--clip-g",
                    _ => "--vae",
                },
            })
    };
    Ok([
        pick("unet", "diffusion_pytorch_model")?,
        pick("text_encoder", "model")?,
        pick("text_encoder_2", "model")?,
        pick("vae", "diffusion_pytorch_model")?,
    ])
}

/// The canonical prefix of `wanted` in `store`: "" when the file is that component, the ldm
/// checkpoint prefix when it is a checkpoint containing it, `None` otherwise.
fn component_prefix(store: &WeightStore, wanted: Architecture) -> Option<String> {
    let d = store.detection();
    if d.architecture == wanted {
        return Some(String::new());
    }
    if d.architecture == Architecture::SDXL_CHECKPOINT
        && d.components.iter().any(|c| c.architecture == wanted)
    {
        return SDXL_CHECKPOINT_PREFIXES
            .iter()
            .find(|(a, _)| *a == wanted)
            .map(|(_, p)| p.to_string());
    }
    None
}

/// (v-prediction, zero terminal SNR) from the `v_pred` / `ztsnr` keys, as ComfyUI's
/// `SDXL.model_type` reads them: `ztsnr` counts only next to `v_pred`.
fn v_prediction(store: &WeightStore) -> (bool, bool) {
    let d = store.detection();
    (d.v_prediction, d.zero_terminal_snr)
}

impl Stores {
    fn open(opened: &OpenFiles, files: &SdxlFiles) -> Result<Stores, PipelineError> {
        let mut files = files.clone();
        if files.model.is_dir() {
            let [unet, te1, te2, vae] = diffusers_folder(&files.model)?;
            files.model = unet;
            files.clip_l.get_or_insert(te1);
            files.clip_g.get_or_insert(te2);
            files.vae.get_or_insert(vae);
        }
        let mut stores = vec![(files.model.clone(), opened.open(&files.model)?)];
        let main = &stores[0].1;
        let Some(unet_prefix) = component_prefix(main, Architecture::SDXL_UNET) else {
            return Err(PipelineError::WrongModel {
                path: files.model.clone(),
                found: inspect::found(main),
                wanted: "an SDXL checkpoint or UNet",
            });
        };
        let (v_prediction, zero_terminal_snr) = v_prediction(main);
        let unet = Source {
            store: 0,
            prefix: unet_prefix,
        };
        let is_checkpoint = main.detection().architecture == Architecture::SDXL_CHECKPOINT;
        let mut find = |explicit: &Option<PathBuf>,
                        arch: Architecture,
                        what: &str,
                        flag: &'static str,
                        wanted: &'static str|
         -> Result<Source, PipelineError> {
            if let Some(path) = explicit {
                let store = opened.open(path)?;
                let Some(prefix) = component_prefix(&store, arch) else {
                    return Err(PipelineError::WrongModel {
                        path: path.clone(),
                        found: inspect::found(&store),
                        wanted,
                    });
                };
                stores.push((path.clone(), store));
                return Ok(Source {
                    store: stores.len() - 1,
                    prefix,
                });
            }
            match component_prefix(&stores[0].1, arch) {
                Some(prefix) => Ok(Source { store: 0, prefix }),
                None => Err(PipelineError::MissingComponent {
                    what: if is_checkpoint {
                        format!("this checkpoint has no {what}")
                    } else {
                        format!("{} is a UNet only, with no {what}", files.model.display())
                    },
                    flag,
                }),
            }
        };
        let clip_l = find(
            &files.clip_l,
            Architecture::CLIP_L,
            "CLIP-L text encoder",
            "--clip-l",
            "a CLIP-L text encoder",
        )?;
        let clip_g = find(
            &files.clip_g,
            Architecture::CLIP_G,
            "OpenCLIP bigG text encoder",
            "--clip-g",
            "an OpenCLIP bigG text encoder",
        )?;
        let vae = find(
            &files.vae,
            Architecture::SDXL_VAE,
            "VAE",
            "--vae",
            "an SDXL VAE",
        )?;
        Ok(Stores {
            stores,
            unet,
            clip_l,
            clip_g,
            vae,
            v_prediction,
            zero_terminal_snr,
        })
    }

    fn load(
        &self,
        source: &Source,
        component: &'static str,
        fp8: Fp8Load,
        events: &mut dyn FnMut(Event),
    ) -> Result<TensorSet<'_>, PipelineError> {
        let (path, store) = &self.stores[source.store];
        let prefix = source.prefix.as_str();
        let set = store.load_with(|n| n.starts_with(prefix), fp8)?;
        events(Event::Loaded {
            component,
            path: path.clone(),
            bytes: set.data_bytes(),
        });
        Ok(set)
    }

    fn path(&self, source: &Source) -> &Path {
        &self.stores[source.store].0
    }
}

/// The four models of stage 1, loaded.
pub struct SdxlModels<'w> {
    pub clip_l: ClipTextModel<'w>,
    pub clip_g: ClipTextModel<'w>,
    pub unet: SdxlUnet<'w>,
    pub vae: SdxlVae<'w>,
    sampling: ModelSampling,
    tokenizer: SdxlTokenizer,
    opts: RunOptions,
    v_prediction: bool,
    /// The mapped weight sets (clip_l, clip_g, unet, vae) and their prefixes, which device
    /// copies are made from, and the LoRA adapters (clip_l, clip_g, unet).
    sets: [(&'w TensorSet<'w>, &'w str); 4],
    adapters: Option<&'w [Adapters; 3]>,
}

/// Opens `files`, loads the four models and runs `f` on them. The weights stay memory-mapped
/// for as long as `f` runs and are released when it returns.
pub fn with_models<R>(
    files: &SdxlFiles,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    f: impl FnOnce(&mut SdxlModels<'_>, &mut dyn FnMut(Event)) -> Result<R, PipelineError>,
) -> Result<R, PipelineError> {
    with_models_in(&OpenFiles::default(), files, opts, events, f)
}

/// [`with_models`] on files opened (or to be opened) in `opened`.
fn with_models_in<R>(
    opened: &OpenFiles,
    files: &SdxlFiles,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    f: impl FnOnce(&mut SdxlModels<'_>, &mut dyn FnMut(Event)) -> Result<R, PipelineError>,
) -> Result<R, PipelineError> {
    let t0 = Instant::now();
    events(Event::Stage { name: "load" });
    let stores = Stores::open(opened, files)?;
    let lora_files = files
        .loras
        .iter()
        .map(|(path, _)| {
            let f = LoraFile::open(path)?;
            f.check_targets(&[
                LoraTarget::Unet,
                LoraTarget::TextEncoder1,
                LoraTarget::TextEncoder2,
            ])?;
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
    let parts: Vec<_> = [
        (&CLIP_L, &stores.clip_l),
        (&CLIP_G, &stores.clip_g),
        (&UNET, &stores.unet),
        (&VAE_SDXL, &stores.vae),
    ]
    .into_iter()
    .map(|(c, s)| (c.component, &*stores.stores[s.store].1, s.prefix.as_str()))
    .collect();
    let fp8 = opts.fp8_loads(&parts);
    let sets = [
        stores.load(&stores.clip_l, "clip_l", fp8[0], events)?,
        stores.load(&stores.clip_g, "clip_g", fp8[1], events)?,
        stores.load(&stores.unet, "unet", fp8[2], events)?,
        stores.load(&stores.vae, "vae", fp8[3], events)?,
    ];
    let adapters = if pairs.is_empty() {
        None
    } else {
        let build = |i: usize, source: &Source, target| {
            Adapters::build(&sets[i], &source.prefix, target, &pairs)
        };
        let a = [
            build(0, &stores.clip_l, LoraTarget::TextEncoder1)?,
            build(1, &stores.clip_g, LoraTarget::TextEncoder2)?,
            build(2, &stores.unet, LoraTarget::Unet)?,
        ];
        report_adapters(&a);
        Some(a)
    };
    let mut clip_l = ClipTextModel::new(&sets[0], &stores.clip_l.prefix, threads)?;
    let mut clip_g = ClipTextModel::new(&sets[1], &stores.clip_g.prefix, threads)?;
    if clip_g.config().projection_dim.is_none() {
        return Err(PipelineError::Mismatch(format!(
            "{}: the bigG text encoder has no text_projection (pooled output); is it a CLIP-L?",
            stores.path(&stores.clip_g).display()
        )));
    }
    let mut unet = SdxlUnet::new(&sets[2], &stores.unet.prefix, threads)?;
    unet.set_attention(UnetAttention::Flash);
    if let Some(a) = &adapters {
        clip_l.set_adapters(Some(&a[0]))?;
        clip_g.set_adapters(Some(&a[1]))?;
        unet.set_adapters(Some(&a[2]))?;
    }
    let vae = SdxlVae::new(&sets[3], &stores.vae.prefix, threads)?;
    let (lw, gw, cw) = (
        clip_l.config().width,
        clip_g.config().width,
        unet.config().context_dim,
    );
    if lw + gw != cw {
        return Err(PipelineError::Mismatch(format!(
            "the text encoders give {lw} + {gw} = {} context values per token but the UNet \
             takes {cw}: wrong --clip-l / --clip-g for this model?",
            lw + gw
        )));
    }
    if unet.config().in_channels != vae.config().latent_channels {
        return Err(PipelineError::Mismatch(format!(
            "the UNet takes {} latent channels but the VAE has {}: wrong --vae for this model?",
            unet.config().in_channels,
            vae.config().latent_channels
        )));
    }
    let schedule = if stores.zero_terminal_snr {
        DiscreteSchedule::sdxl_zero_terminal_snr()
    } else {
        DiscreteSchedule::sdxl()
    }
    .with_v_prediction(stores.v_prediction);
    let mut models = SdxlModels {
        clip_l,
        clip_g,
        unet,
        vae,
        sampling: ModelSampling::Discrete(schedule),
        tokenizer: SdxlTokenizer::new(),
        opts: opts.clone(),
        v_prediction: stores.v_prediction,
        sets: [
            (&sets[0], &stores.clip_l.prefix),
            (&sets[1], &stores.clip_g.prefix),
            (&sets[2], &stores.unet.prefix),
            (&sets[3], &stores.vae.prefix),
        ],
        adapters: adapters.as_ref(),
    };
    tracing::info!(
        seconds = t0.elapsed().as_secs_f64(),
        v_prediction = stores.v_prediction,
        zero_terminal_snr = stores.zero_terminal_snr,
        "stage 1 models loaded"
    );
    f(&mut models, events)
}

/// Logs what each LoRA file did to each model (applied modules, keys that matched nothing).
fn report_adapters(adapters: &[Adapters]) {
    for a in adapters {
        for r in a.reports() {
            if r.applied > 0 {
                tracing::info!(
                    file = %r.file.display(),
                    target = r.target.name(),
                    modules = r.applied,
                    multiplier = r.multiplier,
                    "LoRA applied"
                );
            }
            if !r.unsupported.is_empty() {
                tracing::warn!(
                    file = %r.file.display(),
                    keys = r.unsupported.len(),
                    first = %r.unsupported[0],
                    "LoRA keys of an unsupported kind (LoHa/LoKr/Tucker/DoRA) were skipped"
                );
            }
        }
    }
}

/// Loads the models, generates the images of `req` and releases the models.
pub fn generate(
    files: &SdxlFiles,
    req: &SdxlRequest,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<SdxlOutput, PipelineError> {
    generate_in(&OpenFiles::default(), files, req, opts, events)
}

/// [`generate`] on files opened (or to be opened) in `opened`.
pub(crate) fn generate_in(
    opened: &OpenFiles,
    files: &SdxlFiles,
    req: &SdxlRequest,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<SdxlOutput, PipelineError> {
    validate(req)?;
    let t0 = Instant::now();
    with_models_in(opened, files, opts, events, |m, events| {
        let load_s = t0.elapsed().as_secs_f64();
        let mut out = m.generate(req, events)?;
        out.timings.load_s = load_s;
        Ok(out)
    })
}

/// An image run checked and planned ([`prepare`]).
pub type ImageJob = Job<SdxlFiles, SdxlRequest>;

impl ImageJob {
    /// Generates the images under `opts.memory` (from [`ImageJob::memory`]).
    pub fn run(
        &self,
        opts: &RunOptions,
        events: &mut dyn FnMut(Event),
    ) -> Result<SdxlOutput, PipelineError> {
        generate_in(&self.opened, &self.files, &self.request, opts, events)
    }
}

/// Checks `request` and plans it on `files` under `memory` (no plan on the CPU without a
/// budget); the planner's VAE tile fills an unset one.
pub fn prepare(
    files: SdxlFiles,
    request: SdxlRequest,
    memory: &MemoryOptions,
) -> Result<ImageJob, PipelineError> {
    prepare_in(OpenFiles::default(), files, request, memory)
}

/// [`prepare`] on files opened (or to be opened) in `opened`, which the job keeps.
pub(crate) fn prepare_in(
    opened: OpenFiles,
    files: SdxlFiles,
    mut request: SdxlRequest,
    memory: &MemoryOptions,
) -> Result<ImageJob, PipelineError> {
    validate(&request)?;
    let plan = when_budgeted(memory, || plan_image(&opened, &files, &request, memory))?;
    if let Some(p) = &plan {
        request.vae_tile = request.vae_tile.or(p.tile(VAE_SDXL.component));
    }
    Ok(ImageJob {
        files,
        request,
        plan,
        opened,
    })
}

/// Checks, plans and generates `request` in one call (see [`prepare`] and [`ImageJob::run`]).
pub fn run(
    request: SdxlRequest,
    files: SdxlFiles,
    options: &Options,
    events: &mut dyn FnMut(Event),
) -> Result<ImageRun, PipelineError> {
    let job = prepare(files, request, &options.memory)?;
    let memory = job.memory();
    let output = job.run(&options.run_options(memory.clone()), events)?;
    Ok(Finished {
        job,
        output,
        memory,
    })
}

/// What [`run`] returns.
pub type ImageRun = Finished<SdxlFiles, SdxlRequest, SdxlOutput>;

/// Checks a request before anything is loaded.
pub fn validate(req: &SdxlRequest) -> Result<(), PipelineError> {
    let bad = |m: String| Err(PipelineError::Request(m));
    if req.width == 0 || req.height == 0 || req.width % 8 != 0 || req.height % 8 != 0 {
        return bad(format!(
            "size {}x{}: width and height must be positive multiples of 8",
            req.width, req.height
        ));
    }
    if req.width > 16384 || req.height > 16384 {
        return bad(format!(
            "size {}x{}: at most 16384 per side",
            req.width, req.height
        ));
    }
    if req.steps == 0 || req.steps > 10_000 {
        return bad(format!("{} steps: use 1 to 10000", req.steps));
    }
    if !req.cfg.is_finite() || req.cfg < 0.0 {
        return bad(format!("cfg {}: must be a number >= 0", req.cfg));
    }
    if req.batch == 0 || req.batch > 64 {
        return bad(format!("batch {}: use 1 to 64", req.batch));
    }
    if !(req.strength > 0.0 && req.strength <= 1.0) {
        return bad(format!(
            "strength {}: must be in (0, 1] (1 = ignore the init image's content)",
            req.strength
        ));
    }
    if let Some(t) = req.vae_tile {
        if t < 64 || t % 8 != 0 {
            return bad(format!(
                "VAE tile {t}: use a multiple of 8, at least 64 pixels"
            ));
        }
    }
    Ok(())
}

/// The sigmas of a `steps`-step run of `sampler` at img2img `strength`: ComfyUI's KSampler
/// with `denoise` = strength ([`ksampler_sigmas`]: all of them at strength 1, else the last
/// `steps + 1` of `int(steps / strength)`; `uni_pc` drops the penultimate sigma).
pub fn img2img_sigmas(
    sampling: &ModelSampling,
    sampler: SamplerKind,
    scheduler: Scheduler,
    steps: usize,
    strength: f32,
) -> Result<Vec<f32>, PipelineError> {
    let denoise = if strength >= 1.0 {
        1.0
    } else {
        f64::from(strength)
    };
    Ok(ksampler_sigmas(
        sampler, sampling, scheduler, steps, denoise,
    )?)
}

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    a / gcd(a, b) * b
}

/// `context` ([tokens, width]) repeated to `tokens * k` rows.
fn repeat_context(context: &[f32], k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(context.len() * k);
    for _ in 0..k {
        out.extend_from_slice(context);
    }
    out
}

impl<'w> SdxlModels<'w> {
    /// Whether the UNet predicts v (a `v_pred` checkpoint).
    pub fn v_prediction(&self) -> bool {
        self.v_prediction
    }

    /// The noise schedule (discrete SDXL, eps or v).
    pub fn sampling(&self) -> &ModelSampling {
        &self.sampling
    }

    /// ComfyUI's tokenization of `prompt` for both encoders.
    pub fn tokenize(&self, prompt: &str) -> SdxlTokens {
        self.tokenizer.tokenize(prompt)
    }

    /// Encodes a prompt into the UNet's context and pooled vector.
    pub fn encode(&mut self, prompt: &str) -> Result<Conditioning, PipelineError> {
        let tokens = self.tokenize(prompt);
        if !tokens.missing_embeddings.is_empty() {
            tracing::warn!(
                names = ?tokens.missing_embeddings,
                "textual-inversion embeddings are not supported; their names were dropped"
            );
        }
        let weighted = tokens.has_weights();
        let (l, l_empty) = self.with_clip(0, |m| encode_chunks(m, &tokens.l, PAD_L, weighted))?;
        let (g, g_empty) = self.with_clip(1, |m| encode_chunks(m, &tokens.g, PAD_G, weighted))?;
        let pooled = g.pooled.clone().unwrap_or_default();
        let (lw, gw) = (l.width, g.width);
        let n = tokens.l.len() * CHUNK_LEN;
        let mut context = Vec::with_capacity(n * (lw + gw));
        for (ci, (chunk_l, chunk_g)) in tokens.l.iter().zip(&tokens.g).enumerate() {
            for t in 0..CHUNK_LEN {
                let row = ci * CHUNK_LEN + t;
                push_weighted(
                    &mut context,
                    &l.penultimate[row * lw..(row + 1) * lw],
                    l_empty.as_deref().map(|e| &e[t * lw..(t + 1) * lw]),
                    chunk_l.weights[t],
                );
                push_weighted(
                    &mut context,
                    &g.penultimate[row * gw..(row + 1) * gw],
                    g_empty.as_deref().map(|e| &e[t * gw..(t + 1) * gw]),
                    chunk_g.weights[t],
                );
            }
        }
        let proj = pooled.len() / tokens.g.len().max(1);
        Ok(Conditioning {
            context,
            tokens: n,
            pooled: pooled[..proj].to_vec(),
            clip_l: l.penultimate,
            clip_g: g.penultimate,
        })
    }

    /// The raw UNet output (eps or v, no CFG) for one image's latent `x` (already scaled by
    /// c_in) at the model `timestep`, with `cond`'s context and the added condition built from
    /// its pooled vector and `time_ids`.
    pub fn unet_forward(
        &mut self,
        x: &[f32],
        timestep: f32,
        cond: &Conditioning,
        time_ids: [f32; 6],
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        unet_forward(&mut self.unet, x, timestep, cond, time_ids, (h, w))
    }

    /// Decodes a (scaled) latent [4, h, w] into [3, 8h, 8w] in [-1, 1], tiled when `tile`
    /// (pixels) is given.
    pub fn vae_decode(
        &mut self,
        latent: &[f32],
        h: usize,
        w: usize,
        tile: Option<u32>,
    ) -> Result<Vec<f32>, PipelineError> {
        self.with_vae(|vae| {
            let s = vae.config().downscale();
            Ok(match tile {
                Some(t) => {
                    let t = (t as usize / s).max(1);
                    vae.decode_tiled(latent, h, w, t, (t / 8).max(1))?
                }
                None => vae.decode(latent, h, w)?,
            })
        })
    }

    /// Runs `f` on text encoder `i` (0: CLIP-L, 1: bigG): on the device when the memory plan
    /// puts it there (a copy that lives for this call), else on the CPU from the mapped file.
    fn with_clip<R>(
        &mut self,
        i: usize,
        f: impl for<'x> FnOnce(&mut ClipTextModel<'x>) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let (net, cpu) = match i {
            0 => (&CLIP_L, &mut self.clip_l),
            _ => (&CLIP_G, &mut self.clip_g),
        };
        let adapters = self.adapters.map(|a| &a[i]);
        placed::<ClipTextModel, _>(&self.opts, net, cpu, self.sets[i], adapters, f)
    }

    /// As [`SdxlModels::with_clip`] for the UNet (resident only: it is not streamed).
    fn with_unet<R>(
        &mut self,
        f: impl for<'x> FnOnce(
            &mut SdxlUnet<'x>,
            &RunOptions,
            &ModelSampling,
        ) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        let (opts, sampling) = (&self.opts, &self.sampling);
        let adapters = self.adapters.map(|a| &a[2]);
        placed::<SdxlUnet, _>(opts, &UNET, &mut self.unet, self.sets[2], adapters, |m| {
            f(m, opts, sampling)
        })
    }

    /// As [`SdxlModels::with_clip`] for the VAE.
    fn with_vae<R>(
        &mut self,
        f: impl for<'x> FnOnce(&mut SdxlVae<'x>) -> Result<R, PipelineError>,
    ) -> Result<R, PipelineError> {
        placed::<SdxlVae, _>(&self.opts, &VAE_SDXL, &mut self.vae, self.sets[3], None, f)
    }

    /// Runs a whole request on the loaded models.
    pub fn generate(
        &mut self,
        req: &SdxlRequest,
        events: &mut dyn FnMut(Event),
    ) -> Result<SdxlOutput, PipelineError> {
        validate(req)?;
        let mut timings = Timings::default();
        let t0 = Instant::now();
        events(Event::Stage { name: "encode" });
        let pos = self.encode(&req.prompt)?;
        let use_cfg = req.cfg != 1.0;
        let neg = if use_cfg {
            Some(self.encode(&req.negative_prompt)?)
        } else {
            None
        };
        timings.encode_s = t0.elapsed().as_secs_f64();
        let size = req
            .size_cond
            .unwrap_or_else(|| SizeCond::for_image(req.width, req.height));
        let time_ids = size.time_ids();
        let s = self.vae.config().downscale();
        let (lh, lw) = (req.height as usize / s, req.width as usize / s);
        let down = self.unet.config().downscale();
        if lh % down != 0 || lw % down != 0 {
            return Err(PipelineError::Request(format!(
                "size {}x{}: this UNet needs multiples of {} pixels",
                req.width,
                req.height,
                s * down
            )));
        }
        let channels = self.unet.config().in_channels;
        let per = channels * lh * lw;

        // The starting latent: zeros, or the encoded init image.
        let t_enc = Instant::now();
        let latent = match &req.init_image {
            None => vec![0f32; per],
            Some(img) => {
                let fitted = crate::media::image::fit_rgb(
                    &img.rgb, img.width, img.height, req.width, req.height,
                )?;
                let pixels = from_rgb8(&fitted, req.width as usize, req.height as usize);
                let (h, w) = (req.height as usize, req.width as usize);
                self.with_vae(|vae| Ok(vae.encode(&pixels, h, w)?))?
            }
        };
        timings.encode_s += t_enc.elapsed().as_secs_f64();

        let strength = if req.init_image.is_some() {
            req.strength
        } else {
            1.0
        };
        let sigmas = img2img_sigmas(
            &self.sampling,
            req.sampler,
            req.scheduler,
            req.steps,
            strength,
        )?;
        let sigma_max = self.sampling.sigma_max();
        let max_denoise =
            (sigmas[0] - sigma_max).abs() <= 1e-5 * sigma_max || sigmas[0] > sigma_max;
        let param = self.sampling.parameterization();
        let batch_latent = repeat_context(&latent, req.batch);
        let noise = TorchGenerator::new(req.seed).randn(per * req.batch);
        let x = param.noise_scaling(sigmas[0], &noise, &batch_latent, max_denoise);
        let config = SamplerConfig::new(req.sampler, self.sampling.clone(), sigmas)?;
        let noise_source = config.comfy_noise(per * req.batch, req.seed)?;
        let mut stepper = config.stepper(x, noise_source)?;

        // cond and uncond with the same token count (one UNet graph for both).
        let (pos, neg) = match neg {
            Some(neg) if neg.tokens != pos.tokens => {
                let n = lcm(pos.tokens, neg.tokens);
                let widen = |c: Conditioning| Conditioning {
                    context: repeat_context(&c.context, n / c.tokens),
                    tokens: n,
                    ..c
                };
                (widen(pos), Some(widen(neg)))
            }
            other => (pos, other),
        };

        events(Event::Stage { name: "sample" });
        let t_sample = Instant::now();
        self.with_unet(|unet, opts, sampling| {
            let mut denoiser = CfgDenoiser {
                unet,
                sampling,
                opts,
                pos: &pos,
                neg: neg.as_ref(),
                cfg: req.cfg,
                time_ids,
                param,
                hw: (lh, lw),
                per,
            };
            super::run_steps(&mut stepper, &mut denoiser, opts, events)
        })?;
        let mut x = stepper.into_x();
        param.inverse_noise_scaling(0.0, &mut x);
        timings.sample_s = t_sample.elapsed().as_secs_f64();

        events(Event::Stage { name: "decode" });
        let t_dec = Instant::now();
        let mut images = Vec::with_capacity(req.batch);
        for (i, lat) in x.chunks_exact(per).enumerate() {
            self.opts.check_cancel()?;
            let decoded = self.vae_decode(lat, lh, lw, req.vae_tile)?;
            let rgb = to_rgb8(&decoded, req.width as usize, req.height as usize);
            images.push(SdxlImage {
                width: req.width,
                height: req.height,
                rgb,
                decoded,
                latent: lat.to_vec(),
            });
            events(Event::Decoded {
                index: i + 1,
                total: req.batch,
            });
        }
        timings.decode_s = t_dec.elapsed().as_secs_f64();
        Ok(SdxlOutput {
            images,
            seed: req.seed,
            timings,
            v_prediction: self.v_prediction,
        })
    }
}

/// Appends `z` moved away from the empty prompt's `empty` by `weight` (ComfyUI).
fn push_weighted(out: &mut Vec<f32>, z: &[f32], empty: Option<&[f32]>, weight: f32) {
    match empty {
        Some(e) if weight != 1.0 => {
            out.extend(z.iter().zip(e).map(|(&z, &e)| (z - e) * weight + e));
        }
        _ => out.extend_from_slice(z),
    }
}

/// Runs one encoder over all chunks, and over the empty chunk when the prompt has weights.
fn encode_chunks(
    model: &mut ClipTextModel<'_>,
    chunks: &[TokenChunk],
    pad: u32,
    weighted: bool,
) -> Result<(crate::models::ClipOutput, Option<Vec<f32>>), PipelineError> {
    let ids: Vec<u32> = chunks.iter().flat_map(|c| c.ids).collect();
    let out = model.forward(&ids)?;
    let empty = if weighted {
        Some(model.forward(&empty_chunk(pad).ids)?.penultimate)
    } else {
        None
    };
    Ok((out, empty))
}

/// The raw UNet output for one image's latent (see [`SdxlModels::unet_forward`]).
fn unet_forward(
    unet: &mut SdxlUnet<'_>,
    x: &[f32],
    timestep: f32,
    cond: &Conditioning,
    time_ids: [f32; 6],
    (h, w): (usize, usize),
) -> Result<Vec<f32>, PipelineError> {
    let adm = unet.config().adm_in.unwrap_or(0);
    let y = if adm > 0 {
        sdxl_added_cond(&cond.pooled, time_ids, adm)?
    } else {
        Vec::new()
    };
    Ok(unet.forward(x, timestep, &cond.context, &y, h, w)?)
}

/// The model as the sampler sees it: every image of the batch through the UNet, with CFG.
struct CfgDenoiser<'m, 'x> {
    unet: &'m mut SdxlUnet<'x>,
    sampling: &'m ModelSampling,
    opts: &'m RunOptions,
    pos: &'m Conditioning,
    neg: Option<&'m Conditioning>,
    cfg: f32,
    time_ids: [f32; 6],
    param: Parameterization,
    hw: (usize, usize),
    per: usize,
}

impl Denoiser for CfgDenoiser<'_, '_> {
    type Error = PipelineError;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, PipelineError> {
        let t = self.sampling.timestep(sigma);
        let x_in = self.param.scale_input(sigma, x);
        let mut out = vec![0f32; x.len()];
        for (i, xi) in x_in.chunks_exact(self.per).enumerate() {
            let raw = x.get(i * self.per..(i + 1) * self.per).unwrap_or(&[]);
            let c = unet_forward(self.unet, xi, t, self.pos, self.time_ids, self.hw)?;
            let dc = self.param.denoised(sigma, &c, raw);
            let o = &mut out[i * self.per..(i + 1) * self.per];
            match self.neg {
                Some(neg) => {
                    self.opts.check_cancel()?;
                    let u = unet_forward(self.unet, xi, t, neg, self.time_ids, self.hw)?;
                    let du = self.param.denoised(sigma, &u, raw);
                    apply_cfg(&du, &dc, self.cfg, o);
                }
                None => o.copy_from_slice(&dc),
            }
        }
        Ok(out)
    }
}

/// Plans stage 1 (`nijigen image`) for `req` on `files`: the UNet from `--model`, the text
/// encoders and the VAE from their own files or from the checkpoint.
pub fn plan_image(
    opened: &OpenFiles,
    files: &SdxlFiles,
    req: &SdxlRequest,
    memory: &MemoryOptions,
) -> Result<StagePlan, PipelineError> {
    let shapes = network::Request {
        width: req.width,
        height: req.height,
        frames: 1,
        vae_tile: req.vae_tile,
    };
    let model = &files.model;
    let unet = open_net(opened, model, &UNET)?.ok_or_else(|| PipelineError::NotA {
        path: model.clone(),
        what: UNET.label,
    })?;
    let forwards = if req.cfg == 1.0 { 1 } else { 2 } * req.batch.max(1) as u32;
    let mut specs = vec![spec(&UNET, &unet, &shapes)?.with_forwards(forwards)];
    let mut names = vec![(UNET.component, unet.file_name())];
    let mut fp8: Vec<_> = unet
        .fp8()
        .map(|w| (UNET.component, w, unet.q8_spec(&specs[0])))
        .into_iter()
        .collect();
    for (net, explicit) in [
        (&CLIP_L, &files.clip_l),
        (&CLIP_G, &files.clip_g),
        (&VAE_SDXL, &files.vae),
    ] {
        let part = open_required(opened, explicit.as_ref().unwrap_or(model), net)?;
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
    let what = format!("image {}x{}", req.width, req.height);
    stage_plan(memory, req.vae_tile, specs, names, fp8, what)
}
