//! `euler`: first-order ODE steps (k-diffusion `sample_euler`, no churn).

use super::stepper::StepCtx;

/// One Euler step from `ctx.s` to `ctx.sn` with the prediction `den`.
pub(super) fn step(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>) {
    let (s, sn) = (ctx.s, ctx.sn);
    let dt = sn - s;
    for (x, &d) in x.iter_mut().zip(den) {
        let deriv = (*x - d) / s;
        *x += deriv * dt;
    }
}
