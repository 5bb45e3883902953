#include "dxchange.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/hash.h"
#include "h5io.h"

#define DX_DATA  "/exchange/data"
#define DX_WHITE "/exchange/data_white"
#define DX_DARK  "/exchange/data_dark"
#define DX_THETA "/exchange/theta"

enum { DX_PROJ = 0, DX_FLAT = 1, DX_DARKS = 2 };

int tomo_dxchange_detect(const char *path)
{
    if (!tomo_hdf5_file_detect(path))
        return 0;
    tomo_h5_lock();
    int found = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) {
        found = tomo_h5_object_type(f, DX_DATA, NULL, 0) == H5O_TYPE_DATASET;
        H5Fclose(f);
    }
    H5Eclear2(H5E_DEFAULT);
    tomo_h5_unlock();
    return found;
}

typedef struct dx_open {
    const char *path;
    tomo_h5_reader *r;
    double *theta;
    int n_theta;
    char theta_units[64];
    char angle_how[256];
} dx_open;

static int check_same_frames(const dx_open *o, int which, const char *name, tomo_error *err)
{
    const tomo_h5_stack *d = &o->r->stack[DX_PROJ], *s = &o->r->stack[which];
    if (s->rows != d->rows || s->width != d->width)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %s frames are %d x %d (rows x columns), but " DX_DATA
                              " frames are %d x %d",
                              o->path, name, s->rows, s->width, d->rows, d->width);
    return 0;
}

static int open_stacks(dx_open *o, tomo_error *err)
{
    tomo_h5_reader *r = o->r;
    int rc = tomo_h5_stack_open(r->file, o->path, DX_DATA, &r->stack[DX_PROJ], err);
    if (rc < 0)
        return rc;
    r->n_stacks = 1;
    if (tomo_h5_object_type(r->file, DX_WHITE, NULL, 0) == H5O_TYPE_UNKNOWN)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no " DX_WHITE ": the scan has no flat fields, which are needed "
                              "to normalise the projections",
                              o->path);
    rc = tomo_h5_stack_open(r->file, o->path, DX_WHITE, &r->stack[DX_FLAT], err);
    if (rc < 0)
        return rc;
    r->n_stacks = 2;
    if ((rc = check_same_frames(o, DX_FLAT, DX_WHITE, err)) < 0)
        return rc;
    char why[512];
    if (tomo_h5_object_type(r->file, DX_DARK, why, sizeof why) == H5O_TYPE_UNKNOWN) {
        /* A missing dark is legal (dark = 0); a dangling link to one is damage. */
        if (strncmp(why, "no ", 3) != 0)
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s", o->path, why);
        return 0;
    }
    rc = tomo_h5_stack_open(r->file, o->path, DX_DARK, &r->stack[DX_DARKS], err);
    if (rc < 0)
        return rc;
    r->n_stacks = 3;
    return check_same_frames(o, DX_DARKS, DX_DARK, err);
}

static int read_theta(dx_open *o, tomo_error *err)
{
    tomo_h5_reader *r = o->r;
    char why[512];
    if (tomo_h5_object_type(r->file, DX_THETA, why, sizeof why) == H5O_TYPE_UNKNOWN)
        return tomo_error_set(
            err, TOMO_E_FORMAT,
            "%s: no projection angles (%s): Data Exchange keeps them in " DX_THETA, o->path, why);
    int rc = tomo_h5_read_vector(r->file, o->path, DX_THETA, &o->theta, &o->n_theta, err);
    if (rc < 0)
        return rc;
    int n_proj = r->stack[DX_PROJ].frames;
    if (o->n_theta != n_proj)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: " DX_THETA " holds %d angles but " DX_DATA
                              " holds %d projections",
                              o->path, o->n_theta, n_proj);
    for (int i = 0; i < o->n_theta; i++) {
        if (!isfinite(o->theta[i]))
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: " DX_THETA "[%d] is %g, not an angle",
                                  o->path, i, o->theta[i]);
    }
    hid_t d = H5Dopen2(r->file, DX_THETA, H5P_DEFAULT);
    if (d >= 0) {
        tomo_h5_string_attr(d, "units", o->theta_units, sizeof o->theta_units);
        H5Dclose(d);
    }
    H5Eclear2(H5E_DEFAULT);
    tomo_angles_to_degrees(o->theta, o->n_theta, o->theta_units, o->angle_how, sizeof o->angle_how);
    return 0;
}

static void describe(const dx_open *o, tomo_scan *scan)
{
    const char *slash = strrchr(o->path, '/');
    char buf[600];
    tomo_h5_stack_describe(&o->r->stack[DX_PROJ], buf, sizeof buf);
    tomo_scan_add_source(scan, "%s: %s", slash ? slash + 1 : o->path, buf);
    for (int s = 1; s < o->r->n_stacks; s++) {
        tomo_h5_stack_describe(&o->r->stack[s], buf, sizeof buf);
        tomo_scan_add_source(scan, "%s", buf);
    }
    if (o->r->n_stacks < 3)
        tomo_scan_add_source(scan, "no " DX_DARK " (dark taken as 0)");
    tomo_scan_add_source(scan, "flats: one group (no acquisition times in Data Exchange)");
    snprintf(scan->angle_source, sizeof scan->angle_source, DX_THETA ", %s", o->angle_how);
    snprintf(scan->time_basis, sizeof scan->time_basis, "none");
}

static uint64_t fingerprint(const dx_open *o, int64_t *mtime)
{
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, "dxchange", 8);
    h = tomo_h5_hash_file(h, o->path, mtime);
    for (int s = 0; s < o->r->n_stacks; s++) {
        if (strcmp(o->r->stack[s].file, o->path) != 0)
            h = tomo_h5_hash_file(h, o->r->stack[s].file, mtime);
    }
    return h;
}

static int build_scan(dx_open *o, tomo_scan **out, tomo_error *err)
{
    tomo_h5_reader *r = o->r;
    int n_proj = r->stack[DX_PROJ].frames, n_flat = r->stack[DX_FLAT].frames;
    int n_dark = r->n_stacks > 2 ? r->stack[DX_DARKS].frames : 0;
    tomo_scan *scan = tomo_scan_alloc(n_proj, n_flat);
    int *flat_run = calloc((size_t)n_flat, sizeof *flat_run);
    if (scan)
        scan->dark_frame = calloc(n_dark > 0 ? (size_t)n_dark : 1, sizeof *scan->dark_frame);
    if (!scan || !flat_run || !scan->dark_frame) {
        free(flat_run);
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->path);
    }
    snprintf(scan->path, sizeof scan->path, "%s", o->path);
    snprintf(scan->format, sizeof scan->format, "dxchange");
    scan->width = r->stack[DX_PROJ].width;
    scan->rows = r->stack[DX_PROJ].rows;
    scan->n_dark = n_dark;
    for (int m = 0; m < n_proj; m++) {
        scan->proj_angle_deg[m] = o->theta[m];
        scan->proj_time[m] = m;
        scan->proj_frame[m] = m;
    }
    for (int f = 0; f < n_flat; f++)
        scan->flat_frame[f] = f;
    for (int d = 0; d < n_dark; d++)
        scan->dark_frame[d] = d;
    tomo_scan_sort_frames(scan, flat_run);
    free(flat_run);
    if (tomo_h5_reader_map(r, TOMO_FRAME_PROJECTION, n_proj) < 0 ||
        tomo_h5_reader_map(r, TOMO_FRAME_FLAT, n_flat) < 0 ||
        tomo_h5_reader_map(r, TOMO_FRAME_DARK, n_dark) < 0) {
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->path);
    }
    for (int m = 0; m < n_proj; m++) {
        r->kind[TOMO_FRAME_PROJECTION].stack[m] = DX_PROJ;
        r->kind[TOMO_FRAME_PROJECTION].frame[m] = scan->proj_frame[m];
    }
    for (int f = 0; f < n_flat; f++) {
        r->kind[TOMO_FRAME_FLAT].stack[f] = DX_FLAT;
        r->kind[TOMO_FRAME_FLAT].frame[f] = scan->flat_frame[f];
    }
    for (int d = 0; d < n_dark; d++) {
        r->kind[TOMO_FRAME_DARK].stack[d] = DX_DARKS;
        r->kind[TOMO_FRAME_DARK].frame[d] = d;
    }
    describe(o, scan);
    scan->fingerprint = fingerprint(o, &scan->mtime);
    scan->ops = &tomo_h5_reader_ops;
    scan->reader = r;
    o->r = NULL;
    *out = scan;
    return 0;
}

int tomo_dxchange_open(const char *path, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    dx_open o = {.path = path};
    o.r = calloc(1, sizeof *o.r);
    if (!o.r)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    o.r->file = H5I_INVALID_HID;
    tomo_h5_lock();
    int rc = tomo_h5_open_file(path, &o.r->file, err);
    if (rc == 0 && tomo_h5_object_type(o.r->file, DX_DATA, NULL, 0) == H5O_TYPE_UNKNOWN) {
        char why[512];
        tomo_h5_object_type(o.r->file, DX_DATA, why, sizeof why);
        rc = tomo_error_set(
            err, TOMO_E_FORMAT,
            "%s: not a Data Exchange file (%s; the projections are expected in " DX_DATA ")", path,
            why);
    }
    if (rc == 0)
        rc = open_stacks(&o, err);
    if (rc == 0)
        rc = read_theta(&o, err);
    tomo_h5_unlock();
    if (rc == 0)
        rc = build_scan(&o, out, err);
    free(o.theta);
    tomo_h5_reader_free(o.r);
    return rc;
}
