//! A byte trie over the vocabulary for the Viterbi search: one hash map from (node, byte) to
//! child, so walking all pieces that start at a position costs one lookup per byte, whatever
//! the vocabulary size (umT5 has 256k pieces).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplicative hash for the packed (node, byte) keys; SipHash is needlessly slow here.
#[derive(Default)]
pub struct PackedHasher(u64);

impl Hasher for PackedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The trie. Node 0 is the root.
#[derive(Clone, Debug, Default)]
pub struct Trie {
    edges: HashMap<u64, u32, BuildHasherDefault<PackedHasher>>,
    /// The piece id ending at each node, `u32::MAX` for none.
    values: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Trie {
    pub fn new() -> Self {
        Trie {
            edges: HashMap::default(),
            values: vec![NONE],
        }
    }

    fn key(node: u32, byte: u8) -> u64 {
        (u64::from(node) << 8) | u64::from(byte)
    }

    /// Adds `piece` with `id`. An empty piece is ignored; a repeated piece keeps its first id
    /// (sentencepiece and HF tokenizers refuse duplicates, so this only matters for odd files).
    pub fn insert(&mut self, piece: &[u8], id: u32) {
        if piece.is_empty() {
            return;
        }
        let mut node = 0u32;
        for &b in piece {
            let next = self.values.len() as u32;
            let child = *self.edges.entry(Self::key(node, b)).or_insert(next);
            if child == next {
                self.values.push(NONE);
            }
            node = child;
        }
        if self.values[node as usize] == NONE {
            self.values[node as usize] = id;
        }
    }

    /// Calls `f(length, id)` for every piece that is a prefix of `text`, shortest first.
    pub fn prefixes(&self, text: &[u8], mut f: impl FnMut(usize, u32)) {
        let mut node = 0u32;
        for (i, &b) in text.iter().enumerate() {
            match self.edges.get(&Self::key(node, b)) {
                Some(&child) => node = child,
                None => return,
            }
            let v = self.values[node as usize];
            if v != NONE {
                f(i + 1, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_all_prefixes() {
        let mut t = Trie::new();
        t.insert(b"a", 1);
        t.insert(b"ab", 2);
        t.insert(b"abc", 3);
        t.insert(b"b", 4);
        t.insert(b"a", 9);
        let mut got = Vec::new();
        t.prefixes(b"abd", |n, id| got.push((n, id)));
        assert_eq!(got, [(1, 1), (2, 2)]);
    }
}
