#!/usr/bin/env bash
# Installs the system libraries opconvert links against (Debian/Ubuntu), if missing.
set -euo pipefail
need=()
for p in libzstd-dev libopenblas-dev libjson-c-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# pip, for CI's CUDA kernel compile check (.ci/run installs scripts/ci-requirements.txt).
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
