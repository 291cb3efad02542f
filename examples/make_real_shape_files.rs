//! Writes weight files at the REAL shapes of the models nijigen runs, for planning only:
//!
//!   cargo run --release --example make_real_shape_files -- DIR
//!
//! - `wan2.1-i2v-14b-480p-Q4_K_M.gguf`: Wan2.1 I2V 14B DiT (original names, city96 layout),
//!   types chosen by our converter's Q4_K_M rules (`quantize::Rules`);
//! - `umt5-xxl-encoder-Q8_0.gguf`: umT5-XXL encoder, llama.cpp T5 names, Q8_0 for the 2-D
//!   weights (as city96's file), F32 norms and relative-position tables;
//! - `clip_vision_h.safetensors`: CLIP vision H/14 (HF names), F16;
//! - `wan_2.1_vae.safetensors`: Wan2.1 VAE (original names), BF16 as ComfyUI ships it;
//! - `wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors`: the same DiT as ComfyUI's float8 files
//!   (matrices F8_E4M3, vectors F32; 16.4 GB apparent size), and
//!   `wan2.1_i2v_480p_14B_4blocks_fp8_e4m3fn.safetensors`, its first 4 blocks (1.8 GB);
//! - `wan2.1_i2v_480p_14B_fp8_scaled.safetensors` and its 4-block cut: as Comfy-Org's scaled
//!   fp8 files (`scaled_fp8` marker; every 2-D Linear weight F8_E4M3 with an F32 scalar
//!   `<layer>.scale_weight`; the rest F16). The scales read as zero: plan and time only;
//! - `Wan2.2-I2V-A14B-{HighNoise,LowNoise}-Q4_K_M.gguf`: Wan2.2 I2V-A14B's two experts as
//!   QuantStack's files (the Wan2.1 I2V DiT without the CLIP image branch, original names,
//!   Q4_K_M rules), and `wan2.2_i2v_{high,low}_noise_14B_fp8_scaled.safetensors` as Comfy-Org's;
//! - `sdxl_checkpoint_f16.safetensors`: an SDXL single-file checkpoint (ldm UNet, CLIP-L HF
//!   names, bigG open_clip names, ldm VAE), F16.
//!
//! The files are SPARSE: headers are written and the data sections are seeked over
//! ([`GgufWriter::skip_tensor`], `File::set_len` for safetensors), so they hold ZEROS, not
//! random weights, and take almost no disk (a few MB) while `nijigen info` and `nijigen plan`
//! read their tensor tables and byte counts. Do not run the models on them. Nothing here is
//! committed but this generator.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nijigen::formats::gguf::{GgufWriter, TensorDecl};
use nijigen::formats::{DType, MetaValue};
use nijigen::ggml::GgmlType;
use nijigen::quantize::{Rules, Target};

type Shapes = Vec<(String, Vec<u64>)>;

fn push(v: &mut Shapes, name: impl Into<String>, shape: &[u64]) {
    v.push((name.into(), shape.to_vec()));
}

/// Wan2.1 I2V 14B DiT: dim 5120, ffn 13824, 40 blocks, in 36, text 4096, CLIP 1280.
fn wan_dit() -> Shapes {
    wan_dit_blocks(40)
}

/// A Wan2.2 I2V-A14B expert: [`wan_dit`] without the CLIP image branch (`img_emb.*`,
/// `k_img`, `v_img`, `norm_k_img`).
fn wan22_expert() -> Shapes {
    wan_dit()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("img_emb.") && !n.contains("_img"))
        .collect()
}

/// [`wan_dit`] with `blocks` blocks.
fn wan_dit_blocks(blocks: u64) -> Shapes {
    let (d, f) = (5120u64, 13824u64);
    let mut t = Shapes::new();
    push(&mut t, "patch_embedding.weight", &[d, 36, 1, 2, 2]);
    push(&mut t, "patch_embedding.bias", &[d]);
    push(&mut t, "text_embedding.0.weight", &[d, 4096]);
    push(&mut t, "text_embedding.0.bias", &[d]);
    push(&mut t, "text_embedding.2.weight", &[d, d]);
    push(&mut t, "text_embedding.2.bias", &[d]);
    push(&mut t, "time_embedding.0.weight", &[d, 256]);
    push(&mut t, "time_embedding.0.bias", &[d]);
    push(&mut t, "time_embedding.2.weight", &[d, d]);
    push(&mut t, "time_embedding.2.bias", &[d]);
    push(&mut t, "time_projection.1.weight", &[6 * d, d]);
    push(&mut t, "time_projection.1.bias", &[6 * d]);
    push(&mut t, "img_emb.proj.0.weight", &[1280]);
    push(&mut t, "img_emb.proj.0.bias", &[1280]);
    push(&mut t, "img_emb.proj.1.weight", &[1280, 1280]);
    push(&mut t, "img_emb.proj.1.bias", &[1280]);
    push(&mut t, "img_emb.proj.3.weight", &[d, 1280]);
    push(&mut t, "img_emb.proj.3.bias", &[d]);
    push(&mut t, "img_emb.proj.4.weight", &[d]);
    push(&mut t, "img_emb.proj.4.bias", &[d]);
    push(&mut t, "head.modulation", &[1, 2, d]);
    push(&mut t, "head.head.weight", &[64, d]);
    push(&mut t, "head.head.bias", &[64]);
    for b in 0..blocks {
        let p = format!("blocks.{b}.");
        push(&mut t, format!("{p}modulation"), &[1, 6, d]);
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                push(&mut t, format!("{p}{a}.{l}.weight"), &[d, d]);
                push(&mut t, format!("{p}{a}.{l}.bias"), &[d]);
            }
            push(&mut t, format!("{p}{a}.norm_q.weight"), &[d]);
            push(&mut t, format!("{p}{a}.norm_k.weight"), &[d]);
        }
        for l in ["k_img", "v_img"] {
            push(&mut t, format!("{p}cross_attn.{l}.weight"), &[d, d]);
            push(&mut t, format!("{p}cross_attn.{l}.bias"), &[d]);
        }
        push(&mut t, format!("{p}cross_attn.norm_k_img.weight"), &[d]);
        push(&mut t, format!("{p}norm3.weight"), &[d]);
        push(&mut t, format!("{p}norm3.bias"), &[d]);
        push(&mut t, format!("{p}ffn.0.weight"), &[f, d]);
        push(&mut t, format!("{p}ffn.0.bias"), &[f]);
        push(&mut t, format!("{p}ffn.2.weight"), &[d, f]);
        push(&mut t, format!("{p}ffn.2.bias"), &[d]);
    }
    t
}

/// umT5-XXL encoder, llama.cpp names: vocab 256384, d 4096, 24 layers, 64 heads x 64, FFN 10240
/// gated, 32 relative buckets per layer.
fn umt5() -> Vec<(String, Vec<u64>, GgmlType)> {
    let (d, f, inner) = (4096u64, 10240u64, 4096u64);
    let q = GgmlType::Q8_0;
    let mut t = vec![("token_embd.weight".to_string(), vec![256384, d], q)];
    for l in 0..24 {
        let p = format!("enc.blk.{l}.");
        for n in ["attn_q", "attn_k", "attn_v"] {
            t.push((format!("{p}{n}.weight"), vec![inner, d], q));
        }
        t.push((format!("{p}attn_o.weight"), vec![d, inner], q));
        t.push((format!("{p}attn_rel_b.weight"), vec![32, 64], GgmlType::F32));
        t.push((format!("{p}attn_norm.weight"), vec![d], GgmlType::F32));
        t.push((format!("{p}ffn_gate.weight"), vec![f, d], q));
        t.push((format!("{p}ffn_up.weight"), vec![f, d], q));
        t.push((format!("{p}ffn_down.weight"), vec![d, f], q));
        t.push((format!("{p}ffn_norm.weight"), vec![d], GgmlType::F32));
    }
    t.push(("enc.output_norm.weight".into(), vec![d], GgmlType::F32));
    t
}

/// CLIP vision H/14 (HF `CLIPVisionModelWithProjection`): width 1280, 32 layers, ffn 5120.
fn clip_vision_h() -> Shapes {
    let (d, f) = (1280u64, 5120u64);
    let mut t = Shapes::new();
    let p = "vision_model.";
    push(&mut t, format!("{p}embeddings.class_embedding"), &[d]);
    push(
        &mut t,
        format!("{p}embeddings.patch_embedding.weight"),
        &[d, 3, 14, 14],
    );
    push(
        &mut t,
        format!("{p}embeddings.position_embedding.weight"),
        &[257, d],
    );
    push(&mut t, format!("{p}pre_layrnorm.weight"), &[d]);
    push(&mut t, format!("{p}pre_layrnorm.bias"), &[d]);
    for l in 0..32 {
        let q = format!("{p}encoder.layers.{l}.");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            push(&mut t, format!("{q}self_attn.{n}.weight"), &[d, d]);
            push(&mut t, format!("{q}self_attn.{n}.bias"), &[d]);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            push(&mut t, format!("{q}{n}.weight"), &[d]);
            push(&mut t, format!("{q}{n}.bias"), &[d]);
        }
        push(&mut t, format!("{q}mlp.fc1.weight"), &[f, d]);
        push(&mut t, format!("{q}mlp.fc1.bias"), &[f]);
        push(&mut t, format!("{q}mlp.fc2.weight"), &[d, f]);
        push(&mut t, format!("{q}mlp.fc2.bias"), &[d]);
    }
    push(&mut t, format!("{p}post_layernorm.weight"), &[d]);
    push(&mut t, format!("{p}post_layernorm.bias"), &[d]);
    push(&mut t, "visual_projection.weight", &[1024, d]);
    t
}

/// Wan's residual block (`residual.{0,2,3,6}`, `shortcut`), causal 3-D convs.
fn wan_res(t: &mut Shapes, p: &str, i: u64, o: u64) {
    push(t, format!("{p}residual.0.gamma"), &[i, 1, 1, 1]);
    push(t, format!("{p}residual.2.weight"), &[o, i, 3, 3, 3]);
    push(t, format!("{p}residual.2.bias"), &[o]);
    push(t, format!("{p}residual.3.gamma"), &[o, 1, 1, 1]);
    push(t, format!("{p}residual.6.weight"), &[o, o, 3, 3, 3]);
    push(t, format!("{p}residual.6.bias"), &[o]);
    if i != o {
        push(t, format!("{p}shortcut.weight"), &[o, i, 1, 1, 1]);
        push(t, format!("{p}shortcut.bias"), &[o]);
    }
}

fn wan_attn(t: &mut Shapes, p: &str, c: u64) {
    push(t, format!("{p}norm.gamma"), &[c, 1, 1]);
    push(t, format!("{p}to_qkv.weight"), &[3 * c, c, 1, 1]);
    push(t, format!("{p}to_qkv.bias"), &[3 * c]);
    push(t, format!("{p}proj.weight"), &[c, c, 1, 1]);
    push(t, format!("{p}proj.bias"), &[c]);
}

/// Wan2.1 VAE (Wan's vae.py): base 96, z 16, dim_mult [1,2,4,4], 2 res blocks, temporal down
/// in the last two levels, temporal up in the first two.
fn wan_vae() -> Shapes {
    let mut t = Shapes::new();
    let dims = [96u64, 96, 192, 384, 384];
    let tdown = [false, true, true];
    push(&mut t, "encoder.conv1.weight", &[96, 3, 3, 3, 3]);
    push(&mut t, "encoder.conv1.bias", &[96]);
    let mut n = 0;
    for i in 0..4 {
        let (mut a, b) = (dims[i], dims[i + 1]);
        for _ in 0..2 {
            wan_res(&mut t, &format!("encoder.downsamples.{n}."), a, b);
            a = b;
            n += 1;
        }
        if i != 3 {
            let p = format!("encoder.downsamples.{n}.");
            push(&mut t, format!("{p}resample.1.weight"), &[b, b, 3, 3]);
            push(&mut t, format!("{p}resample.1.bias"), &[b]);
            if tdown[i] {
                push(&mut t, format!("{p}time_conv.weight"), &[b, b, 3, 1, 1]);
                push(&mut t, format!("{p}time_conv.bias"), &[b]);
            }
            n += 1;
        }
    }
    for side in ["encoder", "decoder"] {
        wan_res(&mut t, &format!("{side}.middle.0."), 384, 384);
        wan_attn(&mut t, &format!("{side}.middle.1."), 384);
        wan_res(&mut t, &format!("{side}.middle.2."), 384, 384);
    }
    push(&mut t, "encoder.head.0.gamma", &[384, 1, 1, 1]);
    push(&mut t, "encoder.head.2.weight", &[32, 384, 3, 3, 3]);
    push(&mut t, "encoder.head.2.bias", &[32]);
    push(&mut t, "conv1.weight", &[32, 32, 1, 1, 1]);
    push(&mut t, "conv1.bias", &[32]);
    push(&mut t, "conv2.weight", &[16, 16, 1, 1, 1]);
    push(&mut t, "conv2.bias", &[16]);
    push(&mut t, "decoder.conv1.weight", &[384, 16, 3, 3, 3]);
    push(&mut t, "decoder.conv1.bias", &[384]);
    let up = [384u64, 384, 384, 192, 96];
    let tup = [true, true, false];
    let mut n = 0;
    for i in 0..4 {
        let (mut a, b) = (up[i], up[i + 1]);
        if i > 0 {
            a /= 2;
        }
        for _ in 0..3 {
            wan_res(&mut t, &format!("decoder.upsamples.{n}."), a, b);
            a = b;
            n += 1;
        }
        if i != 3 {
            let p = format!("decoder.upsamples.{n}.");
            push(&mut t, format!("{p}resample.1.weight"), &[b / 2, b, 3, 3]);
            push(&mut t, format!("{p}resample.1.bias"), &[b / 2]);
            if tup[i] {
                push(&mut t, format!("{p}time_conv.weight"), &[2 * b, b, 3, 1, 1]);
                push(&mut t, format!("{p}time_conv.bias"), &[2 * b]);
            }
            n += 1;
        }
    }
    push(&mut t, "decoder.head.0.gamma", &[96, 1, 1, 1]);
    push(&mut t, "decoder.head.2.weight", &[3, 96, 3, 3, 3]);
    push(&mut t, "decoder.head.2.bias", &[3]);
    t
}

/// ldm ResBlock (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`).
fn ldm_res(t: &mut Shapes, p: &str, i: u64, o: u64, emb: u64) {
    push(t, format!("{p}in_layers.0.weight"), &[i]);
    push(t, format!("{p}in_layers.0.bias"), &[i]);
    push(t, format!("{p}in_layers.2.weight"), &[o, i, 3, 3]);
    push(t, format!("{p}in_layers.2.bias"), &[o]);
    push(t, format!("{p}emb_layers.1.weight"), &[o, emb]);
    push(t, format!("{p}emb_layers.1.bias"), &[o]);
    push(t, format!("{p}out_layers.0.weight"), &[o]);
    push(t, format!("{p}out_layers.0.bias"), &[o]);
    push(t, format!("{p}out_layers.3.weight"), &[o, o, 3, 3]);
    push(t, format!("{p}out_layers.3.bias"), &[o]);
    if i != o {
        push(t, format!("{p}skip_connection.weight"), &[o, i, 1, 1]);
        push(t, format!("{p}skip_connection.bias"), &[o]);
    }
}

/// ldm SpatialTransformer with `depth` blocks, linear proj_in/out, context 2048.
fn ldm_transformer(t: &mut Shapes, p: &str, c: u64, depth: usize) {
    push(t, format!("{p}norm.weight"), &[c]);
    push(t, format!("{p}norm.bias"), &[c]);
    push(t, format!("{p}proj_in.weight"), &[c, c]);
    push(t, format!("{p}proj_in.bias"), &[c]);
    for b in 0..depth {
        let q = format!("{p}transformer_blocks.{b}.");
        for (a, kv) in [("attn1", c), ("attn2", 2048)] {
            push(t, format!("{q}{a}.to_q.weight"), &[c, c]);
            push(t, format!("{q}{a}.to_k.weight"), &[c, kv]);
            push(t, format!("{q}{a}.to_v.weight"), &[c, kv]);
            push(t, format!("{q}{a}.to_out.0.weight"), &[c, c]);
            push(t, format!("{q}{a}.to_out.0.bias"), &[c]);
        }
        push(t, format!("{q}ff.net.0.proj.weight"), &[8 * c, c]);
        push(t, format!("{q}ff.net.0.proj.bias"), &[8 * c]);
        push(t, format!("{q}ff.net.2.weight"), &[c, 4 * c]);
        push(t, format!("{q}ff.net.2.bias"), &[c]);
        for n in ["norm1", "norm2", "norm3"] {
            push(t, format!("{q}{n}.weight"), &[c]);
            push(t, format!("{q}{n}.bias"), &[c]);
        }
    }
    push(t, format!("{p}proj_out.weight"), &[c, c]);
    push(t, format!("{p}proj_out.bias"), &[c]);
}

/// SDXL UNet, ldm names: channels 320, mult [1,2,4], depth [0,2,10], adm 2816.
fn sdxl_unet(t: &mut Shapes) {
    let p = "model.diffusion_model.";
    let emb = 1280u64;
    push(t, format!("{p}time_embed.0.weight"), &[emb, 320]);
    push(t, format!("{p}time_embed.0.bias"), &[emb]);
    push(t, format!("{p}time_embed.2.weight"), &[emb, emb]);
    push(t, format!("{p}time_embed.2.bias"), &[emb]);
    push(t, format!("{p}label_emb.0.0.weight"), &[emb, 2816]);
    push(t, format!("{p}label_emb.0.0.bias"), &[emb]);
    push(t, format!("{p}label_emb.0.2.weight"), &[emb, emb]);
    push(t, format!("{p}label_emb.0.2.bias"), &[emb]);
    push(t, format!("{p}input_blocks.0.0.weight"), &[320, 4, 3, 3]);
    push(t, format!("{p}input_blocks.0.0.bias"), &[320]);
    let ch = [320u64, 640, 1280];
    let depth = [0usize, 2, 10];
    let mut n = 1;
    let mut skips = vec![320u64];
    let mut cur = 320;
    for l in 0..3 {
        for _ in 0..2 {
            let q = format!("{p}input_blocks.{n}.");
            ldm_res(t, &format!("{q}0."), cur, ch[l], emb);
            cur = ch[l];
            if depth[l] > 0 {
                ldm_transformer(t, &format!("{q}1."), cur, depth[l]);
            }
            skips.push(cur);
            n += 1;
        }
        if l != 2 {
            push(
                t,
                format!("{p}input_blocks.{n}.0.op.weight"),
                &[cur, cur, 3, 3],
            );
            push(t, format!("{p}input_blocks.{n}.0.op.bias"), &[cur]);
            skips.push(cur);
            n += 1;
        }
    }
    ldm_res(t, &format!("{p}middle_block.0."), 1280, 1280, emb);
    ldm_transformer(t, &format!("{p}middle_block.1."), 1280, 10);
    ldm_res(t, &format!("{p}middle_block.2."), 1280, 1280, emb);
    let mut n = 0;
    for l in (0..3).rev() {
        for i in 0..3 {
            let q = format!("{p}output_blocks.{n}.");
            let skip = skips.pop().unwrap_or(320);
            ldm_res(t, &format!("{q}0."), cur + skip, ch[l], emb);
            cur = ch[l];
            let mut k = 1;
            if depth[l] > 0 {
                ldm_transformer(t, &format!("{q}1."), cur, depth[l]);
                k = 2;
            }
            if l != 0 && i == 2 {
                push(t, format!("{q}{k}.conv.weight"), &[cur, cur, 3, 3]);
                push(t, format!("{q}{k}.conv.bias"), &[cur]);
            }
            n += 1;
        }
    }
    push(t, format!("{p}out.0.weight"), &[320]);
    push(t, format!("{p}out.0.bias"), &[320]);
    push(t, format!("{p}out.2.weight"), &[4, 320, 3, 3]);
    push(t, format!("{p}out.2.bias"), &[4]);
}

/// CLIP-L text (HF names) under the checkpoint prefix.
fn sdxl_clip_l(t: &mut Shapes) {
    let p = "conditioner.embedders.0.transformer.text_model.";
    let d = 768u64;
    push(
        t,
        format!("{p}embeddings.token_embedding.weight"),
        &[49408, d],
    );
    push(
        t,
        format!("{p}embeddings.position_embedding.weight"),
        &[77, d],
    );
    for l in 0..12 {
        let q = format!("{p}encoder.layers.{l}.");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            push(t, format!("{q}self_attn.{n}.weight"), &[d, d]);
            push(t, format!("{q}self_attn.{n}.bias"), &[d]);
        }
        for n in ["layer_norm1", "layer_norm2"] {
            push(t, format!("{q}{n}.weight"), &[d]);
            push(t, format!("{q}{n}.bias"), &[d]);
        }
        push(t, format!("{q}mlp.fc1.weight"), &[4 * d, d]);
        push(t, format!("{q}mlp.fc1.bias"), &[4 * d]);
        push(t, format!("{q}mlp.fc2.weight"), &[d, 4 * d]);
        push(t, format!("{q}mlp.fc2.bias"), &[d]);
    }
    push(t, format!("{p}final_layer_norm.weight"), &[d]);
    push(t, format!("{p}final_layer_norm.bias"), &[d]);
}

/// OpenCLIP bigG text (open_clip names) under the checkpoint prefix.
fn sdxl_clip_g(t: &mut Shapes) {
    let p = "conditioner.embedders.1.model.";
    let d = 1280u64;
    push(t, format!("{p}token_embedding.weight"), &[49408, d]);
    push(t, format!("{p}positional_embedding"), &[77, d]);
    for l in 0..32 {
        let q = format!("{p}transformer.resblocks.{l}.");
        push(t, format!("{q}attn.in_proj_weight"), &[3 * d, d]);
        push(t, format!("{q}attn.in_proj_bias"), &[3 * d]);
        push(t, format!("{q}attn.out_proj.weight"), &[d, d]);
        push(t, format!("{q}attn.out_proj.bias"), &[d]);
        for n in ["ln_1", "ln_2"] {
            push(t, format!("{q}{n}.weight"), &[d]);
            push(t, format!("{q}{n}.bias"), &[d]);
        }
        push(t, format!("{q}mlp.c_fc.weight"), &[4 * d, d]);
        push(t, format!("{q}mlp.c_fc.bias"), &[4 * d]);
        push(t, format!("{q}mlp.c_proj.weight"), &[d, 4 * d]);
        push(t, format!("{q}mlp.c_proj.bias"), &[d]);
    }
    push(t, format!("{p}ln_final.weight"), &[d]);
    push(t, format!("{p}ln_final.bias"), &[d]);
    push(t, format!("{p}text_projection"), &[d, d]);
}

fn ldm_vae_res(t: &mut Shapes, p: &str, i: u64, o: u64) {
    push(t, format!("{p}norm1.weight"), &[i]);
    push(t, format!("{p}norm1.bias"), &[i]);
    push(t, format!("{p}conv1.weight"), &[o, i, 3, 3]);
    push(t, format!("{p}conv1.bias"), &[o]);
    push(t, format!("{p}norm2.weight"), &[o]);
    push(t, format!("{p}norm2.bias"), &[o]);
    push(t, format!("{p}conv2.weight"), &[o, o, 3, 3]);
    push(t, format!("{p}conv2.bias"), &[o]);
    if i != o {
        push(t, format!("{p}nin_shortcut.weight"), &[o, i, 1, 1]);
        push(t, format!("{p}nin_shortcut.bias"), &[o]);
    }
}

fn ldm_vae_mid(t: &mut Shapes, p: &str) {
    ldm_vae_res(t, &format!("{p}mid.block_1."), 512, 512);
    let a = format!("{p}mid.attn_1.");
    push(t, format!("{a}norm.weight"), &[512]);
    push(t, format!("{a}norm.bias"), &[512]);
    for n in ["q", "k", "v", "proj_out"] {
        push(t, format!("{a}{n}.weight"), &[512, 512, 1, 1]);
        push(t, format!("{a}{n}.bias"), &[512]);
    }
    ldm_vae_res(t, &format!("{p}mid.block_2."), 512, 512);
}

/// SDXL VAE, ldm names: ch 128, mult [1,2,4,4], 2 res blocks, z 4.
fn sdxl_vae(t: &mut Shapes) {
    let p = "first_stage_model.";
    let ch = [128u64, 256, 512, 512];
    push(t, format!("{p}encoder.conv_in.weight"), &[128, 3, 3, 3]);
    push(t, format!("{p}encoder.conv_in.bias"), &[128]);
    let mut cur = 128;
    for (l, &c) in ch.iter().enumerate() {
        for b in 0..2 {
            ldm_vae_res(t, &format!("{p}encoder.down.{l}.block.{b}."), cur, c);
            cur = c;
        }
        if l != 3 {
            push(
                t,
                format!("{p}encoder.down.{l}.downsample.conv.weight"),
                &[c, c, 3, 3],
            );
            push(t, format!("{p}encoder.down.{l}.downsample.conv.bias"), &[c]);
        }
    }
    ldm_vae_mid(t, &format!("{p}encoder."));
    push(t, format!("{p}encoder.norm_out.weight"), &[512]);
    push(t, format!("{p}encoder.norm_out.bias"), &[512]);
    push(t, format!("{p}encoder.conv_out.weight"), &[8, 512, 3, 3]);
    push(t, format!("{p}encoder.conv_out.bias"), &[8]);
    push(t, format!("{p}quant_conv.weight"), &[8, 8, 1, 1]);
    push(t, format!("{p}quant_conv.bias"), &[8]);
    push(t, format!("{p}post_quant_conv.weight"), &[4, 4, 1, 1]);
    push(t, format!("{p}post_quant_conv.bias"), &[4]);
    push(t, format!("{p}decoder.conv_in.weight"), &[512, 4, 3, 3]);
    push(t, format!("{p}decoder.conv_in.bias"), &[512]);
    ldm_vae_mid(t, &format!("{p}decoder."));
    let mut cur = 512;
    for l in (0..4).rev() {
        let c = ch[l];
        for b in 0..3 {
            ldm_vae_res(t, &format!("{p}decoder.up.{l}.block.{b}."), cur, c);
            cur = c;
        }
        if l != 0 {
            push(
                t,
                format!("{p}decoder.up.{l}.upsample.conv.weight"),
                &[c, c, 3, 3],
            );
            push(t, format!("{p}decoder.up.{l}.upsample.conv.bias"), &[c]);
        }
    }
    push(t, format!("{p}decoder.norm_out.weight"), &[128]);
    push(t, format!("{p}decoder.norm_out.bias"), &[128]);
    push(t, format!("{p}decoder.conv_out.weight"), &[3, 128, 3, 3]);
    push(t, format!("{p}decoder.conv_out.bias"), &[3]);
}

fn gguf(
    path: &Path,
    meta: &[(String, MetaValue)],
    tensors: &[(String, Vec<u64>, GgmlType)],
) -> anyhow::Result<()> {
    let decls: Vec<TensorDecl> = tensors
        .iter()
        .map(|(n, s, ty)| TensorDecl::new(n.clone(), *ty, s.clone()))
        .collect();
    let mut w = GgufWriter::new(path, BufWriter::new(File::create(path)?), meta, &decls)?;
    for (n, _, _) in tensors {
        w.skip_tensor(n)?;
    }
    w.finish()?.flush()?;
    Ok(())
}

/// A safetensors header with every tensor of `dtype` ("F16", "BF16", "F32"), data left as a hole.
fn safetensors(path: &Path, tensors: &Shapes, dtype: &str) -> anyhow::Result<()> {
    safetensors_typed(path, tensors, |_, _| dtype)
}

/// The float8_e4m3fn layout of ComfyUI's `*_fp8_e4m3fn.safetensors` DiTs: the matrices (and
/// convolution kernels) in F8_E4M3, vectors and modulations in F32.
fn fp8_type(name: &str, shape: &[u64]) -> &'static str {
    if shape.len() >= 2 && !name.ends_with("modulation") {
        "F8_E4M3"
    } else {
        "F32"
    }
}

/// `dit` as Comfy-Org's `*_fp8_scaled.safetensors`: each 2-D Linear weight in F8_E4M3 with an
/// F32 scalar `<layer>.scale_weight`, the `scaled_fp8` marker, everything else F16.
fn fp8_scaled(dit: &Shapes) -> (Shapes, impl Fn(&str, &[u64]) -> &'static str) {
    let mut t = Shapes::new();
    for (n, s) in dit {
        t.push((n.clone(), s.clone()));
        if s.len() == 2 && n.ends_with(".weight") {
            let layer = n.strip_suffix(".weight").unwrap_or(n);
            t.push((format!("{layer}.scale_weight"), vec![]));
        }
    }
    t.push(("scaled_fp8".into(), vec![0]));
    let ty = |n: &str, s: &[u64]| {
        if n == "scaled_fp8" || (s.len() == 2 && n.ends_with(".weight")) {
            "F8_E4M3"
        } else if n.ends_with(".scale_weight") {
            "F32"
        } else {
            "F16"
        }
    };
    (t, ty)
}

/// A safetensors header with each tensor of the type `dtype` gives it ("F8_E4M3", "F16",
/// "BF16", "F32"), data left as a hole.
fn safetensors_typed<'a>(
    path: &Path,
    tensors: &Shapes,
    dtype: impl Fn(&str, &[u64]) -> &'a str,
) -> anyhow::Result<()> {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for (n, s) in tensors {
        let dtype = dtype(n, s);
        let size = match dtype {
            "F32" => 4,
            "F8_E4M3" => 1,
            _ => 2,
        };
        let bytes = s.iter().product::<u64>() * size;
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": dtype, "shape": s, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = File::create(path)?;
    f.write_all(&(h.len() as u64).to_le_bytes())?;
    f.write_all(&h)?;
    f.set_len(8 + h.len() as u64 + off)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "real_shapes".into()),
    );
    std::fs::create_dir_all(&dir)?;

    let rules = Rules::new(Target::parse("q4_k_m").map_err(anyhow::Error::msg)?, vec![]);
    let quantized = |t: Shapes| -> Vec<(String, Vec<u64>, GgmlType)> {
        t.into_iter()
            .map(|(n, s)| {
                let ty = rules.choose(&n, &s, DType::Ggml(GgmlType::F16)).ty;
                (n, s, ty)
            })
            .collect()
    };
    let dit = quantized(wan_dit());
    let arch = |a: &str| {
        vec![(
            "general.architecture".to_string(),
            MetaValue::String(a.into()),
        )]
    };
    gguf(
        &dir.join("wan2.1-i2v-14b-480p-Q4_K_M.gguf"),
        &arch("wan"),
        &dit,
    )?;
    gguf(
        &dir.join("umt5-xxl-encoder-Q8_0.gguf"),
        &arch("t5encoder"),
        &umt5(),
    )?;
    safetensors(
        &dir.join("clip_vision_h.safetensors"),
        &clip_vision_h(),
        "F16",
    )?;
    safetensors(&dir.join("wan_2.1_vae.safetensors"), &wan_vae(), "BF16")?;
    // Wan2.2 I2V-A14B: two experts of the same shapes, without the CLIP image branch.
    for which in ["High", "Low"] {
        gguf(
            &dir.join(format!("Wan2.2-I2V-A14B-{which}Noise-Q4_K_M.gguf")),
            &arch("wan"),
            &quantized(wan22_expert()),
        )?;
        let (t, ty) = fp8_scaled(&wan22_expert());
        let name = format!(
            "wan2.2_i2v_{}_noise_14B_fp8_scaled.safetensors",
            which.to_lowercase()
        );
        safetensors_typed(&dir.join(name), &t, ty)?;
    }
    // The same DiT as ComfyUI ships it in float8 (16.4 GB, a hole on disk), and a 4-block cut
    // of it (1.8 GB) for what a full f8 load would need to stay within a small machine's RAM.
    safetensors_typed(
        &dir.join("wan2.1_i2v_480p_14B_fp8_e4m3fn.safetensors"),
        &wan_dit(),
        fp8_type,
    )?;
    safetensors_typed(
        &dir.join("wan2.1_i2v_480p_14B_4blocks_fp8_e4m3fn.safetensors"),
        &wan_dit_blocks(4),
        fp8_type,
    )?;
    for (name, blocks) in [
        ("wan2.1_i2v_480p_14B_fp8_scaled.safetensors", 40),
        ("wan2.1_i2v_480p_14B_4blocks_fp8_scaled.safetensors", 4),
    ] {
        let (t, ty) = fp8_scaled(&wan_dit_blocks(blocks));
        safetensors_typed(&dir.join(name), &t, ty)?;
    }
    let mut sdxl = Shapes::new();
    sdxl_unet(&mut sdxl);
    sdxl_clip_l(&mut sdxl);
    sdxl_clip_g(&mut sdxl);
    sdxl_vae(&mut sdxl);
    safetensors(&dir.join("sdxl_checkpoint_f16.safetensors"), &sdxl, "F16")?;
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        println!("{} ({} bytes)", e.path().display(), e.metadata()?.len());
    }
    Ok(())
}
