#!/usr/bin/env python3
"""Reference output of a tiny Wan2.1 DiT (diffusers WanTransformer3DModel) for tests/wan_dit.rs.

Weights are not stored: every tensor comes from the counter-based hash of
make_unet_sdxl_fixtures.py (reproduced in tests/wan_dit.rs), recipe in index.json.
Two models: T2V (in 16) and I2V (in 36, image_dim 48). Head dim 128 (2 heads), 2 layers.
Inputs: x [C, 2, 4, 6], timestep 500, text [8, 64] (zero-padded to 512 rows for I2V, as the
diffusers processor splits the context at len - 512), image [5, 48].
Run: /work/pyref/bin/python tools/reference/make_wan_dit_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from diffusers import WanTransformer3DModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "wan_dit")
MASK = (1 << 64) - 1


def hash_values(n, seed):
    with np.errstate(over="ignore"):
        s = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + np.arange(n, dtype=np.uint64)
        z = s + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def recipe_for(name, shape):
    if "norm" in name:
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
    if "scale_shift_table" in name:
        return 0.2, 0.0
    if name.endswith("bias"):
        return 0.1, 0.0
    fan_in = int(np.prod(shape[1:]))
    return math.sqrt(3.0) / math.sqrt(fan_in), 0.0


def build(model, base_seed):
    sd = model.state_dict()
    recipe, new_sd = [], {}
    for i, name in enumerate(sorted(sd)):
        shape = list(sd[name].shape)
        scale, offset = recipe_for(name, shape)
        seed = base_seed + i
        w = hash_values(int(np.prod(shape)), seed) * np.float32(scale) + np.float32(offset)
        new_sd[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})
    model.load_state_dict(new_sd, strict=True)
    return recipe


def write(name, t):
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


BASE = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, out_channels=16,
    text_dim=64, freq_dim=256, ffn_dim=512, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    index = {}
    g = torch.Generator().manual_seed(1)
    text = torch.randn(8, 64, generator=g)
    image = torch.randn(5, 48, generator=g)
    index["text"] = write("text.f32", text)
    index["image"] = write("image.f32", image)
    t = torch.tensor([500.0])
    for kind, cin, extra, seed in [("t2v", 16, {}, 1000), ("i2v", 36, {"image_dim": 48, "added_kv_proj_dim": 256}, 3000)]:
        model = WanTransformer3DModel(in_channels=cin, **BASE, **extra).eval()
        recipe = build(model, seed)
        x = torch.randn(1, cin, 2, 4, 6, generator=g)
        ctx = text[None]
        kw = {}
        if kind == "i2v":
            ctx = torch.cat([text, torch.zeros(512 - 8, 64)])[None]
            kw["encoder_hidden_states_image"] = image[None]
        with torch.no_grad():
            out = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False, **kw)[0]
        index[kind] = {"tensors": recipe, "x": write(f"x_{kind}.f32", x[0]), "out": write(f"out_{kind}.f32", out[0]), "timestep": 500.0}
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
