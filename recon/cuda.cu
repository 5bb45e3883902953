/*
 * recon/cuda.cu - the reconstruction pipeline on the GPU (see cuda.h).
 *
 * A chunk is processed in groups of GROUP adjacent slices. Group g's raw rows are uploaded on
 * the upload stream while group g-1 is computed on the compute stream and the images of group
 * g-2 are downloaded on the download stream; events order the three.
 *
 * Per group, on the compute stream:
 *   normalise      raw counts -> absorbance, clipped pixels counted per projection line
 *   black lines    lines with too many clipped pixels replaced by the mean good line
 *   rings          (rings-removed/) for rings=all, large and dead first Vo's algorithms 6
 *                  and 5 (cuda_stripes.cu); then, for sort and all, algorithm 3: every column
 *                  sorted along the angles by a stable segmented sort, a median across the
 *                  detector on the sorted image, every value written back to its row
 *   filter         per slice: pad (edge or zero, as the CPU), cuFFT R2C, times the CPU's
 *                  spectrum, C2R
 *   tables         per view the (w q[i-1], w q[i] - w q[i-1]) pairs the CPU back-projector
 *                  uses, fp32 (exact) or packed eight slices to 32 bytes of fp16 (fast)
 *   back-project   one thread per pixel and group, all views in one launch, fp32 sums
 */
/* The project's headers are C: their functions have C linkage. */
extern "C" {
#include "cuda.h"
}
#include "cuda_stripes.h"

#include <cub/device/device_segmented_sort.cuh>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cufft.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP TOMO_CUDA_GROUP /* slices processed together; the fast tables pack this many */

struct tomo_cuda {
    tomo_cuda_config config;
    int N, M, G, S, L, W, max_rows;
    cudaStream_t up, compute, down;
    cudaEvent_t uploaded[2], computed[2];
    cudaEvent_t *downloaded; /* one per group of the largest chunk */
    int n_groups_max;
    cudaEvent_t raw_free; /* every raw row of the chunk begun last has been uploaded */
    int begun_nz;         /* slices of the chunk begun and not finished, or 0 */

    float *h_raw;    /* pinned [max_rows][M][N] */
    float *h_images; /* pinned [max_rows][S][S] */

    float *d_raw;                 /* [max_rows][M][N], normalised in place */
    double *d_dark;               /* [max_rows][N] */
    double *d_flats;              /* [G][max_rows][N] */
    int *d_flat_a;                /* [M] */
    int *d_flat_b;                /* [M] */
    double *d_flat_w;             /* [M] */
    int *d_clipped;               /* [max_rows][M] */
    unsigned long long *d_counts; /* [0] clipped pixels, [1] black lines */
    float *d_padded;              /* [M][L] */
    cufftComplex *d_spectra;      /* [M][L/2 + 1] */
    float *d_kernel;              /* [L/2 + 1] filter spectrum, 1/L folded in */
    float *d_window;              /* [W] edge-pad decay */
    float2 *d_trig;               /* [M] (cos, sin) */
    float *d_weight;              /* [M] */
    float2 *d_table;              /* exact: [GROUP][M][N + 2] */
    uint4 *d_packed;              /* fast: [M][N + 2][2], lanes 0-3 then 4-7 */
    float *d_images;              /* [max_rows][S][S] */
    float *d_xs;                  /* [S] pixel X */
    float *d_ys;                  /* [S] pixel Y */
    /* ring removal: column-major keys and rows, sorted copies, segment offsets */
    float *d_keys, *d_keys_sorted;
    int *d_rows, *d_rows_sorted, *d_offsets;
    void *d_sort_temp;
    size_t sort_temp_bytes;
    tomo_cuda_stripes *stripes; /* algorithms 6 and 5 (rings=all, large, dead), or NULL */
    cufftHandle r2c, c2r;
    int have_r2c, have_c2r;
    int block_x; /* back-projection thread block: block_x x (256 / block_x) pixels */
};

static int warm_up(tomo_cuda *c, tomo_error *err);

const char *tomo_precision_name(tomo_precision precision)
{
    return precision == TOMO_PRECISION_EXACT ? "exact" : "fast";
}

static int cuda_failed(cudaError_t rc, const char *what, tomo_error *err)
{
    if (rc == cudaSuccess)
        return 0;
    return tomo_error_set(err, rc == cudaErrorMemoryAllocation ? TOMO_E_NOMEM : TOMO_E_IO,
                          "GPU: %s: %s", what, cudaGetErrorString(rc));
}

static int cufft_failed(cufftResult rc, const char *what, tomo_error *err)
{
    if (rc == CUFFT_SUCCESS)
        return 0;
    return tomo_error_set(err, rc == CUFFT_ALLOC_FAILED ? TOMO_E_NOMEM : TOMO_E_IO,
                          "GPU: %s: cuFFT error %d", what, (int)rc);
}

int tomo_cuda_device_count(char *name, size_t name_size)
{
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count <= 0) {
        if (name && name_size)
            snprintf(name, name_size, "%s",
                     rc != cudaSuccess ? cudaGetErrorString(rc) : "no CUDA device");
        cudaGetLastError(); /* clear the sticky error left by a missing driver */
        return 0;
    }
    if (name && name_size) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
            snprintf(name, name_size, "%s", prop.name);
        else
            snprintf(name, name_size, "CUDA device 0");
    }
    return count;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                     */

/* Raw counts -> absorbance, in place; counts clipped pixels per projection line. */
__global__ void normalise_kernel(float *raw, const double *dark, const double *flats,
                                 const int *flat_a, const int *flat_b, const double *flat_w,
                                 int *clipped, int nz_total, int z0, int n, int m_count,
                                 float floor_counts)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    long per_slice = (long)m_count * n;
    int z = z0 + (int)(idx / per_slice);
    if (idx >= per_slice * GROUP || z >= nz_total)
        return;
    long rest = idx % per_slice;
    int m = (int)(rest / n), x = (int)(rest % n);
    long at = (long)z * per_slice + rest;
    long ref = (long)z * n + x;
    long group_stride = (long)nz_total * n;
    double d = dark[ref];
    double w = flat_w[m];
    double ga = flats[flat_a[m] * group_stride + ref];
    double gb = flats[flat_b[m] * group_stride + ref];
    /* the CPU's operations in the CPU's order, without fused multiply-adds */
    double i0 = __dsub_rn(__dadd_rn(__dmul_rn(1.0 - w, ga), __dmul_rn(w, gb)), d);
    double num = __dsub_rn((double)raw[at], d);
    int clip = 0;
    if (!(num >= floor_counts)) {
        num = floor_counts;
        clip = 1;
    }
    if (!(i0 >= floor_counts)) {
        i0 = floor_counts;
        clip = 1;
    }
    num = num > 1e300 ? 1e300 : num;
    i0 = i0 > 1e300 ? 1e300 : i0;
    raw[at] = (float)log(i0 / num);
    if (clip)
        atomicAdd(&clipped[(long)z * m_count + m], 1);
}

/* Counts black lines of a group and the clipped pixels; flags whether any line is black. */
__global__ void count_lines_kernel(const int *clipped, int nz_total, int z0, int m_count,
                                   float black_limit, unsigned long long *counts)
{
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int z = z0 + idx / m_count;
    if (idx >= m_count * GROUP || z >= nz_total)
        return;
    int c = clipped[(long)z * m_count + idx % m_count];
    if (c)
        atomicAdd(&counts[0], (unsigned long long)c);
    if ((float)c > black_limit)
        atomicAdd(&counts[1], 1ull);
}

/* Replaces every black line of each slice by the mean of its good lines (0 if none). */
__global__ void black_lines_kernel(float *sino, const int *clipped, int nz_total, int z0, int n,
                                   int m_count, float black_limit)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int z = z0 + blockIdx.y;
    if (x >= n || z >= nz_total)
        return;
    float *s = sino + (long)z * m_count * n;
    const int *c = clipped + (long)z * m_count;
    double sum = 0;
    int good = 0;
    for (int m = 0; m < m_count; m++)
        if (!((float)c[m] > black_limit)) {
            sum += s[(long)m * n + x];
            good++;
        }
    float mean = good ? (float)(sum / good) : 0.0f;
    for (int m = 0; m < m_count; m++)
        if ((float)c[m] > black_limit)
            s[(long)m * n + x] = mean;
}

/* Rows of one slice into the zero- or edge-padded FFT input, exactly as the CPU filter. */
__global__ void pad_kernel(const float *rows, float *padded, int n, int L, int W,
                           const float *window, int m_count)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)m_count * L)
        return;
    int m = (int)(idx / L), j = (int)(idx % L);
    const float *row = rows + (long)m * n;
    float v = 0.0f;
    if (j < n)
        v = row[j];
    else if (W > 0 && j - (n - 1) <= W)
        v = row[n - 1] * window[j - (n - 1) - 1];
    else if (W > 0 && L - j <= W)
        v = row[0] * window[L - j - 1];
    padded[idx] = v;
}

__global__ void spectrum_kernel(cufftComplex *spectra, const float *kernel, int half, int m_count)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long)m_count * half)
        return;
    float k = kernel[idx % half];
    spectra[idx].x *= k;
    spectra[idx].y *= k;
}

/*
 * Back-projection tables of slice s (of the group) from its filtered rows:
 * entry i = (A[i], A[i+1] - A[i]) with A = [0, w q[0], ..., w q[N-1], 0, 0].
 */
__device__ __forceinline__ float table_value(const float *q, int n, float w, int i)
{
    return (i >= 1 && i <= n) ? __fmul_rn(w, q[i - 1]) : 0.0f;
}

__global__ void table_kernel(const float *filtered, int L, int n, int m_count, const float *weight,
                             float2 *table)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int len = n + 2;
    if (idx >= (long)m_count * len)
        return;
    int m = (int)(idx / len), i = (int)(idx % len);
    const float *q = filtered + (long)m * L;
    float w = weight[m];
    float a = table_value(q, n, w, i), b = table_value(q, n, w, i + 1);
    table[idx] = make_float2(a, __fsub_rn(b, a));
}

/* The same tables for slice s of the group, as fp16 in lane s of a 32-byte entry. */
__global__ void pack_kernel(const float *filtered, int L, int n, int m_count, const float *weight,
                            uint4 *packed, int s)
{
    long idx = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int len = n + 2;
    if (idx >= (long)m_count * len)
        return;
    int m = (int)(idx / len), i = (int)(idx % len);
    const float *q = filtered + (long)m * L;
    float w = weight[m];
    float a = table_value(q, n, w, i), b = table_value(q, n, w, i + 1);
    __half2 h = __floats2half2_rn(a, b - a);
    unsigned int bits = *reinterpret_cast<unsigned int *>(&h);
    unsigned int *word = reinterpret_cast<unsigned int *>(&packed[2 * idx + s / 4]);
    word[s % 4] = bits;
}

/* ---- ring removal (algorithm 3) ---- */

/* SciPy's 'reflect' extension (half-sample symmetric), repeated for any distance. */
__device__ __forceinline__ int reflect(int i, int n)
{
    if (i >= 0 && i < n)
        return i;
    int period = 2 * n;
    i %= period;
    if (i < 0)
        i += period;
    return i < n ? i : period - 1 - i;
}

__global__ void offsets_kernel(int *offsets, int n, int m_count)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n)
        offsets[i] = i * m_count;
}

/* The element of rank k of w[0..n) (quickselect; w is reordered). */
__device__ float select_rank(float *w, int n, int k)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = w[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (w[i] < pivot)
                i++;
            while (w[j] > pivot)
                j--;
            if (i <= j) {
                float t = w[i];
                w[i] = w[j];
                w[j] = t;
                i++;
                j--;
            }
        }
        if (k <= j)
            hi = j;
        else if (k >= i)
            lo = i;
        else
            return w[k];
    }
    return w[k];
}

#define RINGS_MAX_WINDOW 256

/* The element of rank `rank` among `count` <= K values, sorted in registers (network_sort). */
template <int K> __device__ __forceinline__ float network_rank(float (&w)[K], int rank)
{
    network_sort<K>(w);
    float found = w[0];
#pragma unroll
    for (int i = 0; i < K; i++)
        if (i == rank)
            found = w[i];
    return found;
}

/* rings_median_kernel for dim 1 and size <= K: the window sorted in registers. */
template <int K>
__global__ void rings_median_small_kernel(const float *keys, const int *rows, int m_count, int n,
                                          int size, float *sino)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x, x = blockIdx.y;
    if (r >= m_count)
        return;
    float w[K];
    int hl = size / 2;
#pragma unroll
    for (int q = 0; q < K; q++)
        w[q] = q < size ? keys[(long)reflect(x - hl + q, n) * m_count + r] : INFINITY;
    int row = rows[(long)x * m_count + r];
    sino[(long)row * n + x] = network_rank<K>(w, size / 2);
}

/*
 * Median of the sorted image over a window of `size` columns (dim 1) or size x size (dim 2)
 * around (rank r, column x), written back to the sinogram at the row the value of rank r in
 * column x came from. Threads run along the ranks, so loads are coalesced.
 */
__global__ void rings_median_kernel(const float *keys, const int *rows, int m_count, int n,
                                    int size, int dim, float *sino)
{
    int r = blockIdx.x * blockDim.x + threadIdx.x, x = blockIdx.y;
    if (r >= m_count)
        return;
    float w[RINGS_MAX_WINDOW];
    int hl = size / 2, count = 0;
    int ranks = dim == 2 ? size : 1;
    int rank_lo = dim == 2 ? r - hl : r;
    for (int q = 0; q < size; q++) {
        const float *column = keys + (long)reflect(x - hl + q, n) * m_count;
        for (int p = 0; p < ranks; p++)
            w[count++] = column[reflect(rank_lo + p, m_count)];
    }
    float median = select_rank(w, count, count / 2);
    int row = rows[(long)x * m_count + r];
    sino[(long)row * n + x] = median;
}

/* Detector position plus one, clamped, as the CPU computes it (no fused multiply-add). */
__device__ __forceinline__ void position(float x, float cs, float base, float top, int *i, float *t)
{
    float r = __fadd_rn(__fmul_rn(x, cs), base);
    r = r > 0.0f ? r : 0.0f;
    r = r < top ? r : top;
    *i = (int)r;
    *t = __fsub_rn(r, (float)*i);
}

/*
 * Per-view (cos, sin) for the back-projection kernels: constant memory broadcasts one value
 * to a whole warp per cycle. Uploaded before each launch, so several pipelines can share it.
 */
#define TRIG_CONST_MAX 7936
__constant__ float2 const_trig[TRIG_CONST_MAX];

/*
 * The pixel of this thread in the back-projection kernels: false when it lies outside the
 * image; *inside when it lies in the reconstruction circle, at (*fx, *fy).
 */
__device__ __forceinline__ bool bp_pixel(int size, const float *xs, const float *ys, double r2,
                                         int *h, int *v, bool *inside, float *fx, float *fy)
{
    *h = blockIdx.x * blockDim.x + threadIdx.x;
    *v = blockIdx.y * blockDim.y + threadIdx.y;
    if (*h >= size || *v >= size)
        return false;
    double x = xs[*h], y = ys[*v];
    *inside = x * x + y * y <= r2;
    *fx = (float)x;
    *fy = (float)y;
    return true;
}

/* The sums of pixel (h, v) into the first n_slices images. */
__device__ __forceinline__ void bp_store(const float (&acc)[GROUP], int n_slices, int size, int h,
                                         int v, float *images)
{
    for (int s = 0; s < n_slices; s++)
        images[(long)s * size * size + (long)v * size + h] = acc[s];
}

template <bool CONST_TRIG>
__global__ void bp_exact_kernel(const float2 *table, const float2 *trig, int m_count, int n,
                                int size, int n_slices, const float *xs, const float *ys, double r2,
                                float c1, float *images)
{
    int h, v;
    bool inside;
    float fx, fy;
    if (!bp_pixel(size, xs, ys, r2, &h, &v, &inside, &fx, &fy))
        return;
    float acc[GROUP] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (inside) {
        const float top = (float)(n + 1);
        const long slice_stride = (long)m_count * (n + 2);
        for (int m = 0; m < m_count; m++) {
            float2 cs = CONST_TRIG ? const_trig[m] : __ldg(&trig[m]);
            float base = __fadd_rn(__fmul_rn(fy, cs.y), c1);
            int i;
            float t;
            position(fx, cs.x, base, top, &i, &t);
            const float2 *row = table + (long)m * (n + 2) + i;
#pragma unroll
            for (int s = 0; s < GROUP; s++)
                if (s < n_slices) {
                    float2 e = __ldg(row + s * slice_stride);
                    acc[s] = __fadd_rn(acc[s], __fadd_rn(e.x, __fmul_rn(t, e.y)));
                }
        }
    }
    bp_store(acc, n_slices, size, h, v, images);
}

__device__ __forceinline__ void accumulate4(uint4 word, float t, float *acc)
{
    unsigned int lanes[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
    for (int s = 0; s < 4; s++) {
        float2 e = __half22float2(*reinterpret_cast<__half2 *>(&lanes[s]));
        acc[s] += e.x + t * e.y;
    }
}

template <bool CONST_TRIG>
__global__ void bp_fast_kernel(const uint4 *packed, const float2 *trig, int m_count, int n,
                               int size, int n_slices, const float *xs, const float *ys, double r2,
                               float c1, float *images)
{
    int h, v;
    bool inside;
    float fx, fy;
    if (!bp_pixel(size, xs, ys, r2, &h, &v, &inside, &fx, &fy))
        return;
    float acc[GROUP] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (inside) {
        const float top = (float)(n + 1);
#pragma unroll 4
        for (int m = 0; m < m_count; m++) {
            float2 cs = CONST_TRIG ? const_trig[m] : __ldg(&trig[m]);
            float r = fx * cs.x + (fy * cs.y + c1);
            r = fminf(fmaxf(r, 0.0f), top);
            int i = (int)r;
            float t = r - (float)i;
            const uint4 *entry = packed + 2 * ((long)m * (n + 2) + i);
            accumulate4(__ldg(entry), t, acc);
            accumulate4(__ldg(entry + 1), t, acc + 4);
        }
    }
    bp_store(acc, n_slices, size, h, v, images);
}

/* ------------------------------------------------------------------------------------------ */
/* Host side                                                                                   */

static unsigned blocks_for(long n, int threads)
{
    return (unsigned)((n + threads - 1) / threads);
}

/* The ring removal buffers, as the column sort (cuda_stripes.h) takes them. */
static tomo_cuda_sort_space sort_space(const tomo_cuda *c)
{
    tomo_cuda_sort_space space = {c->d_keys,         c->d_keys_sorted, c->d_rows,
                                  c->d_rows_sorted,  c->d_offsets,     c->d_sort_temp,
                                  c->sort_temp_bytes};
    return space;
}

int tomo_cuda_create(const tomo_cuda_config *config, tomo_cuda **out, tomo_error *err)
{
    *out = NULL;
    const tomo_filter *f = config->filter;
    const tomo_bp_plan *plan = config->plan;
    if (!f || !plan || config->width != plan->width || config->n_proj != plan->n_views ||
        config->max_rows < 1 || config->n_flat_groups < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "GPU: inconsistent pipeline configuration");
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count <= config->device ||
        config->device < 0) {
        cudaGetLastError();
        return tomo_error_set(err, TOMO_E_UNSUPPORTED, "GPU: no CUDA device %d", config->device);
    }
    tomo_cuda *c = (tomo_cuda *)calloc(1, sizeof *c);
    if (!c)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    c->config = *config;
    c->N = config->width;
    c->M = config->n_proj;
    c->G = config->n_flat_groups;
    c->S = plan->size;
    c->L = tomo_filter_length(f);
    c->W = tomo_filter_pad_width(f);
    c->max_rows = config->max_rows;
    /* tall blocks: 14.4 ms per slice at 4432 x 3600 on an H100, against 15.3 for 16 x 16
       and 16.0 for 32 x 8 (fast precision) */
    c->block_x = 8;
    /* whole groups, so the last group's kernels never read past the buffers */
    int rows = (c->max_rows + GROUP - 1) / GROUP * GROUP;
    size_t NM = (size_t)c->N * c->M, SS = (size_t)c->S * c->S;
    int half = c->L / 2 + 1;
    int rc = 0;
#define TRY(call, what)                                                                            \
    do {                                                                                           \
        if ((rc = cuda_failed((call), (what), err)) < 0)                                           \
            goto fail;                                                                             \
    } while (0)
    TRY(cudaSetDevice(config->device), "selecting the device");
    TRY(cudaStreamCreateWithFlags(&c->up, cudaStreamNonBlocking), "creating streams");
    TRY(cudaStreamCreateWithFlags(&c->compute, cudaStreamNonBlocking), "creating streams");
    TRY(cudaStreamCreateWithFlags(&c->down, cudaStreamNonBlocking), "creating streams");
    for (int i = 0; i < 2; i++) {
        TRY(cudaEventCreateWithFlags(&c->uploaded[i], cudaEventDisableTiming), "creating events");
        TRY(cudaEventCreateWithFlags(&c->computed[i], cudaEventDisableTiming), "creating events");
    }
    c->n_groups_max = rows / GROUP;
    c->downloaded = (cudaEvent_t *)calloc((size_t)c->n_groups_max, sizeof(cudaEvent_t));
    if (!c->downloaded) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < c->n_groups_max; i++)
        TRY(cudaEventCreateWithFlags(&c->downloaded[i],
                                     cudaEventDisableTiming | cudaEventBlockingSync),
            "creating events");
    TRY(cudaEventCreateWithFlags(&c->raw_free, cudaEventDisableTiming | cudaEventBlockingSync),
        "creating events");
    TRY(cudaMallocHost((void **)&c->h_raw, rows * NM * sizeof(float)), "pinned raw buffer");
    TRY(cudaMallocHost((void **)&c->h_images, rows * SS * sizeof(float)), "pinned image buffer");
    TRY(cudaMalloc((void **)&c->d_raw, rows * NM * sizeof(float)), "raw rows");
    TRY(cudaMalloc((void **)&c->d_dark, (size_t)rows * c->N * sizeof(double)), "dark rows");
    TRY(cudaMalloc((void **)&c->d_flats, (size_t)c->G * rows * c->N * sizeof(double)), "flat rows");
    TRY(cudaMalloc((void **)&c->d_flat_a, (size_t)c->M * sizeof(int)), "flat brackets");
    TRY(cudaMalloc((void **)&c->d_flat_b, (size_t)c->M * sizeof(int)), "flat brackets");
    TRY(cudaMalloc((void **)&c->d_flat_w, (size_t)c->M * sizeof(double)), "flat weights");
    TRY(cudaMalloc((void **)&c->d_clipped, (size_t)rows * c->M * sizeof(int)), "line counts");
    TRY(cudaMalloc((void **)&c->d_counts, 2 * sizeof(unsigned long long)), "counters");
    TRY(cudaMalloc((void **)&c->d_padded, (size_t)c->M * c->L * sizeof(float)), "FFT input");
    TRY(cudaMalloc((void **)&c->d_spectra, (size_t)c->M * half * sizeof(cufftComplex)),
        "FFT spectra");
    TRY(cudaMalloc((void **)&c->d_kernel, (size_t)half * sizeof(float)), "filter spectrum");
    TRY(cudaMalloc((void **)&c->d_window, (size_t)(c->W + 1) * sizeof(float)), "pad window");
    TRY(cudaMalloc((void **)&c->d_trig, (size_t)c->M * sizeof(float2)), "angles");
    TRY(cudaMalloc((void **)&c->d_weight, (size_t)c->M * sizeof(float)), "weights");
    if (config->precision == TOMO_PRECISION_EXACT)
        TRY(cudaMalloc((void **)&c->d_table, (size_t)GROUP * c->M * (c->N + 2) * sizeof(float2)),
            "back-projection tables");
    else
        TRY(cudaMalloc((void **)&c->d_packed, (size_t)2 * c->M * (c->N + 2) * sizeof(uint4)),
            "back-projection tables");
    TRY(cudaMalloc((void **)&c->d_images, rows * SS * sizeof(float)), "images");
    if (config->rings.method != TOMO_RINGS_NONE) {
        if (!tomo_cuda_supports_rings(&config->rings)) {
            rc = tomo_error_set(err, TOMO_E_UNSUPPORTED,
                                "GPU: these ring removal parameters "
                                "need the CPU");
            goto fail;
        }
        TRY(cudaMalloc((void **)&c->d_keys, NM * sizeof(float)), "ring removal");
        TRY(cudaMalloc((void **)&c->d_keys_sorted, NM * sizeof(float)), "ring removal");
        TRY(cudaMalloc((void **)&c->d_rows, NM * sizeof(int)), "ring removal");
        TRY(cudaMalloc((void **)&c->d_rows_sorted, NM * sizeof(int)), "ring removal");
        TRY(cudaMalloc((void **)&c->d_offsets, (size_t)(c->N + 1) * sizeof(int)), "ring removal");
        offsets_kernel<<<blocks_for(c->N + 1, 256), 256>>>(c->d_offsets, c->N, c->M);
        TRY(cub::DeviceSegmentedSort::StableSortPairs(
                NULL, c->sort_temp_bytes, c->d_keys, c->d_keys_sorted, c->d_rows, c->d_rows_sorted,
                (int)NM, c->N, c->d_offsets, c->d_offsets + 1),
            "planning the column sort");
        TRY(cudaMalloc(&c->d_sort_temp, c->sort_temp_bytes), "ring removal");
        if (config->rings.method != TOMO_RINGS_SORT) {
            tomo_cuda_sort_space space = sort_space(c);
            if ((rc = tomo_cuda_stripes_create(&config->rings, c->M, c->N, &space, &c->stripes,
                                               err)) < 0)
                goto fail;
        }
    }
    TRY(cudaMalloc((void **)&c->d_xs, (size_t)c->S * sizeof(float)), "pixel positions");
    TRY(cudaMalloc((void **)&c->d_ys, (size_t)c->S * sizeof(float)), "pixel positions");

    {
        /* Host-side constants, computed like the CPU does them. */
        float2 *trig = (float2 *)malloc((size_t)c->M * sizeof(float2));
        float *xs = (float *)malloc((size_t)c->S * sizeof(float));
        float *ys = (float *)malloc((size_t)c->S * sizeof(float));
        if (!trig || !xs || !ys) {
            free(trig);
            free(xs);
            free(ys);
            rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
            goto fail;
        }
        for (int m = 0; m < c->M; m++)
            trig[m] = make_float2(plan->cos_t[m], plan->sin_t[m]);
        for (int h = 0; h < c->S; h++) {
            xs[h] = (float)((h + 0.5) * plan->bin - 0.5 * plan->width);
            ys[h] = (float)(0.5 * plan->width - (h + 0.5) * plan->bin);
        }
        cudaError_t e1 =
            cudaMemcpy(c->d_trig, trig, (size_t)c->M * sizeof(float2), cudaMemcpyHostToDevice);
        cudaError_t e2 =
            cudaMemcpy(c->d_xs, xs, (size_t)c->S * sizeof(float), cudaMemcpyHostToDevice);
        cudaError_t e3 =
            cudaMemcpy(c->d_ys, ys, (size_t)c->S * sizeof(float), cudaMemcpyHostToDevice);
        free(trig);
        free(xs);
        free(ys);
        TRY(e1, "uploading angles");
        TRY(e2, "uploading positions");
        TRY(e3, "uploading positions");
    }
    TRY(cudaMemcpy(c->d_weight, plan->weight, (size_t)c->M * sizeof(float), cudaMemcpyHostToDevice),
        "uploading weights");
    TRY(cudaMemcpy(c->d_kernel, tomo_filter_spectrum(f), (size_t)half * sizeof(float),
                   cudaMemcpyHostToDevice),
        "uploading the filter");
    if (c->W > 0)
        TRY(cudaMemcpy(c->d_window, tomo_filter_window(f), (size_t)c->W * sizeof(float),
                       cudaMemcpyHostToDevice),
            "uploading the pad window");
    if ((rc = cufft_failed(cufftPlan1d(&c->r2c, c->L, CUFFT_R2C, c->M), "planning", err)) < 0)
        goto fail;
    c->have_r2c = 1;
    if ((rc = cufft_failed(cufftPlan1d(&c->c2r, c->L, CUFFT_C2R, c->M), "planning", err)) < 0)
        goto fail;
    c->have_c2r = 1;
    cufftSetStream(c->r2c, c->compute);
    cufftSetStream(c->c2r, c->compute);
    if ((rc = warm_up(c, err)) < 0)
        goto fail;
#undef TRY
    *out = c;
    return 0;
fail:
    tomo_cuda_destroy(c);
    return rc;
}

/*
 * Launches every kernel once on no data and runs the FFT plans once, so that the first
 * chunk a user asks for does not pay for loading GPU code.
 */
static int warm_up(tomo_cuda *c, tomo_error *err)
{
    cudaStream_t s = c->compute;
    normalise_kernel<<<1, 1, 0, s>>>(c->d_raw, c->d_dark, c->d_flats, c->d_flat_a, c->d_flat_b,
                                     c->d_flat_w, c->d_clipped, 0, 0, c->N, c->M, 1.0f);
    count_lines_kernel<<<1, 1, 0, s>>>(c->d_clipped, 0, 0, c->M, 1.0f, c->d_counts);
    black_lines_kernel<<<1, 1, 0, s>>>(c->d_raw, c->d_clipped, 0, 0, c->N, c->M, 1.0f);
    pad_kernel<<<1, 1, 0, s>>>(c->d_raw, c->d_padded, c->N, c->L, c->W, c->d_window, 0);
    cufftExecR2C(c->r2c, c->d_padded, c->d_spectra);
    spectrum_kernel<<<1, 1, 0, s>>>(c->d_spectra, c->d_kernel, c->L / 2 + 1, 0);
    cufftExecC2R(c->c2r, c->d_spectra, c->d_padded);
    if (c->config.precision == TOMO_PRECISION_EXACT) {
        table_kernel<<<1, 1, 0, s>>>(c->d_padded, c->L, c->N, 0, c->d_weight, c->d_table);
        bp_exact_kernel<true><<<1, 1, 0, s>>>(c->d_table, c->d_trig, c->M, c->N, 0, 0, c->d_xs,
                                              c->d_ys, 0.0, 0.0f, c->d_images);
        bp_exact_kernel<false><<<1, 1, 0, s>>>(c->d_table, c->d_trig, c->M, c->N, 0, 0, c->d_xs,
                                               c->d_ys, 0.0, 0.0f, c->d_images);
    } else {
        pack_kernel<<<1, 1, 0, s>>>(c->d_padded, c->L, c->N, 0, c->d_weight, c->d_packed, 0);
        bp_fast_kernel<true><<<1, 1, 0, s>>>(c->d_packed, c->d_trig, c->M, c->N, 0, 0, c->d_xs,
                                             c->d_ys, 0.0, 0.0f, c->d_images);
        bp_fast_kernel<false><<<1, 1, 0, s>>>(c->d_packed, c->d_trig, c->M, c->N, 0, 0, c->d_xs,
                                              c->d_ys, 0.0, 0.0f, c->d_images);
    }
    int rc = cuda_failed(cudaGetLastError(), "loading kernels", err);
    return rc < 0 ? rc : cuda_failed(cudaStreamSynchronize(s), "loading kernels", err);
}

float *tomo_cuda_raw_buffer(tomo_cuda *cuda)
{
    return cuda->h_raw;
}

/*
 * Ring removal on the normalised sinogram of slice z, in place, on the compute stream: dead and
 * large stripes (cuda_stripes.cu) for rings=all, large, dead; then algorithm 3 for sort, all.
 */
static void remove_rings_slice(tomo_cuda *c, float *sino)
{
    if (c->stripes) /* dead, then large stripes */
        tomo_cuda_stripes_run(c->stripes, sino, c->compute);
    if (c->config.rings.method != TOMO_RINGS_SORT && c->config.rings.method != TOMO_RINGS_ALL)
        return;
    tomo_cuda_sort_space space = sort_space(c);
    tomo_cuda_columns(&space, sino, c->M, c->N, c->compute);
    tomo_cuda_sort_columns(&space, c->M, c->N, c->compute);
    dim3 mgrid(blocks_for(c->M, 128), c->N);
    int size = tomo_rings_sort_size(&c->config.rings, c->N);
    if (c->config.rings.dim == 1 && size <= 32)
        rings_median_small_kernel<32><<<mgrid, 128, 0, c->compute>>>(
            c->d_keys_sorted, c->d_rows_sorted, c->M, c->N, size, sino);
    else if (c->config.rings.dim == 1 && size <= 64)
        rings_median_small_kernel<64><<<mgrid, 128, 0, c->compute>>>(
            c->d_keys_sorted, c->d_rows_sorted, c->M, c->N, size, sino);
    else
        rings_median_kernel<<<mgrid, 128, 0, c->compute>>>(c->d_keys_sorted, c->d_rows_sorted, c->M,
                                                           c->N, size, c->config.rings.dim, sino);
}

/* Filters the rows of slice z (already normalised) and writes its back-projection tables. */
static void filter_slice(tomo_cuda *c, int z, int s)
{
    const int threads = 256;
    long NM = (long)c->N * c->M;
    int half = c->L / 2 + 1;
    pad_kernel<<<blocks_for((long)c->M * c->L, threads), threads, 0, c->compute>>>(
        c->d_raw + (long)z * NM, c->d_padded, c->N, c->L, c->W, c->d_window, c->M);
    cufftExecR2C(c->r2c, c->d_padded, c->d_spectra);
    spectrum_kernel<<<blocks_for((long)c->M * half, threads), threads, 0, c->compute>>>(
        c->d_spectra, c->d_kernel, half, c->M);
    cufftExecC2R(c->c2r, c->d_spectra, c->d_padded);
    long entries = (long)c->M * (c->N + 2);
    if (c->config.precision == TOMO_PRECISION_EXACT)
        table_kernel<<<blocks_for(entries, threads), threads, 0, c->compute>>>(
            c->d_padded, c->L, c->N, c->M, c->d_weight, c->d_table + (long)s * entries);
    else
        pack_kernel<<<blocks_for(entries, threads), threads, 0, c->compute>>>(
            c->d_padded, c->L, c->N, c->M, c->d_weight, c->d_packed, s);
}

static void backproject_group(tomo_cuda *c, int z0, int n_slices)
{
    const tomo_bp_plan *plan = c->config.plan;
    dim3 block(c->block_x, 256 / c->block_x);
    dim3 grid(blocks_for(c->S, block.x), blocks_for(c->S, block.y));
    double r2 = plan->fov_radius * plan->fov_radius;
    float c1 = (float)(plan->center + 1.0);
    float *images = c->d_images + (long)z0 * c->S * c->S;
    int const_trig_ok = c->M <= TRIG_CONST_MAX;
    if (const_trig_ok)
        cudaMemcpyToSymbolAsync(const_trig, c->d_trig, (size_t)c->M * sizeof(float2), 0,
                                cudaMemcpyDeviceToDevice, c->compute);
    if (c->config.precision == TOMO_PRECISION_EXACT && const_trig_ok)
        bp_exact_kernel<true><<<grid, block, 0, c->compute>>>(
            c->d_table, c->d_trig, c->M, c->N, c->S, n_slices, c->d_xs, c->d_ys, r2, c1, images);
    else if (c->config.precision == TOMO_PRECISION_EXACT)
        bp_exact_kernel<false><<<grid, block, 0, c->compute>>>(
            c->d_table, c->d_trig, c->M, c->N, c->S, n_slices, c->d_xs, c->d_ys, r2, c1, images);
    else if (const_trig_ok) {
        bp_fast_kernel<true><<<grid, block, 0, c->compute>>>(
            c->d_packed, c->d_trig, c->M, c->N, c->S, n_slices, c->d_xs, c->d_ys, r2, c1, images);
    } else {
        bp_fast_kernel<false><<<grid, block, 0, c->compute>>>(
            c->d_packed, c->d_trig, c->M, c->N, c->S, n_slices, c->d_xs, c->d_ys, r2, c1, images);
    }
}

/* Slices are copied out in parts, so a few slices still keep many threads busy. */
#define COPY_PARTS 8

typedef struct copy_job {
    const float *from; /* pinned, contiguous slices */
    float *const *to;  /* one destination per slice */
    long pixels;       /* per slice */
    int parts;
} copy_job;

static void copy_part(void *arg, int task, int slot)
{
    (void)slot;
    const copy_job *j = (const copy_job *)arg;
    int slice = task / j->parts, part = task % j->parts;
    long begin = j->pixels * part / j->parts, end = j->pixels * (part + 1) / j->parts;
    memcpy(j->to[slice] + begin, j->from + slice * j->pixels + begin,
           (size_t)(end - begin) * sizeof(float));
}

/* Waits for whatever a failed chunk left queued, so no buffer is still in use. */
static void drain(tomo_cuda *c)
{
    cudaStreamSynchronize(c->up);
    cudaStreamSynchronize(c->compute);
    cudaStreamSynchronize(c->down);
    cudaGetLastError();
}

int tomo_cuda_begin(tomo_cuda *c, int first, int nz, const tomo_cuda_refs *refs, tomo_error *err)
{
    if (c->begun_nz)
        return tomo_error_set(err, TOMO_E_INTERNAL, "GPU: a chunk was begun and not finished");
    if (nz < 1 || first < 0 || first + nz > c->max_rows)
        return tomo_error_set(err, TOMO_E_INVALID, "GPU: chunk of rows %d-%d (at most %d)", first,
                              first + nz - 1, c->max_rows);
    const int threads = 256;
    long NM = (long)c->N * c->M, SS = (long)c->S * c->S;
    long flat_stride = refs->flat_stride ? refs->flat_stride : (long)nz * c->N;
    float black_limit = (float)(c->config.prep.black_fraction * c->N);
    int n_groups = (nz + GROUP - 1) / GROUP;
    int rc;
#define TRY(call, what)                                                                            \
    do {                                                                                           \
        if ((rc = cuda_failed((call), (what), err)) < 0)                                           \
            goto fail;                                                                             \
    } while (0)
    TRY(cudaSetDevice(c->config.device), "selecting the device");
    /* Reference rows are small: upload them first, synchronously on the compute stream. */
    TRY(cudaMemcpyAsync(c->d_dark, refs->dark, (size_t)nz * c->N * sizeof(double),
                        cudaMemcpyHostToDevice, c->compute),
        "uploading the dark");
    for (int g = 0; g < c->G; g++)
        TRY(cudaMemcpyAsync(c->d_flats + (long)g * nz * c->N,
                            refs->flat_groups + (long)g * flat_stride,
                            (size_t)nz * c->N * sizeof(double), cudaMemcpyHostToDevice, c->compute),
            "uploading the flats");
    TRY(cudaMemcpyAsync(c->d_flat_a, refs->flat_a, (size_t)c->M * sizeof(int),
                        cudaMemcpyHostToDevice, c->compute),
        "uploading flat brackets");
    TRY(cudaMemcpyAsync(c->d_flat_b, refs->flat_b, (size_t)c->M * sizeof(int),
                        cudaMemcpyHostToDevice, c->compute),
        "uploading flat brackets");
    TRY(cudaMemcpyAsync(c->d_flat_w, refs->flat_w, (size_t)c->M * sizeof(double),
                        cudaMemcpyHostToDevice, c->compute),
        "uploading flat weights");
    TRY(cudaMemsetAsync(c->d_clipped, 0, (size_t)nz * c->M * sizeof(int), c->compute),
        "clearing counters");
    TRY(cudaMemsetAsync(c->d_counts, 0, 2 * sizeof(unsigned long long), c->compute),
        "clearing counters");
    TRY(cudaStreamSynchronize(c->compute), "uploading reference rows");

    for (int g = 0; g < n_groups; g++) {
        int z0 = g * GROUP, n = nz - z0 < GROUP ? nz - z0 : GROUP;
        int slot = g & 1;
        /* upload: this group's raw rows (the slot's previous use is long finished) */
        TRY(cudaMemcpyAsync(c->d_raw + (long)z0 * NM, c->h_raw + (long)(first + z0) * NM,
                            (size_t)n * NM * sizeof(float), cudaMemcpyHostToDevice, c->up),
            "uploading raw rows");
        TRY(cudaEventRecord(c->uploaded[slot], c->up), "recording an event");
        /* compute: wait for the upload, and for the tables' last reader (previous group) */
        TRY(cudaStreamWaitEvent(c->compute, c->uploaded[slot], 0), "ordering streams");
        normalise_kernel<<<blocks_for((long)GROUP * NM, threads), threads, 0, c->compute>>>(
            c->d_raw, c->d_dark, c->d_flats, c->d_flat_a, c->d_flat_b, c->d_flat_w, c->d_clipped,
            nz, z0, c->N, c->M, (float)c->config.prep.floor_counts);
        count_lines_kernel<<<blocks_for((long)GROUP * c->M, threads), threads, 0, c->compute>>>(
            c->d_clipped, nz, z0, c->M, black_limit, c->d_counts);
        dim3 bgrid(blocks_for(c->N, threads), n);
        black_lines_kernel<<<bgrid, threads, 0, c->compute>>>(c->d_raw, c->d_clipped, nz, z0, c->N,
                                                              c->M, black_limit);
        for (int s = 0; s < n; s++) {
            if (c->config.rings.method != TOMO_RINGS_NONE)
                remove_rings_slice(c, c->d_raw + (long)(z0 + s) * NM);
            filter_slice(c, z0 + s, s);
        }
        backproject_group(c, z0, n);
        TRY(cudaGetLastError(), "launching kernels");
        TRY(cudaEventRecord(c->computed[slot], c->compute), "recording an event");
        /* download this group's images when computed */
        TRY(cudaStreamWaitEvent(c->down, c->computed[slot], 0), "ordering streams");
        TRY(cudaMemcpyAsync(c->h_images + (long)z0 * SS, c->d_images + (long)z0 * SS,
                            (size_t)n * SS * sizeof(float), cudaMemcpyDeviceToHost, c->down),
            "downloading images");
        TRY(cudaEventRecord(c->downloaded[g], c->down), "recording an event");
    }
    /* every raw row is on its way: the raw buffer is free once this event has passed */
    TRY(cudaEventRecord(c->raw_free, c->up), "recording an event");
    c->begun_nz = nz;
    return 0;
fail:
    drain(c);
    return rc;
#undef TRY
}

int tomo_cuda_raw_wait(tomo_cuda *c, tomo_error *err)
{
    int rc = cuda_failed(cudaSetDevice(c->config.device), "selecting the device", err);
    return rc < 0 ? rc : cuda_failed(cudaEventSynchronize(c->raw_free), "uploading raw rows", err);
}

int tomo_cuda_finish(tomo_cuda *c, float *const *images, tomo_prep_stats *stats, tomo_error *err)
{
    int nz = c->begun_nz;
    if (nz < 1)
        return tomo_error_set(err, TOMO_E_INTERNAL, "GPU: no chunk was begun");
    c->begun_nz = 0;
    long SS = (long)c->S * c->S;
    int n_groups = (nz + GROUP - 1) / GROUP;
    int rc;
#define TRY(call, what)                                                                            \
    do {                                                                                           \
        if ((rc = cuda_failed((call), (what), err)) < 0)                                           \
            goto fail;                                                                             \
    } while (0)
    TRY(cudaSetDevice(c->config.device), "selecting the device");
    /* Copy each group out as soon as it has arrived, while the GPU works on the next ones. */
    for (int g = 0; g < n_groups; g++) {
        TRY(cudaEventSynchronize(c->downloaded[g]), "reconstructing");
        int first = g * GROUP, n = nz - first < GROUP ? nz - first : GROUP;
        copy_job job = {c->h_images + (long)first * SS, images + first, SS, COPY_PARTS};
        tomo_pool_run(c->config.copy_pool, n * COPY_PARTS, copy_part, &job);
    }
    TRY(cudaStreamSynchronize(c->compute), "reconstructing");
    if (stats) {
        unsigned long long counts[2];
        TRY(cudaMemcpy(counts, c->d_counts, sizeof counts, cudaMemcpyDeviceToHost),
            "reading counters");
        stats->clipped_pixels += (long)counts[0];
        stats->black_lines += (long)counts[1];
    }
    return 0;
fail:
    drain(c);
    return rc;
#undef TRY
}

int tomo_cuda_reconstruct(tomo_cuda *c, int nz, const tomo_cuda_refs *refs, float *const *images,
                          tomo_prep_stats *stats, tomo_error *err)
{
    int rc = tomo_cuda_begin(c, 0, nz, refs, err);
    return rc < 0 ? rc : tomo_cuda_finish(c, images, stats, err);
}

int tomo_cuda_bench_backproject(tomo_cuda *c, const float *filtered, int nz, int repeat,
                                float *images, double *ms, tomo_error *err)
{
    /* Upload filtered rows into the padded buffer's layout by way of the table kernels. */
    long NM = (long)c->N * c->M, SS = (long)c->S * c->S;
    int rc;
    if (nz < 1 || nz > GROUP)
        return tomo_error_set(err, TOMO_E_INVALID, "GPU bench: 1 to %d slices", GROUP);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    for (int s = 0; s < nz; s++) {
        if ((rc = cuda_failed(cudaMemcpy2D(c->d_padded, (size_t)c->L * sizeof(float),
                                           filtered + (long)s * NM, (size_t)c->N * sizeof(float),
                                           (size_t)c->N * sizeof(float), (size_t)c->M,
                                           cudaMemcpyHostToDevice),
                              "uploading filtered rows", err)) < 0)
            return rc;
        long entries = (long)c->M * (c->N + 2);
        if (c->config.precision == TOMO_PRECISION_EXACT)
            table_kernel<<<blocks_for(entries, 256), 256, 0, c->compute>>>(
                c->d_padded, c->L, c->N, c->M, c->d_weight, c->d_table + (long)s * entries);
        else
            pack_kernel<<<blocks_for(entries, 256), 256, 0, c->compute>>>(
                c->d_padded, c->L, c->N, c->M, c->d_weight, c->d_packed, s);
    }
    double best = INFINITY;
    for (int r = 0; r < repeat; r++) {
        cudaEventRecord(start, c->compute);
        backproject_group(c, 0, nz);
        cudaEventRecord(stop, c->compute);
        if ((rc = cuda_failed(cudaEventSynchronize(stop), "back-projecting", err)) < 0)
            return rc;
        float t;
        cudaEventElapsedTime(&t, start, stop);
        best = t < best ? t : best;
    }
    *ms = best;
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return cuda_failed(
        cudaMemcpy(images, c->d_images, (size_t)nz * SS * sizeof(float), cudaMemcpyDeviceToHost),
        "downloading images", err);
}

void tomo_cuda_destroy(tomo_cuda *c)
{
    if (!c)
        return;
    cudaSetDevice(c->config.device);
    if (c->up && c->compute && c->down)
        drain(c);
    if (c->have_r2c)
        cufftDestroy(c->r2c);
    if (c->have_c2r)
        cufftDestroy(c->c2r);
    tomo_cuda_stripes_destroy(c->stripes);
    cudaFreeHost(c->h_raw);
    cudaFreeHost(c->h_images);
    void *device[] = {
        c->d_raw,         c->d_dark,    c->d_flats,       c->d_flat_a,  c->d_flat_b,
        c->d_flat_w,      c->d_clipped, c->d_counts,      c->d_padded,  c->d_spectra,
        c->d_kernel,      c->d_window,  c->d_trig,        c->d_weight,  c->d_table,
        c->d_packed,      c->d_images,  c->d_xs,          c->d_ys,      c->d_keys,
        c->d_keys_sorted, c->d_rows,    c->d_rows_sorted, c->d_offsets, c->d_sort_temp};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
        cudaFree(device[i]);
    for (int i = 0; i < 2; i++) {
        if (c->uploaded[i])
            cudaEventDestroy(c->uploaded[i]);
        if (c->computed[i])
            cudaEventDestroy(c->computed[i]);
    }
    for (int i = 0; c->downloaded && i < c->n_groups_max; i++)
        if (c->downloaded[i])
            cudaEventDestroy(c->downloaded[i]);
    if (c->raw_free)
        cudaEventDestroy(c->raw_free);
    free(c->downloaded);
    if (c->up)
        cudaStreamDestroy(c->up);
    if (c->compute)
        cudaStreamDestroy(c->compute);
    if (c->down)
        cudaStreamDestroy(c->down);
    free(c);
}

int tomo_cuda_supports_rings(const tomo_rings_params *rings)
{
    if (rings->method == TOMO_RINGS_NONE)
        return 1;
    if (!tomo_cuda_stripes_supports(rings))
        return 0;
    if (rings->method != TOMO_RINGS_SORT && rings->method != TOMO_RINGS_ALL)
        return 1; /* large, dead: no algorithm 3 step */
    int size = rings->method == TOMO_RINGS_ALL ? rings->sm_size : rings->size;
    if (size < 1)
        return 0;
    return rings->dim == 2 ? size <= 15 : size <= 127;
}

int tomo_cuda_bench_rings(tomo_cuda *c, float *sino, int repeat, double *ms, tomo_error *err)
{
    if (c->config.rings.method == TOMO_RINGS_NONE)
        return tomo_error_set(err, TOMO_E_INVALID, "GPU bench: the pipeline removes no rings");
    size_t bytes = (size_t)c->M * c->N * sizeof(float);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    double best = INFINITY;
    int rc = 0;
    for (int r = 0; r < repeat && rc == 0; r++) {
        /* on the compute stream: cudaMemcpy from pageable memory may return before the data
           is on the device, and the compute stream would not wait for it */
        cudaError_t up = cudaMemcpyAsync(c->d_raw, sino, bytes, cudaMemcpyHostToDevice, c->compute);
        if (up == cudaSuccess)
            up = cudaStreamSynchronize(c->compute);
        if ((rc = cuda_failed(up, "uploading the sinogram", err)) < 0)
            break;
        cudaEventRecord(start, c->compute);
        remove_rings_slice(c, c->d_raw);
        cudaEventRecord(stop, c->compute);
        if ((rc = cuda_failed(cudaEventSynchronize(stop), "removing rings", err)) < 0)
            break;
        float t;
        cudaEventElapsedTime(&t, start, stop);
        best = t < best ? t : best;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    if (rc < 0)
        return rc;
    *ms = best;
    return cuda_failed(cudaMemcpy(sino, c->d_raw, bytes, cudaMemcpyDeviceToHost),
                       "downloading the sinogram", err);
}
