#!/usr/bin/env python3
"""Step-by-step parity check of `opconvert train` against a PyTorch float32 re-implementation
that starts from the same initial parameters and sees the same batches (opc_rng replicates
opconvert's SplitMix64 draws and shuffles). Compares per-step training losses with
opconvert's --loss-csv.

  parity_check.py --base B --data D --loss-csv opconvert_loss.csv --method lora --lr 1e-3 --epochs 3
"""
import argparse
import csv
import json

import numpy as np
import torch
from safetensors.numpy import load_file

from opc_rng import SeededRandom, hyper_mlp_init


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--loss-csv", required=True, help="opconvert train --loss-csv output for the same settings")
    p.add_argument("--method", default="op-lora", choices=["lora", "op-lora"])
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--mlp-hidden", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(2)

    base = load_file(a.base)
    data = load_file(a.data)
    layers = ["fc1", "fc2"]
    W = [torch.from_numpy(base[f"{l}.weight"]) for l in layers]
    bias = [torch.from_numpy(base[f"{l}.bias"]) for l in layers]
    X, Y = torch.from_numpy(data["inputs"]), torch.from_numpy(data["labels"])
    r, s = a.rank, a.alpha / a.rank

    rng = SeededRandom(a.seed)
    params, gens = [], []
    for w in W:
        out_f, in_f = w.shape
        if a.method == "lora":
            A = torch.tensor(rng.kaiming_uniform(r * in_f, in_f).reshape(r, in_f), requires_grad=True)
            B = torch.zeros(out_f, r, requires_grad=True)
            params += [A, B]
            gens.append(lambda A=A, B=B: (A, B))
        else:
            na = r * in_f
            q = hyper_mlp_init(rng, a.z_dim, a.mlp_hidden, na + out_f * r, na, na + out_f * r)
            t = {k: torch.tensor(v, requires_grad=True) for k, v in q.items()}
            params += [t["z"], t["w1"], t["c1"], t["w2"], t["c2"]]

            def gen(t=t, na=na, in_f=in_f, out_f=out_f):
                v = t["w2"] @ torch.relu(t["w1"] @ t["z"] + t["c1"]) + t["c2"]
                return v[:na].reshape(r, in_f), v[na:].reshape(out_f, r)
            gens.append(gen)
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    shuffler = SeededRandom(a.seed ^ 0xD1CE5EED)
    n, bs = len(Y), a.batch_size
    losses = []
    for _ in range(a.epochs):
        order = shuffler.shuffle(n)
        for k in range(0, n, bs):
            idx = torch.tensor(order[k:k + bs])
            h = X[idx]
            for li, (w, b, g) in enumerate(zip(W, bias, gens)):
                A, B = g()
                h = h @ (w + s * (B @ A)).T + b
                if li < len(W) - 1:
                    h = torch.relu(h)
            loss = torch.nn.functional.cross_entropy(h, Y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    with open(a.loss_csv) as f:
        theirs = [float(row["loss"]) for row in csv.DictReader(f)]
    ours = np.array(losses)
    theirs = np.array(theirs)
    rel = np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)
    print(json.dumps({
        "method": a.method, "lr": a.lr, "epochs": a.epochs, "steps": len(ours), "opconvert_steps": len(theirs),
        "first_loss": [round(float(ours[0]), 6), round(float(theirs[0]), 6)],
        "last_loss": [round(float(ours[-1]), 6), round(float(theirs[-1]), 6)],
        "max_rel_diff_first_10_steps": float(rel[:10].max()),
        "max_rel_diff_all_steps": float(rel.max()),
        "median_rel_diff": float(np.median(rel)),
    }))


if __name__ == "__main__":
    main()
