//! Progress display for the generating commands, the end-of-run summary, Ctrl-C handling.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::pipeline::{Event, Timings};

/// The end-of-run summary (`--json` prints it as one object).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub outputs: Vec<PathBuf>,
    pub seed: u64,
    pub timings: Timings,
    pub total_s: f64,
    /// Peak resident memory of the process (Linux `VmHWM`).
    pub peak_ram_bytes: Option<u64>,
    /// Where the run computed and the device memory it used.
    #[serde(flatten)]
    pub device: DeviceUse,
    /// With `--cache`: the method, its threshold and the DiT passes computed and skipped
    /// (both CFG branches together, and per branch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<serde_json::Value>,
}

/// The device part of a run's summary (flattened into its JSON).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceUse {
    /// With a budget: the device-memory accountant's peak and the budget.
    pub peak_device_bytes: Option<u64>,
    pub vram_budget_bytes: Option<u64>,
    /// On a GPU: the most device memory the driver showed in use (sampled at each step and
    /// component boundary), which includes what the accountant does not see.
    pub driver_peak_device_bytes: Option<u64>,
    /// The compute device: "cpu", "cuda:0".
    pub device: String,
}

impl DeviceUse {
    /// What a run under `memory` used (the CPU, unaccounted, without one).
    pub fn of(memory: Option<&crate::pipeline::Memory>) -> DeviceUse {
        DeviceUse {
            peak_device_bytes: memory.map(|m| m.accountant.peak()),
            vram_budget_bytes: memory.and_then(|m| m.accountant.budget()),
            driver_peak_device_bytes: memory.and_then(|m| m.accountant.driver_peak()),
            device: memory.map_or_else(|| "cpu".into(), |m| m.device.to_string()),
        }
    }

    /// "; peak device memory 5.1 GiB of 8.0 GiB on cuda:0 (driver: 5.6 GiB)", "...(simulated
    /// on the CPU)" for a budget on the CPU, or "" without a budget.
    pub fn text(&self) -> String {
        let (Some(p), Some(b)) = (self.peak_device_bytes, self.vram_budget_bytes) else {
            return String::new();
        };
        let (p, b) = (super::human_bytes(p), super::human_bytes(b));
        if self.device == "cpu" {
            return format!("; peak device memory {p} of {b} (simulated on the CPU)");
        }
        let driver = self.driver_peak_device_bytes.map_or(String::new(), |d| {
            format!(" (driver: {})", super::human_bytes(d))
        });
        format!("; peak device memory {p} of {b} on {}{driver}", self.device)
    }
}

impl Summary {
    /// "seed 42; load 1.0 s, encode ..., total 9.9 s; peak RAM 1.2 GiB".
    pub fn line(&self) -> String {
        let cache = match &self.cache {
            Some(c) => format!(
                "; cache {}: {} of {} DiT passes skipped, about {:.1} s saved",
                c["setting"].as_str().unwrap_or("?"),
                c["skipped"],
                c["skipped"].as_u64().unwrap_or(0) + c["computed"].as_u64().unwrap_or(0),
                c["saved_s"].as_f64().unwrap_or(0.0)
            ),
            None => String::new(),
        };
        format!(
            "seed {}; {}, total {:.1} s; peak RAM {}{}{cache}",
            self.seed,
            timings_text(&self.timings),
            self.total_s,
            ram_text(self.peak_ram_bytes),
            self.device.text()
        )
    }

    /// The `cache` object of a run that used `settings` and did `report`.
    pub fn cache_json(
        settings: &crate::pipeline::step_cache::CacheSettings,
        report: &crate::pipeline::step_cache::CacheReport,
    ) -> serde_json::Value {
        serde_json::json!({
            "method": settings.method,
            "threshold": settings.threshold,
            "retain": settings.retain,
            "setting": settings.to_string(),
            "computed": report.computed_total(),
            "skipped": report.skipped_total(),
            "computed_per_branch": report.computed,
            "skipped_per_branch": report.skipped,
            "pattern": report.pattern,
            "computed_s": report.computed_s,
            "skipped_s": report.skipped_s,
            "saved_s": report.saved_s(),
        })
    }
}

/// "load 1.0 s, encode 0.2 s, sample 30.1 s, decode 2.0 s".
pub fn timings_text(t: &Timings) -> String {
    format!(
        "load {:.1} s, encode {:.1} s, sample {:.1} s, decode {:.1} s",
        t.load_s, t.encode_s, t.sample_s, t.decode_s
    )
}

/// A peak RAM figure, "?" where the platform does not tell.
pub fn ram_text(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), super::human_bytes)
}

/// Peak resident set size of this process, from /proc/self/status (`None` elsewhere).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The process-wide stop flag, set by the first Ctrl-C (the second one exits at once).
pub fn cancel_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let installed = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted");
                std::process::exit(130);
            }
            eprintln!("\nstopping after the current step (Ctrl-C again to quit now)");
        });
        if let Err(e) = installed {
            tracing::debug!("no Ctrl-C handler: {e}");
        }
        flag
    })
    .clone()
}

/// Progress bars on stderr driven by pipeline [`Event`]s.
pub struct Progress {
    quiet: bool,
    bar: Option<ProgressBar>,
    stage: &'static str,
    /// Put before every message ("[1/2 still] "), for commands that run several stages.
    prefix: String,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// "3.21 s/it" or "2.5 it/s", as people read sampler speed.
pub fn rate(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 || s == 0.0 {
        format!("{s:.2} s/it")
    } else {
        format!("{:.2} it/s", 1.0 / s)
    }
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            bar: None,
            stage: "",
            prefix: String::new(),
        }
    }

    /// Bars whose messages start with `[label] `.
    pub fn labelled(quiet: bool, label: &str) -> Progress {
        let mut p = Progress::new(quiet);
        p.prefix = format!("[{label}] ");
        p
    }

    fn spinner(&mut self, msg: &str) {
        self.finish();
        let bar = ProgressBar::new_spinner();
        bar.set_style(style("{spinner} {msg} [{elapsed}]"));
        bar.set_message(format!("{}{msg}", self.prefix));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn counted(&mut self, label: &str, total: u64) -> &ProgressBar {
        if self.bar.as_ref().and_then(|b| b.length()) != Some(total) {
            self.finish();
            let bar = ProgressBar::new(total);
            bar.set_style(style(&format!(
                "{}{label:>7} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}} (eta {{eta}})",
                self.prefix
            )));
            self.bar = Some(bar);
        }
        self.bar.get_or_insert_with(ProgressBar::hidden)
    }

    /// Shows one event.
    pub fn event(&mut self, e: Event) {
        if self.quiet {
            return;
        }
        match e {
            Event::Stage { name } => {
                self.stage = name;
                match name {
                    "load" => self.spinner("loading models"),
                    "encode" => self.spinner("encoding the prompt"),
                    "decode" => self.spinner("decoding"),
                    _ => self.finish(),
                }
            }
            Event::Loaded {
                component,
                path,
                bytes,
            } => {
                if let Some(b) = &self.bar {
                    b.set_message(format!(
                        "{}loading models: {component} from {} ({})",
                        self.prefix,
                        path.display(),
                        super::human_bytes(bytes)
                    ));
                }
            }
            Event::Step {
                step,
                total,
                elapsed,
                ..
            } => {
                let bar = self.counted("steps", total as u64);
                bar.set_position(step as u64);
                bar.set_message(rate(elapsed));
            }
            Event::Part { label } => {
                self.finish();
                self.prefix = format!("[{label}] ");
            }
            Event::Decoded { index, total } => {
                if total > 1 {
                    let bar = self.counted("decode", total as u64);
                    bar.set_position(index as u64);
                }
            }
        }
    }

    /// Clears the current bar.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_naturally() {
        assert_eq!(rate(Duration::from_millis(3210)), "3.21 s/it");
        assert_eq!(rate(Duration::from_millis(400)), "2.50 it/s");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().unwrap() > 1024 * 1024);
        }
    }
}
