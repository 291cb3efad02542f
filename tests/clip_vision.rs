//! CLIP vision encoder (CLIP-H/14 layout, Wan2.1 I2V) and its preprocessing against
//! transformers / torch on a tiny model.
//!
//! Weights and images are regenerated here from the recipe in
//! tests/fixtures/clip_vision/index.json (the counter-based hash that
//! tools/reference/make_clip_vision_fixtures.py uses too); the fixture holds the outputs.

mod common;

use std::path::Path;

use common::{rel_err, write_safetensors, St};
use nijigen::ggml::{GgmlType, TensorSet};
use nijigen::models::clip_vision::{
    preprocess_comfyui, preprocess_wan, resize_bicubic, Preprocess,
};
use nijigen::models::{ClipVision, ClipVisionError};
use nijigen::nn::Activation;
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/clip_vision";

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

/// Same generator as the Python script: splitmix64 of (seed * golden + i), in [-1, 1).
fn hash_unit(n: usize, seed: u64) -> Vec<f32> {
    nijigen::demo::hash_values(n, seed, 1.0, 0.0)
}

/// RGB u8 [h, w, 3] as the Python script draws it.
fn hash_image(w: usize, h: usize, seed: u64) -> Vec<u8> {
    hash_unit(w * h * 3, seed)
        .into_iter()
        .map(|u| ((u + 1.0) * 128.0).floor() as u8)
        .collect()
}

fn index() -> Value {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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

fn usize_of(v: &Value) -> usize {
    v.as_u64().unwrap() as usize
}

struct Fixture {
    /// Under transformers 5 names (no `vision_model.` wrapper).
    tensors: Tensors,
    image: (usize, usize, u64),
    pixels: Vec<f32>,
    penultimate: Vec<f32>,
    layer1: Vec<f32>,
}

/// The weights of one fixture model, regenerated from its recipe.
fn model_tensors(m: &Value) -> Tensors {
    m["tensors"]
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
            let (scale, offset) = (
                t["scale"].as_f64().unwrap() as f32,
                t["offset"].as_f64().unwrap() as f32,
            );
            let vals = hash_unit(n, t["seed"].as_u64().unwrap())
                .into_iter()
                .map(|u| u * scale + offset)
                .collect();
            (t["name"].as_str().unwrap().to_string(), shape, vals)
        })
        .collect()
}

fn fixture() -> Fixture {
    let index = index();
    let m = &index["models"][0];
    let tensors = model_tensors(m);
    let img = &m["image"];
    Fixture {
        tensors,
        image: (
            usize_of(&img["w"]),
            usize_of(&img["h"]),
            img["seed"].as_u64().unwrap(),
        ),
        pixels: read_f32(&m["pixels"]),
        penultimate: read_f32(&m["penultimate"]),
        layer1: read_f32(&m["layer1"]),
    }
}

/// The tensors as `clip_vision_h.safetensors` names them.
fn with_wrapper(tensors: &Tensors) -> Tensors {
    tensors
        .iter()
        .map(|(n, s, v)| (format!("vision_model.{n}"), s.clone(), v.clone()))
        .collect()
}

fn write(path: &Path, tensors: &Tensors, ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// A set built directly from the tensors (F32), without the weight store.
fn direct_set(tensors: &Tensors) -> TensorSet<'static> {
    let mut set = TensorSet::new(tensors.len()).unwrap();
    for (name, shape, vals) in tensors {
        let ne: Vec<i64> = shape.iter().rev().map(|&d| d as i64).collect();
        set.add_owned(name, GgmlType::F32, &ne, bytemuck::cast_slice(vals))
            .unwrap();
    }
    set
}

/// Writes `tensors` as `ty`, loads them through the weight store, runs `f` on the model.
fn with_model<R>(tensors: &Tensors, ty: St, f: impl FnOnce(&mut ClipVision<'_>) -> R) -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip_vision_h.safetensors");
    write(&path, tensors, ty);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = ClipVision::new(&set, "", 2).unwrap();
    f(&mut model)
}

fn check_config(model: &ClipVision<'_>) {
    let c = model.config();
    assert_eq!(
        (c.width, c.layers, c.heads, c.head_dim, c.ffn_dim),
        (160, 3, 2, 80, 256)
    );
    assert_eq!((c.patch_size, c.image_size, c.positions), (14, 56, 17));
    assert_eq!(c.activation, Activation::Gelu);
}

#[test]
fn f32_matches_transformers() {
    let fx = fixture();
    let (pen, l1) = with_model(&with_wrapper(&fx.tensors), St::F32, |m| {
        check_config(m);
        let pen = m.encode(&fx.pixels).unwrap();
        let l1 = m.encode_layer(&fx.pixels, 1).unwrap();
        (pen, l1)
    });
    assert_eq!(pen.len(), 17 * 160);
    let (e_pen, e_l1) = (rel_err(&pen, &fx.penultimate), rel_err(&l1, &fx.layer1));
    eprintln!("clip_vision f32: rel err penultimate {e_pen:.2e}, layer 1 {e_l1:.2e}");
    assert!(e_pen < 1e-4, "penultimate {e_pen}");
    assert!(e_l1 < 1e-4, "layer 1 {e_l1}");
}

#[test]
fn f16_matches_transformers() {
    let fx = fixture();
    let pen = with_model(&with_wrapper(&fx.tensors), St::F16, |m| {
        m.encode(&fx.pixels).unwrap()
    });
    let e = rel_err(&pen, &fx.penultimate);
    eprintln!("clip_vision f16 weights: rel err penultimate {e:.2e}");
    assert!(e < 1e-2, "{e}");
}

#[test]
fn transformers_5_names_load_through_the_weight_store() {
    // transformers >= 5 saves CLIPVisionModel without the `vision_model.` wrapper; the store
    // maps those names onto the canonical ones.
    let fx = fixture();
    let pen = with_model(&fx.tensors, St::F32, |m| {
        check_config(m);
        m.encode(&fx.pixels).unwrap()
    });
    assert!(rel_err(&pen, &fx.penultimate) < 1e-4);
}

#[test]
fn wan_preprocessing_matches_torch() {
    let fx = fixture();
    let (w, h, seed) = fx.image;
    let rgb = hash_image(w, h, seed);
    let set = direct_set(&with_wrapper(&fx.tensors));
    let mut model = ClipVision::new(&set, "", 2).unwrap();
    let pixels = model.preprocess(&rgb, w, h).unwrap();
    let max = pixels
        .iter()
        .zip(&fx.pixels)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("wan preprocess {w}x{h} -> 56x56: max abs err {max:.2e}");
    assert!(max < 1e-4, "{max}");
    // End to end from the image.
    let pen = model.encode(&pixels).unwrap();
    let e = rel_err(&pen, &fx.penultimate);
    eprintln!("image -> penultimate: rel err {e:.2e}");
    assert!(e < 1e-4, "{e}");
}

#[test]
fn bicubic_resize_matches_torch() {
    let index = index();
    for case in index["resize"].as_array().unwrap() {
        let (w, h) = (usize_of(&case["w"]), usize_of(&case["h"]));
        let (ow, oh) = (usize_of(&case["out_w"]), usize_of(&case["out_h"]));
        let aa = case["antialias"].as_bool().unwrap();
        let rgb = hash_image(w, h, case["seed"].as_u64().unwrap());
        let mut planar = vec![0f32; 3 * w * h];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planar[c * w * h + i] = px[c] as f32 / 255.0;
            }
        }
        let out = resize_bicubic(&planar, w, h, ow, oh, aa);
        assert_eq!(out.len(), 3 * ow * oh);
        let rows: Vec<usize> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let cols: Vec<usize> = case["cols"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let want = read_f32(&case["values"]);
        let mut max = 0f32;
        let mut k = 0;
        for c in 0..3 {
            for &y in &rows {
                for &x in &cols {
                    max = max.max((out[(c * oh + y) * ow + x] - want[k]).abs());
                    k += 1;
                }
            }
        }
        assert_eq!(k, want.len());
        eprintln!("resize {w}x{h} -> {ow}x{oh} antialias {aa}: max abs err {max:.2e}");
        assert!(max < 1e-5, "{w}x{h} -> {ow}x{oh} antialias {aa}: {max}");
    }
}

#[test]
fn comfyui_preprocessing_matches_torch() {
    let index = index();
    // One 8-bit rounding step (1/255 / std, about 0.015) where torch and we land on opposite
    // sides of a .5 boundary; allowed for a few values only.
    let step = 1.0 / 255.0 / 0.26;
    for case in index["comfyui"].as_array().unwrap() {
        let (w, h) = (usize_of(&case["w"]), usize_of(&case["h"]));
        let size = usize_of(&case["size"]);
        let crop = case["crop"].as_bool().unwrap();
        let rgb = hash_image(w, h, case["seed"].as_u64().unwrap());
        let out = preprocess_comfyui(&rgb, w, h, size, crop).unwrap();
        assert_eq!(out.len(), 3 * size * size);
        let rows: Vec<usize> = case["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let cols: Vec<usize> = case["cols"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .collect();
        let want = read_f32(&case["values"]);
        let (mut k, mut flips, mut max_other) = (0, 0, 0f32);
        for c in 0..3 {
            for &y in &rows {
                for &x in &cols {
                    let d = (out[(c * size + y) * size + x] - want[k]).abs();
                    if d > 1e-4 {
                        assert!(
                            d < step * 1.01,
                            "{w}x{h} crop {crop}: off by {d} at {c},{y},{x}"
                        );
                        flips += 1;
                    } else {
                        max_other = max_other.max(d);
                    }
                    k += 1;
                }
            }
        }
        assert_eq!(k, want.len());
        eprintln!(
            "comfyui {w}x{h} -> {size} crop {crop}: {flips} of {k} values one 8-bit step off, \
             others max abs err {max_other:.2e}"
        );
        assert!(
            flips * 200 <= k,
            "{flips} of {k} values off by a rounding step"
        );
    }
    // Through the model's API (image size from the config).
    let fx = fixture();
    let set = direct_set(&with_wrapper(&fx.tensors));
    let model = ClipVision::new(&set, "", 1).unwrap();
    let (w, h, seed) = fx.image;
    let rgb = hash_image(w, h, seed);
    assert_eq!(
        model
            .preprocess_with(&rgb, w, h, Preprocess::ComfyUi { crop: true })
            .unwrap(),
        preprocess_comfyui(&rgb, w, h, 56, true).unwrap()
    );
    assert_eq!(
        model.preprocess_with(&rgb, w, h, Preprocess::Wan).unwrap(),
        model.preprocess(&rgb, w, h).unwrap()
    );
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let fx = fixture();
    let dropped = "vision_model.encoder.layers.2.mlp.fc2.weight";
    let tensors: Tensors = with_wrapper(&fx.tensors)
        .into_iter()
        .filter(|t| t.0 != dropped)
        .collect();
    let set = direct_set(&tensors);
    let msg = match ClipVision::new(&set, "", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a set without {dropped} was accepted"),
    };
    eprintln!("{msg}");
    assert!(msg.contains(dropped), "{msg}");
    // Nothing under the prefix at all.
    let msg = match ClipVision::new(&set, "model.", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("an empty prefix was accepted"),
    };
    assert!(
        msg.contains("model.vision_model.embeddings.patch_embedding.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_an_error_naming_the_tensor() {
    let fx = fixture();
    let bad = "vision_model.encoder.layers.1.layer_norm2.bias";
    let tensors: Tensors = with_wrapper(&fx.tensors)
        .into_iter()
        .map(|(n, s, v)| {
            if n == bad {
                (n, vec![159], v[..159].to_vec())
            } else {
                (n, s, v)
            }
        })
        .collect();
    let set = direct_set(&tensors);
    let msg = match ClipVision::new(&set, "", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a {bad} of 159 values was accepted"),
    };
    assert!(msg.contains(bad) && msg.contains("[160]"), "{msg}");
}

#[test]
fn wrong_input_sizes_are_errors() {
    let fx = fixture();
    let set = direct_set(&with_wrapper(&fx.tensors));
    let mut model = ClipVision::new(&set, "", 1).unwrap();
    let err = model.encode(&fx.pixels[..3 * 56 * 55]).unwrap_err();
    assert!(matches!(err, ClipVisionError::Input(_)), "{err}");
    assert!(err.to_string().contains("[3, 56, 56]"), "{err}");
    let err = model.encode_layer(&fx.pixels, 4).unwrap_err();
    assert!(matches!(err, ClipVisionError::Input(_)), "{err}");
    let err = model.preprocess(&[0u8; 10], 2, 2).unwrap_err();
    assert!(matches!(err, ClipVisionError::Input(_)), "{err}");
    assert!(preprocess_wan(&[], 0, 0, 56).is_err());
    // The model still works after the errors.
    let pen = model.encode(&fx.pixels).unwrap();
    assert!(rel_err(&pen, &fx.penultimate) < 1e-4);
}

/// The CLIP-H/14 shapes (width 1280, 16 heads of 80, ffn 5120, 224 px, 257 tokens; 2 layers
/// instead of 32) on a 832x480 image, from the image through the Wan preprocessing.
#[test]
fn clip_h_geometry_matches_transformers() {
    let index = index();
    let m = &index["models"][1];
    assert_eq!(m["kind"], "vit_h_geometry");
    let set = direct_set(&with_wrapper(&model_tensors(m)));
    let mut model = ClipVision::new(&set, "", 2).unwrap();
    let c = model.config();
    assert_eq!(
        (
            c.width,
            c.heads,
            c.head_dim,
            c.ffn_dim,
            c.image_size,
            c.tokens()
        ),
        (1280, 16, 80, 5120, 224, 257)
    );
    let img = &m["image"];
    let (w, h) = (usize_of(&img["w"]), usize_of(&img["h"]));
    let rgb = hash_image(w, h, img["seed"].as_u64().unwrap());
    let pixels = model.preprocess(&rgb, w, h).unwrap();
    let rows: Vec<usize> = m["pixel_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .collect();
    let cols: Vec<usize> = m["pixel_cols"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .collect();
    let want = read_f32(&m["pixels_sampled"]);
    let mut got = Vec::with_capacity(want.len());
    for c in 0..3 {
        for &y in &rows {
            for &x in &cols {
                got.push(pixels[(c * 224 + y) * 224 + x]);
            }
        }
    }
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let start = std::time::Instant::now();
    let out = model.encode(&pixels).unwrap();
    let took = start.elapsed();
    assert_eq!(out.len(), 257 * 1280);
    let stride = usize_of(&m["out_stride"]);
    let got: Vec<f32> = out.iter().step_by(stride).copied().collect();
    let e = rel_err(&got, &read_f32(&m["penultimate_strided"]));
    eprintln!(
        "clip-h geometry: preprocess {w}x{h} -> 224 max abs err {max:.2e}; penultimate rel err \
         {e:.2e} ({took:.2?} for 2 layers on 2 threads)"
    );
    assert!(max < 1e-4, "{max}");
    assert!(e < 1e-4, "{e}");
}
