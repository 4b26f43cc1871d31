// Standalone check of Sources/COpConvertKernels against fixtures/dtypes (no Swift needed).
//
//   cc -std=c11 -O2 -Wall -Wextra -ISources/COpConvertKernels/include
//      bench/dtype_kernels_check.c Sources/COpConvertKernels/opc_kernels.c -o /tmp/dtype_check
//   /tmp/dtype_check [fixtures/dtypes] [--bench]
//
// Every function is run on the SIMD path (if the CPU has one) and on the forced scalar
// path, with src/dst misaligned by 0..7 bytes, on the whole fixture and on many short odd
// lengths (tails), with guard bytes after dst. Results must equal the fixtures bit for bit,
// except where fixtures/dtypes/README.md says otherwise (NaN from a signalling NaN to f16).
// With --bench, also times f32->bf16, bf16->f32 (and f32<->f16) on a 256 MiB f32 buffer.
#define _POSIX_C_SOURCE 200809L
#include "opc_kernels.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *g_dir = "fixtures/dtypes";
static int g_fail = 0;

static void *load(const char *name, size_t *bytes) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)sz + 64);
    if (fread(p, 1, (size_t)sz, f) != (size_t)sz) { fprintf(stderr, "short read %s\n", path); exit(2); }
    fclose(f);
    *bytes = (size_t)sz;
    return p;
}

typedef void (*conv_fn)(const void *, void *, size_t);

// Expected-vs-got rule for one element. kind: 0 exact; 1 f16 output from f32/f64 input
// (numpy does not quiet signalling NaNs: accept the quieted value with same sign; the
// exact policy value is checked separately by `policy`).
typedef int (*elem_ok_fn)(const unsigned char *in, const unsigned char *exp, const unsigned char *got, size_t i);

static int ok_exact16(const unsigned char *in, const unsigned char *e, const unsigned char *g, size_t i) {
    (void)in; return memcmp(e + 2 * i, g + 2 * i, 2) == 0;
}
static int ok_exact32(const unsigned char *in, const unsigned char *e, const unsigned char *g, size_t i) {
    (void)in; return memcmp(e + 4 * i, g + 4 * i, 4) == 0;
}
static int ok_exact64(const unsigned char *in, const unsigned char *e, const unsigned char *g, size_t i) {
    (void)in; return memcmp(e + 8 * i, g + 8 * i, 8) == 0;
}
static uint16_t u16at(const unsigned char *p, size_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
static uint32_t u32at(const unsigned char *p, size_t i) { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
static uint64_t u64at(const unsigned char *p, size_t i) { uint64_t v; memcpy(&v, p + 8 * i, 8); return v; }

static int g_snan_f16_deviations = 0;   // counted on the first pass only
static int g_count_dev = 0;

// f32 -> f16 with opconvert's NaN policy: quiet, sign, top payload bits.
static int ok_f32_f16(const unsigned char *in, const unsigned char *e, const unsigned char *g, size_t i) {
    uint16_t ev = u16at(e, i), gv = u16at(g, i);
    uint32_t x = u32at(in, i);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        uint16_t want = (uint16_t)(((x >> 16) & 0x8000u) | 0x7E00u | ((x >> 13) & 0x3FFu));
        if (gv != want) return 0;
        if (ev != gv) {
            // numpy: only differs for signalling NaN input; must still be a NaN of same sign
            if ((x & 0x00400000u) || (ev & 0x7C00u) != 0x7C00u || !(ev & 0x3FFu) || ((ev ^ gv) & 0x8000u)) return 0;
            if (g_count_dev) g_snan_f16_deviations++;
        }
        return 1;
    }
    return ev == gv;
}
static int ok_f64_f16(const unsigned char *in, const unsigned char *e, const unsigned char *g, size_t i) {
    uint16_t ev = u16at(e, i), gv = u16at(g, i);
    uint64_t x = u64at(in, i);
    if ((x & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull) {
        uint16_t want = (uint16_t)(((x >> 48) & 0x8000u) | 0x7E00u | ((x >> 42) & 0x3FFu));
        if (gv != want) return 0;
        if (ev != gv) {
            if ((x & 0x0008000000000000ull) || (ev & 0x7C00u) != 0x7C00u || !(ev & 0x3FFu) || ((ev ^ gv) & 0x8000u)) return 0;
            if (g_count_dev) g_snan_f16_deviations++;
        }
        return 1;
    }
    return ev == gv;
}

// Run fn over n elements with the given misalignments and check every element; also
// check that the 16 guard bytes after dst are untouched.
static int run_check(const char *what, conv_fn fn, const unsigned char *in, size_t isz,
                     const unsigned char *exp, size_t osz, size_t n, elem_ok_fn ok,
                     size_t soff, size_t doff) {
    unsigned char *sb = malloc(n * isz + 64), *db = malloc(n * osz + 64);
    memcpy(sb + soff, in, n * isz);
    memset(db, 0xA5, n * osz + 64);
    fn(sb + soff, db + doff, n);
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!ok(sb + soff, exp, db + doff, i)) {
            if (bad < 5) {
                fprintf(stderr, "  %s: mismatch at %zu (soff %zu doff %zu)\n", what, i, soff, doff);
                fprintf(stderr, "    in:");
                for (size_t k = 0; k < isz; k++) fprintf(stderr, " %02x", in[i * isz + isz - 1 - k]);
                fprintf(stderr, "  exp:");
                for (size_t k = 0; k < osz; k++) fprintf(stderr, " %02x", exp[i * osz + osz - 1 - k]);
                fprintf(stderr, "  got:");
                for (size_t k = 0; k < osz; k++) fprintf(stderr, " %02x", db[doff + i * osz + osz - 1 - k]);
                fprintf(stderr, "\n");
            }
            bad++;
        }
    }
    for (size_t k = 0; k < 16; k++)
        if (db[doff + n * osz + k] != 0xA5) { fprintf(stderr, "  %s: wrote past end\n", what); bad++; break; }
    for (size_t k = 0; k < doff; k++)
        if (db[k] != 0xA5) { fprintf(stderr, "  %s: wrote before start\n", what); bad++; break; }
    free(sb);
    free(db);
    return bad;
}

// Full check of one function on one path: whole array at all misalignments, and many
// short slices (every length 0..70 at varying start positions).
static int check_fn(const char *what, conv_fn fn, const unsigned char *in, size_t isz,
                    const unsigned char *exp, size_t osz, size_t n, elem_ok_fn ok) {
    int bad = 0;
    for (size_t off = 0; off < 8 && !bad; off++) {
        g_count_dev = (off == 0);
        bad += run_check(what, fn, in, isz, exp, osz, n, ok, off, (off * 3) % 8);
    }
    g_count_dev = 0;
    size_t start = 0;
    for (size_t len = 0; len <= 70 && !bad; len++) {
        for (int rep = 0; rep < 4 && !bad; rep++) {
            start = (start * 2654435761u + 12345u + len) % (n > len ? n - len : 1);
            bad += run_check(what, fn, in + start * isz, isz, exp + start * osz, osz, len, ok,
                             (size_t)rep, (size_t)(rep * 5 % 8));
        }
    }
    return bad;
}

static void check_both(const char *what, conv_fn fn, const void *in, size_t isz,
                       const void *exp, size_t osz, size_t n, elem_ok_fn ok) {
    int lvl = opc_simd_level();
    int b1 = check_fn(what, fn, in, isz, exp, osz, n, ok);
    int dev_simd = g_snan_f16_deviations;
    g_snan_f16_deviations = 0;
    opc_force_scalar(1);
    int b0 = check_fn(what, fn, in, isz, exp, osz, n, ok);
    opc_force_scalar(0);
    // SIMD and scalar must agree bit for bit everywhere (including NaN payloads)
    unsigned char *o1 = malloc(n * osz + 1), *o0 = malloc(n * osz + 1);
    fn(in, o1, n);
    opc_force_scalar(1);
    fn(in, o0, n);
    opc_force_scalar(0);
    int same = memcmp(o1, o0, n * osz) == 0;
    free(o1);
    free(o0);
    printf("%-14s n=%-7zu simd(level %d): %s  scalar: %s  simd==scalar: %s", what, n, lvl,
           b1 ? "FAIL" : "ok", b0 ? "FAIL" : "ok", same ? "yes" : "NO");
    if (dev_simd) printf("  (%d signalling-NaN inputs: quiet NaN where numpy keeps sNaN)", dev_simd);
    printf("\n");
    g_snan_f16_deviations = 0;
    if (b1 || b0 || !same) g_fail = 1;
}

// Adapters to a common signature.
static void w_f16_f32(const void *s, void *d, size_t n) { opc_f16_to_f32(s, d, n); }
static void w_bf16_f32(const void *s, void *d, size_t n) { opc_bf16_to_f32(s, d, n); }
static void w_e4m3(const void *s, void *d, size_t n) { opc_f8e4m3_to_f32(s, d, n); }
static void w_e5m2(const void *s, void *d, size_t n) { opc_f8e5m2_to_f32(s, d, n); }
static void w_f64_f32(const void *s, void *d, size_t n) { opc_f64_to_f32(s, d, n); }
static void w_f32_copy(const void *s, void *d, size_t n) { opc_f32_copy(s, d, n); }
static void w_f32_f16(const void *s, void *d, size_t n) { opc_f32_to_f16(s, d, n); }
static void w_f32_bf16(const void *s, void *d, size_t n) { opc_f32_to_bf16(s, d, n); }
static void w_f32_f64(const void *s, void *d, size_t n) { opc_f32_to_f64(s, d, n); }
static void w_f32_store(const void *s, void *d, size_t n) { opc_f32_store(s, d, n); }
static void w_f16_bf16(const void *s, void *d, size_t n) { opc_f16_to_bf16(s, d, n); }
static void w_bf16_f16(const void *s, void *d, size_t n) { opc_bf16_to_f16(s, d, n); }
static void w_f64_f16(const void *s, void *d, size_t n) { opc_f64_to_f16(s, d, n); }
static void w_f64_bf16(const void *s, void *d, size_t n) { opc_f64_to_bf16(s, d, n); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void bench_one(const char *what, conv_fn fn, const void *in, size_t isz, void *out, size_t osz, size_t n) {
    double best[2] = {1e9, 1e9};
    for (int mode = 0; mode < 2; mode++) {
        opc_force_scalar(mode);
        for (int r = 0; r < 5; r++) {
            double t0 = now();
            fn(in, out, n);
            double t = now() - t0;
            if (t < best[mode]) best[mode] = t;
        }
    }
    opc_force_scalar(0);
    double bytes = (double)n * (double)(isz + osz);
    printf("  %-10s simd: %6.2f GB/s (%5.2f Gelem/s)   scalar: %6.2f GB/s (%5.2f Gelem/s)\n", what,
           bytes / best[0] / 1e9, (double)n / best[0] / 1e9, bytes / best[1] / 1e9, (double)n / best[1] / 1e9);
}

int main(int argc, char **argv) {
    int bench = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench")) bench = 1;
        else g_dir = argv[i];
    }
    printf("opc_simd_level() = %d\n", opc_simd_level());
    opc_force_scalar(1);
    if (opc_simd_level() != 0) { printf("force_scalar did not take effect\n"); g_fail = 1; }
    opc_force_scalar(0);

    size_t sz;
    uint16_t *all16 = malloc(65536 * 2);
    for (uint32_t i = 0; i < 65536; i++) all16[i] = (uint16_t)i;
    // F8: 256 patterns repeated (so the long-input table path is used) -- the expected
    // arrays are repeated the same way.
    enum { REP = 41 };
    uint8_t *all8 = malloc(256 * REP);
    for (size_t i = 0; i < 256 * REP; i++) all8[i] = (uint8_t)(i * 7 + i / 256);

    void *e = load("f16_to_f32.bin", &sz);
    check_both("f16_to_f32", w_f16_f32, all16, 2, e, 4, 65536, ok_exact32);
    free(e);
    e = load("bf16_to_f32.bin", &sz);
    check_both("bf16_to_f32", w_bf16_f32, all16, 2, e, 4, 65536, ok_exact32);
    free(e);
    const char *f8names[2] = {"f8e4m3_to_f32.bin", "f8e5m2_to_f32.bin"};
    conv_fn f8fns[2] = {w_e4m3, w_e5m2};
    for (int k = 0; k < 2; k++) {
        uint32_t *t = load(f8names[k], &sz), *ex = malloc(256 * REP * 4);
        for (size_t i = 0; i < 256 * REP; i++) ex[i] = t[all8[i]];
        check_both(k ? "f8e5m2_to_f32" : "f8e4m3_to_f32", f8fns[k], all8, 1, ex, 4, 256 * REP, ok_exact32);
        free(t);
        free(ex);
    }
    e = load("f16_to_bf16.bin", &sz);
    check_both("f16_to_bf16", w_f16_bf16, all16, 2, e, 2, 65536, ok_exact16);
    free(e);
    e = load("bf16_to_f16.bin", &sz);
    check_both("bf16_to_f16", w_bf16_f16, all16, 2, e, 2, 65536, ok_exact16);
    free(e);

    size_t n32b;
    unsigned char *in32 = load("f32_inputs.bin", &n32b);
    size_t n32 = n32b / 4;
    e = load("f32_to_f16.bin", &sz);
    check_both("f32_to_f16", w_f32_f16, in32, 4, e, 2, n32, ok_f32_f16);
    free(e);
    e = load("f32_to_bf16.bin", &sz);
    check_both("f32_to_bf16", w_f32_bf16, in32, 4, e, 2, n32, ok_exact16);
    free(e);
    e = load("f32_to_f64.bin", &sz);
    check_both("f32_to_f64", w_f32_f64, in32, 4, e, 8, sz / 8, ok_exact64);
    free(e);
    {   // all f32 inputs: f32_to_f64 must equal the C conversion (exact) for non-NaN
        double *o = malloc(n32 * 8);
        for (int mode = 0; mode < 2; mode++) {
            opc_force_scalar(mode);
            opc_f32_to_f64((const float *)(const void *)in32, o, n32);
            int bad = 0;
            for (size_t i = 0; i < n32; i++) {
                float x; memcpy(&x, in32 + 4 * i, 4);
                if (isnan(x) ? !(isnan(o[i]) && !signbit(o[i]) == !signbit(x)) : memcmp(&o[i], &(double){(double)x}, 8) != 0) bad++;
            }
            printf("f32_to_f64     all %zu inputs vs C cast (%s): %s\n", n32, mode ? "scalar" : "simd", bad ? "FAIL" : "ok");
            if (bad) g_fail = 1;
        }
        opc_force_scalar(0);
        free(o);
    }
    check_both("f32_copy", w_f32_copy, in32, 4, in32, 4, n32, ok_exact32);
    check_both("f32_store", w_f32_store, in32, 4, in32, 4, n32, ok_exact32);

    size_t n64b;
    unsigned char *in64 = load("f64_inputs.bin", &n64b);
    size_t n64 = n64b / 8;
    e = load("f64_to_f16.bin", &sz);
    check_both("f64_to_f16", w_f64_f16, in64, 8, e, 2, n64, ok_f64_f16);
    free(e);
    e = load("f64_to_bf16.bin", &sz);
    check_both("f64_to_bf16", w_f64_bf16, in64, 8, e, 2, n64, ok_exact16);
    free(e);
    e = load("f64_to_f32.bin", &sz);
    check_both("f64_to_f32", w_f64_f32, in64, 8, e, 4, n64, ok_exact32);
    free(e);

    free(in32);
    free(in64);
    free(all16);
    free(all8);
    printf(g_fail ? "RESULT: FAIL\n" : "RESULT: all bit-exact (per fixtures/dtypes/README.md rules)\n");

    if (bench) {
        size_t n = (size_t)64 << 20;               // 64 Mi f32 = 256 MiB
        float *f = malloc(n * 4);
        uint16_t *h = malloc(n * 2);
        uint32_t seed = 1;
        for (size_t i = 0; i < n; i++) { seed = seed * 1664525u + 1013904223u; f[i] = (float)(seed >> 8) * 0x1p-20f - 8.0f; }
        memset(h, 0, n * 2);
        printf("throughput, single thread, %zu elements (f32 side 256 MiB), best of 5; GB/s counts bytes read + written:\n", n);
        bench_one("f32->bf16", w_f32_bf16, f, 4, h, 2, n);
        bench_one("bf16->f32", w_bf16_f32, h, 2, f, 4, n);
        bench_one("f32->f16", w_f32_f16, f, 4, h, 2, n);
        bench_one("f16->f32", w_f16_f32, h, 2, f, 4, n);
        free(f);
        free(h);
    }
    return g_fail;
}
