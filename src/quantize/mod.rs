//! The conversion tool: per-tensor type rules and streaming, rayon-parallel quantization.

pub mod rules;

pub use rules::{Choice, Mix, Override, Reason, Rules, Target};
