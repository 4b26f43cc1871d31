#!/usr/bin/env python3
"""Seconds per training step of the rotated-digits LoRA / OP-LoRA run in PyTorch, on CPU or
CUDA, to put next to `opconvert train ... --json` (seconds_per_epoch / steps per epoch).

The maths is bench/paper/torch_epoch.py's (kept self-contained so the GPU bundle can ship
this file alone):

- frozen 64 -> 512 -> ReLU -> 10 network, adapted layers fc1 and fc2;
- LoRA (PEFT style): y = x W^T + b + s (x A^T) B^T, A Kaiming-uniform, B = 0, s = alpha / r;
- OP-LoRA (paper, appendix C.1): per layer an MLP v = W2 ReLU(W1 z + c1) + c2 with a learned
  z ~ N(0, I), the rows of W2 that predict B zero, biases 0; A, B = v reshaped;
- AdamW (weight decay 0), constant LR, mean cross-entropy, batches of --batch-size from a
  fresh random permutation each epoch; the loss is read back every step (`loss.item()`),
  as opconvert reads it back, so both pay one device-to-host sync per step.

Runs --warmup-steps untimed steps, then --steps timed steps, --repeats times; prints one JSON
list with, per method, the median seconds per step over the repeats.
FP32 throughout; on CUDA TF32 is off unless --tf32 (as opconvert's default).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
from safetensors.torch import load_file


class LoRALinear(nn.Module):
    def __init__(self, weight, bias, r, alpha):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        out_f, in_f = weight.shape
        self.scale = alpha / r
        self.A = nn.Parameter(torch.empty(r, in_f))
        nn.init.kaiming_uniform_(self.A, a=5 ** 0.5)
        self.B = nn.Parameter(torch.zeros(out_f, r))

    def adapter(self):
        return self.A, self.B

    def forward(self, x):
        a, b = self.adapter()
        return nn.functional.linear(x, self.weight, self.bias) + self.scale * ((x @ a.t()) @ b.t())


class OPLoRALinear(LoRALinear):
    def __init__(self, weight, bias, r, alpha, hidden, z_dim):
        super().__init__(weight, bias, r, alpha)
        del self.A, self.B
        out_f, in_f = weight.shape
        self.r, self.in_f, self.out_f = r, in_f, out_f
        self.z = nn.Parameter(torch.randn(z_dim))
        self.fc1 = nn.Linear(z_dim, hidden)
        self.fc2 = nn.Linear(hidden, r * in_f + out_f * r)
        with torch.no_grad():
            self.fc1.bias.zero_()
            self.fc2.bias.zero_()
            self.fc2.weight[r * in_f:].zero_()      # B starts at 0: the model starts at the base

    def adapter(self):
        v = self.fc2(torch.relu(self.fc1(self.z)))
        n = self.r * self.in_f
        return v[:n].view(self.r, self.in_f), v[n:].view(self.out_f, self.r)


def build(base, method, r, alpha, hidden, z_dim, layers):
    mods = []
    for name in layers:
        w, b = base[f"{name}.weight"], base[f"{name}.bias"]
        if method == "lora":
            mods.append(LoRALinear(w, b, r, alpha))
        elif method == "op-lora":
            mods.append(OPLoRALinear(w, b, r, alpha, hidden, z_dim))
        else:
            raise SystemExit(f"torch_digits_step.py: unknown method {method!r} (lora, op-lora)")
    return nn.ModuleList(mods)


def forward(mods, x):
    for i, m in enumerate(mods):
        x = m(x)
        if i < len(mods) - 1:
            x = torch.relu(x)
    return x


class Batches:
    """Endless batches: a fresh permutation per epoch, the last batch of an epoch short."""

    def __init__(self, n, bs, gen, device):
        self.n, self.bs, self.gen, self.device = n, min(bs, n), gen, device
        self.perm, self.k = None, n

    def next(self):
        if self.k >= self.n:
            self.perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self.k = 0
        idx = self.perm[self.k:self.k + self.bs]
        self.k += self.bs
        return idx


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="lora,op-lora")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--mlp-hidden", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--steps", type=int, default=200, help="timed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU work)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("torch_digits_step.py: --device cuda but torch.cuda.is_available() is False")
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    base = {k: v.to(device) for k, v in load_file(a.base).items()}
    data = load_file(a.data)
    X, Y = data["inputs"].contiguous().to(device), data["labels"].contiguous().to(device)
    results = []
    for method in a.methods.split(","):
        torch.manual_seed(a.seed)
        gen = torch.Generator().manual_seed(a.seed)
        mods = build(base, method, a.rank, a.alpha, a.mlp_hidden, a.z_dim, ["fc1", "fc2"]).to(device)
        params = [q for q in mods.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        batches = Batches(len(Y), a.batch_size, gen, device)

        def step():
            idx = batches.next()
            loss = nn.functional.cross_entropy(forward(mods, X[idx]), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        for _ in range(a.warmup_steps):
            step()
        sync(device)
        per_step, loss = [], None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            sync(device)
            per_step.append((time.perf_counter() - t0) / a.steps)
        results.append({
            "method": method, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "seconds_per_step": statistics.median(per_step), "seconds_per_step_all": per_step,
            "steps_per_repeat": a.steps, "warmup_steps": a.warmup_steps, "batch_size": a.batch_size,
            "train_parameters": sum(q.numel() for q in params), "last_loss": loss,
            "threads": a.threads, "tf32": a.tf32, "torch": torch.__version__,
        })
    print(json.dumps(results))


if __name__ == "__main__":
    main()
