/*
 * tomofs phantom - writes a simulated SPring-8 scan of the analytic phantom (recon/phantom.h)
 * together with its exact slices, the reference of the accuracy tests.
 *
 * The simulated detector: a dark level with a fixed pattern, a smooth beam profile that
 * decays linearly over the scan (so that interpolating the flats linearly in time is exact in
 * expectation), optional per-column gain errors that flat-field correction cannot remove
 * (ring artefacts), and optional Poisson noise. One frame is in memory at a time; its rows are
 * computed in parallel, each from its own random stream, so the output does not depend on the
 * number of threads.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include "../common/error.h"
#include "../common/pool.h"
#include "../fs/tiff.h"
#include "../recon/phantom.h"
#include "../recon/spring8.h"
#include "cmd.h"
#include "progress.h"

static const char usage[] =
    "usage: tomofs phantom OUTDIR --width W --rows H --projections M [OPTIONS]\n"
    "\n"
    "Writes a simulated SPring-8 scan of an analytic phantom to OUTDIR: output.log, dark.img,\n"
    "q<frame>.img (K flats, M projections over 180 degrees, K flats), the exact slices as\n"
    "truth/slice_NNNNN.tif (float32, cm^-1) and the parameters in truth/phantom.txt.\n"
    "\n"
    "  --width W          detector columns (8 to 32767)\n"
    "  --rows H           detector rows, one slice each (1 to 65535)\n"
    "  --projections M    views at 180 m / M degrees, m = 0 .. M - 1\n"
    "  --pixel-um P       pixel size in micrometres (default 1)\n"
    "  --format img|tif   frame files: HiPic .img or 16-bit TIFF (default img)\n"
    "  --photons N        flat-field counts per pixel, with Poisson noise\n"
    "                     (default: 40000 and no noise)\n"
    "  --rings            give about 2 % of the columns a gain error of 1 to 5 %\n"
    "  --seed S           seed of the noise and of the ring columns (default 1)\n"
    "  --center C         rotation axis in detector columns (default (W - 1) / 2 + 1.25)\n"
    "  --flats K          flat frames before and after the projections (default 5)\n"
    "  --no-truth         do not write truth/slice_*.tif\n"
    "  --threads T        worker threads (default: all CPUs)\n"
    "  -h, --help         show this text\n";

#define PREFIX "tomofs phantom: "

/* OUTDIR is at most OUTDIR_MAX bytes (checked with the options), so every file name fits. */
enum { OUTDIR_MAX = 4096, PATH_SIZE = OUTDIR_MAX + 256 };

/* snprintf for texts whose length is bounded by construction. */
static void format_into(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void format_into(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

/* Counts of a noise-free flat at the centre of the beam, at the start of the scan. */
#define DEFAULT_FLAT_COUNTS 40000.0
/* Seconds between frames, as written to output.log. */
#define FRAME_TIME 0.05

typedef struct {
    const char *outdir;
    int width, rows, projections;
    double pixel_um;
    int tif;
    double photons; /* 0: noise-free */
    int rings;
    uint64_t seed;
    double center;
    int center_set;
    int flats;
    int truth;
    int threads;
} phantom_opts;

/* ---- option parsing ---- */

static int parse_int(const char *opt, const char *text, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < min || v > max) {
        fprintf(stderr, PREFIX "%s wants an integer from %ld to %ld, not '%s'\n", opt, min, max,
                text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_double(const char *opt, const char *text, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !(v >= min && v <= max)) {
        fprintf(stderr, PREFIX "%s wants a number from %g to %g, not '%s'\n", opt, min, max, text);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 to go on, 1 after --help, 2 on a usage error (message printed). */
static int parse_options(int argc, char **argv, phantom_opts *o)
{
    *o = (phantom_opts){.pixel_um = 1.0, .seed = 1, .flats = 5, .truth = 1};
    int have_width = 0, have_rows = 0, have_proj = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(usage, stdout);
            return 1;
        }
        if (arg[0] != '-' || arg[1] == '\0') {
            if (o->outdir) {
                fprintf(stderr, PREFIX "unexpected argument '%s'\n", arg);
                return 2;
            }
            o->outdir = arg;
            continue;
        }
        if (strcmp(arg, "--rings") == 0) {
            o->rings = 1;
            continue;
        }
        if (strcmp(arg, "--no-truth") == 0) {
            o->truth = 0;
            continue;
        }
        /* every other option takes a value, as "--opt value" or "--opt=value" */
        static const char *const with_value[] = {
            "--width",   "--rows", "--projections", "--pixel-um", "--format",
            "--photons", "--seed", "--center",      "--flats",    "--threads"};
        const char *name = NULL, *value = NULL;
        const char *eq = strchr(arg, '=');
        size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
        for (size_t k = 0; k < sizeof with_value / sizeof with_value[0]; k++)
            if (strlen(with_value[k]) == len && strncmp(arg, with_value[k], len) == 0)
                name = with_value[k];
        if (!name) {
            fprintf(stderr, PREFIX "unknown option '%s' (see tomofs phantom --help)\n", arg);
            return 2;
        }
        if (eq) {
            value = eq + 1;
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            fprintf(stderr, PREFIX "%s needs a value\n", name);
            return 2;
        }
        int bad = 0;
        if (strcmp(name, "--width") == 0) {
            bad = parse_int(name, value, 8, 32767, &o->width);
            have_width = 1;
        } else if (strcmp(name, "--rows") == 0) {
            bad = parse_int(name, value, 1, 65535, &o->rows);
            have_rows = 1;
        } else if (strcmp(name, "--projections") == 0) {
            bad = parse_int(name, value, 1, 1000000, &o->projections);
            have_proj = 1;
        } else if (strcmp(name, "--pixel-um") == 0) {
            bad = parse_double(name, value, 1e-6, 1e6, &o->pixel_um);
        } else if (strcmp(name, "--format") == 0) {
            if (strcmp(value, "img") == 0)
                o->tif = 0;
            else if (strcmp(value, "tif") == 0 || strcmp(value, "tiff") == 0)
                o->tif = 1;
            else {
                fprintf(stderr, PREFIX "--format is img or tif, not '%s'\n", value);
                bad = -1;
            }
        } else if (strcmp(name, "--photons") == 0) {
            /* the flats must stay below the 16-bit ceiling, noise included */
            bad = parse_double(name, value, 1, 60000, &o->photons);
        } else if (strcmp(name, "--seed") == 0) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(value, &end, 10);
            if (errno || end == value || *end || value[0] == '-') {
                fprintf(stderr, PREFIX "--seed wants a non-negative integer, not '%s'\n", value);
                bad = -1;
            }
            o->seed = (uint64_t)v;
        } else if (strcmp(name, "--center") == 0) {
            bad = parse_double(name, value, -1e9, 1e9, &o->center);
            o->center_set = 1;
        } else if (strcmp(name, "--flats") == 0) {
            bad = parse_int(name, value, 0, 100000, &o->flats);
        } else if (strcmp(name, "--threads") == 0) {
            bad = parse_int(name, value, 0, 4096, &o->threads);
        }
        if (bad)
            return 2;
    }
    if (!o->outdir || !have_width || !have_rows || !have_proj) {
        const char *missing = !o->outdir    ? "OUTDIR"
                              : !have_width ? "--width"
                              : !have_rows  ? "--rows"
                                            : "--projections";
        fprintf(stderr, PREFIX "%s is required (see tomofs phantom --help)\n", missing);
        return 2;
    }
    if (strlen(o->outdir) > OUTDIR_MAX) {
        fprintf(stderr, PREFIX "OUTDIR is longer than %d bytes\n", OUTDIR_MAX);
        return 2;
    }
    if (!o->center_set)
        o->center = (o->width - 1) / 2.0 + 1.25;
    if (fmin(o->center, o->width - 1 - o->center) < 4) {
        fprintf(stderr,
                PREFIX "--center %g leaves no room for the phantom: it must be at least 4 "
                       "columns inside 0 .. %d\n",
                o->center, o->width - 1);
        return 2;
    }
    if ((long)o->projections + 2L * o->flats > 99999999L) {
        fprintf(stderr, PREFIX "too many frames\n");
        return 2;
    }
    return 0;
}

/* ---- the simulated detector ---- */

typedef struct {
    const phantom_opts *o;
    tomo_phantom ph;
    int n_frames;
    double t_first, t_last;
    double base; /* counts of the flat at the beam centre at t_first */
    double *profile_x, *profile_z;
    double *gain;   /* per column; 1 except ring columns */
    int *ring_cols; /* the ring columns, ascending */
    int n_rings;
    float *scratch;  /* one row of absorbance per pool slot */
    uint16_t *frame; /* the frame being computed, row-major */
    /* the current frame */
    int number;
    int flat;
    double theta;
    double drift;
} sim;

static unsigned dark_value(int x, int z)
{
    return 100u + 3u * (unsigned)(((long)x * 7 + (long)z * 13) % 5);
}

/* A beam brighter in the middle: 0.85 at the far corners up to 1 near the centre. */
static void make_profile(sim *s)
{
    int w = s->o->width, h = s->o->rows;
    for (int x = 0; x < w; x++) {
        double d = (x - 0.47 * w) / (0.6 * w);
        s->profile_x[x] = exp(-d * d);
    }
    for (int z = 0; z < h; z++) {
        double d = (z - 0.52 * h) / (0.8 * h);
        s->profile_z[z] = exp(-d * d);
    }
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* About 2 % of the columns, drawn with the seed, get a gain 1 +- [0.01, 0.05]. */
static int make_rings(sim *s)
{
    int w = s->o->width;
    for (int x = 0; x < w; x++)
        s->gain[x] = 1.0;
    if (!s->o->rings)
        return 0;
    int n = (int)lround(0.02 * w);
    if (n < 1)
        n = 1;
    int *perm = malloc((size_t)w * sizeof *perm);
    s->ring_cols = malloc((size_t)n * sizeof *s->ring_cols);
    if (!perm || !s->ring_cols) {
        free(perm);
        return -1;
    }
    tomo_rng rng;
    tomo_rng_seed_words(&rng, s->o->seed, UINT64_C(0x72696e6773), 0);
    for (int x = 0; x < w; x++)
        perm[x] = x;
    for (int i = 0; i < n; i++) {
        int j = i + (int)(tomo_rng_uniform(&rng) * (w - i));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        s->ring_cols[i] = perm[i];
    }
    free(perm);
    qsort(s->ring_cols, (size_t)n, sizeof *s->ring_cols, cmp_int);
    for (int i = 0; i < n; i++) {
        double e = 0.01 + 0.04 * tomo_rng_uniform(&rng);
        s->gain[s->ring_cols[i]] = tomo_rng_uniform(&rng) < 0.5 ? 1.0 - e : 1.0 + e;
    }
    s->n_rings = n;
    return 0;
}

static void frame_row(void *arg, int z, int slot)
{
    sim *s = arg;
    const phantom_opts *o = s->o;
    int w = o->width;
    float *p = s->scratch + (size_t)slot * (size_t)w;
    uint16_t *out = s->frame + (size_t)z * (size_t)w;
    if (!s->flat)
        tomo_phantom_project(&s->ph, z, s->theta, p);
    tomo_rng rng;
    if (o->photons > 0)
        tomo_rng_seed_words(&rng, o->seed, (uint64_t)s->number, (uint64_t)z);
    double level = s->base * s->drift;
    for (int x = 0; x < w; x++) {
        double i0 = level * (0.85 + 0.15 * s->profile_x[x] * s->profile_z[z]);
        /* the gain error is the detector's, so the flats (air) do not carry it */
        double mean = s->flat ? i0 : i0 * s->gain[x] * exp(-(double)p[x]);
        double v = dark_value(x, z);
        v += o->photons > 0 ? tomo_poisson(&rng, mean) : floor(mean + 0.5);
        out[x] = (uint16_t)(v < 0 ? 0 : v > 65535 ? 65535 : v);
    }
}

/* ---- files ---- */

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static int io_error(tomo_error *err, const char *path)
{
    return tomo_error_set(err, TOMO_E_IO, "%s: %s", path, strerror(errno ? errno : EIO));
}

/* Writes the whole file or fails with the reason; data is written little-endian. */
static int write_u16_le(FILE *f, const uint16_t *v, size_t n)
{
    if (host_is_little_endian())
        return fwrite(v, sizeof *v, n, f) == n ? 0 : -1;
    unsigned char buf[4096];
    while (n) {
        size_t k = n < sizeof buf / 2 ? n : sizeof buf / 2;
        for (size_t i = 0; i < k; i++) {
            buf[2 * i] = (unsigned char)(v[i] & 0xff);
            buf[2 * i + 1] = (unsigned char)(v[i] >> 8);
        }
        if (fwrite(buf, 2, k, f) != k)
            return -1;
        v += k;
        n -= k;
    }
    return 0;
}

static int write_f32_le(FILE *f, const float *v, size_t n)
{
    if (host_is_little_endian())
        return fwrite(v, sizeof *v, n, f) == n ? 0 : -1;
    unsigned char buf[4096];
    while (n) {
        size_t k = n < sizeof buf / 4 ? n : sizeof buf / 4;
        for (size_t i = 0; i < k; i++) {
            uint32_t u;
            memcpy(&u, &v[i], 4);
            for (int b = 0; b < 4; b++)
                buf[4 * i + (size_t)b] = (unsigned char)(u >> (8 * b));
        }
        if (fwrite(buf, 4, k, f) != k)
            return -1;
        v += k;
        n -= k;
    }
    return 0;
}

static int close_file(FILE *f, const char *path, int failed, tomo_error *err)
{
    if (failed) {
        int saved = errno;
        fclose(f);
        errno = saved;
        return io_error(err, path);
    }
    if (fclose(f) != 0)
        return io_error(err, path);
    return 0;
}

static int write_img(const char *path, const uint16_t *pix, int w, int h, tomo_error *err)
{
    /* a comment exercises the readers' handling of comment_length > 0 */
    char comment[64];
    int len = snprintf(comment, sizeof comment, "tomofs phantom W=%d H=%d", w, h);
    while (len % 16)
        comment[len++] = ' ';
    unsigned char header[TOMO_HIPIC_HEADER_SIZE];
    tomo_hipic_write_header(header, w, h, len);
    errno = 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        return io_error(err, path);
    int failed = fwrite(header, 1, sizeof header, f) != sizeof header ||
                 fwrite(comment, 1, (size_t)len, f) != (size_t)len ||
                 write_u16_le(f, pix, (size_t)w * (size_t)h) != 0;
    return close_file(f, path, failed, err);
}

static int write_tif(const char *path, const uint16_t *pix, int w, int h, tomo_error *err)
{
    errno = 0;
    TIFF *t = TIFFOpen(path, "w");
    if (!t)
        return io_error(err, path);
    int ok = TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w) &&
             TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h) &&
             TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16) &&
             TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1) &&
             TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK) &&
             TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_NONE) &&
             TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG) &&
             TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_UINT) &&
             /* several strips, as acquisition software writes them */
             TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 16);
    for (int z = 0; ok && z < h; z++)
        ok = TIFFWriteScanline(t, (void *)(pix + (size_t)z * (size_t)w), (uint32_t)z, 0) >= 0;
    errno = 0;
    TIFFClose(t);
    if (!ok)
        return tomo_error_set(err, TOMO_E_IO, "%s: writing the TIFF failed%s%s", path,
                              errno ? ": " : "", errno ? strerror(errno) : "");
    return 0;
}

static int write_frame(const phantom_opts *o, const char *path, const uint16_t *pix,
                       tomo_error *err)
{
    return o->tif ? write_tif(path, pix, o->width, o->rows, err)
                  : write_img(path, pix, o->width, o->rows, err);
}

/* Like mkdir -p. */
static int make_dirs(const char *dir, tomo_error *err)
{
    char path[PATH_SIZE];
    if (strlen(dir) >= sizeof path)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", dir);
    strcpy(path, dir);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return io_error(err, path);
        *p = c;
        if (!c)
            break;
    }
    struct stat st;
    if (stat(dir, &st) != 0)
        return io_error(err, dir);
    if (!S_ISDIR(st.st_mode))
        return tomo_error_set(err, TOMO_E_IO, "%s: not a directory", dir);
    return 0;
}

static int digits(long v)
{
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* ---- truth ---- */

typedef struct {
    const tomo_phantom *ph;
    int z, v0;
    float *rows;
} truth_job;

static void truth_row(void *arg, int task, int slot)
{
    (void)slot;
    truth_job *j = arg;
    int v = j->v0 + task;
    tomo_phantom_truth_rows(j->ph, j->z, v, v + 1, j->rows + (size_t)task * (size_t)j->ph->width);
}

static int write_truth(const phantom_opts *o, const tomo_phantom *ph, tomo_pool *pool,
                       const char *truth_dir, tomo_error *err)
{
    enum { BLOCK_ROWS = 64 };
    int n = o->width;
    int zd = digits(o->rows - 1) > 5 ? digits(o->rows - 1) : 5;
    float *rows = malloc((size_t)BLOCK_ROWS * (size_t)n * sizeof *rows);
    unsigned char *header = malloc(TOMO_TIFF_DATA_OFFSET);
    char path[PATH_SIZE], desc[256];
    int rc = 0;
    if (!rows || !header) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory for a %d-pixel truth row", n);
        goto out;
    }
    tomo_progress progress;
    tomo_progress_start(&progress, "phantom: truth", o->rows);
    for (int z = 0; z < o->rows && rc == 0; z++) {
        format_into(path, sizeof path, "%s/slice_%0*d.tif", truth_dir, zd, z);
        format_into(desc, sizeof desc, "tomofs phantom truth z=%0*d pixel_um=%.6f", zd, z,
                    o->pixel_um);
        rc = tomo_tiff_header(header, n, n, o->pixel_um, desc, err);
        if (rc)
            break;
        errno = 0;
        FILE *f = fopen(path, "wb");
        if (!f) {
            rc = io_error(err, path);
            break;
        }
        int failed = fwrite(header, 1, TOMO_TIFF_DATA_OFFSET, f) != TOMO_TIFF_DATA_OFFSET;
        /* blocks of rows keep the memory small at any width */
        for (int v0 = 0; v0 < n && !failed; v0 += BLOCK_ROWS) {
            int nv = n - v0 < BLOCK_ROWS ? n - v0 : BLOCK_ROWS;
            truth_job job = {ph, z, v0, rows};
            tomo_pool_run(pool, nv, truth_row, &job);
            failed = write_f32_le(f, rows, (size_t)nv * (size_t)n) != 0;
        }
        rc = close_file(f, path, failed, err);
        tomo_progress_update(&progress, z + 1, NULL);
    }
    if (rc == 0)
        tomo_progress_finish(&progress, o->rows);
    else if (progress.enabled)
        fputc('\n', stderr);
out:
    free(rows);
    free(header);
    return rc;
}

/* The parameters and the ellipsoid table, for tests that need the true values. */
static int write_parameters(const char *path, const sim *s, tomo_error *err)
{
    const phantom_opts *o = s->o;
    errno = 0;
    FILE *f = fopen(path, "w");
    if (!f)
        return io_error(err, path);
    fprintf(f, "# tomofs phantom: the true parameters of this scan\n");
    fprintf(f, "width: %d\n", o->width);
    fprintf(f, "rows: %d\n", o->rows);
    fprintf(f, "projections: %d\n", o->projections);
    fprintf(f, "flats: %d\n", o->flats);
    fprintf(f, "frames: %d\n", s->n_frames);
    fprintf(f, "format: %s\n", o->tif ? "tif" : "img");
    fprintf(f, "pixel_um: %.9g\n", o->pixel_um);
    fprintf(f, "center: %.9f\n", o->center);
    fprintf(f, "photons: %.9g\n", o->photons > 0 ? o->photons : DEFAULT_FLAT_COUNTS);
    fprintf(f, "noise: %s\n", o->photons > 0 ? "poisson" : "none");
    fprintf(f, "rings: %d\n", o->rings);
    fprintf(f, "seed: %" PRIu64 "\n", o->seed);
    fprintf(f, "drift: 0.04\n");
    if (s->n_rings) {
        fprintf(f, "ring_columns:");
        for (int i = 0; i < s->n_rings; i++)
            fprintf(f, " %d", s->ring_cols[i]);
        fprintf(f, "\nring_gains:");
        for (int i = 0; i < s->n_rings; i++)
            fprintf(f, " %.6f", s->gain[s->ring_cols[i]]);
        fprintf(f, "\n");
    }
    fprintf(f, "ellipsoids: %d\n", s->ph.n);
    fprintf(f, "# ellipsoid i: x0 y0 (pixels from the axis, Y up) z0 (row) a b (pixels) c "
               "(rows) phi (degrees) mu (cm^-1)\n");
    for (int i = 0; i < s->ph.n; i++) {
        const tomo_ellipsoid *e = &s->ph.e[i];
        fprintf(f, "ellipsoid %d: %.9g %.9g %.9g %.9g %.9g %.9g %.9g %.9g\n", i, e->x0, e->y0,
                e->z0, e->a, e->b, e->c, e->phi * (180.0 / 3.14159265358979323846), e->mu);
    }
    int failed = ferror(f);
    return close_file(f, path, failed, err);
}

/* The log goes last, under a temporary name: a scan that was cut short is never valid. */
static int write_log(const char *outdir, const sim *s, const double *angles, tomo_error *err)
{
    const phantom_opts *o = s->o;
    char path[PATH_SIZE], tmp[PATH_SIZE];
    format_into(path, sizeof path, "%s/output.log", outdir);
    format_into(tmp, sizeof tmp, "%s/output.log.tmp", outdir);
    errno = 0;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return io_error(err, tmp);
    int fd = digits(s->n_frames);
    for (int k = 1; k <= s->n_frames; k++) {
        int m = k - 1 - o->flats;
        int flat = m < 0 || m >= o->projections;
        fprintf(f, "%-*d %10.4f %12.6f %d\n", fd, k, k * FRAME_TIME, flat ? 0.0 : angles[m],
                flat ? 0 : 1);
    }
    int rc = close_file(f, tmp, ferror(f), err);
    if (rc)
        return rc;
    if (rename(tmp, path) != 0)
        return io_error(err, path);
    return 0;
}

static int run(const phantom_opts *o, tomo_error *err)
{
    double start = tomo_now();
    sim s = {.o = o};
    char path[PATH_SIZE];
    int rc = 0;
    double *angles = NULL;
    tomo_pool *pool = NULL;

    rc = make_dirs(o->outdir, err);
    if (rc)
        return rc;
    format_into(path, sizeof path, "%s/output.log", o->outdir);
    if (access(path, F_OK) == 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s already exists: will not overwrite a scan (choose an empty "
                              "OUTDIR)",
                              path);

    tomo_phantom_init(&s.ph, o->width, o->rows, o->center, o->pixel_um);
    s.n_frames = 2 * o->flats + o->projections;
    s.t_first = 1 * FRAME_TIME;
    s.t_last = s.n_frames * FRAME_TIME;
    s.base = o->photons > 0 ? o->photons : DEFAULT_FLAT_COUNTS;
    pool = tomo_pool_create(o->threads);
    size_t w = (size_t)o->width, h = (size_t)o->rows;
    int slots = pool ? tomo_pool_size(pool) : 0;
    s.profile_x = malloc(w * sizeof *s.profile_x);
    s.profile_z = malloc(h * sizeof *s.profile_z);
    s.gain = malloc(w * sizeof *s.gain);
    s.scratch = malloc((size_t)slots * w * sizeof *s.scratch);
    s.frame = malloc(w * h * sizeof *s.frame);
    angles = malloc((size_t)o->projections * sizeof *angles);
    if (!pool || !s.profile_x || !s.profile_z || !s.gain || !s.scratch || !s.frame || !angles ||
        make_rings(&s) != 0) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory (or threads) for %dx%d frames",
                            o->width, o->rows);
        goto out;
    }
    make_profile(&s);
    /* the projections are made at the angles as written, so the log is exact */
    for (int m = 0; m < o->projections; m++) {
        char text[64];
        format_into(text, sizeof text, "%.6f", 180.0 * m / o->projections);
        angles[m] = strtod(text, NULL);
    }

    /* the dark, already averaged and noise-free */
    for (size_t z = 0; z < h; z++)
        for (size_t x = 0; x < w; x++)
            s.frame[z * w + x] = (uint16_t)dark_value((int)x, (int)z);
    format_into(path, sizeof path, "%s/dark.%s", o->outdir, o->tif ? "tif" : "img");
    rc = write_frame(o, path, s.frame, err);
    if (rc)
        goto out;

    int fd = digits(s.n_frames) > 4 ? digits(s.n_frames) : 4;
    tomo_progress progress;
    tomo_progress_start(&progress, "phantom: frames", s.n_frames);
    for (int k = 1; k <= s.n_frames; k++) {
        int m = k - 1 - o->flats;
        s.number = k;
        s.flat = m < 0 || m >= o->projections;
        s.theta = s.flat ? 0 : angles[m] * (3.14159265358979323846 / 180.0);
        double t = k * FRAME_TIME;
        s.drift = s.n_frames > 1 ? 1.0 - 0.04 * (t - s.t_first) / (s.t_last - s.t_first) : 1.0;
        tomo_pool_run(pool, o->rows, frame_row, &s);
        format_into(path, sizeof path, "%s/q%0*d.%s", o->outdir, fd, k, o->tif ? "tif" : "img");
        rc = write_frame(o, path, s.frame, err);
        if (rc) {
            if (progress.enabled)
                fputc('\n', stderr); /* the error goes on a line of its own */
            goto out;
        }
        tomo_progress_update(&progress, k, NULL);
    }
    tomo_progress_finish(&progress, s.n_frames);
    free(s.frame);
    s.frame = NULL;

    format_into(path, sizeof path, "%s/truth", o->outdir);
    rc = make_dirs(path, err);
    if (rc)
        goto out;
    if (o->truth) {
        rc = write_truth(o, &s.ph, pool, path, err);
        if (rc)
            goto out;
    }
    format_into(path, sizeof path, "%s/truth/phantom.txt", o->outdir);
    rc = write_parameters(path, &s, err);
    if (rc)
        goto out;
    rc = write_log(o->outdir, &s, angles, err);
    if (rc)
        goto out;
    fprintf(stderr, PREFIX "wrote %d frames of %dx%d to %s in %.2f s\n", s.n_frames, o->width,
            o->rows, o->outdir, tomo_now() - start);
out:
    tomo_pool_destroy(pool);
    free(s.profile_x);
    free(s.profile_z);
    free(s.gain);
    free(s.ring_cols);
    free(s.scratch);
    free(s.frame);
    free(angles);
    return rc;
}

int tomo_cmd_phantom(int argc, char **argv)
{
    phantom_opts o;
    int parsed = parse_options(argc, argv, &o);
    if (parsed == 1)
        return 0;
    if (parsed)
        return 2;
    tomo_error err;
    tomo_error_clear(&err);
    if (run(&o, &err) != 0) {
        fprintf(stderr, PREFIX "%s\n", err.message);
        return 1;
    }
    return 0;
}
