/*
 * tests/tools/n2i_tool.c - drives Noise2Inverse serving from the integration tests.
 *
 *   n2i_tool model SCAN OUT [--features F] [--levels L] [--channels C] [--splits K]
 *                  [--seed S] [--mean M] [--std D] [-o OPTIONS]
 *       Writes a model with a random network (He weights, then random biases, BatchNorm
 *       scales, shifts and running statistics, so every part of the network matters) for
 *       SCAN opened with OPTIONS, as `tomofs train` would store one: trained on the base
 *       variant of that volume, with K splits. OUT "default" is the place a mount with the
 *       same options looks in. Also writes OUT.params.f32 and OUT.buffers.f32 (raw float32,
 *       denoise/unet.h's layout) for an independent forward pass. Prints the model's path.
 *   n2i_tool split SCAN OUTDIR Z0 Z1 [-o OPTIONS]
 *       Fetches slices Z0..Z1-1 of every split sub-reconstruction (tomo_volume_fetch) and
 *       writes OUTDIR/split_K_ZZZZZ.f32 (raw float32), plus OUTDIR/info.txt: side, splits and
 *       the parameter text of each split.
 *   n2i_tool denoise SCAN OUTDIR Z0 Z1 [--tile T] [--margin M] [-o OPTIONS]
 *       Denoises slices Z0..Z1-1 with the volume's model directly through denoise/serve.h
 *       (tiles of side T when given) and writes OUTDIR/denoised_ZZZZZ.f32, plus
 *       OUTDIR/backend.txt.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../denoise/model.h"
#include "../../denoise/serve.h"
#include "../../fs/volume.h"
#include "../../tools/options.h"

static int write_raw(const char *path, const float *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, sizeof *data, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "n2i_tool: %s: cannot write: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int usage(void)
{
    fprintf(stderr, "usage: n2i_tool model SCAN OUT [--features F] [--levels L] [--channels C] "
                    "[--splits K] [--seed S] [--mean M] [--std D] [-o OPTIONS]\n"
                    "       n2i_tool split SCAN OUTDIR Z0 Z1 [-o OPTIONS]\n"
                    "       n2i_tool denoise SCAN OUTDIR Z0 Z1 [--tile T] [--margin M] "
                    "[-o OPTIONS]\n");
    return 2;
}

typedef struct args {
    const char *options;
    int features, levels, channels, splits, tile, margin;
    uint64_t seed;
    double mean, std;
} args;

/* Parses the flags after the positional arguments; returns the index of the first of those. */
static int parse_flags(int argc, char **argv, args *a)
{
    static const struct option longopts[] = {
        {"features", required_argument, NULL, 'f'}, {"levels", required_argument, NULL, 'l'},
        {"channels", required_argument, NULL, 'c'}, {"splits", required_argument, NULL, 'k'},
        {"seed", required_argument, NULL, 's'},     {"mean", required_argument, NULL, 'm'},
        {"std", required_argument, NULL, 'd'},      {"tile", required_argument, NULL, 't'},
        {"margin", required_argument, NULL, 'g'},   {NULL, 0, NULL, 0},
    };
    *a = (args){NULL, 4, 2, 11, 2, 0, 0, 1, 0.0, 1.0};
    int c;
    while ((c = getopt_long(argc, argv, "o:", longopts, NULL)) != -1) {
        switch (c) {
        case 'o':
            a->options = optarg;
            break;
        case 'f':
            a->features = atoi(optarg);
            break;
        case 'l':
            a->levels = atoi(optarg);
            break;
        case 'c':
            a->channels = atoi(optarg);
            break;
        case 'k':
            a->splits = atoi(optarg);
            break;
        case 's':
            a->seed = strtoull(optarg, NULL, 10);
            break;
        case 'm':
            a->mean = atof(optarg);
            break;
        case 'd':
            a->std = atof(optarg);
            break;
        case 't':
            a->tile = atoi(optarg);
            break;
        case 'g':
            a->margin = atoi(optarg);
            break;
        default:
            return -1;
        }
    }
    return optind;
}

static tomo_volume *open_volume(const char *scan, const char *options, int model_off)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    if (options && tomo_options_parse(options, &opts, NULL, 0) < 0)
        return NULL;
    opts.model_off = model_off;
    return tomo_open_scan_argument(scan, &opts);
}

/* Every parameter random, so that a forward pass exercises all of them. */
static void randomise(tomo_unet *net, tomo_rng *rng)
{
    tomo_unet_init(net, rng);
    const tomo_unet_layout *L = &net->layout;
    float *p = net->params, *b = net->buffers;
    const tomo_unet_block *blocks[2 * TOMO_UNET_MAX_LEVELS + 1];
    int n = 0;
    for (int l = 0; l <= L->levels; l++)
        blocks[n++] = &L->down[l];
    for (int l = 0; l < L->levels; l++)
        blocks[n++] = &L->dec[l];
    for (int i = 0; i < n; i++) {
        const tomo_unet_unit *units[2] = {&blocks[i]->a, &blocks[i]->b};
        for (int u = 0; u < 2; u++)
            for (int c = 0; c < units[u]->out_c; c++) {
                p[units[u]->gamma + c] = (float)(0.5 + tomo_rng_uniform(rng));
                p[units[u]->beta + c] = (float)(0.2 * tomo_rng_normal(rng));
                b[units[u]->mean + c] = (float)(0.2 * tomo_rng_normal(rng));
                b[units[u]->var + c] = (float)(0.5 + 1.5 * tomo_rng_uniform(rng));
            }
    }
    for (int l = 0; l < L->levels; l++)
        for (int c = 0; c < L->up[l].out_c; c++)
            p[L->up[l].bias + c] = (float)(0.1 * tomo_rng_normal(rng));
    p[L->head_bias] = (float)(0.1 * tomo_rng_normal(rng));
}

static int cmd_model(int argc, char **argv)
{
    args a;
    int first = parse_flags(argc, argv, &a);
    if (first < 0 || argc - first != 2)
        return usage();
    tomo_volume *vol = open_volume(argv[first], a.options, 1);
    if (!vol)
        return 1;
    tomo_error err;
    tomo_error_clear(&err);
    int status = 1;
    tomo_model *model = NULL;
    tomo_unet_config config = {a.channels, a.features, a.levels};
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    const char *out = argv[first + 1];
    char path[4096];
    if (strcmp(out, "default") == 0) {
        snprintf(path, sizeof path, "%s", vol->model_path);
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", vol->opts.cache_dir);
        if (tomo_model_make_dir(dir, &err) < 0)
            goto fail;
    } else {
        snprintf(path, sizeof path, "%s", out);
    }
    if (tomo_model_create(&config, &model, &err) < 0)
        goto fail;
    tomo_rng rng;
    tomo_rng_seed(&rng, a.seed);
    randomise(model->net, &rng);
    model->split.k = a.splits;
    model->mean = a.mean;
    model->std = a.std;
    model->scan_fingerprint = vol->scan->fingerprint;
    snprintf(model->base_variant, sizeof model->base_variant, "%s", base->name);
    model->base_key = base->key;
    snprintf(model->base_params, sizeof model->base_params, "%s", base->params_text);
    model->slice_size = base->size;
    model->n_slices = vol->scan->rows;
    if (tomo_model_save(model, path, &err) < 0)
        goto fail;
    char raw[4200];
    snprintf(raw, sizeof raw, "%s.params.f32", path);
    if (write_raw(raw, model->net->params, model->net->layout.n_params) < 0)
        goto out;
    snprintf(raw, sizeof raw, "%s.buffers.f32", path);
    if (write_raw(raw, model->net->buffers, model->net->layout.n_buffers) < 0)
        goto out;
    printf("%s\n", path);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "n2i_tool: %s\n", err.message);
out:
    tomo_model_free(model);
    tomo_volume_close(vol);
    return status;
}

/*
 * The start of split and denoise: opens SCAN (argv[first]) with the model off for split,
 * checks the slice range Z0..Z1, that denoise has a model, makes OUTDIR and starts the volume.
 * Prints what failed and returns NULL.
 */
static tomo_volume *start_range(char **argv, int first, const args *a, int denoise, int *z0,
                                int *z1)
{
    tomo_volume *vol = open_volume(argv[first], a->options, !denoise);
    if (!vol)
        return NULL;
    const char *outdir = argv[first + 1];
    tomo_error err;
    tomo_error_clear(&err);
    *z0 = atoi(argv[first + 2]);
    *z1 = atoi(argv[first + 3]);
    if (*z0 < 0 || *z1 <= *z0 || *z1 > vol->scan->rows)
        fprintf(stderr, "n2i_tool: slices %d..%d outside 0..%d\n", *z0, *z1, vol->scan->rows);
    else if (denoise && !vol->denoiser)
        fprintf(stderr, "n2i_tool: no model at %s\n", vol->model_path);
    else if (mkdir(outdir, 0755) < 0 && errno != EEXIST)
        fprintf(stderr, "n2i_tool: %s: %s\n", outdir, strerror(errno));
    else if (tomo_volume_start(vol, &err) < 0)
        fprintf(stderr, "n2i_tool: %s\n", err.message);
    else
        return vol;
    tomo_volume_close(vol);
    return NULL;
}

static int cmd_split(int argc, char **argv)
{
    args a;
    int first = parse_flags(argc, argv, &a);
    if (first < 0 || argc - first != 4)
        return usage();
    int z0, z1, status = 1;
    tomo_volume *vol = start_range(argv, first, &a, 0, &z0, &z1);
    if (!vol)
        return 1;
    const char *outdir = argv[first + 1];
    tomo_error err;
    tomo_error_clear(&err);
    char path[4200];
    snprintf(path, sizeof path, "%s/info.txt", outdir);
    FILE *info = fopen(path, "w");
    if (!info)
        goto out;
    fprintf(info, "size %d\nsplits %d\n", vol->variants[vol->split_variant0].size, vol->n_splits);
    for (int k = 0; k < vol->n_splits; k++)
        fprintf(info, "split %d %s\n", k,
                vol->variants[tomo_volume_split_variant(vol, k)].params_text);
    fclose(info);
    for (int k = 0; k < vol->n_splits; k++)
        for (int z = z0; z < z1; z++) {
            tomo_slice *slice;
            if (tomo_volume_fetch(vol, tomo_volume_split_variant(vol, k), z, &slice, &err) < 0)
                goto fail;
            snprintf(path, sizeof path, "%s/split_%d_%05d.f32", outdir, k, z);
            int rc = write_raw(path, slice->pixels, (size_t)slice->size * slice->size);
            tomo_slice_unref(slice);
            if (rc < 0)
                goto out;
        }
    status = 0;
    goto out;
fail:
    fprintf(stderr, "n2i_tool: %s\n", err.message);
out:
    tomo_volume_close(vol);
    return status;
}

static int cmd_denoise(int argc, char **argv)
{
    args a;
    int first = parse_flags(argc, argv, &a);
    if (first < 0 || argc - first != 4)
        return usage();
    int z0, z1, status = 1;
    tomo_volume *vol = start_range(argv, first, &a, 1, &z0, &z1);
    if (!vol)
        return 1;
    const char *outdir = argv[first + 1];
    tomo_error err;
    tomo_error_clear(&err);
    tomo_n2i *n2i = NULL;
    float *out = NULL;
    /* the model is the volume's; the denoiser of the mount is not used */
    tomo_model *model = NULL;
    if (tomo_model_load(vol->model_path, &model, &err) < 0)
        goto fail;
    tomo_n2i_config cfg;
    tomo_n2i_config_default(&cfg);
    cfg.device = TOMO_UNET_DEVICE_CPU;
    cfg.tile = a.tile;
    cfg.margin = a.margin;
    int size = vol->variants[vol->base_variant].size;
    if (tomo_n2i_create(model, size, &cfg, &n2i, &err) < 0) {
        tomo_model_free(model);
        goto fail;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/backend.txt", outdir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "%s\n", tomo_n2i_backend(n2i));
        fclose(f);
    }
    int K = model->split.k, C = 2 * model->split.context + 1;
    tomo_slice **slices = calloc((size_t)K * C, sizeof *slices);
    const float **inputs = calloc((size_t)K * C, sizeof *inputs);
    out = malloc((size_t)size * size * sizeof *out);
    int failed = !slices || !inputs || !out;
    for (int z = z0; z < z1 && !failed; z++) {
        for (int k = 0; k < K && !failed; k++)
            for (int c = 0; c < C && !failed; c++) {
                int zz = tomo_model_reflect(z - model->split.context + c, vol->scan->rows);
                failed = tomo_volume_fetch(vol, tomo_volume_split_variant(vol, k), zz,
                                           &slices[k * C + c], &err) < 0;
                if (!failed)
                    inputs[k * C + c] = slices[k * C + c]->pixels;
            }
        if (!failed)
            failed = tomo_n2i_denoise_slice(n2i, inputs, NULL, out, &err) < 0;
        for (int i = 0; i < K * C; i++) {
            tomo_slice_unref(slices[i]);
            slices[i] = NULL;
        }
        snprintf(path, sizeof path, "%s/denoised_%05d.f32", outdir, z);
        if (!failed && write_raw(path, out, (size_t)size * size) < 0)
            failed = 1;
    }
    free(slices);
    free(inputs);
    tomo_n2i_destroy(n2i);
    tomo_model_free(model);
    if (failed) {
        if (err.code)
            fprintf(stderr, "n2i_tool: %s\n", err.message);
        goto out;
    }
    status = 0;
    goto out;
fail:
    fprintf(stderr, "n2i_tool: %s\n", err.message);
out:
    free(out);
    tomo_volume_close(vol);
    return status;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage();
    const char *cmd = argv[1];
    argv[1] = argv[0];
    if (strcmp(cmd, "model") == 0)
        return cmd_model(argc - 1, argv + 1);
    if (strcmp(cmd, "split") == 0)
        return cmd_split(argc - 1, argv + 1);
    if (strcmp(cmd, "denoise") == 0)
        return cmd_denoise(argc - 1, argv + 1);
    return usage();
}
