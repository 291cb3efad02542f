//! The blocks against plain Rust math on the CPU backend.

use super::*;
use crate::ggml::{self, Backend};

fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        n += ((x - y) as f64).powi(2);
        d += (*y as f64).powi(2);
    }
    (n / d.max(1e-30)).sqrt() as f32
}

/// Causal multi-head attention of q/k/v given as [N][T][H*D] rows (PyTorch layout).
fn ref_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: usize,
    h: usize,
    t: usize,
    n: usize,
) -> Vec<f32> {
    let w = d * h;
    let mut out = vec![0f32; n * t * w];
    for b in 0..n {
        for head in 0..h {
            for i in 0..t {
                let at = |m: &[f32], j: usize, c: usize| m[(b * t + j) * w + head * d + c];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|c| (at(q, i, c) * at(k, j, c)) as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..=i).map(|j| e[j] / z * at(v, j, c) as f64).sum();
                    out[(b * t + i) * w + head * d + c] = acc as f32;
                }
            }
        }
    }
    out
}

#[test]
fn causal_attention_matches_reference() {
    let (d, h, t, n) = (64usize, 2usize, 5usize, 2usize);
    let len = d * h * t * n;
    let (qv, kv, vv) = (vals(len, 1), vals(len, 2), vals(len, 3));
    let ctx = Context::new_meta(64, 256).unwrap();
    let shape = [d as i64, h as i64, t as i64, n as i64];
    let q = ctx.new_f32(&shape).set_input();
    let k = ctx.new_f32(&shape).set_input();
    let v = ctx.new_f32(&shape).set_input();
    let mask = ctx.new_f32(&[t as i64, t as i64]).set_input();
    let out = multi_head_attention(&ctx, q, k, v, Some(mask)).set_output();
    assert_eq!(out.ne(), [(d * h) as i64, t as i64, n as i64, 1]);
    let mut g = ctx.new_graph(256);
    g.expand(out);
    let mut backend = Backend::cpu(2).unwrap();
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    ggml::tensor_set_f32(q, &qv).unwrap();
    ggml::tensor_set_f32(k, &kv).unwrap();
    ggml::tensor_set_f32(v, &vv).unwrap();
    ggml::tensor_set_f32(mask, &causal_mask(t)).unwrap();
    backend.compute(&g).unwrap();
    let got = ggml::tensor_get_f32(out).unwrap();
    let want = ref_attention(&qv, &kv, &vv, d, h, t, n);
    let e = rel_err(&got, &want);
    assert!(e < 1e-5, "rel err {e}");
}

#[test]
fn causal_mask_blocks_later_keys() {
    let m = causal_mask(3);
    assert_eq!(m[0], 0.0);
    assert!(m[1].is_infinite() && m[2].is_infinite());
    assert_eq!(&m[6..9], &[0.0, 0.0, 0.0]);
}

#[test]
fn missing_tensor_names_the_full_name() {
    let set = TensorSet::new(1).unwrap();
    let w = Weights::new(&set, "model").pp("layers").pp(3);
    match w.get("weight") {
        Err(NnError::MissingTensor(n)) => assert_eq!(n, "model.layers.3.weight"),
        _ => panic!("expected a missing tensor error"),
    }
}

#[test]
fn flash_attention_with_f32_or_f16_kv_matches_the_exact_path() {
    // The GPU variant (K/V cast to F16) runs here on the CPU too: same shapes, F16 rounding.
    let (d, h, t, n) = (64usize, 2usize, 7usize, 1usize);
    let len = d * h * t * n;
    let (qv, kv, vv) = (vals(len, 11), vals(len, 12), vals(len, 13));
    let ctx = Context::new_meta(64, 256).unwrap();
    let shape = [d as i64, h as i64, t as i64, n as i64];
    let q = ctx.new_f32(&shape).set_input();
    let k = ctx.new_f32(&shape).set_input();
    let v = ctx.new_f32(&shape).set_input();
    let exact = multi_head_attention(&ctx, q, k, v, None).set_output();
    let f32kv = flash_attention(&ctx, q, k, v, false).set_output();
    let f16kv = flash_attention(&ctx, q, k, v, true).set_output();
    assert_eq!(f16kv.ne(), exact.ne());
    let mut g = ctx.new_graph(256);
    for o in [exact, f32kv, f16kv] {
        g.expand(o);
    }
    let mut backend = Backend::cpu(2).unwrap();
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    ggml::tensor_set_f32(q, &qv).unwrap();
    ggml::tensor_set_f32(k, &kv).unwrap();
    ggml::tensor_set_f32(v, &vv).unwrap();
    backend.compute(&g).unwrap();
    let want = ggml::tensor_get_f32(exact).unwrap();
    let e32 = rel_err(&ggml::tensor_get_f32(f32kv).unwrap(), &want);
    let e16 = rel_err(&ggml::tensor_get_f32(f16kv).unwrap(), &want);
    assert!(e32 < 1e-5, "F32 K/V: rel err {e32}");
    assert!(e16 > 0.0 && e16 < 3e-3, "F16 K/V: rel err {e16}");
}

#[test]
fn bf16_conv_kernels_are_cast_to_f32_on_the_cpu_and_to_f16_for_a_gpu() {
    use half::bf16;
    let (k, ic, oc, wd) = (3usize, 4usize, 5usize, 6usize);
    let wv: Vec<f32> = vals(k * k * ic * oc, 21)
        .iter()
        .map(|&v| bf16::from_f32(v).to_f32())
        .collect();
    let xv = vals(wd * wd * ic, 22);
    let bytes: Vec<u8> = wv
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let mut set = TensorSet::new(2).unwrap();
    let ne = [k as i64, k as i64, ic as i64, oc as i64];
    set.add_owned("c.weight", GgmlType::BF16, &ne, &bytes)
        .unwrap();
    set.add_owned("f.weight", GgmlType::F32, &ne, bytemuck::cast_slice(&wv))
        .unwrap();
    let w = Weights::new(&set, "");
    let ctx = Context::new_meta(64, 256).unwrap();
    let x = ctx
        .new_f32(&[wd as i64, wd as i64, ic as i64, 1])
        .set_input();
    let exact = conv2d(&ctx, &w.pp("f"), x, 1, 1).unwrap();
    let cpu = conv2d(&ctx, &w.pp("c"), x, 1, 1).unwrap();
    let half = w.clone().with_half_convs();
    assert_eq!(
        conv_kernel(&ctx, &half, set.get("c.weight").unwrap()).ty(),
        GgmlType::F16
    );
    assert_eq!(
        conv_kernel(&ctx, &w, set.get("c.weight").unwrap()).ty(),
        GgmlType::F32
    );
    let gpu = conv2d(&ctx, &half.pp("c"), x, 1, 1).unwrap();
    let mut g = ctx.new_graph(256);
    for t in [exact, cpu, gpu] {
        g.expand(t);
    }
    let mut backend = Backend::cpu(1).unwrap();
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    ggml::tensor_set_f32(x, &xv).unwrap();
    backend.compute(&g).unwrap();
    let want = ggml::tensor_get_f32(exact).unwrap();
    let e_cpu = rel_err(&ggml::tensor_get_f32(cpu).unwrap(), &want);
    let e_gpu = rel_err(&ggml::tensor_get_f32(gpu).unwrap(), &want);
    assert!(e_cpu < 1e-6, "BF16 cast to F32: {e_cpu}");
    assert!(e_gpu > 0.0 && e_gpu < 2e-3, "BF16 cast to F16: {e_gpu}");
}

#[test]
fn timestep_embedding_is_cos_then_sin() {
    let e = timestep_embedding(3.0, 8);
    assert!((e[0] - 3f32.cos()).abs() < 1e-7);
    assert!((e[4] - 3f32.sin()).abs() < 1e-7);
    let f = (-(10000f32.ln()) / 4.0).exp();
    assert!((e[1] - (3.0 * f).cos()).abs() < 1e-6);
    assert!((e[5] - (3.0 * f).sin()).abs() < 1e-6);
}

#[test]
fn gelu_tanh_matches_the_formula() {
    let xv: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 6.0).collect();
    let ctx = Context::new_meta(8, 64).unwrap();
    let x = ctx.new_f32(&[xv.len() as i64]).set_input();
    let y = gelu_tanh(&ctx, x);
    let mut g = ctx.new_graph(64);
    g.expand(y);
    let mut backend = Backend::cpu(1).unwrap();
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    ggml::tensor_set_f32(x, &xv).unwrap();
    backend.compute(&g).unwrap();
    let want: Vec<f32> = xv
        .iter()
        .map(|&x| {
            let x = x as f64;
            let c = (2.0 / std::f64::consts::PI).sqrt();
            (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())) as f32
        })
        .collect();
    let e = rel_err(&ggml::tensor_get_f32(y).unwrap(), &want);
    assert!(e < 1e-6, "gelu_tanh: rel err {e}");
}
