#!/usr/bin/env python3
"""A LLaMA-shaped BF16 base and a fine-tuned copy for the extraction benchmark.

    python3 bench/make_extract_pair.py OUT [--layers 16] [--hidden 2048] [--intermediate 5504]
        [--vocab 32000] [--rank 64] [--noise 1e-4]

Writes OUT/base/ and OUT/tuned/ (config.json + model.safetensors each). Base weights are
N(0, 0.02) in bf16; every linear weight of the tuned copy is base + a rank-64 delta (entries
about 2e-3) + N(0, noise), rounded to bf16 (which adds its own ~4e-5 rounding noise).
Embeddings, norms and lm_head are identical. Deterministic (seeded).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--layers", type=int, default=16)
p.add_argument("--hidden", type=int, default=2048)
p.add_argument("--intermediate", type=int, default=5504)
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--rank", type=int, default=64)
p.add_argument("--noise", type=float, default=1e-4)
a = p.parse_args()
g = torch.Generator().manual_seed(64)
h, i = a.hidden, a.intermediate
shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h), "self_attn.o_proj": (h, h),
          "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}
base, tuned = {}, {}
emb = (torch.randn(a.vocab, h, generator=g) * 0.02).bfloat16()
head = (torch.randn(a.vocab, h, generator=g) * 0.02).bfloat16()
base["model.embed_tokens.weight"] = tuned["model.embed_tokens.weight"] = emb
base["lm_head.weight"] = tuned["lm_head.weight"] = head
base["model.norm.weight"] = tuned["model.norm.weight"] = torch.ones(h).bfloat16()
for layer in range(a.layers):
    for name in ("input_layernorm", "post_attention_layernorm"):
        key = f"model.layers.{layer}.{name}.weight"
        base[key] = tuned[key] = torch.ones(h).bfloat16()
    for name, (o, n) in shapes.items():
        key = f"model.layers.{layer}.{name}.weight"
        w = (torch.randn(o, n, generator=g) * 0.02).bfloat16()
        b = torch.randn(o, a.rank, generator=g) * (2e-3 / a.rank ** 0.5) ** 0.5
        aa = torch.randn(a.rank, n, generator=g) * (2e-3 / a.rank ** 0.5) ** 0.5
        delta = b @ aa + torch.randn(o, n, generator=g) * a.noise
        base[key] = w
        tuned[key] = (w.float() + delta).bfloat16()
config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": i,
          "num_hidden_layers": a.layers, "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": a.vocab,
          "torch_dtype": "bfloat16", "tie_word_embeddings": False}
for name, tensors in (("base", base), ("tuned", tuned)):
    d = os.path.join(a.out, name)
    os.makedirs(d, exist_ok=True)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
print(f"wrote {a.out}/base and {a.out}/tuned: {a.layers} layers, {7 * a.layers} linear modules")
