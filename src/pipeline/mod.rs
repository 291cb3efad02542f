//! Generation pipelines: the models of a stage loaded from the files users have, run in order
//! (text encoders, sampler over the denoiser, VAE), with progress reported to the caller.

pub mod sdxl;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::formats::names::Architecture;
use crate::ggml::GgmlError;
use crate::media::MediaError;
use crate::models::{ClipError, UnetError, VaeError};
use crate::runtime::weights::LoadError;
use crate::sampling::SamplingError;

/// Why a pipeline could not run. Messages name the file and say what to pass instead.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: is {found}, not {wanted}", path.display())]
    WrongModel {
        path: PathBuf,
        found: String,
        wanted: &'static str,
    },
    /// A component the stage needs is in none of the given files.
    #[error("{what}: pass {flag} FILE")]
    MissingComponent { what: String, flag: &'static str },
    #[error("{0}")]
    Mismatch(String),
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error(transparent)]
    Nn(#[from] crate::nn::NnError),
    #[error(transparent)]
    Clip(#[from] ClipError),
    #[error(transparent)]
    Unet(#[from] UnetError),
    #[error(transparent)]
    Vae(#[from] VaeError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Ggml(#[from] GgmlError),
    #[error("stopped by the user")]
    Interrupted,
}

/// How the models compute.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// CPU threads for ggml (0: all cores).
    pub threads: usize,
    /// Set (e.g. by a Ctrl-C handler) to stop at the next step with
    /// [`PipelineError::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RunOptions {
    /// Whether the caller asked to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// [`PipelineError::Interrupted`] when the caller asked to stop.
    pub fn check_cancel(&self) -> Result<(), PipelineError> {
        if self.cancelled() {
            Err(PipelineError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// The thread count to give ggml.
    pub fn cpu_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What a pipeline reports while it runs.
#[derive(Clone, Debug)]
pub enum Event {
    /// A stage starts: "load", "encode", "sample", "decode".
    Stage { name: &'static str },
    /// A component was opened (bytes of its weights).
    Loaded {
        component: &'static str,
        path: PathBuf,
        bytes: u64,
    },
    /// A sampling step finished (`step` counts from 1).
    Step {
        step: usize,
        total: usize,
        sigma: f32,
        elapsed: Duration,
    },
    /// An image (or frame) was decoded (`index` counts from 1).
    Decoded { index: usize, total: usize },
}

/// Wall time spent per stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub load_s: f64,
    pub encode_s: f64,
    pub sample_s: f64,
    pub decode_s: f64,
}

/// A short human name for an architecture, for "is X, not Y" errors.
pub(crate) fn describe(arch: Architecture, summary: &str) -> String {
    if summary.is_empty() {
        arch.name().to_string()
    } else {
        format!("{} ({summary})", arch.name())
    }
}
