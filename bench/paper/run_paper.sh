#!/usr/bin/env bash
# Reproduces the OP-LoRA paper's small-scale claims with `opconvert train` on CPU:
#   a. LoRA vs OP-LoRA final train loss over a learning-rate sweep (paper Fig. 2a analogue)
#      on a rotated-digits adaptation task (make_rotated_digits.py);
#   b. `opconvert train factorize` (paper appendix B.2): MF vs OP-MF vs the SVD optimum,
#      plus an independent NumPy reference (factorize_ref.py) for the MF learning rates that
#      opconvert cannot be given (see README.md, "opconvert bugs");
#   c. seconds per training epoch, opconvert vs an independent PyTorch implementation.
# Writes everything to bench/paper/results/ and a summary to results/summary.md.
#
#   PY=python       Python with torch, numpy, safetensors, scikit-learn, scipy
#                   (default /opt/fixenv/bin/python; see requirements.txt)
#   SKIP_BUILD=1    use the existing .build-paper/release/opconvert
#   SEEDS=0,1,2     seeds of the LR sweep (the first one is the headline sweep)
#   REPS=5          repetitions of each timing
#   THREADS=2       threads for opconvert (--threads) and torch (set_num_threads)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/bench/paper
DATA=$HERE/data
RES=$HERE/results
PY=${PY:-/opt/fixenv/bin/python}
BIN=$ROOT/.build-paper/release/opconvert
SEEDS=${SEEDS:-0,1,2}
REPS=${REPS:-5}
THREADS=${THREADS:-2}

# Settings (kept in one place; README.md quotes them).
RANK=4 ALPHA=8 MLP_HIDDEN=32 Z_DIM=32 EPOCHS=20 BATCH=64
LRS=1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2,1e-1
FACT_LRS=1e-4,3e-4,1e-3,2e-3,3e-3,5e-3,1e-2,1.5e-2,2e-2,3e-2

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
START=$(date +%s)

# --- build -----------------------------------------------------------------------------
if [[ -z "${SKIP_BUILD:-}" ]]; then
  for attempt in 1 2 3; do
    log "building opconvert (release, scratch .build-paper), attempt $attempt"
    if swift build -c release --scratch-path "$ROOT/.build-paper" >"$HERE/.build.log" 2>&1; then break; fi
    if grep -q "modified during the build" "$HERE/.build.log" && [[ $attempt -lt 3 ]]; then sleep 5; continue; fi
    tail -30 "$HERE/.build.log" >&2; exit 1
  done
fi
[[ -x $BIN ]] || { log "no $BIN"; exit 1; }
mkdir -p "$DATA" "$RES"
"$BIN" --version >"$RES/opconvert_version.txt"
git -C "$ROOT" rev-parse HEAD >>"$RES/opconvert_version.txt" 2>/dev/null || true

# --- data --------------------------------------------------------------------------------
log "making base network and rotated digits"
"$PY" "$HERE/make_rotated_digits.py" --out "$DATA" --seed 0 --angle 90 | tee "$RES/data.json"
BASE=$DATA/base.safetensors TRAIN=$DATA/rotated_train.safetensors TEST=$DATA/rotated_test.safetensors

# --- a. LR sweep -------------------------------------------------------------------------
COMMON=(--base "$BASE" --data "$TRAIN" --rank $RANK --alpha $ALPHA --mlp-hidden $MLP_HIDDEN --z-dim $Z_DIM
        --batch-size $BATCH --schedule constant --warmup-steps 0 --weight-decay 0 --threads $THREADS)
IFS=, read -ra SEED_LIST <<<"$SEEDS"
for seed in "${SEED_LIST[@]}"; do
  dir=$RES/sweep_seed$seed
  log "LR sweep seed $seed: lora vs op-lora at $LRS"
  "$BIN" train "${COMMON[@]}" --epochs $EPOCHS --seed "$seed" --lr-sweep "$LRS" --methods lora,op-lora --sweep-dir "$dir" --json >"$dir.json"
done
first=${SEED_LIST[0]}
cp "$RES/sweep_seed$first/sweep.csv" "$RES/sweep_seed$first/sweep.md" "$RES/sweep_seed$first/sweep.svg" "$RES/"

# Held-out accuracy for the headline seed: train each point again with -o, merge, evaluate.
log "test-set evaluation of every sweep point (seed $first)"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-paper.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "method,lr,final_train_loss,test_loss,test_accuracy" >"$RES/test_eval.csv"
IFS=, read -ra LR_LIST <<<"$LRS"
for m in lora op-lora; do
  for lr in "${LR_LIST[@]}"; do
    if "$BIN" train "${COMMON[@]}" --epochs $EPOCHS --seed "$first" --method $m --lr "$lr" -o "$TMP/ad" --overwrite --json >"$TMP/s.json" 2>/dev/null \
       && "$BIN" merge "$BASE" "$TMP/ad" -o "$TMP/merged" --overwrite --safe --no-progress >/dev/null 2>&1; then
      fl=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["final_loss"])' "$TMP/s.json")
      ev=$("$PY" "$HERE/eval_merged.py" "$TMP/merged" "$TEST")
      "$PY" -c 'import json,sys; e=json.loads(sys.argv[4]); print("%s,%s,%s,%r,%r" % (sys.argv[1], sys.argv[2], sys.argv[3], e["loss"], e["accuracy"]))' "$m" "$lr" "$fl" "$ev" >>"$RES/test_eval.csv"
    else
      echo "$m,$lr,inf,nan,nan" >>"$RES/test_eval.csv"
    fi
  done
done

# Exactness check: a PyTorch re-implementation started from opconvert's exact initial
# parameters and batch order (opc_rng.py) must reproduce the per-step losses.
log "parity check vs PyTorch (3 epochs, lr 1e-3)"
: >"$RES/parity.jsonl"
for m in lora op-lora; do
  "$BIN" train "${COMMON[@]}" --epochs 3 --seed 0 --method $m --lr 1e-3 -o "$TMP/p" --overwrite --loss-csv "$TMP/loss.csv" --json >/dev/null
  ( cd "$HERE" && "$PY" parity_check.py --base "$BASE" --data "$TRAIN" --loss-csv "$TMP/loss.csv" --method $m --epochs 3 --lr 1e-3 \
      --rank $RANK --alpha $ALPHA --mlp-hidden $MLP_HIDDEN --z-dim $Z_DIM --batch-size $BATCH --seed 0 ) >>"$RES/parity.jsonl"
done

# --- b. matrix factorization -------------------------------------------------------------
log "factorize: opconvert defaults (MF and OP-MF both at lr 1e-3)"
"$BIN" train factorize --rank 8 --steps 1000 --warmup-steps 50 --schedule linear --json --no-progress \
  --curve-csv "$RES/factorize_curve_opconvert_lr1e-3.csv" >"$RES/factorize_opconvert_default.json"
log "factorize: opconvert OP-MF over --op-lr (MF stays at 1e-3: --lr is ignored, see README)"
echo "op_lr,mf_final,op_mf_final,svd_optimum,status" >"$RES/factorize_opconvert_oplr.csv"
IFS=, read -ra FLR <<<"$FACT_LRS"
for lr in "${FLR[@]}"; do
  if "$BIN" train factorize --op-lr "$lr" --json --no-progress >"$TMP/f.json" 2>/dev/null; then
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); r={x["method"]:x for x in d["runs"]}
print("%s,%r,%r,%r,ok" % (sys.argv[2], r["mf"]["final_error"], r["op-mf"]["final_error"], d["svd_optimum"]))' "$TMP/f.json" "$lr" >>"$RES/factorize_opconvert_oplr.csv"
  else
    echo "$lr,,,,$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"].replace(",", ";"))' "$TMP/f.json")" >>"$RES/factorize_opconvert_oplr.csv"
  fi
done
BEST_OP_LR=$("$PY" -c 'import csv,sys
ok=[r for r in csv.DictReader(open(sys.argv[1])) if r["status"]=="ok"]
print(min(ok, key=lambda r: float(r["op_mf_final"]))["op_lr"])' "$RES/factorize_opconvert_oplr.csv")
log "factorize: opconvert curve with OP-MF at its best --op-lr $BEST_OP_LR (MF at 1e-3)"
"$BIN" train factorize --op-lr "$BEST_OP_LR" --json --no-progress \
  --curve-csv "$RES/factorize_curve_opconvert_oplr$BEST_OP_LR.csv" >"$RES/factorize_opconvert_best_oplr.json"
# Demonstrates the option-shadowing bug: these must differ from the defaults but do not.
for opt in "--lr 1e-2" "--seed 1" "--rank 4" "--methods mf" "--z-dim 64" "--warmup-steps 0"; do
  # shellcheck disable=SC2086
  printf '%s\t%s\n' "$opt" "$("$BIN" train factorize $opt --no-progress | tail -2 | tr '\n' ' ')"
done >"$RES/factorize_ignored_options.txt"
log "factorize: NumPy reference, MF and OP-MF over $FACT_LRS, seeds $SEEDS"
( cd "$HERE" && "$PY" factorize_ref.py --lrs "$FACT_LRS" --seeds "$SEEDS" --csv "$RES/factorize_ref.csv" \
    --curve-csv "$RES/factorize_ref_curves.csv" 2>/dev/null )

# --- c. timing ---------------------------------------------------------------------------
log "timing: opconvert one epoch x $REPS per method, torch 1 warmup + $REPS timed epochs"
echo "impl,method,rep,seconds_per_epoch" >"$RES/timing.csv"
for m in lora op-lora; do
  for ((i = 1; i <= REPS; i++)); do
    "$BIN" train "${COMMON[@]}" --seed 0 --method $m --lr 1e-3 --epochs 1 -o "$TMP/t" --overwrite --json \
      | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print("opconvert,%s,%s,%r" % (sys.argv[1], sys.argv[2], d["seconds_per_epoch"]))' $m $i >>"$RES/timing.csv"
  done
done
"$PY" "$HERE/torch_epoch.py" --base "$BASE" --data "$TRAIN" --rank $RANK --alpha $ALPHA --mlp-hidden $MLP_HIDDEN \
  --z-dim $Z_DIM --batch-size $BATCH --lr 1e-3 --threads "$THREADS" --warmup-epochs 1 --timed-epochs "$REPS" >"$RES/torch_epoch.json"
"$PY" -c 'import json,sys
for r in json.load(open(sys.argv[1])):
    for i, t in enumerate(r["seconds_per_epoch_all"], 1): print("torch,%s,%d,%r" % (r["method"], i, t))' "$RES/torch_epoch.json" >>"$RES/timing.csv"
uptime >"$RES/timing_load.txt"

# --- summary -----------------------------------------------------------------------------
"$PY" "$HERE/summarize.py" "$RES" | tee "$RES/summary.md"
log "done in $(( $(date +%s) - START )) s; results in $RES"
