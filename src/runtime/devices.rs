//! The compute devices ggml sees in this build, as `nijigen devices` lists them.

use crate::ggml::{self, DeviceKind};

/// One device: the name `--device` takes, ggml's name and description, its kind and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// "cpu", "cuda:0", ...
    pub name: String,
    /// ggml's name ("CPU", "CUDA0").
    pub ggml_name: String,
    pub description: String,
    /// "cpu", "gpu", "integratedgpu", "accelerator".
    pub kind: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl DeviceInfo {
    pub fn is_gpu(&self) -> bool {
        self.kind == "gpu"
    }
}

/// The name `--device` takes for a ggml device: ggml names CUDA devices "CUDA0", "CUDA1";
/// `--device` spells them "cuda:0".
fn spec_name(ggml_name: &str, kind: DeviceKind) -> String {
    let lower = ggml_name.to_ascii_lowercase();
    match lower.strip_prefix("cuda") {
        Some(idx) if kind != DeviceKind::Cpu && idx.chars().all(|c| c.is_ascii_digit()) => {
            format!("cuda:{idx}")
        }
        _ => lower,
    }
}

/// Every device of this build, in ggml's order.
pub fn list() -> Vec<DeviceInfo> {
    ggml::devices()
        .iter()
        .map(|d| {
            let (free, total) = d.memory();
            DeviceInfo {
                name: spec_name(&d.name(), d.kind()),
                ggml_name: d.name(),
                description: d.description(),
                kind: format!("{:?}", d.kind()).to_lowercase(),
                free_bytes: free,
                total_bytes: total,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_devices_take_the_device_flag_spelling() {
        assert_eq!(spec_name("CUDA0", DeviceKind::Gpu), "cuda:0");
        assert_eq!(spec_name("CUDA12", DeviceKind::Gpu), "cuda:12");
        assert_eq!(spec_name("CPU", DeviceKind::Cpu), "cpu");
    }

    #[test]
    fn the_cpu_is_always_listed() {
        let devs = list();
        assert!(
            devs.iter().any(|d| d.name == "cpu" && d.kind == "cpu"),
            "{devs:?}"
        );
    }
}
