//! Runtime: turning weight files into ggml tensors (and, later, devices, memory accounting, the
//! VAE/VRAM planner and streaming).

pub mod plan;
pub mod weights;

pub use weights::{LoadError, WeightStore};
