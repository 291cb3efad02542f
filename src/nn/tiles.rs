//! Tiled decoding on the CPU side: the tiles covering an input and the blending of their
//! overlapping outputs (the SDXL and Wan VAEs' tiled decodes).

/// Runs `decode` on overlapping `tile` x `tile` crops of a row-major [lc, h, w] input and
/// blends its [oc, th*s, tw*s] outputs into [oc, h*s, w*s]: inside an overlap band the weights
/// ramp linearly from one tile to the next; the result is the weighted mean.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blend_tiles<E>(
    input: &[f32],
    lc: usize,
    h: usize,
    w: usize,
    tile: usize,
    overlap: usize,
    s: usize,
    oc: usize,
    mut decode: impl FnMut(&[f32], usize, usize) -> Result<Vec<f32>, E>,
) -> Result<Vec<f32>, E> {
    let (th, tw) = (tile.min(h), tile.min(w));
    let ys = tile_starts(h, th, overlap);
    let xs = tile_starts(w, tw, overlap);
    let (ih, iw) = (h * s, w * s);
    let (ph, pw) = (th * s, tw * s);
    let mut acc = vec![0f32; oc * ih * iw];
    let mut wsum = vec![0f32; ih * iw];
    // Pixels shared with the previous / next tile along one axis.
    let bands = |i: usize, starts: &[usize], len: usize| {
        let before = (i > 0).then(|| (starts[i - 1] + len - starts[i]) * s);
        let after = (i + 1 < starts.len()).then(|| (starts[i] + len - starts[i + 1]) * s);
        (before, after)
    };
    let mut part = vec![0f32; lc * th * tw];
    for (yi, &y0) in ys.iter().enumerate() {
        for (xi, &x0) in xs.iter().enumerate() {
            for c in 0..lc {
                for y in 0..th {
                    let src = (c * h + y0 + y) * w + x0;
                    part[(c * th + y) * tw..][..tw].copy_from_slice(&input[src..src + tw]);
                }
            }
            let out = decode(&part, th, tw)?;
            assert_eq!(out.len(), oc * ph * pw, "tile decoder output size");
            let (yb, ya) = bands(yi, &ys, th);
            let (xb, xa) = bands(xi, &xs, tw);
            for y in 0..ph {
                let wy = blend_weight(y, ph, yb, ya);
                for x in 0..pw {
                    let wt = wy * blend_weight(x, pw, xb, xa);
                    let (gy, gx) = (y0 * s + y, x0 * s + x);
                    wsum[gy * iw + gx] += wt;
                    for c in 0..oc {
                        acc[(c * ih + gy) * iw + gx] += wt * out[(c * ph + y) * pw + x];
                    }
                }
            }
        }
    }
    for c in 0..oc {
        for (a, &ws) in acc[c * ih * iw..][..ih * iw].iter_mut().zip(&wsum) {
            *a /= ws;
        }
    }
    Ok(acc)
}

/// Start offsets of tiles of `tile` covering `len` with at least `overlap` shared; the last
/// tile is aligned to the end.
pub(crate) fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let stride = tile - overlap;
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + tile < len)
        .collect();
    starts.push(len - tile);
    starts
}

/// Weight of pixel `p` of a tile `len` long that shares `before` pixels with the previous tile
/// and `after` with the next: a linear ramp over each shared band, 1 elsewhere.
fn blend_weight(p: usize, len: usize, before: Option<usize>, after: Option<usize>) -> f32 {
    let mut wt = 1f32;
    if let Some(b) = before.filter(|&b| b > 0) {
        wt = wt.min((p as f32 + 0.5) / b as f32);
    }
    if let Some(a) = after.filter(|&a| a > 0) {
        wt = wt.min((len as f32 - p as f32 - 0.5) / a as f32);
    }
    wt.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_starts_cover_and_align_to_the_end() {
        assert_eq!(tile_starts(8, 8, 2), vec![0]);
        assert_eq!(tile_starts(16, 8, 4), vec![0, 4, 8]);
        assert_eq!(tile_starts(14, 8, 2), vec![0, 6]);
        assert_eq!(tile_starts(20, 8, 2), vec![0, 6, 12]);
    }

    /// A stand-in decoder that is local (nearest 2x upsampling, 2 output channels): tiling must
    /// not change its output at all.
    fn upsample2(x: &[f32], h: usize, w: usize) -> Result<Vec<f32>, ()> {
        let mut out = vec![0f32; 2 * 4 * h * w];
        for c in 0..2 {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    out[(c * 2 * h + y) * 2 * w + xx] = x[(y / 2) * w + xx / 2] * (c as f32 + 1.0);
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn blending_tiles_of_a_local_decoder_is_exact() {
        let (h, w) = (13, 21);
        let x: Vec<f32> = (0..h * w).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let want = upsample2(&x, h, w).unwrap();
        for (tile, overlap) in [(8, 4), (8, 2), (5, 1), (13, 3), (32, 4)] {
            let mut calls = 0;
            let got = blend_tiles(&x, 1, h, w, tile, overlap, 2, 2, |p, th, tw| {
                calls += 1;
                upsample2(p, th, tw)
            })
            .unwrap();
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "tile {tile} overlap {overlap}: max err {err}");
            assert!(calls >= 1);
        }
    }

    #[test]
    fn blend_weights_of_neighbours_sum_to_one_over_the_overlap() {
        // Two tiles of 16 sharing 8 pixels: tile A's last 8 and tile B's first 8.
        for p in 0..8 {
            let a = blend_weight(8 + p, 16, None, Some(8));
            let b = blend_weight(p, 16, Some(8), None);
            assert!((a + b - 1.0).abs() < 1e-6, "{p}: {a} + {b}");
        }
        assert_eq!(blend_weight(3, 16, None, None), 1.0);
    }
}
