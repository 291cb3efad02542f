//! The Wan2.1 video VAE decoder against diffusers' AutoencoderKLWan on a tiny model with Wan2.1's
//! structure (base 16, z 4, dim_mult [1, 2, 4, 4], 1 res block, temporal up in the first two
//! up blocks: 8x spatial, 4x temporal), decoded one latent frame per graph with the causal
//! cache carried between graphs.
//!
//! The weights are regenerated here from the recipe in tests/fixtures/wan_vae/index.json (the
//! counter-based hash of tools/reference/make_wan_vae_fixtures.py) under diffusers names and
//! loaded through the weight store, which maps them to the original Wan names.

mod common;

use std::path::Path;

use common::{read_f32_entry, recipe_tensors, rel_err, write_safetensors, St};
use nijigen::models::wan_vae::{denormalize, normalize, UpLayer, LATENTS_MEAN, LATENTS_STD};
use nijigen::models::{WanVae, WanVaeError};
use nijigen::runtime::WeightStore;
use serde_json::Value;

const DIR: &str = "tests/fixtures/wan_vae";

type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

fn read_f32(entry: &Value) -> (Vec<f32>, Vec<usize>) {
    read_f32_entry(DIR, entry)
}

struct Fixture {
    tensors: Tensors,
    /// [z, t, h, w]
    latent: (Vec<f32>, Vec<usize>),
    /// [3, frames, H, W], clamped by diffusers
    decoded: (Vec<f32>, Vec<usize>),
    /// [3, frames, H, W] in [-1, 1]
    video: (Vec<f32>, Vec<usize>),
    /// [z, t, h, w], the latent mean
    encoded: (Vec<f32>, Vec<usize>),
}

fn fixture() -> Fixture {
    fixture_of("index.json")
}

fn fixture_of(index: &str) -> Fixture {
    let text = std::fs::read_to_string(Path::new(DIR).join(index)).unwrap();
    let index: Value = serde_json::from_str(&text).unwrap();
    let tensors = recipe_tensors(&index["tensors"]);
    Fixture {
        tensors,
        latent: read_f32(&index["latent"]),
        decoded: read_f32(&index["decoded"]),
        video: read_f32(&index["video"]),
        encoded: read_f32(&index["encoded"]),
    }
}

/// Loads `tensors` (diffusers names) through the weight store and runs `f` on the result.
fn with_set<R>(tensors: &Tensors, f: impl FnOnce(&nijigen::ggml::TensorSet<'_>) -> R) -> R {
    with_set_as(tensors, St::F32, f)
}

/// As [`with_set`], the file storing `ty` values.
fn with_set_as<R>(
    tensors: &Tensors,
    ty: St,
    f: impl FnOnce(&nijigen::ggml::TensorSet<'_>) -> R,
) -> R {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    write_safetensors(&path, &refs, ty);
    let store = WeightStore::open_path(&path).unwrap();
    let set = store.load_cpu(|_| true).unwrap();
    f(&set)
}

/// The first `t` latent frames of a [z, T, h, w] latent.
fn first_frames(latent: &[f32], shape: &[usize], t: usize) -> Vec<f32> {
    let (z, tt, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    (0..z)
        .flat_map(|c| latent[c * tt * plane..][..t * plane].to_vec())
        .collect()
}

/// The first `f` frames of a [3, F, H, W] video.
fn first_video_frames(video: &[f32], shape: &[usize], f: usize) -> Vec<f32> {
    let (c, ff, plane) = (shape[0], shape[1], shape[2] * shape[3]);
    (0..c)
        .flat_map(|ch| video[ch * ff * plane..][..f * plane].to_vec())
        .collect()
}

#[test]
fn decode_matches_diffusers_frame_by_frame_with_flat_memory() {
    let fx = fixture();
    let (latent, ls) = &fx.latent;
    let (want, ws) = &fx.decoded;
    assert_eq!(ls, &vec![4, 5, 4, 4]);
    assert_eq!(ws, &vec![3, 17, 32, 32]);
    with_set(&fx.tensors, |set| {
        let mut vae = WanVae::new(set, "", 2).unwrap();
        let c = vae.config().clone();
        assert_eq!(
            (c.z_dim, c.top_dim, c.out_dim, c.out_channels),
            (4, 64, 16, 3)
        );
        assert_eq!(c.spatial_factor(), 8);
        assert_eq!(c.temporal_factor(), 4);
        assert!(c.post_quant);
        assert_eq!(
            c.up.iter()
                .filter(|l| matches!(l, UpLayer::Up3d(_)))
                .count(),
            2
        );

        // T = 3 (a causal prefix of the fixture: its 9 frames are the first 9 of T = 5).
        let mut frames3 = 0;
        let lat3 = first_frames(latent, ls, 3);
        let got3 = {
            let mut out = vec![0f32; 3 * 9 * 1024];
            vae.decode_frames(&lat3, 3, 4, 4, |f, img| {
                frames3 += 1;
                for ch in 0..3 {
                    out[(ch * 9 + f) * 1024..][..1024].copy_from_slice(&img[ch * 1024..][..1024]);
                }
            })
            .unwrap();
            out
        };
        assert_eq!(frames3, 9);
        let e3 = rel_err(&got3, &first_video_frames(want, ws, 9));
        eprintln!("wan vae decode T=3 (9 frames): rel err {e3:.2e}");
        assert!(e3 < 1e-4, "T=3 rel err {e3}");

        let s3 = vae.last_compute_bytes();
        let mut vae5 = WanVae::new(set, "", 2).unwrap();
        let got = vae5.decode(latent, 5, 4, 4).unwrap();
        let s5 = vae5.last_compute_bytes();
        // The allocator keeps the largest buffer it needed: the same after 3 and 5 latent
        // frames means the per-frame graphs do not grow with the frame count (the host caches
        // are fixed-size too).
        eprintln!("wan vae compute buffer: T=3 {s3} bytes, T=5 {s5} bytes");
        assert_eq!(s3, s5);
        assert_eq!(vae5.decode_compute_bytes(4, 4).unwrap(), s5);
        assert_eq!(got.len(), want.len());
        assert!(got.iter().all(|v| (-1.0..=1.0).contains(v)));
        let e = rel_err(&got, want);
        eprintln!("wan vae decode T=5 (17 frames): rel err {e:.2e}");
        assert!(e < 1e-4, "T=5 rel err {e}");
        // Per-frame errors, so a cache bug shows which chunk.
        for f in 0..17 {
            let plane = 1024;
            let g: Vec<f32> = (0..3)
                .flat_map(|ch| got[(ch * 17 + f) * plane..][..plane].to_vec())
                .collect();
            let w: Vec<f32> = (0..3)
                .flat_map(|ch| want[(ch * 17 + f) * plane..][..plane].to_vec())
                .collect();
            assert!(rel_err(&g, &w) < 1e-4, "frame {f}: {}", rel_err(&g, &w));
        }
    });
}

#[test]
fn encode_matches_diffusers_in_chunks_of_four() {
    let fx = fixture();
    let (video, vs) = &fx.video;
    let (want, ws) = &fx.encoded;
    assert_eq!(vs, &vec![3, 9, 32, 32]);
    assert_eq!(ws, &vec![4, 3, 4, 4]);
    with_set(&fx.tensors, |set| {
        let mut vae = WanVae::new(set, "", 2).unwrap();
        assert!(vae.config().has_encoder);
        let got = vae.encode(video, 9, 32, 32).unwrap();
        assert_eq!(got.len(), want.len());
        let e = rel_err(&got, want);
        eprintln!("wan vae encode 9 frames: rel err {e:.2e}");
        assert!(e < 1e-4, "encode rel err {e}");
        // Frames must be 1 + 4k.
        let err = vae.encode(&video[..3 * 8 * 1024], 8, 32, 32).unwrap_err();
        assert!(matches!(err, WanVaeError::Input(_)), "{err}");
    });
}

/// Wan2.1's real z_dim (16) and residual blocks (2 per encoder level, 3 per decoder level:
/// the diffusers -> original name map depends on it) at a third of its width.
#[test]
fn z16_two_res_blocks_decode_and_encode_match_diffusers() {
    let fx = fixture_of("z16_index.json");
    let (latent, ls) = &fx.latent;
    let (want, ws) = &fx.decoded;
    let (video, vs) = &fx.video;
    let (want_enc, es) = &fx.encoded;
    assert_eq!(ls, &vec![16, 2, 2, 2]);
    assert_eq!(ws, &vec![3, 5, 16, 16]);
    with_set(&fx.tensors, |set| {
        let mut vae = WanVae::new(set, "", 2).unwrap();
        let c = vae.config().clone();
        assert_eq!((c.z_dim, c.top_dim, c.out_dim), (16, 128, 32));
        // 4 levels x 3 res blocks + 3 resamples.
        assert_eq!(c.up.len(), 15);
        assert_eq!(c.down.len(), 11);
        let got = vae.decode(latent, 2, 2, 2).unwrap();
        let e = rel_err(&got, want);
        eprintln!("wan vae z16 decode: rel err {e:.2e}");
        assert!(e < 1e-4, "z16 decode rel err {e}");
        // Planned (not computed) at 480x832 (a 60x104 latent): 1/3 of Wan2.1's width.
        let big = vae.decode_compute_bytes(60, 104).unwrap();
        eprintln!("wan vae z16 (base 32) compute buffer per chunk at 480x832: {big} bytes");
        let got = vae.encode(video, vs[1], vs[2], vs[3]).unwrap();
        assert_eq!(got.len(), es.iter().product::<usize>());
        let e = rel_err(&got, want_enc);
        eprintln!("wan vae z16 encode: rel err {e:.2e}");
        assert!(e < 1e-4, "z16 encode rel err {e}");
    });
}

/// BF16 and F16 files (as ComfyUI's `wan_2.1_vae.safetensors` is stored): the weights are cast
/// to F32 (BF16) or used as F16 kernels; the error is the weights' rounding.
#[test]
fn half_precision_weights_stay_close() {
    let fx = fixture_of("z16_index.json");
    let (latent, _) = &fx.latent;
    let (want, _) = &fx.decoded;
    for (ty, name) in [(St::Bf16, "bf16"), (St::F16, "f16")] {
        with_set_as(&fx.tensors, ty, |set| {
            let mut vae = WanVae::new(set, "", 2).unwrap();
            let got = vae.decode(latent, 2, 2, 2).unwrap();
            let e = rel_err(&got, want);
            eprintln!("wan vae z16 decode, {name} weights: rel err {e:.2e}");
            assert!(e < 3e-2, "{name} rel err {e}");
        });
    }
}

#[test]
fn missing_tensor_is_named() {
    let fx = fixture();
    let tensors: Tensors = fx
        .tensors
        .iter()
        .filter(|(n, _, _)| n != "decoder.up_blocks.1.resnets.0.conv2.weight")
        .cloned()
        .collect();
    with_set(&tensors, |set| {
        let err = WanVae::new(set, "", 1).err().expect("a missing tensor");
        let msg = err.to_string();
        assert!(matches!(err, WanVaeError::Weights(_)), "{msg}");
        // diffusers up_blocks.1.resnets.0 = original upsamples.{1 * (1 + 2) + 0}
        assert!(
            msg.contains("decoder.upsamples.3.residual.6.weight"),
            "{msg}"
        );
    });
}

#[test]
fn bad_latent_size_is_an_input_error() {
    let fx = fixture();
    with_set(&fx.tensors, |set| {
        let mut vae = WanVae::new(set, "", 1).unwrap();
        let err = vae.decode(&[0.0; 10], 1, 4, 4).unwrap_err();
        assert!(matches!(err, WanVaeError::Input(_)), "{err}");
    });
}

#[test]
fn denormalize_scales_then_shifts_per_channel() {
    let mut x = vec![1.0f32; 16 * 2];
    denormalize(&mut x, &LATENTS_MEAN, &LATENTS_STD);
    for c in 0..16 {
        for v in &x[c * 2..c * 2 + 2] {
            assert!((v - (LATENTS_STD[c] + LATENTS_MEAN[c])).abs() < 1e-6);
        }
    }
    normalize(&mut x, &LATENTS_MEAN, &LATENTS_STD);
    assert!(x.iter().all(|v| (v - 1.0).abs() < 1e-5), "{x:?}");
}

/// A latent of `t` frames at h x w for the z16 fixture model, from the hash generator.
fn z16_latent(t: usize, h: usize, w: usize) -> Vec<f32> {
    let mut lat = common::hash_values(16 * t * h * w, 4242, 2.0, 0.0);
    denormalize(&mut lat, &LATENTS_MEAN, &LATENTS_STD);
    lat
}

/// Tiled decode (each tile a full causal decode over all frames with its own caches, blended
/// across the overlap) against the untiled decode, on the z16 model (base 32) at a 24x24 latent
/// (192x192 px), 2 latent frames. Every 3x3 conv near a tile edge and the per-frame mid
/// attention see only the tile, so tiling is not exact; with tiles of 16 and an overlap of 8
/// the mean error is small.
#[test]
fn tiled_decode_is_close_to_untiled_and_exact_with_one_tile() {
    let fx = fixture_of("z16_index.json");
    with_set(&fx.tensors, |set| {
        let mut vae = WanVae::new(set, "", 2).unwrap();
        let (t, h, w) = (2, 24, 24);
        let lat = z16_latent(t, h, w);
        let full = vae.decode(&lat, t, h, w).unwrap();
        let untiled_bytes = vae.last_compute_bytes();

        // A tile covering the latent is the untiled decode, bit for bit.
        let one = vae.decode_tiled(&lat, t, h, w, 24, 8).unwrap();
        assert_eq!(one, full);
        let mut frames = Vec::new();
        vae.decode_frames_tiled(&lat, t, h, w, 32, 4, |f, img| {
            frames.push((f, img.to_vec()))
        })
        .unwrap();
        assert_eq!(frames.len(), 5);
        // Frame 4, channel 0 ([3, F, H, W]).
        assert_eq!(frames[4].1[..192 * 192], full[4 * 192 * 192..][..192 * 192]);

        // 2 x 2 tiles of 16 (overlap 8).
        let mut tv = WanVae::new(set, "", 2).unwrap();
        let tiled = tv.decode_tiled(&lat, t, h, w, 16, 8).unwrap();
        let tiled_bytes = tv.last_compute_bytes();
        assert_eq!(tiled.len(), full.len());
        assert!(tiled.iter().all(|v| (-1.0..=1.0).contains(v)));
        let e = rel_err(&tiled, &full);
        let max = tiled
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let mean = tiled
            .iter()
            .zip(&full)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / full.len() as f32;
        eprintln!(
            "wan vae tiled (16, overlap 8) vs untiled at 24x24 latent: rel err {e:.2e}, mean abs \
             {mean:.2e}, max abs {max:.2e}; compute bytes {tiled_bytes} vs {untiled_bytes}"
        );
        assert!(e < 0.1, "tiled rel err {e}");
        assert!(mean < 0.04, "tiled mean abs err {mean}");
        // A tile's graph is smaller than the whole latent's, and the plan says so beforehand.
        assert!(tiled_bytes < untiled_bytes);
        let plan = vae.decode_memory(t, h, w, Some((16, 8))).unwrap();
        assert_eq!(plan.compute_bytes, tiled_bytes);
        assert_eq!((plan.tiles, plan.tile_h, plan.tile_w), (4, 16, 16));
        let plan1 = vae.decode_memory(t, h, w, None).unwrap();
        assert_eq!(plan1.compute_bytes, untiled_bytes);
        assert_eq!(plan1.tiles, 1);
        assert!(plan.cache_bytes < plan1.cache_bytes);
        // A tile covering the latent plans as untiled.
        assert_eq!(vae.decode_memory(t, h, w, Some((24, 8))).unwrap(), plan1);

        // Bad tiles are input errors.
        let err = vae.decode_tiled(&lat, t, h, w, 8, 8).unwrap_err();
        assert!(matches!(err, WanVaeError::Input(_)), "{err}");
    });
}

/// The compute buffer of a decode does not grow with the number of latent frames: the causal
/// caches live in their own buffer, written in place, and each graph is one latent frame.
#[test]
fn decode_compute_bytes_do_not_depend_on_the_frame_count() {
    let fx = fixture_of("z16_index.json");
    with_set(&fx.tensors, |set| {
        let (h, w) = (6, 10);
        let mut bytes = Vec::new();
        for t in [2, 5] {
            let mut vae = WanVae::new(set, "", 2).unwrap();
            let out = vae.decode(&z16_latent(t, h, w), t, h, w).unwrap();
            assert_eq!(out.len(), 3 * (1 + 4 * (t - 1)) * 48 * 80);
            bytes.push(vae.last_compute_bytes());
            let m = vae.decode_memory(t, h, w, None).unwrap();
            assert_eq!(m.compute_bytes, vae.last_compute_bytes());
            assert_eq!(vae.decode_compute_bytes(h, w).unwrap(), m.compute_bytes);
        }
        eprintln!(
            "wan vae z16 compute bytes at 6x10: T=2 {} T=5 {}",
            bytes[0], bytes[1]
        );
        assert_eq!(bytes[0], bytes[1]);
    });
}

/// Encode: the compute buffer and caches are planned without computing (per chunk, whatever
/// the frame count) and grow with the image size.
#[test]
fn encode_memory_is_planned() {
    let fx = fixture_of("z16_index.json");
    with_set(&fx.tensors, |set| {
        let vae = WanVae::new(set, "", 2).unwrap();
        let m = vae.encode_memory(48, 80).unwrap();
        assert!(m.compute_bytes > 0 && m.cache_bytes > 0, "{m:?}");
        let big = vae.encode_memory(96, 160).unwrap();
        assert!(big.compute_bytes > 3 * m.compute_bytes, "{big:?} vs {m:?}");
    });
}
