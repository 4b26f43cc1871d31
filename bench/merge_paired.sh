#!/usr/bin/env bash
# Paired, interleaved merge timing: each round runs `cp -r base + sync`, then `opconvert
# merge` with every binary given (default: this tree's release build), in that order, each
# after the same prep (delete outputs, sync, cat the inputs twice); prints each run and the
# median and spread of merge / (cp -r + sync) per binary, with user/sys CPU and peak RSS.
# On a shared machine only such paired ratios mean anything.
#
#   bench/merge_paired.sh [ROUNDS] [BINARY...]       (ROUNDS default 5)
#
# Uses bench/bench_merge.sh's inputs (BASE_NAME, default llama-1b; made by it or by
# bench/make_llama_base.py) and SHARD (1GB).
source "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}; shift || true
BASE_NAME=${BASE_NAME:-llama-1b}
BASE=$DATA/$BASE_NAME ADAPTER=$DATA/$BASE_NAME-lora-r32 OUTD=$DATA/merge-out SHARD=${SHARD:-1GB}
[[ -d "$BASE" && -d "$ADAPTER" ]] || { log "no $BASE / $ADAPTER: run bench/bench_merge.sh once (or make_llama_base.py)"; exit 1; }
if (( $# == 0 )); then need_time; build_release; set -- "$BIN"; fi
mkdir -p "$OUTD"
trap 'rm -rf "$OUTD"/* "$WORK"' EXIT
one() {  # label command: prints "label wall user sys maxrss_kib"
  rm -rf "$OUTD"/*; sync; warm "$BASE" "$ADAPTER"; sync
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%U %S %M" -o "$WORK/t" bash -c "$2" >/dev/null
  echo "$1 $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}') $(cat "$WORK/t")"
}
for ((i = 1; i <= ROUNDS; i++)); do
  one cp "cp -r --reflink=never '$BASE' '$OUTD/cp' && sync '$OUTD/cp'/* '$OUTD/cp'"
  k=0; for b in "$@"; do k=$((k + 1)); one "m$k" "'$b' merge '$BASE' '$ADAPTER' -o '$OUTD/merged' --max-shard-size $SHARD --no-progress"; done
done | tee "$WORK/runs"
python3 - "$WORK/runs" "$@" <<'PY'
import statistics as st, sys
rounds, cur = [], None
for f in (l.split() for l in open(sys.argv[1]) if l.strip()):
    if f[0] == "cp": cur = {}; rounds.append(cur)
    cur[f[0]] = [float(x) for x in f[1:]]
def spread(v): return f"median {st.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"
print(f"cp -r + sync        wall {spread([r['cp'][0] for r in rounds])} s")
for k, b in enumerate(sys.argv[2:], 1):
    m = f"m{k}"; rs = [r for r in rounds if m in r]
    print(f"{b}\n  merge / (cp + sync) {spread([r[m][0] / r['cp'][0] for r in rs])}; wall {spread([r[m][0] for r in rs])} s;"
          f" user {st.median([r[m][1] for r in rs]):.2f} s, sys {st.median([r[m][2] for r in rs]):.2f} s; peak RSS {max(r[m][3] for r in rs) / 1024:.0f} MiB")
PY
