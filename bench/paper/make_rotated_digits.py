#!/usr/bin/env python3
"""Base network and adaptation task for the OP-LoRA paper reproduction (bench/paper).

1. scikit-learn's bundled `load_digits` (1797 8x8 images, no download), pixels / 16 -> [0, 1],
   stratified 80/20 train/test split with a fixed seed.
2. Pretrain a 64 -> 512 -> ReLU -> 10 MLP on the UPRIGHT training digits with torch (Adam,
   full batch) and save it as data/base.safetensors (fc1.weight [512,64], fc1.bias, fc2.weight
   [10,512], fc2.bias; metadata format=pt, opconvert.layers=fc1,fc2).
3. Adaptation task: every image rotated by its own angle drawn uniformly from
   [-ANGLE, ANGLE] degrees (scipy.ndimage.rotate, reshape=False, order=1, zero fill), saved as
   data/rotated_train.safetensors and data/rotated_test.safetensors (inputs f32 [N,64],
   labels i64 [N]). Each image is rotated once (no augmentation copies).

Prints the frozen base's accuracy/loss on upright and rotated data as a JSON line.
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from scipy.ndimage import rotate
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def rotate_all(x, angles):
    out = np.empty_like(x)
    for i, (img, a) in enumerate(zip(x, angles)):
        r = rotate(img.reshape(8, 8), a, reshape=False, order=1, mode="constant", cval=0.0)
        out[i] = np.clip(r, 0.0, 1.0).reshape(64)
    return out


def evaluate(model, x, y):
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
        acc = (logits.argmax(1).numpy() == y).mean().item()
    return loss, acc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    p.add_argument("--seed", type=int, default=0, help="split, init, pretraining and rotation seed")
    p.add_argument("--angle", type=float, default=90.0, help="rotations uniform in [-ANGLE, ANGLE] degrees")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=400, help="full-batch Adam steps of pretraining")
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=a.seed, stratify=y)

    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    model = torch.nn.Sequential(torch.nn.Linear(64, a.hidden), torch.nn.ReLU(), torch.nn.Linear(a.hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(a.steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    model.eval()

    fc1, fc2 = model[0], model[2]
    tensors = {
        "fc1.weight": fc1.weight.detach().numpy().astype(np.float32),
        "fc1.bias": fc1.bias.detach().numpy().astype(np.float32),
        "fc2.weight": fc2.weight.detach().numpy().astype(np.float32),
        "fc2.bias": fc2.bias.detach().numpy().astype(np.float32),
    }
    save_file(tensors, os.path.join(a.out, "base.safetensors"), metadata={"format": "pt", "opconvert.layers": "fc1,fc2"})

    rng = np.random.default_rng(a.seed + 1)
    ang_tr = rng.uniform(-a.angle, a.angle, size=len(xtr))
    ang_te = rng.uniform(-a.angle, a.angle, size=len(xte))
    rtr, rte = rotate_all(xtr, ang_tr), rotate_all(xte, ang_te)
    save_file({"inputs": rtr, "labels": ytr}, os.path.join(a.out, "rotated_train.safetensors"))
    save_file({"inputs": rte, "labels": yte}, os.path.join(a.out, "rotated_test.safetensors"))
    # Upright sets too (handy for checking forgetting); not used by run_paper.sh.
    save_file({"inputs": xtr, "labels": ytr}, os.path.join(a.out, "upright_train.safetensors"))
    save_file({"inputs": xte, "labels": yte}, os.path.join(a.out, "upright_test.safetensors"))

    report = {"seed": a.seed, "angle": a.angle, "n_train": len(xtr), "n_test": len(xte)}
    for name, (xx, yy) in {"upright_train": (xtr, ytr), "upright_test": (xte, yte),
                           "rotated_train": (rtr, ytr), "rotated_test": (rte, yte)}.items():
        l, acc = evaluate(model, xx, yy)
        report[name] = {"loss": round(l, 5), "accuracy": round(acc, 4)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
