//! Weight files: memory-mapped GGUF and safetensors readers, the streaming GGUF writer, and the
//! name maps that recognise architectures. A tensor is a view into the map: name, type, shape and
//! a byte range; nothing is copied until a backend needs it.
//!
//! Shapes are kept in PyTorch order (outermost first) everywhere in this module; GGUF stores the
//! reverse (ggml `ne`), and [`TensorInfo::ne`] gives that back.

pub mod float;
pub mod gguf;
pub mod names;
pub mod quant;
pub mod safetensors;
pub mod weights;

use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::ggml::GgmlType;

/// Most dims a stored tensor may have (city96 stores Wan's `patch_embedding.weight` as 5-D).
pub const MAX_DIMS: usize = 5;

/// Element type of a stored tensor: a ggml type, or one of the safetensors types ggml lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Ggml(GgmlType),
    /// float8, 4 exponent bits, 3 mantissa bits, no infinities (`F8_E4M3`, `torch.float8_e4m3fn`).
    F8E4M3,
    /// float8, 5 exponent bits, 2 mantissa bits (`F8_E5M2`, `torch.float8_e5m2`).
    F8E5M2,
    /// Raw bytes (`U8`): not a weight. ComfyUI files carry data in them: the sentencepiece model
    /// of an embedded tokenizer (`spiece_model`), per-layer quantization JSON (`comfy_quant`).
    U8,
}

impl DType {
    pub const F32: DType = DType::Ggml(GgmlType::F32);
    pub const F16: DType = DType::Ggml(GgmlType::F16);
    pub const BF16: DType = DType::Ggml(GgmlType::BF16);

    /// Lowercase name: the ggml name ("q4_k"), or "f8_e4m3" / "f8_e5m2" / "u8".
    pub fn name(self) -> String {
        match self {
            DType::Ggml(t) => t.lower_name(),
            DType::F8E4M3 => "f8_e4m3".into(),
            DType::F8E5M2 => "f8_e5m2".into(),
            DType::U8 => "u8".into(),
        }
    }

    /// Bytes of `n` values, `None` if `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        match self {
            DType::Ggml(t) => t.bytes_for(n),
            DType::F8E4M3 | DType::F8E5M2 | DType::U8 => Some(n),
        }
    }

    /// The ggml type, if this is one.
    pub fn ggml(self) -> Option<GgmlType> {
        match self {
            DType::Ggml(t) => Some(t),
            _ => None,
        }
    }

    /// Plain floating point (f32, f16, bf16, f64, f8): convertible element by element.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F8E4M3
                | DType::F8E5M2
                | DType::Ggml(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::F64)
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One stored tensor: where its bytes are, and what they mean.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// PyTorch order, outermost first. Empty for a scalar.
    pub shape: Vec<u64>,
    /// Which mapped file holds the bytes (0 unless sharded).
    pub shard: usize,
    /// Absolute byte offset of the data in that file.
    pub offset: u64,
    /// Byte length of the data (already checked against dtype and shape).
    pub size: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar). Checked at load time.
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }

    /// ggml order (innermost first), padded with 1 to `n` dims.
    pub fn ne(&self) -> Vec<u64> {
        self.shape.iter().rev().copied().collect()
    }
}

/// A metadata value. GGUF's typed values map one to one; safetensors' `__metadata__` strings
/// become `String`.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    /// Elements all have the same type (GGUF arrays are homogeneous; nested arrays allowed).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any integer value that fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// JSON for `nijigen info --json` (non-finite floats become null).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            MetaValue::U8(v) => Value::from(*v),
            MetaValue::I8(v) => Value::from(*v),
            MetaValue::U16(v) => Value::from(*v),
            MetaValue::I16(v) => Value::from(*v),
            MetaValue::U32(v) => Value::from(*v),
            MetaValue::I32(v) => Value::from(*v),
            MetaValue::U64(v) => Value::from(*v),
            MetaValue::I64(v) => Value::from(*v),
            MetaValue::F32(v) => serde_json::Number::from_f64(*v as f64)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MetaValue::F64(v) => serde_json::Number::from_f64(*v)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            MetaValue::Bool(v) => Value::Bool(*v),
            MetaValue::String(s) => Value::String(s.clone()),
            MetaValue::Array(a) => Value::Array(a.iter().map(MetaValue::to_json).collect()),
        }
    }
}

/// Why a weight file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a GGUF or safetensors file", path.display())]
    UnknownFormat { path: PathBuf },
    /// The file is damaged or not what it claims to be.
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    /// Well-formed, but uses something we do not support.
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
}

impl FormatError {
    pub fn malformed(path: &Path, what: impl Into<String>) -> Self {
        FormatError::Malformed {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    pub fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        FormatError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
