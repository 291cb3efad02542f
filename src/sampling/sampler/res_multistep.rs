//! `res_multistep`: the RES second-order multistep method (arXiv 2308.02157) as ComfyUI's
//! `res_multistep` (`eta = 0`, not CFG++): Euler on the first step and on a step to 0.
//! ComfyUI draws noise on every step to a sigma above 0 but multiplies it by `sigma_up = 0`,
//! so no noise is drawn here.

use super::stepper::StepCtx;

/// `torch.nan_to_num` on a float32 scalar: NaN to 0, infinities to the largest finite values.
fn nan_to_num(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else if v == f32::INFINITY {
        f32::MAX
    } else if v == f32::NEG_INFINITY {
        f32::MIN
    } else {
        v
    }
}

/// The run's state: the previous prediction (its sigma_down is the current sigma at eta 0).
#[derive(Default)]
pub(super) struct ResMultistep {
    old: Option<Vec<f32>>,
}

impl ResMultistep {
    /// One step with the prediction `den`.
    pub(super) fn step(&mut self, x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>) {
        let (i, s, sn) = (ctx.i, ctx.s, ctx.sn);
        match self.old.as_ref() {
            Some(old) if sn != 0.0 => {
                let t_fn = |v: f32| -v.ln();
                let phi1 = |v: f32| v.exp_m1() / v;
                let phi2 = |v: f32| (phi1(v) - 1.0) / v;
                // old_sigma_down is the previous step's sigma_next, i.e. this step's sigma.
                let (t, t_old, t_next, t_prev) =
                    (t_fn(s), t_fn(s), t_fn(sn), t_fn(ctx.sigmas[i - 1]));
                let h = t_next - t;
                let c2 = (t_prev - t_old) / h;
                let (p1, p2) = (phi1(-h), phi2(-h));
                let b1 = nan_to_num(p1 - p2 / c2);
                let b2 = nan_to_num(p2 / c2);
                let e = (-h).exp();
                for ((xv, &d), &o) in x.iter_mut().zip(den).zip(old) {
                    *xv = e * *xv + h * (b1 * d + b2 * o);
                }
            }
            _ => {
                let dt = sn - s;
                for (xv, &d) in x.iter_mut().zip(den) {
                    let deriv = (*xv - d) / s;
                    *xv += deriv * dt;
                }
            }
        }
        self.old = Some(den.to_vec());
    }
}
