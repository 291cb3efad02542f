//! CLIP text encoders: CLIP-L in HF transformers names (`text_model.`), OpenCLIP bigG in
//! open_clip names (`transformer.resblocks.N`, fused `in_proj`).

use super::table::{Init, Table, TensorSpec};

/// A CLIP text encoder's sizes.
#[derive(Clone, Copy, Debug)]
pub struct ClipTextSizes {
    pub width: u64,
    pub layers: usize,
    /// Width of the MLP's hidden layer.
    pub ffn: u64,
    pub vocab: u64,
    pub positions: u64,
    /// Width of the pooled output's projection (`text_projection`), if the model has one.
    pub projection: Option<u64>,
}

impl ClipTextSizes {
    /// The demo's CLIP-L (that of tests/fixtures/sdxl_pipeline).
    pub const DEMO_L: ClipTextSizes = ClipTextSizes {
        width: 64,
        layers: 3,
        ffn: 128,
        vocab: 49408,
        positions: 77,
        projection: None,
    };
    /// The demo's bigG (that of tests/fixtures/sdxl_pipeline).
    pub const DEMO_G: ClipTextSizes = ClipTextSizes {
        width: 128,
        layers: 3,
        ffn: 256,
        vocab: 49408,
        positions: 77,
        projection: Some(96),
    };
}

/// One HF CLIP encoder layer (text or vision) `{p}.*`.
pub(super) fn hf_encoder_layer(s: &mut Table, p: &str, w: u64, ffn: u64) {
    s.norm(&format!("{p}.layer_norm1"), w);
    for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        s.linear(&format!("{p}.self_attn.{n}"), w, w, true);
    }
    s.norm(&format!("{p}.layer_norm2"), w);
    s.linear(&format!("{p}.mlp.fc1"), ffn, w, true);
    s.linear(&format!("{p}.mlp.fc2"), w, ffn, true);
}

/// HF `CLIPTextModel` (`CLIPTextModelWithProjection` with a projection) under `p`.
pub fn hf(z: &ClipTextSizes, p: &str) -> Vec<TensorSpec> {
    let mut s = Table::default();
    let (w, t) = (z.width, format!("{p}text_model."));
    s.push(
        format!("{t}embeddings.token_embedding.weight"),
        &[z.vocab, w],
        Init::EMBEDDING,
    );
    s.push(
        format!("{t}embeddings.position_embedding.weight"),
        &[z.positions, w],
        Init::POSITION,
    );
    for i in 0..z.layers {
        hf_encoder_layer(&mut s, &format!("{t}encoder.layers.{i}"), w, z.ffn);
    }
    s.norm(&format!("{t}final_layer_norm"), w);
    if let Some(proj) = z.projection {
        s.linear(&format!("{p}text_projection"), proj, w, false);
    }
    s.into_specs()
}

/// open_clip's `TextTransformer` (as in SDXL checkpoints) under `p`; the projection is
/// required.
pub fn open_clip(z: &ClipTextSizes, p: &str) -> Vec<TensorSpec> {
    let mut s = Table::default();
    let w = z.width;
    s.push(
        format!("{p}token_embedding.weight"),
        &[z.vocab, w],
        Init::EMBEDDING,
    );
    s.push(
        format!("{p}positional_embedding"),
        &[z.positions, w],
        Init::POSITION,
    );
    for i in 0..z.layers {
        let b = format!("{p}transformer.resblocks.{i}");
        s.norm(&format!("{b}.ln_1"), w);
        s.push(
            format!("{b}.attn.in_proj_weight"),
            &[3 * w, w],
            Init::WEIGHT,
        );
        s.push(format!("{b}.attn.in_proj_bias"), &[3 * w], Init::BIAS);
        s.linear(&format!("{b}.attn.out_proj"), w, w, true);
        s.norm(&format!("{b}.ln_2"), w);
        s.linear(&format!("{b}.mlp.c_fc"), z.ffn, w, true);
        s.linear(&format!("{b}.mlp.c_proj"), w, z.ffn, true);
    }
    s.norm(&format!("{p}ln_final"), w);
    let proj = z
        .projection
        .expect("open_clip's text model has a projection");
    s.push(format!("{p}text_projection"), &[w, proj], Init::WEIGHT);
    s.push(format!("{p}logit_scale"), &[], Init::constant(100f32.ln()));
    s.into_specs()
}
