//! What a weight file holds, in words and as JSON: [`crate::formats::names::detect`] recognises
//! the file and its components, and each component's network describes itself from its model
//! config ([`Network::describe`] on the tensor table: no weight is read). `nijigen info` prints
//! this; "is X, not Y" errors quote its summary.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::PipelineError;
use crate::formats::names::{wan, Architecture, Detection, SDXL_CHECKPOINT_PREFIXES};
use crate::formats::weights::WeightFile;
use crate::models::network::{self, Description, Network};
use crate::runtime::WeightStore;

/// One recognised component and its description.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ComponentInfo {
    pub architecture: Architecture,
    /// Prefix of its canonical names ("" for a one-network file).
    pub prefix: String,
    /// One line: the network's summary, or its architecture and why its config could not be
    /// read.
    pub summary: String,
    /// The model config (`null` when it could not be read).
    pub config: Value,
    /// Why the config could not be read (a broken or partial file).
    pub error: Option<String>,
}

/// What [`inspect`] found.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Inspection {
    /// One line, e.g. "Wan2.1 I2V DiT, dim 5120, 40 blocks, 40 heads, ffn 13824".
    pub summary: String,
    /// The model config of a one-network file; for a checkpoint one object per component
    /// (`unet`, `clip_l`, `clip_g`, `vae`); a LoRA's adapter config; `null` for unknown files.
    pub config: Value,
    /// Every component described (the main one first); empty for LoRAs and unknown files.
    pub components: Vec<ComponentInfo>,
}

/// Describes every component [`crate::formats::names::detect`] found in `store`. Never fails:
/// a component whose config cannot be read is described by its architecture and the error.
pub fn inspect(store: &WeightStore) -> Inspection {
    let det = store.detection();
    match det.architecture {
        Architecture::UNKNOWN => Inspection {
            summary: det.summary.clone(),
            config: Value::Null,
            components: Vec::new(),
        },
        Architecture::LORA => Inspection {
            summary: det.summary.clone(),
            config: serde_json::to_value(&det.lora).unwrap_or(Value::Null),
            components: Vec::new(),
        },
        Architecture::SDXL_CHECKPOINT => checkpoint(store, det),
        arch => {
            // Only the main component maps onto canonical names (without prefix).
            let components = vec![component(store, det, arch, "")];
            let main = components.first();
            let mut summary = main.map_or_else(
                || det.architecture.description().to_string(),
                |c| c.summary.clone(),
            );
            if matches!(arch, Architecture::WAN_DIT_I2V | Architecture::WAN_DIT_T2V) {
                wan22_by_name(store, &mut summary);
            }
            if det.hint_disagrees {
                if let Some(h) = &det.hint {
                    summary.push_str(&format!(" (general.architecture says \"{h}\")"));
                }
            }
            Inspection {
                summary,
                config: main.map_or(Value::Null, |c| c.config.clone()),
                components,
            }
        }
    }
}

/// What only a Wan DiT's file name tells: a Wan2.2 T2V-A14B expert (a Wan2.1 T2V DiT's shapes)
/// and which expert of the pair a file is.
fn wan22_by_name(store: &WeightStore, summary: &mut String) {
    let Some(path) = store.file().paths().first() else {
        return;
    };
    if summary.starts_with("Wan T2V DiT") && wan::is_wan22_by_name(path) {
        *summary = summary.replacen("Wan T2V DiT", "Wan2.2 T2V-A14B expert", 1);
    }
    if summary.starts_with("Wan2.2 ") {
        if let Some(e) = wan::expert_by_name(path) {
            summary.push_str(&format!(", the {} expert by its name", e.words()));
        }
    }
}

/// "SDXL checkpoint: <unet>; <CLIP-L>; <bigG>; <VAE>", "no ..." for a missing one.
fn checkpoint(store: &WeightStore, det: &Detection) -> Inspection {
    // Canonical checkpoint names carry the ldm component prefixes.
    let components: Vec<ComponentInfo> = det
        .components
        .iter()
        .map(|c| {
            let prefix = SDXL_CHECKPOINT_PREFIXES
                .iter()
                .find(|(a, _)| *a == c.architecture)
                .map_or(c.prefix.as_str(), |(_, p)| p);
            component(store, det, c.architecture, prefix)
        })
        .collect();
    let slots = [
        (Architecture::SDXL_UNET, "unet", "no UNet"),
        (Architecture::CLIP_L, "clip_l", "no CLIP-L"),
        (Architecture::CLIP_G, "clip_g", "no bigG"),
        (Architecture::SDXL_VAE, "vae", "no VAE"),
    ];
    let mut parts = Vec::new();
    let mut config = Map::new();
    config.insert("kind".into(), json!("sdxl_checkpoint"));
    for (arch, key, missing) in slots {
        match components.iter().find(|c| c.architecture == arch) {
            Some(c) => {
                parts.push(c.summary.clone());
                config.insert(key.into(), c.config.clone());
            }
            None => {
                parts.push(missing.to_string());
                config.insert(key.into(), Value::Null);
            }
        }
    }
    Inspection {
        summary: format!("SDXL checkpoint: {}", parts.join("; ")),
        config: Value::Object(config),
        components,
    }
}

/// One component through its network's [`Network::describe`], with the file's markers.
fn component(
    store: &WeightStore,
    det: &Detection,
    arch: Architecture,
    prefix: &str,
) -> ComponentInfo {
    let described = match network::for_architecture(arch) {
        Some(net) => describe_with(store, net, prefix),
        None => Err(format!("no network runs {}", arch.name())),
    };
    let (mut summary, config, error) = match described {
        Ok(d) => (d.summary, d.config, None),
        Err(e) => (
            format!("{} (cannot read its config: {e})", arch.description()),
            Value::Null,
            Some(e),
        ),
    };
    if arch == Architecture::SDXL_UNET && error.is_none() {
        if det.v_prediction {
            summary.push_str(", v-prediction");
        }
        if det.zero_terminal_snr {
            summary.push_str(", zero terminal SNR");
        }
    }
    ComponentInfo {
        architecture: arch,
        prefix: prefix.to_string(),
        summary,
        config,
        error,
    }
}

fn describe_with(store: &WeightStore, net: &Network, prefix: &str) -> Result<Description, String> {
    let set = store
        .load_meta(|n| n.starts_with(prefix))
        .map_err(|e| e.to_string())?;
    (net.describe)(&set, prefix).map_err(|e| e.to_string())
}

/// A weight file opened for inspection: its tensor table, what it is, and its description.
pub struct Inspected {
    store: WeightStore,
    pub inspection: Inspection,
}

impl Inspected {
    pub fn file(&self) -> &WeightFile {
        self.store.file()
    }

    pub fn detection(&self) -> &Detection {
        self.store.detection()
    }

    /// ComfyUI's scaled fp8 layers, if the file has them.
    pub fn fp8_scaled(&self) -> Option<&crate::formats::quant::Fp8Scaled> {
        self.store.fp8_scaled()
    }

    /// Whether the file carries its own sentencepiece tokenizer (`spiece_model`).
    pub fn has_embedded_tokenizer(&self) -> bool {
        self.store.embedded_spiece().is_some()
    }
}

/// Opens a weight file (or the shards of one) and [`inspect`]s it.
pub fn inspect_files(paths: &[PathBuf]) -> Result<Inspected, PipelineError> {
    let store = WeightStore::open(paths)?;
    let inspection = inspect(&store);
    Ok(Inspected { store, inspection })
}

/// "wan-dit-i2v (Wan2.1 I2V DiT, dim 256, ...)": what a file is, for "is X, not Y" errors.
pub(crate) fn found(store: &WeightStore) -> String {
    let arch = store.detection().architecture;
    let summary = inspect(store).summary;
    if summary.is_empty() {
        arch.name().to_string()
    } else {
        format!("{} ({summary})", arch.name())
    }
}
