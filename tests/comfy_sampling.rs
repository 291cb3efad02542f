//! The sampling module against values computed by ComfyUI's own code: its schedulers and
//! KSampler sigma logic (comfy/samplers.py), its k-diffusion samplers and UniPC run through
//! `KSAMPLER.sample` on a toy denoiser, with SDXL's eps and Wan's flow model samplings.
//!
//! Fixtures: `tests/fixtures/comfy_sampling/*.json`, written by
//! `tools/reference/make_comfy_sampling_fixtures.py` (torch CPU, one thread). Values are f32 bit
//! patterns (f64 ones as u64 bit patterns in strings). Run with `--nocapture` to see the
//! measured differences.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;

use nijigen::sampling::special::beta_ppf;
use nijigen::sampling::{
    comfy_initial_noise, ksampler_sigmas, sample, Denoiser, DiscreteSchedule, FlowSchedule,
    FnDenoiser, ModelSampling, NoiseSource, SamplerConfig, SamplerKind, Scheduler, TorchGenerator,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/comfy_sampling")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("unsigned") as usize
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array of bit patterns")
        .iter()
        .map(|x| f32::from_bits(x.as_u64().expect("u32 bits") as u32))
        .collect()
}

fn f64_of(v: &Value) -> f64 {
    f64::from_bits(v.as_str().expect("u64 bits string").parse().expect("u64"))
}

fn model_sampling(name: &str) -> ModelSampling {
    match name {
        "sdxl" => ModelSampling::Discrete(DiscreteSchedule::sdxl()),
        "flow_shift5" => ModelSampling::Flow(FlowSchedule::new(5.0).unwrap()),
        "flow_shift3" => ModelSampling::Flow(FlowSchedule::new(3.0).unwrap()),
        other => panic!("model {other}"),
    }
}

/// Worst differences seen over a group of comparisons.
#[derive(Default, Clone, Copy)]
struct Err {
    max_abs: f64,
    max_rel: f64,
    values: usize,
    inexact: usize,
}

impl Err {
    /// Compares `ours` with `theirs`; the relative error is taken against `scale` (the
    /// reference's largest magnitude, at least 1e-6) so values near 0 do not blow it up.
    fn add(&mut self, ours: &[f32], theirs: &[f32]) {
        assert_eq!(ours.len(), theirs.len(), "length");
        let scale = theirs
            .iter()
            .fold(0.0f64, |m, &v| m.max(f64::from(v).abs()))
            .max(1e-6);
        for (&a, &b) in ours.iter().zip(theirs) {
            self.values += 1;
            if a.to_bits() != b.to_bits() {
                self.inexact += 1;
            }
            let d = (f64::from(a) - f64::from(b)).abs();
            self.max_abs = self.max_abs.max(d);
            self.max_rel = self.max_rel.max(d / scale);
        }
    }

    fn merge(&mut self, o: &Err) {
        self.max_abs = self.max_abs.max(o.max_abs);
        self.max_rel = self.max_rel.max(o.max_rel);
        self.values += o.values;
        self.inexact += o.inexact;
    }

    fn line(&self) -> String {
        format!(
            "max abs {:.2e}, max rel {:.2e}, {}/{} not bit-identical",
            self.max_abs, self.max_rel, self.inexact, self.values
        )
    }
}

/// Element-wise relative comparison of sigma lists (every sigma against itself).
fn sigma_err(label: &str, ours: &[f32], theirs: &[f32], tol: f64, err: &mut Err) {
    assert_eq!(ours.len(), theirs.len(), "{label}: {ours:?} vs {theirs:?}");
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        let (a64, b64) = (f64::from(a), f64::from(b));
        let rel = (a64 - b64).abs() / b64.abs().max(1e-30);
        assert!(
            rel <= tol || a == b,
            "{label}[{i}]: ours {a} ComfyUI {b} (rel {rel:e})"
        );
        err.values += 1;
        if a.to_bits() != b.to_bits() {
            err.inexact += 1;
        }
        err.max_abs = err.max_abs.max((a64 - b64).abs());
        if b != 0.0 {
            err.max_rel = err.max_rel.max(rel);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Schedulers
// ------------------------------------------------------------------------------------------

#[test]
fn every_comfyui_scheduler_is_implemented() {
    let f = fixture("schedulers.json");
    let names: Vec<&str> = f["scheduler_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), Scheduler::ALL.len());
    for n in names {
        let s: Scheduler = n.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(s.name(), n);
    }
}

#[test]
fn schedulers_match_comfyui() {
    let f = fixture("schedulers.json");
    let mut per: BTreeMap<String, Err> = BTreeMap::new();
    let mut n = 0;
    for l in f["lists"].as_array().unwrap() {
        let model = l["model"].as_str().unwrap();
        let name = l["scheduler"].as_str().unwrap();
        let steps = usize_of(&l["steps"]);
        let ours = model_sampling(model)
            .sigmas(name.parse().unwrap(), steps)
            .unwrap();
        let label = format!("{model} {name} {steps}");
        let e = per.entry(format!("{name} {model}")).or_default();
        sigma_err(&label, &ours, &floats(&l["sigmas"]), 1e-6, e);
        n += 1;
    }
    assert_eq!(n, 3 * 9 * 8 - 3);
    for (k, e) in &per {
        println!("scheduler {k}: {}", e.line());
    }
    // ComfyUI divides by steps - 1 for kl_optimal: NaN at one step; ours is an error.
    assert!(model_sampling("sdxl")
        .sigmas(Scheduler::KlOptimal, 1)
        .is_err());
}

#[test]
fn beta_quantile_matches_scipy() {
    let f = fixture("schedulers.json");
    let mut worst = 0.0f64;
    for p in f["beta_ppf_a0.6_b0.6"].as_array().unwrap() {
        let q = f64_of(&p["q"]);
        let want = f64_of(&p["ppf"]);
        let got = beta_ppf(q, 0.6, 0.6);
        let d = (got - want).abs();
        assert!(d <= 1e-13, "beta.ppf({q}): ours {got} scipy {want}");
        worst = worst.max(d);
    }
    println!("beta.ppf(q, 0.6, 0.6) vs scipy: max abs diff {worst:e}");
}

// ------------------------------------------------------------------------------------------
// KSampler sigmas
// ------------------------------------------------------------------------------------------

#[test]
fn ksampler_sigmas_match_comfyui() {
    let f = fixture("ksampler.json");
    let mut err = Err::default();
    let (mut n, mut empty) = (0, 0);
    for c in f["cases"].as_array().unwrap() {
        let model = c["model"].as_str().unwrap();
        let kind: SamplerKind = c["sampler"].as_str().unwrap().parse().unwrap();
        let sched: Scheduler = c["scheduler"].as_str().unwrap().parse().unwrap();
        let steps = usize_of(&c["steps"]);
        let denoise = f64_of(&c["denoise"]);
        let ours = ksampler_sigmas(kind, &model_sampling(model), sched, steps, denoise).unwrap();
        let theirs = floats(&c["sigmas"]);
        if theirs.is_empty() {
            empty += 1;
        }
        let label = format!("{model} {kind} {sched} {steps} denoise {denoise}");
        sigma_err(&label, &ours, &theirs, 1e-6, &mut err);
        n += 1;
    }
    assert!(n > 1000 && empty > 0, "{n} cases, {empty} empty");
    println!("ksampler_sigmas, {n} cases: {}", err.line());
}

// ------------------------------------------------------------------------------------------
// Samplers
// ------------------------------------------------------------------------------------------

/// The fixture's toy denoiser, in the Python expression order; records its sigmas.
fn toy(target: Vec<f32>, calls: &mut Vec<f32>) -> impl Denoiser<Error = Infallible> + '_ {
    FnDenoiser(move |x: &[f32], s: f32| {
        calls.push(s);
        let a = 1.0 / (1.0 + s * s);
        let one_minus = 1.0 - a;
        let k = s / (1.0 + s);
        Ok(x.iter()
            .zip(&target)
            .map(|(&xi, &c)| xi * a + c * one_minus + 0.05 * xi.tanh() * k)
            .collect())
    })
}

/// The fixture's recording noise sampler: `torch.randn` from a generator seeded like it,
/// recording the `(sigma, sigma_next)` of every call.
struct Recording {
    generator: TorchGenerator,
    calls: Vec<[f32; 2]>,
}

impl NoiseSource for Recording {
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        self.calls.push([sigma, sigma_next]);
        self.generator.fill_randn(out);
    }
}

/// `Sampler.max_denoise`: `math.isclose(sigma_max, sigma, rel_tol=1e-5) or sigma > sigma_max`.
fn max_denoise(ms: &ModelSampling, s0: f32) -> bool {
    let (a, b) = (f64::from(ms.sigma_max()), f64::from(s0));
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) || b > a
}

#[test]
fn samplers_match_comfyui_on_a_toy_denoiser() {
    let f = fixture("samplers.json");
    let target = floats(&f["target"]);
    let latent_cos = floats(&f["latent_cos"]);
    let n = target.len();
    let mut per: BTreeMap<String, Err> = BTreeMap::new();
    let mut starts = Err::default();
    let mut ks = Err::default();
    let mut model_sig = Err::default();
    let mut noise_args = Err::default();
    let mut kinds = std::collections::BTreeSet::new();
    let cases = f["cases"].as_array().unwrap();
    for c in cases {
        let name = c["sampler"].as_str().unwrap();
        let kind: SamplerKind = name.parse().unwrap();
        kinds.insert(name);
        let model = c["model"].as_str().unwrap();
        let ms = model_sampling(model);
        let sched: Scheduler = c["scheduler"].as_str().unwrap().parse().unwrap();
        let steps = usize_of(&c["steps"]);
        let denoise = f64_of(&c["denoise"]);
        let label = format!("{name} {model} {sched} steps {steps} denoise {denoise}");
        let sigmas = floats(&c["sigmas"]);

        // KSampler's sigma list (the segments are slices of a 6-step one).
        let segment = c["segment"].as_str().unwrap();
        let label = format!("{label} {segment}");
        let ours_sigmas = ksampler_sigmas(kind, &ms, sched, steps, denoise).unwrap();
        match segment {
            "all" => sigma_err(&label, &ours_sigmas, &sigmas, 1e-6, &mut ks),
            "end" => sigma_err(&label, &ours_sigmas[..5], &sigmas, 1e-6, &mut ks),
            _ => sigma_err(&label, &ours_sigmas[3..], &sigmas, 1e-6, &mut ks),
        }
        // ComfyUI's sample_unipc overwrites a last sigma 0 of the caller's list with 0.001.
        if let Some(after) = c.get("sigmas_after") {
            assert!(
                matches!(kind, SamplerKind::UniPc | SamplerKind::UniPcBh2),
                "{label}"
            );
            let after = floats(after);
            assert_eq!(after[after.len() - 1], 0.001, "{label}");
            assert_eq!(sigmas[sigmas.len() - 1], 0.0, "{label}");
        }

        // The start latent: ComfyUI's noise, noise_scaling as KSAMPLER does it.
        let seed = c["seed"].as_u64().unwrap();
        let noise = if segment == "start" {
            vec![0.0; n] // KSamplerAdvanced without added noise
        } else {
            comfy_initial_noise(seed, n)
        };
        let latent = match c["latent"].as_str().unwrap() {
            "cos" => latent_cos.clone(),
            _ => vec![0.0; n],
        };
        let md = max_denoise(&ms, sigmas[0]);
        assert_eq!(
            md,
            c["max_denoise"].as_bool().unwrap(),
            "{label}: max_denoise"
        );
        let x_ours = ms
            .parameterization()
            .noise_scaling(sigmas[0], &noise, &latent, md);
        let x_start = floats(&c["x_start"]);
        starts.add(&x_ours, &x_start);

        // The run, from ComfyUI's start latent.
        let cfg = SamplerConfig::new(kind, ms.clone(), sigmas.clone()).unwrap();
        let mut rec = Recording {
            generator: TorchGenerator::new(c["noise_seed"].as_u64().unwrap()),
            calls: Vec::new(),
        };
        let noise_src: Option<Box<dyn NoiseSource + Send + '_>> = if cfg.needs_noise() {
            Some(Box::new(&mut rec))
        } else {
            None
        };
        let mut calls = Vec::new();
        let mut toy_model = toy(target.clone(), &mut calls);
        let mut out = sample(&cfg, x_start, noise_src, &mut toy_model, |_| {}).unwrap();
        drop(toy_model);
        // KSAMPLER.sample's inverse noise scaling at the plan's last sigma (identity at 0).
        ms.parameterization()
            .inverse_noise_scaling(sigmas[sigmas.len() - 1], &mut out);

        let theirs_calls = floats(&c["model_sigmas"]);
        assert_eq!(calls.len(), theirs_calls.len(), "{label}: model calls");
        assert_eq!(
            cfg.model_evaluations(),
            calls.len(),
            "{label}: model_evaluations"
        );
        sigma_err(&label, &calls, &theirs_calls, 1e-6, &mut model_sig);

        let noise_calls: Vec<[f32; 2]> = c["noise_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let v = floats(p);
                [v[0], v[1]]
            })
            .collect();
        if kind == SamplerKind::ResMultistep {
            // ComfyUI draws noise for it and multiplies it by 0; we draw none.
            assert!(rec.calls.is_empty(), "{label}");
        } else {
            assert_eq!(rec.calls.len(), noise_calls.len(), "{label}: noise calls");
            for (k, (a, b)) in rec.calls.iter().zip(&noise_calls).enumerate() {
                sigma_err(
                    &format!("{label} noise call {k}"),
                    a,
                    b,
                    1e-6,
                    &mut noise_args,
                );
            }
            assert_eq!(kind.is_stochastic(), !noise_calls.is_empty(), "{label}");
        }

        let theirs = floats(&c["result"]);
        let mut e = Err::default();
        e.add(&out, &theirs);
        assert!(
            e.max_rel <= 1e-5,
            "{label}: result differs: {}\nours   {:?}\ntheirs {:?}",
            e.line(),
            &out[..6],
            &theirs[..6]
        );
        per.entry(format!("{name:<14} {model}"))
            .or_default()
            .merge(&e);
    }
    for k in SamplerKind::ALL {
        if k != SamplerKind::UniPcWan {
            assert!(kinds.contains(k.name()), "no fixture for {k}");
        }
    }
    println!("KSampler sigmas of the runs: {}", ks.line());
    println!("start latents (noise_scaling): {}", starts.line());
    println!("model call sigmas: {}", model_sig.line());
    println!("noise call (sigma, sigma_next): {}", noise_args.line());
    for (k, e) in &per {
        println!("{k}: {}", e.line());
    }
    println!("{} runs", cases.len());
}

/// The stochastic samplers with ComfyUI's own noise (no noise sampler injected): what
/// `SamplerConfig::comfy_noise` builds for a seed (the Brownian tree over the run's sigmas for
/// the SDE samplers, torch's generator at seed + 1 for the others) gives ComfyUI's result,
/// seeds above 2^32 included.
#[test]
fn stochastic_samplers_with_comfyuis_own_noise() {
    let f = fixture("e2e_noise.json");
    let target = floats(&f["target"]);
    let n = target.len();
    let mut worst = Err::default();
    let cases = f["cases"].as_array().unwrap();
    for c in cases {
        let name = c["sampler"].as_str().unwrap();
        let kind: SamplerKind = name.parse().unwrap();
        let model = c["model"].as_str().unwrap();
        let ms = model_sampling(model);
        let sched: Scheduler = c["scheduler"].as_str().unwrap().parse().unwrap();
        let steps = usize_of(&c["steps"]);
        let seed: u64 = c["seed"].as_str().unwrap().parse().unwrap();
        let label = format!("{name} {model} {sched} {steps} steps seed {seed}");
        let sigmas = ksampler_sigmas(kind, &ms, sched, steps, 1.0).unwrap();
        sigma_err(
            &label,
            &sigmas,
            &floats(&c["sigmas"]),
            1e-6,
            &mut Err::default(),
        );
        let x = ms.parameterization().noise_scaling(
            sigmas[0],
            &comfy_initial_noise(seed, n),
            &vec![0.0; n],
            max_denoise(&ms, sigmas[0]),
        );
        let cfg = SamplerConfig::new(kind, ms.clone(), sigmas.clone()).unwrap();
        let noise = cfg.comfy_noise(n, seed).unwrap();
        assert!(noise.is_some(), "{label}: draws noise");
        let mut calls = Vec::new();
        let mut model_fn = toy(target.clone(), &mut calls);
        let mut out = sample(&cfg, x, noise, &mut model_fn, |_| {}).unwrap();
        ms.parameterization()
            .inverse_noise_scaling(sigmas[sigmas.len() - 1], &mut out);
        let mut e = Err::default();
        e.add(&out, &floats(&c["result"]));
        assert!(e.max_rel <= 1e-5, "{label}: {}", e.line());
        worst.merge(&e);
    }
    assert_eq!(cases.len(), 6 * 3 * 2);
    println!(
        "{} runs with ComfyUI's own noise: {}",
        cases.len(),
        worst.line()
    );
}
