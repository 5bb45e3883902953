/*
 * fs/tiff.h - the bytes of a slice file: a single-page, uncompressed, little-endian TIFF of
 * 32-bit IEEE floats (SampleFormat 3) or 16-bit unsigned integers, one strip.
 *
 * The header occupies the first TOMO_TIFF_DATA_OFFSET bytes (page aligned) and depends only on
 * the geometry and the description, so the size of a slice file is known before its pixels:
 *     size = TOMO_TIFF_DATA_OFFSET + width * height * bytes per sample.
 * Resolution tags carry the pixel size in pixels per centimetre (ResolutionUnit 3), which is
 * what libtiff, tifffile and VTK (ParaView: spacing in mm) read. ImageJ shows micrometres
 * when the description starts with the lines of tomo_tiff_imagej_description(): it then
 * reads "unit=um" and converts the centimetre resolution itself.
 */
#ifndef TOMO_TIFF_H
#define TOMO_TIFF_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"

#define TOMO_TIFF_DATA_OFFSET 4096

/* Longest ImageDescription that fits the fixed header, NUL excluded. */
#define TOMO_TIFF_DESCRIPTION_MAX 3072

/* Sample types of slice files. */
typedef enum tomo_sample {
    TOMO_SAMPLE_FLOAT32 = 0, /* IEEE 754 single precision, 4 bytes */
    TOMO_SAMPLE_UINT16 = 1,  /* unsigned integer, 2 bytes */
} tomo_sample;

static inline unsigned tomo_sample_bytes(tomo_sample sample)
{
    return sample == TOMO_SAMPLE_UINT16 ? 2u : 4u;
}

/* "float32" or "uint16". */
const char *tomo_sample_name(tomo_sample sample);

/* Bytes of a slice file of width x height samples. */
static inline uint64_t tomo_tiff_file_size_of(int width, int height, tomo_sample sample)
{
    return TOMO_TIFF_DATA_OFFSET + (uint64_t)width * (uint64_t)height * tomo_sample_bytes(sample);
}

/* Bytes of a float32 slice file. */
static inline uint64_t tomo_tiff_file_size(int width, int height)
{
    return tomo_tiff_file_size_of(width, height, TOMO_SAMPLE_FLOAT32);
}

/*
 * Writes the TOMO_TIFF_DATA_OFFSET header bytes into `out`. `description` (ASCII, at most
 * TOMO_TIFF_DESCRIPTION_MAX bytes) becomes the ImageDescription tag. The same arguments always
 * give the same bytes.
 */
int tomo_tiff_header(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                     double pixel_um, const char *description, tomo_error *err);

/* tomo_tiff_header for either sample type. */
int tomo_tiff_header_of(unsigned char out[TOMO_TIFF_DATA_OFFSET], int width, int height,
                        tomo_sample sample, double pixel_um, const char *description,
                        tomo_error *err);

/*
 * Writes the lines that make ImageJ (and Fiji) calibrate a slice file, for the start of its
 * description: "ImageJ=1.11a" (ImageJ parses descriptions that start so), "unit=um" (with the
 * centimetre resolution tags: pixel width in micrometres), "spacing=" (slice distance,
 * micrometres) and "vunit=cm^-1". For uint16 files, lo < hi being the values of 0 and
 * 65535, also the straight-line calibration "cf=0", "c0=lo", "c1=(hi - lo) / 65535" and the
 * display range "min=0", "max=65535", so ImageJ shows and measures cm^-1. Returns the length
 * written (snprintf's, so >= size means truncated).
 */
int tomo_tiff_imagej_description(char *buf, size_t size, tomo_sample sample, double spacing_um,
                                 double lo, double hi);

/* Factor s of the uint16 conversion (tomo_tiff_to_u16) that maps [lo, hi] to [0, 65535]. */
static inline double tomo_u16_scale(double lo, double hi)
{
    return 65535.0 / (hi - lo);
}

/*
 * Converts n values to uint16: with t = ((double)v - lo) * scale (scale from tomo_u16_scale),
 * the result is 0 when t <= 0 or v is NaN, 65535 when t >= 65535, and floor(t + 0.5)
 * otherwise (rounding half up). All arithmetic in double, in that order, so any
 * implementation that performs the same operations gets the same values.
 */
void tomo_u16_from_float(const float *src, size_t n, double lo, double scale, uint16_t *dst);

#endif
