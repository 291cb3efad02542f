//! End-to-end reference parity of stage 2 (Wan2.1 image-to-video) on tiny components:
//! tools/reference/make_wan_pipeline_fixtures.py builds a tiny DiT, umT5, CLIP vision and Wan
//! VAE with diffusers / transformers and records every intermediate of a 3-step euler /
//! `simple` / shift 3 / CFG 5 run (ComfyUI's sampling). The weights are not stored: this test
//! writes the four files from the recipes in the layouts users have (city96-style GGUF DiT with
//! original Wan names and a 5-D `patch_embedding`, llama.cpp-named umT5 GGUF with the tokenizer
//! in `tokenizer.ggml.*`, HF CLIP vision safetensors, original-name VAE safetensors), then runs
//! the pipeline (component by component, the whole `video::generate`, and `nijigen video`).
//!
//! Tolerances (all F32; the worst values are printed with `--nocapture`; measured on x86-64,
//! CPU backend, 2 threads, in brackets):
//! - tokens and sigmas: equal; the mask channels of `y`: equal.
//! - relative L2 error 1e-5: umT5 real rows (5.5e-7, 6.1e-7; padding rows exactly 0), CLIP
//!   vision hidden_states[-2] (9.0e-7), VAE encode of the condition video (4.9e-7), first-step
//!   DiT velocity cond / uncond (1.7e-6 / 1.7e-6), VAE decode of the reference latent (1.3e-6),
//!   final latent of the whole run (2.3e-6).
//! - decoded video of the whole run: max |diff| 1e-4 on [-1, 1] (9.3e-6).
//! - 8-bit frames (library and `nijigen video` PNGs): at most 1 LSB off, on at most 0.1% of
//!   the values (7 of 46080 values, all 1 LSB: values within 1e-5 of a rounding boundary).
//! - a Q8_0 DiT (see `q8_0_dit_stays_close_to_the_reference`): final latent rel 3e-2, frames
//!   at most 16 LSB off, mean under 2 LSB (1.4e-2; 6 LSB, 0.77 LSB).
//! - ComfyUI's scaled fp8 DiT and umT5 (see `fp8_scaled_files_match_the_dequantized_reference`),
//!   against the run on the dequantized weights: umT5 rows rel 2e-3 (7.8e-4), final latent rel
//!   5e-3 (9.7e-4), frames at most 4 LSB off (1 LSB).

mod common;

use std::io::BufReader;
use std::path::{Path, PathBuf};

use common::{
    fp8_quantize, hash_values, nijigen, read_f32_entry, rel_err, stderr, write_safetensors, St,
};
use nijigen::formats::gguf::{GgufFile, GgufWriter, TensorDecl};
use nijigen::formats::MetaValue;
use nijigen::ggml::GgmlType;
use nijigen::pipeline::video::{self, WanFiles, WanRequest};
use nijigen::pipeline::{InitImage, RunOptions};
use nijigen::sampling::{SamplerKind, Scheduler};
use serde_json::Value;

const DIR: &str = "tests/fixtures/wan_pipeline";

fn index() -> Value {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

fn entry(idx: &Value, key: &str) -> Vec<f32> {
    read_f32_entry(DIR, &idx[key]).0
}

/// (stored name, PyTorch-order shape, values) of a file's recipe.
fn recipe(file: &Value) -> Vec<(String, Vec<u64>, Vec<f32>)> {
    file["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|t| {
            let shape: Vec<u64> = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim"))
                .collect();
            let n = shape.iter().product::<u64>() as usize;
            let vals = hash_values(
                n,
                t["seed"].as_u64().expect("seed"),
                t["scale"].as_f64().expect("scale") as f32,
                t["offset"].as_f64().expect("offset") as f32,
            );
            (t["name"].as_str().expect("name").to_string(), shape, vals)
        })
        .collect()
}

fn meta_value(m: &Value) -> MetaValue {
    match m["type"].as_str().expect("type") {
        "u32" => MetaValue::U32(m["value"].as_u64().expect("u32") as u32),
        "f32" => MetaValue::F32(m["value"].as_f64().expect("f32") as f32),
        t => panic!("metadata type {t}"),
    }
}

/// A GGUF with `general.architecture`, the listed metadata and `extra`; the tensors named in
/// `q8` as Q8_0 (our quantizer, checked against gguf-py's bytes), the others F32. Returns the
/// FNV-1a 64 of each Q8_0 tensor's bytes.
fn write_gguf(
    path: &Path,
    file: &Value,
    extra: Vec<(String, MetaValue)>,
    q8: &[String],
) -> Vec<(String, String)> {
    let tensors = recipe(file);
    let ty_of = |name: &str| {
        if q8.iter().any(|n| n == name) {
            GgmlType::Q8_0
        } else {
            GgmlType::F32
        }
    };
    let mut meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String(file["architecture"].as_str().expect("arch").into()),
    )];
    for m in file["metadata"].as_array().expect("metadata") {
        meta.push((m["key"].as_str().expect("key").into(), meta_value(m)));
    }
    meta.extend(extra);
    let decls: Vec<TensorDecl> = tensors
        .iter()
        .map(|(n, s, _)| TensorDecl::new(n.clone(), ty_of(n), s.clone()))
        .collect();
    let f = std::fs::File::create(path).expect("create gguf");
    let mut w =
        GgufWriter::new(path, std::io::BufWriter::new(f), &meta, &decls).expect("gguf header");
    let mut sums = Vec::new();
    for (name, shape, vals) in &tensors {
        if ty_of(name) == GgmlType::Q8_0 {
            let row = *shape.last().expect("dims") as usize;
            let size = GgmlType::Q8_0.bytes_for(vals.len() as u64).expect("size") as usize;
            let mut q = vec![0u8; size];
            nijigen::ggml::quantize(GgmlType::Q8_0, vals, row, &mut q).expect("quantize");
            sums.push((name.clone(), fnv1a64(&q)));
            w.write_tensor(name, &q).expect("gguf tensor");
        } else {
            w.write_tensor(name, bytemuck::cast_slice(vals))
                .expect("gguf tensor");
        }
    }
    w.finish().expect("gguf finish");
    sums
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    format!("{h:016x}")
}

fn write_st(path: &Path, file: &Value) {
    let tensors = recipe(file);
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, St::F32);
}

/// Writes the four files into a fresh directory under the target's temp dir (with `q8`, the
/// DiT's block linears as Q8_0).
fn write_files(name: &str, q8: bool) -> (PathBuf, WanFiles) {
    let idx = index();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("wan_pipeline_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let files = &idx["files"];
    let dit = dir.join(files["dit"]["file"].as_str().expect("file"));
    let q8_names: Vec<String> = if q8 {
        idx["q8_0"]["tensors"]
            .as_array()
            .expect("q8 tensors")
            .iter()
            .map(|v| v.as_str().expect("name").to_string())
            .collect()
    } else {
        vec![]
    };
    let sums = write_gguf(&dit, &files["dit"], vec![], &q8_names);
    assert_eq!(sums.len(), q8_names.len());
    for (name, sum) in &sums {
        assert_eq!(
            idx["q8_0"]["fnv1a64"][name].as_str(),
            Some(sum.as_str()),
            "{name}: our Q8_0 bytes differ from gguf-py's"
        );
    }
    // The tokenizer as llama.cpp's converter stores it (the small fixture tokenizer's keys).
    let t5 = dir.join(files["t5"]["file"].as_str().expect("file"));
    let tok = GgufFile::open(
        files["t5"]["copy_metadata_from"]
            .as_str()
            .expect("tokenizer"),
    )
    .expect("tokenizer gguf");
    let prefix = files["t5"]["copy_metadata_prefix"]
        .as_str()
        .expect("prefix");
    let tok_meta: Vec<(String, MetaValue)> = tok
        .header()
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .cloned()
        .collect();
    assert!(tok_meta.len() >= 5, "tokenizer keys: {}", tok_meta.len());
    write_gguf(&t5, &files["t5"], tok_meta, &[]);
    let clip = dir.join(files["clip_vision"]["file"].as_str().expect("file"));
    write_st(&clip, &files["clip_vision"]);
    let vae = dir.join(files["vae"]["file"].as_str().expect("file"));
    write_st(&vae, &files["vae"]);
    let wf = WanFiles {
        model: dit,
        t5: Some(t5),
        t5_tokenizer: None,
        clip_vision: Some(clip),
        vae: Some(vae),
        ..WanFiles::default()
    };
    (dir, wf)
}

fn image() -> InitImage {
    let (rgb, width, height) =
        nijigen::media::image::load_rgb(Path::new(DIR).join("image.png")).expect("image.png");
    InitImage { rgb, width, height }
}

fn opts() -> RunOptions {
    RunOptions {
        threads: 2,
        ..Default::default()
    }
}

fn request(idx: &Value) -> WanRequest {
    let s = &idx["settings"];
    assert_eq!(s["sampler"], "euler");
    assert_eq!(s["scheduler"], "simple");
    WanRequest {
        image: Some(image()),
        prompt: s["prompt"].as_str().expect("prompt").into(),
        negative_prompt: Some(s["negative_prompt"].as_str().expect("negative").into()),
        width: s["width"].as_u64().expect("width") as u32,
        height: s["height"].as_u64().expect("height") as u32,
        frames: s["frames"].as_u64().expect("frames") as usize,
        steps: s["steps"].as_u64().expect("steps") as usize,
        cfg: s["cfg"].as_f64().expect("cfg") as f32,
        shift: Some(s["shift"].as_f64().expect("shift")),
        sampler: SamplerKind::Euler,
        scheduler: Scheduler::Simple,
        seed: s["seed"].as_u64().expect("seed"),
        vae_tile: None,
        keep_decoded: true,
        ..WanRequest::default()
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Checks a relative error and reports it.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let e = rel_err(got, want);
    eprintln!("{what}: rel {e:.2e}, max abs {:.2e}", max_abs(got, want));
    assert!(e < tol, "{what}: relative error {e} (tolerance {tol})");
}

/// 8-bit frames: at most 1 LSB off, on at most `frac` of the values.
fn frames_close(what: &str, got: &[u8], want: &[u8], frac: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut off = 0usize;
    let mut worst = 0u8;
    for (a, b) in got.iter().zip(want) {
        let d = a.abs_diff(*b);
        worst = worst.max(d);
        off += usize::from(d != 0);
    }
    let f = off as f64 / want.len() as f64;
    eprintln!(
        "{what}: {off} of {} values differ, worst {worst} LSB",
        want.len()
    );
    assert!(worst <= 1, "{what}: a value is {worst} LSB off");
    assert!(f <= frac, "{what}: {off} values differ ({f:.4} > {frac})");
}

fn reference_frames(idx: &Value) -> Vec<u8> {
    let e = &idx["frames"];
    assert_eq!(e["dtype"], "u8");
    std::fs::read(Path::new(DIR).join(e["file"].as_str().expect("file"))).expect("frames.u8")
}

#[test]
fn image_is_the_video_size() {
    let idx = index();
    let img = image();
    assert_eq!(
        (img.width, img.height),
        (
            idx["settings"]["width"].as_u64().unwrap() as u32,
            idx["settings"]["height"].as_u64().unwrap() as u32
        )
    );
}

/// The reference run's prompts: (key in the index's `tokens`, prompt, umT5 output entry).
fn prompts(req: &WanRequest) -> [(&'static str, &str, &'static str); 2] {
    [
        ("prompt", &req.prompt, "text_prompt"),
        (
            "negative",
            req.negative_prompt.as_deref().expect("negative prompt"),
            "text_negative",
        ),
    ]
}

/// The reference token ids (sentencepiece's) of prompt `key`.
fn reference_tokens(idx: &Value, key: &str) -> Vec<u32> {
    idx["tokens"][key]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn components_match_the_reference() {
    let idx = index();
    let (_dir, files) = write_files("components", false);
    let req = request(&idx);
    let img = image();
    let (w, h) = (req.width as usize, req.height as usize);
    let (lt, lh, lw) = (1 + (req.frames - 1) / 4, h / 8, w / 8);
    video::with_models(&files, true, &opts(), &mut |_| {}, |m, _ev| {
        // Tokens and umT5 (real rows, then zero rows up to 512).
        for (key, prompt, out) in prompts(&req) {
            let tokens = m.tokenize(prompt);
            assert_eq!(
                tokens.real(),
                &reference_tokens(&idx, key)[..],
                "{key} tokens"
            );
            let text = m.encode_text(prompt)?;
            let (ref_rows, shape) = read_f32_entry(DIR, &idx[out]);
            let d = shape[1];
            assert_eq!(text.len(), 512 * d, "{key}: 512 rows");
            close(
                &format!("umT5 {key}"),
                &text[..ref_rows.len()],
                &ref_rows,
                1e-5,
            );
            assert!(
                text[ref_rows.len()..].iter().all(|&v| v == 0.0),
                "{key}: padding rows"
            );
        }
        // CLIP vision on the image (already the video size).
        let clip = m.encode_image(&img)?;
        close(
            "CLIP vision hidden_states[-2]",
            &clip,
            &entry(&idx, "clip"),
            1e-5,
        );
        // The condition y = [mask, normalised VAE latent].
        let y = m.image_condition(&img, req.frames)?;
        let want_y = entry(&idx, "y");
        let split = 4 * lt * lh * lw;
        assert_eq!(&y[..split], &want_y[..split], "mask channels");
        close(
            "VAE encode (normalised)",
            &y[split..],
            &entry(&idx, "cond_latent"),
            1e-5,
        );
        // One DiT forward each way at the first timestep, on the reference inputs.
        let text = m.encode_text(&req.prompt)?;
        let neg = m.encode_text(req.negative_prompt.as_ref().unwrap())?;
        let t0 = idx["first_step"]["timestep"].as_f64().unwrap() as f32;
        let noise = entry(&idx, "noise");
        let vc = m.dit_forward(&noise, t0, &text, Some(&clip), Some(&want_y), lt, lh, lw)?;
        let vu = m.dit_forward(&noise, t0, &neg, Some(&clip), Some(&want_y), lt, lh, lw)?;
        let first = &idx["first_step"];
        close(
            "DiT v (cond), step 1",
            &vc,
            &read_f32_entry(DIR, &first["v_cond"]).0,
            1e-5,
        );
        close(
            "DiT v (uncond), step 1",
            &vu,
            &read_f32_entry(DIR, &first["v_uncond"]).0,
            1e-5,
        );
        // The decode of the reference final latent.
        let (dshape, want_dec) = {
            let (v, s) = read_f32_entry(DIR, &idx["decoded"]);
            (s, v)
        };
        let frames = dshape[1];
        let plane = h * w;
        let mut dec = vec![0f32; 3 * frames * plane];
        m.vae_decode(&entry(&idx, "final_latent"), lt, lh, lw, &mut |i, f| {
            for c in 0..3 {
                dec[(c * frames + i) * plane..][..plane].copy_from_slice(&f[c * plane..][..plane]);
            }
        })?;
        close("VAE decode of the reference latent", &dec, &want_dec, 1e-5);
        Ok(())
    })
    .expect("pipeline components");
}

#[test]
fn the_sigmas_are_comfyuis() {
    let idx = index();
    let s = &idx["settings"];
    let sampling = nijigen::sampling::ModelSampling::Flow(
        nijigen::sampling::FlowSchedule::new(s["shift"].as_f64().unwrap()).unwrap(),
    );
    let sigmas = sampling
        .sigmas(Scheduler::Simple, s["steps"].as_u64().unwrap() as usize)
        .unwrap();
    let want: Vec<f32> = idx["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(sigmas, want);
    assert_eq!(
        sampling.timestep(want[0]),
        idx["first_step"]["timestep"].as_f64().unwrap() as f32
    );
}

#[test]
fn generate_reproduces_the_reference_frames() {
    let idx = index();
    let (_dir, files) = write_files("generate", false);
    let req = request(&idx);
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("generate");
    close(
        "final latent (3 steps)",
        &out.latent,
        &entry(&idx, "final_latent"),
        1e-5,
    );
    let dec = out.decoded.as_ref().expect("keep_decoded");
    let want = entry(&idx, "decoded");
    let worst = max_abs(dec, &want);
    eprintln!(
        "decoded video: max abs {worst:.2e}, rel {:.2e}",
        rel_err(dec, &want)
    );
    assert!(worst < 1e-4, "decoded video: max abs error {worst}");
    let got: Vec<u8> = out.frames.concat();
    frames_close("frames (library)", &got, &reference_frames(&idx), 0.001);
}

/// The DiT as city96 ships it (block linears Q8_0, our quantizer's bytes equal to gguf-py's).
/// The reference runs on the dequantized weights; ggml's CPU matmul also quantizes those
/// linears' activations to Q8_0 (its `vec_dot_type`), which CFG 5 amplifies, since the noise
/// differs between the cond and uncond passes. Measured: final latent rel 1.4e-2 against the
/// Q8_0 reference (a Python run that also rounds those activations through Q8_0 gives 1.5e-2;
/// Q8_0 vs F32 weights alone: 3.1e-3), frames worst 6 LSB, mean 0.77 LSB. ComfyUI-GGUF
/// dequantizes the weights and runs the matmuls in torch, so it has no activation rounding.
#[test]
fn q8_0_dit_stays_close_to_the_reference() {
    let idx = index();
    let (_dir, files) = write_files("q8", true);
    let req = request(&idx);
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("generate");
    let q8 = &idx["q8_0"];
    let want = read_f32_entry(DIR, &q8["final_latent"]).0;
    let f32_ref = entry(&idx, "final_latent");
    eprintln!(
        "(reference: Q8_0 vs F32 weights, final latent rel {:.2e}; ours with Q8_0 vs the F32 \
         reference: rel {:.2e})",
        rel_err(&want, &f32_ref),
        rel_err(&out.latent, &f32_ref)
    );
    close("final latent, Q8_0 DiT", &out.latent, &want, 3e-2);
    let e = &q8["frames"];
    let want_frames =
        std::fs::read(Path::new(DIR).join(e["file"].as_str().expect("file"))).expect("q8 frames");
    let got: Vec<u8> = out.frames.concat();
    let worst = got
        .iter()
        .zip(&want_frames)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .expect("frames");
    let mean = got
        .iter()
        .zip(&want_frames)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / got.len() as f64;
    eprintln!("frames, Q8_0 DiT: worst {worst} LSB, mean {mean:.4} LSB");
    assert!(
        worst <= 16 && mean < 2.0,
        "Q8_0 frames: worst {worst}, mean {mean}"
    );
}

/// `nijigen video` arguments for the reference run on `files`, writing `out` and PNG frames
/// into `frames_dir`.
fn video_args(idx: &Value, files: &WanFiles, out: &Path, frames_dir: &Path) -> Vec<String> {
    let s = &idx["settings"];
    let p = |v: &Path| v.to_str().expect("utf-8 path").to_string();
    let num = |k: &str| s[k].to_string();
    let image = p(&Path::new(DIR).join("image.png"));
    let args: Vec<String> = vec![
        "video".into(),
        "--model".into(),
        p(&files.model),
        "--t5".into(),
        p(files.t5.as_ref().unwrap()),
        "--clip-vision".into(),
        p(files.clip_vision.as_ref().unwrap()),
        "--vae".into(),
        p(files.vae.as_ref().unwrap()),
        "-i".into(),
        image,
        "-p".into(),
        s["prompt"].as_str().unwrap().into(),
        "-n".into(),
        s["negative_prompt"].as_str().unwrap().into(),
        "--width".into(),
        num("width"),
        "--height".into(),
        num("height"),
        "--frames".into(),
        num("frames"),
        "--steps".into(),
        num("steps"),
        "--cfg".into(),
        num("cfg"),
        "--shift".into(),
        num("shift"),
        "--sampler".into(),
        "euler".into(),
        "--scheduler".into(),
        "simple".into(),
        "--seed".into(),
        num("seed"),
        "--threads".into(),
        "2".into(),
        "-o".into(),
        p(out),
        "--frames-dir".into(),
        p(frames_dir),
    ];
    args
}

#[test]
fn cli_video_reproduces_the_reference_frames() {
    let idx = index();
    let (dir, files) = write_files("cli", false);
    let s = &idx["settings"];
    let out = dir.join("out.mp4");
    let frames_dir = dir.join("frames");
    let args = video_args(&idx, &files, &out, &frames_dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&refs);
    assert!(o.status.success(), "nijigen video failed: {}", stderr(&o));

    // The PNG frames.
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(&frames_dir)
        .expect("frames dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    let frames = s["frames"].as_u64().unwrap() as usize;
    let (w, h) = (
        s["width"].as_u64().unwrap() as u32,
        s["height"].as_u64().unwrap() as u32,
    );
    assert_eq!(pngs.len(), frames, "{pngs:?}");
    let mut got = Vec::new();
    for f in &pngs {
        let (rgb, fw, fh) = nijigen::media::image::load_rgb(f).expect("frame png");
        assert_eq!((fw, fh), (w, h), "{}", f.display());
        got.extend_from_slice(&rgb);
    }
    frames_close(
        "frames (nijigen video)",
        &got,
        &reference_frames(&idx),
        0.001,
    );

    // The MP4, read with an independent parser.
    let file = std::fs::File::open(&out).expect("mp4");
    let size = file.metadata().expect("mp4 size").len();
    let reader = mp4::Mp4Reader::read_header(BufReader::new(file), size).expect("mp4 parses");
    assert_eq!(reader.tracks().len(), 1, "one track");
    let track = &reader.tracks()[&1];
    assert_eq!(track.box_type().expect("box type").to_string(), "avc1");
    assert_eq!((track.width(), track.height()), (w as u16, h as u16));
    assert_eq!(track.sample_count() as usize, frames);
    let fps = s["fps"].as_f64().unwrap();
    assert!(
        (track.frame_rate() - fps).abs() < 1e-9,
        "frame rate {}",
        track.frame_rate()
    );
}

/// The whole stage under simulated VRAM budgets: every component resident on the (simulated)
/// device, the DiT streamed through two slots or one, or the encoders left on the CPU: the
/// video is bit-identical to the unconstrained run, and the accountant's peak stays under the
/// budget; a budget below what the placement needs fails with the accountant's error.
#[test]
fn budgets_give_the_same_video_and_stay_under_them() {
    use nijigen::pipeline::Memory;
    use nijigen::runtime::plan::Placement;
    use nijigen::runtime::Accountant;
    let idx = index();
    let (_dir, files) = write_files("budgets", false);
    let req = request(&idx);
    let base = video::generate(&files, &req, &opts(), &mut |_| {}).expect("unconstrained");
    let streamed = |slots| Placement::Streamed {
        blocks: vec![0, 0],
        slots,
    };
    let all = |dit: Placement, enc: Placement| {
        vec![
            (nijigen::models::T5.component, enc.clone()),
            (nijigen::models::CLIP_VISION.component, enc),
            (nijigen::models::DIT.component, dit),
            (nijigen::models::VAE_WAN.component, Placement::Resident),
        ]
    };
    let cases = [
        (
            "all resident",
            all(Placement::Resident, Placement::Resident),
        ),
        ("dit 2 slots", all(streamed(2), Placement::Resident)),
        (
            "dit 1 slot, encoders on the cpu",
            all(streamed(1), Placement::Cpu),
        ),
    ];
    let budget = 256 << 20;
    for (what, placements) in cases {
        let memory = Memory {
            accountant: Accountant::with_budget(budget),
            placements: placements.clone(),
            ..Default::default()
        };
        let o = RunOptions {
            memory: Some(memory.clone()),
            ..opts()
        };
        let out = video::generate(&files, &req, &o, &mut |_| {}).expect(what);
        assert!(out.latent == base.latent, "{what}: latent differs");
        assert!(out.frames == base.frames, "{what}: frames differ");
        let peak = memory.accountant.peak();
        eprintln!(
            "{what}: peak {peak} bytes {:?}",
            memory.accountant.peak_breakdown()
        );
        assert!(peak > 0 && peak <= budget, "{what}: peak {peak}");
        assert_eq!(memory.accountant.used(), 0, "{what}: everything given back");
        if what != "all resident" {
            continue;
        }
        // The smallest budget is the measured peak; one byte less fails.
        let tight = Memory {
            accountant: Accountant::with_budget(peak - 1),
            placements,
            ..Default::default()
        };
        let o = RunOptions {
            memory: Some(tight),
            ..opts()
        };
        let err = video::generate(&files, &req, &o, &mut |_| {}).expect_err(what);
        assert!(err.to_string().contains("budget exceeded"), "{what}: {err}");
    }
}

/// `nijigen video --vram-budget` follows the plan `nijigen plan video` prints: the same frames
/// as without a budget (also with `--offload blocks`), a measured device peak in the JSON
/// summary under the budget and under the plan's predicted peak.
#[test]
fn cli_budget_runs_match_and_the_plan_bounds_the_peak() {
    let idx = index();
    let (dir, files) = write_files("cli_budget", false);
    let s = &idx["settings"];
    let p = |v: &Path| v.to_str().expect("utf-8 path").to_string();
    let num = |k: &str| s[k].to_string();
    let common: Vec<String> = vec![
        "--model".into(),
        p(&files.model),
        "--t5".into(),
        p(files.t5.as_ref().unwrap()),
        "--clip-vision".into(),
        p(files.clip_vision.as_ref().unwrap()),
        "--vae".into(),
        p(files.vae.as_ref().unwrap()),
        "-i".into(),
        p(&Path::new(DIR).join("image.png")),
        "-p".into(),
        s["prompt"].as_str().unwrap().into(),
        "--width".into(),
        num("width"),
        "--height".into(),
        num("height"),
        "--frames".into(),
        num("frames"),
        "--steps".into(),
        "2".into(),
        "--seed".into(),
        num("seed"),
        "--threads".into(),
        "1".into(),
    ];
    let run = |extra: &[&str], name: &str| -> (Value, Vec<Vec<u8>>) {
        let frames_dir = dir.join(name);
        let mut args: Vec<String> = vec!["video".into()];
        args.extend(common.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            "-o".into(),
            p(&dir.join(format!("{name}.mp4"))),
            "--frames-dir".into(),
            p(&frames_dir),
            "--json".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = nijigen(&refs);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let summary: Value = serde_json::from_slice(&o.stdout).expect("json summary");
        let mut pngs: Vec<PathBuf> = std::fs::read_dir(&frames_dir)
            .expect("frames")
            .map(|e| e.expect("entry").path())
            .collect();
        pngs.sort();
        let frames = pngs
            .iter()
            .map(|f| nijigen::media::image::load_rgb(f).expect("png").0)
            .collect();
        (summary, frames)
    };
    let (free, base) = run(&[], "free");
    assert!(free["peak_device_bytes"].is_null());
    for (extra, name) in [
        (&["--vram-budget", "1G"][..], "budget"),
        (
            &["--vram-budget", "1G", "--offload", "blocks"][..],
            "blocks",
        ),
    ] {
        let (summary, frames) = run(extra, name);
        assert!(
            frames == base,
            "{name}: frames differ from the run without a budget"
        );
        let peak = summary["peak_device_bytes"]
            .as_u64()
            .expect("peak_device_bytes");
        assert_eq!(summary["vram_budget_bytes"].as_u64(), Some(1 << 30));
        // The plan for the same arguments.
        let mut args: Vec<String> = vec!["plan".into(), "video".into()];
        args.extend(common.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--json".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = nijigen(&refs);
        assert!(o.status.success(), "plan: {}", stderr(&o));
        let plan: Value = serde_json::from_slice(&o.stdout).expect("plan json");
        let predicted = plan["peak_device_bytes"].as_u64().expect("predicted peak");
        let dit = plan["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component"] == "dit")
            .expect("dit")
            .clone();
        eprintln!(
            "{name}: measured peak {peak}, predicted {predicted}, dit {}",
            dit["placement"]
        );
        if name == "blocks" {
            assert_eq!(dit["placement"], "streamed");
        }
        assert!(
            peak > 0 && peak <= predicted,
            "{name}: measured {peak} > predicted {predicted}"
        );
    }
}

/// A planned job opens each file once: the planner reads the tensor tables and the run maps the
/// weights from the same open files (the DiT's header is parsed once), and the video equals the
/// one-shot run's.
#[test]
fn a_planned_job_opens_each_file_once() {
    use nijigen::pipeline::plan::MemoryOptions;
    let idx = index();
    let (_dir, files) = write_files("open_once", false);
    let req = request(&idx);
    let memory = MemoryOptions {
        vram_budget: Some(1 << 30),
        ..Default::default()
    };
    let job = video::prepare(files.clone(), req.clone(), &memory).expect("prepare");
    assert!(job.plan.is_some(), "a budget gives a plan");
    let planned = job.opened.paths();
    assert_eq!(planned.len(), 4, "{planned:?}");
    assert_eq!(planned[0], files.model, "the DiT first");
    assert_eq!(job.opened.opens(), 4);
    let o = RunOptions {
        memory: job.memory(),
        ..opts()
    };
    let out = job.run(&o, &mut |_| {}, &mut |_, _| Ok(())).expect("run");
    assert_eq!(job.opened.opens(), 4, "the run opened a file again");
    let base = video::generate(&files, &req, &opts(), &mut |_| {}).expect("unplanned");
    assert!(out.latent == base.latent, "latent differs");
    // The run goes through the job's files: closed, they are opened again, once each.
    job.opened.close();
    let again = job.run(&o, &mut |_| {}, &mut |_, _| Ok(())).expect("run");
    assert_eq!(job.opened.opens(), 8);
    assert!(again.latent == base.latent, "latent differs");
}

/// The one-call `video::run` plans under the budget, follows its plan (the accountant's peak
/// stays under the budget), hands every frame to the sink and gives the unplanned run's video.
#[test]
fn the_one_call_run_follows_its_plan() {
    use nijigen::pipeline::plan::MemoryOptions;
    use nijigen::pipeline::Options;
    let idx = index();
    let (_dir, files) = write_files("one_call", false);
    let req = request(&idx);
    let budget = 1u64 << 30;
    let options = Options {
        threads: 2,
        memory: MemoryOptions {
            vram_budget: Some(budget),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut sunk = Vec::new();
    let done = video::run(
        req.clone(),
        files.clone(),
        &options,
        &mut |_| {},
        &mut |i, _| {
            sunk.push(i);
            Ok(())
        },
    )
    .expect("run");
    let plan = done.job.plan.as_ref().expect("a budget gives a plan");
    assert_eq!(plan.plan.budget, Some(budget));
    let memory = done
        .memory
        .as_ref()
        .expect("the run follows the plan's memory");
    let peak = memory.accountant.peak();
    assert!(peak > 0 && peak <= budget, "peak {peak}");
    assert_eq!(sunk, (0..done.output.frames.len()).collect::<Vec<_>>());
    let base = video::generate(&files, &req, &opts(), &mut |_| {}).expect("unplanned");
    assert!(done.output.latent == base.latent, "latent differs");
    assert!(done.output.frames == base.frames, "frames differ");
}

// ---- ComfyUI's scaled fp8 files (`fp8_scaled` in index.json) ----------------------------------

/// The two layouts of ComfyUI's scaled fp8 files, and the per-layer one with its table in the
/// header instead of `comfy_quant` tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fp8Layout {
    /// `scaled_fp8` marker, `<layer>.scale_weight` (and `scale_input` = 1, never applied).
    ScaledFp8,
    /// `<layer>.comfy_quant` JSON, `<layer>.weight_scale`, `<layer>.input_scale` = 2 (an
    /// activation scale: applying it to the weight would fail the test).
    ComfyQuant,
    /// `__metadata__._quantization_metadata` with `<layer>.weight_scale`.
    QuantMetadata,
}

/// The stored tensors of one file with the `fp8_scaled` names (recipe names) quantized:
/// our fp8 bytes and scales are checked against the reference's; `rename` gives the name in
/// the file, `prefix` is prepended to every name.
fn fp8_tensors(
    file: &Value,
    fp8: &Value,
    layout: Fp8Layout,
    prefix: &str,
    rename: &dyn Fn(&str) -> String,
) -> (Vec<common::RawTensor>, String) {
    let f32_bytes = |v: &[f32]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    let mut out: Vec<common::RawTensor> = Vec::new();
    let mut layers = serde_json::Map::new();
    let quantized: Vec<&str> = fp8["tensors"]
        .as_array()
        .expect("fp8 tensors")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    for (name, shape, vals) in recipe(file) {
        let stored = format!("{prefix}{}", rename(&name));
        if !quantized.contains(&name.as_str()) {
            out.push((stored, "F32", shape, f32_bytes(&vals)));
            continue;
        }
        let (q, scale) = fp8_quantize(&vals);
        assert_eq!(
            fp8["fnv1a64"][&name].as_str(),
            Some(fnv1a64(&q).as_str()),
            "{name}: our fp8 bytes differ from torch's"
        );
        assert_eq!(
            fp8["scales"][&name].as_f64().map(|s| s as f32),
            Some(scale),
            "{name}: scale"
        );
        let layer = stored.strip_suffix(".weight").expect("a weight");
        out.push((stored.clone(), "F8_E4M3", shape, q));
        let scalar = |v: f32| f32_bytes(&[v]);
        match layout {
            Fp8Layout::ScaledFp8 => {
                out.push((
                    format!("{layer}.scale_weight"),
                    "F32",
                    vec![],
                    scalar(scale),
                ));
                out.push((format!("{layer}.scale_input"), "F32", vec![], scalar(1.0)));
            }
            Fp8Layout::ComfyQuant | Fp8Layout::QuantMetadata => {
                out.push((
                    format!("{layer}.weight_scale"),
                    "F32",
                    vec![],
                    scalar(scale),
                ));
                out.push((format!("{layer}.input_scale"), "F32", vec![], scalar(2.0)));
                let conf = serde_json::json!({"format": "float8_e4m3fn"});
                if layout == Fp8Layout::ComfyQuant {
                    let json = conf.to_string().into_bytes();
                    let n = json.len() as u64;
                    out.push((format!("{layer}.comfy_quant"), "U8", vec![n], json));
                } else {
                    layers.insert(layer.to_string(), conf);
                }
            }
        }
    }
    if layout == Fp8Layout::ScaledFp8 {
        out.push((format!("{prefix}scaled_fp8"), "F8_E4M3", vec![0], vec![]));
    }
    let meta = serde_json::json!({ "layers": layers }).to_string();
    (out, meta)
}

/// The DiT and umT5 as Comfy-Org ships them: safetensors with their Linear weights in scaled
/// fp8 (`layout`), the DiT's names under `model.diffusion_model.`, the umT5 with HF names and
/// its sentencepiece model embedded as the U8 tensor `spiece_model`. CLIP vision and the VAE
/// are the reference files. No tokenizer is given.
fn write_fp8_files(name: &str, layout: Fp8Layout) -> (PathBuf, WanFiles) {
    let spiece = std::fs::read("tests/fixtures/umt5_tokenizer/small/spiece.model").expect("spm");
    write_fp8_files_with(name, layout, spiece)
}

/// The HF names of the umT5 recipe's llama.cpp names (diffusers_names.json).
fn t5_hf_names() -> std::collections::HashMap<String, String> {
    let names: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(DIR).join("diffusers_names.json")).expect("names"),
    )
    .expect("names json");
    names["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["from"] == "t5")
        .expect("t5 names")["tensors"]
        .as_array()
        .expect("tensors")
        .iter()
        .map(|p| (p[1].as_str().unwrap().into(), p[0].as_str().unwrap().into()))
        .collect()
}

/// [`write_fp8_files`] with `spiece` as the umT5's embedded `spiece_model` bytes.
fn write_fp8_files_with(name: &str, layout: Fp8Layout, spiece: Vec<u8>) -> (PathBuf, WanFiles) {
    let idx = index();
    let (dir, mut wf) = write_files(name, false);
    let fp8 = &idx["fp8_scaled"];
    assert_eq!(fp8["format"], "float8_e4m3fn");
    let files = &idx["files"];
    let write = |path: &Path, tensors: Vec<common::RawTensor>, meta: String| {
        let m = [("_quantization_metadata", meta.as_str())];
        let m: &[(&str, &str)] = if layout == Fp8Layout::QuantMetadata {
            &m
        } else {
            &[]
        };
        common::write_safetensors_raw(path, m, &tensors);
    };
    let dit = dir.join("dit_fp8_scaled.safetensors");
    let (tensors, meta) = fp8_tensors(
        &files["dit"],
        &fp8["dit"],
        layout,
        "model.diffusion_model.",
        &|n| n.to_string(),
    );
    write(&dit, tensors, meta);
    let to_hf = t5_hf_names();
    let (mut tensors, meta) =
        fp8_tensors(&files["t5"], &fp8["t5"], layout, "", &|n| to_hf[n].clone());
    let n = spiece.len() as u64;
    tensors.push(("spiece_model".into(), "U8", vec![n], spiece));
    let t5 = dir.join("umt5_fp8_scaled.safetensors");
    write(&t5, tensors, meta);
    wf.model = dit;
    wf.t5 = Some(t5);
    wf.t5_tokenizer = None;
    (dir, wf)
}

/// Every tensor a file loads as (name, type, bytes), through the weight store.
fn loaded(path: &Path) -> Vec<(String, nijigen::ggml::GgmlType, Vec<u8>)> {
    let store = nijigen::runtime::WeightStore::open_path(path).expect("open");
    let set = store.load_cpu(|_| true).expect("load");
    set.names()
        .iter()
        .map(|n| {
            let t = set.get(n).expect("tensor");
            (
                n.clone(),
                t.ty(),
                nijigen::ggml::tensor_get(t).expect("bytes"),
            )
        })
        .collect()
}

/// A ComfyUI scaled fp8 DiT and umT5 (with the embedded tokenizer) run without a tokenizer
/// flag and match the reference run on the dequantized weights (float(q) * scale). Our fp8
/// weights are rounded to F16 after the scale (ComfyUI rounds them to its 16-bit compute type
/// too). Measured: umT5 rows rel 7.8e-4 / 7.2e-4, final latent rel 9.7e-4, frames worst 1 LSB;
/// the fp8 reference is 4.1e-2 away from the F32 one, so a scale ignored, applied twice or to
/// the input fails.
#[test]
fn fp8_scaled_files_match_the_dequantized_reference() {
    let idx = index();
    let fp8 = &idx["fp8_scaled"];
    let req = request(&idx);
    let (_dir, files) = write_fp8_files("fp8", Fp8Layout::ScaledFp8);
    video::with_models(&files, true, &opts(), &mut |_| {}, |m, _ev| {
        for (prompt, out) in [
            (&req.prompt, "text_prompt"),
            (req.negative_prompt.as_ref().unwrap(), "text_negative"),
        ] {
            let text = m.encode_text(prompt)?;
            let want = read_f32_entry(DIR, &fp8[out]).0;
            close(&format!("fp8 umT5 {out}"), &text[..want.len()], &want, 2e-3);
        }
        Ok(())
    })
    .expect("fp8 umT5");
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("generate fp8");
    let want = read_f32_entry(DIR, &fp8["final_latent"]).0;
    eprintln!(
        "(reference: fp8 vs f32 weights, final latent rel {:.2e})",
        rel_err(&want, &entry(&idx, "final_latent"))
    );
    close("final latent, fp8 scaled", &out.latent, &want, 5e-3);
    let e = &fp8["frames"];
    let want_frames =
        std::fs::read(Path::new(DIR).join(e["file"].as_str().unwrap())).expect("fp8 frames");
    let got: Vec<u8> = out.frames.concat();
    let worst = got
        .iter()
        .zip(&want_frames)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .expect("frames");
    eprintln!("frames, fp8 scaled: worst {worst} LSB");
    assert!(worst <= 4, "fp8 frames: worst {worst} LSB");
}

/// The per-layer layouts (`comfy_quant` tensors, or the table in `_quantization_metadata`)
/// load to the same tensors as the `scaled_fp8` layout, byte for byte (the fp8 weights as F16
/// times their scale; the input scales, 2 in these files, never applied).
#[test]
fn fp8_layouts_load_the_same_weights() {
    let (_d, want) = write_fp8_files("fp8_old", Fp8Layout::ScaledFp8);
    let (dit, t5) = (loaded(&want.model), loaded(want.t5.as_ref().unwrap()));
    assert!(dit.iter().any(
        |(n, ty, _)| n == "blocks.0.self_attn.q.weight" && *ty == nijigen::ggml::GgmlType::F16
    ));
    for layout in [Fp8Layout::ComfyQuant, Fp8Layout::QuantMetadata] {
        let (_d, files) = write_fp8_files(&format!("fp8_{layout:?}"), layout);
        assert!(
            loaded(&files.model) == dit,
            "{layout:?}: DiT tensors differ"
        );
        assert!(
            loaded(files.t5.as_ref().unwrap()) == t5,
            "{layout:?}: umT5 tensors differ"
        );
    }
}

/// As a new user runs them: `nijigen info` names the fp8 layout and the embedded tokenizer,
/// and `nijigen video` takes the per-layer fp8 DiT and umT5 with no tokenizer flag.
#[test]
fn cli_runs_comfyui_fp8_files_without_a_tokenizer_flag() {
    let idx = index();
    let (dir, files) = write_fp8_files("fp8_cli", Fp8Layout::ComfyQuant);
    let p = |v: &Path| v.to_str().expect("utf-8 path").to_string();
    let t5 = p(files.t5.as_ref().unwrap());
    let o = nijigen(&["info", &t5]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = common::stdout(&o);
    assert!(text.contains("architecture:  umt5"), "{text}");
    assert!(
        text.contains(
            "quantization:  fp8 scaled (ComfyUI), 14 layers (per-layer comfy_quant, \
             <layer>.weight_scale); applied at load"
        ),
        "{text}"
    );
    assert!(
        text.contains("tokenizer:     embedded (spiece_model"),
        "{text}"
    );
    let o = nijigen(&["info", "--json", &p(&files.model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("info json");
    assert_eq!(v["architecture"], "wan-dit-i2v");
    assert_eq!(v["fp8_scaled"]["layout"], "comfy_quant");
    assert_eq!(v["fp8_scaled"]["layers"], 32);
    assert_eq!(v["embedded_tokenizer"], false);

    // The plan counts the DiT as loaded (fp8 layers as F16) and says so.
    let model = p(&files.model);
    let clip = p(files.clip_vision.as_ref().unwrap());
    let vae = p(files.vae.as_ref().unwrap());
    let plan_stage = |extra: &[&str]| -> Value {
        let mut args = vec![
            "plan",
            "video",
            "--model",
            &model,
            "--t5",
            &t5,
            "--clip-vision",
            &clip,
            "--vae",
            &vae,
            "--width",
            "64",
            "--height",
            "48",
            "--frames",
            "5",
            "--vram-budget",
            "1G",
            "--json",
        ];
        args.extend(extra);
        let o = nijigen(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let plan: Value = serde_json::from_slice(&o.stdout).expect("plan json");
        plan.get("stages")
            .and_then(|s| s.get(0))
            .unwrap_or(&plan)
            .clone()
    };
    let stage = plan_stage(&[]);
    let dit = stage["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|c| c["component"] == "dit")
        .expect("dit");
    let loaded_bytes: u64 = loaded(&files.model)
        .iter()
        .map(|(_, _, b)| nijigen::runtime::device::padded(b.len() as u64))
        .sum();
    assert_eq!(dit["weight_bytes"].as_u64(), Some(loaded_bytes), "{dit}");
    let notes = stage["notes"].as_array().expect("notes");
    for c in ["dit", "t5"] {
        let want = format!("{c}: fp8 scaled (ComfyUI) weights");
        assert!(
            notes.iter().any(|n| n.as_str().unwrap().starts_with(&want)
                && n.as_str()
                    .unwrap()
                    .contains("made F16 tensor by tensor as they are copied")),
            "on the device: {notes:?}"
        );
    }

    // Streamed, the DiT's RAM is its blocks' fp8 bytes in the file (what the uploads read),
    // not F16 copies; on the CPU, the umT5 holds its F16 copies (this file fits the RAM).
    let stage = plan_stage(&["--offload", "blocks", "--text-encoder-device", "cpu"]);
    let comp = |name: &str| {
        stage["components"]
            .as_array()
            .expect("components")
            .iter()
            .find(|c| c["component"] == name)
            .cloned()
            .expect("component")
    };
    let (dit, t5c) = (comp("dit"), comp("t5"));
    assert!(
        dit["placement"].as_str().unwrap().starts_with("streamed"),
        "{dit}"
    );
    assert_eq!(t5c["placement"], "cpu", "{t5c}");
    let file = nijigen::formats::weights::WeightFile::open_path(&files.model).expect("open");
    let fp8_in_blocks: u64 = file
        .tensors()
        .iter()
        .filter(|t| t.name.contains("blocks.") && t.dtype == nijigen::formats::DType::F8E4M3)
        .map(|t| t.size)
        .sum();
    let dit_ram = dit["ram_bytes"].as_u64().unwrap();
    let dit_weights = dit["weight_bytes"].as_u64().unwrap();
    assert!(
        dit_ram >= fp8_in_blocks && dit_ram < fp8_in_blocks * 2 && dit_ram < dit_weights,
        "streamed dit RAM {dit_ram}: blocks' fp8 {fp8_in_blocks}, weights {dit_weights}"
    );
    let notes: Vec<&str> = stage["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("t5: fp8 scaled (ComfyUI) weights")
                && n.contains("converted to F16 at load")),
        "{notes:?}"
    );
    assert!(
        t5c["ram_bytes"].as_u64().unwrap() >= t5c["weight_bytes"].as_u64().unwrap(),
        "{t5c}"
    );

    let frames_dir = dir.join("frames");
    let args = video_args(&idx, &files, &dir.join("out.mp4"), &frames_dir);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&refs);
    assert!(o.status.success(), "nijigen video failed: {}", stderr(&o));
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(&frames_dir)
        .expect("frames dir")
        .map(|e| e.expect("entry").path())
        .collect();
    pngs.sort();
    let mut got = Vec::new();
    for f in &pngs {
        got.extend(nijigen::media::image::load_rgb(f).expect("frame").0);
    }
    let e = &idx["fp8_scaled"]["frames"];
    let want = std::fs::read(Path::new(DIR).join(e["file"].as_str().unwrap())).expect("frames");
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(
        worst <= Some(4),
        "nijigen video, fp8 files: worst {worst:?} LSB"
    );
}

/// `nijigen convert` on ComfyUI's fp8 files: the scales are applied (the DiT's fp8 layers come
/// out as the same F16 values the run loads), the scales, markers and `comfy_quant` tensors
/// are left out, and the umT5's embedded tokenizer becomes `tokenizer.ggml.*` metadata that
/// tokenizes like the embedded sentencepiece model.
#[test]
fn convert_applies_fp8_scales_and_keeps_the_tokenizer() {
    let idx = index();
    let (dir, files) = write_fp8_files("fp8_convert", Fp8Layout::ComfyQuant);
    let p = |v: &Path| v.to_str().expect("utf-8 path").to_string();
    let dit_gguf = dir.join("dit-f16.gguf");
    let o = nijigen(&[
        "convert",
        &p(&files.model),
        "-o",
        &p(&dit_gguf),
        "--type",
        "f16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t5 = files.t5.as_ref().unwrap();
    let t5_gguf = dir.join("umt5-q8_0.gguf");
    let o = nijigen(&["convert", &p(t5), "-o", &p(&t5_gguf), "--type", "q8_0"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let fp8_names: Vec<&str> = idx["fp8_scaled"]["dit"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let from_fp8 = loaded(&files.model);
    let from_gguf = loaded(&dit_gguf);
    assert_eq!(
        from_gguf.len(),
        from_fp8.len(),
        "same tensors, no scales or markers"
    );
    for name in &fp8_names {
        let a = from_fp8.iter().find(|t| t.0 == *name).expect("fp8 tensor");
        let b = from_gguf
            .iter()
            .find(|t| t.0 == *name)
            .expect("gguf tensor");
        assert!(
            a == b,
            "{name}: the converted F16 values differ from the loaded ones"
        );
    }
    let file = nijigen::formats::weights::WeightFile::open_path(&dit_gguf).expect("gguf");
    assert!(
        file.tensors().iter().all(|t| !t.name.ends_with("scale")
            && !t.name.ends_with("comfy_quant")
            && !t.name.ends_with("scaled_fp8")),
        "quantization tensors written"
    );
    assert!(file.meta("safetensors._quantization_metadata").is_none());

    use nijigen::text::umt5::Umt5Tokenizer;
    let from_gguf = Umt5Tokenizer::from_gguf_file(&t5_gguf).expect("tokenizer in the GGUF");
    let spm = Umt5Tokenizer::from_spiece_model("tests/fixtures/umt5_tokenizer/small/spiece.model")
        .expect("spiece");
    let s = &idx["settings"];
    for text in [
        s["prompt"].as_str().unwrap(),
        s["negative_prompt"].as_str().unwrap(),
        "  Ünïcödé  full-width ＡＢＣ, tabs\tand\nnewlines ... 123 ",
    ] {
        assert_eq!(
            from_gguf.encode_wan(text).real(),
            spm.encode_wan(text).real(),
            "{text:?}"
        );
    }
    // And it runs as a GGUF umT5 without a tokenizer flag.
    let o = nijigen(&["info", &p(&t5_gguf)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!common::stdout(&o).contains("quantization:"));
}

/// Tensors by name, type and bytes.
type Tensors = Vec<(String, GgmlType, Vec<u8>)>;

/// Every tensor of `path` loaded with `how`, then placed resident on a (simulated) device:
/// (name, type, bytes on the device), and the loaded set's copied and deferred bytes.
fn placed_tensors(path: &Path, how: nijigen::runtime::Fp8Load) -> (Tensors, u64, u64) {
    use nijigen::runtime::{Accountant, DeviceWeights, Residency};
    let store = nijigen::runtime::WeightStore::open_path(path).expect("open");
    let set = store.load_with(|_| true, how).expect("load");
    let backend = nijigen::ggml::Backend::cpu(1).expect("backend");
    let acct = Accountant::default();
    let dev =
        DeviceWeights::build(&set, &backend, &Residency::Resident, &acct, "dit").expect("place");
    let tensors = set
        .names()
        .iter()
        .map(|n| {
            let t = dev.set().get(n).expect("tensor");
            (
                n.clone(),
                t.ty(),
                nijigen::ggml::tensor_get(t).expect("bytes"),
            )
        })
        .collect();
    (tensors, set.copied_bytes(), set.deferred_bytes())
}

/// A component on the device makes its fp8 weights as F16 tensor by tensor while they are
/// copied there: the loaded set holds no copy (nothing copied out of the file, every fp8
/// layer deferred), and what arrives on the device is byte for byte what converting at load
/// gives. A run under a budget (DiT streamed, encoders resident) then gives exactly the latent
/// and frames of the run that converts at load.
#[test]
fn fp8_weights_on_the_device_are_made_at_upload_without_a_copy_in_ram() {
    use nijigen::pipeline::Memory;
    use nijigen::runtime::plan::Placement;
    use nijigen::runtime::{Accountant, Fp8Load};
    let idx = index();
    let (_dir, files) = write_fp8_files("fp8_upload", Fp8Layout::ScaledFp8);
    let fp8_f16: u64 = idx["fp8_scaled"]["dit"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let (_, _, b) = loaded(&files.model)
                .into_iter()
                .find(|t| t.0 == n.as_str().unwrap())
                .expect("fp8 tensor");
            b.len() as u64
        })
        .sum();
    let (at_load, copied, deferred) = placed_tensors(&files.model, Fp8Load::F16);
    assert_eq!((copied >= fp8_f16, deferred), (true, 0));
    let (at_upload, copied, deferred) = placed_tensors(&files.model, Fp8Load::OnUpload);
    assert_eq!(copied, 0, "a deferred load copies nothing out of the file");
    assert_eq!(deferred, fp8_f16, "every fp8 layer is deferred");
    assert!(at_upload == at_load, "made at upload != converted at load");

    let req = request(&idx);
    let base = video::generate(&files, &req, &opts(), &mut |_| {}).expect("fp8, at load");
    let memory = Memory {
        accountant: Accountant::with_budget(256 << 20),
        placements: vec![
            (nijigen::models::T5.component, Placement::Resident),
            (nijigen::models::CLIP_VISION.component, Placement::Resident),
            (
                nijigen::models::DIT.component,
                Placement::Streamed {
                    blocks: vec![0, 0],
                    slots: 2,
                },
            ),
            (nijigen::models::VAE_WAN.component, Placement::Resident),
        ],
        ..Default::default()
    };
    assert_eq!(
        memory.fp8_load(nijigen::models::DIT.component),
        Fp8Load::OnUpload
    );
    let o = RunOptions {
        memory: Some(memory),
        ..opts()
    };
    let out = video::generate(&files, &req, &o, &mut |_| {}).expect("fp8, at upload");
    assert!(out.latent == base.latent, "latent differs");
    assert!(out.frames == base.frames, "frames differ");
}

/// On the CPU, fp8 weights can be converted to Q8_0 at load (`Fp8Cpu::Q8_0`, what `auto`
/// picks when F16 copies would not fit the RAM): 2-D layers whose rows are whole Q8_0 blocks
/// become Q8_0 within Q8_0's rounding (at most half a step, absmax/254, per 32-value block) of
/// the F16 values, the rest F16 as before; a run stays as close to the fp8 reference as the
/// Q8_0 GGUF DiT stays to its own (tolerances of `q8_0_dit_stays_close_to_the_reference`).
#[test]
fn fp8_weights_on_the_cpu_convert_to_q8_0_when_asked() {
    use nijigen::pipeline::plan::Fp8Cpu;
    use nijigen::runtime::Fp8Load;
    let idx = index();
    let (_dir, files) = write_fp8_files("fp8_q8", Fp8Layout::ComfyQuant);
    let f16 = loaded(&files.model);
    let (q8, _, deferred) = placed_tensors(&files.model, Fp8Load::Q8_0);
    assert_eq!(deferred, 0);
    let mut quantized = 0;
    for ((n, ty, bytes), (n16, ty16, b16)) in q8.iter().zip(&f16) {
        assert_eq!(n, n16);
        if *ty == *ty16 {
            assert!(bytes == b16, "{n}: changed without being quantized");
            continue;
        }
        assert_eq!((*ty, *ty16), (GgmlType::Q8_0, GgmlType::F16), "{n}");
        quantized += 1;
        let want: Vec<f32> = b16
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let mut got = vec![0f32; want.len()];
        nijigen::ggml::dequantize(GgmlType::Q8_0, bytes, &mut got).expect("dequantize");
        for (k, (g, w)) in got.chunks(32).zip(want.chunks(32)).enumerate() {
            let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Half a step (1% more for the F16 rounding of the block's scale), plus the F16
            // rounding of the values compared with (Q8_0 is made from the exact weights).
            assert!(
                worst <= amax / 254.0 * 1.01 + amax / 2048.0,
                "{n} block {k}: off by {worst}, absmax {amax}"
            );
        }
    }
    assert!(quantized > 0, "no layer became Q8_0");

    let req = request(&idx);
    let o = RunOptions {
        fp8_cpu: Fp8Cpu::Q8_0,
        ..opts()
    };
    let out = video::generate(&files, &req, &o, &mut |_| {}).expect("fp8 as Q8_0");
    let want = read_f32_entry(DIR, &idx["fp8_scaled"]["final_latent"]).0;
    eprintln!(
        "fp8 as Q8_0: final latent rel {:.2e} from the fp8 reference",
        rel_err(&out.latent, &want)
    );
    // Measured 2.6e-2 (the Q8_0 GGUF DiT: 1.5e-2 from its own reference).
    close("final latent, fp8 as Q8_0", &out.latent, &want, 3e-2);
}

/// An embedded tokenizer (`spiece_model`) that cannot be parsed is reported as such, naming the
/// file and why, by the library, `nijigen video` and `nijigen convert`; not as a missing
/// tokenizer with a request for --t5-tokenizer.
#[test]
fn a_damaged_embedded_tokenizer_is_reported_as_such() {
    let idx = index();
    let bad = b"\x0a\xff\xff\xff\xff\x0fnot a sentencepiece model".to_vec();
    let (dir, files) = write_fp8_files_with("fp8_bad_spm", Fp8Layout::ScaledFp8, bad);
    let t5 = files.t5.clone().unwrap();
    let want = format!(
        "{}: its embedded tokenizer (spiece_model) could not be read: ",
        t5.display()
    );
    let e = video::with_models(&files, true, &opts(), &mut |_| {}, |_, _| Ok(()))
        .expect_err("a damaged tokenizer is an error")
        .to_string();
    eprintln!("{e}");
    assert!(e.starts_with(&want), "{e}");
    assert!(e.len() > want.len(), "no reason given: {e}");
    assert!(!e.contains("--t5-tokenizer"), "{e}");

    let out = dir.join("bad_spm.mp4");
    let args = video_args(&idx, &files, &out, &dir.join("bad_spm_frames"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&args);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&want), "{err}");
    assert!(!out.exists());

    let gguf = dir.join("bad_spm.gguf");
    let o = nijigen(&[
        "convert",
        t5.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("embedded tokenizer could not be read"),
        "{err}"
    );
    assert!(!gguf.exists());
}

/// A ComfyUI per-layer file whose layers are `nvfp4` (U8 packed weights [out, in / 2], fp8
/// block scales `weight_scale` [out, in / 16], `weight_scale_2`), one layer kept fp8: `nijigen
/// info` describes it (the reference DiT's architecture, both quantizations, nvfp4 "not
/// supported for loading"), while loading it, or running `nijigen video` on it, fails with
/// one error that names the layer and the format.
#[test]
fn nvfp4_files_are_described_but_not_loaded() {
    let idx = index();
    let (dir, mut files) = write_files("nvfp4", false);
    let quantized: Vec<&str> = idx["fp8_scaled"]["dit"]["tensors"]
        .as_array()
        .expect("fp8 tensors")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    let f32_bytes = |v: &[f32]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    let mut tensors: Vec<common::RawTensor> = Vec::new();
    let mut nvfp4 = Vec::new();
    for (name, shape, vals) in recipe(&idx["files"]["dit"]) {
        let stored = format!("model.diffusion_model.{name}");
        let Some(k) = quantized.iter().position(|q| *q == name) else {
            tensors.push((stored, "F32", shape, f32_bytes(&vals)));
            continue;
        };
        let layer = stored
            .strip_suffix(".weight")
            .expect("a weight")
            .to_string();
        let format = if k == 0 {
            let (q, scale) = fp8_quantize(&vals);
            tensors.push((stored, "F8_E4M3", shape, q));
            tensors.push((
                format!("{layer}.weight_scale"),
                "F32",
                vec![],
                f32_bytes(&[scale]),
            ));
            "float8_e4m3fn"
        } else {
            let (out, inp) = (shape[0], shape[1]);
            let packed: Vec<u8> = (0..out * inp / 2).map(|i| (i * 37 % 251) as u8).collect();
            let blocks = vec![0x38u8; (out * inp / 16) as usize]; // fp8 1.0
            tensors.push((stored, "U8", vec![out, inp / 2], packed));
            tensors.push((
                format!("{layer}.weight_scale"),
                "F8_E4M3",
                vec![out, inp / 16],
                blocks,
            ));
            tensors.push((
                format!("{layer}.weight_scale_2"),
                "F32",
                vec![],
                f32_bytes(&[0.01]),
            ));
            nvfp4.push(layer.clone());
            "nvfp4"
        };
        let conf = serde_json::json!({ "format": format })
            .to_string()
            .into_bytes();
        let n = conf.len() as u64;
        tensors.push((format!("{layer}.comfy_quant"), "U8", vec![n], conf));
    }
    assert!(nvfp4.len() > 10, "{} nvfp4 layers", nvfp4.len());
    let path = dir.join("dit_nvfp4.safetensors");
    common::write_safetensors_raw(&path, &[], &tensors);
    let p = |v: &Path| v.to_str().expect("utf-8 path").to_string();

    let line = |text: &str, key: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_string()
    };
    let o = nijigen(&["info", &p(&files.model)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = common::stdout(&o);
    let o = nijigen(&["info", &p(&path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = common::stdout(&o);
    eprintln!("{text}");
    assert_eq!(
        line(&text, "architecture:"),
        line(&reference, "architecture:")
    );
    assert!(
        text.contains(
            "quantization:  fp8 scaled (ComfyUI), 1 layers (per-layer comfy_quant, \
             <layer>.weight_scale); applied at load"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "quantization:  nvfp4 (ComfyUI), {} layers: not supported for loading \
             (float8_e4m3fn and float8_e5m2 are)",
            nvfp4.len()
        )),
        "{text}"
    );
    let o = nijigen(&["info", "--json", &p(&path)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("info json");
    assert_eq!(v["fp8_scaled"]["layers"], 1);
    assert_eq!(v["fp8_scaled"]["unsupported"]["nvfp4"], nvfp4.len());

    // Loading names the first nvfp4 layer (in name order) and the format.
    nvfp4.sort();
    let want = format!(
        "layer \"{}\": quantization format \"nvfp4\" is not supported",
        nvfp4[0]
    );
    let store = nijigen::runtime::WeightStore::open_path(&path).expect("opens");
    let e = store.load_cpu(|_| true).err().expect("refused").to_string();
    assert!(e.contains(&want), "{e}");
    assert!(e.contains(&p(&path)), "{e}");

    files.model = path.clone();
    let out = dir.join("nvfp4.mp4");
    let args = video_args(&idx, &files, &out, &dir.join("nvfp4_frames"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&args);
    assert!(!o.status.success());
    let err = stderr(&o);
    eprintln!("{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].contains(&want), "{err}");
    assert!(!out.exists());
}

/// Comfy-Org's fp16 umT5 (`umt5_xxl_fp16.safetensors`) carries its tokenizer inside too: an
/// F16 umT5 with HF names and `spiece_model` runs with no tokenizer flag, tokenizes the
/// prompts to the reference ids (sentencepiece's), and encodes them as the reference does
/// within F16 rounding of the weights (measured rel 9.6e-4 / 9.2e-4, tolerance 2e-3).
#[test]
fn an_fp16_umt5_with_its_tokenizer_inside_needs_no_tokenizer_flag() {
    let idx = index();
    let (dir, mut files) = write_files("fp16_spm", false);
    let to_hf = t5_hf_names();
    let mut tensors: Vec<common::RawTensor> = recipe(&idx["files"]["t5"])
        .into_iter()
        .map(|(n, shape, vals)| {
            let bytes = vals
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect();
            (to_hf[&n].clone(), "F16", shape, bytes)
        })
        .collect();
    let spiece = std::fs::read("tests/fixtures/umt5_tokenizer/small/spiece.model").expect("spm");
    tensors.push((
        "spiece_model".into(),
        "U8",
        vec![spiece.len() as u64],
        spiece,
    ));
    let t5 = dir.join("umt5_fp16.safetensors");
    common::write_safetensors_raw(&t5, &[], &tensors);
    files.t5 = Some(t5);
    files.t5_tokenizer = None;
    let req = request(&idx);
    video::with_models(&files, true, &opts(), &mut |_| {}, |m, _ev| {
        for (key, prompt, out) in prompts(&req) {
            let want = reference_tokens(&idx, key);
            assert_eq!(m.tokenize(prompt).real(), &want[..], "{key} tokens");
            let text = m.encode_text(prompt)?;
            let want = entry(&idx, out);
            close(
                &format!("fp16 umT5 {out}"),
                &text[..want.len()],
                &want,
                2e-3,
            );
        }
        Ok(())
    })
    .expect("fp16 umT5 with its tokenizer inside");
}

/// Made at upload as Q8_0 (what a plan chooses where F16 does not fit the budget): the device
/// gets exactly the bytes the Q8_0 conversion at load makes, the loaded set holds no copy, and
/// a run with the DiT and umT5 so placed stays as close to the fp8 reference as the Q8_0
/// conversion on the CPU does (tolerance of `fp8_weights_on_the_cpu_convert_to_q8_0_when_asked`).
#[test]
fn fp8_weights_made_q8_0_at_upload_match_the_conversion_at_load() {
    use nijigen::pipeline::Memory;
    use nijigen::runtime::plan::Placement;
    use nijigen::runtime::{Accountant, Fp8Load};
    let idx = index();
    let (_dir, files) = write_fp8_files("fp8_q8_upload", Fp8Layout::ScaledFp8);
    let (at_load, _, _) = placed_tensors(&files.model, Fp8Load::Q8_0);
    let (at_upload, copied, deferred) = placed_tensors(&files.model, Fp8Load::OnUploadQ8_0);
    assert_eq!(copied, 0);
    assert!(deferred > 0);
    assert!(at_upload == at_load, "made at upload != converted at load");
    assert!(at_upload.iter().any(|(_, ty, _)| *ty == GgmlType::Q8_0));

    let (dit, t5) = (
        nijigen::models::DIT.component,
        nijigen::models::T5.component,
    );
    let memory = Memory {
        accountant: Accountant::with_budget(256 << 20),
        placements: vec![
            (t5, Placement::Resident),
            (nijigen::models::CLIP_VISION.component, Placement::Resident),
            (dit, Placement::Resident),
            (nijigen::models::VAE_WAN.component, Placement::Resident),
        ],
        fp8: vec![(dit, Fp8Load::OnUploadQ8_0), (t5, Fp8Load::OnUploadQ8_0)],
        ..Default::default()
    };
    assert_eq!(memory.fp8_load(dit), Fp8Load::OnUploadQ8_0);
    let o = RunOptions {
        memory: Some(memory),
        ..opts()
    };
    let req = request(&idx);
    let out = video::generate(&files, &req, &o, &mut |_| {}).expect("fp8 as Q8_0 at upload");
    let want = read_f32_entry(DIR, &idx["fp8_scaled"]["final_latent"]).0;
    eprintln!(
        "fp8 as Q8_0 at upload: final latent rel {:.2e} from the fp8 reference",
        rel_err(&out.latent, &want)
    );
    close(
        "final latent, fp8 as Q8_0 at upload",
        &out.latent,
        &want,
        3e-2,
    );
}

// ---------------------------------------------------------------------------------------------
// Wan2.2 I2V-A14B: two experts (tools/reference/make_wan22_fixtures.py). Two tiny experts
// without the CLIP image branch, stored as QuantStack's GGUFs (original names, F32), umT5 and
// the VAE of the Wan2.1 fixture above; diffusers' WanImageToVideoPipeline(transformer=high,
// transformer_2=low, boundary_ratio=0.9) over ComfyUI's `simple` sigmas at shift 5 with euler:
// 4 steps, the high-noise expert (cfg 4) for steps 1-2, the low-noise one (cfg 3) for 3-4.
// Tolerances as the Wan2.1 run above (F32): first forwards rel 1e-5, final latent rel 1e-5,
// frames at most 1 LSB off on 0.1% of the values. Measured values are printed.

const W22: &str = "tests/fixtures/wan22";

fn wan22_index() -> Value {
    let text = std::fs::read_to_string(Path::new(W22).join("index.json")).expect("index.json");
    serde_json::from_str(&text).expect("index.json parses")
}

fn w22(entry: &Value) -> Vec<f32> {
    read_f32_entry(W22, entry).0
}

fn w22_frames(entry: &Value) -> Vec<u8> {
    assert_eq!(entry["dtype"], "u8");
    std::fs::read(Path::new(W22).join(entry["file"].as_str().expect("file"))).expect("u8")
}

/// The Wan2.1 fixture's umT5 and VAE plus the two experts as QuantStack GGUFs (and, with
/// `loras`, each expert's LoRA in its community layout) in a fresh directory.
fn write_wan22_files(name: &str, loras: bool) -> (PathBuf, WanFiles) {
    let idx = wan22_index();
    let (dir, base) = write_files(&format!("wan22_{name}"), false);
    let files = &idx["files"];
    for key in ["t5", "vae"] {
        assert_eq!(
            files[key]["same_as"],
            "tests/fixtures/wan_pipeline/index.json"
        );
    }
    let expert = |key: &str| {
        let path = dir.join(files[key]["file"].as_str().expect("file"));
        write_gguf(&path, &files[key], vec![], &[]);
        path
    };
    let mut wf = WanFiles {
        model: expert("low"),
        high_noise_model: Some(expert("high")),
        clip_vision: None,
        ..base
    };
    if loras {
        let lora = |key: &str| {
            let l = &idx["lora"][key];
            let path = dir.join(l["file"].as_str().expect("file"));
            write_st(&path, l);
            (path, l["multiplier"].as_f64().expect("multiplier") as f32)
        };
        wf.loras = vec![lora("low")];
        wf.high_noise_loras = vec![lora("high")];
    }
    (dir, wf)
}

/// `out`'s final latent (rel 1e-5) and frames (1 LSB on 0.1%) against `reference`'s
/// (`final_latent`, `frames`).
fn matches_w22(what: &str, out: &nijigen::pipeline::video::WanOutput, reference: &Value) {
    let want = w22(&reference["final_latent"]);
    close(&format!("final latent ({what})"), &out.latent, &want, 1e-5);
    let got: Vec<u8> = out.frames.concat();
    let want = w22_frames(&reference["frames"]);
    frames_close(&format!("frames ({what})"), &got, &want, 0.001);
}

/// A change that must show: `got` at least rel 1e-3 from `want`.
fn differs(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    eprintln!("{what}: rel {e:.2e} from the other run");
    assert!(e > 1e-3, "{what}: no effect (rel {e})");
}

fn wan22_request(idx: &Value) -> WanRequest {
    let s = &idx["settings"];
    assert_eq!(
        (s["sampler"].as_str(), s["scheduler"].as_str()),
        (Some("euler"), Some("simple"))
    );
    WanRequest {
        image: Some(image()),
        prompt: s["prompt"].as_str().expect("prompt").into(),
        negative_prompt: Some(s["negative_prompt"].as_str().expect("negative").into()),
        width: s["width"].as_u64().expect("width") as u32,
        height: s["height"].as_u64().expect("height") as u32,
        frames: s["frames"].as_u64().expect("frames") as usize,
        steps: s["steps"].as_u64().expect("steps") as usize,
        cfg: s["cfg_low"].as_f64().expect("cfg") as f32,
        high_noise_cfg: Some(s["cfg_high"].as_f64().expect("cfg") as f32),
        // The shift and the boundary are Wan2.2 I2V's defaults (5, 0.9): left to the pipeline.
        shift: None,
        boundary: None,
        sampler: SamplerKind::Euler,
        scheduler: Scheduler::Simple,
        seed: s["seed"].as_u64().expect("seed"),
        ..WanRequest::default()
    }
}

#[test]
fn wan22_experts_first_forwards_match_the_reference() {
    let idx = wan22_index();
    let (_dir, files) = write_wan22_files("forwards", false);
    let req = wan22_request(&idx);
    let s = &idx["settings"];
    let thw = (2, 6, 8);
    video::with_models(&files, true, &opts(), &mut |_| {}, |m, _| {
        assert!(
            m.has_experts() && m.clip.is_none(),
            "two experts, no CLIP vision"
        );
        let y = m.image_condition(req.image.as_ref().unwrap(), req.frames)?;
        close("y (mask + image latent)", &y, &w22(&idx["y"]), 1e-5);
        let text = m.encode_text(s["prompt"].as_str().unwrap())?;
        let neg = m.encode_text(s["negative_prompt"].as_str().unwrap())?;
        for (key, expert) in [("high", video::Expert::High), ("low", video::Expert::Low)] {
            let f = &idx["first_forward"][key];
            let x = match f["x"].as_str().unwrap() {
                "noise" => w22(&idx["noise"]),
                file => {
                    read_f32_entry(
                        W22,
                        &serde_json::json!({"file": file, "shape": [16, 2, 6, 8]}),
                    )
                    .0
                }
            };
            let t = f["timestep"].as_f64().unwrap() as f32;
            let vc = m.expert_forward(expert, &x, t, &text, Some(&y), thw)?;
            close(
                &format!("{key} expert v_cond at t {t}"),
                &vc,
                &w22(&f["v_cond"]),
                1e-5,
            );
            let vu = m.expert_forward(expert, &x, t, &neg, Some(&y), thw)?;
            close(
                &format!("{key} expert v_uncond"),
                &vu,
                &w22(&f["v_uncond"]),
                1e-5,
            );
        }
        Ok(())
    })
    .expect("models");
}

#[test]
fn wan22_two_experts_reproduce_the_reference_frames() {
    let idx = wan22_index();
    let (_dir, files) = write_wan22_files("generate", false);
    let req = wan22_request(&idx);
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("generate");
    assert_eq!(out.shift, 5.0, "Wan2.2 I2V's shift");
    let high: Vec<u64> = idx["settings"]["high_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        out.high_noise_steps,
        Some(high.len()),
        "the switch by boundary 0.9"
    );
    matches_w22("two experts", &out, &idx);

    // ComfyUI's split (two KSamplerAdvanced runs handing over the latent with its leftover
    // noise): with euler the same result, up to the round trip through 1 - sigma.
    let split = WanRequest {
        high_noise_steps: Some(2),
        ..req.clone()
    };
    let out2 = video::generate(&files, &split, &opts(), &mut |_| {}).expect("split");
    assert_eq!(out2.high_noise_steps, Some(2));
    close(
        "final latent (--high-noise-steps 2)",
        &out2.latent,
        &w22(&idx["final_latent"]),
        1e-5,
    );
    // Switching after 1 step instead is another video: the switch is real.
    let one = WanRequest {
        high_noise_steps: Some(1),
        ..req
    };
    let out1 = video::generate(&files, &one, &opts(), &mut |_| {}).expect("one step");
    differs(
        "switching after 1 step",
        &out1.latent,
        &w22(&idx["final_latent"]),
    );
}

#[test]
fn wan22_loras_on_each_expert_match_the_reference_at_cfg_1() {
    let idx = wan22_index();
    let (_dir, files) = write_wan22_files("lora", true);
    let l = &idx["lora"];
    let req = WanRequest {
        cfg: 1.0,
        high_noise_cfg: Some(1.0),
        ..wan22_request(&idx)
    };
    let mut phases = Vec::new();
    let out = video::generate(&files, &req, &opts(), &mut |e| {
        if let nijigen::pipeline::Event::Loaded { component, .. } = e {
            phases.push(component);
        }
    })
    .expect("generate");
    assert!(
        phases.contains(&"dit_high") && phases.contains(&"dit"),
        "{phases:?}"
    );
    matches_w22("LoRAs, cfg 1", &out, l);
    // Each expert's LoRA matters: without the high-noise one the video differs.
    let files_no_high = WanFiles {
        high_noise_loras: vec![],
        ..files
    };
    let out = video::generate(&files_no_high, &req, &opts(), &mut |_| {}).expect("generate");
    differs(
        "without the high-noise LoRA",
        &out.latent,
        &w22(&l["final_latent"]),
    );
}

/// `nijigen video` with both experts: the reference frames, the switch and both experts (and
/// their LoRAs) in the sidecar JSON; a given --clip-vision is ignored with a warning.
#[test]
fn cli_wan22_video_reproduces_the_reference_frames() {
    let idx = wan22_index();
    let (dir, files) = write_wan22_files("cli", false);
    let s = &idx["settings"];
    let out = dir.join("w22.mp4");
    let frames_dir = dir.join("frames");
    let p = |v: &Path| v.to_str().unwrap().to_string();
    let clip = write_files("wan22_cli_clip", false).1.clip_vision.unwrap();
    let mut args: Vec<String> = vec![
        "video",
        "--model",
        &p(&files.model),
        "--high-noise-model",
        &p(files.high_noise_model.as_ref().unwrap()),
        "--t5",
        &p(files.t5.as_ref().unwrap()),
        "--vae",
        &p(files.vae.as_ref().unwrap()),
        "--clip-vision",
        &p(&clip),
        "-i",
        &p(&Path::new(DIR).join("image.png")),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for (flag, v) in [
        ("-p", s["prompt"].as_str().unwrap().to_string()),
        ("-n", s["negative_prompt"].as_str().unwrap().to_string()),
        ("--width", s["width"].to_string()),
        ("--height", s["height"].to_string()),
        ("--frames", s["frames"].to_string()),
        ("--steps", s["steps"].to_string()),
        ("--cfg", s["cfg_low"].to_string()),
        ("--high-noise-cfg", s["cfg_high"].to_string()),
        ("--sampler", "euler".into()),
        ("--scheduler", "simple".into()),
        ("--seed", s["seed"].to_string()),
        ("--threads", "2".into()),
        ("-o", p(&out)),
        ("--frames-dir", p(&frames_dir)),
    ] {
        args.push(flag.into());
        args.push(v);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&refs);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("is not used") && err.contains("no CLIP image branch"),
        "{err}"
    );
    assert!(
        err.contains("I2V-A14B: high-noise expert for 2 of 4 steps (boundary 0.9)"),
        "{err}"
    );
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(&frames_dir)
        .expect("frames dir")
        .map(|e| e.expect("entry").path())
        .collect();
    pngs.sort();
    let mut got = Vec::new();
    for f in &pngs {
        got.extend_from_slice(&nijigen::media::image::load_rgb(f).expect("png").0);
    }
    frames_close(
        "frames (nijigen video, two experts)",
        &got,
        &w22_frames(&idx["frames"]),
        0.001,
    );
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("w22.mp4.json")).expect("sidecar"))
            .expect("sidecar parses");
    assert_eq!(
        sidecar["high_noise_model"],
        "wan2.2_i2v_high_noise_tiny.gguf"
    );
    assert_eq!(sidecar["model"], "wan2.2_i2v_low_noise_tiny.gguf");
    assert_eq!(sidecar["high_noise_steps"], 2);
    assert_eq!(sidecar["boundary"], 0.9);
    assert_eq!(
        sidecar["shift"], 5.0,
        "Wan2.2 I2V's shift when none is given"
    );
    assert_eq!(sidecar["high_noise_cfg"], 4.0);
}

/// A Wan2.1 DiT where a Wan2.2 expert goes, and the reverse: one-line errors with a hint,
/// before anything runs.
#[test]
fn wan21_and_wan22_dits_do_not_mix() {
    let (dir, files) = write_wan22_files("mix", false);
    let wan21 = dir.join("dit.gguf");
    let run = |model: &Path, high: &Path| {
        let p = |v: &Path| v.to_str().unwrap().to_string();
        let args = [
            "plan".to_string(),
            "video".into(),
            "--model".into(),
            p(model),
            "--high-noise-model".into(),
            p(high),
            "--t5".into(),
            p(files.t5.as_ref().unwrap()),
            "--vae".into(),
            p(files.vae.as_ref().unwrap()),
            "--vram-budget".into(),
            "4G".into(),
            "-W".into(),
            "64".into(),
            "-H".into(),
            "48".into(),
            "--frames".into(),
            "5".into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nijigen(&refs)
    };
    let o = run(&files.model, &wan21);
    let e = stderr(&o);
    assert!(!o.status.success());
    let lines: Vec<&str> = e.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("error: ") && lines[1].starts_with("hint: "),
        "one error line and one hint: {e}"
    );
    assert!(
        e.contains("is a Wan2.1 I2V DiT (with the CLIP image branch), not a Wan2.2 expert")
            && e.contains("for Wan2.1 leave --high-noise-model out"),
        "{e}"
    );
    let o = run(&wan21, files.high_noise_model.as_ref().unwrap());
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("pass Wan2.2's low-noise expert as --model"),
        "{e}"
    );
    // The pair plans: both experts listed, the high-noise one freed before the other is placed.
    let o = run(&files.model, files.high_noise_model.as_ref().unwrap());
    let out = common::stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let order = out
        .lines()
        .find(|l| l.starts_with("order:"))
        .expect("order line");
    let (free_high, load_low) = (
        order.find("free dit_high").expect("dit_high freed"),
        order.find("load dit,").expect("dit loaded"),
    );
    assert!(free_high < load_low, "{order}");
    assert!(
        out.contains("wan2.2_i2v_high_noise_tiny.gguf") && out.contains("two experts"),
        "{out}"
    );
    // A high-noise LoRA needs the high-noise expert.
    let p = |v: &Path| v.to_str().unwrap().to_string();
    let o = nijigen(&[
        "plan",
        "video",
        "--model",
        &p(&files.model),
        "--high-noise-lora",
        &p(&dir.join("dit.gguf")),
        "--t5",
        &p(files.t5.as_ref().unwrap()),
        "--vae",
        &p(files.vae.as_ref().unwrap()),
        "--vram-budget",
        "4G",
    ]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("--high-noise-lora without a high-noise expert"));
    assert!(e.contains("hint: add --high-noise-model FILE"), "{e}");
    // Either expert alone runs (the image through the latent only, Wan2.2's shift).
    let alone = WanFiles {
        model: files.high_noise_model.clone().unwrap(),
        high_noise_model: None,
        ..files.clone()
    };
    let req = WanRequest {
        steps: 2,
        ..wan22_request(&wan22_index())
    };
    let out = video::generate(&alone, &req, &opts(), &mut |_| {}).expect("one expert alone");
    assert_eq!(
        (out.shift, out.high_noise_steps, out.frames.len()),
        (5.0, None, 5)
    );
    // What `nijigen info` calls them.
    let o = nijigen(&[
        "info",
        files.high_noise_model.as_ref().unwrap().to_str().unwrap(),
    ]);
    let out = common::stdout(&o);
    assert!(
        out.contains("Wan2.2 I2V-A14B expert, dim 256")
            && out.contains("the high-noise expert by its name"),
        "{out}"
    );
}

/// Wan2.2 T2V-A14B: the same flags without an image. Two T2V experts (the tiny experts with a
/// 16-channel patch embedding): T2V's official shift (12) and boundary (0.875) apply, the
/// switch by boundary equals ComfyUI's split at the same step (euler), and both experts count.
#[test]
fn wan22_t2v_experts_run_with_the_same_flags() {
    let idx = wan22_index();
    let (dir, base) = write_wan22_files("t2v", false);
    let t2v = |key: &str| {
        let mut file = idx["files"][key].clone();
        for t in file["tensors"].as_array_mut().unwrap() {
            if t["name"] == "patch_embedding.weight" {
                t["shape"][1] = 16.into();
            }
        }
        let path = dir.join(format!("wan2.2_t2v_{key}_noise_tiny.gguf"));
        write_gguf(&path, &file, vec![], &[]);
        path
    };
    let files = WanFiles {
        model: t2v("low"),
        high_noise_model: Some(t2v("high")),
        ..base
    };
    // Only the name tells a Wan2.2 T2V expert from a Wan2.1 T2V DiT.
    let info = |p: &Path| common::stdout(&nijigen(&["info", p.to_str().unwrap()]));
    let out = info(files.high_noise_model.as_ref().unwrap());
    assert!(
        out.contains("Wan2.2 T2V-A14B expert, dim 256")
            && out.contains("the high-noise expert by its name"),
        "{out}"
    );
    let plain = dir.join("wan_t2v_tiny.gguf");
    std::fs::copy(&files.model, &plain).expect("copy");
    assert!(
        info(&plain).contains("Wan T2V DiT, dim 256"),
        "{}",
        info(&plain)
    );
    let req = WanRequest {
        image: None,
        steps: 6,
        ..wan22_request(&idx)
    };
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("t2v pair");
    assert_eq!(out.shift, 12.0, "Wan2.2 T2V's shift");
    let sampling =
        nijigen::sampling::ModelSampling::Flow(nijigen::sampling::FlowSchedule::new(12.0).unwrap());
    let sigmas = sampling.sigmas(Scheduler::Simple, 6).unwrap();
    let n = video::boundary_steps(&sampling, &sigmas, video::BOUNDARY_T2V);
    assert!(
        n > 0 && n < 6,
        "the boundary switches mid-way: {n} of 6 ({sigmas:?})"
    );
    assert_eq!(out.high_noise_steps, Some(n));
    let split = video::generate(
        &files,
        &WanRequest {
            high_noise_steps: Some(n),
            ..req.clone()
        },
        &opts(),
        &mut |_| {},
    )
    .expect("split");
    close(
        "T2V: boundary vs --high-noise-steps",
        &split.latent,
        &out.latent,
        1e-5,
    );
    let low_only = video::generate(
        &WanFiles {
            high_noise_model: None,
            ..files.clone()
        },
        &WanRequest {
            shift: Some(12.0),
            ..req
        },
        &opts(),
        &mut |_| {},
    )
    .expect("low expert alone");
    differs(
        "the low-noise expert alone (T2V)",
        &low_only.latent,
        &out.latent,
    );
}

/// `nijigen i2v` with Wan2.2's experts for stage 2 (the demo SDXL draws the still): the video
/// flags of a pair (`--video-high-noise-model`, `--video-high-noise-lora`, the switch flags)
/// reach the run and its sidecar; no CLIP vision is asked for.
#[test]
fn cli_i2v_runs_wan22_experts() {
    let (dir, files) = write_wan22_files("i2v", true);
    let demo = nijigen::demo::ensure(&dir.join("demo")).expect("demo models");
    let p = |v: &Path| v.to_str().unwrap().to_string();
    let out = dir.join("i2v.mp4");
    let (lora, w) = &files.high_noise_loras[0];
    let args: Vec<String> = [
        "i2v",
        "--image-model",
        &p(&demo.sdxl),
        "--video-model",
        &p(&files.model),
        "--video-high-noise-model",
        &p(files.high_noise_model.as_ref().unwrap()),
        "--video-high-noise-lora",
        &format!("{}:{w}", p(lora)),
        "--t5",
        &p(files.t5.as_ref().unwrap()),
        "--video-vae",
        &p(files.vae.as_ref().unwrap()),
        "--image-width",
        "128",
        "--image-height",
        "96",
        "--image-steps",
        "2",
        "-W",
        "64",
        "-H",
        "48",
        "--frames",
        "5",
        "--video-steps",
        "4",
        "--video-cfg",
        "1",
        "--high-noise-steps",
        "1",
        "--high-noise-sampler",
        "euler",
        "--video-sampler",
        "uni_pc",
        "-p",
        "a girl",
        "--seed",
        "3",
        "--threads",
        "2",
        "-o",
        &p(&out),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&refs);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let sidecar: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("i2v.mp4.json")).expect("sidecar"))
            .expect("sidecar parses");
    assert_eq!(
        sidecar["high_noise_model"],
        "wan2.2_i2v_high_noise_tiny.gguf"
    );
    assert_eq!(
        sidecar["high_noise_loras"][0]["file"],
        "wan2.2_i2v_high_noise_lora_tiny.safetensors"
    );
    assert_eq!(sidecar["high_noise_steps"], 1);
    assert_eq!(sidecar["switch"], "steps");
    assert_eq!(
        (
            sidecar["sampler"].as_str(),
            sidecar["high_noise_sampler"].as_str()
        ),
        (Some("uni_pc"), Some("euler"))
    );
    assert_eq!(sidecar["shift"], 5.0, "Wan2.2 I2V's shift");
}

/// The two experts under a simulated budget: resident or streamed, the video is bit-identical
/// to the run without one, and they are never on the device together: with both resident the
/// peak is that of the larger one alone (each expert's weights would otherwise add up).
#[test]
fn wan22_experts_are_never_on_the_device_together() {
    use nijigen::pipeline::Memory;
    use nijigen::runtime::plan::Placement;
    use nijigen::runtime::Accountant;
    let idx = wan22_index();
    let (_dir, files) = write_wan22_files("budget", false);
    let req = wan22_request(&idx);
    let base = video::generate(&files, &req, &opts(), &mut |_| {}).expect("unconstrained");
    let streamed = Placement::Streamed {
        blocks: vec![0, 0],
        slots: 2,
    };
    let run = |high: Placement, low: Placement| {
        let memory = Memory {
            accountant: Accountant::with_budget(1 << 30),
            placements: vec![
                (nijigen::models::T5.component, Placement::Cpu),
                (nijigen::models::DIT_HIGH.component, high),
                (nijigen::models::DIT.component, low),
                (nijigen::models::VAE_WAN.component, Placement::Cpu),
            ],
            ..Default::default()
        };
        let o = RunOptions {
            memory: Some(memory.clone()),
            ..opts()
        };
        let out = video::generate(&files, &req, &o, &mut |_| {}).expect("budgeted");
        assert!(
            out.latent == base.latent && out.frames == base.frames,
            "output differs"
        );
        assert_eq!(memory.accountant.used(), 0, "everything given back");
        let peak = memory.accountant.peak();
        eprintln!("peak {peak} bytes {:?}", memory.accountant.peak_breakdown());
        peak
    };
    let high = run(Placement::Resident, Placement::Cpu);
    let low = run(Placement::Cpu, Placement::Resident);
    let both = run(Placement::Resident, Placement::Resident);
    let weights = |p: &Path| std::fs::metadata(p).expect("expert file").len();
    let low_weights = weights(&files.model);
    assert!(
        high > low_weights && low > low_weights,
        "{high} {low} {low_weights}"
    );
    assert_eq!(
        both,
        high.max(low),
        "both resident: the larger expert's peak alone"
    );
    run(streamed.clone(), streamed);
}

// ---------------------------------------------------------------------------------------------
// Step caching (tools/reference/make_step_cache_fixtures.py): the Wan2.1 run above over 20
// steps, EasyCache's decision code as its script runs it (tools/reference/STEP_CACHE.md) on
// diffusers' DiT. The decisions must be the same letter for letter (the closest one is 6.5 %
// from its threshold); the final latent within rel 1e-5 (measured 1.8e-6 and 1.6e-6).

const SC: &str = "tests/fixtures/step_cache";

#[test]
fn step_caches_make_the_reference_decisions() {
    use nijigen::pipeline::step_cache::{CacheMethod, CacheSettings};
    let idx: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(SC).join("index.json")).expect("index.json"),
    )
    .expect("index parses");
    let s = &idx["settings"];
    let steps = s["steps"].as_u64().unwrap() as usize;
    let (_dir, files) = write_files("step_cache", false);
    let req = WanRequest {
        steps,
        keep_decoded: false,
        ..request(&index())
    };
    assert_eq!(
        (req.cfg, req.shift),
        (5.0, Some(3.0)),
        "the reference's settings"
    );
    let off = video::generate(&files, &req, &opts(), &mut |_| {}).expect("no cache");
    assert!(off.cache.is_none());
    let want_off = read_f32_entry(SC, &idx["final_latent_off"]).0;
    close("no cache, 20 steps", &off.latent, &want_off, 1e-5);
    let mut checked = 0;
    for run in idx["runs"].as_array().unwrap() {
        let p = &run["params"];
        let threshold = p["thresh"].as_f64().unwrap() as f32;
        let settings = match run["method"].as_str().unwrap() {
            // The script's residual (velocity - latent), not the token-space variant.
            "easycache" if p["residual"] == "output space (velocity - latent)" => CacheSettings {
                method: CacheMethod::EasyCache,
                threshold,
                retain: p["ret_steps_calls"].as_u64().unwrap() as f32 / 2.0 / steps as f32,
                max_skips: 0,
            },
            // The use_ret_steps variant (480P) is the one we run.
            "teacache" if p["use_ret_steps"] == true => {
                assert_eq!(p["coefficients_of"], "i2v-480P use_ret_steps=True");
                assert_eq!(p["ret_steps_calls"], 10);
                CacheSettings {
                    method: CacheMethod::TeaCache,
                    threshold,
                    retain: 0.0,
                    max_skips: 0,
                }
            }
            "magcache" => {
                assert_eq!(p["mag_ratios_of"], "i2v-480P");
                CacheSettings {
                    method: CacheMethod::MagCache,
                    threshold,
                    retain: p["retention_ratio"].as_f64().unwrap() as f32,
                    max_skips: p["K"].as_u64().unwrap() as usize,
                }
            }
            _ => continue,
        };
        let cached = WanRequest {
            cache: Some(settings),
            ..req.clone()
        };
        let out = video::generate(&files, &cached, &opts(), &mut |_| {}).expect("cache");
        let r = out.cache.expect("cache report");
        let name = run["name"].as_str().unwrap();
        assert_eq!(
            r.pattern[0],
            run["pattern_cond"].as_str().unwrap(),
            "{name}: cond"
        );
        assert_eq!(
            r.pattern[1],
            run["pattern_uncond"].as_str().unwrap(),
            "{name}: uncond"
        );
        assert_eq!(
            r.skipped_total() as u64,
            run["skipped_calls"].as_u64().unwrap(),
            "{name}"
        );
        eprintln!(
            "{name}: {} ({} of {} passes skipped)",
            r.pattern[0],
            r.skipped_total(),
            2 * steps
        );
        if settings.threshold == 0.0 {
            assert!(
                out.latent == off.latent,
                "{name}: threshold 0 is not bit-identical"
            );
        } else {
            let want = read_f32_entry(SC, &run["final_latent"]).0;
            close(&format!("{name}: final latent"), &out.latent, &want, 1e-5);
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "the reference's runs of the three methods");
}

/// `nijigen video --cache easycache:1 --json`: the counts in the summary, the setting in the
/// sidecar, and the same skips as the library run above.
#[test]
fn cli_video_reports_the_cache() {
    let idx = index();
    let (dir, files) = write_files("cli_cache", false);
    let out = dir.join("cached.mp4");
    let frames_dir = dir.join("frames");
    let mut args = video_args(&idx, &files, &out, &frames_dir);
    let at = args.iter().position(|a| a == "--steps").unwrap();
    args[at + 1] = "20".into();
    args.extend(["--cache".into(), "easycache:1".into(), "--json".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = nijigen(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: Value = serde_json::from_str(common::stdout(&o).trim()).expect("one JSON object");
    let c = &j["cache"];
    assert_eq!(c["method"], "easycache");
    assert_eq!(
        (c["computed"].as_u64(), c["skipped"].as_u64()),
        (Some(16), Some(24)),
        "{c}"
    );
    assert_eq!(c["pattern"][0], "CCCCsCsssCsssssCsssC");
    let sidecar: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("cached.mp4.json")).expect("sidecar"),
    )
    .expect("sidecar parses");
    assert_eq!(sidecar["cache"], "easycache:1");
    let bad = nijigen(&["video", "-m", "x.gguf", "--cache", "magic"]);
    let e = stderr(&bad);
    assert!(
        !bad.status.success() && e.contains("use off, easycache"),
        "{e}"
    );
}

/// A block cache on a DiT streamed through a simulated budget gives exactly the resident run's
/// video (a skipped step uploads no block), and the plan states what the cache keeps in RAM.
#[test]
fn step_caches_stream_and_plan() {
    use nijigen::pipeline::step_cache::CacheSettings;
    use nijigen::pipeline::Memory;
    use nijigen::runtime::plan::Placement;
    use nijigen::runtime::Accountant;
    let (_dir, files) = write_files("cache_stream", false);
    let req = WanRequest {
        steps: 20,
        keep_decoded: false,
        cache: CacheSettings::parse("magcache:0.24,6,0.2").unwrap(),
        ..request(&index())
    };
    let run = |dit: Placement| {
        let memory = Memory {
            accountant: Accountant::with_budget(1 << 30),
            placements: vec![
                (nijigen::models::T5.component, Placement::Cpu),
                (nijigen::models::CLIP_VISION.component, Placement::Cpu),
                (nijigen::models::DIT.component, dit),
                (nijigen::models::VAE_WAN.component, Placement::Cpu),
            ],
            ..Default::default()
        };
        let o = RunOptions {
            memory: Some(memory),
            ..opts()
        };
        video::generate(&files, &req, &o, &mut |_| {}).expect("cached run")
    };
    let resident = run(Placement::Resident);
    let streamed = run(Placement::Streamed {
        blocks: vec![0, 0],
        slots: 1,
    });
    let r = resident.cache.as_ref().unwrap();
    assert_eq!(
        r.pattern[0], "CCCCssssssCssssCssCs",
        "the reference's magcache pattern"
    );
    assert_eq!(streamed.cache.as_ref().unwrap().pattern, r.pattern);
    assert!(
        streamed.latent == resident.latent,
        "streamed and resident differ"
    );
    assert!(r.computed_s > 0.0 && r.skipped_s >= 0.0);

    // `nijigen plan video --cache`: the residuals in RAM.
    let p = |v: &Path| v.to_str().unwrap().to_string();
    let o = nijigen(&[
        "plan",
        "video",
        "--model",
        &p(&files.model),
        "--t5",
        &p(files.t5.as_ref().unwrap()),
        "--clip-vision",
        &p(files.clip_vision.as_ref().unwrap()),
        "--vae",
        &p(files.vae.as_ref().unwrap()),
        "-W",
        "64",
        "-H",
        "48",
        "--frames",
        "5",
        "--vram-budget",
        "4G",
        "--cache",
        "teacache",
    ]);
    let out = common::stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    // 2 branches x 2 x 3 x 4 tokens x 256 wide x 4 bytes.
    assert!(
        out.contains("note: cache teacache:0.2: 2 block residual(s) kept in RAM, 48.0 KiB"),
        "{out}"
    );
}

/// TeaCache and MagCache carry calibrations for Wan2.1 I2V only: on Wan2.2's experts they are
/// refused with a hint to use easycache, which runs.
#[test]
fn block_caches_need_a_calibrated_model() {
    use nijigen::pipeline::step_cache::CacheSettings;
    let idx = wan22_index();
    let (_dir, files) = write_wan22_files("cache_refused", false);
    let req = WanRequest {
        cache: CacheSettings::parse("teacache").unwrap(),
        ..wan22_request(&idx)
    };
    let e = video::generate(&files, &req, &opts(), &mut |_| {})
        .expect_err("no calibration")
        .to_string();
    assert!(
        e.contains("Wan2.1 I2V 14B") && e.contains("use --cache easycache"),
        "{e}"
    );
    let req = WanRequest {
        cache: CacheSettings::parse("easycache:0.5").unwrap(),
        ..req
    };
    let out = video::generate(&files, &req, &opts(), &mut |_| {}).expect("easycache runs");
    let r = out.cache.expect("report");
    assert_eq!(
        r.computed_total() + r.skipped_total(),
        8,
        "4 steps x 2 branches"
    );
}
