#!/usr/bin/env bash
# `opconvert inspect` on the three largest headers the format allows (100 MB metadata value,
# ~50M-dimension shape, 1.7M tensors; bench/make_extreme_headers.py) against the reference
# parsing the same header: safetensors.safe_open + keys() + metadata(). Prints time and
# peak RSS of each and our/reference ratios (target: <= 1.00 for both).
#   REPS=3 SKIP_BUILD=1 OPCONVERT=PATH PY=python  (see bench/lib.sh)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_time
build_release
DIR=$DATA/extreme
$GENPY "$ROOT/bench/make_extreme_headers.py" "$DIR" >&2
describe_build
REF='import sys
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    print(len(f.keys()), len(f.metadata() or {}))'
printf '%-26s %10s %10s %10s %10s %8s %8s\n' file ref_s ours_s ref_MiB ours_MiB time_x rss_x
for name in meta-100mb shape-50m entries-1.7m; do
  f=$DIR/$name.safetensors
  warm "$f"
  measure "ref $name" : "$PY -c '$REF' '$f'"
  measure "ours $name" : "'$BIN' inspect '$f'"
  printf '%-26s %10s %10s %10s %10s %8s %8s\n' "$name" "${MED[ref $name]}" "${MED[ours $name]}" \
    "$(mib "${RSS[ref $name]}")" "$(mib "${RSS[ours $name]}")" \
    "$(calc "${MED[ours $name]} / ${MED[ref $name]}")" "$(calc "${RSS[ours $name]} / ${RSS[ref $name]}")"
done
