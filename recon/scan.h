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

#include <stddef.h>
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
    char format[32]; /* "spring8-img", "spring8-tif", "spring8-his", "dxchange", "nxtomo",
                        "tiff-series" */
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

    /* ---- What the reader found, for reports (tomofs info, scan.json). ---- */

    /* Files and datasets read, with their sample type and shape, "; "-separated. */
    char source[1024];
    /* Where the angles came from and how their unit was decided. */
    char angle_source[512];
    /*
     * What proj_time and flat_time count: "log time" (output.log's time column), "frame
     * index" (position in the acquisition, NXtomo) or "none" (no timing known: every flat is
     * in group 0).
     */
    char time_basis[32];
    /*
     * [n_dark] where each dark frame sits in the source (the frame index of NXtomo, the
     * position in /exchange/data_dark, the number in a dark file's name), ascending; NULL when
     * the dark is one pre-averaged file. Freed by tomo_scan_close().
     */
    int *dark_frame;
} tomo_scan;

/*
 * Opens the scan at `path`, a directory or a file. `format` selects a reader by name:
 * "spring8" (output.log with HiPic .img, .his or TIFF frames), "dxchange" (APS Data Exchange
 * HDF5), "nxtomo" (NeXus NXtomo HDF5) or "tiff-series" (a directory of TIFF projections, flats,
 * darks and an angles file). NULL or "auto" detects it:
 *   - a file ending in .h5, .hdf5, .hdf, .nxs or .nx: DXchange when it holds /exchange/data,
 *     otherwise NXtomo;
 *   - a directory with output.log: SPring-8;
 *   - a directory with TIFF files and an angles file, or TIFF files named flat* or dark*: a
 *     TIFF series;
 *   - a directory holding exactly one HDF5 file (by the extensions above): that file.
 * HDF5 files are opened after a dry run in a child process, which turns a crash of libhdf5 on
 * a damaged file into an error (tomo_h5_open_checked). docs/formats.md says what each reader
 * reads from where. On failure *out is NULL, err names the file (and dataset) and the problem,
 * and a negative TOMO_E_* code is returned.
 */
int tomo_scan_open(const char *path, const char *format, tomo_scan **out, tomo_error *err);

/* Reads rows [z0, z0 + nz) of one frame as raw counts; see tomo_scan_reader_ops. */
int tomo_scan_read_rows(const tomo_scan *scan, tomo_frame_kind kind, int index, int z0, int nz,
                        float *dst, tomo_error *err);

/*
 * A view of every K-th projection of `parent`, starting at projection k (0 <= k < K): the
 * subset's projection i is the parent's projection k + i * K, with its angle, time and frame
 * number; flats, darks, geometry, fingerprint and reports are the parent's. Reading goes
 * through the parent's reader, so the subset must be closed (tomo_scan_close) before the
 * parent. Noise2Inverse reconstructs each of the K interleaved subsets on its own. Returns 0,
 * or TOMO_E_INVALID when K < 1, k is outside 0..K-1 or the subset would hold no projection.
 */
int tomo_scan_subset(const tomo_scan *parent, int k, int K, tomo_scan **out, tomo_error *err);

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

/*
 * For readers: the unit of angles read without a unit attribute. Returns 1 (degrees) when the
 * largest |angle| exceeds 2 pi + 0.1, else 0 (radians): a scan in radians never exceeds
 * 2 pi, and one in degrees whose angles all stay within +-6.38 degrees cannot be
 * reconstructed anyway. NaN entries are ignored.
 */
int tomo_angles_look_like_degrees(const double *angle, int n);

/*
 * For readers: the unit named by a "units" attribute: 1 for degrees ("deg", "degree",
 * "degrees"), 0 for radians ("rad", "radian", "radians"), -1 for anything else (case and
 * surrounding blanks ignored).
 */
int tomo_angle_unit_from_name(const char *units);

/*
 * For readers: converts n angles read from a file to degrees, in place. `units` is the file's
 * unit attribute, NULL or "" when there is none: a name tomo_angle_unit_from_name() knows
 * decides; otherwise (no attribute, or an unknown name) tomo_angles_look_like_degrees()
 * decides. `how` receives one phrase saying which, for tomo_scan.angle_source.
 */
void tomo_angles_to_degrees(double *angle, int n, const char *units, char *how, size_t how_size);

/*
 * Frame numbers as runs for reports: {0, 1, 2, 7, 9, 10} gives "0-2, 7, 9-10". Numbers are
 * taken in the order given. Text that does not fit in `size` bytes is cut.
 */
void tomo_frame_runs(const int *frame, int n, char *buf, size_t size);

/* For readers: printf into a fixed buffer, cutting what does not fit. */
void tomo_scan_text(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* For readers: appends printf-style text to scan->source, separated from earlier text by
 * "; ". Text that does not fit is cut. */
void tomo_scan_add_source(tomo_scan *scan, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
