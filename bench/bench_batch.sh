#!/usr/bin/env bash
# Batch benchmark: N (default 200) small PEFT LoRA adapters of the tiny LLaMA fixture, each
# merged into fixtures/peft/models/llama, three ways in one run on the same machine:
#   * one `opconvert batch` run over a manifest of N merge jobs (--jobs 1, and --jobs $JOBS):
#     one process, the library calls of `opconvert merge`, each output fingerprinted;
#   * N separate `opconvert merge` processes, one after another (what a shell loop does);
#   * a Python loop over PEFT (bench/ref_peft_batch.py): one process, torch/transformers/
#     peft imported once, the base loaded once and restored from a kept copy before each
#     adapter, then PeftModel.from_pretrained + merge_and_unload + save_pretrained + fsync.
# Then the rerun of the finished manifest (every job skipped by its fingerprint).
#
#   bench/bench_batch.sh
#
# Environment: N (200), JOBS (2), REPS (1), SKIP_BUILD=1, OPCONVERT=binary, NO_PYTHON=1, PY.
source "$(dirname "$0")/lib.sh"

N=${N:-200}
JOBS=${JOBS:-2}
REPS=${REPS:-1}
SET=$DATA/batch-$N
OUTD=$DATA/batch-out
BASE=$ROOT/fixtures/peft/models/llama
cleanup_outputs() { rm -rf "$OUTD" "$SET/batch-out" "$SET"/.batch-out* 2>/dev/null || true; mkdir -p "$OUTD"; }
trap 'cleanup_outputs; rm -rf "$WORK"' EXIT

need_time
build_release
log "$(describe_build)"
if [[ ! -f "$SET/manifest.jsonl" ]]; then
  log "making $N adapters in $SET ..."
  "$PY" bench/make_batch_adapters.py "$SET" "$N" >&2
fi
ADAPTERS=$(ls -d "$SET"/adapters/a* | head -n "$N")
printf '%s\n' $ADAPTERS > "$WORK/adapters.txt"
log "machine CPU busy before measuring: $(cpu_busy 2)% (load average $(cut -d" " -f1-3 /proc/loadavg)); $(nproc) cores"
log ""
log "measuring $N merges (REPS=$REPS; each run: delete outputs, sync, cat inputs twice, then time) ..."
PREP='cleanup_outputs; sync; warm "$BASE" "$SET/adapters"'
measure "opconvert batch --jobs 1" "$PREP" "'$BIN' batch '$SET/manifest.jsonl' --json > '$WORK/batch.jsonl'"
measure "opconvert batch --jobs $JOBS" "$PREP" "'$BIN' batch '$SET/manifest.jsonl' --jobs $JOBS --json > '$WORK/batch.jsonl'"
measure "rerun (all skipped)" "sync" "'$BIN' batch '$SET/manifest.jsonl' --json > '$WORK/rerun.jsonl'"
SKIPPED=$(tail -1 "$WORK/rerun.jsonl" | python3 -c 'import json, sys; print(json.load(sys.stdin)["skipped"])')
measure "$N opconvert merge processes" "$PREP" \
  "i=0; while read -r a; do '$BIN' merge '$BASE' \"\$a\" -o '$OUTD'/p\$(printf %04d \$i) --no-progress > /dev/null; i=\$((i + 1)); done < '$WORK/adapters.txt'"
if [[ "${NO_PYTHON:-0}" != 1 ]]; then
  measure "Python loop over PEFT" "$PREP" "'$PY' bench/ref_peft_batch.py '$BASE' '$OUTD/py' $(echo $ADAPTERS) 2>/dev/null"
  log "  PEFT phases (s): $(cat "$WORK/last.out")"
fi
log ""
log "rerun skipped $SKIPPED of $N jobs"
log "| way | median s | per merge ms | vs batch --jobs 1 | peak RSS MiB |"
log "|---|---|---|---|---|"
REF=${MED["opconvert batch --jobs 1"]}
for label in "opconvert batch --jobs 1" "opconvert batch --jobs $JOBS" "rerun (all skipped)" "$N opconvert merge processes" "Python loop over PEFT"; do
  [[ -n "${MED[$label]:-}" ]] || continue
  log "| $label | ${MED[$label]} | $(calc "${MED[$label]} * 1000 / $N" 1) | $(calc "${MED[$label]} / $REF" 2)x | $(mib "${RSS[$label]}") |"
done
