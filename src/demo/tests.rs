use std::collections::BTreeMap;

use super::*;

#[test]
fn names_are_unique_and_shapes_positive() {
    for list in all_files() {
        let mut names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(list.iter().all(|t| t.shape.iter().all(|&d| d > 0)));
    }
}

/// (scale, offset) of tensor `name` of `list`, with its shape.
fn init_of(list: &[TensorSpec], name: &str) -> (Vec<u64>, (f32, f32)) {
    let t = list.iter().find(|t| t.name == name).expect(name);
    (t.shape.clone(), t.init.scale_offset(&t.shape))
}

#[test]
fn inits_follow_the_tensor_kind() {
    let sdxl = sdxl_checkpoint();
    let block = "first_stage_model.encoder.down.1.block.0";
    assert_eq!(
        init_of(&sdxl, &format!("{block}.norm1.weight")),
        (vec![32], (0.2, 1.0))
    );
    assert_eq!(
        init_of(&sdxl, &format!("{block}.norm1.bias")),
        (vec![32], (0.1, 0.0))
    );
    assert_eq!(
        init_of(&wan_vae(), "encoder.downsamples.1.residual.0.gamma"),
        (vec![32, 1, 1, 1], (0.2, 1.0))
    );
    let (shape, (s, o)) = init_of(&sdxl, &format!("{block}.conv1.weight"));
    assert_eq!(shape, [32, 32, 3, 3]);
    assert!((s - (3.0f32 / 288.0).sqrt()).abs() < 1e-6 && o == 0.0);
}

/// (name, shape) of a names fixture (tests/fixtures/names, dumped from the reference
/// implementations by tools/reference/dump_names.py).
fn fixture(file: &str) -> BTreeMap<String, Vec<u64>> {
    let path = format!("{}/tests/fixtures/names/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect(&path);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (n, s) = l.split_once('\t').expect("name<TAB>shape");
            let shape = s
                .split(',')
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.trim().parse().expect("dim"))
                .collect();
            (n.to_string(), shape)
        })
        .collect()
}

fn assert_table(file: &str, list: Vec<TensorSpec>) {
    let n = list.len();
    let got: BTreeMap<String, Vec<u64>> = list.into_iter().map(|t| (t.name, t.shape)).collect();
    assert_eq!(got.len(), n, "{file}: duplicate names");
    let want = fixture(file);
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{file}: missing {missing:?}, extra {extra:?}"
    );
    for (name, shape) in &want {
        assert_eq!(&got[name], shape, "{file}: {name}");
    }
}

/// The tables at the sizes of the reference dumps give their names and shapes: the sizes are
/// parameters, not baked into the structure.
#[test]
fn tables_at_the_reference_sizes_match_the_reference_names() {
    let unet = UnetSizes {
        latent: 4,
        channels: &[32, 64, 128],
        depth: &[0, 1, 2],
        res_blocks: 2,
        context: 64,
        adm: 32 + 6 * 8,
    };
    assert_table("sdxl_unet_ldm.txt", unet_sdxl::tensors(&unet, ""));
    let vae = SdxlVaeSizes {
        channels: &[32, 64, 64],
        res_blocks: 2,
        latent: 4,
    };
    assert_table("sdxl_vae_ldm.txt", vae_sdxl::tensors(&vae, ""));
    let clip_l = ClipTextSizes {
        width: 64,
        layers: 2,
        ffn: 256,
        vocab: 1000,
        positions: 77,
        projection: None,
    };
    assert_table("clip_l_hf.txt", clip_text::hf(&clip_l, ""));
    let clip_g = ClipTextSizes {
        width: 128,
        layers: 3,
        ffn: 512,
        vocab: 1000,
        positions: 77,
        projection: Some(96),
    };
    assert_table("clip_g_hf.txt", clip_text::hf(&clip_g, ""));
    assert_table("clip_g_openclip.txt", clip_text::open_clip(&clip_g, ""));
    let vision = ClipVisionSizes {
        width: 160,
        layers: 2,
        ffn: 320,
        patch: 14,
        image: 28,
        projection: Some(64),
    };
    assert_table(
        "clip_vision_h_hf.txt",
        clip_vision::tensors(&vision, "vision_model."),
    );
    let t5 = Umt5Sizes {
        dim: 64,
        ffn: 96,
        layers: 2,
        heads: 4,
        head_dim: 16,
        buckets: 32,
        vocab: 1000,
    };
    assert_table("umt5_gguf.txt", umt5::tensors(&t5));
    let i2v = WanDitSizes {
        dim: 256,
        ffn: 512,
        blocks: 2,
        in_channels: 36,
        out_channels: 16,
        text_dim: 64,
        freq_dim: 32,
        image_dim: Some(48),
    };
    assert_table("wan_dit_i2v_original.txt", wan_dit::tensors(&i2v));
    let t2v = WanDitSizes {
        in_channels: 16,
        image_dim: None,
        ..i2v
    };
    assert_table("wan_dit_t2v_original.txt", wan_dit::tensors(&t2v));
    let wan_vae = WanVaeSizes {
        base: 8,
        z: 4,
        mult: &[1, 2, 4, 4],
        res_blocks: 2,
        temporal_down: &[false, true, true],
    };
    assert_table("wan_vae_original.txt", wan_vae::tensors(&wan_vae));
}
