#!/usr/bin/env python3
"""Writes tests/fixtures/comfy_sampling/brownian.json: the noise of ComfyUI's
BrownianTreeNoiseSampler (torchsde.BrownianTree underneath) for several seeds, latent shapes and
sigma sequences, as float32 bit patterns (or CRC-32 + sums for the larger latents).

    /work/venv/bin/python tools/reference/make_brownian_fixtures.py [--comfy DIR] [--out FILE]

The Brownian tree is the real torchsde (pip `torchsde`, 0.2.6) on CPU torch. The thin wrapper
around it, ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=True)`,
is imported from `<comfy>/comfy/k_diffusion/sampling.py` when that file exists (default
`/work/comfy_ref`, or $COMFY_REF; its heavy imports — comfy.*, scipy if missing — are stubbed).
The same wrapper is also re-implemented below (`ThinWrapper`, written from its description:
sort the two times, query the tree on the CPU, multiply by the product of the sort signs,
divide by sqrt(|sigma_next - sigma|)); when both are available every call is checked to agree
bit for bit, and `meta.wrapper` records which one produced the file.

Per call the file holds:
  w                   the tree's signed increment (BatchedBrownianTree's output, before the
                      normalisation; the tree always runs on the CPU): all bits, or for larger
                      latents `w_summary` (count, CRC-32, fsum, first/last 8 values);
  sqrt_ieee           sqrt(|sigma_next - sigma|) correctly rounded: what ComfyUI computes with
                      the sigmas on a CUDA device (its usual setup), so noise = w / sqrt_ieee;
  sqrt_cpu            the same from torch's CPU kernel (MKL; not always correctly rounded), so
                      ComfyUI run with CPU sigmas gives w / sqrt_cpu (checked here bit for bit);
  noise_*_summary     for the larger latents, CRC-32 + sums of both normalised versions.

Deterministic: rerunning gives identical files on an x86-64 machine whose torch CPU capability
is AVX2 or AVX512 (the normal kernel the Rust side reproduces by default).
"""

import argparse
import importlib.util
import json
import math
import os
import sys
import types
import warnings
import zlib

import numpy as np
import torch
import torchsde

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "comfy_sampling", "brownian.json")

torch.set_num_threads(1)
# torchsde warns when a query end lies outside [t0, t1] (it clamps); some cases do that on purpose.
warnings.filterwarnings("ignore", message="Should have")


# --------------------------------------------------------------------------------------------
# The wrapper: ComfyUI's own class when available, and our re-implementation
# --------------------------------------------------------------------------------------------


def load_comfy_sampler(comfy_root):
    """ComfyUI's BrownianTreeNoiseSampler class from comfy/k_diffusion/sampling.py, or None."""
    path = os.path.join(comfy_root, "comfy", "k_diffusion", "sampling.py")
    if not os.path.isfile(path):
        return None, None

    def stub(name, **attrs):
        if name in sys.modules:
            return sys.modules[name]
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        if "." in name:
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, mod)
        sys.modules[name] = mod
        return mod

    stub("comfy", __path__=[])
    stub("comfy.k_diffusion", __path__=[])
    for sub in ("utils", "deis", "sa_solver"):
        stub("comfy.k_diffusion." + sub)
    stub("comfy.model_patcher")
    stub("comfy.model_sampling", CONST=type("CONST", (), {}), EPS=type("EPS", (), {}))
    stub("comfy.memory_management")
    stub("comfy.utils", model_trange=lambda *a, **k: range(*a))
    try:
        import scipy.integrate  # noqa: F401
    except ImportError:
        stub("scipy", __path__=[])
        stub("scipy.integrate")

    name = "comfy.k_diffusion.sampling"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.BrownianTreeNoiseSampler, path


class ThinWrapper:
    """BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True), identity transform."""

    def __init__(self, x, sigma_min, sigma_max, seed):
        lo, hi = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if lo < hi else -1
        if self.sign < 0:
            lo, hi = hi, lo
        self.batched = isinstance(seed, (list, tuple))
        seeds = list(seed) if self.batched else [seed]
        w0 = torch.zeros_like(x)[0] if self.batched else torch.zeros_like(x)
        self.trees = [torchsde.BrownianTree(lo.cpu(), w0.cpu(), hi.cpu(), entropy=s) for s in seeds]

    def increment(self, sigma, sigma_next):
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        a, b, sign = (sigma, sigma_next, 1) if sigma < sigma_next else (sigma_next, sigma, -1)
        parts = [tree(a.cpu().float(), b.cpu().float()) for tree in self.trees]
        w = torch.stack(parts) * (self.sign * sign)
        return w if self.batched else w[0]

    def __call__(self, sigma, sigma_next):
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        return self.increment(sigma, sigma_next) / (sigma_next - sigma).abs().sqrt()


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def f32(v):
    return torch.tensor(v, dtype=torch.float32)


def bits(t):
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    return [int(v) for v in a.view(np.uint32)]


def bit(x):
    return bits(np.array([float(x)], dtype=np.float32))[0]


def summary(t, keep=8):
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    d = a.astype(np.float64)
    return {
        "n": int(a.size),
        "crc32": zlib.crc32(a.astype("<f4").tobytes()) & 0xFFFFFFFF,
        "sum": math.fsum(d.tolist()),
        "sum_abs": math.fsum(np.abs(d).tolist()),
        "head": bits(a[:keep]),
        "tail": bits(a[max(0, a.size - keep):]),
    }


# --------------------------------------------------------------------------------------------
# Sigma sequences (float32 like ComfyUI's sigma tensors)
# --------------------------------------------------------------------------------------------


def karras(n, sigma_min=0.0291675, sigma_max=14.614642, rho=7.0):
    """ComfyUI's get_sigmas_karras (float32), with the final 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def flow(n, shift=5.0):
    """A Wan-style flow schedule: shift * t / (1 + (shift - 1) t) for t = 1 .. 1/n, then 0."""
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)[:-1]
    s = shift * t / (1 + (shift - 1) * t)
    return torch.cat([s.float(), torch.zeros(1)])


def flow_offset_first(shift=5.0, percent=1e-4):
    """ComfyUI's percent_to_sigma(1e-4) on a flow model (replaces a first sigma of 1)."""
    t = 1.0 - percent
    return float(f32(shift * t / (1 + (shift - 1) * t)))


def sde_calls(sigmas, offset_first=None, midpoints=False):
    """(sigma, sigma_next) pairs in the order the SDE samplers ask: per step to a non-zero sigma;
    with `midpoints` first to dpmpp_sde's sigma_s_1 (half way in -log sigma), then the step."""
    s = sigmas.clone()
    if offset_first is not None:
        s[0] = offset_first
    calls = []
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            continue
        if midpoints:
            lam_s, lam_t = s[i].log().neg(), s[i + 1].log().neg()
            mid = (lam_s + 0.5 * (lam_t - lam_s)).neg().exp()
            calls.append((s[i], mid))
        calls.append((s[i], s[i + 1]))
    return calls


def extra_calls(sigmas):
    """Repeated, out-of-order, reversed, whole-range and out-of-range queries."""
    pos = sigmas[sigmas > 0]
    lo, hi = pos.min(), pos.max()
    c = []
    c.append((pos[3], pos[4]))  # a later step first
    c.append((pos[1], pos[2]))
    c.append((pos[3], pos[4]))  # repeated
    c.append((pos[4], pos[2]))  # reversed direction, spanning two steps
    c.append((hi, lo))  # the whole tree
    c.append((lo, hi))
    c.append((hi * 1.5, pos[2]))  # above the range: clamped
    c.append((lo * 0.5, lo * 0.25))  # both below the range: zeros
    c.append((pos[2], pos[2] * (1 - 3e-6)))  # a few grid steps
    return c


# --------------------------------------------------------------------------------------------


def run_case(make, name, shape, seed, sigmas, calls, full):
    """One sampler, a sequence of calls. Per call: the tree's signed increment `w` (what
    BatchedBrownianTree returns; the tree always lives on the CPU), the normaliser
    sqrt(|sigma_next - sigma|) as torch's CPU kernel computes it (`sqrt_cpu`) and correctly
    rounded (`sqrt_ieee`, what CUDA computes when the sigmas live on the GPU), and checks that the
    wrapper's CPU output is exactly w / sqrt_cpu."""
    x = torch.zeros(shape)
    pos = sigmas[sigmas > 0]
    smin, smax = pos.min(), sigmas.max()
    sampler = make(x, smin, smax, seed)
    out_calls = []
    for sigma, sigma_next in calls:
        sigma, sigma_next = f32(float(sigma)), f32(float(sigma_next))
        noise_cpu = sampler(sigma, sigma_next)
        w = sampler.increment(sigma, sigma_next)
        assert noise_cpu.dtype == torch.float32 and tuple(noise_cpu.shape) == tuple(shape)
        sqrt_cpu = (sigma_next - sigma).abs().sqrt()
        # The float32 difference (IEEE on every device), correctly rounded square root.
        sqrt_ieee = np.sqrt(np.float32((sigma_next - sigma).abs().item()))
        w_np = w.numpy().astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            assert bits(noise_cpu) == bits(w_np / np.float32(sqrt_cpu.item()))
            noise_ieee = w_np / sqrt_ieee
        entry = {
            "sigma": bit(sigma),
            "sigma_next": bit(sigma_next),
            "sqrt_cpu": bit(sqrt_cpu),
            "sqrt_ieee": bit(sqrt_ieee),
        }
        if full:
            entry["w"] = bits(w)
        else:
            entry["w_summary"] = summary(w)
            entry["noise_ieee_summary"] = summary(noise_ieee, keep=0)
            entry["noise_cpu_summary"] = summary(noise_cpu, keep=0)
        out_calls.append(entry)
    return {
        "name": name,
        "seed": seed,
        "shape": list(shape),
        "sigma_min": bit(smin),
        "sigma_max": bit(smax),
        "calls": out_calls,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", default=os.environ.get("COMFY_REF", "/work/comfy_ref"))
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    comfy_cls, comfy_path = load_comfy_sampler(args.comfy)

    def make_comfy(x, lo, hi, seed):
        sampler = comfy_cls(x, lo, hi, seed=seed, cpu=True)
        # ComfyUI's own BatchedBrownianTree call, before the normalisation (identity transform).
        sampler.increment = lambda s, sn: sampler.tree(torch.as_tensor(s), torch.as_tensor(sn))
        return sampler

    def make_thin(x, lo, hi, seed):
        return ThinWrapper(x, lo, hi, seed)

    def run(*a, **k):
        ours = run_case(make_thin, *a, **k)
        if comfy_cls is None:
            return ours
        theirs = run_case(make_comfy, *a, **k)
        assert json.dumps(theirs) == json.dumps(ours), f"wrapper mismatch in {a[0]}"
        return theirs

    sdxl = karras(10)
    wan = flow(8)
    wan_offset = flow_offset_first()
    sdxl_calls = sde_calls(sdxl) + sde_calls(sdxl, midpoints=True) + extra_calls(sdxl)
    wan_calls = sde_calls(wan, offset_first=wan_offset) + extra_calls(wan)
    wan_calls.append((wan_offset, wan[1]))

    big_seed = 0xFEDCBA9876543210
    seeds = [0, 42, 2**32 + 7, 2**64 - 1, big_seed]
    cases = []
    for seed in seeds:
        cases.append(run(f"sdxl_karras10_seed{seed}_n7", [7], seed, sdxl, sdxl_calls, full=True))
        cases.append(run(f"wan_flow8_seed{seed}_n7", [7], seed, wan, wan_calls, full=True))
    for seed in (0, 2**64 - 1):
        cases.append(run(f"sdxl_karras10_seed{seed}_n1", [1], seed, sdxl, sdxl_calls, full=True))
    cases.append(run("sdxl_karras10_seed0_n64", [64], 0, sdxl, sdxl_calls, full=True))
    cases.append(run("wan_flow8_seed42_n64", [64], 42, wan, wan_calls, full=True))
    # A 4-D latent whose size is not a multiple of 16 (torch redraws the last 16 values).
    cases.append(run("sdxl_karras10_seed42_1x4x15x17", [1, 4, 15, 17], 42, sdxl, sdxl_calls[9:], full=False))
    cases.append(run("wan_flow8_seed7_1x4x15x17", [1, 4, 15, 17], 7, wan, wan_calls[:10], full=False))
    # Larger latents: several streamed chunks on the Rust side.
    cases.append(run("sdxl_karras10_seed2p32p7_16x5x8x8", [16, 5, 8, 8], 2**32 + 7, sdxl, sde_calls(sdxl), full=False))
    cases.append(run("wan_flow8_seedmax_1x16x3x9x29", [1, 16, 3, 9, 29], 2**64 - 1, wan,
                     sde_calls(wan, offset_first=wan_offset), full=False))
    # Above 65536 values the Rust side draws the noise streams on several threads.
    cases.append(run("sdxl_karras10_seed42_1x4x131x137", [1, 4, 131, 137], 42, sdxl, sdxl_calls[:4], full=False))
    # A list of seeds: one tree per batch item.
    cases.append(run("sdxl_batched_2x4x5x7", [2, 4, 5, 7], [3, 2**40 + 1], sdxl, sdxl_calls[:6], full=True))

    meta = {
        "torch": torch.__version__,
        "torchsde": torchsde.__version__,
        "numpy": np.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "wrapper": ("ComfyUI comfy/k_diffusion/sampling.py BrownianTreeNoiseSampler (checked against the "
                    "re-implementation)") if comfy_cls is not None else "re-implemented ThinWrapper",
        "encoding": "float32 bit patterns; summary = CRC-32 of the little-endian bytes, fsum of values",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(cases)} cases, wrapper: {meta['wrapper']})")


if __name__ == "__main__":
    main()
