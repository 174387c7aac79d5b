/*
 * Negative control for scripts/migrate-test.sh --backend qsd --negative-control.
 *
 * qemu-storage-daemon (libvhost-user) cannot switch dirty logging off. Preloaded into it,
 * this turns the shared mapping of QEMU's dirty log (a memfd QEMU names "vhost-log") into a
 * private copy-on-write one: the backend still "logs", but QEMU never sees a bit of it, as
 * with a backend that offers VHOST_F_LOG_ALL and marks nothing. Every other mmap is passed
 * through untouched. It prints one line to stderr per mapping it changes.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static int is_vhost_log(int fd)
{
    char path[64], target[256];
    ssize_t n;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    n = readlink(path, target, sizeof(target) - 1);
    if (n <= 0)
        return 0;
    target[n] = 0;
    return strstr(target, "memfd:vhost-log") != NULL;
}

/*
 * The system call itself, not dlsym(RTLD_NEXT): dlsym may allocate, and an allocation may
 * mmap, which would come back here before the real function is known. On x86_64 glibc's
 * mmap is this system call; syscall() returns -1 with errno set, i.e. MAP_FAILED.
 */
static void *do_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (fd >= 0 && (flags & MAP_SHARED) && is_vhost_log(fd)) {
        flags = (flags & ~MAP_SHARED) | MAP_PRIVATE;
        fprintf(stderr, "nolog-preload: dirty log mapping of %zu bytes made private (logging disabled)\n", len);
    }
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return do_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return do_mmap(addr, len, prot, flags, fd, off);
}
