//! CLIP text encoders (CLIP-L, OpenCLIP bigG) and the CLIP-H vision encoder.
//!
//! - CLIP-L: canonical HF names `text_model.*`. transformers >= 5 saves `CLIPTextModel` without
//!   the `text_model.` wrapper; those names get it back.
//! - bigG: canonical open_clip names (what SDXL checkpoints hold under
//!   `conditioner.embedders.1.model.`). HF `CLIPTextModelWithProjection` names map onto them:
//!   q/k/v projections are thirds of the fused `attn.in_proj_weight` / `in_proj_bias`
//!   ([`NameMap::SplitOf`]), `text_projection.weight` is the transpose of `text_projection`.
//! - CLIP-H vision: canonical HF names `vision_model.*` and `visual_projection.weight`.
//!
//! Head counts are not stored: text encoders use head dim 64 (CLIP-L 12 heads, bigG 20); the
//! vision encoder uses 80 when the width is a multiple of 80 (CLIP-H: 1280 / 80 = 16 heads), else
//! 64 (ViT-B/L widths 768 / 1024).

use serde::Serialize;

use super::pattern::{exact_div, index, opt, Shapes};
use super::{Architecture, Layout, NameMap};

pub const TEXT_HEAD_DIM: u64 = 64;

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

pub(crate) fn map_clip_l(name: &str) -> Option<NameMap> {
    hf_text_canonical(name).map(NameMap::Rename)
}

pub(crate) fn map_clip_g(layout: Layout, name: &str) -> Option<NameMap> {
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

pub(crate) fn map_vision(name: &str) -> Option<NameMap> {
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
        return Architecture::ClipG;
    }
    if p.contains("clip_l") || p.contains("embedders.0.") || p.contains("text_encoder.") {
        return Architecture::ClipL;
    }
    match shapes.dim("text_model.embeddings.token_embedding.weight", 1) {
        Some(768) => Architecture::ClipL,
        Some(1280) => Architecture::ClipG,
        _ if shapes.has("text_projection.weight") => Architecture::ClipG,
        _ => Architecture::ClipL,
    }
}

/// CLIP text encoder hyperparameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClipTextConfig {
    pub width: Option<u64>,
    pub layers: usize,
    pub head_dim: u64,
    pub heads: Option<u64>,
    pub ffn_dim: Option<u64>,
    pub vocab: Option<u64>,
    pub max_positions: Option<u64>,
    /// Output width of `text_projection` (bigG: 1280), if the file has one.
    pub projection_dim: Option<u64>,
}

/// From canonical names: HF for CLIP-L, open_clip for bigG.
pub(crate) fn text_config(arch: Architecture, s: &Shapes) -> ClipTextConfig {
    let (tok, pos, layers, ffn, proj) = if arch == Architecture::ClipG {
        (
            s.get("token_embedding.weight"),
            s.dim("positional_embedding", 0),
            s.count("transformer.resblocks."),
            s.dim("transformer.resblocks.0.mlp.c_fc.weight", 0),
            s.dim("text_projection", 1),
        )
    } else {
        (
            s.get("text_model.embeddings.token_embedding.weight"),
            s.dim("text_model.embeddings.position_embedding.weight", 0),
            s.count("text_model.encoder.layers."),
            s.dim("text_model.encoder.layers.0.mlp.fc1.weight", 0),
            s.dim("text_projection.weight", 0),
        )
    };
    let width = tok.and_then(|t| t.get(1).copied());
    ClipTextConfig {
        width,
        layers,
        head_dim: TEXT_HEAD_DIM,
        heads: width.and_then(|w| exact_div(w, TEXT_HEAD_DIM)),
        ffn_dim: ffn,
        vocab: tok.and_then(|t| t.first().copied()),
        max_positions: pos,
        projection_dim: proj,
    }
}

pub(crate) fn text_summary(arch: Architecture, c: &ClipTextConfig) -> String {
    if arch == Architecture::ClipG {
        format!(
            "OpenCLIP bigG text encoder, width {}, {} layers, {} heads, projection {}",
            opt(c.width),
            c.layers,
            opt(c.heads),
            opt(c.projection_dim)
        )
    } else {
        format!(
            "CLIP-L text encoder, width {}, {} layers, {} heads",
            opt(c.width),
            c.layers,
            opt(c.heads)
        )
    }
}

/// CLIP vision encoder hyperparameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClipVisionConfig {
    pub width: Option<u64>,
    pub layers: usize,
    pub head_dim: Option<u64>,
    pub heads: Option<u64>,
    pub ffn_dim: Option<u64>,
    pub patch_size: Option<u64>,
    /// Positions incl. the class token (CLIP-H/14 at 224: 257).
    pub positions: Option<u64>,
    /// patch x sqrt(positions - 1), when that is whole.
    pub image_size: Option<u64>,
    pub projection_dim: Option<u64>,
}

/// Head size rule for vision towers (see the module docs).
pub fn vision_head_dim(width: u64) -> u64 {
    if width % 80 == 0 {
        80
    } else {
        64
    }
}

fn isqrt_exact(n: u64) -> Option<u64> {
    let r = (n as f64).sqrt().round() as u64;
    (r.checked_mul(r) == Some(n)).then_some(r)
}

pub(crate) fn vision_config(s: &Shapes) -> ClipVisionConfig {
    let patch = s.get("vision_model.embeddings.patch_embedding.weight");
    let width = patch
        .and_then(|p| p.first().copied())
        .or_else(|| s.dim("vision_model.embeddings.class_embedding", 0));
    let patch_size = patch.and_then(|p| p.get(2).copied());
    let positions = s.dim("vision_model.embeddings.position_embedding.weight", 0);
    let image_size = positions
        .and_then(|n| n.checked_sub(1))
        .and_then(isqrt_exact)
        .and_then(|side| side.checked_mul(patch_size?));
    let head_dim = width.map(vision_head_dim);
    ClipVisionConfig {
        width,
        layers: s.count("vision_model.encoder.layers."),
        head_dim,
        heads: width.and_then(|w| exact_div(w, head_dim?)),
        ffn_dim: s.dim("vision_model.encoder.layers.0.mlp.fc1.weight", 0),
        patch_size,
        positions,
        image_size,
        projection_dim: s.dim("visual_projection.weight", 0),
    }
}

pub(crate) fn vision_summary(c: &ClipVisionConfig) -> String {
    format!(
        "CLIP-H vision encoder, width {}, {} layers, {} heads, patch {}, image {}",
        opt(c.width),
        c.layers,
        opt(c.heads),
        opt(c.patch_size),
        opt(c.image_size)
    )
}
