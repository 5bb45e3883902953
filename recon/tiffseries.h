/*
 * recon/tiffseries.h - a directory of TIFF frames with an angles file.
 *
 *   DIR/flat*.tif[f], white*.tif[f]   flat fields (one frame each; several are averaged)
 *   DIR/dark*.tif[f]                  dark fields (optional; none means dark = 0)
 *   DIR/<anything else>.tif[f]        projections, one name pattern with a number, in number
 *                                     order (raw_00000.tiff, raw_00001.tiff, ...)
 *   DIR/angles*.txt|.dat|.csv, *.tlt  the projection angles, one number per line (commas,
 *                                     semicolons and blanks also separate; '#' starts a comment)
 *
 * Names are matched without regard to case; files starting with '.' are ignored. Frames are
 * read by tiffframe.h (any integer or float type, strips or tiles, any compression).
 *
 * Angles: with as many numbers as projections, the i-th belongs to the i-th projection. With
 * more, the difference must be even and as many surplus entries are dropped at the start as at
 * the end: exports from NeXus scans (Savu's, for one) list the angle of every frame of the
 * acquisition, flats and darks before and after included. Any other count is an error. The
 * unit is decided by tomo_angles_look_like_degrees(). There are no acquisition times: all flats
 * form one group.
 */
#ifndef TOMO_TIFFSERIES_H
#define TOMO_TIFFSERIES_H

#include <stddef.h>

#include "scan.h"

/* True when `dir` holds TIFF files and an angles file, or TIFF files named flat* or dark*. */
int tomo_tiffseries_detect(const char *dir);

/* Opens a TIFF-series directory. See tomo_scan_open() for the contract. */
int tomo_tiffseries_open(const char *dir, tomo_scan **out, tomo_error *err);

/* ---- pieces, exposed for tests ---- */

/*
 * Parses an angles file's text (`len` bytes; need not be NUL-terminated): numbers separated by
 * blanks, commas, semicolons or line ends; '#' comments to the end of the line. A token that
 * is not a finite number is an error naming path:line. On success *values (malloc'd) holds
 * *count numbers in file order; an empty file is an error.
 */
int tomo_angles_parse(const char *path, const char *text, size_t len, double **values, int *count,
                      tomo_error *err);

/*
 * Which of `count` listed angles belong to `n_proj` projections: *first is the index of the
 * first one used (see the rule above). Returns 0, or an error naming `path`.
 */
int tomo_angles_select(const char *path, int count, int n_proj, int *first, tomo_error *err);

#endif
