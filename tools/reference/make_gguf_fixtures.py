"""Write the gguf-py interop fixture for nijigen's GGUF reader.

Produces, next to each other in tests/fixtures/gguf/:

* ``gguf_py.gguf``: a small GGUF v3 file written by gguf-py's ``GGUFWriter`` with every scalar
  metadata type, strings, typed arrays, nested arrays, a custom ``general.alignment`` of 64, and
  tensors: f32 2-D, f16 1-D, i32 1-D, a 5-D f32 shaped like city96's Wan ``patch_embedding``
  (tiny), q8_0 (quantized with ``gguf.quants.quantize``), q4_K (gguf-py cannot quantize q4_K, so
  raw seeded bytes stored with ``raw_dtype``), and a tensor whose name is longer than 64 bytes.
* ``gguf_py.expected.json``: what went in: typed metadata in file order, and for each tensor its
  name, ggml type id, shape (PyTorch order), byte size and FNV-1a 64 of its data bytes.

``tests/gguf_fixture.rs`` parses the .gguf with our reader and compares it with the JSON.

Typed JSON values: ``{"type": "u8"|"i8"|"u16"|"i16"|"u32"|"i32"|"u64"|"i64", "value": int}``,
``{"type": "bool", "value": bool}``, ``{"type": "f32"|"f64", "bits": int}`` (the IEEE bits, so
nothing is lost to decimal printing), ``{"type": "string", "value": str}``,
``{"type": "array", "items": [typed values]}``.

Run from the repository root (deterministic; rerunning gives identical files):

    /work/pyref/bin/python tools/reference/make_gguf_fixtures.py

Needs ``pip install gguf numpy`` (tested with gguf 0.19.0, numpy 2.x).
"""

from __future__ import annotations

import importlib.metadata
import json
import struct
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT

OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "gguf"
ALIGNMENT = 64

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


def typed(value, vtype: VT, sub_type: VT | None = None) -> dict:
    """The typed JSON of `value` as gguf-py will store it with type `vtype`."""
    if vtype in INT_TYPES:
        return {"type": INT_TYPES[vtype], "value": int(value)}
    if vtype == VT.BOOL:
        return {"type": "bool", "value": bool(value)}
    if vtype == VT.FLOAT32:
        return {"type": "f32", "bits": struct.unpack("<I", struct.pack("<f", value))[0]}
    if vtype == VT.FLOAT64:
        return {"type": "f64", "bits": struct.unpack("<Q", struct.pack("<d", value))[0]}
    if vtype == VT.STRING:
        return {"type": "string", "value": value}
    if vtype == VT.ARRAY:
        # Same element-type rule as GGUFWriter._pack_val: explicit sub_type, else inferred.
        et = sub_type if sub_type is not None else VT.get_type(value[0])
        return {"type": "array", "items": [typed(v, et) for v in value]}
    raise ValueError(vtype)


# (key, value, type, array element type or None), in the order they are added.
METADATA = [
    ("test.u8", 200, VT.UINT8, None),
    ("test.i8", -100, VT.INT8, None),
    ("test.u16", 65535, VT.UINT16, None),
    ("test.i16", -32768, VT.INT16, None),
    ("test.u32", 4_000_000_000, VT.UINT32, None),
    ("test.i32", -2_000_000_000, VT.INT32, None),
    ("test.u64", 2**64 - 1, VT.UINT64, None),
    ("test.i64", -(2**63), VT.INT64, None),
    ("test.f32", 0.1, VT.FLOAT32, None),
    ("test.f64", -1.0e300, VT.FLOAT64, None),
    ("test.bool.true", True, VT.BOOL, None),
    ("test.bool.false", False, VT.BOOL, None),
    ("test.string", "héllo, GGUF ✓ 日本語", VT.STRING, None),
    ("test.array.i32", [1, -2, 3, 2_000_000_000], VT.ARRAY, None),
    ("test.array.u8", [0, 1, 254, 255], VT.ARRAY, VT.UINT8),
    ("test.array.u64", [0, 2**40, 2**64 - 1], VT.ARRAY, VT.UINT64),
    ("test.array.f32", [0.5, -1.25, 3.0e10], VT.ARRAY, None),
    ("test.array.f64", [0.1, -0.2], VT.ARRAY, VT.FLOAT64),
    ("test.array.bool", [True, False, True], VT.ARRAY, None),
    ("test.array.string", ["a", "", "ccc", "ünïcode"], VT.ARRAY, None),
    # gguf-py writes arrays of arrays (each inner array with its own element type and count);
    # ggml's C reader rejects them, ours reads them.
    ("test.array.nested", [[1, 2], [3, 4, 5], [6]], VT.ARRAY, None),
    ("test.array.nested.string", [["x", "y"], ["z"]], VT.ARRAY, None),
    ("test.array.nested3", [[[1.5], [2.5, 3.5]], [[4.5]]], VT.ARRAY, None),
]

LONG_NAME = "model.diffusion_model.blocks.0.cross_attn.norm_k_img.weight.with_a_suffix_past_64_chars"


def make_tensors(rng: np.random.Generator) -> list[tuple[str, np.ndarray, QT | None, QT, tuple]]:
    """(name, array to store, raw_dtype or None, ggml type, logical shape in PyTorch order)."""
    out = []
    a = (np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5 - 1.0).astype(np.float32)
    out.append(("f32.2d", a, None, QT.F32, a.shape))
    b = np.linspace(-1.0, 1.0, 8).astype(np.float16)
    out.append(("f16.1d", b, None, QT.F16, b.shape))
    c = np.array([-7, 0, 7, 2**31 - 1, -(2**31)], dtype=np.int32)
    out.append(("i32.1d", c, None, QT.I32, c.shape))
    # city96 stores Wan's patch_embedding (out, in, t, h, w) as 5-D; this one is tiny.
    d = rng.standard_normal((4, 3, 1, 2, 2)).astype(np.float32)
    out.append(("patch_embedding.weight", d, None, QT.F32, d.shape))
    e = rng.standard_normal((2, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(e, QT.Q8_0)
    assert q8.dtype == np.uint8 and q8.shape == (2, 68), q8.shape
    out.append(("q8_0.2d", q8, QT.Q8_0, QT.Q8_0, (2, 64)))
    # gguf-py has no q4_K quantizer (only dequantize): store seeded raw blocks instead.
    q4 = rng.integers(0, 256, size=(2, 144), dtype=np.uint8)
    out.append(("q4_k.2d", q4, QT.Q4_K, QT.Q4_K, (2, 256)))
    f = np.arange(5, dtype=np.float32)
    out.append((LONG_NAME, f, None, QT.F32, f.shape))
    return out


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    gguf_path = OUT_DIR / "gguf_py.gguf"
    json_path = OUT_DIR / "gguf_py.expected.json"
    rng = np.random.default_rng(20240611)

    w = gguf.GGUFWriter(str(gguf_path), arch="nijigen-test")  # adds general.architecture
    expected_meta = [{"key": "general.architecture", **typed("nijigen-test", VT.STRING)}]
    w.add_custom_alignment(ALIGNMENT)  # adds general.alignment (u32)
    expected_meta.append({"key": "general.alignment", **typed(ALIGNMENT, VT.UINT32)})
    for key, value, vtype, sub in METADATA:
        w.add_key_value(key, value, vtype, sub_type=sub)
        expected_meta.append({"key": key, **typed(value, vtype, sub)})

    expected_tensors = []
    for name, arr, raw, qtype, shape in make_tensors(rng):
        if raw is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw)
        data = np.ascontiguousarray(arr).tobytes()
        expected_tensors.append(
            {
                "name": name,
                "type_id": int(qtype),
                "shape": [int(x) for x in shape],
                "nbytes": len(data),
                "fnv1a64": fnv1a64(data),
            }
        )

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = {
        "generator": f"gguf-py {importlib.metadata.version('gguf')}",
        "version": 3,
        "alignment": ALIGNMENT,
        "metadata": expected_meta,
        "tensors": expected_tensors,
    }
    json_path.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    # Sanity check with gguf-py's own reader.
    r = gguf.GGUFReader(str(gguf_path))
    assert [t.name for t in r.tensors] == [t["name"] for t in expected_tensors]
    assert list(r.fields)[3:] == [m["key"] for m in expected_meta], list(r.fields)
    size = gguf_path.stat().st_size
    assert size < 100_000, size
    print(f"wrote {gguf_path} ({size} bytes) and {json_path}")


if __name__ == "__main__":
    main()
