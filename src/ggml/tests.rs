//! Real ggml ops on the CPU backend against plain Rust reference math.

use super::*;
use half::f16;

/// Deterministic uniform values in [-1, 1) (splitmix64).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// ||a - b|| / ||b||
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt() as f32
}

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Builds a graph with `build`, allocates every tensor of the context on the CPU backend,
/// uploads the inputs, computes and returns the output as f32.
fn run_cpu<'a>(
    inputs: &[(GgmlType, Vec<i64>, Vec<u8>)],
    build: impl for<'c> FnOnce(&'c Context, &[Tensor<'c>]) -> Tensor<'c>,
) -> (Vec<f32>, [i64; 4]) {
    let ctx = Context::new_meta(256, 2048).unwrap();
    let ts: Vec<Tensor<'_>> = inputs
        .iter()
        .map(|(ty, ne, _)| ctx.new_tensor(*ty, ne).set_input())
        .collect();
    let out = build(&ctx, &ts).set_output();
    let out = if out.ty() == GgmlType::F32 {
        out
    } else {
        ctx.cast(out, GgmlType::F32)
    };
    let mut graph = ctx.new_graph(2048);
    graph.expand(out);
    let mut backend = Backend::cpu(2).unwrap();
    let _buf = backend.alloc_ctx_tensors(&ctx).unwrap();
    for (t, (_, _, data)) in ts.iter().zip(inputs) {
        tensor_set(*t, data).unwrap();
    }
    backend.compute(&graph).unwrap();
    (tensor_get_f32(out).unwrap(), out.ne())
}

fn f32_input(ne: &[i64], v: &[f32]) -> (GgmlType, Vec<i64>, Vec<u8>) {
    (GgmlType::F32, ne.to_vec(), bytemuck::cast_slice(v).to_vec())
}

/// y[m][n] = sum_k w[n][k] x[m][k]
fn ref_matmul(w: &[f32], x: &[f32], k: usize, n: usize, m: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for mi in 0..m {
        for ni in 0..n {
            let mut acc = 0f64;
            for ki in 0..k {
                acc += w[ni * k + ki] as f64 * x[mi * k + ki] as f64;
            }
            y[mi * n + ni] = acc as f32;
        }
    }
    y
}

fn matmul_case(ty: GgmlType, tol_vs_dequant: f32, tol_vs_f32: f32) {
    let (k, n, m) = (512usize, 48usize, 7usize);
    let w = rand_vec(k * n, 1);
    let x = rand_vec(k * m, 2);
    let wbytes = match ty {
        GgmlType::F32 => bytemuck::cast_slice(&w).to_vec(),
        GgmlType::F16 => f16_bytes(&w),
        _ => {
            let mut out = vec![0u8; ty.bytes_for((k * n) as u64).unwrap() as usize];
            quantize(ty, &w, k, &mut out).unwrap();
            out
        }
    };
    let mut wdq = vec![0f32; k * n];
    dequantize(ty, &wbytes, &mut wdq).unwrap();
    let inputs = [
        (ty, vec![k as i64, n as i64], wbytes),
        f32_input(&[k as i64, m as i64], &x),
    ];
    let (y, ne) = run_cpu(&inputs, |ctx, t| ctx.mul_mat(t[0], t[1]));
    assert_eq!(ne, [n as i64, m as i64, 1, 1]);
    let e1 = rel_err(&y, &ref_matmul(&wdq, &x, k, n, m));
    let e2 = rel_err(&y, &ref_matmul(&w, &x, k, n, m));
    assert!(
        e1 < tol_vs_dequant,
        "{ty}: rel err vs dequantized weights {e1}"
    );
    assert!(e2 < tol_vs_f32, "{ty}: rel err vs f32 weights {e2}");
}

#[test]
fn matmul_f32() {
    matmul_case(GgmlType::F32, 1e-5, 1e-5);
}

#[test]
fn matmul_f16() {
    matmul_case(GgmlType::F16, 2e-3, 2e-3);
}

#[test]
fn matmul_q8_0() {
    matmul_case(GgmlType::Q8_0, 1e-2, 1.5e-2);
}

#[test]
fn matmul_q4_k() {
    matmul_case(GgmlType::Q4_K, 1e-2, 0.12);
}

#[test]
fn quantize_round_trip_errors_are_sane() {
    let w = rand_vec(4096, 9);
    for (ty, tol) in [
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q4_K, 0.1),
        (GgmlType::Q4_0, 0.12),
        (GgmlType::IQ4_NL, 0.1),
        (GgmlType::Q3_K, 0.2),
        (GgmlType::Q2_K, 0.4),
    ] {
        let mut q = vec![0u8; ty.bytes_for(4096).unwrap() as usize];
        assert_eq!(quantize(ty, &w, 256, &mut q).unwrap(), q.len());
        let mut back = vec![0f32; 4096];
        dequantize(ty, &q, &mut back).unwrap();
        let e = rel_err(&back, &w);
        assert!(e < tol && e > 0.0, "{ty}: round-trip rel err {e}");
    }
    // Errors, not aborts, for bad requests.
    let mut q = vec![0u8; 100];
    assert!(quantize(GgmlType::Q4_K, &w[..100], 100, &mut q).is_err());
    assert!(quantize(GgmlType::IQ2_XXS, &w, 256, &mut vec![0u8; 66 * 16]).is_err());
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], &mut [0f32; 32]).is_err());
}

/// Naive conv2d, PyTorch layouts: w [oc][ic][kh][kw], x [n][ic][h][w] -> [n][oc][oh][ow].
#[allow(clippy::too_many_arguments)]
fn ref_conv2d(
    w: &[f32],
    x: &[f32],
    (n, ic, h, wd): (usize, usize, usize, usize),
    (oc, kh, kw): (usize, usize, usize),
    s: usize,
    p: usize,
    d: usize,
) -> (Vec<f32>, usize, usize) {
    let oh = (h + 2 * p - d * (kh - 1) - 1) / s + 1;
    let ow = (wd + 2 * p - d * (kw - 1) - 1) / s + 1;
    let mut y = vec![0f32; n * oc * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            for yy in 0..oh {
                for xx in 0..ow {
                    let mut acc = 0f64;
                    for i in 0..ic {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (yy * s + ky * d) as isize - p as isize;
                                let ix = (xx * s + kx * d) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((b * ic + i) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * ic + i) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((b * oc + o) * oh + yy) * ow + xx] = acc as f32;
                }
            }
        }
    }
    (y, oh, ow)
}

#[test]
fn conv2d_against_reference() {
    for (s, p, d, kty, tol) in [
        // ggml's conv_2d goes through im2col + mul_mat; the CPU path rounds through f16
        // somewhere on the way (measured 2.6e-4), hence 1e-3 even for f32 kernels.
        (1usize, 1usize, 1usize, GgmlType::F32, 1e-3f32),
        (2, 1, 1, GgmlType::F32, 1e-3),
        (1, 2, 2, GgmlType::F32, 1e-3),
        (1, 1, 1, GgmlType::F16, 2e-3),
    ] {
        let (n, ic, h, wd, oc, k) = (2usize, 3usize, 7usize, 9usize, 4usize, 3usize);
        let w = rand_vec(oc * ic * k * k, 3);
        let x = rand_vec(n * ic * h * wd, 4);
        let wb = if kty == GgmlType::F16 {
            f16_bytes(&w)
        } else {
            bytemuck::cast_slice(&w).to_vec()
        };
        let inputs = [
            (kty, vec![k as i64, k as i64, ic as i64, oc as i64], wb),
            f32_input(&[wd as i64, h as i64, ic as i64, n as i64], &x),
        ];
        let (y, ne) = run_cpu(&inputs, |ctx, t| {
            ctx.conv_2d(
                t[0],
                t[1],
                (s as i32, s as i32),
                (p as i32, p as i32),
                (d as i32, d as i32),
            )
        });
        let (yr, oh, ow) = ref_conv2d(&w, &x, (n, ic, h, wd), (oc, k, k), s, p, d);
        assert_eq!(ne, [ow as i64, oh as i64, oc as i64, n as i64]);
        let e = rel_err(&y, &yr);
        assert!(e < tol, "conv2d s{s} p{p} d{d} {kty}: rel err {e}");
    }
}

#[test]
fn conv3d_against_reference() {
    // PyTorch layouts: w [oc][ic][kd][kh][kw], x [n][ic][d][h][w] -> [n][oc][od][oh][ow].
    let (n, ic, dd, h, wd, oc, k) = (2usize, 3usize, 5usize, 6usize, 7usize, 4usize, 3usize);
    let (s, p) = (1usize, 1usize);
    let w = rand_vec(oc * ic * k * k * k, 5);
    let x = rand_vec(n * ic * dd * h * wd, 6);
    let inputs = [
        f32_input(&[k as i64, k as i64, k as i64, (ic * oc) as i64], &w),
        f32_input(&[wd as i64, h as i64, dd as i64, (ic * n) as i64], &x),
    ];
    let (y, ne) = run_cpu(&inputs, |ctx, t| {
        ctx.conv_3d(t[0], t[1], ic as i64, [1, 1, 1], [1, 1, 1], [1, 1, 1])
    });
    let (od, oh, ow) = (dd, h, wd);
    assert_eq!(ne, [ow as i64, oh as i64, od as i64, (oc * n) as i64]);
    let mut yr = vec![0f32; n * oc * od * oh * ow];
    for b in 0..n {
        for o in 0..oc {
            for z in 0..od {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let mut acc = 0f64;
                        for i in 0..ic {
                            for kz in 0..k {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let iz = (z * s + kz) as isize - p as isize;
                                        let iy = (yy * s + ky) as isize - p as isize;
                                        let ix = (xx * s + kx) as isize - p as isize;
                                        if iz < 0
                                            || iy < 0
                                            || ix < 0
                                            || iz >= dd as isize
                                            || iy >= h as isize
                                            || ix >= wd as isize
                                        {
                                            continue;
                                        }
                                        let xv = x[(((b * ic + i) * dd + iz as usize) * h
                                            + iy as usize)
                                            * wd
                                            + ix as usize];
                                        let wv = w[(((o * ic + i) * k + kz) * k + ky) * k + kx];
                                        acc += xv as f64 * wv as f64;
                                    }
                                }
                            }
                        }
                        yr[(((b * oc + o) * od + z) * oh + yy) * ow + xx] = acc as f32;
                    }
                }
            }
        }
    }
    // ggml's conv_3d goes through an F16 im2col buffer.
    let e = rel_err(&y, &yr);
    assert!(e < 2e-3, "conv3d rel err {e}");
}

fn ref_norm(x: &[f32], d: usize, eps: f32, rms: bool) -> Vec<f32> {
    x.chunks(d)
        .flat_map(|row| {
            let mean = if rms {
                0.0
            } else {
                row.iter().map(|&v| v as f64).sum::<f64>() / d as f64
            };
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .map(move |&v| ((v as f64 - mean) * inv) as f32)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn layer_norm_and_rms_norm() {
    let (d, rows) = (96usize, 13usize);
    let x: Vec<f32> = rand_vec(d * rows, 7)
        .iter()
        .map(|v| v * 3.0 + 0.5)
        .collect();
    let inp = [f32_input(&[d as i64, rows as i64], &x)];
    let (y, _) = run_cpu(&inp, |ctx, t| ctx.norm(t[0], 1e-6));
    let e = rel_err(&y, &ref_norm(&x, d, 1e-6, false));
    assert!(e < 1e-5, "layer norm rel err {e}");
    let (y, _) = run_cpu(&inp, |ctx, t| ctx.rms_norm(t[0], 1e-6));
    let e = rel_err(&y, &ref_norm(&x, d, 1e-6, true));
    assert!(e < 1e-5, "rms norm rel err {e}");
}

#[test]
fn group_norm_against_reference() {
    let (w, h, c, n, g) = (5usize, 4usize, 8usize, 2usize, 4usize);
    let x: Vec<f32> = rand_vec(w * h * c * n, 8)
        .iter()
        .map(|v| v * 2.0 + 1.0)
        .collect();
    let inp = [f32_input(&[w as i64, h as i64, c as i64, n as i64], &x)];
    let (y, _) = run_cpu(&inp, |ctx, t| ctx.group_norm(t[0], g, 1e-5));
    // Each group of c/g channels of one sample is contiguous: w*h*(c/g) values.
    let yr = ref_norm(&x, w * h * (c / g), 1e-5, false);
    let e = rel_err(&y, &yr);
    assert!(e < 1e-5, "group norm rel err {e}");
}

#[allow(clippy::too_many_arguments)]
/// out[h][q][:] = softmax_k(scale * q.k) v, with q [h][nq][d], k/v [h][nkv][d].
fn ref_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: usize,
    nq: usize,
    nkv: usize,
    heads: usize,
    scale: f32,
) -> Vec<f32> {
    let mut out = vec![0f32; heads * nq * d];
    for h in 0..heads {
        for i in 0..nq {
            let qi = &q[(h * nq + i) * d..][..d];
            let s: Vec<f64> = (0..nkv)
                .map(|j| {
                    let kj = &k[(h * nkv + j) * d..][..d];
                    scale as f64
                        * qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for j in 0..nkv {
                let vj = &v[(h * nkv + j) * d..][..d];
                for c in 0..d {
                    out[(h * nq + i) * d + c] += (e[j] / z * vj[c] as f64) as f32;
                }
            }
        }
    }
    out
}

#[test]
fn softmax_attention_against_reference() {
    let (d, nq, nkv, heads) = (64usize, 33usize, 47usize, 3usize);
    let scale = 1.0 / (d as f32).sqrt();
    let q: Vec<f32> = rand_vec(d * nq * heads, 10)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let k: Vec<f32> = rand_vec(d * nkv * heads, 11)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    let v = rand_vec(d * nkv * heads, 12);
    let inputs = [
        f32_input(&[d as i64, nq as i64, heads as i64], &q),
        f32_input(&[d as i64, nkv as i64, heads as i64], &k),
        f32_input(&[d as i64, nkv as i64, heads as i64], &v),
    ];
    let (y, ne) = run_cpu(&inputs, |ctx, t| {
        let scores = ctx.mul_mat(t[1], t[0]); // [nkv, nq, h]
        let probs = ctx.soft_max_ext(scores, None, scale);
        let vt = ctx.cont(ctx.permute(t[2], [1, 0, 2, 3])); // [nkv, d, h]
        ctx.mul_mat(vt, probs) // [d, nq, h]
    });
    assert_eq!(ne, [d as i64, nq as i64, heads as i64, 1]);
    let e = rel_err(&y, &ref_attention(&q, &k, &v, d, nq, nkv, heads, scale));
    assert!(e < 1e-5, "softmax attention rel err {e}");
}

#[test]
fn flash_attention_against_reference() {
    for d in [64usize, 128] {
        let (nq, nkv, heads) = (37usize, 53usize, 3usize);
        let scale = 1.0 / (d as f32).sqrt();
        let q: Vec<f32> = rand_vec(d * nq * heads, 20)
            .iter()
            .map(|v| v * 2.0)
            .collect();
        let k = round_f16(
            &rand_vec(d * nkv * heads, 21)
                .iter()
                .map(|v| v * 2.0)
                .collect::<Vec<_>>(),
        );
        let v = round_f16(&rand_vec(d * nkv * heads, 22));
        let inputs = [
            f32_input(&[d as i64, nq as i64, heads as i64, 1], &q),
            (
                GgmlType::F16,
                vec![d as i64, nkv as i64, heads as i64, 1],
                f16_bytes(&k),
            ),
            (
                GgmlType::F16,
                vec![d as i64, nkv as i64, heads as i64, 1],
                f16_bytes(&v),
            ),
        ];
        let (y, ne) = run_cpu(&inputs, |ctx, t| {
            ctx.flash_attn_ext(t[0], t[1], t[2], None, scale)
        });
        // Result is [d, heads, nq]: reorder the reference [heads][nq][d] to [nq][heads][d].
        assert_eq!(ne, [d as i64, heads as i64, nq as i64, 1]);
        let r = ref_attention(&q, &k, &v, d, nq, nkv, heads, scale);
        let mut rp = vec![0f32; r.len()];
        for h in 0..heads {
            for i in 0..nq {
                rp[(i * heads + h) * d..][..d].copy_from_slice(&r[(h * nq + i) * d..][..d]);
            }
        }
        let e = rel_err(&y, &rp);
        assert!(e < 5e-3, "flash attention d={d}: rel err {e}");
    }
}

#[test]
fn zero_copy_host_buffer_and_graph_allocator() {
    // Weights live in caller memory (as a memory-mapped file would); only the graph's
    // intermediates are allocated, by the graph allocator.
    let (k, n, m) = (64usize, 16usize, 3usize);
    let w = rand_vec(k * n, 30);
    let x = rand_vec(k * m, 31);
    // 32-byte aligned storage: a Vec<f32> of 4-byte elements is not guaranteed to be, so
    // over-allocate u64s and pick an aligned window.
    let mut store = vec![0u64; (k * n * 4) / 8 + 8];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut store);
    let off = bytes.as_ptr().align_offset(32);
    bytes[off..off + k * n * 4].copy_from_slice(bytemuck::cast_slice(&w));
    let weights = &bytes[off..off + k * n * 4];
    let mut wbuf = Buffer::from_host_bytes(weights).unwrap();
    assert!(wbuf.is_host());
    assert!(
        wbuf.host_bytes_mut().is_none(),
        "caller bytes handed out mutably"
    );
    assert!(
        Buffer::from_host_bytes(&bytes[off + 1..off + 65]).is_err(),
        "misaligned accepted"
    );

    let ctx = Context::new_meta(16, 64).unwrap();
    let wt = ctx.new_f32(&[k as i64, n as i64]);
    wbuf.place(wt, 0).unwrap();
    assert!(
        wbuf.place(ctx.new_f32(&[k as i64, n as i64 + 1]), 0)
            .is_err(),
        "overflow accepted"
    );
    let xt = ctx.new_f32(&[k as i64, m as i64]).set_input();
    let y = ctx.scale(ctx.mul_mat(wt, xt), 2.0).set_output();
    let mut g = ctx.new_graph(64);
    g.expand(y);
    let mut backend = Backend::cpu(1).unwrap();
    let mut galloc = backend.graph_allocator().unwrap();
    galloc.reserve(&g).unwrap();
    galloc.alloc_graph(&g).unwrap();
    assert!(galloc.buffer_size() > 0);
    tensor_set_f32(xt, &x).unwrap();
    backend.compute(&g).unwrap();
    let got = tensor_get_f32(y).unwrap();
    let want: Vec<f32> = ref_matmul(&w, &x, k, n, m)
        .iter()
        .map(|v| v * 2.0)
        .collect();
    assert!(rel_err(&got, &want) < 1e-5);
    // The weights were used in place: the tensor's data pointer is inside the caller's bytes.
    assert!(tensor_set_f32(xt, &x[..3]).is_err());
}

#[test]
fn devices_include_cpu() {
    let devs = devices();
    assert!(
        devs.iter().any(|d| d.kind() == DeviceKind::Cpu),
        "no CPU device"
    );
    let b = Backend::from_spec("cpu", 1).unwrap();
    assert!(b.is_cpu());
    let err = Backend::from_spec("cuda:7", 1)
        .err()
        .expect("cuda:7 should not exist here");
    assert!(err.to_string().contains("no device"), "{err}");
}

#[test]
fn conv2d_direct_against_reference() {
    for (s, p, d, kty, tol) in [
        // The direct kernel gathers patches in the kernel's type: exact F32 for F32 kernels.
        (1usize, 1usize, 1usize, GgmlType::F32, 1e-6f32),
        (2, 0, 1, GgmlType::F32, 1e-6),
        (1, 2, 2, GgmlType::F32, 1e-6),
        (1, 1, 1, GgmlType::F16, 2e-3),
    ] {
        let (n, ic, h, wd, oc, k) = (2usize, 3usize, 7usize, 9usize, 4usize, 3usize);
        let w = rand_vec(oc * ic * k * k, 5);
        let x = rand_vec(n * ic * h * wd, 6);
        let wb = if kty == GgmlType::F16 {
            f16_bytes(&w)
        } else {
            bytemuck::cast_slice(&w).to_vec()
        };
        let inputs = [
            (kty, vec![k as i64, k as i64, ic as i64, oc as i64], wb),
            f32_input(&[wd as i64, h as i64, ic as i64, n as i64], &x),
        ];
        let (y, ne) = run_cpu(&inputs, |ctx, t| {
            ctx.conv_2d_direct(
                t[0],
                t[1],
                (s as i32, s as i32),
                (p as i32, p as i32),
                (d as i32, d as i32),
            )
        });
        let (yr, oh, ow) = ref_conv2d(&w, &x, (n, ic, h, wd), (oc, k, k), s, p, d);
        assert_eq!(ne, [ow as i64, oh as i64, oc as i64, n as i64]);
        let e = rel_err(&y, &yr);
        assert!(e < tol, "conv2d_direct s{s} p{p} d{d} {kty}: rel err {e}");
    }
}

#[test]
fn pad_upscale_nearest_and_clamp() {
    let (w, h, c) = (3usize, 2usize, 2usize);
    let x: Vec<f32> = (0..w * h * c).map(|i| i as f32 - 5.0).collect();
    let inputs = [f32_input(&[w as i64, h as i64, c as i64], &x)];

    let (y, ne) = run_cpu(&inputs, |ctx, t| ctx.pad(t[0], [1, 1, 0, 0]));
    assert_eq!(ne, [4, 3, 2, 1]);
    for ci in 0..c {
        for yy in 0..3 {
            for xx in 0..4 {
                let want = if xx < w && yy < h {
                    x[(ci * h + yy) * w + xx]
                } else {
                    0.0
                };
                assert_eq!(y[(ci * 3 + yy) * 4 + xx], want, "pad at {ci},{yy},{xx}");
            }
        }
    }

    let (y, ne) = run_cpu(&inputs, |ctx, t| ctx.upscale_nearest(t[0], 2));
    assert_eq!(ne, [6, 4, 2, 1]);
    for ci in 0..c {
        for yy in 0..4 {
            for xx in 0..6 {
                let want = x[(ci * h + yy / 2) * w + xx / 2];
                assert_eq!(y[(ci * 4 + yy) * 6 + xx], want, "upscale at {ci},{yy},{xx}");
            }
        }
    }

    let (y, _) = run_cpu(&inputs, |ctx, t| ctx.clamp(t[0], -1.0, 2.5));
    let want: Vec<f32> = x.iter().map(|v| v.clamp(-1.0, 2.5)).collect();
    assert_eq!(y, want);
}

#[test]
fn staged_uploads_copy_the_same_bytes_in_pieces() {
    // A 1000-byte tensor copied through a 7-byte staging buffer (the last piece short) arrives
    // exactly as a direct copy does; a CPU backend's staging buffer is plain host memory.
    let src_bytes: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut src = TensorSet::new(1).unwrap();
    src.add_owned("w", GgmlType::I8, &[1000], &src_bytes)
        .unwrap();
    let backend = Backend::cpu(1).unwrap();
    let mut dst = TensorSet::new(2).unwrap();
    let buf = dst.adopt(backend.alloc_buffer(2048).unwrap());
    dst.add_in("direct", GgmlType::I8, &[1000], buf, 0).unwrap();
    dst.add_in("staged", GgmlType::I8, &[1000], buf, 1024)
        .unwrap();
    let w = src.get("w").unwrap();
    Upload::new(w, dst.get("direct").unwrap())
        .unwrap()
        .run()
        .unwrap();
    let cpu = backend
        .device()
        .expect("the CPU backend has a registry device");
    let mut staging = cpu.host_buffer(7).unwrap();
    assert!(staging.is_host());
    let up = Upload::new(w, dst.get("staged").unwrap()).unwrap();
    up.run_staged(&mut staging.host_bytes_mut().unwrap()[..7])
        .unwrap();
    assert_eq!(tensor_get(dst.get("direct").unwrap()).unwrap(), src_bytes);
    assert_eq!(tensor_get(dst.get("staged").unwrap()).unwrap(), src_bytes);
    // An upload needs memory behind its destination and equal sizes.
    let mut other = TensorSet::new(1).unwrap();
    other
        .add_owned("small", GgmlType::I8, &[10], &[0; 10])
        .unwrap();
    assert!(Upload::new(w, other.get("small").unwrap()).is_err());
}

#[test]
fn deferred_tensors_are_made_by_their_fill_when_uploaded() {
    // A deferred tensor's bytes come from its fill, never from the placeholder it points at:
    // directly into a host destination, through a staging buffer larger than the tensor, and
    // through one smaller (made in a temporary buffer, sent in pieces). A failing fill is an
    // error naming the tensor.
    let want: Vec<u8> = (0..1000u32).map(|i| (i * 37 % 251) as u8).collect();
    let placeholder = vec![0u8; 1024 + 32];
    let off = placeholder.as_ptr().align_offset(32);
    let region = &placeholder[off..off + 1024];
    let mut src = TensorSet::new(2).unwrap();
    let made = want.clone();
    src.add_deferred(
        "w",
        GgmlType::I8,
        &[1000],
        region,
        Box::new(move |out: &mut [u8]| {
            out.copy_from_slice(&made);
            Ok(())
        }),
    )
    .unwrap();
    src.add_deferred(
        "bad",
        GgmlType::I8,
        &[1000],
        region,
        Box::new(|_: &mut [u8]| Err("no scale".into())),
    )
    .unwrap();
    assert_eq!(src.deferred_bytes(), 2000);
    assert!(src.fill_of("w").is_some());
    let backend = Backend::cpu(1).unwrap();
    let mut dst = TensorSet::new(4).unwrap();
    let buf = dst.adopt(backend.alloc_buffer(4096).unwrap());
    for (k, n) in ["direct", "big", "small", "bad"].iter().enumerate() {
        dst.add_in(n, GgmlType::I8, &[1000], buf, k * 1024).unwrap();
    }
    let up = |from: &str, to: &str| {
        Upload::made(
            src.get(from).unwrap(),
            src.fill_of(from).unwrap(),
            dst.get(to).unwrap(),
        )
        .unwrap()
    };
    up("w", "direct").run().unwrap();
    let mut big = vec![0u8; 2000];
    up("w", "big").run_staged(&mut big).unwrap();
    let mut small = vec![0u8; 7];
    up("w", "small").run_staged(&mut small).unwrap();
    for n in ["direct", "big", "small"] {
        assert_eq!(tensor_get(dst.get(n).unwrap()).unwrap(), want, "{n}");
    }
    assert!(
        region.iter().all(|&b| b == 0),
        "the placeholder is never written"
    );
    let e = up("bad", "bad").run().unwrap_err().to_string();
    assert!(e.contains("'bad'") && e.contains("no scale"), "{e}");
}

#[test]
fn the_cpu_backend_uses_host_weights_and_supports_every_op_of_a_graph() {
    let mut set = TensorSet::new(1).unwrap();
    set.add_owned("w", GgmlType::F32, &[4, 4], &[0; 64])
        .unwrap();
    let backend = Backend::cpu(1).unwrap();
    assert_eq!(set.unusable_by(&backend), None);
    assert_eq!(backend.alloc_size(set.get("w").unwrap()), 64);
    let ctx = Context::new_meta(8, 16).unwrap();
    let x = ctx.new_f32(&[4, 2]);
    let y = ctx.gelu(ctx.mul_mat(set.get("w").unwrap(), x));
    let mut g = ctx.new_graph(16);
    g.expand(y);
    assert!(backend.unsupported_ops(&g).is_empty());
}
