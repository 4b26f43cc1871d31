#!/usr/bin/env bash
# The whole GPU check of the CUDA plugin, on a machine with an NVIDIA GPU, its driver and
# (optionally) PyTorch, but no Swift toolchain. It runs the prebuilt bundle that
# scripts/package-gpu-bundle.sh makes (a static-stdlib release build, its libraries, the
# rotated-digits data and bench/gpu/*.py); see docs/gpu-check.md.
#
#   scripts/gpu-check.sh [ARCHIVE | BUNDLE_DIR]
#
# Without an argument: the bundle this script sits in (gpu-check.sh inside an unpacked
# bundle), else the newest dist/opconvert-gpu-check-*.tar.{xz,zst,gz} of the checkout.
# Steps, each time-boxed (timeout), all within $BUDGET seconds:
#   bundle      opconvert --version runs (libraries resolve on this machine)
#   gpu, torch  nvidia-smi and PyTorch, for the record
#   plugin-list opconvert plugin list --json
#   check-*     opconvert plugin check --device cpu, --device cuda --compile-only, --device cuda
#   parity-*    rotated-digits lora and op-lora runs (same flags and seed) on cuda and on cpu with
#               --loss-csv: every step's loss within $TOL relative (bench/gpu/compare_losses.py)
#   step-*      seconds per training step, opconvert cuda vs PyTorch on the same GPU
#               (bench/bench_train_step.sh --device cuda); goal: no slower than PyTorch
#   gemm        opconvert plugin bench --device cuda --json vs torch.matmul on the same shapes,
#               FP32, TF32 off (bench/gpu/torch_gemm.py); goal: >= 0.90 on the large shapes
# Prints one summary table at the end and writes it, with every log, to $RESULTS:
#   summary.json, summary.txt, gpu-check.log, details.tar.gz
# Exit status: 0 when every correctness step (bundle, plugin-list, check-*, parity-*) passed,
# 1 otherwise, 66 when no bundle is found. Installs nothing; without torch the torch
# comparisons are skipped (and say so).
#
#   RESULTS=DIR   where the results go (default: $OUT when set, else ./gpu-check-results)
#   DEVICE=cuda   or cuda:N
#   BUDGET=500    seconds for the whole check (steps are cut short or skipped past it)
#   TOL=1e-4      per-step relative loss tolerance, cuda vs cpu
#   PARITY_EPOCHS=3   epochs of the parity runs (23 steps each)
#   PY=python3    Python for the comparisons (torch needed only for the timings)
#   KEEP=1        keep the unpacked bundle (its path is printed)
#   TORCH_DEVICE  torch's device for the comparisons (default $DEVICE; cpu only to try the
#                 script out on a machine without a GPU)
#   OPCONVERT_CUDA_LIBRARY_PATH  passed through to the plugin; when unset and a CUDA step
#                 exits 69 (the probe failed), the check retries it once with the folders it finds
#                 (pip wheels' nvidia/*/lib next to $PY, /usr/local/cuda*/lib64) and says so.
set -euo pipefail
SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-500}
TOL=${TOL:-1e-4}
PARITY_EPOCHS=${PARITY_EPOCHS:-3}
RESULTS=${RESULTS:-${OUT:-$PWD/gpu-check-results}}
TORCH_DEVICE=${TORCH_DEVICE:-$DEVICE}
START=${EPOCHREALTIME:-$(date +%s)}

say() { printf '[gpu-check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit "${2:-1}"; }
now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
left() { awk -v a="$START" -v b="$(now)" -v t="$BUDGET" 'BEGIN { printf "%d", t - (b - a) }'; }

command -v "$PY" >/dev/null || die "no $PY (python3 is needed for the comparisons and the report)"
command -v timeout >/dev/null || die "no 'timeout' (coreutils) on this machine"
case $DEVICE in cuda|cuda:[0-9]*) ;; *) die "DEVICE must be cuda or cuda:N (got '$DEVICE')" 64 ;; esac

# --- the bundle ----------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-gpu-check.XXXXXX")
cleanup() { if [[ -n ${KEEP:-} ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

unpack() { # archive
  local a=$1 dest=$WORK/bundle
  mkdir -p "$dest"
  say "unpacking $a ($(du -h "$a" | cut -f1))"
  case $a in
    *.tar.zst)
      if command -v zstd >/dev/null; then zstd -dc -- "$a" | tar -xf - -C "$dest"
      elif "$PY" -c 'import zstandard' 2>/dev/null; then
        "$PY" -c 'import sys, tarfile, zstandard
with open(sys.argv[1], "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
    tarfile.open(fileobj=r, mode="r|").extractall(sys.argv[2])' "$a" "$dest"
      else die "$a is zstd-compressed and this machine has neither zstd nor python's zstandard; repack with FORMAT=xz" 69; fi ;;
    *.tar.xz|*.tar.gz|*.tgz)
      if tar --version >/dev/null 2>&1 && { [[ $a != *.xz ]] || command -v xz >/dev/null; }; then tar -xf "$a" -C "$dest"
      else "$PY" -c 'import sys, tarfile
t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' "$a" "$dest"; fi ;;
    *) die "$a: not a .tar.xz, .tar.zst or .tar.gz archive" 64 ;;
  esac
  local exe
  exe=$(find "$dest" -mindepth 3 -maxdepth 3 -path '*/bin/opconvert' -type f | head -n 1)
  [[ -n $exe ]] || die "$a holds no */bin/opconvert: not a bundle of scripts/package-gpu-bundle.sh" 65
  BUNDLE=$(dirname "$(dirname "$exe")")
}

ARG=${1:-}
BUNDLE=""
if [[ -n $ARG ]]; then
  if [[ -d $ARG ]]; then
    [[ -x $ARG/bin/opconvert ]] || die "$ARG has no bin/opconvert: not an unpacked bundle" 66
    BUNDLE=$(cd "$ARG" && pwd)
  elif [[ -f $ARG ]]; then unpack "$ARG"
  else die "$ARG: no such archive or folder" 66; fi
elif [[ -x $SELF_DIR/bin/opconvert ]]; then
  BUNDLE=$SELF_DIR
else
  newest=$(ls -t "$SELF_DIR"/../dist/opconvert-gpu-check-*.tar.* 2>/dev/null | head -n 1 || true)
  [[ -n $newest ]] || die "no bundle: give an archive or folder, or make one with scripts/package-gpu-bundle.sh (dist/opconvert-gpu-check-*.tar.*)" 66
  unpack "$newest"
fi
OPC=$BUNDLE/opconvert
[[ -x $OPC ]] || die "$BUNDLE has no opconvert wrapper" 65
DATA=$BUNDLE/data
BASE=$DATA/base.safetensors TRAIN=$DATA/rotated_train.safetensors
REPORT=$BUNDLE/bench/gpu/gpu_check_report.py
[[ -f $REPORT ]] || REPORT=$SELF_DIR/../bench/gpu/gpu_check_report.py
[[ -f $REPORT ]] || die "no bench/gpu/gpu_check_report.py in $BUNDLE" 65

mkdir -p "$RESULTS"
D=$WORK/details
mkdir -p "$D"
STEPS=$D/steps.jsonl
LOG=$RESULTS/gpu-check.log
: >"$STEPS"
: >"$LOG"
# Kernel cache: a fresh one, so the first CUDA context compiles and the later ones reuse it.
export XDG_CACHE_HOME=$WORK/cache
mkdir -p "$XDG_CACHE_HOME"
BUNDLE_ID=$(head -n 1 "$BUNDLE/VERSION" 2>/dev/null || echo unknown)
say "bundle $BUNDLE_ID in $BUNDLE; results in $RESULTS; budget ${BUDGET}s"

record() { "$PY" "$REPORT" record "$STEPS" "$@"; }

# run NAME TIMEOUT CMD...: stdout to $D/NAME.out, stderr to $D/NAME.err, both into the log.
# Sets RC (124: timed out, 125: skipped for lack of budget) and SECS.
run() {
  local name=$1 t=$2 rem; shift 2
  rem=$(left)
  if (( rem < 15 )); then RC=125 SECS=0; say "$name: skipped (budget spent)"; echo "--- $name: skipped, budget spent" >>"$LOG"; return; fi
  (( t > rem - 10 )) && t=$((rem - 10))
  local t0 shown=$*; t0=$(now)
  shown=${shown//"$BUNDLE"/<bundle>}
  say "$name: ${shown//"$WORK"/<work>}"
  set +e
  timeout -k 10 "$t" "$@" >"$D/$name.out" 2>"$D/$name.err"
  RC=$?
  set -e
  SECS=$(elapsed "$t0")
  { echo "--- $name (exit $RC, ${SECS}s, timeout ${t}s): $*"; cat "$D/$name.out"; echo "--- $name stderr:"; cat "$D/$name.err"; } >>"$LOG"
  (( RC == 124 || RC == 137 )) && say "$name: timed out after ${t}s"
  return 0
}
status_of() { if (( RC == 0 )); then echo pass; elif (( RC == 125 )); then echo skip; else echo fail; fi; }
why() { # a one-line reason for a failed step: its first error line, else its last line
  if (( RC == 124 || RC == 137 )); then echo "timed out"; return; elif (( RC == 125 )); then echo "budget spent"; return; fi
  local line
  line=$(grep -m 1 -iE '^(opconvert: )?error' "$D/$1.err" || true)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$D/$1.err" | tail -n 1 || true)
  [[ -n $line ]] || line=$(grep -v '^[[:space:]]*$' "$D/$1.out" | tail -n 1 || true)
  echo "exit $RC: ${line:0:200}"
}

finish() {
  local gpu_name=${GPU_NAME:-}
  set +e
  "$PY" "$REPORT" summarize "$STEPS" "$RESULTS/summary.json" "bundle=$BUNDLE_ID" "gpu=$gpu_name" \
    "device=$DEVICE" "seconds=$(elapsed "$START")" | tee "$RESULTS/summary.txt"
  local rc=${PIPESTATUS[0]}
  tar -czf "$RESULTS/details.tar.gz" -C "$WORK" details 2>/dev/null
  exit "$rc"
}

# --- bundle runs here ------------------------------------------------------------------------
run bundle 60 "$OPC" --version
if (( RC != 0 )); then
  record bundle fail "$SECS" correctness "opconvert does not start here: $(why bundle)"
  finish
fi
record bundle pass "$SECS" correctness "" "version=\"$(head -n 1 "$D/bundle.out")\""

# --- machine -----------------------------------------------------------------------------
GPU_NAME=""
if command -v nvidia-smi >/dev/null; then
  run gpu 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  if (( RC == 0 )); then
    IFS=, read -r GPU_NAME driver mem cc <"$D/gpu.out"
    record gpu info "$SECS" info "" "name=\"$GPU_NAME\"" "driver=\"${driver# }\"" "memory=\"${mem# }\"" "compute_capability=\"${cc# }\""
  else
    record gpu info "$SECS" info "nvidia-smi failed: $(why gpu)"
  fi
else
  record gpu info 0 info "no nvidia-smi on PATH (no NVIDIA driver?)"
fi
TORCH_OK=0
run torch 60 "$PY" -c 'import sys, torch; print(torch.__version__, torch.version.cuda, int(torch.cuda.is_available() or sys.argv[1] == "cpu"))' "$TORCH_DEVICE"
if (( RC == 0 )); then
  read -r tv tcuda tavail <"$D/torch.out"
  if [[ $tavail == 1 ]]; then TORCH_OK=1; record torch info "$SECS" info "" "torch=\"$tv\"" "cuda=\"$tcuda\"" "device=\"$TORCH_DEVICE\""
  else record torch info "$SECS" info "torch $tv sees no GPU: torch comparisons skipped"; fi
else
  record torch info "$SECS" info "no torch for $PY: torch comparisons skipped"
fi

# Folders holding NVRTC / cuBLAS on this machine, for one retry when the plugin's own
# search finds nothing (the retry's success is reported: the plugin's search should improve).
fallback_cuda_dirs() {
  local dirs=() d
  while IFS= read -r d; do dirs+=("$d"); done < <("$PY" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if p.endswith("-packages")])
for r in sorted(roots):
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib"))):
        print(d)
PY
  )
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64; do [[ -d $d ]] && dirs+=("$d"); done
  local keep=() x
  for x in "${dirs[@]}"; do compgen -G "$x/libnvrtc.so*" >/dev/null || compgen -G "$x/libcublas*.so*" >/dev/null && keep+=("$x"); done
  (IFS=:; echo "${keep[*]}")
}
CUDA_PATH_NOTE=""
# run_cuda NAME TIMEOUT CMD...: like run, plus the one retry described above.
run_cuda() {
  local name=$1
  run "$@"
  # Only after exit 69 (unsupported here: the plugin's probe failed, e.g. no NVRTC found).
  if (( RC == 69 )) && [[ -z ${OPCONVERT_CUDA_LIBRARY_PATH:-} && -z $CUDA_PATH_NOTE ]]; then
    local dirs; dirs=$(fallback_cuda_dirs)
    if [[ -n $dirs ]]; then
      say "$name failed; retrying with OPCONVERT_CUDA_LIBRARY_PATH=$dirs"
      cp "$D/$name.err" "$D/$name.first-try.err"
      export OPCONVERT_CUDA_LIBRARY_PATH=$dirs
      run "$@"
      if (( RC == 0 )); then CUDA_PATH_NOTE="passed only with OPCONVERT_CUDA_LIBRARY_PATH=$dirs (the plugin's own search failed: $D/$name.first-try.err)"
      else unset OPCONVERT_CUDA_LIBRARY_PATH; CUDA_PATH_NOTE="retry with OPCONVERT_CUDA_LIBRARY_PATH=$dirs failed too"; fi
      say "$CUDA_PATH_NOTE"
    fi
  fi
}

# --- a. plugin list ----------------------------------------------------------------------
run plugin-list 60 "$OPC" plugin list --json
if (( RC == 0 )); then record plugin-list pass "$SECS" correctness "$("$PY" "$REPORT" plugins "$D/plugin-list.out")"
else record plugin-list "$(status_of)" "$SECS" correctness "$(why plugin-list)"; fi

# --- b. plugin check -----------------------------------------------------------------------
check_step() { # name timeout args...
  local name=$1 t=$2; shift 2
  if [[ $name == check-cpu ]]; then run "$name" "$t" "$OPC" plugin check "$@"; else run_cuda "$name" "$t" "$OPC" plugin check "$@"; fi
  read -r np nf < <("$PY" "$REPORT" checkline "$D/$name.out")
  local note=""; (( RC != 0 )) && note=$(why "$name")
  [[ -n $CUDA_PATH_NOTE && $name != check-cpu ]] && note="${note:+$note; }$CUDA_PATH_NOTE"
  record "$name" "$(status_of)" "$SECS" correctness "$note" "passed=$np" "failed=$nf"
}
check_step check-cpu 120 --device cpu
check_step check-compile 180 --device "$DEVICE" --compile-only
check_step check-cuda 300 --device "$DEVICE"

# --- c. cuda vs cpu losses, step by step -----------------------------------------------------
# parity NAME TIMEOUT NOTE EXTRA TRAIN-ARGS...: trains with --device cuda and --device cpu (runs
# NAME-cuda, NAME-cpu), compares the loss CSVs step by step and records parity-NAME; EXTRA (a
# function name, or "") prints more "key=value" fields from the two runs' outputs.
parity() {
  local name=$1 t=$2 label=$3 extra=$4; shift 4
  run_cuda "$name-cuda" "$t" "$OPC" train "$@" --device "$DEVICE" --loss-csv "$D/loss-$name-cuda.csv"
  local rc_cuda=$RC s_cuda=$SECS why_cuda; why_cuda=$(why "$name-cuda")
  run "$name-cpu" "$t" "$OPC" train "$@" --device cpu --loss-csv "$D/loss-$name-cpu.csv"
  local rc_cpu=$RC why_cpu secs note rc nums more=""; why_cpu=$(why "$name-cpu")
  secs=$(awk -v a="$s_cuda" -v b="$SECS" 'BEGIN { print a + b }')
  if (( rc_cuda != 0 || rc_cpu != 0 )); then
    note=""; (( rc_cuda != 0 )) && note="cuda run: $why_cuda"; (( rc_cpu != 0 )) && note="${note:+$note; }cpu run: $why_cpu"
    record "parity-$name" fail "$secs" correctness "$note"
    return
  fi
  set +e
  "$PY" "$BUNDLE/bench/gpu/compare_losses.py" "$D/loss-$name-cuda.csv" "$D/loss-$name-cpu.csv" --tol "$TOL" >"$D/parity-$name.json"
  rc=$?
  set -e
  nums=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))
print(" ".join("%s=%s" % (k, json.dumps(d.get(k))) for k in ("steps", "max_rel_diff", "worst_step", "final_candidate", "final_reference", "error")))' "$D/parity-$name.json")
  [[ -n $extra ]] && more=$("$extra" "$name")
  # shellcheck disable=SC2086
  record "parity-$name" "$([[ $rc == 0 ]] && echo pass || echo fail)" "$secs" correctness "$label, tol $TOL" $nums $more
}
# The digits runs' seconds per epoch on each device.
epoch_seconds() {
  local dev v
  for dev in cuda cpu; do
    v=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds_per_epoch"])' "$D/$1-$dev.out" 2>/dev/null || echo null)
    printf 's_per_epoch_%s=%s ' "$dev" "$v"
  done
}

TRAIN_ARGS=(--base "$BASE" --data "$TRAIN" --rank 4 --alpha 8 --mlp-hidden 32 --z-dim 32 --batch-size 64
            --lr 1e-3 --schedule constant --warmup-steps 0 --weight-decay 0 --seed 0 --epochs "$PARITY_EPOCHS"
            --no-progress --json)
for m in op-lora lora; do
  parity "$m" 120 "cuda vs cpu" epoch_seconds "${TRAIN_ARGS[@]}" --method "$m"
done

# --- c2. transformer training (issue 12), cuda vs cpu, step by step ----------------------------
LLAMA=$DATA/llama
if [[ -d $LLAMA/model ]]; then
  LLAMA_ARGS=(--model "$LLAMA/model" --data "$LLAMA/train.safetensors" --target-modules q_proj,v_proj,down_proj
              --rank 4 --alpha 8 --steps 12 --lr 1e-2 --batch-size 4 --no-shuffle --seed 3 --no-progress --json)
  for m in op-dora lora; do
    parity "llama-$m" 180 "tiny Llama, cuda vs cpu" "" "${LLAMA_ARGS[@]}" --method "$m"
  done
else
  record parity-llama skip 0 correctness "no data/llama in the bundle (made before issue 12)"
fi

# --- d. seconds per training step, opconvert vs torch on the GPU -------------------------------
step_env=(env PY="$PY" REPS="${STEP_REPS:-3}" EPOCHS="${STEP_EPOCHS:-10}")
(( TORCH_OK == 1 )) || step_env+=(NO_TORCH=1)
run_cuda train-step 300 "${step_env[@]}" bash "$BUNDLE/bench/bench_train_step.sh" --device "$DEVICE" --bin "$OPC" \
  --torch-device "$TORCH_DEVICE" --data "$DATA" --json-out "$D/train-step.json"
if (( RC == 0 )) && [[ -f $D/train-step.json ]]; then
  while read -r m ours theirs ratio; do
    if [[ $ratio == null ]]; then res=info note="no torch timing"
    elif awk -v r="$ratio" 'BEGIN { exit !(r >= 1.0) }'; then res=goal-met note="goal: no slower than torch"
    else res=goal-missed note="goal: no slower than torch"; fi
    record "step-$m" "$res" "$SECS" performance "$note" "opconvert_s_per_step=$ours" "torch_s_per_step=$theirs" \
      "torch_over_opconvert=$ratio"
  done < <("$PY" -c 'import json,sys
for r in json.load(open(sys.argv[1]))["methods"]:
    print(r["method"], json.dumps(r["opconvert_seconds_per_step"]), json.dumps(r["torch_seconds_per_step"]), json.dumps(r["torch_over_opconvert"]))' "$D/train-step.json")
else
  record step "$( (( RC == 125 )) && echo skip || echo fail)" "$SECS" performance "$(why train-step)"
fi

# --- e. GEMM throughput against torch.matmul -----------------------------------------------------
run_cuda plugin-bench 240 "$OPC" plugin bench --device "$DEVICE" --json
if (( RC != 0 )); then
  record gemm "$( (( RC == 125 )) && echo skip || echo fail)" "$SECS" performance "plugin bench: $(why plugin-bench)"
elif (( TORCH_OK == 0 )); then
  record gemm info "$SECS" performance "no torch with CUDA: opconvert's numbers only, in details.tar.gz (plugin-bench.out)"
else
  bench_secs=$SECS
  run torch-gemm 240 "$PY" "$BUNDLE/bench/gpu/torch_gemm.py" --opconvert-json "$D/plugin-bench.out" --device "$TORCH_DEVICE"
  if (( RC == 0 )); then
    read -r res nums < <("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))
r = d["large_min_ratio"]
big = max((s for s in d["shapes"] if s["opconvert_gflops"] is not None), key=lambda s: s["m"] * s["n"] * s["k"], default=None)
res = "info" if r is None else ("goal-met" if r >= d["goal"] else "goal-missed")
nums = {"large_min_ratio": r, "goal": d["goal"], "shapes": len(d["shapes"])}
if big:
    nums.update({"largest": "%dx%dx%d" % (big["m"], big["n"], big["k"]), "opconvert_gflops": round(big["opconvert_gflops"]),
                 "torch_gflops": round(big["torch_gflops"]), "ratio": big["ratio"]})
print(res, " ".join("%s=%s" % (k, json.dumps(v)) for k, v in nums.items()))' "$D/torch-gemm.out")
    secs=$(awk -v a="$bench_secs" -v b="$SECS" 'BEGIN { print a + b }')
    # shellcheck disable=SC2086
    gnote=$(grep '^note:' "$D/torch-gemm.err" | cut -c7- || true)
    record gemm "$res" "$secs" performance "FP32, TF32 off${gnote:+; $gnote}" $nums
  else
    record gemm fail "$SECS" performance "torch_gemm.py: $(why torch-gemm)"
  fi
fi


# --- f. LLaMA-100M adapter training, opconvert vs PyTorch + PEFT on the GPU (issue 12) ----------
if [[ -x $BUNDLE/bench/bench_llama_train.sh ]] && "$PY" -c 'import torch, transformers, peft' 2>/dev/null && (( TORCH_OK == 1 )); then
  run_cuda llama-100m 420 env PY="$PY" OPCONVERT="$OPC" SKIP_BUILD=1 DATA="$WORK/llama-data" OUTDIR="$D/llama-train" \
    bash "$BUNDLE/bench/bench_llama_train.sh" --quick --device "$DEVICE"
  if (( RC == 0 )); then
    note=$(grep -E '^\| (lora|op-lora) ' "$D/llama-100m.out" | tr -s ' ' | tr '\n' ';' | cut -c1-300)
    record llama-100m info "$SECS" performance "tokens/s opconvert vs PyTorch+PEFT: $note"
  else
    record llama-100m "$( (( RC == 125 )) && echo skip || echo fail)" "$SECS" performance "$(why llama-100m)"
  fi
else
  record llama-100m skip 0 performance "needs bench/bench_llama_train.sh in the bundle and torch+transformers+peft with CUDA"
fi

finish
