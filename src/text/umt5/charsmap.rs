//! SentencePiece's precompiled normalization map (`precompiled_charsmap`).
//!
//! The blob is what sentencepiece's `normalizer::Builder::CompileCharsMap` writes:
//!
//! ```text
//! u32 trie_bytes (little-endian)
//! trie_bytes / 4 × u32   darts-clone double-array units
//! rest                   replacement strings, each NUL-terminated; a trie value is an offset here
//! ```
//!
//! A darts-clone unit packs: label in bits 0..8 (bit 31 set on value units), `has_leaf` in bit 8,
//! the offset to the children in bits 10..31 (shifted left by 8 more when bit 9 is set), and for a
//! value unit the value in bits 0..31. Walking a key: start at `offset(unit[0])`, for each byte `c`
//! move to `pos ^ c`, stop when the label there is not `c`, then `pos ^= offset(unit)`; when the
//! unit has a leaf, `unit[pos]` holds the value for the prefix read so far.
//!
//! Two readers of the same blob disagree at the margins and we mirror both:
//! - sentencepiece's `Normalizer::NormalizePrefix`: at each position take the longest rule that
//!   matches a prefix of the remaining input and consume what it matched;
//! - HF tokenizers' `Precompiled` (crate `spm_precompiled`): per extended grapheme cluster shorter
//!   than 6 bytes, the *shortest* rule matching a prefix of the cluster replaces the whole cluster;
//!   otherwise each code point is looked up on its own.

use unicode_segmentation::UnicodeSegmentation;

/// A parsed precompiled charsmap. Lookups never index out of bounds: a unit or string offset
/// outside the blob ends the match (as if there were no rule).
#[derive(Clone, Debug)]
pub struct CharsMap {
    units: Vec<u32>,
    strings: Vec<u8>,
}

impl CharsMap {
    /// Parses the blob; `Err` says what is wrong with it.
    pub fn parse(blob: &[u8]) -> Result<CharsMap, String> {
        let Some(head) = blob.get(..4) else {
            return Err(format!(
                "precompiled_charsmap: {} bytes, too short for its 4-byte header",
                blob.len()
            ));
        };
        let trie_bytes = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let end = trie_bytes.checked_add(4).filter(|&e| e <= blob.len());
        let Some(end) = end else {
            return Err(format!(
                "precompiled_charsmap: trie of {trie_bytes} bytes does not fit in {} bytes",
                blob.len()
            ));
        };
        if trie_bytes % 4 != 0 || trie_bytes == 0 {
            return Err(format!(
                "precompiled_charsmap: trie size {trie_bytes} is not a positive multiple of 4"
            ));
        }
        let units = blob[4..end]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(CharsMap {
            units,
            strings: blob[end..].to_vec(),
        })
    }

    fn unit(&self, pos: usize) -> Option<u32> {
        self.units.get(pos).copied()
    }

    /// Every rule matching a prefix of `key`, shortest first: (matched length, replacement).
    fn prefix_matches<'s>(&'s self, key: &[u8], mut f: impl FnMut(usize, &'s str) -> bool) {
        fn offset(u: u32) -> usize {
            ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize
        }
        fn label(u: u32) -> u32 {
            u & ((1 << 31) | 0xff)
        }
        fn has_leaf(u: u32) -> bool {
            (u >> 8) & 1 == 1
        }
        let Some(root) = self.unit(0) else { return };
        let mut pos = offset(root);
        for (i, &c) in key.iter().enumerate() {
            if c == 0 {
                return;
            }
            pos ^= c as usize;
            let Some(u) = self.unit(pos) else { return };
            if label(u) != c as u32 {
                return;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let Some(v) = self.unit(pos) else { return };
                let value = (v & ((1 << 31) - 1)) as usize;
                if let Some(s) = self.string_at(value) {
                    if !f(i + 1, s) {
                        return;
                    }
                }
            }
        }
    }

    /// The NUL-terminated replacement at `offset`, if it is inside the blob and UTF-8.
    fn string_at(&self, offset: usize) -> Option<&str> {
        let rest = self.strings.get(offset..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..len]).ok()
    }

    /// sentencepiece: the longest rule matching a prefix of `input`: (bytes consumed, output).
    pub fn longest_prefix<'s>(&'s self, input: &str) -> Option<(usize, &'s str)> {
        let mut best = None;
        self.prefix_matches(input.as_bytes(), |len, s| {
            best = Some((len, s));
            true
        });
        // A rule must end on a character boundary to be usable on a `str`; compiled maps only
        // hold whole UTF-8 sequences, so this never rejects a real rule.
        best.filter(|&(len, _)| input.is_char_boundary(len))
    }

    /// HF tokenizers: the shortest rule matching a prefix of `chunk`.
    fn shortest_prefix(&self, chunk: &str) -> Option<&str> {
        let mut best = None;
        self.prefix_matches(chunk.as_bytes(), |_, s| {
            best = Some(s);
            false
        });
        best
    }

    /// HF tokenizers' `Precompiled` normalizer on a whole string.
    pub fn normalize_hf(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for g in text.graphemes(true) {
            if g.len() < 6 {
                if let Some(rep) = self.shortest_prefix(g) {
                    out.push_str(rep);
                    continue;
                }
            }
            for (i, c) in g.char_indices() {
                match self.shortest_prefix(&g[i..i + c.len_utf8()]) {
                    Some(rep) => out.push_str(rep),
                    None => out.push(c),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_headers() {
        assert!(CharsMap::parse(&[]).is_err());
        assert!(CharsMap::parse(&[8, 0, 0, 0, 1, 2, 3]).is_err());
        assert!(CharsMap::parse(&[3, 0, 0, 0, 1, 2, 3]).is_err());
        assert!(CharsMap::parse(&[0, 0, 0, 0]).is_err());
    }

    #[test]
    fn garbage_units_never_panic() {
        let mut blob = vec![16, 0, 0, 0];
        blob.extend_from_slice(&[0xff; 16]);
        blob.extend_from_slice(b"x\0");
        let map = CharsMap::parse(&blob).expect("well-formed header");
        assert_eq!(map.longest_prefix("abc"), None);
        assert_eq!(map.normalize_hf("abc"), "abc");
    }
}
