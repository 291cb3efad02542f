//! Tiny random-weight models of both stages, for `nijigen demo`: the real architectures (the
//! tensor names and layouts of the files users download) at tiny widths, so the whole
//! pipeline runs on a CPU in seconds with no download.
//!
//! The sizes are those of the test fixtures (tests/fixtures/sdxl_pipeline and
//! tests/fixtures/wan_pipeline, whose recipes tests/demo.rs compares with these lists), but the
//! names and shapes are generated here from each architecture's structure, and the values from
//! a counter-based hash: nothing is read at run time. The weights are random, so the pictures
//! are noise-like patterns, not anime; the point is to see every stage run.
//!
//! Files (in the cache folder):
//! - `demo_sdxl.safetensors`: one SDXL checkpoint in the ldm single-file layout (UNet, CLIP-L,
//!   bigG, VAE), F16, as CivitAI checkpoints are.
//! - `demo_wan_i2v.gguf`: a Wan2.1 I2V DiT (original names, 5-D patch embedding), F32.
//! - `demo_umt5.gguf`: umT5 with llama.cpp names and a small Unigram tokenizer in
//!   `tokenizer.ggml.*`, as city96's umT5 GGUF.
//! - `demo_clip_vision.safetensors`: CLIP vision H (HF names), F32.
//! - `demo_wan_vae.safetensors`: the Wan VAE (original names), F32.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::formats::gguf::{GgufWriter, TensorDecl};
use crate::formats::{FormatError, MetaValue};
use crate::ggml::GgmlType;

/// Changes whenever the generated files change, so a cache built by another version is rebuilt.
const DEMO_VERSION: u32 = 1;

/// Why the demo models could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One tensor of a generated file: stored name, PyTorch-order shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
}

/// A tensor list under construction.
#[derive(Default)]
struct Specs(Vec<TensorSpec>);

impl Specs {
    fn push(&mut self, name: impl Into<String>, shape: &[u64]) {
        self.0.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        });
    }
    fn linear(&mut self, p: &str, out: u64, inp: u64, bias: bool) {
        self.push(format!("{p}.weight"), &[out, inp]);
        if bias {
            self.push(format!("{p}.bias"), &[out]);
        }
    }
    fn conv2d(&mut self, p: &str, out: u64, inp: u64, k: u64) {
        self.push(format!("{p}.weight"), &[out, inp, k, k]);
        self.push(format!("{p}.bias"), &[out]);
    }
    fn conv3d(&mut self, p: &str, out: u64, inp: u64, k: [u64; 3]) {
        self.push(format!("{p}.weight"), &[out, inp, k[0], k[1], k[2]]);
        self.push(format!("{p}.bias"), &[out]);
    }
    /// LayerNorm / GroupNorm: weight and bias.
    fn norm(&mut self, p: &str, c: u64) {
        self.push(format!("{p}.weight"), &[c]);
        self.push(format!("{p}.bias"), &[c]);
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: SDXL (ldm single-file names)

/// The tiny SDXL's hyperparameters (those of tests/fixtures/sdxl_pipeline).
mod sdxl {
    pub const CHANNELS: [u64; 3] = [32, 64, 128];
    /// Transformer depth per level (0: no attention).
    pub const DEPTH: [usize; 3] = [0, 1, 2];
    pub const RES_BLOCKS: usize = 2;
    pub const LATENT: u64 = 4;
    pub const CLIP_L: u64 = 64;
    pub const CLIP_G: u64 = 128;
    pub const CLIP_G_PROJ: u64 = 96;
    pub const CLIP_LAYERS: usize = 3;
    pub const VOCAB: u64 = 49408;
    pub const POSITIONS: u64 = 77;
    /// 6 size-conditioning numbers, each embedded in 8 sinusoids.
    pub const TIME_IDS_DIM: u64 = 8;
    pub const VAE_CHANNELS: [u64; 4] = [32, 32, 64, 64];
}

fn unet_resblock(s: &mut Specs, p: &str, cin: u64, cout: u64, temb: u64) {
    s.norm(&format!("{p}.in_layers.0"), cin);
    s.conv2d(&format!("{p}.in_layers.2"), cout, cin, 3);
    s.linear(&format!("{p}.emb_layers.1"), cout, temb, true);
    s.norm(&format!("{p}.out_layers.0"), cout);
    s.conv2d(&format!("{p}.out_layers.3"), cout, cout, 3);
    if cin != cout {
        s.conv2d(&format!("{p}.skip_connection"), cout, cin, 1);
    }
}

fn unet_transformer(s: &mut Specs, p: &str, c: u64, depth: usize, ctx: u64) {
    s.norm(&format!("{p}.norm"), c);
    s.linear(&format!("{p}.proj_in"), c, c, true);
    for d in 0..depth {
        let b = format!("{p}.transformer_blocks.{d}");
        for (attn, kv) in [("attn1", c), ("attn2", ctx)] {
            s.linear(&format!("{b}.{attn}.to_q"), c, c, false);
            s.linear(&format!("{b}.{attn}.to_k"), c, kv, false);
            s.linear(&format!("{b}.{attn}.to_v"), c, kv, false);
            s.linear(&format!("{b}.{attn}.to_out.0"), c, c, true);
        }
        s.linear(&format!("{b}.ff.net.0.proj"), 8 * c, c, true);
        s.linear(&format!("{b}.ff.net.2"), c, 4 * c, true);
        for n in ["norm1", "norm2", "norm3"] {
            s.norm(&format!("{b}.{n}"), c);
        }
    }
    s.linear(&format!("{p}.proj_out"), c, c, true);
}

fn sdxl_unet(s: &mut Specs, p: &str) {
    use sdxl::*;
    let ch0 = CHANNELS[0];
    let temb = 4 * ch0;
    let ctx = CLIP_L + CLIP_G;
    let top = CHANNELS.len() - 1;
    s.linear(&format!("{p}time_embed.0"), temb, ch0, true);
    s.linear(&format!("{p}time_embed.2"), temb, temb, true);
    let adm = CLIP_G_PROJ + 6 * TIME_IDS_DIM;
    s.linear(&format!("{p}label_emb.0.0"), temb, adm, true);
    s.linear(&format!("{p}label_emb.0.2"), temb, temb, true);
    s.conv2d(&format!("{p}input_blocks.0.0"), ch0, LATENT, 3);
    let mut skips = vec![ch0];
    let mut cur = ch0;
    let mut k = 1;
    for (lvl, &c) in CHANNELS.iter().enumerate() {
        for _ in 0..RES_BLOCKS {
            unet_resblock(s, &format!("{p}input_blocks.{k}.0"), cur, c, temb);
            cur = c;
            if DEPTH[lvl] > 0 {
                unet_transformer(s, &format!("{p}input_blocks.{k}.1"), c, DEPTH[lvl], ctx);
            }
            skips.push(c);
            k += 1;
        }
        if lvl != top {
            s.conv2d(&format!("{p}input_blocks.{k}.0.op"), c, c, 3);
            skips.push(c);
            k += 1;
        }
    }
    unet_resblock(s, &format!("{p}middle_block.0"), cur, cur, temb);
    unet_transformer(s, &format!("{p}middle_block.1"), cur, DEPTH[top], ctx);
    unet_resblock(s, &format!("{p}middle_block.2"), cur, cur, temb);
    let mut k = 0;
    for (lvl, &c) in CHANNELS.iter().enumerate().rev() {
        for i in 0..=RES_BLOCKS {
            let skip = skips.pop().unwrap_or(c);
            unet_resblock(s, &format!("{p}output_blocks.{k}.0"), cur + skip, c, temb);
            cur = c;
            let mut sub = 1;
            if DEPTH[lvl] > 0 {
                unet_transformer(s, &format!("{p}output_blocks.{k}.1"), c, DEPTH[lvl], ctx);
                sub = 2;
            }
            if lvl != 0 && i == RES_BLOCKS {
                s.conv2d(&format!("{p}output_blocks.{k}.{sub}.conv"), c, c, 3);
            }
            k += 1;
        }
    }
    s.norm(&format!("{p}out.0"), ch0);
    s.conv2d(&format!("{p}out.2"), LATENT, ch0, 3);
}

fn vae_block(s: &mut Specs, p: &str, cin: u64, cout: u64) {
    s.norm(&format!("{p}.norm1"), cin);
    s.conv2d(&format!("{p}.conv1"), cout, cin, 3);
    s.norm(&format!("{p}.norm2"), cout);
    s.conv2d(&format!("{p}.conv2"), cout, cout, 3);
    if cin != cout {
        s.conv2d(&format!("{p}.nin_shortcut"), cout, cin, 1);
    }
}

fn vae_mid(s: &mut Specs, p: &str, c: u64) {
    vae_block(s, &format!("{p}.block_1"), c, c);
    s.norm(&format!("{p}.attn_1.norm"), c);
    for n in ["q", "k", "v", "proj_out"] {
        s.conv2d(&format!("{p}.attn_1.{n}"), c, c, 1);
    }
    vae_block(s, &format!("{p}.block_2"), c, c);
}

fn sdxl_vae(s: &mut Specs, p: &str) {
    use sdxl::*;
    let ch = VAE_CHANNELS;
    let top = ch.len() - 1;
    s.conv2d(&format!("{p}encoder.conv_in"), ch[0], 3, 3);
    let mut cur = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..RES_BLOCKS {
            vae_block(s, &format!("{p}encoder.down.{i}.block.{j}"), cur, c);
            cur = c;
        }
        if i != top {
            s.conv2d(&format!("{p}encoder.down.{i}.downsample.conv"), c, c, 3);
        }
    }
    vae_mid(s, &format!("{p}encoder.mid"), cur);
    s.norm(&format!("{p}encoder.norm_out"), cur);
    s.conv2d(&format!("{p}encoder.conv_out"), 2 * LATENT, cur, 3);
    s.conv2d(&format!("{p}quant_conv"), 2 * LATENT, 2 * LATENT, 1);
    s.conv2d(&format!("{p}post_quant_conv"), LATENT, LATENT, 1);
    s.conv2d(&format!("{p}decoder.conv_in"), ch[top], LATENT, 3);
    vae_mid(s, &format!("{p}decoder.mid"), ch[top]);
    let mut cur = ch[top];
    for (i, &c) in ch.iter().enumerate().rev() {
        for j in 0..=RES_BLOCKS {
            vae_block(s, &format!("{p}decoder.up.{i}.block.{j}"), cur, c);
            cur = c;
        }
        if i != 0 {
            s.conv2d(&format!("{p}decoder.up.{i}.upsample.conv"), c, c, 3);
        }
    }
    s.norm(&format!("{p}decoder.norm_out"), cur);
    s.conv2d(&format!("{p}decoder.conv_out"), 3, cur, 3);
}

/// CLIP-L in HF transformers names (`text_model.`).
fn clip_l(s: &mut Specs, p: &str) {
    use sdxl::*;
    let (w, t) = (CLIP_L, format!("{p}text_model."));
    s.push(format!("{t}embeddings.token_embedding.weight"), &[VOCAB, w]);
    s.push(
        format!("{t}embeddings.position_embedding.weight"),
        &[POSITIONS, w],
    );
    for i in 0..CLIP_LAYERS {
        hf_encoder_layer(s, &format!("{t}encoder.layers.{i}"), w, 2 * w);
    }
    s.norm(&format!("{t}final_layer_norm"), w);
}

/// One HF CLIP encoder layer (text or vision).
fn hf_encoder_layer(s: &mut Specs, p: &str, w: u64, ffn: u64) {
    s.norm(&format!("{p}.layer_norm1"), w);
    for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        s.linear(&format!("{p}.self_attn.{n}"), w, w, true);
    }
    s.norm(&format!("{p}.layer_norm2"), w);
    s.linear(&format!("{p}.mlp.fc1"), ffn, w, true);
    s.linear(&format!("{p}.mlp.fc2"), w, ffn, true);
}

/// OpenCLIP bigG in open_clip names.
fn clip_g(s: &mut Specs, p: &str) {
    use sdxl::*;
    let w = CLIP_G;
    s.push(format!("{p}token_embedding.weight"), &[VOCAB, w]);
    s.push(format!("{p}positional_embedding"), &[POSITIONS, w]);
    for i in 0..CLIP_LAYERS {
        let b = format!("{p}transformer.resblocks.{i}");
        s.norm(&format!("{b}.ln_1"), w);
        s.push(format!("{b}.attn.in_proj_weight"), &[3 * w, w]);
        s.push(format!("{b}.attn.in_proj_bias"), &[3 * w]);
        s.linear(&format!("{b}.attn.out_proj"), w, w, true);
        s.norm(&format!("{b}.ln_2"), w);
        s.linear(&format!("{b}.mlp.c_fc"), 2 * w, w, true);
        s.linear(&format!("{b}.mlp.c_proj"), w, 2 * w, true);
    }
    s.norm(&format!("{p}ln_final"), w);
    s.push(format!("{p}text_projection"), &[w, CLIP_G_PROJ]);
    s.push(format!("{p}logit_scale"), &[]);
}

/// The SDXL checkpoint's tensors (ldm single-file prefixes).
pub fn sdxl_checkpoint() -> Vec<TensorSpec> {
    let mut s = Specs::default();
    sdxl_unet(&mut s, "model.diffusion_model.");
    sdxl_vae(&mut s, "first_stage_model.");
    clip_l(&mut s, "conditioner.embedders.0.transformer.");
    clip_g(&mut s, "conditioner.embedders.1.model.");
    s.0
}

// ---------------------------------------------------------------------------------------------
// Stage 2: Wan2.1 I2V

/// The tiny Wan's hyperparameters (those of tests/fixtures/wan_pipeline).
mod wan {
    pub const DIM: u64 = 256;
    pub const FFN: u64 = 512;
    pub const BLOCKS: usize = 2;
    pub const FREQ: u64 = 256;
    pub const Z: u64 = 16;
    pub const T5_DIM: u64 = 128;
    pub const T5_FFN: u64 = 256;
    pub const T5_LAYERS: usize = 2;
    pub const T5_HEADS: u64 = 2;
    pub const T5_HEAD_DIM: u64 = 64;
    pub const T5_BUCKETS: u64 = 32;
    pub const T5_VOCAB: u64 = 900;
    pub const CLIP: u64 = 160;
    pub const CLIP_FFN: u64 = 256;
    pub const CLIP_LAYERS: usize = 3;
    pub const CLIP_PATCH: u64 = 14;
    pub const CLIP_IMAGE: u64 = 224;
    pub const VAE_BASE: u64 = 32;
    pub const VAE_MULT: [u64; 4] = [1, 2, 4, 4];
    pub const VAE_RES_BLOCKS: usize = 2;
    pub const VAE_TEMPORAL_DOWN: [bool; 3] = [false, true, true];
}

/// The Wan2.1 I2V DiT in the original names.
pub fn wan_dit() -> Vec<TensorSpec> {
    use wan::*;
    let d = DIM;
    let mut s = Specs::default();
    s.conv3d("patch_embedding", d, 2 * Z + 4, [1, 2, 2]);
    s.linear("text_embedding.0", d, T5_DIM, true);
    s.linear("text_embedding.2", d, d, true);
    s.linear("time_embedding.0", d, FREQ, true);
    s.linear("time_embedding.2", d, d, true);
    s.linear("time_projection.1", 6 * d, d, true);
    s.norm("img_emb.proj.0", CLIP);
    s.linear("img_emb.proj.1", CLIP, CLIP, true);
    s.linear("img_emb.proj.3", d, CLIP, true);
    s.norm("img_emb.proj.4", d);
    for b in 0..BLOCKS {
        let p = format!("blocks.{b}");
        s.push(format!("{p}.modulation"), &[1, 6, d]);
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                s.linear(&format!("{p}.{a}.{l}"), d, d, true);
            }
            s.push(format!("{p}.{a}.norm_q.weight"), &[d]);
            s.push(format!("{p}.{a}.norm_k.weight"), &[d]);
        }
        s.linear(&format!("{p}.cross_attn.k_img"), d, d, true);
        s.linear(&format!("{p}.cross_attn.v_img"), d, d, true);
        s.push(format!("{p}.cross_attn.norm_k_img.weight"), &[d]);
        s.norm(&format!("{p}.norm3"), d);
        s.linear(&format!("{p}.ffn.0"), FFN, d, true);
        s.linear(&format!("{p}.ffn.2"), d, FFN, true);
    }
    s.push("head.modulation", &[1, 2, d]);
    s.linear("head.head", Z * 4, d, true);
    s.0
}

/// umT5 in llama.cpp names (`enc.blk.N.*`), a relative-position bias per layer as umT5 has.
pub fn umt5() -> Vec<TensorSpec> {
    use wan::*;
    let d = T5_DIM;
    let mut s = Specs::default();
    s.push("token_embd.weight", &[T5_VOCAB, d]);
    for i in 0..T5_LAYERS {
        let p = format!("enc.blk.{i}");
        s.push(format!("{p}.attn_norm.weight"), &[d]);
        for n in ["attn_q", "attn_k", "attn_v"] {
            s.push(format!("{p}.{n}.weight"), &[T5_HEADS * T5_HEAD_DIM, d]);
        }
        s.push(format!("{p}.attn_o.weight"), &[d, T5_HEADS * T5_HEAD_DIM]);
        s.push(format!("{p}.attn_rel_b.weight"), &[T5_BUCKETS, T5_HEADS]);
        s.push(format!("{p}.ffn_norm.weight"), &[d]);
        s.push(format!("{p}.ffn_gate.weight"), &[T5_FFN, d]);
        s.push(format!("{p}.ffn_up.weight"), &[T5_FFN, d]);
        s.push(format!("{p}.ffn_down.weight"), &[d, T5_FFN]);
    }
    s.push("enc.output_norm.weight", &[d]);
    s.0
}

/// CLIP vision H in HF names (without the `vision_model.` prefix, as Comfy's file has it).
pub fn clip_vision() -> Vec<TensorSpec> {
    use wan::*;
    let w = CLIP;
    let positions = (CLIP_IMAGE / CLIP_PATCH).pow(2) + 1;
    let mut s = Specs::default();
    s.push("embeddings.class_embedding", &[w]);
    s.push(
        "embeddings.patch_embedding.weight",
        &[w, 3, CLIP_PATCH, CLIP_PATCH],
    );
    s.push("embeddings.position_embedding.weight", &[positions, w]);
    s.norm("pre_layrnorm", w);
    for i in 0..CLIP_LAYERS {
        hf_encoder_layer(&mut s, &format!("encoder.layers.{i}"), w, CLIP_FFN);
    }
    s.norm("post_layernorm", w);
    s.0
}

fn wan_residual(s: &mut Specs, p: &str, cin: u64, cout: u64) {
    s.push(format!("{p}.residual.0.gamma"), &[cin, 1, 1, 1]);
    s.conv3d(&format!("{p}.residual.2"), cout, cin, [3, 3, 3]);
    s.push(format!("{p}.residual.3.gamma"), &[cout, 1, 1, 1]);
    s.conv3d(&format!("{p}.residual.6"), cout, cout, [3, 3, 3]);
    if cin != cout {
        s.conv3d(&format!("{p}.shortcut"), cout, cin, [1, 1, 1]);
    }
}

fn wan_middle(s: &mut Specs, p: &str, c: u64) {
    wan_residual(s, &format!("{p}.middle.0"), c, c);
    s.push(format!("{p}.middle.1.norm.gamma"), &[c, 1, 1]);
    s.conv2d(&format!("{p}.middle.1.to_qkv"), 3 * c, c, 1);
    s.conv2d(&format!("{p}.middle.1.proj"), c, c, 1);
    wan_residual(s, &format!("{p}.middle.2"), c, c);
}

/// The Wan VAE in the original names (`encoder.downsamples.N`, `decoder.upsamples.N`).
pub fn wan_vae() -> Vec<TensorSpec> {
    use wan::*;
    let mut s = Specs::default();
    let top = VAE_MULT.len() - 1;
    // Encoder: dims [1] + mult, a resample after every level but the last.
    let dims: Vec<u64> = std::iter::once(1)
        .chain(VAE_MULT)
        .map(|m| m * VAE_BASE)
        .collect();
    s.conv3d("encoder.conv1", dims[0], 3, [3, 3, 3]);
    let mut n = 0;
    for i in 0..VAE_MULT.len() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        for _ in 0..VAE_RES_BLOCKS {
            wan_residual(&mut s, &format!("encoder.downsamples.{n}"), cin, cout);
            cin = cout;
            n += 1;
        }
        if i != top {
            let p = format!("encoder.downsamples.{n}");
            s.conv2d(&format!("{p}.resample.1"), cout, cout, 3);
            if VAE_TEMPORAL_DOWN[i] {
                s.conv3d(&format!("{p}.time_conv"), cout, cout, [3, 1, 1]);
            }
            n += 1;
        }
    }
    let c = dims[dims.len() - 1];
    wan_middle(&mut s, "encoder", c);
    s.push("encoder.head.0.gamma", &[c, 1, 1, 1]);
    s.conv3d("encoder.head.2", 2 * Z, c, [3, 3, 3]);
    s.conv3d("conv1", 2 * Z, 2 * Z, [1, 1, 1]);
    s.conv3d("conv2", Z, Z, [1, 1, 1]);
    // Decoder: dims [mult[-1]] + reversed mult; levels after the first take half the channels
    // (the upsampling conv halves them); temporal upsampling mirrors the encoder.
    let dims: Vec<u64> = std::iter::once(VAE_MULT[top])
        .chain(VAE_MULT.iter().rev().copied())
        .map(|m| m * VAE_BASE)
        .collect();
    s.conv3d("decoder.conv1", dims[0], Z, [3, 3, 3]);
    wan_middle(&mut s, "decoder", dims[0]);
    let mut n = 0;
    for i in 0..VAE_MULT.len() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        if i > 0 {
            cin /= 2;
        }
        for _ in 0..=VAE_RES_BLOCKS {
            wan_residual(&mut s, &format!("decoder.upsamples.{n}"), cin, cout);
            cin = cout;
            n += 1;
        }
        if i != top {
            let p = format!("decoder.upsamples.{n}");
            s.conv2d(&format!("{p}.resample.1"), cout / 2, cout, 3);
            if VAE_TEMPORAL_DOWN[top - 1 - i] {
                s.conv3d(&format!("{p}.time_conv"), 2 * cout, cout, [3, 1, 1]);
            }
            n += 1;
        }
    }
    let c = dims[dims.len() - 1];
    s.push("decoder.head.0.gamma", &[c, 1, 1, 1]);
    s.conv3d("decoder.head.2", 3, c, [3, 3, 3]);
    s.0
}

// ---------------------------------------------------------------------------------------------
// Values

/// splitmix64 of (seed * golden + i), mapped to [-1, 1), times `scale` plus `offset`: the
/// generator of the fixture recipes (tools/reference/*), usable by tests.
pub fn hash_values(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            u * scale + offset
        })
        .collect()
}

/// (scale, offset) of a tensor's uniform values: norms around 1, biases small, embeddings
/// O(1), weights with variance 1 / fan-in (as the fixtures' recipes).
fn init(name: &str, shape: &[u64]) -> (f32, f32) {
    let leaf = name.rsplit('.').next().unwrap_or(name);
    if leaf == "logit_scale" {
        return (0.0, 100f32.ln());
    }
    if name.ends_with("token_embedding.weight")
        || name.ends_with("token_embd.weight")
        || name.ends_with("class_embedding")
        || name.ends_with("attn_rel_b.weight")
    {
        return (1.0, 0.0);
    }
    if name.ends_with("position_embedding.weight") || name.ends_with("positional_embedding") {
        return (0.5, 0.0);
    }
    if leaf == "modulation" {
        return (0.2, 0.0);
    }
    let vector = shape.iter().filter(|&&d| d > 1).count() <= 1 && !shape.is_empty();
    if leaf == "gamma" || (vector && leaf == "weight") {
        return (0.2, 1.0);
    }
    if vector {
        return (0.1, 0.0);
    }
    let fan_in: u64 = shape[1..].iter().product::<u64>().max(1);
    let mut scale = (3.0 / fan_in as f32).sqrt();
    if name.ends_with("attn_q.weight") {
        // T5 folds 1/sqrt(d_kv) into the query weights.
        scale /= (wan::T5_HEAD_DIM as f32).sqrt();
    }
    (scale, 0.0)
}

fn values(spec: &TensorSpec, seed: u64) -> Vec<f32> {
    let (scale, offset) = init(&spec.name, &spec.shape);
    let n = spec.shape.iter().product::<u64>() as usize;
    hash_values(n, seed, scale, offset)
}

// ---------------------------------------------------------------------------------------------
// Writers

/// Element type of a written safetensors file.
#[derive(Clone, Copy)]
enum StType {
    F32,
    F16,
}

/// Writes a safetensors file (values from the hash, seeds `seed0 + index`).
fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    seed0: u64,
    ty: StType,
) -> Result<(), DemoError> {
    let tag = match ty {
        StType::F32 => "F32",
        StType::F16 => "F16",
    };
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "nijigen.demo": DEMO_VERSION.to_string()}),
    );
    let mut data = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let start = data.len();
        for v in values(spec, seed0 + i as u64) {
            match ty {
                StType::F32 => data.extend_from_slice(&v.to_le_bytes()),
                StType::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            }
        }
        header.insert(
            spec.name.clone(),
            serde_json::json!({"dtype": tag, "shape": spec.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&(text.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.write_all(&data))
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// Writes an F32 GGUF with `metadata` (values from the hash, seeds `seed0 + index`).
fn write_gguf(
    path: &Path,
    specs: &[TensorSpec],
    seed0: u64,
    metadata: &[(String, MetaValue)],
) -> Result<(), DemoError> {
    let decls: Vec<TensorDecl> = specs
        .iter()
        .map(|s| TensorDecl::new(s.name.clone(), GgmlType::F32, s.shape.clone()))
        .collect();
    let f = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = GgufWriter::new(path, std::io::BufWriter::new(f), metadata, &decls)?;
    for (i, spec) in specs.iter().enumerate() {
        let v = values(spec, seed0 + i as u64);
        w.write_tensor(&spec.name, bytemuck::cast_slice(&v))?;
    }
    let out = w.finish()?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn meta(key: &str, v: MetaValue) -> (String, MetaValue) {
    (key.to_string(), v)
}

/// A small SentencePiece Unigram vocabulary (T5 order: `<pad>`, `</s>`, `<unk>`), as
/// `tokenizer.ggml.*` metadata: common English words, single characters, and filler pieces up
/// to the embedding's row count.
fn umt5_tokenizer() -> Vec<(String, MetaValue)> {
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
    while pieces.len() < wan::T5_VOCAB as usize {
        pieces.push((format!("\u{2581}demo{n}"), -12.0, 1));
        n += 1;
    }
    pieces.truncate(wan::T5_VOCAB as usize);
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

fn umt5_metadata() -> Vec<(String, MetaValue)> {
    use wan::*;
    let mut m = vec![
        meta(
            "general.architecture",
            MetaValue::String("t5encoder".into()),
        ),
        meta("general.file_type", MetaValue::U32(0)),
        meta("t5encoder.context_length", MetaValue::U32(512)),
        meta("t5encoder.embedding_length", MetaValue::U32(T5_DIM as u32)),
        meta(
            "t5encoder.feed_forward_length",
            MetaValue::U32(T5_FFN as u32),
        ),
        meta("t5encoder.block_count", MetaValue::U32(T5_LAYERS as u32)),
        meta(
            "t5encoder.attention.head_count",
            MetaValue::U32(T5_HEADS as u32),
        ),
        meta(
            "t5encoder.attention.key_length",
            MetaValue::U32(T5_HEAD_DIM as u32),
        ),
        meta(
            "t5encoder.attention.value_length",
            MetaValue::U32(T5_HEAD_DIM as u32),
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
            MetaValue::U32(T5_BUCKETS as u32),
        ),
    ];
    m.extend(umt5_tokenizer());
    m
}

fn dit_metadata() -> Vec<(String, MetaValue)> {
    vec![
        meta("general.architecture", MetaValue::String("wan".into())),
        meta("general.quantization_version", MetaValue::U32(2)),
        meta("general.file_type", MetaValue::U32(0)),
    ]
}

// ---------------------------------------------------------------------------------------------
// The cache

/// The demo's model files.
#[derive(Clone, Debug)]
pub struct DemoModels {
    pub dir: PathBuf,
    pub sdxl: PathBuf,
    pub dit: PathBuf,
    pub t5: PathBuf,
    pub clip_vision: PathBuf,
    pub vae: PathBuf,
    /// Whether this call wrote them (else they were found up to date).
    pub built: bool,
}

const STAMP: &str = "demo.stamp";

/// A fingerprint of everything written: version, names, shapes. A cache with another stamp is
/// stale.
fn stamp() -> String {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01B3);
        }
    };
    for list in [
        sdxl_checkpoint(),
        wan_dit(),
        umt5(),
        clip_vision(),
        wan_vae(),
    ] {
        for t in list {
            eat(t.name.as_bytes());
            for d in t.shape {
                eat(&d.to_le_bytes());
            }
        }
    }
    format!("nijigen demo v{DEMO_VERSION} {h:016x}\n")
}

/// The default cache folder: `$XDG_CACHE_HOME/nijigen/demo`, else `~/.cache/nijigen/demo`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("nijigen").join("demo"))
}

/// The demo models in `dir`, written if any is missing or the folder's stamp differs (files
/// are written under temporary names and renamed; the stamp goes last).
pub fn ensure(dir: &Path) -> Result<DemoModels, DemoError> {
    let models = DemoModels {
        dir: dir.to_path_buf(),
        sdxl: dir.join("demo_sdxl.safetensors"),
        dit: dir.join("demo_wan_i2v.gguf"),
        t5: dir.join("demo_umt5.gguf"),
        clip_vision: dir.join("demo_clip_vision.safetensors"),
        vae: dir.join("demo_wan_vae.safetensors"),
        built: false,
    };
    let stamp_path = dir.join(STAMP);
    let want = stamp();
    let fresh = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == want)
        && [
            &models.sdxl,
            &models.dit,
            &models.t5,
            &models.clip_vision,
            &models.vae,
        ]
        .iter()
        .all(|p| p.is_file());
    if fresh {
        return Ok(models);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let _ = std::fs::remove_file(&stamp_path);
    let tmp = |p: &Path| p.with_extension(format!("tmp{}", std::process::id()));
    let publish = |t: PathBuf, p: &Path| std::fs::rename(&t, p).map_err(io_err(p));
    let t = tmp(&models.sdxl);
    write_safetensors(&t, &sdxl_checkpoint(), 10_000, StType::F16)?;
    publish(t, &models.sdxl)?;
    let t = tmp(&models.dit);
    write_gguf(&t, &wan_dit(), 20_000, &dit_metadata())?;
    publish(t, &models.dit)?;
    let t = tmp(&models.t5);
    write_gguf(&t, &umt5(), 30_000, &umt5_metadata())?;
    publish(t, &models.t5)?;
    let t = tmp(&models.clip_vision);
    write_safetensors(&t, &clip_vision(), 40_000, StType::F32)?;
    publish(t, &models.clip_vision)?;
    let t = tmp(&models.vae);
    write_safetensors(&t, &wan_vae(), 50_000, StType::F32)?;
    publish(t, &models.vae)?;
    let t = tmp(&stamp_path);
    std::fs::write(&t, &want).map_err(io_err(&t))?;
    publish(t, &stamp_path)?;
    Ok(DemoModels {
        built: true,
        ..models
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shapes_positive() {
        for list in [
            sdxl_checkpoint(),
            wan_dit(),
            umt5(),
            clip_vision(),
            wan_vae(),
        ] {
            let mut names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n);
            assert!(list.iter().all(|t| t.shape.iter().all(|&d| d > 0)));
        }
    }

    #[test]
    fn inits_follow_the_tensor_kind() {
        assert_eq!(init("x.norm1.weight", &[64]), (0.2, 1.0));
        assert_eq!(init("x.norm1.bias", &[64]), (0.1, 0.0));
        assert_eq!(init("x.residual.0.gamma", &[64, 1, 1, 1]), (0.2, 1.0));
        let (s, o) = init("x.conv.weight", &[32, 32, 3, 3]);
        assert!((s - (3.0f32 / 288.0).sqrt()).abs() < 1e-6 && o == 0.0);
    }
}
