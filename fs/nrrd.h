/*
 * fs/nrrd.h - the header of a volume file: NRRD (teem's "nearly raw raster data", version 4)
 * with the header attached, then the raw little-endian samples of every slice in order, x
 * fastest, then y (rows, top first), then z (slices).
 *
 * The header is padded with a comment line to exactly TOMO_NRRD_HEADER_BYTES, so the samples
 * start at a fixed, page-aligned offset: the size of the file is known from the geometry, a
 * read of the file maps to slices by arithmetic, and a raw importer (ImageJ's File > Import >
 * Raw) is given one number, the offset. The same arguments always give the same bytes.
 *
 * Readers and what they take from it:
 *   ParaView / VTK (vtkNrrdReader)  sizes, type, endian, the length of each space direction
 *                                   as the spacing, the space origin; the header ends at the
 *                                   first blank line, and "byte skip" is not supported, so
 *                                   the header is attached and its length is the offset.
 *   Fiji (File > Import > NRRD)     sizes, type, endian, spacing from the space directions,
 *                                   "space units" as the unit.
 *   teem, ITK, 3D Slicer, pynrrd    everything; the space is "3D-right-handed" (x along the
 *                                   rows, y down the columns, z along the slices: the index
 *                                   frame, not mirrored).
 */
#ifndef TOMO_NRRD_H
#define TOMO_NRRD_H

#include <stdint.h>

#include "../common/error.h"
#include "tiff.h"

#define TOMO_NRRD_HEADER_BYTES 4096

typedef struct tomo_nrrd_info {
    int sizes[3];         /* samples along x (columns), y (rows), z (slices) */
    tomo_sample sample;   /* float32 or uint16 */
    double spacing_um[3]; /* distance between sample centres along x, y, z, micrometres */
    double origin_um[3];  /* position of the centre of sample (0, 0, 0), micrometres */
    int quantized;        /* uint16: old_min and old_max are the values of 0 and 65535 */
    double old_min, old_max;
    const char *content;  /* one line without newlines, e.g. "tomofs slices" */
    const char *comments; /* newline-separated lines written as '#' comments; may be NULL */
} tomo_nrrd_info;

/* Bytes of the volume file: header and sizes[0] * sizes[1] * sizes[2] samples. */
uint64_t tomo_nrrd_file_size(const tomo_nrrd_info *info);

/*
 * Writes the TOMO_NRRD_HEADER_BYTES header bytes into out, ending with the blank line that
 * ends a NRRD header. Fails (with err naming the problem) when the text does not fit or a
 * value is out of range.
 */
int tomo_nrrd_header(unsigned char out[TOMO_NRRD_HEADER_BYTES], const tomo_nrrd_info *info,
                     tomo_error *err);

#endif
