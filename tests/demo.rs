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
    assert_same("dit", generated(demo::wan_dit()), recipe(&files["dit"]["tensors"]));
    assert_same("umt5", generated(demo::umt5()), recipe(&files["t5"]["tensors"]));
    assert_same(
        "clip_vision",
        generated(demo::clip_vision()),
        recipe(&files["clip_vision"]["tensors"]),
    );
    assert_same("vae", generated(demo::wan_vae()), recipe(&files["vae"]["tensors"]));
}
