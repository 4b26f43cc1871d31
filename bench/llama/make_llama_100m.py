#!/usr/bin/env python3
"""Write the ~100M-parameter LLaMA-shaped model (random weights) and the token data set of the
training benchmark (bench/bench_llama_train.sh, issue 12 "Performance").

    python3 bench/llama/make_llama_100m.py --out bench/data/llama-100m [--rows 64] [--seq 256]
        [--dtype f32|bf16] [--untied]

Writes OUT/model/ (LlamaForCausalLM.save_pretrained: config.json + model.safetensors, F32 by
default) and OUT/train.safetensors (`input_ids`, int64 [rows, seq], uniform random tokens in
1 ..< vocab; no labels or mask: labels = input_ids, every row full length). Nothing is
downloaded; the model comes from a LlamaConfig with transformers' default init (std 0.02,
seed 0), which is all a timing needs. OUT/params.json records the shape and the counts.

Shape (default): hidden 768, 12 layers, 12 heads of 64, 4 KV heads (grouped-query), SiLU MLP
2048, vocab 32000, tied embeddings:
  per layer: q,o 2*768*768 + k,v 2*256*768 + gate,up,down 3*768*2048 + 2 norms = 6,293,760
  12 layers 75,525,120 + embedding 24,576,000 + final norm 768 = 100,101,888 parameters
(--untied adds a separate lm_head: 124.7M). F32 on disk: 400 MB.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import safetensors.torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

transformers.logging.set_verbosity_error()

SHAPE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
             intermediate_size=2048, vocab_size=32000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--untied", action="store_true", help="separate lm_head (LLaMA-2 style)")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPE, max_position_embeddings=max(2048, args.seq), rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=not args.untied,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    dtype = torch.float32 if args.dtype == "f32" else torch.bfloat16
    model = model.to(dtype)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    model_dir = args.out / "model"
    model.save_pretrained(str(model_dir))
    (model_dir / "generation_config.json").unlink(missing_ok=True)

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg.vocab_size, (args.rows, args.seq), generator=g, dtype=torch.int64)
    safetensors.torch.save_file({"input_ids": ids}, str(args.out / "train.safetensors"), metadata={"format": "pt"})

    info = {**SHAPE, "tie_word_embeddings": not args.untied, "dtype": args.dtype, "parameters": n_params,
            "rows": args.rows, "seq": args.seq, "transformers": transformers.__version__, "torch": torch.__version__}
    (args.out / "params.json").write_text(json.dumps(info, indent=2) + "\n")
    size = sum(f.stat().st_size for f in model_dir.iterdir())
    print(f"wrote {model_dir} ({n_params / 1e6:.1f}M parameters, {args.dtype}, {size / 1e6:.0f} MB) and "
          f"{args.out / 'train.safetensors'} ({args.rows} x {args.seq})", flush=True)


if __name__ == "__main__":
    main()
