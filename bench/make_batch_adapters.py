#!/usr/bin/env python3
"""Writes N small PEFT LoRA adapters for the tiny LLaMA fixture (for bench/bench_batch.sh).

    make_batch_adapters.py OUT_DIR [N]

Each adapter has fixtures/peft/adapters/llama_lora's config and tensor names and shapes,
with its own seeded random A and B (numpy + safetensors.numpy only, no torch), and the
manifest OUT_DIR/manifest.jsonl merging each one into fixtures/peft/models/llama.
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
template = os.path.join(root, "fixtures/peft/adapters/llama_lora")
base = os.path.join(root, "fixtures/peft/models/llama")
out = os.path.abspath(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
tensors = load_file(os.path.join(template, "adapter_model.safetensors"))
os.makedirs(out, exist_ok=True)
lines = []
for i in range(n):
    d = os.path.join(out, "adapters", f"a{i:04d}")
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(i)
    fresh = {k: (rng.standard_normal(v.shape) * 0.05).astype(v.dtype) for k, v in tensors.items()}
    save_file(fresh, os.path.join(d, "adapter_model.safetensors"))
    shutil.copy(os.path.join(template, "adapter_config.json"), d)
    lines.append(json.dumps({"op": "merge", "args": {"base": base, "adapters": [d]}, "output": f"batch-out/m{i:04d}"}))
with open(os.path.join(out, "manifest.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
print(f"{n} adapters and manifest.jsonl in {out}")
