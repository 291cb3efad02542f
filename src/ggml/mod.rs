//! Safe layer over ggml-sys. This is the only module that calls ggml: every `unsafe` block in
//! the crate lives here, each with a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod mmap;
mod types;

use std::ffi::CStr;

pub use mmap::map_file;
pub use types::GgmlType;

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
