//! CLIP vision (H/14 layout) in HF transformers names.

use super::clip_text::hf_encoder_layer;
use super::table::{Init, Table, TensorSpec};

/// The vision tower's sizes.
#[derive(Clone, Copy, Debug)]
pub struct ClipVisionSizes {
    pub width: u64,
    pub layers: usize,
    /// Width of the MLP's hidden layer.
    pub ffn: u64,
    /// Patch side in pixels.
    pub patch: u64,
    /// Image side in pixels.
    pub image: u64,
    /// Width of `visual_projection` (`CLIPVisionModelWithProjection`), if any.
    pub projection: Option<u64>,
}

impl ClipVisionSizes {
    /// The demo's (that of tests/fixtures/wan_pipeline).
    pub const DEMO: ClipVisionSizes = ClipVisionSizes {
        width: 160,
        layers: 3,
        ffn: 256,
        patch: 14,
        image: 224,
        projection: None,
    };
}

/// The vision tower under `p` (`vision_model.` in HF files; none in the demo's, as Comfy's
/// file has it), and `visual_projection` with a projection.
pub fn tensors(z: &ClipVisionSizes, p: &str) -> Vec<TensorSpec> {
    let w = z.width;
    let positions = (z.image / z.patch).pow(2) + 1;
    let mut s = Table::default();
    s.push(
        format!("{p}embeddings.class_embedding"),
        &[w],
        Init::EMBEDDING,
    );
    s.push(
        format!("{p}embeddings.patch_embedding.weight"),
        &[w, 3, z.patch, z.patch],
        Init::WEIGHT,
    );
    s.push(
        format!("{p}embeddings.position_embedding.weight"),
        &[positions, w],
        Init::POSITION,
    );
    s.norm(&format!("{p}pre_layrnorm"), w);
    for i in 0..z.layers {
        hf_encoder_layer(&mut s, &format!("{p}encoder.layers.{i}"), w, z.ffn);
    }
    s.norm(&format!("{p}post_layernorm"), w);
    if let Some(proj) = z.projection {
        s.linear("visual_projection", proj, w, false);
    }
    s.into_specs()
}
