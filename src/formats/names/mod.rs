//! Architecture detection and name maps.
//!
//! A weight file is recognised from its tensor names and shapes (GGUF `general.architecture` is
//! only a hint): [`detect`] finds the architecture, the naming layout, the prefix the names carry
//! (`model.diffusion_model.`, `conditioner.embedders.1.model.`, ...), and the file's markers
//! (`v_pred`, `ztsnr`). Networks' configs are not read here: each model infers its own from the
//! canonical names ([`crate::models::network::Network::describe`]). [`normalize`] maps a stored
//! name to our canonical name for that architecture.
//!
//! What is recognised is declared by the networks, not here: each network's model file declares
//! (next to its `NETWORK` static, registered in [`crate::models::network::NETWORKS`])
//! - a [`Naming`] per [`Architecture`] it runs: the architecture's name and one-line
//!   description, the segments its names start with (roots), and its name map
//!   ([`MapFn`]: stored name -> [`NameMap`]);
//! - a [`Recognition`] per kind of file it comes in: the name patterns that find it
//!   ([`Signature`]s: layout, anchor, other names, anchor rank, inner prefix), the architectures
//!   a match may be and how shapes decide between them (Wan DiT I2V vs T2V, HF CLIP-L vs bigG),
//!   the block structure its diffusers names need ([`NameContext`]), the
//!   `general.architecture` values that name it, and its tie-break priority.
//!
//! [`detect`] and the name maps iterate over the registered ones ([`recognitions`]). The name
//! maps themselves sit in this module's `sdxl`, `clip`, `t5` and `wan` files, which the model
//! files point at; a new network may keep its own in its model file. Only what is not one network
//! stays here: the SDXL checkpoint (UNet, text encoders and VAE under the ldm prefixes,
//! [`SDXL_CHECKPOINT_PREFIXES`]), LoRAs (`lora`) and unknown files.
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

pub(crate) mod clip;
mod lora;
mod pattern;
pub(crate) mod sdxl;
pub(crate) mod t5;
pub(crate) mod wan;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;

use super::{MetaValue, TensorInfo};
pub(crate) use pattern::Shapes;
use pattern::{full_match, tail_match};

pub use lora::{
    kohya_flatten, parse_lora_name, LoraConfig, LoraKey, LoraKind, LoraPart, LoraTarget,
};

/// What a weight file holds: a short stable name ("sdxl-unet", "wan-dit-i2v"). The networks'
/// architectures are declared with their networks ([`Naming`], registered through
/// [`crate::models::network::NETWORKS`]); the consts below name the ones the code refers to.
/// [`Architecture::SDXL_CHECKPOINT`], [`Architecture::LORA`] and [`Architecture::UNKNOWN`] are
/// not networks: detection knows them itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Architecture(&'static str);

impl Architecture {
    /// UNet + both text encoders + VAE in one ldm file.
    pub const SDXL_CHECKPOINT: Architecture = Architecture("sdxl-checkpoint");
    pub const SDXL_UNET: Architecture = Architecture("sdxl-unet");
    /// CLIP-L text encoder, HF names.
    pub const CLIP_L: Architecture = Architecture("clip-l");
    /// OpenCLIP bigG text encoder: open_clip names or HF `CLIPTextModelWithProjection`.
    pub const CLIP_G: Architecture = Architecture("clip-g");
    pub const SDXL_VAE: Architecture = Architecture("sdxl-vae");
    pub const WAN_DIT_I2V: Architecture = Architecture("wan-dit-i2v");
    pub const WAN_DIT_T2V: Architecture = Architecture("wan-dit-t2v");
    /// umT5 (or T5) encoder: HF or llama.cpp GGUF names.
    pub const UMT5: Architecture = Architecture("umt5");
    pub const CLIP_VISION_H: Architecture = Architecture("clip-vision-h");
    pub const WAN_VAE: Architecture = Architecture("wan-vae");
    /// kohya / LyCORIS / PEFT / ComfyUI (`diff`) LoRA.
    pub const LORA: Architecture = Architecture("lora");
    pub const UNKNOWN: Architecture = Architecture("unknown");

    /// Every architecture: the SDXL checkpoint, those of the registered networks, LoRA and
    /// unknown (iterate it: `for a in Architecture::ALL`).
    pub const ALL: AllArchitectures = AllArchitectures;

    /// An architecture named `name` (kebab-case). A new network declares its own const with
    /// this and a [`Naming`] for it.
    pub const fn new(name: &'static str) -> Architecture {
        Architecture(name)
    }

    /// Short stable name ("sdxl-unet", "wan-dit-i2v").
    pub fn name(self) -> &'static str {
        self.0
    }

    /// One line for humans.
    pub fn description(self) -> &'static str {
        match self {
            Architecture::SDXL_CHECKPOINT => {
                "SDXL checkpoint: UNet, CLIP-L and OpenCLIP bigG text encoders and VAE in one file"
            }
            Architecture::LORA => "LoRA / LyCORIS adapter",
            arch => naming(arch).map_or("not a recognised architecture", |n| n.description),
        }
    }

    /// Parse [`Architecture::name`].
    pub fn from_name(name: &str) -> Option<Architecture> {
        Architecture::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// [`Architecture::ALL`]: iterates over every architecture, the registered networks' in
/// registration order.
#[derive(Clone, Copy, Debug)]
pub struct AllArchitectures;

impl IntoIterator for AllArchitectures {
    type Item = Architecture;
    type IntoIter = std::vec::IntoIter<Architecture>;

    fn into_iter(self) -> Self::IntoIter {
        let mut all = vec![Architecture::SDXL_CHECKPOINT];
        for n in namings() {
            if !all.contains(&n.architecture) {
                all.push(n.architecture);
            }
        }
        all.extend([Architecture::LORA, Architecture::UNKNOWN]);
        all.into_iter()
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// In CamelCase ("WanDitI2v"), as the enum it was printed.
impl fmt::Debug for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for word in self.0.split('-') {
            let mut chars = word.chars();
            if let Some(c) = chars.next() {
                write!(f, "{}{}", c.to_ascii_uppercase(), chars.as_str())?;
            }
        }
        Ok(())
    }
}

impl Serialize for Architecture {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
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

// ---------------------------------------------------------------------------------------------
// What each network declares
// ---------------------------------------------------------------------------------------------

/// Maps a stored name of one architecture (its prefix stripped) to its canonical name.
pub type MapFn = fn(&NameContext, Layout, &str) -> Option<NameMap>;

/// Fills in the block structure its name map needs from a component's stored names (`raw`:
/// the names without prefix, with no shapes).
pub(crate) type ContextFn = fn(&mut NameContext, Layout, &Shapes);

/// Which of its architectures a recognised component is, from its prefix and its canonical
/// names and shapes (in the names of the recognition's first architecture).
pub(crate) type ResolveFn = fn(&str, &Shapes) -> Architecture;

/// One architecture's names: what [`Detection::normalize`] and [`normalize`] use for a file or
/// component of it. Declared by the network that runs it (its model file).
#[derive(Debug)]
pub struct Naming {
    pub architecture: Architecture,
    /// One line for humans ([`Architecture::description`]).
    pub description: &'static str,
    /// Segment sequences that start a name of the architecture in any of its layouts: what
    /// [`normalize`] strips before them, and what other names (another component stored in
    /// the same file, a VAE next to a DiT) fail.
    pub roots: &'static [&'static [&'static str]],
    /// Stored name (prefix stripped, starting with a root) -> canonical name.
    pub map: MapFn,
}

/// One naming pattern of a file kind: some tensor's name ends with `anchor`, the part before it
/// is the prefix.
#[derive(Debug)]
pub struct Signature {
    pub(crate) layout: Layout,
    /// Pattern the end of some name must match; what precedes it is the prefix (`#` matches an
    /// index).
    pub(crate) anchor: &'static str,
    /// Patterns that some other name (under the same prefix) must match in full.
    pub(crate) also: &'static [&'static str],
    /// Rank of the anchor tensor, where it tells kinds apart (2-D vs 3-D convs).
    pub(crate) ndim: Option<usize>,
    /// Segments that belong to canonical names, not to the prefix, when the anchor follows them.
    pub(crate) inner: Option<&'static str>,
}

/// A [`Signature`]: layout, anchor, also, anchor rank, inner prefix.
pub(crate) const fn sig(
    layout: Layout,
    anchor: &'static str,
    also: &'static [&'static str],
    ndim: Option<usize>,
    inner: Option<&'static str>,
) -> Signature {
    Signature {
        layout,
        anchor,
        also,
        ndim,
        inner,
    }
}

/// How [`detect`] recognises one kind of weight file (or component of one) from its names:
/// declared by the network(s) it carries, next to their `NETWORK` static, and found through
/// [`crate::models::network::NETWORKS`]. One kind may cover several architectures that the
/// names alone do not tell apart (Wan DiT I2V vs T2V, HF CLIP-L vs bigG): its `resolve`
/// decides by shape.
#[derive(Debug)]
pub struct Recognition {
    /// For messages and tests ("wan-dit", "hf-clip-text").
    pub(crate) name: &'static str,
    /// Ties between kinds whose candidates cover as many tensors (and agree as well with the
    /// `general.architecture` hint) go to the lower priority. Unique among the registered ones.
    pub(crate) priority: u8,
    /// Where its components come in [`Detection::components`] after the main one (lower first).
    /// Unique among the registered ones.
    pub(crate) listing: u8,
    pub(crate) signatures: &'static [Signature],
    /// The architectures a match may be, the default first.
    pub(crate) architectures: &'static [&'static Naming],
    /// The block structure its diffusers names need (`None`: the defaults).
    pub(crate) context: Option<ContextFn>,
    /// Which of [`Recognition::architectures`] a match is (`None`: the first).
    pub(crate) resolve: Option<ResolveFn>,
    /// GGUF `general.architecture` values (lower case) that name this kind.
    pub(crate) hints: &'static [&'static str],
}

impl Recognition {
    /// Whether a match may be `arch`.
    pub fn may_be(&self, arch: Architecture) -> bool {
        self.architectures.iter().any(|n| n.architecture == arch)
    }

    /// Its name ("wan-dit").
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The registered recognitions and namings, from [`crate::models::network::NETWORKS`].
struct Registry {
    /// In listing order.
    recognitions: Vec<&'static Recognition>,
    /// Each architecture once, in registration order.
    namings: Vec<&'static Naming>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut recognitions = crate::models::network::recognitions();
        let mut namings: Vec<&'static Naming> = Vec::new();
        for r in &recognitions {
            for n in r.architectures {
                if !namings.iter().any(|s| s.architecture == n.architecture) {
                    namings.push(n);
                }
            }
        }
        recognitions.sort_by_key(|r| r.listing);
        Registry {
            recognitions,
            namings,
        }
    })
}

/// The registered recognitions, in listing order.
pub fn recognitions() -> &'static [&'static Recognition] {
    &registry().recognitions
}

/// The registered namings (each architecture once).
fn namings() -> impl Iterator<Item = &'static Naming> {
    registry().namings.iter().copied()
}

/// The registered naming of `arch`.
fn naming(arch: Architecture) -> Option<&'static Naming> {
    namings().find(|n| n.architecture == arch)
}

/// The canonical ldm prefixes of an SDXL checkpoint's components.
pub const SDXL_CHECKPOINT_PREFIXES: [(Architecture, &str); 4] = [
    (Architecture::SDXL_UNET, "model.diffusion_model."),
    (Architecture::CLIP_L, "conditioner.embedders.0.transformer."),
    (Architecture::CLIP_G, "conditioner.embedders.1.model."),
    (Architecture::SDXL_VAE, "first_stage_model."),
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
        // ComfyUI's text encoder files embed their sentencepiece model.
        if stored == "spiece_model" {
            return Some(NameMap::Rename("spiece_model".into()));
        }
        match self.architecture {
            Architecture::UNKNOWN => None,
            Architecture::LORA => lora::normalize(self.layout, stored),
            Architecture::SDXL_CHECKPOINT => {
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
        Architecture::UNKNOWN => None,
        Architecture::LORA => lora::normalize(layout, name),
        Architecture::SDXL_CHECKPOINT => {
            let (comp, prefix) = SDXL_CHECKPOINT_PREFIXES
                .iter()
                .find(|(_, p)| name.starts_with(p))?;
            let rest = name.get(prefix.len()..)?;
            let comp_layout = match *comp {
                Architecture::SDXL_UNET | Architecture::SDXL_VAE => layout,
                Architecture::CLIP_L => Layout::HfTransformers,
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

/// Whether `name` starts with one of `roots` (segment sequences, [`Naming::roots`]).
fn starts_with_root(roots: &[&[&str]], name: &str) -> bool {
    let segs: Vec<&str> = name.split('.').collect();
    roots
        .iter()
        .any(|root| segs.len() >= root.len() && segs.iter().zip(root.iter()).all(|(a, b)| a == b))
}

/// `name` from the first segment that starts one of `arch`'s roots (all of it if none does).
fn strip_known_prefix(arch: Architecture, name: &str) -> &str {
    let roots = naming(arch).map_or(&[][..], |n| n.roots);
    let segs: Vec<&str> = name.split('.').collect();
    let mut offset = 0usize;
    for i in 0..segs.len() {
        let hit = roots.iter().any(|root| {
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
    // ComfyUI's scaled fp8 files store a scale (and a `comfy_quant` JSON) next to each fp8
    // weight (crate::formats::quant); they map next to their weight's canonical name.
    for aux in [
        ".scale_weight",
        ".scale_input",
        ".weight_scale",
        ".input_scale",
        ".comfy_quant",
    ] {
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
    let naming = naming(arch)?;
    // Only names that start like the architecture's names: another component stored in the
    // same file (a VAE next to a DiT) is not renamed into this one.
    if !starts_with_root(naming.roots, rest) {
        return None;
    }
    (naming.map)(ctx, layout, rest)
}

// ---------------------------------------------------------------------------------------------
// Detection
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Candidate {
    rec: &'static Recognition,
    layout: Layout,
    prefix: String,
    coverage: usize,
}

impl Candidate {
    fn same_kind(&self, other: &Candidate) -> bool {
        std::ptr::eq(self.rec, other.rec)
    }
}

/// A tensor's name and shape (after `comfy.gguf.orig_shape` overrides).
struct Entry<'a> {
    name: &'a str,
    shape: Vec<u64>,
}

fn find_candidates(entries: &[Entry<'_>], recognitions: &[&'static Recognition]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = Vec::new();
    for &rec in recognitions {
        for sig in rec.signatures {
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
                    .any(|c| std::ptr::eq(c.rec, rec) && c.prefix == prefix)
                {
                    continue;
                }
                let coverage = entries
                    .iter()
                    .filter(|e| e.name.starts_with(prefix))
                    .count();
                found.push(Candidate {
                    rec,
                    layout: sig.layout,
                    prefix: prefix.to_string(),
                    coverage,
                });
            }
        }
    }
    found
}

/// Whether the `general.architecture` hint names `rec`.
fn hint_agrees(hint: &str, rec: &Recognition) -> bool {
    let h = hint.to_ascii_lowercase();
    rec.hints.contains(&h.as_str())
}

/// Whether the `general.architecture` hint names a registered kind.
fn hint_known(hint: &str, recognitions: &[&'static Recognition]) -> bool {
    recognitions.iter().any(|r| hint_agrees(hint, r))
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
fn infer_context(entries: &[Entry<'_>], c: &Candidate) -> NameContext {
    let mut ctx = NameContext::default();
    let Some(context) = c.rec.context else {
        return ctx;
    };
    let mut raw = Shapes::default();
    for e in entries {
        if let Some(rest) = e.name.strip_prefix(c.prefix.as_str()) {
            raw.insert(rest.to_string(), Vec::new());
        }
    }
    context(&mut ctx, c.layout, &raw);
    ctx
}

/// The architecture of a candidate: a kind that covers several architectures decides by shape
/// (Wan DiT I2V vs T2V, HF-named CLIP-L vs bigG).
fn resolve(entries: &[Entry<'_>], ctx: &NameContext, c: &Candidate) -> Architecture {
    let Some(first) = c.rec.architectures.first() else {
        return Architecture::UNKNOWN;
    };
    let Some(resolve) = c.rec.resolve else {
        return first.architecture;
    };
    let shapes = canonical_shapes(entries, ctx, first.architecture, c.layout, &c.prefix);
    let arch = resolve(&c.prefix, &shapes);
    if c.rec.may_be(arch) {
        arch
    } else {
        first.architecture
    }
}

/// The shapes city96's GGUF tools record for tensors they stored in another shape
/// (`comfy.gguf.orig_shape.<name>`: 5-D convolutions, and SD1/SDXL tensors whose last dim is not
/// a multiple of 256, stored as rows of 256 for the K-quants), by stored name.
pub fn orig_shapes(metadata: &[(String, MetaValue)]) -> HashMap<&str, Vec<u64>> {
    let mut out = HashMap::new();
    for (k, v) in metadata {
        if let (Some(name), MetaValue::Array(items)) = (k.strip_prefix("comfy.gguf.orig_shape."), v)
        {
            let dims: Option<Vec<u64>> = items.iter().map(MetaValue::as_u64).collect();
            if let Some(dims) = dims.filter(|d| d.len() <= 8) {
                out.insert(name, dims);
            }
        }
    }
    out
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
        Meta {
            hint: metadata
                .iter()
                .find(|(k, _)| k == "general.architecture")
                .and_then(|(_, v)| v.as_str()),
            orig_shapes: orig_shapes(metadata),
            v_pred: false,
            ztsnr: false,
        }
    }
}

/// Recognise a weight file from its tensor names and shapes. Never fails: what it cannot
/// recognise comes back as [`Architecture::UNKNOWN`] with a summary saying why.
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
        architecture: Architecture::UNKNOWN,
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
            architecture: Architecture::LORA,
            layout,
            prefix: None,
            summary,
            lora: Some(cfg),
            v_prediction: false,
            zero_terminal_snr: false,
            hint_disagrees: false,
            components: vec![Component {
                architecture: Architecture::LORA,
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

    let recognitions = recognitions();
    let candidates = find_candidates(&entries, recognitions);
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
        .filter(|c| c.rec.may_be(Architecture::SDXL_UNET))
        .max_by_key(|c| c.coverage);
    if let Some(u) = unet {
        let others: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| {
                SDXL_CHECKPOINT_PREFIXES
                    .iter()
                    .any(|(a, _)| *a != Architecture::SDXL_UNET && c.rec.may_be(*a))
                    && c.prefix != u.prefix
                    && !c.prefix.is_empty()
            })
            .collect();
        if !others.is_empty() && !u.prefix.is_empty() {
            return checkpoint(&entries, u, &others, &meta, hint);
        }
    }

    // One component: the one covering most tensors; ties go to the metadata hint, then to the
    // lower `Recognition::priority`.
    let best = candidates
        .iter()
        .max_by(|a, b| {
            a.coverage
                .cmp(&b.coverage)
                .then_with(|| {
                    let ha = meta.hint.is_some_and(|h| hint_agrees(h, a.rec));
                    let hb = meta.hint.is_some_and(|h| hint_agrees(h, b.rec));
                    ha.cmp(&hb)
                })
                .then_with(|| b.rec.priority.cmp(&a.rec.priority))
        })
        .cloned();
    let Some(best) = best else {
        return unknown("unrecognised tensor names".into());
    };
    let ctx = infer_context(&entries, &best);
    let arch = resolve(&entries, &ctx, &best);
    let hint_disagrees = meta
        .hint
        .is_some_and(|h| hint_known(h, recognitions) && !hint_agrees(h, best.rec));
    let mut components = vec![Component {
        architecture: arch,
        layout: best.layout,
        prefix: best.prefix.clone(),
        tensors: best.coverage,
    }];
    for c in &candidates {
        if !c.same_kind(&best) || c.prefix != best.prefix {
            let cctx = infer_context(&entries, c);
            let arch = resolve(&entries, &cctx, c);
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

    let uctx = infer_context(entries, unet);
    if unet.layout == Layout::Diffusers {
        ctx.unet_layers_per_block = uctx.unet_layers_per_block;
        ctx.unet_up_attention = uctx.unet_up_attention.clone();
    }
    components.push(Component {
        architecture: Architecture::SDXL_UNET,
        layout: unet.layout,
        prefix: unet.prefix.clone(),
        tensors: unet.coverage,
    });

    // Largest coverage first, so that one component of each kind wins.
    let mut others: Vec<&Candidate> = others.to_vec();
    others.sort_by_key(|c| std::cmp::Reverse(c.coverage));
    for c in others {
        let cctx = infer_context(entries, c);
        let arch = resolve(entries, &cctx, c);
        let wanted = arch != Architecture::SDXL_UNET
            && SDXL_CHECKPOINT_PREFIXES.iter().any(|(a, _)| *a == arch);
        if !wanted || components.iter().any(|x| x.architecture == arch) {
            continue;
        }
        if arch == Architecture::SDXL_VAE && c.layout == Layout::Diffusers {
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
        architecture: Architecture::SDXL_CHECKPOINT,
        layout: unet.layout,
        prefix: None,
        summary: Architecture::SDXL_CHECKPOINT.description().to_string(),
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
