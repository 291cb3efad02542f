"""Write the CLIP tokenizer vocabulary and fixtures for nijigen's `src/text/` module.

Produces:

* ``src/text/data/clip_merges.bin``: the 48,894 BPE merges of OpenAI's CLIP vocabulary
  (``bpe_simple_vocab_16e6.txt.gz``, the file open_clip and CLIP ship) in a compact binary form:
  the magic ``b"NJCLIPBPE1"``, a little-endian u32 merge count, then for each merge, in rank
  order, two little-endian u16 token ids (left, right). Token ids follow the CLIP vocabulary
  layout: 0..256 the bytes in GPT-2 ``bytes_to_unicode`` order, 256..512 the same with
  ``</w>``, then merge ``r`` makes token ``512 + r``, then ``<|startoftext|>`` (49406) and
  ``<|endoftext|>`` (49407). Every merge's parts are tokens made before it, so the ids fit in
  u16 and the string of every token is the concatenation of its parts.
* ``tests/fixtures/text/clip_encode.json``: for each prompt, the ids that transformers' slow
  ``CLIPTokenizer`` gives without BOS/EOS, and its decoding of them.
* ``tests/fixtures/text/sdxl_tokens.json``: for each prompt, ComfyUI's SDXL tokenisation
  (``SDXLTokenizer.tokenize_with_weights``): the CLIP-L and bigG chunks of 77 (token, weight).

The reference tokenizer is transformers' *slow* ``CLIPTokenizer`` (transformers < 5; version 5
keeps only the ``tokenizers``-backed one, which differs from it on CJK text and control
characters) with ComfyUI's ``comfy/sd1_tokenizer`` settings, and WITHOUT ``ftfy`` installed: then
``CLIPTokenizer`` cleans text with its ``BasicTokenizer`` (drop control characters, whitespace to
spaces, spaces around CJK ideographs, NFC, lowercase) instead of ``ftfy.fix_text``. ComfyUI does
not depend on ftfy, so this is what a plain ComfyUI install does. The script refuses to run when
ftfy is importable.

ComfyUI's prompt-weight parsing and chunking are restated below (``comfy_token_weights``,
``comfy_tokenize_with_weights``) from ComfyUI's ``comfy/sd1_clip.py`` (``parse_parentheses``,
``token_weights``, ``escape_important``, ``SDTokenizer.tokenize_with_weights``) and
``comfy/sdxl_clip.py`` (``SDXLClipGTokenizer``: pad with 0 instead of the end token). Embedding
names (``embedding:NAME``) are treated as ComfyUI treats an embedding file that does not exist.

Run from the repository root (deterministic; rerunning gives identical files):

    pip download --no-deps open_clip_torch   # ships bpe_simple_vocab_16e6.txt.gz
    pip install --target /tmp/tf4lib --no-deps "transformers==4.57.3" \
        "huggingface_hub==0.36.0" "tokenizers==0.22.1"
    PYTHONPATH=/tmp/tf4lib /work/pyref/bin/python tools/reference/make_tokenizer_fixtures.py \
        --bpe path/to/open_clip/bpe_simple_vocab_16e6.txt.gz

(``--bpe`` may be left out when open_clip is importable.) Tested with transformers 4.57.3,
regex 2026.11, Python 3.11.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import re
import struct
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_OUT = ROOT / "src" / "text" / "data" / "clip_merges.bin"
FIX_DIR = ROOT / "tests" / "fixtures" / "text"
MAGIC = b"NJCLIPBPE1"
N_MERGES = 49152 - 256 - 2  # the slice CLIP, open_clip and transformers all take
BOS, EOS = 49406, 49407


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in CLIP's vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def load_merges(bpe_gz: Path) -> list[tuple[str, str]]:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    assert len(merges) == N_MERGES and all(len(m) == 2 for m in merges)
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> list[str]:
    base = list(bytes_to_unicode().values())
    vocab = base + [c + "</w>" for c in base]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == len(vocab)
    return vocab


def write_merges_bin(merges: list[tuple[str, str]], vocab: list[str]) -> None:
    index = {tok: i for i, tok in enumerate(vocab)}
    out = bytearray(MAGIC)
    out += struct.pack("<I", len(merges))
    for rank, (a, b) in enumerate(merges):
        ia, ib = index[a], index[b]
        assert ia < 512 + rank and ib < 512 + rank, (rank, a, b)
        out += struct.pack("<HH", ia, ib)
    DATA_OUT.parent.mkdir(parents=True, exist_ok=True)
    DATA_OUT.write_bytes(bytes(out))


def write_hf_files(directory: Path, merges: list[tuple[str, str]], vocab: list[str]) -> None:
    """vocab.json / merges.txt plus ComfyUI's sd1_tokenizer config, for CLIPTokenizer."""
    (directory / "vocab.json").write_text(
        json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_txt, encoding="utf-8")

    def added(content: str) -> dict:
        return {"__type": "AddedToken", "content": content, "lstrip": False,
                "normalized": True, "rstrip": False, "single_word": False}

    config = {
        "add_prefix_space": False,
        "bos_token": added("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": added("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 8192,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>"),
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# ComfyUI's prompt weights and chunking, restated (see the module docstring for the sources).

ESC_CLOSE, ESC_OPEN = "\0\1", "\0\2"


def split_top_level(text: str) -> list[str]:
    """Cut text into literal runs and top-level '(...)' groups (ComfyUI parse_parentheses).

    Only the depth counter decides: a ')' at depth 0 makes the depth negative and from then on
    parentheses are literal text until the depth comes back to 0 through a '('.
    """
    parts: list[str] = []
    cur = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if cur:
                    parts.append(cur)
                cur = "("
            else:
                cur += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                parts.append(cur + ")")
                cur = ""
            else:
                cur += ch
        else:
            cur += ch
    if cur:
        parts.append(cur)
    return parts


def comfy_token_weights(text: str, weight: float) -> list[tuple[str, float]]:
    """ComfyUI token_weights: '(x)' multiplies by 1.1, '(x:w)' sets w (absolute, last ':')."""
    out: list[tuple[str, float]] = []
    for part in split_top_level(text):
        if len(part) >= 2 and part[0] == "(" and part[-1] == ")":
            inner = part[1:-1]
            inner_weight = weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += comfy_token_weights(inner, inner_weight)
        else:
            out.append((part, weight))
    return out


def comfy_parse(text: str) -> list[tuple[str, float]]:
    text = text.replace("\\)", ESC_CLOSE).replace("\\(", ESC_OPEN)
    return comfy_token_weights(text, 1.0)


def unescape(text: str) -> str:
    return text.replace(ESC_CLOSE, ")").replace(ESC_OPEN, "(")


EMBED = "embedding:"


def missing_embedding_leftover(name_and_rest: str) -> str:
    """What ComfyUI tokenizes after an 'embedding:' whose file does not exist."""
    pieces = name_and_rest.split()
    if not pieces:  # ComfyUI raises IndexError here; nijigen tokenizes nothing.
        return ""
    name, leftover = pieces[0], " ".join(pieces[1:])
    stripped = name.strip(",")
    if len(stripped) < len(name):
        return f"{name[len(stripped):]} {leftover}"
    return leftover


def comfy_tokenize_with_weights(tok, text: str, pad_token: int) -> list[list[tuple[int, float]]]:
    groups: list[list[tuple[int, float]]] = []
    for segment, weight in comfy_parse(text):
        segment = unescape(segment)
        pieces = re.split(" {0}|\n{0}".format(EMBED), segment)
        words = [pieces[0]] + [EMBED + p for p in pieces[1:]]
        for word in (w for w in words if w != ""):
            if word.startswith(EMBED):
                word = missing_embedding_leftover(word[len(EMBED):].strip("\n"))
                if word == "":
                    continue
            ids = tok(word)["input_ids"][1:-1]
            groups.append([(t, weight) for t in ids])

    max_len, max_word = 77, 8
    chunks: list[list[tuple[int, float]]] = []
    chunk = [(BOS, 1.0)]
    chunks.append(chunk)
    for group in groups:
        splittable = len(group) >= max_word
        while group:
            if len(group) + len(chunk) > max_len - 1:
                room = max_len - len(chunk) - 1
                if splittable:
                    chunk.extend(group[:room])
                    chunk.append((EOS, 1.0))
                    group = group[room:]
                else:
                    chunk.append((EOS, 1.0))
                    chunk.extend([(pad_token, 1.0)] * room)
                chunk = [(BOS, 1.0)]
                chunks.append(chunk)
            else:
                chunk.extend(group)
                group = []
    chunk.append((EOS, 1.0))
    chunk.extend([(pad_token, 1.0)] * (max_len - len(chunk)))
    return chunks


# ----------------------------------------------------------------------------------------------
# Prompts.

LONG_TAGS = (
    "masterpiece, best quality, amazing quality, very aesthetic, absurdres, newest, 1girl, solo, "
    "long hair, looking at viewer, smile, open mouth, blue eyes, blonde hair, shirt, long sleeves, "
    "hat, dress, holding, very long hair, standing, flower, outdoors, sky, day, cloud, white dress, "
    "blue sky, sun hat, straw hat, field, flower field, wind, hat ribbon, sundress, summer, "
    "cowboy shot, depth of field, lens flare, from below, hand on headwear, petals, sunflower, "
    "light particles, detailed background, scenery, landscape, horizon, mountain, tree, grass"
)

ENCODE_PROMPTS = [
    "",
    "   ",
    "\t\n  \r\n",
    "a photo of a cat",
    "A Photo Of A CAT",
    "1girl, solo, long hair, (masterpiece:1.2), best quality",
    "masterpiece,best quality,1girl,solo,looking_at_viewer,blush,smile,short_hair",
    "score_9, score_8_up, score_7_up, rating_safe, source_anime",
    "don't stop, it's what we've done, they'll say I'm sure you'd know, they're here",
    "DON'T SHOUT, IT'S FINE, WE'VE, THEY'RE, I'M, YOU'LL, HE'D",
    "rock'n'roll o'clock ''quoted'' 'single'",
    "12345 3.14159 1,000,000 2024-01-01 4k 8K uhd 1080p",
    "!!!??? ... ,,, ;;; --- ___ *** ### @@@ $$$ %%% ^^^ &&& ~~~ ``` |||",
    "(((((a))))) [[[b]]] {{{c}}} <<<d>>> ///e\\\\\\",
    "café naïve résumé Ærøskøbing straße ÉCOLE",
    "cafe\u0301 (decomposed accent, NFC makes it one character)",
    "日本語のテキスト、桜の木の下で。",
    "初音ミク, 東方Project, 博麗霊夢",
    "한국어 텍스트 안녕하세요",
    "Привет мир, ΕΛΛΗΝΙΚΆ ΣΟΦΊΑ, ΟΔΥΣΣΕΥΣ",
    "مرحبا بالعالم עברית",
    "emoji 😀😃😄 🎉 🐱‍👤 👩‍👩‍👧 ❤️ 👍🏽 🇯🇵",
    "zero\u200bwidth\u200djoiner\ufeffbom\u00adsoft hyphen",
    "control\x00chars\x07here\x1b[0m and\u0085next line\u2028line sep\u2029para",
    "nbsp\u00a0thin\u2009ideographic\u3000space",
    "the replacement char \ufffd vanishes",
    "<|startoftext|>explicit start and <|endoftext|> end",
    "a<|endoftext|>b !<|endoftext|>! <|ENDOFTEXT|>",
    "'ſ 'S 'ꞌ long s and kelvin \u212a",
    "\u0345 ypogegrammeni \u1fb3 alpha with it",
    "ⅰⅱⅲ Ⅻ ①②③ ½ ² ³ ٣٤٥",
    "fi ligature ﬁ and ﬀ, full-width ＡＢＣ１２３",
    "İstanbul DİYARBAKIR ß ẞ",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "https://example.com/path?q=1&x=y#frag user@example.com",
    "C:\\Users\\name\\file.txt and /usr/bin/env",
    "tab\tseparated\twords and\nnew\nlines",
    "x" * 300,
    "a " * 120,
    LONG_TAGS,
    LONG_TAGS + ", " + LONG_TAGS.upper(),
    "&amp; &lt;tag&gt; &#39; html entities stay",
    "lora:style_v1:0.8 <lora:foo:1> embedding:EasyNegative",
]

# Exactly 75 and 76 single-token words, and a weighted group crossing the boundary.
SDXL_PROMPTS = [
    "",
    "   ",
    "a photo of a cat",
    "1girl, solo, long hair, (masterpiece:1.2), best quality",
    "(((best quality))), ((masterpiece)), (detailed:0.8), [bad hands], \\(escaped\\)",
    "a (b (c (d:1.5) e) f) g",
    "unbalanced (paren and ) extra) closers ((x)",
    "(x:abc) (:1.5) (y:1e1) (z: 2 ) (w:-0.5)",
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    " ".join(["cat"] * 150),
    " ".join(["cat"] * 151),
    " ".join(["cat"] * 70) + " (one two three four five six seven:1.1)",
    " ".join(["cat"] * 70) + " (one two three four five six seven eight:1.1)",
    " ".join(["cat"] * 74) + " (dog, wolf:1.3) bird",
    "(" + " ".join(["cat"] * 80) + ":1.2)",
    LONG_TAGS,
    LONG_TAGS + ", (" + LONG_TAGS + ":0.9), " + LONG_TAGS,
    "photo embedding:EasyNegative, bad hands",
    "photo embedding:neg,, x embedding: y",
    "line one\nline two\nembedding:thing after",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bpe", type=Path, help="bpe_simple_vocab_16e6.txt.gz")
    args = parser.parse_args()

    if importlib.util.find_spec("ftfy") is not None:
        raise SystemExit("ftfy is importable: CLIPTokenizer would use it; run without ftfy")
    bpe = args.bpe
    if bpe is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("give --bpe (open_clip is not installed)")
        bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"

    import transformers
    from transformers import CLIPTokenizer

    merges = load_merges(bpe)
    vocab = build_vocab(merges)
    write_merges_bin(merges, vocab)

    with tempfile.TemporaryDirectory() as d:
        write_hf_files(Path(d), merges, vocab)
        tok = CLIPTokenizer.from_pretrained(d)
    assert type(tok).__name__ == "CLIPTokenizer" and getattr(tok, "fix_text", 1) is None, (
        "need transformers' slow CLIPTokenizer without ftfy"
    )
    assert tok("a photo of a cat")["input_ids"] == [BOS, 320, 1125, 539, 320, 2368, EOS]

    encode_cases = []
    for text in ENCODE_PROMPTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == BOS and ids[-1] == EOS
        ids = ids[1:-1]
        decoded = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        encode_cases.append({"text": text, "ids": ids, "decoded": decoded})

    sdxl_cases = []
    for text in SDXL_PROMPTS:
        case = {"text": text, "segments": [[unescape(s), w] for s, w in comfy_parse(text)]}
        for key, pad in (("l", EOS), ("g", 0)):
            chunks = comfy_tokenize_with_weights(tok, text, pad)
            case[key] = {
                "ids": [[t for t, _ in c] for c in chunks],
                "weights": [[w for _, w in c] for c in chunks],
            }
        sdxl_cases.append(case)

    FIX_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "reference": "transformers slow CLIPTokenizer without ftfy, ComfyUI sd1_tokenizer config",
        "transformers": transformers.__version__,
    }
    with open(FIX_DIR / "clip_encode.json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": encode_cases}, f, ensure_ascii=True, indent=1)
        f.write("\n")
    with open(FIX_DIR / "sdxl_tokens.json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": sdxl_cases}, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {DATA_OUT.relative_to(ROOT)} ({DATA_OUT.stat().st_size} bytes), "
          f"{len(encode_cases)} encode cases, {len(sdxl_cases)} SDXL cases")


if __name__ == "__main__":
    main()
