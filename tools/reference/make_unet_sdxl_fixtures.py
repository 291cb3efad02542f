#!/usr/bin/env python3
"""Reference output of a tiny SDXL-shaped UNet (diffusers UNet2DConditionModel) for
tests/unet_sdxl.rs.

The weights are not stored: every tensor comes from the counter-based hash of
make_vae_sdxl_fixtures.py, which tests/unet_sdxl.rs reproduces bit for bit,

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

and the recipe (diffusers name, shape, seed, scale, offset) goes to index.json.

The model has SDXL's structure at small widths: 3 levels (32, 64, 128 channels), the first
without attention, transformer depth (1, 1, 2) and 2 in the middle, head dim 64 (1, 1, 2 heads),
2 res blocks per level, 32 groups, linear proj_in/proj_out, GEGLU, the "text_time" added
embedding (pooled 32 + 6 x 8 sinusoidal size ids), cross-attention dim 64.

Files (raw little-endian f32, row-major), per case c in index.json "cases":
  x.f32 [4, 16, 16]; context.f32 [77, 64]; text_embeds.f32 [32]; time_ids.f32 [6]
  out_<t>.f32 [4, 16, 16]   unet(x, t, context, added_cond_kwargs).sample for timestep t
and sdxl_shapes.json: [diffusers name, shape] of every tensor of the real SDXL UNet.

Run: /work/pyref/bin/python tools/reference/make_unet_sdxl_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from diffusers import UNet2DConditionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "unet_sdxl")
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
    """(scale, offset) so that activations stay O(1)."""
    if "norm" in name:
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
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


CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 128),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    # diffusers' attention_head_dim is the number of heads (SDXL: [5, 10, 20]).
    attention_head_dim=(1, 1, 2),
    cross_attention_dim=64,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
    use_linear_projection=True,
    norm_num_groups=32,
)

SDXL_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    use_linear_projection=True,
    norm_num_groups=32,
)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG).eval()
    recipe = build(unet, 3000)
    x = torch.from_numpy(hash_values(4 * 16 * 16, 81).reshape(1, 4, 16, 16))
    ctx = torch.from_numpy(hash_values(77 * 64, 82).reshape(1, 77, 64))
    pooled = torch.from_numpy(hash_values(32, 83).reshape(1, 32))
    time_ids = torch.tensor([[1024.0, 768.0, 16.0, 8.0, 1024.0, 1024.0]])
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in CONFIG.items()},
        "tensors": recipe,
        "x": write("x.f32", x[0]),
        "context": write("context.f32", ctx[0]),
        "text_embeds": write("text_embeds.f32", pooled[0]),
        "time_ids": write("time_ids.f32", time_ids[0]),
        "cases": [],
    }
    # The added-condition vector y as ldm builds it (pooled ++ sinusoid(time_ids)), for the
    # test of our helper.
    with torch.no_grad():
        te = unet.add_time_proj(time_ids.flatten()).reshape(1, -1)
        y = torch.cat([pooled, te], dim=-1)
        index["y"] = write("y.f32", y[0])
        for t in [999.0, 500.0]:
            out = unet(x, torch.tensor([t]), encoder_hidden_states=ctx,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
            print("t", t, "out std", float(out.std()))
            index["cases"].append({"timestep": t, "out": write(f"out_{int(t)}.f32", out[0])})
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    # The real SDXL UNet's tensor names and shapes (no values), for config inference and graph
    # building at full size (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json).
    with torch.device("meta"):
        sdxl = UNet2DConditionModel(**SDXL_CONFIG)
    shapes = [[k, list(v.shape)] for k, v in sorted(sdxl.state_dict().items())]
    with open(os.path.join(OUT, "sdxl_shapes.json"), "w") as f:
        json.dump(shapes, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
