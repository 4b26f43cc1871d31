#!/usr/bin/env python3
"""Write a large F32 .safetensors file for the read/convert benchmark (numpy only).

    python3 bench/make_safetensors.py [-o bench/data/f32_4GB.safetensors] [--size 4GB]
                                      [--seed 0] [--largest 200MiB] [--fast]
    python3 bench/make_safetensors.py --self-check   # byte-compare with safetensors.numpy

The file is byte-for-byte what the reference writer (safetensors save_file) would write for
the same tensors: 8-byte little-endian header length, compact JSON header with
`__metadata__` {"format": "pt"} first and the tensors ordered by dtype (descending) then
name, padded with spaces to a multiple of 8, then the tensor data in header order.

Tensor mix (deterministic for a given --seed): one tensor of --largest bytes (an embedding,
200 MiB by default), then 2-D tensors whose sizes are log-uniform between 4 KiB and
--largest, until --size is reached, plus a few 1-D norm-like vectors. Values are
N(0, 0.02) floats (norm vectors around 1.0). Data is generated and written in chunks of at
most 32 MiB, so memory stays small whatever --size is. With --fast, a 64 MiB pool of random
values is generated once and reused (about 3x quicker to write; the data is still
incompressible enough for a disk benchmark).
"""
import argparse
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np

CHUNK_ELEMS = 8 << 20  # 32 MiB of f32 per write

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text):
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 4GB, 500MB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# safetensors' Dtype enum order (the reference sorts by it, descending, then by name).
DTYPE_RANK = {"BOOL": 0, "F4": 1, "F6_E2M3": 2, "F6_E3M2": 3, "U8": 4, "I8": 5, "F8_E5M2": 6,
              "F8_E4M3": 7, "F8_E8M0": 8, "I16": 9, "U16": 10, "F16": 11, "BF16": 12,
              "I32": 13, "U32": 14, "F32": 15, "F64": 16, "I64": 17, "U64": 18}


def header_bytes(tensors, metadata):
    """tensors: list of (name, dtype, shape, nbytes). Returns (header bytes, ordered list)."""
    order = sorted(tensors, key=lambda t: (-DTYPE_RANK[t[1]], t[0].encode()))
    obj = {}
    if metadata is not None:
        obj["__metadata__"] = dict(sorted(metadata.items()))
    pos = 0
    for name, dtype, shape, nbytes in order:
        obj[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text, order


def plan_tensors(total, largest, seed):
    """A deterministic mix of (name, 'F32', shape, nbytes) summing to about `total` bytes."""
    rng = np.random.default_rng(seed)
    tensors = []
    used = 0
    # The embedding: the largest tensor.
    cols = 1024
    rows = max(1, largest // (4 * cols))
    if rows * cols * 4 > total:
        rows = max(1, total // (4 * cols))
    tensors.append(("model.embed_tokens.weight", "F32", (rows, cols), rows * cols * 4))
    used += rows * cols * 4
    # A few 1-D vectors (norms, biases).
    for i, n in enumerate([1024, 2048, 4096, 4096, 8192, 16384]):
        if used + 4 * n > total:
            break
        tensors.append((f"model.norms.{i}.weight", "F32", (n,), 4 * n))
        used += 4 * n
    lo, hi = math.log(4096), math.log(max(largest, 8192))
    i = 0
    while True:
        want = int(math.exp(rng.uniform(lo, hi)))
        elems = max(1024, want // 4)
        cols = int(rng.choice([32, 64, 128, 256, 512, 1024, 2048, 4096, 5504, 8192]))
        cols = min(cols, elems)
        rows = max(1, elems // cols)
        nbytes = rows * cols * 4
        if used + nbytes > total:
            # Fill what is left with one last matrix (if it is worth a tensor).
            left = (total - used) // 4
            cols = 1024 if left >= 1024 else 0
            if cols and left // cols >= 1:
                rows = left // cols
                tensors.append((f"model.layers.{i}.fill.weight", "F32", (rows, cols), rows * cols * 4))
            break
        kind = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "adapter"][i % 8]
        tensors.append((f"model.layers.{i // 8}.{kind}.weight", "F32", (rows, cols), nbytes))
        used += nbytes
        i += 1
    return tensors


class Filler:
    """Produces f32 values for one tensor in chunks."""

    def __init__(self, seed, fast):
        self.rng = np.random.default_rng(seed + 1)
        self.pool = None
        self.pool_pos = 0
        if fast:
            self.pool = (self.rng.standard_normal(16 << 20, dtype=np.float32) * np.float32(0.02))

    def chunk(self, n, one_d):
        if self.pool is not None:
            out = np.empty(n, dtype=np.float32)
            done = 0
            while done < n:
                take = min(n - done, len(self.pool) - self.pool_pos)
                out[done:done + take] = self.pool[self.pool_pos:self.pool_pos + take]
                self.pool_pos = (self.pool_pos + take + 4099) % len(self.pool)  # drift: no repeats at a fixed stride
                done += take
        else:
            out = self.rng.standard_normal(n, dtype=np.float32)
            out *= np.float32(0.02)
        if one_d:
            out += np.float32(1.0)
        return out


def write_file(path, tensors, seed, fast, quiet=False):
    header, order = header_bytes(tensors, {"format": "pt"})
    total = len(header) + sum(t[3] for t in order)
    tmp = path + ".tmp"
    filler = Filler(seed, fast)
    t0 = time.time()
    done = 0
    with open(tmp, "wb") as f:
        f.write(header)
        for name, dtype, shape, nbytes in order:
            elems = nbytes // 4
            pos = 0
            while pos < elems:
                n = min(CHUNK_ELEMS, elems - pos)
                f.write(filler.chunk(n, len(shape) == 1).astype("<f4", copy=False).tobytes())
                pos += n
                done += n * 4
            if not quiet:
                sys.stderr.write(f"\r  {done / 1e9:6.2f} / {total / 1e9:.2f} GB")
    os.replace(tmp, path)
    if not quiet:
        sys.stderr.write(f"\r  wrote {path}: {len(order)} tensors, {total} bytes in {time.time() - t0:.1f} s\n")
    return order


def self_check():
    """Writes a small file both ways and compares bytes with safetensors.numpy.save_file."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        print("self-check needs the safetensors package (try /opt/fixenv/bin/python)", file=sys.stderr)
        return 2
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        ours = os.path.join(d, "ours.safetensors")
        plan = plan_tensors(40 << 20, 8 << 20, seed=3)
        write_file(ours, plan, seed=3, fast=False, quiet=True)
        # Re-create the same arrays in the same (header) order for the reference writer.
        _, order = header_bytes(plan, {"format": "pt"})
        filler = Filler(3, False)
        arrays = {}
        for name, dtype, shape, nbytes in order:
            elems, parts, pos = nbytes // 4, [], 0
            while pos < elems:
                n = min(CHUNK_ELEMS, elems - pos)
                parts.append(filler.chunk(n, len(shape) == 1))
                pos += n
            arrays[name] = np.concatenate(parts).reshape(shape)
        ref = os.path.join(d, "ref.safetensors")
        save_file(arrays, ref, metadata={"format": "pt"})
        a, b = open(ours, "rb").read(), open(ref, "rb").read()
        if a == b:
            print(f"self-check OK: {len(plan)} tensors, {len(a)} bytes identical to safetensors.numpy.save_file")
            return 0
        n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        print(f"self-check FAILED: files differ at byte {n} (sizes {len(a)} vs {len(b)})", file=sys.stderr)
        print("ours:", a[max(0, n - 60):n + 60], "\nref: ", b[max(0, n - 60):n + 60], file=sys.stderr)
        return 1


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", help="output path (default bench/data/f32_<size>.safetensors)")
    p.add_argument("--size", type=parse_size, default=parse_size("4GB"), help="total tensor bytes (default 4GB = 4e9)")
    p.add_argument("--largest", type=parse_size, default=parse_size("200MiB"), help="largest tensor (default 200MiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="reuse a 64 MiB pool of random values")
    p.add_argument("--self-check", action="store_true", help="compare a small file with safetensors.numpy.save_file and exit")
    p.add_argument("--list", action="store_true", help="print the planned tensors and exit")
    args = p.parse_args()
    if args.self_check:
        return self_check()
    plan = plan_tensors(args.size, args.largest, args.seed)
    if args.list:
        for name, dtype, shape, nbytes in header_bytes(plan, {"format": "pt"})[1]:
            print(f"{name}\t{dtype}\t{list(shape)}\t{nbytes}")
        print(f"# {len(plan)} tensors, {sum(t[3] for t in plan)} bytes, largest {max(t[3] for t in plan)}")
        return 0
    out = args.output or os.path.join("bench", "data", f"f32_{args.size // 10**9}GB.safetensors"
                                      if args.size % 10**9 == 0 else f"f32_{args.size}B.safetensors")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_file(out, plan, args.seed, args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
