#!/usr/bin/env bash
# Regenerates man/opconvert.1 from the built CLI's help (scripts/generate-man.py: ASCII only,
# defaults, EXAMPLES, EXIT STATUS from ExitStatus.swift), then checks that groff renders it
# without a warning.
#
#   scripts/generate-man.sh [OPCONVERT_BINARY]   (default: .build/debug/opconvert, built if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-.build/debug/opconvert}
if [ $# -eq 0 ]; then swift build --product opconvert >&2; fi
python3 scripts/generate-man.py "$bin" man/opconvert.1
if command -v groff >/dev/null; then
  warnings=$(LC_ALL=C groff -man -Tascii -ww man/opconvert.1 2>&1 >/dev/null || true)
  if [ -n "$warnings" ]; then echo "$warnings" >&2; echo "generate-man: groff warns about man/opconvert.1" >&2; exit 1; fi
fi
echo "wrote man/opconvert.1"
