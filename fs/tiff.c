#include "tiff.h"

#include <math.h>
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

int tomo_tiff_header(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                     double pixel_um, const char *description, tomo_error *err)
{
    size_t desc_len = description ? strlen(description) : 0;
    if (width <= 0 || height <= 0 || (uint64_t)width * (uint64_t)height * 4u > UINT32_MAX)
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
    /* pixels per centimetre as a rational with a fixed denominator */
    const uint32_t den = 10000;
    double ppcm = 1e4 / pixel_um * den;
    uint32_t num = ppcm >= (double)UINT32_MAX ? UINT32_MAX : (uint32_t)llround(ppcm);
    if (num == 0)
        num = 1;
    uint32_t strip_bytes = (uint32_t)width * (uint32_t)height * 4u;

    unsigned char *p = out + 8;
    put16(p, N_ENTRIES);
    p += 2;
    p = entry(p, 256, TIFF_LONG, 1, (uint32_t)width);                  /* ImageWidth */
    p = entry(p, 257, TIFF_LONG, 1, (uint32_t)height);                 /* ImageLength */
    p = entry(p, 258, TIFF_SHORT, 1, 32);                              /* BitsPerSample */
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
    p = entry(p, 339, TIFF_SHORT, 1, 3); /* SampleFormat: IEEE float */
    put32(p, 0);                         /* no next IFD */

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
