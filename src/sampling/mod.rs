//! Sampling: noise, sigma schedules and samplers. Plain Rust on `f32` slices; no ggml.
//!
//! * [`rng`]: [`TorchGenerator`], bit-exact `torch.randn` on PyTorch's CPU generator, so a seed
//!   gives the same initial latent (and ancestral noise) as ComfyUI.
//! * [`schedule`]: the SDXL discrete and Wan flow schedules ([`ModelSampling`]) and ComfyUI's
//!   schedulers ([`Scheduler`]: normal, karras, exponential, simple, sgm_uniform,
//!   ddim_uniform, beta, linear_quadratic, kl_optimal); [`ksampler_sigmas`], the sigma list
//!   ComfyUI's KSampler builds from them for a sampler, steps and denoise.
//! * [`brownian`]: [`BrownianTreeNoise`], ComfyUI's torchsde Brownian-tree noise
//!   (`BrownianTreeNoiseSampler`) for the SDE samplers, bit-exact.
//! * [`special`]: the incomplete beta function and its inverse (for the `beta` scheduler).
//! * [`param`]: eps / v / flow parameterisation, input scaling, noise scaling, CFG.
//! * [`sampler`]: the samplers ([`SamplerKind`]) as an immutable [`SamplerConfig`] that builds a
//!   stateful [`Stepper`], driven by a caller-supplied [`Denoiser`].
//!
//! Typical SDXL txt2img flow (ComfyUI-equivalent for the same seed):
//!
//! ```
//! use nijigen::sampling::{
//!     comfy_initial_noise, comfy_sampler_noise, sample, DiscreteSchedule, FnDenoiser,
//!     ModelSampling, SamplerConfig, SamplerKind, Scheduler,
//! };
//! let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
//! let sigmas = ms.sigmas(Scheduler::Karras, 4).unwrap();
//! let seed = 42;
//! let noise = comfy_initial_noise(seed, 16);
//! let latent = vec![0.0f32; 16];
//! let x = ms.parameterization().noise_scaling(sigmas[0], &noise, &latent, true);
//! let cfg = SamplerConfig::new(SamplerKind::EulerAncestral, ms, sigmas).unwrap();
//! // A stand-in for the UNet + CFG wrapper: predicts a zero image.
//! let mut model = FnDenoiser(|x: &[f32], _sigma: f32| Ok::<_, std::convert::Infallible>(vec![0.0; x.len()]));
//! let out = sample(&cfg, x, Some(Box::new(comfy_sampler_noise(seed))), &mut model, |_| {}).unwrap();
//! assert_eq!(out.len(), 16);
//! ```

pub mod brownian;
mod ksampler;
pub mod param;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod special;

pub use brownian::BrownianTreeNoise;
pub use ksampler::ksampler_sigmas;
pub use param::{apply_cfg, Parameterization};
pub use rng::{comfy_initial_noise, comfy_sampler_noise, NormalKernel, TorchGenerator};
pub use sampler::{
    sample, Denoiser, FnDenoiser, NoiseSource, SamplerConfig, SamplerKind, SamplerOptions,
    StepReport, StepView, Stepper, UniPcVariant,
};
pub use schedule::{DiscreteSchedule, FlowSchedule, ModelSampling, Scheduler};

/// Invalid sampling settings or inputs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// A schedule or sampler was asked for zero steps.
    #[error("the number of steps must be at least 1")]
    ZeroSteps,
    /// Bad schedule parameters.
    #[error("invalid noise schedule: {reason}")]
    InvalidSchedule {
        /// What is wrong.
        reason: String,
    },
    /// A scheduler name that is not one of ours.
    #[error("unknown scheduler {name:?}; expected one of: {expected}")]
    UnknownScheduler {
        /// The name given.
        name: String,
        /// The accepted names.
        expected: String,
    },
    /// A sampler name that is not one of ours.
    #[error("unknown sampler {name:?}; expected one of: {expected}")]
    UnknownSampler {
        /// The name given.
        name: String,
        /// The accepted names.
        expected: String,
    },
    /// The sigma list is unusable.
    #[error("invalid sigma list: {reason}")]
    InvalidSigmas {
        /// What is wrong.
        reason: String,
    },
    /// Bad sampler options.
    #[error("invalid sampler option: {reason}")]
    InvalidOption {
        /// What is wrong.
        reason: String,
    },
    /// A stochastic sampler was started without a noise source.
    #[error("sampler {sampler} adds noise at every step and needs a noise source")]
    NoiseRequired {
        /// The sampler's name.
        sampler: &'static str,
    },
    /// A buffer has the wrong number of values.
    #[error("{what} has {actual} values, expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// The latent's length.
        expected: usize,
        /// What was given.
        actual: usize,
    },
    /// `step` was called after the last step.
    #[error("the sampler already finished all {steps} steps")]
    Finished {
        /// The number of steps of the schedule.
        steps: usize,
    },
}

/// A failure while running a sampler step: bad input, or the denoiser's own error.
#[derive(Debug, thiserror::Error)]
pub enum StepError<E> {
    /// Invalid input or state.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// The denoiser (the network call) failed.
    #[error("the denoiser failed at step {step} (sigma {sigma})")]
    Denoiser {
        /// Zero-based step index.
        step: usize,
        /// The sigma it was called with.
        sigma: f32,
        /// The denoiser's error.
        #[source]
        source: E,
    },
}
