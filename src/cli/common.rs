//! What the commands share: value parsers for clap, the `--device` choice, seeds, and the
//! hints added to library errors.

use std::path::PathBuf;

use super::WithHint;
use crate::pipeline::plan::{ComputeDevice, EncoderDevice, Offload};
use crate::pipeline::PipelineError;
use crate::sampling::{SamplerKind, Scheduler};

pub fn parse_lora(s: &str) -> Result<(PathBuf, f32), String> {
    crate::pipeline::parse_lora_spec(s).map_err(|e| e.to_string())
}

pub fn parse_sampler(s: &str) -> Result<SamplerKind, String> {
    s.parse::<SamplerKind>().map_err(|e| e.to_string())
}

pub fn parse_scheduler(s: &str) -> Result<Scheduler, String> {
    s.parse::<Scheduler>().map_err(|e| e.to_string())
}

pub fn parse_budget(s: &str) -> Result<u64, String> {
    crate::pipeline::plan::parse_size(s).map_err(|e| e.to_string())
}

pub fn parse_offload(s: &str) -> Result<Offload, String> {
    s.parse()
}

pub fn parse_encoder_device(s: &str) -> Result<EncoderDevice, String> {
    s.parse()
}

/// A seed from the clock and the process (not cryptographic; printed so it can be reused).
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xFFFF_FFFF
}

/// The device `--device` names: `auto` is the first CUDA GPU of a CUDA build when one is
/// present, else the CPU.
pub fn resolve_device(spec: &str) -> anyhow::Result<ComputeDevice> {
    if spec.trim().eq_ignore_ascii_case("auto") {
        let gpu = ComputeDevice::Cuda(0);
        return Ok(if cfg!(nijigen_cuda) && gpu.ggml_device().is_ok() {
            gpu
        } else {
            ComputeDevice::Cpu
        });
    }
    let device: ComputeDevice = spec.parse().map_err(|e: String| WithHint {
        error: format!("--device {e}"),
        hint: "`nijigen devices` lists the devices of this build".into(),
    })?;
    device.ggml_device().map_err(|e| WithHint {
        error: e.to_string(),
        hint: if cfg!(nijigen_cuda) {
            "`nijigen devices` lists the GPUs the driver shows; check CUDA_VISIBLE_DEVICES".into()
        } else {
            "build with `cargo build --release --features cuda` (README, \"CUDA build\"), or \
             leave out --device to compute on the CPU"
                .into()
        },
    })?;
    Ok(device)
}

/// Adds hints to pipeline errors a user can act on.
pub fn explain(e: PipelineError) -> anyhow::Error {
    let hint = match &e {
        PipelineError::WrongModel { .. }
        | PipelineError::Mismatch(_)
        | PipelineError::NotA { .. } => "`nijigen info FILE` shows what a weight file contains",
        PipelineError::MissingComponent { .. } => {
            "a path, or a bare file name found in --models-dir, NIJIGEN_MODELS or --comfyui"
        }
        PipelineError::Request(_) => "`--help` lists each option's accepted values",
        PipelineError::EmbeddedTokenizer { .. } => {
            "the file may be damaged; --t5-tokenizer tokenizer.json|spiece.model uses another \
             tokenizer"
        }
        PipelineError::NothingToPlan { flag, .. } => {
            return anyhow::Error::new(WithHint {
                error: e.to_string(),
                hint: format!("give it with {flag}"),
            })
        }
        PipelineError::Experts { hint, .. } => hint,
        PipelineError::Plan(p) => match p.hint() {
            Some(h) => h,
            None => return anyhow::Error::new(e),
        },
        _ => return anyhow::Error::new(e),
    };
    anyhow::Error::new(WithHint {
        error: e.to_string(),
        hint: hint.into(),
    })
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// A command-line flag (its name).
    Flag(&'static str),
    /// An environment variable (its name).
    Env(&'static str),
    /// The config file.
    File(PathBuf),
    Default,
}

impl Source {
    /// "--models-dir", "NIJIGEN_MODELS", "models_dir in /x/nijigen.toml", "default".
    pub fn flag_or_key(&self, key: &str) -> String {
        match self {
            Source::Flag(f) => (*f).to_string(),
            Source::Env(e) => (*e).to_string(),
            Source::File(p) => format!("{key} in {}", p.display()),
            Source::Default => "default".into(),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Source::Flag(f) => format!("flag {f}"),
            Source::Env(e) => format!("env {e}"),
            Source::File(p) => format!("file {}", p.display()),
            Source::Default => "default".into(),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Setting<T> {
    pub fn new(value: T, source: Source) -> Setting<T> {
        Setting { value, source }
    }
}
