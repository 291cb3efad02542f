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
//! **TeaCache** (ali-vilab/TeaCache, `TeaCache4Wan2.1/teacache_generate.py`) and **MagCache**
//! (Zehong-Ma/MagCache, `MagCache4Wan2.1/magcache_generate.py`) reuse the residual of the
//! block stack instead (the hidden state after the last block minus the one entering the
//! first, in token space): a skipped call still runs the embeddings and the head, not the
//! blocks (on a streamed DiT: no block upload). Each CFG branch keeps its own state.
//! - TeaCache accumulates the published polynomial of the relative L1 change of the time
//!   embedding's modulation (`e0`, its `use_ret_steps` variant: the first 5 steps computed,
//!   no forced last step) and skips while the sum stays below the threshold.
//! - MagCache accumulates `|1 - product of the published per-step magnitude ratios|`
//!   (interpolated to the step count) and skips while under the threshold and at most K
//!   times in a row; the first RETAIN fraction of the calls is computed.
//!   Their calibrations exist for Wan2.1 I2V 14B at 480p and 720p only: other models are
//!   refused (use easycache).
//!
//! With two Wan2.2 experts each expert's phase has its own cache (one expert's change is no
//! prediction of the other's); the step counts are the whole run's.

use std::fmt;

/// Which step cache.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum CacheMethod {
    #[serde(rename = "easycache")]
    EasyCache,
    #[serde(rename = "teacache")]
    TeaCache,
    #[serde(rename = "magcache")]
    MagCache,
}

/// `--cache`: a method and its settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CacheSettings {
    pub method: CacheMethod,
    /// Skip while the accumulated predicted change stays below this.
    pub threshold: f32,
    /// Fraction of the steps at the start that are always computed.
    pub retain: f32,
    /// MagCache: at most this many skips in a row.
    pub max_skips: usize,
}

/// EasyCache's threshold in its script (`--thresh 0.05`).
pub const EASYCACHE_THRESHOLD: f32 = 0.05;
/// The fraction of the first steps always computed (the script's 10 of 50 steps).
pub const EASYCACHE_RETAIN: f32 = 0.2;
/// TeaCache's threshold for Wan2.1 I2V with `use_ret_steps` (its README: 0.20 or 0.30).
pub const TEACACHE_THRESHOLD: f32 = 0.2;
/// MagCache's Wan2.1 I2V setting in its README (`E024K6R02`).
pub const MAGCACHE_THRESHOLD: f32 = 0.24;
pub const MAGCACHE_K: usize = 6;
pub const MAGCACHE_RETAIN: f32 = 0.2;

/// TeaCache's rescaling polynomials for Wan2.1 I2V 14B with `use_ret_steps`, highest power
/// first (`TeaCache4Wan2.1/teacache_generate.py`).
pub const TEACACHE_I2V_480P: [f64; 5] = [
    2.57151496e+05,
    -3.54229917e+04,
    1.40286849e+03,
    -1.35890334e+01,
    1.32517977e-01,
];
pub const TEACACHE_I2V_720P: [f64; 5] = [
    8.10705460e+03,
    2.13393892e+03,
    -3.72934672e+02,
    1.66203073e+01,
    -4.17769401e-02,
];

/// MagCache's magnitude ratios for Wan2.1 I2V 14B at 480p, 40 steps x (cond, uncond), the
/// first pair padding (`MagCache4Wan2.1/magcache_generate.py`).
#[rustfmt::skip]
pub const MAGCACHE_I2V_480P: [f64; 80] = [
    1.0, 1.0,
    0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878,
    0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886,
    0.99065, 0.99068, 0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861,
    0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572,
    0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953, 0.98149, 0.9815,
    0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
    0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988,
    0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
];
/// As [`MAGCACHE_I2V_480P`] at 720p.
#[rustfmt::skip]
pub const MAGCACHE_I2V_720P: [f64; 80] = [
    1.0, 1.0,
    0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917,
    0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103,
    0.99215, 0.99212, 0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097,
    0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603,
    0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719, 0.98497, 0.98497,
    0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
    0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655,
    0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
];

/// MagCache's `nearest_interp`: `n` values of `src` at indices `round(i (len - 1) / (n - 1))`
/// (round half to even), the last value when `n == 1`.
pub fn nearest_interp(src: &[f64], n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![src[src.len() - 1]];
    }
    let scale = (src.len() - 1) as f64 / (n - 1) as f64;
    (0..n)
        .map(|i| src[((i as f64) * scale).round_ties_even() as usize])
        .collect()
}

/// A per-call (cond, uncond interleaved) ratio table for `steps` steps from a published one.
pub fn mag_ratios_for(table: &[f64], steps: usize) -> Vec<f64> {
    if table.len() == 2 * steps {
        return table.to_vec();
    }
    let cond: Vec<f64> = table.iter().step_by(2).copied().collect();
    let uncond: Vec<f64> = table.iter().skip(1).step_by(2).copied().collect();
    let (c, u) = (nearest_interp(&cond, steps), nearest_interp(&uncond, steps));
    c.into_iter().zip(u).flat_map(|(a, b)| [a, b]).collect()
}

impl CacheSettings {
    /// Parses `off` (`None`), `easycache[:THRESH]`, `teacache[:THRESH]` or
    /// `magcache[:THRESH[,K[,RETAIN]]]`.
    pub fn parse(s: &str) -> Result<Option<CacheSettings>, String> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let args: Vec<&str> = arg.map_or(Vec::new(), |a| a.split(',').collect());
        let num = |i: usize, what: &str| -> Result<Option<f64>, String> {
            match args.get(i) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(Some)
                    .ok_or_else(|| format!("cache '{s}': {what} must be a number >= 0, not '{v}'")),
            }
        };
        let most = |n: usize| -> Result<(), String> {
            if args.len() > n {
                Err(format!("cache '{s}': {name} takes at most {n} value(s)"))
            } else {
                Ok(())
            }
        };
        let settings = |method, threshold: f64, retain: f64, max_skips: usize| CacheSettings {
            method,
            threshold: threshold as f32,
            retain: retain as f32,
            max_skips,
        };
        match name {
            "off" | "none" if arg.is_none() => Ok(None),
            "easycache" => {
                most(1)?;
                let t = num(0, "the threshold")?.unwrap_or(f64::from(EASYCACHE_THRESHOLD));
                Ok(Some(settings(
                    CacheMethod::EasyCache,
                    t,
                    f64::from(EASYCACHE_RETAIN),
                    0,
                )))
            }
            "teacache" => {
                most(1)?;
                let t = num(0, "the threshold")?.unwrap_or(f64::from(TEACACHE_THRESHOLD));
                // use_ret_steps: the first 5 steps computed (set per run).
                Ok(Some(settings(CacheMethod::TeaCache, t, 0.0, 0)))
            }
            "magcache" => {
                most(3)?;
                let t = num(0, "the threshold")?.unwrap_or(f64::from(MAGCACHE_THRESHOLD));
                let k = num(1, "K")?.map_or(MAGCACHE_K, |k| k as usize);
                let r = num(2, "RETAIN")?.unwrap_or(f64::from(MAGCACHE_RETAIN));
                if !(r > 0.0 && r <= 1.0) {
                    return Err(format!(
                        "cache '{s}': RETAIN is the fraction of steps computed first, in (0, 1]"
                    ));
                }
                Ok(Some(settings(CacheMethod::MagCache, t, r, k)))
            }
            _ => Err(format!(
                "cache '{s}': use off, easycache[:THRESH], teacache[:THRESH] or \
                 magcache[:THRESH[,K[,RETAIN]]]"
            )),
        }
    }

    /// Whether the method reuses the block stack's residual (and so needs a calibration).
    pub fn is_block_cache(&self) -> bool {
        matches!(self.method, CacheMethod::TeaCache | CacheMethod::MagCache)
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
            CacheMethod::TeaCache => write!(f, "teacache:{}", self.threshold),
            CacheMethod::MagCache => write!(
                f,
                "magcache:{},{},{}",
                self.threshold, self.max_skips, self.retain
            ),
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
    /// Seconds spent in computed passes and in skipped ones (a skipped TeaCache or MagCache
    /// pass still runs the embeddings and the head).
    pub computed_s: f64,
    pub skipped_s: f64,
}

impl CacheReport {
    /// Adds another phase's counts.
    pub fn add(&mut self, other: &CacheReport) {
        for b in 0..2 {
            self.computed[b] += other.computed[b];
            self.skipped[b] += other.skipped[b];
            self.pattern[b].push_str(&other.pattern[b]);
        }
        self.computed_s += other.computed_s;
        self.skipped_s += other.skipped_s;
    }

    /// Counts the time of a pass that was `skipped` or not.
    pub fn time(&mut self, skipped: bool, secs: f64) {
        if skipped {
            self.skipped_s += secs;
        } else {
            self.computed_s += secs;
        }
    }

    /// The time the skipped passes saved: what they would have taken at the computed
    /// passes' mean, less what they took.
    pub fn saved_s(&self) -> f64 {
        let computed = self.computed_total();
        if computed == 0 {
            return 0.0;
        }
        let mean = self.computed_s / computed as f64;
        (mean * self.skipped_total() as f64 - self.skipped_s).max(0.0)
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

/// Which published calibration of Wan2.1 I2V 14B a block cache uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calibration {
    I2v480p,
    I2v720p,
}

impl Calibration {
    /// 480P up to the 480p area (832 x 480), else 720P (as the scripts pick by checkpoint).
    pub fn for_size(width: u32, height: u32) -> Calibration {
        if u64::from(width) * u64::from(height) <= 832 * 480 {
            Calibration::I2v480p
        } else {
            Calibration::I2v720p
        }
    }
}

/// TeaCache's or MagCache's state over one sampling run (or one expert's phase of it): the
/// [`crate::models::wan_dit::BlockCache`] the DiT asks.
pub struct BlockStepCache {
    method: CacheMethod,
    threshold: f64,
    max_skips: usize,
    per_step: usize,
    retain_calls: usize,
    /// The next call's index in the whole run.
    call: usize,
    /// The branch of the call being decided.
    branch: usize,
    coefficients: [f64; 5],
    /// MagCache's per-call ratios (cond, uncond interleaved) for the run's step count.
    ratios: Vec<f64>,
    accumulated: [f64; 2],
    previous: [Option<Vec<f32>>; 2],
    mag_ratio: [f64; 2],
    mag_skips: [usize; 2],
    residual: [Option<Vec<f32>>; 2],
    report: CacheReport,
}

impl BlockStepCache {
    /// A cache for a run of `steps` steps with `per_step` calls each, starting at step
    /// `first`, with the published calibration `cal`.
    pub fn new(
        settings: &CacheSettings,
        cal: Calibration,
        steps: usize,
        per_step: usize,
        first: usize,
    ) -> Self {
        let per_step = per_step.max(1);
        let retain_calls = match settings.method {
            // TeaCache's use_ret_steps variant: the first 5 steps.
            CacheMethod::TeaCache => 5 * per_step,
            // int(2N x retention): truncated.
            _ => (f64::from(settings.retain) * (steps * per_step) as f64) as usize,
        };
        let table: &[f64] = match cal {
            Calibration::I2v480p => &MAGCACHE_I2V_480P,
            Calibration::I2v720p => &MAGCACHE_I2V_720P,
        };
        BlockStepCache {
            method: settings.method,
            threshold: f64::from(settings.threshold),
            max_skips: settings.max_skips,
            per_step,
            retain_calls,
            call: first * per_step,
            branch: 0,
            coefficients: match cal {
                Calibration::I2v480p => TEACACHE_I2V_480P,
                Calibration::I2v720p => TEACACHE_I2V_720P,
            },
            ratios: mag_ratios_for(table, steps),
            accumulated: [0.0; 2],
            previous: [None, None],
            mag_ratio: [1.0; 2],
            mag_skips: [0; 2],
            residual: [None, None],
            report: CacheReport::default(),
        }
    }

    /// What the cache did so far.
    pub fn report(&self) -> &CacheReport {
        &self.report
    }

    /// As [`BlockStepCache::report`], to add timings.
    pub fn report_mut(&mut self) -> &mut CacheReport {
        &mut self.report
    }

    /// The decision of the call `self.call` on branch `b`, before the residual check.
    fn decide(&mut self, b: usize, e0: &[f32]) -> bool {
        let retained = self.call < self.retain_calls;
        match self.method {
            CacheMethod::TeaCache => {
                let skip = match (&self.previous[b], retained) {
                    (Some(prev), false) => {
                        let rel = f64::from(mean_abs_diff(e0, prev)) / f64::from(mean_abs(prev));
                        let c = &self.coefficients;
                        let p = (((c[0] * rel + c[1]) * rel + c[2]) * rel + c[3]) * rel + c[4];
                        self.accumulated[b] += p;
                        if self.accumulated[b] < self.threshold {
                            true
                        } else {
                            self.accumulated[b] = 0.0;
                            false
                        }
                    }
                    _ => {
                        self.accumulated[b] = 0.0;
                        false
                    }
                };
                self.previous[b] = Some(e0.to_vec());
                skip
            }
            CacheMethod::MagCache if !retained => {
                // The table is per call with CFG (cond, uncond); without, the cond entries.
                let step = self.call / self.per_step;
                let r = self.ratios.get(2 * step + b).copied().unwrap_or(1.0);
                self.mag_ratio[b] *= r;
                self.mag_skips[b] += 1;
                self.accumulated[b] += (1.0 - self.mag_ratio[b]).abs();
                if self.accumulated[b] < self.threshold && self.mag_skips[b] <= self.max_skips {
                    true
                } else {
                    self.accumulated[b] = 0.0;
                    self.mag_skips[b] = 0;
                    self.mag_ratio[b] = 1.0;
                    false
                }
            }
            _ => false,
        }
    }
}

impl crate::models::wan_dit::BlockCache for BlockStepCache {
    fn skip_blocks(&mut self, e0: &[f32]) -> bool {
        let b = self.call % self.per_step;
        self.branch = b;
        // A skip needs a residual of this branch (MagCache's script would fail without one).
        let skip = self.decide(b, e0) && self.residual[b].is_some();
        let r = &mut self.report;
        if skip {
            r.skipped[b] += 1;
        } else {
            r.computed[b] += 1;
        }
        r.pattern[b].push(if skip { 's' } else { 'C' });
        self.call += 1;
        skip
    }

    fn residual(&self) -> Option<&[f32]> {
        self.residual[self.branch].as_deref()
    }

    fn store_residual(&mut self, residual: Vec<f32>) {
        self.residual[self.branch] = Some(residual);
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

    /// As [`EasyCache::report`], to add timings.
    pub fn report_mut(&mut self) -> &mut CacheReport {
        &mut self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MagCache's nearest_interp to 20 steps takes steps 0, 2, ..., 18, 21, ..., 39 of its
    /// 40 (round half to even), as the reference fixture records.
    #[test]
    fn magcache_ratios_interpolate_as_published() {
        let r = mag_ratios_for(&MAGCACHE_I2V_480P, 20);
        assert_eq!(r.len(), 40);
        let steps = [
            0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39,
        ];
        for (i, s) in steps.iter().enumerate() {
            assert_eq!(r[2 * i], MAGCACHE_I2V_480P[2 * s]);
            assert_eq!(r[2 * i + 1], MAGCACHE_I2V_480P[2 * s + 1]);
        }
        assert_eq!(
            mag_ratios_for(&MAGCACHE_I2V_480P, 40),
            MAGCACHE_I2V_480P.to_vec()
        );
    }

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
        assert!(CacheSettings::parse("fastcache")
            .unwrap_err()
            .contains("easycache"));
        let m = CacheSettings::parse("magcache:0.12,2,0.25")
            .unwrap()
            .unwrap();
        assert_eq!((m.threshold, m.max_skips, m.retain), (0.12, 2, 0.25));
        let m = CacheSettings::parse("magcache").unwrap().unwrap();
        assert_eq!((m.threshold, m.max_skips, m.retain), (0.24, 6, 0.2));
        assert!(CacheSettings::parse("magcache:0.1,2,0").is_err());
        assert!(CacheSettings::parse("teacache:0.1,3").is_err());
        let t = CacheSettings::parse("teacache").unwrap().unwrap();
        assert_eq!((t.method, t.threshold), (CacheMethod::TeaCache, 0.2));
        assert_eq!(t.to_string(), "teacache:0.2");
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
            max_skips: 0,
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
