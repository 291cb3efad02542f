//! SDXL UNet and VAE: diffusers -> ldm name maps.
//!
//! The maps follow the structure that diffusers' own converters encode
//! (`scripts/convert_diffusers_to_original_sdxl.py`, `loaders/single_file_utils.py`), written
//! generally: ldm numbers a UNet's blocks in one flat list per side, diffusers per level.
//! - down level `i`, resnet/attention `j` -> `input_blocks.{1 + i*(R+1) + j}.{0|1}`, its
//!   downsampler -> `input_blocks.{(i+1)*(R+1)}.0.op`, with R = `layers_per_block`;
//! - up block `i` (deepest first, as in ldm), resnet/attention `j` ->
//!   `output_blocks.{i*(R+1) + j}.{0|1}`, its upsampler -> `output_blocks.{i*(R+1) + R}.{2|1}`
//!   (`.2` when the level has attentions);
//! - mid block -> `middle_block.{0,1,2}`.

use super::pattern::{index, Shapes};
use super::{Layout, NameContext, NameMap};

fn join(parts: &[&str]) -> Option<String> {
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("."))
    }
}

fn unet_resnet_part(p: &str) -> Option<&'static str> {
    Some(match p {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "time_emb_proj" => "emb_layers.1",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    })
}

/// UNet: ldm names are canonical; diffusers names are mapped.
pub(crate) fn map_unet(ctx: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::Diffusers => unet_diffusers_to_ldm(ctx, name).map(NameMap::Rename),
        Layout::Original | Layout::ComfyUi => Some(NameMap::Rename(name.to_string())),
        _ => None,
    }
}

fn unet_diffusers_to_ldm(ctx: &NameContext, name: &str) -> Option<String> {
    let segs: Vec<&str> = name.split('.').collect();
    let r = ctx.unet_layers_per_block;
    let step = r.checked_add(1)?;
    let ldm = match segs.as_slice() {
        ["conv_in", rest @ ..] => format!("input_blocks.0.0.{}", join(rest)?),
        ["time_embedding", "linear_1", rest @ ..] => format!("time_embed.0.{}", join(rest)?),
        ["time_embedding", "linear_2", rest @ ..] => format!("time_embed.2.{}", join(rest)?),
        ["add_embedding", "linear_1", rest @ ..] => format!("label_emb.0.0.{}", join(rest)?),
        ["add_embedding", "linear_2", rest @ ..] => format!("label_emb.0.2.{}", join(rest)?),
        ["conv_norm_out", rest @ ..] => format!("out.0.{}", join(rest)?),
        ["conv_out", rest @ ..] => format!("out.2.{}", join(rest)?),
        ["down_blocks", i, "resnets", j, part, rest @ ..] => {
            let n = index(i)?
                .checked_mul(step)?
                .checked_add(index(j)?)?
                .checked_add(1)?;
            format!(
                "input_blocks.{n}.0.{}.{}",
                unet_resnet_part(part)?,
                join(rest)?
            )
        }
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            let n = index(i)?
                .checked_mul(step)?
                .checked_add(index(j)?)?
                .checked_add(1)?;
            format!("input_blocks.{n}.1.{}", join(rest)?)
        }
        ["down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => {
            let n = index(i)?.checked_add(1)?.checked_mul(step)?;
            format!("input_blocks.{n}.0.op.{}", join(rest)?)
        }
        ["up_blocks", i, "resnets", j, part, rest @ ..] => {
            let n = index(i)?.checked_mul(step)?.checked_add(index(j)?)?;
            format!(
                "output_blocks.{n}.0.{}.{}",
                unet_resnet_part(part)?,
                join(rest)?
            )
        }
        ["up_blocks", i, "attentions", j, rest @ ..] => {
            let n = index(i)?.checked_mul(step)?.checked_add(index(j)?)?;
            format!("output_blocks.{n}.1.{}", join(rest)?)
        }
        ["up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let i = index(i)?;
            let n = i.checked_mul(step)?.checked_add(r)?;
            let attn = ctx.unet_up_attention.get(i).copied().unwrap_or(true);
            let sub = if attn { 2 } else { 1 };
            format!("output_blocks.{n}.{sub}.conv.{}", join(rest)?)
        }
        ["mid_block", "resnets", j, part, rest @ ..] => {
            let n = index(j)?.checked_mul(2)?;
            format!(
                "middle_block.{n}.{}.{}",
                unet_resnet_part(part)?,
                join(rest)?
            )
        }
        ["mid_block", "attentions", "0", rest @ ..] => format!("middle_block.1.{}", join(rest)?),
        _ => return None,
    };
    Some(ldm)
}

fn vae_resnet_part(p: &str) -> Option<&'static str> {
    Some(match p {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "conv_shortcut" | "nin_shortcut" => "nin_shortcut",
        _ => return None,
    })
}

/// VAE: ldm names are canonical; diffusers names are mapped.
pub(crate) fn map_vae(ctx: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::Diffusers => vae_diffusers_to_ldm(ctx, name),
        Layout::Original | Layout::ComfyUi => Some(NameMap::Rename(name.to_string())),
        _ => None,
    }
}

fn vae_diffusers_to_ldm(ctx: &NameContext, name: &str) -> Option<NameMap> {
    let segs: Vec<&str> = name.split('.').collect();
    let rename = |s: String| Some(NameMap::Rename(s));
    match segs.as_slice() {
        [q @ ("quant_conv" | "post_quant_conv"), rest @ ..] => {
            rename(format!("{q}.{}", join(rest)?))
        }
        [side @ ("encoder" | "decoder"), c @ ("conv_in" | "conv_out"), rest @ ..] => {
            rename(format!("{side}.{c}.{}", join(rest)?))
        }
        [side @ ("encoder" | "decoder"), "conv_norm_out", rest @ ..] => {
            rename(format!("{side}.norm_out.{}", join(rest)?))
        }
        ["encoder", "down_blocks", i, "resnets", j, part, rest @ ..] => rename(format!(
            "encoder.down.{}.block.{}.{}.{}",
            index(i)?,
            index(j)?,
            vae_resnet_part(part)?,
            join(rest)?
        )),
        ["encoder", "down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => rename(format!(
            "encoder.down.{}.downsample.conv.{}",
            index(i)?,
            join(rest)?
        )),
        ["decoder", "up_blocks", i, "resnets", j, part, rest @ ..] => {
            let lvl = ctx.vae_levels.checked_sub(1)?.checked_sub(index(i)?)?;
            rename(format!(
                "decoder.up.{lvl}.block.{}.{}.{}",
                index(j)?,
                vae_resnet_part(part)?,
                join(rest)?
            ))
        }
        ["decoder", "up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let lvl = ctx.vae_levels.checked_sub(1)?.checked_sub(index(i)?)?;
            rename(format!("decoder.up.{lvl}.upsample.conv.{}", join(rest)?))
        }
        [side @ ("encoder" | "decoder"), "mid_block", "resnets", j, part, rest @ ..] => {
            rename(format!(
                "{side}.mid.block_{}.{}.{}",
                index(j)?.checked_add(1)?,
                vae_resnet_part(part)?,
                join(rest)?
            ))
        }
        [side @ ("encoder" | "decoder"), "mid_block", "attentions", "0", rest @ ..] => {
            let (target, tail): (&str, &[&str]) = match rest {
                ["group_norm", t @ ..] => ("norm", t),
                ["to_q" | "query", t @ ..] => ("q", t),
                ["to_k" | "key", t @ ..] => ("k", t),
                ["to_v" | "value", t @ ..] => ("v", t),
                ["to_out", "0", t @ ..] | ["proj_attn", t @ ..] => ("proj_out", t),
                _ => return None,
            };
            let full = format!("{side}.mid.attn_1.{target}.{}", join(tail)?);
            if target != "norm" && tail == ["weight"] {
                // diffusers: Linear [c, c]; ldm: 1x1 conv [c, c, 1, 1]
                Some(NameMap::Reshape(full))
            } else {
                rename(full)
            }
        }
        _ => None,
    }
}

/// SDXL UNet block structure from diffusers names: resnets per down level, and which up blocks
/// have attentions.
pub(crate) fn unet_context(ctx: &mut NameContext, layout: Layout, raw: &Shapes) {
    if layout != Layout::Diffusers {
        return;
    }
    let r = raw.count("down_blocks.0.resnets.");
    if r > 0 {
        ctx.unet_layers_per_block = r;
    }
    let ups = raw.count("up_blocks.");
    if ups > 0 {
        ctx.unet_up_attention = (0..ups)
            .map(|i| raw.any_with_prefix(&format!("up_blocks.{i}.attentions.")))
            .collect();
    }
}

/// SDXL VAE block structure from diffusers names: resolution levels.
pub(crate) fn vae_context(ctx: &mut NameContext, layout: Layout, raw: &Shapes) {
    if layout != Layout::Diffusers {
        return;
    }
    let l = raw
        .count("encoder.down_blocks.")
        .max(raw.count("decoder.up_blocks."));
    if l > 0 {
        ctx.vae_levels = l;
    }
}
