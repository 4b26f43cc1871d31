#!/usr/bin/env python3
"""Writes man/opconvert.1 (man(7) macros) from `opconvert --experimental-dump-help`.

    python3 scripts/generate-man.py OPCONVERT_BINARY [OUTPUT]

One page for every command: synopsis, description, each command with its arguments and
defaults, EXAMPLES, EXIT STATUS (read from Sources/OpConvertKit/ExitStatus.swift),
ENVIRONMENT. The page is ASCII only: groff drops characters it has no glyph for in an
ASCII locale ("Fits M  BA"), so help texts are transliterated here and anything left
over is an error naming the character.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ASCII = {
    "\u00b7": "*", "\u2248": "~", "\u2016": "||", "\u2212": "-", "\u00b2": "^2", "\u00b3": "^3",
    "\u03a3": "sum", "\u03c3": "sigma", "\u2192": "->", "\u2190": "<-", "\u2026": "...",
    "\u00d7": "x", "\u2014": "--", "\u2013": "-", "\u2264": "<=", "\u2265": ">=",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\u2032": "'",
    "\u03b1": "alpha", "\u03bb": "lambda", "\u2207": "grad", "\u221e": "inf", "\u2202": "d",
    "\u2211": "sum", "\u22c5": "*", "\u2022": "*", "\u0394": "Delta", "\u1d40": "^T",
}

EXAMPLES = [
    ("Merge a LoRA adapter into its base model (the bundled fixtures):",
     "opconvert merge fixtures/peft/models/llama fixtures/peft/adapters/llama_lora -o merged"),
    ("Two adapters at different weights, stored as bf16:",
     "opconvert merge BASE A B --weight 1 --weight 0.5 --dtype bf16 -o merged"),
    ("Materialize an OP-LoRA checkpoint as a PEFT adapter:",
     "opconvert materialize OP_CHECKPOINT --base BASE -o adapter"),
    ("Convert an adapter to GGUF, or cast a model to bf16 shards of at most 2 GB:",
     "opconvert convert ADAPTER --to gguf --base BASE -o adapter.gguf\n"
     "opconvert convert MODEL --dtype bf16 --max-shard-size 2GB -o MODEL_BF16"),
    ("Look inside any input; scripts read the JSON:",
     "opconvert inspect MODEL_OR_ADAPTER\nopconvert inspect ADAPTER --json"),
    ("Train OP-LoRA on the bundled demo network and data; the same on your own files, then merge:",
     "opconvert train --demo --epochs 30 -o demo-op\n"
     "opconvert train --base NET.safetensors --data DATA.safetensors --method op-lora -o op-ckpt\n"
     "opconvert merge NET.safetensors op-ckpt -o merged.safetensors"),
    ("Sweep learning rates for LoRA and OP-LoRA (sweep.csv, sweep.md, sweep.svg):",
     "opconvert train --demo --lr-sweep 1e-4,1e-3,1e-2 --sweep-dir sweep"),
    ("Check the kernel plugins this installation finds:",
     "opconvert plugin list\nopconvert plugin check --device cpu"),
    ("Install the shell completions by hand (scripts/install.sh does it):",
     "opconvert --generate-completion-script bash > ~/.local/share/bash-completion/completions/opconvert"),
]

ENVIRONMENT = [
    ("OPCONVERT_PLUGIN_PATH", "Colon-separated directories searched for the kernel plugins after the built-in "
     "places (beside the executable, then ../lib/opconvert from its resolved path, then the build directory)."),
    ("OPCONVERT_CUDA_LIBRARY_PATH", "Directory holding the CUDA libraries (libcuda, NVRTC, cuBLAS) the CUDA plugin loads."),
    ("OPCONVERT_DIRECT_IO", "0 keeps large writes buffered (no O_DIRECT)."),
    ("COLUMNS", "Width of the progress bar when the terminal does not report one (default 80)."),
]

SIGNALS = [(129, "interrupted by SIGHUP (128 + 1); unfinished outputs are removed"),
           (130, "interrupted by SIGINT (128 + 2, Ctrl-C); unfinished outputs are removed"),
           (143, "interrupted by SIGTERM (128 + 15); unfinished outputs are removed")]


def ascii_text(s, where):
    out = "".join(ASCII.get(ch, ch) for ch in s)
    bad = sorted({ch for ch in out if ord(ch) > 126 or (ord(ch) < 32 and ch not in "\n\t")})
    if bad:
        names = ", ".join("U+%04X %r" % (ord(c), c) for c in bad)
        sys.exit("generate-man: %s: no ASCII spelling for %s (add it to ASCII in scripts/generate-man.py)" % (where, names))
    return out


def esc(s, where):
    """Text for a man(7) line: backslashes and hyphens escaped, no control line start."""
    s = ascii_text(s, where).replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line[:1] in (".", "'") else line for line in s.split("\n"))


def exit_statuses():
    path = os.path.join(ROOT, "Sources/OpConvertKit/ExitStatus.swift")
    text = open(path, encoding="utf-8").read()
    rows, doc = [], []
    for line in text.split("\n"):
        line = line.strip()
        m = re.match(r"///\s?(.*)", line)
        if m:
            doc.append(m.group(1))
            continue
        m = re.match(r"case (\w+) = (\d+)", line)
        if m:
            rows.append((int(m.group(2)), " ".join(doc) or m.group(1)))
        doc = []
    if not rows:
        sys.exit("generate-man: no `case name = N` lines in " + path)
    return rows


def names(arg):
    out = []
    for n in arg.get("names", []):
        out.append(("\\-" if n["kind"] == "short" else "\\-\\-") + n["name"].replace("-", "\\-"))
    return out


def label(arg, where):
    value = esc(arg.get("valueName", ""), where)
    if arg["kind"] == "positional":
        return "\\fI" + value + "\\fR" + ("..." if arg.get("isRepeating") else "")
    head = ", ".join("\\fB" + n + "\\fR" for n in names(arg))
    return head + (" \\fI" + value + "\\fR" if arg["kind"] == "option" else "")


def synopsis(path, cmd):
    parts = ["\\fB" + " ".join(path) + "\\fR"]
    if cmd.get("subcommands"):
        parts.append("\\fIsubcommand\\fR")
    for a in cmd.get("arguments", []):
        if a["kind"] == "positional" and a.get("shouldDisplay", True):
            p = "\\fI" + a["valueName"].replace("-", "\\-") + "\\fR" + ("..." if a.get("isRepeating") else "")
            parts.append("[" + p + "]" if a.get("isOptional") else p)
    if any(a["kind"] != "positional" for a in cmd.get("arguments", [])):
        parts.append("[options]")
    return " ".join(parts)


def command_section(path, cmd, out):
    where = " ".join(path)
    out.append('.SS "%s"' % where)
    out.append(synopsis(path, cmd))
    out.append(".PP")
    if cmd.get("abstract"):
        out.append(esc(cmd["abstract"], where))
    if cmd.get("discussion"):
        out.append(".PP")
        out.append(esc(cmd["discussion"], where))
    args = [a for a in cmd.get("arguments", []) if a.get("shouldDisplay", True)
            and a.get("valueName") not in ("help", "version")]
    for a in args:
        text = a.get("abstract", "")
        default = a.get("defaultValue")
        if default not in (None, "") and a["kind"] != "flag":
            text += " (default: %s)" % default
        out.append(".TP")
        out.append(label(a, where))
        out.append(esc(text, where + " " + a.get("valueName", "")))
    if cmd.get("defaultSubcommand"):
        out.append(".PP")
        out.append(esc("Without a subcommand: %s %s." % (where, cmd["defaultSubcommand"]), where))
    for sub in cmd.get("subcommands", []):
        if sub["commandName"] == "help" or not sub.get("shouldDisplay", True):
            continue
        command_section(path + [sub["commandName"]], sub, out)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: generate-man.py OPCONVERT_BINARY [OUTPUT]")
    binary, output = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "man/opconvert.1")
    dump = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True).stdout)
    root = dump["command"]
    version = subprocess.run([binary, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    out = ['.TH OPCONVERT 1 "" "opconvert %s" "User Commands"' % esc(version, "version"),
           ".nh", ".ad l",
           ".SH NAME", "opconvert \\- " + esc(root.get("abstract", ""), "opconvert"),
           ".SH SYNOPSIS", synopsis(["opconvert"], root), ".br", "\\fBopconvert\\fR \\fB\\-\\-version\\fR | \\fB\\-\\-help\\fR",
           ".SH DESCRIPTION", esc(root.get("discussion", ""), "opconvert"),
           ".PP", esc("Every command takes --json (one JSON object on stdout), --no-progress and --progress "
                      "(the progress bar is drawn on stderr only when it is a terminal, unless --progress).", "opconvert"),
           ".SH COMMANDS"]
    for sub in root.get("subcommands", []):
        if sub["commandName"] == "help" or not sub.get("shouldDisplay", True):
            continue
        command_section(["opconvert", sub["commandName"]], sub, out)
    out.append(".SH EXAMPLES")
    for text, commands in EXAMPLES:
        out += [".PP", esc(text, "EXAMPLES"), ".PP", ".RS 4", ".nf"]
        out += [esc(c, "EXAMPLES") for c in commands.split("\n")]
        out += [".fi", ".RE"]
    out.append(".SH EXIT STATUS")
    for code, text in exit_statuses() + SIGNALS:
        out += [".TP 6", "\\fB%d\\fR" % code, esc(text[:1].upper() + text[1:], "EXIT STATUS")]
    out.append(".PP")
    out.append(esc("Errors are one line on stderr naming the file, tensor or module; with --json a JSON "
                   "object with \"ok\": false, \"error\" and \"exit_code\" is also printed on stdout.", "EXIT STATUS"))
    out.append(".SH ENVIRONMENT")
    for name, text in ENVIRONMENT:
        out += [".TP", "\\fB%s\\fR" % name.replace("-", "\\-"), esc(text, "ENVIRONMENT")]
    out.append(".SH FILES")
    out += [".TP", "\\fIPREFIX\\fB/lib/opconvert/\\fR",
            esc("The kernel plugins (libOpConvertCPUPlugin.so, libOpConvertCUDAPlugin.so) of an installed "
                "opconvert (scripts/install.sh); a build keeps them beside the executable.", "FILES")]
    out.append(".SH SEE ALSO")
    out.append(esc("README.md, docs/ in the source tree.", "SEE ALSO"))
    text = "\n".join(out) + "\n"
    tmp = output + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, output)


if __name__ == "__main__":
    main()
