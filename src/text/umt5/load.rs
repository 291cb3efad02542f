//! Loading a [`Umt5Tokenizer`] from one of its three sources (see the module table): the file
//! type is sniffed by [`Umt5Tokenizer::from_file`]; each source has its own reader.

mod gguf;
mod spiece;
mod tokenizer_json;

use std::path::Path;

pub use gguf::gguf_metadata_from_spiece;

use super::trie::Trie;
use super::{PieceKind, Result, Umt5Tokenizer, Umt5TokenizerError};

impl Umt5Tokenizer {
    /// Loads from a GGUF, a `tokenizer.json` or a `spiece.model`, chosen by the file's first
    /// bytes (`GGUF`, `{`) and otherwise read as a sentencepiece model.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
            f.read(&mut head).map_err(|e| io_err(path, e))?
        };
        if head[..n].starts_with(b"GGUF") {
            Self::from_gguf_file(path)
        } else if head[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
            Self::from_tokenizer_json(path)
        } else {
            Self::from_spiece_model(path)
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Umt5TokenizerError {
    Umt5TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The user-defined pieces, which sentencepiece's normalizer leaves untouched (none: `None`).
fn user_defined_trie(pieces: &[String], kinds: &[PieceKind]) -> Option<Trie> {
    let mut t = Trie::new();
    let mut any = false;
    for (i, (p, &k)) in pieces.iter().zip(kinds).enumerate() {
        if k == PieceKind::UserDefined {
            t.insert(p.as_bytes(), i as u32);
            any = true;
        }
    }
    any.then_some(t)
}
