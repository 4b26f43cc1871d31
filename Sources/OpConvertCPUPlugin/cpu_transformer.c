/*
 * opconvert CPU kernel plugin: the ABI v3 transformer kernels (see opc_plugin.h).
 *
 * Attention runs per (batch, head) on cblas_sgemm over the strided q/k/v views directly
 * (row stride heads*head_dim), block by block along the causal triangle so that about
 * half of the score matrix is never computed. Everything else is a plain single-threaded
 * loop; reductions accumulate in double in a fixed order, so results are deterministic
 * for a given OpenBLAS thread count. Every argument (sizes, pointers, ids, positions,
 * labels) is checked before anything is written.
 */
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_CTX(ctx) do { if (!(ctx)) return OPC_E_INVALID; } while (0)
#define REQUIRE(ctx, cond, ...) do { if (!(cond)) return opc_cpu_fail((ctx), OPC_E_INVALID, __VA_ARGS__); } while (0)
#define REQUIRE_PTR(ctx, fn, p, needed) REQUIRE(ctx, !(needed) || (p) != NULL, "%s: %s is NULL", fn, #p)

/* Rows of the causal triangle handled per GEMM: small enough to skip most of the masked
   upper half, large enough for sgemm to run near its peak. */
enum { ATTENTION_BLOCK = 64 };

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
        float mx = row[0];
        for (int j = 1; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
        double sum = 0;
        for (int j = 0; j <= i; j++) {
            float e = expf(row[j] - mx);
            row[j] = e;
            sum += (double)e;
        }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j <= i; j++) row[j] *= inv;
        for (int j = i + 1; j < seq; j++) row[j] = 0.0f;
    }
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
    const float *q = qp, *k = kp, *v = vp;
    float *probs = probsp, *out = outp;
    int ldq = heads * head_dim, ldk = kv_heads * head_dim, group = heads / kv_heads;
    size_t square = (size_t)seq * (size_t)seq;
    for (int b = 0; b < batch; b++) {
        size_t qrow0 = (size_t)b * (size_t)seq * (size_t)ldq, krow0 = (size_t)b * (size_t)seq * (size_t)ldk;
        for (int h = 0; h < heads; h++) {
            const float *qh = q + qrow0 + (size_t)h * (size_t)head_dim;
            const float *kh = k + krow0 + (size_t)(h / group) * (size_t)head_dim;
            const float *vh = v + krow0 + (size_t)(h / group) * (size_t)head_dim;
            float *p = probs + ((size_t)b * (size_t)heads + (size_t)h) * square;
            float *oh = out + qrow0 + (size_t)h * (size_t)head_dim;
            for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK) {
                int i1 = i0 + ATTENTION_BLOCK < seq ? i0 + ATTENTION_BLOCK : seq;
                attention_probs_block(seq, head_dim, scale, qh, ldq, kh, ldk, p, i0, i1);
                /* out rows [i0, i1) = P[i0:i1, 0:i1] V[0:i1] (P is zero past the diagonal). */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, head_dim, i1, 1.0f,
                            p + (size_t)i0 * (size_t)seq, seq, vh, ldk, 0.0f, oh + (size_t)i0 * (size_t)ldq, ldq);
            }
        }
    }
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
    const float *q = qp, *k = kp, *v = vp, *probs = probsp, *dout = doutp;
    float *dq = dqp, *dk = dkp, *dv = dvp;
    int ldq = heads * head_dim, ldk = kv_heads * head_dim, group = heads / kv_heads;
    size_t square = (size_t)seq * (size_t)seq;
    float *ds = malloc(square * sizeof *ds); /* dP, then dS, of one (b, h) */
    if (!ds) return opc_cpu_fail(ctx, OPC_E_NOMEM, "%s: out of memory (%zu floats of scratch)", fn, square);
    for (int b = 0; b < batch; b++) {
        size_t qrow0 = (size_t)b * (size_t)seq * (size_t)ldq, krow0 = (size_t)b * (size_t)seq * (size_t)ldk;
        for (int g = 0; g < kv_heads; g++) {
            const float *kg = k + krow0 + (size_t)g * (size_t)head_dim, *vg = v + krow0 + (size_t)g * (size_t)head_dim;
            float *dkg = dk + krow0 + (size_t)g * (size_t)head_dim, *dvg = dv + krow0 + (size_t)g * (size_t)head_dim;
            for (int hh = 0; hh < group; hh++) {
                int h = g * group + hh;
                /* The first head of the group overwrites dk/dv, the others add, in head order. */
                float beta = hh == 0 ? 0.0f : 1.0f;
                const float *qh = q + qrow0 + (size_t)h * (size_t)head_dim;
                const float *doh = dout + qrow0 + (size_t)h * (size_t)head_dim;
                float *dqh = dq + qrow0 + (size_t)h * (size_t)head_dim;
                const float *p = probs + ((size_t)b * (size_t)heads + (size_t)h) * square;
                for (int i0 = 0; i0 < seq; i0 += ATTENTION_BLOCK) {
                    int i1 = i0 + ATTENTION_BLOCK < seq ? i0 + ATTENTION_BLOCK : seq;
                    /* dP rows [i0, i1) = dO V^T over keys [0, i1). */
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1, head_dim, 1.0f,
                                doh + (size_t)i0 * (size_t)ldq, ldq, vg, ldk, 0.0f, ds + (size_t)i0 * (size_t)seq, seq);
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
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, head_dim, i1, scale,
                                ds + (size_t)i0 * (size_t)seq, seq, kg, ldk, 0.0f, dqh + (size_t)i0 * (size_t)ldq, ldq);
                }
                /* Key rows [j0, j1) get contributions from query rows i >= j0 only. */
                for (int j0 = 0; j0 < seq; j0 += ATTENTION_BLOCK) {
                    int j1 = j0 + ATTENTION_BLOCK < seq ? j0 + ATTENTION_BLOCK : seq;
                    size_t corner = (size_t)j0 * (size_t)seq + (size_t)j0;
                    /* dK[j0:j1] (+)= scale dS[j0:, j0:j1]^T Q[j0:];  dV[j0:j1] (+)= P[j0:, j0:j1]^T dO[j0:]. */
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, head_dim, seq - j0, scale,
                                ds + corner, seq, qh + (size_t)j0 * (size_t)ldq, ldq, beta,
                                dkg + (size_t)j0 * (size_t)ldk, ldk);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j1 - j0, head_dim, seq - j0, 1.0f,
                                p + corner, seq, doh + (size_t)j0 * (size_t)ldq, ldq, beta,
                                dvg + (size_t)j0 * (size_t)ldk, ldk);
                }
            }
        }
    }
    free(ds);
    return opc_cpu_ok(ctx);
}

/* ---- SiLU gate ----------------------------------------------------------------------- */

int opc_cpu_silu_gate_forward(opc_context *ctx, size_t n, opc_dev_ptr gp, opc_dev_ptr up, opc_dev_ptr hp) {
    const char *fn = "silu_gate_forward";
    CHECK_CTX(ctx);
    REQUIRE_PTR(ctx, fn, gp, n);
    REQUIRE_PTR(ctx, fn, up, n);
    REQUIRE_PTR(ctx, fn, hp, n);
    const float *g = gp, *u = up;
    float *h = hp;
    /* h may alias g or u: both are read before h[i] is written. */
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], ui = u[i];
        h[i] = gi / (1.0f + expf(-gi)) * ui;
    }
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
    const float *g = gp, *u = up, *dh = dhp;
    float *dg = dgp, *du = dup;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i], ui = u[i], dhi = dh[i];
        float sig = 1.0f / (1.0f + expf(-gi));
        dg[i] = dhi * ui * (sig * (1.0f + gi * (1.0f - sig)));
        du[i] = dhi * (gi * sig);
    }
    return opc_cpu_ok(ctx);
}

/* ---- token cross-entropy ------------------------------------------------------------- */

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
    const float *logits = logitsp;
    const int64_t *labels = labelsp;
    float *dlogits = dlogitsp;
    for (int i = 0; i < rows; i++) {
        REQUIRE(ctx, labels[i] == ignore_index || (labels[i] >= 0 && labels[i] < classes),
                "%s: label %lld of row %d is outside [0, %d) and is not the ignore index %lld", fn,
                (long long)labels[i], i, classes, (long long)ignore_index);
    }
    double total = 0;
    int64_t count = 0;
    for (int i = 0; i < rows; i++) {
        const float *x = logits + (size_t)i * (size_t)classes;
        float *dx = dlogits + (size_t)i * (size_t)classes;
        int64_t label = labels[i];
        if (label == ignore_index) {
            for (int j = 0; j < classes; j++) dx[j] = 0.0f;
            continue;
        }
        float mx = x[0];
        for (int j = 1; j < classes; j++) mx = x[j] > mx ? x[j] : mx;
        float target = x[label]; /* read before dx (which may be x) is written */
        double sum = 0;
        for (int j = 0; j < classes; j++) {
            float e = expf(x[j] - mx);
            dx[j] = e;
            sum += (double)e;
        }
        total += (double)mx + log(sum) - (double)target;
        count++;
        float factor = (float)((double)grad_scale / sum);
        for (int j = 0; j < classes; j++) dx[j] *= factor;
        dx[label] -= grad_scale;
    }
    if (loss_sum_out) *loss_sum_out = total;
    if (count_out) *count_out = count;
    return opc_cpu_ok(ctx);
}
