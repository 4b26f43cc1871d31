#!/usr/bin/env python3
"""Collects raw seed inputs for each fuzz target from fixtures/ into OUT/<target>/.

scripts/fuzz.sh --seed runs this, then lets libFuzzer keep only the inputs that add
coverage (-merge=1) into fixtures/fuzz/<target>/, which is what gets committed.
Safetensors files larger than MAX_FILE are cut to 8 + N bytes (the header alone).
"""
import hashlib
import json
import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
MAX_FILE = 4096


def put(out, target, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def safetensors_seed(path):
    data = path.read_bytes()
    if len(data) <= MAX_FILE:
        return data
    if len(data) >= 8:
        n = struct.unpack("<Q", data[:8])[0]
        if 8 + n <= len(data) and n <= MAX_FILE:
            return data[: 8 + n]
    return data[:MAX_FILE]


def main(out):
    out = pathlib.Path(out)
    # GGUF files whole (the fixtures are small; the parser reads the header and tensor table).
    for p in sorted(FIX.rglob("*.gguf")):
        if "fuzz" not in p.parts:
            put(out, "gguf", p.read_bytes()[: 4 * MAX_FILE])
    for p in sorted(FIX.rglob("*.safetensors")):
        seed = safetensors_seed(p)
        put(out, "header", seed)
        put(out, "file", seed)
    # A small zstd-compressed file, so the file target reaches the .zst reader.
    for name in ("many_mixed", "special_values"):
        raw = (FIX / "safetensors/valid" / f"{name}.safetensors").read_bytes()
        z = subprocess.run(["zstd", "-q", "-c", "-19"], input=raw, capture_output=True)
        if z.returncode == 0:
            put(out, "file", z.stdout)
    for p in sorted(FIX.rglob("adapter_config.json")):
        put(out, "adapter_config", p.read_bytes())
    for p in sorted(FIX.rglob("op_config.json")):
        data = p.read_bytes()
        put(out, "op_config", data)
        # op_config.json embeds a PEFT config; it seeds the adapter target too.
        try:
            peft = json.loads(data).get("peft_config")
            if isinstance(peft, dict):
                put(out, "adapter_config", json.dumps(peft).encode())
        except (ValueError, AttributeError):
            pass
    for p in sorted(FIX.rglob("*.safetensors.index.json")):
        put(out, "shard_index", p.read_bytes())
    for p in sorted((FIX / "op/keymaps").glob("*.json")):
        put(out, "key_map", p.read_bytes())
    # Hand-written cases the fixtures lack.
    extra = ROOT / "Fuzz/extra_seeds"
    for target_dir in sorted(extra.iterdir()) if extra.is_dir() else []:
        for p in sorted(target_dir.iterdir()):
            put(out, target_dir.name, p.read_bytes())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gather_seeds.py OUT_DIR")
    main(sys.argv[1])
