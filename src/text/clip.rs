//! The CLIP tokenizer: byte-level BPE over OpenAI's 49,408-token vocabulary.
//!
//! Matches transformers' slow `CLIPTokenizer` (the Python one ComfyUI loads from
//! `comfy/sd1_tokenizer`) when `ftfy` is *not* installed, which is what a plain ComfyUI install
//! runs. Its text pipeline, reproduced here step by step:
//!
//! 1. Split out the literal special tokens `<|startoftext|>` and `<|endoftext|>` (exact,
//!    case-sensitive); they become ids 49406 / 49407 wherever they appear.
//! 2. On each remaining piece, transformers' `BasicTokenizer(strip_accents=False,
//!    do_split_on_punc=False)`: drop NUL, U+FFFD and every control / format / unassigned /
//!    private-use character (Unicode category C) except tab, newline and carriage return; turn
//!    those and the space separators (category Zs) into spaces; put spaces around CJK ideographs;
//!    NFC-normalise; split on whitespace; lowercase each word (full Unicode lowercasing, final
//!    sigma included); join with single spaces.
//! 3. Cut the text with CLIP's pattern
//!    `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//!    (case-insensitive), so each digit is its own word and punctuation runs stay together;
//!    characters no alternative matches (U+0345 under Python's case-insensitive classes) are
//!    skipped.
//! 4. Byte-level BPE on each word's UTF-8 bytes, the last symbol marked end-of-word (`</w>`),
//!    applying the lowest-ranked merge first.
//!
//! With `ftfy` installed, transformers runs `ftfy.fix_text`, whitespace cleanup and lowercasing
//! instead of step 2 (no CJK spacing, no control-character removal, mojibake repair): prompts with
//! CJK text, control characters or mojibake then tokenize differently. transformers 5's
//! `CLIPTokenizer` is the `tokenizers`-backed one, which also skips the CJK spacing. Unicode
//! tables here are those of the Rust standard library and the `regex` / `unicode-normalization`
//! crates (Unicode 16); characters assigned in a newer Unicode version than the reference Python's
//! (for example emoji added after Python 3.11's Unicode 14) are control characters to it and are
//! dropped there but kept here.
//!
//! Token ids follow the CLIP vocabulary layout: 0..256 are single bytes (in GPT-2's
//! `bytes_to_unicode` order), 256..512 the same bytes ending a word, `512 + r` the token made by
//! merge `r`, then 49406 `<|startoftext|>` and 49407 `<|endoftext|>`. The vocabulary is stored as
//! the 48,894 merges, each a pair of earlier token ids (`data/clip_merges.bin`, written by
//! `tools/reference/make_tokenizer_fixtures.py` from OpenAI CLIP's MIT-licensed
//! `bpe_simple_vocab_16e6.txt.gz`, as open_clip ships it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::VocabError;

/// Id of `<|startoftext|>`.
pub const BOS: u32 = 49406;
/// Id of `<|endoftext|>`.
pub const EOS: u32 = 49407;
/// Number of tokens in the CLIP vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// Number of BPE merges CLIP uses (`49152 - 256 - 2`).
pub const N_MERGES: usize = VOCAB_SIZE - 512 - 2;

const MAGIC: &[u8] = b"NJCLIPBPE1";
const BUILTIN_MERGES: &[u8] = include_bytes!("data/clip_merges.bin");
const START_TEXT: &str = "<|startoftext|>";
const END_TEXT: &str = "<|endoftext|>";
/// CLIP's pattern. Python's `regex` applies IGNORECASE to the classes too, where it changes one
/// thing: U+0345 (combining ypogegrammeni, which case-folds to a letter) matches neither
/// `[\p{L}]` nor `[^\s\p{L}\p{N}]`, so that character is skipped. Rust's `(?i)` would fold it
/// into `\p{L}` instead; hence case-insensitivity only on the literal alternatives and U+0345
/// left out of the last class.
const PIECE_PATTERN: &str = r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+";
/// Words longer than this (in bytes) are not cached.
const CACHE_MAX_WORD: usize = 128;
/// The cache is emptied when it reaches this many words.
const CACHE_MAX_ENTRIES: usize = 32_768;

/// One vocabulary entry: raw bytes, and whether it ends a word (`</w>`).
#[derive(Clone, Debug)]
struct Token {
    bytes: Box<[u8]>,
    end_of_word: bool,
}

/// The CLIP BPE tokenizer. Cheap to share: [`ClipTokenizer::builtin`] gives a process-wide one.
pub struct ClipTokenizer {
    /// Id -> token, for every id below [`VOCAB_SIZE`].
    tokens: Vec<Token>,
    /// (left id, right id) -> merge rank; the merged token's id is `512 + rank`.
    ranks: HashMap<(u32, u32), u32>,
    /// Byte -> id of the single-byte token (add 256 for its end-of-word form).
    byte_ids: [u32; 256],
    pieces: Regex,
    /// Characters BasicTokenizer drops: NUL, U+FFFD, category C except \t \n \r.
    dropped: Regex,
    /// Characters BasicTokenizer turns into spaces: \t \n \r and category Zs.
    spaces: Regex,
    /// Word (as cut by the pattern) -> ids.
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.ranks.len())
            .finish_non_exhaustive()
    }
}

/// GPT-2's byte order: the printable bytes first, then the rest in increasing order.
fn byte_order() -> [u8; 256] {
    let mut order = [0u8; 256];
    let mut n = 0;
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    for b in 0..=255u8 {
        if printable(b) {
            order[n] = b;
            n += 1;
        }
    }
    for b in 0..=255u8 {
        if !printable(b) {
            order[n] = b;
            n += 1;
        }
    }
    order
}

/// GPT-2's `bytes_to_unicode`: the printable character that stands for a byte in token strings.
fn byte_char(b: u8) -> char {
    let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable {
        char::from(b)
    } else {
        // The non-printable bytes map to U+0100.. in increasing byte order.
        let rank = (0..b)
            .filter(|&x| !((b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE))
            .count() as u32;
        char::from_u32(256 + rank).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

/// Python's `str.isspace` (Unicode White_Space plus the separators U+001C..U+001F).
pub(crate) fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// transformers' `_is_chinese_char`: the CJK ideograph blocks BasicTokenizer isolates.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

impl ClipTokenizer {
    /// The tokenizer with the built-in OpenAI CLIP vocabulary, parsed once per process.
    pub fn builtin() -> &'static ClipTokenizer {
        static BUILTIN: OnceLock<ClipTokenizer> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            // The embedded data is a build-time constant, validated by this module's tests.
            #[allow(clippy::expect_used)]
            Self::from_merges_bin(BUILTIN_MERGES).expect("built-in CLIP vocabulary is valid")
        })
    }

    /// Builds a tokenizer from merges in nijigen's binary form: the magic `NJCLIPBPE1`, a
    /// little-endian u32 count (48,894), then per merge two little-endian u16 token ids.
    pub fn from_merges_bin(data: &[u8]) -> Result<ClipTokenizer, VocabError> {
        let header = MAGIC.len() + 4;
        if data.len() < header || &data[..MAGIC.len()] != MAGIC {
            return Err(VocabError::BadMagic {
                expected: "NJCLIPBPE1",
            });
        }
        let mut count = [0u8; 4];
        count.copy_from_slice(&data[MAGIC.len()..header]);
        let count = u64::from(u32::from_le_bytes(count));
        let expected = header as u64 + 4 * count;
        if data.len() as u64 != expected {
            return Err(VocabError::BadLength {
                merges: count,
                expected,
                actual: data.len() as u64,
            });
        }
        if count != N_MERGES as u64 {
            return Err(VocabError::MergeCount {
                expected: N_MERGES as u64,
                actual: count,
            });
        }
        let pairs = data[header..].chunks_exact(4).map(|c| {
            (
                u32::from(u16::from_le_bytes([c[0], c[1]])),
                u32::from(u16::from_le_bytes([c[2], c[3]])),
            )
        });
        Self::from_merge_ids(pairs)
    }

    /// Builds the vocabulary from merges given as (left id, right id), in rank order.
    fn from_merge_ids(
        pairs: impl Iterator<Item = (u32, u32)>,
    ) -> Result<ClipTokenizer, VocabError> {
        let order = byte_order();
        let mut byte_ids = [0u32; 256];
        let mut tokens = Vec::with_capacity(VOCAB_SIZE);
        for end_of_word in [false, true] {
            for &b in &order {
                tokens.push(Token {
                    bytes: Box::new([b]),
                    end_of_word,
                });
            }
        }
        for (i, &b) in order.iter().enumerate() {
            byte_ids[usize::from(b)] = i as u32;
        }
        let mut ranks = HashMap::with_capacity(N_MERGES);
        let mut seen: HashSet<(Box<[u8]>, bool)> = tokens
            .iter()
            .map(|t| (t.bytes.clone(), t.end_of_word))
            .collect();
        for (rank, (left, right)) in pairs.enumerate() {
            let made = tokens.len() as u32;
            for part in [left, right] {
                if part >= made {
                    return Err(VocabError::BadMergePart { rank, token: part });
                }
            }
            let (l, r) = (&tokens[left as usize], &tokens[right as usize]);
            // Only the last symbol of a word carries `</w>`, so a left part never does.
            if l.end_of_word {
                return Err(VocabError::BadMergePart { rank, token: left });
            }
            let mut bytes = Vec::with_capacity(l.bytes.len() + r.bytes.len());
            bytes.extend_from_slice(&l.bytes);
            bytes.extend_from_slice(&r.bytes);
            let token = Token {
                bytes: bytes.into_boxed_slice(),
                end_of_word: r.end_of_word,
            };
            if !seen.insert((token.bytes.clone(), token.end_of_word))
                || ranks.insert((left, right), rank as u32).is_some()
            {
                return Err(VocabError::Duplicate { rank });
            }
            tokens.push(token);
        }
        for special in [START_TEXT, END_TEXT] {
            tokens.push(Token {
                bytes: special.as_bytes().into(),
                end_of_word: false,
            });
        }
        if tokens.len() != VOCAB_SIZE {
            return Err(VocabError::MergeCount {
                expected: N_MERGES as u64,
                actual: (tokens.len() - 514) as u64,
            });
        }
        // Constant patterns: compiling them cannot fail (checked by the tests).
        #[allow(clippy::expect_used)]
        let re = |p: &str| Regex::new(p).expect("constant regex");
        Ok(ClipTokenizer {
            tokens,
            ranks,
            byte_ids,
            pieces: re(PIECE_PATTERN),
            dropped: re(r"[\x00\x{FFFD}[\p{C}--[\t\n\r]]]"),
            spaces: re(r"[\t\n\r\p{Zs}]"),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Id of `<|startoftext|>` (49406).
    pub fn bos(&self) -> u32 {
        BOS
    }

    /// Id of `<|endoftext|>` (49407), also CLIP-L's padding.
    pub fn eos(&self) -> u32 {
        EOS
    }

    /// Number of tokens (49408).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Token ids of `text`, without BOS/EOS: transformers'
    /// `CLIPTokenizer(text)["input_ids"][1:-1]` (slow tokenizer, no ftfy). Never fails: any
    /// string gives some ids (possibly none).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut rest = text;
        // transformers first splits on its added tokens, matched exactly.
        while !rest.is_empty() {
            let next = [(START_TEXT, BOS), (END_TEXT, EOS)]
                .into_iter()
                .filter_map(|(s, id)| rest.find(s).map(|at| (at, s.len(), id)))
                .min();
            match next {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    rest = "";
                }
            }
        }
        ids
    }

    /// Text after BasicTokenizer's cleanup (step 2 of the module docs): the string the CLIP
    /// pattern is applied to.
    pub fn normalize(&self, text: &str) -> String {
        let text = self.dropped.replace_all(text, "");
        let text = self.spaces.replace_all(&text, " ");
        let mut spaced = String::with_capacity(text.len());
        for c in text.chars() {
            if is_cjk(c) {
                spaced.push(' ');
                spaced.push(c);
                spaced.push(' ');
            } else {
                spaced.push(c);
            }
        }
        let nfc: String = spaced.nfc().collect();
        let mut out = String::with_capacity(nfc.len());
        // After the cleanup the only whitespace left (to Python's `str.split`) is the space and
        // the line / paragraph separators U+2028 / U+2029.
        for word in nfc.split(python_isspace).filter(|w| !w.is_empty()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&word.to_lowercase());
        }
        out
    }

    /// Encodes text that holds no literal special token (those inside still go through the
    /// pattern, as in transformers).
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let text = self.normalize(text);
        for piece in self.pieces.find_iter(&text) {
            match piece.as_str() {
                START_TEXT => ids.push(BOS),
                END_TEXT => ids.push(EOS),
                word => self.encode_word(word, ids),
            }
        }
    }

    /// BPE of one word, through the cache.
    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        let cacheable = word.len() <= CACHE_MAX_WORD;
        if cacheable {
            if let Ok(cache) = self.cache.lock() {
                if let Some(hit) = cache.get(word) {
                    ids.extend_from_slice(hit);
                    return;
                }
            }
        }
        let start = ids.len();
        self.bpe(word.as_bytes(), ids);
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.clear();
                }
                cache.insert(word.to_owned(), ids[start..].to_vec());
            }
        }
    }

    /// Byte-level BPE of one word, appending its ids.
    ///
    /// transformers repeatedly takes the lowest-ranked adjacent pair and merges all its
    /// occurrences left to right. A min-heap of (rank, position) does the same in O(n log n): a
    /// merge only creates pairs of higher rank than its own (a token is always made before any
    /// merge that uses it), and equal ranks pop left to right.
    fn bpe(&self, word: &[u8], ids: &mut Vec<u32>) {
        let Some((&last, init)) = word.split_last() else {
            return;
        };
        let mut sym: Vec<u32> = init
            .iter()
            .map(|&b| self.byte_ids[usize::from(b)])
            .collect();
        sym.push(self.byte_ids[usize::from(last)] + 256);
        let n = sym.len();
        // Doubly linked list over positions; a merged-away position is dead.
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<Reverse<(u32, usize)>>, sym: &[u32], i: usize, j: usize| {
                if let Some(&rank) = self.ranks.get(&(sym[i], sym[j])) {
                    heap.push(Reverse((rank, i)));
                }
            };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, &sym, i, i + 1);
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            if !alive[i] || next[i] >= n {
                continue;
            }
            let j = next[i];
            // Stale entry: the pair at i changed since it was pushed.
            if self.ranks.get(&(sym[i], sym[j])) != Some(&rank) {
                continue;
            }
            sym[i] = 512 + rank;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            if prev[i] < n {
                push(&mut heap, &sym, prev[i], i);
            }
            if next[i] < n {
                push(&mut heap, &sym, i, next[i]);
            }
        }
        let mut i = 0;
        while i < n {
            ids.push(sym[i]);
            i = next[i];
        }
    }

    /// Text of `ids`: transformers' `decode(ids, skip_special_tokens=True,
    /// clean_up_tokenization_spaces=False)`. Token bytes are joined, decoded as UTF-8 (invalid
    /// sequences become U+FFFD), every `</w>` becomes a space and the ends are trimmed. BOS, EOS
    /// and ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id == BOS || id == EOS {
                continue;
            }
            if let Some(t) = self.tokens.get(id as usize) {
                bytes.extend_from_slice(&t.bytes);
                if t.end_of_word {
                    bytes.extend_from_slice(b"</w>");
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).replace("</w>", " ");
        text.trim_matches(python_isspace).to_owned()
    }

    /// The token's string as in `vocab.json` (bytes shown through GPT-2's byte-to-character
    /// table, `</w>` appended at a word end), or `None` for an id outside the vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        let t = self.tokens.get(id as usize)?;
        if id == BOS || id == EOS {
            return Some(String::from_utf8_lossy(&t.bytes).into_owned());
        }
        let mut s: String = t.bytes.iter().map(|&b| byte_char(b)).collect();
        if t.end_of_word {
            s.push_str("</w>");
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> &'static ClipTokenizer {
        ClipTokenizer::builtin()
    }

    #[test]
    fn builtin_vocabulary_loads() {
        let t = tok();
        assert_eq!(t.vocab_size(), VOCAB_SIZE);
        assert_eq!(t.ranks.len(), N_MERGES);
        assert_eq!(t.token(0).as_deref(), Some("!"));
        assert_eq!(t.token(256).as_deref(), Some("!</w>"));
        assert_eq!(t.token(320).as_deref(), Some("a</w>"));
        assert_eq!(t.token(512).as_deref(), Some("in"));
        assert_eq!(t.token(1125).as_deref(), Some("photo</w>"));
        assert_eq!(t.token(BOS).as_deref(), Some("<|startoftext|>"));
        assert_eq!(t.token(EOS).as_deref(), Some("<|endoftext|>"));
        assert_eq!(t.token(VOCAB_SIZE as u32), None);
        // Space (0x20) is the 33rd non-printable byte: U+0120 'Ġ'.
        assert_eq!(byte_char(b' '), 'Ġ');
        assert_eq!(byte_char(0), 'Ā');
    }

    #[test]
    fn known_sequences() {
        let t = tok();
        assert_eq!(t.encode("a photo of a cat"), [320, 1125, 539, 320, 2368]);
        assert_eq!(t.encode(""), Vec::<u32>::new());
        assert_eq!(t.encode(" \t\n "), Vec::<u32>::new());
        assert_eq!(t.encode("A PHOTO"), t.encode("a photo"));
        assert_eq!(t.bos(), 49406);
        assert_eq!(t.eos(), 49407);
    }

    #[test]
    fn cache_gives_same_result() {
        let t = tok();
        let first = t.encode("supercalifragilistic supercalifragilistic");
        let half = first.len() / 2;
        assert_eq!(first[..half], first[half..]);
        assert_eq!(t.encode("supercalifragilistic supercalifragilistic"), first);
    }

    #[test]
    fn normalize_matches_basic_tokenizer() {
        let t = tok();
        assert_eq!(t.normalize("  Hello\tWORLD\n"), "hello world");
        assert_eq!(t.normalize("日本"), "日 本");
        assert_eq!(t.normalize("a\u{0}b\u{200b}c\u{fffd}d"), "abcd");
        assert_eq!(t.normalize("e\u{301}"), "\u{e9}");
        assert_eq!(t.normalize("x\u{2028}y\u{a0}z"), "x y z");
        assert_eq!(t.normalize("ΟΔΥΣΣΕΥΣ"), "οδυσσευς");
        // Unassigned code points are category Cn: dropped.
        assert_eq!(t.normalize("a\u{378}b"), "ab");
    }

    #[test]
    fn bpe_handles_long_and_odd_words() {
        let t = tok();
        let long = "ab".repeat(20_000);
        let ids = t.encode(&long);
        assert!(!ids.is_empty());
        assert_eq!(t.decode(&ids), long);
        let ids = t.encode("\u{10ffff}\u{e000}𝕏");
        assert_eq!(t.decode(&ids), "𝕏");
    }

    #[test]
    fn decode_skips_specials_and_unknown_ids() {
        let t = tok();
        assert_eq!(t.decode(&[BOS, 320, 1125, EOS, 999_999]), "a photo");
        assert_eq!(t.decode(&[]), "");
        // A lone continuation byte is not valid UTF-8.
        let lone = t.byte_ids[0x80];
        assert_eq!(t.decode(&[lone]), "\u{fffd}");
    }

    #[test]
    fn rejects_bad_vocabularies() {
        assert!(matches!(
            ClipTokenizer::from_merges_bin(b"nope"),
            Err(VocabError::BadMagic { .. })
        ));
        let mut data = BUILTIN_MERGES.to_vec();
        data.pop();
        assert!(matches!(
            ClipTokenizer::from_merges_bin(&data),
            Err(VocabError::BadLength { .. })
        ));
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&[0, 0, 0, 0]);
        assert!(matches!(
            ClipTokenizer::from_merges_bin(&data),
            Err(VocabError::MergeCount { .. })
        ));
        let mut data = BUILTIN_MERGES.to_vec();
        let at = MAGIC.len() + 4;
        data[at..at + 2].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(matches!(
            ClipTokenizer::from_merges_bin(&data),
            Err(VocabError::BadMergePart { rank: 0, .. })
        ));
        let mut data = BUILTIN_MERGES.to_vec();
        let (a, b) = (at, at + 4);
        let first: [u8; 4] = [data[a], data[a + 1], data[a + 2], data[a + 3]];
        data[b..b + 4].copy_from_slice(&first);
        assert!(matches!(
            ClipTokenizer::from_merges_bin(&data),
            Err(VocabError::Duplicate { rank: 1 })
        ));
    }
}
