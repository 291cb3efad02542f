//! `nijigen plan image` on the tiny SDXL checkpoint of tests/fixtures/sdxl_pipeline (regenerated
//! from its recipe): a generous budget fits (everything resident), a too-small one fails before
//! computing with "short by N MiB" and a hint, JSON output parses.

mod common;

use std::path::{Path, PathBuf};

use common::{recipe_tensors, write_safetensors, St};
use serde_json::Value;

fn checkpoint() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plan");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny_sdxl.safetensors");
    let idx: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/sdxl_pipeline/index.json").unwrap(),
    )
    .unwrap();
    let tensors = recipe_tensors(&idx["tensors"]);
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    let tmp = dir.join(format!("tiny_sdxl.{}.tmp", std::process::id()));
    write_safetensors(&tmp, &refs, St::F32);
    std::fs::rename(&tmp, &path).unwrap();
    path
}

#[test]
fn plan_image_generous_tight_and_too_small() {
    let model = checkpoint();
    let m = model.to_str().unwrap();
    let base = ["plan", "image", "--model", m, "-W", "128", "-H", "96"];

    // No budget on the CPU: everything on the CPU from the files, as a run without a budget
    // computes (nothing on a simulated device), its RAM counted.
    let o = common::nijigen(&base);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let out = common::stdout(&o);
    assert!(out.contains("budget none (everything on the CPU"), "{out}");
    for c in ["clip_l", "clip_g", "unet", "vae_sdxl"] {
        assert!(out.contains(c), "{out}");
    }
    assert!(out.contains("predicted peak: device 0 MiB"), "{out}");
    assert!(
        !out.contains("resident") && !out.contains("streamed"),
        "{out}"
    );

    // A generous budget, as JSON.
    let mut args = base.to_vec();
    args.extend(["--vram-budget", "4G", "--json"]);
    let o = common::nijigen(&args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["budget"], 4u64 << 30);
    let comps = v["components"].as_array().unwrap();
    assert_eq!(comps.len(), 4);
    assert!(comps.iter().all(|c| c["placement"] == "resident"));
    let peak = v["peak_device_bytes"].as_u64().unwrap();
    assert!(peak > 0 && peak <= (4u64 << 30) - (256 << 20));
    assert_eq!(v["upload_per_step_bytes"], 0);
    let unet = comps.iter().find(|c| c["component"] == "unet").unwrap();
    assert_eq!(unet["stage"], 1);

    // --offload blocks: the UNet is not streamed (its skip connections keep every input
    // block's output alive; it fits resident where stage 2 does), so it stays resident.
    let mut args = base.to_vec();
    args.extend(["--vram-budget", "4G", "--offload", "blocks", "--json"]);
    let o = common::nijigen(&args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let unet = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "unet")
        .unwrap()
        .clone();
    assert_eq!(unet["placement"], "resident");
    assert_eq!(v["upload_per_step_bytes"], 0);

    // Smaller than the reserve: fails with "short by" and a hint, exit code 1.
    let mut args = base.to_vec();
    args.extend(["--vram-budget", "200M"]);
    let o = common::nijigen(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = common::stderr(&o);
    assert!(err.contains("VRAM budget short by"), "{err}");
    assert!(err.contains("MiB"), "{err}");
    assert!(err.contains("hint: try --vram-budget"), "{err}");

    // A bad size.
    let mut args = base.to_vec();
    args.extend(["--vram-budget", "12X"]);
    let o = common::nijigen(&args);
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("unknown unit"));
}
