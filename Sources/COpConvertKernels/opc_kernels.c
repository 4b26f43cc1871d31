// Dtype conversion kernels for opconvert (see include/opc_kernels.h).
//
// Layout of this file:
//   1. scalar element conversions: integer-only, so they do not depend on the FP
//      environment (rounding mode, FTZ/DAZ); they define the exact semantics;
//   2. scalar array loops (the portable path and the tails of the SIMD loops);
//   3. x86-64 AVX2+F16C kernels, compiled through function target attributes so the
//      file needs no -mavx flags; used only when the CPU has them (AVX-512 is not used:
//      these loops are memory-bound, AVX2 already reaches DRAM bandwidth per thread);
//   4. run-time dispatch and the public entry points.
//
// Semantics (all checked bit-for-bit against fixtures/dtypes, see its README.md):
//   * widening to f32 (f16, bf16) is an exact bit embedding; NaN payloads and the quiet
//     bit are carried over unchanged (as numpy / ml_dtypes do);
//   * f32 -> f64 and f64 -> f32 quiet a NaN and keep its sign and top payload bits
//     (what the x86 instructions and numpy do);
//   * narrowing rounds to nearest even exactly once, overflows to Inf, keeps subnormals;
//   * NaN results of narrowing are quiet and keep the sign:
//       to f16 from f32/f64: 0x7E00 | sign | top payload bits (what F16C does; numpy
//                            agrees except that it does not quiet signalling NaNs);
//       to f16 from bf16:    0x7E00 | sign (ml_dtypes);
//       to bf16 (any source): 0x7FC0 | sign (ml_dtypes);
//   * F8 decode (E4M3FN, E5M2): NaN -> 0x7FC00000 | sign (ml_dtypes).
// The SIMD paths produce exactly the same bits as the scalar path. They use the
// hardware conversions (cvtph2ps, cvtps2ph, cvtpd2ps, cvtps2pd), which assume the
// default FP environment (round to nearest, no FTZ/DAZ) for f32<->f64 conversions.
//
// The only global state is the dispatch choice (detected level, forced-scalar flag).

#include "opc_kernels.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "opc_kernels assumes a little-endian host"
#endif

#if defined(__x86_64__)
#define OPC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define OPC_X86 0
#endif

// ---------------------------------------------------------------------------------------
// 1. Scalar element conversions
// ---------------------------------------------------------------------------------------

static inline uint16_t ld_u16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld_u32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld_u64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st_u16(unsigned char *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st_u32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st_u64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

// Index of the highest set bit of m (m != 0).
static inline unsigned hibit32(uint32_t m) { return 31u - (unsigned)__builtin_clz(m); }

// f16 -> f32, exact; NaN bits carried over unchanged.
static inline uint32_t cvt_f16_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1Fu) return sign | 0x7F800000u | (m << 13);
    if (e == 0) {
        if (m == 0) return sign;
        unsigned p = hibit32(m);                 // value = 1.f * 2^(p-24)
        return sign | ((p + 103u) << 23) | ((m << (23u - p)) & 0x7FFFFFu);
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

// f32 -> f16, round to nearest even; NaN -> quiet, sign and top payload kept.
static inline uint16_t cvt_f32_f16(uint32_t x) {
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7FFFFFFFu, r;
    if (a > 0x7F800000u) {
        r = 0x7E00u | ((a >> 13) & 0x3FFu);
    } else if (a >= 0x477FF000u) {               // >= 65520: rounds to Inf
        r = 0x7C00u;
    } else if (a >= 0x38800000u) {               // normal f16
        r = (a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
    } else if (a >= 0x33000000u) {               // [2^-25, 2^-14): subnormal f16
        uint32_t e = a >> 23;                    // 102..112
        uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t s = 126u - e;                   // 14..24
        r = (m + ((1u << (s - 1)) - 1u) + ((m >> s) & 1u)) >> s;
    } else {
        r = 0;
    }
    return (uint16_t)(sign | r);
}

// f32 -> bf16, round to nearest even; NaN -> 0x7FC0 | sign.
static inline uint16_t cvt_f32_bf16(uint32_t x) {
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)(((x >> 16) & 0x8000u) | 0x7FC0u);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// f32 -> f64, exact; NaN -> quiet, sign and payload kept.
static inline uint64_t cvt_f32_f64(uint32_t x) {
    uint64_t sign = (uint64_t)(x >> 31) << 63;
    uint32_t e = (x >> 23) & 0xFFu, m = x & 0x7FFFFFu;
    if (e == 0xFFu) {
        if (m == 0) return sign | 0x7FF0000000000000ull;
        return sign | 0x7FF8000000000000ull | ((uint64_t)m << 29);
    }
    if (e == 0) {
        if (m == 0) return sign;
        unsigned p = hibit32(m);                 // value = 1.f * 2^(p-149)
        return sign | ((uint64_t)(p + 874u) << 52) | (((uint64_t)m << (52u - p)) & 0xFFFFFFFFFFFFFull);
    }
    return sign | ((uint64_t)(e + 896u) << 52) | ((uint64_t)m << 29);
}

// Non-NaN f64 -> binary format with `mbits` stored mantissa bits and `ebits` exponent
// bits (f32, f16, bf16), round to nearest even once, overflow to Inf.
static inline uint32_t cvt_f64_narrow(uint64_t x, unsigned mbits, unsigned ebits) {
    uint32_t sign = (uint32_t)(x >> 63) << (mbits + ebits);
    uint64_t a = x & 0x7FFFFFFFFFFFFFFFull;
    int bias = (1 << (ebits - 1)) - 1;
    uint32_t inf = ((1u << ebits) - 1u) << mbits;
    int e = (int)(a >> 52);
    if (e == 0x7FF) return sign | inf;
    int ue = e - 1023;
    if (ue >= 1 - bias) {
        if (ue > bias) return sign | inf;
        unsigned sh = 52u - mbits;
        uint64_t t = a - ((uint64_t)(1023 - bias) << 52);
        t = (t + ((1ull << (sh - 1)) - 1u) + ((t >> sh) & 1u)) >> sh;
        if (t >= inf) return sign | inf;
        return sign | (uint32_t)t;
    }
    if (e == 0) return sign;                     // f64 zero/subnormal: rounds to zero
    uint64_t m = (a & 0xFFFFFFFFFFFFFull) | (1ull << 52);
    int s = 53 - bias - (int)mbits - ue;         // > 52 - mbits
    if (s >= 54) return sign;                    // below half the smallest subnormal
    uint64_t r = (m + ((1ull << (s - 1)) - 1u) + ((m >> s) & 1u)) >> s;
    return sign | (uint32_t)r;
}

static inline int f64_is_nan(uint64_t x) { return (x & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull; }

static inline uint32_t cvt_f64_f32(uint64_t x) {
    if (f64_is_nan(x))
        return (uint32_t)(x >> 32 & 0x80000000u) | 0x7FC00000u | (uint32_t)((x >> 29) & 0x7FFFFFu);
    return cvt_f64_narrow(x, 23, 8);
}
static inline uint16_t cvt_f64_f16(uint64_t x) {
    if (f64_is_nan(x))
        return (uint16_t)((x >> 48 & 0x8000u) | 0x7E00u | ((x >> 42) & 0x3FFu));
    return (uint16_t)cvt_f64_narrow(x, 10, 5);
}
static inline uint16_t cvt_f64_bf16(uint64_t x) {
    if (f64_is_nan(x)) return (uint16_t)((x >> 48 & 0x8000u) | 0x7FC0u);
    return (uint16_t)cvt_f64_narrow(x, 7, 8);
}

// bf16 -> f16: exact widening to f32, one rounding; NaN -> 0x7E00 | sign.
static inline uint16_t cvt_bf16_f16(uint16_t b) {
    if ((b & 0x7FFFu) > 0x7F80u) return (uint16_t)((b & 0x8000u) | 0x7E00u);
    return cvt_f32_f16((uint32_t)b << 16);
}
// f16 -> bf16: exact widening to f32, one rounding; NaN -> 0x7FC0 | sign.
static inline uint16_t cvt_f16_bf16(uint16_t h) { return cvt_f32_bf16(cvt_f16_f32(h)); }

// OCP E4M3FN: bias 7, no Inf, S.1111.111 is NaN.
static inline uint32_t cvt_e4m3_f32(uint8_t b) {
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t e = (b >> 3) & 0xFu, m = b & 7u;
    if ((b & 0x7Fu) == 0x7Fu) return sign | 0x7FC00000u;
    if (e == 0) {
        if (m == 0) return sign;
        unsigned p = hibit32(m);                 // value = 1.f * 2^(p-9)
        return sign | ((p + 118u) << 23) | ((m << (23u - p)) & 0x7FFFFFu);
    }
    return sign | ((e + 120u) << 23) | (m << 20);
}
// E5M2: the top byte of an f16.
static inline uint32_t cvt_e5m2_f32(uint8_t b) {
    if ((b & 0x7Fu) > 0x7Cu) return ((uint32_t)(b & 0x80u) << 24) | 0x7FC00000u;
    return cvt_f16_f32((uint16_t)((unsigned)b << 8));
}

// ---------------------------------------------------------------------------------------
// 2. Scalar loops over [i, n)
// ---------------------------------------------------------------------------------------

#define SCALAR_LOOP(name, SIN, SOUT, LOAD, STORE, CVT)                                  \
    static void name(const unsigned char *s, unsigned char *d, size_t i, size_t n) {    \
        for (; i < n; i++) STORE(d + (SOUT) * i, CVT(LOAD(s + (SIN) * i)));             \
    }

SCALAR_LOOP(sc_f16_f32, 2, 4, ld_u16, st_u32, cvt_f16_f32)
SCALAR_LOOP(sc_f32_f16, 4, 2, ld_u32, st_u16, cvt_f32_f16)
SCALAR_LOOP(sc_f32_bf16, 4, 2, ld_u32, st_u16, cvt_f32_bf16)
SCALAR_LOOP(sc_f32_f64, 4, 8, ld_u32, st_u64, cvt_f32_f64)
SCALAR_LOOP(sc_f64_f32, 8, 4, ld_u64, st_u32, cvt_f64_f32)
SCALAR_LOOP(sc_f64_f16, 8, 2, ld_u64, st_u16, cvt_f64_f16)
SCALAR_LOOP(sc_f64_bf16, 8, 2, ld_u64, st_u16, cvt_f64_bf16)
SCALAR_LOOP(sc_f16_bf16, 2, 2, ld_u16, st_u16, cvt_f16_bf16)
SCALAR_LOOP(sc_bf16_f16, 2, 2, ld_u16, st_u16, cvt_bf16_f16)

static void sc_bf16_f32(const unsigned char *s, unsigned char *d, size_t i, size_t n) {
    for (; i < n; i++) st_u32(d + 4 * i, (uint32_t)ld_u16(s + 2 * i) << 16);
}

// F8: through a 256-entry table built on the stack (no global state) for long inputs.
static void sc_f8_f32(const unsigned char *s, unsigned char *d, size_t n, int e5m2) {
    if (n >= 256) {
        uint32_t tab[256];
        for (unsigned b = 0; b < 256; b++) tab[b] = e5m2 ? cvt_e5m2_f32((uint8_t)b) : cvt_e4m3_f32((uint8_t)b);
        for (size_t i = 0; i < n; i++) st_u32(d + 4 * i, tab[s[i]]);
    } else {
        for (size_t i = 0; i < n; i++) st_u32(d + 4 * i, e5m2 ? cvt_e5m2_f32(s[i]) : cvt_e4m3_f32(s[i]));
    }
}

// ---------------------------------------------------------------------------------------
// 3. AVX2 + F16C kernels (x86-64 only)
// ---------------------------------------------------------------------------------------
#if OPC_X86

#define OPC_AVX2 __attribute__((target("avx2,f16c,fma")))

// f32 bits (8 lanes) -> bf16 in the low 16 bits of each 32-bit lane; NaN -> 0x7FC0|sign.
OPC_AVX2 static inline __m256i v_bf16_round(__m256i x) {
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
    const __m256i sgn = _mm256_set1_epi32(0x8000), qnan = _mm256_set1_epi32(0x7FC0);
    __m256 xf = _mm256_castsi256_ps(x);
    __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(xf, xf, _CMP_UNORD_Q));
    __m256i hi = _mm256_srli_epi32(x, 16);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, bias), _mm256_and_si256(hi, one)), 16);
    __m256i nanv = _mm256_or_si256(_mm256_and_si256(hi, sgn), qnan);
    return _mm256_blendv_epi8(r, nanv, isnan);
}

// Two vectors of 16-bit values held in 32-bit lanes -> 16 packed u16, in order.
OPC_AVX2 static inline __m256i v_pack16(__m256i a, __m256i b) {
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
}
OPC_AVX2 static inline __m128i v_pack8(__m256i a) {
    return _mm_packus_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

// f16 (8 lanes) -> f32 bits; the hardware quiets signalling NaNs, undo that so the
// result is the exact bit embedding (as the scalar code and numpy).
OPC_AVX2 static inline __m256i v_f16_f32(__m128i h) {
    const __m256i m7fff = _mm256_set1_epi32(0x7FFF), lo = _mm256_set1_epi32(0x7C00);
    const __m256i hi = _mm256_set1_epi32(0x7E00), qbit = _mm256_set1_epi32(0x00400000);
    __m256i f = _mm256_castps_si256(_mm256_cvtph_ps(h));
    __m256i w = _mm256_and_si256(_mm256_cvtepu16_epi32(h), m7fff);
    __m256i snan = _mm256_and_si256(_mm256_cmpgt_epi32(w, lo), _mm256_cmpgt_epi32(hi, w));
    return _mm256_andnot_si256(_mm256_and_si256(snan, qbit), f);
}

// 4 f64 -> 4 f32 rounded to odd (truncate, set lsb if inexact). Rounding that once more
// to f16 or bf16 equals rounding the f64 directly. NaN: hardware quiet NaN.
OPC_AVX2 static inline __m128i v_f64_f32_odd(__m256d x) {
    const __m256d absm = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m128 y = _mm256_cvtpd_ps(x);
    __m256d back = _mm256_cvtps_pd(y);
    __m256d inexact = _mm256_cmp_pd(back, x, _CMP_NEQ_OQ);        // false for NaN
    __m256d away = _mm256_cmp_pd(_mm256_and_pd(back, absm), _mm256_and_pd(x, absm), _CMP_GT_OQ);
    __m128i inex32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(inexact), even));
    __m128i away32 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_castpd_si256(away), even));
    __m128i yi = _mm_add_epi32(_mm_castps_si128(y), away32);     // away: one step toward zero
    return _mm_or_si128(yi, _mm_and_si128(inex32, _mm_set1_epi32(1)));
}

OPC_AVX2 static void avx2_f16_f32(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = v_f16_f32(_mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i)));
        __m256i b = v_f16_f32(_mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i + 16)));
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i), a);
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i + 32), b);
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i),
                            v_f16_f32(_mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i))));
    sc_f16_f32(s, d, i, n);
}

OPC_AVX2 static void avx2_bf16_f32(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        // 16 bf16 -> two vectors of 8 f32 bit patterns: interleave with zeros (in-lane),
        // then put the 128-bit halves back in order.
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + 2 * i));
        __m256i lo = _mm256_unpacklo_epi16(_mm256_setzero_si256(), v);   // 0-3 | 8-11
        __m256i hi = _mm256_unpackhi_epi16(_mm256_setzero_si256(), v);   // 4-7 | 12-15
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i), _mm256_permute2x128_si256(lo, hi, 0x20));
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i + 32), _mm256_permute2x128_si256(lo, hi, 0x31));
    }
    sc_bf16_f32(s, d, i, n);
}

OPC_AVX2 static void avx2_f32_f16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps((const float *)(const void *)(s + 4 * i));
        __m256 b = _mm256_loadu_ps((const float *)(const void *)(s + 4 * i + 32));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i + 16), _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps((const float *)(const void *)(s + 4 * i));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
    }
    sc_f32_f16(s, d, i, n);
}

OPC_AVX2 static void avx2_f32_bf16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = v_bf16_round(_mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * i)));
        __m256i b = v_bf16_round(_mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * i + 32)));
        _mm256_storeu_si256((__m256i *)(void *)(d + 2 * i), v_pack16(a, b));
    }
    for (; i + 8 <= n; i += 8) {
        __m256i a = v_bf16_round(_mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * i)));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), v_pack8(a));
    }
    sc_f32_bf16(s, d, i, n);
}

OPC_AVX2 static void avx2_f32_f64(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm_loadu_ps((const float *)(const void *)(s + 4 * i));
        __m128 b = _mm_loadu_ps((const float *)(const void *)(s + 4 * i + 16));
        _mm256_storeu_pd((double *)(void *)(d + 8 * i), _mm256_cvtps_pd(a));
        _mm256_storeu_pd((double *)(void *)(d + 8 * i + 32), _mm256_cvtps_pd(b));
    }
    sc_f32_f64(s, d, i, n);
}

OPC_AVX2 static void avx2_f64_f32(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256d a = _mm256_loadu_pd((const double *)(const void *)(s + 8 * i));
        __m256d b = _mm256_loadu_pd((const double *)(const void *)(s + 8 * i + 32));
        _mm_storeu_ps((float *)(void *)(d + 4 * i), _mm256_cvtpd_ps(a));
        _mm_storeu_ps((float *)(void *)(d + 4 * i + 16), _mm256_cvtpd_ps(b));
    }
    sc_f64_f32(s, d, i, n);
}

OPC_AVX2 static inline __m256i v_f64x8_f32_odd(const unsigned char *p) {
    __m128i a = v_f64_f32_odd(_mm256_loadu_pd((const double *)(const void *)p));
    __m128i b = v_f64_f32_odd(_mm256_loadu_pd((const double *)(const void *)(p + 32)));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
}

OPC_AVX2 static void avx2_f64_f16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_castsi256_ps(v_f64x8_f32_odd(s + 8 * i));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
    }
    sc_f64_f16(s, d, i, n);
}

OPC_AVX2 static void avx2_f64_bf16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i a = v_bf16_round(v_f64x8_f32_odd(s + 8 * i));
        __m256i b = v_bf16_round(v_f64x8_f32_odd(s + 8 * i + 64));
        _mm256_storeu_si256((__m256i *)(void *)(d + 2 * i), v_pack16(a, b));
    }
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), v_pack8(v_bf16_round(v_f64x8_f32_odd(s + 8 * i))));
    sc_f64_bf16(s, d, i, n);
}

OPC_AVX2 static void avx2_f16_bf16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + 2 * i));
        __m256i a = v_bf16_round(_mm256_castps_si256(_mm256_cvtph_ps(_mm256_castsi256_si128(v))));
        __m256i b = v_bf16_round(_mm256_castps_si256(_mm256_cvtph_ps(_mm256_extracti128_si256(v, 1))));
        _mm256_storeu_si256((__m256i *)(void *)(d + 2 * i), v_pack16(a, b));
    }
    sc_f16_bf16(s, d, i, n);
}

OPC_AVX2 static inline __m128i v_bf16_f16(__m128i b) {
    const __m128i m7fff = _mm_set1_epi16(0x7FFF), inf = _mm_set1_epi16(0x7F80);
    const __m128i sgn = _mm_set1_epi16((short)0x8000), qnan = _mm_set1_epi16(0x7E00);
    __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
    __m128i h = _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT);
    __m128i isnan = _mm_cmpgt_epi16(_mm_and_si128(b, m7fff), inf);
    return _mm_blendv_epi8(h, _mm_or_si128(_mm_and_si128(b, sgn), qnan), isnan);
}

OPC_AVX2 static void avx2_bf16_f16(const unsigned char *s, unsigned char *d, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(s + 2 * i));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), v_bf16_f16(_mm256_castsi256_si128(v)));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i + 16), v_bf16_f16(_mm256_extracti128_si256(v, 1)));
    }
    sc_bf16_f16(s, d, i, n);
}

OPC_AVX2 static void avx2_f8_f32(const unsigned char *s, unsigned char *d, size_t n, int e5m2) {
    if (n < 256) { sc_f8_f32(s, d, n, e5m2); return; }
    uint32_t tab[256];
    for (unsigned b = 0; b < 256; b++) tab[b] = e5m2 ? cvt_e5m2_f32((uint8_t)b) : cvt_e4m3_f32((uint8_t)b);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(s + i)));
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i), _mm256_i32gather_epi32((const int *)tab, idx, 4));
    }
    for (; i < n; i++) st_u32(d + 4 * i, tab[s[i]]);
}

#endif  // OPC_X86

// ---------------------------------------------------------------------------------------
// 4. Dispatch and public entry points
// ---------------------------------------------------------------------------------------

static _Atomic int g_detected = -1;   // -1: not yet detected
static _Atomic int g_force_scalar = 0;

static int detect_level(void) {
#if OPC_X86
    // AVX2 and FMA through __builtin_cpu_supports (which also checks that the OS saves
    // the YMM state). F16C is read from CPUID leaf 1 directly: __builtin_cpu_supports("f16c")
    // needs __cpu_features2, which libgcc only has in its static archive, not in libgcc_s.
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)))
        return 1;
#endif
    return 0;
}

static inline int level(void) {
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed)) return 0;
    int l = atomic_load_explicit(&g_detected, memory_order_relaxed);
    if (l < 0) {                          // benign race: every thread computes the same value
        l = detect_level();
        atomic_store_explicit(&g_detected, l, memory_order_relaxed);
    }
    return l;
}

int opc_simd_level(void) { return level(); }

void opc_force_scalar(int on) { atomic_store_explicit(&g_force_scalar, on ? 1 : 0, memory_order_relaxed); }

#if OPC_X86
#define DISPATCH(avx2_call, scalar_call) \
    do {                                 \
        if (level() >= 1) {              \
            avx2_call;                   \
        } else {                         \
            scalar_call;                 \
        }                                \
    } while (0)
#else
#define DISPATCH(avx2_call, scalar_call) scalar_call
#endif

#define S(p) ((const unsigned char *)(const void *)(p))
#define D(p) ((unsigned char *)(void *)(p))

void opc_f16_to_f32(const void *src, float *dst, size_t n) {
    DISPATCH(avx2_f16_f32(S(src), D(dst), n), sc_f16_f32(S(src), D(dst), 0, n));
}
void opc_bf16_to_f32(const void *src, float *dst, size_t n) {
    DISPATCH(avx2_bf16_f32(S(src), D(dst), n), sc_bf16_f32(S(src), D(dst), 0, n));
}
void opc_f8e4m3_to_f32(const void *src, float *dst, size_t n) {
    DISPATCH(avx2_f8_f32(S(src), D(dst), n, 0), sc_f8_f32(S(src), D(dst), n, 0));
}
void opc_f8e5m2_to_f32(const void *src, float *dst, size_t n) {
    DISPATCH(avx2_f8_f32(S(src), D(dst), n, 1), sc_f8_f32(S(src), D(dst), n, 1));
}
void opc_f64_to_f32(const void *src, float *dst, size_t n) {
    DISPATCH(avx2_f64_f32(S(src), D(dst), n), sc_f64_f32(S(src), D(dst), 0, n));
}
void opc_f32_copy(const void *src, float *dst, size_t n) {
    if (n) memmove(D(dst), S(src), n * 4);
}
void opc_f32_to_f16(const float *src, void *dst, size_t n) {
    DISPATCH(avx2_f32_f16(S(src), D(dst), n), sc_f32_f16(S(src), D(dst), 0, n));
}
void opc_f32_to_bf16(const float *src, void *dst, size_t n) {
    DISPATCH(avx2_f32_bf16(S(src), D(dst), n), sc_f32_bf16(S(src), D(dst), 0, n));
}
void opc_f32_to_f64(const float *src, void *dst, size_t n) {
    DISPATCH(avx2_f32_f64(S(src), D(dst), n), sc_f32_f64(S(src), D(dst), 0, n));
}
void opc_f32_store(const float *src, void *dst, size_t n) {
    if (n) memmove(D(dst), S(src), n * 4);
}
void opc_f16_to_bf16(const void *src, void *dst, size_t n) {
    DISPATCH(avx2_f16_bf16(S(src), D(dst), n), sc_f16_bf16(S(src), D(dst), 0, n));
}
void opc_bf16_to_f16(const void *src, void *dst, size_t n) {
    DISPATCH(avx2_bf16_f16(S(src), D(dst), n), sc_bf16_f16(S(src), D(dst), 0, n));
}
void opc_f64_to_f16(const void *src, void *dst, size_t n) {
    DISPATCH(avx2_f64_f16(S(src), D(dst), n), sc_f64_f16(S(src), D(dst), 0, n));
}
void opc_f64_to_bf16(const void *src, void *dst, size_t n) {
    DISPATCH(avx2_f64_bf16(S(src), D(dst), n), sc_f64_bf16(S(src), D(dst), 0, n));
}

// ---------------------------------------------------------------------------------------
// 5. Low-rank update for merges, in f64: dst[i][j] += s * sum_k L[i][k] * R[k][j]
// ---------------------------------------------------------------------------------------
// Every element is computed the same way on every path and for any tiling: acc = 0, then
// acc = fma(L[i][k], R[k][j], acc) for k = 0 .. r-1 in order, then dst = fma(s, acc, dst).
// So a merged tensor's bits do not depend on how its rows are split into blocks or over
// threads, nor on the SIMD level (fma is the same single rounding as vfmadd). A BLAS
// GEMM gives different bits for different splits of the same product (its edge tiles
// accumulate differently), which made merge outputs depend on the core count.
// Merges keep their blocks in f64 so that the base, every adapter's product and the DoRA
// rescale round once, at the end, to the stored dtype. Factors widened from f32 multiply
// exactly in f64 (24 + 24 bits), so the only errors before that rounding are the f64 sums:
// far below half an ulp of any stored dtype.
#include <math.h>

static void sc_lowrank_f64(double *dst, ptrdiff_t ldd, const double *L, ptrdiff_t li, ptrdiff_t lk, const double *R,
                           ptrdiff_t ldr, size_t m, size_t j0, size_t n, size_t r, double s) {
    for (size_t i = 0; i < m; i++) {
        const double *l = L + (ptrdiff_t)i * li;
        double *d = dst + (ptrdiff_t)i * ldd;
        for (size_t j = j0; j < n; j++) {
            double acc = 0.0;
            for (size_t k = 0; k < r; k++) acc = fma(l[(ptrdiff_t)k * lk], R[(ptrdiff_t)k * ldr + (ptrdiff_t)j], acc);
            d[j] = fma(s, acc, d[j]);
        }
    }
}

#if OPC_X86
// Columns go in chunks whose r x 8 panels are copied contiguously into a buffer that stays
// in L1 (R's rows are often 4 KiB multiples apart, which maps them to the same L1 sets);
// within a chunk, tiles of 6 rows x 8 columns (12 accumulators of 4 doubles: enough FMAs in
// flight) walk the rows, so dst is read and written in contiguous runs. Leftover rows go one
// at a time; the last < 8 columns in a 4-column strip, then scalar.
#define OPC_LOWRANK_PACK_F64 2048   // doubles of packed panels (16 KiB)

OPC_AVX2 static inline void avx2_lowrank_f64_6x8(double *d, ptrdiff_t ldd, const double *l, ptrdiff_t li, ptrdiff_t lk,
                                                  const double *panel, size_t r, __m256d vs) {
    __m256d c00 = _mm256_setzero_pd(), c01 = _mm256_setzero_pd(), c10 = _mm256_setzero_pd(), c11 = _mm256_setzero_pd();
    __m256d c20 = _mm256_setzero_pd(), c21 = _mm256_setzero_pd(), c30 = _mm256_setzero_pd(), c31 = _mm256_setzero_pd();
    __m256d c40 = _mm256_setzero_pd(), c41 = _mm256_setzero_pd(), c50 = _mm256_setzero_pd(), c51 = _mm256_setzero_pd();
    for (size_t k = 0; k < r; k++, l += lk, panel += 8) {
        const __m256d x0 = _mm256_load_pd(panel), x1 = _mm256_load_pd(panel + 4);
        __m256d b = _mm256_broadcast_sd(l);
        c00 = _mm256_fmadd_pd(b, x0, c00); c01 = _mm256_fmadd_pd(b, x1, c01);
        b = _mm256_broadcast_sd(l + li);
        c10 = _mm256_fmadd_pd(b, x0, c10); c11 = _mm256_fmadd_pd(b, x1, c11);
        b = _mm256_broadcast_sd(l + 2 * li);
        c20 = _mm256_fmadd_pd(b, x0, c20); c21 = _mm256_fmadd_pd(b, x1, c21);
        b = _mm256_broadcast_sd(l + 3 * li);
        c30 = _mm256_fmadd_pd(b, x0, c30); c31 = _mm256_fmadd_pd(b, x1, c31);
        b = _mm256_broadcast_sd(l + 4 * li);
        c40 = _mm256_fmadd_pd(b, x0, c40); c41 = _mm256_fmadd_pd(b, x1, c41);
        b = _mm256_broadcast_sd(l + 5 * li);
        c50 = _mm256_fmadd_pd(b, x0, c50); c51 = _mm256_fmadd_pd(b, x1, c51);
    }
#define OPC_STORE2_PD(c0, c1) \
    _mm256_storeu_pd(d, _mm256_fmadd_pd(vs, c0, _mm256_loadu_pd(d))); \
    _mm256_storeu_pd(d + 4, _mm256_fmadd_pd(vs, c1, _mm256_loadu_pd(d + 4))); \
    d += ldd;
    OPC_STORE2_PD(c00, c01) OPC_STORE2_PD(c10, c11) OPC_STORE2_PD(c20, c21)
    OPC_STORE2_PD(c30, c31) OPC_STORE2_PD(c40, c41) OPC_STORE2_PD(c50, c51)
#undef OPC_STORE2_PD
}

// One row of an 8-column panel; `rstride` is 8 for a packed panel, ldr for R itself.
OPC_AVX2 static inline void avx2_lowrank_f64_1x8(double *d, const double *l, ptrdiff_t lk, const double *rk, ptrdiff_t rstride,
                                                  size_t r, __m256d vs) {
    __m256d c0 = _mm256_setzero_pd(), c1 = _mm256_setzero_pd();
    for (size_t k = 0; k < r; k++, l += lk, rk += rstride) {
        const __m256d b = _mm256_broadcast_sd(l);
        c0 = _mm256_fmadd_pd(b, _mm256_loadu_pd(rk), c0);
        c1 = _mm256_fmadd_pd(b, _mm256_loadu_pd(rk + 4), c1);
    }
    _mm256_storeu_pd(d, _mm256_fmadd_pd(vs, c0, _mm256_loadu_pd(d)));
    _mm256_storeu_pd(d + 4, _mm256_fmadd_pd(vs, c1, _mm256_loadu_pd(d + 4)));
}

OPC_AVX2 static void avx2_lowrank_f64(double *dst, ptrdiff_t ldd, const double *L, ptrdiff_t li, ptrdiff_t lk,
                                      const double *R, ptrdiff_t ldr, size_t m, size_t n, size_t r, double s) {
    const __m256d vs = _mm256_set1_pd(s);
    _Alignas(32) double pack[OPC_LOWRANK_PACK_F64];
    const size_t full = n / 8 * 8;
    if (r > 0 && r * 8 <= OPC_LOWRANK_PACK_F64) {
        const size_t chunk = (OPC_LOWRANK_PACK_F64 / (r * 8)) * 8;
        for (size_t jc = 0; jc < full; jc += chunk) {
            const size_t cols = full - jc < chunk ? full - jc : chunk, panels = cols / 8;
            for (size_t p = 0; p < panels; p++)
                for (size_t k = 0; k < r; k++) {
                    const double *src = R + (ptrdiff_t)k * ldr + (ptrdiff_t)(jc + 8 * p);
                    _mm256_store_pd(pack + (p * r + k) * 8, _mm256_loadu_pd(src));
                    _mm256_store_pd(pack + (p * r + k) * 8 + 4, _mm256_loadu_pd(src + 4));
                }
            size_t i = 0;
            for (; i + 6 <= m; i += 6)
                for (size_t p = 0; p < panels; p++)
                    avx2_lowrank_f64_6x8(dst + (ptrdiff_t)i * ldd + (ptrdiff_t)(jc + 8 * p), ldd, L + (ptrdiff_t)i * li, li, lk,
                                         pack + p * r * 8, r, vs);
            for (; i < m; i++)
                for (size_t p = 0; p < panels; p++)
                    avx2_lowrank_f64_1x8(dst + (ptrdiff_t)i * ldd + (ptrdiff_t)(jc + 8 * p), L + (ptrdiff_t)i * li, lk,
                                         pack + p * r * 8, 8, r, vs);
        }
    } else {
        // Rank too large to pack: the same arithmetic straight from R.
        for (size_t j = 0; j < full; j += 8)
            for (size_t i = 0; i < m; i++)
                avx2_lowrank_f64_1x8(dst + (ptrdiff_t)i * ldd + (ptrdiff_t)j, L + (ptrdiff_t)i * li, lk, R + j, ldr, r, vs);
    }
    size_t j = full;
    for (; j + 4 <= n; j += 4) {
        for (size_t i = 0; i < m; i++) {
            const double *l = L + (ptrdiff_t)i * li;
            __m256d c = _mm256_setzero_pd();
            const double *rk = R + j;
            for (size_t k = 0; k < r; k++, rk += ldr) c = _mm256_fmadd_pd(_mm256_broadcast_sd(l + (ptrdiff_t)k * lk), _mm256_loadu_pd(rk), c);
            double *d = dst + (ptrdiff_t)i * ldd + (ptrdiff_t)j;
            _mm256_storeu_pd(d, _mm256_fmadd_pd(vs, c, _mm256_loadu_pd(d)));
        }
    }
    if (j < n) sc_lowrank_f64(dst, ldd, L, li, lk, R, ldr, m, j, n, r, s);
}
#endif

void opc_lowrank_update_f64(double *dst, ptrdiff_t ldd, const double *L, ptrdiff_t li, ptrdiff_t lk, const double *R,
                            ptrdiff_t ldr, size_t m, size_t n, size_t r, double s) {
    DISPATCH(avx2_lowrank_f64(dst, ldd, L, li, lk, R, ldr, m, n, r, s), sc_lowrank_f64(dst, ldd, L, li, lk, R, ldr, m, 0, n, r, s));
}
