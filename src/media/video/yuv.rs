//! RGB8 to and from planar 4:2:0 Y'CbCr, BT.709 matrix, limited range.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
