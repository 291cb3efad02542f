//! The SDXL VAE (AutoencoderKL) in ldm names (`encoder.down.N`, `decoder.up.N`).

use super::table::{Table, TensorSpec};

/// The VAE's sizes.
#[derive(Clone, Copy, Debug)]
pub struct SdxlVaeSizes {
    /// Channels per level.
    pub channels: &'static [u64],
    /// Res blocks per encoder level (one more per decoder level).
    pub res_blocks: usize,
    /// Latent channels.
    pub latent: u64,
}

impl SdxlVaeSizes {
    /// The demo's (those of tests/fixtures/sdxl_pipeline).
    pub const DEMO: SdxlVaeSizes = SdxlVaeSizes {
        channels: &[32, 32, 64, 64],
        res_blocks: 2,
        latent: 4,
    };
}

fn block(s: &mut Table, p: &str, cin: u64, cout: u64) {
    s.norm(&format!("{p}.norm1"), cin);
    s.conv2d(&format!("{p}.conv1"), cout, cin, 3);
    s.norm(&format!("{p}.norm2"), cout);
    s.conv2d(&format!("{p}.conv2"), cout, cout, 3);
    if cin != cout {
        s.conv2d(&format!("{p}.nin_shortcut"), cout, cin, 1);
    }
}

fn mid(s: &mut Table, p: &str, c: u64) {
    block(s, &format!("{p}.block_1"), c, c);
    s.norm(&format!("{p}.attn_1.norm"), c);
    for n in ["q", "k", "v", "proj_out"] {
        s.conv2d(&format!("{p}.attn_1.{n}"), c, c, 1);
    }
    block(s, &format!("{p}.block_2"), c, c);
}

/// The VAE's tensors under `p` (e.g. `first_stage_model.`).
pub fn tensors(z: &SdxlVaeSizes, p: &str) -> Vec<TensorSpec> {
    let mut t = Table::default();
    let s = &mut t;
    let ch = z.channels;
    let top = ch.len() - 1;
    s.conv2d(&format!("{p}encoder.conv_in"), ch[0], 3, 3);
    let mut cur = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..z.res_blocks {
            block(s, &format!("{p}encoder.down.{i}.block.{j}"), cur, c);
            cur = c;
        }
        if i != top {
            s.conv2d(&format!("{p}encoder.down.{i}.downsample.conv"), c, c, 3);
        }
    }
    mid(s, &format!("{p}encoder.mid"), cur);
    s.norm(&format!("{p}encoder.norm_out"), cur);
    s.conv2d(&format!("{p}encoder.conv_out"), 2 * z.latent, cur, 3);
    s.conv2d(&format!("{p}quant_conv"), 2 * z.latent, 2 * z.latent, 1);
    s.conv2d(&format!("{p}post_quant_conv"), z.latent, z.latent, 1);
    s.conv2d(&format!("{p}decoder.conv_in"), ch[top], z.latent, 3);
    mid(s, &format!("{p}decoder.mid"), ch[top]);
    let mut cur = ch[top];
    for (i, &c) in ch.iter().enumerate().rev() {
        for j in 0..=z.res_blocks {
            block(s, &format!("{p}decoder.up.{i}.block.{j}"), cur, c);
            cur = c;
        }
        if i != 0 {
            s.conv2d(&format!("{p}decoder.up.{i}.upsample.conv"), c, c, 3);
        }
    }
    s.norm(&format!("{p}decoder.norm_out"), cur);
    s.conv2d(&format!("{p}decoder.conv_out"), 3, cur, 3);
    t.into_specs()
}
