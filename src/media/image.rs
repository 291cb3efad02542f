//! Loading input images (PNG, JPEG, WebP) as RGB8, resizing and cropping.

use std::path::Path;

use ::image::{imageops, ImageBuffer, ImageReader, Limits, Rgb, RgbImage};

use super::{check_rgb, MediaError, Result};

/// Largest width or height accepted from an input file.
pub const MAX_SIDE: u32 = 16384;

/// Loads a PNG, JPEG or WebP file (format sniffed from the bytes, not the extension) as
/// row-major RGB8, returning `(pixels, width, height)`.
///
/// Transparency is composited onto **white**: transparent backgrounds of anime art and line art
/// are conventionally white, and black would darken antialiased edges. 16-bit inputs are reduced
/// to 8 bits. Images wider or taller than [`MAX_SIDE`] are rejected.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<(Vec<u8>, u32, u32)> {
    let path = path.as_ref();
    let dec_err = |source| MediaError::Decode {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|source| MediaError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| MediaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let img = reader.decode().map_err(dec_err)?;
    let (w, h) = (img.width(), img.height());
    let rgb = if img.color().has_alpha() {
        let rgba = img.into_rgba8();
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for px in rgba.pixels() {
            let a = u32::from(px[3]);
            for c in 0..3 {
                // c * a + 255 * (1 - a), rounded.
                let v = (u32::from(px[c]) * a + 255 * (255 - a) + 127) / 255;
                out.push(v as u8);
            }
        }
        out
    } else {
        img.into_rgb8().into_raw()
    };
    check_rgb(&path.display().to_string(), &rgb, w, h)?;
    Ok((rgb, w, h))
}

fn to_buffer(what: &str, src: &[u8], w: u32, h: u32) -> Result<RgbImage> {
    check_rgb(what, src, w, h)?;
    // check_rgb guarantees the length, so from_raw cannot fail.
    ImageBuffer::<Rgb<u8>, Vec<u8>>::from_raw(w, h, src.to_vec()).ok_or(MediaError::BadSize {
        what: what.to_string(),
        width: w,
        height: h,
    })
}

/// Resizes RGB8 pixels from `w`x`h` to `nw`x`nh` with a Lanczos3 filter (no aspect handling:
/// crop first with [`center_crop_to_aspect`] to avoid stretching).
pub fn resize_rgb(src: &[u8], w: u32, h: u32, nw: u32, nh: u32) -> Result<Vec<u8>> {
    let img = to_buffer("resize source", src, w, h)?;
    if nw == 0 || nh == 0 || nw > MAX_SIDE || nh > MAX_SIDE {
        return Err(MediaError::BadSize {
            what: "resize target".into(),
            width: nw,
            height: nh,
        });
    }
    if (nw, nh) == (w, h) {
        return Ok(img.into_raw());
    }
    Ok(imageops::resize(&img, nw, nh, imageops::FilterType::Lanczos3).into_raw())
}

/// Crops the largest centered region with aspect ratio `aw:ah`, returning
/// `(pixels, width, height)`.
pub fn center_crop_to_aspect(
    src: &[u8],
    w: u32,
    h: u32,
    aw: u32,
    ah: u32,
) -> Result<(Vec<u8>, u32, u32)> {
    check_rgb("crop source", src, w, h)?;
    if aw == 0 || ah == 0 {
        return Err(MediaError::BadSize {
            what: "crop aspect".into(),
            width: aw,
            height: ah,
        });
    }
    // Compare w/h with aw/ah in integers: w*ah vs h*aw.
    let (cw, ch) = if u64::from(w) * u64::from(ah) > u64::from(h) * u64::from(aw) {
        // Too wide: keep the height.
        let cw = (u64::from(h) * u64::from(aw) / u64::from(ah)).max(1) as u32;
        (cw, h)
    } else {
        let ch = (u64::from(w) * u64::from(ah) / u64::from(aw)).max(1) as u32;
        (w, ch)
    };
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    let mut out = Vec::with_capacity(cw as usize * ch as usize * 3);
    let stride = w as usize * 3;
    for y in y0..y0 + ch {
        let start = y as usize * stride + x0 as usize * 3;
        out.extend_from_slice(&src[start..start + cw as usize * 3]);
    }
    Ok((out, cw, ch))
}

/// Center-crops to the aspect of `nw`x`nh` and resizes to exactly that size: the usual way to
/// fit an img2img / I2V input to the generation size without stretching.
pub fn fit_rgb(src: &[u8], w: u32, h: u32, nw: u32, nh: u32) -> Result<Vec<u8>> {
    let (c, cw, ch) = center_crop_to_aspect(src, w, h, nw.max(1), nh.max(1))?;
    resize_rgb(&c, cw, ch, nw, nh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                [x as u8, y as u8, (x + y) as u8]
            })
            .collect()
    }

    #[test]
    fn crop_wide_and_tall() {
        let src = ramp(8, 4);
        let (c, cw, ch) = center_crop_to_aspect(&src, 8, 4, 1, 1).unwrap();
        assert_eq!((cw, ch), (4, 4));
        assert_eq!(&c[0..3], &[2, 0, 2]); // starts at x = 2
        let (_, cw, ch) = center_crop_to_aspect(&src, 8, 4, 1, 2).unwrap();
        assert_eq!((cw, ch), (2, 4));
        let (c, cw, ch) = center_crop_to_aspect(&src, 8, 4, 4, 1).unwrap();
        assert_eq!((cw, ch), (8, 2));
        assert_eq!(&c[0..3], &[0, 1, 1]); // starts at y = 1
        let (c, cw, ch) = center_crop_to_aspect(&src, 8, 4, 2, 1).unwrap();
        assert_eq!((cw, ch, c), (8, 4, src));
    }

    #[test]
    fn resize_sizes_and_constant() {
        let src = vec![100u8; 16 * 8 * 3];
        let out = resize_rgb(&src, 16, 8, 5, 3).unwrap();
        assert_eq!(out.len(), 5 * 3 * 3);
        assert!(out.iter().all(|&v| v == 100));
        assert_eq!(fit_rgb(&ramp(10, 7), 10, 7, 4, 4).unwrap().len(), 48);
        assert!(resize_rgb(&src, 16, 8, 0, 3).is_err());
        assert!(resize_rgb(&src[1..], 16, 8, 5, 3).is_err());
    }
}
