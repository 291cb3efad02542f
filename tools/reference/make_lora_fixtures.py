#!/usr/bin/env python3
"""Reference outputs of tiny models with LoRAs merged into their weights, for tests/lora.rs.

The base models are the tiny ones of the other fixtures, regenerated from their recipes:
  UNet     tests/fixtures/unet_sdxl/index.json  (diffusers UNet2DConditionModel)
  CLIP-L   tests/fixtures/clip_text/index.json  "clip_l" (transformers CLIPTextModel)
  bigG     tests/fixtures/clip_text/index.json  "clip_g" (CLIPTextModelWithProjection)
  Wan      tests/fixtures/wan_dit/index.json    "t2v" (diffusers WanTransformer3DModel)
and their inputs are read from those fixtures.

The LoRA tensors are not stored either: each comes from the same counter-based hash
(make_unet_sdxl_fixtures.py), recipe {key, shape, seed, scale, offset} in index.json; an alpha
is a 0-d tensor with scale 0 and offset alpha. tests/lora.rs writes them to .safetensors files
and applies them at run time; here they are merged the way kohya-ss / ComfyUI merge them:

  linear  W' = W + m * (alpha / r) * up @ down           (alpha absent: alpha = r, PEFT too)
  LoCon   W' = W + m * (alpha / r) * (up.reshape(OC, r) @ down.reshape(r, IC*KH*KW)).reshape(W)
  diff    W' = W + m * diff;   diff_b: b' = b + m * diff_b
  bigG    kohya's te2 keys name HF q_proj/k_proj/v_proj: merged into those HF weights (open_clip's
          fused in_proj_weight is their concatenation)

Outputs (raw little-endian f32, row-major):
  unet_a.f32      [4, 16, 16]  UNet with LoRA A (kohya, ldm names, LoCon, m = 1) at t = 500
  unet_ab.f32     [4, 16, 16]  LoRA A (m = 0.8) + LoRA B (kohya diffusers names + ComfyUI
                               diff/diff_b, m = -0.5)
  clip_l_last.f32 [77, 128]    CLIP-L + te1 LoRA, first chunk, last_hidden_state
  clip_g_last.f32 [77, 128]    bigG + te2 LoRA (q/k/v of the fused projection), first chunk
  clip_g_pooled.f32 [2, 96]    its pooled output
  wan.f32         [16, 2, 4, 6] Wan T2V + PEFT/ComfyUI/kohya LoRA (m = 0.7)

Run: /work/pyref/bin/python tools/reference/make_lora_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from diffusers import UNet2DConditionModel, WanTransformer3DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
OUT = os.path.join(ROOT, "lora")
MASK = (1 << 64) - 1


def hash_values(n, seed):
    with np.errstate(over="ignore"):
        s = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + np.arange(n, dtype=np.uint64)
        z = s + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def from_recipe(r):
    n = int(np.prod(r["shape"])) if r["shape"] else 1
    v = hash_values(n, r["seed"]) * np.float32(r["scale"]) + np.float32(r["offset"])
    return torch.from_numpy(v.astype(np.float32).reshape(r["shape"]))


def load_recipe(model, recipe):
    sd = {r["name"]: from_recipe(r) for r in recipe}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing), (missing, unexpected)


def read(path, entry):
    a = np.fromfile(os.path.join(ROOT, path, entry["file"]), dtype="<f4")
    return torch.from_numpy(a.reshape(entry["shape"]))


def write(name, t):
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


class Lora:
    """A LoRA file as a recipe, and its merge into a state dict."""

    def __init__(self, seed):
        self.recipe, self.seed = [], seed

    def tensor(self, key, shape, scale):
        r = {"name": key, "shape": list(shape), "seed": self.seed, "scale": scale, "offset": 0.0}
        self.seed += 1
        self.recipe.append(r)
        return from_recipe(r)

    def alpha(self, key, value):
        self.recipe.append({"name": key, "shape": [], "seed": 0, "scale": 0.0, "offset": value})
        return value

    def lowrank(self, sd, target, key, down_name, up_name, alpha_name, rank, alpha, mult,
                conv_kernel=None, rows=None):
        """Adds `key.<down>`/`<up>`/`alpha` and merges them into `sd[target]` (optionally only
        `rows` of it, for a slice of a fused weight)."""
        w = sd[target]
        out_dim = w.shape[0] if rows is None else rows[1] - rows[0]
        in_dim = w.shape[1]
        if conv_kernel is None:
            down = self.tensor(f"{key}.{down_name}", [rank, in_dim], math.sqrt(3.0 / in_dim))
            up = self.tensor(f"{key}.{up_name}", [out_dim, rank], 0.6 / math.sqrt(rank))
            delta = up @ down
        else:
            kh, kw = conv_kernel
            down = self.tensor(f"{key}.{down_name}", [rank, in_dim, kh, kw],
                               math.sqrt(3.0 / (in_dim * kh * kw)))
            up = self.tensor(f"{key}.{up_name}", [out_dim, rank, 1, 1], 0.6 / math.sqrt(rank))
            delta = (up.reshape(out_dim, rank) @ down.reshape(rank, -1)).reshape(out_dim, in_dim, kh, kw)
        scale = mult
        if alpha is not None:
            self.alpha(f"{key}.{alpha_name}", alpha)
            scale = mult * alpha / rank
        sd = dict(sd)
        if rows is None:
            sd[target] = w + scale * delta
        else:
            w = w.clone()
            w[rows[0]:rows[1]] += scale * delta
            sd[target] = w
        return sd

    def kohya(self, sd, target, key, rank, alpha, mult, conv_kernel=None, rows=None):
        return self.lowrank(sd, target, key, "lora_down.weight", "lora_up.weight", "alpha", rank,
                            alpha, mult, conv_kernel, rows)

    def peft(self, sd, target, key, rank, mult):
        return self.lowrank(sd, target, key, "lora_A.weight", "lora_B.weight", None, rank, None,
                            mult)

    def diff(self, sd, target, key, mult, bias=False):
        w = sd[target]
        d = self.tensor(f"{key}.{'diff_b' if bias else 'diff'}", list(w.shape), 0.05)
        sd = dict(sd)
        sd[target] = w + mult * d
        return sd

    def unknown(self, key):
        self.tensor(f"{key}.lora_down.weight", [2, 8], 0.1)
        self.tensor(f"{key}.lora_up.weight", [8, 2], 0.1)


# (kohya key, diffusers weight, rank, alpha, conv kernel) of LoRA A, ldm module paths.
UNET_A = [
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
     "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", 4, 2.0, None),
    ("lora_unet_output_blocks_3_1_proj_in",
     "up_blocks.1.attentions.0.proj_in.weight", 4, None, None),
    ("lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj",
     "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj.weight", 8, 4.0, None),
    ("lora_unet_time_embed_0", "time_embedding.linear_1.weight", 4, 4.0, None),
    ("lora_unet_input_blocks_4_0_emb_layers_1",
     "down_blocks.1.resnets.0.time_emb_proj.weight", 2, 1.0, None),
    # LoCon: 3x3, stride-2 3x3, 1x1
    ("lora_unet_input_blocks_4_0_in_layers_2", "down_blocks.1.resnets.0.conv1.weight", 4, 8.0,
     (3, 3)),
    ("lora_unet_input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv.weight", 4, 2.0,
     (3, 3)),
    ("lora_unet_input_blocks_4_0_skip_connection",
     "down_blocks.1.resnets.0.conv_shortcut.weight", 2, 2.0, (1, 1)),
]
# LoRA B: kohya keys with diffusers module paths.
UNET_B = [
    ("lora_unet_down_blocks_2_attentions_1_transformer_blocks_1_attn2_to_k",
     "down_blocks.2.attentions.1.transformer_blocks.1.attn2.to_k.weight", 4, 4.0, None),
    ("lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_attn1_to_out_0",
     "up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_out.0.weight", 4, 1.0, None),
    ("lora_unet_up_blocks_1_resnets_2_conv2", "up_blocks.1.resnets.2.conv2.weight", 4, 4.0,
     (3, 3)),
]


def unet_case(index):
    ix = json.load(open(os.path.join(ROOT, "unet_sdxl", "index.json")))
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in ix["config"].items()}
    unet = UNet2DConditionModel(**cfg).eval()
    load_recipe(unet, ix["tensors"])
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    x = read("unet_sdxl", ix["x"])[None]
    ctx = read("unet_sdxl", ix["context"])[None]
    pooled = read("unet_sdxl", ix["text_embeds"])[None]
    time_ids = read("unet_sdxl", ix["time_ids"])[None]

    def run(sd):
        unet.load_state_dict(sd)
        with torch.no_grad():
            return unet(x, torch.tensor([500.0]), encoder_hidden_states=ctx,
                        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample[0]

    def lora_a(sd, mult, lo):
        for key, target, rank, alpha, kernel in UNET_A:
            sd = lo.kohya(sd, target, key, rank, alpha, mult, kernel)
        return sd

    def lora_b(sd, mult, lo):
        for key, target, rank, alpha, kernel in UNET_B:
            sd = lo.kohya(sd, target, key, rank, alpha, mult, kernel)
        # ComfyUI full differences on conv_out (ldm out.2)
        sd = lo.diff(sd, "conv_out.weight", "diffusion_model.out.2", mult)
        sd = lo.diff(sd, "conv_out.bias", "diffusion_model.out.2", mult, bias=True)
        return sd

    a = Lora(5000)
    sd_a = lora_a(base, 1.0, a)
    a.unknown("lora_unet_input_blocks_99_1_proj_in")
    a.unknown("lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_zz")
    out_a = run(sd_a)
    # Same recipes (same seeds) at other multipliers.
    sd_ab = lora_b(lora_a(base, 0.8, Lora(5000)), -0.5, b := Lora(6000))
    out_ab = run(sd_ab)
    out_base = run(base)
    print("unet: base std", float(out_base.std()), "delta A", float((out_a - out_base).std()),
          "delta AB", float((out_ab - out_base).std()))
    index["unet"] = {
        "timestep": 500.0,
        "lora_a": a.recipe,
        "lora_b": b.recipe,
        "unknown_a": ["lora_unet_input_blocks_99_1_proj_in",
                      "lora_unet_output_blocks_2_1_transformer_blocks_0_attn1_to_zz"],
        "out_a": write("unet_a.f32", out_a),
        "mult_a": 0.8,
        "mult_b": -0.5,
        "out_ab": write("unet_ab.f32", out_ab),
    }


def clip_case(index):
    ix = json.load(open(os.path.join(ROOT, "clip_text", "index.json")))
    common = dict(vocab_size=49408, hidden_size=128, num_attention_heads=2, num_hidden_layers=3,
                  max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=49406,
                  eos_token_id=49407)
    for m in ix["models"]:
        if m["kind"] == "clip_l":
            cfg = CLIPTextConfig(intermediate_size=256, hidden_act="quick_gelu",
                                 pad_token_id=49407, **common)
            model = CLIPTextModel(cfg).eval()
        else:
            cfg = CLIPTextConfig(intermediate_size=512, hidden_act="gelu", projection_dim=96,
                                 pad_token_id=0, **common)
            model = CLIPTextModelWithProjection(cfg).eval()
        load_recipe(model, m["tensors"])
        sd = dict(model.state_dict())
        # transformers 5's CLIPTextModel state dict has no "text_model." prefix.
        p = "text_model.encoder.layers" if "text_model.final_layer_norm.weight" in sd \
            else "encoder.layers"
        if m["kind"] == "clip_l":
            lo = Lora(7000)
            mods = [("lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                     f"{p}.0.self_attn.q_proj.weight", 4, 2.0),
                    ("lora_te1_text_model_encoder_layers_1_mlp_fc1", f"{p}.1.mlp.fc1.weight", 4,
                     None),
                    ("lora_te1_text_model_encoder_layers_2_self_attn_out_proj",
                     f"{p}.2.self_attn.out_proj.weight", 8, 4.0)]
        else:
            lo = Lora(8000)
            mods = [("lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
                     f"{p}.0.self_attn.q_proj.weight", 4, 2.0),
                    ("lora_te2_text_model_encoder_layers_0_self_attn_v_proj",
                     f"{p}.0.self_attn.v_proj.weight", 4, 4.0),
                    ("lora_te2_text_model_encoder_layers_1_self_attn_k_proj",
                     f"{p}.1.self_attn.k_proj.weight", 2, 1.0),
                    ("lora_te2_text_model_encoder_layers_1_mlp_fc2", f"{p}.1.mlp.fc2.weight", 4,
                     4.0),
                    ("lora_te2_text_model_encoder_layers_2_self_attn_out_proj",
                     f"{p}.2.self_attn.out_proj.weight", 4, None)]
        for key, target, rank, alpha in mods:
            sd = lo.kohya(sd, target, key, rank, alpha, 1.0)
        model.load_state_dict(sd)
        ids = torch.tensor(m["tokens"], dtype=torch.long)
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        kind = m["kind"]
        entry = {"lora": lo.recipe, "last": write(f"{kind}_last.f32", out.last_hidden_state[0])}
        if kind == "clip_g":
            entry["pooled"] = write(f"{kind}_pooled.f32", out.text_embeds)
        print(kind, "last std", float(out.last_hidden_state.std()))
        index[kind] = entry


WAN = "blocks"


def wan_case(index):
    ix = json.load(open(os.path.join(ROOT, "wan_dit", "index.json")))
    from make_wan_dit_fixtures import BASE
    model = WanTransformer3DModel(in_channels=16, **BASE).eval()
    case = ix["t2v"]
    load_recipe(model, case["tensors"])
    sd = dict(model.state_dict())
    mult = 0.7
    lo = Lora(9000)
    # PEFT (no alpha: scale = m)
    sd = lo.peft(sd, "blocks.0.attn1.to_q.weight", "diffusion_model.blocks.0.self_attn.q", 4, mult)
    sd = lo.peft(sd, "blocks.1.attn2.to_out.0.weight", "diffusion_model.blocks.1.cross_attn.o", 4,
                 mult)
    sd = lo.peft(sd, "blocks.0.ffn.net.0.proj.weight", "diffusion_model.blocks.0.ffn.0", 8, mult)
    # ComfyUI diff / diff_b
    sd = lo.diff(sd, "blocks.0.attn2.to_k.weight", "diffusion_model.blocks.0.cross_attn.k", mult)
    sd = lo.diff(sd, "blocks.1.ffn.net.2.bias", "diffusion_model.blocks.1.ffn.2", mult, bias=True)
    # kohya (musubi-tuner) with alpha
    sd = lo.kohya(sd, "blocks.1.attn1.to_v.weight", "lora_unet_blocks_1_self_attn_v", 4, 2.0, mult)
    model.load_state_dict(sd)
    x = read("wan_dit", case["x"])[None]
    text = read("wan_dit", ix["text"])[None]
    with torch.no_grad():
        out = model(hidden_states=x, timestep=torch.tensor([case["timestep"]]),
                    encoder_hidden_states=text, return_dict=False)[0]
    print("wan out std", float(out.std()))
    index["wan"] = {"lora": lo.recipe, "multiplier": mult, "out": write("wan.f32", out[0])}


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
    }
    unet_case(index)
    clip_case(index)
    wan_case(index)
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    main()
