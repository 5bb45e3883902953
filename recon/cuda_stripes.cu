/*
 * recon/cuda_stripes.cu - Vo's algorithms 6 (dead stripes) and 5 (large stripes) on the GPU,
 * equal to recon/rings.c bit for bit (see cuda_stripes.h).
 *
 * Each kernel mirrors one loop of rings.c and says which. Where the CPU sums in double in a
 * fixed order (variation sums, trimmed means, the background mean, the line fit of algorithm
 * 4), the terms may be computed in parallel but are added by one thread per sum in the CPU's
 * order, with __dadd_rn and friends so that nvcc fuses nothing. Medians and sorts only move
 * values, so their order of comparisons does not matter; a median of -0.0 is returned as +0.0
 * as the CPU's key mapping does.
 *
 * The decisions of the CPU (no variation anywhere: skip; no column or too many columns
 * flagged: skip the fill) are taken on the device and read by the kernels that follow, so the
 * host queues the whole chain without waiting.
 */
#include "cuda_stripes.h"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Dead stripes: length of the uniform filter along the angles (rings.c DEAD_SMOOTH). */
#define DEAD_SMOOTH 10

/* Dead-stripe variation: rows whose terms are computed together before they are summed, by
   blocks of VARIATION_COLS columns x VARIATION_ROWS threads. */
#define VARIATION_TILE    128
#define VARIATION_COLS    16
#define VARIATION_ROWS    16
#define VARIATION_THREADS (VARIATION_COLS * VARIATION_ROWS)
#define VARIATION_RUN     (VARIATION_TILE / VARIATION_ROWS) /* adjacent rows per thread */

/* Per-column kernels over every row: rows per grid (the grid's y limit), looped beyond. */
#define MAX_GRID_ROWS 65535

/* Steps timed with TOMOFS_RINGS_PROFILE=1 (one sinogram goes through at most this many). */
#define MAX_STEPS 16

/* Trimmed means: ranks staged through shared memory at a time. */
#define MEAN_TILE 64

/* Single-block kernels (background mean, detection): threads. */
#define ONE_BLOCK 1024

struct tomo_cuda_stripes {
    tomo_rings_params p;
    int M, N;
    tomo_cuda_sort_space space;
    double *list;                /* [N] the column statistic: variation sums (6) or ratios (5) */
    double *bck;                 /* [N] dead stripes: background (median of the variation sums) */
    double *sorted;              /* [N] the statistic sorted, for detection */
    unsigned char *mask, *mask2; /* [N] detected, and detected and widened by one column */
    float *factf;                /* [N] large stripes: the ratio each column is divided by */
    int *left, *right;           /* [N] dead stripes: nearest unmasked columns of a masked one */
    int *skip;                   /* [1] dead stripes: 1 = leave the sinogram as it is */
    void *sort_temp;             /* CUB radix sort of N doubles */
    size_t sort_temp_bytes;
    /* TOMOFS_RINGS_PROFILE=1: an event after every step; the best time of each step */
    int profile, n_steps;
    cudaEvent_t events[MAX_STEPS + 1];
    const char *step_names[MAX_STEPS];
    double step_ms[MAX_STEPS];
    long runs;
};

/* Profiling: marks the end of a step. */
static void step(tomo_cuda_stripes *s, const char *name, cudaStream_t stream)
{
    if (!s->profile || s->n_steps >= MAX_STEPS)
        return;
    s->step_names[s->n_steps++] = name;
    cudaEventRecord(s->events[s->n_steps], stream);
}

static unsigned blocks_for(long n, int threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* SciPy's 'reflect' extension (half-sample symmetric), repeated for any distance. */
static __device__ __forceinline__ int reflect_index(long i, int n)
{
    if (i >= 0 && i < n)
        return (int)i;
    long period = 2L * n;
    i %= period;
    if (i < 0)
        i += period;
    return (int)(i < n ? i : period - 1 - i);
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 4 and what follows it                                                             */

/*
 * detect_stripes() of rings.c on list[0..n) with `sorted` its ascending copy, then the
 * dilation by one column. Dead stripes (dead != 0) also clear the first and last two columns,
 * decide whether to fill (*skip) and find each masked column's nearest unmasked neighbours;
 * large stripes compute the float ratio each column is divided by. One block.
 */
static __global__ void __launch_bounds__(ONE_BLOCK)
    detect_kernel(const double *list, const double *sorted, int n, double snr, int dead, int *skip,
                  unsigned char *mask, unsigned char *mask2, float *factf, int *left, int *right)
{
    __shared__ int use_hi, use_lo, count;
    __shared__ double cut_hi, cut_lo, mx, my;
    __shared__ double t1[ONE_BLOCK], t2[ONE_BLOCK]; /* terms of one chunk of the sums */
    if (dead && *skip)
        return; /* no variation anywhere: nothing can be called dead */
    int ndrop = (int)(0.25 * (double)n);
    int a = ndrop, b = n - ndrop - 1; /* fitted indices [a, b) of the sorted list */
    if (threadIdx.x == 0) {
        use_hi = use_lo = 0;
        count = 0;
    }
    if (n >= 1 && b - a >= 2) {
        /* least squares from centred sums, each added in index order by one thread; the
           terms of a chunk are computed by all threads first */
        double sx = 0, sy = 0, sxy = 0, sxx = 0;
        for (int i0 = a; i0 < b; i0 += ONE_BLOCK) {
            int len = b - i0 < ONE_BLOCK ? b - i0 : ONE_BLOCK;
            if ((int)threadIdx.x < len)
                t1[threadIdx.x] = sorted[i0 + threadIdx.x];
            __syncthreads();
            if (threadIdx.x == 0) {
#pragma unroll 8
                for (int k = 0; k < len; k++) {
                    sx = __dadd_rn(sx, (double)(i0 + k));
                    sy = __dadd_rn(sy, t1[k]);
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            mx = __ddiv_rn(sx, (double)(b - a));
            my = __ddiv_rn(sy, (double)(b - a));
        }
        __syncthreads();
        for (int i0 = a; i0 < b; i0 += ONE_BLOCK) {
            int len = b - i0 < ONE_BLOCK ? b - i0 : ONE_BLOCK;
            if ((int)threadIdx.x < len) {
                int i = i0 + threadIdx.x;
                double dx = __dsub_rn((double)i, mx);
                t1[threadIdx.x] = __dmul_rn(dx, __dsub_rn(sorted[i], my));
                t2[threadIdx.x] = __dmul_rn(dx, dx);
            }
            __syncthreads();
            if (threadIdx.x == 0) {
#pragma unroll 8
                for (int k = 0; k < len; k++) {
                    sxy = __dadd_rn(sxy, t1[k]);
                    sxx = __dadd_rn(sxx, t2[k]);
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            double slope = __ddiv_rn(sxy, sxx);
            double intercept = __dsub_rn(my, __dmul_rn(slope, mx));
            double y_end = __dadd_rn(intercept, __dmul_rn(slope, (double)(n - 1)));
            double noise = fabs(__dsub_rn(y_end, intercept));
            double lo = sorted[0], hi = sorted[n - 1];
            double half = __dmul_rn(__dmul_rn(0.5, snr), noise);
            if (noise >= 1e-5) {
                if (__ddiv_rn(__dsub_rn(hi, y_end), noise) >= snr) {
                    use_hi = 1;
                    cut_hi = __dadd_rn(y_end, half);
                }
                if (__ddiv_rn(__dsub_rn(intercept, lo), noise) >= snr) {
                    use_lo = 1;
                    cut_lo = __dsub_rn(intercept, half);
                }
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        mask[i] = (use_hi && list[i] > cut_hi) || (use_lo && list[i] <= cut_lo);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int m = mask[i] || (i > 0 && mask[i - 1]) || (i + 1 < n && mask[i + 1]);
        if (dead && (i < 2 || i >= n - 2))
            m = 0;
        mask2[i] = (unsigned char)m;
        if (m)
            atomicAdd(&count, 1);
        if (!dead) {
            float f = __double2float_rn(list[i]);
            factf[i] = (f != 0 && isfinite(f)) ? f : 1.0f;
        }
    }
    __syncthreads();
    if (!dead)
        return;
    if (threadIdx.x == 0)
        *skip = count == 0 || 3L * count >= n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (mask2[i]) {
            int a = i - 1, b = i + 1;
            while (mask2[a])
                a--;
            while (mask2[b])
                b++;
            left[i] = a;
            right[i] = b;
        }
}

/* The statistic sorted ascending into s->sorted (CUB radix sort of doubles). */
static void sort_list(tomo_cuda_stripes *s, cudaStream_t stream)
{
    size_t bytes = s->sort_temp_bytes;
    cub::DeviceRadixSort::SortKeys(s->sort_temp, bytes, s->list, s->sorted, s->N, 0,
                                   (int)(8 * sizeof(double)), stream);
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 6: dead stripes                                                                   */

/*
 * list[j] = sum over r of |S[r][j] - (sum of S[reflect(r - 5 .. r + 4)][j]) / 10| (rings.c
 * dead_variation_block). Blocks of VARIATION_COLS columns x VARIATION_ROWS threads: the terms
 * of VARIATION_TILE rows are computed by all threads (each VARIATION_RUN adjacent rows, from
 * one window of loads), then one thread per column adds them in row order.
 */
static __global__ void __launch_bounds__(VARIATION_THREADS)
    dead_variation_kernel(const float *sino, int M, int N, double *list)
{
    __shared__ double term[VARIATION_TILE][VARIATION_COLS + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int j = blockIdx.x * VARIATION_COLS + tx;
    const int half = DEAD_SMOOTH / 2;
    double diff = 0;
    for (int r0 = 0; r0 < M; r0 += VARIATION_TILE) {
        int rn = M - r0 < VARIATION_TILE ? M - r0 : VARIATION_TILE;
        int k0 = ty * VARIATION_RUN;
        if (j < N && k0 < rn) {
            /* w[q] = S[reflect(r0 + k0 + q - 5)][j]: the windows of rows r0 + k0 .. + RUN - 1 */
            double w[VARIATION_RUN + DEAD_SMOOTH - 1];
#pragma unroll
            for (int q = 0; q < VARIATION_RUN + DEAD_SMOOTH - 1; q++)
                w[q] = (double)sino[(long)reflect_index((long)r0 + k0 + q - half, M) * N + j];
#pragma unroll
            for (int i = 0; i < VARIATION_RUN; i++) {
                double s = 0;
#pragma unroll
                for (int t = 0; t < DEAD_SMOOTH; t++)
                    s = __dadd_rn(s, w[i + t]);
                if (k0 + i < rn)
                    term[k0 + i][tx] =
                        fabs(__dsub_rn(w[i + half], __ddiv_rn(s, (double)DEAD_SMOOTH)));
            }
        }
        __syncthreads();
        if (ty == 0 && j < N) {
#pragma unroll 8
            for (int k = 0; k < rn; k++)
                diff = __dadd_rn(diff, term[k][tx]);
        }
        __syncthreads();
    }
    if (ty == 0 && j < N)
        list[j] = diff;
}

/*
 * bck[j] = the value of rank size/2 among list[reflect(j - size/2 + o)], o < size (rings.c
 * remove_dead: qsort of the window). One block per column; a value is the median when fewer
 * than rank + 1 values are below it and more than rank are at or below it.
 */
static __global__ void dead_background_kernel(const double *list, int N, int size, double *bck)
{
    extern __shared__ double win[];
    int j = blockIdx.x, hl = size / 2, rank = size / 2;
    for (int o = threadIdx.x; o < size; o += blockDim.x)
        win[o] = list[reflect_index((long)j - hl + o, N)];
    __syncthreads();
    for (int q = threadIdx.x; q < size; q += blockDim.x) {
        double v = win[q];
        int below = 0, at_or_below = 0;
        for (int o = 0; o < size; o++) {
            below += win[o] < v;
            at_or_below += win[o] <= v;
        }
        if (below <= rank && rank < at_or_below)
            bck[j] = v; /* every thread that finds it writes the same value */
    }
}

/*
 * mean_abs = sum of |bck[j]| in column order / N; *skip when it is not positive; otherwise
 * list[j] = list[j] / (bck[j] == 0 ? mean_abs : bck[j]) (rings.c remove_dead). One block.
 */
static __global__ void __launch_bounds__(ONE_BLOCK)
    dead_ratio_kernel(double *list, const double *bck, int N, int *skip)
{
    __shared__ double chunk[ONE_BLOCK];
    __shared__ double mean_abs;
    double sum = 0;
    for (int j0 = 0; j0 < N; j0 += ONE_BLOCK) {
        int j = j0 + threadIdx.x;
        if (j < N)
            chunk[threadIdx.x] = fabs(bck[j]);
        __syncthreads();
        int len = N - j0 < ONE_BLOCK ? N - j0 : ONE_BLOCK;
        if (threadIdx.x == 0) {
#pragma unroll 8
            for (int k = 0; k < len; k++)
                sum = __dadd_rn(sum, chunk[k]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        mean_abs = __ddiv_rn(sum, (double)N);
        *skip = !(mean_abs > 0);
    }
    __syncthreads();
    double m = mean_abs;
    if (!(m > 0))
        return;
    for (int j = threadIdx.x; j < N; j += blockDim.x)
        list[j] = __ddiv_rn(list[j], bck[j] == 0 ? m : bck[j]);
}

/*
 * Every masked column, row by row, by linear interpolation between its nearest unmasked
 * columns a and b, in double as rings.c does: (float)(slope (x - a) + fa).
 */
static __global__ void dead_fill_kernel(float *sino, int M, int N, const unsigned char *mask2,
                                        const int *left, const int *right, const int *skip)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= N || *skip || !mask2[x])
        return;
    int a = left[x], b = right[x];
    for (int r = blockIdx.y; r < M; r += gridDim.y) {
        float *row = sino + (long)r * N;
        double fa = row[a], fb = row[b];
        double slope = __ddiv_rn(__dsub_rn(fb, fa), (double)(b - a));
        row[x] = __double2float_rn(__dadd_rn(__dmul_rn(slope, (double)(x - a)), fa));
    }
}

/* Grid of per-column kernels: columns along x, rows along y (looped beyond the limit). */
static dim3 column_grid(int M, int N, int threads)
{
    return dim3(blocks_for(N, threads), M < MAX_GRID_ROWS ? M : MAX_GRID_ROWS);
}

static void remove_dead(tomo_cuda_stripes *s, float *sino, cudaStream_t stream)
{
    int M = s->M, N = s->N, size = s->p.la_size;
    dim3 vblock(VARIATION_COLS, VARIATION_ROWS);
    dead_variation_kernel<<<blocks_for(N, VARIATION_COLS), vblock, 0, stream>>>(sino, M, N,
                                                                                s->list);
    step(s, "dead: variation sums", stream);
    dead_background_kernel<<<N, 128, (size_t)size * sizeof(double), stream>>>(s->list, N, size,
                                                                              s->bck);
    step(s, "dead: background median", stream);
    dead_ratio_kernel<<<1, ONE_BLOCK, 0, stream>>>(s->list, s->bck, N, s->skip);
    step(s, "dead: ratios", stream);
    sort_list(s, stream);
    step(s, "dead: sort of the ratios", stream);
    detect_kernel<<<1, ONE_BLOCK, 0, stream>>>(s->list, s->sorted, N, s->p.snr, 1, s->skip, s->mask,
                                               s->mask2, s->factf, s->left, s->right);
    step(s, "dead: detection", stream);
    dead_fill_kernel<<<column_grid(M, N, 128), 128, 0, stream>>>(sino, M, N, s->mask2, s->left,
                                                                 s->right, s->skip);
    step(s, "dead: fill", stream);
}

/* ------------------------------------------------------------------------------------------ */
/* Algorithm 5: large stripes                                                                  */

/* Sinogram [M][N] -> column-major keys [N][M] and their rows, through a shared tile. */
static __global__ void columns_kernel(const float *sino, int M, int N, float *keys, int *rows)
{
    __shared__ float tile[32][33];
    int x = blockIdx.x * 32 + threadIdx.x, m = blockIdx.y * 32 + threadIdx.y;
    for (int k = 0; k < 32; k += 8)
        if (x < N && m + k < M)
            tile[threadIdx.y + k][threadIdx.x] = sino[(long)(m + k) * N + x];
    __syncthreads();
    int mm = blockIdx.y * 32 + threadIdx.x, xx = blockIdx.x * 32 + threadIdx.y;
    for (int k = 0; k < 32; k += 8)
        if (mm < M && xx + k < N) {
            keys[(long)(xx + k) * M + mm] = tile[threadIdx.x][threadIdx.y + k];
            rows[(long)(xx + k) * M + mm] = mm;
        }
}

void tomo_cuda_columns(const tomo_cuda_sort_space *sp, const float *sino, int M, int N,
                       cudaStream_t stream)
{
    columns_kernel<<<dim3(blocks_for(N, 32), blocks_for(M, 32)), dim3(32, 8), 0, stream>>>(
        sino, M, N, sp->keys, sp->rows);
}

void tomo_cuda_sort_columns(const tomo_cuda_sort_space *sp, int M, int N, cudaStream_t stream)
{
    size_t temp = sp->temp_bytes;
    cub::DeviceSegmentedSort::StableSortPairs(sp->temp, temp, sp->keys, sp->keys_sorted, sp->rows,
                                              sp->rows_sorted, M * N, N, sp->offsets,
                                              sp->offsets + 1, stream);
}

/*
 * The la_size median across the detector of the sorted image (rings.c median_block, dim 1):
 * smooth[x][r] = the value of rank size/2 among sorted[reflect(x - size/2 + q)][r], q < size.
 *
 * A thread takes one rank r and K adjacent columns x0 .. x0 + K - 1. Their windows share a
 * core of size - K + 1 columns, sorted once (network of P >= size - K + 1); each window adds
 * K - 1 more values (E >= K - 1), sorted per column. The value of rank k of the union of a
 * sorted A (the core) and a sorted B (the extra values) is
 *     min over i = 0 .. |B| of max(A[k - i], B[i - 1])        (B[-1] = -inf, A[<0] = -inf)
 * (the k + 1 smallest values are a prefix of A and a prefix of B), so only A[k - K + 1 .. k]
 * is needed. K = 1 is the plain median of one window. Needs size >= 2K - 1 when K > 1.
 */
template <int P, int K, int E>
static __global__ void __launch_bounds__(128)
    smooth_kernel(const float *sorted, int M, int N, int size, float *smooth)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    int x0 = blockIdx.y * K;
    if (r >= M)
        return;
    int hl = size / 2, hr = size - 1 - hl, rank = size / 2, core = size - K + 1;
    const float *at = sorted + r;
    float c[P];
#pragma unroll
    for (int q = 0; q < P; q++)
        c[q] = q < core ? at[(long)reflect_index((long)x0 + K - 1 - hl + q, N) * M] : INFINITY;
    network_sort<P>(c);
    float a[K]; /* a[d] = c[rank - (K - 1) + d] */
#pragma unroll
    for (int d = 0; d < K; d++) {
        int want = rank - (K - 1) + d;
        float v = want < 0 ? -INFINITY : INFINITY;
#pragma unroll
        for (int q = 0; q < P; q++)
            if (q == want)
                v = c[q];
        a[d] = v;
    }
    constexpr int X = K > 1 ? K - 1 : 1;
    float lhs[X], rhs[X]; /* columns x0 - hl + q and x0 + hr + 1 + q */
#pragma unroll
    for (int q = 0; q < K - 1; q++) {
        lhs[q] = at[(long)reflect_index((long)x0 - hl + q, N) * M];
        rhs[q] = at[(long)reflect_index((long)x0 + hr + 1 + q, N) * M];
    }
#pragma unroll
    for (int o = 0; o < K; o++) {
        if (x0 + o >= N)
            break;
        /* window of column x0 + o: the core, lhs[o .. K - 2] and rhs[0 .. o - 1] */
        float b[E];
#pragma unroll
        for (int q = 0; q < E; q++)
            b[q] = q < K - 1 - o ? lhs[o + q] : q < K - 1 ? rhs[q - (K - 1 - o)] : INFINITY;
        network_sort<E>(b);
        float best = a[K - 1];
#pragma unroll
        for (int i = 1; i < K; i++)
            best = fminf(best, fmaxf(a[K - 1 - i], b[i - 1]));
        smooth[(long)(x0 + o) * M + r] = __fadd_rn(best, 0.0f); /* -0.0 -> +0.0 */
    }
}

template <int P, int K, int E>
static void launch_smooth(const float *sorted, int M, int N, int size, float *smooth,
                          cudaStream_t stream)
{
    dim3 grid(blocks_for(M, 128), blocks_for(N, K));
    smooth_kernel<P, K, E><<<grid, 128, 0, stream>>>(sorted, M, N, size, smooth);
}

/*
 * Trimmed means over the ranks [r0, r1) of each sorted column and of its smoothed column,
 * summed in rank order (rings.c large_means_block), and their ratio (remove_large):
 * fact[j] = mean1 / mean2, or 1 when mean2 is 0. Blocks of 32 columns x 8 threads stage
 * MEAN_TILE ranks of their columns through shared memory; one thread per column adds them.
 */
static __global__ void __launch_bounds__(256)
    large_means_kernel(const float *sorted, const float *smooth, int M, int N, int r0, int r1,
                       double *fact)
{
    __shared__ float ta[32][MEAN_TILE + 1], tb[32][MEAN_TILE + 1];
    int tx = threadIdx.x, ty = threadIdx.y;
    int x0 = blockIdx.x * 32, j = x0 + tx;
    double s1 = 0, s2 = 0;
    for (int t0 = r0; t0 < r1; t0 += MEAN_TILE) {
        int tn = r1 - t0 < MEAN_TILE ? r1 - t0 : MEAN_TILE;
        for (int col = ty; col < 32; col += blockDim.y)
            if (x0 + col < N)
                for (int k = tx; k < tn; k += 32) {
                    long at = (long)(x0 + col) * M + t0 + k;
                    ta[col][k] = sorted[at];
                    tb[col][k] = smooth[at];
                }
        __syncthreads();
        if (ty == 0 && j < N) {
#pragma unroll 8
            for (int k = 0; k < tn; k++) {
                s1 = __dadd_rn(s1, (double)ta[tx][k]);
                s2 = __dadd_rn(s2, (double)tb[tx][k]);
            }
        }
        __syncthreads();
    }
    if (ty == 0 && j < N) {
        double n = (double)(r1 - r0);
        double mean1 = __ddiv_rn(s1, n), mean2 = __ddiv_rn(s2, n);
        fact[j] = mean2 != 0 ? __ddiv_rn(mean1, mean2) : 1.0;
    }
}

/* Masked columns: the smoothed value of each rank back in the row it came from. */
static __global__ void large_replace_kernel(float *sino, int M, int N, const float *smooth,
                                            const int *rows_sorted, const unsigned char *mask2)
{
    int x = blockIdx.x;
    if (!mask2[x])
        return;
    for (int r = threadIdx.x; r < M; r += blockDim.x) {
        long at = (long)x * M + r;
        sino[(long)rows_sorted[at] * N + x] = smooth[at];
    }
}

/* Other columns: divided by their ratio, kept within the float range (rings.c safe_div). */
static __global__ void large_divide_kernel(float *sino, int M, int N, const float *factf,
                                           const unsigned char *mask2)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= N || mask2[x])
        return;
    float f = factf[x];
    for (int r = blockIdx.y; r < M; r += gridDim.y) {
        long at = (long)r * N + x;
        float q = __fdiv_rn(sino[at], f);
        if (isinf(q))
            q = q > 0 ? FLT_MAX : -FLT_MAX;
        sino[at] = q;
    }
}

static void remove_large(tomo_cuda_stripes *s, float *sino, cudaStream_t stream)
{
    int M = s->M, N = s->N, size = s->p.la_size;
    const tomo_cuda_sort_space *sp = &s->space;
    tomo_cuda_columns(sp, sino, M, N, stream);
    step(s, "large: transposition", stream);
    tomo_cuda_sort_columns(sp, M, N, stream);
    step(s, "large: column sort", stream);
    /* the unsorted keys are no longer needed: they become the smoothed image */
    float *smooth = sp->keys;
    if (size < 16)
        launch_smooth<16, 1, 1>(sp->keys_sorted, M, N, size, smooth, stream);
    else if (size - 7 <= 32)
        launch_smooth<32, 8, 8>(sp->keys_sorted, M, N, size, smooth, stream);
    else if (size - 7 <= 64)
        launch_smooth<64, 8, 8>(sp->keys_sorted, M, N, size, smooth, stream);
    else
        launch_smooth<128, 8, 8>(sp->keys_sorted, M, N, size, smooth, stream);
    step(s, "large: median across the detector", stream);
    double drop = s->p.drop_ratio < 0 ? 0 : s->p.drop_ratio > 0.8 ? 0.8 : s->p.drop_ratio;
    int ndrop = (int)(0.5 * drop * M);
    large_means_kernel<<<blocks_for(N, 32), dim3(32, 8), 0, stream>>>(sp->keys_sorted, smooth, M, N,
                                                                      ndrop, M - ndrop, s->list);
    step(s, "large: trimmed means", stream);
    sort_list(s, stream);
    step(s, "large: sort of the ratios", stream);
    detect_kernel<<<1, ONE_BLOCK, 0, stream>>>(s->list, s->sorted, N, s->p.snr, 0, s->skip, s->mask,
                                               s->mask2, s->factf, s->left, s->right);
    step(s, "large: detection", stream);
    large_replace_kernel<<<N, 256, 0, stream>>>(sino, M, N, smooth, sp->rows_sorted, s->mask2);
    large_divide_kernel<<<column_grid(M, N, 128), 128, 0, stream>>>(sino, M, N, s->factf, s->mask2);
    step(s, "large: replace and divide", stream);
}

/* ------------------------------------------------------------------------------------------ */
/* Host side                                                                                   */

int tomo_cuda_stripes_supports(const tomo_rings_params *p)
{
    if (p->method == TOMO_RINGS_ALL || p->method == TOMO_RINGS_LARGE)
        return p->la_size >= 1 && p->la_size <= TOMO_CUDA_STRIPES_MAX_LA;
    if (p->method == TOMO_RINGS_DEAD)
        return p->la_size >= 1;
    return 1;
}

void tomo_cuda_stripes_destroy(tomo_cuda_stripes *s)
{
    if (!s)
        return;
    if (s->profile && s->runs > 0) {
        double total = 0;
        fprintf(stderr, "GPU dead and large stripes, %d x %d, best of %ld runs:\n", s->M, s->N,
                s->runs);
        for (int i = 0; i < s->n_steps; i++) {
            fprintf(stderr, "  %-36s %8.3f ms\n", s->step_names[i], s->step_ms[i]);
            total += s->step_ms[i];
        }
        fprintf(stderr, "  %-36s %8.3f ms\n", "sum of the steps", total);
    }
    for (int i = 0; i <= MAX_STEPS; i++)
        if (s->events[i])
            cudaEventDestroy(s->events[i]);
    void *device[] = {s->list,  s->bck,  s->sorted, s->mask, s->mask2,
                      s->factf, s->left, s->right,  s->skip, s->sort_temp};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
        cudaFree(device[i]);
    free(s);
}

int tomo_cuda_stripes_create(const tomo_rings_params *p, int n_rows, int width,
                             const tomo_cuda_sort_space *space, tomo_cuda_stripes **out,
                             tomo_error *err)
{
    *out = NULL;
    if (p->method != TOMO_RINGS_ALL && p->method != TOMO_RINGS_LARGE &&
        p->method != TOMO_RINGS_DEAD)
        return tomo_error_set(
            err, TOMO_E_INVALID, "GPU ring removal: rings=%s has no dead or large stripe step",
            tomo_rings_method_name(p->method) ? tomo_rings_method_name(p->method) : "?");
    if (!tomo_cuda_stripes_supports(p))
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "GPU ring removal: ring_la_size=%d is wider than the GPU's %d",
                              p->la_size, TOMO_CUDA_STRIPES_MAX_LA);
    if (n_rows < 1 || width < 1 || (long)n_rows * width > 0x7fffffffL)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "GPU ring removal: a %d x %d sinogram is out of range", n_rows,
                              width);
    tomo_cuda_stripes *s = (tomo_cuda_stripes *)calloc(1, sizeof *s);
    if (!s)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    s->p = *p;
    s->M = n_rows;
    s->N = width;
    s->space = *space;
    size_t N = (size_t)width;
    cudaError_t rc = cudaSuccess;
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->list, N * sizeof(double));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->bck, N * sizeof(double));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->sorted, N * sizeof(double));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->mask, N);
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->mask2, N);
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->factf, N * sizeof(float));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->left, N * sizeof(int));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->right, N * sizeof(int));
    if (rc == cudaSuccess)
        rc = cudaMalloc((void **)&s->skip, sizeof(int));
    if (rc == cudaSuccess)
        rc = cub::DeviceRadixSort::SortKeys(NULL, s->sort_temp_bytes, s->list, s->sorted, width, 0,
                                            (int)(8 * sizeof(double)));
    if (rc == cudaSuccess)
        rc = cudaMalloc(&s->sort_temp, s->sort_temp_bytes);
    if (rc == cudaSuccess)
        rc = cudaMemset(s->skip, 0, sizeof(int));
    const char *profile = getenv("TOMOFS_RINGS_PROFILE");
    s->profile = profile && *profile && strcmp(profile, "0") != 0;
    for (int i = 0; s->profile && i <= MAX_STEPS && rc == cudaSuccess; i++)
        rc = cudaEventCreate(&s->events[i]);
    if (rc != cudaSuccess) {
        tomo_cuda_stripes_destroy(s);
        return tomo_error_set(err, rc == cudaErrorMemoryAllocation ? TOMO_E_NOMEM : TOMO_E_IO,
                              "GPU: dead and large stripe buffers for %d columns: %s", width,
                              cudaGetErrorString(rc));
    }
    *out = s;
    return 0;
}

void tomo_cuda_stripes_run(tomo_cuda_stripes *s, float *sino, cudaStream_t stream)
{
    s->n_steps = 0;
    if (s->profile)
        cudaEventRecord(s->events[0], stream);
    if (s->p.method == TOMO_RINGS_DEAD || s->p.method == TOMO_RINGS_ALL)
        remove_dead(s, sino, stream);
    if (s->p.method == TOMO_RINGS_LARGE || s->p.method == TOMO_RINGS_ALL)
        remove_large(s, sino, stream);
    if (!s->profile || cudaEventSynchronize(s->events[s->n_steps]) != cudaSuccess)
        return;
    for (int i = 0; i < s->n_steps; i++) {
        float ms = 0;
        cudaEventElapsedTime(&ms, s->events[i], s->events[i + 1]);
        s->step_ms[i] = s->runs == 0 || ms < s->step_ms[i] ? ms : s->step_ms[i];
    }
    s->runs++;
}
