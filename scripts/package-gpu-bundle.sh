#!/usr/bin/env bash
# Packs everything scripts/gpu-check.sh needs on a GPU machine that has no Swift toolchain
# into one archive: dist/opconvert-gpu-check-<short hash>.tar.xz (see docs/gpu-check.md).
#
#   scripts/package-gpu-bundle.sh
#
# 1. swift build -c release --static-swift-stdlib (scratch .build-release; the Swift runtime
#    is linked into the executable);
# 2. stripped copies of opconvert and the plugins (libOpConvert*Plugin.so) in bin/, and in lib/
#    every shared library they load that glibc does not provide (ldd: OpenBLAS, gfortran,
#    quadmath, zstd, json-c, and libswiftCore.so, which SwiftPM links into every dynamic
#    library product); libstdc++/libgcc_s go to lib/compat/, used only when the machine's own
#    are too old (a newer system libstdc++ is always the better choice);
# 3. ./opconvert, a wrapper that sets LD_LIBRARY_PATH to lib/ (no patchelf needed) and execs
#    bin/opconvert, so the plugins are found next to the real executable;
# 4. the rotated-digits base and training data (bench/paper/data, made with
#    bench/paper/make_rotated_digits.py when missing), bench/gpu/*.py,
#    bench/bench_train_step.sh and gpu-check.sh;
# 5. tar + xz -9 (FORMAT=zst: zstd -19; xz is the default because Python's tarfile unpacks it
#    on a machine with no xz binary, while zstd needs the zstd tool there).
# Earlier dist/opconvert-gpu-check-* archives are removed, so `carry: ["dist"]` brings one.
#
#   SKIP_BUILD=1      use the existing .build-release build
#   ALLOW_NO_CUDA=1   pack even without libOpConvertCUDAPlugin.so (tries the CPU paths only)
#   FORMAT=xz|zst     compression (default xz)
#   PY=python3        Python with torch, scikit-learn, scipy, safetensors for the data (only
#                     when bench/paper/data lacks it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SCRATCH=$ROOT/.build-release
FORMAT=${FORMAT:-xz}
PY=${PY:-python3}
say() { printf '[package %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
case $FORMAT in xz|zst) ;; *) die "FORMAT must be xz or zst (got '$FORMAT')" ;; esac
for tool in ldd strip tar; do command -v "$tool" >/dev/null || die "needs '$tool'"; done
command -v "$FORMAT" >/dev/null || command -v "${FORMAT/zst/zstd}" >/dev/null || die "needs '${FORMAT/zst/zstd}'"
T0=$SECONDS

HASH=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
DIRTY=""
[[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && DIRTY="-dirty"
NAME=opconvert-gpu-check-$HASH$DIRTY

# --- 1. build ------------------------------------------------------------------------------
if [[ -z ${SKIP_BUILD:-} ]]; then
  say "swift build -c release --static-swift-stdlib --scratch-path .build-release (several minutes on 2 cores)"
  mkdir -p "$SCRATCH"
  for attempt in 1 2 3; do
    if nice swift build -c release --static-swift-stdlib --scratch-path "$SCRATCH" >"$SCRATCH/package-build.log" 2>&1; then break; fi
    if grep -q "modified during the build" "$SCRATCH/package-build.log" && [[ $attempt -lt 3 ]]; then sleep 5; continue; fi
    tail -30 "$SCRATCH/package-build.log" >&2
    die "release build failed (full log: $SCRATCH/package-build.log)"
  done
  say "built in $((SECONDS - T0)) s"
fi
T_BUILD=$((SECONDS - T0))
REL=$SCRATCH/release
[[ -x $REL/opconvert ]] || die "no $REL/opconvert (build first, or drop SKIP_BUILD)"
[[ -f $REL/libOpConvertCPUPlugin.so ]] || die "no $REL/libOpConvertCPUPlugin.so"
if [[ ! -f $REL/libOpConvertCUDAPlugin.so ]]; then
  [[ -n ${ALLOW_NO_CUDA:-} ]] || die "no $REL/libOpConvertCUDAPlugin.so (this tree has no CUDA plugin; ALLOW_NO_CUDA=1 packs without it)"
  say "warning: no CUDA plugin in this build: the bundle can only try the CPU paths"
fi

# --- 2. stage ------------------------------------------------------------------------------
STAGE_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/opconvert-gpu-bundle.XXXXXX")
trap 'rm -rf "$STAGE_ROOT"' EXIT
S=$STAGE_ROOT/$NAME
mkdir -p "$S/bin" "$S/lib/compat" "$S/data" "$S/bench/gpu"
cp "$REL/opconvert" "$S/bin/"
strip "$S/bin/opconvert"
for so in "$REL"/libOpConvert*Plugin.so; do
  cp "$so" "$S/bin/"
  strip --strip-unneeded "$S/bin/$(basename "$so")"
done

# glibc's own libraries (and the loader): always the machine's.
is_glibc() {
  case $1 in
    linux-vdso.so*|ld-linux*.so*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libutil.so*|libresolv.so*|\
    libanl.so*|libmvec.so*|libnsl.so*|libBrokenLocale.so*|libthread_db.so*|libnss_*.so*|libcrypt.so*) return 0 ;;
  esac
  return 1
}
: >"$STAGE_ROOT/libs.txt"
for f in "$S/bin/opconvert" "$S"/bin/*.so; do
  ldd "$f" >"$STAGE_ROOT/ldd.txt" 2>&1 || die "ldd $f failed: $(cat "$STAGE_ROOT/ldd.txt")"
  if grep -q "not found" "$STAGE_ROOT/ldd.txt"; then die "$(basename "$f") needs libraries this machine lacks: $(grep 'not found' "$STAGE_ROOT/ldd.txt" | tr '\n' ' ')"; fi
  awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' "$STAGE_ROOT/ldd.txt" >>"$STAGE_ROOT/libs.txt"
done
sort -u "$STAGE_ROOT/libs.txt" | while read -r soname path; do
  is_glibc "$soname" && continue
  case $soname in libstdc++.so*|libgcc_s.so*) dest=$S/lib/compat ;; *) dest=$S/lib ;; esac
  [[ -e $dest/$soname ]] && continue
  cp -L "$path" "$dest/$soname"
  chmod u+w "$dest/$soname"
  strip --strip-unneeded "$dest/$soname" 2>/dev/null || true
  echo "$soname <= $path" >>"$STAGE_ROOT/bundled.txt"
done
# Every non-glibc dependency must now resolve inside the bundle, not from this machine.
for f in "$S/bin/opconvert" "$S"/bin/*.so; do
  LD_LIBRARY_PATH=$S/lib:$S/lib/compat ldd "$f" | awk -v s="$S" -v f="$(basename "$f")" '
    $2 == "=>" && $3 ~ /^\// && index($3, s) != 1 { n = $1; sub(/\.so.*/, "", n)
      if (n !~ /^(libc|libm|libdl|libpthread|librt|libutil|libresolv|libanl|libmvec|libnsl|libBrokenLocale|libthread_db|libcrypt|ld-linux.*)$/) {
        print f ": " $1 " still resolves to " $3; bad = 1 } }
    END { exit bad }' >&2 || die "the bundle is not self-contained (above)"
done

cat >"$S/opconvert" <<'WRAPPER'
#!/usr/bin/env bash
# opconvert from the GPU-check bundle: the bundled libraries first, the real executable in
# bin/ (the plugins are found next to it). lib/compat (libstdc++, libgcc_s of the build
# machine) is added only when the system's own do not satisfy the executable.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ -z ${OPCONVERT_BUNDLE_NO_COMPAT:-} ]] && command -v ldd >/dev/null \
   && ldd "$here/bin/opconvert" 2>&1 | grep -Eq 'GLIBCXX|CXXABI|GCC_[0-9]|libstdc\+\+.*not found|libgcc_s.*not found'; then
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$here/lib/compat"
fi
exec "$here/bin/opconvert" "$@"
WRAPPER
chmod +x "$S/opconvert"

# --- 3. data and scripts ---------------------------------------------------------------------
PAPER_DATA=$ROOT/bench/paper/data
if [[ ! -f $PAPER_DATA/base.safetensors || ! -f $PAPER_DATA/rotated_train.safetensors ]]; then
  say "making the rotated-digits data (bench/paper/make_rotated_digits.py, a few minutes on 2 cores)"
  "$PY" -c 'import torch, sklearn, scipy, safetensors' 2>/dev/null \
    || die "$PY lacks torch/scikit-learn/scipy/safetensors for bench/paper/make_rotated_digits.py (bench/paper/requirements.txt)"
  "$PY" "$ROOT/bench/paper/make_rotated_digits.py" --out "$PAPER_DATA" --seed 0 --angle 90 >&2
fi
cp "$PAPER_DATA/base.safetensors" "$PAPER_DATA/rotated_train.safetensors" "$S/data/"
cp "$ROOT"/bench/gpu/*.py "$S/bench/gpu/"
cp "$ROOT/bench/bench_train_step.sh" "$S/bench/"
cp "$ROOT/scripts/gpu-check.sh" "$S/gpu-check.sh"
# Issue 12: the tiny Llama fixture for the cuda-vs-cpu transformer parity run, and the
# LLaMA-100M benchmark (its model is made there, by transformers, when that is installed).
mkdir -p "$S/data/llama" "$S/bench/llama"
cp -r "$ROOT/fixtures/llama/models/llama" "$S/data/llama/model"
cp "$ROOT/fixtures/llama/data/train.safetensors" "$S/data/llama/train.safetensors"
cp "$ROOT/bench/bench_llama_train.sh" "$ROOT/bench/lib.sh" "$S/bench/"
cp "$ROOT"/bench/llama/*.py "$S/bench/llama/"
chmod +x "$S/gpu-check.sh" "$S/bench/bench_train_step.sh" "$S/bench/bench_llama_train.sh"

# Smoke test through the wrapper, with this machine's Swift runtime out of the picture
# (LD_LIBRARY_PATH comes first, so the bundled libswiftCore.so is the one loaded).
VERSION_LINE=$("$S/opconvert" --version) || die "the bundled opconvert does not start"
"$S/opconvert" train --base "$S/data/base.safetensors" --data "$S/data/rotated_train.safetensors" --method lora \
  --epochs 1 --threads 2 --seed 0 --no-progress --json >"$STAGE_ROOT/smoke.json" 2>"$STAGE_ROOT/smoke.err" \
  || die "the bundled opconvert cannot train on the CPU plugin: $(tail -n 1 "$STAGE_ROOT/smoke.err")"
{
  echo "$NAME"
  echo "opconvert: $VERSION_LINE"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$DIRTY"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(ldd --version | head -n 1)"
  echo "swift: $(swift --version 2>/dev/null | head -n 1)"
  echo "plugins: $(cd "$S/bin" && ls ./*.so | tr '\n' ' ')"
  echo "bundled libraries:"
  sed 's/^/  /' "$STAGE_ROOT/bundled.txt"
} >"$S/VERSION"

# --- 4. pack ---------------------------------------------------------------------------------
mkdir -p "$ROOT/dist"
rm -f "$ROOT"/dist/opconvert-gpu-check-*.tar.xz "$ROOT"/dist/opconvert-gpu-check-*.tar.zst
T1=$SECONDS
if [[ $FORMAT == xz ]]; then
  OUTF=$ROOT/dist/$NAME.tar.xz
  tar -C "$STAGE_ROOT" -cf - "$NAME" | nice xz -9 -T2 -c >"$OUTF.part"
else
  OUTF=$ROOT/dist/$NAME.tar.zst
  tar -C "$STAGE_ROOT" -cf - "$NAME" | nice zstd -19 -T2 -q -c >"$OUTF.part"
fi
mv "$OUTF.part" "$OUTF"
T_PACK=$((SECONDS - T1))
RAW=$(du -sb "$S" | cut -f1)
SIZE=$(stat -c %s "$OUTF")
sed 's/^/  /' "$S/VERSION" >&2
say "wrote ${OUTF#"$ROOT"/}: $(awk -v b="$SIZE" 'BEGIN { printf "%.1f MB", b / 1e6 }') ($(awk -v b="$RAW" 'BEGIN { printf "%.0f MB", b / 1e6 }') unpacked); build ${T_BUILD}s, pack ${T_PACK}s, total $((SECONDS - T0))s"
echo "${OUTF#"$ROOT"/}"
