//! The sampler names ([`SamplerKind`]) and their options ([`SamplerOptions`]).

use std::fmt;
use std::str::FromStr;

use crate::sampling::SamplingError;

/// The samplers, by their ComfyUI names (all but [`SamplerKind::UniPcWan`]).
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
    /// `unipc_wan`: UniPC multistep predictor-corrector as diffusers' `UniPCMultistepScheduler`,
    /// the official Wan 2.1 solver (not a ComfyUI sampler): order 2 and variant bh2 by default
    /// (see [`SamplerOptions`]), lower orders for the first and last steps, one model call per
    /// step. The latent after a step is the predictor's; the next step corrects it with the
    /// next model output. On flow models a first sigma of 1 becomes 1 - 1e-6 (as in diffusers).
    UniPcWan,
    /// `dpmpp_sde`: DPM-Solver++ (stochastic, midpoint r = 1/2): two model calls and two noise
    /// draws per step (one call, no noise on the last step to 0).
    DpmppSde,
    /// `dpmpp_3m_sde`: DPM-Solver++(3M) SDE (second order on the second step, first on the
    /// first).
    Dpmpp3mSde,
    /// `res_multistep`: RES second-order multistep (ComfyUI's `eta = 0` version: no noise).
    ResMultistep,
    /// `er_sde`: extended reverse-time SDE solver (ER-SDE-Solver-3, VP, stages up to 3).
    ErSde,
    /// `ddim`: ComfyUI runs `euler` for it (its other difference, inpainting noise drawn from
    /// `seed + 1`, only matters with a mask), so the steps are [`SamplerKind::Euler`]'s.
    Ddim,
    /// `uni_pc`: ComfyUI's UniPC (`comfy/extra_samplers/uni_pc.py`, variant bh1): the sigmas are
    /// treated as variance-exploding ones for every model (flow too), the last sigma 0 becomes
    /// 0.001, order `min(3, steps - 1)` with lower orders at both ends, one model call per step.
    /// Use [`ksampler_sigmas`](crate::sampling::ksampler_sigmas) for KSampler's sigma list (it
    /// computes `steps + 1` and drops the penultimate sigma).
    UniPc,
    /// `uni_pc_bh2`: [`SamplerKind::UniPc`] with B(h) = e^h - 1.
    UniPcBh2,
}

impl SamplerKind {
    /// All samplers: the first six and `unipc_wan` as before, then the other ComfyUI samplers.
    pub const ALL: [SamplerKind; 14] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::Heun,
        SamplerKind::Dpmpp2m,
        SamplerKind::Dpmpp2mSde,
        SamplerKind::Lcm,
        SamplerKind::UniPcWan,
        SamplerKind::DpmppSde,
        SamplerKind::Dpmpp3mSde,
        SamplerKind::ResMultistep,
        SamplerKind::ErSde,
        SamplerKind::Ddim,
        SamplerKind::UniPc,
        SamplerKind::UniPcBh2,
    ];

    /// The name (ComfyUI's, except `unipc_wan`).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_ancestral",
            SamplerKind::Heun => "heun",
            SamplerKind::Dpmpp2m => "dpmpp_2m",
            SamplerKind::Dpmpp2mSde => "dpmpp_2m_sde",
            SamplerKind::Lcm => "lcm",
            SamplerKind::UniPcWan => "unipc_wan",
            SamplerKind::DpmppSde => "dpmpp_sde",
            SamplerKind::Dpmpp3mSde => "dpmpp_3m_sde",
            SamplerKind::ResMultistep => "res_multistep",
            SamplerKind::ErSde => "er_sde",
            SamplerKind::Ddim => "ddim",
            SamplerKind::UniPc => "uni_pc",
            SamplerKind::UniPcBh2 => "uni_pc_bh2",
        }
    }

    /// Whether the sampler injects noise during sampling (with the default eta and s_noise;
    /// [`SamplerConfig::needs_noise`](super::SamplerConfig::needs_noise) accounts for options).
    /// `res_multistep` is not: ComfyUI draws noise for it but multiplies it by 0.
    pub fn is_stochastic(self) -> bool {
        matches!(
            self,
            SamplerKind::EulerAncestral
                | SamplerKind::Dpmpp2mSde
                | SamplerKind::Lcm
                | SamplerKind::DpmppSde
                | SamplerKind::Dpmpp3mSde
                | SamplerKind::ErSde
        )
    }

    /// Whether ComfyUI draws this sampler's noise from a Brownian tree
    /// (`BrownianTreeNoiseSampler`, seeded with the seed itself: `dpmpp_sde`, `dpmpp_2m_sde`,
    /// `dpmpp_3m_sde`) rather than from a plain generator seeded with `seed + 1`.
    pub fn uses_brownian_tree(self) -> bool {
        matches!(
            self,
            SamplerKind::DpmppSde | SamplerKind::Dpmpp2mSde | SamplerKind::Dpmpp3mSde
        )
    }

    /// Whether ComfyUI's KSampler computes one step more and drops the penultimate sigma for
    /// this sampler (`KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS`: `uni_pc`, `uni_pc_bh2`, and
    /// `dpm_2` / `dpm_2_ancestral`, which nijigen does not have).
    pub fn discards_penultimate_sigma(self) -> bool {
        matches!(self, SamplerKind::UniPc | SamplerKind::UniPcBh2)
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

/// B(h) of [`SamplerKind::UniPcWan`].
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
    /// Ancestral / SDE noise amount (euler_ancestral, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde);
    /// 1.0.
    pub eta: f32,
    /// Noise multiplier (euler_ancestral, dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde, er_sde); 1.0.
    pub s_noise: f32,
    /// Order of [`SamplerKind::UniPcWan`], 1 to 3; 2. (ComfyUI's `uni_pc` has no options.)
    pub unipc_order: usize,
    /// B(h) of [`SamplerKind::UniPcWan`]; bh2. (`uni_pc` is bh1, `uni_pc_bh2` bh2.)
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
