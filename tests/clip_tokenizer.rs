//! The CLIP tokenizer, prompt weights and SDXL chunking against references.
//!
//! Fixtures in tests/fixtures/text/ come from tools/reference/make_tokenizer_fixtures.py:
//! transformers' slow `CLIPTokenizer` (no ftfy, ComfyUI's sd1_tokenizer settings) for token ids,
//! and ComfyUI's `SDXLTokenizer.tokenize_with_weights` (restated in that script) for chunks.
//! The prompt-weight cases below are written by hand from ComfyUI's `comfy/sd1_clip.py` rules.

use std::path::PathBuf;

use nijigen::text::clip::{ClipTokenizer, BOS, EOS};
use nijigen::text::prompt::{parse, parse_with, ParseOptions, Segment};
use nijigen::text::sdxl::{empty_chunk, SdxlTokenizer, CHUNK_LEN, PAD_G, PAD_L};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn seg(text: &str, weight: f64) -> Segment {
    Segment {
        text: text.into(),
        weight,
    }
}

fn comfy(prompt: &str) -> Vec<Segment> {
    parse_with(prompt, ParseOptions::comfyui())
}

#[test]
fn encode_matches_transformers_slow_clip_tokenizer() {
    let fx = fixture("clip_encode.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let tok = ClipTokenizer::builtin();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text);
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
            continue;
        }
        let decoded = case["decoded"].as_str().unwrap();
        if tok.decode(&got) != decoded {
            failures.push(format!(
                "decode {text:?}: want {decoded:?}, got {:?}",
                tok.decode(&got)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn long_prompts_have_hundreds_of_tokens() {
    let fx = fixture("clip_encode.json");
    let longest = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["ids"].as_array().unwrap().len())
        .max()
        .unwrap();
    assert!(longest >= 200, "{longest}");
}

#[test]
fn sdxl_chunks_match_comfyui() {
    let fx = fixture("sdxl_tokens.json");
    let tok = SdxlTokenizer::with_options(ParseOptions::comfyui());
    for case in fx["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want_segments: Vec<Segment> = case["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| seg(s[0].as_str().unwrap(), s[1].as_f64().unwrap()))
            .collect();
        assert_eq!(comfy(text), want_segments, "segments of {text:?}");

        let got = tok.tokenize(text);
        for (key, chunks, pad) in [("l", &got.l, PAD_L), ("g", &got.g, PAD_G)] {
            let want_ids = case[key]["ids"].as_array().unwrap();
            let want_w = case[key]["weights"].as_array().unwrap();
            assert_eq!(
                chunks.len(),
                want_ids.len(),
                "{key} chunk count of {text:?}"
            );
            for (k, chunk) in chunks.iter().enumerate() {
                assert_eq!(
                    chunk.ids.to_vec(),
                    ids_of(&want_ids[k]),
                    "{key}[{k}] ids of {text:?}"
                );
                let w: Vec<f32> = want_w[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(chunk.weights.to_vec(), w, "{key}[{k}] weights of {text:?}");
                assert_eq!(
                    (
                        chunk.ids[0],
                        chunk.ids[CHUNK_LEN - 1] == pad || chunk.ids[76] == EOS
                    ),
                    (BOS, true)
                );
            }
        }
    }
}

// ---- Prompt weights, by hand from ComfyUI's rules -------------------------------------------

#[test]
fn plain_text_is_one_segment_at_weight_one() {
    // token_weights: a part that is not a '(...)' group is kept with the current weight (1.0).
    assert_eq!(
        comfy("1girl, solo, long hair"),
        [seg("1girl, solo, long hair", 1.0)]
    );
    assert_eq!(comfy(""), []);
}

#[test]
fn parentheses_multiply_by_1_1_per_level() {
    // token_weights: a '(...)' group recurses with `weight *= 1.1` (Python float arithmetic).
    assert_eq!(comfy("(a)"), [seg("a", 1.1)]);
    assert_eq!(comfy("((a))"), [seg("a", 1.1 * 1.1)]);
    assert_eq!(comfy("(((a)))"), [seg("a", 1.1 * 1.1 * 1.1)]);
    assert_eq!(
        comfy("x (y) z"),
        [seg("x ", 1.0), seg("y", 1.1), seg(" z", 1.0)]
    );
    assert_eq!(
        comfy("(a (b) c)"),
        [seg("a ", 1.1), seg("b", 1.1 * 1.1), seg(" c", 1.1)]
    );
}

#[test]
fn explicit_weight_is_absolute_and_uses_last_colon() {
    // token_weights: `xx = x.rfind(":")`; if `xx > 0` and `float(x[xx+1:])` succeeds, that is the
    // weight (replacing, not multiplying, the current one) and the text is cut at the colon.
    assert_eq!(
        comfy("1girl, (masterpiece:1.2), best quality"),
        [
            seg("1girl, ", 1.0),
            seg("masterpiece", 1.2),
            seg(", best quality", 1.0)
        ]
    );
    assert_eq!(comfy("((a:1.5))"), [seg("a", 1.5)]);
    assert_eq!(comfy("(a:1.2:1.3)"), [seg("a:1.2", 1.3)]);
    assert_eq!(comfy("(a: 0.5 )"), [seg("a", 0.5)]);
    assert_eq!(comfy("(a:1e1)"), [seg("a", 10.0)]);
    assert_eq!(comfy("(a:-1)"), [seg("a", -1.0)]);
    assert_eq!(comfy("(a:1_5)"), [seg("a", 15.0)]);
    // The nested group's weight comes from its own colon; the outer tail "1.2) c" is no number.
    assert_eq!(
        comfy("(a (b:1.2) c)"),
        [seg("a ", 1.1), seg("b", 1.2), seg(" c", 1.1)]
    );
    // Here the last colon is before the nested group: "1.2 (b)" is no number.
    assert_eq!(
        comfy("(a:1.2 (b))"),
        [seg("a:1.2 ", 1.1), seg("b", 1.1 * 1.1)]
    );
}

#[test]
fn non_numbers_after_colon_stay_text() {
    // token_weights: float() fails -> `except: pass`, weight stays current * 1.1, text uncut.
    assert_eq!(comfy("(a:abc)"), [seg("a:abc", 1.1)]);
    assert_eq!(comfy("(a:)"), [seg("a:", 1.1)]);
    // `xx > 0`: a colon at position 0 is not a weight.
    assert_eq!(comfy("(:1.5)"), [seg(":1.5", 1.1)]);
    // Non-ASCII digits are not read (Python would read Arabic-Indic digits; nijigen does not).
    assert_eq!(comfy("(a:x1)"), [seg("a:x1", 1.1)]);
}

#[test]
fn escapes() {
    // escape_important / unescape_important: only \( and \) are escapes.
    assert_eq!(comfy(r"\(a\)"), [seg("(a)", 1.0)]);
    assert_eq!(comfy(r"(x\):2)"), [seg("x)", 2.0)]);
    assert_eq!(comfy(r"a\b \[c\]"), [seg(r"a\b \[c\]", 1.0)]);
    // "\\)" : the second backslash escapes the parenthesis, the first stays.
    assert_eq!(comfy(r"\\)"), [seg(r"\)", 1.0)]);
}

#[test]
fn unbalanced_parentheses_as_comfyui() {
    // parse_parentheses: a ')' at depth 0 makes the depth -1; from then on '(' only brings it
    // back to 0 without starting a group, and ')' takes it below 0 again: all literal.
    assert_eq!(comfy("a) (b)"), [seg("a) (b)", 1.0)]);
    assert_eq!(comfy(")("), [seg(")(", 1.0)]);
    // ...but a second '(' at depth 0 starts a group again.
    assert_eq!(comfy(")((b)"), [seg(")(", 1.0), seg("b", 1.1)]);
    // An unclosed '(' runs to the end as one literal part...
    assert_eq!(comfy("a (b"), [seg("a ", 1.0), seg("(b", 1.0)]);
    assert_eq!(comfy("a ((b) c"), [seg("a ", 1.0), seg("((b) c", 1.0)]);
    // ...unless that part ends in ')': token_weights sees '(' first and ')' last: a group.
    assert_eq!(comfy("((a)"), [seg("(a", 1.1)]);
    assert_eq!(
        comfy("x ((a) (b)"),
        [
            seg("x ", 1.0),
            seg("a", 1.1 * 1.1),
            seg(" ", 1.1),
            seg("(b", 1.1)
        ]
    );
    // Empty groups give nothing.
    assert_eq!(comfy("()"), []);
    assert_eq!(comfy("(()())"), []);
}

#[test]
fn square_brackets_are_text_in_comfyui() {
    // ComfyUI's parser knows only '(' and ')'.
    assert_eq!(comfy("[bad hands]"), [seg("[bad hands]", 1.0)]);
    assert_eq!(comfy("BREAK"), [seg("BREAK", 1.0)]);
}

#[test]
fn square_brackets_divide_by_1_1_by_default() {
    // A1111: '[...]' multiplies by 1/1.1; nijigen's default adds that to ComfyUI's rules.
    let down = 1.0 / 1.1;
    assert_eq!(parse("[a]"), [seg("a", down)]);
    assert_eq!(parse("[[a]]"), [seg("a", down * down)]);
    assert_eq!(
        parse("x [y] z"),
        [seg("x ", 1.0), seg("y", down), seg(" z", 1.0)]
    );
    assert_eq!(parse("[a (b)]"), [seg("a ", down), seg("b", down * 1.1)]);
    assert_eq!(parse("([a]:1.5)"), [seg("a", 1.5 * down)]);
    // No weight syntax in square brackets: the colon is text.
    assert_eq!(parse("[a:1.5]"), [seg("a:1.5", down)]);
    assert_eq!(parse(r"\[a\]"), [seg("[a]", 1.0)]);
    // Mismatched kinds are literal.
    assert_eq!(parse("(a]"), [seg("(a]", 1.0)]);
    assert_eq!(parse("[a"), [seg("[a", 1.0)]);
    // Without brackets the two syntaxes agree.
    let p = "1girl, (masterpiece:1.2), ((best quality)), \\(x\\)";
    assert_eq!(parse(p), comfy(p));
}

#[test]
fn parsing_never_panics_on_odd_input() {
    let inputs = [
        "(((((",
        ")))))",
        "(:",
        ":)",
        "(:)",
        "((:1.2)",
        "(a:1.2))",
        "\\",
        "\\(",
        "(\\)",
        "[(])",
        "([)]",
        "(\u{0}\u{1})",
        "(日本:1.2)",
        "(😀:0.5) [😀]",
        "(a:nan)",
        "(a:inf)",
        "(a:1e999)",
    ];
    for p in inputs {
        for options in [ParseOptions::comfyui(), ParseOptions::default()] {
            let _ = parse_with(p, options);
            let _ = SdxlTokenizer::with_options(options).tokenize(p);
        }
    }
    assert_eq!(comfy("(a:1e999)"), [seg("a", f64::INFINITY)]);
}

// ---- SDXL chunking ----------------------------------------------------------------------------

fn cats(n: usize) -> String {
    vec!["cat"; n].join(" ")
}

#[test]
fn seventy_five_tokens_fill_one_chunk() {
    let cat = ClipTokenizer::builtin().encode("cat");
    assert_eq!(cat.len(), 1);
    let t = SdxlTokenizer::new().tokenize(&cats(75));
    assert_eq!(t.l.len(), 1);
    assert_eq!(t.l[0].ids[0], BOS);
    assert!(t.l[0].ids[1..76].iter().all(|&i| i == cat[0]));
    assert_eq!(t.l[0].ids[76], EOS);
    assert_eq!(t.g[0].ids, t.l[0].ids);
}

#[test]
fn seventy_six_tokens_make_two_chunks() {
    // One segment of 76 tokens is one group of >= 8 tokens: cut after 75.
    let t = SdxlTokenizer::new().tokenize(&cats(76));
    assert_eq!(t.l.len(), 2);
    assert_eq!(t.l[0].ids[76], EOS);
    assert_eq!(t.l[1].ids[..4], [BOS, t.l[0].ids[1], EOS, PAD_L]);
    assert_eq!(t.g[1].ids[..4], [BOS, t.l[0].ids[1], EOS, PAD_G]);
    assert!(t.l[1].ids[3..].iter().all(|&i| i == PAD_L));
    assert!(t.g[1].ids[3..].iter().all(|&i| i == PAD_G));
}

#[test]
fn small_weighted_group_moves_whole_to_next_chunk() {
    // 74 tokens, then "(dog wolf:1.3)" = 2 tokens: 74 + 2 > 75, and 2 < 8, so the first chunk is
    // closed after 74 tokens (EOS, one pad) and the group starts the second chunk.
    let prompt = format!("{} (dog wolf:1.3)", cats(74));
    let t = SdxlTokenizer::new().tokenize(&prompt);
    assert_eq!(t.l.len(), 2);
    assert_eq!(t.l[0].ids[75..], [EOS, PAD_L]);
    assert_eq!(t.g[0].ids[75..], [EOS, PAD_G]);
    let dog_wolf = ClipTokenizer::builtin().encode("dog wolf");
    assert_eq!(t.l[1].ids[1..3], dog_wolf[..]);
    assert_eq!(t.l[1].weights[1..3], [1.3, 1.3]);
    assert_eq!(t.l[1].ids[3], EOS);
    assert!(t.has_weights());
}

#[test]
fn large_weighted_group_is_cut_at_the_boundary() {
    // 70 tokens then a weighted group of 8 tokens: 8 >= 8, so 5 go in the first chunk and 3 in
    // the second.
    let prompt = format!("{} (one two three four five six seven eight:1.1)", cats(70));
    let t = SdxlTokenizer::new().tokenize(&prompt);
    assert_eq!(t.l.len(), 2);
    assert_eq!(t.l[0].weights[70], 1.0);
    assert!(t.l[0].weights[71..76].iter().all(|&w| w == 1.1f32));
    assert_eq!(t.l[0].ids[76], EOS);
    assert!(t.l[1].weights[1..4].iter().all(|&w| w == 1.1f32));
    assert_eq!(t.l[1].ids[4], EOS);
}

#[test]
fn weights_follow_tokens_and_specials_are_neutral() {
    let t = SdxlTokenizer::new().tokenize("a (photo:1.5) of [a] cat");
    let c = &t.l[0];
    let ids = ClipTokenizer::builtin().encode("a photo of a cat");
    assert_eq!(c.ids[1..6], ids[..]);
    assert_eq!(
        c.weights[..7],
        [1.0, 1.0, 1.5, 1.0, (1.0 / 1.1) as f32, 1.0, 1.0]
    );
    assert_eq!(c.ids[6], EOS);
    assert_eq!(empty_chunk(PAD_L).ids[2], EOS);
}

#[test]
fn embedding_names_are_dropped_and_reported() {
    let t = SdxlTokenizer::new().tokenize("photo embedding:EasyNegative, bad hands");
    assert_eq!(t.missing_embeddings, ["EasyNegative"]);
    let want = SdxlTokenizer::new().tokenize("photo, bad hands");
    assert_eq!(t.l, want.l);
}
