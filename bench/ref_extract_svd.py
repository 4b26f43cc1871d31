#!/usr/bin/env python3
"""mergekit-style LoRA extraction reference: per linear module, torch.linalg.svd of the f32
delta (full_matrices=False), truncated to RANK; B = U S, A = Vh. Prints one JSON line with
the seconds spent (load + SVD) and the mean / max relative Frobenius error of the rank-RANK
factors against the exact delta (computed in f64).

    python3 bench/ref_extract_svd.py BASE_DIR TUNED_DIR RANK
"""
import json
import sys
import time

import torch
from safetensors import safe_open

base_dir, tuned_dir, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
errors, svd_seconds = [], 0.0
with safe_open(f"{base_dir}/model.safetensors", "pt") as fb, safe_open(f"{tuned_dir}/model.safetensors", "pt") as ft:
    for key in fb.keys():
        if not key.endswith("_proj.weight"):
            continue
        delta64 = ft.get_tensor(key).double() - fb.get_tensor(key).double()
        t0 = time.perf_counter()
        u, s, vh = torch.linalg.svd(delta64.float(), full_matrices=False)
        b, a = u[:, :rank] * s[:rank], vh[:rank]
        svd_seconds += time.perf_counter() - t0
        errors.append(float(torch.linalg.norm(delta64 - b.double() @ a.double()) / torch.linalg.norm(delta64)))
print(json.dumps({"seconds": time.perf_counter() - start, "svd_seconds": svd_seconds, "modules": len(errors),
                  "mean_relative_error": sum(errors) / len(errors), "max_relative_error": max(errors),
                  "threads": torch.get_num_threads()}))
