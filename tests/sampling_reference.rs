//! The sampling module against numbers produced by PyTorch, ComfyUI's formulas and diffusers.
//!
//! Fixtures: `tests/fixtures/sampling/*.json`, written by
//! `tools/reference/make_sampling_fixtures.py` (torch 2.15, x86-64 AVX2). Values are stored as
//! f32 bit patterns. Run with `--nocapture` to see the measured differences.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::Path;

use nijigen::sampling::{
    comfy_initial_noise, comfy_sampler_noise, sample, Denoiser, DiscreteSchedule, FlowSchedule,
    FnDenoiser, ModelSampling, NoiseSource, NormalKernel, SamplerConfig, SamplerKind,
    SamplerOptions, Scheduler, TorchGenerator, UniPcVariant,
};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sampling")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn u64_of(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().expect("u64 string"),
        other => other.as_u64().expect("u64"),
    }
}

fn usize_of(v: &Value) -> usize {
    v.as_u64().expect("unsigned") as usize
}

fn bits(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of bit patterns")
        .iter()
        .map(|x| x.as_u64().expect("u32 bits") as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    bits(v).into_iter().map(f32::from_bits).collect()
}

fn to_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// CRC-32 (IEEE, as zlib.crc32) of the little-endian bytes of `v`.
fn crc32(v: &[f32]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xffff_ffffu32;
    for x in v {
        for b in x.to_le_bytes() {
            crc = table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
    }
    crc ^ 0xffff_ffff
}

/// Checks a `summary()` record of the fixture against our values, bit for bit.
fn check_summary(label: &str, ours: &[f32], s: &Value) {
    assert_eq!(ours.len(), usize_of(&s["n"]), "{label}: length");
    let head = bits(&s["head"]);
    let tail = bits(&s["tail"]);
    assert_eq!(to_bits(&ours[..head.len()]), head, "{label}: first values");
    assert_eq!(
        to_bits(&ours[ours.len() - tail.len()..]),
        tail,
        "{label}: last values"
    );
    assert_eq!(
        u64::from(crc32(ours)),
        s["crc32"].as_u64().unwrap(),
        "{label}: CRC-32 of all values"
    );
    let sum: f64 = ours.iter().map(|&x| f64::from(x)).sum();
    let sum_sq: f64 = ours.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let (rs, rq) = (s["sum"].as_f64().unwrap(), s["sum_sq"].as_f64().unwrap());
    assert!(
        (sum - rs).abs() <= 1e-9 * rq.max(1.0),
        "{label}: sum {sum} vs {rs}"
    );
    assert!(
        (sum_sq - rq).abs() <= 1e-9 * rq.max(1.0),
        "{label}: sum sq {sum_sq} vs {rq}"
    );
}

// ------------------------------------------------------------------------------------------
// Noise
// ------------------------------------------------------------------------------------------

#[test]
fn randn_matches_torch_for_all_seeds_and_sizes() {
    let f = fixture("rng.json");
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 35);
    for c in cases {
        let seed = u64_of(&c["seed"]);
        let n = usize_of(&c["n"]);
        let ours = TorchGenerator::new(seed).randn(n);
        check_summary(&format!("seed {seed} n {n}"), &ours, c);
    }
}

#[test]
fn successive_calls_continue_the_stream() {
    let f = fixture("rng.json");
    let seq = &f["sequence"];
    let mut g = TorchGenerator::new(u64_of(&seq["seed"]));
    for (n, expected) in seq["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(seq["values"].as_array().unwrap())
    {
        let n = usize_of(n);
        assert_eq!(to_bits(&g.randn(n)), bits(expected), "call of size {n}");
    }
    let expected = bits(&f["global_manual_seed_1234_randn20"]);
    assert_eq!(to_bits(&comfy_initial_noise(1234, 20)), expected);
}

#[test]
fn sdxl_latent_noise_matches_torch() {
    let f = fixture("rng.json");
    let ours = comfy_initial_noise(0, 4 * 128 * 128);
    check_summary("[1,4,128,128] seed 0", &ours, &f["sdxl_latent_seed0"]);
}

#[test]
fn wan_latent_noise_matches_torch() {
    let f = fixture("rng.json");
    let w = &f["wan_latent"];
    let n: usize = w["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(usize_of)
        .product();
    assert_eq!(n, 16 * 21 * 60 * 104);
    for c in w["cases"].as_array().unwrap() {
        let seed = u64_of(&c["seed"]);
        let ours = TorchGenerator::new(seed).randn(n);
        check_summary(&format!("wan seed {seed}"), &ours, c);
        let stride = usize_of(&c["stride"]);
        let strided: Vec<f32> = ours.iter().step_by(stride).copied().collect();
        assert_eq!(
            to_bits(&strided),
            bits(&c["strided"]),
            "wan seed {seed}: strided"
        );
    }
}

/// torch's portable kernel uses libm's logf/cosf/sinf: exact where Rust calls the same libm
/// (glibc), which is where the fixture was made.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn default_kernel_matches_torch_without_avx2() {
    let f = fixture("rng.json");
    let d = &f["default_kernel"];
    assert_eq!(d["cpu_capability"], "DEFAULT");
    for c in d["cases"].as_array().unwrap() {
        let seed = u64_of(&c["seed"]);
        let n = usize_of(&c["n"]);
        let ours = TorchGenerator::with_kernel(seed, NormalKernel::Default).randn(n);
        let head = bits(&c["head"]);
        let tail = bits(&c["tail"]);
        assert_eq!(to_bits(&ours[..head.len()]), head, "default seed {seed}");
        assert_eq!(
            to_bits(&ours[n - tail.len()..]),
            tail,
            "default seed {seed}"
        );
        assert_eq!(u64::from(crc32(&ours)), c["crc32"].as_u64().unwrap());
    }
}

// ------------------------------------------------------------------------------------------
// Schedules
// ------------------------------------------------------------------------------------------

/// Compares two f32 lists: returns (max relative error, number of values not bit-identical);
/// fails above `tol` relative error (absolute below 1e-6).
fn compare(label: &str, ours: &[f32], theirs: &[f32], tol: f64) -> (f64, usize) {
    assert_eq!(ours.len(), theirs.len(), "{label}: length");
    let mut max_rel = 0.0f64;
    let mut inexact = 0;
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        if a.to_bits() != b.to_bits() {
            inexact += 1;
        }
        let (a, b) = (f64::from(a), f64::from(b));
        let rel = (a - b).abs() / b.abs().max(1e-6);
        assert!(
            rel <= tol,
            "{label}[{i}]: ours {a} reference {b} (rel {rel:e})"
        );
        max_rel = max_rel.max(rel);
    }
    (max_rel, inexact)
}

fn scheduler(name: &Value) -> Scheduler {
    name.as_str().unwrap().parse().unwrap()
}

#[test]
fn discrete_table_and_schedules_match_comfyui() {
    let f = fixture("schedules.json");
    let d = &f["discrete"];
    let sdxl = DiscreteSchedule::sdxl();
    let (r, n) = compare(
        "sigmas table",
        sdxl.sigmas(),
        &floats(&d["sigmas_table"]),
        1e-6,
    );
    println!("SDXL sigma table: max rel {r:e}, {n}/1000 not bit-identical");
    let (r, n) = compare(
        "log sigmas table",
        sdxl.log_sigmas(),
        &floats(&d["log_sigmas_table"]),
        1e-6,
    );
    println!("SDXL log-sigma table: max rel {r:e}, {n}/1000 not bit-identical");

    let ms = ModelSampling::Discrete(sdxl.clone());
    let (mut worst, mut inexact, mut total) = (0.0f64, 0, 0);
    for l in d["lists"].as_array().unwrap() {
        let s = scheduler(&l["scheduler"]);
        let steps = usize_of(&l["steps"]);
        let ours = ms.sigmas(s, steps).unwrap();
        let (r, n) = compare(
            &format!("discrete {s} {steps}"),
            &ours,
            &floats(&l["sigmas"]),
            1e-6,
        );
        worst = worst.max(r);
        inexact += n;
        total += ours.len();
    }
    println!("discrete schedules: max rel {worst:e}, {inexact}/{total} not bit-identical");

    for t in d["timesteps"].as_array().unwrap() {
        let sigma = f32::from_bits(t["sigma"].as_u64().unwrap() as u32);
        assert_eq!(
            sdxl.sigma_to_timestep(sigma),
            usize_of(&t["timestep"]),
            "timestep of sigma {sigma}"
        );
    }
    for t in d["sigma_of_timestep"].as_array().unwrap() {
        let ts = f32::from_bits(t["timestep"].as_u64().unwrap() as u32);
        let expected = f32::from_bits(t["sigma"].as_u64().unwrap() as u32);
        let ours = sdxl.timestep_to_sigma(ts);
        compare(
            &format!("sigma of timestep {ts}"),
            &[ours],
            &[expected],
            1e-6,
        );
    }
    for t in d["percent_to_sigma"].as_array().unwrap() {
        let p = t["percent"].as_f64().unwrap();
        let expected = t["sigma"].as_f64().unwrap() as f32;
        compare(
            &format!("percent {p}"),
            &[sdxl.percent_to_sigma(p)],
            &[expected],
            1e-6,
        );
    }
}

#[test]
fn flow_table_and_schedules_match_comfyui() {
    let f = fixture("schedules.json");
    for entry in f["flow"].as_array().unwrap() {
        let shift = entry["shift"].as_f64().unwrap();
        let fl = FlowSchedule::new(shift).unwrap();
        let (r, n) = compare(
            &format!("flow table shift {shift}"),
            fl.sigmas(),
            &floats(&entry["sigmas_table"]),
            1e-6,
        );
        println!("flow table shift {shift}: max rel {r:e}, {n}/1000 not bit-identical");
        let ms = ModelSampling::Flow(fl.clone());
        let (mut worst, mut inexact, mut total) = (0.0f64, 0, 0);
        for l in entry["lists"].as_array().unwrap() {
            let s = scheduler(&l["scheduler"]);
            let steps = usize_of(&l["steps"]);
            let ours = ms.sigmas(s, steps).unwrap();
            let (r, n) = compare(
                &format!("flow {shift} {s} {steps}"),
                &ours,
                &floats(&l["sigmas"]),
                1e-6,
            );
            worst = worst.max(r);
            inexact += n;
            total += ours.len();
        }
        println!(
            "flow shift {shift} schedules: max rel {worst:e}, {inexact}/{total} not bit-identical"
        );
        for p in entry["percent_to_sigma"].as_array().unwrap() {
            let pc = p["percent"].as_f64().unwrap();
            let expected = p["sigma"].as_f64().unwrap();
            assert!(
                (fl.percent_to_sigma(pc) - expected).abs() <= 1e-12,
                "percent {pc}"
            );
        }
    }
    for w in f["wan_official"].as_array().unwrap() {
        let shift = w["shift"].as_f64().unwrap();
        let steps = usize_of(&w["steps"]);
        let fl = FlowSchedule::new(shift).unwrap();
        let ours = fl.wan_official_sigmas(steps).unwrap();
        let (r, n) = compare(
            &format!("wan {shift} {steps}"),
            &ours,
            &floats(&w["sigmas"]),
            1e-6,
        );
        println!("official Wan sigmas shift {shift} steps {steps}: max rel {r:e}, {n} inexact");
        let ts: Vec<i64> = w["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        assert_eq!(fl.wan_official_timesteps(steps).unwrap(), ts);
    }
}

// ------------------------------------------------------------------------------------------
// Samplers
// ------------------------------------------------------------------------------------------

/// The fixture's toy denoiser, with the same float32 expression order as the Python one:
/// `x*a + c*(1-a) + 0.05*tanh(x)*(sigma/(1+sigma))`, `a = 1/(1+sigma^2)`. Records its sigmas.
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

/// Replays the noise the Python reference drew, and counts what is left.
struct Replay(VecDeque<Vec<f32>>);

impl NoiseSource for Replay {
    fn fill_noise(&mut self, _s: f32, _sn: f32, out: &mut [f32]) {
        let v = self
            .0
            .pop_front()
            .expect("the sampler drew more noise than the reference");
        out.copy_from_slice(&v);
    }
}

fn model_sampling(case: &Value) -> ModelSampling {
    match case["space"].as_str().unwrap() {
        "discrete" => ModelSampling::Discrete(DiscreteSchedule::sdxl()),
        "flow" => ModelSampling::Flow(FlowSchedule::new(case["shift"].as_f64().unwrap()).unwrap()),
        other => panic!("space {other}"),
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn samplers_match_the_references_on_a_toy_denoiser() {
    let f = fixture("samplers.json");
    let target = floats(&f["toy"]["target"]);
    let mut report = Vec::new();
    let mut checked = 0;
    for case in f["cases"].as_array().unwrap() {
        // The fixture's "uni_pc" is diffusers' UniPC, our `unipc_wan` (ComfyUI's `uni_pc` is
        // tested in tests/comfy_sampling.rs).
        let kind: SamplerKind = match case["sampler"].as_str().unwrap() {
            "uni_pc" => SamplerKind::UniPcWan,
            name => name.parse().unwrap(),
        };
        let ms = model_sampling(case);
        let sigmas = floats(&case["sigmas"]);
        let x0 = floats(&case["x0"]);
        let mut options = SamplerOptions::default();
        if kind == SamplerKind::UniPcWan {
            options.unipc_order = usize_of(&case["order"]);
            options.unipc_variant = match case["variant"].as_str().unwrap() {
                "bh1" => UniPcVariant::Bh1,
                _ => UniPcVariant::Bh2,
            };
        }
        let label = format!(
            "{} {} steps {} order {}",
            case["space"].as_str().unwrap(),
            kind,
            sigmas.len() - 1,
            options.unipc_order
        );
        let cfg = SamplerConfig::new(kind, ms, sigmas)
            .unwrap()
            .with_options(options)
            .unwrap();
        let noise_list: VecDeque<Vec<f32>> = case["noise"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let expected_draws = noise_list.len();
        let mut replay = Replay(noise_list);
        let noise: Option<Box<dyn NoiseSource + Send + '_>> = if cfg.needs_noise() {
            Some(Box::new(&mut replay))
        } else {
            None
        };
        let mut calls = Vec::new();
        let mut model = toy(target.clone(), &mut calls);
        let mut trajectory = Vec::new();
        let out = sample(&cfg, x0, noise, &mut model, |v| {
            trajectory.push(v.x.to_vec())
        })
        .unwrap();
        drop(model);
        assert!(
            replay.0.is_empty(),
            "{label}: drew fewer noise tensors than the reference"
        );
        assert!(expected_draws == 0 || cfg.needs_noise(), "{label}");
        assert_eq!(
            to_bits(&calls),
            bits(&case["model_sigmas"]),
            "{label}: the denoiser was called at other sigmas"
        );
        let expected = floats(&case["result"]);
        let mut err = 0.0f32;
        if let Some(traj) = case.get("trajectory").and_then(Value::as_array) {
            assert_eq!(traj.len(), trajectory.len(), "{label}: steps");
            for (step, (t, ours)) in traj.iter().zip(&trajectory).enumerate() {
                let t = floats(t);
                if t.iter().all(|v| v.is_finite()) {
                    let e = max_abs(ours, &t);
                    assert!(e < 1e-5, "{label}: step {step} differs by {e}");
                    err = err.max(e);
                } else {
                    // diffusers' bh1 ends in NaN on the last step to sigma 0; ours is the
                    // final x0 prediction there.
                    assert_eq!(step, traj.len() - 1, "{label}: NaN before the last step");
                    assert!(ours.iter().all(|v| v.is_finite()));
                }
            }
        }
        if expected.iter().all(|v| v.is_finite()) {
            let e = max_abs(&out, &expected);
            assert!(e < 1e-5, "{label}: result differs by {e}");
            err = err.max(e);
        }
        report.push(format!("{label}: max abs diff {err:e}"));
        checked += 1;
    }
    assert_eq!(checked, 31);
    println!("{}", report.join("\n"));
}

#[test]
fn end_to_end_with_comfyui_noise() {
    let f = fixture("samplers.json");
    for case in f["end_to_end"].as_array().unwrap() {
        let ms = model_sampling(case);
        let seed = u64_of(&case["seed"]);
        let steps = usize_of(&case["steps"]);
        let sched: Scheduler = case["scheduler"].as_str().unwrap().parse().unwrap();
        let sigmas = ms.sigmas(sched, steps).unwrap();
        assert_eq!(to_bits(&sigmas), bits(&case["sigmas"]), "sigmas");
        let n: usize = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(usize_of)
            .product();
        let noise = comfy_initial_noise(seed, n);
        let latent = vec![0.0f32; n];
        let x0 = ms
            .parameterization()
            .noise_scaling(sigmas[0], &noise, &latent, true);
        assert_eq!(to_bits(&x0), bits(&case["x0"]), "initial latent");
        let cfg = SamplerConfig::new(SamplerKind::EulerAncestral, ms, sigmas).unwrap();
        let mut calls = Vec::new();
        let mut model = toy(floats(&case["target"]), &mut calls);
        let out = sample(
            &cfg,
            x0,
            Some(Box::new(comfy_sampler_noise(seed))),
            &mut model,
            |_| {},
        )
        .unwrap();
        let e = max_abs(&out, &floats(&case["result"]));
        println!("end to end {}: max abs diff {e:e}", case["space"]);
        assert!(e < 1e-5, "{}: {e}", case["space"]);
    }
}
