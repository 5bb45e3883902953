/*
 * tests/gpu/gpu_check.c - GPU tests and benchmarks, run on a machine with a GPU.
 *
 *   gpu_check parity SCAN [Z0 NZ [RINGS]]
 *       CPU against CUDA exact and fast on slices Z0..Z0+NZ-1 of every folder (slices/ and
 *       rings-removed/ with -o rings=RINGS: sort, the default, all, large or dead): the
 *       relative RMS difference inside the field of view must be at most 1e-5 (exact) and
 *       2e-3 (fast), and above 0 (a folder equal to the CPU's bit for bit was not computed on
 *       the GPU); exit 1 otherwise
 *   gpu_check rings-exact
 *       every ring removal method on sinograms of 1 x 1 to 3001 x 1100, smooth, integer-valued
 *       (full of ties), constant and signed data with stripes of every kind, median widths on
 *       every code path: the GPU's result must equal tomo_rings_remove()'s value for value
 *   gpu_check bench-rings N M [SIZE [REPEAT [METHODS]]]
 *       ring removal of one M x N sinogram (the synthetic sinogram of tools/bench/rings_bench.c)
 *       for each method of the comma-separated METHODS (default sort,all,large,dead; SIZE is
 *       the width of sort): GPU ms (best of REPEAT, kernels only), CPU ms on every core, and
 *       the number of values that differ from the CPU's, which must be 0
 *   gpu_check bench-bp N M [REPEAT]
 *       back-projection of 8 slices of N x N from M views of random filtered data: ms per
 *       slice, exact and fast
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../fs/volume.h"
#include "../../recon/cuda.h"
#include "../../tools/bench/rings_sinogram.h"

#define EXACT_TOLERANCE 1e-5
#define FAST_TOLERANCE  2e-3

static int open_volume(const char *path, int device, tomo_precision precision, double center,
                       const tomo_rings_params *rings, tomo_volume **vol)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    opts.device = device;
    opts.precision = precision;
    opts.params.center = center;
    opts.rings = *rings;
    opts.cache_off = 1; /* every slice computed, none served from an earlier run */
    opts.model_off = 1;
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

static int parity(const char *scan, int z0, int nz, const char *rings_name)
{
    tomo_rings_params rings;
    tomo_rings_params_default(&rings);
    int method = tomo_rings_parse_method(rings_name);
    if (method <= 0) {
        fprintf(stderr, "gpu_check: rings=%s: expected sort, all, large or dead\n", rings_name);
        return 2;
    }
    rings.method = (tomo_rings_method)method;
    tomo_volume *cpu = NULL, *gpu[2] = {NULL, NULL};
    if (open_volume(scan, TOMO_DEVICE_CPU, TOMO_PRECISION_EXACT, NAN, &rings, &cpu) < 0)
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
        if (open_volume(scan, 0, precisions[p], center, &rings, &gpu[p]) < 0)
            return 1;
    printf("scan %s: %d x %d, %d projections, centre %.3f, slices %d-%d, rings=%s\n", scan,
           cpu->scan->width, cpu->scan->rows, cpu->scan->n_proj, center, z0, z0 + nz - 1,
           rings_name);
    printf("backends: %s | %s | %s\n", tomo_engine_backend(cpu->engine),
           tomo_engine_backend(gpu[0]->engine), tomo_engine_backend(gpu[1]->engine));
    tomo_slice **ref = calloc((size_t)nz, sizeof *ref), **got = calloc((size_t)nz, sizeof *got);
    tomo_error err;
    tomo_error_clear(&err);
    int failed = 0;
    double r = cpu->variants[0].params.center;
    double rr = cpu->scan->width - 1 - r;
    r = r < rr ? r : rr;
    static const char *const folders[] = {"slices", "rings-removed"};
    for (int f = 0; f < 2; f++) {
        int v = tomo_volume_find_variant(cpu, folders[f]);
        if (v < 0 || tomo_volume_find_variant(gpu[0], folders[f]) != v ||
            tomo_volume_find_variant(gpu[1], folders[f]) != v) {
            printf("%-13s: FAIL: no such folder in all three volumes\n", folders[f]);
            failed = 1;
            continue;
        }
        char text[256];
        tomo_rings_params_text(&cpu->variants[v].params.rings, cpu->scan->width, text, sizeof text);
        if (!tomo_cuda_supports_rings(&cpu->variants[v].params.rings)) {
            printf("%-13s: FAIL: the GPU does not take %s\n", cpu->variants[v].name, text);
            failed = 1;
            continue;
        }
        if (text[0])
            printf("%-13s %s\n", cpu->variants[v].name, text);
        if (tomo_engine_compute(cpu->engine, v, z0, nz, ref, &err) < 0) {
            fprintf(stderr, "gpu_check: CPU: %s\n", err.message);
            return 1;
        }
        for (int p = 0; p < 2; p++) {
            if (tomo_engine_compute(gpu[p]->engine, v, z0, nz, got, &err) < 0) {
                fprintf(stderr, "gpu_check: GPU: %s\n", err.message);
                return 1;
            }
            double worst_rel = 0, worst_abs = 0;
            for (int i = 0; i < nz; i++) {
                double max_abs;
                double rel =
                    relative_rms(ref[i]->pixels, got[i]->pixels, ref[i]->size, r, &max_abs);
                worst_rel = rel > worst_rel ? rel : worst_rel;
                worst_abs = max_abs > worst_abs ? max_abs : worst_abs;
                tomo_slice_unref(got[i]);
            }
            int ok = worst_rel <= tolerance[p] && worst_rel > 0;
            printf("%-13s %-5s: relative RMS difference to the CPU %.3g (max over slices; "
                   "tolerance %.0e), largest pixel difference %.3g cm^-1: %s%s\n",
                   cpu->variants[v].name, tomo_precision_name(precisions[p]), worst_rel,
                   tolerance[p], worst_abs, ok ? "ok" : "FAIL",
                   worst_rel == 0 ? " (equal to the CPU's bit for bit: not computed on the GPU)"
                                  : "");
            failed |= !ok;
        }
        for (int i = 0; i < nz; i++)
            tomo_slice_unref(ref[i]);
    }
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

/* ---- ring removal ---- */

/* A GPU pipeline for n_proj x width sinograms that removes rings with `rings`. */
typedef struct ring_pipe {
    double *angles;
    tomo_filter *filter;
    tomo_bp_plan plan;
    int have_plan;
    tomo_cuda *cuda;
} ring_pipe;

static void ring_pipe_close(ring_pipe *rp)
{
    tomo_cuda_destroy(rp->cuda);
    if (rp->have_plan)
        tomo_bp_plan_free(&rp->plan);
    tomo_filter_destroy(rp->filter);
    free(rp->angles);
    memset(rp, 0, sizeof *rp);
}

static int ring_pipe_open(ring_pipe *rp, int n, int m, const tomo_rings_params *rings,
                          tomo_error *err)
{
    memset(rp, 0, sizeof *rp);
    rp->angles = malloc((size_t)m * sizeof *rp->angles);
    if (!rp->angles)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    for (int k = 0; k < m; k++)
        rp->angles[k] = M_PI * k / m;
    rp->filter = tomo_filter_create(n, TOMO_FILTER_CHESLER, TOMO_PAD_ZERO, err);
    int rc = rp->filter
                 ? tomo_bp_plan_init(&rp->plan, n, rp->angles, NULL, m, (n - 1) / 2.0, 1e-4, 1, err)
                 : -TOMO_E_INVALID;
    if (rc < 0) {
        ring_pipe_close(rp);
        return rc;
    }
    rp->have_plan = 1;
    tomo_cuda_config cc = {.device = 0,
                           .width = n,
                           .n_proj = m,
                           .n_flat_groups = 1,
                           .max_rows = 1,
                           .precision = TOMO_PRECISION_FAST,
                           .filter = rp->filter,
                           .plan = &rp->plan,
                           .rings = *rings};
    tomo_prep_params_default(&cc.prep);
    rc = tomo_cuda_create(&cc, &rp->cuda, err);
    if (rc < 0)
        ring_pipe_close(rp);
    return rc;
}

/* Automatic widths resolved for `width` columns, as tomo_recon_resolve() does. */
static void resolve_rings(tomo_rings_params *p, int width)
{
    if (p->size == 0)
        p->size = tomo_rings_auto_size(width);
    if (p->sm_size == 0)
        p->sm_size = tomo_rings_auto_size(width);
}

/* The CPU's result: tomo_rings_remove() in place. */
static int cpu_rings(const tomo_rings_params *p, float *sino, int m, int n, tomo_error *err)
{
    size_t bytes = tomo_rings_scratch_size(p, m, n);
    void *scratch = aligned_alloc(64, bytes ? bytes : 64);
    if (!scratch)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    int rc = tomo_rings_remove(p, sino, m, n, scratch, err);
    free(scratch);
    return rc;
}

static uint64_t rng_state;

static double uniform(void)
{
    return rings_uniform(&rng_state);
}

enum { DATA_SMOOTH, DATA_TIES, DATA_FLAT, DATA_SIGNED, DATA_KINDS };
static const char *const data_names[DATA_KINDS] = {"smooth", "ties", "flat", "signed"};

/*
 * Test sinograms. smooth: a positive absorbance-like sinogram with noise; ties: multiples of
 * 0.25 (equal values everywhere, so the stable order matters); flat: 0.5 everywhere (no
 * variation, no stripe); signed: values around 0 with exact zeros and negative zeros. All but
 * flat get stripes: offsets, gains, dead (constant) columns, partial stripes and six-column
 * gain stripes.
 */
static void case_sinogram(float *s, int M, int N, int kind, uint64_t seed)
{
    rng_state = seed;
    for (int r = 0; r < M; r++)
        for (int x = 0; x < N; x++) {
            double v;
            if (kind == DATA_SMOOTH)
                v = 1.0 + 0.4 * sin(0.07 * x + 0.013 * r) + 0.02 * uniform();
            else if (kind == DATA_TIES)
                v = 0.25 * (int)(5 * uniform()) + (x % 3 == 0 ? 0.5 : 0.0);
            else if (kind == DATA_FLAT)
                v = 0.5;
            else if ((r + x) % 11 == 0)
                v = 0.0;
            else if ((r + 2 * x) % 13 == 0)
                v = -0.0;
            else
                v = sin(0.05 * x + 0.02 * r) + 0.05 * (uniform() - 0.5);
            s[(size_t)r * N + x] = (float)v;
        }
    if (kind == DATA_FLAT)
        return;
    for (int k = 0; k < N / 12 + 1; k++) {
        int j = (int)(uniform() * N), type = k % 5;
        for (int r = 0; r < M; r++) {
            float *v = s + (size_t)r * N + j;
            if (type == 0)
                *v += 0.1f;
            else if (type == 1)
                *v *= 1.1f;
            else if (type == 2)
                *v = kind == DATA_TIES ? 0.75f : 0.7f;
            else if (type == 3 && r > M / 3 && r < M / 2)
                *v -= 0.2f;
            else if (type == 4)
                for (int q = 0; q < 6 && j + q < N; q++)
                    v[q] *= 1.15f;
        }
    }
}

typedef struct ring_case {
    const char *method;
    int size, dim, la_size, sm_size;
    double snr, drop_ratio;
} ring_case;

/* Every method, and median widths on every code path of the GPU (cuda_stripes.cu, cuda.cu). */
static const ring_case ring_cases[] = {
    {"sort", 0, 1, 51, 21, 3, 0.1},   {"sort", 5, 2, 51, 21, 3, 0.1},
    {"sort", 100, 1, 51, 21, 3, 0.1}, {"dead", 0, 1, 51, 21, 3, 0.1},
    {"dead", 0, 1, 11, 21, 1.5, 0.1}, {"dead", 0, 1, 301, 21, 3, 0.1},
    {"large", 0, 1, 51, 21, 3, 0.1},  {"large", 0, 1, 11, 21, 1.5, 0.1},
    {"large", 0, 1, 16, 21, 3, 0.1},  {"large", 0, 1, 31, 21, 3, 0.0},
    {"large", 0, 1, 71, 21, 3, 0.8},  {"large", 0, 1, 72, 21, 3, 0.1},
    {"large", 0, 1, 127, 21, 2, 0.1}, {"all", 0, 1, 51, 21, 3, 0.1},
    {"all", 0, 2, 21, 5, 3, 0.1},     {"all", 0, 1, 15, 0, 2, 0.3},
};

static int rings_exact(void)
{
    static const int shapes[][2] = {{1, 2},     {2, 3},      {7, 5},      {12, 9},
                                    {50, 17},   {181, 64},   {91, 160},   {360, 300},
                                    {3001, 26}, {1000, 257}, {1500, 1100}};
    int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
    int n_cases = (int)(sizeof ring_cases / sizeof ring_cases[0]);
    long runs = 0, failures = 0, changed_total = 0;
    for (int si = 0; si < n_shapes; si++) {
        int m = shapes[si][0], n = shapes[si][1];
        size_t nm = (size_t)m * n;
        float *orig = malloc(nm * sizeof(float)), *cpu = malloc(nm * sizeof(float)),
              *gpu = malloc(nm * sizeof(float));
        if (!orig || !cpu || !gpu) {
            fprintf(stderr, "gpu_check: out of memory\n");
            return 1;
        }
        for (int ci = 0; ci < n_cases; ci++) {
            const ring_case *rc = &ring_cases[ci];
            tomo_rings_params p;
            tomo_rings_params_default(&p);
            p.method = (tomo_rings_method)tomo_rings_parse_method(rc->method);
            p.size = rc->size;
            p.dim = rc->dim;
            p.la_size = rc->la_size;
            p.sm_size = rc->sm_size;
            p.snr = rc->snr;
            p.drop_ratio = rc->drop_ratio;
            resolve_rings(&p, n);
            char text[256];
            tomo_rings_params_text(&p, n, text, sizeof text);
            tomo_error err;
            tomo_error_clear(&err);
            ring_pipe rp;
            if (!tomo_cuda_supports_rings(&p) || ring_pipe_open(&rp, n, m, &p, &err) < 0) {
                printf("%4d x %-4d %s: FAIL: %s\n", m, n, text,
                       err.message[0] ? err.message : "the GPU does not take it");
                failures++;
                continue;
            }
            long changed[DATA_KINDS], differ[DATA_KINDS];
            int bad = 0;
            for (int kind = 0; kind < DATA_KINDS; kind++) {
                case_sinogram(orig, m, n, kind, 1000003u * (uint64_t)(si + 1) + 7u * (uint64_t)ci);
                memcpy(cpu, orig, nm * sizeof(float));
                memcpy(gpu, orig, nm * sizeof(float));
                double ms;
                if (cpu_rings(&p, cpu, m, n, &err) < 0 ||
                    tomo_cuda_bench_rings(rp.cuda, gpu, 1, &ms, &err) < 0) {
                    printf("%4d x %-4d %s, %s: FAIL: %s\n", m, n, text, data_names[kind],
                           err.message);
                    bad = 1;
                    changed[kind] = differ[kind] = -1;
                    continue;
                }
                changed[kind] = differ[kind] = 0;
                long first = -1;
                for (size_t i = 0; i < nm; i++) {
                    changed[kind] += cpu[i] != orig[i];
                    if (gpu[i] != cpu[i]) {
                        if (first < 0)
                            first = (long)i;
                        differ[kind]++;
                    }
                }
                changed_total += changed[kind];
                runs++;
                if (differ[kind]) {
                    bad = 1;
                    printf("%4d x %-4d %s, %s: first difference at projection %ld, column %ld: "
                           "GPU %.9g, CPU %.9g (input %.9g)\n",
                           m, n, text, data_names[kind], first / n, first % n, gpu[first],
                           cpu[first], orig[first]);
                }
            }
            ring_pipe_close(&rp);
            printf("%4d x %-4d %-75s changed %ld/%ld/%ld/%ld, differing %ld/%ld/%ld/%ld: %s\n", m,
                   n, text, changed[0], changed[1], changed[2], changed[3], differ[0], differ[1],
                   differ[2], differ[3], bad ? "FAIL" : "ok");
            failures += bad;
        }
        free(orig);
        free(cpu);
        free(gpu);
    }
    printf("rings-exact: %ld sinograms (changed / differing: smooth/ties/flat/signed data), %ld "
           "values changed by the CPU, %ld failing cases: %s\n",
           runs, changed_total, failures, failures ? "FAIL" : "ok");
    return failures != 0;
}

static double wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/*
 * Each method of `methods` on the m x n synthetic sinogram: GPU time, CPU time on every core
 * (tomo_rings_remove_pool), and the result against the CPU's, which it must equal.
 */
static int bench_rings(int n, int m, int size, int repeat, const char *methods)
{
    size_t nm = (size_t)n * m;
    float *orig = malloc(nm * sizeof(float)), *sino = malloc(nm * sizeof(float)),
          *cpu = malloc(nm * sizeof(float));
    tomo_pool *pool = tomo_pool_create(0);
    if (!orig || !sino || !cpu || !pool) {
        fprintf(stderr, "gpu_check: out of memory\n");
        return 1;
    }
    rings_sinogram(orig, m, n);
    char name[128];
    tomo_cuda_device_count(name, sizeof name);
    printf("ring removal of a %d x %d sinogram (projections x columns), %s, GPU best of %d "
           "(kernels only), CPU %d threads\n",
           m, n, name, repeat, tomo_pool_size(pool));
    int failed = 0;
    char list[256];
    snprintf(list, sizeof list, "%s", methods);
    for (char *save = NULL, *method = strtok_r(list, ",", &save); method;
         method = strtok_r(NULL, ",", &save)) {
        tomo_rings_params p;
        tomo_rings_params_default(&p);
        int mt = tomo_rings_parse_method(method);
        if (mt <= 0) {
            fprintf(stderr, "gpu_check: unknown ring removal method %s\n", method);
            return 2;
        }
        p.method = (tomo_rings_method)mt;
        p.size = size;
        resolve_rings(&p, n);
        char text[256];
        tomo_rings_params_text(&p, n, text, sizeof text);
        tomo_error err;
        tomo_error_clear(&err);
        memcpy(cpu, orig, nm * sizeof(float));
        double t0 = wall_ms();
        if (tomo_rings_remove_pool(&p, cpu, m, n, pool, &err) < 0) {
            fprintf(stderr, "gpu_check: %s\n", err.message);
            return 1;
        }
        double cpu_ms = wall_ms() - t0;
        ring_pipe rp;
        double ms;
        memcpy(sino, orig, nm * sizeof(float));
        if (ring_pipe_open(&rp, n, m, &p, &err) < 0 ||
            tomo_cuda_bench_rings(rp.cuda, sino, repeat, &ms, &err) < 0) {
            fprintf(stderr, "gpu_check: %s: %s\n", text, err.message);
            return 1;
        }
        ring_pipe_close(&rp);
        size_t differ = 0, changed = 0;
        for (size_t i = 0; i < nm; i++) {
            differ += sino[i] != cpu[i];
            changed += cpu[i] != orig[i];
        }
        printf("%-6s GPU %7.2f ms   CPU %8.1f ms   values changed %zu, differing from the CPU's "
               "%zu: %s   (%s)\n",
               method, ms, cpu_ms, changed, differ, differ ? "FAIL" : "ok", text);
        fflush(stdout);
        failed |= differ != 0;
    }
    tomo_pool_destroy(pool);
    free(orig);
    free(sino);
    free(cpu);
    return failed;
}

int main(int argc, char **argv)
{
    char name[128];
    if (tomo_cuda_device_count(name, sizeof name) == 0) {
        fprintf(stderr, "gpu_check: no usable GPU (%s)\n", name);
        return 77;
    }
    if (argc >= 3 && strcmp(argv[1], "parity") == 0)
        return parity(argv[2], argc > 3 ? atoi(argv[3]) : -1, argc > 4 ? atoi(argv[4]) : 8,
                      argc > 5 ? argv[5] : "sort");
    if (argc >= 2 && strcmp(argv[1], "rings-exact") == 0)
        return rings_exact();
    if (argc >= 4 && strcmp(argv[1], "bench-rings") == 0)
        return bench_rings(atoi(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 21,
                           argc > 5 ? atoi(argv[5]) : 5,
                           argc > 6 ? argv[6] : "sort,all,large,dead");
    if (argc >= 4 && strcmp(argv[1], "bench-bp") == 0)
        return bench_bp(atoi(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 3);
    fprintf(stderr, "usage: gpu_check parity SCAN [Z0 NZ [sort|all|large|dead]] | rings-exact | "
                    "bench-rings N M [SIZE [REPEAT [METHODS]]] | bench-bp N M [REPEAT]\n");
    return 2;
}
