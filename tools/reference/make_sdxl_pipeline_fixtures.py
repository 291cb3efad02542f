#!/usr/bin/env python3
"""End-to-end reference of SDXL stage 1 (diffusers StableDiffusionXLPipeline) on a tiny
SDXL-shaped checkpoint in the ldm single-file layout, for tests/sdxl_pipeline.rs.

The checkpoint is not stored. Its tensors carry the names a CivitAI SDXL checkpoint has:

    model.diffusion_model.*                          ldm UNet (openaimodel.UNetModel)
    first_stage_model.*                              ldm VAE (1x1-conv attention q/k/v)
    conditioner.embedders.0.transformer.text_model.* CLIP-L, transformers names
    conditioner.embedders.1.model.*                  bigG, open_clip names (fused in_proj,
                                                     text_projection [width, proj] = the
                                                     transpose of HF's Linear weight,
                                                     logit_scale)

and each one is generated from the counter-based hash the other scripts use, which
tests/common/mod.rs (`hash_values`, `recipe_tensors`) reproduces bit for bit:

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

The recipe (ldm name, shape, seed, scale, offset) goes to index.json "tensors": the Rust test
only has to regenerate those tensors and write one .safetensors file. The diffusers models get
their weights from the ldm state dict through diffusers' OWN single-file converters
(convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
convert_open_clip_checkpoint), loaded with strict=True; the script also checks, tensor by
tensor, that the diffusers -> ldm name map written here agrees with those converters (values
equal after the q/k/v split, the text_projection transpose and the attention reshapes).

Tiny model (widths are multiples of the real head size 64, so configs infer as for SDXL):
  CLIP-L  width 64 (1 head), 3 layers, ffn 128, quick_gelu, vocab 49408, 77 positions
  bigG    width 128 (2 heads), 3 layers, ffn 256, gelu, projection 96
  UNet    channels 32/64/128, 2 res blocks, transformer depth (0, 1, 2) and 2 in the middle,
          context 64 + 128 = 192, label_emb input 96 + 6 x 8 = 144, 32 groups
  VAE     channels 32/32/64/64 (8x, as SDXL), 2 res blocks, 32 groups, scaling 0.13025
The tokenizer is the real CLIP BPE (bpe_simple_vocab_16e6.txt.gz); tokenizer_2 pads with "!"
(id 0), as SDXL's and ComfyUI's SDXLClipG do.

Settings chosen where diffusers and ComfyUI agree (see "settings" in index.json):
  txt2img  128 x 96 (W x H; latent 16 x 12), 4 steps, euler, cfg 5, seed 42, non-empty
           negative prompt (diffusers zeroes an empty one: force_zeros_for_empty_prompt),
           size conditioning original = target = image size, crop 0 0.
           diffusers EulerDiscreteScheduler(timestep_spacing="trailing") gives timesteps
           999, 749, 499, 249 = ComfyUI's "simple" scheduler.
  noise    ComfyUI draws torch.randn([1, 4, h/8, w/8], generator=torch.manual_seed(seed)) on
           the CPU and, for a full denoise, scales it by sqrt(1 + sigma_max^2); diffusers'
           euler with trailing spacing has init_noise_sigma = sigma_max and multiplies the
           latents it is given by it. So the pipeline is given
               latents = randn * sqrt(1 + sigma_max^2) / init_noise_sigma
           (diffusers on its own would start from randn * sigma_max: 0.23% less noise).
           The latent the pipeline starts from is within x_T_comfy_rel_diff (an ulp) of
           ComfyUI's randn * sqrt(1 + sigma_max^2).
  img2img  64 x 32, StableDiffusionXLImg2ImgPipeline, 8 steps, strength 0.5 -> timesteps 499,
           374, 249, 124 = ComfyUI KSampler steps 4, denoise 0.5 (ComfyUI computes 4 / 0.5 = 8
           "simple" steps and runs the last 4). The init image is given to the pipeline as a
           latent, vae.encode(image).latent_dist.mean * 0.13025, so that diffusers uses the
           mean as ComfyUI does (given an image it would sample the latent distribution). The
           noise is randn from torch.Generator().manual_seed(42) (= ComfyUI's), added as
           latent + noise * sigma(499) by both.

Differences between diffusers and ComfyUI that these settings do NOT remove (small):
  * uint8: diffusers rounds (numpy_to_pil: (x * 255).round()), ComfyUI's SaveImage truncates
    (np.clip(255 * x, 0, 255).astype(uint8)): 16751 of the 36864 t2i values differ by 1.
    image_u8 is diffusers' (round); ComfyUI's is trunc(255 * image) from the same float image.
  * sigmas: diffusers computes alphas_cumprod from float32 betas, ComfyUI from float64 betas
    (~1e-7 relative); ComfyUI feeds the UNet t = sigma_to_t(sigma) (log-sigma interpolation,
    ~999.0), diffusers the integer timestep.
  * cfg: diffusers mixes the noise predictions, ComfyUI the denoised latents (the same
    linear formula, different rounding).

Files (raw little-endian f32, row-major; all listed in index.json with their shapes):
  tokens (in index.json): CLIP-L / bigG ids of the first 77-chunk, positive and negative
  {pos,neg}_clip_l_penultimate.f32 [77, 64]    text_encoder hidden_states[-2]
  {pos,neg}_clip_g_penultimate.f32 [77, 128]   text_encoder_2 hidden_states[-2]
      the UNet context is their concatenation [77, 192] (checked here against the pipeline's)
  {pos,neg}_pooled.f32 [96]                    text_encoder_2 text_embeds
  time_ids (in index.json)                     [orig h, orig w, crop top, left, target h, w]
  t2i_noise.f32 [4, 12, 16]                    the randn draw
  t2i_unet_{uncond,cond}.f32 [4, 12, 16]       the first UNet output (eps) at timestep 999, for
                                               the input x_T / sqrt(sigma_max^2 + 1), which
                                               is the noise to unet_in_minus_noise
  t2i_step{i}.f32 [4, 12, 16]                  the latent after sampler step i (step3 = final)
  t2i_decoded.f32 [3, 96, 128]                 vae.decode(final / 0.13025), NOT clamped
  t2i_image_u8.bin [96, 128, 3]                uint8 as diffusers' numpy_to_pil gives it
      the float image (output_type="np") is clamp(decoded / 2 + 0.5, 0, 1) in f32, HWC,
      checked here bit for bit, so it is not stored; image_u8 = round_half_even(255 * it)
  i2i_init_u8.bin [32, 64, 3]                  the init image (pixels)
  i2i_encoded.f32 [4, 4, 8]                    vae.encode(u8 / 255 * 2 - 1).latent_dist.mean * 0.13025
  i2i_noise.f32 [4, 4, 8]                      the randn draw; the first latent is
                                               encoded + noise * sigma(499)
  i2i_step{i}.f32 [4, 4, 8], i2i_decoded.f32 [3, 32, 64] (uint8 image: as for t2i)

Run (deterministic; rerunning gives identical files):

    pip download --no-deps open_clip_torch   # ships bpe_simple_vocab_16e6.txt.gz
    /work/pyref/bin/python tools/reference/make_sdxl_pipeline_fixtures.py --bpe PATH.gz

(--bpe may be left out when open_clip is importable.) Tested with diffusers 0.42.1,
transformers 5.23.0, torch 2.15.0 (CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "tests" / "fixtures" / "sdxl_pipeline"
sys.path.insert(0, str(HERE))
import make_tokenizer_fixtures as tokfix  # noqa: E402  (vocab.json / merges.txt from the .gz)

MASK = (1 << 64) - 1
BOS, EOS = 49406, 49407
SCALE = 0.13025

UNET_P = "model.diffusion_model."
VAE_P = "first_stage_model."
CLIP_L_P = "conditioner.embedders.0.transformer."
CLIP_G_P = "conditioner.embedders.1.model."

PROMPT = "a watercolor painting of a red fox sleeping under a cherry tree"
NEGATIVE = "blurry, low quality, watermark"
SEED = 42
T2I = dict(width=128, height=96, steps=4, cfg=5.0)
I2I = dict(width=64, height=32, steps=8, strength=0.5, cfg=5.0)


def hash_values(n, seed):
    with np.errstate(over="ignore"):
        s = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + np.arange(n, dtype=np.uint64)
        z = s + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    attention_head_dim=(1, 1, 2),  # diffusers' name for the head count (head dim 64)
    cross_attention_dim=64 + 128,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=96 + 6 * 8,
    use_linear_projection=True,
    norm_num_groups=32,
)

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=128,
    scaling_factor=SCALE,
)

CLIP_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    num_hidden_layers=3,
    layer_norm_eps=1e-5,
    bos_token_id=BOS,
    eos_token_id=EOS,
)
CLIP_L_CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=1,
                     hidden_act="quick_gelu", pad_token_id=EOS, **CLIP_COMMON)
CLIP_G_CONFIG = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2,
                     hidden_act="gelu", projection_dim=96, pad_token_id=0, **CLIP_COMMON)


# ---------------------------------------------------------------------------------------------
# diffusers / transformers -> ldm names. Each returns {diffusers name: (ldm name, how)} where
# `how` says how the diffusers tensor is read from the ldm one: "same", "conv1x1" (ldm stores
# a Linear as a 1x1 conv), "T" (transposed), ("slice", k, 3) (part k of a fused q/k/v).
# ---------------------------------------------------------------------------------------------
def unet_map(sd, cfg):
    r = cfg["layers_per_block"]
    attn_up = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    res_map = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
    out = {}
    for k in sd:
        n = k.replace("time_embedding.linear_1", "time_embed.0")
        n = n.replace("time_embedding.linear_2", "time_embed.2")
        n = n.replace("add_embedding.linear_1", "label_emb.0.0")
        n = n.replace("add_embedding.linear_2", "label_emb.0.2")
        if n.startswith("conv_in."):
            n = "input_blocks.0.0." + n[len("conv_in."):]
        elif n.startswith("conv_norm_out."):
            n = "out.0." + n[len("conv_norm_out."):]
        elif n.startswith("conv_out."):
            n = "out.2." + n[len("conv_out."):]
        p = n.split(".")
        if p[0] == "down_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                n = f"input_blocks.{1 + i * (r + 1) + int(p[3])}.0.{res_map[p[4]]}.{'.'.join(p[5:])}"
            elif p[2] == "attentions":
                n = f"input_blocks.{1 + i * (r + 1) + int(p[3])}.1.{'.'.join(p[4:])}"
            elif p[2] == "downsamplers":
                n = f"input_blocks.{(i + 1) * (r + 1)}.0.op.{'.'.join(p[5:])}"
        elif p[0] == "up_blocks":
            i = int(p[1])
            if p[2] == "resnets":
                n = f"output_blocks.{i * (r + 1) + int(p[3])}.0.{res_map[p[4]]}.{'.'.join(p[5:])}"
            elif p[2] == "attentions":
                n = f"output_blocks.{i * (r + 1) + int(p[3])}.1.{'.'.join(p[4:])}"
            elif p[2] == "upsamplers":
                sub = 2 if attn_up[i] else 1
                n = f"output_blocks.{i * (r + 1) + r}.{sub}.{'.'.join(p[4:])}"
        elif p[0] == "mid_block":
            if p[1] == "resnets":
                n = f"middle_block.{2 * int(p[2])}.{res_map[p[3]]}.{'.'.join(p[4:])}"
            else:
                n = f"middle_block.1.{'.'.join(p[3:])}"
        out[k] = (UNET_P + n, "same")
    return out


def vae_map(sd, cfg):
    levels = len(cfg["block_out_channels"])
    out = {}
    for k in sd:
        p = k.split(".")
        n, how = k, "same"
        if p[0] in ("encoder", "decoder") and p[1] in ("down_blocks", "up_blocks"):
            i = int(p[2])
            lvl = i if p[1] == "down_blocks" else levels - 1 - i
            kind = "down" if p[1] == "down_blocks" else "up"
            if p[3] == "resnets":
                n = f"{p[0]}.{kind}.{lvl}.block.{p[4]}.{'.'.join(p[5:])}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                n = f"{p[0]}.{kind}.{lvl}.{kind}sample.{'.'.join(p[5:])}"
        elif p[0] in ("encoder", "decoder") and p[1] == "mid_block":
            if p[2] == "resnets":
                n = f"{p[0]}.mid.block_{int(p[3]) + 1}.{'.'.join(p[4:])}"
            else:
                attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}
                rest = p[4:]
                if rest[0] == "to_out":  # to_out.0.weight -> proj_out.weight
                    n = f"{p[0]}.mid.attn_1.proj_out.{'.'.join(rest[2:])}"
                else:
                    n = f"{p[0]}.mid.attn_1.{attn[rest[0]]}.{'.'.join(rest[1:])}"
                if n.endswith(".weight") and sd[k].dim() == 2:
                    how = "conv1x1"
        elif p[0] in ("encoder", "decoder") and p[1] == "conv_norm_out":
            n = f"{p[0]}.norm_out.{'.'.join(p[2:])}"
        n = n.replace("conv_shortcut", "nin_shortcut")
        out[k] = (VAE_P + n, how)
    return out


def clip_l_map(sd):
    """transformers >= 5 names CLIPTextModel's tensors without `text_model.`; checkpoints have it."""
    out = {}
    for k in sd:
        if k.endswith("position_ids"):
            continue
        full = k if k.startswith("text_model.") else "text_model." + k
        out[k] = (CLIP_L_P + full, "same")
    return out


def clip_g_map(sd):
    out = {}
    for k in sd:
        if k.endswith("position_ids"):
            continue
        if k == "text_model.embeddings.token_embedding.weight":
            out[k] = (CLIP_G_P + "token_embedding.weight", "same")
        elif k == "text_model.embeddings.position_embedding.weight":
            out[k] = (CLIP_G_P + "positional_embedding", "same")
        elif k.startswith("text_model.final_layer_norm."):
            out[k] = (CLIP_G_P + "ln_final." + k.split(".")[-1], "same")
        elif k == "text_projection.weight":
            out[k] = (CLIP_G_P + "text_projection", "T")
        else:
            p = k.split(".")  # text_model.encoder.layers.N.<module>...
            base = f"{CLIP_G_P}transformer.resblocks.{p[3]}."
            rest = p[4:]
            if rest[0] == "self_attn":
                if rest[1] in ("q_proj", "k_proj", "v_proj"):
                    part = ("q_proj", "k_proj", "v_proj").index(rest[1])
                    out[k] = (base + "attn.in_proj_" + rest[2], ("slice", part, 3))
                else:
                    out[k] = (base + "attn.out_proj." + rest[2], "same")
            elif rest[0] in ("layer_norm1", "layer_norm2"):
                out[k] = (base + {"layer_norm1": "ln_1", "layer_norm2": "ln_2"}[rest[0]] + "." + rest[1], "same")
            elif rest[0] == "mlp":
                out[k] = (base + "mlp." + {"fc1": "c_fc", "fc2": "c_proj"}[rest[1]] + "." + rest[2], "same")
            else:
                raise SystemExit(f"bigG: no open_clip name for {k}")
    return out


def ldm_shape(t, how):
    s = list(t.shape)
    if how == "conv1x1":
        return s + [1, 1]
    if how == "T":
        return s[::-1]
    if isinstance(how, tuple):
        return [s[0] * how[2]] + s[1:]
    return s


def recipe_for(diffusers_name, ldm_name, shape):
    """(scale, offset) so that activations stay O(1); chosen from the diffusers name."""
    n = diffusers_name
    if ldm_name.endswith("logit_scale"):
        return 0.0, math.log(100.0)
    if n.endswith("token_embedding.weight"):
        return 1.0, 0.0
    if n.endswith("position_embedding.weight"):
        return 0.5, 0.0
    if "norm" in n:
        return (0.2, 1.0) if n.endswith("weight") else (0.1, 0.0)
    if n.endswith("bias"):
        return 0.1, 0.0
    if n == "text_projection.weight":  # ldm [width, proj]: the input is the first axis
        return math.sqrt(3.0) / math.sqrt(shape[0]), 0.0
    fan_in = int(np.prod(shape[1:]))
    return math.sqrt(3.0) / math.sqrt(fan_in), 0.0


def expect_from_ldm(w, how, shape):
    if how == "same":
        return w
    if how == "conv1x1":
        return w.reshape(shape)
    if how == "T":
        return w.T
    _, part, parts = how
    rows = w.shape[0] // parts
    return w[part * rows:(part + 1) * rows]


# ---------------------------------------------------------------------------------------------
# Build the ldm checkpoint, convert it with diffusers, load the models
# ---------------------------------------------------------------------------------------------
def build_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    vae = AutoencoderKL(**VAE_CONFIG).eval()
    clip_l = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG)).eval()
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_CONFIG)).eval()
    parts = [
        (unet, unet_map(unet.state_dict(), UNET_CONFIG)),
        (vae, vae_map(vae.state_dict(), VAE_CONFIG)),
        (clip_l, clip_l_map(clip_l.state_dict())),
        (clip_g, clip_g_map(clip_g.state_dict())),
    ]
    # ldm name -> (shape, first diffusers name mapping to it)
    ldm_specs = {}
    for model, m in parts:
        sd = model.state_dict()
        for dn, (ln, how) in m.items():
            shape = ldm_shape(sd[dn], how)
            if ln in ldm_specs:
                assert ldm_specs[ln][0] == shape, (ln, shape)
            else:
                ldm_specs[ln] = (shape, dn)
    ldm_specs[CLIP_G_P + "logit_scale"] = ([], "logit_scale")

    recipe, ckpt = [], {}
    for i, name in enumerate(sorted(ldm_specs)):
        shape, dn = ldm_specs[name]
        scale, offset = recipe_for(dn, name, shape)
        scale = float(f"{scale:.6g}")  # short in index.json; the generator rounds it to f32
        seed = 10000 + i
        n = int(np.prod(shape)) if shape else 1
        w = hash_values(n, seed) * np.float32(scale) + np.float32(offset)
        ckpt[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})

    # diffusers' own converters, ldm -> diffusers.
    conv_unet = convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    conv_vae = convert_ldm_vae_checkpoint(ckpt, dict(vae.config))
    conv_l = convert_ldm_clip_checkpoint(ckpt)
    conv_l = {k[len("text_model."):] if not any(s.startswith("text_model.") for s in clip_l.state_dict()) else k: v
              for k, v in conv_l.items() if not k.endswith("position_ids")}
    conv_g = convert_open_clip_checkpoint(clip_g, ckpt, prefix=CLIP_G_P)
    for (model, m), conv, what in zip(parts, (conv_unet, conv_vae, conv_l, conv_g),
                                      ("unet", "vae", "clip_l", "clip_g")):
        missing, unexpected = model.load_state_dict(conv, strict=False)
        assert not unexpected, (what, unexpected[:5])
        assert all(k.endswith("position_ids") for k in missing), (what, missing[:5])
        sd = model.state_dict()
        for dn, (ln, how) in m.items():
            want = expect_from_ldm(ckpt[ln], how, sd[dn].shape)
            assert torch.equal(sd[dn], want), f"{what}: {dn} is not {ln} ({how}) after diffusers' conversion"
        print(f"verified: {what}: {len(m)} tensors, diffusers converter == our ldm map")
    used = {ln for _, m in parts for ln, _ in m.values()}
    assert used | {CLIP_G_P + "logit_scale"} == set(ckpt), "ldm tensors no model reads"
    return unet, vae, clip_l, clip_g, recipe


def make_tokenizers(bpe):
    tmp = Path(tempfile.mkdtemp(prefix="njtok"))
    merges = tokfix.load_merges(bpe)
    tokfix.write_hf_files(tmp, merges, tokfix.build_vocab(merges))
    # from_pretrained reads the special tokens of tokenizer_config.json (the vocab_file
    # constructor of transformers 5 does not map them to their ids).
    tok = CLIPTokenizer.from_pretrained(str(tmp), model_max_length=77)
    tok2 = CLIPTokenizer.from_pretrained(str(tmp), model_max_length=77, pad_token="!")
    assert tok.pad_token_id == EOS and tok2.pad_token_id == 0
    return tok, tok2


# ---------------------------------------------------------------------------------------------
# Recording
# ---------------------------------------------------------------------------------------------
def write(name, t):
    if isinstance(t, torch.Tensor):
        t = t.detach().to(torch.float32).contiguous().numpy()
    arr = np.ascontiguousarray(t).astype("<f4")
    arr.tofile(OUT / name)
    return {"file": name, "shape": list(arr.shape)}


def write_u8(name, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    arr.tofile(OUT / name)
    return {"file": name, "shape": list(arr.shape), "dtype": "u8"}


class UnetRecorder:
    """Keeps every UNet call of a pipeline run: (sample, timestep, context, added conds, out)."""

    def __init__(self, unet):
        self.calls = []
        unet.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        out = output[0] if isinstance(output, tuple) else output.sample
        self.calls.append(dict(sample=sample.clone(), t=float(t), context=kwargs["encoder_hidden_states"].clone(),
                               added={k: v.clone() for k, v in kwargs["added_cond_kwargs"].items()},
                               out=out.clone()))


def to_u8(image_np):
    """diffusers' numpy_to_pil (round) and ComfyUI's SaveImage (truncate)."""
    rounded = (image_np * 255).round().astype("uint8")
    trunc = np.clip(255.0 * image_np, 0, 255).astype(np.uint8)
    return rounded, trunc


def decoded_check(vae, final, image_np):
    """The VAE decode before the /2 + 0.5 clamp, and a bit-exact check of output_type="np"."""
    with torch.no_grad():
        decoded = vae.decode(final / SCALE).sample
    img = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    assert np.array_equal(img, image_np), "float image is not clamp(decoded / 2 + 0.5)"
    return decoded[0]


def tokens_of(tok, text):
    return tok(text, padding="max_length", max_length=77, truncation=True).input_ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz (default: open_clip's)")
    args = ap.parse_args()
    bpe = args.bpe
    if bpe is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None:
            raise SystemExit("give --bpe path/to/bpe_simple_vocab_16e6.txt.gz (pip download --no-deps open_clip_torch)")
        bpe = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)

    unet, vae, clip_l, clip_g, recipe = build_models()
    tok, tok2 = make_tokenizers(bpe)
    sched_cfg = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
                     interpolation_type="linear", use_karras_sigmas=False)
    components = dict(vae=vae, text_encoder=clip_l, text_encoder_2=clip_g, tokenizer=tok, tokenizer_2=tok2,
                      unet=unet, scheduler=EulerDiscreteScheduler(**sched_cfg))
    pipe = StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    rec = UnetRecorder(unet)

    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "layout": "ldm single file: model.diffusion_model., first_stage_model., "
                  "conditioner.embedders.0.transformer. (HF CLIP-L), conditioner.embedders.1.model. (open_clip bigG)",
        "config": {
            "unet": {k: (list(v) if isinstance(v, tuple) else v) for k, v in UNET_CONFIG.items()},
            "vae": {k: (list(v) if isinstance(v, tuple) else v) for k, v in VAE_CONFIG.items()},
            "clip_l": CLIP_L_CONFIG,
            "clip_g": CLIP_G_CONFIG,
            "scheduler": sched_cfg,
        },
        "tensors": recipe,
    }

    # ---- text ----
    tokens = {"pos": {"clip_l": tokens_of(tok, PROMPT), "clip_g": tokens_of(tok2, PROMPT)},
              "neg": {"clip_l": tokens_of(tok, NEGATIVE), "clip_g": tokens_of(tok2, NEGATIVE)}}
    for side in tokens.values():
        ids_l, ids_g = side["clip_l"], side["clip_g"]
        n = ids_l.index(EOS)
        assert ids_l[0] == BOS and ids_l[:n + 1] == ids_g[:n + 1]
        assert all(x == EOS for x in ids_l[n:]) and all(x == 0 for x in ids_g[n + 1:])
    text = {"tokens": tokens}
    with torch.no_grad():
        for side, prompt in (("pos", PROMPT), ("neg", NEGATIVE)):
            ids_l = torch.tensor([tokens[side]["clip_l"]])
            ids_g = torch.tensor([tokens[side]["clip_g"]])
            out_l = clip_l(ids_l, output_hidden_states=True)
            out_g = clip_g(ids_g, output_hidden_states=True)
            text[f"{side}_clip_l_penultimate"] = write(f"{side}_clip_l_penultimate.f32", out_l.hidden_states[-2][0])
            text[f"{side}_clip_g_penultimate"] = write(f"{side}_clip_g_penultimate.f32", out_g.hidden_states[-2][0])
            text[f"{side}_pooled"] = write(f"{side}_pooled.f32", out_g.text_embeds[0])
            # diffusers' own encode_prompt gives the same context and pooled.
            pe, ne, pp, npo = pipe.encode_prompt(prompt, negative_prompt=NEGATIVE, do_classifier_free_guidance=True)
            want_ctx = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
            got_ctx, got_pool = (pe, pp) if side == "pos" else (ne, npo)
            assert torch.equal(got_ctx, want_ctx) and torch.equal(got_pool, out_g.text_embeds), side
            print(side, "context std", float(want_ctx.std()), "pooled std", float(out_g.text_embeds.std()))
    index["text"] = text
    index["prompt"], index["negative_prompt"] = PROMPT, NEGATIVE

    # ---- txt2img ----
    w, h = T2I["width"], T2I["height"]
    sched = pipe.scheduler
    sched.set_timesteps(T2I["steps"])
    smax = float(sched.sigmas[0])
    noise = torch.randn([1, 4, h // 8, w // 8], generator=torch.manual_seed(SEED))
    latents = noise * math.sqrt(1 + smax * smax) / sched.init_noise_sigma
    steps = []

    def on_step(p, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    rec.calls.clear()
    with torch.no_grad():
        res = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, width=w, height=h, num_inference_steps=T2I["steps"],
                   guidance_scale=T2I["cfg"], latents=latents, output_type="np",
                   callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    image_np = res.images
    first = rec.calls[0]
    print("t2i unet out std per step", [float(c["out"].std()) for c in rec.calls])
    # The batch is [uncond, cond]; its input is x_T / sqrt(sigma_max^2 + 1), i.e. the noise.
    unet_in_err = float((first["sample"][1] - noise[0]).abs().max())
    assert unet_in_err < 1e-5, unet_in_err
    ctx_pos = torch.cat([torch.from_numpy(np.fromfile(OUT / "pos_clip_l_penultimate.f32", "<f4").reshape(77, 64)),
                         torch.from_numpy(np.fromfile(OUT / "pos_clip_g_penultimate.f32", "<f4").reshape(77, 128))], -1)
    assert torch.equal(first["context"][1], ctx_pos), "UNet context is not cat(L, G) penultimates"
    time_ids = first["added"]["time_ids"]
    assert torch.equal(time_ids[0], time_ids[1])
    decoded = decoded_check(vae, steps[-1], image_np)
    u8, u8_trunc = to_u8(image_np[0])
    assert np.array_equal(u8, np.asarray(pipe.image_processor.numpy_to_pil(image_np)[0]))
    timesteps = [c["t"] for c in rec.calls]
    print("t2i timesteps", timesteps, "sigmas", [float(s) for s in sched.sigmas])
    print("t2i final latent std", float(steps[-1].std()), "decoded min/max", float(decoded.min()),
          float(decoded.max()), "outside [-1,1]", float((decoded.abs() > 1).float().mean()),
          "u8 round != trunc", int((u8 != u8_trunc).sum()))
    index["t2i"] = {
        "width": w, "height": h, "steps": T2I["steps"], "cfg": T2I["cfg"], "seed": SEED,
        "sampler": "euler", "scheduler": "simple (diffusers: EulerDiscreteScheduler, timestep_spacing=trailing)",
        "timesteps": timesteps,
        "sigmas": [float(s) for s in sched.sigmas],
        "time_ids": [float(v) for v in time_ids[0]],
        "noise": write("t2i_noise.f32", noise[0]),
        "x_T_comfy_rel_diff": float((latents * sched.init_noise_sigma - noise * math.sqrt(1 + smax * smax)).abs().max()
                                    / noise.abs().max() / math.sqrt(1 + smax * smax)),
        "unet_timestep": first["t"],
        "unet_in_minus_noise": unet_in_err,
        "unet_uncond": write("t2i_unet_uncond.f32", first["out"][0]),
        "unet_cond": write("t2i_unet_cond.f32", first["out"][1]),
        "steps_out": [write(f"t2i_step{i}.f32", s[0]) for i, s in enumerate(steps)],
        "decoded": write("t2i_decoded.f32", decoded),
        "image_u8": write_u8("t2i_image_u8.bin", u8),
    }
    assert torch.equal(first["sample"][1] * 1.0, first["sample"][0])

    # ---- img2img ----
    w, h = I2I["width"], I2I["height"]
    i2i = StableDiffusionXLImg2ImgPipeline(**{**components, "scheduler": EulerDiscreteScheduler(**sched_cfg)},
                                           force_zeros_for_empty_prompt=True, add_watermarker=False,
                                           requires_aesthetics_score=False)
    i2i.set_progress_bar_config(disable=True)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    init = np.stack([xx / (w - 1), yy / (h - 1), 0.5 + 0.5 * np.sin((xx + 2 * yy) / 6.0)], -1)
    init_u8 = np.clip(np.round(init * 255), 0, 255).astype(np.uint8)
    # diffusers' preprocess and ComfyUI's LoadImage + VAEEncode: u8 / 255, then 2x - 1.
    image = torch.from_numpy(init_u8.astype(np.float32) / np.float32(255.0)).permute(2, 0, 1)[None] * 2.0 - 1.0
    with torch.no_grad():
        encoded = vae.encode(image).latent_dist.mean * SCALE
    steps.clear()
    rec.calls.clear()
    with torch.no_grad():
        res = i2i(prompt=PROMPT, negative_prompt=NEGATIVE, image=encoded, strength=I2I["strength"],
                  num_inference_steps=I2I["steps"], guidance_scale=I2I["cfg"],
                  generator=torch.Generator().manual_seed(SEED), output_type="np",
                  callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    image_np = res.images
    assert image_np.shape == (1, h, w, 3), image_np.shape
    s2 = i2i.scheduler
    timesteps = [c["t"] for c in rec.calls]
    noise = torch.randn([1, 4, h // 8, w // 8], generator=torch.manual_seed(SEED))
    start = s2.begin_index  # get_timesteps keeps the last strength * steps of the 8-step schedule
    sigmas = [float(s) for s in s2.sigmas[start:]]
    x_start = encoded + noise * s2.sigmas[start]
    sigma_start = sigmas[0]
    first = rec.calls[0]
    assert torch.allclose(first["sample"][1] * math.sqrt(sigma_start ** 2 + 1), x_start[0], rtol=1e-6, atol=1e-6)
    decoded = decoded_check(vae, steps[-1], image_np)
    u8, u8_trunc = to_u8(image_np[0])
    print("i2i timesteps", timesteps, "sigmas", sigmas)
    print("i2i decoded min/max", float(decoded.min()), float(decoded.max()), "u8 round != trunc",
          int((u8 != u8_trunc).sum()))
    index["i2i"] = {
        "width": w, "height": h, "steps": I2I["steps"], "strength": I2I["strength"], "cfg": I2I["cfg"],
        "seed": SEED, "sampler": "euler", "scheduler": "simple",
        "comfyui": "KSampler steps 4, denoise 0.5",
        "timesteps": timesteps,
        "sigmas": sigmas,
        "time_ids": [float(v) for v in first["added"]["time_ids"][0]],
        "init_u8": write_u8("i2i_init_u8.bin", init_u8),
        "encoded": write("i2i_encoded.f32", encoded[0]),
        "noise": write("i2i_noise.f32", noise[0]),
        "steps_out": [write(f"i2i_step{i}.f32", s[0]) for i, s in enumerate(steps)],
        "decoded": write("i2i_decoded.f32", decoded),
    }

    # One recipe entry per line: the list is most of the file.
    tensors = index.pop("tensors")
    text = json.dumps(index, indent=1)
    # Lists of numbers and strings on one line.
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    lines = ",\n".join("  " + json.dumps(t, separators=(",", ":")) for t in tensors)
    text = text[:-2] + ',\n "tensors": [\n' + lines + "\n ]\n}\n"
    assert json.loads(text)["tensors"] == tensors
    with open(OUT / "index.json", "w") as f:
        f.write(text)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{OUT}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
