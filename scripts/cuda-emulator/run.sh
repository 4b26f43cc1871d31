#!/bin/sh
# Tests the CUDA plugin's host code with no GPU: builds a CPU stand-in for libcuda.so.1 and
# libcublas.so.13/.12 (emu_driver.cpp runs the plugin's real kernels on the CPU; NVRTC is the real
# one, from the pip wheel), then runs harness.c, which compares every ABI function against
# the CPU plugin. Needs clang/clang++ (the Swift toolchain's), NVRTC findable (pip install
# nvidia-cuda-nvrtc-cu12), and a built plugin (swift build).
#   scripts/cuda-emulator/run.sh [BUILD_DIR]         (default .build/debug)
#   scripts/cuda-emulator/run.sh --gpu [BUILD_DIR]   the same comparisons on the real GPU,
#                                                   driver and CUDA libraries (needs only cc)
# SANITIZE=1 builds the emulator and harness with AddressSanitizer (out-of-bounds kernel
# accesses then abort with a report).
# Last line: "N passed, M failed"; exit 0 only when M == 0.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
gpu=0
if [ "${1:-}" = "--gpu" ]; then gpu=1; shift; fi
build=${1:-$root/.build/debug}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CC=${CC:-clang}
SAN=${SANITIZE:+-fsanitize=address -fno-omit-frame-pointer}
CXX=${CXX:-clang++}
if [ "$gpu" = 1 ]; then
    "$CC" -O1 -g -Wall -I"$root/Sources/COpConvertPluginABI/include" -o "$work/harness" "$here/harness.c" -ldl -lm
    exec_status=0
    "$work/harness" "$build/libOpConvertCUDAPlugin.so" "$build/libOpConvertCPUPlugin.so" - || exec_status=$?
    exit "$exec_status"
fi
"$CXX" $SAN -std=c++17 -O1 -g -fPIC -shared -ffp-contract=off -Wall -Wno-unused-function \
    -o "$work/libcuda.so.1" "$here/emu_driver.cpp"
"$CC" $SAN -O1 -g -fPIC -shared -Wall -o "$work/libcublas.so.12" "$here/emu_cublas.c"
echo 'int emu_cublaslt_placeholder;' | "$CC" -x c -fPIC -shared -o "$work/libcublasLt.so.12" -
# Under both majors the driver stand-in accepts, so no real cuBLAS is picked up next to it.
cp "$work/libcublas.so.12" "$work/libcublas.so.13"
cp "$work/libcublasLt.so.12" "$work/libcublasLt.so.13"
"$CC" $SAN -O1 -g -Wall -I"$root/Sources/COpConvertPluginABI/include" -o "$work/harness" "$here/harness.c" -ldl -lm
OPCONVERT_CUDA_LIBRARY_PATH="$work" "$work/harness" "$build/libOpConvertCUDAPlugin.so" \
    "$build/libOpConvertCPUPlugin.so" "$work"
