#!/usr/bin/env python3
"""Python loop over PEFT merging many adapters into one base (for bench/bench_batch.sh).

    ref_peft_batch.py BASE_DIR OUT_DIR ADAPTER_DIR...

One process: imports torch/transformers/peft once and loads the base once; for each
adapter: restore the base's original weights (load_state_dict of a kept copy), attach the
adapter (PeftModel.from_pretrained), merge_and_unload, save_pretrained (safetensors), fsync
the files. This is the fastest fair PEFT loop (a fresh base load per adapter is slower).
Prints phase totals (s) as JSON.
"""
import json
import os
import sys
import time

base, out, adapters = sys.argv[1], sys.argv[2], sys.argv[3:]
t0 = time.perf_counter()
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

torch.set_num_threads(os.cpu_count() or 1)
t1 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
original = {k: v.clone() for k, v in model.state_dict().items()}
t2 = time.perf_counter()
phases = {"attach": 0.0, "merge": 0.0, "save": 0.0, "restore": 0.0}
for i, ad in enumerate(adapters):
    a = time.perf_counter()
    model.load_state_dict(original)
    b = time.perf_counter()
    peft_model = PeftModel.from_pretrained(model, ad)
    c = time.perf_counter()
    merged = peft_model.merge_and_unload()
    d = time.perf_counter()
    target = os.path.join(out, f"m{i:04d}")
    merged.save_pretrained(target)
    for name in os.listdir(target):
        fd = os.open(os.path.join(target, name), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    e = time.perf_counter()
    model = merged
    phases["restore"] += b - a
    phases["attach"] += c - b
    phases["merge"] += d - c
    phases["save"] += e - d
print(json.dumps({"import": round(t1 - t0, 3), "load_base": round(t2 - t1, 3), **{k: round(v, 3) for k, v in phases.items()}}))
