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

int opc_set_direct_io(int fd, int on) {
#if defined(__linux__) && defined(O_DIRECT)
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    flags = on ? (flags | O_DIRECT) : (flags & ~O_DIRECT);
    return fcntl(fd, F_SETFL, flags) == 0 ? 0 : -errno;
#else
    (void)fd; (void)on;
    return -ENOSYS;
#endif
}

// ---------------------------------------------------------------------------------------
// Mapped-file fault guard. A file mapped with mmap and then truncated by another process
// raises SIGBUS when a page past its new end is touched. The handler below recognises
// faults inside registered mappings, replaces the faulting page with a zero page so the
// access retries and reads zeros, and marks the mapping damaged; MappedFile then reports
// the change as an error naming the file instead of the process dying of a signal.
// Faults anywhere else go to the handler that was installed before ours.
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <pthread.h>

#if ATOMIC_INT_LOCK_FREE != 2 || ATOMIC_POINTER_LOCK_FREE != 2
#error "the fault guard needs lock-free atomics (it is read from a signal handler)"
#endif

enum { SLOT_FREE = 0, SLOT_CLAIMED = 1, SLOT_LIVE = 2 };

typedef struct {
    _Atomic int state;
    _Atomic uintptr_t start, end;
    _Atomic int damaged;
} opc_guard_slot;

static opc_guard_slot guard_slots[OPC_GUARD_SLOTS];
// Slots [0, guard_used) have been used at least once: the handler scans only these.
static _Atomic int guard_used;
static struct sigaction guard_previous;
static uintptr_t guard_page_size;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_installed;

static void guard_chain(int sig, siginfo_t *info, void *context) {
    if (guard_previous.sa_flags & SA_SIGINFO) {
        if (guard_previous.sa_sigaction) { guard_previous.sa_sigaction(sig, info, context); return; }
    } else if (guard_previous.sa_handler != SIG_DFL && guard_previous.sa_handler != SIG_IGN) {
        guard_previous.sa_handler(sig);
        return;
    }
    // Default action: restore it and re-raise; the signal is blocked while we run, so it
    // is delivered (and kills the process as it would have without us) when we return.
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

// Async-signal-safe: atomics, mmap (a plain system call) and the chained handler only.
static void guard_on_sigbus(int sig, siginfo_t *info, void *context) {
    uintptr_t addr = (uintptr_t)info->si_addr;
    int used = atomic_load(&guard_used);
    for (int i = 0; i < used; i++) {
        opc_guard_slot *s = &guard_slots[i];
        if (atomic_load(&s->state) != SLOT_LIVE) continue;
        if (addr < atomic_load(&s->start) || addr >= atomic_load(&s->end)) continue;
        int saved_errno = errno;
        void *page = (void *)(addr & ~(guard_page_size - 1));
        void *p = mmap(page, guard_page_size, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        errno = saved_errno;
        if (p == MAP_FAILED) break;   // cannot repair: behave as if we were not here
        atomic_store(&s->damaged, 1);
        return;                       // the faulting access retries and reads zeros
    }
    guard_chain(sig, info, context);
}

static void guard_install(void) {
    guard_page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    // Read the previous handler first so it is in place before ours can run.
    if (sigaction(SIGBUS, NULL, &guard_previous) != 0) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_on_sigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    guard_installed = sigaction(SIGBUS, &sa, NULL) == 0;
}

int opc_guard_register(const void *start, size_t length) {
    pthread_once(&guard_once, guard_install);
    if (!guard_installed || start == NULL || length == 0) return -1;
    for (int i = 0; i < OPC_GUARD_SLOTS; i++) {
        opc_guard_slot *s = &guard_slots[i];
        int expected = SLOT_FREE;
        if (!atomic_compare_exchange_strong(&s->state, &expected, SLOT_CLAIMED)) continue;
        atomic_store(&s->start, (uintptr_t)start);
        atomic_store(&s->end, (uintptr_t)start + length);
        atomic_store(&s->damaged, 0);
        int used = atomic_load(&guard_used);
        while (used < i + 1 && !atomic_compare_exchange_weak(&guard_used, &used, i + 1)) {}
        atomic_store(&s->state, SLOT_LIVE);
        return i;
    }
    return -1;
}

void opc_guard_unregister(int slot) {
    if (slot >= 0 && slot < OPC_GUARD_SLOTS) atomic_store(&guard_slots[slot].state, SLOT_FREE);
}

int opc_guard_damaged(int slot) {
    if (slot < 0 || slot >= OPC_GUARD_SLOTS) return 0;
    return atomic_load(&guard_slots[slot].damaged);
}
