//! Model forward passes built as ggml graphs over weight sets loaded by
//! [`crate::runtime::WeightStore`] (canonical names). Each model keeps its hyperparameters, its
//! weights and the code that builds its graphs; it computes through a
//! [`crate::runtime::GraphRunner`] (backend, allocator, compute meter, graphs per shape).

pub mod clip_text;
pub mod clip_vision;
pub mod network;
pub mod place;
pub mod umt5;
pub mod unet_sdxl;
pub mod vae_sdxl;
pub mod wan_dit;
pub mod wan_vae;

pub use clip_text::{ClipError, ClipLayout, ClipOutput, ClipTextConfig, ClipTextModel};
pub use clip_vision::{ClipVision, ClipVisionConfig, ClipVisionError};
pub use network::{Memory, ModelError, Network, NETWORKS};
pub use place::Place;
pub use umt5::{Umt5Config, Umt5Encoder, Umt5Error};
pub use unet_sdxl::{Attention as UnetAttention, SdxlUnet, UnetConfig, UnetError};
pub use vae_sdxl::{SdxlVae, VaeConfig, VaeError};
pub use wan_dit::{Attention as WanAttention, WanDit, WanDitConfig, WanDitError, WanDitKind};
pub use wan_vae::{WanVae, WanVaeConfig, WanVaeError};

/// The networks by their planner names, for the pipelines.
pub use clip_text::{CLIP_G, CLIP_L};
pub use clip_vision::NETWORK as CLIP_VISION;
pub use umt5::NETWORK as T5;
pub use unet_sdxl::NETWORK as UNET;
pub use vae_sdxl::NETWORK as VAE_SDXL;
pub use wan_dit::HIGH_NOISE_NETWORK as DIT_HIGH;
pub use wan_dit::NETWORK as DIT;
pub use wan_vae::NETWORK as VAE_WAN;
