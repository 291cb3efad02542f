//! One entry point for every weight file: GGUF, a safetensors file, safetensors shards, or a
//! sharded index. The format is sniffed from the bytes, not the extension.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::gguf::GgufFile;
use super::safetensors::SafetensorsFile;
use super::{DType, FormatError, MetaValue, TensorInfo};

/// Container format of a weight file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gguf,
    Safetensors,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
        }
    }
}

enum Inner {
    Gguf(GgufFile),
    Safetensors(SafetensorsFile),
}

/// An open (memory-mapped) weight file or set of shards.
pub struct WeightFile {
    inner: Inner,
    paths: Vec<PathBuf>,
}

/// Sniffs the format of `path` from its first bytes.
pub fn sniff(path: &Path) -> Result<Format, FormatError> {
    if path.is_dir() {
        return Err(FormatError::unsupported(
            path,
            "is a folder; pass the weight file (or its *.safetensors.index.json)",
        ));
    }
    if path.to_string_lossy().ends_with(".index.json") {
        return Ok(Format::Safetensors);
    }
    let mut f = File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(FormatError::io(path, e)),
        }
    }
    if n == 0 {
        return Err(FormatError::malformed(path, "empty file"));
    }
    if n >= 4 && &head[..4] == b"GGUF" {
        return Ok(Format::Gguf);
    }
    if n >= 4 && &head[..4] == b"FUGG" {
        return Err(FormatError::unsupported(
            path,
            "big-endian GGUF is not supported",
        ));
    }
    // safetensors: u64 little-endian header length, then a JSON object.
    if n == 9 && head[8] == b'{' {
        return Ok(Format::Safetensors);
    }
    Err(FormatError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

impl WeightFile {
    /// Opens one file, or several safetensors shards that together form one model.
    pub fn open(paths: &[PathBuf]) -> Result<WeightFile, FormatError> {
        let first = paths
            .first()
            .ok_or_else(|| FormatError::malformed(Path::new("<none>"), "no input file given"))?;
        let formats = paths
            .iter()
            .map(|p| sniff(p))
            .collect::<Result<Vec<_>, _>>()?;
        let inner = if paths.len() == 1 {
            match formats[0] {
                Format::Gguf => Inner::Gguf(GgufFile::open(first)?),
                Format::Safetensors => Inner::Safetensors(SafetensorsFile::open_any(first)?),
            }
        } else {
            if let Some((p, _)) = paths
                .iter()
                .zip(&formats)
                .find(|(_, f)| **f == Format::Gguf)
            {
                return Err(FormatError::unsupported(
                    p,
                    "several inputs are only accepted as safetensors shards of one model; pass GGUF files one at a time",
                ));
            }
            if let Some(p) = paths
                .iter()
                .find(|p| p.to_string_lossy().ends_with(".index.json"))
            {
                return Err(FormatError::unsupported(
                    p,
                    "pass either the index file or the shards, not both",
                ));
            }
            Inner::Safetensors(SafetensorsFile::open_many(paths)?)
        };
        let paths = match &inner {
            Inner::Gguf(_) => vec![first.clone()],
            Inner::Safetensors(s) => s.paths().to_vec(),
        };
        Ok(WeightFile { inner, paths })
    }

    /// Opens a single path (file or index).
    pub fn open_path(path: &Path) -> Result<WeightFile, FormatError> {
        WeightFile::open(&[path.to_path_buf()])
    }

    /// Drops the file's pages from this process's resident set; tensors used in place fault
    /// them in again when next read ([`crate::ggml::release_pages`]).
    pub fn release_pages(&self) -> std::io::Result<()> {
        match &self.inner {
            Inner::Gguf(g) => g.release_pages(),
            Inner::Safetensors(s) => s.release_pages(),
        }
    }

    pub fn format(&self) -> Format {
        match self.inner {
            Inner::Gguf(_) => Format::Gguf,
            Inner::Safetensors(_) => Format::Safetensors,
        }
    }

    /// The files behind this model (shards in order).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        match &self.inner {
            Inner::Gguf(g) => &g.header().tensors,
            Inner::Safetensors(s) => s.tensors(),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match &self.inner {
            Inner::Gguf(g) => g.header().tensor(name),
            Inner::Safetensors(s) => s.tensor(name),
        }
    }

    /// Metadata: GGUF key/values, or safetensors `__metadata__` strings.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        match &self.inner {
            Inner::Gguf(g) => &g.header().metadata,
            Inner::Safetensors(s) => s.metadata(),
        }
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// ComfyUI's embedded sentencepiece tokenizer: the U8 tensor `spiece_model` (or
    /// `<prefix>.spiece_model`) holding the serialized model, if the file carries one.
    pub fn spiece_model(&self) -> Option<&TensorInfo> {
        self.tensors().iter().find(|t| {
            t.dtype == DType::U8 && (t.name == "spiece_model" || t.name.ends_with(".spiece_model"))
        })
    }

    /// The stored bytes of `t` (a view into the map).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        match &self.inner {
            Inner::Gguf(g) => g.data(t),
            Inner::Safetensors(s) => s.data(t),
        }
    }

    /// The whole mapped bytes of file `shard` (tensor offsets are absolute in it).
    pub fn map(&self, shard: usize) -> &[u8] {
        match &self.inner {
            Inner::Gguf(g) => {
                if shard == 0 {
                    g.bytes()
                } else {
                    &[]
                }
            }
            Inner::Safetensors(s) => s.map_bytes(shard),
        }
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors().iter().map(|t| t.size).sum()
    }

    /// GGUF version, if GGUF.
    pub fn gguf_version(&self) -> Option<u32> {
        match &self.inner {
            Inner::Gguf(g) => Some(g.header().version),
            Inner::Safetensors(_) => None,
        }
    }
}
