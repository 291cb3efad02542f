//! Animated WebP: lossy VP8 frames (libwebp), infinite loop.

use std::io::Write;
use std::path::Path;

use super::{io_err, Result, Sink, SinkSpec, VideoError};
use crate::media::output::AtomicFile;

pub(super) struct WebPSink {
    file: AtomicFile,
    encoder: webp_animation::Encoder,
    fps: u32,
}

/// Frame `index`'s start time in milliseconds.
fn timestamp_ms(index: u32, fps: u32) -> i32 {
    let ms = (u64::from(index) * 1000 + u64::from(fps) / 2) / u64::from(fps);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

impl WebPSink {
    pub(super) fn new(spec: &SinkSpec<'_>, file: AtomicFile) -> Result<Self> {
        let SinkSpec {
            path,
            width,
            height,
            options,
            ..
        } = *spec;
        // libwebp's canvas limit.
        const MAX: u32 = 16383;
        if width > MAX || height > MAX {
            return Err(spec.too_large("WebP", (MAX, MAX)));
        }
        let encoding = webp_animation::EncodingConfig {
            encoding_type: webp_animation::EncodingType::new_lossy(),
            quality: options.webp_quality,
            method: 4,
        };
        let webp_options = webp_animation::EncoderOptions {
            color_mode: webp_animation::ColorMode::Rgb,
            encoding_config: Some(encoding),
            ..Default::default()
        };
        let encoder = webp_animation::Encoder::new_with_options((width, height), webp_options)
            .map_err(|e| VideoError::WebP {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            })?;
        Ok(Self {
            file,
            encoder,
            fps: options.fps,
        })
    }
}

impl Sink for WebPSink {
    fn push(&mut self, path: &Path, rgb: &[u8], index: u32) -> Result<()> {
        self.encoder
            .add_frame(rgb, timestamp_ms(index, self.fps))
            .map_err(|e| VideoError::WebP {
                path: path.to_path_buf(),
                message: format!("frame {index}: {e:?}"),
            })
    }

    fn finish(mut self: Box<Self>, path: &Path, frames: u32) -> Result<AtomicFile> {
        let data = self
            .encoder
            .finalize(timestamp_ms(frames, self.fps))
            .map_err(|e| VideoError::WebP {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            })?;
        self.file.write_all(&data).map_err(io_err(path))?;
        Ok(self.file)
    }
}
