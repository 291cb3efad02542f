//! The umT5 Unigram tokenizer against sentencepiece and transformers, on the tiny models and
//! prompts written by tools/reference/make_umt5_tokenizer_fixtures.py.

use std::path::{Path, PathBuf};

use nijigen::formats::gguf::GgufWriter;
use nijigen::formats::MetaValue;
use nijigen::text::umt5::{
    is_py_space, wan_clean, Umt5Tokenizer, Umt5TokenizerError, Umt5Tokens, TEXT_LEN,
};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/umt5_tokenizer")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn cases() -> Vec<Value> {
    expected()["cases"].as_array().expect("cases").clone()
}

/// `t` is `want` padded to 512 with pad id 0.
fn check_padded(t: &Umt5Tokens, want: &[u32], what: &str) {
    assert_eq!(t.ids.len(), TEXT_LEN, "{what}");
    assert_eq!(t.real(), want, "{what}");
    assert_eq!(t.len, want.len(), "{what}");
    assert!(t.ids[t.len..].iter().all(|&i| i == 0), "{what}: padding");
}

/// Every prompt through `tok`, raw and Wan-cleaned, against the sentencepiece ids.
fn check_spm(tok: &Umt5Tokenizer, model: &str, source: &str) {
    let mut n = 0;
    for c in cases() {
        let prompt = c["prompt"].as_str().expect("prompt");
        let what = format!("{model} {source}: {prompt:?}");
        let raw = ids(&c[format!("spm_{model}_raw")]);
        check_padded(&tok.encode_padded(prompt, TEXT_LEN), &raw, &what);
        let clean = ids(&c[format!("spm_{model}_clean")]);
        check_padded(
            &tok.encode_wan(prompt),
            &clean,
            &format!("{what} (cleaned)"),
        );
        n += 1;
    }
    assert!(n >= 40);
}

#[test]
fn wan_cleaning_matches_python() {
    for c in cases() {
        let prompt = c["prompt"].as_str().expect("prompt");
        assert_eq!(
            wan_clean(prompt),
            c["clean"].as_str().expect("clean"),
            "{prompt:?}"
        );
    }
}

#[test]
fn whitespace_sets_match_python() {
    let e = expected();
    let set = |k: &str| -> Vec<u32> { ids(&e[k]) };
    let regex_ws: Vec<u32> = (0..=0x10ffffu32)
        .filter(|&c| char::from_u32(c).is_some_and(char::is_whitespace))
        .collect();
    assert_eq!(regex_ws, set("whitespace_regex"), "regex \\s");
    let strip_ws: Vec<u32> = (0..=0x10ffffu32)
        .filter(|&c| char::from_u32(c).is_some_and(is_py_space))
        .collect();
    assert_eq!(strip_ws, set("whitespace_strip"), "str.strip");
}

#[test]
fn spiece_model_nmt_nfkc_matches_sentencepiece() {
    let tok = Umt5Tokenizer::from_spiece_model(dir().join("nfkc/spiece.model")).expect("load");
    assert!(tok.byte_fallback());
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.unk_id()), (0, 1, 2));
    check_spm(&tok, "nfkc", "spiece.model");
}

#[test]
fn spiece_model_matches_sentencepiece() {
    let tok = Umt5Tokenizer::from_spiece_model(dir().join("small/spiece.model")).expect("load");
    check_spm(&tok, "small", "spiece.model");
}

#[test]
fn gguf_matches_sentencepiece() {
    let tok = Umt5Tokenizer::from_gguf_file(dir().join("small/tokenizer.gguf")).expect("load");
    assert!(tok.byte_fallback());
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.unk_id()), (0, 1, 2));
    check_spm(&tok, "small", "gguf");
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok = Umt5Tokenizer::from_tokenizer_json(dir().join("small/tokenizer.json")).expect("load");
    assert!(tok.byte_fallback());
    for c in cases() {
        let prompt = c["prompt"].as_str().expect("prompt");
        let want = ids(&c["hf_small_clean"]);
        check_padded(
            &tok.encode_wan(prompt),
            &want,
            &format!("tokenizer.json: {prompt:?}"),
        );
    }
}

#[test]
fn from_file_detects_the_format() {
    for f in [
        "small/spiece.model",
        "small/tokenizer.gguf",
        "small/tokenizer.json",
    ] {
        let tok = Umt5Tokenizer::from_file(dir().join(f)).expect(f);
        let t = tok.encode_wan("a photo of a cat");
        assert_eq!(t.real(), ids(&cases()[0]["spm_small_clean"]), "{f}");
    }
}

#[test]
fn long_prompts_are_cut_to_512_with_the_end_token() {
    let tok = Umt5Tokenizer::from_gguf_file(dir().join("small/tokenizer.gguf")).expect("load");
    let prompt = "dragon ".repeat(600);
    let t = tok.encode_wan(&prompt);
    assert_eq!(t.len, TEXT_LEN);
    assert_eq!(t.ids.len(), TEXT_LEN);
    assert_eq!(t.ids[TEXT_LEN - 1], tok.eos_id());
    assert!(t.ids[..TEXT_LEN - 1].iter().all(|&i| i != tok.eos_id()));
    assert!(t.mask().iter().all(|&m| m == 1));
    // The cut keeps the first 511 pieces of the full encoding.
    assert_eq!(
        t.ids[..TEXT_LEN - 1],
        tok.encode(&wan_clean(&prompt))[..TEXT_LEN - 1]
    );
}

#[test]
fn gguf_without_tokenizer_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("no-tokenizer.gguf");
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String("t5encoder".into()),
    )];
    let f = std::fs::File::create(&path).expect("create");
    GgufWriter::new(&path, f, &meta, &[])
        .expect("writer")
        .finish()
        .expect("finish");
    let err = Umt5Tokenizer::from_gguf_file(&path).expect_err("no tokenizer");
    assert!(matches!(err, Umt5TokenizerError::Missing { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no-tokenizer.gguf") && msg.contains("--t5-tokenizer"),
        "{msg}"
    );

    // A llama (BPE/SPM) tokenizer is refused by name.
    let meta = vec![(
        "tokenizer.ggml.model".to_string(),
        MetaValue::String("llama".into()),
    )];
    let f = std::fs::File::create(&path).expect("create");
    GgufWriter::new(&path, f, &meta, &[])
        .expect("writer")
        .finish()
        .expect("finish");
    let err = Umt5Tokenizer::from_gguf_file(&path).expect_err("not t5");
    assert!(
        matches!(err, Umt5TokenizerError::Unsupported { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("\"llama\""), "{err}");
}

#[test]
fn non_unigram_tokenizer_json_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("tokenizer.json");
    std::fs::write(
        &path,
        r#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#,
    )
    .expect("write");
    let err = Umt5Tokenizer::from_tokenizer_json(&path).expect_err("BPE");
    assert!(
        matches!(err, Umt5TokenizerError::Unsupported { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("Unigram"),
        "{msg}"
    );

    std::fs::write(&path, "{not json").expect("write");
    let err = Umt5Tokenizer::from_tokenizer_json(&path).expect_err("bad JSON");
    assert!(matches!(err, Umt5TokenizerError::Malformed { .. }), "{err}");
}

#[test]
fn damaged_spiece_model_is_an_error() {
    let bytes = std::fs::read(dir().join("small/spiece.model")).expect("read");
    let cut = &bytes[..bytes.len() / 2];
    let err = Umt5Tokenizer::from_spiece_bytes(cut, Path::new("cut.model")).expect_err("cut");
    assert!(err.to_string().starts_with("cut.model: "), "{err}");
}
