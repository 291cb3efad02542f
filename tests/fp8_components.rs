//! ComfyUI's scaled fp8 files for the components besides umT5 and the Wan DiT (those are in
//! tests/wan_pipeline.rs): CLIP vision (`clip_vision_h`), the SDXL UNet (ldm names under
//! `model.diffusion_model.`) and the SDXL text encoders (CLIP-L, bigG; HF names).
//!
//! Each tiny test model (the fixtures' weights) has its Linear weights (the 2-D `.weight`s of
//! linear layers, as ComfyUI's fp8 ops quantize; embeddings and convs stay as they are)
//! quantized to fp8 e4m3 with a scale ([`common::fp8_quantize`], or one scale per output row),
//! and is written twice: as a scaled fp8 file in one of ComfyUI's layouts, and as a reference
//! file holding the dequantized weights `f32(q) * scale` (decoded here, not by the library)
//! rounded to F16, every other tensor as F32 in both. Loading an fp8 weight gives F16 after
//! its scale, so both files must load to the same tensors, byte for byte, and the models built
//! from them must give the same outputs, bit for bit (same tensors, same graph, same threads:
//! tolerance 0). The fp8 outputs are also compared with the fixtures' F32 references: fp8 e4m3
//! keeps 3 mantissa bits (a few % rms error per weight); measured rel 3.6e-2 (CLIP vision),
//! 4.1e-2 to 4.5e-2 (CLIP-L, bigG) and 8.9e-2 to 9.5e-2 (the deeper UNet), so the bounds are
//! 8e-2 and 0.2. A scale ignored (about amax / 448 here) would be off by orders of magnitude.

mod common;

use std::path::{Path, PathBuf};

use common::{fp8_quantize, nijigen, read_f32_entry, recipe_tensors, rel_err, stdout};
use nijigen::ggml::GgmlType;
use nijigen::models::{ClipTextModel, ClipVision, SdxlUnet};
use nijigen::runtime::WeightStore;
use serde_json::Value;

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

/// Where a file keeps its fp8 table and scales.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// A `scaled_fp8` marker and `<layer>.scale_weight` (plus `scale_input` = 1).
    ScaledFp8,
    /// `<layer>.comfy_quant` JSON and `<layer>.weight_scale` (plus `input_scale` = 2: an
    /// activation scale, which must never touch the weight).
    ComfyQuant,
    /// The table in `__metadata__._quantization_metadata`, `<layer>.weight_scale`.
    QuantMetadata,
}

/// One scale per tensor (ComfyUI's default), or one per output row (`[out, 1]`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    Tensor,
    Row,
}

/// float8 e4m3fn to f32, decoded from the bit layout (1 sign, 4 exponent bits with bias 7, 3
/// mantissa bits; exponent 0 is subnormal; S.1111.111 is NaN, there is no infinity).
fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0x0f, b & 0x07);
    if e == 0x0f && m == 0x07 {
        return f32::NAN;
    }
    let mag = if e == 0 {
        m as f32 / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
    };
    sign * mag
}

/// `vals` ([rows, cols]) quantized per `scale`: the fp8 bytes, the scales and their shape.
fn quantize(vals: &[f32], rows: usize, scale: Scale) -> (Vec<u8>, Vec<f32>, Vec<u64>) {
    match scale {
        Scale::Tensor => {
            let (q, s) = fp8_quantize(vals);
            (q, vec![s], vec![])
        }
        Scale::Row => {
            let cols = vals.len() / rows;
            let mut q = Vec::with_capacity(vals.len());
            let mut s = Vec::with_capacity(rows);
            for row in vals.chunks(cols) {
                let (qr, sr) = fp8_quantize(row);
                q.extend(qr);
                s.push(sr);
            }
            (q, s, vec![rows as u64, 1])
        }
    }
}

/// A scaled fp8 file and its dequantized reference.
struct Pair {
    _dir: tempfile::TempDir,
    fp8: PathBuf,
    reference: PathBuf,
    /// How many weights were quantized.
    layers: usize,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Writes `tensors` (stored names) as a scaled fp8 file in `layout` with the weights that
/// `linear` selects quantized, and the reference file with them dequantized (F16). `marker`
/// is the prefix of the `scaled_fp8` marker ("" or the component's prefix).
fn write_pair(
    tensors: &Tensors,
    linear: impl Fn(&str, &[u64]) -> bool,
    layout: Layout,
    scale: Scale,
    marker: &str,
) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let mut fp8: Vec<common::RawTensor> = Vec::new();
    let mut reference: Vec<common::RawTensor> = Vec::new();
    let mut table = serde_json::Map::new();
    let mut layers = 0;
    for (name, shape, vals) in tensors {
        if !linear(name, shape) {
            fp8.push((name.clone(), "F32", shape.clone(), f32_bytes(vals)));
            reference.push((name.clone(), "F32", shape.clone(), f32_bytes(vals)));
            continue;
        }
        layers += 1;
        let rows = shape[0] as usize;
        let (q, s, s_shape) = quantize(vals, rows, scale);
        let per_row = q.len() / s.len();
        let dequantized: Vec<u8> = q
            .iter()
            .enumerate()
            .flat_map(|(i, &b)| {
                half::f16::from_f32(e4m3_to_f32(b) * s[i / per_row])
                    .to_le_bytes()
                    .into_iter()
            })
            .collect();
        reference.push((name.clone(), "F16", shape.clone(), dequantized));
        fp8.push((name.clone(), "F8_E4M3", shape.clone(), q));
        let layer = name.strip_suffix(".weight").expect("a weight");
        match layout {
            Layout::ScaledFp8 => {
                fp8.push((
                    format!("{layer}.scale_weight"),
                    "F32",
                    s_shape,
                    f32_bytes(&s),
                ));
                fp8.push((
                    format!("{layer}.scale_input"),
                    "F32",
                    vec![],
                    f32_bytes(&[1.0]),
                ));
            }
            Layout::ComfyQuant | Layout::QuantMetadata => {
                fp8.push((
                    format!("{layer}.weight_scale"),
                    "F32",
                    s_shape,
                    f32_bytes(&s),
                ));
                fp8.push((
                    format!("{layer}.input_scale"),
                    "F32",
                    vec![],
                    f32_bytes(&[2.0]),
                ));
                let conf = serde_json::json!({"format": "float8_e4m3fn"});
                if layout == Layout::ComfyQuant {
                    let json = conf.to_string().into_bytes();
                    let n = json.len() as u64;
                    fp8.push((format!("{layer}.comfy_quant"), "U8", vec![n], json));
                } else {
                    table.insert(layer.to_string(), conf);
                }
            }
        }
    }
    if layout == Layout::ScaledFp8 {
        fp8.push((format!("{marker}scaled_fp8"), "F8_E4M3", vec![0], vec![]));
    }
    let meta = serde_json::json!({ "layers": table }).to_string();
    let meta: Vec<(&str, &str)> = if layout == Layout::QuantMetadata {
        vec![("_quantization_metadata", meta.as_str())]
    } else {
        Vec::new()
    };
    let pair = Pair {
        fp8: dir.path().join("model_fp8_scaled.safetensors"),
        reference: dir.path().join("model_dequantized.safetensors"),
        _dir: dir,
        layers,
    };
    common::write_safetensors_raw(&pair.fp8, &meta, &fp8);
    common::write_safetensors_raw(&pair.reference, &[], &reference);
    pair
}

/// Every tensor a file loads as (name, type, bytes), through the weight store.
fn loaded(path: &Path) -> Vec<(String, GgmlType, Vec<u8>)> {
    let store = WeightStore::open_path(path).expect("open");
    let set = store.load_cpu(|_| true).expect("load");
    set.names()
        .iter()
        .map(|n| {
            let t = set.get(n).expect("tensor");
            (
                n.clone(),
                t.ty(),
                nijigen::ggml::tensor_get(t).expect("bytes"),
            )
        })
        .collect()
}

/// The fp8 file loads to exactly the reference's tensors, with its quantized weights as F16.
fn assert_same_weights(what: &str, pair: &Pair) {
    let (got, want) = (loaded(&pair.fp8), loaded(&pair.reference));
    assert!(
        want.iter().any(|(_, ty, _)| *ty == GgmlType::F16),
        "{what}: no F16 tensor in the reference"
    );
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((&g.0, g.1), (&w.0, w.1), "{what}: name and type");
        assert!(g.2 == w.2, "{what}: tensor {} differs", g.0);
    }
}

/// One line of `nijigen info`'s text output starting with `key`.
fn info_line(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .to_string()
}

/// `nijigen info` describes the fp8 file as the reference (same architecture and config) and
/// names the fp8 layout and its layer count; `--json` gives the same.
fn assert_info(pair: &Pair, layout: Layout) {
    let run = |p: &Path| {
        let o = nijigen(&["info", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        stdout(&o)
    };
    let (got, want) = (run(&pair.fp8), run(&pair.reference));
    for key in ["architecture:", "config:"] {
        assert_eq!(info_line(&got, key), info_line(&want, key), "{got}");
    }
    let described = match layout {
        Layout::ScaledFp8 => "scaled_fp8 marker, <layer>.scale_weight",
        Layout::ComfyQuant | Layout::QuantMetadata => "per-layer comfy_quant, <layer>.weight_scale",
    };
    assert_eq!(
        info_line(&got, "quantization:"),
        format!(
            "quantization:  fp8 scaled (ComfyUI), {} layers ({described}); applied at load",
            pair.layers
        )
    );
    assert!(!want.contains("quantization:"), "{want}");
    let o = nijigen(&["info", "--json", pair.fp8.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("info json");
    let name = match layout {
        Layout::ScaledFp8 => "scaled_fp8",
        _ => "comfy_quant",
    };
    assert_eq!(v["fp8_scaled"]["layout"], name);
    assert_eq!(v["fp8_scaled"]["layers"], pair.layers);
}

/// The cases every component is checked in: both layouts, the header table, one per-row scale.
const CASES: [(Layout, Scale); 4] = [
    (Layout::ScaledFp8, Scale::Tensor),
    (Layout::ComfyQuant, Scale::Tensor),
    (Layout::QuantMetadata, Scale::Tensor),
    (Layout::ComfyQuant, Scale::Row),
];

/// A Linear weight of the CLIP encoders: a 2-D `.weight` that is not an embedding table.
fn clip_linear(name: &str, shape: &[u64]) -> bool {
    shape.len() == 2 && name.ends_with(".weight") && !name.contains("embedding")
}

// ---- CLIP vision ------------------------------------------------------------------------------

#[test]
fn fp8_clip_vision_loads_the_dequantized_weights_and_matches() {
    const DIR: &str = "tests/fixtures/clip_vision";
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/index.json")).unwrap())
            .unwrap();
    let m = &index["models"][0];
    // As clip_vision_h.safetensors names them.
    let tensors: Tensors = recipe_tensors(&m["tensors"])
        .into_iter()
        .map(|(n, s, v)| (format!("vision_model.{n}"), s, v))
        .collect();
    let pixels = read_f32_entry(DIR, &m["pixels"]).0;
    let want_f32 = read_f32_entry(DIR, &m["penultimate"]).0;
    let encode = |p: &Path| {
        let store = WeightStore::open_path(p).unwrap();
        let set = store.load_cpu(|_| true).unwrap();
        let mut model = ClipVision::new(&set, "", 2).unwrap();
        model.encode(&pixels).unwrap()
    };
    for (layout, scale) in CASES {
        let what = format!("clip vision {layout:?} {scale:?}");
        let pair = write_pair(&tensors, clip_linear, layout, scale, "");
        assert_eq!(pair.layers, 18, "{what}");
        assert_same_weights(&what, &pair);
        let (got, want) = (encode(&pair.fp8), encode(&pair.reference));
        assert!(got == want, "{what}: outputs differ");
        let e = rel_err(&got, &want_f32);
        eprintln!("{what}: penultimate vs the F32 weights' reference, rel {e:.2e}");
        assert!(e < 8e-2, "{what}: {e}");
        if scale == Scale::Tensor {
            assert_info(&pair, layout);
        }
    }
}

// ---- SDXL text encoders -----------------------------------------------------------------------

fn clip_text_case(kind: &str, prefix: &str, quantized: usize) {
    const DIR: &str = "tests/fixtures/clip_text";
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/index.json")).unwrap())
            .unwrap();
    let m = index["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap();
    let tensors: Tensors = recipe_tensors(&m["tensors"])
        .into_iter()
        .map(|(n, s, v)| (format!("{prefix}{n}"), s, v))
        .collect();
    let tokens: Vec<u32> = m["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c.as_array().unwrap().iter())
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let want_f32 = read_f32_entry(DIR, &m["penultimate"]).0;
    let forward = |p: &Path| {
        let store = WeightStore::open_path(p).unwrap();
        let set = store.load_cpu(|_| true).unwrap();
        let mut model = ClipTextModel::new(&set, "", 2).unwrap();
        let out = model.forward(&tokens).unwrap();
        (out.penultimate, out.last, out.pooled)
    };
    for (layout, scale) in CASES {
        let what = format!("{kind} {layout:?} {scale:?}");
        let pair = write_pair(&tensors, clip_linear, layout, scale, "");
        assert_eq!(pair.layers, quantized, "{what}");
        assert_same_weights(&what, &pair);
        let (got, want) = (forward(&pair.fp8), forward(&pair.reference));
        assert!(got == want, "{what}: outputs differ");
        let e = rel_err(&got.0, &want_f32);
        eprintln!("{what}: penultimate vs the F32 weights' reference, rel {e:.2e}");
        assert!(e < 8e-2, "{what}: {e}");
        if scale == Scale::Tensor {
            assert_info(&pair, layout);
        }
    }
}

#[test]
fn fp8_clip_l_loads_the_dequantized_weights_and_matches() {
    // clip_l.safetensors: HF names under `text_model.`.
    clip_text_case("clip_l", "text_model.", 18);
}

#[test]
fn fp8_clip_g_loads_the_dequantized_weights_and_matches() {
    // clip_g.safetensors: HF names, `text_projection.weight` is a Linear too.
    clip_text_case("clip_g", "", 19);
}

// ---- SDXL UNet --------------------------------------------------------------------------------

#[test]
fn fp8_sdxl_unet_loads_the_dequantized_weights_and_matches() {
    const DIR: &str = "tests/fixtures/unet_sdxl";
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/index.json")).unwrap())
            .unwrap();
    // The fixture's diffusers weights under their ldm names (the store's name map), as
    // ComfyUI saves a UNet: `model.diffusion_model.<ldm name>`.
    let dir = tempfile::tempdir().unwrap();
    let diffusers = dir.path().join("diffusion_pytorch_model.safetensors");
    let recipe = recipe_tensors(&index["tensors"]);
    common::write_tensors(&diffusers, &recipe, common::St::F32);
    let store = WeightStore::open_path(&diffusers).unwrap();
    let tensors: Tensors = recipe
        .into_iter()
        .map(|(n, s, v)| {
            let ldm = store.detection().normalize(&n).expect("a UNet tensor");
            (format!("model.diffusion_model.{}", ldm.target()), s, v)
        })
        .collect();
    // Linear layers: the 2-D weights (time and label embeddings' MLPs, resnets' emb_layers,
    // the transformers' proj_in/out, attention and feed-forward); convs are 4-D.
    let linear = |n: &str, s: &[u64]| s.len() == 2 && n.ends_with(".weight");
    let quantized = tensors.iter().filter(|(n, s, _)| linear(n, s)).count();
    assert!(quantized > 50, "{quantized} linear weights");
    let (x, xs) = read_f32_entry(DIR, &index["x"]);
    let (context, _) = read_f32_entry(DIR, &index["context"]);
    let (y, _) = read_f32_entry(DIR, &index["y"]);
    let case = &index["cases"][0];
    let t = case["timestep"].as_f64().unwrap() as f32;
    let (want_f32, _) = read_f32_entry(DIR, &case["out"]);
    let forward = |p: &Path| {
        let store = WeightStore::open_path(p).unwrap();
        let set = store.load_cpu(|_| true).unwrap();
        let mut unet = SdxlUnet::new(&set, "", 2).unwrap();
        unet.forward(&x, t, &context, &y, xs[1], xs[2]).unwrap()
    };
    for (layout, scale) in CASES {
        let what = format!("sdxl unet {layout:?} {scale:?}");
        let pair = write_pair(&tensors, linear, layout, scale, "model.diffusion_model.");
        assert_eq!(pair.layers, quantized, "{what}");
        assert_same_weights(&what, &pair);
        let (got, want) = (forward(&pair.fp8), forward(&pair.reference));
        assert!(got == want, "{what}: outputs differ");
        let e = rel_err(&got, &want_f32);
        eprintln!("{what}: output vs the F32 weights' reference, rel {e:.2e}");
        assert!(e < 0.2, "{what}: {e}");
        if scale == Scale::Tensor {
            assert_info(&pair, layout);
        }
    }
}
