//! Step caching for the Wan DiT (`--cache`): reuse the model's last change on steps where it
//! is predicted to change little.
//!
//! **EasyCache** (H-EmbodVis/EasyCache, `EasyCache4Wan2.1/easycache_generate.py`; the rules
//! as that script runs them are written down in `tools/reference/STEP_CACHE.md`):
//! - The cache is the last computed call's `velocity - latent` (the 16 noise channels, before
//!   the image condition is appended), one per CFG branch. A skipped call returns
//!   `latent + cache` and runs nothing of the DiT.
//! - Only the conditional call decides; the unconditional call of the same step follows it.
//! - The transformation rate `k = mean|out - out_prev| / mean|in - in_prev|` is taken between
//!   the last two computed conditional calls. On each later conditional call the predicted
//!   change `k * mean|x_t - x_prev| / mean|out_prev|` is accumulated (`x_prev`: the previous
//!   step's input, computed or not; `out_prev`: the last computed output) and the step is
//!   skipped while the sum stays below the threshold; when it reaches it, the step is computed
//!   and the sum restarts at 0.
//! - The first steps ([`CacheSettings::retain`] of them) and the last step are always
//!   computed. The script hard-codes 10 steps (20 % of its 50 T2V steps, 25 % of its 40 I2V
//!   ones); here the retained part is a fraction, 20 % by default.
//!
//! With two Wan2.2 experts each expert's phase has its own cache (one expert's change is no
//! prediction of the other's); the step counts are the whole run's.

use std::fmt;

/// Which step cache.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum CacheMethod {
    #[serde(rename = "easycache")]
    EasyCache,
}

/// `--cache`: a method and its settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CacheSettings {
    pub method: CacheMethod,
    /// Skip while the accumulated predicted change stays below this.
    pub threshold: f32,
    /// Fraction of the steps at the start that are always computed.
    pub retain: f32,
}

/// EasyCache's threshold in its script (`--thresh 0.05`).
pub const EASYCACHE_THRESHOLD: f32 = 0.05;
/// The fraction of the first steps always computed (the script's 10 of 50 steps).
pub const EASYCACHE_RETAIN: f32 = 0.2;

impl CacheSettings {
    /// Parses `off` (`None`) or `easycache[:THRESH]`.
    pub fn parse(s: &str) -> Result<Option<CacheSettings>, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        match name {
            "off" | "none" if arg.is_none() => Ok(None),
            "easycache" => {
                let threshold = match arg {
                    None => EASYCACHE_THRESHOLD,
                    Some(a) => a
                        .parse::<f32>()
                        .ok()
                        .filter(|t| t.is_finite() && *t >= 0.0)
                        .ok_or_else(|| {
                            format!("easycache:{a}: the threshold is a number >= 0 (e.g. 0.05)")
                        })?,
                };
                Ok(Some(CacheSettings {
                    method: CacheMethod::EasyCache,
                    threshold,
                    retain: EASYCACHE_RETAIN,
                }))
            }
            _ => Err(format!(
                "cache '{s}': use off or easycache[:THRESH] (e.g. easycache:0.1)"
            )),
        }
    }

    /// Steps at the start that are always computed, of `steps`.
    pub fn retained_steps(&self, steps: usize) -> usize {
        ((self.retain as f64 * steps as f64).round() as usize).min(steps)
    }
}

impl fmt::Display for CacheSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            CacheMethod::EasyCache => write!(f, "easycache:{}", self.threshold),
        }
    }
}

/// What a cache did over a run: DiT passes computed and skipped, per CFG branch.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CacheReport {
    /// Conditional, unconditional.
    pub computed: [usize; 2],
    pub skipped: [usize; 2],
    /// Per branch, one letter per step: `C` computed, `s` skipped.
    pub pattern: [String; 2],
}

impl CacheReport {
    /// Adds another phase's counts.
    pub fn add(&mut self, other: &CacheReport) {
        for b in 0..2 {
            self.computed[b] += other.computed[b];
            self.skipped[b] += other.skipped[b];
            self.pattern[b].push_str(&other.pattern[b]);
        }
    }

    /// DiT passes computed, both branches.
    pub fn computed_total(&self) -> usize {
        self.computed.iter().sum()
    }

    /// DiT passes skipped, both branches.
    pub fn skipped_total(&self) -> usize {
        self.skipped.iter().sum()
    }
}

/// EasyCache's state over one sampling run (or one expert's phase of it).
pub struct EasyCache {
    threshold: f32,
    /// DiT calls per step: 2 with CFG (cond, then uncond), 1 without.
    per_step: usize,
    /// Calls before this are always computed.
    retain_calls: usize,
    /// Calls from this on (the last step) are always computed.
    cutoff_calls: usize,
    /// The next call's index in the whole run.
    call: usize,
    accumulated: f32,
    compute_step: bool,
    k: Option<f32>,
    prev_input: Option<Vec<f32>>,
    prev_output: Option<Vec<f32>>,
    prev_prev_input: Option<Vec<f32>>,
    cache: [Option<Vec<f32>>; 2],
    report: CacheReport,
}

/// mean |a - b|, summed in f64.
fn mean_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum();
    (s / a.len().max(1) as f64) as f32
}

/// mean |a|, summed in f64.
fn mean_abs(a: &[f32]) -> f32 {
    let s: f64 = a.iter().map(|x| f64::from(x.abs())).sum();
    (s / a.len().max(1) as f64) as f32
}

impl EasyCache {
    /// A cache for a run of `steps` steps with `per_step` DiT calls each (2 with CFG), starting
    /// at step `first` (an expert's phase starts mid-run).
    pub fn new(settings: &CacheSettings, steps: usize, per_step: usize, first: usize) -> Self {
        let per_step = per_step.max(1);
        EasyCache {
            threshold: settings.threshold,
            per_step,
            retain_calls: settings.retained_steps(steps) * per_step,
            cutoff_calls: steps.saturating_sub(1) * per_step,
            call: first * per_step,
            accumulated: 0.0,
            compute_step: true,
            k: None,
            prev_input: None,
            prev_output: None,
            prev_prev_input: None,
            cache: [None, None],
            report: CacheReport::default(),
        }
    }

    /// One DiT call on `input` (the latent the model sees, without the image condition):
    /// `compute` runs the model, unless the cache says the call can be skipped.
    pub fn call<E>(
        &mut self,
        input: &[f32],
        compute: impl FnOnce() -> Result<Vec<f32>, E>,
    ) -> Result<Vec<f32>, E> {
        let branch = self.call % self.per_step;
        if branch == 0 {
            self.decide(input);
        }
        let skip = !self.compute_step && self.cache[branch].is_some();
        let out = if skip {
            let c = self.cache[branch].as_ref().expect("checked");
            input.iter().zip(c).map(|(x, d)| x + d).collect()
        } else {
            let out = compute()?;
            if branch == 0 {
                self.learn(&out);
            }
            self.cache[branch] = Some(out.iter().zip(input).map(|(o, x)| o - x).collect());
            out
        };
        let r = &mut self.report;
        if skip {
            r.skipped[branch] += 1;
        } else {
            r.computed[branch] += 1;
        }
        r.pattern[branch].push(if skip { 's' } else { 'C' });
        self.call += 1;
        Ok(out)
    }

    /// The conditional call decides for its step.
    fn decide(&mut self, input: &[f32]) {
        self.compute_step = if self.call < self.retain_calls || self.call >= self.cutoff_calls {
            self.accumulated = 0.0;
            true
        } else {
            match (&self.prev_input, &self.prev_output, self.k) {
                (Some(pi), Some(po), Some(k)) => {
                    let change = mean_abs_diff(input, pi);
                    self.accumulated += k * (change / mean_abs(po));
                    if self.accumulated < self.threshold {
                        false
                    } else {
                        self.accumulated = 0.0;
                        true
                    }
                }
                _ => true,
            }
        };
        self.prev_input = Some(input.to_vec());
    }

    /// After a computed conditional call: the transformation rate between the last two
    /// computed calls, and the history.
    fn learn(&mut self, out: &[f32]) {
        if let (Some(po), Some(pi), Some(ppi)) =
            (&self.prev_output, &self.prev_input, &self.prev_prev_input)
        {
            let input_change = mean_abs_diff(pi, ppi);
            if input_change > 0.0 {
                self.k = Some(mean_abs_diff(out, po) / input_change);
            }
        }
        self.prev_prev_input = self.prev_input.clone();
        self.prev_output = Some(out.to_vec());
    }

    /// What the cache did so far.
    pub fn report(&self) -> &CacheReport {
        &self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_off_and_easycache() {
        assert_eq!(CacheSettings::parse("off"), Ok(None));
        let e = CacheSettings::parse("easycache").unwrap().unwrap();
        assert_eq!((e.threshold, e.retain), (0.05, 0.2));
        assert_eq!(
            CacheSettings::parse("easycache:0.1")
                .unwrap()
                .unwrap()
                .threshold,
            0.1
        );
        assert!(CacheSettings::parse("easycache:-1").is_err());
        assert!(CacheSettings::parse("teacache")
            .unwrap_err()
            .contains("easycache"));
        assert_eq!(e.retained_steps(20), 4);
        assert_eq!(e.retained_steps(50), 10);
    }

    /// A model whose output changes linearly with its input skips as the rate predicts; the
    /// retained and last steps are always computed, the uncond call follows the cond one.
    #[test]
    fn skips_follow_the_accumulated_prediction() {
        let s = CacheSettings {
            method: CacheMethod::EasyCache,
            threshold: 0.5,
            retain: 0.2,
        };
        let steps = 10;
        let mut c = EasyCache::new(&s, steps, 2, 0);
        let mut calls = 0;
        for i in 0..steps {
            let x = vec![1.0 + i as f32 * 0.1; 4];
            for _ in 0..2 {
                c.call(&x, || {
                    calls += 1;
                    Ok::<_, ()>(x.iter().map(|v| 2.0 * v).collect())
                })
                .unwrap();
            }
        }
        let r = c.report();
        assert_eq!(r.pattern[0], r.pattern[1], "uncond follows cond");
        assert!(r.pattern[0].starts_with("CC") && r.pattern[0].ends_with('C'));
        assert!(r.skipped[0] > 0, "{:?}", r.pattern);
        assert_eq!(calls, r.computed_total());
        // Threshold 0: nothing skipped.
        let mut c = EasyCache::new(
            &CacheSettings {
                threshold: 0.0,
                ..s
            },
            steps,
            2,
            0,
        );
        for i in 0..steps {
            let x = vec![1.0 + i as f32; 4];
            for _ in 0..2 {
                c.call(&x, || Ok::<_, ()>(x.clone())).unwrap();
            }
        }
        assert_eq!(c.report().skipped_total(), 0);
    }
}
