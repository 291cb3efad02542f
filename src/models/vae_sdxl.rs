//! The SDXL VAE (ldm `AutoencoderKL`, diffusers `AutoencoderKL`): 4 latent channels, 8x.
//!
//! Decoder (ldm names, canonical here; diffusers names are mapped by the weight loader):
//!   z = post_quant_conv(latent / 0.13025)
//!   x = conv_in(z); x = mid.block_1(x); x = mid.attn_1(x); x = mid.block_2(x)
//!   for level L-1 .. 0: x = up.i.block.0..=R(x); if i > 0: x = up.i.upsample.conv(nearest2x(x))
//!   image = clamp(conv_out(silu(norm_out(x))), -1, 1)
//! Encoder:
//!   x = conv_in(image)
//!   for level 0 .. L-1: x = down.i.block.0..R-1(x); if i < L-1: x = down.i.downsample.conv(pad_rb(x))
//!   x = mid.block_1, mid.attn_1, mid.block_2; moments = quant_conv(conv_out(silu(norm_out(x))))
//!   latent = moments[:4] * 0.13025 (the mean of the latent distribution)
//! Resnet block: h = conv1(silu(norm1(x))); h = conv2(silu(norm2(h))); x' = nin_shortcut?(x) + h.
//! Mid attention: one head over the H*W tokens, q/k/v/proj_out as 1x1 convs, residual.
//! GroupNorm eps 1e-6; the group count is not stored in the files (32 in SDXL).
//!
//! Shapes are ggml `ne` (innermost first): activations [W, H, C, N]; the public API takes and
//! returns row-major [C, H, W] slices, which are the same memory.
//!
//! Attention runs on the exact F32 path (mul_mat, softmax, mul_mat): its score matrix is
//! (H*W)^2 floats, 1 GiB for a 128x128 latent (1024 px); use [`SdxlVae::decode_tiled`] for larger
//! images.

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Context, GgmlError, GraphSetParts, Tensor, TensorSet};
use crate::nn::{self, blend_tiles, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// SDXL's latent scale factor (diffusers `scaling_factor`); no shift.
pub const SCALE_FACTOR: f32 = 0.13025;
/// GroupNorm groups of the real model (diffusers `norm_num_groups`).
pub const DEFAULT_GROUPS: usize = 32;
const NORM_EPS: f32 = 1e-6;

/// Why a VAE forward failed.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("SDXL VAE: {0}")]
    Weights(#[from] NnError),
    #[error("SDXL VAE: {0}")]
    Config(String),
    #[error("SDXL VAE: {0}")]
    Input(String),
    #[error("SDXL VAE: the weights under '{prefix}' have no {half} (looked for '{probe}')")]
    Missing {
        prefix: String,
        half: &'static str,
        probe: String,
    },
    #[error("SDXL VAE: {0}")]
    Ggml(#[from] GgmlError),
}

/// Hyperparameters, inferred from the weights by [`VaeConfig::from_weights`]. SDXL's values:
/// channels [128, 256, 512, 512], 2 res blocks per level, 4 latent channels, 32 groups
/// (diffusers `AutoencoderKL` config of stabilityai/sdxl-vae).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct VaeConfig {
    /// Output channels of each level, shallowest first (`block_out_channels`).
    pub channels: Vec<usize>,
    /// Res blocks per encoder level (`layers_per_block`); decoder levels have one more.
    pub res_blocks: usize,
    pub latent_channels: usize,
    /// Image channels (3).
    pub image_channels: usize,
    /// GroupNorm groups: not stored in the files, [`DEFAULT_GROUPS`] unless told otherwise.
    pub groups: usize,
    pub has_encoder: bool,
    pub has_decoder: bool,
}

impl VaeConfig {
    /// Reads the shapes of the weights under `prefix` ("" for a VAE file, "first_stage_model."
    /// in an SDXL checkpoint), with `groups` GroupNorm groups.
    pub fn from_weights(
        set: &TensorSet<'_>,
        prefix: &str,
        groups: usize,
    ) -> Result<VaeConfig, VaeError> {
        let w = Weights::new(set, prefix);
        let has_decoder = w.contains("decoder.conv_in.weight");
        let has_encoder = w.contains("encoder.conv_in.weight");
        if !has_decoder && !has_encoder {
            return Err(VaeError::Missing {
                prefix: w.name(""),
                half: "encoder or decoder",
                probe: w.name("decoder.conv_in.weight"),
            });
        }
        // [KW, KH, IC, OC]
        let oc = |name: String| -> Result<usize, VaeError> { Ok(w.get(&name)?.ne()[3] as usize) };
        let (channels, res_blocks, latent_channels, image_channels);
        if has_decoder {
            let mut levels = 0;
            while w.contains(&format!("decoder.up.{levels}.block.0.norm1.weight")) {
                levels += 1;
            }
            channels = (0..levels)
                .map(|i| oc(format!("decoder.up.{i}.block.0.conv2.weight")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut blocks = 0usize;
            while w.contains(&format!("decoder.up.0.block.{blocks}.norm1.weight")) {
                blocks += 1;
            }
            res_blocks = blocks.saturating_sub(1);
            latent_channels = w.get("decoder.conv_in.weight")?.ne()[2] as usize;
            image_channels = oc("decoder.conv_out.weight".into())?;
        } else {
            let mut levels = 0;
            while w.contains(&format!("encoder.down.{levels}.block.0.norm1.weight")) {
                levels += 1;
            }
            channels = (0..levels)
                .map(|i| oc(format!("encoder.down.{i}.block.0.conv2.weight")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut blocks = 0usize;
            while w.contains(&format!("encoder.down.0.block.{blocks}.norm1.weight")) {
                blocks += 1;
            }
            res_blocks = blocks;
            latent_channels = oc("encoder.conv_out.weight".into())? / 2;
            image_channels = w.get("encoder.conv_in.weight")?.ne()[2] as usize;
        }
        if has_decoder && has_encoder {
            // Both halves must agree: encoder levels have one res block fewer.
            let mut enc_blocks = 0usize;
            while w.contains(&format!("encoder.down.0.block.{enc_blocks}.norm1.weight")) {
                enc_blocks += 1;
            }
            if enc_blocks != res_blocks {
                return Err(VaeError::Config(format!(
                    "the encoder has {enc_blocks} res blocks per level and the decoder {}: \
                     expected the decoder to have one more",
                    res_blocks + 1
                )));
            }
        }
        let config = VaeConfig {
            channels,
            res_blocks,
            latent_channels,
            image_channels,
            groups,
            has_encoder,
            has_decoder,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), VaeError> {
        if self.channels.is_empty() {
            return Err(VaeError::Config("no levels found".into()));
        }
        if self.res_blocks == 0 {
            return Err(VaeError::Config("no res blocks per level".into()));
        }
        if self.latent_channels == 0 || self.image_channels == 0 {
            return Err(VaeError::Config(format!(
                "{} latent and {} image channels",
                self.latent_channels, self.image_channels
            )));
        }
        if let Some(c) = self
            .channels
            .iter()
            .find(|&&c| self.groups == 0 || c % self.groups != 0)
        {
            return Err(VaeError::Config(format!(
                "{c} channels are not a whole number of {} GroupNorm groups",
                self.groups
            )));
        }
        Ok(())
    }

    /// Image pixels per latent pixel along each side (8 for SDXL's 4 levels).
    pub fn downscale(&self) -> usize {
        1 << (self.channels.len() - 1)
    }
}

/// Which half of the VAE a graph runs.
#[derive(Clone, Copy)]
enum Half {
    Decoder,
    Encoder,
}

/// An SDXL VAE over a loaded weight set, computing through its [`GraphRunner`].
pub struct SdxlVae<'w> {
    weights: Weights<'w>,
    config: VaeConfig,
    /// The graph of the last (decoder or encoder, size), reused while it stays.
    runner: GraphRunner<'w>,
}

impl<'w> SdxlVae<'w> {
    /// The VAE whose tensors are under `prefix` in `set` (SDXL's 32 groups), config inferred
    /// from the shapes, computing with `threads` CPU threads.
    pub fn new(
        set: &'w TensorSet<'w>,
        prefix: &str,
        threads: usize,
    ) -> Result<SdxlVae<'w>, VaeError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`SdxlVae::new`], computing through `runner` (its backend must be able to read
    /// every weight: a device copy for a GPU).
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        runner: GraphRunner<'w>,
    ) -> Result<SdxlVae<'w>, VaeError> {
        let config = VaeConfig::from_weights(set, prefix, DEFAULT_GROUPS)?;
        Self::with_config_runner(set, prefix, config, runner)
    }

    /// As [`SdxlVae::new`] with an explicit config (e.g. another group count).
    pub fn with_config(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: VaeConfig,
        threads: usize,
    ) -> Result<SdxlVae<'w>, VaeError> {
        Self::with_config_runner(set, prefix, config, GraphRunner::cpu(threads)?)
    }

    fn with_config_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        config: VaeConfig,
        mut runner: GraphRunner<'w>,
    ) -> Result<SdxlVae<'w>, VaeError> {
        config.validate()?;
        runner.set_name("vae");
        let vae = SdxlVae {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            runner,
        };
        // Build (not run) small graphs: every tensor is looked up and shape-checked now.
        let size = GRAPH_SIZE;
        if vae.config.has_decoder {
            let ctx = Context::new_meta(size, size)?;
            vae.build_decoder(&ctx, 1, 1)?;
        }
        if vae.config.has_encoder {
            let ctx = Context::new_meta(size, size)?;
            let s = vae.config.downscale();
            vae.build_encoder(&ctx, s, s)?;
        }
        Ok(vae)
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Decodes a *scaled* latent (as the sampler produces it; divided by [`SCALE_FACTOR`]
    /// here), row-major [latent_channels, h, w], into an image [3, h*8, w*8] in [-1, 1].
    pub fn decode(&mut self, latent: &[f32], h: usize, w: usize) -> Result<Vec<f32>, VaeError> {
        Ok(self
            .decode_raw(latent, h, w)?
            .into_iter()
            .map(|v| v.clamp(-1.0, 1.0))
            .collect())
    }

    /// The decoder output before clamping.
    fn decode_raw(&mut self, latent: &[f32], h: usize, w: usize) -> Result<Vec<f32>, VaeError> {
        let cfg = &self.config;
        if !cfg.has_decoder {
            return Err(VaeError::Missing {
                prefix: self.weights.name(""),
                half: "decoder",
                probe: self.weights.name("decoder.conv_in.weight"),
            });
        }
        if h == 0 || w == 0 || latent.len() != cfg.latent_channels * h * w {
            return Err(VaeError::Input(format!(
                "latent of {} values is not [{}, {h}, {w}]",
                latent.len(),
                cfg.latent_channels
            )));
        }
        let _span = tracing::debug_span!("vae_decode", h, w).entered();
        self.run(Half::Decoder, h, w, latent)
    }

    /// Encodes an image, row-major [3, H, W] in [-1, 1] with H and W multiples of 8, into the
    /// mean of the latent distribution times [`SCALE_FACTOR`], [latent_channels, H/8, W/8].
    pub fn encode(&mut self, image: &[f32], h: usize, w: usize) -> Result<Vec<f32>, VaeError> {
        let cfg = &self.config;
        if !cfg.has_encoder {
            return Err(VaeError::Missing {
                prefix: self.weights.name(""),
                half: "encoder",
                probe: self.weights.name("encoder.conv_in.weight"),
            });
        }
        let s = cfg.downscale();
        if h == 0 || w == 0 || h % s != 0 || w % s != 0 || image.len() != cfg.image_channels * h * w
        {
            return Err(VaeError::Input(format!(
                "image of {} values is not [{}, {h}, {w}] with sides multiples of {s}",
                image.len(),
                cfg.image_channels
            )));
        }
        let _span = tracing::debug_span!("vae_encode", h, w).entered();
        self.run(Half::Encoder, h, w, image)
    }

    /// Decodes in overlapping tiles of `tile` x `tile` latent pixels, `overlap` of them shared
    /// with each neighbour, blended linearly across the overlap. Same input and output as
    /// [`SdxlVae::decode`]. GroupNorm statistics and the mid attention are per tile, so the
    /// result differs from an untiled decode (as diffusers' and ComfyUI's tiled decodes do).
    /// ComfyUI's defaults, 512 px tiles with 64 px overlap, are `tile` 64, `overlap` 8.
    pub fn decode_tiled(
        &mut self,
        latent: &[f32],
        h: usize,
        w: usize,
        tile: usize,
        overlap: usize,
    ) -> Result<Vec<f32>, VaeError> {
        if tile == 0 || overlap >= tile {
            return Err(VaeError::Input(format!(
                "tile {tile} with overlap {overlap}: the overlap must be smaller than the tile"
            )));
        }
        if h <= tile && w <= tile {
            return self.decode(latent, h, w);
        }
        let lc = self.config.latent_channels;
        if latent.len() != lc * h * w {
            return Err(VaeError::Input(format!(
                "latent of {} values is not [{lc}, {h}, {w}]",
                latent.len()
            )));
        }
        let _span = tracing::debug_span!("vae_decode_tiled", h, w, tile, overlap).entered();
        let s = self.config.downscale();
        let ic = self.config.image_channels;
        let mut img = blend_tiles(latent, lc, h, w, tile, overlap, s, ic, |part, th, tw| {
            self.decode_raw(part, th, tw)
        })?;
        for v in &mut img {
            *v = v.clamp(-1.0, 1.0);
        }
        Ok(img)
    }

    /// Runs the decoder or the encoder graph for size `h` x `w` (built on the first call
    /// for that size) on `data`.
    fn run(&mut self, half: Half, h: usize, w: usize, data: &[f32]) -> Result<Vec<f32>, VaeError> {
        let key = [half as usize, h, w];
        if !self.runner.lookup(&key) {
            let sizes = GraphSizes::single(GRAPH_SIZE);
            let built = self.runner.build(sizes, "state", |ctx, _| {
                let (input, output) = match half {
                    Half::Decoder => self.build_decoder(ctx, h, w)?,
                    Half::Encoder => self.build_encoder(ctx, h, w)?,
                };
                Ok::<_, VaeError>(GraphSetParts {
                    keep: vec![input, output],
                    graphs: vec![vec![output]],
                    state: Vec::new(),
                })
            })?;
            self.runner.insert(&key, built);
        }
        let mut g = self.runner.cached()?;
        g.place(0)?;
        ggml::tensor_set_f32(g.tensor(0)?, data)?;
        g.compute(0)?;
        Ok(ggml::tensor_get_f32(g.tensor(1)?)?)
    }

    /// Decoder graph for an [lc, h, w] latent: (input, output [W, H, 3, 1] unclamped).
    fn build_decoder<'c>(
        &self,
        ctx: &'c Context,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>), VaeError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let wt: &Weights<'c> = &self.weights;
        let d = wt.pp("decoder");
        let levels = cfg.channels.len();
        let input = ctx
            .new_f32(&[w as i64, h as i64, cfg.latent_channels as i64, 1])
            .set_name("vae.dec.latent")
            .set_input();
        let z = ctx.scale(input, 1.0 / SCALE_FACTOR);
        let z = if wt.contains("post_quant_conv.weight") {
            nn::conv2d(ctx, &wt.pp("post_quant_conv"), z, 1, 0)?
        } else {
            z
        };
        let mut x = nn::conv2d(ctx, &d.pp("conv_in"), z, 1, 1)?.set_name("vae.dec.conv_in");
        x = self.mid(ctx, &d.pp("mid"), x, "dec")?;
        for i in (0..levels).rev() {
            let up = d.pp("up").pp(i);
            for j in 0..=cfg.res_blocks {
                x = self.resnet(ctx, &up.pp("block").pp(j), x)?;
                x = x.set_name(&format!("vae.dec.up.{i}.block.{j}"));
            }
            if i > 0 {
                x = ctx.upscale_nearest(x, 2);
                x = nn::conv2d(ctx, &up.pp("upsample").pp("conv"), x, 1, 1)?
                    .set_name(&format!("vae.dec.up.{i}.upsample"));
            }
        }
        let x = nn::group_norm(ctx, &d.pp("norm_out"), x, cfg.groups, NORM_EPS)?;
        let x = nn::conv2d(ctx, &d.pp("conv_out"), ctx.silu(x), 1, 1)?;
        Ok((input, x.set_name("vae.dec.image").set_output()))
    }

    /// Encoder graph for a [3, h, w] image: (input, output [W/8, H/8, lc, 1] scaled mean).
    fn build_encoder<'c>(
        &self,
        ctx: &'c Context,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>), VaeError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let wt: &Weights<'c> = &self.weights;
        let e = wt.pp("encoder");
        let levels = cfg.channels.len();
        let input = ctx
            .new_f32(&[w as i64, h as i64, cfg.image_channels as i64, 1])
            .set_name("vae.enc.image")
            .set_input();
        let mut x = nn::conv2d(ctx, &e.pp("conv_in"), input, 1, 1)?.set_name("vae.enc.conv_in");
        for i in 0..levels {
            let down = e.pp("down").pp(i);
            for j in 0..cfg.res_blocks {
                x = self.resnet(ctx, &down.pp("block").pp(j), x)?;
                x = x.set_name(&format!("vae.enc.down.{i}.block.{j}"));
            }
            if i + 1 < levels {
                // ldm pads right and bottom by one, then a stride-2 3x3 conv without padding.
                x = ctx.pad(x, [1, 1, 0, 0]);
                x = nn::conv2d(ctx, &down.pp("downsample").pp("conv"), x, 2, 0)?
                    .set_name(&format!("vae.enc.down.{i}.downsample"));
            }
        }
        x = self.mid(ctx, &e.pp("mid"), x, "enc")?;
        let x = nn::group_norm(ctx, &e.pp("norm_out"), x, cfg.groups, NORM_EPS)?;
        let mut m = nn::conv2d(ctx, &e.pp("conv_out"), ctx.silu(x), 1, 1)?;
        if wt.contains("quant_conv.weight") {
            m = nn::conv2d(ctx, &wt.pp("quant_conv"), m, 1, 0)?;
        }
        let [mw, mh, mc, _] = m.ne();
        let lc = cfg.latent_channels as i64;
        if mc != 2 * lc {
            return Err(VaeError::Config(format!(
                "encoder output has {mc} channels, expected mean and log-variance of {lc}"
            )));
        }
        // The mean: the first lc channels (contiguous planes).
        let nb = m.nb();
        let mean = ctx.view(m, &[mw, mh, lc, 1], &[nb[1], nb[2], nb[3]], 0);
        let out = ctx.scale(ctx.cont(mean), SCALE_FACTOR);
        Ok((input, out.set_name("vae.enc.latent").set_output()))
    }

    /// `block_1`, `attn_1`, `block_2` of the middle.
    fn mid<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
        side: &str,
    ) -> Result<Tensor<'c>, VaeError> {
        let x = self.resnet(ctx, &w.pp("block_1"), x)?;
        let x = self.attention(
            ctx,
            &w.pp("attn_1"),
            x.set_name(&format!("vae.{side}.mid.block_1")),
        )?;
        let x = self.resnet(
            ctx,
            &w.pp("block_2"),
            x.set_name(&format!("vae.{side}.mid.attn_1")),
        )?;
        Ok(x.set_name(&format!("vae.{side}.mid.block_2")))
    }

    /// Resnet block: x [W, H, Cin, N] -> [W, H, Cout, N].
    fn resnet<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
    ) -> Result<Tensor<'c>, VaeError> {
        let g = self.config.groups;
        let h = nn::group_norm(ctx, &w.pp("norm1"), x, g, NORM_EPS)?;
        let h = nn::conv2d(ctx, &w.pp("conv1"), ctx.silu(h), 1, 1)?;
        let h = nn::group_norm(ctx, &w.pp("norm2"), h, g, NORM_EPS)?;
        let h = nn::conv2d(ctx, &w.pp("conv2"), ctx.silu(h), 1, 1)?;
        let skip = if w.contains("nin_shortcut.weight") {
            nn::conv2d(ctx, &w.pp("nin_shortcut"), x, 1, 0)?
        } else {
            if x.ne()[2] != h.ne()[2] {
                return Err(NnError::MissingTensor(w.name("nin_shortcut.weight")).into());
            }
            x
        };
        Ok(ctx.add(skip, h))
    }

    /// Single-head self-attention over the H*W positions, residual: [W, H, C, N] -> same.
    fn attention<'c>(
        &self,
        ctx: &'c Context,
        w: &Weights<'c>,
        x: Tensor<'c>,
    ) -> Result<Tensor<'c>, VaeError> {
        let [wd, ht, c, n] = x.ne();
        let t = wd * ht;
        let hn = nn::group_norm(ctx, &w.pp("norm"), x, self.config.groups, NORM_EPS)?;
        // [W, H, C, N] -> [T, C, N] -> [C, T, N]
        let tokens = ctx.cont(ctx.permute(ctx.reshape(hn, &[t, c, n]), [1, 0, 2, 3]));
        // 1x1 conv weights [1, 1, C, C] (ldm) as linear weights [C_in, C_out]; a linear
        // [C, C] as some converted files store it is taken as is.
        let proj = |name: &str, x: Tensor<'c>| -> Result<Tensor<'c>, VaeError> {
            let pw = w.pp(name);
            let weight = if pw.get("weight")?.ne() == [c, c, 1, 1] {
                pw.get("weight")?
            } else {
                ctx.reshape(pw.get_shaped("weight", &[1, 1, c, c])?, &[c, c])
            };
            Ok(nn::linear_with(ctx, &pw, weight, "bias", x)?)
        };
        let q = ctx.reshape(proj("q", tokens)?, &[c, 1, t, n]);
        let k = ctx.reshape(proj("k", tokens)?, &[c, 1, t, n]);
        let v = ctx.reshape(proj("v", tokens)?, &[c, 1, t, n]);
        let a = nn::multi_head_attention(ctx, q, k, v, None); // [C, T, N]
        let a = proj("proj_out", a)?;
        // [C, T, N] -> [T, C, N] -> [W, H, C, N]
        let a = ctx.reshape(ctx.cont(ctx.permute(a, [1, 0, 2, 3])), &[wd, ht, c, n]);
        Ok(ctx.add(x, a))
    }
}

/// Nodes (and tensors) of one graph: about 30 per res block and 60 for an attention, far below
/// this for SDXL's 25 res blocks a side.
const GRAPH_SIZE: usize = 4096;

// The network this model file describes (see `super::network`).

/// The SDXL VAE's names: ldm, or diffusers mapped onto them (`names::sdxl::map_vae`).
pub static NAMES: Naming = Naming {
    architecture: Architecture::SDXL_VAE,
    description: "SDXL VAE (4-channel latent, 8x)",
    roots: &[
        &["encoder"],
        &["decoder"],
        &["quant_conv"],
        &["post_quant_conv"],
        &["conv1"],
        &["conv2"],
    ],
    map: names::sdxl::map_vae,
};

/// An SDXL VAE file (or the VAE of a checkpoint): 2-D convs.
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "sdxl-vae",
    priority: 7,
    listing: 2,
    signatures: &[
        sig(Layout::Original, "encoder.down.#.block.#.conv1.weight", &[], None, None),
        sig(Layout::Original, "decoder.up.#.block.#.conv1.weight", &[], None, None),
        sig(Layout::Diffusers, "encoder.down_blocks.#.resnets.#.conv1.weight", &[], Some(4), None),
        sig(Layout::Diffusers, "decoder.up_blocks.#.resnets.#.conv1.weight", &[], Some(4), None),
    ],
    architectures: &[&NAMES],
    context: Some(names::sdxl::vae_context),
    resolve: None,
    hints: &[],
};

/// The SDXL VAE (decoding the still; encoding for img2img).
pub static NETWORK: Network = Network {
    component: Component {
        name: "vae_sdxl",
        role: Role::Vae,
        stage: Stage::Image,
        order: 3,
        uses: &[Use::now("decode")],
    },
    label: "VAE",
    flag: "--vae",
    architectures: &[Architecture::SDXL_VAE],
    recognitions: &[&RECOGNITION],
    streams: false,
    memory,
    describe,
};

/// Untiled and per tile: [`decode_compute_bytes`] of the area each covers.
fn memory(set: &TensorSet<'_>, prefix: &str, r: &Request) -> Result<Memory, ModelError> {
    let c = VaeConfig::from_weights(set, prefix, DEFAULT_GROUPS)?;
    let (h, w) = (u64::from(r.height), u64::from(r.width));
    Ok(Memory {
        compute_bytes: 0,
        tiles: network::area_tiles(|th, tw| decode_compute_bytes(&c, th, tw), h, w),
    })
}

/// Decoding a `h` x `w` pixel area (a whole image or one tile): 14 bytes per pixel per channel
/// of the decoder's full-size width (channels[1], 256 for SDXL), or the mid-block single-head
/// attention's score matrix over the latent tokens if larger, with the 25 % margin. Calibrated
/// on the CPU measurements in bench/RESULTS.md (working memory 850 MiB at 512x512, 3.3 GiB at
/// 1024x1024, i.e. about 3,400 B per pixel = 13.3 x 256); with the margin it bounds both.
pub fn decode_compute_bytes(c: &VaeConfig, h: u64, w: u64) -> u64 {
    let px = h * w;
    let full = c
        .channels
        .get(1)
        .or(c.channels.last())
        .copied()
        .unwrap_or(0) as u64;
    let conv = 14 * full * px;
    let levels = c.channels.len().max(1) as u64;
    let tokens = px >> (2 * (levels - 1));
    let mid = c.channels.last().copied().unwrap_or(0) as u64;
    let attn = network::F32 * (tokens * tokens + 4 * tokens * mid);
    network::margin(conv.max(attn))
}

fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = VaeConfig::from_weights(set, prefix, DEFAULT_GROUPS)?;
    let base = c.channels.first().copied().unwrap_or(0);
    let mult = network::multipliers(&c.channels, base);
    let mut summary = format!(
        "SDXL VAE, {base} channels, mult {}, {} latent channels",
        network::mult_list(&mult),
        c.latent_channels
    );
    if !c.has_encoder {
        summary.push_str(", decoder only");
    } else if !c.has_decoder {
        summary.push_str(", encoder only");
    }
    Ok(network::description(
        summary,
        &c,
        &[("channel_mult", serde_json::json!(mult))],
    ))
}

/// On a device: the model over the copied weights.
impl super::Place for SdxlVae<'_> {
    type Model<'x> = SdxlVae<'x>;
    type Error = VaeError;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        _adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<SdxlVae<'x>, VaeError> {
        SdxlVae::with_runner(weights.set(), prefix, runner)
    }
}
