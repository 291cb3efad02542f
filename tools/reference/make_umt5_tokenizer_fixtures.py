#!/usr/bin/env python3
"""Fixtures for the umT5 SentencePiece Unigram tokenizer (`src/text/umt5.rs`).

Trains two SMALL Unigram models with the `sentencepiece` package, with umT5's settings
(byte_fallback, pad=0, eos=1, unk=2, no bos, add_dummy_prefix, remove_extra_whitespaces):

- `nfkc/spiece.model`: the real `nmt_nfkc` rule (the precompiled charsmap umT5 ships, ~240 KB),
  stored as spiece.model only (three copies of that charsmap would not fit the size budget).
- `small/`: a custom normalization rule (an NFKC subset: Latin-1/Latin Extended, general
  punctuation, CJK punctuation, full-width forms, circled numbers, a few composed accents, tabs
  and newlines to spaces, zero-width space removed) so its charsmap is a few KB; stored three
  ways: `spiece.model`, `tokenizer.json` (transformers' T5 converter) and `tokenizer.gguf`
  (`tokenizer.ggml.*` keys written as llama.cpp's convert_hf_to_gguf.py T5 path writes them).

`expected.json` holds, for ~40 prompts: Wan's cleaned text (`clean='whitespace'` from
wan/modules/tokenizers.py, without ftfy), sentencepiece ids of the raw and of the cleaned text
(+ EOS, truncated to 512), and transformers' ids (real length) of the raw and cleaned text as
Wan calls it (`padding='max_length', truncation=True, max_length=512`), for both models (the
nfkc `tokenizer.json` is built in memory, not stored). It also lists the code points Python
treats as whitespace in `regex`'s `\\s` and in `str.strip()`.

Needs: sentencepiece, protobuf, tokenizers, transformers, gguf, regex.
Run from the repository root: `python tools/reference/make_umt5_tokenizer_fixtures.py`.
Training is deterministic for a fixed corpus and thread count (num_threads=1).
"""

import html
import json
import os
import random
import shutil
import string
import sys
import tempfile
import unicodedata
from pathlib import Path

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import regex
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

OUT = Path("tests/fixtures/umt5_tokenizer")
SEQ_LEN = 512


def basic_clean(text):
    # Wan: text = ftfy.fix_text(text) first; not replicated (see src/text/umt5.rs).
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text):
    text = regex.sub(r"\s+", " ", text)
    return text.strip()


def wan_clean(text):
    return whitespace_clean(basic_clean(text))


# --------------------------------------------------------------------------------------------
# Corpus

WORDS = """
a an the of and in on at to with from by for over under near into onto through across
girl boy woman man cat dog bird horse dragon robot knight witch wizard astronaut samurai ninja
city forest mountain river ocean beach desert castle village street garden sky cloud rain snow
red blue green yellow purple orange black white golden silver pink crimson azure emerald
walking running flying dancing sitting standing smiling looking holding wearing riding jumping
slowly quickly gently softly brightly camera pans zooms tracks shot close-up wide angle view
beautiful detailed cinematic realistic anime painting photo portrait landscape lighting shadow
sunset sunrise night morning evening neon glowing sparkling misty foggy dramatic epic serene
hair eyes dress coat hat sword shield book flower tree leaf wave fire water light
high quality masterpiece best 4k 8k ultra sharp focus depth field bokeh film grain
""".split()

ACCENTED = "café naïve résumé jalapeño façade über fiancée crème brûlée São Paulo Zürich Ångström".split()
CJK = ["少女", "猫", "城市", "夜景", "桜", "の", "花", "山", "川", "海", "空", "雨", "雪", "東京",
       "一人の少女", "美しい", "風景", "写真", "電車", "女の子", "男の子", "ドラゴン", "ロボット",
       "카메라", "소녀", "고양이"]
OTHER = ["москва", "кошка", "девушка", "Ελλάδα", "γάτα", "مرحبا", "नमस्ते"]


def corpus_lines(rng):
    lines = []
    for _ in range(6000):
        n = rng.randint(4, 18)
        parts = []
        for _ in range(n):
            r = rng.random()
            if r < 0.80:
                parts.append(rng.choice(WORDS))
            elif r < 0.87:
                parts.append(rng.choice(ACCENTED))
            elif r < 0.95:
                parts.append(rng.choice(CJK))
            else:
                parts.append(rng.choice(OTHER))
            if rng.random() < 0.1:
                parts[-1] += rng.choice([",", ".", "!", "?", ":", ";"])
            if rng.random() < 0.03:
                parts.append(str(rng.randint(0, 2025)))
        line = " ".join(parts)
        lines.append(line[0].upper() + line[1:])
    return lines


# --------------------------------------------------------------------------------------------
# Custom normalization rule for the small model (an NFKC subset, like nmt_nfkc in spirit)


def small_rule_tsv():
    rules = {}
    ranges = [(0x00A0, 0x024F), (0x2000, 0x206F), (0x2460, 0x24FF), (0x3000, 0x303F),
              (0xFF00, 0xFFEF)]
    for lo, hi in ranges:
        for cp in range(lo, hi + 1):
            c = chr(cp)
            if unicodedata.category(c) in ("Cs", "Cn"):
                continue
            n = unicodedata.normalize("NFKC", c)
            if n != c:
                rules[(cp,)] = tuple(ord(x) for x in n)
    # Spaces (nmt_nfkc maps them to U+0020) and composed accents (multi-code-point keys).
    for cp in (0x09, 0x0A, 0x0D, 0x3000, 0x00A0, 0x2002, 0x2003):
        rules[(cp,)] = (0x20,)
    rules[(0x200B,)] = ()
    for base in "aeiouncAEIOUNC":
        for comb in (0x300, 0x301, 0x302, 0x303, 0x308, 0x327):
            s = unicodedata.normalize("NFKC", base + chr(comb))
            if len(s) == 1:
                rules[(ord(base), comb)] = (ord(s),)
    lines = []
    for src, dst in sorted(rules.items()):
        lines.append(" ".join(f"{c:X}" for c in src) + "\t" + " ".join(f"{c:X}" for c in dst))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Training


def train(corpus_path, prefix, vocab_size, rule_name=None, rule_tsv=None):
    kwargs = dict(
        input=str(corpus_path),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=0.995,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        num_threads=1,
        seed_sentencepiece_size=20000,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    if rule_tsv is not None:
        kwargs["normalization_rule_tsv"] = str(rule_tsv)
    else:
        kwargs["normalization_rule_name"] = rule_name
    spm.SentencePieceTrainer.train(**kwargs)
    # The trainer records the temporary paths; blank them so reruns are byte-identical.
    path = Path(str(prefix) + ".model")
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    proto.trainer_spec.ClearField("input")
    proto.trainer_spec.model_prefix = Path(prefix).name
    proto.normalizer_spec.ClearField("normalization_rule_tsv")
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return path


def write_gguf(model_path, out_path):
    """The tokenizer part of llama.cpp's T5EncoderModel.set_vocab, on a tensor-less GGUF."""
    import gguf

    proto = sp_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tokens, scores, toktypes = [], [], []
    for i in range(sp.vocab_size()):
        t = 1  # NORMAL
        if sp.IsUnknown(i):
            t = 2
        elif sp.IsControl(i):
            t = 3
        elif sp.IsUnused(i):
            t = 5
        elif sp.IsByte(i):
            t = 6
        tokens.append(sp.IdToPiece(i).encode("utf-8"))
        scores.append(sp.GetScore(i))
        toktypes.append(t)
    w = gguf.GGUFWriter(str(out_path), "t5encoder")
    w.add_tokenizer_model("t5")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_remove_extra_whitespaces(proto.normalizer_spec.remove_extra_whitespaces)
    if proto.normalizer_spec.precompiled_charsmap:
        w.add_precompiled_charsmap(proto.normalizer_spec.precompiled_charsmap)
    # gguf.SpecialVocab writes these from the HF config; umT5's values.
    w.add_eos_token_id(1)
    w.add_unk_token_id(2)
    w.add_pad_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_tokenizer_json(model_path):
    """transformers' T5Converter (what `T5TokenizerFast` runs on a spiece.model), with byte
    fallback kept (the converter drops it unless `handle_byte_fallback` is set)."""
    from transformers.convert_slow_tokenizer import T5Converter

    class Slow:  # the attributes T5Converter reads from a slow T5Tokenizer
        vocab_file = str(model_path)
        _extra_ids = 0
        add_prefix_space = True
        legacy = True

        def convert_tokens_to_ids(self, token):
            return {"<pad>": 0, "</s>": 1, "<unk>": 2}[token]

    class Converter(T5Converter):
        handle_byte_fallback = True

    return Converter(Slow()).converted()


# --------------------------------------------------------------------------------------------
# Prompts

LONG = " ".join(["a cinematic shot of a girl walking through the neon city at night, rain"] * 60)

PROMPTS = [
    "a photo of a cat",
    "A beautiful girl with long golden hair, standing in a forest, cinematic lighting, 4k",
    "The camera slowly pans across the mountain landscape at sunset.",
    "",
    "   ",
    "   leading and trailing spaces   ",
    "extra    spaces\tand\ttabs\nand\nnewlines\r\nhere",
    "café naïve résumé jalapeño façade",
    "cafe\u0301 nai\u0308ve (combining accents)",
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＳＣＩＩ　１２３！",
    "ﾊﾝｶｸｶﾀｶﾅ half-width katakana",
    "一人の少女が東京の夜景を歩いている、美しい風景",
    "桜の花が舞う川沿いの道",
    "카메라가 소녀를 따라간다",
    "девушка в красном платье идёт по улице",
    "Ελλάδα θάλασσα",
    "emoji 😀🐱🔥 and ❤️ hearts",
    "zero\u200bwidth space and non\u00a0breaking space",
    "ideographic\u3000space",
    "&amp; &lt;tag&gt; &quot;quoted&quot; &#39;single&#39;",
    "double escaped &amp;amp; and &amp;lt;",
    "numeric &#233;t&#xE9; &#x1F600; &#128049;",
    "caf&eacute; na&iuml;ve &copy; 2024 &reg; &nbsp;x",
    "&nbsp &amp without semicolon &ltfoo",
    "&bogus; &; & alone &#; &#x;",
    "ligatures ﬁ ﬂ ﬀ and ½ ¼ ² ³ ™",
    "circled ① ② ③ and roman Ⅳ Ⅻ",
    "quotes “double” ‘single’ — dash – en dash … ellipsis",
    "MiXeD CaSe WoRdS and UPPERCASE",
    "numbers 1234567890 3.14159 1,000,000",
    "punctuation!!! ??? ... ,,, ;;; ::: (((brackets))) [[x]] {{y}}",
    "url https://example.com/path?query=1&x=2",
    "snake_case camelCase kebab-case",
    "unknown chars: ☃ ♞ ⚙ ∰ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ℌ",
    "\u0000control\u0007chars\u001f",
    "मराठी हिन्दी and العربية",
    "a" * 300,
    "</s> <pad> <unk> literal specials",
    LONG,
    "dragon " * 600,
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_text("\n".join(corpus_lines(rng)) + "\n", encoding="utf-8")
        rule = tmp / "rule.tsv"
        rule.write_text(small_rule_tsv(), encoding="utf-8")

        (OUT / "nfkc").mkdir(exist_ok=True)
        (OUT / "small").mkdir(exist_ok=True)
        m = train(corpus, tmp / "nfkc", 1000, rule_name="nmt_nfkc")
        shutil.copy(m, OUT / "nfkc" / "spiece.model")
        m = train(corpus, tmp / "small", 900, rule_tsv=rule)
        shutil.copy(m, OUT / "small" / "spiece.model")

        tok = hf_tokenizer_json(OUT / "small" / "spiece.model")
        (OUT / "small" / "tokenizer.json").write_text(tok.to_str() + "\n", encoding="utf-8")
        write_gguf(OUT / "small" / "spiece.model", OUT / "small" / "tokenizer.gguf")

    sps = {name: spm.SentencePieceProcessor(model_file=str(OUT / name / "spiece.model"))
           for name in ("nfkc", "small")}
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer

    # transformers registers unk_token as a special token too (as AutoTokenizer does for umT5).
    hfs = {
        "small": Tokenizer.from_file(str(OUT / "small" / "tokenizer.json")),
        # Not stored (its charsmap is the big one): the Rust test rebuilds the same pipeline
        # from nfkc/spiece.model.
        "nfkc": hf_tokenizer_json(OUT / "nfkc" / "spiece.model"),
    }
    hfs = {name: PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>") for name, t in hfs.items()}

    def sp_ids(sp, text):
        ids = sp.encode(text)
        return ids[: SEQ_LEN - 1] + [1]

    def hf_ids(hf, text):
        enc = hf([text], padding="max_length", truncation=True, max_length=SEQ_LEN)
        ids = enc["input_ids"][0]
        n = sum(enc["attention_mask"][0])
        assert len(ids) == SEQ_LEN and all(i == 0 for i in ids[n:]), text
        return ids[:n]

    cases = []
    for p in PROMPTS:
        clean = wan_clean(p)
        case = {"prompt": p, "clean": clean}
        for name, sp in sps.items():
            case[f"spm_{name}_raw"] = sp_ids(sp, p)
            case[f"spm_{name}_clean"] = sp_ids(sp, clean)
        for name, hf in hfs.items():
            case[f"hf_{name}_raw"] = hf_ids(hf, p)
            case[f"hf_{name}_clean"] = hf_ids(hf, clean)
        cases.append(case)

    ws_regex = [c for c in range(0x110000) if regex.match(r"\s", chr(c))]
    ws_strip = [c for c in range(0x110000) if chr(c).isspace()]
    expected = {
        "seq_len": SEQ_LEN,
        "whitespace_regex": ws_regex,
        "whitespace_strip": ws_strip,
        "cases": cases,
    }
    # One case per line keeps the file small and diffable.
    lines = ["{", f' "seq_len": {SEQ_LEN},',
             f' "whitespace_regex": {json.dumps(ws_regex)},',
             f' "whitespace_strip": {json.dumps(ws_strip)},', ' "cases": [']
    lines += ["  " + json.dumps(c, ensure_ascii=False, separators=(",", ":"))
              + ("," if i + 1 < len(cases) else "") for i, c in enumerate(cases)]
    lines += [" ]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == expected
    (OUT / "expected.json").write_text(text, encoding="utf-8")
    for name in ("small", "nfkc"):
        diff = [c["prompt"][:40] for c in cases if c[f"spm_{name}_clean"] != c[f"hf_{name}_clean"]]
        print(f"{name}: sentencepiece and transformers differ on {len(diff)} prompts: {diff}")
    for f in sorted(OUT.rglob("*")):
        if f.is_file():
            print(f"{f}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    sys.exit(main())
