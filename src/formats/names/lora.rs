//! LoRA-family adapters: recognising their names, the module each tensor adapts, and a summary.
//!
//! Naming schemes seen in users' files:
//! - kohya-ss (also LyCORIS): `lora_unet_<module path with '_' for '.'>.lora_down.weight`,
//!   `lora_te1_...`, `lora_te2_...` (`lora_te_` for single-encoder models); Wan trainers
//!   (musubi-tuner) write `lora_unet_blocks_0_self_attn_q...`.
//! - PEFT: `<module path>.lora_A.weight` / `lora_B.weight`, with a prefix such as
//!   `diffusion_model.` (Wan, original names), `transformer.` (diffusers Wan), `unet.` /
//!   `text_encoder.` / `text_encoder_2.` (diffusers SDXL), `base_model.model.`.
//! - ComfyUI: `<prefix><module path>.lora_down.weight` / `lora_up.weight` / `alpha`, plus
//!   `.diff` (full weight difference) and `.diff_b` (bias difference), e.g. lightx2v's Wan distill
//!   LoRAs under `diffusion_model.`.
//!
//! Canonical LoRA names ([`normalize`]): `<target>.<module>.<part>` with target `unet`, `te1`,
//! `te2`, `wan` or `other`, the module in the target's canonical layout where the stored names
//! allow it (ldm for the UNet, original names for Wan; text-encoder modules keep HF names, which
//! both kohya and PEFT use, since bigG's canonical q/k/v is one fused tensor), and the part in
//! kohya spelling (`lora_down.weight`, `lora_up.weight`, `alpha`, `diff`, ...). kohya modules stay
//! flattened (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`): recovering the dots needs the
//! base model's names, so match them with [`kohya_flatten`] of the canonical module paths.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Architecture, Layout, NameMap};

/// Which network a LoRA module adapts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraTarget {
    Unet,
    /// CLIP-L (SDXL's first text encoder).
    TextEncoder1,
    /// bigG (SDXL's second text encoder).
    TextEncoder2,
    WanDit,
    Other,
}

impl LoraTarget {
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Unet => "unet",
            LoraTarget::TextEncoder1 => "te1",
            LoraTarget::TextEncoder2 => "te2",
            LoraTarget::WanDit => "wan",
            LoraTarget::Other => "other",
        }
    }
}

/// Kind of adapter a tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoraKind {
    /// Low-rank pair (kohya `lora_down`/`lora_up`, PEFT `lora_A`/`lora_B`).
    Lora,
    /// LyCORIS Hadamard product (`hada_*`).
    Loha,
    /// LyCORIS Kronecker product (`lokr_*`).
    Lokr,
    /// Full difference (`diff`, `diff_b`).
    Diff,
}

impl LoraKind {
    pub fn name(self) -> &'static str {
        match self {
            LoraKind::Lora => "lora",
            LoraKind::Loha => "loha",
            LoraKind::Lokr => "lokr",
            LoraKind::Diff => "diff",
        }
    }
}

/// The role of one tensor within its module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraPart {
    /// [rank, in, ...]: kohya `lora_down`, PEFT `lora_A`.
    Down,
    /// [out, rank, ...]: kohya `lora_up`, PEFT `lora_B`.
    Up,
    /// LoCon middle (Tucker) factor.
    Mid,
    Alpha,
    DoraScale,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    /// Full weight difference.
    Diff,
    /// Full bias difference.
    DiffBias,
}

/// Stored suffixes (after the module path and a '.'), longest first where one ends another.
const PARTS: &[(&str, LoraPart)] = &[
    ("lora_A.default.weight", LoraPart::Down),
    ("lora_B.default.weight", LoraPart::Up),
    ("lora_down.weight", LoraPart::Down),
    ("lora_up.weight", LoraPart::Up),
    ("lora_mid.weight", LoraPart::Mid),
    ("lora_A.weight", LoraPart::Down),
    ("lora_B.weight", LoraPart::Up),
    ("lora.down.weight", LoraPart::Down),
    ("lora.up.weight", LoraPart::Up),
    ("alpha", LoraPart::Alpha),
    ("dora_scale", LoraPart::DoraScale),
    ("hada_w1_a", LoraPart::HadaW1A),
    ("hada_w1_b", LoraPart::HadaW1B),
    ("hada_w2_a", LoraPart::HadaW2A),
    ("hada_w2_b", LoraPart::HadaW2B),
    ("hada_t1", LoraPart::HadaT1),
    ("hada_t2", LoraPart::HadaT2),
    ("lokr_w1", LoraPart::LokrW1),
    ("lokr_w1_a", LoraPart::LokrW1A),
    ("lokr_w1_b", LoraPart::LokrW1B),
    ("lokr_w2", LoraPart::LokrW2),
    ("lokr_w2_a", LoraPart::LokrW2A),
    ("lokr_w2_b", LoraPart::LokrW2B),
    ("lokr_t2", LoraPart::LokrT2),
    ("diff", LoraPart::Diff),
    ("diff_b", LoraPart::DiffBias),
];

impl LoraPart {
    /// kohya-style spelling used in canonical LoRA names.
    pub fn suffix(self) -> &'static str {
        match self {
            LoraPart::Down => "lora_down.weight",
            LoraPart::Up => "lora_up.weight",
            LoraPart::Mid => "lora_mid.weight",
            LoraPart::Alpha => "alpha",
            LoraPart::DoraScale => "dora_scale",
            LoraPart::HadaW1A => "hada_w1_a",
            LoraPart::HadaW1B => "hada_w1_b",
            LoraPart::HadaW2A => "hada_w2_a",
            LoraPart::HadaW2B => "hada_w2_b",
            LoraPart::HadaT1 => "hada_t1",
            LoraPart::HadaT2 => "hada_t2",
            LoraPart::LokrW1 => "lokr_w1",
            LoraPart::LokrW1A => "lokr_w1_a",
            LoraPart::LokrW1B => "lokr_w1_b",
            LoraPart::LokrW2 => "lokr_w2",
            LoraPart::LokrW2A => "lokr_w2_a",
            LoraPart::LokrW2B => "lokr_w2_b",
            LoraPart::LokrT2 => "lokr_t2",
            LoraPart::Diff => "diff",
            LoraPart::DiffBias => "diff_b",
        }
    }

    pub fn kind(self) -> Option<LoraKind> {
        match self {
            LoraPart::Down | LoraPart::Up | LoraPart::Mid => Some(LoraKind::Lora),
            LoraPart::HadaW1A
            | LoraPart::HadaW1B
            | LoraPart::HadaW2A
            | LoraPart::HadaW2B
            | LoraPart::HadaT1
            | LoraPart::HadaT2 => Some(LoraKind::Loha),
            LoraPart::LokrW1
            | LoraPart::LokrW1A
            | LoraPart::LokrW1B
            | LoraPart::LokrW2
            | LoraPart::LokrW2A
            | LoraPart::LokrW2B
            | LoraPart::LokrT2 => Some(LoraKind::Lokr),
            LoraPart::Diff | LoraPart::DiffBias => Some(LoraKind::Diff),
            LoraPart::Alpha | LoraPart::DoraScale => None,
        }
    }
}

/// One LoRA tensor's name, taken apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoraKey {
    pub target: LoraTarget,
    /// The adapted module, canonical where possible (see the module docs); kohya keys stay
    /// flattened, without their `lora_unet_`/`lora_te1_` prefix.
    pub module: String,
    pub part: LoraPart,
    /// The stored naming scheme of this tensor.
    pub layout: Layout,
}

fn split_part(name: &str) -> Option<(&str, LoraPart)> {
    PARTS.iter().find_map(|(suffix, part)| {
        let module = name.strip_suffix(suffix)?.strip_suffix('.')?;
        (!module.is_empty()).then_some((module, *part))
    })
}

const KOHYA: &[(&str, LoraTarget)] = &[
    ("lora_te1_", LoraTarget::TextEncoder1),
    ("lora_te2_", LoraTarget::TextEncoder2),
    ("lora_te_", LoraTarget::TextEncoder1),
    ("lora_unet_", LoraTarget::Unet),
];

fn unet_root(first: &str) -> bool {
    matches!(
        first,
        "input_blocks"
            | "middle_block"
            | "output_blocks"
            | "out"
            | "time_embed"
            | "label_emb"
            | "down_blocks"
            | "up_blocks"
            | "mid_block"
            | "conv_in"
            | "conv_out"
            | "time_embedding"
            | "add_embedding"
    )
}

fn wan_root(first: &str) -> bool {
    matches!(
        first,
        "blocks"
            | "head"
            | "img_emb"
            | "text_embedding"
            | "time_embedding"
            | "time_projection"
            | "patch_embedding"
            | "condition_embedder"
            | "proj_out"
    )
}

/// Take a LoRA tensor name apart. `None` if it has no LoRA part suffix.
pub fn parse_lora_name(name: &str) -> Option<LoraKey> {
    let (module, part) = split_part(name)?;
    for (prefix, target) in KOHYA {
        if let Some(rest) = module.strip_prefix(prefix) {
            let target = if *target == LoraTarget::Unet {
                if rest.starts_with("blocks_") {
                    LoraTarget::WanDit
                } else if [
                    "input_blocks_",
                    "middle_block_",
                    "output_blocks_",
                    "down_blocks_",
                    "up_blocks_",
                    "mid_block_",
                    "label_emb_",
                    "time_embed_",
                ]
                .iter()
                .any(|p| rest.starts_with(p))
                {
                    LoraTarget::Unet
                } else {
                    LoraTarget::Other
                }
            } else {
                *target
            };
            return Some(LoraKey {
                target,
                module: rest.to_string(),
                part,
                layout: Layout::Kohya,
            });
        }
    }
    let layout = if name.contains(".lora_A.") || name.contains(".lora_B.") {
        Layout::Peft
    } else {
        Layout::ComfyUi
    };
    // Strip wrapper prefixes; the remaining first segment tells the target.
    let mut rest = module;
    let mut target_hint = None;
    loop {
        let stripped = [
            "base_model.model.",
            "model.diffusion_model.",
            "diffusion_model.",
            "transformer.",
            "unet.",
            "model.",
        ]
        .iter()
        .find_map(|p| rest.strip_prefix(p));
        if let Some(r) = stripped {
            rest = r;
            continue;
        }
        if let Some(r) = rest.strip_prefix("text_encoder_2.") {
            target_hint = Some(LoraTarget::TextEncoder2);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("text_encoder.") {
            target_hint = Some(LoraTarget::TextEncoder1);
            rest = r;
        }
        break;
    }
    let first = rest.split('.').next().unwrap_or("");
    let target = target_hint.unwrap_or(if wan_root(first) {
        LoraTarget::WanDit
    } else if unet_root(first) {
        LoraTarget::Unet
    } else {
        LoraTarget::Other
    });
    let canonical = match target {
        LoraTarget::WanDit => {
            let diffusers = rest.starts_with("condition_embedder.")
                || rest.contains(".attn1.")
                || rest.contains(".attn2.")
                || rest.contains(".ffn.net.")
                || rest.starts_with("scale_shift_table")
                || rest.starts_with("proj_out");
            let layout = if diffusers {
                Layout::Diffusers
            } else {
                Layout::Original
            };
            canonical_module(Architecture::WAN_DIT_I2V, layout, rest)
        }
        LoraTarget::Unet => {
            let diffusers = ["down_blocks", "up_blocks", "mid_block", "conv_in"]
                .iter()
                .any(|r| rest.starts_with(r));
            let layout = if diffusers {
                Layout::Diffusers
            } else {
                Layout::Original
            };
            canonical_module(Architecture::SDXL_UNET, layout, rest)
        }
        _ => None,
    };
    Some(LoraKey {
        target,
        module: canonical.unwrap_or_else(|| rest.to_string()),
        part,
        layout,
    })
}

/// The canonical module path of a stored module path (mapped as its `.weight`).
fn canonical_module(arch: Architecture, layout: Layout, module: &str) -> Option<String> {
    let m = super::normalize(arch, layout, &format!("{module}.weight"))?;
    m.rename()?.strip_suffix(".weight").map(str::to_string)
}

/// kohya's key for a module path: dots become underscores (`input_blocks.4.1.proj_in` ->
/// `input_blocks_4_1_proj_in`). Prepend `lora_unet_` / `lora_te1_` / `lora_te2_` to get the
/// stored key.
pub fn kohya_flatten(module: &str) -> String {
    module.replace('.', "_")
}

pub(crate) fn normalize(_layout: Layout, name: &str) -> Option<NameMap> {
    let key = parse_lora_name(name)?;
    Some(NameMap::Rename(format!(
        "{}.{}.{}",
        key.target.name(),
        key.module,
        key.part.suffix()
    )))
}

/// LoRA summary values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoraConfig {
    /// Adapted modules (distinct target + module).
    pub modules: usize,
    /// Distinct ranks, ascending.
    pub ranks: Vec<u64>,
    pub kinds: Vec<LoraKind>,
    pub targets: Vec<LoraTarget>,
    pub has_alpha: bool,
    pub dora: bool,
}

/// A LoRA if most tensors have LoRA part suffixes; returns the naming layout and the summary
/// values.
pub(crate) fn detect<'a>(
    entries: impl Iterator<Item = (&'a str, &'a [u64])>,
) -> Option<(Layout, LoraConfig)> {
    let mut total = 0usize;
    let mut keys: Vec<(LoraKey, &[u64])> = Vec::new();
    for (name, shape) in entries {
        total += 1;
        if let Some(k) = parse_lora_name(name) {
            keys.push((k, shape));
        }
    }
    // Alphas alone are not a LoRA; there must be adapter weights, and they must dominate.
    let weights = keys.iter().filter(|(k, _)| k.part.kind().is_some()).count();
    if weights == 0 || keys.len().saturating_mul(2) < total {
        return None;
    }
    let mut modules: BTreeSet<(LoraTarget, &str)> = BTreeSet::new();
    let mut ranks = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    let mut targets = BTreeSet::new();
    let mut layouts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut has_alpha, mut dora) = (false, false);
    for (k, shape) in &keys {
        modules.insert((k.target, k.module.as_str()));
        targets.insert(k.target);
        if let Some(kind) = k.part.kind() {
            kinds.insert(kind);
        }
        *layouts.entry(k.layout.name()).or_default() += 1;
        match k.part {
            LoraPart::Down | LoraPart::HadaW1B | LoraPart::LokrW1B | LoraPart::LokrW2B => {
                if let Some(&r) = shape.first() {
                    ranks.insert(r);
                }
            }
            LoraPart::Alpha => has_alpha = true,
            LoraPart::DoraScale => dora = true,
            _ => {}
        }
    }
    let layout = if layouts.contains_key(Layout::Kohya.name()) {
        Layout::Kohya
    } else if layouts.contains_key(Layout::Peft.name()) {
        Layout::Peft
    } else {
        Layout::ComfyUi
    };
    Some((
        layout,
        LoraConfig {
            modules: modules.len(),
            ranks: ranks.into_iter().collect(),
            kinds: kinds.into_iter().collect(),
            targets: targets.into_iter().collect(),
            has_alpha,
            dora,
        },
    ))
}

pub(crate) fn summary(layout: Layout, c: &LoraConfig) -> String {
    let kinds: Vec<&str> = c.kinds.iter().map(|k| k.name()).collect();
    let targets: Vec<&str> = c.targets.iter().map(|t| t.name()).collect();
    let rank = match c.ranks.as_slice() {
        [] => "rank -".to_string(),
        [r] => format!("rank {r}"),
        rs => format!("ranks {}", super::pattern::list(rs)),
    };
    format!(
        "LoRA ({}, {}), {} modules, {}, targets {}",
        layout.name(),
        kinds.join("+"),
        c.modules,
        rank,
        targets.join("+")
    )
}
