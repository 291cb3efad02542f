//! The conversion tool: per-tensor type rules and streaming, rayon-parallel quantization.

pub mod convert;
pub mod rules;

pub use convert::{
    convert, plan, ConvertError, ConvertOptions, ConvertSummary, PlannedTensor, Progress,
};
pub use rules::{Choice, Mix, Override, Reason, Rules, Target};
