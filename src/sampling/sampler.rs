//! The samplers, with ComfyUI / k-diffusion semantics (eta and s_noise as options, no churn).
//!
//! An immutable [`SamplerConfig`] (sampler, model sampling, sigma list, options) builds a
//! stateful [`Stepper`] over one latent; each [`Stepper::step`] runs one step of the sigma list
//! (one or two [`Denoiser`] calls) and reports it, so a caller can draw progress bars or previews
//! between steps. [`sample`] runs all steps with a callback.
//!
//! The per-element arithmetic mirrors the float32 tensor expressions of the references
//! (ComfyUI's `comfy/k_diffusion/sampling.py`, diffusers' `UniPCMultistepScheduler`) in the same
//! order; scalar coefficients are float32 like ComfyUI's 0-d sigma tensors.
//!
//! Noise: the stochastic samplers draw standard normal noise from a [`NoiseSource`] once per
//! step, in ComfyUI's order: `euler_ancestral` when the step's `sigma_down` is not 0 (not on the
//! last step to 0), `lcm` when the next sigma is above 0, `dpmpp_2m_sde` when the next sigma is
//! above 0 (and eta, s_noise > 0). ComfyUI's default noise for euler_ancestral and lcm is
//! [`comfy_sampler_noise`](super::rng::comfy_sampler_noise) (a CPU torch generator seeded with
//! `seed + 1`) — reproduced exactly. For dpmpp_2m_sde ComfyUI samples a torchsde Brownian tree
//! (`BrownianTreeNoiseSampler`, seeded with `seed`); its per-step increments are, like ours,
//! independent standard normals, but the values differ: with a [`TorchGenerator`] as the noise
//! source this sampler is the same SDE with different (equally distributed) noise.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use super::rng::TorchGenerator;
use super::schedule::ModelSampling;
use super::{SamplingError, StepError};

/// The model as the samplers see it: latent `x` at noise level `sigma` in, denoised latent
/// (the x0 prediction, CFG already applied) out, with `x.len()` values.
pub trait Denoiser {
    /// The network's error type.
    type Error;

    /// Predicts the clean latent from `x` at `sigma`.
    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error>;
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error> {
        (**self).denoise(x, sigma)
    }
}

/// A closure as a [`Denoiser`].
pub struct FnDenoiser<F>(pub F);

impl<F, E> Denoiser for FnDenoiser<F>
where
    F: FnMut(&[f32], f32) -> Result<Vec<f32>, E>,
{
    type Error = E;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, E> {
        (self.0)(x, sigma)
    }
}

/// Standard normal noise for the stochastic samplers, one buffer per call, in the order the
/// sampler asks (ComfyUI's `noise_sampler(sigma, sigma_next)`).
pub trait NoiseSource {
    /// Fills `out` with noise for the step from `sigma` to `sigma_next`.
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]);
}

impl NoiseSource for TorchGenerator {
    /// `torch.randn(x.size(), generator=self)`, like ComfyUI's `default_noise_sampler`.
    fn fill_noise(&mut self, _sigma: f32, _sigma_next: f32, out: &mut [f32]) {
        self.fill_randn(out);
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for &mut N {
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        (**self).fill_noise(sigma, sigma_next, out);
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for Box<N> {
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        (**self).fill_noise(sigma, sigma_next, out);
    }
}

/// The samplers, by their ComfyUI names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `euler`: first-order ODE steps.
    Euler,
    /// `euler_ancestral`: Euler to `sigma_down`, then fresh noise up to the next sigma. On flow
    /// models ComfyUI's rectified-flow variant (`sample_euler_ancestral_RF`).
    EulerAncestral,
    /// `heun`: second order, two model calls per step (one on the last step to 0).
    Heun,
    /// `dpmpp_2m`: DPM-Solver++(2M).
    Dpmpp2m,
    /// `dpmpp_2m_sde`: DPM-Solver++(2M) SDE, midpoint (see the module docs about its noise).
    Dpmpp2mSde,
    /// `lcm`: jump to the prediction, re-noise to the next sigma.
    Lcm,
    /// `uni_pc`: UniPC multistep predictor-corrector as diffusers' `UniPCMultistepScheduler`
    /// (and the official Wan 2.1 solver): order 2 and variant bh2 by default (see
    /// [`SamplerOptions`]), lower orders for the first and last steps, one model call per step.
    /// The latent after a step is the predictor's; the next step corrects it with the next
    /// model output. On flow models a first sigma of 1 becomes 1 - 1e-6 (as in diffusers).
    /// NOT ComfyUI's `uni_pc`/`uni_pc_bh2`, which use order 3, stop at sigma 0.001 and treat
    /// flow sigmas as variance-exploding ones.
    UniPc,
}

impl SamplerKind {
    /// All samplers.
    pub const ALL: [SamplerKind; 7] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2mSde,
        SamplerKind::Lcm,
        SamplerKind::UniPc,
    ];

    /// The name (ComfyUI's, where it has one).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_ancestral",
            SamplerKind::Heun => "heun",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mSde => "dpmpp_2m_sde",
            SamplerKind::Lcm => "lcm",
            SamplerKind::UniPc => "uni_pc",
        }
    }

    /// Whether the sampler injects noise during sampling.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::EulerAncestral | SamplerKind::Dpmpp2mSde | SamplerKind::Lcm
        )
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SamplingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SamplingError::UnknownSampler {
                name: s.to_owned(),
                expected: SamplerKind::ALL.map(SamplerKind::name).join(", "),
            })
    }
}

/// UniPC's B(h) choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UniPcVariant {
    /// `B(h) = h`.
    Bh1,
    /// `B(h) = e^h - 1` (the Wan default).
    #[default]
    Bh2,
}

/// Sampler options (ComfyUI defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerOptions {
    /// Ancestral / SDE noise amount (euler_ancestral, dpmpp_2m_sde); 1.0.
    pub eta: f32,
    /// Noise multiplier (euler_ancestral, dpmpp_2m_sde); 1.0.
    pub s_noise: f32,
    /// UniPC order, 1 to 3; 2.
    pub unipc_order: usize,
    /// UniPC B(h); bh2.
    pub unipc_variant: UniPcVariant,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self {
            eta: 1.0,
            s_noise: 1.0,
            unipc_order: 2,
            unipc_variant: UniPcVariant::Bh2,
        }
    }
}

/// An immutable sampling plan: which sampler, over which sigmas, for which model family.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    kind: SamplerKind,
    sampling: ModelSampling,
    sigmas: Vec<f32>,
    options: SamplerOptions,
}

impl SamplerConfig {
    /// A plan with default options. `sigmas` are the noise levels, decreasing, usually ending
    /// with 0 (from [`ModelSampling::sigmas`]); the latent is at `sigmas[0]` when sampling starts.
    pub fn new(
        kind: SamplerKind,
        sampling: ModelSampling,
        sigmas: Vec<f32>,
    ) -> Result<Self, SamplingError> {
        if sigmas.len() < 2 {
            return Err(SamplingError::InvalidSigmas {
                reason: format!("need at least 2 sigmas (one step), got {}", sigmas.len()),
            });
        }
        if let Some((i, s)) = sigmas
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s >= 0.0))
        {
            return Err(SamplingError::InvalidSigmas {
                reason: format!("sigma {i} is {s}; sigmas must be finite and >= 0"),
            });
        }
        if let Some(i) = sigmas.windows(2).position(|w| w[1] > w[0]) {
            return Err(SamplingError::InvalidSigmas {
                reason: format!(
                    "sigmas must not increase, but sigma {} = {} > sigma {} = {}",
                    i + 1,
                    sigmas[i + 1],
                    i,
                    sigmas[i]
                ),
            });
        }
        if sigmas[0] == 0.0 {
            return Err(SamplingError::InvalidSigmas {
                reason: "the first sigma is 0: nothing to denoise".to_owned(),
            });
        }
        Ok(Self {
            kind,
            sampling,
            sigmas,
            options: SamplerOptions::default(),
        })
    }

    /// Replaces the options (validated).
    pub fn with_options(mut self, options: SamplerOptions) -> Result<Self, SamplingError> {
        if !(options.eta.is_finite() && options.eta >= 0.0) {
            return Err(SamplingError::InvalidOption {
                reason: format!("eta must be finite and >= 0, got {}", options.eta),
            });
        }
        if !(options.s_noise.is_finite() && options.s_noise >= 0.0) {
            return Err(SamplingError::InvalidOption {
                reason: format!("s_noise must be finite and >= 0, got {}", options.s_noise),
            });
        }
        if !(1..=3).contains(&options.unipc_order) {
            return Err(SamplingError::InvalidOption {
                reason: format!("UniPC order must be 1, 2 or 3, got {}", options.unipc_order),
            });
        }
        self.options = options;
        Ok(self)
    }

    /// The sampler.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The model family's schedule.
    pub fn sampling(&self) -> &ModelSampling {
        &self.sampling
    }

    /// The sigma list.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The options.
    pub fn options(&self) -> &SamplerOptions {
        &self.options
    }

    /// Number of steps (`sigmas.len() - 1`).
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// How many denoiser calls a full run makes.
    pub fn model_evaluations(&self) -> usize {
        match self.kind {
            SamplerKind::Heun => self
                .sigmas
                .windows(2)
                .map(|w| if w[1] == 0.0 { 1 } else { 2 })
                .sum(),
            _ => self.steps(),
        }
    }

    /// Whether a run draws noise (and so needs a [`NoiseSource`]).
    pub fn needs_noise(&self) -> bool {
        let o = &self.options;
        match self.kind {
            // ComfyUI's discrete ancestral step draws noise even at eta 0 (and scales it by 0).
            SamplerKind::EulerAncestral => !self.sampling.is_flow() || o.eta > 0.0,
            SamplerKind::Dpmpp2mSde => o.eta > 0.0 && o.s_noise > 0.0,
            SamplerKind::Lcm => true,
            _ => false,
        }
    }

    /// Starts sampling the latent `x` (already at `sigmas[0]`, e.g. from
    /// [`Parameterization::noise_scaling`](super::Parameterization::noise_scaling)). A noise
    /// source is required when [`SamplerConfig::needs_noise`] and ignored otherwise.
    pub fn stepper<'a>(
        &'a self,
        x: Vec<f32>,
        noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    ) -> Result<Stepper<'a>, SamplingError> {
        if self.needs_noise() && noise.is_none() {
            return Err(SamplingError::NoiseRequired {
                sampler: self.kind.name(),
            });
        }
        let mut sigmas = self.sigmas.clone();
        if self.kind == SamplerKind::Dpmpp2mSde && self.sampling.is_flow() && sigmas[0] >= 1.0 {
            // ComfyUI offset_first_sigma_for_snr: logit(1) is infinite; the model is called
            // with the offset sigma too.
            sigmas[0] = self.sampling.percent_to_sigma(1e-4) as f32;
        }
        if self.kind == SamplerKind::UniPc
            && self.sampling.is_flow()
            && (f64::from(sigmas[0]) - 1.0).abs() < 1e-6
        {
            // diffusers' UniPC (use_flow_sigmas) nudges a first sigma of 1 to 1 - 1e-6:
            // log(alpha) = log(1 - sigma) would be -inf. The model is called with it too.
            sigmas[0] = (1.0f64 - 1e-6) as f32;
        }
        let state = match self.kind {
            SamplerKind::Dpmpp2m => State::Dpmpp2m { old: None },
            SamplerKind::Dpmpp2mSde => State::Dpmpp2mSde {
                old: None,
                h_last: None,
            },
            SamplerKind::UniPc => State::UniPc(UniPcState {
                history: VecDeque::with_capacity(self.options.unipc_order),
                last_sample: None,
                this_order: 1,
                lower_order_nums: 0,
            }),
            _ => State::Plain,
        };
        let n = x.len();
        Ok(Stepper {
            config: self,
            sigmas,
            x,
            denoised: Vec::new(),
            index: 0,
            noise,
            noise_buf: vec![0.0; if self.needs_noise() { n } else { 0 }],
            state,
        })
    }
}

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

struct UniPcState {
    /// (sigma index, x0 prediction), oldest first, at most `order` entries.
    history: VecDeque<(usize, Vec<f32>)>,
    /// The (corrected) sample the last predictor started from.
    last_sample: Option<Vec<f32>>,
    this_order: usize,
    lower_order_nums: usize,
}

enum State {
    Plain,
    Dpmpp2m {
        old: Option<Vec<f32>>,
    },
    Dpmpp2mSde {
        old: Option<Vec<f32>>,
        h_last: Option<f32>,
    },
    UniPc(UniPcState),
}

/// A sampling run in progress over one latent.
pub struct Stepper<'a> {
    config: &'a SamplerConfig,
    /// The sigmas actually used (dpmpp_2m_sde on flow offsets the first one).
    sigmas: Vec<f32>,
    x: Vec<f32>,
    denoised: Vec<f32>,
    index: usize,
    noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    noise_buf: Vec<f32>,
    state: State,
}

impl fmt::Debug for Stepper<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stepper")
            .field("sampler", &self.config.kind)
            .field("step", &self.index)
            .field("steps", &self.total_steps())
            .field("len", &self.x.len())
            .finish()
    }
}

fn eval<D: Denoiser>(
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

impl<'a> Stepper<'a> {
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
    /// by dpmpp_2m_sde (to `percent_to_sigma(1e-4)`, as ComfyUI) and by uni_pc (to 1 - 1e-6, as
    /// diffusers).
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

    fn draw_noise(&mut self, sigma: f32, sigma_next: f32) {
        if let Some(src) = self.noise.as_mut() {
            src.fill_noise(sigma, sigma_next, &mut self.noise_buf);
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
        let o = self.config.options;
        let flow = self.config.sampling.is_flow();
        let mut evals = 1;
        let den = eval(model, &self.x, s, i)?;
        match self.config.kind {
            SamplerKind::Euler => {
                let dt = sn - s;
                for (x, &d) in self.x.iter_mut().zip(&den) {
                    let deriv = (*x - d) / s;
                    *x += deriv * dt;
                }
            }
            SamplerKind::Heun => {
                let dt = sn - s;
                let d1: Vec<f32> = self
                    .x
                    .iter()
                    .zip(&den)
                    .map(|(&x, &d)| (x - d) / s)
                    .collect();
                if sn == 0.0 {
                    for (x, &d) in self.x.iter_mut().zip(&d1) {
                        *x += d * dt;
                    }
                } else {
                    let x2: Vec<f32> = self.x.iter().zip(&d1).map(|(&x, &d)| x + d * dt).collect();
                    let den2 = eval(model, &x2, sn, i)?;
                    evals = 2;
                    for (((x, &da), &x2v), &dn2) in self.x.iter_mut().zip(&d1).zip(&x2).zip(&den2) {
                        let db = (x2v - dn2) / sn;
                        let dp = (da + db) / 2.0;
                        *x += dp * dt;
                    }
                }
            }
            SamplerKind::EulerAncestral if flow => {
                if sn == 0.0 {
                    self.x.copy_from_slice(&den);
                } else {
                    let eta = o.eta;
                    let ratio = 1.0 + (sn / s - 1.0) * eta;
                    let sd = sn * ratio;
                    let a_ip1 = 1.0 - sn;
                    let a_down = 1.0 - sd;
                    let renoise = (sn * sn - sd * sd * (a_ip1 * a_ip1) / (a_down * a_down)).sqrt();
                    let r = sd / s;
                    let one_minus_r = 1.0 - r;
                    for (x, &d) in self.x.iter_mut().zip(&den) {
                        *x = r * *x + one_minus_r * d;
                    }
                    if eta > 0.0 {
                        self.draw_noise(s, sn);
                        let k = a_ip1 / a_down;
                        for (x, &n) in self.x.iter_mut().zip(&self.noise_buf) {
                            *x = k * *x + n * o.s_noise * renoise;
                        }
                    }
                }
            }
            SamplerKind::EulerAncestral => {
                let (sd, su) = ancestral_step(s, sn, o.eta);
                if sd == 0.0 {
                    self.x.copy_from_slice(&den);
                } else {
                    let dt = sd - s;
                    self.draw_noise(s, sn);
                    for ((x, &d), &n) in self.x.iter_mut().zip(&den).zip(&self.noise_buf) {
                        let deriv = (*x - d) / s;
                        *x = *x + deriv * dt + n * o.s_noise * su;
                    }
                }
            }
            SamplerKind::Dpmpp2m => {
                let t = -s.ln();
                let t_next = -sn.ln();
                let h = t_next - t;
                let ratio = (-t_next).exp() / (-t).exp();
                let c = (-h).exp_m1();
                let prev = if i > 0 {
                    Some(self.sigmas[i - 1])
                } else {
                    None
                };
                let State::Dpmpp2m { old } = &mut self.state else {
                    unreachable!("state matches the sampler kind")
                };
                match (old.as_ref(), prev) {
                    (Some(old_den), Some(sp)) if sn != 0.0 => {
                        let h_last = t - (-sp.ln());
                        let r = h_last / h;
                        let a = 1.0 + 1.0 / (2.0 * r);
                        let b = 1.0 / (2.0 * r);
                        for ((x, &d), &od) in self.x.iter_mut().zip(&den).zip(old_den) {
                            let dd = a * d - b * od;
                            *x = ratio * *x - c * dd;
                        }
                    }
                    _ => {
                        for (x, &d) in self.x.iter_mut().zip(&den) {
                            *x = ratio * *x - c * d;
                        }
                    }
                }
                *old = Some(den.clone());
            }
            SamplerKind::Dpmpp2mSde => {
                let State::Dpmpp2mSde { old, h_last } = &mut self.state else {
                    unreachable!("state matches the sampler kind")
                };
                let mut h_now = *h_last;
                if sn == 0.0 {
                    self.x.copy_from_slice(&den);
                } else {
                    let lambda = |v: f32| -> f32 {
                        if flow {
                            -(v / (1.0 - v)).ln()
                        } else {
                            -v.ln()
                        }
                    };
                    let eta = o.eta;
                    let ls = lambda(s);
                    let lt = lambda(sn);
                    let h = lt - ls;
                    let h_eta = h * (eta + 1.0);
                    let alpha_t = sn * lt.exp();
                    let neg_expm1 = -(-h_eta).exp_m1();
                    let k_x = sn / s * (-h * eta).exp();
                    let k_d = alpha_t * neg_expm1;
                    for (x, &d) in self.x.iter_mut().zip(&den) {
                        *x = k_x * *x + k_d * d;
                    }
                    if let (Some(old_den), Some(hl)) = (old.as_ref(), *h_last) {
                        let r = hl / h;
                        let k = 0.5 * alpha_t * neg_expm1 * (1.0 / r);
                        for ((x, &d), &od) in self.x.iter_mut().zip(&den).zip(old_den) {
                            *x += k * (d - od);
                        }
                    }
                    h_now = Some(h);
                    if eta > 0.0 && o.s_noise > 0.0 {
                        let k_n = (-(-2.0 * h * eta).exp_m1()).sqrt();
                        if let Some(src) = self.noise.as_mut() {
                            src.fill_noise(s, sn, &mut self.noise_buf);
                        }
                        for (x, &n) in self.x.iter_mut().zip(&self.noise_buf) {
                            *x += n * sn * k_n * o.s_noise;
                        }
                    }
                }
                *old = Some(den.clone());
                *h_last = h_now;
            }
            SamplerKind::Lcm => {
                self.x.copy_from_slice(&den);
                if sn > 0.0 {
                    self.draw_noise(s, sn);
                    if flow {
                        let one_minus = 1.0 - sn;
                        for (x, &n) in self.x.iter_mut().zip(&self.noise_buf) {
                            *x = sn * n + one_minus * *x;
                        }
                    } else {
                        for (x, &n) in self.x.iter_mut().zip(&self.noise_buf) {
                            *x += n * sn;
                        }
                    }
                }
            }
            SamplerKind::UniPc => {
                let State::UniPc(st) = &mut self.state else {
                    unreachable!("state matches the sampler kind")
                };
                unipc_step(st, &self.sigmas, i, flow, &o, &mut self.x, &den, total)?;
            }
        }
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

/// k-diffusion `get_ancestral_step` on float32 scalars: `(sigma_down, sigma_up)`.
fn ancestral_step(from: f32, to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (to, 0.0);
    }
    let cand = eta * (to * to * (from * from - to * to) / (from * from)).sqrt();
    // Python `min(to, cand)`: `to` unless `cand < to`.
    let up = if cand < to { cand } else { to };
    let down = (to * to - up * up).sqrt();
    (down, up)
}

/// UniPC `(alpha_t, sigma_t)` of a sigma: flow `(1 - s, s)`; discrete models in the
/// variance-exploding parameterisation the samplers use, `(1, s)` (equivalent to diffusers'
/// variance-preserving `(1/sqrt(1+s^2), s/sqrt(1+s^2))` after rescaling the sample).
fn unipc_alpha_sigma(flow: bool, s: f32) -> (f32, f32) {
    if flow {
        (1.0 - s, s)
    } else {
        (1.0, s)
    }
}

fn unipc_lambda(flow: bool, s: f32) -> f32 {
    let (a, sg) = unipc_alpha_sigma(flow, s);
    a.ln() - sg.ln()
}

/// `R` (rows `rks^(j-1)`) and `b` of diffusers' B(h) update, plus `h_phi_1` and `B(h)`.
fn unipc_system(
    rks: &[f32],
    hh: f32,
    variant: UniPcVariant,
) -> (Vec<Vec<f32>>, Vec<f32>, f32, f32) {
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0f32;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let order = rks.len();
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for j in 1..=order {
        r.push(
            rks.iter()
                .map(|&v| v.powi(j as i32 - 1))
                .collect::<Vec<f32>>(),
        );
        b.push(h_phi_k * factorial / b_h);
        factorial *= (j + 1) as f32;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (r, b, h_phi_1, b_h)
}

/// Solves the small dense system `a x = b` (Gaussian elimination, partial pivoting, in f64).
fn solve(a: &[Vec<f32>], b: &[f32]) -> Option<Vec<f32>> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .take(n)
        .zip(b)
        .map(|(row, &bi)| {
            row.iter()
                .take(n)
                .map(|&v| f64::from(v))
                .chain(std::iter::once(f64::from(bi)))
                .collect()
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs()))?;
        if m[pivot][col] == 0.0 || !m[pivot][col].is_finite() {
            return None;
        }
        m.swap(col, pivot);
        let (top, bottom) = m.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for row in bottom.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (r, &p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *r -= f * p;
            }
        }
    }
    let mut x = vec![0.0f64; n];
    for row in (0..n).rev() {
        let mut acc = m[row][n];
        for k in row + 1..n {
            acc -= m[row][k] * x[k];
        }
        x[row] = acc / m[row][row];
    }
    Some(x.into_iter().map(|v| v as f32).collect())
}

fn singular() -> SamplingError {
    SamplingError::InvalidSigmas {
        reason: "UniPC: singular coefficient system (repeated sigmas?)".to_owned(),
    }
}

/// One UniPC step at sigma index `i` (diffusers' `step`): corrector on the current sample with
/// the new model output, then the predictor to `sigmas[i + 1]`.
#[allow(clippy::too_many_arguments)]
fn unipc_step(
    st: &mut UniPcState,
    sigmas: &[f32],
    i: usize,
    flow: bool,
    o: &SamplerOptions,
    x: &mut [f32],
    model_t: &[f32],
    total: usize,
) -> Result<(), SamplingError> {
    let order = o.unipc_order;
    let variant = o.unipc_variant;

    // Corrector (UniC): x_i from x_{i-1} (last_sample), using the model output at the
    // predicted x_i.
    if i > 0 {
        if let (Some(last), Some((_, m0))) = (st.last_sample.as_ref(), st.history.back()) {
            let p = st.this_order;
            let (sigma_t, sigma_s0) = (sigmas[i], sigmas[i - 1]);
            let (alpha_t, sg_t) = unipc_alpha_sigma(flow, sigma_t);
            let (_, sg_s0) = unipc_alpha_sigma(flow, sigma_s0);
            let lambda_t = unipc_lambda(flow, sigma_t);
            let lambda_s0 = unipc_lambda(flow, sigma_s0);
            let h = lambda_t - lambda_s0;
            let mut rks = Vec::with_capacity(p);
            let mut d1s: Vec<Vec<f32>> = Vec::with_capacity(p);
            for k in 1..p {
                let (si, mk) = &st.history[st.history.len() - 1 - k];
                let rk = (unipc_lambda(flow, sigmas[*si]) - lambda_s0) / h;
                rks.push(rk);
                d1s.push(mk.iter().zip(m0).map(|(&a, &b)| (a - b) / rk).collect());
            }
            rks.push(1.0);
            let hh = -h;
            let (r, b, h_phi_1, b_h) = unipc_system(&rks, hh, variant);
            let rhos_c = if p == 1 {
                vec![0.5]
            } else {
                solve(&r, &b).ok_or_else(singular)?
            };
            let c1 = sg_t / sg_s0;
            let c2 = alpha_t * h_phi_1;
            let c3 = alpha_t * b_h;
            let rho_last = rhos_c[p - 1];
            for (k, xo) in x.iter_mut().enumerate() {
                let x_t_ = c1 * last[k] - c2 * m0[k];
                let mut corr = 0.0f32;
                for (j, d) in d1s.iter().enumerate() {
                    corr = if j == 0 {
                        rhos_c[0] * d[k]
                    } else {
                        corr + rhos_c[j] * d[k]
                    };
                }
                let d1_t = model_t[k] - m0[k];
                let inner = if d1s.is_empty() {
                    rho_last * d1_t
                } else {
                    corr + rho_last * d1_t
                };
                *xo = x_t_ - c3 * inner;
            }
        }
    }

    // Push the new model output.
    if st.history.len() == order {
        st.history.pop_front();
    }
    st.history.push_back((i, model_t.to_vec()));

    let this_order = order.min(total - i).min(st.lower_order_nums + 1);
    st.this_order = this_order;
    st.last_sample = Some(x.to_vec());

    // Predictor (UniP) from sigma_i to sigma_{i+1}.
    let (sigma_t, sigma_s0) = (sigmas[i + 1], sigmas[i]);
    let m0 = &st.history[st.history.len() - 1].1;
    let (alpha_t, sg_t) = unipc_alpha_sigma(flow, sigma_t);
    let (_, sg_s0) = unipc_alpha_sigma(flow, sigma_s0);
    let lambda_t = unipc_lambda(flow, sigma_t);
    let lambda_s0 = unipc_lambda(flow, sigma_s0);
    let h = lambda_t - lambda_s0;
    let p = this_order;
    let mut rks = Vec::with_capacity(p);
    let mut d1s: Vec<Vec<f32>> = Vec::with_capacity(p);
    for k in 1..p {
        let (si, mk) = &st.history[st.history.len() - 1 - k];
        let rk = (unipc_lambda(flow, sigmas[*si]) - lambda_s0) / h;
        rks.push(rk);
        d1s.push(mk.iter().zip(m0).map(|(&a, &b)| (a - b) / rk).collect());
    }
    rks.push(1.0);
    let hh = -h;
    let (r, b, h_phi_1, b_h) = unipc_system(&rks, hh, variant);
    let rhos_p = if d1s.is_empty() {
        Vec::new()
    } else if p == 2 {
        vec![0.5]
    } else {
        let sub_r: Vec<Vec<f32>> = r[..p - 1].iter().map(|row| row[..p - 1].to_vec()).collect();
        solve(&sub_r, &b[..p - 1]).ok_or_else(singular)?
    };
    let c1 = sg_t / sg_s0;
    let c2 = alpha_t * h_phi_1;
    let c3 = alpha_t * b_h;
    if sigma_t == 0.0 && d1s.is_empty() {
        // The last step to sigma 0 (order 1): exactly the prediction. diffusers gets the same
        // value with bh2 and NaN with bh1 (B(h) = -inf times a zero residual).
        x.copy_from_slice(m0);
    } else {
        for (k, xo) in x.iter_mut().enumerate() {
            let x_t_ = c1 * *xo - c2 * m0[k];
            if d1s.is_empty() {
                *xo = x_t_;
            } else {
                let mut res = 0.0f32;
                for (j, d) in d1s.iter().enumerate() {
                    res = if j == 0 {
                        rhos_p[0] * d[k]
                    } else {
                        res + rhos_p[j] * d[k]
                    };
                }
                *xo = x_t_ - c3 * res;
            }
        }
    }
    st.lower_order_nums = (st.lower_order_nums + 1).min(order);
    Ok(())
}

/// Runs every step of `config` from latent `x`, calling `callback` after each step, and
/// returns the final latent.
pub fn sample<'a, D: Denoiser>(
    config: &'a SamplerConfig,
    x: Vec<f32>,
    noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    model: &mut D,
    mut callback: impl FnMut(&StepView<'_>),
) -> Result<Vec<f32>, StepError<D::Error>> {
    let mut stepper = config.stepper(x, noise)?;
    while !stepper.is_finished() {
        let report = stepper.step(model)?;
        callback(&stepper.view(report));
    }
    Ok(stepper.into_x())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::schedule::{DiscreteSchedule, FlowSchedule, Scheduler};
    use std::convert::Infallible;

    fn perfect(target: Vec<f32>) -> impl Denoiser<Error = Infallible> {
        FnDenoiser(move |_x: &[f32], _s: f32| Ok(target.clone()))
    }

    #[test]
    fn steppers_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Stepper<'static>>();
        assert_send::<SamplerConfig>();
    }

    #[test]
    fn names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
        }
        assert!("euler_a".parse::<SamplerKind>().is_err());
    }

    #[test]
    fn a_perfect_denoiser_lands_on_its_target() {
        // With a denoiser that always predicts the same x0, every deterministic sampler ends
        // exactly (up to rounding) on it.
        let target = vec![0.5f32, -1.0, 2.0, 0.0];
        for ms in [
            ModelSampling::Discrete(DiscreteSchedule::sdxl()),
            ModelSampling::Flow(FlowSchedule::wan_480p()),
        ] {
            let sigmas = ms.sigmas(Scheduler::Normal, 8).unwrap();
            let x0 = vec![3.0f32, 1.0, -2.0, 4.0];
            for kind in [
                SamplerKind::Euler,
                SamplerKind::Heun,
                SamplerKind::Dpmpp2m,
                SamplerKind::UniPc,
            ] {
                let cfg = SamplerConfig::new(kind, ms.clone(), sigmas.clone()).unwrap();
                let out =
                    sample(&cfg, x0.clone(), None, &mut perfect(target.clone()), |_| {}).unwrap();
                for (a, b) in out.iter().zip(&target) {
                    assert!((a - b).abs() < 1e-4, "{kind} {a} {b}");
                }
            }
        }
    }

    #[test]
    fn stochastic_samplers_need_noise() {
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Karras, 3).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::EulerAncestral, ms, sigmas).unwrap();
        assert!(matches!(
            cfg.stepper(vec![0.0; 4], None),
            Err(SamplingError::NoiseRequired { .. })
        ));
    }

    #[test]
    fn callback_sees_every_step_and_heun_counts_evaluations() {
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Karras, 5).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::Heun, ms, sigmas).unwrap();
        assert_eq!(cfg.model_evaluations(), 9);
        let mut calls = 0usize;
        let mut model = FnDenoiser(|x: &[f32], _s: f32| {
            calls += 1;
            Ok::<_, Infallible>(vec![0.0; x.len()])
        });
        let mut seen = Vec::new();
        sample(&cfg, vec![1.0; 3], None, &mut model, |v| {
            seen.push((v.report.step, v.report.model_evaluations))
        })
        .unwrap();
        assert_eq!(calls, 9);
        assert_eq!(seen, vec![(0, 2), (1, 2), (2, 2), (3, 2), (4, 1)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ms = ModelSampling::Flow(FlowSchedule::wan_480p());
        for bad in [
            vec![1.0],
            vec![1.0, 2.0],
            vec![1.0, f32::NAN],
            vec![0.0, 0.0],
            vec![1.0, -0.5],
        ] {
            assert!(SamplerConfig::new(SamplerKind::Euler, ms.clone(), bad).is_err());
        }
        let cfg = SamplerConfig::new(SamplerKind::Euler, ms.clone(), vec![1.0, 0.0]).unwrap();
        let opts = SamplerOptions {
            unipc_order: 4,
            ..SamplerOptions::default()
        };
        assert!(cfg.clone().with_options(opts).is_err());
        // A denoiser returning the wrong length.
        let mut st = cfg.stepper(vec![0.0; 4], None).unwrap();
        let mut short = FnDenoiser(|_x: &[f32], _s: f32| Ok::<_, Infallible>(vec![0.0; 3]));
        assert!(matches!(
            st.step(&mut short),
            Err(StepError::Sampling(SamplingError::LengthMismatch { .. }))
        ));
        // Stepping past the end.
        let mut st = cfg.stepper(vec![0.0; 4], None).unwrap();
        let mut ok = FnDenoiser(|x: &[f32], _s: f32| Ok::<_, Infallible>(x.to_vec()));
        st.step(&mut ok).unwrap();
        assert!(st.is_finished());
        assert!(matches!(
            st.step(&mut ok),
            Err(StepError::Sampling(SamplingError::Finished { steps: 1 }))
        ));
    }

    #[test]
    fn denoiser_errors_carry_the_step() {
        #[derive(Debug, thiserror::Error)]
        #[error("boom")]
        struct Boom;
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Simple, 2).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::Euler, ms, sigmas.clone()).unwrap();
        let mut n = 0;
        let mut model = FnDenoiser(|x: &[f32], _s: f32| {
            n += 1;
            if n == 2 {
                Err(Boom)
            } else {
                Ok(x.to_vec())
            }
        });
        let err = sample(&cfg, vec![0.0; 2], None, &mut model, |_| {}).unwrap_err();
        match err {
            StepError::Denoiser { step, sigma, .. } => {
                assert_eq!(step, 1);
                assert_eq!(sigma, sigmas[1]);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn solve_small_systems() {
        let a = vec![vec![1.0, 1.0], vec![0.5, 1.0]];
        let x = solve(&a, &[3.0, 2.0]).unwrap();
        assert!((x[0] - 2.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6);
        assert!(solve(&[vec![0.0, 0.0], vec![0.0, 0.0]], &[1.0, 1.0]).is_none());
    }

    #[test]
    fn sde_noise_statistics() {
        // dpmpp_2m_sde with a zero denoiser: after one step from sigma s to sn the latent is
        // sn/s e^{-h} x + sn sqrt(1 - e^{-2h}) z; check the noise part's variance.
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let (s, sn) = (2.0f32, 1.0f32);
        let cfg = SamplerConfig::new(SamplerKind::Dpmpp2mSde, ms, vec![s, sn, 0.0]).unwrap();
        let n = 100_000;
        let mut st = cfg
            .stepper(vec![0.0; n], Some(Box::new(TorchGenerator::new(5))))
            .unwrap();
        let mut zero = FnDenoiser(|x: &[f32], _s: f32| Ok::<_, Infallible>(vec![0.0; x.len()]));
        st.step(&mut zero).unwrap();
        let h = (s / sn).ln();
        let expect_var = f64::from(sn * sn * (1.0 - (-2.0 * h).exp()));
        let v = st.x();
        let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&a| (f64::from(a) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!(
            (var / expect_var - 1.0).abs() < 0.02,
            "{var} vs {expect_var}"
        );
    }
}
