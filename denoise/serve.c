/*
 * denoise/serve.c - one denoised slice from the split reconstructions around it.
 */
#include "serve.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/pool.h"

struct tomo_n2i {
    tomo_model *model;
    tomo_unet_exec *exec;
    int size;     /* S, slice side */
    int K;        /* splits */
    int channels; /* C = 2 context + 1 */
    int context;
    int tile;        /* T, side of the network's input (P for a full slice) */
    int margin;      /* overlap kept out of each tile's contribution (0 for a full slice) */
    int step;        /* T - 2 margin: pixels each tile contributes per side */
    int pad;         /* (P - S) / 2: rows and columns of reflection before the slice */
    float *input;    /* [C][T][T] */
    float *output;   /* [T][T] */
    double *acc;     /* [S][S], sum over k of the network's output */
    tomo_pool *pool; /* assembles inputs and sums outputs: at full size, 10^8 pixels a pass */
    const atomic_int *cancel;
    char backend[256];
};

void tomo_n2i_config_default(tomo_n2i_config *config)
{
    memset(config, 0, sizeof *config);
    config->device = TOMO_UNET_DEVICE_AUTO;
}

static int round_up(int n, int multiple)
{
    return (n + multiple - 1) / multiple * multiple;
}

static int make_exec(tomo_n2i *n2i, const tomo_n2i_config *config, int side, tomo_error *err)
{
    tomo_unet_exec_config ec = {
        .device = config->device,
        .threads = config->threads,
        .batch = 1,
        .height = side,
        .width = side,
        .training = 0,
        .exact = config->exact,
    };
    return tomo_unet_exec_create(n2i->model->net, &ec, &n2i->exec, err);
}

int tomo_n2i_check_model(const tomo_model *model, const char *path, tomo_error *err)
{
    const tomo_unet_config *nc = &model->net->config;
    int K = model->split.k, context = model->split.context;
    if (K < 2 || context < 0 || nc->in_channels != 2 * context + 1)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: %d splits with %d slices of context do not fit a network of "
                              "%d input channels (needs K >= 2 and 2 context + 1 channels)",
                              path, K, context, nc->in_channels);
    if (!(model->std > 0) || !isfinite(model->std) || !isfinite(model->mean))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: normalisation mean %g, std %g (needs a positive, finite std)",
                              path, model->mean, model->std);
    return 0;
}

int tomo_n2i_create(tomo_model *model, int size, const tomo_n2i_config *config, tomo_n2i **out,
                    tomo_error *err)
{
    *out = NULL;
    tomo_n2i_config defaults;
    if (!config) {
        tomo_n2i_config_default(&defaults);
        config = &defaults;
    }
    int rc = tomo_n2i_check_model(model, "model", err);
    if (rc < 0)
        return rc;
    const tomo_unet_config *nc = &model->net->config;
    int K = model->split.k, context = model->split.context;
    if (size < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "denoising: slice side %d", size);
    tomo_n2i *n2i = calloc(1, sizeof *n2i);
    if (!n2i)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    n2i->model = model;
    n2i->cancel = config->cancel;
    n2i->size = size;
    n2i->K = K;
    n2i->context = context;
    n2i->channels = nc->in_channels;
    int unit = 1 << nc->levels;
    int full = round_up(size, unit);
    /*
     * A 3x3 convolution at level l reaches 2^l pixels further, a 2x2 pooling from level l
     * 2^l, so an output pixel sees 7 * 2^L - 5 pixels either side: with a margin beyond that
     * (a multiple of 2^L, so that tiles pool on the full slice's grid) tiles give the full
     * slice's pixels wherever the full slice's own padding is out of reach.
     */
    int margin = round_up(config->margin > 0 ? config->margin : 7 * unit, unit);
    if (config->tile > 0 && round_up(config->tile, unit) <= 2 * margin) {
        free(n2i);
        return tomo_error_set(err, TOMO_E_INVALID,
                              "denoising: tiles of %d pixels leave nothing inside margins of %d",
                              config->tile, margin);
    }
    rc = -TOMO_E_NOMEM;
    if (config->tile <= 0) {
        rc = make_exec(n2i, config, full, err);
        if (rc == 0) {
            n2i->tile = full;
            n2i->margin = 0;
            n2i->step = full;
        } else if (rc == -TOMO_E_NOMEM) {
            tomo_error_clear(err); /* tiles may fit */
        }
    }
    /* Tiles: the requested side, or from 1024 down while they do not fit. */
    for (int t = config->tile > 0 ? round_up(config->tile, unit) : 1024;
         rc == -TOMO_E_NOMEM && t > 2 * margin; t /= 2) {
        t = round_up(t, unit);
        if (config->tile <= 0 && t >= full)
            continue; /* no smaller than what already failed */
        rc = make_exec(n2i, config, t, err);
        if (rc == 0) {
            n2i->tile = t;
            n2i->margin = margin;
            n2i->step = t - 2 * margin;
        } else if (rc == -TOMO_E_NOMEM && config->tile <= 0) {
            tomo_error_clear(err);
        } else {
            break;
        }
    }
    if (rc == -TOMO_E_NOMEM && !n2i->exec)
        rc = tomo_error_set(err, TOMO_E_NOMEM,
                            "denoising: not even a %d x %d tile of the network fits in memory",
                            2 * margin + unit, 2 * margin + unit);
    if (rc < 0) {
        tomo_n2i_destroy(n2i);
        return rc;
    }
    n2i->pad = (full - size) / 2;
    size_t t2 = (size_t)n2i->tile * (size_t)n2i->tile;
    n2i->input = malloc((size_t)n2i->channels * t2 * sizeof *n2i->input);
    n2i->output = malloc(t2 * sizeof *n2i->output);
    n2i->acc = malloc((size_t)size * (size_t)size * sizeof *n2i->acc);
    n2i->pool = tomo_pool_create(config->threads);
    if (!n2i->input || !n2i->output || !n2i->acc || !n2i->pool) {
        tomo_n2i_destroy(n2i);
        return tomo_error_set(err, TOMO_E_NOMEM, "denoising: out of memory for %d x %d inputs",
                              full, full);
    }
    if (n2i->margin == 0)
        snprintf(n2i->backend, sizeof n2i->backend, "%s, full %d x %d slice (padded to %d)",
                 tomo_unet_exec_backend(n2i->exec), size, size, full);
    else
        snprintf(n2i->backend, sizeof n2i->backend, "%s, %d x %d tiles overlapping by %d",
                 tomo_unet_exec_backend(n2i->exec), n2i->tile, n2i->tile, n2i->margin);
    *out = n2i;
    return 0;
}

int tomo_n2i_inputs(const tomo_n2i *n2i)
{
    return n2i->K * n2i->channels;
}

/* Rows per task of the loops spread over the pool. */
#define BAND 32

/* One network input or one slice region being assembled, shared by the pool's tasks. */
typedef struct tile_job {
    tomo_n2i *n2i;
    const float *const *inputs;
    int k, y0, x0; /* left-out split; slice coordinates of the tile's first pixel */
    int v0, u0;    /* slice pixels the tile contributes: [v0, v0 + step) x [u0, u0 + step) */
    float *out;    /* the finished slice (finish_band) */
    const unsigned char *mask;
} tile_job;

/* Network input rows [band * BAND, ...) of one channel, for left-out split k. */
static void fill_band(void *arg, int task, int slot)
{
    (void)slot;
    const tile_job *job = arg;
    tomo_n2i *n2i = job->n2i;
    const int S = n2i->size, T = n2i->tile, C = n2i->channels, K = n2i->K;
    const int bands = (T + BAND - 1) / BAND, c = task / bands, band = task % bands;
    const double mean = n2i->model->mean, inv_std = 1.0 / n2i->model->std;
    const double inv_rest = 1.0 / (K - 1);
    /* columns whose source is inside the slice need no reflection */
    int x_in0 = job->x0 < 0 ? -job->x0 : 0;
    int x_in1 = S - job->x0 < T ? S - job->x0 : T;
    if (x_in1 < x_in0)
        x_in1 = x_in0;
    float *dst_c = n2i->input + (size_t)c * T * T;
    for (int y = band * BAND; y < (band + 1) * BAND && y < T; y++) {
        size_t row = (size_t)tomo_model_reflect(job->y0 + y, S) * (size_t)S;
        float *dst = dst_c + (size_t)y * T;
        for (int x = 0; x < T; x++) {
            if (x == x_in0 && x < x_in1) {
                /* the interior, without a reflection per pixel */
                size_t at = row + (size_t)(job->x0 + x);
                for (; x < x_in1; x++, at++) {
                    double sum = 0;
                    for (int j = 0; j < K; j++)
                        if (j != job->k)
                            sum += job->inputs[j * C + c][at];
                    dst[x] = (float)((sum * inv_rest - mean) * inv_std);
                }
                if (x >= T)
                    break;
            }
            size_t at = row + (size_t)tomo_model_reflect(job->x0 + x, S);
            double sum = 0;
            for (int j = 0; j < K; j++)
                if (j != job->k)
                    sum += job->inputs[j * C + c][at];
            dst[x] = (float)((sum * inv_rest - mean) * inv_std);
        }
    }
}

/* Adds slice rows [v0 + band * BAND, ...) of the tile's output to the sum. */
static void add_band(void *arg, int task, int slot)
{
    (void)slot;
    const tile_job *job = arg;
    tomo_n2i *n2i = job->n2i;
    const int S = n2i->size, T = n2i->tile, step = n2i->step;
    int u_lo = job->u0 > 0 ? job->u0 : 0, u_hi = job->u0 + step < S ? job->u0 + step : S;
    int v_lo = job->v0 + task * BAND, v_hi = v_lo + BAND;
    if (v_lo < 0)
        v_lo = 0;
    if (v_hi > job->v0 + step)
        v_hi = job->v0 + step;
    if (v_hi > S)
        v_hi = S;
    for (int v = v_lo; v < v_hi; v++) {
        const float *src = n2i->output + (size_t)(v - job->y0) * T - job->x0;
        double *dst = n2i->acc + (size_t)v * S;
        for (int u = u_lo; u < u_hi; u++)
            dst[u] += src[u];
    }
}

/* Slice rows [band * BAND, ...): the mean of the K outputs, denormalised and masked. */
static void finish_band(void *arg, int task, int slot)
{
    (void)slot;
    const tile_job *job = arg;
    tomo_n2i *n2i = job->n2i;
    const size_t S = (size_t)n2i->size;
    const double scale = n2i->model->std / n2i->K, mean = n2i->model->mean;
    size_t i0 = (size_t)task * BAND * S, i1 = i0 + BAND * S;
    if (i1 > S * S)
        i1 = S * S;
    for (size_t i = i0; i < i1; i++)
        job->out[i] = job->mask && !job->mask[i] ? 0.0f : (float)(n2i->acc[i] * scale + mean);
}

int tomo_n2i_denoise_slice(tomo_n2i *n2i, const float *const *inputs, const unsigned char *mask,
                           float *out, tomo_error *err)
{
    const int S = n2i->size, T = n2i->tile, step = n2i->step;
    const size_t npx = (size_t)S * (size_t)S;
    memset(n2i->acc, 0, npx * sizeof *n2i->acc);
    tile_job job = {.n2i = n2i, .inputs = inputs, .out = out, .mask = mask};
    /* tiles on the grid of the padded slice, whose pixel 0 is slice pixel -pad */
    int tiles = (S + n2i->pad + step - 1) / step;
    for (int k = 0; k < n2i->K; k++)
        for (int ty = 0; ty < tiles; ty++)
            for (int tx = 0; tx < tiles; tx++) {
                job.k = k;
                job.v0 = ty * step - n2i->pad;
                job.u0 = tx * step - n2i->pad;
                job.y0 = job.v0 - n2i->margin;
                job.x0 = job.u0 - n2i->margin;
                if (n2i->cancel && atomic_load(n2i->cancel))
                    return tomo_error_set(err, TOMO_E_CANCELLED, "denoising cancelled");
                tomo_pool_run(n2i->pool, n2i->channels * ((T + BAND - 1) / BAND), fill_band, &job);
                int rc = tomo_unet_forward(n2i->exec, n2i->input, 1, n2i->output, err);
                if (rc < 0)
                    return rc;
                tomo_pool_run(n2i->pool, (step + BAND - 1) / BAND, add_band, &job);
            }
    tomo_pool_run(n2i->pool, (S + BAND - 1) / BAND, finish_band, &job);
    return 0;
}

const char *tomo_n2i_backend(const tomo_n2i *n2i)
{
    return n2i->backend;
}

void tomo_n2i_destroy(tomo_n2i *n2i)
{
    if (!n2i)
        return;
    tomo_unet_exec_destroy(n2i->exec);
    tomo_pool_destroy(n2i->pool);
    free(n2i->input);
    free(n2i->output);
    free(n2i->acc);
    free(n2i);
}
