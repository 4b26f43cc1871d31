#!/usr/bin/env bash
# Materialize benchmark: a LLaMA-7B-shaped OP checkpoint (r=32, hidden 32; q,k,v,up,down in
# 32 layers; ~7.2 GB of F32 fc2 weights) turned into a PEFT adapter. Reports checkpoint
# GB/s against `cat` of the same page-cached file (target >= 70%) and against a numpy
# implementation of the same computation, in one run.
#
#   bench/bench_materialize.sh            LAYERS=32 (fewer for a quick try)
source "$(dirname "$0")/lib.sh"
LAYERS=${LAYERS:-32}
CKPT=$DATA/op-7b-L$LAYERS
OUT=$DATA/out-materialize
trap 'rm -rf "$OUT" "$WORK"' EXIT

need_time
build_release
log "$(describe_build)"
[[ -f "$CKPT/op_model.safetensors" ]] || { log "making $CKPT ..."; "$GENPY" bench/make_op_checkpoint.py -o "$CKPT" --layers "$LAYERS"; }
FILE=$CKPT/op_model.safetensors
BYTES=$(stat -c %s "$FILE")
cat "$FILE" > /dev/null; cat "$FILE" > /dev/null   # warm the page cache

secs() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

CAT=$(for _ in $(seq "$REPS"); do secs cat "$FILE"; done | median)
OPC=()
for _ in $(seq "$REPS"); do
  rm -rf "$OUT"
  OPC+=("$(secs "$BIN" materialize "$CKPT" -o "$OUT" --no-progress)")
done
OPCM=$(printf '%s\n' "${OPC[@]}" | median)
rm -rf "$OUT"
RSS=$(/usr/bin/time -f %M "$BIN" materialize "$CKPT" -o "$OUT" --no-progress 2>&1 >/dev/null | tail -1)
rm -rf "$OUT"
PYT=""
if "$PY" -c 'import safetensors, numpy' 2>/dev/null && [[ -z "${NO_PYTHON:-}" ]]; then
  PYT=$(for _ in $(seq "$REPS"); do rm -rf "$OUT"; secs "$PY" bench/ref_materialize.py "$CKPT" "$OUT"; done | median)
fi
gbs() { echo "scale=2; $BYTES / $1 / 1000000000" | bc -l; }
echo
echo "checkpoint: $FILE ($(echo "scale=2; $BYTES/1000000000" | bc) GB, $LAYERS layers), REPS=$REPS (median)"
printf '%-34s %8s s %7s GB/s\n' "cat (page cache)" "$CAT" "$(gbs "$CAT")"
printf '%-34s %8s s %7s GB/s   %s of cat, peak RSS %s MB\n' "opconvert materialize" "$OPCM" "$(gbs "$OPCM")" \
  "$(echo "scale=0; 100 * $CAT / $OPCM" | bc)%" "$((RSS / 1024))"
if [[ -n "$PYT" ]]; then
  printf '%-34s %8s s %7s GB/s   opconvert is %sx faster\n' "numpy (safe_open + matmul)" "$PYT" "$(gbs "$PYT")" "$(echo "scale=1; $PYT / $OPCM" | bc)"
fi
