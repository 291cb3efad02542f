//! Dotted-name helpers: segment patterns with a number wildcard, and a shape index over names.
//!
//! A pattern is a dotted name whose segments are literals or `#`, which matches one segment made
//! of ASCII digits (a block index): `blocks.#.self_attn.q.weight`.

use std::collections::{BTreeMap, BTreeSet};

/// A block index segment: ASCII digits only, at most 9 of them (so it always fits a `usize`).
pub(crate) fn index(seg: &str) -> Option<usize> {
    if seg.is_empty() || seg.len() > 9 || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seg.parse().ok()
}

fn seg_matches(seg: &str, pat: &str) -> bool {
    if pat == "#" {
        index(seg).is_some()
    } else {
        seg == pat
    }
}

/// If the last segments of `name` match `pat`, the part before them: `""`, or a prefix ending in
/// `'.'`.
pub(crate) fn tail_match<'a>(name: &'a str, pat: &str) -> Option<&'a str> {
    let segs: Vec<&str> = name.split('.').collect();
    let pats: Vec<&str> = pat.split('.').collect();
    if segs.len() < pats.len() {
        return None;
    }
    let skip = segs.len() - pats.len();
    if !segs[skip..]
        .iter()
        .zip(&pats)
        .all(|(s, p)| seg_matches(s, p))
    {
        return None;
    }
    let prefix_len: usize = segs[..skip].iter().map(|s| s.len() + 1).sum();
    name.get(..prefix_len)
}

/// Whether the whole of `name` matches `pat`.
pub(crate) fn full_match(name: &str, pat: &str) -> bool {
    tail_match(name, pat) == Some("")
}

/// Canonical tensor names with their shapes (PyTorch order), with the queries that recognition
/// needs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Shapes {
    map: BTreeMap<String, Vec<u64>>,
}

impl Shapes {
    pub(crate) fn insert(&mut self, name: String, shape: Vec<u64>) {
        self.map.insert(name, shape);
    }

    pub(crate) fn get(&self, name: &str) -> Option<&[u64]> {
        self.map.get(name).map(Vec::as_slice)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Dim `i` of a tensor's shape.
    pub(crate) fn dim(&self, name: &str, i: usize) -> Option<u64> {
        self.get(name).and_then(|s| s.get(i).copied())
    }

    /// Whether any name starts with `prefix`.
    pub(crate) fn any_with_prefix(&self, prefix: &str) -> bool {
        self.map
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// Every `N` such that some name starts with `prefix` followed by `N.`; sorted.
    pub(crate) fn indices(&self, prefix: &str) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for (k, _) in self.map.range(prefix.to_string()..) {
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            if let Some(n) = rest.split('.').next().and_then(index) {
                out.insert(n);
            }
        }
        out
    }

    /// Number of blocks: one more than the largest index under `prefix` (0 if none).
    pub(crate) fn count(&self, prefix: &str) -> usize {
        self.indices(prefix)
            .iter()
            .next_back()
            .map_or(0, |&n| n.saturating_add(1))
    }
}

/// Integer ratio, `None` unless `a` is a whole multiple of a non-zero `b`.
pub(crate) fn exact_div(a: u64, b: u64) -> Option<u64> {
    if b == 0 || a % b != 0 {
        None
    } else {
        Some(a / b)
    }
}

/// `[1,2,4]` style list for summaries.
pub(crate) fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_full_match() {
        assert_eq!(
            tail_match(
                "model.diffusion_model.blocks.12.self_attn.q.weight",
                "blocks.#.self_attn.q.weight"
            ),
            Some("model.diffusion_model.")
        );
        assert_eq!(
            tail_match("blocks.0.self_attn.q.weight", "blocks.#.self_attn.q.weight"),
            Some("")
        );
        assert_eq!(
            tail_match(
                "transformer_blocks.0.self_attn.q.weight",
                "blocks.#.self_attn.q.weight"
            ),
            None
        );
        assert_eq!(tail_match("blocks.x.q", "blocks.#.q"), None);
        assert_eq!(tail_match("q", "blocks.#.q"), None);
        assert_eq!(tail_match("", "a"), None);
        assert!(full_match("blocks.3.ffn.0.weight", "blocks.#.ffn.0.weight"));
        assert!(!full_match(
            "x.blocks.3.ffn.0.weight",
            "blocks.#.ffn.0.weight"
        ));
        assert_eq!(index("0012"), Some(12));
        assert_eq!(index("1234567890"), None);
        assert_eq!(index("-1"), None);
        assert_eq!(index(""), None);
    }

    #[test]
    fn shape_queries() {
        let mut s = Shapes::default();
        s.insert("blocks.0.a".into(), vec![2, 3]);
        s.insert("blocks.10.a".into(), vec![2, 3]);
        s.insert("blocks.2.a".into(), vec![2, 3]);
        s.insert("blocksx.99.a".into(), vec![]);
        assert_eq!(s.count("blocks."), 11);
        assert_eq!(s.indices("blocks.").len(), 3);
        assert_eq!(s.dim("blocks.0.a", 1), Some(3));
        assert_eq!(s.dim("blocks.0.a", 2), None);
        assert!(s.any_with_prefix("blocksx."));
        assert!(!s.any_with_prefix("head."));
        assert_eq!(s.count("head."), 0);
        assert_eq!(exact_div(10, 0), None);
        assert_eq!(exact_div(10, 3), None);
        assert_eq!(exact_div(12, 3), Some(4));
        assert_eq!(list(&[1, 2, 4]), "[1,2,4]");
    }
}
