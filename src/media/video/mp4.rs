//! MP4 / H.264: OpenH264 (Constrained Baseline, constant QP) into our MP4 muxer.

use std::io::{BufWriter, Write};
use std::path::Path;

use openh264::encoder::{
    Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, QpRange, RateControlMode,
    UsageType, VuiConfig,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

use super::openh264_log;
use super::yuv::rgb_to_yuv420_bt709;
use super::{io_err, Result, Sink, SinkSpec, VideoError};
use crate::media::mp4::{self as muxer, Colour, Sample, Tags, Track};
use crate::media::output::AtomicFile;

/// What the encoding tool tag says.
fn encoder_tag() -> String {
    format!("nijigen {} (OpenH264)", env!("CARGO_PKG_VERSION"))
}

pub(super) struct Mp4Sink {
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
    pub(super) fn new(spec: &SinkSpec<'_>, file: AtomicFile) -> Result<Self> {
        let SinkSpec {
            path,
            width,
            height,
            options,
            metadata,
        } = *spec;
        let enc_width = width + (width & 1);
        let enc_height = height + (height & 1);
        let (long, short) = (enc_width.max(enc_height), enc_width.min(enc_height));
        if long > H264_MAX.0 || short > H264_MAX.1 {
            return Err(spec.too_large("H.264", H264_MAX));
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
        let mut encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(|e| {
                VideoError::H264 {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }
            })?;
        openh264_log::log_to_tracing(&mut encoder);
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
}

impl Sink for Mp4Sink {
    fn push(&mut self, path: &Path, rgb: &[u8], _index: u32) -> Result<()> {
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

    fn finish(mut self: Box<Self>, path: &Path, _frames: u32) -> Result<AtomicFile> {
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
            muxer::write_mp4(&mut out, &track, &self.tags, &self.payload)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_codes_are_stripped() {
        assert_eq!(strip_start_code(&[0, 0, 0, 1, 0x67, 1]), &[0x67, 1]);
        assert_eq!(strip_start_code(&[0, 0, 1, 0x68]), &[0x68]);
        assert_eq!(strip_start_code(&[0x65, 0]), &[0x65, 0]);
    }
}
