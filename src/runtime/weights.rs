//! The weight store: one open weight file, its detected architecture, and loading of its
//! tensors under their canonical names into a [`TensorSet`]. On the CPU, tensors of a type ggml
//! computes with are used in place from the memory map; only tensors that must change (f8/f64
//! to a ggml type, fused or transposed layouts) are copied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::formats::names::{self, Detection, NameMap};
use crate::formats::weights::WeightFile;
use crate::formats::{float, DType, FormatError, TensorInfo};
use crate::ggml::{GgmlError, GgmlType, TensorSet};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{}: {source}", path.display())]
    Ggml {
        path: PathBuf,
        #[source]
        source: GgmlError,
    },
}

/// A weight file with its architecture detected.
pub struct WeightStore {
    file: WeightFile,
    detection: Detection,
}

/// How one canonical tensor is made from stored ones.
#[derive(Debug)]
enum Source<'a> {
    Direct {
        info: &'a TensorInfo,
        shape: Vec<u64>,
    },
    Transposed(&'a TensorInfo),
    Parts(Vec<(usize, &'a TensorInfo)>, usize),
}

impl WeightStore {
    pub fn open(paths: &[PathBuf]) -> Result<WeightStore, LoadError> {
        let file = WeightFile::open(paths)?;
        let detection = names::detect(file.tensors(), file.metadata());
        Ok(WeightStore { file, detection })
    }

    pub fn open_path(path: &Path) -> Result<WeightStore, LoadError> {
        WeightStore::open(&[path.to_path_buf()])
    }

    pub fn file(&self) -> &WeightFile {
        &self.file
    }

    pub fn detection(&self) -> &Detection {
        &self.detection
    }

    fn path_of(&self, t: &TensorInfo) -> PathBuf {
        self.file.paths().get(t.shard).cloned().unwrap_or_default()
    }

    fn err(&self, t: &TensorInfo, what: impl Into<String>) -> LoadError {
        LoadError::Tensor {
            path: self.path_of(t),
            tensor: t.name.clone(),
            what: what.into(),
        }
    }

    /// Canonical name -> how to build it, for every stored tensor the name maps recognise.
    fn sources(&self) -> BTreeMap<String, Source<'_>> {
        let mut out: BTreeMap<String, Source<'_>> = BTreeMap::new();
        // An unrecognised file is loaded under its stored names.
        let identity = self.detection.architecture == names::Architecture::Unknown;
        for t in self.file.tensors() {
            let map = if identity {
                Some(NameMap::Rename(t.name.clone()))
            } else {
                self.detection.normalize(&t.name)
            };
            let Some(map) = map else { continue };
            match map {
                NameMap::Rename(n) => {
                    out.insert(
                        n,
                        Source::Direct {
                            info: t,
                            shape: t.shape.clone(),
                        },
                    );
                }
                NameMap::Reshape(n) => {
                    let mut shape = t.shape.clone();
                    while shape.len() < 4 {
                        shape.push(1);
                    }
                    out.insert(n, Source::Direct { info: t, shape });
                }
                NameMap::Transpose(n) => {
                    out.insert(n, Source::Transposed(t));
                }
                NameMap::SplitOf {
                    target,
                    index,
                    parts,
                } => {
                    let e = out
                        .entry(target)
                        .or_insert_with(|| Source::Parts(Vec::new(), parts));
                    if let Source::Parts(v, _) = e {
                        v.push((index, t));
                    }
                }
            }
        }
        out
    }

    /// Canonical names of the tensors this file provides.
    pub fn canonical_names(&self) -> Vec<String> {
        self.sources().into_keys().collect()
    }

    /// Loads every canonical tensor whose name passes `filter` into a [`TensorSet`] for the CPU.
    pub fn load_cpu(&self, filter: impl Fn(&str) -> bool) -> Result<TensorSet<'_>, LoadError> {
        let sources: Vec<(String, Source<'_>)> = self
            .sources()
            .into_iter()
            .filter(|(n, _)| filter(n))
            .collect();
        let gerr = |t: &TensorInfo, e: GgmlError| LoadError::Ggml {
            path: self.path_of(t),
            source: e,
        };
        let mut set = TensorSet::new(sources.len()).map_err(|e| LoadError::Ggml {
            path: PathBuf::new(),
            source: e,
        })?;
        for (name, src) in &sources {
            match src {
                Source::Direct { info, .. } if info.numel() == 0 => {
                    // ggml has no empty tensors; nothing computes with them.
                    tracing::debug!(tensor = %info.name, "skipping empty tensor");
                }
                Source::Direct { info, shape } => {
                    let ne = ggml_ne(shape).map_err(|w| self.err(info, w))?;
                    match info.dtype {
                        DType::Ggml(ty) if usable_in_place(ty) => {
                            let region = self.file.map(info.shard);
                            set.add_mapped(name, ty, &ne, region, info.offset as usize)
                                .map_err(|e| gerr(info, e))?;
                        }
                        _ => {
                            let (ty, bytes) = self.converted(info)?;
                            set.add_owned(name, ty, &ne, &bytes)
                                .map_err(|e| gerr(info, e))?;
                        }
                    }
                }
                Source::Transposed(info) => {
                    if info.shape.len() != 2 {
                        return Err(self.err(info, "only 2-D tensors can be transposed"));
                    }
                    let (r, c) = (info.shape[0] as usize, info.shape[1] as usize);
                    let vals = self.f32_values(info)?;
                    let mut out = vec![0f32; r * c];
                    for i in 0..r {
                        for j in 0..c {
                            out[j * r + i] = vals[i * c + j];
                        }
                    }
                    set.add_owned(
                        name,
                        GgmlType::F32,
                        &[r as i64, c as i64],
                        bytemuck::cast_slice(&out),
                    )
                    .map_err(|e| gerr(info, e))?;
                }
                Source::Parts(parts, n) => {
                    let mut parts: Vec<&(usize, &TensorInfo)> = parts.iter().collect();
                    parts.sort_by_key(|(i, _)| *i);
                    let first = parts[0].1;
                    if parts.len() != *n || parts.iter().enumerate().any(|(k, (i, _))| *i != k) {
                        return Err(self.err(
                            first,
                            format!("needs {n} parts to make '{name}', found {}", parts.len()),
                        ));
                    }
                    let same = |t: &TensorInfo| {
                        t.dtype == first.dtype && t.shape.get(1..) == first.shape.get(1..)
                    };
                    if let Some((_, bad)) = parts.iter().find(|(_, t)| !same(t)) {
                        return Err(self.err(
                            bad,
                            format!("its parts of '{name}' differ in type or shape"),
                        ));
                    }
                    let mut shape = first.shape.clone();
                    shape[0] *= *n as u64;
                    let ne = ggml_ne(&shape).map_err(|w| self.err(first, w))?;
                    // Concatenating along the outermost dim is concatenating the bytes.
                    let (ty, bytes) = match first.dtype {
                        DType::Ggml(ty) if usable_in_place(ty) => (
                            ty,
                            parts
                                .iter()
                                .flat_map(|(_, t)| self.file.data(t).iter().copied())
                                .collect(),
                        ),
                        d => {
                            let mut all = Vec::new();
                            for (_, t) in &parts {
                                all.extend(self.converted(t)?.1);
                            }
                            (convert_target(d), all)
                        }
                    };
                    set.add_owned(name, ty, &ne, &bytes)
                        .map_err(|e| gerr(first, e))?;
                }
            }
        }
        Ok(set)
    }

    fn f32_values(&self, t: &TensorInfo) -> Result<Vec<f32>, LoadError> {
        let n = t.numel() as usize;
        let mut out = vec![0f32; n];
        let bytes = self.file.data(t);
        match t.dtype {
            DType::Ggml(q) if q.is_quantized() => crate::ggml::dequantize(q, bytes, &mut out)
                .map_err(|e| self.err(t, e.to_string()))?,
            d => float::to_f32(d, bytes, &mut out).map_err(|e| self.err(t, e.to_string()))?,
        }
        Ok(out)
    }

    /// A tensor ggml cannot use as stored, converted: f8 -> f16, f64 -> f32.
    fn converted(&self, t: &TensorInfo) -> Result<(GgmlType, Vec<u8>), LoadError> {
        let ty = convert_target(t.dtype);
        let vals = self.f32_values(t)?;
        let mut out = vec![0u8; vals.len() * ty.type_size() as usize];
        float::from_f32(DType::Ggml(ty), &vals, &mut out)
            .map_err(|e| self.err(t, e.to_string()))?;
        Ok((ty, out))
    }
}

/// Types ggml computes with directly from the file.
fn usable_in_place(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::F64 | GgmlType::I64 | GgmlType::Q8_1 | GgmlType::Q8_K
    )
}

fn convert_target(d: DType) -> GgmlType {
    match d {
        DType::F8E4M3 | DType::F8E5M2 => GgmlType::F16,
        _ => GgmlType::F32,
    }
}

/// ggml `ne` for a PyTorch shape: reversed; a scalar is [1]; 5 dims fold the two outermost
/// (city96's 5-D `patch_embedding` [5120, 36, 1, 2, 2] becomes [2, 2, 1, 36*5120], which is
/// exactly ggml's conv_3d kernel layout [KW, KH, KD, IC*OC]).
pub fn ggml_ne(shape: &[u64]) -> Result<Vec<i64>, String> {
    let mut ne: Vec<i64> = shape.iter().rev().map(|&d| d as i64).collect();
    if ne.is_empty() {
        ne.push(1);
    }
    if ne.len() == 5 {
        let outer = ne[3].checked_mul(ne[4]).ok_or("dims overflow")?;
        ne.truncate(3);
        ne.push(outer);
    }
    if ne.len() > 4 {
        return Err(format!("{} dims (at most 5)", shape.len()));
    }
    if ne.iter().any(|&n| n <= 0) {
        return Err(format!("empty dim in shape {shape:?}"));
    }
    Ok(ne)
}
