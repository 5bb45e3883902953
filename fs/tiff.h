/*
 * fs/tiff.h - the bytes of a slice file: a single-page, uncompressed, little-endian TIFF of
 * 32-bit IEEE floats (SampleFormat 3), one strip.
 *
 * The header occupies the first TOMO_TIFF_DATA_OFFSET bytes (page aligned) and depends only on
 * the geometry and the description, so the size of a slice file is known before its pixels:
 *     size = TOMO_TIFF_DATA_OFFSET + width * height * 4.
 * Resolution tags carry the pixel size (ResolutionUnit centimetre).
 */
#ifndef TOMO_TIFF_H
#define TOMO_TIFF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"

#define TOMO_TIFF_DATA_OFFSET 4096

/* Longest ImageDescription that fits the fixed header, NUL excluded. */
#define TOMO_TIFF_DESCRIPTION_MAX 3072

static inline uint64_t tomo_tiff_file_size(int width, int height)
{
    return TOMO_TIFF_DATA_OFFSET + (uint64_t)width * (uint64_t)height * 4u;
}

/*
 * Writes the TOMO_TIFF_DATA_OFFSET header bytes into `out`. `description` (ASCII, at most
 * TOMO_TIFF_DESCRIPTION_MAX bytes) becomes the ImageDescription tag. The same arguments always
 * give the same bytes.
 */
int tomo_tiff_header(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                     double pixel_um, const char *description, tomo_error *err);

#endif
