//! `heun`: second order (k-diffusion `sample_heun`, no churn): two model calls per step, one on
//! the last step to sigma 0.

use super::denoiser::Denoiser;
use super::stepper::{eval, StepCtx};
use crate::sampling::StepError;

/// Denoiser calls for a run over `sigmas`.
pub(super) fn model_evaluations(sigmas: &[f32]) -> usize {
    sigmas
        .windows(2)
        .map(|w| if w[1] == 0.0 { 1 } else { 2 })
        .sum()
}

/// One Heun step with the prediction `den` at `ctx.s`; calls `model` again at `ctx.sn` unless
/// that is 0. Returns the number of model calls of the step (with the one that made `den`).
pub(super) fn step<D: Denoiser>(
    x: &mut [f32],
    den: &[f32],
    ctx: &StepCtx<'_>,
    model: &mut D,
) -> Result<usize, StepError<D::Error>> {
    let (s, sn) = (ctx.s, ctx.sn);
    let dt = sn - s;
    let d1: Vec<f32> = x.iter().zip(den).map(|(&x, &d)| (x - d) / s).collect();
    if sn == 0.0 {
        for (x, &d) in x.iter_mut().zip(&d1) {
            *x += d * dt;
        }
        return Ok(1);
    }
    let x2: Vec<f32> = x.iter().zip(&d1).map(|(&x, &d)| x + d * dt).collect();
    let den2 = eval(model, &x2, sn, ctx.i)?;
    for (((x, &da), &x2v), &dn2) in x.iter_mut().zip(&d1).zip(&x2).zip(&den2) {
        let db = (x2v - dn2) / sn;
        let dp = (da + db) / 2.0;
        *x += dp * dt;
    }
    Ok(2)
}
