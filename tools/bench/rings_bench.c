/*
 * tools/bench/rings_bench.c - milliseconds per sinogram of ring removal on the CPU.
 *
 *   rings_bench [--rows M] [--width N] [--threads T] [--repeat R] [--methods LIST]
 *
 * Defaults: M = 3600 projections, N = 4432 columns, T = all CPUs, R = 3 (best of R),
 * LIST = sort,all (also: sort2 for dim = 2, large, dead). The sinogram is synthetic: the
 * sinusoids of a few dozen off-centre discs, Poisson-like noise and stripes of every kind
 * (offsets, gains, dead and partial columns), made with a fixed seed. For each method it
 * prints the time of
 *   1 thread       tomo_rings_remove() on one sinogram, wall and CPU time (the CPU time of
 *                  a single thread does not count the time other processes take from it),
 *   T threads      tomo_rings_remove_pool() spreading one sinogram over T threads,
 *   T sinograms    T sinograms at once, one per thread (the engine's chunk mode), as the
 *                  time per sinogram (wall time / T).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../../common/pool.h"
#include "../../recon/rings.h"
#include "rings_sinogram.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct chunk_task {
    const tomo_rings_params *p;
    float *sinos;
    void **scratch;
    int M, N;
};

static void chunk_run(void *arg, int task, int slot)
{
    struct chunk_task *t = arg;
    tomo_rings_remove(t->p, t->sinos + (size_t)task * t->M * t->N, t->M, t->N, t->scratch[slot],
                      NULL);
}

int main(int argc, char **argv)
{
    int M = 3600, N = 4432, threads = 0, repeat = 3;
    const char *methods = "sort,all";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--rows") == 0)
            M = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--width") == 0)
            N = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--repeat") == 0)
            repeat = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--methods") == 0)
            methods = argv[i + 1];
        else {
            fprintf(stderr, "usage: rings_bench [--rows M] [--width N] [--threads T] "
                            "[--repeat R] [--methods sort,sort2,all,large,dead]\n");
            return 2;
        }
    }
    if (M < 1 || N < 1 || repeat < 1) {
        fprintf(stderr, "rings_bench: bad sizes\n");
        return 2;
    }
    tomo_pool *pool = tomo_pool_create(threads);
    if (!pool)
        return 1;
    int T = tomo_pool_size(pool);
    size_t n = (size_t)M * N;
    float *orig = malloc(n * sizeof *orig), *work = malloc(n * sizeof *work);
    float *sinos = malloc((size_t)T * n * sizeof *sinos);
    if (!orig || !work || !sinos) {
        fprintf(stderr, "rings_bench: out of memory\n");
        return 1;
    }
    rings_sinogram(orig, M, N);
    printf("sinogram %d x %d (projections x columns), %d threads, best of %d\n", M, N, T, repeat);
    printf("%-8s %12s %12s %12s %14s\n", "method", "1 thread", "(CPU time)", "T threads",
           "T sinograms");

    char list[256];
    snprintf(list, sizeof list, "%s", methods);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        tomo_rings_params p;
        tomo_rings_params_default(&p);
        if (strcmp(name, "sort2") == 0) {
            p.method = TOMO_RINGS_SORT;
            p.dim = 2;
        } else {
            int m = tomo_rings_parse_method(name);
            if (m <= 0) {
                fprintf(stderr, "rings_bench: unknown method %s\n", name);
                return 2;
            }
            p.method = (tomo_rings_method)m;
        }
        size_t bytes = tomo_rings_scratch_size(&p, M, N);
        void **scratch = calloc((size_t)T, sizeof *scratch);
        for (int s = 0; s < T; s++)
            scratch[s] = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        double best1 = 1e30, bestCpu = 1e30, bestT = 1e30, bestC = 1e30;
        for (int r = 0; r < repeat; r++) {
            memcpy(work, orig, n * sizeof *work);
            double t0 = now(), c0 = cpu_now();
            tomo_rings_remove(&p, work, M, N, scratch[0], NULL);
            double t1 = now() - t0, c1 = cpu_now() - c0;
            best1 = t1 < best1 ? t1 : best1;
            bestCpu = c1 < bestCpu ? c1 : bestCpu;

            memcpy(work, orig, n * sizeof *work);
            t0 = now();
            tomo_rings_remove_pool(&p, work, M, N, pool, NULL);
            t1 = now() - t0;
            bestT = t1 < bestT ? t1 : bestT;

            for (int s = 0; s < T; s++)
                memcpy(sinos + (size_t)s * n, orig, n * sizeof *sinos);
            struct chunk_task ct = {&p, sinos, scratch, M, N};
            t0 = now();
            tomo_pool_run(pool, T, chunk_run, &ct);
            t1 = (now() - t0) / T;
            bestC = t1 < bestC ? t1 : bestC;
        }
        printf("%-8s %9.1f ms %9.1f ms %9.1f ms %11.1f ms   (scratch %.1f MB per thread)\n", name,
               1e3 * best1, 1e3 * bestCpu, 1e3 * bestT, 1e3 * bestC, bytes / 1048576.0);
        fflush(stdout);
        for (int s = 0; s < T; s++)
            free(scratch[s]);
        free(scratch);
    }
    free(orig);
    free(work);
    free(sinos);
    tomo_pool_destroy(pool);
    return 0;
}
