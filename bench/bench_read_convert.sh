#!/usr/bin/env bash
# Read/convert benchmark: a multi-GB F32 safetensors file cast to BF16 by opconvert,
# against the I/O floor (cat, cp of the input, cp of a file the size of the output) and the
# Python reference (safetensors + ml_dtypes, safetensors + torch). One run measures all.
#
#   bench/bench_read_convert.sh [SIZE]        SIZE default 4GB (decimal, as make_safetensors.py)
#
# Environment: REPS (3), PY_REPS (=REPS), SKIP_BUILD=1, OPCONVERT=binary, NO_PYTHON=1,
# NO_TORCH=1, NO_COLD=1 (skip the cold-cache rows), PY.
# Inputs live in bench/data/ (git-ignored) and are reused; outputs go to bench/data/out/
# (same disk) and /dev/shm, and are deleted before every measurement and at the end.
source "$(dirname "$0")/lib.sh"

SIZE=${1:-${SIZE:-4GB}}
PY_REPS=${PY_REPS:-$REPS}
FILE=$DATA/f32_${SIZE}.safetensors
OUTD=$DATA/out
SHM=/dev/shm/opconvert-bench-$$
mkdir -p "$OUTD"
cleanup_outputs() { rm -rf "$OUTD"/* "$OUTD"/.[!.]* "$SHM" 2>/dev/null || true; }
# Drops a file's clean pages from the page cache (only that file), for the cold-cache rows.
evict() { python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$1"; }
trap 'cleanup_outputs; rm -rf "$WORK"' EXIT

need_time
build_release
log "$(describe_build)"

if [[ ! -f "$FILE" ]]; then
  log "making $FILE ..."
  "$GENPY" bench/make_safetensors.py --size "$SIZE" -o "$FILE"
fi
IN_BYTES=$(stat -c %s "$FILE")
# Largest tensor and tensor count, read straight from the header (not through opconvert).
read -r LARGEST NTENSORS < <(python3 - "$FILE" <<'EOF'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
h.pop("__metadata__", None)
print(max(v["data_offsets"][1] - v["data_offsets"][0] for v in h.values()), len(h))
EOF
)

cleanup_outputs
FREE=$(free_bytes "$DATA")
log "disk: $(df -h "$DATA" | awk 'NR==2 {print $4 " free of " $2 " on " $6}'); input $IN_BYTES bytes, $NTENSORS tensors, largest $LARGEST"
NEED=$((IN_BYTES * 3 + 1000000000))   # cp of the input + output-size file + two outputs, with margin
if (( FREE < NEED )); then log "need about $((NEED / 1000000000)) GB free in $DATA"; exit 1; fi

# Warm-up conversion (untimed), which also tells us the output size.
warm "$FILE"
"$BIN" convert "$FILE" -o "$OUTD/conv.safetensors" --dtype bf16 --no-progress --json >"$WORK/conv.json"
OUT_BYTES=$(stat -c %s "$OUTD/conv.safetensors")
cleanup_outputs
SIZED=$DATA/outsize_${OUT_BYTES}.bin
[[ -f "$SIZED" ]] || head -c "$OUT_BYTES" "$FILE" >"$SIZED"

BUSY_BEFORE=$(cpu_busy 2)
log "machine CPU busy before measuring: ${BUSY_BEFORE}% (load average $(cut -d" " -f1-3 /proc/loadavg))"
log ""
log "measuring (REPS=$REPS; each run: delete outputs, sync, cat inputs twice, then time) ..."
PREP_IN='cleanup_outputs; sync; warm "$FILE"'
PREP_SIZED='cleanup_outputs; sync; warm "$SIZED"'
measure "cat input"                   "$PREP_IN"    "cat '$FILE' >/dev/null"
measure "opconvert read (inspect --verify)" "$PREP_IN" "'$BIN' inspect '$FILE' --verify --json"
measure "cp input"                    "$PREP_IN"    "cp --reflink=never '$FILE' '$OUTD/cp.bin'"
measure "cp input + fsync"            "$PREP_IN"    "cp --reflink=never '$FILE' '$OUTD/cp.bin' && sync '$OUTD/cp.bin'"
measure "cp output-size"              "$PREP_SIZED" "cp --reflink=never '$SIZED' '$OUTD/cp.bin'"
measure "cp output-size + fsync"      "$PREP_SIZED" "cp --reflink=never '$SIZED' '$OUTD/cp.bin' && sync '$OUTD/cp.bin'"
measure "opconvert bf16"              "$PREP_IN"    "'$BIN' convert '$FILE' -o '$OUTD/conv.safetensors' --dtype bf16 --no-progress --json"
cp "$WORK/last.out" "$WORK/conv.json"
measure "opconvert f32 (copy path)"   "$PREP_IN"    "'$BIN' convert '$FILE' -o '$OUTD/conv.safetensors' --dtype f32 --no-progress --json"
SHM_OK=0
if (( $(free_bytes /dev/shm) > OUT_BYTES * 2 )); then
  SHM_OK=1
  measure "opconvert bf16 -> tmpfs"   "$PREP_IN; mkdir -p '$SHM'"    "'$BIN' convert '$FILE' -o '$SHM/conv.safetensors' --dtype bf16 --no-progress --json"
  measure "cat input + cp out -> tmpfs" "$PREP_IN; warm '$SIZED'; mkdir -p '$SHM'" "cat '$FILE' >/dev/null && cp '$SIZED' '$SHM/cp.bin'"
fi
COLD=0
if [[ "${NO_COLD:-0}" != 1 ]]; then
  # Cold page cache for the input only (posix_fadvise DONTNEED on that file), output to disk.
  COLD=1
  PREP_COLD='cleanup_outputs; sync; evict "$FILE"'
  measure "cat input (cold)"            "$PREP_COLD"  "cat '$FILE' >/dev/null"
  measure "opconvert bf16 (cold input)" "$PREP_COLD"  "'$BIN' convert '$FILE' -o '$OUTD/conv.safetensors' --dtype bf16 --no-progress --json"
fi

PY_NUMPY=0 PY_TORCH=0
if [[ "${NO_PYTHON:-0}" != 1 ]] && "$PY" -c 'import numpy, ml_dtypes, safetensors' 2>/dev/null; then
  PY_NUMPY=1
  measure "python safetensors+ml_dtypes" "$PREP_IN" "'$PY' bench/ref_convert.py numpy '$FILE' '$OUTD/ref.safetensors'" "$PY_REPS"
  PHASES_NUMPY=$(cat "$WORK/last.out")
  # Same bytes? (untimed) opconvert's output against the reference writer's.
  "$BIN" convert "$FILE" -o "$OUTD/conv.safetensors" --dtype bf16 --no-progress >/dev/null
  if cmp -s "$OUTD/conv.safetensors" "$OUTD/ref.safetensors"; then SAME="identical"; else SAME="DIFFERENT ($(cmp "$OUTD/conv.safetensors" "$OUTD/ref.safetensors" 2>&1 | head -1))"; fi
  cleanup_outputs
  if [[ "${NO_TORCH:-0}" != 1 ]] && "$PY" -c 'import torch' 2>/dev/null; then
    PY_TORCH=1
    measure "python safetensors+torch" "$PREP_IN" "'$PY' bench/ref_convert.py torch '$FILE' '$OUTD/ref.safetensors'" "$PY_REPS"
    PHASES_TORCH=$(cat "$WORK/last.out")
  fi
fi
cleanup_outputs

# ---------------------------------------------------------------------------------------
row() { # label  -> wall, GB/s of input, GB/s of output, RSS
  local l=$1 inb=$2 outb=$3
  printf '%-32s %8s %8s %9s %9s %10s\n' "$l" "${MED[$l]}" "${MIN[$l]}" "$( [[ $inb == - ]] && echo - || gbps "$inb" "${MED[$l]}")" \
    "$( [[ $outb == - ]] && echo - || gbps "$outb" "${MED[$l]}")" "$(mib "${RSS[$l]}")"
}
echo
echo "== read/convert benchmark: $(describe_build)"
echo "   $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(findmnt -no FSTYPE --target "$DATA") on $(findmnt -no SOURCE --target "$DATA"); page cache warm; REPS=$REPS; CPU busy before: ${BUSY_BEFORE}%, load average after: $(cut -d" " -f1-3 /proc/loadavg)"
echo "   input $FILE: $IN_BYTES bytes, $NTENSORS F32 tensors, largest $LARGEST bytes; bf16 output $OUT_BYTES bytes"
echo
printf '%-32s %8s %8s %9s %9s %10s\n' "measurement" "median s" "min s" "in GB/s" "out GB/s" "RSS MiB"
row "cat input" "$IN_BYTES" -
row "cp input" "$IN_BYTES" "$IN_BYTES"
row "cp input + fsync" "$IN_BYTES" "$IN_BYTES"
row "cp output-size" - "$OUT_BYTES"
row "cp output-size + fsync" - "$OUT_BYTES"
row "opconvert bf16" "$IN_BYTES" "$OUT_BYTES"
row "opconvert f32 (copy path)" "$IN_BYTES" "$IN_BYTES"
if (( SHM_OK )); then
  row "opconvert bf16 -> tmpfs" "$IN_BYTES" "$OUT_BYTES"
  row "cat input + cp out -> tmpfs" "$IN_BYTES" "$OUT_BYTES"
fi
if (( COLD )); then
  row "cat input (cold)" "$IN_BYTES" -
  row "opconvert bf16 (cold input)" "$IN_BYTES" "$OUT_BYTES"
fi
(( PY_NUMPY )) && row "python safetensors+ml_dtypes" "$IN_BYTES" "$OUT_BYTES"
(( PY_TORCH )) && row "python safetensors+torch" "$IN_BYTES" "$OUT_BYTES"
echo
OPC=${MED[opconvert bf16]}
verdict() { awk -v v="$1" -v t="$2" -v dir="$3" 'BEGIN {ok = (dir == "le") ? v <= t : v >= t; print ok ? "ok" : "MISSES TARGET"}'; }
r1=$(calc "$OPC / ${MED[cp output-size + fsync]}")
r2=$(calc "$OPC / ${MED[cp output-size]}")
echo "ratios (medians)"
echo "  opconvert bf16 / cp of output-size file + fsync : ${r1}x   (target <= 1.5x: $(verdict "$r1" 1.5 le); both fsync their output)"
echo "  opconvert bf16 / cp of output-size file, no sync: ${r2}x   (target <= 1.5x: $(verdict "$r2" 1.5 le); opconvert fsyncs, cp does not)"
read_gbps=$(gbps "$IN_BYTES" "${MED[opconvert read (inspect --verify)]}")
cat_gbps0=$(gbps "$IN_BYTES" "${MED[cat input]}")
echo "  read every tensor (inspect --verify, whole process) $read_gbps GB/s vs cat $cat_gbps0 GB/s = $(calc "$read_gbps / $cat_gbps0 * 100" 0)%   (target >= 80%: $(verdict "$(calc "$read_gbps / $cat_gbps0" 3)" 0.8 ge))"
r3=$(calc "${MED[opconvert f32 (copy path)]} / ${MED[cp input + fsync]}")
echo "  opconvert f32 copy path / cp input + fsync      : ${r3}x"
if (( SHM_OK )); then
  cat_gbps=$(gbps "$IN_BYTES" "${MED[cat input]}")
  shm_gbps=$(gbps "$IN_BYTES" "${MED[opconvert bf16 -> tmpfs]}")
  r4=$(calc "$shm_gbps / $cat_gbps" 3)
  r5=$(calc "${MED[opconvert bf16 -> tmpfs]} / ${MED[cat input + cp out -> tmpfs]}")
  echo "  convert to tmpfs (read + cast + in-memory write): input GB/s $shm_gbps vs cat $cat_gbps = $(calc "$r4 * 100" 0)%"
  echo "        convert->tmpfs / (cat input + cp output->tmpfs) = ${r5}x (against its own floor)"
fi
if (( COLD )); then
  echo "  cold input: opconvert bf16 (cold) / warm = $(calc "${MED[opconvert bf16 (cold input)]} / $OPC")x; cat cold / warm = $(calc "${MED[cat input (cold)]} / ${MED[cat input]}")x"
fi
RSS_OPC_MIB=$(mib "${RSS[opconvert bf16]}")
echo "  peak RSS opconvert bf16: $RSS_OPC_MIB MiB; minus largest tensor ($((LARGEST / 1048576)) MiB): $((RSS_OPC_MIB - LARGEST / 1048576)) MiB (input file is $((IN_BYTES / 1048576)) MiB)"
if (( PY_NUMPY )); then
  echo "  python safetensors+ml_dtypes / opconvert: $(calc "${MED[python safetensors+ml_dtypes]} / $OPC")x slower; phases (last run, s): $PHASES_NUMPY"
  echo "  opconvert output vs safetensors.numpy output: $SAME"
fi
(( PY_TORCH )) && echo "  python safetensors+torch / opconvert: $(calc "${MED[python safetensors+torch]} / $OPC")x slower; phases (last run, s): $PHASES_TORCH"
echo "  opconvert's own report (last timed run): $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f s, %d of %d tensors cast, %d bytes written" % (d["seconds"], d["cast_tensors"], d["tensors"], d["output_bytes"]))' "$WORK/conv.json")"
