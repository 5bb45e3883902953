/*
 * recon/tiffframe.h - one detector frame in a TIFF file, read a band of rows at a time.
 *
 * Accepted: one page, one sample per pixel, 8/16/32/64-bit unsigned or signed integers or
 * 32/64-bit IEEE floats, either byte order, strips or tiles, any compression and predictor
 * this libtiff decodes. Photometric MinIsBlack or MinIsWhite; MinIsWhite is not inverted,
 * because the values are detector counts (as ct-rec reads them). Orientation tags are
 * ignored: row 0 is the first row stored.
 *
 * Uncompressed strips are read with pread straight from the file; everything else is
 * decoded by libtiff, strip by strip or tile by tile, only those that hold the rows asked for.
 * libtiff's own messages are captured per thread (never printed: a FUSE daemon has no
 * terminal) and end up in our error messages.
 */
#ifndef TOMO_TIFFFRAME_H
#define TOMO_TIFFFRAME_H

#include <stdint.h>

#include <tiffio.h>

#include "../common/error.h"
#include "samples.h"

/*
 * Opens a TIFF for reading, with libtiff's messages captured. The descriptor can also be
 * used with pread through TIFFFileno. Close with TIFFClose.
 */
int tomo_tiff_open(const char *path, TIFF **out, tomo_error *err);

/* The last libtiff complaint of the calling thread, or a generic phrase. */
const char *tomo_tiff_reason(void);

/* Forgets the last complaint, before a call whose failure should be explained. */
void tomo_tiff_clear_reason(void);

typedef struct tomo_tiff_frame {
    int width;
    int height;
    tomo_sample_format fmt; /* as stored; big_endian is the file's byte order */
    int tiled;
    uint32_t tile_width, tile_height; /* when tiled */
    uint32_t rows_per_strip;          /* when in strips */
    uint16_t compression;
    uint16_t photometric;
} tomo_tiff_frame;

/*
 * Checks that the open TIFF holds one frame this module reads and describes it. Errors name
 * `path` and the problem (bit depth, samples per pixel, several pages, unknown compression).
 */
int tomo_tiff_frame_inspect(TIFF *tif, const char *path, tomo_tiff_frame *frame, tomo_error *err);

/* Reads rows [z0, z0 + nz) as floats into dst (nz * width). */
int tomo_tiff_frame_read(TIFF *tif, const char *path, const tomo_tiff_frame *frame, int z0, int nz,
                         float *dst, tomo_error *err);

/* "uint16, deflate, tiles 16x16" and the like, for reports. */
void tomo_tiff_frame_describe(const tomo_tiff_frame *frame, char *buf, size_t size);

#endif
