//! SDXL prompt tokenisation with ComfyUI's semantics (`SDXLTokenizer.tokenize_with_weights`,
//! i.e. `SDTokenizer.tokenize_with_weights` run for CLIP-L and for bigG).
//!
//! 1. The prompt is split into weighted segments ([`super::prompt`]).
//! 2. Each segment is tokenized *as a whole* (ComfyUI calls the tokenizer once per segment, so a
//!    segment's tokens form one group), except that `embedding:NAME` starts a new group (see
//!    below).
//! 3. Groups are packed into chunks of 75 tokens between BOS and EOS. A group that does not fit
//!    in what is left of the chunk moves whole to the next chunk when it has fewer than 8 tokens
//!    (the chunk is closed with EOS and padded); a group of 8 or more is cut at the chunk
//!    boundary and continues in the next chunk. The last chunk gets EOS and padding.
//! 4. CLIP-L pads with the end token 49407, bigG with 0. BOS, EOS and padding have weight 1.
//!    Both encoders get the same ids and weights apart from padding.
//!
//! The empty prompt (or one of only spaces) is one chunk `[BOS, EOS, pad × 75]`. ComfyUI has no
//! `BREAK` keyword: it is tokenized as the word "break". Textual-inversion embeddings are not
//! supported: `embedding:NAME` (at the start of a segment or after a space or newline) is
//! handled the way ComfyUI handles a name whose file does not exist: the name is dropped
//! (listed in [`SdxlTokens::missing_embeddings`]) and the text after it is tokenized as its own
//! group. Where ComfyUI raises an error (`embedding:` followed by nothing), nothing is
//! tokenized.
//!
//! ComfyUI encodes a prompt with any weight other than 1 by also encoding [`empty_chunk`] and
//! moving each weighted token's embedding away from the empty prompt's at the same position:
//! `z = (z - z_empty) * w + z_empty`.

use regex::Regex;
use std::sync::OnceLock;

use super::clip::{python_isspace, ClipTokenizer, BOS, EOS};
use super::prompt::{parse_with, ParseOptions};

/// Tokens per chunk, BOS and EOS included.
pub const CHUNK_LEN: usize = 77;
/// Padding token of CLIP-L (the end token).
pub const PAD_L: u32 = EOS;
/// Padding token of OpenCLIP bigG.
pub const PAD_G: u32 = 0;
/// Groups with at least this many tokens may be cut at a chunk boundary (ComfyUI's
/// `max_word_length`).
const MAX_WORD_LEN: usize = 8;
const EMBEDDING: &str = "embedding:";

/// One 77-token encoder input with a weight per token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenChunk {
    /// Token ids: BOS, up to 75 prompt tokens, EOS, padding.
    pub ids: [u32; CHUNK_LEN],
    /// Weight of each token (1.0 for BOS, EOS and padding).
    pub weights: [f32; CHUNK_LEN],
}

impl TokenChunk {
    /// True if some token's weight is not 1.0 (ComfyUI then also encodes [`empty_chunk`]).
    pub fn has_weights(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// ComfyUI's `gen_empty_tokens`: `[BOS, EOS, pad, ...]`, all weights 1. The reference the
/// weights interpolate from.
pub fn empty_chunk(pad: u32) -> TokenChunk {
    let mut ids = [pad; CHUNK_LEN];
    ids[0] = BOS;
    ids[1] = EOS;
    TokenChunk {
        ids,
        weights: [1.0; CHUNK_LEN],
    }
}

/// An SDXL prompt tokenized for both text encoders.
#[derive(Clone, Debug, PartialEq)]
pub struct SdxlTokens {
    /// Chunks for CLIP-L (padded with 49407). Never empty.
    pub l: Vec<TokenChunk>,
    /// Chunks for OpenCLIP bigG (padded with 0); as many as for CLIP-L.
    pub g: Vec<TokenChunk>,
    /// Names after `embedding:` that were dropped (nijigen loads no embeddings).
    pub missing_embeddings: Vec<String>,
}

impl SdxlTokens {
    /// True if some token's weight is not 1.0.
    pub fn has_weights(&self) -> bool {
        self.l.iter().any(TokenChunk::has_weights)
    }
}

/// Tokenizes SDXL prompts: the built-in CLIP vocabulary and a weight syntax.
#[derive(Clone, Copy, Debug)]
pub struct SdxlTokenizer {
    clip: &'static ClipTokenizer,
    options: ParseOptions,
}

impl Default for SdxlTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

/// A run of tokens ComfyUI keeps together when it can.
type Group = Vec<(u32, f32)>;

impl SdxlTokenizer {
    /// With [`ParseOptions::default`] (ComfyUI's syntax plus A1111's `[text]`).
    pub fn new() -> Self {
        Self::with_options(ParseOptions::default())
    }

    /// With the given weight syntax ([`ParseOptions::comfyui`] for ComfyUI-identical output).
    pub fn with_options(options: ParseOptions) -> Self {
        SdxlTokenizer {
            clip: ClipTokenizer::builtin(),
            options,
        }
    }

    /// Tokenizes a prompt for CLIP-L and bigG. Never fails.
    pub fn tokenize(&self, prompt: &str) -> SdxlTokens {
        let mut missing_embeddings = Vec::new();
        let groups = self.groups(prompt, &mut missing_embeddings);
        let tokens = SdxlTokens {
            l: chunk_groups(&groups, PAD_L),
            g: chunk_groups(&groups, PAD_G),
            missing_embeddings,
        };
        tracing::debug!(
            chunks = tokens.l.len(),
            weighted = tokens.has_weights(),
            missing_embeddings = ?tokens.missing_embeddings,
            "SDXL prompt tokenized"
        );
        tokens
    }

    /// The token groups of a prompt, in order (step 2 of the module docs).
    fn groups(&self, prompt: &str, missing: &mut Vec<String>) -> Vec<Group> {
        static SPLIT: OnceLock<Option<Regex>> = OnceLock::new();
        let split = SPLIT.get_or_init(|| Regex::new(r" embedding:|\nembedding:").ok());
        let mut groups = Vec::new();
        for segment in parse_with(prompt, self.options) {
            let weight = segment.weight as f32;
            let pieces: Vec<&str> = match split {
                Some(re) => re.split(&segment.text).collect(),
                None => vec![segment.text.as_str()],
            };
            for (k, piece) in pieces.iter().enumerate() {
                let word = if k == 0 {
                    (*piece).to_owned()
                } else {
                    format!("{EMBEDDING}{piece}")
                };
                if word.is_empty() {
                    continue;
                }
                let word = match word.strip_prefix(EMBEDDING) {
                    Some(rest) => {
                        let leftover = missing_embedding_leftover(rest.trim_matches('\n'), missing);
                        if leftover.is_empty() {
                            continue;
                        }
                        leftover
                    }
                    None => word,
                };
                let ids = self.clip.encode(&word);
                groups.push(ids.into_iter().map(|id| (id, weight)).collect());
            }
        }
        groups
    }
}

/// ComfyUI's `_try_get_embedding` when no file matches: the name (first whitespace-separated
/// word) is dropped; the rest is returned, after any commas that ended the name.
fn missing_embedding_leftover(rest: &str, missing: &mut Vec<String>) -> String {
    let mut words = rest.split(python_isspace).filter(|w| !w.is_empty());
    let Some(name) = words.next() else {
        return String::new();
    };
    missing.push(name.trim_matches(',').to_owned());
    let leftover = words.collect::<Vec<_>>().join(" ");
    let stripped = name.trim_matches(',');
    if stripped.len() < name.len() {
        // Python: `name[len(stripped):]`, by characters.
        let tail: String = name.chars().skip(stripped.chars().count()).collect();
        format!("{tail} {leftover}")
    } else {
        leftover
    }
}

/// Packs token groups into 77-token chunks (step 3 of the module docs).
fn chunk_groups(groups: &[Group], pad: u32) -> Vec<TokenChunk> {
    let body = CHUNK_LEN - 1; // tokens before EOS, BOS included
    let mut chunks = Vec::new();
    let mut cur: Vec<(u32, f32)> = vec![(BOS, 1.0)];
    let mut close = |cur: &mut Vec<(u32, f32)>| {
        cur.push((EOS, 1.0));
        cur.resize(CHUNK_LEN, (pad, 1.0));
        let mut chunk = empty_chunk(pad);
        for (k, &(id, w)) in cur.iter().enumerate() {
            chunk.ids[k] = id;
            chunk.weights[k] = w;
        }
        chunks.push(chunk);
        cur.clear();
        cur.push((BOS, 1.0));
    };
    for group in groups {
        let splittable = group.len() >= MAX_WORD_LEN;
        let mut rest = &group[..];
        while !rest.is_empty() {
            if rest.len() + cur.len() > body {
                if splittable {
                    let room = body - cur.len();
                    cur.extend_from_slice(&rest[..room]);
                    rest = &rest[room..];
                }
                close(&mut cur);
            } else {
                cur.extend_from_slice(rest);
                rest = &[];
            }
        }
    }
    close(&mut cur);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_prompt_is_one_padded_chunk() {
        let t = SdxlTokenizer::new().tokenize("");
        assert_eq!(t.l, [empty_chunk(PAD_L)]);
        assert_eq!(t.g, [empty_chunk(PAD_G)]);
        assert!(!t.has_weights());
        assert_eq!(SdxlTokenizer::new().tokenize("   "), t);
    }

    #[test]
    fn empty_chunk_layout() {
        let c = empty_chunk(0);
        assert_eq!(c.ids[..3], [BOS, EOS, 0]);
        assert!(c.ids[2..].iter().all(|&i| i == 0));
        assert!(!c.has_weights());
    }

    #[test]
    fn missing_embedding_leftovers() {
        let mut m = Vec::new();
        assert_eq!(
            missing_embedding_leftover("neg, bad hands", &mut m),
            ", bad hands"
        );
        assert_eq!(
            missing_embedding_leftover("neg bad  hands", &mut m),
            "bad hands"
        );
        assert_eq!(missing_embedding_leftover("neg", &mut m), "");
        assert_eq!(missing_embedding_leftover("  ", &mut m), "");
        // Python slices by length: for ",a," the stripped "a" has length 1, so ",a,"[1:].
        assert_eq!(missing_embedding_leftover(",a,", &mut m), "a, ");
        assert_eq!(m, ["neg", "neg", "neg", "a"]);
    }

    #[test]
    fn huge_group_spans_many_chunks() {
        let prompt = "cat ".repeat(1000);
        let t = SdxlTokenizer::new().tokenize(&prompt);
        assert_eq!(t.l.len(), 14); // ceil(1000 / 75)
        assert_eq!(t.g.len(), 14);
        for c in &t.l[..13] {
            assert_eq!((c.ids[0], c.ids[76]), (BOS, EOS));
        }
    }
}
