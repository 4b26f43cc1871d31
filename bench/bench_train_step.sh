#!/usr/bin/env bash
# Seconds per training step of the rotated-digits MLP (bench/paper: 64 -> 512 -> ReLU -> 10,
# fc1+fc2 adapted, rank 4, alpha 8, batch 64), opconvert against PyTorch on the same device,
# reported as a ratio (torch s/step / opconvert s/step: >= 1 means opconvert is as fast).
#
#   bench/bench_train_step.sh [--device cpu|cuda|cuda:N] [--bin OPCONVERT] [--data DIR]
#                             [--torch-device D] [--json-out FILE]
#
# --device cpu (default): opconvert's CPU plugin with --threads $THREADS against torch with
#   torch.set_num_threads($THREADS) (default 2, the CI machine's cores).
# --device cuda: opconvert's CUDA plugin against torch on the same GPU (used by
#   scripts/gpu-check.sh; FP32, TF32 off on both sides).
# --torch-device: torch's device when it should differ (default: --device's).
#
# opconvert's s/step is steady-state: two runs with the same seed, 1 and $EPOCHS epochs,
# (E * s_per_epoch(E) - s_per_epoch(1)) / ((E - 1) * steps_per_epoch), so start-up, kernel
# compilation and the first epoch's warm-up cancel out; the median of $REPS such pairs.
# torch: bench/gpu/torch_digits_step.py (warm-up steps, then $TORCH_STEPS timed steps,
# $REPS repeats, median). Both read the loss back every step.
#
#   PY=python3         Python with torch + safetensors (missing torch: opconvert only)
#   THREADS=2 BATCH=64 EPOCHS=10 REPS=3 TORCH_STEPS=200 METHODS=lora,op-lora
#   OPCONVERT=PATH     same as --bin
#   NO_TORCH=1         opconvert only
# Default binary: ./opconvert in an unpacked GPU-check bundle, else the release build of
# scripts/package-gpu-bundle.sh (.build-release), else .build-bench (built if missing).
# Default data: data/ of the bundle, else bench/paper/data (made by
# bench/paper/make_rotated_digits.py; needs scikit-learn, scipy, torch).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cpu TORCH_DEVICE="" BIN=${OPCONVERT:-} DATA_DIR="" JSON_OUT=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --torch-device) TORCH_DEVICE=${2:?--torch-device needs a value}; shift 2 ;;
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --data) DATA_DIR=${2:?--data needs a folder}; shift 2 ;;
    --json-out) JSON_OUT=${2:?--json-out needs a file}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/p}' "$0" | cut -c3-; exit 0 ;;
    *) echo "bench_train_step.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
done
PY=${PY:-python3}
TORCH_DEVICE=${TORCH_DEVICE:-$DEVICE}
THREADS=${THREADS:-2} BATCH=${BATCH:-64} EPOCHS=${EPOCHS:-10} REPS=${REPS:-3}
TORCH_STEPS=${TORCH_STEPS:-200} METHODS=${METHODS:-lora,op-lora}
log() { printf 'bench_train_step: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
case $DEVICE in cpu|cuda|cuda:[0-9]*) ;; *) die "--device must be cpu, cuda or cuda:N (got '$DEVICE')" ;; esac
[[ $EPOCHS -ge 2 ]] || die "EPOCHS must be at least 2 (got $EPOCHS)"

if [[ -z $BIN ]]; then
  for c in "$ROOT/opconvert" "$ROOT/.build-release/release/opconvert" "$ROOT/.build-bench/release/opconvert"; do
    [[ -x $c && ! -d $c ]] && { BIN=$c; break; }
  done
fi
if [[ -z $BIN ]]; then
  command -v swift >/dev/null || die "no opconvert binary found and no swift to build one; give --bin"
  log "building opconvert (release, scratch .build-bench)"
  (cd "$ROOT" && nice swift build -c release --scratch-path .build-bench 2>&1 | tail -3) >&2
  BIN=$ROOT/.build-bench/release/opconvert
fi
[[ -x $BIN ]] || die "$BIN is not an executable"
if [[ -z $DATA_DIR ]]; then
  if [[ -f $ROOT/data/base.safetensors ]]; then DATA_DIR=$ROOT/data; else DATA_DIR=$ROOT/bench/paper/data; fi
fi
BASE=$DATA_DIR/base.safetensors TRAIN=$DATA_DIR/rotated_train.safetensors
[[ -f $BASE && -f $TRAIN ]] || die "missing $BASE or $TRAIN (make them: $PY bench/paper/make_rotated_digits.py --out bench/paper/data --seed 0 --angle 90)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-train-step.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --device exists once the GPU plugin is in; before that the CPU plugin is the only default.
DEVICE_ARGS=()
# (The help is read whole first: `grep -q` closing the pipe early would make it fail under pipefail.)
train_help=$("$BIN" train finetune --help 2>/dev/null || true)
if grep -q -- '--device' <<<"$train_help"; then DEVICE_ARGS=(--device "$DEVICE")
elif [[ $DEVICE != cpu ]]; then die "$BIN has no --device option (built before the CUDA plugin)"; fi
THREAD_ARGS=()
[[ $DEVICE == cpu ]] && THREAD_ARGS=(--threads "$THREADS")
COMMON=(--base "$BASE" --data "$TRAIN" --rank 4 --alpha 8 --mlp-hidden 32 --z-dim 32 --batch-size "$BATCH"
        --lr 1e-3 --schedule constant --warmup-steps 0 --weight-decay 0 --seed 0 --no-progress --json
        "${DEVICE_ARGS[@]}" "${THREAD_ARGS[@]}")

# Prints seconds_per_epoch and steps/epochs of one run.
run_opconvert() { # method epochs
  local out=$WORK/run.json
  if ! "$BIN" train "${COMMON[@]}" --method "$1" --epochs "$2" >"$out" 2>"$WORK/run.err"; then
    cat "$WORK/run.err" >&2; die "opconvert train --method $1 --epochs $2 failed (above)"
  fi
  "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["seconds_per_epoch"], d["steps"] // d["epochs"], d["plugin"])' "$out"
}

IFS=, read -ra METHOD_LIST <<<"$METHODS"
: >"$WORK/opconvert.txt"
for m in "${METHOD_LIST[@]}"; do
  for ((i = 1; i <= REPS; i++)); do
    read -r s1 spe plugin < <(run_opconvert "$m" 1)
    read -r sE _ _ < <(run_opconvert "$m" "$EPOCHS")
    echo "$m $s1 $sE $spe $plugin" >>"$WORK/opconvert.txt"
  done
done

TORCH_JSON=$WORK/torch.json TORCH_NOTE=""
if [[ -n ${NO_TORCH:-} ]]; then
  TORCH_NOTE="NO_TORCH set: torch timings skipped"; echo '[]' >"$TORCH_JSON"
elif "$PY" -c 'import torch, safetensors' 2>/dev/null; then
  log "torch: $METHODS on $TORCH_DEVICE ($TORCH_STEPS timed steps x $REPS)"
  if ! "$PY" "$ROOT/bench/gpu/torch_digits_step.py" --base "$BASE" --data "$TRAIN" --methods "$METHODS" \
      --device "$TORCH_DEVICE" --batch-size "$BATCH" --threads "$THREADS" --steps "$TORCH_STEPS" --repeats "$REPS" >"$TORCH_JSON"; then
    TORCH_NOTE="torch_digits_step.py failed"; echo '[]' >"$TORCH_JSON"
  fi
else
  TORCH_NOTE="torch (or safetensors) not importable by $PY: torch timings skipped"; echo '[]' >"$TORCH_JSON"
fi
[[ -n $TORCH_NOTE ]] && log "$TORCH_NOTE"

"$PY" - "$WORK/opconvert.txt" "$TORCH_JSON" "$EPOCHS" "$DEVICE" "$BATCH" "$THREADS" "$TORCH_NOTE" "${JSON_OUT:-}" <<'PY'
import json, statistics, sys
rows_path, torch_path, epochs, device, batch, threads, note, json_out = sys.argv[1:9]
E = int(epochs)
runs = {}
for line in open(rows_path):
    m, s1, sE, spe, plugin = line.split()
    steady = (E * float(sE) - float(s1)) / ((E - 1) * int(spe))
    runs.setdefault(m, {"all": [], "plugin": plugin})["all"].append(steady)
torch_rows = {r["method"]: r for r in json.load(open(torch_path))}
out = {"device": device, "batch_size": int(batch), "threads": int(threads) if device == "cpu" else None,
       "epochs": E, "note": note or None, "methods": []}
print(f"train step, rotated digits, batch {batch}, device {device}" + (f", {threads} threads" if device == "cpu" else ""))
print(f"{'method':<8} {'opconvert s/step':>17} {'torch s/step':>13} {'torch/opconvert':>16}")
for m, r in runs.items():
    ours = statistics.median(r["all"])
    t = torch_rows.get(m, {}).get("seconds_per_step")
    ratio = t / ours if t and ours > 0 else None
    out["methods"].append({"method": m, "plugin": r["plugin"], "opconvert_seconds_per_step": ours,
                           "opconvert_seconds_per_step_all": r["all"], "torch_seconds_per_step": t,
                           "torch_over_opconvert": ratio,
                           "torch_device_name": torch_rows.get(m, {}).get("device_name")})
    print(f"{m:<8} {ours:>17.6f} {(f'{t:.6f}' if t else '-'):>13} {(f'{ratio:.2f}x' if ratio else '-'):>16}")
if json_out:
    with open(json_out, "w") as f:
        json.dump(out, f, indent=1)
PY
