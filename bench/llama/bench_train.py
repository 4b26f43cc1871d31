#!/usr/bin/env python3
"""Tokens/s of a LoRA and an OP-LoRA training step on a random LLaMA-shaped model (issue 12):
opconvert (`train --model`, CPU plugin or --device) against PyTorch + PEFT on the same threads,
with peak RSS. Not a test: a benchmark to run by hand.

    python3 bench/llama/bench_train.py [--size 100m|small] [--seq 256] [--batch 1] [--steps 6]
        [--threads 2] [--opconvert .build/release/opconvert] [--device cpu] [--out DIR]

The model (random weights, made here with transformers) and the token rows are written to --out
(default /tmp/opconvert-bench-llama). Both sides train q,k,v,o,gate,up,down at rank 8 (OP-LoRA:
mlp hidden 32, z_dim 32) for --steps steps in file order; the first step is excluded from the
timing (warm-up). PyTorch's OP-LoRA is a plain implementation (one MLP per module).
"""
import argparse, json, math, os, resource, subprocess, sys, time
from pathlib import Path

SIZES = {  # ~100M: LLaMA-shaped, tied embeddings; small: a quick run
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4, vocab_size=32000),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=4096),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make(out: Path, size: str, seq: int, rows: int):
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=max(seq, 512), tie_word_embeddings=True, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out / "model"))
    ids = torch.randint(1, cfg.vocab_size, (rows, seq), dtype=torch.int64)
    save_file({"input_ids": ids}, str(out / "data.safetensors"))
    return sum(p.numel() for p in model.parameters())


def torch_run(out: Path, method: str, steps: int, batch: int, threads: int):
    import torch, torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32, attn_implementation="eager")
    ids = load_file(str(out / "data.safetensors"))["input_ids"]
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        params = []
        for path, mod in list(model.named_modules()):
            if isinstance(mod, torch.nn.Linear) and path.rsplit(".", 1)[-1] in TARGETS:
                o, i = mod.weight.shape
                mlp = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8 * (i + o)))
                z = torch.nn.Parameter(torch.randn(32))
                params += list(mlp.parameters()) + [z]
                def fwd(x, mod=mod, mlp=mlp, z=z, i=i, o=o):
                    v = mlp(z)
                    A, B = v[:8 * i].view(8, i), v[8 * i:].view(o, 8)
                    return F.linear(x, mod.weight) + 2.0 * ((x @ A.t()) @ B.t())
                mod.forward = fwd
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for s in range(steps):
        b = ids[(s * batch) % len(ids):][:batch]
        t = time.perf_counter()
        opt.zero_grad()
        model(input_ids=b, labels=b).loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    timed = times[1:] or times
    return batch * ids.shape[1] * len(timed) / sum(timed), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="100m", choices=SIZES)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opconvert", default=".build/release/opconvert")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="/tmp/opconvert-bench-llama")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out)
    if a.worker:  # one PyTorch run in its own process, for its own peak RSS
        print(json.dumps(torch_run(out, a.worker, a.steps, a.batch, a.threads)))
        return
    out.mkdir(parents=True, exist_ok=True)
    n = make(out, a.size, a.seq, rows=a.batch * a.steps)
    print(f"model: {a.size} ({n / 1e6:.1f}M parameters), seq {a.seq}, batch {a.batch}, {a.threads} threads")
    results = {}
    for method in ["lora", "op-lora"]:
        cmd = [a.opconvert, "train", "--model", str(out / "model"), "--data", str(out / "data.safetensors"), "--method", method,
               "--target-modules", ",".join(TARGETS), "--rank", "8", "--alpha", "16", "--mlp-hidden", "32", "--z-dim", "32",
               "--batch-size", str(a.batch), "--steps", str(a.steps), "--no-shuffle", "--threads", str(a.threads),
               "--device", a.device, "--lr", "1e-4", "--json", "--no-progress"]
        r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"opconvert failed: {r.stderr}")
        s = json.loads(r.stdout)
        rss = int(r.stderr.strip().splitlines()[-1]) / 1024
        w = subprocess.run([sys.executable, __file__, "--worker", method, "--out", str(out), "--steps", str(a.steps),
                            "--batch", str(a.batch), "--threads", str(a.threads)], capture_output=True, text=True)
        if w.returncode != 0:
            sys.exit(f"torch failed: {w.stderr[-2000:]}")
        ttok, trss = json.loads(w.stdout.strip().splitlines()[-1])
        results[method] = dict(opconvert_tokens_per_second=s["tokens_per_second"], opconvert_peak_rss_mib=rss,
                               torch_tokens_per_second=ttok, torch_peak_rss_mib=trss)
        print(f"{method:8s} opconvert {s['tokens_per_second']:9.1f} tok/s ({rss:.0f} MiB)   torch+peft {ttok:9.1f} tok/s ({trss:.0f} MiB)"
              f"   ratio {s['tokens_per_second'] / ttok:.2f}x")
    for side in ["opconvert", "torch"]:
        lo, op = results["lora"][f"{side}_tokens_per_second"], results["op-lora"][f"{side}_tokens_per_second"]
        print(f"{side}: OP-LoRA step takes {100 * (lo / op - 1):+.1f}% over LoRA's")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
