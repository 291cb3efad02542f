#!/usr/bin/env python3
"""Reference outputs of a tiny SDXL-style VAE (diffusers AutoencoderKL) for tests/vae_sdxl.rs.

The weights are not stored: every tensor is generated from the counter-based hash that
tests/vae_sdxl.rs reproduces bit for bit (the same one as make_clip_text_fixtures.py),

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

and the recipe (diffusers name, shape, seed, scale, offset per tensor) goes to index.json.

Two models: "tiny" (channels [32, 64], 2 res blocks, 8 groups: 2x) and "sdxl" (the real
shapes: channels [128, 256, 512, 512], 2 res blocks, 32 groups: 8x; 84M random weights).
Files per model (raw little-endian f32, row-major):
  <kind>_latent.f32   [4, h, w]      a *scaled* latent, as a sampler produces it
  <kind>_decoded.f32  [3, H, W]      vae.decode(latent / 0.13025).sample, NOT clamped
  <kind>_image.f32    [3, H', W']    an input image in [-1, 1]
  <kind>_encoded.f32  [4, H'/f, W'/f] vae.encode(image).latent_dist.mean * 0.13025

Run: /work/pyref/bin/python tools/reference/make_vae_sdxl_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from diffusers import AutoencoderKL

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "vae_sdxl")
MASK = (1 << 64) - 1
SCALE = 0.13025


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
    names = sorted(sd)
    recipe, new_sd = [], {}
    for i, name in enumerate(names):
        shape = list(sd[name].shape)
        scale, offset = recipe_for(name, shape)
        seed = base_seed + i
        n = int(np.prod(shape))
        w = hash_values(n, seed) * np.float32(scale) + np.float32(offset)
        new_sd[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})
    model.load_state_dict(new_sd, strict=True)
    return recipe


def write(name, t):
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


def run(kind, cfg, base_seed, latent_hw, image_hw):
    vae = AutoencoderKL(**cfg).eval()
    recipe = build(vae, base_seed)
    lh, lw = latent_hw
    ih, iw = image_hw
    latent = torch.from_numpy(hash_values(4 * lh * lw, 77).reshape(1, 4, lh, lw) * np.float32(1.5))
    image = torch.from_numpy(hash_values(3 * ih * iw, 78).reshape(1, 3, ih, iw))
    with torch.no_grad():
        decoded = vae.decode(latent / SCALE).sample
        encoded = vae.encode(image).latent_dist.mean * SCALE
    print(kind, "decoded std", float(decoded.std()), "outside [-1,1]:",
          float((decoded.abs() > 1).float().mean()), "encoded std", float(encoded.std()))
    return {
        "kind": kind,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "groups": cfg["norm_num_groups"],
        "tensors": recipe,
        "latent": write(f"{kind}_latent.f32", latent[0]),
        "decoded": write(f"{kind}_decoded.f32", decoded[0]),
        "image": write(f"{kind}_image.f32", image[0]),
        "encoded": write(f"{kind}_encoded.f32", encoded[0]),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    common = dict(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=SCALE)
    # Tiny: 2 levels (2x), 8 groups.
    tiny = dict(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=64,
        **common,
    )
    # SDXL's real shapes (stabilityai/sdxl-vae config.json), random weights, small images.
    sdxl = dict(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
        **common,
    )
    models = [
        run("tiny", tiny, 500, (8, 8), (64, 64)),
        run("sdxl", sdxl, 2000, (4, 4), (32, 32)),
    ]
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "models": models,
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
