//! The Wan2.1 DiT in the original names (`blocks.N`, 5-D patch embedding, 3-D modulation).

use super::table::{Init, Table, TensorSpec};
use crate::formats::MetaValue;

/// The DiT's sizes.
#[derive(Clone, Copy, Debug)]
pub struct WanDitSizes {
    pub dim: u64,
    /// Width of the feed-forward layer.
    pub ffn: u64,
    pub blocks: usize,
    /// Input channels: the latent's z for T2V, 2 z + 4 for I2V (latent, mask, condition).
    pub in_channels: u64,
    /// Output channels (the latent's z).
    pub out_channels: u64,
    /// Width of the text encoder's output.
    pub text_dim: u64,
    /// Sinusoids of the timestep embedding.
    pub freq_dim: u64,
    /// Width of the CLIP image features for I2V (`img_emb`, `k_img`, `v_img`); `None`: T2V.
    pub image_dim: Option<u64>,
}

impl WanDitSizes {
    /// The demo's I2V DiT (that of tests/fixtures/wan_pipeline): z 16, text umT5's width,
    /// image CLIP vision's width.
    pub const DEMO: WanDitSizes = WanDitSizes {
        dim: 256,
        ffn: 512,
        blocks: 2,
        in_channels: 2 * 16 + 4,
        out_channels: 16,
        text_dim: super::umt5::Umt5Sizes::DEMO.dim,
        freq_dim: 256,
        image_dim: Some(super::clip_vision::ClipVisionSizes::DEMO.width),
    };
}

/// The DiT's tensors (patch 1 x 2 x 2).
pub fn tensors(z: &WanDitSizes) -> Vec<TensorSpec> {
    let d = z.dim;
    let mut s = Table::default();
    s.conv3d("patch_embedding", d, z.in_channels, [1, 2, 2]);
    s.linear("text_embedding.0", d, z.text_dim, true);
    s.linear("text_embedding.2", d, d, true);
    s.linear("time_embedding.0", d, z.freq_dim, true);
    s.linear("time_embedding.2", d, d, true);
    s.linear("time_projection.1", 6 * d, d, true);
    if let Some(img) = z.image_dim {
        s.norm("img_emb.proj.0", img);
        s.linear("img_emb.proj.1", img, img, true);
        s.linear("img_emb.proj.3", d, img, true);
        s.norm("img_emb.proj.4", d);
    }
    for b in 0..z.blocks {
        let p = format!("blocks.{b}");
        s.push(format!("{p}.modulation"), &[1, 6, d], Init::MODULATION);
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                s.linear(&format!("{p}.{a}.{l}"), d, d, true);
            }
            s.push(format!("{p}.{a}.norm_q.weight"), &[d], Init::NORM);
            s.push(format!("{p}.{a}.norm_k.weight"), &[d], Init::NORM);
        }
        if z.image_dim.is_some() {
            s.linear(&format!("{p}.cross_attn.k_img"), d, d, true);
            s.linear(&format!("{p}.cross_attn.v_img"), d, d, true);
            s.push(
                format!("{p}.cross_attn.norm_k_img.weight"),
                &[d],
                Init::NORM,
            );
        }
        s.norm(&format!("{p}.norm3"), d);
        s.linear(&format!("{p}.ffn.0"), z.ffn, d, true);
        s.linear(&format!("{p}.ffn.2"), d, z.ffn, true);
    }
    s.push("head.modulation", &[1, 2, d], Init::MODULATION);
    s.linear("head.head", z.out_channels * 4, d, true);
    s.into_specs()
}

/// The GGUF metadata of city96's Wan files (F32 here).
pub fn gguf_metadata() -> Vec<(String, MetaValue)> {
    vec![
        (
            "general.architecture".into(),
            MetaValue::String("wan".into()),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
        ("general.file_type".into(), MetaValue::U32(0)),
    ]
}
