//! Safe layer over ggml-sys. This is the only module that calls ggml: every `unsafe` block in
//! the crate lives here, each with a `// SAFETY:` comment, apart from the OpenH264 log callback
//! in `media::video::openh264_log`.
//!
//! Shapes in this module are ggml's `ne` (innermost first).
#![allow(unsafe_code)]

mod backend;
mod context;
mod mmap;
mod quant;
mod tensor_set;
mod types;

#[cfg(test)]
mod tests;

use std::ffi::CStr;

pub use backend::{
    devices, init, tensor_get, tensor_get_f32, tensor_set, tensor_set_f32, AllocMeter, Backend,
    Buffer, Device, DeviceKind, GraphAllocator, Upload, CPU_BUFFER_ALIGNMENT,
};
pub use context::{Context, Graph, Tensor, MAX_DIMS};
pub use mmap::{map_file, release_pages};
pub use quant::{can_quantize, dequantize, quantize};
pub use tensor_set::{Fill, TensorSet};
pub use types::GgmlType;

/// Errors from the ggml layer.
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    #[error("out of memory allocating {what} ({bytes} bytes)")]
    OutOfMemory { what: &'static str, bytes: usize },
    #[error("{0}")]
    Backend(String),
    #[error("graph compute failed (ggml status {0})")]
    Compute(i32),
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An allocation a check refused (an [`AllocMeter`], e.g. the runtime's memory budget);
    /// the check's own error stays reachable as the source, with its type.
    #[error("{0}")]
    Refused(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// ggml's own (block size, type size, name, is_quantized) for `t`.
pub fn type_traits(t: GgmlType) -> (u64, u64, &'static str, bool) {
    let id = t as ggml_sys::ggml_type;
    // SAFETY: `id` is a valid ggml_type (our enum only holds ids ggml defines); these functions
    // only read ggml's static type table, and the name is a static C string.
    unsafe {
        let name = CStr::from_ptr(ggml_sys::ggml_type_name(id));
        (
            ggml_sys::ggml_blck_size(id) as u64,
            ggml_sys::ggml_type_size(id) as u64,
            name.to_str().unwrap_or("?"),
            ggml_sys::ggml_is_quantized(id),
        )
    }
}

/// GGML_TYPE_COUNT of the linked ggml.
pub fn type_count() -> u32 {
    ggml_sys::GGML_TYPE_COUNT
}
pub use context::{GraphSet, GraphSetParts, OwnedGraph};
