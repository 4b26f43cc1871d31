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

/* ---- ABI v3: transformer kernels, against double references (and the CPU plugin's, when it
   serves v3, against the same references) ------------------------------------------------ */

static int serves_v3(const plugin *p) { return p->t->abi_version >= 3 && p->t->struct_size >= OPC_PLUGIN_V3_SIZE; }

/* Each plugin that serves v3 (the CUDA one must). */
#define FOR_V3_PLUGINS(p)                                                            \
    for (int w_ = 1; w_ >= 0; w_--)                                                  \
        for (plugin *p = w_ ? &gpu : &cpu; p && (w_ || serves_v3(&cpu)); p = NULL)

static void compare_d(const char *what, const plugin *p, const double *want, const float *got, size_t n, double tol) {
    char label[160];
    snprintf(label, sizeof label, "%s (%s)", what, p->label);
    for (size_t i = 0; i < n; i++) {
        if (!(fabs(want[i] - (double)got[i]) <= tol * fmax(1.0, fabs(want[i])))) {
            CHECK(0, "%s[%zu]: want %.9g, got %.9g", label, i, want[i], (double)got[i]);
            return;
        }
    }
    CHECK(1, "%s", label);
}

static float *floats_of(const double *x, size_t n) {
    float *f = malloc((n ? n : 1) * sizeof *f);
    for (size_t i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}

/* Device copy of host[0..bytes) at byte offset 4 of a fresh allocation (only 4-byte
   aligned, as a sliced pointer would be); returns the allocation (the data is at + 4). */
static char *upload4(plugin *p, const void *host, size_t bytes) {
    char *d = upload(p, NULL, bytes + 4);
    if (bytes && host) {
        int rc = p->t->upload(p->ctx, d + 4, host, bytes);
        CHECK(rc == 0, "%s upload: %s", p->label, p->t->last_error(p->ctx));
    }
    return d;
}

static void test_embedding(void) {
    static const int shapes[][3] = {{50, 11, 37}, {1, 1, 1}, {300, 7, 260}, {5, 3, 0}}; /* tokens, vocab, dim */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int tokens = shapes[s][0], vocab = shapes[s][1], dim = shapes[s][2];
        size_t nt = (size_t)vocab * dim, no = (size_t)tokens * dim;
        float *table = randoms(nt + 1), *dout = randoms(no + 1), *dtable0 = randoms(nt + 1);
        int32_t *ids = malloc((tokens + 1) * sizeof *ids);
        for (int t = 0; t < tokens; t++) ids[t] = (int32_t)((t * 5 + t / 3) % vocab); /* repeats */
        double *want_out = calloc(no + 1, sizeof *want_out), *want_dt = calloc(nt + 1, sizeof *want_dt);
        float *acc = malloc((nt + 1) * sizeof *acc); /* f32 in token order: what the ABI fixes */
        memcpy(acc, dtable0, (nt + 1) * sizeof *acc);
        for (int t = 0; t < tokens; t++)
            for (int j = 0; j < dim; j++) {
                want_out[(size_t)t * dim + j] = table[(size_t)ids[t] * dim + j];
                acc[(size_t)ids[t] * dim + j] += dout[(size_t)t * dim + j];
            }
        for (size_t i = 0; i < nt; i++) want_dt[i] = acc[i];
        char what[96];
        FOR_V3_PLUGINS(p) {
            char *dt = upload4(p, table, nt * 4), *di = upload(p, ids, tokens * 4 + 4), *dd = upload4(p, dout, no * 4);
            char *dg = upload(p, dtable0, nt * 4 + 4), *dob = upload(p, NULL, no * 4 + 4);
            /* offset pointers (4-byte aligned only) */
            int rc = p->t->embedding_forward(p->ctx, tokens, vocab, dim, dt + 4, di, dob + 4);
            CHECK(rc == 0, "%s embedding_forward: %s", p->label, p->t->last_error(p->ctx));
            float *got = malloc(no * 4 + 4);
            download(p, got, dob + 4, no * 4);
            snprintf(what, sizeof what, "embedding_forward tokens=%d vocab=%d dim=%d", tokens, vocab, dim);
            compare_d(what, p, want_out, got, no, 0);
            rc = p->t->embedding_backward(p->ctx, tokens, vocab, dim, di, dd + 4, dg);
            CHECK(rc == 0, "%s embedding_backward: %s", p->label, p->t->last_error(p->ctx));
            float *gt = malloc(nt * 4 + 4);
            download(p, gt, dg, nt * 4);
            snprintf(what, sizeof what, "embedding_backward tokens=%d vocab=%d dim=%d", tokens, vocab, dim);
            compare_d(what, p, want_dt, gt, nt, 0); /* exact: the same f32 additions in the same order */
            /* A bad id (last, then negative): OPC_E_INVALID, nothing written, the token named. */
            for (int variant = 0; variant < 2 && dim > 0; variant++) {
                int32_t saved = ids[tokens - 1];
                ids[tokens - 1] = variant ? -1 : vocab;
                p->t->upload(p->ctx, di, ids, tokens * 4);
                float *before = malloc(no * 4 + 4), *after = malloc(no * 4 + 4);
                download(p, before, dob + 4, no * 4);
                rc = p->t->embedding_forward(p->ctx, tokens, vocab, dim, dt + 4, di, dob + 4);
                char message[512];
                snprintf(message, sizeof message, "%s", p->t->last_error(p->ctx)); /* before the next call clears it */
                download(p, after, dob + 4, no * 4);
                CHECK(rc == OPC_E_INVALID && memcmp(before, after, no * 4) == 0 && strstr(message, "token"),
                      "%s embedding_forward bad id %d: rc %d, %s", p->label, ids[tokens - 1], rc, message);
                if (s == 0 && variant == 0) printf("  %s: %s\n", p->label, message);
                free(before);
                free(after);
                before = malloc(nt * 4 + 4);
                after = malloc(nt * 4 + 4);
                download(p, before, dg, nt * 4);
                rc = p->t->embedding_backward(p->ctx, tokens, vocab, dim, di, dd + 4, dg);
                download(p, after, dg, nt * 4);
                CHECK(rc == OPC_E_INVALID && memcmp(before, after, nt * 4) == 0,
                      "%s embedding_backward bad id: rc %d, %s", p->label, rc, p->t->last_error(p->ctx));
                free(before);
                free(after);
                ids[tokens - 1] = saved;
                p->t->upload(p->ctx, di, ids, tokens * 4);
            }
            free(got);
            free(gt);
            release(p, dt);
            release(p, di);
            release(p, dd);
            release(p, dg);
            release(p, dob);
        }
        free(table);
        free(dout);
        free(dtable0);
        free(ids);
        free(want_out);
        free(want_dt);
        free(acc);
    }
}

static void test_rmsnorm(void) {
    static const int shapes[][2] = {{1, 1}, {5, 37}, {300, 64}, {3000, 3}, {2, 700}, {4, 0}};
    const float eps = 1e-5f;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], dim = shapes[s][1];
        size_t n = (size_t)rows * dim;
        float *x = randoms(n + 1), *wt = randoms(dim + 1), *dy = randoms(n + 1), *dw0 = randoms(dim + 1);
        float *rstd = malloc((rows + 1) * sizeof *rstd);
        double *want_y = calloc(n + 1, 8), *want_r = calloc(rows + 1, 8), *want_dx = calloc(n + 1, 8),
               *want_dw = calloc(dim + 1, 8);
        for (int j = 0; j < dim; j++) want_dw[j] = dw0[j];
        for (int i = 0; i < rows && dim > 0; i++) {
            const float *xr = x + (size_t)i * dim;
            double ss = 0;
            for (int j = 0; j < dim; j++) ss += (double)xr[j] * xr[j];
            rstd[i] = (float)(1.0 / sqrt(ss / dim + (double)eps));
            want_r[i] = rstd[i];
            double m = 0;
            for (int j = 0; j < dim; j++) {
                want_y[(size_t)i * dim + j] = (double)wt[j] * ((double)xr[j] * rstd[i]);
                m += (double)wt[j] * dy[(size_t)i * dim + j] * xr[j];
            }
            m /= dim;
            double r = rstd[i];
            for (int j = 0; j < dim; j++) {
                double g = (double)wt[j] * dy[(size_t)i * dim + j];
                want_dx[(size_t)i * dim + j] = r * (g - xr[j] * r * r * m);
                want_dw[j] += (double)dy[(size_t)i * dim + j] * xr[j] * r;
            }
        }
        char what[96];
        FOR_V3_PLUGINS(p) {
            for (int alias = 0; alias < 2; alias++) {
                char *dx_ = alias ? upload4(p, x, n * 4) : upload(p, x, n * 4 + 4), *dw_ = upload(p, wt, dim * 4 + 4), *dyb = upload(p, NULL, n * 4 + 4);
                char *dr = upload(p, NULL, rows * 4 + 4);
                char *y = alias ? dx_ : dyb;
                int rc = p->t->rmsnorm_forward(p->ctx, rows, dim, eps, dx_ + 4 * alias, dw_, y + 4 * alias, alias ? NULL : dr);
                CHECK(rc == 0, "%s rmsnorm_forward: %s", p->label, p->t->last_error(p->ctx));
                float *got = malloc(n * 4 + 4), *gr = malloc(rows * 4 + 4);
                download(p, got, y + 4 * alias, n * 4);
                snprintf(what, sizeof what, "rmsnorm_forward rows=%d dim=%d%s", rows, dim, alias ? " in place" : "");
                compare_d(what, p, want_y, got, n, 1e-6);
                if (!alias) {
                    download(p, gr, dr, rows * 4);
                    if (dim > 0) compare_d("rmsnorm_forward rstd", p, want_r, gr, rows, 1e-7);
                }
                release(p, dx_);
                release(p, dw_);
                release(p, dyb);
                release(p, dr);
                free(got);
                free(gr);
                /* backward: dx separate with dw, or in place on dy without dw */
                char *bx = upload(p, x, n * 4), *bw = upload(p, wt, dim * 4 + 4), *br = upload(p, rstd, rows * 4 + 4);
                char *bdy = upload(p, dy, n * 4 + 4), *bdx = upload(p, NULL, n * 4 + 4), *bdw = upload(p, dw0, dim * 4 + 4);
                char *out = alias ? bdy : bdx;
                rc = p->t->rmsnorm_backward(p->ctx, rows, dim, bx, bw, br, bdy, out, alias ? NULL : bdw);
                CHECK(rc == 0, "%s rmsnorm_backward: %s", p->label, p->t->last_error(p->ctx));
                float *gdx = malloc(n * 4 + 4), *gdw = malloc(dim * 4 + 4);
                download(p, gdx, out, n * 4);
                download(p, gdw, bdw, dim * 4);
                snprintf(what, sizeof what, "rmsnorm_backward dx rows=%d dim=%d%s", rows, dim, alias ? " in place" : "");
                compare_d(what, p, want_dx, gdx, n, 1e-5);
                snprintf(what, sizeof what, "rmsnorm_backward dw rows=%d dim=%d%s", rows, dim, alias ? " (NULL)" : "");
                if (alias) {
                    double *unchanged = malloc((dim + 1) * 8);
                    for (int j = 0; j < dim; j++) unchanged[j] = dw0[j];
                    compare_d(what, p, unchanged, gdw, dim, 0);
                    free(unchanged);
                } else compare_d(what, p, want_dw, gdw, dim, 1e-5);
                free(gdx);
                free(gdw);
                release(p, bx);
                release(p, bw);
                release(p, br);
                release(p, bdy);
                release(p, bdx);
                release(p, bdw);
            }
        }
        free(x);
        free(wt);
        free(dy);
        free(dw0);
        free(rstd);
        free(want_y);
        free(want_r);
        free(want_dx);
        free(want_dw);
    }
}

static void test_rope(void) {
    static const int shapes[][3] = {{6, 3, 8}, {1, 1, 2}, {40, 4, 130}}; /* rows, heads, head_dim */
    const int table_rows = 50;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], heads = shapes[s][1], hd = shapes[s][2], half = hd / 2;
        size_t n = (size_t)rows * heads * hd;
        float *x = randoms(n), *cs = malloc(table_rows * half * 4), *sn = malloc(table_rows * half * 4);
        for (int p = 0; p < table_rows; p++)
            for (int i = 0; i < half; i++) {
                double a = p * pow(10000.0, -2.0 * i / hd);
                cs[p * half + i] = (float)cos(a);
                sn[p * half + i] = (float)sin(a);
            }
        int32_t *pos = malloc(rows * 4);
        for (int r = 0; r < rows; r++) pos[r] = (r * 7 + 3) % table_rows;
        double *want = malloc(n * 8);
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < half; i++) {
                    size_t at = ((size_t)r * heads + h) * hd;
                    float c = cs[pos[r] * half + i], sv = sn[pos[r] * half + i];
                    want[at + i] = (double)x[at + i] * c - (double)x[at + i + half] * sv;
                    want[at + i + half] = (double)x[at + i + half] * c + (double)x[at + i] * sv;
                }
        double *orig = malloc(n * 8);
        for (size_t i = 0; i < n; i++) orig[i] = x[i];
        FOR_V3_PLUGINS(p) {
            char *dx = upload4(p, x, n * 4), *dp = upload(p, pos, rows * 4), *dc = upload(p, cs, table_rows * half * 4),
                 *ds = upload(p, sn, table_rows * half * 4);
            int rc = p->t->rope(p->ctx, rows, heads, hd, dx + 4, dp, table_rows, dc, ds, 0);
            CHECK(rc == 0, "%s rope: %s", p->label, p->t->last_error(p->ctx));
            float *got = malloc(n * 4);
            download(p, got, dx + 4, n * 4);
            compare_d("rope", p, want, got, n, 1e-6);
            rc = p->t->rope(p->ctx, rows, heads, hd, dx + 4, dp, table_rows, dc, ds, 1);
            download(p, got, dx + 4, n * 4);
            CHECK(rc == 0, "%s rope inverse: %s", p->label, p->t->last_error(p->ctx));
            compare_d("rope then inverse", p, orig, got, n, 1e-6);
            /* a position past the table: invalid, x untouched, the row named */
            pos[rows - 1] = table_rows;
            p->t->upload(p->ctx, dp, pos, rows * 4);
            rc = p->t->rope(p->ctx, rows, heads, hd, dx + 4, dp, table_rows, dc, ds, 0);
            char message[512];
            snprintf(message, sizeof message, "%s", p->t->last_error(p->ctx));
            float *after = malloc(n * 4);
            download(p, after, dx + 4, n * 4);
            CHECK(rc == OPC_E_INVALID && memcmp(after, got, n * 4) == 0 && strstr(message, "row"),
                  "%s rope bad position: rc %d %s", p->label, rc, message);
            pos[rows - 1] = (rows * 7 - 4) % table_rows;
            rc = p->t->rope(p->ctx, rows, heads, 3, dx + 4, dp, table_rows, dc, ds, 0);
            CHECK(rc == OPC_E_INVALID, "%s rope odd head_dim: rc %d", p->label, rc);
            free(got);
            free(after);
            release(p, dx);
            release(p, dp);
            release(p, dc);
            release(p, ds);
        }
        free(x);
        free(cs);
        free(sn);
        free(pos);
        free(want);
        free(orig);
    }
}

/* Double forward of causal GQA attention: probs and out (the ABI's formulas). */
static void attention_reference(int B, int T, int H, int KV, int D, double scale, const double *q, const double *k,
                                const double *v, double *probs, double *out) {
    int group = H / KV;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double *pr = probs + (((size_t)b * H + h) * T + i) * T, mx = -INFINITY, sum = 0;
                const double *qi = q + ((size_t)b * T + i) * H * D + (size_t)h * D;
                for (int j = 0; j < T; j++) {
                    pr[j] = 0;
                    if (j > i) continue;
                    const double *kj = k + ((size_t)b * T + j) * KV * D + (size_t)(h / group) * D;
                    double dot = 0;
                    for (int d = 0; d < D; d++) dot += qi[d] * kj[d];
                    pr[j] = scale * dot;
                    if (pr[j] > mx) mx = pr[j];
                }
                for (int j = 0; j <= i; j++) sum += exp(pr[j] - mx);
                for (int j = 0; j <= i; j++) pr[j] = exp(pr[j] - mx) / sum;
                double *oi = out + ((size_t)b * T + i) * H * D + (size_t)h * D;
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += pr[j] * v[((size_t)b * T + j) * KV * D + (size_t)(h / group) * D + d];
                    oi[d] = acc;
                }
            }
}

static void attention_backward_reference(int B, int T, int H, int KV, int D, double scale, const double *q,
                                         const double *k, const double *v, const double *probs, const double *dout,
                                         double *dq, double *dk, double *dv) {
    int group = H / KV;
    size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D;
    memset(dq, 0, nq * 8);
    memset(dk, 0, nk * 8);
    memset(dv, 0, nk * 8);
    double *dp = malloc((size_t)T * 8);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *pr = probs + (((size_t)b * H + h) * T + i) * T;
                size_t qa = ((size_t)b * T + i) * H * D + (size_t)h * D;
                double rowsum = 0;
                for (int j = 0; j <= i; j++) {
                    size_t ka = ((size_t)b * T + j) * KV * D + (size_t)(h / group) * D;
                    dp[j] = 0;
                    for (int d = 0; d < D; d++) dp[j] += dout[qa + d] * v[ka + d];
                    rowsum += dp[j] * pr[j];
                }
                for (int j = 0; j <= i; j++) {
                    size_t ka = ((size_t)b * T + j) * KV * D + (size_t)(h / group) * D;
                    double ds = pr[j] * (dp[j] - rowsum);
                    for (int d = 0; d < D; d++) {
                        dq[qa + d] += scale * ds * k[ka + d];
                        dk[ka + d] += scale * ds * q[qa + d];
                        dv[ka + d] += pr[j] * dout[qa + d];
                    }
                }
            }
    free(dp);
}

static void test_attention(void) {
    static const int shapes[][5] = {{2, 7, 4, 2, 8}, {1, 1, 1, 1, 1}, {1, 300, 2, 1, 5}, {2, 5, 3, 3, 6},
                                    {1, 3, 2, 2, 260}}; /* batch, seq, heads, kv_heads, head_dim */
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], KV = shapes[s][3], D = shapes[s][4];
        double scale = D ? 1.0 / sqrt((double)D) : 1.0;
        size_t nq = (size_t)B * T * H * D, nk = (size_t)B * T * KV * D, np = (size_t)B * H * T * T;
        float *q = randoms(nq), *k = randoms(nk), *v = randoms(nk), *dout = randoms(nq);
        for (size_t i = 0; i < nq; i++) q[i] *= 3.0f; /* peaked softmax rows too */
        double *qd = malloc(nq * 8 + 8), *kd = malloc(nk * 8 + 8), *vd = malloc(nk * 8 + 8), *dod = malloc(nq * 8 + 8);
        for (size_t i = 0; i < nq; i++) { qd[i] = q[i]; dod[i] = dout[i]; }
        for (size_t i = 0; i < nk; i++) { kd[i] = k[i]; vd[i] = v[i]; }
        double *probs = malloc(np * 8), *out = malloc(nq * 8 + 8);
        attention_reference(B, T, H, KV, D, (double)(float)scale, qd, kd, vd, probs, out);
        /* The backward's input probs: the reference's, rounded (the same for every plugin). */
        float *probs_f = floats_of(probs, np);
        double *probs_r = malloc(np * 8);
        for (size_t i = 0; i < np; i++) probs_r[i] = probs_f[i];
        double *dq = malloc(nq * 8 + 8), *dk = malloc(nk * 8 + 8), *dv = malloc(nk * 8 + 8);
        attention_backward_reference(B, T, H, KV, D, (double)(float)scale, qd, kd, vd, probs_r, dod, dq, dk, dv);
        if (s == 0) {
            /* The backward formulas are the forward's gradient: a directional derivative of
               L = sum(out * dout) by central differences in double. */
            double h = 1e-6, lp = 0, lm = 0, analytic = 0;
            double *qp = malloc(nq * 8), *kp = malloc(nk * 8), *vp = malloc(nk * 8), *o2 = malloc(nq * 8), *p2 = malloc(np * 8);
            double *dirq = malloc(nq * 8), *dirk = malloc(nk * 8), *dirv = malloc(nk * 8);
            for (size_t i = 0; i < nq; i++) dirq[i] = frand();
            for (size_t i = 0; i < nk; i++) { dirk[i] = frand(); dirv[i] = frand(); }
            double *dq2 = malloc(nq * 8), *dk2 = malloc(nk * 8), *dv2 = malloc(nk * 8);
            attention_backward_reference(B, T, H, KV, D, scale, qd, kd, vd, probs, dod, dq2, dk2, dv2);
            for (int sign = -1; sign <= 1; sign += 2) {
                for (size_t i = 0; i < nq; i++) qp[i] = qd[i] + sign * h * dirq[i];
                for (size_t i = 0; i < nk; i++) { kp[i] = kd[i] + sign * h * dirk[i]; vp[i] = vd[i] + sign * h * dirv[i]; }
                attention_reference(B, T, H, KV, D, scale, qp, kp, vp, p2, o2);
                double l = 0;
                for (size_t i = 0; i < nq; i++) l += o2[i] * dod[i];
                if (sign < 0) lm = l; else lp = l;
            }
            for (size_t i = 0; i < nq; i++) analytic += dq2[i] * dirq[i];
            for (size_t i = 0; i < nk; i++) analytic += dk2[i] * dirk[i] + dv2[i] * dirv[i];
            double numeric = (lp - lm) / (2 * h);
            CHECK(fabs(numeric - analytic) <= 1e-6 * fmax(1.0, fabs(analytic)),
                  "attention reference gradient: numeric %.12g, analytic %.12g", numeric, analytic);
            free(qp); free(kp); free(vp); free(o2); free(p2); free(dirq); free(dirk); free(dirv);
            free(dq2); free(dk2); free(dv2);
        }
        char what[128];
        FOR_V3_PLUGINS(p) {
            size_t most = np > nq ? np : nq;
            most = most > nk ? most : nk;
            float *nan_fill = malloc(most * 4 + 4);
            for (size_t i = 0; i <= most; i++) nan_fill[i] = NAN; /* every element of the outputs is written */
            char *bq = upload4(p, q, nq * 4), *bk = upload4(p, k, nk * 4), *bv = upload4(p, v, nk * 4);
            char *bp = upload4(p, nan_fill, np * 4), *bo = upload(p, NULL, nq * 4 + 4);
            int rc = p->t->attention_forward(p->ctx, B, T, H, KV, D, (float)scale, bq + 4, bk + 4, bv + 4, bp + 4, bo + 4);
            CHECK(rc == 0, "%s attention_forward: %s", p->label, p->t->last_error(p->ctx));
            float *gp = malloc(np * 4 + 4), *go = malloc(nq * 4 + 4);
            download(p, gp, bp + 4, np * 4);
            download(p, go, bo + 4, nq * 4);
            snprintf(what, sizeof what, "attention_forward probs B=%d T=%d H=%d KV=%d D=%d", B, T, H, KV, D);
            compare_d(what, p, probs, gp, np, 1e-6);
            snprintf(what, sizeof what, "attention_forward out B=%d T=%d H=%d KV=%d D=%d", B, T, H, KV, D);
            compare_d(what, p, out, go, nq, 1e-5);
            /* backward from the rounded reference probs; gradients filled with garbage first */
            p->t->upload(p->ctx, bp + 4, probs_f, np * 4);
            char *bdo = upload4(p, dout, nq * 4), *bdq = upload4(p, nan_fill, nq * 4),
                 *bdk = upload4(p, nan_fill, nk * 4), *bdv = upload4(p, nan_fill, nk * 4);
            float *gdq = malloc(nq * 4 + 4), *gdk = malloc(nk * 4 + 4), *gdv = malloc(nk * 4 + 4);
            for (int again = 0; again < 2; again++) {
                rc = p->t->attention_backward(p->ctx, B, T, H, KV, D, (float)scale, bq + 4, bk + 4, bv + 4, bp + 4,
                                              bdo + 4, bdq + 4, bdk + 4, bdv + 4);
                CHECK(rc == 0, "%s attention_backward: %s", p->label, p->t->last_error(p->ctx));
                float *pq = again ? malloc(nq * 4 + 4) : gdq, *pk = again ? malloc(nk * 4 + 4) : gdk,
                      *pv = again ? malloc(nk * 4 + 4) : gdv;
                download(p, pq, bdq + 4, nq * 4);
                download(p, pk, bdk + 4, nk * 4);
                download(p, pv, bdv + 4, nk * 4);
                if (again) {
                    CHECK(memcmp(pq, gdq, nq * 4) == 0 && memcmp(pk, gdk, nk * 4) == 0 && memcmp(pv, gdv, nk * 4) == 0,
                          "%s attention_backward is deterministic (B=%d T=%d)", p->label, B, T);
                    free(pq);
                    free(pk);
                    free(pv);
                }
            }
            snprintf(what, sizeof what, "attention_backward dq B=%d T=%d H=%d KV=%d D=%d", B, T, H, KV, D);
            compare_d(what, p, dq, gdq, nq, 1e-5);
            snprintf(what, sizeof what, "attention_backward dk B=%d T=%d H=%d KV=%d D=%d", B, T, H, KV, D);
            compare_d(what, p, dk, gdk, nk, 1e-5);
            snprintf(what, sizeof what, "attention_backward dv B=%d T=%d H=%d KV=%d D=%d", B, T, H, KV, D);
            compare_d(what, p, dv, gdv, nk, 1e-5);
            rc = p->t->attention_forward(p->ctx, B, T, 3, 2, D, 1.0f, bq, bk, bv, bp, bo);
            CHECK(rc == OPC_E_INVALID, "%s attention heads=3 kv_heads=2: rc %d", p->label, rc);
            rc = p->t->attention_backward(p->ctx, B, -1, H, KV, D, 1.0f, bq, bk, bv, bp, bdo, bdq, bdk, bdv);
            CHECK(rc == OPC_E_INVALID, "%s attention_backward seq=-1: rc %d", p->label, rc);
            free(gp); free(go); free(gdq); free(gdk); free(gdv); free(nan_fill);
            release(p, bq); release(p, bk); release(p, bv); release(p, bp); release(p, bo);
            release(p, bdo); release(p, bdq); release(p, bdk); release(p, bdv);
        }
        free(q); free(k); free(v); free(dout); free(qd); free(kd); free(vd); free(dod);
        free(probs); free(out); free(probs_f); free(probs_r); free(dq); free(dk); free(dv);
    }
}

static void test_silu_gate(void) {
    const size_t n = 1001;
    float *g = randoms(n), *u = randoms(n), *dh = randoms(n);
    for (size_t i = 0; i < n; i++) g[i] *= 12.0f;
    g[0] = 100.0f;
    g[1] = -100.0f;
    g[2] = 0.0f;
    double *want_h = malloc(n * 8), *want_dg = malloc(n * 8), *want_du = malloc(n * 8);
    for (size_t i = 0; i < n; i++) {
        double sig = 1.0 / (1.0 + exp(-(double)g[i]));
        want_h[i] = g[i] * sig * u[i];
        want_dg[i] = (double)dh[i] * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
        want_du[i] = (double)dh[i] * g[i] * sig;
    }
    FOR_V3_PLUGINS(p) {
        for (int alias = 0; alias < 2; alias++) {
            char *bg = upload4(p, g, n * 4), *bu = upload4(p, u, n * 4), *bdh = upload4(p, dh, n * 4),
                 *bh = upload(p, NULL, n * 4 + 4);
            float *got = malloc(n * 4);
            /* forward: h separate, or in place on u */
            char *h = alias ? bu : bh;
            int rc = p->t->silu_gate_forward(p->ctx, n, bg + 4, bu + 4, h + 4);
            CHECK(rc == 0, "%s silu_gate_forward: %s", p->label, p->t->last_error(p->ctx));
            download(p, got, h + 4, n * 4);
            compare_d(alias ? "silu_gate_forward in place" : "silu_gate_forward", p, want_h, got, n, 1e-6);
            p->t->upload(p->ctx, bu + 4, u, n * 4);
            /* backward: separate outputs, or dg on g and du on u */
            char *dg = alias ? bg : bh, *du = alias ? bu : bdh;
            char *du_buf = alias ? NULL : upload(p, NULL, n * 4 + 4);
            if (!alias) du = du_buf;
            rc = p->t->silu_gate_backward(p->ctx, n, bg + 4, bu + 4, bdh + 4, dg + 4, du + 4);
            CHECK(rc == 0, "%s silu_gate_backward: %s", p->label, p->t->last_error(p->ctx));
            download(p, got, dg + 4, n * 4);
            compare_d(alias ? "silu_gate_backward dg in place" : "silu_gate_backward dg", p, want_dg, got, n, 1e-6);
            download(p, got, du + 4, n * 4);
            compare_d(alias ? "silu_gate_backward du in place" : "silu_gate_backward du", p, want_du, got, n, 1e-6);
            free(got);
            release(p, bg); release(p, bu); release(p, bdh); release(p, bh);
            if (du_buf) release(p, du_buf);
        }
    }
    free(g); free(u); free(dh); free(want_h); free(want_dg); free(want_du);
}

static void test_token_xent(void) {
    static const int shapes[][2] = {{1, 1}, {37, 50}, {9, 200}, {300, 10}, {4, 3}};
    const int64_t ignore = -100;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], classes = shapes[s][1];
        size_t n = (size_t)rows * classes;
        float *logits = randoms(n);
        for (size_t i = 0; i < n; i++) logits[i] *= 5.0f;
        int64_t *labels = malloc(rows * 8);
        int counted = 0;
        for (int i = 0; i < rows; i++) {
            labels[i] = (i % 4 == 1 || s == 4) ? ignore : (int64_t)((i * 7 + 3) % classes); /* shape 4: all ignored */
            counted += labels[i] != ignore;
        }
        float scale = 1.0f / (float)(counted + 3);
        double *want = malloc(n * 8), loss = 0;
        for (int i = 0; i < rows; i++) {
            const float *x = logits + (size_t)i * classes;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < classes; j++) mx = fmax(mx, x[j]);
            for (int j = 0; j < classes; j++) sum += exp(x[j] - mx);
            double lse = mx + log(sum);
            for (int j = 0; j < classes; j++) {
                double d = labels[i] == ignore ? 0 : (exp(x[j] - lse) - (j == labels[i])) * scale;
                want[(size_t)i * classes + j] = d;
            }
            if (labels[i] != ignore) loss += lse - x[labels[i]];
        }
        FOR_V3_PLUGINS(p) {
            for (int in_place = 0; in_place < 2; in_place++) {
                char *bl = upload4(p, logits, n * 4), *by = upload(p, labels, rows * 8);
                float *garbage = malloc(n * 4 + 4);
                for (size_t i = 0; i <= n; i++) garbage[i] = 7.0f; /* ignored rows must be zeroed */
                char *bd = in_place ? bl : upload4(p, garbage, n * 4);
                double got_loss = -1;
                int64_t got_count = -1;
                int rc = p->t->token_xent(p->ctx, rows, classes, bl + 4, by, ignore, scale, bd + 4, &got_loss, &got_count);
                CHECK(rc == 0, "%s token_xent: %s", p->label, p->t->last_error(p->ctx));
                float *got = malloc(n * 4 + 4);
                download(p, got, bd + 4, n * 4);
                char what[96];
                snprintf(what, sizeof what, "token_xent rows=%d classes=%d%s", rows, classes, in_place ? " in place" : "");
                compare_d(what, p, want, got, n, 1e-6);
                CHECK(fabs(got_loss - loss) <= 1e-6 * fmax(1.0, loss) && got_count == counted,
                      "%s %s: loss %.12g (want %.12g), count %lld (want %d)", p->label, what, got_loss, loss,
                      (long long)got_count, counted);
                CHECK(p->t->token_xent(p->ctx, rows, classes, bl + 4, by, ignore, scale, bd + 4, NULL, NULL) == 0,
                      "%s token_xent with NULL outputs", p->label);
                if (!in_place) {
                    /* a bad label: invalid, nothing written */
                    int64_t saved = labels[rows - 1];
                    labels[rows - 1] = classes;
                    p->t->upload(p->ctx, by, labels, rows * 8);
                    p->t->upload(p->ctx, bd + 4, garbage, n * 4);
                    got_loss = -1;
                    rc = p->t->token_xent(p->ctx, rows, classes, bl + 4, by, ignore, scale, bd + 4, &got_loss, NULL);
                    char message[512];
                    snprintf(message, sizeof message, "%s", p->t->last_error(p->ctx));
                    download(p, got, bd + 4, n * 4);
                    CHECK(rc == OPC_E_INVALID && got_loss == -1 && memcmp(got, garbage, n * 4) == 0 && strstr(message, "row"),
                          "%s token_xent bad label: rc %d %s", p->label, rc, message);
                    labels[rows - 1] = saved;
                    release(p, bd);
                }
                free(got);
                free(garbage);
                release(p, bl);
                release(p, by);
            }
        }
        free(logits);
        free(labels);
        free(want);
    }
}

/* Zero sizes succeed with NULL pointers; negative sizes are invalid. */
static void test_v3_edges(void) {
    FOR_V3_PLUGINS(p) {
        const opc_plugin *t = p->t;
        opc_context *c = p->ctx;
        double loss = -1;
        int64_t count = -1;
        CHECK(t->embedding_forward(c, 0, 5, 4, NULL, NULL, NULL) == 0 && t->embedding_backward(c, 0, 5, 4, NULL, NULL, NULL) == 0 &&
                  t->rmsnorm_forward(c, 0, 4, 1e-5f, NULL, NULL, NULL, NULL) == 0 &&
                  t->rmsnorm_backward(c, 0, 4, NULL, NULL, NULL, NULL, NULL, NULL) == 0 &&
                  t->rope(c, 0, 2, 4, NULL, NULL, 3, NULL, NULL, 0) == 0 &&
                  t->attention_forward(c, 0, 4, 2, 1, 4, 1, NULL, NULL, NULL, NULL, NULL) == 0 &&
                  t->attention_backward(c, 2, 0, 2, 1, 4, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) == 0 &&
                  t->attention_forward(c, 1, 4, 2, 1, 0, 1, NULL, NULL, NULL, NULL, NULL) == 0 && /* head_dim 0 */
                  t->silu_gate_forward(c, 0, NULL, NULL, NULL) == 0 && t->silu_gate_backward(c, 0, NULL, NULL, NULL, NULL, NULL) == 0 &&
                  t->token_xent(c, 0, 5, NULL, NULL, -100, 1, NULL, &loss, &count) == 0 && loss == 0 && count == 0,
              "%s v3 zero sizes", p->label);
        void *d = upload(p, NULL, 256);
        int rc[9], i = 0;
        rc[i++] = t->embedding_forward(c, -1, 5, 4, d, d, d);
        rc[i++] = t->embedding_backward(c, 2, 5, -4, d, d, d);
        rc[i++] = t->rmsnorm_forward(c, 2, -4, 1e-5f, d, d, d, d);
        rc[i++] = t->rmsnorm_backward(c, -2, 4, d, d, d, d, d, d);
        rc[i++] = t->rope(c, 2, -1, 4, d, d, 3, d, d, 0);
        rc[i++] = t->attention_forward(c, 1, 2, 2, 0, 4, 1, d, d, d, d, d);
        rc[i++] = t->token_xent(c, -1, 5, d, d, -100, 1, d, NULL, NULL);
        rc[i++] = t->embedding_forward(c, 2, 5, 4, d, NULL, d);
        rc[i++] = t->token_xent(c, 2, 0, d, d, -100, 1, d, NULL, NULL);
        for (int j = 0; j < i; j++) CHECK(rc[j] == OPC_E_INVALID, "%s v3 error case %d: rc %d", p->label, j, rc[j]);
        release(p, d);
    }
}

static void test_v3(void) {
    CHECK(serves_v3(&gpu), "the CUDA plugin serves ABI v3 (abi_version %u)", gpu.t->abi_version);
    if (!serves_v3(&gpu)) return;
    if (!serves_v3(&cpu)) printf("  (the CPU plugin serves v%u: v3 checked against the references only)\n", cpu.t->abi_version);
    test_embedding();
    test_rmsnorm();
    test_rope();
    test_attention();
    test_silu_gate();
    test_token_xent();
    test_v3_edges();
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
        tables[i] = NULL;
        for (uint32_t v = OPC_PLUGIN_ABI_VERSION; e && v >= 1 && !tables[i]; v--) tables[i] = e(v);
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
    test_v3();

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
