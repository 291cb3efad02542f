//! GGUF reader (memory-mapped) and streaming writer.
//!
//! The layout (little-endian; versions 2 and 3 are identical on disk):
//!
//! ```text
//! "GGUF"  u32 version  u64 n_tensors  u64 n_kv
//! n_kv      × { string key, u32 value type, value }
//! n_tensors × { string name, u32 n_dims, n_dims × u64 ne (innermost first), u32 ggml type, u64 offset }
//! zero padding up to a multiple of `general.alignment` (u32, default 32)
//! data section: each tensor at `offset` (relative to the section, a multiple of the alignment)
//! ```
//!
//! A string is a u64 byte length and that many bytes of UTF-8 (no NUL). An array value is a u32
//! element type, a u64 count and the elements without their type tags; an array of arrays stores
//! each inner array the same way (element type, count, elements).
//!
//! Everything read from a file is checked before use: lengths and counts against the bytes left,
//! products and sums with checked arithmetic, and nothing is allocated from a count that the file
//! could not back with bytes. Every error names the file and says what is wrong.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{DType, FormatError, GgmlType, MetaValue, TensorInfo, MAX_DIMS};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces.
pub const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the data alignment (must be a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest metadata key or tensor name, in bytes. (ggml's own reader stops at 63 bytes for
/// tensor names; we keep names on our side, so long ones are fine.)
pub const MAX_NAME_LEN: u64 = 65_535;
/// Longest string value, in bytes.
pub const MAX_STRING_LEN: u64 = 256 << 20;
/// Deepest nesting of arrays (an array of scalars has depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most tensors in one file.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most metadata values in one file, counting every array element (bounds the memory a small
/// file can make us allocate: one `MetaValue` is 32 bytes).
pub const MAX_META_VALUES: u64 = 1 << 24;

// GGUF metadata value types.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Smallest possible metadata entry: key length, a 1-byte key, type, a 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Smallest possible tensor record: name length, a 1-byte name, n_dims, type, offset.
const MIN_TENSOR_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// Name of a GGUF value type, for messages.
fn value_type_name(id: u32) -> &'static str {
    match id {
        T_U8 => "u8",
        T_I8 => "i8",
        T_U16 => "u16",
        T_I16 => "i16",
        T_U32 => "u32",
        T_I32 => "i32",
        T_F32 => "f32",
        T_BOOL => "bool",
        T_STRING => "string",
        T_ARRAY => "array",
        T_U64 => "u64",
        T_I64 => "i64",
        T_F64 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoding of one value of type `id`, without its type tag (`None`: unknown type).
fn min_value_bytes(id: u32) -> Option<u64> {
    Some(match id {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,
        T_ARRAY => 4 + 8,
        _ => return None,
    })
}

/// The GGUF value type that stores `v`.
fn value_type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => T_U8,
        MetaValue::I8(_) => T_I8,
        MetaValue::U16(_) => T_U16,
        MetaValue::I16(_) => T_I16,
        MetaValue::U32(_) => T_U32,
        MetaValue::I32(_) => T_I32,
        MetaValue::U64(_) => T_U64,
        MetaValue::I64(_) => T_I64,
        MetaValue::F32(_) => T_F32,
        MetaValue::F64(_) => T_F64,
        MetaValue::Bool(_) => T_BOOL,
        MetaValue::String(_) => T_STRING,
        MetaValue::Array(_) => T_ARRAY,
    }
}

/// Element type written for an array: that of its elements; u8 for an empty one (GGUF needs a
/// type even when there are no elements, and `MetaValue` does not keep one).
fn array_elem_type(a: &[MetaValue]) -> u32 {
    a.first().map_or(T_U8, value_type_id)
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    // `align` is a nonzero power of two.
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// Number of elements of a shape, `None` if a dim or the count exceeds `i64::MAX` (ggml's
/// limit). A zero dim makes the count zero whatever the others are, in either dim order.
fn element_count(dims: &[u64]) -> Option<u64> {
    const MAX: u64 = i64::MAX as u64;
    if dims.iter().any(|&d| d > MAX) {
        return None;
    }
    if dims.contains(&0) {
        return Some(0);
    }
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX)
}

/// Shape in PyTorch order, for messages.
fn shape_str(ne: &[u64]) -> String {
    let dims: Vec<String> = ne.iter().rev().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Parser

/// Everything before the data section of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// Data alignment in bytes (`general.alignment`, default 32).
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order; `shard` 0, absolute offsets, sizes checked against the file length.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section (the header end padded to the alignment; for a file
    /// without tensors, clamped to the file length).
    pub data_offset: u64,
}

impl GgufHeader {
    /// The metadata value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A read position in the file's bytes. Invariant: `pos <= bytes.len()`.
struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

type Ctx<'c> = &'c dyn Fn() -> String;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn err(&self, what: impl Into<String>) -> FormatError {
        FormatError::malformed(self.path, what)
    }

    /// The next `n` bytes; `what` names them for the truncation message.
    fn take(&mut self, n: u64, what: Ctx) -> Result<&'a [u8], FormatError> {
        let rem = self.remaining();
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "truncated: the file ends inside {} (needs {n} bytes at offset {}, {rem} left)",
                what(),
                self.pos
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: Ctx) -> Result<[u8; N], FormatError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: Ctx) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: Ctx) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: Ctx) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: Ctx) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    fn string(&mut self, max: u64, what: Ctx) -> Result<String, FormatError> {
        let len = self.u64(what)?;
        if len > max {
            return Err(self.err(format!("{} is {len} bytes long (at most {max})", what())));
        }
        let raw = self.take(len, what)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.err(format!("{} is not valid UTF-8 ({e})", what()))),
        }
    }
}

/// Reads one value of type `ty` for `key`. `depth` is the number of arrays around it; recursion
/// only happens for nested arrays and stops at [`MAX_ARRAY_DEPTH`]. `budget` counts down the
/// values the file may still hold ([`MAX_META_VALUES`]).
fn read_value(
    cur: &mut Cursor<'_>,
    ty: u32,
    key: &str,
    depth: usize,
    budget: &mut u64,
) -> Result<MetaValue, FormatError> {
    let what = || format!("the value of key '{key}'");
    Ok(match ty {
        T_U8 => MetaValue::U8(cur.u8(&what)?),
        T_I8 => MetaValue::I8(i8::from_le_bytes(cur.array(&what)?)),
        T_U16 => MetaValue::U16(cur.u16(&what)?),
        T_I16 => MetaValue::I16(i16::from_le_bytes(cur.array(&what)?)),
        T_U32 => MetaValue::U32(cur.u32(&what)?),
        T_I32 => MetaValue::I32(i32::from_le_bytes(cur.array(&what)?)),
        T_F32 => MetaValue::F32(f32::from_le_bytes(cur.array(&what)?)),
        T_U64 => MetaValue::U64(cur.u64(&what)?),
        T_I64 => MetaValue::I64(i64::from_le_bytes(cur.array(&what)?)),
        T_F64 => MetaValue::F64(f64::from_le_bytes(cur.array(&what)?)),
        T_BOOL => match cur.u8(&what)? {
            0 => MetaValue::Bool(false),
            1 => MetaValue::Bool(true),
            b => return Err(cur.err(format!("key '{key}' has bool value {b} (must be 0 or 1)"))),
        },
        T_STRING => MetaValue::String(cur.string(MAX_STRING_LEN, &|| {
            format!("a string in the value of key '{key}'")
        })?),
        T_ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(cur.err(format!(
                    "key '{key}' has arrays nested more than {MAX_ARRAY_DEPTH} deep"
                )));
            }
            let et = cur.u32(&|| format!("the element type of array '{key}'"))?;
            let Some(min) = min_value_bytes(et) else {
                return Err(cur.err(format!(
                    "key '{key}' is an array of unknown value type {et}"
                )));
            };
            let n = cur.u64(&|| format!("the length of array '{key}'"))?;
            let rem = cur.remaining();
            if n > rem / min {
                return Err(cur.err(format!(
                    "key '{key}' is an array of {n} {} values, which cannot fit in the {rem} bytes left (truncated or corrupt file)",
                    value_type_name(et)
                )));
            }
            *budget = budget.checked_sub(n).ok_or_else(|| {
                cur.err(format!(
                    "key '{key}': the metadata holds more values than the {MAX_META_VALUES} allowed"
                ))
            })?;
            // n <= rem, so this allocation is backed by bytes in the file.
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_value(cur, et, key, depth + 1, budget)?);
            }
            MetaValue::Array(items)
        }
        other => return Err(cur.err(format!("key '{key}' has unknown value type {other}"))),
    })
}

/// One tensor record as read, before the data offset is known.
struct RawTensor {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
    size: u64,
    offset: u64,
}

fn read_tensor(cur: &mut Cursor<'_>, i: u64) -> Result<RawTensor, FormatError> {
    let name = cur.string(MAX_NAME_LEN, &|| format!("the name of tensor #{i}"))?;
    if name.is_empty() {
        return Err(cur.err(format!("tensor #{i} has an empty name")));
    }
    let n_dims = cur.u32(&|| format!("the dim count of tensor '{name}'"))?;
    if n_dims as usize > MAX_DIMS {
        return Err(cur.err(format!(
            "tensor '{name}' has {n_dims} dims (at most {MAX_DIMS})"
        )));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        let d = cur.u64(&|| format!("the shape of tensor '{name}'"))?;
        if d > i64::MAX as u64 {
            return Err(cur.err(format!(
                "tensor '{name}' has a dim of {d} elements (ne[{j}], too large)"
            )));
        }
        ne.push(d);
    }
    let numel = element_count(&ne).ok_or_else(|| {
        cur.err(format!(
            "tensor '{name}' has shape {} whose element count overflows",
            shape_str(&ne)
        ))
    })?;
    let type_id = cur.u32(&|| format!("the type of tensor '{name}'"))?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(FormatError::unsupported(
            cur.path,
            format!("tensor '{name}' has unknown or removed ggml type id {type_id}"),
        ));
    };
    let row = ne.first().copied().unwrap_or(1);
    if row % ty.block_size() != 0 {
        return Err(cur.err(format!(
            "tensor '{name}' of type {ty} has rows of {row} elements, not a multiple of its block size {}",
            ty.block_size()
        )));
    }
    let size = ty.bytes_for(numel).ok_or_else(|| {
        cur.err(format!(
            "tensor '{name}' of type {ty} and shape {} has a byte size that overflows",
            shape_str(&ne)
        ))
    })?;
    let offset = cur.u64(&|| format!("the data offset of tensor '{name}'"))?;
    Ok(RawTensor {
        name,
        ty,
        ne,
        size,
        offset,
    })
}

/// Parses the header of the GGUF file whose bytes are `bytes` (the whole file: tensor ranges are
/// checked against its length). `path` is only used in messages.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufHeader, FormatError> {
    parse_with_limit(path, bytes, MAX_META_VALUES)
}

/// [`parse`] with a different cap on the number of metadata values (tests use a small one).
fn parse_with_limit(path: &Path, bytes: &[u8], max_values: u64) -> Result<GgufHeader, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::malformed(
            path,
            "empty file (0 bytes), not a GGUF file",
        ));
    }
    if bytes.len() < MAGIC.len() {
        return Err(FormatError::malformed(
            path,
            format!("too short to be a GGUF file ({} bytes)", bytes.len()),
        ));
    }
    let mut cur = Cursor {
        path,
        bytes,
        pos: 0,
    };
    let magic: [u8; 4] = cur.array(&|| "the magic".into())?;
    if magic != MAGIC {
        return Err(cur.err(format!(
            "not a GGUF file (starts with \"{}\", expected \"GGUF\")",
            magic.escape_ascii()
        )));
    }

    let version = cur.u32(&|| "the GGUF header".into())?;
    if version != 0 && version & 0xFFFF == 0 {
        return Err(FormatError::unsupported(
            path,
            format!(
                "big-endian GGUF file (version field reads 0x{version:08x}); only little-endian files are supported"
            ),
        ));
    }
    if !(2..=3).contains(&version) {
        return Err(FormatError::unsupported(
            path,
            format!("GGUF version {version} is not supported (only versions 2 and 3)"),
        ));
    }

    let n_tensors = cur.u64(&|| "the GGUF header".into())?;
    let n_kv = cur.u64(&|| "the GGUF header".into())?;
    let rem = cur.remaining();
    if n_kv > rem / MIN_KV_BYTES {
        return Err(cur.err(format!(
            "header claims {n_kv} metadata entries, but the {rem} bytes left hold at most {} (truncated or corrupt file)",
            rem / MIN_KV_BYTES
        )));
    }
    if n_tensors > MAX_TENSORS {
        return Err(cur.err(format!(
            "header claims {n_tensors} tensors (at most {MAX_TENSORS})"
        )));
    }
    if n_tensors > rem / MIN_TENSOR_BYTES {
        return Err(cur.err(format!(
            "header claims {n_tensors} tensors, but the {rem} bytes left hold at most {} (truncated or corrupt file)",
            rem / MIN_TENSOR_BYTES
        )));
    }

    // Metadata.
    let mut budget = max_values;
    let mut metadata: Vec<(String, MetaValue)> = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    for i in 0..n_kv {
        let key = cur.string(MAX_NAME_LEN, &|| format!("metadata key #{i}"))?;
        if key.is_empty() {
            return Err(cur.err(format!("metadata key #{i} is empty")));
        }
        if keys.contains(&key) {
            return Err(cur.err(format!("duplicate metadata key '{key}'")));
        }
        let ty = cur.u32(&|| format!("the type of key '{key}'"))?;
        budget = budget.checked_sub(1).ok_or_else(|| {
            cur.err(format!(
                "key '{key}': the metadata holds more values than the {MAX_META_VALUES} allowed"
            ))
        })?;
        let value = read_value(&mut cur, ty, &key, 0, &mut budget)?;
        keys.insert(key.clone());
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, MetaValue::U32(a))) => {
            if *a == 0 || !a.is_power_of_two() {
                return Err(cur.err(format!(
                    "{ALIGNMENT_KEY} is {a}, must be a nonzero power of two"
                )));
            }
            u64::from(*a)
        }
        Some((_, v)) => {
            return Err(cur.err(format!(
                "{ALIGNMENT_KEY} must be a u32, found a {}",
                value_type_name(value_type_id(v))
            )))
        }
    };

    // Tensor records. n_tensors is bounded by the bytes left, so the capacity is too.
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names: HashSet<String> = HashSet::new();
    for i in 0..n_tensors {
        let t = read_tensor(&mut cur, i)?;
        if names.contains(&t.name) {
            return Err(cur.err(format!("duplicate tensor name '{}'", t.name)));
        }
        names.insert(t.name.clone());
        raw.push(t);
    }

    // Data section.
    let len = bytes.len() as u64;
    let header_end = cur.pos as u64;
    let padded = align_up(header_end, alignment).ok_or_else(|| {
        cur.err(format!(
            "the data section start overflows (header ends at {header_end})"
        ))
    })?;
    let data_offset = if raw.is_empty() {
        padded.min(len)
    } else if padded > len {
        return Err(cur.err(format!(
            "truncated: the data section would start at byte {padded}, past the end of the file ({len} bytes)"
        )));
    } else {
        padded
    };

    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let name = &t.name;
        if t.offset % alignment != 0 {
            return Err(cur.err(format!(
                "tensor '{name}' has data offset {}, not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.size));
        match (start, end) {
            (Some(start), Some(end)) if end <= len => tensors.push(TensorInfo {
                shape: t.ne.iter().rev().copied().collect(),
                name: t.name,
                dtype: DType::Ggml(t.ty),
                shard: 0,
                offset: start,
                size: t.size,
            }),
            _ => {
                return Err(cur.err(format!(
                    "tensor '{name}' ({} bytes at data offset {}) runs past the end of the file ({len} bytes; truncated?)",
                    t.size, t.offset
                )))
            }
        }
    }

    Ok(GgufHeader {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

// ---------------------------------------------------------------------------------------------
// Memory-mapped file

/// A GGUF file, memory-mapped and parsed. Tensor data are views into the map.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Drops the file's pages from the resident set ([`crate::ggml::release_pages`]).
    pub fn release_pages(&self) -> std::io::Result<()> {
        crate::ggml::release_pages(&self.map)
    }

    /// Opens, maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FormatError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
        if meta.is_dir() {
            return Err(FormatError::malformed(
                path,
                "is a directory, not a GGUF file",
            ));
        }
        if meta.len() == 0 {
            return Err(FormatError::malformed(
                path,
                "empty file (0 bytes), not a GGUF file",
            ));
        }
        let map = crate::ggml::map_file(&file).map_err(|e| FormatError::io(path, e))?;
        let header = parse(path, &map)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            header,
        })
    }

    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The bytes of `t`, which must be one of this file's tensors (a `TensorInfo` whose range is
    /// outside the file gives an empty slice).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let range = usize::try_from(t.offset).ok().and_then(|start| {
            let end = start.checked_add(usize::try_from(t.size).ok()?)?;
            self.map.get(start..end)
        });
        debug_assert!(
            range.is_some(),
            "tensor '{}' is not in {:?}",
            t.name,
            self.path
        );
        range.unwrap_or(&[])
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor_data(&self, name: &str) -> Option<&[u8]> {
        self.header.tensor(name).map(|t| self.data(t))
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// A tensor the writer will store: declared up front so offsets are known before any data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    pub dtype: GgmlType,
    /// PyTorch order, outermost first; 1 to [`MAX_DIMS`] dims.
    pub shape: Vec<u64>,
}

impl TensorDecl {
    pub fn new(name: impl Into<String>, dtype: GgmlType, shape: impl Into<Vec<u64>>) -> Self {
        TensorDecl {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }

    /// Bytes of data this tensor needs, or why it cannot be stored.
    pub fn byte_size(&self) -> Result<u64, String> {
        let (name, ty) = (&self.name, self.dtype);
        if self.shape.is_empty() || self.shape.len() > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {} dims (must be 1 to {MAX_DIMS})",
                self.shape.len()
            ));
        }
        let numel = element_count(&self.shape)
            .ok_or_else(|| format!("tensor '{name}' shape {:?} is too large", self.shape))?;
        let row = self.shape.last().copied().unwrap_or(1);
        if row % ty.block_size() != 0 {
            return Err(format!(
                "tensor '{name}' of type {ty} has shape {:?}: the innermost dim {row} is not a multiple of the block size {}",
                self.shape,
                ty.block_size()
            ));
        }
        ty.bytes_for(numel)
            .ok_or_else(|| format!("tensor '{name}' byte size overflows"))
    }
}

/// Where a declared tensor goes.
struct Planned {
    name: String,
    size: u64,
    /// Absolute offset in the output.
    start: u64,
}

/// Writes a GGUF v3 file front to back: the header when created, then each tensor's data in
/// declaration order, so no more than one tensor is ever held.
pub struct GgufWriter<W: Write> {
    path: PathBuf,
    out: W,
    alignment: u64,
    data_offset: u64,
    plan: Vec<Planned>,
    next: usize,
    /// Bytes written so far.
    pos: u64,
    /// An earlier write failed; the output is unusable.
    failed: bool,
}

impl<W: Write> std::fmt::Debug for GgufWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("path", &self.path)
            .field("alignment", &self.alignment)
            .field("tensors", &self.plan.len())
            .field("next", &self.next)
            .finish()
    }
}

/// Checks a metadata value the writer is asked to store; `count` tallies values.
fn check_value(v: &MetaValue, key: &str, depth: usize, count: &mut u64) -> Result<(), String> {
    *count = count.saturating_add(1);
    match v {
        MetaValue::String(s) if s.len() as u64 > MAX_STRING_LEN => Err(format!(
            "key '{key}' has a string of {} bytes (at most {MAX_STRING_LEN})",
            s.len()
        )),
        MetaValue::Array(items) => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(format!(
                    "key '{key}' has arrays nested more than {MAX_ARRAY_DEPTH} deep"
                ));
            }
            let et = array_elem_type(items);
            for item in items {
                if value_type_id(item) != et {
                    return Err(format!(
                        "key '{key}' is an array mixing {} and {} values (GGUF arrays hold one type)",
                        value_type_name(et),
                        value_type_name(value_type_id(item))
                    ));
                }
                check_value(item, key, depth + 1, count)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Appends `v` without its type tag. Depth was checked by [`check_value`].
fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => buf.push(*x),
        MetaValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(u8::from(*x)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(items) => {
            buf.extend_from_slice(&array_elem_type(items).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(buf, item);
            }
        }
    }
}

fn check_name(kind: &str, name: &str, seen: &mut HashSet<String>) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("a {kind} is empty"));
    }
    if name.len() as u64 > MAX_NAME_LEN {
        return Err(format!(
            "{kind} '{}…' is {} bytes long (at most {MAX_NAME_LEN})",
            name.chars().take(40).collect::<String>(),
            name.len()
        ));
    }
    if !seen.insert(name.to_owned()) {
        return Err(format!("duplicate {kind} '{name}'"));
    }
    Ok(())
}

/// Zero bytes for padding.
const ZEROS: [u8; 4096] = [0; 4096];

impl<W: Write> GgufWriter<W> {
    /// Validates everything, computes the layout and writes the header (metadata, tensor
    /// records, padding) to `out`. `path` only names the output in messages. The alignment is
    /// `general.alignment` if `metadata` has it (a u32 power of two), else 32.
    pub fn new(
        path: &Path,
        mut out: W,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorDecl],
    ) -> Result<Self, FormatError> {
        let bad = |what: String| FormatError::malformed(path, format!("cannot write GGUF: {what}"));

        let mut keys = HashSet::new();
        let mut count = 0u64;
        let mut alignment = DEFAULT_ALIGNMENT;
        for (key, value) in metadata {
            check_name("metadata key", key, &mut keys).map_err(bad)?;
            check_value(value, key, 0, &mut count).map_err(bad)?;
            if key == ALIGNMENT_KEY {
                match value {
                    MetaValue::U32(a) if *a != 0 && a.is_power_of_two() => {
                        alignment = u64::from(*a)
                    }
                    v => {
                        return Err(bad(format!(
                            "{ALIGNMENT_KEY} must be a u32 nonzero power of two, got {v:?}"
                        )))
                    }
                }
            }
        }
        if count > MAX_META_VALUES {
            return Err(bad(format!(
                "the metadata holds {count} values (at most {MAX_META_VALUES})"
            )));
        }
        if tensors.len() as u64 > MAX_TENSORS {
            return Err(bad(format!(
                "{} tensors (at most {MAX_TENSORS})",
                tensors.len()
            )));
        }

        // Tensor layout: offsets relative to the data section.
        let mut names = HashSet::new();
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut rel = Vec::with_capacity(tensors.len());
        let mut data_len = 0u64;
        for t in tensors {
            check_name("tensor name", &t.name, &mut names).map_err(bad)?;
            if t.shape.len() > MAX_DIMS {
                return Err(FormatError::unsupported(
                    path,
                    format!(
                        "cannot write GGUF: tensor '{}' has {} dims (at most {MAX_DIMS})",
                        t.name,
                        t.shape.len()
                    ),
                ));
            }
            let size = t.byte_size().map_err(bad)?;
            rel.push(data_len);
            sizes.push(size);
            data_len = align_up(size, alignment)
                .and_then(|s| data_len.checked_add(s))
                .ok_or_else(|| bad("the data section size overflows".into()))?;
        }

        // Header.
        let mut buf = Vec::new();
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        buf.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_str(&mut buf, key);
            buf.extend_from_slice(&value_type_id(value).to_le_bytes());
            put_value(&mut buf, value);
        }
        for (t, &offset) in tensors.iter().zip(&rel) {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&(t.dtype as u32).to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
        }
        let data_offset = align_up(buf.len() as u64, alignment)
            .ok_or_else(|| bad("the header size overflows".into()))?;
        out.write_all(&buf).map_err(|e| FormatError::io(path, e))?;
        let mut w = GgufWriter {
            path: path.to_path_buf(),
            out,
            alignment,
            data_offset,
            plan: Vec::new(),
            next: 0,
            pos: buf.len() as u64,
            failed: false,
        };
        w.pad()?;
        w.plan = tensors
            .iter()
            .zip(rel.iter().zip(&sizes))
            .map(|(t, (&r, &size))| Planned {
                name: t.name.clone(),
                size,
                start: data_offset + r,
            })
            .collect();
        Ok(w)
    }

    /// Data alignment in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Name of the tensor `write_tensor` expects next, if any is left.
    pub fn next_tensor(&self) -> Option<&str> {
        self.plan.get(self.next).map(|p| p.name.as_str())
    }

    fn io(&mut self, e: std::io::Error) -> FormatError {
        self.failed = true;
        FormatError::io(&self.path, e)
    }

    /// Writes zeros up to the next multiple of the alignment.
    fn pad(&mut self) -> Result<(), FormatError> {
        let target = align_up(self.pos, self.alignment).unwrap_or(self.pos);
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len() as u64) as usize;
            if let Err(e) = self.out.write_all(&ZEROS[..n]) {
                return Err(self.io(e));
            }
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Writes the data of the next declared tensor, which must be `name`, and pads it to the
    /// alignment. `data` must be exactly the declared type and shape's byte size.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), FormatError> {
        let bad = |what: String| {
            FormatError::malformed(&self.path, format!("cannot write tensor '{name}': {what}"))
        };
        if self.failed {
            return Err(bad("an earlier write to this file failed".into()));
        }
        let Some(p) = self.plan.get(self.next) else {
            return Err(bad(format!(
                "all {} declared tensors are already written",
                self.plan.len()
            )));
        };
        if p.name != name {
            return Err(bad(format!(
                "expected '{}' next (tensors are written in declaration order)",
                p.name
            )));
        }
        if data.len() as u64 != p.size {
            return Err(bad(format!(
                "got {} bytes, its type and shape need {}",
                data.len(),
                p.size
            )));
        }
        debug_assert_eq!(self.pos, p.start);
        if let Err(e) = self.out.write_all(data) {
            return Err(self.io(e));
        }
        self.pos += data.len() as u64;
        self.pad()?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every declared tensor was written, flushes, and gives the output back.
    pub fn finish(mut self) -> Result<W, FormatError> {
        if self.failed {
            return Err(FormatError::malformed(
                &self.path,
                "cannot finish GGUF: an earlier write to this file failed",
            ));
        }
        if let Some(p) = self.plan.get(self.next) {
            return Err(FormatError::malformed(
                &self.path,
                format!(
                    "cannot finish GGUF: {} of {} declared tensors were not written (next: '{}')",
                    self.plan.len() - self.next,
                    self.plan.len(),
                    p.name
                ),
            ));
        }
        if let Err(e) = self.out.flush() {
            return Err(self.io(e));
        }
        Ok(self.out)
    }
}

impl<W: Write + std::io::Seek> GgufWriter<W> {
    /// Leaves the next declared tensor's data as zeros without writing it: seeks over it (the
    /// file system keeps a hole, so a sparse file takes no disk for it) and writes its last
    /// byte and padding so the file has its full length. For header-only test files (planning
    /// at real shapes); `name` must be the next declared tensor, as for `write_tensor`.
    pub fn skip_tensor(&mut self, name: &str) -> Result<(), FormatError> {
        let bad = |what: String| {
            FormatError::malformed(&self.path, format!("cannot skip tensor '{name}': {what}"))
        };
        if self.failed {
            return Err(bad("an earlier write to this file failed".into()));
        }
        let Some(p) = self.plan.get(self.next) else {
            return Err(bad("all declared tensors are already written".into()));
        };
        if p.name != name {
            return Err(bad(format!("expected '{}' next", p.name)));
        }
        let size = p.size;
        if size > 0 {
            if let Err(e) = self.out.seek(std::io::SeekFrom::Current(size as i64 - 1)) {
                return Err(self.io(e));
            }
            if let Err(e) = self.out.write_all(&[0]) {
                return Err(self.io(e));
            }
        }
        self.pos += size;
        self.pad()?;
        self.next += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("model.gguf")
    }

    /// Little-endian byte builder for hand-made files.
    #[derive(Default, Clone)]
    struct B(Vec<u8>);

    impl B {
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn u8(self, v: u8) -> Self {
            self.raw(&[v])
        }
        fn u32(self, v: u32) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn u64(self, v: u64) -> Self {
            self.raw(&v.to_le_bytes())
        }
        fn f32(self, v: f32) -> Self {
            self.raw(&v.to_le_bytes())
        }
        /// A GGUF string from raw bytes.
        fn sb(self, v: &[u8]) -> Self {
            self.u64(v.len() as u64).raw(v)
        }
        fn s(self, v: &str) -> Self {
            self.sb(v.as_bytes())
        }
        fn pad(mut self, align: usize) -> Self {
            while self.0.len() % align != 0 {
                self.0.push(0);
            }
            self
        }
        fn zeros(mut self, n: usize) -> Self {
            self.0.resize(self.0.len() + n, 0);
            self
        }
        /// A tensor record; `ne` innermost first, as stored.
        fn tensor(self, name: &str, ne: &[u64], ty: u32, offset: u64) -> Self {
            let mut b = self.s(name).u32(ne.len() as u32);
            for &d in ne {
                b = b.u64(d);
            }
            b.u32(ty).u64(offset)
        }
    }

    fn header(n_tensors: u64, n_kv: u64) -> B {
        B::default().raw(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
    }

    /// A valid file with one f32 tensor "w" of ne `[2]` (8 bytes) and the given extra kv bytes.
    fn one_tensor(ne: &[u64], ty: u32, offset: u64, data: usize) -> Vec<u8> {
        header(1, 0)
            .tensor("w", ne, ty, offset)
            .pad(32)
            .zeros(data)
            .0
    }

    fn err_of(bytes: &[u8]) -> FormatError {
        match parse(path(), bytes) {
            Ok(h) => panic!("parsed a bad file: {h:?}"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_err(bytes: &[u8], needle: &str) {
        let e = err_of(bytes).to_string();
        assert!(e.starts_with("model.gguf: "), "{e}");
        assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
        assert!(!e.contains('\n'), "{e:?} is not one line");
    }

    fn write_file(meta: &[(String, MetaValue)], decls: &[TensorDecl], data: &[Vec<u8>]) -> Vec<u8> {
        let mut w = GgufWriter::new(path(), Vec::new(), meta, decls).expect("writer");
        for (d, bytes) in decls.iter().zip(data) {
            w.write_tensor(&d.name, bytes).expect("write_tensor");
        }
        w.finish().expect("finish")
    }

    fn kv(k: &str, v: MetaValue) -> (String, MetaValue) {
        (k.to_string(), v)
    }

    fn pattern(n: u64, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Data of tensor `name` in `bytes`.
    fn tensor_bytes<'a>(h: &GgufHeader, bytes: &'a [u8], name: &str) -> &'a [u8] {
        let t = h.tensor(name).expect("tensor");
        &bytes[t.offset as usize..(t.offset + t.size) as usize]
    }

    /// The tiny file of the byte-for-byte test: one u32 kv, one string kv, an f32 2x3 tensor.
    fn tiny() -> Vec<u8> {
        let meta = [
            kv("a.count", MetaValue::U32(7)),
            kv("a.name", MetaValue::String("hi".into())),
        ];
        let decls = [TensorDecl::new("w", GgmlType::F32, [2, 3])];
        let data = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        write_file(&meta, &decls, &[data])
    }

    #[test]
    fn writer_bytes_match_the_spec() {
        // Built from the spec, field by field.
        let mut expected = Vec::new();
        expected.extend_from_slice(b"GGUF");
        expected.extend_from_slice(&3u32.to_le_bytes()); // version
        expected.extend_from_slice(&1u64.to_le_bytes()); // n_tensors
        expected.extend_from_slice(&2u64.to_le_bytes()); // n_kv
                                                         // kv 0: key "a.count", type u32 (4), value 7
        expected.extend_from_slice(&7u64.to_le_bytes());
        expected.extend_from_slice(b"a.count");
        expected.extend_from_slice(&4u32.to_le_bytes());
        expected.extend_from_slice(&7u32.to_le_bytes());
        // kv 1: key "a.name", type string (8), value "hi"
        expected.extend_from_slice(&6u64.to_le_bytes());
        expected.extend_from_slice(b"a.name");
        expected.extend_from_slice(&8u32.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(b"hi");
        // tensor info: name "w", 2 dims, ne = [3, 2] (innermost first), type f32 (0), offset 0
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(b"w");
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&0u32.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        assert_eq!(expected.len(), 116);
        // pad to 32 → data section at 128
        expected.resize(128, 0);
        for v in [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        // pad the tensor to 32 → 160
        expected.resize(160, 0);

        let got = tiny();
        assert_eq!(got, expected);

        let h = parse(path(), &got).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.alignment, 32);
        assert_eq!(h.data_offset, 128);
        assert_eq!(h.get("a.count"), Some(&MetaValue::U32(7)));
        assert_eq!(h.get("a.name").and_then(MetaValue::as_str), Some("hi"));
        assert_eq!(
            h.tensors,
            vec![TensorInfo {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![2, 3],
                shard: 0,
                offset: 128,
                size: 24,
            }]
        );
    }

    fn nested(depth: usize) -> MetaValue {
        let mut v = MetaValue::Array(vec![MetaValue::U16(1), MetaValue::U16(2)]);
        for _ in 1..depth {
            v = MetaValue::Array(vec![v]);
        }
        v
    }

    fn every_value() -> Vec<(String, MetaValue)> {
        use MetaValue::*;
        vec![
            kv("v.u8", U8(200)),
            kv("v.i8", I8(-5)),
            kv("v.u16", U16(60_000)),
            kv("v.i16", I16(-30_000)),
            kv("v.u32", U32(4_000_000_000)),
            kv("v.i32", I32(-2_000_000_000)),
            kv("v.u64", U64(u64::MAX)),
            kv("v.i64", I64(i64::MIN)),
            kv("v.f32", F32(1.5)),
            kv("v.f32.neg", F32(-0.1)),
            kv("v.f64", F64(-2.25e300)),
            kv("v.bool.t", Bool(true)),
            kv("v.bool.f", Bool(false)),
            kv("v.str", String("héllo ✓ 日本".into())),
            kv("v.str.empty", String(std::string::String::new())),
            kv("a.u8", Array(vec![U8(1), U8(255)])),
            kv("a.i8", Array(vec![I8(-1), I8(127)])),
            kv("a.u16", Array(vec![U16(1), U16(2)])),
            kv("a.i16", Array(vec![I16(-1), I16(2)])),
            kv("a.u32", Array(vec![U32(1), U32(2), U32(3)])),
            kv("a.i32", Array(vec![I32(-1)])),
            kv("a.u64", Array(vec![U64(1 << 40)])),
            kv("a.i64", Array(vec![I64(-(1 << 40))])),
            kv("a.f32", Array(vec![F32(0.5), F32(-3.0)])),
            kv("a.f64", Array(vec![F64(0.25)])),
            kv("a.bool", Array(vec![Bool(true), Bool(false), Bool(true)])),
            kv(
                "a.str",
                Array(vec![
                    String("a".into()),
                    String("".into()),
                    String("ccc".into()),
                ]),
            ),
            kv("a.empty", Array(vec![])),
            kv(
                "a.nested",
                Array(vec![
                    Array(vec![I32(1), I32(2)]),
                    Array(vec![I32(3)]),
                    Array(vec![]),
                ]),
            ),
            kv(
                "a.nested.mixed",
                Array(vec![Array(vec![String("x".into())]), Array(vec![F64(1.0)])]),
            ),
            kv("a.deep", nested(MAX_ARRAY_DEPTH)),
        ]
    }

    #[test]
    fn round_trip_every_value_type() {
        let meta = every_value();
        let bytes = write_file(&meta, &[], &[]);
        let h = parse(path(), &bytes).unwrap();
        assert_eq!(h.metadata, meta);
        assert!(h.tensors.is_empty());
        assert_eq!(h.data_offset as usize, bytes.len());
        assert_eq!(bytes.len() % 32, 0);
    }

    #[test]
    fn round_trip_every_ggml_type() {
        let decls: Vec<TensorDecl> = GgmlType::ALL
            .iter()
            .map(|&t| TensorDecl::new(format!("t.{}", t.name()), t, [3, 2 * t.block_size()]))
            .collect();
        let data: Vec<Vec<u8>> = decls
            .iter()
            .enumerate()
            .map(|(i, d)| pattern(6 * d.dtype.type_size(), i as u8))
            .collect();
        let bytes = write_file(
            &[kv("general.name", MetaValue::String("all".into()))],
            &decls,
            &data,
        );
        let h = parse(path(), &bytes).unwrap();
        assert_eq!(h.tensors.len(), GgmlType::ALL.len());
        for ((d, t), want) in decls.iter().zip(&h.tensors).zip(&data) {
            assert_eq!(t.name, d.name);
            assert_eq!(t.dtype, DType::Ggml(d.dtype));
            assert_eq!(t.shape, d.shape);
            assert_eq!(t.size, 6 * d.dtype.type_size(), "{}", d.name);
            assert_eq!(t.offset % 32, 0);
            assert_eq!(tensor_bytes(&h, &bytes, &d.name), &want[..], "{}", d.name);
        }
    }

    #[test]
    fn round_trip_5d_and_custom_alignment() {
        for align in [1u32, 8, 64, 4096] {
            let meta = [
                kv("general.architecture", MetaValue::String("wan".into())),
                kv(ALIGNMENT_KEY, MetaValue::U32(align)),
            ];
            let decls = [
                TensorDecl::new("patch_embedding.weight", GgmlType::F32, [4, 3, 1, 2, 2]),
                TensorDecl::new("b", GgmlType::F16, [3]),
                TensorDecl::new("q", GgmlType::Q8_0, [2, 64]),
                TensorDecl::new("e", GgmlType::F32, [0, 4]),
                TensorDecl::new("s", GgmlType::I32, [1]),
            ];
            let data: Vec<Vec<u8>> = [48 * 4, 6, 4 * 34, 0, 4]
                .iter()
                .enumerate()
                .map(|(i, &n)| pattern(n, i as u8 + 1))
                .collect();
            let bytes = write_file(&meta, &decls, &data);
            let h = parse(path(), &bytes).unwrap();
            assert_eq!(h.alignment, u64::from(align));
            assert_eq!(h.data_offset % u64::from(align), 0);
            assert_eq!(bytes.len() as u64 % u64::from(align), 0);
            let p = h.tensor("patch_embedding.weight").unwrap();
            assert_eq!(p.shape, vec![4, 3, 1, 2, 2]);
            assert_eq!(p.ne(), vec![2, 2, 1, 3, 4]);
            assert_eq!(p.numel(), 48);
            for (d, want) in decls.iter().zip(&data) {
                let t = h.tensor(&d.name).unwrap();
                assert_eq!(t.shape, d.shape);
                assert_eq!((t.offset - h.data_offset) % u64::from(align), 0);
                assert_eq!(tensor_bytes(&h, &bytes, &d.name), &want[..]);
            }
        }
    }

    #[test]
    fn hand_made_v2_and_scalar_tensor_are_read() {
        // Version 2 has the same layout; a 0-dim tensor is a scalar (ggml accepts it).
        let mut b = B::default().raw(b"GGUF").u32(2).u64(2).u64(1);
        b = b.s("k").u32(T_BOOL).u8(1);
        b = b.tensor("scalar", &[], 0, 0).tensor("v", &[2], 0, 32);
        let bytes = b.pad(32).f32(9.0).pad(32).f32(1.0).f32(2.0).0;
        let h = parse(path(), &bytes).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.get("k"), Some(&MetaValue::Bool(true)));
        let s = h.tensor("scalar").unwrap();
        assert_eq!((s.shape.len(), s.size, s.numel()), (0, 4, 1));
        assert_eq!(tensor_bytes(&h, &bytes, "scalar"), &9f32.to_le_bytes());
        assert_eq!(h.tensor("v").unwrap().shape, vec![2]);
    }

    #[test]
    fn short_and_empty_files() {
        assert_err(&[], "empty file");
        assert_err(b"GG", "too short");
        assert_err(b"GGUF", "truncated");
        assert_err(b"GGUF\x03\0\0\0", "truncated");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = tiny();
        let h = parse(path(), &full).unwrap();
        let end = h.tensors.iter().map(|t| t.offset + t.size).max().unwrap() as usize;
        assert_eq!(end, 152);
        for n in 0..end {
            let e = err_of(&full[..n]).to_string();
            assert!(e.starts_with("model.gguf: "), "{n}: {e}");
        }
        // Cutting the trailing padding of the last tensor loses nothing.
        assert!(parse(path(), &full[..end]).is_ok());
        assert_err(&full[..100], "truncated");
        assert_err(&full[..120], "past the end of the file");
        assert_err(&full[..140], "runs past the end of the file");

        // The same over a file with every value type and a few tensors.
        let decls = [
            TensorDecl::new("a", GgmlType::F32, [2, 3]),
            TensorDecl::new("b", GgmlType::Q4_K, [1, 256]),
        ];
        let full = write_file(&every_value(), &decls, &[pattern(24, 1), pattern(144, 2)]);
        let h = parse(path(), &full).unwrap();
        let end = h.tensors.iter().map(|t| t.offset + t.size).max().unwrap() as usize;
        for n in 0..end {
            assert!(
                parse(path(), &full[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn bad_magic_and_versions() {
        assert_err(b"GGUX\x03\0\0\0\0\0\0\0", "not a GGUF file");
        assert_err(b"{\"__metadata__\":{}}", "not a GGUF file");
        for (v, needle) in [
            (1u32, "version 1 is not supported"),
            (4, "version 4 is not supported"),
            (0, "version 0 is not supported"),
            (3u32.swap_bytes(), "big-endian"),
            (2u32.swap_bytes(), "big-endian"),
        ] {
            let bytes = B::default().raw(b"GGUF").u32(v).u64(0).u64(0).0;
            assert_err(&bytes, needle);
            assert!(matches!(err_of(&bytes), FormatError::Unsupported { .. }));
        }
    }

    #[test]
    fn absurd_counts_and_lengths() {
        assert_err(&header(u64::MAX, 0).0, "tensors (at most 1048576)");
        assert_err(
            &header(1000, 0).zeros(100).0,
            "header claims 1000 tensors, but",
        );
        assert_err(&header(0, u64::MAX).0, "metadata entries");
        assert_err(&header(0, 1 << 40).zeros(64).0, "metadata entries");
        // key length
        assert_err(
            &header(0, 1).u64(u64::MAX).zeros(8).0,
            "metadata key #0 is 18446744073709551615 bytes long (at most 65535)",
        );
        assert_err(
            &header(0, 1).u64(1000).zeros(8).0,
            "truncated: the file ends inside metadata key #0",
        );
        // string value length
        let b = header(0, 1).s("k").u32(T_STRING).u64(1 << 40).zeros(8);
        assert_err(
            &b.0,
            "a string in the value of key 'k' is 1099511627776 bytes long",
        );
        let b = header(0, 1).s("k").u32(T_STRING).u64(1000).zeros(8);
        assert_err(&b.0, "truncated");
        // array length
        let b = header(0, 1)
            .s("k")
            .u32(T_ARRAY)
            .u32(T_U32)
            .u64(u64::MAX)
            .zeros(8);
        assert_err(
            &b.0,
            "key 'k' is an array of 18446744073709551615 u32 values, which cannot fit",
        );
        let b = header(0, 1)
            .s("k")
            .u32(T_ARRAY)
            .u32(T_STRING)
            .u64(3)
            .zeros(16);
        assert_err(&b.0, "cannot fit");
        let b = header(0, 1).s("k").u32(T_ARRAY).u32(T_U8).u64(3).zeros(2);
        assert_err(&b.0, "truncated");
        // tensor name length
        let b = header(1, 0).u64(1 << 20).zeros(64);
        assert_err(
            &b.0,
            "the name of tensor #0 is 1048576 bytes long (at most 65535)",
        );
    }

    #[test]
    fn bad_shapes() {
        assert_err(
            &one_tensor(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 0),
            "whose element count overflows",
        );
        assert_err(
            &one_tensor(&[1 << 62, 4], 0, 0, 0),
            "whose element count overflows",
        );
        assert_err(&one_tensor(&[u64::MAX], 0, 0, 0), "too large");
        assert_err(
            &one_tensor(&[1; 6], 0, 0, 64),
            "tensor 'w' has 6 dims (at most 5)",
        );
        let b = header(1, 0).s("w").u32(u32::MAX).zeros(64);
        assert_err(&b.0, "has 4294967295 dims");
        assert_err(
            &one_tensor(&[33, 2], 8, 0, 128),
            "tensor 'w' of type q8_0 has rows of 33 elements, not a multiple of its block size 32",
        );
        // f32 with (i64::MAX / 2) elements: element count fits, bytes overflow u64? (no: 4 * 2^62
        // overflows) → caught as an overflowing size.
        assert_err(&one_tensor(&[1 << 62], 0, 0, 0), "byte size that overflows");
        // 5 dims are fine, and a zero dim gives an empty tensor.
        let h = parse(path(), &one_tensor(&[2, 2, 1, 3, 4], 0, 0, 192)).unwrap();
        assert_eq!(h.tensors[0].shape, vec![4, 3, 1, 2, 2]);
        let h = parse(path(), &one_tensor(&[4, 0], 0, 0, 0)).unwrap();
        assert_eq!((h.tensors[0].size, h.tensors[0].numel()), (0, 0));
        // Zero beats overflow in any order; the writer and reader agree on it.
        let h = parse(path(), &one_tensor(&[1 << 40, 1 << 40, 0], 0, 0, 0)).unwrap();
        assert_eq!(h.tensors[0].size, 0);
        let decl = [TensorDecl::new("z", GgmlType::F32, [0, 1 << 40, 1 << 40])];
        let bytes = write_file(&[], &decl, &[vec![]]);
        assert_eq!(
            parse(path(), &bytes).unwrap().tensors[0].shape,
            decl[0].shape
        );
    }

    #[test]
    fn unknown_types() {
        for id in [4u32, 5, 31, 1000, u32::MAX] {
            let bytes = one_tensor(&[32], id, 0, 256);
            assert_err(
                &bytes,
                &format!("tensor 'w' has unknown or removed ggml type id {id}"),
            );
            assert!(matches!(err_of(&bytes), FormatError::Unsupported { .. }));
        }
        let b = header(0, 1).s("k").u32(13).zeros(8);
        assert_err(&b.0, "key 'k' has unknown value type 13");
        let b = header(0, 1).s("k").u32(T_ARRAY).u32(13).u64(1).zeros(8);
        assert_err(&b.0, "key 'k' is an array of unknown value type 13");
        let b = header(0, 1).s("k").u32(T_BOOL).u8(2);
        assert_err(&b.0, "key 'k' has bool value 2 (must be 0 or 1)");
        let b = header(0, 1)
            .s("k")
            .u32(T_ARRAY)
            .u32(T_BOOL)
            .u64(2)
            .u8(1)
            .u8(7);
        assert_err(&b.0, "bool value 7");
    }

    #[test]
    fn bad_offsets() {
        assert_err(
            &one_tensor(&[2], 0, 64, 8),
            "tensor 'w' (8 bytes at data offset 64) runs past the end of the file",
        );
        assert_err(
            &one_tensor(&[2], 0, u64::MAX - 31, 8),
            "runs past the end of the file",
        );
        assert_err(
            &one_tensor(&[2], 0, 4, 64),
            "tensor 'w' has data offset 4, not a multiple of the alignment 32",
        );
        // With alignment 16, offset 16 is fine and 8 is not.
        let base = || header(1, 1).s(ALIGNMENT_KEY).u32(T_U32).u32(16);
        let ok = base().tensor("w", &[2], 0, 16).pad(16).zeros(32).0;
        assert_eq!(parse(path(), &ok).unwrap().tensors[0].offset % 16, 0);
        let bad = base().tensor("w", &[2], 0, 8).pad(16).zeros(32).0;
        assert_err(&bad, "not a multiple of the alignment 16");
    }

    #[test]
    fn duplicates_and_empty_names() {
        let b = header(2, 0)
            .tensor("w", &[2], 0, 0)
            .tensor("w", &[2], 0, 32)
            .pad(32)
            .zeros(64);
        assert_err(&b.0, "duplicate tensor name 'w'");
        let b = header(0, 2).s("k").u32(T_U8).u8(1).s("k").u32(T_U8).u8(2);
        assert_err(&b.0, "duplicate metadata key 'k'");
        let b = header(0, 1).s("").u32(T_U8).u8(1).zeros(8);
        assert_err(&b.0, "metadata key #0 is empty");
        let b = header(1, 0).tensor("", &[2], 0, 0).pad(32).zeros(32);
        assert_err(&b.0, "tensor #0 has an empty name");
    }

    #[test]
    fn invalid_utf8() {
        let b = header(0, 1).sb(&[b'k', 0xff, 0xfe]).u32(T_U8).u8(1);
        assert_err(&b.0, "metadata key #0 is not valid UTF-8");
        let b = header(0, 1).s("k").u32(T_STRING).sb(&[0xc3, 0x28]);
        assert_err(&b.0, "a string in the value of key 'k' is not valid UTF-8");
        let b = header(0, 1)
            .s("k")
            .u32(T_ARRAY)
            .u32(T_STRING)
            .u64(2)
            .s("ok")
            .sb(&[0x80]);
        assert_err(&b.0, "not valid UTF-8");
        let b = header(1, 0)
            .sb(&[0xed, 0xa0, 0x80])
            .u32(1)
            .u64(2)
            .u32(0)
            .u64(0)
            .pad(32)
            .zeros(8);
        assert_err(&b.0, "the name of tensor #0 is not valid UTF-8");
    }

    #[test]
    fn bad_alignment_values() {
        for a in [0u32, 3, 48] {
            let b = header(0, 1).s(ALIGNMENT_KEY).u32(T_U32).u32(a);
            assert_err(
                &b.0,
                &format!("general.alignment is {a}, must be a nonzero power of two"),
            );
        }
        let b = header(0, 1).s(ALIGNMENT_KEY).u32(T_U64).u64(32);
        assert_err(&b.0, "general.alignment must be a u32, found a u64");
    }

    #[test]
    fn array_nesting_depth() {
        let deep = |levels: usize| {
            let mut b = header(0, 1).s("k").u32(T_ARRAY);
            for _ in 1..levels {
                b = b.u32(T_ARRAY).u64(1);
            }
            b.u32(T_U8).u64(1).u8(5).0
        };
        let h = parse(path(), &deep(MAX_ARRAY_DEPTH)).unwrap();
        assert_eq!(h.get("k"), Some(&nested_u8(MAX_ARRAY_DEPTH)));
        assert_err(
            &deep(MAX_ARRAY_DEPTH + 1),
            "key 'k' has arrays nested more than 8 deep",
        );
        assert_err(&deep(10_000), "nested more than 8 deep");
    }

    fn nested_u8(levels: usize) -> MetaValue {
        let mut v = MetaValue::Array(vec![MetaValue::U8(5)]);
        for _ in 1..levels {
            v = MetaValue::Array(vec![v]);
        }
        v
    }

    #[test]
    fn value_budget() {
        // Arrays each fine on their own, together over the cap on values (a small cap here; the
        // real one is MAX_META_VALUES, which needs a file of at least that many bytes to reach).
        let mut b = header(0, 5);
        for i in 0..5 {
            b = b
                .s(&format!("k{i}"))
                .u32(T_ARRAY)
                .u32(T_U8)
                .u64(30)
                .zeros(30);
        }
        assert!(parse_with_limit(path(), &b.0, 200).is_ok());
        let e = parse_with_limit(path(), &b.0, 100).unwrap_err().to_string();
        assert!(
            e.contains("key 'k3': the metadata holds more values than the"),
            "{e}"
        );
        // Scalars count too.
        let mut b = header(0, 5);
        for i in 0..5 {
            b = b.s(&format!("k{i}")).u32(T_U8).u8(1);
        }
        let e = parse_with_limit(path(), &b.0, 4).unwrap_err().to_string();
        assert!(e.contains("key 'k4'"), "{e}");
    }

    #[test]
    fn random_corruption_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let meta = every_value();
        let decls = [
            TensorDecl::new("a", GgmlType::F32, [2, 3]),
            TensorDecl::new("b", GgmlType::Q4_K, [1, 256]),
        ];
        let data = [pattern(24, 1), pattern(144, 2)];
        let good = write_file(&meta, &decls, &data);
        for _ in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = match rng.gen_range(0..3) {
                    0 => rng.gen(),
                    1 => 0xff,
                    _ => bytes[i] ^ (1 << rng.gen_range(0..8)),
                };
            }
            let cut = rng.gen_range(0..=bytes.len());
            let _ = parse(path(), &bytes);
            let _ = parse(path(), &bytes[..cut]);
        }
    }

    #[test]
    fn file_open_and_views() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.gguf");
        std::fs::write(&p, tiny()).unwrap();
        let f = GgufFile::open(&p).unwrap();
        assert_eq!(f.path(), p.as_path());
        assert_eq!(f.bytes().len(), 160);
        assert_eq!(f.header().tensors.len(), 1);
        let w = f.header().tensor("w").unwrap();
        assert_eq!(f.data(w), &f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])[..]);
        assert_eq!(f.tensor_data("w"), Some(f.data(w)));
        assert_eq!(f.tensor_data("nope"), None);

        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        let e = GgufFile::open(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.gguf: empty file"), "{e}");

        let short = dir.path().join("short.gguf");
        std::fs::write(&short, &tiny()[..50]).unwrap();
        let e = GgufFile::open(&short).unwrap_err().to_string();
        assert!(e.contains("short.gguf: ") && e.contains("truncated"), "{e}");

        let e = GgufFile::open(dir.path().join("missing.gguf")).unwrap_err();
        assert!(matches!(e, FormatError::Io { .. }), "{e}");
        assert!(e.to_string().contains("missing.gguf"));

        let e = GgufFile::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    fn writer_err(meta: &[(String, MetaValue)], decls: &[TensorDecl]) -> String {
        match GgufWriter::new(path(), Vec::new(), meta, decls) {
            Ok(_) => panic!("writer accepted bad input"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn skipped_tensors_read_back_as_zeros_at_full_length() {
        let decls = vec![
            TensorDecl::new("a", GgmlType::F32, [3u64]),
            TensorDecl::new("b", GgmlType::Q8_0, [2u64, 64]),
            TensorDecl::new("c", GgmlType::F16, [5u64]),
        ];
        let mut w = GgufWriter::new(path(), std::io::Cursor::new(Vec::new()), &[], &decls).unwrap();
        w.write_tensor("a", &[1u8; 12]).unwrap();
        assert!(w.skip_tensor("c").is_err());
        w.skip_tensor("b").unwrap();
        w.skip_tensor("c").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let h = parse(path(), &bytes).unwrap();
        let b = h.tensor("b").unwrap();
        let c = h.tensor("c").unwrap();
        assert_eq!(bytes.len() as u64, align_up(c.offset + c.size, 32).unwrap());
        let data = &bytes[b.offset as usize..(b.offset + b.size) as usize];
        assert!(data.iter().all(|&x| x == 0));
        assert_eq!(
            &bytes[h.tensor("a").unwrap().offset as usize..][..12],
            &[1u8; 12]
        );
    }

    #[test]
    fn writer_rejects_bad_declarations() {
        use MetaValue::*;
        let t = |name: &str, ty, shape: &[u64]| TensorDecl::new(name, ty, shape);
        type Meta = Vec<(std::string::String, MetaValue)>;
        let cases: Vec<(Meta, Vec<TensorDecl>, &str)> = vec![
            (
                vec![],
                vec![t("a", GgmlType::F32, &[1]), t("a", GgmlType::F32, &[1])],
                "duplicate tensor name 'a'",
            ),
            (
                vec![],
                vec![t("", GgmlType::F32, &[1])],
                "a tensor name is empty",
            ),
            (
                vec![],
                vec![t("a", GgmlType::F32, &[1; 6])],
                "has 6 dims (at most 5)",
            ),
            (vec![], vec![t("a", GgmlType::F32, &[])], "has 0 dims"),
            (
                vec![],
                vec![t("a", GgmlType::Q4_K, &[256, 100])],
                "innermost dim 100 is not a multiple of the block size 256",
            ),
            (
                vec![],
                vec![t("a", GgmlType::F32, &[1 << 40, 1 << 40])],
                "too large",
            ),
            (
                vec![kv("k", U8(1)), kv("k", U8(2))],
                vec![],
                "duplicate metadata key 'k'",
            ),
            (vec![kv("", U8(1))], vec![], "a metadata key is empty"),
            (
                vec![kv(ALIGNMENT_KEY, U32(24))],
                vec![],
                "general.alignment must be a u32 nonzero power of two",
            ),
            (
                vec![kv(ALIGNMENT_KEY, U64(32))],
                vec![],
                "general.alignment must be",
            ),
            (
                vec![kv("k", Array(vec![U8(1), U16(2)]))],
                vec![],
                "mixing u8 and u16",
            ),
            (
                vec![kv("k", nested(MAX_ARRAY_DEPTH + 1))],
                vec![],
                "nested more than 8 deep",
            ),
        ];
        for (meta, decls, needle) in cases {
            let e = writer_err(&meta, &decls);
            assert!(e.starts_with("model.gguf: "), "{e}");
            assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
        }
        let long = "x".repeat(70_000);
        assert!(writer_err(&[kv(&long, U8(1))], &[]).contains("70000 bytes long"));
        // Long names (beyond ggml's 63) are fine.
        let name = "n".repeat(300);
        let bytes = write_file(&[], &[t(&name, GgmlType::F32, &[1])], &[vec![0; 4]]);
        assert_eq!(parse(path(), &bytes).unwrap().tensors[0].name, name);
    }

    #[test]
    fn writer_enforces_order_sizes_and_completeness() {
        let decls = [
            TensorDecl::new("a", GgmlType::F32, [2]),
            TensorDecl::new("b", GgmlType::F16, [3]),
        ];
        let mut w = GgufWriter::new(path(), Vec::new(), &[], &decls).unwrap();
        assert_eq!(w.next_tensor(), Some("a"));
        let e = w.write_tensor("b", &[0; 6]).unwrap_err().to_string();
        assert!(
            e.contains("cannot write tensor 'b': expected 'a' next"),
            "{e}"
        );
        let e = w.write_tensor("a", &[0; 5]).unwrap_err().to_string();
        assert!(e.contains("got 5 bytes, its type and shape need 8"), "{e}");
        w.write_tensor("a", &[1; 8]).unwrap();
        let e = w.finish().unwrap_err().to_string();
        assert!(
            e.contains("1 of 2 declared tensors were not written (next: 'b')"),
            "{e}"
        );

        let mut w = GgufWriter::new(path(), Vec::new(), &[], &decls).unwrap();
        w.write_tensor("a", &[1; 8]).unwrap();
        w.write_tensor("b", &[2; 6]).unwrap();
        assert_eq!(w.next_tensor(), None);
        let e = w.write_tensor("c", &[]).unwrap_err().to_string();
        assert!(
            e.contains("all 2 declared tensors are already written"),
            "{e}"
        );
        let bytes = w.finish().unwrap();
        let h = parse(path(), &bytes).unwrap();
        assert_eq!(tensor_bytes(&h, &bytes, "b"), &[2; 6]);
    }

    /// A sink that fails once it has taken `limit` bytes.
    struct Failing {
        taken: usize,
        limit: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.taken + buf.len() > self.limit {
                return Err(std::io::Error::other("disk full"));
            }
            self.taken += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_io_errors_poison_it() {
        let decls = [TensorDecl::new("a", GgmlType::F32, [1024])];
        let e = GgufWriter::new(
            path(),
            Failing {
                taken: 0,
                limit: 10,
            },
            &[],
            &decls,
        )
        .unwrap_err();
        assert!(matches!(e, FormatError::Io { .. }), "{e}");
        let mut w = GgufWriter::new(
            path(),
            Failing {
                taken: 0,
                limit: 200,
            },
            &[],
            &decls,
        )
        .unwrap();
        let e = w.write_tensor("a", &[0; 4096]).unwrap_err();
        assert!(e.to_string().contains("model.gguf: disk full"), "{e}");
        let e = w.write_tensor("a", &[0; 4096]).unwrap_err().to_string();
        assert!(e.contains("an earlier write to this file failed"), "{e}");
        assert!(w.finish().is_err());
    }
}
