/*
 * tests/gpu/gpu_check.c - GPU tests and back-projection benchmarks, run on a machine with a GPU.
 *
 *   gpu_check parity SCAN [Z0 NZ]      CPU against CUDA exact and fast on slices Z0..Z0+NZ-1:
 *                                      relative RMS difference inside the field of view must be
 *                                      at most 1e-5 (exact) and 2e-3 (fast); exit 1 otherwise
 *   gpu_check bench-rings N M [SIZE [REPEAT]]  ring removal (algorithm 3) of one M x N
 *                                      sinogram: GPU ms, and equality with the CPU's result
 *   gpu_check bench-bp N M [REPEAT]    back-projection of 8 slices of N x N from M views of
 *                                      random filtered data: ms per slice, exact and fast
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../fs/volume.h"
#include "../../recon/cuda.h"

#define EXACT_TOLERANCE 1e-5
#define FAST_TOLERANCE  2e-3

static int open_volume(const char *path, int device, tomo_precision precision, double center,
                       tomo_volume **vol)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    opts.device = device;
    opts.precision = precision;
    opts.params.center = center;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_volume_open(path, &opts, vol, &err) < 0 || tomo_volume_start(*vol, &err) < 0) {
        fprintf(stderr, "gpu_check: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* Relative RMS difference of b against a over the pixels inside the circle of radius r. */
static double relative_rms(const float *a, const float *b, int size, double r, double *max_abs)
{
    double num = 0, den = 0, worst = 0;
    for (int v = 0; v < size; v++)
        for (int h = 0; h < size; h++) {
            double x = h + 0.5 - size / 2.0, y = size / 2.0 - (v + 0.5);
            if (x * x + y * y > r * r)
                continue;
            double d = (double)b[v * size + h] - a[v * size + h];
            num += d * d;
            den += (double)a[v * size + h] * a[v * size + h];
            worst = fabs(d) > worst ? fabs(d) : worst;
        }
    *max_abs = worst;
    return den > 0 ? sqrt(num / den) : 0;
}

static int parity(const char *scan, int z0, int nz)
{
    tomo_volume *cpu = NULL, *gpu[2] = {NULL, NULL};
    if (open_volume(scan, TOMO_DEVICE_CPU, TOMO_PRECISION_EXACT, NAN, &cpu) < 0)
        return 1;
    double center = cpu->variants[0].params.center;
    if (z0 < 0 || z0 + nz > cpu->scan->rows) {
        z0 = cpu->scan->rows / 2 - nz / 2;
        z0 = z0 < 0 ? 0 : z0;
        nz = nz > cpu->scan->rows ? cpu->scan->rows : nz;
    }
    tomo_precision precisions[2] = {TOMO_PRECISION_EXACT, TOMO_PRECISION_FAST};
    double tolerance[2] = {EXACT_TOLERANCE, FAST_TOLERANCE};
    for (int p = 0; p < 2; p++)
        if (open_volume(scan, 0, precisions[p], center, &gpu[p]) < 0)
            return 1;
    printf("scan %s: %d x %d, %d projections, centre %.3f, slices %d-%d\n", scan, cpu->scan->width,
           cpu->scan->rows, cpu->scan->n_proj, center, z0, z0 + nz - 1);
    printf("backends: %s | %s | %s\n", tomo_engine_backend(cpu->engine),
           tomo_engine_backend(gpu[0]->engine), tomo_engine_backend(gpu[1]->engine));
    tomo_slice **ref = calloc((size_t)nz, sizeof *ref), **got = calloc((size_t)nz, sizeof *got);
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_engine_compute(cpu->engine, 0, z0, nz, ref, &err) < 0) {
        fprintf(stderr, "gpu_check: CPU: %s\n", err.message);
        return 1;
    }
    int failed = 0;
    double r = cpu->variants[0].params.center;
    double rr = cpu->scan->width - 1 - r;
    r = r < rr ? r : rr;
    for (int k = 0; k < 2 * cpu->n_variants; k++) {
        int p = k % 2, v = k / 2;
        if (p == 0 && v > 0) {
            for (int i = 0; i < nz; i++)
                tomo_slice_unref(ref[i]);
            if (tomo_engine_compute(cpu->engine, v, z0, nz, ref, &err) < 0) {
                fprintf(stderr, "gpu_check: CPU: %s\n", err.message);
                return 1;
            }
        }
        if (tomo_engine_compute(gpu[p]->engine, v, z0, nz, got, &err) < 0) {
            fprintf(stderr, "gpu_check: GPU: %s\n", err.message);
            return 1;
        }
        double worst_rel = 0, worst_abs = 0;
        for (int i = 0; i < nz; i++) {
            double max_abs;
            double rel = relative_rms(ref[i]->pixels, got[i]->pixels, ref[i]->size, r, &max_abs);
            worst_rel = rel > worst_rel ? rel : worst_rel;
            worst_abs = max_abs > worst_abs ? max_abs : worst_abs;
            tomo_slice_unref(got[i]);
        }
        int ok = worst_rel <= tolerance[p];
        printf("%-13s %-5s: relative RMS difference to the CPU %.3g (max over slices; "
               "tolerance %.0e), largest pixel difference %.3g cm^-1: %s\n",
               cpu->variants[v].name, tomo_precision_name(precisions[p]), worst_rel, tolerance[p],
               worst_abs, ok ? "ok" : "FAIL");
        failed |= !ok;
    }
    for (int i = 0; i < nz; i++)
        tomo_slice_unref(ref[i]);
    free(ref);
    free(got);
    tomo_volume_close(cpu);
    tomo_volume_close(gpu[0]);
    tomo_volume_close(gpu[1]);
    return failed;
}

static int bench_bp(int n, int m, int repeat)
{
    tomo_error err;
    tomo_error_clear(&err);
    double *angles = malloc((size_t)m * sizeof *angles);
    for (int k = 0; k < m; k++)
        angles[k] = M_PI * k / m;
    tomo_filter *filter = tomo_filter_create(n, TOMO_FILTER_CHESLER, TOMO_PAD_ZERO, &err);
    tomo_bp_plan plan;
    if (!filter || tomo_bp_plan_init(&plan, n, angles, NULL, m, (n - 1) / 2.0, 1e-4, 1, &err) < 0) {
        fprintf(stderr, "gpu_check: %s\n", err.message);
        return 1;
    }
    size_t nm = (size_t)n * m;
    float *filtered = malloc(8 * nm * sizeof(float));
    float *images = malloc(8 * (size_t)n * n * sizeof(float));
    srand(1);
    for (size_t i = 0; i < 8 * nm; i++)
        filtered[i] = (float)rand() / RAND_MAX - 0.5f;
    char name[128];
    tomo_cuda_device_count(name, sizeof name);
    printf("back-projection, %s: N = %d, M = %d, 8 slices per launch, best of %d\n", name, n, m,
           repeat);
    tomo_precision precisions[2] = {TOMO_PRECISION_EXACT, TOMO_PRECISION_FAST};
    for (int p = 0; p < 2; p++) {
        tomo_cuda_config cc = {.device = 0,
                               .width = n,
                               .n_proj = m,
                               .n_flat_groups = 1,
                               .max_rows = 8,
                               .precision = precisions[p],
                               .filter = filter,
                               .plan = &plan};
        tomo_prep_params_default(&cc.prep);
        tomo_cuda *cuda;
        double ms;
        if (tomo_cuda_create(&cc, &cuda, &err) < 0 ||
            tomo_cuda_bench_backproject(cuda, filtered, 8, repeat, images, &ms, &err) < 0) {
            fprintf(stderr, "gpu_check: %s\n", err.message);
            return 1;
        }
        double inside = M_PI * plan.fov_radius * plan.fov_radius;
        printf("%-5s: %8.2f ms per launch, %7.2f ms per slice, %6.0f G updates/s (in the circle)\n",
               tomo_precision_name(precisions[p]), ms, ms / 8, inside * m * 8 / (ms * 1e-3) * 1e-9);
        tomo_cuda_destroy(cuda);
    }
    tomo_bp_plan_free(&plan);
    tomo_filter_destroy(filter);
    free(angles);
    free(filtered);
    free(images);
    return 0;
}

/* Algorithm 3 on an n x m sinogram of smooth data plus noise and stripes: GPU time, and the
 * result against the CPU's, which it must equal bit for bit. */
static int bench_rings(int n, int m, int size, int repeat)
{
    tomo_error err;
    tomo_error_clear(&err);
    double *angles = malloc((size_t)m * sizeof *angles);
    for (int k = 0; k < m; k++)
        angles[k] = M_PI * k / m;
    tomo_filter *filter = tomo_filter_create(n, TOMO_FILTER_CHESLER, TOMO_PAD_ZERO, &err);
    tomo_bp_plan plan;
    if (!filter || tomo_bp_plan_init(&plan, n, angles, NULL, m, (n - 1) / 2.0, 1e-4, 1, &err) < 0) {
        fprintf(stderr, "gpu_check: %s\n", err.message);
        return 1;
    }
    size_t nm = (size_t)n * m;
    float *sino = malloc(nm * sizeof(float)), *cpu = malloc(nm * sizeof(float));
    srand(2);
    for (int r = 0; r < m; r++)
        for (int x = 0; x < n; x++)
            sino[(size_t)r * n + x] = (float)(sin(0.01 * x + 0.002 * r) + 0.05 * rand() / RAND_MAX +
                                              (x % 97 == 0 ? 0.2 : 0.0));
    memcpy(cpu, sino, nm * sizeof(float));
    tomo_rings_params rings;
    tomo_rings_params_default(&rings);
    rings.method = TOMO_RINGS_SORT;
    rings.size = size;
    tomo_pool *pool = tomo_pool_create(0);
    double t0 = (double)clock();
    if (tomo_rings_remove_pool(&rings, cpu, m, n, pool, &err) < 0) {
        fprintf(stderr, "gpu_check: %s\n", err.message);
        return 1;
    }
    double cpu_ms = ((double)clock() - t0) / CLOCKS_PER_SEC * 1e3;
    tomo_cuda_config cc = {.device = 0,
                           .width = n,
                           .n_proj = m,
                           .n_flat_groups = 1,
                           .max_rows = 1,
                           .precision = TOMO_PRECISION_FAST,
                           .filter = filter,
                           .plan = &plan,
                           .rings = rings};
    tomo_prep_params_default(&cc.prep);
    tomo_cuda *cuda;
    double ms;
    if (tomo_cuda_create(&cc, &cuda, &err) < 0 ||
        tomo_cuda_bench_rings(cuda, sino, repeat, &ms, &err) < 0) {
        fprintf(stderr, "gpu_check: %s\n", err.message);
        return 1;
    }
    size_t differ = 0;
    for (size_t i = 0; i < nm; i++)
        differ += sino[i] != cpu[i];
    printf("ring removal (algorithm 3, size %d) of a %d x %d sinogram: GPU %.2f ms (best of %d), "
           "CPU %.0f ms of processor time; values differing from the CPU's: %zu: %s\n",
           size, m, n, ms, repeat, cpu_ms, differ, differ ? "FAIL" : "ok");
    tomo_cuda_destroy(cuda);
    tomo_pool_destroy(pool);
    tomo_bp_plan_free(&plan);
    tomo_filter_destroy(filter);
    free(angles);
    free(sino);
    free(cpu);
    return differ != 0;
}

int main(int argc, char **argv)
{
    char name[128];
    if (tomo_cuda_device_count(name, sizeof name) == 0) {
        fprintf(stderr, "gpu_check: no usable GPU (%s)\n", name);
        return 77;
    }
    if (argc >= 3 && strcmp(argv[1], "parity") == 0)
        return parity(argv[2], argc > 3 ? atoi(argv[3]) : -1, argc > 4 ? atoi(argv[4]) : 8);
    if (argc >= 4 && strcmp(argv[1], "bench-rings") == 0)
        return bench_rings(atoi(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 21,
                           argc > 5 ? atoi(argv[5]) : 5);
    if (argc >= 4 && strcmp(argv[1], "bench-bp") == 0)
        return bench_bp(atoi(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 3);
    fprintf(stderr, "usage: gpu_check parity SCAN [Z0 NZ] | bench-bp N M [REPEAT] | "
                    "bench-rings N M [SIZE [REPEAT]]\n");
    return 2;
}
