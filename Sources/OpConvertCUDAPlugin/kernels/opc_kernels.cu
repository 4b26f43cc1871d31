// opconvert CUDA kernels, compiled at run time by NVRTC (see cuda_kernels_build.c).
// Embedded into the plugin as a string by scripts/embed-cuda-kernels.sh; no includes,
// so it compiles with NVRTC alone. Every kernel is extern "C" so its cubin symbol is its
// name, and its parameter list must match the argument arrays in cuda_plugin.c exactly.
//
// Conventions: element counts are opc_count (64-bit, like size_t on the host); loops are
// grid-stride; pointers are only assumed 4-byte (f32) / 8-byte (int64) aligned, so all
// loads are scalar. Reductions use fixed-order trees (no atomics): results depend only on
// the inputs and launch shape, which depends only on the sizes.

typedef unsigned long long opc_count;

#define OPC_GRID_STRIDE(i, n)                                                   \
    for (opc_count i = (opc_count)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (opc_count)gridDim.x * blockDim.x)

// ---- element-wise --------------------------------------------------------------------

extern "C" __global__ void opc_axpy(opc_count n, float alpha, const float *x, float *y) {
    OPC_GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

extern "C" __global__ void opc_scale(opc_count n, float alpha, float *x) {
    OPC_GRID_STRIDE(i, n) x[i] *= alpha;
}

// y may alias x: each element is read, then written, by one thread.
extern "C" __global__ void opc_relu_forward(opc_count n, const float *x, float *y) {
    OPC_GRID_STRIDE(i, n) {
        float xi = x[i];
        y[i] = xi > 0.0f ? xi : 0.0f;
    }
}

extern "C" __global__ void opc_relu_backward(opc_count n, const float *x, const float *dy, float *dx) {
    OPC_GRID_STRIDE(i, n) {
        float g = dy[i];
        dx[i] = x[i] > 0.0f ? g : 0.0f;
    }
}

extern "C" __global__ void opc_divide(opc_count n, const float *a, const float *b, float *out) {
    OPC_GRID_STRIDE(i, n) {
        float ai = a[i], bi = b[i];
        out[i] = ai / bi;
    }
}

extern "C" __global__ void opc_multiply(opc_count n, const float *a, const float *b, float *out) {
    OPC_GRID_STRIDE(i, n) {
        float ai = a[i], bi = b[i];
        out[i] = ai * bi;
    }
}

// x[i, j] += v[j] over a contiguous [total / cols, cols] matrix.
extern "C" __global__ void opc_add_row_vector(opc_count total, int cols, const float *v, float *x) {
    OPC_GRID_STRIDE(i, total) x[i] += v[i % (opc_count)cols];
}

// x[i, j] *= s[i].
extern "C" __global__ void opc_scale_rows(opc_count total, int cols, const float *s, float *x) {
    OPC_GRID_STRIDE(i, total) x[i] *= s[i / (opc_count)cols];
}

// C[m, n] (row stride ldc) = beta * C; beta == 0 writes zeros without reading C (gemm, k == 0).
extern "C" __global__ void opc_scale_matrix(int m, int n, int ldc, float beta, float *c) {
    opc_count total = (opc_count)m * (opc_count)n;
    OPC_GRID_STRIDE(idx, total) {
        opc_count i = idx / (opc_count)n, j = idx % (opc_count)n;
        float *cij = c + i * (opc_count)ldc + j;
        *cij = beta == 0.0f ? 0.0f : beta * *cij;
    }
}

// AdamW as torch evaluates it; the host computes the scalars in double (see cuda_plugin.c).
extern "C" __global__ void opc_adamw(opc_count n, float *p, const float *g, float *m, float *v,
                                     float decay, float neg_step, float bc2_sqrt, float one_m_b1,
                                     float one_m_b2, float beta2, float eps, int lerp_small) {
    OPC_GRID_STRIDE(i, n) {
        float gi = g[i];
        float mi0 = m[i];
        float pi = p[i] * decay;
        float mi = lerp_small ? mi0 + one_m_b1 * (gi - mi0) : gi - (gi - mi0) * (1.0f - one_m_b1);
        float vi = v[i] * beta2 + one_m_b2 * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + neg_step * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

// ---- reductions ----------------------------------------------------------------------

#define OPC_FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp; every lane gets the same bits (a + b == b + a exactly).
__device__ double opc_warp_sum(double s) {
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(OPC_FULL_MASK, s, offset);
    return s;
}

// Block of 256 threads: fixed-order tree in shared memory; the result is valid in thread 0.
__device__ double opc_block_sum_256(double s, double *shared) {
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    return shared[0];
}

// Pass 1 of sum_rows: partial[chunk, j] = sum of x[r, j] over the chunk's rows, in order (f32).
// Grid: x covers columns (256 per block), y = chunk index.
extern "C" __global__ void opc_sum_rows_partial(int rows, int cols, int rows_per_chunk, const float *x,
                                                float *partial) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    int chunk = blockIdx.y;
    long long begin = (long long)chunk * rows_per_chunk;
    long long end = begin + rows_per_chunk;
    if (end > rows) end = rows;
    float s = 0.0f;
    for (long long r = begin; r < end; r++) s += x[(opc_count)r * (opc_count)cols + (opc_count)j];
    partial[(opc_count)chunk * (opc_count)cols + (opc_count)j] = s;
}

// Pass 2: out[j] = beta * out[j] + sum over chunks (in order); beta == 0 does not read out.
extern "C" __global__ void opc_sum_rows_finish(int cols, int chunks, const float *partial, float beta,
                                               float *out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    float s = 0.0f;
    for (int c = 0; c < chunks; c++) s += partial[(opc_count)c * (opc_count)cols + (opc_count)j];
    out[j] = beta == 0.0f ? s : beta * out[j] + s;
}

// One warp per row (8 rows per 256-thread block): out[row] = ||x[row, :]||_2, in double.
extern "C" __global__ void opc_row_norms(int rows, int cols, const float *x, float *out) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps exit together: row depends only on the warp
    const float *xr = x + (opc_count)row * (opc_count)cols;
    double s = 0.0;
    for (int j = lane; j < cols; j += 32) s += (double)xr[j] * (double)xr[j];
    s = opc_warp_sum(s);
    if (lane == 0) out[row] = (float)sqrt(s);
}

// One warp per row: out[row] = a[row, :] . b[row, :], in double.
extern "C" __global__ void opc_row_dots(int rows, int cols, const float *a, const float *b, float *out) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *ar = a + (opc_count)row * (opc_count)cols;
    const float *br = b + (opc_count)row * (opc_count)cols;
    double s = 0.0;
    for (int j = lane; j < cols; j += 32) s += (double)ar[j] * (double)br[j];
    s = opc_warp_sum(s);
    if (lane == 0) out[row] = (float)s;
}

// Pass 1 of sum_squares: partial[block] = sum of x[i]^2 over the block's grid-stride share.
// 256 threads per block.
extern "C" __global__ void opc_sum_squares_partial(opc_count n, const float *x, double *partial) {
    __shared__ double shared[256];
    double s = 0.0;
    OPC_GRID_STRIDE(i, n) s += (double)x[i] * (double)x[i];
    double total = opc_block_sum_256(s, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// Pass 2 (one block of 256 threads): *out = sum of partial[0..count).
extern "C" __global__ void opc_sum_doubles(int count, const double *partial, double *out) {
    __shared__ double shared[256];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += 256) s += partial[i];
    double total = opc_block_sum_256(s, shared);
    if (threadIdx.x == 0) *out = total;
}

// ---- softmax cross-entropy -------------------------------------------------------------

// Sets *bad = 1 when any label is outside [0, classes). Every writer writes the same value.
extern "C" __global__ void opc_xent_validate(int rows, int classes, const long long *labels, int *bad) {
    OPC_GRID_STRIDE(i, (opc_count)rows) {
        long long label = labels[i];
        if (label < 0 || label >= classes) *bad = 1;
    }
}

// One warp per row (8 rows per block), after opc_xent_validate on the same stream: when it
// flagged a bad label nothing is written at all. Writes dlogits = (softmax - onehot) *
// inv_rows, row_loss[row] = lse - x[label] and row_correct[row] = (first argmax == label).
// dlogits may be logits: every element is read and rewritten only by the lane that owns its
// column (j = lane, lane + 32, ...).
extern "C" __global__ void opc_xent_rows(int rows, int classes, const float *logits, const long long *labels,
                                         float *dlogits, float inv_rows, double *row_loss, int *row_correct,
                                         const int *bad) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows || *bad) return;
    const float *x = logits + (opc_count)row * (opc_count)classes;
    float *dx = dlogits + (opc_count)row * (opc_count)classes;
    int label = (int)labels[row];

    // First maximum: per lane over its columns (strict >, ascending j), then across lanes
    // preferring the larger value, and on equal values the smaller index.
    float mx = -__int_as_float(0x7f800000);  // -inf
    int arg = 0x7fffffff;
    for (int j = lane; j < classes; j += 32) {
        float xj = x[j];
        if (arg == 0x7fffffff || xj > mx) { mx = xj; arg = j; }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other_mx = __shfl_xor_sync(OPC_FULL_MASK, mx, offset);
        int other_arg = __shfl_xor_sync(OPC_FULL_MASK, arg, offset);
        bool take = other_arg != 0x7fffffff &&
                    (arg == 0x7fffffff || other_mx > mx || (other_mx == mx && other_arg < arg));
        if (take) { mx = other_mx; arg = other_arg; }
    }

    double sum = 0.0;
    for (int j = lane; j < classes; j += 32) sum += exp((double)x[j] - (double)mx);
    sum = opc_warp_sum(sum);
    double lse = (double)mx + log(sum);

    for (int j = lane; j < classes; j += 32) {
        float xj = x[j];
        double p = exp((double)xj - lse);
        float d = (float)p * inv_rows;
        if (j == label) {
            d -= inv_rows;
            row_loss[row] = lse - (double)xj;
        }
        dx[j] = d;
    }
    if (lane == 0) row_correct[row] = arg == label ? 1 : 0;
}

// One block of 256 threads: out[0] = sum of row_loss (double), out_correct[0] = count
// (nothing when a label was bad: the rows were not computed).
extern "C" __global__ void opc_xent_finish(int rows, const double *row_loss, const int *row_correct,
                                           double *out_loss, long long *out_correct, const int *bad) {
    if (*bad) return;  // uniform across the block: no thread reaches a barrier alone
    __shared__ double shared[256];
    double s = 0.0, c = 0.0;
    for (int i = threadIdx.x; i < rows; i += 256) {
        s += row_loss[i];
        c += (double)row_correct[i];  // exact: counts stay far below 2^53
    }
    double total = opc_block_sum_256(s, shared);
    __syncthreads();
    double correct = opc_block_sum_256(c, shared);
    if (threadIdx.x == 0) {
        *out_loss = total;
        *out_correct = (long long)correct;
    }
}

// ---- transformer kernels (ABI v3) -------------------------------------------------------

// Block of 256 threads: the maximum of s over the block, valid in every thread. max is
// exact and order-free, so any tree gives the same bits (no NaN inputs expected).
__device__ float opc_block_max_256(float s, float *shared) {
    shared[threadIdx.x] = s;
    __syncthreads();
    for (int half = 128; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half && shared[threadIdx.x + half] > shared[threadIdx.x])
            shared[threadIdx.x] = shared[threadIdx.x + half];
        __syncthreads();
    }
    float result = shared[0];
    __syncthreads();  // every thread has read shared[0] before the array is reused
    return result;
}

// opc_block_sum_256, valid in every thread, and the array reusable afterwards.
__device__ double opc_block_sum_all_256(double s, double *shared) {
    double result = opc_block_sum_256(s, shared);
    __syncthreads();
    return result;
}

// Sets *bad = 1 when any of values[0..count) is outside [0, limit) (token ids, positions).
extern "C" __global__ void opc_index_validate(int count, int limit, const int *values, int *bad) {
    OPC_GRID_STRIDE(i, (opc_count)count) {
        int v = values[i];
        if (v < 0 || v >= limit) *bad = 1;
    }
}

// out[t, :] = table[ids[t], :]; nothing when opc_index_validate flagged a bad id.
extern "C" __global__ void opc_embedding_forward(opc_count total, int dim, const float *table, const int *ids,
                                                 float *out, const int *bad) {
    if (*bad) return;
    OPC_GRID_STRIDE(i, total) {
        opc_count t = i / (opc_count)dim, j = i % (opc_count)dim;
        out[i] = table[(opc_count)ids[t] * (opc_count)dim + j];
    }
}

// dtable[ids[t], j] += dout[t, j]: one thread per column j walks the tokens in increasing
// order, so every element is accumulated in the order the ABI fixes, with no atomics.
extern "C" __global__ void opc_embedding_backward(int tokens, int dim, const int *ids, const float *dout,
                                                  float *dtable, const int *bad) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim || *bad) return;
    for (int t = 0; t < tokens; t++)
        dtable[(opc_count)ids[t] * (opc_count)dim + (opc_count)j] += dout[(opc_count)t * (opc_count)dim + (opc_count)j];
}

// One warp per row (8 rows per block): rstd = 1 / sqrt(mean x^2 + eps) in double, rounded to
// f32; y = w * (x * rstd). y may alias x: each lane rewrites only the columns it read.
extern "C" __global__ void opc_rmsnorm_forward(int rows, int dim, float eps, const float *x, const float *w, float *y,
                                               float *rstd) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *xr = x + (opc_count)row * (opc_count)dim;
    float *yr = y + (opc_count)row * (opc_count)dim;
    double s = 0.0;
    for (int j = lane; j < dim; j += 32) s += (double)xr[j] * (double)xr[j];
    s = opc_warp_sum(s);
    float r = (float)(1.0 / sqrt(s / (double)dim + (double)eps));
    for (int j = lane; j < dim; j += 32) yr[j] = w[j] * (xr[j] * r);
    if (lane == 0 && rstd) rstd[row] = r;
}

// One warp per row: with g = w * dy and m = mean_k(g x) (double),
// dx = rstd * (g - x * rstd^2 * m). dx may alias dy (each lane reads its columns first).
extern "C" __global__ void opc_rmsnorm_backward_dx(int rows, int dim, const float *x, const float *w,
                                                   const float *rstd, const float *dy, float *dx) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    opc_count base = (opc_count)row * (opc_count)dim;
    double s = 0.0;
    for (int j = lane; j < dim; j += 32) s += (double)(w[j] * dy[base + j]) * (double)x[base + j];
    s = opc_warp_sum(s);
    double r = (double)rstd[row];
    double c = r * r * (s / (double)dim);
    for (int j = lane; j < dim; j += 32) {
        double g = (double)(w[j] * dy[base + j]);
        dx[base + j] = (float)(r * (g - (double)x[base + j] * c));
    }
}

// Pass 1 of dw: partial[chunk, j] = sum over the chunk's rows (in order, double) of
// dy[i, j] * x[i, j] * rstd[i]. Grid: x covers columns (256 per block), y = chunk.
extern "C" __global__ void opc_rmsnorm_dw_partial(int rows, int dim, int rows_per_chunk, const float *x,
                                                  const float *rstd, const float *dy, double *partial) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    long long begin = (long long)blockIdx.y * rows_per_chunk;
    long long end = begin + rows_per_chunk;
    if (end > rows) end = rows;
    double s = 0.0;
    for (long long i = begin; i < end; i++) {
        opc_count at = (opc_count)i * (opc_count)dim + (opc_count)j;
        s += (double)dy[at] * (double)x[at] * (double)rstd[i];
    }
    partial[(opc_count)blockIdx.y * (opc_count)dim + (opc_count)j] = s;
}

// Pass 2: out[j] += (float)(sum of partial[c, j] over chunks c, in order).
extern "C" __global__ void opc_add_chunk_sums(int cols, int chunks, const double *partial, float *out) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    double s = 0.0;
    for (int c = 0; c < chunks; c++) s += partial[(opc_count)c * (opc_count)cols + (opc_count)j];
    out[j] += (float)s;
}

// Rotary embedding in place over total = rows * heads * half pairs (i, i + half) of
// x[rows, heads, head_dim]; sign = -1 for the inverse (backward). Nothing when a position
// was flagged bad.
extern "C" __global__ void opc_rope(opc_count total, int heads, int head_dim, float *x, const int *positions,
                                    const float *cos_table, const float *sin_table, float sign, const int *bad) {
    if (*bad) return;
    opc_count half = (opc_count)(head_dim / 2);
    OPC_GRID_STRIDE(idx, total) {
        opc_count i = idx % half, rh = idx / half;  // rh = row * heads + head
        opc_count row = rh / (opc_count)heads;
        opc_count p = (opc_count)positions[row];
        float c = cos_table[p * half + i], s = sign * sin_table[p * half + i];
        float *xh = x + rh * (opc_count)head_dim;
        float a = xh[i], b = xh[i + half];
        xh[i] = a * c - b * s;
        xh[i + half] = b * c + a * s;
    }
}

// Causal GQA attention forward: one block per query row (b, h, i), blockIdx.x =
// (b * heads + h) * seq + i. Scores for j <= i go into the row of probs (thread per j, dot
// in double), then max, sum of exp in double (fixed tree), probs; then out (thread per
// feature d, sum over j in order, double).
extern "C" __global__ void opc_attention_forward(int seq, int heads, int kv_heads, int head_dim, float scale,
                                                 const float *q, const float *k, const float *v, float *probs,
                                                 float *out) {
    __shared__ float shared_max[256];
    __shared__ double shared_sum[256];
    opc_count r = blockIdx.x;
    int i = (int)(r % (opc_count)seq);
    opc_count bh = r / (opc_count)seq;
    int h = (int)(bh % (opc_count)heads);
    opc_count b = bh / (opc_count)heads;
    int kvh = h / (heads / kv_heads);
    opc_count q_stride = (opc_count)heads * (opc_count)head_dim, kv_stride = (opc_count)kv_heads * (opc_count)head_dim;
    const float *qi = q + (b * (opc_count)seq + (opc_count)i) * q_stride + (opc_count)h * (opc_count)head_dim;
    const float *kb = k + b * (opc_count)seq * kv_stride + (opc_count)kvh * (opc_count)head_dim;
    const float *vb = v + b * (opc_count)seq * kv_stride + (opc_count)kvh * (opc_count)head_dim;
    float *p = probs + r * (opc_count)seq;

    float mx = -__int_as_float(0x7f800000);
    for (int j = threadIdx.x; j <= i; j += 256) {
        const float *kj = kb + (opc_count)j * kv_stride;
        double dot = 0.0;
        for (int d = 0; d < head_dim; d++) dot += (double)qi[d] * (double)kj[d];
        float score = scale * (float)dot;
        p[j] = score;
        if (score > mx) mx = score;
    }
    mx = opc_block_max_256(mx, shared_max);
    double sum = 0.0;
    for (int j = threadIdx.x; j <= i; j += 256) sum += exp((double)p[j] - (double)mx);
    sum = opc_block_sum_all_256(sum, shared_sum);
    for (int j = threadIdx.x; j < seq; j += 256) p[j] = j <= i ? (float)(exp((double)p[j] - (double)mx) / sum) : 0.0f;
    __syncthreads();  // the row of probs is complete (global writes are visible block-wide)
    float *oi = out + (b * (opc_count)seq + (opc_count)i) * q_stride + (opc_count)h * (opc_count)head_dim;
    for (int d = threadIdx.x; d < head_dim; d += 256) {
        double acc = 0.0;
        for (int j = 0; j <= i; j++) acc += (double)p[j] * (double)vb[(opc_count)j * kv_stride + (opc_count)d];
        oi[d] = (float)acc;
    }
}

// Attention backward, pass 1: one block per query row (b, h, i) as the forward. dP_j =
// dout_i . v_j (thread per j, double), rowsum = sum_j dP_j P_j (fixed tree, double),
// dS_j = P_j (dP_j - rowsum) into ds (the shape of probs; j > i not written), then
// dq_i = scale * sum_j dS_j k_j (thread per d, j in order, double).
extern "C" __global__ void opc_attention_backward_dq(int seq, int heads, int kv_heads, int head_dim, float scale,
                                                     const float *k, const float *v, const float *probs,
                                                     const float *dout, float *ds, float *dq) {
    __shared__ double shared_sum[256];
    opc_count r = blockIdx.x;
    int i = (int)(r % (opc_count)seq);
    opc_count bh = r / (opc_count)seq;
    int h = (int)(bh % (opc_count)heads);
    opc_count b = bh / (opc_count)heads;
    int kvh = h / (heads / kv_heads);
    opc_count q_stride = (opc_count)heads * (opc_count)head_dim, kv_stride = (opc_count)kv_heads * (opc_count)head_dim;
    opc_count qi_at = (b * (opc_count)seq + (opc_count)i) * q_stride + (opc_count)h * (opc_count)head_dim;
    const float *doi = dout + qi_at;
    const float *kb = k + b * (opc_count)seq * kv_stride + (opc_count)kvh * (opc_count)head_dim;
    const float *vb = v + b * (opc_count)seq * kv_stride + (opc_count)kvh * (opc_count)head_dim;
    const float *p = probs + r * (opc_count)seq;
    float *dsr = ds + r * (opc_count)seq;

    double rowsum = 0.0;
    for (int j = threadIdx.x; j <= i; j += 256) {
        const float *vj = vb + (opc_count)j * kv_stride;
        double dot = 0.0;
        for (int d = 0; d < head_dim; d++) dot += (double)doi[d] * (double)vj[d];
        float dp = (float)dot;
        dsr[j] = dp;
        rowsum += (double)dp * (double)p[j];
    }
    rowsum = opc_block_sum_all_256(rowsum, shared_sum);
    for (int j = threadIdx.x; j <= i; j += 256) dsr[j] = (float)((double)p[j] * ((double)dsr[j] - rowsum));
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += 256) {
        double acc = 0.0;
        for (int j = 0; j <= i; j++) acc += (double)dsr[j] * (double)kb[(opc_count)j * kv_stride + (opc_count)d];
        dq[qi_at + (opc_count)d] = scale * (float)acc;
    }
}

// Attention backward, pass 2: one block per key row (b, kvh, j), blockIdx.x =
// (b * kv_heads + kvh) * seq + j; thread per feature d sums over the group's query heads
// (in order) and the rows i >= j (in order), in double:
// dk_j = scale * sum dS[i, j] q_i, dv_j = sum P[i, j] dout_i.
extern "C" __global__ void opc_attention_backward_dkv(int seq, int heads, int kv_heads, int head_dim, float scale,
                                                      const float *q, const float *probs, const float *dout,
                                                      const float *ds, float *dk, float *dv) {
    opc_count r = blockIdx.x;
    int j = (int)(r % (opc_count)seq);
    opc_count bk = r / (opc_count)seq;
    int kvh = (int)(bk % (opc_count)kv_heads);
    opc_count b = bk / (opc_count)kv_heads;
    int group = heads / kv_heads;
    opc_count q_stride = (opc_count)heads * (opc_count)head_dim, kv_stride = (opc_count)kv_heads * (opc_count)head_dim;
    opc_count kj_at = (b * (opc_count)seq + (opc_count)j) * kv_stride + (opc_count)kvh * (opc_count)head_dim;
    for (int d = threadIdx.x; d < head_dim; d += 256) {
        double acc_k = 0.0, acc_v = 0.0;
        for (int g = 0; g < group; g++) {
            int h = kvh * group + g;
            opc_count prow = (b * (opc_count)heads + (opc_count)h) * (opc_count)seq;  // row (b, h, 0) of probs
            for (int i = j; i < seq; i++) {
                opc_count at = (prow + (opc_count)i) * (opc_count)seq + (opc_count)j;
                opc_count qd = (b * (opc_count)seq + (opc_count)i) * q_stride + (opc_count)h * (opc_count)head_dim +
                               (opc_count)d;
                acc_k += (double)ds[at] * (double)q[qd];
                acc_v += (double)probs[at] * (double)dout[qd];
            }
        }
        dk[kj_at + (opc_count)d] = scale * (float)acc_k;
        dv[kj_at + (opc_count)d] = (float)acc_v;
    }
}

// h = silu(g) * u, silu(g) = g / (1 + exp(-g)); h may alias g or u (read before written).
extern "C" __global__ void opc_silu_gate_forward(opc_count n, const float *g, const float *u, float *h) {
    OPC_GRID_STRIDE(i, n) {
        float gi = g[i], ui = u[i];
        h[i] = gi / (1.0f + expf(-gi)) * ui;
    }
}

// dg = dh * u * sig(g) (1 + g (1 - sig(g))), du = dh * silu(g); every input of an element is
// read before either output is written, so dg may alias g or dh and du may alias u.
extern "C" __global__ void opc_silu_gate_backward(opc_count n, const float *g, const float *u, const float *dh,
                                                  float *dg, float *du) {
    OPC_GRID_STRIDE(i, n) {
        float gi = g[i], ui = u[i], dhi = dh[i];
        float e = 1.0f + expf(-gi);
        float sig = 1.0f / e, silu = gi / e;
        float dsilu = sig * (1.0f + gi * (1.0f - sig));
        dg[i] = dhi * ui * dsilu;
        du[i] = dhi * silu;
    }
}

// Sets *bad = 1 when a label is neither ignore_index nor in [0, classes).
extern "C" __global__ void opc_token_xent_validate(int rows, int classes, const long long *labels,
                                                   long long ignore_index, int *bad) {
    OPC_GRID_STRIDE(i, (opc_count)rows) {
        long long label = labels[i];
        if (label != ignore_index && (label < 0 || label >= classes)) *bad = 1;
    }
}

// One warp per row (8 rows per block), after opc_token_xent_validate: dlogits = (softmax -
// onehot) * grad_scale, row_loss = lse - x[label], row_counted = 1; an ignored row gets
// zeros and counts 0. dlogits may be logits (each lane rewrites only its own columns).
extern "C" __global__ void opc_token_xent_rows(int rows, int classes, const float *logits, const long long *labels,
                                               long long ignore_index, float grad_scale, float *dlogits,
                                               double *row_loss, int *row_counted, const int *bad) {
    int row = blockIdx.x * 8 + (int)(threadIdx.x / 32);
    int lane = threadIdx.x % 32;
    if (row >= rows || *bad) return;
    const float *x = logits + (opc_count)row * (opc_count)classes;
    float *dx = dlogits + (opc_count)row * (opc_count)classes;
    long long label = labels[row];
    if (label == ignore_index) {
        for (int j = lane; j < classes; j += 32) dx[j] = 0.0f;
        if (lane == 0) {
            row_loss[row] = 0.0;
            row_counted[row] = 0;
        }
        return;  // whole warps: the label is the row's
    }
    float mx = -__int_as_float(0x7f800000);
    for (int j = lane; j < classes; j += 32) mx = x[j] > mx ? x[j] : mx;
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_xor_sync(OPC_FULL_MASK, mx, offset);
        mx = other > mx ? other : mx;
    }
    double sum = 0.0;
    for (int j = lane; j < classes; j += 32) sum += exp((double)x[j] - (double)mx);
    sum = opc_warp_sum(sum);
    double lse = (double)mx + log(sum);
    for (int j = lane; j < classes; j += 32) {
        float xj = x[j];
        float d = (float)exp((double)xj - lse) * grad_scale;
        if (j == (int)label) {
            d -= grad_scale;
            row_loss[row] = lse - (double)xj;
        }
        dx[j] = d;
    }
    if (lane == 0) row_counted[row] = 1;
}
