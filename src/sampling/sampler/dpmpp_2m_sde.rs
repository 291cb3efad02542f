//! `dpmpp_2m_sde`: DPM-Solver++(2M) SDE, midpoint (k-diffusion `sample_dpmpp_2m_sde`; see the
//! module docs of `sampler` about its noise).

use super::kind::SamplerOptions;
use super::stepper::{Noise, StepCtx};
use crate::sampling::schedule::ModelSampling;

/// Whether a run draws noise.
pub(super) fn needs_noise(options: &SamplerOptions) -> bool {
    options.eta > 0.0 && options.s_noise > 0.0
}

/// ComfyUI's `offset_first_sigma_for_snr`: on flow models a first sigma of 1 (or more) has an
/// infinite logit and becomes `percent_to_sigma(1e-4)`; the model is called with it too.
pub(super) fn offset_first_sigma(sampling: &ModelSampling, sigmas: &mut [f32]) {
    if sampling.is_flow() && sigmas[0] >= 1.0 {
        sigmas[0] = sampling.percent_to_sigma(1e-4) as f32;
    }
}

/// The run's state: the previous step's prediction and step size.
#[derive(Default)]
pub(super) struct Dpmpp2mSde {
    old: Option<Vec<f32>>,
    h_last: Option<f32>,
}

impl Dpmpp2mSde {
    /// One step with the prediction `den`; noise is drawn when the next sigma is above 0 and
    /// eta, s_noise > 0.
    pub(super) fn step(
        &mut self,
        x: &mut [f32],
        den: &[f32],
        ctx: &StepCtx<'_>,
        noise: &mut Noise<'_>,
    ) {
        let (s, sn, o, flow) = (ctx.s, ctx.sn, &ctx.options, ctx.flow);
        let mut h_now = self.h_last;
        if sn == 0.0 {
            x.copy_from_slice(den);
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
            for (x, &d) in x.iter_mut().zip(den) {
                *x = k_x * *x + k_d * d;
            }
            if let (Some(old_den), Some(hl)) = (self.old.as_ref(), self.h_last) {
                let r = hl / h;
                let k = 0.5 * alpha_t * neg_expm1 * (1.0 / r);
                for ((x, &d), &od) in x.iter_mut().zip(den).zip(old_den) {
                    *x += k * (d - od);
                }
            }
            h_now = Some(h);
            if eta > 0.0 && o.s_noise > 0.0 {
                let k_n = (-(-2.0 * h * eta).exp_m1()).sqrt();
                for (x, &n) in x.iter_mut().zip(noise.draw(s, sn)) {
                    *x += n * sn * k_n * o.s_noise;
                }
            }
        }
        self.old = Some(den.to_vec());
        self.h_last = h_now;
    }
}
