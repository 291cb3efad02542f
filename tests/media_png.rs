//! Integration tests for `nijigen::media`: PNG with A1111 metadata, image loading, naming.

use std::path::Path;

use nijigen::media::image::{load_rgb, resize_rgb};
use nijigen::media::output::unique_path;
use nijigen::media::png::{read_parameters, write_png, PARAMETERS_KEY};
use nijigen::media::{GenerationParams, LoraRef, MediaError};

fn pixels(w: u32, h: u32) -> Vec<u8> {
    (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x * 37) as u8, (y * 11) as u8, (x ^ y) as u8]
        })
        .collect()
}

fn params(prompt: &str) -> GenerationParams {
    let mut p = GenerationParams::new(prompt);
    p.negative = "lowres, \"bad\" hands".into();
    p.steps = 25;
    p.sampler = "euler_ancestral".into();
    p.scheduler = "karras".into();
    p.cfg = 6.0;
    p.seed = 123;
    p.width = 7;
    p.height = 5;
    p.model = "animagine-xl-4.0".into();
    p.loras = vec![LoraRef {
        name: "detail".into(),
        weight: 0.5,
        hash: None,
    }];
    p
}

/// Decodes with the `png` crate directly; returns pixels, size and the `parameters` text with the
/// chunk kind it came from.
fn decode(path: &Path) -> (Vec<u8>, u32, u32, String, &'static str) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    let i = reader.info();
    let (text, kind) = if let Some(t) = i
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEY)
    {
        (t.text.clone(), "tEXt")
    } else {
        let t = i
            .utf8_text
            .iter()
            .find(|t| t.keyword == PARAMETERS_KEY)
            .expect("parameters chunk");
        (t.get_text().unwrap(), "iTXt")
    };
    (buf, info.width, info.height, text, kind)
}

#[test]
fn png_pixels_and_parameters_ascii() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let rgb = pixels(7, 5);
    let p = params("1girl, solo, cherry blossoms");
    write_png(&path, &rgb, 7, 5, &p).unwrap();
    let (got, w, h, text, kind) = decode(&path);
    assert_eq!((w, h), (7, 5));
    assert_eq!(got, rgb);
    assert_eq!(kind, "tEXt");
    assert_eq!(text.as_bytes(), p.to_a1111().as_bytes());
    assert!(text.ends_with(", Version: nijigen 0.1.0"), "{text}");
    assert!(text.contains("\nSteps: 25, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 123, Size: 7x5, Model: animagine-xl-4.0"), "{text}");
    assert_eq!(GenerationParams::parse_a1111(&text).unwrap(), p);
    assert_eq!(
        read_parameters(&path).unwrap().as_deref(),
        Some(text.as_str())
    );
    // Only the output is left in the folder (the temp file was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // And it loads back through the image path.
    let (back, bw, bh) = load_rgb(&path).unwrap();
    assert_eq!((back, bw, bh), (rgb, 7, 5));
}

#[test]
fn png_parameters_utf8_uses_itxt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("utf8.png");
    let p = params("桜の下の少女, smile");
    write_png(&path, &pixels(3, 2), 3, 2, &p).unwrap();
    let (_, _, _, text, kind) = decode(&path);
    assert_eq!(kind, "iTXt");
    assert_eq!(text.as_bytes(), p.to_a1111().as_bytes());
}

#[test]
fn png_bad_buffer_is_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let err = write_png(&path, &[0u8; 10], 2, 2, &params("x")).unwrap_err();
    assert!(matches!(err, MediaError::BadBuffer { .. }));
    assert!(err.to_string().contains("bad.png"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unique_naming_with_write() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("still.png");
    let p = params("x");
    for i in 0..3 {
        let path = unique_path(&base, false);
        write_png(&path, &pixels(2, 2), 2, 2, &p).unwrap();
        let expected = match i {
            0 => "still.png",
            1 => "still_0001.png",
            _ => "still_0002.png",
        };
        assert_eq!(path.file_name().unwrap(), expected);
    }
    assert_eq!(unique_path(&base, true), base);
}

#[test]
fn loads_jpeg_webp_and_alpha_png() {
    let dir = tempfile::tempdir().unwrap();
    let rgb = vec![200u8; 8 * 8 * 3];
    let jpg = dir.path().join("in.jpg");
    image::save_buffer_with_format(
        &jpg,
        &rgb,
        8,
        8,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    let (px, w, h) = load_rgb(&jpg).unwrap();
    assert_eq!((w, h), (8, 8));
    assert!(px.iter().all(|&v| v.abs_diff(200) <= 3));

    let webp = dir.path().join("in.webp");
    let src = pixels(6, 4);
    image::save_buffer_with_format(
        &webp,
        &src,
        6,
        4,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::WebP,
    )
    .unwrap();
    assert_eq!(load_rgb(&webp).unwrap(), (src, 6, 4));

    // RGBA: opaque red, fully transparent, half-transparent black → onto white.
    let rgba = [255, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0, 128];
    let png = dir.path().join("alpha.png");
    image::save_buffer_with_format(
        &png,
        &rgba,
        3,
        1,
        image::ExtendedColorType::Rgba8,
        image::ImageFormat::Png,
    )
    .unwrap();
    let (px, _, _) = load_rgb(&png).unwrap();
    assert_eq!(px, vec![255, 0, 0, 255, 255, 255, 127, 127, 127]);

    // Wrong extension: the format is sniffed from the bytes.
    let misnamed = dir.path().join("really_png.jpg");
    std::fs::copy(&png, &misnamed).unwrap();
    assert!(load_rgb(&misnamed).is_ok());

    let small = resize_rgb(&pixels(6, 4), 6, 4, 3, 2).unwrap();
    assert_eq!(small.len(), 3 * 2 * 3);
}

#[test]
fn bad_image_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.png");
    std::fs::write(&garbage, b"this is not an image at all").unwrap();
    let err = load_rgb(&garbage).unwrap_err();
    assert!(err.to_string().contains("garbage.png"), "{err}");

    // A truncated PNG: valid signature and header, cut in the middle of the data.
    let good = dir.path().join("good.png");
    write_png(&good, &pixels(16, 16), 16, 16, &params("x")).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("truncated.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_rgb(&cut).unwrap_err();
    assert!(err.to_string().contains("truncated.png"), "{err}");

    let missing = dir.path().join("missing.webp");
    let err = load_rgb(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.webp"), "{err}");
}
