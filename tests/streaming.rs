//! The low-VRAM runtime on the CPU with simulated budgets: the Wan DiT with its weights resident
//! in leased device buffers, or streamed block by block through two slots (a copy thread
//! uploading ahead) or one slot, gives bit-identical output to the unconstrained run from the
//! memory-mapped file; the accountant's peak never exceeds the budget; a budget below the
//! minimum fails with the accountant's error; the planner's prediction bounds the measured peak.
//! The model is the tiny I2V DiT of tests/fixtures/wan_dit (2 blocks).

mod common;

use std::path::Path;

use common::{read_f32_entry, recipe_tensors, write_safetensors, St};
use nijigen::ggml::Backend;
use nijigen::models::WanDit;
use nijigen::runtime::{Accountant, DeviceWeights, Residency, WeightStore};
use serde_json::Value;

const DIR: &str = "tests/fixtures/wan_dit";

struct Case {
    _dir: tempfile::TempDir,
    store: WeightStore,
    x: Vec<f32>,
    t: f32,
    text: Vec<f32>,
    image: Vec<f32>,
    fhw: (usize, usize, usize),
}

fn case(ty: St) -> Case {
    let ix: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(DIR).join("index.json")).unwrap())
            .unwrap();
    let c = &ix["i2v"];
    let tensors = recipe_tensors(&c["tensors"]);
    let refs: Vec<(&str, Vec<u64>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diffusion_pytorch_model.safetensors");
    write_safetensors(&path, &refs, ty);
    let (x, xs) = read_f32_entry(DIR, &c["x"]);
    let (mut text, _) = read_f32_entry(DIR, &ix["text"]);
    text.resize(512 * 64, 0.0);
    let (image, _) = read_f32_entry(DIR, &ix["image"]);
    Case {
        store: WeightStore::open_path(&path).unwrap(),
        _dir: dir,
        x,
        t: c["timestep"].as_f64().unwrap() as f32,
        text,
        image,
        fhw: (xs[1], xs[2], xs[3]),
    }
}

impl Case {
    fn forward(&self, dit: &mut WanDit<'_>) -> Vec<f32> {
        let (f, h, w) = self.fhw;
        dit.forward(&self.x, self.t, &self.text, Some(&self.image), f, h, w)
            .unwrap()
    }
}

fn blocks(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("blocks.{i}.")).collect()
}

/// Output and accountant of a run with `residency` under `budget` (two forwards: the second
/// reuses the graphs, as CFG and later steps do).
fn run(
    c: &Case,
    residency: &Residency,
    budget: Option<u64>,
) -> Result<(Vec<f32>, Accountant), String> {
    run_staged(c, residency, budget, None)
}

/// As [`run`], with block uploads sent through a host staging buffer of `staging` bytes (the
/// path a GPU takes through pinned memory).
fn run_staged(
    c: &Case,
    residency: &Residency,
    budget: Option<u64>,
    staging: Option<usize>,
) -> Result<(Vec<f32>, Accountant), String> {
    let set = c.store.load_cpu(|_| true).unwrap();
    let acct = budget.map_or_else(Accountant::unlimited, Accountant::with_budget);
    let backend = Backend::cpu(1).unwrap();
    let mut dw =
        DeviceWeights::build(&set, &backend, residency, &acct, "dit").map_err(|e| e.to_string())?;
    if let Some(bytes) = staging {
        let host = backend.device().unwrap().host_buffer(bytes).unwrap();
        dw.stage_through(host).unwrap();
    }
    let mut dit = WanDit::new(dw.set(), "", 1).unwrap();
    dit.runner_mut().set_accountant(Some(&acct));
    dit.set_streaming(Some(&dw)).unwrap();
    let (f, h, w) = c.fhw;
    let once = |dit: &mut WanDit<'_>| {
        dit.forward(&c.x, c.t, &c.text, Some(&c.image), f, h, w)
            .map_err(|e| e.to_string())
    };
    let a = once(&mut dit)?;
    if dw.is_streamed() {
        let s = dit.last_stream_stats();
        let block_bytes: u64 = set
            .names()
            .iter()
            .filter(|n| n.starts_with("blocks."))
            .map(|n| set.get(n).unwrap().nbytes() as u64)
            .sum();
        assert_eq!(
            s.uploaded_bytes, block_bytes,
            "every block uploaded once per forward"
        );
    }
    let b = once(&mut dit)?;
    assert_eq!(
        a, b,
        "the second forward reuses the graphs and gives the same output"
    );
    Ok((a, acct))
}

fn unconstrained(c: &Case) -> Vec<f32> {
    let set = c.store.load_cpu(|_| true).unwrap();
    let mut dit = WanDit::new(&set, "", 1).unwrap();
    c.forward(&mut dit)
}

#[test]
fn resident_and_streamed_dit_equal_the_unconstrained_run() {
    for ty in [St::F32, St::F16] {
        let c = case(ty);
        let want = unconstrained(&c);
        for residency in [
            Residency::Resident,
            Residency::Streamed {
                blocks: blocks(2),
                slots: 2,
            },
            Residency::Streamed {
                blocks: blocks(2),
                slots: 1,
            },
        ] {
            let budget = 64 << 20;
            let (got, acct) = run(&c, &residency, Some(budget)).unwrap();
            assert!(
                got == want,
                "{ty:?} {residency:?}: output differs from the unconstrained run"
            );
            assert!(acct.peak() <= budget);
            assert_eq!(
                acct.used(),
                0,
                "everything is given back when the model drops"
            );
            eprintln!(
                "{ty:?} {residency:?}: peak {} bytes {:?}",
                acct.peak(),
                acct.peak_breakdown()
            );
        }
    }
}

#[test]
fn uploads_staged_in_small_pieces_give_the_same_output() {
    // 1000 bytes: every tensor of a block goes in several pieces, the last one short, from the
    // copy thread (two slots) and from the compute thread (one slot).
    let c = case(St::F16);
    let want = unconstrained(&c);
    for slots in [2, 1] {
        let r = Residency::Streamed {
            blocks: blocks(2),
            slots,
        };
        let (got, acct) = run_staged(&c, &r, Some(64 << 20), Some(1000)).unwrap();
        assert!(got == want, "{slots} slots: staged output differs");
        assert_eq!(acct.used(), 0);
    }
}

#[test]
fn budgets_from_everything_fits_to_one_block_at_a_time() {
    let c = case(St::F32);
    let want = unconstrained(&c);
    // The peak of each placement without a limit is the smallest budget it runs under.
    let placements = [
        Residency::Resident,
        Residency::Streamed {
            blocks: blocks(2),
            slots: 2,
        },
        Residency::Streamed {
            blocks: blocks(2),
            slots: 1,
        },
    ];
    let mut peaks = Vec::new();
    for r in &placements {
        let (_, acct) = run(&c, r, None).unwrap();
        peaks.push(acct.peak());
    }
    eprintln!(
        "peaks: resident {} / 2 slots {} / 1 slot {}",
        peaks[0], peaks[1], peaks[2]
    );
    assert!(peaks[0] > peaks[1] && peaks[1] > peaks[2], "{peaks:?}");
    for (r, &peak) in placements.iter().zip(&peaks) {
        let (got, acct) = run(&c, r, Some(peak)).unwrap();
        assert!(got == want, "{r:?} at its minimum budget");
        assert_eq!(acct.peak(), peak);
        let err = run(&c, r, Some(peak - 1)).unwrap_err();
        assert!(err.contains("budget exceeded"), "{r:?}: {err}");
    }
}

/// A run that goes over its budget fails with an error that still holds the accountant's
/// refusal (typed, through every wrapper), so the CLI prints its hint: for the weights'
/// lease (a `DeviceError`) and for a compute buffer (the allocator's meter, a `GgmlError`).
#[test]
fn over_budget_at_run_time_keeps_its_hint() {
    use nijigen::pipeline::PipelineError;
    let c = case(St::F16);
    let set = c.store.load_cpu(|_| true).unwrap();
    let backend = Backend::cpu(1).unwrap();
    let hint_of = |e: PipelineError| {
        let err = anyhow::Error::new(e).context("video");
        let msg = err.root_cause().to_string();
        (msg, nijigen::runtime::hint(err.as_ref()))
    };

    // The weights do not fit.
    let acct = Accountant::with_budget(1 << 10);
    let e = DeviceWeights::build(&set, &backend, &Residency::Resident, &acct, "dit")
        .err()
        .expect("over budget");
    let (msg, hint) = hint_of(PipelineError::Device(e));
    assert!(msg.contains("budget exceeded: dit weights"), "{msg}");
    let hint = hint.expect("a hint");
    assert!(hint.contains("--vram-budget"), "{hint}");

    // The weights fit; the first compute buffer does not.
    let weights = {
        let acct = Accountant::unlimited();
        let dw = DeviceWeights::build(&set, &backend, &Residency::Resident, &acct, "dit").unwrap();
        drop(dw);
        acct.peak()
    };
    let acct = Accountant::with_budget(weights + 1);
    let dw = DeviceWeights::build(&set, &backend, &Residency::Resident, &acct, "dit").unwrap();
    let mut dit = WanDit::new(dw.set(), "", 1).unwrap();
    dit.runner_mut().set_accountant(Some(&acct));
    let (f, h, w) = c.fhw;
    let e = dit
        .forward(&c.x, c.t, &c.text, Some(&c.image), f, h, w)
        .expect_err("over budget");
    let (msg, hint) = hint_of(PipelineError::WanDit(e));
    assert!(msg.contains("budget exceeded"), "{msg}");
    assert!(hint.expect("a hint").contains("--vram-budget"));
}
