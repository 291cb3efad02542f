//! SDXL UNet and VAE: diffusers -> ldm name maps and configs inferred from ldm shapes.
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

use serde::Serialize;

use super::pattern::{exact_div, index, list, opt, Shapes};
use super::{Layout, NameContext, NameMap};

/// SDXL attention head size (MODELS.md: head dim 64 for the UNet).
pub const UNET_HEAD_DIM: u64 = 64;

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

/// SDXL UNet hyperparameters, from ldm shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnetConfig {
    pub in_channels: Option<u64>,
    pub out_channels: Option<u64>,
    pub model_channels: Option<u64>,
    /// Channels of each level over `model_channels` (empty if a level's width is missing).
    pub channel_mult: Vec<u64>,
    /// Resnets per down level.
    pub num_res_blocks: Option<usize>,
    /// Transformer blocks per attention of each level (0: no attention).
    pub transformer_depth: Vec<usize>,
    pub transformer_depth_middle: Option<usize>,
    pub head_dim: u64,
    /// Heads per level: level channels / head_dim (`None` where not divisible).
    pub heads: Vec<Option<u64>>,
    /// Cross-attention context width (2048 for SDXL: CLIP-L 768 + bigG 1280).
    pub context_dim: Option<u64>,
    /// Input width of `label_emb` (SDXL: 2816 = 1280 pooled + 6 x 256); `None` without one.
    pub adm_in_channels: Option<u64>,
    pub time_embed_dim: Option<u64>,
    /// `proj_in`/`proj_out` are Linear (SDXL) rather than 1x1 convs.
    pub linear_projection: Option<bool>,
    /// The file has a `v_pred` key (Illustrious / NoobAI v-prediction checkpoints).
    pub v_pred: bool,
    /// The file has a `ztsnr` key: with `v_pred`, ComfyUI rescales the schedule to zero
    /// terminal SNR (comfy/supported_models.py SDXL.model_type).
    pub ztsnr: bool,
}

#[derive(Default)]
struct Level {
    channels: Option<u64>,
    res: usize,
    depth: usize,
}

pub(crate) fn unet_config(s: &Shapes, v_pred: bool, ztsnr: bool) -> UnetConfig {
    let model_channels = s.dim("input_blocks.0.0.weight", 0);
    let mut levels: Vec<Level> = vec![Level::default()];
    for k in s.indices("input_blocks.") {
        if k == 0 {
            continue;
        }
        let p = format!("input_blocks.{k}.");
        if s.any_with_prefix(&format!("{p}0.op.")) {
            levels.push(Level::default());
            continue;
        }
        let Some(level) = levels.last_mut() else {
            break;
        };
        if let Some(ch) = s
            .dim(&format!("{p}0.out_layers.3.weight"), 0)
            .or_else(|| s.dim(&format!("{p}0.in_layers.2.weight"), 0))
        {
            level.channels = Some(ch);
            level.res += 1;
        }
        level.depth = level
            .depth
            .max(s.count(&format!("{p}1.transformer_blocks.")));
    }
    while levels.last().is_some_and(|l| l.res == 0) {
        levels.pop();
    }
    let channel_mult: Option<Vec<u64>> = levels
        .iter()
        .map(|l| exact_div(l.channels?, model_channels?))
        .collect();
    let context_dim = first_with_suffix(s, ".attn2.to_k.weight").and_then(|sh| sh.get(1).copied());
    let linear_projection = first_with_suffix(s, ".proj_in.weight").map(|sh| sh.len() == 2);
    let middle = s.count("middle_block.1.transformer_blocks.");
    UnetConfig {
        in_channels: s.dim("input_blocks.0.0.weight", 1),
        out_channels: s.dim("out.2.weight", 0),
        model_channels,
        channel_mult: channel_mult.unwrap_or_default(),
        num_res_blocks: levels.first().map(|l| l.res).filter(|&r| r > 0),
        transformer_depth: levels.iter().map(|l| l.depth).collect(),
        transformer_depth_middle: (s.any_with_prefix("middle_block.")).then_some(middle),
        head_dim: UNET_HEAD_DIM,
        heads: levels
            .iter()
            .map(|l| l.channels.and_then(|c| exact_div(c, UNET_HEAD_DIM)))
            .collect(),
        context_dim,
        adm_in_channels: s.dim("label_emb.0.0.weight", 1),
        time_embed_dim: s.dim("time_embed.0.weight", 0),
        linear_projection,
        v_pred,
        ztsnr,
    }
}

fn first_with_suffix<'a>(s: &'a Shapes, suffix: &str) -> Option<&'a [u64]> {
    s.first_matching(|k| k.ends_with(suffix))
}

pub(crate) fn unet_summary(c: &UnetConfig) -> String {
    let mult = if c.channel_mult.is_empty() {
        "?".to_string()
    } else {
        list(&c.channel_mult)
    };
    let mut s = format!(
        "SDXL UNet, {} channels, mult {}, transformer depth {}, context {}",
        opt(c.model_channels),
        mult,
        list(&c.transformer_depth),
        opt(c.context_dim)
    );
    if c.adm_in_channels.is_none() {
        s.push_str(", no label_emb (not an SDXL UNet?)");
    }
    if c.v_pred {
        s.push_str(", v-prediction");
        if c.ztsnr {
            s.push_str(", zero terminal SNR");
        }
    }
    s
}

/// SDXL VAE hyperparameters, from ldm shapes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SdxlVaeConfig {
    pub in_channels: Option<u64>,
    pub out_channels: Option<u64>,
    /// Channels of the first level (`ch`).
    pub base_channels: Option<u64>,
    pub channel_mult: Vec<u64>,
    pub num_res_blocks: Option<usize>,
    pub latent_channels: Option<u64>,
    /// Whether the encoder half is present (decoder-only files exist).
    pub has_encoder: bool,
    pub has_decoder: bool,
}

pub(crate) fn vae_config(s: &Shapes) -> SdxlVaeConfig {
    let base = s
        .dim("encoder.conv_in.weight", 0)
        .or_else(|| s.dim("decoder.conv_out.weight", 1));
    let enc_levels = s.count("encoder.down.");
    let dec_levels = s.count("decoder.up.");
    let level_ch = |i: usize| {
        s.dim(&format!("encoder.down.{i}.block.0.conv2.weight"), 0)
            .or_else(|| s.dim(&format!("decoder.up.{i}.block.0.conv2.weight"), 0))
    };
    let levels = enc_levels.max(dec_levels);
    let mult: Option<Vec<u64>> = (0..levels)
        .map(|i| exact_div(level_ch(i)?, base?))
        .collect();
    let res = s.count("encoder.down.0.block.");
    let latent = s
        .dim("post_quant_conv.weight", 0)
        .or_else(|| s.dim("quant_conv.weight", 0).and_then(|d| exact_div(d, 2)))
        .or_else(|| s.dim("decoder.conv_in.weight", 1))
        .or_else(|| {
            s.dim("encoder.conv_out.weight", 0)
                .and_then(|d| exact_div(d, 2))
        });
    SdxlVaeConfig {
        in_channels: s.dim("encoder.conv_in.weight", 1),
        out_channels: s.dim("decoder.conv_out.weight", 0),
        base_channels: base,
        channel_mult: mult.unwrap_or_default(),
        num_res_blocks: (res > 0).then_some(res),
        latent_channels: latent,
        has_encoder: s.any_with_prefix("encoder."),
        has_decoder: s.any_with_prefix("decoder."),
    }
}

pub(crate) fn vae_summary(c: &SdxlVaeConfig) -> String {
    let mult = if c.channel_mult.is_empty() {
        "?".to_string()
    } else {
        list(&c.channel_mult)
    };
    let mut s = format!(
        "SDXL VAE, {} channels, mult {}, {} latent channels",
        opt(c.base_channels),
        mult,
        opt(c.latent_channels)
    );
    if !c.has_encoder {
        s.push_str(", decoder only");
    } else if !c.has_decoder {
        s.push_str(", encoder only");
    }
    s
}
