//! umT5's encoder in llama.cpp names (`enc.blk.N.*`), a relative-position bias per layer as
//! umT5 has, and the GGUF metadata of city96's umT5 files (with a small Unigram tokenizer in
//! `tokenizer.ggml.*`).

use super::table::{Init, Table, TensorSpec};
use crate::formats::MetaValue;

/// The encoder's sizes.
#[derive(Clone, Copy, Debug)]
pub struct Umt5Sizes {
    pub dim: u64,
    /// Width of the gated feed-forward layer.
    pub ffn: u64,
    pub layers: usize,
    pub heads: u64,
    pub head_dim: u64,
    /// Relative-position buckets.
    pub buckets: u64,
    pub vocab: u64,
}

impl Umt5Sizes {
    /// The demo's (that of tests/fixtures/wan_pipeline).
    pub const DEMO: Umt5Sizes = Umt5Sizes {
        dim: 128,
        ffn: 256,
        layers: 2,
        heads: 2,
        head_dim: 64,
        buckets: 32,
        vocab: 900,
    };
}

/// The encoder's tensors. T5 folds 1/sqrt(d_kv) into the query weights: theirs are drawn that
/// much smaller.
pub fn tensors(z: &Umt5Sizes) -> Vec<TensorSpec> {
    let d = z.dim;
    let inner = z.heads * z.head_dim;
    let query = Init::FanIn {
        div: (z.head_dim as f32).sqrt(),
    };
    let mut s = Table::default();
    s.push("token_embd.weight", &[z.vocab, d], Init::EMBEDDING);
    for i in 0..z.layers {
        let p = format!("enc.blk.{i}");
        s.push(format!("{p}.attn_norm.weight"), &[d], Init::NORM);
        s.push(format!("{p}.attn_q.weight"), &[inner, d], query);
        s.push(format!("{p}.attn_k.weight"), &[inner, d], Init::WEIGHT);
        s.push(format!("{p}.attn_v.weight"), &[inner, d], Init::WEIGHT);
        s.push(format!("{p}.attn_o.weight"), &[d, inner], Init::WEIGHT);
        s.push(
            format!("{p}.attn_rel_b.weight"),
            &[z.buckets, z.heads],
            Init::EMBEDDING,
        );
        s.push(format!("{p}.ffn_norm.weight"), &[d], Init::NORM);
        s.push(format!("{p}.ffn_gate.weight"), &[z.ffn, d], Init::WEIGHT);
        s.push(format!("{p}.ffn_up.weight"), &[z.ffn, d], Init::WEIGHT);
        s.push(format!("{p}.ffn_down.weight"), &[d, z.ffn], Init::WEIGHT);
    }
    s.push("enc.output_norm.weight", &[d], Init::NORM);
    s.into_specs()
}

fn meta(key: &str, v: MetaValue) -> (String, MetaValue) {
    (key.to_string(), v)
}

/// A small SentencePiece Unigram vocabulary (T5 order: `<pad>`, `</s>`, `<unk>`) of `vocab`
/// pieces, as `tokenizer.ggml.*` metadata: common English words, single characters, and filler
/// pieces up to the embedding's row count.
fn tokenizer(vocab: u64) -> Vec<(String, MetaValue)> {
    const WORDS: &str = "a the and of in on with at to her his she he it is girl boy hair eyes \
        smile smiles turns head walks walking wind blowing blows looks looking camera slowly \
        night city neon light lights sky cherry blossoms petals falling school uniform dress \
        red blue white black silver long short anime masterpiece best quality cinematic \
        lighting background rain sea sunset moves moving waves wave hand hands up down";
    let mut pieces: Vec<(String, f32, i32)> = vec![
        ("<pad>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
        ("<unk>".into(), 0.0, 2),
        ("\u{2581}".into(), -2.0, 1),
    ];
    for (i, w) in WORDS.split_whitespace().enumerate() {
        pieces.push((format!("\u{2581}{w}"), -3.0 - i as f32 * 0.01, 1));
    }
    for c in (33u8..127).map(char::from) {
        pieces.push((c.to_string(), -8.0, 1));
    }
    let mut n = 0;
    while pieces.len() < vocab as usize {
        pieces.push((format!("\u{2581}demo{n}"), -12.0, 1));
        n += 1;
    }
    pieces.truncate(vocab as usize);
    let tokens = pieces
        .iter()
        .map(|p| MetaValue::String(p.0.clone()))
        .collect();
    let scores = pieces.iter().map(|p| MetaValue::F32(p.1)).collect();
    let types = pieces.iter().map(|p| MetaValue::I32(p.2)).collect();
    vec![
        meta("tokenizer.ggml.model", MetaValue::String("t5".into())),
        meta("tokenizer.ggml.tokens", MetaValue::Array(tokens)),
        meta("tokenizer.ggml.scores", MetaValue::Array(scores)),
        meta("tokenizer.ggml.token_type", MetaValue::Array(types)),
        meta("tokenizer.ggml.padding_token_id", MetaValue::U32(0)),
        meta("tokenizer.ggml.eos_token_id", MetaValue::U32(1)),
        meta("tokenizer.ggml.unknown_token_id", MetaValue::U32(2)),
        meta("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true)),
    ]
}

/// The GGUF metadata of a `t5encoder` file of these sizes, tokenizer included.
pub fn gguf_metadata(z: &Umt5Sizes) -> Vec<(String, MetaValue)> {
    let mut m = vec![
        meta(
            "general.architecture",
            MetaValue::String("t5encoder".into()),
        ),
        meta("general.file_type", MetaValue::U32(0)),
        meta("t5encoder.context_length", MetaValue::U32(512)),
        meta("t5encoder.embedding_length", MetaValue::U32(z.dim as u32)),
        meta(
            "t5encoder.feed_forward_length",
            MetaValue::U32(z.ffn as u32),
        ),
        meta("t5encoder.block_count", MetaValue::U32(z.layers as u32)),
        meta(
            "t5encoder.attention.head_count",
            MetaValue::U32(z.heads as u32),
        ),
        meta(
            "t5encoder.attention.key_length",
            MetaValue::U32(z.head_dim as u32),
        ),
        meta(
            "t5encoder.attention.value_length",
            MetaValue::U32(z.head_dim as u32),
        ),
        meta(
            "t5encoder.attention.layer_norm_epsilon",
            MetaValue::F32(1e-6),
        ),
        meta(
            "t5encoder.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-6),
        ),
        meta(
            "t5encoder.attention.relative_buckets_count",
            MetaValue::U32(z.buckets as u32),
        ),
    ];
    m.extend(tokenizer(z.vocab));
    m
}
