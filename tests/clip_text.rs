//! CLIP text encoders (CLIP-L and bigG layouts) against transformers on tiny models.
//!
//! The weights are regenerated here from the recipe in tests/fixtures/clip_text/index.json
//! (a counter-based hash that tools/reference/make_clip_text_fixtures.py uses too); the
//! fixture holds transformers' outputs for two 77-token chunks.

mod common;

use std::path::Path;

use common::{hash_values, rel_err, write_safetensors, St};
use nijigen::ggml::{GgmlType, TensorSet};
use nijigen::models::{ClipError, ClipLayout, ClipTextModel};
use nijigen::nn::Activation;
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/clip_text";

struct Fixture {
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
    tokens: Vec<u32>,
    penultimate: Vec<f32>,
    last: Vec<f32>,
    pooled: Option<Vec<f32>>,
}

fn read_f32(entry: &Value) -> Vec<f32> {
    let file = entry["file"].as_str().unwrap();
    let bytes = std::fs::read(Path::new(DIR).join(file)).unwrap();
    let want: u64 = entry["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .product();
    assert_eq!(bytes.len() as u64, want * 4, "{file}");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn fixture(kind: &str) -> Fixture {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let m = index["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap();
    let tensors = m["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape: Vec<u64> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            let n = shape.iter().product::<u64>() as usize;
            let vals = hash_values(
                n,
                t["seed"].as_u64().unwrap(),
                t["scale"].as_f64().unwrap() as f32,
                t["offset"].as_f64().unwrap() as f32,
            );
            (t["name"].as_str().unwrap().to_string(), shape, vals)
        })
        .collect();
    let tokens = m["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c.as_array().unwrap().iter())
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    Fixture {
        tensors,
        tokens,
        penultimate: read_f32(&m["penultimate"]),
        last: read_f32(&m["last"]),
        pooled: m.get("pooled").map(read_f32),
    }
}

fn write(path: &Path, tensors: &[(String, Vec<u64>, Vec<f32>)], ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// HF bigG tensors under open_clip names, as SDXL checkpoints store them.
fn to_open_clip(tensors: &[(String, Vec<u64>, Vec<f32>)]) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    let get = |n: &str| {
        tensors
            .iter()
            .find(|t| t.0 == n || t.0 == format!("text_model.{n}"))
            .unwrap_or_else(|| panic!("{n}"))
            .clone()
    };
    let rename = |from: &str, to: &str| {
        let (_, s, v) = get(from);
        (to.to_string(), s, v)
    };
    let mut out = vec![
        rename(
            "embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        rename(
            "embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        rename("final_layer_norm.weight", "ln_final.weight"),
        rename("final_layer_norm.bias", "ln_final.bias"),
    ];
    let (_, s, v) = get("text_projection.weight");
    let (p, w) = (s[0] as usize, s[1] as usize);
    let mut tv = vec![0f32; p * w];
    for i in 0..p {
        for j in 0..w {
            tv[j * p + i] = v[i * w + j];
        }
    }
    out.push(("text_projection".into(), vec![w as u64, p as u64], tv));
    let mut layer = 0;
    while tensors
        .iter()
        .any(|t| t.0.contains(&format!("encoder.layers.{layer}.")))
    {
        let hf = |s: &str| format!("encoder.layers.{layer}.{s}");
        let oc = |s: &str| format!("transformer.resblocks.{layer}.{s}");
        for wb in ["weight", "bias"] {
            let mut shape = None;
            let mut vals = Vec::new();
            for part in ["q_proj", "k_proj", "v_proj"] {
                let (_, s, v) = get(&hf(&format!("self_attn.{part}.{wb}")));
                shape = Some(s);
                vals.extend(v);
            }
            let mut shape = shape.unwrap();
            shape[0] *= 3;
            out.push((oc(&format!("attn.in_proj_{wb}")), shape, vals));
            for (from, to) in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                out.push(rename(
                    &hf(&format!("{from}.{wb}")),
                    &oc(&format!("{to}.{wb}")),
                ));
            }
        }
        layer += 1;
    }
    out
}

struct Errors {
    penultimate: f32,
    last: f32,
    pooled: Option<f32>,
}

/// Writes `tensors` as `ty`, loads them through the weight store, runs the model, compares.
fn run(
    fx: &Fixture,
    tensors: &[(String, Vec<u64>, Vec<f32>)],
    ty: St,
    check: impl Fn(&nijigen::models::ClipTextConfig),
) -> Errors {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text_encoder.safetensors");
    write(&path, tensors, ty);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = ClipTextModel::new(&set, "", 2).unwrap();
    check(model.config());
    let out = model.forward(&fx.tokens).unwrap();
    assert_eq!((out.chunks, out.width), (2, 128));
    let pooled = match (&out.pooled, &fx.pooled) {
        (Some(got), Some(want)) => Some(rel_err(got, want)),
        (None, None) => None,
        (got, want) => panic!("pooled: got {:?}, want {:?}", got.is_some(), want.is_some()),
    };
    assert_eq!(out.penultimate.len(), fx.penultimate.len());
    assert_eq!(out.last.len(), fx.last.len());
    Errors {
        penultimate: rel_err(&out.penultimate, &fx.penultimate),
        last: rel_err(&out.last, &fx.last),
        pooled,
    }
}

fn assert_within(kind: &str, e: &Errors, tol: f32) {
    eprintln!(
        "{kind}: rel err penultimate {:.2e}, last {:.2e}, pooled {:?}",
        e.penultimate, e.last, e.pooled
    );
    assert!(e.penultimate < tol, "{kind} penultimate {}", e.penultimate);
    assert!(e.last < tol, "{kind} last {}", e.last);
    if let Some(p) = e.pooled {
        assert!(p < tol, "{kind} pooled {p}");
    }
}

fn is_clip_l(c: &nijigen::models::ClipTextConfig) {
    assert_eq!(c.layout, ClipLayout::Hf);
    assert_eq!(c.activation, Activation::QuickGelu);
    assert_eq!(
        (c.width, c.layers, c.heads, c.ffn_dim, c.vocab),
        (128, 3, 2, 256, 49408)
    );
    assert_eq!(c.projection_dim, None);
}

fn is_big_g(c: &nijigen::models::ClipTextConfig) {
    assert_eq!(c.layout, ClipLayout::OpenClip);
    assert_eq!(c.activation, Activation::Gelu);
    assert_eq!((c.width, c.layers, c.heads, c.ffn_dim), (128, 3, 2, 512));
    assert_eq!(c.projection_dim, Some(96));
}

#[test]
fn clip_l_f32_matches_transformers() {
    let fx = fixture("clip_l");
    let e = run(&fx, &fx.tensors, St::F32, is_clip_l);
    assert_within("clip_l f32", &e, 1e-4);
}

#[test]
fn clip_l_f16_matches_transformers() {
    let fx = fixture("clip_l");
    let e = run(&fx, &fx.tensors, St::F16, is_clip_l);
    assert_within("clip_l f16", &e, 1e-2);
}

#[test]
fn big_g_hf_names_f32_matches_transformers() {
    let fx = fixture("clip_g");
    let e = run(&fx, &fx.tensors, St::F32, is_big_g);
    assert_within("clip_g hf f32", &e, 1e-4);
}

#[test]
fn big_g_open_clip_names_f32_matches_transformers() {
    let fx = fixture("clip_g");
    let e = run(&fx, &to_open_clip(&fx.tensors), St::F32, is_big_g);
    assert_within("clip_g open_clip f32", &e, 1e-4);
}

#[test]
fn big_g_f16_matches_transformers() {
    let fx = fixture("clip_g");
    let e = run(&fx, &to_open_clip(&fx.tensors), St::F16, is_big_g);
    assert_within("clip_g open_clip f16", &e, 1e-2);
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let fx = fixture("clip_l");
    let dropped = "encoder.layers.1.mlp.fc2.weight";
    let tensors: Vec<_> = fx
        .tensors
        .iter()
        .filter(|t| t.0 != dropped)
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip_l.safetensors");
    write(&path, &tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let err = match ClipTextModel::new(&set, "", 1) {
        Err(e) => e,
        Ok(_) => panic!("a file without {dropped} was accepted"),
    };
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("text_model.encoder.layers.1.mlp.fc2.weight"),
        "{msg}"
    );
}

#[test]
fn bad_token_counts_and_ids_are_errors() {
    let fx = fixture("clip_l");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip_l.safetensors");
    write(&path, &fx.tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = ClipTextModel::new(&set, "", 1).unwrap();
    assert!(matches!(
        model.forward(&fx.tokens[..76]),
        Err(ClipError::Tokens(_))
    ));
    let mut bad = fx.tokens[..77].to_vec();
    bad[3] = 49408;
    assert!(matches!(model.forward(&bad), Err(ClipError::Tokens(_))));
    // A file that is not a CLIP text encoder under the prefix.
    assert!(matches!(
        ClipTextModel::new(&set, "cond.", 1),
        Err(ClipError::UnknownLayout { .. })
    ));
}

#[test]
fn both_encoders_from_one_set_under_sdxl_checkpoint_prefixes() {
    let (l, g) = (fixture("clip_l"), fixture("clip_g"));
    let mut tensors: Vec<(String, Vec<u64>, Vec<f32>)> = l
        .tensors
        .iter()
        .map(|(n, s, v)| {
            let n = n.strip_prefix("text_model.").unwrap_or(n);
            (
                format!("conditioner.embedders.0.transformer.text_model.{n}"),
                s.clone(),
                v.clone(),
            )
        })
        .collect();
    tensors.extend(
        to_open_clip(&g.tensors)
            .into_iter()
            .map(|(n, s, v)| (format!("conditioner.embedders.1.model.{n}"), s, v)),
    );
    // The weight store keeps these prefixes for SDXL checkpoints (with a UNet); here the set is
    // built directly, as a checkpoint's text encoders would be loaded.
    let mut set = TensorSet::new(tensors.len()).unwrap();
    for (name, shape, vals) in &tensors {
        let ne: Vec<i64> = shape.iter().rev().map(|&d| d as i64).collect();
        set.add_owned(name, GgmlType::F32, &ne, bytemuck::cast_slice(vals))
            .unwrap();
    }

    let mut clip_l = ClipTextModel::new(&set, "conditioner.embedders.0.transformer.", 2).unwrap();
    is_clip_l(clip_l.config());
    let mut clip_g = ClipTextModel::new(&set, "conditioner.embedders.1.model.", 2).unwrap();
    is_big_g(clip_g.config());

    // One chunk, then two, on the same model: chunks are independent.
    let chunk = 77 * 128;
    let one = clip_g.forward(&g.tokens[..77]).unwrap();
    assert!(rel_err(&one.penultimate, &g.penultimate[..chunk]) < 1e-4);
    assert!(
        rel_err(
            one.pooled.as_ref().unwrap(),
            &g.pooled.as_ref().unwrap()[..96]
        ) < 1e-4
    );
    let two = clip_g.forward(&g.tokens).unwrap();
    assert!(rel_err(&two.penultimate, &g.penultimate) < 1e-4);
    let out = clip_l.forward(&l.tokens).unwrap();
    assert!(rel_err(&out.penultimate, &l.penultimate) < 1e-4);
    assert!(rel_err(&out.last, &l.last) < 1e-4);
}

#[test]
fn wrong_shape_is_an_error_naming_the_tensor() {
    let fx = fixture("clip_l");
    let bad = "encoder.layers.2.layer_norm2.bias";
    let tensors: Vec<_> = fx
        .tensors
        .iter()
        .map(|(n, s, v)| {
            if n == bad {
                (n.clone(), vec![127], v[..127].to_vec())
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip_l.safetensors");
    write(&path, &tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let msg = match ClipTextModel::new(&set, "", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a {bad} of 127 values was accepted"),
    };
    assert!(
        msg.contains("text_model.encoder.layers.2.layer_norm2.bias") && msg.contains("[128]"),
        "{msg}"
    );
}
