/*
 * tests/unit/test_unet.c - the U-Net's layout, and its CPU backend against an independent
 * double-precision transcription of unet.h written here (naive loops, no shared code):
 *
 *  - layout: the default network's parameter count from the architecture's formula, offsets
 *    contiguous in the documented order;
 *  - forward, inference (running statistics) and training (batch statistics), against the
 *    transcription: max |difference| <= 1e-5 x max |output|;
 *  - gradient: sampled parameters of every kind (conv weights at every level, gamma, beta, up
 *    weight and bias, head weight and bias) against central finite differences of the
 *    transcription's loss in double, h = 1e-6 x max(1, |p|) (small: ReLU and max-pool make the
 *    loss piecewise smooth, and a larger step crosses their kinks; in double the difference
 *    still has ~10 good digits): |g - fd| <= 1e-4 |fd| + 1e-5 x the RMS gradient of that
 *    parameter tensor, on a 3-channel, 4-feature, 2-level network, batch 2 of 16 x 16
 *    (observed: within 0.3 of that bound);
 *  - BatchNorm: train_step with lr 0 updates the running statistics by momentum 0.1 with the
 *    unbiased variance and leaves the parameters alone; inference with the running statistics
 *    set to the batch's gives the training output;
 *  - reproducibility: the same seed gives the same losses, and 1, 2 or 3 threads give the same
 *    bits (losses, parameters, Adam state, outputs);
 *  - learning: a tiny network fits a tiny dataset (loss / 100 in 150 Adam steps, lr 1e-2);
 *  - bad configurations and calls give TOMO_E_INVALID with a message.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/rng.h"
#include "../../denoise/unet.h"
#include "../../denoise/unet_exec.h"
#include "check.h"

/* ---- The transcription, in double ----------------------------------------------------------- */

typedef struct ref_net {
    const tomo_unet_layout *lay;
    int in_c, f;
    const double *p;   /* parameters */
    const double *buf; /* running statistics */
    int training;
    double *stats; /* training: batch mean and biased variance, buffers' layout (may be NULL) */
} ref_net;

/* A batch of n images of c channels h x w: [n][c][h][w]. */
typedef struct ref_t {
    int n, c, h, w;
    double *d;
} ref_t;

static ref_t rt_new(int n, int c, int h, int w)
{
    ref_t t = {n, c, h, w, calloc((size_t)n * c * h * w, sizeof(double))};
    return t;
}

static double *rt_at(const ref_t *t, int n, int c, int y, int x)
{
    return t->d + (((size_t)n * t->c + c) * t->h + y) * t->w + x;
}

static ref_t ref_conv3(const ref_t *in, const double *w, int co)
{
    ref_t out = rt_new(in->n, co, in->h, in->w);
    for (int n = 0; n < in->n; n++)
        for (int o = 0; o < co; o++)
            for (int y = 0; y < in->h; y++)
                for (int x = 0; x < in->w; x++) {
                    double s = 0;
                    for (int i = 0; i < in->c; i++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                int yy = y + ky - 1, xx = x + kx - 1;
                                if (yy < 0 || yy >= in->h || xx < 0 || xx >= in->w)
                                    continue;
                                s += w[((o * in->c + i) * 3 + ky) * 3 + kx] *
                                     *rt_at(in, n, i, yy, xx);
                            }
                    *rt_at(&out, n, o, y, x) = s;
                }
    return out;
}

static void ref_bn_relu(const ref_net *r, const tomo_unet_unit *u, ref_t *x)
{
    size_t m = (size_t)x->n * x->h * x->w;
    for (int c = 0; c < x->c; c++) {
        double mean, var;
        if (r->training) {
            double s = 0, s2 = 0;
            for (int n = 0; n < x->n; n++)
                for (int i = 0; i < x->h * x->w; i++)
                    s += rt_at(x, n, c, 0, 0)[i];
            mean = s / m;
            for (int n = 0; n < x->n; n++)
                for (int i = 0; i < x->h * x->w; i++) {
                    double d = rt_at(x, n, c, 0, 0)[i] - mean;
                    s2 += d * d;
                }
            var = s2 / m;
            if (r->stats) {
                r->stats[u->mean + c] = mean;
                r->stats[u->var + c] = var;
            }
        } else {
            mean = r->buf[u->mean + c];
            var = r->buf[u->var + c];
        }
        double g = r->p[u->gamma + c], b = r->p[u->beta + c];
        for (int n = 0; n < x->n; n++)
            for (int i = 0; i < x->h * x->w; i++) {
                double *v = rt_at(x, n, c, 0, 0) + i;
                double y = g * (*v - mean) / sqrt(var + 1e-5) + b;
                *v = y > 0 ? y : 0;
            }
    }
}

static ref_t ref_block(const ref_net *r, const tomo_unet_block *b, const ref_t *in)
{
    ref_t t = ref_conv3(in, r->p + b->a.weight, b->a.out_c);
    ref_bn_relu(r, &b->a, &t);
    ref_t t2 = ref_conv3(&t, r->p + b->b.weight, b->b.out_c);
    ref_bn_relu(r, &b->b, &t2);
    free(t.d);
    return t2;
}

static ref_t ref_pool(const ref_t *in)
{
    ref_t out = rt_new(in->n, in->c, in->h / 2, in->w / 2);
    for (int n = 0; n < in->n; n++)
        for (int c = 0; c < in->c; c++)
            for (int y = 0; y < out.h; y++)
                for (int x = 0; x < out.w; x++) {
                    double m = -INFINITY;
                    for (int dy = 0; dy < 2; dy++)
                        for (int dx = 0; dx < 2; dx++)
                            m = fmax(m, *rt_at(in, n, c, 2 * y + dy, 2 * x + dx));
                    *rt_at(&out, n, c, y, x) = m;
                }
    return out;
}

static ref_t ref_up(const ref_net *r, const tomo_unet_up *u, const ref_t *in)
{
    ref_t out = rt_new(in->n, u->out_c, in->h * 2, in->w * 2);
    const double *w = r->p + u->weight, *b = r->p + u->bias;
    for (int n = 0; n < in->n; n++)
        for (int o = 0; o < u->out_c; o++)
            for (int y = 0; y < out.h; y++)
                for (int x = 0; x < out.w; x++) {
                    double s = b[o];
                    for (int i = 0; i < u->in_c; i++)
                        s += w[((i * u->out_c + o) * 2 + y % 2) * 2 + x % 2] *
                             *rt_at(in, n, i, y / 2, x / 2);
                    *rt_at(&out, n, o, y, x) = s;
                }
    return out;
}

static ref_t ref_concat(const ref_t *a, const ref_t *b)
{
    ref_t out = rt_new(a->n, a->c + b->c, a->h, a->w);
    size_t hw = (size_t)a->h * a->w;
    for (int n = 0; n < a->n; n++) {
        memcpy(rt_at(&out, n, 0, 0, 0), rt_at(a, n, 0, 0, 0), a->c * hw * sizeof(double));
        memcpy(rt_at(&out, n, a->c, 0, 0), rt_at(b, n, 0, 0, 0), b->c * hw * sizeof(double));
    }
    return out;
}

/* out: n x h x w. */
static void ref_forward(const ref_net *r, const float *in, int n, int h, int w, double *out)
{
    const tomo_unet_layout *lay = r->lay;
    int L = lay->levels;
    ref_t x = rt_new(n, r->in_c, h, w);
    for (size_t i = 0; i < (size_t)n * r->in_c * h * w; i++)
        x.d[i] = in[i];
    ref_t skips[TOMO_UNET_MAX_LEVELS + 1] = {{0}};
    for (int l = 0; l <= L; l++) {
        skips[l] = ref_block(r, &lay->down[l], &x);
        free(x.d);
        if (l < L)
            x = ref_pool(&skips[l]);
    }
    ref_t cur = skips[L];
    for (int l = L - 1; l >= 0; l--) {
        ref_t up = ref_up(r, &lay->up[l], &cur);
        ref_t cat = ref_concat(&skips[l], &up);
        free(cur.d);
        free(up.d);
        free(skips[l].d);
        cur = ref_block(r, &lay->dec[l], &cat);
        free(cat.d);
    }
    const double *hw_ = r->p + lay->head_weight;
    for (int i = 0; i < n; i++)
        for (int p = 0; p < h * w; p++) {
            double s = r->p[lay->head_bias];
            for (int c = 0; c < r->f; c++)
                s += hw_[c] * rt_at(&cur, i, c, 0, 0)[p];
            out[(size_t)i * h * w + p] = s;
        }
    free(cur.d);
}

static double ref_loss(const ref_net *r, const float *in, const float *target, int n, int h, int w)
{
    double *out = malloc((size_t)n * h * w * sizeof(double)), s = 0;
    ref_forward(r, in, n, h, w, out);
    for (size_t i = 0; i < (size_t)n * h * w; i++)
        s += (out[i] - target[i]) * (out[i] - target[i]);
    free(out);
    return s / ((double)n * h * w);
}

/* ---- Helpers ----------------------------------------------------------------------------------
 */

static tomo_unet *make_net(int in_c, int f, int levels, uint64_t seed, int perturb)
{
    tomo_unet_config cfg = {in_c, f, levels};
    tomo_unet *net = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_create(&cfg, &net, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        exit(1);
    }
    tomo_rng rng;
    tomo_rng_seed(&rng, seed);
    tomo_unet_init(net, &rng);
    if (!perturb)
        return net;
    /* Every parameter and statistic away from its initial value, so each one matters. */
    const tomo_unet_layout *lay = &net->layout;
    const tomo_unet_unit *units[4 * TOMO_UNET_MAX_LEVELS + 2];
    int nu = 0;
    for (int l = 0; l <= levels; l++) {
        units[nu++] = &lay->down[l].a;
        units[nu++] = &lay->down[l].b;
    }
    for (int l = 0; l < levels; l++) {
        units[nu++] = &lay->dec[l].a;
        units[nu++] = &lay->dec[l].b;
        for (int c = 0; c < lay->up[l].out_c; c++)
            net->params[lay->up[l].bias + c] = (float)(0.1 * tomo_rng_normal(&rng));
    }
    for (int i = 0; i < nu; i++)
        for (int c = 0; c < units[i]->out_c; c++) {
            net->params[units[i]->gamma + c] = (float)(1.0 + 0.3 * tomo_rng_normal(&rng));
            net->params[units[i]->beta + c] = (float)(0.2 * tomo_rng_normal(&rng));
            net->buffers[units[i]->mean + c] = (float)(0.3 * tomo_rng_normal(&rng));
            net->buffers[units[i]->var + c] = (float)(0.5 + tomo_rng_uniform(&rng));
        }
    net->params[lay->head_bias] = 0.05f;
    return net;
}

static float *random_floats(size_t n, uint64_t seed, double scale)
{
    tomo_rng rng;
    tomo_rng_seed(&rng, seed);
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(scale * tomo_rng_normal(&rng));
    return x;
}

static double *to_double(const float *x, size_t n)
{
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

static tomo_unet_exec *make_exec(tomo_unet *net, int threads, int batch, int h, int w, int training)
{
    tomo_unet_exec_config cfg = {TOMO_UNET_DEVICE_CPU, threads, batch, h, w, training, 1};
    tomo_unet_exec *ex = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_exec_create(net, &cfg, &ex, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        exit(1);
    }
    return ex;
}

static double max_abs(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* ---- Layout -----------------------------------------------------------------------------------
 */

static void test_layout(void)
{
    tomo_unet_config cfg;
    tomo_unet_config_default(&cfg);
    CHECK_INT(cfg.in_channels, 11);
    CHECK_INT(cfg.base_features, 32);
    CHECK_INT(cfg.levels, 4);
    tomo_unet_layout lay;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_layout_make(&cfg, &lay, &err), 0);

    /* Count from the architecture: block(a -> b) = 9ab + 9bb + 4b, up(a -> b) = 4ab + b. */
    size_t expect = 0, expect_buf = 0;
    int f = 32, c_in = 11;
    for (int l = 0; l <= 4; l++) {
        size_t a = l ? (size_t)f << (l - 1) : (size_t)c_in, b = (size_t)f << l;
        expect += 9 * a * b + 9 * b * b + 4 * b;
        expect_buf += 4 * b;
    }
    for (int l = 0; l < 4; l++) {
        size_t b = (size_t)f << l;
        expect += 4 * (2 * b) * b + b;                 /* up[l] */
        expect += 9 * (2 * b) * b + 9 * b * b + 4 * b; /* dec[l] */
        expect_buf += 4 * b;
    }
    expect += (size_t)f + 1;
    CHECK_INT(lay.n_params, expect);
    CHECK_INT(lay.n_params, 7765345); /* the "7.8 M" of unet.h */
    CHECK_INT(lay.n_buffers, expect_buf);

    /* Offsets: contiguous, in execution order. */
    size_t at = 0, bat = 0;
#define UNIT(u, ci, co)                                                                            \
    do {                                                                                           \
        CHECK_INT((u).in_c, ci);                                                                   \
        CHECK_INT((u).out_c, co);                                                                  \
        CHECK_INT((u).weight, at);                                                                 \
        at += (size_t)(co) * (ci)*9;                                                               \
        CHECK_INT((u).gamma, at);                                                                  \
        at += (co);                                                                                \
        CHECK_INT((u).beta, at);                                                                   \
        at += (co);                                                                                \
        CHECK_INT((u).mean, bat);                                                                  \
        bat += (co);                                                                               \
        CHECK_INT((u).var, bat);                                                                   \
        bat += (co);                                                                               \
    } while (0)
    for (int l = 0; l <= 4; l++) {
        int a = l ? f << (l - 1) : c_in, b = f << l;
        UNIT(lay.down[l].a, a, b);
        UNIT(lay.down[l].b, b, b);
    }
    for (int l = 3; l >= 0; l--) {
        int b = f << l;
        CHECK_INT(lay.up[l].in_c, 2 * b);
        CHECK_INT(lay.up[l].out_c, b);
        CHECK_INT(lay.up[l].weight, at);
        at += (size_t)2 * b * b * 4;
        CHECK_INT(lay.up[l].bias, at);
        at += b;
        UNIT(lay.dec[l].a, 2 * b, b);
        UNIT(lay.dec[l].b, b, b);
    }
#undef UNIT
    CHECK_INT(lay.head_in, f);
    CHECK_INT(lay.head_weight, at);
    CHECK_INT(lay.head_bias, at + f);
    CHECK_INT(lay.n_params, at + f + 1);
    CHECK_INT(lay.n_buffers, bat);
}

/* ---- Forward against the transcription ---------------------------------------------------------
 */

enum { T_C = 3, T_F = 4, T_L = 2, T_N = 2, T_H = 16, T_W = 16 };

static void compare_forward(int training, int h, int w, int levels)
{
    tomo_unet *net = make_net(T_C, T_F, levels, 11, 1);
    size_t npix = (size_t)T_N * h * w;
    float *in = random_floats(npix * T_C, 12, 1.0);
    float *out = malloc(npix * sizeof(float));
    double *ref = malloc(npix * sizeof(double));
    double *p = to_double(net->params, net->layout.n_params);
    double *b = to_double(net->buffers, net->layout.n_buffers);
    double *rstats = calloc(net->layout.n_buffers, sizeof(double));
    float *stats = calloc(net->layout.n_buffers, sizeof(float));
    ref_net r = {&net->layout, T_C, T_F, p, b, training, rstats};
    ref_forward(&r, in, T_N, h, w, ref);

    tomo_unet_exec *ex = make_exec(net, 2, T_N, h, w, training);
    tomo_error err;
    tomo_error_clear(&err);
    if (training)
        CHECK_INT(tomo_unet_cpu_forward_train(ex, in, T_N, out, stats, &err), 0);
    else
        CHECK_INT(tomo_unet_forward(ex, in, T_N, out, &err), 0);
    double md = 0, scale = max_abs(ref, npix);
    for (size_t i = 0; i < npix; i++)
        md = fmax(md, fabs(out[i] - ref[i]));
    fprintf(stderr, "  %s %dx%d L=%d: max |out - ref| = %.3g (max |ref| %.3g)\n",
            training ? "training" : "inference", w, h, levels, md, scale);
    CHECK(scale > 0.1);
    CHECK(md <= 1e-5 * scale);
    if (training) {
        double sd = 0;
        for (size_t i = 0; i < net->layout.n_buffers; i++)
            sd = fmax(sd, fabs(stats[i] - rstats[i]) / (1.0 + fabs(rstats[i])));
        fprintf(stderr, "  batch statistics: max relative difference %.3g\n", sd);
        CHECK(sd <= 1e-5);
    }
    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(out);
    free(ref);
    free(p);
    free(b);
    free(rstats);
    free(stats);
}

static void test_forward_inference(void)
{
    compare_forward(0, T_H, T_W, T_L);
    compare_forward(0, 24, 40, 3); /* not square; 3x5 at the bottom */
}

static void test_forward_training(void)
{
    compare_forward(1, T_H, T_W, T_L);
    compare_forward(1, 24, 40, 3);
}

/* ---- Gradient against finite differences --------------------------------------------------------
 */

typedef struct kind {
    const char *name;
    size_t offset, count;
} kind;

static void test_gradient(void)
{
    tomo_unet *net = make_net(T_C, T_F, T_L, 21, 1);
    const tomo_unet_layout *lay = &net->layout;
    size_t npix = (size_t)T_N * T_H * T_W;
    float *in = random_floats(npix * T_C, 22, 1.0);
    float *target = random_floats(npix, 23, 0.5);
    float *grad = malloc(lay->n_params * sizeof(float));
    tomo_unet_exec *ex = make_exec(net, 2, T_N, T_H, T_W, 1);
    tomo_error err;
    tomo_error_clear(&err);
    double loss = 0;
    CHECK_INT(tomo_unet_gradient(ex, in, target, T_N, &loss, grad, &err), 0);

    double *p = to_double(net->params, lay->n_params);
    double *b = to_double(net->buffers, lay->n_buffers);
    ref_net r = {lay, T_C, T_F, p, b, 1, NULL};
    double ref = ref_loss(&r, in, target, T_N, T_H, T_W);
    fprintf(stderr, "  loss %.9g, transcription %.9g\n", loss, ref);
    CHECK(fabs(loss - ref) <= 1e-5 * ref);

    /* The loss alone, without the gradient, is the same number. */
    double loss2 = 0;
    CHECK_INT(tomo_unet_gradient(ex, in, target, T_N, &loss2, NULL, &err), 0);
    CHECK(loss2 == loss);

    kind kinds[64];
    int nk = 0;
#define KIND(n_, off, cnt)                                                                         \
    kinds[nk++] = (kind)                                                                           \
    {                                                                                              \
        n_, off, cnt                                                                               \
    }
    for (int l = 0; l <= T_L; l++) {
        const tomo_unet_block *bl = &lay->down[l];
        KIND("down.a.weight", bl->a.weight, (size_t)bl->a.out_c * bl->a.in_c * 9);
        KIND("down.a.gamma", bl->a.gamma, bl->a.out_c);
        KIND("down.a.beta", bl->a.beta, bl->a.out_c);
        KIND("down.b.weight", bl->b.weight, (size_t)bl->b.out_c * bl->b.in_c * 9);
        KIND("down.b.gamma", bl->b.gamma, bl->b.out_c);
        KIND("down.b.beta", bl->b.beta, bl->b.out_c);
    }
    for (int l = T_L - 1; l >= 0; l--) {
        KIND("up.weight", lay->up[l].weight, (size_t)lay->up[l].in_c * lay->up[l].out_c * 4);
        KIND("up.bias", lay->up[l].bias, lay->up[l].out_c);
        const tomo_unet_block *bl = &lay->dec[l];
        KIND("dec.a.weight", bl->a.weight, (size_t)bl->a.out_c * bl->a.in_c * 9);
        KIND("dec.a.gamma", bl->a.gamma, bl->a.out_c);
        KIND("dec.a.beta", bl->a.beta, bl->a.out_c);
        KIND("dec.b.weight", bl->b.weight, (size_t)bl->b.out_c * bl->b.in_c * 9);
        KIND("dec.b.gamma", bl->b.gamma, bl->b.out_c);
        KIND("dec.b.beta", bl->b.beta, bl->b.out_c);
    }
    KIND("head.weight", lay->head_weight, (size_t)T_F);
    KIND("head.bias", lay->head_bias, 1);
#undef KIND
    size_t covered = 0;
    for (int k = 0; k < nk; k++)
        covered += kinds[k].count;
    CHECK_INT(covered, lay->n_params);

    tomo_rng rng;
    tomo_rng_seed(&rng, 24);
    double worst = 0;
    int checked = 0;
    for (int k = 0; k < nk; k++) {
        double rms = 0;
        for (size_t i = 0; i < kinds[k].count; i++)
            rms += (double)grad[kinds[k].offset + i] * grad[kinds[k].offset + i];
        rms = sqrt(rms / kinds[k].count);
        CHECK(rms > 0);
        int samples = kinds[k].count < 5 ? (int)kinds[k].count : 5;
        for (int s = 0; s < samples; s++) {
            size_t i = kinds[k].offset +
                       (kinds[k].count <= 5 ? (size_t)s : tomo_rng_below(&rng, kinds[k].count));
            double keep = p[i], h = 1e-6 * fmax(1.0, fabs(keep));
            p[i] = keep + h;
            double lp = ref_loss(&r, in, target, T_N, T_H, T_W);
            p[i] = keep - h;
            double lm = ref_loss(&r, in, target, T_N, T_H, T_W);
            p[i] = keep;
            double fd = (lp - lm) / (2 * h);
            double e = fabs(grad[i] - fd) / (1e-4 * fabs(fd) + 1e-5 * rms);
            worst = fmax(worst, e);
            checked++;
            if (!(e <= 1.0))
                fprintf(stderr, "  %s[%zu]: gradient %.9g, finite difference %.9g\n", kinds[k].name,
                        i - kinds[k].offset, grad[i], fd);
            CHECK(e <= 1.0);
        }
    }
    fprintf(stderr, "  %d parameters of %d tensors: worst |g - fd| / bound = %.3g\n", checked, nk,
            worst);
    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(target);
    free(grad);
    free(p);
    free(b);
}

/* ---- BatchNorm: running statistics and inference --------------------------------------------- */

static void test_batchnorm_modes(void)
{
    tomo_unet *net = make_net(T_C, T_F, T_L, 31, 1);
    const tomo_unet_layout *lay = &net->layout;
    size_t npix = (size_t)T_N * T_H * T_W, nb = lay->n_buffers;
    float *in = random_floats(npix * T_C, 32, 1.0);
    float *target = random_floats(npix, 33, 0.5);
    float *stats = malloc(nb * sizeof(float)), *train_out = malloc(npix * sizeof(float));
    float *infer_out = malloc(npix * sizeof(float));
    float *before = malloc(nb * sizeof(float)), *params = malloc(lay->n_params * sizeof(float));
    memcpy(before, net->buffers, nb * sizeof(float));
    memcpy(params, net->params, lay->n_params * sizeof(float));
    tomo_unet_exec *ex = make_exec(net, 2, T_N, T_H, T_W, 1);
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_cpu_forward_train(ex, in, T_N, train_out, stats, &err), 0);

    /* lr 0: the running statistics move, the parameters do not. */
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    adam.lr = 0.0f;
    double loss;
    CHECK_INT(tomo_unet_train_step(ex, in, target, T_N, &adam, &loss, &err), 0);
    CHECK(memcmp(params, net->params, lay->n_params * sizeof(float)) == 0);
    CHECK_INT(net->adam_step, 1);
    double worst = 0;
    for (int l = 0; l <= T_L; l++)
        for (int pass = 0; pass < 2; pass++) {
            if (pass && l == T_L)
                break;
            const tomo_unet_block *bl = pass ? &lay->dec[l] : &lay->down[l];
            const tomo_unet_unit *units[2] = {&bl->a, &bl->b};
            double m = (double)T_N * (T_H >> l) * (T_W >> l);
            for (int u = 0; u < 2; u++)
                for (int c = 0; c < units[u]->out_c; c++) {
                    size_t im = units[u]->mean + c, iv = units[u]->var + c;
                    double em = 0.9 * before[im] + 0.1 * stats[im];
                    double ev = 0.9 * before[iv] + 0.1 * stats[iv] * m / (m - 1);
                    worst = fmax(worst, fabs(net->buffers[im] - em) / (1 + fabs(em)));
                    worst = fmax(worst, fabs(net->buffers[iv] - ev) / (1 + fabs(ev)));
                }
        }
    fprintf(stderr, "  running statistics: max relative error %.3g\n", worst);
    CHECK(worst <= 1e-6);

    /* Inference with the running statistics set to the batch's gives the training output. */
    memcpy(net->buffers, stats, nb * sizeof(float));
    CHECK_INT(tomo_unet_forward(ex, in, T_N, infer_out, &err), 0);
    double md = 0, scale = 0;
    for (size_t i = 0; i < npix; i++) {
        md = fmax(md, fabs(infer_out[i] - train_out[i]));
        scale = fmax(scale, fabs(train_out[i]));
    }
    fprintf(stderr, "  inference with batch statistics vs training: %.3g (max %.3g)\n", md, scale);
    CHECK(md <= 1e-5 * scale);
    /* ... and differs from it with other statistics. */
    memcpy(net->buffers, before, nb * sizeof(float));
    CHECK_INT(tomo_unet_forward(ex, in, T_N, infer_out, &err), 0);
    md = 0;
    for (size_t i = 0; i < npix; i++)
        md = fmax(md, fabs(infer_out[i] - train_out[i]));
    CHECK(md > 1e-2 * scale);

    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(target);
    free(stats);
    free(train_out);
    free(infer_out);
    free(before);
    free(params);
}

/* ---- Adam --------------------------------------------------------------------------------------
 */

static void test_adam(void)
{
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    CHECK_NEAR(adam.lr, 1e-3, 1e-10);
    CHECK_NEAR(adam.beta1, 0.9, 1e-7);
    CHECK_NEAR(adam.beta2, 0.999, 1e-7);
    CHECK_NEAR(adam.eps, 1e-8, 1e-15);
    float p[2] = {1.0f, -2.0f}, m[2] = {0}, v[2] = {0};
    const float g1[2] = {0.5f, -3.0f}, g2[2] = {-0.25f, 1.0f};
    tomo_adam_update(p, g1, m, v, 2, 1, &adam);
    tomo_adam_update(p, g2, m, v, 2, 2, &adam);
    for (int i = 0; i < 2; i++) {
        double mm = 0, vv = 0, pp = i ? -2.0 : 1.0;
        const float *gs[2] = {g1, g2};
        for (int t = 1; t <= 2; t++) {
            double g = gs[t - 1][i];
            mm = 0.9 * mm + 0.1 * g;
            vv = 0.999 * vv + 0.001 * g * g;
            pp -= 1e-3 * (mm / (1 - pow(0.9, t))) / (sqrt(vv / (1 - pow(0.999, t))) + 1e-8);
        }
        CHECK_NEAR(p[i], pp, 1e-6);
        CHECK_NEAR(m[i], mm, 1e-6);
        CHECK_NEAR(v[i], vv, 1e-6);
    }
}

/* ---- Reproducibility ---------------------------------------------------------------------------
 */

enum { R_C = 5, R_F = 8, R_L = 2, R_N = 3, R_H = 32, R_W = 48, R_STEPS = 3 };

/* Trains R_STEPS steps with `threads` threads; returns the network, losses and an output. */
static tomo_unet *train_run(int threads, uint64_t seed, double *losses, float *out)
{
    tomo_unet *net = make_net(R_C, R_F, R_L, seed, 0);
    size_t npix = (size_t)R_N * R_H * R_W;
    float *in = random_floats(npix * R_C, seed + 1, 1.0);
    float *target = random_floats(npix, seed + 2, 1.0);
    tomo_unet_exec *ex = make_exec(net, threads, R_N, R_H, R_W, 1);
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    tomo_error err;
    tomo_error_clear(&err);
    for (int s = 0; s < R_STEPS; s++)
        CHECK_INT(tomo_unet_train_step(ex, in, target, R_N, &adam, &losses[s], &err), 0);
    CHECK_INT(tomo_unet_forward(ex, in, R_N, out, &err), 0);
    tomo_unet_exec_destroy(ex);
    free(in);
    free(target);
    return net;
}

static void test_reproducible(void)
{
    size_t npix = (size_t)R_N * R_H * R_W;
    double l1[R_STEPS], l2[R_STEPS], l3[R_STEPS], l4[R_STEPS];
    float *o1 = malloc(npix * sizeof(float)), *o2 = malloc(npix * sizeof(float));
    float *o3 = malloc(npix * sizeof(float)), *o4 = malloc(npix * sizeof(float));
    tomo_unet *a = train_run(1, 41, l1, o1);
    tomo_unet *b = train_run(2, 41, l2, o2);
    tomo_unet *c = train_run(3, 41, l3, o3);
    tomo_unet *d = train_run(2, 42, l4, o4);
    size_t np = a->layout.n_params;
    for (int s = 0; s < R_STEPS; s++) {
        CHECK(l1[s] == l2[s]);
        CHECK(l1[s] == l3[s]);
        CHECK(l1[s] != l4[s]);
    }
    CHECK(l1[R_STEPS - 1] < l1[0]);
    CHECK(memcmp(a->params, b->params, np * sizeof(float)) == 0);
    CHECK(memcmp(a->params, c->params, np * sizeof(float)) == 0);
    CHECK(memcmp(a->adam_m, b->adam_m, np * sizeof(float)) == 0);
    CHECK(memcmp(a->adam_v, c->adam_v, np * sizeof(float)) == 0);
    CHECK(memcmp(a->buffers, b->buffers, a->layout.n_buffers * sizeof(float)) == 0);
    CHECK(memcmp(a->buffers, c->buffers, a->layout.n_buffers * sizeof(float)) == 0);
    CHECK(memcmp(o1, o2, npix * sizeof(float)) == 0);
    CHECK(memcmp(o1, o3, npix * sizeof(float)) == 0);
    CHECK(memcmp(o1, o4, npix * sizeof(float)) != 0);
    CHECK_INT(a->adam_step, R_STEPS);

    /* The same seed again: the same losses. */
    double l5[R_STEPS];
    tomo_unet *e = train_run(2, 41, l5, o4);
    for (int s = 0; s < R_STEPS; s++)
        CHECK(l5[s] == l1[s]);
    tomo_unet_destroy(a);
    tomo_unet_destroy(b);
    tomo_unet_destroy(c);
    tomo_unet_destroy(d);
    tomo_unet_destroy(e);
    free(o1);
    free(o2);
    free(o3);
    free(o4);
}

/* ---- Learning ----------------------------------------------------------------------------------
 */

static void test_overfit(void)
{
    /* Two noisy images whose target is the clean centre channel: a smooth pattern. */
    tomo_unet *net = make_net(T_C, T_F, T_L, 51, 0);
    size_t hw = (size_t)T_H * T_W;
    float *in = malloc(T_N * T_C * hw * sizeof(float)), *target = malloc(T_N * hw * sizeof(float));
    tomo_rng rng;
    tomo_rng_seed(&rng, 52);
    for (int n = 0; n < T_N; n++)
        for (int y = 0; y < T_H; y++)
            for (int x = 0; x < T_W; x++) {
                double t = sin(0.4 * x + 1.3 * n) * cos(0.3 * y) + (x > 8 ? 0.5 : -0.5);
                target[n * hw + y * T_W + x] = (float)t;
                for (int c = 0; c < T_C; c++)
                    in[(n * T_C + c) * hw + y * T_W + x] = (float)(t + 0.3 * tomo_rng_normal(&rng));
            }
    tomo_unet_exec *ex = make_exec(net, 0, T_N, T_H, T_W, 1);
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    adam.lr = 1e-2f;
    tomo_error err;
    tomo_error_clear(&err);
    double first = 0, last = 0;
    for (int s = 0; s < 150; s++) {
        double loss;
        CHECK_INT(tomo_unet_train_step(ex, in, target, T_N, &adam, &loss, &err), 0);
        if (s == 0)
            first = loss;
        last = loss;
    }
    fprintf(stderr, "  loss %.4g -> %.4g after 150 steps (%s)\n", first, last,
            tomo_unet_exec_backend(ex));
    CHECK(last < first / 100);
    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(target);
}

/* ---- Bad configurations ------------------------------------------------------------------------
 */

static void test_bad_config(void)
{
    tomo_error err;
    tomo_unet_layout lay;
    tomo_unet *net = NULL;
    const tomo_unet_config bad[] = {{0, 4, 2},   {65, 4, 2}, {3, 0, 2},
                                    {3, 257, 2}, {3, 4, 0},  {3, 4, TOMO_UNET_MAX_LEVELS + 1}};
    const char *words[] = {"channels", "channels", "features", "features", "levels", "levels"};
    for (int i = 0; i < 6; i++) {
        tomo_error_clear(&err);
        CHECK_INT(tomo_unet_layout_make(&bad[i], &lay, &err), -TOMO_E_INVALID);
        CHECK_CONTAINS(err.message, words[i]);
        tomo_error_clear(&err);
        CHECK_INT(tomo_unet_create(&bad[i], &net, &err), -TOMO_E_INVALID);
        CHECK(net == NULL);
    }

    net = make_net(T_C, T_F, T_L, 61, 0);
    tomo_unet_exec *ex = NULL;
    const tomo_unet_exec_config cfgs[] = {
        {TOMO_UNET_DEVICE_CPU, 1, 0, 16, 16, 0, 1},  /* batch 0 */
        {TOMO_UNET_DEVICE_CPU, 1, 1, 18, 16, 0, 1},  /* not a multiple of 4 */
        {TOMO_UNET_DEVICE_CPU, 1, 1, 16, 2, 0, 1},   /* too small */
        {TOMO_UNET_DEVICE_CPU, 1, 1, 0, 16, 0, 1},   /* empty */
        {TOMO_UNET_DEVICE_CPU, -1, 1, 16, 16, 0, 1}, /* threads */
        {-7, 1, 1, 16, 16, 0, 1},                    /* no such device */
    };
    const char *cwords[] = {"batch", "multiples", "multiples", "multiples", "threads", "device"};
    for (int i = 0; i < 6; i++) {
        tomo_error_clear(&err);
        CHECK_INT(tomo_unet_exec_create(net, &cfgs[i], &ex, &err), -TOMO_E_INVALID);
        CHECK(ex == NULL);
        CHECK_CONTAINS(err.message, cwords[i]);
    }
    /* Too much memory is an error, not a crash. */
    tomo_unet_exec_config huge = {TOMO_UNET_DEVICE_CPU, 1, 1 << 14, 4096, 4096, 1, 1};
    tomo_error_clear(&err);
    int rc = tomo_unet_exec_create(net, &huge, &ex, &err);
    CHECK(rc == -TOMO_E_INVALID || rc == -TOMO_E_NOMEM);
    CHECK(ex == NULL);
    /* 127 x 4096^2 pixels of a 64-feature network: 13 TB of activations. */
    tomo_unet *wide = make_net(3, 64, 2, 62, 0);
    huge.batch = 127;
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_exec_create(wide, &huge, &ex, &err), -TOMO_E_NOMEM);
    CHECK_CONTAINS(err.message, "out of memory");
    fprintf(stderr, "  %s\n", err.message);
    CHECK(ex == NULL);
    tomo_unet_destroy(wide);

    /* Calls that do not fit the executor. */
    ex = make_exec(net, 1, 2, 16, 16, 0);
    float *in = calloc(3 * T_C * 256, sizeof(float)), *out = calloc(3 * 256, sizeof(float));
    double loss;
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_forward(ex, in, 3, out, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "batch of 2");
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_forward(ex, in, 0, out, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_forward(ex, NULL, 1, out, &err), -TOMO_E_INVALID);
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_gradient(ex, in, out, 1, &loss, NULL, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "inference only");
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_train_step(ex, in, out, 1, &adam, &loss, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "inference only");
    CHECK_INT(tomo_unet_forward(ex, in, 2, out, &err), 0);
    CHECK_CONTAINS(tomo_unet_exec_backend(ex), "cpu");
    tomo_unet_exec_destroy(ex);

    /* BatchNorm cannot train on one value per channel: 1 image, 4x4 with 2 levels. */
    ex = make_exec(net, 1, 1, 4, 4, 1);
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_gradient(ex, in, out, 1, &loss, NULL, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "BatchNorm");
    tomo_error_clear(&err);
    CHECK_INT(tomo_unet_train_step(ex, in, out, 1, NULL, &loss, &err), -TOMO_E_INVALID);
    tomo_unet_exec_destroy(ex);
    tomo_unet_exec_destroy(NULL);
    free(in);
    free(out);
    tomo_unet_destroy(net);
}

TOMO_TEST_MAIN(test_layout, test_forward_inference, test_forward_training, test_gradient,
               test_batchnorm_modes, test_adam, test_reproducible, test_overfit, test_bad_config)
