//! Noise schedules ("model sampling") and the sigma lists ComfyUI's schedulers build from them.
//!
//! Two model families:
//! * [`DiscreteSchedule`]: SDXL's 1000 training steps with scaled-linear betas
//!   (`ModelSamplingDiscrete`), sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod), eps- or
//!   v-prediction.
//! * [`FlowSchedule`]: Wan's rectified flow (`ModelSamplingDiscreteFlow`, `CONST`):
//!   sigma(t) = shift t / (1 + (shift - 1) t), model timestep = 1000 sigma.
//!
//! Schedulers ([`Scheduler`], `comfy.samplers.calculate_sigmas`): normal, karras, exponential,
//! simple, sgm_uniform, ddim_uniform, beta, linear_quadratic, kl_optimal.
//!
//! The arithmetic follows ComfyUI's tensor code operation by operation, in float32 where ComfyUI
//! uses float32 tensors (and float64 where it uses Python floats), so the lists agree with
//! ComfyUI's to the last bit or within one ulp (see `tests/sampling_reference.rs`).

use std::fmt;
use std::str::FromStr;

use super::param::Parameterization;
use super::special::beta_ppf;
use super::SamplingError;

/// `torch.linspace(start, end, steps)` for float32 on the CPU (the kernel computes
/// `start + step * i` for the first half and `end - step * (steps - i - 1)` for the rest, both
/// as fused multiply-adds).
pub fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f32;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f32, start)
                    } else {
                        (-step).mul_add((steps - i - 1) as f32, end)
                    }
                })
                .collect()
        }
    }
}

/// `torch.linspace(start, end, steps, dtype=torch.float64)` on the CPU.
pub fn torch_linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    match steps {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (end - start) / (steps - 1) as f64;
            let halfway = steps / 2;
            (0..steps)
                .map(|i| {
                    if i < halfway {
                        step.mul_add(i as f64, start)
                    } else {
                        (-step).mul_add((steps - i - 1) as f64, end)
                    }
                })
                .collect()
        }
    }
}

/// The discrete (DDPM-style) schedule of SDXL and SD1.x: a table of 1000 sigmas, one per
/// training timestep, ascending (index 0 = least noise).
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteSchedule {
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
    v_prediction: bool,
}

impl DiscreteSchedule {
    /// SDXL: 1000 scaled-linear betas from 0.00085 to 0.012, eps-prediction.
    pub fn sdxl() -> Self {
        // Constant, valid arguments: cannot fail.
        Self::build(0.00085, 0.012, 1000)
    }

    /// A scaled-linear beta schedule (`betas = linspace(sqrt(start), sqrt(end), n)^2`, ComfyUI's
    /// "linear"), eps-prediction.
    pub fn scaled_linear(
        beta_start: f64,
        beta_end: f64,
        timesteps: usize,
    ) -> Result<Self, SamplingError> {
        let ok = beta_start.is_finite()
            && beta_end.is_finite()
            && beta_start > 0.0
            && beta_end >= beta_start
            && beta_end < 1.0
            && timesteps >= 2;
        if !ok {
            return Err(SamplingError::InvalidSchedule {
                reason: format!(
                    "scaled-linear betas need 0 < start <= end < 1 and at least 2 timesteps \
                     (got start {beta_start}, end {beta_end}, {timesteps} timesteps)"
                ),
            });
        }
        Ok(Self::build(beta_start, beta_end, timesteps))
    }

    fn build(beta_start: f64, beta_end: f64, timesteps: usize) -> Self {
        Self::from_sigmas(&Self::sigmas_f64(beta_start, beta_end, timesteps))
    }

    /// The float64 sigma table of a scaled-linear schedule (before ComfyUI's `.float()`).
    fn sigmas_f64(beta_start: f64, beta_end: f64, timesteps: usize) -> Vec<f64> {
        // comfy/ldm/modules/diffusionmodules/util.py make_beta_schedule("linear"), in float64.
        let roots = torch_linspace_f64(beta_start.powf(0.5), beta_end.powf(0.5), timesteps);
        let mut cumprod = 1.0f64;
        roots
            .into_iter()
            .map(|r| {
                cumprod *= 1.0 - r * r;
                ((1.0 - cumprod) / cumprod).sqrt()
            })
            .collect()
    }

    fn from_sigmas(sigmas: &[f64]) -> Self {
        Self {
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
            log_sigmas: sigmas.iter().map(|&s| s.ln() as f32).collect(),
            v_prediction: false,
        }
    }

    /// SDXL rescaled to zero terminal SNR (ComfyUI's `zsnr`, set by a `ztsnr` key next to
    /// `v_pred` in NoobAI-style checkpoints; Lin et al. 2023): `sqrt(alphas_cumprod)` shifted so
    /// the last timestep is 0 and scaled so the first keeps its value, the last alphas_cumprod
    /// then set to 4.8973451890853435e-08 (sigma_max ~4518.9 instead of 14.6), in float64 as
    /// `rescale_zero_terminal_snr_sigmas` (comfy/model_sampling.py) does. v-prediction is kept
    /// as it is (ComfyUI applies zsnr to v-prediction models only).
    pub fn sdxl_zero_terminal_snr() -> Self {
        let sigmas = Self::sigmas_f64(0.00085, 0.012, 1000);
        let sqrt_ac: Vec<f64> = sigmas
            .iter()
            .map(|s| (1.0 / (s * s + 1.0)).sqrt())
            .collect();
        let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
        let scale = first / (first - last);
        let n = sqrt_ac.len();
        let rescaled: Vec<f64> = sqrt_ac
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let ac = if i + 1 == n {
                    4.897_345_189_085_343_5e-8
                } else {
                    let a = (a - last) * scale;
                    a * a
                };
                ((1.0 - ac) / ac).sqrt()
            })
            .collect();
        Self::from_sigmas(&rescaled)
    }

    /// Marks the model as v-prediction (Illustrious/NoobAI v-pred checkpoints).
    pub fn with_v_prediction(mut self, v_prediction: bool) -> Self {
        self.v_prediction = v_prediction;
        self
    }

    /// Whether the model predicts v (else eps).
    pub fn is_v_prediction(&self) -> bool {
        self.v_prediction
    }

    /// The model output's parameterisation.
    pub fn parameterization(&self) -> Parameterization {
        if self.v_prediction {
            Parameterization::V
        } else {
            Parameterization::Eps
        }
    }

    /// The sigma table, ascending, indexed by training timestep.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `log(sigma)` per timestep (computed in float64, stored as float32, as ComfyUI does).
    pub fn log_sigmas(&self) -> &[f32] {
        &self.log_sigmas
    }

    /// The smallest sigma (timestep 0).
    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    /// The largest sigma (last timestep; 14.6146 for SDXL).
    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// ComfyUI `ModelSamplingDiscrete.timestep`: the timestep whose log-sigma is nearest to
    /// `log(sigma)` (first one on ties). This integer is what the UNet receives.
    pub fn sigma_to_timestep(&self, sigma: f32) -> usize {
        let ls = sigma.ln();
        let mut best = 0;
        let mut best_d = f32::INFINITY;
        for (i, &l) in self.log_sigmas.iter().enumerate() {
            let d = (ls - l).abs();
            if d < best_d {
                best_d = d;
                best = i;
            }
        }
        best
    }

    /// ComfyUI `ModelSamplingDiscrete.sigma`: log-linear interpolation of the table at a
    /// (fractional) timestep, clamped to the table.
    pub fn timestep_to_sigma(&self, timestep: f32) -> f32 {
        let last = (self.sigmas.len() - 1) as f32;
        let t = if timestep.is_nan() {
            timestep
        } else {
            timestep.clamp(0.0, last)
        };
        let low = t.floor();
        let high = t.ceil();
        let w = t - t.trunc();
        let (li, hi) = (low as usize, high as usize);
        let (Some(&l), Some(&h)) = (self.log_sigmas.get(li), self.log_sigmas.get(hi)) else {
            return f32::NAN;
        };
        ((1.0 - w) * l + w * h).exp()
    }

    /// ComfyUI `percent_to_sigma` (start/end percentages of a schedule): 1e9 for `percent <= 0`,
    /// 0 for `percent >= 1`.
    pub fn percent_to_sigma(&self, percent: f64) -> f32 {
        if percent <= 0.0 {
            return 999_999_999.9;
        }
        if percent >= 1.0 {
            return 0.0;
        }
        self.timestep_to_sigma(((1.0 - percent) * 999.0) as f32)
    }
}

/// `time_snr_shift(alpha, t)` on a float32 value, as ComfyUI evaluates it on tensors.
fn time_snr_shift_f32(shift: f64, t: f32) -> f32 {
    if shift == 1.0 {
        return t;
    }
    let a = shift as f32;
    let am1 = (shift - 1.0) as f32;
    a * t / (1.0 + am1 * t)
}

/// `time_snr_shift(alpha, t)` on Python floats.
fn time_snr_shift_f64(shift: f64, t: f64) -> f64 {
    if shift == 1.0 {
        return t;
    }
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// Wan's flow-matching schedule (`ModelSamplingDiscreteFlow` with multiplier 1000):
/// `sigma(t) = shift * t / (1 + (shift - 1) * t)` for `t` in (0, 1], model timestep = 1000 sigma.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSchedule {
    shift: f64,
    sigmas: Vec<f32>,
}

impl FlowSchedule {
    /// Number of table entries and the timestep multiplier (ComfyUI defaults).
    const TIMESTEPS: usize = 1000;
    const MULTIPLIER: f32 = 1000.0;

    /// A flow schedule with the given shift (Wan 2.1 480p: 3.0, 720p: 5.0; ComfyUI's Wan
    /// default without a ModelSamplingSD3 node: 8.0).
    pub fn new(shift: f64) -> Result<Self, SamplingError> {
        if !(shift.is_finite() && shift > 0.0) {
            return Err(SamplingError::InvalidSchedule {
                reason: format!("flow shift must be finite and > 0, got {shift}"),
            });
        }
        // ts = sigma((arange(1, 1001) / 1000) * 1000), all float32.
        let sigmas = (1..=Self::TIMESTEPS)
            .map(|i| {
                let t = (i as f32 / Self::TIMESTEPS as f32) * Self::MULTIPLIER;
                time_snr_shift_f32(shift, t / Self::MULTIPLIER)
            })
            .collect();
        Ok(Self { shift, sigmas })
    }

    /// Wan 2.1 at 480p (shift 3.0).
    pub fn wan_480p() -> Self {
        Self::new(3.0).unwrap_or_else(|_| unreachable!("3.0 is a valid shift"))
    }

    /// Wan 2.1 at 720p (shift 5.0).
    pub fn wan_720p() -> Self {
        Self::new(5.0).unwrap_or_else(|_| unreachable!("5.0 is a valid shift"))
    }

    /// The shift.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// The 1000-entry sigma table, ascending.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The smallest table sigma (shifted 0.001).
    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    /// The largest table sigma (1.0).
    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// Model timestep for a sigma: `sigma * 1000`.
    pub fn sigma_to_timestep(&self, sigma: f32) -> f32 {
        sigma * Self::MULTIPLIER
    }

    /// Sigma for a model timestep: `time_snr_shift(shift, timestep / 1000)`.
    pub fn timestep_to_sigma(&self, timestep: f32) -> f32 {
        time_snr_shift_f32(self.shift, timestep / Self::MULTIPLIER)
    }

    /// ComfyUI `percent_to_sigma`: 1 for `percent <= 0`, 0 for `percent >= 1`.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        if percent <= 0.0 {
            return 1.0;
        }
        if percent >= 1.0 {
            return 0.0;
        }
        time_snr_shift_f64(self.shift, 1.0 - percent)
    }

    /// The sigmas of the official Wan 2.1 sampler (`FlowUniPCMultistepScheduler.set_timesteps`
    /// in wan/utils/fm_solvers_unipc.py): `linspace(0.999, 0, steps + 1)[:-1]` shifted, then 0.
    /// The official pipeline feeds the model `trunc(1000 sigma)` (see
    /// [`FlowSchedule::wan_official_timesteps`]).
    pub fn wan_official_sigmas(&self, steps: usize) -> Result<Vec<f32>, SamplingError> {
        Ok(self
            .wan_official_f64(steps)?
            .into_iter()
            .map(|s| s as f32)
            .chain(std::iter::once(0.0))
            .collect())
    }

    /// The integer timesteps the official Wan 2.1 pipeline passes to the DiT, one per step.
    pub fn wan_official_timesteps(&self, steps: usize) -> Result<Vec<i64>, SamplingError> {
        Ok(self
            .wan_official_f64(steps)?
            .into_iter()
            .map(|s| (s * 1000.0) as i64)
            .collect())
    }

    fn wan_official_f64(&self, steps: usize) -> Result<Vec<f64>, SamplingError> {
        if steps == 0 {
            return Err(SamplingError::ZeroSteps);
        }
        // The training table is built with shift 1: sigma_max = f32(1 - 1/1000), sigma_min = 0.
        let sigma_max = f64::from((1.0f64 - 1.0 / 1000.0) as f32);
        let sigma_min = 0.0f64;
        // numpy.linspace: i * step + start (two roundings).
        let step = (sigma_min - sigma_max) / steps as f64;
        let shift = self.shift;
        Ok((0..steps)
            .map(|i| {
                let s = i as f64 * step + sigma_max;
                shift * s / (1.0 + (shift - 1.0) * s)
            })
            .collect())
    }
}

/// A model's noise schedule: what the schedulers and samplers need to know about it.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSampling {
    /// SDXL-style discrete schedule (eps or v prediction).
    Discrete(DiscreteSchedule),
    /// Wan-style rectified flow.
    Flow(FlowSchedule),
}

impl ModelSampling {
    /// How to turn the network output into a denoised latent.
    pub fn parameterization(&self) -> Parameterization {
        match self {
            Self::Discrete(d) => d.parameterization(),
            Self::Flow(_) => Parameterization::Flow,
        }
    }

    /// Whether this is a flow model (ComfyUI's `CONST`).
    pub fn is_flow(&self) -> bool {
        matches!(self, Self::Flow(_))
    }

    /// The smallest sigma of the table.
    pub fn sigma_min(&self) -> f32 {
        match self {
            Self::Discrete(d) => d.sigma_min(),
            Self::Flow(f) => f.sigma_min(),
        }
    }

    /// The largest sigma of the table.
    pub fn sigma_max(&self) -> f32 {
        match self {
            Self::Discrete(d) => d.sigma_max(),
            Self::Flow(f) => f.sigma_max(),
        }
    }

    /// The timestep value the network receives for `sigma` (discrete: nearest table index;
    /// flow: `1000 sigma`).
    pub fn timestep(&self, sigma: f32) -> f32 {
        match self {
            Self::Discrete(d) => d.sigma_to_timestep(sigma) as f32,
            Self::Flow(f) => f.sigma_to_timestep(sigma),
        }
    }

    /// Sigma at a model timestep (inverse of [`ModelSampling::timestep`]).
    pub fn sigma(&self, timestep: f32) -> f32 {
        match self {
            Self::Discrete(d) => d.timestep_to_sigma(timestep),
            Self::Flow(f) => f.timestep_to_sigma(timestep),
        }
    }

    /// ComfyUI `percent_to_sigma`.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        match self {
            Self::Discrete(d) => f64::from(d.percent_to_sigma(percent)),
            Self::Flow(f) => f.percent_to_sigma(percent),
        }
    }

    fn table_len(&self) -> usize {
        match self {
            Self::Discrete(d) => d.sigmas().len(),
            Self::Flow(f) => f.sigmas().len(),
        }
    }

    fn table(&self, i: usize) -> f32 {
        match self {
            Self::Discrete(d) => d.sigmas()[i],
            Self::Flow(f) => f.sigmas()[i],
        }
    }

    /// The sigma list of `steps` steps for a ComfyUI scheduler (`comfy.samplers.calculate_sigmas`),
    /// ending with 0.0: `steps + 1` values, except for `beta`, which drops repeated timesteps
    /// (fewer values for many steps), and `ddim_uniform`, whose stride `1000 / steps` (integer
    /// division) can give a step or more extra. `kl_optimal` needs at least 2 steps (ComfyUI
    /// divides by `steps - 1` and gets NaN).
    pub fn sigmas(&self, scheduler: Scheduler, steps: usize) -> Result<Vec<f32>, SamplingError> {
        if steps == 0 {
            return Err(SamplingError::ZeroSteps);
        }
        Ok(match scheduler {
            Scheduler::Normal => self.normal_scheduler(steps, false),
            Scheduler::SgmUniform => self.normal_scheduler(steps, true),
            Scheduler::Simple => self.simple_scheduler(steps),
            Scheduler::Karras => karras(
                steps,
                f64::from(self.sigma_min()),
                f64::from(self.sigma_max()),
                7.0,
            ),
            Scheduler::Exponential => exponential(
                steps,
                f64::from(self.sigma_min()),
                f64::from(self.sigma_max()),
            ),
            Scheduler::DdimUniform => self.ddim_uniform_scheduler(steps),
            Scheduler::Beta => self.beta_scheduler(steps, 0.6, 0.6),
            Scheduler::LinearQuadratic => linear_quadratic(steps, 0.025, self.sigma_max()),
            Scheduler::KlOptimal => kl_optimal(
                steps,
                f64::from(self.sigma_min()),
                f64::from(self.sigma_max()),
            )?,
        })
    }

    /// `comfy.samplers.normal_scheduler` (and `sgm_uniform` with `sgm`): uniform in model
    /// timestep between the largest and the smallest sigma.
    fn normal_scheduler(&self, steps: usize, sgm: bool) -> Vec<f32> {
        let start = self.timestep(self.sigma_max());
        let end = self.timestep(self.sigma_min());
        let mut append_zero = true;
        let timesteps = if sgm {
            let mut t = torch_linspace_f32(start, end, steps + 1);
            t.pop();
            t
        } else {
            let mut n = steps;
            if f64::from(self.sigma(end)).abs() <= 0.00001 {
                n += 1;
                append_zero = false;
            }
            torch_linspace_f32(start, end, n)
        };
        let mut sigmas: Vec<f32> = timesteps.into_iter().map(|t| self.sigma(t)).collect();
        if append_zero {
            sigmas.push(0.0);
        }
        sigmas
    }

    /// `comfy.samplers.simple_scheduler`: every (1000 / steps)-th table entry from the top.
    fn simple_scheduler(&self, steps: usize) -> Vec<f32> {
        let len = self.table_len();
        let ss = len as f64 / steps as f64;
        let mut sigmas: Vec<f32> = (0..steps)
            .map(|x| {
                let back = 1 + (x as f64 * ss) as usize;
                self.table(len.saturating_sub(back))
            })
            .collect();
        sigmas.push(0.0);
        sigmas
    }

    /// `comfy.samplers.ddim_scheduler`: table entries 1, 1 + s, 1 + 2s, ... below 1000 with
    /// stride `s = max(1000 / steps, 1)` (integer division), largest first, then 0 (when
    /// table entry 1 is 0 ComfyUI takes one step more and appends no 0; never the case for
    /// the schedules here, whose sigmas are all positive).
    fn ddim_uniform_scheduler(&self, steps: usize) -> Vec<f32> {
        let len = self.table_len();
        let mut steps = steps;
        let mut sigmas = Vec::new();
        let append_zero = f64::from(self.table(1)).abs() > 0.00001;
        if !append_zero {
            steps += 1;
        }
        let stride = (len / steps).max(1);
        let mut x = 1;
        while x < len {
            sigmas.push(self.table(x));
            x += stride;
        }
        sigmas.reverse();
        if append_zero {
            sigmas.push(0.0);
        }
        sigmas
    }

    /// `comfy.samplers.beta_scheduler` (Lee et al. 2024, arXiv 2407.12173): the timesteps
    /// `rint(beta.ppf(1 - i / steps, alpha, beta) * 999)` for `i < steps` (numpy's float64
    /// `linspace(0, 1, steps, endpoint=False)`, round half to even), each table sigma taken once
    /// (a timestep equal to the previous one is skipped), then 0. The quantile is our own
    /// [`beta_ppf`](super::special::beta_ppf) (scipy's to ~1e-15).
    fn beta_scheduler(&self, steps: usize, alpha: f64, beta: f64) -> Vec<f32> {
        let total = (self.table_len() - 1) as f64;
        let step = 1.0 / steps as f64;
        let mut sigmas = Vec::with_capacity(steps + 1);
        let mut last: Option<f64> = None;
        for i in 0..steps {
            let q = 1.0 - i as f64 * step;
            let t = (beta_ppf(q, alpha, beta) * total).round_ties_even();
            if last != Some(t) {
                sigmas.push(self.table(t as usize));
            }
            last = Some(t);
        }
        sigmas.push(0.0);
        sigmas
    }
}

/// `comfy.samplers.linear_quadratic_schedule` (from Mochi): `steps / 2` steps linear in sigma
/// down to `1 - threshold_noise`, then quadratic, computed in float64 as Python does, stored as
/// float32 and multiplied by the (float32) largest sigma; one step is `[1, 0] * sigma_max`.
fn linear_quadratic(steps: usize, threshold_noise: f64, sigma_max: f32) -> Vec<f32> {
    let schedule: Vec<f64> = if steps == 1 {
        vec![1.0, 0.0]
    } else {
        let linear_steps = steps / 2;
        let ls = linear_steps as f64;
        let mut v: Vec<f64> = (0..linear_steps)
            .map(|i| i as f64 * threshold_noise / ls)
            .collect();
        let step_diff = ls - threshold_noise * steps as f64;
        let quadratic_steps = steps - linear_steps;
        // Python integer arithmetic: exact.
        let qs2 = (quadratic_steps * quadratic_steps) as f64;
        let quadratic_coef = step_diff / (linear_steps * quadratic_steps * quadratic_steps) as f64;
        let linear_coef = threshold_noise / ls - 2.0 * step_diff / qs2;
        let constant = quadratic_coef * (linear_steps * linear_steps) as f64;
        v.extend(
            (linear_steps..steps)
                .map(|i| quadratic_coef * (i * i) as f64 + linear_coef * i as f64 + constant),
        );
        v.push(1.0);
        v.into_iter().map(|x| 1.0 - x).collect()
    };
    schedule.into_iter().map(|x| x as f32 * sigma_max).collect()
}

/// `comfy.samplers.kl_optimal_scheduler` (from AUTOMATIC1111's webui PR 15608):
/// `tan(w_i atan(sigma_min) + (1 - w_i) atan(sigma_max))` with `w_i = i / (n - 1)`, all in
/// float32 (the arctangents are Python floats rounded to float32 by the tensor product), then 0.
fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f32>, SamplingError> {
    if n < 2 {
        return Err(SamplingError::InvalidSchedule {
            reason: "kl_optimal needs at least 2 steps (ComfyUI divides by steps - 1)".to_owned(),
        });
    }
    let (amin, amax) = (sigma_min.atan() as f32, sigma_max.atan() as f32);
    let denom = (n - 1) as f32;
    Ok((0..n)
        .map(|i| {
            let w = i as f32 / denom;
            (w * amin + (1.0 - w) * amax).tan()
        })
        .chain(std::iter::once(0.0))
        .collect())
}

/// k-diffusion `get_sigmas_karras` (float32 tensors, Python-float endpoints), with 0 appended.
fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f32> {
    let ramp = torch_linspace_f32(0.0, 1.0, n);
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let base = max_inv_rho as f32;
    let rho = rho as f32;
    ramp.into_iter()
        .map(|r| (base + r * span).powf(rho))
        .chain(std::iter::once(0.0))
        .collect()
}

/// k-diffusion `get_sigmas_exponential`, with 0 appended.
fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f32> {
    torch_linspace_f32(sigma_max.ln() as f32, sigma_min.ln() as f32, n)
        .into_iter()
        .map(f32::exp)
        .chain(std::iter::once(0.0))
        .collect()
}

/// The ComfyUI schedulers this crate reproduces (by their ComfyUI names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// `normal`: uniform in model timestep.
    Normal,
    /// `karras`: Karras et al. (2022), rho 7.
    Karras,
    /// `exponential`: uniform in log sigma.
    Exponential,
    /// `simple`: evenly strided table entries (= diffusers "trailing").
    Simple,
    /// `sgm_uniform`: like `normal` with `steps + 1` points, the last dropped.
    SgmUniform,
    /// `ddim_uniform`: table entries at an integer stride `1000 / steps` from entry 1 (may give
    /// a step or more extra).
    DdimUniform,
    /// `beta`: table entries at the quantiles of a Beta(0.6, 0.6) distribution (more steps at
    /// both ends); repeated timesteps are dropped.
    Beta,
    /// `linear_quadratic`: Mochi's schedule, linear then quadratic in sigma (threshold 0.025).
    LinearQuadratic,
    /// `kl_optimal`: uniform in `atan(sigma)` (at least 2 steps).
    KlOptimal,
}

impl Scheduler {
    /// All schedulers: the first five in ComfyUI's older menu order, then the ones ComfyUI
    /// added since, in its order.
    pub const ALL: [Scheduler; 9] = [
        Scheduler::Normal,
        Scheduler::Karras,
        Scheduler::Exponential,
        Scheduler::SgmUniform,
        Scheduler::Simple,
        Scheduler::DdimUniform,
        Scheduler::Beta,
        Scheduler::LinearQuadratic,
        Scheduler::KlOptimal,
    ];

    /// The ComfyUI name.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Normal => "normal",
            Scheduler::Karras => "karras",
            Scheduler::Exponential => "exponential",
            Scheduler::Simple => "simple",
            Scheduler::SgmUniform => "sgm_uniform",
            Scheduler::DdimUniform => "ddim_uniform",
            Scheduler::Beta => "beta",
            Scheduler::LinearQuadratic => "linear_quadratic",
            Scheduler::KlOptimal => "kl_optimal",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = SamplingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheduler::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SamplingError::UnknownScheduler {
                name: s.to_owned(),
                expected: Scheduler::ALL.map(Scheduler::name).join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdxl_table_endpoints() {
        let d = DiscreteSchedule::sdxl();
        assert_eq!(d.sigmas().len(), 1000);
        assert!((d.sigma_min() - 0.029_167_5).abs() < 1e-6);
        assert!((d.sigma_max() - 14.614_642).abs() < 1e-4);
        assert_eq!(d.sigma_to_timestep(d.sigma_max()), 999);
        assert_eq!(d.sigma_to_timestep(d.sigma_min()), 0);
        assert!((d.timestep_to_sigma(999.0) - d.sigma_max()).abs() < 1e-5);
    }

    /// Against ComfyUI's `rescale_zero_terminal_snr_sigmas` on its float64 SDXL table, then
    /// `.float()` (values computed with torch), and diffusers' `rescale_betas_zero_snr=True`
    /// (float32 betas, so ~2e-5 apart; diffusers also sets the last alphas_cumprod to 2^-24,
    /// sigma 4096, where ComfyUI has 4.897e-8, sigma 4518.76).
    #[test]
    fn zero_terminal_snr_matches_comfyui_and_diffusers() {
        let d = DiscreteSchedule::sdxl_zero_terminal_snr().with_v_prediction(true);
        let idx = [0usize, 1, 2, 100, 500, 900, 990, 998, 999];
        let comfy = [
            0.029_167_158_529_162_407,
            0.042_067_565_023_899_08,
            0.051_909_390_836_954_12,
            0.357_350_260_019_302_37,
            1.774_557_471_275_329_6,
            18.351_919_174_194_336,
            245.954_559_326_171_88,
            2_254.238_037_109_375,
            4_518.763_671_875,
        ];
        let diffusers = [
            0.029_167_533_165_554_22,
            0.042_066_957_481_341_975,
            0.051_909_307_868_927_05,
            0.357_350_645_285_608_8,
            1.774_558_176_347_716_7,
            18.351_925_732_279_11,
            245.954_576_794_931_65,
            2_254.194_851_010_114,
        ];
        for (k, &i) in idx.iter().enumerate() {
            let got = f64::from(d.sigmas()[i]);
            assert!(
                (got - comfy[k]).abs() <= 1e-6 * comfy[k],
                "{i}: {got} vs {}",
                comfy[k]
            );
            if let Some(&want) = diffusers.get(k) {
                assert!(
                    (got - want).abs() <= 5e-5 * want,
                    "{i}: {got} vs diffusers {want}"
                );
            }
        }
        assert_eq!(d.sigma_max(), d.sigmas()[999]);
        assert_eq!(d.sigma_to_timestep(d.sigma_max()), 999);
        assert!(d.is_v_prediction());
        // The first sigma keeps its value; the plain table is not rescaled.
        let plain = DiscreteSchedule::sdxl();
        assert!((d.sigma_min() - plain.sigma_min()).abs() < 1e-7);
        assert!(plain.sigma_max() < 15.0);
    }

    #[test]
    fn flow_table_and_inverse() {
        let f = FlowSchedule::new(3.0).unwrap();
        assert_eq!(f.sigma_max(), 1.0);
        let t = 0.25f32;
        let s = f.timestep_to_sigma(t * 1000.0);
        assert!((s - 0.5).abs() < 1e-6, "{s}");
        assert_eq!(f.sigma_to_timestep(0.5), 500.0);
        assert!(FlowSchedule::new(0.0).is_err());
        assert!(FlowSchedule::new(f64::NAN).is_err());
    }

    #[test]
    fn every_list_ends_in_zero_and_decreases() {
        for ms in [
            ModelSampling::Discrete(DiscreteSchedule::sdxl()),
            ModelSampling::Flow(FlowSchedule::wan_480p()),
        ] {
            for s in Scheduler::ALL {
                for steps in [1, 2, 7, 50] {
                    if s == Scheduler::KlOptimal && steps == 1 {
                        assert!(ms.sigmas(s, steps).is_err());
                        continue;
                    }
                    let v = ms.sigmas(s, steps).unwrap();
                    match s {
                        // Repeated timesteps dropped; stride 1000 / steps rounded down.
                        Scheduler::Beta => assert!(v.len() <= steps + 1 && v.len() >= 2),
                        Scheduler::DdimUniform => assert!(v.len() > steps),
                        _ => assert_eq!(v.len(), steps + 1, "{s} {steps}"),
                    }
                    assert_eq!(v[v.len() - 1], 0.0);
                    assert!(v.windows(2).all(|w| w[0] >= w[1]), "{s} {steps} {v:?}");
                }
                assert!(matches!(ms.sigmas(s, 0), Err(SamplingError::ZeroSteps)));
            }
        }
    }

    #[test]
    fn scheduler_names_round_trip() {
        for s in Scheduler::ALL {
            assert_eq!(s.name().parse::<Scheduler>().unwrap(), s);
        }
        let err = "karas".parse::<Scheduler>().unwrap_err().to_string();
        assert!(err.contains("karras"), "{err}");
    }

    #[test]
    fn linspace_endpoints() {
        let v = torch_linspace_f32(999.0, 0.0, 25);
        assert_eq!(v[0], 999.0);
        assert_eq!(v[24], 0.0);
        assert_eq!(torch_linspace_f32(3.0, 4.0, 1), vec![3.0]);
        assert!(torch_linspace_f32(3.0, 4.0, 0).is_empty());
    }

    #[test]
    fn wan_official_sigmas_shape() {
        let f = FlowSchedule::wan_480p();
        let s = f.wan_official_sigmas(40).unwrap();
        assert_eq!(s.len(), 41);
        assert_eq!(s[40], 0.0);
        assert_eq!(f.wan_official_timesteps(40).unwrap()[0], 999);
    }
}
