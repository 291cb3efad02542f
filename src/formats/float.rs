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
        DType::Ggml(_) => None,
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
        DType::Ggml(_) => {
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

/// Converts `src` into little-endian `dtype` values in `out` (F32, F16, BF16); `out.len()` must be
/// exactly `src.len()` x the element size.
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
        let e = from_f32(DType::F8E4M3, &[1.0; 7], &mut b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot convert f8_e4m3 from f32 element by element"
        );
        assert!(to_f32(DType::F32, &[], &mut []).is_ok());
    }
}
