//! nijigen: SDXL text-to-image and Wan2.1 image-to-video on ggml.
#![deny(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod formats;
pub mod ggml;
pub mod lora;
pub mod media;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod quantize;
pub mod runtime;
pub mod sampling;
pub mod text;
pub mod workflow;
