//! umT5 (and T5) encoders: HF names -> llama.cpp GGUF names (canonical).
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

use super::pattern::index;
use super::{Layout, NameContext, NameMap};

pub(crate) fn map(_: &NameContext, layout: Layout, name: &str) -> Option<NameMap> {
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
