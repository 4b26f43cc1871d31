/*
 * opconvert CPU kernel plugin: the ABI v3 transformer kernels (see opc_plugin.h).
 *
 * Attention runs per (batch, head) on cblas_sgemm over the strided q/k/v views directly
 * (row stride heads*head_dim), block by block along the causal triangle so that about
 * half of the score matrix is never computed; the (batch, head) items are split over the
 * context's threads in a fixed partition. Everything else is a plain single-threaded
 * loop; reductions accumulate in double in a fixed order, so results are deterministic
 * for a given OpenBLAS thread count. Every argument (sizes, pointers, ids, positions,
 * labels) is checked before anything is written.
 */
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Declared by OpenBLAS's cblas.h; repeated here in case another cblas.h is found. */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

/* Everything defined below is internal; only opc_plugin_entry (declared with default
 * visibility in opc_cpu_plugin.h) is exported. After the system and
 * OpenBLAS declarations, which must keep their own visibility. */
#pragma GCC visibility push(hidden)

#define CHECK_CTX(ctx) do { if (!(ctx)) return OPC_E_INVALID; } while (0)
#define REQUIRE(ctx, cond, ...) do { if (!(cond)) return opc_cpu_fail((ctx), OPC_E_INVALID, __VA_ARGS__); } while (0)
#define REQUIRE_PTR(ctx, fn, p, needed) REQUIRE(ctx, !(needed) || (p) != NULL, "%s: %s is NULL", fn, #p)

/* Rows of the causal triangle handled per GEMM: small enough to skip most of the masked
   upper half, large enough for sgemm to run near its peak. */
enum { ATTENTION_BLOCK = 64 };

/* ---- exp without libm --------------------------------------------------------------- */

/* e^x in f32 with no libm call, so the loops over it vectorize: Cephes' expf (x = n ln2 + r
   with ln2 in two parts, a degree-5 polynomial in r; about 1 ulp), scaled by 2^n in two
   halves so that n = -126 and n = 128 stay exact. Below -87.3 (where e^x is subnormal) it
   gives 0, above ln(FLT_MAX) +inf, as expf overflows; NaN stays NaN. Branch-free. */
static inline float opc_expf(float x) {
    const float lo = -87.3f, hi = 88.7228f;
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    /* Round to nearest with the 1.5 * 2^23 trick (no floorf, which baseline SSE2 lacks). */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float z = r * r;
    float y = (((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
                + 1.6666665459e-1f) * r + 5.0000001201e-1f) * z + r + 1.0f;
    int32_t ni = (int32_t)n, half = ni / 2;
    int32_t bits1 = (half + 127) * (1 << 23), bits2 = (ni - half + 127) * (1 << 23);
    float s1, s2;
    memcpy(&s1, &bits1, sizeof s1);
    memcpy(&s2, &bits2, sizeof s2);
    float out = (y * s1) * s2;
    out = x < lo ? 0.0f : out;
    return x > hi ? INFINITY : out;
}

/* The largest of x[0..n) (n >= 1), four lanes then combined: max is exact in any order. */
static float row_max(const float *x, int n) {
    float m0 = x[0], m1 = x[0], m2 = x[0], m3 = x[0];
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        m0 = x[j] > m0 ? x[j] : m0;
        m1 = x[j + 1] > m1 ? x[j + 1] : m1;
        m2 = x[j + 2] > m2 ? x[j + 2] : m2;
        m3 = x[j + 3] > m3 ? x[j + 3] : m3;
    }
    for (; j < n; j++) m0 = x[j] > m0 ? x[j] : m0;
    m0 = m1 > m0 ? m1 : m0;
    m2 = m3 > m2 ? m3 : m2;
    return m2 > m0 ? m2 : m0;
}

/* Element-wise loops whose output may alias an input compute CHUNK results into a local
   array and copy them out: the compiler then knows nothing overlaps and vectorizes,
   instead of falling back to scalar code when the buffers are the same. */
enum { CHUNK = 256 };

/* e[j] = exp(x[j] - mx) for j < n (e may be x); returns their sum in double, accumulated in
   four fixed lanes (j mod 4) and combined in a fixed order: deterministic. */
static double exp_shifted(const float *x, float *e, int n, float mx) {
    for (int j0 = 0; j0 < n; j0 += CHUNK) {
        int m = n - j0 < CHUNK ? n - j0 : CHUNK;
        float tmp[CHUNK];
        for (int j = 0; j < m; j++) tmp[j] = opc_expf(x[j0 + j] - mx);
        memcpy(e + j0, tmp, sizeof(float) * (size_t)m);
    }
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int j = 0;
    for (; j + 4 <= n; j += 4) {
        s0 += (double)e[j];
        s1 += (double)e[j + 1];
        s2 += (double)e[j + 2];
        s3 += (double)e[j + 3];
    }
    for (; j < n; j++) s0 += (double)e[j];
    return (s0 + s1) + (s2 + s3);
}

/* ---- embedding ----------------------------------------------------------------------- */

static int check_ids(opc_context *ctx, const char *fn, const int32_t *ids, int tokens, int vocab) {
    for (int t = 0; t < tokens; t++) {
        REQUIRE(ctx, ids[t] >= 0 && ids[t] < vocab, "%s: token id %d at position %d is outside [0, %d)", fn,
                (int)ids[t], t, vocab);
    }
    return OPC_OK;
}

int opc_cpu_embedding_forward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr tablep,
                              opc_dev_ptr idsp, opc_dev_ptr outp) {
    const char *fn = "embedding_forward";
    CHECK_CTX(ctx);
    REQUIRE(ctx, tokens >= 0 && vocab >= 0 && dim >= 0, "%s: negative size (tokens=%d, vocab=%d, dim=%d)", fn,
            tokens, vocab, dim);
    int work = tokens > 0 && dim > 0;
    REQUIRE_PTR(ctx, fn, tablep, work);
    REQUIRE_PTR(ctx, fn, idsp, work);
    REQUIRE_PTR(ctx, fn, outp, work);
    if (!work) return opc_cpu_ok(ctx);
    const int32_t *ids = idsp;
    int code = check_ids(ctx, fn, ids, tokens, vocab);
    if (code != OPC_OK) return code;
    const float *table = tablep;
    float *out = outp;
    for (int t = 0; t < tokens; t++) {
        memcpy(out + (size_t)t * (size_t)dim, table + (size_t)ids[t] * (size_t)dim, sizeof(float) * (size_t)dim);
    }
    return opc_cpu_ok(ctx);
}

int opc_cpu_embedding_backward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr idsp,
                               opc_dev_ptr doutp, opc_dev_ptr dtablep) {
    const char *fn = "embedding_backward";
    CHECK_CTX(ctx);
    REQUIRE(ctx, tokens >= 0 && vocab >= 0 && dim >= 0, "%s: negative size (tokens=%d, vocab=%d, dim=%d)", fn,
            tokens, vocab, dim);
    int work = tokens > 0 && dim > 0;
    REQUIRE_PTR(ctx, fn, idsp, work);
    REQUIRE_PTR(ctx, fn, doutp, work);
    REQUIRE_PTR(ctx, fn, dtablep, work);
    if (!work) return opc_cpu_ok(ctx);
    const int32_t *ids = idsp;
    int code = check_ids(ctx, fn, ids, tokens, vocab);
    if (code != OPC_OK) return code;
    const float *dout = doutp;
    float *dtable = dtablep;
    for (int t = 0; t < tokens; t++) {
        float *row = dtable + (size_t)ids[t] * (size_t)dim;
        const float *src = dout + (size_t)t * (size_t)dim;
        for (int j = 0; j < dim; j++) row[j] += src[j];
    }
    return opc_cpu_ok(ctx);
}

/* ---- RMSNorm ------------------------------------------------------------------------- */

int opc_cpu_rmsnorm_forward(opc_context *ctx, int rows, int dim, float eps, opc_dev_ptr xp, opc_dev_ptr wp,
                            opc_dev_ptr yp, opc_dev_ptr rstdp) {
    const char *fn = "rmsnorm_forward";
    CHECK_CTX(ctx);
    REQUIRE(ctx, rows >= 0 && dim >= 0, "%s: negative size (rows=%d, dim=%d)", fn, rows, dim);
    int work = rows > 0 && dim > 0;
    REQUIRE_PTR(ctx, fn, xp, work);
    REQUIRE_PTR(ctx, fn, wp, work);
    REQUIRE_PTR(ctx, fn, yp, work);
    if (!work) return opc_cpu_ok(ctx);
    const float *x = xp, *w = wp;
    float *y = yp, *rstd = rstdp;
    for (int i = 0; i < rows; i++) {
        const float *xr = x + (size_t)i * (size_t)dim;
        float *yr = y + (size_t)i * (size_t)dim;
        double s0 = 0, s1 = 0;
        int j = 0;
        for (; j + 2 <= dim; j += 2) {
            s0 += (double)xr[j] * (double)xr[j];
            s1 += (double)xr[j + 1] * (double)xr[j + 1];
        }
        for (; j < dim; j++) s0 += (double)xr[j] * (double)xr[j];
        float r = (float)(1.0 / sqrt((s0 + s1) / (double)dim + (double)eps));
        if (rstd) rstd[i] = r;
        /* y may alias x: each element is read before it is written. */
        for (j = 0; j < dim; j++) yr[j] = w[j] * (xr[j] * r);
    }
    return opc_cpu_ok(ctx);
}

int opc_cpu_rmsnorm_backward(opc_context *ctx, int rows, int dim, opc_dev_ptr xp, opc_dev_ptr wp, opc_dev_ptr rstdp,
                             opc_dev_ptr dyp, opc_dev_ptr dxp, opc_dev_ptr dwp) {
    const char *fn = "rmsnorm_backward";
    CHECK_CTX(ctx);
    REQUIRE(ctx, rows >= 0 && dim >= 0, "%s: negative size (rows=%d, dim=%d)", fn, rows, dim);
    int work = rows > 0 && dim > 0;
    REQUIRE_PTR(ctx, fn, xp, work);
    REQUIRE_PTR(ctx, fn, wp, work);
    REQUIRE_PTR(ctx, fn, rstdp, work);
    REQUIRE_PTR(ctx, fn, dyp, work);
    REQUIRE_PTR(ctx, fn, dxp, work);
    if (!work) return opc_cpu_ok(ctx);
    const float *x = xp, *w = wp, *rstd = rstdp;
    const float *dy = dyp;
    float *dx = dxp, *dw = dwp;
    /* dw's column sums in double, added to dw once at the end. */
    double *acc = NULL;
    if (dw) {
        acc = calloc((size_t)dim, sizeof *acc);
        if (!acc) return opc_cpu_fail(ctx, OPC_E_NOMEM, "%s: out of memory (%d doubles)", fn, dim);
    }
    for (int i = 0; i < rows; i++) {
        const float *xr = x + (size_t)i * (size_t)dim, *dyr = dy + (size_t)i * (size_t)dim;
        float *dxr = dx + (size_t)i * (size_t)dim;
        double r = (double)rstd[i];
        double dot = 0;
        for (int j = 0; j < dim; j++) dot += (double)(w[j] * dyr[j]) * (double)xr[j];
        if (acc) {
            for (int j = 0; j < dim; j++) acc[j] += (double)dyr[j] * (double)xr[j] * r;
        }
        float rf = (float)r;
        float coef = (float)(r * r * r * dot / (double)dim);
        /* dx may alias dy: dy[j] is read before dx[j] is written. */
        for (int j = 0; j < dim; j++) dxr[j] = rf * (w[j] * dyr[j]) - coef * xr[j];
    }
    if (acc) {
        for (int j = 0; j < dim; j++) dw[j] += (float)acc[j];
        free(acc);
    }
    return opc_cpu_ok(ctx);
}

/* ---- RoPE ---------------------------------------------------------------------------- */

int opc_cpu_rope(opc_context *ctx, int rows, int heads, int head_dim, opc_dev_ptr xp, opc_dev_ptr positionsp,
                 int table_rows, opc_dev_ptr cosp, opc_dev_ptr sinp, int inverse) {
    const char *fn = "rope";
    CHECK_CTX(ctx);
    REQUIRE(ctx, rows >= 0 && heads >= 0 && head_dim >= 0 && table_rows >= 0,
            "%s: negative size (rows=%d, heads=%d, head_dim=%d, table_rows=%d)", fn, rows, heads, head_dim, table_rows);
    REQUIRE(ctx, head_dim % 2 == 0, "%s: head_dim %d is odd (rotate_half needs an even head_dim)", fn, head_dim);
    int work = rows > 0 && heads > 0 && head_dim > 0;
    REQUIRE_PTR(ctx, fn, xp, work);
    REQUIRE_PTR(ctx, fn, positionsp, work);
    REQUIRE_PTR(ctx, fn, cosp, work);
    REQUIRE_PTR(ctx, fn, sinp, work);
    if (!work) return opc_cpu_ok(ctx);
    const int32_t *positions = positionsp;
    for (int r = 0; r < rows; r++) {
        REQUIRE(ctx, positions[r] >= 0 && positions[r] < table_rows,
                "%s: position %d of row %d is outside [0, %d)", fn, (int)positions[r], r, table_rows);
    }
    const float *cosv = cosp, *sinv = sinp;
    float *x = xp;
    int half = head_dim / 2;
    float sign = inverse ? -1.0f : 1.0f;
    for (int r = 0; r < rows; r++) {
        const float *c = cosv + (size_t)positions[r] * (size_t)half;
        const float *s = sinv + (size_t)positions[r] * (size_t)half;
        for (int h = 0; h < heads; h++) {
            float *a = x + ((size_t)r * (size_t)heads + (size_t)h) * (size_t)head_dim, *b = a + half;
            for (int i = 0; i < half; i++) {
                float si = sign * s[i], lo = a[i], hi = b[i];
                a[i] = lo * c[i] - hi * si;
                b[i] = hi * c[i] + lo * si;
            }
        }
    }
    return opc_cpu_ok(ctx);
}

/* ---- attention ----------------------------------------------------------------------- */

static int check_attention(opc_context *ctx, const char *fn, int batch, int seq, int heads, int kv_heads,
                           int head_dim, int *work) {
    REQUIRE(ctx, batch >= 0 && seq >= 0 && heads >= 0 && kv_heads >= 0 && head_dim >= 0,
            "%s: negative size (batch=%d, seq=%d, heads=%d, kv_heads=%d, head_dim=%d)", fn, batch, seq, heads,
            kv_heads, head_dim);
    *work = batch > 0 && seq > 0 && heads > 0 && head_dim > 0;
    if (*work) {
        REQUIRE(ctx, kv_heads >= 1 && heads % kv_heads == 0, "%s: heads %d is not a multiple of kv_heads %d", fn,
                heads, kv_heads);
    }
    return OPC_OK;
}

/* S rows [i0, i1) of one (b, h): the scores against keys [0, i1), then the causal row
   softmax over j <= i (max-subtracted, sum in double), zeros for j > i up to seq. */
static void attention_probs_block(int seq, int head_dim, float scale, const float *q, int ldq, const float *k,
                                  int ldk, float *p, int i0, int i1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1, head_dim, scale, q + (size_t)i0 * (size_t)ldq,
                ldq, k, ldk, 0.0f, p + (size_t)i0 * (size_t)seq, seq);
    for (int i = i0; i < i1; i++) {
        float *row = p + (size_t)i * (size_t)seq;
        double sum = exp_shifted(row, row, i + 1, row_max(row, i + 1));
        float inv = (float)(1.0 / sum);
        for (int j = 0; j <= i; j++) row[j] *= inv;
        for (int j = i + 1; j < seq; j++) row[j] = 0.0f;
    }
}

/* The arguments of one attention call, shared by its worker threads (read-only, except
   each worker's own slice of the outputs and its own scratch). */
typedef struct {
    int seq, heads, kv_heads, head_dim, group, ldq, ldk;
    float scale;
    const float *q, *k, *v, *dout;
    float *probs, *out, *dq, *dk, *dv;
    float *scratch; /* backward: seq*seq floats per worker */
} attention_args;

/* Forward of one (b, h) item. */
static void attention_forward_item(const attention_args *a, int item, float *unused) {
    (void)unused;
    int b = item / a->heads, h = item % a->heads, seq = a->seq, d = a->head_dim;
    size_t qrow0 = (size_t)b * (size_t)seq * (size_t)a->ldq, krow0 = (size_t)b * (size_t)seq * (size_t)a->ldk;
    const float *qh = a->q + qrow0 + (size_t)h * (size_t)d;
    const float *kh = a->k + krow0 + (size_t)(h / a->group) * (size_t)d;
    const float *vh = a->v + krow0 + (size_t)(h / a->group) * (size_t)d;
    float *p = a->probs + (size_t)item * (size_t)seq * (size_t)seq;
    float *oh = a->out + qrow0 + (size_t)h * (size_t)d;
    for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK) {
        int i1 = i0 + ATTENTION_BLOCK < seq ? i0 + ATTENTION_BLOCK : seq;
        attention_probs_block(seq, d, a->scale, qh, a->ldq, kh, a->ldk, p, i0, i1);
        /* out rows [i0, i1) = P[i0:i1, 0:i1] V[0:i1] (P is zero past the diagonal). */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, d, i1, 1.0f, p + (size_t)i0 * (size_t)seq, seq,
                    vh, a->ldk, 0.0f, oh + (size_t)i0 * (size_t)a->ldq, a->ldq);
    }
}

/* Backward of one (b, kv head) item: every query head of the group, in head order. */
static void attention_backward_item(const attention_args *a, int item, float *ds) {
    int b = item / a->kv_heads, g = item % a->kv_heads, seq = a->seq, d = a->head_dim;
    int ldq = a->ldq, ldk = a->ldk;
    size_t square = (size_t)seq * (size_t)seq;
    size_t qrow0 = (size_t)b * (size_t)seq * (size_t)ldq, krow0 = (size_t)b * (size_t)seq * (size_t)ldk;
    const float *kg = a->k + krow0 + (size_t)g * (size_t)d, *vg = a->v + krow0 + (size_t)g * (size_t)d;
    float *dkg = a->dk + krow0 + (size_t)g * (size_t)d, *dvg = a->dv + krow0 + (size_t)g * (size_t)d;
    for (int hh = 0; hh < a->group; hh++) {
        int h = g * a->group + hh;
        /* The first head of the group overwrites dk/dv, the others add, in head order. */
        float beta = hh == 0 ? 0.0f : 1.0f;
        const float *qh = a->q + qrow0 + (size_t)h * (size_t)d;
        const float *doh = a->dout + qrow0 + (size_t)h * (size_t)d;
        float *dqh = a->dq + qrow0 + (size_t)h * (size_t)d;
        const float *p = a->probs + ((size_t)b * (size_t)a->heads + (size_t)h) * square;
        for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK) {
            int i1 = i0 + ATTENTION_BLOCK < seq ? i0 + ATTENTION_BLOCK : seq;
            /* dP rows [i0, i1) = dO V^T over keys [0, i1). */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1, d, 1.0f, doh + (size_t)i0 * (size_t)ldq, ldq,
                        vg, ldk, 0.0f, ds + (size_t)i0 * (size_t)seq, seq);
            for (int i = i0; i < i1; i++) {
                const float *pr = p + (size_t)i * (size_t)seq;
                float *dr = ds + (size_t)i * (size_t)seq;
                double dot = 0;
                for (int j = 0; j <= i; j++) dot += (double)dr[j] * (double)pr[j];
                float rowsum = (float)dot;
                for (int j = 0; j <= i; j++) dr[j] = pr[j] * (dr[j] - rowsum);
                for (int j = i + 1; j < seq; j++) dr[j] = 0.0f;
            }
            /* dQ rows [i0, i1) = scale dS[i0:i1, 0:i1] K[0:i1]. */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, d, i1, a->scale, ds + (size_t)i0 * (size_t)seq,
                        seq, kg, ldk, 0.0f, dqh + (size_t)i0 * (size_t)ldq, ldq);
        }
        /* Key rows [j0, j1) get contributions from query rows i >= j0 only. */
        for (int j0 = 0; j0 < seq; j0 += ATTENTION_BLOCK) {
            int j1 = j0 + ATTENTION_BLOCK < seq ? j0 + ATTENTION_BLOCK : seq;
            size_t corner = (size_t)j0 * (size_t)seq + (size_t)j0;
            /* dK[j0:j1] (+)= scale dS[j0:, j0:j1]^T Q[j0:];  dV[j0:j1] (+)= P[j0:, j0:j1]^T dO[j0:]. */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, d, seq - j0, a->scale, ds + corner, seq,
                        qh + (size_t)j0 * (size_t)ldq, ldq, beta, dkg + (size_t)j0 * (size_t)ldk, ldk);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, d, seq - j0, 1.0f, p + corner, seq,
                        doh + (size_t)j0 * (size_t)ldq, ldq, beta, dvg + (size_t)j0 * (size_t)ldk, ldk);
        }
    }
}

typedef void (*attention_item_fn)(const attention_args *a, int item, float *scratch);

typedef struct {
    const attention_args *args;
    attention_item_fn fn;
    int first, last; /* items [first, last) */
    float *scratch;
} attention_worker;

static void *attention_worker_main(void *p) {
    attention_worker *w = p;
    for (int item = w->first; item < w->last; item++) w->fn(w->args, item, w->scratch);
    return NULL;
}

/* Runs fn over items [0, items) on `workers` threads, a fixed contiguous partition (item i
   is always computed the same way, whichever thread runs it, so results do not depend on
   the thread count). OpenBLAS runs single-threaded inside: its per-call threading costs
   more than it brings on per-head GEMMs. A thread that cannot start runs on the caller. */
static void attention_parallel(const attention_args *a, attention_item_fn fn, int items, int workers,
                               size_t scratch_floats) {
    enum { MAX_WORKERS = 64 };
    if (workers > items) workers = items;
    if (workers > MAX_WORKERS) workers = MAX_WORKERS;
    if (workers <= 1) {
        for (int item = 0; item < items; item++) fn(a, item, a->scratch);
        return;
    }
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    attention_worker w[MAX_WORKERS];
    pthread_t tid[MAX_WORKERS];
    int started[MAX_WORKERS];
    for (int t = 0; t < workers; t++) {
        w[t].args = a;
        w[t].fn = fn;
        w[t].first = (int)((long long)items * t / workers);
        w[t].last = (int)((long long)items * (t + 1) / workers);
        w[t].scratch = a->scratch ? a->scratch + (size_t)t * scratch_floats : NULL;
        started[t] = t > 0 && pthread_create(&tid[t], NULL, attention_worker_main, &w[t]) == 0;
    }
    for (int t = 0; t < workers; t++) {
        if (!started[t]) attention_worker_main(&w[t]);
    }
    for (int t = 1; t < workers; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
    }
    openblas_set_num_threads(blas_threads > 0 ? blas_threads : 1);
}

int opc_cpu_attention_forward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                              float scale, opc_dev_ptr qp, opc_dev_ptr kp, opc_dev_ptr vp, opc_dev_ptr probsp,
                              opc_dev_ptr outp) {
    const char *fn = "attention_forward";
    CHECK_CTX(ctx);
    int work = 0;
    int code = check_attention(ctx, fn, batch, seq, heads, kv_heads, head_dim, &work);
    if (code != OPC_OK) return code;
    REQUIRE_PTR(ctx, fn, qp, work);
    REQUIRE_PTR(ctx, fn, kp, work);
    REQUIRE_PTR(ctx, fn, vp, work);
    REQUIRE_PTR(ctx, fn, probsp, work);
    REQUIRE_PTR(ctx, fn, outp, work);
    if (!work) return opc_cpu_ok(ctx);
    attention_args a = {
        .seq = seq, .heads = heads, .kv_heads = kv_heads, .head_dim = head_dim, .group = heads / kv_heads,
        .ldq = heads * head_dim, .ldk = kv_heads * head_dim, .scale = scale,
        .q = qp, .k = kp, .v = vp, .probs = probsp, .out = outp,
    };
    attention_parallel(&a, attention_forward_item, batch * heads, opc_cpu_threads(ctx), 0);
    return opc_cpu_ok(ctx);
}

int opc_cpu_attention_backward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                               float scale, opc_dev_ptr qp, opc_dev_ptr kp, opc_dev_ptr vp, opc_dev_ptr probsp,
                               opc_dev_ptr doutp, opc_dev_ptr dqp, opc_dev_ptr dkp, opc_dev_ptr dvp) {
    const char *fn = "attention_backward";
    CHECK_CTX(ctx);
    int work = 0;
    int code = check_attention(ctx, fn, batch, seq, heads, kv_heads, head_dim, &work);
    if (code != OPC_OK) return code;
    REQUIRE_PTR(ctx, fn, qp, work);
    REQUIRE_PTR(ctx, fn, kp, work);
    REQUIRE_PTR(ctx, fn, vp, work);
    REQUIRE_PTR(ctx, fn, probsp, work);
    REQUIRE_PTR(ctx, fn, doutp, work);
    REQUIRE_PTR(ctx, fn, dqp, work);
    REQUIRE_PTR(ctx, fn, dkp, work);
    REQUIRE_PTR(ctx, fn, dvp, work);
    if (!work) return opc_cpu_ok(ctx);
    int items = batch * kv_heads, workers = opc_cpu_threads(ctx);
    if (workers > items) workers = items;
    if (workers > 64) workers = 64;
    size_t square = (size_t)seq * (size_t)seq;
    float *scratch = malloc(square * (size_t)workers * sizeof *scratch); /* dP, then dS, of one (b, h) per worker */
    if (!scratch) {
        return opc_cpu_fail(ctx, OPC_E_NOMEM, "%s: out of memory (%zu floats of scratch)", fn, square * (size_t)workers);
    }
    attention_args a = {
        .seq = seq, .heads = heads, .kv_heads = kv_heads, .head_dim = head_dim, .group = heads / kv_heads,
        .ldq = heads * head_dim, .ldk = kv_heads * head_dim, .scale = scale,
        .q = qp, .k = kp, .v = vp, .dout = doutp, .probs = probsp, .dq = dqp, .dk = dkp, .dv = dvp,
        .scratch = scratch,
    };
    attention_parallel(&a, attention_backward_item, items, workers, square);
    free(scratch);
    return opc_cpu_ok(ctx);
}

/* ---- splitting element-wise work over threads --------------------------------------- */

typedef void (*range_fn)(void *arg, size_t first, size_t last);

typedef struct {
    range_fn fn;
    void *arg;
    size_t first, last;
} range_worker;

static void *range_worker_main(void *p) {
    range_worker *w = p;
    w->fn(w->arg, w->first, w->last);
    return NULL;
}

/* fn over [0, n) in contiguous ranges of at least min_each, one per thread (up to
   `workers`). Every element's result is computed the same way whichever thread runs it,
   so the split never changes the output. A thread that cannot start runs on the caller. */
static void run_ranges(range_fn fn, void *arg, size_t n, int workers, size_t min_each) {
    enum { MAX_WORKERS = 64 };
    size_t most = min_each > 0 ? n / min_each : n;
    if (workers > MAX_WORKERS) workers = MAX_WORKERS;
    if ((size_t)workers > most) workers = (int)most;
    if (workers <= 1) {
        if (n > 0) fn(arg, 0, n);
        return;
    }
    range_worker w[MAX_WORKERS];
    pthread_t tid[MAX_WORKERS];
    int started[MAX_WORKERS];
    for (int t = 0; t < workers; t++) {
        w[t].fn = fn;
        w[t].arg = arg;
        w[t].first = n / (size_t)workers * (size_t)t;
        w[t].last = t == workers - 1 ? n : n / (size_t)workers * (size_t)(t + 1);
        started[t] = t > 0 && pthread_create(&tid[t], NULL, range_worker_main, &w[t]) == 0;
    }
    for (int t = 0; t < workers; t++) {
        if (!started[t]) range_worker_main(&w[t]);
    }
    for (int t = 1; t < workers; t++) {
        if (started[t]) pthread_join(tid[t], NULL);
    }
}

/* Below this many elements per thread, starting a thread costs more than it saves. */
enum { ELEMENTS_PER_THREAD = 1 << 16 };

/* ---- SiLU gate ----------------------------------------------------------------------- */

typedef struct {
    const float *g, *u, *dh;
    float *h, *dg, *du;
} silu_args;

static void silu_forward_range(void *p, size_t first, size_t last) {
    const silu_args *a = p;
    const float *g = a->g, *u = a->u;
    float *h = a->h;
    /* h may alias g or u: a chunk is read whole before it is written. */
    for (size_t i0 = first; i0 < last; i0 += CHUNK) {
        size_t m = last - i0 < CHUNK ? last - i0 : CHUNK;
        float tmp[CHUNK];
        for (size_t k = 0; k < m; k++) {
            float gi = g[i0 + k], ui = u[i0 + k];
            tmp[k] = gi / (1.0f + opc_expf(-gi)) * ui;
        }
        memcpy(h + i0, tmp, sizeof(float) * m);
    }
}

static void silu_backward_range(void *p, size_t first, size_t last) {
    const silu_args *a = p;
    const float *g = a->g, *u = a->u, *dh = a->dh;
    float *dg = a->dg, *du = a->du;
    /* dg may alias g or dh, du may alias u: a chunk is read whole before it is written. */
    for (size_t i0 = first; i0 < last; i0 += CHUNK) {
        size_t m = last - i0 < CHUNK ? last - i0 : CHUNK;
        float tg[CHUNK], tu[CHUNK];
        for (size_t k = 0; k < m; k++) {
            float gi = g[i0 + k], ui = u[i0 + k], dhi = dh[i0 + k];
            float sig = 1.0f / (1.0f + opc_expf(-gi));
            tg[k] = dhi * ui * (sig * (1.0f + gi * (1.0f - sig)));
            tu[k] = dhi * (gi * sig);
        }
        memcpy(dg + i0, tg, sizeof(float) * m);
        memcpy(du + i0, tu, sizeof(float) * m);
    }
}

int opc_cpu_silu_gate_forward(opc_context *ctx, size_t n, opc_dev_ptr gp, opc_dev_ptr up, opc_dev_ptr hp) {
    const char *fn = "silu_gate_forward";
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, fn, gp, n);
    REQUIRE_PTR(ctx, fn, up, n);
    REQUIRE_PTR(ctx, fn, hp, n);
    silu_args a = {.g = gp, .u = up, .h = hp};
    run_ranges(silu_forward_range, &a, n, opc_cpu_threads(ctx), ELEMENTS_PER_THREAD);
    return opc_cpu_ok(ctx);
}

int opc_cpu_silu_gate_backward(opc_context *ctx, size_t n, opc_dev_ptr gp, opc_dev_ptr up, opc_dev_ptr dhp,
                               opc_dev_ptr dgp, opc_dev_ptr dup) {
    const char *fn = "silu_gate_backward";
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, fn, gp, n);
    REQUIRE_PTR(ctx, fn, up, n);
    REQUIRE_PTR(ctx, fn, dhp, n);
    REQUIRE_PTR(ctx, fn, dgp, n);
    REQUIRE_PTR(ctx, fn, dup, n);
    silu_args a = {.g = gp, .u = up, .dh = dhp, .dg = dgp, .du = dup};
    run_ranges(silu_backward_range, &a, n, opc_cpu_threads(ctx), ELEMENTS_PER_THREAD);
    return opc_cpu_ok(ctx);
}

/* ---- token cross-entropy ------------------------------------------------------------- */

typedef struct {
    int classes;
    int64_t ignore_index;
    float grad_scale;
    const float *logits;
    const int64_t *labels;
    float *dlogits;
    double *row_loss; /* per row; summed in row order by the caller */
} xent_args;

static void xent_rows(void *p, size_t first, size_t last) {
    const xent_args *a = p;
    int classes = a->classes;
    float grad_scale = a->grad_scale;
    for (size_t i = first; i < last; i++) {
        const float *x = a->logits + i * (size_t)classes;
        float *dx = a->dlogits + i * (size_t)classes;
        int64_t label = a->labels[i];
        if (label == a->ignore_index) {
            for (int j = 0; j < classes; j++) dx[j] = 0.0f;
            a->row_loss[i] = 0;
            continue;
        }
        float mx = row_max(x, classes);
        float target = x[label]; /* read before dx (which may be x) is written */
        double sum = exp_shifted(x, dx, classes, mx);
        a->row_loss[i] = (double)mx + log(sum) - (double)target;
        float factor = (float)((double)grad_scale / sum);
        for (int j = 0; j < classes; j++) dx[j] *= factor;
        dx[label] -= grad_scale;
    }
}

int opc_cpu_token_xent(opc_context *ctx, int rows, int classes, opc_dev_ptr logitsp, opc_dev_ptr labelsp,
                       int64_t ignore_index, float grad_scale, opc_dev_ptr dlogitsp, double *loss_sum_out,
                       int64_t *count_out) {
    const char *fn = "token_xent";
    CHECK_CTX(ctx);
    REQUIRE(ctx, rows >= 0 && classes >= 0, "%s: negative size (rows=%d, classes=%d)", fn, rows, classes);
    REQUIRE(ctx, rows == 0 || classes >= 1, "%s: %d rows with 0 classes", fn, rows);
    REQUIRE_PTR(ctx, fn, logitsp, rows > 0);
    REQUIRE_PTR(ctx, fn, labelsp, rows > 0);
    REQUIRE_PTR(ctx, fn, dlogitsp, rows > 0);
    const int64_t *labels = labelsp;
    for (int i = 0; i < rows; i++) {
        REQUIRE(ctx, labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < classes),
                "%s: label %lld of row %d is outside [0, %d) and is not the ignore index %lld", fn,
                (long long)labels[i], i, classes, (long long)ignore_index);
    }
    double *row_loss = malloc((rows > 0 ? (size_t)rows : 1) * sizeof *row_loss);
    if (!row_loss) return opc_cpu_fail(ctx, OPC_E_NOMEM, "%s: out of memory (%d doubles)", fn, rows);
    xent_args a = {
        .classes = classes, .ignore_index = ignore_index, .grad_scale = grad_scale,
        .logits = logitsp, .labels = labels, .dlogits = dlogitsp, .row_loss = row_loss,
    };
    size_t rows_each = classes > 0 ? ELEMENTS_PER_THREAD / (size_t)classes + 1 : (size_t)rows + 1;
    run_ranges(xent_rows, &a, (size_t)rows, opc_cpu_threads(ctx), rows_each);
    double total = 0;
    int64_t count = 0;
    for (int i = 0; i < rows; i++) {
        if (labels[i] == ignore_index) continue;
        total += row_loss[i];
        count++;
    }
    free(row_loss);
    if (loss_sum_out) *loss_sum_out = total;
    if (count_out) *count_out = count;
    return opc_cpu_ok(ctx);
}
