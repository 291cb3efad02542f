#!/usr/bin/env python3
"""Reference outputs of tiny CLIP text encoders (CLIP-L and OpenCLIP bigG style) for
tests/clip_text.rs.

The weights are not stored (a 49408-token embedding alone would be megabytes): every tensor is
generated from a counter-based hash that tests/clip_text.rs reproduces bit for bit,

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

and the recipe (name, shape, seed, scale, offset per tensor) is written to index.json with the
token ids and the output files (raw little-endian f32, row-major [chunks, tokens, width]).

Outputs per model:
  penultimate  hidden_states[-2] (no final LayerNorm; what SDXL uses)
  last         last_hidden_state (after final_layer_norm, as transformers returns it)
  pooled       (bigG only) text_projection(final_layer_norm(h)[first EOS position])

Run: /work/pyref/bin/python tools/reference/make_clip_text_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_text")
MASK = (1 << 64) - 1
BOS, EOS = 49406, 49407


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
    if name.endswith("token_embedding.weight"):
        return 1.0, 0.0
    if name.endswith("position_embedding.weight"):
        return 0.5, 0.0
    if "layer_norm" in name:
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
    if name.endswith("bias"):
        return 0.1, 0.0
    # Linear weights [out, in]: uniform with std 1/sqrt(in).
    return math.sqrt(3.0) / math.sqrt(shape[-1]), 0.0


def build(model, base_seed):
    sd = model.state_dict()
    names = sorted(k for k in sd if not k.endswith("position_ids"))
    recipe, new_sd = [], {}
    for i, name in enumerate(names):
        shape = list(sd[name].shape)
        scale, offset = recipe_for(name, shape)
        seed = base_seed + i
        n = int(np.prod(shape))
        w = hash_values(n, seed) * np.float32(scale) + np.float32(offset)
        new_sd[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append(
            {"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset}
        )
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing), (missing, unexpected)
    return recipe


def chunks(pad):
    rng = np.random.default_rng(7)
    a = [BOS, 320, 1125, 539, 3065, 593, 518, 2867, EOS]
    b = [BOS] + [int(x) for x in rng.integers(1, 49400, size=30)] + [EOS]
    out = []
    for c in (a, b):
        out.append(c + [pad] * (77 - len(c)))
    return out


def write(name, t):
    arr = t.detach().to(torch.float32).contiguous().numpy().astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


def run(kind, model, base_seed, pad, act):
    recipe = build(model, base_seed)
    model.eval()
    tokens = chunks(pad)
    ids = torch.tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    entry = {
        "kind": kind,
        "activation": act,
        "pad": pad,
        "tokens": tokens,
        "tensors": recipe,
        "penultimate": write(f"{kind}_penultimate.f32", out.hidden_states[-2]),
        "last": write(f"{kind}_last.f32", out.last_hidden_state),
    }
    if hasattr(model, "text_projection"):
        tm = model.text_model
        with torch.no_grad():
            normed = tm.final_layer_norm(out.hidden_states[-1])
            eos = [row.index(EOS) for row in tokens]
            pooled = model.text_projection(normed[torch.arange(len(tokens)), torch.tensor(eos)])
        assert torch.allclose(pooled, out.text_embeds, atol=1e-5), "EOS convention differs"
        entry["pooled"] = write(f"{kind}_pooled.f32", pooled)
    h = out.hidden_states[-2]
    print(kind, "penultimate std", float(h.std()), "max", float(h.abs().max()))
    return entry


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    common = dict(
        vocab_size=49408,
        hidden_size=128,
        num_attention_heads=2,
        num_hidden_layers=3,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    l_cfg = CLIPTextConfig(intermediate_size=256, hidden_act="quick_gelu", pad_token_id=EOS, **common)
    g_cfg = CLIPTextConfig(
        intermediate_size=512, hidden_act="gelu", projection_dim=96, pad_token_id=0, **common
    )
    models = [
        run("clip_l", CLIPTextModel(l_cfg), 100, EOS, "quick_gelu"),
        run("clip_g", CLIPTextModelWithProjection(g_cfg), 1000, 0, "gelu"),
    ]
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "models": models,
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
