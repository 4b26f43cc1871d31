#!/usr/bin/env bash
# `opconvert extract --rank 64` (randomized SVD, and --exact) on a LLaMA-shaped BF16 pair
# (bench/make_extract_pair.py: hidden 2048, intermediate 5504, tuned = base + rank-64 delta +
# small noise) against a mergekit-style torch.linalg.svd per module on the same cores.
# Prints wall time and the mean/max relative Frobenius error of each, and our/torch ratios.
#   LAYERS=16 (the 1B pair; full torch SVD of 112 modules takes long on 2 cores: try LAYERS=2)
#   THREADS=2  cores given to both (OPENBLAS_NUM_THREADS / torch threads)
#   REPS, SKIP_BUILD, OPCONVERT, PY: see bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
build_release
LAYERS=${LAYERS:-16}
THREADS=${THREADS:-2}
RANK=64
PAIR=$DATA/extract-pair-l$LAYERS
[[ -f $PAIR/tuned/model.safetensors ]] || $PY "$ROOT/bench/make_extract_pair.py" "$PAIR" --layers "$LAYERS" >&2
describe_build
warm "$PAIR"
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
stats() { # JSON summary on stdin -> "seconds mean_err max_err"
  python3 -c 'import json,sys; j=json.load(sys.stdin); e=[m["relative_error"] for m in j["modules"]]; print(j["seconds"], sum(e)/len(e), max(e))'
}
t0=$(date +%s.%N)
read -r ours_s ours_mean ours_max < <("$BIN" extract "$PAIR/base" "$PAIR/tuned" -o "$WORK/rand" --rank $RANK --json --no-progress | stats)
t1=$(date +%s.%N)
read -r exact_s exact_mean exact_max < <("$BIN" extract "$PAIR/base" "$PAIR/tuned" -o "$WORK/exact" --rank $RANK --exact --json --no-progress | stats)
t2=$(date +%s.%N)
ref=$(OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS $PY -c "import torch; torch.set_num_threads($THREADS); import runpy, sys; sys.argv=['ref', '$PAIR/base', '$PAIR/tuned', '$RANK']; runpy.run_path('$ROOT/bench/ref_extract_svd.py', run_name='__main__')")
t3=$(date +%s.%N)
read -r ref_mean ref_max < <(echo "$ref" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["mean_relative_error"], j["max_relative_error"])')
wall_rand=$(calc "$t1 - $t0"); wall_exact=$(calc "$t2 - $t1"); wall_ref=$(calc "$t3 - $t2")
echo "pair: $LAYERS layers ($((7 * LAYERS)) modules), rank $RANK, $THREADS threads"
printf '%-28s %10s %14s %14s %8s\n' method wall_s mean_rel_err max_rel_err time_x
printf '%-28s %10s %14s %14s %8s\n' "torch.linalg.svd (f32)" "$wall_ref" "$ref_mean" "$ref_max" 1.00
printf '%-28s %10s %14s %14s %8s\n' "opconvert randomized" "$wall_rand" "$ours_mean" "$ours_max" "$(calc "$wall_rand / $wall_ref")"
printf '%-28s %10s %14s %14s %8s\n' "opconvert --exact" "$wall_exact" "$exact_mean" "$exact_max" "$(calc "$wall_exact / $wall_ref")"
