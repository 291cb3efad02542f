//! Finding model files: a path as given, else a bare name (or relative path) looked up in the
//! models folder (`--models-dir`, `NIJIGEN_MODELS`, `models_dir` in nijigen.toml) and in a
//! ComfyUI installation (`--comfyui`, `NIJIGEN_COMFYUI`, `comfyui`), in the folders where
//! ComfyUI keeps that kind of file, in ComfyUI's own order.

use std::path::{Path, PathBuf};

use super::common::Setting;
use super::WithHint;

/// What kind of file a flag names; it decides the ComfyUI folders searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// SDXL-family checkpoints and UNets.
    Checkpoint,
    /// Wan DiTs (ComfyUI's UNET loaders: diffusion_models, then the older unet).
    Diffusion,
    /// CLIP-L, bigG, umT5 and their tokenizers.
    TextEncoder,
    ClipVision,
    Vae,
    Lora,
}

impl Slot {
    /// The folders under `ComfyUI/models/`, searched in this order.
    pub fn comfy_dirs(self) -> &'static [&'static str] {
        match self {
            Slot::Checkpoint => &["checkpoints", "diffusion_models", "unet"],
            Slot::Diffusion => &["diffusion_models", "unet", "checkpoints"],
            Slot::TextEncoder => &["text_encoders", "clip"],
            Slot::ClipVision => &["clip_vision"],
            Slot::Vae => &["vae"],
            Slot::Lora => &["loras"],
        }
    }
}

/// Where bare names are looked up.
#[derive(Clone, Debug, Default)]
pub struct Search {
    pub models_dir: Option<Setting<PathBuf>>,
    pub comfyui: Option<Setting<PathBuf>>,
}

impl Search {
    /// The folders searched for `slot`, each with the setting it comes from: the models
    /// folder itself, then its ComfyUI-style subfolders, then the ComfyUI folders.
    pub fn folders(&self, slot: Slot) -> Vec<(PathBuf, String)> {
        let mut v = Vec::new();
        if let Some(m) = &self.models_dir {
            v.push((m.value.clone(), m.source.flag_or_key("models_dir")));
            for d in slot.comfy_dirs() {
                v.push((m.value.join(d), m.source.flag_or_key("models_dir")));
            }
        }
        if let Some(c) = &self.comfyui {
            for d in slot.comfy_dirs() {
                v.push((
                    c.value.join("models").join(d),
                    c.source.flag_or_key("comfyui"),
                ));
            }
        }
        v
    }

    /// `path` if it exists; else the first `folder/path` of [`Self::folders`] that does; else
    /// an error naming every place looked in.
    pub fn resolve(&self, path: &Path, slot: Slot, flag: &str) -> anyhow::Result<PathBuf> {
        if path.exists() {
            return Ok(path.to_path_buf());
        }
        let folders = if path.is_absolute() {
            Vec::new()
        } else {
            self.folders(slot)
        };
        if let Some((dir, _)) = folders.iter().find(|(d, _)| d.join(path).exists()) {
            let found = dir.join(path);
            tracing::debug!(flag, found = %found.display(), "model file found");
            return Ok(found);
        }
        let mut places = vec!["the working directory".to_string()];
        places.extend(
            folders
                .iter()
                .map(|(d, from)| format!("{} ({from})", d.display())),
        );
        let error = if path.is_absolute() {
            format!("{flag} {}: no such file", path.display())
        } else {
            format!(
                "{flag} {}: not found in {}",
                path.display(),
                places.join(", ")
            )
        };
        Err(WithHint {
            error,
            hint: "give a path, or a file name in --models-dir DIR (or NIJIGEN_MODELS) or in a \
                   ComfyUI folder (--comfyui DIR); `nijigen config` shows the folders in use"
                .into(),
        }
        .into())
    }

    /// [`Self::resolve`] for an optional file.
    pub fn resolve_opt(
        &self,
        path: Option<&Setting<PathBuf>>,
        slot: Slot,
        flag: &str,
    ) -> anyhow::Result<Option<PathBuf>> {
        path.map(|p| self.resolve(&p.value, slot, flag)).transpose()
    }

    /// [`Self::resolve`] for LoRA lists.
    pub fn loras(
        &self,
        loras: &[(PathBuf, f32)],
        flag: &str,
    ) -> anyhow::Result<Vec<(PathBuf, f32)>> {
        loras
            .iter()
            .map(|(p, w)| Ok((self.resolve(p, Slot::Lora, flag)?, *w)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::common::Source;

    #[test]
    fn bare_names_are_found_in_the_slot_folders_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let comfy = dir.path().join("ComfyUI");
        for d in ["unet", "diffusion_models", "vae"] {
            std::fs::create_dir_all(comfy.join("models").join(d)).unwrap();
        }
        std::fs::write(comfy.join("models/unet/wan.gguf"), b"u").unwrap();
        std::fs::write(comfy.join("models/diffusion_models/wan.gguf"), b"d").unwrap();
        let s = Search {
            models_dir: None,
            comfyui: Some(Setting::new(comfy.clone(), Source::Flag("--comfyui"))),
        };
        let found = s
            .resolve(Path::new("wan.gguf"), Slot::Diffusion, "--video-model")
            .unwrap();
        assert_eq!(found, comfy.join("models/diffusion_models/wan.gguf"));
        let e = s
            .resolve(Path::new("wan.gguf"), Slot::Vae, "--video-vae")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("--video-vae wan.gguf: not found in the working directory"));
        assert!(msg.contains(&format!(
            "{} (--comfyui)",
            comfy.join("models/vae").display()
        )));
        assert!(!msg.contains("diffusion_models"), "{msg}");
    }
}
