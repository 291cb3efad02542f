//! LoRA-family adapters applied at run time, so that quantized base weights stay quantized.
//!
//! For a base layer `y = W x (+ b)` each adapter adds a term to the output instead of changing
//! `W`:
//!
//! ```text
//! low rank   y += s * up(down(x))      s = multiplier * alpha / rank   (rank = rows of down)
//!                                      s = multiplier                  (no alpha stored)
//! diff       y += multiplier * (D x)   D the full weight difference (ComfyUI `.diff`)
//! diff_b     y += multiplier * d       d the bias difference (`.diff_b`)
//! ```
//!
//! which equals running the merged weight `W' = W + s * up @ down` (kohya-ss
//! `networks/lora.py`, `LoRAModule.forward`: `org_forward(x) + lora_up(lora_down(x)) *
//! multiplier * scale` with `scale = alpha / lora_dim`; ComfyUI `comfy/lora.py` /
//! `comfy/weight_adapter/lora.py` merge `alpha / rank` the same way, and PEFT's `lora_A`/`lora_B`
//! files carry no alpha, i.e. alpha = rank). Convolutions (LyCORIS LoCon): `down` is a
//! convolution [rank, IC, KH, KW] with the base layer's stride and padding and `up` a 1x1
//! convolution [OC, rank, 1, 1]; the merged kernel is `(up.reshape(OC, r) @ down.reshape(r, -1))
//! .reshape(OC, IC, KH, KW)`.
//!
//! Several files may be applied at once, each with its multiplier: their terms add. A term for
//! one third of open_clip's fused `in_proj_weight` (kohya `lora_te2_..._self_attn_q_proj`) is
//! added to that third of the projection's output.
//!
//! Not supported (reported per key, never silently dropped): LoHa (`hada_*`), LoKr (`lokr_*`),
//! LoCon Tucker `lora_mid`, DoRA (`dora_scale`).
//!
//! Use: open each file with [`LoraFile::open`], build one [`Adapters`] per model instance with
//! [`Adapters::build`] (the model's weight set and prefix, its [`LoraTarget`], and the
//! (file, multiplier) pairs), then attach them to the model (`SdxlUnet::set_adapters`,
//! `ClipTextModel::set_adapters`, `WanDit::set_adapters`). `nn::linear`, `nn::linear_with` and
//! `nn::conv2d` add the terms of the weight they use.

mod adapters;
mod file;
mod resolve;

use std::path::PathBuf;

pub use crate::formats::names::{LoraKey, LoraKind, LoraPart, LoraTarget};
pub use adapters::{AdapterReport, Adapters};
pub use file::LoraFile;
pub use resolve::unflatten_diffusers_unet;

use crate::formats::FormatError;
use crate::ggml::GgmlError;

/// Why a LoRA could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{}: no LoRA tensors (no key ends in lora_down/lora_up/lora_A/lora_B/diff/...)", path.display())]
    NotALora { path: PathBuf },
    #[error("{}: adapts {found}, not {wanted} (a LoRA for another model?)", path.display())]
    WrongModel {
        path: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    /// `what` names the adapted weight, its shape, the key's shape and the expected one.
    #[error("{}: '{key}' {what}", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("bad --lora value '{0}': expected FILE or FILE:WEIGHT")]
    Spec(String),
    #[error("LoRA: {0}")]
    Ggml(#[from] GgmlError),
}

/// Parses a `--lora` value: `FILE` (multiplier 1) or `FILE:WEIGHT`. A suffix after the last ':'
/// that is not a number is part of the path (`C:\loras\x.safetensors`).
pub fn parse_lora_spec(spec: &str) -> Result<(PathBuf, f32), LoraError> {
    if let Some((path, w)) = spec.rsplit_once(':') {
        if let Ok(m) = w.trim().parse::<f32>() {
            if path.is_empty() || !m.is_finite() {
                return Err(LoraError::Spec(spec.to_string()));
            }
            return Ok((PathBuf::from(path), m));
        }
    }
    if spec.is_empty() {
        return Err(LoraError::Spec(spec.to_string()));
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[cfg(test)]
mod tests;
