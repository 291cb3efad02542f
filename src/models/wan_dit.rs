//! The Wan2.1 DiT (original `WanModel`, diffusers `WanTransformer3DModel`), T2V and I2V, on ggml.
//!
//! Original Wan names are canonical (diffusers names are mapped by the weight store):
//!   tokens = patch_embedding(x)            patch (1, 2, 2), done here as a linear on host patches
//!   e  = time_embedding.2(silu(time_embedding.0(sinusoid(t, freq_dim))))   cos first
//!   e0 = time_projection.1(silu(e)) -> 6 vectors of dim
//!   ctx = text_embedding.2(gelu_tanh(text_embedding.0(text)))
//!   img = img_emb.proj.4(proj.3(gelu(proj.1(proj.0(image)))))            I2V only (LNs eps 1e-5)
//!   per block (shift, scale, gate, c_shift, c_scale, c_gate = modulation + e0):
//!     x += gate * o(self_attn(LN(x) * (1 + scale) + shift))      q, k RMS-normed over dim, RoPE
//!     x += o(attn(q, k(ctx), v(ctx)) + attn(q, norm_k_img(k_img(img)), v_img(img)))  q of norm3(x)
//!     x += c_gate * ffn.2(gelu_tanh(ffn.0(LN(x) * (1 + c_scale) + c_shift)))
//!   out = head.head(LN(x) * (1 + scale) + shift), (shift, scale) = head.modulation + e; unpatchify
//! LN without affine, eps 1e-6. Head dim 128. RoPE: head dim split t/h/w as diffusers'
//! `WanRotaryPosEmbed` (h = w = 2 * (d / 6), t the rest: 44/42/42 for 128), theta 10000, on
//! ADJACENT pairs, cos/sin tables computed here in f64 and fed as inputs.
//!
//! Shapes are ggml `ne` (innermost first): tokens [dim, T], heads [128, H, T]; the public API
//! takes row-major [C, F, H, W] and [L, C] slices. Attention ([`Attention`]): by default ggml's
//! `flash_attn_ext` with F32 K/V and F32 accumulation (no [T, T] score matrix, which the real
//! size could not hold: 32760 tokens at 480x832x81); optionally the plain F32 path
//! ([`nn::multi_head_attention`]: mul_mat, softmax, mul_mat). Both match diffusers at ~1e-6.

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GraphSetParts, Tensor, TensorSet};
use crate::nn::{self, gelu_tanh, timestep_embedding, to_f32, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{Built, DeviceWeights, GraphRunner, GraphSizes, StreamStats};

/// Attention head size of every Wan2.1 DiT (MODELS.md); heads = dim / 128.
pub const HEAD_DIM: usize = 128;
/// RoPE base.
pub const ROPE_THETA: f64 = 10000.0;
const EPS: f32 = 1e-6;
const IMG_LN_EPS: f32 = 1e-5;

/// Why a DiT forward failed.
#[derive(Debug, thiserror::Error)]
pub enum WanDitError {
    #[error("Wan DiT: {0}")]
    Weights(#[from] NnError),
    #[error("Wan DiT: {0}")]
    Config(String),
    #[error("Wan DiT: {0}")]
    Input(String),
    #[error("Wan DiT: {0}")]
    Ggml(#[from] GgmlError),
}

/// Hyperparameters inferred from the weights. Wan2.1-I2V-14B: dim 5120, 40 heads, 40 layers,
/// ffn 13824, in 36, out 16, text 4096, freq 256, image 1280 (Wan-Video/Wan2.1 configs).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WanDitConfig {
    pub dim: usize,
    pub heads: usize,
    pub layers: usize,
    pub ffn_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub text_dim: usize,
    pub freq_dim: usize,
    /// Image (CLIP) token width when the model is I2V (`img_emb` present).
    pub image_dim: Option<usize>,
}

impl WanDitConfig {
    pub fn from_weights(set: &TensorSet<'_>, prefix: &str) -> Result<WanDitConfig, WanDitError> {
        let w = Weights::new(set, prefix);
        let ne = |name: &str| -> Result<[i64; 4], WanDitError> { Ok(w.get(name)?.ne()) };
        // linear ne [in, out]
        let te = ne("time_embedding.0.weight")?;
        let (freq_dim, dim) = (te[0] as usize, te[1] as usize);
        let text_dim = ne("text_embedding.0.weight")?[0] as usize;
        let head = ne("head.head.weight")?;
        let out_channels = head[1] as usize / 4;
        let pe = ne("patch_embedding.weight")?;
        let total: i64 = pe.iter().product();
        if pe[0] != 2 || pe[1] != 2 || dim == 0 || total % (4 * dim as i64) != 0 {
            return Err(WanDitError::Config(format!(
                "'{}' has ne {pe:?}: only patch (1, 2, 2) with {dim} outputs is supported",
                w.name("patch_embedding.weight")
            )));
        }
        let in_channels = (total / (4 * dim as i64)) as usize;
        let mut layers = 0;
        while w.contains(&format!("blocks.{layers}.self_attn.q.weight"))
            || w.contains(&format!("blocks.{layers}.modulation"))
        {
            layers += 1;
        }
        if layers == 0 {
            return Err(NnError::MissingTensor(w.name("blocks.0.self_attn.q.weight")).into());
        }
        let ffn_dim = ne("blocks.0.ffn.0.weight")?[1] as usize;
        let image_dim = if w.contains("img_emb.proj.1.weight") {
            Some(ne("img_emb.proj.1.weight")?[0] as usize)
        } else {
            None
        };
        let c = WanDitConfig {
            dim,
            heads: dim / HEAD_DIM,
            layers,
            ffn_dim,
            in_channels,
            out_channels,
            text_dim,
            freq_dim,
            image_dim,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), WanDitError> {
        let c = self;
        if c.dim == 0 || c.dim % HEAD_DIM != 0 {
            return Err(WanDitError::Config(format!(
                "dim {} is not a whole number of {HEAD_DIM}-wide heads",
                c.dim
            )));
        }
        if c.freq_dim % 2 != 0 || c.out_channels == 0 || c.ffn_dim == 0 {
            return Err(WanDitError::Config(format!("degenerate config {c:?}")));
        }
        Ok(())
    }

    /// Whether the model takes the first frame: through a CLIP image branch (Wan2.1 I2V) or
    /// only as latent channels concatenated to the noise (Wan2.2 I2V-A14B: more input than
    /// output channels).
    pub fn is_i2v(&self) -> bool {
        self.image_dim.is_some() || self.in_channels > self.out_channels
    }

    /// Whether the model has Wan2.1's CLIP image branch (`img_emb`, `k_img` / `v_img`): it
    /// needs CLIP vision tokens.
    pub fn has_image_branch(&self) -> bool {
        self.image_dim.is_some()
    }

    /// What kind of Wan DiT this is, from its shapes (a Wan2.2 T2V-A14B expert has a Wan2.1
    /// T2V DiT's shapes: only its name tells them apart, see [`crate::formats::names::wan`]).
    pub fn kind(&self) -> WanDitKind {
        if self.has_image_branch() {
            WanDitKind::Wan21I2v
        } else if self.in_channels > self.out_channels {
            WanDitKind::Wan22I2vExpert
        } else {
            WanDitKind::T2v
        }
    }
}

/// The kinds of Wan DiT, by their shapes ([`WanDitConfig::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WanDitKind {
    /// Wan2.1 I2V (or FLF2V): the first frame as latent channels and CLIP vision tokens.
    Wan21I2v,
    /// A Wan2.2 I2V-A14B expert: the first frame as latent channels only, no CLIP branch.
    Wan22I2vExpert,
    /// Text-to-video: Wan2.1 T2V or a Wan2.2 T2V-A14B expert (the same shapes).
    T2v,
}

/// (t, h, w) widths of the head dim given to each RoPE axis (diffusers `WanRotaryPosEmbed`).
pub fn rope_split(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [head_dim - 2 * hw, hw, hw]
}

/// RoPE tables for an (f, h, w) token grid, token-major: `cos[t * d + i]`, `sin` with the
/// rotation sign folded in (-sin on even, +sin on odd lanes), so that
/// rope(x) = x * cos + swap_pairs(x) * sin.
pub fn rope_tables(head_dim: usize, f: usize, h: usize, w: usize) -> (Vec<f32>, Vec<f32>) {
    let split = rope_split(head_dim);
    let n = f * h * w;
    let (mut cos, mut sin) = (
        Vec::with_capacity(n * head_dim),
        Vec::with_capacity(n * head_dim),
    );
    for fi in 0..f {
        for hi in 0..h {
            for wi in 0..w {
                for (axis, &d) in split.iter().enumerate() {
                    let pos = [fi, hi, wi][axis] as f64;
                    for j in 0..d / 2 {
                        let freq = 1.0 / ROPE_THETA.powf((2 * j) as f64 / d as f64);
                        let (s, c) = (pos * freq).sin_cos();
                        let (s, c) = (s as f32, c as f32);
                        cos.extend_from_slice(&[c, c]);
                        sin.extend_from_slice(&[-s, s]);
                    }
                }
            }
        }
    }
    (cos, sin)
}

/// How attention is computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Attention {
    /// ggml's fused `flash_attn_ext` (F32 K/V, F32 accumulation): no score matrix.
    #[default]
    Flash,
    /// mul_mat, softmax, mul_mat in F32 (holds the [Tk, Tq, H] scores).
    MulMat,
}

/// A Wan DiT over a loaded weight set (canonical names), computing through its
/// [`GraphRunner`].
///
/// Its graphs are built once per input shape and reused for every forward of that shape. With
/// streamed weights ([`WanDit::set_streaming`]) the forward runs as a sequence of graphs
/// (embeddings, each block, head) with the activations carried between them in a state buffer,
/// each block computing from the device slot its weights were uploaded into.
pub struct WanDit<'w> {
    weights: Weights<'w>,
    config: WanDitConfig,
    attention: Attention,
    runner: GraphRunner<'w>,
    stream: Option<&'w DeviceWeights<'w>>,
    last_stream: StreamStats,
}

/// The input shape graphs are built for: (frames, patch rows, patch columns), text tokens,
/// image tokens.
type Shape = ((usize, usize, usize), usize, Option<usize>);

/// Kept tensors of a built graph set, by index.
const K_PATCHES: usize = 0;
const K_TEMB: usize = 1;
const K_TEXT: usize = 2;
const K_COS: usize = 3;
const K_SIN: usize = 4;
const K_OUT: usize = 5;
/// Staged graphs: the hidden state carried between blocks, and the time modulation `e0`.
const K_STATE_X: usize = 6;
const K_STATE_E0: usize = 7;
const K_IMAGE: usize = 8;

/// Step caching over the block stack (TeaCache, MagCache): asked after the embeddings of
/// each forward whether the blocks can be skipped, in which case the hidden state entering
/// them plus the cached residual goes to the head.
pub trait BlockCache {
    /// Whether this call skips the blocks, given the time embedding's modulation `e0`
    /// ([6, dim] row-major); only when it has a residual for it.
    fn skip_blocks(&mut self, e0: &[f32]) -> bool;
    /// The residual to add on a skip: [tokens, dim] row-major.
    fn residual(&self) -> Option<&[f32]>;
    /// The blocks ran: their residual (hidden state after the last block minus the one
    /// entering the first).
    fn store_residual(&mut self, residual: Vec<f32>);
}

struct Inputs<'c> {
    patches: Tensor<'c>,
    temb: Tensor<'c>,
    text: Tensor<'c>,
    image: Option<Tensor<'c>>,
    cos: Tensor<'c>,
    sin: Tensor<'c>,
}

/// What the embeddings produce for the blocks and the head.
struct Embedded<'c> {
    x: Tensor<'c>,
    e: Tensor<'c>,
    e0: Tensor<'c>,
    context: Tensor<'c>,
    img: Option<Tensor<'c>>,
}

impl<'w> WanDit<'w> {
    /// The DiT whose tensors are under `prefix` in `set`, config inferred from the shapes,
    /// computing with `threads` CPU threads.
    pub fn new(set: &'w TensorSet<'w>, prefix: &str, threads: usize) -> Result<Self, WanDitError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`WanDit::new`], computing through `runner` (its backend must be able to read every
    /// weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        mut runner: GraphRunner<'w>,
    ) -> Result<Self, WanDitError> {
        let config = WanDitConfig::from_weights(set, prefix)?;
        runner.set_name("dit");
        let model = WanDit {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            attention: Attention::default(),
            runner,
            stream: None,
            last_stream: StreamStats::default(),
        };
        // Build (not run) a tiny graph so that every tensor is looked up and checked now.
        let size = model.graph_size();
        let ctx = Context::new_meta(size, size)?;
        let img = model.config.image_dim.map(|_| 1);
        let inp = model.inputs(&ctx, (1, 1, 1), 1, img, false);
        let emb = model.embed(&ctx, &inp)?;
        let mut x = emb.x;
        for i in 0..model.config.layers {
            x = model.block_of(&ctx, i, x, &emb, &inp)?;
        }
        model.head(&ctx, x, emb.e)?;
        Ok(model)
    }

    pub fn config(&self) -> &WanDitConfig {
        &self.config
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    /// The blocks in execution order, as tensor-name prefixes (`blocks.N.`): what streams.
    pub fn blocks(config: &WanDitConfig) -> Vec<String> {
        (0..config.layers).map(|i| format!("blocks.{i}.")).collect()
    }

    /// Chooses the attention kernel for later forwards.
    pub fn set_attention(&mut self, attention: Attention) {
        self.attention = attention;
        self.runner.invalidate();
    }

    /// Runs the blocks from `weights`, a device copy of this model's weight set whose blocks
    /// (`blocks.N.`, in order) are streamed through slots. The model must have been created
    /// over `weights.set()`.
    pub fn set_streaming(
        &mut self,
        weights: Option<&'w DeviceWeights<'w>>,
    ) -> Result<(), WanDitError> {
        if let Some(dw) = weights {
            if dw.is_streamed() && dw.blocks() != self.config.layers {
                return Err(WanDitError::Config(format!(
                    "{} streamed blocks for a model of {} layers",
                    dw.blocks(),
                    self.config.layers
                )));
            }
        }
        self.stream = weights.filter(|dw| dw.is_streamed());
        self.runner.invalidate();
        Ok(())
    }

    /// Device bytes a forward over an `f` x `h` x `w` latent with `text_len` text and
    /// `image_len` image tokens needs besides the weights, as (compute buffer, carried
    /// activations): run as one graph (activations 0) or, `staged`, as the sequence of graphs
    /// of a streamed forward. Measured by building the graphs and sizing them with ggml's
    /// graph allocator; nothing is computed and no weight is read.
    pub fn memory(
        &self,
        (f, h, w): (usize, usize, usize),
        text_len: usize,
        image_len: Option<usize>,
        staged: bool,
    ) -> Result<(u64, u64), WanDitError> {
        let shape: Shape = ((f, h / 2, w / 2), text_len, image_len);
        let g = self.build_graphs(shape, staged)?;
        let set = g.set();
        // The block graphs are all alike: the first stands for them.
        let n = set.len();
        let compute = self
            .runner
            .measure([0, 1.min(n - 1), n - 1].map(|i| set.graph(i)))?;
        Ok((compute as u64, set.state_bytes() as u64))
    }

    /// Upload statistics of the last streamed forward.
    pub fn last_stream_stats(&self) -> StreamStats {
        self.last_stream
    }

    /// q, k, v [128, H, T, 1] -> [128 * H, Tq, 1].
    fn attend<'c>(
        &self,
        ctx: &'c Context,
        q: Tensor<'c>,
        k: Tensor<'c>,
        v: Tensor<'c>,
    ) -> Tensor<'c> {
        match self.attention {
            Attention::MulMat => nn::multi_head_attention(ctx, q, k, v, None),
            Attention::Flash => nn::flash_attention(ctx, q, k, v, !self.runner.is_cpu()),
        }
    }

    fn graph_size(&self) -> usize {
        160 * self.config.layers + 512
    }

    /// The velocity for latent `x` (row-major [in_channels, f, h, w]; h and w even) at
    /// `timestep`, with `text` [Lt, text_dim] (already padded as the pipeline wants) and, for
    /// I2V, `image` [Li, image_dim]. Returns row-major [out_channels, f, h, w].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        x: &[f32],
        timestep: f32,
        text: &[f32],
        image: Option<&[f32]>,
        f: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, WanDitError> {
        self.forward_cached(x, timestep, text, image, (f, h, w), None)
    }

    /// [`WanDit::forward`] with a [`BlockCache`] deciding whether the blocks run (the graphs
    /// are then staged: embeddings, blocks, head).
    pub fn forward_cached(
        &mut self,
        x: &[f32],
        timestep: f32,
        text: &[f32],
        image: Option<&[f32]>,
        (f, h, w): (usize, usize, usize),
        cache: Option<&mut dyn BlockCache>,
    ) -> Result<Vec<f32>, WanDitError> {
        let cfg = self.config.clone();
        if f == 0 || h == 0 || w == 0 || h % 2 != 0 || w % 2 != 0 {
            return Err(WanDitError::Input(format!(
                "latent {f}x{h}x{w}: frames must be > 0 and height, width even"
            )));
        }
        let c = cfg.in_channels;
        if x.len() != c * f * h * w {
            return Err(WanDitError::Input(format!(
                "latent has {} values, expected {c} x {f} x {h} x {w}",
                x.len()
            )));
        }
        if text.is_empty() || text.len() % cfg.text_dim != 0 {
            return Err(WanDitError::Input(format!(
                "text has {} values, not a whole number of {}-wide tokens",
                text.len(),
                cfg.text_dim
            )));
        }
        let img_len = match (cfg.image_dim, image) {
            (Some(d), Some(img)) if !img.is_empty() && img.len() % d == 0 => Some(img.len() / d),
            (Some(d), Some(img)) => {
                return Err(WanDitError::Input(format!(
                    "image has {} values, not a whole number of {d}-wide tokens",
                    img.len()
                )))
            }
            (Some(_), None) => {
                return Err(WanDitError::Input("an I2V model needs image tokens".into()))
            }
            (None, Some(_)) => {
                return Err(WanDitError::Input(
                    "image tokens given to a T2V model (no img_emb)".into(),
                ))
            }
            (None, None) => None,
        };
        let (hp, wp) = (h / 2, w / 2);
        let tokens = f * hp * wp;
        let _span = tracing::debug_span!("wan_dit", dim = cfg.dim, tokens).entered();

        let shape: Shape = ((f, hp, wp), text.len() / cfg.text_dim, img_len);
        let staged = self.stream.is_some() || cache.is_some();
        let key = [
            f,
            hp,
            wp,
            shape.1,
            img_len.map_or(0, |l| l + 1),
            staged as usize,
        ];
        if !self.runner.lookup(&key) {
            let built = self.build_graphs(shape, staged)?;
            self.runner.insert(&key, built);
        }
        let stream = self.stream;
        let mut g = self.runner.cached()?;
        if staged && g.fresh() {
            // The rope tables are state tensors of a staged forward: set once.
            let (cos, sin) = rope_tables(HEAD_DIM, f, hp, wp);
            ggml::tensor_set_f32(g.tensor(K_COS)?, &cos)?;
            ggml::tensor_set_f32(g.tensor(K_SIN)?, &sin)?;
        }

        // Patches: token (f, hp, wp) row-major, features (c, kh, kw) as the conv kernel.
        let mut patches = Vec::with_capacity(tokens * c * 4);
        for fi in 0..f {
            for hi in 0..hp {
                for wi in 0..wp {
                    for ci in 0..c {
                        for kh in 0..2 {
                            for kw in 0..2 {
                                let idx = ((ci * f + fi) * h + 2 * hi + kh) * w + 2 * wi + kw;
                                patches.push(x[idx]);
                            }
                        }
                    }
                }
            }
        }
        // The first graph holds the inputs: place it, then fill them.
        g.place(0)?;
        ggml::tensor_set_f32(g.tensor(K_PATCHES)?, &patches)?;
        ggml::tensor_set_f32(
            g.tensor(K_TEMB)?,
            &timestep_embedding(timestep, cfg.freq_dim),
        )?;
        ggml::tensor_set_f32(g.tensor(K_TEXT)?, text)?;
        if let (Ok(t), Some(img)) = (g.tensor(K_IMAGE), image) {
            ggml::tensor_set_f32(t, img)?;
        }
        if !staged {
            // The rope tables are graph inputs here (state tensors, set once, when staged).
            let (cos, sin) = rope_tables(HEAD_DIM, f, hp, wp);
            ggml::tensor_set_f32(g.tensor(K_COS)?, &cos)?;
            ggml::tensor_set_f32(g.tensor(K_SIN)?, &sin)?;
        }
        g.compute(0)?;
        let mut stats = StreamStats::default();
        if let Some(c) = cache {
            let e0 = ggml::tensor_get_f32(g.tensor(K_STATE_E0)?)?;
            let x0 = ggml::tensor_get_f32(g.tensor(K_STATE_X)?)?;
            if c.skip_blocks(&e0) {
                let r = c
                    .residual()
                    .filter(|r| r.len() == x0.len())
                    .ok_or_else(|| {
                        WanDitError::Input("the step cache skipped without a residual".into())
                    })?;
                let x: Vec<f32> = x0.iter().zip(r).map(|(a, b)| a + b).collect();
                ggml::tensor_set_f32(g.tensor(K_STATE_X)?, &x)?;
            } else {
                stats = g.run_blocks::<WanDitError>(1, cfg.layers, stream)?;
                let xl = ggml::tensor_get_f32(g.tensor(K_STATE_X)?)?;
                c.store_residual(xl.iter().zip(&x0).map(|(a, b)| a - b).collect());
            }
            g.compute(g.len() - 1)?;
        } else if staged {
            stats = g.run_blocks::<WanDitError>(1, cfg.layers, stream)?;
            g.compute(g.len() - 1)?;
        }
        let y = ggml::tensor_get_f32(g.tensor(K_OUT)?)?; // [(kh, kw, c), token]
        self.last_stream = stats;
        let oc = cfg.out_channels;
        let mut out = vec![0f32; oc * f * h * w];
        for fi in 0..f {
            for hi in 0..hp {
                for wi in 0..wp {
                    let t = (fi * hp + hi) * wp + wi;
                    for kh in 0..2 {
                        for kw in 0..2 {
                            for ci in 0..oc {
                                let v = y[t * 4 * oc + (kh * 2 + kw) * oc + ci];
                                out[((ci * f + fi) * h + 2 * hi + kh) * w + 2 * wi + kw] = v;
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Builds the graphs for `shape`: one graph, or (streamed) the embeddings, one graph per
    /// block and the head, with the carried activations in a state buffer (leased as "dit
    /// activations"). The rope tables of a staged set are filled by the first forward.
    fn build_graphs(&self, shape: Shape, staged: bool) -> Result<Built<'w>, WanDitError> {
        let ((f, hp, wp), text_len, img_len) = shape;
        let size = self.graph_size();
        let layers = self.config.layers;
        let sizes = GraphSizes {
            tensors: size,
            nodes: size,
            graphs: if staged { layers + 2 } else { 1 },
        };
        self.runner.build(sizes, "activations", |ctx, _| {
            let inp = self.inputs(ctx, (f, hp, wp), text_len, img_len, staged);
            let emb = self.embed(ctx, &inp)?;
            let mut keep = vec![inp.patches, inp.temb, inp.text, inp.cos, inp.sin];
            let (graphs, state, out, carried) = if staged {
                // Carried activations: copies of the embeddings' outputs.
                let like = |t: Tensor<'_>| ctx.new_f32(&t.ne());
                let st = Embedded {
                    x: like(emb.x).set_name("wan.state_x"),
                    e: like(emb.e),
                    e0: like(emb.e0).set_name("wan.state_e0"),
                    context: like(emb.context),
                    img: emb.img.map(like),
                };
                let mut pre = vec![
                    ctx.cpy(emb.x, st.x),
                    ctx.cpy(emb.e, st.e),
                    ctx.cpy(emb.e0, st.e0),
                    ctx.cpy(emb.context, st.context),
                ];
                let mut state = vec![st.x, st.e, st.e0, st.context, inp.cos, inp.sin];
                if let (Some(a), Some(b)) = (emb.img, st.img) {
                    pre.push(ctx.cpy(a, b));
                    state.push(b);
                }
                let mut graphs = vec![pre];
                for i in 0..layers {
                    let y = self.block_of(ctx, i, st.x, &st, &inp)?;
                    graphs.push(vec![ctx.cpy(y, st.x)]);
                }
                let out = self.head(ctx, st.x, st.e)?;
                graphs.push(vec![out]);
                (graphs, state, out, [st.x, st.e0])
            } else {
                let mut x = emb.x;
                for i in 0..layers {
                    x = self.block_of(ctx, i, x, &emb, &inp)?;
                }
                let out = self.head(ctx, x, emb.e)?;
                // No carried state in one graph: the inputs stand in at its places.
                (vec![vec![out]], Vec::new(), out, [inp.temb, inp.temb])
            };
            keep.push(out);
            keep.extend(carried);
            keep.extend(inp.image);
            Ok(GraphSetParts {
                keep,
                graphs,
                state,
            })
        })
    }

    /// The graph inputs for a shape. The rope tables are inputs of a single graph, or state
    /// tensors (filled once) of a staged one.
    fn inputs<'c>(
        &self,
        ctx: &'c Context,
        (f, hp, wp): (usize, usize, usize),
        text_len: usize,
        image_len: Option<usize>,
        staged: bool,
    ) -> Inputs<'c> {
        let cfg = &self.config;
        let t = (f * hp * wp) as i64;
        let cin = cfg.in_channels as i64;
        let input = |name: &str, ne: &[i64]| ctx.new_f32(ne).set_name(name).set_input();
        let hd = HEAD_DIM as i64;
        let table = |name: &str| {
            let x = ctx.new_f32(&[hd, 1, t]).set_name(name);
            if staged {
                x
            } else {
                x.set_input()
            }
        };
        Inputs {
            patches: input("wan.patches", &[4 * cin, t]),
            temb: input("wan.t_sinusoid", &[cfg.freq_dim as i64]),
            text: input("wan.text", &[cfg.text_dim as i64, text_len as i64]),
            image: match (cfg.image_dim, image_len) {
                (Some(di), Some(l)) => Some(input("wan.image", &[di as i64, l as i64])),
                _ => None,
            },
            cos: table("wan.rope_cos"),
            sin: table("wan.rope_sin"),
        }
    }

    /// Patch, time, text and image embeddings.
    fn embed<'c>(&self, ctx: &'c Context, inp: &Inputs<'c>) -> Result<Embedded<'c>, WanDitError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let w: &Weights<'c> = &self.weights;
        let d = cfg.dim as i64;
        let cin = cfg.in_channels as i64;
        // Patch embedding: the [OC, IC, 1, 2, 2] kernel is a [4 IC, OC] linear on patches.
        let pw = w.get("patch_embedding.weight")?;
        let pw = ctx.reshape(pw, &[4 * cin, d]);
        let mut x = ctx.mul_mat(pw, inp.patches);
        let pb = w.get_shaped("patch_embedding.bias", &[d])?;
        x = ctx.add(x, to_f32(ctx, pb)).set_name("wan.x_embed"); // [D, T]

        let e = nn::linear(ctx, &w.pp("time_embedding.0"), inp.temb)?;
        let e = nn::linear(ctx, &w.pp("time_embedding.2"), ctx.silu(e))?.set_name("wan.e");
        let e0 = nn::linear(ctx, &w.pp("time_projection.1"), ctx.silu(e))?;
        let e0 = ctx.reshape(e0, &[d, 6]).set_name("wan.e0");

        let c = nn::linear(ctx, &w.pp("text_embedding.0"), inp.text)?;
        let c =
            nn::linear(ctx, &w.pp("text_embedding.2"), gelu_tanh(ctx, c))?.set_name("wan.context");
        let img = match inp.image {
            Some(im) => {
                let p = w.pp("img_emb.proj");
                let y = nn::layer_norm(ctx, &p.pp(0), im, IMG_LN_EPS)?;
                let y = nn::linear(ctx, &p.pp(1), y)?;
                let y = nn::linear(ctx, &p.pp(3), ctx.gelu_erf(y))?;
                Some(nn::layer_norm(ctx, &p.pp(4), y, IMG_LN_EPS)?.set_name("wan.image_context"))
            }
            None => None,
        };
        Ok(Embedded {
            x,
            e,
            e0,
            context: c,
            img,
        })
    }

    /// Block `i` on `x` with the embeddings' conditioning.
    fn block_of<'c>(
        &self,
        ctx: &'c Context,
        i: usize,
        x: Tensor<'c>,
        emb: &Embedded<'c>,
        inp: &Inputs<'c>,
    ) -> Result<Tensor<'c>, WanDitError>
    where
        'w: 'c,
    {
        let w: &Weights<'c> = &self.weights;
        self.block(
            ctx,
            &w.pp(format!("blocks.{i}")),
            i,
            x,
            emb.e0,
            emb.context,
            emb.img,
            inp.cos,
            inp.sin,
        )
    }

    /// The output head: [D, T] -> [(kh, kw, out), T].
    fn head<'c>(
        &self,
        ctx: &'c Context,
        x: Tensor<'c>,
        e: Tensor<'c>,
    ) -> Result<Tensor<'c>, WanDitError>
    where
        'w: 'c,
    {
        let w: &Weights<'c> = &self.weights;
        let d = self.config.dim as i64;
        let hm = w.get("head.modulation")?;
        let hm = ctx.add(
            ctx.reshape(to_f32(ctx, hm), &[d, 2]),
            ctx.reshape(e, &[d, 1]),
        );
        let (shift, scale) = (row(ctx, hm, 0), row(ctx, hm, 1));
        let y = modulate(ctx, ctx.norm(x, EPS), shift, scale);
        Ok(nn::linear(ctx, &w.pp("head.head"), y)?
            .set_name("wan.out")
            .set_output())
    }

    #[allow(clippy::too_many_arguments)]
    fn block<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        i: usize,
        x: Tensor<'c>,
        e0: Tensor<'c>,
        context: Tensor<'c>,
        img: Option<Tensor<'c>>,
        cos: Tensor<'c>,
        sin: Tensor<'c>,
    ) -> Result<Tensor<'c>, WanDitError> {
        let cfg = &self.config;
        let d = cfg.dim as i64;
        let m = w.get("modulation")?;
        if m.n_elements() != 6 * d {
            return Err(NnError::Shape {
                tensor: w.name("modulation"),
                expected: format!("[{d}, 6]"),
                found: m.ne(),
            }
            .into());
        }
        let m = ctx.add(ctx.reshape(to_f32(ctx, m), &[d, 6]), e0);
        let r = |k| row(ctx, m, k);

        // Self-attention.
        let y = modulate(ctx, ctx.norm(x, EPS), r(0), r(1));
        let sa = w.pp("self_attn");
        let q = rms(ctx, &sa.pp("norm_q"), nn::linear(ctx, &sa.pp("q"), y)?)?;
        let k = rms(ctx, &sa.pp("norm_k"), nn::linear(ctx, &sa.pp("k"), y)?)?;
        let v = nn::linear(ctx, &sa.pp("v"), y)?;
        let q = rope(ctx, self.heads(ctx, q), cos, sin);
        let k = rope(ctx, self.heads(ctx, k), cos, sin);
        let a = self.attend(ctx, q, k, self.heads(ctx, v));
        let a = ctx.reshape(a, &[d, x.ne()[1]]);
        let a = nn::linear(ctx, &sa.pp("o"), a)?;
        let x = ctx
            .add(x, ctx.mul(a, r(2)))
            .set_name(&format!("wan.{i}.self_attn"));

        // Cross-attention.
        let y = nn::layer_norm(ctx, &w.pp("norm3"), x, EPS)?;
        let ca = w.pp("cross_attn");
        let q = rms(ctx, &ca.pp("norm_q"), nn::linear(ctx, &ca.pp("q"), y)?)?;
        let q = self.heads(ctx, q);
        let k = rms(
            ctx,
            &ca.pp("norm_k"),
            nn::linear(ctx, &ca.pp("k"), context)?,
        )?;
        let v = nn::linear(ctx, &ca.pp("v"), context)?;
        let mut a = self.attend(ctx, q, self.heads(ctx, k), self.heads(ctx, v));
        if let Some(img) = img {
            let k = rms(
                ctx,
                &ca.pp("norm_k_img"),
                nn::linear(ctx, &ca.pp("k_img"), img)?,
            )?;
            let v = nn::linear(ctx, &ca.pp("v_img"), img)?;
            let ai = self.attend(ctx, q, self.heads(ctx, k), self.heads(ctx, v));
            a = ctx.add(a, ai);
        }
        let a = ctx.reshape(a, &[d, x.ne()[1]]);
        let a = nn::linear(ctx, &ca.pp("o"), a)?;
        let x = ctx.add(x, a).set_name(&format!("wan.{i}.cross_attn"));

        // FFN.
        let y = modulate(ctx, ctx.norm(x, EPS), r(3), r(4));
        let y = nn::linear(ctx, &w.pp("ffn.0"), y)?;
        let y = nn::linear(ctx, &w.pp("ffn.2"), gelu_tanh(ctx, y))?;
        Ok(ctx
            .add(x, ctx.mul(y, r(5)))
            .set_name(&format!("wan.{i}.out")))
    }

    /// [dim, T] -> [128, H, T, 1].
    fn heads<'c>(&self, ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
        let x = if x.nb()[1] == x.ne()[0] as usize * 4 {
            x
        } else {
            ctx.cont(x)
        };
        ctx.reshape(
            x,
            &[HEAD_DIM as i64, self.config.heads as i64, x.ne()[1], 1],
        )
    }
}

/// Row `k` of a contiguous [dim, n] F32 tensor, as [dim, 1].
fn row<'c>(ctx: &'c Context, m: Tensor<'c>, k: usize) -> Tensor<'c> {
    let d = m.ne()[0];
    ctx.view(m, &[d, 1], &[m.nb()[1]], k * m.nb()[1])
}

/// y * (1 + scale) + shift.
fn modulate<'c>(
    ctx: &'c Context,
    y: Tensor<'c>,
    shift: Tensor<'c>,
    scale: Tensor<'c>,
) -> Tensor<'c> {
    ctx.add(ctx.add(y, ctx.mul(y, scale)), shift)
}

/// RMSNorm over dim 0 with `{prefix}weight`, eps 1e-6.
fn rms<'c>(ctx: &'c Context, w: &Weights<'c>, x: Tensor<'c>) -> Result<Tensor<'c>, WanDitError> {
    let g = w.get_shaped("weight", &[x.ne()[0]])?;
    Ok(ctx.mul(ctx.rms_norm(x, EPS), to_f32(ctx, g)))
}

/// Rotates adjacent pairs of x [128, H, T, 1] by the per-token tables [128, 1, T].
fn rope<'c>(ctx: &'c Context, x: Tensor<'c>, cos: Tensor<'c>, sin: Tensor<'c>) -> Tensor<'c> {
    let [hd, h, t, _] = x.ne();
    let pairs = ctx.reshape(x, &[2, hd / 2, h, t]);
    let nb = pairs.nb();
    let ne = [1, hd / 2, h, t];
    let even = ctx.cont(ctx.view(pairs, &ne, &[nb[1], nb[2], nb[3]], 0));
    let odd = ctx.cont(ctx.view(pairs, &ne, &[nb[1], nb[2], nb[3]], nb[0]));
    // As [1, hd/2, h * t]: ggml's CUDA concat launches one kernel per index of dim 3.
    let flat = |x: Tensor<'c>| ctx.reshape(x, &[1, hd / 2, h * t]);
    let swapped = ctx.reshape(ctx.concat(flat(odd), flat(even), 0), &[hd, h, t, 1]);
    let cos = ctx.reshape(cos, &[hd, 1, t, 1]);
    let sin = ctx.reshape(sin, &[hd, 1, t, 1]);
    ctx.add(ctx.mul(x, cos), ctx.mul(swapped, sin))
}

// LoRA at run time (src/lora): kept at the end of the file so that it merges trivially.
impl<'w> WanDit<'w> {
    /// Attaches LoRA adapters built for this DiT's weight set (`None` detaches them), e.g. a
    /// lightx2v / CausVid distill LoRA. Base weights are left as they are (quantized stays
    /// quantized): the adapters add their terms to the layers' outputs.
    pub fn set_adapters(
        &mut self,
        adapters: Option<&'w crate::lora::Adapters>,
    ) -> Result<(), WanDitError> {
        self.weights = self.weights.clone().with_adapters(adapters)?;
        self.weights.check_backend(self.runner.backend())?;
        self.runner.invalidate();
        Ok(())
    }
}

// The network this model file describes (see `super::network`).

/// The first name segments of a Wan DiT's tensors (original and diffusers names).
const DIT_ROOTS: &[&[&str]] = &[
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
];

/// The Wan I2V DiT's names: original Wan, or diffusers mapped onto them
/// (`names::wan::map_dit`).
pub static I2V_NAMES: Naming = Naming {
    architecture: Architecture::WAN_DIT_I2V,
    description: "Wan image-to-video diffusion transformer",
    roots: DIT_ROOTS,
    map: names::wan::map_dit,
};

/// The Wan T2V DiT's names: as [`I2V_NAMES`].
pub static T2V_NAMES: Naming = Naming {
    architecture: Architecture::WAN_DIT_T2V,
    description: "Wan text-to-video diffusion transformer",
    roots: DIT_ROOTS,
    map: names::wan::map_dit,
};

/// A Wan DiT file: I2V or T2V by shape (`names::wan::resolve_dit`).
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "wan-dit",
    priority: 0,
    listing: 0,
    signatures: &[
        sig(Layout::Original, "blocks.#.self_attn.q.weight", &["blocks.#.cross_attn.q.weight"], None, None),
        sig(Layout::Original, "patch_embedding.weight", &["time_embedding.0.weight"], None, None),
        sig(Layout::Diffusers, "blocks.#.attn1.to_q.weight", &["blocks.#.ffn.net.0.proj.weight"], None, None),
        sig(Layout::Diffusers, "condition_embedder.time_embedder.linear_1.weight", &[], None, None),
    ],
    architectures: &[&I2V_NAMES, &T2V_NAMES],
    context: None,
    resolve: Some(names::wan::resolve_dit),
    hints: &["wan"],
};

/// The Wan DiT (Wan2.1 I2V or T2V; for Wan2.2 A14B, the low-noise expert).
pub static NETWORK: Network = Network {
    component: Component {
        name: "dit",
        role: Role::Denoiser,
        stage: Stage::Video,
        order: 4,
        uses: &[Use::now("sample")],
    },
    label: "a Wan DiT",
    flag: "--model",
    architectures: &[Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V],
    recognitions: &[&RECOGNITION],
    streams: true,
    memory,
    describe,
};

/// Wan2.2 A14B's high-noise expert: a second DiT of the same architecture that samples the
/// first steps, planned as its own component so that it is freed before the low-noise expert
/// ([`NETWORK`]) is placed: the two are never on the device together.
pub static HIGH_NOISE_NETWORK: Network = Network {
    component: Component {
        name: "dit_high",
        role: Role::Denoiser,
        stage: Stage::Video,
        order: 3,
        uses: &[Use::now("sample (high noise)")],
    },
    label: "a Wan2.2 high-noise expert",
    flag: "--high-noise-model",
    architectures: &[Architecture::WAN_DIT_I2V, Architecture::WAN_DIT_T2V],
    recognitions: &[&RECOGNITION],
    streams: true,
    memory,
    describe,
};

/// The device memory besides the weights, exactly as a run allocates it: the larger of one
/// whole graph and the staged graphs of a streamed forward plus the activations they carry
/// ([`crate::models::umt5::TEXT_LEN`] text tokens; 257 image tokens for an I2V model).
fn memory(set: &TensorSet<'_>, prefix: &str, r: &Request) -> Result<Memory, ModelError> {
    let dit = WanDit::new(set, prefix, 1)?;
    let img = dit.config().image_dim.map(|_| 257);
    let lat = (
        1 + r.frames.saturating_sub(1) / 4,
        r.height as usize / 8,
        r.width as usize / 8,
    );
    let text = crate::models::umt5::TEXT_LEN;
    let (whole, _) = dit.memory(lat, text, img, false)?;
    let (staged, state) = dit.memory(lat, text, img, true)?;
    Ok(Memory {
        compute_bytes: whole.max(staged + state),
        tiles: Vec::new(),
    })
}

/// The kind of DiT: the Wan2.1 CLIP image branch (with `img_emb.emb_pos` for first-last-frame),
/// latent-only image conditioning (more input than output channels: a Wan2.2 I2V-A14B expert),
/// or T2V (`crate::pipeline::inspect` names a Wan2.2 T2V-A14B expert by its file name).
fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = WanDitConfig::from_weights(set, prefix)?;
    let first_last_frame = Weights::new(set, prefix).contains("img_emb.emb_pos");
    let kind = match c.kind() {
        WanDitKind::Wan21I2v if first_last_frame => "Wan2.1 FLF2V DiT",
        WanDitKind::Wan21I2v => "Wan2.1 I2V DiT",
        WanDitKind::Wan22I2vExpert => "Wan2.2 I2V-A14B expert",
        WanDitKind::T2v => "Wan T2V DiT",
    };
    let summary = format!(
        "{kind}, dim {}, {} blocks, {} heads, ffn {}",
        c.dim, c.layers, c.heads, c.ffn_dim
    );
    Ok(network::description(
        summary,
        &c,
        &[("first_last_frame", first_last_frame.into())],
    ))
}

/// On a device: flash attention, with its LoRA adapters, its blocks streamed through the
/// plan's slots when the placement streams them.
impl super::Place for WanDit<'_> {
    type Model<'x> = WanDit<'x>;
    type Error = WanDitError;

    fn place<'x>(
        weights: &'x DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<WanDit<'x>, WanDitError> {
        let mut m = WanDit::with_runner(weights.set(), prefix, runner)?;
        m.set_attention(Attention::Flash);
        m.set_adapters(adapters)?;
        m.set_streaming(Some(weights))?;
        Ok(m)
    }

    /// Its blocks stream.
    fn blocks(cpu: &WanDit<'_>) -> Vec<String> {
        WanDit::blocks(cpu.config())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_split_matches_diffusers() {
        assert_eq!(rope_split(128), [44, 42, 42]);
    }
}
