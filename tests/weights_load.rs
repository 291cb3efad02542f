//! Loading weights under canonical names: in place from the map where ggml can compute with
//! the stored type, converted copies otherwise; diffusers names mapped to the original layout.

mod common;

use common::*;
use nijigen::ggml::{self, Backend, Context, GgmlType};
use nijigen::runtime::WeightStore;

/// Runs y = W x on the CPU for a weight from a set; returns y.
fn matvec(w: ggml::Tensor<'_>, x: &[f32]) -> Vec<f32> {
    let ctx = Context::new_meta(8, 32).unwrap();
    let ne = w.ne();
    let xt = ctx.new_f32(&[ne[0], 1]).set_input();
    let y = ctx.mul_mat(w, xt).set_output();
    let mut g = ctx.new_graph(32);
    g.expand(y);
    let mut b = Backend::cpu(2).unwrap();
    let mut a = b.graph_allocator().unwrap();
    a.alloc_graph(&g).unwrap();
    ggml::tensor_set_f32(xt, x).unwrap();
    b.compute(&g).unwrap();
    ggml::tensor_get_f32(y).unwrap()
}

#[test]
fn bf16_wan_checkpoint_is_used_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan.safetensors");
    let tensors = tiny_wan_i2v();
    write_safetensors(&path, &tensors, St::Bf16);
    let store = WeightStore::open_path(&path).unwrap();
    assert_eq!(store.detection().architecture.name(), "wan-dit-i2v");
    let set = store.load_cpu(|_| true).unwrap();
    assert_eq!(set.len(), tensors.len());
    assert_eq!(set.copied_bytes(), 0, "bf16 weights must not be copied");
    // 5-D patch embedding folded to ggml's conv_3d kernel layout.
    assert_eq!(
        set.get("patch_embedding.weight").unwrap().ne(),
        [2, 2, 1, 36 * 256]
    );
    assert_eq!(set.get("blocks.0.modulation").unwrap().ne(), [256, 6, 1, 1]);
    // A real op on a mapped weight.
    let (_, shape, vals) = tensors
        .iter()
        .find(|t| t.0 == "blocks.1.ffn.0.weight")
        .unwrap();
    let w = set.get("blocks.1.ffn.0.weight").unwrap();
    assert_eq!(w.ty(), GgmlType::BF16);
    let x = rand_vec(shape[1] as usize, 3);
    let got = matvec(w, &x);
    let want: Vec<f32> = (0..shape[0] as usize)
        .map(|r| {
            (0..shape[1] as usize)
                .map(|c| half::bf16::from_f32(vals[r * shape[1] as usize + c]).to_f32() * x[c])
                .sum()
        })
        .collect();
    assert!(rel_err(&got, &want) < 1e-2, "{}", rel_err(&got, &want));
}

/// (name, shape) from a names fixture.
fn fixture_list(file: &str) -> Vec<(String, Vec<u64>)> {
    let text = std::fs::read_to_string(format!("tests/fixtures/names/{file}")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (n, s) = l.split_once('\t').unwrap();
            let shape = if s.trim().is_empty() {
                vec![]
            } else {
                s.split(',').map(|d| d.trim().parse().unwrap()).collect()
            };
            (n.to_string(), shape)
        })
        .collect()
}

#[test]
fn diffusers_wan_names_load_under_original_names() {
    let list = fixture_list("wan_dit_i2v_diffusers.txt");
    let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = list
        .iter()
        .enumerate()
        .map(|(i, (n, s))| {
            (
                n.as_str(),
                s.clone(),
                rand_vec(s.iter().product::<u64>() as usize, i as u64),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    write_safetensors(&path, &tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    for name in [
        "blocks.0.self_attn.q.weight",
        "blocks.1.cross_attn.k_img.weight",
        "blocks.0.norm3.weight",
        "head.head.weight",
        "head.modulation",
        "img_emb.proj.1.weight",
        "time_projection.1.weight",
        "patch_embedding.weight",
    ] {
        assert!(
            set.get(name).is_some(),
            "{name} missing; have {:?}",
            &set.names()[..8]
        );
    }
    // Values are the stored ones (the diffusers to_q is the original self_attn.q).
    let (_, shape, vals) = tensors
        .iter()
        .find(|t| t.0 == "blocks.0.attn1.to_q.weight")
        .unwrap();
    let x = rand_vec(shape[1] as usize, 5);
    let got = matvec(set.get("blocks.0.self_attn.q.weight").unwrap(), &x);
    let want: Vec<f32> = (0..shape[0] as usize)
        .map(|r| {
            (0..shape[1] as usize)
                .map(|c| vals[r * shape[1] as usize + c] * x[c])
                .sum()
        })
        .collect();
    assert!(rel_err(&got, &want) < 1e-5);
}

#[test]
fn f8_and_f64_are_converted_other_types_mapped() {
    let store = WeightStore::open_path(std::path::Path::new(
        "tests/fixtures/safetensors/all_dtypes.safetensors",
    ))
    .unwrap();
    let file = store.file();
    let set = store.load_cpu(|_| true).unwrap();
    assert!(set.copied_bytes() > 0);
    for t in file.tensors() {
        if t.numel() == 0 {
            continue;
        }
        let Some(g) = set.get(&t.name) else { continue };
        let want = match t.dtype.name().as_str() {
            "f8_e4m3" | "f8_e5m2" => GgmlType::F16,
            "f64" | "i64" => GgmlType::F32,
            _ => t.dtype.ggml().unwrap(),
        };
        assert_eq!(g.ty(), want, "{}", t.name);
        // Converted values equal the exact conversion (f8 values are exact in f16).
        if want != t.dtype.ggml().unwrap_or(GgmlType::F32) || t.dtype.ggml().is_none() {
            let bytes = ggml::tensor_get(g).unwrap();
            let mut got = vec![0f32; t.numel() as usize];
            nijigen::formats::float::to_f32(nijigen::formats::DType::Ggml(want), &bytes, &mut got)
                .unwrap();
            let exact = nijigen::formats::float::to_f32_vec(t.dtype, file.data(t)).unwrap();
            for (a, b) in got.iter().zip(&exact) {
                assert!(
                    a == b || (a.is_nan() && b.is_nan()) || (b.abs() > 65504.0),
                    "{}: {a} vs {b}",
                    t.name
                );
            }
        }
    }
}

#[test]
fn hf_big_g_qkv_are_fused_and_projection_transposed() {
    let list = fixture_list("clip_g_hf.txt");
    let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = list
        .iter()
        .enumerate()
        .map(|(i, (n, s))| {
            (
                n.as_str(),
                s.clone(),
                rand_vec(s.iter().product::<u64>() as usize, i as u64 + 100),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip_g.safetensors");
    write_safetensors(&path, &tensors, St::F16);
    let store = WeightStore::open_path(&path).unwrap();
    assert_eq!(store.detection().architecture.name(), "clip-g");
    let set = store.load_cpu(|_| true).unwrap();
    let fused = set
        .get("transformer.resblocks.0.attn.in_proj_weight")
        .expect("fused in_proj");
    assert_eq!(fused.ne(), [128, 384, 1, 1]);
    assert_eq!(fused.ty(), GgmlType::F16);
    // Rows 0..128 are q, 128..256 k, 256..384 v, byte for byte.
    let bytes = ggml::tensor_get(fused).unwrap();
    let row = 128 * 2;
    for (k, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let name = format!("text_model.encoder.layers.0.self_attn.{part}.weight");
        let vals = &tensors.iter().find(|t| t.0 == name).unwrap().2;
        let want: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(
            &bytes[k * 128 * row..(k + 1) * 128 * row],
            &want[..],
            "{part}"
        );
    }
    // open_clip's text_projection is [width, proj]: the transpose of HF's [proj, width].
    let proj = set.get("text_projection").expect("text_projection");
    assert_eq!(proj.ne(), [96, 128, 1, 1]);
    let vals = &tensors
        .iter()
        .find(|t| t.0 == "text_projection.weight")
        .unwrap()
        .2;
    let got = ggml::tensor_get_f32(proj).unwrap();
    for i in 0..96 {
        for j in 0..128 {
            assert_eq!(
                got[j * 96 + i],
                half::f16::from_f32(vals[i * 128 + j]).to_f32()
            );
        }
    }
}

/// The metadata-only load gives every tensor of the real load with the same type and shape,
/// and no data: nothing copied or converted.
fn assert_meta_matches(store: &WeightStore) {
    let real = store.load_cpu(|_| true).unwrap();
    let meta = store.load_meta(|_| true).unwrap();
    assert_eq!(meta.names().len(), real.names().len());
    for n in real.names() {
        let (r, m) = (real.get(n).unwrap(), meta.get(n).expect(n));
        assert_eq!((m.ty(), m.ne()), (r.ty(), r.ne()), "{n}");
    }
    assert_eq!(meta.copied_bytes(), 0, "the metadata load copies nothing");
    assert_eq!(meta.data_bytes(), real.data_bytes());
    // A filter applies as in the real load.
    let some = store.load_meta(|n| n.contains("bias")).unwrap();
    let want = store.load_cpu(|n| n.contains("bias")).unwrap();
    assert_eq!(some.names(), want.names());
}

#[test]
fn metadata_load_has_the_real_types_and_shapes_without_data() {
    // f8 and f64 (converted), the other types in place.
    let store = WeightStore::open_path(std::path::Path::new(
        "tests/fixtures/safetensors/all_dtypes.safetensors",
    ))
    .unwrap();
    assert!(store.load_cpu(|_| true).unwrap().copied_bytes() > 0);
    assert_meta_matches(&store);
    // Fused parts and a transposed projection.
    let dir = tempfile::tempdir().unwrap();
    let store = clip_g_with_shapes(dir.path(), |_, s| s.to_vec());
    assert_meta_matches(&store);
}

/// The tiny HF bigG of the names fixture in F16, each tensor of the shape `shape` gives it.
fn clip_g_with_shapes(
    dir: &std::path::Path,
    shape: impl Fn(&str, &[u64]) -> Vec<u64>,
) -> WeightStore {
    let list = fixture_list("clip_g_hf.txt");
    let tensors: Vec<(&str, Vec<u64>, Vec<f32>)> = list
        .iter()
        .map(|(n, s)| {
            let s = shape(n, s);
            let values = vec![0.5; s.iter().product::<u64>() as usize];
            (n.as_str(), s, values)
        })
        .collect();
    let path = dir.join("clip_g.safetensors");
    write_safetensors(&path, &tensors, St::F16);
    WeightStore::open_path(&path).unwrap()
}

/// A 0-D tensor where parts are fused along their outermost dim is an error naming it, not a
/// panic, in both loads.
#[test]
fn scalar_parts_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = clip_g_with_shapes(dir.path(), |n, s| {
        let qkv = n.starts_with("text_model.encoder.layers.0.self_attn.")
            && n.ends_with("_proj.weight")
            && !n.contains("out_proj");
        if qkv {
            vec![]
        } else {
            s.to_vec()
        }
    });
    assert_eq!(store.detection().architecture.name(), "clip-g");
    for e in [
        store.load_cpu(|_| true).err().expect("load_cpu refuses"),
        store.load_meta(|_| true).err().expect("load_meta refuses"),
    ] {
        let e = e.to_string();
        assert!(e.contains("scalar"), "{e}");
        assert!(e.contains("layers.0.self_attn"), "{e}");
    }
    // The other tensors still load.
    let rest = store
        .load_cpu(|n| !n.starts_with("transformer.resblocks.0.attn.in_proj_weight"))
        .unwrap();
    assert!(rest
        .get("transformer.resblocks.1.attn.in_proj_weight")
        .is_some());
}
