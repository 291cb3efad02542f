//! Stage 2 (Wan2.1) from every input layout of issue 4 and the errors of issue 6, through
//! `nijigen video`, on the tiny components of tests/wan_pipeline.rs (tests/fixtures/wan_pipeline,
//! tools/reference/make_wan_pipeline_fixtures.py):
//!
//! - the DiT as a city96-style GGUF (F32, 3-D modulation: the baseline, compared with the
//!   diffusers reference frames), the same GGUF with 2-D modulation, ComfyUI safetensors
//!   (`model.diffusion_model.` prefix) in F16 and BF16, Q4_K_M / Q5_0 / Q8_0 GGUFs written by
//!   `nijigen convert`, and a diffusers folder written with the names diffusers' converters give
//!   (diffusers_names.json), so nothing here depends on our own name maps;
//! - umT5 as HF-named safetensors with `--t5-tokenizer tokenizer.json` or `spiece.model` (the
//!   small fixture tokenizer the GGUF's `tokenizer.ggml.*` keys were made from);
//! - a T2V DiT (the recipe minus the image branch) without `--image`;
//! - errors: one `error:` line (and a `hint:`), exit code 1, no output file left behind;
//! - Wan LoRAs (PEFT, kohya, ComfyUI `diff` / `diff_b`) on the Q4_K_M DiT;
//! - output formats (.gif, .webp, .mkv refused), numbered names, the sidecar, `--json`.
//!
//! Two settings: `Ref` is the fixture's run (64 x 48, 5 frames, 3 steps euler / simple /
//! shift 3, CFG 5, seed 42), compared with the reference frames; `Cheap` (2 steps, CFG 1) is
//! used where two of our own runs are compared with each other. One thread everywhere (ggml's
//! spinning workers on a loaded 2-core machine).
//!
//! Tolerances (measured on x86-64, CPU backend, 1 thread, in brackets; printed with
//! `--nocapture`):
//! - baseline GGUF vs the reference frames: at most 1 LSB off on at most 0.1% of the values
//!   (the tolerance of tests/wan_pipeline.rs).
//! - bit-identical to the baseline (the stored values are identical F32): 2-D modulation, the
//!   diffusers folder, umT5 safetensors with tokenizer.json and with spiece.model.
//! - F16 ComfyUI safetensors against the reference: worst 4 LSB, mean under 0.25 LSB
//!   (`F16_TOL`; 1 LSB, 2330 of 46080 values off, mean 0.051); BF16, looser since BF16 keeps 8
//!   mantissa bits: worst 12 LSB, mean under 1.5 (`BF16_TOL`; 3 LSB, mean 0.45).
//! - GGUFs from `nijigen convert` of the F16 file (block 0's q checked to be stored quantized):
//!   Q4_K_M and Q5_0 worst 48 LSB, mean under 8 (`Q4_TOL`; Q4_K_M 22 LSB, mean 3.2; Q5_0 12,
//!   1.7); Q8_0 worst 16, mean under 2 (`Q8_TOL`; 7, 0.90): they run and stay near.
//! - LoRA `:0.7` changes the frames (PEFT / kohya on q: worst 10 LSB, mean 1.3 / 1.6; diff on
//!   norm_q + diff_b on q's bias: worst 4, mean 0.5); `:0` gives the frames without a LoRA,
//!   bit for bit.
//! - T2V: same seed, same frames bit for bit; seed 7 vs 42: 98.5% of the values differ.
//!
//! The GIF is decoded with the `gif` crate (the `image` crate is built without its gif
//! feature); the WebP is checked for its RIFF / WEBP header.
//!
//! The weight files are written once per test process under the target's tmp dir
//! (wan_layouts/, replaced by the next run) and shared between the tests.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use common::{hash_values, recipe_tensors, St};
use nijigen::formats::gguf::{GgufFile, GgufWriter, TensorDecl};
use nijigen::formats::{DType, MetaValue};
use nijigen::ggml::GgmlType;
use serde_json::Value;

const DIR: &str = "tests/fixtures/wan_pipeline";
const TOKENIZER_DIR: &str = "tests/fixtures/umt5_tokenizer/small";
const COMFY: &str = "model.diffusion_model.";

/// (name, shape, values)
type Tensor = (String, Vec<u64>, Vec<f32>);

/// (worst LSB, mean LSB) bounds against the reference frames.
const F16_TOL: (u8, f64) = (4, 0.25);
const BF16_TOL: (u8, f64) = (12, 1.5);
const Q4_TOL: (u8, f64) = (48, 8.0);
const Q8_TOL: (u8, f64) = (16, 2.0);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn json(dir: &str, name: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(dir).join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn index() -> &'static Value {
    static I: OnceLock<Value> = OnceLock::new();
    I.get_or_init(|| json(DIR, "index.json"))
}

fn settings() -> &'static Value {
    &index()["settings"]
}

/// The stored tensors of one of index.json's files ("dit", "t5", "clip_vision", "vae").
fn stored(key: &str) -> &'static [Tensor] {
    static T: OnceLock<HashMap<&'static str, Vec<Tensor>>> = OnceLock::new();
    let all = T.get_or_init(|| {
        ["dit", "t5", "clip_vision", "vae"]
            .into_iter()
            .map(|k| (k, recipe_tensors(&index()["files"][k]["tensors"])))
            .collect()
    });
    &all[key]
}

/// The tensors of tests/fixtures/sdxl_pipeline's checkpoint under `prefix`, prefix removed.
fn sdxl_component(prefix: &str) -> Vec<Tensor> {
    let idx = json("tests/fixtures/sdxl_pipeline", "index.json");
    let list: Vec<Value> = idx["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect();
    recipe_tensors(&Value::Array(list))
        .into_iter()
        .map(|(n, s, v)| (n[prefix.len()..].to_string(), s, v))
        .collect()
}

fn reference_frames() -> Vec<u8> {
    let e = &index()["frames"];
    std::fs::read(Path::new(DIR).join(e["file"].as_str().unwrap())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn work_dir() -> &'static Path {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wan_layouts");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("runs")).unwrap();
        d
    })
}

/// `name` under the work dir, made by `make(tmp)` the first time (written aside, then renamed).
fn once(cell: &'static OnceLock<PathBuf>, name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    cell.get_or_init(|| {
        let path = work_dir().join(name);
        let tmp = work_dir().join(format!("tmp_{name}"));
        make(&tmp);
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
    .clone()
}

fn meta_value(m: &Value) -> MetaValue {
    match m["type"].as_str().unwrap() {
        "u32" => MetaValue::U32(m["value"].as_u64().unwrap() as u32),
        "f32" => MetaValue::F32(m["value"].as_f64().unwrap() as f32),
        t => panic!("metadata type {t}"),
    }
}

/// An F32 GGUF of `tensors` with the architecture and metadata of index.json's file `key`,
/// plus `extra`.
fn write_gguf(path: &Path, key: &str, tensors: &[Tensor], extra: Vec<(String, MetaValue)>) {
    let file = &index()["files"][key];
    let mut meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String(file["architecture"].as_str().unwrap().into()),
    )];
    for m in file["metadata"].as_array().unwrap() {
        meta.push((m["key"].as_str().unwrap().into(), meta_value(m)));
    }
    meta.extend(extra);
    let decls: Vec<TensorDecl> = tensors
        .iter()
        .map(|(n, s, _)| TensorDecl::new(n.clone(), GgmlType::F32, s.clone()))
        .collect();
    let f = std::fs::File::create(path).unwrap();
    let mut w = GgufWriter::new(path, std::io::BufWriter::new(f), &meta, &decls).unwrap();
    for (name, _, vals) in tensors {
        w.write_tensor(name, bytemuck::cast_slice(vals)).unwrap();
    }
    w.finish().unwrap();
}

fn st(path: &Path, tensors: &[Tensor], ty: St) {
    common::write_tensors(path, tensors, ty);
}

/// The baseline DiT: city96 layout (original names, 5-D patch_embedding, 3-D modulation), F32.
fn dit_gguf() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "dit.gguf", |p| {
        write_gguf(p, "dit", stored("dit"), vec![])
    })
}

/// The same weights with `modulation` [6, dim] / [2, dim] instead of [1, 6, dim] / [1, 2, dim].
fn dit_gguf_2d() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "dit_2d_modulation.gguf", |p| {
        let t: Vec<Tensor> = stored("dit")
            .iter()
            .map(|(n, s, v)| {
                let s = if n.ends_with("modulation") {
                    assert_eq!(s.len(), 3);
                    s[1..].to_vec()
                } else {
                    s.clone()
                };
                (n.clone(), s, v.clone())
            })
            .collect();
        write_gguf(p, "dit", &t, vec![])
    })
}

/// ComfyUI's repackaged file: original names under `model.diffusion_model.`.
fn dit_comfy(ty: St) -> PathBuf {
    static F16: OnceLock<PathBuf> = OnceLock::new();
    static BF16: OnceLock<PathBuf> = OnceLock::new();
    let (cell, name) = match ty {
        St::F16 => (&F16, "dit_comfy_fp16.safetensors"),
        St::Bf16 => (&BF16, "dit_comfy_bf16.safetensors"),
        St::F32 => unreachable!(),
    };
    once(cell, name, |p| {
        let t: Vec<Tensor> = stored("dit")
            .iter()
            .map(|(n, s, v)| (format!("{COMFY}{n}"), s.clone(), v.clone()))
            .collect();
        st(p, &t, ty)
    })
}

/// `nijigen convert dit_comfy_fp16.safetensors -o dit-TYPE.gguf --type TYPE`; checks that
/// block 0's self-attention q (the LoRA tests' target) is stored as `want`. (The converted
/// file keeps ComfyUI's `model.diffusion_model.` prefix; the loader strips it.)
fn convert(cell: &'static OnceLock<PathBuf>, ty: &str, want: GgmlType) -> PathBuf {
    once(cell, &format!("dit-{ty}.gguf"), |p| {
        let src = dit_comfy(St::F16);
        let o = common::nijigen(&[
            "convert",
            src.to_str().unwrap(),
            "-o",
            p.to_str().unwrap(),
            "--type",
            ty,
            "--threads",
            "1",
        ]);
        assert!(o.status.success(), "convert: {}", common::stderr(&o));
        let g = GgufFile::open(p).unwrap();
        let q = g
            .header()
            .tensors
            .iter()
            .find(|t| t.name.ends_with("blocks.0.self_attn.q.weight"))
            .expect("blocks.0.self_attn.q.weight");
        assert_eq!(q.dtype, DType::Ggml(want), "{ty}");
    })
}

fn dit_q4km() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    convert(&C, "q4_k_m", GgmlType::Q4_K)
}

fn dit_q8_0() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    convert(&C, "q8_0", GgmlType::Q8_0)
}

fn dit_q5_0() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    convert(&C, "q5_0", GgmlType::Q5_0)
}

/// A T2V DiT: the recipe minus the image branch (no img_emb / k_img / v_img / norm_k_img), 16
/// input channels (the same seed for patch_embedding, scaled for its fan-in).
fn t2v_tensors() -> Vec<Tensor> {
    stored("dit")
        .iter()
        .filter(|(n, _, _)| {
            !(n.starts_with("img_emb.")
                || n.contains(".k_img.")
                || n.contains(".v_img.")
                || n.contains(".norm_k_img."))
        })
        .map(|(n, s, v)| {
            if n == "patch_embedding.weight" {
                let e = index()["files"]["dit"]["tensors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| t["name"] == "patch_embedding.weight")
                    .unwrap();
                let shape = vec![s[0], 16, s[2], s[3], s[4]];
                let n_el = shape.iter().product::<u64>() as usize;
                let fan_in = (16 * s[2] * s[3] * s[4]) as f32;
                let vals = hash_values(
                    n_el,
                    e["seed"].as_u64().unwrap(),
                    3f32.sqrt() / fan_in.sqrt(),
                    0.0,
                );
                (n.clone(), shape, vals)
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect()
}

fn dit_t2v() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "dit_t2v.gguf", |p| {
        write_gguf(p, "dit", &t2v_tensors(), vec![])
    })
}

/// umT5 as city96 / llama.cpp ship it: llama.cpp names, the tokenizer in `tokenizer.ggml.*`
/// (copied from the small fixture tokenizer's GGUF).
fn t5_gguf() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "umt5.gguf", |p| {
        let file = &index()["files"]["t5"];
        let tok = GgufFile::open(file["copy_metadata_from"].as_str().unwrap()).unwrap();
        let prefix = file["copy_metadata_prefix"].as_str().unwrap();
        let extra: Vec<(String, MetaValue)> = tok
            .header()
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .cloned()
            .collect();
        write_gguf(p, "t5", stored("t5"), extra)
    })
}

/// The rows of diffusers_names.json for the folder file `path`: (diffusers name, stored name).
fn diffusers_rows(path: &str) -> Vec<(String, String)> {
    static N: OnceLock<Value> = OnceLock::new();
    let names = N.get_or_init(|| json(DIR, "diffusers_names.json"));
    let f = names["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == path)
        .unwrap_or_else(|| panic!("{path} not in diffusers_names.json"));
    f["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().into(), r[1].as_str().unwrap().into()))
        .collect()
}

/// The stored tensors of `key` renamed to diffusers' names for the folder file `path`.
fn renamed(path: &str, key: &str) -> Vec<Tensor> {
    let by_name: HashMap<&str, &Tensor> = stored(key).iter().map(|t| (t.0.as_str(), t)).collect();
    let rows = diffusers_rows(path);
    assert_eq!(
        rows.len(),
        by_name.len(),
        "{path}: every stored tensor once"
    );
    rows.into_iter()
        .map(|(dn, sn)| {
            let (_, s, v) = by_name[sn.as_str()];
            (dn, s.clone(), v.clone())
        })
        .collect()
}

const T5_HF: &str = "text_encoder/model.safetensors";

/// umT5 with HF names (`encoder.block.N.layer.0.SelfAttention.q.weight`, `shared.weight`).
fn t5_st() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "umt5_hf.safetensors", |p| {
        st(p, &renamed(T5_HF, "t5"), St::F32)
    })
}

fn clip_vision() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "clip_vision_h.safetensors", |p| {
        st(p, stored("clip_vision"), St::F32)
    })
}

fn vae() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "wan_2.1_vae.safetensors", |p| {
        st(p, stored("vae"), St::F32)
    })
}

/// A diffusers Wan I2V folder: transformer/, text_encoder/, tokenizer/, image_encoder/, vae/.
fn diffusers_folder() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "diffusers", |d| {
        for sub in [
            "transformer",
            "text_encoder",
            "tokenizer",
            "image_encoder",
            "vae",
        ] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("model_index.json"),
            "{\"_class_name\": \"WanImageToVideoPipeline\"}\n",
        )
        .unwrap();
        for (path, key) in [
            ("transformer/diffusion_pytorch_model.safetensors", "dit"),
            (T5_HF, "t5"),
            ("vae/diffusion_pytorch_model.safetensors", "vae"),
        ] {
            st(&d.join(path), &renamed(path, key), St::F32);
        }
        st(
            &d.join("image_encoder/model.safetensors"),
            stored("clip_vision"),
            St::F32,
        );
        std::fs::copy(
            Path::new(TOKENIZER_DIR).join("tokenizer.json"),
            d.join("tokenizer/tokenizer.json"),
        )
        .unwrap();
    })
}

/// SDXL's CLIP-L text encoder (HF names) and VAE (ldm names), the wrong files for Wan slots.
fn clip_l() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "clip_l.safetensors", |p| {
        st(
            p,
            &sdxl_component("conditioner.embedders.0.transformer."),
            St::F32,
        )
    })
}

fn sdxl_vae() -> PathBuf {
    static C: OnceLock<PathBuf> = OnceLock::new();
    once(&C, "sdxl_vae.safetensors", |p| {
        st(p, &sdxl_component("first_stage_model."), St::F32)
    })
}

/// A low-rank pair (down [r, in], up [out, r]) for a dim x dim linear.
fn pair(seed: u64, rank: u64) -> (Vec<f32>, Vec<f32>) {
    let d = 256u64;
    (
        hash_values((rank * d) as usize, seed, 0.5, 0.0),
        hash_values((d * rank) as usize, seed + 1, 0.5, 0.0),
    )
}

/// Wan LoRAs in the three spellings users have, on block 0's self-attention q.
fn lora(kind: &'static str) -> PathBuf {
    static PEFT: OnceLock<PathBuf> = OnceLock::new();
    static KOHYA: OnceLock<PathBuf> = OnceLock::new();
    static DIFF: OnceLock<PathBuf> = OnceLock::new();
    static SDXL: OnceLock<PathBuf> = OnceLock::new();
    let r = 4u64;
    match kind {
        "peft" => once(&PEFT, "lora_peft.safetensors", |p| {
            let (a, b) = pair(7000, r);
            let k = "diffusion_model.blocks.0.self_attn.q";
            let t = vec![
                (format!("{k}.lora_A.weight"), vec![r, 256], a),
                (format!("{k}.lora_B.weight"), vec![256, r], b),
            ];
            st(p, &t, St::F32)
        }),
        "kohya" => once(&KOHYA, "lora_kohya.safetensors", |p| {
            let (a, b) = pair(7100, r);
            let k = "lora_unet_blocks_0_self_attn_q";
            let t = vec![
                (format!("{k}.lora_down.weight"), vec![r, 256], a),
                (format!("{k}.lora_up.weight"), vec![256, r], b),
                (format!("{k}.alpha"), vec![], vec![r as f32]),
            ];
            st(p, &t, St::F32)
        }),
        "diff" => once(&DIFF, "lora_diff.safetensors", |p| {
            let k = "diffusion_model.blocks.0";
            let t = vec![
                (
                    format!("{k}.self_attn.norm_q.diff"),
                    vec![256],
                    hash_values(256, 7200, 0.5, 0.0),
                ),
                (
                    format!("{k}.self_attn.q.diff_b"),
                    vec![256],
                    hash_values(256, 7201, 0.5, 0.0),
                ),
            ];
            st(p, &t, St::F32)
        }),
        "sdxl" => once(&SDXL, "lora_sdxl.safetensors", |p| {
            let (a, b) = pair(7300, r);
            let k = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
            let t = vec![
                (format!("{k}.lora_down.weight"), vec![r, 256], a),
                (format!("{k}.lora_up.weight"), vec![256, r], b),
                (format!("{k}.alpha"), vec![], vec![r as f32]),
            ];
            st(p, &t, St::F32)
        }),
        k => panic!("{k}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Settings {
    /// The fixture's run (3 steps, CFG 5 with its negative prompt, seed 42).
    Ref,
    /// 2 steps, CFG 1: our runs compared with each other.
    Cheap,
}

/// The model flags of an I2V run on the baseline files.
fn i2v_models() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("--model", dit_gguf()),
        ("--t5", t5_gguf()),
        ("--clip-vision", clip_vision()),
        ("--vae", vae()),
        ("-i", Path::new(DIR).join("image.png")),
    ]
}

/// `models` with `flag` replaced (or added) by `path`, or removed with `None`.
fn with(
    mut models: Vec<(&'static str, PathBuf)>,
    flag: &'static str,
    path: Option<PathBuf>,
) -> Vec<(&'static str, PathBuf)> {
    models.retain(|(f, _)| *f != flag);
    if let Some(p) = path {
        models.push((flag, p));
    }
    models
}

fn args(models: &[(&str, PathBuf)], settings: Settings, extra: &[&str], out: &Path) -> Vec<String> {
    let s = self::settings();
    let num = |k: &str| s[k].to_string();
    let mut a: Vec<String> = vec!["video".into()];
    for (flag, p) in models {
        a.push((*flag).into());
        a.push(p.to_str().unwrap().into());
    }
    let (steps, cfg) = match settings {
        Settings::Ref => (num("steps"), num("cfg")),
        Settings::Cheap => ("2".to_string(), "1".to_string()),
    };
    // Defaults, unless `extra` sets the flag.
    for (k, v) in [
        ("-p", s["prompt"].as_str().unwrap().to_string()),
        ("-n", s["negative_prompt"].as_str().unwrap().to_string()),
        ("--width", num("width")),
        ("--height", num("height")),
        ("--frames", num("frames")),
        ("--steps", steps),
        ("--cfg", cfg),
        ("--shift", num("shift")),
        ("--sampler", "euler".into()),
        ("--scheduler", "simple".into()),
        ("--threads", "1".into()),
        ("--seed", num("seed")),
        ("-o", out.to_str().unwrap().into()),
    ] {
        if !extra.contains(&k) {
            a.push(k.into());
            a.push(v);
        }
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn video(models: &[(&str, PathBuf)], settings: Settings, extra: &[&str], out: &Path) -> Output {
    let a = args(models, settings, extra, out);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    common::nijigen(&refs)
}

/// Runs `nijigen video` writing runs/NAME.mp4 and its PNG frames; returns the frames (RGB8,
/// frame after frame).
fn frames(name: &str, models: &[(&str, PathBuf)], settings: Settings, extra: &[&str]) -> Vec<u8> {
    let out = work_dir().join("runs").join(format!("{name}.mp4"));
    let dir = work_dir().join("runs").join(name);
    let mut e: Vec<&str> = vec!["--frames-dir", dir.to_str().unwrap(), "--overwrite"];
    e.extend_from_slice(extra);
    let o = video(models, settings, &e, &out);
    assert!(o.status.success(), "{name}: {}", common::stderr(&o));
    read_frames(&dir)
}

fn read_frames(dir: &Path) -> Vec<u8> {
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    assert_eq!(pngs.len(), 5, "{pngs:?}");
    let mut all = Vec::new();
    for p in &pngs {
        let (rgb, w, h) = nijigen::media::image::load_rgb(p).unwrap();
        assert_eq!((w, h), (64, 48));
        all.extend_from_slice(&rgb);
    }
    all
}

/// The baseline GGUF files at the fixture's settings (checked against the reference in
/// `baseline_gguf_matches_the_reference`).
fn base_ref() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| frames("base_ref", &i2v_models(), Settings::Ref, &[]))
}

/// (worst LSB, values differing, mean LSB).
fn u8_diff(a: &[u8], b: &[u8]) -> (u8, usize, f64) {
    assert_eq!(a.len(), b.len());
    let mut worst = 0u8;
    let mut n = 0usize;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        worst = worst.max(d);
        n += usize::from(d != 0);
        sum += f64::from(d);
    }
    (worst, n, sum / a.len() as f64)
}

/// Within `tol` (worst, mean) of the reference frames.
fn near_reference(what: &str, got: &[u8], tol: (u8, f64)) {
    let (worst, n, mean) = u8_diff(got, &reference_frames());
    eprintln!("{what} vs reference: worst {worst} LSB, {n} values differ, mean {mean:.3} LSB");
    assert!(
        worst <= tol.0 && mean < tol.1,
        "{what}: worst {worst} LSB, mean {mean} (tolerance {tol:?})"
    );
}

/// The failure of a CLI run: exactly one `error:` line (and at most `hint:` lines), exit 1, no
/// panic. Returns the error line.
fn one_line_error(o: &Output) -> String {
    let err = common::stderr(o);
    assert!(!o.status.success(), "expected a failure: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("error:") || l.starts_with("hint:") || l.starts_with("seed")),
        "{err}"
    );
    errors[0].to_string()
}

/// Runs a failing `nijigen video` into a fresh directory; checks one error line and that
/// nothing was left in the directory. Returns the error line.
fn fails(name: &str, models: &[(&str, PathBuf)], extra: &[&str]) -> String {
    fails_with_hint(name, models, extra).0
}

/// [`fails`], also returning the `hint:` line if there is one.
fn fails_with_hint(
    name: &str,
    models: &[(&str, PathBuf)],
    extra: &[&str],
) -> (String, Option<String>) {
    let dir = work_dir().join("errors").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let o = video(models, Settings::Cheap, extra, &dir.join("out.mp4"));
    let line = one_line_error(&o);
    let hint = common::stderr(&o)
        .lines()
        .find(|l| l.starts_with("hint:"))
        .map(str::to_string);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{name}: left behind {left:?}");
    eprintln!("{name}: {line}");
    (line, hint)
}

// ---------------------------------------------------------------------------------------------
// 1. The DiT
// ---------------------------------------------------------------------------------------------

#[test]
fn baseline_gguf_matches_the_reference() {
    let got = base_ref();
    let (worst, n, _) = u8_diff(got, &reference_frames());
    eprintln!(
        "baseline GGUF vs reference: {n} of {} values differ, worst {worst} LSB",
        got.len()
    );
    assert!(worst <= 1, "worst {worst} LSB");
    assert!(n as f64 <= 0.001 * got.len() as f64, "{n} values differ");
}

#[test]
fn gguf_with_2d_modulation_gives_the_same_frames() {
    let m = with(i2v_models(), "--model", Some(dit_gguf_2d()));
    let got = frames("dit_2d", &m, Settings::Ref, &[]);
    assert!(
        got == base_ref(),
        "2-D modulation: {:?}",
        u8_diff(&got, base_ref())
    );
}

#[test]
fn comfyui_safetensors_f16_and_bf16_stay_near_the_reference() {
    for (ty, name, tol) in [
        (St::F16, "comfy_f16", F16_TOL),
        (St::Bf16, "comfy_bf16", BF16_TOL),
    ] {
        let m = with(i2v_models(), "--model", Some(dit_comfy(ty)));
        let got = frames(name, &m, Settings::Ref, &[]);
        near_reference(name, &got, tol);
    }
}

#[test]
fn diffusers_folder_gives_the_same_frames() {
    // Only --model and the image: the other components come from the folder's subfolders.
    let m = vec![
        ("--model", diffusers_folder()),
        ("-i", Path::new(DIR).join("image.png")),
    ];
    let got = frames("diffusers", &m, Settings::Ref, &[]);
    assert!(
        got == base_ref(),
        "diffusers folder: {:?}",
        u8_diff(&got, base_ref())
    );
}

#[test]
fn quantized_ggufs_from_nijigen_convert_run_near_the_reference() {
    for (name, dit, tol) in [
        ("q4_k_m", dit_q4km(), Q4_TOL),
        ("q5_0", dit_q5_0(), Q4_TOL),
        ("q8_0", dit_q8_0(), Q8_TOL),
    ] {
        let m = with(i2v_models(), "--model", Some(dit));
        let got = frames(name, &m, Settings::Ref, &[]);
        near_reference(&format!("{name} DiT"), &got, tol);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. umT5 as HF safetensors
// ---------------------------------------------------------------------------------------------

#[test]
fn umt5_safetensors_with_either_tokenizer_gives_the_same_frames() {
    for tok in ["tokenizer.json", "spiece.model"] {
        let m = with(i2v_models(), "--t5", Some(t5_st()));
        let m = with(
            m,
            "--t5-tokenizer",
            Some(Path::new(TOKENIZER_DIR).join(tok)),
        );
        let got = frames(&format!("t5_st_{tok}"), &m, Settings::Ref, &[]);
        assert!(
            got == base_ref(),
            "umT5 safetensors + {tok}: {:?}",
            u8_diff(&got, base_ref())
        );
    }
}

#[test]
fn umt5_safetensors_without_tokenizer_is_an_error() {
    let m = with(i2v_models(), "--t5", Some(t5_st()));
    let line = fails("t5_no_tokenizer", &m, &[]);
    assert!(line.contains("--t5-tokenizer"), "{line}");
    assert!(!line.contains("sentencepiece"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// 3. T2V
// ---------------------------------------------------------------------------------------------

fn t2v_models() -> Vec<(&'static str, PathBuf)> {
    vec![
        ("--model", dit_t2v()),
        ("--t5", t5_gguf()),
        ("--vae", vae()),
    ]
}

#[test]
fn t2v_dit_runs_without_image_and_is_deterministic() {
    let dir = work_dir().join("runs");
    let a = frames("t2v_a", &t2v_models(), Settings::Cheap, &[]);
    let b = frames("t2v_b", &t2v_models(), Settings::Cheap, &[]);
    let c = frames("t2v_c", &t2v_models(), Settings::Cheap, &["--seed", "7"]);
    assert!(a == b, "same seed, other frames: {:?}", u8_diff(&a, &b));
    let (worst, n, mean) = u8_diff(&a, &c);
    eprintln!("T2V seed 42 vs 7: worst {worst}, {n} values differ, mean {mean:.2}");
    assert!(n > a.len() / 2, "another seed changes the frames");
    // The MP4 written by that run: 5 frames.
    let mp4 = dir.join("t2v_a.mp4");
    let f = std::fs::File::open(&mp4).unwrap();
    let size = f.metadata().unwrap().len();
    let r = mp4::Mp4Reader::read_header(std::io::BufReader::new(f), size).unwrap();
    assert_eq!(r.tracks()[&1].sample_count(), 5);
}

// ---------------------------------------------------------------------------------------------
// 4. Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn t2v_dit_with_image_is_an_error() {
    let m = with(t2v_models(), "-i", Some(Path::new(DIR).join("image.png")));
    let line = fails("t2v_with_image", &m, &[]);
    assert!(
        line.contains("text-to-video") && line.contains("--image"),
        "{line}"
    );
}

#[test]
fn i2v_dit_without_image_is_an_error() {
    let m = with(i2v_models(), "-i", None);
    let line = fails("i2v_without_image", &m, &[]);
    assert!(
        line.contains("image-to-video") && line.contains("--image"),
        "{line}"
    );
}

#[test]
fn wrong_files_for_the_text_encoder_slot() {
    for (name, file) in [
        ("clip_l_as_t5", clip_l()),
        ("clip_vision_as_t5", clip_vision()),
    ] {
        let m = with(i2v_models(), "--t5", Some(file));
        let (line, hint) = fails_with_hint(name, &m, &[]);
        assert!(line.contains("not a umT5 text encoder"), "{line}");
        assert!(
            hint.is_some_and(|h| h.contains("nijigen info")),
            "{name}: no hint"
        );
    }
}

#[test]
fn sdxl_vae_is_not_a_wan_vae() {
    let m = with(i2v_models(), "--vae", Some(sdxl_vae()));
    let line = fails("sdxl_vae", &m, &[]);
    assert!(line.contains("not a Wan2.1 VAE"), "{line}");
}

#[test]
fn missing_components_name_their_flag() {
    let line = fails(
        "no_clip_vision",
        &with(i2v_models(), "--clip-vision", None),
        &[],
    );
    assert!(line.contains("--clip-vision"), "{line}");
    let line = fails("no_t5", &with(i2v_models(), "--t5", None), &[]);
    assert!(line.contains("--t5"), "{line}");
    let line = fails("no_vae", &with(i2v_models(), "--vae", None), &[]);
    assert!(line.contains("--vae"), "{line}");
}

/// Checked before any file is opened: the model path does not exist.
#[test]
fn bad_sizes_and_frame_counts_fail_before_loading() {
    let missing = work_dir().join("does_not_exist.gguf");
    let m = with(i2v_models(), "--model", Some(missing));
    let line = fails("width_840", &m, &["--width", "840"]);
    assert!(line.contains("840") && line.contains("16"), "{line}");
    let line = fails("frames_80", &m, &["--frames", "80"]);
    assert!(line.contains("77") && line.contains("81"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// 5. LoRA (on the Q4_K_M DiT)
// ---------------------------------------------------------------------------------------------

#[test]
fn wan_loras_apply_on_quantized_weights() {
    let m = with(i2v_models(), "--model", Some(dit_q4km()));
    let base = frames("lora_base", &m, Settings::Cheap, &[]);
    for kind in ["peft", "kohya", "diff"] {
        let file = lora(kind);
        let full = format!("{}:0.7", file.display());
        let got = frames(
            &format!("lora_{kind}"),
            &m,
            Settings::Cheap,
            &["--lora", &full],
        );
        let (worst, n, mean) = u8_diff(&got, &base);
        eprintln!("LoRA {kind} :0.7 vs none: worst {worst}, {n} values differ, mean {mean:.3}");
        assert!(n > 0, "{kind}: the LoRA changed nothing");
        let zero = format!("{}:0", file.display());
        let got = frames(
            &format!("lora_{kind}_0"),
            &m,
            Settings::Cheap,
            &["--lora", &zero],
        );
        assert!(got == base, "{kind} :0: {:?}", u8_diff(&got, &base));
    }
}

#[test]
fn sdxl_lora_for_video_is_an_error() {
    let full = format!("{}:0.7", lora("sdxl").display());
    let line = fails("sdxl_lora", &i2v_models(), &["--lora", &full]);
    assert!(
        line.contains("adapts unet") && line.contains("not wan"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Outputs
// ---------------------------------------------------------------------------------------------

#[test]
fn gif_and_webp_outputs() {
    let dir = work_dir().join("formats");
    std::fs::create_dir_all(&dir).unwrap();
    let gif = dir.join("x.gif");
    let o = video(&t2v_models(), Settings::Cheap, &[], &gif);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(std::fs::File::open(&gif).unwrap()).unwrap();
    assert_eq!((dec.width(), dec.height()), (64, 48));
    let mut n = 0;
    while dec.read_next_frame().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 5, "GIF frames");

    let webp = dir.join("x.webp");
    let o = video(&t2v_models(), Settings::Cheap, &[], &webp);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let bytes = std::fs::read(&webp).unwrap();
    assert!(bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP");
}

/// Refused before any file is opened (the model path does not exist).
#[test]
fn unsupported_extension_fails_before_loading() {
    let dir = work_dir().join("errors").join("mkv");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = work_dir().join("does_not_exist.gguf");
    let m = with(i2v_models(), "--model", Some(missing));
    let o = video(&m, Settings::Cheap, &[], &dir.join("x.mkv"));
    let line = one_line_error(&o);
    for ext in [".mp4", ".gif", ".webp"] {
        assert!(line.contains(ext), "{line}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn existing_outputs_are_kept_sidecar_and_json() {
    let dir = work_dir().join("numbered");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("clip.mp4");
    let o = video(&t2v_models(), Settings::Cheap, &["--json"], &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let summary: Value = serde_json::from_str(common::stdout(&o).trim()).expect("--json object");
    assert_eq!(summary["seed"], settings()["seed"]);
    assert!(summary["timings"]["sample_s"].is_number(), "{summary}");
    let outputs: Vec<&str> = summary["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        outputs,
        [
            out.to_str().unwrap(),
            dir.join("clip.mp4.json").to_str().unwrap()
        ]
    );
    let side = json(dir.to_str().unwrap(), "clip.mp4.json");
    assert_eq!(side["prompt"], settings()["prompt"]);
    assert_eq!(side["seed"], settings()["seed"]);
    assert_eq!(side["frames"], 5);
    let first = std::fs::read(&out).unwrap();

    // Again: a numbered name, the first file untouched.
    let o = video(&t2v_models(), Settings::Cheap, &["--seed", "7"], &out);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), first);
    let second = dir.join("clip_0001.mp4");
    assert!(second.is_file() && dir.join("clip_0001.mp4.json").is_file());
    assert!(
        common::stdout(&o).contains("clip_0001.mp4"),
        "{}",
        common::stdout(&o)
    );

    // With --overwrite: the same name, replaced (seed 7's frames differ from seed 42's).
    let o = video(
        &t2v_models(),
        Settings::Cheap,
        &["--seed", "7", "--overwrite"],
        &out,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_ne!(std::fs::read(&out).unwrap(), first);
    assert!(!dir.join("clip_0002.mp4").exists());
    let side = json(dir.to_str().unwrap(), "clip.mp4.json");
    assert_eq!(side["seed"], 7);
}
