//! The Wan2.1 VAE in the original names (`encoder.downsamples.N`, `decoder.upsamples.N`).

use super::table::{Init, Table, TensorSpec};

/// The VAE's sizes.
#[derive(Clone, Copy, Debug)]
pub struct WanVaeSizes {
    /// Channels of the first level; level i has `base * mult[i]`.
    pub base: u64,
    /// Latent channels.
    pub z: u64,
    pub mult: &'static [u64],
    /// Residual blocks per encoder level (one more per decoder level).
    pub res_blocks: usize,
    /// Whether each encoder resample also halves the frames (the decoder mirrors it).
    pub temporal_down: &'static [bool],
}

impl WanVaeSizes {
    /// The demo's (that of tests/fixtures/wan_pipeline).
    pub const DEMO: WanVaeSizes = WanVaeSizes {
        base: 32,
        z: 16,
        mult: &[1, 2, 4, 4],
        res_blocks: 2,
        temporal_down: &[false, true, true],
    };
}

fn residual(s: &mut Table, p: &str, cin: u64, cout: u64) {
    s.push(format!("{p}.residual.0.gamma"), &[cin, 1, 1, 1], Init::NORM);
    s.conv3d(&format!("{p}.residual.2"), cout, cin, [3, 3, 3]);
    s.push(
        format!("{p}.residual.3.gamma"),
        &[cout, 1, 1, 1],
        Init::NORM,
    );
    s.conv3d(&format!("{p}.residual.6"), cout, cout, [3, 3, 3]);
    if cin != cout {
        s.conv3d(&format!("{p}.shortcut"), cout, cin, [1, 1, 1]);
    }
}

fn middle(s: &mut Table, p: &str, c: u64) {
    residual(s, &format!("{p}.middle.0"), c, c);
    s.push(format!("{p}.middle.1.norm.gamma"), &[c, 1, 1], Init::NORM);
    s.conv2d(&format!("{p}.middle.1.to_qkv"), 3 * c, c, 1);
    s.conv2d(&format!("{p}.middle.1.proj"), c, c, 1);
    residual(s, &format!("{p}.middle.2"), c, c);
}

/// The VAE's tensors.
pub fn tensors(sz: &WanVaeSizes) -> Vec<TensorSpec> {
    let (base, z, mult) = (sz.base, sz.z, sz.mult);
    let mut t = Table::default();
    let s = &mut t;
    let top = mult.len() - 1;
    // Encoder: dims [1] + mult, a resample after every level but the last.
    let dims: Vec<u64> = std::iter::once(1)
        .chain(mult.iter().copied())
        .map(|m| m * base)
        .collect();
    s.conv3d("encoder.conv1", dims[0], 3, [3, 3, 3]);
    let mut n = 0;
    for i in 0..mult.len() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        for _ in 0..sz.res_blocks {
            residual(s, &format!("encoder.downsamples.{n}"), cin, cout);
            cin = cout;
            n += 1;
        }
        if i != top {
            let p = format!("encoder.downsamples.{n}");
            s.conv2d(&format!("{p}.resample.1"), cout, cout, 3);
            if sz.temporal_down[i] {
                s.conv3d(&format!("{p}.time_conv"), cout, cout, [3, 1, 1]);
            }
            n += 1;
        }
    }
    let c = dims[dims.len() - 1];
    middle(s, "encoder", c);
    s.push("encoder.head.0.gamma", &[c, 1, 1, 1], Init::NORM);
    s.conv3d("encoder.head.2", 2 * z, c, [3, 3, 3]);
    s.conv3d("conv1", 2 * z, 2 * z, [1, 1, 1]);
    s.conv3d("conv2", z, z, [1, 1, 1]);
    // Decoder: dims [mult[-1]] + reversed mult; levels after the first take half the channels
    // (the upsampling conv halves them); temporal upsampling mirrors the encoder.
    let dims: Vec<u64> = std::iter::once(mult[top])
        .chain(mult.iter().rev().copied())
        .map(|m| m * base)
        .collect();
    s.conv3d("decoder.conv1", dims[0], z, [3, 3, 3]);
    middle(s, "decoder", dims[0]);
    let mut n = 0;
    for i in 0..mult.len() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        if i > 0 {
            cin /= 2;
        }
        for _ in 0..=sz.res_blocks {
            residual(s, &format!("decoder.upsamples.{n}"), cin, cout);
            cin = cout;
            n += 1;
        }
        if i != top {
            let p = format!("decoder.upsamples.{n}");
            s.conv2d(&format!("{p}.resample.1"), cout / 2, cout, 3);
            if sz.temporal_down[top - 1 - i] {
                s.conv3d(&format!("{p}.time_conv"), 2 * cout, cout, [3, 1, 1]);
            }
            n += 1;
        }
    }
    let c = dims[dims.len() - 1];
    s.push("decoder.head.0.gamma", &[c, 1, 1, 1], Init::NORM);
    s.conv3d("decoder.head.2", 3, c, [3, 3, 3]);
    t.into_specs()
}
