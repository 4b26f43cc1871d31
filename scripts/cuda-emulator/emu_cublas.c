/* A CPU stand-in for libcublas.so.13 / .so.12 (see emu_driver.cpp): the handful of functions the CUDA
   plugin calls, with cuBLAS's argument checks (column-major leading dimensions), so a wrong
   row-major-to-column-major mapping fails here as it would on a GPU. */
#include <stdio.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))
enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7 };

struct handle { void *stream; int math_mode; };
static int live_handles;
static int last_math_mode = -1;

EXPORT int cublasCreate_v2(struct handle **h) {
    if (!h) return INVALID_VALUE;
    *h = calloc(1, sizeof **h);
    if (!*h) return 3; /* CUBLAS_STATUS_ALLOC_FAILED */
    live_handles++;
    return OK;
}
EXPORT int cublasDestroy_v2(struct handle *h) {
    if (!h) return NOT_INITIALIZED;
    free(h);
    live_handles--;
    return OK;
}
EXPORT int cublasSetStream_v2(struct handle *h, void *stream) {
    if (!h) return NOT_INITIALIZED;
    h->stream = stream;
    return OK;
}
EXPORT int cublasSetMathMode(struct handle *h, int mode) {
    if (!h) return NOT_INITIALIZED;
    if (mode != 0 && mode != 3) return INVALID_VALUE; /* the plugin sets DEFAULT or TF32 only */
    h->math_mode = mode;
    last_math_mode = mode;
    return OK;
}
EXPORT const char *cublasGetStatusString(int status) {
    return status == OK ? "CUBLAS_STATUS_SUCCESS" : status == INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE" : "CUBLAS_STATUS_?";
}

static int max1(int a) { return a > 1 ? a : 1; }

/* Column-major C[m,n] = alpha op(A) op(B) + beta C, as the reference BLAS. */
EXPORT int cublasSgemm_v2(struct handle *h, int ta, int tb, int m, int n, int k, const float *alpha, const float *a,
                          int lda, const float *b, int ldb, const float *beta, float *c, int ldc) {
    if (!h) return NOT_INITIALIZED;
    if (!h->stream) return INVALID_VALUE; /* the plugin always binds its stream */
    if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1) || m < 0 || n < 0 || k < 0) return INVALID_VALUE;
    if (lda < max1(ta ? k : m) || ldb < max1(tb ? n : k) || ldc < max1(m)) {
        fprintf(stderr, "cublas-emulator: bad leading dimension (m=%d n=%d k=%d lda=%d ldb=%d ldc=%d ta=%d tb=%d)\n",
                m, n, k, lda, ldb, ldc, ta, tb);
        return INVALID_VALUE;
    }
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                float av = ta ? a[p + (size_t)i * lda] : a[i + (size_t)p * lda];
                float bv = tb ? b[j + (size_t)p * ldb] : b[p + (size_t)j * ldb];
                s += (double)av * (double)bv;
            }
            float *cij = c + i + (size_t)j * ldc;
            *cij = (float)(*alpha * s + (*beta == 0.0f ? 0.0 : (double)*beta * (double)*cij));
        }
    }
    return OK;
}

struct emu_cublas_stats { int live_handles, last_math_mode; };
EXPORT struct emu_cublas_stats emu_cublas_stats(void) {
    struct emu_cublas_stats s = {live_handles, last_math_mode};
    return s;
}
