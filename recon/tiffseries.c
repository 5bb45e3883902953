#include "tiffseries.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/hash.h"
#include "../common/io.h"
#include "tiffframe.h"

#define TS_PATH_MAX 4096
/* Files whose header is parsed at open even when their size looks right. */
#define TS_SAMPLE_STRIDE 100
/* Largest angles file read; far beyond any real list of angles. */
#define TS_MAX_ANGLES_BYTES ((size_t)64 << 20)
#define TS_MAX_ANGLES       (1 << 24)

enum { ROLE_PROJ = 0, ROLE_FLAT = 1, ROLE_DARK = 2 }; /* = tomo_frame_kind */

static const char *const role_name[3] = {"projection", "flat", "dark"};

/* ------------------------------------------------------------------------------------------ */
/* Angles file                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static int is_separator(char c)
{
    return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == ',' || c == ';';
}

typedef struct angle_list {
    double *v;
    int count;
    int cap;
} angle_list;

static int angle_push(angle_list *l, double v)
{
    if (l->count == l->cap) {
        if (l->cap >= TS_MAX_ANGLES)
            return -1;
        int cap = l->cap ? 2 * l->cap : 256;
        double *nv = realloc(l->v, (size_t)cap * sizeof *nv);
        if (!nv)
            return -1;
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->count++] = v;
    return 0;
}

static void show_token(const char *p, size_t n, char out[48])
{
    size_t k = 0;
    for (size_t i = 0; i < n && k < 40; i++) {
        unsigned char c = (unsigned char)p[i];
        out[k++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n > 40) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
}

/* Parses one token as a finite number; 0 or -1. */
static int parse_number(const char *p, size_t n, double *out)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    char *end;
    double v = strtod(buf, &end);
    if (end == buf || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int tomo_angles_parse(const char *path, const char *text, size_t len, double **values, int *count,
                      tomo_error *err)
{
    *values = NULL;
    *count = 0;
    angle_list l = {0};
    const char *p = text, *end = text + len;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    int line = 1, rc = 0;
    while (p < end && rc == 0) {
        char c = *p;
        if (c == '\n' || c == '\r') {
            /* CRLF counts once */
            if (c == '\r' && p + 1 < end && p[1] == '\n')
                p++;
            line++;
            p++;
            continue;
        }
        if (is_separator(c)) {
            p++;
            continue;
        }
        if (c == '#') {
            while (p < end && *p != '\n' && *p != '\r')
                p++;
            continue;
        }
        const char *start = p;
        while (p < end && !is_separator(*p) && *p != '\n' && *p != '\r' && *p != '#')
            p++;
        double v;
        if (parse_number(start, (size_t)(p - start), &v) < 0) {
            char shown[48];
            show_token(start, (size_t)(p - start), shown);
            rc = tomo_error_set(err, TOMO_E_FORMAT,
                                "%s:%d: '%s' is not an angle (expected finite numbers)", path, line,
                                shown);
        } else if (angle_push(&l, v) < 0) {
            rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: more than %d angles, or out of memory",
                                path, TS_MAX_ANGLES);
        }
    }
    if (rc == 0 && l.count == 0)
        rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: no angles in the file", path);
    if (rc < 0) {
        free(l.v);
        return rc;
    }
    *values = l.v;
    *count = l.count;
    return 0;
}

int tomo_angles_select(const char *path, int count, int n_proj, int *first, tomo_error *err)
{
    *first = 0;
    if (count == n_proj)
        return 0;
    if (count > n_proj && (count - n_proj) % 2 == 0) {
        *first = (count - n_proj) / 2;
        return 0;
    }
    return tomo_error_set(err, TOMO_E_FORMAT,
                          "%s: %d angles for %d projections: expected %d, or %d plus as many "
                          "extra entries before the projections' as after them",
                          path, count, n_proj, n_proj, n_proj);
}

/* ------------------------------------------------------------------------------------------ */
/* Directory                                                                                   */
/* ------------------------------------------------------------------------------------------ */

static int ends_with_ci(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

static size_t tiff_extension(const char *name)
{
    size_t n = strlen(name);
    if (ends_with_ci(name, n, ".tiff"))
        return 5;
    return ends_with_ci(name, n, ".tif") ? 4 : 0;
}

static int is_angles_name(const char *name)
{
    size_t n = strlen(name);
    if (ends_with_ci(name, n, ".tlt"))
        return 1;
    return strncasecmp(name, "angle", 5) == 0 &&
           (ends_with_ci(name, n, ".txt") || ends_with_ci(name, n, ".dat") ||
            ends_with_ci(name, n, ".csv"));
}

static int role_of(const char *name)
{
    if (strncasecmp(name, "flat", 4) == 0 || strncasecmp(name, "white", 5) == 0)
        return ROLE_FLAT;
    if (strncasecmp(name, "dark", 4) == 0)
        return ROLE_DARK;
    return ROLE_PROJ;
}

typedef struct ts_file {
    char *name;
    char *pattern; /* the name with its number replaced by '#' */
    long long number;
    int has_number;
    int64_t size;
    struct timespec mtime;
} ts_file;

/* The last run of digits before the extension gives the number; the rest is the pattern. */
static int split_name(ts_file *f, size_t ext)
{
    size_t n = strlen(f->name) - ext;
    size_t end = n;
    while (end > 0 && !isdigit((unsigned char)f->name[end - 1]))
        end--;
    size_t start = end;
    while (start > 0 && isdigit((unsigned char)f->name[start - 1]))
        start--;
    f->has_number = end > start && end - start <= 15;
    f->number = 0;
    for (size_t i = start; f->has_number && i < end; i++)
        f->number = f->number * 10 + (f->name[i] - '0');
    size_t len = strlen(f->name);
    f->pattern = malloc(len + 2);
    if (!f->pattern)
        return -1;
    if (f->has_number) {
        memcpy(f->pattern, f->name, start);
        f->pattern[start] = '#';
        memcpy(f->pattern + start + 1, f->name + end, len - end + 1);
    } else {
        memcpy(f->pattern, f->name, len + 1);
    }
    return 0;
}

typedef struct ts_list {
    ts_file *items;
    int count;
    int cap;
} ts_list;

static void ts_list_free(ts_list *l)
{
    for (int i = 0; i < l->count; i++) {
        free(l->items[i].name);
        free(l->items[i].pattern);
    }
    free(l->items);
    *l = (ts_list){0};
}

static int ts_list_push(ts_list *l, const char *name, size_t ext, const struct stat *st)
{
    if (l->count == l->cap) {
        if (l->cap > INT_MAX / 4)
            return -1;
        int cap = l->cap ? 2 * l->cap : 256;
        ts_file *ni = realloc(l->items, (size_t)cap * sizeof *ni);
        if (!ni)
            return -1;
        l->items = ni;
        l->cap = cap;
    }
    ts_file *f = &l->items[l->count];
    memset(f, 0, sizeof *f);
    f->name = strdup(name);
    if (!f->name || split_name(f, ext) < 0) {
        free(f->name);
        free(f->pattern);
        return -1;
    }
    f->size = (int64_t)st->st_size;
    f->mtime = st->st_mtim;
    l->count++;
    return 0;
}

static int compare_files(const void *a, const void *b)
{
    const ts_file *x = a, *y = b;
    if (x->has_number != y->has_number)
        return x->has_number ? -1 : 1;
    if (x->number != y->number)
        return x->number < y->number ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct ts_listing {
    ts_list role[3];
    char angles[256];
    struct stat angles_st;
    int n_angles_files;
    char second_angles[256];
} ts_listing;

static void listing_free(ts_listing *l)
{
    for (int r = 0; r < 3; r++)
        ts_list_free(&l->role[r]);
}

static int list_dir(const char *dir, ts_listing *l, tomo_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open directory: %s", dir,
                              strerror(errno));
    int rc = 0;
    struct dirent *de;
    errno = 0;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        struct stat st;
        if (name[0] == '.' || strlen(name) >= 256 || fstatat(dirfd(d), name, &st, 0) < 0 ||
            !S_ISREG(st.st_mode)) {
            errno = 0;
            continue;
        }
        size_t ext = tiff_extension(name);
        if (ext) {
            if (ts_list_push(&l->role[role_of(name)], name, ext, &st) < 0)
                rc = tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory listing files", dir);
        } else if (is_angles_name(name)) {
            if (l->n_angles_files++ == 0) {
                snprintf(l->angles, sizeof l->angles, "%s", name);
                l->angles_st = st;
            } else {
                snprintf(l->second_angles, sizeof l->second_angles, "%s", name);
            }
        }
        errno = 0;
    }
    if (rc == 0 && errno != 0)
        rc = tomo_error_set(err, TOMO_E_IO, "%s: cannot list: %s", dir, strerror(errno));
    closedir(d);
    for (int r = 0; r < 3; r++) {
        if (l->role[r].count > 1)
            qsort(l->role[r].items, (size_t)l->role[r].count, sizeof(ts_file), compare_files);
    }
    return rc;
}

int tomo_tiffseries_detect(const char *dir)
{
    ts_listing l;
    memset(&l, 0, sizeof l);
    tomo_error err;
    tomo_error_clear(&err);
    int found = 0;
    if (list_dir(dir, &l, &err) == 0) {
        int tiffs = l.role[ROLE_PROJ].count + l.role[ROLE_FLAT].count + l.role[ROLE_DARK].count;
        found = tiffs > 0 && (l.n_angles_files > 0 || l.role[ROLE_FLAT].count > 0 ||
                              l.role[ROLE_DARK].count > 0);
    }
    listing_free(&l);
    return found;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct ts_reader {
    int width;
    int height;
    char **path[3]; /* per kind, in the scan's (sorted) order */
    int count[3];
} ts_reader;

static void ts_close(void *reader)
{
    ts_reader *r = reader;
    if (!r)
        return;
    for (int k = 0; k < 3; k++) {
        for (int i = 0; r->path[k] && i < r->count[k]; i++)
            free(r->path[k][i]);
        free(r->path[k]);
    }
    free(r);
}

static int ts_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                        tomo_error *err)
{
    const ts_reader *r = reader;
    if ((int)kind < 0 || (int)kind > 2 || index < 0 || index >= r->count[kind])
        return tomo_error_set(err, TOMO_E_INTERNAL, "tiff series: no frame %d of kind %d", index,
                              (int)kind);
    const char *path = r->path[kind][index];
    TIFF *tif;
    int rc = tomo_tiff_open(path, &tif, err);
    if (rc < 0)
        return rc;
    tomo_tiff_frame f;
    rc = tomo_tiff_frame_inspect(tif, path, &f, err);
    if (rc == 0 && (f.width != r->width || f.height != r->height))
        rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: is %dx%d, expected %dx%d", path, f.width,
                            f.height, r->width, r->height);
    if (rc == 0)
        rc = tomo_tiff_frame_read(tif, path, &f, z0, nz, dst, err);
    TIFFClose(tif);
    return rc;
}

static const tomo_scan_reader_ops ts_ops = {ts_read_rows, ts_close};

/* ------------------------------------------------------------------------------------------ */
/* Opening                                                                                     */
/* ------------------------------------------------------------------------------------------ */

typedef struct ts_open {
    char dir[TS_PATH_MAX];
    ts_listing l;
    char *angles_text;
    size_t angles_len;
    double *angles;
    int n_angles;
    int first_angle;
    char angle_how[256];
    int width, height;
    tomo_tiff_frame first[3]; /* the first frame of each role, for reports */
} ts_open;

static int set_dir(ts_open *o, const char *dir, tomo_error *err)
{
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/')
        n--;
    if (n == 0 || n >= TS_PATH_MAX - 300)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path empty or too long", dir);
    memcpy(o->dir, dir, n);
    o->dir[n] = '\0';
    return 0;
}

/* dir is at most TS_PATH_MAX - 300 bytes and names at most 255, so the path always fits. */
static void file_path(const ts_open *o, const char *name, char out[TS_PATH_MAX])
{
    tomo_scan_text(out, TS_PATH_MAX, "%s/%s", o->dir, name);
}

static int check_listing(ts_open *o, tomo_error *err)
{
    const ts_list *proj = &o->l.role[ROLE_PROJ];
    if (proj->count == 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no projection TIFFs (every *.tif other than flat*, white* and "
                              "dark* is a projection)",
                              o->dir);
    for (int i = 0; i < proj->count; i++) {
        const ts_file *f = &proj->items[i];
        if (!f->has_number)
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: projection %s has no number in its name (projections are "
                                  "ordered by the number before the extension)",
                                  o->dir, f->name);
        if (strcmp(f->pattern, proj->items[0].pattern) != 0)
            return tomo_error_set(err, TOMO_E_FORMAT,
                                  "%s: %s and %s are not of one series (one projection series per "
                                  "directory)",
                                  o->dir, proj->items[0].name, f->name);
        if (i > 0 && f->number == proj->items[i - 1].number)
            return tomo_error_set(err, TOMO_E_FORMAT, "%s: %s and %s both have number %lld", o->dir,
                                  proj->items[i - 1].name, f->name, f->number);
    }
    if (o->l.role[ROLE_FLAT].count == 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no flat field (a TIFF named flat* or white*), which is needed "
                              "to normalise the projections",
                              o->dir);
    if (o->l.n_angles_files == 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: no angles file (angles.txt, angles.dat, angles.csv or *.tlt): "
                              "the projection angles are unknown",
                              o->dir);
    if (o->l.n_angles_files > 1)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: two angles files, %s and %s: keep one",
                              o->dir, o->l.angles, o->l.second_angles);
    return 0;
}

static int read_angles(ts_open *o, tomo_error *err)
{
    char path[TS_PATH_MAX];
    file_path(o, o->l.angles, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) < 0 || (size_t)st.st_size > TS_MAX_ANGLES_BYTES) {
        rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: unreadable, or too large for an angles file",
                            path);
        goto out;
    }
    o->angles_text = malloc((size_t)st.st_size + 1);
    if (!o->angles_text) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
        goto out;
    }
    ssize_t got = tomo_pread_full(fd, o->angles_text, (size_t)st.st_size, 0);
    if (got < 0) {
        rc = tomo_error_set(err, TOMO_E_IO, "%s: read failed: %s", path, strerror(errno));
        goto out;
    }
    o->angles_len = (size_t)got;
    rc = tomo_angles_parse(path, o->angles_text, o->angles_len, &o->angles, &o->n_angles, err);
    if (rc == 0)
        rc =
            tomo_angles_select(path, o->n_angles, o->l.role[ROLE_PROJ].count, &o->first_angle, err);
out:
    close(fd);
    return rc;
}

static int is_sampled(int i, int n)
{
    return i % TS_SAMPLE_STRIDE == 0 || i == n - 1;
}

/* Inspects one file; the first one of all sets the detector size. */
static int inspect_file(ts_open *o, int role, int i, tomo_error *err)
{
    const ts_file *f = &o->l.role[role].items[i];
    char path[TS_PATH_MAX];
    file_path(o, f->name, path);
    if (f->size == 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: empty file", path);
    TIFF *tif;
    int rc = tomo_tiff_open(path, &tif, err);
    if (rc < 0)
        return rc;
    tomo_tiff_frame fr;
    rc = tomo_tiff_frame_inspect(tif, path, &fr, err);
    TIFFClose(tif);
    if (rc < 0)
        return rc;
    if (o->width == 0) {
        o->width = fr.width;
        o->height = fr.height;
    } else if (fr.width != o->width || fr.height != o->height) {
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: is %dx%d, expected %dx%d like %s", path,
                              fr.width, fr.height, o->width, o->height,
                              o->l.role[ROLE_PROJ].items[0].name);
    }
    if (i == 0)
        o->first[role] = fr;
    return 0;
}

/*
 * Files written alike have one size; the first, the last, every 100th and any of another size
 * are parsed at open, the rest when read.
 */
static int inspect_frames(ts_open *o, tomo_error *err)
{
    for (int role = 0; role < 3; role++) {
        const ts_list *l = &o->l.role[role];
        for (int i = 0; i < l->count; i++) {
            if (!is_sampled(i, l->count) && l->items[i].size == l->items[0].size &&
                l->items[i].size > 0)
                continue;
            int rc = inspect_file(o, role, i, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

static uint64_t fingerprint(const ts_open *o, int64_t *mtime)
{
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, "tiff-series", 11);
    h = tomo_hash_bytes(h, o->angles_text, o->angles_len);
    *mtime = (int64_t)o->l.angles_st.st_mtim.tv_sec;
    for (int role = 0; role < 3; role++) {
        const ts_list *l = &o->l.role[role];
        for (int i = 0; i < l->count; i++) {
            const ts_file *f = &l->items[i];
            h = tomo_hash_bytes(h, f->name, strlen(f->name) + 1);
            h = tomo_hash_u64(h, (uint64_t)f->size);
            h = tomo_hash_u64(h, (uint64_t)f->mtime.tv_sec);
            h = tomo_hash_u64(h, (uint64_t)f->mtime.tv_nsec);
            if ((int64_t)f->mtime.tv_sec > *mtime)
                *mtime = (int64_t)f->mtime.tv_sec;
        }
    }
    return h;
}

static void describe(const ts_open *o, tomo_scan *scan)
{
    for (int role = 0; role < 3; role++) {
        const ts_list *l = &o->l.role[role];
        char type[96];
        if (l->count == 0) {
            if (role == ROLE_DARK)
                tomo_scan_add_source(scan, "no dark*.tif (dark taken as 0)");
            continue;
        }
        tomo_tiff_frame_describe(&o->first[role], type, sizeof type);
        if (l->count == 1)
            tomo_scan_add_source(scan, "%s: %s %s", l->items[0].name, role_name[role], type);
        else
            tomo_scan_add_source(scan, "%s ... %s: %d %ss, %s", l->items[0].name,
                                 l->items[l->count - 1].name, l->count, role_name[role], type);
    }
    tomo_scan_add_source(scan, "flats: one group (no acquisition times in a TIFF series)");
    int n_proj = o->l.role[ROLE_PROJ].count;
    if (o->n_angles == n_proj)
        tomo_scan_text(scan->angle_source, sizeof scan->angle_source,
                       "%s: %d values, one per projection; %s", o->l.angles, o->n_angles,
                       o->angle_how);
    else
        tomo_scan_text(scan->angle_source, sizeof scan->angle_source,
                       "%s: %d values for %d projections, entries %d-%d used (%d dropped at each "
                       "end); %s",
                       o->l.angles, o->n_angles, n_proj, o->first_angle + 1,
                       o->first_angle + n_proj, o->first_angle, o->angle_how);
    tomo_scan_text(scan->time_basis, sizeof scan->time_basis, "none");
}

static int make_reader(const ts_open *o, const tomo_scan *scan, ts_reader **out, tomo_error *err)
{
    ts_reader *r = calloc(1, sizeof *r);
    if (!r)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    r->width = o->width;
    r->height = o->height;
    for (int k = 0; k < 3; k++) {
        const ts_list *l = &o->l.role[k];
        r->path[k] = calloc(l->count > 0 ? (size_t)l->count : 1, sizeof(char *));
        if (!r->path[k]) {
            ts_close(r);
            return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
        }
        r->count[k] = l->count;
        for (int i = 0; i < l->count; i++) {
            /* Projections are in the scan's order (sorted by angle), the others in listing order,
             * which is also theirs. */
            int src = i;
            if (k == ROLE_PROJ)
                src = scan->proj_frame[i];
            char path[TS_PATH_MAX];
            file_path(o, l->items[src].name, path);
            r->path[k][i] = strdup(path);
            if (!r->path[k][i]) {
                ts_close(r);
                return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
            }
        }
    }
    *out = r;
    return 0;
}

static int build_scan(ts_open *o, tomo_scan **out, tomo_error *err)
{
    const ts_list *proj = &o->l.role[ROLE_PROJ], *flat = &o->l.role[ROLE_FLAT],
                  *dark = &o->l.role[ROLE_DARK];
    tomo_scan *scan = tomo_scan_alloc(proj->count, flat->count);
    int *flat_run = calloc((size_t)flat->count, sizeof *flat_run);
    if (scan)
        scan->dark_frame = calloc(dark->count > 0 ? (size_t)dark->count : 1, sizeof(int));
    if (!scan || !flat_run || !scan->dark_frame) {
        free(flat_run);
        tomo_scan_close(scan);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", o->dir);
    }
    snprintf(scan->path, sizeof scan->path, "%s", o->dir);
    snprintf(scan->format, sizeof scan->format, "tiff-series");
    scan->width = o->width;
    scan->rows = o->height;
    scan->n_dark = dark->count;
    double *a = o->angles + o->first_angle;
    tomo_angles_to_degrees(a, proj->count, NULL, o->angle_how, sizeof o->angle_how);
    /* proj_frame holds the position in the listing until the reader is made, then the number
     * in the file name. */
    for (int m = 0; m < proj->count; m++) {
        scan->proj_angle_deg[m] = a[m];
        scan->proj_time[m] = m;
        scan->proj_frame[m] = m;
    }
    for (int f = 0; f < flat->count; f++)
        scan->flat_frame[f] = (int)(flat->items[f].number & INT_MAX);
    for (int d = 0; d < dark->count; d++)
        scan->dark_frame[d] = (int)(dark->items[d].number & INT_MAX);
    tomo_scan_sort_frames(scan, flat_run);
    free(flat_run);
    ts_reader *r;
    int rc = make_reader(o, scan, &r, err);
    if (rc < 0) {
        tomo_scan_close(scan);
        return rc;
    }
    for (int m = 0; m < proj->count; m++)
        scan->proj_frame[m] = (int)(proj->items[scan->proj_frame[m]].number & INT_MAX);
    describe(o, scan);
    scan->fingerprint = fingerprint(o, &scan->mtime);
    scan->ops = &ts_ops;
    scan->reader = r;
    *out = scan;
    return 0;
}

int tomo_tiffseries_open(const char *dir, tomo_scan **out, tomo_error *err)
{
    *out = NULL;
    ts_open *o = calloc(1, sizeof *o);
    if (!o)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", dir);
    int rc = set_dir(o, dir, err);
    if (rc == 0) {
        struct stat st;
        if (stat(o->dir, &st) < 0)
            rc = tomo_error_set(err, TOMO_E_IO, "%s: %s", o->dir, strerror(errno));
        else if (!S_ISDIR(st.st_mode))
            rc = tomo_error_set(err, TOMO_E_FORMAT, "%s: a TIFF series is a directory", o->dir);
    }
    if (rc == 0)
        rc = list_dir(o->dir, &o->l, err);
    if (rc == 0)
        rc = check_listing(o, err);
    if (rc == 0)
        rc = read_angles(o, err);
    if (rc == 0)
        rc = inspect_frames(o, err);
    if (rc == 0)
        rc = build_scan(o, out, err);
    listing_free(&o->l);
    free(o->angles_text);
    free(o->angles);
    free(o);
    return rc;
}
