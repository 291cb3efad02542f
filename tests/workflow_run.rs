//! `nijigen workflow run|show` end to end: ComfyUI's own Wan2.1 I2V template, run on the demo's
//! tiny models laid out as a ComfyUI folder under the names the template uses, gives exactly
//! the frames of the nijigen command `workflow show` prints; graphs nijigen cannot run are
//! refused before any work.
//!
//! The template's sizes are made small (64x48, 5 frames, 3 steps) so the test is quick; the
//! rest of the graph is the file as ComfyUI ships it.

mod common;

use std::path::{Path, PathBuf};

use common::{nijigen, stderr, stdout};
use serde_json::Value;

const FIXTURES: &str = "tests/fixtures/workflows";

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("workflow_run")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A ComfyUI folder with the demo models under the Wan2.1 template's names and a start image.
fn comfy_folder(root: &Path) -> PathBuf {
    let models = nijigen::demo::ensure(&root.join("demo")).expect("demo models");
    let comfy = root.join("ComfyUI");
    for (from, dir, name) in [
        (
            &models.dit,
            "diffusion_models",
            "wan2.1_i2v_480p_14B_fp16.safetensors",
        ),
        (
            &models.t5,
            "text_encoders",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        ),
        (&models.vae, "vae", "wan_2.1_vae.safetensors"),
        (
            &models.clip_vision,
            "clip_vision",
            "clip_vision_h.safetensors",
        ),
    ] {
        let d = comfy.join("models").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(from, d.join(name)).unwrap();
    }
    let input = comfy.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let img = image::RgbImage::from_fn(80, 60, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    img.save(input.join("image_to_video_wan_start_image.png"))
        .unwrap();
    comfy
}

/// The template with small sizes: WanImageToVideo 64x48x5, 3 steps.
fn small_wan21(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(FIXTURES).join("image_to_video_wan.json")).unwrap();
    let mut wf: Value = serde_json::from_str(&text).unwrap();
    for n in wf["nodes"].as_array_mut().unwrap() {
        match n["type"].as_str().unwrap() {
            "WanImageToVideo" => n["widgets_values"] = serde_json::json!([64, 48, 5, 1]),
            "KSampler" => n["widgets_values"][2] = 3.into(),
            _ => {}
        }
    }
    let path = dir.join("wan21_small.json");
    std::fs::write(&path, serde_json::to_string(&wf).unwrap()).unwrap();
    path
}

fn frames(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no frames in {}", dir.display());
    names
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8().into_raw())
        .collect()
}

#[test]
fn wan21_template_runs_as_its_plain_command() {
    let root = tmp("wan21");
    let comfy = comfy_folder(&root);
    let wf = small_wan21(&root);
    let out = root.join("out");
    let c = comfy.to_str().unwrap();
    let w = wf.to_str().unwrap();
    let o = out.to_str().unwrap();

    // show: one command, the template's settings, the image from <comfyui>/input.
    let shown = nijigen(&[
        "--comfyui",
        c,
        "workflow",
        "show",
        w,
        "--output-dir",
        o,
        "--json",
    ]);
    assert!(shown.status.success(), "{}", stderr(&shown));
    let j: Value = serde_json::from_str(&stdout(&shown)).expect("JSON");
    let cmds = j["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 1);
    let args: Vec<String> = cmds[0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let arg = |flag: &str| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        args[i + 1].clone()
    };
    assert_eq!(args[0], "video");
    assert_eq!(arg("--model"), "wan2.1_i2v_480p_14B_fp16.safetensors");
    assert_eq!(arg("--sampler"), "uni_pc");
    assert_eq!(arg("--scheduler"), "simple");
    assert_eq!(arg("--steps"), "3");
    assert_eq!(arg("--cfg"), "6");
    assert_eq!(arg("--shift"), "8");
    assert_eq!(arg("--seed"), "987948718394761");
    assert_eq!(
        (arg("--width"), arg("--height")),
        ("64".into(), "48".into())
    );
    assert_eq!(arg("--frames"), "5");
    assert_eq!(
        PathBuf::from(arg("--image")),
        comfy
            .join("input")
            .join("image_to_video_wan_start_image.png")
    );
    assert_eq!(
        PathBuf::from(arg("-o")),
        out.join("video").join("ComfyUI_00001_.mp4")
    );
    assert_eq!(j["graph"]["3"]["class_type"], "KSampler");

    // run: the workflow, then the printed command typed by hand; the same frames.
    let wf_frames = root.join("wf_frames");
    let ran = nijigen(&[
        "--comfyui",
        c,
        "workflow",
        "run",
        w,
        "--output-dir",
        o,
        "--threads",
        "2",
        "--frames-dir",
        wf_frames.to_str().unwrap(),
    ]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    assert!(out.join("video/ComfyUI_00001_.mp4").is_file());
    let plain_frames = root.join("plain_frames");
    let mut plain: Vec<String> = vec!["--comfyui".into(), c.into()];
    plain.extend(args.iter().cloned());
    let at = plain.iter().position(|a| a == "-o").unwrap();
    plain[at + 1] = root.join("plain.mp4").to_string_lossy().into_owned();
    plain.extend([
        "--threads".to_string(),
        "2".into(),
        "--frames-dir".into(),
        plain_frames.to_string_lossy().into_owned(),
    ]);
    let refs: Vec<&str> = plain.iter().map(String::as_str).collect();
    let p = nijigen(&refs);
    assert!(p.status.success(), "{}", stderr(&p));
    let (a, b) = (frames(&wf_frames), frames(&plain_frames));
    assert_eq!(a.len(), 5);
    assert!(
        a == b,
        "the workflow's frames differ from the plain command's"
    );

    // A second run takes the next ComfyUI counter.
    let again = nijigen(&["--comfyui", c, "workflow", "show", w, "--output-dir", o]);
    assert!(
        stdout(&again).contains("ComfyUI_00002_.mp4"),
        "{}",
        stdout(&again)
    );
}

#[test]
fn unrunnable_graphs_are_refused_before_any_work() {
    let root = tmp("refused");
    // The SDXL base + refiner template: no refiner stage.
    let refiner = Path::new(FIXTURES).join("sdxl_simple_example.json");
    let o = nijigen(&["workflow", "run", refiner.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("node 11 (KSamplerAdvanced)") && e.contains("refiner"),
        "{e}"
    );
    // An unknown node type: named with its id and the supported list in the hint.
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("image_sdxl_simple.json")).unwrap();
    let mut wf: Value = serde_json::from_str(&text).unwrap();
    let node = wf["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["type"] == "KSampler")
        .unwrap();
    node["type"] = "KSamplerCustomAdvanced".into();
    let id = node["id"].clone();
    let path = root.join("custom.json");
    std::fs::write(&path, serde_json::to_string(&wf).unwrap()).unwrap();
    let o = nijigen(&[
        "workflow",
        "run",
        path.to_str().unwrap(),
        "--output-dir",
        root.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(&format!("node {id} (KSamplerCustomAdvanced)")) && e.contains("hint:"),
        "{e}"
    );
    // Nothing was written.
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
    // Not a workflow at all.
    let o = nijigen(&["workflow", "show", "Cargo.toml"]);
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o)
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1
    );
}
