//! Video output without ffmpeg: H.264 in MP4, animated GIF or animated WebP, chosen by the
//! output extension, plus a PNG-per-frame directory writer and the sidecar JSON.
//!
//! Frames are RGB8 (`width * height * 3` bytes, row-major) pushed one at a time with
//! [`VideoWriter::push_frame`]; only the compressed stream is kept (MP4, WebP) or nothing at all
//! (GIF streams to the file). [`VideoWriter::finish`] writes the file under a temporary name in
//! the destination folder and renames it; a writer dropped without `finish` (an error, Ctrl-C
//! unwinding out of the pipeline) leaves no file behind.
//!
//! | extension | codec | metadata |
//! | --- | --- | --- |
//! | `.mp4` | H.264 Constrained Baseline (OpenH264), yuv420p, BT.709 limited range, constant QP | `moov/udta/meta/ilst`: `©nam` title, `©cmt` comment, `desc` parameters JSON, `©too` encoder |
//! | `.gif` | 256-colour NeuQuant palette per frame, delays in 1/100 s | comment extension holding the JSON |
//! | `.webp` | lossy VP8 frames (libwebp), infinite loop | none in the file (use the sidecar) |
//!
//! Colour: RGB is converted to Y'CbCr with the BT.709 matrix, limited range, chroma averaged
//! over 2x2 blocks; the SPS VUI and the MP4 `colr` box both say BT.709 primaries, transfer and
//! matrix, limited range, so browsers and players convert back with the same matrix.
//!
//! Odd sizes: 4:2:0 H.264 needs even width and height. An odd width or height is padded by one
//! column or row repeating the last one (so the MP4 is at most one pixel wider/taller than the
//! frames; a debug log says so). GIF and WebP keep the exact size. Wan sizes are multiples of 16.
//!
//! Layout: one file per sink behind the `Sink` trait (`mp4`: OpenH264 and our muxer, `gif`,
//! `webp`), the colour conversion in `yuv`, the PNG frames directory in `frames_dir` and the
//! sidecar JSON in `sidecar`; options, errors and [`VideoWriter`] here.

mod frames_dir;
mod gif;
mod mp4;
mod openh264_log;
mod sidecar;
mod webp;
mod yuv;

use std::path::{Path, PathBuf};

use super::output::{unique_path, AtomicFile};
use super::{check_rgb, MediaError};
use gif::GifSink;
use mp4::Mp4Sink;
use webp::WebPSink;

pub use frames_dir::{frame_file_name, FrameDirWriter};
pub use sidecar::{sidecar_path, write_sidecar_json};
pub use yuv::{rgb_to_yuv420_bt709, yuv420_to_rgb_bt709};

/// Wan2.1's frame rate, the default.
pub const DEFAULT_FPS: u32 = 16;
/// Default H.264 quantiser: visually clean for 832x480 anime at a few Mbit/s.
pub const DEFAULT_QP: u8 = 20;
/// Default lossy WebP quality (0-100).
pub const DEFAULT_WEBP_QUALITY: f32 = 90.0;

/// The extensions [`VideoFormat::from_path`] accepts, for messages.
pub const SUPPORTED_EXTENSIONS: &str = ".mp4, .gif, .webp";

/// Errors from writing a video, a frame directory or a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(
        "{path}: unsupported video format {ext:?}: use one of {SUPPORTED_EXTENSIONS} \
         (or --frames-dir DIR for one PNG per frame)"
    )]
    UnsupportedFormat { path: PathBuf, ext: String },
    #[error("{path}: invalid video option: {message}")]
    BadOption { path: PathBuf, message: String },
    #[error(
        "{path}: {width}x{height} is too large for {format} (at most {max_width}x{max_height})"
    )]
    TooLarge {
        path: PathBuf,
        format: &'static str,
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
    #[error("{path}: H.264 encoder: {message}")]
    H264 { path: PathBuf, message: String },
    #[error("{path}: GIF encoder: {source}")]
    Gif {
        path: PathBuf,
        #[source]
        source: ::gif::EncodingError,
    },
    #[error("{path}: WebP encoder: {message}")]
    WebP { path: PathBuf, message: String },
    #[error("{path}: no frames were pushed; nothing written")]
    NoFrames { path: PathBuf },
    #[error("{dir}: already holds {first}; choose another frames directory or allow overwriting")]
    FramesExist { dir: PathBuf, first: String },
}

pub type Result<T, E = VideoError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VideoError + '_ {
    move |source| {
        VideoError::Media(MediaError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Refuses a zero width or height; `output` (the file or folder) names the error.
fn check_size(output: &Path, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(MediaError::BadSize {
            what: output.display().to_string(),
            width,
            height,
        }
        .into());
    }
    Ok(())
}

/// Container/codec, chosen from the output extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoFormat {
    /// H.264 in MP4.
    Mp4,
    /// Animated GIF.
    Gif,
    /// Animated WebP (lossy).
    WebP,
}

impl VideoFormat {
    /// The format for `path`'s extension (case-insensitive; `.m4v` is taken as MP4), or an
    /// error naming the supported ones.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "mp4" | "m4v" => Ok(Self::Mp4),
            "gif" => Ok(Self::Gif),
            "webp" => Ok(Self::WebP),
            _ => Err(VideoError::UnsupportedFormat {
                path: path.to_path_buf(),
                ext: if ext.is_empty() {
                    "(none)".into()
                } else {
                    format!(".{ext}")
                },
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mp4 => "MP4 (H.264)",
            Self::Gif => "GIF",
            Self::WebP => "WebP",
        }
    }
}

/// How to encode. `Default` is Wan's 16 fps, QP 20, never overwriting.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoOptions {
    /// Frames per second (1-240).
    pub fps: u32,
    /// H.264 quantiser, 0 (best) to 51; 18-23 is visually transparent-to-good for anime.
    pub qp: u8,
    /// Distance between H.264 keyframes in frames (seeking granularity); 0 = one per 2 s.
    pub keyframe_interval: u32,
    /// Lossy WebP quality, 0-100.
    pub webp_quality: f32,
    /// Replace an existing file at the output path instead of picking `name_0001.ext`.
    pub overwrite: bool,
}

impl Default for VideoOptions {
    fn default() -> Self {
        Self {
            fps: DEFAULT_FPS,
            qp: DEFAULT_QP,
            keyframe_interval: 0,
            webp_quality: DEFAULT_WEBP_QUALITY,
            overwrite: false,
        }
    }
}

impl VideoOptions {
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |message: String| VideoError::BadOption {
            path: path.to_path_buf(),
            message,
        };
        if !(1..=240).contains(&self.fps) {
            return Err(bad(format!("fps {} is outside 1..=240", self.fps)));
        }
        if self.qp > 51 {
            return Err(bad(format!("H.264 QP {} is outside 0..=51", self.qp)));
        }
        if !(0.0..=100.0).contains(&self.webp_quality) {
            return Err(bad(format!(
                "WebP quality {} is outside 0..=100",
                self.webp_quality
            )));
        }
        Ok(())
    }
}

/// Text stored in the file: a title, a short comment, and the generation parameters as JSON
/// (the same text [`write_sidecar_json`] writes). Empty strings are left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoMetadata {
    pub title: String,
    pub comment: String,
    pub parameters_json: String,
}

/// Writes a video one RGB8 frame at a time. See the module docs for formats.
///
/// ```no_run
/// # use nijigen::media::video::*;
/// # fn frames() -> Vec<Vec<u8>> { vec![] }
/// let meta = VideoMetadata { parameters_json: "{\"seed\":1}".into(), ..Default::default() };
/// let mut w = VideoWriter::create("out.mp4", 832, 480, &VideoOptions::default(), &meta)?;
/// for rgb in frames() {
///     w.push_frame(&rgb)?;
/// }
/// let path = w.finish()?; // out.mp4, or out_0001.mp4 if out.mp4 existed
/// write_sidecar_json(&path, &meta.parameters_json)?;
/// # Ok::<(), VideoError>(())
/// ```
pub struct VideoWriter {
    path: PathBuf,
    format: VideoFormat,
    width: u32,
    height: u32,
    frames: u32,
    sink: Box<dyn Sink>,
}

/// What a sink is opened with: the output (for messages), the frame size, the options and the
/// text to store.
#[derive(Clone, Copy)]
struct SinkSpec<'a> {
    path: &'a Path,
    width: u32,
    height: u32,
    options: &'a VideoOptions,
    metadata: &'a VideoMetadata,
}

impl SinkSpec<'_> {
    /// The error for a frame size over a format's `(max_width, max_height)`.
    fn too_large(&self, format: &'static str, (max_width, max_height): (u32, u32)) -> VideoError {
        VideoError::TooLarge {
            path: self.path.to_path_buf(),
            format,
            width: self.width,
            height: self.height,
            max_width,
            max_height,
        }
    }
}

/// One container/codec: takes the frames (checked RGB8 of the writer's size) and completes the
/// temporary file.
trait Sink {
    /// Encodes frame `index` (0, 1, ...). `path` is the output, for messages.
    fn push(&mut self, path: &Path, rgb: &[u8], index: u32) -> Result<()>;

    /// Completes the file after `frames` frames (at least one); the writer renames it.
    fn finish(self: Box<Self>, path: &Path, frames: u32) -> Result<AtomicFile>;
}

impl VideoWriter {
    /// Opens a writer for `width x height` frames. The format comes from `path`'s extension;
    /// unless `options.overwrite`, an existing file is kept and the next free
    /// `name_NNNN.ext` is used ([`Self::path`] says which). The temporary file is created now,
    /// so an unwritable folder fails here rather than after the generation.
    pub fn create(
        path: impl AsRef<Path>,
        width: u32,
        height: u32,
        options: &VideoOptions,
        metadata: &VideoMetadata,
    ) -> Result<Self> {
        let requested = path.as_ref();
        let format = VideoFormat::from_path(requested)?;
        options.validate(requested)?;
        check_size(requested, width, height)?;
        let path = unique_path(requested, options.overwrite);
        let file = AtomicFile::create(&path)?;
        let spec = SinkSpec {
            path: &path,
            width,
            height,
            options,
            metadata,
        };
        let sink: Box<dyn Sink> = match format {
            VideoFormat::Mp4 => Box::new(Mp4Sink::new(&spec, file)?),
            VideoFormat::Gif => Box::new(GifSink::new(&spec, file)?),
            VideoFormat::WebP => Box::new(WebPSink::new(&spec, file)?),
        };
        tracing::debug!(path = %path.display(), format = format.name(), width, height, fps = options.fps, "video writer opened");
        Ok(Self {
            path,
            format,
            width,
            height,
            frames: 0,
            sink,
        })
    }

    /// The path the file will have after [`finish`](Self::finish).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> VideoFormat {
        self.format
    }

    /// Frames pushed so far.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Encodes one frame: `width * height * 3` bytes of RGB8, row-major.
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<()> {
        check_rgb(
            &format!("{} frame {}", self.path.display(), self.frames),
            rgb,
            self.width,
            self.height,
        )?;
        self.sink.push(&self.path, rgb, self.frames)?;
        self.frames += 1;
        Ok(())
    }

    /// Completes the file and renames it onto [`Self::path`], which it returns. A writer with
    /// no frames is an error and leaves nothing behind.
    pub fn finish(self) -> Result<PathBuf> {
        if self.frames == 0 {
            return Err(VideoError::NoFrames { path: self.path });
        }
        let file = self.sink.finish(&self.path, self.frames)?;
        let path = file.commit()?;
        tracing::info!(path = %path.display(), frames = self.frames, "wrote video");
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(
            VideoFormat::from_path(Path::new("a.MP4")).unwrap(),
            VideoFormat::Mp4
        );
        assert_eq!(
            VideoFormat::from_path(Path::new("a.gif")).unwrap(),
            VideoFormat::Gif
        );
        assert_eq!(
            VideoFormat::from_path(Path::new("a.webp")).unwrap(),
            VideoFormat::WebP
        );
        let err = VideoFormat::from_path(Path::new("a.avi"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(".avi") && err.contains(".mp4, .gif, .webp"),
            "{err}"
        );
        let err = VideoFormat::from_path(Path::new("noext"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(none)"), "{err}");
    }
}
