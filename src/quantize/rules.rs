//! Per-tensor type choice for `nijigen convert`, in a fixed, logged order (as llama-quantize):
//! 1. user overrides `--tensor-type REGEX=TYPE` (first match wins),
//! 2. eligibility: only 2-D weights of the big linears are quantized (the recipe of the GGUF
//!    files users download from city96); everything else keeps full precision,
//! 3. the mix's bumps (q4_k_m/q5_k_m: value projections and FFN down-projections to q6_k),
//! 4. block-size fallback when a row is not a multiple of the block size (llama.cpp's table).

use std::fmt;

use regex::Regex;

use crate::formats::DType;
use crate::ggml::{can_quantize, GgmlType};

/// What `--type` asked for: one ggml type, or a named mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Type(GgmlType),
    Mix(Mix),
}

/// The k-quant mixes users know from llama.cpp and city96's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    Q3KS,
    Q3KM,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
}

impl Mix {
    const ALL: [(Mix, &'static str); 6] = [
        (Mix::Q3KS, "q3_k_s"),
        (Mix::Q3KM, "q3_k_m"),
        (Mix::Q4KS, "q4_k_s"),
        (Mix::Q4KM, "q4_k_m"),
        (Mix::Q5KS, "q5_k_s"),
        (Mix::Q5KM, "q5_k_m"),
    ];

    pub fn name(self) -> &'static str {
        Mix::ALL
            .iter()
            .find(|(m, _)| *m == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }

    /// Type of the ordinary big linears.
    pub fn base(self) -> GgmlType {
        match self {
            Mix::Q3KS | Mix::Q3KM => GgmlType::Q3_K,
            Mix::Q4KS | Mix::Q4KM => GgmlType::Q4_K,
            Mix::Q5KS | Mix::Q5KM => GgmlType::Q5_K,
        }
    }

    /// Type of the sensitive linears (value projections, FFN down), if the mix bumps them.
    pub fn bumped(self) -> Option<GgmlType> {
        match self {
            Mix::Q3KM => Some(GgmlType::Q4_K),
            Mix::Q4KM | Mix::Q5KM => Some(GgmlType::Q6_K),
            _ => None,
        }
    }
}

impl Target {
    /// Parses a `--type` value: a ggml type name or a mix name, case-insensitive.
    pub fn parse(s: &str) -> Result<Target, String> {
        let l = s.trim().to_ascii_lowercase();
        if let Some((m, _)) = Mix::ALL.iter().find(|(_, n)| *n == l) {
            return Ok(Target::Mix(*m));
        }
        let t = GgmlType::from_name(&l).ok_or_else(|| {
            format!("unknown type '{s}' (try f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, iq4_nl, q3_k_s)")
        })?;
        check_storage_type(t)?;
        Ok(Target::Type(t))
    }

    pub fn name(self) -> String {
        match self {
            Target::Type(t) => t.lower_name(),
            Target::Mix(m) => m.name().to_string(),
        }
    }

    /// The GGUF `general.file_type` value (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Target::Mix(m) => match m {
                Mix::Q3KS => 11,
                Mix::Q3KM => 12,
                Mix::Q4KS => 14,
                Mix::Q4KM => 15,
                Mix::Q5KS => 16,
                Mix::Q5KM => 17,
            },
            Target::Type(t) => match t {
                GgmlType::F32 => 0,
                GgmlType::F16 => 1,
                GgmlType::Q4_0 => 2,
                GgmlType::Q4_1 => 3,
                GgmlType::Q8_0 => 7,
                GgmlType::Q5_0 => 8,
                GgmlType::Q5_1 => 9,
                GgmlType::Q2_K => 10,
                GgmlType::Q3_K => 11,
                GgmlType::Q4_K => 14,
                GgmlType::Q5_K => 16,
                GgmlType::Q6_K => 18,
                GgmlType::IQ4_NL => 25,
                GgmlType::IQ3_S => 26,
                GgmlType::IQ4_XS => 30,
                GgmlType::BF16 => 32,
                GgmlType::TQ1_0 => 36,
                GgmlType::TQ2_0 => 37,
                GgmlType::MXFP4 => 38,
                GgmlType::NVFP4 => 39,
                GgmlType::Q1_0 => 40,
                GgmlType::Q2_0 => 41,
                _ => 1024, // LLAMA_FTYPE_GUESSED
            },
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Types we can write: plain floats and the quant types ggml can make without an imatrix.
fn check_storage_type(t: GgmlType) -> Result<(), String> {
    if can_quantize(t) {
        Ok(())
    } else if t.is_quantized() && !matches!(t, GgmlType::Q8_1 | GgmlType::Q8_K) {
        Err(format!("{t} needs an importance matrix, which nijigen convert does not compute; try iq4_nl, iq4_xs or q3_k_s"))
    } else {
        Err(format!("{t} is not a weight storage type"))
    }
}

/// One `--tensor-type REGEX=TYPE` rule.
#[derive(Clone, Debug)]
pub struct Override {
    pub pattern: Regex,
    pub ty: GgmlType,
    pub text: String,
}

impl Override {
    /// Parses `REGEX=TYPE` (the last `=` separates, so the regex may contain `=`).
    pub fn parse(s: &str) -> Result<Override, String> {
        let (re, ty) = s.rsplit_once('=').ok_or_else(|| {
            format!("--tensor-type '{s}': expected REGEX=TYPE, e.g. 'ffn\\.2=q6_k'")
        })?;
        let ty_parsed = GgmlType::from_name(ty.trim())
            .ok_or_else(|| format!("--tensor-type '{s}': unknown type '{ty}'"))?;
        check_storage_type(ty_parsed).map_err(|e| format!("--tensor-type '{s}': {e}"))?;
        let pattern = Regex::new(re).map_err(|e| format!("--tensor-type '{s}': bad regex: {e}"))?;
        Ok(Override {
            pattern,
            ty: ty_parsed,
            text: s.to_string(),
        })
    }
}

/// Why a tensor got its type (printed by `--dry-run`, stored in the file's rules metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Override(String),
    Kept(&'static str),
    Base,
    Bumped,
    Fallback(GgmlType),
    SameType,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Override(r) => write!(f, "--tensor-type {r}"),
            Reason::Kept(why) => write!(f, "kept: {why}"),
            Reason::Base => f.write_str("target"),
            Reason::Bumped => f.write_str("mix: sensitive layer"),
            Reason::Fallback(from) => write!(f, "fallback from {from}: row not a block multiple"),
            Reason::SameType => f.write_str("unchanged"),
        }
    }
}

/// Tensors kept in full precision by name (city96's recipe and ComfyUI-GGUF's blacklist):
/// embeddings, modulation, patch/text/time embeddings, image embedding, output heads.
const KEEP_PATTERNS: &[&str] = &[
    r"(^|\.)modulation($|\.)",
    r"scale_shift_table",
    r"(^|\.)patch_embedding\.",
    r"(^|\.)text_embedding\.",
    r"(^|\.)time_",
    r"(^|\.)img_emb\.",
    r"(^|\.)head\.",
    r"(^|\.)proj_out\.",
    r"condition_embedder\.",
    r"(^|\.)time_embed\.",
    r"(^|\.)label_emb\.",
    r"add_embedding\.",
    r"time_embedding\.",
    r"embed",
    r"token_embd",
    r"(^|\.)shared\.weight$",
    r"position",
    r"(^|\.)norm",
    r"_norm",
    r"\.bias$",
];

/// Linears that the k-quant mixes keep at higher precision: attention value projections and
/// FFN down projections, in the naming of every architecture we read.
const SENSITIVE_PATTERNS: &[&str] = &[
    r"self_attn\.v\.weight$",
    r"cross_attn\.v\.weight$",
    r"(^|\.)ffn\.2\.weight$",
    r"attn[12]\.to_v\.weight$",
    r"ff\.net\.2\.weight$",
    r"attn_v\.weight$",
    r"ffn_down\.weight$",
    r"SelfAttention\.v\.weight$",
    r"DenseReluDense\.wo\.weight$",
    r"self_attn\.v_proj\.weight$",
    r"mlp\.fc2\.weight$",
];

/// The rule set for one conversion.
pub struct Rules {
    target: Target,
    overrides: Vec<Override>,
    keep: Vec<Regex>,
    sensitive: Vec<Regex>,
}

/// The decision for one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub ty: GgmlType,
    pub reason: Reason,
}

/// Values at or below which a tensor is never quantized.
pub const SMALL_TENSOR: u64 = 1024;

impl Rules {
    pub fn new(target: Target, overrides: Vec<Override>) -> Rules {
        let compile = |ps: &[&str]| {
            ps.iter()
                .map(|p| Regex::new(p).expect("built-in regex"))
                .collect()
        };
        Rules {
            target,
            overrides,
            keep: compile(KEEP_PATTERNS),
            sensitive: compile(SENSITIVE_PATTERNS),
        }
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Chooses the output type of tensor `name` with `shape` (PyTorch order) stored as `from`.
    pub fn choose(&self, name: &str, shape: &[u64], from: DType) -> Choice {
        let numel: u64 = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        // Full precision for a tensor we do not quantize: keep F32/F16 as stored, widen the
        // rest losslessly to F32 (BF16 -> F16 would lose range, as ComfyUI-GGUF notes).
        let keep_ty = match from {
            DType::Ggml(t) if t.is_quantized() => t,
            // 1-D float tensors are always F32, as ComfyUI-GGUF stores them (tiny, and no
            // conversion op at run time).
            DType::Ggml(GgmlType::F16) if shape.len() >= 2 => GgmlType::F16,
            _ => GgmlType::F32,
        };
        let keep = |why| Choice {
            ty: keep_ty,
            reason: Reason::Kept(why),
        };

        // Integer tensors (position ids and the like) are copied as they are.
        if let DType::Ggml(t @ (GgmlType::I8 | GgmlType::I16 | GgmlType::I32 | GgmlType::I64)) =
            from
        {
            return Choice {
                ty: t,
                reason: Reason::Kept("integer tensor"),
            };
        }

        if let Some(o) = self.overrides.iter().find(|o| o.pattern.is_match(name)) {
            return fallback(o.ty, row, Reason::Override(o.text.clone()));
        }

        let wanted = match self.target {
            Target::Type(t) if !t.is_quantized() => {
                // A float target converts every multi-dim float tensor; 1-D stays F32.
                if shape.len() < 2 {
                    return keep("1-D");
                }
                if let DType::Ggml(q) = from {
                    if q.is_quantized() {
                        return keep("already quantized");
                    }
                }
                return Choice {
                    ty: t,
                    reason: Reason::Base,
                };
            }
            Target::Type(t) => (t, Reason::Base),
            Target::Mix(m) => {
                if self.sensitive.iter().any(|r| r.is_match(name)) {
                    match m.bumped() {
                        Some(b) => (b, Reason::Bumped),
                        None => (m.base(), Reason::Base),
                    }
                } else {
                    (m.base(), Reason::Base)
                }
            }
        };

        if shape.len() != 2 {
            return keep(if shape.len() < 2 {
                "1-D"
            } else {
                "not a 2-D linear"
            });
        }
        if numel <= SMALL_TENSOR {
            return keep("small");
        }
        if self.keep.iter().any(|r| r.is_match(name)) {
            return keep("full-precision layer");
        }
        if let DType::Ggml(q) = from {
            if q.is_quantized() && q == wanted.0 {
                return Choice {
                    ty: q,
                    reason: Reason::SameType,
                };
            }
        }
        fallback(wanted.0, row, wanted.1)
    }
}

/// llama.cpp's fallback when a row is not a multiple of the block size.
fn fallback(ty: GgmlType, row: u64, reason: Reason) -> Choice {
    if row % ty.block_size() == 0 {
        return Choice { ty, reason };
    }
    let alt = match ty {
        GgmlType::TQ1_0 | GgmlType::TQ2_0 => GgmlType::Q4_0,
        GgmlType::IQ2_XXS
        | GgmlType::IQ2_XS
        | GgmlType::IQ2_S
        | GgmlType::IQ3_XXS
        | GgmlType::IQ3_S
        | GgmlType::IQ1_S
        | GgmlType::IQ1_M
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    let alt = if row % alt.block_size() == 0 {
        alt
    } else {
        GgmlType::F16
    };
    Choice {
        ty: alt,
        reason: Reason::Fallback(ty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(t: &str, o: &[&str]) -> Rules {
        Rules::new(
            Target::parse(t).unwrap(),
            o.iter().map(|s| Override::parse(s).unwrap()).collect(),
        )
    }

    #[test]
    fn wan_q4_k_m_recipe() {
        let r = rules("q4_k_m", &[]);
        let f32 = DType::F32;
        let big = [5120u64, 5120];
        assert_eq!(
            r.choose("blocks.0.self_attn.q.weight", &big, f32).ty,
            GgmlType::Q4_K
        );
        assert_eq!(
            r.choose("blocks.0.self_attn.v.weight", &big, f32).ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            r.choose("blocks.0.cross_attn.v.weight", &big, f32).ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            r.choose("blocks.0.ffn.2.weight", &[5120, 13824], f32).ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            r.choose("blocks.0.ffn.0.weight", &[13824, 5120], f32).ty,
            GgmlType::Q4_K
        );
        assert_eq!(
            r.choose("blocks.0.cross_attn.k_img.weight", &big, f32).ty,
            GgmlType::Q4_K
        );
        // Kept in full precision.
        for (name, shape) in [
            ("blocks.0.self_attn.q.bias", vec![5120u64]),
            ("blocks.0.norm3.weight", vec![5120]),
            ("blocks.0.modulation", vec![1, 6, 5120]),
            ("patch_embedding.weight", vec![5120, 36, 1, 2, 2]),
            ("text_embedding.0.weight", vec![5120, 4096]),
            ("time_embedding.0.weight", vec![5120, 256]),
            ("time_projection.1.weight", vec![30720, 5120]),
            ("img_emb.proj.1.weight", vec![5120, 1280]),
            ("head.head.weight", vec![64, 5120]),
            ("blocks.0.self_attn.norm_q.weight", vec![5120]),
        ] {
            let c = r.choose(name, &shape, f32);
            assert_eq!(c.ty, GgmlType::F32, "{name}: {c:?}");
            assert!(matches!(c.reason, Reason::Kept(_)), "{name}");
        }
        // BF16 sources widen to F32 when kept; F16 stays F16.
        assert_eq!(
            r.choose("head.head.weight", &[64, 5120], DType::BF16).ty,
            GgmlType::F32
        );
        assert_eq!(
            r.choose("head.head.weight", &[64, 5120], DType::F16).ty,
            GgmlType::F16
        );
        assert_eq!(
            r.choose("head.head.bias", &[64], DType::F16).ty,
            GgmlType::F32
        );
    }

    #[test]
    fn mixes_and_plain_types() {
        let f = DType::F16;
        let big = [1280u64, 1280];
        assert_eq!(
            rules("q5_k_m", &[])
                .choose("blocks.1.ffn.2.weight", &big, f)
                .ty,
            GgmlType::Q6_K
        );
        assert_eq!(
            rules("q5_k_s", &[])
                .choose("blocks.1.ffn.2.weight", &big, f)
                .ty,
            GgmlType::Q5_K
        );
        assert_eq!(
            rules("q3_k_m", &[])
                .choose("blocks.1.ffn.2.weight", &big, f)
                .ty,
            GgmlType::Q4_K
        );
        assert_eq!(
            rules("q3_k_s", &[])
                .choose("blocks.1.ffn.2.weight", &big, f)
                .ty,
            GgmlType::Q3_K
        );
        assert_eq!(
            rules("q8_0", &[])
                .choose("blocks.1.ffn.2.weight", &big, f)
                .ty,
            GgmlType::Q8_0
        );
        assert_eq!(
            rules("f16", &[])
                .choose("patch_embedding.weight", &[8, 36, 1, 2, 2], DType::F32)
                .ty,
            GgmlType::F16
        );
        assert_eq!(
            rules("f16", &[])
                .choose("blocks.0.norm3.bias", &[8], DType::F32)
                .ty,
            GgmlType::F32
        );
        // SDXL names: attention v and ff down bumped, convs kept.
        let r = rules("q4_k_m", &[]);
        let n = "input_blocks.4.1.transformer_blocks.0.attn2.to_v.weight";
        assert_eq!(r.choose(n, &[640, 2048], f).ty, GgmlType::Q6_K);
        assert_eq!(
            r.choose("input_blocks.1.0.in_layers.2.weight", &[320, 320, 3, 3], f)
                .ty,
            GgmlType::F16
        );
    }

    #[test]
    fn block_fallback_as_llama_cpp() {
        let r = rules("q4_k_m", &[]);
        // 1280 % 256 != 0 -> q4_k falls back to q5_0; q6_k to q8_0.
        let c = r.choose(
            "blocks.0.self_attn.q.weight",
            &[1280, 1280 + 32],
            DType::F32,
        );
        assert_eq!(
            c,
            Choice {
                ty: GgmlType::Q5_0,
                reason: Reason::Fallback(GgmlType::Q4_K)
            }
        );
        let c = r.choose("blocks.0.self_attn.v.weight", &[1280, 1312], DType::F32);
        assert_eq!(c.ty, GgmlType::Q8_0);
        // Not even a multiple of 32: f16.
        let c = r.choose("blocks.0.self_attn.q.weight", &[64, 100], DType::F32);
        assert_eq!(c.ty, GgmlType::F16);
        assert_eq!(
            rules("q3_k_s", &[])
                .choose("x.weight", &[64, 1312], DType::F32)
                .ty,
            GgmlType::IQ4_NL
        );
    }

    #[test]
    fn overrides_first_match_wins() {
        let r = rules("q4_k_m", &["ffn\\.0=q8_0", "ffn=q5_k", "norm=q8_0"]);
        let c = r.choose("blocks.0.ffn.0.weight", &[13824, 5120], DType::F32);
        assert_eq!(c.ty, GgmlType::Q8_0);
        assert!(matches!(c.reason, Reason::Override(ref s) if s == "ffn\\.0=q8_0"));
        assert_eq!(
            r.choose("blocks.0.ffn.2.weight", &[5120, 13824], DType::F32)
                .ty,
            GgmlType::Q5_K
        );
        assert_eq!(
            r.choose("blocks.0.norm3.weight", &[5120], DType::F32).ty,
            GgmlType::Q8_0
        );
    }

    #[test]
    fn parse_errors() {
        assert!(Target::parse("q4_k_m").is_ok());
        assert!(Target::parse("IQ4_XS").is_ok());
        let e = Target::parse("q4_k_x").unwrap_err();
        assert!(e.contains("unknown type"), "{e}");
        let e = Target::parse("iq2_xxs").unwrap_err();
        assert!(e.contains("importance matrix"), "{e}");
        assert!(Target::parse("q8_k")
            .unwrap_err()
            .contains("not a weight storage type"));
        assert!(Override::parse("no-equals")
            .unwrap_err()
            .contains("REGEX=TYPE"));
        assert!(Override::parse("(=q4_0").unwrap_err().contains("bad regex"));
        assert!(Override::parse("a=q9_9")
            .unwrap_err()
            .contains("unknown type"));
        assert_eq!(Target::parse("q4_k_m").unwrap().file_type(), 15);
        assert_eq!(Target::parse("q8_0").unwrap().file_type(), 7);
    }
}
