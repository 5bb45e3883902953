#include "his.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/io.h"

/* More frames than any acquisition records; beyond it the count is damage. */
#define HIS_MAX_FRAMES (INT64_C(1) << 26)

static unsigned get_u16le(const unsigned char *b)
{
    return (unsigned)b[0] | ((unsigned)b[1] << 8);
}

static void put_u16le(unsigned char *b, unsigned v)
{
    b[0] = (unsigned char)(v & 0xff);
    b[1] = (unsigned char)((v >> 8) & 0xff);
}

int64_t tomo_his_pixel_bytes(int type, int width, int height)
{
    if (width <= 0 || height <= 0)
        return -1;
    int64_t n = (int64_t)width * (int64_t)height;
    switch (type) {
    case TOMO_HIS_TYPE_U8:
        return n;
    case TOMO_HIS_TYPE_U16:
        return 2 * n;
    case TOMO_HIS_TYPE_U12:
        return (3 * n + 1) / 2;
    }
    return -1;
}

int tomo_his_parse_header(const char *path, int64_t at, const unsigned char *bytes, size_t len,
                          tomo_his_header *hdr, tomo_error *err)
{
    if (len < TOMO_HIS_HEADER_SIZE)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: truncated at byte %lld: %zu bytes left, less than a %d-byte "
                              "frame header",
                              path, (long long)at, len, TOMO_HIS_HEADER_SIZE);
    if (bytes[0] != 'I' || bytes[1] != 'M')
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no HiPic frame header at byte %lld (bad magic)", path,
                              (long long)at);
    hdr->comment_length = (int)get_u16le(bytes + 2);
    hdr->width = (int)get_u16le(bytes + 4);
    hdr->height = (int)get_u16le(bytes + 6);
    hdr->type = (int)get_u16le(bytes + 12);
    hdr->frames = (int64_t)get_u16le(bytes + 14) + 65536 * (int64_t)get_u16le(bytes + 16);
    uint64_t bits = 0;
    for (int k = 7; k >= 0; k--)
        bits = (bits << 8) | bytes[22 + k];
    memcpy(&hdr->time_stamp, &bits, sizeof hdr->time_stamp);
    hdr->data_offset = TOMO_HIS_HEADER_SIZE + (int64_t)hdr->comment_length;
    if (hdr->width <= 0 || hdr->height <= 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: frame at byte %lld is %dx%d", path,
                              (long long)at, hdr->width, hdr->height);
    hdr->pixel_bytes = tomo_his_pixel_bytes(hdr->type, hdr->width, hdr->height);
    if (hdr->pixel_bytes < 0)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "%s: frame at byte %lld has pixel type %d (known: 0 8-bit, 2 16-bit, "
                              "6 12-bit packed)",
                              path, (long long)at, hdr->type);
    return 0;
}

void tomo_his_write_header(unsigned char out[TOMO_HIS_HEADER_SIZE], int width, int height, int type,
                           int comment_length, int64_t frames, double time_stamp)
{
    memset(out, 0, TOMO_HIS_HEADER_SIZE);
    out[0] = 'I';
    out[1] = 'M';
    put_u16le(out + 2, (unsigned)comment_length);
    put_u16le(out + 4, (unsigned)width);
    put_u16le(out + 6, (unsigned)height);
    put_u16le(out + 12, (unsigned)type);
    put_u16le(out + 14, (unsigned)(frames & 0xffff));
    put_u16le(out + 16, (unsigned)((frames >> 16) & 0xffff));
    uint64_t bits;
    memcpy(&bits, &time_stamp, sizeof bits);
    for (int k = 0; k < 8; k++)
        out[22 + k] = (unsigned char)((bits >> (8 * k)) & 0xff);
}

void tomo_his_pack12(const uint16_t *values, size_t n, unsigned char *out)
{
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned a = values[i] & 0xfff, b = values[i + 1] & 0xfff;
        unsigned char *o = out + 3 * (i / 2);
        o[0] = (unsigned char)(a >> 4);
        o[1] = (unsigned char)(((a & 15) << 4) | (b >> 8));
        o[2] = (unsigned char)(b & 0xff);
    }
    if (n % 2) {
        unsigned a = values[n - 1] & 0xfff;
        unsigned char *o = out + 3 * (n / 2);
        o[0] = (unsigned char)(a >> 4);
        o[1] = (unsigned char)((a & 15) << 4);
    }
}

void tomo_his_close(tomo_his *his)
{
    if (his->fd >= 0)
        close(his->fd);
    his->fd = -1;
    free(his->offset);
    his->offset = NULL;
    his->frames = 0;
}

static int push_offset(tomo_his *his, int64_t *cap, int64_t off)
{
    if (his->frames == *cap) {
        int64_t n = *cap ? 2 * *cap : 1024;
        int64_t *p = realloc(his->offset, (size_t)n * sizeof *p);
        if (!p)
            return -1;
        his->offset = p;
        *cap = n;
    }
    his->offset[his->frames++] = off;
    return 0;
}

/* Walks the frame headers from the start of the file; the first one sets the layout. */
static int walk_frames(tomo_his *his, int64_t size, tomo_error *err)
{
    int64_t off = 0, cap = 0, declared = 0;
    while (off < size) {
        unsigned char buf[TOMO_HIS_HEADER_SIZE];
        ssize_t got = tomo_pread_full(his->fd, buf, sizeof buf, off);
        if (got < 0)
            return tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", his->path,
                                  strerror(errno));
        tomo_his_header h;
        int rc = tomo_his_parse_header(his->path, off, buf, (size_t)got, &h, err);
        if (rc < 0)
            return rc;
        if (his->frames == 0) {
            his->width = h.width;
            his->height = h.height;
            his->type = h.type;
            declared = h.frames;
            if (declared > HIS_MAX_FRAMES)
                return tomo_error_set(err, TOMO_E_FORMAT, "%s: declares %lld frames", his->path,
                                      (long long)declared);
        } else if (h.width != his->width || h.height != his->height || h.type != his->type) {
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: frame %lld is %dx%d of type %d, frame 1 is %dx%d of type %d",
                                  his->path, (long long)his->frames + 1, h.width, h.height, h.type,
                                  his->width, his->height, his->type);
        }
        int64_t end = off + h.data_offset + h.pixel_bytes;
        if (end > size)
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: truncated: frame %lld needs bytes up to %lld, the file has "
                                  "%lld",
                                  his->path, (long long)his->frames + 1, (long long)end,
                                  (long long)size);
        if (his->frames >= HIS_MAX_FRAMES || push_offset(his, &cap, off + h.data_offset) < 0)
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: too many frames, or out of memory",
                                  his->path);
        off = end;
        /* Bytes after the declared frames (padding, a trailer) are not frames. */
        if (declared > 0 && his->frames == declared)
            break;
    }
    if (his->frames == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: empty file", his->path);
    if (declared > 0 && his->frames < declared)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: holds %lld frames, its header declares %lld",
                              his->path, (long long)his->frames, (long long)declared);
    return 0;
}

int tomo_his_open(const char *path, tomo_his *his, tomo_error *err)
{
    memset(his, 0, sizeof *his);
    his->fd = -1;
    if (snprintf(his->path, sizeof his->path, "%s", path) >= (int)sizeof his->path)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", path);
    his->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (his->fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc;
    if (fstat(his->fd, &st) < 0 || !S_ISREG(st.st_mode))
        rc = tomo_error_set(err, TOMO_E_IO, "%s: not a regular file", path);
    else
        rc = walk_frames(his, (int64_t)st.st_size, err);
    if (rc < 0)
        tomo_his_close(his);
    return rc;
}

/* Pixel i of a 12-bit packed frame, from the bytes starting at the pair that holds pixel i0. */
static unsigned unpack12(const unsigned char *buf, int64_t i0, int64_t i)
{
    const unsigned char *b = buf + 3 * (i / 2 - i0 / 2);
    return i % 2 == 0 ? ((unsigned)b[0] << 4) | (b[1] >> 4) : ((unsigned)(b[1] & 15) << 8) | b[2];
}

int tomo_his_read_rows(const tomo_his *his, int64_t frame, int z0, int nz, float *dst,
                       tomo_error *err)
{
    if (frame < 1 || frame > his->frames || z0 < 0 || nz <= 0 || z0 > his->height - nz)
        return tomo_error_set(err, TOMO_E_INTERNAL, "%s: frame %lld rows %d+%d outside the stream",
                              his->path, (long long)frame, z0, nz);
    int64_t first = (int64_t)z0 * his->width, n = (int64_t)nz * his->width;
    int64_t start, len;
    if (his->type == TOMO_HIS_TYPE_U12) {
        start = 3 * (first / 2);
        int64_t end = (3 * (first + n) + 1) / 2;
        len = end - start;
    } else {
        int bpp = his->type == TOMO_HIS_TYPE_U16 ? 2 : 1;
        start = bpp * first;
        len = bpp * n;
    }
    unsigned char *buf = malloc((size_t)len);
    if (!buf)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", his->path);
    ssize_t got = tomo_pread_full(his->fd, buf, (size_t)len, his->offset[frame - 1] + start);
    int rc = 0;
    if (got < 0)
        rc = tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", his->path, strerror(errno));
    else if (got < len)
        rc = tomo_error_set(err, TOMO_E_IO, "%s: short read in frame %lld (file truncated?)",
                            his->path, (long long)frame);
    if (rc == 0) {
        if (his->type == TOMO_HIS_TYPE_U16) {
            for (int64_t i = 0; i < n; i++)
                dst[i] = (float)get_u16le(buf + 2 * i);
        } else if (his->type == TOMO_HIS_TYPE_U8) {
            for (int64_t i = 0; i < n; i++)
                dst[i] = (float)buf[i];
        } else {
            for (int64_t i = 0; i < n; i++)
                dst[i] = (float)unpack12(buf, first, first + i);
        }
    }
    free(buf);
    return rc;
}
