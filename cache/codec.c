#include "codec.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define CHUNK_MAGIC   0x314b4354u /* "TCK1" read as a little-endian integer */
#define FLAG_SHUFFLED 0x01u
#define CODEC_ZSTD    1u

/* ---- byte shuffle ---- */

void tomo_shuffle4(const void *src, void *dst, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d0 = dst, *d1 = d0 + n, *d2 = d1 + n, *d3 = d2 + n;
    for (size_t i = 0; i < n; i++) {
        d0[i] = s[4 * i];
        d1[i] = s[4 * i + 1];
        d2[i] = s[4 * i + 2];
        d3[i] = s[4 * i + 3];
    }
}

void tomo_unshuffle4(const void *src, void *dst, size_t n)
{
    const unsigned char *s0 = src, *s1 = s0 + n, *s2 = s1 + n, *s3 = s2 + n;
    unsigned char *d = dst;
    for (size_t i = 0; i < n; i++) {
        d[4 * i] = s0[i];
        d[4 * i + 1] = s1[i];
        d[4 * i + 2] = s2[i];
        d[4 * i + 3] = s3[i];
    }
}

/* ---- CRC-32C ---- */

/* Reflected Castagnoli polynomial. */
#define CRC32C_POLY 0x82f63b78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_use_hw;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        crc_table[0][i] = c;
    }
    /* table k advances a byte through k further zero bytes, for eight bytes per step */
    for (int k = 1; k < 8; k++)
        for (int i = 0; i < 256; i++)
            crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xff];
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    crc_use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t crc32c_soft(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        uint32_t lo = load_le32(p) ^ crc, hi = load_le32(p + 4);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
              crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
              crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t tomo_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
#if defined(__x86_64__) && defined(__GNUC__)
    if (crc_use_hw)
        return ~crc32c_hw(crc, p, len);
#endif
    return ~crc32c_soft(crc, p, len);
}

/* ---- chunks ---- */

struct tomo_codec {
    int level;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    unsigned char *scratch; /* shuffled bytes on their way in or out of zstd */
    size_t scratch_cap;
};

tomo_codec *tomo_codec_create(int level)
{
    tomo_codec *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->level = level;
    return c;
}

void tomo_codec_destroy(tomo_codec *c)
{
    if (!c)
        return;
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c->scratch);
    free(c);
}

static unsigned char *scratch_of(tomo_codec *c, size_t len)
{
    if (c->scratch_cap < len) {
        unsigned char *grown = realloc(c->scratch, len);
        if (!grown)
            return NULL;
        c->scratch = grown;
        c->scratch_cap = len;
    }
    return c->scratch;
}

size_t tomo_chunk_bound(size_t raw_len)
{
    return TOMO_CHUNK_HEADER_BYTES + ZSTD_compressBound(raw_len);
}

static void store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

size_t tomo_chunk_encode(tomo_codec *c, const void *raw, size_t raw_len, int shuffle, void *dst,
                         size_t dst_cap)
{
    if (raw_len > UINT32_MAX || dst_cap < TOMO_CHUNK_HEADER_BYTES || (shuffle && raw_len % 4))
        return 0;
    if (!c->cctx && !(c->cctx = ZSTD_createCCtx()))
        return 0;
    const void *input = raw;
    if (shuffle) {
        unsigned char *s = scratch_of(c, raw_len);
        if (!s)
            return 0;
        tomo_shuffle4(raw, s, raw_len / 4);
        input = s;
    }
    unsigned char *out = dst;
    size_t n = ZSTD_compressCCtx(c->cctx, out + TOMO_CHUNK_HEADER_BYTES,
                                 dst_cap - TOMO_CHUNK_HEADER_BYTES, input, raw_len, c->level);
    if (ZSTD_isError(n))
        return 0;
    store_le32(out, CHUNK_MAGIC);
    store_le32(out + 4, (uint32_t)raw_len);
    store_le32(out + 8, tomo_crc32c(0, raw, raw_len));
    out[12] = shuffle ? FLAG_SHUFFLED : 0;
    out[13] = CODEC_ZSTD;
    out[14] = out[15] = 0;
    return TOMO_CHUNK_HEADER_BYTES + n;
}

const char *tomo_chunk_status_text(tomo_chunk_status status)
{
    switch (status) {
    case TOMO_CHUNK_OK:
        return "ok";
    case TOMO_CHUNK_BAD_HEADER:
        return "bad header";
    case TOMO_CHUNK_BAD_LENGTH:
        return "wrong length";
    case TOMO_CHUNK_BAD_FRAME:
        return "damaged compressed data";
    case TOMO_CHUNK_BAD_CHECKSUM:
        return "checksum mismatch";
    case TOMO_CHUNK_NOMEM:
        return "out of memory";
    }
    return "unknown problem";
}

int64_t tomo_chunk_raw_length(const void *src, size_t src_len)
{
    const unsigned char *p = src;
    if (src_len < TOMO_CHUNK_HEADER_BYTES || load_le32(p) != CHUNK_MAGIC)
        return -1;
    return load_le32(p + 4);
}

tomo_chunk_status tomo_chunk_decode(tomo_codec *c, const void *src, size_t src_len, void *dst,
                                    size_t raw_len)
{
    const unsigned char *p = src;
    int64_t recorded = tomo_chunk_raw_length(src, src_len);
    if (recorded < 0 || p[13] != CODEC_ZSTD || (p[12] & ~FLAG_SHUFFLED) || p[14] || p[15])
        return TOMO_CHUNK_BAD_HEADER;
    int shuffled = p[12] & FLAG_SHUFFLED;
    if ((uint64_t)recorded != raw_len || (shuffled && raw_len % 4))
        return TOMO_CHUNK_BAD_LENGTH;
    if (!c->dctx && !(c->dctx = ZSTD_createDCtx()))
        return TOMO_CHUNK_NOMEM;
    unsigned char *target = dst;
    if (shuffled && !(target = scratch_of(c, raw_len)))
        return TOMO_CHUNK_NOMEM;
    size_t n = ZSTD_decompressDCtx(c->dctx, target, raw_len, p + TOMO_CHUNK_HEADER_BYTES,
                                   src_len - TOMO_CHUNK_HEADER_BYTES);
    if (ZSTD_isError(n) || n != raw_len)
        return TOMO_CHUNK_BAD_FRAME;
    if (shuffled)
        tomo_unshuffle4(target, dst, raw_len / 4);
    if (tomo_crc32c(0, dst, raw_len) != load_le32(p + 8))
        return TOMO_CHUNK_BAD_CHECKSUM;
    return TOMO_CHUNK_OK;
}
