// Numeric kernels for opconvert, in C so that SIMD paths (F16C/AVX2/AVX-512) can be
// chosen at run time. All pointers may be unaligned; n counts elements.
// Rounding is IEEE round-to-nearest-even; NaN stays NaN (quiet), Inf stays Inf.
#ifndef OPC_KERNELS_H
#define OPC_KERNELS_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Widening to f32 (exact).
void opc_f16_to_f32(const void *src, float *dst, size_t n);
void opc_bf16_to_f32(const void *src, float *dst, size_t n);
void opc_f8e4m3_to_f32(const void *src, float *dst, size_t n);   // OCP E4M3FN: no Inf, S.1111.111 = NaN
void opc_f8e5m2_to_f32(const void *src, float *dst, size_t n);   // IEEE-like E5M2 with Inf/NaN
void opc_f64_to_f32(const void *src, float *dst, size_t n);      // RNE, overflow -> Inf
void opc_f32_copy(const void *src, float *dst, size_t n);        // unaligned load to aligned f32

// Narrowing from f32 (round to nearest even once).
void opc_f32_to_f16(const float *src, void *dst, size_t n);
void opc_f32_to_bf16(const float *src, void *dst, size_t n);
void opc_f32_to_f64(const float *src, void *dst, size_t n);
void opc_f32_store(const float *src, void *dst, size_t n);      // f32 to unaligned f32 bytes

// Direct conversions used by `convert` without going through an f32 buffer.
void opc_f16_to_bf16(const void *src, void *dst, size_t n);     // exact widen, one rounding
void opc_bf16_to_f16(const void *src, void *dst, size_t n);
void opc_f64_to_f16(const void *src, void *dst, size_t n);      // single rounding from f64
void opc_f64_to_bf16(const void *src, void *dst, size_t n);     // single rounding from f64

// Scanning (inspect --verify): count NaN/Inf elements; fold all bytes so every page is read.
size_t opc_count_nonfinite_f16(const void *src, size_t n);
size_t opc_count_nonfinite_bf16(const void *src, size_t n);
size_t opc_count_nonfinite_f32(const void *src, size_t n);
size_t opc_count_nonfinite_f64(const void *src, size_t n);
uint64_t opc_fold_bytes(const void *src, size_t bytes);

// Merge's low-rank update in f64 (merges keep their blocks in f64 and round once at the end):
// dst[i*ldd + j] += s * sum_k L[i*li + k*lk] * R[k*ldr + j] for i < m, j < n, k < r. Each
// element is acc = fma(L, R, acc) over k = 0..r-1 from 0, then dst = fma(s, acc, dst): the
// same bits however the rows or columns are split, on every SIMD level.
void opc_lowrank_update_f64(double *dst, ptrdiff_t ldd, const double *L, ptrdiff_t li, ptrdiff_t lk, const double *R,
                            ptrdiff_t ldr, size_t m, size_t n, size_t r, double s);

// Starts writeback of a file range without waiting (Linux sync_file_range); 0 or -errno.
int opc_start_writeback(int fd, int64_t offset, int64_t length);
// Turns direct I/O (O_DIRECT: writes bypass the page cache) on or off for an open file;
// 0 or -errno (-EINVAL where the file system does not support it, -ENOSYS off Linux).
int opc_set_direct_io(int fd, int on);

// Fault guard for file mappings (see opc_io.c): a SIGBUS inside a registered range (the
// file was truncated under us) maps a zero page there and marks the range damaged instead
// of killing the process. register returns a slot, or -1 when the table is full or the
// handler could not be installed (the range is then unguarded). Unregister before munmap.
#define OPC_GUARD_SLOTS 4096
int opc_guard_register(const void *start, size_t length);
void opc_guard_unregister(int slot);
int opc_guard_damaged(int slot);   // 1 once a fault in the slot's range was repaired

// Which SIMD level the dispatcher picked: 0 scalar, 1 AVX2+F16C, 2 AVX-512.
int opc_simd_level(void);
// Force the scalar path (tests compare it with the SIMD path); 1 = scalar only.
void opc_force_scalar(int on);

#ifdef __cplusplus
}
#endif
#endif
