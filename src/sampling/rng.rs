//! A bit-exact reproduction of PyTorch's CPU random generator (`torch.Generator()` /
//! `torch.manual_seed(seed)`) and of `torch.randn` for `float32`.
//!
//! What torch does, and what this module mirrors step by step:
//!
//! * **Engine**: `at::mt19937` (`CPUGeneratorImpl`), a standard 32-bit Mersenne Twister seeded
//!   with `init_genrand` on the LOW 32 BITS of the 64-bit seed (so seeds `7` and `2^32 + 7` give
//!   the same stream). `random()` is one 32-bit draw; `random64()` is two draws, the first one
//!   in the high half.
//! * **Uniforms**: `uniform_real_distribution<float>` takes the low 24 bits of one `random()`
//!   times 2^-24; `<double>` takes the low 53 bits of one `random64()` times 2^-53.
//! * **`normal_` on a contiguous float32 tensor with at least 16 elements** (`normal_fill`): first
//!   the whole buffer is filled with float uniforms, then every full block of 16 is turned into
//!   normals by Box-Muller (`u1 = 1 - data[j]`, `u2 = data[j + 8]`, `j < 8`: cosine into `j`, sine
//!   into `j + 8`); if the length is not a multiple of 16, the LAST 16 values are drawn again
//!   (16 fresh uniforms) and transformed again. On x86-64 builds running with AVX2 or AVX-512
//!   (`torch.backends.cpu.get_cpu_capability()` = `AVX2`/`AVX512`) the 16-block uses the Cephes
//!   polynomial `log256_ps`/`sincos256_ps` of `avx_mathfun.h`, compiled with the multiply-adds
//!   that GCC fuses into FMA ([`NormalKernel::Avx2`]); on the `DEFAULT` capability it uses libm's
//!   `logf`/`cosf`/`sinf` ([`NormalKernel::Default`]).
//! * **Fewer than 16 elements** (or a non-contiguous tensor): one `normal_distribution<double>`
//!   per value: two double uniforms `u1, u2`, `r = sqrt(-2 log1p(-u2))`, `theta = 2 pi u1`, returns
//!   `r cos(theta)` and caches `r sin(theta)` in the generator for the next scalar draw. The cache
//!   survives calls (also across an intervening 16+ call) and is cleared by `manual_seed`.
//!
//! Checked against torch 2.15 (`tests/sampling_reference.rs`): every value compared as f32 bits.

/// Which of torch's two float32 `normal_fill` kernels to reproduce (tensors of 16 or more values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NormalKernel {
    /// x86-64 torch on a CPU with AVX2 (capability `AVX2` or `AVX512`): what ComfyUI users on a
    /// PC get. Pure Rust (Cephes polynomials with fused multiply-adds); the same on every platform.
    #[default]
    Avx2,
    /// torch's portable kernel (capability `DEFAULT`, e.g. aarch64 builds): libm `logf`, `cosf`,
    /// `sinf`. Bit-exact only where Rust's `f32::ln/cos/sin` call the same libm as torch (glibc).
    Default,
}

const MT_N: usize = 624;
const MT_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister exactly as `at::mt19937` seeds and steps it.
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; MT_N]>,
    next: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; MT_N]);
        // torch keeps the low 32 bits (`seed & 0xffffffff`).
        state[0] = seed as u32;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Self { state, next: MT_N }
    }

    fn twist(&mut self) {
        let s = &mut self.state;
        for k in 0..MT_N {
            let y = (s[k] & UPPER_MASK) | (s[(k + 1) % MT_N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            s[k] = s[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }
}

/// PyTorch's CPU generator: same seed, same stream, same `torch.randn` values (float32).
///
/// ```
/// use nijigen::sampling::rng::TorchGenerator;
/// // torch.randn(3, generator=torch.Generator().manual_seed(0))
/// let v = TorchGenerator::new(0).randn(3);
/// assert_eq!(v, [1.5409961, -0.2934289, -2.1787894]);
/// ```
#[derive(Clone)]
pub struct TorchGenerator {
    engine: Mt19937,
    seed: u64,
    kernel: NormalKernel,
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("kernel", &self.kernel)
            .field("position", &self.engine.next)
            .field("cached_normal", &self.next_double_normal)
            .finish()
    }
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)` (equivalently the global generator after
    /// `torch.manual_seed(seed)`), reproducing the AVX2 normal kernel.
    pub fn new(seed: u64) -> Self {
        Self::with_kernel(seed, NormalKernel::Avx2)
    }

    /// Like [`TorchGenerator::new`], reproducing the chosen `normal_fill` kernel.
    pub fn with_kernel(seed: u64, kernel: NormalKernel) -> Self {
        Self {
            engine: Mt19937::new(seed),
            seed,
            kernel,
            next_double_normal: None,
        }
    }

    /// Re-seeds the generator (`manual_seed`): resets the engine and the cached normal.
    pub fn manual_seed(&mut self, seed: u64) {
        *self = Self::with_kernel(seed, self.kernel);
    }

    /// The seed given at construction (`initial_seed()`); only its low 32 bits matter.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// The normal kernel this generator reproduces.
    pub fn kernel(&self) -> NormalKernel {
        self.kernel
    }

    /// One 32-bit draw (`random()`).
    pub fn random_u32(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Two 32-bit draws, the first in the high half (`random64()`).
    pub fn random_u64(&mut self) -> u64 {
        let hi = u64::from(self.engine.next_u32());
        let lo = u64::from(self.engine.next_u32());
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw, times 2^-24.
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()`, times 2^-53.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `torch.randn(n, generator=g)` (float32, any contiguous shape with `n` elements).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; n];
        self.fill_randn(&mut out);
        out
    }

    /// Fills `out` like `torch.randn(out.len(), generator=g)` (or `normal_()` on a contiguous
    /// float32 tensor of that many elements).
    pub fn fill_randn(&mut self, out: &mut [f32]) {
        if out.len() >= 16 {
            self.normal_fill(out);
        } else {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
        }
    }

    /// One `normal_distribution<double>(0, 1)` draw, with torch's Box-Muller cache.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached * 1.0 + 0.0;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() * 1.0 + 0.0
    }

    /// torch's `normal_fill` for 16 or more float32 values.
    fn normal_fill(&mut self, data: &mut [f32]) {
        let n = data.len();
        debug_assert!(n >= 16);
        for v in data.iter_mut() {
            *v = self.uniform_f32();
        }
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block, self.kernel);
        }
        if n % 16 != 0 {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail, self.kernel);
        }
    }
}

/// The float32 Box-Muller transform of one block of 16 uniforms, in place (mean 0, std 1).
fn box_muller_16(block: &mut [f32], kernel: NormalKernel) {
    let (first, second) = block.split_at_mut(8);
    for (a, b) in first.iter_mut().zip(second.iter_mut()) {
        let u1 = 1.0 - *a;
        let u2 = *b;
        let (cos, sin) = match kernel {
            NormalKernel::Avx2 => {
                let radius = (-2.0f32 * cephes_log(u1)).sqrt();
                let theta = TWO_PI_F32 * u2;
                let (s, c) = cephes_sincos(theta);
                (radius * c, radius * s)
            }
            NormalKernel::Default => {
                let radius = (-2.0f32 * u1.ln()).sqrt();
                // `2.0f * c10::pi<double> * u2` is evaluated in double, then stored as float.
                let theta = (2.0 * std::f64::consts::PI * f64::from(u2)) as f32;
                (radius * theta.cos(), radius * theta.sin())
            }
        };
        // `fma(n, std, mean)` with std = 1, mean = 0 (turns -0.0 into +0.0, like torch).
        *a = cos.mul_add(1.0, 0.0);
        *b = sin.mul_add(1.0, 0.0);
    }
}

// Constants of avx_mathfun.h: C double literals stored as float.
const TWO_PI_F32: f32 = (2.0 * std::f64::consts::PI) as f32;
const MIN_NORM_POS: u32 = 0x0080_0000;
// 0.707106781186547524 in the C source: the same double as FRAC_1_SQRT_2.
const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.037_683_629_2E-2_f64 as f32,
    -1.151_461_031_0E-1_f64 as f32,
    1.167_699_874_0E-1_f64 as f32,
    -1.242_014_084_6E-1_f64 as f32,
    1.424_932_278_7E-1_f64 as f32,
    -1.666_805_766_5E-1_f64 as f32,
    2.000_071_476_5E-1_f64 as f32,
    -2.499_999_399_3E-1_f64 as f32,
    3.333_333_117_4E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.121_944_40e-4_f64 as f32;
const LOG_Q2: f32 = 0.693_359_375_f64 as f32;
const MINUS_DP1: f32 = -0.785_156_25_f64 as f32;
#[allow(clippy::excessive_precision)] // verbatim from avx_mathfun.h
const MINUS_DP2: f32 = -2.418_756_484_985_351_562_5e-4_f64 as f32;
#[allow(clippy::excessive_precision)] // verbatim from avx_mathfun.h
const MINUS_DP3: f32 = -3.774_894_977_445_941_08e-8_f64 as f32;
const SINCOF: [f32; 3] = [
    -1.951_529_589_1E-4_f64 as f32,
    8.332_160_873_6E-3_f64 as f32,
    -1.666_665_461_1E-1_f64 as f32,
];
const COSCOF: [f32; 3] = [
    2.443_315_711_809_948E-5_f64 as f32,
    -1.388_731_625_493_765E-3_f64 as f32,
    4.166_664_568_298_827E-2_f64 as f32,
];
const FOPI: f32 = 1.273_239_544_735_16_f64 as f32;

/// `log256_ps` of avx_mathfun.h for one lane, with the multiply-adds torch's build fuses.
fn cephes_log(x: f32) -> f32 {
    let invalid = x <= 0.0;
    // `_mm256_max_ps(x, min_norm_pos)`: cut off denormals (and NaN, like maxps).
    let x = if x > f32::from_bits(MIN_NORM_POS) {
        x
    } else {
        f32::from_bits(MIN_NORM_POS)
    };
    let xb = x.to_bits();
    let imm0 = (xb >> 23) as i32 - 0x7f;
    let mut x = f32::from_bits((xb & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = imm0 as f32 + 1.0;
    let mask = x < SQRTHF;
    let tmp = if mask { x } else { 0.0 };
    x -= 1.0;
    e -= if mask { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * LOG_Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    x = e.mul_add(LOG_Q2, x);
    if invalid {
        // `_mm256_or_ps(x, invalid_mask)`: all bits set, a NaN.
        f32::from_bits(u32::MAX)
    } else {
        x
    }
}

/// `sincos256_ps` of avx_mathfun.h for one lane (returns `(sin, cos)`), with the fused
/// multiply-adds of torch's build.
fn cephes_sincos(x: f32) -> (f32, f32) {
    let sign_in = x.to_bits() & 0x8000_0000;
    let mut x = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let y = x * FOPI;
    // `_mm256_cvttps_epi32`: truncation, 0x80000000 when out of range.
    let j = if y.is_finite() && y.abs() < 2_147_483_648.0 {
        y as i32
    } else {
        i32::MIN
    };
    let j = j.wrapping_add(1) & !1;
    let yf = j as f32;
    let swap_sign_sin = ((j & 4) as u32) << 29;
    let poly_mask = (j & 2) == 0;
    x = yf.mul_add(MINUS_DP1, x);
    x = yf.mul_add(MINUS_DP2, x);
    x = yf.mul_add(MINUS_DP3, x);
    let j4 = j.wrapping_sub(2);
    let sign_cos = ((!j4 & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sign_sin;

    let z = x * x;
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;

    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Select the polynomial per lane exactly as the vector code does (and/andnot, then adds).
    let ysin2 = if poly_mask { ys } else { 0.0 };
    let ysin1 = if poly_mask { 0.0 } else { yc };
    let y2 = ys - ysin2;
    let yy = yc - ysin1;
    let s = ysin1 + ysin2;
    let c = yy + y2;
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

/// The initial noise ComfyUI draws for a latent of `len` values:
/// `torch.randn(shape, generator=torch.manual_seed(seed))` on the CPU (`comfy.sample.prepare_noise`).
pub fn comfy_initial_noise(seed: u64, len: usize) -> Vec<f32> {
    TorchGenerator::new(seed).randn(len)
}

/// The generator behind ComfyUI's `default_noise_sampler` (ancestral and SDE-free stochastic
/// samplers: euler_ancestral, lcm, ...) when the latent lives on the CPU: a fresh
/// `torch.Generator` seeded with `seed + 1`, drawing `torch.randn(x.size())` per call. (With the
/// latent on a CUDA device ComfyUI seeds a CUDA Philox generator with `seed` instead; that
/// stream is not reproduced here.)
pub fn comfy_sampler_noise(seed: u64) -> TorchGenerator {
    TorchGenerator::new(seed.wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_sequence() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995.
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn only_the_low_32_bits_of_the_seed_matter() {
        let a = TorchGenerator::new(7).randn(40);
        let b = TorchGenerator::new((1u64 << 32) + 7).randn(40);
        assert_eq!(a, b);
    }

    #[test]
    fn known_values_seed_0() {
        // torch.randn(3, generator=torch.Generator().manual_seed(0)) (scalar path).
        let v = TorchGenerator::new(0).randn(3);
        assert_eq!(v, [1.540_996_1, -0.293_428_9, -2.178_789_4]);
    }

    #[test]
    fn cephes_functions_are_accurate() {
        for i in 1..2000 {
            let x = i as f32 / 2000.0;
            assert!((cephes_log(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0));
            let t = x * TWO_PI_F32;
            let (s, c) = cephes_sincos(t);
            assert!(
                (s - t.sin()).abs() < 3e-7 && (c - t.cos()).abs() < 3e-7,
                "{t}"
            );
        }
        assert!(cephes_log(0.0).is_nan());
    }

    #[test]
    fn reseeding_clears_the_cache() {
        let mut g = TorchGenerator::new(3);
        let first = g.randn(3);
        g.manual_seed(3);
        assert_eq!(g.randn(3), first);
    }

    #[test]
    fn statistics_look_normal() {
        let v = TorchGenerator::new(11).randn(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.01, "{var}");
    }
}
