//! The Wan2.1 video VAE, decoder and encoder (original Wan names, canonical here; diffusers'
//! `AutoencoderKLWan` names are mapped by the weight loader, see `formats::names::wan`).
//!
//! Decoder, per latent frame (diffusers `AutoencoderKLWan._decode`, one frame per call with a
//! feature cache carried across calls):
//!   z = conv2(latent)                         (post-quant, 1x1x1)
//!   x = decoder.conv1(z)                      (causal 3x3x3)
//!   x = middle.0 (res), middle.1 (attention per frame), middle.2 (res)
//!   x = upsamples.0.. (flat: res blocks, then a resample per level but the last)
//!   frames = head.2(silu(head.0(x)))           (RMS norm, causal 3x3x3 to 3 channels)
//! Causal conv (kernel time 3): output frame t sees input frames t-2, t-1, t; the two frames
//! before the chunk come from the cache (the last two input frames of that conv in the previous
//! chunk), zeros for the first chunk. Diffusers keeps 1 frame plus zero padding when only one has
//! been seen; that is the same as a 2-frame cache initialised with zeros, which is what we carry.
//! Residual block: h = shortcut?(x); y = residual.2(silu(residual.0(x)));
//! y = residual.6(silu(residual.3(y))); out = y + h. RMS norm: x / |x|_channels * sqrt(C) * gamma.
//! Resample `upsample3d` (`time_conv` present): on every chunk but the first, time_conv (causal
//! 3x1x1, C -> 2C) doubles the frames (output channel s*C + c is frame 2t+s, channel c); then
//! nearest 2x and a 3x3 conv (`resample.1`) per frame. `upsample2d`: the latter only.
//! So latent frame 0 decodes to 1 frame and each later one to 4 (with Wan2.1's two temporal
//! levels).
//!
//! Encoder (diffusers `_encode`): frame 0 alone, then chunks of 4 frames, one graph each:
//!   x = encoder.conv1(video); x = downsamples.. (res blocks; `resample.1` = pad right/bottom +
//!   stride-2 3x3 conv; with `time_conv` also a temporal stride-2 kernel-3 conv over
//!   [last frame of the previous chunk, x], which the first chunk only caches);
//!   middle.{0,1,2}; head; then `conv1` (quant); the mean is the first z channels.
//!
//! Execution: one ggml graph per latent frame. Its input is the latent frame, its output the
//! decoded frames. The 2-frame cache of every causal conv lives in one persistent backend
//! buffer (the state buffer of the graphs in the model's [`GraphRunner`], laid out by
//! `CacheLayout`), zeroed before the first chunk: each graph reads a slot through a
//! tensor placed over it and writes the slot's new contents with a copy placed over the same
//! memory, added to the graph right after the frames it is taken from (so they are freed
//! early; the copy necessarily runs after the slot's read, which feeds it). Nothing goes
//! through the host between chunks and the compute buffer holds no cache; it depends on
//! (first chunk?, h, w) only, not on the number of frames: [`WanVae::last_compute_bytes`]
//! reports it and [`WanVae::decode_memory`] plans it (and the caches) without computing. The
//! two graphs (first chunk, later chunk) are built once per decode or encode, over the caches,
//! and each reused for every chunk of its kind; the caches (and graphs) are given back when the
//! call ends.
//!
//! Spatial tiling ([`WanVae::decode_tiled`]): each tile runs the whole causal decode over all
//! frames with its own caches, and the tiles are blended linearly across their overlap
//! ([`nn::blend_tiles`], as the SDXL VAE's); compute and cache memory are then those of one
//! tile, and the blended video is the only buffer that grows with the frame count (3 x 4 bytes
//! per output pixel and frame).
//!
//! Causal 3-D convs are computed as the sum over the time taps of F32 direct 2-D convs (ggml's
//! `conv_3d` goes through an F16 im2col), so an F32 model stays F32 throughout.
//!
//! Weights: F32 and F16 kernels are used as stored (ggml's direct conv gathers patches in the
//! kernel's type, so F16 weights also round activations to F16: 1.1e-3 on the test model);
//! BF16 and quantized kernels are cast to F32 in the graph.
//!
//! Latents: [`WanVae::decode`] takes the VAE's raw latent and [`WanVae::encode`] returns one;
//! the DiT works on normalised latents, converted with [`denormalize`] / [`normalize`] and
//! [`LATENTS_MEAN`] / [`LATENTS_STD`] (as diffusers' pipelines do outside the VAE).
//!
//! Shapes are ggml `ne` (innermost first): activations [W, H, C, T]; 5-D conv weights
//! [OC, IC, KT, KH, KW] are stored folded as [KW, KH, KT, IC*OC].

use super::network::{self, Description, Memory, ModelError, Network, Request};
use crate::formats::names::{self, sig, Architecture, Layout, Naming, Recognition};
use crate::ggml::{self, Buffer, Context, GgmlError, GraphSetParts, Tensor, TensorSet};
use crate::nn::{self, blend_tiles, tile_starts, NnError, Weights};
use crate::runtime::plan::{Component, Role, Stage, TileOption, Use};
use crate::runtime::{GraphRunner, GraphSizes};

/// Wan2.1 latent channel means (diffusers `AutoencoderKLWan` config `latents_mean`, the same
/// values as `mean` in Wan's `wan/modules/vae.py` `WanVAE`).
pub const LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Wan2.1 latent channel standard deviations (`latents_std`, Wan's `std`).
pub const LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// `F.normalize`'s clamp on the norm is 1e-12; as an epsilon on the mean square it is
/// negligible for any non-zero pixel.
const RMS_EPS: f32 = 1e-12;
/// Frames of each causal conv's cache (diffusers `CACHE_T`).
const CACHE_T: i64 = 2;
const GRAPH_SIZE: usize = 8192;

/// Why a Wan VAE forward failed.
#[derive(Debug, thiserror::Error)]
pub enum WanVaeError {
    #[error("Wan VAE: {0}")]
    Weights(#[from] NnError),
    #[error("Wan VAE: {0}")]
    Config(String),
    #[error("Wan VAE: {0}")]
    Input(String),
    #[error("Wan VAE: {0}")]
    Ggml(#[from] GgmlError),
}

/// One entry of the flat `decoder.upsamples` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum UpLayer {
    /// `decoder.upsamples.N` is a residual block.
    Res(usize),
    /// A spatial 2x upsampling (`resample.1`).
    Up2d(usize),
    /// A spatial 2x and temporal 2x upsampling (`time_conv` and `resample.1`).
    Up3d(usize),
}

/// One entry of the flat `encoder.downsamples` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DownLayer {
    /// `encoder.downsamples.N` is a residual block.
    Res(usize),
    /// A spatial 2x downsampling (`resample.1`, stride 2 after padding right and bottom).
    Down2d(usize),
    /// Spatial, then temporal 2x downsampling (`time_conv`, kernel 3, stride 2, fed the last
    /// frame of the previous chunk).
    Down3d(usize),
}

/// Decoder hyperparameters, inferred from the weights. Wan2.1: z 16, base 96, dim_mult
/// [1, 2, 4, 4], 3 residual blocks per decoder level (2 + 1), temporal up in the first two.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WanVaeConfig {
    pub z_dim: usize,
    /// Output channels of `decoder.conv1` (the deepest width).
    pub top_dim: usize,
    /// Output channels of the last level (`decoder.head.0`).
    pub out_dim: usize,
    pub out_channels: usize,
    pub up: Vec<UpLayer>,
    /// Whether the post-quant `conv2` is present.
    pub post_quant: bool,
    /// The encoder's flat `encoder.downsamples` list; empty without an encoder.
    pub down: Vec<DownLayer>,
    /// Whether the encoder (`encoder.conv1`) is present.
    pub has_encoder: bool,
}

impl WanVaeConfig {
    pub fn from_weights(set: &TensorSet<'_>, prefix: &str) -> Result<WanVaeConfig, WanVaeError> {
        let w = Weights::new(set, prefix);
        let oc = |name: &str| -> Result<usize, WanVaeError> {
            Ok(w.get(&format!("{name}.bias"))?.ne()[0] as usize)
        };
        let top_dim = oc("decoder.conv1")?;
        let z_dim = w.get("decoder.conv1.weight")?.ne()[3] as usize / top_dim.max(1);
        let out_dim = w.get("decoder.head.0.gamma")?.n_elements() as usize;
        let out_channels = oc("decoder.head.2")?;
        let mut up = Vec::new();
        let mut n = 0;
        loop {
            let p = w.pp("decoder.upsamples").pp(n);
            if p.contains("residual.0.gamma") {
                up.push(UpLayer::Res(n));
            } else if p.contains("resample.1.weight") {
                up.push(if p.contains("time_conv.weight") {
                    UpLayer::Up3d(n)
                } else {
                    UpLayer::Up2d(n)
                });
            } else {
                break;
            }
            n += 1;
        }
        if up.is_empty() {
            return Err(
                NnError::MissingTensor(w.name("decoder.upsamples.0.residual.0.gamma")).into(),
            );
        }
        let has_encoder = w.contains("encoder.conv1.weight");
        let mut down = Vec::new();
        for n in (0..).take_while(|_| has_encoder) {
            let p = w.pp("encoder.downsamples").pp(n);
            if p.contains("residual.0.gamma") {
                down.push(DownLayer::Res(n));
            } else if p.contains("resample.1.weight") {
                down.push(if p.contains("time_conv.weight") {
                    DownLayer::Down3d(n)
                } else {
                    DownLayer::Down2d(n)
                });
            } else {
                break;
            }
        }
        Ok(WanVaeConfig {
            has_encoder,
            down,
            z_dim,
            top_dim,
            out_dim,
            out_channels,
            up,
            post_quant: w.contains("conv2.weight"),
        })
    }

    /// Pixels per latent pixel along each side (8 for Wan2.1).
    pub fn spatial_factor(&self) -> usize {
        1 << self
            .up
            .iter()
            .filter(|l| !matches!(l, UpLayer::Res(_)))
            .count()
    }

    /// Frames decoded from each latent frame after the first (4 for Wan2.1).
    pub fn temporal_factor(&self) -> usize {
        1 << self
            .up
            .iter()
            .filter(|l| matches!(l, UpLayer::Up3d(_)))
            .count()
    }

    /// Frames decoded from `t` latent frames: 1 + factor * (t - 1).
    pub fn frames_for(&self, t: usize) -> usize {
        if t == 0 {
            0
        } else {
            1 + self.temporal_factor() * (t - 1)
        }
    }
}

/// The Wan2.1 VAE over a loaded weight set, computing through its [`GraphRunner`].
pub struct WanVae<'w> {
    weights: Weights<'w>,
    config: WanVaeConfig,
    /// The chunk graphs of the current decode or encode, over their causal caches.
    runner: GraphRunner<'w>,
}

/// Bytes each cache starts on inside the cache buffer.
const CACHE_ALIGN: usize = 64;

/// Where the causal caches of one decode (or encode) lie in their buffer: the cache of every
/// cached conv at a fixed offset. The buffer is zeroed before the first chunk, then read and
/// overwritten in place by each chunk's graph: nothing goes through the host between chunks,
/// and the compute buffer holds no cache.
struct CacheLayout {
    /// (byte offset, shape [W, H, C, frames]) per cache slot, in build order.
    slots: Vec<(usize, [i64; 4])>,
    /// Bytes of the buffer.
    bytes: usize,
}

impl CacheLayout {
    /// Lays out `shapes` (F32).
    fn new(shapes: &[[i64; 4]]) -> CacheLayout {
        let mut slots = Vec::with_capacity(shapes.len());
        let mut end = 0usize;
        for ne in shapes {
            slots.push((end, *ne));
            let bytes = 4 * ne.iter().product::<i64>() as usize;
            end += bytes.div_ceil(CACHE_ALIGN) * CACHE_ALIGN;
        }
        CacheLayout {
            slots,
            bytes: end.max(CACHE_ALIGN),
        }
    }
}

/// Writes zeros over every cache in `buffer` (the state before the first chunk).
fn zero_caches(buffer: &Buffer<'static>) -> Result<(), WanVaeError> {
    let ctx = Context::new_meta(1, 1)?;
    let n = buffer.size() / 4;
    let t = ctx.new_f32(&[n as i64]);
    buffer.place(t, 0)?;
    // Freshly allocated zeros are mapped lazily: reading them costs no resident memory.
    ggml::tensor_set_f32(t, &vec![0f32; n])?;
    Ok(())
}

/// A cache slot: (byte offset, shape [W, H, C, frames]).
type Slot = (usize, [i64; 4]);

/// The graph of one chunk while it is built, with the cache slots its causal convs use: slot
/// `i` is the i-th cached conv in build order, the same in every chunk. With a cache buffer,
/// the tensors that read or write a slot are placed over its memory; without one, the slot
/// shapes are only recorded (to lay out a buffer).
struct ChunkGraph<'c> {
    /// What the graph computes, in order: the cache writes as they are built, then the output.
    outputs: Vec<Tensor<'c>>,
    /// The cache slots (as [`CacheLayout::slots`]) and the buffer they are in.
    caches: Option<(Vec<Slot>, &'c Buffer<'c>)>,
    /// Shape of each slot seen so far (`None` for a slot a first chunk skips).
    shapes: Vec<Option<[i64; 4]>>,
}

impl<'c> ChunkGraph<'c> {
    fn new(caches: Option<(&CacheLayout, &'c Buffer<'c>)>) -> ChunkGraph<'c> {
        ChunkGraph {
            outputs: Vec::new(),
            caches: caches.map(|(l, b)| (l.slots.clone(), b)),
            shapes: Vec::new(),
        }
    }

    /// The next slot, holding `ne` frames of a conv's input.
    fn slot(&mut self, ne: [i64; 4]) -> Result<usize, WanVaeError> {
        let i = self.shapes.len();
        if let Some((slots, _)) = &self.caches {
            match slots.get(i) {
                Some(&(_, have)) if have == ne => {}
                other => {
                    return Err(WanVaeError::Config(format!(
                        "cache slot {i}: graph wants {ne:?}, buffer has {:?}",
                        other.map(|s| s.1)
                    )))
                }
            }
        }
        self.shapes.push(Some(ne));
        Ok(i)
    }

    /// Skips a slot this chunk does not use.
    fn skip(&mut self) {
        self.shapes.push(None);
    }

    /// The contents of slot `i` (before this chunk writes it).
    fn read(&self, ctx: &'c Context, i: usize) -> Result<Tensor<'c>, WanVaeError> {
        let ne = self.shapes[i].expect("slot has a shape");
        let t = ctx.new_f32(&ne);
        if let Some((slots, buffer)) = &self.caches {
            buffer.place(t, slots[i].0)?;
        }
        Ok(t)
    }

    /// Copies `src` (the slot's shape) into slot `i`. The copy joins the graph now, right
    /// after `src` is computed, so the frames it is taken from can be freed early; it runs
    /// after every read of the slot, since those feed `src`.
    fn write(&mut self, ctx: &'c Context, i: usize, src: Tensor<'c>) -> Result<(), WanVaeError> {
        let dst = ctx.cont(src);
        if let Some((slots, buffer)) = &self.caches {
            buffer.place(dst, slots[i].0)?;
        }
        self.outputs.push(dst);
        Ok(())
    }
}

/// Which half of the VAE runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Half {
    Decoder,
    Encoder,
}

/// Memory of a decode (or encode) beyond the weights, planned without computing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WanVaeMemory {
    /// The graph allocator's compute buffer for the largest chunk (of one tile).
    pub compute_bytes: usize,
    /// The causal caches (of one tile), a persistent buffer next to the compute buffer.
    pub cache_bytes: usize,
    /// Host buffers of the tiled decode: the blended video and its weights, one tile's video
    /// and latent (0 untiled, where frames are handed out one chunk at a time).
    pub host_bytes: usize,
    /// Latent size of a tile (the whole latent when untiled), and the tile count.
    pub tile_h: usize,
    pub tile_w: usize,
    pub tiles: usize,
}

impl WanVaeMemory {
    /// Everything together.
    pub fn total(&self) -> usize {
        self.compute_bytes + self.cache_bytes + self.host_bytes
    }
}

impl<'w> WanVae<'w> {
    /// The VAE whose tensors are under `prefix` in `set` (original Wan names), config inferred
    /// from the shapes, computing with `threads` CPU threads.
    pub fn new(
        set: &'w TensorSet<'w>,
        prefix: &str,
        threads: usize,
    ) -> Result<WanVae<'w>, WanVaeError> {
        Self::with_runner(set, prefix, GraphRunner::cpu(threads)?)
    }

    /// As [`WanVae::new`], computing through `runner` (its backend must be able to read every
    /// weight: a device copy for a GPU). Its compute buffer and the causal caches are leased
    /// as "vae compute" and "vae caches".
    pub fn with_runner(
        set: &'w TensorSet<'w>,
        prefix: &str,
        mut runner: GraphRunner<'w>,
    ) -> Result<WanVae<'w>, WanVaeError> {
        let config = WanVaeConfig::from_weights(set, prefix)?;
        runner.set_name("vae");
        let vae = WanVae {
            weights: Weights::new(set, prefix).for_backend(runner.backend())?,
            config,
            runner,
        };
        // Build (not run) both chunk kinds on a 1x1 latent: every tensor is looked up and
        // shape-checked now.
        for first in [true, false] {
            let ctx = Context::new_meta(GRAPH_SIZE, GRAPH_SIZE)?;
            let mut g = ChunkGraph::new(None);
            vae.build_decoder(&ctx, &mut g, first, 1, 1)?;
            if vae.config.has_encoder {
                let ctx = Context::new_meta(GRAPH_SIZE, GRAPH_SIZE)?;
                let mut g = ChunkGraph::new(None);
                let s = vae.config.spatial_factor();
                let frames = if first {
                    1
                } else {
                    vae.config.temporal_factor()
                };
                vae.build_encoder(&ctx, &mut g, first, frames, s, s)?;
            }
        }
        Ok(vae)
    }

    pub fn runner(&self) -> &GraphRunner<'w> {
        &self.runner
    }

    pub fn runner_mut(&mut self) -> &mut GraphRunner<'w> {
        &mut self.runner
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// Compute-buffer bytes of the graph allocator after the last decoded chunk (it grows to
    /// the largest graph seen and does not depend on the number of frames).
    pub fn last_compute_bytes(&self) -> usize {
        self.runner.compute_bytes()
    }

    /// Compute-buffer bytes one decoder chunk needs for an [z, h, w] latent frame (a later chunk,
    /// the larger kind), planned by a fresh graph allocator without computing: what
    /// [`WanVae::last_compute_bytes`] will report after decoding at that size. The weights and
    /// the caches ([`WanVae::decode_memory`]) come on top.
    pub fn decode_compute_bytes(&self, h: usize, w: usize) -> Result<usize, WanVaeError> {
        Ok(self.plan(true, h, w)?.0)
    }

    /// Memory of decoding a [z, t, h, w] latent, planned without computing: untiled with
    /// `tile` `None` (or a tile covering the latent), else in tiles of `(tile, overlap)` latent
    /// pixels as [`WanVae::decode_tiled`] does. The compute and cache bytes depend on the (tile)
    /// size only; `t` only changes the host buffers of a tiled decode (the blended video).
    pub fn decode_memory(
        &self,
        t: usize,
        h: usize,
        w: usize,
        tile: Option<(usize, usize)>,
    ) -> Result<WanVaeMemory, WanVaeError> {
        let s = self.config.spatial_factor();
        let oc = self.config.out_channels;
        let frames = self.config.frames_for(t);
        let tf = self.config.temporal_factor();
        let tiled = tile.filter(|&(tile, _)| h > tile || w > tile);
        let (th, tw, tiles) = match tiled {
            None => (h, w, 1),
            Some((tile, overlap)) => {
                check_tile(tile, overlap)?;
                let (th, tw) = (tile.min(h), tile.min(w));
                let n = tile_starts(h, th, overlap).len() * tile_starts(w, tw, overlap).len();
                (th, tw, n)
            }
        };
        let (compute_bytes, cache_bytes) = self.plan(true, th, tw)?;
        let f32s = std::mem::size_of::<f32>();
        // One chunk's frames, and their clamped copy.
        let chunk = 2 * oc * tf * th * tw * s * s * f32s;
        let host_bytes = match tiled {
            None => chunk,
            Some(_) => {
                let video = oc * frames * h * w * s * s + h * w * s * s;
                let tile_video = oc * frames * th * tw * s * s;
                let tile_latent = self.config.z_dim * t * th * tw;
                (video + tile_video + tile_latent) * f32s + chunk
            }
        };
        Ok(WanVaeMemory {
            compute_bytes,
            cache_bytes,
            host_bytes,
            tile_h: th,
            tile_w: tw,
            tiles,
        })
    }

    /// Memory of encoding a video of `h` x `w` pixels (compute and caches; any frame count).
    pub fn encode_memory(&self, h: usize, w: usize) -> Result<WanVaeMemory, WanVaeError> {
        if !self.config.has_encoder {
            return Err(NnError::MissingTensor(self.weights.name("encoder.conv1.weight")).into());
        }
        let (compute_bytes, cache_bytes) = self.plan(false, h, w)?;
        Ok(WanVaeMemory {
            compute_bytes,
            cache_bytes,
            host_bytes: 0,
            tile_h: h,
            tile_w: w,
            tiles: 1,
        })
    }

    /// (compute bytes, cache bytes) of a later decoder (encoder) chunk at latent (pixel) size
    /// h x w, planned by a fresh allocator. The cache buffer is allocated but never touched,
    /// so it costs address space, not memory.
    fn plan(&self, decoder: bool, h: usize, w: usize) -> Result<(usize, usize), WanVaeError> {
        let half = if decoder {
            Half::Decoder
        } else {
            Half::Encoder
        };
        let layout = self.cache_layout(half, h, w)?;
        let sizes = GraphSizes::single(GRAPH_SIZE);
        let built = self
            .runner
            .build_over(sizes, "caches", layout.bytes, |ctx, buffer, _| {
                let mut g = ChunkGraph::new(Some((&layout, buffer)));
                let (_, output) = self.build_chunk(ctx, &mut g, half, false, h, w)?;
                g.outputs.push(output);
                Ok::<_, WanVaeError>(GraphSetParts {
                    keep: Vec::new(),
                    graphs: vec![g.outputs],
                    state: Vec::new(),
                })
            })?;
        let compute_bytes = self.runner.measure([built.set().graph(0)])?;
        tracing::debug!(
            decoder,
            h,
            w,
            cache_bytes = layout.bytes,
            compute_bytes,
            "wan vae chunk plan"
        );
        Ok((compute_bytes, layout.bytes))
    }

    /// The graph of one chunk: the first (one frame) or a later one; the decoder's for a
    /// latent frame of h x w, the encoder's for frames of h x w pixels. (input, output).
    fn build_chunk<'c>(
        &self,
        ctx: &'c Context,
        g: &mut ChunkGraph<'c>,
        half: Half,
        first: bool,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>), WanVaeError>
    where
        'w: 'c,
    {
        match half {
            Half::Decoder => self.build_decoder(ctx, g, first, h, w),
            Half::Encoder => {
                let frames = if first {
                    1
                } else {
                    self.config.temporal_factor()
                };
                self.build_encoder(ctx, g, first, frames, h, w)
            }
        }
    }

    /// The cache layout of the decoder (latent size h x w) or the encoder (pixel size h x w).
    fn cache_layout(&self, half: Half, h: usize, w: usize) -> Result<CacheLayout, WanVaeError> {
        let ctx = Context::new_meta(GRAPH_SIZE, GRAPH_SIZE)?;
        let mut g = ChunkGraph::new(None);
        self.build_chunk(&ctx, &mut g, half, false, h, w)?;
        let shapes: Option<Vec<[i64; 4]>> = g.shapes.iter().copied().collect();
        let shapes = shapes
            .ok_or_else(|| WanVaeError::Config("a later chunk skipped a cache slot".to_string()))?;
        Ok(CacheLayout::new(&shapes))
    }

    /// Builds (once per size) the graphs of the first and of a later chunk over one cache
    /// buffer (kept: input and output of each), and zeroes the caches.
    fn chunk_graphs(&mut self, half: Half, h: usize, w: usize) -> Result<(), WanVaeError> {
        let key = [half as usize, h, w];
        if !self.runner.lookup(&key) {
            let layout = self.cache_layout(half, h, w)?;
            let sizes = GraphSizes {
                tensors: 2 * GRAPH_SIZE,
                nodes: GRAPH_SIZE,
                graphs: 2,
            };
            let built =
                self.runner
                    .build_over(sizes, "caches", layout.bytes, |ctx, buffer, _| {
                        let mut keep = Vec::new();
                        let mut graphs = Vec::new();
                        for first in [true, false] {
                            let mut g = ChunkGraph::new(Some((&layout, buffer)));
                            let (input, output) =
                                self.build_chunk(ctx, &mut g, half, first, h, w)?;
                            g.outputs.push(output);
                            keep.extend([input, output]);
                            graphs.push(g.outputs);
                        }
                        Ok::<_, WanVaeError>(GraphSetParts {
                            keep,
                            graphs,
                            state: Vec::new(),
                        })
                    })?;
            self.runner.insert(&key, built);
        }
        let g = self.runner.cached()?;
        let buffer = g
            .state_buffer()
            .ok_or_else(|| WanVaeError::Config("chunk graphs without caches".into()))?;
        zero_caches(buffer)
    }

    /// Computes chunk `i` (the first chunk's graph for 0, the later one's after) of the graphs
    /// [`WanVae::chunk_graphs`] built, on `data`.
    fn run_chunk(&mut self, i: usize, data: &[f32]) -> Result<Vec<f32>, WanVaeError> {
        let k = usize::from(i > 0);
        let mut g = self.runner.cached()?;
        g.place(k)?;
        ggml::tensor_set_f32(g.tensor(2 * k)?, data)?;
        g.compute(k)?;
        Ok(ggml::tensor_get_f32(g.tensor(2 * k + 1)?)?)
    }

    /// Decodes a raw latent (already de-normalised, see [`denormalize`]), row-major
    /// [z, t, h, w], into a video [3, 1 + 4*(t-1), 8h, 8w] clamped to [-1, 1].
    pub fn decode(
        &mut self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, WanVaeError> {
        let s = self.config.spatial_factor();
        let (oh, ow) = (h * s, w * s);
        let frames = self.config.frames_for(t);
        let oc = self.config.out_channels;
        let plane = oh * ow;
        let mut out = vec![0f32; oc * frames * plane];
        self.decode_frames(latent, t, h, w, |f, img| {
            for c in 0..oc {
                out[(c * frames + f) * plane..][..plane]
                    .copy_from_slice(&img[c * plane..][..plane]);
            }
        })?;
        Ok(out)
    }

    /// As [`WanVae::decode`], handing each decoded frame ([3, 8h, 8w], clamped) to `on_frame`
    /// with its index as soon as its latent frame is decoded.
    pub fn decode_frames(
        &mut self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
        mut on_frame: impl FnMut(usize, &[f32]),
    ) -> Result<(), WanVaeError> {
        self.check_latent(latent, t, h, w)?;
        let z = self.config.z_dim;
        let _span = tracing::debug_span!("wan_vae_decode", t, h, w).entered();
        let plane = h * w;
        self.chunk_graphs(Half::Decoder, h, w)?;
        let mut next_frame = 0;
        let mut frame_in = vec![0f32; z * plane];
        for i in 0..t {
            for c in 0..z {
                frame_in[c * plane..][..plane]
                    .copy_from_slice(&latent[(c * t + i) * plane..][..plane]);
            }
            let video = self.run_chunk(i, &frame_in)?;
            // [F, 3, H, W] row-major
            let oc = self.config.out_channels;
            let s = self.config.spatial_factor();
            let fsize = oc * plane * s * s;
            for img in video.chunks_exact(fsize) {
                let img: Vec<f32> = img.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
                on_frame(next_frame, &img);
                next_frame += 1;
            }
        }
        // The caches are this call's: give them back.
        self.runner.invalidate();
        Ok(())
    }

    /// Decodes in overlapping spatial tiles of `tile` x `tile` latent pixels, `overlap` of them
    /// shared with each neighbour, blended linearly across the overlap (as the SDXL VAE's
    /// tiled decode). Each tile is a full causal decode over all frames with its own caches,
    /// so the compute and cache memory are those of one tile ([`WanVae::decode_memory`]); the
    /// blended video is held on the host until the last tile. Same input and output as
    /// [`WanVae::decode`]; a tile covering the latent gives exactly the untiled decode. The
    /// mid attention and every 3x3 conv near a tile edge see only the tile, so the result
    /// differs slightly from an untiled decode.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_tiled(
        &mut self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
        tile: usize,
        overlap: usize,
    ) -> Result<Vec<f32>, WanVaeError> {
        check_tile(tile, overlap)?;
        if h <= tile && w <= tile {
            return self.decode(latent, t, h, w);
        }
        self.check_latent(latent, t, h, w)?;
        let _span = tracing::debug_span!("wan_vae_decode_tiled", t, h, w, tile, overlap).entered();
        let (z, s) = (self.config.z_dim, self.config.spatial_factor());
        let oc = self.config.out_channels * self.config.frames_for(t);
        // [z, t, h, w] is [z*t, h, w] and [3, F, H, W] is [3*F, H, W]: tiles of the latent
        // decode to tiles of every frame.
        blend_tiles(latent, z * t, h, w, tile, overlap, s, oc, |part, th, tw| {
            self.decode(part, t, th, tw)
        })
    }

    /// As [`WanVae::decode_tiled`], handing out each frame ([3, 8h, 8w], clamped) to
    /// `on_frame` once every tile is decoded.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_frames_tiled(
        &mut self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
        tile: usize,
        overlap: usize,
        mut on_frame: impl FnMut(usize, &[f32]),
    ) -> Result<(), WanVaeError> {
        check_tile(tile, overlap)?;
        if h <= tile && w <= tile {
            return self.decode_frames(latent, t, h, w, on_frame);
        }
        let video = self.decode_tiled(latent, t, h, w, tile, overlap)?;
        let s = self.config.spatial_factor();
        let (oc, frames, plane) = (
            self.config.out_channels,
            self.config.frames_for(t),
            h * w * s * s,
        );
        let mut img = vec![0f32; oc * plane];
        for f in 0..frames {
            for c in 0..oc {
                img[c * plane..][..plane]
                    .copy_from_slice(&video[(c * frames + f) * plane..][..plane]);
            }
            on_frame(f, &img);
        }
        Ok(())
    }

    fn check_latent(
        &self,
        latent: &[f32],
        t: usize,
        h: usize,
        w: usize,
    ) -> Result<(), WanVaeError> {
        let z = self.config.z_dim;
        if t == 0 || h == 0 || w == 0 || latent.len() != z * t * h * w {
            return Err(WanVaeError::Input(format!(
                "latent of {} values is not [{z}, {t}, {h}, {w}]",
                latent.len()
            )));
        }
        Ok(())
    }

    /// Encodes a video, row-major [3, frames, H, W] in [-1, 1] with frames = 1 + 4k and H, W
    /// multiples of 8, into the mean of the latent distribution, raw (not normalised),
    /// [z, 1 + k, H/8, W/8]. Frame 0 is encoded alone, then chunks of 4 frames, one graph each,
    /// with the causal cache carried between them (diffusers `AutoencoderKLWan._encode`).
    pub fn encode(
        &mut self,
        video: &[f32],
        frames: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, WanVaeError> {
        let cfg = &self.config;
        if !cfg.has_encoder {
            return Err(NnError::MissingTensor(self.weights.name("encoder.conv1.weight")).into());
        }
        let (s, tf, ic) = (cfg.spatial_factor(), cfg.temporal_factor(), 3usize);
        if frames == 0
            || (frames - 1) % tf != 0
            || h == 0
            || w == 0
            || h % s != 0
            || w % s != 0
            || video.len() != ic * frames * h * w
        {
            return Err(WanVaeError::Input(format!(
                "video of {} values is not [{ic}, {frames}, {h}, {w}] with 1 + {tf}k frames and \
                 sides multiples of {s}",
                video.len()
            )));
        }
        let _span = tracing::debug_span!("wan_vae_encode", frames, h, w).entered();
        let z = cfg.z_dim;
        let t_lat = 1 + (frames - 1) / tf;
        let (lh, lw) = (h / s, w / s);
        let (plane, lplane) = (h * w, lh * lw);
        let mut out = vec![0f32; z * t_lat * lplane];
        self.chunk_graphs(Half::Encoder, h, w)?;
        for i in 0..t_lat {
            let (f0, n) = if i == 0 {
                (0, 1)
            } else {
                (1 + tf * (i - 1), tf)
            };
            let mut chunk = vec![0f32; ic * n * plane];
            for f in 0..n {
                for c in 0..ic {
                    // ggml [W, H, C, T]: frame-major
                    chunk[(f * ic + c) * plane..][..plane]
                        .copy_from_slice(&video[(c * frames + f0 + f) * plane..][..plane]);
                }
            }
            let mean = self.run_chunk(i, &chunk)?;
            if mean.len() != z * lplane {
                return Err(WanVaeError::Config(format!(
                    "chunk {i} encoded to {} values, expected one latent frame of {}",
                    mean.len(),
                    z * lplane
                )));
            }
            for c in 0..z {
                out[(c * t_lat + i) * lplane..][..lplane]
                    .copy_from_slice(&mean[c * lplane..][..lplane]);
            }
        }
        // The caches are this call's: give them back.
        self.runner.invalidate();
        Ok(out)
    }

    /// The encoder graph of one chunk of `frames` frames: (video input [w, h, 3, frames], mean
    /// [w/8, h/8, z, 1], cache slots).
    fn build_encoder<'c>(
        &self,
        ctx: &'c Context,
        g: &mut ChunkGraph<'c>,
        first: bool,
        frames: usize,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>), WanVaeError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let wt: &Weights<'c> = &self.weights;
        let e = wt.pp("encoder");
        let input = ctx
            .new_f32(&[w as i64, h as i64, 3, frames as i64])
            .set_name("wan_vae.enc.video")
            .set_input();
        let mut x = causal_conv(ctx, &e.pp("conv1"), input, 1, g)?;
        for layer in &cfg.down {
            match *layer {
                DownLayer::Res(n) => x = residual(ctx, &e.pp("downsamples").pp(n), x, g)?,
                DownLayer::Down2d(n) | DownLayer::Down3d(n) => {
                    let p = e.pp("downsamples").pp(n);
                    x = ctx.pad(x, [1, 1, 0, 0]);
                    x = nn::conv2d(ctx, &p.pp("resample").pp(1), x, 2, 0)?;
                    if matches!(layer, DownLayer::Down3d(_)) {
                        x = time_down(ctx, &p.pp("time_conv"), x, first, g)?;
                    }
                }
            }
        }
        x = residual(ctx, &e.pp("middle").pp(0), x, g)?;
        x = attention(ctx, &e.pp("middle").pp(1), x)?;
        x = residual(ctx, &e.pp("middle").pp(2), x, g)?;
        let x = ctx.silu(rms_norm(ctx, &e.pp("head").pp(0), x)?);
        let mut m = causal_conv(ctx, &e.pp("head").pp(2), x, 1, g)?;
        if wt.contains("conv1.weight") {
            m = causal_conv(ctx, &wt.pp("conv1"), m, 0, g)?;
        }
        let [mw, mh, mc, mt] = m.ne();
        let z = cfg.z_dim as i64;
        if mc != 2 * z || mt != 1 {
            return Err(WanVaeError::Config(format!(
                "encoder output {:?}: expected mean and log-variance of {z} channels, 1 frame",
                m.ne()
            )));
        }
        let nb = m.nb();
        let mean = ctx.cont(ctx.view(m, &[mw, mh, z, 1], &[nb[1], nb[2], nb[3]], 0));
        Ok((input, mean.set_name("wan_vae.enc.mean").set_output()))
    }

    /// The decoder graph of one chunk: (latent frame input [w, h, z, 1], frames [W, H, 3, F],
    /// cache slots).
    fn build_decoder<'c>(
        &self,
        ctx: &'c Context,
        g: &mut ChunkGraph<'c>,
        first: bool,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<'c>, Tensor<'c>), WanVaeError>
    where
        'w: 'c,
    {
        let cfg = &self.config;
        let wt: &Weights<'c> = &self.weights;
        let d = wt.pp("decoder");
        let input = ctx
            .new_f32(&[w as i64, h as i64, cfg.z_dim as i64, 1])
            .set_name("wan_vae.dec.latent")
            .set_input();
        let mut x = input;
        if cfg.post_quant {
            x = causal_conv(ctx, &wt.pp("conv2"), x, 0, g)?;
        }
        x = causal_conv(ctx, &d.pp("conv1"), x, 1, g)?;
        x = residual(ctx, &d.pp("middle").pp(0), x, g)?;
        x = attention(ctx, &d.pp("middle").pp(1), x)?;
        x = residual(ctx, &d.pp("middle").pp(2), x, g)?;
        for layer in &cfg.up {
            match *layer {
                UpLayer::Res(n) => x = residual(ctx, &d.pp("upsamples").pp(n), x, g)?,
                UpLayer::Up2d(n) | UpLayer::Up3d(n) => {
                    let p = d.pp("upsamples").pp(n);
                    if matches!(layer, UpLayer::Up3d(_)) {
                        if first {
                            // Diffusers marks the cache "Rep" and leaves the frame alone.
                            g.skip();
                        } else {
                            let [xw, xh, c, t] = x.ne();
                            let y = causal_conv(ctx, &p.pp("time_conv"), x, 0, g)?;
                            if y.ne()[2] != 2 * c {
                                return Err(WanVaeError::Config(format!(
                                    "'{}' has {} output channels, expected {}",
                                    p.name("time_conv.weight"),
                                    y.ne()[2],
                                    2 * c
                                )));
                            }
                            // Channel s*C + c of frame t is channel c of frame 2t + s: the same
                            // memory as [W, H, C, 2T].
                            x = ctx.reshape(y, &[xw, xh, c, 2 * t]);
                        }
                    }
                    x = ctx.upscale_nearest(x, 2);
                    x = nn::conv2d(ctx, &p.pp("resample").pp(1), x, 1, 1)?;
                }
            }
        }
        let x = ctx.silu(rms_norm(ctx, &d.pp("head").pp(0), x)?);
        let x = causal_conv(ctx, &d.pp("head").pp(2), x, 1, g)?;
        Ok((input, x.set_name("wan_vae.dec.frames").set_output()))
    }
}

/// Scales and shifts a normalised latent (as the DiT produces it) to the VAE's raw latent, in
/// place: x * std + mean per channel (diffusers' Wan pipelines do this before `vae.decode`).
/// `latent` is row-major [z, t*h*w]; `mean` and `std` have z values ([`LATENTS_MEAN`] and
/// [`LATENTS_STD`] for Wan2.1).
pub fn denormalize(latent: &mut [f32], mean: &[f32], std: &[f32]) {
    assert_eq!(
        mean.len(),
        std.len(),
        "denormalize: mean and std lengths differ"
    );
    let z = mean.len();
    assert!(
        z > 0 && latent.len() % z == 0,
        "denormalize: {} values for {z} channels",
        latent.len()
    );
    let n = latent.len() / z;
    for (c, chunk) in latent.chunks_exact_mut(n).enumerate() {
        for v in chunk {
            *v = *v * std[c] + mean[c];
        }
    }
}

/// The inverse of [`denormalize`]: (x - mean) / std per channel, in place, for an encoded
/// latent going to the DiT (diffusers' Wan I2V pipeline does this to `vae.encode`'s mean).
pub fn normalize(latent: &mut [f32], mean: &[f32], std: &[f32]) {
    assert_eq!(
        mean.len(),
        std.len(),
        "normalize: mean and std lengths differ"
    );
    let z = mean.len();
    assert!(
        z > 0 && latent.len() % z == 0,
        "normalize: {} values for {z} channels",
        latent.len()
    );
    let n = latent.len() / z;
    for (c, chunk) in latent.chunks_exact_mut(n).enumerate() {
        for v in chunk {
            *v = (*v - mean[c]) / std[c];
        }
    }
}

/// Causal 3-D conv `{w}weight` [KW, KH, KT, IC*OC] + `{w}bias` [OC] on x [W, H, IC, T], with
/// symmetric spatial padding `pad` and, when KT > 1, the KT-1 frames before x taken from a
/// cache slot of `g` (which gets the last 2 input frames back). -> [OW, OH, OC, T].
fn causal_conv<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    pad: i32,
    g: &mut ChunkGraph<'c>,
) -> Result<Tensor<'c>, WanVaeError> {
    let weight = w.get("weight")?;
    let bias = w.get("bias")?;
    let oc = bias.ne()[0];
    let [kw, kh, kt, ioc] = weight.ne();
    let [xw, xh, ic, t] = x.ne();
    if bias.ne()[1..] != [1, 1, 1] || ioc != ic * oc || kt > CACHE_T + 1 {
        return Err(NnError::Shape {
            tensor: w.name("weight"),
            expected: format!("[KW, KH, KT <= 3, {ic} * {oc}] for input {:?}", x.ne()),
            found: weight.ne(),
        }
        .into());
    }
    let weight = nn::conv_kernel(ctx, w, weight);
    let es = weight.nb()[0];
    let kb = (kw * kh) as usize * es;
    // Time tap k of the kernel as a 2-D kernel [KW, KH, IC, OC].
    let tap = |weight: Tensor<'c>, k: i64| {
        let v = ctx.view(
            weight,
            &[kw, kh, ic, oc],
            &[kw as usize * es, kb * kt as usize, kb * (kt * ic) as usize],
            k as usize * kb,
        );
        ctx.cont(v)
    };
    let y = if kt == 1 {
        let k = ctx.reshape(weight, &[kw, kh, ic, oc]);
        ctx.conv_2d_direct(k, x, (1, 1), (pad, pad), (1, 1))
    } else {
        let i = g.slot([xw, xh, ic, CACHE_T])?;
        let full = ctx.concat(g.read(ctx, i)?, x, 3); // [W, H, IC, T + 2]
        let nb = full.nb();
        let last = ctx.view(
            full,
            &[xw, xh, ic, CACHE_T],
            &[nb[1], nb[2], nb[3]],
            t as usize * nb[3],
        );
        g.write(ctx, i, last)?;
        // Tap k reads frames skip + k .. skip + k + T of [cache, x]: a plain view. (One conv
        // over an overlapping view of all KT frames would save the sum, but ggml sizes views
        // by their element count and refuses one larger than its source.)
        let skip = (CACHE_T + 1 - kt) as usize;
        let mut acc: Option<Tensor<'c>> = None;
        for k in 0..kt {
            let frames = ctx.view(
                full,
                &[xw, xh, ic, t],
                &[nb[1], nb[2], nb[3]],
                (skip + k as usize) * nb[3],
            );
            let yk = ctx.conv_2d_direct(tap(weight, k), frames, (1, 1), (pad, pad), (1, 1));
            acc = Some(match acc {
                Some(a) => ctx.add(a, yk),
                None => yk,
            });
        }
        acc.expect("kt >= 1")
    };
    let b = ctx.reshape(nn::to_f32(ctx, bias), &[1, 1, oc, 1]);
    Ok(ctx.add(y, b))
}

/// Temporal 2x downsampling `{w}weight` [1, 1, 3, C*C] (stride 2, no padding) of x
/// [W, H, C, T] preceded by the last frame of the previous chunk (a 1-frame cache slot). The
/// first chunk only stores its last frame and passes x through (diffusers' `downsample3d`).
fn time_down<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    first: bool,
    g: &mut ChunkGraph<'c>,
) -> Result<Tensor<'c>, WanVaeError> {
    let [xw, xh, c, t] = x.ne();
    let frame = |src: Tensor<'c>, f: i64| {
        let nb = src.nb();
        ctx.view(
            src,
            &[xw, xh, c, 1],
            &[nb[1], nb[2], nb[3]],
            f as usize * nb[3],
        )
    };
    let i = g.slot([xw, xh, c, 1])?;
    if first {
        g.write(ctx, i, frame(x, t - 1))?;
        return Ok(x);
    }
    let weight = w.get("weight")?;
    let bias = w.get_shaped("bias", &[c])?;
    let [kw, kh, kt, ioc] = weight.ne();
    if [kw, kh, kt, ioc] != [1, 1, 3, c * c] {
        return Err(NnError::Shape {
            tensor: w.name("weight"),
            expected: format!("[1, 1, 3, {c} * {c}]"),
            found: weight.ne(),
        }
        .into());
    }
    let weight = nn::conv_kernel(ctx, w, weight);
    let full = ctx.concat(g.read(ctx, i)?, x, 3); // [W, H, C, T + 1]
    g.write(ctx, i, frame(full, t))?;
    let t_out = (t + 1 - 3) / 2 + 1;
    let nb = full.nb();
    let es = weight.nb()[0];
    // Output frame j reads frames 2j + k, k = 0..3: tap k is a strided view of the frames.
    let mut acc: Option<Tensor<'c>> = None;
    for k in 0..3i64 {
        let wk = ctx.cont(ctx.view(
            weight,
            &[1, 1, c, c],
            &[es, 3 * es, 3 * c as usize * es],
            k as usize * es,
        ));
        // Contiguous: ggml's CUDA conv_2d takes no strided input.
        let frames = ctx.cont(ctx.view(
            full,
            &[xw, xh, c, t_out],
            &[nb[1], nb[2], 2 * nb[3]],
            k as usize * nb[3],
        ));
        let yk = ctx.conv_2d_direct(wk, frames, (1, 1), (0, 0), (1, 1));
        acc = Some(match acc {
            Some(a) => ctx.add(a, yk),
            None => yk,
        });
    }
    let y = acc.expect("3 taps");
    let b = ctx.reshape(nn::to_f32(ctx, bias), &[1, 1, c, 1]);
    Ok(ctx.add(y, b))
}

/// A tile must be non-empty and larger than its overlap.
fn check_tile(tile: usize, overlap: usize) -> Result<(), WanVaeError> {
    if tile == 0 || overlap >= tile {
        return Err(WanVaeError::Input(format!(
            "tile {tile} with overlap {overlap}: the overlap must be smaller than the tile"
        )));
    }
    Ok(())
}

/// Wan's RMS norm over the channels of x [W, H, C, T] with `{w}gamma` [C] (any trailing 1s).
fn rms_norm<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
) -> Result<Tensor<'c>, WanVaeError> {
    let c = x.ne()[2];
    let g = w.get("gamma")?;
    if g.n_elements() != c {
        return Err(NnError::Shape {
            tensor: w.name("gamma"),
            expected: format!("[{c}] (and trailing 1s)"),
            found: g.ne(),
        }
        .into());
    }
    // [W, H, C, T] -> [C, W, H, T]
    let xc = ctx.cont(ctx.permute(x, [1, 2, 0, 3]));
    let y = ctx.rms_norm(xc, RMS_EPS);
    let y = ctx.mul(y, ctx.reshape(nn::to_f32(ctx, g), &[c, 1, 1, 1]));
    // [C, W, H, T] -> [W, H, C, T]
    Ok(ctx.cont(ctx.permute(y, [2, 0, 1, 3])))
}

/// Residual block `{w}residual.{0,2,3,6}` and optional `{w}shortcut`.
fn residual<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    g: &mut ChunkGraph<'c>,
) -> Result<Tensor<'c>, WanVaeError> {
    let h = if w.contains("shortcut.weight") {
        causal_conv(ctx, &w.pp("shortcut"), x, 0, g)?
    } else {
        x
    };
    let r = w.pp("residual");
    let y = ctx.silu(rms_norm(ctx, &r.pp(0), x)?);
    let y = causal_conv(ctx, &r.pp(2), y, 1, g)?;
    let y = ctx.silu(rms_norm(ctx, &r.pp(3), y)?);
    let y = causal_conv(ctx, &r.pp(6), y, 1, g)?;
    if y.ne() != h.ne() {
        return Err(NnError::MissingTensor(w.name("shortcut.weight")).into());
    }
    // y first in the graph: a shortcut conv's output is then not held while y is computed.
    Ok(ctx.add(y, h))
}

/// Single-head self-attention over the H*W positions of each frame, residual:
/// `{w}norm.gamma`, `{w}to_qkv` (1x1, C -> 3C), `{w}proj` (1x1).
fn attention<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
) -> Result<Tensor<'c>, WanVaeError> {
    let [xw, xh, c, t] = x.ne();
    let n = xw * xh;
    let hn = rms_norm(ctx, &w.pp("norm"), x)?;
    let qkv = nn::conv2d(ctx, &w.pp("to_qkv"), hn, 1, 0)?; // [W, H, 3C, T]
    if qkv.ne()[2] != 3 * c {
        return Err(NnError::Shape {
            tensor: w.name("to_qkv.weight"),
            expected: format!("[1, 1, {c}, {}]", 3 * c),
            found: w.get("to_qkv.weight")?.ne(),
        }
        .into());
    }
    let qkv = ctx.reshape(qkv, &[n, 3 * c, t]);
    let nb = qkv.nb();
    // [N, C, T] part i -> [C, N, T] -> [C, 1, N, T]
    let part = |i: i64| {
        let v = ctx.view(qkv, &[n, c, t], &[nb[1], nb[2]], (i * c) as usize * nb[1]);
        ctx.reshape(ctx.cont(ctx.permute(v, [1, 0, 2, 3])), &[c, 1, n, t])
    };
    let a = nn::multi_head_attention(ctx, part(0), part(1), part(2), None); // [C, N, T]
    let a = ctx.reshape(ctx.cont(ctx.permute(a, [1, 0, 2, 3])), &[xw, xh, c, t]);
    let a = nn::conv2d(ctx, &w.pp("proj"), a, 1, 0)?;
    Ok(ctx.add(x, a))
}

// The network this model file describes (see `super::network`).

/// The Wan VAE's names: original Wan, or diffusers mapped onto them
/// (`names::wan::map_vae`).
pub static NAMES: Naming = Naming {
    architecture: Architecture::WAN_VAE,
    description: "Wan video VAE (causal 3-D)",
    roots: &[
        &["encoder"],
        &["decoder"],
        &["quant_conv"],
        &["post_quant_conv"],
        &["conv1"],
        &["conv2"],
    ],
    map: names::wan::map_vae,
};

/// A Wan VAE file: 3-D convs.
#[rustfmt::skip]
pub static RECOGNITION: Recognition = Recognition {
    name: "wan-vae",
    priority: 6,
    listing: 3,
    signatures: &[
        sig(Layout::Original, "encoder.downsamples.#.residual.2.weight", &[], None, None),
        sig(Layout::Original, "decoder.upsamples.#.residual.2.weight", &[], None, None),
        sig(Layout::Diffusers, "encoder.down_blocks.#.conv1.weight", &[], Some(5), None),
        sig(Layout::Diffusers, "decoder.up_blocks.#.resnets.#.conv1.weight", &[], Some(5), None),
    ],
    architectures: &[&NAMES],
    context: Some(names::wan::vae_context),
    resolve: None,
    hints: &[],
};

/// The Wan2.1 VAE: encodes the first frame, decodes the video after the DiT.
pub static NETWORK: Network = Network {
    component: Component {
        name: "vae_wan",
        role: Role::Vae,
        stage: Stage::Video,
        order: 2,
        uses: &[
            Use::now("encode first frame"),
            Use::after_denoiser("decode"),
        ],
    },
    label: "Wan VAE",
    flag: "--vae",
    architectures: &[Architecture::WAN_VAE],
    recognitions: &[&RECOGNITION],
    streams: false,
    memory,
    describe,
};

/// The device memory per tile option, exactly as the runs allocate it: the graph allocator
/// sizes the chunk graphs (compute buffer) and the causal caches are laid out, for the decode
/// in each tile size and for the (untiled) encode of the first frame, which bounds every
/// option from below.
fn memory(set: &TensorSet<'_>, prefix: &str, r: &Request) -> Result<Memory, ModelError> {
    let vae = WanVae::new(set, prefix, 1)?;
    let c = vae.config();
    let (h, w) = (r.height as usize, r.width as usize);
    let (s, tf) = (c.spatial_factor(), c.temporal_factor());
    let (lh, lw) = (h / s, w / s);
    let t = 1 + r.frames.saturating_sub(1) / tf;
    let dev = |m: WanVaeMemory| (m.compute_bytes + m.cache_bytes) as u64;
    let encode = if c.has_encoder {
        dev(vae.encode_memory(h, w)?)
    } else {
        0
    };
    let mut tiles = vec![TileOption {
        tile: None,
        compute_bytes: dev(vae.decode_memory(t, lh, lw, None)?).max(encode),
    }];
    for px in network::vae_tiles(r.vae_tile) {
        // As the pipeline tiles: latent tiles of px / 8, overlapping by 1/8 of a tile.
        let tl = (px as usize / s).max(2);
        let overlap = (tl / 8).max(1);
        let m = vae.decode_memory(t, lh, lw, Some((tl, overlap)))?;
        tiles.push(TileOption {
            tile: Some(px),
            compute_bytes: dev(m).max(encode),
        });
    }
    Ok(Memory {
        compute_bytes: 0,
        tiles,
    })
}

/// Base width and multipliers come from the encoder's levels (`?` for a decoder-only file).
fn describe(set: &TensorSet<'_>, prefix: &str) -> Result<Description, ModelError> {
    let c = WanVaeConfig::from_weights(set, prefix)?;
    let w = Weights::new(set, prefix);
    let width = |name: String| w.get(&name).ok().map(|t| t.ne()[0] as usize);
    let base = c
        .has_encoder
        .then(|| width("encoder.conv1.bias".into()))
        .flatten();
    let mut levels: Vec<Option<usize>> = vec![None];
    for layer in &c.down {
        match *layer {
            DownLayer::Res(n) => {
                if let Some(l) = levels.last_mut() {
                    *l = width(format!("encoder.downsamples.{n}.residual.6.bias"));
                }
            }
            DownLayer::Down2d(_) | DownLayer::Down3d(_) => levels.push(None),
        }
    }
    while levels.last().is_some_and(Option::is_none) {
        levels.pop();
    }
    let mult = base.and_then(|b| {
        let widths: Option<Vec<usize>> = levels.iter().copied().collect();
        network::multipliers(&widths?, b)
    });
    let summary = format!(
        "Wan VAE, base {}, z {}, mult {}",
        base.map_or_else(|| "?".to_string(), |b| b.to_string()),
        c.z_dim,
        network::mult_list(&mult)
    );
    Ok(network::description(
        summary,
        &c,
        &[
            ("base_dim", serde_json::json!(base)),
            ("dim_mult", serde_json::json!(mult)),
        ],
    ))
}

/// On a device: the model over the copied weights.
impl super::Place for WanVae<'_> {
    type Model<'x> = WanVae<'x>;
    type Error = WanVaeError;

    fn place<'x>(
        weights: &'x crate::runtime::DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        _adapters: Option<&'x crate::lora::Adapters>,
    ) -> Result<WanVae<'x>, WanVaeError> {
        WanVae::with_runner(weights.set(), prefix, runner)
    }
}
