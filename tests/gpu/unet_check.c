/*
 * tests/gpu/unet_check.c - the denoising network's CUDA backend, run on a machine with a GPU.
 *
 *   unet_check torch DIR [cpu]
 *                            for three small networks, writes the parameters, inputs and the
 *                            CUDA results (exact and tf32: forward, loss and gradient on the
 *                            batch and on its first image, one and three Adam steps) to DIR,
 *                            where tests/gpu/unet_torch.py checks them against PyTorch in
 *                            float64; checks here what needs no reference (one image alone
 *                            against the batch, the inference-only executor, a training step
 *                            against the gradient plus tomo_adam_update on the host; exit 1 on
 *                            failure); with cpu, the CPU backend's results instead (both
 *                            "modes" exact)
 *   unet_check cpu           CUDA (exact) against the CPU backend on the same networks:
 *                            forward, loss and gradient, three training steps
 *   unet_check nomem         an executor that cannot fit fails cleanly with TOMO_E_NOMEM
 *   unet_check bench-infer SIZE [REPEAT]
 *                            the default network on one SIZE x SIZE image, exact and tf32:
 *                            create time, ms per forward (host to host), device memory
 *   unet_check bench-train SIZE BATCH [REPEAT]
 *                            ms per training step on BATCH patches of SIZE x SIZE, exact and
 *                            tf32, and device memory
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../denoise/unet.h"
#include "../../denoise/unet_exec.h"

/* Relative RMS differences allowed between this GPU's exact results and an executor of the
   same network elsewhere (the CPU backend, or another executor here). */
#define SAME_FORWARD  1e-5
#define SAME_GRADIENT 1e-4
#define TF32_FORWARD  3e-3
/* What differs where the branches may differ (near_ties): see unet_torch.py */
#define TIES_GRADIENT 3e-2
#define TIES_UPDATE   0.5
#define TIES_STATS    3e-3

typedef struct check_case {
    const char *name;
    int channels, features, levels;
    int batch, height, width;
    /* float64 puts values within float32's rounding of a ReLU's 0 or of a max-pool tie (as
       unet_torch.py counts them): two float32 implementations may take different branches
       there, and their gradients then differ by up to a few percent */
    int near_ties;
} check_case;

/* Small enough for float64 PyTorch and the CPU; "tiny" has a 1 x 3 bottom (odd pixel count). */
static const check_case cases[] = {
    {"small", 3, 4, 2, 2, 32, 48, 0},
    {"medium", 11, 16, 3, 2, 64, 96, 1},
    {"tiny", 5, 8, 4, 2, 16, 48, 0},
};
#define N_CASES (int)(sizeof cases / sizeof cases[0])

static int failures;

static void fail(const char *fmt, const char *a, double b, double c)
{
    printf("FAIL ");
    printf(fmt, a, b, c);
    printf("\n");
    failures++;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double rel_rms(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static float *alloc_floats(size_t n)
{
    float *p = malloc(n * sizeof(float));
    if (!p) {
        fprintf(stderr, "unet_check: out of memory for %zu floats\n", n);
        exit(2);
    }
    return p;
}

/* A network of the case's shape: He initialisation and running statistics away from 0 and 1,
   so that inference BatchNorm is no identity. */
static tomo_unet *make_net(const check_case *c, uint64_t seed)
{
    tomo_unet_config config = {c->channels, c->features, c->levels};
    tomo_unet *net;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_create(&config, &net, &err) < 0) {
        fprintf(stderr, "unet_check: %s\n", err.message);
        exit(2);
    }
    tomo_rng rng;
    tomo_rng_seed(&rng, seed);
    tomo_unet_init(net, &rng);
    const tomo_unet_layout *lay = &net->layout;
    for (size_t i = 0; i < lay->n_buffers; i++)
        net->buffers[i] = 0.0f;
    /* units in buffer order: mean [out], var [out] */
    for (size_t i = 0; i < lay->n_buffers;) {
        /* find the unit starting at i */
        int out_c = 0;
        for (int l = 0; l <= lay->levels && !out_c; l++) {
            if (lay->down[l].a.mean == i)
                out_c = lay->down[l].a.out_c;
            if (lay->down[l].b.mean == i)
                out_c = lay->down[l].b.out_c;
            if (l < lay->levels && lay->dec[l].a.mean == i)
                out_c = lay->dec[l].a.out_c;
            if (l < lay->levels && lay->dec[l].b.mean == i)
                out_c = lay->dec[l].b.out_c;
        }
        if (!out_c) {
            fprintf(stderr, "unet_check: buffer layout not understood at %zu\n", i);
            exit(2);
        }
        for (int k = 0; k < out_c; k++) {
            net->buffers[i + k] = (float)(0.2 * tomo_rng_normal(&rng));
            net->buffers[i + out_c + k] = (float)(0.6 + 0.8 * tomo_rng_uniform(&rng));
        }
        i += 2 * (size_t)out_c;
    }
    return net;
}

static tomo_unet *clone_net(const tomo_unet *src)
{
    tomo_unet *net;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_create(&src->config, &net, &err) < 0) {
        fprintf(stderr, "unet_check: %s\n", err.message);
        exit(2);
    }
    size_t np = src->layout.n_params, nb = src->layout.n_buffers;
    memcpy(net->params, src->params, np * sizeof(float));
    memcpy(net->buffers, src->buffers, nb * sizeof(float));
    memcpy(net->adam_m, src->adam_m, np * sizeof(float));
    memcpy(net->adam_v, src->adam_v, np * sizeof(float));
    net->adam_step = src->adam_step;
    return net;
}

static void fill_normal(float *p, size_t n, double scale, tomo_rng *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(scale * tomo_rng_normal(rng));
}

static tomo_unet_exec *make_exec(tomo_unet *net, int device, const check_case *c, int batch,
                                 int training, int exact)
{
    tomo_unet_exec_config ec = {0};
    ec.device = device;
    ec.threads = 0;
    ec.batch = batch;
    ec.height = c->height;
    ec.width = c->width;
    ec.training = training;
    ec.exact = exact;
    tomo_unet_exec *exec;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_exec_create(net, &ec, &exec, &err) < 0) {
        fprintf(stderr, "unet_check: %s: %s\n", c->name, err.message);
        return NULL;
    }
    return exec;
}

static int must(int rc, const tomo_error *err, const char *what)
{
    if (rc < 0) {
        printf("FAIL %s: %s\n", what, err->message);
        failures++;
    }
    return rc;
}

static int write_floats(const char *dir, const char *name, const char *suffix, const float *p,
                        size_t n)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%s.f32", dir, name, suffix);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "unet_check: %s: %s\n", path, strerror(errno));
        exit(2);
    }
    return 0;
}

/* The CUDA results of one case and precision. */
typedef struct results {
    float *out, *out_infer, *out1, *grad, *grad1, *params3, *buffers3, *buffers1;
    double loss, loss1, losses[3];
    uint64_t step3;
} results;

static void results_free(results *r)
{
    free(r->out);
    free(r->out_infer);
    free(r->out1);
    free(r->grad);
    free(r->grad1);
    free(r->params3);
    free(r->buffers3);
    free(r->buffers1);
}

/*
 * Runs one case on one device: forward (batch, first image alone, an inference-only
 * executor), loss and gradient (batch, first image), three train steps.
 */
static int run_case(const tomo_unet *base, int device, const check_case *c, int exact,
                    const float *in, const float *target, results *r)
{
    memset(r, 0, sizeof *r);
    size_t hw = (size_t)c->height * c->width, np = base->layout.n_params;
    size_t n_in = (size_t)c->channels * hw;
    r->out = alloc_floats(c->batch * hw);
    r->out_infer = alloc_floats(c->batch * hw);
    r->out1 = alloc_floats(hw);
    r->grad = alloc_floats(np);
    r->grad1 = alloc_floats(np);
    r->params3 = alloc_floats(np);
    r->buffers3 = alloc_floats(base->layout.n_buffers);
    r->buffers1 = alloc_floats(base->layout.n_buffers);
    tomo_error err;
    tomo_error_clear(&err);
    tomo_unet *net = clone_net(base);
    tomo_unet_exec *exec = make_exec(net, device, c, c->batch, 1, exact);
    if (!exec) {
        failures++;
        tomo_unet_destroy(net);
        return -1;
    }
    if (c == &cases[0])
        printf("backend: %s\n", tomo_unet_exec_backend(exec));
    int rc = 0;
    if (must(tomo_unet_forward(exec, in, c->batch, r->out, &err), &err, "forward") < 0 ||
        must(tomo_unet_forward(exec, in, 1, r->out1, &err), &err, "forward of one image") < 0 ||
        must(tomo_unet_gradient(exec, in, target, c->batch, &r->loss, r->grad, &err), &err,
             "gradient") < 0 ||
        must(tomo_unet_gradient(exec, in, target, 1, &r->loss1, r->grad1, &err), &err,
             "gradient of one image") < 0)
        rc = -1;
    (void)n_in;
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    for (int s = 0; s < 3 && rc == 0; s++) {
        if (must(tomo_unet_train_step(exec, in, target, c->batch, &adam, &r->losses[s], &err), &err,
                 "train step") < 0 ||
            (s == 0 && must(tomo_unet_exec_pull(exec, &err), &err, "pull") < 0))
            rc = -1;
        else if (s == 0)
            memcpy(r->buffers1, net->buffers, base->layout.n_buffers * sizeof(float));
    }
    if (rc == 0 && must(tomo_unet_exec_pull(exec, &err), &err, "pull") == 0) {
        memcpy(r->params3, net->params, np * sizeof(float));
        memcpy(r->buffers3, net->buffers, base->layout.n_buffers * sizeof(float));
        r->step3 = net->adam_step;
    }
    tomo_unet_exec_destroy(exec);
    tomo_unet_destroy(net);
    if (rc < 0)
        return rc;
    /* An inference-only executor (another memory plan) on the untouched network. */
    net = clone_net(base);
    exec = make_exec(net, device, c, c->batch, 0, exact);
    if (!exec) {
        failures++;
        rc = -1;
    } else {
        rc = must(tomo_unet_forward(exec, in, c->batch, r->out_infer, &err), &err,
                  "inference-only forward");
        tomo_unet_exec_destroy(exec);
    }
    tomo_unet_destroy(net);
    return rc;
}

/* Checks that need no reference: batch independence at inference, the two executors agree. */
static void self_checks(const check_case *c, const char *mode, const results *r, double tol)
{
    size_t hw = (size_t)c->height * c->width;
    char what[128];
    double e = rel_rms(r->out1, r->out, hw);
    snprintf(what, sizeof what, "%s %s", c->name, mode);
    printf("%-14s first image alone vs in the batch: %.2e   inference-only executor: %.2e\n", what,
           e, rel_rms(r->out_infer, r->out, c->batch * hw));
    if (!(e <= tol))
        fail("%s: forward of one image differs by %.2e (limit %.0e)", what, e, tol);
    e = rel_rms(r->out_infer, r->out, c->batch * hw);
    if (!(e <= tol))
        fail("%s: inference-only executor differs by %.2e (limit %.0e)", what, e, tol);
    if (r->step3 != 3)
        fail("%s: adam_step %.0f after three steps (%.0f expected)", what, (double)r->step3, 3);
    int finite = isfinite(r->loss) && isfinite(r->loss1);
    for (int s = 0; s < 3; s++)
        finite = finite && isfinite(r->losses[s]);
    if (!finite)
        fail("%s: a loss is not finite (%g, %g)", what, r->loss, r->loss1);
}

/*
 * One training step against its definition. Adam's update of the parameters must be
 * tomo_adam_update's formula to the bit, given the moments the step left; the moments must be
 * those of the gradient that tomo_unet_gradient() returns, to the precision two gradients of
 * the same executor agree to (some cuDNN algorithms add with atomics, in no fixed order).
 */
static void step_check(const tomo_unet *base, int device, const check_case *c, int exact,
                       const float *in, const float *target)
{
    size_t np = base->layout.n_params;
    tomo_unet *net = clone_net(base);
    tomo_unet_exec *exec = make_exec(net, device, c, c->batch, 1, exact);
    float *g = alloc_floats(np), *p = alloc_floats(np), *m = alloc_floats(np);
    float *v = alloc_floats(np), *du = alloc_floats(np), *hu = alloc_floats(np);
    tomo_error err;
    tomo_error_clear(&err);
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    double loss_g = 0, loss_s = 0;
    char what[96];
    snprintf(what, sizeof what, "%s %s", c->name, exact ? "exact" : "tf32");
    if (!exec) {
        failures++;
    } else if (must(tomo_unet_gradient(exec, in, target, c->batch, &loss_g, g, &err), &err,
                    "gradient") == 0) {
        memcpy(p, net->params, np * sizeof(float));
        memcpy(m, net->adam_m, np * sizeof(float));
        memcpy(v, net->adam_v, np * sizeof(float));
        tomo_adam_update(p, g, m, v, np, net->adam_step + 1, &adam); /* m and v, for the moments */
        if (must(tomo_unet_train_step(exec, in, target, c->batch, &adam, &loss_s, &err), &err,
                 "train step") == 0 &&
            must(tomo_unet_exec_pull(exec, &err), &err, "pull") == 0) {
            /* the update from the step's own moments, as tomo_adam_update computes it */
            float c1 = 1.0f - (float)pow(adam.beta1, 1.0), c2 = 1.0f - (float)pow(adam.beta2, 1.0);
            size_t differ = 0;
            for (size_t i = 0; i < np; i++) {
                float m_hat = net->adam_m[i] / c1, v_hat = net->adam_v[i] / c2;
                float expect = base->params[i] - adam.lr * m_hat / (sqrtf(v_hat) + adam.eps);
                differ += net->params[i] != expect;
            }
            double em = rel_rms(net->adam_m, m, np), ev = rel_rms(net->adam_v, v, np);
            double el = fabs(loss_s - loss_g) / loss_g, lim = exact ? 1e-5 : 1e-3;
            printf("%-14s train step: %zu of %zu parameters differ from tomo_adam_update's "
                   "formula; moments against the gradient's: m %.2e, v %.2e; loss %.2e "
                   "(limit %.0e)\n",
                   what, differ, np, em, ev, el, lim);
            if (differ || !(em <= lim && ev <= lim && el <= lim))
                fail("%s: train step is not gradient + Adam (%.0f parameters, %.2e)", what,
                     (double)differ, fmax(fmax(em, ev), el));
        }
    }
    tomo_unet_exec_destroy(exec);
    tomo_unet_destroy(net);
    free(g);
    free(p);
    free(m);
    free(v);
    free(du);
    free(hu);
}

static void inputs(const check_case *c, float **in, float **target)
{
    size_t hw = (size_t)c->height * c->width;
    tomo_rng rng;
    tomo_rng_seed(&rng, 1234);
    *in = alloc_floats((size_t)c->batch * c->channels * hw);
    *target = alloc_floats((size_t)c->batch * hw);
    fill_normal(*in, (size_t)c->batch * c->channels * hw, 1.0, &rng);
    fill_normal(*target, (size_t)c->batch * hw, 0.5, &rng);
}

static int torch_mode(const char *dir, int device)
{
    mkdir(dir, 0755);
    const char *modes[2] = {"exact", "tf32"};
    for (int k = 0; k < N_CASES; k++) {
        const check_case *c = &cases[k];
        tomo_unet *net = make_net(c, 100 + k);
        float *in, *target;
        inputs(c, &in, &target);
        size_t hw = (size_t)c->height * c->width, np = net->layout.n_params;
        size_t nb = net->layout.n_buffers;
        write_floats(dir, c->name, "_params", net->params, np);
        write_floats(dir, c->name, "_buffers", net->buffers, nb);
        write_floats(dir, c->name, "_in", in, (size_t)c->batch * c->channels * hw);
        write_floats(dir, c->name, "_target", target, (size_t)c->batch * hw);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s.json", dir, c->name);
        FILE *meta = fopen(path, "w");
        if (!meta) {
            fprintf(stderr, "unet_check: %s: %s\n", path, strerror(errno));
            return 2;
        }
        fprintf(meta,
                "{\"channels\": %d, \"features\": %d, \"levels\": %d, \"batch\": %d, "
                "\"height\": %d, \"width\": %d, \"n_params\": %zu, \"n_buffers\": %zu, "
                "\"near_ties\": %d",
                c->channels, c->features, c->levels, c->batch, c->height, c->width, np, nb,
                c->near_ties);
        for (int e = 0; e < 2; e++) {
            results r;
            if (run_case(net, device, c, e == 0, in, target, &r) == 0) {
                char suffix[64];
                const char *names[7] = {"_out",      "_grad",      "_grad1",   "_params3",
                                        "_buffers3", "_out_infer", "_buffers1"};
                const float *data[7] = {r.out,      r.grad,      r.grad1,   r.params3,
                                        r.buffers3, r.out_infer, r.buffers1};
                size_t sizes[7] = {c->batch * hw, np, np, np, nb, c->batch * hw, nb};
                for (int i = 0; i < 7; i++) {
                    snprintf(suffix, sizeof suffix, "_%s%s", modes[e], names[i]);
                    write_floats(dir, c->name, suffix, data[i], sizes[i]);
                }
                fprintf(meta,
                        ", \"%s\": {\"loss\": %.17g, \"loss1\": %.17g, \"losses\": [%.17g, "
                        "%.17g, %.17g]}",
                        modes[e], r.loss, r.loss1, r.losses[0], r.losses[1], r.losses[2]);
                self_checks(c, modes[e], &r, e == 0 ? SAME_FORWARD : TF32_FORWARD);
                if (device >= 0)
                    step_check(net, device, c, e == 0, in, target);
            }
            results_free(&r);
        }
        fprintf(meta, "}\n");
        fclose(meta);
        free(in);
        free(target);
        tomo_unet_destroy(net);
    }
    printf("%s\n", failures ? "unet torch-dump: FAILED" : "unet torch-dump: ok");
    return failures ? 1 : 0;
}

static void compare(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double e = rel_rms(got, ref, n);
    printf("  %-34s %.2e (limit %.0e)\n", what, e, tol);
    if (!(e <= tol))
        fail("%s: %.2e over %.0e", what, e, tol);
}

static int cpu_mode(void)
{
    for (int k = 0; k < N_CASES; k++) {
        const check_case *c = &cases[k];
        tomo_unet *net = make_net(c, 100 + k);
        float *in, *target;
        inputs(c, &in, &target);
        size_t hw = (size_t)c->height * c->width, np = net->layout.n_params;
        results g, h;
        int rc_cpu = run_case(net, TOMO_UNET_DEVICE_CPU, c, 1, in, target, &h);
        int rc_gpu = rc_cpu == 0 ? run_case(net, 0, c, 1, in, target, &g) : -1;
        if (rc_cpu == 0 && rc_gpu == 0) {
            printf("%s: CUDA exact against the CPU\n", c->name);
            compare("forward", g.out, h.out, c->batch * hw, SAME_FORWARD);
            compare("forward, first image alone", g.out1, h.out1, hw, SAME_FORWARD);
            compare("forward, inference-only executor", g.out_infer, h.out_infer, c->batch * hw,
                    SAME_FORWARD);
            double tg = c->near_ties ? TIES_GRADIENT : SAME_GRADIENT;
            compare("gradient", g.grad, h.grad, np, tg);
            compare("gradient, first image alone", g.grad1, h.grad1, np, tg);
            compare("one step: running statistics", g.buffers1, h.buffers1, net->layout.n_buffers,
                    SAME_FORWARD);
            float *du = alloc_floats(np), *hu = alloc_floats(np);
            for (size_t i = 0; i < np; i++) {
                du[i] = g.params3[i] - net->params[i];
                hu[i] = h.params3[i] - net->params[i];
            }
            compare("three Adam steps: the update", du, hu, np,
                    c->near_ties ? TIES_UPDATE : 30 * SAME_GRADIENT);
            compare("three steps: running statistics", g.buffers3, h.buffers3,
                    net->layout.n_buffers, c->near_ties ? TIES_STATS : SAME_FORWARD);
            free(du);
            free(hu);
            double el = fabs(g.loss - h.loss) / h.loss;
            printf("  %-34s %.2e (limit %.0e)\n", "loss", el, SAME_FORWARD);
            if (!(el <= SAME_FORWARD))
                fail("%s: loss differs by %.2e (limit %.0e)", c->name, el, SAME_FORWARD);
            double lim = c->near_ties ? 1e-3 : 10 * SAME_FORWARD;
            for (int s = 0; s < 3; s++) {
                el = fabs(g.losses[s] - h.losses[s]) / h.losses[s];
                if (!(el <= lim))
                    fail("%s: a step's loss differs by %.2e (limit %.0e)", c->name, el, lim);
            }
        }
        results_free(&g);
        results_free(&h);
        free(in);
        free(target);
        tomo_unet_destroy(net);
    }
    printf("%s\n", failures ? "unet cpu: FAILED" : "unet cpu: ok");
    return failures ? 1 : 0;
}

static int nomem_mode(void)
{
    tomo_unet_config config;
    tomo_unet_config_default(&config);
    tomo_unet *net;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_create(&config, &net, &err) < 0) {
        fprintf(stderr, "unet_check: %s\n", err.message);
        return 2;
    }
    /* Training on one 5760 x 5760 image (over 100 GB), then one 65536 x 65536 image whose
       tensors pass cuDNN's 2^31 limit. */
    struct {
        int batch, side, training;
    } tries[2] = {{1, 5760, 1}, {1, 65536, 0}};
    int bad = 0;
    for (int t = 0; t < 2; t++) {
        tomo_unet_exec_config ec = {0};
        ec.device = 0;
        ec.batch = tries[t].batch;
        ec.height = ec.width = tries[t].side;
        ec.training = tries[t].training;
        tomo_unet_exec *exec = NULL;
        tomo_error_clear(&err);
        int rc = tomo_unet_exec_create(net, &ec, &exec, &err);
        printf("%d x %d x %d (%s): rc %d (%s): %s\n", tries[t].batch, tries[t].side, tries[t].side,
               tries[t].training ? "training" : "inference", rc, tomo_error_name(-rc), err.message);
        if (rc != -TOMO_E_NOMEM || exec) {
            printf("FAIL expected TOMO_E_NOMEM\n");
            bad = 1;
        }
        tomo_unet_exec_destroy(exec);
    }
    /* The device still works afterwards. */
    static const check_case c = {"after", 11, 32, 4, 1, 64, 64, 0};
    tomo_unet_exec *exec = make_exec(net, 0, &c, 1, 0, 1);
    float *in = calloc(11 * 64 * 64, sizeof(float)), *out = alloc_floats(64 * 64);
    if (!exec || !in || tomo_unet_forward(exec, in, 1, out, &err) < 0) {
        printf("FAIL a small executor after the failures: %s\n", err.message);
        bad = 1;
    }
    tomo_unet_exec_destroy(exec);
    free(in);
    free(out);
    tomo_unet_destroy(net);
    printf("%s\n", bad ? "unet nomem: FAILED" : "unet nomem: ok");
    return bad;
}

/* Device memory in use (all processes), in GiB. */
static double used_gib(void)
{
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
        return NAN;
    return (double)(total_b - free_b) / (double)(1u << 30);
}

static void fill_cheap(float *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((seed >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
}

static int bench(int size, int batch, int training, int repeat)
{
    tomo_unet_config config;
    tomo_unet_config_default(&config);
    tomo_unet *net;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_create(&config, &net, &err) < 0) {
        fprintf(stderr, "unet_check: %s\n", err.message);
        return 2;
    }
    tomo_rng rng;
    tomo_rng_seed(&rng, 7);
    tomo_unet_init(net, &rng);
    size_t hw = (size_t)size * size, n_in = (size_t)batch * config.in_channels * hw;
    float *in = alloc_floats(n_in), *out = alloc_floats((size_t)batch * hw);
    fill_cheap(in, n_in, 1);
    fill_cheap(out, (size_t)batch * hw, 2);
    const char *search = getenv("TOMOFS_CUDNN_SEARCH");
    cudaFree(0);
    double base = used_gib();
    printf("%s: default network (11 channels, 32 features, 4 levels, %zu parameters), %d x %d "
           "x %d, algorithms by %s; device memory in use before: %.2f GiB\n",
           training ? "training step" : "inference", net->layout.n_params, batch, size, size,
           (search && strcmp(search, "find") == 0) ||
                   (training && !(search && strcmp(search, "heuristic") == 0))
               ? "timing (find)"
               : "heuristics",
           base);
    int rc = 0;
    for (int exact = 1; exact >= 0; exact--) {
        static check_case c;
        c.name = "bench";
        c.height = c.width = size;
        double t0 = now();
        tomo_unet_exec *exec = make_exec(net, 0, &c, batch, training, exact);
        double t1 = now();
        if (!exec) {
            rc = 1;
            continue;
        }
        double after_create = used_gib(), peak = after_create;
        tomo_adam_params adam;
        tomo_adam_params_default(&adam);
        double loss = 0, best = 1e30, sum = 0;
        for (int r = 0; r <= repeat; r++) {
            double s0 = now();
            int k = training ? tomo_unet_train_step(exec, in, out, batch, &adam, &loss, &err)
                             : tomo_unet_forward(exec, in, batch, out, &err);
            double s1 = now();
            if (k < 0) {
                printf("FAIL %s\n", err.message);
                rc = 1;
                break;
            }
            double u = used_gib();
            peak = u > peak ? u : peak;
            if (r == 0)
                continue; /* the first call warms up */
            best = (s1 - s0) < best ? (s1 - s0) : best;
            sum += s1 - s0;
        }
        printf("  %s: %-44s create %.2f s; %s %.1f ms (mean of %d), best %.1f ms; device "
               "memory %.2f GiB for the executor (%.2f GiB in use at peak)\n",
               exact ? "exact" : "tf32 ", tomo_unet_exec_backend(exec), t1 - t0,
               training ? "step" : "forward", 1e3 * sum / repeat, repeat, 1e3 * best, peak - base,
               peak);
        tomo_unet_exec_destroy(exec);
    }
    if (!training) {
        /* How much of a forward is the input's copy: pageable and pinned host memory. */
        float *d = NULL, *pinned = NULL;
        size_t bytes = n_in * sizeof(float);
        if (cudaMalloc((void **)&d, bytes) == cudaSuccess &&
            cudaMallocHost((void **)&pinned, bytes) == cudaSuccess) {
            memcpy(pinned, in, bytes);
            double best_pageable = 1e30, best_pinned = 1e30;
            for (int r = 0; r < 3; r++) {
                double s0 = now();
                cudaMemcpy(d, in, bytes, cudaMemcpyHostToDevice);
                double s1 = now();
                cudaMemcpy(d, pinned, bytes, cudaMemcpyHostToDevice);
                double s2 = now();
                best_pageable = s1 - s0 < best_pageable ? s1 - s0 : best_pageable;
                best_pinned = s2 - s1 < best_pinned ? s2 - s1 : best_pinned;
            }
            printf("  input copy (%.0f MB): pageable %.1f ms (%.1f GB/s), pinned %.1f ms "
                   "(%.1f GB/s)\n",
                   bytes / 1e6, 1e3 * best_pageable, bytes / best_pageable / 1e9, 1e3 * best_pinned,
                   bytes / best_pinned / 1e9);
        }
        cudaFree(d);
        cudaFreeHost(pinned);
    }
    free(in);
    free(out);
    tomo_unet_destroy(net);
    return rc;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "torch") == 0)
        return torch_mode(argv[2],
                          argc > 3 && strcmp(argv[3], "cpu") == 0 ? TOMO_UNET_DEVICE_CPU : 0);
    if (argc >= 2 && strcmp(argv[1], "cpu") == 0)
        return cpu_mode();
    if (argc >= 2 && strcmp(argv[1], "nomem") == 0)
        return nomem_mode();
    if (argc >= 3 && strcmp(argv[1], "bench-infer") == 0)
        return bench(atoi(argv[2]), 1, 0, argc > 3 ? atoi(argv[3]) : 5);
    if (argc >= 4 && strcmp(argv[1], "bench-train") == 0)
        return bench(atoi(argv[2]), atoi(argv[3]), 1, argc > 4 ? atoi(argv[4]) : 5);
    fprintf(stderr, "usage: unet_check torch DIR | cpu | nomem | bench-infer SIZE [REPEAT] | "
                    "bench-train SIZE BATCH [REPEAT]\n");
    return 2;
}
