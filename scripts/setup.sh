#!/usr/bin/env bash
# Installs the system libraries opconvert links against (Debian/Ubuntu), if missing.
set -euo pipefail
need=()
# librsvg2-bin: rsvg-convert, for the test that renders the LR-sweep plot.
for p in libzstd-dev libopenblas-dev libjson-c-dev librsvg2-bin; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# pip, for the NVRTC wheel below.
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# NVRTC (the CUDA runtime compiler, a pip wheel; no GPU, driver or toolkit needed) for the
# tests and CI check that compile every CUDA kernel: installed under .build/nvrtc, pinned in
# scripts/ci-requirements.txt. Not fatal: without it those tests say how to skip them.
cd "$(dirname "$0")/.."
nvrtc=.build/nvrtc
if ! cmp -s scripts/ci-requirements.txt "$nvrtc/.requirements" 2>/dev/null; then
  rm -rf "$nvrtc"
  mkdir -p .build
  if PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
       --target "$nvrtc" -r scripts/ci-requirements.txt >/tmp/opconvert-setup-pip.log 2>&1; then
    cp scripts/ci-requirements.txt "$nvrtc/.requirements"
  else
    tail -n 5 /tmp/opconvert-setup-pip.log
    echo "setup: could not pip-install NVRTC (scripts/ci-requirements.txt); the CUDA kernel compile tests will fail (OPCONVERT_SKIP_NVRTC=1 skips them)" >&2
  fi
fi
