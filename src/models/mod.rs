//! Model forward passes built as ggml graphs over weight sets loaded by
//! [`crate::runtime::WeightStore`] (canonical names).

pub mod clip_text;

pub use clip_text::{ClipError, ClipLayout, ClipOutput, ClipTextConfig, ClipTextModel};
pub mod clip_vision;

pub use clip_vision::{ClipVision, ClipVisionConfig, ClipVisionError};
pub mod vae_sdxl;

pub use vae_sdxl::{SdxlVae, VaeConfig, VaeError};
pub mod wan_vae;

pub use wan_vae::{WanVae, WanVaeConfig, WanVaeError};
