//! Text front end for the text encoders: plain Rust, no ggml.
//!
//! - [`clip`]: the CLIP byte-level BPE tokenizer (OpenAI's 49,408-token vocabulary, built into
//!   the binary), matching transformers' slow `CLIPTokenizer` as ComfyUI runs it.
//! - [`prompt`]: ComfyUI's prompt-weight syntax, `(text:1.2)`, `(text)`, escapes, split into
//!   weighted segments (and, optionally, A1111's `[text]`).
//! - [`sdxl`]: ComfyUI's SDXL tokenisation: weighted segments into chunks of 77 tokens for
//!   CLIP-L (padded with the end token) and OpenCLIP bigG (padded with 0).
//! - [`umt5`]: the umT5 SentencePiece Unigram tokenizer for Wan2.1 (from a GGUF's
//!   `tokenizer.ggml.*`, a `tokenizer.json` or a `spiece.model`), with Wan's prompt cleaning.
//!
//! ```
//! use nijigen::text::{clip::ClipTokenizer, sdxl::SdxlTokenizer};
//!
//! let ids = ClipTokenizer::builtin().encode("a photo of a cat");
//! assert_eq!(ids, [320, 1125, 539, 320, 2368]);
//!
//! let tokens = SdxlTokenizer::new().tokenize("1girl, (masterpiece:1.2)");
//! assert_eq!(tokens.l.len(), 1); // one chunk of 77
//! assert_eq!(tokens.l[0].ids[0], 49406); // BOS
//! ```

pub mod clip;
pub mod prompt;
pub mod sdxl;
pub mod umt5;

/// Why a CLIP vocabulary could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VocabError {
    /// The data does not start with the expected magic bytes.
    #[error("CLIP vocabulary: bad magic (expected {expected:?})")]
    BadMagic {
        /// The magic the data should start with.
        expected: &'static str,
    },
    /// The data is shorter or longer than its header says.
    #[error("CLIP vocabulary: {actual} bytes, expected {expected} for {merges} merges")]
    BadLength {
        /// Merge count read from the header.
        merges: u64,
        /// Byte length the header implies.
        expected: u64,
        /// Byte length found.
        actual: u64,
    },
    /// The merge count is not the one the CLIP vocabulary layout needs.
    #[error("CLIP vocabulary: {actual} merges, expected {expected}")]
    MergeCount {
        /// Merges CLIP uses.
        expected: u64,
        /// Merges in the data.
        actual: u64,
    },
    /// A merge names a token that does not exist yet at its rank.
    #[error("CLIP vocabulary: merge {rank} uses token {token}, not made before it")]
    BadMergePart {
        /// Rank of the merge (0-based).
        rank: usize,
        /// The offending token id.
        token: u32,
    },
    /// Two merges produce the same token string, or one pair is listed twice.
    #[error("CLIP vocabulary: merge {rank} duplicates an earlier token or pair")]
    Duplicate {
        /// Rank of the merge (0-based).
        rank: usize,
    },
}
