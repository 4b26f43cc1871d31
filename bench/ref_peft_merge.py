#!/usr/bin/env python3
"""Reference LoRA merge with transformers + PEFT (for bench/bench_merge.sh).

    ref_peft_merge.py BASE_DIR ADAPTER_DIR OUT_DIR [MAX_SHARD_SIZE]

AutoModelForCausalLM.from_pretrained(dtype=bfloat16), PeftModel.from_pretrained,
merge_and_unload, save_pretrained (safetensors, MAX_SHARD_SIZE default 1GB), then fsync of
every output file (opconvert fsyncs its outputs too). Prints phase times (s) as JSON.
"""
import json
import os
import sys
import time

base, adapter, out = sys.argv[1:4]
shard = sys.argv[4] if len(sys.argv) > 4 else "1GB"
t = [time.perf_counter()]
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

torch.set_num_threads(os.cpu_count() or 1)
t.append(time.perf_counter())
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
t.append(time.perf_counter())
model = PeftModel.from_pretrained(model, adapter)
t.append(time.perf_counter())
model = model.merge_and_unload()
t.append(time.perf_counter())
model.save_pretrained(out, max_shard_size=shard)
t.append(time.perf_counter())
for name in os.listdir(out):
    fd = os.open(os.path.join(out, name), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
t.append(time.perf_counter())
names = ["import", "load_base", "load_adapter", "merge", "save", "fsync"]
print(json.dumps({n: round(t[i + 1] - t[i], 3) for i, n in enumerate(names)}))
