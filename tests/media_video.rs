//! Video output: encode synthetic clips, then read them back with code that is not the
//! writer's (the `mp4` crate's parser, OpenH264's decoder, the gif and libwebp decoders).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use mp4::{Metadata, TrackType};
use nijigen::media::video::{
    frame_file_name, sidecar_path, write_sidecar_json, yuv420_to_rgb_bt709, FrameDirWriter,
    VideoError, VideoFormat, VideoMetadata, VideoOptions, VideoWriter,
};
use openh264::formats::YUVSource;

const W: u32 = 64;
const H: u32 = 48;
const FRAMES: u32 = 17;
const PARAMS: &str = r#"{"prompt":"1girl, cherry blossoms, 桜","seed":42,"steps":20,"fps":16}"#;

/// Smooth moving gradients (triangle waves, so no hard wrap edges) plus a soft disc.
fn frame(t: u32, w: u32, h: u32) -> Vec<u8> {
    let tri = |v: i64| -> u8 {
        let m = v.rem_euclid(510);
        (if m > 255 { 510 - m } else { m }) as u8
    };
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    let (cx, cy) = (10.0 + 2.5 * t as f32, h as f32 / 2.0);
    for y in 0..h {
        for x in 0..w {
            let (xi, yi, ti) = (x as i64, y as i64, t as i64);
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let disc = (1.0 - (d - 8.0).clamp(0.0, 4.0) / 4.0) * 120.0;
            rgb.push(tri(xi * 4 + ti * 6).saturating_add(disc as u8 / 2));
            rgb.push(tri(yi * 5 + ti * 3));
            rgb.push(tri(160 + xi * 2 - yi * 2 - ti * 4).saturating_sub(disc as u8));
        }
    }
    rgb
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

fn metadata() -> VideoMetadata {
    VideoMetadata {
        title: "nijigen test clip".into(),
        comment: "synthetic gradients".into(),
        parameters_json: PARAMS.into(),
    }
}

fn encode(path: &Path, w: u32, h: u32, options: &VideoOptions) -> std::path::PathBuf {
    let mut writer = VideoWriter::create(path, w, h, options, &metadata()).unwrap();
    for t in 0..FRAMES {
        writer.push_frame(&frame(t, w, h)).unwrap();
    }
    assert_eq!(writer.frames(), FRAMES);
    writer.finish().unwrap()
}

/// A sample as Annex B (start code + NAL units) and its sync flag.
type AnnexBSample = (Vec<u8>, bool);

/// The samples of track 1.
fn read_mp4(path: &Path) -> (mp4::Mp4Reader<BufReader<File>>, Vec<AnnexBSample>) {
    let file = File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut reader = mp4::Mp4Reader::read_header(BufReader::new(file), size).unwrap();
    let count = reader.sample_count(1).unwrap();
    let mut samples = Vec::new();
    for id in 1..=count {
        let s = reader.read_sample(1, id).unwrap().unwrap();
        let mut annexb = Vec::new();
        let mut rest: &[u8] = &s.bytes;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            annexb.extend_from_slice(&[0, 0, 0, 1]);
            annexb.extend_from_slice(&rest[4..4 + len]);
            rest = &rest[4 + len..];
        }
        samples.push((annexb, s.is_sync));
    }
    (reader, samples)
}

/// Decodes every sample with OpenH264 and returns RGB frames (BT.709 limited, as written).
fn decode_h264(sps: &[u8], pps: &[u8], samples: &[AnnexBSample]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut dec = openh264::decoder::Decoder::new().unwrap();
    let mut params = vec![0, 0, 0, 1];
    params.extend_from_slice(sps);
    params.extend_from_slice(&[0, 0, 0, 1]);
    params.extend_from_slice(pps);
    assert!(dec.decode(&params).unwrap().is_none());
    let mut out = Vec::new();
    let convert = |yuv: &openh264::decoder::DecodedYUV<'_>| {
        let (w, h) = yuv.dimensions();
        let mut rgb = vec![0u8; w * h * 3];
        yuv420_to_rgb_bt709(yuv.y(), yuv.u(), yuv.v(), yuv.strides(), w, h, &mut rgb);
        (w as u32, h as u32, rgb)
    };
    for (annexb, _) in samples {
        if let Some(yuv) = dec.decode(annexb).unwrap() {
            out.push(convert(&yuv));
        }
    }
    for yuv in dec.flush_remaining().unwrap() {
        out.push(convert(&yuv));
    }
    out
}

#[test]
fn mp4_parses_back_and_decodes_close_to_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode(&dir.path().join("clip.mp4"), W, H, &VideoOptions::default());
    assert_eq!(path, dir.path().join("clip.mp4"));

    let (reader, samples) = read_mp4(&path);
    assert_eq!(reader.major_brand().to_string(), "isom");
    assert_eq!(reader.tracks().len(), 1, "one track");
    let track = &reader.tracks()[&1];
    assert_eq!(track.track_type().unwrap(), TrackType::Video);
    assert_eq!(track.box_type().unwrap().to_string(), "avc1");
    assert_eq!((track.width(), track.height()), (W as u16, H as u16));
    assert_eq!(track.sample_count(), FRAMES);
    assert_eq!(track.timescale(), 16_000);
    assert_eq!(track.duration().as_millis(), 1062); // 17 / 16 s
    assert!(
        (track.frame_rate() - 16.0).abs() < 1e-9,
        "{}",
        track.frame_rate()
    );
    assert_eq!(samples.len(), FRAMES as usize);
    assert!(samples[0].1, "first sample is a sync sample");
    // Metadata: JSON in `desc`, title in `©nam`, comment and encoder present in `ilst`.
    let meta = reader.metadata();
    assert_eq!(meta.summary().as_deref(), Some(PARAMS));
    assert_eq!(meta.title().as_deref(), Some("nijigen test clip"));
    let bytes = std::fs::read(&path).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"\xa9cmt") && has(b"synthetic gradients"));
    assert!(has(b"\xa9toonijigen") || has(b"nijigen "));
    // colr nclx: BT.709 primaries/transfer/matrix, limited range.
    assert!(has(b"colrnclx\x00\x01\x00\x01\x00\x01\x00"));
    // moov before mdat (progressive playback).
    let pos = |needle: &[u8]| bytes.windows(4).position(|w| w == needle).unwrap();
    assert!(pos(b"moov") < pos(b"mdat"));

    let sps = track.sequence_parameter_set().unwrap().to_vec();
    let pps = track.picture_parameter_set().unwrap().to_vec();
    let decoded = decode_h264(&sps, &pps, &samples);
    assert_eq!(decoded.len(), FRAMES as usize);
    let mut worst = f64::INFINITY;
    for (t, (w, h, rgb)) in decoded.iter().enumerate() {
        assert_eq!((*w, *h), (W, H));
        let p = psnr(rgb, &frame(t as u32, W, H));
        worst = worst.min(p);
        if t == 0 || t == FRAMES as usize - 1 {
            eprintln!("frame {t}: PSNR {p:.2} dB");
            assert!(p > 30.0, "frame {t}: PSNR {p:.2} dB");
        }
    }
    eprintln!(
        "mp4: {} bytes for {FRAMES} frames of {W}x{H}, worst PSNR {worst:.2} dB",
        bytes.len()
    );
    assert!(worst > 30.0);
}

#[test]
fn mp4_odd_size_is_padded_to_even() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode(
        &dir.path().join("odd.mp4"),
        33,
        17,
        &VideoOptions::default(),
    );
    let (reader, samples) = read_mp4(&path);
    let track = &reader.tracks()[&1];
    assert_eq!((track.width(), track.height()), (34, 18));
    let decoded = decode_h264(
        track.sequence_parameter_set().unwrap(),
        track.picture_parameter_set().unwrap(),
        &samples,
    );
    assert_eq!(decoded.len(), FRAMES as usize);
    // The picture area (top-left 33x17) matches the input.
    let (w, _, rgb) = &decoded[0];
    let mut crop = Vec::new();
    for y in 0..17usize {
        crop.extend_from_slice(&rgb[y * *w as usize * 3..][..33 * 3]);
    }
    let p = psnr(&crop, &frame(0, 33, 17));
    assert!(p > 30.0, "PSNR {p:.2}");
}

#[test]
fn mp4_other_fps_and_keyframes() {
    let dir = tempfile::tempdir().unwrap();
    let options = VideoOptions {
        fps: 24,
        keyframe_interval: 8,
        qp: 30,
        ..VideoOptions::default()
    };
    let path = encode(&dir.path().join("k.mp4"), W, H, &options);
    let (reader, samples) = read_mp4(&path);
    let track = &reader.tracks()[&1];
    assert_eq!(track.timescale(), 24_000);
    assert!((track.frame_rate() - 24.0).abs() < 1e-9);
    let syncs: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].1).collect();
    assert_eq!(syncs, [0, 8, 16]);
}

#[test]
fn gif_frames_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode(&dir.path().join("clip.gif"), W, H, &VideoOptions::default());
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::RGBA);
    let mut dec = opts.read_info(File::open(&path).unwrap()).unwrap();
    assert_eq!((dec.width(), dec.height()), (W as u16, H as u16));
    let mut delays = Vec::new();
    let mut first = None;
    while let Some(f) = dec.read_next_frame().unwrap() {
        delays.push(f.delay);
        if first.is_none() {
            let rgb: Vec<u8> = f
                .buffer
                .chunks(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect();
            first = Some(rgb);
        }
    }
    assert_eq!(delays.len(), FRAMES as usize);
    assert!(delays.iter().all(|d| (6..=7).contains(d)), "{delays:?}");
    assert_eq!(delays[..16].iter().map(|&d| u32::from(d)).sum::<u32>(), 100);
    let p = psnr(&first.unwrap(), &frame(0, W, H));
    eprintln!("gif: first frame PSNR {p:.2} dB");
    assert!(p > 25.0, "{p}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.windows(PARAMS.len()).any(|w| w == PARAMS.as_bytes()));
}

#[test]
fn webp_frames_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode(
        &dir.path().join("clip.webp"),
        W,
        H,
        &VideoOptions::default(),
    );
    let bytes = std::fs::read(&path).unwrap();
    let dec = webp_animation::Decoder::new(&bytes).unwrap();
    assert_eq!(dec.dimensions(), (W, H));
    let frames: Vec<_> = dec.into_iter().collect();
    assert_eq!(frames.len(), FRAMES as usize);
    // libwebp reports each frame's end time.
    let ends: Vec<i32> = frames.iter().map(|f| f.timestamp()).collect();
    assert_eq!(ends[0], 63);
    assert_eq!(*ends.last().unwrap(), 1063);
    let rgb: Vec<u8> = frames[0]
        .data()
        .chunks(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    let p = psnr(&rgb, &frame(0, W, H));
    eprintln!("webp: {} bytes, first frame PSNR {p:.2} dB", bytes.len());
    assert!(p > 30.0, "{p}");
}

#[test]
fn unknown_extension_is_an_error_listing_supported() {
    let dir = tempfile::tempdir().unwrap();
    let opts = VideoOptions::default();
    for name in ["clip.avi", "clip"] {
        let err = VideoWriter::create(dir.path().join(name), W, H, &opts, &metadata())
            .err()
            .unwrap();
        assert!(matches!(err, VideoError::UnsupportedFormat { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(".mp4") && msg.contains(".gif") && msg.contains(".webp"),
            "{msg}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(
        VideoFormat::from_path(Path::new("x.Mp4")).unwrap(),
        VideoFormat::Mp4
    );
}

#[test]
fn dropped_or_empty_writer_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.mp4", "a.gif", "a.webp"] {
        let path = dir.path().join(name);
        {
            let mut w =
                VideoWriter::create(&path, W, H, &VideoOptions::default(), &metadata()).unwrap();
            w.push_frame(&frame(0, W, H)).unwrap();
            w.push_frame(&frame(1, W, H)).unwrap();
            // Dropped here, as when Ctrl-C unwinds out of the pipeline.
        }
        let w = VideoWriter::create(&path, W, H, &VideoOptions::default(), &metadata()).unwrap();
        assert!(matches!(w.finish(), Err(VideoError::NoFrames { .. })));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{name}: something was left behind"
        );
    }
}

#[test]
fn bad_frame_and_options_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.mp4");
    let mut w = VideoWriter::create(&path, W, H, &VideoOptions::default(), &metadata()).unwrap();
    let err = w.push_frame(&[0u8; 10]).unwrap_err().to_string();
    assert!(err.contains("10 bytes") && err.contains("64x48"), "{err}");
    drop(w);
    for options in [
        VideoOptions {
            fps: 0,
            ..VideoOptions::default()
        },
        VideoOptions {
            qp: 52,
            ..VideoOptions::default()
        },
    ] {
        let err = VideoWriter::create(&path, W, H, &options, &metadata())
            .err()
            .unwrap();
        assert!(matches!(err, VideoError::BadOption { .. }), "{err}");
    }
    assert!(VideoWriter::create(&path, 0, H, &VideoOptions::default(), &metadata()).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn existing_output_is_kept_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.gif");
    std::fs::write(&path, b"precious").unwrap();
    let written = encode(&path, W, H, &VideoOptions::default());
    assert_eq!(written, dir.path().join("clip_0001.gif"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    let overwrite = VideoOptions {
        overwrite: true,
        ..VideoOptions::default()
    };
    assert_eq!(encode(&path, W, H, &overwrite), path);
    assert_ne!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn sidecar_json_matches_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = encode(&dir.path().join("clip.mp4"), W, H, &VideoOptions::default());
    let sidecar = write_sidecar_json(&path, PARAMS).unwrap();
    assert_eq!(sidecar, dir.path().join("clip.mp4.json"));
    assert_eq!(sidecar, sidecar_path(&path));
    let text = std::fs::read_to_string(&sidecar).unwrap();
    let a: serde_json::Value = serde_json::from_str(&text).unwrap();
    let b: serde_json::Value = serde_json::from_str(PARAMS).unwrap();
    assert_eq!(a, b);
    let (reader, _) = read_mp4(&path);
    assert_eq!(
        reader.metadata().summary().as_deref(),
        Some(text.trim_end())
    );
}

#[test]
fn frames_dir_writes_numbered_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    let mut w = FrameDirWriter::create(&frames, W, H, false).unwrap();
    for t in 0..3 {
        let p = w.push_frame(&frame(t, W, H)).unwrap();
        assert_eq!(p, frames.join(format!("frame_000{t}.png")));
    }
    assert_eq!(w.frames(), 3);
    let mut names: Vec<String> = std::fs::read_dir(&frames)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["frame_0000.png", "frame_0001.png", "frame_0002.png"]
    );
    let img = image::open(frames.join(frame_file_name(2)))
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (W, H));
    assert_eq!(img.into_raw(), frame(2, W, H));
    // A second run into the same folder is refused unless overwriting.
    let err = FrameDirWriter::create(&frames, W, H, false).err().unwrap();
    assert!(matches!(err, VideoError::FramesExist { .. }), "{err}");
    assert!(FrameDirWriter::create(&frames, W, H, true).is_ok());
}
