//! The SDXL UNet in ldm names (`input_blocks.N`, `middle_block`, `output_blocks.N`).

use super::table::{Table, TensorSpec};

/// The UNet's sizes.
#[derive(Clone, Copy, Debug)]
pub struct UnetSizes {
    /// Latent channels (in and out).
    pub latent: u64,
    /// Channels per level.
    pub channels: &'static [u64],
    /// Transformer depth per level (0: no attention); the middle block has the last level's.
    pub depth: &'static [usize],
    /// Res blocks per level on the way down (one more on the way up).
    pub res_blocks: usize,
    /// Width of the cross-attention context (the text encoders' hidden states).
    pub context: u64,
    /// Width of the added condition `y` of `label_emb` (pooled text + size embeddings).
    pub adm: u64,
}

impl UnetSizes {
    /// The demo's (those of tests/fixtures/sdxl_pipeline): context CLIP-L + bigG, `y` the
    /// bigG projection and 6 size ids of 8 sinusoids each.
    pub const DEMO: UnetSizes = UnetSizes {
        latent: 4,
        channels: &[32, 64, 128],
        depth: &[0, 1, 2],
        res_blocks: 2,
        context: super::clip_text::ClipTextSizes::DEMO_L.width
            + super::clip_text::ClipTextSizes::DEMO_G.width,
        adm: super::clip_text::ClipTextSizes::DEMO_G.projection.unwrap() + 6 * 8,
    };
}

fn resblock(s: &mut Table, p: &str, cin: u64, cout: u64, temb: u64) {
    s.norm(&format!("{p}.in_layers.0"), cin);
    s.conv2d(&format!("{p}.in_layers.2"), cout, cin, 3);
    s.linear(&format!("{p}.emb_layers.1"), cout, temb, true);
    s.norm(&format!("{p}.out_layers.0"), cout);
    s.conv2d(&format!("{p}.out_layers.3"), cout, cout, 3);
    if cin != cout {
        s.conv2d(&format!("{p}.skip_connection"), cout, cin, 1);
    }
}

fn transformer(s: &mut Table, p: &str, c: u64, depth: usize, ctx: u64) {
    s.norm(&format!("{p}.norm"), c);
    s.linear(&format!("{p}.proj_in"), c, c, true);
    for d in 0..depth {
        let b = format!("{p}.transformer_blocks.{d}");
        for (attn, kv) in [("attn1", c), ("attn2", ctx)] {
            s.linear(&format!("{b}.{attn}.to_q"), c, c, false);
            s.linear(&format!("{b}.{attn}.to_k"), c, kv, false);
            s.linear(&format!("{b}.{attn}.to_v"), c, kv, false);
            s.linear(&format!("{b}.{attn}.to_out.0"), c, c, true);
        }
        s.linear(&format!("{b}.ff.net.0.proj"), 8 * c, c, true);
        s.linear(&format!("{b}.ff.net.2"), c, 4 * c, true);
        for n in ["norm1", "norm2", "norm3"] {
            s.norm(&format!("{b}.{n}"), c);
        }
    }
    s.linear(&format!("{p}.proj_out"), c, c, true);
}

/// The UNet's tensors under `p` (e.g. `model.diffusion_model.`).
pub fn tensors(z: &UnetSizes, p: &str) -> Vec<TensorSpec> {
    let mut t = Table::default();
    let s = &mut t;
    let ch0 = z.channels[0];
    let temb = 4 * ch0;
    let ctx = z.context;
    let top = z.channels.len() - 1;
    s.linear(&format!("{p}time_embed.0"), temb, ch0, true);
    s.linear(&format!("{p}time_embed.2"), temb, temb, true);
    s.linear(&format!("{p}label_emb.0.0"), temb, z.adm, true);
    s.linear(&format!("{p}label_emb.0.2"), temb, temb, true);
    s.conv2d(&format!("{p}input_blocks.0.0"), ch0, z.latent, 3);
    let mut skips = vec![ch0];
    let mut cur = ch0;
    let mut k = 1;
    for (lvl, &c) in z.channels.iter().enumerate() {
        for _ in 0..z.res_blocks {
            resblock(s, &format!("{p}input_blocks.{k}.0"), cur, c, temb);
            cur = c;
            if z.depth[lvl] > 0 {
                transformer(s, &format!("{p}input_blocks.{k}.1"), c, z.depth[lvl], ctx);
            }
            skips.push(c);
            k += 1;
        }
        if lvl != top {
            s.conv2d(&format!("{p}input_blocks.{k}.0.op"), c, c, 3);
            skips.push(c);
            k += 1;
        }
    }
    resblock(s, &format!("{p}middle_block.0"), cur, cur, temb);
    transformer(s, &format!("{p}middle_block.1"), cur, z.depth[top], ctx);
    resblock(s, &format!("{p}middle_block.2"), cur, cur, temb);
    let mut k = 0;
    for (lvl, &c) in z.channels.iter().enumerate().rev() {
        for i in 0..=z.res_blocks {
            let skip = skips.pop().unwrap_or(c);
            resblock(s, &format!("{p}output_blocks.{k}.0"), cur + skip, c, temb);
            cur = c;
            let mut sub = 1;
            if z.depth[lvl] > 0 {
                transformer(s, &format!("{p}output_blocks.{k}.1"), c, z.depth[lvl], ctx);
                sub = 2;
            }
            if lvl != 0 && i == z.res_blocks {
                s.conv2d(&format!("{p}output_blocks.{k}.{sub}.conv"), c, c, 3);
            }
            k += 1;
        }
    }
    s.norm(&format!("{p}out.0"), ch0);
    s.conv2d(&format!("{p}out.2"), z.latent, ch0, 3);
    t.into_specs()
}
