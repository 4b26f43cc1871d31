#!/usr/bin/env python3
"""torch.matmul GFLOP/s on the GPU for the GEMM shapes that `opconvert plugin bench --json`
reports, and the ratio opconvert / torch per shape (goal: >= 0.90 on the large shapes: the
CUDA plugin's GEMM is cuBLAS, so only call overhead should separate them).

FP32 inputs, FP32 compute: torch.backends.cuda.matmul.allow_tf32 = False (and
set_float32_matmul_precision("highest")) unless --tf32. Timing: CUDA events around
--iters back-to-back products after --warmup, the best of --repeats.

Shapes: every object in the opconvert JSON (searched recursively) that has integer m, n, k
(or a "shape" [m, n, k]) and a GFLOP/s number (a key containing "gflop"); trans_a/trans_b
(or transa/transb) are honoured when present. Without --opconvert-json, or when it holds no
such object, a default list (square and LoRA-like shapes) is timed and no ratio is given.

Prints a table on stderr and one JSON object on stdout:
  {"shapes": [{m, n, k, trans_a, trans_b, torch_gflops, opconvert_gflops, ratio, large}],
   "large_min_ratio": x or null, "goal": 0.9, ...}
"""
import argparse
import json
import sys

DEFAULT_SHAPES = [  # (m, n, k): square, then LoRA-like (tokens x rank x hidden and back)
    (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (8192, 8192, 8192),
    (4096, 16, 4096), (4096, 4096, 16), (16, 4096, 4096),
]
LARGE_MIN_DIM = 2048  # "large": every dimension at least this


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _flag(d, *names):
    for n in names:
        if n in d:
            v = d[n]
            if isinstance(v, str):
                return v.lower() in ("t", "true", "1", "yes")
            return bool(v)
    return False


def _gflops(d):
    for key, v in d.items():
        if "gflop" in key.lower() and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def shapes_from_opconvert(doc):
    """[(m, n, k, ta, tb, gflops)] for every GEMM entry found anywhere in doc."""
    found = []

    def walk(x):
        if isinstance(x, dict):
            m, n, k = _int(x.get("m")), _int(x.get("n")), _int(x.get("k"))
            shape = x.get("shape")
            if (m is None or n is None or k is None) and isinstance(shape, list) and len(shape) == 3:
                m, n, k = (_int(s) for s in shape)
            g = _gflops(x)
            if None not in (m, n, k) and g is not None:
                found.append((m, n, k, _flag(x, "trans_a", "transa", "ta"), _flag(x, "trans_b", "transb", "tb"), g))
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return found


def time_gemm(torch, m, n, k, ta, tb, warmup, iters, repeats, device):
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.rand((k, m) if ta else (m, k), device=device, generator=gen)
    b = torch.rand((n, k) if tb else (k, n), device=device, generator=gen)
    a_op, b_op = (a.t() if ta else a), (b.t() if tb else b)
    c = torch.empty((m, n), device=device)
    for _ in range(warmup):
        torch.matmul(a_op, b_op, out=c)
    best = float("inf")
    if device.type != "cuda":  # a CPU run only tries the script out
        import time
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.matmul(a_op, b_op, out=c)
            best = min(best, (time.perf_counter() - t0) / iters)
        return 2.0 * m * n * k / best / 1e9
    torch.cuda.synchronize(device)
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.matmul(a_op, b_op, out=c)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3 / iters)
    return 2.0 * m * n * k / best / 1e9


def iters_for(m, n, k, rate=2e12):
    # About 50 ms of work per repeat at `rate` FLOP/s (40 TFLOP/s: the H200's FP32), at
    # least 3 and at most 1000 products.
    return max(3, min(1000, int(rate / max(1, 2 * m * n * k))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opconvert-json", help="output of `opconvert plugin bench --device cuda --json`")
    p.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu only to try the script out)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--goal", type=float, default=0.90)
    a = p.parse_args()

    import torch
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_gemm.py: torch.cuda.is_available() is False")
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.set_float32_matmul_precision("high" if a.tf32 else "highest")

    entries, note = [], None
    if a.opconvert_json:
        try:
            with open(a.opconvert_json) as f:
                entries = shapes_from_opconvert(json.load(f))
        except (OSError, ValueError) as e:
            note = f"could not read {a.opconvert_json}: {e}"
        if not entries and note is None:
            note = f"no GEMM entries (m, n, k, *gflop*) found in {a.opconvert_json}"
    if not entries:
        entries = [(m, n, k, False, False, None) for (m, n, k) in DEFAULT_SHAPES]

    rows = []
    for m, n, k, ta, tb, ours in entries:
        tg = time_gemm(torch, m, n, k, ta, tb, a.warmup, iters_for(m, n, k, 2e12 if device.type == "cuda" else 2e9), a.repeats, device)
        large = min(m, n, k) >= LARGE_MIN_DIM
        rows.append({"m": m, "n": n, "k": k, "trans_a": ta, "trans_b": tb, "torch_gflops": tg,
                     "opconvert_gflops": ours, "ratio": (ours / tg) if ours is not None and tg > 0 else None,
                     "large": large})
    large_ratios = [r["ratio"] for r in rows if r["large"] and r["ratio"] is not None]
    out = {"shapes": rows, "large_min_ratio": min(large_ratios) if large_ratios else None,
           "goal": a.goal, "tf32": a.tf32, "torch": torch.__version__,
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "note": note}

    print(f"{'m':>6} {'n':>6} {'k':>6} {'tA':>2} {'tB':>2} {'torch GFLOP/s':>14} {'opconvert':>10} {'ratio':>6}", file=sys.stderr)
    for r in rows:
        ours = f"{r['opconvert_gflops']:.0f}" if r["opconvert_gflops"] is not None else "-"
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        print(f"{r['m']:>6} {r['n']:>6} {r['k']:>6} {int(r['trans_a']):>2} {int(r['trans_b']):>2} "
              f"{r['torch_gflops']:>14.0f} {ours:>10} {ratio:>6}{'  (large)' if r['large'] else ''}", file=sys.stderr)
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
