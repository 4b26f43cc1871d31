/*
 * opconvert kernel plugin ABI, version 3.  (Full prose: docs/plugin-abi.md.)
 *
 * A plugin is a shared library exporting one symbol (C linkage, default visibility):
 *
 *     const opc_plugin *opc_plugin_entry(uint32_t host_abi_version);
 *
 * The host (opconvert) dlopens the library, looks the symbol up and calls it with the
 * newest version it speaks (OPC_PLUGIN_ABI_VERSION); a plugin that cannot serve that
 * version returns NULL and the host asks again for each older version it still speaks.
 * The host checks that the returned table has the abi_version it asked for, a
 * struct_size covering every member of that version (OPC_PLUGIN_V1_SIZE,
 * OPC_PLUGIN_V2_SIZE, OPC_PLUGIN_V3_SIZE) and no NULL function pointer among them. A plugin built for
 * version N serves every host version 1..N, returning a table whose abi_version is the
 * host's and whose struct_size covers at least that version's members.
 * The returned table (and its name/description strings) must stay valid, unchanged,
 * for as long as the library is loaded; the host never writes to it. The host never
 * dlcloses a plugin while a context exists.
 *
 * Versioning: a later version may only append members at the end of the table (and
 * bump struct_size); the members below keep their offsets, types and meaning. A v2
 * host talking to a v1 plugin uses only the v1 members (and does on the host what the
 * v2 kernels would do, or says that the plugin is too old for a feature).
 * Structs passed by pointer (opc_create_options, opc_device_info) start with a
 * struct_size the caller sets; the callee reads or writes only the fields that fit, so
 * they grow by appended fields too.
 *
 * Conventions, for every kernel:
 * - All matrices are row-major f32 in device memory (opc_dev_ptr). On the CPU plugin a
 *   device pointer is a host pointer; on a CUDA plugin it is a cudaMalloc'd pointer, so
 *   the host never dereferences one: it goes through upload/download.
 * - The host may offset a device pointer with byte arithmetic to address a slice of an
 *   allocation (e.g. (char *)p + 4 * offset) and pass the result to any kernel; it never
 *   dereferences it, and passes only pointers returned by alloc to free. A kernel must
 *   therefore accept pointers aligned only to their element size (4 bytes for f32,
 *   8 bytes for int64 labels), not just allocation-aligned ones.
 * - Sizes are element counts unless named "bytes". A negative int size is OPC_E_INVALID.
 *   A call with nothing to do (a zero size) succeeds and may receive NULL pointers.
 * - Calls are ordered: a kernel sees the results of every earlier call on the same
 *   context (a CUDA plugin uses one stream per context). download() is synchronous.
 *   A context is used by one thread at a time; distinct contexts are independent.
 * - Unless a function says an argument may alias another, distinct buffer arguments
 *   must not overlap.
 * - Every function returns 0 on success or a negative OPC_E* code; last_error() then
 *   describes the failure (valid until the next call on that context). A failing call
 *   leaves its outputs unchanged where the plugin can check the arguments up front.
 * - Results must be deterministic for the same inputs and thread count.
 */
#ifndef OPC_PLUGIN_H
#define OPC_PLUGIN_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define OPC_PLUGIN_ABI_VERSION 3u
#define OPC_PLUGIN_ENTRY_SYMBOL "opc_plugin_entry"

enum {
    OPC_OK = 0,
    OPC_E_INVALID = -1,     /* bad argument (NULL, negative size, label out of range, ...) */
    OPC_E_NOMEM = -2,       /* allocation failed */
    OPC_E_DEVICE = -3,      /* device/runtime failure */
    OPC_E_UNSUPPORTED = -4  /* feature not offered by this plugin */
};

typedef struct opc_context opc_context; /* plugin-owned state (threads, handles, streams) */
typedef void *opc_dev_ptr;              /* device memory */

/* create_with_options flags. */
#define OPC_CREATE_ALLOW_TF32 0x1u  /* GEMMs may use TF32 tensor cores (CUDA); default: full FP32 */

typedef struct opc_create_options {
    uint32_t struct_size;   /* sizeof(opc_create_options) as the caller was built */
    int32_t device;         /* device index, 0-based (< probe's device_count) */
    int32_t num_threads;    /* as create's num_threads */
    uint32_t flags;         /* OPC_CREATE_* */
    /* Folder for compiled-kernel caches; NULL = the plugin's default
       ($XDG_CACHE_HOME/opconvert, else $HOME/.cache/opconvert); "" = no disk cache. */
    const char *cache_dir;
} opc_create_options;

typedef struct opc_device_info {
    uint32_t struct_size;        /* sizeof(opc_device_info) as the caller was built */
    int32_t compute_major;       /* CUDA compute capability; 0 on the CPU */
    int32_t compute_minor;
    int32_t multiprocessors;     /* SMs, or CPU threads the plugin would use */
    uint64_t total_memory_bytes; /* device memory (physical memory on the CPU) */
    char name[128];              /* e.g. "NVIDIA H200", "CPU (OpenBLAS 0.3.21, 16 threads)" */
} opc_device_info;

typedef struct opc_plugin {
    uint32_t abi_version;   /* the version the host asked for (1..OPC_PLUGIN_ABI_VERSION) */
    uint32_t struct_size;   /* bytes of this table (>= OPC_PLUGIN_Vn_SIZE of abi_version n) */
    const char *name;       /* e.g. "cpu-openblas" */
    const char *description;

    /* --- context --------------------------------------------------------------- */
    /* *out = a new context. num_threads > 0: worker threads the plugin may use (the CPU
       plugin sets the OpenBLAS thread count, which is process-wide); <= 0: plugin default.
       On failure *out is NULL. */
    int (*create)(opc_context **out, int num_threads);
    /* Frees the context. The host frees its allocations before; destroy(NULL) is a no-op. */
    void (*destroy)(opc_context *ctx);
    /* Text of the last failure on ctx ("" if none); never NULL, owned by the context. */
    const char *(*last_error)(opc_context *ctx);

    /* --- memory ---------------------------------------------------------------- */
    /* *out = bytes of zero-filled device memory, aligned to at least 64 bytes. bytes == 0
       returns a valid, distinct pointer that must still be freed. */
    int (*alloc)(opc_context *ctx, size_t bytes, opc_dev_ptr *out);
    /* Frees a pointer returned by alloc on this context; free(ctx, NULL) is a no-op. */
    int (*free)(opc_context *ctx, opc_dev_ptr p);
    /* Host -> device, synchronous with respect to src (src may be reused on return). */
    int (*upload)(opc_context *ctx, opc_dev_ptr dst, const void *src, size_t bytes);
    /* Device -> host; returns when dst holds the data. */
    int (*download)(opc_context *ctx, void *dst, opc_dev_ptr src, size_t bytes);
    /* Device -> device; dst and src may overlap (memmove semantics). */
    int (*copy)(opc_context *ctx, opc_dev_ptr dst, opc_dev_ptr src, size_t bytes);
    /* x[0..n) = value (n f32 elements). */
    int (*fill)(opc_context *ctx, opc_dev_ptr x, float value, size_t n);

    /* --- dense linear algebra ------------------------------------------------------ */
    /* C[m,n] = alpha * op(A) op(B) + beta * C, op(X) = X or X^T (trans_* != 0), row-major,
       lda/ldb/ldc are row strides in elements of the matrices as stored:
       A is stored [m,k] (lda >= max(1,k)) or, transposed, [k,m] (lda >= max(1,m));
       B is stored [k,n] (ldb >= max(1,n)) or, transposed, [n,k] (ldb >= max(1,k));
       ldc >= max(1,n). beta == 0 overwrites C without reading it (BLAS semantics);
       k == 0 gives C = beta * C. C must not overlap A or B. */
    int (*gemm)(opc_context *ctx, int trans_a, int trans_b, int m, int n, int k, float alpha,
                opc_dev_ptr a, int lda, opc_dev_ptr b, int ldb, float beta, opc_dev_ptr c, int ldc);

    /* --- element-wise (n elements unless stated) -------------------------------------- */
    int (*axpy)(opc_context *ctx, size_t n, float alpha, opc_dev_ptr x, opc_dev_ptr y); /* y += alpha x */
    int (*scale)(opc_context *ctx, size_t n, float alpha, opc_dev_ptr x);              /* x *= alpha */
    /* y = max(x, 0); y may alias x. */
    int (*relu_forward)(opc_context *ctx, size_t n, opc_dev_ptr x, opc_dev_ptr y);
    /* dx = dy where x > 0 else 0 (x is the pre-activation); dx may alias dy. */
    int (*relu_backward)(opc_context *ctx, size_t n, opc_dev_ptr x, opc_dev_ptr dy, opc_dev_ptr dx);

    /* --- row/column operations on a [rows, cols] matrix (contiguous, row stride cols) -- */
    int (*add_row_vector)(opc_context *ctx, int rows, int cols, opc_dev_ptr v, opc_dev_ptr x); /* x[i,:] += v */
    /* out[j] = beta*out[j] + sum_i x[i,j]  (bias gradients); beta == 0 overwrites out
       without reading it. */
    int (*sum_rows)(opc_context *ctx, int rows, int cols, opc_dev_ptr x, float beta, opc_dev_ptr out);
    int (*row_norms)(opc_context *ctx, int rows, int cols, opc_dev_ptr x, opc_dev_ptr out);     /* out[i] = ||x[i,:]||_2 */
    int (*scale_rows)(opc_context *ctx, int rows, int cols, opc_dev_ptr s, opc_dev_ptr x);      /* x[i,:] *= s[i] */
    int (*row_dots)(opc_context *ctx, int rows, int cols, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out); /* out[i] = a[i,:].b[i,:] */

    /* --- loss --------------------------------------------------------------------- */
    /* Mean softmax cross-entropy over rows of logits[rows, classes] with int64 labels
       (device memory). Writes dlogits = (softmax - onehot) / rows, *loss_out = mean loss
       and *correct_out = number of rows whose argmax (first max) equals the label (host
       pointers; either may be NULL). A label outside [0, classes) is OPC_E_INVALID (checked
       before anything is written). classes >= 1 when rows > 0. dlogits may be logits
       itself (in place). Numerically stable: max-subtracted, log-sum-exp in double. */
    int (*softmax_xent)(opc_context *ctx, int rows, int classes, opc_dev_ptr logits, opc_dev_ptr labels,
                        opc_dev_ptr dlogits, float *loss_out, int64_t *correct_out);
    /* *out = sum of squares of x (host pointer), accumulated in double. */
    int (*sum_squares)(opc_context *ctx, size_t n, opc_dev_ptr x, double *out);

    /* --- optimizer ------------------------------------------------------------------- */
    /* Decoupled AdamW (Loshchilov & Hutter, as torch.optim.AdamW, amsgrad=False,
       maximize=False), in place on p, m, v (m and v start zero-filled), step t >= 1:
       p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
       p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
       As torch evaluates it: the bias corrections 1-b^t in double, then per element in f32
       p *= 1 - lr*wd; m += (1-b1)*(g - m); v = b2*v + (1-b2)*g*g;
       p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps). t < 1 is OPC_E_INVALID. */
    int (*adamw)(opc_context *ctx, size_t n, opc_dev_ptr p, opc_dev_ptr g, opc_dev_ptr m, opc_dev_ptr v,
                 float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t);

    /* ===== version 2: appended members ================================================ */

    /* --- discovery (no context needed; any thread, any number of times) --------------- */
    /* Whether the plugin can run on this machine. Cheap, with no effect beyond loading the
       libraries it needs. OPC_OK with *device_count >= 1 (devices it can create contexts
       on), or a negative code (OPC_E_UNSUPPORTED: a library or driver is missing;
       OPC_E_DEVICE: present but failing, or no device) with *device_count = 0 and why
       saying what is missing and what was tried, e.g. "libcuda.so.1 (the NVIDIA driver)
       not found; tried: ...". why (NUL-terminated, truncated to why_len) is written on
       success too ("" or a note); device_count and why may be NULL / 0. */
    int (*probe)(int *device_count, char *why, size_t why_len);
    /* Describes device index `device` (0-based, < probe's count) into *info, writing only
       the fields that fit in info->struct_size (which the caller sets). */
    int (*device_info)(int device, opc_device_info *info, char *why, size_t why_len);

    /* --- context with options ----------------------------------------------------------- */
    /* As create, with options (NULL = defaults: device 0, plugin's thread count, no TF32,
       default cache). On failure *out is NULL and why says why (the context that would
       hold last_error does not exist). */
    int (*create_with_options)(const opc_create_options *options, opc_context **out,
                               char *why, size_t why_len);

    /* --- ahead-of-time checks ----------------------------------------------------------- */
    /* Compiles every kernel the plugin would compile at run time for `target` (e.g. "sm_80",
       "sm_90"), with no device needed, and discards the result. OPC_OK and log = a one-line
       summary ("12 kernels, 48 KiB cubin"); a failure writes the compiler's log.
       OPC_E_UNSUPPORTED: the plugin compiles nothing at run time (the CPU plugin). */
    int (*compile_kernels)(const char *target, char *log, size_t log_len);

    /* --- element-wise, v2 (n elements; out may alias a or b) ----------------------------- */
    int (*divide)(opc_context *ctx, size_t n, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out);   /* out = a / b */
    int (*multiply)(opc_context *ctx, size_t n, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out); /* out = a * b */

    /* ===== version 3: transformer (LLaMA-family decoder) kernels, appended ============== */
    /* Layouts: activations are [tokens, features] row-major with tokens = batch * seq (row
       b*seq + t is sequence b, position t). Token ids and positions are int32 device arrays,
       labels int64. A bad id/position/label is OPC_E_INVALID, checked before anything is
       written. Reductions (norm statistics, softmax sums, losses) accumulate in double and
       in a fixed order, so results are deterministic. */

    /* out[t, :] = table[ids[t], :] for t < tokens (ids in [0, vocab)). */
    int (*embedding_forward)(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr table,
                             opc_dev_ptr ids, opc_dev_ptr out);
    /* dtable[ids[t], :] += dout[t, :] for t in increasing order (accumulates: dtable is not
       cleared), deterministic. */
    int (*embedding_backward)(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr ids,
                              opc_dev_ptr dout, opc_dev_ptr dtable);

    /* RMSNorm as LLaMA: rstd[i] = 1 / sqrt(mean_j x[i,j]^2 + eps) (mean in double, rstd
       rounded to f32), y[i,j] = w[j] * (x[i,j] * rstd[i]). rstd may be NULL (not saved).
       y may alias x. */
    int (*rmsnorm_forward)(opc_context *ctx, int rows, int dim, float eps, opc_dev_ptr x, opc_dev_ptr w,
                           opc_dev_ptr y, opc_dev_ptr rstd);
    /* From the forward's x and rstd: with g = w * dy,
       dx[i,j] = rstd[i] * (g[i,j] - x[i,j] * rstd[i]^2 * mean_k(g[i,k] x[i,k]))  (overwritten);
       dw[j] += sum_i dy[i,j] * x[i,j] * rstd[i] when dw != NULL. dx may alias dy. */
    int (*rmsnorm_backward)(opc_context *ctx, int rows, int dim, opc_dev_ptr x, opc_dev_ptr w, opc_dev_ptr rstd,
                            opc_dev_ptr dy, opc_dev_ptr dx, opc_dev_ptr dw);

    /* Rotary embedding in place, Hugging Face's rotate_half layout: x is [rows, heads,
       head_dim] (head_dim even, half = head_dim / 2); row r has position p = positions[r] in
       [0, table_rows) and, for i < half, c = cos[p, i], s = sin[p, i] (tables [table_rows,
       half], made by the host as transformers makes them):
         x'[i] = x[i] c - x[i + half] s ;  x'[i + half] = x[i + half] c + x[i] s.
       inverse != 0 applies the transpose (s -> -s): the backward pass. */
    int (*rope)(opc_context *ctx, int rows, int heads, int head_dim, opc_dev_ptr x, opc_dev_ptr positions,
                int table_rows, opc_dev_ptr cos, opc_dev_ptr sin, int inverse);

    /* Causal grouped-query attention. q, out: [batch*seq, heads*head_dim]; k, v:
       [batch*seq, kv_heads*head_dim]; query head h uses kv head h / (heads / kv_heads)
       (heads % kv_heads == 0). probs: [batch, heads, seq, seq], written:
       probs[b,h,i,j] = softmax_j<=i(scale * q[b,i,h] . k[b,j,kvh]) for j <= i, 0 for j > i
       (max-subtracted, sum in double). out[b,i,h] = sum_j probs[b,h,i,j] v[b,j,kvh]. */
    int (*attention_forward)(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                             float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                             opc_dev_ptr out);
    /* Gradients from the forward's probs: dq, dk, dv overwritten (shapes of q, k, v; dk and dv
       sum over the query heads sharing a kv head):
       dP = dout . v^T, dS = P * (dP - rowsum(dP * P)), dq = scale dS k, dk = scale dS^T q,
       dv = P^T dout. */
    int (*attention_backward)(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                              float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                              opc_dev_ptr dout, opc_dev_ptr dq, opc_dev_ptr dk, opc_dev_ptr dv);

    /* SwiGLU gate, n elements: h = silu(g) * u, silu(g) = g / (1 + exp(-g)). h may alias g or u. */
    int (*silu_gate_forward)(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr h);
    /* dg = dh * u * silu'(g), du = dh * silu(g), silu'(g) = sig(g) (1 + g (1 - sig(g))).
       dg may alias g or dh; du may alias u (read before written, per element). */
    int (*silu_gate_backward)(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr dh,
                              opc_dev_ptr dg, opc_dev_ptr du);

    /* Token cross-entropy over rows of logits[rows, classes], int64 labels; rows whose label
       is ignore_index (e.g. -100) count for nothing and get a zero dlogits row; any other
       label outside [0, classes) is OPC_E_INVALID. dlogits = (softmax - onehot) * grad_scale
       (the host passes 1 / tokens counted over the whole optimizer step); dlogits may be
       logits (in place). *loss_sum_out (host; may be NULL) = sum of -log softmax[label] over
       counted rows, in double; *count_out (host; may be NULL) = counted rows. */
    int (*token_xent)(opc_context *ctx, int rows, int classes, opc_dev_ptr logits, opc_dev_ptr labels,
                      int64_t ignore_index, float grad_scale, opc_dev_ptr dlogits, double *loss_sum_out,
                      int64_t *count_out);
} opc_plugin;

/* Older name of the table type, kept so version 1 sources still compile. It is the WHOLE
   current table: a plugin serving only version 1 must set abi_version = 1 and
   struct_size = OPC_PLUGIN_V1_SIZE explicitly (not OPC_PLUGIN_ABI_VERSION and
   sizeof(opc_plugin_v1), which now describe version 2 and make the host demand every v2
   member). */
typedef opc_plugin opc_plugin_v1;

/* Bytes of the table a plugin of each version must provide (struct_size >= this). */
#define OPC_PLUGIN_V1_SIZE offsetof(opc_plugin, probe)
#define OPC_PLUGIN_V2_SIZE (offsetof(opc_plugin, multiply) + sizeof(void *))
#define OPC_PLUGIN_V3_SIZE (offsetof(opc_plugin, token_xent) + sizeof(void *))

typedef const opc_plugin *(*opc_plugin_entry_fn)(uint32_t host_abi_version);

#ifdef __cplusplus
}
#endif
#endif /* OPC_PLUGIN_H */
