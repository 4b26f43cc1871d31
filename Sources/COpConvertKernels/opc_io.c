// Linux I/O calls that Swift's Glibc module does not expose (they need _GNU_SOURCE).
#define _GNU_SOURCE
#include "opc_kernels.h"
#include <fcntl.h>
#include <errno.h>

int opc_start_writeback(int fd, int64_t offset, int64_t length) {
#if defined(__linux__)
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0 ? 0 : -errno;
#else
    (void)fd; (void)offset; (void)length;
    return 0;
#endif
}
