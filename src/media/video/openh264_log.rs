//! OpenH264's log, routed to `tracing` through its C trace callback. The crate denies unsafe
//! code outside `ggml`; this small FFI callback is the other exception, each `unsafe` with its
//! `// SAFETY:` comment.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

use openh264::encoder::Encoder;

/// Sends OpenH264's log lines to `tracing` (debug) instead of stderr, its default.
///
/// The encoder initialises on the first frame and warns then, at its default level, that our
/// settings (quality mode with frame skipping off) leave the bit rate uncontrolled, which is
/// intended: the QP is pinned. The `openh264` crate quiets the log only after that
/// initialisation. Only the log's destination changes; the encoded stream does not.
pub(super) fn log_to_tracing(encoder: &mut Encoder) {
    let callback: openh264_sys2::WelsTraceCallback = Some(openh264_log);
    // SAFETY: ENCODER_OPTION_TRACE_CALLBACK is accepted before initialisation; OpenH264 reads
    // the function pointer from `pOption` during the call (`*(WelsTraceCallback*)pOption`)
    // and keeps only the pointer's value, a plain function that needs no context.
    let rc = unsafe {
        encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_CALLBACK,
            (&raw const callback).cast_mut().cast::<c_void>(),
        )
    };
    if rc != 0 {
        tracing::debug!(
            rc,
            "OpenH264 refused the log callback; its messages go to stderr"
        );
    }
}

/// OpenH264's `WelsTraceCallback`: one formatted line at `level` (1 error, 2 warning, 4 info,
/// ...).
unsafe extern "C" fn openh264_log(_ctx: *mut c_void, level: c_int, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: OpenH264 passes a NUL-terminated buffer that lives for the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    tracing::debug!(level, "{}", text.trim_end());
}
