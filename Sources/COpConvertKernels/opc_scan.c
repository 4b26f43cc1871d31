// Scanning kernels for `inspect --verify`: plain loops over unaligned data (memcpy loads)
// that compilers vectorize; they run at memory bandwidth, which is the point.
#include "opc_kernels.h"
#include <string.h>

// Counted in chunks into a counter of the element's own width, so the vectorized loop
// stays in that lane width (a size_t sum made it widen every lane: 4x slower for 16-bit).
#define COUNT_NONFINITE(NAME, T, EXP_MASK)                                   \
    size_t NAME(const void *src, size_t n) {                                 \
        const unsigned char *p = (const unsigned char *)src;                 \
        size_t count = 0;                                                    \
        for (size_t start = 0; start < n; start += 32768) {                  \
            size_t end = n - start < 32768 ? n : start + 32768;              \
            T chunk = 0;                                                     \
            for (size_t i = start; i < end; i++) {                           \
                T bits;                                                      \
                memcpy(&bits, p + i * sizeof(T), sizeof(T));                 \
                chunk += (T)((bits & (EXP_MASK)) == (EXP_MASK));             \
            }                                                                \
            count += chunk;                                                  \
        }                                                                    \
        return count;                                                        \
    }

COUNT_NONFINITE(opc_count_nonfinite_f16, uint16_t, 0x7C00u)
COUNT_NONFINITE(opc_count_nonfinite_bf16, uint16_t, 0x7F80u)
COUNT_NONFINITE(opc_count_nonfinite_f32, uint32_t, 0x7F800000u)
COUNT_NONFINITE(opc_count_nonfinite_f64, uint64_t, 0x7FF0000000000000ull)

uint64_t opc_fold_bytes(const void *src, size_t bytes) {
    const unsigned char *p = (const unsigned char *)src;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        acc ^= w;
    }
    for (; i < bytes; i++) acc ^= (uint64_t)p[i] << (8 * (i & 7));
    return acc;
}
