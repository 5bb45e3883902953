/*
 * tests/tools/rings_tool.c - drives ring removal from the integration tests and the docs.
 *
 *   rings_tool remove IN OUT ROWS WIDTH [--count K] [--threads T] [KEY=VALUE ...]
 *       Reads K (default 1) ROWS x WIDTH raw float32 sinograms (row = projection) stored one
 *       after the other, removes stripes from each with the ring options KEY=VALUE (rings=sort,
 *       ring_size=21, ... as -o takes them; the method defaults to sort) and writes the
 *       results as raw float32. --threads 1 (default) runs tomo_rings_remove() on one thread;
 *       T > 1 runs tomo_rings_remove_pool() on T threads.
 *   rings_tool fbp IN OUT ROWS WIDTH CENTER [--step DEG] [--filter NAME] [--pad zero|edge]
 *                  [KEY=VALUE ...]
 *       Optional ring removal as above, then filtered back-projection of the sinogram with
 *       tomofs's filter and back-projector: views at m * DEG degrees (default 180 / ROWS),
 *       pixel size 1 um. Writes the WIDTH x WIDTH slice as raw float32 (cm^-1).
 *   rings_tool volume SCAN OUTDIR Z0 Z1 [--threads T] [center=X] [KEY=VALUE ...]
 *       Opens SCAN as the filesystem would (tomo_volume_open, no disk cache) with the ring
 *       options KEY=VALUE, reconstructs slices Z0..Z1-1 of the folder they select
 *       (rings-removed, or slices for rings=none) through the engine and writes
 *       OUTDIR/slice_NNNNN.f32 (raw float32; OUTDIR/params.txt has the side, the folder and
 *       the parameter text).
 *
 * Prints one line "seconds: S" with the time ring removal (remove) or the whole work took.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../common/pool.h"
#include "../../fs/volume.h"
#include "../../recon/backproject.h"
#include "../../recon/filter.h"
#include "../../recon/rings.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *read_raw(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "rings_tool: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    float *data = malloc(n * sizeof *data);
    if (!data || fread(data, sizeof *data, n, f) != n) {
        fprintf(stderr, "rings_tool: %s: expected %zu float32 values\n", path, n);
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static int write_raw(const char *path, const float *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, sizeof *data, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "rings_tool: %s: cannot write\n", path);
        return -1;
    }
    return 0;
}

static int parse_positive(const char *text, int *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (end == text || *end || v < 1 || v > (1 << 24)) {
        fprintf(stderr, "rings_tool: '%s' is not a positive integer\n", text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Applies a KEY=VALUE ring option; returns 0, 1 if it is not a ring option, -1 on error. */
static int ring_option(tomo_rings_params *p, char *arg)
{
    char *eq = strchr(arg, '=');
    if (!eq)
        return 1;
    *eq = '\0';
    tomo_error err;
    tomo_error_clear(&err);
    int r = tomo_rings_parse_option(p, arg, eq + 1, &err);
    *eq = '=';
    if (r < 0) {
        fprintf(stderr, "rings_tool: %s\n", err.message);
        return -1;
    }
    return r;
}

/* Ring removal of one sinogram with `threads` threads; returns seconds or -1. */
static double remove_rings(const tomo_rings_params *p, float *sino, int rows, int width,
                           int threads)
{
    tomo_error err;
    tomo_error_clear(&err);
    double t0 = now();
    int rc;
    if (threads <= 1) {
        size_t bytes = tomo_rings_scratch_size(p, rows, width);
        void *scratch = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        rc = scratch || !bytes ? tomo_rings_remove(p, sino, rows, width, scratch, &err)
                               : tomo_error_set(&err, TOMO_E_NOMEM, "out of memory");
        free(scratch);
    } else {
        tomo_pool *pool = tomo_pool_create(threads);
        rc = pool ? tomo_rings_remove_pool(p, sino, rows, width, pool, &err)
                  : tomo_error_set(&err, TOMO_E_NOMEM, "cannot start threads");
        tomo_pool_destroy(pool);
    }
    if (rc < 0) {
        fprintf(stderr, "rings_tool: %s\n", err.message);
        return -1;
    }
    return now() - t0;
}

static int cmd_remove(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: rings_tool remove IN OUT ROWS WIDTH [--count K] [--threads T] "
                        "[KEY=VALUE]\n");
        return 2;
    }
    int rows, width, threads = 1, count = 1;
    if (parse_positive(argv[2], &rows) < 0 || parse_positive(argv[3], &width) < 0)
        return 2;
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    p.method = TOMO_RINGS_SORT;
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (parse_positive(argv[++i], &threads) < 0)
                return 2;
            continue;
        }
        if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            if (parse_positive(argv[++i], &count) < 0)
                return 2;
            continue;
        }
        if (ring_option(&p, argv[i]) != 0) {
            fprintf(stderr, "rings_tool: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    size_t n = (size_t)rows * (size_t)width;
    float *sino = read_raw(argv[0], n * (size_t)count);
    if (!sino)
        return 1;
    double seconds = 0;
    for (int k = 0; k < count && seconds >= 0; k++) {
        double t = remove_rings(&p, sino + (size_t)k * n, rows, width, threads);
        seconds = t < 0 ? -1 : seconds + t;
    }
    int status = seconds < 0 || write_raw(argv[1], sino, n * (size_t)count) < 0;
    if (!status)
        printf("seconds: %.6f\n", seconds);
    free(sino);
    return status;
}

static int cmd_fbp(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: rings_tool fbp IN OUT ROWS WIDTH CENTER [--step DEG] "
                        "[--filter NAME] [--pad zero|edge] [KEY=VALUE]\n");
        return 2;
    }
    int rows, width;
    if (parse_positive(argv[2], &rows) < 0 || parse_positive(argv[3], &width) < 0)
        return 2;
    double center = atof(argv[4]), step = 180.0 / rows;
    tomo_filter_kind kind = TOMO_FILTER_CHESLER;
    tomo_pad_mode pad = TOMO_PAD_ZERO;
    tomo_rings_params p;
    tomo_rings_params_default(&p);
    for (int i = 5; i < argc; i++) {
        if (strcmp(argv[i], "--step") == 0 && i + 1 < argc) {
            step = atof(argv[++i]);
        } else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc) {
            int k = tomo_filter_parse(argv[++i]);
            if (k < 0) {
                fprintf(stderr, "rings_tool: unknown filter '%s'\n", argv[i]);
                return 2;
            }
            kind = (tomo_filter_kind)k;
        } else if (strcmp(argv[i], "--pad") == 0 && i + 1 < argc) {
            pad = strcmp(argv[++i], "edge") == 0 ? TOMO_PAD_EDGE : TOMO_PAD_ZERO;
        } else if (ring_option(&p, argv[i]) != 0) {
            fprintf(stderr, "rings_tool: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    size_t n = (size_t)rows * (size_t)width;
    float *sino = read_raw(argv[0], n);
    if (!sino)
        return 1;
    int status = 1;
    double t0 = now();
    tomo_error err;
    tomo_error_clear(&err);
    tomo_filter *filter = NULL;
    tomo_bp_plan plan;
    memset(&plan, 0, sizeof plan);
    double *angles = malloc((size_t)rows * sizeof *angles);
    float *image = malloc((size_t)width * (size_t)width * sizeof *image);
    void *scratch = NULL;
    if (!angles || !image)
        goto out;
    if (p.method != TOMO_RINGS_NONE && remove_rings(&p, sino, rows, width, 1) < 0)
        goto out;
    filter = tomo_filter_create(width, kind, pad, &err);
    if (!filter)
        goto fail;
    scratch = aligned_alloc(64, (tomo_filter_scratch_size(filter) + 63) & ~(size_t)63);
    if (!scratch)
        goto out;
    for (int r = 0; r < rows; r++)
        tomo_filter_row(filter, sino + (size_t)r * width, scratch);
    for (int m = 0; m < rows; m++)
        angles[m] = m * step * (M_PI / 180.0);
    if (tomo_bp_plan_init(&plan, width, angles, NULL, rows, center, 1e-4, 1, &err) < 0)
        goto fail;
    tomo_bp_rows(&plan, sino, (long)n, 1, image, 0, plan.size);
    if (write_raw(argv[1], image, (size_t)width * width) < 0)
        goto out;
    printf("seconds: %.6f\n", now() - t0);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "rings_tool: %s\n", err.message);
out:
    tomo_bp_plan_free(&plan);
    tomo_filter_destroy(filter);
    free(scratch);
    free(angles);
    free(image);
    free(sino);
    return status;
}

static int cmd_volume(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: rings_tool volume SCAN OUTDIR Z0 Z1 [--threads T] [center=X] "
                        "[KEY=VALUE]\n");
        return 2;
    }
    int z0 = atoi(argv[2]), z1 = atoi(argv[3]);
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    opts.cache_off = 1;
    opts.rings.method = TOMO_RINGS_NONE; /* rings= chooses */
    for (int i = 4; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (parse_positive(argv[++i], &opts.threads) < 0)
                return 2;
        } else if (strncmp(argv[i], "center=", 7) == 0) {
            opts.params.center = atof(argv[i] + 7);
        } else if (ring_option(&opts.rings, argv[i]) != 0) {
            fprintf(stderr, "rings_tool: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (mkdir(argv[1], 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "rings_tool: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    double t0 = now();
    tomo_error err;
    tomo_error_clear(&err);
    tomo_volume *vol = NULL;
    tomo_slice **slices = NULL;
    int status = 1;
    if (tomo_volume_open(argv[0], &opts, &vol, &err) < 0 || tomo_volume_start(vol, &err) < 0)
        goto fail;
    if (z0 < 0 || z1 > vol->scan->rows || z0 >= z1) {
        fprintf(stderr, "rings_tool: slices %d-%d are not in the volume\n", z0, z1 - 1);
        goto out;
    }
    int v = tomo_volume_find_variant(vol, opts.rings.method == TOMO_RINGS_NONE ? "slices"
                                                                               : "rings-removed");
    if (v < 0) {
        fprintf(stderr, "rings_tool: the volume has no folder for these options\n");
        goto out;
    }
    slices = calloc((size_t)(z1 - z0), sizeof *slices);
    if (!slices || tomo_engine_compute(vol->engine, v, z0, z1 - z0, slices, &err) < 0)
        goto fail;
    for (int z = z0; z < z1; z++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/slice_%05d.f32", argv[1], z);
        tomo_slice *s = slices[z - z0];
        if (write_raw(path, s->pixels, (size_t)s->size * s->size) < 0)
            goto out;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/params.txt", argv[1]);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "size: %d\ncenter: %.6f\nfolder: %s\nparams: %s\n", vol->variants[v].size,
                vol->variants[v].params.center, vol->variants[v].name,
                vol->variants[v].params_text);
        fclose(f);
    }
    printf("seconds: %.6f\n", now() - t0);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "rings_tool: %s\n", err.message);
out:
    if (slices)
        for (int z = z0; z < z1; z++)
            tomo_slice_unref(slices[z - z0]);
    free(slices);
    tomo_volume_close(vol);
    return status;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "remove") == 0)
        return cmd_remove(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "fbp") == 0)
        return cmd_fbp(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "volume") == 0)
        return cmd_volume(argc - 2, argv + 2);
    fprintf(stderr, "usage: rings_tool remove|fbp|volume ... (see tests/tools/rings_tool.c)\n");
    return 2;
}
