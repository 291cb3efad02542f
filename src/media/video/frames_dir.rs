//! One PNG per frame in a directory (`--frames-dir`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{check_size, io_err, Result, VideoError};
use crate::media::output::AtomicFile;
use crate::media::{check_rgb, MediaError};

/// The file name of frame `index` in a frames directory: `frame_0000.png`, ... (more digits
/// past 9999).
pub fn frame_file_name(index: u32) -> String {
    format!("frame_{index:04}.png")
}

/// Writes one PNG per frame into a directory (`--frames-dir`): `frame_0000.png`, `frame_0001.png`,
/// ... Each file is written atomically; an interrupted run leaves the complete frames written so
/// far and no partial file.
pub struct FrameDirWriter {
    dir: PathBuf,
    width: u32,
    height: u32,
    frames: u32,
}

impl FrameDirWriter {
    /// Creates `dir` (and its parents) if needed. Unless `overwrite`, a directory that already
    /// holds `frame_0000.png` is refused, so a second run cannot silently mix its frames with
    /// an earlier run's.
    pub fn create(dir: impl AsRef<Path>, width: u32, height: u32, overwrite: bool) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        check_size(&dir, width, height)?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let first = frame_file_name(0);
        if !overwrite && fs::symlink_metadata(dir.join(&first)).is_ok() {
            return Err(VideoError::FramesExist { dir, first });
        }
        Ok(Self {
            dir,
            width,
            height,
            frames: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frames written so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Writes the next frame (RGB8, `width * height * 3` bytes) and returns its path.
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(frame_file_name(self.frames));
        check_rgb(&path.display().to_string(), rgb, self.width, self.height)?;
        let mut file = AtomicFile::create(&path)?;
        let enc_err = |source| {
            VideoError::Media(MediaError::PngEncode {
                path: path.clone(),
                source,
            })
        };
        {
            let mut sink = BufWriter::new(file.file_mut());
            let mut enc = ::png::Encoder::new(&mut sink, self.width, self.height);
            enc.set_color(::png::ColorType::Rgb);
            enc.set_depth(::png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(enc_err)?;
            writer.write_image_data(rgb).map_err(enc_err)?;
            writer.finish().map_err(enc_err)?;
            sink.flush().map_err(io_err(&path))?;
        }
        file.commit()?;
        self.frames += 1;
        Ok(path)
    }
}
