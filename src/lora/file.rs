//! A LoRA file: its tensors classified by [`parse_lora_name`] and grouped by adapted module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{LoraError, LoraKey, LoraPart, LoraTarget};
use crate::formats::names::parse_lora_name;
use crate::formats::weights::WeightFile;
use crate::formats::{float, DType, TensorInfo};
use crate::ggml::GgmlType;

/// The tensors of one adapted module in one file, by part.
#[derive(Debug)]
pub(crate) struct Group {
    pub target: LoraTarget,
    /// As [`LoraKey::module`]: canonical where the stored names allow, kohya keys flattened.
    pub module: String,
    pub layout: crate::formats::names::Layout,
    /// Part -> index into the file's tensors.
    pub parts: BTreeMap<LoraPart, usize>,
}

/// An open (memory-mapped) LoRA file.
pub struct LoraFile {
    path: PathBuf,
    file: WeightFile,
    groups: Vec<Group>,
    unknown: Vec<String>,
}

impl LoraFile {
    /// Opens `path` (safetensors or GGUF) and classifies every tensor name. Names that are not
    /// LoRA tensors, or whose network is not recognised, are kept in [`LoraFile::unknown_keys`]
    /// (and logged); a file with no LoRA tensor at all is an error.
    pub fn open(path: &Path) -> Result<LoraFile, LoraError> {
        let file = WeightFile::open_path(path)?;
        let mut by_module: BTreeMap<(LoraTarget, String), Group> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (i, t) in file.tensors().iter().enumerate() {
            match parse_lora_name(&t.name) {
                Some(LoraKey {
                    target,
                    module,
                    part,
                    layout,
                }) if target != LoraTarget::Other => {
                    let g = by_module
                        .entry((target, module.clone()))
                        .or_insert_with(|| Group {
                            target,
                            module,
                            layout,
                            parts: BTreeMap::new(),
                        });
                    g.parts.insert(part, i);
                }
                _ => unknown.push(t.name.clone()),
            }
        }
        if by_module.is_empty() {
            return Err(LoraError::NotALora {
                path: path.to_path_buf(),
            });
        }
        if !unknown.is_empty() {
            tracing::warn!(
                "lora {}: {} keys are not LoRA tensors of a known network: {}",
                path.display(),
                unknown.len(),
                preview(&unknown)
            );
        }
        Ok(LoraFile {
            path: path.to_path_buf(),
            file,
            groups: by_module.into_values().collect(),
            unknown,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The networks this file adapts.
    pub fn targets(&self) -> BTreeSet<LoraTarget> {
        self.groups.iter().map(|g| g.target).collect()
    }

    /// Number of adapted modules (all targets).
    pub fn modules(&self) -> usize {
        self.groups.len()
    }

    /// Stored names that are not LoRA tensors of a recognised network.
    pub fn unknown_keys(&self) -> &[String] {
        &self.unknown
    }

    /// An error naming what the file adapts when it adapts none of `wanted` (e.g. a Wan LoRA
    /// given to an SDXL pipeline).
    pub fn check_targets(&self, wanted: &[LoraTarget]) -> Result<(), LoraError> {
        let found = self.targets();
        if wanted.iter().any(|t| found.contains(t)) {
            return Ok(());
        }
        let names = |it: &mut dyn Iterator<Item = LoraTarget>| {
            it.map(|t| t.name()).collect::<Vec<_>>().join("+")
        };
        Err(LoraError::WrongModel {
            path: self.path.clone(),
            found: names(&mut found.iter().copied()),
            wanted: names(&mut wanted.iter().copied()),
        })
    }

    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub(crate) fn info(&self, i: usize) -> &TensorInfo {
        &self.file.tensors()[i]
    }

    fn err(&self, t: &TensorInfo, what: impl Into<String>) -> LoraError {
        LoraError::Tensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            what: what.into(),
        }
    }

    /// The values of tensor `i` as (ggml type to keep, little-endian bytes): F32 and F16 as
    /// stored, every other float type converted to F32.
    pub(crate) fn data(&self, i: usize) -> Result<(GgmlType, Vec<u8>), LoraError> {
        let t = self.info(i);
        let bytes = self.file.data(t);
        match t.dtype {
            DType::Ggml(ty @ (GgmlType::F32 | GgmlType::F16)) => Ok((ty, bytes.to_vec())),
            d if d.is_float() => {
                let v = float::to_f32_vec(d, bytes).map_err(|e| self.err(t, e.to_string()))?;
                Ok((GgmlType::F32, bytemuck::cast_slice(&v).to_vec()))
            }
            d => Err(self.err(t, format!("{d} adapter tensors are not supported"))),
        }
    }

    /// The values of tensor `i` as f32.
    pub(crate) fn f32_values(&self, i: usize) -> Result<Vec<f32>, LoraError> {
        let t = self.info(i);
        if !t.dtype.is_float() {
            return Err(self.err(t, format!("{} values are not supported", t.dtype)));
        }
        float::to_f32_vec(t.dtype, self.file.data(t)).map_err(|e| self.err(t, e.to_string()))
    }

    /// The single value of tensor `i` (an alpha).
    pub(crate) fn scalar(&self, i: usize) -> Result<f32, LoraError> {
        let t = self.info(i);
        if t.numel() != 1 || !t.dtype.is_float() {
            return Err(self.err(
                t,
                format!("expected one float, found {} {:?}", t.dtype, t.shape),
            ));
        }
        let v = float::to_f32_vec(t.dtype, self.file.data(t))
            .map_err(|e| self.err(t, e.to_string()))?;
        match v.first() {
            Some(x) if x.is_finite() => Ok(*x),
            _ => Err(self.err(t, "not a finite number")),
        }
    }
}

/// The first few names of a list, for log lines.
pub(crate) fn preview(names: &[String]) -> String {
    const N: usize = 5;
    let mut s = names.iter().take(N).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > N {
        s.push_str(&format!(", ... ({} more)", names.len() - N));
    }
    s
}
