//! Which base weight a LoRA module adapts: every spelling a LoRA may use for a module of the
//! model (canonical, kohya-flattened, HF names for open_clip's bigG, diffusers names for the
//! SDXL UNet) mapped to the weight's full name in the model's set.

use std::collections::HashMap;

use super::file::Group;
use crate::formats::names::{self, kohya_flatten, Architecture, Layout, NameMap};

/// A base weight, or one row block of a fused one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Full name in the base set (prefix included).
    pub weight: String,
    /// Row block `part` of `parts` equal blocks (open_clip q/k/v: 0..3 of 3).
    pub part: usize,
    pub parts: usize,
}

pub(crate) struct Resolver {
    by_module: HashMap<String, Slot>,
    by_flat: HashMap<String, Slot>,
    /// Modules with only vectors (norms; biases of any layer): module -> full module name.
    vectors: HashMap<String, String>,
}

/// open_clip (bigG canonical) module -> HF module, for the names kohya and PEFT use.
fn open_clip_aliases(module: &str) -> Vec<(String, usize, usize)> {
    let segs: Vec<&str> = module.split('.').collect();
    let ["transformer", "resblocks", n, rest @ ..] = segs.as_slice() else {
        return Vec::new();
    };
    let hf = format!("text_model.encoder.layers.{n}");
    match rest {
        ["attn", "in_proj"] => ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{hf}.self_attn.{p}"), i, 3))
            .collect(),
        ["attn", "out_proj"] => vec![(format!("{hf}.self_attn.out_proj"), 0, 1)],
        ["mlp", "c_fc"] => vec![(format!("{hf}.mlp.fc1"), 0, 1)],
        ["mlp", "c_proj"] => vec![(format!("{hf}.mlp.fc2"), 0, 1)],
        _ => Vec::new(),
    }
}

impl Resolver {
    /// Candidates from the base set's names (`(full name, ggml ne)`), those under `prefix`
    /// that are matrices or kernels (`*.weight` and open_clip's `*.in_proj_weight`).
    pub fn new<'n>(names: impl Iterator<Item = (&'n str, [i64; 4])>, prefix: &str) -> Resolver {
        let mut r = Resolver {
            by_module: HashMap::new(),
            by_flat: HashMap::new(),
            vectors: HashMap::new(),
        };
        for (full, ne) in names {
            let Some(rel) = full.strip_prefix(prefix) else {
                continue;
            };
            if ne[1] == 1 && ne[2] == 1 && ne[3] == 1 {
                // A vector: norm weights, biases (targets of `diff` / `diff_b`).
                if let Some(m) = rel
                    .strip_suffix(".weight")
                    .or_else(|| rel.strip_suffix(".bias"))
                {
                    let full = &full[..prefix.len() + m.len()];
                    r.vectors.insert(m.to_string(), full.to_string());
                }
                continue;
            }
            let module = if let Some(m) = rel.strip_suffix(".in_proj_weight") {
                format!("{m}.in_proj")
            } else if let Some(m) = rel.strip_suffix(".weight") {
                m.to_string()
            } else {
                continue;
            };
            // Used by gathers or plain mul_mat, never through nn::linear/conv2d: a LoRA on them
            // would be silently ignored, so it is reported as unmatched instead.
            let last = module.rsplit('.').next().unwrap_or("");
            if matches!(
                last,
                "token_embedding" | "position_embedding" | "patch_embedding" | "text_projection"
            ) {
                continue;
            }
            let slot = |part, parts| Slot {
                weight: full.to_string(),
                part,
                parts,
            };
            for (alias, part, parts) in open_clip_aliases(&module) {
                r.insert(alias, slot(part, parts));
            }
            r.insert(module, slot(0, 1));
        }
        r
    }

    fn insert(&mut self, module: String, slot: Slot) {
        self.by_flat.insert(kohya_flatten(&module), slot.clone());
        self.by_module.insert(module, slot);
    }

    /// A module of vectors only (a norm), as a slot on its `.weight` (which may be absent).
    pub fn resolve_vector(&self, g: &Group) -> Option<Slot> {
        let full = self.vectors.get(&g.module)?;
        Some(Slot {
            weight: format!("{full}.weight"),
            part: 0,
            parts: 1,
        })
    }

    /// The weight `g` adapts, if the model has it.
    pub fn resolve(&self, g: &Group) -> Option<&Slot> {
        if g.layout == Layout::Kohya {
            if let Some(s) = self.by_flat.get(&g.module) {
                return Some(s);
            }
            // kohya keys with diffusers module paths (`lora_unet_down_blocks_1_attentions_0_...`).
            let dotted = unflatten_diffusers_unet(&g.module);
            let m = names::normalize(
                Architecture::SDXL_UNET,
                Layout::Diffusers,
                &format!("{dotted}.weight"),
            )?;
            let ldm = match &m {
                NameMap::Rename(n) => n.strip_suffix(".weight")?,
                _ => return None,
            };
            return self.by_module.get(ldm);
        }
        self.by_module
            .get(&g.module)
            .or_else(|| self.by_flat.get(&kohya_flatten(&g.module)))
    }
}

/// Segments of diffusers UNet names that contain '_' (longest first).
const DIFFUSERS_WORDS: &[&str] = &[
    "time_emb_proj",
    "conv_norm_out",
    "down_blocks",
    "up_blocks",
    "mid_block",
    "transformer_blocks",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "conv_shortcut",
    "time_embedding",
    "add_embedding",
    "linear_1",
    "linear_2",
    "conv_in",
    "conv_out",
];

/// A kohya-flattened diffusers UNet module path with its dots back:
/// `down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0` ->
/// `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0`.
pub fn unflatten_diffusers_unet(flat: &str) -> String {
    let toks: Vec<&str> = flat.split('_').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let word = (2..=3).rev().find_map(|n| {
            let end = i + n;
            if end > toks.len() {
                return None;
            }
            let w = toks[i..end].join("_");
            DIFFUSERS_WORDS.contains(&w.as_str()).then_some((w, n))
        });
        match word {
            Some((w, n)) => {
                out.push(w);
                i += n;
            }
            None => {
                out.push(toks[i].to_string());
                i += 1;
            }
        }
    }
    out.join(".")
}
