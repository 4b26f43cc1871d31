# Shared helpers for the bench/*.sh scripts (sourced, not run).
#
#   REPS=3          repetitions of each measurement (the median is reported, min too)
#   SKIP_BUILD=1    use the existing .build-bench/release/opconvert
#   PY=...          Python with safetensors, numpy, ml_dtypes (+ torch, peft, transformers)
#   OPCONVERT=PATH  benchmark this binary instead of building the working tree (e.g. one
#                   built from `git archive <commit>` in /tmp; see bench/README.md)

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
DATA=${DATA:-$ROOT/bench/data}
BIN=${OPCONVERT:-$ROOT/.build-bench/release/opconvert}
REPS=${REPS:-3}
if [[ -z "${PY:-}" ]]; then
  if [[ -x /opt/fixenv/bin/python ]]; then PY=/opt/fixenv/bin/python; else PY=python3; fi
fi
# numpy-only generators: any python3 with numpy will do.
if python3 -c 'import numpy' 2>/dev/null; then GENPY=python3; else GENPY=$PY; fi
mkdir -p "$DATA"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*" >&2; }

need_time() {
  if [[ ! -x /usr/bin/time ]]; then
    log "installing GNU time (for peak RSS)"
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq time
  fi
}

# Builds the release binary in its own scratch path (never touches .build). The working
# tree may be edited while we build; retry if swift says a file changed under it.
build_release() {
  if [[ -n "${OPCONVERT:-}" ]]; then
    [[ -x "$BIN" ]] || { log "OPCONVERT=$BIN is not an executable"; exit 1; }
    log "OPCONVERT set: using $BIN (no build)"; return
  fi
  if [[ "${SKIP_BUILD:-0}" == 1 && -x "$BIN" ]]; then log "SKIP_BUILD=1: using $BIN"; return; fi
  local i
  for i in 1 2 3; do
    log "building release binary (swift build -c release --scratch-path .build-bench) ..."
    if swift build -c release --scratch-path .build-bench >"$WORK/build.log" 2>&1; then
      tail -1 "$WORK/build.log" >&2; return
    fi
    if grep -q "modified during the build" "$WORK/build.log"; then log "source changed during the build; retrying"; sleep 5; continue; fi
    tail -40 "$WORK/build.log" >&2; build_hint; exit 1
  done
  tail -40 "$WORK/build.log" >&2; build_hint; exit 1
}
build_hint() {
  log "the working tree does not build; benchmark a commit instead:"
  log "  OPCONVERT=\$(bench/build_commit.sh HEAD) $0"
}

describe_build() {
  if [[ -n "${OPCONVERT:-}" ]]; then
    echo "opconvert $("$BIN" --version 2>/dev/null || echo '?') ($BIN, built $(date -r "$BIN" '+%F %T'))"; return
  fi
  local rev dirty
  rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
  dirty=$(git -C "$ROOT" status --porcelain -- Sources Package.swift 2>/dev/null | wc -l)
  echo "opconvert $("$BIN" --version 2>/dev/null || echo '?') at $rev ($dirty changed/untracked paths under Sources)"
}

# Free space (bytes) on the filesystem holding $1.
free_bytes() { df -PB1 "$1" | awk 'NR==2 {print $4}'; }

# Reads every regular file under the given paths twice (page-cache warm-up).
warm() {
  local p
  for p in "$@"; do
    if [[ -d "$p" ]]; then find "$p" -type f -exec cat {} + >/dev/null
    else cat "$p" >/dev/null; fi
  done
  for p in "$@"; do
    if [[ -d "$p" ]]; then find "$p" -type f -exec cat {} + >/dev/null
    else cat "$p" >/dev/null; fi
  done
}

# Total bytes of regular files under a path.
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }  # %.0f: mawk's %d stops at 2^31-1

# measure LABEL PREP CMD
#   Runs PREP (untimed: clean outputs, then sync, then warm inputs), then CMD under GNU
#   time, REPS times. Wall time comes from $EPOCHREALTIME around the command; peak RSS is
#   GNU time's "Maximum resident set size" (largest process of the command). Results go
#   to MED[LABEL], MIN[LABEL], RSS[LABEL] (KiB, max over reps), ALL[LABEL]. CMD's stdout of
#   the last rep is left in $WORK/last.out.
declare -A MED MIN RSS ALL
measure() {
  local label=$1 prep=$2 cmd=$3 reps=${4:-$REPS} i t0 t1 walls="" rss=0 r
  for ((i = 1; i <= reps; i++)); do
    eval "$prep"
    sync
    t0=$EPOCHREALTIME
    if ! /usr/bin/time -v -o "$WORK/time.txt" bash -c "$cmd" >"$WORK/last.out" 2>"$WORK/last.err"; then
      log "FAILED: $cmd"; cat "$WORK/last.err" >&2; cat "$WORK/time.txt" >&2 || true; exit 1
    fi
    t1=$EPOCHREALTIME
    walls+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') "
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/time.txt")
    (( r > rss )) && rss=$r
  done
  ALL[$label]=$walls
  MED[$label]=$(printf '%s\n' $walls | sort -g | awk '{a[NR] = $1} END {printf "%.3f", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')
  MIN[$label]=$(printf '%s\n' $walls | sort -g | head -1)
  RSS[$label]=$rss
  log "  $(printf '%-34s' "$label") median ${MED[$label]} s  (runs: $walls)  peak RSS $((rss / 1024)) MiB"
}

# Arithmetic helpers (floating point through awk).
calc() { awk "BEGIN {printf \"%.${2:-2}f\", $1}"; }
gbps() { awk -v b="$1" -v t="$2" 'BEGIN {if (t > 0) printf "%.2f", b / t / 1e9; else print "-"}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }

# CPU busy % of the whole machine over $1 seconds (other users' load makes timings noisy).
cpu_busy() {
  local a b
  a=($(head -1 /proc/stat)); sleep "${1:-2}"; b=($(head -1 /proc/stat))
  awk -v u1="${a[1]}" -v n1="${a[2]}" -v s1="${a[3]}" -v i1="${a[4]}" -v w1="${a[5]}" -v q1="${a[6]}" -v sq1="${a[7]}" -v st1="${a[8]}" \
      -v u2="${b[1]}" -v n2="${b[2]}" -v s2="${b[3]}" -v i2="${b[4]}" -v w2="${b[5]}" -v q2="${b[6]}" -v sq2="${b[7]}" -v st2="${b[8]}" \
      'BEGIN {busy = (u2-u1)+(n2-n1)+(s2-s1)+(q2-q1)+(sq2-sq1)+(st2-st1); tot = busy+(i2-i1)+(w2-w1); printf "%.0f", tot ? 100*busy/tot : 0}'
}
