#include "scan.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "dxchange.h"
#include "h5io.h"
#include "nxtomo.h"
#include "spring8.h"
#include "tiffseries.h"

/* ------------------------------------------------------------------------------------------ */
/* Opening and reading                                                                         */
/* ------------------------------------------------------------------------------------------ */

#define SCAN_KNOWN_FORMATS "auto, spring8, dxchange, nxtomo, tiff-series"

static int not_a_scan(const char *path, const char *why, tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_FORMAT,
                          "%s: not a recognised scan directory (%s; a scan is a SPring-8 "
                          "directory with output.log, a directory of TIFF projections with "
                          "flat*/dark* files and an angles file, or a DXchange or NXtomo HDF5 "
                          "file)",
                          path, why);
}

static int ends_with_ci(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

/* The extensions under which HDF5 scans are found in a directory. */
static int has_hdf5_extension(const char *name)
{
    static const char *const ext[] = {".h5", ".hdf5", ".hdf", ".nxs", ".nx"};
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        if (ends_with_ci(name, ext[i]))
            return 1;
    }
    return 0;
}

/* .nxs is NeXus by name; any other HDF5 file is DXchange when it holds /exchange/data. */
static int open_hdf5_detected(const char *path, tomo_scan **out, tomo_error *err)
{
    if (!ends_with_ci(path, ".nxs") && tomo_dxchange_detect(path))
        return tomo_dxchange_open(path, out, err);
    return tomo_nxtomo_open(path, out, err);
}

/* Detection reads HDF5 metadata too, so it belongs inside the dry run. */
static int open_hdf5_file(const char *path, tomo_scan **out, tomo_error *err)
{
    return tomo_h5_open_checked(path, open_hdf5_detected, out, err);
}

/*
 * The one HDF5 file of a directory, so that a folder holding a master file and the folder of
 * its external links can be given as it is. 0 with name[0] == '\0' when there is none; more
 * than one is an error, since picking one would be a guess.
 */
static int single_hdf5_file(const char *dir, char *path, size_t size, tomo_error *err)
{
    path[0] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open directory: %s", dir,
                              strerror(errno));
    struct dirent *de;
    char first[256] = "";
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || !has_hdf5_extension(de->d_name))
            continue;
        char candidate[4096];
        int n = snprintf(candidate, sizeof candidate, "%s/%s", dir, de->d_name);
        struct stat st;
        if (n < 0 || (size_t)n >= sizeof candidate || stat(candidate, &st) < 0 ||
            !S_ISREG(st.st_mode))
            continue;
        if (first[0]) {
            rc = tomo_error_set(err, TOMO_E_FORMAT,
                                "%s: holds several HDF5 files (%s, %s): give the file itself", dir,
                                first, de->d_name);
            break;
        }
        snprintf(first, sizeof first, "%s", de->d_name);
        snprintf(path, size, "%s", candidate);
    }
    closedir(d);
    if (rc < 0)
        path[0] = '\0';
    return rc;
}

static int open_detected(const char *path, tomo_scan **out, tomo_error *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: %s", path, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        if (has_hdf5_extension(path) || tomo_hdf5_file_detect(path))
            return open_hdf5_file(path, out, err);
        return not_a_scan(path, "not a directory, and not an HDF5 file", err);
    }
    if (!S_ISDIR(st.st_mode))
        return not_a_scan(path, "not a directory", err);
    if (tomo_spring8_detect(path))
        return tomo_spring8_open(path, out, err);
    if (tomo_tiffseries_detect(path))
        return tomo_tiffseries_open(path, out, err);
    char file[4096];
    int rc = single_hdf5_file(path, file, sizeof file, err);
    if (rc < 0)
        return rc;
    if (file[0])
        return open_hdf5_file(file, out, err);
    return not_a_scan(path, "no output.log, no TIFF series, no HDF5 file", err);
}

int tomo_scan_open(const char *path, const char *format, tomo_scan **out, tomo_error *err)
{
    if (!out)
        return tomo_error_set(err, TOMO_E_INVALID, "tomo_scan_open: no place for the result");
    *out = NULL;
    if (!path || !*path)
        return tomo_error_set(err, TOMO_E_INVALID, "no scan path given");
    if (!format || strcmp(format, "auto") == 0)
        return open_detected(path, out, err);
    if (strcmp(format, "spring8") == 0)
        return tomo_spring8_open(path, out, err);
    if (strcmp(format, "dxchange") == 0)
        return tomo_h5_open_checked(path, tomo_dxchange_open, out, err);
    if (strcmp(format, "nxtomo") == 0)
        return tomo_h5_open_checked(path, tomo_nxtomo_open, out, err);
    if (strcmp(format, "tiff-series") == 0)
        return tomo_tiffseries_open(path, out, err);
    return tomo_error_set(err, TOMO_E_INVALID, "unknown format '%s' (known: %s)", format,
                          SCAN_KNOWN_FORMATS);
}

static int frame_count(const tomo_scan *scan, tomo_frame_kind kind)
{
    switch (kind) {
    case TOMO_FRAME_PROJECTION:
        return scan->n_proj;
    case TOMO_FRAME_FLAT:
        return scan->n_flat;
    case TOMO_FRAME_DARK:
        return scan->n_dark;
    }
    return -1;
}

static const char *frame_kind_name(tomo_frame_kind kind)
{
    switch (kind) {
    case TOMO_FRAME_PROJECTION:
        return "projection";
    case TOMO_FRAME_FLAT:
        return "flat";
    case TOMO_FRAME_DARK:
        return "dark";
    }
    return "unknown";
}

int tomo_scan_read_rows(const tomo_scan *scan, tomo_frame_kind kind, int index, int z0, int nz,
                        float *dst, tomo_error *err)
{
    if (!scan || !scan->ops || !scan->ops->read_rows || !dst)
        return tomo_error_set(err, TOMO_E_INVALID, "tomo_scan_read_rows: no scan or buffer");
    int count = frame_count(scan, kind);
    if (count < 0)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: unknown frame kind %d", scan->path,
                              (int)kind);
    if (index < 0 || index >= count)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: %s %d does not exist (the scan has %d)",
                              scan->path, frame_kind_name(kind), index, count);
    /* Written so that no sum can overflow. */
    if (z0 < 0 || nz <= 0 || z0 >= scan->rows || nz > scan->rows - z0)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: rows %d..%d+%d outside 0..%d", scan->path,
                              z0, z0, nz, scan->rows);
    return scan->ops->read_rows(scan->reader, kind, index, z0, nz, dst, err);
}

void tomo_scan_close(tomo_scan *scan)
{
    if (!scan)
        return;
    if (scan->ops && scan->ops->close)
        scan->ops->close(scan->reader);
    free(scan->proj_angle_deg);
    free(scan->proj_time);
    free(scan->proj_frame);
    free(scan->flat_time);
    free(scan->flat_group);
    free(scan->flat_frame);
    free(scan->dark_frame);
    free(scan);
}

/* ------------------------------------------------------------------------------------------ */
/* Subsets of the projections                                                                  */
/* ------------------------------------------------------------------------------------------ */

typedef struct subset_reader {
    const tomo_scan *parent;
    int first; /* k */
    int step;  /* K */
} subset_reader;

static int subset_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz,
                            float *dst, tomo_error *err)
{
    const subset_reader *r = reader;
    if (kind == TOMO_FRAME_PROJECTION)
        index = r->first + index * r->step;
    return tomo_scan_read_rows(r->parent, kind, index, z0, nz, dst, err);
}

static void subset_close(void *reader)
{
    free(reader);
}

static const tomo_scan_reader_ops subset_ops = {subset_read_rows, subset_close};

int tomo_scan_subset(const tomo_scan *parent, int k, int K, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    if (K < 1 || k < 0 || k >= K || k >= parent->n_proj)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: projection subset %d of %d does not exist (the scan has %d "
                              "projections)",
                              parent->path, k, K, parent->n_proj);
    int n = (parent->n_proj - k + K - 1) / K;
    tomo_scan *scan = tomo_scan_alloc(n, parent->n_flat);
    subset_reader *reader = malloc(sizeof *reader);
    int *dark_frame = NULL;
    if (parent->dark_frame && parent->n_dark > 0) {
        dark_frame = malloc((size_t)parent->n_dark * sizeof *dark_frame);
        if (dark_frame)
            memcpy(dark_frame, parent->dark_frame, (size_t)parent->n_dark * sizeof *dark_frame);
    }
    if (!scan || !reader || (parent->dark_frame && parent->n_dark > 0 && !dark_frame)) {
        tomo_scan_close(scan);
        free(reader);
        free(dark_frame);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory for a projection subset",
                              parent->path);
    }
    memcpy(scan->path, parent->path, sizeof scan->path);
    memcpy(scan->format, parent->format, sizeof scan->format);
    scan->width = parent->width;
    scan->rows = parent->rows;
    scan->n_dark = parent->n_dark;
    scan->n_flat_groups = parent->n_flat_groups;
    for (int i = 0; i < n; i++) {
        int m = k + i * K;
        scan->proj_angle_deg[i] = parent->proj_angle_deg[m];
        scan->proj_time[i] = parent->proj_time ? parent->proj_time[m] : 0.0;
        scan->proj_frame[i] = parent->proj_frame ? parent->proj_frame[m] : m;
    }
    size_t n_flat = (size_t)parent->n_flat;
    if (n_flat) {
        if (parent->flat_time)
            memcpy(scan->flat_time, parent->flat_time, n_flat * sizeof *scan->flat_time);
        memcpy(scan->flat_group, parent->flat_group, n_flat * sizeof *scan->flat_group);
        if (parent->flat_frame)
            memcpy(scan->flat_frame, parent->flat_frame, n_flat * sizeof *scan->flat_frame);
    }
    scan->dark_frame = dark_frame;
    scan->fingerprint = parent->fingerprint;
    scan->mtime = parent->mtime;
    memcpy(scan->source, parent->source, sizeof scan->source);
    memcpy(scan->angle_source, parent->angle_source, sizeof scan->angle_source);
    memcpy(scan->time_basis, parent->time_basis, sizeof scan->time_basis);
    *reader = (subset_reader){parent, k, K};
    scan->ops = &subset_ops;
    scan->reader = reader;
    *out = scan;
    return 0;
}

/* calloc that never returns NULL for zero elements, so NULL always means out of memory. */
static void *alloc_zeroed(int n, size_t size)
{
    return calloc(n > 0 ? (size_t)n : 1, size);
}

tomo_scan *tomo_scan_alloc(int n_proj, int n_flat)
{
    if (n_proj < 0 || n_flat < 0)
        return NULL;
    tomo_scan *scan = calloc(1, sizeof *scan);
    if (!scan)
        return NULL;
    scan->n_proj = n_proj;
    scan->n_flat = n_flat;
    scan->proj_angle_deg = alloc_zeroed(n_proj, sizeof(double));
    scan->proj_time = alloc_zeroed(n_proj, sizeof(double));
    scan->proj_frame = alloc_zeroed(n_proj, sizeof(int));
    scan->flat_time = alloc_zeroed(n_flat, sizeof(double));
    scan->flat_group = alloc_zeroed(n_flat, sizeof(int));
    scan->flat_frame = alloc_zeroed(n_flat, sizeof(int));
    if (!scan->proj_angle_deg || !scan->proj_time || !scan->proj_frame || !scan->flat_time ||
        !scan->flat_group || !scan->flat_frame) {
        tomo_scan_close(scan);
        return NULL;
    }
    return scan;
}

/* ------------------------------------------------------------------------------------------ */
/* Sorting                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Keys compared in order; `index` (the position before sorting) breaks every remaining tie,
 * so the order is total and qsort's instability cannot show.
 */
typedef struct sort_key {
    double primary;
    double secondary;
    int tertiary;
    int index;
} sort_key;

static int compare_double(double a, double b)
{
    return (a > b) - (a < b);
}

static int compare_keys(const sort_key *x, const sort_key *y)
{
    int c = compare_double(x->primary, y->primary);
    if (c == 0)
        c = compare_double(x->secondary, y->secondary);
    if (c == 0)
        c = (x->tertiary > y->tertiary) - (x->tertiary < y->tertiary);
    if (c == 0)
        c = (x->index > y->index) - (x->index < y->index);
    return c;
}

static int compare_keys_qsort(const void *a, const void *b)
{
    return compare_keys(a, b);
}

static sort_key projection_key(const tomo_scan *scan, int i)
{
    return (sort_key){scan->proj_angle_deg[i], scan->proj_time[i], 0, i};
}

static sort_key flat_key(const tomo_scan *scan, const int *flat_run, int i)
{
    return (sort_key){scan->flat_time[i], 0.0, flat_run ? flat_run[i] : 0, i};
}

/* The arrays permuted together when frames are reordered; NULL entries are skipped. */
typedef struct frame_arrays {
    double *d[2];
    int *i[2];
} frame_arrays;

static frame_arrays projection_arrays(tomo_scan *scan)
{
    return (frame_arrays){{scan->proj_angle_deg, scan->proj_time}, {scan->proj_frame, NULL}};
}

static frame_arrays flat_arrays(tomo_scan *scan, int *flat_run)
{
    return (frame_arrays){{scan->flat_time, NULL}, {scan->flat_frame, flat_run}};
}

static void swap_entries(const frame_arrays *a, int j, int k)
{
    for (int t = 0; t < 2; t++) {
        if (a->d[t]) {
            double v = a->d[t][j];
            a->d[t][j] = a->d[t][k];
            a->d[t][k] = v;
        }
        if (a->i[t]) {
            int v = a->i[t][j];
            a->i[t][j] = a->i[t][k];
            a->i[t][k] = v;
        }
    }
}

/*
 * Applies keys[k].index -> position k to every array, by following the permutation's
 * cycles; keys[].index is consumed (set to -1) on the way.
 */
static void apply_order(const frame_arrays *a, sort_key *keys, int n)
{
    for (int start = 0; start < n; start++) {
        int pos = start;
        while (keys[pos].index >= 0 && keys[pos].index != start) {
            int from = keys[pos].index;
            swap_entries(a, pos, from);
            keys[pos].index = -1;
            pos = from;
        }
        keys[pos].index = -1;
    }
}

/*
 * Fallback when the key array cannot be allocated: an insertion sort that moves an entry
 * only past strictly greater ones, which gives the same order as the keyed sort.
 */
static void insertion_sort(const frame_arrays *a, const tomo_scan *scan, const int *flat_run,
                           int is_flat, int n)
{
    for (int i = 1; i < n; i++) {
        for (int j = i; j > 0; j--) {
            sort_key x = is_flat ? flat_key(scan, flat_run, j) : projection_key(scan, j);
            sort_key y = is_flat ? flat_key(scan, flat_run, j - 1) : projection_key(scan, j - 1);
            x.index = y.index = 0;
            if (compare_keys(&x, &y) >= 0)
                break;
            swap_entries(a, j, j - 1);
        }
    }
}

static void sort_entries(tomo_scan *scan, int *flat_run, int is_flat)
{
    int n = is_flat ? scan->n_flat : scan->n_proj;
    frame_arrays a = is_flat ? flat_arrays(scan, flat_run) : projection_arrays(scan);
    if (n < 2)
        return;
    sort_key *keys = malloc((size_t)n * sizeof *keys);
    if (!keys) {
        insertion_sort(&a, scan, flat_run, is_flat, n);
        return;
    }
    for (int i = 0; i < n; i++)
        keys[i] = is_flat ? flat_key(scan, flat_run, i) : projection_key(scan, i);
    qsort(keys, (size_t)n, sizeof *keys, compare_keys_qsort);
    apply_order(&a, keys, n);
    free(keys);
}

/*
 * Flats in time order form a new group wherever their run changes. Without run information
 * every flat is its own group, so drift between flats is still interpolated.
 */
static void assign_flat_groups(tomo_scan *scan, const int *flat_run)
{
    int group = -1;
    for (int f = 0; f < scan->n_flat; f++) {
        if (f == 0 || !flat_run || flat_run[f] != flat_run[f - 1])
            group++;
        scan->flat_group[f] = group;
    }
    scan->n_flat_groups = group + 1;
}

void tomo_scan_sort_frames(tomo_scan *scan, int *flat_run)
{
    sort_entries(scan, flat_run, 0);
    sort_entries(scan, flat_run, 1);
    assign_flat_groups(scan, flat_run);
}

/* ------------------------------------------------------------------------------------------ */
/* Helpers for readers                                                                         */
/* ------------------------------------------------------------------------------------------ */

int tomo_angles_look_like_degrees(const double *angle, int n)
{
    double largest = 0.0;
    for (int i = 0; i < n; i++) {
        double a = fabs(angle[i]);
        if (a > largest) /* false for NaN */
            largest = a;
    }
    return largest > 2.0 * M_PI + 0.1;
}

int tomo_angle_unit_from_name(const char *units)
{
    if (!units)
        return -1;
    while (*units == ' ' || *units == '\t')
        units++;
    size_t n = strlen(units);
    while (n > 0 && (units[n - 1] == ' ' || units[n - 1] == '\t' || units[n - 1] == '\n'))
        n--;
    static const char *const deg[] = {"deg", "degree", "degrees"};
    static const char *const rad[] = {"rad", "radian", "radians"};
    for (int i = 0; i < 3; i++) {
        if (strlen(deg[i]) == n && strncasecmp(units, deg[i], n) == 0)
            return 1;
        if (strlen(rad[i]) == n && strncasecmp(units, rad[i], n) == 0)
            return 0;
    }
    return -1;
}

void tomo_angles_to_degrees(double *angle, int n, const char *units, char *how, size_t how_size)
{
    int unit = units && *units ? tomo_angle_unit_from_name(units) : -1;
    double largest = 0.0;
    for (int i = 0; i < n; i++)
        largest = fabs(angle[i]) > largest ? fabs(angle[i]) : largest;
    if (unit >= 0) {
        snprintf(how, how_size, "%s (units attribute '%s')", unit ? "degrees" : "radians", units);
    } else {
        unit = tomo_angles_look_like_degrees(angle, n);
        snprintf(how, how_size, "%s (%s; largest |angle| %.4g %s 2 pi + 0.1)",
                 unit ? "degrees" : "radians",
                 units && *units ? "units attribute not an angle unit" : "no unit stated", largest,
                 unit ? ">" : "<=");
        if (units && *units) {
            size_t k = strlen(how);
            snprintf(how + k, how_size - k, " [ignored units '%s']", units);
        }
    }
    if (!unit) {
        for (int i = 0; i < n; i++)
            angle[i] *= 180.0 / M_PI;
    }
}

void tomo_frame_runs(const int *frame, int n, char *buf, size_t size)
{
    size_t k = 0;
    if (size == 0)
        return;
    buf[0] = '\0';
    for (int i = 0; i < n && k + 1 < size; i++) {
        int j = i;
        while (j + 1 < n && frame[j + 1] == frame[j] + 1)
            j++;
        int w = j > i ? snprintf(buf + k, size - k, "%s%d-%d", k ? ", " : "", frame[i], frame[j])
                      : snprintf(buf + k, size - k, "%s%d", k ? ", " : "", frame[i]);
        if (w < 0 || (size_t)w >= size - k) {
            buf[k] = '\0'; /* whole runs only */
            break;
        }
        k += (size_t)w;
        i = j;
    }
}

void tomo_scan_text(char *buf, size_t size, const char *fmt, ...)
{
    if (size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

void tomo_scan_add_source(tomo_scan *scan, const char *fmt, ...)
{
    size_t used = strlen(scan->source);
    size_t cap = sizeof scan->source;
    if (used > 0 && used + 2 < cap) {
        memcpy(scan->source + used, "; ", 3);
        used += 2;
    }
    if (used + 1 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(scan->source + used, cap - used, fmt, ap);
    va_end(ap);
}
