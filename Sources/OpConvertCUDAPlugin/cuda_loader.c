/*
 * Finds and dlopens the CUDA libraries the plugin needs, with no CUDA toolkit at build time.
 *
 * Search order for NVRTC and cuBLAS: the folders in $OPCONVERT_CUDA_LIBRARY_PATH
 * (colon-separated), then the nvidia/<package>/lib folders of pip wheels (cu12 layout:
 * nvidia/cuda_nvrtc/lib, nvidia/cublas/lib; cu13 layout: nvidia/cu13/lib) in the
 * site-packages of every Python found ($VIRTUAL_ENV, $CONDA_PREFIX, python3/python on
 * $PATH, pyenv versions, ~/.local), then the system loader (bare soname). The driver,
 * libcuda.so.1, comes from $OPCONVERT_CUDA_LIBRARY_PATH or the system loader only.
 * Libraries are opened RTLD_NOW | RTLD_LOCAL and never closed once resolved.
 */
#define _GNU_SOURCE
#include "cuda_internal.h"

#include <dlfcn.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

void opc_appendf(char *buf, size_t len, const char *fmt, ...) {
    if (!buf || len == 0) return;
    size_t used = strnlen(buf, len);
    if (used >= len - 1) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

/* ---- folder lists ---------------------------------------------------------------------- */

#define MAX_DIRS 64

typedef struct dir_list {
    int count;
    char *dirs[MAX_DIRS];
} dir_list;

static void dirs_free(dir_list *list) {
    for (int i = 0; i < list->count; i++) free(list->dirs[i]);
    list->count = 0;
}

static void dirs_add(dir_list *list, const char *dir) {
    if (!dir || !*dir || list->count >= MAX_DIRS) return;
    for (int i = 0; i < list->count; i++) if (strcmp(list->dirs[i], dir) == 0) return;
    char *copy = strdup(dir);
    if (copy) list->dirs[list->count++] = copy;
}

static void dirs_add_env_path(dir_list *list) {
    const char *env = getenv("OPCONVERT_CUDA_LIBRARY_PATH");
    if (!env) return;
    char *copy = strdup(env);
    if (!copy) return;
    char *save = NULL;
    for (char *part = strtok_r(copy, ":", &save); part; part = strtok_r(NULL, ":", &save)) dirs_add(list, part);
    free(copy);
}

/* parent folder of `path` into out ("" when none). */
static void parent_dir(const char *path, char *out, size_t len) {
    snprintf(out, len, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash && slash != out) *slash = '\0';
    else out[0] = '\0';
}

static void prefixes_add(dir_list *prefixes, const char *prefix) {
    if (!prefix || !*prefix) return;
    dirs_add(prefixes, prefix);
    /* Debian's python3 in /usr installs pip packages under /usr/local. */
    if (strcmp(prefix, "/usr") == 0) dirs_add(prefixes, "/usr/local");
}

/* A python executable `exe` in folder bin: its prefix is bin/.. (a venv keeps that even
   when exe links to the system python), and so is the prefix of the resolved file. */
static void prefixes_add_python(dir_list *prefixes, const char *exe) {
    char bin[PATH_MAX], prefix[PATH_MAX], real[PATH_MAX];
    parent_dir(exe, bin, sizeof bin);
    parent_dir(bin, prefix, sizeof prefix);
    prefixes_add(prefixes, prefix);
    if (realpath(exe, real)) {
        parent_dir(real, bin, sizeof bin);
        parent_dir(bin, prefix, sizeof prefix);
        prefixes_add(prefixes, prefix);
    }
}

static void prefixes_add_glob(dir_list *prefixes, const char *pattern) {
    glob_t g = {0};
    if (glob(pattern, GLOB_ONLYDIR, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) prefixes_add(prefixes, g.gl_pathv[i]);
    }
    globfree(&g);
}

/* nvidia/<package>/lib folders of pip wheels under every Python prefix found. */
static void dirs_add_python_wheels(dir_list *list) {
    dir_list prefixes = {0};
    prefixes_add(&prefixes, getenv("VIRTUAL_ENV"));
    prefixes_add(&prefixes, getenv("CONDA_PREFIX"));
    const char *path = getenv("PATH");
    if (path) {
        char *copy = strdup(path);
        char *save = NULL;
        for (char *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir; dir = strtok_r(NULL, ":", &save)) {
            static const char *const names[] = {"python3", "python"};
            for (int i = 0; i < 2; i++) {
                char exe[PATH_MAX];
                snprintf(exe, sizeof exe, "%s/%s", dir, names[i]);
                if (access(exe, X_OK) == 0) prefixes_add_python(&prefixes, exe);
            }
        }
        free(copy);
    }
    /* pyenv's shims are scripts: look at its versions directly. */
    char pattern[PATH_MAX];
    const char *pyenv = getenv("PYENV_ROOT");
    const char *home = getenv("HOME");
    if (pyenv && *pyenv) {
        snprintf(pattern, sizeof pattern, "%s/versions/*", pyenv);
        prefixes_add_glob(&prefixes, pattern);
    }
    if (home && *home) {
        snprintf(pattern, sizeof pattern, "%s/.pyenv/versions/*", home);
        prefixes_add_glob(&prefixes, pattern);
        snprintf(pattern, sizeof pattern, "%s/.local", home);
        prefixes_add(&prefixes, pattern);
    }
    static const char *const layouts[] = {"lib/python3*/site-packages/nvidia/*/lib",
                                          "lib/python3*/dist-packages/nvidia/*/lib"};
    for (int p = 0; p < prefixes.count; p++) {
        for (int l = 0; l < 2; l++) {
            snprintf(pattern, sizeof pattern, "%s/%s", prefixes.dirs[p], layouts[l]);
            glob_t g = {0};
            if (glob(pattern, GLOB_ONLYDIR, NULL, &g) == 0) {
                for (size_t i = 0; i < g.gl_pathc; i++) dirs_add(list, g.gl_pathv[i]);
            }
            globfree(&g);
        }
    }
    dirs_free(&prefixes);
}

/* "tried: A, B, C (+N more folders), the system loader" */
static void describe_tried(char *why, size_t len, const dir_list *list, int env_set) {
    opc_appendf(why, len, "tried: ");
    if (!env_set) opc_appendf(why, len, "$OPCONVERT_CUDA_LIBRARY_PATH (unset), ");
    const int shown = 4;
    for (int i = 0; i < list->count && i < shown; i++) opc_appendf(why, len, "%s, ", list->dirs[i]);
    if (list->count > shown) opc_appendf(why, len, "(+%d more folders), ", list->count - shown);
    opc_appendf(why, len, "the system loader");
}

/* ---- opening ----------------------------------------------------------------------------- */

typedef struct symbol_spec {
    const char *name;
    size_t offset; /* of the function pointer in the API struct */
    int optional;
} symbol_spec;

/* Resolves every symbol into api; 0, or -1 naming the first missing one in why. */
static int resolve(void *handle, void *api, const symbol_spec *specs, size_t count, const char *path,
                   char *why, size_t len) {
    for (size_t i = 0; i < count; i++) {
        void *fn = dlsym(handle, specs[i].name);
        if (!fn && !specs[i].optional) {
            opc_appendf(why, len, "%s lacks %s; ", path, specs[i].name);
            return -1;
        }
        memcpy((char *)api + specs[i].offset, &fn, sizeof fn);
    }
    return 0;
}

/* The file a handle came from, via one of its symbols. */
static void handle_path(void *handle, const char *symbol, const char *fallback, char *out, size_t len) {
    Dl_info info;
    void *sym = dlsym(handle, symbol);
    if (sym && dladdr(sym, &info) && info.dli_fname && info.dli_fname[0]) snprintf(out, len, "%s", info.dli_fname);
    else snprintf(out, len, "%s", fallback);
}

/* Appends "file: reason; " for a failed dlopen, without dlerror's own copy of the path. */
static void note_failure(char *why, size_t len, const char *file, const char *err) {
    if (!err) err = "cannot be loaded";
    size_t n = strlen(file);
    if (strncmp(err, file, n) == 0 && strncmp(err + n, ": ", 2) == 0) err += n + 2;
    opc_appendf(why, len, "%s: %s; ", file, err);
}

/* "; "-separated failures, without the trailing separator. */
static void trim_failures(char *failures) {
    size_t n = strlen(failures);
    while (n > 0 && (failures[n - 1] == ' ' || failures[n - 1] == ';')) failures[--n] = '\0';
}

/* dlopens the first file matching dir/pattern, if any (NULL otherwise). */
static void *open_companion(const char *dir, const char *pattern) {
    char full[PATH_MAX];
    snprintf(full, sizeof full, "%s/%s", dir, pattern);
    glob_t g = {0};
    void *handle = NULL;
    if (glob(full, 0, NULL, &g) == 0 && g.gl_pathc > 0) handle = dlopen(g.gl_pathv[0], RTLD_NOW | RTLD_LOCAL);
    globfree(&g);
    return handle;
}

/* Opens `soname` (after `preload`, if any, from the same folder: cuBLAS needs its cublasLt)
   from each folder in order, then from the system loader; resolves specs into api.
   `companion` (a file pattern, optional) is opened first from the same folder when present:
   NVRTC dlopens its builtins library by soname, which then finds this copy already loaded
   instead of depending on the caller's run path.
   Returns the handle, or NULL with failures appended to why. *path = the file opened. */
static void *open_library(const dir_list *dirs, int use_system, const char *preload, const char *companion,
                          const char *soname, void *api, const symbol_spec *specs, size_t count, char *path,
                          size_t path_len, char *why, size_t len) {
    for (int i = 0; i <= dirs->count; i++) {
        int system = i == dirs->count;
        if (system && !use_system) break;
        char file[PATH_MAX], pre_file[PATH_MAX];
        if (system) {
            snprintf(file, sizeof file, "%s", soname);
            if (preload) snprintf(pre_file, sizeof pre_file, "%s", preload);
        } else {
            snprintf(file, sizeof file, "%s/%s", dirs->dirs[i], soname);
            if (access(file, F_OK) != 0) continue;
            if (preload) snprintf(pre_file, sizeof pre_file, "%s/%s", dirs->dirs[i], preload);
        }
        void *pre = NULL;
        if (preload) {
            pre = dlopen(pre_file, RTLD_NOW | RTLD_LOCAL);
            if (!pre) {
                const char *err = dlerror();
                if (!system || !err || !strstr(err, "No such file")) note_failure(why, len, pre_file, err);
                continue;
            }
        }
        void *extra = companion && !system ? open_companion(dirs->dirs[i], companion) : NULL;
        void *handle = dlopen(file, RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            const char *err = dlerror();
            /* A soname the system loader does not know is just "not found" (listed as tried). */
            if (!system || !err || !strstr(err, "No such file")) note_failure(why, len, file, err);
            if (extra) dlclose(extra);
            if (pre) dlclose(pre);
            continue;
        }
        if (resolve(handle, api, specs, count, file, why, len) != 0) {
            dlclose(handle);
            if (extra) dlclose(extra);
            if (pre) dlclose(pre);
            continue;
        }
        handle_path(handle, specs[0].name, file, path, path_len);
        return handle; /* pre and extra stay open: handle depends on them */
    }
    return NULL;
}

/* ---- the three libraries ------------------------------------------------------------------ */

static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

#define SYM(type, name) {#name, offsetof(type, name), 0}
#define OPTIONAL_SYM(type, name) {#name, offsetof(type, name), 1}

static const symbol_spec driver_symbols[] = {
    SYM(opc_cuda_driver, cuInit),
    SYM(opc_cuda_driver, cuDriverGetVersion),
    SYM(opc_cuda_driver, cuDeviceGetCount),
    SYM(opc_cuda_driver, cuDeviceGet),
    SYM(opc_cuda_driver, cuDeviceGetName),
    SYM(opc_cuda_driver, cuDeviceGetAttribute),
    SYM(opc_cuda_driver, cuDeviceTotalMem_v2),
    SYM(opc_cuda_driver, cuDevicePrimaryCtxRetain),
    SYM(opc_cuda_driver, cuDevicePrimaryCtxRelease_v2),
    SYM(opc_cuda_driver, cuCtxSetCurrent),
    SYM(opc_cuda_driver, cuStreamCreate),
    SYM(opc_cuda_driver, cuStreamDestroy_v2),
    SYM(opc_cuda_driver, cuStreamSynchronize),
    SYM(opc_cuda_driver, cuMemAlloc_v2),
    SYM(opc_cuda_driver, cuMemFree_v2),
    SYM(opc_cuda_driver, cuMemcpyHtoDAsync_v2),
    SYM(opc_cuda_driver, cuMemcpyDtoHAsync_v2),
    SYM(opc_cuda_driver, cuMemcpyDtoDAsync_v2),
    SYM(opc_cuda_driver, cuMemsetD32Async),
    SYM(opc_cuda_driver, cuModuleLoadData),
    SYM(opc_cuda_driver, cuModuleUnload),
    SYM(opc_cuda_driver, cuModuleGetFunction),
    SYM(opc_cuda_driver, cuLaunchKernel),
    SYM(opc_cuda_driver, cuGetErrorName),
    SYM(opc_cuda_driver, cuGetErrorString),
};

static const symbol_spec nvrtc_symbols[] = {
    SYM(opc_nvrtc, nvrtcVersion),
    SYM(opc_nvrtc, nvrtcGetErrorString),
    SYM(opc_nvrtc, nvrtcCreateProgram),
    SYM(opc_nvrtc, nvrtcCompileProgram),
    SYM(opc_nvrtc, nvrtcGetCUBINSize),
    SYM(opc_nvrtc, nvrtcGetCUBIN),
    SYM(opc_nvrtc, nvrtcGetProgramLogSize),
    SYM(opc_nvrtc, nvrtcGetProgramLog),
    SYM(opc_nvrtc, nvrtcDestroyProgram),
};

static const symbol_spec cublas_symbols[] = {
    SYM(opc_cublas, cublasCreate_v2),
    SYM(opc_cublas, cublasDestroy_v2),
    SYM(opc_cublas, cublasSetStream_v2),
    SYM(opc_cublas, cublasSetMathMode),
    SYM(opc_cublas, cublasSgemm_v2),
    OPTIONAL_SYM(opc_cublas, cublasGetStatusString),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static opc_cuda_driver driver_api;
static int driver_loaded;
static char driver_path[PATH_MAX];

/* Index 0: major 13, index 1: major 12 (newest first). */
static const int known_majors[2] = {13, 12};
static opc_nvrtc nvrtc_api[2];
static int nvrtc_loaded[2];
static char nvrtc_path[2][PATH_MAX];
static opc_cublas cublas_api[2];
static int cublas_loaded[2];
static char cublas_path[2][PATH_MAX];

const opc_cuda_driver *opc_load_driver(char *why, size_t why_len) {
    if (why && why_len) why[0] = '\0';
    pthread_mutex_lock(&load_lock);
    if (!driver_loaded) {
        dir_list dirs = {0};
        dirs_add_env_path(&dirs);
        char failures[1024] = "";
        opc_cuda_driver api;
        memset(&api, 0, sizeof api);
        if (open_library(&dirs, 1, NULL, NULL, "libcuda.so.1", &api, driver_symbols, COUNT(driver_symbols), driver_path,
                         sizeof driver_path, failures, sizeof failures)) {
            driver_api = api;
            driver_loaded = 1;
        } else {
            trim_failures(failures);
            if (failures[0]) opc_appendf(why, why_len, "libcuda.so.1 (the NVIDIA driver) could not be loaded (%s); ", failures);
            else opc_appendf(why, why_len, "libcuda.so.1 (the NVIDIA driver) not found; ");
            if (!getenv("OPCONVERT_CUDA_LIBRARY_PATH")) opc_appendf(why, why_len, "tried: $OPCONVERT_CUDA_LIBRARY_PATH (unset), ");
            else {
                opc_appendf(why, why_len, "tried: ");
                for (int i = 0; i < dirs.count && i < 4; i++) opc_appendf(why, why_len, "%s, ", dirs.dirs[i]);
                if (dirs.count > 4) opc_appendf(why, why_len, "(+%d more folders), ", dirs.count - 4);
            }
            opc_appendf(why, why_len, "the system loader");
        }
        dirs_free(&dirs);
    }
    const opc_cuda_driver *result = driver_loaded ? &driver_api : NULL;
    pthread_mutex_unlock(&load_lock);
    return result;
}

/* Folders for NVRTC / cuBLAS: the env path, then the pip wheels. */
static void library_dirs(dir_list *dirs) {
    dirs_add_env_path(dirs);
    dirs_add_python_wheels(dirs);
}

/* "13/.so.12" style list of the eligible majors, for messages. */
static void majors_text(int max_major, const char *stem, char *out, size_t len) {
    out[0] = '\0';
    for (int i = 0; i < 2; i++) {
        if (max_major && known_majors[i] > max_major) continue;
        opc_appendf(out, len, "%s%s.so.%d", out[0] ? " or " : "", stem, known_majors[i]);
    }
}

/* The one-line reason a versioned library (NVRTC, cuBLAS) could not be had: the sonames of
   the majors the driver allows, what failed when a file was found, and the folders tried. */
static void describe_missing(char *why, size_t why_len, int max_major, const char *stem, const char *what,
                             const char *hint, char *failures, const dir_list *dirs) {
    char names[64];
    majors_text(max_major, stem, names, sizeof names);
    if (!names[0]) {
        opc_appendf(why, why_len, "%s needs a driver for CUDA 12 or newer (this one supports CUDA %d)", what, max_major);
        return;
    }
    trim_failures(failures);
    opc_appendf(why, why_len, "%s (%s) ", names, hint);
    if (failures[0]) opc_appendf(why, why_len, "could not be loaded (%s); ", failures);
    else opc_appendf(why, why_len, "not found; ");
    describe_tried(why, why_len, dirs, getenv("OPCONVERT_CUDA_LIBRARY_PATH") != NULL);
}

const opc_nvrtc *opc_load_nvrtc(int max_major, char *why, size_t why_len) {
    if (why && why_len) why[0] = '\0';
    const opc_nvrtc *result = NULL;
    pthread_mutex_lock(&load_lock);
    for (int i = 0; i < 2 && !result; i++) if (nvrtc_loaded[i] && (!max_major || known_majors[i] <= max_major)) result = &nvrtc_api[i];
    if (!result) {
        dir_list dirs = {0}, env_dirs = {0}, wheel_dirs = {0};
        library_dirs(&dirs);
        dirs_add_env_path(&env_dirs);
        dirs_add_python_wheels(&wheel_dirs);
        char failures[1024] = "";
        /* Folders outrank majors: a CUDA 12 NVRTC named by $OPCONVERT_CUDA_LIBRARY_PATH wins
           over a CUDA 13 one from a pip wheel elsewhere; the system loader comes last. */
        for (int slot = 0; slot < 4 && !result; slot++) {
            int phase = slot / 2, i = slot % 2;
            const dir_list *where = phase == 0 ? &env_dirs : &wheel_dirs;
            if (max_major && known_majors[i] > max_major) continue;
            char soname[32], builtins[48];
            snprintf(soname, sizeof soname, "libnvrtc.so.%d", known_majors[i]);
            snprintf(builtins, sizeof builtins, "libnvrtc-builtins.so.%d.*", known_majors[i]);
            opc_nvrtc api;
            memset(&api, 0, sizeof api);
            if (!open_library(where, phase == 1, NULL, builtins, soname, &api, nvrtc_symbols, COUNT(nvrtc_symbols), nvrtc_path[i],
                              sizeof nvrtc_path[i], failures, sizeof failures))
                continue;
            if (api.nvrtcVersion(&api.major, &api.minor) != NVRTC_SUCCESS) {
                opc_appendf(failures, sizeof failures, "%s: nvrtcVersion failed; ", nvrtc_path[i]);
                continue;
            }
            nvrtc_api[i] = api;
            nvrtc_loaded[i] = 1;
            result = &nvrtc_api[i];
        }
        if (!result) describe_missing(why, why_len, max_major, "libnvrtc", "NVRTC", "NVRTC; pip install nvidia-cuda-nvrtc-cu12",
                                      failures, &dirs);
        dirs_free(&dirs);
        dirs_free(&env_dirs);
        dirs_free(&wheel_dirs);
    }
    pthread_mutex_unlock(&load_lock);
    return result;
}

const opc_cublas *opc_load_cublas(int max_major, char *why, size_t why_len) {
    if (why && why_len) why[0] = '\0';
    const opc_cublas *result = NULL;
    pthread_mutex_lock(&load_lock);
    for (int i = 0; i < 2 && !result; i++) if (cublas_loaded[i] && (!max_major || known_majors[i] <= max_major)) result = &cublas_api[i];
    if (!result) {
        dir_list dirs = {0}, env_dirs = {0}, wheel_dirs = {0};
        library_dirs(&dirs);
        dirs_add_env_path(&env_dirs);
        dirs_add_python_wheels(&wheel_dirs);
        char failures[1024] = "";
        /* Folders outrank majors, as for NVRTC. */
        for (int slot = 0; slot < 4 && !result; slot++) {
            int phase = slot / 2, i = slot % 2;
            const dir_list *where = phase == 0 ? &env_dirs : &wheel_dirs;
            if (max_major && known_majors[i] > max_major) continue;
            char soname[32], lt[32];
            snprintf(soname, sizeof soname, "libcublas.so.%d", known_majors[i]);
            snprintf(lt, sizeof lt, "libcublasLt.so.%d", known_majors[i]);
            opc_cublas api;
            memset(&api, 0, sizeof api);
            if (!open_library(where, phase == 1, lt, NULL, soname, &api, cublas_symbols, COUNT(cublas_symbols), cublas_path[i],
                              sizeof cublas_path[i], failures, sizeof failures))
                continue;
            api.major = known_majors[i];
            cublas_api[i] = api;
            cublas_loaded[i] = 1;
            result = &cublas_api[i];
        }
        if (!result) describe_missing(why, why_len, max_major, "libcublas", "cuBLAS",
                                      "cuBLAS, with its libcublasLt; pip install nvidia-cublas-cu12", failures, &dirs);
        dirs_free(&dirs);
        dirs_free(&env_dirs);
        dirs_free(&wheel_dirs);
    }
    pthread_mutex_unlock(&load_lock);
    return result;
}

const char *opc_loaded_path(const void *library) {
    if (library == &driver_api) return driver_path;
    for (int i = 0; i < 2; i++) {
        if (library == &nvrtc_api[i]) return nvrtc_path[i];
        if (library == &cublas_api[i]) return cublas_path[i];
    }
    return "";
}
