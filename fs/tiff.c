#include "tiff.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { TIFF_SHORT = 3, TIFF_LONG = 4, TIFF_ASCII = 2, TIFF_RATIONAL = 5 };

static const char software[] = "tomofs";

static void put16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v & 0xff);
    p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* An IFD entry whose value is inline (SHORT or LONG, count 1) or an offset. */
static unsigned char *entry(unsigned char *p, unsigned tag, unsigned type, uint32_t count,
                            uint32_t value)
{
    put16(p, tag);
    put16(p + 2, type);
    put32(p + 4, count);
    if (type == TIFF_SHORT && count == 1) {
        put32(p + 8, 0);
        put16(p + 8, value);
    } else {
        put32(p + 8, value);
    }
    return p + 12;
}

const char *tomo_sample_name(tomo_sample sample)
{
    return sample == TOMO_SAMPLE_UINT16 ? "uint16" : "float32";
}

/*
 * Pixels per centimetre as a rational num / den: 1e9 / (pixel_um * 1e5), exact for pixel sizes
 * with up to five decimals, so 1 / XResolution gives back the pixel size.
 */
static void resolution(double pixel_um, uint32_t *num, uint32_t *den)
{
    double d = pixel_um * 1e5;
    if (d >= 1.0 && d <= (double)UINT32_MAX) {
        *num = 1000000000u;
        *den = (uint32_t)llround(d);
        return;
    }
    *den = 10000;
    double n = 1e4 / pixel_um * 10000;
    *num = n >= (double)UINT32_MAX ? UINT32_MAX : n < 1 ? 1 : (uint32_t)llround(n);
}

int tomo_tiff_header(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                     double pixel_um, const char *description, tomo_error *err)
{
    return tomo_tiff_header_of(out, width, height, TOMO_SAMPLE_FLOAT32, pixel_um, description, err);
}

int tomo_tiff_header_of(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                        tomo_sample sample, double pixel_um, const char *description,
                        tomo_error *err)
{
    size_t desc_len = description ? strlen(description) : 0;
    unsigned bytes = tomo_sample_bytes(sample);
    if (width <= 0 || height <= 0 || (uint64_t)width * (uint64_t)height * bytes > UINT32_MAX)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "slice of %d x %d pixels cannot be one TIFF strip", width, height);
    if (desc_len > TOMO_TIFF_DESCRIPTION_MAX)
        return tomo_error_set(err, TOMO_E_INVALID, "TIFF description of %zu bytes is too long",
                              desc_len);
    if (!(pixel_um > 0))
        return tomo_error_set(err, TOMO_E_INVALID, "pixel size %g um is not positive", pixel_um);

    enum { N_ENTRIES = 16 };
    memset(out, 0, TOMO_TIFF_DATA_OFFSET);
    memcpy(out, "II*\0", 4);
    put32(out + 4, 8);

    /* Out-of-line values follow the IFD: two rationals, then the strings. */
    uint32_t ifd_end = 8 + 2 + N_ENTRIES * 12 + 4;
    uint32_t xres_at = ifd_end;
    uint32_t yres_at = xres_at + 8;
    uint32_t soft_at = yres_at + 8;
    uint32_t desc_at = soft_at + (uint32_t)sizeof software;
    uint32_t num, den;
    resolution(pixel_um, &num, &den);
    uint32_t strip_bytes = (uint32_t)width * (uint32_t)height * bytes;

    unsigned char *p = out + 8;
    put16(p, N_ENTRIES);
    p += 2;
    p = entry(p, 256, TIFF_LONG, 1, (uint32_t)width);                  /* ImageWidth */
    p = entry(p, 257, TIFF_LONG, 1, (uint32_t)height);                 /* ImageLength */
    p = entry(p, 258, TIFF_SHORT, 1, 8 * bytes);                       /* BitsPerSample */
    p = entry(p, 259, TIFF_SHORT, 1, 1);                               /* Compression: none */
    p = entry(p, 262, TIFF_SHORT, 1, 1);                               /* Photometric: MinIsBlack */
    p = entry(p, 270, TIFF_ASCII, (uint32_t)desc_len + 1, desc_at);    /* ImageDescription */
    p = entry(p, 273, TIFF_LONG, 1, TOMO_TIFF_DATA_OFFSET);            /* StripOffsets */
    p = entry(p, 277, TIFF_SHORT, 1, 1);                               /* SamplesPerPixel */
    p = entry(p, 278, TIFF_LONG, 1, (uint32_t)height);                 /* RowsPerStrip */
    p = entry(p, 279, TIFF_LONG, 1, strip_bytes);                      /* StripByteCounts */
    p = entry(p, 282, TIFF_RATIONAL, 1, xres_at);                      /* XResolution */
    p = entry(p, 283, TIFF_RATIONAL, 1, yres_at);                      /* YResolution */
    p = entry(p, 284, TIFF_SHORT, 1, 1);                               /* PlanarConfiguration */
    p = entry(p, 296, TIFF_SHORT, 1, 3);                               /* ResolutionUnit: cm */
    p = entry(p, 305, TIFF_ASCII, (uint32_t)sizeof software, soft_at); /* Software */
    p = entry(p, 339, TIFF_SHORT, 1, sample == TOMO_SAMPLE_UINT16 ? 1 : 3); /* SampleFormat */
    put32(p, 0);                                                            /* no next IFD */

    put32(out + xres_at, num);
    put32(out + xres_at + 4, den);
    put32(out + yres_at, num);
    put32(out + yres_at + 4, den);
    memcpy(out + soft_at, software, sizeof software);
    if (desc_len)
        memcpy(out + desc_at, description, desc_len);
    out[desc_at + desc_len] = '\0';
    return 0;
}

int tomo_tiff_imagej_description(char *buf, size_t size, tomo_sample sample, double spacing_um,
                                 double lo, double hi)
{
    if (sample != TOMO_SAMPLE_UINT16)
        return snprintf(buf, size, "ImageJ=1.11a\nunit=um\nspacing=%.9g\nvunit=cm^-1\n",
                        spacing_um);
    return snprintf(buf, size,
                    "ImageJ=1.11a\nunit=um\nspacing=%.9g\ncf=0\nc0=%.17g\nc1=%.17g\n"
                    "vunit=cm^-1\nmin=0\nmax=65535\n",
                    spacing_um, lo, (hi - lo) / 65535.0);
}

void tomo_u16_from_float(const float *src, size_t n, double lo, double scale, uint16_t *dst)
{
    for (size_t i = 0; i < n; i++) {
        double t = ((double)src[i] - lo) * scale;
        if (!(t > 0))
            dst[i] = 0; /* also NaN */
        else if (t >= 65535.0)
            dst[i] = 65535;
        else
            dst[i] = (uint16_t)floor(t + 0.5);
    }
}
