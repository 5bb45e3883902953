/*
 * denoise/unet_cpu.c - the reference backend of tomo_unet_exec: plain C, threaded with
 * common/pool.h, every result bit-identical whatever the number of threads.
 *
 * Semantics (unet.h): conv 3x3 with zero padding 1 and no bias; BatchNorm over (n, y, x) with
 * the biased variance and eps 1e-5 (training) or the running statistics (inference); ReLU;
 * max-pool 2x2 whose gradient goes to the maximum of each window, the first one in row-major
 * order when several are equal (a NaN counts as the maximum, the first NaN wins); transposed
 * conv 2x2 stride 2 with bias; concatenation [skip, up]; 1x1 head with bias; MSE averaged over
 * n x height x width. Running statistics: r = (1 - 0.1) r + 0.1 b, with the batch variance
 * made unbiased (times M / (M - 1), M = n x height x width of the layer). Training needs
 * M >= 2 at the bottom (as PyTorch does); fewer is TOMO_E_INVALID.
 *
 * Arithmetic. Every convolution is a matrix product done by one micro-kernel (4 rows x 8
 * columns, float, each output summed in order along the reduction; a weight gradient adds up
 * the sums of its pixel tiles, whose size depends on the layer only), so the bits of a
 * product do not depend on how it is cut into tasks:
 *   conv forward     out[co][p] = sum_k w[co][k] col[k][p],       col = im2col of the input
 *   conv d input     the same with w transposed and flipped, on the output gradient
 *   conv d weight    dw[k][co] = sum_p col[k][p] dout[p][co],      summed over images in order
 *   up forward       out[co dy dx][p] = sum_ci w[ci][co dy dx] in[ci][p], scattered to 2y+dy
 *   up d input/dw    the same two shapes on the gathered output gradient
 * Tasks are (image, pixel tile, block of output rows) for the forward shapes and blocks of
 * output rows (each reducing over every image and pixel in order) for the weight gradients.
 * Per-channel sums (BatchNorm statistics and gradients, biases, the head's weights) are
 * computed in double by one task per channel, over images in order, each image's pixels in 8
 * interleaved partial sums added up in a fixed order; the loss likewise per image, then over
 * images in order. Nothing depends on the thread count.
 *
 * Memory, allocated once at create for batch x height x width. Inference keeps the skips of
 * levels 0..L-1 and three work tensors of f x height x width per image (about 5 f floats per
 * pixel); training keeps every activation the backward pass reads (the input and output of
 * every convolution and BatchNorm, the pools, the transposed-convolution outputs, the skip
 * gradients), three gradient tensors and a pixel-major copy of one (about 25 f floats per
 * pixel). Each thread has a scratch area for the packed operands of its tile (1 to 2 MB).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/pool.h"
#include "unet_exec.h"

#define MR          4         /* micro-kernel rows */
#define NR          8         /* micro-kernel columns */
#define TILE_FLOATS (1 << 17) /* packed operand of one tile: 512 KB, for the L2 cache */
#define MIN_TILE    64        /* pixels */
#define ROW_CHUNK   32        /* output rows of one weight-gradient task */
#define BN_EPS      1e-5
#define BN_MOMENTUM 0.1f
#define MAXL        TOMO_UNET_MAX_LEVELS

/* ---- Tensors ------------------------------------------------------------------------------ */

/*
 * n images of c channels of h x w floats. Channels [0, c0) live in part 0 and [c0, c) in part
 * 1 (a concatenation without copying); within a part, channel planes are h x w apart and
 * images ns[part] apart.
 */
typedef struct tensor {
    float *p[2];
    size_t ns[2];
    int c0, c;
    int h, w;
} tensor;

static tensor tensor_one(float *p, int c, int h, int w)
{
    tensor t;
    t.p[0] = t.p[1] = p;
    t.ns[0] = t.ns[1] = (size_t)c * h * w;
    t.c0 = t.c = c;
    t.h = h;
    t.w = w;
    return t;
}

static tensor tensor_cat(float *a, int ca, float *b, int cb, int h, int w)
{
    tensor t;
    t.p[0] = a;
    t.p[1] = b;
    t.ns[0] = (size_t)ca * h * w;
    t.ns[1] = (size_t)cb * h * w;
    t.c0 = ca;
    t.c = ca + cb;
    t.h = h;
    t.w = w;
    return t;
}

static inline size_t plane(const tensor *t)
{
    return (size_t)t->h * t->w;
}

static inline float *chan(const tensor *t, int n, int c)
{
    if (c < t->c0)
        return t->p[0] + (size_t)n * t->ns[0] + (size_t)c * plane(t);
    return t->p[1] + (size_t)n * t->ns[1] + (size_t)(c - t->c0) * plane(t);
}

/* ---- The matrix-product kernel ------------------------------------------------------------ */

/*
 * t[i][j] = sum_{k < K} a[i][k] * b[k * ldb + j] for i < MR, j < NR, summed in order of k; b
 * must be readable for j < NR. Written so that GCC (12, -O2 and -O3, baseline x86-64) keeps
 * the 32 accumulators in 8 SSE registers and does per k one broadcast of a[i][k] times the two
 * vectors of b per row:
 *  - the accumulators are separate variables; as an array (acc[4][8]) they live on the stack;
 *  - the loop runs over a pointer compared with != and advanced by the run-time ldb, whose trip
 *    count the loop vectoriser cannot compute: with a counted loop, -O3 vectorises across k
 *    (four k at a time, transposing b, then adding the products in order) and runs 4 to 5 times
 *    slower.
 * 20 to 25 GFLOP/s per core on the development machine.
 */
#define ACC_DECLARE(i)                                                                             \
    float c##i##0 = 0, c##i##1 = 0, c##i##2 = 0, c##i##3 = 0, c##i##4 = 0, c##i##5 = 0,            \
          c##i##6 = 0, c##i##7 = 0
#define ACC_UPDATE(i, x)                                                                           \
    c##i##0 += x * b0, c##i##1 += x * b1, c##i##2 += x * b2, c##i##3 += x * b3, c##i##4 += x * b4, \
        c##i##5 += x * b5, c##i##6 += x * b6, c##i##7 += x * b7
#define ACC_STORE(i)                                                                               \
    t[i][0] = c##i##0, t[i][1] = c##i##1, t[i][2] = c##i##2, t[i][3] = c##i##3, t[i][4] = c##i##4, \
    t[i][5] = c##i##5, t[i][6] = c##i##6, t[i][7] = c##i##7

static void kernel(int K, const float *const a[MR], const float *b, size_t ldb, float t[MR][NR])
{
    ACC_DECLARE(0);
    ACC_DECLARE(1);
    ACC_DECLARE(2);
    ACC_DECLARE(3);
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    const float *end = b + (size_t)K * ldb;
    for (const float *bk = b; bk != end; bk += ldb) {
        float b0 = bk[0], b1 = bk[1], b2 = bk[2], b3 = bk[3], b4 = bk[4], b5 = bk[5], b6 = bk[6],
              b7 = bk[7];
        float x0 = *a0++, x1 = *a1++, x2 = *a2++, x3 = *a3++;
        ACC_UPDATE(0, x0);
        ACC_UPDATE(1, x1);
        ACC_UPDATE(2, x2);
        ACC_UPDATE(3, x3);
    }
    ACC_STORE(0);
    ACC_STORE(1);
    ACC_STORE(2);
    ACC_STORE(3);
}

/*
 * C[i][j] = (accumulate ? C[i][j] : 0) + sum_k A[i * lda + k] B[k * ldb + j] for i < M,
 * j < N, the sum taken in order of k before it is added; B readable for j < round_up(N, NR).
 * Row blocks outside, column blocks inside, so a block of A stays in the L1 cache while B
 * streams from L2.
 */
static void gemm(int M, int N, int K, const float *A, size_t lda, const float *B, size_t ldb,
                 float *C, size_t ldc, int accumulate)
{
    for (int i = 0; i < M; i += MR) {
        int mr = M - i < MR ? M - i : MR;
        const float *a[MR];
        for (int r = 0; r < MR; r++)
            a[r] = A + (size_t)(i + (r < mr ? r : mr - 1)) * lda;
        for (int j = 0; j < N; j += NR) {
            int nr = N - j < NR ? N - j : NR;
            float t[MR][NR];
            kernel(K, a, B + j, ldb, t);
            for (int r = 0; r < mr; r++) {
                float *c = C + (size_t)(i + r) * ldc + j;
                if (accumulate)
                    for (int q = 0; q < nr; q++)
                        c[q] += t[r][q];
                else
                    for (int q = 0; q < nr; q++)
                        c[q] = t[r][q];
            }
        }
    }
}

/* ---- Sums in double, in a fixed order ----------------------------------------------------- */

#define LANES 8

static double lanes_total(const double s[LANES])
{
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static double sum_f(const float *x, size_t n)
{
    double s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            s[j] += (double)x[i + j];
    for (; i < n; i++)
        s[i % LANES] += (double)x[i];
    return lanes_total(s);
}

static double sum_dev2(const float *x, size_t n, double mean)
{
    double s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            double d = (double)x[i + j] - mean;
            s[j] += d * d;
        }
    for (; i < n; i++) {
        double d = (double)x[i] - mean;
        s[i % LANES] += d * d;
    }
    return lanes_total(s);
}

static double dot_f(const float *x, const float *y, size_t n)
{
    double s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            s[j] += (double)x[i + j] * (double)y[i + j];
    for (; i < n; i++)
        s[i % LANES] += (double)x[i] * (double)y[i];
    return lanes_total(s);
}

static double sum_diff2(const float *x, const float *y, size_t n)
{
    double s[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            double d = (double)x[i + j] - (double)y[i + j];
            s[j] += d * d;
        }
    for (; i < n; i++) {
        double d = (double)x[i] - (double)y[i];
        s[i % LANES] += d * d;
    }
    return lanes_total(s);
}

/* ---- The executor ------------------------------------------------------------------------- */

/* The activations of one level during training. */
typedef struct level_buffers {
    float *da_x, *da_a; /* down[l] unit a: convolution output, ReLU output */
    float *db_x, *db_a; /* down[l] unit b; db_a is the skip (or the bottom's output) */
    float *pool;        /* l >= 1: max-pool of level l-1's skip, the input of down[l] */
    float *up;          /* l < L: up[l]'s output */
    float *ea_x, *ea_a; /* dec[l] unit a */
    float *eb_x, *eb_a; /* dec[l] unit b */
    float *dskip;       /* l < L: gradient of the skip */
} level_buffers;

typedef struct cpu_exec {
    struct tomo_unet_exec base;
    tomo_pool *pool;
    int slots;
    size_t scratch_floats; /* per slot */
    float *scratch;        /* [slots][scratch_floats] */
    float *wt;             /* weights transposed or flipped for the current layer */
    float *scale, *shift;  /* [n_buffers] at the mean offsets: inference BatchNorm */
    float *bstats;         /* [n_buffers]: the last training forward's batch means, variances */
    float *binv;           /* [n_buffers] at the mean offsets: its 1 / sqrt(variance + eps) */
    double *partial;       /* [batch]: per-image sums of the loss */
    float *grad;           /* [n_params], training: train_step's gradient */
    float *tbuf;           /* training: an output gradient, pixel-major, for weight gradients */
    float *out;            /* [batch][H][W], training: the forward output */
    float *skip[MAXL];     /* inference: the skips of levels 0..L-1 */
    float *s1, *s2, *s3;   /* work tensors, f x H x W per image */
    level_buffers lv[MAXL + 1];
    float *arena;
} cpu_exec;

static size_t round_up(size_t x, size_t m)
{
    return (x + m - 1) / m * m;
}

/* Pixels of one tile of a product whose packed operand has `depth` rows. */
static int tile_len(size_t depth, size_t hw)
{
    size_t p = TILE_FLOATS / (depth ? depth : 1);
    p -= p % NR;
    if (p < MIN_TILE)
        p = MIN_TILE;
    return p >= hw ? (int)hw : (int)p;
}

static int chan_c(const cpu_exec *ex, int l)
{
    return ex->base.net->config.base_features << l;
}

/* Runs fn over n tasks on the executor's threads. */
static void run(cpu_exec *ex, int n, tomo_pool_fn fn, void *arg)
{
    tomo_pool_run(ex->pool, n, fn, arg);
}

/* Splits `rows` output rows into blocks so that `outer` x blocks gives every thread work. */
static int row_blocks(const cpu_exec *ex, int rows, size_t outer, int *block)
{
    size_t want = 4 * (size_t)ex->slots;
    int nb = 1;
    if (outer < want)
        nb = (int)((want + outer - 1) / outer);
    int b = (int)round_up((size_t)(rows + nb - 1) / nb, MR);
    if (b < 16)
        b = 16;
    if (b > rows)
        b = rows;
    *block = b;
    return (rows + b - 1) / b;
}

/*
 * The tasks of a forward-shaped product over n images of hw pixels: (image, pixel tile, block
 * of output rows), the block varying fastest. Tiles suit a packed operand of `depth` rows.
 */
typedef struct tiling {
    size_t hw;
    int rows, tile, tiles, block, blocks;
} tiling;

/* Sets *t up and returns the number of tasks. */
static int tiling_make(const cpu_exec *ex, size_t depth, size_t hw, int rows, int n, tiling *t)
{
    t->hw = hw;
    t->rows = rows;
    t->tile = tile_len(depth, hw);
    t->tiles = (int)((hw + (size_t)t->tile - 1) / (size_t)t->tile);
    t->blocks = row_blocks(ex, rows, (size_t)n * t->tiles, &t->block);
    return n * t->tiles * t->blocks;
}

/* Task `task`: image *n, pixels [*p0, *p0 + *P), output rows [*r0, *r1). */
static void tiling_task(const tiling *t, int task, int *n, size_t *p0, int *P, int *r0, int *r1)
{
    int b = task % t->blocks, tile = task / t->blocks % t->tiles;
    *n = task / t->blocks / t->tiles;
    *p0 = (size_t)tile * t->tile;
    *P = (int)(t->hw - *p0 < (size_t)t->tile ? t->hw - *p0 : (size_t)t->tile);
    *r0 = b * t->block;
    *r1 = *r0 + t->block < t->rows ? *r0 + t->block : t->rows;
}

/* ---- Packing ------------------------------------------------------------------------------ */

/*
 * Rows k0..k1-1 of the im2col matrix of image n of `in` for pixels p0..p0+P-1, row k =
 * ci * 9 + ky * 3 + kx holding in[ci][y + ky - 1][x + kx - 1] (0 outside), into dst with
 * rows ld apart; columns P..ld-1 are zeroed.
 */
static void pack_im2col(const tensor *in, int n, size_t p0, int P, int k0, int k1, float *dst,
                        size_t ld)
{
    int H = in->h, W = in->w;
    for (int k = k0; k < k1; k++) {
        int ci = k / 9, ky = k % 9 / 3, kx = k % 3;
        const float *src = chan(in, n, ci);
        float *d = dst + (size_t)(k - k0) * ld;
        size_t p = p0;
        int q = 0;
        while (q < P) {
            int y = (int)(p / (size_t)W), x = (int)(p % (size_t)W);
            int len = W - x < P - q ? W - x : P - q;
            int yy = y + ky - 1;
            if (yy < 0 || yy >= H) {
                memset(d + q, 0, (size_t)len * sizeof(float));
            } else {
                const float *r = src + (size_t)yy * W;
                int dx = kx - 1;
                int lo = (x == 0 && dx < 0) ? 1 : 0;
                int hi = (x + len == W && dx > 0) ? len - 1 : len;
                if (lo)
                    d[q] = 0.0f;
                if (hi < len)
                    d[q + len - 1] = 0.0f;
                if (hi > lo)
                    memcpy(d + q + lo, r + x + lo + dx, (size_t)(hi - lo) * sizeof(float));
            }
            q += len;
            p += (size_t)len;
        }
        for (size_t j = (size_t)P; j < ld; j++)
            d[j] = 0.0f;
    }
}

/* dst[q * ld + c] = src[c][p0 + q] for c < channels, q < P; columns channels..ld-1 zeroed. */
static void pack_transposed(const tensor *src, int n, size_t p0, int P, float *dst, size_t ld)
{
    for (int q = 0; q < P; q++)
        for (size_t c = (size_t)src->c; c < ld; c++)
            dst[(size_t)q * ld + c] = 0.0f;
    for (int c = 0; c < src->c; c++) {
        const float *s = chan(src, n, c) + p0;
        for (int q = 0; q < P; q++)
            dst[(size_t)q * ld + c] = s[q];
    }
}

/* dst[c][q] = src[c][p0 + q], rows ld apart, columns P..ld-1 zeroed. */
static void pack_rows(const tensor *src, int n, size_t p0, int P, float *dst, size_t ld)
{
    for (int c = 0; c < src->c; c++) {
        float *d = dst + (size_t)c * ld;
        memcpy(d, chan(src, n, c) + p0, (size_t)P * sizeof(float));
        for (size_t j = (size_t)P; j < ld; j++)
            d[j] = 0.0f;
    }
}

/*
 * The gradient of a transposed convolution's output (h x w at 2x the tile's resolution)
 * gathered for input pixels p0..p0+P-1: row m = co * 4 + dy * 2 + dx, column q holds
 * dout[co][2y + dy][2x + dx] for pixel p0 + q = (y, x). Transposed (dst[q * ld + m]) when
 * `transposed`, else dst[m * ld + q]; padding zeroed.
 */
static void pack_up_grad(const tensor *dout, int n, size_t p0, int P, int win, float *dst,
                         size_t ld, int transposed)
{
    int co_n = dout->c;
    size_t wout = (size_t)dout->w;
    if (transposed) {
        for (int q = 0; q < P; q++)
            for (size_t m = (size_t)co_n * 4; m < ld; m++)
                dst[(size_t)q * ld + m] = 0.0f;
    } else {
        for (int m = 0; m < co_n * 4; m++)
            for (size_t j = (size_t)P; j < ld; j++)
                dst[(size_t)m * ld + j] = 0.0f;
    }
    for (int co = 0; co < co_n; co++) {
        const float *s = chan(dout, n, co);
        for (int dy = 0; dy < 2; dy++) {
            size_t m = (size_t)co * 4 + (size_t)dy * 2;
            size_t p = p0;
            int q = 0;
            while (q < P) {
                int y = (int)(p / (size_t)win), x = (int)(p % (size_t)win);
                int len = win - x < P - q ? win - x : P - q;
                const float *r = s + (size_t)(2 * y + dy) * wout + 2 * (size_t)x;
                if (transposed) {
                    for (int i = 0; i < len; i++) {
                        dst[(size_t)(q + i) * ld + m] = r[2 * i];
                        dst[(size_t)(q + i) * ld + m + 1] = r[2 * i + 1];
                    }
                } else {
                    float *d0 = dst + m * ld + q, *d1 = d0 + ld;
                    for (int i = 0; i < len; i++) {
                        d0[i] = r[2 * i];
                        d1[i] = r[2 * i + 1];
                    }
                }
                q += len;
                p += (size_t)len;
            }
        }
    }
}

/* ---- Scratch needs (floats per thread) ---------------------------------------------------- */

static size_t need_conv_fwd(int ci, size_t hw)
{
    size_t K = (size_t)ci * 9;
    return K * round_up((size_t)tile_len(K, hw), NR);
}

static size_t need_conv_dw(int ci, int co, size_t hw)
{
    size_t K = (size_t)ci * 9, P = (size_t)tile_len(K, hw), ldco = round_up((size_t)co, NR);
    return ROW_CHUNK * round_up(P, NR) + ROW_CHUNK * ldco;
}

static size_t need_up_fwd(int ci, int co, size_t hw)
{
    size_t ld = round_up((size_t)tile_len((size_t)ci, hw), NR);
    return (size_t)ci * ld + (size_t)co * 4 * ld;
}

static size_t need_up_back(int ci, int co, size_t hw)
{
    size_t m = (size_t)co * 4, P = (size_t)tile_len(m, hw), ld4 = round_up(m, NR);
    size_t dw = ROW_CHUNK * ld4;
    size_t din = m * round_up(P, NR);
    (void)ci;
    return dw > din ? dw : din;
}

static size_t max_z(size_t a, size_t b)
{
    return a > b ? a : b;
}

static size_t scratch_need(const tomo_unet_layout *lay, int H, int W, int training)
{
    size_t need = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int l = 0; l <= lay->levels; l++) {
            if (pass == 1 && l == lay->levels)
                break;
            const tomo_unet_block *b = pass ? &lay->dec[l] : &lay->down[l];
            size_t hw = (size_t)(H >> l) * (size_t)(W >> l);
            const tomo_unet_unit *units[2] = {&b->a, &b->b};
            for (int u = 0; u < 2; u++) {
                int ci = units[u]->in_c, co = units[u]->out_c;
                need = max_z(need, need_conv_fwd(ci, hw));
                if (training) {
                    need = max_z(need, need_conv_fwd(co, hw));
                    need = max_z(need, need_conv_dw(ci, co, hw));
                }
            }
        }
    for (int l = 0; l < lay->levels; l++) {
        size_t hw = (size_t)(H >> (l + 1)) * (size_t)(W >> (l + 1));
        need = max_z(need, need_up_fwd(lay->up[l].in_c, lay->up[l].out_c, hw));
        if (training)
            need = max_z(need, need_up_back(lay->up[l].in_c, lay->up[l].out_c, hw));
    }
    return need + 64;
}

static float *slot_scratch(cpu_exec *ex, int slot)
{
    return ex->scratch + (size_t)slot * ex->scratch_floats;
}

/* ---- conv 3x3, forward (also the input gradient, with flipped weights) -------------------- */

typedef struct conv_job {
    cpu_exec *ex;
    tensor in, out;
    const float *w;             /* [out.c][in.c * 9] */
    const float *scale, *shift; /* NULL, or out = max(0, scale * conv + shift) per channel */
    tiling tiling;
} conv_job;

static void conv_fwd_task(void *arg, int task, int slot)
{
    conv_job *j = arg;
    int n, P, c0, c1;
    size_t hw = plane(&j->in), p0;
    tiling_task(&j->tiling, task, &n, &p0, &P, &c0, &c1);
    int K = j->in.c * 9;
    size_t ld = round_up((size_t)P, NR);
    float *col = slot_scratch(j->ex, slot);
    pack_im2col(&j->in, n, p0, P, 0, K, col, ld);
    /* Rows of one call must lie in one part of the output. */
    while (c0 < c1) {
        int end = c0 < j->out.c0 && c1 > j->out.c0 ? j->out.c0 : c1;
        gemm(end - c0, P, K, j->w + (size_t)c0 * K, (size_t)K, col, ld, chan(&j->out, n, c0) + p0,
             hw, 0);
        if (j->scale)
            for (int c = c0; c < end; c++) {
                float *o = chan(&j->out, n, c) + p0, s = j->scale[c], sh = j->shift[c];
                for (int q = 0; q < P; q++) {
                    float v = s * o[q] + sh;
                    o[q] = v > 0.0f ? v : 0.0f;
                }
            }
        c0 = end;
    }
}

static void conv3x3(cpu_exec *ex, const tensor *in, const float *w, const tensor *out, int n,
                    const float *scale, const float *shift)
{
    conv_job j = {ex, *in, *out, w, scale, shift, {0}};
    int tasks = tiling_make(ex, (size_t)in->c * 9, plane(in), out->c, n, &j.tiling);
    run(ex, tasks, conv_fwd_task, &j);
}

/* ---- conv 3x3, weight gradient ------------------------------------------------------------ */

/*
 * Pixel-major copy of a gradient, shared by the weight-gradient tasks: for every image n and
 * pixel p, ex->tbuf[(n * hw + p) * ld + m] for m < ld (zero beyond the tensor's values).
 * Conv: m = channel. Up: the output gradient gathered for input pixel p, m = co * 4 + dy * 2 +
 * dx (pack_up_grad).
 */
typedef struct transpose_job {
    tensor src;
    int up;     /* 0: conv (channels), 1: transposed conv (gathered 2x2 blocks) */
    int win;    /* up: width of the input */
    size_t hw;  /* pixels per image of the pixel-major result */
    size_t ld;  /* row length */
    int blocks; /* per image */
    float *dst;
} transpose_job;

#define TRANSPOSE_BLOCK 256

static void transpose_task(void *arg, int task, int slot)
{
    (void)slot;
    transpose_job *j = arg;
    int n = task / j->blocks, b = task % j->blocks;
    size_t p0 = (size_t)b * TRANSPOSE_BLOCK;
    int P = (int)(j->hw - p0 < TRANSPOSE_BLOCK ? j->hw - p0 : TRANSPOSE_BLOCK);
    float *dst = j->dst + ((size_t)n * j->hw + p0) * j->ld;
    if (j->up)
        pack_up_grad(&j->src, n, p0, P, j->win, dst, j->ld, 1);
    else
        pack_transposed(&j->src, n, p0, P, dst, j->ld);
}

static void transpose_all(cpu_exec *ex, const tensor *src, int n, int up, size_t hw, int win,
                          size_t ld)
{
    transpose_job j = {
        *src, up, win, hw, ld, (int)((hw + TRANSPOSE_BLOCK - 1) / TRANSPOSE_BLOCK), ex->tbuf};
    run(ex, n * j.blocks, transpose_task, &j);
}

typedef struct conv_dw_job {
    cpu_exec *ex;
    tensor in;
    int co, n;
    float *grad; /* [co][ci * 9] */
} conv_dw_job;

static void conv_dw_task(void *arg, int task, int slot)
{
    conv_dw_job *j = arg;
    int K = j->in.c * 9, co = j->co;
    int k0 = task * ROW_CHUNK, k1 = k0 + ROW_CHUNK < K ? k0 + ROW_CHUNK : K;
    size_t hw = plane(&j->in);
    int tile = tile_len((size_t)K, hw);
    size_t ld = round_up((size_t)tile, NR), ldco = round_up((size_t)co, NR);
    float *sa = slot_scratch(j->ex, slot);
    float *sc = sa + ROW_CHUNK * ld;
    int first = 1;
    for (int n = 0; n < j->n; n++)
        for (size_t p0 = 0; p0 < hw; p0 += (size_t)tile) {
            int P = (int)(hw - p0 < (size_t)tile ? hw - p0 : (size_t)tile);
            pack_im2col(&j->in, n, p0, P, k0, k1, sa, ld);
            const float *b = j->ex->tbuf + ((size_t)n * hw + p0) * ldco;
            gemm(k1 - k0, co, P, sa, ld, b, ldco, sc, ldco, !first);
            first = 0;
        }
    for (int k = k0; k < k1; k++)
        for (int c = 0; c < co; c++)
            j->grad[(size_t)c * K + k] = sc[(size_t)(k - k0) * ldco + c];
}

/* d loss / d w[co][ci][ky][kx] = sum over images and pixels of dout[co] x im2col(in). */
static void conv3x3_dw(cpu_exec *ex, const tensor *in, const tensor *dout, int n, float *grad)
{
    transpose_all(ex, dout, n, 0, plane(dout), 0, round_up((size_t)dout->c, NR));
    conv_dw_job j = {ex, *in, dout->c, n, grad};
    int K = in->c * 9;
    run(ex, (K + ROW_CHUNK - 1) / ROW_CHUNK, conv_dw_task, &j);
}

/* ---- BatchNorm + ReLU --------------------------------------------------------------------- */

typedef struct bn_job {
    cpu_exec *ex;
    tensor x, a, da; /* conv output, ReLU output, gradient of a (becomes that of x) */
    int n;
    const float *gamma, *beta;
    float *mean, *var, *inv; /* batch statistics (training forward) */
    float *dgamma, *dbeta;
} bn_job;

static void bn_train_task(void *arg, int c, int slot)
{
    (void)slot;
    bn_job *j = arg;
    size_t hw = plane(&j->x);
    double M = (double)j->n * (double)hw, s = 0.0;
    for (int n = 0; n < j->n; n++)
        s += sum_f(chan(&j->x, n, c), hw);
    double mean = s / M, d = 0.0;
    for (int n = 0; n < j->n; n++)
        d += sum_dev2(chan(&j->x, n, c), hw, mean);
    double var = d / M;
    float mf = (float)mean, inv = (float)(1.0 / sqrt(var + BN_EPS));
    float g = j->gamma[c], b = j->beta[c];
    j->mean[c] = mf;
    j->var[c] = (float)var;
    j->inv[c] = inv;
    for (int n = 0; n < j->n; n++) {
        const float *x = chan(&j->x, n, c);
        float *a = chan(&j->a, n, c);
        for (size_t i = 0; i < hw; i++) {
            float v = g * ((x[i] - mf) * inv) + b;
            a[i] = v > 0.0f ? v : 0.0f;
        }
    }
}

/* Training: batch statistics over (n, y, x) of x, then a = ReLU(BatchNorm(x)). */
static void bn_relu_train(cpu_exec *ex, const tomo_unet_unit *u, const tensor *x, const tensor *a,
                          int n)
{
    const float *p = ex->base.net->params;
    bn_job j = {ex,
                *x,
                *a,
                *a,
                n,
                p + u->gamma,
                p + u->beta,
                ex->bstats + u->mean,
                ex->bstats + u->var,
                ex->binv + u->mean,
                NULL,
                NULL};
    run(ex, x->c, bn_train_task, &j);
}

static void bn_back_task(void *arg, int c, int slot)
{
    (void)slot;
    bn_job *j = arg;
    size_t hw = plane(&j->x);
    float mf = j->mean[c], inv = j->inv[c];
    double sg = 0.0, sgx = 0.0;
    /* g = da * (a > 0) replaces da; then the sums of g and g * xhat. */
    for (int n = 0; n < j->n; n++) {
        const float *x = chan(&j->x, n, c), *a = chan(&j->a, n, c);
        float *g = chan(&j->da, n, c);
        double s1[LANES] = {0}, s2[LANES] = {0};
        for (size_t i = 0; i < hw; i++) {
            float gi = a[i] > 0.0f ? g[i] : 0.0f;
            float xh = (x[i] - mf) * inv;
            g[i] = gi;
            s1[i % LANES] += (double)gi;
            s2[i % LANES] += (double)gi * (double)xh;
        }
        sg += lanes_total(s1);
        sgx += lanes_total(s2);
    }
    j->dgamma[c] = (float)sgx;
    j->dbeta[c] = (float)sg;
    double M = (double)j->n * (double)hw;
    float k = j->gamma[c] * inv, m1 = (float)(sg / M), m2 = (float)(sgx / M);
    for (int n = 0; n < j->n; n++) {
        const float *x = chan(&j->x, n, c);
        float *g = chan(&j->da, n, c);
        for (size_t i = 0; i < hw; i++) {
            float xh = (x[i] - mf) * inv;
            g[i] = k * (g[i] - m1 - xh * m2);
        }
    }
}

/* Backward of ReLU(BatchNorm(x)) with batch statistics: da becomes d loss / d x. */
static void bn_relu_back(cpu_exec *ex, const tomo_unet_unit *u, const tensor *x, const tensor *a,
                         const tensor *da, int n, float *grad)
{
    const float *p = ex->base.net->params;
    bn_job j = {ex,
                *x,
                *a,
                *da,
                n,
                p + u->gamma,
                p + u->beta,
                ex->bstats + u->mean,
                ex->bstats + u->var,
                ex->binv + u->mean,
                grad + u->gamma,
                grad + u->beta};
    run(ex, x->c, bn_back_task, &j);
}

/* ---- Max-pool 2x2 ------------------------------------------------------------------------- */

/* Index (0..3, row-major) of the maximum of a 2x2 window; the first of equals; NaN wins. */
static inline int argmax4(const float v[4])
{
    int best = 0;
    for (int i = 1; i < 4; i++)
        if (v[i] > v[best] || (isnan(v[i]) && !isnan(v[best])))
            best = i;
    return best;
}

typedef struct pool_job {
    tensor in, out; /* out: pooled values (forward) or their gradient (backward) */
    tensor din;     /* backward: gradient of in, added to */
} pool_job;

static void pool_fwd_task(void *arg, int task, int slot)
{
    (void)slot;
    pool_job *j = arg;
    int c = task % j->in.c, n = task / j->in.c;
    const float *s = chan(&j->in, n, c);
    float *d = chan(&j->out, n, c);
    int w = j->out.w, win = j->in.w;
    for (int y = 0; y < j->out.h; y++)
        for (int x = 0; x < w; x++) {
            const float *r = s + (size_t)(2 * y) * win + 2 * x;
            float v[4] = {r[0], r[1], r[win], r[win + 1]};
            d[(size_t)y * w + x] = v[argmax4(v)];
        }
}

static void pool_back_task(void *arg, int task, int slot)
{
    (void)slot;
    pool_job *j = arg;
    int c = task % j->in.c, n = task / j->in.c;
    const float *s = chan(&j->in, n, c), *g = chan(&j->out, n, c);
    float *d = chan(&j->din, n, c);
    int w = j->out.w, win = j->in.w;
    for (int y = 0; y < j->out.h; y++)
        for (int x = 0; x < w; x++) {
            size_t at = (size_t)(2 * y) * win + 2 * x;
            const float *r = s + at;
            float v[4] = {r[0], r[1], r[win], r[win + 1]};
            int i = argmax4(v);
            d[at + (size_t)(i >> 1) * win + (i & 1)] += g[(size_t)y * w + x];
        }
}

/* ---- Transposed convolution 2x2 stride 2 -------------------------------------------------- */

typedef struct up_job {
    cpu_exec *ex;
    tensor in, out; /* forward: in (ci, h, w) -> out (co, 2h, 2w); backward: out = its gradient */
    tensor din;
    const float *w, *bias; /* w: [ci][co * 4] */
    const float *wt;       /* forward: [co * 4][ci] */
    float *dw;             /* [ci][co * 4] */
    int n;
    tiling tiling;
} up_job;

static void up_fwd_task(void *arg, int task, int slot)
{
    up_job *j = arg;
    int n, P, c0, c1;
    size_t p0;
    tiling_task(&j->tiling, task, &n, &p0, &P, &c0, &c1);
    int ci = j->in.c, win = j->in.w;
    size_t ld = round_up((size_t)P, NR), wout = (size_t)j->out.w;
    float *src = slot_scratch(j->ex, slot);
    float *dst = src + (size_t)ci * ld;
    pack_rows(&j->in, n, p0, P, src, ld);
    gemm((c1 - c0) * 4, P, ci, j->wt + (size_t)c0 * 4 * ci, (size_t)ci, src, ld, dst, ld, 0);
    for (int c = c0; c < c1; c++) {
        float *o = chan(&j->out, n, c), bias = j->bias[c];
        for (int m = 0; m < 4; m++) {
            int dy = m >> 1, dx = m & 1;
            const float *r = dst + ((size_t)(c - c0) * 4 + m) * ld;
            size_t p = p0;
            int q = 0;
            while (q < P) {
                int y = (int)(p / (size_t)win), x = (int)(p % (size_t)win);
                int len = win - x < P - q ? win - x : P - q;
                float *orow = o + (size_t)(2 * y + dy) * wout + 2 * (size_t)x + dx;
                for (int i = 0; i < len; i++)
                    orow[2 * i] = r[q + i] + bias;
                q += len;
                p += (size_t)len;
            }
        }
    }
}

static void up_forward(cpu_exec *ex, const tomo_unet_up *u, const tensor *in, const tensor *out,
                       int n)
{
    const float *w = ex->base.net->params + u->weight;
    int ci = u->in_c, m = u->out_c * 4;
    for (int c = 0; c < ci; c++)
        for (int k = 0; k < m; k++)
            ex->wt[(size_t)k * ci + c] = w[(size_t)c * m + k];
    up_job j = {.ex = ex,
                .in = *in,
                .out = *out,
                .din = *out,
                .w = w,
                .bias = ex->base.net->params + u->bias,
                .wt = ex->wt,
                .n = n};
    int tasks = tiling_make(ex, (size_t)ci, plane(in), u->out_c, n, &j.tiling);
    run(ex, tasks, up_fwd_task, &j);
}

static void up_dw_task(void *arg, int task, int slot)
{
    up_job *j = arg;
    int ci = j->in.c, m = j->out.c * 4;
    int c0 = task * ROW_CHUNK, c1 = c0 + ROW_CHUNK < ci ? c0 + ROW_CHUNK : ci;
    size_t hw = plane(&j->in);
    int tile = tile_len((size_t)m, hw);
    size_t ld4 = round_up((size_t)m, NR);
    float *sc = slot_scratch(j->ex, slot);
    int first = 1;
    for (int n = 0; n < j->n; n++)
        for (size_t p0 = 0; p0 < hw; p0 += (size_t)tile) {
            int P = (int)(hw - p0 < (size_t)tile ? hw - p0 : (size_t)tile);
            const float *b = j->ex->tbuf + ((size_t)n * hw + p0) * ld4;
            gemm(c1 - c0, m, P, chan(&j->in, n, c0) + p0, hw, b, ld4, sc, ld4, !first);
            first = 0;
        }
    for (int c = c0; c < c1; c++)
        memcpy(j->dw + (size_t)c * m, sc + (size_t)(c - c0) * ld4, (size_t)m * sizeof(float));
}

static void up_din_task(void *arg, int task, int slot)
{
    up_job *j = arg;
    int n, P, c0, c1, m = j->out.c * 4;
    size_t hw = plane(&j->in), p0;
    tiling_task(&j->tiling, task, &n, &p0, &P, &c0, &c1);
    size_t ld = round_up((size_t)P, NR);
    float *g = slot_scratch(j->ex, slot);
    pack_up_grad(&j->out, n, p0, P, j->in.w, g, ld, 0);
    gemm(c1 - c0, P, m, j->w + (size_t)c0 * m, (size_t)m, g, ld, chan(&j->din, n, c0) + p0, hw, 0);
}

static void bias_task(void *arg, int c, int slot)
{
    (void)slot;
    up_job *j = arg;
    size_t hw = plane(&j->out);
    double s = 0.0;
    for (int n = 0; n < j->n; n++)
        s += sum_f(chan(&j->out, n, c), hw);
    j->dw[c] = (float)s;
}

/* Gradients of up[l]: weights and bias into grad, the input's into din (if not NULL). */
static void up_backward(cpu_exec *ex, const tomo_unet_up *u, const tensor *in, const tensor *dout,
                        const tensor *din, int n, float *grad)
{
    up_job j = {.ex = ex,
                .in = *in,
                .out = *dout,
                .din = din ? *din : *in,
                .w = ex->base.net->params + u->weight,
                .dw = grad + u->weight,
                .n = n};
    transpose_all(ex, dout, n, 1, plane(in), in->w, round_up((size_t)u->out_c * 4, NR));
    run(ex, (u->in_c + ROW_CHUNK - 1) / ROW_CHUNK, up_dw_task, &j);
    j.dw = grad + u->bias;
    run(ex, u->out_c, bias_task, &j);
    if (din) {
        int tasks = tiling_make(ex, (size_t)u->out_c * 4, plane(in), u->in_c, n, &j.tiling);
        run(ex, tasks, up_din_task, &j);
    }
}

/* ---- Head (1x1, f -> 1, with bias) and loss ----------------------------------------------- */

typedef struct head_job {
    tensor in;  /* f channels */
    float *out; /* [n][hw] */
    const float *target;
    const float *w; /* [f] */
    float bias;
    float *dout; /* [n][hw] */
    tensor din;
    double *partial;  /* per image */
    float *dw, *db;   /* gradients of the weights [f] and the bias */
    float grad_scale; /* 2 / (n hw) */
    int n;
} head_job;

static void head_fwd_task(void *arg, int n, int slot)
{
    (void)slot;
    head_job *j = arg;
    size_t hw = plane(&j->in);
    float *o = j->out + (size_t)n * hw;
    for (size_t i = 0; i < hw; i++)
        o[i] = 0.0f;
    for (int c = 0; c < j->in.c; c++) {
        const float *x = chan(&j->in, n, c);
        float w = j->w[c];
        for (size_t i = 0; i < hw; i++)
            o[i] += w * x[i];
    }
    for (size_t i = 0; i < hw; i++)
        o[i] += j->bias;
}

static void head_forward(cpu_exec *ex, const tensor *in, float *out, int n)
{
    const tomo_unet_layout *lay = &ex->base.net->layout;
    const float *p = ex->base.net->params;
    head_job j = {*in,  out,  NULL, p + lay->head_weight, p[lay->head_bias], NULL, *in, NULL, NULL,
                  NULL, 0.0f, n};
    run(ex, n, head_fwd_task, &j);
}

static void loss_task(void *arg, int n, int slot)
{
    (void)slot;
    head_job *j = arg;
    size_t hw = plane(&j->in), at = (size_t)n * hw;
    j->partial[n] = sum_diff2(j->out + at, j->target + at, hw);
    for (size_t i = 0; i < hw; i++)
        j->dout[at + i] = j->grad_scale * (j->out[at + i] - j->target[at + i]);
}

static void head_dw_task(void *arg, int c, int slot)
{
    (void)slot;
    head_job *j = arg;
    size_t hw = plane(&j->in);
    double s = 0.0;
    for (int n = 0; n < j->n; n++)
        s += c < j->in.c ? dot_f(chan(&j->in, n, c), j->dout + (size_t)n * hw, hw)
                         : sum_f(j->dout + (size_t)n * hw, hw);
    if (c < j->in.c)
        j->dw[c] = (float)s;
    else
        *j->db = (float)s; /* task f: the bias */
}

static void head_din_task(void *arg, int task, int slot)
{
    (void)slot;
    head_job *j = arg;
    int c = task % j->in.c, n = task / j->in.c;
    size_t hw = plane(&j->in);
    const float *g = j->dout + (size_t)n * hw;
    float *d = chan(&j->din, n, c), w = j->w[c];
    for (size_t i = 0; i < hw; i++)
        d[i] = w * g[i];
}

/* ---- The network -------------------------------------------------------------------------- */

static void prepare_inference_bn(cpu_exec *ex)
{
    const tomo_unet *net = ex->base.net;
    const tomo_unet_layout *lay = &net->layout;
    const tomo_unet_unit *units[4 * MAXL + 2];
    int nu = 0;
    for (int l = 0; l <= lay->levels; l++) {
        units[nu++] = &lay->down[l].a;
        units[nu++] = &lay->down[l].b;
    }
    for (int l = 0; l < lay->levels; l++) {
        units[nu++] = &lay->dec[l].a;
        units[nu++] = &lay->dec[l].b;
    }
    for (int i = 0; i < nu; i++) {
        const tomo_unet_unit *u = units[i];
        for (int c = 0; c < u->out_c; c++) {
            double s =
                (double)net->params[u->gamma + c] / sqrt((double)net->buffers[u->var + c] + BN_EPS);
            ex->scale[u->mean + c] = (float)s;
            ex->shift[u->mean + c] =
                (float)((double)net->params[u->beta + c] - (double)net->buffers[u->mean + c] * s);
        }
    }
}

/* Inference: a = ReLU(BatchNorm(conv(in))) with the running statistics, fused. */
static void unit_infer(cpu_exec *ex, const tomo_unet_unit *u, const tensor *in, const tensor *out,
                       int n)
{
    conv3x3(ex, in, ex->base.net->params + u->weight, out, n, ex->scale + u->mean,
            ex->shift + u->mean);
}

static int cpu_forward(tomo_unet_exec *base, const float *in, int n, float *out, tomo_error *err)
{
    (void)err;
    cpu_exec *ex = (cpu_exec *)base;
    const tomo_unet_layout *lay = &base->net->layout;
    int L = lay->levels, H = base->config.height, W = base->config.width;
    prepare_inference_bn(ex);
    tensor cur = tensor_one((float *)in, base->net->config.in_channels, H, W);
    for (int l = 0; l <= L; l++) {
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        tensor mid = tensor_one(ex->s2, c, h, w);
        tensor res = tensor_one(l < L ? ex->skip[l] : ex->s1, c, h, w);
        unit_infer(ex, &lay->down[l].a, &cur, &mid, n);
        unit_infer(ex, &lay->down[l].b, &mid, &res, n);
        if (l < L) {
            pool_job pj = {res, tensor_one(ex->s1, c, h / 2, w / 2), res};
            run(ex, n * c, pool_fwd_task, &pj);
            cur = pj.out;
        } else {
            cur = res;
        }
    }
    for (int l = L - 1; l >= 0; l--) {
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        tensor up = tensor_one(ex->s3, c, h, w);
        up_forward(ex, &lay->up[l], &cur, &up, n);
        tensor cat = tensor_cat(ex->skip[l], c, ex->s3, c, h, w);
        tensor mid = tensor_one(ex->s2, c, h, w);
        tensor res = tensor_one(ex->s1, c, h, w);
        unit_infer(ex, &lay->dec[l].a, &cat, &mid, n);
        unit_infer(ex, &lay->dec[l].b, &mid, &res, n);
        cur = res;
    }
    head_forward(ex, &cur, out, n);
    return 0;
}

/* Training: conv, then ReLU(BatchNorm) with the batch statistics. */
static void unit_train(cpu_exec *ex, const tomo_unet_unit *u, const tensor *in, float *x, float *a,
                       int n)
{
    tensor tx = tensor_one(x, u->out_c, in->h, in->w);
    tensor ta = tensor_one(a, u->out_c, in->h, in->w);
    conv3x3(ex, in, ex->base.net->params + u->weight, &tx, n, NULL, NULL);
    bn_relu_train(ex, u, &tx, &ta, n);
}

static tensor input_tensor(const cpu_exec *ex, const float *in)
{
    return tensor_one((float *)in, ex->base.net->config.in_channels, ex->base.config.height,
                      ex->base.config.width);
}

/* The forward pass with batch statistics, keeping what the backward pass reads. */
static void forward_train(cpu_exec *ex, const float *in, int n)
{
    const tomo_unet_layout *lay = &ex->base.net->layout;
    int L = lay->levels, H = ex->base.config.height, W = ex->base.config.width;
    tensor cur = input_tensor(ex, in);
    for (int l = 0; l <= L; l++) {
        level_buffers *b = &ex->lv[l];
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        unit_train(ex, &lay->down[l].a, &cur, b->da_x, b->da_a, n);
        tensor mid = tensor_one(b->da_a, c, h, w);
        unit_train(ex, &lay->down[l].b, &mid, b->db_x, b->db_a, n);
        if (l < L) {
            tensor skip = tensor_one(b->db_a, c, h, w);
            pool_job pj = {skip, tensor_one(ex->lv[l + 1].pool, c, h / 2, w / 2), skip};
            run(ex, n * c, pool_fwd_task, &pj);
            cur = pj.out;
        }
    }
    cur = tensor_one(ex->lv[L].db_a, chan_c(ex, L), H >> L, W >> L);
    for (int l = L - 1; l >= 0; l--) {
        level_buffers *b = &ex->lv[l];
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        tensor up = tensor_one(b->up, c, h, w);
        up_forward(ex, &lay->up[l], &cur, &up, n);
        tensor cat = tensor_cat(b->db_a, c, b->up, c, h, w);
        unit_train(ex, &lay->dec[l].a, &cat, b->ea_x, b->ea_a, n);
        tensor mid = tensor_one(b->ea_a, c, h, w);
        unit_train(ex, &lay->dec[l].b, &mid, b->eb_x, b->eb_a, n);
        cur = tensor_one(b->eb_a, c, h, w);
    }
    head_forward(ex, &cur, ex->out, n);
}

/*
 * Backward of one unit: da (gradient of its ReLU output, overwritten) -> gamma, beta and
 * weight gradients, and the gradient of its input into din (unless NULL).
 */
static void unit_backward(cpu_exec *ex, const tomo_unet_unit *u, const tensor *in, float *x,
                          float *a, const tensor *da, const tensor *din, int n, float *grad)
{
    tensor tx = tensor_one(x, u->out_c, in->h, in->w);
    tensor ta = tensor_one(a, u->out_c, in->h, in->w);
    bn_relu_back(ex, u, &tx, &ta, da, n, grad);
    conv3x3_dw(ex, in, da, n, grad + u->weight);
    if (din) {
        /* d in = conv3x3(d x) with wt[ci][co][ky][kx] = w[co][ci][2 - ky][2 - kx]. */
        const float *w = ex->base.net->params + u->weight;
        int ci = u->in_c, co = u->out_c;
        for (int o = 0; o < co; o++)
            for (int i = 0; i < ci; i++)
                for (int k = 0; k < 9; k++)
                    ex->wt[((size_t)i * co + o) * 9 + (8 - k)] = w[((size_t)o * ci + i) * 9 + k];
        conv3x3(ex, da, ex->wt, din, n, NULL, NULL);
    }
}

static double loss_and_backward(cpu_exec *ex, const float *in, const float *target, int n,
                                float *grad)
{
    const tomo_unet_layout *lay = &ex->base.net->layout;
    int L = lay->levels, H = ex->base.config.height, W = ex->base.config.width, f = chan_c(ex, 0);
    size_t hw = (size_t)H * W;
    tensor top = tensor_one(ex->lv[0].eb_a, f, H, W);
    head_job hj = {top,
                   ex->out,
                   target,
                   ex->base.net->params + lay->head_weight,
                   0.0f,
                   ex->s2,
                   top,
                   ex->partial,
                   grad ? grad + lay->head_weight : NULL,
                   grad ? grad + lay->head_bias : NULL,
                   (float)(2.0 / ((double)n * (double)hw)),
                   n};
    run(ex, n, loss_task, &hj);
    double total = 0.0;
    for (int i = 0; i < n; i++)
        total += ex->partial[i];
    double loss = total / ((double)n * (double)hw);
    if (!grad)
        return loss;

    run(ex, f + 1, head_dw_task, &hj);
    float *cur = ex->s1, *tmp = ex->s3;
    hj.din = tensor_one(cur, f, H, W);
    run(ex, n * f, head_din_task, &hj);

    for (int l = 0; l < L; l++) {
        level_buffers *b = &ex->lv[l];
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        tensor da = tensor_one(cur, c, h, w), din = tensor_one(tmp, c, h, w);
        tensor mid = tensor_one(b->ea_a, c, h, w);
        unit_backward(ex, &lay->dec[l].b, &mid, b->eb_x, b->eb_a, &da, &din, n, grad);
        tensor cat = tensor_cat(b->db_a, c, b->up, c, h, w);
        tensor dcat = tensor_cat(b->dskip, c, ex->s2, c, h, w);
        unit_backward(ex, &lay->dec[l].a, &cat, b->ea_x, b->ea_a, &din, &dcat, n, grad);
        int cn = chan_c(ex, l + 1);
        float *next_a = l + 1 < L ? ex->lv[l + 1].eb_a : ex->lv[L].db_a;
        tensor up_in = tensor_one(next_a, cn, h / 2, w / 2);
        tensor dup = tensor_one(ex->s2, c, h, w);
        tensor dnext = tensor_one(cur, cn, h / 2, w / 2);
        up_backward(ex, &lay->up[l], &up_in, &dup, &dnext, n, grad);
    }
    /* cur: gradient of the bottom's output. */
    for (int l = L; l >= 0; l--) {
        level_buffers *b = &ex->lv[l];
        int c = chan_c(ex, l), h = H >> l, w = W >> l;
        tensor da_b = l == L ? tensor_one(cur, c, h, w) : tensor_one(b->dskip, c, h, w);
        if (l < L) {
            /* Route the pooled gradient (in cur) to the maxima, on top of the skip's. */
            tensor skip = tensor_one(b->db_a, c, h, w);
            pool_job pj = {skip, tensor_one(cur, c, h / 2, w / 2), da_b};
            run(ex, n * c, pool_back_task, &pj);
        }
        tensor mid = tensor_one(b->da_a, c, h, w), dmid = tensor_one(tmp, c, h, w);
        unit_backward(ex, &lay->down[l].b, &mid, b->db_x, b->db_a, &da_b, &dmid, n, grad);
        tensor in_t = l ? tensor_one(b->pool, chan_c(ex, l - 1), h, w) : input_tensor(ex, in);
        tensor dpool = l ? tensor_one(cur, chan_c(ex, l - 1), h, w) : in_t;
        unit_backward(ex, &lay->down[l].a, &in_t, b->da_x, b->da_a, &dmid, l ? &dpool : NULL, n,
                      grad);
    }
    return loss;
}

static int check_training_size(const cpu_exec *ex, int n, tomo_error *err)
{
    int L = ex->base.net->config.levels;
    size_t m =
        (size_t)n * (size_t)(ex->base.config.height >> L) * (size_t)(ex->base.config.width >> L);
    if (m < 2)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: BatchNorm needs more than one value per channel in "
                              "training; %d image(s) of %dx%d leave 1 pixel at the bottom",
                              n, ex->base.config.width, ex->base.config.height);
    return 0;
}

static int cpu_gradient(tomo_unet_exec *base, const float *in, const float *target, int n,
                        double *loss, float *grad, tomo_error *err)
{
    cpu_exec *ex = (cpu_exec *)base;
    int rc = check_training_size(ex, n, err);
    if (rc < 0)
        return rc;
    forward_train(ex, in, n);
    double l = loss_and_backward(ex, in, target, n, grad);
    if (loss)
        *loss = l;
    return 0;
}

typedef struct adam_job {
    tomo_unet *net;
    const float *grad;
    const tomo_adam_params *adam;
    size_t chunk;
} adam_job;

static void adam_task(void *arg, int task, int slot)
{
    (void)slot;
    adam_job *j = arg;
    size_t i0 = (size_t)task * j->chunk, n = j->net->layout.n_params - i0;
    if (n > j->chunk)
        n = j->chunk;
    tomo_adam_update(j->net->params + i0, j->grad + i0, j->net->adam_m + i0, j->net->adam_v + i0, n,
                     j->net->adam_step, j->adam);
}

static void update_running(cpu_exec *ex, const tomo_unet_unit *u, int n, int level)
{
    tomo_unet *net = ex->base.net;
    double m = (double)n * (double)(ex->base.config.height >> level) *
               (double)(ex->base.config.width >> level);
    double unbias = m / (m - 1.0);
    for (int c = 0; c < u->out_c; c++) {
        float *rm = net->buffers + u->mean + c, *rv = net->buffers + u->var + c;
        *rm = (1.0f - BN_MOMENTUM) * *rm + BN_MOMENTUM * ex->bstats[u->mean + c];
        *rv = (1.0f - BN_MOMENTUM) * *rv +
              BN_MOMENTUM * (float)((double)ex->bstats[u->var + c] * unbias);
    }
}

static int cpu_train_step(tomo_unet_exec *base, const float *in, const float *target, int n,
                          const tomo_adam_params *adam, double *loss, tomo_error *err)
{
    cpu_exec *ex = (cpu_exec *)base;
    int rc = cpu_gradient(base, in, target, n, loss, ex->grad, err);
    if (rc < 0)
        return rc;
    const tomo_unet_layout *lay = &base->net->layout;
    for (int l = 0; l <= lay->levels; l++) {
        update_running(ex, &lay->down[l].a, n, l);
        update_running(ex, &lay->down[l].b, n, l);
    }
    for (int l = 0; l < lay->levels; l++) {
        update_running(ex, &lay->dec[l].a, n, l);
        update_running(ex, &lay->dec[l].b, n, l);
    }
    base->net->adam_step++;
    adam_job j = {base->net, ex->grad, adam, 1 << 16};
    run(ex, (int)((lay->n_params + j.chunk - 1) / j.chunk), adam_task, &j);
    return 0;
}

/* For tests: the forward pass with batch statistics, and those statistics. */
int tomo_unet_cpu_forward_train(tomo_unet_exec *base, const float *in, int n, float *out,
                                float *batch_stats, tomo_error *err)
{
    if (base->ops->forward != cpu_forward)
        return tomo_error_set(err, TOMO_E_INVALID, "network: not a CPU executor");
    if (!base->config.training)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: executor was created for inference only");
    if (!in || !out || n < 1 || n > base->config.batch)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d images for a batch of %d", n,
                              base->config.batch);
    cpu_exec *ex = (cpu_exec *)base;
    int rc = check_training_size(ex, n, err);
    if (rc < 0)
        return rc;
    forward_train(ex, in, n);
    memcpy(out, ex->out, (size_t)n * base->config.height * base->config.width * sizeof(float));
    if (batch_stats)
        memcpy(batch_stats, ex->bstats, base->net->layout.n_buffers * sizeof(float));
    return 0;
}

static int cpu_nothing(tomo_unet_exec *base, tomo_error *err)
{
    (void)base;
    (void)err;
    return 0;
}

static void cpu_destroy(tomo_unet_exec *base)
{
    cpu_exec *ex = (cpu_exec *)base;
    tomo_pool_destroy(ex->pool);
    free(ex->arena);
    free(ex);
}

static const tomo_unet_exec_ops cpu_ops = {cpu_forward, cpu_gradient, cpu_train_step,
                                           cpu_nothing, cpu_nothing,  cpu_destroy};

/* ---- Memory plan -------------------------------------------------------------------------- */

typedef struct arena_plan {
    float *base; /* NULL while measuring */
    size_t used; /* floats */
    int overflow;
} arena_plan;

static size_t mul_sat(size_t a, size_t b)
{
    return (a && b > SIZE_MAX / a) ? SIZE_MAX : a * b;
}

/* Hands out n floats, 64-byte aligned relative to the arena. */
static float *take(arena_plan *ap, size_t n)
{
    size_t at = ap->used;
    n = round_up(n < SIZE_MAX - 16 ? n : SIZE_MAX - 16, 16);
    if (n > SIZE_MAX / 8 - at)
        ap->overflow = 1;
    else
        ap->used += n;
    return ap->base ? ap->base + at : NULL;
}

static void plan(cpu_exec *ex, arena_plan *ap)
{
    const tomo_unet_exec_config *cfg = &ex->base.config;
    const tomo_unet_layout *lay = &ex->base.net->layout;
    int L = lay->levels, B = cfg->batch;
    size_t hw = (size_t)cfg->height * (size_t)cfg->width;
    size_t f_img = mul_sat(mul_sat((size_t)chan_c(ex, 0), hw), (size_t)B);
    ex->scratch = take(ap, mul_sat(ex->scratch_floats, (size_t)ex->slots));
    size_t wmax = 0;
    for (int l = 0; l <= L; l++) {
        const tomo_unet_block *bl[2] = {&lay->down[l], l < L ? &lay->dec[l] : &lay->down[l]};
        for (int i = 0; i < 2; i++) {
            wmax = max_z(wmax, (size_t)bl[i]->a.in_c * bl[i]->a.out_c * 9);
            wmax = max_z(wmax, (size_t)bl[i]->b.in_c * bl[i]->b.out_c * 9);
        }
        if (l < L)
            wmax = max_z(wmax, (size_t)lay->up[l].in_c * lay->up[l].out_c * 4);
    }
    ex->wt = take(ap, wmax);
    ex->scale = take(ap, lay->n_buffers);
    ex->shift = take(ap, lay->n_buffers);
    ex->bstats = take(ap, lay->n_buffers);
    ex->binv = take(ap, lay->n_buffers);
    ex->partial = (double *)(void *)take(ap, 2 * (size_t)B);
    ex->s1 = take(ap, f_img);
    ex->s2 = take(ap, f_img);
    ex->s3 = take(ap, f_img);
    if (!cfg->training) {
        for (int l = 0; l < L; l++)
            ex->skip[l] = take(ap, f_img >> l); /* c_l x hw_l x B */
        return;
    }
    ex->grad = take(ap, lay->n_params);
    size_t tmax = 0; /* pixels x padded rows of the largest pixel-major gradient */
    for (int l = 0; l <= L; l++) {
        size_t hwl = (size_t)(cfg->height >> l) * (size_t)(cfg->width >> l);
        tmax = max_z(tmax, hwl * round_up((size_t)chan_c(ex, l), NR));
        if (l < L)
            tmax = max_z(tmax, hwl / 4 * round_up((size_t)lay->up[l].out_c * 4, NR));
    }
    ex->tbuf = take(ap, mul_sat(tmax, (size_t)B));
    ex->out = take(ap, mul_sat(hw, (size_t)B));
    for (int l = 0; l <= L; l++) {
        level_buffers *b = &ex->lv[l];
        size_t sz = f_img >> l; /* c_l x hw_l x B = f x hw x B / 2^l */
        b->da_x = take(ap, sz);
        b->da_a = take(ap, sz);
        b->db_x = take(ap, sz);
        b->db_a = take(ap, sz);
        if (l >= 1)
            b->pool = take(ap, sz / 2);
        if (l < L) {
            b->up = take(ap, sz);
            b->ea_x = take(ap, sz);
            b->ea_a = take(ap, sz);
            b->eb_x = take(ap, sz);
            b->eb_a = take(ap, sz);
            b->dskip = take(ap, sz);
            ex->skip[l] = b->db_a;
        }
    }
}

int tomo_unet_cpu_exec_create(tomo_unet *net, const tomo_unet_exec_config *config,
                              tomo_unet_exec **out, tomo_error *err)
{
    *out = NULL;
    if (config->threads < 0)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d threads (0 = every core)",
                              config->threads);
    int L = net->config.levels;
    if (config->batch < 1 || config->height < (1 << L) || config->width < (1 << L) ||
        config->height % (1 << L) || config->width % (1 << L))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: batch %d of %dx%d images (sides must be positive "
                              "multiples of %d)",
                              config->batch, config->width, config->height, 1 << L);
    if ((double)config->batch * config->height * config->width > 2147483647.0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: batch %d of %dx%d images is more than 2^31 pixels",
                              config->batch, config->width, config->height);
    cpu_exec *ex = calloc(1, sizeof(*ex));
    if (!ex)
        return tomo_error_set(err, TOMO_E_NOMEM, "network: out of memory");
    ex->base.ops = &cpu_ops;
    ex->base.net = net;
    ex->base.config = *config;
    ex->base.config.device = TOMO_UNET_DEVICE_CPU;
    ex->pool = tomo_pool_create(config->threads);
    if (!ex->pool) {
        free(ex);
        return tomo_error_set(err, TOMO_E_NOMEM, "network: cannot start %d CPU threads",
                              config->threads);
    }
    ex->slots = tomo_pool_size(ex->pool);
    ex->scratch_floats =
        round_up(scratch_need(&net->layout, config->height, config->width, config->training), 16);

    arena_plan ap = {NULL, 0, 0};
    plan(ex, &ap);
    size_t bytes = mul_sat(ap.used, sizeof(float));
    /* More than the machine's memory would only swap (or meet the OOM killer): refuse it. */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    double ram = pages > 0 && page > 0 ? (double)pages * (double)page : INFINITY;
    if (!ap.overflow && bytes < SIZE_MAX && (double)bytes <= ram)
        ex->arena = calloc(ap.used, sizeof(float));
    if (!ex->arena) {
        tomo_pool_destroy(ex->pool);
        free(ex);
        return tomo_error_set(err, TOMO_E_NOMEM,
                              "network: out of memory: %.2f GB of CPU buffers for %s batch %d "
                              "of %dx%d images (the machine has %.2f GB)",
                              ap.overflow ? INFINITY : (double)bytes / 1e9,
                              config->training ? "a training" : "an inference", config->batch,
                              config->width, config->height, ram / 1e9);
    }
    ap.base = ex->arena;
    ap.used = 0;
    plan(ex, &ap);
    snprintf(ex->base.backend, sizeof(ex->base.backend), "cpu (%d thread%s)", ex->slots,
             ex->slots == 1 ? "" : "s");
    *out = &ex->base;
    return 0;
}
