//! The device-memory accountant: every device allocation of a run (weights, streaming slots,
//! carried activations, graph compute buffers, caches) takes a [`Lease`] from one
//! [`Accountant`], which enforces the VRAM budget and records the peak.
//!
//! On the CPU backend with `--vram-budget` the budget is simulated: the runtime copies weights
//! it places "on the device" into leased buffers, exactly as it would upload them, so the
//! planner's decisions and the streaming run (and are tested) on a machine without a GPU.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

const MIB: f64 = 1048576.0;

/// An allocation the budget does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device memory budget exceeded: {what} needs {:.1} MiB with {:.1} MiB of {:.1} MiB in use",
    *bytes as f64 / MIB, *used as f64 / MIB, *budget as f64 / MIB
)]
pub struct OverBudget {
    pub what: String,
    pub bytes: u64,
    pub used: u64,
    pub budget: u64,
}

impl OverBudget {
    /// What the user can do about it. The run was planned under this budget, so the plan
    /// under-estimated what it needs here (or something outside the plan took device memory).
    pub fn hint(&self) -> String {
        format!(
            "the run needed more device memory than its plan; give --vram-budget {} or more \
             (this allocation alone), or move work off the device: --offload blocks streams \
             the denoiser, --text-encoder-device cpu, a smaller --vae-tile, --offload full \
             computes on the CPU",
            super::plan::size_arg(self.used.saturating_add(self.bytes))
        )
    }
}

/// The hint for an error whose sources include a budget the user can change: a run-time
/// [`OverBudget`] or a planner's [`super::plan::PlanError`]. Looks through `err` and its whole
/// source chain (errors wrapped in others, or in `anyhow` with context, keep their type).
pub fn hint(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(x) = e {
        if let Some(o) = x.downcast_ref::<OverBudget>() {
            return Some(o.hint());
        }
        if let Some(h) = x
            .downcast_ref::<super::plan::PlanError>()
            .and_then(|p| p.hint())
        {
            return Some(h.to_string());
        }
        e = x.source();
    }
    None
}

/// Reads the device's free memory as its driver reports it.
#[derive(Clone)]
struct FreeProbe(Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl std::fmt::Debug for FreeProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FreeProbe")
    }
}

#[derive(Debug, Default)]
struct State {
    /// The driver's free memory when watching started, and how to read it again.
    watch: Option<(u64, FreeProbe)>,
    /// The most device memory the driver showed in use (baseline free - free) at a sample.
    driver_peak: Option<u64>,
    budget: Option<u64>,
    used: u64,
    peak: u64,
    /// Bytes in use at the peak, by what.
    at_peak: BTreeMap<String, u64>,
    live: BTreeMap<String, u64>,
}

/// One run's device-memory ledger; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Accountant {
    state: Arc<Mutex<State>>,
}

impl Accountant {
    /// A ledger with no limit (it still records the peak).
    pub fn unlimited() -> Accountant {
        Accountant::default()
    }

    /// A ledger that refuses allocations past `budget` bytes.
    pub fn with_budget(budget: u64) -> Accountant {
        let a = Accountant::default();
        a.lock().budget = Some(budget);
        a
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind; keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn budget(&self) -> Option<u64> {
        self.lock().budget
    }

    /// Bytes in use now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The most bytes ever in use at once.
    pub fn peak(&self) -> u64 {
        self.lock().peak
    }

    /// What was in use at the peak (by lease name, summed), largest first.
    pub fn peak_breakdown(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.lock().at_peak.clone().into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Also follows the device's own figure: `free` reads the driver's free memory (e.g.
    /// `cudaMemGetInfo`). What it shows in use beyond the free memory now is sampled by
    /// [`Accountant::sample`] (and whenever a lease is given back), catching what the ledger
    /// cannot see: the backend's own pools, the CUDA context's growth.
    pub fn watch_free_memory(&self, free: impl Fn() -> Option<u64> + Send + Sync + 'static) {
        let probe = FreeProbe(Arc::new(free));
        let base = (probe.0)();
        let mut s = self.lock();
        s.watch = base.map(|b| (b, probe));
        s.driver_peak = base.map(|_| 0);
    }

    /// Samples the device's memory in use (see [`Accountant::watch_free_memory`]).
    pub fn sample(&self) {
        let watch = self.lock().watch.clone();
        let Some((base, probe)) = watch else {
            return;
        };
        if let Some(free) = (probe.0)() {
            let used = base.saturating_sub(free);
            let mut s = self.lock();
            s.driver_peak = Some(s.driver_peak.unwrap_or(0).max(used));
        }
    }

    /// The most device memory the driver showed in use at a sample, since watching started
    /// (`None` when not watching: the CPU).
    pub fn driver_peak(&self) -> Option<u64> {
        self.lock().driver_peak
    }

    /// Takes `bytes` for `what`, or fails without taking anything when the budget would be
    /// exceeded. The bytes are returned when the lease drops.
    pub fn lease(&self, what: &str, bytes: u64) -> Result<Lease, OverBudget> {
        let mut s = self.lock();
        take(&mut s, what, bytes)?;
        Ok(Lease {
            owner: self.clone(),
            what: what.to_string(),
            bytes,
        })
    }
}

fn take(s: &mut State, what: &str, bytes: u64) -> Result<(), OverBudget> {
    let after = s.used.saturating_add(bytes);
    if let Some(budget) = s.budget {
        if after > budget {
            return Err(OverBudget {
                what: what.to_string(),
                bytes,
                used: s.used,
                budget,
            });
        }
    }
    s.used = after;
    *s.live.entry(what.to_string()).or_default() += bytes;
    if after > s.peak {
        s.peak = after;
        s.at_peak = s
            .live
            .iter()
            .filter(|(_, &b)| b > 0)
            .map(|(k, &b)| (k.clone(), b))
            .collect();
    }
    Ok(())
}

fn give(s: &mut State, what: &str, bytes: u64) {
    s.used = s.used.saturating_sub(bytes);
    if let Some(b) = s.live.get_mut(what) {
        *b = b.saturating_sub(bytes);
        if *b == 0 {
            s.live.remove(what);
        }
    }
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Lease {
    owner: Accountant,
    what: String,
    bytes: u64,
}

impl Lease {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    /// Changes the leased size (a compute buffer that grew for a larger graph); on failure the
    /// lease keeps its old size.
    pub fn resize(&mut self, bytes: u64) -> Result<(), OverBudget> {
        if bytes == self.bytes {
            return Ok(());
        }
        let mut s = self.owner.lock();
        give(&mut s, &self.what, self.bytes);
        if let Err(e) = take(&mut s, &self.what, bytes) {
            // Put the old size back (it fitted before).
            let _ = take(&mut s, &self.what, self.bytes);
            return Err(e);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The memory is still in use: a last look at the driver's figure.
        self.owner.sample();
        give(&mut self.owner.lock(), &self.what, self.bytes);
    }
}

/// An allocator meter ([`crate::ggml::AllocMeter`]) that keeps a lease named `what` equal to a
/// graph allocator's compute buffer.
pub fn compute_meter(acct: &Accountant, what: &str) -> crate::ggml::AllocMeter {
    let acct = acct.clone();
    let what = what.to_string();
    let mut lease: Option<Lease> = None;
    Box::new(move |size| {
        let size = size as u64;
        match &mut lease {
            Some(l) => l.resize(size)?,
            // The refusal keeps its type (the CLI finds its hint through the error's sources).
            None => lease = Some(acct.lease(&what, size)?),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_count_against_the_budget_and_record_the_peak() {
        let a = Accountant::with_budget(100);
        let l1 = a.lease("weights", 60).unwrap();
        let err = a.lease("slot", 41).unwrap_err();
        assert_eq!((err.bytes, err.used, err.budget), (41, 60, 100));
        assert_eq!(a.used(), 60, "a refused lease takes nothing");
        let l2 = a.lease("slot", 40).unwrap();
        assert_eq!((a.used(), a.peak()), (100, 100));
        drop(l1);
        assert_eq!(a.used(), 40);
        let l3 = a.lease("compute", 30).unwrap();
        assert_eq!(a.peak(), 100);
        assert_eq!(
            a.peak_breakdown(),
            vec![("weights".to_string(), 60), ("slot".to_string(), 40)]
        );
        drop((l2, l3));
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn a_lease_resizes_within_the_budget_or_keeps_its_size() {
        let a = Accountant::with_budget(100);
        let mut l = a.lease("compute", 10).unwrap();
        l.resize(90).unwrap();
        assert_eq!(a.used(), 90);
        assert!(l.resize(101).is_err());
        assert_eq!((l.bytes(), a.used()), (90, 90));
        l.resize(5).unwrap();
        assert_eq!((a.used(), a.peak()), (5, 90));
    }

    #[test]
    fn the_compute_meter_follows_the_buffer_size() {
        let a = Accountant::with_budget(1000);
        let mut m = compute_meter(&a, "compute");
        m(300).unwrap();
        m(200).unwrap();
        assert_eq!((a.used(), a.peak()), (200, 300));
        let e = m(1001).unwrap_err();
        assert!(e.to_string().contains("budget exceeded"), "{e}");
        let o = e
            .downcast_ref::<OverBudget>()
            .expect("the refusal keeps its type");
        assert_eq!((o.bytes, o.used, o.budget), (1001, 0, 1000));
        drop(m);
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn the_driver_figure_is_sampled_against_the_free_memory_at_the_start() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let a = Accountant::with_budget(1000);
        assert_eq!(a.driver_peak(), None, "not watching");
        a.sample();
        let free = Arc::new(AtomicU64::new(5000));
        let f = free.clone();
        a.watch_free_memory(move || Some(f.load(Ordering::Relaxed)));
        assert_eq!(a.driver_peak(), Some(0));
        free.store(4200, Ordering::Relaxed);
        let l = a.lease("weights", 700).unwrap();
        free.store(3900, Ordering::Relaxed); // the backend's pool grew beside the lease
        drop(l); // sampled before the lease is given back
        free.store(5000, Ordering::Relaxed);
        a.sample();
        assert_eq!(a.driver_peak(), Some(1100));
        assert_eq!(a.peak(), 700);
    }

    #[test]
    fn unlimited_ledgers_still_record_the_peak() {
        let a = Accountant::unlimited();
        let l = a.lease("x", u64::MAX / 2).unwrap();
        let _m = a.lease("y", 7).unwrap();
        assert_eq!(a.peak(), u64::MAX / 2 + 7);
        drop(l);
        assert_eq!(a.used(), 7);
    }

    #[test]
    fn over_budget_errors_keep_their_hint_through_the_errors_that_wrap_them() {
        use crate::ggml::GgmlError;
        use crate::runtime::DeviceError;
        let a = Accountant::with_budget(3 << 30);
        let _w = a.lease("dit weights", 2 << 30).unwrap();
        let refusal = a.lease("dit compute", 1536 << 20).unwrap_err();
        let h = refusal.hint();
        assert!(h.contains("--vram-budget 3.5G or more"), "{h}");
        // A lease of device weights (DeviceError), wrapped as a run wraps it, with context.
        let device = crate::pipeline::PipelineError::Device(DeviceError::Budget(refusal.clone()));
        let err = anyhow::Error::new(device).context("stage 2");
        assert_eq!(hint(err.as_ref()), Some(h.clone()));
        // A compute buffer refused by the meter (a GgmlError in a model's error).
        let mut m = compute_meter(&a, "dit compute");
        let refused = GgmlError::Refused(m(1536 << 20).unwrap_err());
        let model = crate::models::WanDitError::Ggml(refused);
        assert!(model.to_string().contains("budget exceeded"), "{model}");
        let err = anyhow::Error::new(crate::pipeline::PipelineError::WanDit(model));
        assert_eq!(hint(err.as_ref()), Some(h));
        // Planner errors give theirs; other errors none.
        let short = crate::runtime::plan::plan(&crate::runtime::plan::PlanInput {
            components: vec![crate::runtime::plan::ComponentSpec::new(
                crate::models::VAE_WAN.component,
                1 << 30,
            )],
            budget: Some(1 << 20),
            ..Default::default()
        })
        .unwrap_err();
        let want = short.hint().map(str::to_string);
        assert!(want.is_some());
        assert_eq!(hint(anyhow::Error::new(short).as_ref()), want);
        assert_eq!(hint(anyhow::anyhow!("other").as_ref()), None);
    }
}
