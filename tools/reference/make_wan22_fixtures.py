#!/usr/bin/env python3
"""End-to-end reference of Wan2.2 I2V-A14B (two experts, no CLIP) on tiny components, for the
Rust Wan2.2 pipeline test. Writes tests/fixtures/wan22/ (index.json + raw arrays).

Wan2.2 I2V-A14B is two DiTs with Wan2.1-I2V's architecture (in 36 = 16 noise + 4 mask + 16 image
latent channels) but without the CLIP image branch (no img_emb.*, no k_img / v_img): the image
enters only through the latent condition y. A high-noise expert runs while the timestep is
>= boundary * 1000, a low-noise expert after; each has its own CFG scale. No image encoder.

Components (the weights are never stored; each file is a recipe list, see below):
  high    diffusers WanTransformer3DModel exactly like make_wan_pipeline_fixtures.build_dit()
          (dim 256, 2 heads x 128, 2 layers, ffn 512, in 36, out 16, text 128, freq 256,
          cross_attn_norm, qk_norm rms_norm_across_heads, eps 1e-6) but image_dim=None,
          added_kv_proj_dim=None. Stored names: original Wan names (dump_names.wan_original_dit(...,
          image_dim=None)), recipe rule dit_recipe, base seed 50000.
  low     the same architecture, base seed 60000.
  umT5    make_wan_pipeline_fixtures.build_t5()  (index.json: "same_as" the wan_pipeline index)
  VAE     make_wan_pipeline_fixtures.build_vae() (same)

Recipe (per STORED name and shape, PyTorch order), as in the other fixtures:
    z = splitmix64(seed * 0x9E3779B97F4A7C15 + i);  u = float32(z >> 40) / 2**23 - 1
    w = u * scale + offset                            (f32)

Files as QuantStack publishes them: wan2.2_i2v_{high,low}_noise_tiny.gguf, general.architecture
"wan", dit_metadata(), F32 tensors, original names, 5-D patch_embedding. The script writes both
with gguf-py to a temporary directory and reads them back through diffusers'
convert_wan_transformer_to_diffusers (checked equal to the loaded models).

Run A (main): diffusers' WanImageToVideoPipeline(transformer=high, transformer_2=low,
boundary_ratio=0.9, image_encoder=None), the wan_pipeline image (64x48 gradient), PROMPT /
NEGATIVE, 5 frames, 4 steps, seed 42 (torch.manual_seed generator, CPU), guidance 4.0 (high) /
3.0 (low), max_sequence_length 512, output_type "latent". The scheduler is a subclass of
FlowMatchEulerDiscreteScheduler whose set_timesteps sets ComfyUI's `simple` sigmas with shift 5
(comfy_flow_simple_sigmas(5, 4) = [1, 0.9375, 0.8333, 0.625, 0], f32) and timesteps = 1000 sigma
(f32): the pipeline passes timestep 1000 sigma to the models and steps x + (s_next - s) v.
The high expert runs steps 0, 1 (t 1000, 937.5), the low expert steps 2, 3 (t 833.33, 625).
Recorded: noise, y, the latent after each step, the final latent, the decoded video (f32) and
frames (u8 round), and each expert's first forward (v_cond, v_uncond). Cross-check (notes):
the same loop by hand in ComfyUI's order (CFG on the denoised predictions).

Run B (LoRA, cfg 1): the same with guidance 1.0 / 1.0 (no negative branch) and one rank-4 LoRA
per expert on the block linears (self/cross attention q, k, v, o; ffn.0, ffn.2), applied with
PEFT (model.add_adapter + set_adapters for the multiplier). Stored as the Rust side must write
them, original Wan module names:
  high  lightx2v / Kijai layout: diffusion_model.blocks.N.<m>.lora_down.weight [r, in],
        .lora_up.weight [out, r], .alpha (0-d), multiplier 0.8 (set_adapters weight 0.8)
  low   PEFT-in-ComfyUI layout: diffusion_model.blocks.N.<m>.lora_A.weight [r, in],
        .lora_B.weight [out, r], no alpha (scale 1: lora_alpha = r), multiplier 1.0
  W' = W + multiplier * (alpha / r) * up @ down.
Recorded: the latent after each step, the final latent, frames, each expert's first forward
(v_cond only).

Run: /work/venv/bin/python tools/reference/make_wan22_fixtures.py
(needs peft and ftfy in the venv: diffusers' Wan pipelines call ftfy.fix_text on the prompts)
"""

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dump_names import wan_original_dit  # noqa: E402
from make_wan_pipeline_fixtures import (  # noqa: E402
    DIT, NEGATIVE, PROMPT, SEED, T5, TEXT_LEN, TOK_DIR, VAE, FRAMES, HEIGHT, WIDTH,
    build_t5, build_vae, comfy_flow_simple_sigmas, decode, dit_metadata, dit_recipe, encode_text,
    gradient_image, hash_values, load_strict, make_recipe, rel, tokenize,
)

ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
import make_wan_pipeline_fixtures as base  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "wan22")
WAN21 = os.path.join(ROOT, "tests", "fixtures", "wan_pipeline")
WAN21_INDEX = "tests/fixtures/wan_pipeline/index.json"

STEPS, SHIFT, BOUNDARY = 4, 5.0, 0.9
CFG_HIGH, CFG_LOW = 4.0, 3.0
HIGH_SEED, LOW_SEED = 50000, 60000
FILES = {"high": "wan2.2_i2v_high_noise_tiny.gguf", "low": "wan2.2_i2v_low_noise_tiny.gguf"}

# LoRA: rank, alpha (None: absent, scale 1), multiplier, base seed, up-weight scale factor.
LORA = {
    "high": dict(rank=4, alpha=2.0, multiplier=0.8, seed=70000, up=0.5,
                 layout="lora_down/lora_up/alpha", down_name="lora_down.weight",
                 up_name="lora_up.weight", file="wan2.2_i2v_high_noise_lora_tiny.safetensors"),
    "low": dict(rank=4, alpha=None, multiplier=1.0, seed=80000, up=0.25,
                layout="lora_A/lora_B", down_name="lora_A.weight", up_name="lora_B.weight",
                file="wan2.2_i2v_low_noise_lora_tiny.safetensors"),
}
# Original Wan module (inside blocks.N) -> diffusers module.
MODULES = [
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"),
    ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
]


def write(name, t):
    """make_wan_pipeline_fixtures.write into this script's folder."""
    base.OUT = OUT
    return base.write(name, t)


def write_u8(name, arr):
    """make_wan_pipeline_fixtures.write_u8 into this script's folder."""
    base.OUT = OUT
    return base.write_u8(name, arr)


def read21(key):
    ix = json.load(open(os.path.join(WAN21, "index.json")))
    e = ix[key]
    return torch.from_numpy(np.fromfile(os.path.join(WAN21, e["file"]), dtype="<f4").reshape(e["shape"]))


# ---------------------------------------------------------------------------------------------
# Components


def expert_names():
    return wan_original_dit(DIT["dim"], DIT["in_ch"], DIT["out_ch"], T5["d_model"], DIT["freq"],
                            DIT["ffn"], DIT["layers"], (1, 2, 2), None)


def build_expert(base_seed, tensors=None):
    """The Wan2.2 I2V expert (Wan2.1 I2V without the CLIP branch); `tensors` overrides the
    recipe values (for the hand-merged LoRA check)."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    stored = expert_names()
    assert not any("img" in k for k in stored), "wan_original_dit(image_dim=None) has an image branch"
    recipe, made = make_recipe(stored, dit_recipe, base_seed)
    tensors = made if tensors is None else tensors
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=DIT["heads"], attention_head_dim=DIT["head_dim"],
        in_channels=DIT["in_ch"], out_channels=DIT["out_ch"], text_dim=T5["d_model"],
        freq_dim=DIT["freq"], ffn_dim=DIT["ffn"], num_layers=DIT["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
        rope_max_seq_len=1024,
    ).eval()
    load_strict(model, convert_wan_transformer_to_diffusers(dict(tensors)),
                f"wan2.2 expert {base_seed} (convert_wan_transformer_to_diffusers)")
    return model, recipe, made


def check_gguf_roundtrip(tmp, name, tensors, model):
    """Writes the expert as a QuantStack-style GGUF with gguf-py, reads it back, converts it
    with diffusers' converter and checks it equals the loaded model's state dict."""
    import gguf
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    path = os.path.join(tmp, name)
    w = gguf.GGUFWriter(path, "wan")
    for m in dit_metadata():
        {"u32": w.add_uint32, "f32": w.add_float32}[m["type"]](m["key"], m["value"])
    for k in sorted(tensors):
        w.add_tensor(k, tensors[k].numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    r = gguf.GGUFReader(path)
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == "wan"
    back = {}
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        shape = [int(d) for d in reversed(t.shape.tolist())]
        back[t.name] = torch.from_numpy(np.array(t.data).reshape(shape).copy())
    assert tuple(back["patch_embedding.weight"].shape) == (DIT["dim"], DIT["in_ch"], 1, 2, 2)
    assert sorted(back) == sorted(tensors)
    msd = model.state_dict()
    conv = convert_wan_transformer_to_diffusers(back)
    assert sorted(conv) == sorted(msd), name
    for k, v in conv.items():
        assert torch.equal(msd[k], v), (name, k)
    return os.path.getsize(path)


def scheduler(sigmas):
    from diffusers import FlowMatchEulerDiscreteScheduler

    class ComfySimpleEulerScheduler(FlowMatchEulerDiscreteScheduler):
        """FlowMatchEulerDiscreteScheduler on fixed sigmas (ComfyUI's `simple` list): sigmas as
        given (f32, ending in 0), timesteps = 1000 sigma (f32); step() is diffusers' euler
        x + (sigma_next - sigma) v."""

        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            s = self.comfy_sigmas.to(torch.float32)
            assert num_inference_steps == len(s) - 1, num_inference_steps
            self.num_inference_steps = num_inference_steps
            self.sigmas = s.to(device)
            self.timesteps = (s[:-1] * 1000.0).to(device)
            self._step_index = None
            self._begin_index = None

    sch = ComfySimpleEulerScheduler(num_train_timesteps=1000, shift=1.0)
    sch.comfy_sigmas = sigmas.clone()
    return sch


def hf_tokenizer():
    """The tokenizer tokenize() uses (transformers PreTrainedTokenizerFast of the small umT5
    tokenizer.json)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json")),
                                   eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def run_pipeline(pipe, image, cfg_high, cfg_low, negative):
    """Runs the pipeline; returns the final latent and a record: per-step latents, the model
    and timestep of each step, the first call's inputs (noise, y), the text embeddings."""
    calls = []
    models = {"high": pipe.transformer, "low": pipe.transformer_2}
    for name, m in models.items():
        orig = m.forward

        def fwd(*a, _orig=orig, _name=name, **kw):
            hs = kw["hidden_states"]
            calls.append({"model": _name, "t": kw["timestep"].clone(), "x": hs[:, :16].clone(),
                          "y": hs[:, 16:].clone(), "image": kw.get("encoder_hidden_states_image")})
            return _orig(*a, **kw)

        m.forward = fwd
    rec = {"steps": [], "t": [], "step_model": []}
    inputs = ["latents", "prompt_embeds"] + (["negative_prompt_embeds"] if negative else [])

    def cb(p, i, t, kw):
        rec["steps"].append(kw["latents"].clone())
        rec["t"].append(t.clone())
        rec["step_model"].append(calls[-1]["model"])
        rec["prompt_embeds"] = kw["prompt_embeds"].clone()
        if negative:
            rec["negative_prompt_embeds"] = kw["negative_prompt_embeds"].clone()
        return {}

    try:
        with torch.no_grad():
            final = pipe(image=image, prompt=PROMPT, negative_prompt=NEGATIVE if negative else None,
                         height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                         guidance_scale=cfg_high, guidance_scale_2=cfg_low,
                         generator=torch.manual_seed(SEED), max_sequence_length=TEXT_LEN,
                         output_type="latent", return_dict=False, callback_on_step_end=cb,
                         callback_on_step_end_tensor_inputs=inputs)[0]
    finally:
        for m in models.values():
            del m.forward
    rec["calls"] = calls
    return final, rec


def velocity(model, x, y, t, text):
    with torch.no_grad():
        return model(hidden_states=torch.cat([x, y], dim=1), timestep=t.reshape(1).to(torch.float32),
                     encoder_hidden_states=text, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# LoRA


def lora_files(expert_tensors):
    """{expert: (recipe list, {diffusers module: (down, up)})} with the stored key names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    out = {}
    for ex, cfg in LORA.items():
        base = expert_tensors[ex]
        conv = convert_wan_transformer_to_diffusers(dict(base))
        recipe, mods, seed = [], {}, cfg["seed"]
        r = cfg["rank"]
        for n in range(DIT["layers"]):
            for orig, dname in MODULES:
                # The converter maps the base weights the same way (name -> name, same values).
                for suf in ("weight", "bias"):
                    assert torch.equal(conv[f"blocks.{n}.{dname}.{suf}"], base[f"blocks.{n}.{orig}.{suf}"]), \
                        (orig, dname, suf)
                out_dim, in_dim = base[f"blocks.{n}.{orig}.weight"].shape
                key = f"diffusion_model.blocks.{n}.{orig}"
                tensors = []
                for suffix, shape, scale in ((cfg["down_name"], [r, in_dim], math.sqrt(3.0 / in_dim)),
                                             (cfg["up_name"], [out_dim, r], cfg["up"] / math.sqrt(r))):
                    e = {"name": f"{key}.{suffix}", "shape": shape, "seed": seed, "scale": scale, "offset": 0.0}
                    seed += 1
                    recipe.append(e)
                    v = hash_values(int(np.prod(shape)), e["seed"]) * np.float32(scale) + np.float32(0.0)
                    tensors.append(torch.from_numpy(v.astype(np.float32).reshape(shape)))
                if cfg["alpha"] is not None:
                    recipe.append({"name": f"{key}.alpha", "shape": [], "seed": 0, "scale": 0.0,
                                   "offset": cfg["alpha"]})
                mods[(n, orig, dname)] = tuple(tensors)
        out[ex] = (recipe, mods)
    return out


def apply_peft(model, ex, mods):
    """PEFT LoRA on the diffusers model: lora_alpha = alpha (r when absent), the multiplier via
    set_adapters(weights=multiplier), so PEFT's scaling is multiplier * alpha / r."""
    from peft import LoraConfig

    cfg = LORA[ex]
    r = cfg["rank"]
    alpha = cfg["alpha"] if cfg["alpha"] is not None else float(r)
    name = f"wan22_{ex}"
    model.add_adapter(LoraConfig(r=r, lora_alpha=alpha, target_modules=[d for _, d in MODULES],
                                 init_lora_weights=False, lora_dropout=0.0), adapter_name=name)
    wrapped = sorted(k for k, m in model.named_modules() if hasattr(m, "lora_A") and name in m.lora_A)
    expect = sorted(f"blocks.{n}.{d}" for n, _, d in mods)
    assert wrapped == expect, (wrapped, expect)
    with torch.no_grad():
        for (n, _, d), (down, up) in mods.items():
            m = model.get_submodule(f"blocks.{n}.{d}")
            m.lora_A[name].weight.copy_(down)
            m.lora_B[name].weight.copy_(up)
    model.set_adapters([name], weights=[cfg["multiplier"]])
    want = cfg["multiplier"] * alpha / r
    for (n, _, d) in mods:
        got = model.get_submodule(f"blocks.{n}.{d}").scaling[name]
        assert abs(got - want) < 1e-12, (d, got, want)
    return want


def merged_tensors(base, ex, mods):
    """The base tensors with the LoRA merged by hand: W + multiplier * alpha / r * up @ down."""
    cfg = LORA[ex]
    alpha = cfg["alpha"] if cfg["alpha"] is not None else float(cfg["rank"])
    scale = cfg["multiplier"] * alpha / cfg["rank"]
    out = dict(base)
    for (n, orig, _), (down, up) in mods.items():
        k = f"blocks.{n}.{orig}.weight"
        out[k] = base[k] + scale * (up @ down)
    return out


def dump_index(index):
    """json with indent 1, but each recipe entry ({"name": ...}) and each short list on one line."""
    import re

    text = json.dumps(index, indent=1)
    one_line = lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]")
    text = re.sub(r'\{\s*\n\s*"name":[^{}]*?\}', one_line, text)
    text = re.sub(r"\[[^\[\]{}]*?\]", one_line, text)
    assert json.loads(text) == index
    return text + "\n"


# ---------------------------------------------------------------------------------------------


def main():
    t_start = time.time()
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    from PIL import Image
    from diffusers import WanImageToVideoPipeline

    high, high_recipe, high_t = build_expert(HIGH_SEED)
    low, low_recipe, low_t = build_expert(LOW_SEED)
    t5, _, _ = build_t5()
    vae, _, _ = build_vae()
    notes = {}
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {ex: check_gguf_roundtrip(tmp, FILES[ex], t, m)
                 for ex, t, m in (("high", high_t, high), ("low", low_t, low))}
    print("gguf sizes", sizes)

    img = gradient_image()
    assert np.array_equal(np.asarray(Image.open(os.path.join(WAN21, "image.png")).convert("RGB")), img)
    pil = Image.fromarray(img)

    sigmas = comfy_flow_simple_sigmas(SHIFT, STEPS)
    sch = scheduler(sigmas)
    pipe = WanImageToVideoPipeline(tokenizer=hf_tokenizer(), text_encoder=t5, vae=vae, scheduler=sch,
                                   image_processor=None, image_encoder=None, transformer=high,
                                   transformer_2=low, boundary_ratio=BOUNDARY)
    pipe.set_progress_bar_config(disable=True)
    sch.set_timesteps(STEPS)
    timesteps = sch.timesteps.clone()
    assert torch.equal(sch.sigmas, sigmas.to(torch.float32)) and sch.sigmas.dtype == torch.float32
    assert torch.equal(timesteps, (sigmas[:-1] * 1000.0).to(torch.float32)) and timesteps.dtype == torch.float32
    print("sigmas", sigmas.tolist(), "timesteps", timesteps.tolist())

    # ---------------- Run A
    final, rec = run_pipeline(pipe, pil, CFG_HIGH, CFG_LOW, negative=True)
    assert torch.equal(sch.sigmas, sigmas) and torch.equal(sch.timesteps, timesteps)
    lat_t, lh, lw = 1 + (FRAMES - 1) // 4, HEIGHT // 8, WIDTH // 8
    noise = torch.randn([1, 16, lat_t, lh, lw], generator=torch.manual_seed(SEED))
    calls = rec["calls"]
    assert len(calls) == 2 * STEPS
    assert torch.equal(calls[0]["x"], noise), "pipeline noise != torch.randn([1,16,2,6,8], manual_seed(42))"
    assert torch.equal(noise[0], read21("noise"))
    y = calls[0]["y"]
    assert all(torch.equal(c["y"], y) for c in calls)
    assert all(c["image"] is None for c in calls)
    y21 = read21("y")
    notes["y_pipeline_vs_wan_pipeline_fixture_max_abs"] = float((y[0] - y21).abs().max())
    assert notes["y_pipeline_vs_wan_pipeline_fixture_max_abs"] < 1e-5, notes
    # Text: the pipeline's embeddings equal wan_pipeline's text_prompt / text_negative (zero rows after).
    for key, emb, text in (("text_prompt", rec["prompt_embeds"], PROMPT),
                           ("text_negative", rec["negative_prompt_embeds"], NEGATIVE)):
        ref = read21(key)
        n = ref.shape[0]
        assert emb.shape == (1, TEXT_LEN, T5["d_model"])
        assert torch.equal(emb[0, n:], torch.zeros_like(emb[0, n:]))
        notes[f"{key}_pipeline_vs_wan_pipeline_fixture_max_abs"] = float((emb[0, :n] - ref).abs().max())
        assert notes[f"{key}_pipeline_vs_wan_pipeline_fixture_max_abs"] < 1e-5
        ids, _, _ = encode_text(t5, text)
        assert len(ids) == n and tokenize(text)[2] == n
    # Experts per step (from the wrapped forwards and from t vs the boundary).
    step_models = rec["step_model"]
    by_t = ["high" if float(t) >= BOUNDARY * 1000 else "low" for t in rec["t"]]
    assert step_models == by_t == ["high", "high", "low", "low"], (step_models, by_t)
    assert [c["model"] for c in calls] == [m for m in step_models for _ in (0, 1)]
    for i, c in enumerate(calls):
        assert torch.equal(c["t"], timesteps[i // 2].expand(1)), (i, c["t"])
    high_steps = [i for i, m in enumerate(step_models) if m == "high"]
    assert torch.equal(final, rec["steps"][-1])
    print("run A steps", step_models, "x std", [round(float(s.std()), 4) for s in rec["steps"]])

    text_c, text_u = rec["prompt_embeds"], rec["negative_prompt_embeds"]
    # First forward of each expert, called directly.
    t0, t2 = timesteps[0], timesteps[2]
    v_hc, v_hu = velocity(high, noise, y, t0, text_c), velocity(high, noise, y, t0, text_u)
    x2 = rec["steps"][1]
    v_lc, v_lu = velocity(low, x2, y, t2, text_c), velocity(low, x2, y, t2, text_u)
    x1 = noise + (sigmas[1] - sigmas[0]) * (v_hu + CFG_HIGH * (v_hc - v_hu))
    notes["first_step_from_direct_velocities_vs_pipeline_max_abs"] = float((x1 - rec["steps"][0]).abs().max())
    assert notes["first_step_from_direct_velocities_vs_pipeline_max_abs"] < 1e-5
    x3 = x2 + (sigmas[3] - sigmas[2]) * (v_lu + CFG_LOW * (v_lc - v_lu))
    notes["low_first_step_from_direct_velocities_vs_pipeline_max_abs"] = float((x3 - rec["steps"][2]).abs().max())
    assert notes["low_first_step_from_direct_velocities_vs_pipeline_max_abs"] < 1e-5
    mags = {k: (float(v.std()), float(v.abs().max())) for k, v in
            (("high_v_cond", v_hc), ("high_v_uncond", v_hu), ("low_v_cond", v_lc), ("low_v_uncond", v_lu))}
    print("first forward (std, max abs)", mags)

    # Cross-check: the two-expert loop by hand, ComfyUI's order (CFG on denoised predictions).
    x = noise.clone()
    for i in range(STEPS):
        s, s_next = sigmas[i], sigmas[i + 1]
        model, cfg = (high, CFG_HIGH) if timesteps[i] >= BOUNDARY * 1000 else (low, CFG_LOW)
        v_c, v_u = velocity(model, x, y, timesteps[i], text_c), velocity(model, x, y, timesteps[i], text_u)
        den_c, den_u = x - v_c * s, x - v_u * s
        den = den_u + (den_c - den_u) * cfg
        d = (x - den) / s
        x = x + d * (s_next - s)
    notes["comfyui_order_two_expert_loop_final_vs_pipeline_max_abs"] = float((x - final).abs().max())
    notes["comfyui_order_two_expert_loop_final_vs_pipeline_rel"] = rel(x, final)

    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    dec, frames, frames_trunc = decode(vae, final, mean, inv_std)
    notes["frames_round_vs_truncate_values_differing"] = int((frames != frames_trunc).sum())
    print("final std", float(final.std()), "decoded std", float(dec.std()))

    # ---------------- Run B: LoRA per expert, cfg 1
    lfiles = lora_files({"high": high_t, "low": low_t})
    scalings = {ex: apply_peft(m, ex, lfiles[ex][1]) for ex, m in (("high", high), ("low", low))}
    final_b, rec_b = run_pipeline(pipe, pil, 1.0, 1.0, negative=False)
    calls_b = rec_b["calls"]
    assert len(calls_b) == STEPS and rec_b["step_model"] == ["high", "high", "low", "low"]
    assert torch.equal(calls_b[0]["x"], noise) and all(torch.equal(c["y"], y) for c in calls_b)
    assert torch.equal(rec_b["prompt_embeds"], text_c)
    assert torch.equal(final_b, rec_b["steps"][-1])
    vb_h = velocity(high, noise, y, t0, text_c)
    xb2 = rec_b["steps"][1]
    vb_l = velocity(low, xb2, y, t2, text_c)
    notes["lora_first_step_from_direct_velocity_vs_pipeline_max_abs"] = float(
        (noise + (sigmas[1] - sigmas[0]) * vb_h - rec_b["steps"][0]).abs().max())
    assert notes["lora_first_step_from_direct_velocity_vs_pipeline_max_abs"] < 1e-5
    # LoRA effect: the same inputs with the adapters disabled.
    high.disable_adapters()
    low.disable_adapters()
    vb_h0, vb_l0 = velocity(high, noise, y, t0, text_c), velocity(low, xb2, y, t2, text_c)
    high.enable_adapters()
    low.enable_adapters()
    assert torch.equal(vb_h0, v_hc)
    notes["lora_high_first_velocity_rel_change"] = rel(vb_h, vb_h0)
    notes["lora_low_first_velocity_rel_change"] = rel(vb_l, vb_l0)
    # The LoRA merged into the stored weights by hand (W + m alpha/r up@down, original names),
    # through the converter: the same velocities as PEFT's.
    for ex, base_seed, base, v_peft, xx, tt in (("high", HIGH_SEED, high_t, vb_h, noise, t0),
                                               ("low", LOW_SEED, low_t, vb_l, xb2, t2)):
        merged, _, _ = build_expert(base_seed, merged_tensors(base, ex, lfiles[ex][1]))
        v_m = velocity(merged, xx, y, tt, text_c)
        notes[f"lora_{ex}_merged_by_hand_vs_peft_first_velocity_max_abs"] = float((v_m - v_peft).abs().max())
        assert notes[f"lora_{ex}_merged_by_hand_vs_peft_first_velocity_max_abs"] < 1e-4
    _, frames_b, _ = decode(vae, final_b, mean, inv_std)
    notes["run_b_final_latent_vs_run_a_rel"] = rel(final_b, final)
    print("LoRA: rel change high", notes["lora_high_first_velocity_rel_change"], "low",
          notes["lora_low_first_velocity_rel_change"])

    notes["about"] = (
        "Run A is diffusers' WanImageToVideoPipeline (CFG on the velocity, diffusers' euler "
        "x + (s_next - s) v on the fixed ComfyUI sigmas, timestep 1000 sigma f32). The "
        "comfyui_order_* entries: the same two-expert loop by hand with ComfyUI's CFG on the "
        "denoised predictions (den = x - s v; den_u + cfg (den_c - den_u); d = (x - den)/s; "
        "x + d (s_next - s)), equal in exact arithmetic. LoRA multiplier: PEFT set_adapters "
        "weight (scaling = multiplier * lora_alpha / r; high lora_alpha = alpha = 2, low "
        "lora_alpha = r = 4). run_b_final_latent_vs_run_a_rel mixes the LoRA and cfg 1 vs 4/3. y, "
        "text, noise: identical inputs to the wan_pipeline fixture. diffusers' Wan pipelines need "
        "ftfy (prompt_clean calls ftfy.fix_text; a no-op on these prompts).")

    # ---------------- index.json
    ff = {}
    for ex, recipe_ in (("high", high_recipe), ("low", low_recipe)):
        ff[ex] = {"file": FILES[ex], "format": "gguf", "architecture": "wan",
                  "metadata": dit_metadata(), "tensors": recipe_}
    ff["t5"] = {"same_as": WAN21_INDEX}
    ff["vae"] = {"same_as": WAN21_INDEX}
    steps_a = [write(f"x_{i + 1}.f32", s[0]) for i, s in enumerate(rec["steps"])]
    steps_b = [write(f"lora_x_{i + 1}.f32", s[0]) for i, s in enumerate(rec_b["steps"])]
    lora = {}
    for ex in ("high", "low"):
        c = LORA[ex]
        lora[ex] = {"file": c["file"], "format": "safetensors", "layout": c["layout"],
                    "multiplier": c["multiplier"], "rank": c["rank"], "alpha": c["alpha"],
                    "peft_scaling": scalings[ex], "tensors": lfiles[ex][0]}
    lora.update({
        "steps": steps_b,
        "final_latent": steps_b[-1],
        "frames": write_u8("lora_frames.u8", frames_b),
        "first_forward": {
            "high": {"timestep": float(t0), "x": "noise", "v_cond": write("lora_v_cond_high.f32", vb_h[0])},
            "low": {"timestep": float(t2), "x": steps_b[1]["file"], "v_cond": write("lora_v_cond_low.f32", vb_l[0])},
        },
    })
    index = {
        "generator": "splitmix64(seed * 0x9E3779B97F4A7C15 + i) >> 40, / 2^23 - 1, * scale + offset",
        "settings": {
            "prompt": PROMPT, "negative_prompt": NEGATIVE, "width": WIDTH, "height": HEIGHT,
            "frames": FRAMES, "steps": STEPS, "shift": SHIFT, "seed": SEED, "sampler": "euler",
            "scheduler": "simple", "boundary": BOUNDARY, "cfg_high": CFG_HIGH, "cfg_low": CFG_LOW,
            "high_steps": high_steps, "image": "tests/fixtures/wan_pipeline/image.png",
        },
        "files": ff,
        "configs": {"dit": dict(DIT, text_dim=T5["d_model"], image_dim=None), "t5": T5, "vae": VAE,
                    "latents_mean": list(vae.config.latents_mean),
                    "latents_std": list(vae.config.latents_std)},
        "sigmas": [float(s) for s in sigmas],
        "timesteps": [float(t) for t in timesteps],
        "noise": write("noise.f32", noise[0]),
        "y": write("y.f32", y[0]),
        "steps": steps_a,
        "first_forward": {
            "high": {"timestep": float(t0), "x": "noise", "v_cond": write("v_cond_high.f32", v_hc[0]),
                     "v_uncond": write("v_uncond_high.f32", v_hu[0])},
            "low": {"timestep": float(t2), "x": steps_a[1]["file"], "v_cond": write("v_cond_low.f32", v_lc[0]),
                    "v_uncond": write("v_uncond_low.f32", v_lu[0])},
        },
        "final_latent": steps_a[-1],
        "decoded": write("decoded.f32", dec),
        "frames": write_u8("frames.u8", frames),
        "lora": lora,
        "notes": notes,
    }
    with open(os.path.join(OUT, "index.json"), "w") as f:
        f.write(dump_index(index))
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print("notes", json.dumps(notes, indent=1))
    print(f"{OUT}: {total} bytes, {time.time() - t_start:.1f} s")


if __name__ == "__main__":
    main()
