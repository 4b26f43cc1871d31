#!/usr/bin/env python3
"""Inputs and the diffusers reference run for bench/bench_sd_merge.sh.

    sd_reference.py make DIR [--small]
        DIR/sdxl.safetensors     SDXL-shaped single-file checkpoint, F16, random values,
                                 real SGM names/shapes (UNet from diffusers' SDXL config,
                                 CLIP ViT-L text encoder, OpenCLIP bigG with fused in_proj,
                                 VAE): ~6.9 GB (--small: the same layout ~1/8 the bytes)
        DIR/lora.safetensors     rank-32 kohya LoRA (SGM names, F16, alpha 16) on every
                                 attention, ff and proj_in/proj_out layer of the UNet
        DIR/unet/                the UNet in diffusers layout (config.json +
                                 diffusion_pytorch_model.safetensors, F16, random)
    sd_reference.py loha DIR
        DIR/loha.safetensors     rank-8 LyCORIS LoHa (hada_w1_a/b, hada_w2_a/b, alpha 4, F16)
                                 on the same modules as DIR/lora.safetensors (made from it)
    sd_reference.py diffusers DIR OUT
        the diffusers path, timed by the caller: UNet from DIR/unet, load_lora_weights of
        DIR/lora.safetensors, fuse_lora, unload_lora_weights, save_pretrained to OUT, fsync.
        Prints its phase times as JSON.

Tensors are written one at a time (never the whole model in memory); names and shapes
come from models built on the meta device. The SGM names use the mapping of
fixtures/scripts/make_sd_fixtures.py (checked there against diffusers' own converters).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

os.environ["PYTHONHASHSEED"] = "0"  # the fixture script re-executes itself otherwise
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures" / "scripts"))


def sdxl_configs(small: bool):
    # diffusers' stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (the fields that
    # shape tensors); --small divides the widths by ~3 and keeps the structure.
    w = (96, 192, 384) if small else (320, 640, 1280)
    te1_h, te2_h = (256, 384) if small else (768, 1280)
    unet = dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=w,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(3, 6, 12) if small else (5, 10, 20),
        cross_attention_dim=te1_h + te2_h, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=te2_h + 6 * 256, norm_num_groups=32,
    )
    te1 = dict(vocab_size=49408, hidden_size=te1_h, intermediate_size=4 * te1_h, num_hidden_layers=12,
               num_attention_heads=te1_h // 64, max_position_embeddings=77, projection_dim=te1_h,
               hidden_act="quick_gelu")
    te2 = dict(vocab_size=49408, hidden_size=te2_h, intermediate_size=4 * te2_h, num_hidden_layers=32,
               num_attention_heads=te2_h // 64, max_position_embeddings=77, projection_dim=te2_h,
               hidden_act="gelu")
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
               block_out_channels=(64, 128, 256, 256) if small else (128, 256, 512, 512),
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
               sample_size=1024)
    return unet, te1, te2, vae


def meta_models(small: bool):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    u, t1, t2, v = sdxl_configs(small)
    with torch.device("meta"):
        return (UNet2DConditionModel(**u), CLIPTextModel(CLIPTextConfig(**t1)),
                CLIPTextModelWithProjection(CLIPTextConfig(**t2)), AutoencoderKL(**v))


def shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}


class StreamingWriter:
    """safetensors F16 file written tensor by tensor: header first, then the data."""

    def __init__(self, path: Path, entries: list[tuple[str, tuple]], metadata=None):
        header, off = {}, 0
        for name, shape in entries:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)) + raw)
        self.entries = entries

    def write_all(self, rng, scale=0.02):
        chunk = 1 << 24
        for _, shape in self.entries:
            n = int(np.prod(shape))
            while n > 0:
                k = min(n, chunk)
                self.f.write(((rng.random(k, dtype=np.float32) - 0.5) * (2 * scale)).astype(np.float16).tobytes())
                n -= k
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


def make(out: Path, small: bool):
    import make_sd_fixtures as fx  # mapping helpers (imports diffusers/torch)
    out.mkdir(parents=True, exist_ok=True)
    unet, te1, te2, vae = meta_models(small)
    cfg = dict(unet.config)
    entries = []
    for k, s in shapes(unet).items():
        entries.append(("model.diffusion_model." + fx.unet_path_to_ldm(k, cfg), s))
    for k, s in shapes(te1).items():
        entries.append(("conditioner.embedders.0.transformer." + fx.te_canon(te1, k), s))
    t2 = shapes(te2)
    for k, s in t2.items():
        name = "conditioner.embedders.1.model." + fx.openclip_name(k)
        if k.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            continue  # fused into in_proj with q
        if "in_proj_" in name:
            s = (3 * s[0],) + s[1:]
        if name.endswith("text_projection"):
            s = (s[1], s[0])
        entries.append((name, s))
    for k, s in shapes(vae).items():
        name = fx.vae_path_to_ldm(k, 4)
        if ".mid.attn_1." in name and name.endswith(".weight") and len(s) == 2:
            s = s + (1, 1)
        entries.append(("first_stage_model." + name, s))
    entries.sort()
    rng = np.random.default_rng(0)
    t0 = time.time()
    StreamingWriter(out / "sdxl.safetensors", entries, {"format": "pt"}).write_all(rng)
    print(f"sdxl.safetensors: {len(entries)} tensors in {time.time() - t0:.0f} s", file=sys.stderr)

    # rank-32 kohya LoRA, SGM names, on attention / ff / proj layers of the UNet
    lora_entries, alphas = [], []
    import torch
    for n, m in unet.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if not (".attentions." in n and (".transformer_blocks." in n or n.endswith(("proj_in", "proj_out")))):
            continue
        stem = fx.kohya("lora_unet_", fx.unet_path_to_ldm(n, cfg))
        w = m.weight.shape
        lora_entries.append((f"{stem}.lora_down.weight", (32, w[1])))
        lora_entries.append((f"{stem}.lora_up.weight", (w[0], 32)))
        alphas.append(f"{stem}.alpha")
    lora_entries += [(a, ()) for a in alphas]
    lora_entries.sort()
    path = out / "lora.safetensors"
    w = StreamingWriter(path, lora_entries, {"ss_network_module": "networks.lora", "ss_network_dim": "32",
                                             "ss_network_alpha": "16"})
    for name, shape in lora_entries:
        if name.endswith(".alpha"):
            w.f.write(np.float16(16).tobytes())
        else:
            w.f.write((rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.01).astype(np.float16).tobytes())
    w.f.close()
    print(f"lora.safetensors: {len(alphas)} modules", file=sys.stderr)

    # the UNet in diffusers layout for the diffusers path
    ud = out / "unet"
    ud.mkdir(exist_ok=True)
    (ud / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **{
        k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}}, indent=1))
    StreamingWriter(ud / "diffusion_pytorch_model.safetensors", sorted(shapes(unet).items()),
                    {"format": "pt"}).write_all(rng)
    print("unet/: written", file=sys.stderr)


def make_loha(data: Path, rank: int = 8):
    raw = (data / "lora.safetensors").read_bytes()[:1 << 24]
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    entries, alphas = [], []
    for name, info in sorted(header.items()):
        if not name.endswith(".lora_down.weight"):
            continue
        stem = name[: -len(".lora_down.weight")]
        fan_in = int(np.prod(info["shape"][1:]))
        out = header[stem + ".lora_up.weight"]["shape"][0]
        for h in ("1", "2"):
            entries.append((f"{stem}.hada_w{h}_a", (out, rank)))
            entries.append((f"{stem}.hada_w{h}_b", (rank, fan_in)))
        alphas.append(stem + ".alpha")
    entries += [(a, ()) for a in alphas]
    entries.sort()
    rng = np.random.default_rng(1)
    w = StreamingWriter(data / "loha.safetensors", entries, {"ss_network_module": "lycoris.kohya", "ss_network_dim": str(rank),
                                                            "ss_network_alpha": "4"})
    for name, shape in entries:
        if name.endswith(".alpha"):
            w.f.write(np.float16(4).tobytes())
        else:
            w.f.write((rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.05).astype(np.float16).tobytes())
    w.f.close()
    print(f"loha.safetensors: {len(alphas)} modules, rank {rank}", file=sys.stderr)


def diffusers_path(data: Path, out: Path):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    times = {}
    t = time.time()
    unet = UNet2DConditionModel.from_pretrained(str(data / "unet"), torch_dtype=torch.float16)
    times["load_unet"] = time.time() - t
    pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, unet=unet, scheduler=DDIMScheduler())
    t = time.time()
    pipe.load_lora_weights(str(data), weight_name="lora.safetensors")
    times["load_lora"] = time.time() - t
    t = time.time()
    pipe.fuse_lora(components=["unet"], lora_scale=1.0)
    pipe.unload_lora_weights()
    times["fuse"] = time.time() - t
    t = time.time()
    unet.save_pretrained(str(out), safe_serialization=True)
    for f in out.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    times["save_sync"] = time.time() - t
    print(json.dumps({k: round(v, 2) for k, v in times.items()}))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "make":
        make(Path(sys.argv[2]), "--small" in sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "loha":
        make_loha(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "diffusers":
        diffusers_path(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
