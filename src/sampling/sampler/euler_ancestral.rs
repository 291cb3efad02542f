//! `euler_ancestral`: Euler to `sigma_down`, then fresh noise up to the next sigma
//! (k-diffusion `sample_euler_ancestral`); on flow models ComfyUI's rectified-flow variant
//! (`sample_euler_ancestral_RF`).

use super::kind::SamplerOptions;
use super::stepper::{Noise, StepCtx};

/// Whether a run draws noise: ComfyUI's discrete ancestral step draws noise even at eta 0 (and
/// scales it by 0); the flow variant only when eta > 0.
pub(super) fn needs_noise(flow: bool, options: &SamplerOptions) -> bool {
    !flow || options.eta > 0.0
}

/// One ancestral step with the prediction `den`.
pub(super) fn step(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>, noise: &mut Noise<'_>) {
    if ctx.flow {
        step_rf(x, den, ctx, noise);
    } else {
        step_discrete(x, den, ctx, noise);
    }
}

/// `sample_euler_ancestral_RF`.
fn step_rf(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>, noise: &mut Noise<'_>) {
    let (s, sn, o) = (ctx.s, ctx.sn, &ctx.options);
    if sn == 0.0 {
        x.copy_from_slice(den);
        return;
    }
    let eta = o.eta;
    let ratio = 1.0 + (sn / s - 1.0) * eta;
    let sd = sn * ratio;
    let a_ip1 = 1.0 - sn;
    let a_down = 1.0 - sd;
    let renoise = (sn * sn - sd * sd * (a_ip1 * a_ip1) / (a_down * a_down)).sqrt();
    let r = sd / s;
    let one_minus_r = 1.0 - r;
    for (x, &d) in x.iter_mut().zip(den) {
        *x = r * *x + one_minus_r * d;
    }
    if eta > 0.0 {
        let k = a_ip1 / a_down;
        for (x, &n) in x.iter_mut().zip(noise.draw(s, sn)) {
            *x = k * *x + n * o.s_noise * renoise;
        }
    }
}

/// `sample_euler_ancestral` (variance-exploding sigmas).
fn step_discrete(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>, noise: &mut Noise<'_>) {
    let (s, sn, o) = (ctx.s, ctx.sn, &ctx.options);
    let (sd, su) = ancestral_step(s, sn, o.eta);
    if sd == 0.0 {
        x.copy_from_slice(den);
        return;
    }
    let dt = sd - s;
    for ((x, &d), &n) in x.iter_mut().zip(den).zip(noise.draw(s, sn)) {
        let deriv = (*x - d) / s;
        *x = *x + deriv * dt + n * o.s_noise * su;
    }
}

/// k-diffusion `get_ancestral_step` on float32 scalars: `(sigma_down, sigma_up)`.
pub(super) fn ancestral_step(from: f32, to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (to, 0.0);
    }
    let cand = eta * (to * to * (from * from - to * to) / (from * from)).sqrt();
    // Python `min(to, cand)`: `to` unless `cand < to`.
    let up = if cand < to { cand } else { to };
    let down = (to * to - up * up).sqrt();
    (down, up)
}
