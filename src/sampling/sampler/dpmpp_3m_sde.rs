//! `dpmpp_3m_sde`: DPM-Solver++(3M) SDE, k-diffusion `sample_dpmpp_3m_sde` as ComfyUI has it
//! (half-log-SNR of the model family; first order on the first step, second on the second).

use super::dpmpp_sde::half_log_snr;
use super::stepper::{Noise, StepCtx};

/// The run's state: the two previous predictions and step sizes.
#[derive(Default)]
pub(super) struct Dpmpp3mSde {
    den_1: Option<Vec<f32>>,
    den_2: Option<Vec<f32>>,
    /// ComfyUI's `h`: the last step size computed (kept through a step to 0).
    h: Option<f32>,
    h_1: Option<f32>,
    h_2: Option<f32>,
}

impl Dpmpp3mSde {
    /// One step with the prediction `den`; noise is drawn when the next sigma is above 0 and
    /// eta, s_noise > 0.
    pub(super) fn step(
        &mut self,
        x: &mut [f32],
        den: &[f32],
        ctx: &StepCtx<'_>,
        noise: &mut Noise<'_>,
    ) {
        let (s, sn, flow, o) = (ctx.s, ctx.sn, ctx.flow, &ctx.options);
        if sn == 0.0 {
            x.copy_from_slice(den);
        } else {
            let eta = o.eta;
            let ls = half_log_snr(flow, s);
            let lt = half_log_snr(flow, sn);
            let h = lt - ls;
            let h_eta = h * (eta + 1.0);
            let alpha_t = sn * lt.exp();
            let k_x = sn / s * (-h * eta).exp();
            let k_d = alpha_t * -(-h_eta).exp_m1();
            for (xv, &d) in x.iter_mut().zip(den) {
                *xv = k_x * *xv + k_d * d;
            }
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            match (
                self.den_1.as_deref(),
                self.den_2.as_deref(),
                self.h_1,
                self.h_2,
            ) {
                (Some(d_1), Some(d_2), Some(h_1), Some(h_2)) => {
                    let r0 = h_1 / h;
                    let r1 = h_2 / h;
                    let r01 = r0 + r1;
                    let phi_3 = phi_2 / h_eta - 0.5;
                    let (c1, c2) = (alpha_t * phi_2, alpha_t * phi_3);
                    for (k, xv) in x.iter_mut().enumerate() {
                        let d1_0 = (den[k] - d_1[k]) / r0;
                        let d1_1 = (d_1[k] - d_2[k]) / r1;
                        let d1 = d1_0 + (d1_0 - d1_1) * r0 / r01;
                        let d2 = (d1_0 - d1_1) / r01;
                        *xv = *xv + c1 * d1 - c2 * d2;
                    }
                }
                (Some(d_1), _, Some(h_1), _) => {
                    let r = h_1 / h;
                    let c = alpha_t * phi_2;
                    for ((xv, &d), &o1) in x.iter_mut().zip(den).zip(d_1) {
                        *xv += c * ((d - o1) / r);
                    }
                }
                _ => {}
            }
            if eta > 0.0 && o.s_noise > 0.0 {
                let k_n = (-(-2.0 * h * eta).exp_m1()).sqrt();
                for (xv, &n) in x.iter_mut().zip(noise.draw(s, sn)) {
                    *xv += n * sn * k_n * o.s_noise;
                }
            }
            self.h = Some(h);
        }
        self.den_2 = self.den_1.take();
        self.den_1 = Some(den.to_vec());
        self.h_2 = self.h_1;
        self.h_1 = self.h;
    }
}
