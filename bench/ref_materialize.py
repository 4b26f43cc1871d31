#!/usr/bin/env python3
"""numpy reference of `opconvert materialize` for the benchmark: the same computation
(h = ReLU(W1 z + c1); v = W2 h + c2; split into A, B) in f32, reading with safetensors'
safe_open (numpy), writing a PEFT adapter with safetensors.numpy.save_file."""
import json, os, sys, time
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

ckpt, out = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(ckpt, "op_config.json")))
r = cfg["peft_config"]["r"]
t0 = time.perf_counter()
result = {}
with safe_open(os.path.join(ckpt, "op_model.safetensors"), "np") as f:
    shapes = json.loads(f.metadata()["op_module_shapes"])
    for m, (o, i) in shapes.items():
        p = f"base_model.model.{m}.op_mlp."
        h = np.maximum(f.get_tensor(p + "fc1.weight") @ f.get_tensor(p + "z") + f.get_tensor(p + "fc1.bias"), 0)
        v = f.get_tensor(p + "fc2.weight") @ h + f.get_tensor(p + "fc2.bias")
        result[f"base_model.model.{m}.lora_A.weight"] = np.ascontiguousarray(v[: r * i].reshape(r, i))
        result[f"base_model.model.{m}.lora_B.weight"] = np.ascontiguousarray(v[r * i:].reshape(o, r))
os.makedirs(out, exist_ok=True)
save_file(result, os.path.join(out, "adapter_model.safetensors"), metadata={"format": "pt"})
json.dump(cfg["peft_config"], open(os.path.join(out, "adapter_config.json"), "w"), indent=2, sort_keys=True)
print(f"{time.perf_counter() - t0:.3f}")
