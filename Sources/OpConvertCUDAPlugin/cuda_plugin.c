/*
 * opconvert CUDA kernel plugin: the whole plugin ABI v3 (opc_plugin.h) on the CUDA driver
 * API, NVRTC and cuBLAS, all loaded with dlopen (cuda_loader.c), so this builds anywhere.
 *
 * One context = the device's primary CUDA context (retained), one non-blocking stream and
 * one cuBLAS handle bound to it; every kernel and copy goes on that stream, so calls are
 * ordered, and download() synchronizes. Kernels (kernels/opc_kernels.cu) are compiled by
 * NVRTC for the device's architecture at context creation and cached on disk.
 * Argument checks and error returns mirror the CPU plugin's (cpu_plugin.c).
 */
#include "cuda_internal.h"
#include "opc_cuda_plugin.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kernel indices: the order of opc_kernel_names. */
enum {
    K_AXPY, K_SCALE, K_RELU_FORWARD, K_RELU_BACKWARD, K_DIVIDE, K_MULTIPLY, K_ADD_ROW_VECTOR, K_SCALE_ROWS,
    K_SCALE_MATRIX, K_ADAMW, K_SUM_ROWS_PARTIAL, K_SUM_ROWS_FINISH, K_ROW_NORMS, K_ROW_DOTS,
    K_SUM_SQUARES_PARTIAL, K_SUM_DOUBLES, K_XENT_VALIDATE, K_XENT_ROWS, K_XENT_FINISH,
    /* v3 */
    K_INDEX_VALIDATE, K_EMBEDDING_FORWARD, K_EMBEDDING_BACKWARD, K_RMSNORM_FORWARD, K_RMSNORM_BACKWARD_DX,
    K_RMSNORM_DW_PARTIAL, K_ADD_CHUNK_SUMS, K_ROPE, K_ATTENTION_FORWARD, K_ATTENTION_BACKWARD_DQ,
    K_ATTENTION_BACKWARD_DKV, K_SILU_GATE_FORWARD, K_SILU_GATE_BACKWARD, K_TOKEN_XENT_VALIDATE, K_TOKEN_XENT_ROWS,
};
_Static_assert(K_TOKEN_XENT_ROWS + 1 == OPC_KERNEL_COUNT, "kernel index list and opc_kernel_names differ");

#define THREADS 256u      /* threads per block for every kernel */
#define ROWS_PER_BLOCK 8  /* warp-per-row kernels: 256 / 32 */
#define MAX_BLOCKS 4096u  /* grid-stride kernels */
#define AUX_BYTES 256     /* small device results: flag at 0, double at 8, int64 at 16 */

struct opc_context {
    const opc_cuda_driver *cu;
    const opc_cublas *blas;
    CUdevice device;
    CUcontext cuctx;       /* primary context, retained (NULL until retained) */
    CUstream stream;
    CUmodule module;
    CUfunction fn[OPC_KERNEL_COUNT];
    const char *params[OPC_KERNEL_COUNT]; /* each kernel's parameter types (opc_kernel_params) */
    cublasHandle_t handle;
    CUdeviceptr aux;
    CUdeviceptr scratch;   /* grows on demand: reduction partials, overlapping copies */
    size_t scratch_bytes;
    char error[512];
};

/* ---- errors ------------------------------------------------------------------------- */

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

/* "CUDA_ERROR_OUT_OF_MEMORY (out of memory)" */
static void describe_cu(const opc_cuda_driver *cu, CUresult r, char *out, size_t len) {
    const char *name = NULL, *text = NULL;
    if (cu->cuGetErrorName(r, &name) != CUDA_SUCCESS || !name) name = NULL;
    if (cu->cuGetErrorString(r, &text) != CUDA_SUCCESS || !text) text = NULL;
    if (name) snprintf(out, len, "%s (%s)", name, text ? text : "no description");
    else snprintf(out, len, "CUDA error %d", r);
}

static int fail_cu(opc_context *ctx, CUresult r, const char *what) {
    char text[256];
    describe_cu(ctx->cu, r, text, sizeof text);
    return fail(ctx, r == CUDA_ERROR_OUT_OF_MEMORY ? OPC_E_NOMEM : OPC_E_DEVICE, "%s: %s", what, text);
}

static const char *describe_blas(const opc_cublas *blas, cublasStatus_t s, char *buf, size_t len) {
    const char *text = blas->cublasGetStatusString ? blas->cublasGetStatusString(s) : NULL;
    if (text) snprintf(buf, len, "%s", text);
    else snprintf(buf, len, "cuBLAS status %d", s);
    return buf;
}

#define CU_TRY(ctx, call, what) do { CUresult r_ = (call); if (r_ != CUDA_SUCCESS) return fail_cu((ctx), r_, (what)); } while (0)

/* Every entry point: a context, made current on the calling thread (contexts may move
   between threads, one at a time). */
#define ENTER(ctx) do { \
        if (!(ctx)) return OPC_E_INVALID; \
        CU_TRY((ctx), (ctx)->cu->cuCtxSetCurrent((ctx)->cuctx), "cuCtxSetCurrent"); \
    } while (0)
#define REQUIRE(ctx, cond, ...) do { if (!(cond)) return fail((ctx), OPC_E_INVALID, __VA_ARGS__); } while (0)
#define REQUIRE_PTR(ctx, fn, p, needed) REQUIRE(ctx, !(needed) || (p) != NULL, "%s: %s is NULL", fn, #p)
#define CHECK_SHAPE(ctx, fn, rows, cols) \
    REQUIRE(ctx, (rows) >= 0 && (cols) >= 0, "%s: negative size (rows=%d, cols=%d)", fn, rows, cols)

static CUdeviceptr dptr(opc_dev_ptr p) { return (CUdeviceptr)(uintptr_t)p; }

/* ---- launching ------------------------------------------------------------------------ */

static unsigned grid_for(size_t n, size_t per_block, unsigned cap) {
    size_t blocks = (n + per_block - 1) / per_block;
    if (blocks < 1) blocks = 1;
    return blocks > cap ? cap : (unsigned)blocks;
}

/* A kernel argument: a temporary of exactly the kernel parameter's type, tagged with the
   letter opc_kernel_params uses, so launch() can check it against the .cu's signature
   (cuLaunchKernel copies sizeof(parameter) bytes from each pointer: a mismatch would be
   silent garbage on the GPU). */
typedef struct kernel_arg {
    char tag;
    void *value;
} kernel_arg;
#define ARG_COUNT(v) ((kernel_arg){'c', &(unsigned long long){(unsigned long long)(v)}})
#define ARG_INT(v) ((kernel_arg){'i', &(int){(v)}})
#define ARG_F32(v) ((kernel_arg){'f', &(float){(v)}})
#define ARG_DEV(p) ((kernel_arg){'p', &(CUdeviceptr){dptr(p)}})  /* an opc_dev_ptr */
#define ARG_CU(d) ((kernel_arg){'p', &(CUdeviceptr){(d)}})       /* a CUdeviceptr */
#define ARG_I64(v) ((kernel_arg){'l', &(long long){(v)}})
#define MAX_KERNEL_ARGS 16

static int launch_args(opc_context *ctx, int kernel, unsigned grid_x, unsigned grid_y, const kernel_arg *args,
                       size_t count) {
    const char *params = ctx->params[kernel];
    char tags[MAX_KERNEL_ARGS + 1];
    void *values[MAX_KERNEL_ARGS];
    for (size_t i = 0; i < count && i < MAX_KERNEL_ARGS; i++) {
        tags[i] = args[i].tag;
        values[i] = args[i].value;
    }
    tags[count < MAX_KERNEL_ARGS ? count : MAX_KERNEL_ARGS] = '\0';
    if (count > MAX_KERNEL_ARGS || strcmp(tags, params) != 0)
        return fail(ctx, OPC_E_DEVICE, "internal error: %s launched with arguments (%s), the kernel takes (%s)",
                    opc_kernel_names[kernel], tags, params);
    CUresult r = ctx->cu->cuLaunchKernel(ctx->fn[kernel], grid_x, grid_y, 1, THREADS, 1, 1, 0, ctx->stream, values, NULL);
    if (r != CUDA_SUCCESS) return fail_cu(ctx, r, opc_kernel_names[kernel]);
    return OPC_OK;
}

/* launch(ctx, K_X, grid_x, grid_y, ARG_...(...), ...) */
#define launch(ctx, kernel, grid_x, grid_y, ...)                                       \
    launch_args((ctx), (kernel), (grid_x), (grid_y), (const kernel_arg[]){__VA_ARGS__}, \
                sizeof((const kernel_arg[]){__VA_ARGS__}) / sizeof(kernel_arg))

static int sync_stream(opc_context *ctx, const char *what) {
    CU_TRY(ctx, ctx->cu->cuStreamSynchronize(ctx->stream), what);
    return OPC_OK;
}

/* Scratch of at least `bytes`; the old buffer is freed only after the stream drains. */
static int ensure_scratch(opc_context *ctx, size_t bytes, const char *what) {
    if (bytes <= ctx->scratch_bytes) return OPC_OK;
    size_t want = ctx->scratch_bytes * 2 > bytes ? ctx->scratch_bytes * 2 : bytes;
    want = (want + 255) / 256 * 256;
    if (ctx->scratch) {
        int rc = sync_stream(ctx, what);
        if (rc) return rc;
        ctx->cu->cuMemFree_v2(ctx->scratch);
        ctx->scratch = 0;
        ctx->scratch_bytes = 0;
    }
    CUdeviceptr p = 0;
    CUresult r = ctx->cu->cuMemAlloc_v2(&p, want);
    if (r != CUDA_SUCCESS) {
        char text[256];
        describe_cu(ctx->cu, r, text, sizeof text);
        return fail(ctx, OPC_E_NOMEM, "%s: cannot allocate %zu bytes of scratch: %s", what, want, text);
    }
    ctx->scratch = p;
    ctx->scratch_bytes = want;
    return OPC_OK;
}

/* ---- context ----------------------------------------------------------------------- */

static void release_context(opc_context *ctx) {
    if (!ctx) return;
    const opc_cuda_driver *cu = ctx->cu;
    if (ctx->cuctx) {
        cu->cuCtxSetCurrent(ctx->cuctx);
        if (ctx->stream) cu->cuStreamSynchronize(ctx->stream);
        if (ctx->handle) ctx->blas->cublasDestroy_v2(ctx->handle);
        if (ctx->module) cu->cuModuleUnload(ctx->module);
        if (ctx->aux) cu->cuMemFree_v2(ctx->aux);
        if (ctx->scratch) cu->cuMemFree_v2(ctx->scratch);
        if (ctx->stream) cu->cuStreamDestroy_v2(ctx->stream);
        cu->cuCtxSetCurrent(NULL);
        cu->cuDevicePrimaryCtxRelease_v2(ctx->device);
    }
    free(ctx);
}

static void cuda_destroy(opc_context *ctx) { release_context(ctx); }

static const char *cuda_last_error(opc_context *ctx) {
    return ctx ? ctx->error : "no context (NULL opc_context)";
}

/* Driver loaded and initialized; *count devices. Fills why on failure. */
static int init_driver(const opc_cuda_driver **out_cu, int *count, int *driver_version, char *why, size_t why_len) {
    *out_cu = NULL;
    *count = 0;
    *driver_version = 0;
    const opc_cuda_driver *cu = opc_load_driver(why, why_len);
    if (!cu) return OPC_E_UNSUPPORTED;
    char text[256];
    CUresult r = cu->cuInit(0);
    if (r != CUDA_SUCCESS) {
        describe_cu(cu, r, text, sizeof text);
        snprintf(why, why_len, "cuInit failed (%s): %s", opc_loaded_path(cu), text);
        return OPC_E_DEVICE;
    }
    if ((r = cu->cuDriverGetVersion(driver_version)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetCount(count)) != CUDA_SUCCESS) {
        describe_cu(cu, r, text, sizeof text);
        snprintf(why, why_len, "CUDA driver query failed (%s): %s", opc_loaded_path(cu), text);
        *count = 0;
        return OPC_E_DEVICE;
    }
    *out_cu = cu;
    if (*count < 1) {
        snprintf(why, why_len, "no CUDA device (driver %s, CUDA %d.%d)", opc_loaded_path(cu), *driver_version / 1000,
                 *driver_version % 1000 / 10);
        return OPC_E_DEVICE;
    }
    return OPC_OK;
}

/* Loads the module from the cache, or compiles (and caches) it. */
static int load_module(opc_context *ctx, const opc_nvrtc *nvrtc, const char *arch, const char *cache_dir, char *why,
                       size_t why_len) {
    size_t size = 0;
    void *cubin = opc_cache_read(cache_dir, nvrtc, arch, &size);
    if (cubin) {
        CUresult r = ctx->cu->cuModuleLoadData(&ctx->module, cubin);
        free(cubin);
        if (r == CUDA_SUCCESS) return OPC_OK;
        ctx->module = NULL;
        opc_cache_remove(cache_dir, nvrtc, arch); /* stale or corrupt: rebuild below */
    }
    char log[2048];
    int rc = opc_compile_kernels(nvrtc, arch, &cubin, &size, log, sizeof log);
    if (rc != OPC_OK) {
        snprintf(why, why_len, "compiling the CUDA kernels failed: %s", log);
        return rc;
    }
    CUresult r = ctx->cu->cuModuleLoadData(&ctx->module, cubin);
    if (r != CUDA_SUCCESS) {
        free(cubin);
        ctx->module = NULL;
        char text[256];
        describe_cu(ctx->cu, r, text, sizeof text);
        snprintf(why, why_len, "loading the CUDA kernels compiled by NVRTC %d.%d for %s failed: %s", nvrtc->major,
                 nvrtc->minor, arch, text);
        return OPC_E_DEVICE;
    }
    opc_cache_write(cache_dir, nvrtc, arch, cubin, size);
    free(cubin);
    return OPC_OK;
}

#define FITS(type, field, size) ((size) >= offsetof(type, field) + sizeof(((type *)0)->field))

static int cuda_create_with_options(const opc_create_options *options, opc_context **out, char *why, size_t why_len) {
    char scratch_why[2];
    if (!why || why_len == 0) { why = scratch_why; why_len = sizeof scratch_why; }
    why[0] = '\0';
    if (!out) {
        snprintf(why, why_len, "create_with_options: out is NULL");
        return OPC_E_INVALID;
    }
    *out = NULL;
    int device = 0;
    uint32_t flags = 0;
    const char *cache_dir = NULL;
    if (options) {
        uint32_t size = options->struct_size;
        if (FITS(opc_create_options, device, size)) device = options->device;
        if (FITS(opc_create_options, flags, size)) flags = options->flags;
        if (FITS(opc_create_options, cache_dir, size)) cache_dir = options->cache_dir;
    }
    if (device < 0) {
        snprintf(why, why_len, "CUDA device index %d is negative", device);
        return OPC_E_INVALID;
    }
    const opc_cuda_driver *cu;
    int count, driver_version;
    int rc = init_driver(&cu, &count, &driver_version, why, why_len);
    if (rc) return rc;
    if (device >= count) {
        snprintf(why, why_len, "CUDA device %d does not exist (%d device%s: 0..%d)", device, count, count == 1 ? "" : "s",
                 count - 1);
        return OPC_E_INVALID;
    }
    int driver_major = driver_version / 1000;
    const opc_nvrtc *nvrtc = opc_load_nvrtc(driver_major, why, why_len);
    if (!nvrtc) return OPC_E_UNSUPPORTED;
    const opc_cublas *blas = opc_load_cublas(driver_major, why, why_len);
    if (!blas) return OPC_E_UNSUPPORTED;

    opc_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        snprintf(why, why_len, "out of memory");
        return OPC_E_NOMEM;
    }
    ctx->cu = cu;
    ctx->blas = blas;
    char text[256];
    int major = 0, minor = 0;
    CUresult r;
    const char *step = "cuDeviceGet";
    if ((r = cu->cuDeviceGet(&ctx->device, device)) != CUDA_SUCCESS) goto cu_failed;
    step = "cuDeviceGetAttribute";
    if ((r = cu->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, ctx->device)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, ctx->device)) != CUDA_SUCCESS)
        goto cu_failed;
    step = "cuDevicePrimaryCtxRetain";
    if ((r = cu->cuDevicePrimaryCtxRetain(&ctx->cuctx, ctx->device)) != CUDA_SUCCESS) {
        ctx->cuctx = NULL;
        goto cu_failed;
    }
    step = "cuCtxSetCurrent";
    if ((r = cu->cuCtxSetCurrent(ctx->cuctx)) != CUDA_SUCCESS) goto cu_failed;
    step = "cuStreamCreate";
    if ((r = cu->cuStreamCreate(&ctx->stream, CU_STREAM_NON_BLOCKING)) != CUDA_SUCCESS) {
        ctx->stream = NULL;
        goto cu_failed;
    }
    step = "cuMemAlloc";
    if ((r = cu->cuMemAlloc_v2(&ctx->aux, AUX_BYTES)) != CUDA_SUCCESS) {
        ctx->aux = 0;
        goto cu_failed;
    }

    char arch[16];
    snprintf(arch, sizeof arch, "sm_%d%d", major, minor);
    rc = load_module(ctx, nvrtc, arch, cache_dir, why, why_len);
    if (rc) goto failed;
    for (int i = 0; i < OPC_KERNEL_COUNT; i++) {
        ctx->params[i] = opc_kernel_params(opc_kernel_names[i]);
        if (!ctx->params[i]) {
            snprintf(why, why_len, "internal error: kernel %s is not in the embedded source", opc_kernel_names[i]);
            rc = OPC_E_DEVICE;
            goto failed;
        }
        if ((r = cu->cuModuleGetFunction(&ctx->fn[i], ctx->module, opc_kernel_names[i])) != CUDA_SUCCESS) {
            step = opc_kernel_names[i];
            goto cu_failed;
        }
    }

    cublasStatus_t s = blas->cublasCreate_v2(&ctx->handle);
    if (s != CUBLAS_STATUS_SUCCESS) {
        ctx->handle = NULL;
        snprintf(why, why_len, "cublasCreate failed (%s): %s", opc_loaded_path(blas), describe_blas(blas, s, text, sizeof text));
        rc = s == CUBLAS_STATUS_ALLOC_FAILED ? OPC_E_NOMEM : OPC_E_DEVICE;
        goto failed;
    }
    int math = (flags & OPC_CREATE_ALLOW_TF32) ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    if ((s = blas->cublasSetStream_v2(ctx->handle, ctx->stream)) != CUBLAS_STATUS_SUCCESS ||
        (s = blas->cublasSetMathMode(ctx->handle, math)) != CUBLAS_STATUS_SUCCESS) {
        snprintf(why, why_len, "configuring cuBLAS failed: %s", describe_blas(blas, s, text, sizeof text));
        rc = OPC_E_DEVICE;
        goto failed;
    }
    *out = ctx;
    return OPC_OK;

cu_failed:
    describe_cu(cu, r, text, sizeof text);
    snprintf(why, why_len, "creating a CUDA context on device %d: %s failed: %s", device, step, text);
    rc = r == CUDA_ERROR_OUT_OF_MEMORY ? OPC_E_NOMEM : OPC_E_DEVICE;
failed:
    release_context(ctx);
    return rc;
}

static int cuda_create(opc_context **out, int num_threads) {
    (void)num_threads; /* the GPU has no thread count to set */
    return cuda_create_with_options(NULL, out, NULL, 0);
}

/* ---- discovery ------------------------------------------------------------------------ */

static int cuda_probe(int *device_count, char *why, size_t why_len) {
    char local[2];
    if (!why || why_len == 0) { why = local; why_len = sizeof local; }
    why[0] = '\0';
    if (device_count) *device_count = 0;
    const opc_cuda_driver *cu;
    int count, driver_version;
    /* Without a driver, NVRTC and cuBLAS are not even loaded: a CPU-only machine's probe
       (every --device auto run) stays cheap. */
    int rc = init_driver(&cu, &count, &driver_version, why, why_len);
    if (rc) return rc;
    int driver_major = driver_version / 1000;
    char nvrtc_why[1024], blas_why[1024];
    const opc_nvrtc *nvrtc = opc_load_nvrtc(driver_major, nvrtc_why, sizeof nvrtc_why);
    const opc_cublas *blas = opc_load_cublas(driver_major, blas_why, sizeof blas_why);
    if (!nvrtc || !blas) {
        snprintf(why, why_len, "CUDA driver found (%s, CUDA %d.%d) but ", opc_loaded_path(cu), driver_major,
                 driver_version % 1000 / 10);
        if (!nvrtc) opc_appendf(why, why_len, "%s%s", nvrtc_why, blas ? "" : "; ");
        if (!blas) opc_appendf(why, why_len, "%s", blas_why);
        return OPC_E_UNSUPPORTED;
    }
    if (device_count) *device_count = count;
    snprintf(why, why_len, "driver CUDA %d.%d (%s); NVRTC %d.%d (%s); cuBLAS %d (%s)", driver_major,
             driver_version % 1000 / 10, opc_loaded_path(cu), nvrtc->major, nvrtc->minor, opc_loaded_path(nvrtc),
             blas->major, opc_loaded_path(blas));
    return OPC_OK;
}

static int cuda_device_info(int device, opc_device_info *info, char *why, size_t why_len) {
    char local[2];
    if (!why || why_len == 0) { why = local; why_len = sizeof local; }
    why[0] = '\0';
    if (!info) {
        snprintf(why, why_len, "device_info: info is NULL");
        return OPC_E_INVALID;
    }
    const opc_cuda_driver *cu;
    int count, driver_version;
    int rc = init_driver(&cu, &count, &driver_version, why, why_len);
    if (rc) return rc;
    if (device < 0 || device >= count) {
        snprintf(why, why_len, "CUDA device %d does not exist (%d device%s)", device, count, count == 1 ? "" : "s");
        return OPC_E_INVALID;
    }
    CUdevice dev;
    int major = 0, minor = 0, sms = 0;
    size_t total = 0;
    char name[128] = "";
    CUresult r;
    if ((r = cu->cuDeviceGet(&dev, device)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetName(name, (int)sizeof name, dev)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev)) != CUDA_SUCCESS ||
        (r = cu->cuDeviceTotalMem_v2(&total, dev)) != CUDA_SUCCESS) {
        char text[256];
        describe_cu(cu, r, text, sizeof text);
        snprintf(why, why_len, "querying CUDA device %d failed: %s", device, text);
        return OPC_E_DEVICE;
    }
    name[sizeof name - 1] = '\0';
    uint32_t size = info->struct_size;
    if (FITS(opc_device_info, compute_major, size)) info->compute_major = major;
    if (FITS(opc_device_info, compute_minor, size)) info->compute_minor = minor;
    if (FITS(opc_device_info, multiprocessors, size)) info->multiprocessors = sms;
    if (FITS(opc_device_info, total_memory_bytes, size)) info->total_memory_bytes = (uint64_t)total;
    if (FITS(opc_device_info, name, size)) snprintf(info->name, sizeof info->name, "%s", name);
    return OPC_OK;
}

/* "sm_" followed by digits and an optional letter (sm_90a): NVRTC decides which exist. */
static int valid_target(const char *t) {
    if (!t || strncmp(t, "sm_", 3) != 0) return 0;
    const char *p = t + 3;
    if (*p < '0' || *p > '9') return 0;
    while (*p >= '0' && *p <= '9') p++;
    if (*p >= 'a' && *p <= 'z') p++;
    return *p == '\0' && p - t < 12;
}

static int cuda_compile_kernels(const char *target, char *log, size_t log_len) {
    char local[2];
    if (!log || log_len == 0) { log = local; log_len = sizeof local; }
    log[0] = '\0';
    if (!valid_target(target)) {
        snprintf(log, log_len, "compile_kernels: target \"%s\" is not a GPU architecture like sm_80 or sm_90",
                 target ? target : "(null)");
        return OPC_E_INVALID;
    }
    /* No NVRTC is a failure, not OPC_E_UNSUPPORTED (which means "compiles nothing", the CPU
       plugin's answer): a compile check must not pass vacuously where NVRTC is missing. */
    const opc_nvrtc *nvrtc = opc_load_nvrtc(0, log, log_len);
    if (!nvrtc) return OPC_E_DEVICE;
    void *cubin = NULL;
    size_t size = 0;
    char compiler_log[4096];
    int rc = opc_compile_kernels(nvrtc, target, &cubin, &size, compiler_log, sizeof compiler_log);
    if (rc) {
        snprintf(log, log_len, "%s", compiler_log);
        return rc;
    }
    for (int i = 0; i < OPC_KERNEL_COUNT; i++) {
        if (!opc_kernel_params(opc_kernel_names[i])) { /* the launch check would refuse it */
            free(cubin);
            snprintf(log, log_len, "kernel %s has no signature in the embedded source (run scripts/embed-cuda-kernels.sh)",
                     opc_kernel_names[i]);
            return OPC_E_DEVICE;
        }
    }
    char missing[64];
    if (opc_cubin_has_kernels(cubin, size, missing, sizeof missing) != 0) {
        free(cubin);
        snprintf(log, log_len, "NVRTC %d.%d, %s: kernel %s is missing from the compiled cubin", nvrtc->major,
                 nvrtc->minor, target, missing);
        return OPC_E_DEVICE;
    }
    free(cubin);
    snprintf(log, log_len, "%d kernels, %zu KiB cubin (NVRTC %d.%d, %s)", OPC_KERNEL_COUNT, (size + 1023) / 1024,
             nvrtc->major, nvrtc->minor, target);
    if (compiler_log[0]) {
        /* Warnings: keep the summary on one line. */
        for (char *c = compiler_log; *c; c++) if (*c == '\n' || *c == '\r') *c = ' ';
        opc_appendf(log, log_len, "; warnings: %s", compiler_log);
    }
    return OPC_OK;
}

/* ---- memory ------------------------------------------------------------------------ */

static int cuda_alloc(opc_context *ctx, size_t bytes, opc_dev_ptr *out) {
    ENTER(ctx);
    REQUIRE(ctx, out != NULL, "alloc: out is NULL");
    *out = NULL;
    if (bytes > SIZE_MAX - 256) return fail(ctx, OPC_E_NOMEM, "alloc: %zu bytes is too large", bytes);
    /* bytes == 0 still gets its own (256-byte) allocation: a valid, distinct pointer. */
    size_t rounded = bytes == 0 ? 256 : (bytes + 255) / 256 * 256;
    CUdeviceptr p = 0;
    CUresult r = ctx->cu->cuMemAlloc_v2(&p, rounded);
    if (r != CUDA_SUCCESS) {
        char text[256];
        describe_cu(ctx->cu, r, text, sizeof text);
        return fail(ctx, r == CUDA_ERROR_OUT_OF_MEMORY ? OPC_E_NOMEM : OPC_E_DEVICE,
                    "alloc: cuMemAlloc of %zu bytes failed: %s", bytes, text);
    }
    r = ctx->cu->cuMemsetD32Async(p, 0, rounded / 4, ctx->stream);
    if (r != CUDA_SUCCESS) {
        ctx->cu->cuMemFree_v2(p);
        return fail_cu(ctx, r, "alloc: zero-filling");
    }
    *out = (opc_dev_ptr)(uintptr_t)p;
    return ok(ctx);
}

static int cuda_free(opc_context *ctx, opc_dev_ptr p) {
    ENTER(ctx);
    if (!p) return ok(ctx);
    /* Queued kernels may still use p. */
    int rc = sync_stream(ctx, "free: cuStreamSynchronize");
    if (rc) return rc;
    CU_TRY(ctx, ctx->cu->cuMemFree_v2(dptr(p)), "free: cuMemFree");
    return ok(ctx);
}

static int cuda_upload(opc_context *ctx, opc_dev_ptr dst, const void *src, size_t bytes) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "upload", dst, bytes);
    REQUIRE_PTR(ctx, "upload", src, bytes);
    if (!bytes) return ok(ctx);
    CU_TRY(ctx, ctx->cu->cuMemcpyHtoDAsync_v2(dptr(dst), src, bytes, ctx->stream), "upload: cuMemcpyHtoDAsync");
    int rc = sync_stream(ctx, "upload: cuStreamSynchronize"); /* src may be reused on return */
    return rc ? rc : ok(ctx);
}

static int cuda_download(opc_context *ctx, void *dst, opc_dev_ptr src, size_t bytes) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "download", dst, bytes);
    REQUIRE_PTR(ctx, "download", src, bytes);
    if (!bytes) return ok(ctx);
    CU_TRY(ctx, ctx->cu->cuMemcpyDtoHAsync_v2(dst, dptr(src), bytes, ctx->stream), "download: cuMemcpyDtoHAsync");
    int rc = sync_stream(ctx, "download: cuStreamSynchronize");
    return rc ? rc : ok(ctx);
}

static int cuda_copy(opc_context *ctx, opc_dev_ptr dst, opc_dev_ptr src, size_t bytes) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "copy", dst, bytes);
    REQUIRE_PTR(ctx, "copy", src, bytes);
    if (!bytes || dst == src) return ok(ctx);
    uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    int overlap = d < s + bytes && s < d + bytes;
    if (!overlap) {
        CU_TRY(ctx, ctx->cu->cuMemcpyDtoDAsync_v2(dptr(dst), dptr(src), bytes, ctx->stream), "copy: cuMemcpyDtoDAsync");
        return ok(ctx);
    }
    /* Device copies must not overlap: go through scratch (memmove semantics). */
    int rc = ensure_scratch(ctx, bytes, "copy");
    if (rc) return rc;
    CU_TRY(ctx, ctx->cu->cuMemcpyDtoDAsync_v2(ctx->scratch, dptr(src), bytes, ctx->stream), "copy: cuMemcpyDtoDAsync");
    CU_TRY(ctx, ctx->cu->cuMemcpyDtoDAsync_v2(dptr(dst), ctx->scratch, bytes, ctx->stream), "copy: cuMemcpyDtoDAsync");
    return ok(ctx);
}

static int cuda_fill(opc_context *ctx, opc_dev_ptr x, float value, size_t n) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "fill", x, n);
    if (!n) return ok(ctx);
    unsigned int bits;
    memcpy(&bits, &value, sizeof bits);
    CU_TRY(ctx, ctx->cu->cuMemsetD32Async(dptr(x), bits, n, ctx->stream), "fill: cuMemsetD32Async");
    return ok(ctx);
}

/* ---- gemm -------------------------------------------------------------------------- */

static int imax1(int a) { return a > 1 ? a : 1; }

static int cuda_gemm(opc_context *ctx, int trans_a, int trans_b, int m, int n, int k, float alpha, opc_dev_ptr a,
                     int lda, opc_dev_ptr b, int ldb, float beta, opc_dev_ptr c, int ldc) {
    ENTER(ctx);
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
    if (k == 0) {
        /* C = beta C, zeros (without reading C) when beta == 0: done here, not left to cuBLAS. */
        int rc = launch(ctx, K_SCALE_MATRIX, grid_for((size_t)m * (size_t)n, THREADS, MAX_BLOCKS), 1, ARG_INT(m),
                        ARG_INT(n), ARG_INT(ldc), ARG_F32(beta), ARG_DEV(c));
        return rc ? rc : ok(ctx);
    }
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: the row-major
       arrays, read column-major, are already the transposes, so swap A and B (and m, n). */
    cublasStatus_t s = ctx->blas->cublasSgemm_v2(ctx->handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                                 trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha,
                                                 (const float *)b, ldb, (const float *)a, lda, &beta, (float *)c, ldc);
    if (s != CUBLAS_STATUS_SUCCESS) {
        char text[128];
        return fail(ctx, OPC_E_DEVICE, "gemm: cublasSgemm (m=%d, n=%d, k=%d) failed: %s", m, n, k,
                    describe_blas(ctx->blas, s, text, sizeof text));
    }
    return ok(ctx);
}

/* ---- element-wise ------------------------------------------------------------------- */

/* A grid-stride kernel over n elements; ok() on success. */
#define launch_n(ctx, kernel, n, ...) \
    finish_launch((ctx), launch((ctx), (kernel), grid_for((n), THREADS, MAX_BLOCKS), 1, __VA_ARGS__))

static int finish_launch(opc_context *ctx, int rc) { return rc ? rc : ok(ctx); }

static int cuda_axpy(opc_context *ctx, size_t n, float alpha, opc_dev_ptr x, opc_dev_ptr y) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "axpy", x, n);
    REQUIRE_PTR(ctx, "axpy", y, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_AXPY, n, ARG_COUNT(n), ARG_F32(alpha), ARG_DEV(x), ARG_DEV(y));
}

static int cuda_scale(opc_context *ctx, size_t n, float alpha, opc_dev_ptr x) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "scale", x, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_SCALE, n, ARG_COUNT(n), ARG_F32(alpha), ARG_DEV(x));
}

static int cuda_relu_forward(opc_context *ctx, size_t n, opc_dev_ptr x, opc_dev_ptr y) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "relu_forward", x, n);
    REQUIRE_PTR(ctx, "relu_forward", y, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_RELU_FORWARD, n, ARG_COUNT(n), ARG_DEV(x), ARG_DEV(y));
}

static int cuda_relu_backward(opc_context *ctx, size_t n, opc_dev_ptr x, opc_dev_ptr dy, opc_dev_ptr dx) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "relu_backward", x, n);
    REQUIRE_PTR(ctx, "relu_backward", dy, n);
    REQUIRE_PTR(ctx, "relu_backward", dx, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_RELU_BACKWARD, n, ARG_COUNT(n), ARG_DEV(x), ARG_DEV(dy), ARG_DEV(dx));
}

static int binary(opc_context *ctx, int kernel, const char *fn, size_t n, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out) {
    ENTER(ctx);
    REQUIRE(ctx, !n || a != NULL, "%s: a is NULL", fn);
    REQUIRE(ctx, !n || b != NULL, "%s: b is NULL", fn);
    REQUIRE(ctx, !n || out != NULL, "%s: out is NULL", fn);
    if (!n) return ok(ctx);
    return launch_n(ctx, kernel, n, ARG_COUNT(n), ARG_DEV(a), ARG_DEV(b), ARG_DEV(out));
}

static int cuda_divide(opc_context *ctx, size_t n, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out) {
    return binary(ctx, K_DIVIDE, "divide", n, a, b, out);
}

static int cuda_multiply(opc_context *ctx, size_t n, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out) {
    return binary(ctx, K_MULTIPLY, "multiply", n, a, b, out);
}

/* ---- row operations ---------------------------------------------------------------- */

static int cuda_add_row_vector(opc_context *ctx, int rows, int cols, opc_dev_ptr v, opc_dev_ptr x) {
    ENTER(ctx);
    CHECK_SHAPE(ctx, "add_row_vector", rows, cols);
    int work = rows > 0 && cols > 0;
    REQUIRE_PTR(ctx, "add_row_vector", v, work);
    REQUIRE_PTR(ctx, "add_row_vector", x, work);
    if (!work) return ok(ctx);
    size_t total = (size_t)rows * (size_t)cols;
    return launch_n(ctx, K_ADD_ROW_VECTOR, total, ARG_COUNT(total), ARG_INT(cols), ARG_DEV(v), ARG_DEV(x));
}

static int cuda_scale_rows(opc_context *ctx, int rows, int cols, opc_dev_ptr s, opc_dev_ptr x) {
    ENTER(ctx);
    CHECK_SHAPE(ctx, "scale_rows", rows, cols);
    int work = rows > 0 && cols > 0;
    REQUIRE_PTR(ctx, "scale_rows", s, work);
    REQUIRE_PTR(ctx, "scale_rows", x, work);
    if (!work) return ok(ctx);
    size_t total = (size_t)rows * (size_t)cols;
    return launch_n(ctx, K_SCALE_ROWS, total, ARG_COUNT(total), ARG_INT(cols), ARG_DEV(s), ARG_DEV(x));
}

static int cuda_sum_rows(opc_context *ctx, int rows, int cols, opc_dev_ptr x, float beta, opc_dev_ptr out) {
    ENTER(ctx);
    CHECK_SHAPE(ctx, "sum_rows", rows, cols);
    REQUIRE_PTR(ctx, "sum_rows", out, cols > 0);
    REQUIRE_PTR(ctx, "sum_rows", x, cols > 0 && rows > 0);
    if (cols == 0) return ok(ctx);
    /* Pass 1: column sums over chunks of rows; pass 2: the chunk sums in order. At most
       1024 chunks, and at most 16 Mi partial sums (64 MiB of scratch) for wide matrices. */
    long long max_chunks = 16777216LL / cols;
    if (max_chunks > 1024) max_chunks = 1024;
    if (max_chunks < 1) max_chunks = 1;
    int rows_per_chunk = (int)(((long long)rows + max_chunks - 1) / max_chunks);
    if (rows_per_chunk < 64) rows_per_chunk = 64;
    int chunks = (int)(((long long)rows + rows_per_chunk - 1) / rows_per_chunk);
    unsigned col_blocks = (unsigned)(((size_t)cols + THREADS - 1) / THREADS);
    CUdeviceptr partial = 0;
    if (chunks > 0) {
        int rc = ensure_scratch(ctx, (size_t)chunks * (size_t)cols * sizeof(float), "sum_rows");
        if (rc) return rc;
        partial = ctx->scratch;
        rc = launch(ctx, K_SUM_ROWS_PARTIAL, col_blocks, (unsigned)chunks, ARG_INT(rows), ARG_INT(cols),
                    ARG_INT(rows_per_chunk), ARG_DEV(x), ARG_CU(partial));
        if (rc) return rc;
    }
    int rc = launch(ctx, K_SUM_ROWS_FINISH, col_blocks, 1, ARG_INT(cols), ARG_INT(chunks), ARG_CU(partial),
                    ARG_F32(beta), ARG_DEV(out));
    return rc ? rc : ok(ctx);
}

static unsigned row_blocks(int rows) { return (unsigned)(((long long)rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK); }

static int cuda_row_norms(opc_context *ctx, int rows, int cols, opc_dev_ptr x, opc_dev_ptr out) {
    ENTER(ctx);
    CHECK_SHAPE(ctx, "row_norms", rows, cols);
    REQUIRE_PTR(ctx, "row_norms", out, rows > 0);
    REQUIRE_PTR(ctx, "row_norms", x, rows > 0 && cols > 0);
    if (rows == 0) return ok(ctx);
    /* x is not read when cols == 0 (and may be NULL then). */
    int rc = launch(ctx, K_ROW_NORMS, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(cols), ARG_DEV(x), ARG_DEV(out));
    return rc ? rc : ok(ctx);
}

static int cuda_row_dots(opc_context *ctx, int rows, int cols, opc_dev_ptr a, opc_dev_ptr b, opc_dev_ptr out) {
    ENTER(ctx);
    CHECK_SHAPE(ctx, "row_dots", rows, cols);
    REQUIRE_PTR(ctx, "row_dots", out, rows > 0);
    REQUIRE_PTR(ctx, "row_dots", a, rows > 0 && cols > 0);
    REQUIRE_PTR(ctx, "row_dots", b, rows > 0 && cols > 0);
    if (rows == 0) return ok(ctx);
    int rc = launch(ctx, K_ROW_DOTS, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(cols), ARG_DEV(a), ARG_DEV(b),
                    ARG_DEV(out));
    return rc ? rc : ok(ctx);
}

/* ---- loss -------------------------------------------------------------------------- */

static int cuda_softmax_xent(opc_context *ctx, int rows, int classes, opc_dev_ptr logits, opc_dev_ptr labels,
                             opc_dev_ptr dlogits, float *loss_out, int64_t *correct_out) {
    ENTER(ctx);
    REQUIRE(ctx, rows >= 0 && classes >= 0, "softmax_xent: negative size (rows=%d, classes=%d)", rows, classes);
    REQUIRE(ctx, rows == 0 || classes >= 1, "softmax_xent: %d rows with 0 classes", rows);
    REQUIRE_PTR(ctx, "softmax_xent", logits, rows > 0);
    REQUIRE_PTR(ctx, "softmax_xent", labels, rows > 0);
    REQUIRE_PTR(ctx, "softmax_xent", dlogits, rows > 0);
    if (rows == 0) {
        if (loss_out) *loss_out = 0.0f;
        if (correct_out) *correct_out = 0;
        return ok(ctx);
    }
    const opc_cuda_driver *cu = ctx->cu;

    /* 1. Labels in range? Checked on the device; the kernels after it on the stream write
       nothing when one is not, and the flag comes back with the totals: one sync per call. */
    CUdeviceptr flag = ctx->aux;
    CU_TRY(ctx, cu->cuMemsetD32Async(flag, 0, 1, ctx->stream), "softmax_xent: cuMemsetD32Async");
    int rc = launch(ctx, K_XENT_VALIDATE, grid_for((size_t)rows, THREADS, MAX_BLOCKS), 1, ARG_INT(rows),
                    ARG_INT(classes), ARG_DEV(labels), ARG_CU(flag));
    if (rc) return rc;

    /* 2. Per row: dlogits, loss and hit, into scratch [rows doubles | rows ints]. */
    if ((rc = ensure_scratch(ctx, (size_t)rows * (sizeof(double) + sizeof(int)), "softmax_xent"))) return rc;
    CUdeviceptr row_loss = ctx->scratch, row_correct = ctx->scratch + (size_t)rows * sizeof(double);
    float inv_rows = (float)(1.0 / (double)rows);
    if ((rc = launch(ctx, K_XENT_ROWS, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(classes), ARG_DEV(logits),
                     ARG_DEV(labels), ARG_DEV(dlogits), ARG_F32(inv_rows), ARG_CU(row_loss), ARG_CU(row_correct),
                     ARG_CU(flag))))
        return rc;

    /* 3. Totals, in a fixed order; then flag, loss and count in one download. */
    CUdeviceptr out_loss = ctx->aux + 8, out_correct = ctx->aux + 16;
    if ((rc = launch(ctx, K_XENT_FINISH, 1, 1, ARG_INT(rows), ARG_CU(row_loss), ARG_CU(row_correct), ARG_CU(out_loss),
                     ARG_CU(out_correct), ARG_CU(flag))))
        return rc;
    unsigned char results[24];
    CU_TRY(ctx, cu->cuMemcpyDtoHAsync_v2(results, flag, sizeof results, ctx->stream), "softmax_xent: cuMemcpyDtoHAsync");
    if ((rc = sync_stream(ctx, "softmax_xent: cuStreamSynchronize"))) return rc;
    int bad;
    double total;
    long long correct;
    memcpy(&bad, results, sizeof bad);
    memcpy(&total, results + 8, 8);
    memcpy(&correct, results + 16, 8);
    if (bad) {
        /* Error path only: find the first bad row on the host for the message. */
        int64_t *host = malloc((size_t)rows * sizeof *host);
        if (!host) return fail(ctx, OPC_E_INVALID, "softmax_xent: a label is outside [0, %d)", classes);
        CUresult r = cu->cuMemcpyDtoHAsync_v2(host, dptr(labels), (size_t)rows * sizeof *host, ctx->stream);
        if (r == CUDA_SUCCESS) r = cu->cuStreamSynchronize(ctx->stream);
        int row = -1;
        for (int i = 0; r == CUDA_SUCCESS && i < rows && row < 0; i++) if (host[i] < 0 || host[i] >= classes) row = i;
        long long label = row >= 0 ? (long long)host[row] : 0;
        free(host);
        if (row < 0) return fail(ctx, OPC_E_INVALID, "softmax_xent: a label is outside [0, %d)", classes);
        return fail(ctx, OPC_E_INVALID, "softmax_xent: label %lld of row %d is outside [0, %d)", label, row, classes);
    }
    if (loss_out) *loss_out = (float)(total / (double)rows);
    if (correct_out) *correct_out = (int64_t)correct;
    return ok(ctx);
}

static int cuda_sum_squares(opc_context *ctx, size_t n, opc_dev_ptr x, double *out) {
    ENTER(ctx);
    REQUIRE(ctx, out != NULL, "sum_squares: out is NULL");
    REQUIRE_PTR(ctx, "sum_squares", x, n);
    if (!n) {
        *out = 0.0;
        return ok(ctx);
    }
    /* Block count from n alone (so the summation order is too), at most 1024 partials. */
    unsigned blocks = grid_for(n, (size_t)THREADS * 8, 1024);
    int rc = ensure_scratch(ctx, (size_t)blocks * sizeof(double), "sum_squares");
    if (rc) return rc;
    CUdeviceptr partial = ctx->scratch, result = ctx->aux + 8;
    if ((rc = launch(ctx, K_SUM_SQUARES_PARTIAL, blocks, 1, ARG_COUNT(n), ARG_DEV(x), ARG_CU(partial)))) return rc;
    if ((rc = launch(ctx, K_SUM_DOUBLES, 1, 1, ARG_INT((int)blocks), ARG_CU(partial), ARG_CU(result)))) return rc;
    double value = 0.0;
    CU_TRY(ctx, ctx->cu->cuMemcpyDtoHAsync_v2(&value, result, sizeof value, ctx->stream), "sum_squares: cuMemcpyDtoHAsync");
    if ((rc = sync_stream(ctx, "sum_squares: cuStreamSynchronize"))) return rc;
    *out = value;
    return ok(ctx);
}

/* ---- optimizer --------------------------------------------------------------------- */

static int cuda_adamw(opc_context *ctx, size_t n, opc_dev_ptr p, opc_dev_ptr g, opc_dev_ptr m, opc_dev_ptr v, float lr,
                      float beta1, float beta2, float eps, float weight_decay, int64_t t) {
    ENTER(ctx);
    REQUIRE(ctx, t >= 1, "adamw: step t=%lld must be >= 1", (long long)t);
    REQUIRE_PTR(ctx, "adamw", p, n);
    REQUIRE_PTR(ctx, "adamw", g, n);
    REQUIRE_PTR(ctx, "adamw", m, n);
    REQUIRE_PTR(ctx, "adamw", v, n);
    if (!n) return ok(ctx);
    /* Scalars exactly as the CPU plugin (and torch) compute them: in double, used in f32. */
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    float decay = (float)(1.0 - (double)lr * (double)weight_decay);
    float neg_step = (float)(-((double)lr / bc1));
    float bc2_sqrt = (float)sqrt(bc2);
    float one_m_b1 = (float)(1.0 - (double)beta1);
    float one_m_b2 = (float)(1.0 - (double)beta2);
    int lerp_small = fabsf(one_m_b1) < 0.5f; /* torch's lerp picks its formula by |weight| */
    return launch_n(ctx, K_ADAMW, n, ARG_COUNT(n), ARG_DEV(p), ARG_DEV(g), ARG_DEV(m), ARG_DEV(v), ARG_F32(decay),
                    ARG_F32(neg_step), ARG_F32(bc2_sqrt), ARG_F32(one_m_b1), ARG_F32(one_m_b2), ARG_F32(beta2),
                    ARG_F32(eps), ARG_INT(lerp_small));
}

/* ---- transformer kernels (v3) ------------------------------------------------------- */

/* Queues the check of int32 values[0..count) against [0, limit) into the flag at aux; the
   work kernels queued after it skip when it is set, and finish_index_check reads it. */
static int start_index_check(opc_context *ctx, const char *fn, opc_dev_ptr values, int count, int limit) {
    CU_TRY(ctx, ctx->cu->cuMemsetD32Async(ctx->aux, 0, 1, ctx->stream), fn);
    return launch(ctx, K_INDEX_VALIDATE, grid_for((size_t)count, THREADS, MAX_BLOCKS), 1, ARG_INT(count), ARG_INT(limit),
                  ARG_DEV(values), ARG_CU(ctx->aux));
}

/* One sync per call: the flag comes back; when set, the first bad value is found on the host
   for the message ("embedding_forward: id 70 of token 3 is outside [0, 64)"). */
static int finish_index_check(opc_context *ctx, const char *fn, const char *what, const char *item,
                              opc_dev_ptr values, int count, int limit) {
    int bad = 0;
    CU_TRY(ctx, ctx->cu->cuMemcpyDtoHAsync_v2(&bad, ctx->aux, sizeof bad, ctx->stream), fn);
    int rc = sync_stream(ctx, fn);
    if (rc) return rc;
    if (!bad) return ok(ctx);
    int32_t *host = malloc((size_t)count * sizeof *host);
    if (!host) return fail(ctx, OPC_E_INVALID, "%s: a %s is outside [0, %d)", fn, what, limit);
    CUresult r = ctx->cu->cuMemcpyDtoHAsync_v2(host, dptr(values), (size_t)count * sizeof *host, ctx->stream);
    if (r == CUDA_SUCCESS) r = ctx->cu->cuStreamSynchronize(ctx->stream);
    int at = -1;
    for (int i = 0; r == CUDA_SUCCESS && i < count && at < 0; i++) if (host[i] < 0 || host[i] >= limit) at = i;
    int value = at >= 0 ? host[at] : 0;
    free(host);
    if (at < 0) return fail(ctx, OPC_E_INVALID, "%s: a %s is outside [0, %d)", fn, what, limit);
    return fail(ctx, OPC_E_INVALID, "%s: %s %d of %s %d is outside [0, %d)", fn, what, value, item, at, limit);
}

static int cuda_embedding_forward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr table,
                                  opc_dev_ptr ids, opc_dev_ptr out) {
    ENTER(ctx);
    REQUIRE(ctx, tokens >= 0 && vocab >= 0 && dim >= 0, "embedding_forward: negative size (tokens=%d, vocab=%d, dim=%d)",
            tokens, vocab, dim);
    /* Nothing to do (no tokens or no columns): OK, pointers may be NULL, as the CPU plugin. */
    if (tokens == 0 || dim == 0) return ok(ctx);
    REQUIRE_PTR(ctx, "embedding_forward", ids, 1);
    REQUIRE_PTR(ctx, "embedding_forward", table, dim > 0);
    REQUIRE_PTR(ctx, "embedding_forward", out, dim > 0);
    int rc = start_index_check(ctx, "embedding_forward", ids, tokens, vocab);
    if (rc) return rc;
    size_t total = (size_t)tokens * (size_t)dim;
    if (total > 0 &&
        (rc = launch(ctx, K_EMBEDDING_FORWARD, grid_for(total, THREADS, MAX_BLOCKS), 1, ARG_COUNT(total), ARG_INT(dim),
                     ARG_DEV(table), ARG_DEV(ids), ARG_DEV(out), ARG_CU(ctx->aux))))
        return rc;
    return finish_index_check(ctx, "embedding_forward", "id", "token", ids, tokens, vocab);
}

static int cuda_embedding_backward(opc_context *ctx, int tokens, int vocab, int dim, opc_dev_ptr ids, opc_dev_ptr dout,
                                   opc_dev_ptr dtable) {
    ENTER(ctx);
    REQUIRE(ctx, tokens >= 0 && vocab >= 0 && dim >= 0, "embedding_backward: negative size (tokens=%d, vocab=%d, dim=%d)",
            tokens, vocab, dim);
    /* Nothing to do (no tokens or no columns): OK, pointers may be NULL, as the CPU plugin. */
    if (tokens == 0 || dim == 0) return ok(ctx);
    REQUIRE_PTR(ctx, "embedding_backward", ids, 1);
    REQUIRE_PTR(ctx, "embedding_backward", dout, dim > 0);
    REQUIRE_PTR(ctx, "embedding_backward", dtable, dim > 0);
    int rc = start_index_check(ctx, "embedding_backward", ids, tokens, vocab);
    if (rc) return rc;
    /* A thread per column walks the tokens in order: the ABI's accumulation order, no atomics. */
    if (dim > 0 &&
        (rc = launch(ctx, K_EMBEDDING_BACKWARD, (unsigned)(((size_t)dim + THREADS - 1) / THREADS), 1, ARG_INT(tokens),
                     ARG_INT(dim), ARG_DEV(ids), ARG_DEV(dout), ARG_DEV(dtable), ARG_CU(ctx->aux))))
        return rc;
    return finish_index_check(ctx, "embedding_backward", "id", "token", ids, tokens, vocab);
}

static int cuda_rmsnorm_forward(opc_context *ctx, int rows, int dim, float eps, opc_dev_ptr x, opc_dev_ptr w,
                                opc_dev_ptr y, opc_dev_ptr rstd) {
    ENTER(ctx);
    REQUIRE(ctx, rows >= 0 && dim >= 0, "rmsnorm_forward: negative size (rows=%d, dim=%d)", rows, dim);
    /* dim == 0: no y to write and no mean to take: nothing to do. */
    if (rows == 0 || dim == 0) return ok(ctx);
    REQUIRE_PTR(ctx, "rmsnorm_forward", x, 1);
    REQUIRE_PTR(ctx, "rmsnorm_forward", w, 1);
    REQUIRE_PTR(ctx, "rmsnorm_forward", y, 1);
    int rc = launch(ctx, K_RMSNORM_FORWARD, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(dim), ARG_F32(eps), ARG_DEV(x),
                    ARG_DEV(w), ARG_DEV(y), ARG_DEV(rstd));
    return rc ? rc : ok(ctx);
}

static int cuda_rmsnorm_backward(opc_context *ctx, int rows, int dim, opc_dev_ptr x, opc_dev_ptr w, opc_dev_ptr rstd,
                                 opc_dev_ptr dy, opc_dev_ptr dx, opc_dev_ptr dw) {
    ENTER(ctx);
    REQUIRE(ctx, rows >= 0 && dim >= 0, "rmsnorm_backward: negative size (rows=%d, dim=%d)", rows, dim);
    if (rows == 0 || dim == 0) return ok(ctx);
    REQUIRE_PTR(ctx, "rmsnorm_backward", x, 1);
    REQUIRE_PTR(ctx, "rmsnorm_backward", w, 1);
    REQUIRE_PTR(ctx, "rmsnorm_backward", rstd, 1);
    REQUIRE_PTR(ctx, "rmsnorm_backward", dy, 1);
    REQUIRE_PTR(ctx, "rmsnorm_backward", dx, 1);
    int rc;
    if (dw) {
        /* dw first: dx may alias dy. Column sums over chunks of rows (double), then the chunk
           sums in order; the chunking depends only on the sizes (at most 1024 chunks and
           8 Mi partials = 64 MiB of scratch). */
        long long max_chunks = 8388608LL / dim;
        if (max_chunks > 1024) max_chunks = 1024;
        if (max_chunks < 1) max_chunks = 1;
        int rows_per_chunk = (int)(((long long)rows + max_chunks - 1) / max_chunks);
        if (rows_per_chunk < 64) rows_per_chunk = 64;
        int chunks = (int)(((long long)rows + rows_per_chunk - 1) / rows_per_chunk);
        unsigned col_blocks = (unsigned)(((size_t)dim + THREADS - 1) / THREADS);
        if ((rc = ensure_scratch(ctx, (size_t)chunks * (size_t)dim * sizeof(double), "rmsnorm_backward"))) return rc;
        CUdeviceptr partial = ctx->scratch;
        if ((rc = launch(ctx, K_RMSNORM_DW_PARTIAL, col_blocks, (unsigned)chunks, ARG_INT(rows), ARG_INT(dim),
                         ARG_INT(rows_per_chunk), ARG_DEV(x), ARG_DEV(rstd), ARG_DEV(dy), ARG_CU(partial))) ||
            (rc = launch(ctx, K_ADD_CHUNK_SUMS, col_blocks, 1, ARG_INT(dim), ARG_INT(chunks), ARG_CU(partial), ARG_DEV(dw))))
            return rc;
    }
    rc = launch(ctx, K_RMSNORM_BACKWARD_DX, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(dim), ARG_DEV(x), ARG_DEV(w),
                ARG_DEV(rstd), ARG_DEV(dy), ARG_DEV(dx));
    return rc ? rc : ok(ctx);
}

static int cuda_rope(opc_context *ctx, int rows, int heads, int head_dim, opc_dev_ptr x, opc_dev_ptr positions,
                     int table_rows, opc_dev_ptr cos, opc_dev_ptr sin, int inverse) {
    ENTER(ctx);
    REQUIRE(ctx, rows >= 0 && heads >= 0 && head_dim >= 0 && table_rows >= 0,
            "rope: negative size (rows=%d, heads=%d, head_dim=%d, table_rows=%d)", rows, heads, head_dim, table_rows);
    REQUIRE(ctx, head_dim % 2 == 0, "rope: head_dim=%d is odd", head_dim);
    if (rows == 0) return ok(ctx);
    size_t total = (size_t)rows * (size_t)heads * (size_t)(head_dim / 2);
    REQUIRE_PTR(ctx, "rope", positions, 1);
    REQUIRE_PTR(ctx, "rope", x, total > 0);
    REQUIRE_PTR(ctx, "rope", cos, total > 0);
    REQUIRE_PTR(ctx, "rope", sin, total > 0);
    int rc = start_index_check(ctx, "rope", positions, rows, table_rows);
    if (rc) return rc;
    if (total > 0 &&
        (rc = launch(ctx, K_ROPE, grid_for(total, THREADS, MAX_BLOCKS), 1, ARG_COUNT(total), ARG_INT(heads),
                     ARG_INT(head_dim), ARG_DEV(x), ARG_DEV(positions), ARG_DEV(cos), ARG_DEV(sin),
                     ARG_F32(inverse ? -1.0f : 1.0f), ARG_CU(ctx->aux))))
        return rc;
    return finish_index_check(ctx, "rope", "position", "row", positions, rows, table_rows);
}

/* The shape checks both attention calls share; *work = 0 when there is nothing to do. */
static int check_attention(opc_context *ctx, const char *fn, int batch, int seq, int heads, int kv_heads, int head_dim,
                           int *work) {
    REQUIRE(ctx, batch >= 0 && seq >= 0 && heads >= 0 && kv_heads >= 0 && head_dim >= 0,
            "%s: negative size (batch=%d, seq=%d, heads=%d, kv_heads=%d, head_dim=%d)", fn, batch, seq, heads, kv_heads,
            head_dim);
    /* head_dim == 0 counts as nothing to do (as the CPU plugin): no probs written either. */
    *work = batch > 0 && seq > 0 && heads > 0 && head_dim > 0;
    if (!*work) return OPC_OK;
    REQUIRE(ctx, kv_heads >= 1 && heads % kv_heads == 0, "%s: heads=%d is not a multiple of kv_heads=%d", fn, heads,
            kv_heads);
    /* One block per query row: the grid's x limit. */
    if ((long long)batch * heads * seq > 2147483647LL)
        return fail(ctx, OPC_E_UNSUPPORTED, "%s: batch*heads*seq=%lld query rows exceeds the CUDA grid limit", fn,
                    (long long)batch * heads * seq);
    return OPC_OK;
}

static int cuda_attention_forward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                                  float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                                  opc_dev_ptr out) {
    ENTER(ctx);
    int work, rc = check_attention(ctx, "attention_forward", batch, seq, heads, kv_heads, head_dim, &work);
    if (rc) return rc;
    if (!work) return ok(ctx);
    REQUIRE_PTR(ctx, "attention_forward", probs, 1);
    REQUIRE_PTR(ctx, "attention_forward", q, 1);
    REQUIRE_PTR(ctx, "attention_forward", k, 1);
    REQUIRE_PTR(ctx, "attention_forward", v, 1);
    REQUIRE_PTR(ctx, "attention_forward", out, 1);
    unsigned blocks = (unsigned)((long long)batch * heads * seq);
    rc = launch(ctx, K_ATTENTION_FORWARD, blocks, 1, ARG_INT(seq), ARG_INT(heads), ARG_INT(kv_heads), ARG_INT(head_dim),
                ARG_F32(scale), ARG_DEV(q), ARG_DEV(k), ARG_DEV(v), ARG_DEV(probs), ARG_DEV(out));
    return rc ? rc : ok(ctx);
}

static int cuda_attention_backward(opc_context *ctx, int batch, int seq, int heads, int kv_heads, int head_dim,
                                   float scale, opc_dev_ptr q, opc_dev_ptr k, opc_dev_ptr v, opc_dev_ptr probs,
                                   opc_dev_ptr dout, opc_dev_ptr dq, opc_dev_ptr dk, opc_dev_ptr dv) {
    ENTER(ctx);
    int work, rc = check_attention(ctx, "attention_backward", batch, seq, heads, kv_heads, head_dim, &work);
    if (rc) return rc;
    if (!work) return ok(ctx);
    REQUIRE_PTR(ctx, "attention_backward", q, 1);
    REQUIRE_PTR(ctx, "attention_backward", k, 1);
    REQUIRE_PTR(ctx, "attention_backward", v, 1);
    REQUIRE_PTR(ctx, "attention_backward", probs, 1);
    REQUIRE_PTR(ctx, "attention_backward", dout, 1);
    REQUIRE_PTR(ctx, "attention_backward", dq, 1);
    REQUIRE_PTR(ctx, "attention_backward", dk, 1);
    REQUIRE_PTR(ctx, "attention_backward", dv, 1);
    /* dS, the shape of probs, in scratch between the two passes. */
    size_t ds_bytes = (size_t)batch * (size_t)heads * (size_t)seq * (size_t)seq * sizeof(float);
    if ((rc = ensure_scratch(ctx, ds_bytes, "attention_backward"))) return rc;
    CUdeviceptr ds = ctx->scratch;
    unsigned q_blocks = (unsigned)((long long)batch * heads * seq), kv_blocks = (unsigned)((long long)batch * kv_heads * seq);
    if ((rc = launch(ctx, K_ATTENTION_BACKWARD_DQ, q_blocks, 1, ARG_INT(seq), ARG_INT(heads), ARG_INT(kv_heads),
                     ARG_INT(head_dim), ARG_F32(scale), ARG_DEV(k), ARG_DEV(v), ARG_DEV(probs), ARG_DEV(dout), ARG_CU(ds),
                     ARG_DEV(dq))) ||
        (rc = launch(ctx, K_ATTENTION_BACKWARD_DKV, kv_blocks, 1, ARG_INT(seq), ARG_INT(heads), ARG_INT(kv_heads),
                     ARG_INT(head_dim), ARG_F32(scale), ARG_DEV(q), ARG_DEV(probs), ARG_DEV(dout), ARG_CU(ds),
                     ARG_DEV(dk), ARG_DEV(dv))))
        return rc;
    return ok(ctx);
}

static int cuda_silu_gate_forward(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr h) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "silu_gate_forward", g, n);
    REQUIRE_PTR(ctx, "silu_gate_forward", u, n);
    REQUIRE_PTR(ctx, "silu_gate_forward", h, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_SILU_GATE_FORWARD, n, ARG_COUNT(n), ARG_DEV(g), ARG_DEV(u), ARG_DEV(h));
}

static int cuda_silu_gate_backward(opc_context *ctx, size_t n, opc_dev_ptr g, opc_dev_ptr u, opc_dev_ptr dh,
                                   opc_dev_ptr dg, opc_dev_ptr du) {
    ENTER(ctx);
    REQUIRE_PTR(ctx, "silu_gate_backward", g, n);
    REQUIRE_PTR(ctx, "silu_gate_backward", u, n);
    REQUIRE_PTR(ctx, "silu_gate_backward", dh, n);
    REQUIRE_PTR(ctx, "silu_gate_backward", dg, n);
    REQUIRE_PTR(ctx, "silu_gate_backward", du, n);
    if (!n) return ok(ctx);
    return launch_n(ctx, K_SILU_GATE_BACKWARD, n, ARG_COUNT(n), ARG_DEV(g), ARG_DEV(u), ARG_DEV(dh), ARG_DEV(dg),
                    ARG_DEV(du));
}

static int cuda_token_xent(opc_context *ctx, int rows, int classes, opc_dev_ptr logits, opc_dev_ptr labels,
                           int64_t ignore_index, float grad_scale, opc_dev_ptr dlogits, double *loss_sum_out,
                           int64_t *count_out) {
    ENTER(ctx);
    REQUIRE(ctx, rows >= 0 && classes >= 0, "token_xent: negative size (rows=%d, classes=%d)", rows, classes);
    if (rows == 0) {
        if (loss_sum_out) *loss_sum_out = 0.0;
        if (count_out) *count_out = 0;
        return ok(ctx);
    }
    REQUIRE(ctx, classes >= 1, "token_xent: %d rows with 0 classes", rows);
    REQUIRE_PTR(ctx, "token_xent", labels, 1);
    REQUIRE_PTR(ctx, "token_xent", logits, 1);
    REQUIRE_PTR(ctx, "token_xent", dlogits, 1);
    const opc_cuda_driver *cu = ctx->cu;
    /* As softmax_xent: labels checked on the device into a flag the later kernels honour;
       flag, loss sum and count come back in one download. */
    CUdeviceptr flag = ctx->aux;
    CU_TRY(ctx, cu->cuMemsetD32Async(flag, 0, 1, ctx->stream), "token_xent: cuMemsetD32Async");
    int rc = launch(ctx, K_TOKEN_XENT_VALIDATE, grid_for((size_t)rows, THREADS, MAX_BLOCKS), 1, ARG_INT(rows),
                    ARG_INT(classes), ARG_DEV(labels), ARG_I64((long long)ignore_index), ARG_CU(flag));
    if (rc) return rc;
    if ((rc = ensure_scratch(ctx, (size_t)rows * (sizeof(double) + sizeof(int)), "token_xent"))) return rc;
    CUdeviceptr row_loss = ctx->scratch, row_counted = ctx->scratch + (size_t)rows * sizeof(double);
    if ((rc = launch(ctx, K_TOKEN_XENT_ROWS, row_blocks(rows), 1, ARG_INT(rows), ARG_INT(classes), ARG_DEV(logits),
                     ARG_DEV(labels), ARG_I64((long long)ignore_index), ARG_F32(grad_scale), ARG_DEV(dlogits),
                     ARG_CU(row_loss), ARG_CU(row_counted), ARG_CU(flag))))
        return rc;
    CUdeviceptr out_loss = ctx->aux + 8, out_count = ctx->aux + 16;
    if ((rc = launch(ctx, K_XENT_FINISH, 1, 1, ARG_INT(rows), ARG_CU(row_loss), ARG_CU(row_counted), ARG_CU(out_loss),
                     ARG_CU(out_count), ARG_CU(flag))))
        return rc;
    unsigned char results[24];
    CU_TRY(ctx, cu->cuMemcpyDtoHAsync_v2(results, flag, sizeof results, ctx->stream), "token_xent: cuMemcpyDtoHAsync");
    if ((rc = sync_stream(ctx, "token_xent: cuStreamSynchronize"))) return rc;
    int bad;
    double total;
    long long count;
    memcpy(&bad, results, sizeof bad);
    memcpy(&total, results + 8, 8);
    memcpy(&count, results + 16, 8);
    if (bad) {
        int64_t *host = malloc((size_t)rows * sizeof *host);
        if (!host) return fail(ctx, OPC_E_INVALID, "token_xent: a label is outside [0, %d)", classes);
        CUresult r = cu->cuMemcpyDtoHAsync_v2(host, dptr(labels), (size_t)rows * sizeof *host, ctx->stream);
        if (r == CUDA_SUCCESS) r = cu->cuStreamSynchronize(ctx->stream);
        int row = -1;
        for (int i = 0; r == CUDA_SUCCESS && i < rows && row < 0; i++)
            if (host[i] != ignore_index && (host[i] < 0 || host[i] >= classes)) row = i;
        long long label = row >= 0 ? (long long)host[row] : 0;
        free(host);
        if (row < 0) return fail(ctx, OPC_E_INVALID, "token_xent: a label is outside [0, %d)", classes);
        return fail(ctx, OPC_E_INVALID, "token_xent: label %lld of row %d is outside [0, %d) and not ignore_index %lld",
                    label, row, classes, (long long)ignore_index);
    }
    if (loss_sum_out) *loss_sum_out = total;
    if (count_out) *count_out = (int64_t)count;
    return ok(ctx);
}

/* ---- entry ------------------------------------------------------------------------- */

#define CUDA_PLUGIN_TABLE(version)                                                                   \
    {                                                                                                \
        .abi_version = (version),                                                                    \
        .struct_size = (uint32_t)sizeof(opc_plugin),                                                 \
        .name = "cuda",                                                                              \
        .description = "NVIDIA GPU kernels: cuBLAS SGEMM (FP32; TF32 on request), NVRTC-compiled "   \
                       "element-wise, reduction, loss and transformer kernels; CUDA libraries loaded at run time", \
        .create = cuda_create,                                                                       \
        .destroy = cuda_destroy,                                                                     \
        .last_error = cuda_last_error,                                                               \
        .alloc = cuda_alloc,                                                                         \
        .free = cuda_free,                                                                           \
        .upload = cuda_upload,                                                                       \
        .download = cuda_download,                                                                   \
        .copy = cuda_copy,                                                                           \
        .fill = cuda_fill,                                                                           \
        .gemm = cuda_gemm,                                                                           \
        .axpy = cuda_axpy,                                                                           \
        .scale = cuda_scale,                                                                         \
        .relu_forward = cuda_relu_forward,                                                           \
        .relu_backward = cuda_relu_backward,                                                         \
        .add_row_vector = cuda_add_row_vector,                                                       \
        .sum_rows = cuda_sum_rows,                                                                   \
        .row_norms = cuda_row_norms,                                                                 \
        .scale_rows = cuda_scale_rows,                                                               \
        .row_dots = cuda_row_dots,                                                                   \
        .softmax_xent = cuda_softmax_xent,                                                           \
        .sum_squares = cuda_sum_squares,                                                             \
        .adamw = cuda_adamw,                                                                         \
        .probe = cuda_probe,                                                                         \
        .device_info = cuda_device_info,                                                             \
        .create_with_options = cuda_create_with_options,                                             \
        .compile_kernels = cuda_compile_kernels,                                                     \
        .divide = cuda_divide,                                                                       \
        .multiply = cuda_multiply,                                                                   \
        .embedding_forward = cuda_embedding_forward,                                                 \
        .embedding_backward = cuda_embedding_backward,                                               \
        .rmsnorm_forward = cuda_rmsnorm_forward,                                                     \
        .rmsnorm_backward = cuda_rmsnorm_backward,                                                   \
        .rope = cuda_rope,                                                                           \
        .attention_forward = cuda_attention_forward,                                                 \
        .attention_backward = cuda_attention_backward,                                               \
        .silu_gate_forward = cuda_silu_gate_forward,                                                 \
        .silu_gate_backward = cuda_silu_gate_backward,                                               \
        .token_xent = cuda_token_xent,                                                               \
    }

/* One table per host version served: abi_version must be the host's. */
static const opc_plugin cuda_plugin_v1 = CUDA_PLUGIN_TABLE(1u);
static const opc_plugin cuda_plugin_v2 = CUDA_PLUGIN_TABLE(2u);
static const opc_plugin cuda_plugin_v3 = CUDA_PLUGIN_TABLE(3u);

__attribute__((visibility("default")))
const opc_plugin *opc_plugin_entry(uint32_t host_abi_version) {
    switch (host_abi_version) {
    case 1: return &cuda_plugin_v1;
    case 2: return &cuda_plugin_v2;
    case 3: return &cuda_plugin_v3;
    default: return NULL;
    }
}
