//! The CLI as a user meets it: `info`, `convert`, and bad inputs (exit 1, one clear line).

mod common;

use common::*;
use nijigen::formats::gguf::GgufFile;
use nijigen::formats::{DType, GgmlType, MetaValue};

fn tiny_wan(dir: &std::path::Path, ty: St) -> std::path::PathBuf {
    let p = dir.join("wan_tiny.safetensors");
    write_safetensors(&p, &tiny_wan_i2v(), ty);
    p
}

#[test]
fn convert_q4_k_m_follows_the_recipe_and_keeps_values() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::Bf16);
    let out = dir.path().join("wan-Q4_K_M.gguf");
    let o = nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = GgufFile::open(&out).unwrap();
    let h = g.header();
    assert_eq!(
        h.get("general.architecture").and_then(|v| v.as_str()),
        Some("wan")
    );
    assert_eq!(h.get("general.file_type"), Some(&MetaValue::U32(15)));
    assert_eq!(
        h.get("general.quantization_version"),
        Some(&MetaValue::U32(2))
    );
    assert!(h.get("nijigen.rules").is_some() && h.get("nijigen.source").is_some());
    let ty = |n: &str| h.tensor(n).unwrap_or_else(|| panic!("{n} missing")).dtype;
    assert_eq!(
        ty("blocks.0.self_attn.q.weight"),
        DType::Ggml(GgmlType::Q4_K)
    );
    assert_eq!(
        ty("blocks.1.cross_attn.k_img.weight"),
        DType::Ggml(GgmlType::Q4_K)
    );
    assert_eq!(
        ty("blocks.0.self_attn.v.weight"),
        DType::Ggml(GgmlType::Q6_K)
    );
    assert_eq!(
        ty("blocks.0.cross_attn.v.weight"),
        DType::Ggml(GgmlType::Q6_K)
    );
    assert_eq!(ty("blocks.0.ffn.2.weight"), DType::Ggml(GgmlType::Q6_K));
    // BF16 sources are kept losslessly as F32.
    for n in [
        "blocks.0.norm3.weight",
        "blocks.0.modulation",
        "patch_embedding.weight",
        "head.head.weight",
        "text_embedding.0.weight",
        "time_projection.1.weight",
        "img_emb.proj.1.weight",
    ] {
        assert_eq!(ty(n), DType::F32, "{n}");
    }
    // 5-D stays 5-D, shapes in PyTorch order.
    assert_eq!(
        h.tensor("patch_embedding.weight").unwrap().shape,
        vec![256, 36, 1, 2, 2]
    );
    // Values: kept tensors exact (bf16 -> f32), quantized ones close.
    let src_vals = tiny_wan_i2v();
    for (name, _, vals) in &src_vals {
        let t = h.tensor(name).unwrap();
        let mut got = vec![0f32; vals.len()];
        match t.dtype {
            DType::Ggml(q) => nijigen::ggml::dequantize(q, g.data(t), &mut got).unwrap(),
            _ => unreachable!(),
        }
        let want: Vec<f32> = vals
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        let e = rel_err(&got, &want);
        let tol = match t.dtype {
            DType::Ggml(GgmlType::F32) => 0.0,
            DType::Ggml(GgmlType::Q6_K) => 0.03,
            _ => 0.1,
        };
        assert!(e <= tol, "{name} ({}): rel err {e}", t.dtype);
    }
    // No temporary files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn convert_gguf_to_gguf_and_plain_types() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::F16);
    let q8 = dir.path().join("q8.gguf");
    let o = nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        q8.to_str().unwrap(),
        "--type",
        "q8_0",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // F16 sources keep F16 for the full-precision layers.
    let g = GgufFile::open(&q8).unwrap();
    assert_eq!(
        g.header().tensor("head.head.weight").unwrap().dtype,
        DType::F16
    );
    assert_eq!(
        g.header().tensor("blocks.0.ffn.0.weight").unwrap().dtype,
        DType::Ggml(GgmlType::Q8_0)
    );
    // GGUF in: requantize with an override; the input's metadata carries over.
    let q4 = dir.path().join("q4.gguf");
    let o = nijigen(&[
        "convert",
        q8.to_str().unwrap(),
        "-o",
        q4.to_str().unwrap(),
        "--type",
        "q4_0",
        "--tensor-type",
        "ffn\\.0=q5_0",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = GgufFile::open(&q4).unwrap();
    let h = g.header();
    assert_eq!(
        h.tensor("blocks.0.ffn.0.weight").unwrap().dtype,
        DType::Ggml(GgmlType::Q5_0)
    );
    assert_eq!(
        h.tensor("blocks.0.self_attn.q.weight").unwrap().dtype,
        DType::Ggml(GgmlType::Q4_0)
    );
    assert_eq!(h.get("general.file_type"), Some(&MetaValue::U32(2)));
    let rules = format!("{:?}", h.get("nijigen.rules").unwrap());
    assert!(
        rules.contains("ffn\\\\.0=q5_0") || rules.contains("ffn\\.0=q5_0"),
        "{rules}"
    );
    // f16 target: every multi-dim float tensor to f16, 1-D stays f32.
    let f16 = dir.path().join("f16.gguf");
    let o = nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        f16.to_str().unwrap(),
        "--type",
        "f16",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let g = GgufFile::open(&f16).unwrap();
    assert_eq!(
        g.header().tensor("blocks.0.ffn.0.weight").unwrap().dtype,
        DType::F16
    );
    assert_eq!(
        g.header().tensor("blocks.0.ffn.0.bias").unwrap().dtype,
        DType::F32
    );
}

#[test]
fn convert_dry_run_prints_the_plan_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::F32);
    let out = dir.path().join("x.gguf");
    let o = nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "--dry-run",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    let line = s
        .lines()
        .find(|l| l.starts_with("blocks.0.self_attn.v.weight "))
        .expect(&s);
    assert!(
        line.contains("[256, 256]") && line.contains("f32") && line.contains("q6_k"),
        "{line}"
    );
    // 256*256/256 blocks * 210 bytes
    assert!(line.contains(&(256 * 210).to_string()), "{line}");
    assert!(s.lines().last().unwrap().starts_with("total: "), "{s}");
    assert!(!out.exists());
}

#[test]
fn convert_refuses_unsafe_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::F32);
    let s = src.to_str().unwrap();
    // Output = input.
    let o = nijigen(&["convert", s, "-o", s, "--type", "q8_0", "--overwrite"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("refusing to overwrite an input"),
        "{}",
        stderr(&o)
    );
    // Existing output without --overwrite.
    let existing = dir.path().join("e.gguf");
    std::fs::write(&existing, b"keep me").unwrap();
    let o = nijigen(&[
        "convert",
        s,
        "-o",
        existing.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
    // Unwritable destination: error, nothing left.
    let o = nijigen(&[
        "convert",
        s,
        "-o",
        dir.path().join("no/such/dir/x.gguf").to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    // Unknown or imatrix-only types are usage errors with a suggestion.
    let o = nijigen(&["convert", s, "-o", "y.gguf", "--type", "q4_k_z"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown type"), "{}", stderr(&o));
    let o = nijigen(&["convert", s, "-o", "y.gguf", "--type", "iq2_xxs"]);
    assert!(stderr(&o).contains("importance matrix"), "{}", stderr(&o));
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn info_human_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::F16);
    let out = dir.path().join("q.gguf");
    assert!(nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--type",
        "q4_k_m",
        "-q"
    ])
    .status
    .success());
    let o = nijigen(&["info", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("GGUF v3"), "{s}");
    assert!(s.contains("wan-dit-i2v"), "{s}");
    assert!(s.contains("dim 256") && s.contains("2 blocks"), "{s}");

    let o = nijigen(&["info", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "gguf");
    assert_eq!(v["architecture"], "wan-dit-i2v");
    assert_eq!(v["config"]["dim"], 256);
    assert_eq!(v["config"]["in_channels"], 36);
    assert_eq!(v["metadata"]["general.architecture"], "wan");
    assert_eq!(v["metadata"]["general.file_type"], 15);
    let tensors = v["tensors"].as_array().unwrap();
    let pe = tensors
        .iter()
        .find(|t| t["name"] == "patch_embedding.weight")
        .unwrap();
    assert_eq!(pe["shape"], serde_json::json!([256, 36, 1, 2, 2]));
    assert_eq!(pe["type"], "f16");
    let q = tensors
        .iter()
        .find(|t| t["name"] == "blocks.0.self_attn.q.weight")
        .unwrap();
    assert_eq!(q["type"], "q4_k");

    let o = nijigen(&["info", src.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["metadata"]["format"], "pt");
}

/// A file recognised by its names whose model config cannot be read (a tensor the model needs
/// is missing) is still described: the architecture and why, exit status 0.
#[test]
fn info_describes_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    let tensors: Vec<_> = tiny_wan_i2v()
        .into_iter()
        .filter(|(n, _, _)| !n.starts_with("time_embedding."))
        .collect();
    write_safetensors(&path, &tensors, St::F32);
    let o = nijigen(&["info", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(s.contains("wan-dit-i2v"), "{s}");
    assert!(
        s.contains(
            "config:        Wan image-to-video diffusion transformer (cannot read its config: "
        ),
        "{s}"
    );
    let o = nijigen(&["info", path.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["config"], serde_json::Value::Null);
    assert!(v["summary"]
        .as_str()
        .unwrap()
        .contains("cannot read its config"));
}

/// Every malformed file: exit status 1, one line naming the file and the problem, no panic.
#[test]
fn bad_files_give_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_wan(dir.path(), St::F32);
    let good_st = std::fs::read(&src).unwrap();
    let gguf = dir.path().join("ok.gguf");
    assert!(nijigen(&[
        "convert",
        src.to_str().unwrap(),
        "-o",
        gguf.to_str().unwrap(),
        "--type",
        "q8_0",
        "-q"
    ])
    .status
    .success());
    let good_gguf = std::fs::read(&gguf).unwrap();

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "empty"),
        (
            "magic.gguf",
            b"GGUX\x03\0\0\0".to_vec(),
            "not a GGUF or safetensors",
        ),
        ("trunc.gguf", good_gguf[..good_gguf.len() / 2].to_vec(), ""),
        ("trunc_header.gguf", good_gguf[..40].to_vec(), ""),
        (
            "trunc.safetensors",
            good_st[..good_st.len() - 10].to_vec(),
            "",
        ),
        (
            "badjson.safetensors",
            [16u64.to_le_bytes().to_vec(), b"{not json!!!!!!}".to_vec()].concat(),
            "",
        ),
    ];
    let mut v4 = good_gguf.clone();
    v4[4] = 4;
    cases.push(("version.gguf", v4, "version"));
    for (name, bytes, needle) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        for cmd in [
            &["info", p.to_str().unwrap()][..],
            &[
                "convert",
                p.to_str().unwrap(),
                "-o",
                dir.path().join("o.gguf").to_str().unwrap(),
                "--type",
                "q8_0",
            ][..],
        ] {
            let o = nijigen(cmd);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{name}: {e}");
            assert!(!e.contains("panicked"), "{name}: {e}");
            let lines: Vec<&str> = e.lines().collect();
            assert_eq!(lines.len(), 1, "{name}: {e}");
            assert!(
                lines[0].starts_with("error: ") && lines[0].contains(name),
                "{name}: {e}"
            );
            assert!(
                lines[0].to_lowercase().contains(&needle.to_lowercase()),
                "{name}: {e}"
            );
        }
    }
    assert!(!dir.path().join("o.gguf").exists());
    // A missing file.
    let o = nijigen(&["info", "/no/such/file.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/file.gguf"));
}

#[test]
fn devices_lists_the_cpu() {
    let o = nijigen(&["devices", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cpu = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "cpu")
        .expect("no cpu device");
    assert_eq!(cpu["device"], "cpu");
    assert!(cpu["total_bytes"].as_u64().unwrap() > 0);
    let o = nijigen(&["devices"]);
    assert!(
        stdout(&o).lines().nth(1).unwrap().starts_with("cpu "),
        "{}",
        stdout(&o)
    );
}

/// `--device` names a device of this build, or fails before any file is read, in one line with
/// a hint. (Without CUDA in the build, asking for a GPU says how to get one.)
#[test]
fn device_flag_is_checked_before_work() {
    for cmd in ["image", "video", "i2v"] {
        let model: &[&str] = if cmd == "i2v" {
            &[]
        } else {
            &["-m", "/no/such.gguf"]
        };
        let o = nijigen(&[&[cmd, "--device", "vulkan0", "-p", "x"], model].concat());
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{cmd}: {e}");
        assert!(!e.contains("/no/such.gguf"), "{cmd}: files read first: {e}");
        if !cfg!(feature = "cuda") {
            let o = nijigen(&[&[cmd, "--device", "cuda:0", "-p", "x"], model].concat());
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{cmd}: {e}");
            assert!(e.contains("this build has no CUDA backend"), "{cmd}: {e}");
            assert!(e.contains("--features cuda"), "{cmd}: {e}");
        }
    }
}
