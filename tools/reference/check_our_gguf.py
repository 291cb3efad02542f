"""Check that gguf-py reads the GGUF file our writer produced as what we meant to write.

``tests/gguf_fixture.rs`` writes ``tests/fixtures/gguf/ours.gguf`` with nijigen's ``GgufWriter``
and records what went in (typed metadata in order; each tensor's name, ggml type id, shape in
PyTorch order, byte size and FNV-1a 64 of its bytes) in ``ours.expected.json``. This script opens
``ours.gguf`` with gguf-py's ``GGUFReader`` (an independent implementation) and asserts that every
key, value and value type, every tensor name, type, shape and data matches the JSON, plus the
version, alignment and the data-section layout.

Run from the repository root (after ``NIJIGEN_BLESS=1 cargo test --test gguf_fixture`` whenever
the fixture is regenerated):

    /work/pyref/bin/python tools/reference/check_our_gguf.py [path/to/ours.gguf]

Prints ``OK ...`` and exits 0, or stops at the first mismatch with an AssertionError. Needs
``pip install gguf numpy`` (tested with gguf 0.19.0).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf import GGUFValueType as VT

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf"

INT_TYPES = {
    VT.UINT8: "u8",
    VT.INT8: "i8",
    VT.UINT16: "u16",
    VT.INT16: "i16",
    VT.UINT32: "u32",
    VT.INT32: "i32",
    VT.UINT64: "u64",
    VT.INT64: "i64",
}


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def decode(parts: list[np.ndarray], i: int, vtype: VT) -> tuple[dict, int]:
    """Typed JSON of the value starting at parts[i], and the index after it.

    GGUFReader keeps every field as its raw numpy parts: a scalar is one part, a string two
    (length, bytes), an array its element type, its count, then its elements' parts. Walking
    the parts (rather than ReaderField.contents(), which flattens nested arrays) keeps nesting.
    """
    if vtype in INT_TYPES:
        return {"type": INT_TYPES[vtype], "value": int(parts[i][0])}, i + 1
    if vtype == VT.BOOL:
        return {"type": "bool", "value": bool(parts[i][0])}, i + 1
    if vtype == VT.FLOAT32:
        return {"type": "f32", "bits": int(parts[i].view(np.uint32)[0])}, i + 1
    if vtype == VT.FLOAT64:
        return {"type": "f64", "bits": int(parts[i].view(np.uint64)[0])}, i + 1
    if vtype == VT.STRING:
        return {"type": "string", "value": bytes(parts[i + 1]).decode("utf-8")}, i + 2
    if vtype == VT.ARRAY:
        etype = VT(int(parts[i][0]))
        n = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(n):
            item, i = decode(parts, i, etype)
            items.append(item)
        return {"type": "array", "items": items}, i
    raise AssertionError(f"unexpected value type {vtype}")


def main() -> None:
    gguf_path = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES / "ours.gguf"
    expected = json.loads((gguf_path.with_suffix(".expected.json")).read_text(encoding="utf-8"))
    r = GGUFReader(str(gguf_path))

    version = int(r.fields["GGUF.version"].parts[0][0])
    assert version == expected["version"], version
    assert int(r.alignment) == expected["alignment"], r.alignment
    assert r.data_offset % r.alignment == 0, r.data_offset

    # Metadata: the reader's own header fields come first, then the file's keys in order.
    fields = [f for name, f in r.fields.items() if not name.startswith("GGUF.")]
    assert [f.name for f in fields] == [m["key"] for m in expected["metadata"]], [f.name for f in fields]
    for f, want in zip(fields, expected["metadata"]):
        got, end = decode(f.parts, 3, VT(int(f.parts[2][0])))
        assert end == len(f.parts), f"{f.name}: {len(f.parts) - end} parts left over"
        got = {"key": f.name, **got}
        assert got == want, f"{f.name}: gguf-py reads {got}, expected {want}"
        # Cross-check the public accessor where it does not flatten nesting.
        if want["type"] != "array" or not any(i["type"] == "array" for i in want["items"]):
            contents = f.contents()
            if want["type"] == "array":
                assert len(contents) == len(want["items"]), f.name
            elif want["type"] in ("string", "bool") or want["type"] in INT_TYPES.values():
                assert contents == want["value"], (f.name, contents)

    # Tensors.
    assert [t.name for t in r.tensors] == [t["name"] for t in expected["tensors"]]
    prev_end = 0
    for t, want in zip(r.tensors, expected["tensors"]):
        shape = [int(x) for x in reversed(t.shape.tolist())]  # GGUF ne → PyTorch order
        assert int(t.tensor_type) == want["type_id"], (t.name, t.tensor_type)
        assert shape == want["shape"], (t.name, shape)
        assert int(t.n_bytes) == want["nbytes"], (t.name, t.n_bytes)
        data = np.ascontiguousarray(t.data).tobytes()
        assert len(data) == want["nbytes"], (t.name, len(data))
        assert fnv1a64(data) == want["fnv1a64"], f"{t.name}: data differ"
        rel = t.data_offset - r.data_offset
        assert rel % r.alignment == 0 and rel >= prev_end, (t.name, rel)
        prev_end = rel + int(t.n_bytes)
    assert len(r.data) >= r.data_offset + prev_end

    print(
        f"OK {gguf_path}: gguf-py reads {len(fields)} keys and {len(r.tensors)} tensors "
        f"as {gguf_path.with_suffix('.expected.json').name} says"
    )


if __name__ == "__main__":
    main()
