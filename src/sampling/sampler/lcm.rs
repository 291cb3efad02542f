//! `lcm`: jump to the prediction, then re-noise to the next sigma (k-diffusion `sample_lcm`).

use super::stepper::{Noise, StepCtx};

/// One LCM step with the prediction `den`: noise is drawn when the next sigma is above 0.
pub(super) fn step(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>, noise: &mut Noise<'_>) {
    let (s, sn) = (ctx.s, ctx.sn);
    x.copy_from_slice(den);
    if sn > 0.0 {
        let n = noise.draw(s, sn);
        if ctx.flow {
            let one_minus = 1.0 - sn;
            for (x, &n) in x.iter_mut().zip(n) {
                *x = sn * n + one_minus * *x;
            }
        } else {
            for (x, &n) in x.iter_mut().zip(n) {
                *x += n * sn;
            }
        }
    }
}
