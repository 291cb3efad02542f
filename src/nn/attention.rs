//! Multi-head scaled dot-product attention on the exact F32 path (mul_mat, soft_max_ext with an
//! optional additive mask, mul_mat). The fused `flash_attn_ext` wants F16 K/V on the CPU, which
//! costs about 1e-3 relative error; text encoders are small enough for the plain path.

use crate::ggml::{Context, Tensor};

/// Attention of q/k/v given as [D, H, T, N] (head dim, heads, tokens, batch; may be strided
/// views, e.g. of a fused qkv projection). `mask` is an additive F32 [Tk, Tq] mask (see
/// [`causal_mask`]). Returns [D*H, T, N], heads concatenated as PyTorch does.
pub fn multi_head_attention<'c>(
    ctx: &'c Context,
    q: Tensor<'c>,
    k: Tensor<'c>,
    v: Tensor<'c>,
    mask: Option<Tensor<'c>>,
) -> Tensor<'c> {
    let [d, h, t, n] = q.ne();
    assert!(
        k.ne() == v.ne() && k.ne()[0] == d && k.ne()[1] == h && k.ne()[3] == n,
        "attention: q {:?} k {:?} v {:?}",
        q.ne(),
        k.ne(),
        v.ne()
    );
    // [D, H, T, N] -> [D, T, H, N]
    let q = ctx.permute(q, [0, 2, 1, 3]);
    let k = ctx.permute(k, [0, 2, 1, 3]);
    // [D, H, Tk, N] -> [Tk, D, H, N]
    let vt = ctx.cont(ctx.permute(v, [1, 2, 0, 3]));
    // scores [Tk, Tq, H, N]
    let kq = ctx.mul_mat(k, q);
    let probs = ctx.soft_max_ext(kq, mask, 1.0 / (d as f32).sqrt());
    // [D, Tq, H, N] -> [D, H, Tq, N] -> [D*H, Tq, N]
    let out = ctx.mul_mat(vt, probs);
    let out = ctx.cont(ctx.permute(out, [0, 2, 1, 3]));
    ctx.reshape(out, &[d * h, t, n])
}

/// Values of an additive causal mask [Tk = t, Tq = t], row-major by query: 0 where the key
/// position is at or before the query, -inf after it.
pub fn causal_mask(t: usize) -> Vec<f32> {
    let mut m = vec![0f32; t * t];
    for q in 0..t {
        for k in q + 1..t {
            m[q * t + k] = f32::NEG_INFINITY;
        }
    }
    m
}
