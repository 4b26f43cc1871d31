/*
 * Runs the CUDA plugin on the CPU emulator (emu_driver.cpp, emu_cublas.c) next to the CPU
 * plugin, on the same inputs, and compares every ABI function's results and error returns;
 * then checks context creation with the kernel cache (write, reuse, corrupt entry rebuilt)
 * and that destroy releases everything. Usage (see run.sh):
 *   harness CUDA_PLUGIN.so CPU_PLUGIN.so EMULATOR_DIR
 * With EMULATOR_DIR "-" it runs the same comparisons on a real GPU (run.sh --gpu), minus
 * the emulator's own counters.
 * Prints "N passed, M failed"; exit 0 only when M == 0.
 */
#include "opc_plugin.h"

#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct plugin {
    const char *label;
    const opc_plugin *t;
    opc_context *ctx;
} plugin;

static plugin cpu = {"cpu"}, gpu = {"cuda"};
static int passed, failed;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (cond) passed++;                                               \
        else {                                                            \
            failed++;                                                     \
            printf("FAIL line %d: ", __LINE__);                           \
            printf(__VA_ARGS__);                                          \
            printf("\n");                                                 \
        }                                                                 \
    } while (0)

static uint64_t rng_state = 0x1234567;
static float frand(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}
static float *randoms(size_t n) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = frand();
    return x;
}

static void *upload(plugin *p, const void *host, size_t bytes) {
    void *d = NULL;
    int rc = p->t->alloc(p->ctx, bytes, &d);
    CHECK(rc == 0 && d, "%s alloc(%zu): %d %s", p->label, bytes, rc, p->t->last_error(p->ctx));
    if (bytes && host) {
        rc = p->t->upload(p->ctx, d, host, bytes);
        CHECK(rc == 0, "%s upload: %s", p->label, p->t->last_error(p->ctx));
    }
    return d;
}
static void download(plugin *p, void *host, void *d, size_t bytes) {
    int rc = p->t->download(p->ctx, host, d, bytes);
    CHECK(rc == 0, "%s download: %s", p->label, p->t->last_error(p->ctx));
}
static void release(plugin *p, void *d) {
    int rc = p->t->free(p->ctx, d);
    CHECK(rc == 0, "%s free: %s", p->label, p->t->last_error(p->ctx));
}

static void compare(const char *what, const float *a, const float *b, size_t n, double tol) {
    for (size_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        if (isnan(x) && isnan(y)) continue;
        if (!(fabs(x - y) <= tol * fmax(1.0, fabs(x)))) {
            CHECK(0, "%s[%zu]: cpu %.9g, cuda %.9g", what, i, x, y);
            return;
        }
    }
    CHECK(1, "%s", what);
}

/* Runs `op` on both plugins with the same input buffers; out[w] = the output buffer. */
typedef void (*op_fn)(plugin *p, void **bufs, void *extra, int *rc);

/* ---- tests ------------------------------------------------------------------------------ */

static void test_memory(void) {
    for (int w = 0; w < 2; w++) {
        plugin *p = w ? &gpu : &cpu;
        void *a = NULL, *b = NULL;
        CHECK(p->t->alloc(p->ctx, 0, &a) == 0 && p->t->alloc(p->ctx, 0, &b) == 0 && a && b && a != b,
              "%s: alloc(0) gives distinct pointers", p->label);
        release(p, a);
        release(p, b);
        float zeros[1000];
        memset(zeros, 0xFF, sizeof zeros);
        void *z = upload(p, NULL, sizeof zeros);
        CHECK(((uintptr_t)z % 64) == 0, "%s: 64-byte aligned", p->label);
        download(p, zeros, z, sizeof zeros);
        int all_zero = 1;
        for (int i = 0; i < 1000; i++) all_zero &= zeros[i] == 0.0f;
        CHECK(all_zero, "%s: alloc zero-fills", p->label);
        /* overlapping copies, both directions */
        float src[1000];
        for (int i = 0; i < 1000; i++) src[i] = (float)i;
        p->t->upload(p->ctx, z, src, sizeof src);
        CHECK(p->t->copy(p->ctx, (char *)z + 40, z, 400 * 4) == 0, "%s copy fwd", p->label);
        CHECK(p->t->copy(p->ctx, (char *)z + 4, (char *)z + 400, 100 * 4) == 0, "%s copy back", p->label);
        float got[1000], want[1000];
        memcpy(want, src, sizeof src);
        memmove(want + 10, want, 400 * 4);
        memmove(want + 1, want + 100, 100 * 4);
        download(p, got, z, sizeof got);
        compare(w ? "cuda overlapping copy" : "cpu overlapping copy", want, got, 1000, 0);
        CHECK(p->t->fill(p->ctx, (char *)z + 4, -2.5f, 7) == 0, "%s fill", p->label);
        download(p, got, z, 40);
        CHECK(got[0] == want[0] && got[1] == -2.5f && got[7] == -2.5f && got[8] == want[8], "%s fill range", p->label);
        release(p, z);
        CHECK(p->t->free(p->ctx, NULL) == 0, "%s free(NULL)", p->label);
    }
}

static void test_gemm(void) {
    static const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 9, 33}, {64, 48, 80}, {5, 1, 9}, {1, 13, 4}, {6, 4, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                for (int variant = 0; variant < 2; variant++) {
                    int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
                    int pad = variant; /* padded strides and offset pointers */
                    int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
                    if (lda < 1) lda = 1;
                    if (ldb < 1) ldb = 1;
                    size_t na = (size_t)(ta ? k : m) * lda + 1, nb = (size_t)(tb ? n : k) * ldb + 1, nc = (size_t)m * ldc + 1;
                    float *A = randoms(na), *B = randoms(nb), *C = randoms(nc);
                    if (k == 0 && variant == 0) for (size_t i = 0; i < nc; i++) C[i] = NAN; /* beta 0: not read */
                    float alpha = variant ? 0.75f : 1.0f, beta = variant ? -1.5f : 0.0f;
                    float *out[2];
                    for (int w = 0; w < 2; w++) {
                        plugin *p = w ? &gpu : &cpu;
                        char *a = upload(p, A, na * 4), *b = upload(p, B, nb * 4), *c = upload(p, C, nc * 4);
                        int rc = p->t->gemm(p->ctx, ta, tb, m, n, k, alpha, a + 4 * pad, lda, b + 4 * pad, ldb, beta,
                                            c + 4 * pad, ldc);
                        CHECK(rc == 0, "%s gemm %dx%dx%d: %s", p->label, m, n, k, p->t->last_error(p->ctx));
                        out[w] = malloc(nc * 4);
                        download(p, out[w], c, nc * 4);
                        release(p, a);
                        release(p, b);
                        release(p, c);
                    }
                    char what[96];
                    snprintf(what, sizeof what, "gemm m=%d n=%d k=%d ta=%d tb=%d pad=%d", m, n, k, ta, tb, pad);
                    compare(what, out[0], out[1], nc, 1e-5);
                    free(out[0]);
                    free(out[1]);
                    free(A);
                    free(B);
                    free(C);
                }
            }
        }
    }
}

/* Element-wise and row operations: same inputs, compare the in/out buffer afterwards. */
enum { OP_AXPY, OP_SCALE, OP_RELU_F, OP_RELU_F_ALIAS, OP_RELU_B, OP_DIVIDE, OP_MULTIPLY_ALIAS, OP_ADD_ROW,
       OP_SCALE_ROWS, OP_SUM_ROWS0, OP_SUM_ROWS1, OP_SUM_ROWS_HALF, OP_ROW_NORMS, OP_ROW_DOTS, OP_ADAMW, OP_COUNT };
static const char *const op_names[OP_COUNT] = {"axpy", "scale", "relu_forward", "relu_forward in place",
    "relu_backward", "divide", "multiply in place", "add_row_vector", "scale_rows", "sum_rows beta=0",
    "sum_rows beta=1", "sum_rows beta=0.5", "row_norms", "row_dots", "adamw"};

static int run_op(plugin *p, int op, int rows, int cols, float **in, float *result, size_t *result_n) {
    size_t n = (size_t)rows * cols;
    size_t big = n > (size_t)rows ? n : (size_t)rows;
    big = big > (size_t)cols ? big : (size_t)cols;
    void *x = upload(p, in[0], big * 4 + 4), *y = upload(p, in[1], big * 4 + 4), *z = upload(p, in[2], big * 4 + 4),
         *v = upload(p, in[3], big * 4 + 4);
    /* offset pointers: only 4-byte aligned */
    char *X = (char *)x + 4, *Y = (char *)y + 4, *Z = (char *)z + 4, *V = (char *)v + 4;
    int rc = -99;
    void *out = Y;
    size_t out_n = n;
    switch (op) {
    case OP_AXPY: rc = p->t->axpy(p->ctx, n, 0.3f, X, Y); break;
    case OP_SCALE: rc = p->t->scale(p->ctx, n, -1.7f, Y); break;
    case OP_RELU_F: rc = p->t->relu_forward(p->ctx, n, X, Y); break;
    case OP_RELU_F_ALIAS: rc = p->t->relu_forward(p->ctx, n, Y, Y); break;
    case OP_RELU_B: rc = p->t->relu_backward(p->ctx, n, X, Z, Y); break;
    case OP_DIVIDE:
    case OP_MULTIPLY_ALIAS:
        if (p->t->divide && p->t->multiply) {
            rc = op == OP_DIVIDE ? p->t->divide(p->ctx, n, X, Z, Y) : p->t->multiply(p->ctx, n, Y, X, Y);
        } else { /* a v1 plugin: the reference on the host */
            float *a = malloc(n * 4 + 4), *b = malloc(n * 4 + 4);
            download(p, a, op == OP_DIVIDE ? X : Y, n * 4);
            download(p, b, op == OP_DIVIDE ? Z : X, n * 4);
            for (size_t i = 0; i < n; i++) a[i] = op == OP_DIVIDE ? a[i] / b[i] : a[i] * b[i];
            rc = p->t->upload(p->ctx, Y, a, n * 4);
            free(a);
            free(b);
        }
        break;
    case OP_ADD_ROW: rc = p->t->add_row_vector(p->ctx, rows, cols, V, Y); break;
    case OP_SCALE_ROWS: rc = p->t->scale_rows(p->ctx, rows, cols, V, Y); break;
    case OP_SUM_ROWS0: rc = p->t->sum_rows(p->ctx, rows, cols, X, 0.0f, V); out = V; out_n = cols; break;
    case OP_SUM_ROWS1: rc = p->t->sum_rows(p->ctx, rows, cols, X, 1.0f, V); out = V; out_n = cols; break;
    case OP_SUM_ROWS_HALF: rc = p->t->sum_rows(p->ctx, rows, cols, X, 0.5f, V); out = V; out_n = cols; break;
    case OP_ROW_NORMS: rc = p->t->row_norms(p->ctx, rows, cols, X, V); out = V; out_n = rows; break;
    case OP_ROW_DOTS: rc = p->t->row_dots(p->ctx, rows, cols, X, Z, V); out = V; out_n = rows; break;
    case OP_ADAMW:
        for (int t = 1; t <= 3 && rc <= 0; t++) rc = p->t->adamw(p->ctx, n, Y, X, Z, V, 0.01f, 0.9f, 0.999f, 1e-8f, 0.1f, t);
        break;
    }
    if (rc != 0) printf("  %s %s: %s\n", p->label, op_names[op], p->t->last_error(p->ctx));
    *result_n = out_n;
    if (out_n) download(p, result, out, out_n * 4);
    if (op == OP_ADAMW && n) { /* m and v too */
        download(p, result + n, Z, n * 4);
        download(p, result + 2 * n, V, n * 4);
        *result_n = 3 * n;
    }
    release(p, x);
    release(p, y);
    release(p, z);
    release(p, v);
    return rc;
}

static void test_elementwise_and_rows(void) {
    static const int shapes[][2] = {{0, 5}, {5, 0}, {1, 1}, {3, 7}, {33, 31}, {200, 10}, {3000, 3}, {2, 700}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], cols = shapes[s][1];
        size_t n = (size_t)rows * cols, big = (n > (size_t)rows ? n : (size_t)rows) + (size_t)cols + 1;
        float *in[4];
        for (int i = 0; i < 4; i++) in[i] = randoms(big);
        for (size_t i = 0; i < big; i++) {
            in[2][i] = in[2][i] * in[2][i] + 0.1f; /* positive: divisors, adamw's v */
            in[3][i] = fabsf(in[3][i]);
        }
        for (int op = 0; op < OP_COUNT; op++) {
            float *res[2];
            size_t res_n[2];
            int rc[2];
            for (int w = 0; w < 2; w++) {
                res[w] = calloc(3 * big + 3, 4);
                rc[w] = run_op(w ? &gpu : &cpu, op, rows, cols, in, res[w], &res_n[w]);
            }
            char what[96];
            snprintf(what, sizeof what, "%s rows=%d cols=%d", op_names[op], rows, cols);
            CHECK(rc[0] == 0 && rc[1] == 0, "%s: rc cpu %d, cuda %d", what, rc[0], rc[1]);
            /* sum_rows adds in f32 in a different order (chunks of rows) than the CPU plugin. */
            int summed = op == OP_SUM_ROWS0 || op == OP_SUM_ROWS1 || op == OP_SUM_ROWS_HALF;
            compare(what, res[0], res[1], res_n[0], summed ? 1e-5 * (1 + rows / 64) : 1e-5);
            free(res[0]);
            free(res[1]);
        }
        for (int i = 0; i < 4; i++) free(in[i]);
    }
}

static void test_losses(void) {
    static const int shapes[][2] = {{1, 1}, {4, 10}, {37, 3}, {9, 100}, {300, 10}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], classes = shapes[s][1];
        size_t n = (size_t)rows * classes;
        float *logits = randoms(n);
        for (size_t i = 0; i < n; i++) logits[i] *= 4.0f;
        if (classes > 2) logits[1] = logits[2]; /* a tie: first max wins */
        int64_t *labels = malloc(rows * sizeof *labels);
        for (int i = 0; i < rows; i++) labels[i] = (int64_t)((i * 7 + 3) % classes);
        for (int in_place = 0; in_place < 2; in_place++) {
            float loss[2], *grad[2];
            int64_t correct[2];
            for (int w = 0; w < 2; w++) {
                plugin *p = w ? &gpu : &cpu;
                void *l = upload(p, logits, n * 4), *y = upload(p, labels, rows * 8), *d = in_place ? l : upload(p, NULL, n * 4);
                int rc = p->t->softmax_xent(p->ctx, rows, classes, l, y, d, &loss[w], &correct[w]);
                CHECK(rc == 0, "%s softmax_xent: %s", p->label, p->t->last_error(p->ctx));
                grad[w] = malloc(n * 4);
                download(p, grad[w], d, n * 4);
                release(p, l);
                release(p, y);
                if (!in_place) release(p, d);
            }
            char what[96];
            snprintf(what, sizeof what, "softmax_xent rows=%d classes=%d in_place=%d", rows, classes, in_place);
            compare(what, grad[0], grad[1], n, 1e-5);
            CHECK(fabsf(loss[0] - loss[1]) <= 1e-5f * fmaxf(1.0f, fabsf(loss[0])), "%s loss: %.9g vs %.9g", what, loss[0], loss[1]);
            CHECK(correct[0] == correct[1], "%s correct: %lld vs %lld", what, (long long)correct[0], (long long)correct[1]);
            free(grad[0]);
            free(grad[1]);
        }
        /* A bad label: OPC_E_INVALID, dlogits untouched. */
        labels[rows - 1] = classes;
        for (int w = 0; w < 2; w++) {
            plugin *p = w ? &gpu : &cpu;
            float *sentinel = malloc(n * 4), *after = malloc(n * 4);
            for (size_t i = 0; i < n; i++) sentinel[i] = 42.0f;
            void *l = upload(p, logits, n * 4), *y = upload(p, labels, rows * 8), *d = upload(p, sentinel, n * 4);
            float loss = -1;
            int rc = p->t->softmax_xent(p->ctx, rows, classes, l, y, d, &loss, NULL);
            CHECK(rc == OPC_E_INVALID && loss == -1, "%s bad label: rc %d", p->label, rc);
            CHECK(strstr(p->t->last_error(p->ctx), "row") != NULL, "%s bad label message: %s", p->label, p->t->last_error(p->ctx));
            download(p, after, d, n * 4);
            CHECK(memcmp(sentinel, after, n * 4) == 0, "%s bad label: dlogits written", p->label);
            release(p, l);
            release(p, y);
            release(p, d);
            free(sentinel);
            free(after);
        }
        free(logits);
        free(labels);
    }
    static const size_t sizes[] = {0, 1, 5, 1000, 300001};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        float *x = randoms(sizes[s] + 1);
        double out[2];
        for (int w = 0; w < 2; w++) {
            plugin *p = w ? &gpu : &cpu;
            char *d = upload(p, x, (sizes[s] + 1) * 4);
            CHECK(p->t->sum_squares(p->ctx, sizes[s], d + 4, &out[w]) == 0, "%s sum_squares", p->label);
            release(p, d);
        }
        CHECK(fabs(out[0] - out[1]) <= 1e-12 * fmax(1.0, out[0]), "sum_squares n=%zu: %.17g vs %.17g", sizes[s], out[0], out[1]);
        free(x);
    }
}

/* Same argument errors as the CPU plugin, and no crash. */
static void test_errors(void) {
    int rc[2][12];
    for (int w = 0; w < 2; w++) {
        plugin *p = w ? &gpu : &cpu;
        void *d = upload(p, NULL, 64);
        double s = 0;
        int i = 0;
        rc[w][i++] = p->t->gemm(p->ctx, 0, 0, -1, 2, 2, 1, d, 2, d, 2, 0, d, 2);
        rc[w][i++] = p->t->gemm(p->ctx, 0, 0, 2, 2, 3, 1, d, 2, d, 2, 0, d, 2); /* lda < k */
        rc[w][i++] = p->t->gemm(p->ctx, 0, 0, 2, 2, 2, 1, NULL, 2, d, 2, 0, d, 2);
        rc[w][i++] = p->t->axpy(p->ctx, 4, 1, NULL, d);
        rc[w][i++] = p->t->sum_rows(p->ctx, -1, 2, d, 0, d);
        rc[w][i++] = p->t->row_norms(p->ctx, 2, -3, d, d);
        rc[w][i++] = p->t->softmax_xent(p->ctx, 2, 0, d, d, d, NULL, NULL);
        rc[w][i++] = p->t->sum_squares(p->ctx, 4, d, NULL);
        rc[w][i++] = p->t->adamw(p->ctx, 4, d, d, d, d, 0.1f, 0.9f, 0.99f, 1e-8f, 0, 0);
        rc[w][i++] = p->t->upload(p->ctx, NULL, &s, 8);
        rc[w][i++] = p->t->divide ? p->t->divide(p->ctx, 3, d, NULL, d) : OPC_E_INVALID;
        rc[w][i++] = p->t->alloc(p->ctx, 8, NULL);
        release(p, d);
    }
    for (int i = 0; i < 12; i++) {
        CHECK(rc[1][i] == OPC_E_INVALID && rc[0][i] == rc[1][i], "error case %d: cpu %d, cuda %d", i, rc[0][i], rc[1][i]);
    }
}

typedef struct emu_stats_t { int retains, streams, modules, module_loads; long allocations, launches; } emu_stats_t;
typedef struct emu_cublas_stats { int live_handles, last_math_mode; } emu_cublas_stats;

/* emu_dir NULL: a real GPU (the emulator's own counters are not there to check). */
static void test_contexts_and_cache(const opc_plugin *t, const char *emu_dir) {
    emu_stats_t (*stats)(void) = NULL;
    emu_cublas_stats (*blas_stats)(void) = NULL;
    if (emu_dir) {
        char lib[1024];
        snprintf(lib, sizeof lib, "%s/libcuda.so.1", emu_dir);
        void *emu = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
        snprintf(lib, sizeof lib, "%s/libcublas.so.13", emu_dir);
        void *emu_blas = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
        if (!emu_blas) {
            snprintf(lib, sizeof lib, "%s/libcublas.so.12", emu_dir);
            emu_blas = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
        }
        CHECK(emu && emu_blas, "the plugin loaded the emulator from %s", emu_dir);
        if (!emu || !emu_blas) return;
        stats = (emu_stats_t(*)(void))dlsym(emu, "emu_stats");
        blas_stats = (emu_cublas_stats(*)(void))dlsym(emu_blas, "emu_cublas_stats");
    }

    char cache[] = "/tmp/opc-emu-cache-XXXXXX";
    CHECK(mkdtemp(cache) != NULL, "mkdtemp");
    opc_create_options o = {.struct_size = sizeof o, .device = 0, .flags = OPC_CREATE_ALLOW_TF32, .cache_dir = cache};
    char why[2048];
    opc_context *c = NULL;
    int loads0 = stats ? stats().module_loads : 0;
    CHECK(t->create_with_options(&o, &c, why, sizeof why) == 0 && c, "create (cache miss): %s", why);
    if (blas_stats) CHECK(blas_stats().last_math_mode == 3, "TF32 requested: math mode %d", blas_stats().last_math_mode);
    t->destroy(c);
    char pattern[1200], entry[1200] = "";
    snprintf(pattern, sizeof pattern, "ls %s/cuda-kernels-nvrtc*-sm_90-*.cubin 2>/dev/null", cache);
    FILE *ls = popen(pattern, "r");
    if (ls) {
        if (fgets(entry, sizeof entry, ls)) entry[strcspn(entry, "\n")] = '\0';
        pclose(ls);
    }
    CHECK(entry[0] != '\0', "a cache entry was written in %s", cache);
    o.flags = 0;
    CHECK(t->create_with_options(&o, &c, why, sizeof why) == 0 && c, "create (cache hit): %s", why);
    if (blas_stats) CHECK(blas_stats().last_math_mode == 0, "no TF32: math mode %d", blas_stats().last_math_mode);
    t->destroy(c);
    if (stats) CHECK(stats().module_loads == loads0 + 2, "module loaded once per context (%d)", stats().module_loads - loads0);
    if (entry[0]) { /* corrupt: truncate to half, then garbage */
        FILE *f = fopen(entry, "r+b");
        if (f) {
            fseek(f, 100, SEEK_SET);
            fputs("garbage", f);
            fclose(f);
        }
        CHECK(t->create_with_options(&o, &c, why, sizeof why) == 0 && c, "create (corrupt cache): %s", why);
        t->destroy(c);
        FILE *g = fopen(entry, "rb");
        unsigned char magic[8] = {0};
        if (g) { fread(magic, 1, 8, g); fclose(g); }
        CHECK(memcmp(magic, "OPCCUBN1", 8) == 0, "corrupt entry rebuilt");
    }
    o.cache_dir = "";
    CHECK(t->create_with_options(&o, &c, why, sizeof why) == 0 && c, "create (no cache): %s", why);
    t->destroy(c);
    o.device = 1;
    c = (opc_context *)1;
    int rc = t->create_with_options(&o, &c, why, sizeof why);
    if (emu_dir) CHECK(rc == OPC_E_INVALID && c == NULL && strstr(why, "device 1"), "device 1 of 1: %d %s", rc, why);
    o.device = 1 << 20;
    c = (opc_context *)1;
    rc = t->create_with_options(&o, &c, why, sizeof why);
    CHECK(rc == OPC_E_INVALID && c == NULL, "device 2^20: %d %s", rc, why);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", cache);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", cache);

    int count = 0;
    CHECK(t->probe(&count, why, sizeof why) == 0 && count >= 1 && (!emu_dir || count == 1), "probe: %s", why);
    printf("  probe: %s\n", why);
    opc_device_info info = {.struct_size = sizeof info};
    if (emu_dir)
        CHECK(t->device_info(0, &info, why, sizeof why) == 0 && info.compute_major == 9 && info.multiprocessors == 4 &&
                  strstr(info.name, "emulator"), "device_info: %s", why);
    else
        CHECK(t->device_info(0, &info, why, sizeof why) == 0 && info.compute_major >= 5 && info.multiprocessors >= 1 &&
                  info.name[0] && info.total_memory_bytes > 0, "device_info: %s", why);
    printf("  device 0: %s, compute %d.%d, %d SMs, %.1f GiB\n", info.name, info.compute_major, info.compute_minor,
           info.multiprocessors, (double)info.total_memory_bytes / (1u << 30));
    /* A short struct (an older caller): only the fields that fit are written. */
    opc_device_info small;
    memset(&small, 0x5A, sizeof small);
    small.struct_size = (uint32_t)offsetof(opc_device_info, multiprocessors);
    CHECK(t->device_info(0, &small, why, sizeof why) == 0 && small.compute_major == info.compute_major &&
              small.compute_minor == info.compute_minor && small.multiprocessors == 0x5A5A5A5A,
          "device_info with a short struct");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: harness CUDA_PLUGIN CPU_PLUGIN EMULATOR_DIR\n");
        return 64;
    }
    const opc_plugin *tables[2];
    for (int i = 0; i < 2; i++) {
        void *h = dlopen(argv[1 + i], RTLD_NOW | RTLD_LOCAL);
        if (!h) { fprintf(stderr, "%s\n", dlerror()); return 66; }
        opc_plugin_entry_fn e = (opc_plugin_entry_fn)dlsym(h, OPC_PLUGIN_ENTRY_SYMBOL);
        tables[i] = e ? e(2) : NULL;
        if (!tables[i] && e) tables[i] = e(1);
        if (!tables[i]) { fprintf(stderr, "%s: no table\n", argv[1 + i]); return 66; }
    }
    gpu.t = tables[0];
    cpu.t = tables[1];
    char why[2048];
    opc_create_options no_cache = {.struct_size = sizeof no_cache, .cache_dir = ""}; /* leave ~/.cache alone */
    int rc = gpu.t->create_with_options(&no_cache, &gpu.ctx, why, sizeof why);
    if (rc) { printf("CUDA plugin: create failed: %s\n0 passed, 1 failed\n", why); return 1; }
    if (cpu.t->create(&cpu.ctx, 1)) { printf("CPU plugin: create failed\n0 passed, 1 failed\n"); return 1; }

    test_memory();
    test_gemm();
    test_elementwise_and_rows();
    test_losses();
    test_errors();

    typedef struct { int retains, streams, modules, module_loads; long allocations, launches; } stats_t;
    gpu.t->destroy(gpu.ctx);
    cpu.t->destroy(cpu.ctx);
    const char *emu_dir = strcmp(argv[3], "-") == 0 ? NULL : argv[3];
    test_contexts_and_cache(gpu.t, emu_dir);

    char lib[1024];
    snprintf(lib, sizeof lib, "%s/libcuda.so.1", emu_dir ? emu_dir : "/nonexistent");
    void *emu = emu_dir ? dlopen(lib, RTLD_NOW | RTLD_NOLOAD) : NULL;
    if (emu) {
        stats_t (*stats)(void) = (stats_t(*)(void))dlsym(emu, "emu_stats");
        stats_t s = stats();
        CHECK(s.retains == 0 && s.streams == 0 && s.modules == 0 && s.allocations == 0,
              "everything released: %d retains, %d streams, %d modules, %ld allocations", s.retains, s.streams,
              s.modules, s.allocations);
        printf("(%ld emulated kernel launches)\n", s.launches);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
