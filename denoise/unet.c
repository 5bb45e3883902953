/*
 * denoise/unet.c - the network's shape, parameters and Adam; dispatch to the backends.
 */
#include "unet.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "unet_exec.h"

void tomo_unet_config_default(tomo_unet_config *config)
{
    config->in_channels = 11;
    config->base_features = 32;
    config->levels = 4;
}

/* Hands out consecutive offsets in the params and buffers arrays. */
typedef struct layout_cursor {
    size_t params;
    size_t buffers;
} layout_cursor;

static size_t take(size_t *next, size_t n)
{
    size_t at = *next;
    *next += n;
    return at;
}

static tomo_unet_unit make_unit(layout_cursor *cur, int in_c, int out_c)
{
    tomo_unet_unit u;
    u.in_c = in_c;
    u.out_c = out_c;
    u.weight = take(&cur->params, (size_t)out_c * in_c * 9);
    u.gamma = take(&cur->params, (size_t)out_c);
    u.beta = take(&cur->params, (size_t)out_c);
    u.mean = take(&cur->buffers, (size_t)out_c);
    u.var = take(&cur->buffers, (size_t)out_c);
    return u;
}

static tomo_unet_block make_block(layout_cursor *cur, int in_c, int out_c)
{
    tomo_unet_block b;
    b.a = make_unit(cur, in_c, out_c);
    b.b = make_unit(cur, out_c, out_c);
    return b;
}

int tomo_unet_layout_make(const tomo_unet_config *config, tomo_unet_layout *layout, tomo_error *err)
{
    if (config->in_channels < 1 || config->in_channels > 64)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d input channels (must be 1..64)",
                              config->in_channels);
    if (config->base_features < 1 || config->base_features > 256)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d base features (must be 1..256)",
                              config->base_features);
    if (config->levels < 1 || config->levels > TOMO_UNET_MAX_LEVELS)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d levels (must be 1..%d)",
                              config->levels, TOMO_UNET_MAX_LEVELS);

    memset(layout, 0, sizeof(*layout));
    layout_cursor cur = {0, 0};
    int levels = config->levels;
    int f = config->base_features;
    layout->levels = levels;

    int in_c = config->in_channels;
    for (int l = 0; l <= levels; l++) {
        layout->down[l] = make_block(&cur, in_c, f << l);
        in_c = f << l;
    }
    for (int l = levels - 1; l >= 0; l--) {
        tomo_unet_up *up = &layout->up[l];
        up->in_c = f << (l + 1);
        up->out_c = f << l;
        up->weight = take(&cur.params, (size_t)up->in_c * up->out_c * 4);
        up->bias = take(&cur.params, (size_t)up->out_c);
        layout->dec[l] = make_block(&cur, 2 * (f << l), f << l);
    }
    layout->head_in = f;
    layout->head_weight = take(&cur.params, (size_t)f);
    layout->head_bias = take(&cur.params, 1);
    layout->n_params = cur.params;
    layout->n_buffers = cur.buffers;
    return 0;
}

int tomo_unet_create(const tomo_unet_config *config, tomo_unet **out, tomo_error *err)
{
    *out = NULL;
    tomo_unet *net = calloc(1, sizeof(*net));
    if (!net)
        return tomo_error_set(err, TOMO_E_NOMEM, "network: out of memory");
    net->config = *config;
    int rc = tomo_unet_layout_make(config, &net->layout, err);
    if (rc < 0) {
        free(net);
        return rc;
    }
    size_t np = net->layout.n_params, nb = net->layout.n_buffers;
    net->params = calloc(np, sizeof(float));
    net->buffers = calloc(nb, sizeof(float));
    net->adam_m = calloc(np, sizeof(float));
    net->adam_v = calloc(np, sizeof(float));
    if (!net->params || !net->buffers || !net->adam_m || !net->adam_v) {
        tomo_unet_destroy(net);
        return tomo_error_set(err, TOMO_E_NOMEM, "network: out of memory for %zu parameters", np);
    }
    *out = net;
    return 0;
}

static void fill_normal(float *p, size_t n, double std, tomo_rng *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(std * tomo_rng_normal(rng));
}

static void fill(float *p, size_t n, float value)
{
    for (size_t i = 0; i < n; i++)
        p[i] = value;
}

static void init_unit(tomo_unet *net, const tomo_unet_unit *u, tomo_rng *rng)
{
    fill_normal(net->params + u->weight, (size_t)u->out_c * u->in_c * 9,
                sqrt(2.0 / (u->in_c * 9.0)), rng);
    fill(net->params + u->gamma, (size_t)u->out_c, 1.0f);
    fill(net->params + u->beta, (size_t)u->out_c, 0.0f);
    fill(net->buffers + u->mean, (size_t)u->out_c, 0.0f);
    fill(net->buffers + u->var, (size_t)u->out_c, 1.0f);
}

static void init_block(tomo_unet *net, const tomo_unet_block *b, tomo_rng *rng)
{
    init_unit(net, &b->a, rng);
    init_unit(net, &b->b, rng);
}

void tomo_unet_init(tomo_unet *net, tomo_rng *rng)
{
    const tomo_unet_layout *lay = &net->layout;
    /* Drawn in parameter order, so the same seed gives the same network. */
    for (int l = 0; l <= lay->levels; l++)
        init_block(net, &lay->down[l], rng);
    for (int l = lay->levels - 1; l >= 0; l--) {
        const tomo_unet_up *up = &lay->up[l];
        fill_normal(net->params + up->weight, (size_t)up->in_c * up->out_c * 4,
                    sqrt(1.0 / up->in_c), rng);
        fill(net->params + up->bias, (size_t)up->out_c, 0.0f);
        init_block(net, &lay->dec[l], rng);
    }
    fill_normal(net->params + lay->head_weight, (size_t)lay->head_in, sqrt(2.0 / lay->head_in),
                rng);
    net->params[lay->head_bias] = 0.0f;
    memset(net->adam_m, 0, lay->n_params * sizeof(float));
    memset(net->adam_v, 0, lay->n_params * sizeof(float));
    net->adam_step = 0;
}

void tomo_unet_destroy(tomo_unet *net)
{
    if (!net)
        return;
    free(net->params);
    free(net->buffers);
    free(net->adam_m);
    free(net->adam_v);
    free(net);
}

void tomo_adam_params_default(tomo_adam_params *adam)
{
    adam->lr = 1e-3f;
    adam->beta1 = 0.9f;
    adam->beta2 = 0.999f;
    adam->eps = 1e-8f;
}

void tomo_adam_update(float *p, const float *g, float *m, float *v, size_t n, uint64_t t,
                      const tomo_adam_params *adam)
{
    float b1 = adam->beta1, b2 = adam->beta2;
    float correction1 = 1.0f - (float)pow(b1, (double)t);
    float correction2 = 1.0f - (float)pow(b2, (double)t);
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        float m_hat = m[i] / correction1;
        float v_hat = v[i] / correction2;
        p[i] -= adam->lr * m_hat / (sqrtf(v_hat) + adam->eps);
    }
}

/* ---- Executors --------------------------------------------------------------------------- */

int tomo_unet_exec_create(tomo_unet *net, const tomo_unet_exec_config *config, tomo_unet_exec **out,
                          tomo_error *err)
{
    *out = NULL;
    int multiple = 1 << net->config.levels;
    if (config->batch < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "network: batch %d (must be at least 1)",
                              config->batch);
    if (config->height < multiple || config->width < multiple || config->height % multiple ||
        config->width % multiple)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: image %dx%d (sides must be positive multiples of %d)",
                              config->width, config->height, multiple);
    if (config->device < TOMO_UNET_DEVICE_CPU)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: device %d (must be auto, cpu or a CUDA index)",
                              config->device);
    if (config->device == TOMO_UNET_DEVICE_CPU)
        return tomo_unet_cpu_exec_create(net, config, out, err);
    if (config->device >= 0)
        return tomo_unet_cuda_exec_create(net, config, out, err);
    tomo_unet_exec_config resolved = *config;
    resolved.device = tomo_unet_cuda_device_count() > 0 ? 0 : TOMO_UNET_DEVICE_CPU;
    if (resolved.device == 0 && tomo_unet_cuda_exec_create(net, &resolved, out, err) == 0)
        return 0;
    tomo_error_clear(err);
    resolved.device = TOMO_UNET_DEVICE_CPU;
    return tomo_unet_cpu_exec_create(net, &resolved, out, err);
}

static int check_batch(const tomo_unet_exec *exec, const void *in, int n, const void *out,
                       tomo_error *err)
{
    if (!in || !out)
        return tomo_error_set(err, TOMO_E_INVALID, "network: no %s array",
                              in ? "output or target" : "input");
    if (n < 1 || n > exec->config.batch)
        return tomo_error_set(err, TOMO_E_INVALID, "network: %d images for a batch of %d", n,
                              exec->config.batch);
    return 0;
}

static int check_training(const tomo_unet_exec *exec, tomo_error *err)
{
    if (!exec->config.training)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: executor was created for inference only");
    return 0;
}

int tomo_unet_forward(tomo_unet_exec *exec, const float *in, int n, float *out, tomo_error *err)
{
    int rc = check_batch(exec, in, n, out, err);
    return rc < 0 ? rc : exec->ops->forward(exec, in, n, out, err);
}

int tomo_unet_gradient(tomo_unet_exec *exec, const float *in, const float *target, int n,
                       double *loss, float *grad, tomo_error *err)
{
    double ignored;
    int rc = check_batch(exec, in, n, target, err);
    if (rc == 0)
        rc = check_training(exec, err);
    return rc < 0 ? rc
                  : exec->ops->gradient(exec, in, target, n, loss ? loss : &ignored, grad, err);
}

int tomo_unet_train_step(tomo_unet_exec *exec, const float *in, const float *target, int n,
                         const tomo_adam_params *adam, double *loss, tomo_error *err)
{
    double ignored;
    int rc = check_batch(exec, in, n, target, err);
    if (rc == 0)
        rc = check_training(exec, err);
    if (rc == 0 && !adam)
        rc = tomo_error_set(err, TOMO_E_INVALID, "network: no Adam settings");
    return rc < 0 ? rc
                  : exec->ops->train_step(exec, in, target, n, adam, loss ? loss : &ignored, err);
}

int tomo_unet_exec_pull(tomo_unet_exec *exec, tomo_error *err)
{
    return exec->ops->pull(exec, err);
}

int tomo_unet_exec_push(tomo_unet_exec *exec, tomo_error *err)
{
    return exec->ops->push(exec, err);
}

const char *tomo_unet_exec_backend(const tomo_unet_exec *exec)
{
    return exec->backend;
}

void tomo_unet_exec_destroy(tomo_unet_exec *exec)
{
    if (exec)
        exec->ops->destroy(exec);
}
