//! The SDXL UNet against diffusers' UNet2DConditionModel on a tiny SDXL-shaped model (3 levels
//! of 32/64/128 channels, the first without attention, transformer depth 1/1/2 and 2 in the
//! middle, head dim 64, text_time added embedding), random weights.
//!
//! The weights are regenerated here from the recipe in tests/fixtures/unet_sdxl/index.json (the
//! counter-based hash of tools/reference/make_unet_sdxl_fixtures.py) under diffusers names and
//! loaded through the weight store, which maps them to ldm names.

mod common;

use std::path::Path;

use common::{read_f32_entry, recipe_tensors, rel_err, write_safetensors, St};
use nijigen::ggml::{GgmlType, TensorSet};
use nijigen::models::unet_sdxl::{sdxl_added_cond, timestep_embedding};
use nijigen::models::{SdxlUnet, UnetAttention, UnetError};
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/unet_sdxl";

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

fn read_f32(entry: &Value) -> (Vec<f32>, Vec<usize>) {
    read_f32_entry(DIR, entry)
}

struct Fixture {
    index: Value,
    tensors: Tensors,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let tensors = recipe_tensors(&index["tensors"]);
    Fixture { index, tensors }
}

fn write(path: &Path, tensors: &Tensors, ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// Loads `tensors` (diffusers names) through the weight store and runs `f` on the built UNet.
fn with_unet<R>(
    tensors: &Tensors,
    ty: St,
    f: impl FnOnce(Result<SdxlUnet<'_>, UnetError>) -> R,
) -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    write(&path, tensors, ty);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    f(SdxlUnet::new(&set, "", 2))
}

#[test]
fn forward_f32_matches_diffusers() {
    let fx = fixture();
    let ix = &fx.index;
    let (x, xs) = read_f32(&ix["x"]);
    let (context, _) = read_f32(&ix["context"]);
    let (pooled, _) = read_f32(&ix["text_embeds"]);
    let (ids, _) = read_f32(&ix["time_ids"]);
    let (y_ref, _) = read_f32(&ix["y"]);
    let time_ids: [f32; 6] = ids.try_into().unwrap();
    let (h, w) = (xs[1], xs[2]);
    with_unet(&fx.tensors, St::F32, |unet| {
        let mut unet = unet.unwrap();
        let c = unet.config().clone();
        assert_eq!(c.channels, vec![32, 64, 128]);
        assert_eq!(c.transformer_depth, vec![0, 1, 2]);
        assert_eq!(
            (
                c.model_channels,
                c.res_blocks,
                c.mid_transformer_depth,
                c.context_dim
            ),
            (32, 2, 2, 64)
        );
        assert_eq!(
            (c.adm_in, c.time_embed_dim, c.in_channels, c.out_channels),
            (Some(80), 128, 4, 4)
        );
        let y = sdxl_added_cond(&pooled, time_ids, 80).unwrap();
        let ey = rel_err(&y, &y_ref);
        eprintln!("added cond y: rel err {ey:.2e}");
        assert!(ey < 1e-6, "y rel err {ey}");
        for case in ix["cases"].as_array().unwrap() {
            let t = case["timestep"].as_f64().unwrap() as f32;
            let (want, _) = read_f32(&case["out"]);
            let got = unet.forward(&x, t, &context, &y, h, w).unwrap();
            assert_eq!(got.len(), want.len());
            let e = rel_err(&got, &want);
            eprintln!("unet f32 t={t}: rel err {e:.2e}");
            assert!(e < 1e-4, "t={t}: rel err {e}");
        }
        // Another latent size and context length rebuild the graph; coming back to the
        // fixture's shapes rebuilds it again and gives the same answer.
        let t0 = ix["cases"][0]["timestep"].as_f64().unwrap() as f32;
        let first = unet.forward(&x, t0, &context, &y, h, w).unwrap();
        let small = unet
            .forward(&x[..4 * 8 * 16], t0, &context, &y, 8, 16)
            .unwrap();
        assert_eq!(small.len(), 4 * 8 * 16);
        let long: Vec<f32> = context.iter().chain(&context).copied().collect();
        let two = unet.forward(&x, t0, &long, &y, h, w).unwrap();
        // Twice the same tokens: cross-attention gives the same result.
        let e2 = rel_err(&two, &first);
        assert!(e2 < 1e-5, "duplicated context rel err {e2}");
        let again = unet.forward(&x, t0, &context, &y, h, w).unwrap();
        assert_eq!(again, first);
        // Input checks.
        assert!(matches!(
            unet.forward(&x, 1.0, &context, &y, h + 1, w),
            Err(UnetError::Input(_))
        ));
        assert!(matches!(
            unet.forward(&x, 1.0, &context[1..], &y, h, w),
            Err(UnetError::Input(_))
        ));
        assert!(matches!(
            unet.forward(&x, 1.0, &context, &y[1..], h, w),
            Err(UnetError::Input(_))
        ));
    });
}

#[test]
fn timestep_embedding_matches_the_reference_convention() {
    // diffusers Timesteps(8, flip_sin_to_cos=True, downscale_freq_shift=0) of 1024.
    let e = timestep_embedding(1024.0, 8);
    let f: Vec<f64> = (0..4)
        .map(|i| (-(10000f64.ln()) * i as f64 / 4.0).exp())
        .collect();
    for i in 0..4 {
        assert!((e[i] as f64 - (1024.0 * f[i]).cos()).abs() < 1e-3, "{i}");
        assert!(
            (e[4 + i] as f64 - (1024.0 * f[i]).sin()).abs() < 1e-3,
            "{i}"
        );
    }
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let fx = fixture();
    // diffusers up_blocks.0 is ldm output_blocks 0..3 (R + 1 = 3 blocks a level); mid_block
    // attention is middle_block.1; down_blocks.1 is input_blocks 4..6.
    for (dropped, ldm) in [
        (
            "up_blocks.0.attentions.1.transformer_blocks.1.attn2.to_v.weight",
            "output_blocks.1.1.transformer_blocks.1.attn2.to_v.weight",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.1.norm1.weight",
            "middle_block.1.transformer_blocks.1.norm1.weight",
        ),
        (
            "down_blocks.1.attentions.1.transformer_blocks.0.norm1.weight",
            "input_blocks.5.1.transformer_blocks.0.norm1.weight",
        ),
        (
            "up_blocks.1.attentions.2.proj_in.weight",
            "output_blocks.5.1.proj_in.weight",
        ),
    ] {
        let tensors: Tensors = fx
            .tensors
            .iter()
            .filter(|t| t.0 != dropped)
            .cloned()
            .collect();
        assert_eq!(tensors.len() + 1, fx.tensors.len(), "{dropped}");
        let msg = with_unet(&tensors, St::F32, |r| match r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a file without {dropped} was accepted"),
        });
        eprintln!("{msg}");
        assert!(msg.contains(ldm), "{dropped}: {msg}");
    }
}

#[test]
fn f16_weights_stay_close() {
    let fx = fixture();
    let ix = &fx.index;
    let (x, xs) = read_f32(&ix["x"]);
    let (context, _) = read_f32(&ix["context"]);
    let (y, _) = read_f32(&ix["y"]);
    let case = &ix["cases"][0];
    let t = case["timestep"].as_f64().unwrap() as f32;
    let (want, _) = read_f32(&case["out"]);
    let got = with_unet(&fx.tensors, St::F16, |unet| {
        unet.unwrap()
            .forward(&x, t, &context, &y, xs[1], xs[2])
            .unwrap()
    });
    let e = rel_err(&got, &want);
    eprintln!("unet f16 weights t={t}: rel err {e:.2e}");
    assert!(e < 1e-2, "f16 rel err {e}");
}

#[test]
fn ldm_names_under_a_checkpoint_prefix() {
    let fx = fixture();
    let ix = &fx.index;
    // Rename through the store once, then build a set of ldm names under SDXL's prefix.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unet.safetensors");
    write(&path, &fx.tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let loaded = store.load_cpu(|_| true).unwrap();
    let names: Vec<String> = loaded.names().to_vec();
    assert!(
        names.iter().any(|n| n == "label_emb.0.0.weight"),
        "{names:?}"
    );
    let mut set = TensorSet::new(names.len()).unwrap();
    for name in &names {
        let t = loaded.get(name).unwrap();
        let vals = nijigen::ggml::tensor_get_f32(t).unwrap();
        set.add_owned(
            &format!("model.diffusion_model.{name}"),
            GgmlType::F32,
            &t.ne(),
            bytemuck::cast_slice(&vals),
        )
        .unwrap();
    }
    assert!(SdxlUnet::new(&set, "", 1).is_err());
    let mut unet = SdxlUnet::new(&set, "model.diffusion_model.", 2).unwrap();
    let (x, xs) = read_f32(&ix["x"]);
    let (context, _) = read_f32(&ix["context"]);
    let (y, _) = read_f32(&ix["y"]);
    let case = &ix["cases"][1];
    let t = case["timestep"].as_f64().unwrap() as f32;
    let (want, _) = read_f32(&case["out"]);
    let got = unet.forward(&x, t, &context, &y, xs[1], xs[2]).unwrap();
    let e = rel_err(&got, &want);
    eprintln!("ldm names under model.diffusion_model. t={t}: rel err {e:.2e}");
    assert!(e < 1e-4, "rel err {e}");
}

#[test]
fn flash_attention_matches_diffusers() {
    let fx = fixture();
    let ix = &fx.index;
    let (x, xs) = read_f32(&ix["x"]);
    let (context, _) = read_f32(&ix["context"]);
    let (y, _) = read_f32(&ix["y"]);
    with_unet(&fx.tensors, St::F32, |unet| {
        let mut unet = unet.unwrap();
        for case in ix["cases"].as_array().unwrap() {
            let t = case["timestep"].as_f64().unwrap() as f32;
            let (want, _) = read_f32(&case["out"]);
            unet.set_attention(UnetAttention::MulMat);
            let plain = unet.forward(&x, t, &context, &y, xs[1], xs[2]).unwrap();
            unet.set_attention(UnetAttention::Flash);
            let flash = unet.forward(&x, t, &context, &y, xs[1], xs[2]).unwrap();
            let e = rel_err(&flash, &want);
            eprintln!("unet f32 flash attention t={t}: rel err {e:.2e}");
            assert!(e < 1e-4, "t={t}: rel err {e}");
            assert!(rel_err(&flash, &plain) < 1e-5);
        }
    });
}

#[test]
fn sdxl_shapes_give_sdxl_config_and_graph() {
    // The real SDXL UNet's 1680 tensors (diffusers names), renamed to ldm by the name map with
    // the real block structure, all pointing at one zeroed F16 region: config inference and
    // a full graph build at SDXL's size, without 5 GB of weights.
    use nijigen::formats::names::{normalize, Architecture, Layout};
    let text = std::fs::read_to_string(Path::new(DIR).join("sdxl_shapes.json")).unwrap();
    let shapes: Vec<(String, Vec<i64>)> = serde_json::from_str(&text).unwrap();
    let largest = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<i64>() as usize * 2)
        .max()
        .unwrap();
    let backing = vec![0u8; largest + 32];
    let off = backing.as_ptr().align_offset(32);
    let region = &backing[off..off + largest];
    let mut set = TensorSet::new(shapes.len()).unwrap();
    for (name, shape) in &shapes {
        let ldm = normalize(Architecture::SDXL_UNET, Layout::Diffusers, name)
            .unwrap_or_else(|| panic!("{name} not mapped"));
        let ne: Vec<i64> = shape.iter().rev().copied().collect();
        set.add_mapped(ldm.target(), GgmlType::F16, &ne, region, 0)
            .unwrap();
    }
    let unet = SdxlUnet::new(&set, "", 1).unwrap();
    let c = unet.config();
    assert_eq!(c.channels, vec![320, 640, 1280]);
    assert_eq!(c.transformer_depth, vec![0, 2, 10]);
    assert_eq!(
        (c.model_channels, c.res_blocks, c.mid_transformer_depth),
        (320, 2, 10)
    );
    assert_eq!(
        (
            c.context_dim,
            c.adm_in,
            c.time_embed_dim,
            c.head_dim,
            c.groups
        ),
        (2048, Some(2816), 1280, 64, 32)
    );
    assert_eq!(c.downscale(), 4);
}
