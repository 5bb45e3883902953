/*
 * common/io.h - file reading and writing that survive interrupted and short system calls.
 */
#ifndef TOMO_IO_H
#define TOMO_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Reads [off, off + len) of fd with pread, retrying after EINTR and short reads, until len
 * bytes are in or the file ends. Returns the number of bytes read (less than len only at the
 * end of the file), or -1 with errno set.
 */
ssize_t tomo_pread_full(int fd, void *buf, size_t len, int64_t off);

/*
 * Writes len bytes to fd at its file offset, retrying after EINTR and short writes. Returns 0,
 * or -1 with errno set (a write that makes no progress fails with EIO).
 */
int tomo_write_full(int fd, const void *buf, size_t len);

/* The same with pwrite, at [off, off + len); the file offset does not move. */
int tomo_pwrite_full(int fd, const void *buf, size_t len, int64_t off);

#endif
