//! Wan DiT and Wan VAE 2.1: diffusers -> original name maps, and the I2V test on original shapes.
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

use super::pattern::{exact_div, index, Shapes};
use super::{Architecture, Layout, NameContext, NameMap};

fn join(parts: &[&str]) -> Option<String> {
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

pub(crate) fn map_dit(_: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
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

/// Whether a Wan DiT (original-name shapes) is image-to-video: a CLIP image branch (`img_emb`,
/// `k_img`), or more input channels than output channels (latent conditioning concatenated, as
/// in Wan2.2 I2V which has no CLIP branch).
pub(crate) fn dit_is_i2v(s: &Shapes) -> bool {
    let image_branch = s.any_with_prefix("img_emb.")
        || s.indices("blocks.")
            .into_iter()
            .any(|n| s.has(&format!("blocks.{n}.cross_attn.k_img.weight")));
    let patch = s.get("patch_embedding.weight");
    let in_channels = patch.and_then(|p| p.get(1).copied());
    let patch_elems = patch.and_then(|p| match p {
        [_, _, t, h, w] => t.checked_mul(*h)?.checked_mul(*w),
        _ => None,
    });
    let out_channels = s
        .dim("head.head.weight", 0)
        .and_then(|o| exact_div(o, patch_elems?));
    image_branch || matches!((in_channels, out_channels), (Some(i), Some(o)) if i > o)
}

/// Wan DiT I2V or T2V ([`dit_is_i2v`]); `shapes` are in original (I2V canonical) names.
pub(crate) fn resolve_dit(_prefix: &str, shapes: &Shapes) -> Architecture {
    if dit_is_i2v(shapes) {
        Architecture::WAN_DIT_I2V
    } else {
        Architecture::WAN_DIT_T2V
    }
}

/// Wan VAE block structure from diffusers names: residual blocks per level (the decoder's
/// first up block has one more).
pub(crate) fn vae_context(ctx: &mut NameContext, layout: Layout, raw: &Shapes) {
    if layout != Layout::Diffusers {
        return;
    }
    let r = raw.count("decoder.up_blocks.0.resnets.");
    if r > 1 {
        ctx.wan_vae_res_blocks = r - 1;
    }
}

/// Which Wan2.2 A14B expert a file is, as its name says (the weights of the two experts have
/// the same shapes): Comfy-Org's `wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors`,
/// QuantStack's `Wan2.2-I2V-A14B-HighNoise-Q4_K_M.gguf`, lightx2v's `..._high_noise.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertName {
    HighNoise,
    LowNoise,
}

impl ExpertName {
    /// "high-noise" / "low-noise".
    pub fn words(self) -> &'static str {
        match self {
            ExpertName::HighNoise => "high-noise",
            ExpertName::LowNoise => "low-noise",
        }
    }
}

/// The letters and digits of a file name, lower case ("Wan2.2-I2V-A14B" -> "wan22i2va14b").
fn squashed(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// The expert a Wan2.2 file's name says it is ("high_noise", "HighNoise", "low-noise", ...).
pub fn expert_by_name(path: &std::path::Path) -> Option<ExpertName> {
    let s = squashed(path);
    match (s.contains("highnoise"), s.contains("lownoise")) {
        (true, false) => Some(ExpertName::HighNoise),
        (false, true) => Some(ExpertName::LowNoise),
        _ => None,
    }
}

/// Whether a DiT file's name says Wan2.2 A14B ("wan2.2", "wan22", "a14b", or an expert's
/// "high_noise" / "low_noise"): a Wan2.2 T2V-A14B expert has a Wan2.1 T2V DiT's shapes.
pub fn is_wan22_by_name(path: &std::path::Path) -> bool {
    let s = squashed(path);
    s.contains("wan22") || s.contains("a14b") || expert_by_name(path).is_some()
}
