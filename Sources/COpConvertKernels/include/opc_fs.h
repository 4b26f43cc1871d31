#ifndef OPC_FS_H
#define OPC_FS_H

// File-system calls Swift's Glibc module does not expose (they need _GNU_SOURCE).

// Atomically swaps two existing paths (renameat2 RENAME_EXCHANGE). Returns 0, or -errno
// (-EINVAL / -ENOSYS where the file system or kernel cannot do it).
int opc_rename_exchange(const char *a, const char *b);

// Renames `from` to `to` only if `to` does not exist (renameat2 RENAME_NOREPLACE).
// Returns 0, or -errno (-EEXIST when `to` exists; -EINVAL / -ENOSYS when unsupported).
int opc_rename_noreplace(const char *from, const char *to);

// Ends the process at once with `status`: no atexit handlers, no library teardown (which
// can crash while other threads still run, e.g. OpenBLAS's pool).
void opc_exit_now(int status) __attribute__((noreturn));

// The terminal's width in columns for `fd` (TIOCGWINSZ; ioctl is variadic, which Swift
// cannot call), or 0 when `fd` is not a terminal or reports no width.
int opc_terminal_columns(int fd);

#endif
