#!/usr/bin/env bash
# Clean-machine check of scripts/install.sh (CI runs it; no XCTest): installs into a temporary
# prefix, then runs the installed opconvert with PATH and LD_LIBRARY_PATH free of the Swift
# toolchain: --version, plugin check --device cpu, a merge of a bundled fixture, the train
# demo, and the same under `env -i`. With --static-swift-stdlib (the default here) it also
# checks that the binary loads no library from the toolchain (ldd), and,
# where unshare(1) may make a mount namespace (root), runs opconvert with the toolchain's lib
# directory hidden behind an empty one.
#
#   scripts/test-install.sh [--dynamic] [extra install.sh options, e.g. --no-build --scratch-path DIR]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
static=(--static-swift-stdlib)
if [ "${1:-}" = "--dynamic" ]; then static=(); shift; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-install-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }
bash scripts/install.sh --prefix "$prefix" "${static[@]}" "$@" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "install.sh exited $?"; }
for f in bin/opconvert lib/opconvert/libOpConvertCPUPlugin.so share/man/man1/opconvert.1 \
         share/bash-completion/completions/opconvert share/zsh/site-functions/_opconvert \
         share/fish/vendor_completions.d/opconvert.fish share/opconvert/train-demo/base.safetensors; do
  [ -s "$prefix/$f" ] || fail "$prefix/$f is missing or empty"
done
grep -q "__opconvert_add_completions -f" "$prefix/share/bash-completion/completions/opconvert" || fail "bash completion has no file completion"
# The toolchain's lib directory (where libswiftCore.so lives), to keep out of the environment.
toolchain_lib=$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")/lib
clean_path=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v -F "$(dirname "$toolchain_lib")" | paste -sd: -)
if [ ${#static[@]} -gt 0 ]; then
  # The binary itself; the plugins' run path lists the toolchain before $ORIGIN, so with the
  # toolchain present ldd shows its libswiftCore.so: the hidden-toolchain run below checks
  # that they load from the copy beside them.
  hits=$(ldd "$prefix/bin/opconvert" | grep -F "$toolchain_lib" || true)
  [ -z "$hits" ] || fail "$prefix/bin/opconvert loads from the toolchain: $hits"
  [ -f "$prefix/lib/opconvert/libswiftCore.so" ] || fail "no libswiftCore.so beside the plugins"
fi
demo=$work/demo
mkdir -p "$demo"
run_installed() { # label, then the environment prefix (env ...) and the command
  local label=$1; shift
  (cd "$demo" && "$@") >"$work/out.log" 2>&1 || { cat "$work/out.log" >&2; fail "$label"; }
}
env_clean=(env PATH="$prefix/bin:$clean_path" LD_LIBRARY_PATH=)
run_installed "--version" "${env_clean[@]}" opconvert --version
grep -q "[0-9]" "$work/out.log" || fail "--version printed nothing"
run_installed "plugin check --device cpu" "${env_clean[@]}" opconvert plugin check --device cpu
run_installed "merge of fixtures/peft" "${env_clean[@]}" opconvert merge "$PWD/fixtures/peft/models/llama" "$PWD/fixtures/peft/adapters/llama_lora" -o merged
[ -f "$demo/merged/config.json" ] || fail "merge wrote no merged/config.json"
run_installed "train --demo" "${env_clean[@]}" opconvert train --demo --epochs 2 -o demo-op
[ -f "$demo/demo-op/op_config.json" ] || fail "train --demo wrote no demo-op/op_config.json"
run_installed "env -i merge" env -i "$prefix/bin/opconvert" merge "$PWD/fixtures/peft/models/llama" "$PWD/fixtures/peft/adapters/llama_lora" -o merged-env-i
if [ ${#static[@]} -gt 0 ] && [ "$(id -u)" -eq 0 ] && unshare -m true 2>/dev/null; then
  # The toolchain's runtime libraries made invisible, as on a machine without Swift.
  mkdir -p "$work/empty"
  run_installed "toolchain hidden" unshare -m sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh \
    "$work/empty" "$toolchain_lib" env PATH="$prefix/bin:$clean_path" opconvert plugin check --device cpu
  run_installed "toolchain hidden: merge" unshare -m sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh \
    "$work/empty" "$toolchain_lib" env PATH="$prefix/bin:$clean_path" opconvert merge "$PWD/fixtures/peft/models/llama" "$PWD/fixtures/peft/adapters/llama_lora" -o merged-hidden
  echo "test-install: ran with $toolchain_lib hidden"
fi
echo "test-install: OK (${static[*]:-dynamic} install into a temporary prefix)"
