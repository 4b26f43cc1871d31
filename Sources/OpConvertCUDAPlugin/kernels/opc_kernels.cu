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
