/*
 * recon/cuda.h - the reconstruction pipeline on an NVIDIA GPU.
 *
 * The same steps as the CPU reference (prep.h, filter.h, backproject.h), all on the device:
 * flat-field correction with flats interpolated in time, the low-transmission guard,
 * black-line replacement and -log; cuFFT filtering with the CPU filter's spectrum, padded
 * length and edge padding; back-projection with the CPU plan's angles, weights and centre.
 *
 * Back-projection has two precisions:
 *   TOMO_PRECISION_EXACT  fp32 tables and arithmetic in the CPU's order of operations: slices
 *                         agree with the CPU's to float rounding (relative RMS ~1e-7);
 *   TOMO_PRECISION_FAST   adjacent slices packed by eight in fp16 (value, slope) pairs, two
 *                         16-byte loads per view and pixel for all eight, fp32 accumulation:
 *                         more than twice as fast, relative RMS ~1e-4.
 *
 * Everything is allocated once in tomo_cuda_create(): device buffers for the largest chunk,
 * pinned host buffers for the raw rows and the slices, cuFFT plans and three streams, so that
 * uploads, computation and downloads of successive groups of slices overlap.
 *
 * A chunk is begun (tomo_cuda_begin: its work is queued and the call returns) and finished
 * (tomo_cuda_finish: waits and copies the slices out). The raw rows are uploaded first, at
 * the bus's speed, so the pinned raw buffer is free long before the chunk is computed: once
 * tomo_cuda_raw_wait() returns, another thread may read the next chunk's rows into it while
 * the GPU works.
 *
 * Built only when meson finds nvcc (-Dcuda=auto|enabled); otherwise every function reports
 * that the program was built without CUDA, and tomo_cuda_device_count() returns 0.
 */
#ifndef TOMO_CUDA_H
#define TOMO_CUDA_H

#include <stddef.h>

#include "../common/error.h"
#include "../common/pool.h"
#include "backproject.h"
#include "filter.h"
#include "prep.h"
#include "rings.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Adjacent slices the GPU processes together; chunks of a multiple of this keep it busy. */
#define TOMO_CUDA_GROUP 8

typedef enum tomo_precision {
    TOMO_PRECISION_FAST = 0,
    TOMO_PRECISION_EXACT = 1,
} tomo_precision;

/* "fast" or "exact". */
const char *tomo_precision_name(tomo_precision precision);

/*
 * Number of usable CUDA devices; 0 when there is none, when the driver is missing or when
 * built without CUDA. `name` (may be NULL) receives device 0's name or the reason there is none.
 */
int tomo_cuda_device_count(char *name, size_t name_size);

/* What a device pipeline is built for: fixed for the life of a mount. */
typedef struct tomo_cuda_config {
    int device;        /* CUDA device index */
    int width;         /* N, detector columns */
    int n_proj;        /* M, projections in every sinogram */
    int n_flat_groups; /* flat groups of the scan */
    int max_rows;      /* most slices in one chunk */
    tomo_precision precision;
    tomo_prep_params prep;
    const tomo_filter *filter; /* the CPU filter whose spectrum and padding are used */
    const tomo_bp_plan *plan;  /* the CPU back-projection geometry */
    tomo_pool *copy_pool;      /* threads that copy finished slices out (NULL: the caller) */
    tomo_rings_params rings;   /* NONE, or a method within tomo_cuda_supports_rings() */
} tomo_cuda_config;

/*
 * Whether the GPU pipeline can remove rings with these (resolved) parameters: algorithm 3
 * (SORT, and the last step of ALL) with a median of at most 127 along the detector, or at
 * most 15 x 15 (dim 2); dead stripes (DEAD, ALL) with any la_size; large stripes (LARGE, ALL)
 * with la_size at most 127. The result equals the CPU's bit for bit (stable segmented sorts,
 * exact medians, the CPU's double sums in the CPU's order).
 */
int tomo_cuda_supports_rings(const tomo_rings_params *rings);

typedef struct tomo_cuda tomo_cuda;

/*
 * Creates the device pipeline: selects the device, allocates every buffer and plan.
 * On failure (no device, out of device memory) returns a negative code with err set.
 */
int tomo_cuda_create(const tomo_cuda_config *config, tomo_cuda **out, tomo_error *err);

/*
 * Pinned host buffer for the raw rows of a chunk: max_rows * n_proj * width floats, laid out
 * [row][projection][column]. Fill it, then call tomo_cuda_begin (or tomo_cuda_reconstruct).
 * After a begin it must not be written until tomo_cuda_raw_wait() has returned.
 */
float *tomo_cuda_raw_buffer(tomo_cuda *cuda);

/* The reference rows a chunk needs, in host memory. */
typedef struct tomo_cuda_refs {
    const double *dark;        /* [nz][width] mean dark counts */
    const double *flat_groups; /* [n_flat_groups][.][width] mean counts of each flat group */
    const int *flat_a;         /* [n_proj] flat interpolation: I0 = (1-w) G[a] + w G[b] */
    const int *flat_b;         /* [n_proj] */
    const double *flat_w;      /* [n_proj] */
    long flat_stride;          /* doubles from one flat group to the next; 0 means nz * width */
} tomo_cuda_refs;

/*
 * Begins the reconstruction of `nz` adjacent slices whose raw rows are rows [first,
 * first + nz) of the raw buffer (first + nz <= max_rows): uploads the reference rows, queues
 * every upload, kernel and download, and returns without waiting for them. `refs` may be
 * released on return. Exactly one tomo_cuda_finish() must follow before the next begin.
 */
int tomo_cuda_begin(tomo_cuda *cuda, int first, int nz, const tomo_cuda_refs *refs,
                    tomo_error *err);

/*
 * Waits until the raw rows of the chunk begun last have been uploaded (at once when none
 * was): the raw buffer may then be filled with the next chunk's rows, from any thread, while
 * the GPU computes.
 */
int tomo_cuda_raw_wait(tomo_cuda *cuda, tomo_error *err);

/*
 * Finishes the chunk begun last: images[i] receives slice i (size * size floats, any host
 * memory); each group of slices is copied out while the GPU works on the next. `stats` (may
 * be NULL) is incremented like tomo_prep_rows does. On failure nothing is left running.
 */
int tomo_cuda_finish(tomo_cuda *cuda, float *const *images, tomo_prep_stats *stats,
                     tomo_error *err);

/*
 * tomo_cuda_begin (from row 0 of the raw buffer) and tomo_cuda_finish in one call: `nz`
 * adjacent slices (nz <= max_rows) from the raw rows in the raw buffer and the reference rows.
 */
int tomo_cuda_reconstruct(tomo_cuda *cuda, int nz, const tomo_cuda_refs *refs, float *const *images,
                          tomo_prep_stats *stats, tomo_error *err);

/* Releases device memory, plans, streams and pinned buffers. NULL allowed. */
void tomo_cuda_destroy(tomo_cuda *cuda);

/*
 * For benchmarks: back-projects nz already filtered sinograms (host, [nz][n_proj][width])
 * `repeat` times and returns the best time per launch in milliseconds (kernel only).
 */
int tomo_cuda_bench_backproject(tomo_cuda *cuda, const float *filtered, int nz, int repeat,
                                float *images, double *ms, tomo_error *err);

/*
 * For benchmarks: the pipeline's ring removal (config.rings) on one n_proj x width sinogram
 * (host), `repeat` times; the best time in milliseconds (kernels only) and the result in `sino`.
 */
int tomo_cuda_bench_rings(tomo_cuda *cuda, float *sino, int repeat, double *ms, tomo_error *err);

#ifdef __cplusplus
}
#endif

#endif
