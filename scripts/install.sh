#!/usr/bin/env bash
# Builds opconvert in release mode and installs it under a prefix:
#
#   scripts/install.sh [--prefix PREFIX] [--static-swift-stdlib] [--no-build] [--scratch-path DIR] [--configuration debug|release]
#
#   PREFIX/bin/opconvert
#   PREFIX/lib/opconvert/libOpConvertCPUPlugin.so, libOpConvertCUDAPlugin.so (the loader looks
#       beside the executable, then in ../lib/opconvert from its resolved path)
#   PREFIX/share/man/man1/opconvert.1
#   PREFIX/share/opconvert/train-demo/ (the network and data of `opconvert train --demo`)
#   PREFIX/share/bash-completion/completions/opconvert
#   PREFIX/share/zsh/site-functions/_opconvert
#   PREFIX/share/fish/vendor_completions.d/opconvert.fish
#
# PREFIX defaults to ~/.local (no root needed; ~/.local/bin is on PATH in most
# distributions); use --prefix /usr/local for a system-wide install.
# --static-swift-stdlib links the Swift runtime and Foundation into the executable, so it
# runs where no Swift toolchain is installed; the plugins (C, but SwiftPM links every
# dynamic library product against libswiftCore.so) then get a copy of libswiftCore.so beside
# them in lib/opconvert (found through their $ORIGIN run path).
# --no-build installs what the last build left in the scratch path (default .build, or
# .build-static with --static-swift-stdlib, so the two builds do not rebuild each other).
# --configuration debug installs a debug build (quicker to make; the default is release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
prefix="$HOME/.local"
static=0
build=1
scratch=""
config=release
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 64; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) [ $# -ge 2 ] || usage; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --static-swift-stdlib) static=1; shift ;;
    --no-build) build=0; shift ;;
    --scratch-path) [ $# -ge 2 ] || usage; scratch=$2; shift 2 ;;
    -c|--configuration) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "install.sh: unknown option $1" >&2; usage ;;
    *) prefix=$1; shift ;;  # the issue's `install.sh PREFIX` form
  esac
done
[ -n "$prefix" ] || { echo "install.sh: empty --prefix" >&2; exit 64; }
case $prefix in /*) ;; *) prefix="$PWD/$prefix" ;; esac
if [ -z "$scratch" ]; then
  if [ "$static" -eq 1 ]; then scratch=.build-static; else scratch=.build; fi
fi
case $config in debug|release) ;; *) echo "install.sh: --configuration is debug or release, not '$config'" >&2; exit 64 ;; esac
flags=(-c "$config" --scratch-path "$scratch")
[ "$static" -eq 1 ] && flags+=(--static-swift-stdlib)
if [ "$build" -eq 1 ]; then
  echo "install.sh: swift build ${flags[*]}" >&2
  swift build "${flags[@]}" >&2
fi
bin=$(swift build "${flags[@]}" --show-bin-path)
for f in opconvert libOpConvertCPUPlugin.so; do
  [ -f "$bin/$f" ] || { echo "install.sh: $bin/$f is missing (build first, or drop --no-build)" >&2; exit 66; }
done

mkdir -p "$prefix/bin" "$prefix/lib/opconvert" "$prefix/share/man/man1" \
  "$prefix/share/bash-completion/completions" "$prefix/share/zsh/site-functions" \
  "$prefix/share/fish/vendor_completions.d" "$prefix/share/opconvert/train-demo"
# Each file is copied under a temporary name and renamed into place, so a running
# opconvert is never handed a half-written binary.
put() { # source, destination, mode
  cp "$1" "$2.tmp.$$" && chmod "$3" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"
}
put "$bin/opconvert" "$prefix/bin/opconvert" 755
put "$bin/libOpConvertCPUPlugin.so" "$prefix/lib/opconvert/libOpConvertCPUPlugin.so" 644
if [ -f "$bin/libOpConvertCUDAPlugin.so" ]; then
  put "$bin/libOpConvertCUDAPlugin.so" "$prefix/lib/opconvert/libOpConvertCUDAPlugin.so" 644
fi
if [ "$static" -eq 1 ]; then
  core=$(ldd "$bin/libOpConvertCPUPlugin.so" | awk '$1 == "libswiftCore.so" && $3 ~ /^\// { print $3 }')
  if [ -n "$core" ]; then
    put "$core" "$prefix/lib/opconvert/libswiftCore.so" 644
  fi
fi
put man/opconvert.1 "$prefix/share/man/man1/opconvert.1" 644
for f in base.safetensors data.safetensors; do put "fixtures/train/$f" "$prefix/share/opconvert/train-demo/$f" 644; done
# The completion scripts come from the installed binary itself (swift-argument-parser).
gen() { "$prefix/bin/opconvert" --generate-completion-script "$1" >"$2.tmp.$$" && chmod 644 "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
gen bash "$prefix/share/bash-completion/completions/opconvert"
gen zsh "$prefix/share/zsh/site-functions/_opconvert"
gen fish "$prefix/share/fish/vendor_completions.d/opconvert.fish"
echo "installed opconvert into $prefix (bin/opconvert, lib/opconvert/, share/man/man1/opconvert.1, completions)"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "note: $prefix/bin is not on PATH" ;; esac
