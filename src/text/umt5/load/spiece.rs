//! sentencepiece model files (`spiece.model`, `tokenizer.model`): sentencepiece behaviour.

use std::path::Path;

use super::{io_err, user_defined_trie};
use crate::text::umt5::charsmap::CharsMap;
use crate::text::umt5::normalize::{Mode, SpmNormalizer};
use crate::text::umt5::proto;
use crate::text::umt5::unigram::Parts;
use crate::text::umt5::{PieceKind, Result, Umt5Tokenizer, Umt5TokenizerError};

impl Umt5Tokenizer {
    /// Reads a sentencepiece model file (`spiece.model`, `tokenizer.model`).
    pub fn from_spiece_model(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        Self::from_spiece_bytes(&bytes, path)
    }

    /// Same, from the file's bytes (`path` for messages).
    pub fn from_spiece_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let m = proto::parse(bytes).map_err(|e| {
            Umt5TokenizerError::malformed(path, format!("not a sentencepiece model: {e}"))
        })?;
        if m.model_type != 1 {
            let name = match m.model_type {
                2 => "BPE",
                3 => "word",
                4 => "char",
                _ => "unknown",
            };
            return Err(Umt5TokenizerError::unsupported(
                path,
                format!(
                    "sentencepiece model type {} ({name}), not Unigram",
                    m.model_type
                ),
            ));
        }
        let kinds = m
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                PieceKind::from_code(i64::from(p.kind)).ok_or_else(|| {
                    Umt5TokenizerError::malformed(
                        path,
                        format!("piece {i} has unknown type {}", p.kind),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pieces: Vec<String> = m.pieces.iter().map(|p| p.piece.clone()).collect();
        let scores = m.pieces.iter().map(|p| f64::from(p.score)).collect();
        let find = |text: &str| pieces.iter().position(|p| p == text).map(|i| i as u32);
        let unk_id = kinds
            .iter()
            .position(|&k| k == PieceKind::Unknown)
            .map(|i| i as u32)
            .ok_or_else(|| Umt5TokenizerError::malformed(path, "no piece of type UNKNOWN"))?;
        let eos_id = u32::try_from(m.eos_id)
            .ok()
            .or_else(|| find("</s>"))
            .ok_or_else(|| Umt5TokenizerError::malformed(path, "no end token (eos_id < 0)"))?;
        let pad_id = u32::try_from(m.pad_id)
            .ok()
            .or_else(|| find("<pad>"))
            .unwrap_or(0);
        let charsmap = if m.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(
                CharsMap::parse(&m.precompiled_charsmap)
                    .map_err(|e| Umt5TokenizerError::malformed(path, e))?,
            )
        };
        let user_defined = user_defined_trie(&pieces, &kinds);
        Self::build(
            path,
            Parts {
                pieces,
                scores,
                kinds,
                unk_id,
                eos_id,
                pad_id,
                byte_fallback: m.byte_fallback,
                mode: Mode::SentencePiece(SpmNormalizer {
                    charsmap,
                    add_dummy_prefix: m.add_dummy_prefix,
                    remove_extra_whitespaces: m.remove_extra_whitespaces,
                    escape_whitespaces: m.escape_whitespaces,
                    treat_whitespace_as_suffix: m.treat_whitespace_as_suffix,
                    user_defined,
                }),
            },
        )
    }
}
