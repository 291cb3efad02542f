//! `uni_pc` / `uni_pc_bh2`: ComfyUI's UniPC (`comfy/extra_samplers/uni_pc.py`, `sample_unipc`,
//! a modified copy of the UniPC authors' code); see [`SamplerKind::UniPc`](super::SamplerKind::UniPc).
//!
//! What decides exact equality with ComfyUI (all float32 like its tensors, except `b`):
//! * Every sigma is read as a variance-exploding noise level of a variance-preserving process
//!   (`SigmaConvert`), flow models included: `log_alpha = 0.5 ln(1 / (s^2 + 1))`,
//!   `alpha = exp(log_alpha)`, `std = sqrt(1 - exp(2 log_alpha))`,
//!   `lambda = log_alpha - 0.5 ln(1 - exp(2 log_alpha))`.
//! * A last sigma of 0 becomes 0.001. The solver runs on `x / sqrt(1 + sigma_0^2)`; the model is
//!   called with `x_vp * sqrt(sigma^2 + 1)` and its x0 prediction is rebuilt as
//!   `(x_vp - std * eps) / alpha` with `eps = (input - denoised) / sigma`; the result is
//!   `x_vp / alpha(last)`. On flow models ComfyUI's `KSAMPLER` then divides by `1 - 0.001`
//!   (its `inverse_noise_scaling` reads the last sigma after `sample_unipc` overwrote it in
//!   place); the stepper does that division itself so that callers keep applying
//!   `inverse_noise_scaling` at the plan's last sigma, 0.
//! * Order `min(3, steps - 1)`: the update to sigma `k` uses order `k` while `k < order`, then
//!   `min(order, steps + 1 - k)`; a corrector (one more model output) follows every predictor
//!   but the last. One step (order 0) only calls the model and returns the rescaled input.
//! * `b` (the B(h) right-hand side) in float64, rounded to float32; the small systems solved in
//!   float32 by LU with partial pivoting (LAPACK `sgesv`'s operation order).

use std::collections::VecDeque;

use super::stepper::StepCtx;
use crate::sampling::SamplingError;

/// ComfyUI's replacement of a last sigma 0 (a float32 tensor element).
const LAST_SIGMA: f32 = 0.001;

/// The B(h) variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// `B(h) = h` (`uni_pc`).
    Bh1,
    /// `B(h) = e^h - 1` (`uni_pc_bh2`).
    Bh2,
}

/// `SigmaConvert` of one sigma.
#[derive(Clone, Copy)]
struct Vp {
    alpha: f32,
    std: f32,
    lambda: f32,
}

fn vp(s: f32) -> Vp {
    let log_alpha = 0.5 * (1.0 / (s * s + 1.0)).ln();
    let one_minus = 1.0 - (2.0 * log_alpha).exp();
    Vp {
        alpha: log_alpha.exp(),
        std: one_minus.sqrt(),
        lambda: log_alpha - 0.5 * one_minus.ln(),
    }
}

/// The run's state.
pub(super) struct UniPc {
    variant: Variant,
    /// `min(3, steps - 1)`.
    order: usize,
    /// The solver's (variance-preserving) sample: the predictor's result between steps.
    x_vp: Vec<f32>,
    /// The corrected sample the last predictor started from.
    last: Vec<f32>,
    /// The newest x0 predictions with their sigmas, oldest first, at most `order`.
    models: VecDeque<(f32, Vec<f32>)>,
    /// Order of the update to the current sigma (its corrector uses it too).
    pending: usize,
}

impl UniPc {
    /// Starts a run from the latent `x` at `sigmas[0]`: keeps `x / sqrt(1 + sigma_0^2)` and
    /// rewrites `x` as the model input ComfyUI builds from it.
    pub(super) fn new(variant: Variant, sigmas: &[f32], x: &mut [f32]) -> Self {
        let steps = sigmas.len() - 1;
        let s0 = sigmas[0];
        let d = (1.0 + s0 * s0).sqrt();
        let x_vp: Vec<f32> = x.iter().map(|&v| v / d).collect();
        model_input(&x_vp, s0, x);
        UniPc {
            variant,
            order: 3.min(steps - 1),
            x_vp,
            last: Vec::new(),
            models: VecDeque::with_capacity(3),
            pending: 0,
        }
    }

    /// The sigma of index `i` as the solver uses it (a last 0 is 0.001).
    fn t(sigmas: &[f32], i: usize) -> f32 {
        if i + 1 == sigmas.len() && sigmas[i] == 0.0 {
            LAST_SIGMA
        } else {
            sigmas[i]
        }
    }

    /// Order of the update to sigma index `k >= 1` (`lower_order_final`).
    fn order_for(&self, k: usize, steps: usize) -> usize {
        if k < self.order {
            k
        } else {
            self.order.min(steps + 1 - k)
        }
    }

    /// One step: `x` is the model input at `sigmas[i]`, `den` the model's prediction there.
    /// Corrects the current sample (after the first step), then predicts the next one and
    /// writes its model input (or, on the last step, the result) to `x`.
    pub(super) fn step(
        &mut self,
        x: &mut [f32],
        den: &[f32],
        ctx: &StepCtx<'_>,
    ) -> Result<(), SamplingError> {
        let (sigmas, i, steps) = (ctx.sigmas, ctx.i, ctx.total);
        let t_i = Self::t(sigmas, i);
        // data_prediction_fn on the predicted sample.
        let v = vp(t_i);
        let m_t: Vec<f32> = x
            .iter()
            .zip(den)
            .zip(&self.x_vp)
            .map(|((&input, &d), &xv)| {
                let eps = (input - d) / t_i;
                (xv - v.std * eps) / v.alpha
            })
            .collect();
        if i > 0 {
            let p = self.pending;
            let u = self.update(t_i, p)?;
            let rhos_c = if p == 1 {
                vec![0.5]
            } else {
                solve(&u.r, &u.b).ok_or_else(singular)?
            };
            let m0 = &self.models[self.models.len() - 1].1;
            let rho_t = rhos_c[p - 1];
            for (k, xo) in self.x_vp.iter_mut().enumerate() {
                let base = u.c1 * self.last[k] - u.c2 * m0[k];
                let d1_t = m_t[k] - m0[k];
                let inner = if u.d1s.is_empty() {
                    rho_t * d1_t
                } else {
                    weighted_sum(&rhos_c, &u.d1s, k) + rho_t * d1_t
                };
                *xo = base - u.c_b * inner;
            }
        }
        if self.order > 0 {
            if self.models.len() == self.order {
                self.models.pop_front();
            }
            self.models.push_back((t_i, m_t));
        }
        let last_step = i + 1 == steps;
        if self.order > 0 {
            // Predictor to sigma i + 1.
            let p = self.order_for(i + 1, steps);
            let t_next = Self::t(sigmas, i + 1);
            let u = self.update(t_next, p)?;
            let m0 = &self.models[self.models.len() - 1].1;
            let rhos_p = match p {
                1 => Vec::new(),
                2 => vec![0.5],
                _ => {
                    let sub: Vec<Vec<f32>> = u.r[..p - 1]
                        .iter()
                        .map(|row| row[..p - 1].to_vec())
                        .collect();
                    solve(&sub, &u.b[..p - 1]).ok_or_else(singular)?
                }
            };
            self.last = std::mem::take(&mut self.x_vp);
            self.x_vp = self
                .last
                .iter()
                .zip(m0)
                .enumerate()
                .map(|(k, (&xv, &m))| {
                    let base = u.c1 * xv - u.c2 * m;
                    if rhos_p.is_empty() {
                        base
                    } else {
                        base - u.c_b * weighted_sum(&rhos_p, &u.d1s, k)
                    }
                })
                .collect();
            self.pending = p;
        }
        if last_step {
            let t_last = Self::t(sigmas, steps);
            let alpha = vp(t_last).alpha;
            // KSAMPLER's inverse_noise_scaling at the overwritten last sigma (flow only).
            let flow_div = if ctx.flow && sigmas[steps] == 0.0 {
                Some(1.0 - LAST_SIGMA)
            } else {
                None
            };
            for (o, &xv) in x.iter_mut().zip(&self.x_vp) {
                let r = xv / alpha;
                *o = match flow_div {
                    Some(d) => r / d,
                    None => r,
                };
            }
        } else {
            model_input(&self.x_vp, Self::t(sigmas, i + 1), x);
        }
        Ok(())
    }

    /// The coefficients of an update of order `p` to sigma `t` from the newest prediction
    /// (`multistep_uni_pc_bh_update`).
    fn update(&self, t: f32, p: usize) -> Result<Update, SamplingError> {
        let n = self.models.len();
        let (t_prev_0, m0) = (self.models[n - 1].0, &self.models[n - 1].1);
        let prev = vp(t_prev_0);
        let cur = vp(t);
        let h = cur.lambda - prev.lambda;
        let mut rks = Vec::with_capacity(p);
        let mut d1s = Vec::with_capacity(p.saturating_sub(1));
        for k in 1..p {
            let (t_k, m_k) = (self.models[n - 1 - k].0, &self.models[n - 1 - k].1);
            let rk = (vp(t_k).lambda - prev.lambda) / h;
            rks.push(rk);
            d1s.push(
                m_k.iter()
                    .zip(m0)
                    .map(|(&a, &b)| (a - b) / rk)
                    .collect::<Vec<f32>>(),
            );
        }
        rks.push(1.0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match self.variant {
            Variant::Bh1 => hh,
            Variant::Bh2 => hh.exp_m1(),
        };
        // b in float64 (ComfyUI: "float32 expm1 isn't precise enough"), rounded to float32.
        let hh64 = f64::from(hh);
        let mut h_phi_k = hh64.exp_m1() / hh64 - 1.0;
        let b_h64 = match self.variant {
            Variant::Bh1 => hh64,
            Variant::Bh2 => hh64.exp_m1(),
        };
        let mut factorial = 1u64;
        let mut r = Vec::with_capacity(p);
        let mut b = Vec::with_capacity(p);
        for k in 1..=p {
            r.push(rks.iter().map(|&v| int_pow(v, k - 1)).collect::<Vec<f32>>());
            b.push((h_phi_k * factorial as f64 / b_h64) as f32);
            factorial *= k as u64 + 1;
            h_phi_k = h_phi_k / hh64 - 1.0 / factorial as f64;
        }
        Ok(Update {
            d1s,
            r,
            b,
            c1: cur.std / prev.std,
            c2: cur.alpha * h_phi_1,
            c_b: cur.alpha * b_h,
        })
    }
}

/// `input = x_vp * sqrt(sigma^2 + 1)` (`predict_eps_sigma`).
fn model_input(x_vp: &[f32], s: f32, out: &mut [f32]) {
    let k = (s * s + 1.0).sqrt();
    for (o, &v) in out.iter_mut().zip(x_vp) {
        *o = v * k;
    }
}

/// `torch.pow(v, e)` for the small integer exponents used (0: 1, 1: v, 2: v * v).
fn int_pow(v: f32, e: usize) -> f32 {
    match e {
        0 => 1.0,
        1 => v,
        2 => v * v,
        _ => v.powi(e as i32),
    }
}

/// One update's differences and coefficients: `x_t = c1 x - c2 m0 - c_b (sum_j rho_j D1s_j ...)`.
struct Update {
    /// `(m_k - m0) / r_k` for the `p - 1` older predictions, newest first.
    d1s: Vec<Vec<f32>>,
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
    c1: f32,
    c2: f32,
    c_b: f32,
}

/// `tensordot(D1s, rhos)`: `sum_j rhos[j] * d1s[j][k]`, left to right from the first product.
fn weighted_sum(rhos: &[f32], d1s: &[Vec<f32>], k: usize) -> f32 {
    let mut acc = d1s[0][k] * rhos[0];
    for (d, &rho) in d1s.iter().zip(rhos).skip(1) {
        acc += d[k] * rho;
    }
    acc
}

/// Solves `a x = b` in float32 like LAPACK's `sgesv`: LU with partial pivoting (first largest
/// magnitude; the column scaled by the pivot's reciprocal), then forward and back substitution.
fn solve(a: &[Vec<f32>], b: &[f32]) -> Option<Vec<f32>> {
    let n = b.len();
    let mut m: Vec<Vec<f32>> = a.iter().take(n).map(|row| row[..n].to_vec()).collect();
    let mut x = b.to_vec();
    for col in 0..n {
        let mut pivot = col;
        for r in col + 1..n {
            if m[r][col].abs() > m[pivot][col].abs() {
                pivot = r;
            }
        }
        if m[pivot][col] == 0.0 || !m[pivot][col].is_finite() {
            return None;
        }
        m.swap(col, pivot);
        x.swap(col, pivot);
        let inv = 1.0 / m[col][col];
        for r in col + 1..n {
            m[r][col] *= inv;
            for c in col + 1..n {
                let u = m[col][c];
                m[r][c] -= m[r][col] * u;
            }
        }
    }
    for k in 0..n {
        for r in k + 1..n {
            let l = m[r][k];
            x[r] -= x[k] * l;
        }
    }
    for k in (0..n).rev() {
        x[k] /= m[k][k];
        for r in 0..k {
            let u = m[r][k];
            x[r] -= x[k] * u;
        }
    }
    Some(x)
}

fn singular() -> SamplingError {
    SamplingError::InvalidSigmas {
        reason: "UniPC: singular coefficient system (repeated sigmas?)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_small_systems() {
        let a = vec![vec![1.0, 1.0], vec![0.5, 1.0]];
        let x = solve(&a, &[3.0, 2.0]).unwrap();
        assert!((x[0] - 2.0).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6);
        let a = vec![
            vec![1.0, 1.0, 1.0],
            vec![-1.0, -2.0, 1.0],
            vec![1.0, 4.0, 1.0],
        ];
        let x = solve(&a, &[6.0, -2.0, 12.0]).unwrap();
        for (got, want) in x.iter().zip([1.0f32, 2.0, 3.0]) {
            assert!((got - want).abs() < 1e-5, "{x:?}");
        }
        assert!(solve(&[vec![0.0, 0.0], vec![0.0, 0.0]], &[1.0, 1.0]).is_none());
    }

    #[test]
    fn sigma_convert_at_the_last_sigma() {
        // float32 SigmaConvert of 0.001: std is exactly 2^-10 after the cancellation in
        // 1 - exp(2 log_alpha), as torch computes it.
        let v = vp(LAST_SIGMA);
        assert_eq!(v.std, 0.000_976_562_5);
        assert!((v.lambda - 6.931_471).abs() < 1e-6);
        assert!((v.alpha - 0.999_999_5).abs() < 1e-7);
    }
}
