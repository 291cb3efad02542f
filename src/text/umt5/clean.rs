//! Wan2.1's prompt cleaning for the umT5 tokenizer (`HuggingfaceTokenizer(clean='whitespace')`
//! in wan/modules/tokenizers.py):
//!
//! ```python
//! def basic_clean(text):
//!     text = ftfy.fix_text(text)
//!     text = html.unescape(html.unescape(text))
//!     return text.strip()
//!
//! def whitespace_clean(text):
//!     text = re.sub(r'\s+', ' ', text)   # the `regex` package
//!     return text.strip()
//! ```
//!
//! `ftfy.fix_text` (mojibake repair, curly quotes kept, etc.) is NOT replicated: on clean UTF-8
//! prompts it changes nothing. `html.unescape` is mirrored exactly for numeric references
//! (including Python's table of invalid references and code points) and for named references in
//! [`ENTITIES`]: every HTML5 name accepted without its `;` (the Latin-1 set, `amp`, `lt`, ...)
//! plus common typographic, arrow and Greek names; other names are left as written.
//!
//! Whitespace: `regex`'s `\s` is Unicode White_Space (Rust's `char::is_whitespace`);
//! `str.strip()` also strips U+001C..U+001F.

/// Wan's `whitespace_clean(basic_clean(text))`, without ftfy.
pub fn wan_clean(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    let text = text.trim_matches(is_py_space);
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(is_py_space).to_string()
}

/// Python's `str.isspace()`.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `html.unescape`, with the named references limited to [`ENTITIES`].
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '&' {
            if let Some((rep, used)) = charref(&chars[i + 1..]) {
                out.push_str(&rep);
                i += 1 + used;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The reference after a `&`: (replacement, chars used) or `None` when the regex
/// `#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?` does not match.
fn charref(rest: &[char]) -> Option<(String, usize)> {
    if rest.first() == Some(&'#') {
        let (radix, start) = match rest.get(1) {
            Some('x' | 'X') => (16, 2),
            _ => (10, 1),
        };
        let digits = rest[start..]
            .iter()
            .take_while(|c| c.is_digit(radix))
            .count();
        if digits == 0 {
            return None;
        }
        let mut used = start + digits;
        if rest.get(used) == Some(&';') {
            used += 1;
        }
        // Saturate: anything past U+10FFFF gives U+FFFD, as in Python.
        let num = rest[start..start + digits].iter().fold(0u64, |acc, c| {
            acc.saturating_mul(radix as u64)
                .saturating_add(c.to_digit(radix).unwrap_or(0) as u64)
        });
        return Some((numeric(num), used));
    }
    let name_len = rest
        .iter()
        .take(32)
        .take_while(|&&c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .count();
    if name_len == 0 {
        return None;
    }
    let semi = rest.get(name_len) == Some(&';');
    let used = name_len + usize::from(semi);
    let name: String = rest[..name_len].iter().collect();
    if let Some(&(_, value, legacy)) = entity(&name) {
        if semi || legacy {
            return Some((value.to_string(), used));
        }
    }
    // The longest legacy name that is a proper prefix of what was read (2 chars or more).
    let s: Vec<char> = rest[..used].to_vec();
    for x in (2..s.len()).rev() {
        let prefix: String = s[..x].iter().collect();
        if let Some(&(_, value, true)) = entity(&prefix) {
            let tail: String = s[x..].iter().collect();
            return Some((format!("{value}{tail}"), used));
        }
    }
    Some((format!("&{}", s.iter().collect::<String>()), used))
}

fn entity(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    ENTITIES
        .binary_search_by(|e| e.0.cmp(name))
        .ok()
        .map(|i| &ENTITIES[i])
}

/// Python's `_replace_charref` for a numeric reference.
fn numeric(num: u64) -> String {
    const CP1252: [(u64, char); 34] = [
        (0x00, '\u{fffd}'),
        (0x0d, '\r'),
        (0x80, '\u{20ac}'),
        (0x81, '\u{81}'),
        (0x82, '\u{201a}'),
        (0x83, '\u{0192}'),
        (0x84, '\u{201e}'),
        (0x85, '\u{2026}'),
        (0x86, '\u{2020}'),
        (0x87, '\u{2021}'),
        (0x88, '\u{02c6}'),
        (0x89, '\u{2030}'),
        (0x8a, '\u{0160}'),
        (0x8b, '\u{2039}'),
        (0x8c, '\u{0152}'),
        (0x8d, '\u{8d}'),
        (0x8e, '\u{017d}'),
        (0x8f, '\u{8f}'),
        (0x90, '\u{90}'),
        (0x91, '\u{2018}'),
        (0x92, '\u{2019}'),
        (0x93, '\u{201c}'),
        (0x94, '\u{201d}'),
        (0x95, '\u{2022}'),
        (0x96, '\u{2013}'),
        (0x97, '\u{2014}'),
        (0x98, '\u{02dc}'),
        (0x99, '\u{2122}'),
        (0x9a, '\u{0161}'),
        (0x9b, '\u{203a}'),
        (0x9c, '\u{0153}'),
        (0x9d, '\u{9d}'),
        (0x9e, '\u{017e}'),
        (0x9f, '\u{0178}'),
    ];
    if let Some(&(_, c)) = CP1252.iter().find(|&&(n, _)| n == num) {
        return c.to_string();
    }
    if (0xd800..=0xdfff).contains(&num) || num > 0x10ffff {
        return "\u{fffd}".to_string();
    }
    let invalid = (0x1..=0x8).contains(&num)
        || (0xe..=0x1f).contains(&num)
        || (0x7f..=0x9f).contains(&num)
        || (0xfdd0..=0xfdef).contains(&num)
        || num == 0xb
        || (num & 0xfffe) == 0xfffe;
    if invalid {
        return String::new();
    }
    char::from_u32(num as u32).map_or_else(|| "\u{fffd}".to_string(), String::from)
}

/// Named references: (name without `;`, value, accepted without `;`). Values from Python's
/// `html.entities.html5`; sorted by name (byte order) for binary search.
pub static ENTITIES: &[(&str, &str, bool)] = &[
    ("AElig", "\u{c6}", true),
    ("AMP", "&", true),
    ("Aacute", "\u{c1}", true),
    ("Acirc", "\u{c2}", true),
    ("Agrave", "\u{c0}", true),
    ("Alpha", "\u{391}", false),
    ("Aring", "\u{c5}", true),
    ("Atilde", "\u{c3}", true),
    ("Auml", "\u{c4}", true),
    ("Beta", "\u{392}", false),
    ("COPY", "\u{a9}", true),
    ("Ccedil", "\u{c7}", true),
    ("Chi", "\u{3a7}", false),
    ("Dagger", "\u{2021}", false),
    ("Delta", "\u{394}", false),
    ("ETH", "\u{d0}", true),
    ("Eacute", "\u{c9}", true),
    ("Ecirc", "\u{ca}", true),
    ("Egrave", "\u{c8}", true),
    ("Epsilon", "\u{395}", false),
    ("Eta", "\u{397}", false),
    ("Euml", "\u{cb}", true),
    ("GT", ">", true),
    ("Gamma", "\u{393}", false),
    ("Iacute", "\u{cd}", true),
    ("Icirc", "\u{ce}", true),
    ("Igrave", "\u{cc}", true),
    ("Iota", "\u{399}", false),
    ("Iuml", "\u{cf}", true),
    ("Kappa", "\u{39a}", false),
    ("LT", "<", true),
    ("Lambda", "\u{39b}", false),
    ("Mu", "\u{39c}", false),
    ("Ntilde", "\u{d1}", true),
    ("Nu", "\u{39d}", false),
    ("OElig", "\u{152}", false),
    ("Oacute", "\u{d3}", true),
    ("Ocirc", "\u{d4}", true),
    ("Ograve", "\u{d2}", true),
    ("Omega", "\u{3a9}", false),
    ("Omicron", "\u{39f}", false),
    ("Oslash", "\u{d8}", true),
    ("Otilde", "\u{d5}", true),
    ("Ouml", "\u{d6}", true),
    ("Phi", "\u{3a6}", false),
    ("Pi", "\u{3a0}", false),
    ("Prime", "\u{2033}", false),
    ("Psi", "\u{3a8}", false),
    ("QUOT", "\u{22}", true),
    ("REG", "\u{ae}", true),
    ("Rho", "\u{3a1}", false),
    ("Scaron", "\u{160}", false),
    ("Sigma", "\u{3a3}", false),
    ("THORN", "\u{de}", true),
    ("Tau", "\u{3a4}", false),
    ("Theta", "\u{398}", false),
    ("Uacute", "\u{da}", true),
    ("Ucirc", "\u{db}", true),
    ("Ugrave", "\u{d9}", true),
    ("Upsilon", "\u{3a5}", false),
    ("Uuml", "\u{dc}", true),
    ("Xi", "\u{39e}", false),
    ("Yacute", "\u{dd}", true),
    ("Yuml", "\u{178}", false),
    ("Zeta", "\u{396}", false),
    ("aacute", "\u{e1}", true),
    ("acirc", "\u{e2}", true),
    ("acute", "\u{b4}", true),
    ("aelig", "\u{e6}", true),
    ("agrave", "\u{e0}", true),
    ("alpha", "\u{3b1}", false),
    ("amp", "&", true),
    ("apos", "'", false),
    ("aring", "\u{e5}", true),
    ("asymp", "\u{2248}", false),
    ("atilde", "\u{e3}", true),
    ("auml", "\u{e4}", true),
    ("bdquo", "\u{201e}", false),
    ("beta", "\u{3b2}", false),
    ("brvbar", "\u{a6}", true),
    ("bull", "\u{2022}", false),
    ("ccedil", "\u{e7}", true),
    ("cedil", "\u{b8}", true),
    ("cent", "\u{a2}", true),
    ("check", "\u{2713}", false),
    ("chi", "\u{3c7}", false),
    ("circ", "\u{2c6}", false),
    ("clubs", "\u{2663}", false),
    ("copy", "\u{a9}", true),
    ("cross", "\u{2717}", false),
    ("curren", "\u{a4}", true),
    ("dagger", "\u{2020}", false),
    ("darr", "\u{2193}", false),
    ("dash", "\u{2010}", false),
    ("deg", "\u{b0}", true),
    ("delta", "\u{3b4}", false),
    ("diams", "\u{2666}", false),
    ("divide", "\u{f7}", true),
    ("eacute", "\u{e9}", true),
    ("ecirc", "\u{ea}", true),
    ("egrave", "\u{e8}", true),
    ("emsp", "\u{2003}", false),
    ("ensp", "\u{2002}", false),
    ("epsilon", "\u{3b5}", false),
    ("eta", "\u{3b7}", false),
    ("eth", "\u{f0}", true),
    ("euml", "\u{eb}", true),
    ("euro", "\u{20ac}", false),
    ("female", "\u{2640}", false),
    ("flat", "\u{266d}", false),
    ("fnof", "\u{192}", false),
    ("frac12", "\u{bd}", true),
    ("frac14", "\u{bc}", true),
    ("frac34", "\u{be}", true),
    ("gamma", "\u{3b3}", false),
    ("ge", "\u{2265}", false),
    ("gt", ">", true),
    ("harr", "\u{2194}", false),
    ("hearts", "\u{2665}", false),
    ("hellip", "\u{2026}", false),
    ("horbar", "\u{2015}", false),
    ("hyphen", "\u{2010}", false),
    ("iacute", "\u{ed}", true),
    ("icirc", "\u{ee}", true),
    ("iexcl", "\u{a1}", true),
    ("igrave", "\u{ec}", true),
    ("infin", "\u{221e}", false),
    ("iota", "\u{3b9}", false),
    ("iquest", "\u{bf}", true),
    ("iuml", "\u{ef}", true),
    ("kappa", "\u{3ba}", false),
    ("lArr", "\u{21d0}", false),
    ("lambda", "\u{3bb}", false),
    ("laquo", "\u{ab}", true),
    ("larr", "\u{2190}", false),
    ("ldquo", "\u{201c}", false),
    ("le", "\u{2264}", false),
    ("lrm", "\u{200e}", false),
    ("lsaquo", "\u{2039}", false),
    ("lsquo", "\u{2018}", false),
    ("lt", "<", true),
    ("macr", "\u{af}", true),
    ("male", "\u{2642}", false),
    ("mdash", "\u{2014}", false),
    ("micro", "\u{b5}", true),
    ("middot", "\u{b7}", true),
    ("minus", "\u{2212}", false),
    ("mu", "\u{3bc}", false),
    ("natural", "\u{266e}", false),
    ("nbsp", "\u{a0}", true),
    ("ndash", "\u{2013}", false),
    ("ne", "\u{2260}", false),
    ("not", "\u{ac}", true),
    ("ntilde", "\u{f1}", true),
    ("nu", "\u{3bd}", false),
    ("oacute", "\u{f3}", true),
    ("ocirc", "\u{f4}", true),
    ("oelig", "\u{153}", false),
    ("ograve", "\u{f2}", true),
    ("omega", "\u{3c9}", false),
    ("omicron", "\u{3bf}", false),
    ("ordf", "\u{aa}", true),
    ("ordm", "\u{ba}", true),
    ("oslash", "\u{f8}", true),
    ("otilde", "\u{f5}", true),
    ("ouml", "\u{f6}", true),
    ("para", "\u{b6}", true),
    ("permil", "\u{2030}", false),
    ("phi", "\u{3c6}", false),
    ("phone", "\u{260e}", false),
    ("pi", "\u{3c0}", false),
    ("plusmn", "\u{b1}", true),
    ("pound", "\u{a3}", true),
    ("prime", "\u{2032}", false),
    ("psi", "\u{3c8}", false),
    ("quot", "\u{22}", true),
    ("rArr", "\u{21d2}", false),
    ("raquo", "\u{bb}", true),
    ("rarr", "\u{2192}", false),
    ("rdquo", "\u{201d}", false),
    ("reg", "\u{ae}", true),
    ("rho", "\u{3c1}", false),
    ("rlm", "\u{200f}", false),
    ("rsaquo", "\u{203a}", false),
    ("rsquo", "\u{2019}", false),
    ("sbquo", "\u{201a}", false),
    ("scaron", "\u{161}", false),
    ("sect", "\u{a7}", true),
    ("sharp", "\u{266f}", false),
    ("shy", "\u{ad}", true),
    ("sigma", "\u{3c3}", false),
    ("sigmaf", "\u{3c2}", false),
    ("spades", "\u{2660}", false),
    ("star", "\u{2606}", false),
    ("starf", "\u{2605}", false),
    ("sung", "\u{266a}", false),
    ("sup1", "\u{b9}", true),
    ("sup2", "\u{b2}", true),
    ("sup3", "\u{b3}", true),
    ("szlig", "\u{df}", true),
    ("tau", "\u{3c4}", false),
    ("theta", "\u{3b8}", false),
    ("thinsp", "\u{2009}", false),
    ("thorn", "\u{fe}", true),
    ("tilde", "\u{2dc}", false),
    ("times", "\u{d7}", true),
    ("trade", "\u{2122}", false),
    ("uacute", "\u{fa}", true),
    ("uarr", "\u{2191}", false),
    ("ucirc", "\u{fb}", true),
    ("ugrave", "\u{f9}", true),
    ("uml", "\u{a8}", true),
    ("upsilon", "\u{3c5}", false),
    ("uuml", "\u{fc}", true),
    ("xi", "\u{3be}", false),
    ("yacute", "\u{fd}", true),
    ("yen", "\u{a5}", true),
    ("yuml", "\u{ff}", true),
    ("zeta", "\u{3b6}", false),
    ("zwj", "\u{200d}", false),
    ("zwnj", "\u{200c}", false),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_are_sorted() {
        assert!(ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn unescape_like_python() {
        // Expected values from Python 3.11's html.unescape.
        assert_eq!(
            html_unescape("&ampfoo; &#x80; &#0; &#128512 &lt &nbsp;x &bogus; &#xD800;"),
            "&foo; \u{20ac} \u{fffd} \u{1f600} < \u{a0}x &bogus; \u{fffd}"
        );
        assert_eq!(html_unescape("&#1; a&#;b &#x; &"), " a&#;b &#x; &");
    }

    #[test]
    fn clean_collapses_and_strips() {
        assert_eq!(wan_clean("  a\t\tb \u{3000} c\n"), "a b c");
        assert_eq!(wan_clean("&amp;amp;"), "&");
        assert_eq!(wan_clean("\u{1c}x\u{1c}"), "x");
    }
}
