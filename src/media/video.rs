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

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use openh264::encoder::{
    Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode,
    UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

use super::mp4::{self, Colour, Sample, Tags, Track};
use super::output::{unique_path, AtomicFile};
use super::{check_rgb, MediaError};

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
        source: gif::EncodingError,
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

/// What the encoding tool tag says.
fn encoder_tag() -> String {
    format!("nijigen {} (OpenH264)", env!("CARGO_PKG_VERSION"))
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
    sink: Sink,
}

enum Sink {
    Mp4(Box<Mp4Sink>),
    Gif(Box<GifSink>),
    WebP(Box<WebPSink>),
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
        if width == 0 || height == 0 {
            return Err(MediaError::BadSize {
                what: requested.display().to_string(),
                width,
                height,
            }
            .into());
        }
        let path = unique_path(requested, options.overwrite);
        let file = AtomicFile::create(&path)?;
        let sink = match format {
            VideoFormat::Mp4 => Sink::Mp4(Box::new(Mp4Sink::new(
                &path, file, width, height, options, metadata,
            )?)),
            VideoFormat::Gif => Sink::Gif(Box::new(GifSink::new(
                &path, file, width, height, options, metadata,
            )?)),
            VideoFormat::WebP => Sink::WebP(Box::new(WebPSink::new(
                &path, file, width, height, options,
            )?)),
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
        match &mut self.sink {
            Sink::Mp4(s) => s.push(&self.path, rgb)?,
            Sink::Gif(s) => s.push(&self.path, rgb, self.frames)?,
            Sink::WebP(s) => s.push(&self.path, rgb, self.frames)?,
        }
        self.frames += 1;
        Ok(())
    }

    /// Completes the file and renames it onto [`Self::path`], which it returns. A writer with
    /// no frames is an error and leaves nothing behind.
    pub fn finish(self) -> Result<PathBuf> {
        if self.frames == 0 {
            return Err(VideoError::NoFrames { path: self.path });
        }
        let file = match self.sink {
            Sink::Mp4(s) => s.finish(&self.path)?,
            Sink::Gif(s) => s.finish(&self.path)?,
            Sink::WebP(s) => s.finish(&self.path, self.frames)?,
        };
        let path = file.commit()?;
        tracing::info!(path = %path.display(), frames = self.frames, "wrote video");
        Ok(path)
    }
}

// ---------------------------------------------------------------------------------------------
// MP4 / H.264

struct Mp4Sink {
    file: AtomicFile,
    encoder: Encoder,
    /// Frame size and encoded (even) size.
    width: usize,
    height: usize,
    enc_width: usize,
    enc_height: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// AVCC samples back to back (what goes into mdat).
    payload: Vec<u8>,
    samples: Vec<Sample>,
    timescale: u32,
    frame_duration: u32,
    tags: Tags,
}

/// Largest picture OpenH264 encodes (level 5.2).
const H264_MAX: (u32, u32) = (3840, 2160);

impl Mp4Sink {
    fn new(
        path: &Path,
        file: AtomicFile,
        width: u32,
        height: u32,
        options: &VideoOptions,
        metadata: &VideoMetadata,
    ) -> Result<Self> {
        let enc_width = width + (width & 1);
        let enc_height = height + (height & 1);
        let (long, short) = (enc_width.max(enc_height), enc_width.min(enc_height));
        if long > H264_MAX.0 || short > H264_MAX.1 {
            return Err(VideoError::TooLarge {
                path: path.to_path_buf(),
                format: "H.264",
                width,
                height,
                max_width: H264_MAX.0,
                max_height: H264_MAX.1,
            });
        }
        if (enc_width, enc_height) != (width, height) {
            tracing::debug!(
                width,
                height,
                enc_width,
                enc_height,
                "odd frame size: padding to even for 4:2:0 H.264 (edge pixels repeated)"
            );
        }
        let gop = if options.keyframe_interval == 0 {
            options.fps * 2
        } else {
            options.keyframe_interval
        };
        // Quality mode with the QP pinned: constant quality, no bitrate target to undershoot on
        // the first frames. No frame skipping: every pushed frame becomes a sample.
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Quality)
            .qp(QpRange::new(options.qp, options.qp))
            .bitrate(openh264::encoder::BitRate::from_bps(50_000_000))
            .max_frame_rate(FrameRate::from_hz(options.fps as f32))
            .skip_frames(false)
            .complexity(Complexity::High)
            .intra_frame_period(IntraFramePeriod::from_num_frames(gop))
            .vui(VuiConfig::bt709());
        let encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                VideoError::H264 {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
        let (ew, eh) = (enc_width as usize, enc_height as usize);
        // Timescale: 1000 ticks per frame keeps durations exact for any integer fps.
        let frame_duration = 1000;
        Ok(Self {
            file,
            encoder,
            width: width as usize,
            height: height as usize,
            enc_width: ew,
            enc_height: eh,
            y: vec![0; ew * eh],
            u: vec![0; ew / 2 * (eh / 2)],
            v: vec![0; ew / 2 * (eh / 2)],
            sps: None,
            pps: None,
            payload: Vec::new(),
            samples: Vec::new(),
            timescale: options.fps * frame_duration,
            frame_duration,
            tags: Tags {
                title: metadata.title.clone(),
                comment: metadata.comment.clone(),
                description: metadata.parameters_json.clone(),
                encoder: encoder_tag(),
            },
        })
    }

    fn push(&mut self, path: &Path, rgb: &[u8]) -> Result<()> {
        rgb_to_yuv420_bt709(
            rgb,
            self.width,
            self.height,
            self.enc_width,
            self.enc_height,
            &mut self.y,
            &mut self.u,
            &mut self.v,
        );
        let h264 = |message: String| VideoError::H264 {
            path: path.to_path_buf(),
            message,
        };
        let source = YUVSlices::new(
            (&self.y, &self.u, &self.v),
            (self.enc_width, self.enc_height),
            (self.enc_width, self.enc_width / 2, self.enc_width / 2),
        );
        let stream = self
            .encoder
            .encode(&source)
            .map_err(|e| h264(e.to_string()))?;
        let start = self.payload.len();
        let mut sync = false;
        for l in 0..stream.num_layers() {
            let Some(layer) = stream.layer(l) else {
                continue;
            };
            for n in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(n) else {
                    continue;
                };
                let nal = strip_start_code(nal);
                let Some(&header) = nal.first() else {
                    continue;
                };
                match header & 0x1f {
                    7 => {
                        if self.sps.is_none() {
                            self.sps = Some(nal.to_vec());
                        }
                    }
                    8 => {
                        if self.pps.is_none() {
                            self.pps = Some(nal.to_vec());
                        }
                    }
                    kind => {
                        sync |= kind == 5;
                        let len = u32::try_from(nal.len())
                            .map_err(|_| h264(format!("NAL unit of {} bytes", nal.len())))?;
                        self.payload.extend_from_slice(&len.to_be_bytes());
                        self.payload.extend_from_slice(nal);
                    }
                }
            }
        }
        let size = self.payload.len() - start;
        if size == 0 {
            // A skipped picture: the previous one stays on screen one frame longer.
            match self.samples.last_mut() {
                Some(last) => last.duration += self.frame_duration,
                None => return Err(h264("the encoder produced no picture for frame 0".into())),
            }
            return Ok(());
        }
        let size = u32::try_from(size).map_err(|_| h264(format!("picture of {size} bytes")))?;
        self.samples.push(Sample {
            size,
            duration: self.frame_duration,
            sync,
        });
        Ok(())
    }

    fn finish(mut self, path: &Path) -> Result<AtomicFile> {
        let (Some(sps), Some(pps)) = (self.sps.take(), self.pps.take()) else {
            return Err(VideoError::H264 {
                path: path.to_path_buf(),
                message: "the encoder emitted no SPS/PPS".into(),
            });
        };
        // `new` checked the size against H264_MAX (3840x2160), so both sides fit in u16.
        let track = Track {
            width: u16::try_from(self.enc_width).unwrap_or(u16::MAX),
            height: u16::try_from(self.enc_height).unwrap_or(u16::MAX),
            timescale: self.timescale,
            sps,
            pps,
            colour: Colour::BT709_LIMITED,
            samples: std::mem::take(&mut self.samples),
        };
        {
            let mut out = BufWriter::new(self.file.file_mut());
            mp4::write_mp4(&mut out, &track, &self.tags, &self.payload)
                .and_then(|()| out.flush())
                .map_err(io_err(path))?;
        }
        Ok(self.file)
    }
}

/// Drops an Annex B start code (`00 00 01` or `00 00 00 01`) from the front of a NAL unit.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else if let Some(rest) = nal.strip_prefix(&[0, 0, 1]) {
        rest
    } else {
        nal
    }
}

// BT.709 luma weights.
const KR: f32 = 0.2126;
const KB: f32 = 0.0722;
const KG: f32 = 1.0 - KR - KB;

/// RGB8 to planar 4:2:0 Y'CbCr, BT.709 matrix, limited range (Y 16-235, C 16-240), chroma the
/// mean of each 2x2 block. The picture is `width x height`; the planes are
/// `enc_width x enc_height` (both even, at least the picture size), the extra column/row
/// repeating the last one.
#[allow(clippy::too_many_arguments)]
pub fn rgb_to_yuv420_bt709(
    rgb: &[u8],
    width: usize,
    height: usize,
    enc_width: usize,
    enc_height: usize,
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
) {
    let px = |xx: usize, yy: usize| -> [f32; 3] {
        let i = (yy.min(height - 1) * width + xx.min(width - 1)) * 3;
        [
            f32::from(rgb[i]),
            f32::from(rgb[i + 1]),
            f32::from(rgb[i + 2]),
        ]
    };
    let luma = |p: [f32; 3]| KR * p[0] + KG * p[1] + KB * p[2];
    for yy in 0..enc_height {
        for xx in 0..enc_width {
            let l = luma(px(xx, yy));
            y[yy * enc_width + xx] = (16.0 + l * (219.0 / 255.0)).round() as u8;
        }
    }
    let cw = enc_width / 2;
    for cy in 0..enc_height / 2 {
        for cx in 0..cw {
            let mut s = [0f32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(cx * 2 + dx, cy * 2 + dy);
                s[0] += p[0];
                s[1] += p[1];
                s[2] += p[2];
            }
            let p = [s[0] / 4.0, s[1] / 4.0, s[2] / 4.0];
            let l = luma(p);
            let cb = (p[2] - l) / (2.0 * (1.0 - KB));
            let cr = (p[0] - l) / (2.0 * (1.0 - KR));
            u[cy * cw + cx] = (128.0 + cb * (224.0 / 255.0)).round().clamp(0.0, 255.0) as u8;
            v[cy * cw + cx] = (128.0 + cr * (224.0 / 255.0)).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// The inverse of [`rgb_to_yuv420_bt709`] (nearest-neighbour chroma): planar 4:2:0 with the
/// given strides to RGB8 of `width x height`. For checking encoded video.
#[allow(clippy::too_many_arguments)]
pub fn yuv420_to_rgb_bt709(
    y: &[u8],
    u: &[u8],
    v: &[u8],
    strides: (usize, usize, usize),
    width: usize,
    height: usize,
    rgb: &mut [u8],
) {
    for yy in 0..height {
        for xx in 0..width {
            let l = (f32::from(y[yy * strides.0 + xx]) - 16.0) * (255.0 / 219.0);
            let cb = (f32::from(u[yy / 2 * strides.1 + xx / 2]) - 128.0) * (255.0 / 224.0);
            let cr = (f32::from(v[yy / 2 * strides.2 + xx / 2]) - 128.0) * (255.0 / 224.0);
            let r = l + 2.0 * (1.0 - KR) * cr;
            let b = l + 2.0 * (1.0 - KB) * cb;
            let g = (l - KR * r - KB * b) / KG;
            let i = (yy * width + xx) * 3;
            rgb[i] = r.round().clamp(0.0, 255.0) as u8;
            rgb[i + 1] = g.round().clamp(0.0, 255.0) as u8;
            rgb[i + 2] = b.round().clamp(0.0, 255.0) as u8;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GIF

struct GifSink {
    encoder: gif::Encoder<BufWriter<AtomicFile>>,
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
    fn new(
        path: &Path,
        file: AtomicFile,
        width: u32,
        height: u32,
        options: &VideoOptions,
        metadata: &VideoMetadata,
    ) -> Result<Self> {
        let max = u32::from(u16::MAX);
        let (Ok(w), Ok(h)) = (u16::try_from(width), u16::try_from(height)) else {
            return Err(VideoError::TooLarge {
                path: path.to_path_buf(),
                format: "GIF",
                width,
                height,
                max_width: max,
                max_height: max,
            });
        };
        let gif_err = |source| VideoError::Gif {
            path: path.to_path_buf(),
            source,
        };
        let mut encoder = gif::Encoder::new(BufWriter::new(file), w, h, &[]).map_err(gif_err)?;
        encoder.set_repeat(gif::Repeat::Infinite).map_err(gif_err)?;
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
                .write_raw_extension(gif::AnyExtension(0xfe), &[comment.as_bytes()])
                .map_err(gif_err)?;
        }
        Ok(Self {
            encoder,
            width: w,
            height: h,
            fps: options.fps,
        })
    }

    fn push(&mut self, path: &Path, rgb: &[u8], index: u32) -> Result<()> {
        // NeuQuant speed 10: the gif crate's recommended trade-off.
        let mut frame = gif::Frame::from_rgb_speed(self.width, self.height, rgb, 10);
        frame.delay = gif_delay(index, self.fps);
        self.encoder
            .write_frame(&frame)
            .map_err(|source| VideoError::Gif {
                path: path.to_path_buf(),
                source,
            })
    }

    fn finish(self, path: &Path) -> Result<AtomicFile> {
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

// ---------------------------------------------------------------------------------------------
// WebP

struct WebPSink {
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
    fn new(
        path: &Path,
        file: AtomicFile,
        width: u32,
        height: u32,
        options: &VideoOptions,
    ) -> Result<Self> {
        // libwebp's canvas limit.
        const MAX: u32 = 16383;
        if width > MAX || height > MAX {
            return Err(VideoError::TooLarge {
                path: path.to_path_buf(),
                format: "WebP",
                width,
                height,
                max_width: MAX,
                max_height: MAX,
            });
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

    fn push(&mut self, path: &Path, rgb: &[u8], index: u32) -> Result<()> {
        self.encoder
            .add_frame(rgb, timestamp_ms(index, self.fps))
            .map_err(|e| VideoError::WebP {
                path: path.to_path_buf(),
                message: format!("frame {index}: {e:?}"),
            })
    }

    fn finish(mut self, path: &Path, frames: u32) -> Result<AtomicFile> {
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

// ---------------------------------------------------------------------------------------------
// Frame directory and sidecar

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
        if width == 0 || height == 0 {
            return Err(MediaError::BadSize {
                what: dir.display().to_string(),
                width,
                height,
            }
            .into());
        }
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

/// The sidecar path for an output: the full file name plus `.json` (`clip.mp4` ->
/// `clip.mp4.json`), so `clip.mp4` and `clip.gif` never share one.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "output".into());
    name.push(".json");
    output.with_file_name(name)
}

/// Writes `json` to [`sidecar_path`]`(output)` atomically and returns that path. The JSON must
/// parse; it is written as given. An existing sidecar is replaced: it belongs to `output`,
/// whose name [`VideoWriter`] has already made unique.
pub fn write_sidecar_json(output: impl AsRef<Path>, json: &str) -> Result<PathBuf> {
    let path = sidecar_path(output.as_ref());
    if let Err(e) = serde_json::from_str::<serde_json::Value>(json) {
        return Err(MediaError::Parameters(format!(
            "sidecar {}: invalid JSON: {e}",
            path.display()
        ))
        .into());
    }
    let mut file = AtomicFile::create(&path)?;
    file.write_all(json.as_bytes())
        .and_then(|()| {
            if json.ends_with('\n') {
                Ok(())
            } else {
                file.write_all(b"\n")
            }
        })
        .map_err(io_err(&path))?;
    Ok(file.commit()?)
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

    #[test]
    fn gif_delays_add_up() {
        let total: u32 = (0..16).map(|i| u32::from(gif_delay(i, 16))).sum();
        assert_eq!(total, 100);
        assert!((0..16).all(|i| (6..=7).contains(&gif_delay(i, 16))));
        assert_eq!(gif_delay(0, 10), 10);
        assert_eq!(gif_delay(0, 240), 2);
    }

    #[test]
    fn yuv_round_trip_is_close() {
        // Flat 2x2 blocks survive 4:2:0 with only rounding error.
        let (w, h) = (4usize, 2usize);
        let colours = [[255u8, 0, 0], [12, 200, 40]];
        let mut rgb = vec![0u8; w * h * 3];
        for yy in 0..h {
            for xx in 0..w {
                rgb[(yy * w + xx) * 3..][..3].copy_from_slice(&colours[xx / 2]);
            }
        }
        let (mut y, mut u, mut v) = (vec![0; w * h], vec![0; 2], vec![0; 2]);
        rgb_to_yuv420_bt709(&rgb, w, h, w, h, &mut y, &mut u, &mut v);
        let mut back = vec![0u8; rgb.len()];
        yuv420_to_rgb_bt709(&y, &u, &v, (w, w / 2, w / 2), w, h, &mut back);
        for (a, b) in rgb.iter().zip(&back) {
            assert!(a.abs_diff(*b) <= 2, "{rgb:?} vs {back:?}");
        }
        // White and black hit the limited-range ends.
        let (mut y, mut u, mut v) = ([0u8; 4], [0u8], [0u8]);
        rgb_to_yuv420_bt709(&[255; 12], 2, 2, 2, 2, &mut y, &mut u, &mut v);
        assert_eq!((y[0], u[0], v[0]), (235, 128, 128));
        rgb_to_yuv420_bt709(&[0; 12], 2, 2, 2, 2, &mut y, &mut u, &mut v);
        assert_eq!((y[0], u[0], v[0]), (16, 128, 128));
    }

    #[test]
    fn odd_size_pads_by_repeating_edges() {
        let rgb = [10u8, 10, 10, 200, 200, 200, 90, 90, 90]; // 3x1
        let (mut y, mut u, mut v) = (vec![0; 8], vec![0; 2], vec![0; 2]);
        rgb_to_yuv420_bt709(&rgb, 3, 1, 4, 2, &mut y, &mut u, &mut v);
        assert_eq!(y[3], y[2]);
        assert_eq!(&y[4..8], &y[0..4]);
    }

    #[test]
    fn sidecar_name_and_validation() {
        assert_eq!(
            sidecar_path(Path::new("/x/clip.mp4")),
            Path::new("/x/clip.mp4.json")
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mp4");
        let p = write_sidecar_json(&out, "{\"seed\":1}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"seed\":1}\n");
        assert!(write_sidecar_json(&out, "{not json").is_err());
    }

    #[test]
    fn start_codes_are_stripped() {
        assert_eq!(strip_start_code(&[0, 0, 0, 1, 0x67, 1]), &[0x67, 1]);
        assert_eq!(strip_start_code(&[0, 0, 1, 0x68]), &[0x68]);
        assert_eq!(strip_start_code(&[0x65, 0]), &[0x65, 0]);
    }
}
