#!/usr/bin/env python3
"""Writes the sampling test fixtures under tests/fixtures/sampling/ with PyTorch (the noise),
ComfyUI's schedule and sampler formulas (re-implemented below from ComfyUI's public
comfy/samplers.py, comfy/model_sampling.py and comfy/k_diffusion/sampling.py, with the same
float32 tensor arithmetic) and diffusers' UniPCMultistepScheduler (the official Wan solver is a
copy of it for flow prediction).

    /work/pyref/bin/python tools/reference/make_sampling_fixtures.py

Outputs (committed, small; CI never runs this script):
  rng.json        torch.randn(generator=torch.Generator().manual_seed(seed)) on the CPU: f32 bit
                  patterns of the first/last values, CRC-32 of all bytes, sums, for several seeds
                  and sizes; a sequence of calls on one generator (the Box-Muller cache of the
                  scalar path survives between calls); the Wan latent [1,16,21,60,104]; and the
                  same numbers from torch's non-AVX kernel (ATEN_CPU_CAPABILITY=default).
  schedules.json  ComfyUI sigma lists (normal, karras, exponential, simple, sgm_uniform) for the
                  SDXL discrete schedule and the Wan flow schedule (shift 3 and 5), the discrete and
                  flow sigma tables, sigma->timestep examples, and the official Wan UniPC sigmas.
  samplers.json   4-6 step runs of euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, lcm (ComfyUI
                  formulas) and UniPC (diffusers) with a toy analytic denoiser; stochastic samplers get
                  an injected noise list that is stored too; plus two end-to-end runs whose noise
                  comes from torch generators seeded like ComfyUI does (seed, then seed + 1).

Deterministic: rerunning gives identical files on an x86-64 machine with AVX2.
"""

import json
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.normpath(os.path.join(ROOT, "tests", "fixtures", "sampling"))

torch.set_num_threads(1)


def bits(t):
    """f32 bit patterns of a tensor/array, as a flat list of ints."""
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    return [int(v) for v in a.view(np.uint32)]


def crc(t):
    a = np.ascontiguousarray(np.asarray(t, dtype=np.float32)).reshape(-1)
    return zlib.crc32(a.astype("<f4").tobytes()) & 0xFFFFFFFF


def summary(v, keep=64):
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    n = v.size
    d = v.astype(np.float64)
    out = {
        "n": n,
        "crc32": crc(v),
        "sum": math.fsum(d.tolist()),
        "sum_sq": math.fsum((d * d).tolist()),
        "head": bits(v[:keep]),
        "tail": bits(v[max(0, n - keep):]),
    }
    return out


# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------

SEEDS = [0, 1, 42, 2**32 + 7, 2**64 - 1]
SIZES = [1, 7, 15, 16, 17, 100, 4 * 128 * 128]
WAN_SHAPE = [1, 16, 21, 60, 104]


def rng_fixture():
    cases = []
    for seed in SEEDS:
        for n in SIZES:
            g = torch.Generator().manual_seed(seed)
            v = torch.randn(n, generator=g)
            cases.append({"seed": str(seed), **summary(v)})
    # One generator, several calls: scalar (< 16) and vectorised (>= 16) paths interleaved.
    seq_sizes = [7, 100, 3, 16, 1, 33, 5, 2]
    g = torch.Generator().manual_seed(42)
    seq = [bits(torch.randn(n, generator=g)) for n in seq_sizes]
    # A 4-D shape is filled exactly like a flat one (contiguous): check with the SDXL latent.
    sdxl = summary(torch.randn([1, 4, 128, 128], generator=torch.Generator().manual_seed(0)))
    wan = []
    for seed in [0, 42]:
        v = torch.randn(WAN_SHAPE, generator=torch.Generator().manual_seed(seed)).reshape(-1)
        s = summary(v, keep=32)
        stride = 131071
        s["stride"] = stride
        s["strided"] = bits(v[::stride])
        wan.append({"seed": str(seed), **s})
    # torch.manual_seed returns the global generator: same stream as a fresh Generator.
    torch.manual_seed(1234)
    global_gen = bits(torch.randn(20))
    return {
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cases": cases,
        "sequence": {"seed": "42", "sizes": seq_sizes, "values": seq},
        "sdxl_latent_seed0": sdxl,
        "wan_latent": {"shape": WAN_SHAPE, "cases": wan},
        "global_manual_seed_1234_randn20": global_gen,
        "default_kernel": default_kernel_cases(),
    }


DEFAULT_KERNEL_SNIPPET = r"""
import json, sys, torch, zlib, numpy as np
out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cases": []}
for seed, n in [(0, 100), (1, 4096), (42, 17)]:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed)).numpy().astype("<f4")
    out["cases"].append({"seed": str(seed), "n": n, "crc32": zlib.crc32(v.tobytes()) & 0xFFFFFFFF,
                         "head": [int(x) for x in v[:32].view(np.uint32)],
                         "tail": [int(x) for x in v[-32:].view(np.uint32)]})
json.dump(out, sys.stdout)
"""


def default_kernel_cases():
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    res = subprocess.run([sys.executable, "-c", DEFAULT_KERNEL_SNIPPET], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(res.stdout)


# --------------------------------------------------------------------------------------------
# Schedules (ComfyUI comfy/model_sampling.py and comfy/samplers.py, same tensor arithmetic)
# --------------------------------------------------------------------------------------------

class ComfyDiscrete:
    """ModelSamplingDiscrete with the SDXL settings ("linear" = scaled_linear 0.00085..0.012)."""

    def __init__(self, linear_start=0.00085, linear_end=0.012, timesteps=1000):
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps,
                               dtype=torch.float64) ** 2
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float(), min=0, max=(len(self.sigmas) - 1))
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return self.sigma(torch.tensor(percent * 999.0)).item()


def time_snr_shift(alpha, t):
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


class ComfyFlow:
    """ModelSamplingDiscreteFlow (Wan: CONST parameterisation)."""

    def __init__(self, shift=1.0, timesteps=1000, multiplier=1000):
        self.shift = shift
        self.multiplier = multiplier
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return append_zero(sigmas)


def get_sigmas_exponential(n, sigma_min, sigma_max):
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp()
    return append_zero(sigmas)


def simple_scheduler(s, steps):
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def normal_scheduler(s, steps, sgm=False):
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    sigs = []
    for x in range(len(timesteps)):
        sigs.append(float(s.sigma(timesteps[x])))
    if append:
        sigs += [0.0]
    return torch.FloatTensor(sigs)


def calculate_sigmas(s, name, steps):
    if name == "normal":
        return normal_scheduler(s, steps)
    if name == "sgm_uniform":
        return normal_scheduler(s, steps, sgm=True)
    if name == "simple":
        return simple_scheduler(s, steps)
    if name == "karras":
        return get_sigmas_karras(steps, float(s.sigma_min), float(s.sigma_max))
    if name == "exponential":
        return get_sigmas_exponential(steps, float(s.sigma_min), float(s.sigma_max))
    raise ValueError(name)


SCHEDULERS = ["normal", "karras", "exponential", "simple", "sgm_uniform"]
STEPS = [1, 4, 25, 30]
FLOW_SHIFTS = [3.0, 5.0]


def wan_official_sigmas(steps, shift):
    """Wan2.1 wan/utils/fm_solvers_unipc.py FlowUniPCMultistepScheduler.set_timesteps."""
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    table = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)  # shift 1 at construction
    sigma_max = table[0].item()
    sigma_min = table[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = (sigmas * 1000).astype(np.int64)
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return sigmas, timesteps


def schedules_fixture():
    disc = ComfyDiscrete()
    out = {
        "discrete": {
            "sigmas_table": bits(disc.sigmas),
            "log_sigmas_table": bits(disc.log_sigmas),
            "lists": [],
            "timesteps": [],
            "sigma_of_timestep": [],
            "percent_to_sigma": [],
        },
        "flow": [],
        "wan_official": [],
    }
    for name in SCHEDULERS:
        for steps in STEPS:
            out["discrete"]["lists"].append(
                {"scheduler": name, "steps": steps, "sigmas": bits(calculate_sigmas(disc, name, steps))})
    probe = torch.tensor([14.614642, 10.0, 3.3, 1.0, 0.5, 0.1, 0.0291675, 0.03, 0.02, 20.0,
                          0.9999, 1.0001, 2.5, 7.77], dtype=torch.float32)
    ts = disc.timestep(probe)
    out["discrete"]["timesteps"] = [{"sigma": b, "timestep": int(t)} for b, t in zip(bits(probe), ts)]
    tprobe = torch.tensor([0.0, 1.0, 998.5, 999.0, 500.25, 123.75, 37.0, 1000.0, -3.0, 0.4],
                          dtype=torch.float32)
    out["discrete"]["sigma_of_timestep"] = [
        {"timestep": b, "sigma": bits(disc.sigma(t))[0]} for b, t in zip(bits(tprobe), tprobe)]
    out["discrete"]["percent_to_sigma"] = [
        {"percent": p, "sigma": disc.percent_to_sigma(p)} for p in [0.0, 0.1, 0.5, 0.9, 0.9999, 1.0]]

    for shift in FLOW_SHIFTS + [1.0]:
        fl = ComfyFlow(shift=shift)
        entry = {"shift": shift, "sigmas_table": bits(fl.sigmas), "lists": [],
                 "percent_to_sigma": [{"percent": p, "sigma": fl.percent_to_sigma(p)}
                                      for p in [0.0, 1e-4, 0.5, 0.75, 1.0]]}
        for name in SCHEDULERS:
            for steps in STEPS:
                entry["lists"].append(
                    {"scheduler": name, "steps": steps, "sigmas": bits(calculate_sigmas(fl, name, steps))})
        out["flow"].append(entry)

    for shift in [3.0, 5.0]:
        for steps in [1, 4, 40]:
            sig, ts = wan_official_sigmas(steps, shift)
            out["wan_official"].append({"shift": shift, "steps": steps, "sigmas": bits(sig),
                                        "timesteps": [int(t) for t in ts]})
    return out


# --------------------------------------------------------------------------------------------
# Samplers (ComfyUI comfy/k_diffusion/sampling.py, eta = 1, s_noise = 1, no churn)
# --------------------------------------------------------------------------------------------

def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def sample_euler(model, x, sigmas, flow):
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        x = x + d * dt
    return x


def sample_euler_ancestral(model, x, sigmas, flow, noise_sampler, eta=1.0, s_noise=1.0):
    if flow:
        return sample_euler_ancestral_RF(model, x, sigmas, noise_sampler, eta, s_noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_euler_ancestral_RF(model, x, sigmas, noise_sampler, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
            sigma_down = sigmas[i + 1] * downstep_ratio
            alpha_ip1 = 1 - sigmas[i + 1]
            alpha_down = 1 - sigma_down
            renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
            sigma_down_i_ratio = sigma_down / sigmas[i]
            x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * denoised
            if eta > 0:
                x = (alpha_ip1 / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise_coeff
    return x


def sample_heun(model, x, sigmas, flow):
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1])
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


def sample_dpmpp_2m(model, x, sigmas, flow):
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sigma_to_half_log_snr(sigma, flow):
    if flow:
        return sigma.logit().neg()
    return sigma.log().neg()


def offset_first_sigma_for_snr(sigmas, ms, flow, percent_offset=1e-4):
    if len(sigmas) <= 1:
        return sigmas
    if flow:
        if sigmas[0] >= 1:
            sigmas = sigmas.clone()
            sigmas[0] = ms.percent_to_sigma(percent_offset)
    return sigmas


def sample_dpmpp_2m_sde(model, x, sigmas, flow, ms, noise_sampler, eta=1.0, s_noise=1.0,
                        solver_type="midpoint"):
    lambda_fn = lambda s: sigma_to_half_log_snr(s, flow)
    sigmas = offset_first_sigma_for_snr(sigmas, ms, flow)
    old_denoised = None
    h, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = lambda_fn(sigmas[i]), lambda_fn(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                elif solver_type == "midpoint":
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def noise_scaling(flow, sigma, noise, latent_image, max_denoise=False):
    if flow:
        return sigma * noise + (1.0 - sigma) * latent_image
    if max_denoise:
        noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
    else:
        noise = noise * sigma
    return noise + latent_image


def sample_lcm(model, x, sigmas, flow, noise_sampler):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            x = noise_scaling(flow, sigmas[i + 1], noise, x)
    return x


# The toy denoiser: x0 = a x + (1 - a) c + 0.05 tanh(x) sigma / (1 + sigma), a = 1 / (1 + sigma^2).
N_TOY = 24


def toy_target():
    return torch.linspace(-1.5, 1.25, N_TOY)


def make_toy(counter):
    c = toy_target()

    def model(x, sigma):
        counter.append(float(sigma))
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        a = 1.0 / (1.0 + sigma * sigma)
        cc = c.reshape(x.shape)
        return x * a + cc * (1.0 - a) + 0.05 * torch.tanh(x) * (sigma / (1.0 + sigma))

    return model


class ListNoise:
    def __init__(self, n, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.n = n
        self.used = []

    def __call__(self, sigma, sigma_next):
        v = torch.randn(self.n, generator=self.g)
        self.used.append(bits(v))
        return v


def unipc_diffusers(x0, flow, steps, order, variant, flow_shift=3.0):
    from diffusers import UniPCMultistepScheduler

    if flow:
        sch = UniPCMultistepScheduler(num_train_timesteps=1000, solver_order=order,
                                      prediction_type="flow_prediction", use_flow_sigmas=True,
                                      flow_shift=flow_shift, solver_type=variant,
                                      lower_order_final=True, predict_x0=True,
                                      final_sigmas_type="zero")
    else:
        sch = UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                      beta_schedule="scaled_linear", solver_order=order,
                                      prediction_type="epsilon", use_karras_sigmas=True,
                                      solver_type=variant, lower_order_final=True, predict_x0=True,
                                      final_sigmas_type="zero")
    sch.set_timesteps(steps)
    sigmas = sch.sigmas.clone().float()
    calls = []
    trajectory = []
    model = make_toy(calls)
    if flow:
        sample = x0.clone()
        for i, t in enumerate(sch.timesteps):
            s = sigmas[i]
            den = model(sample, s)
            v = (sample - den) / s
            sample = sch.step(v, t, sample).prev_sample
            trajectory.append(bits(sample))
        result = sample
        start = x0
    else:
        # diffusers works on the variance-preserving sample x / sqrt(1 + sigma^2).
        start = x0 * torch.sqrt(1.0 + sigmas[0] ** 2)
        sample = x0.clone()
        for i, t in enumerate(sch.timesteps):
            s = sigmas[i]
            x_ve = sample * torch.sqrt(1.0 + s ** 2)
            den = model(x_ve, s)
            eps = (x_ve - den) / s
            sample = sch.step(eps, t, sample).prev_sample
            trajectory.append(bits(sample * torch.sqrt(1.0 + sigmas[i + 1] ** 2)))
        result = sample
    return sigmas, start, result, calls, trajectory


def samplers_fixture():
    disc = ComfyDiscrete()
    cases = []
    n = N_TOY
    start_noise = torch.randn(n, generator=torch.Generator().manual_seed(1))
    for space in ["discrete", "flow"]:
        flow = space == "flow"
        ms = ComfyFlow(shift=3.0) if flow else disc
        sched_name = "simple" if flow else "karras"
        for steps in [4, 6]:
            sigmas = calculate_sigmas(ms, sched_name, steps)
            x0 = noise_scaling(flow, sigmas[0], start_noise, torch.zeros(n), max_denoise=True)
            for name in ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "lcm"]:
                calls = []
                model = make_toy(calls)
                noise = ListNoise(n, seed=1000 + steps)
                if name == "euler":
                    res = sample_euler(model, x0, sigmas, flow)
                elif name == "euler_ancestral":
                    res = sample_euler_ancestral(model, x0, sigmas, flow, noise)
                elif name == "heun":
                    res = sample_heun(model, x0, sigmas, flow)
                elif name == "dpmpp_2m":
                    res = sample_dpmpp_2m(model, x0, sigmas, flow)
                elif name == "dpmpp_2m_sde":
                    res = sample_dpmpp_2m_sde(model, x0, sigmas, flow, ms, noise)
                elif name == "lcm":
                    res = sample_lcm(model, x0, sigmas, flow, noise)
                cases.append({
                    "space": space, "shift": 3.0 if flow else None, "sampler": name,
                    "sigmas": bits(sigmas), "x0": bits(x0), "noise": noise.used,
                    "model_sigmas": bits(torch.tensor(calls)), "result": bits(res),
                })
    # UniPC against diffusers (the official Wan solver is diffusers' UniPC for flow prediction).
    for flow, steps, order, variant in [(True, 6, 2, "bh2"), (True, 5, 3, "bh2"), (True, 4, 1, "bh2"),
                                        (True, 6, 2, "bh1"), (False, 6, 2, "bh2"), (False, 5, 2, "bh1"),
                                        (False, 6, 3, "bh2")]:
        x0 = start_noise.clone().reshape(1, 4, N_TOY // 4)  # diffusers wants [batch, channels, ...]
        sigmas, start, res, calls, trajectory = unipc_diffusers(x0, flow, steps, order, variant)
        cases.append({
            "space": "flow" if flow else "discrete", "shift": 3.0 if flow else None,
            "sampler": "uni_pc", "order": order, "variant": variant,
            "sigmas": bits(sigmas), "x0": bits(start), "noise": [],
            "model_sigmas": bits(torch.tensor(calls)), "result": bits(res),
            # x after every step; diffusers' bh1 ends in NaN when the last sigma is 0 (B(h) = -inf
            # times a zero residual), so the tests compare the finite entries.
            "trajectory": trajectory,
        })
    return {"toy": {"n": n, "target": bits(toy_target()),
                    "formula": "a*x + (1-a)*c + 0.05*tanh(x)*sigma/(1+sigma), a = 1/(1+sigma^2)"},
            "cases": cases, "end_to_end": end_to_end_cases()}


def end_to_end_cases():
    """ComfyUI's own noise: initial latent torch.randn(shape, generator=manual_seed(seed)) scaled by
    noise_scaling(max_denoise=True) on an empty latent, ancestral noise from default_noise_sampler:
    a CPU torch.Generator seeded with seed + 1 drawing torch.randn(x.size()) per call."""
    out = []
    shape = [1, 4, 4, 4]  # 64 values: the vectorised (>= 16) normal path
    for space, seed, steps in [("discrete", 123, 5), ("flow", 77, 4)]:
        flow = space == "flow"
        ms = ComfyFlow(shift=3.0) if flow else ComfyDiscrete()
        sigmas = calculate_sigmas(ms, "normal" if not flow else "simple", steps)
        latent = torch.zeros(shape)
        noise = torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout,
                            generator=torch.manual_seed(seed), device="cpu")
        x = noise_scaling(flow, sigmas[0], noise, latent, max_denoise=True)
        g = torch.Generator(device="cpu")
        g.manual_seed(seed + 1)
        ns = lambda s, sn: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=g)
        calls = []
        c = torch.linspace(-1.5, 1.25, 64).reshape(shape)

        def model(xx, sigma):
            calls.append(float(sigma))
            sigma = torch.as_tensor(sigma, dtype=torch.float32)
            a = 1.0 / (1.0 + sigma * sigma)
            return xx * a + c * (1.0 - a) + 0.05 * torch.tanh(xx) * (sigma / (1.0 + sigma))

        res = sample_euler_ancestral(model, x, sigmas, flow, ns)
        out.append({"space": space, "shift": 3.0 if flow else None, "seed": seed, "steps": steps,
                    "scheduler": "simple" if flow else "normal", "sampler": "euler_ancestral",
                    "shape": shape, "sigmas": bits(sigmas), "x0": bits(x),
                    "target": bits(c), "result": bits(res)})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, fn in [("rng.json", rng_fixture), ("schedules.json", schedules_fixture),
                     ("samplers.json", samplers_fixture)]:
        data = fn()
        path = os.path.join(OUT, name)
        with open(path, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
