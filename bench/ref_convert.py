#!/usr/bin/env python3
"""Reference F32 -> BF16 conversion with the safetensors Python package (for the bench).

    ref_convert.py numpy|torch INPUT OUTPUT

numpy: safetensors.numpy.load_file, ml_dtypes.bfloat16 astype, save_file.
torch: safetensors.torch.load_file, tensor.to(torch.bfloat16), save_file.
Then fsync the output (opconvert fsyncs its outputs too). Prints phase times as JSON.
"""
import json
import os
import sys
import time

mode, src, dst = sys.argv[1:4]
t = [time.perf_counter()]
if mode == "numpy":
    import ml_dtypes
    from safetensors.numpy import load_file, save_file
    target = ml_dtypes.bfloat16
    cast = lambda v: v.astype(target)
elif mode == "torch":
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    from safetensors.torch import load_file, save_file
    cast = lambda v: v.to(torch.bfloat16)
else:
    sys.exit("mode must be numpy or torch")
t.append(time.perf_counter())
tensors = load_file(src)
t.append(time.perf_counter())
out = {}
for name in list(tensors):
    v = tensors.pop(name)  # drop each f32 source as soon as it is converted
    out[name] = cast(v) if str(v.dtype) in ("float32", "torch.float32") else v
    del v
t.append(time.perf_counter())
save_file(out, dst, metadata={"format": "pt"})
t.append(time.perf_counter())
fd = os.open(dst, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
t.append(time.perf_counter())
names = ["import", "load", "cast", "save", "fsync"]
print(json.dumps({n: round(t[i + 1] - t[i], 3) for i, n in enumerate(names)}))
