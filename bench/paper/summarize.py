#!/usr/bin/env python3
"""Turns bench/paper/results/* (written by run_paper.sh) into Markdown tables: prints the
summary on stdout and writes results/factorize.md and results/timing.md."""
import csv
import glob
import json
import math
import os
import re
import statistics
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def fnum(x, digits=4):
    x = float(x)
    if math.isinf(x):
        return "diverged"
    if math.isnan(x):
        return "-"
    return f"{x:.{digits}f}"


def lr_key(x):
    return f"{float(x):g}"


out = []
P = out.append

# --- data ---------------------------------------------------------------------------------
d = json.load(open(os.path.join(RES, "data.json")))
P("## Task and frozen base\n")
P(f"Digits 8x8, {d['n_train']} train / {d['n_test']} test (stratified split, seed {d['seed']}); "
  f"rotation uniform in [-{d['angle']:g}, {d['angle']:g}] degrees.\n")
P("| data | base loss | base accuracy |\n|---|---|---|")
for k in ("upright_train", "upright_test", "rotated_train", "rotated_test"):
    P(f"| {k} | {d[k]['loss']:.4f} | {d[k]['accuracy']:.4f} |")
P("")

# --- LR sweep -------------------------------------------------------------------------------
sweeps = {}
for path in sorted(glob.glob(os.path.join(RES, "sweep_seed*/sweep.csv"))):
    seed = int(re.search(r"sweep_seed(\d+)", path).group(1))
    t = {}
    for r in rows(path):
        t[(r["method"], lr_key(r["lr"]))] = (float(r["final_loss"]), float(r["final_accuracy"]), float(r["seconds_per_epoch"]))
    sweeps[seed] = t
seeds = sorted(sweeps)
head = seeds[0]
lrs = sorted({lr for (_, lr) in sweeps[head]}, key=float)
test = {}
if os.path.exists(os.path.join(RES, "test_eval.csv")):
    for r in rows(os.path.join(RES, "test_eval.csv")):
        test[(r["method"], lr_key(r["lr"]))] = (float(r["test_loss"]), float(r["test_accuracy"]))

P(f"## a. LoRA vs OP-LoRA: final train loss (mean over the last epoch) against learning rate, seed {head}\n")
P("| lr | LoRA loss | OP-LoRA loss | OP-LoRA < LoRA? | LoRA train acc | OP-LoRA train acc | LoRA test acc | OP-LoRA test acc |")
P("|---|---|---|---|---|---|---|---|")
wins = 0
for lr in lrs:
    l, o = sweeps[head][("lora", lr)], sweeps[head][("op-lora", lr)]
    below = o[0] < l[0]
    wins += below
    tl, to = test.get(("lora", lr), (math.nan, math.nan)), test.get(("op-lora", lr), (math.nan, math.nan))
    P(f"| {lr} | {fnum(l[0])} | {fnum(o[0])} | {'yes' if below else '**no**'} | {l[1]:.3f} | {o[1]:.3f} | {fnum(tl[1], 3)} | {fnum(to[1], 3)} |")
P(f"\nOP-LoRA below LoRA at {wins} of {len(lrs)} learning rates (seed {head}).\n")
best_l = min(lrs, key=lambda lr: sweeps[head][("lora", lr)][0])
best_o = min(lrs, key=lambda lr: sweeps[head][("op-lora", lr)][0])
P(f"Best LoRA: lr {best_l}, loss {fnum(sweeps[head][('lora', best_l)][0])}; "
  f"best OP-LoRA: lr {best_o}, loss {fnum(sweeps[head][('op-lora', best_o)][0])}.\n")

if len(seeds) > 1:
    P(f"### All seeds ({', '.join(map(str, seeds))}): final train loss, mean (min-max), and in how many seeds OP-LoRA < LoRA\n")
    P("| lr | LoRA | OP-LoRA | seeds with OP-LoRA < LoRA |\n|---|---|---|---|")
    for lr in lrs:
        ls = [sweeps[s][("lora", lr)][0] for s in seeds]
        os_ = [sweeps[s][("op-lora", lr)][0] for s in seeds]
        n = sum(o < l for o, l in zip(os_, ls))

        def agg(v):
            if any(math.isinf(x) for x in v):
                return "diverged in %d" % sum(math.isinf(x) for x in v)
            return f"{statistics.mean(v):.4f} ({min(v):.4f}-{max(v):.4f})"
        P(f"| {lr} | {agg(ls)} | {agg(os_)} | {n}/{len(seeds)} |")
    P("")

# --- parity ---------------------------------------------------------------------------------
pp = os.path.join(RES, "parity.jsonl")
if os.path.exists(pp):
    P("## Exactness: opconvert vs a PyTorch re-implementation from the same initial parameters and batches\n")
    P("| method | steps | max relative loss difference (all steps) | median |\n|---|---|---|---|")
    for line in open(pp):
        j = json.loads(line)
        P(f"| {j['method']} | {j['steps']} | {j['max_rel_diff_all_steps']:.2e} | {j['median_rel_diff']:.2e} |")
    P("")

# --- factorize ------------------------------------------------------------------------------
f = []
F = f.append
dflt = json.load(open(os.path.join(RES, "factorize_opconvert_default.json")))
opt = dflt["svd_optimum"]
F("## b. Matrix factorization (appendix B.2): M 100x100 uniform [0,1), rank 8, 1000 SGD steps, "
  "warmup 50 + linear decay, OP-MF MLPs z=128, hidden 32\n")
F(f"SVD optimum sum_(i>8) sigma_i^2 = {opt:.4f} (||M||_F^2 = {dflt['target_norm']:.1f}).\n")
F("### Same learning rate (opconvert's defaults: --lr 1e-3 for both)\n")
F("| method | lr | final ||M-BA||^2 | / SVD optimum |\n|---|---|---|---|")
for r in dflt["runs"]:
    F(f"| {r['method']} | {r['lr']:g} | {r['final_error']:.4f} | {r['ratio_to_optimum']:.4f} |")
F(f"| SVD optimum | - | {opt:.4f} | 1.0000 |\n")

F("### opconvert, OP-MF over --op-lr (MF fixed at 1e-3 because `train factorize --lr` is ignored)\n")
F("| OP-MF lr | OP-MF final | / optimum | MF (lr 1e-3) final | / optimum |\n|---|---|---|---|---|")
for r in rows(os.path.join(RES, "factorize_opconvert_oplr.csv")):
    if r["status"] == "ok":
        F(f"| {lr_key(r['op_lr'])} | {float(r['op_mf_final']):.4f} | {float(r['op_mf_final']) / opt:.4f} | "
          f"{float(r['mf_final']):.4f} | {float(r['mf_final']) / opt:.4f} |")
    else:
        F(f"| {lr_key(r['op_lr'])} | diverged (opconvert exits 1: \"{r['status']}\"; MF result lost) | | | |")
F("")

ref = rows(os.path.join(RES, "factorize_ref.csv"))
rseeds = sorted({int(r["seed"]) for r in ref})
rlrs = sorted({r["lr"] for r in ref}, key=float)
tab = {(int(r["seed"]), r["method"], r["lr"]): r for r in ref}
F("### NumPy reference (factorize_ref.py, same init/target/draws as opconvert), both methods over the same LRs\n")
F("Final ||M-BA||^2 / SVD optimum (diverged = non-finite).\n")
F("| lr | " + " | ".join(f"MF s{s} | OP-MF s{s}" for s in rseeds) + " |")
F("|---|" + "---|---|" * len(rseeds))


def ratio(r):
    return "diverged" if r["diverged"] == "1" else f"{float(r['ratio_to_optimum']):.4f}"


for lr in rlrs:
    F(f"| {lr} | " + " | ".join(f"{ratio(tab[(s, 'mf', lr)])} | {ratio(tab[(s, 'op-mf', lr)])}" for s in rseeds) + " |")
F("")
F("Best stable learning rate per method and seed (lowest final error among non-diverged):\n")
F("| seed | SVD optimum | MF best lr | MF final | MF / opt | OP-MF best lr | OP-MF final | OP-MF / opt |\n|---|---|---|---|---|---|---|---|")
for s in rseeds:
    best = {}
    for m in ("mf", "op-mf"):
        ok = [tab[(s, m, lr)] for lr in rlrs if tab[(s, m, lr)]["diverged"] == "0"]
        best[m] = min(ok, key=lambda r: float(r["final_error"]))
    F(f"| {s} | {float(best['mf']['svd_optimum']):.4f} | {best['mf']['lr']} | {float(best['mf']['final_error']):.4f} | "
      f"{float(best['mf']['ratio_to_optimum']):.4f} | {best['op-mf']['lr']} | {float(best['op-mf']['final_error']):.4f} | "
      f"{float(best['op-mf']['ratio_to_optimum']):.4f} |")
F("")
# Agreement of the reference with opconvert (seed 0).
agree = []
r0 = {r["method"]: r for r in dflt["runs"]}
if (0, "mf", "0.001") in tab:
    agree.append(("mf", "0.001", r0["mf"]["final_error"], float(tab[(0, "mf", "0.001")]["final_error"])))
for r in rows(os.path.join(RES, "factorize_opconvert_oplr.csv")):
    k = (0, "op-mf", lr_key(r["op_lr"]))
    if k in tab:
        a = float(r["op_mf_final"]) if r["status"] == "ok" else math.inf
        agree.append(("op-mf", lr_key(r["op_lr"]), a, float(tab[k]["final_error"]) if tab[k]["diverged"] == "0" else math.inf))
if agree:
    F("Reference vs opconvert, seed 0 (final error):\n")
    F("| method | lr | opconvert | reference | relative difference |\n|---|---|---|---|---|")
    for m, lr, a, b in agree:
        rel = "both diverged" if math.isinf(a) and math.isinf(b) else (
            "-" if math.isinf(a) or math.isinf(b) else f"{abs(a - b) / b:.1e}")
        F(f"| {m} | {lr} | {fnum(a)} | {fnum(b)} | {rel} |")
    F("")
open(os.path.join(RES, "factorize.md"), "w").write("\n".join(f) + "\n")
out += f

# --- timing ---------------------------------------------------------------------------------
t = []
T = t.append
tm = {}
for r in rows(os.path.join(RES, "timing.csv")):
    tm.setdefault((r["impl"], r["method"]), []).append(float(r["seconds_per_epoch"]))
tj = json.load(open(os.path.join(RES, "torch_epoch.json")))
load = open(os.path.join(RES, "timing_load.txt")).read().strip() if os.path.exists(os.path.join(RES, "timing_load.txt")) else ""
T(f"## c. Seconds per training epoch ({d['n_train']} rows, batch 64, rank 4, both layers; 2 threads)\n")
T("opconvert: `seconds_per_epoch` of a 1-epoch `train --json` run (start-up excluded), repeated; "
  f"torch {tj[0]['torch']}: 1 warm-up epoch, then timed epochs.\n")
T("| method | opconvert median s | opconvert min s | torch median s | torch min s | torch first timed epoch s | torch / opconvert (median) |")
T("|---|---|---|---|---|---|---|")
for m in ("lora", "op-lora"):
    a, b = tm[("opconvert", m)], tm[("torch", m)]
    first = next(x["seconds_first_timed_epoch"] for x in tj if x["method"] == m)
    T(f"| {m} | {statistics.median(a):.4f} | {min(a):.4f} | {statistics.median(b):.4f} | {min(b):.4f} | {first:.4f} | "
      f"{statistics.median(b) / statistics.median(a):.2f}x |")
T(f"\nLoad at the end of the timing: `{load}`\n")
open(os.path.join(RES, "timing.md"), "w").write("\n".join(t) + "\n")
out += t

print("\n".join(out))
