//! Animated GIF: a 256-colour NeuQuant palette per frame, streamed to the file.

use std::io::BufWriter;
use std::path::Path;

use super::{io_err, Result, Sink, SinkSpec, VideoError};
use crate::media::output::AtomicFile;

pub(super) struct GifSink {
    encoder: ::gif::Encoder<BufWriter<AtomicFile>>,
    width: u16,
    height: u16,
    fps: u32,
}

/// GIF frame delays are whole centiseconds: frame `i` lasts until `round((i+1) * 100 / fps)`,
/// so the total stays exact (16 fps: 6, 7, 6, 6, 6, 7, ... = 6.25 on average).
fn gif_delay(index: u32, fps: u32) -> u16 {
    let at = |i: u64| (i * 100 + u64::from(fps) / 2) / u64::from(fps);
    let d = at(u64::from(index) + 1) - at(u64::from(index));
    // Browsers treat delays under 2 cs as 10 cs; never write less than 2.
    d.clamp(2, u64::from(u16::MAX)) as u16
}

impl GifSink {
    pub(super) fn new(spec: &SinkSpec<'_>, file: AtomicFile) -> Result<Self> {
        let SinkSpec {
            path,
            width,
            height,
            options,
            metadata,
        } = *spec;
        let max = u32::from(u16::MAX);
        let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
            return Err(spec.too_large("GIF", (max, max)));
        };
        let gif_err = |source| VideoError::Gif {
            path: path.to_path_buf(),
            source,
        };
        let mut encoder = ::gif::Encoder::new(BufWriter::new(file), w, h, &[]).map_err(gif_err)?;
        encoder
            .set_repeat(::gif::Repeat::Infinite)
            .map_err(gif_err)?;
        let comment = [
            metadata.title.as_str(),
            metadata.comment.as_str(),
            metadata.parameters_json.as_str(),
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
        if !comment.is_empty() {
            encoder
                .write_raw_extension(::gif::AnyExtension(0xfe), &[comment.as_bytes()])
                .map_err(gif_err)?;
        }
        Ok(Self {
            encoder,
            width: w,
            height: h,
            fps: options.fps,
        })
    }
}

impl Sink for GifSink {
    fn push(&mut self, path: &Path, rgb: &[u8], index: u32) -> Result<()> {
        // NeuQuant speed 10: the gif crate's recommended trade-off.
        let mut frame = ::gif::Frame::from_rgb_speed(self.width, self.height, rgb, 10);
        frame.delay = gif_delay(index, self.fps);
        self.encoder
            .write_frame(&frame)
            .map_err(|source| VideoError::Gif {
                path: path.to_path_buf(),
                source,
            })
    }

    fn finish(self: Box<Self>, path: &Path, _frames: u32) -> Result<AtomicFile> {
        let sink = self
            .encoder
            .into_inner()
            .map_err(|source| VideoError::Gif {
                path: path.to_path_buf(),
                source,
            })?;
        sink.into_inner().map_err(|e| io_err(path)(e.into_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_delays_add_up() {
        let total: u32 = (0..16).map(|i| u32::from(gif_delay(i, 16))).sum();
        assert_eq!(total, 100);
        assert!((0..16).all(|i| (6..=7).contains(&gif_delay(i, 16))));
        assert_eq!(gif_delay(0, 10), 10);
        assert_eq!(gif_delay(0, 240), 2);
    }
}
