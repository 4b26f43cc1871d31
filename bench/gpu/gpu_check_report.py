#!/usr/bin/env python3
"""Bookkeeping for scripts/gpu-check.sh (standard library only).

    gpu_check_report.py record STEPS.jsonl NAME RESULT SECONDS KIND NOTE [KEY=VALUE ...]
        appends one step. RESULT: pass, fail, skip, info, goal-met, goal-missed.
        KIND: correctness (a fail makes the check fail) or performance or info.
        VALUE is parsed as JSON when it can be (numbers, null, objects), else kept as text.
    gpu_check_report.py summarize STEPS.jsonl SUMMARY.json [KEY=VALUE ...]
        prints the table and writes SUMMARY.json ({"ok", "failed", "steps", ...KEY: VALUE});
        exit 1 when a correctness step failed.
    gpu_check_report.py plugins PLUGIN_LIST.json
        one line naming the plugins found in `opconvert plugin list --json` and their
        boolean fields (the probe's result), whatever the exact layout.
    gpu_check_report.py checkline LOG
        "N M" from the last `N passed, M failed` line of a `plugin check` log, or "- -".
"""
import json
import re
import sys


def parse_value(v):
    try:
        return json.loads(v)
    except ValueError:
        return v


def kv(args):
    out = {}
    for a in args:
        k, _, v = a.partition("=")
        out[k] = parse_value(v)
    return out


def record(path, name, result, seconds, kind, note, *pairs):
    step = {"step": name, "result": result, "seconds": round(float(seconds), 2), "kind": kind,
            "note": note or None, "numbers": kv(pairs)}
    with open(path, "a") as f:
        f.write(json.dumps(step) + "\n")


def fmt_numbers(nums):
    parts = []
    for k, v in nums.items():
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, separators=(",", ":"))
        parts.append(f"{k}={v}")
    return " ".join(parts)


def summarize(path, out_path, *pairs):
    steps = []
    try:
        with open(path) as f:
            steps = [json.loads(line) for line in f if line.strip()]
    except OSError:
        pass
    failed = [s["step"] for s in steps if s["kind"] == "correctness" and s["result"] != "pass"
              and s["result"] != "skip"]
    summary = dict(kv(pairs))
    summary.update({"ok": not failed, "failed": failed, "steps": steps})
    with open(out_path, "w") as f:
        json.dump(summary, f, indent=1)
    w = max([len(s["step"]) for s in steps] + [4])
    print()
    print("=" * 100)
    print("GPU check summary" + "".join(f"  {k}: {v}" for k, v in kv(pairs).items() if v not in (None, "")))
    print(f"{'step':<{w}}  {'result':<11} {'secs':>6}  numbers / note")
    print("-" * 100)
    for s in steps:
        text = fmt_numbers(s["numbers"])
        if s.get("note"):
            text = (text + "  " if text else "") + f"({s['note']})"
        print(f"{s['step']:<{w}}  {s['result']:<11} {s['seconds']:>6.1f}  {text}")
    print("-" * 100)
    print("RESULT: " + ("PASS (every correctness step passed)" if not failed else "FAIL: " + ", ".join(failed)))
    return 0 if not failed else 1


def plugins(path):
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        print(f"unreadable plugin list: {e}")
        return 0
    found = []

    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("name"), str):
                flags = [f"{k}={str(v).lower()}" for k, v in x.items() if isinstance(v, bool)]
                dev = x.get("device_count", x.get("devices"))
                if isinstance(dev, int):
                    flags.append(f"devices={dev}")
                found.append(x["name"] + (f"({','.join(flags)})" if flags else ""))
            for v in x.values():
                if isinstance(v, (dict, list)):
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    print("; ".join(found) if found else "no named plugin entries")
    return 0


def checkline(path):
    last = None
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = re.match(r"^\s*(\d+) passed, (\d+) failed\s*$", line)
                if m:
                    last = m.groups()
    except OSError:
        pass
    print(" ".join(last) if last else "- -")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 64
    cmd, args = argv[1], argv[2:]
    if cmd == "record" and len(args) >= 6:
        record(*args)
        return 0
    if cmd == "summarize" and len(args) >= 2:
        return summarize(*args)
    if cmd == "plugins" and len(args) == 1:
        return plugins(args[0])
    if cmd == "checkline" and len(args) == 1:
        return checkline(args[0])
    print(__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv))
