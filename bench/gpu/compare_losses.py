#!/usr/bin/env python3
"""Compares two `opconvert train --loss-csv` files step by step (standard library only).

    compare_losses.py CANDIDATE.csv REFERENCE.csv [--tol 1e-4]

Relative difference per step: |candidate - reference| / |reference| (absolute when the
reference loss is 0). Passes when both files have the same steps and every step is within
--tol. Prints one JSON object: {"pass", "steps", "max_rel_diff", "worst_step",
"candidate_loss", "reference_loss", "final_candidate", "final_reference", "tol", "error"}.
Exit 0 on pass, 1 on a difference, 2 on unreadable input.
"""
import argparse
import csv
import json
import math
import sys


def read_losses(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "loss" not in rows[0] or "step" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV with columns step,...,loss (opconvert train --loss-csv)")
    return [(int(r["step"]), float(r["loss"])) for r in rows]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("candidate")
    p.add_argument("reference")
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    out = {"pass": False, "tol": a.tol, "candidate": a.candidate, "reference": a.reference, "error": None}
    try:
        cand, ref = read_losses(a.candidate), read_losses(a.reference)
    except (OSError, ValueError, KeyError) as e:
        out["error"] = str(e)
        print(json.dumps(out))
        return 2
    out["steps"] = len(ref)
    if [s for s, _ in cand] != [s for s, _ in ref]:
        out["error"] = f"step lists differ: {len(cand)} steps in {a.candidate}, {len(ref)} in {a.reference}"
        print(json.dumps(out))
        return 1
    worst, worst_i = -1.0, None
    for i, ((step, c), (_, r)) in enumerate(zip(cand, ref)):
        if not (math.isfinite(c) and math.isfinite(r)):
            d = 0.0 if c == r else math.inf
        else:
            d = abs(c - r) / abs(r) if r != 0 else abs(c - r)
        if d > worst:
            worst, worst_i = d, i
    out.update({"max_rel_diff": worst if worst_i is not None else None,
                "worst_step": ref[worst_i][0] if worst_i is not None else None,
                "candidate_loss": cand[worst_i][1] if worst_i is not None else None,
                "reference_loss": ref[worst_i][1] if worst_i is not None else None,
                "final_candidate": cand[-1][1] if cand else None, "final_reference": ref[-1][1] if ref else None,
                "pass": bool(ref) and worst <= a.tol})
    if not ref:
        out["error"] = "no steps"
    print(json.dumps(out))
    return 0 if out["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
