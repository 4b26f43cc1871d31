// A CPU stand-in for libcuda.so.1, for testing the CUDA plugin's host code on machines
// without a GPU (scripts/cuda-emulator/run.sh). It implements the driver functions the
// plugin uses; "device memory" is host memory, every copy is bounds-checked against the
// live allocations, and cuLaunchKernel runs the plugin's real kernels
// (Sources/OpConvertCUDAPlugin/kernels/opc_kernels.cu, compiled here as C++) with one
// coroutine per CUDA thread, so __syncthreads and warp shuffles behave as on a GPU.
// cuModuleLoadData accepts a cubin from the real NVRTC (it checks the ELF magic) and
// cuModuleGetFunction looks kernels up by name, so the launch argument arrays are decoded
// with the kernels' own C++ parameter types.
//
// Not a GPU: no concurrency between blocks, no memory model; a test aid only.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- the CUDA built-ins the kernels use ------------------------------------------------

struct emu_dim3 { unsigned x, y, z; };
static emu_dim3 blockIdx, blockDim, gridDim;

struct emu_thread;
static emu_thread *emu_current;
static emu_dim3 emu_thread_index();
#define threadIdx (emu_thread_index())

static void emu_block_barrier();
static void emu_warp_barrier();
static uint64_t *emu_warp_slots();
static unsigned emu_lane();

#define __global__
#define __device__
#define __shared__ static  // one block runs at a time, on one OS thread
static inline void __syncthreads() { emu_block_barrier(); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }

template <class T> static T __shfl_xor_sync(unsigned mask, T value, int offset) {
    (void)mask;
    static_assert(sizeof(T) <= 8, "shuffle of a wide type");
    uint64_t *slots = emu_warp_slots();
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof value);
    slots[emu_lane()] = bits;
    emu_warp_barrier();
    bits = slots[emu_lane() ^ (unsigned)offset];
    emu_warp_barrier();  // everyone has read before the slots are reused
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

#include "../../Sources/OpConvertCUDAPlugin/kernels/opc_kernels.cu"

// ---- coroutine scheduler for one block ------------------------------------------------------

enum emu_state { EMU_RUNNABLE, EMU_BLOCK_WAIT, EMU_WARP_WAIT, EMU_DONE };

struct emu_thread {
    ucontext_t context;
    unsigned index;
    emu_state state;
    char *stack;
};

static const size_t emu_stack_bytes = 64 * 1024;
static emu_thread emu_threads[1024];
static unsigned emu_block_threads;
static ucontext_t emu_scheduler;
static uint64_t emu_slots[32][32];
static void (*emu_body)(void **);
static void **emu_params;

static emu_dim3 emu_thread_index() { return emu_dim3{emu_current->index, 0, 0}; }
static unsigned emu_lane() { return emu_current->index % 32; }
static uint64_t *emu_warp_slots() { return emu_slots[emu_current->index / 32]; }

static void emu_yield(emu_state state) {
    emu_current->state = state;
    swapcontext(&emu_current->context, &emu_scheduler);
}
static void emu_block_barrier() { emu_yield(EMU_BLOCK_WAIT); }
static void emu_warp_barrier() { emu_yield(EMU_WARP_WAIT); }

static void emu_thread_main() {
    emu_body(emu_params);
    emu_current->state = EMU_DONE;
    // returning resumes uc_link (the scheduler)
}

// Runs one block; returns 0, or -1 when the threads deadlock (diverged barriers).
static int emu_run_block() {
    for (unsigned t = 0; t < emu_block_threads; t++) {
        emu_thread *th = &emu_threads[t];
        if (!th->stack) th->stack = (char *)malloc(emu_stack_bytes);
        if (!th->stack) return -1;
        th->index = t;
        th->state = EMU_RUNNABLE;
        getcontext(&th->context);
        th->context.uc_stack.ss_sp = th->stack;
        th->context.uc_stack.ss_size = emu_stack_bytes;
        th->context.uc_link = &emu_scheduler;
        makecontext(&th->context, emu_thread_main, 0);
    }
    for (;;) {
        int ran = 0;
        for (unsigned t = 0; t < emu_block_threads; t++) {
            emu_thread *th = &emu_threads[t];
            if (th->state != EMU_RUNNABLE) continue;
            emu_current = th;
            swapcontext(&emu_scheduler, &th->context);
            ran = 1;
        }
        if (ran) continue;
        int released = 0, live = 0;
        // A warp barrier opens when every unfinished lane of the warp waits at it.
        for (unsigned w = 0; w * 32 < emu_block_threads; w++) {
            int waiting = 0, others = 0;
            for (unsigned t = w * 32; t < w * 32 + 32 && t < emu_block_threads; t++) {
                if (emu_threads[t].state == EMU_WARP_WAIT) waiting++;
                else if (emu_threads[t].state != EMU_DONE) others++;
            }
            if (waiting && !others) {
                for (unsigned t = w * 32; t < w * 32 + 32 && t < emu_block_threads; t++)
                    if (emu_threads[t].state == EMU_WARP_WAIT) emu_threads[t].state = EMU_RUNNABLE;
                released = 1;
            }
        }
        if (released) continue;
        int block_waiting = 0;
        for (unsigned t = 0; t < emu_block_threads; t++) {
            if (emu_threads[t].state == EMU_BLOCK_WAIT) block_waiting++;
            if (emu_threads[t].state != EMU_DONE) live++;
        }
        if (live == 0) return 0;
        if (block_waiting == live) {
            for (unsigned t = 0; t < emu_block_threads; t++)
                if (emu_threads[t].state == EMU_BLOCK_WAIT) emu_threads[t].state = EMU_RUNNABLE;
            continue;
        }
        return -1;
    }
}

// ---- kernel registry: decode void **params with the kernel's parameter types ----------------

template <class... A, size_t... I>
static void emu_call(void (*fn)(A...), void **params, std::index_sequence<I...>) {
    fn(*static_cast<std::remove_reference_t<A> *>(params[I])...);
}

struct emu_kernel {
    const char *name;
    void (*invoke)(void **params);
    int param_count;
};

#define EMU_KERNEL(name) \
    {#name, [](void **p) { emu_call(name, p, std::make_index_sequence<emu_arity(name)>{}); }, (int)emu_arity(name)}

template <class... A> static constexpr size_t emu_arity(void (*)(A...)) { return sizeof...(A); }

static emu_kernel emu_kernels[] = {
    EMU_KERNEL(opc_axpy), EMU_KERNEL(opc_scale), EMU_KERNEL(opc_relu_forward), EMU_KERNEL(opc_relu_backward),
    EMU_KERNEL(opc_divide), EMU_KERNEL(opc_multiply), EMU_KERNEL(opc_add_row_vector), EMU_KERNEL(opc_scale_rows),
    EMU_KERNEL(opc_scale_matrix), EMU_KERNEL(opc_adamw), EMU_KERNEL(opc_sum_rows_partial),
    EMU_KERNEL(opc_sum_rows_finish), EMU_KERNEL(opc_row_norms), EMU_KERNEL(opc_row_dots),
    EMU_KERNEL(opc_sum_squares_partial), EMU_KERNEL(opc_sum_doubles), EMU_KERNEL(opc_xent_validate),
    EMU_KERNEL(opc_xent_rows), EMU_KERNEL(opc_xent_finish), EMU_KERNEL(opc_index_validate),
    EMU_KERNEL(opc_embedding_forward), EMU_KERNEL(opc_embedding_backward), EMU_KERNEL(opc_rmsnorm_forward),
    EMU_KERNEL(opc_rmsnorm_backward_dx), EMU_KERNEL(opc_rmsnorm_dw_partial), EMU_KERNEL(opc_add_chunk_sums),
    EMU_KERNEL(opc_rope), EMU_KERNEL(opc_attention_forward), EMU_KERNEL(opc_attention_backward_dq),
    EMU_KERNEL(opc_attention_backward_dkv), EMU_KERNEL(opc_silu_gate_forward), EMU_KERNEL(opc_silu_gate_backward),
    EMU_KERNEL(opc_token_xent_validate), EMU_KERNEL(opc_token_xent_rows),
};

// ---- driver API --------------------------------------------------------------------------

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum {
    E_OK = 0, E_INVALID_VALUE = 1, E_OUT_OF_MEMORY = 2, E_NOT_INITIALIZED = 3, E_INVALID_IMAGE = 200,
    E_INVALID_CONTEXT = 201, E_INVALID_HANDLE = 400, E_NOT_FOUND = 500, E_LAUNCH_FAILED = 719,
};

static int emu_initialized;
static int emu_retains;
static int emu_streams;
static int emu_modules;
static int emu_module_loads;
static long emu_launches;
static std::map<uintptr_t, size_t> emu_allocations;  // base -> bytes
static char emu_fake_context, emu_fake_module;
static char emu_last_failure[512];

static CUresult emu_fail(CUresult code, const char *fmt, const char *detail = "", unsigned long long a = 0,
                         unsigned long long b = 0) {
    snprintf(emu_last_failure, sizeof emu_last_failure, fmt, detail, a, b);
    fprintf(stderr, "cuda-emulator: %s\n", emu_last_failure);
    return code;
}

// Whether [p, p + bytes) lies inside one live allocation.
static bool emu_in_bounds(uintptr_t p, size_t bytes) {
    auto it = emu_allocations.upper_bound(p);
    if (it == emu_allocations.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT CUresult cuInit(unsigned flags) {
    if (flags != 0) return E_INVALID_VALUE;
    emu_initialized = 1;
    return E_OK;
}
// CUDA 13.0 (or $EMU_CUDA_DRIVER_VERSION, e.g. 12040), so the plugin may pick NVRTC 13 or
// 12, whichever is installed (run.sh builds the cuBLAS stand-in under both sonames, so the
// real cuBLAS is never mixed with this driver).
EXPORT CUresult cuDriverGetVersion(int *v) {
    if (!v) return E_INVALID_VALUE;
    const char *env = getenv("EMU_CUDA_DRIVER_VERSION");
    *v = env && atoi(env) > 0 ? atoi(env) : 13000;
    return E_OK;
}
EXPORT CUresult cuDeviceGetCount(int *n) { if (!emu_initialized) return E_NOT_INITIALIZED; *n = 1; return E_OK; }
EXPORT CUresult cuDeviceGet(int *d, int ordinal) {
    if (!emu_initialized) return E_NOT_INITIALIZED;
    if (ordinal != 0) return 101;  // CUDA_ERROR_INVALID_DEVICE
    *d = 0;
    return E_OK;
}
EXPORT CUresult cuDeviceGetName(char *name, int len, int dev) {
    if (dev != 0 || !name || len <= 0) return E_INVALID_VALUE;
    snprintf(name, (size_t)len, "CUDA emulator (CPU)");
    return E_OK;
}
EXPORT CUresult cuDeviceGetAttribute(int *value, int attribute, int dev) {
    if (dev != 0) return 101;
    switch (attribute) {
    case 16: *value = 4; return E_OK;   // multiprocessors
    case 75: *value = 9; return E_OK;   // compute capability 9.0 -> the plugin compiles sm_90
    case 76: *value = 0; return E_OK;
    default: return E_INVALID_VALUE;
    }
}
EXPORT CUresult cuDeviceTotalMem_v2(size_t *bytes, int dev) { if (dev != 0) return 101; *bytes = 1ull << 30; return E_OK; }
EXPORT CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
    if (dev != 0) return 101;
    emu_retains++;
    *ctx = &emu_fake_context;
    return E_OK;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int dev) {
    if (dev != 0 || emu_retains <= 0) return emu_fail(E_INVALID_CONTEXT, "primary context released more than retained%s");
    emu_retains--;
    return E_OK;
}
EXPORT CUresult cuCtxSetCurrent(void *ctx) {
    if (ctx && ctx != &emu_fake_context) return E_INVALID_CONTEXT;
    return E_OK;
}
EXPORT CUresult cuStreamCreate(void **stream, unsigned flags) {
    if (flags != 1) return emu_fail(E_INVALID_VALUE, "cuStreamCreate flags %s%llu (want CU_STREAM_NON_BLOCKING)", "", flags);
    *stream = malloc(1);
    emu_streams++;
    return E_OK;
}
EXPORT CUresult cuStreamDestroy_v2(void *stream) { free(stream); emu_streams--; return E_OK; }
EXPORT CUresult cuStreamSynchronize(void *stream) { return stream ? E_OK : E_INVALID_HANDLE; }

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes) {
    if (!p || bytes == 0) return E_INVALID_VALUE;  // as the real driver: 0 bytes is an error
    void *m = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m) return E_OUT_OF_MEMORY;
    memset(m, 0xCD, bytes);  // garbage: the plugin must zero-fill
    emu_allocations[(uintptr_t)m] = bytes;
    *p = (CUdeviceptr)(uintptr_t)m;
    return E_OK;
}
EXPORT CUresult cuMemFree_v2(CUdeviceptr p) {
    auto it = emu_allocations.find((uintptr_t)p);
    if (it == emu_allocations.end()) return emu_fail(E_INVALID_VALUE, "cuMemFree of %s%#llx, not an allocation", "", p);
    emu_allocations.erase(it);
    free((void *)(uintptr_t)p);
    return E_OK;
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, void *stream) {
    if (!stream || !emu_in_bounds(dst, bytes)) return emu_fail(E_INVALID_VALUE, "HtoD %s%#llx + %llu out of bounds", "", dst, bytes);
    memcpy((void *)(uintptr_t)dst, src, bytes);
    return E_OK;
}
EXPORT CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes, void *stream) {
    if (!stream || !emu_in_bounds(src, bytes)) return emu_fail(E_INVALID_VALUE, "DtoH %s%#llx + %llu out of bounds", "", src, bytes);
    memcpy(dst, (const void *)(uintptr_t)src, bytes);
    return E_OK;
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void *stream) {
    if (!stream || !emu_in_bounds(dst, bytes) || !emu_in_bounds(src, bytes))
        return emu_fail(E_INVALID_VALUE, "DtoD %s%#llx <- %#llx out of bounds", "", dst, src);
    if (dst < src + bytes && src < dst + bytes) return emu_fail(E_INVALID_VALUE, "DtoD %soverlapping ranges %#llx, %#llx", "", dst, src);
    memcpy((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
    return E_OK;
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t count, void *stream) {
    if (!stream || dst % 4 || !emu_in_bounds(dst, count * 4))
        return emu_fail(E_INVALID_VALUE, "memsetD32 %s%#llx x %llu out of bounds", "", dst, count);
    uint32_t *p = (uint32_t *)(uintptr_t)dst;
    for (size_t i = 0; i < count; i++) p[i] = value;
    return E_OK;
}
EXPORT CUresult cuModuleLoadData(void **module, const void *image) {
    if (!image || memcmp(image, "\177ELF", 4) != 0) return E_INVALID_IMAGE;
    emu_modules++;
    emu_module_loads++;
    *module = &emu_fake_module;
    return E_OK;
}
EXPORT CUresult cuModuleUnload(void *module) {
    if (module != &emu_fake_module || emu_modules <= 0) return E_INVALID_HANDLE;
    emu_modules--;
    return E_OK;
}
EXPORT CUresult cuModuleGetFunction(void **fn, void *module, const char *name) {
    if (module != &emu_fake_module) return E_INVALID_HANDLE;
    for (auto &k : emu_kernels) {
        if (strcmp(k.name, name) == 0) { *fn = &k; return E_OK; }
    }
    return E_NOT_FOUND;
}
EXPORT CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned shared, void *stream, void **params, void **extra) {
    emu_kernel *k = (emu_kernel *)f;
    if (!k || !stream || !params || extra || shared) return E_INVALID_VALUE;
    if (gx < 1 || gy < 1 || gz != 1 || gy > 65535 || by != 1 || bz != 1 || bx < 1 || bx > 1024 || bx % 32)
        return emu_fail(E_INVALID_VALUE, "%s: bad launch shape %llu x %llu", k->name, gx, bx);
    emu_launches++;
    emu_body = k->invoke;
    emu_params = params;
    blockDim = emu_dim3{bx, 1, 1};
    gridDim = emu_dim3{gx, gy, 1};
    emu_block_threads = bx;
    for (unsigned y = 0; y < gy; y++) {
        for (unsigned x = 0; x < gx; x++) {
            blockIdx = emu_dim3{x, y, 0};
            if (emu_run_block() != 0) return emu_fail(E_LAUNCH_FAILED, "%s: threads deadlocked at barriers", k->name);
        }
    }
    return E_OK;
}
EXPORT CUresult cuGetErrorName(CUresult r, const char **name) {
    switch (r) {
    case E_OK: *name = "CUDA_SUCCESS"; return E_OK;
    case E_INVALID_VALUE: *name = "CUDA_ERROR_INVALID_VALUE"; return E_OK;
    case E_OUT_OF_MEMORY: *name = "CUDA_ERROR_OUT_OF_MEMORY"; return E_OK;
    case E_INVALID_IMAGE: *name = "CUDA_ERROR_INVALID_IMAGE"; return E_OK;
    default: *name = "CUDA_ERROR_UNKNOWN"; return E_OK;
    }
}
EXPORT CUresult cuGetErrorString(CUresult r, const char **text) {
    *text = r == E_OK ? "no error" : emu_last_failure[0] ? emu_last_failure : "emulated failure";
    return E_OK;
}

// For the harness: what is still held.
struct emu_stats_t { int retains, streams, modules, module_loads; long allocations, launches; };
EXPORT emu_stats_t emu_stats() {
    return emu_stats_t{emu_retains, emu_streams, emu_modules, emu_module_loads, (long)emu_allocations.size(), emu_launches};
}
