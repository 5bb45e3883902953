#include "scan.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "spring8.h"

/* ------------------------------------------------------------------------------------------ */
/* Opening and reading                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int not_a_scan(const char *path, const char *why, tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_FORMAT,
                          "%s: not a recognised scan directory (%s; a SPring-8 scan holds "
                          "output.log, dark.img or dark.tif, and q*.img or q*.tif frames)",
                          path, why);
}

static int open_detected(const char *path, tomo_scan **out, tomo_error *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: %s", path, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return not_a_scan(path, "not a directory", err);
    if (!tomo_spring8_detect(path))
        return not_a_scan(path, "no output.log", err);
    return tomo_spring8_open(path, out, err);
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
    return tomo_error_set(err, TOMO_E_INVALID, "unknown format '%s' (known: auto, spring8)",
                          format);
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
    free(scan);
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
