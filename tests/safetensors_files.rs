//! The safetensors reader against files written by the Python `safetensors` package
//! (tools/reference/make_safetensors_fixtures.py), and sharded-layout errors on disk.

use std::path::{Path, PathBuf};

use nijigen::formats::float::to_f32_vec;
use nijigen::formats::safetensors::{parse, SafetensorsFile};
use nijigen::formats::{DType, FormatError, GgmlType, MetaValue};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn dtype(name: &str) -> DType {
    match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::Ggml(GgmlType::F64),
        "I8" => DType::Ggml(GgmlType::I8),
        "I16" => DType::Ggml(GgmlType::I16),
        "I32" => DType::Ggml(GgmlType::I32),
        "I64" => DType::Ggml(GgmlType::I64),
        "F8_E4M3" => DType::F8E4M3,
        "F8_E5M2" => DType::F8E5M2,
        other => panic!("unexpected dtype {other}"),
    }
}

/// Checks every tensor of `f` against the `tensors` list of expected.json, and the metadata.
fn check_against(f: &SafetensorsFile, want: &Value) {
    let list = want["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), list.len());
    for w in list {
        let name = w["name"].as_str().unwrap();
        let t = f.tensor(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(t.dtype, dtype(w["dtype"].as_str().unwrap()), "{name}");
        let shape: Vec<u64> = w["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        assert_eq!(t.shard as u64, w["shard"].as_u64().unwrap(), "{name}");
        let data = f.data(t);
        assert_eq!(data.len() as u64, t.size, "{name}");
        assert_eq!(t.dtype.bytes_for(t.numel()), Some(t.size), "{name}");
        let got = to_f32_vec(t.dtype, data).unwrap();
        let bits: Vec<u32> = w["f32_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.len(), bits.len(), "{name}");
        for (i, (g, b)) in got.iter().zip(&bits).enumerate() {
            assert_eq!(
                g.to_bits(),
                *b,
                "{name}[{i}]: ours {g:e}, torch {:e}",
                f32::from_bits(*b)
            );
        }
    }
    // Sorted by shard, then offset, with no overlap.
    for pair in f.tensors().windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            (a.shard, a.offset + a.size) <= (b.shard, b.offset),
            "{} / {}",
            a.name,
            b.name
        );
    }
    let meta = want["metadata"].as_object().unwrap();
    let got: Vec<(&str, &MetaValue)> = f.metadata().iter().map(|(k, v)| (k.as_str(), v)).collect();
    assert_eq!(got.len(), meta.len(), "{got:?}");
    for ((k, v), (wk, wv)) in got.iter().zip(meta) {
        assert_eq!(k, wk);
        match wv {
            Value::String(s) => assert_eq!(v.as_str(), Some(s.as_str()), "{k}"),
            Value::Number(n) => assert_eq!(v.as_u64(), n.as_u64(), "{k}"),
            other => panic!("unexpected metadata {other}"),
        }
    }
}

#[test]
fn all_dtypes_file() {
    let want = &expected()["all_dtypes"];
    let path = fixtures().join(want["file"].as_str().unwrap());
    let f = SafetensorsFile::open(&path).unwrap();
    assert_eq!(f.paths(), std::slice::from_ref(&path));
    check_against(&f, want);
    assert!(f.tensor("t.scalar").unwrap().shape.is_empty());
    assert_eq!(f.tensor("t.5d").unwrap().shape.len(), 5);
    assert_eq!(f.tensor("t.empty").unwrap().size, 0);
    assert!(f.tensor("nope").is_none());
    // open_any picks the single-file reader.
    let g = SafetensorsFile::open_any(&path).unwrap();
    assert_eq!(g.tensors(), f.tensors());
}

#[test]
fn all_dtypes_truncated_at_every_byte() {
    let path = fixtures().join("all_dtypes.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let full = parse(&path, &bytes).unwrap();
    assert_eq!(full.tensors.len(), 13);
    for len in 0..bytes.len() {
        let e = parse(&path, &bytes[..len]).expect_err("truncated file accepted");
        assert!(e.to_string().starts_with(&path.display().to_string()));
    }
}

#[test]
fn sharded_index() {
    let want = &expected()["sharded"];
    let index = fixtures().join(want["index"].as_str().unwrap());
    let f = SafetensorsFile::open_index(&index).unwrap();
    let shards: Vec<PathBuf> = want["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| fixtures().join(s.as_str().unwrap()))
        .collect();
    assert_eq!(f.paths(), &shards[..]);
    check_against(&f, want);
    assert!(matches!(f.meta("total_size"), Some(MetaValue::U64(44))));
    let g = SafetensorsFile::open_any(&index).unwrap();
    assert_eq!(g.tensors(), f.tensors());
}

#[test]
fn sharded_open_many() {
    let want = &expected()["sharded"];
    let shards: Vec<PathBuf> = want["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| fixtures().join(s.as_str().unwrap()))
        .collect();
    let f = SafetensorsFile::open_many(&shards).unwrap();
    assert_eq!(f.tensors().len(), 4);
    assert_eq!(f.meta("format").and_then(MetaValue::as_str), Some("pt"));
    assert!(f.meta("total_size").is_none());
    // Reversed order: shard indices follow the given order.
    let rev: Vec<PathBuf> = shards.iter().rev().cloned().collect();
    let r = SafetensorsFile::open_many(&rev).unwrap();
    assert_eq!(r.tensor("a.bias").unwrap().shard, 1);
    assert_eq!(r.tensor("b.bias").unwrap().shard, 0);
    assert_eq!(
        r.data(r.tensor("a.weight").unwrap()),
        f.data(f.tensor("a.weight").unwrap())
    );
    // The same file twice: every name is duplicated.
    let e = SafetensorsFile::open_many(&[shards[0].clone(), shards[0].clone()]).unwrap_err();
    assert!(e.to_string().contains("is also in"), "{e}");
    assert!(SafetensorsFile::open_many(&[]).is_err());
}

/// A temp folder holding copies of the two fixture shards.
fn shard_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        std::fs::copy(fixtures().join("sharded").join(n), dir.path().join(n)).unwrap();
    }
    dir
}

fn index_err(dir: &Path, index: &str) -> FormatError {
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, index).unwrap();
    let e = SafetensorsFile::open_index(&p).unwrap_err();
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error {s:?}");
    e
}

fn assert_contains(e: &FormatError, want: &str) {
    let s = e.to_string();
    assert!(s.contains(want), "error {s:?} does not contain {want:?}");
}

const S1: &str = "model-00001-of-00002.safetensors";
const S2: &str = "model-00002-of-00002.safetensors";

fn index(entries: &[(&str, &str)]) -> String {
    let map: Vec<String> = entries
        .iter()
        .map(|(t, f)| format!("{t:?}: {f:?}"))
        .collect();
    format!(
        "{{\"metadata\": {{\"total_size\": 44}}, \"weight_map\": {{{}}}}}",
        map.join(", ")
    )
}

#[test]
fn index_errors() {
    let dir = shard_dir();
    let d = dir.path();
    let ok = [
        ("a.weight", S1),
        ("a.bias", S1),
        ("b.weight", S2),
        ("b.bias", S2),
    ];
    // The copy opens fine.
    let p = d.join("model.safetensors.index.json");
    std::fs::write(&p, index(&ok)).unwrap();
    assert_eq!(SafetensorsFile::open_index(&p).unwrap().tensors().len(), 4);

    // Missing shard file: an I/O error naming the shard.
    let e = index_err(
        d,
        &index(&[("a.weight", S1), ("x", "model-00003.safetensors")]),
    );
    assert!(matches!(e, FormatError::Io { .. }), "{e}");
    assert_contains(&e, "model-00003.safetensors");

    // Tensor listed but not in its shard.
    let mut extra = ok.to_vec();
    extra.push(("c.weight", S2));
    let e = index_err(d, &index(&extra));
    assert_contains(
        &e,
        "weight_map puts tensor \"c.weight\" in model-00002-of-00002.safetensors but that shard \
         does not contain it",
    );
    assert!(e.to_string().starts_with(&p.display().to_string()));

    // Tensor listed in the wrong shard.
    let e = index_err(
        d,
        &index(&[("a.bias", S1), ("a.weight", S2), ("b.bias", S2)]),
    );
    assert_contains(&e, "puts tensor \"a.weight\" in model-00002-of-00002.safetensors but it is in model-00001-of-00002.safetensors");

    // Shard names escaping the folder.
    for bad in [
        "../model-00001-of-00002.safetensors",
        "/tmp/model.safetensors",
        "sub/../../x.safetensors",
        "",
        ".",
    ] {
        let e = index_err(d, &index(&[("a.weight", bad)]));
        assert_contains(
            &e,
            "shard names must be relative paths inside the index's folder",
        );
    }

    // Bad JSON and bad structure.
    assert_contains(
        &index_err(d, "{\"weight_map\": "),
        "index is not valid JSON",
    );
    assert_contains(&index_err(d, "[1]"), "index is not a JSON object");
    assert_contains(&index_err(d, "{}"), "missing \"weight_map\"");
    assert_contains(
        &index_err(d, "{\"weight_map\": []}"),
        "\"weight_map\" is not a JSON object",
    );
    assert_contains(&index_err(d, "{\"weight_map\": {}}"), "lists no tensors");
    assert_contains(
        &index_err(d, "{\"weight_map\": {\"a.weight\": 3}}"),
        "weight_map entry for tensor \"a.weight\" is not a file name",
    );
    assert_contains(
        &index_err(
            d,
            &format!("{{\"weight_map\": {{\"a.weight\": {S1:?}, \"a.weight\": {S2:?}}}}}"),
        ),
        "tensor \"a.weight\" appears twice in weight_map",
    );
    assert_contains(
        &index_err(
            d,
            &format!("{{\"metadata\": 5, \"weight_map\": {{\"a.weight\": {S1:?}}}}}"),
        ),
        "\"metadata\" is not a JSON object",
    );
}

#[test]
fn tensor_in_two_shards() {
    let dir = shard_dir();
    let d = dir.path();
    // A third shard that repeats shard 1's tensors.
    std::fs::copy(d.join(S1), d.join("model-extra.safetensors")).unwrap();
    let e = index_err(
        d,
        &index(&[
            ("a.weight", S1),
            ("b.bias", S2),
            ("a.bias", "model-extra.safetensors"),
        ]),
    );
    assert_contains(&e, "is also in");
    assert_contains(&e, "model-00001-of-00002.safetensors");
}

#[test]
fn files_that_are_not_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = SafetensorsFile::open(&empty).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: empty file (not a safetensors file)", empty.display())
    );
    let e = SafetensorsFile::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let missing = dir.path().join("missing.safetensors");
    let e = SafetensorsFile::open(&missing).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }));
    assert!(e.to_string().starts_with(&missing.display().to_string()));
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00").unwrap();
    let e = SafetensorsFile::open_any(&junk).unwrap_err();
    assert!(
        e.to_string().contains("exceeds the 100000000-byte limit"),
        "{e}"
    );
}
