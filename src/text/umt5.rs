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
//!
//! Layout: the loaders in `load` (`from_file`, then one file per source: `gguf`, `spiece`,
//! `tokenizer_json`); the text preparation before segmentation (sentencepiece normalizer, HF
//! normalizers and pre-tokenizers) in `normalize`; the Unigram model (vocabulary checks, trie,
//! scores, Viterbi, byte fallback) in `unigram`.

pub mod charsmap;
mod clean;
mod load;
mod normalize;
mod proto;
mod trie;
mod unigram;

use std::path::{Path, PathBuf};

use crate::formats::FormatError;
pub use clean::{html_unescape, is_py_space, wan_clean};
pub use load::gguf_metadata_from_spiece;
use normalize::Mode;
use trie::Trie;

/// Wan2.1's text length for umT5 (`text_len` in the configs).
pub const TEXT_LEN: usize = 512;

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
    /// What is wrong, without the file's name (for messages that name the file already).
    pub fn reason(&self) -> String {
        match self {
            Umt5TokenizerError::Malformed { what, .. }
            | Umt5TokenizerError::Unsupported { what, .. }
            | Umt5TokenizerError::Missing { what, .. } => what.clone(),
            Umt5TokenizerError::Io { source, .. } => source.to_string(),
            Umt5TokenizerError::Format(e) => e.to_string(),
        }
    }

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

impl Umt5Tokenizer {
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
}
