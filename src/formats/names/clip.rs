//! CLIP text encoders (CLIP-L, OpenCLIP bigG) and the CLIP-H vision encoder.
//!
//! - CLIP-L: canonical HF names `text_model.*`. transformers >= 5 saves `CLIPTextModel` without
//!   the `text_model.` wrapper; those names get it back.
//! - bigG: canonical open_clip names (what SDXL checkpoints hold under
//!   `conditioner.embedders.1.model.`). HF `CLIPTextModelWithProjection` names map onto them:
//!   q/k/v projections are thirds of the fused `attn.in_proj_weight` / `in_proj_bias`
//!   ([`NameMap::SplitOf`]), `text_projection.weight` is the transpose of `text_projection`.
//! - CLIP-H vision: canonical HF names `vision_model.*` and `visual_projection.weight`.

use super::pattern::{index, Shapes};
use super::{Architecture, Layout, NameContext, NameMap};

/// HF text name in its canonical `text_model.*` form (adds the wrapper transformers >= 5 drops).
fn hf_text_canonical(name: &str) -> Option<String> {
    if name.ends_with("position_ids") {
        return None; // a buffer, not a weight
    }
    if name.starts_with("text_model.") || name.starts_with("text_projection.") {
        Some(name.to_string())
    } else if name.starts_with("embeddings.")
        || name.starts_with("encoder.")
        || name.starts_with("final_layer_norm.")
    {
        Some(format!("text_model.{name}"))
    } else {
        None
    }
}

pub(crate) fn map_clip_l(_: &NameContext, _: Layout, name: &str) -> Option<NameMap> {
    hf_text_canonical(name).map(NameMap::Rename)
}

pub(crate) fn map_clip_g(_: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::Original => {
            if name == "attn_mask" || name.ends_with(".attn_mask") {
                None
            } else {
                Some(NameMap::Rename(name.to_string()))
            }
        }
        _ => hf_text_canonical(name).and_then(|n| hf_text_to_open_clip(&n)),
    }
}

fn hf_text_to_open_clip(name: &str) -> Option<NameMap> {
    let segs: Vec<&str> = name.split('.').collect();
    let rename = |s: String| Some(NameMap::Rename(s));
    match segs.as_slice() {
        ["text_model", "embeddings", "token_embedding", "weight"] => {
            rename("token_embedding.weight".into())
        }
        ["text_model", "embeddings", "position_embedding", "weight"] => {
            rename("positional_embedding".into())
        }
        ["text_model", "final_layer_norm", wb] => rename(format!("ln_final.{wb}")),
        ["text_projection", "weight"] => Some(NameMap::Transpose("text_projection".into())),
        ["text_model", "encoder", "layers", n, rest @ ..] => {
            let base = format!("transformer.resblocks.{}.", index(n)?);
            match rest {
                ["self_attn", qkv @ ("q_proj" | "k_proj" | "v_proj"), wb @ ("weight" | "bias")] => {
                    let idx = match *qkv {
                        "q_proj" => 0,
                        "k_proj" => 1,
                        _ => 2,
                    };
                    Some(NameMap::SplitOf {
                        target: format!("{base}attn.in_proj_{wb}"),
                        index: idx,
                        parts: 3,
                    })
                }
                ["self_attn", "out_proj", wb] => rename(format!("{base}attn.out_proj.{wb}")),
                ["layer_norm1", wb] => rename(format!("{base}ln_1.{wb}")),
                ["layer_norm2", wb] => rename(format!("{base}ln_2.{wb}")),
                ["mlp", "fc1", wb] => rename(format!("{base}mlp.c_fc.{wb}")),
                ["mlp", "fc2", wb] => rename(format!("{base}mlp.c_proj.{wb}")),
                _ => None,
            }
        }
        _ => None,
    }
}

pub(crate) fn map_vision(_: &NameContext, _: Layout, name: &str) -> Option<NameMap> {
    if name.ends_with("position_ids") {
        return None;
    }
    if name.starts_with("vision_model.") || name.starts_with("visual_projection.") {
        Some(NameMap::Rename(name.to_string()))
    } else if name.starts_with("embeddings.")
        || name.starts_with("encoder.")
        || name.starts_with("pre_layrnorm.")
        || name.starts_with("post_layernorm.")
    {
        Some(NameMap::Rename(format!("vision_model.{name}")))
    } else {
        None
    }
}

/// CLIP-L or bigG, for HF-named text encoders: the prefix when it says (`clip_g`,
/// `embedders.1.`, `text_encoder_2`), then the width (768: CLIP-L, 1280: bigG), then whether
/// there is a `text_projection` (SDXL's CLIP-L has none; tiny test models rely on this rule).
/// `shapes` are in CLIP-L canonical (HF) names.
pub(crate) fn classify_text(prefix: &str, shapes: &Shapes) -> Architecture {
    let p = prefix.to_ascii_lowercase();
    if p.contains("clip_g") || p.contains("embedders.1.") || p.contains("text_encoder_2") {
        return Architecture::CLIP_G;
    }
    if p.contains("clip_l") || p.contains("embedders.0.") || p.contains("text_encoder.") {
        return Architecture::CLIP_L;
    }
    match shapes.dim("text_model.embeddings.token_embedding.weight", 1) {
        Some(768) => Architecture::CLIP_L,
        Some(1280) => Architecture::CLIP_G,
        _ if shapes.has("text_projection.weight") => Architecture::CLIP_G,
        _ => Architecture::CLIP_L,
    }
}
