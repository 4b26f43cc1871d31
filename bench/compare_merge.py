#!/usr/bin/env python3
"""Compares merged BF16 model directories with an exact single-rounding reference.

    compare_merge.py BASE_DIR ADAPTER_DIR OUT_DIR [OUT_DIR ...]

For every base tensor, the reference is bf16(f64(W) + s * f64(B) @ f64(A)) rounded once,
to nearest even, with s = lora_alpha / r (plain LoRA adapters, as written by
make_llama_base.py). Each OUT_DIR is read (any sharding) and compared element by element:
how many elements differ from the reference and by how many bf16 ulps (at most), and
whether tensors that the adapter does not touch are unchanged; and the first OUT_DIR against
each other one (bit-identical elements). Merging in f32 (as opconvert and PEFT do) differs
from the f64 reference in a few elements: f32 rounding of W + s*B@A right at a bf16 tie,
and cancellation where W + delta is near 0 (there a few bf16 ulps are a tiny absolute
error). numpy + safetensors + ml_dtypes (the bench's Python).
"""
import json
import os
import sys

import ml_dtypes
import numpy as np
from safetensors import safe_open


def open_dir(d):
    """name -> (file path) for a model directory (index or single file)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        wm = json.load(open(idx))["weight_map"]
        return {k: os.path.join(d, v) for k, v in wm.items()}
    files = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    assert len(files) == 1, files
    with safe_open(os.path.join(d, files[0]), "numpy") as f:
        return {k: os.path.join(d, files[0]) for k in f.keys()}


class Reader:
    def __init__(self, d):
        self.map = open_dir(d)
        self.handles = {}

    def get(self, name):
        p = self.map[name]
        if p not in self.handles:
            self.handles[p] = safe_open(p, "numpy")
        return self.handles[p].get_tensor(name)


def bf16_bits(a):
    return a.astype(ml_dtypes.bfloat16).view(np.uint16) if a.dtype != ml_dtypes.bfloat16 else a.view(np.uint16)


def ordered(bits):
    """bf16 bit patterns -> integers monotonic in the value (for ulp distances)."""
    b = bits.astype(np.int32)
    return np.where(b & 0x8000, 0x8000 - b, b)


def main():
    base_dir, adapter_dir, outs = sys.argv[1], sys.argv[2], sys.argv[3:]
    cfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    scale = cfg["lora_alpha"] / cfg["r"]
    base = Reader(base_dir)
    ad = safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "numpy")
    akeys = set(ad.keys())
    readers = [Reader(o) for o in outs]
    stats = [{"diff": 0, "maxulp": 0, "total": 0, "untouched_changed": 0, "missing": 0, "worst": "",
              "vs_first": 0, "vs_first_max": 0} for _ in outs]
    for name in sorted(base.map):
        w = base.get(name)
        mod = name[: -len(".weight")] if name.endswith(".weight") else name
        ka, kb = f"base_model.model.{mod}.lora_A.weight", f"base_model.model.{mod}.lora_B.weight"
        if ka in akeys:
            a = ad.get_tensor(ka).astype(np.float64)
            b = ad.get_tensor(kb).astype(np.float64)
            x64 = w.astype(np.float64) + scale * (b @ a)
            ref = exact_bf16(x64)
            x64 = x64.reshape(-1)
            mag = np.maximum(np.abs(w.astype(np.float64).reshape(-1)), np.abs(x64))
            ulp = np.ldexp(1.0, np.frexp(np.where(mag > 0, mag, 1.0))[1] - 8)
        else:
            ref = w.view(np.uint16)
        first = None
        for s, r in zip(stats, readers):
            if name not in r.map:
                s["missing"] += 1
                continue
            got = bf16_bits(r.get(name))
            if ka in akeys:
                # Error of the differing elements in bf16 ulps of max(|W|, |exact result|):
                # small for round-off, large only for a real mistake.
                g = got.reshape(-1).view(ml_dtypes.bfloat16).astype(np.float64)
                err = np.abs(g - x64) / ulp
                s["maxerr"] = max(s.get("maxerr", 0.0), float(err.max()) if err.size else 0.0)
            if first is None:
                first = got
            elif first.shape == got.shape:
                dd = np.abs(ordered(got.reshape(-1)) - ordered(first.reshape(-1)))
                s["vs_first"] += int((dd != 0).sum())
                s["vs_first_max"] = max(s["vs_first_max"], int(dd.max()) if dd.size else 0)
            d = np.abs(ordered(got.reshape(-1)) - ordered(ref.reshape(-1)))
            n = int((d != 0).sum())
            s["total"] += d.size
            if ka not in akeys:
                s["untouched_changed"] += n
            s["diff"] += n
            m = int(d.max()) if d.size else 0
            if m > s["maxulp"]:
                s["maxulp"], s["worst"] = m, name
    for o, s in zip(outs, stats):
        frac = s["diff"] / max(s["total"], 1)
        print(f"{o}: {s['diff']} of {s['total']} elements differ from the single-rounding reference "
              f"({100 * frac:.4f}%), max {s['maxulp']} bf16 ulp apart{' in ' + s['worst'] if s['worst'] else ''}; "
              f"max error {s.get('maxerr', 0.0):.3f} ulp of max(|W|, |W'|); "
              f"untouched tensors changed: {s['untouched_changed']} elements; missing tensors: {s['missing']}")
    for o, s in zip(outs[1:], stats[1:]):
        print(f"{o} vs {outs[0]}: {s['vs_first']} elements differ (max {s['vs_first_max']} ulp)")


def exact_bf16(x64):
    """float64 -> bf16 bits, one rounding to nearest even (no NaN/inf in this data)."""
    f32 = x64.astype(np.float32)
    # f32 is already rounded; find the two bf16 neighbours of x64 and pick the nearest.
    u = f32.view(np.uint32)
    lo = (u & np.uint32(0xFFFF0000)).view(np.float32)  # truncation toward zero
    step = np.ldexp(np.ones_like(x64), (np.frexp(lo.astype(np.float64))[1] - 8).astype(np.int32))
    lo64 = lo.astype(np.float64)
    hi64 = lo64 + np.sign(x64) * step
    lo_bits = (u >> np.uint32(16)).astype(np.uint16)
    hi_bits = (lo_bits + np.uint16(1)).astype(np.uint16)
    dlo, dhi = np.abs(x64 - lo64), np.abs(hi64 - x64)
    pick_hi = (dhi < dlo) | ((dhi == dlo) & (lo_bits & 1).astype(bool))
    return np.where(pick_hi, hi_bits, lo_bits)


if __name__ == "__main__":
    main()
