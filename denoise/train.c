/*
 * denoise/train.c - the Noise2Inverse training loop, its checkpoints and its loss plots.
 */
#include "train.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/pool.h"
#include "png.h"

#define MAX_SPLITS 16 /* as model files allow */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t tomo_train_steps_per_epoch(const tomo_train_options *opts)
{
    uint64_t b = opts->batch > 0 ? (uint64_t)opts->batch : 1;
    uint64_t s = opts->slices_per_epoch > 0 ? (uint64_t)opts->slices_per_epoch : 1;
    return (s + b - 1) / b;
}

/* ---- normalisation ------------------------------------------------------------------------- */

#define MEASURE_SLICES 16

int tomo_train_measure(const tomo_train_source *src, double *mean, double *std, tomo_error *err)
{
    int n = src->n_slices < MEASURE_SLICES ? src->n_slices : MEASURE_SLICES;
    size_t pixels = (size_t)src->size * src->size;
    double sum = 0, sum2 = 0, count = 0;
    /* Pixels outside the reconstruction circle are exactly 0 and carry no information about
       the object: they are left out. */
    for (int j = 0; j < src->k; j++)
        for (int i = 0; i < n; i++) {
            int z = (int)(((double)i + 0.5) * src->n_slices / n);
            const float *px;
            void *handle;
            int rc = src->fetch(src->ctx, j, z, &px, &handle, err);
            if (rc < 0)
                return rc;
            double s = 0, s2 = 0, c = 0;
            for (size_t p = 0; p < pixels; p++) {
                double v = px[p];
                if (v == 0.0)
                    continue;
                s += v;
                s2 += v * v;
                c += 1;
            }
            src->release(src->ctx, handle);
            sum += s;
            sum2 += s2;
            count += c;
        }
    if (count == 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "the split reconstructions are zero everywhere: nothing to train on");
    double m = sum / count;
    double var = sum2 / count - m * m;
    if (!(var > 0) || !isfinite(var))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "the split reconstructions are constant (%g): nothing to train on",
                              m);
    *mean = m;
    *std = sqrt(var);
    return 0;
}

int tomo_train_prepare(tomo_model *model, const tomo_train_source *src, tomo_error *err)
{
    const tomo_unet_config *cfg = &model->net->config;
    int multiple = 1 << cfg->levels;
    if (src->k != model->split.k)
        return tomo_error_set(err, TOMO_E_INVALID, "the volume has %d splits, the model %d", src->k,
                              model->split.k);
    if (src->k < 2 || src->k > MAX_SPLITS)
        return tomo_error_set(err, TOMO_E_INVALID, "%d splits: Noise2Inverse takes 2 to %d", src->k,
                              MAX_SPLITS);
    if (src->n_slices < 1)
        return tomo_error_set(err, TOMO_E_INVALID, "the volume has no slices");
    if (src->size < multiple)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "slices of %d pixels are smaller than the network's %d (2^%d "
                              "levels); use fewer levels (--net)",
                              src->size, multiple, cfg->levels);
    tomo_train_options *o = &model->options;
    if (o->epochs < 1 || o->slices_per_epoch < 1 || o->batch < 1 || o->patch < 1 ||
        !(o->adam.lr > 0))
        return tomo_error_set(err, TOMO_E_INVALID, "training options out of range");
    int patch = o->patch < src->size ? o->patch : src->size;
    patch -= patch % multiple;
    if (patch < multiple)
        patch = multiple;
    o->patch_used = patch;
    model->slice_size = src->size;
    model->n_slices = src->n_slices;
    model->epoch = 0;
    model->step = 0;
    model->step_in_epoch = 0;
    model->seconds = 0;
    model->n_history = 0;
    tomo_rng_seed(&model->rng, o->seed);
    tomo_unet_init(model->net, &model->rng);
    return tomo_train_measure(src, &model->mean, &model->std, err);
}

/* ---- samples ------------------------------------------------------------------------------ */

typedef struct sample {
    int split; /* left out: the target */
    int z;
    int y0, x0;
    int dihedral;
} sample;

typedef struct plan {
    sample *samples; /* [batch] */
    int n;
    tomo_rng rng_after; /* the generator after drawing this plan */
} plan;

static void draw_plan(plan *p, tomo_rng *rng, uint64_t step_index, const tomo_model *m)
{
    int batch = m->options.batch, patch = m->options.patch_used, size = m->slice_size;
    for (int b = 0; b < batch; b++) {
        sample *s = &p->samples[b];
        uint64_t index = step_index * (uint64_t)batch + (uint64_t)b;
        s->split = (int)(index % (uint64_t)m->split.k);
        s->z = (int)tomo_rng_below(rng, (uint64_t)m->n_slices);
        s->y0 = (int)tomo_rng_below(rng, (uint64_t)(size - patch + 1));
        s->x0 = (int)tomo_rng_below(rng, (uint64_t)(size - patch + 1));
        s->dihedral = (int)tomo_rng_below(rng, 8);
    }
    p->n = batch;
    p->rng_after = *rng;
}

#define TILE 64

/*
 * One image of a batch: out (P x P) from `n` source slices, out[a][b] = ((sum over i of
 * src[i][y0 + u][x0 + v]) * scale - mean) * inv_std in double, where (u, v) is (a, b)
 * transposed if bit 2 of d is set, then u flipped if bit 1, v flipped if bit 0. The sum runs
 * in the order of src, starting from 0, as denoise/serve.c's does. Tiles keep a transposed
 * read within a small square of the source.
 */
static void cut(const float *const *src, int n, int size, const sample *s, int patch, double scale,
                double mean, double inv_std, float *out)
{
    /* The source offset is linear in (a, b): start + a * da + b * db. */
    int d = s->dihedral;
    ptrdiff_t row = size, last = patch - 1;
    ptrdiff_t start = (s->y0 + (d & 2 ? last : 0)) * row + s->x0 + (d & 1 ? last : 0);
    ptrdiff_t du = d & 2 ? -row : row, dv = d & 1 ? -1 : 1; /* steps of u and v */
    ptrdiff_t da = d & 4 ? dv : du, db = d & 4 ? du : dv;
    for (int a0 = 0; a0 < patch; a0 += TILE)
        for (int b0 = 0; b0 < patch; b0 += TILE) {
            int a1 = a0 + TILE < patch ? a0 + TILE : patch;
            int b1 = b0 + TILE < patch ? b0 + TILE : patch;
            for (int a = a0; a < a1; a++) {
                ptrdiff_t at = start + a * da + b0 * db;
                float *o = out + (size_t)a * patch;
                if (n == 1) {
                    const float *p = src[0];
                    for (int b = b0; b < b1; b++, at += db)
                        o[b] = (float)(((0.0 + p[at]) * scale - mean) * inv_std);
                    continue;
                }
                for (int b = b0; b < b1; b++, at += db) {
                    double sum = 0;
                    for (int i = 0; i < n; i++)
                        sum += src[i][at];
                    o[b] = (float)((sum * scale - mean) * inv_std);
                }
            }
        }
}

/* A batch being assembled: jobs batch x (1 + C), the target and then each input channel. */
typedef struct assembly {
    const tomo_train_source *src;
    const tomo_model *model;
    const plan *plan;
    float *in, *target;
    const volatile sig_atomic_t *stop;
    int *rcs;         /* [jobs] */
    tomo_error *errs; /* [jobs] */
} assembly;

static void assemble_job(void *arg, int job, int slot)
{
    (void)slot;
    assembly *as = arg;
    const tomo_model *m = as->model;
    const tomo_train_source *src = as->src;
    int patch = m->options.patch_used, channels = m->net->config.in_channels;
    int k = m->split.k;
    size_t area = (size_t)patch * patch;
    const sample *s = &as->plan->samples[job / (channels + 1)];
    int c = job % (channels + 1) - 1; /* -1: the target */
    int b = job / (channels + 1);
    const float *pixels[MAX_SPLITS];
    void *handles[MAX_SPLITS];
    int n = 0, rc = 0;
    tomo_error *err = &as->errs[job];
    int z = c < 0 ? s->z : tomo_model_reflect(s->z - m->split.context + c, src->n_slices);
    for (int j = 0; j < k && rc == 0; j++) {
        if (c < 0 ? j != s->split : j == s->split)
            continue;
        if (as->stop && *as->stop) {
            rc = tomo_error_set(err, TOMO_E_CANCELLED, "training interrupted");
            break;
        }
        rc = src->fetch(src->ctx, j, z, &pixels[n], &handles[n], err);
        if (rc == 0)
            n++;
    }
    if (rc == 0) {
        if (c < 0)
            cut(pixels, n, src->size, s, patch, 1.0, m->mean, 1.0 / m->std,
                as->target + (size_t)b * area);
        else
            cut(pixels, n, src->size, s, patch, 1.0 / (k - 1), m->mean, 1.0 / m->std,
                as->in + ((size_t)b * channels + c) * area);
    }
    for (int i = 0; i < n; i++)
        src->release(src->ctx, handles[i]);
    as->rcs[job] = rc;
}

/*
 * Fills in (batch x C x P x P) and target (batch x P x P) for a plan, computing as
 * denoise/serve.c does: ((sum over j != k of split j) / (K - 1) - mean) / std; on `pool`'s
 * threads when there is one. Jobs not yet started give up with TOMO_E_CANCELLED once *stop is
 * set (stop may be NULL): a slice not yet reconstructed can take long, and the batch would not
 * be trained on anyway. The first failing job's error is returned.
 */
static int assemble(const tomo_train_source *src, const tomo_model *m, const plan *p, float *in,
                    float *target, tomo_pool *pool, const volatile sig_atomic_t *stop,
                    tomo_error *err)
{
    int jobs = p->n * (m->net->config.in_channels + 1);
    assembly as = {src,
                   m,
                   p,
                   in,
                   target,
                   stop,
                   calloc((size_t)jobs, sizeof(int)),
                   calloc((size_t)jobs, sizeof(tomo_error))};
    if (!as.rcs || !as.errs) {
        free(as.rcs);
        free(as.errs);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for a batch");
    }
    if (pool)
        tomo_pool_run(pool, jobs, assemble_job, &as);
    else
        for (int j = 0; j < jobs; j++)
            assemble_job(&as, j, 0);
    int rc = 0;
    /* A real failure is reported before a cancellation. */
    for (int j = 0; j < jobs && rc == 0; j++)
        if (as.rcs[j] < 0 && as.rcs[j] != -TOMO_E_CANCELLED)
            rc = tomo_error_set(err, as.errs[j].code, "%s", as.errs[j].message);
    for (int j = 0; j < jobs && rc == 0; j++)
        if (as.rcs[j] < 0)
            rc = tomo_error_set(err, as.errs[j].code, "%s", as.errs[j].message);
    free(as.rcs);
    free(as.errs);
    return rc;
}

int tomo_train_batch(const tomo_model *model, const tomo_train_source *src, uint64_t step_index,
                     tomo_rng *rng, float *in, float *target, tomo_error *err)
{
    int batch = model->options.batch, patch = model->options.patch_used;
    if (patch < 1 || patch > src->size || model->slice_size != src->size ||
        model->n_slices != src->n_slices || model->split.k != src->k)
        return tomo_error_set(err, TOMO_E_INVALID, "the model was not prepared for this volume");
    sample *samples = calloc((size_t)batch, sizeof *samples);
    if (!samples)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for a batch");
    plan p = {samples, 0, {{0}}};
    draw_plan(&p, rng, step_index, model);
    int rc = assemble(src, model, &p, in, target, NULL, NULL, err);
    free(samples);
    return rc;
}

/* ---- the prefetcher: assembles the next batch while the current one trains ---------------- */

typedef struct prefetcher {
    const tomo_train_source *src;
    const tomo_model *model;
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    const plan *job; /* to assemble; NULL when idle */
    float *in, *target;
    tomo_pool *pool; /* assembles a batch's images in parallel */
    const volatile sig_atomic_t *stop;
    int busy, quit;
    int rc;
    tomo_error err;
} prefetcher;

static void *prefetch_main(void *arg)
{
    prefetcher *pf = arg;
    pthread_mutex_lock(&pf->lock);
    for (;;) {
        while (!pf->job && !pf->quit)
            pthread_cond_wait(&pf->changed, &pf->lock);
        if (pf->quit)
            break;
        const plan *job = pf->job;
        pthread_mutex_unlock(&pf->lock);
        tomo_error err;
        tomo_error_clear(&err);
        int rc = assemble(pf->src, pf->model, job, pf->in, pf->target, pf->pool, pf->stop, &err);
        pthread_mutex_lock(&pf->lock);
        pf->rc = rc;
        pf->err = err;
        pf->job = NULL;
        pf->busy = 0;
        pthread_cond_broadcast(&pf->changed);
    }
    pthread_mutex_unlock(&pf->lock);
    return NULL;
}

static void prefetch_submit(prefetcher *pf, const plan *job, float *in, float *target)
{
    pthread_mutex_lock(&pf->lock);
    pf->job = job;
    pf->in = in;
    pf->target = target;
    pf->busy = 1;
    pf->rc = 0;
    pthread_cond_broadcast(&pf->changed);
    pthread_mutex_unlock(&pf->lock);
}

static int prefetch_wait(prefetcher *pf, tomo_error *err)
{
    pthread_mutex_lock(&pf->lock);
    while (pf->busy)
        pthread_cond_wait(&pf->changed, &pf->lock);
    int rc = pf->rc;
    if (rc < 0)
        tomo_error_set(err, pf->err.code, "%s", pf->err.message);
    pf->rc = 0;
    pthread_mutex_unlock(&pf->lock);
    return rc;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static int write_text_atomic(const char *path, const char *text, size_t len, tomo_error *err)
{
    char tmp[PATH_MAX + 32];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write: %s", tmp, strerror(errno));
    int bad = fwrite(text, 1, len, f) != len;
    int e = errno;
    if (fclose(f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    if (bad || rename(tmp, path) != 0) {
        if (!bad)
            e = errno;
        unlink(tmp);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write: %s", path, strerror(e));
    }
    return 0;
}

int tomo_train_write_csv(const tomo_model *model, const char *path, tomo_error *err)
{
    size_t cap = 64 + model->n_history * 80, len = 0;
    char *text = malloc(cap);
    if (!text)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    len += (size_t)snprintf(text, cap, "epoch,step,loss,seconds\n");
    for (size_t i = 0; i < model->n_history; i++) {
        const tomo_loss_record *r = &model->history[i];
        len += (size_t)snprintf(text + len, cap - len, "%d,%llu,%.9g,%.3f\n", r->epoch,
                                (unsigned long long)r->step, r->loss, r->seconds);
    }
    int rc = write_text_atomic(path, text, len, err);
    free(text);
    return rc;
}

static int checkpoint(tomo_model *model, tomo_unet_exec *exec, const tomo_train_run_config *cfg,
                      tomo_error *err)
{
    int rc = tomo_unet_exec_pull(exec, err);
    if (rc < 0)
        return rc;
    rc = tomo_model_save(model, cfg->model_path, err);
    if (rc < 0)
        return rc;
    char path[PATH_MAX];
    rc = tomo_model_sibling_path(cfg->model_path, ".loss.csv", path, sizeof path, err);
    if (rc == 0)
        rc = tomo_train_write_csv(model, path, err);
    if (rc == 0)
        rc = tomo_model_sibling_path(cfg->model_path, ".loss.png", path, sizeof path, err);
    if (rc == 0)
        rc = tomo_train_write_plot(model, path, err);
    if (rc == 0 && cfg->on_checkpoint)
        cfg->on_checkpoint(cfg->ctx, model, cfg->model_path);
    return rc;
}

/* ---- the loop ----------------------------------------------------------------------------- */

int tomo_train_run(tomo_model *model, const tomo_train_source *src,
                   const tomo_train_run_config *cfg, tomo_error *err)
{
    const tomo_train_options *o = &model->options;
    if (model->epoch >= o->epochs)
        return 0;
    if (src->k != model->split.k || src->size != model->slice_size ||
        src->n_slices != model->n_slices)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: the model was trained on %d slices of %d pixels in %d splits; "
                              "this volume has %d of %d in %d",
                              cfg->model_path, model->n_slices, model->slice_size, model->split.k,
                              src->n_slices, src->size, src->k);
    int patch = o->patch_used, batch = o->batch, channels = model->net->config.in_channels;
    if (patch < 1 || patch > src->size)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: patch %d does not fit slices of %d",
                              cfg->model_path, patch, src->size);
    uint64_t spe = tomo_train_steps_per_epoch(o);
    uint64_t steps_total = spe * (uint64_t)o->epochs;

    tomo_unet_exec_config ec = {0};
    ec.device = cfg->device;
    ec.threads = cfg->threads;
    ec.batch = batch;
    ec.height = patch;
    ec.width = patch;
    ec.training = 1;
    ec.exact = 0;
    tomo_unet_exec *exec;
    int rc = tomo_unet_exec_create(model->net, &ec, &exec, err);
    if (rc < 0)
        return rc;
    if (cfg->on_backend)
        cfg->on_backend(cfg->ctx, tomo_unet_exec_backend(exec));

    size_t in_len = (size_t)batch * channels * patch * patch;
    size_t target_len = (size_t)batch * patch * patch;
    float *in[2] = {malloc(in_len * sizeof(float)), malloc(in_len * sizeof(float))};
    float *target[2] = {malloc(target_len * sizeof(float)), malloc(target_len * sizeof(float))};
    sample *samples[2] = {calloc((size_t)batch, sizeof(sample)),
                          calloc((size_t)batch, sizeof(sample))};
    plan plans[2] = {{samples[0], 0, {{0}}}, {samples[1], 0, {{0}}}};
    prefetcher pf;
    memset(&pf, 0, sizeof pf);
    pf.src = src;
    pf.model = model;
    pf.stop = cfg->stop;
    /* Gathering threads: a GPU step is short, and a batch is (1 + C) x batch images cut
       from slices in memory; beyond 8 threads memory bandwidth is the limit. */
    int gather = cfg->threads > 0 ? cfg->threads : tomo_cpu_count();
    pf.pool = tomo_pool_create(gather < 8 ? gather : 8);
    pthread_mutex_init(&pf.lock, NULL);
    pthread_cond_init(&pf.changed, NULL);
    if (!in[0] || !in[1] || !target[0] || !target[1] || !samples[0] || !samples[1] || !pf.pool) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory for batches of %d x %d x %d x %d",
                            batch, channels, patch, patch);
        goto done;
    }
    if (pthread_create(&pf.thread, NULL, prefetch_main, &pf) != 0) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "cannot start the batch thread");
        goto done;
    }
    pf.running = 1;

    tomo_train_status st = {0};
    st.epochs = o->epochs;
    st.steps_per_epoch = spe;
    st.steps_total = steps_total;
    double epoch_sum = 0;
    for (size_t i = model->n_history; i > 0 && model->step_in_epoch > 0; i--) {
        if (model->history[i - 1].epoch != model->epoch + 1)
            break;
        epoch_sum += model->history[i - 1].loss;
    }
    double run_start = now_seconds(), seconds_before = model->seconds;
    tomo_rng draw = model->rng;
    int cur = 0;
    if (cfg->stop && *cfg->stop) {
        rc = checkpoint(model, exec, cfg, err);
        if (rc == 0)
            rc = tomo_error_set(err, TOMO_E_CANCELLED, "training interrupted");
        goto done;
    }
    draw_plan(&plans[cur], &draw, model->step, model);
    prefetch_submit(&pf, &plans[cur], in[cur], target[cur]);

    for (;;) {
        tomo_error batch_err;
        tomo_error_clear(&batch_err);
        rc = prefetch_wait(&pf, &batch_err);
        if (rc == -TOMO_E_CANCELLED) {
            /* Stopped while this batch was being gathered: save what the last step left. */
            rc = checkpoint(model, exec, cfg, err);
            if (rc == 0)
                rc = tomo_error_set(err, TOMO_E_CANCELLED, "training interrupted");
            goto done;
        }
        if (rc < 0) {
            rc = tomo_error_set(err, batch_err.code, "%s", batch_err.message);
            goto done;
        }
        /* Start on the next batch while this one trains. */
        if (model->step + 1 < steps_total) {
            draw_plan(&plans[!cur], &draw, model->step + 1, model);
            prefetch_submit(&pf, &plans[!cur], in[!cur], target[!cur]);
        }
        double loss = 0;
        rc = tomo_unet_train_step(exec, in[cur], target[cur], batch, &o->adam, &loss, err);
        if (rc < 0)
            goto done;
        if (!isfinite(loss)) {
            rc = tomo_error_set(err, TOMO_E_INVALID,
                                "training diverged at step %llu (loss %g); the last checkpoint "
                                "is kept; try a smaller --lr",
                                (unsigned long long)model->step + 1, loss);
            goto done;
        }
        model->rng = plans[cur].rng_after;
        model->step++;
        model->step_in_epoch++;
        model->seconds = seconds_before + (now_seconds() - run_start);
        tomo_loss_record rec = {model->epoch + 1, model->step, loss, model->seconds};
        rc = tomo_model_add_loss(model, &rec, err);
        if (rc < 0)
            goto done;
        epoch_sum += loss;
        st.epoch = model->epoch + 1;
        st.step_in_epoch = model->step_in_epoch;
        st.step = model->step;
        st.steps_this_run++;
        st.loss = loss;
        st.epoch_loss = epoch_sum / (double)model->step_in_epoch;
        if (cfg->on_step)
            cfg->on_step(cfg->ctx, &st);
        int epoch_done = model->step_in_epoch >= spe;
        if (epoch_done) {
            model->epoch++;
            model->step_in_epoch = 0;
            epoch_sum = 0;
        }
        int stop = cfg->stop && *cfg->stop;
        if (epoch_done || stop) {
            /* The batch thread may go on meanwhile: it reads only fields that are fixed
               while training (options, split, normalisation, volume size). */
            rc = checkpoint(model, exec, cfg, err);
            if (rc < 0)
                goto done;
        }
        if (model->epoch >= o->epochs) {
            rc = 0;
            goto done;
        }
        if (stop) {
            rc = tomo_error_set(err, TOMO_E_CANCELLED, "training interrupted");
            goto done;
        }
        cur = !cur;
    }

done:
    if (pf.running) {
        tomo_error ignored;
        tomo_error_clear(&ignored);
        prefetch_wait(&pf, &ignored);
        pthread_mutex_lock(&pf.lock);
        pf.quit = 1;
        pthread_cond_broadcast(&pf.changed);
        pthread_mutex_unlock(&pf.lock);
        pthread_join(pf.thread, NULL);
    }
    pthread_mutex_destroy(&pf.lock);
    pthread_cond_destroy(&pf.changed);
    tomo_unet_exec_destroy(exec);
    free(in[0]);
    free(in[1]);
    free(target[0]);
    free(target[1]);
    free(samples[0]);
    free(samples[1]);
    tomo_pool_destroy(pf.pool);
    return rc;
}

/* ---- the loss plot ------------------------------------------------------------------------ */

/* A 5 x 7 font: seven rows of five bits, the top row first, the high bit on the left. */
typedef struct glyph {
    char c;
    unsigned char rows[7];
} glyph;

static const glyph font[] = {
    {'0', {0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e}},
    {'1', {0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e}},
    {'2', {0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f}},
    {'3', {0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e}},
    {'4', {0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02}},
    {'5', {0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e}},
    {'6', {0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e}},
    {'7', {0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e}},
    {'9', {0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c}},
    {',', {0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08}},
    {':', {0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00}},
    {'-', {0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'a', {0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f}},
    {'b', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e}},
    {'c', {0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e}},
    {'d', {0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f}},
    {'e', {0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e}},
    {'f', {0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08}},
    {'g', {0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e}},
    {'h', {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'i', {0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e}},
    {'j', {0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c}},
    {'k', {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12}},
    {'l', {0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e}},
    {'m', {0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11}},
    {'n', {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11}},
    {'o', {0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e}},
    {'p', {0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10}},
    {'q', {0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01}},
    {'r', {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10}},
    {'s', {0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e}},
    {'t', {0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06}},
    {'u', {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d}},
    {'v', {0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04}},
    {'w', {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a}},
    {'x', {0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11}},
    {'y', {0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e}},
    {'z', {0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f}},
};

typedef struct canvas {
    unsigned char *rgb;
    int w, h;
} canvas;

static void set_px(canvas *cv, int x, int y, const unsigned char c[3])
{
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h)
        return;
    memcpy(cv->rgb + ((size_t)y * cv->w + x) * 3, c, 3);
}

static void line(canvas *cv, int x0, int y0, int x1, int y1, const unsigned char c[3])
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        set_px(cv, x0, y0, c);
        if (x0 == x1 && y0 == y1)
            return;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

#define TEXT_SCALE 2

/* Draws text with its top left corner at (x, y); characters not in the font are blanks. */
static void text(canvas *cv, int x, int y, const char *s, const unsigned char c[3])
{
    for (; *s; s++, x += 6 * TEXT_SCALE) {
        const glyph *g = NULL;
        for (size_t i = 0; i < sizeof font / sizeof font[0]; i++)
            if (font[i].c == *s)
                g = &font[i];
        if (!g)
            continue;
        /* Descenders sit two rows below the baseline. */
        int drop = strchr("gjpqy", *s) ? 2 * TEXT_SCALE : 0;
        for (int r = 0; r < 7; r++)
            for (int b = 0; b < 5; b++)
                if (g->rows[r] & (0x10 >> b))
                    for (int dy = 0; dy < TEXT_SCALE; dy++)
                        for (int dx = 0; dx < TEXT_SCALE; dx++)
                            set_px(cv, x + b * TEXT_SCALE + dx, y + drop + r * TEXT_SCALE + dy, c);
    }
}

static int text_width(const char *s)
{
    return (int)strlen(s) * 6 * TEXT_SCALE;
}

int tomo_train_write_plot(const tomo_model *model, const char *path, tomo_error *err)
{
    enum { W = 900, H = 520, LEFT = 120, RIGHT = 24, TOP = 50, BOTTOM = 60 };
    static const unsigned char white[3] = {255, 255, 255}, black[3] = {0, 0, 0},
                               grey[3] = {175, 175, 175}, blue[3] = {31, 100, 180},
                               faint[3] = {232, 232, 232};
    canvas cv = {malloc((size_t)W * H * 3), W, H};
    if (!cv.rgb)
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory", path);
    memset(cv.rgb, white[0], (size_t)W * H * 3);
    int x_lo = LEFT, x_hi = W - RIGHT, y_top = TOP, y_bottom = H - BOTTOM;

    const tomo_loss_record *hist = model->history;
    size_t n = model->n_history;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (isfinite(hist[i].loss) && hist[i].loss > 0) {
            lo = fmin(lo, hist[i].loss);
            hi = fmax(hi, hist[i].loss);
        }
    text(&cv, x_lo, 14, "training loss (mean squared error, log scale)", black);
    if (!(lo <= hi)) {
        text(&cv, x_lo + 20, (y_top + y_bottom) / 2, "no steps yet", black);
    } else {
        double l0 = log10(lo), l1 = log10(hi);
        if (l1 - l0 < 0.1) {
            double mid = 0.5 * (l0 + l1);
            l0 = mid - 0.05;
            l1 = mid + 0.05;
        }
        double pad = 0.04 * (l1 - l0);
        l0 -= pad;
        l1 += pad;
        uint64_t s0 = hist[0].step, s1 = hist[n - 1].step;
#define PX(step)                                                                                   \
    (s1 > s0 ? x_lo + (int)lround((double)((step)-s0) * (x_hi - x_lo) / (double)(s1 - s0))         \
             : (x_lo + x_hi) / 2)
#define PY(loss) (y_bottom - (int)lround((log10(loss) - l0) * (y_bottom - y_top) / (l1 - l0)))

        /* Decades as faint lines with labels; the extremes labelled when fewer than two. */
        int decades = 0;
        for (int d = (int)ceil(l0); d <= (int)floor(l1); d++) {
            int y = PY(pow(10.0, d));
            line(&cv, x_lo, y, x_hi, y, faint);
            char label[32];
            snprintf(label, sizeof label, "1e%d", d);
            text(&cv, x_lo - 10 - text_width(label), y - 7, label, black);
            decades++;
        }
        if (decades < 2) {
            char label[32];
            snprintf(label, sizeof label, "%.3g", hi);
            text(&cv, x_lo - 10 - text_width(label), PY(hi) - 7, label, black);
            snprintf(label, sizeof label, "%.3g", lo);
            text(&cv, x_lo - 10 - text_width(label), PY(lo) - 7, label, black);
        }
        /* Every step, grey. */
        int px = -1, py = 0;
        for (size_t i = 0; i < n; i++) {
            if (!(isfinite(hist[i].loss) && hist[i].loss > 0))
                continue;
            int x = PX(hist[i].step), y = PY(hist[i].loss);
            if (px >= 0)
                line(&cv, px, py, x, y, grey);
            else
                set_px(&cv, x, y, grey);
            px = x;
            py = y;
        }
        /* Epoch means, blue, at each epoch's last step; epoch ends ticked on the axis. */
        px = -1;
        size_t start = 0;
        int epochs = 0;
        for (size_t i = 0; i < n; i++)
            if (i + 1 == n || hist[i + 1].epoch != hist[i].epoch)
                epochs++;
        for (size_t i = 0; i < n; i++) {
            if (i + 1 < n && hist[i + 1].epoch == hist[i].epoch)
                continue;
            double sum = 0;
            size_t count = 0;
            for (size_t j = start; j <= i; j++)
                if (isfinite(hist[j].loss) && hist[j].loss > 0) {
                    sum += hist[j].loss;
                    count++;
                }
            start = i + 1;
            int x = PX(hist[i].step);
            if (epochs <= 200)
                line(&cv, x, y_bottom, x, y_bottom + 5, black);
            if (!count)
                continue;
            int y = PY(sum / (double)count);
            if (px >= 0) {
                line(&cv, px, py, x, y, blue);
                line(&cv, px, py + 1, x, y + 1, blue);
            }
            for (int dy = -2; dy <= 2; dy++)
                for (int dx = -2; dx <= 2; dx++)
                    set_px(&cv, x + dx, y + dy, blue);
            px = x;
            py = y;
        }
        char label[64];
        snprintf(label, sizeof label, "%llu", (unsigned long long)s0);
        text(&cv, x_lo, y_bottom + 12, label, black);
        snprintf(label, sizeof label, "%llu", (unsigned long long)s1);
        text(&cv, x_hi - text_width(label), y_bottom + 12, label, black);
        snprintf(label, sizeof label, "step (%d epochs)", epochs);
        text(&cv, (x_lo + x_hi - text_width(label)) / 2, y_bottom + 34, label, black);
        text(&cv, x_hi - text_width("grey: step, blue: epoch mean"), 14 + 18,
             "grey: step, blue: epoch mean", black);
#undef PX
#undef PY
    }
    line(&cv, x_lo, y_top, x_lo, y_bottom, black);
    line(&cv, x_lo, y_bottom, x_hi, y_bottom, black);
    int rc = tomo_png_write_rgb(path, cv.rgb, W, H, err);
    free(cv.rgb);
    return rc;
}
