/*
 * denoise/png.c - zlib's checksums and an uncompressed PNG writer.
 */
#include "png.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_make(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[0][n] = c;
    }
    for (int t = 1; t < 8; t++)
        for (int n = 0; n < 256; n++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xff];
}

uint32_t tomo_crc32(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_table_make);
    const unsigned char *p = data;
    uint32_t c = ~crc;
    /* Slicing by 8: eight table lookups per 8 bytes. */
    while (len >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        uint32_t hi =
            (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
            crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
            crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = crc_table[0][(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

uint32_t tomo_adler32(uint32_t adler, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t a = adler & 0xffff, b = adler >> 16;
    while (len > 0) {
        /* 5552 bytes is the most that cannot overflow 32 bits before the modulo. */
        size_t n = len < 5552 ? len : 5552;
        len -= n;
        while (n--) {
            a += *p++;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    return b << 16 | a;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes one chunk: length, type, data, CRC of type and data. */
static int put_chunk(FILE *f, const char type[4], const unsigned char *data, size_t len)
{
    unsigned char head[8], tail[4];
    put_be32(head, (uint32_t)len);
    memcpy(head + 4, type, 4);
    uint32_t crc = tomo_crc32(0, type, 4);
    crc = tomo_crc32(crc, data, len);
    put_be32(tail, crc);
    return fwrite(head, 1, 8, f) == 8 && (len == 0 || fwrite(data, 1, len, f) == len) &&
                   fwrite(tail, 1, 4, f) == 4
               ? 0
               : -1;
}

int tomo_png_write_rgb(const char *path, const unsigned char *rgb, int width, int height,
                       tomo_error *err)
{
    if (width < 1 || height < 1 || width > 16384 || height > 16384)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: image of %dx%d pixels", path, width,
                              height);
    /* The raw data: each row is a filter byte (0, none) and its pixels. */
    size_t row = 1 + (size_t)width * 3;
    size_t raw_len = row * (size_t)height;
    unsigned char *raw = malloc(raw_len);
    /* zlib stream: 2-byte header, stored blocks of at most 65535 bytes (5 bytes of header
       each), Adler-32. */
    size_t blocks = (raw_len + 65534) / 65535;
    size_t z_len = 2 + raw_len + 5 * blocks + 4;
    unsigned char *z = malloc(z_len);
    if (!raw || !z) {
        free(raw);
        free(z);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    }
    for (int y = 0; y < height; y++) {
        raw[y * row] = 0;
        memcpy(raw + y * row + 1, rgb + (size_t)y * width * 3, (size_t)width * 3);
    }
    size_t at = 0;
    z[at++] = 0x78; /* deflate, 32 KiB window */
    z[at++] = 0x01; /* no dictionary, fastest; (0x78 << 8 | 0x01) % 31 == 0 */
    for (size_t off = 0; off < raw_len;) {
        size_t n = raw_len - off < 65535 ? raw_len - off : 65535;
        int last = off + n == raw_len;
        z[at++] = (unsigned char)last; /* BFINAL, BTYPE 00 (stored) */
        z[at++] = (unsigned char)(n & 0xff);
        z[at++] = (unsigned char)(n >> 8);
        z[at++] = (unsigned char)(~n & 0xff);
        z[at++] = (unsigned char)((~n >> 8) & 0xff);
        memcpy(z + at, raw + off, n);
        at += n;
        off += n;
    }
    put_be32(z + at, tomo_adler32(1, raw, raw_len));
    at += 4;
    free(raw);

    unsigned char ihdr[13];
    put_be32(ihdr, (uint32_t)width);
    put_be32(ihdr + 4, (uint32_t)height);
    ihdr[8] = 8;  /* bit depth */
    ihdr[9] = 2;  /* colour type: RGB */
    ihdr[10] = 0; /* compression: deflate */
    ihdr[11] = 0; /* filter method 0 */
    ihdr[12] = 0; /* no interlace */

    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        free(z);
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(z);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write: %s", tmp, strerror(e));
    }
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    int bad = fwrite(signature, 1, 8, f) != 8 || put_chunk(f, "IHDR", ihdr, sizeof ihdr) < 0 ||
              put_chunk(f, "IDAT", z, at) < 0 || put_chunk(f, "IEND", NULL, 0) < 0;
    int e = errno;
    free(z);
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad || rename(tmp, path) < 0) {
        if (!bad)
            e = errno;
        unlink(tmp);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}
