//! Plain-Rust element conversions between stored types and f32 (no ggml).
//!
//! Bytes are little-endian and need no alignment (tensor data in a safetensors map usually is not
//! 4-byte aligned). Lengths are checked up front: a mismatch is an error, never a panic.
//! Conversions run in fixed-size chunks on the stack without allocating; parallelism (rayon) is
//! left to callers, who can split `bytes`/`out` at element boundaries.
//!
//! Semantics follow PyTorch:
//! - `F8E4M3` is `torch.float8_e4m3fn`: bias 7, no infinities, 0x7f/0xff are NaN, max 448,
//!   subnormals down to 2^-9.
//! - `F8E5M2` is `torch.float8_e5m2`: bias 15, IEEE-like infinities and NaNs, subnormals down to
//!   2^-16 (it is the top byte of an IEEE f16).
//! - f32 to bf16 rounds to nearest, ties to even; every NaN becomes 0x7fc0 (as `c10::BFloat16`).
//! - f32 to f16 is IEEE round to nearest even, overflow to infinity (the `half` crate).
//! - Integers become the nearest f32 (`as f32`).

use half::{bf16, f16, slice::HalfFloatSliceExt};

use super::{DType, GgmlType};

/// Why a conversion could not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FloatError {
    #[error("{dtype} data is {bytes} bytes, expected {expected} for {count} values")]
    Length {
        dtype: DType,
        bytes: usize,
        /// `usize::MAX` when `count` x element size overflows.
        expected: usize,
        count: usize,
    },
    #[error("cannot convert {dtype} {direction} f32 element by element")]
    Unsupported {
        dtype: DType,
        /// "to" or "from".
        direction: &'static str,
    },
}

/// Bytes per element of a plain (non-block) type that [`to_f32`] understands.
pub fn elem_size(dtype: DType) -> Option<usize> {
    match dtype {
        DType::F8E4M3 | DType::F8E5M2 | DType::Ggml(GgmlType::I8) => Some(1),
        DType::Ggml(GgmlType::F16 | GgmlType::BF16 | GgmlType::I16) => Some(2),
        DType::Ggml(GgmlType::F32 | GgmlType::I32) => Some(4),
        DType::Ggml(GgmlType::F64 | GgmlType::I64) => Some(8),
        DType::Ggml(_) | DType::U8 => None,
    }
}

/// Elements per stack chunk for the f16/bf16 slice conversions.
const CHUNK: usize = 512;

fn check_len(dtype: DType, size: usize, bytes: usize, count: usize) -> Result<(), FloatError> {
    match count.checked_mul(size) {
        Some(expected) if expected == bytes => Ok(()),
        expected => Err(FloatError::Length {
            dtype,
            bytes,
            expected: expected.unwrap_or(usize::MAX),
            count,
        }),
    }
}

/// Converts `bytes` (little-endian values of `dtype`) into `out`; `bytes.len()` must be exactly
/// `out.len()` x the element size.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), FloatError> {
    let Some(size) = elem_size(dtype) else {
        return Err(FloatError::Unsupported {
            dtype,
            direction: "to",
        });
    };
    check_len(dtype, size, bytes.len(), out.len())?;
    match dtype {
        DType::F8E4M3 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f8e4m3_to_f32(b);
            }
        }
        DType::F8E5M2 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f8e5m2_to_f32(b);
            }
        }
        DType::Ggml(GgmlType::F32) => map::<4>(bytes, out, f32::from_le_bytes),
        DType::Ggml(GgmlType::F64) => map::<8>(bytes, out, |a| f64::from_le_bytes(a) as f32),
        DType::Ggml(GgmlType::BF16) => map::<2>(bytes, out, |a| {
            f32::from_bits((u16::from_le_bytes(a) as u32) << 16)
        }),
        DType::Ggml(GgmlType::F16) => {
            let mut buf = [f16::ZERO; CHUNK];
            for (o, c) in out.chunks_mut(CHUNK).zip(bytes.chunks(CHUNK * 2)) {
                let n = o.len();
                for (h, p) in buf.iter_mut().zip(c.chunks_exact(2)) {
                    *h = f16::from_bits(u16::from_le_bytes([p[0], p[1]]));
                }
                buf[..n].convert_to_f32_slice(o);
            }
        }
        DType::Ggml(GgmlType::I8) => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = b as i8 as f32;
            }
        }
        DType::Ggml(GgmlType::I16) => map::<2>(bytes, out, |a| i16::from_le_bytes(a) as f32),
        DType::Ggml(GgmlType::I32) => map::<4>(bytes, out, |a| i32::from_le_bytes(a) as f32),
        DType::Ggml(GgmlType::I64) => map::<8>(bytes, out, |a| i64::from_le_bytes(a) as f32),
        // elem_size() returned Some only for the types above.
        DType::Ggml(_) | DType::U8 => {
            return Err(FloatError::Unsupported {
                dtype,
                direction: "to",
            })
        }
    }
    Ok(())
}

/// [`to_f32`] into a new vector; `bytes.len()` must be a whole number of elements.
pub fn to_f32_vec(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>, FloatError> {
    let Some(size) = elem_size(dtype) else {
        return Err(FloatError::Unsupported {
            dtype,
            direction: "to",
        });
    };
    let mut out = vec![0.0; bytes.len() / size];
    to_f32(dtype, bytes, &mut out)?;
    Ok(out)
}

/// Converts `src` into little-endian `dtype` values in `out` (F32, F16, BF16, F8_E4M3); `out.len()`
/// must be exactly `src.len()` x the element size.
pub fn from_f32(dtype: DType, src: &[f32], out: &mut [u8]) -> Result<(), FloatError> {
    let unsupported = FloatError::Unsupported {
        dtype,
        direction: "from",
    };
    match dtype {
        DType::Ggml(GgmlType::F32) => {
            check_len(dtype, 4, out.len(), src.len())?;
            for (o, &v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::Ggml(GgmlType::F16) => {
            check_len(dtype, 2, out.len(), src.len())?;
            let mut buf = [f16::ZERO; CHUNK];
            for (s, o) in src.chunks(CHUNK).zip(out.chunks_mut(CHUNK * 2)) {
                let h = &mut buf[..s.len()];
                h.convert_from_f32_slice(s);
                for (p, v) in o.chunks_exact_mut(2).zip(h.iter()) {
                    p.copy_from_slice(&v.to_bits().to_le_bytes());
                }
            }
        }
        DType::Ggml(GgmlType::BF16) => {
            check_len(dtype, 2, out.len(), src.len())?;
            for (o, &v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&f32_to_bf16_bits(v).to_le_bytes());
            }
        }
        DType::F8E4M3 => {
            check_len(dtype, 1, out.len(), src.len())?;
            for (o, &v) in out.iter_mut().zip(src) {
                *o = f32_to_f8e4m3_bits(v);
            }
        }
        _ => return Err(unsupported),
    }
    Ok(())
}

fn map<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(N)) {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        *o = f(a);
    }
}

/// f32 to bf16 bits, round to nearest even; NaN becomes 0x7fc0 (PyTorch's `c10::BFloat16`).
#[inline]
pub fn f32_to_bf16_bits(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let u = v.to_bits();
    let bias = ((u >> 16) & 1) + 0x7fff;
    (u.wrapping_add(bias) >> 16) as u16
}

/// f32 to float8 e4m3fn as PyTorch (2.x, CPU) converts with `.to(torch.float8_e4m3fn)`: round to
/// nearest even, saturating: every magnitude past 448 (the largest finite value), infinities
/// included, becomes 448; NaN becomes 0x7f; subnormals below 2^-6.
#[inline]
pub fn f32_to_f8e4m3_bits(v: f32) -> u8 {
    const DENORM: u32 = 141 << 23;
    let mut bits = v.to_bits();
    let sign = (bits >> 24) as u8 & 0x80;
    bits &= 0x7fff_ffff;
    let r = if bits > 0x7f80_0000 {
        0x7f
    } else if bits >= 0x43e8_0000 {
        // From 464 up (464 itself ties to the even 448): saturate.
        0x7e
    } else if bits < (121 << 23) {
        // Below the smallest normal (2^-6): the f32 adder rounds into the subnormal grid.
        let b = (f32::from_bits(bits) + f32::from_bits(DENORM)).to_bits();
        b.wrapping_sub(DENORM) as u8
    } else {
        // Rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits to even.
        let odd = (bits >> 20) & 1;
        let b = bits - (120 << 23) + 0x7FFFF + odd;
        (b >> 20) as u8
    };
    r | sign
}

/// bf16 bits to f32 (exact).
#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    bf16::from_bits(b).to_f32()
}

/// float8 e4m3fn byte to f32 (exact).
#[inline]
pub fn f8e4m3_to_f32(b: u8) -> f32 {
    f32::from_bits(E4M3_TABLE[b as usize])
}

/// float8 e5m2 byte to f32 (exact).
#[inline]
pub fn f8e5m2_to_f32(b: u8) -> f32 {
    f32::from_bits(E5M2_TABLE[b as usize])
}

static E4M3_TABLE: [u32; 256] = f8_table(4, 3, true);
static E5M2_TABLE: [u32; 256] = f8_table(5, 2, false);

/// f32 bits of every float8 byte with `ebits` exponent and `mbits` mantissa bits. `finite`
/// selects the "fn" variant: no infinities, only all-ones exponent and mantissa is NaN.
const fn f8_table(ebits: u32, mbits: u32, finite: bool) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f8_bits(i as u32, ebits, mbits, finite);
        i += 1;
    }
    t
}

const fn f8_bits(b: u32, ebits: u32, mbits: u32, finite: bool) -> u32 {
    let sign = (b >> 7) << 31;
    let emask = (1 << ebits) - 1;
    let mmask = (1 << mbits) - 1;
    let e = (b >> mbits) & emask;
    let m = b & mmask;
    let bias = (1 << (ebits - 1)) - 1;
    if e == emask {
        if finite {
            if m == mmask {
                return sign | 0x7fc0_0000;
            }
        } else if m == 0 {
            return sign | 0x7f80_0000;
        } else {
            return sign | 0x7fc0_0000;
        }
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // m x 2^(1 - bias - mbits), normalised: p is the top set bit of m.
        let p = 31 - m.leading_zeros();
        let exp = (p + 1 + 127) - bias - mbits;
        return sign | (exp << 23) | ((m - (1 << p)) << (23 - p));
    }
    sign | ((e + 127 - bias) << 23) | (m << (23 - mbits))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLES: &str = include_str!("../../tests/fixtures/safetensors/float_tables.json");

    fn tables() -> serde_json::Value {
        serde_json::from_str(TABLES).expect("float_tables.json parses")
    }

    fn u32_list(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("int") as u32)
            .collect()
    }

    fn same_f32(a: f32, b: f32) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }

    fn check_f8(key: &str, dtype: DType) {
        let want = u32_list(&tables()[key]);
        assert_eq!(want.len(), 256);
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = vec![0f32; 256];
        to_f32(dtype, &bytes, &mut out).unwrap();
        for (i, (&w, &g)) in want.iter().zip(&out).enumerate() {
            let w = f32::from_bits(w);
            assert!(
                same_f32(w, g),
                "{key} byte {i:#04x}: torch {w:e}, ours {g:e}"
            );
        }
    }

    #[test]
    fn f8_e4m3_all_bytes_match_torch() {
        check_f8("f8_e4m3fn", DType::F8E4M3);
        assert_eq!(f8e4m3_to_f32(0x7e), 448.0);
        assert!(f8e4m3_to_f32(0x7f).is_nan() && f8e4m3_to_f32(0xff).is_nan());
        assert_eq!(f8e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn f8_e5m2_all_bytes_match_torch() {
        check_f8("f8_e5m2", DType::F8E5M2);
        assert_eq!(f8e5m2_to_f32(0x7c), f32::INFINITY);
        assert_eq!(f8e5m2_to_f32(0xfc), f32::NEG_INFINITY);
        assert!(f8e5m2_to_f32(0x7d).is_nan());
        assert_eq!(f8e5m2_to_f32(0x01), 2f32.powi(-16));
        // e5m2 is the top byte of an f16.
        for b in 0..=255u8 {
            let h = f16::from_bits((b as u16) << 8).to_f32();
            assert!(same_f32(h, f8e5m2_to_f32(b)), "byte {b:#04x}");
        }
    }

    fn check_rounding(key: &str, dtype: DType) {
        let t = tables();
        let cases = t[key].as_array().expect("array");
        assert!(cases.len() > 20, "{key}: too few cases");
        let src: Vec<f32> = cases
            .iter()
            .map(|c| f32::from_bits(c[0].as_u64().unwrap() as u32))
            .collect();
        let mut out = vec![0u8; src.len() * 2];
        from_f32(dtype, &src, &mut out).unwrap();
        for (i, c) in cases.iter().enumerate() {
            let want = c[1].as_u64().unwrap() as u16;
            let got = u16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
            let nan = |b: u16| match dtype {
                DType::Ggml(GgmlType::BF16) => bf16::from_bits(b).is_nan(),
                _ => f16::from_bits(b).is_nan(),
            };
            assert!(
                got == want || (nan(got) && nan(want)),
                "{key}: {:e} ({:#010x}): torch {want:#06x}, ours {got:#06x}",
                src[i],
                src[i].to_bits()
            );
        }
    }

    #[test]
    fn bf16_rounding_matches_torch() {
        check_rounding("bf16_rounding", DType::BF16);
        // Ties to even, both directions.
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(f32::NAN), 0x7fc0);
        assert_eq!(f32_to_bf16_bits(f32::INFINITY), 0x7f80);
        // Rounding up past the largest finite bf16 gives infinity.
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
    }

    #[test]
    fn f16_rounding_matches_torch() {
        check_rounding("f16_rounding", DType::F16);
    }

    #[test]
    fn round_trips_are_exact() {
        let src: Vec<f32> = (0..2000).map(|i| (i as f32 - 1000.0) * 0.37).collect();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let size = elem_size(dtype).unwrap();
            let mut bytes = vec![0u8; src.len() * size];
            from_f32(dtype, &src, &mut bytes).unwrap();
            let once = to_f32_vec(dtype, &bytes).unwrap();
            let mut again = vec![0u8; src.len() * size];
            from_f32(dtype, &once, &mut again).unwrap();
            assert_eq!(bytes, again, "{dtype}");
            if dtype == DType::F32 {
                assert_eq!(once, src);
            }
        }
    }

    #[test]
    fn f16_chunks_match_scalar_and_accept_unaligned_bytes() {
        // 1500 values crosses several CHUNK boundaries; start at an odd address.
        let vals: Vec<u16> = (0..1500u32).map(|i| (i * 43 + 7) as u16).collect();
        let mut bytes = vec![0u8];
        for v in &vals {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let got = to_f32_vec(DType::F16, &bytes[1..]).unwrap();
        for (v, g) in vals.iter().zip(&got) {
            assert!(same_f32(f16::from_bits(*v).to_f32(), *g), "{v:#06x}");
        }
    }

    #[test]
    fn integers_and_f64() {
        let b: Vec<u8> = [-128i8, -1, 0, 127].iter().map(|&v| v as u8).collect();
        assert_eq!(
            to_f32_vec(DType::Ggml(GgmlType::I8), &b).unwrap(),
            [-128.0, -1.0, 0.0, 127.0]
        );
        let b: Vec<u8> = [-32768i16, 1234]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            to_f32_vec(DType::Ggml(GgmlType::I16), &b).unwrap(),
            [-32768.0, 1234.0]
        );
        let b: Vec<u8> = [i32::MIN, 16_777_217]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            to_f32_vec(DType::Ggml(GgmlType::I32), &b).unwrap(),
            [-2147483648.0, 16_777_216.0]
        );
        let b: Vec<u8> = [i64::MAX, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            to_f32_vec(DType::Ggml(GgmlType::I64), &b).unwrap(),
            [9.223372e18, -3.0]
        );
        let b: Vec<u8> = [0.1f64, -1e300, 1e-50]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            to_f32_vec(DType::Ggml(GgmlType::F64), &b).unwrap(),
            [0.1f32, f32::NEG_INFINITY, 0.0]
        );
    }

    #[test]
    fn length_and_type_errors() {
        let mut out = [0f32; 4];
        let e = to_f32(DType::F16, &[0; 6], &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f16 data is 6 bytes, expected 8 for 4 values"
        );
        assert!(to_f32(DType::F32, &[0; 17], &mut out).is_err());
        assert!(to_f32(DType::F8E4M3, &[0; 4], &mut out).is_ok());
        let e = to_f32(DType::Ggml(GgmlType::Q4_0), &[0; 18], &mut out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot convert q4_0 to f32 element by element"
        );
        let e = to_f32_vec(DType::F32, &[0; 7]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f32 data is 7 bytes, expected 4 for 1 values"
        );
        let mut b = [0u8; 7];
        assert!(from_f32(DType::F16, &[1.0; 4], &mut b).is_err());
        assert!(from_f32(DType::BF16, &[1.0; 4], &mut b).is_err());
        assert!(from_f32(DType::F32, &[1.0; 2], &mut b).is_err());
        assert!(from_f32(DType::F8E4M3, &[1.0; 6], &mut b).is_err());
        let e = from_f32(DType::F8E5M2, &[1.0; 7], &mut b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot convert f8_e5m2 from f32 element by element"
        );
        assert!(to_f32(DType::F32, &[], &mut []).is_ok());
    }

    /// `torch.tensor(v, dtype=float32).to(torch.float8_e4m3fn)` (torch 2.15, CPU) for edge cases
    /// (saturation, the 464 tie, subnormals, NaN, infinities) and 400 random values.
    #[test]
    fn f8e4m3_from_f32_matches_torch() {
        let cases: &[(u32, u8)] = &[
            (0x00000000, 0x00),
            (0x80000000, 0x80),
            (0x3f800000, 0x38),
            (0xbfc00000, 0xbc),
            (0x43e00000, 0x7e),
            (0x43e08000, 0x7e),
            (0x43e7f333, 0x7e),
            (0x43e80000, 0x7e),
            (0x43e80ccd, 0x7e),
            (0x43ef8000, 0x7e),
            (0x43f00000, 0x7e),
            (0x49742400, 0x7e),
            (0x3089705f, 0x00),
            (0x3b000000, 0x01),
            (0x3a800000, 0x00),
            (0x3b400000, 0x02),
            (0x3c900000, 0x09),
            (0x3f100000, 0x31),
            (0x40533333, 0x45),
            (0xc0f8a3d7, 0xd0),
            (0x43700000, 0x77),
            (0x3c800000, 0x08),
            (0x3c600000, 0x07),
            (0x7fc00000, 0x7f),
            (0x7f800000, 0x7e),
            (0x40c92b19, 0x4d),
            (0xc0d35e27, 0xcd),
            (0x420015a4, 0x60),
            (0x40a7d717, 0x4a),
            (0xc1d6448b, 0xdd),
            (0x4190a355, 0x59),
            (0x42826667, 0x68),
            (0x423d6a8c, 0x64),
            (0xc20cbf3e, 0xe1),
            (0xc27d1594, 0xe8),
            (0xc1f94f4e, 0xe0),
            (0x40043e3e, 0x40),
            (0xc2e880ca, 0xef),
            (0xc12f0888, 0xd3),
            (0xc2792ea4, 0xe8),
            (0xc2127417, 0xe1),
            (0xc1d9b41f, 0xde),
            (0xc17d0a46, 0xd8),
            (0x41a4a6f8, 0x5a),
            (0x425080af, 0x65),
            (0xc0cda7cc, 0xcd),
            (0x4288a577, 0x69),
            (0xc20509f8, 0xe0),
            (0x418c9aa2, 0x59),
            (0x4234b1ac, 0x63),
            (0x40966b70, 0x49),
            (0xc214b329, 0xe1),
            (0xc2385857, 0xe4),
            (0xc1b71720, 0xdb),
            (0x413027f6, 0x53),
            (0xc249ec73, 0xe5),
            (0xc1275728, 0xd2),
            (0xc0fec290, 0xd0),
            (0x41d85696, 0x5e),
            (0x412bba30, 0x53),
            (0x418e262a, 0x59),
            (0xc202c406, 0xe0),
            (0xc0cf61bf, 0xcd),
            (0x421ccb8b, 0x62),
            (0x429557d6, 0x69),
            (0xc27bd028, 0xe8),
            (0x42976473, 0x69),
            (0x42869669, 0x68),
            (0x421c4325, 0x62),
            (0x41539083, 0x55),
            (0xc17b2364, 0xd8),
            (0x4291cd54, 0x69),
            (0x42c4069d, 0x6c),
            (0x42b429da, 0x6b),
            (0x428382a8, 0x68),
            (0x418ef3c1, 0x59),
            (0xc271a9ea, 0xe7),
            (0xbe640d37, 0xa6),
            (0x42034b84, 0x60),
            (0xc280d60e, 0xe8),
            (0x419e0c80, 0x5a),
            (0x41abf20b, 0x5b),
            (0x420b3563, 0x61),
            (0xc26cd2d7, 0xe7),
            (0xc204572c, 0xe0),
            (0xc1ae92f8, 0xdb),
            (0xc269f5dc, 0xe7),
            (0x42adefd1, 0x6b),
            (0xc1c65d42, 0xdc),
            (0x4183967d, 0x58),
            (0xc14edba8, 0xd5),
            (0x429e58e8, 0x6a),
            (0x4284093e, 0x68),
            (0x41fd574f, 0x60),
            (0xc2dc59da, 0xee),
            (0x40267e23, 0x42),
            (0x4208bcbc, 0x61),
            (0x4248cad5, 0x65),
            (0xc1f729ae, 0xdf),
            (0x42b6337e, 0x6b),
            (0xc2840b08, 0xe8),
            (0xc2044e3c, 0xe0),
            (0x423b028f, 0x64),
            (0x401cf98a, 0x42),
            (0x42c83d40, 0x6d),
            (0x4116d0bb, 0x51),
            (0xc1fd4713, 0xe0),
            (0xc1970681, 0xd9),
            (0xc25a3aae, 0xe6),
            (0xc27f8939, 0xe8),
            (0x41fc2a23, 0x60),
            (0x41e87761, 0x5f),
            (0x428174b5, 0x68),
            (0xc216ebd1, 0xe1),
            (0x42a8e927, 0x6b),
            (0xc165e901, 0xd6),
            (0x429d70da, 0x6a),
            (0xc1ad1d45, 0xdb),
            (0xc21318bf, 0xe1),
            (0x4147d40b, 0x54),
            (0x424e4a66, 0x65),
            (0x4100cec3, 0x50),
            (0xc1ea3627, 0xdf),
            (0xc2861f3a, 0xe8),
            (0xc28c26eb, 0xe9),
            (0x41c912b9, 0x5d),
            (0x4245f14f, 0x64),
            (0xc1036f88, 0xd0),
            (0xc256df7b, 0xe5),
            (0x422e9bc2, 0x63),
            (0xc2800a16, 0xe8),
            (0xc20e9d16, 0xe1),
            (0x41f8683a, 0x60),
            (0xc2e1039d, 0xee),
            (0x419a8c3f, 0x5a),
            (0xc1e8a806, 0xdf),
            (0x40aed8f7, 0x4b),
            (0xc0723eb1, 0xc7),
            (0x4121b107, 0x52),
            (0x420ad59a, 0x61),
            (0xc217ac88, 0xe1),
            (0x428e1924, 0x69),
            (0x42113801, 0x61),
            (0x4228bf1d, 0x63),
            (0x4268f909, 0x67),
            (0x421d8484, 0x62),
            (0x4228d0d4, 0x63),
            (0x4071e649, 0x47),
            (0xc28ead69, 0xe9),
            (0xc0d81279, 0xce),
            (0xc219e726, 0xe2),
            (0xc28e4630, 0xe9),
            (0x414ec322, 0x55),
            (0xc1e36b77, 0xde),
            (0xc24df5fd, 0xe5),
            (0xc25099a8, 0xe5),
            (0x4156bbd1, 0x55),
            (0x418f7802, 0x59),
            (0x42843ee9, 0x68),
            (0xbf321b96, 0xb3),
            (0x42505e32, 0x65),
            (0x428c39fb, 0x69),
            (0x4266087b, 0x66),
            (0xc2ec87c8, 0xef),
            (0x4275bc9b, 0x67),
            (0x4187d917, 0x58),
            (0x41a98230, 0x5b),
            (0x41947db0, 0x59),
            (0x41991a55, 0x5a),
            (0x417f8808, 0x58),
            (0xc18f90b9, 0xd9),
            (0xc2be29dd, 0xec),
            (0xc0ae4379, 0xcb),
            (0xc220bf12, 0xe2),
            (0x4258085e, 0x66),
            (0xc1670361, 0xd6),
            (0x40858f82, 0x48),
            (0xc229ebd3, 0xe3),
            (0xc1cc3fbe, 0xdd),
            (0xbf139f89, 0xb1),
            (0xc294899b, 0xe9),
            (0x41708c50, 0x57),
            (0xc0a9b732, 0xcb),
            (0xc26d24db, 0xe7),
            (0xc2efd2c3, 0xef),
            (0x41cd388a, 0x5d),
            (0xc16e1136, 0xd7),
            (0xc1d400dd, 0xdd),
            (0xc13cec78, 0xd4),
            (0x42b5a5c9, 0x6b),
            (0xc01f5cf4, 0xc2),
            (0x408a9740, 0x49),
            (0xc294b511, 0xe9),
            (0x42a4bbe1, 0x6a),
            (0x42377f62, 0x63),
            (0x42556311, 0x65),
            (0x40188d80, 0x42),
            (0x423754ba, 0x63),
            (0x419460f5, 0x59),
            (0x41f54690, 0x5f),
            (0xc0f3823c, 0xcf),
            (0xc2936388, 0xe9),
            (0x424dc558, 0x65),
            (0xc2c17ef7, 0xec),
            (0xc13ff308, 0xd4),
            (0xc1239e35, 0xd2),
            (0xc2509270, 0xe5),
            (0x41f53fcf, 0x5f),
            (0xc1204386, 0xd2),
            (0xc1aebf51, 0xdb),
            (0x41cfefcb, 0x5d),
            (0xc1bea1b2, 0xdc),
            (0x428ae5e3, 0x69),
            (0x418c9500, 0x59),
            (0xc1bdbbb3, 0xdc),
            (0xc2c26d2f, 0xec),
            (0xc282c67b, 0xe8),
            (0x42595dbc, 0x66),
            (0xc021eed9, 0xc2),
            (0xc1628003, 0xd6),
            (0x42a4533e, 0x6a),
            (0xc28043d2, 0xe8),
            (0xc1ea435c, 0xdf),
            (0xc1bd08fa, 0xdc),
            (0x41ea88f0, 0x5f),
            (0xbbd96d5e, 0x83),
            (0xbbc90138, 0x83),
            (0xbc837e6c, 0x88),
            (0x3beefe43, 0x04),
            (0x3c0413ef, 0x04),
            (0xbb9c1961, 0x82),
            (0x3ad617ca, 0x01),
            (0xbc53c982, 0x87),
            (0xbb9a9a8e, 0x82),
            (0x3c61c374, 0x07),
            (0x3ab1e7ad, 0x01),
            (0x3cbd43d6, 0x0c),
            (0xbc00f942, 0x84),
            (0x3bbe25c9, 0x03),
            (0xbb00206f, 0x81),
            (0x3bb9683e, 0x03),
            (0xb8973bb1, 0x80),
            (0xbbb7e4b6, 0x83),
            (0xbc0e267c, 0x84),
            (0x3cfb2b73, 0x10),
            (0xba4ac164, 0x80),
            (0xbca53471, 0x8a),
            (0xbbd48890, 0x83),
            (0x3bde2e18, 0x03),
            (0xbba3d7bf, 0x83),
            (0x3c5ee540, 0x07),
            (0x3c243ba1, 0x05),
            (0xbac7ac5d, 0x81),
            (0xbb9abc58, 0x82),
            (0xbc24a069, 0x85),
            (0xbbe55d73, 0x84),
            (0xbc715c19, 0x88),
            (0x3c45540b, 0x06),
            (0x3c824f6a, 0x08),
            (0xbc4dce40, 0x86),
            (0xbc419b60, 0x86),
            (0xbc90e062, 0x89),
            (0xbc1deafa, 0x85),
            (0xbcfe789b, 0x90),
            (0xbc3b26a7, 0x86),
            (0x3c547c93, 0x07),
            (0xbb628a3a, 0x82),
            (0x3c0c03dc, 0x04),
            (0xbba039b3, 0x83),
            (0x3c903bdf, 0x09),
            (0x3b028f3b, 0x01),
            (0xbb7a595a, 0x82),
            (0x3cd11836, 0x0d),
            (0xbb54a558, 0x82),
            (0xbc4815d2, 0x86),
            (0x3b0452e1, 0x01),
            (0xb9cb9b82, 0x80),
            (0x3c2eb4e5, 0x05),
            (0xbc170021, 0x85),
            (0x3c03d846, 0x04),
            (0x3c0bb6dd, 0x04),
            (0xbbdac9ab, 0x83),
            (0x3ad5f799, 0x01),
            (0xbc081c43, 0x84),
            (0x3cc02b29, 0x0c),
            (0xbbe6bb82, 0x84),
            (0xbb9476a4, 0x82),
            (0xbc2ea07d, 0x85),
            (0xbb62d584, 0x82),
            (0xb876755b, 0x80),
            (0x3bfb96d2, 0x04),
            (0xbbc80b55, 0x83),
            (0xbaf37f66, 0x81),
            (0xbc6813df, 0x87),
            (0xbc078fc4, 0x84),
            (0x3ce1c179, 0x0e),
            (0x3c2a98e8, 0x05),
            (0xbc00074d, 0x84),
            (0xbc5b1e82, 0x87),
            (0xbc1fd6e9, 0x85),
            (0xb96371f5, 0x80),
            (0x39b612d9, 0x00),
            (0xbbf3e97e, 0x84),
            (0xbc52cad8, 0x87),
            (0x3c690ae1, 0x07),
            (0x3b94021f, 0x02),
            (0xbb757a16, 0x82),
            (0xbb109ccf, 0x81),
            (0xbbad843c, 0x83),
            (0xbcf08556, 0x8f),
            (0x3a9799ab, 0x01),
            (0xbc2f65e3, 0x85),
            (0xbc2447a1, 0x85),
            (0xbbd1cd1a, 0x83),
            (0x3beff5ec, 0x04),
            (0xbc3fc79f, 0x86),
            (0xbc6afe20, 0x87),
            (0x3bd1aaaf, 0x03),
            (0x3bf7310d, 0x04),
            (0xbc1d1c98, 0x85),
            (0x3bb84956, 0x03),
            (0xbb3f1fce, 0x81),
            (0x3b457470, 0x02),
            (0xbc4e9882, 0x86),
            (0x3c087620, 0x04),
            (0x3c452457, 0x06),
            (0x3bd0c194, 0x03),
            (0x3bb6f4f3, 0x03),
            (0xbd1a832c, 0x92),
            (0x3b2ace6a, 0x01),
            (0xb9856820, 0x80),
            (0xbac0bc49, 0x81),
            (0xbbcea0b7, 0x83),
            (0x3a1122ce, 0x00),
            (0x3b870aea, 0x02),
            (0xbb2ce04f, 0x81),
            (0xbb97d272, 0x82),
            (0x3c497b9d, 0x06),
            (0xbc351a75, 0x86),
            (0x3c28c7d7, 0x05),
            (0x3ae7c06b, 0x01),
            (0xbc03c706, 0x84),
            (0xbb3e0ae4, 0x81),
            (0xbc16bb54, 0x85),
            (0x3bdd3484, 0x03),
            (0x3b64003b, 0x02),
            (0xbbb67373, 0x83),
            (0xbc349663, 0x86),
            (0x3b45bb90, 0x02),
            (0x3c1cdbaa, 0x05),
            (0xba953524, 0x81),
            (0x3b8915f4, 0x02),
            (0xbb766ee3, 0x82),
            (0x3a3120ed, 0x00),
            (0xbb3ee52a, 0x81),
            (0x3b40b416, 0x02),
            (0xbc775c73, 0x88),
            (0x3bd3169e, 0x03),
            (0xbb16b045, 0x81),
            (0x3b6b0473, 0x02),
            (0xbb5f0691, 0x82),
            (0x3b51f3b0, 0x02),
            (0xbc2fba8b, 0x85),
            (0x3c42d4c0, 0x06),
            (0xbc8b8deb, 0x89),
            (0xbc2a44d6, 0x85),
            (0x3b1a7235, 0x01),
            (0x3c6fac0d, 0x07),
            (0x3b3645da, 0x01),
            (0xbb227823, 0x81),
            (0xbc697c9d, 0x87),
            (0xbafab5cc, 0x81),
            (0xb9506cf2, 0x80),
            (0x3c8a7dcb, 0x09),
            (0x3bcbdba5, 0x03),
            (0xbc7a86ce, 0x88),
            (0x3ca608a3, 0x0a),
            (0xbb816fd4, 0x82),
            (0xbc101737, 0x85),
            (0x3c71a28c, 0x08),
            (0xba026e87, 0x80),
            (0xbb70c7ed, 0x82),
            (0x3b0f6233, 0x01),
            (0x3c0a6d34, 0x04),
            (0x3c22bf8a, 0x05),
            (0xbc61502b, 0x87),
            (0x3ca3b732, 0x0a),
            (0x3c1b2241, 0x05),
            (0xbb788362, 0x82),
            (0xbc062115, 0x84),
            (0xbc1ec354, 0x85),
            (0x3aa1b6ef, 0x01),
            (0xbbd4578c, 0x83),
            (0xbbfaa247, 0x84),
            (0x3c04ea7a, 0x04),
            (0x3b6eec40, 0x02),
            (0xbb814b09, 0x82),
            (0x3bf09927, 0x04),
            (0x3c600804, 0x07),
            (0xbc335281, 0x86),
            (0xbbc5afcb, 0x83),
            (0x3c1a706d, 0x05),
            (0x3beb951b, 0x04),
            (0x3b1491c2, 0x01),
            (0x3c3e737a, 0x06),
            (0xbc324ae8, 0x86),
            (0xbc72578a, 0x88),
            (0xbc0df7f4, 0x84),
            (0x3aa09efa, 0x01),
            (0xbc026e4d, 0x84),
            (0xbb9fa6d2, 0x82),
            (0xbc1fbe78, 0x85),
            (0xbbcb4d5e, 0x83),
            (0xbc249fd5, 0x85),
            (0x3b70d299, 0x02),
            (0x3c023c26, 0x04),
            (0xbb9d6eba, 0x82),
            (0xbb07d56e, 0x81),
            (0xbbbe648b, 0x83),
            (0x3bae1495, 0x03),
            (0x3a69747f, 0x00),
            (0x3c8297e5, 0x08),
            (0xbc337b6d, 0x86),
            (0x3b6d91d4, 0x02),
            (0x3b917cb3, 0x02),
        ];
        for &(bits, want) in cases {
            let v = f32::from_bits(bits);
            assert_eq!(f32_to_f8e4m3_bits(v), want, "{v} ({bits:#x})");
        }
    }
}
