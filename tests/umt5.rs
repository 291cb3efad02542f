//! umT5 encoder against transformers' `UMT5EncoderModel` on a tiny model (d_model 128, 2 heads
//! of 64, ffn 256, 2 layers, vocab 1000, 32 buckets, max distance 128).
//!
//! The weights are regenerated here from the recipe in tests/fixtures/umt5/index.json (the
//! counter-based hash tools/reference/make_umt5_fixtures.py uses too), then written as an
//! HF-named safetensors file or a llama.cpp-named GGUF file (`general.architecture =
//! "t5encoder"`, as city96's umT5 files) and loaded through the weight store.

mod common;

use std::path::Path;

use common::{hash_values, rel_err, write_safetensors, St};
use nijigen::formats::gguf::{GgufWriter, TensorDecl};
use nijigen::formats::MetaValue;
use nijigen::ggml::GgmlType;
use nijigen::models::umt5::{bucket_ids, relative_position_bucket};
use nijigen::models::{Umt5Config, Umt5Encoder, Umt5Error};
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/umt5";

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

struct Case {
    tokens: Vec<u32>,
    last: Vec<f32>,
}

struct Fixture {
    /// HF names, PyTorch shapes.
    tensors: Tensors,
    cases: Vec<Case>,
    index: Value,
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

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let tensors = index["tensors"]
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
    let cases = index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            tokens: c["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            last: read_f32(&c["last"]),
        })
        .collect();
    Fixture {
        tensors,
        cases,
        index,
    }
}

/// HF name -> llama.cpp GGUF name (gguf-py's T5ENCODER map), written out independently of
/// src/formats/names/t5.rs.
fn gguf_name(hf: &str) -> String {
    if hf == "shared.weight" {
        return "token_embd.weight".into();
    }
    if hf == "encoder.final_layer_norm.weight" {
        return "enc.output_norm.weight".into();
    }
    let rest = hf.strip_prefix("encoder.block.").unwrap();
    let (n, rest) = rest.split_once('.').unwrap();
    let t = match rest {
        "layer.0.SelfAttention.q.weight" => "attn_q",
        "layer.0.SelfAttention.k.weight" => "attn_k",
        "layer.0.SelfAttention.v.weight" => "attn_v",
        "layer.0.SelfAttention.o.weight" => "attn_o",
        "layer.0.SelfAttention.relative_attention_bias.weight" => "attn_rel_b",
        "layer.0.layer_norm.weight" => "attn_norm",
        "layer.1.DenseReluDense.wi_0.weight" => "ffn_gate",
        "layer.1.DenseReluDense.wi_1.weight" => "ffn_up",
        "layer.1.DenseReluDense.wo.weight" => "ffn_down",
        "layer.1.layer_norm.weight" => "ffn_norm",
        other => panic!("unmapped {other}"),
    };
    format!("enc.blk.{n}.{t}.weight")
}

fn write_st(path: &Path, tensors: &Tensors) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, St::F32);
}

/// A GGUF as city96 writes umT5: llama.cpp names; with `quantize`, the 2-D block linears as
/// Q8_0 and everything else (embedding, norms, relative bias) F32.
fn write_gguf(path: &Path, tensors: &Tensors, quantize: bool) {
    let ty_of = |name: &str, shape: &[u64]| {
        if quantize && name.starts_with("enc.blk.") && shape.len() == 2 && !name.contains("rel_b") {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        }
    };
    let named: Vec<(String, &Vec<u64>, &Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (gguf_name(n), s, v))
        .collect();
    let decls: Vec<TensorDecl> = named
        .iter()
        .map(|(n, s, _)| TensorDecl::new(n.clone(), ty_of(n, s), (*s).clone()))
        .collect();
    let meta = [
        (
            "general.architecture".to_string(),
            MetaValue::String("t5encoder".into()),
        ),
        (
            "t5encoder.attention.head_count".to_string(),
            MetaValue::U32(2),
        ),
    ];
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(path, std::io::BufWriter::new(f), &meta, &decls).unwrap();
    for (name, shape, vals) in &named {
        let bytes = match ty_of(name, shape) {
            GgmlType::Q8_0 => {
                let row = *shape.last().unwrap() as usize;
                let size = GgmlType::Q8_0.bytes_for(vals.len() as u64).unwrap() as usize;
                let mut q = vec![0u8; size];
                nijigen::ggml::quantize(GgmlType::Q8_0, vals, row, &mut q).unwrap();
                q
            }
            _ => bytemuck::cast_slice::<f32, u8>(vals).to_vec(),
        };
        w.write_tensor(name, &bytes).unwrap();
    }
    w.finish().unwrap();
}

fn is_tiny(c: &Umt5Config) {
    assert_eq!(
        (c.d_model, c.layers, c.heads, c.d_kv, c.ffn_dim, c.vocab, c.buckets),
        (128, 2, 2, 64, 256, 1000, 32)
    );
    assert_eq!(c.max_distance, 128);
}

/// Runs every fixture case on the model in `path`; returns the worst relative error.
fn run_cases(fx: &Fixture, path: &Path, what: &str) -> f32 {
    let store = WeightStore::open_path(path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = Umt5Encoder::new(&set, "", 2).unwrap();
    is_tiny(model.config());
    let mut worst = 0f32;
    for case in &fx.cases {
        let out = model.encode(&case.tokens).unwrap();
        assert_eq!(out.len(), case.tokens.len() * 128);
        let e = rel_err(&out, &case.last);
        eprintln!("{what}: {} tokens: rel err {e:.2e}", case.tokens.len());
        worst = worst.max(e);
    }
    worst
}

#[test]
fn buckets_match_transformers() {
    let fx = fixture();
    let b = &fx.index["buckets"];
    let (nb, md) = (
        b["num_buckets"].as_u64().unwrap() as usize,
        b["max_distance"].as_u64().unwrap() as usize,
    );
    let first = b["first"].as_i64().unwrap();
    let values = b["values"].as_array().unwrap();
    assert!(values.len() > 1000);
    for (i, v) in values.iter().enumerate() {
        let rel = first + i as i64;
        assert_eq!(
            relative_position_bucket(rel, nb, md) as u64,
            v.as_u64().unwrap(),
            "relative position {rel}"
        );
    }
    // Query-major layout: ids[q * len + k] = bucket(k - q).
    let ids = bucket_ids(5, nb, md);
    assert_eq!(ids[3], relative_position_bucket(3, nb, md) as i32);
    assert_eq!(ids[3 * 5], relative_position_bucket(-3, nb, md) as i32);
}

#[test]
fn hf_names_safetensors_f32_matches_transformers() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    write_st(&path, &fx.tensors);
    let e = run_cases(&fx, &path, "hf safetensors f32");
    assert!(e < 1e-4, "rel err {e}");
}

#[test]
fn hf_names_safetensors_f16_matches_transformers() {
    // As ComfyUI's umt5_xxl_fp16.safetensors: every tensor F16.
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5_fp16.safetensors");
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = fx
        .tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(&path, &refs, St::F16);
    let e = run_cases(&fx, &path, "hf safetensors f16");
    // Measured ~1e-3 (F16 weight rounding and F16 activations in ggml's F16 matmul).
    assert!(e < 3e-3, "rel err {e}");
}

#[test]
fn hf_names_with_tied_embed_tokens_name() {
    // Some exports keep `encoder.embed_tokens.weight` instead of `shared.weight`.
    let fx = fixture();
    let tensors: Tensors = fx
        .tensors
        .iter()
        .map(|(n, s, v)| {
            let n = if n == "shared.weight" {
                "encoder.embed_tokens.weight".to_string()
            } else {
                n.clone()
            };
            (n, s.clone(), v.clone())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    write_st(&path, &tensors);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = Umt5Encoder::new(&set, "", 2).unwrap();
    let case = &fx.cases[0];
    let e = rel_err(&model.encode(&case.tokens).unwrap(), &case.last);
    assert!(e < 1e-4, "rel err {e}");
}

#[test]
fn gguf_llama_cpp_names_f32_matches_transformers() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5-tiny-f32.gguf");
    write_gguf(&path, &fx.tensors, false);
    let e = run_cases(&fx, &path, "gguf f32");
    assert!(e < 1e-4, "rel err {e}");
}

/// The 2-D block linears rounded through Q8_0 and back (what a Q8_0 file holds), F32.
fn q8_0_rounded(tensors: &Tensors) -> Tensors {
    tensors
        .iter()
        .map(|(n, s, v)| {
            if n.starts_with("encoder.block.") && s.len() == 2 && !n.contains("relative") {
                let row = *s.last().unwrap() as usize;
                let size = GgmlType::Q8_0.bytes_for(v.len() as u64).unwrap() as usize;
                let mut q = vec![0u8; size];
                nijigen::ggml::quantize(GgmlType::Q8_0, v, row, &mut q).unwrap();
                let mut d = vec![0f32; v.len()];
                nijigen::ggml::dequantize(GgmlType::Q8_0, &q, &mut d).unwrap();
                (n.clone(), s.clone(), d)
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect()
}

fn encode_all(path: &Path, cases: &[Case]) -> Vec<Vec<f32>> {
    let store = WeightStore::open_path(path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = Umt5Encoder::new(&set, "", 2).unwrap();
    cases
        .iter()
        .map(|c| model.encode(&c.tokens).unwrap())
        .collect()
}

/// city96-style Q8_0 linears, against transformers and against the same model with the
/// Q8_0-rounded weights stored as F32 (which isolates ggml's quantized matmul, which also rounds
/// the activations to 8 bits). Measured: ~1.4e-2 vs rounded weights, ~1.7e-2 vs transformers.
#[test]
fn gguf_q8_0_linears_match_the_rounded_f32_model() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("umt5-tiny-q8_0.gguf");
    write_gguf(&q8, &fx.tensors, true);
    let rounded = dir.path().join("umt5-rounded.safetensors");
    write_st(&rounded, &q8_0_rounded(&fx.tensors));
    let (got, want) = (encode_all(&q8, &fx.cases), encode_all(&rounded, &fx.cases));
    for ((g, w), case) in got.iter().zip(&want).zip(&fx.cases) {
        let vs_rounded = rel_err(g, w);
        let vs_torch = rel_err(g, &case.last);
        eprintln!(
            "gguf q8_0: {} tokens: rel err {vs_rounded:.2e} vs rounded-weights f32, {vs_torch:.2e} vs transformers",
            case.tokens.len()
        );
        assert!(vs_rounded < 3e-2, "{vs_rounded}");
        assert!(vs_torch < 4e-2, "{vs_torch}");
    }
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let fx = fixture();
    let dropped = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    let tensors: Tensors = fx
        .tensors
        .iter()
        .filter(|t| t.0 != dropped)
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    write_st(&path, &tensors);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let msg = match Umt5Encoder::new(&set, "", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a file without {dropped} was accepted"),
    };
    eprintln!("{msg}");
    assert!(msg.contains("enc.blk.1.attn_rel_b.weight"), "{msg}");
}

#[test]
fn wrong_shape_is_an_error_naming_the_tensor() {
    let fx = fixture();
    let bad = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight";
    let tensors: Tensors = fx
        .tensors
        .iter()
        .map(|(n, s, v)| {
            if n == bad {
                (n.clone(), vec![255, 128], v[..255 * 128].to_vec())
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    write_st(&path, &tensors);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let msg = match Umt5Encoder::new(&set, "", 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a {bad} of 255 rows was accepted"),
    };
    assert!(msg.contains("enc.blk.0.ffn_up.weight"), "{msg}");
}

#[test]
fn bad_token_ids_are_errors() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5.safetensors");
    write_st(&path, &fx.tensors);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut model = Umt5Encoder::new(&set, "", 1).unwrap();
    let mut bad = fx.cases[0].tokens.clone();
    bad[4] = 1000;
    match model.encode(&bad) {
        Err(Umt5Error::Tokens(m)) => assert!(m.contains("1000") && m.contains("position 4"), "{m}"),
        other => panic!("expected a token error, got {:?}", other.map(|v| v.len())),
    }
    assert!(matches!(model.encode(&[]), Err(Umt5Error::Tokens(_))));
    // The model still works after rejected input, and on one token.
    assert_eq!(model.encode(&[0]).unwrap().len(), 128);
    // Not a umT5 encoder under this prefix.
    assert!(matches!(
        Umt5Encoder::new(&set, "text_encoder.", 1),
        Err(Umt5Error::UnknownLayout { .. })
    ));
}
