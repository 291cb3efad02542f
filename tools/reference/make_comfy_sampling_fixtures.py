#!/usr/bin/env python3
"""Writes tests/fixtures/comfy_sampling/*.json by running ComfyUI's OWN sampling code (imported from
a ComfyUI checkout, not re-implemented): the schedulers and KSampler's sigma logic of
comfy/samplers.py, the sample_* functions of comfy/k_diffusion/sampling.py, sample_unipc /
sample_unipc_bh2 of comfy/extra_samplers/uni_pc.py, driven through comfy.samplers.KSAMPLER.sample
(noise scaling, inverse noise scaling) with the model samplings of comfy/model_sampling.py: SDXL's
ModelSamplingDiscrete + EPS and Wan's ModelSamplingDiscreteFlow + CONST (shift 5 and 3).

    nice -n 10 /work/venv/bin/python tools/reference/make_comfy_sampling_fixtures.py \
        --comfyui /path/to/ComfyUI

Needs torch, numpy, scipy, torchsde and tqdm (what ComfyUI's sampling modules import). The heavy
ComfyUI modules they import but these functions do not use (model_management, model_patcher,
sampler_helpers, hooks, ...) are replaced by empty stand-ins before the import, so no model, GPU
or ComfyUI server is involved (so are PIL, torchvision and einops when missing: a full
checkout's comfy/k_diffusion/utils.py and diffusionmodules/util.py import them for functions
not used here).

The model is a toy analytic denoiser on a [2, 4, 3, 3] latent (the formula of
make_sampling_fixtures.py: x0 = a x + (1 - a) c + 0.05 tanh(x) sigma / (1 + sigma),
a = 1 / (1 + sigma^2), c a fixed linspace). The initial noise is
torch.randn(shape, generator=torch.manual_seed(seed)) as ComfyUI's prepare_noise draws it; the
stochastic samplers get a recording noise sampler (a CPU torch.Generator seeded with seed + 1,
torch.randn of the latent's shape per call) instead of ComfyUI's Brownian tree / default sampler,
so the sampler arithmetic is tested on its own; every call's (sigma, sigma_next) is stored.

Outputs (small; CI never runs this script; values are float32 bit patterns, float64 values
are u64 bit patterns in strings):
  schedulers.json  calculate_sigmas for every scheduler x {SDXL eps, flow shift 5, flow shift 3}
                   x several step counts; scipy.stats.beta.ppf(q, 0.6, 0.6) on a grid.
  ksampler.json    KSampler(...).sigmas (calculate_sigmas + set_steps: steps + 1 and the
                   penultimate sigma dropped for uni_pc / uni_pc_bh2, denoise < 1 via
                   int(steps / denoise) steps and the last steps + 1 sigmas).
  samplers.json    every sampler nijigen implements x models x step counts x seeds (sigmas from
                   KSampler, some with denoise < 1 on a non-zero latent, and KSamplerAdvanced-like
                   segments: the first steps ending above sigma 0, the last steps from a latent
                   without added noise): the start latent, the sigmas the model was called with,
                   the noise calls, and KSAMPLER.sample's result (inverse-noise-scaled at the
                   last sigma).

Deterministic: rerunning gives byte-identical files (torch CPU, one thread).
"""

import argparse
import json
import math
import os
import struct
import sys
import types

import numpy as np
import torch

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "comfy_sampling")

torch.set_num_threads(1)

SHAPE = [2, 4, 3, 3]


# --------------------------------------------------------------------------------------------
# Importing ComfyUI's modules
# --------------------------------------------------------------------------------------------

def import_comfy(path):
    """Imports comfy.samplers & co. from the checkout at `path`, with stand-ins for the modules
    that pull in model management, hooks and the like."""
    sys.path.insert(0, os.path.abspath(path))
    import comfy  # noqa: F401  (the package itself, so the stand-ins below can hang off it)

    def stub(name, **attrs):
        if name not in sys.modules:
            m = types.ModuleType(name)
            for k, v in attrs.items():
                setattr(m, k, v)
            sys.modules[name] = m

    for name in ["comfy.model_management", "comfy.model_patcher", "comfy.sampler_helpers",
                 "comfy.patcher_extension", "comfy.hooks", "comfy.context_windows", "comfy.utils",
                 "comfy.k_diffusion.deis", "comfy.k_diffusion.sa_solver"]:
        stub(name)
    stub("comfy.memory_management", aimdo_allocator=None)
    stub("comfy.ldm.util", instantiate_from_config=None)
    # Third-party modules a full checkout's k_diffusion/utils.py and diffusionmodules/util.py
    # import for functions not used here.
    for name, attrs in [("PIL", {}), ("PIL.Image", {}), ("torchvision", {}),
                        ("torchvision.transforms", {}), ("torchvision.transforms.functional", {}),
                        ("einops", {"repeat": None, "rearrange": None})]:
        try:
            __import__(name)
        except ImportError:
            stub(name, **attrs)
    for name in ["PIL", "torchvision", "torchvision.transforms"]:
        child = {"PIL": "Image", "torchvision": "transforms",
                 "torchvision.transforms": "functional"}[name]
        if not hasattr(sys.modules[name], child):
            setattr(sys.modules[name], child, sys.modules[f"{name}.{child}"])
    import comfy.model_sampling as model_sampling
    import comfy.samplers as samplers
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.extra_samplers.uni_pc as uni_pc
    for name, m in list(sys.modules.items()):  # `comfy.x` attribute access for the stand-ins
        parent, _, child = name.rpartition(".")
        if parent.startswith("comfy") and parent in sys.modules \
                and not hasattr(sys.modules[parent], child):
            setattr(sys.modules[parent], child, m)
    return model_sampling, samplers, k_sampling, uni_pc


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def bits(t):
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    return [int(v) for v in a.view(np.uint32)]


def f32_bits(v):
    """Bit pattern of a 0-d / 1-element tensor or a number as float32."""
    if isinstance(v, torch.Tensor):
        v = v.reshape(-1)[0].item()
    return int(np.array([v], dtype=np.float32).view(np.uint32)[0])


def f64_bits(v):
    return str(struct.unpack("<Q", struct.pack("<d", float(v)))[0])


class ModelConfig:
    def __init__(self, settings):
        self.sampling_settings = settings


def model_samplings(ms_mod):
    """The model samplings ComfyUI builds for SDXL (eps) and Wan (flow): the same class
    combination as comfy.model_base.model_sampling()."""

    class SDXLSampling(ms_mod.ModelSamplingDiscrete, ms_mod.EPS):
        pass

    class FlowSampling(ms_mod.ModelSamplingDiscreteFlow, ms_mod.CONST):
        pass

    out = {"sdxl": SDXLSampling(ModelConfig({}))}
    for shift in [5.0, 3.0]:
        fs = FlowSampling(ModelConfig({"shift": 8.0}))
        fs.set_parameters(shift=shift, multiplier=1000)  # what the ModelSamplingSD3 node does
        out[f"flow_shift{int(shift)}"] = fs
    return out


MODEL_INFO = {
    "sdxl": {"kind": "discrete"},
    "flow_shift5": {"kind": "flow", "shift": 5.0},
    "flow_shift3": {"kind": "flow", "shift": 3.0},
}


class FakePatcher:
    """What KSampler and the samplers ask a ModelPatcher for."""

    def __init__(self, ms):
        self.ms = ms

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.ms


class ToyGuider:
    """Stands in for CFGGuider: model_wrap(x, sigma, model_options=..., seed=...) returns the
    denoised latent; .inner_model.model_sampling and .model_patcher as ComfyUI's."""

    def __init__(self, ms, target):
        self.inner_model = types.SimpleNamespace(model_sampling=ms)
        self.model_patcher = FakePatcher(ms)
        self.target = target
        self.calls = []

    def __call__(self, x, sigma, model_options={}, seed=None):
        self.calls.append(f32_bits(sigma))
        s = sigma.reshape([-1] + [1] * (x.ndim - 1))
        a = 1.0 / (1.0 + s * s)
        return x * a + self.target * (1.0 - a) + 0.05 * torch.tanh(x) * (s / (1.0 + s))


class RecordingNoise:
    """A noise_sampler(sigma, sigma_next): torch.randn(shape) from a CPU generator seeded with
    `seed` (what ComfyUI's default_noise_sampler draws with seed + 1), recording the arguments."""

    def __init__(self, seed):
        self.g = torch.Generator(device="cpu")
        self.g.manual_seed(seed)
        self.calls = []

    def __call__(self, sigma, sigma_next):
        self.calls.append([f32_bits(sigma), f32_bits(sigma_next)])
        return torch.randn(SHAPE, generator=self.g)


# --------------------------------------------------------------------------------------------
# Schedulers
# --------------------------------------------------------------------------------------------

SCHED_STEPS = [1, 2, 3, 4, 7, 10, 25, 30]


def schedulers_fixture(samplers, mss):
    lists = []
    for model, ms in mss.items():
        for name in samplers.SCHEDULER_NAMES:
            for steps in SCHED_STEPS:
                if name == "kl_optimal" and steps == 1:
                    continue  # ComfyUI divides by steps - 1: a NaN schedule
                sig = samplers.calculate_sigmas(ms, name, steps)
                lists.append({"model": model, "scheduler": name, "steps": steps,
                              "sigmas": bits(sig)})
    import scipy.stats
    ppf = []
    for q in list(np.linspace(0, 1, 41)) + [1e-9, 1e-6, 0.001, 0.5, 0.999, 1 - 1e-6, 1 - 1e-9]:
        q = float(q)
        ppf.append({"q": f64_bits(q), "ppf": f64_bits(scipy.stats.beta.ppf(q, 0.6, 0.6))})
    return {"scheduler_names": list(samplers.SCHEDULER_NAMES), "lists": lists,
            "beta_ppf_a0.6_b0.6": ppf}


# --------------------------------------------------------------------------------------------
# KSampler sigmas
# --------------------------------------------------------------------------------------------

KS_SAMPLERS = ["euler", "uni_pc"]
KS_STEPS = [1, 2, 4, 7, 12]
KS_DENOISE = [1.0, 0.9999, 0.75, 0.5, 0.33, 0.0]


def ksampler_fixture(samplers, mss):
    cases = []
    for model, ms in mss.items():
        patcher = FakePatcher(ms)
        for sampler in KS_SAMPLERS:
            for sched in samplers.SCHEDULER_NAMES:
                for steps in KS_STEPS:
                    for denoise in KS_DENOISE:
                        ks = samplers.KSampler(patcher, steps, "cpu", sampler=sampler,
                                               scheduler=sched, denoise=denoise)
                        if torch.isnan(ks.sigmas).any():
                            continue  # kl_optimal with 1 step (see above)
                        cases.append({"model": model, "sampler": sampler, "scheduler": sched,
                                      "steps": steps, "denoise": f64_bits(denoise),
                                      "sigmas": bits(ks.sigmas)})
    return {"cases": cases}


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde",
            "dpmpp_3m_sde", "lcm", "res_multistep", "er_sde", "ddim", "uni_pc", "uni_pc_bh2"]
STOCHASTIC = {"euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "lcm", "er_sde",
              "res_multistep"}
SAMPLER_STEPS = [3, 4, 7, 10]
SCHEDS = {"sdxl": ["karras", "normal", "exponential", "simple", "beta", "sgm_uniform"],
          "flow_shift5": ["simple", "normal", "beta", "linear_quadratic", "sgm_uniform"],
          "flow_shift3": ["normal", "simple", "kl_optimal", "beta"]}


def run_sampler(samplers, ms, name, sigmas, seed, latent, target, add_noise=True):
    guider = ToyGuider(ms, target)
    noise_rec = RecordingNoise(seed + 1)
    if name in ("uni_pc", "uni_pc_bh2", "ddim"):
        sampler = samplers.sampler_object(name)
    elif name in STOCHASTIC:
        sampler = samplers.ksampler(name, extra_options={"noise_sampler": noise_rec})
    else:
        sampler = samplers.ksampler(name)
    if add_noise:
        noise = torch.randn(SHAPE, generator=torch.manual_seed(seed), device="cpu")
    else:
        noise = torch.zeros(SHAPE)  # KSamplerAdvanced with add_noise disabled
    # KSAMPLER.sample scales the noise itself; the same call, for the stored start latent.
    max_denoise = sampler.max_denoise(guider, sigmas)
    x_start = ms.noise_scaling(sigmas[0], noise.clone(), latent.clone(), max_denoise)
    run_sigmas = sigmas.clone()  # sample_unipc edits the list in place
    out = sampler.sample(guider, run_sigmas, {"model_options": {}, "seed": seed}, None, noise,
                         latent_image=latent.clone(), disable_pbar=True)
    rec = {"max_denoise": bool(max_denoise), "x_start": bits(x_start),
           "model_sigmas": guider.calls, "noise_calls": noise_rec.calls,
           "noise_seed": seed + 1, "result": bits(out)}
    if not torch.equal(run_sigmas, sigmas):
        rec["sigmas_after"] = bits(run_sigmas)  # what the sampler left in the caller's list
    return rec


def samplers_fixture(samplers, mss):
    n = int(np.prod(SHAPE))
    target = torch.linspace(-1.5, 1.25, n).reshape(SHAPE)
    latent = (0.5 * torch.cos(torch.arange(n, dtype=torch.float32) * 0.7)).reshape(SHAPE)
    zeros = torch.zeros(SHAPE)
    cases = []
    seed = 100
    for name in SAMPLERS:
        for model, ms in mss.items():
            patcher = FakePatcher(ms)
            runs = [(steps, SCHEDS[model][k % len(SCHEDS[model])], 1.0)
                    for k, steps in enumerate(SAMPLER_STEPS)]
            runs.append((5, SCHEDS[model][1], 0.6))  # img2img on a non-zero latent
            if name.startswith("uni_pc"):
                runs += [(1, SCHEDS[model][0], 1.0), (2, SCHEDS[model][0], 1.0)]
            for steps, sched, denoise in runs:
                seed += 1
                ks = samplers.KSampler(patcher, steps, "cpu", sampler=name, scheduler=sched,
                                       denoise=denoise)
                sigmas = ks.sigmas
                lat = latent if denoise < 1.0 else zeros
                rec = run_sampler(samplers, ms, name, sigmas, seed, lat, target)
                cases.append({"sampler": name, "model": model, "scheduler": sched,
                              "steps": steps, "denoise": f64_bits(denoise), "segment": "all",
                              "latent": "cos" if denoise < 1.0 else "zeros", "seed": seed,
                              "sigmas": bits(sigmas), **rec})
            # KSamplerAdvanced-style segments of a 6-step schedule (the two phases of Wan 2.2):
            # steps 0..4 ending at a sigma above 0 (the result is inverse-noise-scaled at it), and
            # steps 3..6 from a latent without added noise.
            sched = SCHEDS[model][0]
            full = samplers.KSampler(patcher, 6, "cpu", sampler=name, scheduler=sched).sigmas
            for segment, sigmas, add_noise in [("end", full[:5], True), ("start", full[3:], False)]:
                seed += 1
                lat = zeros if add_noise else latent
                rec = run_sampler(samplers, ms, name, sigmas.clone(), seed, lat, target, add_noise)
                cases.append({"sampler": name, "model": model, "scheduler": sched, "steps": 6,
                              "denoise": f64_bits(1.0), "segment": segment,
                              "latent": "zeros" if add_noise else "cos", "seed": seed,
                              "sigmas": bits(sigmas), **rec})
    return {"shape": SHAPE, "target": bits(target), "latent_cos": bits(latent),
            "toy": "x*a + c*(1-a) + 0.05*tanh(x)*(sigma/(1+sigma)), a = 1/(1+sigma*sigma)",
            "cases": cases}


def e2e_fixture(samplers, mss):
    """Stochastic samplers with ComfyUI's OWN noise: no noise_sampler given, so each sampler
    builds what ComfyUI builds from extra_args["seed"] (BrownianTreeNoiseSampler over the
    sigmas for the SDE ones, default_noise_sampler with seed + 1 on the CPU for the others)."""
    n = int(np.prod(SHAPE))
    target = torch.linspace(-1.5, 1.25, n).reshape(SHAPE)
    zeros = torch.zeros(SHAPE)
    cases = []
    for name in ["dpmpp_2m_sde", "dpmpp_sde", "dpmpp_3m_sde", "euler_ancestral", "er_sde", "lcm"]:
        for model, ms in mss.items():
            for steps, seed in [(4, 7), (6, 2**32 + 5)]:
                patcher = FakePatcher(ms)
                sched = SCHEDS[model][0]
                sigmas = samplers.KSampler(patcher, steps, "cpu", sampler=name,
                                           scheduler=sched).sigmas
                guider = ToyGuider(ms, target)
                sampler = samplers.ksampler(name)
                noise = torch.randn(SHAPE, generator=torch.manual_seed(seed), device="cpu")
                out = sampler.sample(guider, sigmas.clone(), {"model_options": {}, "seed": seed},
                                     None, noise, latent_image=zeros.clone(), disable_pbar=True)
                cases.append({"sampler": name, "model": model, "scheduler": sched,
                              "steps": steps, "seed": str(seed), "sigmas": bits(sigmas),
                              "result": bits(out)})
    return {"shape": SHAPE, "target": bits(target), "cases": cases}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfyui", default="/work/comfy_ref",
                    help="ComfyUI checkout (the folder holding comfy/)")
    args = ap.parse_args()
    ms_mod, samplers, _k, _u = import_comfy(args.comfyui)
    mss = model_samplings(ms_mod)
    os.makedirs(OUT, exist_ok=True)
    meta = {"torch": torch.__version__, "numpy": np.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for fname, fn in [("schedulers.json", schedulers_fixture), ("ksampler.json", ksampler_fixture),
                      ("samplers.json", samplers_fixture), ("e2e_noise.json", e2e_fixture)]:
        data = {"meta": meta, **fn(samplers, mss)}
        path = os.path.join(OUT, fname)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
