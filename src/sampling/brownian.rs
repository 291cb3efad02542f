//! ComfyUI's Brownian-tree noise (`BrownianTreeNoiseSampler`), bit for bit on the CPU.
//!
//! ComfyUI's SDE samplers (`dpmpp_sde`, `dpmpp_2m_sde`, `dpmpp_2m_sde_heun`, `dpmpp_3m_sde`)
//! do not draw fresh `torch.randn` noise per step: they build
//! `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=True)` over one Brownian
//! motion `W` on the time axis `[sigma_min, sigma_max]` (sigma itself is the time: no call site
//! passes a `transform`, flow models included) and, for a step from `sigma` to `sigma_next`,
//! return the increment of `W` over that interval divided by the square root of its length, a
//! standard normal. Increments over adjacent intervals are independent, and a query gives the
//! same values whatever was asked before. [`BrownianTreeNoise`] reproduces that noise. (The
//! other stochastic samplers — euler_ancestral, lcm, er_sde, seeds_2/3, sa_solver, ... — use
//! `default_noise_sampler`, i.e. [`comfy_sampler_noise`](super::rng::comfy_sampler_noise).)
//!
//! # What torchsde computes
//!
//! ComfyUI wraps `torchsde.BrownianTree(t0, w0, t1, entropy=seed)` (torchsde 0.2.6), which is a
//! `BrownianInterval` with `halfway_tree=True`, `tol=1e-6`, `pool_size=24`, an LRU cache of 45
//! intervals and no Lévy area. Reproduced here, step by step:
//!
//! * **Time grid.** Every interval end is rounded with Python's `round(t, 6)` (exact decimal
//!   rounding, ties to even, then the nearest double): the root is `[round(t0), round(t1)]`,
//!   query ends are rounded too, so all ends lie on a grid of 1e-6.
//! * **Dyadic tree.** An interval `[s, e]` splits only at `round(0.5 * (e + s))`. Its children
//!   get the spawn key `2 * key + (0 left | 1 right)` and the depth `depth + 1` (root: key 0,
//!   depth 0). A query `[a, b]` is answered by the canonical list of tree intervals that tile it:
//!   starting at the root, an interval equal to `[a, b]` is taken whole; otherwise the query goes
//!   to the child that holds it, or is cut at the midpoint and both halves are resolved, left
//!   first. Because splits only ever happen at these midpoints, the tiling (and so every value)
//!   does not depend on earlier queries, their order, or the cache: the cache only saves time.
//! * **Seeds.** Each split interval derives its seeds with numpy's
//!   `SeedSequence(entropy=seed, spawn_key=(key, depth), pool_size=24).generate_state(4)`; the
//!   first word seeds the noise of its bridge. The root's own increment uses the first word of
//!   `SeedSequence(entropy=seed, pool_size=24).generate_state(3)`. The seed enters as its
//!   little-endian 32-bit words, so all 64 bits matter. SeedSequence (a multiplicative hash
//!   mixing the words into a pool, then an output hash cycling over the pool) is reimplemented
//!   here.
//! * **Normals.** Noise for a seed `s` is `torch.randn(shape, generator=torch.Generator()
//!   .manual_seed(s))` in float32 ([`TorchGenerator`]), over the whole latent.
//! * **Increments.** The root increment is `randn(root seed) * f32(sqrt(t1 - t0))` with the
//!   unrounded float32 ends. The children of `[s, e]` split at `m`, with parent increment `W` and
//!   the parent's bridge noise `z`: with the doubles `l = m - s`, `r = e - m`, `h = 1 / (e - s)`,
//!   the left child is `(f32(l) * W) * f32(h) + f32(sqrt(l * r * h)) * z` in float32 (each
//!   Python float becomes a float32 scalar, one rounding per tensor operation) and the right
//!   child is `W - left`. The query's increment is the sum of its tiling, added left to right.
//! * **ComfyUI's wrapper** (`BatchedBrownianTree` / `BrownianTreeNoiseSampler`): the tree spans
//!   `[min, max]` of `(sigma_min, sigma_max)`; a call sorts `(sigma, sigma_next)` ascending, asks
//!   the tree for that increment (ends below/above the root are clamped to it; equal ends give
//!   zeros), multiplies by `+1` or `-1` (the product of the two sort signs: `-1` for the usual
//!   decreasing sigmas) and divides by `sqrt(|sigma_next - sigma|)` in float32. With a list of
//!   seeds (one tree per batch item, each over one item) the items' results are concatenated.
//!
//! # What is exact
//!
//! The increments ([`BrownianTreeNoise::fill_increment`], ComfyUI's `BatchedBrownianTree`
//! output) equal torchsde's float32 values bit for bit, for every query sequence
//! (`tests/brownian.rs`: torch 2.15 + torchsde 0.2.6 on x86-64 with AVX2, the default
//! [`NormalKernel::Avx2`]; [`NormalKernel::Default`] selects torch's portable kernel).
//!
//! The normalised noise ([`NoiseSource::fill_noise`]) takes the square root and the division in
//! IEEE float32, which is what ComfyUI computes in its usual setup: the tree runs on the CPU,
//! but the sigmas, and so `(sigma_next - sigma).abs().sqrt()` and the division, live on the
//! model's CUDA device, where both are correctly rounded. With the sigmas on the CPU (ComfyUI
//! `--cpu`), torch's float32 `sqrt` (MKL) is not always correctly rounded; there the
//! noise can differ by 1-2 ulp in some calls (measured in the tests).
//!
//! Not reproduced: `cpu=False` (the `*_gpu` samplers: the tree's noise comes from CUDA's
//! generator); latents that are not float32 (the tree's noise dtype follows the latent's);
//! `seed=None` (a random seed). Degenerate queries whose two ends differ but round to the same
//! 1e-6 grid point, which make torchsde recurse until `RecursionError`, give zeros here; a query
//! with `sigma == sigma_next` gives `0 / 0 = NaN` like ComfyUI; a NaN sigma gives NaN (torchsde
//! loops forever).
//!
//! # Cost
//!
//! A query costs one `randn` over the latent for the root and one per split interval on the
//! paths from the root to its two (rounded) ends: on average 32 for a 30-step Wan flow schedule
//! (shift 5) and 41 for a 30-step SDXL karras schedule. torchsde caches 45 whole-latent
//! increments to skip some of this; here nothing is cached between queries (the tree is rebuilt
//! per query; its shape and seeds cost microseconds). Instead every query streams over the
//! latent in chunks of [`CHUNK`] values: each noise stream is cut into 16-value blocks exactly
//! as torch's `normal_fill` cuts it (the odd tail included), so no latent-sized buffer is held
//! besides the caller's output: per query, one generator (2.5 KiB) and one chunk of noise
//! (16 KiB) per stream plus one chunk of increments per tree interval involved (about 35
//! streams and 70 intervals, under 2 MiB in all). From 65536 values per tree a chunk's streams
//! are drawn on rayon's threads (results do not depend on the thread count).

use rayon::prelude::*;

use super::rng::{NormalKernel, TorchGenerator};
use super::sampler::NoiseSource;
use super::SamplingError;

/// Values per streamed chunk (a multiple of 16, torch's Box-Muller block).
pub const CHUNK: usize = 4096;

/// From this many values per tree the noise streams of a chunk are drawn on rayon's threads.
const PARALLEL_MIN_LEN: usize = 1 << 16;

/// `tol` of torchsde's `BrownianTree`: ends are rounded to this many decimals.
const DECIMALS: i32 = 6;

/// `pool_size` of torchsde's `BrownianTree`.
const POOL_SIZE: usize = 24;

/// ComfyUI's Brownian-tree noise sampler for one latent (see the module docs).
///
/// ```
/// use nijigen::sampling::brownian::BrownianTreeNoise;
/// use nijigen::sampling::NoiseSource;
/// // BrownianTreeNoiseSampler(x, 0.0291675, 14.614642, seed=42, cpu=True) for 8 values.
/// let mut noise = BrownianTreeNoise::new(8, 0.029_167_5, 14.614_642, 42);
/// let mut out = vec![0.0f32; 8];
/// noise.fill_noise(14.614_642, 7.0, &mut out);
/// assert!(out.iter().all(|v| v.is_finite()));
/// ```
#[derive(Clone, Debug)]
pub struct BrownianTreeNoise {
    /// Values per tree (a batch item with a list of seeds, else the whole latent).
    item_len: usize,
    /// One entry per tree: the seed's 32-bit words (numpy's entropy coercion).
    entropies: Vec<Vec<u32>>,
    /// `float(t0)`, `float(t1)` of the sorted `(sigma_min, sigma_max)`.
    t0: f64,
    t1: f64,
    /// The root interval: `round(t0)`, `round(t1)`.
    start: f64,
    end: f64,
    /// `BatchedBrownianTree.sign`: `-1` when `sigma_min < sigma_max` is false.
    sign: i32,
    kernel: NormalKernel,
}

impl BrownianTreeNoise {
    /// `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed, cpu=True)` for a float32
    /// latent `x` of `len` values and an integer seed. Only the number of values matters, not
    /// the shape: torch draws every tensor in memory order.
    pub fn new(len: usize, sigma_min: f32, sigma_max: f32, seed: u64) -> Self {
        Self::build(len, vec![seed_words(seed)], sigma_min, sigma_max)
    }

    /// The same with a list of seeds, one per batch item (`seed=[s0, s1, ...]`): one tree per
    /// item over `item_len` values; [`fill_noise`](NoiseSource::fill_noise) then expects
    /// `item_len * seeds.len()` values, the items one after another.
    pub fn batched(item_len: usize, seeds: &[u64], sigma_min: f32, sigma_max: f32) -> Self {
        let entropies = seeds.iter().map(|&s| seed_words(s)).collect();
        Self::build(item_len, entropies, sigma_min, sigma_max)
    }

    /// What ComfyUI's SDE samplers build from their sigma list: `sigma_min` is the smallest
    /// sigma above 0 and `sigma_max` the largest. Pass the list as the sampler received it —
    /// for flow models before `offset_first_sigma_for_snr` replaces a first sigma of 1.
    pub fn from_sigmas(len: usize, sigmas: &[f32], seed: u64) -> Result<Self, SamplingError> {
        let sigma_min = sigmas.iter().copied().filter(|&s| s > 0.0).reduce(f32::min);
        let sigma_max = sigmas.iter().copied().reduce(f32::max);
        match (sigma_min, sigma_max) {
            (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() => {
                Ok(Self::new(len, lo, hi, seed))
            }
            _ => Err(SamplingError::InvalidSigmas {
                reason: "a Brownian tree needs a finite sigma above 0".into(),
            }),
        }
    }

    /// Reproduces the chosen torch `normal_fill` kernel (default: [`NormalKernel::Avx2`]).
    pub fn with_normal_kernel(mut self, kernel: NormalKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The number of values one call fills (all batch items).
    pub fn len(&self) -> usize {
        self.item_len * self.entropies.len()
    }

    /// Whether the latent has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `noise_sampler(sigma, sigma_next)` as a new vector of [`len`](Self::len) values.
    pub fn noise(&mut self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len()];
        self.fill_noise(sigma, sigma_next, &mut out);
        out
    }

    fn build(item_len: usize, entropies: Vec<Vec<u32>>, sigma_min: f32, sigma_max: f32) -> Self {
        let (lo, hi, sign) = sort(sigma_min, sigma_max);
        let t0 = f64::from(lo);
        let t1 = f64::from(hi);
        Self {
            item_len,
            entropies,
            t0,
            t1,
            start: round_decimals(t0),
            end: round_decimals(t1),
            sign,
            kernel: NormalKernel::default(),
        }
    }

    /// ComfyUI's `BatchedBrownianTree(sigma, sigma_next)`: the tree's increment from `sigma` to
    /// `sigma_next` (negative when going down), not normalised. [`fill_noise`] is this divided by
    /// `sqrt(|sigma_next - sigma|)`.
    ///
    /// [`fill_noise`]: NoiseSource::fill_noise
    ///
    /// # Panics
    /// If `out` does not have [`len`](Self::len) values.
    pub fn fill_increment(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        self.fill(sigma, sigma_next, None, out);
    }

    /// Both calls: the sorted query per tree, then `* sign` and `/ denom` when given.
    fn fill(&self, sigma: f32, sigma_next: f32, denom: Option<f32>, out: &mut [f32]) {
        assert_eq!(out.len(), self.len(), "Brownian tree noise buffer length");
        let (a, b, sign) = sort(sigma, sigma_next);
        // `w * (self.sign * sign)`: a Python int times a float32 tensor.
        let factor = (self.sign * sign) as f32;
        if self.item_len == 0 {
            return;
        }
        for (tree, item) in out.chunks_exact_mut(self.item_len).enumerate() {
            self.increment(tree, f64::from(a), f64::from(b), factor, denom, item);
        }
    }

    /// `BrownianInterval.__call__(ta, tb)` for tree `tree`: the increment over `[ta, tb]`
    /// (`ta <= tb`, unrounded), times `factor`, divided by `denom` if given, into `out`.
    fn increment(
        &self,
        tree: usize,
        ta: f64,
        tb: f64,
        factor: f32,
        denom: Option<f32>,
        out: &mut [f32],
    ) {
        let (mut ta, mut tb) = (ta, tb);
        // Out-of-range ends are clamped to the root (torchsde warns).
        if ta < self.start {
            ta = self.start;
        }
        if tb < self.start {
            tb = self.start;
        }
        if ta > self.end {
            ta = self.end;
        }
        if tb > self.end {
            tb = self.end;
        }
        let (ra, rb) = (round_decimals(ta), round_decimals(tb));
        // `ta == tb`: torch.zeros. Ends that only meet after rounding: see the module docs.
        if ta == tb || ra >= rb || ta.is_nan() || tb.is_nan() {
            let zero = if ta.is_nan() || tb.is_nan() {
                f32::NAN
            } else {
                0.0
            };
            for v in out.iter_mut() {
                *v = finish(zero, factor, denom);
            }
            return;
        }
        let mut tree_nodes = Tree::new(self.start, self.end, &self.entropies[tree]);
        let mut tiling = Vec::new();
        tree_nodes.tile(0, ra, rb, &mut tiling);
        let root_seed = seed_sequence_state(&self.entropies[tree], &[], POOL_SIZE, 3)[0];
        let root_scale = (self.t1 - self.t0).sqrt() as f32;
        tree_nodes.stream(
            root_seed,
            root_scale,
            &tiling,
            self.kernel,
            factor,
            denom,
            out,
        );
    }
}

impl NoiseSource for BrownianTreeNoise {
    /// ComfyUI's `noise_sampler(sigma, sigma_next)`: the tree's increment from `sigma` to
    /// `sigma_next` over `sqrt(|sigma_next - sigma|)`, a standard normal per value. The square
    /// root and the division are IEEE float32 (correctly rounded), as on a CUDA device.
    ///
    /// # Panics
    /// If `out` does not have [`len`](BrownianTreeNoise::len) values.
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        // `(t1 - t0).abs().sqrt()` on the float32 sigmas.
        let denom = (sigma_next - sigma).abs().sqrt();
        self.fill(sigma, sigma_next, Some(denom), out);
    }
}

/// `w * sign`, then `/ denom` when normalising (one float32 rounding each).
#[inline]
fn finish(w: f32, factor: f32, denom: Option<f32>) -> f32 {
    match denom {
        Some(d) => w * factor / d,
        None => w * factor,
    }
}

/// `BatchedBrownianTree.sort`: `(a, b, 1)` if `a < b`, else `(b, a, -1)`.
fn sort(a: f32, b: f32) -> (f32, f32, i32) {
    if a < b {
        (a, b, 1)
    } else {
        (b, a, -1)
    }
}

/// An interval of the dyadic tree, as created while tiling one query.
#[derive(Clone, Debug)]
struct Node {
    start: f64,
    end: f64,
    spawn_key: u64,
    depth: u32,
    /// Set once the interval is split.
    split: Option<Split>,
}

/// A split interval: its midpoint, children and bridge seed.
#[derive(Clone, Copy, Debug)]
struct Split {
    mid: f64,
    left: usize,
    right: usize,
    seed: u32,
}

/// The part of one tree that a query visits (parents are created before their children).
struct Tree<'a> {
    nodes: Vec<Node>,
    entropy: &'a [u32],
}

impl<'a> Tree<'a> {
    fn new(start: f64, end: f64, entropy: &'a [u32]) -> Self {
        let root = Node {
            start,
            end,
            spawn_key: 0,
            depth: 0,
            split: None,
        };
        Self {
            nodes: vec![root],
            entropy,
        }
    }

    /// `_split_exact` at the rounded halfway point (once per interval).
    fn split(&mut self, index: usize) -> Split {
        if let Some(split) = self.nodes[index].split {
            return split;
        }
        let node = &self.nodes[index];
        let (start, end, key, depth) = (node.start, node.end, node.spawn_key, node.depth);
        let mid = round_decimals(0.5 * (end + start));
        let mut spawn = seed_words(key);
        spawn.extend(seed_words(u64::from(depth)));
        let seed = seed_sequence_state(self.entropy, &spawn, POOL_SIZE, 4)[0];
        let left = self.nodes.len();
        let child = |start, end, bit| Node {
            start,
            end,
            spawn_key: 2 * key + bit,
            depth: depth + 1,
            split: None,
        };
        self.nodes.push(child(start, mid, 0));
        self.nodes.push(child(mid, end, 1));
        let split = Split {
            mid,
            left,
            right: left + 1,
            seed,
        };
        self.nodes[index].split = Some(split);
        split
    }

    /// Appends the intervals that tile `[ta, tb]` (rounded, `ta < tb`, inside `index`), left
    /// to right.
    fn tile(&mut self, index: usize, ta: f64, tb: f64, out: &mut Vec<usize>) {
        let node = &self.nodes[index];
        if ta == node.start && tb == node.end {
            out.push(index);
            return;
        }
        // On the 1e-6 grid an interval of one grid step is never split by a grid query, so
        // the depth stays below ~60 for any sigma range; the guard only stops a runaway.
        assert!(node.depth < 200, "Brownian tree query did not resolve");
        let split = self.split(index);
        if tb <= split.mid {
            self.tile(split.left, ta, tb, out);
        } else if ta >= split.mid {
            self.tile(split.right, ta, tb, out);
        } else {
            self.tile(split.left, ta, split.mid, out);
            self.tile(split.right, split.mid, tb, out);
        }
    }

    /// Computes the tiling's summed increment, times `factor` (over `denom` if given), into
    /// `out`, one chunk of values at a time.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        root_seed: u32,
        root_scale: f32,
        tiling: &[usize],
        kernel: NormalKernel,
        factor: f32,
        denom: Option<f32>,
        out: &mut [f32],
    ) {
        let len = out.len();
        let cap = len.min(CHUNK + 16);
        // Noise streams: the root's increment first, then one per split interval (node order).
        let mut streams = vec![(RandnStream::new(root_seed, len, kernel), vec![0.0f32; cap])];
        let mut bridges = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(split) = node.split {
                let c = BridgeCoefficients::new(node.start, split.mid, node.end);
                bridges.push((i, split, c));
                streams.push((RandnStream::new(split.seed, len, kernel), vec![0.0f32; cap]));
            }
        }
        let parallel = len >= PARALLEL_MIN_LEN && rayon::current_num_threads() > 1;
        let mut values: Vec<Vec<f32>> = vec![vec![0.0f32; cap]; self.nodes.len()];
        let mut pos = 0;
        while pos < len {
            let n = chunk_len(len - pos);
            // The streams are independent: draw this chunk of each, on several threads if
            // worthwhile; the arithmetic below is per value and in torchsde's order.
            let draw =
                |(stream, buf): &mut (RandnStream, Vec<f32>)| stream.next_chunk(&mut buf[..n]);
            if parallel {
                streams.par_iter_mut().for_each(draw);
            } else {
                streams.iter_mut().for_each(draw);
            }
            for (w, &z) in values[0][..n].iter_mut().zip(&streams[0].1[..n]) {
                *w = z * root_scale;
            }
            for ((parent, split, c), (_, noise)) in bridges.iter().zip(&streams[1..]) {
                // Children are created after their parent, the right one just after the left.
                let (head, tail) = values.split_at_mut(split.left);
                let w = &head[*parent][..n];
                let (left, right) = tail.split_at_mut(1);
                let (left, right) = (&mut left[0][..n], &mut right[0][..n]);
                for i in 0..n {
                    let l = c.left_w(w[i], noise[i]);
                    left[i] = l;
                    right[i] = w[i] - l;
                }
            }
            let dst = &mut out[pos..pos + n];
            dst.copy_from_slice(&values[tiling[0]][..n]);
            for &t in &tiling[1..] {
                for (d, &v) in dst.iter_mut().zip(&values[t][..n]) {
                    *d += v;
                }
            }
            for d in dst.iter_mut() {
                *d = finish(*d, factor, denom);
            }
            pos += n;
        }
    }
}

/// The float32 scalars of one Brownian bridge (torchsde's `levy_area_approximation='none'`
/// branch of `_increment_and_space_time_levy_area`).
#[derive(Clone, Copy, Debug)]
struct BridgeCoefficients {
    left_diff: f32,
    h_reciprocal: f32,
    std: f32,
}

impl BridgeCoefficients {
    fn new(start: f64, mid: f64, end: f64) -> Self {
        let h_reciprocal = 1.0 / (end - start);
        let left_diff = mid - start;
        let right_diff = end - mid;
        let var = left_diff * right_diff * h_reciprocal;
        Self {
            left_diff: left_diff as f32,
            h_reciprocal: h_reciprocal as f32,
            std: var.sqrt() as f32,
        }
    }

    /// `left_diff * W * h_reciprocal + sqrt(var) * noise`, one float32 rounding per operation.
    #[inline]
    fn left_w(&self, w: f32, noise: f32) -> f32 {
        let mean = self.left_diff * w * self.h_reciprocal;
        mean + self.std * noise
    }
}

/// The length of the next chunk when `remaining` values are left: [`CHUNK`], or everything
/// left when that is less than `CHUNK + 16`, so that the last chunk holds torch's whole
/// redrawn tail (the last 16 values) and every chunk but the last is a whole number of blocks.
fn chunk_len(remaining: usize) -> usize {
    if remaining < CHUNK + 16 {
        remaining
    } else {
        CHUNK
    }
}

/// `torch.randn(len, generator=Generator().manual_seed(seed))`, produced in consecutive chunks.
///
/// torch's `normal_fill` (16 values or more) draws all `len` uniforms, turns each whole block of
/// 16 into normals, then, if `len % 16 != 0`, draws 16 more uniforms and overwrites the last 16
/// values with their normals. Drawing block by block consumes the generator in the same order,
/// so chunks that are whole blocks (and a last chunk holding the last 16 values) give the same
/// numbers. Fewer than 16 values use torch's scalar path in one piece.
struct RandnStream {
    generator: TorchGenerator,
    len: usize,
    pos: usize,
}

impl RandnStream {
    fn new(seed: u32, len: usize, kernel: NormalKernel) -> Self {
        Self {
            generator: TorchGenerator::with_kernel(u64::from(seed), kernel),
            len,
            pos: 0,
        }
    }

    /// The next `out.len()` values (see [`chunk_len`] for the allowed lengths).
    fn next_chunk(&mut self, out: &mut [f32]) {
        let start = self.pos;
        let end = start + out.len();
        assert!(end <= self.len, "randn stream overrun");
        self.pos = end;
        if self.len < 16 {
            assert!(
                start == 0 && end == self.len,
                "short randn must be drawn whole"
            );
            self.generator.fill_randn(out);
            return;
        }
        assert!(start % 16 == 0, "randn chunks start on a block");
        let whole_end = self.len / 16 * 16;
        let blocks_end = end.min(whole_end);
        if blocks_end > start {
            // Whole blocks only: torch draws their uniforms, then transforms block by block,
            // which is what a whole-block `fill_randn` does too.
            self.generator.fill_randn(&mut out[..blocks_end - start]);
        }
        if end == self.len && whole_end != self.len {
            assert!(
                self.len - 16 >= start,
                "the last chunk must hold the redrawn tail"
            );
            // The partial block's uniforms are drawn but overwritten.
            for _ in whole_end..self.len {
                self.generator.uniform_f32();
            }
            let tail = self.len - 16 - start;
            self.generator.fill_randn(&mut out[tail..]);
        }
    }
}

/// Python's `round(x, 6)`: the decimal with 6 digits after the point nearest to the exact
/// binary value of `x` (ties to even), returned as the nearest double.
fn round_decimals(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    // Above 2^33 a double's spacing exceeds 1e-6 and rounding cannot move it.
    if a >= 8_589_934_592.0 {
        return x;
    }
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mantissa, exp) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), biased - 1075)
    };
    let scale = 10u128.pow(DECIMALS as u32);
    // a * 10^6 = mantissa * 10^6 * 2^exp, with mantissa * 10^6 < 2^73.
    let product = u128::from(mantissa) * scale;
    let n = if exp >= 0 {
        product << exp
    } else {
        let shift = (-exp) as u32;
        if shift > 100 {
            0
        } else {
            let q = product >> shift;
            let rem = product & ((1u128 << shift) - 1);
            let half = 1u128 << (shift - 1);
            if rem > half || (rem == half && q & 1 == 1) {
                q + 1
            } else {
                q
            }
        }
    };
    // n < 2^53 here, so this division is the correctly rounded n / 10^6.
    let r = n as f64 / scale as f64;
    r.copysign(x)
}

/// numpy's `_int_to_uint32_array`: the little-endian 32-bit words of `n` (`[0]` for 0).
fn seed_words(mut n: u64) -> Vec<u32> {
    let mut words = vec![n as u32];
    n >>= 32;
    while n > 0 {
        words.push(n as u32);
        n >>= 32;
    }
    words
}

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// numpy's `SeedSequence(entropy, spawn_key=spawn, pool_size=pool_size)
/// .generate_state(n_words)` (uint32), for entropy and spawn key already coerced to words.
///
/// The entropy words (padded with zeros to the pool size when there is a spawn key) followed by
/// the spawn-key words are hashed into the pool with a multiplicative hash whose constant
/// advances per use; every pool word is then mixed with a hash of every other; words beyond the
/// pool are mixed into each pool word. The output cycles over the pool through a second hash.
fn seed_sequence_state(
    entropy: &[u32],
    spawn: &[u32],
    pool_size: usize,
    n_words: usize,
) -> Vec<u32> {
    let mut assembled = entropy.to_vec();
    if !spawn.is_empty() && assembled.len() < pool_size {
        assembled.resize(pool_size, 0);
    }
    assembled.extend_from_slice(spawn);

    let mut hash_const = INIT_A;
    let mut hashmix = |value: u32| -> u32 {
        let mut v = value ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_A);
        v = v.wrapping_mul(hash_const);
        v ^ (v >> XSHIFT)
    };
    let mix = |x: u32, y: u32| -> u32 {
        let r = MIX_MULT_L
            .wrapping_mul(x)
            .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        r ^ (r >> XSHIFT)
    };
    let mut pool = vec![0u32; pool_size];
    for (i, p) in pool.iter_mut().enumerate() {
        *p = hashmix(assembled.get(i).copied().unwrap_or(0));
    }
    for src in 0..pool_size {
        for dst in 0..pool_size {
            if src != dst {
                let h = hashmix(pool[src]);
                pool[dst] = mix(pool[dst], h);
            }
        }
    }
    for &word in assembled.iter().skip(pool_size) {
        for p in pool.iter_mut() {
            let h = hashmix(word);
            *p = mix(*p, h);
        }
    }

    let mut hash_const = INIT_B;
    (0..n_words)
        .map(|i| {
            let mut v = pool[i % pool_size] ^ hash_const;
            hash_const = hash_const.wrapping_mul(MULT_B);
            v = v.wrapping_mul(hash_const);
            v ^ (v >> XSHIFT)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_python() {
        // (x, round(x, 6)) from CPython, as f64 bit patterns.
        for &(x, r) in ROUND_CASES {
            let got = round_decimals(f64::from_bits(x));
            assert_eq!(got.to_bits(), r, "round({:e}, 6)", f64::from_bits(x));
        }
        assert_eq!(round_decimals(0.0), 0.0);
        assert!(round_decimals(f64::NAN).is_nan());
    }

    #[test]
    fn seed_sequence_matches_numpy() {
        // SeedSequence(entropy, spawn_key=spawn, pool_size).generate_state(n) from numpy.
        for (entropy, spawn, pool, expected) in SEED_SEQUENCE_CASES {
            let mut spawn_words = Vec::new();
            for &k in *spawn {
                spawn_words.extend(seed_words(k));
            }
            let got =
                seed_sequence_state(&seed_words(*entropy), &spawn_words, *pool, expected.len());
            assert_eq!(&got[..], *expected, "entropy {entropy} spawn {spawn:?}");
        }
    }

    #[test]
    fn seed_words_are_little_endian() {
        assert_eq!(seed_words(0), [0]);
        assert_eq!(seed_words((1 << 32) + 7), [7, 1]);
        assert_eq!(seed_words(u64::MAX), [u32::MAX, u32::MAX]);
    }

    #[test]
    fn streamed_randn_equals_whole_randn() {
        for len in [
            1,
            7,
            15,
            16,
            17,
            31,
            32,
            100,
            CHUNK,
            CHUNK + 5,
            CHUNK + 16,
            3 * CHUNK + 17,
        ] {
            let whole = TorchGenerator::new(9).randn(len);
            let mut stream = RandnStream::new(9, len, NormalKernel::Avx2);
            let mut got = vec![0.0f32; len];
            let mut pos = 0;
            while pos < len {
                let n = chunk_len(len - pos);
                stream.next_chunk(&mut got[pos..pos + n]);
                pos += n;
            }
            assert_eq!(got, whole, "len {len}");
        }
    }

    #[test]
    fn bridge_halves_add_up_to_the_parent() {
        let c = BridgeCoefficients::new(0.25, 0.5, 1.0);
        // left = (0.25 * w) * (4/3) + sqrt(0.25 * 0.5 * 4/3) * z; right = w - left.
        let (w, z) = (0.75f32, -1.25f32);
        let left = c.left_w(w, z);
        let expected = 0.25f32 * w * (1.0 / 0.75f64) as f32 + (1.0f64 / 6.0).sqrt() as f32 * z;
        assert_eq!(left.to_bits(), expected.to_bits());
        assert_eq!(c.left_diff, 0.25);
    }

    #[test]
    fn tiling_is_dyadic_and_ordered() {
        let entropy = seed_words(1);
        let mut tree = Tree::new(0.0, 1.0, &entropy);
        let mut tiling = Vec::new();
        tree.tile(0, 0.25, 1.0, &mut tiling);
        let spans: Vec<(f64, f64)> = tiling
            .iter()
            .map(|&i| (tree.nodes[i].start, tree.nodes[i].end))
            .collect();
        assert_eq!(spans, [(0.25, 0.5), (0.5, 1.0)]);
        let keys: Vec<(u64, u32)> = tiling
            .iter()
            .map(|&i| (tree.nodes[i].spawn_key, tree.nodes[i].depth))
            .collect();
        assert_eq!(keys, [(1, 2), (1, 1)]);
    }

    #[test]
    fn queries_do_not_depend_on_order() {
        let mut a = BrownianTreeNoise::new(40, 0.03, 14.6, 5);
        let mut b = BrownianTreeNoise::new(40, 0.03, 14.6, 5);
        let first = a.noise(10.0, 3.0);
        let _ = b.noise(1.0, 0.5);
        assert_eq!(b.noise(10.0, 3.0), first);
        // Reversing the query flips the sign only.
        let reversed = a.noise(3.0, 10.0);
        assert!(reversed
            .iter()
            .zip(&first)
            .all(|(r, f)| r.to_bits() == (-*f).to_bits()));
    }

    #[test]
    fn adjacent_increments_add_up() {
        // W(a, c) = W(a, b) + W(b, c) up to float32 rounding, for the unnormalised increments.
        let mut t = BrownianTreeNoise::new(64, 0.03, 14.6, 11);
        let scale = |a: f32, b: f32| (a - b).abs().sqrt();
        let ab = t.noise(8.0, 4.0);
        let bc = t.noise(4.0, 1.0);
        let ac = t.noise(8.0, 1.0);
        for i in 0..64 {
            let sum = ab[i] * scale(8.0, 4.0) + bc[i] * scale(4.0, 1.0);
            assert!((sum - ac[i] * scale(8.0, 1.0)).abs() < 1e-4, "{i}");
        }
    }

    #[test]
    fn increments_are_standard_normal() {
        let mut t = BrownianTreeNoise::new(20_000, 0.03, 14.6, 3);
        let v = t.noise(5.0, 4.9);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn degenerate_queries() {
        let mut t = BrownianTreeNoise::new(3, 0.03, 14.6, 3);
        assert!(t.noise(2.0, 2.0).iter().all(|v| v.is_nan()));
        // Both ends above the range: clamped to the same point, zeros.
        assert!(t.noise(30.0, 20.0).iter().all(|&v| v == 0.0));
        // Different floats that round to the same 1e-6 grid point.
        assert!(t.noise(3.000_000_5, 3.000_000_2).iter().all(|&v| v == 0.0));
        assert!(BrownianTreeNoise::from_sigmas(3, &[0.0], 1).is_err());
        let mut empty = BrownianTreeNoise::new(0, 0.03, 14.6, 3);
        assert!(empty.noise(2.0, 1.0).is_empty());
    }

    #[rustfmt::skip]
    const ROUND_CASES: &[(u64, u64)] = &[
        (0x3ea0c6f7a0b5ed8d, 0x0000000000000000), // 5e-07 -> 0.0
        (0x3eb92a737110e454, 0x3ec0c6f7a0b5ed8d), // 1.5e-06 -> 2e-06
        (0x3ec4f8b588e368f1, 0x3ec92a737110e454), // 2.5e-06 -> 3e-06
        (0x3e90c6f7a0b5ed8d, 0x0000000000000000), // 2.5e-07 -> 0.0
        (0x3ff000008637bd06, 0x3ff000010c6f7a0b), // 1.0000005 -> 1.000001
        (0x402d3ab26bf8769f, 0x402d3ab27cbf6e3f), // 14.6146425 -> 14.614643
        (0x3fbf9ad85dfa871a, 0x3fbf9acffa7eb6bf), // 0.1234565 -> 0.123456
        (0x3f9dde15ca6ca03c, 0x3f9dddf43c7d5ed0), // 0.0291675 -> 0.029167
        (0x402d3ab25b317efe, 0x402d3ab25b317efe), // 14.614642 -> 14.614642
        (0x01a56e1fc2f8f359, 0x0000000000000000), // 1e-300 -> 0.0
        (0x40fe240c9fcb923a, 0x40fe240c9fcb0c02), // 123456.7890125 -> 123456.789012
        (0x4005666666666666, 0x4005666666666666), // 2.675 -> 2.675
        (0x3ea0c6f7a0a78434, 0x0000000000000000), // 4.999999999e-07 -> 0.0
        (0x401c0000a7c5ac47, 0x401c00008637bd06), // 7.0000025 -> 7.000002
        (0x3f9dde15c0000000, 0x3f9dddf43c7d5ed0), // 0.029167499393224716 -> 0.029167
        (0x402d3ab260000000, 0x402d3ab25b317efe), // 14.614642143249512 -> 14.614642
        (0x3fefff2e40000000, 0x3fefff2e48e8a71e), // 0.9998999834060669 -> 0.9999
        (0x3fa99999a0000000, 0x3fa999999999999a), // 0.05000000074505806 -> 0.05
        (0x400aaaaaa0000000, 0x400aaaaa7ded6ba9), // 3.3333332538604736 -> 3.333333
        (0x401d49a1554fbdad, 0x401d49a133c1ce6c), // 7.3219045 -> 7.321904
        (0x4025efc17a89331a, 0x4025efc17a89331a), // 10.968273 -> 10.968273
        (0x40000000c9539b88, 0x400000008637bd06), // 2.0000014999999998 -> 2.000001
        (0x40057f8f376252e5, 0x40057f8f4730403a), // 2.6872848822480244 -> 2.687285
        (0x4030f2dc5901731b, 0x4030f2dc5d638866), // 16.948674738744653 -> 16.948675
        (0x402e8d0d5650c6d8, 0x402e8d0d49949e88), // 15.275492379532281 -> 15.275492
        (0x401467d04b2ddf33, 0x401467d06bbdbe3c), // 5.101380514788434 -> 5.101381
        (0x4023d1415ace082c, 0x4023d14163779e9d), // 9.908701741838819 -> 9.908702
        (0x4021fac9db5c7951, 0x4021fac9d16fc9bc), // 8.989821295774762 -> 8.989821
        (0x402a104fe1e5e850, 0x402a104fd2a62aa2), // 13.031859454455258 -> 13.031859
        (0x402f8c86f10cbdfd, 0x402f8c86f049a997), // 15.774467022710263 -> 15.774467
        (0x3eaf7e7a2406e8e7, 0x3eb0c6f7a0b5ed8d), // 9.38595867742349e-07 -> 1e-06
        (0x3e93060f33c0e5a0, 0x0000000000000000), // 2.8347476522006314e-07 -> 0.0
        (0x3ee186facff3a7e2, 0x3ee0c6f7a0b5ed8d), // 8.357651039198698e-06 -> 8e-06
        (0xbec4f8b588e368f1, 0xbec92a737110e454), // -2.5e-06 -> -3e-06
        (0xbfbf9ad85dfa871a, 0xbfbf9acffa7eb6bf), // -0.1234565 -> -0.123456
    ];

    #[rustfmt::skip]
    const SEED_SEQUENCE_CASES: &[(u64, &[u64], usize, &[u32])] = &[
        (0, &[], 24, &[4025752534, 2687548107, 2326983537]),
        (42, &[], 24, &[387750627, 2536650517, 4078839648]),
        (4294967303, &[], 24, &[2407665294, 3389522225, 1847125611]),
        (18446744073709551615, &[], 24, &[1186816001, 310380770, 3217591682]),
        (0, &[0, 0], 24, &[245430115, 3436620678, 4120055464, 1627243804]),
        (42, &[5, 3], 24, &[3084123560, 468215949, 242942938, 2650128260]),
        (4294967303, &[123456, 17], 24, &[2528882015, 934784087, 1100114599, 855675277]),
        (18446744073709551615, &[8589934597, 34], 24, &[3423280695, 4014026104, 733256493, 267284801]),
        (7, &[], 4, &[2083679832, 3939563265, 4185785210, 142198000, 1732601695, 1648004171, 1614310572, 3007594413]),
        (7, &[1, 2], 4, &[2032283795, 2456193708, 1599947728, 3882949131]),
        (1, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], 24, &[1354648302, 3235455460, 1996987468, 4287175715, 1906911985, 3062562379, 3363508483, 2402723263, 2753970845, 4277129277, 72978303, 4084290558, 555108413, 3279387420, 1718025423, 1510629587, 642035580, 1144706236, 2489180393, 999582754, 1999684031, 2682743918, 2386099669, 4112763626, 1328783875, 2173441585, 73162199, 2170831022, 956175238, 3816051765]),
    ];
}
