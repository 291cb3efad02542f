//! GGUF `tokenizer.ggml.*` metadata (city96's umT5, llama.cpp's `t5`): sentencepiece behaviour.

use std::path::Path;

use super::user_defined_trie;
use crate::formats::gguf::{GgufFile, GgufHeader};
use crate::formats::MetaValue;
use crate::text::umt5::charsmap::CharsMap;
use crate::text::umt5::normalize::{Mode, SpmNormalizer};
use crate::text::umt5::unigram::{parse_byte_piece, Parts};
use crate::text::umt5::{PieceKind, Result, Umt5Tokenizer, Umt5TokenizerError};

impl Umt5Tokenizer {
    /// Reads the `tokenizer.ggml.*` metadata of a GGUF (city96's umT5, llama.cpp's `t5`).
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Self> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_gguf(file.header(), file.path())
    }

    /// Same, from an already parsed header (`path` for messages).
    pub fn from_gguf(header: &GgufHeader, path: &Path) -> Result<Self> {
        let get = |k: &str| header.get(&format!("tokenizer.ggml.{k}"));
        let model = match get("model") {
            None => {
                return Err(Umt5TokenizerError::missing(
                    path,
                    "the GGUF has no tokenizer.ggml.model metadata",
                ))
            }
            Some(v) => v.as_str().ok_or_else(|| {
                Umt5TokenizerError::malformed(path, "tokenizer.ggml.model is not a string")
            })?,
        };
        if model != "t5" {
            return Err(Umt5TokenizerError::unsupported(
                path,
                format!("tokenizer.ggml.model is {model:?}, not \"t5\" (SentencePiece Unigram)"),
            ));
        }
        let array = |k: &str| -> Result<&[MetaValue]> {
            match get(k) {
                Some(MetaValue::Array(a)) => Ok(a),
                Some(_) => Err(Umt5TokenizerError::malformed(
                    path,
                    format!("tokenizer.ggml.{k} is not an array"),
                )),
                None => Err(Umt5TokenizerError::missing(
                    path,
                    format!("the GGUF has no tokenizer.ggml.{k}"),
                )),
            }
        };
        let pieces = array("tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    Umt5TokenizerError::malformed(
                        path,
                        format!("tokenizer.ggml.tokens[{i}] is not a string"),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let scores = array("scores")?
            .iter()
            .enumerate()
            .map(|(i, v)| match *v {
                MetaValue::F32(s) => Ok(f64::from(s)),
                MetaValue::F64(s) => Ok(s),
                _ => Err(Umt5TokenizerError::malformed(
                    path,
                    format!("tokenizer.ggml.scores[{i}] is not a float"),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        let kinds = match get("token_type") {
            None => vec![PieceKind::Normal; pieces.len()],
            Some(_) => array("token_type")?
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    meta_int(v).and_then(PieceKind::from_code).ok_or_else(|| {
                        Umt5TokenizerError::malformed(
                            path,
                            format!("tokenizer.ggml.token_type[{i}] is not a token type (0..=6)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let flag = |k: &str, default: bool| -> Result<bool> {
            match get(k) {
                None => Ok(default),
                Some(MetaValue::Bool(b)) => Ok(*b),
                Some(_) => Err(Umt5TokenizerError::malformed(
                    path,
                    format!("tokenizer.ggml.{k} is not a bool"),
                )),
            }
        };
        // llama.cpp's defaults for these keys.
        let add_dummy_prefix = flag("add_space_prefix", true)?;
        let remove_extra_whitespaces = flag("remove_extra_whitespaces", false)?;
        let charsmap = match get("precompiled_charsmap") {
            None => None,
            Some(_) => {
                let bytes = array("precompiled_charsmap")?
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match *v {
                        MetaValue::I8(b) => Ok(b as u8),
                        _ => meta_int(v)
                            .and_then(|b| u8::try_from(b).ok())
                            .ok_or_else(|| {
                                Umt5TokenizerError::malformed(
                                    path,
                                    format!(
                                        "tokenizer.ggml.precompiled_charsmap[{i}] is not a byte"
                                    ),
                                )
                            }),
                    })
                    .collect::<Result<Vec<u8>>>()?;
                Some(CharsMap::parse(&bytes).map_err(|e| Umt5TokenizerError::malformed(path, e))?)
            }
        };
        let find = |text: &str| pieces.iter().position(|p| p == text).map(|i| i as u32);
        let id = |k: &str, fallback: Option<u32>| -> Result<Option<u32>> {
            match get(k) {
                None => Ok(fallback),
                Some(v) => meta_int(v)
                    .and_then(|i| u32::try_from(i).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        Umt5TokenizerError::malformed(
                            path,
                            format!("tokenizer.ggml.{k} is not a token id"),
                        )
                    }),
            }
        };
        let unk_fallback = kinds
            .iter()
            .position(|&k| k == PieceKind::Unknown)
            .map(|i| i as u32)
            .or_else(|| find("<unk>"));
        let unk_id = id("unknown_token_id", unk_fallback)?.ok_or_else(|| {
            Umt5TokenizerError::malformed(
                path,
                "no unknown token (tokenizer.ggml.unknown_token_id)",
            )
        })?;
        let eos_id = id("eos_token_id", find("</s>"))?.ok_or_else(|| {
            Umt5TokenizerError::malformed(path, "no end token (tokenizer.ggml.eos_token_id)")
        })?;
        let pad_id = id("padding_token_id", find("<pad>"))?.unwrap_or(0);
        // No flag in GGUF: byte fallback is on when all 256 byte pieces are there.
        let mut seen = [false; 256];
        for (p, &k) in pieces.iter().zip(&kinds) {
            if let (PieceKind::Byte, Some(b)) = (k, parse_byte_piece(p)) {
                seen[b as usize] = true;
            }
        }
        let byte_fallback = seen.iter().all(|&s| s);
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
                byte_fallback,
                mode: Mode::SentencePiece(SpmNormalizer {
                    charsmap,
                    add_dummy_prefix,
                    remove_extra_whitespaces,
                    escape_whitespaces: true,
                    treat_whitespace_as_suffix: false,
                    user_defined,
                }),
            },
        )
    }
}

/// Any GGUF integer as i64.
fn meta_int(v: &MetaValue) -> Option<i64> {
    match *v {
        MetaValue::I8(x) => Some(x.into()),
        MetaValue::I16(x) => Some(x.into()),
        MetaValue::I32(x) => Some(x.into()),
        MetaValue::I64(x) => Some(x),
        _ => v.as_u64().and_then(|x| i64::try_from(x).ok()),
    }
}

/// The `tokenizer.ggml.*` metadata llama.cpp's T5 converter writes, from a sentencepiece model
/// (`bytes`; `path` for messages): what `nijigen convert` stores in a GGUF made from a file
/// that embeds its tokenizer (ComfyUI's `spiece_model`), so the GGUF keeps it.
/// [`Umt5Tokenizer::from_gguf`] reads it back to the same tokenizer.
pub fn gguf_metadata_from_spiece(bytes: &[u8], path: &Path) -> Result<Vec<(String, MetaValue)>> {
    let m = crate::text::umt5::proto::parse(bytes).map_err(|e| {
        Umt5TokenizerError::malformed(path, format!("not a sentencepiece model: {e}"))
    })?;
    if m.model_type != 1 {
        return Err(Umt5TokenizerError::unsupported(
            path,
            format!("sentencepiece model type {}, not Unigram", m.model_type),
        ));
    }
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    let id = |v: i32| MetaValue::U32(u32::try_from(v).unwrap_or(0));
    let mut md = vec![
        (key("model"), MetaValue::String("t5".into())),
        (
            key("tokens"),
            MetaValue::Array(
                m.pieces
                    .iter()
                    .map(|p| MetaValue::String(p.piece.clone()))
                    .collect(),
            ),
        ),
        (
            key("scores"),
            MetaValue::Array(m.pieces.iter().map(|p| MetaValue::F32(p.score)).collect()),
        ),
        (
            key("token_type"),
            MetaValue::Array(m.pieces.iter().map(|p| MetaValue::I32(p.kind)).collect()),
        ),
        (key("add_space_prefix"), MetaValue::Bool(m.add_dummy_prefix)),
        (
            key("remove_extra_whitespaces"),
            MetaValue::Bool(m.remove_extra_whitespaces),
        ),
        (key("unknown_token_id"), id(m.unk_id)),
        (key("eos_token_id"), id(m.eos_id)),
        (key("padding_token_id"), id(m.pad_id.max(0))),
        (key("add_bos_token"), MetaValue::Bool(false)),
        (key("add_eos_token"), MetaValue::Bool(true)),
    ];
    if !m.precompiled_charsmap.is_empty() {
        md.push((
            key("precompiled_charsmap"),
            MetaValue::Array(
                m.precompiled_charsmap
                    .iter()
                    .map(|&b| MetaValue::U8(b))
                    .collect(),
            ),
        ));
    }
    Ok(md)
}
