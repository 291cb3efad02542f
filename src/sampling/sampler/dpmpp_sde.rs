//! `dpmpp_sde`: DPM-Solver++ (stochastic), k-diffusion `sample_dpmpp_sde` as ComfyUI has it
//! (midpoint `r = 1/2`, half-log-SNR of the model family: `-ln sigma`, flow `-logit sigma`).

use super::denoiser::Denoiser;
use super::euler_ancestral::ancestral_step;
use super::kind::SamplerOptions;
use super::stepper::{eval, Noise, StepCtx};
use crate::sampling::StepError;

/// Whether a run draws noise.
pub(super) fn needs_noise(options: &SamplerOptions) -> bool {
    options.eta > 0.0 && options.s_noise > 0.0
}

/// Denoiser calls for a run over `sigmas`: two per step, one on a step to 0.
pub(super) fn model_evaluations(sigmas: &[f32]) -> usize {
    super::heun::model_evaluations(sigmas)
}

/// Half-log-SNR of a sigma (`sigma_to_half_log_snr`).
pub(super) fn half_log_snr(flow: bool, s: f32) -> f32 {
    if flow {
        -(s / (1.0 - s)).ln()
    } else {
        -s.ln()
    }
}

/// Its inverse (`half_log_snr_to_sigma`): `exp(-l)`, flow `sigmoid(-l)`.
fn sigma_of(flow: bool, l: f32) -> f32 {
    let v = -l;
    if flow {
        1.0 / (1.0 + (-v).exp())
    } else {
        v.exp()
    }
}

/// One step with the prediction `den` at `ctx.s`: a first-order half step to the midpoint
/// sigma (noise drawn for (sigma, sigma_mid)), a model call there, then the full step (noise
/// drawn for (sigma, sigma_next)); a step to 0 returns `den`. Returns the model calls made.
pub(super) fn step<D: Denoiser>(
    x: &mut [f32],
    den: &[f32],
    ctx: &StepCtx<'_>,
    noise: &mut Noise<'_>,
    model: &mut D,
) -> Result<usize, StepError<D::Error>> {
    let (s, sn, flow, o) = (ctx.s, ctx.sn, ctx.flow, &ctx.options);
    if sn == 0.0 {
        x.copy_from_slice(den);
        return Ok(1);
    }
    let (eta, s_noise) = (o.eta, o.s_noise);
    let with_noise = eta > 0.0 && s_noise > 0.0;
    // ComfyUI's `r = 1 / 2` and `fac = 1 / (2 * r)` (Python floats; 1.0).
    let r = 0.5f32;
    let fac = 1.0f32;
    let ls = half_log_snr(flow, s);
    let lt = half_log_snr(flow, sn);
    let h = lt - ls;
    let ls1 = ls + r * h;
    let s1 = sigma_of(flow, ls1);
    let alpha_s = s * ls.exp();
    let alpha_s1 = s1 * ls1.exp();
    let alpha_t = sn * lt.exp();

    // Step 1, to the midpoint.
    let (sd, su) = ancestral_step((-ls).exp(), (-ls1).exp(), eta);
    let h_ = -sd.ln() - ls;
    let k_x = alpha_s1 / alpha_s * (-h_).exp();
    let k_d = alpha_s1 * (-h_).exp_m1();
    let mut x2: Vec<f32> = x
        .iter()
        .zip(den)
        .map(|(&xv, &d)| k_x * xv - k_d * d)
        .collect();
    if with_noise {
        for (v, &n) in x2.iter_mut().zip(noise.draw(s, s1)) {
            *v += alpha_s1 * n * s_noise * su;
        }
    }
    let den2 = eval(model, &x2, s1, ctx.i)?;

    // Step 2.
    let (sd, su) = ancestral_step((-ls).exp(), (-lt).exp(), eta);
    let h_ = -sd.ln() - ls;
    let k_x = alpha_t / alpha_s * (-h_).exp();
    let k_d = alpha_t * (-h_).exp_m1();
    let one_minus_fac = 1.0 - fac;
    for ((xv, &d), &d2) in x.iter_mut().zip(den).zip(&den2) {
        let dd = one_minus_fac * d + fac * d2;
        *xv = k_x * *xv - k_d * dd;
    }
    if with_noise {
        for (v, &n) in x.iter_mut().zip(noise.draw(s, sn)) {
            *v += alpha_t * n * s_noise * su;
        }
    }
    Ok(2)
}
