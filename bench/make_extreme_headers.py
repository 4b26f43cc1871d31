#!/usr/bin/env python3
"""Writes three valid safetensors files whose headers are as large as the format allows
(N <= 100_000_000 bytes), for bench/bench_extreme_headers.sh:

  meta-100mb.safetensors     one __metadata__ value of ~100 MB (with some escapes) + 1 tensor
  shape-50m.safetensors      one tensor whose shape has ~50M dimensions (all 1)
  entries-1.7m.safetensors   1.7M zero-sized tensors (all at offset 0: the longest sort)

Plain Python (no numpy): the headers are written as text, laid out as the reference writer
lays them out (8-byte little-endian N, JSON padded with spaces to a multiple of 8, data).
`--check` opens each file with safetensors.safe_open to prove the reference accepts it.
"""
import argparse
import json
import os
import struct

LIMIT = 100_000_000


def write(path, header_text, data):
    raw = header_text.encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    assert len(raw) <= LIMIT, (path, len(raw))
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(data)
    os.replace(path + ".tmp", path)
    print(f"{path}: header {len(raw)} bytes, data {len(data)} bytes")


def meta_100mb(path):
    tensor = '"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    # Escapes on both ends so a decoder cannot just slice the text.
    head, tail = r"start \"quoted\" \u00e9 \ud83d\ude00 ", r" \n end"
    fixed = len('{"__metadata__":{"blob":""},') + len(tensor) + 1 + len(head) + len(tail)
    body = "a" * (LIMIT - 8 - fixed)
    write(path, '{"__metadata__":{"blob":"' + head + body + tail + '"},' + tensor + "}", b"\0" * 4)


def shape_50m(path):
    prefix, suffix = '{"t":{"dtype":"F32","shape":[', '],"data_offsets":[0,4]}}'
    dims = (LIMIT - 8 - len(prefix) - len(suffix) + 1) // 2
    write(path, prefix + ",".join(["1"] * dims) + suffix, b"\0" * 4)
    return dims


def entries(path, count):
    # 58 bytes an entry: 1.7M of them is as many as fit under the limit.
    parts = [f'"{i:07d}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(count)]
    write(path, "{" + ",".join(parts) + "}", b"")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(__file__), "data", "extreme"))
    ap.add_argument("--entries", type=int, default=1_700_000)
    ap.add_argument("--check", action="store_true", help="open each file with safetensors.safe_open")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    files = {
        "meta-100mb.safetensors": meta_100mb,
        "shape-50m.safetensors": shape_50m,
        "entries-1.7m.safetensors": lambda p: entries(p, a.entries),
    }
    for name, make in files.items():
        p = os.path.join(a.out, name)
        if not os.path.exists(p):
            make(p)
    if a.check:
        from safetensors import safe_open
        for name in files:
            with safe_open(os.path.join(a.out, name), "np") as f:
                print(name, "accepted by safetensors:", len(f.keys()), "tensors,",
                      len((f.metadata() or {}).get("blob", "")), "metadata chars")


if __name__ == "__main__":
    main()
