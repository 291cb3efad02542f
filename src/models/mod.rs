//! Model forward passes built as ggml graphs over weight sets loaded by
//! [`crate::runtime::WeightStore`] (canonical names). Each model keeps its hyperparameters, its
//! weights and the code that builds its graphs; it computes through a
//! [`crate::runtime::GraphRunner`] (backend, allocator, compute meter, graphs per shape).

pub mod clip_text;
pub mod clip_vision;
pub mod estimate;
pub mod umt5;
pub mod unet_sdxl;
pub mod vae_sdxl;
pub mod wan_dit;
pub mod wan_vae;

pub use clip_text::{ClipError, ClipLayout, ClipOutput, ClipTextConfig, ClipTextModel};
pub use clip_vision::{ClipVision, ClipVisionConfig, ClipVisionError};
pub use umt5::{Umt5Config, Umt5Encoder, Umt5Error};
pub use unet_sdxl::{Attention as UnetAttention, SdxlUnet, UnetConfig, UnetError};
pub use vae_sdxl::{SdxlVae, VaeConfig, VaeError};
pub use wan_dit::{Attention as WanAttention, WanDit, WanDitConfig, WanDitError};
pub use wan_vae::{WanVae, WanVaeConfig, WanVaeError};
