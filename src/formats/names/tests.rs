//! Unit tests for the name maps (per-name tables). Whole-file detection on the dumped reference
//! lists and on real-size synthetic lists is in `tests/names_detect.rs`.

use super::*;
use crate::formats::DType;

fn t(name: &str, shape: &[u64]) -> TensorInfo {
    TensorInfo {
        name: name.to_string(),
        dtype: DType::F32,
        shape: shape.to_vec(),
        shard: 0,
        offset: 0,
        size: 0,
    }
}

fn rn(s: &str) -> Option<NameMap> {
    Some(NameMap::Rename(s.to_string()))
}

/// MODELS.md "Name maps (original -> diffusers) for the Wan DiT", entry by entry, read
/// backwards (diffusers -> original), for weight and bias where the module has both.
#[test]
fn wan_dit_diffusers_map_matches_models_md() {
    let table: &[(&str, &str)] = &[
        (
            "condition_embedder.time_embedder.linear_1",
            "time_embedding.0",
        ),
        (
            "condition_embedder.time_embedder.linear_2",
            "time_embedding.2",
        ),
        (
            "condition_embedder.text_embedder.linear_1",
            "text_embedding.0",
        ),
        (
            "condition_embedder.text_embedder.linear_2",
            "text_embedding.2",
        ),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("proj_out", "head.head"),
        ("blocks.7.ffn.net.0.proj", "blocks.7.ffn.0"),
        ("blocks.7.ffn.net.2", "blocks.7.ffn.2"),
        ("blocks.7.attn1.to_q", "blocks.7.self_attn.q"),
        ("blocks.7.attn1.to_k", "blocks.7.self_attn.k"),
        ("blocks.7.attn1.to_v", "blocks.7.self_attn.v"),
        ("blocks.7.attn1.to_out.0", "blocks.7.self_attn.o"),
        ("blocks.7.attn2.to_q", "blocks.7.cross_attn.q"),
        ("blocks.7.attn2.to_k", "blocks.7.cross_attn.k"),
        ("blocks.7.attn2.to_v", "blocks.7.cross_attn.v"),
        ("blocks.7.attn2.to_out.0", "blocks.7.cross_attn.o"),
        ("blocks.7.attn2.add_k_proj", "blocks.7.cross_attn.k_img"),
        ("blocks.7.attn2.add_v_proj", "blocks.7.cross_attn.v_img"),
        ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
        (
            "condition_embedder.image_embedder.ff.net.0.proj",
            "img_emb.proj.1",
        ),
        (
            "condition_embedder.image_embedder.ff.net.2",
            "img_emb.proj.3",
        ),
        ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
        ("blocks.7.norm2", "blocks.7.norm3"),
    ];
    for (d, o) in table {
        for wb in ["weight", "bias"] {
            assert_eq!(
                normalize(
                    Architecture::WAN_DIT_I2V,
                    Layout::Diffusers,
                    &format!("{d}.{wb}")
                ),
                rn(&format!("{o}.{wb}")),
                "{d}.{wb}"
            );
        }
    }
    // weight-only entries
    let single: &[(&str, &str)] = &[
        ("blocks.39.scale_shift_table", "blocks.39.modulation"),
        ("scale_shift_table", "head.modulation"),
        (
            "blocks.3.attn2.norm_added_k.weight",
            "blocks.3.cross_attn.norm_k_img.weight",
        ),
        (
            "blocks.3.attn1.norm_q.weight",
            "blocks.3.self_attn.norm_q.weight",
        ),
        (
            "blocks.3.attn2.norm_k.weight",
            "blocks.3.cross_attn.norm_k.weight",
        ),
        ("patch_embedding.weight", "patch_embedding.weight"),
        (
            "condition_embedder.image_embedder.pos_embed",
            "img_emb.emb_pos",
        ),
    ];
    for (d, o) in single {
        assert_eq!(
            normalize(Architecture::WAN_DIT_T2V, Layout::Diffusers, d),
            rn(o),
            "{d}"
        );
    }
    // diffusers' non-affine norms have no tensors; anything unknown maps to nothing
    for d in [
        "blocks.0.norm1.weight",
        "blocks.0.attn3.to_q.weight",
        "rope.freqs",
        "blocks.x.attn1.to_q.weight",
    ] {
        assert_eq!(
            normalize(Architecture::WAN_DIT_I2V, Layout::Diffusers, d),
            None,
            "{d}"
        );
    }
}

#[test]
fn wan_original_names_strip_prefixes() {
    for stored in [
        "model.diffusion_model.blocks.0.self_attn.q.weight",
        "diffusion_model.blocks.0.self_attn.q.weight",
        "blocks.0.self_attn.q.weight",
    ] {
        assert_eq!(
            normalize(Architecture::WAN_DIT_I2V, Layout::Original, stored),
            rn("blocks.0.self_attn.q.weight")
        );
    }
    assert_eq!(
        normalize(
            Architecture::WAN_DIT_I2V,
            Layout::Diffusers,
            "transformer.blocks.1.attn1.to_out.0.weight"
        ),
        rn("blocks.1.self_attn.o.weight")
    );
}

#[test]
fn umt5_hf_to_llama_cpp() {
    let table: &[(&str, &str)] = &[
        ("shared.weight", "token_embd.weight"),
        ("encoder.embed_tokens.weight", "token_embd.weight"),
        ("encoder.final_layer_norm.weight", "enc.output_norm.weight"),
        (
            "encoder.block.5.layer.0.SelfAttention.q.weight",
            "enc.blk.5.attn_q.weight",
        ),
        (
            "encoder.block.5.layer.0.SelfAttention.k.weight",
            "enc.blk.5.attn_k.weight",
        ),
        (
            "encoder.block.5.layer.0.SelfAttention.v.weight",
            "enc.blk.5.attn_v.weight",
        ),
        (
            "encoder.block.5.layer.0.SelfAttention.o.weight",
            "enc.blk.5.attn_o.weight",
        ),
        (
            "encoder.block.23.layer.0.SelfAttention.relative_attention_bias.weight",
            "enc.blk.23.attn_rel_b.weight",
        ),
        (
            "encoder.block.5.layer.0.layer_norm.weight",
            "enc.blk.5.attn_norm.weight",
        ),
        (
            "encoder.block.5.layer.1.DenseReluDense.wi_0.weight",
            "enc.blk.5.ffn_gate.weight",
        ),
        (
            "encoder.block.5.layer.1.DenseReluDense.wi_1.weight",
            "enc.blk.5.ffn_up.weight",
        ),
        (
            "encoder.block.5.layer.1.DenseReluDense.wi.weight",
            "enc.blk.5.ffn_up.weight",
        ),
        (
            "encoder.block.5.layer.1.DenseReluDense.wo.weight",
            "enc.blk.5.ffn_down.weight",
        ),
        (
            "encoder.block.5.layer.1.layer_norm.weight",
            "enc.blk.5.ffn_norm.weight",
        ),
    ];
    for (hf, g) in table {
        assert_eq!(
            normalize(Architecture::UMT5, Layout::HfTransformers, hf),
            rn(g),
            "{hf}"
        );
    }
    assert_eq!(
        normalize(
            Architecture::UMT5,
            Layout::HfTransformers,
            "decoder.block.0.layer.0.SelfAttention.q.weight"
        ),
        None
    );
    assert_eq!(
        normalize(
            Architecture::UMT5,
            Layout::LlamaCpp,
            "enc.blk.0.attn_q.weight"
        ),
        rn("enc.blk.0.attn_q.weight")
    );
    // ComfyUI's prefixed text encoder names
    assert_eq!(
        normalize(
            Architecture::UMT5,
            Layout::HfTransformers,
            "text_encoders.umt5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"
        ),
        rn("enc.blk.0.attn_q.weight")
    );
}

#[test]
fn bigg_hf_to_open_clip_is_honest_about_fused_qkv() {
    let g = |n: &str| normalize(Architecture::CLIP_G, Layout::HfTransformers, n);
    assert_eq!(
        g("text_model.encoder.layers.31.self_attn.k_proj.weight"),
        Some(NameMap::SplitOf {
            target: "transformer.resblocks.31.attn.in_proj_weight".into(),
            index: 1,
            parts: 3
        })
    );
    assert_eq!(
        g("text_model.encoder.layers.0.self_attn.v_proj.bias"),
        Some(NameMap::SplitOf {
            target: "transformer.resblocks.0.attn.in_proj_bias".into(),
            index: 2,
            parts: 3
        })
    );
    assert_eq!(
        g("text_projection.weight"),
        Some(NameMap::Transpose("text_projection".into()))
    );
    assert_eq!(
        g("text_model.embeddings.position_embedding.weight"),
        rn("positional_embedding")
    );
    assert_eq!(g("text_model.final_layer_norm.bias"), rn("ln_final.bias"));
    assert_eq!(
        g("text_model.encoder.layers.2.mlp.fc2.weight"),
        rn("transformer.resblocks.2.mlp.c_proj.weight")
    );
    assert_eq!(g("text_model.embeddings.position_ids"), None);
    // with ComfyUI's prefix
    assert_eq!(
        g("text_encoders.clip_g.transformer.text_model.encoder.layers.0.layer_norm1.weight"),
        rn("transformer.resblocks.0.ln_1.weight")
    );
    // open_clip names are canonical, prefix stripped
    assert_eq!(
        normalize(
            Architecture::CLIP_G,
            Layout::Original,
            "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"
        ),
        rn("transformer.resblocks.3.attn.in_proj_weight")
    );
    let m = g("text_model.encoder.layers.0.self_attn.q_proj.weight");
    assert_eq!(
        m.as_ref().map(NameMap::target),
        Some("transformer.resblocks.0.attn.in_proj_weight")
    );
    assert_eq!(m.as_ref().and_then(NameMap::rename), None);
}

#[test]
fn clip_l_gets_text_model_wrapper() {
    let l = |n: &str| normalize(Architecture::CLIP_L, Layout::HfTransformers, n);
    assert_eq!(
        l("encoder.layers.0.self_attn.q_proj.weight"),
        rn("text_model.encoder.layers.0.self_attn.q_proj.weight")
    );
    assert_eq!(
        l("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"),
        rn("text_model.final_layer_norm.weight")
    );
    assert_eq!(
        l("text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight"),
        rn("text_model.embeddings.token_embedding.weight")
    );
    assert_eq!(l("text_model.embeddings.position_ids"), None);
}

#[test]
fn sdxl_unet_diffusers_to_ldm_examples() {
    // Values as in diffusers' convert_diffusers_to_original_sdxl.py for SDXL base.
    let u = |n: &str| normalize(Architecture::SDXL_UNET, Layout::Diffusers, n);
    let table: &[(&str, &str)] = &[
        ("conv_in.weight", "input_blocks.0.0.weight"),
        ("time_embedding.linear_2.bias", "time_embed.2.bias"),
        ("add_embedding.linear_1.weight", "label_emb.0.0.weight"),
        ("conv_norm_out.weight", "out.0.weight"),
        ("conv_out.bias", "out.2.bias"),
        (
            "down_blocks.0.resnets.1.conv1.weight",
            "input_blocks.2.0.in_layers.2.weight",
        ),
        (
            "down_blocks.1.resnets.0.conv_shortcut.weight",
            "input_blocks.4.0.skip_connection.weight",
        ),
        (
            "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight",
            "input_blocks.8.1.transformer_blocks.9.attn2.to_k.weight",
        ),
        (
            "down_blocks.1.downsamplers.0.conv.weight",
            "input_blocks.6.0.op.weight",
        ),
        (
            "mid_block.resnets.1.time_emb_proj.weight",
            "middle_block.2.emb_layers.1.weight",
        ),
        (
            "mid_block.attentions.0.proj_out.bias",
            "middle_block.1.proj_out.bias",
        ),
        (
            "up_blocks.0.resnets.2.norm2.weight",
            "output_blocks.2.0.out_layers.0.weight",
        ),
        (
            "up_blocks.0.upsamplers.0.conv.weight",
            "output_blocks.2.2.conv.weight",
        ),
        (
            "up_blocks.1.upsamplers.0.conv.bias",
            "output_blocks.5.2.conv.bias",
        ),
        (
            "up_blocks.1.attentions.2.norm.weight",
            "output_blocks.5.1.norm.weight",
        ),
        (
            "up_blocks.2.resnets.2.conv2.weight",
            "output_blocks.8.0.out_layers.3.weight",
        ),
    ];
    for (d, l) in table {
        assert_eq!(u(d), rn(l), "{d}");
    }
    // SD1.x-style structure: up block 0 without attentions puts its upsampler at `.1`.
    let ctx = NameContext {
        unet_up_attention: vec![false, true, true, true],
        ..NameContext::default()
    };
    assert_eq!(
        normalize_with(
            &ctx,
            Architecture::SDXL_UNET,
            Layout::Diffusers,
            "up_blocks.0.upsamplers.0.conv.weight"
        ),
        rn("output_blocks.2.1.conv.weight")
    );
    assert_eq!(u("down_blocks.0.resnets.0.bogus.weight"), None);
    assert_eq!(u("down_blocks.0.resnets.0.conv1"), None);
}

#[test]
fn sdxl_vae_diffusers_to_ldm_examples() {
    let v = |n: &str| normalize(Architecture::SDXL_VAE, Layout::Diffusers, n);
    assert_eq!(
        v("encoder.down_blocks.3.resnets.1.norm2.bias"),
        rn("encoder.down.3.block.1.norm2.bias")
    );
    assert_eq!(
        v("decoder.up_blocks.0.resnets.2.conv1.weight"),
        rn("decoder.up.3.block.2.conv1.weight")
    );
    assert_eq!(
        v("decoder.up_blocks.2.upsamplers.0.conv.weight"),
        rn("decoder.up.1.upsample.conv.weight")
    );
    assert_eq!(
        v("decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
        rn("decoder.up.2.block.0.nin_shortcut.weight")
    );
    assert_eq!(
        v("encoder.mid_block.attentions.0.to_q.weight"),
        Some(NameMap::Reshape("encoder.mid.attn_1.q.weight".into()))
    );
    assert_eq!(
        v("encoder.mid_block.attentions.0.to_q.bias"),
        rn("encoder.mid.attn_1.q.bias")
    );
    assert_eq!(
        v("decoder.mid_block.attentions.0.to_out.0.weight"),
        Some(NameMap::Reshape(
            "decoder.mid.attn_1.proj_out.weight".into()
        ))
    );
    assert_eq!(
        v("decoder.mid_block.attentions.0.group_norm.weight"),
        rn("decoder.mid.attn_1.norm.weight")
    );
    assert_eq!(
        v("decoder.mid_block.resnets.1.conv2.weight"),
        rn("decoder.mid.block_2.conv2.weight")
    );
    assert_eq!(
        v("encoder.conv_norm_out.weight"),
        rn("encoder.norm_out.weight")
    );
    assert_eq!(v("quant_conv.weight"), rn("quant_conv.weight"));
    assert_eq!(v("decoder.up_blocks.4.resnets.0.conv1.weight"), None);
    assert_eq!(
        normalize(
            Architecture::SDXL_VAE,
            Layout::Original,
            "first_stage_model.decoder.conv_in.weight"
        ),
        rn("decoder.conv_in.weight")
    );
}

#[test]
fn wan_vae_diffusers_to_original_examples() {
    let v = |n: &str| normalize(Architecture::WAN_VAE, Layout::Diffusers, n);
    let table: &[(&str, &str)] = &[
        ("quant_conv.weight", "conv1.weight"),
        ("post_quant_conv.bias", "conv2.bias"),
        ("encoder.conv_in.weight", "encoder.conv1.weight"),
        ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
        ("decoder.conv_out.bias", "decoder.head.2.bias"),
        (
            "encoder.down_blocks.3.conv_shortcut.weight",
            "encoder.downsamples.3.shortcut.weight",
        ),
        (
            "encoder.down_blocks.5.time_conv.weight",
            "encoder.downsamples.5.time_conv.weight",
        ),
        (
            "encoder.down_blocks.8.resample.1.bias",
            "encoder.downsamples.8.resample.1.bias",
        ),
        (
            "encoder.down_blocks.0.norm1.gamma",
            "encoder.downsamples.0.residual.0.gamma",
        ),
        (
            "encoder.mid_block.resnets.1.conv2.weight",
            "encoder.middle.2.residual.6.weight",
        ),
        (
            "decoder.mid_block.attentions.0.to_qkv.weight",
            "decoder.middle.1.to_qkv.weight",
        ),
        (
            "decoder.up_blocks.1.resnets.0.conv_shortcut.bias",
            "decoder.upsamples.4.shortcut.bias",
        ),
        (
            "decoder.up_blocks.3.resnets.2.norm2.gamma",
            "decoder.upsamples.14.residual.3.gamma",
        ),
        (
            "decoder.up_blocks.0.upsamplers.0.time_conv.weight",
            "decoder.upsamples.3.time_conv.weight",
        ),
        (
            "decoder.up_blocks.2.upsamplers.0.resample.1.weight",
            "decoder.upsamples.11.resample.1.weight",
        ),
    ];
    for (d, o) in table {
        assert_eq!(v(d), rn(o), "{d}");
    }
}

#[test]
fn checkpoint_names_keep_ldm_prefixes() {
    let c = |n: &str| normalize(Architecture::SDXL_CHECKPOINT, Layout::Original, n);
    assert_eq!(
        c("model.diffusion_model.input_blocks.0.0.weight"),
        rn("model.diffusion_model.input_blocks.0.0.weight")
    );
    assert_eq!(
        c("conditioner.embedders.1.model.ln_final.weight"),
        rn("conditioner.embedders.1.model.ln_final.weight")
    );
    assert_eq!(
        c("conditioner.embedders.0.transformer.text_model.embeddings.position_ids"),
        None
    );
    assert_eq!(c("model_ema.decay"), None);
    assert_eq!(c("denoiser.sigmas"), None);
}

#[test]
fn scaled_fp8_aux_tensors() {
    assert_eq!(
        normalize(
            Architecture::UMT5,
            Layout::HfTransformers,
            "encoder.block.0.layer.0.SelfAttention.q.scale_weight"
        ),
        rn("enc.blk.0.attn_q.scale_weight")
    );
    assert_eq!(
        normalize(Architecture::WAN_DIT_I2V, Layout::Original, "scaled_fp8"),
        rn("scaled_fp8")
    );
    // The per-layer layout's tensors.
    for aux in ["weight_scale", "input_scale", "comfy_quant"] {
        assert_eq!(
            normalize(
                Architecture::WAN_DIT_I2V,
                Layout::Original,
                &format!("model.diffusion_model.blocks.3.ffn.0.{aux}")
            ),
            rn(&format!("blocks.3.ffn.0.{aux}"))
        );
    }
}

#[test]
fn lora_names() {
    let k = parse_lora_name(
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
    );
    assert_eq!(
        k,
        Some(LoraKey {
            target: LoraTarget::Unet,
            module: "input_blocks_4_1_transformer_blocks_0_attn1_to_q".into(),
            part: LoraPart::Down,
            layout: Layout::Kohya,
        })
    );
    assert_eq!(
        kohya_flatten("input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    );
    let p = parse_lora_name("diffusion_model.blocks.3.cross_attn.k_img.lora_B.weight");
    assert_eq!(
        p.map(|k| (k.target, k.module, k.part, k.layout)),
        Some((
            LoraTarget::WanDit,
            "blocks.3.cross_attn.k_img".to_string(),
            LoraPart::Up,
            Layout::Peft
        ))
    );
    // diffusers names are brought to the canonical layout
    assert_eq!(
        normalize(
            Architecture::LORA,
            Layout::Peft,
            "transformer.blocks.0.attn2.add_k_proj.lora_A.weight"
        ),
        rn("wan.blocks.0.cross_attn.k_img.lora_down.weight")
    );
    assert_eq!(
        normalize(
            Architecture::LORA,
            Layout::Peft,
            "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
        ),
        rn("unet.input_blocks.4.1.transformer_blocks.0.attn1.to_q.lora_up.weight")
    );
    assert_eq!(
        normalize(
            Architecture::LORA,
            Layout::ComfyUi,
            "diffusion_model.blocks.0.norm3.diff_b"
        ),
        rn("wan.blocks.0.norm3.diff_b")
    );
    assert_eq!(
        normalize(
            Architecture::LORA,
            Layout::Kohya,
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha"
        ),
        rn("te2.text_model_encoder_layers_0_self_attn_q_proj.alpha")
    );
    assert_eq!(parse_lora_name("blocks.0.self_attn.q.weight"), None);
    assert_eq!(parse_lora_name(".lora_down.weight"), None);
    assert_eq!(parse_lora_name("lora_down.weight"), None);
}

#[test]
fn architecture_names_round_trip() {
    for a in Architecture::ALL {
        assert_eq!(Architecture::from_name(a.name()), Some(a));
        assert!(!a.description().is_empty());
    }
    assert_eq!(Architecture::WAN_DIT_I2V.to_string(), "wan-dit-i2v");
    assert_eq!(Architecture::SDXL_UNET.name(), "sdxl-unet");
    assert_eq!(Layout::LlamaCpp.to_string(), "llama-cpp");
}

#[test]
fn empty_and_unknown() {
    let d = detect(&[], &[]);
    assert_eq!(d.architecture, Architecture::UNKNOWN);
    assert_eq!(d.summary, "no tensors");
    assert_eq!(d.lora, None);

    let d = detect(
        &[
            t("model.layers.0.self_attn.q_proj.weight", &[4096, 4096]),
            t("lm_head.weight", &[32000, 4096]),
        ],
        &[(
            "general.architecture".to_string(),
            MetaValue::String("llama".into()),
        )],
    );
    assert_eq!(d.architecture, Architecture::UNKNOWN);
    assert_eq!(
        d.summary,
        "unrecognised tensor names (2 tensors, general.architecture \"llama\")"
    );
    assert_eq!(d.normalize("lm_head.weight"), None);
    assert_eq!(d.unmapped, 2);
}

#[test]
fn hostile_names_and_shapes_do_not_panic() {
    let names = [
        "",
        ".",
        "..",
        "...weight",
        "blocks..self_attn.q.weight",
        "blocks.99999999999999999999.self_attn.q.weight",
        "blocks.999999999.self_attn.q.weight",
        "down_blocks.999999999.resnets.999999999.conv1.weight",
        "up_blocks.999999999.upsamplers.0.conv.weight",
        "decoder.up_blocks.999999999.resnets.999999999.conv1.weight",
        "encoder.layers.0.self_attn.q_proj.weight",
        "\u{0}\u{ffff}.weight",
        "patch_embedding.weight",
        "lora_unet_.lora_down.weight",
        ".alpha",
        "a.diff",
    ];
    let shapes: [&[u64]; 5] = [
        &[],
        &[0],
        &[u64::MAX, u64::MAX],
        &[1, 2, 3, 4, 5, 6, 7, 8],
        &[3],
    ];
    let mut tensors = Vec::new();
    for (i, n) in names.iter().enumerate() {
        tensors.push(t(n, shapes[i % shapes.len()]));
    }
    let metadata = vec![
        ("general.architecture".to_string(), MetaValue::U32(7)),
        (
            "comfy.gguf.orig_shape.patch_embedding.weight".to_string(),
            MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(3)]),
        ),
        (
            "comfy.gguf.orig_shape.".to_string(),
            MetaValue::Array(vec![]),
        ),
    ];
    let d = detect(&tensors, &metadata);
    for n in names {
        let _ = d.normalize(n);
        for a in Architecture::ALL {
            for l in [
                Layout::Original,
                Layout::Diffusers,
                Layout::HfTransformers,
                Layout::LlamaCpp,
                Layout::ComfyUi,
                Layout::Kohya,
                Layout::Peft,
            ] {
                let _ = normalize(a, l, n);
            }
        }
    }
    // A Wan-looking file with absurd shapes still gives a detection.
    let wan = vec![
        t("blocks.0.self_attn.q.weight", &[u64::MAX]),
        t("blocks.0.cross_attn.q.weight", &[]),
        t("patch_embedding.weight", &[0, 0, 0, 0, 0]),
        t("head.head.weight", &[u64::MAX, 0]),
    ];
    let d = detect(&wan, &[]);
    assert_eq!(d.architecture, Architecture::WAN_DIT_T2V);
    assert_eq!(d.summary, Architecture::WAN_DIT_T2V.description());
}

#[test]
fn orig_shape_metadata_overrides_stored_shape() {
    // Stored flat, the patch embedding says nothing; its original shape [256, 36, 1, 2, 2]
    // takes more channels (36) than the head gives (64 / 4 = 16): an I2V DiT.
    let tensors = vec![
        t("blocks.0.self_attn.q.weight", &[256, 256]),
        t("blocks.0.cross_attn.q.weight", &[256, 256]),
        t("patch_embedding.weight", &[256 * 36 * 4]),
        t("head.head.weight", &[64, 256]),
    ];
    assert_eq!(
        detect(&tensors, &[]).architecture,
        Architecture::WAN_DIT_T2V
    );
    let meta = vec![(
        "comfy.gguf.orig_shape.patch_embedding.weight".to_string(),
        MetaValue::Array(
            [256u32, 36, 1, 2, 2]
                .iter()
                .map(|&d| MetaValue::U32(d))
                .collect(),
        ),
    )];
    assert_eq!(
        detect(&tensors, &meta).architecture,
        Architecture::WAN_DIT_I2V
    );
}

#[test]
fn wan22_experts_are_named_by_their_files() {
    use super::wan::{expert_by_name, is_wan22_by_name, ExpertName};
    use std::path::Path;
    let cases = [
        (
            "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
            Some(ExpertName::HighNoise),
            true,
        ),
        (
            "Wan2.2-I2V-A14B-LowNoise-Q4_K_M.gguf",
            Some(ExpertName::LowNoise),
            true,
        ),
        (
            "wan2.2_t2v_low_noise_14B_fp16.safetensors",
            Some(ExpertName::LowNoise),
            true,
        ),
        ("wan22-t2v-a14b.gguf", None, true),
        ("wan2.1_t2v_14B_fp16.safetensors", None, false),
        ("wan2.1-i2v-14b-480p-Q4_K_M.gguf", None, false),
        ("high_noise_and_low_noise.gguf", None, false),
    ];
    for (name, expert, wan22) in cases {
        let p = Path::new("/models").join(name);
        assert_eq!(expert_by_name(&p), expert, "{name}");
        assert_eq!(is_wan22_by_name(&p), wan22, "{name}");
    }
}
