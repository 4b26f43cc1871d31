#!/usr/bin/env bash
# Builds the release opconvert of one commit outside the working tree, for benchmarking a
# fixed state while the tree is being edited (or does not compile):
#
#   bench/build_commit.sh [COMMIT]      # default HEAD; prints the binary's path
#   OPCONVERT=$(bench/build_commit.sh HEAD) bench/bench_merge.sh
#
# The commit is exported with `git archive` to /tmp/opconvert-<sha> (nothing in this
# checkout or its .git is touched) and built there with its own --scratch-path .build-bench.
# Package dependencies are copied from this checkout's .build-bench or .build if present
# (so no network is needed when they are already fetched).
set -euo pipefail
cd "$(dirname "$0")/.."
sha=$(git rev-parse --short=12 "${1:-HEAD}")
dir=${TMPDIR:-/tmp}/opconvert-$sha
if [[ ! -x "$dir/.build-bench/release/opconvert" ]]; then
  rm -rf "$dir" && mkdir -p "$dir/.build-bench"
  git archive "$sha" | tar -x -C "$dir"
  [[ -f Package.resolved && ! -f "$dir/Package.resolved" ]] && cp Package.resolved "$dir/"
  for src in .build-bench .build; do
    if [[ -d $src/repositories ]]; then
      cp -a "$src/repositories" "$src/checkouts" "$dir/.build-bench/" 2>/dev/null || true
      [[ -f $src/workspace-state.json ]] && cp "$src/workspace-state.json" "$dir/.build-bench/"
      break
    fi
  done
  (cd "$dir" && swift build -c release --scratch-path .build-bench >&2)
fi
echo "$dir/.build-bench/release/opconvert"
