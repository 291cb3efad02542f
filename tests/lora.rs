//! LoRA applied at run time against PyTorch models with the LoRA merged into their weights
//! (tools/reference/make_lora_fixtures.py): the tiny SDXL UNet (kohya ldm names with LoCon
//! convs, kohya diffusers names, ComfyUI diff/diff_b, two files with multipliers), CLIP-L (te1),
//! bigG (te2, q/k/v thirds of the fused projection), and the tiny Wan T2V DiT (PEFT, ComfyUI,
//! kohya). Base weights and LoRA tensors are regenerated from the recipes of the fixtures.
//!
//! Tolerances (relative L2 error against the merged reference): F32 1e-4 (measured ~1e-6, as
//! the base models alone), F16 LoRA tensors 2e-3, BF16 2e-2, Q8_0 base weights 3e-2 (measured
//! ~2e-2, the same as the Q8_0 base alone: ggml's CPU mul_mat also quantizes the activations),
//! and the LoRA's contribution on the Q8_0 base (output minus the Q8_0 base output) 1e-1 of the
//! reference contribution.

mod common;

use std::path::{Path, PathBuf};

use common::{read_f32_entry, recipe_tensors, rel_err, write_safetensors, St};
use nijigen::ggml::{self, GgmlType, TensorSet};
use nijigen::lora::{Adapters, LoraError, LoraFile, LoraTarget};
use nijigen::models::unet_sdxl::sdxl_added_cond;
use nijigen::models::{ClipLayout, ClipTextModel, SdxlUnet, WanDit};
use nijigen::runtime::WeightStore;
use serde_json::Value;

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

const DIR: &str = "tests/fixtures/lora";

fn index(dir: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(dir).join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn write(path: &Path, tensors: &Tensors, ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// Writes the LoRA of `recipe` to `dir/name` as `ty` and opens it.
fn lora_file(dir: &Path, name: &str, recipe: &Value, ty: St) -> LoraFile {
    let path = dir.join(name);
    write(&path, &recipe_tensors(recipe), ty);
    LoraFile::open(&path).unwrap()
}

fn store_of(dir: &Path, name: &str, tensors: &Tensors) -> WeightStore {
    let path = dir.join(name);
    write(&path, tensors, St::F32);
    WeightStore::open_path(&path).unwrap()
}

/// The same set with every matrix whose rows are whole Q8_0 blocks quantized to Q8_0.
fn quantized_copy(set: &TensorSet<'_>) -> (TensorSet<'static>, usize) {
    let mut out = TensorSet::new(set.len()).unwrap();
    let mut n = 0;
    for name in set.names() {
        let t = set.get(name).unwrap();
        let ne = t.ne();
        let vals = ggml::tensor_get_f32(t).unwrap();
        let dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
        let ne = &ne[..dims];
        if dims == 2 && ne[0] % 32 == 0 {
            let bytes = GgmlType::Q8_0.bytes_for(vals.len() as u64).unwrap() as usize;
            let mut q = vec![0u8; bytes];
            ggml::quantize(GgmlType::Q8_0, &vals, ne[0] as usize, &mut q).unwrap();
            out.add_owned(name, GgmlType::Q8_0, ne, &q).unwrap();
            n += 1;
        } else {
            out.add_owned(name, GgmlType::F32, ne, bytemuck::cast_slice(&vals))
                .unwrap();
        }
    }
    (out, n)
}

struct UnetInputs {
    x: Vec<f32>,
    context: Vec<f32>,
    y: Vec<f32>,
    h: usize,
    w: usize,
    base_out: Vec<f32>,
}

fn unet_inputs(ix: &Value) -> UnetInputs {
    let d = "tests/fixtures/unet_sdxl";
    let (x, xs) = read_f32_entry(d, &ix["x"]);
    let (context, _) = read_f32_entry(d, &ix["context"]);
    let (pooled, _) = read_f32_entry(d, &ix["text_embeds"]);
    let (ids, _) = read_f32_entry(d, &ix["time_ids"]);
    let case = ix["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["timestep"].as_f64() == Some(500.0))
        .unwrap();
    let (base_out, _) = read_f32_entry(d, &case["out"]);
    let y = sdxl_added_cond(&pooled, ids.try_into().unwrap(), 80).unwrap();
    UnetInputs {
        x,
        context,
        y,
        h: xs[1],
        w: xs[2],
        base_out,
    }
}

#[test]
fn unet_kohya_locon_and_two_loras_match_merged_diffusers() {
    let fx = index(DIR);
    let case = &fx["unet"];
    let uix = index("tests/fixtures/unet_sdxl");
    let inp = unet_inputs(&uix);
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(
        dir.path(),
        "unet.safetensors",
        &recipe_tensors(&uix["tensors"]),
    );
    let set = store.load_cpu(|_| true).unwrap();
    let a = lora_file(dir.path(), "a.safetensors", &case["lora_a"], St::F32);
    let b = lora_file(dir.path(), "b.safetensors", &case["lora_b"], St::F32);
    assert_eq!(
        a.targets().into_iter().collect::<Vec<_>>(),
        [LoraTarget::Unet]
    );

    let only_a = Adapters::build(&set, "", LoraTarget::Unet, &[(&a, 1.0)]).unwrap();
    let rep = &only_a.reports()[0];
    assert_eq!(rep.applied, 8);
    assert_eq!(only_a.len(), 8);
    // Unknown keys are reported (both tensors of each unknown module), not fatal.
    let mut unknown: Vec<String> = case["unknown_a"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|k| {
            let k = k.as_str().unwrap();
            [
                format!("{k}.lora_down.weight"),
                format!("{k}.lora_up.weight"),
            ]
        })
        .collect();
    unknown.sort();
    let mut got: Vec<String> = only_a
        .unmatched_keys()
        .iter()
        .map(|s| s.to_string())
        .collect();
    got.sort();
    assert_eq!(got, unknown);
    assert!(only_a
        .adapted_weights()
        .contains(&"input_blocks.4.0.in_layers.2.weight"));

    let ma = case["mult_a"].as_f64().unwrap() as f32;
    let mb = case["mult_b"].as_f64().unwrap() as f32;
    let both = Adapters::build(&set, "", LoraTarget::Unet, &[(&a, ma), (&b, mb)]).unwrap();
    assert_eq!(
        both.reports()[1].applied,
        4,
        "3 kohya diffusers + diff/diff_b"
    );
    assert!(both.reports()[1].unmatched.is_empty());

    let mut unet = SdxlUnet::new(&set, "", 2).unwrap();
    let run = |unet: &mut SdxlUnet<'_>| {
        unet.forward(&inp.x, 500.0, &inp.context, &inp.y, inp.h, inp.w)
            .unwrap()
    };
    let base = run(&mut unet);
    let eb = rel_err(&base, &inp.base_out);
    unet.set_adapters(Some(&only_a)).unwrap();
    let out_a = run(&mut unet);
    let (want_a, _) = read_f32_entry(DIR, &case["out_a"]);
    let ea = rel_err(&out_a, &want_a);
    unet.set_adapters(Some(&both)).unwrap();
    let out_ab = run(&mut unet);
    let (want_ab, _) = read_f32_entry(DIR, &case["out_ab"]);
    let eab = rel_err(&out_ab, &want_ab);
    // Detaching rebuilds the graph without the adapters.
    unet.set_adapters(None).unwrap();
    let again = run(&mut unet);
    eprintln!(
        "unet lora f32: A rel err {ea:.2e}, A+B {eab:.2e} (base {eb:.2e}; LoRA A changes the \
         output by {:.2e})",
        rel_err(&want_a, &inp.base_out)
    );
    assert!(
        rel_err(&want_a, &inp.base_out) > 0.1,
        "the LoRA must matter"
    );
    assert!(ea < 1e-4, "A: {ea}");
    assert!(eab < 1e-4, "A+B: {eab}");
    assert_eq!(again, base);
}

#[test]
fn unet_q8_0_base_stays_quantized_with_lora() {
    let fx = index(DIR);
    let case = &fx["unet"];
    let uix = index("tests/fixtures/unet_sdxl");
    let inp = unet_inputs(&uix);
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(
        dir.path(),
        "unet.safetensors",
        &recipe_tensors(&uix["tensors"]),
    );
    let f32_set = store.load_cpu(|_| true).unwrap();
    let (set, quantized) = quantized_copy(&f32_set);
    assert!(quantized > 20, "{quantized} quantized matrices");
    let q_name = "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    assert_eq!(set.get(q_name).unwrap().ty(), GgmlType::Q8_0);
    let a = lora_file(dir.path(), "a.safetensors", &case["lora_a"], St::F32);
    let ad = Adapters::build(&set, "", LoraTarget::Unet, &[(&a, 1.0)]).unwrap();
    assert!(ad.adapted_weights().contains(&q_name));
    // Adapters match base weights by name and shape: those built from the F32 set fit its
    // Q8_0 copy (as they fit a device copy of a set), not a set without an adapted weight.
    let other = Adapters::build(&f32_set, "", LoraTarget::Unet, &[(&a, 1.0)]).unwrap();
    assert!(other.fits(&set));
    let partial = store.load_cpu(|n| n != q_name).unwrap();
    assert!(!other.fits(&partial));
    let mut unet = SdxlUnet::new(&set, "", 2).unwrap();
    let run = |unet: &mut SdxlUnet<'_>| {
        unet.forward(&inp.x, 500.0, &inp.context, &inp.y, inp.h, inp.w)
            .unwrap()
    };
    let base_q = run(&mut unet);
    unet.set_adapters(Some(&ad)).unwrap();
    let out = run(&mut unet);
    assert_eq!(set.get(q_name).unwrap().ty(), GgmlType::Q8_0);
    let (want, _) = read_f32_entry(DIR, &case["out_a"]);
    let e = rel_err(&out, &want);
    // The LoRA's contribution alone, against the reference's.
    let got_d: Vec<f32> = out.iter().zip(&base_q).map(|(a, b)| a - b).collect();
    let want_d: Vec<f32> = want.iter().zip(&inp.base_out).map(|(a, b)| a - b).collect();
    let ed = rel_err(&got_d, &want_d);
    let eq = rel_err(&base_q, &inp.base_out);
    eprintln!(
        "unet lora on q8_0: rel err {e:.2e} (q8_0 base alone {eq:.2e}), LoRA delta rel err {ed:.2e}"
    );
    assert!(e < 3e-2, "{e}");
    assert!(ed < 1e-1, "{ed}");
}

/// HF bigG tensors (recipe names) under open_clip names, q/k/v fused, as SDXL checkpoints
/// store them.
fn to_open_clip(tensors: &Tensors) -> Tensors {
    let get = |n: &str| {
        tensors
            .iter()
            .find(|t| t.0 == n)
            .unwrap_or_else(|| panic!("{n}"))
            .clone()
    };
    let mut out: Tensors = Vec::new();
    for (from, to) in [
        (
            "text_model.embeddings.token_embedding.weight",
            "token_embedding.weight",
        ),
        (
            "text_model.embeddings.position_embedding.weight",
            "positional_embedding",
        ),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ] {
        let (_, s, v) = get(from);
        out.push((to.into(), s, v));
    }
    let (_, s, v) = get("text_projection.weight");
    let (p, w) = (s[0] as usize, s[1] as usize);
    let mut tv = vec![0f32; p * w];
    for i in 0..p {
        for j in 0..w {
            tv[j * p + i] = v[i * w + j];
        }
    }
    out.push(("text_projection".into(), vec![w as u64, p as u64], tv));
    let mut l = 0;
    while tensors
        .iter()
        .any(|t| t.0.starts_with(&format!("text_model.encoder.layers.{l}.")))
    {
        let hf = |s: &str| format!("text_model.encoder.layers.{l}.{s}");
        let oc = |s: &str| format!("transformer.resblocks.{l}.{s}");
        for wb in ["weight", "bias"] {
            let (mut shape, mut vals) = (Vec::new(), Vec::new());
            for part in ["q_proj", "k_proj", "v_proj"] {
                let (_, s, v) = get(&hf(&format!("self_attn.{part}.{wb}")));
                shape = s;
                vals.extend(v);
            }
            shape[0] *= 3;
            out.push((oc(&format!("attn.in_proj_{wb}")), shape, vals));
            for (from, to) in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                let (_, s, v) = get(&hf(&format!("{from}.{wb}")));
                out.push((oc(&format!("{to}.{wb}")), s, v));
            }
        }
        l += 1;
    }
    out
}

/// Runs one CLIP fixture model with its LoRA; returns (last rel err, pooled rel err,
/// rel change of `last` made by the LoRA).
fn clip_case(kind: &str, target: LoraTarget) -> (f32, Option<f32>, f32) {
    let fx = index(DIR);
    let cix = index("tests/fixtures/clip_text");
    let m = cix["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap();
    let mut tensors = recipe_tensors(&m["tensors"]);
    if kind == "clip_g" {
        tensors = to_open_clip(&tensors);
    }
    let tokens: Vec<u32> = m["tokens"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(dir.path(), "te.safetensors", &tensors);
    let set = store.load_cpu(|_| true).unwrap();
    let lora = lora_file(
        dir.path(),
        "te.safetensors.lora",
        &fx[kind]["lora"],
        St::F32,
    );
    let ad = Adapters::build(&set, "", target, &[(&lora, 1.0)]).unwrap();
    let rep = &ad.reports()[0];
    assert!(rep.unmatched.is_empty(), "{:?}", rep.unmatched);
    assert_eq!(rep.applied, lora.modules());
    let mut model = ClipTextModel::new(&set, "", 2).unwrap();
    let expect_layout = if kind == "clip_g" {
        ClipLayout::OpenClip
    } else {
        ClipLayout::Hf
    };
    assert_eq!(model.config().layout, expect_layout);
    let base = model.forward(&tokens).unwrap();
    model.set_adapters(Some(&ad)).unwrap();
    let out = model.forward(&tokens).unwrap();
    let (want, _) = read_f32_entry(DIR, &fx[kind]["last"]);
    let e = rel_err(&out.last, &want);
    let change = rel_err(&base.last, &want);
    let pooled = fx[kind].get("pooled").map(|p| {
        let (want, _) = read_f32_entry(DIR, p);
        let got = out.pooled.as_ref().unwrap();
        rel_err(&got[..want.len() / 2], &want[..want.len() / 2])
    });
    (e, pooled, change)
}

#[test]
fn clip_l_te1_lora_matches_merged_transformers() {
    let (e, _, change) = clip_case("clip_l", LoraTarget::TextEncoder1);
    eprintln!("clip-l te1 lora f32: last rel err {e:.2e} (LoRA changes it by {change:.2e})");
    assert!(change > 1e-2);
    assert!(e < 1e-4, "{e}");
}

#[test]
fn bigg_te2_lora_on_fused_qkv_matches_merged_transformers() {
    let (e, pooled, change) = clip_case("clip_g", LoraTarget::TextEncoder2);
    let p = pooled.unwrap();
    eprintln!(
        "bigG te2 lora f32: last rel err {e:.2e}, pooled {p:.2e} (LoRA changes last by {change:.2e})"
    );
    assert!(change > 1e-2);
    assert!(e < 1e-4, "{e}");
    assert!(p < 1e-4, "{p}");
}

fn wan_case(ty: St) -> (f32, f32) {
    let fx = index(DIR);
    let wix = index("tests/fixtures/wan_dit");
    let case = &wix["t2v"];
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(
        dir.path(),
        "dit.safetensors",
        &recipe_tensors(&case["tensors"]),
    );
    let set = store.load_cpu(|_| true).unwrap();
    let lora = lora_file(dir.path(), "wan_lora.safetensors", &fx["wan"]["lora"], ty);
    let mult = fx["wan"]["multiplier"].as_f64().unwrap() as f32;
    let ad = Adapters::build(&set, "", LoraTarget::WanDit, &[(&lora, mult)]).unwrap();
    let rep = &ad.reports()[0];
    assert!(rep.unmatched.is_empty(), "{:?}", rep.unmatched);
    assert_eq!(rep.applied, 6);
    let (x, xs) = read_f32_entry("tests/fixtures/wan_dit", &case["x"]);
    let (text, _) = read_f32_entry("tests/fixtures/wan_dit", &wix["text"]);
    let (base_want, _) = read_f32_entry("tests/fixtures/wan_dit", &case["out"]);
    let t = case["timestep"].as_f64().unwrap() as f32;
    let mut dit = WanDit::new(&set, "", 2).unwrap();
    dit.set_adapters(Some(&ad)).unwrap();
    let out = dit
        .forward(&x, t, &text, None, xs[1], xs[2], xs[3])
        .unwrap();
    let (want, _) = read_f32_entry(DIR, &fx["wan"]["out"]);
    (rel_err(&out, &want), rel_err(&base_want, &want))
}

#[test]
fn wan_peft_comfy_kohya_lora_matches_merged_diffusers() {
    let (e, change) = wan_case(St::F32);
    let (e16, _) = wan_case(St::F16);
    let (ebf, _) = wan_case(St::Bf16);
    eprintln!(
        "wan lora: f32 rel err {e:.2e}, f16 LoRA {e16:.2e}, bf16 LoRA {ebf:.2e} (LoRA changes \
         the output by {change:.2e})"
    );
    assert!(change > 1e-2);
    assert!(e < 1e-4, "{e}");
    assert!(e16 < 2e-3, "{e16}");
    assert!(ebf < 2e-2, "{ebf}");
}

#[test]
fn lora_for_another_model_is_reported_or_refused() {
    let fx = index(DIR);
    let uix = index("tests/fixtures/unet_sdxl");
    let dir = tempfile::tempdir().unwrap();
    let store = store_of(
        dir.path(),
        "unet.safetensors",
        &recipe_tensors(&uix["tensors"]),
    );
    let set = store.load_cpu(|_| true).unwrap();
    let wan = lora_file(dir.path(), "wan.safetensors", &fx["wan"]["lora"], St::F32);
    // A Wan LoRA for the SDXL pipeline: refused up front, naming what it adapts.
    let sdxl = [
        LoraTarget::Unet,
        LoraTarget::TextEncoder1,
        LoraTarget::TextEncoder2,
    ];
    let err = wan.check_targets(&sdxl).unwrap_err();
    assert!(matches!(err, LoraError::WrongModel { .. }));
    assert!(err.to_string().contains("adapts wan"), "{err}");
    assert!(wan.check_targets(&[LoraTarget::WanDit]).is_ok());
    // Building anyway applies nothing and says why.
    let ad = Adapters::build(&set, "", LoraTarget::Unet, &[(&wan, 1.0)]).unwrap();
    assert!(ad.is_empty());
    assert_eq!(ad.reports()[0].applied, 0);
    assert_eq!(ad.reports()[0].other_targets, wan.modules());
    // A UNet LoRA whose names match but shapes do not (another model size) is an error.
    let mut bad = recipe_tensors(&fx["unet"]["lora_a"]);
    for t in bad
        .iter_mut()
        .filter(|t| t.0.ends_with("attn1_to_q.lora_down.weight"))
    {
        t.1 = vec![4, 32];
        t.2.truncate(128);
    }
    let path = dir.path().join("bad.safetensors");
    write(&path, &bad, St::F32);
    let bad = LoraFile::open(&path).unwrap();
    let err = Adapters::build(&set, "", LoraTarget::Unet, &[(&bad, 1.0)])
        .err()
        .unwrap();
    assert!(matches!(err, LoraError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("attn1.to_q.weight"), "{err}");
    // Not a LoRA at all.
    let err = LoraFile::open(&dir.path().join("unet.safetensors"))
        .err()
        .unwrap();
    assert!(matches!(err, LoraError::NotALora { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Key resolution over the names fixtures (tools/reference/dump_names.py): every LoRA key of the
// fixture files resolves to a weight of the matching base layout.

const NAMES: &str = "tests/fixtures/names";

fn names_fixture(file: &str) -> Vec<(String, Vec<u64>)> {
    std::fs::read_to_string(Path::new(NAMES).join(file))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l.split_once('\t').unwrap_or((l, ""));
            let shape = shape
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|d| d.trim().parse().unwrap())
                .collect();
            (name.to_string(), shape)
        })
        .collect()
}

/// A zero-filled set with the names and shapes of a names fixture.
fn zeros_set(entries: &[(String, Vec<u64>)]) -> TensorSet<'static> {
    let mut set = TensorSet::new(entries.len()).unwrap();
    for (name, shape) in entries {
        let mut ne: Vec<i64> = shape.iter().rev().map(|&d| d as i64).collect();
        if ne.is_empty() {
            ne.push(1);
        }
        if ne.len() > 4 {
            // Wan's 5-D patch embedding: merge the outer dims.
            let outer: i64 = ne[3..].iter().product();
            ne.truncate(3);
            ne.push(outer);
        }
        let n: i64 = ne.iter().product();
        set.add_owned(name, GgmlType::F32, &ne, &vec![0u8; n as usize * 4])
            .unwrap();
    }
    set
}

/// Writes a names fixture as a LoRA file of small values.
fn names_lora(dir: &Path, file: &str) -> PathBuf {
    let tensors: Tensors = names_fixture(file)
        .into_iter()
        .enumerate()
        .map(|(i, (n, s))| {
            let len = s.iter().product::<u64>() as usize;
            let vals = common::rand_vec(len, i as u64 + 7);
            (n, s, vals)
        })
        .collect();
    let path = dir.join(file.replace(".txt", ".safetensors"));
    write(&path, &tensors, St::F32);
    path
}

/// The base names of `base` with the canonical names the weight store gives them.
fn canonical_set(base: &str) -> TensorSet<'static> {
    let dir = tempfile::tempdir().unwrap();
    let tensors: Tensors = names_fixture(base)
        .into_iter()
        .map(|(n, s)| {
            let len = s.iter().product::<u64>() as usize;
            (n, s, vec![0.0; len])
        })
        .collect();
    let store = store_of(dir.path(), "base.safetensors", &tensors);
    let entries: Vec<(String, Vec<u64>)> = {
        let set = store.load_cpu(|_| true).unwrap();
        set.names()
            .iter()
            .map(|n| {
                let t = set.get(n).unwrap();
                let ne = t.ne();
                let dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
                (
                    n.clone(),
                    ne[..dims].iter().rev().map(|&d| d as u64).collect(),
                )
            })
            .collect()
    };
    zeros_set(&entries)
}

/// (modules applied, unmatched keys, unsupported keys) of the names-fixture LoRA `lora` on the
/// base layout `base`. Shapes are checked too unless `names_only` (the fixtures' te2 LoRA was
/// dumped over a narrower encoder than clip_g_openclip.txt): then only the matching is run.
fn resolve_all(
    lora: &str,
    base: &str,
    target: LoraTarget,
    names_only: bool,
) -> (usize, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = names_lora(dir.path(), lora);
    let file = LoraFile::open(&path).unwrap();
    let set = canonical_set(base);
    if names_only {
        let keys = Adapters::resolve_keys(&set, "", target, &file);
        let unmatched = keys
            .iter()
            .filter(|(_, w)| w.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let weights: std::collections::BTreeSet<_> =
            keys.iter().filter_map(|(_, w)| w.clone()).collect();
        return (weights.len(), unmatched, Vec::new());
    }
    let ad = Adapters::build(&set, "", target, &[(&file, 1.0)]).unwrap();
    let r = &ad.reports()[0];
    (r.applied, r.unmatched.clone(), r.unsupported.clone())
}

#[test]
fn names_fixture_kohya_sdxl_keys_resolve() {
    let (unet, um, _) = resolve_all(
        "lora_sdxl_kohya.txt",
        "sdxl_unet_ldm.txt",
        LoraTarget::Unet,
        false,
    );
    assert!(
        unet > 0 && um.is_empty(),
        "{unet} applied, unmatched {um:?}"
    );
    let (te1, um1, _) = resolve_all(
        "lora_sdxl_kohya.txt",
        "clip_l_hf.txt",
        LoraTarget::TextEncoder1,
        false,
    );
    assert!(
        te1 > 0 && um1.is_empty(),
        "{te1} applied, unmatched {um1:?}"
    );
    let (te2, um2, _) = resolve_all(
        "lora_sdxl_kohya.txt",
        "clip_g_openclip.txt",
        LoraTarget::TextEncoder2,
        true,
    );
    assert!(
        te2 > 0 && um2.is_empty(),
        "{te2} applied, unmatched {um2:?}"
    );
    // The same UNet keys against diffusers-named base weights (loaded as ldm).
    let (unet_d, umd, _) = resolve_all(
        "lora_sdxl_kohya.txt",
        "sdxl_unet_diffusers.txt",
        LoraTarget::Unet,
        false,
    );
    assert_eq!((unet_d, umd.len()), (unet, 0));
}

#[test]
fn names_fixture_loha_is_reported_unsupported() {
    let (applied, um, unsupported) = resolve_all(
        "lora_sdxl_loha.txt",
        "sdxl_unet_ldm.txt",
        LoraTarget::Unet,
        false,
    );
    assert_eq!(applied, 0);
    assert!(um.is_empty(), "{um:?}");
    assert!(!unsupported.is_empty());
}

#[test]
fn names_fixture_wan_keys_resolve() {
    for (lora, base) in [
        ("lora_wan_peft.txt", "wan_dit_i2v_original.txt"),
        ("lora_wan_comfy.txt", "wan_dit_i2v_original.txt"),
        ("lora_wan_diffusers.txt", "wan_dit_i2v_diffusers.txt"),
        ("lora_wan_peft.txt", "wan_dit_i2v_diffusers.txt"),
    ] {
        let (applied, um, unsupported) = resolve_all(lora, base, LoraTarget::WanDit, false);
        eprintln!("{lora} on {base}: {applied} modules");
        assert!(applied > 0, "{lora}");
        assert!(um.is_empty(), "{lora} on {base}: unmatched {um:?}");
        assert!(
            unsupported.is_empty(),
            "{lora}: unsupported {unsupported:?}"
        );
    }
}

/// The Wan LoRA on a ComfyUI scaled fp8 base (per-layer `comfy_quant` layout, names under
/// `model.diffusion_model.`): it resolves against the fp8 file's names, applies to every
/// target, and gives exactly the output of the same LoRA on a plain file holding the
/// dequantized weights (fp8 x scale as F16, the other tensors F32): the patched weight is the
/// exact dequantized one.
#[test]
fn wan_lora_on_an_fp8_scaled_base_patches_the_dequantized_weights() {
    use common::{fp8_quantize, write_safetensors_raw, RawTensor};
    let fx = index(DIR);
    let wix = index("tests/fixtures/wan_dit");
    let case = &wix["t2v"];
    let dir = tempfile::tempdir().unwrap();
    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let (mut fp8, mut plain): (Vec<RawTensor>, Vec<RawTensor>) = (Vec::new(), Vec::new());
    for (name, shape, vals) in recipe_tensors(&case["tensors"]) {
        let stored = format!("model.diffusion_model.{name}");
        if shape.len() == 2 && name.ends_with(".weight") {
            let (q, scale) = fp8_quantize(&vals);
            let deq: Vec<u8> = q
                .iter()
                .flat_map(|&b| {
                    let v = nijigen::formats::float::f8e4m3_to_f32(b) * scale;
                    half::f16::from_f32(v).to_le_bytes()
                })
                .collect();
            fp8.extend(common::comfy_quant_layer(&stored, shape.clone(), q, scale));
            plain.push((stored, "F16", shape, deq));
        } else {
            fp8.push((stored.clone(), "F32", shape.clone(), f32_bytes(&vals)));
            plain.push((stored, "F32", shape, f32_bytes(&vals)));
        }
    }
    let lora = lora_file(
        dir.path(),
        "wan_lora.safetensors",
        &fx["wan"]["lora"],
        St::F32,
    );
    let mult = fx["wan"]["multiplier"].as_f64().unwrap() as f32;
    let (x, xs) = read_f32_entry("tests/fixtures/wan_dit", &case["x"]);
    let (text, _) = read_f32_entry("tests/fixtures/wan_dit", &wix["text"]);
    let t = case["timestep"].as_f64().unwrap() as f32;
    let run = |name: &str, tensors: &[RawTensor], with_lora: bool| -> Vec<f32> {
        let path = dir.path().join(name);
        write_safetensors_raw(&path, &[], tensors);
        let store = WeightStore::open_path(&path).unwrap();
        let set = store.load_cpu(|_| true).unwrap();
        let ad = Adapters::build(&set, "", LoraTarget::WanDit, &[(&lora, mult)]).unwrap();
        let rep = &ad.reports()[0];
        assert!(rep.unmatched.is_empty(), "{name}: {:?}", rep.unmatched);
        assert_eq!(rep.applied, 6, "{name}");
        let mut dit = WanDit::new(&set, "", 2).unwrap();
        if with_lora {
            dit.set_adapters(Some(&ad)).unwrap();
        }
        dit.forward(&x, t, &text, None, xs[1], xs[2], xs[3])
            .unwrap()
    };
    let on_fp8 = run("dit_fp8_scaled.safetensors", &fp8, true);
    let on_plain = run("dit_dequantized.safetensors", &plain, true);
    let base = run("dit_fp8_scaled.safetensors", &fp8, false);
    let change = rel_err(&on_fp8, &base);
    eprintln!("wan lora on an fp8 base: changes the output by {change:.2e}");
    assert!(
        change > 1e-2,
        "the LoRA did not change the output ({change})"
    );
    assert!(
        on_fp8 == on_plain,
        "LoRA on the fp8 base differs from the dequantized base"
    );
}

// ---- lightx2v / Kijai LoRAs on quantized bases ------------------------------------------------

/// The tiny Wan T2V DiT of tests/fixtures/wan_dit under the original Wan names (the store's
/// name map from its diffusers names), as (name, shape, values).
fn wan_original_names(dir: &Path) -> Tensors {
    let wix = index("tests/fixtures/wan_dit");
    let recipe = recipe_tensors(&wix["t2v"]["tensors"]);
    let store = store_of(dir, "wan_diffusers.safetensors", &recipe);
    recipe
        .into_iter()
        .map(|(n, s, v)| {
            let map = store.detection().normalize(&n).expect("a Wan DiT tensor");
            (map.target().to_string(), s, v)
        })
        .collect()
}

/// A LoRA as lightx2v's and Kijai's Wan files are laid out: `diffusion_model.<original
/// name>` keys, `lora_down.weight` [rank, in] / `lora_up.weight` [out, rank] / `alpha` for the
/// Linear layers, `diff` for a full weight difference (a Linear, a norm's weight) and
/// `diff_b` for biases (of Linears and norms). Returns the tensors and the merged weights
/// (name -> change to add to the base weight, multiplier applied, f64 sums).
fn kijai_lora(base: &Tensors, mult: f32) -> (Tensors, Vec<(String, Vec<f32>)>) {
    let shape_of = |n: &str| {
        base.iter()
            .find(|(m, _, _)| m == n)
            .unwrap_or_else(|| panic!("base has no {n}"))
            .1
            .clone()
    };
    let mut lora: Tensors = Vec::new();
    let mut deltas: Vec<(String, Vec<f32>)> = Vec::new();
    let mut seed = 9000;
    let mut next = |n: usize, scale: f32| {
        seed += 1;
        common::hash_values(n, seed, scale, 0.0)
    };
    let (rank, alpha) = (4usize, 2.0f32);
    for b in 0..2 {
        for layer in ["self_attn.q", "cross_attn.k", "ffn.0"] {
            let w = format!("blocks.{b}.{layer}.weight");
            let s = shape_of(&w);
            let (out, inp) = (s[0] as usize, s[1] as usize);
            let down = next(rank * inp, 0.5);
            let up = next(out * rank, 0.5);
            let k = format!("diffusion_model.blocks.{b}.{layer}");
            lora.push((
                format!("{k}.lora_down.weight"),
                vec![rank as u64, inp as u64],
                down.clone(),
            ));
            lora.push((
                format!("{k}.lora_up.weight"),
                vec![out as u64, rank as u64],
                up.clone(),
            ));
            lora.push((format!("{k}.alpha"), vec![], vec![alpha]));
            // W' = W + mult * alpha / rank * up @ down
            let s = (mult * alpha / rank as f32) as f64;
            let mut d = vec![0f32; out * inp];
            for o in 0..out {
                for i in 0..inp {
                    let dot: f64 = (0..rank)
                        .map(|r| up[o * rank + r] as f64 * down[r * inp + i] as f64)
                        .sum();
                    d[o * inp + i] = (s * dot) as f32;
                }
            }
            deltas.push((w, d));
        }
    }
    // A full weight difference on a Linear, and on norms' weights.
    for name in [
        "blocks.0.ffn.2.weight",
        "blocks.0.norm3.weight",
        "blocks.1.self_attn.norm_q.weight",
    ] {
        let s = shape_of(name);
        let n = s.iter().product::<u64>() as usize;
        let d = next(n, 0.05);
        let key = format!(
            "diffusion_model.{}.diff",
            name.strip_suffix(".weight").unwrap()
        );
        lora.push((key, s, d.clone()));
        deltas.push((name.into(), d.iter().map(|v| v * mult).collect()));
    }
    // Bias differences: a Linear's, a norm's, the head's.
    for name in [
        "blocks.0.self_attn.q.bias",
        "blocks.0.norm3.bias",
        "blocks.1.cross_attn.o.bias",
        "head.head.bias",
    ] {
        let s = shape_of(name);
        let n = s.iter().product::<u64>() as usize;
        let d = next(n, 0.2);
        let key = format!(
            "diffusion_model.{}.diff_b",
            name.strip_suffix(".bias").unwrap()
        );
        lora.push((key, s, d.clone()));
        deltas.push((name.into(), d.iter().map(|v| v * mult).collect()));
    }
    (lora, deltas)
}

/// `base` with `deltas` added.
fn merged(base: &Tensors, deltas: &[(String, Vec<f32>)]) -> Tensors {
    let mut out = base.clone();
    for (name, d) in deltas {
        let t = out.iter_mut().find(|(n, _, _)| n == name).unwrap();
        t.2.iter_mut().zip(d).for_each(|(w, d)| *w += d);
    }
    out
}

/// Q8_0 to f32, decoded from the block layout: per 32 values an f16 scale, then 32 i8.
fn q8_0_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(34)
        .flat_map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            b[2..].iter().map(move |&q| d * q as i8 as f32)
        })
        .collect()
}

/// A lightx2v/Kijai-style LoRA (low rank with alpha, `diff`, `diff_b` on Linears and norms)
/// applied at run time to a quantized base: (a) a ComfyUI scaled fp8 file (`comfy_quant`,
/// `model.diffusion_model.` names) and (b) a Q8_0 GGUF (city96's names) written by our writer.
/// Every key resolves, and the output matches the model run on an F32 file holding the exact
/// reference weights computed here: the base dequantized (decoded in the test: f16(f32(q) x
/// scale), Q8_0 d x q) plus multiplier x (alpha / rank x up @ down | diff | diff_b). The runtime
/// path differs from that reference by the matmuls' input rounding only (ggml converts a
/// matmul's F32 input to F16 for an F16 weight, to Q8_0 for a Q8_0 weight, which alone puts the
/// unpatched Q8_0 output 9.4e-3 from its reference). Measured (rel): fp8 output 3.4e-4, the
/// LoRA's own change (patched minus unpatched output) 1.4e-3; Q8_0 8.9e-3 and 3.8e-2; the LoRA
/// changes the output by 2.7e-1, so alpha / rank, a multiplier or a diff missed or applied
/// twice fails. Bounds: fp8 1e-3 / 1e-2, Q8_0 2e-2 / 1e-1 (as the UNet's Q8_0 LoRA test).
#[test]
fn kijai_style_wan_lora_on_fp8_and_gguf_bases_matches_the_merged_reference() {
    use common::{fp8_quantize, write_safetensors_raw, RawTensor};
    use nijigen::formats::gguf::{GgufWriter, TensorDecl};
    use nijigen::formats::MetaValue;
    let dir = tempfile::tempdir().unwrap();
    let base = wan_original_names(dir.path());
    let mult = 0.8;
    let (lora_tensors, deltas) = kijai_lora(&base, mult);
    let lora_path = dir.path().join("lightx2v_style_lora.safetensors");
    write(&lora_path, &lora_tensors, St::F32);
    let lora = LoraFile::open(&lora_path).unwrap();
    assert!(lora.unknown_keys().is_empty(), "{:?}", lora.unknown_keys());
    let linear = |n: &str, s: &[u64]| s.len() == 2 && n.ends_with(".weight");

    // (a) scaled fp8, per-layer layout, and its dequantized weights.
    let f32_bytes = |v: &[f32]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    let mut fp8: Vec<RawTensor> = Vec::new();
    let mut fp8_base: Tensors = Vec::new();
    for (name, shape, vals) in &base {
        let stored = format!("model.diffusion_model.{name}");
        if !linear(name, shape) {
            fp8.push((stored, "F32", shape.clone(), f32_bytes(vals)));
            fp8_base.push((name.clone(), shape.clone(), vals.clone()));
            continue;
        }
        let (q, scale) = fp8_quantize(vals);
        let deq = q
            .iter()
            .map(|&b| {
                half::f16::from_f32(nijigen::formats::float::f8e4m3_to_f32(b) * scale).to_f32()
            })
            .collect();
        fp8_base.push((name.clone(), shape.clone(), deq));
        fp8.extend(common::comfy_quant_layer(&stored, shape.clone(), q, scale));
    }
    let fp8_path = dir.path().join("wan_fp8_scaled.safetensors");
    write_safetensors_raw(&fp8_path, &[], &fp8);

    // (b) Q8_0 GGUF (matrices whose rows are whole blocks), and its dequantized weights.
    let gguf_path = dir.path().join("wan-Q8_0.gguf");
    let q8 = |n: &str, s: &[u64]| linear(n, s) && s[1] % 32 == 0;
    let decls: Vec<TensorDecl> = base
        .iter()
        .map(|(n, s, _)| {
            let ty = if q8(n, s) {
                GgmlType::Q8_0
            } else {
                GgmlType::F32
            };
            TensorDecl::new(n.clone(), ty, s.clone())
        })
        .collect();
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String("wan".into()),
    )];
    let f = std::fs::File::create(&gguf_path).unwrap();
    let mut w = GgufWriter::new(&gguf_path, std::io::BufWriter::new(f), &meta, &decls).unwrap();
    let mut q8_base: Tensors = Vec::new();
    let mut q8_count = 0;
    for (name, shape, vals) in &base {
        if q8(name, shape) {
            let mut q = vec![0u8; GgmlType::Q8_0.bytes_for(vals.len() as u64).unwrap() as usize];
            ggml::quantize(GgmlType::Q8_0, vals, shape[1] as usize, &mut q).unwrap();
            w.write_tensor(name, &q).unwrap();
            q8_base.push((name.clone(), shape.clone(), q8_0_values(&q)));
            q8_count += 1;
        } else {
            w.write_tensor(name, bytemuck::cast_slice(vals)).unwrap();
            q8_base.push((name.clone(), shape.clone(), vals.clone()));
        }
    }
    w.finish().unwrap();
    assert!(q8_count > 10, "{q8_count} Q8_0 matrices");

    let wix = index("tests/fixtures/wan_dit");
    let case = &wix["t2v"];
    let (x, xs) = read_f32_entry("tests/fixtures/wan_dit", &case["x"]);
    let (text, _) = read_f32_entry("tests/fixtures/wan_dit", &wix["text"]);
    let t = case["timestep"].as_f64().unwrap() as f32;
    let run = |path: &Path, lora: Option<&LoraFile>| -> Vec<f32> {
        let store = WeightStore::open_path(path).unwrap();
        let set = store.load_cpu(|_| true).unwrap();
        let mut dit = WanDit::new(&set, "", 2).unwrap();
        let ad;
        if let Some(l) = lora {
            ad = Adapters::build(&set, "", LoraTarget::WanDit, &[(l, mult)]).unwrap();
            let rep = &ad.reports()[0];
            assert!(
                rep.unmatched.is_empty(),
                "{}: {:?}",
                path.display(),
                rep.unmatched
            );
            // Modules: 6 low-rank Linears (one with a diff_b too), the Linear with a diff,
            // norm3 (diff, diff_b), norm_q (diff), cross_attn.o and the head (diff_b).
            assert_eq!(rep.applied, 11, "{}", path.display());
            assert!(rep.unsupported.is_empty(), "{:?}", rep.unsupported);
            assert_eq!(
                ad.merged_vectors(),
                [
                    "blocks.0.norm3.bias",
                    "blocks.0.norm3.weight",
                    "blocks.0.self_attn.q.bias",
                    "blocks.1.cross_attn.o.bias",
                    "blocks.1.self_attn.norm_q.weight",
                    "head.head.bias",
                ],
                "{}",
                path.display()
            );
            dit.set_adapters(Some(&ad)).unwrap();
        }
        dit.forward(&x, t, &text, None, xs[1], xs[2], xs[3])
            .unwrap()
    };
    for (what, path, deq, tol, tol_change) in [
        ("fp8 scaled", &fp8_path, &fp8_base, 1e-3f32, 1e-2f32),
        ("Q8_0 GGUF", &gguf_path, &q8_base, 2e-2, 1e-1),
    ] {
        let ref_base = dir.path().join("reference_base.safetensors");
        let ref_merged = dir.path().join("reference_merged.safetensors");
        write(&ref_base, deq, St::F32);
        write(&ref_merged, &merged(deq, &deltas), St::F32);
        let (want, want_base) = (run(&ref_merged, None), run(&ref_base, None));
        let (got, got_base) = (run(path, Some(&lora)), run(path, None));
        let change = rel_err(&want, &want_base);
        let e = rel_err(&got, &want);
        let diff =
            |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
        let ed = rel_err(&diff(&got, &got_base), &diff(&want, &want_base));
        eprintln!(
            "{what}: LoRA changes the output by {change:.2e}; rel err {e:.2e} vs the merged \
             reference, LoRA change rel err {ed:.2e} (base alone {:.2e})",
            rel_err(&got_base, &want_base)
        );
        assert!(
            change > 1e-2,
            "{what}: the LoRA barely changes the output ({change})"
        );
        assert!(e < tol, "{what}: {e}");
        assert!(ed < tol_change, "{what}: LoRA change {ed}");
    }
}
