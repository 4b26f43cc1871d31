// Scanning kernels for `inspect --verify`: plain loops over unaligned data (memcpy loads)
// that compilers vectorize; they run at memory bandwidth, which is the point.
#include "opc_kernels.h"
#include <string.h>

#define COUNT_NONFINITE(NAME, T, EXP_MASK)                                   \
    size_t NAME(const void *src, size_t n) {                                 \
        const unsigned char *p = (const unsigned char *)src;                 \
        size_t count = 0;                                                    \
        for (size_t i = 0; i < n; i++) {                                     \
            T bits;                                                          \
            memcpy(&bits, p + i * sizeof(T), sizeof(T));                     \
            count += (bits & (EXP_MASK)) == (EXP_MASK);                      \
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
