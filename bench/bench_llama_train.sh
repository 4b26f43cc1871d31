#!/usr/bin/env bash
# Tokens/s of LoRA and OP-LoRA training steps on a ~100M-parameter LLaMA-shaped model (random
# weights, seq 256): `opconvert train` against PyTorch + PEFT (bench/llama/peft_step.py) on the
# same cores, paired and interleaved; peak RSS; OP-LoRA's extra step time over LoRA's.
# Issue 12 "Performance". See bench/README.md ("Training on a LLaMA-shaped model").
#
#   bench/bench_llama_train.sh [--quick] [--device cpu|cuda[:N]]
#
# Knobs (environment): REPS (pairs per method; default 3, --quick 1), BATCH (default 2; cuda 8),
# STEPS (timed steps per run; default 5, --quick 2; cuda 30, 10), WARMUP (dropped; 1; cuda 3),
# THREADS (default 2), CORES (taskset list; default 0,1; empty: no pinning), TARGETS
# (q_proj,v_proj), RANK (8), ALPHA (16), MLP_HIDDEN (32), Z_DIM (32), METHODS ("lora op-lora"),
# ATTN (PyTorch attention: sdpa, or eager), NO_OPCONVERT=1, NO_PYTHON=1, SKIP_BUILD=1,
# OPCONVERT=PATH, PY, TRAIN_EXTRA (more opconvert train flags), MODEL_ARGS (for the generator,
# e.g. "--untied"; a different shape needs its own MODEL_NAME), OUTDIR (default $DATA/llama-train).
# Results: a table on stdout and $OUTDIR/results.json.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QUICK=0 DEVICE=cpu
while [[ $# -gt 0 ]]; do
  case $1 in
    --quick) QUICK=1 ;;
    --device) DEVICE=${2:?--device needs a value}; shift ;;
    --device=*) DEVICE=${1#--device=} ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) log "unknown argument: $1"; exit 64 ;;
  esac
  shift
done
if [[ $DEVICE == cpu ]]; then
  if (( QUICK )); then REPS=${REPS_QUICK:-1}; STEPS=${STEPS:-2}; else STEPS=${STEPS:-5}; fi
  BATCH=${BATCH:-2} WARMUP=${WARMUP:-1}
else  # a GPU step takes milliseconds: bigger batches, more steps
  if (( QUICK )); then REPS=${REPS_QUICK:-1}; STEPS=${STEPS:-10}; else STEPS=${STEPS:-30}; fi
  BATCH=${BATCH:-8} WARMUP=${WARMUP:-3}
fi
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-q_proj,v_proj} RANK=${RANK:-8} ALPHA=${ALPHA:-16}
MLP_HIDDEN=${MLP_HIDDEN:-32} Z_DIM=${Z_DIM:-32} METHODS=${METHODS:-lora op-lora} ATTN=${ATTN:-sdpa}
MODEL_NAME=${MODEL_NAME:-llama-100m}
CORES=${CORES-0,1}
[[ $DEVICE == cpu ]] || CORES=""   # a GPU run: no pinning (the host side is one thread anyway)
OUTDIR=${OUTDIR:-$DATA/llama-train}
mkdir -p "$OUTDIR"
need_time

PIN=()
if [[ -n $CORES ]]; then
  command -v taskset >/dev/null || { log "taskset missing (util-linux); set CORES= to run unpinned"; exit 1; }
  PIN=(taskset -c "$CORES")
fi
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

# ---- inputs (made once, reused) ------------------------------------------------------------
MODEL_DIR=$DATA/$MODEL_NAME
if [[ ! -f $MODEL_DIR/params.json ]]; then
  (( $(free_bytes "$DATA") > 2000000000 )) || { log "need 2 GB free under $DATA"; exit 1; }
  log "making $MODEL_DIR (random ~100M LLaMA, F32, ~400 MB; ~30 s)"
  rm -rf "$MODEL_DIR"
  "$PY" bench/llama/make_llama_100m.py --out "$MODEL_DIR" ${MODEL_ARGS:-}
fi
MODEL=$MODEL_DIR/model DATAFILE=$MODEL_DIR/train.safetensors
SEQ=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seq"])' "$MODEL_DIR/params.json")
NSTEPS=$((WARMUP + STEPS))

if [[ ${NO_OPCONVERT:-0} != 1 ]]; then build_release; fi

# ---- one run ----------------------------------------------------------------------------------
# run_one TOOL METHOD REP: runs under /usr/bin/time -v, stores the JSON line in
# $OUTDIR/TOOL-METHOD-REP.json with peak_rss_kib (GNU time) added.
run_one() {
  local tool=$1 method=$2 rep=$3 out="$OUTDIR/$1-$2-$3" cmd
  if [[ $tool == opconvert ]]; then
    rm -rf "$WORK/adapter"
    cmd=("$BIN" train --model "$MODEL" --data "$DATAFILE" --method "$method" --target-modules "$TARGETS"
         --rank "$RANK" --alpha "$ALPHA" --batch-size "$BATCH" --steps "$NSTEPS" --no-shuffle
         --lr 1e-4 --weight-decay 0.01 --device "$DEVICE" --loss-csv "$out.csv" --json)
    [[ $method == op-* ]] && cmd+=(--mlp-hidden "$MLP_HIDDEN" --z-dim "$Z_DIM")
    [[ $DEVICE == cpu ]] && cmd+=(--threads "$THREADS")
    # shellcheck disable=SC2206
    cmd+=(${TRAIN_EXTRA:-})
  else
    cmd=("$PY" bench/llama/peft_step.py --model "$MODEL" --data "$DATAFILE" --method "$method"
         --target-modules "$TARGETS" --rank "$RANK" --alpha "$ALPHA" --mlp-hidden "$MLP_HIDDEN" --z-dim "$Z_DIM"
         --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE"
         --attn "$ATTN" --json)
  fi
  local t0=$EPOCHREALTIME
  if ! "${PIN[@]}" /usr/bin/time -v -o "$out.time" "${cmd[@]}" >"$out.stdout" 2>"$out.stderr"; then
    log "FAILED ($tool $method): ${cmd[*]}"; tail -5 "$out.stderr" >&2; return 1
  fi
  local wall rss
  wall=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}')
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time")
  "$PY" - "$out.stdout" "$tool" "$rss" "$wall" "$NSTEPS" "$BATCH" "$SEQ" "$WARMUP" >"$out.json" <<'PYEOF' || return 1
import csv, json, os, statistics, sys
path, tool, rss, wall, nsteps, batch, seq, warmup = sys.argv[1:]
text = open(path).read()
try:
    d = json.loads(text)  # opconvert pretty-prints one object
except ValueError:  # else the last line that is one
    lines = [l for l in text.splitlines() if l.strip().startswith("{")]
    if not lines:
        sys.exit(f"{path}: no JSON object on stdout")
    d = json.loads(lines[-1])
d.update(tool=tool, peak_rss_kib=int(rss), process_wall_seconds=float(wall))
tokens = int(nsteps) * int(batch) * int(seq)
csv_path = path[: -len(".stdout")] + ".csv"
if tool == "opconvert" and os.path.exists(csv_path):
    # per-step tokens/s from the loss CSV: the median after the warm-up, as peft_step.py does
    rows = list(csv.DictReader(open(csv_path)))
    tps = [float(r["tokens_per_second"]) for r in rows if r.get("tokens_per_second")]
    if len(tps) > int(warmup):
        d["run_tokens_per_second"] = d.get("tokens_per_second")
        d["step_tokens_per_second"] = [round(t, 2) for t in tps]
        d["tokens_per_second"] = statistics.median(tps[int(warmup):])
        d["tokens_per_second_source"] = "median of the loss CSV's per-step tokens/s after the warm-up"
if tool == "opconvert" and "tokens_per_second" not in d:
    # fall back to the whole run (all steps, warm-up included) over the summary's seconds
    secs = d.get("seconds") or d.get("train_seconds")
    if secs:
        d["tokens_per_second"] = tokens / float(secs)
        d["tokens_per_second_source"] = "steps*batch*seq / seconds (warm-up included)"
print(json.dumps(d))
PYEOF
  log "  $(printf '%-10s %-8s rep %d' "$tool" "$method" "$rep"): $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.1f tokens/s, peak RSS %d MiB, %.0f s" % (d.get("tokens_per_second", float("nan")), d["peak_rss_kib"] // 1024, d["process_wall_seconds"]))' "$out.json")"
}

TOOLS=()
[[ ${NO_OPCONVERT:-0} == 1 ]] || TOOLS+=(opconvert)
[[ ${NO_PYTHON:-0} == 1 ]] || TOOLS+=(pytorch)
(( ${#TOOLS[@]} )) || { log "NO_OPCONVERT=1 and NO_PYTHON=1: nothing to run"; exit 64; }

log "model $MODEL_NAME ($("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.1fM params, %s" % (d["parameters"]/1e6, d["dtype"]))' "$MODEL_DIR/params.json")), seq $SEQ, batch $BATCH, $WARMUP+$STEPS steps, targets $TARGETS r=$RANK alpha=$ALPHA; device $DEVICE, threads $THREADS, cores ${CORES:-unpinned}; REPS=$REPS"
[[ $DEVICE == cpu ]] && log "machine busy before the runs: $(cpu_busy 2)% (other load makes the timings noisy)"
rm -f "$OUTDIR"/*.json "$OUTDIR"/*.stdout "$OUTDIR"/*.stderr "$OUTDIR"/*.time "$OUTDIR"/*.csv
# Interleaved pairs: each rep runs every method with both tools, alternating which goes first,
# so slow drift in the machine's load hits both sides alike.
for ((rep = 1; rep <= REPS; rep++)); do
  for method in $METHODS; do
    order=("${TOOLS[@]}")
    if (( rep % 2 == 0 && ${#TOOLS[@]} == 2 )); then order=("${TOOLS[1]}" "${TOOLS[0]}"); fi
    for tool in "${order[@]}"; do run_one "$tool" "$method" "$rep" || exit 1; done
  done
done

# ---- summary ----------------------------------------------------------------------------------
"$PY" - "$OUTDIR" "$DEVICE" "$METHODS" <<'PYEOF'
import glob, json, os, statistics, sys
outdir, device, methods = sys.argv[1], sys.argv[2], sys.argv[3].split()
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(outdir, "*-*-*.json")))]
res = {}
for tool in ("opconvert", "pytorch"):
    for m in methods:
        rs = [r for r in runs if r["tool"] == tool and r.get("method", m) == m and r.get("tokens_per_second")]
        if rs:
            tps = [r["tokens_per_second"] for r in rs]
            res[(tool, m)] = dict(tokens_per_second=statistics.median(tps), all=[round(t, 1) for t in tps],
                                  peak_rss_mib=max(r["peak_rss_kib"] for r in rs) / 1024,
                                  cuda_max_allocated_mib=max((r.get("cuda_max_allocated_mib", 0) for r in rs), default=0))
print(f"\n## LLaMA-100M adapter training, seq 256, device {device}\n")
print("| method | opconvert tokens/s | PyTorch tokens/s | ratio (goal >= 1.0) | opconvert peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|")
for m in methods:
    o, p = res.get(("opconvert", m)), res.get(("pytorch", m))
    f = lambda r: f"{r['tokens_per_second']:.1f} {r['all']}" if r else "-"
    ratio = f"{o['tokens_per_second'] / p['tokens_per_second']:.2f}" if o and p else "-"
    rss = lambda r: f"{r['peak_rss_mib']:.0f} MiB" if r else "-"
    print(f"| {m} | {f(o)} | {f(p)} | {ratio} | {rss(o)} | {rss(p)} |")
extra = {}
for tool in ("opconvert", "pytorch"):
    l, op = res.get((tool, "lora")), res.get((tool, "op-lora"))
    if l and op:
        # extra time per step = (1/tps_op - 1/tps_lora) / (1/tps_lora)
        extra[tool] = 100 * (l["tokens_per_second"] / op["tokens_per_second"] - 1)
if extra:
    print("\nOP-LoRA step time over LoRA's (the paper: ~15% on a GPU): " +
          ", ".join(f"{t} {v:+.1f}%" for t, v in extra.items()))
json.dump({"device": device, "results": {f"{t}/{m}": v for (t, m), v in res.items()},
           "op_lora_extra_percent": extra, "runs": runs},
          open(os.path.join(outdir, "results.json"), "w"), indent=2)
print(f"\n(runs and results.json in {outdir})")
PYEOF
