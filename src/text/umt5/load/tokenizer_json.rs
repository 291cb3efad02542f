//! HF tokenizers `tokenizer.json` files with a `Unigram` model: HF tokenizers behaviour.

use std::path::Path;

use regex::Regex;

use super::io_err;
use crate::text::umt5::charsmap::CharsMap;
use crate::text::umt5::normalize::{HfNormalizer, HfPipeline, HfPreTokenizer, Mode, PrependScheme};
use crate::text::umt5::trie::Trie;
use crate::text::umt5::unigram::Parts;
use crate::text::umt5::{PieceKind, Result, Umt5Tokenizer, Umt5TokenizerError};

impl Umt5Tokenizer {
    /// Reads an HF tokenizers `tokenizer.json` with a `Unigram` model.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
        Self::from_tokenizer_json_bytes(&bytes, path)
    }

    /// Same, from the file's bytes (`path` for messages).
    pub fn from_tokenizer_json_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        use serde_json::Value;
        let json: Value = serde_json::from_slice(bytes)
            .map_err(|e| Umt5TokenizerError::malformed(path, format!("not JSON: {e}")))?;
        let bad = |what: String| Umt5TokenizerError::malformed(path, what);
        let model = json
            .get("model")
            .ok_or_else(|| bad("no \"model\" (not a tokenizer.json?)".into()))?;
        let model_type = model.get("type").and_then(Value::as_str).unwrap_or("?");
        if model_type != "Unigram" {
            return Err(Umt5TokenizerError::unsupported(
                path,
                format!(
                    "model type {model_type:?}, not \"Unigram\" (umT5 is a SentencePiece Unigram)"
                ),
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("model.vocab is not an array".into()))?;
        let mut pieces = Vec::with_capacity(vocab.len());
        let mut scores = Vec::with_capacity(vocab.len());
        for (i, e) in vocab.iter().enumerate() {
            let pair = e.as_array().filter(|a| a.len() == 2);
            let (piece, score) = pair
                .and_then(|a| Some((a[0].as_str()?, a[1].as_f64()?)))
                .ok_or_else(|| bad(format!("model.vocab[{i}] is not [piece, score]")))?;
            pieces.push(piece.to_string());
            scores.push(score);
        }
        let find = |text: &str| pieces.iter().position(|p| p == text).map(|i| i as u32);
        let unk_id = match model.get("unk_id") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad("model.unk_id is not a token id".into()))?,
            _ => find("<unk>").ok_or_else(|| bad("model.unk_id is missing".into()))?,
        };
        let byte_fallback = model
            .get("byte_fallback")
            .and_then(Value::as_bool)
            .unwrap_or(false);

        // Added tokens, cut from the raw text. transformers also registers the unknown token
        // (`unk_token`) as special, so `<unk>` in a prompt is cut out too.
        let mut added = Trie::new();
        if let Some(list) = json.get("added_tokens").and_then(Value::as_array) {
            for (i, t) in list.iter().enumerate() {
                let content = t.get("content").and_then(Value::as_str);
                let id = t.get("id").and_then(Value::as_u64);
                let (Some(content), Some(id)) = (content, id) else {
                    return Err(bad(format!("added_tokens[{i}] has no content or id")));
                };
                let id = u32::try_from(id)
                    .ok()
                    .filter(|&id| (id as usize) < pieces.len())
                    .ok_or_else(|| {
                        bad(format!(
                            "added_tokens[{i}] id {id} is outside the vocabulary"
                        ))
                    })?;
                if t.get("normalized").and_then(Value::as_bool) == Some(true) {
                    return Err(Umt5TokenizerError::unsupported(
                        path,
                        format!("added token {content:?} is matched after normalization"),
                    ));
                }
                added.insert(content.as_bytes(), id);
            }
        }
        if let Some(unk) = pieces.get(unk_id as usize) {
            added.insert(unk.as_bytes(), unk_id);
        }

        let mut normalizers = Vec::new();
        if let Some(n) = json.get("normalizer").filter(|v| !v.is_null()) {
            hf_normalizers(n, path, &mut normalizers)?;
        }
        let mut pre_tokenizers = Vec::new();
        if let Some(p) = json.get("pre_tokenizer").filter(|v| !v.is_null()) {
            hf_pre_tokenizers(p, path, &mut pre_tokenizers)?;
        }
        let eos_id = find("</s>").ok_or_else(|| bad("no \"</s>\" piece".into()))?;
        let pad_id = find("<pad>").unwrap_or(0);
        let n = pieces.len();
        Self::build(
            path,
            Parts {
                pieces,
                scores,
                kinds: vec![PieceKind::Normal; n],
                unk_id,
                eos_id,
                pad_id,
                byte_fallback,
                mode: Mode::HuggingFace(HfPipeline {
                    normalizers,
                    pre_tokenizers,
                    added,
                }),
            },
        )
    }
}

fn hf_normalizers(v: &serde_json::Value, path: &Path, out: &mut Vec<HfNormalizer>) -> Result<()> {
    use serde_json::Value;
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("?");
    let field = |k: &str| v.get(k);
    let bad =
        |what: String| Umt5TokenizerError::malformed(path, format!("normalizer {ty}: {what}"));
    match ty {
        "Sequence" => {
            let list = field("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no \"normalizers\" list".into()))?;
            for n in list {
                hf_normalizers(n, path, out)?;
            }
        }
        "Precompiled" => {
            let b64 = field("precompiled_charsmap")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no precompiled_charsmap".into()))?;
            if !b64.is_empty() {
                let blob =
                    base64_decode(b64).ok_or_else(|| bad("charsmap is not base64".into()))?;
                out.push(HfNormalizer::Precompiled(
                    CharsMap::parse(&blob).map_err(bad)?,
                ));
            }
        }
        "Strip" => out.push(HfNormalizer::Strip {
            left: field("strip_left").and_then(Value::as_bool).unwrap_or(true),
            right: field("strip_right")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        }),
        "Replace" => {
            let content = field("content")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no content".into()))?
                .to_string();
            let pattern = field("pattern").ok_or_else(|| bad("no pattern".into()))?;
            let re = if let Some(s) = pattern.get("String").and_then(Value::as_str) {
                regex::escape(s)
            } else if let Some(r) = pattern.get("Regex").and_then(Value::as_str) {
                r.to_string()
            } else {
                return Err(bad("pattern is neither String nor Regex".into()));
            };
            let pattern = Regex::new(&re).map_err(|e| {
                Umt5TokenizerError::unsupported(
                    path,
                    format!("normalizer Replace: pattern {re:?}: {e}"),
                )
            })?;
            out.push(HfNormalizer::Replace { pattern, content });
        }
        "Prepend" => out.push(HfNormalizer::Prepend(
            field("prepend")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("no prepend".into()))?
                .to_string(),
        )),
        "NFKC" => out.push(HfNormalizer::Nfkc),
        "NFC" => out.push(HfNormalizer::Nfc),
        "NFKD" => out.push(HfNormalizer::Nfkd),
        "NFD" => out.push(HfNormalizer::Nfd),
        "Lowercase" => out.push(HfNormalizer::Lowercase),
        other => {
            return Err(Umt5TokenizerError::unsupported(
                path,
                format!("normalizer type {other:?}"),
            ))
        }
    }
    Ok(())
}

fn hf_pre_tokenizers(
    v: &serde_json::Value,
    path: &Path,
    out: &mut Vec<HfPreTokenizer>,
) -> Result<()> {
    use serde_json::Value;
    let ty = v.get("type").and_then(Value::as_str).unwrap_or("?");
    match ty {
        "Sequence" => {
            let list = v
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    Umt5TokenizerError::malformed(path, "pre_tokenizer Sequence: no list")
                })?;
            for p in list {
                hf_pre_tokenizers(p, path, out)?;
            }
        }
        "WhitespaceSplit" => out.push(HfPreTokenizer::WhitespaceSplit),
        "Metaspace" => {
            let replacement = v
                .get("replacement")
                .and_then(Value::as_str)
                .and_then(|s| {
                    let mut c = s.chars();
                    c.next().filter(|_| c.next().is_none())
                })
                .ok_or_else(|| {
                    Umt5TokenizerError::malformed(
                        path,
                        "pre_tokenizer Metaspace: replacement is not one character",
                    )
                })?;
            let prepend = match v.get("prepend_scheme").and_then(Value::as_str) {
                Some("always") => PrependScheme::Always,
                Some("first") => PrependScheme::First,
                Some("never") => PrependScheme::Never,
                Some(other) => {
                    return Err(Umt5TokenizerError::unsupported(
                        path,
                        format!("pre_tokenizer Metaspace: prepend_scheme {other:?}"),
                    ))
                }
                // Older files: `add_prefix_space`.
                None => match v.get("add_prefix_space").and_then(Value::as_bool) {
                    Some(false) => PrependScheme::Never,
                    _ => PrependScheme::Always,
                },
            };
            let split = v.get("split").and_then(Value::as_bool).unwrap_or(true);
            out.push(HfPreTokenizer::Metaspace {
                replacement,
                prepend,
                split,
            });
        }
        other => {
            return Err(Umt5TokenizerError::unsupported(
                path,
                format!("pre_tokenizer type {other:?}"),
            ))
        }
    }
    Ok(())
}

/// Standard base64 (with or without padding), as serde writes `precompiled_charsmap`.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("TWFu").as_deref(), Some(&b"Man"[..]));
        assert_eq!(base64_decode("TWE=").as_deref(), Some(&b"Ma"[..]));
        assert_eq!(base64_decode("TQ==").as_deref(), Some(&b"M"[..]));
        assert_eq!(base64_decode("T"), None);
    }
}
