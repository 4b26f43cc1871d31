#!/usr/bin/env python3
"""Writes a LLaMA-7B-shaped OP checkpoint (format v1) for the materialize benchmark.

numpy only. r=32, MLP hidden 32, z_dim 32, OP-LoRA on q_proj, k_proj, v_proj, up_proj and
down_proj of 32 layers (hidden 4096, intermediate 11008): about 7.2 GB of F32 fc2 weights.
Module shapes go into the `op_module_shapes` metadata (as `opconvert train` writes them), so
no base model is needed. Data is streamed; memory stays small.

    python3 bench/make_op_checkpoint.py -o bench/data/op-7b [--layers 32]
"""
import argparse, json, os, struct
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("-o", "--output", required=True)
p.add_argument("--layers", type=int, default=32)
p.add_argument("--rank", type=int, default=32)
p.add_argument("--hidden", type=int, default=32)
p.add_argument("--z-dim", type=int, default=32)
a = p.parse_args()

H, I, r, hid, zd = 4096, 11008, a.rank, a.hidden, a.z_dim
shapes = {"self_attn.q_proj": (H, H), "self_attn.k_proj": (H, H), "self_attn.v_proj": (H, H),
          "mlp.up_proj": (I, H), "mlp.down_proj": (H, I)}
modules = {}
for l in range(a.layers):
    for name, (out, inn) in shapes.items():
        modules[f"model.layers.{l}.{name}"] = (out, inn)

tensors = []  # (name, shape)
for m, (out, inn) in modules.items():
    P = r * inn + out * r
    pre = f"base_model.model.{m}.op_mlp."
    tensors += [(pre + "z", [zd]), (pre + "fc1.weight", [hid, zd]), (pre + "fc1.bias", [hid]),
                (pre + "fc2.weight", [P, hid]), (pre + "fc2.bias", [P])]
tensors.sort(key=lambda t: t[0].encode())  # all F32: the reference orders by name

header = {"__metadata__": {"format": "pt",
                           "op_module_shapes": json.dumps({m: [o, i] for m, (o, i) in modules.items()}, separators=(",", ":"))}}
off = 0
for name, shape in tensors:
    n = int(np.prod(shape)) * 4
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + n]}
    off += n
hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
hb += b" " * ((8 - len(hb) % 8) % 8)

os.makedirs(a.output, exist_ok=True)
peft = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": sorted({n.split(".")[-1] for n in shapes}),
        "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "bias": "none", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "llama-7b-shaped", "rank_pattern": {}, "alpha_pattern": {}, "lora_dropout": 0.0}
with open(os.path.join(a.output, "op_config.json"), "w") as f:
    json.dump({"format": "op-lora", "format_version": 1, "peft_config": peft,
               "mlp": {"hidden": hid, "z_dim": zd, "activation": "relu"}}, f, indent=2, sort_keys=True)

rng = np.random.default_rng(0)
block = rng.standard_normal(1 << 22, dtype=np.float32) * 0.02  # 16 MB of values, reused
tmp = os.path.join(a.output, ".op_model.safetensors.tmp")
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(hb)))
    f.write(hb)
    for name, shape in tensors:
        n = int(np.prod(shape))
        if name.endswith(".fc2.weight"):
            left = n
            start = int(rng.integers(0, 1 << 20))
            while left > 0:
                k = min(left, block.size - start)
                f.write(block[start:start + k].tobytes())
                left -= k
                start = 0
        elif name.endswith(".z"):
            f.write(rng.standard_normal(n, dtype=np.float32).tobytes())
        elif name.endswith(".fc1.weight"):
            f.write(rng.uniform(-1 / np.sqrt(zd), 1 / np.sqrt(zd), n).astype(np.float32).tobytes())
        else:
            f.write(np.zeros(n, np.float32).tobytes())
os.replace(tmp, os.path.join(a.output, "op_model.safetensors"))
print(f"{a.output}: {len(modules)} modules, {off / 1e9:.2f} GB of tensors")
