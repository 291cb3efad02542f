//! Prompt weights with ComfyUI's semantics (`comfy/sd1_clip.py`: `escape_important`,
//! `parse_parentheses`, `token_weights`).
//!
//! - `(text)` multiplies the weight by 1.1; `((text))` by 1.1², and so on.
//! - `(text:1.2)` sets the weight to 1.2: the number after the *last* `:` inside the parentheses
//!   (anything Python's `float()` reads: spaces around it, `1e-1`, `1_0`, `inf`, `nan`; only
//!   ASCII digits here). The weight is absolute: `((text:1.5))` is 1.5, not 1.65. A `:` at the
//!   very start, or a tail that is not a number, leaves the text as it is with the ×1.1 weight.
//! - `\(` and `\)` are literal parentheses; no other escape exists (a lone `\` stays).
//! - Unbalanced parentheses never fail. A `)` with no `(` before it is literal, and so is every
//!   parenthesis after it (ComfyUI's depth counter goes negative and never starts a group again
//!   at that level); an unclosed `(` is literal with the rest of the text, except that when the
//!   text ends in `)` ComfyUI still takes the whole tail as a group: `((a)` is `(a` at 1.1.
//! - Empty groups `()` give nothing.
//! - ComfyUI has no `[text]` syntax and no `BREAK` keyword: there, square brackets are ordinary
//!   characters the tokenizer sees, and `BREAK` is a word. [`ParseOptions::square_brackets`]
//!   (on by default) gives `[text]` A1111's meaning instead, the weight divided by 1.1, with `\[`
//!   and `\]` as escapes; a `:` inside square brackets is plain text (A1111 uses `[a:b:n]` for
//!   prompt editing, which nijigen does not do). Brackets of the two kinds share one depth
//!   counter; a group opened by one kind and closed by the other is literal text.
//!   [`ParseOptions::comfyui`] switches it off for ComfyUI-identical results.
//!
//! Parsing is linear in the prompt length whatever the nesting (ComfyUI rescans every level).

/// A piece of prompt text with its weight (1.0 is neutral).
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Text, escapes resolved.
    pub text: String,
    /// Weight, as ComfyUI computes it (f64, like Python's float).
    pub weight: f64,
}

/// What the weight syntax understands beyond ComfyUI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// `[text]` divides the weight by 1.1 (A1111). Off in ComfyUI, where brackets are text.
    pub square_brackets: bool,
}

impl Default for ParseOptions {
    /// ComfyUI's syntax plus A1111's `[text]`.
    fn default() -> Self {
        ParseOptions {
            square_brackets: true,
        }
    }
}

impl ParseOptions {
    /// Exactly ComfyUI's syntax: square brackets are plain text.
    pub fn comfyui() -> Self {
        ParseOptions {
            square_brackets: false,
        }
    }
}

/// Placeholders for escaped brackets, as ComfyUI uses (NUL + a byte).
const ESCAPES: [(&str, &str, char); 4] = [
    ("\\)", "\0\u{1}", ')'),
    ("\\(", "\0\u{2}", '('),
    ("\\]", "\0\u{3}", ']'),
    ("\\[", "\0\u{4}", '['),
];

/// Splits a prompt into weighted segments with [`ParseOptions::default`].
pub fn parse(prompt: &str) -> Vec<Segment> {
    parse_with(prompt, ParseOptions::default())
}

/// Splits a prompt into weighted segments, in order. Segments are never empty; adjacent ones
/// may share a weight (ComfyUI keeps them apart too, which matters for chunking).
pub fn parse_with(prompt: &str, options: ParseOptions) -> Vec<Segment> {
    let n_escapes = if options.square_brackets { 4 } else { 2 };
    let mut text = prompt.to_owned();
    for (from, to, _) in &ESCAPES[..n_escapes] {
        text = text.replace(from, to);
    }
    Parser::new(&text, options)
        .run()
        .into_iter()
        .map(|(start, end, weight)| {
            let mut s = text[start..end].to_owned();
            for (_, placeholder, c) in &ESCAPES[..n_escapes] {
                s = s.replace(placeholder, c.encode_utf8(&mut [0; 4]));
            }
            Segment { text: s, weight }
        })
        .collect()
}

/// A bracket kind: its open and close bytes and what it does to the weight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Round,
    Square,
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    options: ParseOptions,
    /// For each opening bracket, the closing bracket the depth counter pairs it with.
    close_of: Vec<Option<usize>>,
    /// Number of brackets (either kind, open or close) before each byte offset.
    brackets_before: Vec<u32>,
    /// Offset of the last ':' before each byte offset.
    colon_before: Vec<Option<usize>>,
}

/// Work for the explicit stack that replaces ComfyUI's recursion.
enum Work {
    /// Parse `start..end` at `weight`; `top` is the whole prompt (where depth may go negative).
    Range {
        start: usize,
        end: usize,
        weight: f64,
        top: bool,
    },
    /// Output `start..end` at `weight`.
    Emit {
        start: usize,
        end: usize,
        weight: f64,
    },
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, options: ParseOptions) -> Self {
        let bytes = text.as_bytes();
        let mut close_of = vec![None; bytes.len()];
        let mut brackets_before = Vec::with_capacity(bytes.len() + 1);
        let mut colon_before = Vec::with_capacity(bytes.len() + 1);
        let mut open = Vec::new();
        let (mut brackets, mut colon) = (0u32, None);
        for (i, &b) in bytes.iter().enumerate() {
            brackets_before.push(brackets);
            colon_before.push(colon);
            if Self::opens(options, b) {
                open.push(i);
                brackets += 1;
            } else if Self::closes(options, b) {
                if let Some(o) = open.pop() {
                    close_of[o] = Some(i);
                }
                brackets += 1;
            } else if b == b':' {
                colon = Some(i);
            }
        }
        brackets_before.push(brackets);
        colon_before.push(colon);
        Parser {
            text,
            bytes,
            options,
            close_of,
            brackets_before,
            colon_before,
        }
    }

    fn opens(options: ParseOptions, b: u8) -> bool {
        b == b'(' || (options.square_brackets && b == b'[')
    }

    fn closes(options: ParseOptions, b: u8) -> bool {
        b == b')' || (options.square_brackets && b == b']')
    }

    fn kind(b: u8) -> Option<Kind> {
        match b {
            b'(' | b')' => Some(Kind::Round),
            b'[' | b']' => Some(Kind::Square),
            _ => None,
        }
    }

    fn run(&self) -> Vec<(usize, usize, f64)> {
        let mut out = Vec::new();
        let mut stack = vec![Work::Range {
            start: 0,
            end: self.bytes.len(),
            weight: 1.0,
            top: true,
        }];
        while let Some(work) = stack.pop() {
            match work {
                Work::Emit { start, end, weight } => out.push((start, end, weight)),
                Work::Range {
                    start,
                    end,
                    weight,
                    top,
                } => {
                    let parts = if top {
                        self.top_parts(start, end)
                    } else {
                        self.inner_parts(start, end)
                    };
                    for (s, e) in parts.into_iter().rev() {
                        stack.push(self.part_work(s, e, weight));
                    }
                }
            }
        }
        out
    }

    /// ComfyUI's `token_weights` on one part from `parse_parentheses`: a group (first and last
    /// characters a matching bracket pair) is parsed again inside at its new weight; anything
    /// else is output as it is.
    fn part_work(&self, start: usize, end: usize, weight: f64) -> Work {
        let (first, last) = (self.bytes[start], self.bytes[end - 1]);
        let group = end - start >= 2
            && Self::opens(self.options, first)
            && Self::closes(self.options, last)
            && Self::kind(first) == Self::kind(last);
        if !group {
            return Work::Emit { start, end, weight };
        }
        let (inner_start, mut inner_end) = (start + 1, end - 1);
        let weight = if Self::kind(first) == Some(Kind::Square) {
            weight * (1.0 / 1.1)
        } else {
            let mut w = weight * 1.1;
            // Python's `x.rfind(":") > 0`, then `float(x[colon + 1:])`. A float never holds a
            // bracket, so the tail is read only when it has none: each byte is read at most
            // once over the whole prompt.
            if let Some(colon) = self.colon_before[inner_end] {
                if colon > inner_start
                    && self.brackets_before[inner_end] == self.brackets_before[colon + 1]
                {
                    if let Some(v) = python_float(&self.text[colon + 1..inner_end]) {
                        w = v;
                        inner_end = colon;
                    }
                }
            }
            w
        };
        Work::Range {
            start: inner_start,
            end: inner_end,
            weight,
            top: false,
        }
    }

    /// ComfyUI's `parse_parentheses` on the whole prompt, literally: a depth counter, groups
    /// start at a `(` seen at depth 0 and end at the `)` that brings it back to 0.
    fn top_parts(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let mut parts = Vec::new();
        let mut cur = start;
        let mut depth: i64 = 0;
        for i in start..end {
            let b = self.bytes[i];
            if Self::opens(self.options, b) {
                if depth == 0 {
                    if cur < i {
                        parts.push((cur, i));
                    }
                    cur = i;
                }
                depth += 1;
            } else if Self::closes(self.options, b) {
                depth -= 1;
                if depth == 0 {
                    parts.push((cur, i + 1));
                    cur = i + 1;
                }
            }
        }
        if cur < end {
            parts.push((cur, end));
        }
        parts
    }

    /// `parse_parentheses` on the inside of a group. There the depth never goes below 0
    /// (a group's inside, or its unclosed tail), so brackets pair as a stack pairs them over the
    /// whole prompt; a bracket whose partner lies outside the range opens the final part.
    fn inner_parts(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let mut parts = Vec::new();
        let mut cur = start;
        let mut i = start;
        while i < end {
            if Self::opens(self.options, self.bytes[i]) {
                if cur < i {
                    parts.push((cur, i));
                }
                match self.close_of[i] {
                    Some(close) if close < end => {
                        parts.push((i, close + 1));
                        i = close + 1;
                        cur = i;
                        continue;
                    }
                    _ => {
                        parts.push((i, end));
                        return parts;
                    }
                }
            }
            i += 1;
        }
        if cur < end {
            parts.push((cur, end));
        }
        parts
    }
}

/// Python's `float(s)` for the ASCII forms: surrounding whitespace, sign, digits with single
/// underscores between digits, fraction, exponent, `inf` / `infinity` / `nan` in any case.
pub(crate) fn python_float(s: &str) -> Option<f64> {
    let s = s.trim_matches(super::clip::python_isspace);
    if s.is_empty() || !s.is_ascii() {
        return None;
    }
    let b = s.as_bytes();
    let mut cleaned = String::with_capacity(s.len());
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let digit_before = i > 0 && b[i - 1].is_ascii_digit();
            let digit_after = b.get(i + 1).is_some_and(u8::is_ascii_digit);
            if !(digit_before && digit_after) {
                return None;
            }
        } else {
            cleaned.push(char::from(c));
        }
    }
    cleaned.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(text: &str, weight: f64) -> Segment {
        Segment {
            text: text.into(),
            weight,
        }
    }

    #[test]
    fn python_float_forms() {
        assert_eq!(python_float("1.2"), Some(1.2));
        assert_eq!(python_float(" 1.5\n"), Some(1.5));
        assert_eq!(python_float("1_0"), Some(10.0));
        assert_eq!(python_float("1e1_0"), Some(1e10));
        assert_eq!(python_float("+.5"), Some(0.5));
        assert_eq!(python_float("5."), Some(5.0));
        assert_eq!(python_float("-INF"), Some(f64::NEG_INFINITY));
        assert_eq!(python_float("Infinity"), Some(f64::INFINITY));
        assert!(python_float("nan").is_some_and(f64::is_nan));
        for bad in [
            "", " ", "1__0", "_1", "1_", "1_.5", "1._5", "abc", "1.2)", "0x10", "1e", ".",
        ] {
            assert_eq!(python_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deep_nesting_is_linear_and_safe() {
        let depth = 200_000;
        let prompt = format!("{}a{}", "(".repeat(depth), ")".repeat(depth));
        let segs = parse(&prompt);
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].text, "a");
        assert!(segs[0].weight.is_infinite());
        let prompt = format!("{}(a:{}", "(".repeat(depth), "1".repeat(depth));
        assert_eq!(parse(&prompt).len(), 1);
        let prompt = ")(".repeat(depth);
        assert_eq!(parse(&prompt), [seg(&prompt, 1.0)]);
    }

    #[test]
    fn parts_cover_text() {
        // Every character of a prompt without brackets or escapes comes back once.
        let p = "masterpiece, best quality, 1girl: solo";
        assert_eq!(parse(p), [seg(p, 1.0)]);
    }
}
