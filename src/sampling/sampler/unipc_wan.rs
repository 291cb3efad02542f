//! `unipc_wan`: UniPC multistep predictor-corrector as diffusers' `UniPCMultistepScheduler` (the
//! official Wan 2.1 solver; not ComfyUI's `uni_pc`, see `uni_pc.rs`); see
//! [`SamplerKind::UniPcWan`](super::SamplerKind::UniPcWan).

use std::collections::VecDeque;

use super::kind::UniPcVariant;
use super::stepper::StepCtx;
use crate::sampling::schedule::ModelSampling;
use crate::sampling::SamplingError;

/// diffusers' UniPC (`use_flow_sigmas`) nudges a flow model's first sigma of 1 to 1 - 1e-6:
/// log(alpha) = log(1 - sigma) would be -inf. The model is called with it too.
pub(super) fn offset_first_sigma(sampling: &ModelSampling, sigmas: &mut [f32]) {
    if sampling.is_flow() && (f64::from(sigmas[0]) - 1.0).abs() < 1e-6 {
        sigmas[0] = (1.0f64 - 1e-6) as f32;
    }
}

/// The run's state.
pub(super) struct UniPcWan {
    /// (sigma index, x0 prediction), oldest first, at most `order` entries.
    history: VecDeque<(usize, Vec<f32>)>,
    /// The (corrected) sample the last predictor started from.
    last_sample: Option<Vec<f32>>,
    this_order: usize,
    lower_order_nums: usize,
}

impl UniPcWan {
    pub(super) fn new(order: usize) -> Self {
        UniPcWan {
            history: VecDeque::with_capacity(order),
            last_sample: None,
            this_order: 1,
            lower_order_nums: 0,
        }
    }

    /// One UniPC step at sigma index `ctx.i` (diffusers' `step`): corrector on the current
    /// sample with the new model output `model_t`, then the predictor to `sigmas[i + 1]`.
    pub(super) fn step(
        &mut self,
        x: &mut [f32],
        model_t: &[f32],
        ctx: &StepCtx<'_>,
    ) -> Result<(), SamplingError> {
        let (sigmas, i, total) = (ctx.sigmas, ctx.i, ctx.total);
        let order = ctx.options.unipc_order;

        // Corrector (UniC): x_i from x_{i-1} (last_sample), using the model output at the
        // predicted x_i.
        if i > 0 {
            if let (Some(last), Some((_, m0))) = (self.last_sample.as_ref(), self.history.back()) {
                let p = self.this_order;
                let u = self.update(ctx, i - 1, i, p, m0);
                let rhos_c = if p == 1 {
                    vec![0.5]
                } else {
                    solve(&u.r, &u.b).ok_or_else(singular)?
                };
                let rho_last = rhos_c[p - 1];
                for (k, xo) in x.iter_mut().enumerate() {
                    let x_t_ = u.c1 * last[k] - u.c2 * m0[k];
                    let corr = weighted_sum(&rhos_c, &u.d1s, k);
                    let d1_t = model_t[k] - m0[k];
                    let inner = if u.d1s.is_empty() {
                        rho_last * d1_t
                    } else {
                        corr + rho_last * d1_t
                    };
                    *xo = x_t_ - u.c3 * inner;
                }
            }
        }

        // Push the new model output.
        if self.history.len() == order {
            self.history.pop_front();
        }
        self.history.push_back((i, model_t.to_vec()));

        let this_order = order.min(total - i).min(self.lower_order_nums + 1);
        self.this_order = this_order;
        self.last_sample = Some(x.to_vec());

        // Predictor (UniP) from sigma_i to sigma_{i+1}.
        let m0 = &self.history[self.history.len() - 1].1;
        let p = this_order;
        let u = self.update(ctx, i, i + 1, p, m0);
        let rhos_p = if u.d1s.is_empty() {
            Vec::new()
        } else if p == 2 {
            vec![0.5]
        } else {
            let sub_r: Vec<Vec<f32>> = u.r[..p - 1]
                .iter()
                .map(|row| row[..p - 1].to_vec())
                .collect();
            solve(&sub_r, &u.b[..p - 1]).ok_or_else(singular)?
        };
        if sigmas[i + 1] == 0.0 && u.d1s.is_empty() {
            // The last step to sigma 0 (order 1): exactly the prediction. diffusers gets the same
            // value with bh2 and NaN with bh1 (B(h) = -inf times a zero residual).
            x.copy_from_slice(m0);
        } else {
            for (k, xo) in x.iter_mut().enumerate() {
                let x_t_ = u.c1 * *xo - u.c2 * m0[k];
                if u.d1s.is_empty() {
                    *xo = x_t_;
                } else {
                    *xo = x_t_ - u.c3 * weighted_sum(&rhos_p, &u.d1s, k);
                }
            }
        }
        self.lower_order_nums = (self.lower_order_nums + 1).min(order);
        Ok(())
    }

    /// What the corrector and the predictor share for an update from `sigmas[from]` to
    /// `sigmas[to]` with the newest `p` predictions (`m0` the newest).
    fn update(&self, ctx: &StepCtx<'_>, from: usize, to: usize, p: usize, m0: &[f32]) -> Update {
        let (sigmas, flow) = (ctx.sigmas, ctx.flow);
        let (sigma_t, sigma_s0) = (sigmas[to], sigmas[from]);
        let (alpha_t, sg_t) = alpha_sigma(flow, sigma_t);
        let (_, sg_s0) = alpha_sigma(flow, sigma_s0);
        let lambda_t = lambda(flow, sigma_t);
        let lambda_s0 = lambda(flow, sigma_s0);
        let h = lambda_t - lambda_s0;
        let mut rks = Vec::with_capacity(p);
        let mut d1s: Vec<Vec<f32>> = Vec::with_capacity(p);
        for k in 1..p {
            let (si, mk) = &self.history[self.history.len() - 1 - k];
            let rk = (lambda(flow, sigmas[*si]) - lambda_s0) / h;
            rks.push(rk);
            d1s.push(mk.iter().zip(m0).map(|(&a, &b)| (a - b) / rk).collect());
        }
        rks.push(1.0);
        let hh = -h;
        let (r, b, h_phi_1, b_h) = b_h_system(&rks, hh, ctx.options.unipc_variant);
        Update {
            d1s,
            r,
            b,
            c1: sg_t / sg_s0,
            c2: alpha_t * h_phi_1,
            c3: alpha_t * b_h,
        }
    }
}

/// One update's differences and coefficients (diffusers' `rks`, `D1s`, `R`, `b`): the update is
/// `x_t = c1 x - c2 m0 - c3 (sum_j rho_j D1s_j + ...)`.
struct Update {
    /// `(m_k - m0) / r_k` for the `p - 1` older predictions, newest first.
    d1s: Vec<Vec<f32>>,
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
    c1: f32,
    c2: f32,
    c3: f32,
}

/// `sum_j rhos[j] * d1s[j][k]`, left to right, starting from the first product (not from 0).
fn weighted_sum(rhos: &[f32], d1s: &[Vec<f32>], k: usize) -> f32 {
    let mut acc = 0.0f32;
    for (j, d) in d1s.iter().enumerate() {
        acc = if j == 0 {
            rhos[0] * d[k]
        } else {
            acc + rhos[j] * d[k]
        };
    }
    acc
}

/// UniPC `(alpha_t, sigma_t)` of a sigma: flow `(1 - s, s)`; discrete models in the
/// variance-exploding parameterisation the samplers use, `(1, s)` (equivalent to diffusers'
/// variance-preserving `(1/sqrt(1+s^2), s/sqrt(1+s^2))` after rescaling the sample).
fn alpha_sigma(flow: bool, s: f32) -> (f32, f32) {
    if flow {
        (1.0 - s, s)
    } else {
        (1.0, s)
    }
}

fn lambda(flow: bool, s: f32) -> f32 {
    let (a, sg) = alpha_sigma(flow, s);
    a.ln() - sg.ln()
}

/// `R` (rows `rks^(j-1)`) and `b` of diffusers' B(h) update, plus `h_phi_1` and `B(h)`.
fn b_h_system(rks: &[f32], hh: f32, variant: UniPcVariant) -> (Vec<Vec<f32>>, Vec<f32>, f32, f32) {
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0f32;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let order = rks.len();
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for j in 1..=order {
        r.push(
            rks.iter()
                .map(|&v| v.powi(j as i32 - 1))
                .collect::<Vec<f32>>(),
        );
        b.push(h_phi_k * factorial / b_h);
        factorial *= (j + 1) as f32;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (r, b, h_phi_1, b_h)
}

/// Solves the small dense system `a x = b` (Gaussian elimination, partial pivoting, in f64).
fn solve(a: &[Vec<f32>], b: &[f32]) -> Option<Vec<f32>> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .take(n)
        .zip(b)
        .map(|(row, &bi)| {
            row.iter()
                .take(n)
                .map(|&v| f64::from(v))
                .chain(std::iter::once(f64::from(bi)))
                .collect()
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| m[p][col].abs().total_cmp(&m[q][col].abs()))?;
        if m[pivot][col] == 0.0 || !m[pivot][col].is_finite() {
            return None;
        }
        m.swap(col, pivot);
        let (top, bottom) = m.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for row in bottom.iter_mut() {
            let f = row[col] / pivot_row[col];
            for (r, &p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *r -= f * p;
            }
        }
    }
    let mut x = vec![0.0f64; n];
    for row in (0..n).rev() {
        let mut acc = m[row][n];
        for k in row + 1..n {
            acc -= m[row][k] * x[k];
        }
        x[row] = acc / m[row][row];
    }
    Some(x.into_iter().map(|v| v as f32).collect())
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
        assert!(solve(&[vec![0.0, 0.0], vec![0.0, 0.0]], &[1.0, 1.0]).is_none());
    }
}
