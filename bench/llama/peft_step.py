#!/usr/bin/env python3
"""The PyTorch side of the LLaMA training benchmark (bench/bench_llama_train.sh): times adapter
training steps on a model directory with PyTorch + PEFT LoRA, or a plain-PyTorch OP-LoRA.

    python3 bench/llama/peft_step.py --model DIR --data FILE --method lora|op-lora
        [--target-modules q_proj,v_proj] [--rank 8] [--alpha 16] [--mlp-hidden 32] [--z-dim 32]
        [--batch-size 4] [--steps 6] [--warmup 1] [--threads 2] [--device cpu|cuda]
        [--attn sdpa|eager] [--tf32] [--json]

A step is what a training loop does: zero_grad, forward with labels (transformers' shifted
mean cross-entropy), backward, AdamW (lr 1e-4, weight decay 0.01). The base is frozen, F32
(the model's file dtype is cast to F32, as opconvert computes in F32). Batches come from the
data's `input_ids` rows in file order (step s uses rows s*B % N ..< +B, wrapping), like
`opconvert train --no-shuffle`. Timing: each step on its own (CUDA: synchronized); the first
--warmup steps are dropped and tokens/s = B * seq / median step time. Also reported: the
median over all timed steps, peak RSS (getrusage; the shell script also runs us under
/usr/bin/time -v) and, on CUDA, torch.cuda.max_memory_allocated.

OP-LoRA (plain PyTorch, as fixtures/scripts/make_llama_train_fixtures.py): each targeted
Linear gets a one-hidden-layer MLP z -> fc1 -> ReLU -> fc2 whose output is (A; B) flattened,
recomputed every step; y = W x + (alpha / r) B (A x). Only z, fc1 and fc2 train.

Threads: torch.set_num_threads(--threads) and one inter-op thread (set before any work); the
caller pins the process to the same cores as opconvert (taskset).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--method", choices=["lora", "op-lora"], required=True)
    ap.add_argument("--target-modules", default="q_proj,v_proj")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--mlp-hidden", type=int, default=32)
    ap.add_argument("--z-dim", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="timed steps after the warm-up")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                    help="transformers attention implementation (sdpa: what a user gets by default)")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object (else a line)")
    return ap.parse_args()


args = parse_args()
if not args.device.startswith("cuda"):
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
torch.set_num_threads(args.threads)
torch.set_num_interop_threads(1)


class OPMLP(torch.nn.Module):
    def __init__(self, z_dim: int, hidden: int, n_out: int, g: torch.Generator):
        super().__init__()
        self.z = torch.nn.Parameter(torch.randn(z_dim, generator=g))
        self.fc1 = torch.nn.Linear(z_dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, n_out)
        with torch.no_grad():
            for lin in (self.fc1, self.fc2):  # Kaiming-uniform as nn.Linear, biases zero
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_(torch.rand(lin.weight.shape, generator=g) * 2 * bound - bound)
                lin.bias.zero_()

    def forward(self) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.z)))


class OPLinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, r: int, scaling: float, hidden: int, z_dim: int, g: torch.Generator):
        super().__init__()
        self.base = base
        self.out_f, self.in_f = base.weight.shape
        self.r, self.scaling = r, scaling
        self.op_mlp = OPMLP(z_dim, hidden, r * self.in_f + self.out_f * r, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.op_mlp()
        n_a = self.r * self.in_f
        A, B = v[:n_a].reshape(self.r, self.in_f), v[n_a:].reshape(self.out_f, self.r)
        return self.base(x) + self.scaling * ((x @ A.t()) @ B.t())


def load_ids(path: str) -> torch.Tensor:
    with safe_open(path, "pt") as f:
        ids = f.get_tensor("input_ids")
    if ids.ndim != 2:
        sys.exit(f"{path}: input_ids must be [N, T], got {list(ids.shape)}")
    return ids.to(torch.int64)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda: torch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    targets = [t for t in args.target_modules.split(",") if t]
    t_load = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                              attn_implementation=args.attn)
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    if args.method == "lora":
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=targets, lora_dropout=0.0,
                         bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, cfg)
    else:
        n = 0
        for path, mod in list(model.named_modules()):
            if isinstance(mod, torch.nn.Linear) and path.rsplit(".", 1)[-1] in targets:
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent), child,
                        OPLinear(mod, args.rank, args.alpha / args.rank, args.mlp_hidden, args.z_dim, g))
                n += 1
        if n == 0:
            sys.exit(f"no Linear module named {targets} in {args.model}")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ids = load_ids(args.data)
    rows, seq = ids.shape
    bs = args.batch_size
    load_s = time.perf_counter() - t_load

    model.train()
    times, losses = [], []
    for s in range(args.warmup + args.steps):
        idx = [(s * bs + i) % rows for i in range(bs)]
        batch = ids[idx].to(device)
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    timed = times[args.warmup:] or times
    med = statistics.median(timed)
    out = {
        "tool": "pytorch", "method": args.method, "device": str(device), "threads": args.threads,
        "attn": args.attn, "torch": torch.__version__, "transformers": transformers.__version__,
        "batch_size": bs, "seq": seq, "tokens_per_step": bs * seq, "warmup_steps": args.warmup,
        "steps": len(timed), "step_seconds": [round(t, 4) for t in times],
        "median_step_seconds": med, "tokens_per_second": bs * seq / med,
        "trainable_parameters": n_train, "total_parameters": n_total, "load_seconds": load_s,
        "first_loss": losses[0], "last_loss": losses[-1],
        # Linux reports ru_maxrss in KiB
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.method} ({args.device}, {args.threads} threads, {args.attn}): {out['tokens_per_second']:.1f} tokens/s "
              f"(median step {med:.3f} s of {len(timed)}; B={bs} T={seq}), trainable {n_train}, "
              f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, peak RSS {out['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
