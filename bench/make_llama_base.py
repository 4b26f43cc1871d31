#!/usr/bin/env python3
"""Write a LLaMA-shaped BF16 base model (about 1e9 parameters) and a rank-32 PEFT LoRA
adapter for the merge benchmark (numpy only).

    python3 bench/make_llama_base.py [--out bench/data] [--layers 16] [--hidden 2048]
        [--intermediate 5504] [--vocab 32000] [--heads 32] [--shard-size 1GB] [--rank 32]

Writes OUT/llama-1b/ (a Hugging Face model directory: config.json, tokenizer_config.json,
generation_config.json, model-0000i-of-0000N.safetensors shards of at most --shard-size,
model.safetensors.index.json) and OUT/llama-1b-lora-r32/ (adapter_config.json +
adapter_model.safetensors, F32). Tensor names and shapes are those of transformers'
LlamaForCausalLM (untied lm_head); shards are filled greedily in state_dict order as
transformers does, and every file is laid out exactly as safetensors' save_file would
(see make_safetensors.py). Values: N(0, 0.02) weights (norms around 1), rounded from f32
to bf16 to nearest even with integer bit operations; LoRA A and B are both non-zero.
Generation is chunked: memory stays around 100 MB.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_safetensors import header_bytes, parse_size  # noqa: E402

CHUNK = 8 << 20  # elements per generated chunk


def f32_to_bf16_bits(x):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = x.view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        rounded = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), rounded)
    return rounded.astype(np.uint16)


def llama_tensors(layers, hidden, inter, vocab, heads, kv_heads):
    """(name, shape, kind) in LlamaForCausalLM.state_dict() order."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    out = [("model.embed_tokens.weight", (vocab, hidden), "w")]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (hidden, hidden), "w"),
            (p + "self_attn.k_proj.weight", (kv, hidden), "w"),
            (p + "self_attn.v_proj.weight", (kv, hidden), "w"),
            (p + "self_attn.o_proj.weight", (hidden, hidden), "w"),
            (p + "mlp.gate_proj.weight", (inter, hidden), "w"),
            (p + "mlp.up_proj.weight", (inter, hidden), "w"),
            (p + "mlp.down_proj.weight", (hidden, inter), "w"),
            (p + "input_layernorm.weight", (hidden,), "norm"),
            (p + "post_attention_layernorm.weight", (hidden,), "norm"),
        ]
    out += [("model.norm.weight", (hidden,), "norm"), ("lm_head.weight", (vocab, hidden), "w")]
    return out


def nelem(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def write_safetensors(path, tensors, dtype, width, produce):
    """tensors: [(name, shape)]; produce(name, shape, file) writes the tensor's bytes."""
    header, order = header_bytes([(n, dtype, s, nelem(s) * width) for n, s in tensors], {"format": "pt"})
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        for name, _, shape, nbytes in order:
            start = f.tell()
            produce(name, shape, f)
            assert f.tell() - start == nbytes, name
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("bench", "data"))
    ap.add_argument("--name", default=None, help="base directory name (default llama-1b)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5504)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"))
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="overwrite existing directories")
    args = ap.parse_args()
    kv_heads = args.kv_heads or args.heads

    base_name = args.name or "llama-1b"
    base = os.path.abspath(os.path.join(args.out, base_name))
    adapter = os.path.abspath(os.path.join(args.out, f"{base_name}-lora-r{args.rank}"))
    for d in (base, adapter):
        if os.path.exists(d):
            if not args.force:
                sys.exit(f"{d} exists (pass --force to replace it)")
            shutil.rmtree(d)
    os.makedirs(base)
    os.makedirs(adapter)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    tensors = llama_tensors(args.layers, args.hidden, args.intermediate, args.vocab, args.heads, kv_heads)
    params = sum(nelem(s) for _, s, _ in tensors)
    kinds = {n: k for n, _, k in tensors}

    # Shards: greedy in state_dict order, a new shard when the next tensor would overflow.
    shards, cur, cur_bytes = [], [], 0
    for name, shape, _ in tensors:
        b = nelem(shape) * 2
        if cur and cur_bytes + b > args.shard_size:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((name, shape))
        cur_bytes += b
    shards.append(cur)
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)] if n > 1 else ["model.safetensors"]

    def produce_bf16(name, shape, f):
        total, pos = nelem(shape), 0
        while pos < total:
            k = min(CHUNK, total - pos)
            x = rng.standard_normal(k, dtype=np.float32)
            x *= np.float32(0.02)
            if kinds[name] == "norm":
                x += np.float32(1.0)
            f.write(f32_to_bf16_bits(x).astype("<u2", copy=False).tobytes())
            pos += k

    weight_map = {}
    for shard, fname in zip(shards, names):
        write_safetensors(os.path.join(base, fname), shard, "BF16", 2, produce_bf16)
        for t, _ in shard:
            weight_map[t] = fname
        sys.stderr.write(f"  {fname}: {len(shard)} tensors, {os.path.getsize(os.path.join(base, fname))} bytes\n")
    if n > 1:
        index = {"metadata": {"total_parameters": params, "total_size": params * 2},
                 "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(base, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
            f.write("\n")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "dtype": "bfloat16",
        "eos_token_id": 2,
        "head_dim": args.hidden // args.heads,
        "hidden_act": "silu",
        "hidden_size": args.hidden,
        "initializer_range": 0.02,
        "intermediate_size": args.intermediate,
        "max_position_embeddings": 2048,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": args.heads,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "transformers_version": "5.23.0",
        "use_cache": True,
        "vocab_size": args.vocab,
    }
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(base, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "5.23.0"}, f, indent=2)
        f.write("\n")
    tok = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "clean_up_tokenization_spaces": False,
        "legacy": False, "model_max_length": 2048, "tokenizer_class": "LlamaTokenizer",
        "padding_side": "left",
    }
    with open(os.path.join(base, "tokenizer_config.json"), "w") as f:
        json.dump(tok, f, indent=2)
        f.write("\n")

    # ---- LoRA adapter -------------------------------------------------------------------
    r = args.rank
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = []
    for name, shape, _ in tensors:
        mod = name[: -len(".weight")]
        if mod.rsplit(".", 1)[-1] in targets:
            out_f, in_f = shape
            lora.append((f"base_model.model.{mod}.lora_A.weight", (r, in_f)))
            lora.append((f"base_model.model.{mod}.lora_B.weight", (out_f, r)))

    def produce_f32(name, shape, f):
        # A ~ N(0, 1/in) like kaiming-ish init; B ~ N(0, 0.01): a visible, modest delta.
        std = (1.0 / shape[1]) ** 0.5 if ".lora_A." in name else 0.01
        x = rng.standard_normal(nelem(shape), dtype=np.float32) * np.float32(std)
        f.write(x.astype("<f4", copy=False).tobytes())

    write_safetensors(os.path.join(adapter, "adapter_model.safetensors"), lora, "F32", 4, produce_f32)
    acfg = {
        "alpha_pattern": {},
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": args.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": {},
        "revision": None,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2)
        f.write("\n")
    sys.stderr.write(f"wrote {base} ({params / 1e9:.3f}e9 parameters, {n} shard(s)) and {adapter} "
                     f"({len(lora) // 2} LoRA modules, r={r}) in {time.time() - t0:.1f} s\n")


if __name__ == "__main__":
    main()
