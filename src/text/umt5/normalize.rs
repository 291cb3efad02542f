//! The text as the Viterbi search sees it: sentencepiece's normalizer ([`SpmNormalizer`]) or
//! HF tokenizers' added tokens, normalizers and pre-tokenizers ([`HfPipeline`]).

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use super::charsmap::CharsMap;
use super::trie::Trie;
use super::Umt5Tokenizer;

/// The escaped space.
pub(super) const SPACE: &str = "\u{2581}";

/// sentencepiece's `NormalizerSpec` and what it needs from the trainer spec.
#[derive(Clone, Debug)]
pub(super) struct SpmNormalizer {
    pub(super) charsmap: Option<CharsMap>,
    pub(super) add_dummy_prefix: bool,
    pub(super) remove_extra_whitespaces: bool,
    pub(super) escape_whitespaces: bool,
    pub(super) treat_whitespace_as_suffix: bool,
    /// User-defined pieces pass through normalization untouched (longest match).
    pub(super) user_defined: Option<Trie>,
}

/// One HF tokenizers normalizer.
#[derive(Clone, Debug)]
pub(super) enum HfNormalizer {
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
pub(super) enum PrependScheme {
    Always,
    First,
    Never,
}

/// One HF tokenizers pre-tokenizer.
#[derive(Clone, Debug)]
pub(super) enum HfPreTokenizer {
    WhitespaceSplit,
    Metaspace {
        replacement: char,
        prepend: PrependScheme,
        split: bool,
    },
}

#[derive(Clone, Debug)]
pub(super) struct HfPipeline {
    pub(super) normalizers: Vec<HfNormalizer>,
    pub(super) pre_tokenizers: Vec<HfPreTokenizer>,
    /// Added tokens cut out of the raw text (content → id).
    pub(super) added: Trie,
}

#[derive(Clone, Debug)]
pub(super) enum Mode {
    SentencePiece(SpmNormalizer),
    HuggingFace(HfPipeline),
}

impl Umt5Tokenizer {
    /// sentencepiece's `Normalizer::Normalize`.
    pub(super) fn normalize_spm(&self, spec: &SpmNormalizer, input: &str) -> String {
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
    pub(super) fn encode_hf(&self, hf: &HfPipeline, text: &str, out: &mut Vec<u32>) {
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
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::text::umt5::unigram::Parts;
    use crate::text::umt5::{proto, PieceKind, TEXT_LEN};

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
}
