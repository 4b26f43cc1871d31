/*
 * The CUDA kernels: NVRTC compilation of the embedded source to a cubin for one GPU
 * architecture, the check that every kernel the plugin launches is in it, and the on-disk
 * cache of compiled cubins.
 */
#include "cuda_internal.h"
#include "opc_cuda_plugin.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

#include "kernels/opc_kernels_source.inc"

const char *const opc_kernel_names[OPC_KERNEL_COUNT] = {
    "opc_axpy", "opc_scale", "opc_relu_forward", "opc_relu_backward", "opc_divide", "opc_multiply",
    "opc_add_row_vector", "opc_scale_rows", "opc_scale_matrix", "opc_adamw", "opc_sum_rows_partial",
    "opc_sum_rows_finish", "opc_row_norms", "opc_row_dots", "opc_sum_squares_partial", "opc_sum_doubles",
    "opc_xent_validate", "opc_xent_rows", "opc_xent_finish", "opc_index_validate", "opc_embedding_forward",
    "opc_embedding_backward", "opc_rmsnorm_forward", "opc_rmsnorm_backward_dx", "opc_rmsnorm_dw_partial",
    "opc_add_chunk_sums", "opc_rope", "opc_attention_forward", "opc_attention_backward_dq",
    "opc_attention_backward_dkv", "opc_silu_gate_forward", "opc_silu_gate_backward", "opc_token_xent_validate",
    "opc_token_xent_rows",
};

const char *opc_kernel_params(const char *name) {
    for (size_t i = 0; i < sizeof opc_kernel_signatures / sizeof opc_kernel_signatures[0]; i++) {
        if (strcmp(opc_kernel_signatures[i].name, name) == 0) return opc_kernel_signatures[i].params;
    }
    return NULL;
}

/* IEEE f32 semantics as the CPU plugin has them: no FMA contraction, no flush to zero,
   correctly rounded division and square root. */
static const char *const compile_options[] = {"--fmad=false", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"};
#define COMPILE_OPTION_COUNT (sizeof compile_options / sizeof compile_options[0])

int opc_compile_kernels(const opc_nvrtc *nvrtc, const char *arch, void **cubin, size_t *size, char *log,
                        size_t log_len) {
    *cubin = NULL;
    *size = 0;
    if (log && log_len) log[0] = '\0';
    char arch_option[64];
    snprintf(arch_option, sizeof arch_option, "--gpu-architecture=%s", arch);
    const char *options[COMPILE_OPTION_COUNT + 1];
    options[0] = arch_option;
    for (size_t i = 0; i < COMPILE_OPTION_COUNT; i++) options[i + 1] = compile_options[i];

    nvrtcProgram prog = NULL;
    nvrtcResult r = nvrtc->nvrtcCreateProgram(&prog, opc_kernels_source, "opc_kernels.cu", 0, NULL, NULL);
    if (r != NVRTC_SUCCESS) {
        opc_appendf(log, log_len, "nvrtcCreateProgram: %s", nvrtc->nvrtcGetErrorString(r));
        return OPC_E_DEVICE;
    }
    int code = OPC_OK;
    r = nvrtc->nvrtcCompileProgram(prog, (int)(COMPILE_OPTION_COUNT + 1), options);
    if (r != NVRTC_SUCCESS) {
        code = r == NVRTC_ERROR_INVALID_OPTION ? OPC_E_INVALID : OPC_E_DEVICE;
        opc_appendf(log, log_len, "NVRTC %d.%d, %s: %s", nvrtc->major, nvrtc->minor, arch, nvrtc->nvrtcGetErrorString(r));
        size_t n = 0;
        if (nvrtc->nvrtcGetProgramLogSize(prog, &n) == NVRTC_SUCCESS && n > 1) {
            char *text = malloc(n);
            if (text && nvrtc->nvrtcGetProgramLog(prog, text) == NVRTC_SUCCESS) {
                text[n - 1] = '\0';
                for (size_t end = strlen(text); end > 0 && (text[end - 1] == '\n' || text[end - 1] == ' '); end--)
                    text[end - 1] = '\0';
                opc_appendf(log, log_len, ": %s", text);
            }
            free(text);
        }
    } else {
        size_t n = 0;
        /* Warnings (a clean compile has an empty log) are kept for compile_kernels to show. */
        if (nvrtc->nvrtcGetProgramLogSize(prog, &n) == NVRTC_SUCCESS && n > 1) {
            char *text = malloc(n);
            if (text && nvrtc->nvrtcGetProgramLog(prog, text) == NVRTC_SUCCESS) {
                text[n - 1] = '\0';
                opc_appendf(log, log_len, "%s", text);
            }
            free(text);
        }
        r = nvrtc->nvrtcGetCUBINSize(prog, size);
        void *bytes = r == NVRTC_SUCCESS && *size > 0 ? malloc(*size) : NULL;
        if (r != NVRTC_SUCCESS || *size == 0) {
            code = OPC_E_DEVICE;
            opc_appendf(log, log_len, "nvrtcGetCUBINSize: %s", nvrtc->nvrtcGetErrorString(r));
        } else if (!bytes) {
            code = OPC_E_NOMEM;
            opc_appendf(log, log_len, "out of memory for a %zu-byte cubin", *size);
        } else if ((r = nvrtc->nvrtcGetCUBIN(prog, bytes)) != NVRTC_SUCCESS) {
            code = OPC_E_DEVICE;
            opc_appendf(log, log_len, "nvrtcGetCUBIN: %s", nvrtc->nvrtcGetErrorString(r));
        }
        if (code == OPC_OK) *cubin = bytes;
        else { free(bytes); *size = 0; }
    }
    nvrtc->nvrtcDestroyProgram(&prog);
    return code;
}

static const void *find_bytes(const void *hay, size_t hay_len, const void *needle, size_t needle_len) {
    if (needle_len == 0 || hay_len < needle_len) return NULL;
    const unsigned char *h = hay;
    for (size_t i = 0; i + needle_len <= hay_len; i++) {
        if (h[i] == *(const unsigned char *)needle && memcmp(h + i, needle, needle_len) == 0) return h + i;
    }
    return NULL;
}

int opc_cubin_has_kernels(const void *cubin, size_t size, char *missing, size_t missing_len) {
    if (size < 4 || memcmp(cubin, "\177ELF", 4) != 0) {
        snprintf(missing, missing_len, "(not an ELF cubin)");
        return -1;
    }
    /* Each kernel has a section ".text.<name>" (its extern "C" name) in the cubin's strings. */
    for (int i = 0; i < OPC_KERNEL_COUNT; i++) {
        char section[96];
        int n = snprintf(section, sizeof section, ".text.%s", opc_kernel_names[i]);
        if (!find_bytes(cubin, size, section, (size_t)n + 1)) { /* + 1: the terminating NUL */
            snprintf(missing, missing_len, "%s", opc_kernel_names[i]);
            return -1;
        }
    }
    return 0;
}

/* ---- cache ---------------------------------------------------------------------------- */

static uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_BASIS 0xcbf29ce484222325ull
static const char cache_magic[8] = {'O', 'P', 'C', 'C', 'U', 'B', 'N', '1'};

/* The cache file for (NVRTC version, arch, source, options); 0, or -1 when there is no cache. */
static int cache_file(const char *dir, const opc_nvrtc *nvrtc, const char *arch, char *path, size_t len) {
    char folder[PATH_MAX];
    if (dir) {
        if (!*dir) return -1;
        snprintf(folder, sizeof folder, "%s", dir);
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME");
        const char *home = getenv("HOME");
        if (xdg && xdg[0] == '/') snprintf(folder, sizeof folder, "%s/opconvert", xdg);
        else if (home && *home) snprintf(folder, sizeof folder, "%s/.cache/opconvert", home);
        else return -1;
    }
    uint64_t h = fnv1a(FNV_BASIS, opc_kernels_source, sizeof opc_kernels_source);
    for (size_t i = 0; i < COMPILE_OPTION_COUNT; i++) h = fnv1a(h, compile_options[i], strlen(compile_options[i]) + 1);
    int n = snprintf(path, len, "%s/cuda-kernels-nvrtc%d.%d-%s-%016llx.cubin", folder, nvrtc->major, nvrtc->minor, arch,
                     (unsigned long long)h);
    return n > 0 && (size_t)n < len ? 0 : -1;
}

void *opc_cache_read(const char *dir, const opc_nvrtc *nvrtc, const char *arch, size_t *size) {
    *size = 0;
    char path[PATH_MAX];
    if (cache_file(dir, nvrtc, arch, path, sizeof path) != 0) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char header[16];
    void *cubin = NULL;
    uint64_t length = 0, stored_hash = 0;
    if (fread(header, 1, sizeof header, f) == sizeof header && memcmp(header, cache_magic, 8) == 0) {
        memcpy(&length, header + 8, 8);
        if (length > 0 && length < (256u << 20)) cubin = malloc((size_t)length);
        if (cubin && (fread(cubin, 1, (size_t)length, f) != length || fread(&stored_hash, 1, 8, f) != 8 ||
                      fnv1a(FNV_BASIS, cubin, (size_t)length) != stored_hash || fgetc(f) != EOF)) {
            free(cubin); /* short, long or corrupt: rebuilt by the caller */
            cubin = NULL;
        }
    }
    fclose(f);
    if (cubin) *size = (size_t)length;
    return cubin;
}

/* mkdir -p, best effort. */
static void make_dirs(const char *dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
    mkdir(path, 0755);
}

void opc_cache_write(const char *dir, const opc_nvrtc *nvrtc, const char *arch, const void *cubin, size_t size) {
    char path[PATH_MAX], tmp[PATH_MAX + 32], folder[PATH_MAX];
    if (cache_file(dir, nvrtc, arch, path, sizeof path) != 0) return;
    snprintf(folder, sizeof folder, "%s", path);
    char *slash = strrchr(folder, '/');
    if (slash) *slash = '\0';
    make_dirs(folder);
    /* Unique per process and call: contexts may be created on several threads at once. */
    static unsigned serial;
    unsigned n = __atomic_fetch_add(&serial, 1u, __ATOMIC_RELAXED);
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%u", path, (long)getpid(), n);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return;
    uint64_t length = size, hash = fnv1a(FNV_BASIS, cubin, size);
    unsigned char header[16];
    memcpy(header, cache_magic, 8);
    memcpy(header + 8, &length, 8);
    int ok = write(fd, header, sizeof header) == (ssize_t)sizeof header && write(fd, cubin, size) == (ssize_t)size &&
             write(fd, &hash, 8) == 8;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

void opc_cache_remove(const char *dir, const opc_nvrtc *nvrtc, const char *arch) {
    char path[PATH_MAX];
    if (cache_file(dir, nvrtc, arch, path, sizeof path) == 0) unlink(path);
}
