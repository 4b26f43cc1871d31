#!/usr/bin/env bash
# Merge benchmark: a rank-32 LoRA folded into a ~1e9-parameter LLaMA-shaped BF16 base by
# `opconvert merge`, against the I/O floor (cp -r of the base, with and without fsync) and
# transformers + PEFT (load, merge_and_unload, save_pretrained). One run measures all.
#
#   bench/bench_merge.sh
#
# Environment: REPS (3) for cp/opconvert, PY_REPS (1) for PEFT, SHARD (1GB: output shard
# size for opconvert and PEFT, as the base), SKIP_BUILD=1, OPCONVERT=binary, NO_PYTHON=1,
# COMPARE=0 (skip the untimed accuracy check of both outputs), PY,
# BASE_ARGS (extra arguments for make_llama_base.py, e.g. "--layers 4 --name llama-small").
source "$(dirname "$0")/lib.sh"

PY_REPS=${PY_REPS:-1}
SHARD=${SHARD:-1GB}
BASE_NAME=${BASE_NAME:-llama-1b}
BASE=$DATA/$BASE_NAME
ADAPTER=$DATA/$BASE_NAME-lora-r32
OUTD=$DATA/merge-out
mkdir -p "$OUTD"
cleanup_outputs() { rm -rf "$OUTD"/* "$OUTD"/.[!.]* 2>/dev/null || true; }
trap 'cleanup_outputs; rm -rf "$WORK"' EXIT

need_time
build_release
log "$(describe_build)"

log "disk before: $(df -h "$DATA" | awk 'NR==2 {print $4 " free of " $2 " on " $6}')"
if [[ ! -d "$BASE" || ! -d "$ADAPTER" ]]; then
  log "making $BASE and $ADAPTER ..."
  "$GENPY" bench/make_llama_base.py --out "$DATA" --name "$BASE_NAME" --force ${BASE_ARGS:-}
fi
BASE_BYTES=$(tree_bytes "$BASE")
AD_BYTES=$(tree_bytes "$ADAPTER")
cleanup_outputs
FREE=$(free_bytes "$DATA")
NEED=$((BASE_BYTES * 3 + 1000000000))  # two outputs kept for the accuracy check, with margin
if (( FREE < NEED )); then log "need about $((NEED / 1000000000)) GB free in $DATA"; exit 1; fi
# Largest base tensor (bytes), from the shard headers.
LARGEST=$(python3 - "$BASE" <<'EOF'
import json, os, struct, sys
m = 0
for f in os.listdir(sys.argv[1]):
    if f.endswith(".safetensors"):
        with open(os.path.join(sys.argv[1], f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            h = json.loads(fh.read(n))
        h.pop("__metadata__", None)
        m = max([m] + [v["data_offsets"][1] - v["data_offsets"][0] for v in h.values()])
print(m)
EOF
)
log "base $BASE: $BASE_BYTES bytes; adapter $AD_BYTES bytes; largest tensor $LARGEST bytes"

BUSY_BEFORE=$(cpu_busy 2)
log "machine CPU busy before measuring: ${BUSY_BEFORE}% (load average $(cut -d" " -f1-3 /proc/loadavg))"
log ""
log "measuring (REPS=$REPS; each run: delete outputs, sync, cat inputs twice, then time) ..."
PREP='cleanup_outputs; sync; warm "$BASE" "$ADAPTER"'
measure "cp -r base"             "$PREP" "cp -r --reflink=never '$BASE' '$OUTD/cp'"
measure "cp -r base + fsync"     "$PREP" "cp -r --reflink=never '$BASE' '$OUTD/cp' && sync '$OUTD/cp'/* '$OUTD/cp'"
measure "opconvert merge"        "$PREP" "'$BIN' merge '$BASE' '$ADAPTER' -o '$OUTD/merged' --max-shard-size $SHARD --no-progress --json"
MERGE_JSON=$(cat "$WORK/last.out")
OUT_BYTES=$(tree_bytes "$OUTD/merged")
PEFT=0
if [[ "${NO_PYTHON:-0}" != 1 ]] && "$PY" -c 'import torch, peft, transformers' 2>/dev/null; then
  PEFT=1
  # Keep opconvert's last output aside (same disk, a rename) for the accuracy check.
  mv "$OUTD/merged" "$DATA/.opconvert-merged"
  PREP_PY='rm -rf "$OUTD/peft"; sync; warm "$BASE" "$ADAPTER"'
  measure "transformers+PEFT merge" "$PREP_PY" "'$PY' bench/ref_peft_merge.py '$BASE' '$ADAPTER' '$OUTD/peft' $SHARD" "$PY_REPS"
  PHASES=$(cat "$WORK/last.out")
  PEFT_BYTES=$(tree_bytes "$OUTD/peft")
  if [[ "${COMPARE:-1}" == 1 ]]; then
    log "comparing both outputs with an exact single-rounding reference (untimed) ..."
    ACC=$("$PY" bench/compare_merge.py "$BASE" "$ADAPTER" "$DATA/.opconvert-merged" "$OUTD/peft" 2>&1 | sed "s|$DATA/.opconvert-merged|opconvert|; s|$OUTD/peft|peft|")
  fi
  rm -rf "$DATA/.opconvert-merged"
fi
cleanup_outputs

# ---------------------------------------------------------------------------------------
row() {
  local l=$1 b=$2
  printf '%-28s %8s %8s %10s %9s\n' "$l" "${MED[$l]}" "${MIN[$l]}" "$(gbps "$b" "${MED[$l]}")" "$(mib "${RSS[$l]}")"
}
echo
echo "== merge benchmark: $(describe_build)"
echo "   $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(findmnt -no FSTYPE --target "$DATA") on $(findmnt -no SOURCE --target "$DATA"); page cache warm; REPS=$REPS; CPU busy before: ${BUSY_BEFORE}%, load average after: $(cut -d" " -f1-3 /proc/loadavg); PEFT REPS=$PY_REPS"
echo "   base $BASE: $BASE_BYTES bytes ($(ls "$BASE" | grep -c '\.safetensors$') shards), largest tensor $LARGEST bytes; adapter $AD_BYTES bytes (F32, r=32, 7 modules x $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$BASE/config.json") layers)"
echo
printf '%-28s %8s %8s %10s %9s\n' "measurement" "median s" "min s" "base GB/s" "RSS MiB"
row "cp -r base" "$BASE_BYTES"
row "cp -r base + fsync" "$BASE_BYTES"
row "opconvert merge" "$BASE_BYTES"
(( PEFT )) && row "transformers+PEFT merge" "$BASE_BYTES"
echo
verdict() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN {ok = (dir == "le") ? v <= t : v >= t; print ok ? "ok" : "MISSES TARGET"}'; }
r1=$(calc "${MED[opconvert merge]} / ${MED[cp -r base + fsync]}")
r2=$(calc "${MED[opconvert merge]} / ${MED[cp -r base]}")
RSS_MIB=$(mib "${RSS[opconvert merge]}")
echo "ratios (medians)"
echo "  opconvert merge / cp -r + fsync : ${r1}x   (target <= 2x: $(verdict "$r1" 2 le); both fsync their output)"
echo "  opconvert merge / cp -r, no sync: ${r2}x   (target <= 2x: $(verdict "$r2" 2 le))"
RSS_MB=$(calc "${RSS[opconvert merge]} * 1024 / 1e6" 0)
echo "  opconvert peak RSS: $RSS_MIB MiB = $RSS_MB MB (target < 500 MB: $(verdict "$RSS_MB" 500 le)); minus largest tensor ($((LARGEST / 1048576)) MiB): $((RSS_MIB - LARGEST / 1048576)) MiB"
echo "  output: $OUT_BYTES bytes; opconvert's report (last run): $(printf '%s' "$MERGE_JSON" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f s, %d of %d tensors merged, files %s" % (d["seconds"], d["merged_tensors"], d["tensors"], d["files"]))')"
if (( PEFT )); then
  echo "  transformers+PEFT / opconvert: $(calc "${MED[transformers+PEFT merge]} / ${MED[opconvert merge]}")x; PEFT phases (last run, s): $PHASES; output $PEFT_BYTES bytes"
  [[ -n "${ACC:-}" ]] && { echo "  accuracy vs bf16(W + s*B@A) rounded once (f64 math):"; printf '%s\n' "$ACC" | sed 's/^/    /'; }
fi
log "disk after: $(df -h "$DATA" | awk 'NR==2 {print $4 " free"}')"
