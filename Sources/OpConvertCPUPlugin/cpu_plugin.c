/*
 * opconvert CPU kernel plugin: opc_plugin ABI versions 1, 2 and 3 (see opc_plugin.h) on OpenBLAS.
 * The v3 transformer kernels are in cpu_transformer.c.
 *
 * Device memory is host memory (64-byte aligned). gemm goes to cblas_sgemm (OpenBLAS
 * threads live only there); everything else is a plain, vectorizable single-threaded
 * loop with a fixed evaluation order, so results are deterministic for a given thread
 * count. Only opc_plugin_entry is exported; everything else is static.
 */
#include "opc_cpu_plugin.h"
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Declared by OpenBLAS's cblas.h; repeated here in case another cblas.h is found. */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char *openblas_get_config(void);

/* Everything defined below is internal; only opc_plugin_entry (declared with default
 * visibility in opc_cpu_plugin.h) is exported. After the system and
 * OpenBLAS declarations, which must keep their own visibility. */
#pragma GCC visibility push(hidden)

struct opc_context {
    int num_threads;
    char error[512];
};

static int fail(opc_context *ctx, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(opc_context *ctx, int code, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int ok(opc_context *ctx) {
    ctx->error[0] = '\0';
    return OPC_OK;
}

/* fail and ok for the plugin's other C files. */
int opc_cpu_fail(opc_context *ctx, int code, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return code;
}

int opc_cpu_ok(opc_context *ctx) { return ok(ctx); }

int opc_cpu_threads(opc_context *ctx) {
    int n = ctx->num_threads > 0 ? ctx->num_threads : openblas_get_num_threads();
    return n > 0 ? n : 1;
}

#define CHECK_CTX(ctx) do { if (!(ctx)) return OPC_E_INVALID; } while (0)
#define REQUIRE(ctx, cond, ...) do { if (!(cond)) return fail((ctx), OPC_E_INVALID, __VA_ARGS__); } while (0)
/* A pointer argument must be non-NULL when the call has something to do. */
#define REQUIRE_PTR(ctx, fn, p, needed) REQUIRE(ctx, !(needed) || (p) != NULL, "%s: %s is NULL", fn, #p)

/* ---- context ----------------------------------------------------------------------- */

static int cpu_create(opc_context **out, int num_threads) {
    if (!out) return OPC_E_INVALID;
    *out = NULL;
    opc_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return OPC_E_NOMEM;
    ctx->num_threads = num_threads;
    if (num_threads > 0) openblas_set_num_threads(num_threads);
    *out = ctx;
    return OPC_OK;
}

static void cpu_destroy(opc_context *ctx) { free(ctx); }

static const char *cpu_last_error(opc_context *ctx) {
    return ctx ? ctx->error : "no context (NULL opc_context)";
}

/* ---- memory ------------------------------------------------------------------------ */

static int cpu_alloc(opc_context *ctx, size_t bytes, opc_dev_ptr *out) {
    CHECK_CTX(ctx);
    REQUIRE(ctx, out != NULL, "alloc: out is NULL");
    *out = NULL;
    if (bytes > SIZE_MAX - 64) return fail(ctx, OPC_E_NOMEM, "alloc: %zu bytes is too large", bytes);
    size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64; /* aligned_alloc wants a multiple */
    void *p = aligned_alloc(64, rounded);
    if (!p) return fail(ctx, OPC_E_NOMEM, "alloc: out of memory allocating %zu bytes", bytes);
    memset(p, 0, rounded);
    *out = p;
    return ok(ctx);
}

static int cpu_free(opc_context *ctx, opc_dev_ptr p) {
    CHECK_CTX(ctx);
    free(p);
    return ok(ctx);
}

static int cpu_upload(opc_context *ctx, opc_dev_ptr dst, const void *src, size_t bytes) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "upload", dst, bytes);
    REQUIRE_PTR(ctx, "upload", src, bytes);
    if (bytes) memcpy(dst, src, bytes);
    return ok(ctx);
}

static int cpu_download(opc_context *ctx, void *dst, opc_dev_ptr src, size_t bytes) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "download", dst, bytes);
    REQUIRE_PTR(ctx, "download", src, bytes);
    if (bytes) memcpy(dst, src, bytes);
    return ok(ctx);
}

static int cpu_copy(opc_context *ctx, opc_dev_ptr dst, opc_dev_ptr src, size_t bytes) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "copy", dst, bytes);
    REQUIRE_PTR(ctx, "copy", src, bytes);
    if (bytes) memmove(dst, src, bytes);
    return ok(ctx);
}

static int cpu_fill(opc_context *ctx, opc_dev_ptr xp, float value, size_t n) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "fill", xp, n);
    float *x = xp;
    for (size_t i = 0; i < n; i++) x[i] = value;
    return ok(ctx);
}

/* ---- gemm -------------------------------------------------------------------------- */

static int imax1(int a) { return a > 1 ? a : 1; }

static int cpu_gemm(opc_context *ctx, int trans_a, int trans_b, int m, int n, int k, float alpha,
                    opc_dev_ptr a, int lda, opc_dev_ptr b, int ldb, float beta, opc_dev_ptr c, int ldc) {
    CHECK_CTX(ctx);
    REQUIRE(ctx, m >= 0 && n >= 0 && k >= 0, "gemm: negative size (m=%d, n=%d, k=%d)", m, n, k);
    int min_lda = imax1(trans_a ? m : k), min_ldb = imax1(trans_b ? k : n), min_ldc = imax1(n);
    REQUIRE(ctx, lda >= min_lda, "gemm: lda=%d is less than %d", lda, min_lda);
    REQUIRE(ctx, ldb >= min_ldb, "gemm: ldb=%d is less than %d", ldb, min_ldb);
    REQUIRE(ctx, ldc >= min_ldc, "gemm: ldc=%d is less than %d", ldc, min_ldc);
    int work = m > 0 && n > 0;
    REQUIRE_PTR(ctx, "gemm", c, work);
    REQUIRE_PTR(ctx, "gemm", a, work && k > 0);
    REQUIRE_PTR(ctx, "gemm", b, work && k > 0);
    if (!work) return ok(ctx);
    float *cf = c;
    if (k == 0) {
        /* C = beta C (cblas implementations differ on k == 0; do it here). */
        for (int i = 0; i < m; i++) {
            float *row = cf + (size_t)i * (size_t)ldc;
            if (beta == 0.0f) { for (int j = 0; j < n; j++) row[j] = 0.0f; }
            else { for (int j = 0; j < n; j++) row[j] *= beta; }
        }
        return ok(ctx);
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                m, n, k, alpha, (const float *)a, lda, (const float *)b, ldb, beta, cf, ldc);
    return ok(ctx);
}

/* ---- element-wise ------------------------------------------------------------------- */

static int cpu_axpy(opc_context *ctx, size_t n, float alpha, opc_dev_ptr xp, opc_dev_ptr yp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "axpy", xp, n);
    REQUIRE_PTR(ctx, "axpy", yp, n);
    const float *x = xp;
    float *y = yp;
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return ok(ctx);
}

static int cpu_scale(opc_context *ctx, size_t n, float alpha, opc_dev_ptr xp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "scale", xp, n);
    float *x = xp;
    for (size_t i = 0; i < n; i++) x[i] *= alpha;
    return ok(ctx);
}

static int cpu_relu_forward(opc_context *ctx, size_t n, opc_dev_ptr xp, opc_dev_ptr yp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "relu_forward", xp, n);
    REQUIRE_PTR(ctx, "relu_forward", yp, n);
    const float *x = xp;
    float *y = yp;
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return ok(ctx);
}

static int cpu_relu_backward(opc_context *ctx, size_t n, opc_dev_ptr xp, opc_dev_ptr dyp, opc_dev_ptr dxp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "relu_backward", xp, n);
    REQUIRE_PTR(ctx, "relu_backward", dyp, n);
    REQUIRE_PTR(ctx, "relu_backward", dxp, n);
    const float *x = xp, *dy = dyp;
    float *dx = dxp;
    for (size_t i = 0; i < n; i++) dx[i] = x[i] > 0.0f ? dy[i] : 0.0f;
    return ok(ctx);
}

/* ---- row operations ---------------------------------------------------------------- */

#define CHECK_SHAPE(ctx, fn, rows, cols) \
    REQUIRE(ctx, (rows) >= 0 && (cols) >= 0, "%s: negative size (rows=%d, cols=%d)", fn, rows, cols)

static int cpu_add_row_vector(opc_context *ctx, int rows, int cols, opc_dev_ptr vp, opc_dev_ptr xp) {
    CHECK_CTX(ctx);
    CHECK_SHAPE(ctx, "add_row_vector", rows, cols);
    int work = rows > 0 && cols > 0;
    REQUIRE_PTR(ctx, "add_row_vector", vp, work);
    REQUIRE_PTR(ctx, "add_row_vector", xp, work);
    const float *v = vp;
    float *x = xp;
    for (int i = 0; i < rows; i++) {
        float *row = x + (size_t)i * (size_t)cols;
        for (int j = 0; j < cols; j++) row[j] += v[j];
    }
    return ok(ctx);
}

static int cpu_sum_rows(opc_context *ctx, int rows, int cols, opc_dev_ptr xp, float beta, opc_dev_ptr outp) {
    CHECK_CTX(ctx);
    CHECK_SHAPE(ctx, "sum_rows", rows, cols);
    REQUIRE_PTR(ctx, "sum_rows", outp, cols > 0);
    REQUIRE_PTR(ctx, "sum_rows", xp, cols > 0 && rows > 0);
    const float *x = xp;
    float *out = outp;
    if (beta == 0.0f) { for (int j = 0; j < cols; j++) out[j] = 0.0f; }
    else if (beta != 1.0f) { for (int j = 0; j < cols; j++) out[j] *= beta; }
    /* Row by row, so the inner loop runs over contiguous columns (vectorizes). */
    for (int i = 0; i < rows; i++) {
        const float *row = x + (size_t)i * (size_t)cols;
        for (int j = 0; j < cols; j++) out[j] += row[j];
    }
    return ok(ctx);
}

static int cpu_row_norms(opc_context *ctx, int rows, int cols, opc_dev_ptr xp, opc_dev_ptr outp) {
    CHECK_CTX(ctx);
    CHECK_SHAPE(ctx, "row_norms", rows, cols);
    REQUIRE_PTR(ctx, "row_norms", outp, rows > 0);
    REQUIRE_PTR(ctx, "row_norms", xp, rows > 0 && cols > 0);
    const float *x = xp;
    float *out = outp;
    for (int i = 0; i < rows; i++) {
        const float *row = x + (size_t)i * (size_t)cols;
        double s = 0.0;
        for (int j = 0; j < cols; j++) s += (double)row[j] * (double)row[j];
        out[i] = (float)sqrt(s);
    }
    return ok(ctx);
}

static int cpu_scale_rows(opc_context *ctx, int rows, int cols, opc_dev_ptr sp, opc_dev_ptr xp) {
    CHECK_CTX(ctx);
    CHECK_SHAPE(ctx, "scale_rows", rows, cols);
    int work = rows > 0 && cols > 0;
    REQUIRE_PTR(ctx, "scale_rows", sp, work);
    REQUIRE_PTR(ctx, "scale_rows", xp, work);
    const float *s = sp;
    float *x = xp;
    for (int i = 0; i < rows; i++) {
        float *row = x + (size_t)i * (size_t)cols;
        float si = s[i];
        for (int j = 0; j < cols; j++) row[j] *= si;
    }
    return ok(ctx);
}

static int cpu_row_dots(opc_context *ctx, int rows, int cols, opc_dev_ptr ap, opc_dev_ptr bp, opc_dev_ptr outp) {
    CHECK_CTX(ctx);
    CHECK_SHAPE(ctx, "row_dots", rows, cols);
    REQUIRE_PTR(ctx, "row_dots", outp, rows > 0);
    REQUIRE_PTR(ctx, "row_dots", ap, rows > 0 && cols > 0);
    REQUIRE_PTR(ctx, "row_dots", bp, rows > 0 && cols > 0);
    const float *a = ap, *b = bp;
    float *out = outp;
    for (int i = 0; i < rows; i++) {
        const float *ra = a + (size_t)i * (size_t)cols, *rb = b + (size_t)i * (size_t)cols;
        double s = 0.0;
        for (int j = 0; j < cols; j++) s += (double)ra[j] * (double)rb[j];
        out[i] = (float)s;
    }
    return ok(ctx);
}

/* ---- loss -------------------------------------------------------------------------- */

static int cpu_softmax_xent(opc_context *ctx, int rows, int classes, opc_dev_ptr logitsp, opc_dev_ptr labelsp,
                            opc_dev_ptr dlogitsp, float *loss_out, int64_t *correct_out) {
    CHECK_CTX(ctx);
    REQUIRE(ctx, rows >= 0 && classes >= 0, "softmax_xent: negative size (rows=%d, classes=%d)", rows, classes);
    REQUIRE(ctx, rows == 0 || classes >= 1, "softmax_xent: %d rows with 0 classes", rows);
    REQUIRE_PTR(ctx, "softmax_xent", logitsp, rows > 0);
    REQUIRE_PTR(ctx, "softmax_xent", labelsp, rows > 0);
    REQUIRE_PTR(ctx, "softmax_xent", dlogitsp, rows > 0);
    const float *logits = logitsp;
    const int64_t *labels = labelsp;
    float *dlogits = dlogitsp;
    for (int i = 0; i < rows; i++) {
        REQUIRE(ctx, labels[i] >= 0 && labels[i] < classes,
                "softmax_xent: label %lld of row %d is outside [0, %d)", (long long)labels[i], i, classes);
    }
    double total = 0.0;
    int64_t correct = 0;
    float inv_rows = rows > 0 ? (float)(1.0 / (double)rows) : 0.0f;
    for (int i = 0; i < rows; i++) {
        const float *x = logits + (size_t)i * (size_t)classes;
        float *dx = dlogits + (size_t)i * (size_t)classes;
        int64_t label = labels[i];
        float mx = x[0];
        int arg = 0;
        for (int j = 1; j < classes; j++) if (x[j] > mx) { mx = x[j]; arg = j; }
        double sum = 0.0;
        for (int j = 0; j < classes; j++) sum += exp((double)x[j] - (double)mx);
        double lse = (double)mx + log(sum);
        total += lse - (double)x[label];
        if (arg == label) correct++;
        /* Reads x[j] before writing dx[j]: safe when dlogits == logits. */
        for (int j = 0; j < classes; j++) {
            double p = exp((double)x[j] - lse);
            dx[j] = (float)p * inv_rows;
        }
        dx[label] -= inv_rows;
    }
    if (loss_out) *loss_out = rows > 0 ? (float)(total / (double)rows) : 0.0f;
    if (correct_out) *correct_out = correct;
    return ok(ctx);
}

static int cpu_sum_squares(opc_context *ctx, size_t n, opc_dev_ptr xp, double *out) {
    CHECK_CTX(ctx);
    REQUIRE(ctx, out != NULL, "sum_squares: out is NULL");
    REQUIRE_PTR(ctx, "sum_squares", xp, n);
    const float *x = xp;
    /* Four fixed partial sums: vectorizes and stays deterministic. */
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += (double)x[i] * x[i];
        s1 += (double)x[i + 1] * x[i + 1];
        s2 += (double)x[i + 2] * x[i + 2];
        s3 += (double)x[i + 3] * x[i + 3];
    }
    for (; i < n; i++) s0 += (double)x[i] * x[i];
    *out = (s0 + s1) + (s2 + s3);
    return ok(ctx);
}

/* ---- optimizer --------------------------------------------------------------------- */

static int cpu_adamw(opc_context *ctx, size_t n, opc_dev_ptr pp, opc_dev_ptr gp, opc_dev_ptr mp, opc_dev_ptr vp,
                     float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t) {
    CHECK_CTX(ctx);
    REQUIRE(ctx, t >= 1, "adamw: step t=%lld must be >= 1", (long long)t);
    REQUIRE_PTR(ctx, "adamw", pp, n);
    REQUIRE_PTR(ctx, "adamw", gp, n);
    REQUIRE_PTR(ctx, "adamw", mp, n);
    REQUIRE_PTR(ctx, "adamw", vp, n);
    float *p = pp, *m = mp, *v = vp;
    const float *g = gp;
    /* Scalars as torch computes them (Python floats, i.e. double), then used in f32. */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    float neg_step = (float)(-((double)lr / bc1));
    float bc2_sqrt = (float)sqrt(bc2);
    float one_m_b1 = (float)(1.0 - (double)beta1);
    float one_m_b2 = (float)(1.0 - (double)beta2);
    int lerp_small = fabsf(one_m_b1) < 0.5f; /* torch's lerp picks its formula by |weight| */
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        /* torch: m.lerp_(g, 1-b1); v.mul_(b2).addcmul_(g, g, 1-b2);
           p.addcdiv_(m, v.sqrt() / sqrt(bc2) + eps, -lr/bc1), each in f32. */
        float mi = lerp_small ? m[i] + one_m_b1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0f - one_m_b1);
        float vi = v[i] * beta2 + one_m_b2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + neg_step * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
    return ok(ctx);
}

/* ---- element-wise, v2 ---------------------------------------------------------------- */

/* out may alias a or b: each element is read before it is written, at the same index. */
static int cpu_divide(opc_context *ctx, size_t n, opc_dev_ptr ap, opc_dev_ptr bp, opc_dev_ptr outp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "divide", ap, n);
    REQUIRE_PTR(ctx, "divide", bp, n);
    REQUIRE_PTR(ctx, "divide", outp, n);
    const float *a = ap, *b = bp;
    float *out = outp;
    for (size_t i = 0; i < n; i++) out[i] = a[i] / b[i];
    return ok(ctx);
}

static int cpu_multiply(opc_context *ctx, size_t n, opc_dev_ptr ap, opc_dev_ptr bp, opc_dev_ptr outp) {
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, "multiply", ap, n);
    REQUIRE_PTR(ctx, "multiply", bp, n);
    REQUIRE_PTR(ctx, "multiply", outp, n);
    const float *a = ap, *b = bp;
    float *out = outp;
    for (size_t i = 0; i < n; i++) out[i] = a[i] * b[i];
    return ok(ctx);
}

/* ---- discovery and options, v2 --------------------------------------------------------- */

static void set_why(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_why(char *why, size_t why_len, const char *fmt, ...) {
    if (!why || why_len == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

static int cpu_probe(int *device_count, char *why, size_t why_len) {
    if (device_count) *device_count = 1;
    set_why(why, why_len, "%s", "");
    return OPC_OK;
}

/* "0.3.21" from "OpenBLAS 0.3.21 DYNAMIC_ARCH ...", else "" (into out[len]). */
static void openblas_version(char *out, size_t len) {
    out[0] = '\0';
    const char *config = openblas_get_config();
    if (!config || strncmp(config, "OpenBLAS ", 9) != 0) return;
    const char *v = config + 9;
    size_t n = strcspn(v, " ");
    if (n >= len) n = len - 1;
    memcpy(out, v, n);
    out[n] = '\0';
}

static int cpu_device_info(int device, opc_device_info *info, char *why, size_t why_len) {
    if (!info || info->struct_size < sizeof(uint32_t)) {
        set_why(why, why_len, "device_info: info is NULL or its struct_size is too small");
        return OPC_E_INVALID;
    }
    if (device != 0) {
        set_why(why, why_len, "device_info: the CPU plugin has one device (0), not %d", device);
        return OPC_E_INVALID;
    }
    opc_device_info full;
    memset(&full, 0, sizeof full);
    int threads = openblas_get_num_threads();
    if (threads < 1) threads = 1;
    full.multiprocessors = threads;
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    full.total_memory_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    char version[32];
    openblas_version(version, sizeof version);
    snprintf(full.name, sizeof full.name, "CPU (OpenBLAS%s%s, %d thread%s)", version[0] ? " " : "", version,
             threads, threads == 1 ? "" : "s");
    /* Write only what fits in the caller's struct, keeping its struct_size. */
    uint32_t size = info->struct_size;
    size_t n = size < sizeof full ? size : sizeof full;
    full.struct_size = size;
    memcpy(info, &full, n);
    set_why(why, why_len, "%s", "");
    return OPC_OK;
}

static int cpu_create_with_options(const opc_create_options *options, opc_context **out, char *why, size_t why_len) {
    if (!out) {
        set_why(why, why_len, "create_with_options: out is NULL");
        return OPC_E_INVALID;
    }
    *out = NULL;
    opc_create_options o;
    memset(&o, 0, sizeof o);
    if (options) {
        /* Read only the fields the caller's struct has. */
        size_t n = options->struct_size < sizeof o ? options->struct_size : sizeof o;
        memcpy(&o, options, n);
    }
    if (o.device != 0) {
        set_why(why, why_len, "create_with_options: the CPU plugin has one device (0), not %d", (int)o.device);
        return OPC_E_INVALID;
    }
    int code = cpu_create(out, o.num_threads);
    if (code != OPC_OK) set_why(why, why_len, "create_with_options: out of memory");
    else set_why(why, why_len, "%s", "");
    return code;
}

static int cpu_compile_kernels(const char *target, char *log, size_t log_len) {
    (void)target;
    set_why(log, log_len, "the CPU plugin compiles nothing at run time");
    return OPC_E_UNSUPPORTED;
}

/* ---- entry ------------------------------------------------------------------------- */

/* The v1 members, shared by every table. */
#define CPU_PLUGIN_V1_MEMBERS \
    .name = "cpu-openblas", \
    .description = "CPU kernels: OpenBLAS sgemm, single-threaded vectorized element-wise loops", \
    .create = cpu_create, \
    .destroy = cpu_destroy, \
    .last_error = cpu_last_error, \
    .alloc = cpu_alloc, \
    .free = cpu_free, \
    .upload = cpu_upload, \
    .download = cpu_download, \
    .copy = cpu_copy, \
    .fill = cpu_fill, \
    .gemm = cpu_gemm, \
    .axpy = cpu_axpy, \
    .scale = cpu_scale, \
    .relu_forward = cpu_relu_forward, \
    .relu_backward = cpu_relu_backward, \
    .add_row_vector = cpu_add_row_vector, \
    .sum_rows = cpu_sum_rows, \
    .row_norms = cpu_row_norms, \
    .scale_rows = cpu_scale_rows, \
    .row_dots = cpu_row_dots, \
    .softmax_xent = cpu_softmax_xent, \
    .sum_squares = cpu_sum_squares, \
    .adamw = cpu_adamw

/* A version 1 host sees exactly the v1 table (its struct_size ends before probe). */
static const opc_plugin cpu_plugin_v1 = {
    .abi_version = 1,
    .struct_size = (uint32_t)OPC_PLUGIN_V1_SIZE,
    CPU_PLUGIN_V1_MEMBERS,
};

#define CPU_PLUGIN_V2_MEMBERS \
    .probe = cpu_probe, \
    .device_info = cpu_device_info, \
    .create_with_options = cpu_create_with_options, \
    .compile_kernels = cpu_compile_kernels, \
    .divide = cpu_divide, \
    .multiply = cpu_multiply

/* A version 2 host sees the v1 and v2 members (struct_size ends after multiply). */
static const opc_plugin cpu_plugin_v2 = {
    .abi_version = 2,
    .struct_size = (uint32_t)OPC_PLUGIN_V2_SIZE,
    CPU_PLUGIN_V1_MEMBERS,
    CPU_PLUGIN_V2_MEMBERS,
};

static const opc_plugin cpu_plugin_v3 = {
    .abi_version = 3,
    .struct_size = (uint32_t)sizeof(opc_plugin),
    CPU_PLUGIN_V1_MEMBERS,
    CPU_PLUGIN_V2_MEMBERS,
    .embedding_forward = opc_cpu_embedding_forward,
    .embedding_backward = opc_cpu_embedding_backward,
    .rmsnorm_forward = opc_cpu_rmsnorm_forward,
    .rmsnorm_backward = opc_cpu_rmsnorm_backward,
    .rope = opc_cpu_rope,
    .attention_forward = opc_cpu_attention_forward,
    .attention_backward = opc_cpu_attention_backward,
    .silu_gate_forward = opc_cpu_silu_gate_forward,
    .silu_gate_backward = opc_cpu_silu_gate_backward,
    .token_xent = opc_cpu_token_xent,
};

__attribute__((visibility("default")))
const opc_plugin *opc_plugin_entry(uint32_t host_abi_version) {
    switch (host_abi_version) {
    case 1: return &cpu_plugin_v1;
    case 2: return &cpu_plugin_v2;
    case 3: return &cpu_plugin_v3;
    default: return NULL;
    }
}
