//! The sampler names ([`SamplerKind`]) and their options ([`SamplerOptions`]).

use std::fmt;
use std::str::FromStr;

use crate::sampling::SamplingError;

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
