//! CLIP text encoders as SDXL uses them: OpenAI CLIP-L (HF `text_model.*` names, quick GELU) and
//! OpenCLIP bigG (open_clip `transformer.resblocks.*` names, fused q/k/v, exact GELU).
//!
//! Pre-LN transformer with a causal mask:
//! x = tok_emb[ids] + pos_emb;  per layer: x += out(attn(ln_1(x)));  x += fc2(act(fc1(ln_2(x))))
//! Outputs: the penultimate layer's hidden states (SDXL's conditioning, no final LN), the last
//! hidden state after the final LN (transformers' `last_hidden_state`), and, when the weights
//! have a text projection, the pooled embedding: `final_ln(x)[first EOS] @ text_projection`.
//!
//! Shapes are ggml `ne` (innermost first): activations [width, tokens, chunks].

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GgmlType, GraphSetParts, Tensor, TensorSet};
use crate::nn::{self, Activation, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// Tokens per chunk (CLIP's context length).
pub const CHUNK_TOKENS: usize = 77;
/// CLIP's end-of-text token; the pooled output is taken at its first position in each chunk.
pub const EOS_TOKEN: u32 = 49407;
/// Head size of both CLIP-L and bigG (heads are not stored in the files).
pub const HEAD_DIM: usize = 64;
const LN_EPS: f32 = 1e-5;

/// Why a CLIP forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("CLIP text encoder: {0}")]
    Weights(#[from] NnError),
    #[error("CLIP text encoder: no token embedding under '{prefix}' (looked for '{prefix}text_model.embeddings.token_embedding.weight' and '{prefix}token_embedding.weight')")]
    UnknownLayout { prefix: String },
    #[error("CLIP text encoder: {0}")]
    Config(String),
    #[error("CLIP text encoder: {0}")]
    Tokens(String),
    #[error("CLIP text encoder: {0}")]
    Ggml(#[from] GgmlError),
}

/// How the tensors are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipLayout {
    /// transformers names (`text_model.encoder.layers.N.self_attn.q_proj`): CLIP-L canonical.
    Hf,
    /// open_clip names (`transformer.resblocks.N.attn.in_proj_weight`): bigG canonical.
    OpenClip,
}

/// Hyperparameters, inferred from the weights by [`ClipTextConfig::from_weights`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClipTextConfig {
    pub layout: ClipLayout,
    /// CLIP-L 768, bigG 1280.
    pub width: usize,
    /// CLIP-L 12, bigG 32.
    pub layers: usize,
    /// width / 64 (CLIP-L 12, bigG 20).
    pub heads: usize,
    /// CLIP-L 3072, bigG 5120.
    pub ffn_dim: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// Output width of the text projection (bigG 1280), if the weights have one.
    pub projection_dim: Option<usize>,
    /// Quick GELU for HF-named (OpenAI CLIP-L) weights, exact GELU for open_clip-named (bigG).
    pub activation: Activation,
}

impl ClipTextConfig {
    /// Reads the shapes of the weights under `prefix` (e.g. "" or an SDXL checkpoint's
    /// "conditioner.embedders.1.model.").
    pub fn from_weights(set: &TensorSet<'_>, prefix: &str) -> Result<ClipTextConfig, ClipError> {
        let w = Weights::new(set, prefix);
        let layout = if w.contains("text_model.embeddings.token_embedding.weight") {
            ClipLayout::Hf
        } else if w.contains("token_embedding.weight") {
            ClipLayout::OpenClip
        } else {
            return Err(ClipError::UnknownLayout { prefix: w.name("") });
        };
        let n = Names::of(layout);
        let tok = w.get(n.token_embedding)?.ne();
        let pos = w.get(n.position_embedding)?.ne();
        let (width, vocab) = (tok[0] as usize, tok[1] as usize);
        let mut layers = 0;
        while w.contains(&n.layer_probe(layers)) {
            layers += 1;
        }
        let ffn = w.pp(n.layer(0)).pp(n.fc1).get("weight")?.ne()[1] as usize;
        let projection_dim = match layout {
            // HF text_projection.weight [proj, width] -> ne [width, proj]
            ClipLayout::Hf if w.contains("text_projection.weight") => {
                Some(w.get("text_projection.weight")?.ne()[1] as usize)
            }
            // open_clip text_projection [width, proj] -> ne [proj, width]
            ClipLayout::OpenClip if w.contains("text_projection") => {
                Some(w.get("text_projection")?.ne()[0] as usize)
            }
            _ => None,
        };
        let config = ClipTextConfig {
            layout,
            width,
            layers,
            heads: width / HEAD_DIM,
            ffn_dim: ffn,
            vocab,
            max_positions: pos[1] as usize,
            projection_dim,
            activation: match layout {
                ClipLayout::Hf => Activation::QuickGelu,
                ClipLayout::OpenClip => Activation::Gelu,
            },
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ClipError> {
        if self.width == 0 || self.width % HEAD_DIM != 0 || self.heads * HEAD_DIM != self.width {
            return Err(ClipError::Config(format!(
                "width {} is not {} heads of {HEAD_DIM}",
                self.width, self.heads
            )));
        }
        if self.layers < 2 {
            return Err(ClipError::Config(format!(
                "{} layers: the penultimate layer needs at least 2",
                self.layers
            )));
        }
        if self.max_positions < CHUNK_TOKENS {
            return Err(ClipError::Config(format!(
                "{} positions, chunks need {CHUNK_TOKENS}",
                self.max_positions
            )));
        }
        Ok(())
    }
}

/// Tensor names of one layout, relative to the model prefix.
struct Names {
    token_embedding: &'static str,
    position_embedding: &'static str,
    layers: &'static str,
    ln_1: &'static str,
    ln_2: &'static str,
    fc1: &'static str,
    fc2: &'static str,
    out_proj: &'static str,
    final_ln: &'static str,
}

impl Names {
    fn of(layout: ClipLayout) -> Names {
        match layout {
            ClipLayout::Hf => Names {
                token_embedding: "text_model.embeddings.token_embedding.weight",
                position_embedding: "text_model.embeddings.position_embedding.weight",
                layers: "text_model.encoder.layers",
                ln_1: "layer_norm1",
                ln_2: "layer_norm2",
                fc1: "mlp.fc1",
                fc2: "mlp.fc2",
                out_proj: "self_attn.out_proj",
                final_ln: "text_model.final_layer_norm",
            },
            ClipLayout::OpenClip => Names {
                token_embedding: "token_embedding.weight",
                position_embedding: "positional_embedding",
                layers: "transformer.resblocks",
                ln_1: "ln_1",
                ln_2: "ln_2",
                fc1: "mlp.c_fc",
                fc2: "mlp.c_proj",
                out_proj: "attn.out_proj",
                final_ln: "ln_final",
            },
        }
    }

    fn layer(&self, i: usize) -> String {
        format!("{}.{i}", self.layers)
    }

    fn layer_probe(&self, i: usize) -> String {
        format!("{}.{i}.{}.weight", self.layers, self.ln_1)
    }
}

/// Results of [`ClipTextModel::forward`], row-major.
#[derive(Clone, Debug)]
pub struct ClipOutput {
    pub chunks: usize,
    pub width: usize,
    /// Hidden states after layer `layers - 2` (HF `hidden_states[-2]`), [chunks, 77, width].
    pub penultimate: Vec<f32>,
    /// Output of the last layer after the final LayerNorm (HF `last_hidden_state`),
    /// [chunks, 77, width].
    pub last: Vec<f32>,
    /// `final_ln(x)[first EOS] @ text_projection`, [chunks, projection_dim], when the weights
    /// have a projection.
    pub pooled: Option<Vec<f32>>,
}

/// A CLIP text encoder over a loaded weight set, computing through its [`GraphRunner`].
pub struct ClipTextModel<'w> {
    weights: Weights<'w>,
    config: ClipTextConfig,
    /// The graph of the last chunk count, reused while it stays.
    runner: GraphRunner<'w>,
}

impl<'w> ClipTextModel<'w> {
    /// The encoder whose tensors are under `prefix` in `set`, config inferred from the shapes,
    /// computing with `threads` CPU threads.
    pub fn new(
        set: &'w TensorSet<'w>,
        prefix: &str,
        threads: usize,
    ) -> Result<ClipTextModel<'w>, ClipError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`ClipTextModel::new`], computing through `runner` (its backend must be able to
    /// read every weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        runner: GraphRunner<'w>,
    ) -> Result<ClipTextModel<'w>, ClipError> {
        let config = ClipTextConfig::from_weights(set, prefix)?;
        Self::with_config_runner(set, prefix, config, runner)
    }

    /// As [`ClipTextModel::new`] with an explicit config (e.g. another activation).
    pub fn with_config(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: ClipTextConfig,
        threads: usize,
    ) -> Result<ClipTextModel<'w>, ClipError> {
        Self::with_config_runner(set, prefix, config, GraphRunner::cpu(threads)?)
    }

    fn with_config_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: ClipTextConfig,
        mut runner: GraphRunner<'w>,
    ) -> Result<ClipTextModel<'w>, ClipError> {
        config.validate()?;
        runner.set_name("clip");
        let model = ClipTextModel {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            runner,
        };
        // Build (not run) a one-chunk graph: every tensor is looked up and shape-checked now,
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

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Encodes `tokens`, a whole number of 77-token chunks (each BOS .. EOS, padded).
    pub fn forward(&mut self, tokens: &[u32]) -> Result<ClipOutput, ClipError> {
        let cfg = self.config.clone();
        if tokens.is_empty() || tokens.len() % CHUNK_TOKENS != 0 {
            return Err(ClipError::Tokens(format!(
                "{} tokens is not a whole number of {CHUNK_TOKENS}-token chunks",
                tokens.len()
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab) {
            return Err(ClipError::Tokens(format!(
                "token id {bad} is outside the vocabulary of {}",
                cfg.vocab
            )));
        }
        let chunks = tokens.len() / CHUNK_TOKENS;
        let t = CHUNK_TOKENS;
        let _span = tracing::debug_span!(
            "clip_text",
            layout = ?cfg.layout,
            width = cfg.width,
            layers = cfg.layers,
            chunks
        )
        .entered();
        // Pooled rows: the first EOS of each chunk (the last token if a chunk has none).
        let eos_rows: Vec<i32> = tokens
            .chunks(t)
            .enumerate()
            .map(|(c, ch)| {
                let p = ch.iter().position(|&x| x == EOS_TOKEN).unwrap_or(t - 1);
                (c * t + p) as i32
            })
            .collect();

        let key = [chunks];
        if !self.runner.lookup(&key) {
            let sizes = GraphSizes::single(self.graph_size());
            let built = self.runner.build(sizes, "state", |ctx, _| {
                let g = self.build(ctx, chunks)?;
                let mut outputs = vec![g.penultimate, g.last];
                outputs.extend(g.pooled);
                let mut keep = vec![g.ids, g.mask, g.penultimate, g.last];
                keep.extend(g.pooled.into_iter().chain(g.eos));
                Ok::<_, ClipError>(GraphSetParts {
                    keep,
                    graphs: vec![outputs],
                    state: Vec::new(),
                })
            })?;
            self.runner.insert(&key, built);
        }
        let mut g = self.runner.cached()?;
        g.place(0)?;
        let ids: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
        ggml::tensor_set(g.tensor(K_IDS)?, bytemuck::cast_slice(&ids))?;
        ggml::tensor_set_f32(g.tensor(K_MASK)?, &nn::causal_mask(t))?;
        let pooled = cfg.projection_dim.is_some();
        if pooled {
            ggml::tensor_set(g.tensor(K_EOS)?, bytemuck::cast_slice(&eos_rows))?;
        }
        g.compute(0)?;
        Ok(ClipOutput {
            chunks,
            width: cfg.width,
            penultimate: ggml::tensor_get_f32(g.tensor(K_PENULTIMATE)?)?,
            last: ggml::tensor_get_f32(g.tensor(K_LAST)?)?,
            pooled: if pooled {
                Some(ggml::tensor_get_f32(g.tensor(K_POOLED)?)?)
            } else {
                None
            },
        })
    }

    fn graph_size(&self) -> usize {
        // About 60 nodes a layer with F16 weights (casts of norms and biases included).
        128 * self.config.layers + 256
    }

    /// The graph for `chunks` chunks: inputs, then the layers top to bottom.
    fn build<'c>(&self, ctx: &'c Context, chunks: usize) -> Result<ClipGraph<'c>, ClipError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let w: &Weights<'c> = &self.weights;
        let n = Names::of(cfg.layout);
        let (width, t) = (cfg.width as i64, CHUNK_TOKENS as i64);
        let nc = chunks as i64;

        let ids = ctx
            .new_tensor(GgmlType::I32, &[t * nc])
            .set_name("clip.ids")
            .set_input();
        let mask = ctx
            .new_f32(&[t, t])
            .set_name("clip.causal_mask")
            .set_input();

        // Embeddings: [W, T*N] -> [W, T, N] + positions [W, T]
        let tok = w.get_shaped(n.token_embedding, &[width, cfg.vocab as i64])?;
        let pos = w.get(n.position_embedding)?;
        let pos = ctx.view(pos, &[width, t], &[pos.nb()[1]], 0);
        let x = ctx.reshape(ctx.get_rows(tok, ids), &[width, t, nc]);
        let mut x = ctx.add(x, nn::to_f32(ctx, pos)).set_name("clip.embed");

        let mut penultimate = None;
        for i in 0..cfg.layers {
            x = self.layer(ctx, &w.pp(n.layer(i)), &n, i, x, mask)?;
            if i + 2 == cfg.layers {
                penultimate = Some(x);
            }
        }
        let penultimate = penultimate
            .expect("validate() guarantees 2 layers")
            .set_name("clip.penultimate")
            .set_output();
        let last = nn::layer_norm(ctx, &w.pp(n.final_ln), x, LN_EPS)?
            .set_name("clip.last")
            .set_output();

        let (eos, pooled) = match cfg.projection_dim {
            None => (None, None),
            Some(proj) => {
                let eos = ctx
                    .new_tensor(GgmlType::I32, &[nc])
                    .set_name("clip.eos_rows")
                    .set_input();
                let rows = ctx.get_rows(ctx.reshape(last, &[width, t * nc]), eos);
                let p = proj as i64;
                let pooled = match cfg.layout {
                    ClipLayout::Hf => {
                        let pw = w.get_shaped("text_projection.weight", &[width, p])?;
                        ctx.mul_mat(pw, rows)
                    }
                    ClipLayout::OpenClip => {
                        let pw = w.get_shaped("text_projection", &[p, width])?;
                        ctx.mul_mat(ctx.cont(ctx.transpose(pw)), rows)
                    }
                };
                (Some(eos), Some(pooled.set_name("clip.pooled").set_output()))
            }
        };
        Ok(ClipGraph {
            ids,
            mask,
            eos,
            penultimate,
            last,
            pooled,
        })
    }

    /// One pre-LN residual block.
    fn layer<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        n: &Names,
        i: usize,
        x: Tensor<'c>,
        mask: Tensor<'c>,
    ) -> Result<Tensor<'c>, ClipError> {
        let cfg = &self.config;
        let [width, t, nc, _] = x.ne();
        let (d, h) = (HEAD_DIM as i64, cfg.heads as i64);

        let hn = nn::layer_norm(ctx, &w.pp(n.ln_1), x, LN_EPS)?;
        // q, k, v as [D, H, T, N]
        let (q, k, v) = match cfg.layout {
            ClipLayout::Hf => {
                let sa = w.pp("self_attn");
                let proj = |name: &str| -> Result<Tensor<'c>, ClipError> {
                    let y = nn::linear(ctx, &sa.pp(name), hn)?;
                    Ok(ctx.reshape(y, &[d, h, t, nc]))
                };
                (proj("q_proj")?, proj("k_proj")?, proj("v_proj")?)
            }
            ClipLayout::OpenClip => {
                let a = w.pp("attn");
                let wqkv = a.get_shaped("in_proj_weight", &[width, 3 * width])?;
                let qkv = nn::linear_with(ctx, &a, wqkv, "in_proj_bias", hn)?; // [3W, T, N]
                let nb = qkv.nb();
                let part = |k: usize| {
                    ctx.view(
                        qkv,
                        &[d, h, t, nc],
                        &[d as usize * nb[0], nb[1], nb[2]],
                        k * width as usize * nb[0],
                    )
                };
                (part(0), part(1), part(2))
            }
        };
        let attn = nn::multi_head_attention(ctx, q, k, v, Some(mask));
        let attn = nn::linear(ctx, &w.pp(n.out_proj), attn)?;
        let x = ctx.add(x, attn).set_name(&format!("clip.{i}.attn_res"));

        let hn = nn::layer_norm(ctx, &w.pp(n.ln_2), x, LN_EPS)?;
        let f = nn::linear(ctx, &w.pp(n.fc1), hn)?;
        let f = cfg.activation.apply(ctx, f);
        let f = nn::linear(ctx, &w.pp(n.fc2), f)?;
        Ok(ctx.add(x, f).set_name(&format!("clip.{i}.out")))
    }
}

/// Kept tensors of the cached graph, by index (the last two with a text projection).
const K_IDS: usize = 0;
const K_MASK: usize = 1;
const K_PENULTIMATE: usize = 2;
const K_LAST: usize = 3;
const K_POOLED: usize = 4;
const K_EOS: usize = 5;

/// The tensors of one forward graph.
struct ClipGraph<'c> {
    ids: Tensor<'c>,
    mask: Tensor<'c>,
    eos: Option<Tensor<'c>>,
    penultimate: Tensor<'c>,
    last: Tensor<'c>,
    pooled: Option<Tensor<'c>>,
}

// LoRA at run time (src/lora): kept at the end of the file so that it merges trivially.
impl<'w> ClipTextModel<'w> {
    /// Attaches LoRA adapters built for this encoder's weight set (`None` detaches them).
    /// Base weights are left as they are: the adapters add their terms to the layers' outputs
    /// (for bigG's fused q/k/v, to the third they adapt).
    pub fn set_adapters(
        &mut self,
        adapters: Option<&'w crate::lora::Adapters>,
    ) -> Result<(), ClipError> {
        self.weights = self.weights.clone().with_adapters(adapters)?;
        self.weights.check_backend(self.runner.backend())?;
        self.runner.invalidate();
        Ok(())
    }
}

// The network this model file describes (see `super::network`).

/// CLIP-L's names: HF `text_model.*` (`names::clip::map_clip_l`).
pub static CLIP_L_NAMES: Naming = Naming {
    architecture: Architecture::CLIP_L,
    description: "CLIP-L text encoder (SDXL's first text encoder)",
    roots: &[
        &["text_model"],
        &["embeddings"],
        &["encoder", "layers"],
        &["final_layer_norm"],
        &["text_projection"],
    ],
    map: names::clip::map_clip_l,
};

/// bigG's names: open_clip, or HF `CLIPTextModelWithProjection` mapped onto them
/// (`names::clip::map_clip_g`).
pub static CLIP_G_NAMES: Naming = Naming {
    architecture: Architecture::CLIP_G,
    description: "OpenCLIP bigG text encoder (SDXL's second text encoder)",
    roots: &[
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
    map: names::clip::map_clip_g,
};

/// An HF-named CLIP text encoder: CLIP-L or bigG, told apart by prefix and width
/// (`names::clip::classify_text`).
#[rustfmt::skip]
pub static HF_CLIP_TEXT: Recognition = Recognition {
    name: "hf-clip-text",
    priority: 4,
    listing: 4,
    signatures: &[
        sig(Layout::HfTransformers, "embeddings.token_embedding.weight", &[], None, Some("text_model.")),
        sig(Layout::HfTransformers, "encoder.layers.#.self_attn.q_proj.weight", &["final_layer_norm.weight"], None, Some("text_model.")),
    ],
    architectures: &[&CLIP_L_NAMES, &CLIP_G_NAMES],
    context: None,
    resolve: Some(names::clip::classify_text),
    hints: &[],
};

/// An open_clip-named bigG (SDXL checkpoints' `conditioner.embedders.1.model.`).
#[rustfmt::skip]
pub static OPEN_CLIP_TEXT: Recognition = Recognition {
    name: "open-clip-text",
    priority: 3,
    listing: 5,
    signatures: &[
        sig(Layout::Original, "transformer.resblocks.#.attn.in_proj_weight", &["ln_final.weight"], None, None),
        sig(Layout::Original, "token_embedding.weight", &["positional_embedding"], None, None),
    ],
    architectures: &[&CLIP_G_NAMES],
    context: None,
    resolve: None,
    hints: &[],
};

/// CLIP-L, SDXL's first text encoder.
pub static CLIP_L: Network = Network {
    component: Component {
        name: "clip_l",
        role: Role::Encoder,
        stage: Stage::Image,
        order: 0,
        uses: &[Use::now("encode prompt")],
    },
    label: "CLIP-L",
    flag: "--clip-l",
    architectures: &[Architecture::CLIP_L],
    recognitions: &[&HF_CLIP_TEXT],
    streams: false,
    memory: text_memory,
    describe: describe_l,
};

/// OpenCLIP bigG, SDXL's second text encoder.
pub static CLIP_G: Network = Network {
    component: Component {
        name: "clip_g",
        role: Role::Encoder,
        stage: Stage::Image,
        order: 1,
        uses: &[Use::now("encode prompt")],
    },
    label: "bigG",
    flag: "--clip-g",
    architectures: &[Architecture::CLIP_G],
    recognitions: &[&OPEN_CLIP_TEXT, &HF_CLIP_TEXT],
    streams: false,
    memory: text_memory,
    describe: describe_g,
};

/// One 77-token chunk through one layer (the encoders run chunk by chunk): the token embedding
/// gather reads rows only; the pooled projection is tiny.
fn text_memory(set: &TensorSet<'_>, prefix: &str, _: &Request) -> Result<Memory, ModelError> {
    let c = ClipTextConfig::from_weights(set, prefix)?;
    let (n, d) = (c.max_positions as u64, c.width as u64);
    let layer = network::transformer_layer(n, d, c.ffn_dim as u64, c.heads as u64);
    Ok(Memory {
        compute_bytes: network::margin(layer + network::F32 * n * d * 2),
        tiles: Vec::new(),
    })
}

fn describe_l(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = ClipTextConfig::from_weights(set, prefix)?;
    let summary = format!(
        "CLIP-L text encoder, width {}, {} layers, {} heads",
        c.width, c.layers, c.heads
    );
    Ok(network::description(summary, &c, &[]))
}

fn describe_g(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = ClipTextConfig::from_weights(set, prefix)?;
    let summary = format!(
        "OpenCLIP bigG text encoder, width {}, {} layers, {} heads, projection {}",
        c.width,
        c.layers,
        c.heads,
        c.projection_dim
            .map_or_else(|| "?".to_string(), |p| p.to_string())
    );
    Ok(network::description(summary, &c, &[]))
}

/// On a device: with its LoRA adapters.
impl super::Place for ClipTextModel<'_> {
    type Model<'x> = ClipTextModel<'x>;
    type Error = ClipError;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<ClipTextModel<'x>, ClipError> {
        let mut m = ClipTextModel::with_runner(weights.set(), prefix, runner)?;
        m.set_adapters(adapters)?;
        Ok(m)
    }
}
