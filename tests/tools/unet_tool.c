/*
 * tests/tools/unet_tool.c - drives the U-Net's CPU backend from the integration tests, and
 * benchmarks it.
 *
 *   unet_tool dump DIR [--channels C] [--features F] [--levels L] [--batch N] [--height H]
 *                      [--width W] [--seed S] [--threads T]
 *       Makes a network (tomo_unet_init with seed S, then every gamma, beta, transposed-conv
 *       bias, running mean and variance and the head bias drawn away from their initial
 *       values so that each one matters), a random input, and writes, as raw float32:
 *         params.f32, buffers.f32   the flat arrays, in unet.h's layout
 *         input.f32                 N x C x H x W
 *         infer.f32                 tomo_unet_forward (running statistics), N x H x W
 *         train.f32, stats.f32      the training-mode forward and its batch means and biased
 *                                   variances (buffers' layout)
 *         running.f32               the running statistics after one train_step with lr 0
 *       and config.txt ("key value" lines: channels, features, levels, batch, height, width,
 *       n_params, n_buffers). Defaults: 3 channels, 4 features, 2 levels, 2 images of 16 x 16,
 *       seed 1, 1 thread.
 *
 *   unet_tool bench [--channels C] [--features F] [--levels L] [--batch N] [--size S]
 *                   [--threads T] [--repeat R] [--train]
 *       Times tomo_unet_forward on N images of S x S (default: the default network, 1 image
 *       of 512 x 512, every core, best of 3) and prints milliseconds per call and per image,
 *       the process's CPU time per image (all threads; other programs' load does not count in
 *       it) and its peak resident memory; with --train, times tomo_unet_train_step instead.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../common/rng.h"
#include "../../denoise/unet.h"
#include "../../denoise/unet_exec.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static int write_raw(const char *dir, const char *name, const float *data, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "unet_tool: %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

typedef struct options {
    tomo_unet_config net;
    int batch, height, width, threads, repeat, train;
    uint64_t seed;
} options;

static int parse_int(const char *s, int lo, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > 1 << 30) {
        fprintf(stderr, "unet_tool: '%s' is not a number >= %d\n", s, lo);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_options(int argc, char **argv, options *o)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int *target = NULL, lo = 1;
        if (strcmp(a, "--train") == 0) {
            o->train = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "unet_tool: unknown or incomplete argument '%s'\n", a);
            return -1;
        }
        if (strcmp(a, "--channels") == 0)
            target = &o->net.in_channels;
        else if (strcmp(a, "--features") == 0)
            target = &o->net.base_features;
        else if (strcmp(a, "--levels") == 0)
            target = &o->net.levels;
        else if (strcmp(a, "--batch") == 0)
            target = &o->batch;
        else if (strcmp(a, "--height") == 0)
            target = &o->height;
        else if (strcmp(a, "--width") == 0)
            target = &o->width;
        else if (strcmp(a, "--threads") == 0)
            target = &o->threads, lo = 0;
        else if (strcmp(a, "--repeat") == 0)
            target = &o->repeat;
        if (strcmp(a, "--size") == 0) {
            if (parse_int(argv[++i], 1, &o->height) < 0)
                return -1;
            o->width = o->height;
            continue;
        }
        if (strcmp(a, "--seed") == 0) {
            o->seed = strtoull(argv[++i], NULL, 10);
            continue;
        }
        if (!target) {
            fprintf(stderr, "unet_tool: unknown argument '%s'\n", a);
            return -1;
        }
        if (parse_int(argv[++i], lo, target) < 0)
            return -1;
    }
    return 0;
}

/* Every BatchNorm parameter and statistic, the up biases and the head bias away from init. */
static void perturb(tomo_unet *net, tomo_rng *rng)
{
    const tomo_unet_layout *lay = &net->layout;
    for (int pass = 0; pass < 2; pass++)
        for (int l = 0; l <= lay->levels; l++) {
            if (pass == 1 && l == lay->levels)
                break;
            const tomo_unet_block *b = pass ? &lay->dec[l] : &lay->down[l];
            const tomo_unet_unit *units[2] = {&b->a, &b->b};
            for (int u = 0; u < 2; u++)
                for (int c = 0; c < units[u]->out_c; c++) {
                    net->params[units[u]->gamma + c] = (float)(1 + 0.3 * tomo_rng_normal(rng));
                    net->params[units[u]->beta + c] = (float)(0.2 * tomo_rng_normal(rng));
                    net->buffers[units[u]->mean + c] = (float)(0.3 * tomo_rng_normal(rng));
                    net->buffers[units[u]->var + c] = (float)(0.5 + tomo_rng_uniform(rng));
                }
            if (pass == 1)
                for (int c = 0; c < lay->up[l].out_c; c++)
                    net->params[lay->up[l].bias + c] = (float)(0.1 * tomo_rng_normal(rng));
        }
    net->params[lay->head_bias] = 0.05f;
}

static int cmd_dump(const char *dir, options *o)
{
    tomo_error err;
    tomo_error_clear(&err);
    tomo_unet *net = NULL;
    tomo_unet_exec *ex = NULL;
    float *in = NULL, *out = NULL, *stats = NULL, *target = NULL;
    int status = 1;
    if (tomo_unet_create(&o->net, &net, &err) < 0)
        goto done;
    tomo_rng rng;
    tomo_rng_seed(&rng, o->seed);
    tomo_unet_init(net, &rng);
    perturb(net, &rng);
    tomo_unet_exec_config cfg = {
        TOMO_UNET_DEVICE_CPU, o->threads, o->batch, o->height, o->width, 1, 1};
    if (tomo_unet_exec_create(net, &cfg, &ex, &err) < 0)
        goto done;
    size_t hw = (size_t)o->height * o->width, npix = hw * o->batch;
    size_t nin = npix * o->net.in_channels, nb = net->layout.n_buffers;
    in = malloc(nin * sizeof(float));
    out = malloc(npix * sizeof(float));
    target = calloc(npix, sizeof(float));
    stats = malloc(nb * sizeof(float));
    if (!in || !out || !target || !stats) {
        fprintf(stderr, "unet_tool: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < nin; i++)
        in[i] = (float)tomo_rng_normal(&rng);

    char path[4096];
    snprintf(path, sizeof(path), "%s/config.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "unet_tool: %s: %s\n", path, strerror(errno));
        goto done;
    }
    fprintf(f, "channels %d\nfeatures %d\nlevels %d\nbatch %d\nheight %d\nwidth %d\n",
            o->net.in_channels, o->net.base_features, o->net.levels, o->batch, o->height, o->width);
    fprintf(f, "n_params %zu\nn_buffers %zu\n", net->layout.n_params, nb);
    fclose(f);
    if (write_raw(dir, "params.f32", net->params, net->layout.n_params) < 0 ||
        write_raw(dir, "buffers.f32", net->buffers, nb) < 0 ||
        write_raw(dir, "input.f32", in, nin) < 0)
        goto done;
    if (tomo_unet_forward(ex, in, o->batch, out, &err) < 0 ||
        write_raw(dir, "infer.f32", out, npix) < 0)
        goto done;
    if (tomo_unet_cpu_forward_train(ex, in, o->batch, out, stats, &err) < 0 ||
        write_raw(dir, "train.f32", out, npix) < 0 || write_raw(dir, "stats.f32", stats, nb) < 0)
        goto done;
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    adam.lr = 0.0f;
    double loss;
    if (tomo_unet_train_step(ex, in, target, o->batch, &adam, &loss, &err) < 0 ||
        write_raw(dir, "running.f32", net->buffers, nb) < 0)
        goto done;
    printf("backend: %s\n", tomo_unet_exec_backend(ex));
    status = 0;
done:
    if (err.code != TOMO_OK)
        fprintf(stderr, "unet_tool: %s\n", err.message);
    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(out);
    free(target);
    free(stats);
    return status;
}

static int cmd_bench(options *o)
{
    tomo_error err;
    tomo_error_clear(&err);
    tomo_unet *net = NULL;
    tomo_unet_exec *ex = NULL;
    float *in = NULL, *out = NULL;
    int status = 1;
    if (tomo_unet_create(&o->net, &net, &err) < 0)
        goto done;
    tomo_rng rng;
    tomo_rng_seed(&rng, o->seed);
    tomo_unet_init(net, &rng);
    tomo_unet_exec_config cfg = {
        TOMO_UNET_DEVICE_CPU, o->threads, o->batch, o->height, o->width, o->train, 1};
    double t0 = now();
    if (tomo_unet_exec_create(net, &cfg, &ex, &err) < 0)
        goto done;
    double t_create = now() - t0;
    size_t npix = (size_t)o->height * o->width * o->batch;
    in = malloc(npix * o->net.in_channels * sizeof(float));
    out = malloc(npix * sizeof(float));
    if (!in || !out) {
        fprintf(stderr, "unet_tool: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < npix * o->net.in_channels; i++)
        in[i] = (float)tomo_rng_normal(&rng);
    for (size_t i = 0; i < npix; i++)
        out[i] = in[i];
    tomo_adam_params adam;
    tomo_adam_params_default(&adam);
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < o->repeat; r++) {
        double loss, t = now(), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
        int rc = o->train ? tomo_unet_train_step(ex, in, out, o->batch, &adam, &loss, &err)
                          : tomo_unet_forward(ex, in, o->batch, out, &err);
        if (rc < 0)
            goto done;
        t = now() - t;
        c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
        best = t < best ? t : best;
        best_cpu = c < best_cpu ? c : best_cpu;
    }
    printf("network: %d channels, %d features, %d levels, %zu parameters\n", o->net.in_channels,
           o->net.base_features, o->net.levels, net->layout.n_params);
    printf("backend: %s; executor created in %.1f ms\n", tomo_unet_exec_backend(ex),
           1e3 * t_create);
    printf("%s of %d x %dx%d, best of %d: %.1f ms per call, %.1f ms per image; CPU time (all "
           "threads) %.1f ms per image\n",
           o->train ? "train_step" : "forward", o->batch, o->width, o->height, o->repeat,
           1e3 * best, 1e3 * best / o->batch, 1e3 * best_cpu / o->batch);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak resident memory of the process: %.0f MB\n", ru.ru_maxrss / 1024.0);
    status = 0;
done:
    if (err.code != TOMO_OK)
        fprintf(stderr, "unet_tool: %s\n", err.message);
    tomo_unet_exec_destroy(ex);
    tomo_unet_destroy(net);
    free(in);
    free(out);
    return status;
}

int main(int argc, char **argv)
{
    options o = {{3, 4, 2}, 2, 16, 16, 1, 3, 0, 1};
    if (argc >= 3 && strcmp(argv[1], "dump") == 0) {
        if (parse_options(argc - 3, argv + 3, &o) < 0)
            return 2;
        return cmd_dump(argv[2], &o);
    }
    if (argc >= 2 && strcmp(argv[1], "bench") == 0) {
        tomo_unet_config_default(&o.net);
        o.batch = 1;
        o.height = o.width = 512;
        o.threads = 0;
        if (parse_options(argc - 2, argv + 2, &o) < 0)
            return 2;
        return cmd_bench(&o);
    }
    fprintf(stderr, "usage: unet_tool dump DIR [--channels C] [--features F] [--levels L] "
                    "[--batch N] [--height H] [--width W] [--seed S] [--threads T]\n"
                    "       unet_tool bench [--channels C] [--features F] [--levels L] "
                    "[--batch N] [--size S] [--threads T] [--repeat R] [--train]\n");
    return 2;
}
