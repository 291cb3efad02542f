//! `nijigen plan` reads tensor tables only: planning a video with a float8 DiT (a type ggml
//! cannot compute with, converted to f16 by a real load) converts nothing, and the DiT's
//! compute buffer it plans is the one measured over the real, converted weights.
//!
//! One test in its own binary: it reads the process-wide count of converted weight bytes
//! ([`nijigen::runtime::weights::converted_bytes`]), which other tests would move.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser as _;
use nijigen::models::WanDit;
use nijigen::runtime::weights::converted_bytes;
use nijigen::runtime::WeightStore;
use serde_json::Value;

/// The demo's Wan DiT as a safetensors file of float8_e4m3fn (original names).
fn write_f8_dit(path: &Path) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (i, t) in nijigen::demo::wan_dit().iter().enumerate() {
        let n = t.shape.iter().product::<u64>() as usize;
        let start = data.len();
        // Small e4m3 values of both signs (no NaN: 0x7f / 0xff).
        data.extend((0..n).map(|k| ((k + i) % 0x38) as u8 | (((k & 1) as u8) << 7)));
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F8_E4M3", "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn planning_an_f8_dit_converts_nothing_and_measures_the_real_graph() {
    let dir = tempfile::tempdir().unwrap();
    let models = nijigen::demo::ensure(&dir.path().join("demo")).unwrap();
    let dit = dir.path().join("wan_f8.safetensors");
    write_f8_dit(&dit);
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let args: Vec<String> = [
        "plan",
        "video",
        "--model",
        &s(&dit),
        "--t5",
        &s(&models.t5),
        "--clip-vision",
        &s(&models.clip_vision),
        "--vae",
        &s(&models.vae),
        "-W",
        "64",
        "-H",
        "48",
        "--frames",
        "5",
        "--vram-budget",
        "2G",
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();

    // In this process: the plan is made, and not one weight byte converted.
    assert_eq!(converted_bytes(), 0);
    let cli = nijigen::cli::Cli::try_parse_from(
        std::iter::once("nijigen".to_string()).chain(args.iter().cloned()),
    )
    .unwrap();
    nijigen::cli::run(cli).expect("plan video");
    assert_eq!(
        converted_bytes(),
        0,
        "planning converted weight data (a real load of the f8 DiT)"
    );

    // The same weights loaded for real are converted (the counter sees it) ...
    let store = WeightStore::open_path(&dit).unwrap();
    let real = store.load_cpu(|_| true).unwrap();
    assert!(real.copied_bytes() > 0);
    assert_eq!(converted_bytes(), real.copied_bytes());
    // ... and give the DiT memory the plan shows: the plan measured the real graph.
    let model = WanDit::new(&real, "", 1).unwrap();
    let lat = (2, 48 / 8, 64 / 8);
    let img = model.config().image_dim.map(|_| 257);
    let (whole, _) = model.memory(lat, 512, img, false).unwrap();
    let (staged, state) = model.memory(lat, 512, img, true).unwrap();
    let want = whole.max(staged + state);
    let o = common::nijigen(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", common::stderr(&o));
    let v: Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let planned = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == "dit")
        .unwrap()["compute_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(planned, want, "the DiT's planned compute buffer");
}
