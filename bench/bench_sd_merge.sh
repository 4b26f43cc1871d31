#!/usr/bin/env bash
# Stable Diffusion merge benchmark: a rank-32 kohya LoRA (SGM names, every attention / ff /
# proj layer of the UNet) folded into an SDXL-sized single-file F16 checkpoint (~6.9 GB,
# random values, real SGM tensor names and shapes) by `opconvert merge`, against `cp` of the
# checkpoint (+ fsync), a rank-8 LyCORIS LoHa on the same modules (its deltas are computed per
# module during the merge: time and peak RSS show that) and the diffusers path (UNet from config in diffusers layout,
# load_lora_weights + fuse_lora + save_pretrained, fsync'd) in the same run.
#
#   bench/bench_sd_merge.sh             # ~7 GB input, ~25 GB disk at peak
#   SMALL=1 bench/bench_sd_merge.sh     # the same script on a ~1/8-size model (to test it)
#
# Environment: BENCH_DIR (scratch, default /tmp/opconvert-bench-sd; inputs are made there on
# first use and reused), REPS (1) for cp/opconvert, PY_REPS (1) for diffusers, NO_PYTHON=1,
# SKIP_BUILD=1, OPCONVERT=binary (see bench/README.md), KEEP=0 deletes the inputs at the end.
BENCH_DIR=${BENCH_DIR:-/tmp/opconvert-bench-sd}
export DATA=$BENCH_DIR
REPS=${REPS:-1}
source "$(dirname "$0")/lib.sh"

PY_REPS=${PY_REPS:-1}
SIZE=full; [[ "${SMALL:-0}" == 1 ]] && SIZE=small
IN=$BENCH_DIR/$SIZE
OUTD=$BENCH_DIR/out
mkdir -p "$OUTD"
cleanup_outputs() { rm -rf "$OUTD"/* "$OUTD"/.[!.]* 2>/dev/null || true; }
trap 'cleanup_outputs; rm -rf "$WORK"; [[ "${KEEP:-1}" == 1 ]] || rm -rf "$IN"' EXIT

need_time
build_release
log "$(describe_build)"
log "disk before: $(df -h "$BENCH_DIR" | awk 'NR==2 {print $4 " free of " $2 " on " $6}')"
if [[ ! -f "$IN/sdxl.safetensors" || ! -f "$IN/lora.safetensors" || ! -f "$IN/unet/diffusion_pytorch_model.safetensors" ]]; then
  FREE=$(free_bytes "$BENCH_DIR")
  if [[ $SIZE == full ]] && (( FREE < 30000000000 )); then log "need about 30 GB free in $BENCH_DIR"; exit 1; fi
  log "making $IN (SDXL-shaped checkpoint, LoRA, diffusers UNet) ..."
  rm -rf "$IN"
  "$PY" bench/sd_reference.py make "$IN" $([[ $SIZE == small ]] && echo --small)
fi
CKPT=$IN/sdxl.safetensors
LORA=$IN/lora.safetensors
LOHA=$IN/loha.safetensors
[[ -f "$LOHA" ]] || "$PY" bench/sd_reference.py loha "$IN"
CKPT_BYTES=$(stat -c %s "$CKPT")
LORA_BYTES=$(stat -c %s "$LORA")
UNET_BYTES=$(tree_bytes "$IN/unet")
cleanup_outputs
FREE=$(free_bytes "$BENCH_DIR")
NEED=$((CKPT_BYTES + UNET_BYTES + 1000000000))
if (( FREE < NEED )); then log "need about $((NEED / 1000000000)) GB free in $BENCH_DIR for the outputs"; exit 1; fi
log "checkpoint $CKPT_BYTES bytes, LoRA $LORA_BYTES bytes, diffusers UNet $UNET_BYTES bytes"

BUSY_BEFORE=$(cpu_busy 2)
log "machine CPU busy before measuring: ${BUSY_BEFORE}% (load average $(cut -d" " -f1-3 /proc/loadavg))"
PREP='cleanup_outputs; sync; warm "$CKPT" "$LORA"'
measure "cp checkpoint"          "$PREP" "cp --reflink=never '$CKPT' '$OUTD/cp.safetensors'"
measure "cp checkpoint + fsync"  "$PREP" "cp --reflink=never '$CKPT' '$OUTD/cp.safetensors' && sync '$OUTD/cp.safetensors'"
measure "opconvert merge"        "$PREP" "'$BIN' merge '$CKPT' '$LORA' -o '$OUTD/merged.safetensors' --no-progress --json"
MERGE_JSON=$(cat "$WORK/last.out")
OUT_BYTES=$(tree_bytes "$OUTD/merged.safetensors")
PREP_LOHA='cleanup_outputs; sync; warm "$CKPT" "$LOHA"'
measure "opconvert merge (LoHa r8)" "$PREP_LOHA" "'$BIN' merge '$CKPT' '$LOHA' -o '$OUTD/merged-loha.safetensors' --no-progress --json"
DIFF=0
if [[ "${NO_PYTHON:-0}" != 1 ]] && "$PY" -c 'import torch, diffusers, peft' 2>/dev/null; then
  DIFF=1
  PREP_PY='cleanup_outputs; sync; warm "$IN/unet" "$LORA"'
  measure "diffusers fuse_lora+save" "$PREP_PY" "'$PY' bench/sd_reference.py diffusers '$IN' '$OUTD/diffusers-unet'" "$PY_REPS"
  PHASES=$(tail -1 "$WORK/last.out")
fi
cleanup_outputs

row() {
  local l=$1 b=$2
  printf '%-28s %8s %8s %10s %9s\n' "$l" "${MED[$l]}" "${MIN[$l]}" "$(gbps "$b" "${MED[$l]}")" "$(mib "${RSS[$l]}")"
}
echo
echo "== SD merge benchmark ($SIZE): $(describe_build)"
echo "   $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(findmnt -no FSTYPE --target "$BENCH_DIR") on $(findmnt -no SOURCE --target "$BENCH_DIR"); page cache warm; REPS=$REPS; CPU busy before: ${BUSY_BEFORE}%, load average after: $(cut -d" " -f1-3 /proc/loadavg)"
echo "   checkpoint $CKPT_BYTES bytes (F16, SGM names); LoRA $LORA_BYTES bytes (r=32, F16); diffusers UNet $UNET_BYTES bytes"
echo
printf '%-28s %8s %8s %10s %9s\n' "measurement" "median s" "min s" "ckpt GB/s" "RSS MiB"
row "cp checkpoint" "$CKPT_BYTES"
row "cp checkpoint + fsync" "$CKPT_BYTES"
row "opconvert merge" "$CKPT_BYTES"
row "opconvert merge (LoHa r8)" "$CKPT_BYTES"
(( DIFF )) && row "diffusers fuse_lora+save" "$UNET_BYTES"
echo
echo "ratios (medians)"
echo "  opconvert merge / cp + fsync : $(calc "${MED[opconvert merge]} / ${MED[cp checkpoint + fsync]}")x   (opconvert fsyncs its output too)"
echo "  opconvert merge / cp, no sync: $(calc "${MED[opconvert merge]} / ${MED[cp checkpoint]}")x"
echo "  opconvert peak RSS: $(mib "${RSS[opconvert merge]}") MiB for a $((CKPT_BYTES / 1048576)) MiB checkpoint"
echo "  LoHa (722 modules, deltas computed in f64 during the merge): $(calc "${MED[opconvert merge (LoHa r8)]} / ${MED[cp checkpoint + fsync]}")x cp + fsync, peak RSS $(mib "${RSS[opconvert merge (LoHa r8)]}") MiB"
echo "  output: $OUT_BYTES bytes; opconvert's report: $(printf '%s' "$MERGE_JSON" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f s, %d of %d tensors merged" % (d["seconds"], d["merged_tensors"], d["tensors"]))' 2>/dev/null || echo '?')"
if (( DIFF )); then
  echo "  diffusers / opconvert: $(calc "${MED[diffusers fuse_lora+save]} / ${MED[opconvert merge]}")x (diffusers writes the UNet only: $UNET_BYTES of $CKPT_BYTES bytes); peak RSS $(mib "${RSS[diffusers fuse_lora+save]}") MiB; phases (s): $PHASES"
fi
log "disk after: $(df -h "$BENCH_DIR" | awk 'NR==2 {print $4 " free"}')"
