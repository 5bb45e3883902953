/*
 * tomofs train: trains (or resumes training) the Noise2Inverse model of a scan.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../denoise/model.h"
#include "../denoise/train.h"
#include "cmd.h"
#include "options.h"
#include "progress.h"

static const char train_usage[] =
    "usage: tomofs train SCAN [-o OPTIONS] [--epochs N] [--resume] [OPTIONS]\n"
    "\n"
    "Trains the Noise2Inverse model that denoised/ serves: a U-Net learns to predict one\n"
    "split sub-reconstruction (every K-th projection, -o splits=K, default 2) from the mean of\n"
    "the others, on 11 adjacent slices. The splits are reconstructed with the parameters of\n"
    "rings-removed/ (slices/ with -o rings=none) and cached like any slice. A checkpoint is\n"
    "written after every epoch and on Ctrl-C or SIGTERM; --resume continues from it exactly.\n"
    "\n"
    "  --epochs N            epochs to reach (default 25)\n"
    "  --slices-per-epoch N  samples per epoch, each a random slice (default 200)\n"
    "  --batch N             samples per step (default 2)\n"
    "  --patch N             patch side in pixels (default 2216; clamped to the slice and\n"
    "                        rounded down to a multiple of 2^levels)\n"
    "  --lr X                Adam's learning rate (default 1e-3)\n"
    "  --seed N              seed of the weights and of every random draw (default 1)\n"
    "  --net C:F:L           input slices (odd), base features, levels (default 11:32:4)\n"
    "  --device D            where the network runs: auto, cpu or cuda:N (default auto)\n"
    "  --model FILE          the model file (default: in the cache folder, named by the scan\n"
    "                        and the reconstruction parameters, where mounts look for it)\n"
    "  --resume              continue the model's training where it stopped; the stored\n"
    "                        options are used (--epochs may raise the goal)\n"
    "  -h, --help            show this text\n"
    "\n"
    "The loss of every step goes to FILE.loss.csv and FILE.loss.png beside the model.\n"
    "\n";

#define PREFIX "tomofs train: "

static volatile sig_atomic_t stop_signal;

/* The first signal asks for a checkpoint; a second one ends the process at once. */
static void on_signal(int signo)
{
    if (stop_signal) {
        signal(signo, SIG_DFL);
        raise(signo);
        return;
    }
    stop_signal = signo;
    static const char msg[] = "\ntomofs: finishing this step and saving a checkpoint (again to "
                              "quit without saving)\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)ignored;
}

typedef struct volume_source {
    tomo_volume *vol;
} volume_source;

static int source_fetch(void *ctx, int split, int z, const float **pixels, void **handle,
                        tomo_error *err)
{
    volume_source *s = ctx;
    int v = tomo_volume_split_variant(s->vol, split);
    if (v < 0)
        return tomo_error_set(err, TOMO_E_INTERNAL, "no split %d", split);
    tomo_slice *slice;
    int rc = tomo_volume_fetch(s->vol, v, z, &slice, err);
    if (rc < 0)
        return rc;
    *pixels = slice->pixels;
    *handle = slice;
    return 0;
}

static void source_release(void *ctx, void *handle)
{
    (void)ctx;
    tomo_slice_unref(handle);
}

typedef struct train_ui {
    tomo_progress progress;
} train_ui;

/* Mean loss of a 1-based epoch, NaN without steps. */
static double epoch_mean(const tomo_model *model, int epoch)
{
    double sum = 0;
    size_t n = 0;
    for (size_t i = model->n_history; i > 0 && model->history[i - 1].epoch >= epoch; i--)
        if (model->history[i - 1].epoch == epoch) {
            sum += model->history[i - 1].loss;
            n++;
        }
    return n ? sum / (double)n : NAN;
}

/* Prints the command line again, shell-quoted where needed, with --resume added. */
static void print_resume_command(int argc, char **argv)
{
    fputs("tomofs: to continue: tomofs", stderr);
    int has_resume = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        has_resume |= strcmp(a, "--resume") == 0;
        int plain = *a != 0;
        for (const char *p = a; *p; p++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_/.:=,+-@%",
                        *p))
                plain = 0;
        if (plain) {
            fprintf(stderr, " %s", a);
            continue;
        }
        fputs(" '", stderr);
        for (const char *p = a; *p; p++)
            if (*p == '\'')
                fputs("'\\''", stderr);
            else
                fputc(*p, stderr);
        fputc('\'', stderr);
    }
    fprintf(stderr, "%s\n", has_resume ? "" : " --resume");
}

static void ui_step(void *ctx, const tomo_train_status *st)
{
    train_ui *ui = ctx;
    char extra[160];
    snprintf(extra, sizeof extra, "epoch %d/%d step %llu/%llu loss %.4g", st->epoch, st->epochs,
             (unsigned long long)st->step_in_epoch, (unsigned long long)st->steps_per_epoch,
             st->epoch_loss);
    tomo_progress_update(&ui->progress, (long)st->steps_this_run, extra);
}

static void ui_checkpoint(void *ctx, const tomo_model *model, const char *path)
{
    train_ui *ui = ctx;
    (void)path;
    if (model->step_in_epoch != 0 || model->n_history == 0)
        return; /* not at the end of an epoch: the stop message says what was saved */
    if (ui->progress.enabled)
        fputs("\r\033[K", stderr);
    fprintf(stderr, "tomofs: epoch %d/%d: mean loss %.5g, %.1f s, saved\n", model->epoch,
            model->options.epochs, epoch_mean(model, model->epoch), model->seconds);
    ui->progress.last_draw = 0;
}

static void ui_backend(void *ctx, const char *backend)
{
    (void)ctx;
    fprintf(stderr, "tomofs: the network runs on %s\n", backend);
}

/* Parses a positive integer option; -1 after a message. */
static int parse_positive(const char *name, const char *text, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > INT_MAX) {
        fprintf(stderr, PREFIX "%s %s: expected a positive integer\n", name, text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_device(const char *text, int *device)
{
    if (strcmp(text, "auto") == 0) {
        *device = TOMO_UNET_DEVICE_AUTO;
        return 0;
    }
    if (strcmp(text, "cpu") == 0) {
        *device = TOMO_UNET_DEVICE_CPU;
        return 0;
    }
    if (strncmp(text, "cuda:", 5) == 0) {
        char *end;
        long v = strtol(text + 5, &end, 10);
        if (end != text + 5 && !*end && v >= 0 && v < 1024) {
            *device = (int)v;
            return 0;
        }
    }
    if (strcmp(text, "cuda") == 0) {
        *device = 0;
        return 0;
    }
    fprintf(stderr, PREFIX "--device %s: expected auto, cpu or cuda:N\n", text);
    return -1;
}

static int parse_net(const char *text, tomo_unet_config *cfg)
{
    int c, f, l;
    char tail;
    if (sscanf(text, "%d:%d:%d%c", &c, &f, &l, &tail) != 3 || c < 1 || c % 2 == 0) {
        fprintf(stderr,
                PREFIX "--net %s: expected CHANNELS:FEATURES:LEVELS with an odd number of "
                       "channels, e.g. 11:32:4\n",
                text);
        return -1;
    }
    cfg->in_channels = c;
    cfg->base_features = f;
    cfg->levels = l;
    tomo_unet_layout lay;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_unet_layout_make(cfg, &lay, &err) < 0) {
        fprintf(stderr, PREFIX "--net %s: %s\n", text, err.message);
        return -1;
    }
    return 0;
}

/* Which options the command line gave, for checking them against a resumed model. */
typedef struct given {
    int epochs, slices, batch, patch, lr, seed, net;
} given;

/* With --resume: options that differ from the model's are refused (they would change it). */
static int check_resume_options(const tomo_model *m, const given *g, const tomo_train_options *o,
                                const tomo_unet_config *net, const char *path)
{
    const tomo_train_options *s = &m->options;
    const tomo_unet_config *sn = &m->net->config;
    char what[128] = "";
    if (g->slices && o->slices_per_epoch != s->slices_per_epoch)
        snprintf(what, sizeof what, "--slices-per-epoch %d", s->slices_per_epoch);
    else if (g->batch && o->batch != s->batch)
        snprintf(what, sizeof what, "--batch %d", s->batch);
    else if (g->patch && o->patch != s->patch)
        snprintf(what, sizeof what, "--patch %d", s->patch);
    else if (g->lr && o->adam.lr != s->adam.lr)
        snprintf(what, sizeof what, "--lr %g", (double)s->adam.lr);
    else if (g->seed && o->seed != s->seed)
        snprintf(what, sizeof what, "--seed %llu", (unsigned long long)s->seed);
    else if (g->net && (net->in_channels != sn->in_channels ||
                        net->base_features != sn->base_features || net->levels != sn->levels))
        snprintf(what, sizeof what, "--net %d:%d:%d", sn->in_channels, sn->base_features,
                 sn->levels);
    if (!what[0])
        return 0;
    fprintf(stderr,
            PREFIX "%s: the model was trained with %s; --resume continues with the stored "
                   "options (leave the option out, or train a new model with another --model)\n",
            path, what);
    return -1;
}

static void format_duration(double seconds, char *buf, size_t size)
{
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

int tomo_cmd_train(int argc, char **argv)
{
    tomo_volume_options vopts;
    tomo_volume_options_default(&vopts);
    tomo_train_options topts;
    tomo_train_options_default(&topts);
    tomo_unet_config net;
    tomo_unet_config_default(&net);
    given g = {0};
    int resume = 0, device = TOMO_UNET_DEVICE_AUTO;
    const char *model_arg = NULL;
    static const struct option long_opts[] = {{"help", no_argument, NULL, 'h'},
                                              {"epochs", required_argument, NULL, 'e'},
                                              {"slices-per-epoch", required_argument, NULL, 's'},
                                              {"batch", required_argument, NULL, 'b'},
                                              {"patch", required_argument, NULL, 'p'},
                                              {"lr", required_argument, NULL, 'l'},
                                              {"seed", required_argument, NULL, 'S'},
                                              {"net", required_argument, NULL, 'n'},
                                              {"device", required_argument, NULL, 'd'},
                                              {"model", required_argument, NULL, 'm'},
                                              {"resume", no_argument, NULL, 'r'},
                                              {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", long_opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'h':
            printf("%s%s", train_usage, tomo_options_help);
            return 0;
        case 'o':
            if (tomo_options_parse(optarg, &vopts, NULL, 0) < 0)
                return 2;
            break;
        case 'e':
            if (parse_positive("--epochs", optarg, &topts.epochs) < 0)
                return 2;
            g.epochs = 1;
            break;
        case 's':
            if (parse_positive("--slices-per-epoch", optarg, &topts.slices_per_epoch) < 0)
                return 2;
            g.slices = 1;
            break;
        case 'b':
            if (parse_positive("--batch", optarg, &topts.batch) < 0)
                return 2;
            g.batch = 1;
            break;
        case 'p':
            if (parse_positive("--patch", optarg, &topts.patch) < 0)
                return 2;
            g.patch = 1;
            break;
        case 'l': {
            errno = 0;
            double lr = strtod(optarg, &end);
            if (errno || end == optarg || *end || !(lr > 0) || lr > 1) {
                fprintf(stderr, PREFIX "--lr %s: expected a number in (0, 1]\n", optarg);
                return 2;
            }
            topts.adam.lr = (float)lr;
            g.lr = 1;
            break;
        }
        case 'S': {
            errno = 0;
            unsigned long long seed = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-') {
                fprintf(stderr, PREFIX "--seed %s: expected a non-negative integer\n", optarg);
                return 2;
            }
            topts.seed = seed;
            g.seed = 1;
            break;
        }
        case 'n':
            if (parse_net(optarg, &net) < 0)
                return 2;
            g.net = 1;
            break;
        case 'd':
            if (parse_device(optarg, &device) < 0)
                return 2;
            break;
        case 'm':
            model_arg = optarg;
            break;
        case 'r':
            resume = 1;
            break;
        default:
            fprintf(stderr, "%s", train_usage);
            return 2;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "%s", train_usage);
        return 2;
    }
    /* The volume serves nothing: it must not load the model being trained. */
    vopts.model_off = 1;

    int status = 1;
    tomo_model *model = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    char path[PATH_MAX];
    tomo_volume *vol = tomo_open_scan_argument(argv[optind], &vopts);
    if (!vol)
        return 1;
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];

    if (model_arg) {
        if (snprintf(path, sizeof path, "%s", model_arg) >= (int)sizeof path) {
            fprintf(stderr, PREFIX "--model: path too long\n");
            goto out;
        }
    } else {
        if (vol->opts.cache_off) {
            fprintf(stderr, PREFIX "no cache folder (-o cache=none): name the model file with "
                                   "--model FILE\n");
            status = 2;
            goto out;
        }
        if (tomo_model_default_path(vol->opts.cache_dir, vol->scan->fingerprint, base->name,
                                    base->key, path, sizeof path, &err) < 0 ||
            tomo_model_make_dir(vol->opts.cache_dir, &err) < 0) {
            fprintf(stderr, PREFIX "%s\n", err.message);
            goto out;
        }
    }

    if (resume) {
        if (tomo_model_load(path, &model, &err) < 0) {
            fprintf(stderr, PREFIX "%s%s\n", err.message,
                    err.code == TOMO_E_IO && access(path, F_OK) != 0
                        ? " (nothing to resume: train without --resume first)"
                        : "");
            goto out;
        }
        if (tomo_model_check_base(model, path, vol->scan->fingerprint, base->params_text, &err) <
            0) {
            fprintf(stderr, PREFIX "%s\n", err.message);
            goto out;
        }
        if (check_resume_options(model, &g, &topts, &net, path) < 0) {
            status = 2;
            goto out;
        }
        if (g.epochs)
            model->options.epochs = topts.epochs;
        if (model->split.k != vol->n_splits) {
            /* The model's split wins: reopen with it. */
            tomo_volume_close(vol);
            vopts.splits = model->split.k;
            vol = tomo_open_scan_argument(argv[optind], &vopts);
            if (!vol)
                goto out;
            base = &vol->variants[vol->base_variant];
        }
        if (model->epoch >= model->options.epochs) {
            fprintf(stderr,
                    "tomofs: %s: already trained %d epochs; --epochs N with N > %d trains on\n",
                    path, model->epoch, model->epoch);
            status = 0;
            goto out;
        }
    } else if (access(path, F_OK) == 0) {
        fprintf(stderr,
                PREFIX "%s: a model is already there; --resume continues its training, or remove "
                       "it (or choose another --model) to train a new one\n",
                path);
        status = 2;
        goto out;
    }

    if (tomo_volume_start(vol, &err) < 0) {
        fprintf(stderr, PREFIX "%s\n", err.message);
        goto out;
    }
    volume_source vs = {vol};
    tomo_train_source src = {base->size, vol->scan->rows, vol->n_splits,
                             &vs,        source_fetch,    source_release};

    if (!resume) {
        if (tomo_model_create(&net, &model, &err) < 0) {
            fprintf(stderr, PREFIX "%s\n", err.message);
            goto out;
        }
        model->split.k = vol->n_splits;
        model->options = topts;
        model->scan_fingerprint = vol->scan->fingerprint;
        snprintf(model->base_variant, sizeof model->base_variant, "%s", base->name);
        model->base_key = base->key;
        snprintf(model->base_params, sizeof model->base_params, "%s", base->params_text);
        fprintf(stderr, "tomofs: measuring the split reconstructions (%d splits)...\n",
                vol->n_splits);
        if (tomo_train_prepare(model, &src, &err) < 0) {
            fprintf(stderr, PREFIX "%s\n", err.message);
            goto out;
        }
    }

    const tomo_train_options *o = &model->options;
    uint64_t spe = tomo_train_steps_per_epoch(o);
    uint64_t steps_total = spe * (uint64_t)o->epochs;
    fprintf(stderr,
            "tomofs: %s: %s%d:%d:%d network (%zu parameters), %d splits, patch %d, batch %d, "
            "%llu steps per epoch, normalisation mean %.4g std %.4g\n",
            path, resume ? "resuming, " : "", model->net->config.in_channels,
            model->net->config.base_features, model->net->config.levels,
            model->net->layout.n_params, model->split.k, o->patch_used, o->batch,
            (unsigned long long)spe, model->mean, model->std);
    if (resume)
        fprintf(stderr, "tomofs: at epoch %d/%d, step %llu/%llu of the epoch\n", model->epoch + 1,
                o->epochs, (unsigned long long)model->step_in_epoch, (unsigned long long)spe);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    train_ui ui;
    memset(&ui, 0, sizeof ui);
    tomo_progress_start(&ui.progress, "train", (long)(steps_total - model->step));
    tomo_train_run_config rc = {0};
    rc.model_path = path;
    rc.device = device;
    rc.threads = vol->opts.threads;
    rc.stop = &stop_signal;
    rc.ctx = &ui;
    rc.on_step = ui_step;
    rc.on_checkpoint = ui_checkpoint;
    rc.on_backend = ui_backend;
    int r = tomo_train_run(model, &src, &rc, &err);
    if (ui.progress.enabled)
        fputs("\r\033[K", stderr);
    char csv[PATH_MAX], png[PATH_MAX], took[32];
    tomo_model_sibling_path(path, ".loss.csv", csv, sizeof csv, NULL);
    tomo_model_sibling_path(path, ".loss.png", png, sizeof png, NULL);
    format_duration(model->seconds, took, sizeof took);
    if (r == -TOMO_E_CANCELLED) {
        int sig = stop_signal ? stop_signal : SIGINT;
        fprintf(stderr,
                "tomofs: %s: stopped at epoch %d/%d, step %llu/%llu of the epoch; checkpoint "
                "saved to %s\n",
                sig == SIGTERM ? "SIGTERM" : "interrupted", model->epoch + 1, o->epochs,
                (unsigned long long)model->step_in_epoch, (unsigned long long)spe, path);
        print_resume_command(argc, argv);
        status = 128 + sig;
        goto out;
    }
    if (r < 0) {
        fprintf(stderr, PREFIX "%s\n", err.message);
        goto out;
    }
    fprintf(stderr,
            "tomofs: trained %d epochs (%llu steps, %s of training); last epoch's mean loss %.5g\n"
            "tomofs: model %s\ntomofs: loss history %s and %s\n",
            model->epoch, (unsigned long long)model->step, took, epoch_mean(model, model->epoch),
            path, csv, png);
    if (!model_arg)
        fprintf(stderr,
                "tomofs: a mount of %s with the same reconstruction options serves "
                "denoised/ with it\n",
                argv[optind]);
    status = 0;
out:
    tomo_model_free(model);
    tomo_volume_close(vol);
    return status;
}
