//! Still-image media: PNG output with A1111-style `parameters` metadata, image loading for
//! img2img / I2V, resizing, and safe output naming (temp file + rename).
//!
//! Video (MP4/H.264, GIF, WebP, PNG frame folders) is in [`video`], its MP4 muxer in [`mp4`].
//!
//! This module knows no networks: it moves RGB8 pixels and strings between memory and files.

pub mod image;
pub mod mp4;
pub mod output;
pub mod params;
pub mod png;
pub mod video;

use std::path::PathBuf;

pub use params::{GenerationParams, LoraRef};

/// Errors from media I/O. Every variant that touches a file names it.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: PNG encoding failed: {source}")]
    PngEncode {
        path: PathBuf,
        #[source]
        source: ::png::EncodingError,
    },
    #[error("{path}: cannot decode image: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: ::image::ImageError,
    },
    #[error("{what}: RGB buffer of {len} bytes does not match {width}x{height}x3 = {expected}")]
    BadBuffer {
        what: String,
        width: u32,
        height: u32,
        len: usize,
        expected: u64,
    },
    #[error("{what}: invalid size {width}x{height}")]
    BadSize {
        what: String,
        width: u32,
        height: u32,
    },
    #[error("generation parameters: {0}")]
    Parameters(String),
}

pub type Result<T, E = MediaError> = std::result::Result<T, E>;

/// Checks that `rgb` holds exactly `width * height` RGB8 pixels and that neither side is zero.
pub(crate) fn check_rgb(what: &str, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(MediaError::BadSize {
            what: what.to_string(),
            width,
            height,
        });
    }
    let expected = u64::from(width) * u64::from(height) * 3;
    if rgb.len() as u64 != expected {
        return Err(MediaError::BadBuffer {
            what: what.to_string(),
            width,
            height,
            len: rgb.len(),
            expected,
        });
    }
    Ok(())
}
