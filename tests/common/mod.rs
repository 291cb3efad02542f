//! Helpers shared by integration tests: tiny safetensors writers and a CLI runner.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Element type for [`write_safetensors`].
#[derive(Clone, Copy, Debug)]
pub enum St {
    F32,
    F16,
    Bf16,
}

/// Writes a safetensors file from (name, shape, values).
pub fn write_safetensors(path: &Path, tensors: &[(&str, Vec<u64>, Vec<f32>)], ty: St) {
    let (tag, size) = match ty {
        St::F32 => ("F32", 4),
        St::F16 => ("F16", 2),
        St::Bf16 => ("BF16", 2),
    };
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, shape, vals) in tensors {
        assert_eq!(shape.iter().product::<u64>() as usize, vals.len(), "{name}");
        let start = data.len();
        for &v in vals {
            match ty {
                St::F32 => data.extend_from_slice(&v.to_le_bytes()),
                St::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                St::Bf16 => data.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
        let _ = size;
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{tag}\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).expect("write safetensors");
}

/// Deterministic values in [-1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
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

/// Runs the nijigen binary with `args`, isolated from the user's settings (no config file, no
/// models folders from the environment).
pub fn nijigen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nijigen"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("NIJIGEN_CONFIG", "")
        .env_remove("NIJIGEN_MODELS")
        .env_remove("NIJIGEN_COMFYUI")
        .output()
        .expect("run nijigen")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// ||a - b|| / ||b||
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let (mut n, mut d) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        n += ((x - y) as f64).powi(2);
        d += (*y as f64).powi(2);
    }
    (n / d.max(1e-30)).sqrt() as f32
}

/// The demo's tiny Wan2.1 I2V DiT (real names, dim 256, 2 blocks; the table of
/// `nijigen::demo::wan_dit`) as (name, shape, values).
pub fn tiny_wan_i2v() -> Vec<(&'static str, Vec<u64>, Vec<f32>)> {
    nijigen::demo::wan_dit()
        .into_iter()
        .zip(1..)
        .map(|(t, seed)| {
            let vals = t.values(seed);
            let name: &'static str = Box::leak(t.name.into_boxed_str());
            (name, t.shape, vals)
        })
        .collect()
}

/// Deterministic weights shared with the Python fixture scripts (tools/reference/*): splitmix64
/// of (seed * golden + i), mapped to [-1, 1) and scaled. The scripts compute the same values, so
/// reference outputs are committed without the weights. (The library's, used by the demo.)
pub use nijigen::demo::hash_values;

/// Reads a fixture array `{"file": ..., "shape": [...]}` of little-endian f32 from `dir`.
pub fn read_f32_entry(dir: &str, entry: &serde_json::Value) -> (Vec<f32>, Vec<usize>) {
    let file = entry["file"].as_str().expect("fixture entry without file");
    let bytes = std::fs::read(Path::new(dir).join(file)).expect("fixture file");
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .expect("fixture entry without shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    assert_eq!(bytes.len(), shape.iter().product::<usize>() * 4, "{file}");
    let vals = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (vals, shape)
}

/// The weights a fixture index describes as `[{"name", "shape", "seed", "scale", "offset"}]`,
/// regenerated with [`hash_values`].
pub fn recipe_tensors(list: &serde_json::Value) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    list.as_array()
        .expect("tensor list")
        .iter()
        .map(|t| {
            let shape: Vec<u64> = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            let n = shape.iter().product::<u64>() as usize;
            let vals = hash_values(
                n,
                t["seed"].as_u64().expect("seed"),
                t["scale"].as_f64().expect("scale") as f32,
                t["offset"].as_f64().expect("offset") as f32,
            );
            (t["name"].as_str().expect("name").to_string(), shape, vals)
        })
        .collect()
}

/// [`write_safetensors`] for owned (name, shape, values) triples.
pub fn write_tensors(path: &Path, tensors: &[(String, Vec<u64>, Vec<f32>)], ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// One tensor of [`write_safetensors_raw`]: name, safetensors dtype ("F8_E4M3", "U8", ...),
/// PyTorch-order shape and the little-endian bytes.
pub type RawTensor = (String, &'static str, Vec<u64>, Vec<u8>);

/// Writes a safetensors file of raw tensors (any dtype) with `__metadata__` entries.
pub fn write_safetensors_raw(path: &Path, metadata: &[(&str, &str)], tensors: &[RawTensor]) {
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    for (k, v) in metadata {
        meta.insert((*k).into(), (*v).into());
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::to_string(&header).expect("header json");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out).expect("write safetensors");
}

/// ComfyUI's default fp8 quantization of a weight (comfy/quant_ops.py
/// `TensorCoreFP8Layout.quantize`): scale = amax|w| / 448, q = fp8(w * (1 / scale)), in f32.
pub fn fp8_quantize(vals: &[f32]) -> (Vec<u8>, f32) {
    let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 448.0;
    let inv = 1.0f32 / scale;
    let scaled: Vec<f32> = vals.iter().map(|v| v * inv).collect();
    let mut q = vec![0u8; vals.len()];
    nijigen::formats::float::from_f32(nijigen::formats::DType::F8E4M3, &scaled, &mut q)
        .expect("f8");
    (q, scale)
}

/// The tensors ComfyUI's per-layer fp8 layout stores for one Linear weight `stored`
/// (`<layer>.weight`): `<layer>.comfy_quant` (the JSON format), the F32 scalar
/// `<layer>.weight_scale` and the F8_E4M3 weight `q` of PyTorch shape `shape`.
pub fn comfy_quant_layer(stored: &str, shape: Vec<u64>, q: Vec<u8>, scale: f32) -> Vec<RawTensor> {
    let layer = stored.strip_suffix(".weight").expect("a .weight name");
    let conf = br#"{"format": "float8_e4m3fn"}"#.to_vec();
    vec![
        (
            format!("{layer}.comfy_quant"),
            "U8",
            vec![conf.len() as u64],
            conf,
        ),
        (
            format!("{layer}.weight_scale"),
            "F32",
            vec![],
            scale.to_le_bytes().to_vec(),
        ),
        (stored.to_string(), "F8_E4M3", shape, q),
    ]
}
