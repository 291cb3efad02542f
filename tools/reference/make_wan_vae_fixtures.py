#!/usr/bin/env python3
"""Reference outputs of a tiny Wan2.1 video VAE (diffusers AutoencoderKLWan) for tests/wan_vae.rs.

The weights are not stored: every tensor is generated from the counter-based hash that
tests/wan_vae.rs reproduces bit for bit (the same one as make_vae_sdxl_fixtures.py),

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

and the recipe (diffusers name, shape, seed, scale, offset per tensor) goes to index.json.

Model: Wan2.1's structure at a small width: base_dim 16, z_dim 4, dim_mult [1, 2, 4, 4],
num_res_blocks 1, temperal_downsample [False, True, True] (so the decoder upsamples time in its
first two up blocks, like the real model): 8x spatial, 4x temporal.
Files (raw little-endian f32, row-major):
  latent.f32   [4, 5, 4, 4]       a raw latent (no mean/std normalisation: diffusers does that
                                  in the pipeline, outside the VAE)
  decoded.f32  [3, 17, 32, 32]    vae.decode(latent).sample (per-frame cached decode, clamped)
  video.f32    [3, 9, 32, 32]     an input video in [-1, 1]
  encoded.f32  [4, 3, 4, 4]       vae.encode(video).latent_dist.mean (frame 0, then chunks of 4;
                                  raw, not normalised)

Second model, z16_*.f32 and z16_index.json: Wan2.1's real z_dim 16 and num_res_blocks 2 at
base_dim 32; latent [16, 2, 2, 2] -> [3, 5, 16, 16]; video [3, 5, 16, 16] -> [16, 2, 2, 2].

Run: /work/pyref/bin/python tools/reference/make_wan_vae_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from diffusers import AutoencoderKLWan

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "wan_vae")
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
        return (0.2, 1.0)
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


def run(prefix, cfg, base_seed, latent_shape, video_shape):
    vae = AutoencoderKLWan(**cfg).eval()
    recipe = build(vae, base_seed)
    z, t, h, w = latent_shape
    latent = torch.from_numpy(hash_values(z * t * h * w, 79).reshape(1, z, t, h, w) * np.float32(1.5))
    c, f, vh, vw = video_shape
    video = torch.from_numpy(hash_values(c * f * vh * vw, 80).reshape(1, c, f, vh, vw))
    with torch.no_grad():
        decoded = vae.decode(latent).sample
        encoded = vae.encode(video).latent_dist.mean
    print(prefix or "tiny", "decoded", tuple(decoded.shape), "std", float(decoded.std()), "at +-1:",
          float((decoded.abs() >= 1).float().mean()), "encoded", tuple(encoded.shape),
          "std", float(encoded.std()))
    return {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "config": cfg,
        "tensors": recipe,
        "latent": write(f"{prefix}latent.f32", latent[0]),
        "decoded": write(f"{prefix}decoded.f32", decoded[0]),
        "video": write(f"{prefix}video.f32", video[0]),
        "encoded": write(f"{prefix}encoded.f32", encoded[0]),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    tiny = dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                attn_scales=[], temperal_downsample=[False, True, True])
    # Wan2.1's real z (16) and res blocks (2), a third of its width (32 instead of 96).
    z16 = dict(base_dim=32, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
               attn_scales=[], temperal_downsample=[False, True, True])
    for name, index in [
        ("index.json", run("", tiny, 3000, (4, 5, 4, 4), (3, 9, 32, 32))),
        ("z16_index.json", run("z16_", z16, 5000, (16, 2, 2, 2), (3, 5, 16, 16))),
    ]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
