//! The SDXL VAE against diffusers' AutoencoderKL on a tiny model (channels [32, 64], 2 res
//! blocks, 8 groups, 2x instead of 8x) and on SDXL's real shapes with random weights.
//!
//! The weights are regenerated here from the recipe in tests/fixtures/vae_sdxl/index.json (the
//! counter-based hash of tools/reference/make_vae_sdxl_fixtures.py) under diffusers names and
//! loaded through the weight store, which maps them to ldm names.

mod common;

use std::path::Path;

use common::{read_f32_entry, recipe_tensors, rel_err, write_safetensors, St};
use nijigen::ggml::{GgmlType, TensorSet};
use nijigen::models::vae_sdxl::SCALE_FACTOR;
use nijigen::models::{SdxlVae, VaeConfig, VaeError};
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/vae_sdxl";

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

struct Fixture {
    tensors: Tensors,
    groups: usize,
    /// (values, [C, H, W])
    latent: (Vec<f32>, Vec<usize>),
    decoded: (Vec<f32>, Vec<usize>),
    image: (Vec<f32>, Vec<usize>),
    encoded: (Vec<f32>, Vec<usize>),
}

fn read_f32(entry: &Value) -> (Vec<f32>, Vec<usize>) {
    read_f32_entry(DIR, entry)
}

fn fixture() -> Fixture {
    fixture_of("tiny")
}

fn fixture_of(kind: &str) -> Fixture {
    let text = std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let index = index["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap();
    let tensors = recipe_tensors(&index["tensors"]);
    Fixture {
        tensors,
        groups: index["groups"].as_u64().unwrap() as usize,
        latent: read_f32(&index["latent"]),
        decoded: read_f32(&index["decoded"]),
        image: read_f32(&index["image"]),
        encoded: read_f32(&index["encoded"]),
    }
}

fn write(path: &Path, tensors: &Tensors, ty: St) {
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(path, &refs, ty);
}

/// Loads `tensors` (diffusers names) through the weight store and runs `f` on the VAE.
fn with_vae<R>(
    fx: &Fixture,
    tensors: &Tensors,
    ty: St,
    f: impl FnOnce(&mut SdxlVae<'_>) -> R,
) -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    write(&path, tensors, ty);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let config = VaeConfig::from_weights(&set, "", fx.groups).unwrap();
    let mut vae = SdxlVae::with_config(&set, "", config, 2).unwrap();
    f(&mut vae)
}

fn is_tiny(c: &VaeConfig) {
    assert_eq!(c.channels, vec![32, 64]);
    assert_eq!(
        (c.res_blocks, c.latent_channels, c.image_channels, c.groups),
        (2, 4, 3, 8)
    );
    assert!(c.has_encoder && c.has_decoder);
    assert_eq!(c.downscale(), 2);
}

fn clamped(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.clamp(-1.0, 1.0)).collect()
}

#[test]
fn decode_f32_matches_diffusers_and_clamps() {
    let fx = fixture();
    let (latent, ls) = &fx.latent;
    let (want, ws) = &fx.decoded;
    assert_eq!(ws, &vec![3, ls[1] * 2, ls[2] * 2]);
    // The fixture has values outside [-1, 1], so clamping is exercised.
    let outside = want.iter().filter(|v| v.abs() > 1.0).count();
    assert!(
        outside > want.len() / 50,
        "{outside} values outside [-1, 1]"
    );
    let got = with_vae(&fx, &fx.tensors, St::F32, |vae| {
        is_tiny(vae.config());
        vae.decode(latent, ls[1], ls[2]).unwrap()
    });
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
    let e = rel_err(&got, &clamped(want));
    eprintln!("decode f32: rel err {e:.2e}");
    assert!(e < 1e-4, "decode rel err {e}");
}

#[test]
fn encode_f32_matches_diffusers() {
    let fx = fixture();
    let (image, is) = &fx.image;
    let (want, ws) = &fx.encoded;
    assert_eq!(ws, &vec![4, is[1] / 2, is[2] / 2]);
    let got = with_vae(&fx, &fx.tensors, St::F32, |vae| {
        vae.encode(image, is[1], is[2]).unwrap()
    });
    assert_eq!(got.len(), want.len());
    let e = rel_err(&got, want);
    eprintln!("encode f32: rel err {e:.2e}");
    assert!(e < 1e-4, "encode rel err {e}");
}

#[test]
fn f16_weights_stay_close() {
    let fx = fixture();
    let (latent, ls) = &fx.latent;
    let (image, is) = &fx.image;
    let (dec, enc) = with_vae(&fx, &fx.tensors, St::F16, |vae| {
        (
            vae.decode(latent, ls[1], ls[2]).unwrap(),
            vae.encode(image, is[1], is[2]).unwrap(),
        )
    });
    let (ed, ee) = (
        rel_err(&dec, &clamped(&fx.decoded.0)),
        rel_err(&enc, &fx.encoded.0),
    );
    eprintln!("f16 weights: decode rel err {ed:.2e}, encode {ee:.2e}");
    assert!(ed < 1e-2 && ee < 1e-2, "{ed} {ee}");
}

#[test]
fn tiled_decode_is_close_to_untiled() {
    let fx = fixture();
    // A 16x16 latent with the statistics of the fixture's 8x8 one.
    let m = 16;
    let latent: Vec<f32> = common::rand_vec(4 * m * m, 99)
        .iter()
        .map(|v| v * 1.5)
        .collect();
    let (full, tiled) = with_vae(&fx, &fx.tensors, St::F32, |vae| {
        let full = vae.decode(&latent, m, m).unwrap();
        let tiled = vae.decode_tiled(&latent, m, m, 8, 4).unwrap();
        // One tile covering everything is the untiled decode.
        let one = vae.decode_tiled(&latent, m, m, 16, 4).unwrap();
        assert_eq!(one, full);
        (full, tiled)
    });
    assert_eq!(full.len(), 3 * 32 * 32);
    assert!(tiled.iter().all(|v| (-1.0..=1.0).contains(v)));
    let e = rel_err(&tiled, &full);
    eprintln!("tiled (8, overlap 4) vs untiled: rel err {e:.2e}");
    // GroupNorm statistics and the mid attention are per tile, so tiling is not exact: on this
    // tiny random model we measure 1.3e-1; diffusers' own tiled decode (tile 8, overlap factor
    // 0.5) differs from its untiled decode by 1.65e-1 on a latent of the same statistics.
    assert!(e < 0.2, "tiled rel err {e}");
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let fx = fixture();
    let dropped = "decoder.up_blocks.1.resnets.2.conv1.weight";
    let tensors: Tensors = fx
        .tensors
        .iter()
        .filter(|t| t.0 != dropped)
        .cloned()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    write(&path, &tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let config = VaeConfig::from_weights(&set, "", fx.groups).unwrap();
    let msg = match SdxlVae::with_config(&set, "", config, 1) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a file without {dropped} was accepted"),
    };
    eprintln!("{msg}");
    // diffusers up_blocks.1 is ldm up.0 (levels counted from the bottom).
    assert!(msg.contains("decoder.up.0.block.2.conv1.weight"), "{msg}");
}

#[test]
fn ldm_names_under_a_checkpoint_prefix_and_input_errors() {
    let fx = fixture();
    // Rename through the store once, then build a set of ldm names under SDXL's prefix.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    write(&path, &fx.tensors, St::F32);
    let store = WeightStore::open_path(&path).unwrap();
    let loaded = store.load_cpu(|_| true).unwrap();
    let names: Vec<String> = loaded.names().to_vec();
    let mut set = TensorSet::new(names.len()).unwrap();
    for name in &names {
        let t = loaded.get(name).unwrap();
        let vals = nijigen::ggml::tensor_get_f32(t).unwrap();
        let mut ne: Vec<i64> = t.ne().to_vec();
        // Some converted files store the attention projections as 2-D linears.
        if name == "decoder.mid.attn_1.q.weight" {
            ne = vec![ne[2], ne[3]];
        }
        set.add_owned(
            &format!("first_stage_model.{name}"),
            GgmlType::F32,
            &ne,
            bytemuck::cast_slice(&vals),
        )
        .unwrap();
    }
    // A group count that does not divide every level's channels is refused.
    assert!(matches!(
        VaeConfig::from_weights(&set, "first_stage_model.", 24),
        Err(VaeError::Config(_))
    ));
    let config = VaeConfig::from_weights(&set, "first_stage_model.", fx.groups).unwrap();
    is_tiny(&config);
    let mut vae = SdxlVae::with_config(&set, "first_stage_model.", config, 2).unwrap();
    let (latent, ls) = &fx.latent;
    let got = vae.decode(latent, ls[1], ls[2]).unwrap();
    assert!(rel_err(&got, &clamped(&fx.decoded.0)) < 1e-4);
    assert!(matches!(
        vae.decode(&latent[1..], ls[1], ls[2]),
        Err(VaeError::Input(_))
    ));
    assert!(matches!(
        vae.encode(&fx.image.0, 63, 64),
        Err(VaeError::Input(_))
    ));
    assert!(matches!(
        vae.decode_tiled(latent, ls[1], ls[2], 4, 4),
        Err(VaeError::Input(_))
    ));
    assert!(matches!(
        SdxlVae::new(&set, "model.", 1),
        Err(VaeError::Missing { .. })
    ));
    // The scale factor is applied inside decode: a latent scaled by 1/0.13025 already differs.
    let unscaled: Vec<f32> = latent.iter().map(|v| v / SCALE_FACTOR).collect();
    let other = vae.decode(&unscaled, ls[1], ls[2]).unwrap();
    assert!(rel_err(&other, &got) > 1e-2);
}

#[test]
fn sdxl_shapes_match_diffusers() {
    // The real architecture (84M random weights, 335 MB as F32), tiny images: config inference
    // with 4 levels, the default 32 groups, the 8x factor and the diffusers -> ldm level order.
    let fx = fixture_of("sdxl");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    write(&path, &fx.tensors, St::F32);
    drop(fx.tensors);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    let mut vae = SdxlVae::new(&set, "", 2).unwrap();
    let c = vae.config();
    assert_eq!(c.channels, vec![128, 256, 512, 512]);
    assert_eq!((c.res_blocks, c.latent_channels, c.groups), (2, 4, 32));
    assert_eq!(c.downscale(), 8);
    let (latent, ls) = &fx.latent;
    let dec = vae.decode(latent, ls[1], ls[2]).unwrap();
    assert_eq!(fx.decoded.1, vec![3, ls[1] * 8, ls[2] * 8]);
    let ed = rel_err(&dec, &clamped(&fx.decoded.0));
    let (image, is) = &fx.image;
    let enc = vae.encode(image, is[1], is[2]).unwrap();
    let ee = rel_err(&enc, &fx.encoded.0);
    eprintln!("sdxl shapes f32: decode rel err {ed:.2e}, encode {ee:.2e}");
    assert!(ed < 1e-4 && ee < 1e-4, "{ed} {ee}");
}
