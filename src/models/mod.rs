//! Model forward passes built as ggml graphs over weight sets loaded by
//! [`crate::runtime::WeightStore`] (canonical names).

pub mod clip_text;

pub use clip_text::{ClipError, ClipLayout, ClipOutput, ClipTextConfig, ClipTextModel};
pub mod vae_sdxl;

pub use vae_sdxl::{SdxlVae, VaeConfig, VaeError};
