#!/usr/bin/env bash
# Regenerates man/opconvert.1 with swift-argument-parser's generate-manual plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
swift package --allow-writing-to-package-directory generate-manual
cp .build/plugins/GenerateManual/outputs/opconvert/opconvert.1 man/opconvert.1
