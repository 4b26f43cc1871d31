#!/usr/bin/env bash
# Fault injection for the "nothing lost" promise, on a multi-GB merge:
#   - SIGKILL at TRIALS random moments (half onto a fresh output, half replacing a previous
#     complete output with --overwrite);
#   - SIGINT at TRIALS random moments (must exit 130 having removed its temporaries);
#   - disk full: the output on a small tmpfs, fresh and replacing a previous output.
# After each: the inputs' checksums are unchanged, the output is absent or complete (equal
# to a reference merge, byte for byte), or the previous output intact; and after the next
# run, no temporaries are left. Root is needed for the tmpfs part (skipped otherwise).
#
#   bash scripts/fault-inject.sh [TRIALS]      (default 10; SMALL=1 for a ~0.25 GB base)
#   OPCONVERT=path/to/opconvert                (default: builds .build/release)
set -uo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-10}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-faults.XXXXXX")
MNT=""
cleanup() { [[ -n "$MNT" ]] && umount "$MNT" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '%s\n' "$*"; }
fail=0
# check NAME COMMAND...: runs the command as the condition.
check() { local name=$1; shift; if "$@"; then log "  ok   $name"; else log "  FAIL $name"; fail=$((fail + 1)); fi; }

BIN=${OPCONVERT:-}
if [[ -z "$BIN" ]]; then
  swift build -c release --product opconvert >/dev/null 2>&1 || { log "release build failed"; exit 1; }
  BIN=$PWD/.build/release/opconvert
fi

# A LLaMA-shaped bf16 base (2 GB; SMALL=1: 0.25 GB) and a rank-32 LoRA.
if [[ -n "${SMALL:-}" ]]; then size=(--layers 4 --hidden 1024 --intermediate 2816 --vocab 16000); else size=(); fi
python3 bench/make_llama_base.py --out "$WORK" "${size[@]}" >/dev/null || { log "generating the base failed (needs numpy)"; exit 1; }
BASE=$WORK/llama-1b
AD=$(ls -d "$WORK"/llama-1b-lora-*)
sums() { (cd "$WORK" && find llama-1b* -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
outsum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
leftovers() { ls -a "$1" | grep -c 'opconvert-' ; }
INPUTS=$(sums)
log "base $(du -sh "$BASE" | cut -f1), adapter $(du -sh "$AD" | cut -f1); inputs $INPUTS"

# The reference: one clean merge, timed.
t0=$(date +%s.%N)
"$BIN" merge "$BASE" "$AD" -o "$WORK/ref" --no-progress >/dev/null || { log "reference merge failed"; exit 1; }
t1=$(date +%s.%N)
DUR=$(python3 -c "print(round($t1 - $t0, 3))")
REF=$(outsum "$WORK/ref")
log "reference merge: ${DUR}s, output $REF"

# Kills a merge to OUT (--overwrite) after a random delay in [0, DUR); prints the exit status.
killed_run() {
  local sig=$1 out=$2
  "$BIN" merge "$BASE" "$AD" -o "$out" --overwrite --no-progress >/dev/null 2>"$WORK/err" &
  local pid=$!
  sleep "$(python3 -c "import random; print(round(random.uniform(0, $DUR), 3))")"
  kill "-$sig" "$pid" 2>/dev/null
  wait "$pid"
  echo $?
}

for kind in KILL INT; do
  log "SIG$kind at $TRIALS random moments:"
  for i in $(seq 1 "$TRIALS"); do
    out=$WORK/out-$kind
    previous=""
    if (( i % 2 == 0 )); then cp -r "$WORK/ref" "$out.prev" && rm -rf "$out" && mv "$out.prev" "$out"; previous=$REF; else rm -rf "$out"; fi
    st=$(killed_run "$kind" "$out")
    state="absent"
    if [[ -d "$out" ]]; then s=$(outsum "$out"); if [[ "$s" == "$REF" ]]; then state="complete"; else state="DAMAGED($s)"; fi; fi
    good=false
    [[ $state == complete || ( $state == absent && -z "$previous" ) ]] && good=true
    check "trial $i (status $st, previous output: $([[ -n $previous ]] && echo yes || echo no)): output $state" $good
    if [[ $kind == INT && $st != 0 ]]; then
      good=false; [[ $st == 130 && $(leftovers "$WORK") == 0 ]] && good=true
      check "trial $i: SIGINT exits 130 and leaves no temporary" $good
    fi
    good=false; [[ $(sums) == "$INPUTS" ]] && good=true
    check "trial $i: inputs unchanged" $good
    # The next run (not killed) completes and leaves nothing of the killed one behind.
    "$BIN" merge "$BASE" "$AD" -o "$out" --overwrite --no-progress >/dev/null 2>"$WORK/err2"
    good=false; [[ $(outsum "$out") == "$REF" && $(leftovers "$WORK") == 0 ]] && good=true
    check "trial $i: the next run completes, no temporaries left $(grep -o 'removed a temporary' "$WORK/err2" | head -1)" $good
  done
done

if [[ $(id -u) -eq 0 ]]; then
  MNT=$WORK/full
  mkdir -p "$MNT"
  half=$(( $(du -sb "$WORK/ref" | cut -f1) / 2 / 1048576 ))
  if mount -t tmpfs -o size=${half}m tmpfs "$MNT"; then
    log "disk full (tmpfs of ${half} MiB, half the output):"
    "$BIN" merge "$BASE" "$AD" -o "$MNT/out" --no-progress >/dev/null 2>"$WORK/err"
    st=$?
    good=false
    [[ $st == 74 && $(wc -l < "$WORK/err") == 1 ]] && grep -q "$MNT/out" "$WORK/err" && ! grep -q opconvert-tmp "$WORK/err" && good=true
    check "fresh output: exit 74 ($st), one line naming the output: $(head -c 200 "$WORK/err")" $good
    good=false; [[ -z $(ls -A "$MNT") ]] && good=true
    check "fresh output: nothing left on the full disk" $good
    # A small previous output must survive a failed replacement.
    "$BIN" merge fixtures/peft/models/llama fixtures/peft/adapters/llama_lora -o "$MNT/out" --no-progress >/dev/null
    small=$(outsum "$MNT/out")
    "$BIN" merge "$BASE" "$AD" -o "$MNT/out" --overwrite --no-progress >/dev/null 2>"$WORK/err"
    st=$?
    good=false; [[ $st == 74 && $(outsum "$MNT/out") == "$small" && $(leftovers "$MNT") == 0 ]] && good=true
    check "replacing: exit 74 ($st), previous output intact, no temporaries: $(head -c 200 "$WORK/err")" $good
    good=false; [[ $(sums) == "$INPUTS" ]] && good=true
    check "disk full: inputs unchanged" $good
  else
    log "disk full: skipped (tmpfs mount refused)"
  fi
else
  log "disk full: skipped (needs root for the tmpfs)"
fi

if (( fail == 0 )); then log "fault injection: all checks passed"; else log "fault injection: $fail checks FAILED"; fi
exit $(( fail > 0 ))
