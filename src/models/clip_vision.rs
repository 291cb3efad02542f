//! The CLIP vision encoder Wan2.1 I2V conditions on: ViT-H/14 (`clip_vision_h.safetensors`, HF
//! `CLIPVisionModel` names `vision_model.*`), and its image preprocessing.
//!
//! Pre-LN vision transformer:
//! x = [class; conv_patch(pixels)] + pos;  x = pre_layrnorm(x);
//! per layer: x += out(attn(layer_norm1(x)));  x += fc2(gelu(fc1(layer_norm2(x))))
//! Wan uses the output of block 31 of 32 (HF `hidden_states[-2]`), all 257 tokens, without the
//! post-layernorm: [`ClipVision::encode`]. Any other depth: [`ClipVision::encode_layer`].
//!
//! Preprocessing ([`ClipVision::preprocess`]) follows the official Wan code
//! (`wan/modules/clip.py`, `CLIPModel.visual`): the whole image, no crop, resized to
//! `image_size` x `image_size` with PyTorch's `F.interpolate(mode="bicubic",
//! align_corners=False)` (no antialias, values not clamped), then CLIP mean/std. ComfyUI's
//! `clip_preprocess` differs (short side to 224 with `antialias=True`, centre crop, rounding to
//! 8 bits): [`preprocess_comfyui`], selectable with [`Preprocess`]. [`resize_bicubic`]
//! implements both of torch's bicubic modes (matching torch to about 1e-6).
//!
//! Shapes are ggml `ne` (innermost first): patches [P*P*3, G*G], activations [width, tokens].

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GraphSetParts, Tensor, TensorSet};
use crate::nn::{self, Activation, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// OpenAI CLIP normalisation (Wan's `clip_xlm_roberta_vit_h_14` transforms), digits as
/// published.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
const LN_EPS: f32 = 1e-5;
const PREFIX: &str = "vision_model";

/// Why a CLIP vision forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ClipVisionError {
    #[error("CLIP vision encoder: {0}")]
    Weights(#[from] NnError),
    #[error("CLIP vision encoder: {0}")]
    Config(String),
    #[error("CLIP vision encoder: {0}")]
    Input(String),
    #[error("CLIP vision encoder: {0}")]
    Ggml(#[from] GgmlError),
}

/// Hyperparameters, inferred from the weights by [`ClipVisionConfig::from_weights`].
/// CLIP-H/14 (Wan2.1 I2V): width 1280, 32 layers, 16 heads of 80, ffn 5120, patch 14, 224 px,
/// 257 positions.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClipVisionConfig {
    pub width: usize,
    pub layers: usize,
    /// 80 when the width is a multiple of 80 (CLIP-H), else 64 (ViT-B/L); not stored in files.
    pub head_dim: usize,
    pub heads: usize,
    pub ffn_dim: usize,
    pub patch_size: usize,
    /// Side of the square input, patch_size x sqrt(positions - 1).
    pub image_size: usize,
    /// Tokens: one class token plus (image_size / patch_size)^2 patches.
    pub positions: usize,
    pub activation: Activation,
}

impl ClipVisionConfig {
    /// Reads the shapes of the `vision_model.*` tensors under `prefix` ("" for a
    /// `clip_vision_h.safetensors` file).
    pub fn from_weights(
        set: &TensorSet<'_>,
        prefix: &str,
    ) -> Result<ClipVisionConfig, ClipVisionError> {
        let w = Weights::new(set, prefix).pp(PREFIX);
        // conv [width, 3, P, P] -> ne [P, P, 3, width]
        let patch = w.get("embeddings.patch_embedding.weight")?.ne();
        let pos = w.get("embeddings.position_embedding.weight")?.ne();
        let (width, patch_size, positions) =
            (patch[3] as usize, patch[0] as usize, pos[1] as usize);
        let mut layers = 0;
        while w.contains(&format!("encoder.layers.{layers}.layer_norm1.weight")) {
            layers += 1;
        }
        let ffn_dim = w.pp("encoder.layers.0.mlp.fc1").get("weight")?.ne()[1] as usize;
        let side = (positions.saturating_sub(1) as f64).sqrt().round() as usize;
        if side == 0 || side * side + 1 != positions {
            return Err(ClipVisionError::Config(format!(
                "{positions} positions is not a class token plus a square grid of patches"
            )));
        }
        if patch[1] != patch[0] || patch[2] != 3 {
            return Err(ClipVisionError::Config(format!(
                "patch embedding ne {patch:?} is not a square RGB patch kernel"
            )));
        }
        let head_dim = vision_head_dim(width);
        let config = ClipVisionConfig {
            width,
            layers,
            head_dim,
            heads: width / head_dim,
            ffn_dim,
            patch_size,
            image_size: side * patch_size,
            positions,
            activation: Activation::Gelu,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ClipVisionError> {
        if self.width == 0 || self.heads * self.head_dim != self.width {
            return Err(ClipVisionError::Config(format!(
                "width {} is not {} heads of {}",
                self.width, self.heads, self.head_dim
            )));
        }
        if self.layers < 2 {
            return Err(ClipVisionError::Config(format!(
                "{} layers: the penultimate layer needs at least 2",
                self.layers
            )));
        }
        let grid = self.image_size / self.patch_size.max(1);
        if self.patch_size == 0
            || self.image_size % self.patch_size != 0
            || grid * grid + 1 != self.positions
        {
            return Err(ClipVisionError::Config(format!(
                "image {} / patch {} does not give {} positions",
                self.image_size, self.patch_size, self.positions
            )));
        }
        Ok(())
    }

    /// Tokens per image (class + patches): 257 for CLIP-H/14 at 224 px.
    pub fn tokens(&self) -> usize {
        self.positions
    }
}

/// How an image becomes the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preprocess {
    /// The official Wan code: whole image to S x S, torch bicubic without antialias, no
    /// rounding ([`preprocess_wan`]).
    Wan,
    /// ComfyUI's `clip_preprocess` (the CLIPVisionEncode node): antialiased bicubic, the short
    /// side to S and a centre crop (`crop`, the node's "center") or the whole image to S x S
    /// ("none"), rounded to 8 bits ([`preprocess_comfyui`]).
    ComfyUi { crop: bool },
}

/// A CLIP vision encoder over a loaded weight set, computing through its [`GraphRunner`].
pub struct ClipVision<'w> {
    weights: Weights<'w>,
    config: ClipVisionConfig,
    /// The graph of the last output layer asked for, reused while it stays.
    runner: GraphRunner<'w>,
}

impl<'w> ClipVision<'w> {
    /// The encoder whose `vision_model.*` tensors are under `prefix` in `set`, config inferred
    /// from the shapes, computing with `threads` CPU threads. Every tensor is looked up and
    /// shape-checked here.
    pub fn new(
        set: &'w TensorSet<'w>,
        prefix: &str,
        threads: usize,
    ) -> Result<ClipVision<'w>, ClipVisionError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`ClipVision::new`], computing through `runner` (its backend must be able to read
    /// every weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        mut runner: GraphRunner<'w>,
    ) -> Result<ClipVision<'w>, ClipVisionError> {
        let config = ClipVisionConfig::from_weights(set, prefix)?;
        runner.set_name("clip_vision");
        let model = ClipVision {
            weights: Weights::new(set, prefix)
                .pp(PREFIX)
                .for_backend(runner.backend())?,
            config,
            runner,
        };
        let size = model.graph_size();
        let ctx = Context::new_meta(size, size)?;
        model.build(&ctx, model.config.layers)?;
        Ok(model)
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// An RGB image (`w` x `h`, 8-bit, interleaved rows top to bottom) as the model's input
    /// [3, S, S] (planar, row-major), S = `image_size`: the official Wan preprocessing.
    pub fn preprocess(&self, rgb: &[u8], w: usize, h: usize) -> Result<Vec<f32>, ClipVisionError> {
        preprocess_wan(rgb, w, h, self.config.image_size)
    }

    /// As [`ClipVision::preprocess`] with a choice of preprocessing.
    pub fn preprocess_with(
        &self,
        rgb: &[u8],
        w: usize,
        h: usize,
        how: Preprocess,
    ) -> Result<Vec<f32>, ClipVisionError> {
        let size = self.config.image_size;
        match how {
            Preprocess::Wan => preprocess_wan(rgb, w, h, size),
            Preprocess::ComfyUi { crop } => preprocess_comfyui(rgb, w, h, size, crop),
        }
    }

    /// Wan's image features: the hidden states after all but the last block (HF
    /// `hidden_states[-2]`) for `pixels` [3, S, S] from [`ClipVision::preprocess`]; row-major
    /// [tokens, width].
    pub fn encode(&mut self, pixels: &[f32]) -> Result<Vec<f32>, ClipVisionError> {
        self.encode_layer(pixels, self.config.layers - 1)
    }

    /// Hidden states after `blocks` blocks (HF `hidden_states[blocks]`; 0 is the embeddings
    /// after `pre_layrnorm`), row-major [tokens, width].
    pub fn encode_layer(
        &mut self,
        pixels: &[f32],
        blocks: usize,
    ) -> Result<Vec<f32>, ClipVisionError> {
        let cfg = self.config.clone();
        let s = cfg.image_size;
        if pixels.len() != 3 * s * s {
            return Err(ClipVisionError::Input(format!(
                "{} pixel values given, the model takes [3, {s}, {s}] = {}",
                pixels.len(),
                3 * s * s
            )));
        }
        if blocks > cfg.layers {
            return Err(ClipVisionError::Input(format!(
                "asked for the output of block {blocks}, the model has {}",
                cfg.layers
            )));
        }
        let _span = tracing::debug_span!(
            "clip_vision",
            width = cfg.width,
            layers = cfg.layers,
            blocks
        )
        .entered();
        let key = [blocks];
        if !self.runner.lookup(&key) {
            let sizes = GraphSizes::single(self.graph_size());
            let built = self.runner.build(sizes, "state", |ctx, _| {
                let g = self.build(ctx, blocks)?;
                Ok::<_, ClipVisionError>(GraphSetParts {
                    keep: vec![g.patches, g.out],
                    graphs: vec![vec![g.out]],
                    state: Vec::new(),
                })
            })?;
            self.runner.insert(&key, built);
        }
        let mut g = self.runner.cached()?;
        g.place(0)?;
        ggml::tensor_set_f32(g.tensor(0)?, &patchify(pixels, s, cfg.patch_size))?;
        g.compute(0)?;
        Ok(ggml::tensor_get_f32(g.tensor(1)?)?)
    }

    fn graph_size(&self) -> usize {
        128 * self.config.layers + 256
    }

    /// The graph for one image up to the output of `blocks` blocks.
    fn build<'c>(&self, ctx: &'c Context, blocks: usize) -> Result<VisionGraph<'c>, ClipVisionError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let w: &Weights<'c> = &self.weights;
        let (width, s, p) = (
            cfg.width as i64,
            cfg.image_size as i64,
            cfg.patch_size as i64,
        );
        let (grid, t) = (s / p, cfg.positions as i64);

        // Non-overlapping patches, flattened on the CPU as the conv kernel is (see
        // `patchify`): [P*P*3, G*G]. A matmul with the kernel is the stride-P convolution, in
        // F32 (ggml's conv_2d would go through an F16 im2col).
        let patches = ctx
            .new_f32(&[p * p * 3, grid * grid])
            .set_name("clip_vision.patches")
            .set_input();

        // conv [W, 3, P, P] -> ne [P, P, 3, W] -> [P*P*3, W];  [W, G*G]
        let e = w.pp("embeddings");
        let kernel = e.get_shaped("patch_embedding.weight", &[p, p, 3, width])?;
        let kernel = ctx.reshape(nn::to_f32(ctx, kernel), &[p * p * 3, width]);
        let x_patches = ctx.mul_mat(kernel, patches);
        // Class token first, then the patches row by row: [W, T]
        let class = nn::to_f32(ctx, e.get_shaped("class_embedding", &[width])?);
        let x = ctx.concat(ctx.reshape(class, &[width, 1]), x_patches, 1);
        let pos = e.get_shaped("position_embedding.weight", &[width, t])?;
        let x = ctx
            .add(x, nn::to_f32(ctx, pos))
            .set_name("clip_vision.embed");
        let x = ctx.reshape(x, &[width, t, 1]);
        let mut x =
            nn::layer_norm(ctx, &w.pp("pre_layrnorm"), x, LN_EPS)?.set_name("clip_vision.pre_ln");

        for i in 0..blocks {
            x = self.layer(ctx, &w.pp("encoder.layers").pp(i), i, x)?;
        }
        // Look up the rest too, so that construction checks every tensor.
        for i in blocks..cfg.layers {
            self.layer(ctx, &w.pp("encoder.layers").pp(i), i, x)?;
        }
        let out = ctx
            .reshape(x, &[width, t])
            .set_name("clip_vision.out")
            .set_output();
        Ok(VisionGraph { patches, out })
    }

    /// One pre-LN residual block: [W, T, 1] -> [W, T, 1].
    fn layer<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        i: usize,
        x: Tensor<'c>,
    ) -> Result<Tensor<'c>, ClipVisionError> {
        let cfg = &self.config;
        let [_, t, n, _] = x.ne();
        let (d, h) = (cfg.head_dim as i64, cfg.heads as i64);

        let hn = nn::layer_norm(ctx, &w.pp("layer_norm1"), x, LN_EPS)?;
        let sa = w.pp("self_attn");
        let proj = |name: &str| -> Result<Tensor<'c>, ClipVisionError> {
            let y = nn::linear(ctx, &sa.pp(name), hn)?;
            Ok(ctx.reshape(y, &[d, h, t, n]))
        };
        let (q, k, v) = (proj("q_proj")?, proj("k_proj")?, proj("v_proj")?);
        let attn = nn::multi_head_attention(ctx, q, k, v, None);
        let attn = nn::linear(ctx, &sa.pp("out_proj"), attn)?;
        let x = ctx
            .add(x, attn)
            .set_name(&format!("clip_vision.{i}.attn_res"));

        let hn = nn::layer_norm(ctx, &w.pp("layer_norm2"), x, LN_EPS)?;
        let f = nn::linear(ctx, &w.pp("mlp.fc1"), hn)?;
        let f = cfg.activation.apply(ctx, f);
        let f = nn::linear(ctx, &w.pp("mlp.fc2"), f)?;
        Ok(ctx.add(x, f).set_name(&format!("clip_vision.{i}.out")))
    }
}

/// Head size of a vision tower (not stored in files): 80 when the width is a multiple of 80
/// (CLIP-H: 1280 = 16 x 80), else 64 (ViT-B/L). The same rule as
/// `formats::names` uses for its summaries (that module keeps its copy private).
pub fn vision_head_dim(width: usize) -> usize {
    if width % 80 == 0 {
        80
    } else {
        64
    }
}

/// The tensors of one forward graph.
struct VisionGraph<'c> {
    patches: Tensor<'c>,
    out: Tensor<'c>,
}

/// [3, S, S] planar pixels as non-overlapping P x P patches, row-major [G*G, P*P*3] with the
/// patch (gy, gx) at row gy*G + gx and its values ordered (c, ky, kx) like a flattened
/// [OC, 3, P, P] conv kernel.
fn patchify(pixels: &[f32], s: usize, p: usize) -> Vec<f32> {
    let g = s / p;
    let mut out = Vec::with_capacity(pixels.len());
    for gy in 0..g {
        for gx in 0..g {
            for c in 0..3 {
                for ky in 0..p {
                    let row = (c * s + gy * p + ky) * s + gx * p;
                    out.extend_from_slice(&pixels[row..row + p]);
                }
            }
        }
    }
    out
}

/// The official Wan preprocessing of an RGB image (`w` x `h`, 8-bit, interleaved) to
/// [3, size, size]: x / 255, torch bicubic resize without antialias (no crop, no clamp), then
/// (x - mean) / std. (Wan resizes the image scaled to [-1, 1] and maps it back; bicubic weights
/// sum to 1, so resizing x / 255 directly is the same.)
pub fn preprocess_wan(
    rgb: &[u8],
    w: usize,
    h: usize,
    size: usize,
) -> Result<Vec<f32>, ClipVisionError> {
    let planar = to_planar(rgb, w, h)?;
    let mut out = resize_bicubic(&planar, w, h, size, size, false);
    normalize(&mut out, size);
    Ok(out)
}

/// ComfyUI's `clip_preprocess` of an RGB image (`w` x `h`, 8-bit, interleaved) to
/// [3, size, size]: unless the image already is size x size, an antialiased torch bicubic
/// resize, of the short side to `size` (Python's `round` of the scaled long side) followed by a
/// centre crop when `crop`, else of the whole image to size x size; then
/// `clip(255 x, 0, 255).round() / 255` and (x - mean) / std.
pub fn preprocess_comfyui(
    rgb: &[u8],
    w: usize,
    h: usize,
    size: usize,
    crop: bool,
) -> Result<Vec<f32>, ClipVisionError> {
    let planar = to_planar(rgb, w, h)?;
    let mut out = if w == size && h == size {
        planar
    } else {
        let (rw, rh) = if crop {
            // Python: scale = size / min(h, w); round(scale * h), round(scale * w) (ties even)
            let scale = size as f64 / w.min(h) as f64;
            (
                // (never below `size`, so the crop fits whatever the rounding)
                ((scale * w as f64).round_ties_even() as usize).max(size),
                ((scale * h as f64).round_ties_even() as usize).max(size),
            )
        } else {
            (size, size)
        };
        let resized = resize_bicubic(&planar, w, h, rw, rh, true);
        let (x0, y0) = (rw.saturating_sub(size) / 2, rh.saturating_sub(size) / 2);
        let mut out = Vec::with_capacity(3 * size * size);
        for plane in resized.chunks_exact(rw * rh) {
            for y in y0..y0 + size {
                out.extend_from_slice(&plane[y * rw + x0..y * rw + x0 + size]);
            }
        }
        out
    };
    for v in &mut out {
        *v = (255.0 * *v).clamp(0.0, 255.0).round_ties_even() / 255.0;
    }
    normalize(&mut out, size);
    Ok(out)
}

/// Interleaved 8-bit RGB [h, w, 3] as planar [3, h, w] in [0, 1].
fn to_planar(rgb: &[u8], w: usize, h: usize) -> Result<Vec<f32>, ClipVisionError> {
    if w == 0 || h == 0 || rgb.len() != w * h * 3 {
        return Err(ClipVisionError::Input(format!(
            "an RGB image of {w}x{h} needs {} bytes, got {}",
            w * h * 3,
            rgb.len()
        )));
    }
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = px[c] as f32 / 255.0;
        }
    }
    Ok(planar)
}

/// (x - mean) / std per channel of planar [3, size, size].
fn normalize(x: &mut [f32], size: usize) {
    for (c, plane) in x.chunks_exact_mut(size * size).enumerate() {
        for v in plane {
            *v = (*v - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
}

/// PyTorch's `F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False,
/// antialias=...)` of planar images `src` [C, h, w] (C = `src.len() / (w * h)`), returning
/// [C, out_h, out_w].
///
/// - `antialias = false`: cubic convolution with a = -0.75 at source position
///   `(i + 0.5) * in / out - 0.5`, edge pixels repeated (`upsample_bicubic2d`).
/// - `antialias = true`: the PIL-style filter with a = -0.5, stretched by the scale when
///   downsampling, truncated at the edges and renormalised (`_upsample_bicubic2d_aa`).
///
/// Panics if `src.len()` is not a multiple of `w * h` or a size is zero.
pub fn resize_bicubic(
    src: &[f32],
    w: usize,
    h: usize,
    out_w: usize,
    out_h: usize,
    antialias: bool,
) -> Vec<f32> {
    assert!(
        w > 0 && h > 0 && out_w > 0 && out_h > 0 && src.len() % (w * h) == 0,
        "resize_bicubic: {} values for {w}x{h} -> {out_w}x{out_h}",
        src.len()
    );
    let channels = src.len() / (w * h);
    let taps_x = bicubic_taps(w, out_w, antialias);
    let taps_y = bicubic_taps(h, out_h, antialias);
    let mut out = vec![0f32; channels * out_w * out_h];
    let mut rows = vec![0f32; h * out_w];
    for c in 0..channels {
        let plane = &src[c * w * h..(c + 1) * w * h];
        // Along x: [h, w] -> [h, out_w]
        for y in 0..h {
            let line = &plane[y * w..(y + 1) * w];
            for (x, taps) in taps_x.iter().enumerate() {
                rows[y * out_w + x] = taps.iter().map(|&(i, k)| line[i] * k).sum();
            }
        }
        // Along y: [h, out_w] -> [out_h, out_w]
        let dst = &mut out[c * out_w * out_h..(c + 1) * out_w * out_h];
        for (y, taps) in taps_y.iter().enumerate() {
            let row = &mut dst[y * out_w..(y + 1) * out_w];
            for &(i, k) in taps {
                let src_row = &rows[i * out_w..(i + 1) * out_w];
                for (o, &v) in row.iter_mut().zip(src_row) {
                    *o += v * k;
                }
            }
        }
    }
    out
}

/// (source index, weight) pairs of each output index along one axis.
fn bicubic_taps(input: usize, output: usize, antialias: bool) -> Vec<Vec<(usize, f32)>> {
    (0..output)
        .map(|i| {
            if antialias {
                const A: f32 = -0.5;
                // f32 throughout, like torch's float kernel.
                let scale = input as f32 / output as f32;
                let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
                let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
                let center = scale * (i as f32 + 0.5);
                // torch truncates towards zero before clamping
                let lo = ((center - support + 0.5) as i64).max(0) as usize;
                let hi = ((center + support + 0.5) as i64).min(input as i64) as usize;
                let mut taps: Vec<(usize, f32)> = (lo..hi)
                    .map(|j| (j, cubic((j as f32 - center + 0.5) * inv, A)))
                    .collect();
                let total: f32 = taps.iter().map(|t| t.1).sum();
                if total != 0.0 {
                    for t in &mut taps {
                        t.1 /= total;
                    }
                }
                taps
            } else {
                const A: f32 = -0.75;
                // In f32 like torch's float kernel: the rounding of the source position
                // matters (3e-5 on noisy images when downsampling with f64 positions).
                let scale = input as f32 / output as f32;
                let real = scale * (i as f32 + 0.5) - 0.5;
                let base = real.floor();
                let t = real - base;
                let k = [
                    cubic(t + 1.0, A),
                    cubic(t, A),
                    cubic(1.0 - t, A),
                    cubic(2.0 - t, A),
                ];
                (0..4)
                    .map(|m| {
                        let j = (base as i64 - 1 + m as i64).clamp(0, input as i64 - 1);
                        (j as usize, k[m])
                    })
                    .collect()
            }
        })
        .collect()
}

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(x: f32, a: f32) -> f32 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

// The network this model file describes (see `super::network`).

/// CLIP-H vision's names: HF `vision_model.*` (`names::clip::map_vision`).
pub static NAMES: Naming = Naming {
    architecture: Architecture::CLIP_VISION_H,
    description: "CLIP-H/14 vision encoder (Wan I2V image conditioning)",
    roots: &[
        &["vision_model"],
        &["visual_projection"],
        &["embeddings"],
        &["encoder", "layers"],
        &["pre_layrnorm"],
        &["post_layernorm"],
    ],
    map: names::clip::map_vision,
};

/// An HF CLIP vision encoder file.
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "clip-vision",
    priority: 5,
    listing: 6,
    signatures: &[
        sig(Layout::HfTransformers, "embeddings.patch_embedding.weight", &[], None, Some("vision_model.")),
        sig(Layout::HfTransformers, "encoder.layers.#.self_attn.q_proj.weight", &["post_layernorm.weight"], None, Some("vision_model.")),
    ],
    architectures: &[&NAMES],
    context: None,
    resolve: None,
    hints: &[],
};

/// CLIP vision H, the image encoder of Wan2.1 I2V.
pub static NETWORK: Network = Network {
    component: Component {
        name: "clip_vision",
        role: Role::Encoder,
        stage: Stage::Video,
        order: 1,
        uses: &[Use::now("encode image")],
    },
    label: "CLIP vision H",
    flag: "--clip-vision",
    architectures: &[Architecture::CLIP_VISION_H],
    recognitions: &[&RECOGNITION],
    streams: false,
    memory,
    describe,
};

/// One layer over the image tokens, next to the preprocessed pixels and the patch im2col.
fn memory(set: &TensorSet<'_>, prefix: &str, _: &Request) -> Result<Memory, ModelError> {
    let c = ClipVisionConfig::from_weights(set, prefix)?;
    let (n, d) = (c.positions as u64, c.width as u64);
    let (image, patch) = (c.image_size as u64, c.patch_size as u64);
    let pixels = network::F32 * 3 * image * image;
    let im2col = network::F32 * (n - 1) * 3 * patch * patch;
    let layer = network::transformer_layer(n, d, c.ffn_dim as u64, c.heads as u64);
    Ok(Memory {
        compute_bytes: network::margin(layer + pixels + im2col),
        tiles: Vec::new(),
    })
}

fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = ClipVisionConfig::from_weights(set, prefix)?;
    let summary = format!(
        "CLIP-H vision encoder, width {}, {} layers, {} heads, patch {}, image {}",
        c.width, c.layers, c.heads, c.patch_size, c.image_size
    );
    Ok(network::description(summary, &c, &[]))
}

/// On a device: the model over the copied weights.
impl super::Place for ClipVision<'_> {
    type Model<'x> = ClipVision<'x>;
    type Error = ClipVisionError;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        _adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<ClipVision<'x>, ClipVisionError> {
        ClipVision::with_runner(weights.set(), prefix, runner)
    }
}
