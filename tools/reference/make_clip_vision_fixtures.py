#!/usr/bin/env python3
"""Reference outputs of a tiny CLIP vision encoder (HF `CLIPVisionModel`, the CLIP-H/14 layout
Wan2.1 I2V uses) and of the image preprocessing, for tests/clip_vision.rs.

Weights and input images are not stored: they come from the counter-based hash that
tests/clip_vision.rs reproduces bit for bit (same as make_clip_text_fixtures.py),

    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i)     (i = element index, wrapping u64)
    u = float32(z >> 40) / 2**23 - 1                   (exact in f32, in [-1, 1))
    weight = u * scale + offset                        (f32 arithmetic)
    pixel  = uint8(floor((u + 1) * 128))               (HWC, RGB interleaved)

Outputs (raw little-endian f32, row-major), listed in index.json:
  model "vit_80": width 160 (2 heads of 80, the CLIP-H head size), 3 layers, 56 px, patch 14
    pixels        [3, 56, 56]  the official Wan preprocessing of the 70x45 hash image
                  (to_tensor, *2-1, F.interpolate bicubic align_corners=False without antialias,
                  *0.5+0.5, CLIP mean/std)
    penultimate   [17, 160]    hidden_states[-2] for those pixels (all tokens, no post-LN)
    layer1        [17, 160]    hidden_states[1]
  comfyui cases: ComfyUI's clip_preprocess (short side to `size` with antialiased bicubic and a
    centre crop, or straight to size x size; rounded to 8 bits; CLIP mean/std), sampled.
  model "vit_h_geometry": the CLIP-H/14 shapes with 2 layers; a 832x480 image through the Wan
    preprocessing (pixels sampled at rows/cols) and hidden_states[-2] (flattened, every 23rd).
  resize cases: torch F.interpolate(mode="bicubic", align_corners=False, antialias=False/True) of
    a hash image (as float in [0, 1], NCHW), sampled at the listed output rows/cols (the whole
    output when it is small).

Run: /work/pyref/bin/python tools/reference/make_clip_vision_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "clip_vision")
MASK = (1 << 64) - 1
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def hash_values(n, seed):
    with np.errstate(over="ignore"):
        s = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK) + np.arange(n, dtype=np.uint64)
        z = s + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 23) - np.float32(1.0)


def hash_image(w, h, seed):
    """uint8 [h, w, 3]."""
    u = hash_values(w * h * 3, seed)
    return np.floor((u + np.float32(1.0)) * np.float32(128.0)).astype(np.uint8).reshape(h, w, 3)


def recipe_for(name, shape):
    """(scale, offset) so that activations stay O(1)."""
    if name.endswith("class_embedding"):
        return 1.0, 0.0
    if name.endswith("position_embedding.weight"):
        return 0.5, 0.0
    if "layer_norm" in name or "layrnorm" in name:
        return (0.2, 1.0) if name.endswith("weight") else (0.1, 0.0)
    if name.endswith("bias"):
        return 0.1, 0.0
    # Linear / conv weights [out, in, ...]: uniform with std 1/sqrt(fan_in).
    fan_in = int(np.prod(shape[1:]))
    return math.sqrt(3.0) / math.sqrt(fan_in), 0.0


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
        recipe.append({"name": name, "shape": shape, "seed": seed, "scale": scale, "offset": offset})
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    assert not unexpected and all(m.endswith("position_ids") for m in missing), (missing, unexpected)
    return recipe


def write(name, t):
    arr = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).astype("<f4")
    arr.tofile(os.path.join(OUT, name))
    return {"file": name, "shape": list(arr.shape)}


def wan_preprocess(img, size):
    """wan/modules/clip.py CLIPModel.visual on an image prepared as in wan/image2video.py."""
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)  # TF.to_tensor
    x = x.sub(0.5).div(0.5)[None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def comfyui_preprocess(img, size, crop):
    """ComfyUI comfy/clip_vision.py clip_preprocess (the CLIPVisionEncode node, crop "center" or
    "none") on an IMAGE tensor [1, H, W, 3] made from 8-bit RGB."""
    image = torch.from_numpy(img).float().div(255.0)[None]
    mean = torch.tensor(MEAN, dtype=image.dtype)
    std = torch.tensor(STD, dtype=image.dtype)
    image = image.movedim(-1, 1)
    if not (image.shape[2] == size and image.shape[3] == size):
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            scale_size = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            scale_size = (size, size)
        image = F.interpolate(image, size=scale_size, mode="bicubic", antialias=True)
        h = (image.shape[2] - size) // 2
        w = (image.shape[3] - size) // 2
        image = image[:, :, h:h + size, w:w + size]
    image = torch.clip((255.0 * image), 0, 255).round() / 255.0
    return ((image - mean.view([3, 1, 1])) / std.view([3, 1, 1]))[0]


def comfyui_cases():
    cases = []
    for (w, h, seed, size, crop) in [(70, 45, 77, 56, True), (70, 45, 77, 56, False),
                                     (40, 60, 5, 224, True), (300, 500, 8, 224, True)]:
        y = comfyui_preprocess(hash_image(w, h, seed), size, crop)
        assert list(y.shape) == [3, size, size]
        rows = cols = sample_idx(size)
        ys = y[:, rows][:, :, cols].numpy()
        name = f"comfyui_{w}x{h}_to_{size}_{'crop' if crop else 'nocrop'}.f32"
        cases.append({"w": w, "h": h, "seed": seed, "size": size, "crop": crop,
                      "rows": rows, "cols": cols, "values": write(name, ys)})
    return cases


def model_entry():
    cfg = CLIPVisionConfig(
        hidden_size=160,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPVisionModel(cfg).eval()
    recipe = build(model, 2000)
    img_w, img_h, img_seed = 70, 45, 77
    pixels = wan_preprocess(hash_image(img_w, img_h, img_seed), 56)
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == 4
    pen = hs[-2][0]
    print("vit_80 penultimate std", float(pen.std()), "max", float(pen.abs().max()))
    return {
        "kind": "vit_80",
        "image": {"w": img_w, "h": img_h, "seed": img_seed},
        "tensors": recipe,
        "pixels": write("vit_80_pixels.f32", pixels[0].numpy()),
        "penultimate": write("vit_80_penultimate.f32", pen.numpy()),
        "layer1": write("vit_80_layer1.f32", hs[1][0].numpy()),
    }


def geometry_entry():
    """CLIP-H/14 geometry (width 1280, 16 heads of 80, ffn 5120, 224 px, 257 tokens) with only 2
    layers, on a 832x480 image through the Wan preprocessing. Outputs are strided samples."""
    cfg = CLIPVisionConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=2,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPVisionModel(cfg).eval()
    recipe = build(model, 3000)
    img_w, img_h, img_seed = 832, 480, 99
    pixels = wan_preprocess(hash_image(img_w, img_h, img_seed), 224)
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True)
    pen = out.hidden_states[-2][0]
    assert list(pen.shape) == [257, 1280]
    stride = 23
    rows = cols = sample_idx(224)
    print("vit_h_geometry penultimate std", float(pen.std()))
    return {
        "kind": "vit_h_geometry",
        "image": {"w": img_w, "h": img_h, "seed": img_seed},
        "tensors": recipe,
        "pixel_rows": rows,
        "pixel_cols": cols,
        "pixels_sampled": write("vit_h_pixels_sampled.f32", pixels[0][:, rows][:, :, cols].numpy()),
        "out_stride": stride,
        "penultimate_strided": write("vit_h_penultimate_strided.f32", pen.reshape(-1)[::stride].numpy()),
    }


def sample_idx(n):
    if n <= 32:
        return list(range(n))
    idx = sorted(set(list(range(0, n, 9)) + [1, 2, n - 3, n - 2, n - 1]))
    return idx


def resize_cases():
    cases = []
    for (w, h, seed) in [(40, 60, 5), (500, 300, 6)]:
        img = hash_image(w, h, seed)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)[None]
        for (ow, oh) in [(224, 224), (56, 56)]:
            for aa in (False, True):
                y = F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False, antialias=aa)[0]
                rows, cols = sample_idx(oh), sample_idx(ow)
                ys = y[:, rows][:, :, cols].numpy()
                name = f"resize_{w}x{h}_to_{ow}x{oh}_{'aa' if aa else 'plain'}.f32"
                cases.append({
                    "w": w, "h": h, "seed": seed, "out_w": ow, "out_h": oh, "antialias": aa,
                    "rows": rows, "cols": cols, "values": write(name, ys),
                })
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset; "
        "pixels floor((u + 1) * 128)",
        "mean": MEAN,
        "std": STD,
        "models": [model_entry(), geometry_entry()],
        "resize": resize_cases(),
        "comfyui": comfyui_cases(),
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


if __name__ == "__main__":
    main()
