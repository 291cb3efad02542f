//! [`SamplerConfig`]: an immutable, validated sampling plan; [`SamplerConfig::stepper`] (in
//! `stepper.rs`, which this file does not import) starts a run of it.

use super::denoiser::NoiseSource;
use super::kind::{SamplerKind, SamplerOptions};
use super::{dpmpp_2m_sde, dpmpp_sde, er_sde, euler_ancestral, heun};
use crate::sampling::brownian::BrownianTreeNoise;
use crate::sampling::rng::comfy_sampler_noise;
use crate::sampling::schedule::ModelSampling;
use crate::sampling::SamplingError;

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

    /// How many denoiser calls a full run makes: one per step, except `heun` and `dpmpp_sde`
    /// (two per step, one on a step to sigma 0).
    pub fn model_evaluations(&self) -> usize {
        match self.kind {
            SamplerKind::Heun => heun::model_evaluations(&self.sigmas),
            SamplerKind::DpmppSde => dpmpp_sde::model_evaluations(&self.sigmas),
            SamplerKind::Euler
            | SamplerKind::EulerAncestral
            | SamplerKind::Dpmpp2m
            | SamplerKind::Dpmpp2mSde
            | SamplerKind::Dpmpp3mSde
            | SamplerKind::Lcm
            | SamplerKind::UniPcWan
            | SamplerKind::ResMultistep
            | SamplerKind::ErSde
            | SamplerKind::Ddim
            | SamplerKind::UniPc
            | SamplerKind::UniPcBh2 => self.steps(),
        }
    }

    /// Whether a run draws noise (and so needs a [`NoiseSource`](super::NoiseSource)).
    pub fn needs_noise(&self) -> bool {
        match self.kind {
            SamplerKind::EulerAncestral => {
                euler_ancestral::needs_noise(self.sampling.is_flow(), &self.options)
            }
            SamplerKind::Dpmpp2mSde | SamplerKind::Dpmpp3mSde => {
                dpmpp_2m_sde::needs_noise(&self.options)
            }
            SamplerKind::DpmppSde => dpmpp_sde::needs_noise(&self.options),
            SamplerKind::ErSde => er_sde::needs_noise(&self.options),
            SamplerKind::Lcm => true,
            SamplerKind::Euler
            | SamplerKind::Heun
            | SamplerKind::Dpmpp2m
            | SamplerKind::UniPcWan
            | SamplerKind::ResMultistep
            | SamplerKind::Ddim
            | SamplerKind::UniPc
            | SamplerKind::UniPcBh2 => false,
        }
    }

    /// The noise ComfyUI's sampler draws for this run over a latent of `len` values (the whole
    /// batch) with the sampling seed `seed`, or `None` when the run draws none: a Brownian
    /// tree over this plan's sigmas seeded with `seed` for `dpmpp_sde`, `dpmpp_2m_sde` and
    /// `dpmpp_3m_sde` ([`BrownianTreeNoise`]); else torch's CPU generator seeded with
    /// `seed + 1` ([`comfy_sampler_noise`]). Each sampler run (each KSamplerAdvanced of a
    /// split) builds its own, as ComfyUI does.
    pub fn comfy_noise(
        &self,
        len: usize,
        seed: u64,
    ) -> Result<Option<Box<dyn NoiseSource + Send>>, SamplingError> {
        if !self.needs_noise() {
            return Ok(None);
        }
        if self.kind.uses_brownian_tree() {
            let tree = BrownianTreeNoise::from_sigmas(len, &self.sigmas, seed)?;
            return Ok(Some(Box::new(tree)));
        }
        Ok(Some(Box::new(comfy_sampler_noise(seed))))
    }
}
