//! `dpmpp_2m`: DPM-Solver++(2M) (k-diffusion `sample_dpmpp_2m`).

use super::stepper::StepCtx;

/// The run's state: the previous step's prediction.
#[derive(Default)]
pub(super) struct Dpmpp2m {
    old: Option<Vec<f32>>,
}

impl Dpmpp2m {
    /// One step with the prediction `den`: first order on the first step and on the last step
    /// to 0, second order (with the previous prediction) otherwise.
    pub(super) fn step(&mut self, x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>) {
        let (i, s, sn) = (ctx.i, ctx.s, ctx.sn);
        let t = -s.ln();
        let t_next = -sn.ln();
        let h = t_next - t;
        let ratio = (-t_next).exp() / (-t).exp();
        let c = (-h).exp_m1();
        let prev = if i > 0 { Some(ctx.sigmas[i - 1]) } else { None };
        match (self.old.as_ref(), prev) {
            (Some(old_den), Some(sp)) if sn != 0.0 => {
                let h_last = t - (-sp.ln());
                let r = h_last / h;
                let a = 1.0 + 1.0 / (2.0 * r);
                let b = 1.0 / (2.0 * r);
                for ((x, &d), &od) in x.iter_mut().zip(den).zip(old_den) {
                    let dd = a * d - b * od;
                    *x = ratio * *x - c * dd;
                }
            }
            _ => {
                for (x, &d) in x.iter_mut().zip(den) {
                    *x = ratio * *x - c * d;
                }
            }
        }
        self.old = Some(den.to_vec());
    }
}
