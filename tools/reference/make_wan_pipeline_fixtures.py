#!/usr/bin/env python3
"""End-to-end reference of stage 2 (Wan2.1 image-to-video) on tiny components, for
tests/wan_pipeline.rs.

Four tiny models with the real architectures, built with diffusers / transformers:
  DiT     diffusers WanTransformer3DModel, I2V: dim 256 (2 heads x 128, the real head size, so
          RoPE splits 44/42/42), 2 layers, ffn 512, in 36, out 16, text 128, image 160, freq 256
  umT5    transformers UMT5EncoderModel: vocab 900 (tests/fixtures/umt5_tokenizer/small),
          d_model 128 (2 heads x 64), d_ff 256 gated-gelu, 2 layers, 32 buckets
  CLIP    transformers CLIPVisionModel: 224 px, patch 14 (257 tokens), width 160 (2 heads x 80,
          the CLIP-H head size), 3 layers; hidden_states[-2]
  VAE     diffusers AutoencoderKLWan: base_dim 32, z 16, dim_mult [1,2,4,4], 2 res blocks,
          temporal down [F,T,T], the real 16 latent means/stds

Weights are not stored. Each file is described in index.json as the list of the tensors it
stores, in the layout users have, with a hash recipe per STORED name and shape (PyTorch order):

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

  dit.gguf                  original Wan names (`blocks.N.self_attn.q.weight`, 5-D
                            `patch_embedding.weight`), `general.architecture = "wan"`, F32 (as
                            city96's files keep their non-quantized tensors)
  umt5.gguf                 llama.cpp T5 names (`enc.blk.N.attn_q.weight`, `token_embd.weight`,
                            `enc.blk.N.attn_rel_b.weight`), llama.cpp's `t5encoder.*`
                            hyperparameters and the tokenizer metadata of
                            tests/fixtures/umt5_tokenizer/small/tokenizer.gguf (copied key for key)
  clip_vision.safetensors   HF names (`vision_model.*`)
  vae.safetensors           original Wan names (`encoder.downsamples.*`, `conv1`, ...)

The stored names are mapped to the diffusers / transformers names with diffusers' own
converters (convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers) and gguf-py's
T5ENCODER tensor map, and loaded with strict=True. The script also writes all four files with
gguf-py / safetensors to a temporary directory and reads them back through those converters,
so the layouts are checked against the reference tools, not against our loader.

The run (settings where the official code, diffusers and ComfyUI agree):
  image     64x48 gradient (image.png), exactly the video size: no resize or crop
  prompt    PROMPT below, negative NEGATIVE (non-empty), tokenized with transformers'
            T5TokenizerFast of the small tokenizer (Wan's whitespace clean is a no-op on them)
  text      umT5 over the 512 padded ids with the attention mask (diffusers / official),
            cut to the real length, zero-padded to 512 rows
  clip      official Wan preprocessing (torch bicubic to 224x224 without antialias, no crop, CLIP
            mean/std; src/models/clip_vision.rs `Preprocess::Wan`), hidden_states[-2], 257 tokens
  y         [mask (4 ch, 1 on latent frame 0), normalise(VAE.encode([image, 0 x 4]).mode())]
  noise     torch.randn([1, 16, 2, 6, 8], generator=torch.manual_seed(SEED)) (CPU)
  sampling  ComfyUI: ModelSamplingDiscreteFlow(shift 3), `simple` sigmas, euler, CFG 5 on the
            denoised predictions (x - sigma v), timestep = 1000 sigma (f32), x0 = noise
  decode    de-normalise, VAE decode (frame by frame, clamped to [-1, 1])
  frames    uint8 round((x + 1) / 2 * 255) (see `notes` for what each tool does)

Q8_0 variant (`q8_0` in index.json): the DiT's block linears (city96's rule: 2-D weights of
self_attn / cross_attn / ffn) quantized with gguf-py's Q8_0 (FNV-1a 64 of each tensor's bytes
recorded, so the Rust side checks its quantizer gives the same file), the same run on the
dequantized weights: final latent and frames.

Recorded arrays (raw little-endian f32 unless said, row-major) are listed in index.json.
`notes` holds measured differences between the reference tools (official Wan, diffusers, ComfyUI)
where they do not agree.

diffusers_names.json (tests/wan_layouts.rs): the names of a diffusers Wan folder's files
(transformer/, text_encoder/, vae/) -> the stored names above, from diffusers' converters and
gguf-py's T5ENCODER map (see write_diffusers_names).

fp8 variant (`fp8_scaled` in index.json, tests/wan_fp8.rs): the DiT's and umT5's Linear weights
quantized as ComfyUI quantizes them (float8_e4m3fn, scale amax/448 per tensor), FNV-1a 64 of the
fp8 bytes and the scale recorded per tensor; the same run on the dequantized weights
(float(q) * scale): umT5 outputs, final latent and frames.

Run: <venv>/bin/python tools/reference/make_wan_pipeline_fixtures.py [--names-only]
"""

import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dump_names import wan_original_dit, wan_original_vae  # noqa: E402
from make_clip_vision_fixtures import MEAN as CLIP_MEAN, STD as CLIP_STD  # noqa: E402
from make_clip_vision_fixtures import comfyui_preprocess, wan_preprocess  # noqa: E402

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "wan_pipeline")
TOK_DIR = os.path.join(ROOT, "tests", "fixtures", "umt5_tokenizer", "small")
MASK = (1 << 64) - 1

PROMPT = "a girl walking through the neon city at night, cinematic lighting"
NEGATIVE = "low quality, static, blurry, worst quality"
WIDTH, HEIGHT, FRAMES = 64, 48, 5
STEPS, CFG, SHIFT, SEED = 3, 5.0, 3.0, 42
TEXT_LEN = 512

DIT = dict(dim=256, heads=2, head_dim=128, ffn=512, layers=2, in_ch=36, out_ch=16, freq=256)
T5 = dict(vocab=900, d_model=128, d_kv=64, d_ff=256, layers=2, heads=2, buckets=32, max_distance=128)
CLIPV = dict(width=160, heads=2, ffn=256, layers=3, image=224, patch=14)
VAE = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
           temperal_downsample=[False, True, True])


def hash_values(n, seed):
    with np.errstate(over="ignore"):
        s = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + np.arange(n, dtype=np.uint64)
        z = s + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def fan_in_scale(shape):
    return math.sqrt(3.0) / math.sqrt(int(np.prod(shape[1:])))


# ---------------------------------------------------------------------------------------------
# Recipes per stored name (scale, offset) so that activations stay O(1)


def dit_recipe(name, shape):
    if "norm" in name or name.startswith("img_emb.proj.0") or name.startswith("img_emb.proj.4"):
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
    if name.endswith("modulation"):
        return 0.2, 0.0
    if name.endswith("bias"):
        return 0.1, 0.0
    return fan_in_scale(shape), 0.0


def t5_recipe(name, shape):
    if name in ("token_embd.weight",) or name.endswith("attn_rel_b.weight"):
        return 1.0, 0.0
    if name.endswith("norm.weight"):
        return 0.2, 1.0
    if name.endswith("attn_q.weight"):
        # T5 folds 1/sqrt(d_kv) into q (see make_umt5_fixtures.py).
        return math.sqrt(3.0) / math.sqrt(shape[-1] * T5["d_kv"]), 0.0
    return math.sqrt(3.0) / math.sqrt(shape[-1]), 0.0


def clip_recipe(name, shape):
    if name.endswith("class_embedding"):
        return 1.0, 0.0
    if name.endswith("position_embedding.weight"):
        return 0.5, 0.0
    if "layer_norm" in name or "layrnorm" in name:
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
    if name.endswith("bias"):
        return 0.1, 0.0
    return fan_in_scale(shape), 0.0


def vae_recipe(name, shape):
    if name.endswith("gamma"):
        return 0.2, 1.0
    if name.endswith("bias"):
        return 0.1, 0.0
    return fan_in_scale(shape), 0.0


def make_recipe(shapes, rule, base_seed):
    """{stored name: shape} -> recipe list (sorted by name) and {name: tensor}."""
    recipe, tensors = [], {}
    for i, name in enumerate(sorted(shapes)):
        shape = [int(d) for d in shapes[name]]
        scale, offset = rule(name, shape)
        seed = base_seed + i
        w = hash_values(int(np.prod(shape)), seed) * np.float32(scale) + np.float32(offset)
        tensors[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})
    return recipe, tensors


def load_strict(model, sd, what):
    ref = model.state_dict()
    ref = {k: v for k, v in ref.items() if not k.endswith("position_ids")}
    if set(sd) != set(ref):
        raise SystemExit(f"{what}: names differ: only stored {sorted(set(sd) - set(ref))[:5]}, "
                         f"only model {sorted(set(ref) - set(sd))[:5]}")
    for k in ref:
        if tuple(sd[k].shape) != tuple(ref[k].shape):
            raise SystemExit(f"{what}: {k} shape {tuple(sd[k].shape)} != {tuple(ref[k].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing), (missing, unexpected)


# ---------------------------------------------------------------------------------------------
# Components


def build_dit():
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    d = DIT["dim"]
    stored = wan_original_dit(d, DIT["in_ch"], DIT["out_ch"], T5["d_model"], DIT["freq"], DIT["ffn"],
                              DIT["layers"], (1, 2, 2), CLIPV["width"])
    recipe, tensors = make_recipe(stored, dit_recipe, 10000)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=DIT["heads"], attention_head_dim=DIT["head_dim"],
        in_channels=DIT["in_ch"], out_channels=DIT["out_ch"], text_dim=T5["d_model"],
        freq_dim=DIT["freq"], ffn_dim=DIT["ffn"], num_layers=DIT["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=CLIPV["width"], added_kv_proj_dim=d,
        rope_max_seq_len=1024,
    ).eval()
    conv = convert_wan_transformer_to_diffusers(dict(tensors))
    load_strict(model, conv, "dit (convert_wan_transformer_to_diffusers)")
    return model, recipe, tensors


def t5_gguf_names():
    import gguf

    from transformers import UMT5Config, UMT5EncoderModel

    cfg = t5_config()
    hf = UMT5EncoderModel(cfg).state_dict()
    nmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, cfg.num_layers)
    to_hf, shapes = {}, {}
    for k, v in hf.items():
        if k == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight; llama.cpp's converter writes it once
        base, suffix = k.rsplit(".", 1)
        g = nmap.get_name(base)
        assert g is not None, k
        to_hf[f"{g}.{suffix}"] = k
        shapes[f"{g}.{suffix}"] = tuple(v.shape)
    return shapes, to_hf


def t5_config():
    from transformers import UMT5Config

    return UMT5Config(
        vocab_size=T5["vocab"], d_model=T5["d_model"], d_kv=T5["d_kv"], d_ff=T5["d_ff"],
        num_layers=T5["layers"], num_heads=T5["heads"],
        relative_attention_num_buckets=T5["buckets"],
        relative_attention_max_distance=T5["max_distance"], feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.0, tie_word_embeddings=True,
    )


def build_t5():
    from transformers import UMT5EncoderModel

    shapes, to_hf = t5_gguf_names()
    recipe, tensors = make_recipe(shapes, t5_recipe, 20000)
    model = UMT5EncoderModel(t5_config()).eval()
    sd = {to_hf[k]: v for k, v in tensors.items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    load_strict(model, sd, "umt5 (gguf-py T5ENCODER map)")
    return model, recipe, tensors


def build_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=CLIPV["width"], intermediate_size=CLIPV["ffn"], num_hidden_layers=CLIPV["layers"],
        num_attention_heads=CLIPV["heads"], image_size=CLIPV["image"], patch_size=CLIPV["patch"],
        hidden_act="gelu", layer_norm_eps=1e-5,
    )
    model = CLIPVisionModel(cfg).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    recipe, tensors = make_recipe(shapes, clip_recipe, 30000)
    load_strict(model, dict(tensors), "clip vision (HF names)")
    return model, recipe, tensors


def build_vae():
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    model = AutoencoderKLWan(**VAE, attn_scales=[]).eval()
    stored = wan_original_vae(VAE["base_dim"], VAE["z_dim"], VAE["dim_mult"], VAE["num_res_blocks"],
                              VAE["temperal_downsample"])
    recipe, tensors = make_recipe(stored, vae_recipe, 40000)
    conv = convert_wan_vae_to_diffusers(dict(tensors))
    load_strict(model, conv, "vae (convert_wan_vae_to_diffusers)")
    return model, recipe, tensors


# ---------------------------------------------------------------------------------------------
# The files as users have them (metadata lists are what the Rust test writes too)


def t5_metadata():
    return [
        {"key": "t5encoder.context_length", "type": "u32", "value": TEXT_LEN},
        {"key": "t5encoder.embedding_length", "type": "u32", "value": T5["d_model"]},
        {"key": "t5encoder.feed_forward_length", "type": "u32", "value": T5["d_ff"]},
        {"key": "t5encoder.block_count", "type": "u32", "value": T5["layers"]},
        {"key": "t5encoder.attention.head_count", "type": "u32", "value": T5["heads"]},
        {"key": "t5encoder.attention.key_length", "type": "u32", "value": T5["d_kv"]},
        {"key": "t5encoder.attention.value_length", "type": "u32", "value": T5["d_kv"]},
        {"key": "t5encoder.attention.layer_norm_epsilon", "type": "f32", "value": 1e-6},
        {"key": "t5encoder.attention.relative_buckets_count", "type": "u32", "value": T5["buckets"]},
        {"key": "t5encoder.attention.layer_norm_rms_epsilon", "type": "f32", "value": 1e-6},
        {"key": "general.file_type", "type": "u32", "value": 0},
    ]


def dit_metadata():
    return [
        {"key": "general.quantization_version", "type": "u32", "value": 2},
        {"key": "general.file_type", "type": "u32", "value": 0},
    ]


def write_files_with_reference_tools(tmp, dit_t, t5_t, clip_t, vae_t):
    """Writes the four files with gguf-py / safetensors and reads them back into the names the
    reference models use, through diffusers' converters; returns those state dicts."""
    import gguf
    from safetensors.torch import load_file, save_file

    from diffusers.loaders.single_file_utils import (convert_wan_transformer_to_diffusers,
                                                     convert_wan_vae_to_diffusers)

    def add_meta(w, meta):
        for m in meta:
            {"u32": w.add_uint32, "f32": w.add_float32}[m["type"]](m["key"], m["value"])

    w = gguf.GGUFWriter(os.path.join(tmp, "dit.gguf"), "wan")
    add_meta(w, dit_metadata())
    for k in sorted(dit_t):
        w.add_tensor(k, dit_t[k].numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()

    tok = gguf.GGUFReader(os.path.join(TOK_DIR, "tokenizer.gguf"))
    w = gguf.GGUFWriter(os.path.join(tmp, "umt5.gguf"), "t5encoder")
    add_meta(w, t5_metadata())
    for field in tok.fields.values():
        if field.name.startswith("tokenizer."):
            copy_field(w, field)
    for k in sorted(t5_t):
        w.add_tensor(k, t5_t[k].numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()

    save_file({k: v.contiguous() for k, v in clip_t.items()}, os.path.join(tmp, "clip_vision.safetensors"))
    save_file({k: v.contiguous() for k, v in vae_t.items()}, os.path.join(tmp, "vae.safetensors"))

    def read_gguf(path):
        r = gguf.GGUFReader(path)
        out = {}
        for t in r.tensors:
            shape = [int(d) for d in reversed(t.shape.tolist())]
            out[t.name] = torch.from_numpy(np.array(t.data).reshape(shape).copy())
        return r, out

    _, dit_back = read_gguf(os.path.join(tmp, "dit.gguf"))
    r, t5_back = read_gguf(os.path.join(tmp, "umt5.gguf"))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "t5encoder"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == T5["vocab"]
    assert tuple(dit_back["patch_embedding.weight"].shape) == (DIT["dim"], 36, 1, 2, 2)
    return (convert_wan_transformer_to_diffusers(dit_back), t5_back,
            load_file(os.path.join(tmp, "clip_vision.safetensors")),
            convert_wan_vae_to_diffusers(load_file(os.path.join(tmp, "vae.safetensors"))))


def copy_field(w, field):
    import gguf

    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        et = types[1]
        if et == gguf.GGUFValueType.STRING:
            vals = [bytes(field.parts[i]) for i in field.data]
        else:
            vals = [field.parts[i].tolist()[0] for i in field.data]
        w.add_key_value(field.name, vals, gguf.GGUFValueType.ARRAY, sub_type=et)
    elif types[0] == gguf.GGUFValueType.STRING:
        w.add_key_value(field.name, bytes(field.parts[-1]).decode(), types[0])
    else:
        w.add_key_value(field.name, field.parts[-1].tolist()[0], types[0])


# ---------------------------------------------------------------------------------------------
# The run


def gradient_image():
    """uint8 [H, W, 3]: a smooth colour gradient with a darker disc (some structure for CLIP)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    r = x * 255 // (WIDTH - 1)
    g = y * 255 // (HEIGHT - 1)
    b = 255 - (x + y) * 255 // (WIDTH + HEIGHT - 2)
    disc = (x - 40) ** 2 + (y - 20) ** 2 < 12 ** 2
    img = np.stack([r, g, b], -1)
    img[disc] = img[disc] // 3
    return img.astype(np.uint8)


def write(name, t):
    arr = np.ascontiguousarray(np.asarray(t.detach() if torch.is_tensor(t) else t, dtype=np.float32)).astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


def write_u8(name, arr):
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape), "dtype": "u8"}


def comfy_flow_simple_sigmas(shift, steps, timesteps=1000, multiplier=1000):
    """ComfyUI ModelSamplingDiscreteFlow + `simple` scheduler (as make_sampling_fixtures.py)."""
    t = (torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier
    t = t / multiplier
    table = shift * t / (1 + (shift - 1) * t)
    ss = len(table) / steps
    sigs = [float(table[-(1 + int(x * ss))]) for x in range(steps)] + [0.0]
    return torch.FloatTensor(sigs)


def tokenize(text):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    import sentencepiece as spm

    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json")),
                                 eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    enc = hf([text], padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = int(mask.sum())
    sp = spm.SentencePieceProcessor(model_file=os.path.join(TOK_DIR, "spiece.model"))
    assert sp.encode(text) + [1] == ids[0, :n].tolist(), "sentencepiece and transformers disagree"
    return ids, mask, n


def encode_text(t5, text):
    ids, mask, n = tokenize(text)
    with torch.no_grad():
        full = t5(input_ids=ids, attention_mask=mask).last_hidden_state[0]
        real_only = t5(input_ids=ids[:, :n]).last_hidden_state[0]
    out = torch.zeros(TEXT_LEN, T5["d_model"])
    out[:n] = full[:n]
    return ids[0, :n].tolist(), out, float((full[:n] - real_only).abs().max())


def official_sinusoid(dim, position):
    """wan/modules/model.py sinusoidal_embedding_1d (float64)."""
    half = dim // 2
    position = position.type(torch.float64)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def comfy_sinusoid(dim, position):
    """ComfyUI comfy/ldm/wan/model.py sinusoidal_embedding_1d (float32)."""
    half = dim // 2
    position = position.type(torch.float32)
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def is_q8_linear(name, shape):
    """city96's rule: only the 2-D weights of the block linears are quantized."""
    return name.startswith("blocks.") and name.endswith(".weight") and len(shape) == 2 and \
        ("_attn." in name or ".ffn." in name) and "norm" not in name


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return f"{h:016x}"


def sample(dit, text_c, text_u, clip_b, y, noise, sigmas, notes):
    """ComfyUI's euler over the DiT with CFG on the denoised predictions; returns the final
    latent, the latent after each step and the first step's (v_cond, v_uncond, timestep)."""
    x = noise.clone()  # CONST noise_scaling at sigma 1: sigma * noise + (1 - sigma) * 0
    x_brief = noise.clone()
    steps, first = [], None
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            s, s_next = sigmas[i], sigmas[i + 1]
            t = (s * 1000.0).reshape(1).to(torch.float32)
            inp = torch.cat([x, y], dim=1)
            v_c = dit(hidden_states=inp, timestep=t, encoder_hidden_states=text_c[None],
                      encoder_hidden_states_image=clip_b, return_dict=False)[0]
            v_u = dit(hidden_states=inp, timestep=t, encoder_hidden_states=text_u[None],
                      encoder_hidden_states_image=clip_b, return_dict=False)[0]
            if i == 0:
                first = (v_c, v_u, float(t))
            if i == 0 and notes is not None:
                # The official timestep embedding is float64, ComfyUI's float32 torch.pow,
                # diffusers' float32 exp: their effect on the first velocity.
                for name, fn in (("official_f64", official_sinusoid), ("comfyui_f32", comfy_sinusoid)):
                    proj = dit.condition_embedder.timesteps_proj
                    orig_forward = proj.forward
                    proj.forward = lambda ts, fn=fn: fn(DIT["freq"], ts).to(torch.float32)
                    v_alt = dit(hidden_states=inp, timestep=t, encoder_hidden_states=text_c[None],
                                encoder_hidden_states_image=clip_b, return_dict=False)[0]
                    proj.forward = orig_forward
                    notes[f"dit_first_velocity_{name}_timestep_embedding_vs_diffusers_rel"] = rel(v_alt, v_c)
            # ComfyUI: CFG on the denoised predictions, k-diffusion euler.
            den_c = x - v_c * s
            den_u = x - v_u * s
            den = den_u + (den_c - den_u) * CFG
            d = (x - den) / s
            x = x + d * (s_next - s)
            # The velocity form (the same in exact arithmetic).
            v = v_u + CFG * (v_c - v_u)
            x_brief = x_brief + (s_next - s) * v
            steps.append(x.clone())
            print(f"step {i}: sigma {float(s):.6f} -> {float(s_next):.6f}, x std {float(x.std()):.4f}")
    if notes is not None:
        notes["final_latent_comfyui_order_vs_velocity_form_max_abs"] = float((x - x_brief).abs().max())
    return x, steps, first


def decode(vae, final, mean, inv_std):
    """De-normalise, decode (clamped); the video [3, F, H, W] and its frames as uint8
    [F, H, W, 3], rounded and truncated."""
    with torch.no_grad():
        dec = vae.decode(final / inv_std + mean).sample[0]
    x = ((dec.permute(1, 2, 3, 0).numpy() + 1.0) / 2.0).clip(0, 1) * 255.0
    return dec, np.round(x).astype(np.uint8), x.astype(np.uint8)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    dit, dit_recipe_list, dit_t = build_dit()
    t5, t5_recipe_list, t5_t = build_t5()
    clip, clip_recipe_list, clip_t = build_clip()
    vae, vae_recipe_list, vae_t = build_vae()
    notes = {}

    # The files, written and read back with the reference tools: same tensors after conversion.
    with tempfile.TemporaryDirectory() as tmp:
        dit_sd, t5_sd, clip_sd, vae_sd = write_files_with_reference_tools(tmp, dit_t, t5_t, clip_t, vae_t)
    for what, model, sd, rename in [
        ("dit", dit, dit_sd, None), ("clip", clip, clip_sd, None), ("vae", vae, vae_sd, None),
    ]:
        msd = model.state_dict()
        for k, v in sd.items():
            assert torch.equal(msd[k], v), (what, k)
    _, to_hf = t5_gguf_names()
    msd = t5.state_dict()
    for k, v in t5_sd.items():
        assert torch.equal(msd[to_hf[k]], v), k

    # ---- Inputs
    img = gradient_image()
    from PIL import Image

    Image.fromarray(img).save(os.path.join(OUT, "image.png"), optimize=False, compress_level=9)
    assert np.array_equal(np.asarray(Image.open(os.path.join(OUT, "image.png")).convert("RGB")), img)

    # ---- Text
    ids_c, text_c, d_c = encode_text(t5, PROMPT)
    ids_u, text_u, d_u = encode_text(t5, NEGATIVE)
    notes["t5_padded_with_mask_vs_real_tokens_only_max_abs"] = max(d_c, d_u)
    print("tokens", len(ids_c), len(ids_u), "t5 std", float(text_c[:len(ids_c)].std()),
          "mask vs real-only", d_c, d_u)

    # ---- CLIP vision (official preprocessing)
    pixels = wan_preprocess(img, CLIPV["image"])
    with torch.no_grad():
        clip_out = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][0]
        # What the other tools feed it, for the notes.
        clip_comfy = clip(pixel_values=comfyui_preprocess(img, CLIPV["image"], False)[None],
                          output_hidden_states=True).hidden_states[-2][0]
        from transformers import CLIPImageProcessor

        proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                  image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)
        px_diff = proc(images=Image.fromarray(img), return_tensors="pt").pixel_values
        clip_diffusers = clip(pixel_values=px_diff, output_hidden_states=True).hidden_states[-2][0]
    notes["clip_comfyui_nocrop_vs_official_rel"] = rel(clip_comfy, clip_out)
    notes["clip_diffusers_CLIPImageProcessor_vs_official_rel"] = rel(clip_diffusers, clip_out)
    notes["clip_pixels_comfyui_nocrop_vs_official_max_abs"] = float(
        (comfyui_preprocess(img, CLIPV["image"], False) - pixels[0]).abs().max())
    print("clip std", float(clip_out.std()), "notes", notes)

    # ---- Image condition
    lat_t = 1 + (FRAMES - 1) // 4
    lh, lw = HEIGHT // 8, WIDTH // 8
    image_t = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)  # official
    video = torch.cat([image_t[:, None], torch.zeros(3, FRAMES - 1, HEIGHT, WIDTH)], dim=1)[None]
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        cond_latent = (vae.encode(video).latent_dist.mode() - mean) * inv_std
    mask = torch.zeros(1, 4, lat_t, lh, lw)
    mask[:, :, 0] = 1.0
    y = torch.cat([mask, cond_latent], dim=1)
    print("cond latent", tuple(cond_latent.shape), "std", float(cond_latent.std()))

    # ---- Sampling
    sigmas = comfy_flow_simple_sigmas(SHIFT, STEPS)
    noise = torch.randn([1, 16, lat_t, lh, lw], generator=torch.manual_seed(SEED))
    run = dict(text_c=text_c, text_u=text_u, clip_b=clip_out[None], y=y, noise=noise, sigmas=sigmas)
    final, steps, first = sample(dit, notes=notes, **run)
    dec, frames_round, frames_trunc = decode(vae, final, mean, inv_std)

    # ---- The same run with the DiT's block linears stored as Q8_0 (city96's recipe), quantized
    # by gguf-py (bit-exact with ggml's reference quantizer); the model runs on the dequantized
    # weights, ggml also quantizes the activations of those matmuls to Q8_0 (looser tolerance).
    import gguf

    q8_names = [n for n in sorted(dit_t) if is_q8_linear(n, dit_t[n].shape)]
    q8_sums, deq = {}, dict(dit_t)
    for n in q8_names:
        q = gguf.quants.quantize(dit_t[n].numpy(), gguf.GGMLQuantizationType.Q8_0)
        q8_sums[n] = fnv1a64(q.tobytes())
        deq[n] = torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(dit_t[n].shape))
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    dit.load_state_dict(convert_wan_transformer_to_diffusers(deq), strict=True)
    q8_final, _, _ = sample(dit, notes=None, **run)
    _, q8_frames, _ = decode(vae, q8_final, mean, inv_std)
    notes["q8_0_dit_final_latent_vs_f32_rel"] = rel(q8_final, final)
    notes["q8_0_dit_frames_vs_f32_max_lsb"] = int(np.abs(q8_frames.astype(int) - frames_round.astype(int)).max())
    fp8 = fp8_variant(dit, t5, vae, dit_t, t5_t, run, mean, inv_std, final, notes)
    notes["frames_round_vs_truncate_values_differing"] = int((frames_round != frames_trunc).sum())
    notes["decoded_fraction_at_plus_minus_1"] = float((dec.abs() >= 1).float().mean())
    print("decoded std", float(dec.std()), "notes", json.dumps(notes, indent=1))

    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "settings": {
            "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": WIDTH, "height": HEIGHT,
            "frames": FRAMES, "steps": STEPS, "cfg": CFG, "shift": SHIFT, "seed": SEED,
            "sampler": "euler", "scheduler": "simple", "fps": 16,
        },
        "files": {
            "dit": {"file": "dit.gguf", "format": "gguf", "architecture": "wan",
                    "metadata": dit_metadata(), "tensors": dit_recipe_list},
            "t5": {"file": "umt5.gguf", "format": "gguf", "architecture": "t5encoder",
                   "metadata": t5_metadata(),
                   "copy_metadata_from": "tests/fixtures/umt5_tokenizer/small/tokenizer.gguf",
                   "copy_metadata_prefix": "tokenizer.", "tensors": t5_recipe_list},
            "clip_vision": {"file": "clip_vision.safetensors", "format": "safetensors",
                            "tensors": clip_recipe_list},
            "vae": {"file": "vae.safetensors", "format": "safetensors", "tensors": vae_recipe_list},
        },
        "configs": {"dit": DIT, "t5": T5, "clip_vision": CLIPV, "vae": VAE,
                    "latents_mean": list(vae.config.latents_mean), "latents_std": list(vae.config.latents_std)},
        "image": {"file": "image.png", "width": WIDTH, "height": HEIGHT},
        "tokens": {"prompt": ids_c, "negative": ids_u},
        "text_prompt": write("text_prompt.f32", text_c[:len(ids_c)]),
        "text_negative": write("text_negative.f32", text_u[:len(ids_u)]),
        "clip": write("clip.f32", clip_out),
        "cond_latent": write("cond_latent.f32", cond_latent[0]),
        "y": write("y.f32", y[0]),
        "noise": write("noise.f32", noise[0]),
        "sigmas": [float(s) for s in sigmas],
        "first_step": {"timestep": first[2], "v_cond": write("v_cond_0.f32", first[0][0]),
                       "v_uncond": write("v_uncond_0.f32", first[1][0])},
        "steps": [write(f"x_{i + 1}.f32", s[0]) for i, s in enumerate(steps)],
        "final_latent": write("final_latent.f32", final[0]),
        "decoded": write("decoded.f32", dec),
        "frames": write_u8("frames.u8", frames_round),
        "q8_0": {"tensors": q8_names, "fnv1a64": q8_sums,
                 "final_latent": write("q8_final_latent.f32", q8_final[0]),
                 "frames": write_u8("q8_frames.u8", q8_frames)},
        "fp8_scaled": fp8,
        "notes": notes,
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    write_diffusers_names(dit_t, t5_t, vae_t)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{OUT}: {total} bytes")


# ---------------------------------------------------------------------------------------------
# Extension: ComfyUI's scaled fp8 files (tests/wan_fp8.rs)


def is_fp8_dit_linear(name, shape):
    """Every 2-D Linear weight of the DiT (blocks, embeddings, head); not the 5-D patch
    embedding, norms or modulations."""
    return name.endswith(".weight") and len(shape) == 2


def is_fp8_t5_linear(name, shape):
    """umT5's Linear weights (attention, FFN); not the token embedding or relative biases."""
    return name.endswith(".weight") and len(shape) == 2 and name != "token_embd.weight" \
        and "attn_rel_b" not in name


def fp8_quantize(w):
    """ComfyUI comfy/quant_ops.py TensorCoreFP8Layout.quantize with its default scale:
    scale = amax|w| / 448 (f32), q = (w * (1 / scale)).to(float8_e4m3fn)."""
    scale = torch.amax(w.abs()) / torch.finfo(torch.float8_e4m3fn).max
    scale = scale.to(torch.float32)
    q = (w * (1.0 / scale).to(w.dtype)).to(torch.float8_e4m3fn)
    return q, scale


def fp8_variant(dit, t5, vae, dit_t, t5_t, run, mean, inv_std, final, notes):
    """The run with the DiT's and umT5's Linear weights stored as scaled fp8 the way ComfyUI's
    files store them; the reference runs on the dequantized weights (float(q) * scale, exactly
    what ComfyUI's TensorCoreFP8Layout.dequantize computes, in f32). Records, per quantized
    tensor, FNV-1a 64 of the fp8 bytes and the f32 scale (the Rust test quantizes the recipe
    values itself and checks both), the umT5 outputs, the final latent and the frames."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = {"format": "float8_e4m3fn", "scale": "amax/448 per tensor (ComfyUI default)"}
    for what, tensors, rule in (("dit", dit_t, is_fp8_dit_linear), ("t5", t5_t, is_fp8_t5_linear)):
        names = [n for n in sorted(tensors) if rule(n, tensors[n].shape)]
        sums, scales, deq = {}, {}, dict(tensors)
        for n in names:
            q, scale = fp8_quantize(tensors[n])
            sums[n] = fnv1a64(q.view(torch.uint8).numpy().tobytes())
            scales[n] = float(scale)
            deq[n] = q.to(torch.float32) * scale
        out[what] = {"tensors": names, "fnv1a64": sums, "scales": scales}
        if what == "dit":
            dit.load_state_dict(convert_wan_transformer_to_diffusers(deq), strict=True)
        else:
            _, to_hf = t5_gguf_names()
            sd = {to_hf[k]: v for k, v in deq.items()}
            sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
            load_strict(t5, sd, "umt5 fp8")
    ids_c, text_c, _ = encode_text(t5, PROMPT)
    ids_u, text_u, _ = encode_text(t5, NEGATIVE)
    fp8_run = dict(run, text_c=text_c, text_u=text_u)
    fp8_final, _, _ = sample(dit, notes=None, **fp8_run)
    _, fp8_frames, _ = decode(vae, fp8_final, mean, inv_std)
    notes["fp8_scaled_final_latent_vs_f32_rel"] = rel(fp8_final, final)
    notes["fp8_scaled_text_prompt_vs_f32_rel"] = rel(text_c, run["text_c"])
    out["text_prompt"] = write("fp8_text_prompt.f32", text_c[:len(ids_c)])
    out["text_negative"] = write("fp8_text_negative.f32", text_u[:len(ids_u)])
    out["final_latent"] = write("fp8_final_latent.f32", fp8_final[0])
    out["frames"] = write_u8("fp8_frames.u8", fp8_frames)
    return out


# ---------------------------------------------------------------------------------------------
# Extension: the diffusers folder layout (tests/wan_layouts.rs)


def renames(stored, converted, what):
    """{converted name: stored name} for a converter that only renames: each converted tensor
    is matched to the stored tensor with the same values (every recipe tensor has its own seed,
    so values identify it; shapes must be unchanged)."""
    by_bytes = {}
    for k, v in stored.items():
        key = (tuple(v.shape), v.numpy().tobytes())
        assert key not in by_bytes, (what, k, by_bytes.get(key))
        by_bytes[key] = k
    out = {}
    for k, v in converted.items():
        key = (tuple(v.shape), v.contiguous().numpy().tobytes())
        assert key in by_bytes, f"{what}: {k} is not a plain copy of a stored tensor"
        out[k] = by_bytes[key]
    assert sorted(out.values()) == sorted(stored), f"{what}: not one to one"
    return out


def write_diffusers_names(dit_t, t5_t, vae_t):
    """diffusers_names.json: for each file of a diffusers Wan folder, [diffusers name, stored
    name] per tensor (the stored names of index.json's dit / t5 / vae files), so that a test
    writes the folder without our own name maps. DiT and VAE: what diffusers' converters
    (convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers) produce, matched by
    value (both only rename). umT5: the HF names gguf-py's T5ENCODER map gives back (the
    state-dict names of transformers' UMT5EncoderModel, `shared.weight` once: tied to
    `encoder.embed_tokens.weight`). CLIP vision is stored with its HF names already."""
    from diffusers.loaders.single_file_utils import (convert_wan_transformer_to_diffusers,
                                                     convert_wan_vae_to_diffusers)

    _, to_hf = t5_gguf_names()
    files = [
        ("transformer/diffusion_pytorch_model.safetensors", "dit",
         renames(dit_t, convert_wan_transformer_to_diffusers(dict(dit_t)), "dit")),
        ("text_encoder/model.safetensors", "t5", {hf: g for g, hf in to_hf.items()}),
        ("vae/diffusion_pytorch_model.safetensors", "vae",
         renames(vae_t, convert_wan_vae_to_diffusers(dict(vae_t)), "vae")),
    ]
    assert sorted(files[1][2].values()) == sorted(t5_t)
    out = {
        "about": "diffusers Wan folder names -> stored names of index.json's files "
                 "(tools/reference/make_wan_pipeline_fixtures.py)",
        "files": [{"path": path, "from": src, "tensors": [[dn, sn] for dn, sn in sorted(m.items())]}
                  for path, src, m in files],
    }
    text = json.dumps(out, separators=(",", ":"))
    text = text.replace('],["', '],\n["')  # one tensor per line
    with open(os.path.join(OUT, "diffusers_names.json"), "w") as f:
        f.write(text + "\n")
    print("diffusers_names.json:", sum(len(f["tensors"]) for f in out["files"]), "tensors")


def names_only():
    """Writes diffusers_names.json alone (the components are rebuilt, nothing is run)."""
    torch.manual_seed(0)
    _, _, dit_t = build_dit()
    _, _, t5_t = build_t5()
    _, _, vae_t = build_vae()
    write_diffusers_names(dit_t, t5_t, vae_t)


if __name__ == "__main__":
    if sys.argv[1:] == ["--names-only"]:
        names_only()
    else:
        main()
