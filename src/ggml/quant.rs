//! Quantization and dequantization of rows through ggml's own kernels.

use ggml_sys as sys;

use super::{GgmlError, GgmlType};

/// Whether ggml can quantize to `ty` without an importance matrix.
pub fn can_quantize(ty: GgmlType) -> bool {
    if !ty.is_quantized() {
        return matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    }
    if matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K) {
        return false; // activation-only formats
    }
    // SAFETY: plain query of ggml's type table.
    !unsafe { sys::ggml_quantize_requires_imatrix(ty as sys::ggml_type) }
}

/// Quantizes `src` (rows of `n_per_row` values) into `dst`, which must hold exactly the bytes
/// of `src.len()` values of `ty`. Returns the bytes written.
pub fn quantize(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    dst: &mut [u8],
) -> Result<usize, GgmlError> {
    if !can_quantize(ty) {
        return Err(GgmlError::Unsupported(format!(
            "quantizing to {ty} (needs an importance matrix or is not a storage type)"
        )));
    }
    if n_per_row == 0 || src.len() % n_per_row != 0 || n_per_row as u64 % ty.block_size() != 0 {
        return Err(GgmlError::Unsupported(format!(
            "{ty}: rows of {n_per_row} values are not a multiple of the block size {}",
            ty.block_size()
        )));
    }
    let need = ty.bytes_for(src.len() as u64).unwrap_or(u64::MAX);
    if dst.len() as u64 != need {
        return Err(GgmlError::Backend(format!(
            "quantize: {} bytes for {need}",
            dst.len()
        )));
    }
    if ty == GgmlType::F32 {
        for (d, v) in dst.chunks_exact_mut(4).zip(src) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        return Ok(dst.len());
    }
    let nrows = (src.len() / n_per_row) as i64;
    // SAFETY: src holds nrows*n_per_row floats, dst holds exactly the quantized size (checked);
    // imatrix may be null for types that do not require it (checked by can_quantize).
    let written = unsafe {
        sys::ggml_quantize_chunk(
            ty as sys::ggml_type,
            src.as_ptr(),
            dst.as_mut_ptr() as *mut _,
            0,
            nrows,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    Ok(written)
}

/// Converts `src` (whole blocks of `ty`) to f32 values in `dst`.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgmlError> {
    let need = ty.bytes_for(dst.len() as u64);
    if need != Some(src.len() as u64) {
        return Err(GgmlError::Backend(format!(
            "dequantize {ty}: {} bytes do not hold {} values",
            src.len(),
            dst.len()
        )));
    }
    if ty == GgmlType::F32 {
        for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        return Ok(());
    }
    // SAFETY: type table lookup for a valid type id.
    let traits = unsafe { &*sys::ggml_get_type_traits(ty as sys::ggml_type) };
    let Some(to_float) = traits.to_float else {
        return Err(GgmlError::Unsupported(format!("converting {ty} to f32")));
    };
    // SAFETY: src holds exactly dst.len() values of ty (checked); to_float writes dst.len() f32.
    unsafe { to_float(src.as_ptr() as *const _, dst.as_mut_ptr(), dst.len() as i64) };
    Ok(())
}
