//! GGUF interop with gguf-py (the Python package llama.cpp ships), both directions.
//!
//! * `gguf_py.gguf` was written by gguf-py (`tools/reference/make_gguf_fixtures.py`), with what
//!   went in recorded in `gguf_py.expected.json`; our reader must see exactly that.
//! * `ours.gguf` is written here by our writer and must match the committed file byte for byte;
//!   `ours.expected.json` records what went in, and `tools/reference/check_our_gguf.py` checks
//!   that gguf-py's `GGUFReader` reads the committed file as that. After an intended format change
//!   regenerate both with `NIJIGEN_BLESS=1 cargo test --test gguf_fixture`, then run the Python
//!   check.
//!
//! Both JSON files use the same typed-value form (see the Python script's docstring), and tensor
//! data are compared by FNV-1a 64 of their bytes, computed the same way in both languages.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nijigen::formats::gguf::{parse, GgufFile, GgufWriter, TensorDecl};
use nijigen::formats::{DType, GgmlType, MetaValue};
use serde_json::{json, Value};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The typed JSON form of a metadata value.
fn typed(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => json!({"type": "u8", "value": x}),
        MetaValue::I8(x) => json!({"type": "i8", "value": x}),
        MetaValue::U16(x) => json!({"type": "u16", "value": x}),
        MetaValue::I16(x) => json!({"type": "i16", "value": x}),
        MetaValue::U32(x) => json!({"type": "u32", "value": x}),
        MetaValue::I32(x) => json!({"type": "i32", "value": x}),
        MetaValue::U64(x) => json!({"type": "u64", "value": x}),
        MetaValue::I64(x) => json!({"type": "i64", "value": x}),
        MetaValue::F32(x) => json!({"type": "f32", "bits": x.to_bits()}),
        MetaValue::F64(x) => json!({"type": "f64", "bits": x.to_bits()}),
        MetaValue::Bool(x) => json!({"type": "bool", "value": x}),
        MetaValue::String(s) => json!({"type": "string", "value": s}),
        MetaValue::Array(items) => {
            json!({"type": "array", "items": items.iter().map(typed).collect::<Vec<_>>()})
        }
    }
}

fn meta_entry(key: &str, v: &MetaValue) -> Value {
    let mut e = json!({ "key": key });
    if let (Some(obj), Value::Object(t)) = (e.as_object_mut(), typed(v)) {
        obj.extend(t);
    }
    e
}

/// What our reader sees in `f`, in the form of the `*.expected.json` files.
fn describe(f: &GgufFile) -> Value {
    let h = f.header();
    let metadata: Vec<Value> = h.metadata.iter().map(|(k, v)| meta_entry(k, v)).collect();
    let tensors: Vec<Value> = h
        .tensors
        .iter()
        .map(|t| {
            let DType::Ggml(ty) = t.dtype else {
                panic!("GGUF tensor '{}' with a non-ggml dtype", t.name)
            };
            json!({
                "name": t.name,
                "type_id": ty as u32,
                "shape": t.shape,
                "nbytes": t.size,
                "fnv1a64": fnv1a64(f.data(t)),
            })
        })
        .collect();
    json!({
        "version": h.version,
        "alignment": h.alignment,
        "metadata": metadata,
        "tensors": tensors,
    })
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares field by field, so a mismatch names the key or tensor.
fn assert_same(got: &Value, want: &Value, what: &str) {
    for field in ["version", "alignment"] {
        assert_eq!(got[field], want[field], "{what}: {field}");
    }
    for list in ["metadata", "tensors"] {
        let (g, w) = (got[list].as_array(), want[list].as_array());
        let (g, w) = (g.expect("got list"), w.expect("expected list"));
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert_eq!(a, b, "{what}: {list}[{i}]");
        }
        assert_eq!(g.len(), w.len(), "{what}: number of {list}");
    }
}

#[test]
fn reads_gguf_py_fixture() {
    let f = GgufFile::open(fixture_dir().join("gguf_py.gguf")).expect("open gguf-py fixture");
    let want = read_json(&fixture_dir().join("gguf_py.expected.json"));
    assert_same(&describe(&f), &want, "gguf_py.gguf");

    // A few facts spelled out, independent of the JSON.
    let h = f.header();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    let p = h.tensor("patch_embedding.weight").unwrap();
    assert_eq!(p.shape, vec![4, 3, 1, 2, 2]);
    assert_eq!(p.ne(), vec![2, 2, 1, 3, 4]);
    assert_eq!(p.dtype, DType::F32);
    let q = h.tensor("q8_0.2d").unwrap();
    assert_eq!(
        (q.dtype, q.shape.clone(), q.size),
        (DType::Ggml(GgmlType::Q8_0), vec![2, 64], 136)
    );
    let q = h.tensor("q4_k.2d").unwrap();
    assert_eq!(
        (q.dtype, q.shape.clone(), q.size),
        (DType::Ggml(GgmlType::Q4_K), vec![2, 256], 288)
    );
    assert!(h.tensors.iter().any(|t| t.name.len() > 64));
    for t in &h.tensors {
        assert_eq!((t.offset - h.data_offset) % 64, 0, "{}", t.name);
    }
    let a: Vec<f32> = f
        .tensor_data("f32.2d")
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want_a: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    assert_eq!(a, want_a);
    assert_eq!(
        h.get("test.array.nested"),
        Some(&MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::I32(1), MetaValue::I32(2)]),
            MetaValue::Array(vec![
                MetaValue::I32(3),
                MetaValue::I32(4),
                MetaValue::I32(5)
            ]),
            MetaValue::Array(vec![MetaValue::I32(6)]),
        ]))
    );
}

/// Deterministic bytes (xorshift64).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 0.25 - 1.0).to_le_bytes())
        .collect()
}

/// What the committed `ours.gguf` holds.
type Metadata = Vec<(String, MetaValue)>;

fn ours_content() -> (Metadata, Vec<TensorDecl>, Vec<Vec<u8>>) {
    use MetaValue::*;
    let kv = |k: &str, v: MetaValue| (k.to_string(), v);
    let meta = vec![
        kv("general.architecture", String("nijigen-test".into())),
        kv("general.alignment", U32(128)),
        kv("test.u8", U8(255)),
        kv("test.i8", I8(-128)),
        kv("test.u16", U16(65_535)),
        kv("test.i16", I16(-32_768)),
        kv("test.u32", U32(u32::MAX)),
        kv("test.i32", I32(i32::MIN)),
        kv("test.u64", U64(u64::MAX)),
        kv("test.i64", I64(i64::MIN)),
        kv("test.f32", F32(-0.1)),
        kv("test.f64", F64(std::f64::consts::PI)),
        kv("test.bool.true", Bool(true)),
        kv("test.bool.false", Bool(false)),
        kv("test.string", String("nijigen ✓ 二次元".into())),
        kv("test.string.empty", String(std::string::String::new())),
        kv("test.array.u8", Array(vec![U8(0), U8(128), U8(255)])),
        kv("test.array.i16", Array(vec![I16(-1), I16(1)])),
        kv("test.array.i32", Array(vec![I32(1), I32(-2), I32(3)])),
        kv("test.array.u64", Array(vec![U64(0), U64(u64::MAX)])),
        kv("test.array.f32", Array(vec![F32(0.5), F32(-1.25)])),
        kv("test.array.f64", Array(vec![F64(1e-300)])),
        kv("test.array.bool", Array(vec![Bool(false), Bool(true)])),
        kv(
            "test.array.string",
            Array(vec![
                String("a".into()),
                String("".into()),
                String("日本".into()),
            ]),
        ),
        kv("test.array.empty", Array(vec![])),
        kv(
            "test.array.nested",
            Array(vec![
                Array(vec![I32(1), I32(2)]),
                Array(vec![I32(3)]),
                Array(vec![]),
            ]),
        ),
        kv(
            "test.array.nested.mixed",
            Array(vec![
                Array(vec![String("x".into())]),
                Array(vec![F64(2.5), F64(-2.5)]),
            ]),
        ),
    ];
    let long = format!(
        "model.diffusion_model.{}.weight",
        "very_long_name".repeat(6)
    );
    let t = |name: &str, ty: GgmlType, shape: &[u64]| TensorDecl::new(name, ty, shape);
    let decls = vec![
        t("f32.2d", GgmlType::F32, &[3, 4]),
        t("f16.1d", GgmlType::F16, &[7]),
        t("bf16.2d", GgmlType::BF16, &[2, 3]),
        t("f64.1d", GgmlType::F64, &[3]),
        t("i8.1d", GgmlType::I8, &[5]),
        t("i16.1d", GgmlType::I16, &[3]),
        t("i32.1d", GgmlType::I32, &[3]),
        t("i64.1d", GgmlType::I64, &[2]),
        t("patch_embedding.weight", GgmlType::F32, &[4, 3, 1, 2, 2]),
        t("q8_0.2d", GgmlType::Q8_0, &[2, 64]),
        t("q4_k.2d", GgmlType::Q4_K, &[2, 256]),
        t("q6_k.1d", GgmlType::Q6_K, &[256]),
        t(&long, GgmlType::F32, &[5]),
    ];
    let data = decls
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let n: u64 = d.shape.iter().product();
            if d.dtype == GgmlType::F32 {
                f32_bytes(n as usize)
            } else {
                noise(d.byte_size().unwrap() as usize, 0x9e37_79b9 + i as u64)
            }
        })
        .collect();
    (meta, decls, data)
}

#[test]
fn our_writer_matches_committed_fixture() {
    let (meta, decls, data) = ours_content();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ours.gguf");
    let file = fs::File::create(&out).unwrap();
    let mut w = GgufWriter::new(&out, BufWriter::new(file), &meta, &decls).unwrap();
    assert_eq!(w.alignment(), 128);
    for (d, bytes) in decls.iter().zip(&data) {
        w.write_tensor(&d.name, bytes).unwrap();
    }
    let mut buf = w.finish().unwrap();
    buf.flush().unwrap();
    drop(buf);
    let bytes = fs::read(&out).unwrap();

    // Our reader reads back exactly what went in.
    let f = GgufFile::open(&out).unwrap();
    let h = f.header();
    assert_eq!(h.metadata, meta);
    assert_eq!(h.alignment, 128);
    for ((d, t), want) in decls.iter().zip(&h.tensors).zip(&data) {
        assert_eq!(t.name, d.name);
        assert_eq!(t.dtype, DType::Ggml(d.dtype));
        assert_eq!(t.shape, d.shape);
        assert_eq!(f.data(t), &want[..], "{}", d.name);
        assert_eq!(t.offset % 128, 0);
    }
    assert_eq!(h.tensors.len(), decls.len());

    let mut sidecar = describe(&f);
    if let Some(obj) = sidecar.as_object_mut() {
        obj.insert("generator".into(), json!("nijigen tests/gguf_fixture.rs"));
    }
    let gguf_path = fixture_dir().join("ours.gguf");
    let json_path = fixture_dir().join("ours.expected.json");
    if std::env::var("NIJIGEN_BLESS").as_deref() == Ok("1") {
        fs::write(&gguf_path, &bytes).unwrap();
        let text = serde_json::to_string_pretty(&sidecar).unwrap() + "\n";
        fs::write(&json_path, text).unwrap();
        eprintln!(
            "blessed {} and {}; now run tools/reference/check_our_gguf.py",
            gguf_path.display(),
            json_path.display()
        );
    }
    let committed = fs::read(&gguf_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate it with NIJIGEN_BLESS=1)",
            gguf_path.display()
        )
    });
    assert!(
        committed == bytes,
        "our writer's output differs from {} ({} vs {} bytes); if the change is intended, \
         rerun with NIJIGEN_BLESS=1 and check with tools/reference/check_our_gguf.py",
        gguf_path.display(),
        bytes.len(),
        committed.len()
    );
    assert_same(&sidecar, &read_json(&json_path), "ours.expected.json");
    // The committed file parses to the same header as the fresh one.
    assert_eq!(parse(&gguf_path, &committed).unwrap(), *h);
}
