//! Architecture detection and name maps on real name lists.
//!
//! `tests/fixtures/names/*.txt` are dumped by `tools/reference/dump_names.py` from tiny-config
//! diffusers / transformers models (HF and diffusers layouts) and from the original layouts,
//! which that script checks against diffusers' own converters. Real-size lists are built here
//! from each model's structure (MODELS.md). Configs and summaries come from the models
//! (`pipeline::inspect` over each network's `describe`): the lists are written to safetensors
//! files of zeros (sparse on disk) and read back as weight stores.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use nijigen::formats::names::{
    detect, normalize, Architecture, Detection, Layout, LoraKind, LoraTarget, NameMap,
};
use nijigen::formats::{DType, MetaValue, TensorInfo};
use nijigen::ggml::TensorSet;
use nijigen::models::{
    ClipTextConfig, ClipVisionConfig, Umt5Config, UnetConfig, VaeConfig, WanDitConfig, WanVaeConfig,
};
use nijigen::pipeline::{inspect, Inspection};
use nijigen::runtime::WeightStore;

type List = Vec<(String, Vec<u64>)>;

fn fixture(name: &str) -> List {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/names")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (n, s) = line.split_once('\t').expect("name<TAB>shape");
        let shape = if s.is_empty() {
            Vec::new()
        } else {
            s.split(',').map(|d| d.parse().expect("dim")).collect()
        };
        out.push((n.to_string(), shape));
    }
    assert!(!out.is_empty(), "{name} is empty");
    out
}

fn tensors(list: &List, prefix: &str) -> Vec<TensorInfo> {
    list.iter()
        .map(|(n, s)| TensorInfo {
            name: format!("{prefix}{n}"),
            dtype: DType::F32,
            shape: s.clone(),
            shard: 0,
            offset: 0,
            size: 0,
        })
        .collect()
}

fn det(list: &List, prefix: &str) -> Detection {
    detect(&tensors(list, prefix), &[])
}

/// `list` (names under `prefix`) as a safetensors file of F32 zeros with `metadata`, sparse on
/// disk (the real-size lists would take gigabytes), opened as a weight store. The directory
/// must outlive the store.
fn store(
    list: &List,
    prefix: &str,
    metadata: &[(String, MetaValue)],
) -> (tempfile::TempDir, WeightStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zeros.safetensors");
    write_zeros(&path, list, prefix, metadata);
    let store = WeightStore::open_path(&path).expect("open");
    (dir, store)
}

/// Writes the file [`store`] opens.
fn write_zeros(path: &Path, list: &List, prefix: &str, metadata: &[(String, MetaValue)]) {
    let meta: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.into())))
        .collect();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0u64;
    for (n, shape) in list {
        let bytes = 4 * shape.iter().product::<u64>();
        let entry = serde_json::json!({
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + bytes],
        });
        header.insert(format!("{prefix}{n}"), entry);
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).expect("header");
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(&(text.len() as u64).to_le_bytes())
        .expect("write");
    f.write_all(text.as_bytes()).expect("write");
    f.set_len(8 + text.len() as u64 + offset).expect("set_len");
}

/// What `nijigen info` says of `list` under `prefix`.
fn described(list: &List, prefix: &str, metadata: &[(String, MetaValue)]) -> Inspection {
    let (_dir, s) = store(list, prefix, metadata);
    inspect(&s)
}

/// A model config read from the tensor table of `list` (one network, canonical names).
fn config<T>(list: &List, prefix: &str, read: impl Fn(&TensorSet<'_>) -> T) -> T {
    let (_dir, s) = store(list, prefix, &[]);
    let set = s.load_meta(|_| true).expect("meta");
    read(&set)
}

fn meta_arch(a: &str) -> Vec<(String, MetaValue)> {
    vec![(
        "general.architecture".to_string(),
        MetaValue::String(a.to_string()),
    )]
}

/// Every stored tensor maps to a tensor of `canonical` with a consistent shape, and every
/// canonical tensor (except `extra_canonical`) is reached.
fn check_map(
    d: &Detection,
    stored: &List,
    prefix: &str,
    canonical: &List,
    extra_canonical: &[&str],
) {
    let canon: BTreeMap<&str, &Vec<u64>> = canonical.iter().map(|(n, s)| (n.as_str(), s)).collect();
    let mut reached = BTreeSet::new();
    for (n, s) in stored {
        let full = format!("{prefix}{n}");
        let m = d
            .normalize(&full)
            .unwrap_or_else(|| panic!("{full}: not mapped"));
        let target = m.target();
        let want = canon
            .get(target)
            .unwrap_or_else(|| panic!("{full} -> {target}: not in the canonical list"));
        let got: Vec<u64> = match &m {
            NameMap::Rename(_) => s.clone(),
            NameMap::Transpose(_) => s.iter().rev().copied().collect(),
            NameMap::Reshape(_) => {
                let mut v = s.clone();
                v.resize(want.len(), 1);
                v
            }
            NameMap::SplitOf { parts, .. } => {
                let mut v = s.clone();
                v[0] *= *parts as u64;
                v
            }
        };
        assert_eq!(&&got, want, "{full} -> {target}: shape");
        reached.insert(target.to_string());
    }
    for (n, _) in canonical {
        if !extra_canonical.contains(&n.as_str()) {
            assert!(reached.contains(n), "{n}: no stored tensor maps to it");
        }
    }
}

/// An original-layout list normalises to itself (prefix stripped), every name mapped.
fn check_identity(d: &Detection, list: &List, prefix: &str) {
    for (n, _) in list {
        let full = format!("{prefix}{n}");
        assert_eq!(
            d.normalize(&full),
            Some(NameMap::Rename(n.clone())),
            "{full}"
        );
    }
    assert_eq!(d.unmapped, 0);
}

// ---------------------------------------------------------------------------------------------
// Fixtures: detection with and without prefixes, both layouts
// ---------------------------------------------------------------------------------------------

#[test]
fn wan_dit_fixtures() {
    for (file, arch, layout) in [
        (
            "wan_dit_i2v_original.txt",
            Architecture::WAN_DIT_I2V,
            Layout::Original,
        ),
        (
            "wan_dit_i2v_diffusers.txt",
            Architecture::WAN_DIT_I2V,
            Layout::Diffusers,
        ),
        (
            "wan_dit_t2v_original.txt",
            Architecture::WAN_DIT_T2V,
            Layout::Original,
        ),
        (
            "wan_dit_t2v_diffusers.txt",
            Architecture::WAN_DIT_T2V,
            Layout::Diffusers,
        ),
    ] {
        let list = fixture(file);
        for prefix in ["", "model.diffusion_model.", "diffusion_model."] {
            let d = det(&list, prefix);
            assert_eq!(d.architecture, arch, "{file} {prefix}");
            assert_eq!(d.layout, layout, "{file} {prefix}");
            assert_eq!(
                d.prefix.as_deref(),
                (!prefix.is_empty()).then_some(prefix),
                "{file}"
            );
            let c = config(&list, prefix, |s| {
                WanDitConfig::from_weights(s, "").unwrap()
            });
            assert_eq!((c.dim, c.heads, c.layers, c.ffn_dim), (256, 2, 2, 512));
            assert_eq!((c.out_channels, c.text_dim, c.freq_dim), (16, 64, 32));
            let summary = described(&list, prefix, &[]).summary;
            if arch == Architecture::WAN_DIT_I2V {
                assert_eq!(c.in_channels, 36);
                assert_eq!(c.image_dim, Some(48));
                assert!(c.is_i2v());
                assert_eq!(
                    summary,
                    "Wan2.1 I2V DiT, dim 256, 2 blocks, 2 heads, ffn 512"
                );
            } else {
                assert_eq!(c.in_channels, 16);
                assert_eq!(c.image_dim, None);
                assert!(!c.is_i2v());
                assert_eq!(summary, "Wan T2V DiT, dim 256, 2 blocks, 2 heads, ffn 512");
            }
            assert_eq!(d.unmapped, 0, "{file} {prefix}");
        }
    }
}

#[test]
fn wan_dit_diffusers_map_reaches_every_original_tensor() {
    for kind in ["i2v", "t2v"] {
        let diff = fixture(&format!("wan_dit_{kind}_diffusers.txt"));
        let orig = fixture(&format!("wan_dit_{kind}_original.txt"));
        for prefix in ["", "transformer."] {
            let d = det(&diff, prefix);
            check_map(&d, &diff, prefix, &orig, &[]);
        }
        check_identity(
            &det(&orig, "model.diffusion_model."),
            &orig,
            "model.diffusion_model.",
        );
    }
}

#[test]
fn sdxl_unet_fixtures_and_map() {
    let diff = fixture("sdxl_unet_diffusers.txt");
    let ldm = fixture("sdxl_unet_ldm.txt");
    for (list, layout, prefixes) in [
        (&ldm, Layout::Original, &["", "model.diffusion_model."][..]),
        (&diff, Layout::Diffusers, &["", "unet."][..]),
    ] {
        for prefix in prefixes {
            let d = det(list, prefix);
            assert_eq!(d.architecture, Architecture::SDXL_UNET, "{prefix}");
            assert_eq!(d.layout, layout);
            let c = config(list, prefix, |s| UnetConfig::from_weights(s, "").unwrap());
            assert_eq!(c.model_channels, 32);
            assert_eq!(c.channels, vec![32, 64, 128]);
            assert_eq!(c.transformer_depth, vec![0, 1, 2]);
            assert_eq!(c.mid_transformer_depth, 2);
            assert_eq!(c.res_blocks, 2);
            assert_eq!(c.context_dim, 64);
            assert_eq!(c.adm_in, Some(80));
            assert_eq!((c.in_channels, c.out_channels), (4, 4));
            assert_eq!(
                described(list, prefix, &[]).summary,
                "SDXL UNet, 32 channels, mult [1,2,4], transformer depth [0,1,2], context 64"
            );
            assert_eq!(d.unmapped, 0);
        }
    }
    // Every diffusers name maps to an ldm name of the ldm dump with the same shape, one to one.
    let d = det(&diff, "");
    assert_eq!(d.context.unet_layers_per_block, 2);
    assert_eq!(d.context.unet_up_attention, vec![true, true, false]);
    check_map(&d, &diff, "", &ldm, &[]);
    for (n, _) in &diff {
        assert!(d
            .normalize(n)
            .and_then(|m| m.rename().map(str::to_string))
            .is_some());
    }
    // The free function, with the default (SDXL) structure, agrees on this SDXL-shaped UNet.
    for (n, _) in &diff {
        assert_eq!(
            normalize(Architecture::SDXL_UNET, Layout::Diffusers, n),
            d.normalize(n),
            "{n}"
        );
    }
    check_identity(&det(&ldm, ""), &ldm, "");
}

#[test]
fn sdxl_vae_fixtures_and_map() {
    let diff = fixture("sdxl_vae_diffusers.txt");
    let ldm = fixture("sdxl_vae_ldm.txt");
    for (list, layout) in [(&ldm, Layout::Original), (&diff, Layout::Diffusers)] {
        for prefix in ["", "first_stage_model.", "vae."] {
            let d = det(list, prefix);
            assert_eq!(d.architecture, Architecture::SDXL_VAE, "{prefix}");
            assert_eq!(d.layout, layout);
            let c = config(list, prefix, |s| {
                VaeConfig::from_weights(s, "", 32).unwrap()
            });
            assert_eq!(c.channels, vec![32, 64, 64]);
            assert_eq!(c.latent_channels, 4);
            assert_eq!(c.res_blocks, 2);
            assert_eq!(c.image_channels, 3);
            assert!(c.has_encoder && c.has_decoder);
            assert_eq!(
                described(list, prefix, &[]).summary,
                "SDXL VAE, 32 channels, mult [1,2,2], 4 latent channels"
            );
        }
    }
    let d = det(&diff, "");
    assert_eq!(d.context.vae_levels, 3);
    check_map(&d, &diff, "", &ldm, &[]);
    check_identity(&det(&ldm, "first_stage_model."), &ldm, "first_stage_model.");
}

#[test]
fn clip_text_fixtures() {
    let l = fixture("clip_l_hf.txt");
    let l5 = fixture("clip_l_hf_v5.txt");
    for (list, prefixes) in [
        (
            &l,
            &[
                "",
                "conditioner.embedders.0.transformer.",
                "cond_stage_model.transformer.",
                "text_encoders.clip_l.transformer.",
                "text_encoder.",
            ][..],
        ),
        (&l5, &["", "clip_l."][..]),
    ] {
        for prefix in prefixes {
            let d = det(list, prefix);
            assert_eq!(d.architecture, Architecture::CLIP_L, "{prefix}");
            assert_eq!(d.layout, Layout::HfTransformers);
            assert_eq!(d.prefix.as_deref(), (!prefix.is_empty()).then_some(*prefix));
            let c = config(list, prefix, |s| {
                ClipTextConfig::from_weights(s, "").unwrap()
            });
            assert_eq!((c.width, c.layers, c.heads), (64, 2, 1));
            assert_eq!((c.vocab, c.max_positions), (1000, 77));
            assert_eq!(c.ffn_dim, 256);
            assert_eq!(c.projection_dim, None);
            assert_eq!(
                described(list, prefix, &[]).summary,
                "CLIP-L text encoder, width 64, 2 layers, 1 heads"
            );
            assert_eq!(d.unmapped, 0);
        }
    }
    // transformers >= 5 names normalise to the hub's `text_model.*` names.
    let d = det(&l5, "");
    check_map(&d, &l5, "", &l, &[]);

    let g_hf = fixture("clip_g_hf.txt");
    let g_oc = fixture("clip_g_openclip.txt");
    for (list, layout, prefixes) in [
        (
            &g_hf,
            Layout::HfTransformers,
            &["", "text_encoders.clip_g.transformer.", "text_encoder_2."][..],
        ),
        (
            &g_oc,
            Layout::Original,
            &["", "conditioner.embedders.1.model."][..],
        ),
    ] {
        for prefix in prefixes {
            let d = det(list, prefix);
            assert_eq!(d.architecture, Architecture::CLIP_G, "{prefix}");
            assert_eq!(d.layout, layout, "{prefix}");
            let c = config(list, prefix, |s| {
                ClipTextConfig::from_weights(s, "").unwrap()
            });
            assert_eq!((c.width, c.layers, c.heads), (128, 3, 2));
            assert_eq!(c.projection_dim, Some(96));
            assert_eq!(c.ffn_dim, 512);
            assert_eq!((c.vocab, c.max_positions), (1000, 77));
            assert_eq!(
                described(list, prefix, &[]).summary,
                "OpenCLIP bigG text encoder, width 128, 3 layers, 2 heads, projection 96"
            );
        }
    }
    // HF bigG -> open_clip: q/k/v are thirds of in_proj, text_projection is transposed; only
    // open_clip's logit_scale has no HF counterpart.
    let d = det(&g_hf, "text_encoders.clip_g.transformer.");
    check_map(
        &d,
        &g_hf,
        "text_encoders.clip_g.transformer.",
        &g_oc,
        &["logit_scale"],
    );
    check_identity(&det(&g_oc, ""), &g_oc, "");
}

#[test]
fn clip_vision_fixture() {
    let list = fixture("clip_vision_h_hf.txt");
    for prefix in ["", "clip_vision."] {
        let d = det(&list, prefix);
        assert_eq!(d.architecture, Architecture::CLIP_VISION_H);
        assert_eq!(d.layout, Layout::HfTransformers);
        let c = config(&list, prefix, |s| {
            ClipVisionConfig::from_weights(s, "").unwrap()
        });
        assert_eq!((c.width, c.layers, c.heads, c.head_dim), (160, 2, 2, 80));
        assert_eq!((c.patch_size, c.positions, c.image_size), (14, 5, 28));
        assert_eq!(c.ffn_dim, 320);
        assert_eq!(
            described(&list, prefix, &[]).summary,
            "CLIP-H vision encoder, width 160, 2 layers, 2 heads, patch 14, image 28"
        );
        check_identity(&d, &list, prefix);
    }
}

#[test]
fn umt5_fixtures_and_map() {
    let hf = fixture("umt5_hf.txt");
    let gguf = fixture("umt5_gguf.txt");
    for (list, layout, prefixes) in [
        (
            &hf,
            Layout::HfTransformers,
            &["", "text_encoders.umt5xxl.transformer."][..],
        ),
        (&gguf, Layout::LlamaCpp, &[""][..]),
    ] {
        for prefix in prefixes {
            let d = detect(&tensors(list, prefix), &meta_arch("t5encoder"));
            assert_eq!(d.architecture, Architecture::UMT5);
            assert_eq!(d.layout, layout);
            let c = config(list, prefix, |s| Umt5Config::from_weights(s, "").unwrap());
            assert_eq!((c.d_model, c.layers, c.heads), (64, 2, 4));
            assert_eq!((c.d_kv, c.ffn_dim, c.vocab), (16, 96, 1000));
            assert_eq!(c.buckets, 32);
            let info = described(list, prefix, &[]);
            assert_eq!(info.config["bias_per_layer"], true);
            assert_eq!(
                info.summary,
                "umT5 encoder, d_model 64, 2 layers, 4 heads, ffn 96, vocab 1000"
            );
            assert_eq!(d.hint.as_deref(), Some("t5encoder"));
        }
    }
    let d = det(&hf, "");
    check_map(&d, &hf, "", &gguf, &[]);
    check_identity(&det(&gguf, ""), &gguf, "");
}

#[test]
fn wan_vae_fixtures_and_map() {
    let diff = fixture("wan_vae_diffusers.txt");
    let orig = fixture("wan_vae_original.txt");
    for (list, layout) in [(&orig, Layout::Original), (&diff, Layout::Diffusers)] {
        for prefix in ["", "vae."] {
            let d = det(list, prefix);
            assert_eq!(d.architecture, Architecture::WAN_VAE, "{prefix}");
            assert_eq!(d.layout, layout);
            let c = config(list, prefix, |s| WanVaeConfig::from_weights(s, "").unwrap());
            assert_eq!((c.z_dim, c.out_channels), (4, 3));
            assert!(c.has_encoder);
            assert_eq!(c.temporal_factor(), 4);
            assert_eq!(c.spatial_factor(), 8);
            let info = described(list, prefix, &[]);
            assert_eq!(info.config["base_dim"], 8);
            assert_eq!(info.config["dim_mult"], serde_json::json!([1, 2, 4, 4]));
            assert_eq!(info.summary, "Wan VAE, base 8, z 4, mult [1,2,4,4]");
        }
    }
    let d = det(&diff, "");
    assert_eq!(d.context.wan_vae_res_blocks, 2);
    check_map(&d, &diff, "", &orig, &[]);
    check_identity(&det(&orig, ""), &orig, "");
}

#[test]
fn sdxl_checkpoint_from_fixtures() {
    let mut list: List = Vec::new();
    let parts = [
        ("model.diffusion_model.", fixture("sdxl_unet_ldm.txt")),
        (
            "conditioner.embedders.0.transformer.",
            fixture("clip_l_hf.txt"),
        ),
        (
            "conditioner.embedders.1.model.",
            fixture("clip_g_openclip.txt"),
        ),
        ("first_stage_model.", fixture("sdxl_vae_ldm.txt")),
    ];
    for (p, l) in &parts {
        list.extend(l.iter().map(|(n, s)| (format!("{p}{n}"), s.clone())));
    }
    // extras real checkpoints carry
    list.push((
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids".into(),
        vec![1, 77],
    ));
    list.push(("denoiser.sigmas".into(), vec![1000]));
    list.push(("v_pred".into(), vec![]));
    let d = det(&list, "");
    assert_eq!(d.architecture, Architecture::SDXL_CHECKPOINT);
    assert_eq!(d.layout, Layout::Original);
    assert_eq!(d.prefix, None);
    assert_eq!(d.components.len(), 4);
    assert!(d.v_prediction && !d.zero_terminal_snr);
    let info = described(&list, "", &[]);
    assert_eq!(
        info.summary,
        "SDXL checkpoint: SDXL UNet, 32 channels, mult [1,2,4], transformer depth [0,1,2], \
         context 64, v-prediction; CLIP-L text encoder, width 64, 2 layers, 1 heads; \
         OpenCLIP bigG text encoder, width 128, 3 layers, 2 heads, projection 96; \
         SDXL VAE, 32 channels, mult [1,2,2], 4 latent channels"
    );
    assert_eq!(info.config["clip_l"]["width"], 64);
    assert_eq!(info.config["clip_g"]["width"], 128);
    assert_eq!(info.config["vae"]["latent_channels"], 4);
    assert_eq!(info.components.len(), 4);
    for (p, l) in &parts {
        for (n, _) in l {
            let full = format!("{p}{n}");
            assert_eq!(d.normalize(&full), Some(NameMap::Rename(full.clone())));
        }
    }
    assert_eq!(d.unmapped, 3);

    // The same checkpoint with ComfyUI-style HF text encoders: bigG maps onto open_clip names.
    let mut list2: List = Vec::new();
    for (p, file) in [
        ("model.diffusion_model.", "sdxl_unet_ldm.txt"),
        ("text_encoders.clip_l.transformer.", "clip_l_hf.txt"),
        ("text_encoders.clip_g.transformer.", "clip_g_hf.txt"),
        ("first_stage_model.", "sdxl_vae_ldm.txt"),
    ] {
        list2.extend(
            fixture(file)
                .into_iter()
                .map(|(n, s)| (format!("{p}{n}"), s)),
        );
    }
    let d2 = det(&list2, "");
    assert_eq!(d2.architecture, Architecture::SDXL_CHECKPOINT);
    assert!(!d2.v_prediction);
    assert_eq!(
        described(&list2, "", &[]).summary,
        info.summary.replace(", v-prediction", "")
    );
    assert_eq!(
        d2.normalize(
            "text_encoders.clip_g.transformer.text_model.encoder.layers.1.self_attn.v_proj.weight"
        ),
        Some(NameMap::SplitOf {
            target: "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"
                .into(),
            index: 2,
            parts: 3
        })
    );
    assert_eq!(
        d2.normalize("text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"),
        Some(NameMap::Rename(
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into()
        ))
    );
    assert_eq!(d2.unmapped, 0);

    // A UNet alone under the checkpoint prefix is a UNet, not a checkpoint.
    let d3 = det(&fixture("sdxl_unet_ldm.txt"), "model.diffusion_model.");
    assert_eq!(d3.architecture, Architecture::SDXL_UNET);
}

/// file, layout, summary, modules, kinds, targets
type LoraCase = (
    &'static str,
    Layout,
    &'static str,
    usize,
    &'static [LoraKind],
    &'static [LoraTarget],
);

#[test]
fn lora_fixtures() {
    let cases: [LoraCase; 5] = [
        (
            "lora_sdxl_kohya.txt",
            Layout::Kohya,
            "LoRA (kohya, lora), 87 modules, rank 4, targets unet+te1+te2",
            87,
            &[LoraKind::Lora],
            &[
                LoraTarget::Unet,
                LoraTarget::TextEncoder1,
                LoraTarget::TextEncoder2,
            ],
        ),
        (
            "lora_sdxl_loha.txt",
            Layout::Kohya,
            "LoRA (kohya, loha), 2 modules, rank 2, targets unet",
            2,
            &[LoraKind::Loha],
            &[LoraTarget::Unet],
        ),
        (
            "lora_wan_peft.txt",
            Layout::Peft,
            "LoRA (peft, lora), 24 modules, rank 8, targets wan",
            24,
            &[LoraKind::Lora],
            &[LoraTarget::WanDit],
        ),
        (
            "lora_wan_comfy.txt",
            Layout::ComfyUi,
            "LoRA (comfyui, lora+diff), 47 modules, rank 8, targets wan",
            47,
            &[LoraKind::Lora, LoraKind::Diff],
            &[LoraTarget::WanDit],
        ),
        (
            "lora_wan_diffusers.txt",
            Layout::Peft,
            "LoRA (peft, lora), 3 modules, rank 4, targets wan",
            3,
            &[LoraKind::Lora],
            &[LoraTarget::WanDit],
        ),
    ];
    for (file, layout, summary, modules, kinds, targets) in cases {
        let list = fixture(file);
        let d = det(&list, "");
        assert_eq!(d.architecture, Architecture::LORA, "{file}");
        assert_eq!(d.layout, layout, "{file}");
        assert_eq!(d.summary, summary, "{file}");
        let Some(c) = &d.lora else {
            panic!("{file}: no LoRA config")
        };
        assert_eq!(c.modules, modules);
        assert_eq!(c.kinds, kinds);
        assert_eq!(c.targets, targets);
        assert_eq!(d.unmapped, 0, "{file}");
    }
    // PEFT (original names) and diffusers-named Wan LoRAs land on the same canonical modules.
    let peft = det(&fixture("lora_wan_peft.txt"), "");
    let diffusers = det(&fixture("lora_wan_diffusers.txt"), "");
    assert_eq!(
        diffusers.normalize("transformer.blocks.1.ffn.net.0.proj.lora_A.weight"),
        peft.normalize("diffusion_model.blocks.1.ffn.0.lora_A.weight")
    );
    // Every canonical Wan LoRA module is a module of the original DiT.
    let orig: BTreeSet<String> = fixture("wan_dit_i2v_original.txt")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for (n, _) in fixture("lora_wan_comfy.txt") {
        let c = peft.normalize(&n).expect("mapped");
        let c = c.target();
        let rest = c.strip_prefix("wan.").expect("wan target");
        let (module, part) = rest.rsplit_once('.').expect("part");
        let module = module
            .strip_suffix(".lora_down")
            .or(module.strip_suffix(".lora_up"))
            .unwrap_or(module);
        let base = match part {
            "diff_b" => format!("{module}.bias"),
            _ => format!("{module}.weight"),
        };
        assert!(orig.contains(&base), "{n} -> {c}: {base} not in the DiT");
    }
}

// ---------------------------------------------------------------------------------------------
// Real-size synthetic lists (structure from MODELS.md / the reference implementations)
// ---------------------------------------------------------------------------------------------

struct B(List);

impl B {
    fn new() -> B {
        B(Vec::new())
    }
    fn t(&mut self, name: impl Into<String>, shape: &[u64]) {
        self.0.push((name.into(), shape.to_vec()));
    }
    fn lin(&mut self, name: &str, out: u64, inp: u64) {
        self.t(format!("{name}.weight"), &[out, inp]);
        self.t(format!("{name}.bias"), &[out]);
    }
    fn norm(&mut self, name: &str, c: u64) {
        self.t(format!("{name}.weight"), &[c]);
        self.t(format!("{name}.bias"), &[c]);
    }
}

/// Original Wan DiT names; `gguf` drops singleton dims of `modulation` as city96 files do.
#[allow(clippy::too_many_arguments)]
fn wan_dit(
    dim: u64,
    ffn: u64,
    layers: u64,
    in_ch: u64,
    text: u64,
    freq: u64,
    clip: Option<u64>,
    gguf: bool,
) -> List {
    let mut b = B::new();
    b.t("patch_embedding.weight", &[dim, in_ch, 1, 2, 2]);
    b.t("patch_embedding.bias", &[dim]);
    b.lin("text_embedding.0", dim, text);
    b.lin("text_embedding.2", dim, dim);
    b.lin("time_embedding.0", dim, freq);
    b.lin("time_embedding.2", dim, dim);
    b.lin("time_projection.1", 6 * dim, dim);
    b.lin("head.head", 16 * 4, dim);
    let m: Vec<u64> = if gguf { vec![2, dim] } else { vec![1, 2, dim] };
    b.t("head.modulation", &m);
    for i in 0..layers {
        let p = format!("blocks.{i}.");
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                b.lin(&format!("{p}{a}.{l}"), dim, dim);
            }
            b.t(format!("{p}{a}.norm_q.weight"), &[dim]);
            b.t(format!("{p}{a}.norm_k.weight"), &[dim]);
        }
        if clip.is_some() {
            b.lin(&format!("{p}cross_attn.k_img"), dim, dim);
            b.lin(&format!("{p}cross_attn.v_img"), dim, dim);
            b.t(format!("{p}cross_attn.norm_k_img.weight"), &[dim]);
        }
        b.norm(&format!("{p}norm3"), dim);
        b.lin(&format!("{p}ffn.0"), ffn, dim);
        b.lin(&format!("{p}ffn.2"), dim, ffn);
        let m: Vec<u64> = if gguf { vec![6, dim] } else { vec![1, 6, dim] };
        b.t(format!("{p}modulation"), &m);
    }
    if let Some(c) = clip {
        b.norm("img_emb.proj.0", c);
        b.lin("img_emb.proj.1", c, c);
        b.lin("img_emb.proj.3", dim, c);
        b.norm("img_emb.proj.4", dim);
    }
    b.0
}

fn unet_resnet(b: &mut B, p: &str, cin: u64, cout: u64, temb: u64) {
    b.norm(&format!("{p}in_layers.0"), cin);
    b.t(format!("{p}in_layers.2.weight"), &[cout, cin, 3, 3]);
    b.t(format!("{p}in_layers.2.bias"), &[cout]);
    b.lin(&format!("{p}emb_layers.1"), cout, temb);
    b.norm(&format!("{p}out_layers.0"), cout);
    b.t(format!("{p}out_layers.3.weight"), &[cout, cout, 3, 3]);
    b.t(format!("{p}out_layers.3.bias"), &[cout]);
    if cin != cout {
        b.t(format!("{p}skip_connection.weight"), &[cout, cin, 1, 1]);
        b.t(format!("{p}skip_connection.bias"), &[cout]);
    }
}

fn unet_transformer(b: &mut B, p: &str, c: u64, depth: usize, ctx: u64) {
    b.norm(&format!("{p}norm"), c);
    b.lin(&format!("{p}proj_in"), c, c);
    for d in 0..depth {
        let q = format!("{p}transformer_blocks.{d}.");
        b.t(format!("{q}attn1.to_q.weight"), &[c, c]);
        b.t(format!("{q}attn1.to_k.weight"), &[c, c]);
        b.t(format!("{q}attn1.to_v.weight"), &[c, c]);
        b.lin(&format!("{q}attn1.to_out.0"), c, c);
        b.t(format!("{q}attn2.to_q.weight"), &[c, c]);
        b.t(format!("{q}attn2.to_k.weight"), &[c, ctx]);
        b.t(format!("{q}attn2.to_v.weight"), &[c, ctx]);
        b.lin(&format!("{q}attn2.to_out.0"), c, c);
        b.lin(&format!("{q}ff.net.0.proj"), 8 * c, c);
        b.lin(&format!("{q}ff.net.2"), c, 4 * c);
        for n in ["norm1", "norm2", "norm3"] {
            b.norm(&format!("{q}{n}"), c);
        }
    }
    b.lin(&format!("{p}proj_out"), c, c);
}

/// ldm SDXL UNet (openaimodel.UNetModel) names and shapes.
fn sdxl_unet(mc: u64, mult: &[u64], depth: &[usize], res: usize, ctx: u64, adm: u64) -> List {
    let mut b = B::new();
    let temb = 4 * mc;
    b.lin("time_embed.0", temb, mc);
    b.lin("time_embed.2", temb, temb);
    b.lin("label_emb.0.0", temb, adm);
    b.lin("label_emb.0.2", temb, temb);
    b.t("input_blocks.0.0.weight", &[mc, 4, 3, 3]);
    b.t("input_blocks.0.0.bias", &[mc]);
    let mut skips = vec![mc];
    let mut ch = mc;
    let mut k = 1;
    for (lvl, m) in mult.iter().enumerate() {
        let out = mc * m;
        for _ in 0..res {
            unet_resnet(&mut b, &format!("input_blocks.{k}.0."), ch, out, temb);
            if depth[lvl] > 0 {
                unet_transformer(
                    &mut b,
                    &format!("input_blocks.{k}.1."),
                    out,
                    depth[lvl],
                    ctx,
                );
            }
            ch = out;
            skips.push(ch);
            k += 1;
        }
        if lvl + 1 != mult.len() {
            b.t(format!("input_blocks.{k}.0.op.weight"), &[ch, ch, 3, 3]);
            b.t(format!("input_blocks.{k}.0.op.bias"), &[ch]);
            skips.push(ch);
            k += 1;
        }
    }
    let mid_depth = *depth.last().unwrap_or(&0);
    unet_resnet(&mut b, "middle_block.0.", ch, ch, temb);
    unet_transformer(&mut b, "middle_block.1.", ch, mid_depth, ctx);
    unet_resnet(&mut b, "middle_block.2.", ch, ch, temb);
    let mut n = 0;
    for (lvl, m) in mult.iter().enumerate().rev() {
        let out = mc * m;
        for j in 0..=res {
            let skip = skips.pop().unwrap_or(mc);
            unet_resnet(
                &mut b,
                &format!("output_blocks.{n}.0."),
                ch + skip,
                out,
                temb,
            );
            ch = out;
            let mut sub = 1;
            if depth[lvl] > 0 {
                unet_transformer(
                    &mut b,
                    &format!("output_blocks.{n}.1."),
                    out,
                    depth[lvl],
                    ctx,
                );
                sub = 2;
            }
            if lvl > 0 && j == res {
                b.t(
                    format!("output_blocks.{n}.{sub}.conv.weight"),
                    &[ch, ch, 3, 3],
                );
                b.t(format!("output_blocks.{n}.{sub}.conv.bias"), &[ch]);
            }
            n += 1;
        }
    }
    b.norm("out.0", mc);
    b.t("out.2.weight", &[4, mc, 3, 3]);
    b.t("out.2.bias", &[4]);
    b.0
}

fn vae_resnet(b: &mut B, p: &str, cin: u64, cout: u64) {
    b.norm(&format!("{p}norm1"), cin);
    b.t(format!("{p}conv1.weight"), &[cout, cin, 3, 3]);
    b.t(format!("{p}conv1.bias"), &[cout]);
    b.norm(&format!("{p}norm2"), cout);
    b.t(format!("{p}conv2.weight"), &[cout, cout, 3, 3]);
    b.t(format!("{p}conv2.bias"), &[cout]);
    if cin != cout {
        b.t(format!("{p}nin_shortcut.weight"), &[cout, cin, 1, 1]);
        b.t(format!("{p}nin_shortcut.bias"), &[cout]);
    }
}

/// ldm AutoencoderKL names and shapes.
fn sdxl_vae(ch: u64, mult: &[u64], res: usize, z: u64) -> List {
    let mut b = B::new();
    b.t("encoder.conv_in.weight", &[ch, 3, 3, 3]);
    b.t("encoder.conv_in.bias", &[ch]);
    let mut c = ch;
    for (i, m) in mult.iter().enumerate() {
        for j in 0..res {
            vae_resnet(&mut b, &format!("encoder.down.{i}.block.{j}."), c, ch * m);
            c = ch * m;
        }
        if i + 1 != mult.len() {
            b.t(
                format!("encoder.down.{i}.downsample.conv.weight"),
                &[c, c, 3, 3],
            );
            b.t(format!("encoder.down.{i}.downsample.conv.bias"), &[c]);
        }
    }
    for side in ["encoder", "decoder"] {
        vae_resnet(&mut b, &format!("{side}.mid.block_1."), c, c);
        b.norm(&format!("{side}.mid.attn_1.norm"), c);
        for q in ["q", "k", "v", "proj_out"] {
            b.t(format!("{side}.mid.attn_1.{q}.weight"), &[c, c, 1, 1]);
            b.t(format!("{side}.mid.attn_1.{q}.bias"), &[c]);
        }
        vae_resnet(&mut b, &format!("{side}.mid.block_2."), c, c);
    }
    b.norm("encoder.norm_out", c);
    b.t("encoder.conv_out.weight", &[2 * z, c, 3, 3]);
    b.t("encoder.conv_out.bias", &[2 * z]);
    b.t("quant_conv.weight", &[2 * z, 2 * z, 1, 1]);
    b.t("quant_conv.bias", &[2 * z]);
    b.t("post_quant_conv.weight", &[z, z, 1, 1]);
    b.t("post_quant_conv.bias", &[z]);
    b.t("decoder.conv_in.weight", &[c, z, 3, 3]);
    b.t("decoder.conv_in.bias", &[c]);
    for (i, m) in mult.iter().enumerate().rev() {
        for j in 0..=res {
            vae_resnet(&mut b, &format!("decoder.up.{i}.block.{j}."), c, ch * m);
            c = ch * m;
        }
        if i > 0 {
            b.t(
                format!("decoder.up.{i}.upsample.conv.weight"),
                &[c, c, 3, 3],
            );
            b.t(format!("decoder.up.{i}.upsample.conv.bias"), &[c]);
        }
    }
    b.norm("decoder.norm_out", c);
    b.t("decoder.conv_out.weight", &[3, c, 3, 3]);
    b.t("decoder.conv_out.bias", &[3]);
    b.0
}

fn clip_text_hf(width: u64, layers: u64, vocab: u64, ffn: u64, proj: Option<u64>) -> List {
    let mut b = B::new();
    b.t(
        "text_model.embeddings.token_embedding.weight",
        &[vocab, width],
    );
    b.t(
        "text_model.embeddings.position_embedding.weight",
        &[77, width],
    );
    for i in 0..layers {
        let p = format!("text_model.encoder.layers.{i}.");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            b.lin(&format!("{p}self_attn.{q}"), width, width);
        }
        b.norm(&format!("{p}layer_norm1"), width);
        b.norm(&format!("{p}layer_norm2"), width);
        b.lin(&format!("{p}mlp.fc1"), ffn, width);
        b.lin(&format!("{p}mlp.fc2"), width, ffn);
    }
    b.norm("text_model.final_layer_norm", width);
    if let Some(p) = proj {
        b.t("text_projection.weight", &[p, width]);
    }
    b.0
}

fn open_clip_text(width: u64, layers: u64, vocab: u64, proj: u64) -> List {
    let mut b = B::new();
    b.t("token_embedding.weight", &[vocab, width]);
    b.t("positional_embedding", &[77, width]);
    for i in 0..layers {
        let p = format!("transformer.resblocks.{i}.");
        b.t(format!("{p}attn.in_proj_weight"), &[3 * width, width]);
        b.t(format!("{p}attn.in_proj_bias"), &[3 * width]);
        b.lin(&format!("{p}attn.out_proj"), width, width);
        b.norm(&format!("{p}ln_1"), width);
        b.norm(&format!("{p}ln_2"), width);
        b.lin(&format!("{p}mlp.c_fc"), 4 * width, width);
        b.lin(&format!("{p}mlp.c_proj"), width, 4 * width);
    }
    b.norm("ln_final", width);
    b.t("text_projection", &[width, proj]);
    b.t("logit_scale", &[]);
    b.0
}

fn clip_vision_hf(width: u64, layers: u64, patch: u64, image: u64, proj: u64) -> List {
    let mut b = B::new();
    let side = image / patch;
    b.t("vision_model.embeddings.class_embedding", &[width]);
    b.t(
        "vision_model.embeddings.patch_embedding.weight",
        &[width, 3, patch, patch],
    );
    b.t(
        "vision_model.embeddings.position_embedding.weight",
        &[side * side + 1, width],
    );
    b.norm("vision_model.pre_layrnorm", width);
    for i in 0..layers {
        let p = format!("vision_model.encoder.layers.{i}.");
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            b.lin(&format!("{p}self_attn.{q}"), width, width);
        }
        b.norm(&format!("{p}layer_norm1"), width);
        b.norm(&format!("{p}layer_norm2"), width);
        b.lin(&format!("{p}mlp.fc1"), 4 * width, width);
        b.lin(&format!("{p}mlp.fc2"), width, 4 * width);
    }
    b.norm("vision_model.post_layernorm", width);
    b.t("visual_projection.weight", &[proj, width]);
    b.0
}

fn umt5_gguf(d: u64, layers: u64, heads: u64, ffn: u64, vocab: u64, buckets: u64) -> List {
    let mut b = B::new();
    b.t("token_embd.weight", &[vocab, d]);
    for i in 0..layers {
        let p = format!("enc.blk.{i}.");
        for q in ["attn_q", "attn_k", "attn_v", "attn_o"] {
            b.t(format!("{p}{q}.weight"), &[d, d]);
        }
        b.t(format!("{p}attn_rel_b.weight"), &[buckets, heads]);
        b.t(format!("{p}attn_norm.weight"), &[d]);
        b.t(format!("{p}ffn_gate.weight"), &[ffn, d]);
        b.t(format!("{p}ffn_up.weight"), &[ffn, d]);
        b.t(format!("{p}ffn_down.weight"), &[d, ffn]);
        b.t(format!("{p}ffn_norm.weight"), &[d]);
    }
    b.t("enc.output_norm.weight", &[d]);
    b.0
}

/// Original Wan VAE 2.1 names (Wan's vae.py structure).
fn wan_vae(dim: u64, z: u64, mult: &[u64], res: usize, tdown: &[bool]) -> List {
    let mut b = B::new();
    let rms = |b: &mut B, n: String, c: u64, images: bool| {
        let s: Vec<u64> = if images {
            vec![c, 1, 1]
        } else {
            vec![c, 1, 1, 1]
        };
        b.t(format!("{n}.gamma"), &s);
    };
    let conv3 = |b: &mut B, n: String, cin: u64, cout: u64, k: [u64; 3]| {
        b.t(format!("{n}.weight"), &[cout, cin, k[0], k[1], k[2]]);
        b.t(format!("{n}.bias"), &[cout]);
    };
    let resblock = |b: &mut B, n: &str, cin: u64, cout: u64| {
        rms(b, format!("{n}.residual.0"), cin, false);
        conv3(b, format!("{n}.residual.2"), cin, cout, [3, 3, 3]);
        rms(b, format!("{n}.residual.3"), cout, false);
        conv3(b, format!("{n}.residual.6"), cout, cout, [3, 3, 3]);
        if cin != cout {
            conv3(b, format!("{n}.shortcut"), cin, cout, [1, 1, 1]);
        }
    };
    let attn = |b: &mut B, n: &str, c: u64| {
        rms(b, format!("{n}.norm"), c, true);
        b.t(format!("{n}.to_qkv.weight"), &[3 * c, c, 1, 1]);
        b.t(format!("{n}.to_qkv.bias"), &[3 * c]);
        b.t(format!("{n}.proj.weight"), &[c, c, 1, 1]);
        b.t(format!("{n}.proj.bias"), &[c]);
    };
    let dims: Vec<u64> = std::iter::once(1)
        .chain(mult.iter().copied())
        .map(|m| dim * m)
        .collect();
    conv3(&mut b, "encoder.conv1".into(), 3, dims[0], [3, 3, 3]);
    let mut idx = 0;
    let mut c = dims[0];
    for i in 0..mult.len() {
        let out = dims[i + 1];
        for _ in 0..res {
            resblock(&mut b, &format!("encoder.downsamples.{idx}"), c, out);
            c = out;
            idx += 1;
        }
        if i + 1 != mult.len() {
            b.t(
                format!("encoder.downsamples.{idx}.resample.1.weight"),
                &[c, c, 3, 3],
            );
            b.t(format!("encoder.downsamples.{idx}.resample.1.bias"), &[c]);
            if tdown[i] {
                conv3(
                    &mut b,
                    format!("encoder.downsamples.{idx}.time_conv"),
                    c,
                    c,
                    [3, 1, 1],
                );
            }
            idx += 1;
        }
    }
    resblock(&mut b, "encoder.middle.0", c, c);
    attn(&mut b, "encoder.middle.1", c);
    resblock(&mut b, "encoder.middle.2", c, c);
    rms(&mut b, "encoder.head.0".into(), c, false);
    conv3(&mut b, "encoder.head.2".into(), c, 2 * z, [3, 3, 3]);
    conv3(&mut b, "conv1".into(), 2 * z, 2 * z, [1, 1, 1]);
    conv3(&mut b, "conv2".into(), z, z, [1, 1, 1]);
    conv3(&mut b, "decoder.conv1".into(), z, c, [3, 3, 3]);
    resblock(&mut b, "decoder.middle.0", c, c);
    attn(&mut b, "decoder.middle.1", c);
    resblock(&mut b, "decoder.middle.2", c, c);
    let dec: Vec<u64> = std::iter::once(*mult.last().unwrap_or(&1))
        .chain(mult.iter().rev().copied())
        .map(|m| dim * m)
        .collect();
    let mut idx = 0;
    for i in 0..mult.len() {
        let mut cin = if i == 0 { dec[0] } else { dec[i] / 2 };
        let out = dec[i + 1];
        for _ in 0..=res {
            resblock(&mut b, &format!("decoder.upsamples.{idx}"), cin, out);
            cin = out;
            idx += 1;
        }
        if i + 1 != mult.len() {
            b.t(
                format!("decoder.upsamples.{idx}.resample.1.weight"),
                &[out / 2, out, 3, 3],
            );
            b.t(
                format!("decoder.upsamples.{idx}.resample.1.bias"),
                &[out / 2],
            );
            if tdown[tdown.len() - 1 - i] {
                conv3(
                    &mut b,
                    format!("decoder.upsamples.{idx}.time_conv"),
                    out,
                    2 * out,
                    [3, 1, 1],
                );
            }
            idx += 1;
        }
    }
    rms(&mut b, "decoder.head.0".into(), dim, false);
    conv3(&mut b, "decoder.head.2".into(), dim, 3, [3, 3, 3]);
    b.0
}

fn summary_of(list: &List, meta: &[(String, MetaValue)], prefix: &str) -> Detection {
    detect(&tensors(list, prefix), meta)
}

#[test]
fn wan_i2v_14b_real_size() {
    // MODELS.md: dim 5120, ffn 13824, 40 heads x 128, 40 layers, in 36, out 16, text 4096,
    // freq 256, CLIP 1280, patch (1,2,2).
    for (gguf, prefix) in [(true, ""), (false, "model.diffusion_model.")] {
        let list = wan_dit(5120, 13824, 40, 36, 4096, 256, Some(1280), gguf);
        let d = summary_of(&list, &meta_arch("wan"), prefix);
        assert_eq!(d.architecture, Architecture::WAN_DIT_I2V);
        let info = described(&list, prefix, &meta_arch("wan"));
        assert_eq!(
            info.summary,
            "Wan2.1 I2V DiT, dim 5120, 40 blocks, 40 heads, ffn 13824"
        );
        let c = config(&list, prefix, |s| {
            WanDitConfig::from_weights(s, "").unwrap()
        });
        assert_eq!((c.dim, c.heads, c.layers, c.ffn_dim), (5120, 40, 40, 13824));
        assert_eq!((c.in_channels, c.out_channels), (36, 16));
        assert_eq!((c.text_dim, c.freq_dim), (4096, 256));
        assert_eq!(c.image_dim, Some(1280));
        assert_eq!(info.config["first_last_frame"], false);
        assert_eq!(d.unmapped, 0);
        assert_eq!(
            d.normalize(&format!("{prefix}blocks.39.cross_attn.k_img.weight")),
            Some(NameMap::Rename("blocks.39.cross_attn.k_img.weight".into()))
        );
    }
    // Wan2.1 T2V 1.3B: dim 1536, 30 layers, 12 heads, ffn 8960.
    let list = wan_dit(1536, 8960, 30, 16, 4096, 256, None, true);
    let d = summary_of(&list, &meta_arch("wan"), "");
    assert_eq!(d.architecture, Architecture::WAN_DIT_T2V);
    assert_eq!(
        described(&list, "", &meta_arch("wan")).summary,
        "Wan T2V DiT, dim 1536, 30 blocks, 12 heads, ffn 8960"
    );
    // Wan2.2 A14B I2V expert: 36 input channels but no CLIP branch.
    let list = wan_dit(5120, 13824, 40, 36, 4096, 256, None, true);
    let d = summary_of(&list, &[], "");
    assert_eq!(d.architecture, Architecture::WAN_DIT_I2V);
    assert_eq!(
        described(&list, "", &[]).summary,
        "Wan2.2 I2V-A14B expert, dim 5120, 40 blocks, 40 heads, ffn 13824"
    );
}

#[test]
fn sdxl_real_size() {
    // MODELS.md: model_channels 320, mult [1,2,4], depth [0,2,10], head dim 64, context 2048,
    // adm 2816.
    let unet = sdxl_unet(320, &[1, 2, 4], &[0, 2, 10], 2, 2048, 2816);
    let d = summary_of(&unet, &meta_arch("sdxl"), "");
    assert_eq!(d.architecture, Architecture::SDXL_UNET);
    assert!(!d.v_prediction);
    assert_eq!(
        described(&unet, "", &meta_arch("sdxl")).summary,
        "SDXL UNet, 320 channels, mult [1,2,4], transformer depth [0,2,10], context 2048"
    );
    let c = config(&unet, "", |s| UnetConfig::from_weights(s, "").unwrap());
    assert_eq!(c.adm_in, Some(2816));
    assert_eq!(c.context_dim, 2048);
    assert_eq!(c.channels, vec![320, 640, 1280]);
    assert_eq!(c.mid_transformer_depth, 10);
    assert_eq!(c.time_embed_dim, 1280);
    assert_eq!((c.in_channels, c.out_channels), (4, 4));
    assert_eq!(c.res_blocks, 2);

    let clip_l = clip_text_hf(768, 12, 49408, 3072, None);
    let d = summary_of(&clip_l, &[], "");
    assert_eq!(d.architecture, Architecture::CLIP_L);
    assert_eq!(
        described(&clip_l, "", &[]).summary,
        "CLIP-L text encoder, width 768, 12 layers, 12 heads"
    );
    // ComfyUI's clip_l may carry a text_projection; the width still says CLIP-L.
    let d = summary_of(&clip_text_hf(768, 12, 49408, 3072, Some(768)), &[], "");
    assert_eq!(d.architecture, Architecture::CLIP_L);

    let big_g = open_clip_text(1280, 32, 49408, 1280);
    let d = summary_of(&big_g, &[], "conditioner.embedders.1.model.");
    assert_eq!(d.architecture, Architecture::CLIP_G);
    assert_eq!(
        described(&big_g, "conditioner.embedders.1.model.", &[]).summary,
        "OpenCLIP bigG text encoder, width 1280, 32 layers, 20 heads, projection 1280"
    );
    // HF bigG (ComfyUI clip_g.safetensors) without a telling prefix: the width decides.
    let g_hf = clip_text_hf(1280, 32, 49408, 5120, Some(1280));
    let d = summary_of(&g_hf, &[], "");
    assert_eq!(d.architecture, Architecture::CLIP_G);
    assert_eq!(
        described(&g_hf, "", &[]).summary,
        "OpenCLIP bigG text encoder, width 1280, 32 layers, 20 heads, projection 1280"
    );

    let vae = sdxl_vae(128, &[1, 2, 4, 4], 2, 4);
    let d = summary_of(&vae, &[], "");
    assert_eq!(d.architecture, Architecture::SDXL_VAE);
    assert_eq!(
        described(&vae, "", &[]).summary,
        "SDXL VAE, 128 channels, mult [1,2,4,4], 4 latent channels"
    );

    let mut ckpt: List = Vec::new();
    for (p, l) in [
        ("model.diffusion_model.", &unet),
        ("conditioner.embedders.0.transformer.", &clip_l),
        ("conditioner.embedders.1.model.", &big_g),
        ("first_stage_model.", &vae),
    ] {
        ckpt.extend(l.iter().map(|(n, s)| (format!("{p}{n}"), s.clone())));
    }
    let d = summary_of(&ckpt, &[], "");
    assert_eq!(d.architecture, Architecture::SDXL_CHECKPOINT);
    let info = described(&ckpt, "", &[]);
    assert_eq!(
        info.summary,
        "SDXL checkpoint: SDXL UNet, 320 channels, mult [1,2,4], transformer depth [0,2,10], \
         context 2048; CLIP-L text encoder, width 768, 12 layers, 12 heads; OpenCLIP bigG text \
         encoder, width 1280, 32 layers, 20 heads, projection 1280; SDXL VAE, 128 channels, \
         mult [1,2,4,4], 4 latent channels"
    );
    assert_eq!(d.unmapped, 0);
    // serialisable for `nijigen info --json`
    let json = serde_json::to_value(&d).expect("json");
    assert_eq!(json["architecture"], "sdxl-checkpoint");
    assert_eq!(info.config["kind"], "sdxl_checkpoint");
    assert_eq!(info.config["unet"]["context_dim"], 2048);
}

#[test]
fn v_prediction_markers() {
    // ComfyUI (supported_models.py SDXL.model_type): `ztsnr` counts only next to `v_pred`.
    let unet = fixture("sdxl_unet_ldm.txt");
    for (keys, v, z, tail) in [
        (
            &["v_pred", "ztsnr"][..],
            true,
            true,
            ", v-prediction, zero terminal SNR",
        ),
        (&["v_pred"][..], true, false, ", v-prediction"),
        (&["ztsnr"][..], false, false, ", context 64"),
    ] {
        let mut list = unet.clone();
        list.extend(keys.iter().map(|k| (k.to_string(), Vec::new())));
        let d = det(&list, "");
        assert_eq!((d.v_prediction, d.zero_terminal_snr), (v, z), "{keys:?}");
        let summary = described(&list, "", &[]).summary;
        assert!(summary.ends_with(tail), "{keys:?}: {summary}");
    }
}

#[test]
fn wan_side_encoders_real_size() {
    // umT5-XXL: vocab 256384, d 4096, 24 layers, 64 heads, FFN 10240, 32 buckets.
    let t5 = umt5_gguf(4096, 24, 64, 10240, 256384, 32);
    let d = summary_of(&t5, &meta_arch("t5encoder"), "");
    assert_eq!(d.architecture, Architecture::UMT5);
    assert_eq!(d.layout, Layout::LlamaCpp);
    let info = described(&t5, "", &meta_arch("t5encoder"));
    assert_eq!(
        info.summary,
        "umT5 encoder, d_model 4096, 24 layers, 64 heads, ffn 10240, vocab 256384"
    );
    assert_eq!(info.config["bias_per_layer"], true);
    let c = config(&t5, "", |s| Umt5Config::from_weights(s, "").unwrap());
    assert_eq!((c.d_kv, c.buckets), (64, 32));

    // CLIP vision H/14: 224 px, 32 layers, width 1280, 16 heads (head dim 80).
    let vision = clip_vision_hf(1280, 32, 14, 224, 1024);
    let d = summary_of(&vision, &[], "");
    assert_eq!(d.architecture, Architecture::CLIP_VISION_H);
    assert_eq!(
        described(&vision, "", &[]).summary,
        "CLIP-H vision encoder, width 1280, 32 layers, 16 heads, patch 14, image 224"
    );
    let c = config(&vision, "", |s| {
        ClipVisionConfig::from_weights(s, "").unwrap()
    });
    assert_eq!((c.positions, c.head_dim), (257, 80));

    // Wan VAE 2.1: base 96, z 16, dim_mult [1,2,4,4], 2 res blocks, temporal down in the last two.
    let vae = wan_vae(96, 16, &[1, 2, 4, 4], 2, &[false, true, true]);
    let d = summary_of(&vae, &[], "");
    assert_eq!(d.architecture, Architecture::WAN_VAE);
    assert_eq!(
        described(&vae, "", &[]).summary,
        "Wan VAE, base 96, z 16, mult [1,2,4,4]"
    );
    let c = config(&vae, "", |s| WanVaeConfig::from_weights(s, "").unwrap());
    assert_eq!((c.z_dim, c.out_channels), (16, 3));
    assert_eq!((c.temporal_factor(), c.spatial_factor()), (4, 8));
}

#[test]
fn hint_disagreement_is_reported() {
    let t5 = umt5_gguf(64, 2, 4, 96, 1000, 32);
    let d = summary_of(&t5, &meta_arch("wan"), "");
    assert_eq!(d.architecture, Architecture::UMT5);
    assert!(d.hint_disagrees);
    assert_eq!(
        described(&t5, "", &meta_arch("wan")).summary,
        "umT5 encoder, d_model 64, 2 layers, 4 heads, ffn 96, vocab 1000 \
         (general.architecture says \"wan\")"
    );
}

#[test]
fn partial_and_unknown_files() {
    // Wan blocks without embeddings or head: still a Wan DiT, whose config cannot be read; the
    // description says so instead of failing.
    let list: List = wan_dit(256, 512, 2, 36, 64, 32, None, false)
        .into_iter()
        .filter(|(n, _)| n.starts_with("blocks."))
        .collect();
    let d = summary_of(&list, &[], "");
    assert_eq!(d.architecture, Architecture::WAN_DIT_T2V);
    let info = described(&list, "", &[]);
    assert!(
        info.summary.starts_with(&format!(
            "{} (cannot read its config: ",
            Architecture::WAN_DIT_T2V.description()
        )),
        "{}",
        info.summary
    );
    assert_eq!(info.config, serde_json::Value::Null);
    assert!(info.components[0].error.is_some());

    // A UNet without label_emb (SD 1.x style) is flagged in the summary.
    let list: List = sdxl_unet(64, &[1, 2], &[1, 1], 2, 64, 80)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("label_emb."))
        .collect();
    let d = summary_of(&list, &[], "");
    assert_eq!(d.architecture, Architecture::SDXL_UNET);
    let summary = described(&list, "", &[]).summary;
    assert!(
        summary.ends_with("no label_emb (not an SDXL UNet?)"),
        "{summary}"
    );

    // Something else entirely.
    let list: List = vec![
        ("model.embed_tokens.weight".into(), vec![32000, 4096]),
        (
            "model.layers.0.mlp.gate_proj.weight".into(),
            vec![11008, 4096],
        ),
    ];
    let d = summary_of(&list, &meta_arch("llama"), "");
    assert_eq!(d.architecture, Architecture::UNKNOWN);
    assert_eq!(d.lora, None);
    let info = described(&list, "", &meta_arch("llama"));
    assert_eq!(info.summary, d.summary);
    assert_eq!(info.config, serde_json::Value::Null);

    let d = detect(&[], &[]);
    assert_eq!(d.architecture, Architecture::UNKNOWN);
    assert_eq!(d.summary, "no tensors");
}

#[test]
fn several_components_in_one_file() {
    // A ComfyUI-style all-in-one file: DiT at the top level, VAE under `vae.`.
    let dit = fixture("wan_dit_i2v_original.txt");
    let vae = fixture("wan_vae_original.txt");
    let mut list = dit.clone();
    list.extend(vae.iter().map(|(n, s)| (format!("vae.{n}"), s.clone())));
    let d = det(&list, "");
    assert_eq!(d.architecture, Architecture::WAN_DIT_I2V);
    assert_eq!(d.prefix, None);
    assert_eq!(d.components.len(), 2);
    assert_eq!(d.components[1].architecture, Architecture::WAN_VAE);
    assert_eq!(d.components[1].prefix, "vae.");
    assert_eq!(d.components[1].tensors, vae.len());
    // the VAE's tensors are not renamed into the DiT
    assert_eq!(d.normalize("vae.encoder.conv1.weight"), None);
    assert_eq!(d.unmapped, vae.len());
    let info = described(&list, "", &[]);
    assert_eq!(
        info.summary,
        "Wan2.1 I2V DiT, dim 256, 2 blocks, 2 heads, ffn 512"
    );
    assert_eq!(info.components.len(), 1);
}

/// The image-to-video checks compare the model configs: the DiT's text width with umT5's, its
/// input channels with the VAE's latent (2 x z + 4).
#[test]
fn i2v_checks_compare_the_model_configs() {
    use nijigen::pipeline::i2v::check_video_files;
    use nijigen::pipeline::video::WanFiles;
    use nijigen::pipeline::PipelineError;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, list: &List| {
        let p = dir.path().join(name);
        write_zeros(&p, list, "", &[]);
        p
    };
    // DiT: text 64, in 36 (= 2 x 16 + 4).
    let dit = file("dit.safetensors", &fixture("wan_dit_i2v_original.txt"));
    let t5 = file("t5.safetensors", &fixture("umt5_gguf.txt"));
    let wide_t5 = file("t5_4096.safetensors", &umt5_gguf(4096, 2, 4, 96, 1000, 32));
    let clip = file("clip.safetensors", &fixture("clip_vision_h_hf.txt"));
    let vae = file(
        "vae.safetensors",
        &wan_vae(8, 16, &[1, 2, 4, 4], 2, &[false, true, true]),
    );
    let vae_z4 = file("vae_z4.safetensors", &fixture("wan_vae_original.txt"));
    let files = |t5: &Path, vae: &Path| WanFiles {
        model: dit.clone(),
        t5: Some(t5.to_path_buf()),
        t5_tokenizer: Some(dir.path().join("tokenizer.json")),
        clip_vision: Some(clip.clone()),
        vae: Some(vae.to_path_buf()),
        ..WanFiles::default()
    };
    check_video_files(&files(&t5, &vae)).expect("matching files");
    let err = |f: WanFiles| match check_video_files(&f) {
        Err(PipelineError::Mismatch(m)) => m,
        other => panic!("{other:?}"),
    };
    let m = err(files(&wide_t5, &vae));
    assert!(
        m.contains("umT5 gives 4096-wide tokens") && m.contains("takes 64"),
        "{m}"
    );
    let m = err(files(&t5, &vae_z4));
    assert!(
        m.contains("the DiT takes 36 input channels, the VAE has 4 latent channels"),
        "{m}"
    );
}

/// GGUF files from city96's converter (ComfyUI-GGUF `tools/convert.py`: every Wan DiT is
/// "wan", SDXL UNets "sdxl"; QuantStack's Wan2.2 files, made with it, too), llama.cpp's T5
/// converter (city96's umT5: "t5encoder") and gguf-node ("t5"), written here with our GGUF
/// writer: `nijigen info` recognises each from its tensors, agrees with the value (no "says"
/// note) and prints it; among them a Wan2.2 I2V expert (36 input channels, no `img_emb.*`).
#[test]
fn community_gguf_architecture_values_are_recognised_by_info() {
    use nijigen::formats::gguf::{GgufWriter, TensorDecl};
    use nijigen::ggml::GgmlType;
    let dir = tempfile::tempdir().expect("tempdir");
    let wan22_i2v = wan_dit(128, 256, 2, 36, 32, 256, None, true);
    let wan21_i2v = wan_dit(128, 256, 2, 36, 32, 256, Some(64), true);
    let wan_t2v = wan_dit(128, 256, 2, 16, 32, 256, None, true);
    let unet = sdxl_unet(32, &[1, 2], &[0, 1], 2, 64, 80);
    let umt5 = fixture("umt5_gguf.txt");
    let cases = [
        ("wan", &wan22_i2v, "wan-dit-i2v", "Wan2.2 I2V-A14B expert"),
        ("wan", &wan21_i2v, "wan-dit-i2v", "Wan2.1 I2V DiT"),
        ("wan", &wan_t2v, "wan-dit-t2v", "Wan T2V DiT"),
        ("sdxl", &unet, "sdxl-unet", "SDXL UNet"),
        ("t5encoder", &umt5, "umt5", "umT5 encoder"),
        ("t5", &umt5, "umt5", "umT5 encoder"),
        ("umt5", &umt5, "umt5", "umT5 encoder"),
    ];
    for (k, (hint, list, arch, summary)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{k}-{hint}.gguf"));
        let meta = meta_arch(hint);
        let decls: Vec<TensorDecl> = list
            .iter()
            .map(|(n, s)| TensorDecl::new(n.clone(), GgmlType::F16, s.clone()))
            .collect();
        let f = std::fs::File::create(&path).expect("create");
        let mut w =
            GgufWriter::new(&path, std::io::BufWriter::new(f), &meta, &decls).expect("gguf header");
        for (n, s) in list.iter() {
            let bytes = vec![0u8; 2 * s.iter().product::<u64>() as usize];
            w.write_tensor(n, &bytes).expect("tensor");
        }
        w.finish().expect("finish");
        let o = common::nijigen(&["info", path.to_str().expect("utf-8")]);
        let text = common::stdout(&o);
        assert!(o.status.success(), "{hint}: {}", common::stderr(&o));
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{hint}: no {key} in\n{text}"))
                .to_string()
        };
        assert!(
            line("architecture:").starts_with(&format!("architecture:  {arch} (")),
            "{hint}: {text}"
        );
        assert!(
            line("config:").starts_with(&format!("config:        {summary}")),
            "{hint}: {text}"
        );
        assert!(
            !text.contains("general.architecture says"),
            "{hint}: {text}"
        );
        assert!(
            text.contains(&format!("  general.architecture = \"{hint}\"")),
            "{hint}: {text}"
        );
    }
}
