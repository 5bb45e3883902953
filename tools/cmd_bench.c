#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/pool.h"
#include "../recon/backproject.h"
#include "cmd.h"
#include "options.h"
#include "progress.h"

static const char bench_usage[] =
    "usage: tomofs bench SCAN [--rows N] [--first Z] [--repeat R] [-o OPTIONS]\n"
    "                         [--save-sinogram FILE.npy] [--save-slice FILE.npy]\n"
    "\n"
    "Times the stages of the CPU reconstruction of N adjacent slices (default 4) starting at\n"
    "row Z (default: the middle), best of R runs (default 3), and prints milliseconds per slice.\n"
    "--save-sinogram writes the preprocessed sinogram of the first row (projections x columns,\n"
    "float32) and --save-slice its reconstruction, both as NumPy .npy files, so other programs\n"
    "can be compared on exactly the same input.\n"
    "\n";

/* A 2-D little-endian float32 array in NumPy's .npy format (version 1.0). */
static int save_npy(const char *path, const float *data, int rows, int cols)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return -1;
    }
    char header[128];
    int n = snprintf(header, sizeof header,
                     "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    unsigned short hlen = (unsigned short)(n + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc(hlen & 0xff, f);
    fputc(hlen >> 8, f);
    fwrite(header, 1, (size_t)n, f);
    for (int i = 0; i < pad; i++)
        fputc(' ', f);
    fputc('\n', f);
    fwrite(data, sizeof(float), (size_t)rows * (size_t)cols, f);
    return fclose(f) == 0 ? 0 : -1;
}

struct filter_job {
    const tomo_filter *filter;
    float *rows;
    int width;
    long n_rows;
    void **scratch;
};

static void filter_task(void *arg, int task, int slot)
{
    struct filter_job *j = arg;
    for (long r = (long)task * 16; r < (long)task * 16 + 16 && r < j->n_rows; r++)
        tomo_filter_row(j->filter, j->rows + r * j->width, j->scratch[slot]);
}

struct bp_job {
    const tomo_bp_plan *plan;
    const float *sino;
    long stride;
    int n;
    float *images;
};

static void bp_task(void *arg, int task, int slot)
{
    (void)slot;
    struct bp_job *j = arg;
    int v1 = task * 4 + 4 < j->plan->size ? task * 4 + 4 : j->plan->size;
    tomo_bp_rows(j->plan, j->sino, j->stride, j->n, j->images, task * 4, v1);
}

int tomo_cmd_bench(int argc, char **argv)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    int rows = 4, first = -1, repeat = 3;
    const char *save_sino = NULL, *save_slice = NULL;
    static const struct option long_opts[] = {{"help", no_argument, NULL, 'h'},
                                              {"rows", required_argument, NULL, 'n'},
                                              {"first", required_argument, NULL, 'z'},
                                              {"repeat", required_argument, NULL, 'r'},
                                              {"save-sinogram", required_argument, NULL, 's'},
                                              {"save-slice", required_argument, NULL, 'S'},
                                              {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("%s%s", bench_usage, tomo_options_help);
            return 0;
        case 'o':
            if (tomo_options_parse(optarg, &opts, NULL, 0) < 0)
                return 2;
            break;
        case 'n':
            rows = atoi(optarg);
            break;
        case 'z':
            first = atoi(optarg);
            break;
        case 'r':
            repeat = atoi(optarg);
            break;
        case 's':
            save_sino = optarg;
            break;
        case 'S':
            save_slice = optarg;
            break;
        default:
            fprintf(stderr, "%s", bench_usage);
            return 2;
        }
    }
    if (optind + 1 != argc || rows < 1 || repeat < 1) {
        fprintf(stderr, "%s", bench_usage);
        return 2;
    }
    tomo_volume *vol = tomo_open_scan_argument(argv[optind], &opts);
    if (!vol)
        return 1;
    tomo_error err;
    tomo_error_clear(&err);
    const tomo_scan *scan = vol->scan;
    const tomo_recon_params *p = &vol->variants[0].params;
    if (rows > scan->rows)
        rows = scan->rows;
    if (first < 0)
        first = (scan->rows - rows) / 2;
    if (first + rows > scan->rows)
        first = scan->rows - rows;

    int status = 1;
    long n = scan->width, m = scan->n_proj;
    int size = vol->variants[0].size;
    tomo_pool *pool = tomo_pool_create(opts.threads);
    tomo_filter *filter = tomo_filter_create(scan->width, p->filter, p->pad, &err);
    double *angles = malloc((size_t)m * sizeof *angles);
    float *raw = malloc((size_t)rows * (size_t)m * (size_t)n * sizeof(float));
    float *sino = malloc((size_t)rows * (size_t)m * (size_t)n * sizeof(float));
    float *images = malloc((size_t)rows * (size_t)size * (size_t)size * sizeof(float));
    int slots = tomo_pool_size(pool);
    void **scratch = calloc((size_t)slots, sizeof *scratch);
    tomo_bp_plan plan = {0};
    if (!pool || !filter || !angles || !raw || !sino || !images || !scratch) {
        fprintf(stderr, "tomofs: %s\n", err.code ? err.message : "out of memory");
        goto out;
    }
    for (int i = 0; i < slots; i++)
        scratch[i] = aligned_alloc(64, (tomo_filter_scratch_size(filter) + 63) & ~(size_t)63);
    for (long k = 0; k < m; k++)
        angles[k] = (scan->proj_angle_deg[k] - scan->proj_angle_deg[0]) * (M_PI / 180.0);
    if (tomo_bp_plan_init(&plan, scan->width, angles, NULL, (int)m, p->center, p->pixel_um * 1e-4,
                          p->bin, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        goto out;
    }

    double best_prep = INFINITY, best_filter = INFINITY, best_bp = INFINITY;
    tomo_progress progress;
    tomo_progress_start(&progress, "bench", repeat);
    for (int r = 0; r < repeat; r++) {
        double t0 = tomo_now();
        if (tomo_prep_rows(scan, &p->prep, pool, NULL, (int)m, first, rows, raw, NULL, &err) < 0) {
            fprintf(stderr, "tomofs: %s\n", err.message);
            goto out;
        }
        double t1 = tomo_now();
        memcpy(sino, raw, (size_t)rows * (size_t)m * (size_t)n * sizeof(float));
        struct filter_job fj = {filter, sino, (int)n, (long)rows * m, scratch};
        tomo_pool_run(pool, (int)((fj.n_rows + 15) / 16), filter_task, &fj);
        double t2 = tomo_now();
        struct bp_job bj = {&plan, sino, m * n, rows, images};
        tomo_pool_run(pool, (size + 3) / 4, bp_task, &bj);
        double t3 = tomo_now();
        best_prep = fmin(best_prep, t1 - t0);
        best_filter = fmin(best_filter, t2 - t1);
        best_bp = fmin(best_bp, t3 - t2);
        tomo_progress_update(&progress, r + 1, NULL);
    }
    tomo_progress_finish(&progress, repeat);
    printf("scan: %s (%s)\n", scan->path, scan->format);
    printf("geometry: width %ld, projections %ld, slices %d at row %d, output %d x %d\n", n, m,
           rows, first, size, size);
    printf("threads: %d, best of %d\n", slots, repeat);
    printf("%-16s %10s\n", "stage", "ms/slice");
    printf("%-16s %10.2f\n", "read+normalise", 1e3 * best_prep / rows);
    printf("%-16s %10.2f\n", "filter", 1e3 * best_filter / rows);
    printf("%-16s %10.2f\n", "backproject", 1e3 * best_bp / rows);
    printf("%-16s %10.2f\n", "total", 1e3 * (best_prep + best_filter + best_bp) / rows);
    printf("backprojection: %.3f G updates/s\n", (double)size * size * m * rows / best_bp * 1e-9);
    if (save_sino && save_npy(save_sino, raw, (int)m, (int)n) < 0)
        goto out;
    if (save_slice && save_npy(save_slice, images, size, size) < 0)
        goto out;
    status = 0;
out:
    if (scratch)
        for (int i = 0; i < slots; i++)
            free(scratch[i]);
    free(scratch);
    tomo_bp_plan_free(&plan);
    tomo_filter_destroy(filter);
    tomo_pool_destroy(pool);
    free(angles);
    free(raw);
    free(sino);
    free(images);
    tomo_volume_close(vol);
    return status;
}
