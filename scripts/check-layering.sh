#!/usr/bin/env bash
# Fails when a library target imports one of the same rank or above it. The rank order is
# the one in Package.swift and docs/architecture.md; SwiftPM itself refuses an import of a
# target that is not a declared dependency, and this keeps the declared ones pointing down.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=(OpConvertCore OpConvertTensors OpConvertAdapters OpConvertPipeline OpConvertTraining OpConvertKit)
# Pipeline and Training are siblings: neither may import the other.
declare -A rank=([OpConvertCore]=0 [OpConvertTensors]=1 [OpConvertAdapters]=2 [OpConvertPipeline]=3
                 [OpConvertTraining]=3 [OpConvertKit]=4)
status=0
for target in "${layers[@]}"; do
  [ -d "Sources/$target" ] || { echo "check-layering: Sources/$target is missing"; status=1; continue; }
  while IFS=: read -r file line text; do
    imported=$(sed -E 's/^[[:space:]]*(@[A-Za-z_]+[[:space:]]+)*import[[:space:]]+([A-Za-z_]+).*/\2/' <<<"$text")
    [ -n "${rank[$imported]+x}" ] || continue
    if [ "${rank[$imported]}" -ge "${rank[$target]}" ] && [ "$imported" != "$target" ]; then
      echo "check-layering: $file:$line: $target imports $imported (same layer or above)"
      status=1
    fi
  done < <(grep -rnE '^[[:space:]]*(@[A-Za-z_]+[[:space:]]+)*import[[:space:]]+OpConvert' "Sources/$target" --include='*.swift' || true)
done
# The executable sees the library only through the umbrella.
if grep -rnE '^[[:space:]]*import[[:space:]]+OpConvert(Core|Tensors|Adapters|Pipeline|Training)\b' Sources/opconvert; then
  echo "check-layering: Sources/opconvert imports a layer directly (import OpConvertKit)"; status=1
fi
[ "$status" -eq 0 ] && echo "check-layering: ok (${layers[*]})"
exit "$status"
