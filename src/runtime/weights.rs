//! The weight store: one open weight file, its detected architecture, and loading of its
//! tensors under their canonical names into a [`TensorSet`]. On the CPU, tensors of a type ggml
//! computes with are used in place from the memory map; only tensors that must change (f8/f64
//! to a ggml type, fused or transposed layouts) are copied. [`WeightStore::load_meta`] gives
//! the same tensors without data, for sizing graphs from the tensor tables alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::formats::names::{self, Detection, NameMap};
use crate::formats::quant::{self, Fp8Scaled};
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

/// What loading does with fp8 weights (ComfyUI's fp8 files, scaled or not), which ggml cannot
/// compute with as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fp8Load {
    /// Converted at load to F16 (`f16(fp8 * scale)`: the exact weight, rounded once to F16),
    /// held in RAM while the set lives: twice the file's bytes.
    #[default]
    F16,
    /// Converted at load to Q8_0 where its rows allow (a multiple of 32 values), else F16:
    /// about the file's bytes of RAM, within Q8_0's rounding of the weights.
    Q8_0,
    /// Left in the file and made as F16, tensor by tensor, when copied to the device (a
    /// deferred tensor): no copy in RAM. For a component placed on the device only: the CPU
    /// cannot compute with a deferred tensor.
    OnUpload,
    /// As [`Fp8Load::OnUpload`], made as Q8_0 where the rows allow (else F16): half of F16's
    /// device memory and uploads, within Q8_0's rounding (when F16 does not fit the budget).
    OnUploadQ8_0,
}

impl Fp8Load {
    /// "F16 at load", "Q8_0 at load", "F16 at upload".
    pub fn describe(self) -> &'static str {
        match self {
            Fp8Load::F16 => "F16 at load",
            Fp8Load::Q8_0 => "Q8_0 at load",
            Fp8Load::OnUpload => "F16 at upload, tensor by tensor",
            Fp8Load::OnUploadQ8_0 => "Q8_0 at upload, tensor by tensor",
        }
    }
}

/// A weight file with its architecture detected.
pub struct WeightStore {
    file: WeightFile,
    detection: Detection,
    /// ComfyUI's scaled fp8 layers (their scales are applied wherever a weight is read).
    fp8: Option<Fp8Scaled>,
    /// Where [`WeightStore::load_meta`] points its tensors.
    placeholder: OnceLock<memmap2::Mmap>,
    /// Shapes city96's tools recorded for tensors stored in another shape, by stored name
    /// (only where the element counts agree).
    orig_shapes: std::collections::HashMap<String, Vec<u64>>,
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
        let fp8 = Fp8Scaled::read(&file)?;
        let orig_shapes = names::orig_shapes(file.metadata())
            .into_iter()
            .filter(|(n, shape)| {
                file.tensor(n)
                    .is_some_and(|t| t.numel() == shape.iter().product::<u64>())
            })
            .map(|(n, shape)| (n.to_string(), shape))
            .collect();
        Ok(WeightStore {
            file,
            detection,
            fp8,
            placeholder: OnceLock::new(),
            orig_shapes,
        })
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

    /// The file's scaled fp8 layers (ComfyUI), if it is such a file.
    pub fn fp8_scaled(&self) -> Option<&Fp8Scaled> {
        self.fp8.as_ref()
    }

    /// The embedded sentencepiece tokenizer (ComfyUI's `spiece_model`, a U8 tensor holding the
    /// serialized model), if the file carries one.
    pub fn embedded_spiece(&self) -> Option<&[u8]> {
        self.file.spiece_model().map(|t| self.file.data(t))
    }

    /// Bytes stored tensor `t` takes once loaded ([`WeightStore::load_cpu`]): its stored size
    /// where ggml uses it in place, its conversion's size otherwise (fp8 -> F16: twice the
    /// file's bytes), 0 for what is not loaded as a weight (scales, markers, U8 data). From the
    /// tensor table only.
    pub fn loaded_size(&self, t: &TensorInfo) -> u64 {
        if t.dtype == DType::U8 || quant::is_aux_name(&t.name) || t.numel() == 0 {
            return 0;
        }
        self.out_type(t).bytes_for(t.numel()).unwrap_or(t.size)
    }

    /// Refuses to load a file with layers in a quantization format nijigen cannot load (it
    /// opens, so that `nijigen info` can describe it).
    fn check_loadable(&self) -> Result<(), LoadError> {
        match &self.fp8 {
            Some(q) => Ok(q.check_loadable(&self.file)?),
            None => Ok(()),
        }
    }

    /// Whether stored tensor `t` carries a scale (it is then always converted).
    fn scaled(&self, t: &TensorInfo) -> bool {
        self.fp8
            .as_ref()
            .is_some_and(|q| q.scale_of(&t.name).is_some())
    }

    /// The PyTorch shape of stored tensor `t`: the one city96's tools recorded where they
    /// stored it in another shape (`comfy.gguf.orig_shape`), else as stored.
    fn shape_of<'t>(&'t self, t: &'t TensorInfo) -> &'t [u64] {
        self.orig_shapes.get(&t.name).map_or(&t.shape, |s| s)
    }

    /// The ggml type stored tensor `t` is loaded as: itself where ggml uses it in place and no
    /// scale applies, else its conversion. A quantized tensor whose true rows are not whole
    /// blocks (city96 stores SD1/SDXL tensors as rows of 256 for the K-quants) is dequantized
    /// to F16: its blocks run along the stored rows, in the same element order.
    fn out_type(&self, t: &TensorInfo) -> GgmlType {
        if self.scaled(t) {
            return convert_target(t.dtype);
        }
        match t.dtype {
            DType::Ggml(q) if q.is_quantized() && usable_in_place(q) => {
                let row = self.shape_of(t).last().copied().unwrap_or(1);
                if row % q.block_size() == 0 {
                    q
                } else {
                    GgmlType::F16
                }
            }
            d => loaded_type(d),
        }
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
        let identity = self.detection.architecture == names::Architecture::UNKNOWN;
        for t in self.file.tensors() {
            // Raw bytes (an embedded tokenizer, quantization JSON) and scales are not weights.
            if t.dtype == DType::U8 || quant::is_aux_name(&t.name) {
                continue;
            }
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
                            shape: self.shape_of(t).to_vec(),
                        },
                    );
                }
                NameMap::Reshape(n) => {
                    let mut shape = self.shape_of(t).to_vec();
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

    /// The ggml type and shape `load_cpu` gives the canonical tensor `name` made from `src`
    /// (`None`: an empty tensor, left out), checking everything that can be checked without
    /// reading data.
    fn target(
        &self,
        name: &str,
        src: &Source<'_>,
    ) -> Result<Option<(GgmlType, Vec<i64>)>, LoadError> {
        match src {
            Source::Direct { info, .. } if info.numel() == 0 => Ok(None),
            Source::Direct { info, shape } => {
                let ne = ggml_ne(shape).map_err(|w| self.err(info, w))?;
                Ok(Some((self.out_type(info), ne)))
            }
            Source::Transposed(info) => {
                let shape = self.shape_of(info);
                if shape.len() != 2 {
                    return Err(self.err(info, "only 2-D tensors can be transposed"));
                }
                Ok(Some((
                    GgmlType::F32,
                    vec![shape[0] as i64, shape[1] as i64],
                )))
            }
            Source::Parts(parts, n) => {
                let parts = sorted_parts(parts);
                let first = parts[0].1;
                if parts.len() != *n || parts.iter().enumerate().any(|(k, (i, _))| *i != k) {
                    return Err(self.err(
                        first,
                        format!("needs {n} parts to make '{name}', found {}", parts.len()),
                    ));
                }
                let same = |t: &TensorInfo| {
                    t.dtype == first.dtype
                        && self.shape_of(t).get(1..) == self.shape_of(first).get(1..)
                };
                if let Some((_, bad)) = parts.iter().find(|(_, t)| !same(t)) {
                    return Err(self.err(
                        bad,
                        format!("its parts of '{name}' differ in type or shape"),
                    ));
                }
                let shape = fused_shape(self.shape_of(first), *n)
                    .map_err(|w| self.err(first, format!("part of '{name}': {w}")))?;
                let ne = ggml_ne(&shape).map_err(|w| self.err(first, w))?;
                // Parts with their own scales are each converted.
                let ty = if parts.iter().any(|(_, t)| self.scaled(t)) {
                    convert_target(first.dtype)
                } else {
                    self.out_type(first)
                };
                Ok(Some((ty, ne)))
            }
        }
    }

    fn filtered(&self, filter: impl Fn(&str) -> bool) -> Vec<(String, Source<'_>)> {
        self.sources()
            .into_iter()
            .filter(|(n, _)| filter(n))
            .collect()
    }

    /// Loads every canonical tensor whose name passes `filter` into a [`TensorSet`] for the
    /// CPU, fp8 weights converted to F16 ([`WeightStore::load_with`]).
    pub fn load_cpu(&self, filter: impl Fn(&str) -> bool) -> Result<TensorSet<'_>, LoadError> {
        self.load_with(filter, Fp8Load::F16)
    }

    /// Loads every canonical tensor whose name passes `filter` into a [`TensorSet`], fp8
    /// weights as `fp8` says.
    pub fn load_with(
        &self,
        filter: impl Fn(&str) -> bool,
        fp8: Fp8Load,
    ) -> Result<TensorSet<'_>, LoadError> {
        self.check_loadable()?;
        let sources = self.filtered(filter);
        let gerr = |t: &TensorInfo, e: GgmlError| LoadError::Ggml {
            path: self.path_of(t),
            source: e,
        };
        let mut set = TensorSet::new(sources.len()).map_err(|e| LoadError::Ggml {
            path: PathBuf::new(),
            source: e,
        })?;
        for (name, src) in &sources {
            let Some((ty, ne)) = self.target(name, src)? else {
                // ggml has no empty tensors; nothing computes with them.
                tracing::debug!(tensor = %name, "skipping empty tensor");
                continue;
            };
            match src {
                Source::Direct { info, .. } => match info.dtype {
                    DType::Ggml(t) if usable_in_place(t) && !self.scaled(info) && ty == t => {
                        let region = self.file.map(info.shard);
                        set.add_mapped(name, ty, &ne, region, info.offset as usize)
                            .map_err(|e| gerr(info, e))?;
                    }
                    DType::F8E4M3 | DType::F8E5M2 => {
                        self.add_fp8(&mut set, name, info, &ne, fp8)?;
                    }
                    _ => {
                        let bytes = self.converted(info)?;
                        set.add_owned(name, ty, &ne, &bytes)
                            .map_err(|e| gerr(info, e))?;
                        note_converted(bytes.len());
                    }
                },
                Source::Transposed(info) => {
                    let (r, c) = (ne[0] as usize, ne[1] as usize);
                    let vals = self.f32_values(info)?;
                    let mut out = vec![0f32; r * c];
                    for i in 0..r {
                        for j in 0..c {
                            out[j * r + i] = vals[i * c + j];
                        }
                    }
                    set.add_owned(name, ty, &ne, bytemuck::cast_slice(&out))
                        .map_err(|e| gerr(info, e))?;
                    note_converted(out.len() * 4);
                }
                Source::Parts(parts, _) => {
                    let parts = sorted_parts(parts);
                    let first = parts[0].1;
                    // Concatenating along the outermost dim is concatenating the bytes.
                    let scaled = parts.iter().any(|(_, t)| self.scaled(t));
                    let bytes: Vec<u8> = match first.dtype {
                        DType::Ggml(t) if usable_in_place(t) && !scaled => parts
                            .iter()
                            .flat_map(|(_, t)| self.file.data(t).iter().copied())
                            .collect(),
                        _ => {
                            let mut all = Vec::new();
                            for (_, t) in &parts {
                                all.extend(self.converted(t)?);
                            }
                            all
                        }
                    };
                    set.add_owned(name, ty, &ne, &bytes)
                        .map_err(|e| gerr(first, e))?;
                    note_converted(bytes.len());
                }
            }
        }
        Ok(set)
    }

    /// Adds fp8 tensor `info` as `name` (ggml shape `ne`) to `set`, converted as `how` says.
    fn add_fp8<'s>(
        &'s self,
        set: &mut TensorSet<'s>,
        name: &str,
        info: &'s TensorInfo,
        ne: &[i64],
        how: Fp8Load,
    ) -> Result<(), LoadError> {
        let gerr = |e: GgmlError| LoadError::Ggml {
            path: self.path_of(info),
            source: e,
        };
        let n = info.numel() as usize;
        match how {
            Fp8Load::OnUpload | Fp8Load::OnUploadQ8_0 => {
                // Check now what can be checked, so that the upload does not fail later.
                self.scale(info)?;
                let (ty, row) = if how == Fp8Load::OnUploadQ8_0 && q8_rows(ne) {
                    (GgmlType::Q8_0, ne[0] as usize)
                } else {
                    (GgmlType::F16, 1)
                };
                let region = self.placeholder(ty.bytes_for(n as u64).unwrap_or(u64::MAX))?;
                let fill = move |out: &mut [u8]| {
                    self.fp8_into(info, ty, row, out).map_err(|e| e.to_string())
                };
                set.add_deferred(name, ty, ne, region, Box::new(fill))
                    .map_err(gerr)?;
            }
            Fp8Load::Q8_0 if q8_rows(ne) => {
                let size = GgmlType::Q8_0.bytes_for(n as u64).unwrap_or(0) as usize;
                let mut q = vec![0u8; size];
                self.fp8_into(info, GgmlType::Q8_0, ne[0] as usize, &mut q)?;
                set.add_owned(name, GgmlType::Q8_0, ne, &q).map_err(gerr)?;
                note_converted(q.len());
            }
            Fp8Load::Q8_0 | Fp8Load::F16 => {
                let mut out = vec![0u8; 2 * n];
                self.fp8_to_f16(info, &mut out)?;
                set.add_owned(name, GgmlType::F16, ne, &out).map_err(gerr)?;
                note_converted(out.len());
            }
        }
        Ok(())
    }

    /// The scale of stored weight `t`, checked against it (one for a weight without one).
    fn scale(&self, t: &TensorInfo) -> Result<quant::Scale, LoadError> {
        let Some(name) = self.fp8.as_ref().and_then(|q| q.scale_of(&t.name)) else {
            return quant::Scale::new(t, vec![1.0], &[]).map_err(|e| self.err(t, e));
        };
        let s = self
            .file
            .tensor(name)
            .ok_or_else(|| self.err(t, format!("its scale \"{name}\" is missing")))?;
        let values = self.f32_values_raw(s)?;
        quant::Scale::new(t, values, &s.shape).map_err(|e| self.err(t, format!("\"{name}\": {e}")))
    }

    /// Writes fp8 tensor `t` times its scale as F16 into `out` (exactly its F16 bytes), in
    /// chunks on all cores: no copy of the whole tensor beyond `out`.
    fn fp8_to_f16(&self, t: &TensorInfo, out: &mut [u8]) -> Result<(), LoadError> {
        self.fp8_into(t, GgmlType::F16, 1, out)
    }

    /// Writes fp8 tensor `t` times its scale as `ty` (F16, or Q8_0 in rows of `row` values)
    /// into `out` (exactly its bytes), in chunks of whole rows on all cores.
    fn fp8_into(
        &self,
        t: &TensorInfo,
        ty: GgmlType,
        row: usize,
        out: &mut [u8],
    ) -> Result<(), LoadError> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        let n = t.numel() as usize;
        let row_bytes = ty.bytes_for(row as u64).unwrap_or(0) as usize;
        if row == 0 || n % row != 0 || out.len() != n / row * row_bytes {
            return Err(self.err(t, format!("{} bytes for {n} {ty} values", out.len())));
        }
        let scale = self.scale(t)?;
        let data = self.file.data(t);
        let rows = (CHUNK / row).max(1);
        out.par_chunks_mut(rows * row_bytes)
            .enumerate()
            .try_for_each(|(k, out)| {
                let start = k * rows * row;
                let len = out.len() / row_bytes * row;
                let mut vals = vec![0f32; len];
                float::to_f32(t.dtype, &data[start..start + len], &mut vals)
                    .map_err(|e| e.to_string())?;
                scale.apply_from(start, &mut vals);
                if ty == GgmlType::F16 {
                    float::from_f32(DType::Ggml(ty), &vals, out).map_err(|e| e.to_string())
                } else {
                    crate::ggml::quantize(ty, &vals, row, out)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .map_err(|e| self.err(t, e))
    }

    /// The tensors [`WeightStore::load_cpu`] would load for `filter`, with the same names,
    /// types and shapes, but no data: nothing is read from the file or converted. For sizing
    /// graphs (the planner): their allocator sees the weights as placed and leaves them out of
    /// the compute buffer. Every tensor points at the start of one read-only anonymous map as
    /// large as the largest of them, which is never written and stays untouched (no memory).
    /// Never compute with this set: its values are zeros, shared by all tensors.
    pub fn load_meta(&self, filter: impl Fn(&str) -> bool) -> Result<TensorSet<'_>, LoadError> {
        self.check_loadable()?;
        let sources = self.filtered(filter);
        let mut targets = Vec::with_capacity(sources.len());
        for (name, src) in &sources {
            if let Some((ty, ne)) = self.target(name, src)? {
                targets.push((name.as_str(), ty, ne));
            }
        }
        let gerr = |e: GgmlError| LoadError::Ggml {
            path: self.file.paths().first().cloned().unwrap_or_default(),
            source: e,
        };
        let mut set = TensorSet::new(targets.len()).map_err(gerr)?;
        if targets.is_empty() {
            return Ok(set);
        }
        let largest = targets
            .iter()
            .map(|(_, ty, ne)| tensor_bytes(*ty, ne))
            .max()
            .unwrap_or(0);
        let region = self.placeholder(largest)?;
        for (name, ty, ne) in &targets {
            set.add_mapped(name, *ty, ne, region, 0).map_err(gerr)?;
        }
        Ok(set)
    }

    /// At least `bytes` of untouched, read-only, zero memory that lives as long as the store
    /// (see [`WeightStore::load_meta`]); sized once for the largest tensor of the file.
    fn placeholder(&self, bytes: u64) -> Result<&[u8], LoadError> {
        let io = |e: std::io::Error| LoadError::Ggml {
            path: self.file.paths().first().cloned().unwrap_or_default(),
            source: GgmlError::Backend(format!("reserving address space for metadata: {e}")),
        };
        if self.placeholder.get().is_none() {
            let largest = self
                .sources()
                .iter()
                .filter_map(|(n, s)| self.target(n, s).ok().flatten())
                .map(|(ty, ne)| tensor_bytes(ty, &ne))
                .max()
                .unwrap_or(0)
                .max(bytes)
                .max(1);
            let len = usize::try_from(largest)
                .map_err(|_| io(std::io::Error::other(format!("{largest} bytes"))))?;
            let map = memmap2::MmapOptions::new()
                .len(len)
                .map_anon()
                .and_then(|m| m.make_read_only())
                .map_err(io)?;
            let _ = self.placeholder.set(map);
        }
        let map = self.placeholder.get().map(|m| &m[..]).unwrap_or(&[]);
        if (map.len() as u64) < bytes {
            return Err(io(std::io::Error::other(format!(
                "{} bytes reserved, {bytes} needed",
                map.len()
            ))));
        }
        Ok(map)
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
        if self.scaled(t) {
            self.scale(t)?.apply_from(0, &mut out);
            // A scaled fp8 weight is F16 once loaded (ComfyUI rounds it to its 16-bit compute
            // type too), also where it is loaded as F32 (a transposed bigG projection).
            if matches!(t.dtype, DType::F8E4M3 | DType::F8E5M2) {
                out.iter_mut()
                    .for_each(|v| *v = half::f16::from_f32(*v).to_f32());
            }
        }
        Ok(out)
    }

    /// The values of a scale tensor as stored (f32, f16, bf16).
    fn f32_values_raw(&self, t: &TensorInfo) -> Result<Vec<f32>, LoadError> {
        let mut out = vec![0f32; t.numel() as usize];
        float::to_f32(t.dtype, self.file.data(t), &mut out)
            .map_err(|e| self.err(t, format!("not a usable scale: {e}")))?;
        Ok(out)
    }

    /// A tensor ggml cannot use as stored, or one with a scale, converted to its
    /// [`WeightStore::out_type`]: f8 -> f16 (times its scale), f64 -> f32, a quantized tensor
    /// whose rows are not whole blocks -> f16.
    fn converted(&self, t: &TensorInfo) -> Result<Vec<u8>, LoadError> {
        let ty = self.out_type(t);
        let vals = self.f32_values(t)?;
        let mut out = vec![0u8; vals.len() * ty.type_size() as usize];
        float::from_f32(DType::Ggml(ty), &vals, &mut out)
            .map_err(|e| self.err(t, e.to_string()))?;
        Ok(out)
    }
}

/// Whether a tensor of ggml shape `ne` can be Q8_0: its rows are whole Q8_0 blocks.
pub fn q8_rows(ne: &[i64]) -> bool {
    ne.first()
        .is_some_and(|&r| r % GgmlType::Q8_0.block_size() as i64 == 0)
}

/// Types ggml computes with directly from the file.
fn usable_in_place(ty: GgmlType) -> bool {
    !matches!(
        ty,
        GgmlType::F64 | GgmlType::I64 | GgmlType::Q8_1 | GgmlType::Q8_K
    )
}

/// The type a tensor stored as `d` is loaded as: itself where ggml uses it in place, else its
/// conversion.
fn loaded_type(d: DType) -> GgmlType {
    match d {
        DType::Ggml(t) if usable_in_place(t) => t,
        d => convert_target(d),
    }
}

/// Bytes of a tensor of `ty` and ggml shape `ne` (saturating: only compared).
fn tensor_bytes(ty: GgmlType, ne: &[i64]) -> u64 {
    let n = ne
        .iter()
        .fold(1u64, |a, &d| a.saturating_mul(d.max(0) as u64));
    ty.bytes_for(n).unwrap_or(u64::MAX)
}

/// The parts of a fused tensor in index order.
fn sorted_parts<'s, 'a>(parts: &'s [(usize, &'a TensorInfo)]) -> Vec<&'s (usize, &'a TensorInfo)> {
    let mut v: Vec<_> = parts.iter().collect();
    v.sort_by_key(|(i, _)| *i);
    v
}

/// The PyTorch shape of `n` parts of `part` concatenated along their outermost dim; a 0-D part
/// has no dim to concatenate along.
fn fused_shape(part: &[u64], n: usize) -> Result<Vec<u64>, String> {
    let mut shape = part.to_vec();
    let Some(outer) = shape.first_mut() else {
        return Err("a 0-D (scalar) tensor cannot be concatenated".into());
    };
    *outer = outer
        .checked_mul(n as u64)
        .ok_or_else(|| format!("{n} parts of {part:?} overflow"))?;
    Ok(shape)
}

static CONVERTED: AtomicU64 = AtomicU64::new(0);

fn note_converted(bytes: usize) {
    CONVERTED.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Bytes of weight data this process has converted or copied out of weight files (f8 and f64
/// conversions, transposes, fused parts) since it started. [`WeightStore::load_meta`] adds
/// nothing to it.
pub fn converted_bytes() -> u64 {
    CONVERTED.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_fuse_along_the_outermost_dim_and_a_scalar_is_refused() {
        assert_eq!(fused_shape(&[4, 2], 3).unwrap(), vec![12, 2]);
        assert_eq!(fused_shape(&[5], 2).unwrap(), vec![10]);
        let e = fused_shape(&[], 3).unwrap_err();
        assert!(e.contains("scalar"), "{e}");
        assert!(fused_shape(&[u64::MAX / 2, 1], 3).is_err());
    }

    #[test]
    fn a_scalar_loads_as_one_element() {
        assert_eq!(ggml_ne(&[]).unwrap(), vec![1]);
    }

    #[test]
    fn loaded_types_follow_the_conversions() {
        assert_eq!(loaded_type(DType::F8E4M3), GgmlType::F16);
        assert_eq!(loaded_type(DType::F8E5M2), GgmlType::F16);
        assert_eq!(loaded_type(DType::Ggml(GgmlType::F64)), GgmlType::F32);
        assert_eq!(loaded_type(DType::BF16), GgmlType::BF16);
        assert_eq!(loaded_type(DType::Ggml(GgmlType::Q4_K)), GgmlType::Q4_K);
    }
}
