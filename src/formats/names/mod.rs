//! Architecture detection and name maps.
//!
//! A weight file is recognised from its tensor names and shapes (GGUF `general.architecture` is
//! only a hint): [`detect`] finds the architecture, the naming layout, the prefix the names carry
//! (`model.diffusion_model.`, `conditioner.embedders.1.model.`, ...), and the file's markers
//! (`v_pred`, `ztsnr`). Networks' configs are not read here: each model infers its own from the
//! canonical names ([`crate::models::network::Network::describe`]). [`normalize`] maps a stored name to our canonical name for that architecture.
//!
//! Canonical layouts (the names our models load):
//! | architecture | canonical names |
//! |---|---|
//! | SDXL UNet, SDXL VAE | ldm names without prefix (`input_blocks.4.1.proj_in.weight`, `encoder.down.0.block.0.conv1.weight`) |
//! | SDXL checkpoint | ldm names with the ldm component prefixes ([`SDXL_CHECKPOINT_PREFIXES`]) |
//! | CLIP-L text | HF `text_model.*` (+ `text_projection.weight` if present) |
//! | OpenCLIP bigG text | open_clip names without prefix (`transformer.resblocks.N.attn.in_proj_weight`, `ln_final`, `text_projection`) |
//! | CLIP-H vision | HF `vision_model.*`, `visual_projection.weight` |
//! | umT5 | llama.cpp GGUF names (`enc.blk.N.attn_q.weight`, `token_embd.weight`, `enc.output_norm.weight`) |
//! | Wan DiT, Wan VAE | original Wan names (`blocks.N.self_attn.q.weight`, `encoder.downsamples.N.residual.2.weight`) |
//!
//! umT5 is canonical in llama.cpp names because the file most users have is city96's GGUF; HF
//! names (`encoder.block.N.layer.0.SelfAttention.q.weight`, `shared.weight`) map onto them one to
//! one. Shapes stay in PyTorch order in every layout.
//!
//! Not every stored tensor is a plain rename of a canonical one; [`NameMap`] says how it relates
//! (the bigG q/k/v split, the transposed bigG projection, the SDXL VAE's Linear-vs-1x1-conv
//! attention). Loaders must honour it; this module never touches tensor data.

mod clip;
mod lora;
mod pattern;
mod sdxl;
mod t5;
mod wan;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use super::{MetaValue, TensorInfo};
use pattern::{full_match, tail_match, Shapes};

pub use lora::{
    kohya_flatten, parse_lora_name, LoraConfig, LoraKey, LoraKind, LoraPart, LoraTarget,
};

/// What a weight file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// UNet + both text encoders + VAE in one ldm file.
    SdxlCheckpoint,
    SdxlUnet,
    /// CLIP-L text encoder, HF names.
    ClipL,
    /// OpenCLIP bigG text encoder: open_clip names or HF `CLIPTextModelWithProjection`.
    ClipG,
    SdxlVae,
    WanDitI2v,
    WanDitT2v,
    /// umT5 (or T5) encoder: HF or llama.cpp GGUF names.
    Umt5,
    ClipVisionH,
    WanVae,
    /// kohya / LyCORIS / PEFT / ComfyUI (`diff`) LoRA.
    Lora,
    Unknown,
}

impl Architecture {
    pub const ALL: [Architecture; 12] = [
        Architecture::SdxlCheckpoint,
        Architecture::SdxlUnet,
        Architecture::ClipL,
        Architecture::ClipG,
        Architecture::SdxlVae,
        Architecture::WanDitI2v,
        Architecture::WanDitT2v,
        Architecture::Umt5,
        Architecture::ClipVisionH,
        Architecture::WanVae,
        Architecture::Lora,
        Architecture::Unknown,
    ];

    /// Short stable name ("sdxl-unet", "wan-dit-i2v").
    pub fn name(self) -> &'static str {
        match self {
            Architecture::SdxlCheckpoint => "sdxl-checkpoint",
            Architecture::SdxlUnet => "sdxl-unet",
            Architecture::ClipL => "clip-l",
            Architecture::ClipG => "clip-g",
            Architecture::SdxlVae => "sdxl-vae",
            Architecture::WanDitI2v => "wan-dit-i2v",
            Architecture::WanDitT2v => "wan-dit-t2v",
            Architecture::Umt5 => "umt5",
            Architecture::ClipVisionH => "clip-vision-h",
            Architecture::WanVae => "wan-vae",
            Architecture::Lora => "lora",
            Architecture::Unknown => "unknown",
        }
    }

    /// One line for humans.
    pub fn description(self) -> &'static str {
        match self {
            Architecture::SdxlCheckpoint => {
                "SDXL checkpoint: UNet, CLIP-L and OpenCLIP bigG text encoders and VAE in one file"
            }
            Architecture::SdxlUnet => "SDXL UNet (denoiser)",
            Architecture::ClipL => "CLIP-L text encoder (SDXL's first text encoder)",
            Architecture::ClipG => "OpenCLIP bigG text encoder (SDXL's second text encoder)",
            Architecture::SdxlVae => "SDXL VAE (4-channel latent, 8x)",
            Architecture::WanDitI2v => "Wan image-to-video diffusion transformer",
            Architecture::WanDitT2v => "Wan text-to-video diffusion transformer",
            Architecture::Umt5 => "umT5 text encoder (Wan's text encoder)",
            Architecture::ClipVisionH => "CLIP-H/14 vision encoder (Wan I2V image conditioning)",
            Architecture::WanVae => "Wan video VAE (causal 3-D)",
            Architecture::Lora => "LoRA / LyCORIS adapter",
            Architecture::Unknown => "not a recognised architecture",
        }
    }

    /// Parse [`Architecture::name`].
    pub fn from_name(name: &str) -> Option<Architecture> {
        Architecture::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the tensors of a file are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// The reference implementation's names: ldm (SDXL UNet/VAE), open_clip (bigG), original Wan.
    Original,
    Diffusers,
    HfTransformers,
    /// llama.cpp GGUF names (`enc.blk.N.attn_q.weight`).
    LlamaCpp,
    /// ComfyUI LoRA naming: model paths with `lora_down`/`lora_up`/`diff`/`diff_b`.
    ComfyUi,
    /// kohya-ss LoRA naming (`lora_unet_input_blocks_4_1_..`), also used by LyCORIS.
    Kohya,
    /// PEFT LoRA naming (`lora_A`/`lora_B`).
    Peft,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Original => "original",
            Layout::Diffusers => "diffusers",
            Layout::HfTransformers => "hf-transformers",
            Layout::LlamaCpp => "llama-cpp",
            Layout::ComfyUi => "comfyui",
            Layout::Kohya => "kohya",
            Layout::Peft => "peft",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a stored tensor relates to a canonical one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NameMap {
    /// Same values, same shape (up to singleton dims a GGUF writer may drop).
    Rename(String),
    /// The stored 2-D tensor is the transpose of the canonical one (HF bigG
    /// `text_projection.weight` [proj, width] vs open_clip `text_projection` [width, proj]).
    Transpose(String),
    /// The stored tensor is chunk `index` of `parts` equal chunks along dim 0 (outermost) of the
    /// canonical tensor `target` (HF q/k/v projections vs open_clip's fused `in_proj_weight`:
    /// q = index 0, k = 1, v = 2). The loader concatenates the parts.
    SplitOf {
        target: String,
        index: usize,
        parts: usize,
    },
    /// Same values in the same order; the canonical tensor has extra trailing singleton dims
    /// (diffusers' SDXL VAE attention Linear [c, c] vs ldm's 1x1 conv [c, c, 1, 1]).
    Reshape(String),
}

impl NameMap {
    /// The canonical tensor this stored tensor belongs to.
    pub fn target(&self) -> &str {
        match self {
            NameMap::Rename(t) | NameMap::Transpose(t) | NameMap::Reshape(t) => t,
            NameMap::SplitOf { target, .. } => target,
        }
    }

    /// The canonical name if this is a plain rename.
    pub fn rename(&self) -> Option<&str> {
        match self {
            NameMap::Rename(t) => Some(t),
            _ => None,
        }
    }
}

/// Block structure that some diffusers -> original maps need (diffusers numbers blocks per level,
/// the originals number them in one flat list). [`NameContext::default`] is the real models'
/// structure; [`detect`] infers it from the names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NameContext {
    /// SDXL UNet: resnets per down level (`layers_per_block`).
    pub unet_layers_per_block: usize,
    /// SDXL UNet: whether each diffusers up block (deepest first) has attentions; decides where
    /// its upsampler sits in ldm's `output_blocks.N.{1,2}`.
    pub unet_up_attention: Vec<bool>,
    /// SDXL VAE: resolution levels (diffusers numbers decoder levels in reverse).
    pub vae_levels: usize,
    /// Wan VAE: residual blocks per level (`num_res_blocks`; the decoder has one more).
    pub wan_vae_res_blocks: usize,
}

impl Default for NameContext {
    /// SDXL base and Wan2.1 VAE structure (diffusers' SDXL and Wan configs).
    fn default() -> Self {
        NameContext {
            unet_layers_per_block: 2,
            unet_up_attention: vec![true, true, false],
            vae_levels: 4,
            wan_vae_res_blocks: 2,
        }
    }
}

/// The canonical ldm prefixes of an SDXL checkpoint's components.
pub const SDXL_CHECKPOINT_PREFIXES: [(Architecture, &str); 4] = [
    (Architecture::SdxlUnet, "model.diffusion_model."),
    (Architecture::ClipL, "conditioner.embedders.0.transformer."),
    (Architecture::ClipG, "conditioner.embedders.1.model."),
    (Architecture::SdxlVae, "first_stage_model."),
];

/// One recognised component of a file (a checkpoint has several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Component {
    pub architecture: Architecture,
    pub layout: Layout,
    /// Stored prefix of this component's names ("" for none).
    pub prefix: String,
    /// Stored tensors under that prefix.
    pub tensors: usize,
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub architecture: Architecture,
    pub layout: Layout,
    /// Prefix stripped from every name ("model.diffusion_model."); `None` when there is none or
    /// when components carry different prefixes (checkpoints, see `components`).
    pub prefix: Option<String>,
    /// One line: for a LoRA its adapters ("kohya LoRA, 2 modules (UNet), rank 4, ..."), for an
    /// unknown file why; for a network its architecture's description (the network's config is
    /// described by its model: `pipeline::inspect`).
    pub summary: String,
    /// A LoRA's adapters.
    pub lora: Option<LoraConfig>,
    /// The file has a `v_pred` key (Illustrious / NoobAI v-prediction SDXL checkpoints).
    pub v_prediction: bool,
    /// The file has a `ztsnr` key next to `v_pred`: ComfyUI then rescales the schedule to zero
    /// terminal SNR (comfy/supported_models.py `SDXL.model_type`; `ztsnr` alone counts for
    /// nothing).
    pub zero_terminal_snr: bool,
    /// `general.architecture` names another known architecture than the tensors show.
    pub hint_disagrees: bool,
    /// Every component recognised (the main one first).
    pub components: Vec<Component>,
    /// Block structure used by [`Detection::normalize`].
    pub context: NameContext,
    /// Stored tensors that [`Detection::normalize`] does not map (buffers such as
    /// `position_ids`, extras such as `model_ema.*`, or names we do not know).
    pub unmapped: usize,
    /// GGUF `general.architecture`, if the file had one.
    pub hint: Option<String>,
}

impl Detection {
    /// Canonical name of a stored tensor of this file, `None` if it is not part of the
    /// architecture (or not recognised).
    pub fn normalize(&self, stored: &str) -> Option<NameMap> {
        if stored == "scaled_fp8" || stored.ends_with(".scaled_fp8") {
            return Some(NameMap::Rename("scaled_fp8".into()));
        }
        match self.architecture {
            Architecture::Unknown => None,
            Architecture::Lora => lora::normalize(self.layout, stored),
            Architecture::SdxlCheckpoint => {
                let comp = self
                    .components
                    .iter()
                    .filter(|c| !c.prefix.is_empty() && stored.starts_with(&c.prefix))
                    .max_by_key(|c| c.prefix.len())?;
                let rest = stored.get(comp.prefix.len()..)?;
                let mapped = map_component(&self.context, comp.architecture, comp.layout, rest)?;
                with_checkpoint_prefix(comp.architecture, mapped)
            }
            arch => {
                let rest = match &self.prefix {
                    Some(p) => stored.strip_prefix(p.as_str())?,
                    None => stored,
                };
                map_component(&self.context, arch, self.layout, rest)
            }
        }
    }
}

/// Canonical name of a stored tensor, for a file of `arch` in `layout`, with the real models'
/// block structure ([`NameContext::default`]). A leading prefix is recognised and stripped
/// (whatever precedes the first segment that starts one of the architecture's names). Use
/// [`Detection::normalize`] for a file that [`detect`] has seen: it knows the exact prefix and
/// the file's block structure.
pub fn normalize(arch: Architecture, layout: Layout, name: &str) -> Option<NameMap> {
    normalize_with(&NameContext::default(), arch, layout, name)
}

/// [`normalize`] with an explicit block structure.
pub fn normalize_with(
    ctx: &NameContext,
    arch: Architecture,
    layout: Layout,
    name: &str,
) -> Option<NameMap> {
    if name == "scaled_fp8" || name.ends_with(".scaled_fp8") {
        return Some(NameMap::Rename("scaled_fp8".into()));
    }
    match arch {
        Architecture::Unknown => None,
        Architecture::Lora => lora::normalize(layout, name),
        Architecture::SdxlCheckpoint => {
            let (comp, prefix) = SDXL_CHECKPOINT_PREFIXES
                .iter()
                .find(|(_, p)| name.starts_with(p))?;
            let rest = name.get(prefix.len()..)?;
            let comp_layout = match comp {
                Architecture::SdxlUnet | Architecture::SdxlVae => layout,
                Architecture::ClipL => Layout::HfTransformers,
                _ => Layout::Original,
            };
            let mapped = map_component(ctx, *comp, comp_layout, rest)?;
            with_checkpoint_prefix(*comp, mapped)
        }
        _ => {
            let rest = strip_known_prefix(arch, name);
            map_component(ctx, arch, layout, rest)
        }
    }
}

fn with_checkpoint_prefix(comp: Architecture, mapped: NameMap) -> Option<NameMap> {
    let (_, prefix) = SDXL_CHECKPOINT_PREFIXES.iter().find(|(a, _)| *a == comp)?;
    Some(match mapped {
        NameMap::Rename(t) => NameMap::Rename(format!("{prefix}{t}")),
        NameMap::Transpose(t) => NameMap::Transpose(format!("{prefix}{t}")),
        NameMap::Reshape(t) => NameMap::Reshape(format!("{prefix}{t}")),
        NameMap::SplitOf {
            target,
            index,
            parts,
        } => NameMap::SplitOf {
            target: format!("{prefix}{target}"),
            index,
            parts,
        },
    })
}

/// Segment sequences that start a name of `arch` in any of its layouts.
fn roots(arch: Architecture) -> &'static [&'static [&'static str]] {
    match arch {
        Architecture::SdxlUnet => &[
            &["input_blocks"],
            &["middle_block"],
            &["output_blocks"],
            &["out"],
            &["time_embed"],
            &["label_emb"],
            &["conv_in"],
            &["conv_out"],
            &["conv_norm_out"],
            &["time_embedding"],
            &["add_embedding"],
            &["down_blocks"],
            &["up_blocks"],
            &["mid_block"],
        ],
        Architecture::SdxlVae | Architecture::WanVae => &[
            &["encoder"],
            &["decoder"],
            &["quant_conv"],
            &["post_quant_conv"],
            &["conv1"],
            &["conv2"],
        ],
        Architecture::WanDitI2v | Architecture::WanDitT2v => &[
            &["patch_embedding"],
            &["text_embedding"],
            &["time_embedding"],
            &["time_projection"],
            &["blocks"],
            &["head"],
            &["img_emb"],
            &["condition_embedder"],
            &["scale_shift_table"],
            &["proj_out"],
        ],
        Architecture::ClipL => &[
            &["text_model"],
            &["embeddings"],
            &["encoder", "layers"],
            &["final_layer_norm"],
            &["text_projection"],
        ],
        Architecture::ClipG => &[
            &["text_model"],
            &["embeddings"],
            &["encoder", "layers"],
            &["final_layer_norm"],
            &["text_projection"],
            &["token_embedding"],
            &["positional_embedding"],
            &["transformer", "resblocks"],
            &["ln_final"],
            &["logit_scale"],
        ],
        Architecture::ClipVisionH => &[
            &["vision_model"],
            &["visual_projection"],
            &["embeddings"],
            &["encoder", "layers"],
            &["pre_layrnorm"],
            &["post_layernorm"],
        ],
        Architecture::Umt5 => &[
            &["encoder", "block"],
            &["encoder", "final_layer_norm"],
            &["encoder", "embed_tokens"],
            &["shared"],
            &["decoder"],
            &["lm_head"],
            &["enc", "blk"],
            &["enc", "output_norm"],
            &["token_embd"],
        ],
        Architecture::SdxlCheckpoint | Architecture::Lora | Architecture::Unknown => &[],
    }
}

fn starts_with_root(arch: Architecture, name: &str) -> bool {
    let segs: Vec<&str> = name.split('.').collect();
    roots(arch)
        .iter()
        .any(|root| segs.len() >= root.len() && segs.iter().zip(root.iter()).all(|(a, b)| a == b))
}

fn strip_known_prefix(arch: Architecture, name: &str) -> &str {
    let segs: Vec<&str> = name.split('.').collect();
    let mut offset = 0usize;
    for i in 0..segs.len() {
        let hit = roots(arch).iter().any(|root| {
            segs.get(i..i + root.len())
                .is_some_and(|s| s.iter().zip(root.iter()).all(|(a, b)| a == b))
        });
        if hit {
            return name.get(offset..).unwrap_or(name);
        }
        offset += segs[i].len() + 1;
    }
    name
}

/// Map a name with its prefix already stripped.
fn map_component(
    ctx: &NameContext,
    arch: Architecture,
    layout: Layout,
    rest: &str,
) -> Option<NameMap> {
    if rest == "scaled_fp8" {
        return Some(NameMap::Rename("scaled_fp8".into()));
    }
    // ComfyUI "scaled fp8" files store a scale next to each fp8 weight.
    for aux in [".scale_weight", ".scale_input"] {
        if let Some(base) = rest.strip_suffix(aux) {
            return match map_plain(ctx, arch, layout, &format!("{base}.weight"))? {
                NameMap::Rename(t) => t
                    .strip_suffix(".weight")
                    .map(|b| NameMap::Rename(format!("{b}{aux}"))),
                _ => None,
            };
        }
    }
    map_plain(ctx, arch, layout, rest)
}

fn map_plain(ctx: &NameContext, arch: Architecture, layout: Layout, rest: &str) -> Option<NameMap> {
    // Only names that start like the architecture's names: another component stored in the
    // same file (a VAE next to a DiT) is not renamed into this one.
    if !starts_with_root(arch, rest) {
        return None;
    }
    match arch {
        Architecture::SdxlUnet => sdxl::map_unet(ctx, layout, rest),
        Architecture::SdxlVae => sdxl::map_vae(ctx, layout, rest),
        Architecture::ClipL => clip::map_clip_l(rest),
        Architecture::ClipG => clip::map_clip_g(layout, rest),
        Architecture::ClipVisionH => clip::map_vision(rest),
        Architecture::Umt5 => t5::map(layout, rest),
        Architecture::WanDitI2v | Architecture::WanDitT2v => wan::map_dit(layout, rest),
        Architecture::WanVae => wan::map_vae(ctx, layout, rest),
        Architecture::SdxlCheckpoint | Architecture::Lora | Architecture::Unknown => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

/// A family of weights recognised from names, before the shape tests that split it (CLIP-L vs
/// bigG, Wan I2V vs T2V).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    WanDit,
    Unet,
    Umt5,
    OpenClipText,
    HfClipText,
    ClipVision,
    WanVae,
    SdxlVae,
}

struct Signature {
    family: Family,
    layout: Layout,
    /// Pattern the end of some name must match; what precedes it is the prefix.
    anchor: &'static str,
    /// Patterns that some other name (under the same prefix) must match in full.
    also: &'static [&'static str],
    /// Rank of the anchor tensor, where it tells families apart (2-D vs 3-D convs).
    ndim: Option<usize>,
    /// Segments that belong to canonical names, not to the prefix, when the anchor follows them.
    inner: Option<&'static str>,
}

const fn sig(
    family: Family,
    layout: Layout,
    anchor: &'static str,
    also: &'static [&'static str],
    ndim: Option<usize>,
    inner: Option<&'static str>,
) -> Signature {
    Signature {
        family,
        layout,
        anchor,
        also,
        ndim,
        inner,
    }
}

#[rustfmt::skip]
const SIGNATURES: &[Signature] = &[
    // family, layout, anchor, also, anchor rank, inner prefix
    sig(Family::WanDit, Layout::Original, "blocks.#.self_attn.q.weight", &["blocks.#.cross_attn.q.weight"], None, None),
    sig(Family::WanDit, Layout::Original, "patch_embedding.weight", &["time_embedding.0.weight"], None, None),
    sig(Family::WanDit, Layout::Diffusers, "blocks.#.attn1.to_q.weight", &["blocks.#.ffn.net.0.proj.weight"], None, None),
    sig(Family::WanDit, Layout::Diffusers, "condition_embedder.time_embedder.linear_1.weight", &[], None, None),
    sig(Family::Unet, Layout::Original, "input_blocks.#.0.in_layers.2.weight", &[], None, None),
    sig(Family::Unet, Layout::Original, "output_blocks.#.0.in_layers.2.weight", &[], None, None),
    sig(Family::Unet, Layout::Diffusers, "down_blocks.#.resnets.#.time_emb_proj.weight", &[], None, None),
    sig(Family::Unet, Layout::Diffusers, "up_blocks.#.resnets.#.time_emb_proj.weight", &[], None, None),
    sig(Family::SdxlVae, Layout::Original, "encoder.down.#.block.#.conv1.weight", &[], None, None),
    sig(Family::SdxlVae, Layout::Original, "decoder.up.#.block.#.conv1.weight", &[], None, None),
    sig(Family::SdxlVae, Layout::Diffusers, "encoder.down_blocks.#.resnets.#.conv1.weight", &[], Some(4), None),
    sig(Family::SdxlVae, Layout::Diffusers, "decoder.up_blocks.#.resnets.#.conv1.weight", &[], Some(4), None),
    sig(Family::WanVae, Layout::Original, "encoder.downsamples.#.residual.2.weight", &[], None, None),
    sig(Family::WanVae, Layout::Original, "decoder.upsamples.#.residual.2.weight", &[], None, None),
    sig(Family::WanVae, Layout::Diffusers, "encoder.down_blocks.#.conv1.weight", &[], Some(5), None),
    sig(Family::WanVae, Layout::Diffusers, "decoder.up_blocks.#.resnets.#.conv1.weight", &[], Some(5), None),
    sig(Family::HfClipText, Layout::HfTransformers, "embeddings.token_embedding.weight", &[], None, Some("text_model.")),
    sig(Family::HfClipText, Layout::HfTransformers, "encoder.layers.#.self_attn.q_proj.weight", &["final_layer_norm.weight"], None, Some("text_model.")),
    sig(Family::OpenClipText, Layout::Original, "transformer.resblocks.#.attn.in_proj_weight", &["ln_final.weight"], None, None),
    sig(Family::OpenClipText, Layout::Original, "token_embedding.weight", &["positional_embedding"], None, None),
    sig(Family::ClipVision, Layout::HfTransformers, "embeddings.patch_embedding.weight", &[], None, Some("vision_model.")),
    sig(Family::ClipVision, Layout::HfTransformers, "encoder.layers.#.self_attn.q_proj.weight", &["post_layernorm.weight"], None, Some("vision_model.")),
    sig(Family::Umt5, Layout::HfTransformers, "encoder.block.#.layer.0.SelfAttention.q.weight", &[], None, None),
    sig(Family::Umt5, Layout::LlamaCpp, "enc.blk.#.attn_q.weight", &[], None, None),
    sig(Family::Umt5, Layout::LlamaCpp, "token_embd.weight", &["enc.output_norm.weight"], None, None),
];

#[derive(Clone, Debug)]
struct Candidate {
    family: Family,
    layout: Layout,
    prefix: String,
    coverage: usize,
}

/// A tensor's name and shape (after `comfy.gguf.orig_shape` overrides).
struct Entry<'a> {
    name: &'a str,
    shape: Vec<u64>,
}

fn find_candidates(entries: &[Entry<'_>]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = Vec::new();
    for sig in SIGNATURES {
        let mut prefixes: BTreeSet<&str> = BTreeSet::new();
        for e in entries {
            if let Some(p) = tail_match(e.name, sig.anchor) {
                if sig.ndim.is_none_or(|n| e.shape.len() == n) {
                    prefixes.insert(p);
                }
            }
        }
        for p in prefixes {
            let ok = sig.also.iter().all(|pat| {
                entries.iter().any(|e| {
                    e.name
                        .strip_prefix(p)
                        .is_some_and(|rest| full_match(rest, pat))
                })
            });
            if !ok {
                continue;
            }
            let prefix = match sig.inner {
                Some(inner) => p.strip_suffix(inner).unwrap_or(p),
                None => p,
            };
            if found
                .iter()
                .any(|c| c.family == sig.family && c.prefix == prefix)
            {
                continue;
            }
            let coverage = entries
                .iter()
                .filter(|e| e.name.starts_with(prefix))
                .count();
            found.push(Candidate {
                family: sig.family,
                layout: sig.layout,
                prefix: prefix.to_string(),
                coverage,
            });
        }
    }
    found
}

fn hint_agrees(hint: &str, family: Family) -> bool {
    let h = hint.to_ascii_lowercase();
    match family {
        Family::WanDit => h == "wan",
        Family::Unet => h == "sdxl",
        Family::Umt5 => h == "t5encoder" || h == "t5" || h == "umt5",
        _ => false,
    }
}

fn hint_known(hint: &str) -> bool {
    matches!(
        hint.to_ascii_lowercase().as_str(),
        "wan" | "sdxl" | "t5encoder" | "t5" | "umt5"
    )
}

/// Canonical names and shapes of the entries under `prefix`, for one component.
fn canonical_shapes(
    entries: &[Entry<'_>],
    ctx: &NameContext,
    arch: Architecture,
    layout: Layout,
    prefix: &str,
) -> Shapes {
    let mut shapes = Shapes::default();
    for e in entries {
        let Some(rest) = e.name.strip_prefix(prefix) else {
            continue;
        };
        let Some(m) = map_component(ctx, arch, layout, rest) else {
            continue;
        };
        match m {
            NameMap::Rename(t) | NameMap::Reshape(t) => shapes.insert(t, e.shape.clone()),
            NameMap::Transpose(t) => shapes.insert(t, e.shape.iter().rev().copied().collect()),
            NameMap::SplitOf { target, parts, .. } => {
                let mut s = e.shape.clone();
                if let Some(d0) = s.first_mut() {
                    *d0 = d0.saturating_mul(parts as u64);
                }
                shapes.insert(target, s);
            }
        }
    }
    shapes
}

/// Infer the block structure the name maps need from the stored names of one component.
fn infer_context(
    entries: &[Entry<'_>],
    family: Family,
    layout: Layout,
    prefix: &str,
) -> NameContext {
    let mut ctx = NameContext::default();
    if layout != Layout::Diffusers {
        return ctx;
    }
    let mut raw = Shapes::default();
    for e in entries {
        if let Some(rest) = e.name.strip_prefix(prefix) {
            raw.insert(rest.to_string(), Vec::new());
        }
    }
    match family {
        Family::Unet => {
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
        Family::SdxlVae => {
            let l = raw
                .count("encoder.down_blocks.")
                .max(raw.count("decoder.up_blocks."));
            if l > 0 {
                ctx.vae_levels = l;
            }
        }
        Family::WanVae => {
            let r = raw.count("decoder.up_blocks.0.resnets.");
            if r > 1 {
                ctx.wan_vae_res_blocks = r - 1;
            }
        }
        _ => {}
    }
    ctx
}

/// The architecture of a candidate: the families that cover two architectures decide by shape
/// (Wan DiT I2V vs T2V, HF-named CLIP-L vs bigG).
fn resolve(
    entries: &[Entry<'_>],
    ctx: &NameContext,
    family: Family,
    layout: Layout,
    prefix: &str,
) -> Architecture {
    match family {
        Family::WanDit => {
            let shapes = canonical_shapes(entries, ctx, Architecture::WanDitI2v, layout, prefix);
            if wan::dit_is_i2v(&shapes) {
                Architecture::WanDitI2v
            } else {
                Architecture::WanDitT2v
            }
        }
        Family::Unet => Architecture::SdxlUnet,
        Family::SdxlVae => Architecture::SdxlVae,
        Family::WanVae => Architecture::WanVae,
        Family::OpenClipText => Architecture::ClipG,
        Family::HfClipText => {
            let l = canonical_shapes(entries, ctx, Architecture::ClipL, layout, prefix);
            clip::classify_text(prefix, &l)
        }
        Family::ClipVision => Architecture::ClipVisionH,
        Family::Umt5 => Architecture::Umt5,
    }
}

/// What the metadata contributes.
struct Meta<'a> {
    hint: Option<&'a str>,
    orig_shapes: HashMap<&'a str, Vec<u64>>,
    v_pred: bool,
    ztsnr: bool,
}

impl<'a> Meta<'a> {
    fn read(metadata: &'a [(String, MetaValue)]) -> Meta<'a> {
        let mut meta = Meta {
            hint: None,
            orig_shapes: HashMap::new(),
            v_pred: false,
            ztsnr: false,
        };
        for (k, v) in metadata {
            if k == "general.architecture" {
                meta.hint = v.as_str();
            } else if let Some(name) = k.strip_prefix("comfy.gguf.orig_shape.") {
                if let MetaValue::Array(items) = v {
                    let dims: Option<Vec<u64>> = items.iter().map(MetaValue::as_u64).collect();
                    if let Some(dims) = dims.filter(|d| d.len() <= 8) {
                        meta.orig_shapes.insert(name, dims);
                    }
                }
            }
        }
        meta
    }
}

/// Recognise a weight file from its tensor names and shapes. Never fails: what it cannot
/// recognise comes back as [`Architecture::Unknown`] with a summary saying why.
pub fn detect(tensors: &[TensorInfo], metadata: &[(String, MetaValue)]) -> Detection {
    let mut meta = Meta::read(metadata);
    let entries: Vec<Entry<'_>> = tensors
        .iter()
        .map(|t| Entry {
            name: t.name.as_str(),
            shape: meta
                .orig_shapes
                .get(t.name.as_str())
                .cloned()
                .unwrap_or_else(|| t.shape.clone()),
        })
        .collect();
    meta.v_pred = entries.iter().any(|e| e.name == "v_pred");
    meta.ztsnr = entries.iter().any(|e| e.name == "ztsnr");
    let hint = meta.hint.map(str::to_string);

    let unknown = |summary: String| Detection {
        architecture: Architecture::Unknown,
        layout: Layout::Original,
        prefix: None,
        summary,
        lora: None,
        v_prediction: false,
        zero_terminal_snr: false,
        hint_disagrees: false,
        components: Vec::new(),
        context: NameContext::default(),
        unmapped: entries.len(),
        hint: hint.clone(),
    };

    if entries.is_empty() {
        return unknown("no tensors".into());
    }

    if let Some((layout, cfg)) = lora::detect(entries.iter().map(|e| (e.name, e.shape.as_slice())))
    {
        let summary = lora::summary(layout, &cfg);
        let mut det = Detection {
            architecture: Architecture::Lora,
            layout,
            prefix: None,
            summary,
            lora: Some(cfg),
            v_prediction: false,
            zero_terminal_snr: false,
            hint_disagrees: false,
            components: vec![Component {
                architecture: Architecture::Lora,
                layout,
                prefix: String::new(),
                tensors: entries.len(),
            }],
            context: NameContext::default(),
            unmapped: 0,
            hint: hint.clone(),
        };
        det.unmapped = entries
            .iter()
            .filter(|e| det.normalize(e.name).is_none())
            .count();
        return det;
    }

    let candidates = find_candidates(&entries);
    if candidates.is_empty() {
        let mut s = format!("unrecognised tensor names ({} tensors", entries.len());
        if let Some(h) = &hint {
            s.push_str(&format!(", general.architecture \"{h}\""));
        }
        s.push(')');
        return unknown(s);
    }

    // An ldm checkpoint: a UNet plus SDXL text encoders or VAE under other prefixes.
    let unet = candidates
        .iter()
        .filter(|c| c.family == Family::Unet)
        .max_by_key(|c| c.coverage);
    if let Some(u) = unet {
        let others: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| {
                matches!(
                    c.family,
                    Family::HfClipText | Family::OpenClipText | Family::SdxlVae
                ) && c.prefix != u.prefix
                    && !c.prefix.is_empty()
            })
            .collect();
        if !others.is_empty() && !u.prefix.is_empty() {
            return checkpoint(&entries, u, &others, &meta, hint);
        }
    }

    // One component: the one covering most tensors; ties go to the metadata hint, then to the
    // order of `Family`.
    let best = candidates
        .iter()
        .max_by(|a, b| {
            a.coverage
                .cmp(&b.coverage)
                .then_with(|| {
                    let ha = meta.hint.is_some_and(|h| hint_agrees(h, a.family));
                    let hb = meta.hint.is_some_and(|h| hint_agrees(h, b.family));
                    ha.cmp(&hb)
                })
                .then_with(|| b.family.cmp(&a.family))
        })
        .cloned();
    let Some(best) = best else {
        return unknown("unrecognised tensor names".into());
    };
    let ctx = infer_context(&entries, best.family, best.layout, &best.prefix);
    let arch = resolve(&entries, &ctx, best.family, best.layout, &best.prefix);
    let hint_disagrees = meta
        .hint
        .is_some_and(|h| hint_known(h) && !hint_agrees(h, best.family));
    let mut components = vec![Component {
        architecture: arch,
        layout: best.layout,
        prefix: best.prefix.clone(),
        tensors: best.coverage,
    }];
    for c in &candidates {
        if c.family != best.family || c.prefix != best.prefix {
            let cctx = infer_context(&entries, c.family, c.layout, &c.prefix);
            let arch = resolve(&entries, &cctx, c.family, c.layout, &c.prefix);
            if !components
                .iter()
                .any(|x| x.prefix == c.prefix && x.architecture == arch)
            {
                components.push(Component {
                    architecture: arch,
                    layout: c.layout,
                    prefix: c.prefix.clone(),
                    tensors: c.coverage,
                });
            }
        }
    }
    let mut det = Detection {
        architecture: arch,
        layout: best.layout,
        prefix: (!best.prefix.is_empty()).then(|| best.prefix.clone()),
        summary: arch.description().to_string(),
        lora: None,
        v_prediction: meta.v_pred,
        zero_terminal_snr: meta.v_pred && meta.ztsnr,
        hint_disagrees,
        components,
        context: ctx,
        unmapped: 0,
        hint,
    };
    det.unmapped = entries
        .iter()
        .filter(|e| det.normalize(e.name).is_none())
        .count();
    det
}

fn checkpoint(
    entries: &[Entry<'_>],
    unet: &Candidate,
    others: &[&Candidate],
    meta: &Meta<'_>,
    hint: Option<String>,
) -> Detection {
    let mut components = Vec::new();
    let mut ctx = NameContext::default();

    let uctx = infer_context(entries, unet.family, unet.layout, &unet.prefix);
    if unet.layout == Layout::Diffusers {
        ctx.unet_layers_per_block = uctx.unet_layers_per_block;
        ctx.unet_up_attention = uctx.unet_up_attention.clone();
    }
    components.push(Component {
        architecture: Architecture::SdxlUnet,
        layout: unet.layout,
        prefix: unet.prefix.clone(),
        tensors: unet.coverage,
    });

    // Largest coverage first, so that one component of each kind wins.
    let mut others: Vec<&Candidate> = others.to_vec();
    others.sort_by_key(|c| std::cmp::Reverse(c.coverage));
    for c in others {
        let cctx = infer_context(entries, c.family, c.layout, &c.prefix);
        let arch = resolve(entries, &cctx, c.family, c.layout, &c.prefix);
        let wanted = matches!(
            arch,
            Architecture::ClipL | Architecture::ClipG | Architecture::SdxlVae
        );
        if !wanted || components.iter().any(|x| x.architecture == arch) {
            continue;
        }
        if arch == Architecture::SdxlVae && c.layout == Layout::Diffusers {
            ctx.vae_levels = cctx.vae_levels;
        }
        components.push(Component {
            architecture: arch,
            layout: c.layout,
            prefix: c.prefix.clone(),
            tensors: c.coverage,
        });
    }
    let mut det = Detection {
        architecture: Architecture::SdxlCheckpoint,
        layout: unet.layout,
        prefix: None,
        summary: Architecture::SdxlCheckpoint.description().to_string(),
        lora: None,
        v_prediction: meta.v_pred,
        zero_terminal_snr: meta.v_pred && meta.ztsnr,
        hint_disagrees: false,
        components,
        context: ctx,
        unmapped: 0,
        hint,
    };
    det.unmapped = entries
        .iter()
        .filter(|e| det.normalize(e.name).is_none())
        .count();
    det
}

#[cfg(test)]
mod tests;
