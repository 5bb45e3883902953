/*
 * recon/scan.h - a raw tomography scan, whatever its file format.
 *
 * A scan is a set of 2-D detector frames of `width` x `rows` pixels: projections taken at
 * known angles, flat fields (beam without sample) and dark fields (no beam). Opening a scan
 * parses and validates its metadata and checks every frame file it can check cheaply;
 * pixels are read later, a band of detector rows at a time, by tomo_scan_read_rows().
 *
 * Projections are numbered 0..n_proj-1 in ascending angle. Flats are numbered in ascending
 * time and grouped: flats taken one after another, with no projection between them, form
 * one group, which is averaged before use.
 */
#ifndef TOMO_SCAN_H
#define TOMO_SCAN_H

#include <stdint.h>

#include "../common/error.h"

typedef enum tomo_frame_kind {
    TOMO_FRAME_PROJECTION = 0,
    TOMO_FRAME_FLAT = 1,
    TOMO_FRAME_DARK = 2,
} tomo_frame_kind;

/*
 * What a file-format reader provides. read_rows() must be safe to call from several threads
 * at once (use pread, not a shared file offset).
 */
typedef struct tomo_scan_reader_ops {
    /*
     * Reads detector rows [z0, z0 + nz) of one frame into dst (nz * width floats, row-major),
     * as raw detector counts. Returns 0 or a negative TOMO_E_* code with a message naming the
     * file.
     */
    int (*read_rows)(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                     tomo_error *err);
    /* Releases the reader. */
    void (*close)(void *reader);
} tomo_scan_reader_ops;

typedef struct tomo_scan {
    char path[4096]; /* the directory or file that was opened */
    char format[32]; /* "spring8-img", "spring8-tif", ... */
    int width;       /* detector columns, N */
    int rows;        /* detector rows = number of slices */
    int n_proj;      /* projections */
    int n_flat;      /* flat-field frames */
    int n_dark;      /* dark-field frames (1 when the dark is already averaged) */
    int n_flat_groups;

    double *proj_angle_deg; /* [n_proj], ascending, as recorded (degrees) */
    double *proj_time;      /* [n_proj] acquisition time; any unit, only ratios are used */
    int *proj_frame;        /* [n_proj] frame number in the source, for messages */
    double *flat_time;      /* [n_flat] ascending */
    int *flat_group;        /* [n_flat] group of each flat, 0..n_flat_groups-1, ascending */
    int *flat_frame;        /* [n_flat] frame number in the source */

    uint64_t fingerprint; /* changes whenever an input file may have changed */
    int64_t mtime;        /* seconds since the epoch of the newest metadata file, for st_mtime */

    const tomo_scan_reader_ops *ops;
    void *reader;
} tomo_scan;

/*
 * Opens the scan at `path`. `format` selects a reader by name ("spring8"); NULL or "auto"
 * detects it from the directory contents. On failure *out is NULL, err names the file and the
 * problem, and a negative TOMO_E_* code is returned.
 */
int tomo_scan_open(const char *path, const char *format, tomo_scan **out, tomo_error *err);

/* Reads rows [z0, z0 + nz) of one frame as raw counts; see tomo_scan_reader_ops. */
int tomo_scan_read_rows(const tomo_scan *scan, tomo_frame_kind kind, int index, int z0, int nz,
                        float *dst, tomo_error *err);

/* Closes the reader and frees the scan. NULL is allowed. */
void tomo_scan_close(tomo_scan *scan);

/*
 * For readers: allocates a zeroed scan with its per-frame arrays sized for n_proj and n_flat
 * frames. Returns NULL when out of memory.
 */
tomo_scan *tomo_scan_alloc(int n_proj, int n_flat);

/*
 * For readers: sorts projections by angle (ties by time) and flats by time, and assigns flat
 * groups from `flat_run`, which gives for each flat the index of the run of consecutive flat
 * frames it was acquired in. Both arrays are permuted together with the frames.
 */
void tomo_scan_sort_frames(tomo_scan *scan, int *flat_run);

#endif
