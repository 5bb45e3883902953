#include "nxtomo.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/hash.h"
#include "h5io.h"

/* Bounds on what a search looks at, so a damaged or hostile file cannot make it run long. */
#define NX_MAX_MEMBERS 4096
#define NX_MAX_ENTRIES 32
#define NX_NAME_MAX    256
#define NX_PATH_MAX    512

#define KEY_PROJECTION 0
#define KEY_FLAT       1
#define KEY_DARK       2
#define KEY_INVALID    3

typedef struct nx_list {
    char (*name)[NX_NAME_MAX];
    int count;
    int cap;
} nx_list;

typedef struct nx_open {
    const char *path;
    tomo_h5_reader *r;
    char data_path[NX_PATH_MAX];
    char key_path[NX_PATH_MAX];
    char angle_path[NX_PATH_MAX];
    double *key;
    int n_key;
    double *angle;
    int n_angle;
    char angle_how[256];
    char problem[1536]; /* what looked right but was not, for the final message */
    int n_problems;
} nx_open;

/* ------------------------------------------------------------------------------------------ */
/* Walking groups                                                                              */
/* ------------------------------------------------------------------------------------------ */

static void list_free(nx_list *l)
{
    free(l->name);
    *l = (nx_list){0};
}

static herr_t collect_name(hid_t group, const char *name, const H5L_info_t *info, void *data)
{
    (void)group;
    (void)info;
    nx_list *l = data;
    if (l->count >= NX_MAX_MEMBERS)
        return 1;
    size_t n = strlen(name);
    if (n == 0 || n >= NX_NAME_MAX)
        return 0;
    if (l->count == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        void *p = realloc(l->name, (size_t)cap * sizeof *l->name);
        if (!p)
            return -1;
        l->name = p;
        l->cap = cap;
    }
    memcpy(l->name[l->count++], name, n + 1);
    return 0;
}

/* The members of a group, in name order; empty when it is not a group that opens. */
static void list_members(hid_t file, const char *group, nx_list *out)
{
    *out = (nx_list){0};
    if (tomo_h5_object_type(file, group, NULL, 0) != H5O_TYPE_GROUP)
        return;
    hid_t g = H5Gopen2(file, group, H5P_DEFAULT);
    if (g < 0) {
        H5Eclear2(H5E_DEFAULT);
        return;
    }
    hsize_t idx = 0;
    if (H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_name, out) < 0)
        H5Eclear2(H5E_DEFAULT);
    H5Gclose(g);
}

/* parent/name, or "" (which names nothing) when it does not fit: a cut path could name
 * another object. */
static void join(char out[NX_PATH_MAX], const char *parent, const char *name)
{
    int n = snprintf(out, NX_PATH_MAX, "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, name);
    if (n < 0 || n >= NX_PATH_MAX)
        out[0] = '\0';
}

/* Reads a string attribute of the object at `path`; 1 when found. */
static int path_attr(hid_t file, const char *path, const char *attr, char *buf, size_t size)
{
    buf[0] = '\0';
    if (tomo_h5_object_type(file, path, NULL, 0) == H5O_TYPE_UNKNOWN)
        return 0;
    hid_t obj = H5Oopen(file, path, H5P_DEFAULT);
    if (obj < 0) {
        H5Eclear2(H5E_DEFAULT);
        return 0;
    }
    int ok = tomo_h5_string_attr(obj, attr, buf, size);
    H5Oclose(obj);
    return ok;
}

static int is_group_of_class(hid_t file, const char *path, const char *nx_class)
{
    char cls[64];
    return tomo_h5_object_type(file, path, NULL, 0) == H5O_TYPE_GROUP &&
           path_attr(file, path, "NX_class", cls, sizeof cls) && strcmp(cls, nx_class) == 0;
}

static int is_dataset(hid_t file, const char *path)
{
    return tomo_h5_object_type(file, path, NULL, 0) == H5O_TYPE_DATASET;
}

/* True when the datasets at a and b are one object (b reached through other links). */
static int same_dataset(hid_t file, const char *a, const char *b)
{
    if (!is_dataset(file, a) || !is_dataset(file, b))
        return 0;
    hid_t da = H5Dopen2(file, a, H5P_DEFAULT), db = H5Dopen2(file, b, H5P_DEFAULT);
    int same = da >= 0 && db >= 0 && tomo_h5_same_object(da, db);
    if (da >= 0)
        H5Dclose(da);
    if (db >= 0)
        H5Dclose(db);
    H5Eclear2(H5E_DEFAULT);
    return same;
}

/* Remembers what looked right but was not (up to three things), for the final message. */
static void note_problem(nx_open *o, const char *msg)
{
    if (o->n_problems >= 3 || strstr(o->problem, msg))
        return;
    size_t used = strlen(o->problem);
    tomo_scan_text(o->problem + used, sizeof o->problem - used, "%s%s", used ? "; " : "", msg);
    o->n_problems++;
}

/* ------------------------------------------------------------------------------------------ */
/* Entries and the frames                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct nx_entries {
    char path[NX_MAX_ENTRIES][NX_PATH_MAX];
    int count;
    int nexus; /* 1 when they are NXentry groups, 0 when plain top-level groups */
} nx_entries;

static void add_entry(nx_entries *e, const char *path)
{
    if (e->count < NX_MAX_ENTRIES)
        snprintf(e->path[e->count++], NX_PATH_MAX, "%s", path);
}

/* NXentry groups and their NXsubentry groups; those defined as NXtomo first. */
static void find_entries(hid_t file, nx_entries *out)
{
    nx_entries all = {.count = 0, .nexus = 0};
    nx_list root;
    list_members(file, "/", &root);
    for (int i = 0; i < root.count; i++) {
        char p[NX_PATH_MAX];
        join(p, "/", root.name[i]);
        if (!is_group_of_class(file, p, "NXentry"))
            continue;
        add_entry(&all, p);
        all.nexus = 1;
        nx_list sub;
        list_members(file, p, &sub);
        for (int j = 0; j < sub.count; j++) {
            char q[NX_PATH_MAX];
            join(q, p, sub.name[j]);
            if (is_group_of_class(file, q, "NXsubentry"))
                add_entry(&all, q);
        }
        list_free(&sub);
    }
    /* Files written without NeXus classes: every top-level group is a candidate. */
    if (all.count == 0) {
        for (int i = 0; i < root.count; i++) {
            char p[NX_PATH_MAX];
            join(p, "/", root.name[i]);
            if (tomo_h5_object_type(file, p, NULL, 0) == H5O_TYPE_GROUP)
                add_entry(&all, p);
        }
    }
    list_free(&root);
    out->count = 0;
    out->nexus = all.nexus;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < all.count; i++) {
            char def[64], p[NX_PATH_MAX];
            join(p, all.path[i], "definition");
            int tomo =
                tomo_h5_string_dataset(file, p, def, sizeof def) && strcasecmp(def, "NXtomo") == 0;
            if (tomo == (pass == 0))
                add_entry(out, all.path[i]);
        }
    }
}

typedef struct nx_groups {
    char path[32][NX_PATH_MAX];
    int count;
} nx_groups;

static void add_group(nx_groups *g, const char *path)
{
    for (int i = 0; i < g->count; i++) {
        if (strcmp(g->path[i], path) == 0)
            return;
    }
    if (g->count < 32)
        snprintf(g->path[g->count++], NX_PATH_MAX, "%s", path);
}

/* Members of `parent` that are groups of class `nx_class`, in name order. */
static void add_groups_of_class(hid_t file, const char *parent, const char *nx_class, nx_groups *g)
{
    nx_list l;
    list_members(file, parent, &l);
    for (int i = 0; i < l.count; i++) {
        char p[NX_PATH_MAX];
        join(p, parent, l.name[i]);
        if (is_group_of_class(file, p, nx_class))
            add_group(g, p);
    }
    list_free(&l);
}

/* The dataset an NXdata group shows: its `signal` attribute, else "data". */
static void signal_path(hid_t file, const char *group, char out[NX_PATH_MAX])
{
    char sig[NX_NAME_MAX];
    if (!path_attr(file, group, "signal", sig, sizeof sig) || !sig[0] || strchr(sig, '/'))
        snprintf(sig, sizeof sig, "data");
    join(out, group, sig);
}

/* Reads a rank-1 per-frame dataset; 1 when it has one value per frame. */
static int per_frame_vector(nx_open *o, const char *path, double **v, int *n)
{
    tomo_h5_reader *r = o->r;
    if (!is_dataset(r->file, path))
        return 0;
    tomo_error e;
    tomo_error_clear(&e);
    if (tomo_h5_read_vector(r->file, o->path, path, v, n, &e) < 0) {
        note_problem(o, e.message);
        return 0;
    }
    if (*n != r->stack[0].frames) {
        char msg[NX_PATH_MAX + 128];
        snprintf(msg, sizeof msg, "%s holds %d values for %d frames", path, *n, r->stack[0].frames);
        note_problem(o, msg);
        free(*v);
        *v = NULL;
        return 0;
    }
    return 1;
}

static int find_image_key(nx_open *o, const char *entry, const char *group)
{
    hid_t file = o->r->file;
    nx_groups places = {.count = 0};
    char p[NX_PATH_MAX], inst[NX_PATH_MAX];
    add_group(&places, group);
    join(inst, entry, "instrument");
    join(p, inst, "detector");
    add_group(&places, p);
    nx_groups dets = {.count = 0};
    add_groups_of_class(file, inst, "NXdetector", &dets);
    for (int i = 0; i < dets.count; i++) {
        char d[NX_PATH_MAX];
        join(d, dets.path[i], "data");
        if (same_dataset(file, o->data_path, d))
            add_group(&places, dets.path[i]);
    }
    join(p, entry, "data");
    add_group(&places, p);
    for (int i = 0; i < places.count; i++) {
        char k[NX_PATH_MAX];
        join(k, places.path[i], "image_key");
        if (per_frame_vector(o, k, &o->key, &o->n_key)) {
            snprintf(o->key_path, sizeof o->key_path, "%s", k);
            return 1;
        }
    }
    return 0;
}

/* Tries one group as the holder of the frames; 1 when its frames and image_key are found. */
static int try_frames(nx_open *o, const char *entry, const char *group, const char *data)
{
    tomo_h5_reader *r = o->r;
    char why[768];
    H5O_type_t t = tomo_h5_object_type(r->file, data, why, sizeof why);
    if (t != H5O_TYPE_DATASET) {
        /* A missing dataset is just not this group; a link that dangles is worth telling. */
        if (t == H5O_TYPE_UNKNOWN && strncmp(why, "no ", 3) != 0)
            note_problem(o, why);
        return 0;
    }
    tomo_error e;
    tomo_error_clear(&e);
    if (tomo_h5_stack_open(r->file, o->path, data, &r->stack[0], &e) < 0) {
        note_problem(o, e.message);
        return 0;
    }
    snprintf(o->data_path, sizeof o->data_path, "%s", data);
    if (find_image_key(o, entry, group)) {
        r->n_stacks = 1;
        return 1;
    }
    char msg[NX_PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s has no image_key with one value per frame beside it", data);
    note_problem(o, msg);
    tomo_h5_stack_close(&r->stack[0]);
    return 0;
}

static int find_frames_in_entry(nx_open *o, const char *entry)
{
    hid_t file = o->r->file;
    nx_groups dets = {.count = 0}, datas = {.count = 0};
    char inst[NX_PATH_MAX], p[NX_PATH_MAX];
    join(inst, entry, "instrument");
    join(p, inst, "detector");
    if (tomo_h5_object_type(file, p, NULL, 0) == H5O_TYPE_GROUP)
        add_group(&dets, p);
    add_groups_of_class(file, inst, "NXdetector", &dets);
    for (int i = 0; i < dets.count; i++) {
        char d[NX_PATH_MAX];
        join(d, dets.path[i], "data");
        if (try_frames(o, entry, dets.path[i], d))
            return 1;
    }
    join(p, entry, "data");
    if (tomo_h5_object_type(file, p, NULL, 0) == H5O_TYPE_GROUP)
        add_group(&datas, p);
    add_groups_of_class(file, entry, "NXdata", &datas);
    for (int i = 0; i < datas.count; i++) {
        char d[NX_PATH_MAX];
        signal_path(file, datas.path[i], d);
        if (try_frames(o, entry, datas.path[i], d))
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Angles                                                                                      */
/* ------------------------------------------------------------------------------------------ */

static int try_angles(nx_open *o, const char *path)
{
    if (!per_frame_vector(o, path, &o->angle, &o->n_angle))
        return 0;
    snprintf(o->angle_path, sizeof o->angle_path, "%s", path);
    return 1;
}

static int names_an_angle(const char *name)
{
    char low[NX_NAME_MAX];
    size_t n = strlen(name);
    for (size_t i = 0; i <= n && i < sizeof low; i++)
        low[i] = (char)tolower((unsigned char)name[i]);
    low[sizeof low - 1] = '\0';
    return strstr(low, "theta") || strstr(low, "rotation") || strstr(low, "angle");
}

/* In an NXdata group showing the frames: rotation_angle, the first axis, angle-like names. */
static int angles_in_data_group(nx_open *o, const char *group)
{
    hid_t file = o->r->file;
    char p[NX_PATH_MAX], axes[NX_NAME_MAX];
    join(p, group, "rotation_angle");
    if (try_angles(o, p))
        return 1;
    if (path_attr(file, group, "axes", axes, sizeof axes) && axes[0] && strcmp(axes, ".") != 0 &&
        !strchr(axes, '/')) {
        join(p, group, axes);
        if (try_angles(o, p))
            return 1;
    }
    nx_list l;
    list_members(file, group, &l);
    int found = 0;
    for (int i = 0; i < l.count && !found; i++) {
        if (!names_an_angle(l.name[i]))
            continue;
        join(p, group, l.name[i]);
        found = try_angles(o, p);
    }
    list_free(&l);
    return found;
}

static int find_angles(nx_open *o, const char *entry, const char *frames_group)
{
    hid_t file = o->r->file;
    char p[NX_PATH_MAX], g[NX_PATH_MAX];
    join(g, entry, "sample");
    join(p, g, "rotation_angle");
    if (try_angles(o, p))
        return 1;
    join(p, frames_group, "rotation_angle");
    if (try_angles(o, p))
        return 1;
    join(g, entry, "data");
    join(p, g, "rotation_angle");
    if (try_angles(o, p))
        return 1;
    nx_groups datas = {.count = 0};
    add_groups_of_class(file, entry, "NXdata", &datas);
    for (int i = 0; i < datas.count; i++) {
        char sig[NX_PATH_MAX];
        signal_path(file, datas.path[i], sig);
        if (same_dataset(file, o->data_path, sig) && angles_in_data_group(o, datas.path[i]))
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The scan                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct nx_counts {
    int proj, flat, dark, invalid;
} nx_counts;

static int check_keys(const nx_open *o, nx_counts *c, tomo_error *err)
{
    *c = (nx_counts){0, 0, 0, 0};
    for (int i = 0; i < o->n_key; i++) {
        double k = o->key[i];
        if (k == KEY_PROJECTION)
            c->proj++;
        else if (k == KEY_FLAT)
            c->flat++;
        else if (k == KEY_DARK)
            c->dark++;
        else if (k == KEY_INVALID)
            c->invalid++;
        else
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: %s[%d] is %g: expected 0 (projection), 1 (flat), 2 (dark) "
                                  "or 3 (invalid)",
                                  o->path, o->key_path, i, k);
    }
    if (c->proj == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s marks no frame as a projection (0)",
                              o->path, o->key_path);
    if (c->flat == 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: %s marks no frame as a flat field (1); flats are needed to "
                              "normalise the projections",
                              o->path, o->key_path);
    for (int i = 0; i < o->n_key; i++) {
        if (o->key[i] == KEY_PROJECTION && !isfinite(o->angle[i]))
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: %s[%d] is %g, not an angle (frame %d is a projection)",
                                  o->path, o->angle_path, i, o->angle[i], i);
    }
    return 0;
}

/* Converts the projection angles to degrees, deciding the unit from them alone. */
static int angles_to_degrees(nx_open *o, int n_proj, tomo_error *err)
{
    double *pa = malloc((size_t)n_proj * sizeof *pa);
    if (!pa)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->path);
    int m = 0;
    for (int i = 0; i < o->n_key; i++) {
        if (o->key[i] == KEY_PROJECTION)
            pa[m++] = o->angle[i];
    }
    char units[64] = "";
    hid_t d = H5Dopen2(o->r->file, o->angle_path, H5P_DEFAULT);
    if (d >= 0) {
        tomo_h5_string_attr(d, "units", units, sizeof units);
        H5Dclose(d);
    }
    H5Eclear2(H5E_DEFAULT);
    tomo_angles_to_degrees(pa, n_proj, units, o->angle_how, sizeof o->angle_how);
    m = 0;
    for (int i = 0; i < o->n_key; i++) {
        if (o->key[i] == KEY_PROJECTION)
            o->angle[i] = pa[m++];
    }
    free(pa);
    return 0;
}

static void fill_frames(const nx_open *o, tomo_scan *scan, int *flat_run)
{
    int m = 0, f = 0, d = 0, run = 0, seen_flat = 0, proj_since = 0;
    for (int i = 0; i < o->n_key; i++) {
        double k = o->key[i];
        if (k == KEY_PROJECTION) {
            scan->proj_angle_deg[m] = o->angle[i];
            scan->proj_time[m] = i;
            scan->proj_frame[m] = i;
            m++;
            proj_since = 1;
        } else if (k == KEY_FLAT) {
            /* A new run starts when a projection was taken since the previous flat. */
            if (seen_flat && proj_since)
                run++;
            scan->flat_time[f] = i;
            scan->flat_frame[f] = i;
            flat_run[f] = run;
            f++;
            seen_flat = 1;
            proj_since = 0;
        } else if (k == KEY_DARK) {
            scan->dark_frame[d++] = i;
        }
    }
}

static void describe(const nx_open *o, const nx_counts *c, tomo_scan *scan)
{
    const char *slash = strrchr(o->path, '/');
    char buf[600], runs[256];
    tomo_h5_stack_describe(&o->r->stack[0], buf, sizeof buf);
    tomo_scan_add_source(scan, "%s: %s", slash ? slash + 1 : o->path, buf);
    tomo_scan_add_source(scan, "image_key %s: %d projections", o->key_path, c->proj);
    tomo_frame_runs(scan->flat_frame, scan->n_flat, runs, sizeof runs);
    tomo_scan_add_source(scan, "%d flats in %d groups (frames %s)", c->flat, scan->n_flat_groups,
                         runs);
    if (c->dark) {
        tomo_frame_runs(scan->dark_frame, c->dark, runs, sizeof runs);
        tomo_scan_add_source(scan, "%d darks (frames %s)", c->dark, runs);
    } else {
        tomo_scan_add_source(scan, "no darks (dark taken as 0)");
    }
    if (c->invalid)
        tomo_scan_add_source(scan, "%d invalid frames (image_key 3) skipped", c->invalid);
    tomo_scan_text(scan->angle_source, sizeof scan->angle_source, "%s, %s", o->angle_path,
                   o->angle_how);
    tomo_scan_text(scan->time_basis, sizeof scan->time_basis, "frame index");
}

static uint64_t fingerprint(const nx_open *o, int64_t *mtime)
{
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, "nxtomo", 6);
    h = tomo_h5_hash_file(h, o->path, mtime);
    h = tomo_hash_bytes(h, o->data_path, strlen(o->data_path));
    if (strcmp(o->r->stack[0].file, o->path) != 0)
        h = tomo_h5_hash_file(h, o->r->stack[0].file, mtime);
    /* The angles may live in yet another file behind a link. */
    char file[4096];
    tomo_h5_lock();
    int known = tomo_h5_dataset_file(o->r->file, o->angle_path, file, sizeof file);
    tomo_h5_unlock();
    if (known && strcmp(file, o->path) != 0 && strcmp(file, o->r->stack[0].file) != 0)
        h = tomo_h5_hash_file(h, file, mtime);
    return h;
}

static int build_scan(nx_open *o, const nx_counts *c, tomo_scan **out, tomo_error *err)
{
    tomo_h5_reader *r = o->r;
    tomo_scan *scan = tomo_scan_alloc(c->proj, c->flat);
    int *flat_run = calloc((size_t)c->flat, sizeof *flat_run);
    if (scan)
        scan->dark_frame = calloc(c->dark > 0 ? (size_t)c->dark : 1, sizeof *scan->dark_frame);
    if (!scan || !flat_run || !scan->dark_frame) {
        free(flat_run);
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->path);
    }
    snprintf(scan->path, sizeof scan->path, "%s", o->path);
    snprintf(scan->format, sizeof scan->format, "nxtomo");
    scan->width = r->stack[0].width;
    scan->rows = r->stack[0].rows;
    scan->n_dark = c->dark;
    fill_frames(o, scan, flat_run);
    tomo_scan_sort_frames(scan, flat_run);
    free(flat_run);
    if (tomo_h5_reader_map(r, TOMO_FRAME_PROJECTION, c->proj) < 0 ||
        tomo_h5_reader_map(r, TOMO_FRAME_FLAT, c->flat) < 0 ||
        tomo_h5_reader_map(r, TOMO_FRAME_DARK, c->dark) < 0) {
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->path);
    }
    /* The maps start zeroed: every frame is in stack 0. */
    for (int m = 0; m < c->proj; m++)
        r->kind[TOMO_FRAME_PROJECTION].frame[m] = scan->proj_frame[m];
    for (int f = 0; f < c->flat; f++)
        r->kind[TOMO_FRAME_FLAT].frame[f] = scan->flat_frame[f];
    for (int d = 0; d < c->dark; d++)
        r->kind[TOMO_FRAME_DARK].frame[d] = scan->dark_frame[d];
    describe(o, c, scan);
    scan->fingerprint = fingerprint(o, &scan->mtime);
    scan->ops = &tomo_h5_reader_ops;
    scan->reader = r;
    o->r = NULL;
    *out = scan;
    return 0;
}

/* Finds frames, image_key and angles; runs with the lock held. */
static int search(nx_open *o, tomo_error *err)
{
    nx_entries entries;
    find_entries(o->r->file, &entries);
    for (int i = 0; i < entries.count; i++) {
        if (!find_frames_in_entry(o, entries.path[i]))
            continue;
        const char *group_end = strrchr(o->data_path, '/');
        char group[NX_PATH_MAX];
        snprintf(group, sizeof group, "%.*s", (int)(group_end - o->data_path), o->data_path);
        if (find_angles(o, entries.path[i], group))
            return 0;
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no rotation angles for %s (looked for %s/sample/rotation_angle, "
                              "rotation_angle beside the frames and in %s/data, and theta, "
                              "rotation or angle datasets in NXdata groups showing the frames)%s%s",
                              o->path, o->data_path, entries.path[i], entries.path[i],
                              o->problem[0] ? "; " : "", o->problem);
    }
    if (!entries.nexus)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: not a NeXus NXtomo file: no NXentry group, and no top-level "
                              "group holds frames with an image_key%s%s",
                              o->path, o->problem[0] ? "; " : "", o->problem);
    return tomo_error_set(err, TOMO_E_FORMAT,
                          "%s: no NXtomo frames found (looked in %d entries for instrument/"
                          "detector/data, NXdetector and NXdata groups with a rank-3 dataset "
                          "and an image_key)%s%s",
                          o->path, entries.count, o->problem[0] ? "; " : "", o->problem);
}

int tomo_nxtomo_open(const char *path, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    nx_open *o = calloc(1, sizeof *o);
    if (!o)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    o->path = path;
    o->r = calloc(1, sizeof *o->r);
    if (!o->r) {
        free(o);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    }
    o->r->file = H5I_INVALID_HID;
    nx_counts c;
    tomo_h5_lock();
    int rc = tomo_h5_open_file(path, &o->r->file, err);
    if (rc == 0)
        rc = search(o, err);
    if (rc == 0)
        rc = check_keys(o, &c, err);
    if (rc == 0)
        rc = angles_to_degrees(o, c.proj, err);
    tomo_h5_unlock();
    if (rc == 0)
        rc = build_scan(o, &c, out, err);
    tomo_h5_reader_free(o->r);
    free(o->key);
    free(o->angle);
    free(o);
    return rc;
}
