#!/usr/bin/env python3
"""Independent PyTorch LoRA / OP-LoRA on the same frozen 64 -> 512 -> ReLU -> 10 network, to time
one training epoch on this CPU next to `opconvert train` (seconds_per_epoch).

- LoRA (PEFT style): y = x W^T + b + s * (x A^T) B^T, A Kaiming-uniform (bound 1/sqrt(in)),
  B = 0, s = alpha / r.
- OP-LoRA (paper, appendix C.1): per adapted module an MLP v = W2 ReLU(W1 z + c1) + c2 with a
  learned z ~ N(0, I), W1, W2 Kaiming-uniform (nn.Linear default), the rows of W2 that predict
  B zero, biases 0; A, B = v reshaped; then the same LoRA forward.
- AdamW (weight_decay 0, as opconvert's default), constant LR, mean cross-entropy, batches of
  --batch-size from a fresh random permutation each epoch, torch.set_num_threads(THREADS).

Runs --warmup-epochs untimed epochs, then --timed-epochs timed ones (each timed separately);
prints JSON with every timed epoch, their median, and the first timed epoch.
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
    for l in layers:
        w, b = base[f"{l}.weight"], base[f"{l}.bias"]
        if method == "lora":
            mods.append(LoRALinear(w, b, r, alpha))
        else:
            mods.append(OPLoRALinear(w, b, r, alpha, hidden, z_dim))
    return nn.ModuleList(mods)


def forward(mods, x):
    for i, m in enumerate(mods):
        x = m(x)
        if i < len(mods) - 1:
            x = torch.relu(x)
    return x


def epoch(mods, opt, X, Y, bs, gen):
    perm = torch.randperm(len(Y), generator=gen)
    total = 0.0
    for k in range(0, len(Y), bs):
        idx = perm[k:k + bs]
        loss = nn.functional.cross_entropy(forward(mods, X[idx]), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(Y)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--methods", default="lora,op-lora")
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--alpha", type=float, default=8.0)
    p.add_argument("--mlp-hidden", type=int, default=32)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--timed-epochs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    base = load_file(a.base)
    layers = [s for s in ("fc1", "fc2")]
    data = load_file(a.data)
    X, Y = data["inputs"].contiguous(), data["labels"].contiguous()
    results = []
    for method in a.methods.split(","):
        torch.manual_seed(a.seed)
        gen = torch.Generator().manual_seed(a.seed)
        mods = build(base, method, a.rank, a.alpha, a.mlp_hidden, a.z_dim, layers)
        params = [q for q in mods.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
        for _ in range(a.warmup_epochs):
            epoch(mods, opt, X, Y, a.batch_size, gen)
        times, loss = [], None
        for _ in range(a.timed_epochs):
            t0 = time.perf_counter()
            loss = epoch(mods, opt, X, Y, a.batch_size, gen)
            times.append(time.perf_counter() - t0)
        results.append({"method": method, "train_parameters": sum(q.numel() for q in params),
                        "seconds_first_timed_epoch": times[0], "seconds_per_epoch_median": statistics.median(times),
                        "seconds_per_epoch_all": times, "last_epoch_loss": loss,
                        "threads": a.threads, "batch_size": a.batch_size, "torch": torch.__version__})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
