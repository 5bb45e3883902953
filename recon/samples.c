#include "samples.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

int tomo_sample_format_valid(const tomo_sample_format *fmt)
{
    if (!fmt)
        return 0;
    switch (fmt->kind) {
    case TOMO_SAMPLE_UINT:
    case TOMO_SAMPLE_INT:
        return fmt->bytes == 1 || fmt->bytes == 2 || fmt->bytes == 4 || fmt->bytes == 8;
    case TOMO_SAMPLE_FLOAT:
        return fmt->bytes == 4 || fmt->bytes == 8;
    }
    return 0;
}

const char *tomo_sample_format_name(const tomo_sample_format *fmt, char *buf, size_t size)
{
    const char *kind = fmt->kind == TOMO_SAMPLE_UINT  ? "uint"
                       : fmt->kind == TOMO_SAMPLE_INT ? "int"
                                                      : "float";
    snprintf(buf, size, "%s%d%s", kind, 8 * fmt->bytes,
             fmt->big_endian && fmt->bytes > 1 ? " big-endian" : "");
    return buf;
}

size_t tomo_samples_raw_offset(const tomo_sample_format *fmt, size_t n)
{
    if (fmt->bytes > 4)
        return (size_t)-1;
    return (size_t)(4 - fmt->bytes) * n;
}

/* Assembles an unsigned value of `bytes` bytes in the given order. */
static uint64_t load_bits(const unsigned char *p, int bytes, int big_endian)
{
    uint64_t v = 0;
    if (big_endian) {
        for (int k = 0; k < bytes; k++)
            v = (v << 8) | p[k];
    } else {
        for (int k = bytes - 1; k >= 0; k--)
            v = (v << 8) | p[k];
    }
    return v;
}

static float convert_one(const tomo_sample_format *fmt, const unsigned char *p)
{
    uint64_t bits = load_bits(p, fmt->bytes, fmt->big_endian);
    switch (fmt->kind) {
    case TOMO_SAMPLE_UINT:
        return (float)bits;
    case TOMO_SAMPLE_INT:
        if (fmt->bytes == 8) {
            int64_t v;
            memcpy(&v, &bits, sizeof v);
            return (float)v;
        }
        /* Two's complement of the sample's own width. */
        if (bits & (UINT64_C(1) << (8 * fmt->bytes - 1)))
            return (float)((int64_t)bits - (int64_t)(UINT64_C(1) << (8 * fmt->bytes)));
        return (float)bits;
    case TOMO_SAMPLE_FLOAT:
        if (fmt->bytes == 4) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, sizeof f);
            return f;
        } else {
            double d;
            memcpy(&d, &bits, sizeof d);
            return (float)d;
        }
    }
    return 0.0f;
}

void tomo_samples_to_float(const tomo_sample_format *fmt, const void *src, size_t n, float *dst)
{
    const unsigned char *s = src;
    size_t b = (size_t)fmt->bytes;
    /* The common cases get tight loops; the general one handles the rest. */
    if (fmt->kind == TOMO_SAMPLE_UINT && b == 2) {
        for (size_t i = 0; i < n; i++) {
            const unsigned char *p = s + 2 * i;
            unsigned v =
                fmt->big_endian ? ((unsigned)p[0] << 8) | p[1] : ((unsigned)p[1] << 8) | p[0];
            dst[i] = (float)v;
        }
        return;
    }
    if (fmt->kind == TOMO_SAMPLE_FLOAT && b == 4) {
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)load_bits(s + 4 * i, 4, fmt->big_endian);
            float f;
            memcpy(&f, &v, sizeof f);
            dst[i] = f;
        }
        return;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = convert_one(fmt, s + b * i);
}
