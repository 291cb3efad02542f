//! Wan DiT and Wan VAE 2.1: diffusers -> original name maps, configs from original shapes.
//!
//! DiT map (MODELS.md, diffusers' `convert_wan_transformer_to_diffusers`, read backwards):
//! | diffusers | original |
//! |---|---|
//! | `condition_embedder.time_embedder.linear_{1,2}` | `time_embedding.{0,2}` |
//! | `condition_embedder.text_embedder.linear_{1,2}` | `text_embedding.{0,2}` |
//! | `condition_embedder.time_proj` | `time_projection.1` |
//! | `condition_embedder.image_embedder.{norm1,ff.net.0.proj,ff.net.2,norm2}` | `img_emb.proj.{0,1,3,4}` |
//! | `condition_embedder.image_embedder.pos_embed` | `img_emb.emb_pos` (FLF2V) |
//! | `scale_shift_table` / `proj_out` | `head.modulation` / `head.head` |
//! | `blocks.N.scale_shift_table` | `blocks.N.modulation` |
//! | `blocks.N.attn1.{to_q,to_k,to_v,to_out.0,norm_q,norm_k}` | `blocks.N.self_attn.{q,k,v,o,norm_q,norm_k}` |
//! | `blocks.N.attn2.*`, `add_k_proj`, `add_v_proj`, `norm_added_k` | `blocks.N.cross_attn.*`, `k_img`, `v_img`, `norm_k_img` |
//! | `blocks.N.norm2` (affine, before cross-attention) | `blocks.N.norm3` |
//! | `blocks.N.ffn.net.0.proj` / `blocks.N.ffn.net.2` | `blocks.N.ffn.0` / `blocks.N.ffn.2` |
//!
//! VAE map (diffusers' `convert_wan_vae_to_diffusers`, read backwards): `quant_conv` /
//! `post_quant_conv` -> `conv1` / `conv2`; `{encoder,decoder}.conv_in` -> `.conv1`, `norm_out` ->
//! `head.0`, `conv_out` -> `head.2`; `encoder.down_blocks.N` -> `encoder.downsamples.N` (both
//! flat); `mid_block.resnets.{0,1}` / `attentions.0` -> `middle.{0,2}` / `middle.1`;
//! `decoder.up_blocks.i.resnets.j` -> `decoder.upsamples.{i*(R+2)+j}` and
//! `decoder.up_blocks.i.upsamplers.0` -> `decoder.upsamples.{i*(R+2)+R+1}` (R residual blocks per
//! level, R+1 in the decoder, then a resample); inside residual blocks `norm1, conv1, norm2,
//! conv2, conv_shortcut` -> `residual.0, residual.2, residual.3, residual.6, shortcut`.

use serde::Serialize;

use super::pattern::{exact_div, index, list, opt, Shapes};
use super::{Layout, NameContext, NameMap};

/// Wan DiT head size (MODELS.md: 40 heads x 128 for the 14B model).
pub const DIT_HEAD_DIM: u64 = 128;

fn join(parts: &[&str]) -> Option<String> {
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

pub(crate) fn map_dit(layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::Diffusers => dit_diffusers_to_original(name).map(NameMap::Rename),
        Layout::Original | Layout::ComfyUi => Some(NameMap::Rename(name.to_string())),
        _ => None,
    }
}

fn attn_part<'a>(rest: &'a [&'a str]) -> Option<(&'static str, &'a [&'a str])> {
    Some(match rest {
        ["to_q", t @ ..] => ("q", t),
        ["to_k", t @ ..] => ("k", t),
        ["to_v", t @ ..] => ("v", t),
        ["to_out", "0", t @ ..] => ("o", t),
        ["norm_q", t @ ..] => ("norm_q", t),
        ["norm_k", t @ ..] => ("norm_k", t),
        ["add_k_proj", t @ ..] => ("k_img", t),
        ["add_v_proj", t @ ..] => ("v_img", t),
        ["norm_added_k", t @ ..] => ("norm_k_img", t),
        _ => return None,
    })
}

fn dit_diffusers_to_original(name: &str) -> Option<String> {
    let segs: Vec<&str> = name.split('.').collect();
    let out = match segs.as_slice() {
        ["patch_embedding", rest @ ..] => format!("patch_embedding.{}", join(rest)?),
        ["condition_embedder", "time_embedder", "linear_1", rest @ ..] => {
            format!("time_embedding.0.{}", join(rest)?)
        }
        ["condition_embedder", "time_embedder", "linear_2", rest @ ..] => {
            format!("time_embedding.2.{}", join(rest)?)
        }
        ["condition_embedder", "text_embedder", "linear_1", rest @ ..] => {
            format!("text_embedding.0.{}", join(rest)?)
        }
        ["condition_embedder", "text_embedder", "linear_2", rest @ ..] => {
            format!("text_embedding.2.{}", join(rest)?)
        }
        ["condition_embedder", "time_proj", rest @ ..] => {
            format!("time_projection.1.{}", join(rest)?)
        }
        ["condition_embedder", "image_embedder", rest @ ..] => match rest {
            ["norm1", t @ ..] => format!("img_emb.proj.0.{}", join(t)?),
            ["ff", "net", "0", "proj", t @ ..] => format!("img_emb.proj.1.{}", join(t)?),
            ["ff", "net", "2", t @ ..] => format!("img_emb.proj.3.{}", join(t)?),
            ["norm2", t @ ..] => format!("img_emb.proj.4.{}", join(t)?),
            ["pos_embed"] => "img_emb.emb_pos".into(),
            _ => return None,
        },
        ["scale_shift_table"] => "head.modulation".into(),
        ["proj_out", rest @ ..] => format!("head.head.{}", join(rest)?),
        ["blocks", n, rest @ ..] => {
            let b = format!("blocks.{}", index(n)?);
            match rest {
                ["scale_shift_table"] => format!("{b}.modulation"),
                ["attn1", a @ ..] => {
                    let (p, t) = attn_part(a)?;
                    format!("{b}.self_attn.{p}.{}", join(t)?)
                }
                ["attn2", a @ ..] => {
                    let (p, t) = attn_part(a)?;
                    format!("{b}.cross_attn.{p}.{}", join(t)?)
                }
                ["norm2", t @ ..] => format!("{b}.norm3.{}", join(t)?),
                ["ffn", "net", "0", "proj", t @ ..] => format!("{b}.ffn.0.{}", join(t)?),
                ["ffn", "net", "2", t @ ..] => format!("{b}.ffn.2.{}", join(t)?),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(out)
}

pub(crate) fn map_vae(ctx: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::Diffusers => vae_diffusers_to_original(ctx, name).map(NameMap::Rename),
        Layout::Original | Layout::ComfyUi => Some(NameMap::Rename(name.to_string())),
        _ => None,
    }
}

fn vae_block_part<'a>(rest: &'a [&'a str]) -> Option<String> {
    let (p, t): (&str, &[&str]) = match rest {
        ["norm1", t @ ..] => ("residual.0", t),
        ["conv1", t @ ..] => ("residual.2", t),
        ["norm2", t @ ..] => ("residual.3", t),
        ["conv2", t @ ..] => ("residual.6", t),
        ["conv_shortcut", t @ ..] => ("shortcut", t),
        ["resample", t @ ..] => ("resample", t),
        ["time_conv", t @ ..] => ("time_conv", t),
        _ => return None,
    };
    Some(format!("{p}.{}", join(t)?))
}

fn vae_diffusers_to_original(ctx: &NameContext, name: &str) -> Option<String> {
    let segs: Vec<&str> = name.split('.').collect();
    let r = ctx.wan_vae_res_blocks;
    let per_level = r.checked_add(2)?;
    let out = match segs.as_slice() {
        ["quant_conv", rest @ ..] => format!("conv1.{}", join(rest)?),
        ["post_quant_conv", rest @ ..] => format!("conv2.{}", join(rest)?),
        [side @ ("encoder" | "decoder"), "conv_in", rest @ ..] => {
            format!("{side}.conv1.{}", join(rest)?)
        }
        [side @ ("encoder" | "decoder"), "norm_out", rest @ ..] => {
            format!("{side}.head.0.{}", join(rest)?)
        }
        [side @ ("encoder" | "decoder"), "conv_out", rest @ ..] => {
            format!("{side}.head.2.{}", join(rest)?)
        }
        ["encoder", "down_blocks", n, rest @ ..] => {
            format!(
                "encoder.downsamples.{}.{}",
                index(n)?,
                vae_block_part(rest)?
            )
        }
        [side @ ("encoder" | "decoder"), "mid_block", "resnets", j, rest @ ..] => {
            let m = index(j)?.checked_mul(2)?;
            format!("{side}.middle.{m}.{}", vae_block_part(rest)?)
        }
        [side @ ("encoder" | "decoder"), "mid_block", "attentions", "0", rest @ ..] => {
            format!("{side}.middle.1.{}", join(rest)?)
        }
        ["decoder", "up_blocks", i, "resnets", j, rest @ ..] => {
            let n = index(i)?.checked_mul(per_level)?.checked_add(index(j)?)?;
            format!("decoder.upsamples.{n}.{}", vae_block_part(rest)?)
        }
        ["decoder", "up_blocks", i, "upsamplers", "0", rest @ ..] => {
            let n = index(i)?
                .checked_mul(per_level)?
                .checked_add(r.checked_add(1)?)?;
            format!("decoder.upsamples.{n}.{}", vae_block_part(rest)?)
        }
        _ => return None,
    };
    Some(out)
}

/// Wan DiT hyperparameters, from original-name shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WanDitConfig {
    pub dim: Option<u64>,
    pub in_channels: Option<u64>,
    pub out_channels: Option<u64>,
    /// (t, h, w) from the 5-D `patch_embedding.weight`.
    pub patch_size: Option<[u64; 3]>,
    pub blocks: usize,
    pub head_dim: u64,
    pub heads: Option<u64>,
    pub ffn_dim: Option<u64>,
    /// umT5 width (`text_embedding.0` input).
    pub text_dim: Option<u64>,
    /// Sinusoid width (`time_embedding.0` input).
    pub freq_dim: Option<u64>,
    /// Image-to-video: CLIP image cross-attention, or more input channels than output channels
    /// (latent conditioning concatenated, as in Wan2.2 I2V which has no CLIP branch).
    pub i2v: bool,
    /// `k_img` / `v_img` / `img_emb`: the Wan2.1 I2V CLIP image branch.
    pub image_cross_attention: bool,
    /// CLIP feature width (`img_emb.proj.0`, 1280 for CLIP-H).
    pub clip_dim: Option<u64>,
    /// Affine cross-attention norm (`blocks.N.norm3`).
    pub cross_attn_norm: bool,
    /// `img_emb.emb_pos` (first-last-frame model).
    pub first_last_frame: bool,
}

pub(crate) fn dit_config(s: &Shapes) -> WanDitConfig {
    let patch = s.get("patch_embedding.weight");
    let dim = patch
        .and_then(|p| p.first().copied())
        .or_else(|| s.dim("head.head.weight", 1))
        .or_else(|| s.dim("blocks.0.self_attn.q.weight", 1));
    let patch_size = patch.and_then(|p| match p {
        [_, _, t, h, w] => Some([*t, *h, *w]),
        _ => None,
    });
    let patch_elems = patch_size.and_then(|[t, h, w]| t.checked_mul(h)?.checked_mul(w));
    let out_channels = s
        .dim("head.head.weight", 0)
        .and_then(|o| exact_div(o, patch_elems?));
    let in_channels = patch.and_then(|p| p.get(1).copied());
    let blocks = s.count("blocks.");
    let image_cross_attention = s.any_with_prefix("img_emb.")
        || s.indices("blocks.")
            .into_iter()
            .any(|n| s.has(&format!("blocks.{n}.cross_attn.k_img.weight")));
    let i2v =
        image_cross_attention || matches!((in_channels, out_channels), (Some(i), Some(o)) if i > o);
    WanDitConfig {
        dim,
        in_channels,
        out_channels,
        patch_size,
        blocks,
        head_dim: DIT_HEAD_DIM,
        heads: dim.and_then(|d| exact_div(d, DIT_HEAD_DIM)),
        ffn_dim: s.dim("blocks.0.ffn.0.weight", 0),
        text_dim: s.dim("text_embedding.0.weight", 1),
        freq_dim: s.dim("time_embedding.0.weight", 1),
        i2v,
        image_cross_attention,
        clip_dim: s
            .dim("img_emb.proj.0.weight", 0)
            .or_else(|| s.dim("img_emb.proj.1.weight", 1)),
        cross_attn_norm: s.has("blocks.0.norm3.weight"),
        first_last_frame: s.has("img_emb.emb_pos"),
    }
}

pub(crate) fn dit_summary(c: &WanDitConfig) -> String {
    let kind = if c.image_cross_attention {
        if c.first_last_frame {
            "Wan2.1 FLF2V DiT"
        } else {
            "Wan2.1 I2V DiT"
        }
    } else if c.i2v {
        "Wan I2V DiT (no CLIP image branch)"
    } else {
        "Wan T2V DiT"
    };
    format!(
        "{kind}, dim {}, {} blocks, {} heads, ffn {}",
        opt(c.dim),
        c.blocks,
        opt(c.heads),
        opt(c.ffn_dim)
    )
}

/// Wan VAE hyperparameters, from original-name shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WanVaeConfig {
    /// Channels of the first level (`dim`, 96 for Wan2.1).
    pub base_dim: Option<u64>,
    /// Latent channels (16 for Wan2.1).
    pub z_dim: Option<u64>,
    /// Encoder input channels (3 for Wan2.1; 12 for the patchified Wan2.2 VAE).
    pub in_channels: Option<u64>,
    pub dim_mult: Vec<u64>,
    pub num_res_blocks: Option<usize>,
    /// Per downsampling step: whether it also halves time.
    pub temporal_downsample: Vec<bool>,
}

#[derive(Default)]
struct Level {
    channels: Option<u64>,
    res: usize,
}

pub(crate) fn vae_config(s: &Shapes) -> WanVaeConfig {
    let base = s.dim("encoder.conv1.weight", 0);
    let mut levels: Vec<Level> = vec![Level::default()];
    let mut tdown = Vec::new();
    for n in s.indices("encoder.downsamples.") {
        let p = format!("encoder.downsamples.{n}.");
        if s.any_with_prefix(&format!("{p}resample.")) {
            tdown.push(s.any_with_prefix(&format!("{p}time_conv.")));
            levels.push(Level::default());
        } else if let Some(ch) = s.dim(&format!("{p}residual.6.weight"), 0) {
            if let Some(l) = levels.last_mut() {
                l.channels = Some(ch);
                l.res += 1;
            }
        }
    }
    while levels.last().is_some_and(|l| l.res == 0) {
        levels.pop();
    }
    let mult: Option<Vec<u64>> = levels
        .iter()
        .map(|l| exact_div(l.channels?, base?))
        .collect();
    let z = s
        .dim("conv2.weight", 0)
        .or_else(|| s.dim("conv1.weight", 0).and_then(|d| exact_div(d, 2)))
        .or_else(|| s.dim("decoder.conv1.weight", 1));
    WanVaeConfig {
        base_dim: base,
        z_dim: z,
        in_channels: s.dim("encoder.conv1.weight", 1),
        dim_mult: mult.unwrap_or_default(),
        num_res_blocks: levels.first().map(|l| l.res).filter(|&r| r > 0),
        temporal_downsample: tdown,
    }
}

pub(crate) fn vae_summary(c: &WanVaeConfig) -> String {
    let mult = if c.dim_mult.is_empty() {
        "?".to_string()
    } else {
        list(&c.dim_mult)
    };
    format!(
        "Wan VAE, base {}, z {}, mult {}",
        opt(c.base_dim),
        opt(c.z_dim),
        mult
    )
}
