//! The umT5 tokenizer for Wan2.1: a SentencePiece **Unigram** model (Viterbi segmentation over
//! piece scores, `<0xNN>` byte fallback, `<unk>` otherwise), its normalizer, Wan's prompt
//! cleaning, `</s>` appended and padding to 512 tokens.
//!
//! Three sources, two behaviours (each mirrors the reference that reads that file):
//!
//! | source | reader | mirrors |
//! |---|---|---|
//! | GGUF `tokenizer.ggml.*` (city96 / llama.cpp `t5`) | [`Umt5Tokenizer::from_gguf_file`] | sentencepiece |
//! | `spiece.model` (sentencepiece `ModelProto`) | [`Umt5Tokenizer::from_spiece_model`] | sentencepiece |
//! | `tokenizer.json` (HF tokenizers `Unigram`) | [`Umt5Tokenizer::from_tokenizer_json`] | HF tokenizers (what Wan runs) |
//!
//! sentencepiece behaviour: the precompiled charsmap is applied by longest prefix, then
//! `remove_extra_whitespaces` (strip, merge runs of spaces), `add_dummy_prefix`, spaces to `▁`;
//! Viterbi over the whole string with normal and user-defined pieces (unused, control, byte and
//! unknown pieces never match text); unknown score = lowest normal score − 10. A GGUF has no
//! `byte_fallback` flag: it is on when the vocabulary has all 256 `<0xNN>` byte pieces.
//!
//! HF behaviour (`tokenizer.json`): added tokens (`</s>`, `<pad>`, the `<unk>` piece, `<extra_id_N>`)
//! are cut out of the raw text first, as transformers does; then the JSON's normalizers
//! (`Precompiled` per grapheme cluster, `Strip`, `Replace`, NFKC, ...) and pre-tokenizers
//! (`Metaspace`, `WhitespaceSplit`), then Viterbi per word over every vocabulary entry; unknown
//! score = lowest score − 10; consecutive unknowns fused, then byte fallback if the model says so.
//!
//! The two agree on ordinary prompts; they differ on literal special-token text in a prompt
//! (`"</s>"` is one id for HF, characters for sentencepiece), on text spelling a byte piece
//! (`"<0x41>"`), and on the rare charsmap rules that do not align with grapheme clusters.
//!
//! ```no_run
//! use nijigen::text::umt5::Umt5Tokenizer;
//!
//! let tok = Umt5Tokenizer::from_file("umt5-xxl-encoder-Q8_0.gguf")?;
//! let t = tok.encode_wan("A cat walks on the grass, realistic style.");
//! assert_eq!(t.ids.len(), 512); // `</s>` at t.len - 1, then pad id 0
//! # Ok::<(), nijigen::text::umt5::Umt5TokenizerError>(())
//! ```

pub mod charsmap;
mod clean;
mod proto;
mod trie;

use std::path::{Path, PathBuf};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::formats::gguf::{GgufFile, GgufHeader};
use crate::formats::{FormatError, MetaValue};
use charsmap::CharsMap;
pub use clean::{html_unescape, is_py_space, wan_clean};
use trie::Trie;

/// Wan2.1's text length for umT5 (`text_len` in the configs).
pub const TEXT_LEN: usize = 512;
/// sentencepiece's penalty for an unknown character below the lowest piece score.
const UNK_PENALTY: f64 = 10.0;
/// The escaped space.
const SPACE: &str = "\u{2581}";

/// Why a umT5 tokenizer could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Umt5TokenizerError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The file has no tokenizer where one was looked for.
    #[error(
        "{}: no umT5 tokenizer ({what}); pass one with --t5-tokenizer tokenizer.json|spiece.model",
        path.display()
    )]
    Missing { path: PathBuf, what: String },
    /// The tokenizer data are damaged or inconsistent.
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    /// Well-formed, but not a tokenizer this reader handles (BPE, an unknown normalizer, ...).
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
}

impl Umt5TokenizerError {
    fn malformed(path: &Path, what: impl Into<String>) -> Self {
        Umt5TokenizerError::Malformed {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    fn unsupported(path: &Path, what: impl Into<String>) -> Self {
        Umt5TokenizerError::Unsupported {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    fn missing(path: &Path, what: impl Into<String>) -> Self {
        Umt5TokenizerError::Missing {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

type Result<T> = std::result::Result<T, Umt5TokenizerError>;

/// sentencepiece's piece types (also GGUF's `tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    /// From the sentencepiece / GGUF number (0, "undefined" in llama.cpp, reads as normal).
    fn from_code(code: i64) -> Option<PieceKind> {
        Some(match code {
            0 | 1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }
}

/// A prompt tokenized for the encoder: `ids` padded to the text length with the pad id, and
/// the real length (content tokens plus `</s>`), which is the attention mask's sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Umt5Tokens {
    pub ids: Vec<u32>,
    pub len: usize,
}

impl Umt5Tokens {
    /// The ids without padding (what `Umt5Encoder::encode` takes).
    pub fn real(&self) -> &[u32] {
        &self.ids[..self.len]
    }

    /// transformers' `attention_mask`: 1 for the real tokens, 0 for padding.
    pub fn mask(&self) -> Vec<u32> {
        (0..self.ids.len())
            .map(|i| u32::from(i < self.len))
            .collect()
    }
}

/// sentencepiece's `NormalizerSpec` and what it needs from the trainer spec.
#[derive(Clone, Debug)]
struct SpmNormalizer {
    charsmap: Option<CharsMap>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    treat_whitespace_as_suffix: bool,
    /// User-defined pieces pass through normalization untouched (longest match).
    user_defined: Option<Trie>,
}

/// One HF tokenizers normalizer.
#[derive(Clone, Debug)]
enum HfNormalizer {
    Precompiled(CharsMap),
    Strip { left: bool, right: bool },
    Replace { pattern: Regex, content: String },
    Prepend(String),
    Nfkc,
    Nfc,
    Nfkd,
    Nfd,
    Lowercase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrependScheme {
    Always,
    First,
    Never,
}

/// One HF tokenizers pre-tokenizer.
#[derive(Clone, Debug)]
enum HfPreTokenizer {
    WhitespaceSplit,
    Metaspace {
        replacement: char,
        prepend: PrependScheme,
        split: bool,
    },
}

#[derive(Clone, Debug)]
struct HfPipeline {
    normalizers: Vec<HfNormalizer>,
    pre_tokenizers: Vec<HfPreTokenizer>,
    /// Added tokens cut out of the raw text (content → id).
    added: Trie,
}

#[derive(Clone, Debug)]
enum Mode {
    SentencePiece(SpmNormalizer),
    HuggingFace(HfPipeline),
}

/// The umT5 Unigram tokenizer. Cheap to use from several threads (`&self` everywhere).
#[derive(Clone, Debug)]
pub struct Umt5Tokenizer {
    pieces: Vec<String>,
    scores: Vec<f64>,
    kinds: Vec<PieceKind>,
    /// Pieces the Viterbi search may use.
    trie: Trie,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// `<0xNN>` ids when byte fallback is on.
    byte_ids: Option<Box<[u32; 256]>>,
    unk_score: f64,
    /// Highest normal score (sentencepiece scores a user-defined piece `bytes * max - 0.1`).
    max_score: f64,
    mode: Mode,
}

/// Everything the constructors gather before building.
struct Parts {
    pieces: Vec<String>,
    scores: Vec<f64>,
    kinds: Vec<PieceKind>,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    byte_fallback: bool,
    mode: Mode,
}

#[cfg(test)]
fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

impl Umt5Tokenizer {
    fn build(path: &Path, p: Parts) -> Result<Self> {
        let n = p.pieces.len();
        if n == 0 {
            return Err(Umt5TokenizerError::malformed(path, "empty vocabulary"));
        }
        if n > u32::MAX as usize - 1 {
            return Err(Umt5TokenizerError::malformed(path, "vocabulary too large"));
        }
        if p.scores.len() != n || p.kinds.len() != n {
            return Err(Umt5TokenizerError::malformed(
                path,
                format!(
                    "{n} pieces but {} scores and {} types",
                    p.scores.len(),
                    p.kinds.len()
                ),
            ));
        }
        for (what, id) in [("unknown", p.unk_id), ("eos", p.eos_id), ("pad", p.pad_id)] {
            if id as usize >= n {
                return Err(Umt5TokenizerError::malformed(
                    path,
                    format!("{what} token id {id} is outside the vocabulary of {n}"),
                ));
            }
        }
        if let Some(i) = p.scores.iter().position(|s| !s.is_finite()) {
            return Err(Umt5TokenizerError::malformed(
                path,
                format!("piece {i} ({:?}) has a non-finite score", p.pieces[i]),
            ));
        }
        let hf = matches!(p.mode, Mode::HuggingFace(_));
        let mut trie = Trie::new();
        let (mut min_score, mut max_score) = (f64::INFINITY, f64::NEG_INFINITY);
        for (i, piece) in p.pieces.iter().enumerate() {
            let kind = p.kinds[i];
            if hf || kind == PieceKind::Normal {
                min_score = min_score.min(p.scores[i]);
                max_score = max_score.max(p.scores[i]);
            }
            if hf || matches!(kind, PieceKind::Normal | PieceKind::UserDefined) {
                trie.insert(piece.as_bytes(), i as u32);
            }
        }
        if !min_score.is_finite() {
            (min_score, max_score) = (0.0, 0.0);
        }
        let byte_ids = if p.byte_fallback {
            let mut ids = Box::new([u32::MAX; 256]);
            for (i, piece) in p.pieces.iter().enumerate() {
                if hf || p.kinds[i] == PieceKind::Byte {
                    if let Some(b) = parse_byte_piece(piece) {
                        if ids[b as usize] == u32::MAX {
                            ids[b as usize] = i as u32;
                        }
                    }
                }
            }
            // All 256 or none (HF tokenizers: one missing byte piece gives `<unk>`).
            ids.iter().all(|&id| id != u32::MAX).then_some(ids)
        } else {
            None
        };
        tracing::debug!(
            vocab = n,
            byte_fallback = byte_ids.is_some(),
            hf,
            "umT5 tokenizer loaded from {}",
            path.display()
        );
        Ok(Umt5Tokenizer {
            pieces: p.pieces,
            scores: p.scores,
            kinds: p.kinds,
            trie,
            unk_id: p.unk_id,
            eos_id: p.eos_id,
            pad_id: p.pad_id,
            byte_ids,
            unk_score: min_score - UNK_PENALTY,
            max_score,
            mode: p.mode,
        })
    }

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

    // -----------------------------------------------------------------------------------------
    // GGUF

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

    // -----------------------------------------------------------------------------------------
    // spiece.model

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

    // -----------------------------------------------------------------------------------------
    // tokenizer.json

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

    // -----------------------------------------------------------------------------------------
    // Accessors

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }
    /// Whether unknown characters become `<0xNN>` byte pieces.
    pub fn byte_fallback(&self) -> bool {
        self.byte_ids.is_some()
    }
    /// The text of piece `id`.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    // -----------------------------------------------------------------------------------------
    // Encoding

    /// The piece ids of `text` as the source's reference tokenizes it: no cleaning, no `</s>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        match &self.mode {
            Mode::SentencePiece(spec) => {
                let normalized = self.normalize_spm(spec, text);
                self.viterbi(&normalized, &mut out);
            }
            Mode::HuggingFace(hf) => self.encode_hf(hf, text, &mut out),
        }
        out
    }

    /// `text` (not cleaned) as transformers' `tokenizer(text, padding='max_length',
    /// truncation=True, max_length=seq_len)`: at most `seq_len - 1` pieces, `</s>`, then the pad
    /// id up to `seq_len`. `seq_len` 0 gives nothing.
    pub fn encode_padded(&self, text: &str, seq_len: usize) -> Umt5Tokens {
        if seq_len == 0 {
            return Umt5Tokens {
                ids: Vec::new(),
                len: 0,
            };
        }
        let mut ids = self.encode(text);
        ids.truncate(seq_len - 1);
        ids.push(self.eos_id);
        let len = ids.len();
        ids.resize(seq_len, self.pad_id);
        Umt5Tokens { ids, len }
    }

    /// A Wan2.1 prompt as the official `HuggingfaceTokenizer(seq_len=512, clean='whitespace')`
    /// gives it to umT5: [`wan_clean`], then [`encode_padded`](Self::encode_padded) to 512.
    pub fn encode_wan(&self, prompt: &str) -> Umt5Tokens {
        self.encode_padded(&wan_clean(prompt), TEXT_LEN)
    }

    /// sentencepiece's `Normalizer::Normalize`.
    fn normalize_spm(&self, spec: &SpmNormalizer, input: &str) -> String {
        let space = if spec.escape_whitespaces { SPACE } else { " " };
        // One normalization step: (bytes consumed, output).
        let prefix = |s: &str| -> (usize, String) {
            if let Some(ud) = &spec.user_defined {
                let mut longest = 0;
                ud.prefixes(s.as_bytes(), |n, _| longest = n);
                if longest > 0 && s.is_char_boundary(longest) {
                    return (longest, s[..longest].to_string());
                }
            }
            if let Some(map) = &spec.charsmap {
                if let Some((n, rep)) = map.longest_prefix(s) {
                    return (n, rep.to_string());
                }
            }
            let n = s.chars().next().map_or(0, char::len_utf8);
            (n, s[..n].to_string())
        };
        let mut input = input;
        if spec.remove_extra_whitespaces {
            while !input.is_empty() {
                let (n, rep) = prefix(input);
                if rep != " " {
                    break;
                }
                input = &input[n..];
            }
        }
        let mut out = String::with_capacity(input.len() * 3 / 2 + 3);
        if input.is_empty() {
            return out;
        }
        if !spec.treat_whitespace_as_suffix && spec.add_dummy_prefix {
            out.push_str(space);
        }
        let mut is_prev_space = spec.remove_extra_whitespaces;
        while !input.is_empty() {
            let (n, rep) = prefix(input);
            let mut sp = rep.as_str();
            while is_prev_space && sp.starts_with(' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for c in sp.chars() {
                    if c == ' ' {
                        out.push_str(space);
                    } else {
                        out.push(c);
                    }
                }
                is_prev_space = sp.ends_with(' ');
            }
            input = &input[n.max(1).min(input.len())..];
            if !spec.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if spec.treat_whitespace_as_suffix && spec.add_dummy_prefix {
            out.push_str(space);
        }
        if spec.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        out
    }

    /// HF tokenizers' `Tokenizer::encode` without post-processing.
    fn encode_hf(&self, hf: &HfPipeline, text: &str, out: &mut Vec<u32>) {
        let mut start = 0; // start of the pending text section
        let mut pos = 0;
        while pos < text.len() {
            let mut longest = None;
            hf.added
                .prefixes(&text.as_bytes()[pos..], |n, id| longest = Some((n, id)));
            match longest {
                Some((n, id)) if text.is_char_boundary(pos + n) => {
                    self.hf_section(hf, &text[start..pos], start == 0, out);
                    out.push(id);
                    pos += n;
                    start = pos;
                }
                _ => pos += text[pos..].chars().next().map_or(1, char::len_utf8),
            }
        }
        self.hf_section(hf, &text[start..], start == 0, out);
    }

    fn hf_section(&self, hf: &HfPipeline, text: &str, first: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut s = text.to_string();
        for n in &hf.normalizers {
            s = match n {
                HfNormalizer::Precompiled(map) => map.normalize_hf(&s),
                HfNormalizer::Strip { left, right } => {
                    let mut t = s.as_str();
                    if *left {
                        t = t.trim_start();
                    }
                    if *right {
                        t = t.trim_end();
                    }
                    t.to_string()
                }
                HfNormalizer::Replace { pattern, content } => pattern
                    .replace_all(&s, regex::NoExpand(content))
                    .into_owned(),
                HfNormalizer::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
                HfNormalizer::Prepend(_) => s,
                HfNormalizer::Nfkc => s.nfkc().collect(),
                HfNormalizer::Nfc => s.nfc().collect(),
                HfNormalizer::Nfkd => s.nfkd().collect(),
                HfNormalizer::Nfd => s.nfd().collect(),
                HfNormalizer::Lowercase => s.to_lowercase(),
            };
        }
        if s.is_empty() {
            return;
        }
        let mut words = vec![s];
        for p in &hf.pre_tokenizers {
            let mut next = Vec::new();
            for w in words {
                match p {
                    HfPreTokenizer::WhitespaceSplit => {
                        next.extend(w.split_whitespace().map(str::to_string))
                    }
                    HfPreTokenizer::Metaspace {
                        replacement,
                        prepend,
                        split,
                    } => {
                        let mut t: String = w
                            .chars()
                            .map(|c| if c == ' ' { *replacement } else { c })
                            .collect();
                        let add = match prepend {
                            PrependScheme::Always => true,
                            PrependScheme::First => first,
                            PrependScheme::Never => false,
                        };
                        if add && !t.starts_with(*replacement) {
                            t.insert(0, *replacement);
                        }
                        if *split {
                            // Split before each replacement char (MergedWithNext).
                            let mut cur = String::new();
                            for c in t.chars() {
                                if c == *replacement && !cur.is_empty() {
                                    next.push(std::mem::take(&mut cur));
                                }
                                cur.push(c);
                            }
                            if !cur.is_empty() {
                                next.push(cur);
                            }
                        } else {
                            next.push(t);
                        }
                    }
                }
            }
            words = next;
        }
        for w in &words {
            self.viterbi(w, out);
        }
    }

    /// The best segmentation of `text` (already normalized) by total piece score; unknown
    /// characters get the unknown score, runs of them are fused, then become byte pieces when
    /// byte fallback is on.
    fn viterbi(&self, text: &str, out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            start: usize,
            score: f64,
            set: bool,
        }
        let bytes = text.as_bytes();
        let n = bytes.len();
        if n == 0 {
            return;
        }
        let mut best = vec![
            Best {
                id: self.unk_id,
                start: 0,
                score: 0.0,
                set: false,
            };
            n + 1
        ];
        best[0].set = true;
        let mut pos = 0;
        while pos < n {
            let char_len = text[pos..].chars().next().map_or(1, char::len_utf8);
            let here = best[pos].score;
            let mut single = false;
            self.trie.prefixes(&bytes[pos..], |len, id| {
                let score = match self.kinds[id as usize] {
                    PieceKind::UserDefined => len as f64 * self.max_score - 0.1,
                    _ => self.scores[id as usize],
                };
                let cand = here + score;
                let node = &mut best[pos + len];
                if !node.set || cand > node.score {
                    *node = Best {
                        id,
                        start: pos,
                        score: cand,
                        set: true,
                    };
                }
                single |= len == char_len;
            });
            if !single {
                let cand = here + self.unk_score;
                let node = &mut best[pos + char_len];
                if !node.set || cand > node.score {
                    *node = Best {
                        id: self.unk_id,
                        start: pos,
                        score: cand,
                        set: true,
                    };
                }
            }
            pos += char_len;
        }
        // Backtrack into (start, end, id), fusing runs of unknowns.
        let mut segs: Vec<(usize, usize, u32)> = Vec::new();
        let mut end = n;
        while end > 0 {
            let b = best[end];
            match segs.last_mut() {
                Some(last) if b.id == self.unk_id && last.2 == self.unk_id => last.0 = b.start,
                _ => segs.push((b.start, end, b.id)),
            }
            end = b.start;
        }
        for &(s, e, id) in segs.iter().rev() {
            match (&self.byte_ids, id == self.unk_id) {
                (Some(bytes_ids), true) => {
                    out.extend(bytes[s..e].iter().map(|&b| bytes_ids[b as usize]))
                }
                _ => out.push(id),
            }
        }
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Umt5TokenizerError {
    Umt5TokenizerError::Io {
        path: path.to_path_buf(),
        source,
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

/// `<0xNN>` → NN.
fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

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

    /// A hand-made sentencepiece-mode vocabulary.
    fn hand_made(byte_fallback: bool) -> Umt5Tokenizer {
        let mut v: Vec<(&str, f64, PieceKind)> = vec![
            ("<pad>", 0.0, PieceKind::Control),
            ("</s>", 0.0, PieceKind::Control),
            ("<unk>", 0.0, PieceKind::Unknown),
            ("\u{2581}", -2.0, PieceKind::Normal),
            ("\u{2581}a", -1.0, PieceKind::Normal),
            ("b", -3.0, PieceKind::Normal),
            ("\u{2581}ab", -5.0, PieceKind::Normal),
            ("ab", -1.5, PieceKind::Normal),
            ("c", -4.0, PieceKind::Normal),
            ("abc", -4.4, PieceKind::Normal),
            ("a", -2.5, PieceKind::Normal),
            ("zz", -1.0, PieceKind::Unused),
        ];
        let bytes: Vec<String> = (0..=255u8).map(byte_piece).collect();
        if byte_fallback {
            v.extend(bytes.iter().map(|b| (b.as_str(), 0.0, PieceKind::Byte)));
        }
        Umt5Tokenizer::build(
            Path::new("hand-made"),
            Parts {
                pieces: v.iter().map(|p| p.0.to_string()).collect(),
                scores: v.iter().map(|p| p.1).collect(),
                kinds: v.iter().map(|p| p.2).collect(),
                unk_id: 2,
                eos_id: 1,
                pad_id: 0,
                byte_fallback,
                mode: Mode::SentencePiece(SpmNormalizer {
                    charsmap: None,
                    add_dummy_prefix: true,
                    remove_extra_whitespaces: true,
                    escape_whitespaces: true,
                    treat_whitespace_as_suffix: false,
                    user_defined: None,
                }),
            },
        )
        .expect("valid vocabulary")
    }

    #[test]
    fn viterbi_picks_the_best_total_score() {
        let t = hand_made(false);
        // "▁ab": ▁a + b = -4 beats ▁ab = -5 and ▁ + ab = -3.5? No: -3.5 is best.
        assert_eq!(t.encode("ab"), [3, 7]);
        // "▁abc": ▁ + abc = -6.4; ▁ + ab + c = -7.5; ▁a + b + c = -8: abc wins.
        assert_eq!(t.encode("abc"), [3, 9]);
        // Unused pieces never match.
        assert_eq!(t.encode("zz"), [3, 2]);
    }

    #[test]
    fn unknowns_fuse_or_fall_back_to_bytes() {
        let t = hand_made(false);
        assert_eq!(t.encode("a\u{e9}\u{e8}b"), [4, 2, 5]);
        let t = hand_made(true);
        let b = |x: u8| 12 + x as u32;
        assert_eq!(t.encode("a\u{e9}b"), [4, b(0xc3), b(0xa9), 5]);
    }

    #[test]
    fn whitespace_handling_and_padding() {
        let t = hand_made(false);
        assert_eq!(t.encode("   a   a  "), [4, 4]);
        assert_eq!(t.encode("   "), Vec::<u32>::new());
        let p = t.encode_padded("a a a", 3);
        assert_eq!((p.ids.as_slice(), p.len), (&[4, 4, 1][..], 3));
        let p = t.encode_padded("a", 5);
        assert_eq!(p.ids, [4, 1, 0, 0, 0]);
        assert_eq!(p.mask(), [1, 1, 0, 0, 0]);
    }

    /// What transformers' `T5Converter` makes of a `spiece.model` (byte fallback kept), built
    /// here because the nmt_nfkc `tokenizer.json` is too big to store as a fixture.
    fn hf_from_spiece(path: &Path) -> Umt5Tokenizer {
        let m = proto::parse(&std::fs::read(path).expect("read")).expect("parse");
        let pieces: Vec<String> = m.pieces.iter().map(|p| p.piece.clone()).collect();
        let mut added = Trie::new();
        for (text, id) in [("<pad>", 0), ("</s>", 1), ("<unk>", 2)] {
            added.insert(text.as_bytes(), id);
        }
        let n = pieces.len();
        Umt5Tokenizer::build(
            path,
            Parts {
                pieces,
                scores: m.pieces.iter().map(|p| f64::from(p.score)).collect(),
                kinds: vec![PieceKind::Normal; n],
                unk_id: 2,
                eos_id: 1,
                pad_id: 0,
                byte_fallback: true,
                mode: Mode::HuggingFace(HfPipeline {
                    normalizers: vec![
                        HfNormalizer::Precompiled(
                            CharsMap::parse(&m.precompiled_charsmap).expect("charsmap"),
                        ),
                        HfNormalizer::Strip {
                            left: false,
                            right: true,
                        },
                        HfNormalizer::Replace {
                            pattern: Regex::new(" {2,}").expect("regex"),
                            content: SPACE.to_string(),
                        },
                    ],
                    pre_tokenizers: vec![HfPreTokenizer::Metaspace {
                        replacement: '\u{2581}',
                        prepend: PrependScheme::Always,
                        split: true,
                    }],
                    added,
                }),
            },
        )
        .expect("build")
    }

    #[test]
    fn hf_pipeline_on_nmt_nfkc_matches_transformers() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/umt5_tokenizer");
        let tok = hf_from_spiece(&dir.join("nfkc/spiece.model"));
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
        let e: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            let list = v.as_array().expect("ids");
            list.iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect()
        };
        let cases = e["cases"].as_array().expect("cases");
        for c in cases {
            let prompt = c["prompt"].as_str().expect("prompt");
            let t = tok.encode_padded(prompt, TEXT_LEN);
            assert_eq!(t.real(), ids(&c["hf_nfkc_raw"]), "{prompt:?}");
            let t = tok.encode_wan(prompt);
            assert_eq!(t.real(), ids(&c["hf_nfkc_clean"]), "{prompt:?} (cleaned)");
        }
        assert!(cases.len() >= 40);
    }

    #[test]
    fn base64_round_trip() {
        assert_eq!(base64_decode("TWFu").as_deref(), Some(&b"Man"[..]));
        assert_eq!(base64_decode("TWE=").as_deref(), Some(&b"Ma"[..]));
        assert_eq!(base64_decode("TQ==").as_deref(), Some(&b"M"[..]));
        assert_eq!(base64_decode("T"), None);
    }
}
