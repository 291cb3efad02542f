//! `er_sde`: the extended reverse-time SDE solver (ER-SDE-Solver-3, VP; arXiv 2309.06169) as
//! ComfyUI's `sample_er_sde` (default noise scaler `x (e^(x^0.3) + 10)`, 200-point integrals,
//! stages up to 3). ComfyUI's default noise for it is `default_noise_sampler` (a CPU torch
//! generator seeded with `seed + 1`), i.e. [`comfy_sampler_noise`](crate::sampling::comfy_sampler_noise).

use super::dpmpp_sde::half_log_snr;
use super::kind::SamplerOptions;
use super::stepper::{Noise, StepCtx};

const POINTS: usize = 200;

/// Whether a run draws noise.
pub(super) fn needs_noise(options: &SamplerOptions) -> bool {
    options.s_noise > 0.0
}

/// `er_lambda = exp(-half_log_snr)` (sigma / alpha) of a sigma.
fn er_lambda(flow: bool, s: f32) -> f32 {
    (-half_log_snr(flow, s)).exp()
}

/// The default noise scaler `x * (exp(x^0.3) + 10)`.
fn noise_scaler(v: f32) -> f32 {
    v * (v.powf(0.3).exp() + 10.0)
}

/// The run's state: the previous prediction and first divided difference.
#[derive(Default)]
pub(super) struct ErSde {
    old: Option<Vec<f32>>,
    old_d: Option<Vec<f32>>,
}

impl ErSde {
    /// One step with the prediction `den`; noise is drawn when the next sigma is above 0 and
    /// s_noise > 0.
    pub(super) fn step(
        &mut self,
        x: &mut [f32],
        den: &[f32],
        ctx: &StepCtx<'_>,
        noise: &mut Noise<'_>,
    ) {
        let (i, s, sn, flow, o) = (ctx.i, ctx.s, ctx.sn, ctx.flow, &ctx.options);
        let stage = 3.min(i + 1);
        if sn == 0.0 {
            x.copy_from_slice(den);
        } else {
            let (ers, ert) = (er_lambda(flow, s), er_lambda(flow, sn));
            let alpha_s = s / ers;
            let alpha_t = sn / ert;
            let r_alpha = alpha_t / alpha_s;
            let r = noise_scaler(ert) / noise_scaler(ers);
            let (k_x, k_d) = (r_alpha * r, alpha_t * (1.0 - r));
            for (xv, &d) in x.iter_mut().zip(den) {
                *xv = k_x * *xv + k_d * d;
            }
            if let (true, Some(old)) = (stage >= 2, self.old.as_ref()) {
                let dt = ert - ers;
                let step = -dt / POINTS as f32;
                let pos: Vec<f32> = (0..POINTS).map(|k| ert + k as f32 * step).collect();
                let scaled: Vec<f32> = pos.iter().map(|&p| noise_scaler(p)).collect();
                // torch.sum of float32 values: summed here in float64, then rounded.
                let sum = |f: &dyn Fn(usize) -> f32| -> f32 {
                    (0..POINTS).map(|k| f64::from(f(k))).sum::<f64>() as f32
                };
                let s_int = sum(&|k| 1.0 / scaled[k]) * step;
                let ns_t = noise_scaler(ert);
                let prev = er_lambda(flow, ctx.sigmas[i - 1]);
                let den_d: Vec<f32> = den
                    .iter()
                    .zip(old)
                    .map(|(&d, &od)| (d - od) / (ers - prev))
                    .collect();
                let c2 = alpha_t * (dt + s_int * ns_t);
                for (xv, &dd) in x.iter_mut().zip(&den_d) {
                    *xv += c2 * dd;
                }
                if let (true, Some(old_d)) = (stage >= 3, self.old_d.as_ref()) {
                    let s_u = sum(&|k| (pos[k] - ers) / scaled[k]) * step;
                    let prev2 = er_lambda(flow, ctx.sigmas[i - 2]);
                    let half = (ers - prev2) / 2.0;
                    let c3 = alpha_t * (dt * dt / 2.0 + s_u * ns_t);
                    for ((xv, &dd), &odd) in x.iter_mut().zip(&den_d).zip(old_d) {
                        *xv += c3 * ((dd - odd) / half);
                    }
                }
                self.old_d = Some(den_d);
            }
            if o.s_noise > 0.0 {
                let v = ert * ert - ers * ers * (r * r);
                let k_n = if v.sqrt().is_nan() { 0.0 } else { v.sqrt() };
                for (xv, &n) in x.iter_mut().zip(noise.draw(s, sn)) {
                    *xv += alpha_t * n * o.s_noise * k_n;
                }
            }
        }
        self.old = Some(den.to_vec());
    }
}
