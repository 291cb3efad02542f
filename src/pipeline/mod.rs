//! Generation pipelines: the models of a stage loaded from the files users have, run in order
//! (text encoders, sampler over the denoiser, VAE), with progress reported to the caller.

pub mod i2v;
pub mod image;
pub mod inspect;
pub mod output;
pub mod plan;
pub mod step_cache;
pub mod video;

use std::path::PathBuf;

pub use crate::lora::parse_lora_spec;
pub use crate::runtime::devices::{list as devices, DeviceInfo};
pub use crate::runtime::hint;
pub use inspect::{inspect, inspect_files, ComponentInfo, Inspected, Inspection};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ggml::GgmlError;
use crate::ggml::TensorSet;
use crate::media::MediaError;
use crate::models::{ClipError, Network, Place, UnetError, VaeError};
use crate::runtime::plan::{Component, Placement};
use crate::runtime::weights::LoadError;
use crate::runtime::{Accountant, ComputeDevice, DeviceWeights, Fp8Load, Residency, WeightStore};
use crate::sampling::SamplingError;

/// Why a pipeline could not run. Messages name the file and say what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A weight file that could not be opened.
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: LoadError,
    },
    /// A file that does not hold the network a slot needs.
    #[error("{}: not {what}", path.display())]
    NotA { path: PathBuf, what: &'static str },
    /// A component a plan needs is in none of the given files.
    #[error("no {what} to plan")]
    NothingToPlan {
        what: &'static str,
        flag: &'static str,
    },
    /// An output file that could not be written.
    #[error("writing {}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: MediaError,
    },
    /// The plan does not fit the budget (with a hint).
    #[error(transparent)]
    Plan(#[from] crate::runtime::plan::PlanError),
    #[error("{}: is {found}, not {wanted}", path.display())]
    WrongModel {
        path: PathBuf,
        found: String,
        wanted: &'static str,
    },
    /// A component the stage needs is in none of the given files.
    #[error("{what}: pass {flag} FILE")]
    MissingComponent { what: String, flag: &'static str },
    /// A file's embedded tokenizer (ComfyUI's `spiece_model`) that could not be read.
    #[error("{}: its embedded tokenizer (spiece_model) could not be read: {why}", path.display())]
    EmbeddedTokenizer { path: PathBuf, why: String },
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Request(String),
    /// Wan2.2's pair of experts is not a pair (a Wan2.1 DiT, I2V with T2V, other sizes).
    #[error("{message}")]
    Experts { message: String, hint: String },
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error(transparent)]
    Unet(#[from] UnetError),
    #[error(transparent)]
    Vae(#[from] VaeError),
    #[error(transparent)]
    Umt5(#[from] crate::models::Umt5Error),
    #[error(transparent)]
    ClipVision(#[from] crate::models::ClipVisionError),
    #[error(transparent)]
    WanDit(#[from] crate::models::WanDitError),
    #[error(transparent)]
    WanVae(#[from] crate::models::WanVaeError),
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Video(#[from] crate::media::video::VideoError),
    #[error(transparent)]
    Ggml(#[from] GgmlError),
    #[error(transparent)]
    Device(#[from] crate::runtime::DeviceError),
    #[error("stopped by the user")]
    Interrupted,
}

/// The memory plan a run follows: the device-memory ledger (budget and peak) and where each
/// component's weights live while it runs (from [`crate::runtime::plan::plan`]). Components
/// not listed run on the CPU from the memory-mapped file.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub accountant: Accountant,
    pub placements: Vec<(Component, Placement)>,
    /// The device the placed components compute on (the CPU: a simulated device).
    pub device: ComputeDevice,
    /// How each component loads its fp8 weights (decided with the plan).
    pub fp8: Vec<(Component, Fp8Load)>,
}

/// A component placed on the compute device for one call: the runner it computes with (the
/// device's backend, metered into the run's accountant), its weights copied there (resident
/// or streamed), and its LoRA adapters copied beside them.
pub(crate) struct OnDevice<'s> {
    pub runner: crate::runtime::GraphRunner<'static>,
    pub weights: DeviceWeights<'s>,
    pub adapters: Option<crate::lora::Adapters>,
}

impl Memory {
    /// How component `c` loads its fp8 weights: made at upload when the plan puts it on the
    /// device, else as the plan decided for the CPU.
    pub fn fp8_load(&self, c: Component) -> Fp8Load {
        let planned = self.fp8.iter().find(|(k, _)| *k == c).map(|(_, l)| *l);
        let upload = |l: &Fp8Load| matches!(l, Fp8Load::OnUpload | Fp8Load::OnUploadQ8_0);
        match self.placement(c) {
            Placement::Cpu => planned.filter(|l| !upload(l)).unwrap_or_default(),
            _ => planned.filter(upload).unwrap_or(Fp8Load::OnUpload),
        }
    }

    /// The placement of `c` (CPU when the plan does not list it).
    pub fn placement(&self, c: Component) -> Placement {
        self.placements
            .iter()
            .find(|(k, _)| *k == c)
            .map_or(Placement::Cpu, |(_, p)| p.clone())
    }

    /// `set` (and `adapters`) copied to the device as the plan places `c`, with a runner to
    /// compute there (`threads` for a CPU backend), or `None` when `c` runs on the CPU from the
    /// mapped file. `blocks` names the block prefixes in execution order for a streamed
    /// placement.
    pub(crate) fn on_device<'s>(
        &self,
        c: Component,
        set: &'s TensorSet<'s>,
        blocks: impl FnOnce() -> Vec<String>,
        adapters: Option<&crate::lora::Adapters>,
        threads: usize,
    ) -> Result<Option<OnDevice<'s>>, PipelineError> {
        let residency = match self.placement(c) {
            Placement::Cpu => return Ok(None),
            Placement::Resident => Residency::Resident,
            Placement::Streamed { slots, .. } => Residency::Streamed {
                blocks: blocks(),
                slots: slots as usize,
            },
        };
        let backend = self.device.backend(threads)?;
        let weights = DeviceWeights::build(set, &backend, &residency, &self.accountant, c.name())?;
        let adapters = adapters
            .map(|a| a.on_device(&backend, &self.accountant, c.name()))
            .transpose()?;
        Ok(Some(OnDevice {
            runner: crate::runtime::GraphRunner::new(backend)?
                .with_accountant(Some(&self.accountant)),
            weights,
            adapters,
        }))
    }
}

/// Runs `f` on component `net`'s model `P`: on the device when the memory plan in `opts` puts
/// it there (a copy of `set` (names under `prefix`) with `adapters`, built by [`Place::place`],
/// that lives for this call), else on `cpu`, the model over the mapped file.
pub(crate) fn placed<'w, P: Place, R>(
    opts: &RunOptions,
    net: &Network,
    cpu: &mut P::Model<'w>,
    (set, prefix): (&'w TensorSet<'w>, &str),
    adapters: Option<&crate::lora::Adapters>,
    f: impl for<'x> FnOnce(&mut P::Model<'x>) -> Result<R, PipelineError>,
) -> Result<R, PipelineError>
where
    PipelineError: From<P::Error>,
{
    let Some(mem) = &opts.memory else {
        return f(cpu);
    };
    let threads = opts.cpu_threads();
    let blocks = || P::blocks(cpu);
    let Some(d) = mem.on_device(net.component, set, blocks, adapters, threads)? else {
        return f(cpu);
    };
    let mut m = P::place(&d.weights, prefix, d.runner, d.adapters.as_ref())?;
    let r = f(&mut m);
    // The driver's figure while the model and its buffers are alive.
    mem.accountant.sample();
    r
}

/// Runs `stepper` to its end over `denoiser`, reporting each step and stopping at the first
/// step boundary after the caller asked to.
pub(crate) fn run_steps<D>(
    stepper: &mut crate::sampling::Stepper<'_>,
    denoiser: &mut D,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
) -> Result<(), PipelineError>
where
    D: crate::sampling::Denoiser<Error = PipelineError>,
{
    let total = stepper.total_steps();
    run_steps_until(stepper, denoiser, opts, events, total, (0, total))
}

/// [`run_steps`] up to step `end` (exclusive) of the stepper, reporting its step `i` as step
/// `offset + i` of `total` (one phase of a run sampled in parts).
pub(crate) fn run_steps_until<D>(
    stepper: &mut crate::sampling::Stepper<'_>,
    denoiser: &mut D,
    opts: &RunOptions,
    events: &mut dyn FnMut(Event),
    end: usize,
    (offset, total): (usize, usize),
) -> Result<(), PipelineError>
where
    D: crate::sampling::Denoiser<Error = PipelineError>,
{
    while !stepper.is_finished() && stepper.current_step() < end {
        opts.check_cancel()?;
        let ts = std::time::Instant::now();
        let report = stepper.step(denoiser).map_err(|e| match e {
            crate::sampling::StepError::Denoiser { source, .. } => source,
            crate::sampling::StepError::Sampling(e) => PipelineError::Sampling(e),
        })?;
        if let Some(m) = &opts.memory {
            m.accountant.sample();
        }
        events(Event::Step {
            step: offset + report.step + 1,
            total,
            sigma: report.sigma,
            elapsed: ts.elapsed(),
        });
    }
    Ok(())
}

/// How a run computes, before it is planned: threads, the stop flag, and where it may put
/// its weights ([`plan::MemoryOptions`]).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// CPU threads for ggml (0: all cores).
    pub threads: usize,
    /// Set (e.g. by a Ctrl-C handler) to stop at the next step.
    pub cancel: Option<Arc<AtomicBool>>,
    pub memory: plan::MemoryOptions,
}

impl Options {
    /// The options a planned run computes with, under `memory`.
    pub fn run_options(&self, memory: Option<Memory>) -> RunOptions {
        RunOptions {
            threads: self.threads,
            memory,
            cancel: self.cancel.clone(),
            fp8_cpu: self.memory.fp8_cpu,
        }
    }
}

/// How the models compute.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// CPU threads for ggml (0: all cores).
    pub threads: usize,
    /// The memory plan (`None`: no budget, everything on the CPU from the mapped files).
    pub memory: Option<Memory>,
    /// Set (e.g. by a Ctrl-C handler) to stop at the next step with
    /// [`PipelineError::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// What fp8 weights become on the CPU when there is no plan (no budget).
    pub fp8_cpu: plan::Fp8Cpu,
}

impl RunOptions {
    /// Whether the caller asked to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// [`PipelineError::Interrupted`] when the caller asked to stop.
    pub fn check_cancel(&self) -> Result<(), PipelineError> {
        if self.cancelled() {
            Err(PipelineError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// How each of `parts` (a component, its file and the stored-name prefix of its tensors)
    /// loads its fp8 weights: as the memory plan says, or without one on the CPU as
    /// [`RunOptions::fp8_cpu`] resolves for them all.
    pub(crate) fn fp8_loads(&self, parts: &[(Component, &WeightStore, &str)]) -> Vec<Fp8Load> {
        match &self.memory {
            Some(m) => parts.iter().map(|(c, _, _)| m.fp8_load(*c)).collect(),
            None => {
                let f16 = parts
                    .iter()
                    .filter_map(|(_, s, p)| plan::Fp8Weights::of(s, p))
                    .map(|w| w.f16)
                    .sum();
                vec![self.fp8_cpu.resolve(f16); parts.len()]
            }
        }
    }

    /// The thread count to give ggml.
    pub fn cpu_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What a pipeline reports while it runs.
#[derive(Clone, Debug)]
pub enum Event {
    /// A stage starts: "load", "encode", "sample", "decode".
    Stage { name: &'static str },
    /// A component was opened (bytes of its weights).
    Loaded {
        component: &'static str,
        path: PathBuf,
        bytes: u64,
    },
    /// A sampling step finished (`step` counts from 1).
    Step {
        step: usize,
        total: usize,
        sigma: f32,
        elapsed: Duration,
    },
    /// An image (or frame) was decoded (`index` counts from 1).
    Decoded { index: usize, total: usize },
    /// A run of several stages starts the next one ("1/2 still", "2/2 video").
    Part { label: &'static str },
}

/// Wall time spent per stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub encode_s: f64,
    pub sample_s: f64,
    pub decode_s: f64,
}

/// An RGB8 image given as input (img2img, or the first frame of a video).
#[derive(Clone, Debug)]
pub struct InitImage {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// 8-bit RGB (HWC) of a decoded [3, H, W] image in [-1, 1], rounded half to even like
/// diffusers' `numpy_to_pil` (ComfyUI's SaveImage truncates instead: at most 1 lower).
pub fn to_rgb8(decoded: &[f32], width: usize, height: usize) -> Vec<u8> {
    let plane = width * height;
    let mut rgb = vec![0u8; plane * 3];
    for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
        for (c, v) in px.iter_mut().enumerate() {
            let x = (decoded[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            *v = (x * 255.0).round_ties_even() as u8;
        }
    }
    rgb
}

/// An RGB8 image (HWC) as [3, H, W] in [-1, 1], the VAE encoder's input.
pub fn from_rgb8(rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
    let plane = width * height;
    let mut out = vec![0f32; plane * 3];
    for (i, px) in rgb.chunks_exact(3).enumerate().take(plane) {
        for c in 0..3 {
            out[c * plane + i] = f32::from(px[c]) / 255.0 * 2.0 - 1.0;
        }
    }
    out
}
