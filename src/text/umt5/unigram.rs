//! The Unigram model: the vocabulary the loaders gather ([`Parts`]), checked and indexed
//! (trie, unknown score, byte pieces), and the Viterbi segmentation over it.

use std::path::Path;

use super::normalize::Mode;
use super::trie::Trie;
use super::{PieceKind, Result, Umt5Tokenizer, Umt5TokenizerError};

/// sentencepiece's penalty for an unknown character below the lowest piece score.
const UNK_PENALTY: f64 = 10.0;

/// Everything the constructors gather before building.
pub(super) struct Parts {
    pub(super) pieces: Vec<String>,
    pub(super) scores: Vec<f64>,
    pub(super) kinds: Vec<PieceKind>,
    pub(super) unk_id: u32,
    pub(super) eos_id: u32,
    pub(super) pad_id: u32,
    pub(super) byte_fallback: bool,
    pub(super) mode: Mode,
}

impl Umt5Tokenizer {
    pub(super) fn build(path: &Path, p: Parts) -> Result<Self> {
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

    /// The best segmentation of `text` (already normalized) by total piece score; unknown
    /// characters get the unknown score, runs of them are fused, then become byte pieces when
    /// byte fallback is on.
    pub(super) fn viterbi(&self, text: &str, out: &mut Vec<u32>) {
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

/// `<0xNN>` → NN.
pub(super) fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::umt5::normalize::SpmNormalizer;

    fn byte_piece(b: u8) -> String {
        format!("<0x{b:02X}>")
    }

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
}
