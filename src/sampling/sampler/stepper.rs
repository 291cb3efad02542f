//! [`Stepper`]: one sampling run over one latent, a step at a time, dispatching to the
//! sampler's own state and arithmetic.

use std::fmt;

use super::config::SamplerConfig;
use super::denoiser::{Denoiser, NoiseSource};
use super::dpmpp_2m::Dpmpp2m;
use super::dpmpp_2m_sde::Dpmpp2mSde;
use super::dpmpp_3m_sde::Dpmpp3mSde;
use super::er_sde::ErSde;
use super::kind::{SamplerKind, SamplerOptions};
use super::res_multistep::ResMultistep;
use super::uni_pc::{UniPc, Variant};
use super::unipc_wan::UniPcWan;
use super::{ddim, dpmpp_2m_sde, dpmpp_sde, euler, euler_ancestral, heun, lcm, unipc_wan};
use crate::sampling::{SamplingError, StepError};

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Zero-based step index.
    pub step: usize,
    /// Number of steps in the plan.
    pub total: usize,
    /// The sigma the step started from.
    pub sigma: f32,
    /// The sigma the step went to.
    pub sigma_next: f32,
    /// Denoiser calls made by this step.
    pub model_evaluations: usize,
}

/// A step's report with the latent after the step and the denoised prediction made at `sigma`
/// (for previews).
#[derive(Clone, Copy, Debug)]
pub struct StepView<'s> {
    /// What the step did.
    pub report: StepReport,
    /// The latent after the step.
    pub x: &'s [f32],
    /// The model's x0 prediction at the step's starting sigma.
    pub denoised: &'s [f32],
}

/// The running sampler with its own state, made from the [`SamplerKind`] once per run.
enum Sampler {
    Euler,
    EulerAncestral,
    Heun,
    Dpmpp2m(Dpmpp2m),
    Dpmpp2mSde(Dpmpp2mSde),
    Lcm,
    UniPcWan(UniPcWan),
    DpmppSde,
    Dpmpp3mSde(Dpmpp3mSde),
    ResMultistep(ResMultistep),
    ErSde(ErSde),
    Ddim,
    UniPc(UniPc),
}

impl Sampler {
    /// The state for a run over `sigmas` (the ones in use) from `x`, which ComfyUI's UniPC
    /// rewrites as its model input.
    fn new(kind: SamplerKind, options: &SamplerOptions, sigmas: &[f32], x: &mut [f32]) -> Self {
        match kind {
            SamplerKind::Euler => Sampler::Euler,
            SamplerKind::EulerAncestral => Sampler::EulerAncestral,
            SamplerKind::Heun => Sampler::Heun,
            SamplerKind::Dpmpp2m => Sampler::Dpmpp2m(Dpmpp2m::default()),
            SamplerKind::Dpmpp2mSde => Sampler::Dpmpp2mSde(Dpmpp2mSde::default()),
            SamplerKind::Lcm => Sampler::Lcm,
            SamplerKind::UniPcWan => Sampler::UniPcWan(UniPcWan::new(options.unipc_order)),
            SamplerKind::DpmppSde => Sampler::DpmppSde,
            SamplerKind::Dpmpp3mSde => Sampler::Dpmpp3mSde(Dpmpp3mSde::default()),
            SamplerKind::ResMultistep => Sampler::ResMultistep(ResMultistep::default()),
            SamplerKind::ErSde => Sampler::ErSde(ErSde::default()),
            SamplerKind::Ddim => Sampler::Ddim,
            SamplerKind::UniPc => Sampler::UniPc(UniPc::new(Variant::Bh1, sigmas, x)),
            SamplerKind::UniPcBh2 => Sampler::UniPc(UniPc::new(Variant::Bh2, sigmas, x)),
        }
    }
}

/// What a sampler sees of the step besides the latent and the prediction.
#[derive(Clone, Copy)]
pub(super) struct StepCtx<'s> {
    /// Zero-based step index.
    pub i: usize,
    /// Number of steps.
    pub total: usize,
    /// The sigmas in use.
    pub sigmas: &'s [f32],
    /// `sigmas[i]`, the sigma the step starts from.
    pub s: f32,
    /// `sigmas[i + 1]`, the sigma the step goes to.
    pub sn: f32,
    /// Whether the model is a flow model.
    pub flow: bool,
    pub options: SamplerOptions,
}

/// The run's noise source and its buffer of one latent's length.
pub(super) struct Noise<'n> {
    source: Option<&'n mut (dyn NoiseSource + Send)>,
    buf: &'n mut [f32],
}

impl Noise<'_> {
    /// Fills the buffer for the step from `sigma` to `sigma_next` and returns it.
    pub fn draw(&mut self, sigma: f32, sigma_next: f32) -> &[f32] {
        if let Some(src) = self.source.as_mut() {
            src.fill_noise(sigma, sigma_next, self.buf);
        }
        self.buf
    }
}

/// A sampling run in progress over one latent.
pub struct Stepper<'a> {
    config: &'a SamplerConfig,
    /// The sigmas actually used (see [`Stepper::sigmas`]).
    sigmas: Vec<f32>,
    x: Vec<f32>,
    denoised: Vec<f32>,
    index: usize,
    noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    noise_buf: Vec<f32>,
    sampler: Sampler,
}

impl fmt::Debug for Stepper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stepper")
            .field("sampler", &self.config.kind())
            .field("step", &self.index)
            .field("steps", &self.total_steps())
            .field("len", &self.x.len())
            .finish()
    }
}

/// Calls the model and checks the length of its output.
pub(super) fn eval<D: Denoiser>(
    model: &mut D,
    x: &[f32],
    sigma: f32,
    step: usize,
) -> Result<Vec<f32>, StepError<D::Error>> {
    let out = model
        .denoise(x, sigma)
        .map_err(|source| StepError::Denoiser {
            step,
            sigma,
            source,
        })?;
    if out.len() != x.len() {
        return Err(SamplingError::LengthMismatch {
            what: "the denoiser output",
            expected: x.len(),
            actual: out.len(),
        }
        .into());
    }
    Ok(out)
}

impl SamplerConfig {
    /// Starts sampling the latent `x` (already at `sigmas[0]`, e.g. from
    /// [`Parameterization::noise_scaling`](crate::sampling::Parameterization::noise_scaling)). A
    /// noise source is required when [`SamplerConfig::needs_noise`] and ignored otherwise.
    pub fn stepper<'a>(
        &'a self,
        x: Vec<f32>,
        noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    ) -> Result<Stepper<'a>, SamplingError> {
        if self.needs_noise() && noise.is_none() {
            return Err(SamplingError::NoiseRequired {
                sampler: self.kind().name(),
            });
        }
        let mut sigmas = self.sigmas().to_vec();
        match self.kind() {
            SamplerKind::Dpmpp2mSde
            | SamplerKind::DpmppSde
            | SamplerKind::Dpmpp3mSde
            | SamplerKind::ErSde => dpmpp_2m_sde::offset_first_sigma(self.sampling(), &mut sigmas),
            SamplerKind::UniPcWan => unipc_wan::offset_first_sigma(self.sampling(), &mut sigmas),
            SamplerKind::Euler
            | SamplerKind::EulerAncestral
            | SamplerKind::Heun
            | SamplerKind::Dpmpp2m
            | SamplerKind::Lcm
            | SamplerKind::ResMultistep
            | SamplerKind::Ddim
            | SamplerKind::UniPc
            | SamplerKind::UniPcBh2 => {}
        }
        let noise_len = if self.needs_noise() { x.len() } else { 0 };
        Ok(Stepper::new(self, sigmas, x, noise, noise_len))
    }
}

impl<'a> Stepper<'a> {
    /// A run of `config` from `x` over `sigmas` (the plan's, possibly offset), with a noise
    /// buffer of `noise_len` values.
    pub(super) fn new(
        config: &'a SamplerConfig,
        sigmas: Vec<f32>,
        mut x: Vec<f32>,
        noise: Option<Box<dyn NoiseSource + Send + 'a>>,
        noise_len: usize,
    ) -> Self {
        let sampler = Sampler::new(config.kind(), config.options(), &sigmas, &mut x);
        Stepper {
            config,
            sigmas,
            x,
            denoised: Vec::new(),
            index: 0,
            noise,
            noise_buf: vec![0.0; noise_len],
            sampler,
        }
    }

    /// Number of steps of the plan.
    pub fn total_steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// Index of the next step to run (= steps done so far).
    pub fn current_step(&self) -> usize {
        self.index
    }

    /// Whether all steps ran.
    pub fn is_finished(&self) -> bool {
        self.index >= self.total_steps()
    }

    /// The current latent (the final result once finished).
    pub fn x(&self) -> &[f32] {
        &self.x
    }

    /// The last x0 prediction (empty before the first step).
    pub fn denoised(&self) -> &[f32] {
        &self.denoised
    }

    /// The sigmas in use: the plan's, except that on flow models a first sigma of 1 is offset
    /// by dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde and er_sde (to `percent_to_sigma(1e-4)`, as
    /// ComfyUI's `offset_first_sigma_for_snr`) and by unipc_wan (to 1 - 1e-6, as diffusers).
    /// (`uni_pc` / `uni_pc_bh2` replace a last sigma 0 by 0.001 internally; they report the
    /// plan's.)
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The latent, consuming the stepper.
    pub fn into_x(self) -> Vec<f32> {
        self.x
    }

    /// A view of the state after a step, for callbacks.
    pub fn view(&self, report: StepReport) -> StepView<'_> {
        StepView {
            report,
            x: &self.x,
            denoised: &self.denoised,
        }
    }

    /// Runs the next step.
    pub fn step<D: Denoiser>(&mut self, model: &mut D) -> Result<StepReport, StepError<D::Error>> {
        let total = self.total_steps();
        let i = self.index;
        if i >= total {
            return Err(SamplingError::Finished { steps: total }.into());
        }
        let s = self.sigmas[i];
        let sn = self.sigmas[i + 1];
        let den = eval(model, &self.x, s, i)?;
        let ctx = StepCtx {
            i,
            total,
            sigmas: &self.sigmas,
            s,
            sn,
            flow: self.config.sampling().is_flow(),
            options: *self.config.options(),
        };
        let mut noise = Noise {
            source: self
                .noise
                .as_deref_mut()
                .map(|n| n as &mut (dyn NoiseSource + Send)),
            buf: &mut self.noise_buf,
        };
        let x = &mut self.x;
        let evals = match &mut self.sampler {
            Sampler::Euler => {
                euler::step(x, &den, &ctx);
                1
            }
            Sampler::EulerAncestral => {
                euler_ancestral::step(x, &den, &ctx, &mut noise);
                1
            }
            Sampler::Heun => heun::step(x, &den, &ctx, model)?,
            Sampler::Dpmpp2m(st) => {
                st.step(x, &den, &ctx);
                1
            }
            Sampler::Dpmpp2mSde(st) => {
                st.step(x, &den, &ctx, &mut noise);
                1
            }
            Sampler::Lcm => {
                lcm::step(x, &den, &ctx, &mut noise);
                1
            }
            Sampler::UniPcWan(st) => {
                st.step(x, &den, &ctx)?;
                1
            }
            Sampler::DpmppSde => dpmpp_sde::step(x, &den, &ctx, &mut noise, model)?,
            Sampler::Dpmpp3mSde(st) => {
                st.step(x, &den, &ctx, &mut noise);
                1
            }
            Sampler::ResMultistep(st) => {
                st.step(x, &den, &ctx);
                1
            }
            Sampler::ErSde(st) => {
                st.step(x, &den, &ctx, &mut noise);
                1
            }
            Sampler::Ddim => {
                ddim::step(x, &den, &ctx);
                1
            }
            Sampler::UniPc(st) => {
                st.step(x, &den, &ctx)?;
                1
            }
        };
        self.denoised = den;
        self.index += 1;
        Ok(StepReport {
            step: i,
            total,
            sigma: s,
            sigma_next: sn,
            model_evaluations: evals,
        })
    }
}
