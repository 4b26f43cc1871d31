/*
 * Internals shared by the CUDA plugin's C files. Everything declared here is hidden: the
 * target is built without -fvisibility=hidden (no unsafeFlags), so the pragma keeps these
 * cross-file functions out of the library's exports; only opc_plugin_entry is exported.
 */
#ifndef OPC_CUDA_INTERNAL_H
#define OPC_CUDA_INTERNAL_H
#pragma GCC visibility push(hidden)

#include "cuda_api.h"
#include <stddef.h>

/* Library loading (cuda_loader.c). Each returns the loaded, fully resolved library, or NULL
   with `why` (one line) saying what is missing and what was tried. Successful loads are
   kept for the life of the process; failures are retried on the next call (so a changed
   $OPCONVERT_CUDA_LIBRARY_PATH takes effect). Thread-safe. */
const opc_cuda_driver *opc_load_driver(char *why, size_t why_len);
/* max_major: the newest major version usable (the driver's CUDA major), 0 = any. */
const opc_nvrtc *opc_load_nvrtc(int max_major, char *why, size_t why_len);
const opc_cublas *opc_load_cublas(int max_major, char *why, size_t why_len);
/* The file a loaded library came from ("" if unknown), for notes and docs. */
const char *opc_loaded_path(const void *library);

/* Kernels (cuda_kernels_build.c). */
#define OPC_KERNEL_COUNT 34
extern const char *const opc_kernel_names[OPC_KERNEL_COUNT];

/* The parameter types of kernel `name` as parsed from the .cu by the embed script, one
   letter each (c: opc_count, i: int, f: float, d: double, l: long long, p: pointer), or
   NULL when the source has no such kernel. */
const char *opc_kernel_params(const char *name);

/* Compiles the embedded kernels for `arch` ("sm_90") into a malloc'ed cubin (*cubin, *size).
   On failure returns a negative OPC_E code with the compiler log / reason in `log`. */
int opc_compile_kernels(const opc_nvrtc *nvrtc, const char *arch, void **cubin, size_t *size, char *log,
                        size_t log_len);
/* 0 when every kernel in opc_kernel_names has a symbol in the cubin, else -1 with the
   first missing name in `missing`. */
int opc_cubin_has_kernels(const void *cubin, size_t size, char *missing, size_t missing_len);
/* The kernel cache: `dir` is opc_create_options.cache_dir (NULL = default, "" = none).
   Returns a malloc'ed cubin read from the cache (NULL if absent, unreadable or corrupt). */
void *opc_cache_read(const char *dir, const opc_nvrtc *nvrtc, const char *arch, size_t *size);
/* Stores a cubin atomically (temp file + rename); failures are ignored (the cache is an
   optimization). */
void opc_cache_write(const char *dir, const opc_nvrtc *nvrtc, const char *arch, const void *cubin, size_t size);
/* Removes a cache entry (one that failed to load). */
void opc_cache_remove(const char *dir, const opc_nvrtc *nvrtc, const char *arch);

/* snprintf-style append to a fixed buffer, truncating (never overflowing). */
void opc_appendf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#pragma GCC visibility pop
#endif /* OPC_CUDA_INTERNAL_H */
