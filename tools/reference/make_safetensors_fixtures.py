#!/usr/bin/env python3
"""Writes the safetensors test fixtures under tests/fixtures/safetensors/ with PyTorch and the
Python `safetensors` package (the reference implementation).

    /work/pyref/bin/python tools/reference/make_safetensors_fixtures.py

Outputs (all tiny, committed):
  all_dtypes.safetensors          one small tensor per supported dtype (f8 included), a 5-D
                                  tensor, a scalar (shape []), an empty tensor, and __metadata__
  sharded/model-0000{1,2}-of-00002.safetensors, sharded/model.safetensors.index.json
                                  HF sharded layout
  expected.json                   names, dtypes, shapes, shard and values (as f32) of the above
  float_tables.json               f32 bits of all 256 float8_e4m3fn / float8_e5m2 bytes, and
                                  [f32 bits, bf16/f16 bits] rounding cases, as torch converts them

Deterministic: rerunning gives identical files.
"""

import json
import os

import torch
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.normpath(os.path.join(ROOT, "tests", "fixtures", "safetensors"))

ST_DTYPE = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def f32_bits(t):
    """uint32 bit patterns of a float32 tensor, as Python ints."""
    return [v & 0xFFFFFFFF for v in t.to(torch.float32).contiguous().view(torch.int32).tolist()]


def u16_bits(t):
    return [v & 0xFFFF for v in t.contiguous().view(torch.int16).tolist()]


def describe(name, t, shard=0):
    return {
        "name": name,
        "dtype": ST_DTYPE[t.dtype],
        "shape": list(t.shape),
        "shard": shard,
        # f32 bit patterns (exact; survive JSON without NaN/inf trouble)
        "f32_bits": f32_bits(t.to(torch.float32).flatten()),
    }


def save_deterministic(tensors, path, meta):
    """save_file, retried until the __metadata__ keys come out in reverse-sorted order.

    safetensors serialises __metadata__ through a Rust HashMap, so its key order changes from
    run to run; pinning one order keeps the committed file reproducible (and unsorted, so the
    reader's sorting is exercised)."""
    want = sorted(meta, reverse=True)
    for _ in range(1000):
        save_file(tensors, path, metadata=meta)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        if list(header["__metadata__"]) == want:
            return
    raise RuntimeError("could not get a reproducible __metadata__ order")


def all_dtypes():
    t = {}
    t["t.f32"] = torch.tensor([[1.0, -2.5, 3.25], [0.1, -0.0, 1e-30]], dtype=torch.float32)
    t["t.f16"] = torch.tensor([1.0, -0.333, 65504.0, 6e-8], dtype=torch.float16)
    t["t.bf16"] = torch.tensor([[1.0, -3.140625], [1e30, -1e-30]], dtype=torch.bfloat16)
    t["t.f64"] = torch.tensor([0.1, -123456.789, 1e-40], dtype=torch.float64)
    t["t.i8"] = torch.tensor([-128, -1, 0, 127], dtype=torch.int8)
    t["t.i16"] = torch.tensor([-32768, 1234, 32767], dtype=torch.int16)
    t["t.i32"] = torch.tensor([-2147483648, 16777217], dtype=torch.int32)
    t["t.i64"] = torch.tensor([9007199254740993, -3], dtype=torch.int64)
    t["t.f8_e4m3"] = torch.tensor(
        [0.0, 1.0, -1.5, 448.0, -448.0, 2.0**-9, 0.013671875, 240.0]
    ).to(torch.float8_e4m3fn)
    t["t.f8_e5m2"] = torch.tensor(
        [0.0, 1.0, -1.5, 57344.0, -57344.0, 2.0**-16, 0.0234375, 3.0]
    ).to(torch.float8_e5m2)
    t["t.5d"] = (torch.arange(12, dtype=torch.float32) * 0.5 - 3).reshape(2, 1, 3, 1, 2).to(
        torch.float16
    )
    t["t.scalar"] = torch.tensor(42.5, dtype=torch.float32)
    t["t.empty"] = torch.zeros((0, 3), dtype=torch.float32)
    meta = {"format": "pt", "producer": "nijigen fixtures", "a_first": "1"}
    save_deterministic(t, os.path.join(OUT, "all_dtypes.safetensors"), meta)
    return {
        "file": "all_dtypes.safetensors",
        "metadata": dict(sorted(meta.items())),
        "tensors": [describe(k, v) for k, v in t.items()],
    }


def sharded():
    d = os.path.join(OUT, "sharded")
    os.makedirs(d, exist_ok=True)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shards = [
        {
            "a.weight": (torch.arange(6, dtype=torch.float32).reshape(3, 2) - 2.5).to(torch.float16),
            "a.bias": torch.tensor([0.5, -0.25, 8.0], dtype=torch.float32),
        },
        {
            "b.weight": (torch.arange(6, dtype=torch.float32).reshape(2, 3) * 1.5).to(
                torch.bfloat16
            ),
            "b.bias": torch.tensor([1.0, 2.0], dtype=torch.float32),
        },
    ]
    weight_map = {}
    total = 0
    tensors = []
    for i, (fname, ts) in enumerate(zip(names, shards)):
        save_file(ts, os.path.join(d, fname), metadata={"format": "pt"})
        for k, v in ts.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
            tensors.append(describe(k, v, shard=i))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return {
        "index": "sharded/model.safetensors.index.json",
        "shards": ["sharded/" + n for n in names],
        # index metadata merged with the shards' __metadata__
        "metadata": {"format": "pt", "total_size": total},
        "tensors": tensors,
    }


def float_tables():
    b = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    e4m3 = f32_bits(b.view(torch.float8_e4m3fn).to(torch.float32))
    e5m2 = f32_bits(b.view(torch.float8_e5m2).to(torch.float32))

    special = [
        0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001,
        0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x807FFFFF, 0x00800000,
        # bf16 ties and neighbours: low 16 bits 0x8000 with even / odd kept bit
        0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0xBF808000, 0xBF818000,
        0x7F7F8000, 0x7F7F7FFF, 0x00008000, 0x00018000, 0x3FFF8000,
        # f16 ties: 1 + 2^-11 (tie, even -> 1), 1 + 3*2^-11 (tie, odd -> up)
        0x3F801000, 0x3F803000, 0x3F801001, 0x3F800FFF,
        # f16 overflow / max / subnormal / underflow boundaries
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x47800000, 0x33800000, 0x33000000, 0x33000001,
        0x387FC000, 0x38800000, 0x38000000, 0x337FFFFF,
    ]
    g = torch.Generator().manual_seed(1234)
    rnd = torch.randint(0, 2**32, (200,), generator=g, dtype=torch.int64).tolist()
    normals = (torch.randn(200, generator=g) * 1000).to(torch.float32)
    cases = special + [r & 0xFFFFFFFF for r in rnd] + f32_bits(normals)
    x = torch.tensor([v - (1 << 32) if v >= 1 << 31 else v for v in cases], dtype=torch.int32)
    x = x.view(torch.float32)
    bf = u16_bits(x.to(torch.bfloat16).view(torch.int16))
    hf = u16_bits(x.to(torch.float16).view(torch.int16))
    return {
        "torch": torch.__version__,
        "f8_e4m3fn": e4m3,
        "f8_e5m2": e5m2,
        "bf16_rounding": [[c, h] for c, h in zip(cases, bf)],
        "f16_rounding": [[c, h] for c, h in zip(cases, hf)],
    }


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {"all_dtypes": all_dtypes(), "sharded": sharded()}
    dump(expected, os.path.join(OUT, "expected.json"))
    dump(float_tables(), os.path.join(OUT, "float_tables.json"))
    print("wrote fixtures to", OUT)


if __name__ == "__main__":
    main()
