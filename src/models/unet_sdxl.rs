//! The SDXL UNet (ldm `UNetModel`, diffusers `UNet2DConditionModel`) on ggml.
//!
//! ldm names are canonical (diffusers names are mapped by the weight loader):
//!   emb = time_embed.2(silu(time_embed.0(sinusoid(t, model_channels))))
//!       + label_emb.0.2(silu(label_emb.0.0(y)))          y = pooled ++ sinusoid(6 size ids)
//!   h = input_blocks.0.0(x); skips = [h]
//!   per level i: R x (ResBlock `input_blocks.N.0`, SpatialTransformer `input_blocks.N.1` when
//!     the level has attention); below the last level a stride-2 conv `input_blocks.N.0.op`;
//!     every block output is pushed to skips
//!   middle_block.0 (ResBlock), .1 (SpatialTransformer), .2 (ResBlock)
//!   per level from the bottom: R+1 x (cat(h, skips.pop()) on channels, ResBlock
//!     `output_blocks.N.0`, transformer `.1`), then nearest 2x + conv `output_blocks.N.{1|2}.conv`
//!   out = out.2(silu(out.0(h)))
//! ResBlock: h = in_layers.2(silu(in_layers.0(x))) + emb_layers.1(silu(emb));
//!   h = out_layers.3(silu(out_layers.0(h))); x' = skip_connection?(x) + h.
//! SpatialTransformer (linear projections): x + proj_out(blocks(proj_in(norm(x)))), each block
//!   x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)), ff a GEGLU
//!   (value = first half of `ff.net.0.proj`, gate = second half, exact GELU) then `ff.net.2`.
//! GroupNorm eps 1e-5 (1e-6 in the transformers' `norm`), LayerNorm eps 1e-5, head dim 64.
//!
//! Shapes are ggml `ne` (innermost first): images [W, H, C, N], tokens [C, T, N]; the public
//! API takes and returns row-major [C, H, W] and [T, C] slices, which are the same memory.
//!
//! Attention ([`Attention`]): by default the plain F32 path ([`nn::multi_head_attention`]:
//! mul_mat, softmax, mul_mat); optionally ggml's `flash_attn_ext` with F32 K/V, as exact on the
//! CPU and without the score matrix.

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GraphSetParts, OwnedGraph, Tensor, TensorSet};
use crate::nn::{self, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// Moved to [`crate::nn`]; here for the callers of its former path.
pub use crate::nn::timestep_embedding;

/// GroupNorm groups of the real model (not stored in the files).
pub const DEFAULT_GROUPS: usize = 32;
/// Attention head size of SDXL (heads = channels / 64; MODELS.md).
pub const HEAD_DIM: usize = 64;
const NORM_EPS: f32 = 1e-5;
const TRANSFORMER_NORM_EPS: f32 = 1e-6;
const LAYER_NORM_EPS: f32 = 1e-5;

/// Why a UNet forward failed.
#[derive(Debug, thiserror::Error)]
pub enum UnetError {
    #[error("SDXL UNet: {0}")]
    Weights(#[from] NnError),
    #[error("SDXL UNet: {0}")]
    Config(String),
    #[error("SDXL UNet: {0}")]
    Input(String),
    #[error("SDXL UNet: {0}")]
    Ggml(#[from] GgmlError),
}

/// Hyperparameters, inferred from the weights by [`UnetConfig::from_weights`]. SDXL's values
/// (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json): 320 channels, mult [1, 2, 4],
/// 2 res blocks, transformer depth [0, 2, 10] and 10 in the middle, context 2048, adm_in 2816.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels of level 0 (`block_out_channels[0]`).
    pub model_channels: usize,
    /// Channels of each level, shallowest first.
    pub channels: Vec<usize>,
    /// Res blocks per down level (`layers_per_block`); up levels have one more.
    pub res_blocks: usize,
    /// Transformer blocks per SpatialTransformer of each level, 0 where there is none.
    pub transformer_depth: Vec<usize>,
    pub mid_transformer_depth: usize,
    /// Width of the text context (0 when no level has attention).
    pub context_dim: usize,
    /// Input width of `label_emb` (pooled + 6 sinusoidal size ids); `None` without one.
    pub adm_in: Option<usize>,
    /// Width of the time embedding (4 x model channels).
    pub time_embed_dim: usize,
    pub head_dim: usize,
    pub groups: usize,
}

impl UnetConfig {
    /// Reads the shapes of the ldm-named weights under `prefix` ("" for a UNet file,
    /// "model.diffusion_model." in a checkpoint).
    pub fn from_weights(set: &TensorSet<'_>, prefix: &str) -> Result<UnetConfig, UnetError> {
        let w = Weights::new(set, prefix);
        let dim = |name: &str, i: usize| -> Result<usize, UnetError> {
            Ok(w.get(name)?.ne()[i] as usize)
        };
        // conv [KW, KH, IC, OC], linear [in, out]
        let in_channels = dim("input_blocks.0.0.weight", 2)?;
        let model_channels = dim("input_blocks.0.0.weight", 3)?;
        let out_channels = dim("out.2.weight", 3)?;
        let time_embed_dim = dim("time_embed.0.weight", 1)?;
        let adm_in = if w.contains("label_emb.0.0.weight") {
            Some(dim("label_emb.0.0.weight", 0)?)
        } else {
            None
        };
        let mut res_blocks = 0;
        while w.contains(&format!(
            "input_blocks.{}.0.in_layers.0.weight",
            res_blocks + 1
        )) {
            res_blocks += 1;
        }
        if res_blocks == 0 {
            return Err(
                NnError::MissingTensor(w.name("input_blocks.1.0.in_layers.0.weight")).into(),
            );
        }
        let (mut channels, mut transformer_depth) = (Vec::new(), Vec::new());
        let mut context_dim = 0;
        let mut n = 1;
        loop {
            let blk = w.pp("input_blocks").pp(n);
            let c = blk.get("0.out_layers.3.weight")?.ne()[3] as usize;
            let depth = count_transformer_blocks(&blk.pp(1));
            if depth > 0 {
                context_dim = blk.get("1.transformer_blocks.0.attn2.to_k.weight")?.ne()[0] as usize;
            }
            channels.push(c);
            transformer_depth.push(depth);
            n += res_blocks;
            if w.contains(&format!("input_blocks.{n}.0.op.weight")) {
                n += 1;
            } else {
                break;
            }
        }
        let mid_transformer_depth = count_transformer_blocks(&w.pp("middle_block").pp(1));
        let config = UnetConfig {
            in_channels,
            out_channels,
            model_channels,
            channels,
            res_blocks,
            transformer_depth,
            mid_transformer_depth,
            context_dim,
            adm_in,
            time_embed_dim,
            head_dim: HEAD_DIM,
            groups: DEFAULT_GROUPS,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), UnetError> {
        if self.channels.is_empty() || self.res_blocks == 0 {
            return Err(UnetError::Config("no levels or no res blocks found".into()));
        }
        if self.model_channels % 2 != 0 {
            return Err(UnetError::Config(format!(
                "{} model channels: the timestep sinusoid needs an even width",
                self.model_channels
            )));
        }
        for &c in &self.channels {
            if self.groups == 0 || c % self.groups != 0 {
                return Err(UnetError::Config(format!(
                    "{c} channels are not a whole number of {} GroupNorm groups",
                    self.groups
                )));
            }
        }
        let attn_channels = self
            .channels
            .iter()
            .zip(&self.transformer_depth)
            .filter(|(_, &d)| d > 0)
            .map(|(&c, _)| c);
        for c in attn_channels {
            if self.head_dim == 0 || c % self.head_dim != 0 {
                return Err(UnetError::Config(format!(
                    "{c} channels are not a whole number of {}-wide heads",
                    self.head_dim
                )));
            }
        }
        if let Some(adm) = self.adm_in {
            if adm < 6 {
                return Err(UnetError::Config(format!(
                    "label_emb input of {adm} values"
                )));
            }
        }
        Ok(())
    }

    /// Latent pixels per pixel of the deepest level.
    pub fn downscale(&self) -> usize {
        1 << (self.channels.len() - 1)
    }
}

/// Transformer blocks under a SpatialTransformer prefix (0 when there is none). A block counts
/// when any of its main tensors is there, so that one missing tensor is reported by name
/// rather than silently dropping the block.
fn count_transformer_blocks(w: &Weights<'_>) -> usize {
    const PROBES: [&str; 5] = [
        "norm1.weight",
        "attn1.to_q.weight",
        "attn2.to_q.weight",
        "norm3.weight",
        "ff.net.2.weight",
    ];
    let mut d = 0;
    while PROBES
        .iter()
        .any(|p| w.contains(&format!("transformer_blocks.{d}.{p}")))
    {
        d += 1;
    }
    d
}

/// SDXL's added condition `y` for `label_emb`: `pooled` followed by the sinusoidal embedding
/// (width (adm_in - pooled) / 6) of each of the 6 size ids, (original h, w, crop top, left,
/// target h, w), as ComfyUI and diffusers build it (SDXL: 1280 + 6 x 256 = 2816).
pub fn sdxl_added_cond(
    pooled: &[f32],
    time_ids: [f32; 6],
    adm_in: usize,
) -> Result<Vec<f32>, UnetError> {
    let rest = adm_in.checked_sub(pooled.len()).unwrap_or(1);
    if rest == 0 || rest % 6 != 0 || (rest / 6) % 2 != 0 {
        return Err(UnetError::Input(format!(
            "a pooled embedding of {} values does not fit label_emb's {adm_in} inputs \
             (pooled + 6 even-width size embeddings)",
            pooled.len()
        )));
    }
    let mut y = pooled.to_vec();
    for id in time_ids {
        y.extend(timestep_embedding(id, rest / 6));
    }
    Ok(y)
}

/// How attention is computed. Both keep K and V in F32; on the tiny test model both match
/// diffusers to 1.5e-6 (ggml's flash kernel with F16 K/V, as GPU backends want it, gives
/// 3.9e-4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum Attention {
    /// mul_mat, softmax, mul_mat ([`nn::multi_head_attention`]): materializes the
    /// [Tk, Tq, heads] scores, 671 MB per self-attention at SDXL's 1024 px (4096 tokens,
    /// 10 heads).
    #[default]
    MulMat,
    /// ggml's fused `flash_attn_ext` (F32 accumulation): no score matrix.
    Flash,
}

/// An SDXL UNet over a loaded weight set, computing through its [`GraphRunner`].
pub struct SdxlUnet<'w> {
    weights: Weights<'w>,
    config: UnetConfig,
    attention: Attention,
    /// The graph of the last (h, w, context tokens), allocated and reused while they stay.
    runner: GraphRunner<'w>,
}

/// Graph inputs of one forward.
struct Inputs<'c> {
    x: Tensor<'c>,
    temb: Tensor<'c>,
    y: Option<Tensor<'c>>,
    context: Option<Tensor<'c>>,
}

impl<'w> SdxlUnet<'w> {
    /// The UNet whose ldm-named tensors are under `prefix` in `set`, config inferred from the
    /// shapes, computing with `threads` CPU threads. Every tensor is looked up and
    /// shape-checked here.
    pub fn new(set: &'w TensorSet<'w>, prefix: &str, threads: usize) -> Result<Self, UnetError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`SdxlUnet::new`], computing through `runner` (its backend must be able to read
    /// every weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        runner: GraphRunner<'w>,
    ) -> Result<Self, UnetError> {
        let config = UnetConfig::from_weights(set, prefix)?;
        Self::with_config_runner(set, prefix, config, runner)
    }

    /// As [`SdxlUnet::new`] with an explicit config (e.g. another group count).
    pub fn with_config(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: UnetConfig,
        threads: usize,
    ) -> Result<Self, UnetError> {
        Self::with_config_runner(set, prefix, config, GraphRunner::cpu(threads)?)
    }

    fn with_config_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: UnetConfig,
        mut runner: GraphRunner<'w>,
    ) -> Result<Self, UnetError> {
        config.validate()?;
        runner.set_name("unet");
        let unet = SdxlUnet {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            attention: Attention::default(),
            runner,
        };
        let ctx = Context::new_meta(GRAPH_SIZE, GRAPH_SIZE)?;
        let s = unet.config.downscale();
        unet.build(&ctx, s, s, 1)?;
        Ok(unet)
    }

    pub fn config(&self) -> &UnetConfig {
        &self.config
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    /// The blocks in execution order, as tensor-name prefixes: `input_blocks.N.`,
    /// `middle_block.`, `output_blocks.N.`.
    pub fn blocks(&self) -> Vec<String> {
        let per_level = self.config.channels.len();
        let inputs = 1 + per_level * self.config.res_blocks + (per_level - 1);
        let outputs = per_level * (self.config.res_blocks + 1);
        (0..inputs)
            .map(|i| format!("input_blocks.{i}."))
            .chain(std::iter::once("middle_block.".to_string()))
            .chain((0..outputs).map(|i| format!("output_blocks.{i}.")))
            .collect()
    }

    /// Chooses how attention is computed (the next forward rebuilds its graph).
    pub fn set_attention(&mut self, attention: Attention) {
        if attention != self.attention {
            self.attention = attention;
            self.runner.invalidate();
        }
    }

    /// The compute buffer a forward over an `h` x `w` latent with `tokens` context tokens
    /// needs, sized by ggml's graph allocator from the built graph (nothing is computed and no
    /// weight is read).
    pub fn compute_bytes(&self, h: usize, w: usize, tokens: usize) -> Result<u64, UnetError> {
        let graph = OwnedGraph::build(GRAPH_SIZE, GRAPH_SIZE, |ctx, _| {
            let (_, output) = self.build(ctx, h, w, tokens.max(1))?;
            Ok::<_, UnetError>((vec![], vec![output]))
        })?;
        Ok(self.runner.measure([graph.graph()])? as u64)
    }

    /// The model output (eps or v) for a latent `x`, row-major [in_channels, h, w] with h and w
    /// multiples of [`UnetConfig::downscale`], at the raw `timestep` (0..1000), with the text
    /// `context` row-major [tokens, context_dim] and the added condition `y` [adm_in] (see
    /// [`sdxl_added_cond`]; empty for a UNet without `label_emb`). Returns [out_channels, h, w].
    pub fn forward(
        &mut self,
        x: &[f32],
        timestep: f32,
        context: &[f32],
        y: &[f32],
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, UnetError> {
        let cfg = &self.config;
        let s = cfg.downscale();
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 || x.len() != cfg.in_channels * h * w {
            return Err(UnetError::Input(format!(
                "latent of {} values is not [{}, {h}, {w}] with sides multiples of {s}",
                x.len(),
                cfg.in_channels
            )));
        }
        let needs_context = cfg.context_dim > 0;
        let tokens = if needs_context {
            if context.is_empty() || context.len() % cfg.context_dim != 0 {
                return Err(UnetError::Input(format!(
                    "context of {} values is not [tokens, {}]",
                    context.len(),
                    cfg.context_dim
                )));
            }
            context.len() / cfg.context_dim
        } else {
            0
        };
        if y.len() != cfg.adm_in.unwrap_or(0) {
            return Err(UnetError::Input(format!(
                "added condition y of {} values, label_emb takes {}",
                y.len(),
                cfg.adm_in.unwrap_or(0)
            )));
        }
        let _span = tracing::debug_span!("unet_forward", h, w, tokens, timestep).entered();
        let key = [h, w, tokens.max(1)];
        if !self.runner.lookup(&key) {
            let sizes = GraphSizes::single(GRAPH_SIZE);
            let built = self.runner.build(sizes, "state", |ctx, _| {
                let (inputs, output) = self.build(ctx, h, w, key[2])?;
                let mut keep = vec![inputs.x, inputs.temb];
                keep.extend(inputs.y);
                keep.extend(inputs.context);
                keep.push(output);
                Ok::<_, UnetError>(GraphSetParts {
                    keep,
                    graphs: vec![vec![output]],
                    state: Vec::new(),
                })
            })?;
            self.runner.insert(&key, built);
        }
        let (model_channels, has_y, has_context) = (
            self.config.model_channels,
            self.config.adm_in.is_some(),
            self.config.context_dim > 0,
        );
        let mut g = self.runner.cached()?;
        // Placed once per shape: later forwards only fill the inputs.
        g.place(0)?;
        // Kept tensors in order: x, the timestep sinusoid, y (with `label_emb`), the context
        // (with attention), the output.
        let mut i = 0;
        let mut next = || {
            i += 1;
            i - 1
        };
        ggml::tensor_set_f32(g.tensor(next())?, x)?;
        ggml::tensor_set_f32(
            g.tensor(next())?,
            &timestep_embedding(timestep, model_channels),
        )?;
        if has_y {
            ggml::tensor_set_f32(g.tensor(next())?, y)?;
        }
        if has_context {
            ggml::tensor_set_f32(g.tensor(next())?, context)?;
        }
        let output = next();
        g.compute(0)?;
        Ok(ggml::tensor_get_f32(g.tensor(output)?)?)
    }

    /// The whole graph for an [in, h, w] latent and `tokens` context tokens.
    fn build<'c>(
        &self,
        ctx: &'c Context,
        h: usize,
        w: usize,
        tokens: usize,
    ) -> Result<(Inputs<'c>, Tensor<'c>), UnetError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let wt: &Weights<'c> = &self.weights;
        let x = ctx
            .new_f32(&[w as i64, h as i64, cfg.in_channels as i64, 1])
            .set_name("unet.x")
            .set_input();
        let temb = ctx
            .new_f32(&[cfg.model_channels as i64, 1])
            .set_name("unet.t_sinusoid")
            .set_input();
        let y = cfg
            .adm_in
            .map(|a| ctx.new_f32(&[a as i64, 1]).set_name("unet.y").set_input());
        let context = (cfg.context_dim > 0).then(|| {
            ctx.new_f32(&[cfg.context_dim as i64, tokens as i64, 1])
                .set_name("unet.context")
                .set_input()
        });

        // Embedding [time_embed_dim, 1].
        let e = nn::linear(ctx, &wt.pp("time_embed").pp(0), temb)?;
        let mut emb = nn::linear(ctx, &wt.pp("time_embed").pp(2), ctx.silu(e))?;
        if let Some(y) = y {
            let l = wt.pp("label_emb").pp(0);
            let e = nn::linear(ctx, &l.pp(0), y)?;
            emb = ctx.add(emb, nn::linear(ctx, &l.pp(2), ctx.silu(e))?);
        }
        let emb = ctx.silu(emb.set_name("unet.emb"));

        // Down.
        let levels = cfg.channels.len();
        let input = wt.pp("input_blocks");
        let mut hx = nn::conv2d(ctx, &input.pp(0).pp(0), x, 1, 1)?.set_name("unet.in.0");
        let mut skips = vec![hx];
        let mut n = 1;
        for i in 0..levels {
            for _ in 0..cfg.res_blocks {
                let blk = input.pp(n);
                hx = self.res_block(ctx, &blk.pp(0), hx, emb)?;
                if cfg.transformer_depth[i] > 0 {
                    hx = self.spatial_transformer(ctx, &blk.pp(1), hx, context)?;
                }
                hx = hx.set_name(&format!("unet.in.{n}"));
                skips.push(hx);
                n += 1;
            }
            if i + 1 < levels {
                hx = nn::conv2d(ctx, &input.pp(n).pp(0).pp("op"), hx, 2, 1)?
                    .set_name(&format!("unet.in.{n}"));
                skips.push(hx);
                n += 1;
            }
        }

        // Middle.
        let mid = wt.pp("middle_block");
        hx = self.res_block(ctx, &mid.pp(0), hx, emb)?;
        if cfg.mid_transformer_depth > 0 {
            hx = self.spatial_transformer(ctx, &mid.pp(1), hx, context)?;
            hx = self.res_block(ctx, &mid.pp(2), hx, emb)?;
        } else {
            hx = self.res_block(ctx, &mid.pp(1), hx, emb)?;
        }
        hx = hx.set_name("unet.mid");

        // Up.
        let output = wt.pp("output_blocks");
        let mut n = 0;
        for i in (0..levels).rev() {
            for j in 0..=cfg.res_blocks {
                let blk = output.pp(n);
                let skip = skips.pop().ok_or_else(|| {
                    UnetError::Config("more output blocks than skip connections".into())
                })?;
                hx = ctx.concat(hx, skip, 2);
                hx = self.res_block(ctx, &blk.pp(0), hx, emb)?;
                let mut sub = 1;
                let attn = blk.pp(1);
                if cfg.transformer_depth[i] > 0
                    || attn.contains("proj_in.weight")
                    || count_transformer_blocks(&attn) > 0
                {
                    hx = self.spatial_transformer(ctx, &blk.pp(1), hx, context)?;
                    sub = 2;
                }
                if i > 0 && j == cfg.res_blocks {
                    hx = ctx.upscale_nearest(hx, 2);
                    hx = nn::conv2d(ctx, &blk.pp(sub).pp("conv"), hx, 1, 1)?;
                }
                hx = hx.set_name(&format!("unet.out.{n}"));
                n += 1;
            }
        }
        let hx = nn::group_norm(ctx, &wt.pp("out").pp(0), hx, cfg.groups, NORM_EPS)?;
        let out = nn::conv2d(ctx, &wt.pp("out").pp(2), ctx.silu(hx), 1, 1)?;
        let inputs = Inputs {
            x,
            temb,
            y,
            context,
        };
        Ok((inputs, out.set_name("unet.out").set_output()))
    }

    /// ResBlock: x [W, H, Cin, N], emb (already through SiLU) [E, 1] -> [W, H, Cout, N].
    fn res_block<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
        emb: Tensor<'c>,
    ) -> Result<Tensor<'c>, UnetError> {
        let g = self.config.groups;
        let hn = nn::group_norm(ctx, &w.pp("in_layers").pp(0), x, g, NORM_EPS)?;
        let h = nn::conv2d(ctx, &w.pp("in_layers").pp(2), ctx.silu(hn), 1, 1)?;
        let c = h.ne()[2];
        let e = nn::linear(ctx, &w.pp("emb_layers").pp(1), emb)?;
        if e.ne()[0] != c {
            return Err(NnError::Shape {
                tensor: w.name("emb_layers.1.weight"),
                expected: format!("[E, {c}]"),
                found: w.get("emb_layers.1.weight")?.ne(),
            }
            .into());
        }
        let h = ctx.add(h, ctx.reshape(e, &[1, 1, c, 1]));
        let hn = nn::group_norm(ctx, &w.pp("out_layers").pp(0), h, g, NORM_EPS)?;
        let h = nn::conv2d(ctx, &w.pp("out_layers").pp(3), ctx.silu(hn), 1, 1)?;
        let skip = if w.contains("skip_connection.weight") {
            nn::conv2d(ctx, &w.pp("skip_connection"), x, 1, 0)?
        } else {
            if x.ne()[2] != c {
                return Err(NnError::MissingTensor(w.name("skip_connection.weight")).into());
            }
            x
        };
        Ok(ctx.add(skip, h))
    }

    /// SpatialTransformer with linear proj_in/proj_out: [W, H, C, N] -> same, residual.
    fn spatial_transformer<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
        context: Option<Tensor<'c>>,
    ) -> Result<Tensor<'c>, UnetError> {
        let context = context
            .ok_or_else(|| UnetError::Config(format!("{} needs a text context", w.name(""))))?;
        let [wd, ht, c, n] = x.ne();
        let t = wd * ht;
        let hn = nn::group_norm(
            ctx,
            &w.pp("norm"),
            x,
            self.config.groups,
            TRANSFORMER_NORM_EPS,
        )?;
        // [W, H, C, N] -> [T, C, N] -> [C, T, N]
        let mut tok = ctx.cont(ctx.permute(ctx.reshape(hn, &[t, c, n]), [1, 0, 2, 3]));
        tok = nn::linear(ctx, &w.pp("proj_in"), tok)?;
        let depth = count_transformer_blocks(w);
        if depth == 0 {
            return Err(NnError::MissingTensor(w.name("transformer_blocks.0.norm1.weight")).into());
        }
        for d in 0..depth {
            let b = w.pp("transformer_blocks").pp(d);
            let a = nn::layer_norm(ctx, &b.pp("norm1"), tok, LAYER_NORM_EPS)?;
            tok = ctx.add(tok, self.attention(ctx, &b.pp("attn1"), a, a)?);
            let a = nn::layer_norm(ctx, &b.pp("norm2"), tok, LAYER_NORM_EPS)?;
            tok = ctx.add(tok, self.attention(ctx, &b.pp("attn2"), a, context)?);
            let a = nn::layer_norm(ctx, &b.pp("norm3"), tok, LAYER_NORM_EPS)?;
            tok = ctx.add(tok, self.geglu_ff(ctx, &b.pp("ff").pp("net"), a)?);
        }
        let tok = nn::linear(ctx, &w.pp("proj_out"), tok)?;
        // [C, T, N] -> [T, C, N] -> [W, H, C, N]
        let out = ctx.reshape(ctx.cont(ctx.permute(tok, [1, 0, 2, 3])), &[wd, ht, c, n]);
        Ok(ctx.add(x, out))
    }

    /// Multi-head attention of x [C, T, N] over kv [Ckv, Tkv, N] (kv = x for self-attention).
    fn attention<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
        kv: Tensor<'c>,
    ) -> Result<Tensor<'c>, UnetError> {
        let [c, t, n, _] = x.ne();
        let tk = kv.ne()[1];
        let d = self.config.head_dim as i64;
        let heads = c / d;
        let q = nn::linear(ctx, &w.pp("to_q"), x)?;
        let k = nn::linear(ctx, &w.pp("to_k"), kv)?;
        let v = nn::linear(ctx, &w.pp("to_v"), kv)?;
        for (name, p) in [("to_q", q), ("to_k", k), ("to_v", v)] {
            if p.ne()[0] != c {
                return Err(NnError::Shape {
                    tensor: w.name(&format!("{name}.weight")),
                    expected: format!("[_, {c}]"),
                    found: w.get(&format!("{name}.weight"))?.ne(),
                }
                .into());
            }
        }
        let q = ctx.reshape(q, &[d, heads, t, n]);
        let k = ctx.reshape(k, &[d, heads, tk, n]);
        let v = ctx.reshape(v, &[d, heads, tk, n]);
        let a = match self.attention {
            Attention::MulMat => nn::multi_head_attention(ctx, q, k, v, None),
            Attention::Flash => nn::flash_attention(ctx, q, k, v, !self.runner.is_cpu()),
        };
        Ok(nn::linear(ctx, &w.pp("to_out").pp(0), a)?)
    }

    /// GEGLU feed-forward: `net.2(value * gelu(gate))`, value and gate the halves of `net.0.proj`.
    fn geglu_ff<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
    ) -> Result<Tensor<'c>, UnetError> {
        let p = nn::linear(ctx, &w.pp(0).pp("proj"), x)?;
        let [two_i, t, n, _] = p.ne();
        if two_i % 2 != 0 {
            return Err(UnetError::Config(format!(
                "{} has an odd width {two_i}",
                w.name("0.proj.weight")
            )));
        }
        let inner = two_i / 2;
        let nb = p.nb();
        let value = ctx.cont(ctx.view(p, &[inner, t, n], &[nb[1], nb[2]], 0));
        let gate = ctx.cont(ctx.view(p, &[inner, t, n], &[nb[1], nb[2]], inner as usize * nb[0]));
        let hdn = ctx.mul(value, ctx.gelu_erf(gate));
        Ok(nn::linear(ctx, &w.pp(2), hdn)?)
    }
}

/// Nodes (and tensors) of one graph: SDXL has 70 transformer blocks (~60 nodes each) and 25
/// res blocks (~25 each), about 5,000 in all.
const GRAPH_SIZE: usize = 16384;

// LoRA at run time (src/lora): kept at the end of the file so that it merges trivially.
impl<'w> SdxlUnet<'w> {
    /// Attaches LoRA adapters built for this UNet's weight set (`None` detaches them); the
    /// next forward rebuilds its graph. Base weights are left as they are (quantized stays
    /// quantized): the adapters add their terms to the layers' outputs.
    pub fn set_adapters(
        &mut self,
        adapters: Option<&'w crate::lora::Adapters>,
    ) -> Result<(), UnetError> {
        self.weights = self.weights.clone().with_adapters(adapters)?;
        self.weights.check_backend(self.runner.backend())?;
        self.runner.invalidate();
        Ok(())
    }
}

// The network this model file describes (see `super::network`).

/// The SDXL UNet's names: ldm, or diffusers mapped onto them (`names::sdxl::map_unet`).
pub static NAMES: Naming = Naming {
    architecture: Architecture::SDXL_UNET,
    description: "SDXL UNet (denoiser)",
    roots: &[
        &["input_blocks"],
        &["middle_block"],
        &["output_blocks"],
        &["out"],
        &["time_embed"],
        &["label_emb"],
        &["conv_in"],
        &["conv_out"],
        &["conv_norm_out"],
        &["time_embedding"],
        &["add_embedding"],
        &["down_blocks"],
        &["up_blocks"],
        &["mid_block"],
    ],
    map: names::sdxl::map_unet,
};

/// An SDXL UNet file (or the UNet of a checkpoint).
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "sdxl-unet",
    priority: 1,
    listing: 1,
    signatures: &[
        sig(Layout::Original, "input_blocks.#.0.in_layers.2.weight", &[], None, None),
        sig(Layout::Original, "output_blocks.#.0.in_layers.2.weight", &[], None, None),
        sig(Layout::Diffusers, "down_blocks.#.resnets.#.time_emb_proj.weight", &[], None, None),
        sig(Layout::Diffusers, "up_blocks.#.resnets.#.time_emb_proj.weight", &[], None, None),
    ],
    architectures: &[&NAMES],
    context: Some(names::sdxl::unet_context),
    resolve: None,
    hints: &["sdxl"],
};

/// The SDXL UNet (SDXL, Illustrious, AnimagineXL, NoobAI checkpoints).
pub static NETWORK: Network = Network {
    component: Component {
        name: "unet",
        role: Role::Denoiser,
        stage: Stage::Image,
        order: 2,
        uses: &[Use::now("sample")],
    },
    label: "an SDXL checkpoint or UNet",
    flag: "--model",
    architectures: &[Architecture::SDXL_UNET],
    recognitions: &[&RECOGNITION],
    streams: false,
    memory,
    describe,
};

/// The compute buffer of one forward at the request's size with flash attention, as a run
/// allocates it (context of 3 prompt chunks, 231 tokens: long tag prompts take 2 or 3).
fn memory(set: &TensorSet<'_>, prefix: &str, r: &Request) -> Result<Memory, ModelError> {
    let mut unet = SdxlUnet::new(set, prefix, 1)?;
    unet.set_attention(Attention::Flash);
    let (h, w) = (r.height as usize / 8, r.width as usize / 8);
    Ok(Memory {
        compute_bytes: unet.compute_bytes(h, w, 3 * crate::models::clip_text::CHUNK_TOKENS)?,
        tiles: Vec::new(),
    })
}

/// The file's `v_pred` / `ztsnr` markers are not part of the network: callers append them
/// (`", v-prediction"`, `", zero terminal SNR"`).
fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = UnetConfig::from_weights(set, prefix)?;
    let mult = network::multipliers(&c.channels, c.model_channels);
    let mut summary = format!(
        "SDXL UNet, {} channels, mult {}, transformer depth {}, context {}",
        c.model_channels,
        network::mult_list(&mult),
        network::list(&c.transformer_depth),
        c.context_dim
    );
    if c.adm_in.is_none() {
        summary.push_str(", no label_emb (not an SDXL UNet?)");
    }
    Ok(network::description(
        summary,
        &c,
        &[("channel_mult", serde_json::json!(mult))],
    ))
}

/// On a device: flash attention, with its LoRA adapters (resident only: it is not streamed).
impl super::Place for SdxlUnet<'_> {
    type Model<'x> = SdxlUnet<'x>;
    type Error = UnetError;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<SdxlUnet<'x>, UnetError> {
        let mut m = SdxlUnet::with_runner(weights.set(), prefix, runner)?;
        m.set_attention(Attention::Flash);
        m.set_adapters(adapters)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_cond_checks_widths() {
        let y = sdxl_added_cond(&[1.0; 4], [0.0; 6], 4 + 6 * 8).unwrap();
        assert_eq!(y.len(), 52);
        assert_eq!(&y[..4], &[1.0; 4]);
        // cos(0) = 1 first, sin(0) = 0 second.
        assert_eq!(&y[4..12], &[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(sdxl_added_cond(&[1.0; 5], [0.0; 6], 52).is_err());
        assert!(sdxl_added_cond(&[1.0; 60], [0.0; 6], 52).is_err());
    }
}
