#define _GNU_SOURCE
#include "opc_fs.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <linux/fs.h>
#endif

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int opc_renameat2(const char *a, const char *b, unsigned flags) {
#if defined(__linux__) && defined(SYS_renameat2)
    long r = syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, flags);
    return r == 0 ? 0 : -errno;
#else
    (void)a; (void)b; (void)flags;
    return -ENOSYS;
#endif
}

int opc_rename_exchange(const char *a, const char *b) { return opc_renameat2(a, b, RENAME_EXCHANGE); }

int opc_rename_noreplace(const char *from, const char *to) { return opc_renameat2(from, to, RENAME_NOREPLACE); }

void opc_exit_now(int status) {
    fflush(stdout);
    fflush(stderr);
    _exit(status);
}
