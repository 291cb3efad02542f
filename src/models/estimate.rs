//! Compute-buffer estimates for the planner, from the configs read from the files' headers (no
//! weights loaded, no graph built). Building the real-size graphs on a meta context needs the
//! weight set of every model (and, for the 14B DiT at 32,760 tokens, a noticeable time), so the
//! planner uses these documented formulas instead; the Wan VAE's is calibrated against
//! [`crate::models::WanVae::decode_compute_bytes`] (the measurement in the `wan_vae` module
//! docs: 4.7 GB per chunk at 480x832 for base width 32).
//!
//! What every formula counts: f32 activations (4 bytes), one network evaluation at batch 1 (the
//! pipelines run the conditional and unconditional passes one after the other), the tensors
//! alive at the busiest point of the graph after ggml-alloc's reuse (inputs of the running op,
//! its output, tensors kept for a later residual or skip), plus a 25 % margin for alignment and
//! allocator fragmentation. They are upper-bound estimates meant to be replaced by measured
//! `GraphAllocator::reserve` figures when the runtime builds the graphs on the device.

use crate::formats::names::{
    ClipTextConfig, ClipVisionConfig, SdxlVaeConfig, Umt5Config, UnetConfig, WanDitConfig,
    WanVaeConfig,
};

const F32: u64 = 4;

fn margin(bytes: u64) -> u64 {
    bytes + bytes / 4
}

/// One pre-norm transformer layer's peak over `n` tokens of width `d` with an FFN of `f` and
/// `heads` materialised attention score matrices (n x n each, mul-mat attention).
fn transformer_layer(n: u64, d: u64, f: u64, heads: u64) -> u64 {
    F32 * (8 * n * d + 2 * n * f + 2 * heads * n * n)
}

/// CLIP text encoder (CLIP-L, bigG) on one 77-token chunk.
pub fn clip_text_compute_bytes(c: &ClipTextConfig) -> u64 {
    let d = c.width.unwrap_or(1280);
    let f = c.ffn_dim.unwrap_or(4 * d);
    let heads = c.heads.unwrap_or(d / c.head_dim.max(1));
    let n = c.max_positions.unwrap_or(77);
    // The token embedding gather reads rows only; the pooled projection is tiny.
    margin(transformer_layer(n, d, f, heads) + F32 * n * d * 2)
}

/// CLIP vision tower (CLIP-H/14 at 224 px: 257 tokens).
pub fn clip_vision_compute_bytes(c: &ClipVisionConfig) -> u64 {
    let d = c.width.unwrap_or(1280);
    let f = c.ffn_dim.unwrap_or(4 * d);
    let heads = c.heads.unwrap_or(d / c.head_dim.unwrap_or(80).max(1));
    let n = c.positions.unwrap_or(257);
    let image = c.image_size.unwrap_or(224);
    // Preprocessed pixels and the patch im2col next to one layer.
    let patch = c.patch_size.unwrap_or(14);
    let pixels = F32 * 3 * image * image;
    let im2col = F32 * (n - 1) * 3 * patch * patch;
    margin(transformer_layer(n, d, f, heads) + pixels + im2col)
}

/// umT5 encoder over `tokens` (512 for Wan): the relative position bias adds one heads x n x n
/// tensor per layer next to the scores.
pub fn umt5_compute_bytes(c: &Umt5Config, tokens: u64) -> u64 {
    let d = c.d_model.unwrap_or(4096);
    let f = c.ffn_dim.unwrap_or(10240);
    let heads = c.heads.unwrap_or(64);
    let ffn = if c.gated_ffn { 3 * f } else { 2 * f };
    margin(F32 * (8 * tokens * d + ffn * tokens + 3 * heads * tokens * tokens))
}

/// SDXL UNet on a `h` x `w` pixel image (latent h/8 x w/8): the skip connections kept for the
/// output blocks plus the busiest level (a 3x3 conv with its F16 im2col, or a transformer
/// block with mul-mat attention and the GEGLU feed-forward).
pub fn unet_compute_bytes(c: &UnetConfig, h: u64, w: u64) -> u64 {
    let mc = c.model_channels.unwrap_or(320);
    let mult: Vec<u64> = if c.channel_mult.is_empty() {
        vec![1, 2, 4]
    } else {
        c.channel_mult.clone()
    };
    let nrb = c.num_res_blocks.unwrap_or(2) as u64;
    let tokens0 = (h / 8) * (w / 8);
    let ctx = c.context_dim.unwrap_or(2048);
    let mut skips = 0;
    let mut work = 0;
    for (l, m) in mult.iter().enumerate() {
        let ch = mc * m;
        let n = tokens0 >> (2 * l);
        // Input blocks of this level (res blocks + the downsample / input conv) keep outputs.
        skips += F32 * (nrb + 1) * n * ch;
        // A res block at the decoder side reads the concatenation (2 x ch) at this size.
        let conv = F32 * n * ch * 5 + 2 * 9 * 2 * ch * n;
        let depth = c.transformer_depth.get(l).copied().unwrap_or(0) as u64;
        let attn = if depth > 0 {
            let heads = ch / c.head_dim.max(1);
            F32 * (n * ch * 12 + heads * n * n + heads * n * 77 + 77 * ctx)
        } else {
            0
        };
        work = work.max(conv).max(attn);
    }
    margin(skips + work)
}

/// SDXL VAE decoding a `h` x `w` pixel area (a whole image or one tile): 14 bytes per pixel per
/// channel of the decoder's full-size width (base x mult[1] = 256), or the mid-block single-head
/// attention's score matrix over the latent tokens if larger. Calibrated on the CPU measurements
/// in bench/RESULTS.md (working memory 850 MiB at 512x512, 3.3 GiB at 1024x1024, i.e. about
/// 3,400 B per pixel = 13.3 x 256); with the margin it bounds both.
pub fn sdxl_vae_decode_compute_bytes(c: &SdxlVaeConfig, h: u64, w: u64) -> u64 {
    let base = c.base_channels.unwrap_or(128);
    let mult: Vec<u64> = if c.channel_mult.is_empty() {
        vec![1, 2, 4, 4]
    } else {
        c.channel_mult.clone()
    };
    let px = h * w;
    let full = base * mult.get(1).copied().unwrap_or(2);
    let conv = 14 * full * px;
    let tokens = px >> (2 * (mult.len() as u64 - 1));
    let mid = base * mult.last().copied().unwrap_or(4);
    let attn = F32 * (tokens * tokens + 4 * tokens * mid);
    margin(conv.max(attn))
}

/// Wan2.1 DiT over a `frames` x `h` x `w` video (latent frames (frames-1)/4+1, patch 1x2x2 on
/// the 8x latent: tokens = lat_f x h/16 x w/16), flash attention (scores never materialised):
/// the residual, the modulated input, q/k/v with their RoPE'd copies at the attention, or the
/// FFN's up projection and its GELU at the feed-forward.
pub fn wan_dit_compute_bytes(c: &WanDitConfig, frames: u64, h: u64, w: u64) -> u64 {
    let d = c.dim.unwrap_or(5120);
    let f = c.ffn_dim.unwrap_or(13824);
    let patch = c.patch_size.unwrap_or([1, 2, 2]);
    dit_bytes(d, f, patch, frames, h, w)
}

/// The activations a streamed Wan DiT carries from one block graph to the next: the residual
/// [dim, tokens], the rope tables (2 x [128, tokens]), the time embeddings and the text (512)
/// and image (257) contexts, all F32.
pub fn wan_dit_state_bytes(c: &WanDitConfig, frames: u64, h: u64, w: u64) -> u64 {
    let d = c.dim.unwrap_or(5120);
    let [pt, ph, pw] = c.patch_size.unwrap_or([1, 2, 2]);
    let lat_f = (frames.saturating_sub(1)) / 4 + 1;
    let tokens = lat_f.div_ceil(pt) * (h / 8).div_ceil(ph) * (w / 8).div_ceil(pw);
    F32 * (tokens * d + 2 * 128 * tokens + 7 * d + 769 * d) + 8 * 256
}

fn dit_bytes(d: u64, f: u64, [pt, ph, pw]: [u64; 3], frames: u64, h: u64, w: u64) -> u64 {
    let lat_f = (frames.saturating_sub(1)) / 4 + 1;
    let tokens = lat_f.div_ceil(pt) * (h / 8).div_ceil(ph) * (w / 8).div_ceil(pw);
    // Context: 512 text + 257 image tokens, projected to k/v per attention.
    let ctx = F32 * 769 * d * 4;
    let attention = F32 * 7 * tokens * d;
    let ffn = F32 * (3 * tokens * d + 2 * tokens * f);
    margin(attention.max(ffn) + ctx)
}

/// Bytes per output pixel per base channel of one Wan VAE decoder chunk (4 frames), from the
/// measured plan in the `wan_vae` module docs: 4.7e9 B at 480x832 for base 32.
pub const WAN_VAE_BYTES_PER_PIXEL_PER_CHANNEL: u64 = 368;

/// Wan VAE decoding one later chunk (4 output frames) of an `h` x `w` pixel area; the encode
/// of the first frame is smaller (one frame), so this bounds both uses.
pub fn wan_vae_decode_compute_bytes(c: &WanVaeConfig, h: u64, w: u64) -> u64 {
    WAN_VAE_BYTES_PER_PIXEL_PER_CHANNEL * c.base_dim.unwrap_or(96) * h * w
}

/// VAE tile edges offered to the planner (pixels), after "untiled".
pub const VAE_TILES: [u32; 4] = [512, 384, 256, 128];

/// The area one tile of `tile` px covers in an `h` x `w` image, with 1/8 overlap on each side
/// (clamped to the image).
pub fn tile_area(tile: u32, h: u64, w: u64) -> (u64, u64) {
    let t = tile as u64 + 2 * (tile as u64 / 8);
    (t.min(h), t.min(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_sizes_are_in_the_expected_range() {
        let gib = |n: u64| n as f64 / (1u64 << 30) as f64;
        let b = dit_bytes(5120, 13824, [1, 2, 2], 81, 480, 832);
        // 32,760 tokens: one f32 activation is 671 MB; the FFN's peak about eight of them.
        assert!((5.0..10.0).contains(&gib(b)), "{}", gib(b));
        let b = WAN_VAE_BYTES_PER_PIXEL_PER_CHANNEL * 32 * 480 * 832;
        assert!((b as f64 / 4.7e9 - 1.0).abs() < 0.01, "{b}");
        // SDXL VAE: bounds the measured working memory (bench/RESULTS.md) by at most 1.6x.
        let mib = |n: u64| n as f64 / (1u64 << 20) as f64;
        let sdxl = |px: u64| margin((14 * 256 * px).max(F32 * (px / 64).pow(2)));
        for (side, measured) in [(512u64, 850.0), (1024, 3.3 * 1024.0)] {
            let est = mib(sdxl(side * side));
            assert!(
                est >= measured && est <= 1.6 * measured,
                "{side}: {est} MiB"
            );
        }
    }
}
