//! `nijigen i2v` end to end through the binary, on the demo's tiny random-weight models
//! (written once per test process by the library, `nijigen::demo::ensure`): the MP4 parsed back
//! with the independent `mp4` crate, the still's PNG parameters, the `--json` summary, the
//! equivalence with `nijigen image` then `nijigen video`, and the errors a user can act on.

mod common;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use common::{stderr, stdout, write_tensors, St};
use nijigen::demo::{self, DemoModels};
use nijigen::media::GenerationParams;
use serde_json::Value;

fn models() -> &'static DemoModels {
    static M: OnceLock<DemoModels> = OnceLock::new();
    M.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_i2v_models");
        demo::ensure(&dir).expect("demo models")
    })
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The model flags of `i2v` for the demo models.
fn model_flags(m: &DemoModels) -> Vec<String> {
    [
        ("--image-model", &m.sdxl),
        ("--video-model", &m.dit),
        ("--t5", &m.t5),
        ("--clip-vision", &m.clip_vision),
        ("--video-vae", &m.vae),
    ]
    .iter()
    .flat_map(|(f, p)| [f.to_string(), s(p)])
    .collect()
}

/// Small and fast: still 128x96 (3 steps), video 64x48, 5 frames (2 steps), seed 7.
const SIZES: &[&str] = &[
    "--image-width",
    "128",
    "--image-height",
    "96",
    "-W",
    "64",
    "-H",
    "48",
    "--frames",
    "5",
    "--image-steps",
    "3",
    "--video-steps",
    "2",
    "--seed",
    "7",
    "--fps",
    "12",
    "-t",
    "2",
];

const PROMPT: &str = "1girl, silver hair, cherry blossoms";
const MOTION: &str = "she turns her head and smiles";

/// Runs the binary with no config file and no NIJIGEN_* folders from the environment.
fn run(args: &[String]) -> std::process::Output {
    let cwd = std::env::current_dir().unwrap();
    run_in(&cwd, args, &[("NIJIGEN_CONFIG", Path::new(""))])
}

fn i2v_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["i2v".to_string()];
    a.extend(model_flags(models()));
    a.extend(SIZES.iter().map(|s| s.to_string()));
    a.extend(["-p", PROMPT, "--motion", MOTION, "-o"].map(String::from));
    a.push(s(out));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn frame_pixels(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| image::open(p).unwrap().to_rgb8().into_raw())
        .collect()
}

#[test]
fn i2v_writes_a_valid_mp4_and_a_still_with_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let frames = dir.path().join("frames_i2v");
    let o = run(&i2v_args(&out, &["--json", "--frames-dir", &s(&frames)]));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let still = dir.path().join("clip.png");
    assert_eq!(j["video"].as_str(), Some(s(&out).as_str()));
    assert_eq!(j["still"].as_str(), Some(s(&still).as_str()));
    assert_eq!(
        (j["seed"].as_u64(), j["video_seed"].as_u64()),
        (Some(7), Some(7))
    );
    assert_eq!(
        (j["width"].as_u64(), j["height"].as_u64()),
        (Some(64), Some(48))
    );
    assert_eq!(
        (j["still_width"].as_u64(), j["still_height"].as_u64()),
        (Some(128), Some(96))
    );
    assert_eq!(j["frames"].as_u64(), Some(5));
    let outputs: Vec<&str> = j["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    for p in &outputs {
        assert!(Path::new(p).exists(), "{p}");
    }
    // Times: every stage ran and took time, and the parts add up to at most the whole.
    let total = j["total_s"].as_f64().unwrap();
    let mut parts = 0.0;
    for stage in ["still_stage", "video_stage"] {
        let st = &j[stage];
        let t = st["total_s"].as_f64().unwrap();
        let sample = st["timings"]["sample_s"].as_f64().unwrap();
        let decode = st["timings"]["decode_s"].as_f64().unwrap();
        assert!(sample > 0.0 && decode > 0.0, "{stage}: {st}");
        assert!(sample + decode <= t + 1e-6, "{stage}: {st}");
        parts += t;
    }
    assert!(parts <= total + 1e-6 && total < 600.0, "{parts} > {total}");
    let peak = j["peak_ram_bytes"].as_u64().unwrap();
    assert!(peak > 10 << 20 && peak < 64 << 30, "{peak}");
    assert!(j["peak_device_bytes"].is_null());

    // The MP4: one video track of 5 frames, 64x48, 12 fps.
    let f = File::open(&out).unwrap();
    let size = f.metadata().unwrap().len();
    let reader = mp4::Mp4Reader::read_header(BufReader::new(f), size).unwrap();
    assert_eq!(reader.tracks().len(), 1);
    let track = &reader.tracks()[&1];
    assert_eq!(track.track_type().unwrap(), mp4::TrackType::Video);
    assert_eq!((track.width(), track.height()), (64, 48));
    assert_eq!(track.sample_count(), 5);
    assert!(
        (track.frame_rate() - 12.0).abs() < 1e-9,
        "{}",
        track.frame_rate()
    );
    // The sidecar carries the motion prompt and the still's name.
    let side: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("clip.mp4.json")).unwrap())
            .unwrap();
    assert_eq!(side["prompt"].as_str(), Some(MOTION));
    assert_eq!(side["image"].as_str(), Some("clip.png"));
    assert_eq!(side["frames"].as_u64(), Some(5));

    // The still: 128x96 with its A1111 parameters.
    let text = nijigen::media::png::read_parameters(&still)
        .unwrap()
        .expect("parameters");
    let p = GenerationParams::parse_a1111(&text).unwrap();
    assert_eq!(p.prompt, PROMPT);
    assert_eq!((p.seed, p.steps, p.width, p.height), (7, 3, 128, 96));
    assert_eq!(p.model, "demo_sdxl");
    let img = image::open(&still).unwrap();
    assert_eq!((img.width(), img.height()), (128, 96));
    assert_eq!(frame_pixels(&frames).len(), 5);

    // `image` then `video` on the saved still: the same still, the same frames.
    let png2 = dir.path().join("still2.png");
    let mut a: Vec<String> = ["image", "-m"].map(String::from).to_vec();
    a.push(s(&models().sdxl));
    a.extend(
        [
            "-W", "128", "-H", "96", "--steps", "3", "--seed", "7", "-t", "2", "-q", "-p", PROMPT,
            "-o",
        ]
        .map(String::from),
    );
    a.push(s(&png2));
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::open(&png2).unwrap().to_rgb8().into_raw(),
        img.to_rgb8().into_raw(),
        "image gives another still"
    );
    let frames2 = dir.path().join("frames_video");
    let m = models();
    let mut a: Vec<String> = vec!["video".into()];
    for (f, p) in [
        ("-m", &m.dit),
        ("--t5", &m.t5),
        ("--clip-vision", &m.clip_vision),
        ("--vae", &m.vae),
        ("-i", &png2),
        ("--frames-dir", &frames2),
        ("-o", &dir.path().join("v2.mp4")),
    ] {
        a.push(f.into());
        a.push(s(p));
    }
    a.extend(
        [
            "-W", "64", "-H", "48", "--frames", "5", "--steps", "2", "--seed", "7", "--fps", "12",
            "-t", "2", "-q", "-p", MOTION,
        ]
        .map(String::from),
    );
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let (f1, f2) = (frame_pixels(&frames), frame_pixels(&frames2));
    assert_eq!(f1.len(), 5);
    assert!(f1 == f2, "video from the saved still differs from i2v's");
    // The frames are not all one colour (the pipeline ran, it did not write a blank video).
    let first = &f1[0];
    assert!(first.iter().any(|&v| v != first[0]));

    // Under a (simulated) 1 GiB budget with the DiT streamed: the same still and frames, and
    // the accountant's peak over both stages under the budget.
    let out3 = dir.path().join("budget.mp4");
    let frames3 = dir.path().join("frames_budget");
    let extra = [
        "--json",
        "--frames-dir",
        &s(&frames3),
        "--vram-budget",
        "1G",
        "--offload",
        "blocks",
    ];
    let o = run(&i2v_args(&out3, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let peak = j["peak_device_bytes"].as_u64().expect("peak_device_bytes");
    assert_eq!(j["vram_budget_bytes"].as_u64(), Some(1 << 30));
    assert!(peak > 0 && peak <= 1 << 30, "{peak}");
    let still3 = image::open(dir.path().join("budget.png")).unwrap();
    assert_eq!(still3.to_rgb8().into_raw(), img.to_rgb8().into_raw());
    assert!(
        frame_pixels(&frames3) == f1,
        "the budgeted run's frames differ"
    );
}

#[test]
fn i2v_numbers_outputs_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    // Only the still's name is taken: both outputs move to the next number together.
    std::fs::write(dir.path().join("clip.png"), b"keep").unwrap();
    let args = with(i2v_args(&out, &["--json"]), "--frames", Some("1"));
    let o = run(&with(args, "--video-steps", Some("1")));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        j["video"].as_str(),
        Some(s(&dir.path().join("clip_0001.mp4")).as_str())
    );
    assert_eq!(
        j["still"].as_str(),
        Some(s(&dir.path().join("clip_0001.png")).as_str())
    );
    assert_eq!(std::fs::read(dir.path().join("clip.png")).unwrap(), b"keep");
    assert!(!out.exists());
    // No temporary file left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

/// A Wan2.1 T2V DiT (no image branch, 16 input channels), zeros: only its layout matters.
fn t2v_dit(dir: &Path) -> PathBuf {
    let p = dir.join("wan_t2v.safetensors");
    let t: Vec<(String, Vec<u64>, Vec<f32>)> = demo::wan_dit()
        .into_iter()
        .filter(|t| !t.name.starts_with("img_emb") && !t.name.contains("_img"))
        .map(|t| {
            let shape = if t.name == "patch_embedding.weight" {
                vec![t.shape[0], 16, 1, 2, 2]
            } else {
                t.shape
            };
            let n = shape.iter().product::<u64>() as usize;
            (t.name, shape, vec![0.0; n])
        })
        .collect();
    write_tensors(&p, &t, St::F16);
    p
}

/// The demo checkpoint's CLIP-L alone, in HF names, zeros.
fn clip_l_file(dir: &Path) -> PathBuf {
    let p = dir.join("clip_l.safetensors");
    let prefix = "conditioner.embedders.0.transformer.";
    let t: Vec<(String, Vec<u64>, Vec<f32>)> = demo::sdxl_checkpoint()
        .into_iter()
        .filter_map(|t| {
            let name = t.name.strip_prefix(prefix)?.to_string();
            let n = t.shape.iter().product::<u64>() as usize;
            Some((name, t.shape, vec![0.0; n]))
        })
        .collect();
    write_tensors(&p, &t, St::F16);
    p
}

/// Replaces the value after `flag` (or removes the flag with `None`).
fn with(mut args: Vec<String>, flag: &str, value: Option<&str>) -> Vec<String> {
    let i = args.iter().position(|a| a == flag).expect(flag);
    match value {
        Some(v) => args[i + 1] = v.to_string(),
        None => {
            args.drain(i..i + 2);
        }
    }
    args
}

#[test]
fn i2v_errors_are_one_line_with_a_hint_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").join("clip.mp4");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let base = i2v_args(&out, &[]);
    let t2v = t2v_dit(dir.path());
    let clip_l = clip_l_file(dir.path());
    let sdxl = s(&models().sdxl);
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "T2V DiT as --video-model",
            with(base.clone(), "--video-model", Some(&s(&t2v))),
            "not an image-to-video DiT (Wan2.1 I2V",
        ),
        (
            "CLIP-L as --t5",
            with(base.clone(), "--t5", Some(&s(&clip_l))),
            "not a umT5 text encoder",
        ),
        (
            "SDXL checkpoint as --video-model",
            with(base.clone(), "--video-model", Some(&sdxl)),
            "not a Wan",
        ),
        (
            "Wan DiT as --image-model",
            with(base.clone(), "--image-model", Some(&s(&models().dit))),
            "not an SDXL-family checkpoint",
        ),
        (
            "missing CLIP vision",
            with(base.clone(), "--clip-vision", None),
            "pass --clip-vision FILE",
        ),
        (
            "missing video model",
            with(base.clone(), "--video-model", None),
            "pass --video-model FILE",
        ),
        (
            "width not a multiple of 16",
            with(base.clone(), "-W", Some("60")),
            "multiples of 16",
        ),
        (
            "frames not 4n+1",
            with(base.clone(), "--frames", Some("8")),
            "4n + 1",
        ),
        (
            "budget too small",
            [base.clone(), vec!["--vram-budget".into(), "260M".into()]].concat(),
            "short by",
        ),
    ];
    for (what, args, needle) in cases {
        let t = Instant::now();
        let o = run(&args);
        let secs = t.elapsed().as_secs_f64();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{what}: one error line and one hint: {err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{what}: {err}"
        );
        assert!(lines[1].starts_with("hint: "), "{what}: {err}");
        // Checked before any work: no output, and no stage ran (seconds, not a generation).
        let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().collect();
        assert!(left.is_empty(), "{what}: {left:?}");
        assert!(stdout(&o).is_empty(), "{what}");
        assert!(secs < 20.0, "{what}: {secs} s");
    }
}

// ---------------------------------------------------------------------------------------------
// Finding models and the config file

/// Runs the binary in `cwd` with no NIJIGEN_* variables but those given.
fn run_in(cwd: &Path, args: &[String], env: &[(&str, &Path)]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_nijigen"));
    c.args(args).current_dir(cwd).env_remove("RUST_LOG");
    for v in ["NIJIGEN_MODELS", "NIJIGEN_COMFYUI", "NIJIGEN_CONFIG"] {
        c.env_remove(v);
    }
    // No user config file from the machine running the tests.
    c.env("XDG_CONFIG_HOME", cwd.join("no-user-config"));
    c.env("HOME", cwd.join("no-home"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run nijigen")
}

fn link(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(from, to).unwrap();
}

/// A flat models folder and a ComfyUI folder holding the demo files (as symlinks).
fn layouts(root: &Path) {
    let m = models();
    for (p, comfy) in [
        (&m.sdxl, "checkpoints"),
        (&m.dit, "diffusion_models"),
        (&m.t5, "text_encoders"),
        (&m.clip_vision, "clip_vision"),
        (&m.vae, "vae"),
    ] {
        let name = p.file_name().unwrap();
        link(p, &root.join("flat").join(name));
        link(p, &root.join("ComfyUI/models").join(comfy).join(name));
    }
}

/// `plan i2v` with bare file names (opens every file: the names must resolve).
fn plan_by_name(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "plan", "i2v", "--json", "-W", "64", "-H", "48", "--frames", "5",
    ]
    .map(String::from)
    .to_vec();
    for (f, n) in [
        ("--image-model", "demo_sdxl.safetensors"),
        ("--video-model", "demo_wan_i2v.gguf"),
        ("--t5", "demo_umt5.gguf"),
        ("--clip-vision", "demo_clip_vision.safetensors"),
        ("--video-vae", "demo_wan_vae.safetensors"),
    ] {
        a.extend([f.to_string(), n.to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn bare_names_are_found_in_models_dir_env_and_comfyui() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layouts(root);
    // Nowhere to look: one line naming the places, and a hint.
    let o = run_in(root, &plan_by_name(&[]), &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(
            "error: --image-model demo_sdxl.safetensors: not found in the working directory\n"
        ),
        "{err}"
    );
    assert!(err.lines().nth(1).unwrap().starts_with("hint: "), "{err}");
    for (extra, env) in [
        (vec!["--models-dir", "flat"], vec![]),
        (vec![], vec![("NIJIGEN_MODELS", root.join("flat"))]),
        (vec!["--comfyui", "ComfyUI"], vec![]),
    ] {
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let o = run_in(root, &plan_by_name(&extra), &env);
        assert!(o.status.success(), "{extra:?} {env:?}: {}", stderr(&o));
        let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        let files: Vec<&str> = j["video"]["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["file"].as_str().unwrap())
            .collect();
        assert!(files.contains(&"demo_umt5.gguf"), "{files:?}");
        // Without a budget everything runs on the CPU: the plan counts RAM, no device.
        assert!(j["peak_ram_bytes"].as_u64().unwrap() > 0, "{j}");
    }
    // The same lookup for `image` and `video` (their plans open every file).
    for args in [
        vec![
            "plan",
            "image",
            "-m",
            "demo_sdxl.safetensors",
            "-W",
            "128",
            "-H",
            "96",
        ],
        vec![
            "plan",
            "video",
            "-m",
            "demo_wan_i2v.gguf",
            "--t5",
            "demo_umt5.gguf",
            "--clip-vision",
            "demo_clip_vision.safetensors",
            "--vae",
            "demo_wan_vae.safetensors",
            "-W",
            "64",
            "-H",
            "48",
            "--frames",
            "5",
        ],
    ] {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend([
            "--comfyui".to_string(),
            "ComfyUI".to_string(),
            "--json".to_string(),
        ]);
        let o = run_in(root, &a, &[]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let o = run_in(root, &a[..a.len() - 3], &[]);
        assert_eq!(o.status.code(), Some(1), "{args:?} without --comfyui");
        assert!(stderr(&o).contains("not found in the working directory"));
    }
    // In a ComfyUI folder, a file is looked up only in its slot's folders: the DiT is not a
    // text encoder, so --t5 does not find it under diffusion_models.
    let args = plan_by_name(&["--comfyui", "ComfyUI"]);
    let o = run_in(root, &with(args, "--t5", Some("demo_wan_i2v.gguf")), &[]);
    let err = stderr(&o);
    assert!(
        err.contains("ComfyUI/models/text_encoders (--comfyui)"),
        "{err}"
    );
    assert!(err.contains("ComfyUI/models/clip (--comfyui)"), "{err}");
}

#[test]
fn config_file_sets_models_and_defaults_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    layouts(root);
    std::fs::write(
        root.join("nijigen.toml"),
        "comfyui = \"ComfyUI\"\nthreads = 2\n\
         [image]\nmodel = \"demo_sdxl.safetensors\"\nsteps = 1\n\
         [video]\nmodel = \"demo_wan_i2v.gguf\"\nt5 = \"demo_umt5.gguf\"\n\
         clip_vision = \"demo_clip_vision.safetensors\"\nvae = \"demo_wan_vae.safetensors\"\n\
         steps = 1\nframes = 1\nwidth = 64\nheight = 48\n",
    )
    .unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "i2v",
            "-p",
            PROMPT,
            "--image-width",
            "128",
            "--image-height",
            "96",
            "--seed",
            "3",
            "--json",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    // Everything from the file: no model flag at all.
    let o = run_in(root, &args(&["-o", "a.mp4"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (j["frames"].as_u64(), j["width"].as_u64()),
        (Some(1), Some(64))
    );
    let steps = |png: &str| {
        let t = nijigen::media::png::read_parameters(root.join(png))
            .unwrap()
            .unwrap();
        GenerationParams::parse_a1111(&t).unwrap().steps
    };
    assert_eq!(steps("a.png"), 1);
    // A flag wins over the file.
    let o = run_in(root, &args(&["-o", "b.mp4", "--image-steps", "2"]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(steps("b.png"), 2);

    // `nijigen config` says where each value comes from.
    let config = |extra: &[&str], env: &[(&str, &Path)]| -> Value {
        let a: Vec<String> = ["config", "--json"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect();
        let o = run_in(root, &a, env);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let get = |j: &Value, key: &str| -> (Value, String) {
        let r = j["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("{key}"));
        (
            r["value"].clone(),
            r["source"].as_str().unwrap().to_string(),
        )
    };
    let j = config(&[], &[]);
    assert_eq!(j["config_from"].as_str(), Some("working directory"));
    assert_eq!(
        get(&j, "image.steps"),
        (Value::from(1), "file nijigen.toml".into())
    );
    assert_eq!(get(&j, "video.steps").0, Value::from(1));
    assert_eq!(get(&j, "image.cfg"), (Value::from(6), "default".into()));
    let (model, _) = get(&j, "image.model");
    assert_eq!(
        model.as_str(),
        Some("ComfyUI/models/checkpoints/demo_sdxl.safetensors")
    );
    assert_eq!(get(&j, "comfyui").1, "file nijigen.toml");
    let j = config(&["--comfyui", "ComfyUI"], &[]);
    assert_eq!(get(&j, "comfyui").1, "flag --comfyui");
    // NIJIGEN_CONFIG points elsewhere: that file, not ./nijigen.toml.
    let other = root.join("other.toml");
    std::fs::write(&other, "[image]\nsteps = 9\n").unwrap();
    let j = config(&[], &[("NIJIGEN_CONFIG", &other)]);
    assert_eq!(j["config_from"].as_str(), Some("NIJIGEN_CONFIG"));
    assert_eq!(get(&j, "image.steps").0, Value::from(9));
    assert_eq!(get(&j, "comfyui").0, Value::Null);
    // NIJIGEN_CONFIG set and empty: no file at all, not even ./nijigen.toml.
    let j = config(&[], &[("NIJIGEN_CONFIG", Path::new(""))]);
    assert!(j["config_file"].is_null());
    assert_eq!(get(&j, "image.steps"), (Value::from(25), "default".into()));
    // A typo in the file: one line naming the file, and a hint.
    std::fs::write(&other, "[image]\nstep = 9\n").unwrap();
    let o = run_in(root, &["config".to_string()], &[("NIJIGEN_CONFIG", &other)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ") && err.contains("other.toml") && err.contains("step"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
}

#[test]
fn ctrl_c_in_the_video_stage_leaves_no_partial_file() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    // Many video steps: the stop lands while stage 2 samples.
    let args = with(i2v_args(&out, &[]), "--video-steps", Some("200"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nijigen"))
        .args(&args)
        .env_remove("RUST_LOG")
        .env("NIJIGEN_CONFIG", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in err.split(b'\n') {
        let line = String::from_utf8_lossy(&line.unwrap()).into_owned();
        let done = line.starts_with("still: ");
        seen.push(line);
        if done {
            break;
        }
    }
    assert!(
        seen.last().is_some_and(|l| l.starts_with("still: ")),
        "{seen:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id().to_string();
    let k = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(k.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen:?}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // The finished still stays; no video, no sidecar, no temporary file.
    assert_eq!(names, vec!["clip.png".to_string()]);
    assert!(image::open(dir.path().join("clip.png")).is_ok());
}

/// `src` as a ComfyUI scaled fp8 file (`scaled_fp8` marker, `<layer>.scale_weight`) with every
/// Linear weight (2-D `.weight`, not an embedding table) quantized, and as a safetensors file
/// holding the dequantized values (f32(q) x scale, decoded by the library, as F16); every other
/// tensor is copied as stored into both. Returns how many weights were quantized.
fn fp8_and_dequantized(src: &Path, fp8: &Path, reference: &Path) -> usize {
    use nijigen::formats::weights::WeightFile;
    use nijigen::formats::{float, DType};
    let file = WeightFile::open_path(src).unwrap();
    let (mut q8, mut deq): (Vec<common::RawTensor>, Vec<common::RawTensor>) = (vec![], vec![]);
    let mut n = 0;
    for t in file.tensors() {
        let ty: &'static str = match t.dtype {
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::BF16 => "BF16",
            d => panic!("{}: {d} is not a float type", t.name),
        };
        let bytes = file.data(t).to_vec();
        let linear = t.shape.len() == 2
            && t.name.ends_with(".weight")
            && !t.name.ends_with("token_embedding.weight")
            && !t.name.ends_with("position_embedding.weight");
        if !linear {
            q8.push((t.name.clone(), ty, t.shape.clone(), bytes.clone()));
            deq.push((t.name.clone(), ty, t.shape.clone(), bytes));
            continue;
        }
        n += 1;
        let vals = float::to_f32_vec(t.dtype, &bytes).unwrap();
        let (q, scale) = common::fp8_quantize(&vals);
        let d: Vec<u8> = q
            .iter()
            .flat_map(|&b| half::f16::from_f32(float::f8e4m3_to_f32(b) * scale).to_le_bytes())
            .collect();
        let layer = t.name.strip_suffix(".weight").unwrap();
        q8.push((t.name.clone(), "F8_E4M3", t.shape.clone(), q));
        q8.push((
            format!("{layer}.scale_weight"),
            "F32",
            vec![],
            scale.to_le_bytes().to_vec(),
        ));
        deq.push((t.name.clone(), "F16", t.shape.clone(), d));
    }
    q8.push(("scaled_fp8".into(), "F8_E4M3", vec![0], vec![]));
    common::write_safetensors_raw(fp8, &[], &q8);
    common::write_safetensors_raw(reference, &[], &deq);
    n
}

/// `nijigen i2v` on ComfyUI scaled fp8 files (the SDXL checkpoint, the Wan DiT and CLIP vision;
/// the umT5 stays the demo's GGUF) gives exactly the still and frames of the same run on files
/// holding the dequantized weights: the fp8 weights load as those values and nothing else in
/// the chain differs (tolerance 0).
#[test]
fn i2v_on_fp8_scaled_files_matches_the_dequantized_files() {
    let m = models();
    let dir = tempfile::tempdir().unwrap();
    let mut sets: Vec<Vec<String>> = vec![vec![], vec![]];
    for (flag, src) in [
        ("--image-model", &m.sdxl),
        ("--video-model", &m.dit),
        ("--clip-vision", &m.clip_vision),
    ] {
        let name = src.file_stem().unwrap().to_string_lossy().into_owned();
        let fp8 = dir.path().join(format!("{name}_fp8_scaled.safetensors"));
        let reference = dir.path().join(format!("{name}_dequantized.safetensors"));
        let n = fp8_and_dequantized(src, &fp8, &reference);
        assert!(n > 5, "{name}: {n} quantized weights");
        sets[0].extend([flag.to_string(), s(&fp8)]);
        sets[1].extend([flag.to_string(), s(&reference)]);
    }
    let mut results = Vec::new();
    for (k, files) in sets.iter().enumerate() {
        let out = dir.path().join(format!("run{k}.mp4"));
        let frames = dir.path().join(format!("frames{k}"));
        let mut a = vec!["i2v".to_string()];
        a.extend(files.iter().cloned());
        a.extend(["--t5", &s(&m.t5), "--video-vae", &s(&m.vae)].map(String::from));
        a.extend(SIZES.iter().map(|s| s.to_string()));
        a.extend(["-p", PROMPT, "--motion", MOTION, "-o"].map(String::from));
        a.extend([s(&out), "--frames-dir".into(), s(&frames)]);
        let o = run(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        let still = image::open(dir.path().join(format!("run{k}.png")))
            .unwrap()
            .to_rgb8()
            .into_raw();
        results.push((still, frame_pixels(&frames)));
    }
    assert_eq!(results[0].1.len(), 5);
    assert!(results[0].0 == results[1].0, "stills differ");
    assert!(results[0].1 == results[1].1, "frames differ");
}
