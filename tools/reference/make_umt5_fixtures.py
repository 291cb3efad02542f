#!/usr/bin/env python3
"""Reference outputs of a tiny umT5 encoder (transformers' UMT5EncoderModel) for tests/umt5.rs.

Same weight recipe as make_clip_text_fixtures.py: no weights are stored, every tensor comes from
a counter-based hash that tests/umt5.rs reproduces bit for bit,

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    w = u * scale + offset                             (f32 arithmetic)

index.json holds the recipe (HF names, PyTorch shapes), the token ids of each case, the output
files (raw little-endian f32, row-major [tokens, d_model] = `last_hidden_state[0]`, attention
mask all ones, as the Wan pipeline encodes the real tokens only) and, for the bucket unit test,
`_relative_position_bucket` (bidirectional, 32 buckets, max distance 128) of every relative
position key - query in [-600, 600].

Run: /work/pyref/bin/python tools/reference/make_umt5_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
from transformers import UMT5Config, UMT5EncoderModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "umt5")
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
    if name == "shared.weight":
        return 1.0, 0.0
    if name.endswith("relative_attention_bias.weight"):
        return 1.0, 0.0
    if "layer_norm" in name:
        return 0.2, 1.0
    if name.endswith("SelfAttention.q.weight"):
        # T5 folds the 1/sqrt(d_kv) attention scale into q (its init std is
        # (d_model * d_kv)^-0.5); without it random scores are so sharp that the softmax
        # amplifies any rounding. d_kv = 64.
        return math.sqrt(3.0) / math.sqrt(shape[-1] * 64), 0.0
    # Linear weights [out, in]: uniform with std 1/sqrt(in).
    return math.sqrt(3.0) / math.sqrt(shape[-1]), 0.0


def build(model, base_seed):
    sd = model.state_dict()
    # encoder.embed_tokens.weight is tied to shared.weight.
    names = sorted(k for k in sd if k != "encoder.embed_tokens.weight")
    recipe, new_sd = [], {}
    for i, name in enumerate(names):
        shape = list(sd[name].shape)
        scale, offset = recipe_for(name, shape)
        seed = base_seed + i
        n = int(np.prod(shape))
        w = hash_values(n, seed) * np.float32(scale) + np.float32(offset)
        new_sd[name] = torch.from_numpy(w.astype(np.float32).reshape(shape))
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})
    new_sd["encoder.embed_tokens.weight"] = new_sd["shared.weight"]
    missing, unexpected = model.load_state_dict(new_sd, strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr() or torch.equal(
        model.encoder.embed_tokens.weight, model.shared.weight
    )
    return recipe


def main():
    os.makedirs(OUT, exist_ok=True)
    cfg = UMT5Config(
        vocab_size=1000,
        d_model=128,
        d_kv=64,
        d_ff=256,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        tie_word_embeddings=True,
    )
    assert cfg.dense_act_fn == "gelu_new", cfg.dense_act_fn
    model = UMT5EncoderModel(cfg).eval()
    recipe = build(model, 3000)

    rng = np.random.default_rng(11)
    cases = []
    # 12 tokens; 40 tokens; 200 tokens (relative distances past max_distance / 2 = 64 buckets).
    for n in (12, 40, 200):
        ids = [int(x) for x in rng.integers(0, 1000, size=n - 1)] + [1]  # ends with </s> = 1
        with torch.no_grad():
            out = model(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, n, dtype=torch.long)
            ).last_hidden_state[0]
        name = f"last_{n}.f32"
        arr = out.to(torch.float32).contiguous().numpy().astype("<f4")
        arr.tofile(os.path.join(OUT, name))
        print(n, "std", float(out.std()), "max", float(out.abs().max()))
        cases.append({"tokens": ids, "last": {"file": name, "shape": list(arr.shape)}})

    attn = model.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-600, 601, dtype=torch.long)
    buckets = attn._relative_position_bucket(rel).tolist()

    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "config": cfg.to_diff_dict(),
        "tensors": recipe,
        "cases": cases,
        "buckets": {"num_buckets": 32, "max_distance": 128, "first": -600, "values": buckets},
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
