//! The umT5 encoder (Wan's text encoder, umT5-XXL), as transformers' `UMT5EncoderModel`.
//!
//! Pre-RMS-norm T5 blocks with no biases, no attention scaling and a relative position bias
//! computed in EVERY layer (plain T5 shares layer 0's):
//! x = tok_emb[ids];  per layer: x += o(attn(q, k, v of rms(x)) + bias_l);
//! x += down(gelu_tanh(gate(rms(x))) * up(rms(x)));  out = rms(x) * output_norm.
//! `attn` is softmax(q k^T + bias) v per head, with no 1/sqrt(d) (T5 folds it into the weights).
//! `bias_l[h, q, k] = attn_rel_b_l[bucket(k - q), h]` with transformers'
//! `_relative_position_bucket(bidirectional=True)` ([`relative_position_bucket`]).
//!
//! Tensors are the canonical umT5 names (llama.cpp GGUF names, as in city96's
//! `umt5-xxl-encoder-*.gguf`; HF names are mapped onto them by the weight store):
//! `token_embd.weight`, `enc.blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_o, attn_rel_b,
//! ffn_norm, ffn_gate, ffn_up, ffn_down}.weight`, `enc.output_norm.weight`.
//!
//! Shapes are ggml `ne` (innermost first): activations [d_model, tokens], attention scores
//! [keys, queries, heads].

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GgmlType, GraphSetParts, Tensor, TensorSet};
use crate::nn::{gelu_tanh, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// Text length of the Wan pipeline: the encoder runs on the real tokens, the caller cuts the
/// output to them and zero-pads it to this many rows.
pub const TEXT_LEN: usize = 512;
/// `relative_attention_max_distance` of every T5/umT5 checkpoint (not stored in the files).
pub const DEFAULT_MAX_DISTANCE: usize = 128;
/// `layer_norm_epsilon` of umT5 (T5LayerNorm).
pub const RMS_EPS: f32 = 1e-6;

/// Why a umT5 forward failed.
#[derive(Debug, thiserror::Error)]
pub enum Umt5Error {
    #[error("umT5 encoder: {0}")]
    Weights(#[from] NnError),
    #[error("umT5 encoder: no token embedding under '{prefix}' (looked for '{prefix}token_embd.weight'; HF names are mapped to it by the weight store)")]
    UnknownLayout { prefix: String },
    #[error("umT5 encoder: {0}")]
    Config(String),
    #[error("umT5 encoder: {0}")]
    Tokens(String),
    #[error("umT5 encoder: {0}")]
    Ggml(#[from] GgmlError),
}

/// Hyperparameters, inferred from the weights by [`Umt5Config::from_weights`].
/// umT5-XXL (google/umt5-xxl config.json): d_model 4096, 24 layers, 64 heads of 64, ffn 10240,
/// vocab 256384, 32 buckets, max distance 128.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Umt5Config {
    pub d_model: usize,
    pub layers: usize,
    /// From `attn_rel_b` [buckets, heads].
    pub heads: usize,
    /// Per-head width (`d_kv`): `attn_q` rows / heads.
    pub d_kv: usize,
    /// Gated-GELU hidden width (`ffn_gate` rows).
    pub ffn_dim: usize,
    pub vocab: usize,
    /// `relative_attention_num_buckets` (`attn_rel_b` rows).
    pub buckets: usize,
    /// `relative_attention_max_distance`: [`DEFAULT_MAX_DISTANCE`] (not in the files).
    pub max_distance: usize,
    pub eps: f32,
}

impl Umt5Config {
    /// Reads the shapes of the canonical tensors under `prefix`.
    pub fn from_weights(set: &TensorSet<'_>, prefix: &str) -> Result<Umt5Config, Umt5Error> {
        let w = Weights::new(set, prefix);
        if !w.contains("token_embd.weight") {
            return Err(Umt5Error::UnknownLayout { prefix: w.name("") });
        }
        let tok = w.get("token_embd.weight")?.ne();
        let (d_model, vocab) = (tok[0] as usize, tok[1] as usize);
        let mut layers = 0;
        while w.contains(&format!("enc.blk.{layers}.attn_q.weight")) {
            layers += 1;
        }
        if layers == 0 {
            return Err(NnError::MissingTensor(w.name("enc.blk.0.attn_q.weight")).into());
        }
        let b0 = w.pp("enc.blk.0");
        // attn_rel_b [buckets, heads] -> ne [heads, buckets]
        let rel = b0.get("attn_rel_b.weight")?.ne();
        let (heads, buckets) = (rel[0] as usize, rel[1] as usize);
        // attn_q [heads * d_kv, d_model] -> ne [d_model, heads * d_kv]
        let inner = b0.get("attn_q.weight")?.ne()[1] as usize;
        let ffn_dim = b0.get("ffn_gate.weight")?.ne()[1] as usize;
        let config = Umt5Config {
            d_model,
            layers,
            heads,
            d_kv: inner.checked_div(heads).unwrap_or(0),
            ffn_dim,
            vocab,
            buckets,
            max_distance: DEFAULT_MAX_DISTANCE,
            eps: RMS_EPS,
        };
        if heads > 0 && inner % heads != 0 {
            return Err(Umt5Error::Config(format!(
                "'{}' has {inner} rows, not a multiple of {heads} heads (from '{}')",
                b0.name("attn_q.weight"),
                b0.name("attn_rel_b.weight")
            )));
        }
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Umt5Error> {
        let c = self;
        if c.d_model == 0 || c.heads == 0 || c.d_kv == 0 || c.ffn_dim == 0 || c.vocab == 0 {
            return Err(Umt5Error::Config(format!("degenerate config {c:?}")));
        }
        if c.buckets < 4 || c.buckets % 2 != 0 {
            return Err(Umt5Error::Config(format!(
                "{} relative position buckets: bidirectional bucketing needs an even number >= 4",
                c.buckets
            )));
        }
        // Half the buckets per direction, half of those exact: the log range must be positive.
        if c.max_distance <= c.buckets / 4 {
            return Err(Umt5Error::Config(format!(
                "max distance {} must exceed {} (a quarter of the buckets)",
                c.max_distance,
                c.buckets / 4
            )));
        }
        Ok(())
    }
}

/// transformers' `T5Attention._relative_position_bucket` with `bidirectional=True` (the
/// encoder) for `relative = key - query`, in the same f32 arithmetic as PyTorch.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        // log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact), truncated.
        // PyTorch computes in f32 with the f64 denominator rounded to f32.
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let ratio = (n as f32 / max_exact as f32).ln() / denom;
        let large = max_exact + (ratio * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as u32
}

/// Bucket ids for a `len`-token self-attention, row-major by query: `ids[q * len + k]` =
/// bucket(k - q).
pub fn bucket_ids(len: usize, num_buckets: usize, max_distance: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(len * len);
    for q in 0..len as i64 {
        for k in 0..len as i64 {
            ids.push(relative_position_bucket(k - q, num_buckets, max_distance) as i32);
        }
    }
    ids
}

/// A umT5 encoder over a loaded weight set (canonical names), computing through its
/// [`GraphRunner`].
pub struct Umt5Encoder<'w> {
    weights: Weights<'w>,
    config: Umt5Config,
    /// The graph of the last token count, reused while it stays.
    runner: GraphRunner<'w>,
}

impl<'w> Umt5Encoder<'w> {
    /// The encoder whose tensors are under `prefix` in `set`, config inferred from the shapes,
    /// computing with `threads` CPU threads.
    pub fn new(
        set: &'w TensorSet<'w>,
        prefix: &str,
        threads: usize,
    ) -> Result<Umt5Encoder<'w>, Umt5Error> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`Umt5Encoder::new`], computing through `runner` (its backend must be able to read
    /// every weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        runner: GraphRunner<'w>,
    ) -> Result<Umt5Encoder<'w>, Umt5Error> {
        let config = Umt5Config::from_weights(set, prefix)?;
        Self::with_config_runner(set, prefix, config, runner)
    }

    /// As [`Umt5Encoder::new`] with an explicit config (e.g. another max distance).
    pub fn with_config(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: Umt5Config,
        threads: usize,
    ) -> Result<Umt5Encoder<'w>, Umt5Error> {
        Self::with_config_runner(set, prefix, config, GraphRunner::cpu(threads)?)
    }

    fn with_config_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: Umt5Config,
        mut runner: GraphRunner<'w>,
    ) -> Result<Umt5Encoder<'w>, Umt5Error> {
        config.validate()?;
        runner.set_name("t5");
        let model = Umt5Encoder {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            runner,
        };
        // Build (not run) a one-token graph: every tensor is looked up and shape-checked now,
        // so a bad file fails here rather than at the first prompt.
        let size = model.graph_size();
        let ctx = Context::new_meta(size, size)?;
        model.build(&ctx, 1)?;
        Ok(model)
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    pub fn config(&self) -> &Umt5Config {
        &self.config
    }

    /// `last_hidden_state` of `ids` (the real tokens, attention mask all ones), row-major
    /// [ids.len(), d_model]. The Wan pipeline zero-pads this to [`TEXT_LEN`] rows itself.
    pub fn encode(&mut self, ids: &[u32]) -> Result<Vec<f32>, Umt5Error> {
        let cfg = self.config.clone();
        if ids.is_empty() {
            return Err(Umt5Error::Tokens("no tokens to encode".into()));
        }
        if let Some((i, &bad)) = ids
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= cfg.vocab)
        {
            return Err(Umt5Error::Tokens(format!(
                "token id {bad} at position {i} is outside the vocabulary of {}",
                cfg.vocab
            )));
        }
        let len = ids.len();
        let _span = tracing::debug_span!(
            "umt5",
            d_model = cfg.d_model,
            layers = cfg.layers,
            tokens = len
        )
        .entered();

        let key = [len];
        if !self.runner.lookup(&key) {
            let sizes = GraphSizes::single(self.graph_size());
            let built = self.runner.build(sizes, "state", |ctx, _| {
                let g = self.build(ctx, len)?;
                Ok::<_, Umt5Error>(GraphSetParts {
                    keep: vec![g.ids, g.buckets, g.out],
                    graphs: vec![vec![g.out]],
                    state: Vec::new(),
                })
            })?;
            self.runner.insert(&key, built);
        }
        let mut g = self.runner.cached()?;
        g.place(0)?;
        let tok: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
        ggml::tensor_set(g.tensor(0)?, bytemuck::cast_slice(&tok))?;
        let buckets = bucket_ids(len, cfg.buckets, cfg.max_distance);
        ggml::tensor_set(g.tensor(1)?, bytemuck::cast_slice(&buckets))?;
        g.compute(0)?;
        Ok(ggml::tensor_get_f32(g.tensor(2)?)?)
    }

    fn graph_size(&self) -> usize {
        // About 40 nodes a layer (casts of norms included).
        64 * self.config.layers + 256
    }

    /// The graph for `len` tokens: inputs, embedding, the blocks top to bottom, final norm.
    fn build<'c>(&self, ctx: &'c Context, len: usize) -> Result<Umt5Graph<'c>, Umt5Error>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let w: &Weights<'c> = &self.weights;
        let (d, t) = (cfg.d_model as i64, len as i64);

        let ids = ctx
            .new_tensor(GgmlType::I32, &[t])
            .set_name("umt5.ids")
            .set_input();
        // bucket(k - q) for every (q, k), query-major: [Tk * Tq]
        let buckets = ctx
            .new_tensor(GgmlType::I32, &[t * t])
            .set_name("umt5.buckets")
            .set_input();

        let tok = w.get_shaped("token_embd.weight", &[d, cfg.vocab as i64])?;
        let mut x = ctx.get_rows(tok, ids).set_name("umt5.embed"); // [D, T]
        for i in 0..cfg.layers {
            x = self.block(ctx, &w.pp(format!("enc.blk.{i}")), i, x, buckets)?;
        }
        let out = rms_norm(ctx, w, "enc.output_norm.weight", x, cfg.eps)?
            .set_name("umt5.out")
            .set_output();
        Ok(Umt5Graph { ids, buckets, out })
    }

    /// One encoder block: self-attention with this layer's relative bias, then gated FFN.
    fn block<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        i: usize,
        x: Tensor<'c>,
        buckets: Tensor<'c>,
    ) -> Result<Tensor<'c>, Umt5Error> {
        let cfg = &self.config;
        let (d, t) = (cfg.d_model as i64, x.ne()[1]);
        let (h, dk) = (cfg.heads as i64, cfg.d_kv as i64);
        let inner = h * dk;

        // Relative position bias [Tk, Tq, H], added to the scores as a softmax mask.
        let rel = w.get_shaped("attn_rel_b.weight", &[h, cfg.buckets as i64])?;
        let bias = ctx.reshape(ctx.get_rows(rel, buckets), &[h, t, t]); // [H, Tk, Tq]
        let bias = ctx
            .cont(ctx.permute(bias, [2, 0, 1, 3]))
            .set_name(&format!("umt5.{i}.pos_bias"));

        let hn = rms_norm(ctx, w, "attn_norm.weight", x, cfg.eps)?;
        let proj = |name: &str, rows: i64| -> Result<Tensor<'c>, Umt5Error> {
            Ok(ctx.mul_mat(w.get_shaped(name, &[d, rows])?, hn))
        };
        // [H*Dk, T] -> [Dk, H, T]
        let q = ctx.reshape(proj("attn_q.weight", inner)?, &[dk, h, t]);
        let k = ctx.reshape(proj("attn_k.weight", inner)?, &[dk, h, t]);
        let v = ctx.reshape(proj("attn_v.weight", inner)?, &[dk, h, t]);
        // [Dk, H, T] -> [Dk, T, H]; scores [Tk, Tq, H]
        let q = ctx.permute(q, [0, 2, 1, 3]);
        let k = ctx.permute(k, [0, 2, 1, 3]);
        let scores = ctx.mul_mat(k, q).set_name(&format!("umt5.{i}.scores"));
        // No 1/sqrt(d_kv): T5 does not scale.
        let probs = ctx.soft_max_ext(scores, Some(bias), 1.0);
        // v [Dk, H, Tk] -> [Tk, Dk, H]; out [Dk, Tq, H] -> [Dk, H, Tq] -> [H*Dk, T]
        let vt = ctx.cont(ctx.permute(v, [1, 2, 0, 3]));
        let attn = ctx.mul_mat(vt, probs);
        let attn = ctx.reshape(ctx.cont(ctx.permute(attn, [0, 2, 1, 3])), &[inner, t]);
        let attn = ctx.mul_mat(w.get_shaped("attn_o.weight", &[inner, d])?, attn);
        let x = ctx.add(x, attn).set_name(&format!("umt5.{i}.attn_res"));

        let hn = rms_norm(ctx, w, "ffn_norm.weight", x, cfg.eps)?;
        let f = cfg.ffn_dim as i64;
        let gate = ctx.mul_mat(w.get_shaped("ffn_gate.weight", &[d, f])?, hn);
        let up = ctx.mul_mat(w.get_shaped("ffn_up.weight", &[d, f])?, hn);
        let act = ctx.mul(gelu_tanh(ctx, gate), up);
        let down = ctx.mul_mat(w.get_shaped("ffn_down.weight", &[f, d])?, act);
        Ok(ctx.add(x, down).set_name(&format!("umt5.{i}.out")))
    }
}

/// T5LayerNorm: x / sqrt(mean(x^2) + eps) * weight (no mean subtraction, no bias).
fn rms_norm<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    name: &str,
    x: Tensor<'c>,
    eps: f32,
) -> Result<Tensor<'c>, Umt5Error> {
    let g = w.get_shaped(name, &[x.ne()[0]])?;
    let g = if g.ty() == GgmlType::F32 {
        g
    } else {
        ctx.cast(g, GgmlType::F32)
    };
    Ok(ctx.mul(ctx.rms_norm(x, eps), g))
}

/// The tensors of one forward graph.
struct Umt5Graph<'c> {
    ids: Tensor<'c>,
    buckets: Tensor<'c>,
    out: Tensor<'c>,
}

// The network this model file describes (see `super::network`).

/// umT5's names: llama.cpp GGUF, or HF mapped onto them (`names::t5::map`).
pub static NAMES: Naming = Naming {
    architecture: Architecture::UMT5,
    description: "umT5 text encoder (Wan's text encoder)",
    roots: &[
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
    map: names::t5::map,
};

/// A umT5 (or T5) encoder file.
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "umt5",
    priority: 2,
    listing: 7,
    signatures: &[
        sig(Layout::HfTransformers, "encoder.block.#.layer.0.SelfAttention.q.weight", &[], None, None),
        sig(Layout::LlamaCpp, "enc.blk.#.attn_q.weight", &[], None, None),
        sig(Layout::LlamaCpp, "token_embd.weight", &["enc.output_norm.weight"], None, None),
    ],
    architectures: &[&NAMES],
    context: None,
    resolve: None,
    hints: &["t5encoder", "t5", "umt5"],
};

/// The umT5-XXL text encoder of Wan.
pub static NETWORK: Network = Network {
    component: Component {
        name: "t5",
        role: Role::Encoder,
        stage: Stage::Video,
        order: 0,
        uses: &[Use::now("encode prompt")],
    },
    label: "umT5 encoder",
    flag: "--t5",
    architectures: &[Architecture::UMT5],
    recognitions: &[&RECOGNITION],
    streams: false,
    memory,
    describe,
};

/// One layer over [`TEXT_LEN`] tokens: the relative position bias adds one heads x n x n tensor
/// next to the scores; the gated FFN holds three hidden-width tensors.
fn memory(set: &TensorSet<'_>, prefix: &str, _: &Request) -> Result<Memory, ModelError> {
    let c = Umt5Config::from_weights(set, prefix)?;
    let (n, d) = (TEXT_LEN as u64, c.d_model as u64);
    let (f, heads) = (c.ffn_dim as u64, c.heads as u64);
    Ok(Memory {
        compute_bytes: network::margin(network::F32 * (8 * n * d + 3 * f * n + 3 * heads * n * n)),
        tiles: Vec::new(),
    })
}

/// umT5 has a relative position bias in every layer, T5 only in the first: the summary says
/// which.
fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = Umt5Config::from_weights(set, prefix)?;
    let w = Weights::new(set, prefix);
    let bias_per_layer = c.layers == 1 || w.contains("enc.blk.1.attn_rel_b.weight");
    let name = if bias_per_layer {
        "umT5 encoder"
    } else {
        "T5 encoder (relative bias in layer 0 only)"
    };
    let summary = format!(
        "{name}, d_model {}, {} layers, {} heads, ffn {}, vocab {}",
        c.d_model, c.layers, c.heads, c.ffn_dim, c.vocab
    );
    Ok(network::description(
        summary,
        &c,
        &[("bias_per_layer", bias_per_layer.into())],
    ))
}

/// On a device: the model over the copied weights.
impl super::Place for Umt5Encoder<'_> {
    type Model<'x> = Umt5Encoder<'x>;
    type Error = Umt5Error;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        _adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<Umt5Encoder<'x>, Umt5Error> {
        Umt5Encoder::with_runner(weights.set(), prefix, runner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_hand_values() {
        // 32 buckets, max distance 128: 0..7 exact (keys before the query), 16.. after it.
        let b = |r| relative_position_bucket(r, 32, 128);
        assert_eq!(b(0), 0);
        assert_eq!(b(-1), 1);
        assert_eq!(b(-7), 7);
        assert_eq!(b(1), 17);
        assert_eq!(b(7), 23);
        assert_eq!(b(-8), 8);
        assert_eq!(b(-1000), 15);
        assert_eq!(b(1000), 31);
        let ids = bucket_ids(3, 32, 128);
        assert_eq!(ids, vec![0, 17, 18, 1, 0, 17, 2, 1, 0]);
    }
}
