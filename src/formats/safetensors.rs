//! safetensors reader: memory-mapped, single file or sharded (HF `*.safetensors.index.json`).
//!
//! A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of JSON, then the
//! data section. The JSON maps tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}`
//! (offsets relative to the data section) plus an optional `"__metadata__"` string-to-string map.
//!
//! [`parse`] checks everything before trusting a byte: the length prefix, the 100 MB header cap,
//! UTF-8, that the header is a JSON object without repeated keys (serde maps silently keep the
//! last one), each tensor's dtype, rank (at most [`MAX_DIMS`]), element count and byte size
//! (checked arithmetic), and that the tensors tile the data section exactly, in offset order, up
//! to the end of the file. The `safetensors` crate's own validation (`read_metadata`) then runs
//! as a cross-check, so we never accept a file the reference implementation rejects.
//!
//! Supported dtypes: F32, F16, BF16, F64, I8, I16, I32, I64 (ggml types), F8_E4M3, F8_E5M2, and
//! U8 (raw bytes: ComfyUI's embedded `spiece_model` tokenizer and `comfy_quant` JSON, never a
//! weight). Any other dtype (BOOL, U16, U32, U64, F4, F6_*, F8_E8M0, ...) is an `Unsupported` error
//! naming the tensor, as is a tensor with more than [`MAX_DIMS`] dims.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};

use memmap2::Mmap;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use super::{DType, FormatError, GgmlType, MetaValue, TensorInfo, MAX_DIMS};

/// Largest header we accept (the `safetensors` crate's limit).
pub const MAX_HEADER_SIZE: u64 = 100_000_000;

/// The parsed header of one safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct StHeader {
    /// `__metadata__` entries (all strings), sorted by key.
    pub metadata: Vec<(String, MetaValue)>,
    /// Sorted by offset; `shard` 0; `offset` absolute in the file.
    pub tensors: Vec<TensorInfo>,
    /// Where the data section starts: 8 + header length.
    pub data_offset: u64,
}

/// The safetensors dtype name, mapped to ours; `Err(true)` for dtypes the format defines but we
/// do not support, `Err(false)` for unknown names.
fn dtype_from_name(name: &str) -> Result<DType, bool> {
    Ok(match name {
        "F32" => DType::Ggml(GgmlType::F32),
        "F16" => DType::Ggml(GgmlType::F16),
        "BF16" => DType::Ggml(GgmlType::BF16),
        "F64" => DType::Ggml(GgmlType::F64),
        "I8" => DType::Ggml(GgmlType::I8),
        "I16" => DType::Ggml(GgmlType::I16),
        "I32" => DType::Ggml(GgmlType::I32),
        "I64" => DType::Ggml(GgmlType::I64),
        "F8_E4M3" => DType::F8E4M3,
        "F8_E5M2" => DType::F8E5M2,
        "U8" => DType::U8,
        "BOOL" | "U16" | "U32" | "U64" | "F4" | "F6_E2M3" | "F6_E3M2" | "F8_E8M0" | "C64"
        | "C128" | "F8_E4M3FNUZ" | "F8_E5M2FNUZ" => return Err(true),
        _ => return Err(false),
    })
}

const SUPPORTED: &str = "F32, F16, BF16, F64, I8, I16, I32, I64, F8_E4M3, F8_E5M2, U8";

/// Parses and validates the safetensors file `bytes` (the whole file); `path` names it in errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StHeader, FormatError> {
    let bad = |what: String| FormatError::malformed(path, what);
    let file_len = bytes.len() as u64;
    if bytes.is_empty() {
        return Err(bad("empty file (not a safetensors file)".into()));
    }
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(bad(format!(
            "file is {file_len} bytes, too short for a safetensors header length (8 bytes)"
        )));
    };
    let n = u64::from_le_bytes(*prefix);
    if n > MAX_HEADER_SIZE {
        return Err(bad(format!(
            "header length {n} exceeds the {MAX_HEADER_SIZE}-byte limit (not a safetensors file?)"
        )));
    }
    // n <= 1e8, so 8 + n cannot overflow.
    let data_offset = 8 + n;
    let Some(header) = bytes.get(8..data_offset as usize) else {
        return Err(bad(format!(
            "header length {n} runs past the end of the file (8 + {n} > {file_len} bytes)"
        )));
    };
    let header =
        std::str::from_utf8(header).map_err(|e| bad(format!("header is not valid UTF-8: {e}")))?;
    if !header.trim_start().starts_with('{') {
        return Err(bad("header is not a JSON object".into()));
    }
    if let Some(dup) = first_duplicate_key(header).map_err(|e| bad(json_error(&e)))? {
        return Err(bad(match dup.as_slice() {
            [name] => format!("duplicate tensor name {name:?} in header"),
            [parent, .., key] => format!("duplicate key {key:?} in header entry {parent:?}"),
            [] => "duplicate key in header".into(),
        }));
    }
    let root: serde_json::Map<String, Value> =
        serde_json::from_str(header).map_err(|e| bad(json_error(&e)))?;

    let data_len = file_len - data_offset;
    let mut metadata = Vec::new();
    // (begin, end, info), in header order.
    let mut tensors: Vec<(u64, u64, TensorInfo)> = Vec::with_capacity(root.len());
    for (name, entry) in &root {
        if name == "__metadata__" {
            metadata = parse_st_metadata(path, entry)?;
            continue;
        }
        tensors.push(parse_entry(path, name, entry, data_len, data_offset)?);
    }

    // The tensors must tile the data section exactly.
    tensors.sort_by_key(|(begin, end, _)| (*begin, *end));
    let mut pos = 0u64;
    let mut prev: Option<&str> = None;
    for (begin, end, info) in &tensors {
        if *begin != pos {
            let name = &info.name;
            let what = if *begin > pos { "gap" } else { "overlap" };
            return Err(bad(match prev {
                Some(p) => format!(
                    "tensor {name:?}: data starts at {begin} but the previous tensor {p:?} ends \
                     at {pos} ({what} in the data section)"
                ),
                None => format!(
                    "tensor {name:?}: data starts at {begin}, expected 0 ({what} at the start of \
                     the data section)"
                ),
            }));
        }
        pos = *end;
        prev = Some(&info.name);
    }
    if pos != data_len {
        return Err(bad(format!(
            "data section is {data_len} bytes but the tensors cover {pos} ({} trailing bytes)",
            data_len - pos
        )));
    }

    // Cross-check with the reference implementation. Everything it can reject was checked
    // above, and all offsets are within the file, so its arithmetic cannot overflow.
    if let Err(e) = safetensors::SafeTensors::read_metadata(bytes) {
        return Err(bad(format!("rejected by the safetensors crate: {e}")));
    }

    Ok(StHeader {
        metadata,
        tensors: tensors.into_iter().map(|(_, _, t)| t).collect(),
        data_offset,
    })
}

/// "header is not valid JSON: ..." for a serde_json error (one line).
fn json_error(e: &serde_json::Error) -> String {
    format!("header is not valid JSON: {e}")
}

fn parse_st_metadata(path: &Path, entry: &Value) -> Result<Vec<(String, MetaValue)>, FormatError> {
    let obj = match entry {
        Value::Null => return Ok(Vec::new()),
        Value::Object(o) => o,
        _ => {
            return Err(FormatError::malformed(
                path,
                "__metadata__ is not a JSON object",
            ))
        }
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let Value::String(s) = v else {
            return Err(FormatError::malformed(
                path,
                format!("__metadata__ entry {k:?} is not a string"),
            ));
        };
        out.push((k.clone(), MetaValue::String(s.clone())));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn parse_entry(
    path: &Path,
    name: &str,
    entry: &Value,
    data_len: u64,
    data_offset: u64,
) -> Result<(u64, u64, TensorInfo), FormatError> {
    let bad = |what: String| FormatError::malformed(path, format!("tensor {name:?}: {what}"));
    let Value::Object(obj) = entry else {
        return Err(bad("header entry is not a JSON object".into()));
    };
    let dtype_name = match obj.get("dtype") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("\"dtype\" is not a string".into())),
        None => return Err(bad("missing \"dtype\"".into())),
    };
    let dtype = dtype_from_name(dtype_name).map_err(|known| {
        FormatError::unsupported(
            path,
            if known {
                format!(
                    "tensor {name:?}: dtype {dtype_name} is not supported (supported: {SUPPORTED})"
                )
            } else {
                format!("tensor {name:?}: unknown dtype {dtype_name:?} (supported: {SUPPORTED})")
            },
        )
    })?;
    let shape = match obj.get("shape") {
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad("\"shape\" is not a list of non-negative integers".into()))?,
        Some(_) => return Err(bad("\"shape\" is not a list".into())),
        None => return Err(bad("missing \"shape\"".into())),
    };
    let (begin, end) = match obj.get("data_offsets") {
        Some(Value::Array(a)) => match a.as_slice() {
            [b, e] => match (b.as_u64(), e.as_u64()) {
                (Some(b), Some(e)) => (b, e),
                _ => return Err(bad("\"data_offsets\" are not non-negative integers".into())),
            },
            _ => return Err(bad("\"data_offsets\" is not a [begin, end] pair".into())),
        },
        Some(_) => return Err(bad("\"data_offsets\" is not a list".into())),
        None => return Err(bad("missing \"data_offsets\"".into())),
    };
    if shape.len() > MAX_DIMS {
        return Err(FormatError::unsupported(
            path,
            format!(
                "tensor {name:?}: {} dimensions {shape:?}, at most {MAX_DIMS} are supported",
                shape.len()
            ),
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} has too many elements (overflow)")))?;
    let size = dtype.bytes_for(numel).ok_or_else(|| {
        bad(format!(
            "shape {shape:?} of {dtype_name} is too many bytes (overflow)"
        ))
    })?;
    if end < begin {
        return Err(bad(format!("data_offsets [{begin}, {end}] are reversed")));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] run past the end of the data section ({data_len} bytes)"
        )));
    }
    if end - begin != size {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] span {} bytes but {dtype_name} {shape:?} needs {size}",
            end - begin
        )));
    }
    let info = TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        shard: 0,
        // begin <= data_len = file_len - data_offset, so no overflow.
        offset: data_offset + begin,
        size,
    };
    Ok((begin, end, info))
}

/// Walks the JSON text and returns the key path (outermost first) of the first key repeated
/// within one object, if any. Errors are JSON syntax errors.
fn first_duplicate_key(json: &str) -> Result<Option<Vec<String>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let found = DupCheck::deserialize(&mut de)?;
    de.end()?;
    Ok(found.0.map(|mut path| {
        path.reverse();
        path
    }))
}

/// The first repeated key found in a JSON value, as a reversed key path (innermost first).
struct DupCheck(Option<Vec<String>>);

impl<'de> Deserialize<'de> for DupCheck {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DupVisitor)
    }
}

struct DupVisitor;

impl<'de> Visitor<'de> for DupVisitor {
    type Value = DupCheck;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_unit<E: de::Error>(self) -> Result<DupCheck, E> {
        Ok(DupCheck(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DupCheck, A::Error> {
        let mut found = None;
        while let Some(DupCheck(d)) = seq.next_element::<DupCheck>()? {
            if found.is_none() {
                found = d;
            }
        }
        Ok(DupCheck(found))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DupCheck, A::Error> {
        let mut seen = HashSet::new();
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            let DupCheck(inner) = map.next_value::<DupCheck>()?;
            if found.is_some() {
                continue;
            }
            if let Some(mut p) = inner {
                p.push(key);
                found = Some(p);
            } else if !seen.insert(key.clone()) {
                found = Some(vec![key]);
            }
        }
        Ok(DupCheck(found))
    }
}

/// A safetensors model: one file or several shards, memory-mapped, with every tensor's place.
pub struct SafetensorsFile {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
}

impl SafetensorsFile {
    /// Drops every shard's pages from the resident set ([`crate::ggml::release_pages`]).
    pub fn release_pages(&self) -> std::io::Result<()> {
        self.maps.iter().try_for_each(crate::ggml::release_pages)
    }
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("paths", &self.paths)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Maps one file and parses its header.
fn map_one(path: &Path) -> Result<(Mmap, StHeader), FormatError> {
    let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
    if !meta.is_file() {
        return Err(FormatError::malformed(path, "not a regular file"));
    }
    let map = crate::ggml::map_file(&file).map_err(|e| FormatError::io(path, e))?;
    let header = parse(path, &map)?;
    Ok((map, header))
}

/// Adds `extra` entries whose keys are not in `into` yet, keeping `into` sorted by key.
fn merge_metadata(into: &mut Vec<(String, MetaValue)>, extra: Vec<(String, MetaValue)>) {
    for (k, v) in extra {
        if !into.iter().any(|(have, _)| *have == k) {
            into.push((k, v));
        }
    }
    into.sort_by(|a, b| a.0.cmp(&b.0));
}

impl SafetensorsFile {
    /// Opens one `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        Self::open_many(&[path.as_ref().to_path_buf()])
    }

    /// Opens `path` as an HF shard index if its name ends with `.index.json`, else as one file.
    pub fn open_any(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let is_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        if is_index {
            Self::open_index(path)
        } else {
            Self::open(path)
        }
    }

    /// Opens several shard files given explicitly; shard index = position in `paths`. A tensor
    /// name found in two shards is an error. Metadata: the shards' `__metadata__` merged (the
    /// first shard with a key wins), sorted by key.
    pub fn open_many(paths: &[PathBuf]) -> Result<Self, FormatError> {
        if paths.is_empty() {
            return Err(FormatError::malformed(
                Path::new("<safetensors>"),
                "no safetensors files given",
            ));
        }
        let mut out = SafetensorsFile {
            paths: Vec::with_capacity(paths.len()),
            maps: Vec::with_capacity(paths.len()),
            metadata: Vec::new(),
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        for path in paths {
            let (map, header) = map_one(path)?;
            out.add_shard(path, map, header)?;
        }
        Ok(out)
    }

    fn add_shard(&mut self, path: &Path, map: Mmap, header: StHeader) -> Result<(), FormatError> {
        let shard = self.maps.len();
        for mut t in header.tensors {
            if let Some(&i) = self.by_name.get(&t.name) {
                let other = self
                    .tensors
                    .get(i)
                    .and_then(|o| self.paths.get(o.shard))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(FormatError::malformed(
                    path,
                    format!("tensor {:?} is also in {other}", t.name),
                ));
            }
            t.shard = shard;
            self.by_name.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        merge_metadata(&mut self.metadata, header.metadata);
        self.paths.push(path.to_path_buf());
        self.maps.push(map);
        Ok(())
    }

    /// Opens an HF sharded model from its `*.safetensors.index.json`:
    /// `{"metadata": {...}, "weight_map": {"tensor": "model-00001-of-00002.safetensors", ...}}`.
    ///
    /// Shard names are relative to the index's folder and may not leave it (no `..`, no absolute
    /// paths). Shards are opened in name order (shard index = that order). Every tensor in the
    /// weight map must be in the shard it names; no tensor may be in two shards. Tensors present
    /// in a shard but missing from the weight map are kept (with a warning). Metadata: the
    /// index's `metadata` (strings, numbers, bools; other values as JSON text), then the shards'
    /// `__metadata__` for keys not seen yet, sorted by key.
    pub fn open_index(index: impl AsRef<Path>) -> Result<Self, FormatError> {
        let index = index.as_ref();
        let bad = |what: String| FormatError::malformed(index, what);
        let bytes = std::fs::read(index).map_err(|e| FormatError::io(index, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| bad(format!("index is not valid UTF-8: {e}")))?;
        let json_err = |e: serde_json::Error| bad(format!("index is not valid JSON: {e}"));
        if let Some(dup) = first_duplicate_key(text).map_err(json_err)? {
            return Err(bad(match dup.as_slice() {
                [w, name] if w == "weight_map" => {
                    format!("tensor {name:?} appears twice in weight_map")
                }
                _ => format!("duplicate key {:?} in index", dup.join(".")),
            }));
        }
        let root: Value = serde_json::from_str(text).map_err(json_err)?;
        let Value::Object(root) = root else {
            return Err(bad("index is not a JSON object".into()));
        };
        let weight_map = match root.get("weight_map") {
            Some(Value::Object(m)) => m,
            Some(_) => return Err(bad("\"weight_map\" is not a JSON object".into())),
            None => return Err(bad("missing \"weight_map\"".into())),
        };
        if weight_map.is_empty() {
            return Err(bad("\"weight_map\" lists no tensors".into()));
        }
        let mut index_meta = Vec::new();
        match root.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let v = match v {
                        Value::Null => continue,
                        Value::String(s) => MetaValue::String(s.clone()),
                        Value::Bool(b) => MetaValue::Bool(*b),
                        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                            (Some(u), _, _) => MetaValue::U64(u),
                            (None, Some(i), _) => MetaValue::I64(i),
                            (None, None, Some(f)) => MetaValue::F64(f),
                            _ => MetaValue::String(n.to_string()),
                        },
                        other => MetaValue::String(other.to_string()),
                    };
                    index_meta.push((k.clone(), v));
                }
            }
            Some(_) => return Err(bad("\"metadata\" is not a JSON object".into())),
        }

        // Shard file names, checked, in name order.
        let dir = index.parent().unwrap_or(Path::new(""));
        let mut files: Vec<&str> = Vec::new();
        for (name, file) in weight_map {
            let Value::String(file) = file else {
                return Err(bad(format!(
                    "weight_map entry for tensor {name:?} is not a file name"
                )));
            };
            let p = Path::new(file);
            let plain = !file.is_empty()
                && p.components().all(|c| matches!(c, Component::Normal(_)))
                && p.components().next().is_some();
            if !plain {
                return Err(bad(format!(
                    "weight_map names shard {file:?} for tensor {name:?}: shard names must be \
                     relative paths inside the index's folder (no \"..\", no absolute path)"
                )));
            }
            files.push(file);
        }
        files.sort_unstable();
        files.dedup();

        let mut out = SafetensorsFile {
            paths: Vec::with_capacity(files.len()),
            maps: Vec::with_capacity(files.len()),
            metadata: index_meta,
            tensors: Vec::new(),
            by_name: HashMap::new(),
        };
        out.metadata.sort_by(|a, b| a.0.cmp(&b.0));
        for file in &files {
            let path = dir.join(file);
            let (map, header) = map_one(&path)?;
            out.add_shard(&path, map, header)?;
        }

        for (name, file) in weight_map {
            let want = files.iter().position(|f| Some(*f) == file.as_str());
            let have = out.by_name.get(name).and_then(|&i| out.tensors.get(i));
            match (want, have) {
                (Some(w), Some(t)) if t.shard == w => {}
                (_, Some(t)) => {
                    let file = file.as_str().unwrap_or_default();
                    let actual = files.get(t.shard).copied().unwrap_or_default();
                    return Err(bad(format!(
                        "weight_map puts tensor {name:?} in {file} but it is in {actual}"
                    )));
                }
                (_, None) => {
                    let file = file.as_str().unwrap_or_default();
                    return Err(bad(format!(
                        "weight_map puts tensor {name:?} in {file} but that shard does not \
                         contain it"
                    )));
                }
            }
        }
        let unlisted = out
            .tensors
            .iter()
            .filter(|t| !weight_map.contains_key(&t.name))
            .count();
        if unlisted > 0 {
            tracing::warn!(
                "{}: {unlisted} tensors in the shards are not listed in weight_map; keeping them",
                index.display()
            );
        }
        Ok(out)
    }

    /// Every tensor, by shard then offset; `shard` indexes [`paths`](Self::paths).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// Metadata, sorted by key (see the `open_*` functions for where it comes from).
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The metadata value for `key`.
    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .and_then(|i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// The files, in shard order.
    /// The whole mapped bytes of shard `shard` (empty if out of range).
    pub fn map_bytes(&self, shard: usize) -> &[u8] {
        self.maps.get(shard).map(|m| &m[..]).unwrap_or(&[])
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The bytes of `t` (zero-copy view into its shard's map). `t` must come from this file's
    /// [`tensors`](Self::tensors); for a foreign `TensorInfo` that does not fit, the slice is
    /// empty rather than a panic.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset).ok().and_then(|start| {
            let len = usize::try_from(t.size).ok()?;
            Some(start..start.checked_add(len)?)
        });
        range
            .and_then(|r| self.maps.get(t.shard)?.get(r))
            .unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend((0..data_len).map(|i| i as u8));
        v
    }

    fn err(bytes: &[u8]) -> String {
        match parse(Path::new("x.safetensors"), bytes) {
            Ok(h) => panic!("accepted: {h:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(bytes: &[u8], want: &str) {
        let e = err(bytes);
        assert!(e.starts_with("x.safetensors: "), "{e}");
        assert!(e.contains(want), "error {e:?} does not contain {want:?}");
        assert!(!e.contains('\n'), "multi-line error {e:?}");
    }

    const GOOD: &str = r#"{"__metadata__":{"b":"2","a":"1"},"w":{"dtype":"F16","shape":[2,3],"data_offsets":[4,16]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#;

    #[test]
    fn parses_a_small_file() {
        let bytes = file(GOOD, 16);
        let h = parse(Path::new("x"), &bytes).unwrap();
        let off = 8 + GOOD.len() as u64;
        assert_eq!(h.data_offset, off);
        assert_eq!(
            h.metadata,
            vec![
                ("a".into(), MetaValue::String("1".into())),
                ("b".into(), MetaValue::String("2".into()))
            ]
        );
        assert_eq!(h.tensors.len(), 2);
        let (s, w) = (&h.tensors[0], &h.tensors[1]);
        assert_eq!(
            (s.name.as_str(), s.dtype, s.offset, s.size),
            ("s", DType::F32, off, 4)
        );
        assert!(s.shape.is_empty());
        assert_eq!(s.numel(), 1);
        assert_eq!(w.name, "w");
        assert_eq!((w.dtype, w.offset, w.size), (DType::F16, off + 4, 12));
        assert_eq!(w.shape, vec![2, 3]);
    }

    #[test]
    fn padded_header_and_empty_model() {
        // Python safetensors pads the header with spaces.
        let bytes = file(&format!("{GOOD}     "), 16);
        assert!(parse(Path::new("x"), &bytes).is_ok());
        let h = parse(Path::new("x"), &file("{}", 0)).unwrap();
        assert!(h.tensors.is_empty() && h.metadata.is_empty());
    }

    #[test]
    fn length_prefix_errors() {
        assert_err(&[], "empty file");
        assert_err(&[1, 0, 0], "file is 3 bytes, too short");
        let mut b = 1000u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        assert_err(
            &b,
            "header length 1000 runs past the end of the file (8 + 1000 > 10 bytes)",
        );
        assert_err(
            &(MAX_HEADER_SIZE + 1).to_le_bytes(),
            "exceeds the 100000000-byte limit",
        );
        assert_err(&u64::MAX.to_le_bytes(), "exceeds the 100000000-byte limit");
    }

    #[test]
    fn json_errors() {
        assert_err(&file("{\"a\": ", 0), "header is not valid JSON");
        assert_err(&file("not json", 0), "header is not a JSON object");
        assert_err(&file("[1, 2]", 0), "header is not a JSON object");
        assert_err(&file("{} {}", 0), "header is not valid JSON");
        let mut b = file("{\"\u{e9}\":1}", 0);
        b[10] = 0xff;
        assert_err(&b, "header is not valid UTF-8");
        assert_err(
            &file(r#"{"__metadata__":[1]}"#, 0),
            "__metadata__ is not a JSON object",
        );
        assert_err(
            &file(r#"{"__metadata__":{"k":1}}"#, 0),
            "__metadata__ entry \"k\" is not a string",
        );
        assert_err(
            &file(r#"{"w":[1]}"#, 0),
            "tensor \"w\": header entry is not a JSON object",
        );
        assert_err(
            &file(r#"{"w":{"dtype":"F32","data_offsets":[0,0]}}"#, 0),
            "tensor \"w\": missing \"shape\"",
        );
        assert_err(
            &file(
                r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#,
                0,
            ),
            "\"shape\" is not a list of non-negative integers",
        );
        assert_err(
            &file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#, 4),
            "\"data_offsets\" is not a [begin, end] pair",
        );
        assert_err(
            &file(r#"{"w":{"shape":[1],"data_offsets":[0,4]}}"#, 4),
            "tensor \"w\": missing \"dtype\"",
        );
    }

    #[test]
    fn duplicate_names() {
        let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert_err(&file(h, 8), "duplicate tensor name \"w\" in header");
        let h = r#"{"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "duplicate key \"dtype\" in header entry \"w\"");
        let h = r#"{"__metadata__":{"a":"1","a":"2"}}"#;
        assert_err(
            &file(h, 0),
            "duplicate key \"a\" in header entry \"__metadata__\"",
        );
    }

    #[test]
    fn dtype_errors() {
        let e = parse(
            Path::new("x.safetensors"),
            &file(
                r#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            ),
        )
        .unwrap_err();
        assert!(matches!(e, FormatError::Unsupported { .. }));
        assert!(
            e.to_string().contains("tensor \"w\": unknown dtype \"Q4\""),
            "{e}"
        );
        for dt in ["BOOL", "U16", "U32", "U64", "F8_E8M0", "F4", "C64"] {
            let h = format!(r#"{{"w":{{"dtype":"{dt}","shape":[1],"data_offsets":[0,1]}}}}"#);
            let e = parse(Path::new("x.safetensors"), &file(&h, 1)).unwrap_err();
            assert!(matches!(e, FormatError::Unsupported { .. }), "{dt}");
            assert!(
                e.to_string()
                    .contains(&format!("tensor \"w\": dtype {dt} is not supported")),
                "{e}"
            );
        }
        assert_err(
            &file(r#"{"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}}"#, 1),
            "\"dtype\" is not a string",
        );
    }

    #[test]
    fn shape_errors() {
        let h = r#"{"w":{"dtype":"F32","shape":[1,1,1,1,1,1],"data_offsets":[0,4]}}"#;
        let e = parse(Path::new("x.safetensors"), &file(h, 4)).unwrap_err();
        assert!(matches!(e, FormatError::Unsupported { .. }));
        assert!(e.to_string().contains("6 dimensions"), "{e}");
        // Five dims is fine.
        let h = r#"{"w":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}}"#;
        assert!(parse(Path::new("x"), &file(h, 4)).is_ok());
        let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "too many elements (overflow)");
        let h = r#"{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,4]}}"#;
        assert_err(&file(h, 4), "too many bytes (overflow)");
        // Zero-size tensors are fine.
        let h = r#"{"z":{"dtype":"F32","shape":[0,7],"data_offsets":[0,0]},"w":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#;
        let hd = parse(Path::new("x"), &file(h, 1)).unwrap();
        assert_eq!(hd.tensors[0].name, "z");
        assert_eq!(hd.tensors[0].size, 0);
    }

    #[test]
    fn offset_errors() {
        let t = |o: &str| format!(r#"{{"w":{{"dtype":"F32","shape":[2],"data_offsets":{o}}}}}"#);
        assert_err(
            &file(&t("[0,8]"), 4),
            "run past the end of the data section (4 bytes)",
        );
        assert_err(&file(&t("[0,6]"), 6), "span 6 bytes but F32 [2] needs 8");
        assert_err(&file(&t("[8,0]"), 8), "are reversed");
        assert_err(&file(&t("[4,12]"), 12), "expected 0 (gap at the start");
        assert_err(&file(&t("[0,8]"), 9), "(1 trailing bytes)");
        let two = |a: &str, b: &str| {
            format!(
                r#"{{"a":{{"dtype":"F32","shape":[2],"data_offsets":{a}}},"b":{{"dtype":"F32","shape":[2],"data_offsets":{b}}}}}"#
            )
        };
        assert_err(
            &file(&two("[0,8]", "[4,12]"), 12),
            "tensor \"b\": data starts at 4 but the previous tensor \"a\" ends at 8 (overlap",
        );
        assert_err(
            &file(&two("[0,8]", "[12,20]"), 20),
            "tensor \"b\": data starts at 12 but the previous tensor \"a\" ends at 8 (gap",
        );
        // Both orders in the header are fine as long as offsets tile.
        assert!(parse(Path::new("x"), &file(&two("[8,16]", "[0,8]"), 16)).is_ok());
        // Huge offsets (would overflow a naive end + header sum) are rejected cleanly.
        let h = two("[0,8]", "[18446744073709551600,18446744073709551608]");
        assert_err(&file(&h, 8), "run past the end");
    }

    #[test]
    fn truncated_at_every_byte() {
        let full = file(GOOD, 16);
        for len in 0..full.len() {
            assert!(
                parse(Path::new("x"), &full[..len]).is_err(),
                "accepted a file truncated to {len} bytes"
            );
        }
        assert!(parse(Path::new("x"), &full).is_ok());
        // And with one byte too many.
        let mut long = full.clone();
        long.push(0);
        assert!(parse(Path::new("x"), &long).is_err());
    }

    #[test]
    fn data_is_empty_for_foreign_infos() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        std::fs::write(&p, file(GOOD, 16)).unwrap();
        let f = SafetensorsFile::open(&p).unwrap();
        let mut t = f.tensor("w").unwrap().clone();
        assert_eq!(f.data(&t), &(4u8..16).collect::<Vec<_>>()[..]);
        t.offset = u64::MAX - 1;
        assert!(f.data(&t).is_empty());
        t.shard = 3;
        assert!(f.data(&t).is_empty());
        assert_eq!(f.meta("b"), Some(&MetaValue::String("2".into())));
        assert_eq!(f.meta("c"), None);
    }
}
