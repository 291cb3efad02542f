//! umT5 (and T5) encoders: HF names -> llama.cpp GGUF names (canonical), config from shapes.
//!
//! The map is gguf-py's `T5ENCODER` tensor map (the one llama.cpp's converter and city96's
//! umT5 GGUF files use):
//! | HF | llama.cpp |
//! |---|---|
//! | `shared.weight`, `encoder.embed_tokens.weight` (tied) | `token_embd.weight` |
//! | `encoder.block.N.layer.0.SelfAttention.{q,k,v,o}.weight` | `enc.blk.N.attn_{q,k,v,o}.weight` |
//! | `encoder.block.N.layer.0.SelfAttention.relative_attention_bias.weight` | `enc.blk.N.attn_rel_b.weight` |
//! | `encoder.block.N.layer.0.layer_norm.weight` | `enc.blk.N.attn_norm.weight` |
//! | `encoder.block.N.layer.1.DenseReluDense.wi_0.weight` | `enc.blk.N.ffn_gate.weight` |
//! | `encoder.block.N.layer.1.DenseReluDense.{wi_1,wi}.weight` | `enc.blk.N.ffn_up.weight` |
//! | `encoder.block.N.layer.1.DenseReluDense.wo.weight` | `enc.blk.N.ffn_down.weight` |
//! | `encoder.block.N.layer.1.layer_norm.weight` | `enc.blk.N.ffn_norm.weight` |
//! | `encoder.final_layer_norm.weight` | `enc.output_norm.weight` |
//! Decoder tensors and `lm_head` are not part of the encoder and map to nothing.

use serde::Serialize;

use super::pattern::{exact_div, index, opt, Shapes};
use super::{Layout, NameMap};

pub(crate) fn map(layout: Layout, name: &str) -> Option<NameMap> {
    match layout {
        Layout::LlamaCpp => Some(NameMap::Rename(name.to_string())),
        _ => hf_to_gguf(name).map(NameMap::Rename),
    }
}

fn hf_to_gguf(name: &str) -> Option<String> {
    let segs: Vec<&str> = name.split('.').collect();
    let out = match segs.as_slice() {
        ["shared", "weight"] | ["encoder", "embed_tokens", "weight"] => "token_embd.weight".into(),
        ["encoder", "final_layer_norm", "weight"] => "enc.output_norm.weight".into(),
        ["encoder", "block", n, "layer", "0", rest @ ..] => {
            let n = index(n)?;
            let t = match rest {
                ["SelfAttention", "q", "weight"] => "attn_q",
                ["SelfAttention", "k", "weight"] => "attn_k",
                ["SelfAttention", "v", "weight"] => "attn_v",
                ["SelfAttention", "o", "weight"] => "attn_o",
                ["SelfAttention", "relative_attention_bias", "weight"] => "attn_rel_b",
                ["layer_norm", "weight"] => "attn_norm",
                _ => return None,
            };
            format!("enc.blk.{n}.{t}.weight")
        }
        ["encoder", "block", n, "layer", "1", rest @ ..] => {
            let n = index(n)?;
            let t = match rest {
                ["DenseReluDense", "wi_0", "weight"] => "ffn_gate",
                ["DenseReluDense", "wi_1" | "wi", "weight"] => "ffn_up",
                ["DenseReluDense", "wo", "weight"] => "ffn_down",
                ["layer_norm", "weight"] => "ffn_norm",
                _ => return None,
            };
            format!("enc.blk.{n}.{t}.weight")
        }
        _ => return None,
    };
    Some(out)
}

/// umT5 / T5 encoder hyperparameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Umt5Config {
    pub d_model: Option<u64>,
    pub layers: usize,
    /// From `attn_rel_b` [buckets, heads], else from GGUF metadata.
    pub heads: Option<u64>,
    /// Per-head width (`d_kv`): q rows / heads.
    pub head_dim: Option<u64>,
    pub ffn_dim: Option<u64>,
    /// Gated-GELU FFN (`ffn_gate` present).
    pub gated_ffn: bool,
    pub vocab: Option<u64>,
    pub relative_buckets: Option<u64>,
    /// umT5 has a relative position bias in every layer; T5 only in the first.
    pub bias_per_layer: bool,
}

pub(crate) fn config(s: &Shapes, meta_heads: Option<u64>) -> Umt5Config {
    let layers = s.count("enc.blk.");
    let rel = s.get("enc.blk.0.attn_rel_b.weight");
    let heads = rel.and_then(|r| r.get(1).copied()).or(meta_heads);
    let with_bias = s
        .indices("enc.blk.")
        .into_iter()
        .filter(|n| s.has(&format!("enc.blk.{n}.attn_rel_b.weight")))
        .count();
    let gate = s.dim("enc.blk.0.ffn_gate.weight", 0);
    let tok = s.get("token_embd.weight");
    Umt5Config {
        d_model: tok
            .and_then(|t| t.get(1).copied())
            .or_else(|| s.dim("enc.blk.0.attn_q.weight", 1)),
        layers,
        heads,
        head_dim: s
            .dim("enc.blk.0.attn_q.weight", 0)
            .and_then(|q| exact_div(q, heads?)),
        ffn_dim: gate.or_else(|| s.dim("enc.blk.0.ffn_up.weight", 0)),
        gated_ffn: gate.is_some(),
        vocab: tok.and_then(|t| t.first().copied()),
        relative_buckets: rel.and_then(|r| r.first().copied()),
        bias_per_layer: with_bias > 1 || (layers == 1 && with_bias == 1),
    }
}

pub(crate) fn summary(c: &Umt5Config) -> String {
    let name = if c.bias_per_layer || c.layers == 0 {
        "umT5 encoder"
    } else {
        "T5 encoder (relative bias in layer 0 only)"
    };
    format!(
        "{name}, d_model {}, {} layers, {} heads, ffn {}, vocab {}",
        opt(c.d_model),
        c.layers,
        opt(c.heads),
        opt(c.ffn_dim),
        opt(c.vocab)
    )
}
