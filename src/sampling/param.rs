//! How a network's raw output becomes the denoised latent the samplers work with, and the
//! scalings around the network call (ComfyUI `comfy/model_sampling.py`: `EPS`, `V_PREDICTION`,
//! `CONST`, with `sigma_data = 1`).
//!
//! A denoiser wrapper (the caller's, around the UNet or the DiT) typically does, per call with
//! latent `x` at noise level `sigma`:
//!
//! 1. `input = x * param.c_in(sigma)` ([`Parameterization::scale_input`]);
//! 2. `out = network(input, timestep)` with `timestep = ModelSampling::timestep(sigma)`, once per
//!    condition (CFG: cond and uncond);
//! 3. `denoised = param.denoised(sigma, out, x)` per condition ([`Parameterization::denoised`]);
//! 4. CFG on the denoised predictions, as ComfyUI does: [`apply_cfg`].
//!
//! The samplers only ever see step 4's result.

/// The network's prediction target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Parameterization {
    /// Noise prediction (SDXL, SD1.x): `x0 = x - sigma * out`.
    Eps,
    /// v-prediction (Illustrious/NoobAI v-pred): `x0 = x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)`.
    V,
    /// Rectified flow, velocity prediction (Wan; ComfyUI `CONST`): `x0 = x - sigma * out`.
    Flow,
}

impl Parameterization {
    /// The input scaling `c_in`: `1 / sqrt(sigma^2 + 1)` for the discrete models, 1 for flow
    /// (ComfyUI's `CONST.calculate_input` passes the latent unchanged).
    pub fn c_in(self, sigma: f32) -> f32 {
        match self {
            Self::Eps | Self::V => 1.0 / (sigma * sigma + 1.0).sqrt(),
            Self::Flow => 1.0,
        }
    }

    /// The network input for latent `x` at `sigma` (`calculate_input`).
    pub fn scale_input(self, sigma: f32, x: &[f32]) -> Vec<f32> {
        match self {
            Self::Eps | Self::V => {
                // noise / (sigma ** 2 + sigma_data ** 2) ** 0.5
                let d = (sigma * sigma + 1.0).sqrt();
                x.iter().map(|&v| v / d).collect()
            }
            Self::Flow => x.to_vec(),
        }
    }

    /// The denoised prediction from the raw network output (`calculate_denoised`); `x` is the
    /// unscaled latent the sampler passed in. Writes into `out` (`out.len() == x.len()`).
    pub fn denoised_into(self, sigma: f32, model_output: &[f32], x: &[f32], out: &mut [f32]) {
        match self {
            Self::Eps | Self::Flow => {
                for ((o, &m), &xi) in out.iter_mut().zip(model_output).zip(x) {
                    *o = xi - m * sigma;
                }
            }
            Self::V => {
                let s2 = sigma * sigma + 1.0;
                let sq = s2.sqrt();
                for ((o, &m), &xi) in out.iter_mut().zip(model_output).zip(x) {
                    *o = xi * 1.0 / s2 - m * sigma * 1.0 / sq;
                }
            }
        }
    }

    /// Like [`Parameterization::denoised_into`], allocating the result.
    pub fn denoised(self, sigma: f32, model_output: &[f32], x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len().min(model_output.len())];
        self.denoised_into(sigma, model_output, x, &mut out);
        out
    }

    /// The latent a sampler starts from (`noise_scaling`): discrete models add
    /// `noise * sigma` to the latent, or `noise * sqrt(1 + sigma^2)` for a full denoise
    /// (`max_denoise`, ComfyUI's choice when the first sigma is the schedule's largest); flow
    /// models mix `sigma * noise + (1 - sigma) * latent` (`max_denoise` ignored).
    pub fn noise_scaling(
        self,
        sigma: f32,
        noise: &[f32],
        latent: &[f32],
        max_denoise: bool,
    ) -> Vec<f32> {
        match self {
            Self::Eps | Self::V => {
                let k = if max_denoise {
                    (1.0 + sigma * sigma).sqrt()
                } else {
                    sigma
                };
                noise.iter().zip(latent).map(|(&n, &l)| n * k + l).collect()
            }
            Self::Flow => {
                let one_minus = 1.0 - sigma;
                noise
                    .iter()
                    .zip(latent)
                    .map(|(&n, &l)| sigma * n + one_minus * l)
                    .collect()
            }
        }
    }

    /// Undo of [`Parameterization::noise_scaling`] applied to the sampler's final result at the
    /// last sigma (`inverse_noise_scaling`): identity for the discrete models, `x / (1 - sigma)`
    /// for flow (identity at sigma 0).
    pub fn inverse_noise_scaling(self, sigma: f32, latent: &mut [f32]) {
        if self == Self::Flow {
            let d = 1.0 - sigma;
            for v in latent.iter_mut() {
                *v /= d;
            }
        }
    }
}

/// Classifier-free guidance as ComfyUI's `cfg_function` applies it to denoised predictions:
/// `uncond + (cond - uncond) * scale`. (On eps/v outputs this is the same up to rounding, since
/// the denoised prediction is affine in the output with the same coefficients for both.)
pub fn apply_cfg(uncond: &[f32], cond: &[f32], scale: f32, out: &mut [f32]) {
    for ((o, &u), &c) in out.iter_mut().zip(uncond).zip(cond) {
        *o = u + (c - u) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_round_trip() {
        // x = x0 + sigma * eps  ->  denoised = x0.
        let (x0, eps, sigma) = (0.3f32, -1.2f32, 2.5f32);
        let x = x0 + sigma * eps;
        let d = Parameterization::Eps.denoised(sigma, &[eps], &[x]);
        assert!((d[0] - x0).abs() < 1e-6);
        assert!((Parameterization::Eps.c_in(0.0) - 1.0).abs() < 1e-7);
        assert_eq!(Parameterization::Flow.c_in(0.7), 1.0);
    }

    #[test]
    fn v_prediction_round_trip() {
        // VE latent x = x0 + sigma * eps; v = alpha * eps - sigma_vp * x0 with
        // alpha = 1 / sqrt(1 + sigma^2), sigma_vp = sigma * alpha.
        let (x0, eps, sigma) = (0.7f32, 0.4f32, 3.0f32);
        let alpha = 1.0 / (1.0 + sigma * sigma).sqrt();
        let v = alpha * eps - sigma * alpha * x0;
        let x = x0 + sigma * eps;
        let d = Parameterization::V.denoised(sigma, &[v], &[x]);
        assert!((d[0] - x0).abs() < 1e-5, "{}", d[0]);
    }

    #[test]
    fn flow_round_trip() {
        // x = (1 - sigma) x0 + sigma * noise, velocity = noise - x0.
        let (x0, n, sigma) = (0.25f32, -0.8f32, 0.6f32);
        let x = (1.0 - sigma) * x0 + sigma * n;
        let d = Parameterization::Flow.denoised(sigma, &[n - x0], &[x]);
        assert!((d[0] - x0).abs() < 1e-6);
        let start = Parameterization::Flow.noise_scaling(1.0, &[n], &[x0], true);
        assert_eq!(start, [n]);
        let mut l = [0.5f32];
        Parameterization::Flow.inverse_noise_scaling(0.0, &mut l);
        assert_eq!(l, [0.5]);
    }

    #[test]
    fn full_denoise_scaling() {
        let s = Parameterization::Eps.noise_scaling(14.614_642, &[1.0], &[0.0], true);
        assert!((s[0] - (1.0f32 + 14.614_642f32 * 14.614_642).sqrt()).abs() < 1e-6);
        let s = Parameterization::Eps.noise_scaling(2.0, &[1.0], &[0.5], false);
        assert_eq!(s, [2.5]);
    }

    #[test]
    fn cfg() {
        let mut out = [0.0f32; 2];
        apply_cfg(&[1.0, 2.0], &[2.0, 2.0], 5.0, &mut out);
        assert_eq!(out, [6.0, 2.0]);
    }
}
