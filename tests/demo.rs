//! The demo's generated models against the fixture recipes (same architectures, names and
//! shapes), and `nijigen demo` end to end in a temporary cache folder.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{nijigen, stderr, stdout};
use nijigen::demo::{self, TensorSpec};
use serde_json::Value;

fn recipe(list: &Value) -> BTreeMap<String, Vec<u64>> {
    list.as_array()
        .expect("tensor list")
        .iter()
        .map(|t| {
            let shape = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            (t["name"].as_str().expect("name").to_string(), shape)
        })
        .collect()
}

fn generated(list: Vec<TensorSpec>) -> BTreeMap<String, Vec<u64>> {
    list.into_iter().map(|t| (t.name, t.shape)).collect()
}

fn index(dir: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(dir).join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index parses")
}

fn assert_same(what: &str, got: BTreeMap<String, Vec<u64>>, want: BTreeMap<String, Vec<u64>>) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, extra {extra:?}"
    );
    for (name, shape) in &want {
        assert_eq!(&got[name], shape, "{what}: {name}");
    }
}

#[test]
fn demo_models_have_the_fixture_architectures() {
    let sdxl = index("tests/fixtures/sdxl_pipeline");
    assert_same(
        "sdxl",
        generated(demo::sdxl_checkpoint()),
        recipe(&sdxl["tensors"]),
    );
    let wan = index("tests/fixtures/wan_pipeline");
    let files = &wan["files"];
    assert_same(
        "dit",
        generated(demo::wan_dit()),
        recipe(&files["dit"]["tensors"]),
    );
    assert_same(
        "umt5",
        generated(demo::umt5()),
        recipe(&files["t5"]["tensors"]),
    );
    assert_same(
        "clip_vision",
        generated(demo::clip_vision()),
        recipe(&files["clip_vision"]["tensors"]),
    );
    assert_same(
        "vae",
        generated(demo::wan_vae()),
        recipe(&files["vae"]["tensors"]),
    );
}

/// (width, height, each sample's bytes) of an MP4's only track.
fn mp4_samples(path: &Path) -> (u16, u16, Vec<Vec<u8>>) {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut r = mp4::Mp4Reader::read_header(std::io::BufReader::new(f), size).unwrap();
    assert_eq!(r.tracks().len(), 1);
    let (w, h) = (r.tracks()[&1].width(), r.tracks()[&1].height());
    let n = r.sample_count(1).unwrap();
    let samples = (1..=n)
        .map(|i| r.read_sample(1, i).unwrap().unwrap().bytes.to_vec())
        .collect();
    (w, h, samples)
}

fn demo_json(cache: &Path, out: &Path) -> Value {
    let o = nijigen(&[
        "demo",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--json",
        "-t",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(stdout(&o).trim()).expect("one JSON object")
}

#[test]
fn demo_builds_its_models_and_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let j = demo_json(&cache, &out);
    assert_eq!(j["models_built"], Value::Bool(true));
    assert_eq!(j["still"].as_str(), out.join("demo.png").to_str());
    assert_eq!(j["video"].as_str(), out.join("demo.mp4").to_str());
    let png = image::open(out.join("demo.png")).unwrap();
    assert_eq!((png.width(), png.height()), (128, 96));
    let (w, h, samples) = mp4_samples(&out.join("demo.mp4"));
    assert_eq!((w, h, samples.len()), (64, 48, 9));

    // A stale cache (another version's stamp) is rebuilt; existing outputs are kept and the
    // new ones numbered.
    std::fs::write(cache.join("demo.stamp"), "old\n").unwrap();
    let before = std::fs::read(out.join("demo.mp4")).unwrap();
    let j = demo_json(&cache, &out);
    assert_eq!(j["models_built"], Value::Bool(true));
    assert_eq!(j["video"].as_str(), out.join("demo_0001.mp4").to_str());
    assert_eq!(j["still"].as_str(), out.join("demo_0001.png").to_str());
    assert_eq!(std::fs::read(out.join("demo.mp4")).unwrap(), before);
    // Same models, same seed: the same encoded frames.
    assert_eq!(mp4_samples(&out.join("demo_0001.mp4")).2, samples);
    // Up to date now: not rebuilt.
    assert!(demo::ensure(&cache).map(|m| !m.built).unwrap());
}
