/*
 * denoise/unet_cuda.cu - the U-Net of unet.h on a CUDA GPU.
 *
 * The 3x3 convolutions run in cuDNN (the legacy convolution API: cudnnConvolutionForward,
 * BackwardData, BackwardFilter). The transposed 2x2 stride-2 convolution of up[l] maps every
 * input pixel to its own 2x2 output block, so it is one matrix product per image in cuBLAS:
 * Y4[(o, ky, kx)][p] = sum_c W[c][(o, ky, kx)] X[c][p], and a kernel moves Y4 into the
 * concatenation (plus the bias); its backward pass is the same gather and two products. (cuDNN's
 * BackwardData of a 2x2 stride-2 convolution computes the same, but its fp32 algorithms took
 * 300 ms per 4448 x 4448 inference on an H100.) Everything else is a kernel of this file: BatchNorm
 * with batch statistics (sums in double, per-channel partial sums reduced in a fixed order, so the
 * result does not depend on scheduling) and its backward pass, ReLU, the 2x2 max-pool (the first
 * maximum in row-major order wins, as in PyTorch), the concatenation, the head, the loss, the
 * running statistics and Adam.
 *
 * Tensors are NCHW floats. The concatenation of dec[l] is a buffer cat[l] of 2 f_l channels per
 * image: down[l] writes its output (the skip) into the first half and up[l] into the second, so
 * nothing is copied; cuDNN only ever sees packed tensors.
 *
 * At inference BatchNorm uses the running statistics, applied with the ReLU in the kernel that
 * follows each convolution (and, after dec[0], together with the head), so it costs no pass of
 * its own; only the skips and two scratch tensors stay alive. Training keeps, per unit, the
 * convolution's output and the ReLU's output for the backward pass.
 *
 * Precision: `exact` selects CUDNN_FMA_MATH, which restricts cuDNN to kernels without tensor
 * cores (CUDNN_DEFAULT_MATH would still allow TF32 on Ampere and later); otherwise
 * CUDNN_TENSOR_OP_MATH (TF32). The kernels of this file are fp32 (sums in double) either way.
 *
 * cuDNN's algorithms are chosen once per executor, within a workspace of at most WORKSPACE_MAX
 * bytes: for training by timing every candidate on the executor's own buffers
 * (cudnnFind*AlgorithmEx, some seconds, repaid over a training run), for inference by cuDNN's
 * heuristics (a fraction of a second, so the first denoised slice is not delayed; measured
 * within 10 % of the timed choice). TOMOFS_CUDNN_SEARCH=find or =heuristic in the environment
 * overrides. The workspace is then shrunk to what the chosen algorithms need. A call with fewer
 * images than the executor's batch keeps the algorithms where they still fit.
 *
 * Host memory: the caller's arrays are pageable, which the driver copies at about 7 GB/s. So
 * copies go through two pinned staging buffers, filled and drained by a few threads while the
 * other buffer is in flight (about 40 ms instead of 120 ms for 11 x 4448 x 4448 floats).
 *
 * Device memory is allocated at create in one block (plus the workspace); the operations
 * allocate nothing. One executor is used by one thread at a time.
 *
 * TOMOFS_UNET_PROFILE=1 in the environment synchronises after every step and prints, when the
 * executor is destroyed, where the time went (copies, each direction of the convolutions, the
 * other kernels), to standard error.
 */
extern "C" {
#include "../common/pool.h"
#include "unet_exec.h"
}

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define THREADS          256
#define PARTS_MAX        256 /* partial sums per channel in the BatchNorm reductions */
#define LOSS_BLOCKS      1024
#define BN_EPS           1e-5
#define BN_MOMENTUM      0.1f
#define WORKSPACE_MAX    ((size_t)8 << 30)
#define RESERVE          ((size_t)512 << 20) /* device memory left to cuDNN and the driver */
#define ALGOS_MAX        16
#define STAGE_BYTES      ((size_t)32 << 20) /* each of the two pinned staging buffers */
#define COPY_TASKS       32                 /* pieces of one staged chunk */
#define COPY_THREADS     16
#define CUBLAS_WORKSPACE ((size_t)32 << 20)

enum { FWD = 0, BWD_DATA = 1, BWD_FILTER = 2 };
enum { PROF_UP = 3, PROF_COPY = 4, PROF_TOTAL = 5, PROF_N = 6 };
static const char *const prof_name[PROF_N] = {
    "convolutions forward", "backward data", "backward filter",
    "transposed (cuBLAS)",  "copies",        "total"};
static const char *const direction_name[3] = {"forward", "backward data", "backward filter"};

/* One cuDNN convolution: x (xc channels, xh x xw) -> y (yc channels, yh x yw). */
typedef struct conv_op {
    char name[32];
    int xc, xh, xw, yc, yh, yw;
    int k, stride, pad;
    int need[3]; /* FWD, BWD_DATA, BWD_FILTER used by this executor */
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd[3];
    int algo_full[3], algo[3]; /* for the whole batch; for the current batch */
    size_t ws_full[3], ws[3];
    cudnnMathType_t math_full[3];
    /* buffers the algorithm search may use: x, y, the weights and their gradient */
    float *x, *y, *w, *dw;
} conv_op;

/* One conv 3x3 -> BatchNorm -> ReLU unit and its buffers. */
typedef struct unit_rt {
    const tomo_unet_unit *u;
    int level;
    conv_op conv;
    const float *x; /* input, packed */
    float *y;       /* convolution output, packed (its gradient in the backward pass) */
    float *a;       /* ReLU output: a packed buffer, the skip half of cat[l], or y itself */
    size_t a_ns;    /* floats between images of a */
    /* per channel: batch mean, biased variance, 1/sqrt(var + eps), gamma / sqrt(var + eps),
       and the inference scale gamma / sqrt(running var + eps) */
    float *bmean, *bvar, *binvstd, *tscale, *iscale;
} unit_rt;

typedef struct up_rt {
    const tomo_unet_up *u;
    int level; /* output level l */
    const float *in;
    float *tmp; /* the product Y4 [out_c][2][2][pixels of level l+1] (its gradient backward) */
} up_rt;

typedef struct cuda_exec {
    struct tomo_unet_exec base;
    int device, B, C, H, W, L, f, training;
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    int have_stream, have_cudnn, have_cublas;
    tomo_pool *pool;
    char *stage[2];        /* pinned */
    cudaEvent_t staged[2]; /* the last copy through stage[i] is done */
    int have_events;
    void *cublas_ws;
    char *arena;
    size_t arena_bytes;
    void *ws;
    size_t ws_bytes;
    int cur_n; /* batch the descriptors are set for; 0: none */
    int profiling;
    double prof[PROF_N]; /* seconds */
    long prof_calls;
    int prof_warm;
    int coeffs_dirty; /* the inference scales must be recomputed */
    uint64_t step;

    float *params, *buffers, *adam_m, *adam_v, *grad;
    float *in, *out, *target, *dout;
    float *cat[TOMO_UNET_MAX_LEVELS], *dcat[TOMO_UNET_MAX_LEVELS];
    float *pooled[TOMO_UNET_MAX_LEVELS];
    float *ga, *gb, *gu, *gp; /* gradient scratch */
    float *k1, *k2;           /* per-channel BatchNorm backward coefficients */
    double2 *partial;
    double *loss_partial;
    double *h_loss; /* host copy of loss_partial */

    unit_rt down[TOMO_UNET_MAX_LEVELS + 1][2];
    unit_rt dec[TOMO_UNET_MAX_LEVELS][2];
    up_rt up[TOMO_UNET_MAX_LEVELS];
} cuda_exec;

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

static int cuda_fail(const cuda_exec *x, cudaError_t rc, const char *what, tomo_error *err)
{
    return tomo_error_set(err, rc == cudaErrorMemoryAllocation ? TOMO_E_NOMEM : TOMO_E_IO,
                          "cuda:%d: network: %s: %s", x->device, what, cudaGetErrorString(rc));
}

static int cublas_fail(const cuda_exec *x, cublasStatus_t rc, const char *what, tomo_error *err)
{
    return tomo_error_set(err, rc == CUBLAS_STATUS_ALLOC_FAILED ? TOMO_E_NOMEM : TOMO_E_IO,
                          "cuda:%d: network: cuBLAS %s: error %d", x->device, what, (int)rc);
}

static int cudnn_fail(const cuda_exec *x, cudnnStatus_t rc, const char *what, tomo_error *err)
{
    return tomo_error_set(err, rc == CUDNN_STATUS_ALLOC_FAILED ? TOMO_E_NOMEM : TOMO_E_IO,
                          "cuda:%d: network: cuDNN %s: %s", x->device, what,
                          cudnnGetErrorString(rc));
}

#define CUDA_TRY(call, what)                                                                       \
    do {                                                                                           \
        cudaError_t rc_ = (call);                                                                  \
        if (rc_ != cudaSuccess)                                                                    \
            return cuda_fail(x, rc_, what, err);                                                   \
    } while (0)

#define CUDNN_TRY(call, what)                                                                      \
    do {                                                                                           \
        cudnnStatus_t rc_ = (call);                                                                \
        if (rc_ != CUDNN_STATUS_SUCCESS)                                                           \
            return cudnn_fail(x, rc_, what, err);                                                  \
    } while (0)

#define CUBLAS_TRY(call, what)                                                                     \
    do {                                                                                           \
        cublasStatus_t rc_ = (call);                                                               \
        if (rc_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return cublas_fail(x, rc_, what, err);                                                 \
    } while (0)

#define LAUNCHED(what) CUDA_TRY(cudaGetLastError(), what)

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* With profiling: waits for the GPU and returns the time. */
static double prof_mark(cuda_exec *x)
{
    if (!x->profiling)
        return 0.0;
    cudaStreamSynchronize(x->stream);
    return wall();
}

static void prof_add(cuda_exec *x, int what, double since)
{
    if (x->profiling)
        x->prof[what] += prof_mark(x) - since;
}

/* Counts a call; the first one (cuDNN's lazy initialisation) is left out. */
static void prof_call(cuda_exec *x)
{
    if (x->prof_calls++ == 0 && !x->prof_warm) {
        memset(x->prof, 0, sizeof x->prof);
        x->prof_calls = 0;
        x->prof_warm = 1;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                     */

__device__ __forceinline__ float relu(float v)
{
    return v > 0.0f ? v : 0.0f;
}

/* Sums s and q over the block (THREADS threads); thread 0 holds the totals. */
__device__ void block_sum2(double &s, double &q)
{
    __shared__ double ss[THREADS / 32], qs[THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) {
        s += __shfl_down_sync(0xffffffffu, s, o);
        q += __shfl_down_sync(0xffffffffu, q, o);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        ss[warp] = s;
        qs[warp] = q;
    }
    __syncthreads();
    if (warp == 0) {
        s = lane < THREADS / 32 ? ss[lane] : 0.0;
        q = lane < THREADS / 32 ? qs[lane] : 0.0;
        for (int o = THREADS / 64; o > 0; o >>= 1) {
            s += __shfl_down_sync(0xffffffffu, s, o);
            q += __shfl_down_sync(0xffffffffu, q, o);
        }
    }
}

/*
 * Per-channel sums over n images and hw pixels: block (part, c) sums its share of channel c
 * with f, which adds pixel p of image i to s and q, and writes partial[c * parts + part].
 */
template <class F> __global__ void reduce_kernel(F f, int n, int hw, int parts, double2 *partial)
{
    int c = blockIdx.y, part = blockIdx.x;
    int chunk = (hw + parts - 1) / parts;
    int p0 = part * chunk, p1 = min(hw, p0 + chunk);
    double s = 0.0, q = 0.0;
    for (int i = 0; i < n; i++) {
#pragma unroll 4
        for (int p = p0 + threadIdx.x; p < p1; p += THREADS)
            f(i, c, p, s, q);
    }
    block_sum2(s, q);
    if (threadIdx.x == 0)
        partial[(size_t)c * parts + part] = make_double2(s, q);
}

/* s += y, q += y^2 */
struct stats_f {
    const float *y;
    size_t ns;
    int hw;
    __device__ void operator()(int i, int c, int p, double &s, double &q) const
    {
        double v = y[i * ns + (size_t)c * hw + p];
        s += v;
        q += v * v;
    }
};

/* With dz = (a > 0 ? da : 0) and xhat = (y - mean) invstd: s += dz, q += dz xhat */
struct bn_back_f {
    const float *da, *a, *y;
    size_t da_ns, a_ns, y_ns;
    int hw;
    const float *mean, *invstd;
    __device__ void operator()(int i, int c, int p, double &s, double &q) const
    {
        size_t o = (size_t)c * hw + p;
        float dz = a[i * a_ns + o] > 0.0f ? da[i * da_ns + o] : 0.0f;
        float xhat = (y[i * y_ns + o] - mean[c]) * invstd[c];
        s += dz;
        q += (double)dz * xhat;
    }
};

/* s += g (a bias gradient) */
struct sum_f {
    const float *g;
    size_t ns;
    int hw;
    __device__ void operator()(int i, int c, int p, double &s, double &q) const
    {
        (void)q;
        s += g[i * ns + (size_t)c * hw + p];
    }
};

/* The head: s += a dout (weight gradient of channel c), q += dout (bias gradient) */
struct head_f {
    const float *a, *dout;
    size_t a_ns;
    int hw;
    __device__ void operator()(int i, int c, int p, double &s, double &q) const
    {
        float d = dout[(size_t)i * hw + p];
        s += (double)a[i * a_ns + (size_t)c * hw + p] * d;
        q += d;
    }
};

/* Batch statistics from the partial sums of stats_f over `count` values per channel. */
__global__ void bn_stats_kernel(const double2 *partial, int parts, int channels, double count,
                                const float *gamma, float *mean, float *var, float *invstd,
                                float *scale)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double s = 0.0, q = 0.0;
    for (int k = 0; k < parts; k++) {
        s += partial[(size_t)c * parts + k].x;
        q += partial[(size_t)c * parts + k].y;
    }
    double m = s / count, v = q / count - m * m;
    v = v > 0.0 ? v : 0.0;
    double is = 1.0 / sqrt(v + BN_EPS);
    mean[c] = (float)m;
    var[c] = (float)v;
    invstd[c] = (float)is;
    scale[c] = (float)(gamma[c] * is);
}

/* Inference scale gamma / sqrt(running var + eps). */
__global__ void bn_infer_kernel(const float *gamma, const float *rvar, int channels, float *scale)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels)
        scale[c] = (float)(gamma[c] / sqrt((double)rvar[c] + BN_EPS));
}

/* BatchNorm backward: dgamma, dbeta and the coefficients mean(dz), mean(dz xhat). */
__global__ void bn_back_stats_kernel(const double2 *partial, int parts, int channels, double count,
                                     float *dgamma, float *dbeta, float *k1, float *k2)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double s = 0.0, q = 0.0;
    for (int k = 0; k < parts; k++) {
        s += partial[(size_t)c * parts + k].x;
        q += partial[(size_t)c * parts + k].y;
    }
    dbeta[c] = (float)s;
    dgamma[c] = (float)q;
    k1[c] = (float)(s / count);
    k2[c] = (float)(q / count);
}

/* out[c] = s of channel c; with q_out, *q_out = q of channel 0. */
__global__ void sums_kernel(const double2 *partial, int parts, int channels, float *out,
                            float *q_out)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    double s = 0.0, q = 0.0;
    for (int k = 0; k < parts; k++) {
        s += partial[(size_t)c * parts + k].x;
        q += partial[(size_t)c * parts + k].y;
    }
    out[c] = (float)s;
    if (q_out && c == 0)
        *q_out = (float)q;
}

/* a = relu((y - mean) scale + beta); grid (pixels, channels, images). a may be y. */
__global__ void bn_relu_kernel(const float *y, size_t y_ns, float *a, size_t a_ns, int hw,
                               const float *mean, const float *scale, const float *beta)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw)
        return;
    int c = blockIdx.y, i = blockIdx.z;
    size_t o = (size_t)c * hw + p;
    a[i * a_ns + o] = relu((y[i * y_ns + o] - mean[c]) * scale[c] + beta[c]);
}

/* The index (0..3, row-major) of the largest of four values; the first one wins ties. */
__device__ __forceinline__ int argmax4(float v0, float v1, float v2, float v3)
{
    int k = 0;
    float m = v0;
    if (v1 > m) {
        m = v1;
        k = 1;
    }
    if (v2 > m) {
        m = v2;
        k = 2;
    }
    if (v3 > m)
        k = 3;
    return k;
}

/*
 * bn_relu_kernel into the skip (a, a_ns) and the 2x2 max-pool of the result into pooled;
 * grid (pooled pixels, channels, images).
 */
__global__ void bn_relu_pool_kernel(const float *y, size_t y_ns, float *a, size_t a_ns,
                                    float *pooled, int h, int w, const float *mean,
                                    const float *scale, const float *beta)
{
    int w2 = w / 2, q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (h / 2) * w2)
        return;
    int c = blockIdx.y, i = blockIdx.z, channels = gridDim.y;
    int r = q / w2, s = q % w2;
    size_t o = (size_t)c * h * w + (size_t)(2 * r) * w + 2 * s;
    float m = mean[c], sc = scale[c], b = beta[c];
    const float *yy = y + i * y_ns + o;
    float2 t = *reinterpret_cast<const float2 *>(yy);
    float2 u = *reinterpret_cast<const float2 *>(yy + w);
    float v[4] = {relu((t.x - m) * sc + b), relu((t.y - m) * sc + b), relu((u.x - m) * sc + b),
                  relu((u.y - m) * sc + b)};
    float *aa = a + i * a_ns + o;
    *reinterpret_cast<float2 *>(aa) = make_float2(v[0], v[1]);
    *reinterpret_cast<float2 *>(aa + w) = make_float2(v[2], v[3]);
    pooled[((size_t)i * channels + c) * (h / 2) * w2 + q] = v[argmax4(v[0], v[1], v[2], v[3])];
}

/*
 * Backward of the max-pool, plus the skip's gradient from the concatenation:
 * da = (the pooled gradient at the window's maximum) + dcat's skip half.
 */
__global__ void pool_back_kernel(const float *a, size_t a_ns, const float *dpooled,
                                 const float *dskip, size_t dskip_ns, float *da, int h, int w)
{
    int w2 = w / 2, q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= (h / 2) * w2)
        return;
    int c = blockIdx.y, i = blockIdx.z, channels = gridDim.y;
    int r = q / w2, s = q % w2;
    size_t o = (size_t)c * h * w + (size_t)(2 * r) * w + 2 * s;
    const float *aa = a + i * a_ns + o;
    float2 t = *reinterpret_cast<const float2 *>(aa);
    float2 u = *reinterpret_cast<const float2 *>(aa + w);
    int k = argmax4(t.x, t.y, u.x, u.y);
    float g = dpooled[((size_t)i * channels + c) * (h / 2) * w2 + q];
    const float *ds = dskip + i * dskip_ns + o;
    float2 dt = *reinterpret_cast<const float2 *>(ds);
    float2 du = *reinterpret_cast<const float2 *>(ds + w);
    float *out = da + (size_t)i * channels * h * w + o;
    *reinterpret_cast<float2 *>(out) =
        make_float2(dt.x + (k == 0 ? g : 0.0f), dt.y + (k == 1 ? g : 0.0f));
    *reinterpret_cast<float2 *>(out + w) =
        make_float2(du.x + (k == 2 ? g : 0.0f), du.y + (k == 3 ? g : 0.0f));
}

/* dy = scale (dz - k1 - xhat k2), written over y; grid (pixels, channels, images). */
__global__ void bn_back_kernel(const float *da, size_t da_ns, const float *a, size_t a_ns, float *y,
                               size_t y_ns, int hw, const float *mean, const float *invstd,
                               const float *scale, const float *k1, const float *k2)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw)
        return;
    int c = blockIdx.y, i = blockIdx.z;
    size_t o = (size_t)c * hw + p;
    float dz = a[i * a_ns + o] > 0.0f ? da[i * da_ns + o] : 0.0f;
    float xhat = (y[i * y_ns + o] - mean[c]) * invstd[c];
    y[i * y_ns + o] = scale[c] * (dz - k1[c] - xhat * k2[c]);
}

/*
 * up[l]'s output into cat[l]'s second half (dst, a view): Y4 (packed, per image
 * [out_c][2][2][hs * ws]) plus the bias; grid (pixels of level l+1, out_c, images).
 */
__global__ void up_scatter_kernel(const float *y4, float *dst, size_t dst_ns, int hs, int ws,
                                  const float *bias)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x, hws = hs * ws;
    if (p >= hws)
        return;
    int o = blockIdx.y, i = blockIdx.z, oc = gridDim.y, w = 2 * ws;
    int r = p / ws, s = p % ws;
    const float *src = y4 + ((size_t)i * oc + o) * 4 * hws + p;
    float b = bias[o];
    float *d = dst + i * dst_ns + (size_t)o * 4 * hws + (size_t)(2 * r) * w + 2 * s;
    *reinterpret_cast<float2 *>(d) = make_float2(src[0] + b, src[hws] + b);
    *reinterpret_cast<float2 *>(d + w) = make_float2(src[2 * hws] + b, src[3 * hws] + b);
}

/* The inverse move: the gradient of cat[l]'s second half (src, a view) into Y4's layout. */
__global__ void up_gather_kernel(const float *src, size_t src_ns, float *y4, int hs, int ws)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x, hws = hs * ws;
    if (p >= hws)
        return;
    int o = blockIdx.y, i = blockIdx.z, oc = gridDim.y, w = 2 * ws;
    int r = p / ws, s = p % ws;
    const float *g = src + i * src_ns + (size_t)o * 4 * hws + (size_t)(2 * r) * w + 2 * s;
    float2 t = *reinterpret_cast<const float2 *>(g);
    float2 u = *reinterpret_cast<const float2 *>(g + w);
    float *d = y4 + ((size_t)i * oc + o) * 4 * hws + p;
    d[0] = t.x;
    d[hws] = t.y;
    d[2 * hws] = u.x;
    d[3 * hws] = u.y;
}

/*
 * The head: out = b + sum_c w[c] a[c], with a = src, or a = relu((src - mean) scale + beta)
 * when mean is not NULL. Grid (pixels / THREADS, 1, images).
 */
__global__ void head_kernel(const float *src, size_t src_ns, int channels, int hw,
                            const float *mean, const float *scale, const float *beta,
                            const float *w, const float *b, float *out)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw)
        return;
    int i = blockIdx.z;
    const float *s = src + i * src_ns + p;
    float sum = 0.0f;
    for (int c = 0; c < channels; c++) {
        float v = s[(size_t)c * hw];
        if (mean)
            v = relu((v - mean[c]) * scale[c] + beta[c]);
        sum += w[c] * v;
    }
    out[(size_t)i * hw + p] = sum + b[0];
}

/* da[c] = w[c] dout; grid (pixels, channels, images). */
__global__ void head_back_kernel(const float *dout, const float *w, float *da, int hw)
{
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= hw)
        return;
    int c = blockIdx.y, i = blockIdx.z, channels = gridDim.y;
    da[((size_t)i * channels + c) * hw + p] = w[c] * dout[(size_t)i * hw + p];
}

/* MSE: dout = 2 (out - target) / count; partial[block] = sum of (out - target)^2. */
__global__ void loss_kernel(const float *out, const float *target, size_t count, float *dout,
                            double *partial)
{
    double s = 0.0, unused = 0.0;
    float scale = (float)(2.0 / (double)count);
    for (size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x; k < count;
         k += (size_t)gridDim.x * blockDim.x) {
        float d = out[k] - target[k];
        dout[k] = scale * d;
        s += (double)d * d;
    }
    block_sum2(s, unused);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

/* Running statistics (PyTorch's): r = (1 - momentum) r + momentum batch; variance unbiased. */
__global__ void running_kernel(float *rmean, float *rvar, const float *bmean, const float *bvar,
                               int channels, float unbias)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels)
        return;
    rmean[c] = (1.0f - BN_MOMENTUM) * rmean[c] + BN_MOMENTUM * bmean[c];
    rvar[c] = (1.0f - BN_MOMENTUM) * rvar[c] + BN_MOMENTUM * (bvar[c] * unbias);
}

/* tomo_adam_update's formula, operation by operation, rounded as the CPU rounds it. */
__global__ void adam_kernel(float *p, const float *g, float *m, float *v, size_t n, float lr,
                            float b1, float b2, float eps, float correction1, float correction2)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(__fsub_rn(1.0f, b1), gi));
        float vi =
            __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), gi), gi));
        m[i] = mi;
        v[i] = vi;
        float m_hat = __fdiv_rn(mi, correction1);
        float v_hat = __fdiv_rn(vi, correction2);
        p[i] = __fsub_rn(p[i], __fdiv_rn(__fmul_rn(lr, m_hat), __fadd_rn(__fsqrt_rn(v_hat), eps)));
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Launch helpers                                                                              */

static dim3 grid1(int hw, int channels, int n)
{
    return dim3((unsigned)((hw + THREADS - 1) / THREADS), (unsigned)channels, (unsigned)n);
}

static dim3 grid_pool(int h, int w, int channels, int n)
{
    return dim3((unsigned)(((h / 2) * (w / 2) + THREADS - 1) / THREADS), (unsigned)channels,
                (unsigned)n);
}

static int parts_for(int channels, int hw)
{
    int parts = 2048 / channels;
    int most = hw / (4 * THREADS);
    parts = parts < most ? parts : most;
    parts = parts < PARTS_MAX ? parts : PARTS_MAX;
    return parts < 1 ? 1 : parts;
}

template <class F> static void reduce(cuda_exec *x, F f, int channels, int n, int hw, int *parts)
{
    *parts = parts_for(channels, hw);
    reduce_kernel<F><<<dim3((unsigned)*parts, (unsigned)channels), THREADS, 0, x->stream>>>(
        f, n, hw, *parts, x->partial);
}

static unsigned blocks_for(int count)
{
    return (unsigned)((count + THREADS - 1) / THREADS);
}

/* ------------------------------------------------------------------------------------------ */
/* Convolutions                                                                                */

static int set_tensor(cuda_exec *x, cudnnTensorDescriptor_t d, int n, int c, int h, int w,
                      tomo_error *err)
{
    CUDNN_TRY(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, c, h, w),
              "tensor descriptor");
    return 0;
}

static int op_init(cuda_exec *x, conv_op *op, tomo_error *err)
{
    CUDNN_TRY(cudnnCreateTensorDescriptor(&op->xd), "creating a descriptor");
    CUDNN_TRY(cudnnCreateTensorDescriptor(&op->yd), "creating a descriptor");
    CUDNN_TRY(cudnnCreateFilterDescriptor(&op->wd), "creating a descriptor");
    CUDNN_TRY(cudnnSetFilter4dDescriptor(op->wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, op->yc,
                                         op->xc, op->k, op->k),
              "filter descriptor");
    cudnnMathType_t math = x->base.config.exact ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    for (int d = 0; d < 3; d++) {
        CUDNN_TRY(cudnnCreateConvolutionDescriptor(&op->cd[d]), "creating a descriptor");
        CUDNN_TRY(cudnnSetConvolution2dDescriptor(op->cd[d], op->pad, op->pad, op->stride,
                                                  op->stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                  CUDNN_DATA_FLOAT),
                  "convolution descriptor");
        CUDNN_TRY(cudnnSetConvolutionMathType(op->cd[d], math), "math type");
    }
    int rc = set_tensor(x, op->xd, x->B, op->xc, op->xh, op->xw, err);
    return rc < 0 ? rc : set_tensor(x, op->yd, x->B, op->yc, op->yh, op->yw, err);
}

static void op_destroy(conv_op *op)
{
    if (op->xd)
        cudnnDestroyTensorDescriptor(op->xd);
    if (op->yd)
        cudnnDestroyTensorDescriptor(op->yd);
    if (op->wd)
        cudnnDestroyFilterDescriptor(op->wd);
    for (int d = 0; d < 3; d++)
        if (op->cd[d])
            cudnnDestroyConvolutionDescriptor(op->cd[d]);
}

/* A result is usable when it ran, fits the workspace and keeps to the precision asked for. */
static int usable(const cuda_exec *x, cudnnStatus_t status, size_t memory, cudnnMathType_t math,
                  size_t cap)
{
    if (status != CUDNN_STATUS_SUCCESS || memory > cap)
        return 0;
    if (math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
        return 0;
    return !(x->base.config.exact && math == CUDNN_TENSOR_OP_MATH);
}

/*
 * Chooses the algorithm of one direction of op, for the batch its descriptors hold: timed on
 * the executor's buffers (find) or by cuDNN's heuristics, within `cap` bytes of workspace.
 */
static int choose(cuda_exec *x, conv_op *op, int d, int find, size_t cap, int *algo, size_t *ws,
                  cudnnMathType_t *chosen, tomo_error *err)
{
    int count = 0, found = -1, most = ALGOS_MAX;
    cudnnStatus_t rc;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH;
    if (d == FWD)
        rc = cudnnGetConvolutionForwardAlgorithmMaxCount(x->cudnn, &most);
    else if (d == BWD_DATA)
        rc = cudnnGetConvolutionBackwardDataAlgorithmMaxCount(x->cudnn, &most);
    else
        rc = cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(x->cudnn, &most);
    most = rc == CUDNN_STATUS_SUCCESS && most < ALGOS_MAX ? most : ALGOS_MAX;
    if (d == FWD) {
        cudnnConvolutionFwdAlgoPerf_t perf[ALGOS_MAX];
        rc = find ? cudnnFindConvolutionForwardAlgorithmEx(x->cudnn, op->xd, op->x, op->wd, op->w,
                                                           op->cd[d], op->yd, op->y, most, &count,
                                                           perf, x->ws, cap)
                  : cudnnGetConvolutionForwardAlgorithm_v7(x->cudnn, op->xd, op->wd, op->cd[d],
                                                           op->yd, most, &count, perf);
        for (int i = 0; rc == CUDNN_STATUS_SUCCESS && i < count && found < 0; i++)
            if (usable(x, perf[i].status, perf[i].memory, perf[i].mathType, cap)) {
                found = (int)perf[i].algo;
                *ws = perf[i].memory;
                math = perf[i].mathType;
            }
    } else if (d == BWD_DATA) {
        cudnnConvolutionBwdDataAlgoPerf_t perf[ALGOS_MAX];
        rc = find ? cudnnFindConvolutionBackwardDataAlgorithmEx(x->cudnn, op->wd, op->w, op->yd,
                                                                op->y, op->cd[d], op->xd, op->x,
                                                                most, &count, perf, x->ws, cap)
                  : cudnnGetConvolutionBackwardDataAlgorithm_v7(x->cudnn, op->wd, op->yd, op->cd[d],
                                                                op->xd, most, &count, perf);
        for (int i = 0; rc == CUDNN_STATUS_SUCCESS && i < count && found < 0; i++)
            if (usable(x, perf[i].status, perf[i].memory, perf[i].mathType, cap)) {
                found = (int)perf[i].algo;
                *ws = perf[i].memory;
                math = perf[i].mathType;
            }
    } else {
        cudnnConvolutionBwdFilterAlgoPerf_t perf[ALGOS_MAX];
        rc = find ? cudnnFindConvolutionBackwardFilterAlgorithmEx(x->cudnn, op->xd, op->x, op->yd,
                                                                  op->y, op->cd[d], op->wd, op->dw,
                                                                  most, &count, perf, x->ws, cap)
                  : cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                        x->cudnn, op->xd, op->yd, op->cd[d], op->wd, most, &count, perf);
        for (int i = 0; rc == CUDNN_STATUS_SUCCESS && i < count && found < 0; i++)
            if (usable(x, perf[i].status, perf[i].memory, perf[i].mathType, cap)) {
                found = (int)perf[i].algo;
                *ws = perf[i].memory;
                math = perf[i].mathType;
            }
    }
    if (rc != CUDNN_STATUS_SUCCESS) {
        char what[96];
        snprintf(what, sizeof what, "choosing the %s algorithm of %s", direction_name[d], op->name);
        return cudnn_fail(x, rc, what, err);
    }
    if (found < 0)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "cuda:%d: network: cuDNN has no %s algorithm for %s (%d -> %d "
                              "channels, %dx%d) within %zu bytes of workspace",
                              x->device, direction_name[d], op->name, op->xc, op->yc, op->xw,
                              op->xh, cap);
    /* As PyTorch does: the search may report the default math type, which on Ampere and later
       still allows TF32; exact forces FMA-only kernels. */
    if (x->base.config.exact)
        math = CUDNN_FMA_MATH;
    *algo = found;
    *chosen = math;
    CUDNN_TRY(cudnnSetConvolutionMathType(op->cd[d], math), "math type");
    return 0;
}

static int workspace_size(cuda_exec *x, conv_op *op, int d, int algo, size_t *bytes)
{
    cudnnStatus_t rc;
    if (d == FWD)
        rc = cudnnGetConvolutionForwardWorkspaceSize(x->cudnn, op->xd, op->wd, op->cd[d], op->yd,
                                                     (cudnnConvolutionFwdAlgo_t)algo, bytes);
    else if (d == BWD_DATA)
        rc = cudnnGetConvolutionBackwardDataWorkspaceSize(
            x->cudnn, op->wd, op->yd, op->cd[d], op->xd, (cudnnConvolutionBwdDataAlgo_t)algo,
            bytes);
    else
        rc = cudnnGetConvolutionBackwardFilterWorkspaceSize(
            x->cudnn, op->xd, op->yd, op->cd[d], op->wd, (cudnnConvolutionBwdFilterAlgo_t)algo,
            bytes);
    return rc == CUDNN_STATUS_SUCCESS ? 0 : -1;
}

/* y = conv(x) */
static int conv_forward(cuda_exec *x, conv_op *op, const float *in, const float *w, float *out,
                        tomo_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    double t = prof_mark(x);
    CUDNN_TRY(cudnnConvolutionForward(x->cudnn, &one, op->xd, in, op->wd, w, op->cd[FWD],
                                      (cudnnConvolutionFwdAlgo_t)op->algo[FWD], x->ws, op->ws[FWD],
                                      &zero, op->yd, out),
              op->name);
    prof_add(x, FWD, t);
    return 0;
}

/* dx = conv^T(dy) */
static int conv_backward_data(cuda_exec *x, conv_op *op, const float *w, const float *dy, float *dx,
                              tomo_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    double t = prof_mark(x);
    CUDNN_TRY(cudnnConvolutionBackwardData(x->cudnn, &one, op->wd, w, op->yd, dy, op->cd[BWD_DATA],
                                           (cudnnConvolutionBwdDataAlgo_t)op->algo[BWD_DATA], x->ws,
                                           op->ws[BWD_DATA], &zero, op->xd, dx),
              op->name);
    prof_add(x, BWD_DATA, t);
    return 0;
}

/* dw = d loss / d w from x and dy */
static int conv_backward_filter(cuda_exec *x, conv_op *op, const float *in, const float *dy,
                                float *dw, tomo_error *err)
{
    const float one = 1.0f, zero = 0.0f;
    double t = prof_mark(x);
    CUDNN_TRY(cudnnConvolutionBackwardFilter(x->cudnn, &one, op->xd, in, op->yd, dy,
                                             op->cd[BWD_FILTER],
                                             (cudnnConvolutionBwdFilterAlgo_t)op->algo[BWD_FILTER],
                                             x->ws, op->ws[BWD_FILTER], &zero, op->wd, dw),
              op->name);
    prof_add(x, BWD_FILTER, t);
    return 0;
}

/* Every cuDNN convolution of the executor. */
static int all_ops(cuda_exec *x, conv_op **ops)
{
    int n = 0;
    for (int l = 0; l <= x->L; l++)
        for (int k = 0; k < 2; k++)
            ops[n++] = &x->down[l][k].conv;
    for (int l = 0; l < x->L; l++)
        for (int k = 0; k < 2; k++)
            ops[n++] = &x->dec[l][k].conv;
    return n;
}

#define OPS_MAX (4 * TOMO_UNET_MAX_LEVELS + 2)

/* Sets every descriptor for n images, keeping each algorithm while it still fits. */
static int set_batch(cuda_exec *x, int n, tomo_error *err)
{
    if (n == x->cur_n)
        return 0;
    x->cur_n = 0;
    conv_op *ops[OPS_MAX];
    int count = all_ops(x, ops);
    for (int i = 0; i < count; i++) {
        conv_op *op = ops[i];
        int rc = set_tensor(x, op->xd, n, op->xc, op->xh, op->xw, err);
        if (rc == 0)
            rc = set_tensor(x, op->yd, n, op->yc, op->yh, op->yw, err);
        if (rc < 0)
            return rc;
        for (int d = 0; d < 3; d++) {
            if (!op->need[d])
                continue;
            size_t bytes = 0;
            CUDNN_TRY(cudnnSetConvolutionMathType(op->cd[d], op->math_full[d]), "math type");
            if (n == x->B ||
                (workspace_size(x, op, d, op->algo_full[d], &bytes) == 0 && bytes <= x->ws_bytes)) {
                op->algo[d] = op->algo_full[d];
                op->ws[d] = n == x->B ? op->ws_full[d] : bytes;
                continue;
            }
            cudnnMathType_t math;
            rc = choose(x, op, d, 0, x->ws_bytes, &op->algo[d], &op->ws[d], &math, err);
            if (rc < 0)
                return rc;
        }
    }
    x->cur_n = n;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Memory plan                                                                                 */

typedef struct arena {
    char *base; /* NULL: only count */
    size_t used;
} arena;

static void *take(arena *a, size_t bytes)
{
    size_t at = a->used;
    a->used += (bytes + 255) & ~(size_t)255;
    return a->base ? a->base + at : NULL;
}

static float *takef(arena *a, size_t floats)
{
    return (float *)take(a, floats * sizeof(float));
}

static size_t hw_at(const cuda_exec *x, int l)
{
    return (size_t)(x->H >> l) * (size_t)(x->W >> l);
}

/* own_a: the unit's ReLU output needs a buffer of its own (it is no skip). */
static void plan_unit(cuda_exec *x, arena *a, unit_rt *ur, const tomo_unet_unit *u, int l,
                      int own_a)
{
    size_t B = (size_t)x->B;
    ur->u = u;
    ur->level = l;
    if (x->training) {
        ur->y = takef(a, B * u->out_c * hw_at(x, l));
        ur->a = own_a ? takef(a, B * u->out_c * hw_at(x, l)) : NULL;
    }
    ur->a_ns = (size_t)u->out_c * hw_at(x, l);
    ur->bmean = takef(a, (size_t)u->out_c);
    ur->bvar = takef(a, (size_t)u->out_c);
    ur->binvstd = takef(a, (size_t)u->out_c);
    ur->tscale = takef(a, (size_t)u->out_c);
    ur->iscale = takef(a, (size_t)u->out_c);
}

/* Assigns every buffer; with a->base NULL only adds up the bytes. */
static void plan(cuda_exec *x, arena *a)
{
    const tomo_unet_layout *lay = &x->base.net->layout;
    size_t B = (size_t)x->B, hw0 = hw_at(x, 0), np = lay->n_params;
    int L = x->L, f = x->f;
    x->params = takef(a, np);
    x->buffers = takef(a, lay->n_buffers);
    x->adam_m = takef(a, np);
    x->adam_v = takef(a, np);
    x->grad = x->training ? takef(a, np) : NULL;
    x->in = takef(a, B * x->C * hw0);
    x->out = takef(a, B * hw0);
    x->target = x->training ? takef(a, B * hw0) : NULL;
    x->dout = x->training ? takef(a, B * hw0) : NULL;
    x->partial = (double2 *)take(a, sizeof(double2) * 2 * (size_t)(f << L) * PARTS_MAX);
    x->loss_partial = (double *)take(a, sizeof(double) * LOSS_BLOCKS);
    x->k1 = takef(a, (size_t)(f << L));
    x->k2 = takef(a, (size_t)(f << L));
    for (int l = 0; l < L; l++) {
        x->cat[l] = takef(a, B * 2 * (f << l) * hw_at(x, l));
        x->dcat[l] = x->training ? takef(a, B * 2 * (f << l) * hw_at(x, l)) : NULL;
    }
    float *y1 = NULL, *y2 = NULL, *pool = NULL;
    if (x->training) {
        for (int l = 0; l < L; l++)
            x->pooled[l] = takef(a, B * (f << l) * hw_at(x, l + 1));
        x->ga = takef(a, B * f * hw0);
        x->gb = takef(a, B * f * hw0);
        x->gu = takef(a, B * f * hw0);
        x->gp = takef(a, B * f * hw_at(x, 1));
    } else {
        y1 = takef(a, B * f * hw0);
        y2 = takef(a, B * f * hw0);
        pool = takef(a, B * f * hw_at(x, 1));
        for (int l = 0; l < L; l++)
            x->pooled[l] = pool;
    }
    for (int l = 0; l <= L; l++) {
        plan_unit(x, a, &x->down[l][0], &lay->down[l].a, l, 1);
        plan_unit(x, a, &x->down[l][1], &lay->down[l].b, l, l == L);
    }
    for (int l = 0; l < L; l++) {
        plan_unit(x, a, &x->dec[l][0], &lay->dec[l].a, l, 1);
        plan_unit(x, a, &x->dec[l][1], &lay->dec[l].b, l, 1);
        x->up[l].u = &lay->up[l];
        x->up[l].level = l;
        x->up[l].tmp = x->training ? x->gu : y1;
    }
    if (!a->base)
        return;
    /* Inference: y and a share a buffer; the units alternate between two. */
    if (!x->training) {
        for (int l = 0; l <= L; l++) {
            x->down[l][0].y = x->down[l][0].a = y1;
            x->down[l][1].y = x->down[l][1].a = y2;
        }
        for (int l = 0; l < L; l++) {
            x->dec[l][0].y = x->dec[l][0].a = y1;
            x->dec[l][1].y = x->dec[l][1].a = y2;
        }
    }
    /* The skips live in cat[l]. */
    for (int l = 0; l < L; l++) {
        x->down[l][1].a = x->cat[l];
        x->down[l][1].a_ns = 2 * (size_t)(f << l) * hw_at(x, l);
    }
    for (int l = 0; l <= L; l++) {
        x->down[l][0].x = l == 0 ? x->in : x->pooled[l - 1];
        x->down[l][1].x = x->down[l][0].a;
    }
    for (int l = 0; l < L; l++) {
        x->dec[l][0].x = x->cat[l];
        x->dec[l][1].x = x->dec[l][0].a;
        x->up[l].in = l == L - 1 ? x->down[L][1].a : x->dec[l + 1][1].a;
    }
}

/* Geometry and search buffers of every convolution. */
static void plan_ops(cuda_exec *x)
{
    for (int s = 0; s < 2; s++)
        for (int l = 0; l <= x->L + (s ? -1 : 0); l++)
            for (int k = 0; k < 2; k++) {
                unit_rt *ur = s ? &x->dec[l][k] : &x->down[l][k];
                conv_op *op = &ur->conv;
                snprintf(op->name, sizeof op->name, "%s[%d].%c", s ? "dec" : "down", l,
                         k ? 'b' : 'a');
                op->xc = ur->u->in_c;
                op->yc = ur->u->out_c;
                op->xh = op->yh = x->H >> l;
                op->xw = op->yw = x->W >> l;
                op->k = 3;
                op->stride = 1;
                op->pad = 1;
                op->need[FWD] = 1;
                op->need[BWD_DATA] = x->training && !(s == 0 && l == 0 && k == 0);
                op->need[BWD_FILTER] = x->training;
                op->x = (float *)ur->x;
                op->y = ur->y;
                op->w = x->params + ur->u->weight;
                op->dw = x->grad ? x->grad + ur->u->weight : NULL;
            }
}

/* ------------------------------------------------------------------------------------------ */
/* Forward and backward passes                                                                 */

/* BatchNorm coefficients of a unit: the batch's (training) or the running statistics'. */
static void unit_coeffs(cuda_exec *x, unit_rt *ur, int train, int n, const float **mean,
                        const float **scale)
{
    int oc = ur->u->out_c;
    if (!train) {
        *mean = x->buffers + ur->u->mean;
        *scale = ur->iscale;
        return;
    }
    int hw = (int)hw_at(x, ur->level), parts;
    stats_f f = {ur->y, (size_t)oc * hw, hw};
    reduce(x, f, oc, n, hw, &parts);
    bn_stats_kernel<<<blocks_for(oc), THREADS, 0, x->stream>>>(
        x->partial, parts, oc, (double)n * hw, x->params + ur->u->gamma, ur->bmean, ur->bvar,
        ur->binvstd, ur->tscale);
    *mean = ur->bmean;
    *scale = ur->tscale;
}

/* conv, BatchNorm, ReLU of one unit; with pooled, also the max-pool of the output. */
static int unit_forward(cuda_exec *x, unit_rt *ur, int train, int n, float *pooled, tomo_error *err)
{
    int rc = conv_forward(x, &ur->conv, ur->x, x->params + ur->u->weight, ur->y, err);
    if (rc < 0)
        return rc;
    const float *mean, *scale;
    unit_coeffs(x, ur, train, n, &mean, &scale);
    int oc = ur->u->out_c, h = x->H >> ur->level, w = x->W >> ur->level;
    const float *beta = x->params + ur->u->beta;
    size_t y_ns = (size_t)oc * h * w;
    if (pooled)
        bn_relu_pool_kernel<<<grid_pool(h, w, oc, n), THREADS, 0, x->stream>>>(
            ur->y, y_ns, ur->a, ur->a_ns, pooled, h, w, mean, scale, beta);
    else
        bn_relu_kernel<<<grid1(h * w, oc, n), THREADS, 0, x->stream>>>(ur->y, y_ns, ur->a, ur->a_ns,
                                                                       h * w, mean, scale, beta);
    LAUNCHED(ur->conv.name);
    return 0;
}

/* up[l] on n images: Y4 = W^T X per image (cuBLAS), then into cat[l] with the bias. */
static int up_forward(cuda_exec *x, up_rt *up, int n, tomo_error *err)
{
    int l = up->level, hs = x->H >> (l + 1), ws = x->W >> (l + 1), hws = hs * ws;
    int ic = up->u->in_c, oc = up->u->out_c;
    const float one = 1.0f, zero = 0.0f;
    double t = prof_mark(x);
    CUBLAS_TRY(cublasSgemmStridedBatched(x->cublas, CUBLAS_OP_N, CUBLAS_OP_T, hws, 4 * oc, ic, &one,
                                         up->in, hws, (long long)ic * hws,
                                         x->params + up->u->weight, 4 * oc, 0, &zero, up->tmp, hws,
                                         (long long)4 * oc * hws, n),
               "transposed convolution");
    prof_add(x, PROF_UP, t);
    size_t half = (size_t)oc * 4 * hws;
    up_scatter_kernel<<<dim3(blocks_for(hws), (unsigned)oc, (unsigned)n), THREADS, 0, x->stream>>>(
        up->tmp, x->cat[l] + half, 2 * half, hs, ws, x->params + up->u->bias);
    LAUNCHED("transposed convolution");
    return 0;
}

/*
 * Backward through up[l], from the gradient of cat[l]'s second half: the bias and weight
 * gradients, and din = d loss / d (its input).
 */
static int up_backward(cuda_exec *x, up_rt *up, int n, float *din, tomo_error *err)
{
    int l = up->level, hs = x->H >> (l + 1), ws = x->W >> (l + 1), hws = hs * ws, parts;
    int ic = up->u->in_c, oc = up->u->out_c;
    size_t half = (size_t)oc * 4 * hws;
    sum_f sf = {x->dcat[l] + half, 2 * half, 4 * hws};
    reduce(x, sf, oc, n, 4 * hws, &parts);
    sums_kernel<<<blocks_for(oc), THREADS, 0, x->stream>>>(x->partial, parts, oc,
                                                           x->grad + up->u->bias, NULL);
    up_gather_kernel<<<dim3(blocks_for(hws), (unsigned)oc, (unsigned)n), THREADS, 0, x->stream>>>(
        x->dcat[l] + half, 2 * half, up->tmp, hs, ws);
    LAUNCHED("transposed convolution backward");
    const float one = 1.0f, zero = 0.0f;
    const float *w = x->params + up->u->weight;
    double t = prof_mark(x);
    CUBLAS_TRY(cublasSgemmStridedBatched(x->cublas, CUBLAS_OP_N, CUBLAS_OP_N, hws, ic, 4 * oc, &one,
                                         up->tmp, hws, (long long)4 * oc * hws, w, 4 * oc, 0, &zero,
                                         din, hws, (long long)ic * hws, n),
               "transposed convolution backward");
    for (int i = 0; i < n; i++)
        CUBLAS_TRY(cublasSgemm(x->cublas, CUBLAS_OP_T, CUBLAS_OP_N, 4 * oc, ic, hws, &one,
                               up->tmp + (size_t)i * 4 * oc * hws, hws,
                               up->in + (size_t)i * ic * hws, hws, i ? &one : &zero,
                               x->grad + up->u->weight, 4 * oc),
                   "transposed convolution backward");
    prof_add(x, PROF_UP, t);
    return 0;
}

/* The whole network on x->in: x->out. train: BatchNorm with the batch's statistics. */
static int forward_pass(cuda_exec *x, int n, int train, tomo_error *err)
{
    int L = x->L, rc;
    const tomo_unet_layout *lay = &x->base.net->layout;
    for (int l = 0; l <= L; l++) {
        if ((rc = unit_forward(x, &x->down[l][0], train, n, NULL, err)) < 0 ||
            (rc = unit_forward(x, &x->down[l][1], train, n, l < L ? x->pooled[l] : NULL, err)) < 0)
            return rc;
    }
    for (int l = L - 1; l >= 0; l--) {
        if ((rc = up_forward(x, &x->up[l], n, err)) < 0)
            return rc;
        if ((rc = unit_forward(x, &x->dec[l][0], train, n, NULL, err)) < 0)
            return rc;
        if (l > 0 || x->training) {
            if ((rc = unit_forward(x, &x->dec[l][1], train, n, NULL, err)) < 0)
                return rc;
        }
    }
    unit_rt *last = &x->dec[0][1];
    int hw = (int)hw_at(x, 0), f = x->f;
    dim3 grid(blocks_for(hw), 1, (unsigned)n);
    if (x->training) {
        head_kernel<<<grid, THREADS, 0, x->stream>>>(last->a, last->a_ns, f, hw, NULL, NULL, NULL,
                                                     x->params + lay->head_weight,
                                                     x->params + lay->head_bias, x->out);
    } else {
        /* The last unit's BatchNorm and ReLU happen inside the head. */
        rc = conv_forward(x, &last->conv, last->x, x->params + last->u->weight, last->y, err);
        if (rc < 0)
            return rc;
        const float *mean, *scale;
        unit_coeffs(x, last, train, n, &mean, &scale);
        head_kernel<<<grid, THREADS, 0, x->stream>>>(
            last->y, (size_t)f * hw, f, hw, mean, scale, x->params + last->u->beta,
            x->params + lay->head_weight, x->params + lay->head_bias, x->out);
    }
    LAUNCHED("head");
    return 0;
}

/*
 * Backward through one unit, given da = d loss / d (its ReLU output): gamma, beta and weight
 * gradients, and with dx, d loss / d (its input).
 */
static int unit_backward(cuda_exec *x, unit_rt *ur, int n, const float *da, float *dx,
                         tomo_error *err)
{
    int oc = ur->u->out_c, hw = (int)hw_at(x, ur->level), parts;
    size_t ns = (size_t)oc * hw;
    bn_back_f f = {da, ur->a, ur->y, ns, ur->a_ns, ns, hw, ur->bmean, ur->binvstd};
    reduce(x, f, oc, n, hw, &parts);
    bn_back_stats_kernel<<<blocks_for(oc), THREADS, 0, x->stream>>>(
        x->partial, parts, oc, (double)n * hw, x->grad + ur->u->gamma, x->grad + ur->u->beta, x->k1,
        x->k2);
    bn_back_kernel<<<grid1(hw, oc, n), THREADS, 0, x->stream>>>(
        da, ns, ur->a, ur->a_ns, ur->y, ns, hw, ur->bmean, ur->binvstd, ur->tscale, x->k1, x->k2);
    LAUNCHED(ur->conv.name);
    int rc = conv_backward_filter(x, &ur->conv, ur->x, ur->y, x->grad + ur->u->weight, err);
    if (rc == 0 && dx)
        rc = conv_backward_data(x, &ur->conv, x->params + ur->u->weight, ur->y, dx, err);
    return rc;
}

/* d loss / d params into x->grad, from x->dout and the forward pass's buffers. */
static int backward_pass(cuda_exec *x, int n, tomo_error *err)
{
    const tomo_unet_layout *lay = &x->base.net->layout;
    int L = x->L, f = x->f, hw0 = (int)hw_at(x, 0), parts, rc;
    unit_rt *last = &x->dec[0][1];
    head_f hf = {last->a, x->dout, last->a_ns, hw0};
    reduce(x, hf, f, n, hw0, &parts);
    sums_kernel<<<blocks_for(f), THREADS, 0, x->stream>>>(
        x->partial, parts, f, x->grad + lay->head_weight, x->grad + lay->head_bias);
    head_back_kernel<<<grid1(hw0, f, n), THREADS, 0, x->stream>>>(
        x->dout, x->params + lay->head_weight, x->ga, hw0);
    LAUNCHED("head");
    for (int l = 0; l < L; l++) {
        if ((rc = unit_backward(x, &x->dec[l][1], n, x->ga, x->gb, err)) < 0 ||
            (rc = unit_backward(x, &x->dec[l][0], n, x->gb, x->dcat[l], err)) < 0)
            return rc;
        if ((rc = up_backward(x, &x->up[l], n, x->ga, err)) < 0)
            return rc;
    }
    if ((rc = unit_backward(x, &x->down[L][1], n, x->ga, x->gb, err)) < 0 ||
        (rc = unit_backward(x, &x->down[L][0], n, x->gb, x->gp, err)) < 0)
        return rc;
    for (int l = L - 1; l >= 0; l--) {
        int h = x->H >> l, w = x->W >> l, oc = f << l;
        pool_back_kernel<<<grid_pool(h, w, oc, n), THREADS, 0, x->stream>>>(
            x->cat[l], x->down[l][1].a_ns, x->gp, x->dcat[l], 2 * (size_t)oc * h * w, x->ga, h, w);
        LAUNCHED("max-pool backward");
        if ((rc = unit_backward(x, &x->down[l][1], n, x->ga, x->gb, err)) < 0 ||
            (rc = unit_backward(x, &x->down[l][0], n, x->gb, l > 0 ? x->gp : NULL, err)) < 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Operations                                                                                  */

typedef struct copy_job {
    char *dst;
    const char *src;
    size_t bytes;
} copy_job;

static void copy_piece(void *arg, int task, int slot)
{
    (void)slot;
    const copy_job *job = (const copy_job *)arg;
    size_t per = (job->bytes + COPY_TASKS - 1) / COPY_TASKS;
    size_t at = (size_t)task * per, end = at + per < job->bytes ? at + per : job->bytes;
    if (at < end)
        memcpy(job->dst + at, job->src + at, end - at);
}

/* memcpy by the executor's threads */
static void host_copy(cuda_exec *x, void *dst, const void *src, size_t bytes)
{
    copy_job job = {(char *)dst, (const char *)src, bytes};
    if (x->pool && bytes >= ((size_t)1 << 20))
        tomo_pool_run(x->pool, COPY_TASKS, copy_piece, &job);
    else
        memcpy(dst, src, bytes);
}

/* Host to device through the staging buffers: one is filled while the other is copied. */
static int upload(cuda_exec *x, void *dst, const void *src, size_t bytes, tomo_error *err)
{
    for (size_t at = 0, k = 0; at < bytes; at += STAGE_BYTES, k++) {
        int b = (int)(k & 1);
        size_t len = bytes - at < STAGE_BYTES ? bytes - at : STAGE_BYTES;
        CUDA_TRY(cudaEventSynchronize(x->staged[b]), "copying to the GPU");
        host_copy(x, x->stage[b], (const char *)src + at, len);
        CUDA_TRY(
            cudaMemcpyAsync((char *)dst + at, x->stage[b], len, cudaMemcpyHostToDevice, x->stream),
            "copying to the GPU");
        CUDA_TRY(cudaEventRecord(x->staged[b], x->stream), "copying to the GPU");
    }
    return 0;
}

/* Device to host the same way: chunk k is copied out while chunk k + 1 is in flight. */
static int download(cuda_exec *x, void *dst, const void *src, size_t bytes, tomo_error *err)
{
    size_t chunks = (bytes + STAGE_BYTES - 1) / STAGE_BYTES;
    for (size_t k = 0; k <= chunks; k++) {
        if (k < chunks) {
            size_t at = k * STAGE_BYTES, len = bytes - at < STAGE_BYTES ? bytes - at : STAGE_BYTES;
            CUDA_TRY(cudaMemcpyAsync(x->stage[k & 1], (const char *)src + at, len,
                                     cudaMemcpyDeviceToHost, x->stream),
                     "copying from the GPU");
            CUDA_TRY(cudaEventRecord(x->staged[k & 1], x->stream), "copying from the GPU");
        }
        if (k > 0) {
            size_t at = (k - 1) * STAGE_BYTES;
            size_t len = bytes - at < STAGE_BYTES ? bytes - at : STAGE_BYTES;
            CUDA_TRY(cudaEventSynchronize(x->staged[(k - 1) & 1]), "copying from the GPU");
            host_copy(x, (char *)dst + at, x->stage[(k - 1) & 1], len);
        }
    }
    return 0;
}

static int refresh_coeffs(cuda_exec *x, tomo_error *err)
{
    if (!x->coeffs_dirty)
        return 0;
    for (int s = 0; s < 2; s++)
        for (int l = 0; l <= x->L - s; l++)
            for (int k = 0; k < 2; k++) {
                unit_rt *ur = s ? &x->dec[l][k] : &x->down[l][k];
                int oc = ur->u->out_c;
                bn_infer_kernel<<<blocks_for(oc), THREADS, 0, x->stream>>>(
                    x->params + ur->u->gamma, x->buffers + ur->u->var, oc, ur->iscale);
            }
    LAUNCHED("BatchNorm statistics");
    x->coeffs_dirty = 0;
    return 0;
}

static int begin(cuda_exec *x, int n, tomo_error *err)
{
    CUDA_TRY(cudaSetDevice(x->device), "selecting the device");
    return set_batch(x, n, err);
}

static int finish(cuda_exec *x, tomo_error *err)
{
    CUDA_TRY(cudaStreamSynchronize(x->stream), "running the network");
    return 0;
}

static int cuda_forward(tomo_unet_exec *exec, const float *in, int n, float *out, tomo_error *err)
{
    cuda_exec *x = (cuda_exec *)exec;
    int rc = begin(x, n, err);
    if (rc < 0)
        return rc;
    size_t hw = hw_at(x, 0);
    double t0 = prof_mark(x);
    if ((rc = upload(x, x->in, in, (size_t)n * x->C * hw * sizeof(float), err)) < 0)
        return rc;
    prof_add(x, PROF_COPY, t0);
    if ((rc = refresh_coeffs(x, err)) < 0 || (rc = forward_pass(x, n, 0, err)) < 0)
        return rc;
    double t1 = prof_mark(x);
    if ((rc = download(x, out, x->out, (size_t)n * hw * sizeof(float), err)) < 0)
        return rc;
    prof_add(x, PROF_COPY, t1);
    prof_add(x, PROF_TOTAL, t0);
    prof_call(x);
    return finish(x, err);
}

/* Forward with batch statistics, the loss and the gradient (on the device). */
static int loss_and_gradient(cuda_exec *x, const float *in, const float *target, int n,
                             double *loss, tomo_error *err)
{
    int rc = begin(x, n, err);
    if (rc < 0)
        return rc;
    if ((size_t)n * hw_at(x, x->L) < 2)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: training needs more than one value per channel at the "
                              "bottom (%d image of %dx%d)",
                              n, x->W, x->H);
    size_t hw = hw_at(x, 0), count = (size_t)n * hw;
    double t0 = prof_mark(x);
    if ((rc = upload(x, x->in, in, (size_t)n * x->C * hw * sizeof(float), err)) < 0 ||
        (rc = upload(x, x->target, target, count * sizeof(float), err)) < 0)
        return rc;
    prof_add(x, PROF_COPY, t0);
    if ((rc = forward_pass(x, n, 1, err)) < 0)
        return rc;
    loss_kernel<<<LOSS_BLOCKS, THREADS, 0, x->stream>>>(x->out, x->target, count, x->dout,
                                                        x->loss_partial);
    LAUNCHED("loss");
    if ((rc = backward_pass(x, n, err)) < 0)
        return rc;
    CUDA_TRY(cudaMemcpyAsync(x->h_loss, x->loss_partial, LOSS_BLOCKS * sizeof(double),
                             cudaMemcpyDeviceToHost, x->stream),
             "copying the loss");
    if ((rc = finish(x, err)) < 0)
        return rc;
    prof_add(x, PROF_TOTAL, t0);
    prof_call(x);
    double sum = 0.0;
    for (int i = 0; i < LOSS_BLOCKS; i++)
        sum += x->h_loss[i];
    *loss = sum / (double)count;
    return 0;
}

static int cuda_gradient(tomo_unet_exec *exec, const float *in, const float *target, int n,
                         double *loss, float *grad, tomo_error *err)
{
    cuda_exec *x = (cuda_exec *)exec;
    int rc = loss_and_gradient(x, in, target, n, loss, err);
    if (rc < 0 || !grad)
        return rc;
    CUDA_TRY(cudaMemcpyAsync(grad, x->grad, exec->net->layout.n_params * sizeof(float),
                             cudaMemcpyDeviceToHost, x->stream),
             "copying the gradient");
    return finish(x, err);
}

static int cuda_train_step(tomo_unet_exec *exec, const float *in, const float *target, int n,
                           const tomo_adam_params *adam, double *loss, tomo_error *err)
{
    cuda_exec *x = (cuda_exec *)exec;
    int rc = loss_and_gradient(x, in, target, n, loss, err);
    if (rc < 0)
        return rc;
    for (int s = 0; s < 2; s++)
        for (int l = 0; l <= x->L - s; l++)
            for (int k = 0; k < 2; k++) {
                unit_rt *ur = s ? &x->dec[l][k] : &x->down[l][k];
                double count = (double)n * hw_at(x, l);
                running_kernel<<<blocks_for(ur->u->out_c), THREADS, 0, x->stream>>>(
                    x->buffers + ur->u->mean, x->buffers + ur->u->var, ur->bmean, ur->bvar,
                    ur->u->out_c, (float)(count / (count - 1.0)));
            }
    LAUNCHED("running statistics");
    uint64_t t = x->step + 1;
    float correction1 = 1.0f - (float)pow(adam->beta1, (double)t);
    float correction2 = 1.0f - (float)pow(adam->beta2, (double)t);
    size_t np = exec->net->layout.n_params;
    adam_kernel<<<1024, THREADS, 0, x->stream>>>(x->params, x->grad, x->adam_m, x->adam_v, np,
                                                 adam->lr, adam->beta1, adam->beta2, adam->eps,
                                                 correction1, correction2);
    LAUNCHED("Adam");
    if ((rc = finish(x, err)) < 0)
        return rc;
    x->step = t;
    x->coeffs_dirty = 1;
    return 0;
}

static int copy_state(cuda_exec *x, int to_device, tomo_error *err)
{
    tomo_unet *net = x->base.net;
    size_t np = net->layout.n_params * sizeof(float), nb = net->layout.n_buffers * sizeof(float);
    float *host[4] = {net->params, net->buffers, net->adam_m, net->adam_v};
    float *dev[4] = {x->params, x->buffers, x->adam_m, x->adam_v};
    size_t bytes[4] = {np, nb, np, np};
    CUDA_TRY(cudaSetDevice(x->device), "selecting the device");
    for (int i = 0; i < 4; i++)
        CUDA_TRY(
            to_device
                ? cudaMemcpyAsync(dev[i], host[i], bytes[i], cudaMemcpyHostToDevice, x->stream)
                : cudaMemcpyAsync(host[i], dev[i], bytes[i], cudaMemcpyDeviceToHost, x->stream),
            to_device ? "copying the network to the GPU" : "copying the network from the GPU");
    CUDA_TRY(cudaStreamSynchronize(x->stream),
             to_device ? "copying the network to the GPU" : "copying the network from the GPU");
    if (to_device) {
        x->step = net->adam_step;
        x->coeffs_dirty = 1;
    } else {
        net->adam_step = x->step;
    }
    return 0;
}

static int cuda_pull(tomo_unet_exec *exec, tomo_error *err)
{
    return copy_state((cuda_exec *)exec, 0, err);
}

static int cuda_push(tomo_unet_exec *exec, tomo_error *err)
{
    return copy_state((cuda_exec *)exec, 1, err);
}

static void cuda_destroy(tomo_unet_exec *exec)
{
    cuda_exec *x = (cuda_exec *)exec;
    if (!x)
        return;
    cudaSetDevice(x->device);
    if (x->profiling && x->prof_calls > 0) {
        double conv = x->prof[FWD] + x->prof[BWD_DATA] + x->prof[BWD_FILTER] + x->prof[PROF_UP];
        fprintf(stderr, "network profile (%s, %d x %dx%d, %s), ms per call over %ld calls:",
                x->base.backend, x->B, x->W, x->H, x->training ? "training" : "inference",
                x->prof_calls);
        for (int i = 0; i < PROF_N; i++)
            fprintf(stderr, " %s %.2f;", prof_name[i], 1e3 * x->prof[i] / x->prof_calls);
        fprintf(stderr, " other kernels %.2f\n",
                1e3 * (x->prof[PROF_TOTAL] - conv - x->prof[PROF_COPY]) / x->prof_calls);
    }
    conv_op *ops[OPS_MAX];
    int count = all_ops(x, ops);
    for (int i = 0; i < count; i++)
        op_destroy(ops[i]);
    if (x->have_stream)
        cudaStreamSynchronize(x->stream);
    if (x->have_cublas)
        cublasDestroy(x->cublas);
    cudaFree(x->ws);
    cudaFree(x->arena);
    cudaFree(x->cublas_ws);
    if (x->h_loss)
        cudaFreeHost(x->h_loss);
    for (int i = 0; i < 2; i++) {
        if (x->stage[i])
            cudaFreeHost(x->stage[i]);
        if (x->have_events & (1 << i))
            cudaEventDestroy(x->staged[i]);
    }
    tomo_pool_destroy(x->pool);
    if (x->have_cudnn)
        cudnnDestroy(x->cudnn);
    if (x->have_stream)
        cudaStreamDestroy(x->stream);
    free(x);
}

static const tomo_unet_exec_ops cuda_ops = {cuda_forward, cuda_gradient, cuda_train_step,
                                            cuda_pull,    cuda_push,     cuda_destroy};

/* ------------------------------------------------------------------------------------------ */
/* Creation                                                                                    */

static double gib(size_t bytes)
{
    return (double)bytes / (double)(1u << 30);
}

/* Workspace and algorithms: a generous workspace for the search, then only what is used. */
static int choose_algorithms(cuda_exec *x, tomo_error *err)
{
    const char *search = getenv("TOMOFS_CUDNN_SEARCH");
    int find = x->training;
    if (search && strcmp(search, "find") == 0)
        find = 1;
    else if (search && strcmp(search, "heuristic") == 0)
        find = 0;
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b), "reading free memory");
    size_t cap = free_b > 2 * RESERVE ? (free_b - 2 * RESERVE) / 2 : 0;
    cap = cap < WORKSPACE_MAX ? cap : WORKSPACE_MAX;
    while (cap > 0 && cudaMalloc(&x->ws, cap) != cudaSuccess) {
        cudaGetLastError();
        x->ws = NULL;
        cap /= 2;
        if (cap < ((size_t)1 << 20))
            cap = 0;
    }
    x->ws_bytes = cap;
    conv_op *ops[OPS_MAX];
    int count = all_ops(x, ops);
    size_t need = 0;
    for (int i = 0; i < count; i++)
        for (int d = 0; d < 3; d++) {
            if (!ops[i]->need[d])
                continue;
            int rc = choose(x, ops[i], d, find, cap, &ops[i]->algo_full[d], &ops[i]->ws_full[d],
                            &ops[i]->math_full[d], err);
            if (rc < 0)
                return rc;
            ops[i]->algo[d] = ops[i]->algo_full[d];
            ops[i]->ws[d] = ops[i]->ws_full[d];
            need = need > ops[i]->ws_full[d] ? need : ops[i]->ws_full[d];
        }
    CUDA_TRY(cudaStreamSynchronize(x->stream), "choosing the convolution algorithms");
    if (need < cap) {
        cudaFree(x->ws);
        x->ws = NULL;
        x->ws_bytes = 0;
        if (need > 0) {
            CUDA_TRY(cudaMalloc(&x->ws, need), "allocating the convolution workspace");
            x->ws_bytes = need;
        }
    }
    x->cur_n = x->B;
    return 0;
}

static int create(cuda_exec *x, const tomo_unet_exec_config *config, tomo_error *err)
{
    CUDA_TRY(cudaSetDevice(x->device), "selecting the device");
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, x->device), "reading the device's properties");
    CUDA_TRY(cudaStreamCreateWithFlags(&x->stream, cudaStreamNonBlocking), "creating a stream");
    x->have_stream = 1;
    CUDNN_TRY(cudnnCreate(&x->cudnn), "initialisation");
    x->have_cudnn = 1;
    CUDNN_TRY(cudnnSetStream(x->cudnn, x->stream), "setting the stream");
    CUDA_TRY(cudaMallocHost(&x->h_loss, LOSS_BLOCKS * sizeof(double)), "allocating host memory");
    for (int i = 0; i < 2; i++) {
        CUDA_TRY(cudaMallocHost(&x->stage[i], STAGE_BYTES), "allocating pinned host memory");
        CUDA_TRY(cudaEventCreateWithFlags(&x->staged[i], cudaEventDisableTiming),
                 "creating an event");
        x->have_events |= 1 << i;
    }
    int threads = config->threads > 0 ? config->threads : tomo_cpu_count();
    x->pool = tomo_pool_create(threads < COPY_THREADS ? threads : COPY_THREADS);
    if (!x->pool)
        return tomo_error_set(err, TOMO_E_NOMEM, "network: cannot start copy threads");
    CUBLAS_TRY(cublasCreate(&x->cublas), "initialisation");
    x->have_cublas = 1;
    CUBLAS_TRY(cublasSetStream(x->cublas, x->stream), "setting the stream");
    CUBLAS_TRY(cublasSetMathMode(x->cublas,
                                 config->exact ? CUBLAS_DEFAULT_MATH : CUBLAS_TF32_TENSOR_OP_MATH),
               "math mode");
    CUDA_TRY(cudaMalloc(&x->cublas_ws, CUBLAS_WORKSPACE), "allocating the cuBLAS workspace");
    CUBLAS_TRY(cublasSetWorkspace(x->cublas, x->cublas_ws, CUBLAS_WORKSPACE), "workspace");

    arena a = {NULL, 0};
    plan(x, &a);
    size_t free_b = 0, total_b = 0;
    CUDA_TRY(cudaMemGetInfo(&free_b, &total_b), "reading free memory");
    const char *mode = x->training ? "training" : "inference";
    if (a.used + RESERVE > free_b)
        return tomo_error_set(err, TOMO_E_NOMEM,
                              "cuda:%d: network: out of GPU memory: %s on %d image(s) of %dx%d "
                              "needs %.2f GiB, %.2f GiB of %.2f GiB are free",
                              x->device, mode, x->B, x->W, x->H, gib(a.used + RESERVE), gib(free_b),
                              gib(total_b));
    cudaError_t rc = cudaMalloc(&x->arena, a.used);
    if (rc != cudaSuccess) {
        cudaGetLastError();
        x->arena = NULL;
        return tomo_error_set(err, TOMO_E_NOMEM,
                              "cuda:%d: network: out of GPU memory: %s on %d image(s) of %dx%d "
                              "needs %.2f GiB: %s",
                              x->device, mode, x->B, x->W, x->H, gib(a.used),
                              cudaGetErrorString(rc));
    }
    x->arena_bytes = a.used;
    a.base = x->arena;
    a.used = 0;
    plan(x, &a);
    CUDA_TRY(cudaMemsetAsync(x->arena, 0, x->arena_bytes, x->stream), "clearing device memory");
    int r = copy_state(x, 1, err);
    if (r < 0)
        return r;
    plan_ops(x);
    conv_op *ops[OPS_MAX];
    int count = all_ops(x, ops);
    for (int i = 0; i < count; i++)
        if ((r = op_init(x, ops[i], err)) < 0)
            return r;
    if ((r = choose_algorithms(x, err)) < 0)
        return r;
    snprintf(x->base.backend, sizeof x->base.backend, "cuda:%d %.64s (cuDNN %d.%d, %s)", x->device,
             prop.name, (int)(cudnnGetVersion() / 10000), (int)(cudnnGetVersion() / 100 % 100),
             config->exact ? "fp32" : "tf32");
    return 0;
}

int tomo_unet_cuda_exec_create(tomo_unet *net, const tomo_unet_exec_config *config,
                               tomo_unet_exec **out, tomo_error *err)
{
    *out = NULL;
    int devices = tomo_unet_cuda_device_count();
    if (config->device < 0 || config->device >= devices)
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "cuda:%d: no such GPU (%d usable CUDA device%s)", config->device,
                              devices, devices == 1 ? "" : "s");
    const tomo_unet_config *nc = &net->config;
    int multiple = 1 << nc->levels;
    if (config->batch < 1 || config->height < multiple || config->width < multiple ||
        config->height % multiple || config->width % multiple)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: %d image(s) of %dx%d (sides must be positive multiples "
                              "of %d)",
                              config->batch, config->width, config->height, multiple);
    /* cuDNN indexes tensors with 32 bits: the largest one (cat[0]) must stay below 2^31. */
    double largest =
        (double)config->batch * config->height * config->width *
        (2.0 * nc->base_features > nc->in_channels ? 2.0 * nc->base_features : nc->in_channels);
    if (largest > (double)INT_MAX)
        return tomo_error_set(err, TOMO_E_NOMEM,
                              "cuda:%d: network: %d image(s) of %dx%d make a tensor of %.0f "
                              "values, more than cuDNN's 2^31 - 1: use smaller images (tiles)",
                              config->device, config->batch, config->width, config->height,
                              largest);
    cuda_exec *x = (cuda_exec *)calloc(1, sizeof(*x));
    if (!x)
        return tomo_error_set(err, TOMO_E_NOMEM, "network: out of memory");
    x->base.ops = &cuda_ops;
    x->base.net = net;
    x->base.config = *config;
    x->device = config->device;
    x->B = config->batch;
    x->C = nc->in_channels;
    x->H = config->height;
    x->W = config->width;
    x->L = nc->levels;
    x->f = nc->base_features;
    x->training = config->training != 0;
    const char *profile = getenv("TOMOFS_UNET_PROFILE");
    x->profiling = profile && strcmp(profile, "1") == 0;
    int rc = create(x, config, err);
    if (rc < 0) {
        cuda_destroy(&x->base);
        return rc;
    }
    *out = &x->base;
    return 0;
}

int tomo_unet_cuda_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError(); /* clear the error left by a missing driver */
        return 0;
    }
    return count;
}
