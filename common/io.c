#include "io.h"

#include <errno.h>
#include <unistd.h>

ssize_t tomo_pread_full(int fd, void *buf, size_t len, int64_t off)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(off + (int64_t)got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* Writes at the file offset (off < 0) or at off, until done or failed. */
static int write_full(int fd, const void *buf, size_t len, int64_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = off < 0 ? write(fd, p, len) : pwrite(fd, p, len, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
        if (off >= 0)
            off += w;
    }
    return 0;
}

int tomo_write_full(int fd, const void *buf, size_t len)
{
    return write_full(fd, buf, len, -1);
}

int tomo_pwrite_full(int fd, const void *buf, size_t len, int64_t off)
{
    if (off < 0) {
        errno = EINVAL;
        return -1;
    }
    return write_full(fd, buf, len, off);
}
