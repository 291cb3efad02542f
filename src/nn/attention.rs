//! Multi-head scaled dot-product attention on the exact F32 path (mul_mat, soft_max_ext with an
//! optional additive mask, mul_mat). The fused `flash_attn_ext` wants F16 K/V on the CPU, which
//! costs about 1e-3 relative error; text encoders are small enough for the plain path.

use crate::ggml::{Context, GgmlType, Tensor};

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

/// Fused attention (ggml's `flash_attn_ext`, F32 accumulation, no score matrix) of q/k/v given
/// as [D, H, T, N]; returns [D*H, Tq, N] like [`multi_head_attention`]. K and V are copied
/// into [D, T, H, N]: as F32 (exact, the CPU's choice), or with `kv_f16` as F16, the type a
/// GPU's kernel converts them to anyway (half the memory, and no conversion buffer beside the
/// graph's).
pub fn flash_attention<'c>(
    ctx: &'c Context,
    q: Tensor<'c>,
    k: Tensor<'c>,
    v: Tensor<'c>,
    kv_f16: bool,
) -> Tensor<'c> {
    let [d, h, t, n] = q.ne();
    let kv = |x: Tensor<'c>| {
        let x = ctx.permute(x, [0, 2, 1, 3]);
        if kv_f16 {
            ctx.cast(x, GgmlType::F16)
        } else {
            ctx.cont(x)
        }
    };
    let q = ctx.permute(q, [0, 2, 1, 3]);
    let o = ctx.flash_attn_ext(q, kv(k), kv(v), None, 1.0 / (d as f32).sqrt());
    // [D, H, T, N] -> [D*H, T, N]
    ctx.reshape(o, &[d * h, t, n])
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
