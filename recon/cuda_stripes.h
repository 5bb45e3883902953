/*
 * recon/cuda_stripes.h - Vo's dead-stripe (6) and large-stripe (5) removal on the GPU: the
 * steps of rings=all, large and dead that come before algorithm 3 in the CUDA pipeline's ring
 * stage (cuda.cu). Internal to the CUDA backend; C++ (nvcc) only.
 *
 * The result equals tomo_rings_remove() (rings.h) bit for bit: every value is computed by the
 * CPU's operations in the CPU's order. Column sorts are stable (ties kept in row order, as the
 * CPU's radix sort does); medians are selections, so they are exact whatever the order of the
 * comparisons; the column means, variation sums, background mean and line fit are summed in
 * double sequentially in the CPU's order, with no fused multiply-add. Stripe detection
 * (algorithm 4) and the decisions that follow it (skip the dead-stripe fill, which columns to
 * replace) run on the device too, so a sinogram goes through the whole chain without waiting
 * for the host.
 *
 * Sizes: any number of projections and columns (within the int range of M x N that the CUB
 * sort takes). Algorithm 6 takes any la_size; algorithm 5 takes la_size up to
 * TOMO_CUDA_STRIPES_MAX_LA, whose median across the detector is a sorting network in registers.
 *
 * Work per sinogram of M projections and N columns:
 *   dead   variation sums (one pass over the sinogram), background median over the N sums,
 *          detection, linear fill of the flagged columns
 *   large  transposition, stable segmented sort of the N columns, la_size median across the
 *          detector of the sorted image, trimmed means, detection, division by the ratios and
 *          the smoothed values put back into the flagged columns
 *
 * With TOMOFS_RINGS_PROFILE=1 in the environment every step is timed (the stream is waited
 * for after each sinogram) and tomo_cuda_stripes_destroy() prints each step's best time to
 * stderr: for benchmarks (gpu_check bench-rings), not for a mount.
 */
#ifndef TOMO_CUDA_STRIPES_H
#define TOMO_CUDA_STRIPES_H

#include <stddef.h>

#include <cuda_runtime.h>

extern "C" {
#include "../common/error.h"
#include "rings.h"
}

/* Widest la_size that algorithm 5 runs on the GPU. */
#define TOMO_CUDA_STRIPES_MAX_LA 127

/*
 * Device buffers for the column sort, owned by the caller (the pipeline's algorithm 3 uses
 * the same ones; they are free between ring steps). Each of the four arrays holds M x N
 * values; `offsets` holds the N + 1 segment starts c x M; `temp` is CUB's
 * DeviceSegmentedSort::StableSortPairs storage for M x N items in N segments.
 */
typedef struct tomo_cuda_sort_space {
    float *keys, *keys_sorted;
    int *rows, *rows_sorted;
    const int *offsets;
    void *temp;
    size_t temp_bytes;
} tomo_cuda_sort_space;

/*
 * The column sort of algorithms 3 and 5 on `stream`, in two steps: tomo_cuda_columns() writes
 * the device sinogram `sino` (n_rows x width, row-major) column by column into space->keys,
 * and each value's row into space->rows; tomo_cuda_sort_columns() then sorts every column
 * stably into space->keys_sorted and space->rows_sorted (rank r of column x at x n_rows + r).
 */
void tomo_cuda_columns(const tomo_cuda_sort_space *space, const float *sino, int n_rows, int width,
                       cudaStream_t stream);
void tomo_cuda_sort_columns(const tomo_cuda_sort_space *space, int n_rows, int width,
                            cudaStream_t stream);

/*
 * Ascending sort of w[0..P) by a bitonic network (P a power of two). Every index is a
 * compile-time constant, so w stays in registers.
 */
template <int P> __device__ __forceinline__ void network_sort(float (&w)[P])
{
#pragma unroll
    for (int k = 2; k <= P; k <<= 1)
#pragma unroll
        for (int j = k >> 1; j > 0; j >>= 1)
#pragma unroll
            for (int i = 0; i < P; i++) {
                int l = i ^ j;
                if (l > i) {
                    float a = w[i], b = w[l];
                    bool up = (i & k) == 0;
                    w[i] = up ? fminf(a, b) : fmaxf(a, b);
                    w[l] = up ? fmaxf(a, b) : fminf(a, b);
                }
            }
}

typedef struct tomo_cuda_stripes tomo_cuda_stripes;

/*
 * Whether the GPU runs the dead- and large-stripe steps of these (validated) parameters:
 * always for NONE, SORT and DEAD; for ALL and LARGE when la_size <= TOMO_CUDA_STRIPES_MAX_LA.
 * Says nothing about the final algorithm 3 step of ALL (cuda.cu's limits).
 */
int tomo_cuda_stripes_supports(const tomo_rings_params *p);

/*
 * Prepares the steps of p->method (ALL, LARGE or DEAD) for sinograms of n_rows x width on the
 * current device: allocates the per-column buffers and borrows `space` (not copied; must
 * outlive the object). Returns 0 or a negative TOMO_E_* code with err set.
 */
int tomo_cuda_stripes_create(const tomo_rings_params *p, int n_rows, int width,
                             const tomo_cuda_sort_space *space, tomo_cuda_stripes **out,
                             tomo_error *err);

/*
 * Queues algorithm 6 (DEAD, ALL) and then algorithm 5 (LARGE, ALL) on the device sinogram
 * `sino` (n_rows x width floats, row-major, modified in place) on `stream`. Returns without
 * waiting; a launch failure is left for cudaGetLastError().
 */
void tomo_cuda_stripes_run(tomo_cuda_stripes *s, float *sino, cudaStream_t stream);

/* Frees the object's own buffers (not the borrowed ones). NULL allowed. */
void tomo_cuda_stripes_destroy(tomo_cuda_stripes *s);

#endif
