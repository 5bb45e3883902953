#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/log.h"
#include "../common/pool.h"
#include "backproject.h"
#include "center.h"

/* Bumped whenever a change alters the pixels produced for the same parameters. */
#define TOMO_RECON_FORMAT_VERSION 1

/* Truncation test threshold (ct-rec's PAD_THRESH default). */
#define PAD_THRESHOLD 0.3

/* ------------------------------------------------------------------------------------------ */
/* Parameters                                                                                  */

void tomo_recon_params_default(tomo_recon_params *params)
{
    memset(params, 0, sizeof *params);
    params->filter = TOMO_FILTER_CHESLER;
    params->pad = TOMO_PAD_AUTO;
    params->center = NAN;
    params->pixel_um = 1.0;
    params->bin = 1;
    tomo_prep_params_default(&params->prep);
    tomo_rings_params_default(&params->rings);
    params->split_index = 0;
    params->split_count = 1;
    params->zbin = 1;
}

double tomo_recon_sweep_center(const tomo_center_sweep *sweep, int k)
{
    double scale = 1.0;
    for (int d = 0; d < sweep->decimals; d++)
        scale *= 10.0;
    /* an integer over a power of ten: correctly rounded, like strtod of the decimal text */
    return (double)(sweep->first + (long long)k * sweep->step) / scale;
}

/* Truncation test on a few rows and a subset of views: cheap, and done once per volume. */
static int decide_pad(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pad_mode *pad,
                      tomo_error *err)
{
    int step = scan->n_proj > 360 ? scan->n_proj / 360 : 1;
    int n_sel = (scan->n_proj + step - 1) / step;
    int *proj = malloc((size_t)n_sel * sizeof *proj);
    float *rows = malloc((size_t)n_sel * (size_t)scan->width * sizeof *rows);
    int rc = 0;
    if (!proj || !rows) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory deciding the padding");
        goto out;
    }
    for (int k = 0; k < n_sel; k++)
        proj[k] = k * step;
    int votes = 0, tried = 0;
    for (int q = 1; q <= 3; q++) {
        int z = (int)((long)scan->rows * q / 4);
        if (z >= scan->rows)
            z = scan->rows - 1;
        rc = tomo_prep_rows(scan, pp, NULL, proj, n_sel, z, 1, rows, NULL, err);
        if (rc < 0)
            goto out;
        votes += tomo_filter_needs_edge_pad(rows, n_sel, scan->width, PAD_THRESHOLD);
        tried++;
    }
    *pad = votes * 2 >= tried ? TOMO_PAD_EDGE : TOMO_PAD_ZERO;
out:
    free(proj);
    free(rows);
    return rc;
}

int tomo_recon_resolve(const tomo_scan *scan, tomo_recon_params *params, tomo_error *err)
{
    if (!(params->pixel_um > 0) || !isfinite(params->pixel_um))
        return tomo_error_set(err, TOMO_E_INVALID, "pixel size %g um: must be positive",
                              params->pixel_um);
    if (params->bin < 1 || scan->width % params->bin != 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "bin=%d: must be a positive divisor of the detector width %d",
                              params->bin, scan->width);
    if (isnan(params->center)) {
        int rc = tomo_center_find(scan, &params->prep, NULL, &params->center, err);
        if (rc < 0)
            return rc;
    }
    if (!(params->center > 0 && params->center < scan->width - 1))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "centre %.3f is outside the detector (0 to %d columns)",
                              params->center, scan->width - 1);
    if (params->pad == TOMO_PAD_AUTO) {
        int rc = decide_pad(scan, &params->prep, &params->pad, err);
        if (rc < 0)
            return rc;
    }
    int rc = tomo_rings_validate(&params->rings, err);
    if (rc < 0)
        return rc;
    if (params->split_count > 1 && (params->split_count > scan->n_proj || params->split_index < 0 ||
                                    params->split_index >= params->split_count))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "projection subset %d of %d: needs 0 <= k < K <= %d projections",
                              params->split_index, params->split_count, scan->n_proj);
    if (params->zbin < 1 || params->zbin > scan->rows)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "bin=%d: must be between 1 and the number of detector rows %d",
                              params->zbin, scan->rows);
    if (params->sweep.count > 0) {
        const tomo_center_sweep *sw = &params->sweep;
        double first = tomo_recon_sweep_center(sw, 0);
        double last = tomo_recon_sweep_center(sw, sw->count - 1);
        if (sw->step <= 0 || sw->decimals < 0 || sw->decimals > 6)
            return tomo_error_set(err, TOMO_E_INVALID, "centre sweep: the step must be positive");
        if (sw->slice < 0 || sw->slice >= scan->rows / params->zbin)
            return tomo_error_set(err, TOMO_E_INVALID,
                                  "centre sweep: slice %d is outside the volume (0 to %d)",
                                  sw->slice, scan->rows / params->zbin - 1);
        if (!(first > 0 && last < scan->width - 1))
            return tomo_error_set(err, TOMO_E_INVALID,
                                  "centre sweep %.*f to %.*f: centres must lie inside the "
                                  "detector (0 to %d columns)",
                                  sw->decimals, first, sw->decimals, last, scan->width - 1);
    }
    /* resolved here so that the parameter text, and so the cache key, names the real width */
    if (params->rings.size == 0)
        params->rings.size = tomo_rings_auto_size(scan->width);
    if (params->rings.sm_size == 0)
        params->rings.sm_size = tomo_rings_auto_size(scan->width);
    return 0;
}

void tomo_recon_params_text(const tomo_recon_params *params, char *buf, size_t size)
{
    snprintf(buf, size,
             "format=%d filter=%s pad=%s center=%.6f pixel_um=%.6f bin=%d floor=%.6f "
             "black_fraction=%.6f",
             TOMO_RECON_FORMAT_VERSION, tomo_filter_name(params->filter),
             params->pad == TOMO_PAD_EDGE ? "edge" : "zero", params->center, params->pixel_um,
             params->bin, params->prep.floor_counts, params->prep.black_fraction);
    size_t len = strlen(buf);
    if (params->rings.method != TOMO_RINGS_NONE && len + 1 < size) {
        buf[len] = ' ';
        tomo_rings_params_text(&params->rings, 0, buf + len + 1, size - len - 1);
    }
    len = strlen(buf);
    if (params->split_count > 1 && len < size)
        snprintf(buf + len, size - len, " split=%d/%d", params->split_index, params->split_count);
    len = strlen(buf);
    if (params->zbin > 1 && len < size)
        snprintf(buf + len, size - len, " zbin=%d", params->zbin);
    len = strlen(buf);
    if (params->sweep.count > 0 && len < size) {
        const tomo_center_sweep *sw = &params->sweep;
        tomo_center_sweep step = *sw;
        step.first = sw->step; /* its centre 0 is the step in columns */
        snprintf(buf + len, size - len, " center_sweep=%d:%.*f:%.*f:%d", sw->slice, sw->decimals,
                 tomo_recon_sweep_center(sw, 0), sw->decimals, tomo_recon_sweep_center(&step, 0),
                 sw->count);
    }
}

int tomo_recon_slice_size(const tomo_scan *scan, const tomo_recon_params *params)
{
    return scan->width / (params->bin > 0 ? params->bin : 1);
}

int tomo_recon_slice_count(const tomo_scan *scan, const tomo_recon_params *params)
{
    if (params->sweep.count > 0)
        return params->sweep.count;
    return scan->rows / (params->zbin > 0 ? params->zbin : 1);
}

void tomo_engine_config_default(tomo_engine_config *config)
{
    memset(config, 0, sizeof *config);
    config->threads = 0;
    config->first_chunk = 2;
    config->max_chunk = 32;
    config->memory_limit = (uint64_t)2 << 30;
    config->device = TOMO_DEVICE_AUTO;
    config->precision = TOMO_PRECISION_FAST;
}

/* ------------------------------------------------------------------------------------------ */
/* Engine state                                                                                */

typedef struct waiter {
    tomo_engine_done_fn done;
    void *arg;
    struct waiter *next;
} waiter;

/* A slice that is queued or being computed, with the requests waiting for it. */
typedef struct pending {
    int variant;
    int z;
    waiter *waiters;
    struct pending *next;
} pending;

/* A synchronous caller of tomo_engine_compute waiting for its chunk. */
typedef struct sync_wait {
    pthread_cond_t cond;
    int finished;
    int rc;
    tomo_error err;
    tomo_slice **out;
} sync_wait;

typedef struct job {
    int variant;
    int z0;
    int nz;
    sync_wait *sync; /* NULL for chunks planned from requests */
    struct job *next;
} job;

/* What one variant needs to reconstruct: its filter and back-projection geometry. */
typedef struct variant_state {
    tomo_recon_params params;
    const tomo_scan *scan; /* the engine's scan, or `subset` for a split */
    tomo_scan *subset;     /* the projections of a split (tomo_scan_subset), owned */
    tomo_filter *filter;
    tomo_bp_plan plan;
    int size;
    int count;       /* slices: tomo_recon_slice_count() */
    tomo_cuda *cuda; /* created at the first chunk that runs on the GPU */
    int gpu_failed;  /* the GPU could not take this variant: the CPU does it */
    /* sequential-read detection */
    int last_start;
    int last_end;
    int chunk;
} variant_state;

struct tomo_engine {
    const tomo_scan *scan;
    tomo_engine_config config;
    int gpu;           /* CUDA device used, or -1 for the CPU */
    char backend[160]; /* for status displays */
    tomo_engine_sink sink;
    int n_variants;
    variant_state *variants;
    tomo_pool *pool;
    size_t filter_scratch;
    size_t rings_scratch;
    void **scratch; /* per pool slot, for filtering or ring removal */

    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    int thread_started;
    int stopping;
    job *queue_head, *queue_tail;
    pending *pending;
    tomo_engine_stats stats;
};

static pending *find_pending(tomo_engine *engine, int variant, int z)
{
    for (pending *p = engine->pending; p; p = p->next)
        if (p->variant == variant && p->z == z)
            return p;
    return NULL;
}

static int add_waiter(pending *p, tomo_engine_done_fn done, void *arg)
{
    waiter *w = malloc(sizeof *w);
    if (!w)
        return -1;
    w->done = done;
    w->arg = arg;
    w->next = NULL;
    /* append, so requests are answered in arrival order */
    waiter **tail = &p->waiters;
    while (*tail)
        tail = &(*tail)->next;
    *tail = w;
    return 0;
}

static void enqueue(tomo_engine *engine, job *j)
{
    j->next = NULL;
    if (engine->queue_tail)
        engine->queue_tail->next = j;
    else
        engine->queue_head = j;
    engine->queue_tail = j;
    pthread_cond_signal(&engine->wake);
}

/* Detaches the pending entry of (variant, z) and returns its waiters. Called with the lock. */
static waiter *take_waiters(tomo_engine *engine, int variant, int z)
{
    for (pending **pp = &engine->pending; *pp; pp = &(*pp)->next) {
        pending *p = *pp;
        if (p->variant == variant && p->z == z) {
            *pp = p->next;
            waiter *w = p->waiters;
            free(p);
            return w;
        }
    }
    return NULL;
}

static void answer(waiter *w, tomo_slice *slice, const tomo_error *err)
{
    while (w) {
        waiter *next = w->next;
        w->done(w->arg, slice, err);
        free(w);
        w = next;
    }
}

static int stored(tomo_engine *engine, int variant, int z)
{
    if (!engine->sink.lookup)
        return 0;
    tomo_slice *s = engine->sink.lookup(engine->sink.ctx, variant, z);
    if (!s)
        return 0;
    tomo_slice_unref(s);
    return 1;
}

/* Rows per chunk that keep the sinogram under the memory limit. */
static int memory_cap(const tomo_engine *engine)
{
    uint64_t per_row = (uint64_t)engine->scan->n_proj * (uint64_t)engine->scan->width * 4u;
    uint64_t cap = per_row ? engine->config.memory_limit / per_row : 1;
    if (cap < 1)
        cap = 1;
    if (cap > (uint64_t)engine->config.max_chunk)
        cap = (uint64_t)engine->config.max_chunk;
    return (int)cap;
}

/* ------------------------------------------------------------------------------------------ */
/* Reconstruction of one chunk on the CPU                                                      */

struct filter_task {
    tomo_engine *engine;
    const tomo_filter *filter;
    float *sino;
    int width;
    long n_rows;
    int rows_per_task;
};

static void filter_rows_task(void *arg, int task, int slot)
{
    struct filter_task *t = arg;
    long first = (long)task * t->rows_per_task;
    long last = first + t->rows_per_task;
    if (last > t->n_rows)
        last = t->n_rows;
    for (long r = first; r < last; r++)
        tomo_filter_row(t->filter, t->sino + r * t->width, t->engine->scratch[slot]);
}

struct rings_task {
    tomo_engine *engine;
    const tomo_rings_params *params;
    float *sino;
    int n_proj, width;
    int *rc;
    tomo_error *errs;
};

static void rings_task_run(void *arg, int task, int slot)
{
    struct rings_task *t = arg;
    t->rc[task] = tomo_rings_remove(t->params, t->sino + (size_t)task * t->n_proj * t->width,
                                    t->n_proj, t->width, t->engine->scratch[slot], &t->errs[task]);
}

/*
 * Stripe removal on every sinogram of a chunk: one task per sinogram while there are enough
 * of them to keep the threads busy, otherwise each sinogram spread over all threads (the
 * first request of a mount has a chunk of two). Both give the same pixels.
 */
static int remove_rings(tomo_engine *engine, const tomo_rings_params *params, float *sino, int nz,
                        int n_proj, int width, int z0, tomo_error *err)
{
    int rc = 0;
    if (nz < tomo_pool_size(engine->pool)) {
        for (int i = 0; i < nz && rc >= 0; i++)
            rc = tomo_rings_remove_pool(params, sino + (size_t)i * n_proj * width, n_proj, width,
                                        engine->pool, err);
        return rc;
    }
    int *rcs = calloc((size_t)nz, sizeof *rcs);
    tomo_error *errs = calloc((size_t)nz, sizeof *errs);
    if (!rcs || !errs) {
        free(rcs);
        free(errs);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory removing rings");
    }
    struct rings_task t = {engine, params, sino, n_proj, width, rcs, errs};
    tomo_pool_run(engine->pool, nz, rings_task_run, &t);
    for (int i = 0; i < nz; i++)
        if (rcs[i] < 0) {
            rc = tomo_error_set(err, errs[i].code, "slice %d: %s", z0 + i, errs[i].message);
            break;
        }
    free(rcs);
    free(errs);
    return rc;
}

struct bp_task {
    const tomo_bp_plan *plan;
    const float *sino;
    long slice_stride;
    int n_slices;
    float *images;
    int band;
};

static void bp_task_run(void *arg, int task, int slot)
{
    (void)slot;
    struct bp_task *t = arg;
    int v0 = task * t->band;
    int v1 = v0 + t->band;
    if (v1 > t->plan->size)
        v1 = t->plan->size;
    tomo_bp_rows(t->plan, t->sino, t->slice_stride, t->n_slices, t->images, v0, v1);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Reconstructs slices [z0, z0 + nz) of variant v into out[0..nz). */
/* Whether this chunk runs on the GPU: one is in use, and the variant needs nothing it lacks. */
static int gpu_takes(const tomo_engine *engine, const variant_state *vs, int nz)
{
    return engine->gpu >= 0 && !vs->gpu_failed && tomo_cuda_supports_rings(&vs->params.rings) &&
           nz <= engine->config.max_chunk && vs->params.zbin <= 1 && vs->params.sweep.count == 0;
}

/* Averages each group of zb consecutive sinograms into the first n sinograms, in place. */
static void average_sinograms(float *sino, int n, int zb, size_t stride)
{
    for (int i = 0; i < n; i++) {
        float *out = sino + (size_t)i * stride;
        const float *in = sino + (size_t)i * (size_t)zb * stride; /* never before out */
        for (size_t e = 0; e < stride; e++) {
            double sum = 0;
            for (int j = 0; j < zb; j++)
                sum += in[(size_t)j * stride + e];
            out[e] = (float)(sum / zb);
        }
    }
}

/*
 * Reads the raw rows into the GPU pipeline's pinned buffer and reconstructs them there. A
 * pipeline that cannot be created (out of device memory, say) marks the variant for the CPU,
 * with one warning, instead of failing reads.
 */
/* Creates the GPU pipeline of a variant; on failure the variant stays on the CPU. */
static void start_gpu(tomo_engine *engine, variant_state *vs)
{
    tomo_cuda_config cc = {
        .device = engine->gpu,
        .width = vs->scan->width,
        .n_proj = vs->scan->n_proj,
        .n_flat_groups = vs->scan->n_flat_groups,
        .max_rows = engine->config.max_chunk,
        .precision = engine->config.precision,
        .prep = vs->params.prep,
        .filter = vs->filter,
        .plan = &vs->plan,
        .copy_pool = engine->pool,
        .rings = vs->params.rings,
    };
    tomo_error gerr;
    tomo_error_clear(&gerr);
    if (tomo_cuda_create(&cc, &vs->cuda, &gerr) < 0) {
        tomo_log_warning("%s; reconstructing on the CPU instead", gerr.message);
        vs->gpu_failed = 1;
    }
}

static int reconstruct_gpu(tomo_engine *engine, variant_state *vs, int z0, int nz,
                           float *const *images, tomo_prep_stats *stats, double *read_seconds,
                           tomo_error *err)
{
    if (!vs->cuda)
        start_gpu(engine, vs);
    if (!vs->cuda)
        return -TOMO_E_UNSUPPORTED;
    double t0 = now_seconds();
    tomo_prep_refs refs;
    int rc = tomo_prep_raw_rows(vs->scan, engine->pool, z0, nz, tomo_cuda_raw_buffer(vs->cuda),
                                &refs, err);
    *read_seconds = now_seconds() - t0;
    if (rc < 0)
        return rc;
    tomo_cuda_refs cr = {refs.dark, refs.group_mean, refs.flat_a, refs.flat_b, refs.flat_w};
    rc = tomo_cuda_reconstruct(vs->cuda, nz, &cr, images, stats, err);
    tomo_prep_refs_free(&refs);
    if (rc == -TOMO_E_NOMEM) {
        tomo_log_warning("%s; reconstructing on the CPU instead", err->message);
        tomo_cuda_destroy(vs->cuda);
        vs->cuda = NULL;
        vs->gpu_failed = 1;
    }
    return rc;
}

/*
 * Reconstructs slices [z0, z0 + nz) of variant v into out[0..nz). *read_seconds receives the
 * time spent reading and normalising (on the GPU path: reading only).
 */
static int reconstruct(tomo_engine *engine, int v, int z0, int nz, tomo_slice **out,
                       double *read_seconds, tomo_error *err)
{
    variant_state *vs = &engine->variants[v];
    const tomo_scan *scan = vs->scan;
    long width = scan->width, m = scan->n_proj;
    long slice_stride = m * width;
    size_t image_px = (size_t)vs->size * (size_t)vs->size;
    float *sino = NULL, *images = NULL;
    float **pixels = calloc((size_t)nz, sizeof *pixels);
    int rc = 0;
    *read_seconds = 0;
    for (int i = 0; i < nz; i++)
        out[i] = tomo_slice_new(v, z0 + i, vs->size);
    for (int i = 0; i < nz; i++)
        if (!out[i] || !pixels) {
            rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory for %d slices", nz);
            goto out;
        } else {
            pixels[i] = out[i]->pixels;
        }
    tomo_prep_stats stats = {0};
    if (gpu_takes(engine, vs, nz)) {
        rc = reconstruct_gpu(engine, vs, z0, nz, pixels, &stats, read_seconds, err);
        if (rc >= 0 || !vs->gpu_failed)
            goto out;
        tomo_error_clear(err); /* the GPU gave up on this variant: the CPU takes over */
    }

    /* detector rows read: zbin per slice, averaged below; a sweep reads its one slice */
    int zb = vs->params.zbin > 1 ? vs->params.zbin : 1;
    int sweep = vs->params.sweep.count > 0;
    int n_sino = sweep ? 1 : nz;
    int row0 = (sweep ? vs->params.sweep.slice : z0) * zb;
    size_t sino_bytes = (size_t)n_sino * (size_t)zb * (size_t)slice_stride * sizeof(float);
    sino = aligned_alloc(64, (sino_bytes + 63) & ~(size_t)63);
    images = malloc((size_t)nz * image_px * sizeof(float));
    if (!sino || !images) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory for a chunk of %d slices (%zu MB)",
                            nz, sino_bytes >> 20);
        goto out;
    }
    double t0 = now_seconds();
    rc = tomo_prep_rows(scan, &vs->params.prep, engine->pool, NULL, (int)m, row0, n_sino * zb, sino,
                        &stats, err);
    *read_seconds = now_seconds() - t0;
    if (rc < 0)
        goto out;
    if (zb > 1)
        average_sinograms(sino, n_sino, zb, (size_t)slice_stride);
    if (vs->params.rings.method != TOMO_RINGS_NONE) {
        rc = remove_rings(engine, &vs->params.rings, sino, n_sino, (int)m, (int)width, z0, err);
        if (rc < 0)
            goto out;
    }

    struct filter_task ft = {engine, vs->filter, sino, (int)width, (long)n_sino * m, 16};
    tomo_pool_run(engine->pool, (int)((ft.n_rows + ft.rows_per_task - 1) / ft.rows_per_task),
                  filter_rows_task, &ft);

    for (int i = 0; i < (sweep ? nz : 1); i++) {
        /* a sweep's slices differ only in the centre: the plan's views and weights are shared,
           the centre and the circle are those tomo_bp_plan_init() gives for that centre */
        tomo_bp_plan plan = vs->plan;
        if (sweep) {
            plan.center = tomo_recon_sweep_center(&vs->params.sweep, z0 + i);
            plan.fov_radius = fmin(plan.center, (double)(plan.width - 1) - plan.center);
        }
        struct bp_task bt = {
            &plan, sino, slice_stride, sweep ? 1 : nz, images + (size_t)i * image_px, 16};
        tomo_pool_run(engine->pool, (vs->size + bt.band - 1) / bt.band, bp_task_run, &bt);
    }
    for (int i = 0; i < nz; i++)
        memcpy(pixels[i], images + (size_t)i * image_px, image_px * sizeof(float));
out:
    if (rc >= 0 && stats.black_lines)
        tomo_log_warning("rows %d-%d: %ld projection lines without transmission replaced by "
                         "the mean line",
                         z0, z0 + nz - 1, stats.black_lines);
    if (rc < 0)
        for (int i = 0; i < nz; i++) {
            tomo_slice_unref(out[i]);
            out[i] = NULL;
        }
    free(pixels);
    free(sino);
    free(images);
    return rc;
}

static void run_job(tomo_engine *engine, job *j)
{
    tomo_slice **slices = calloc((size_t)j->nz, sizeof *slices);
    tomo_error err;
    tomo_error_clear(&err);
    double t0 = now_seconds(), read_seconds = 0;
    int rc = slices ? reconstruct(engine, j->variant, j->z0, j->nz, slices, &read_seconds, &err)
                    : tomo_error_set(&err, TOMO_E_NOMEM, "out of memory");
    double elapsed = now_seconds() - t0;

    /* A failure is reported by whoever waits for the slices, with the file names they know. */
    if (rc >= 0) {
        for (int i = 0; i < j->nz; i++)
            if (engine->sink.store)
                engine->sink.store(engine->sink.ctx, slices[i]);
    }

    pthread_mutex_lock(&engine->lock);
    engine->stats.busy_seconds += elapsed;
    engine->stats.read_seconds += read_seconds;
    if (rc < 0)
        engine->stats.errors++;
    else {
        engine->stats.chunks++;
        engine->stats.slices += (uint64_t)j->nz;
    }
    pthread_mutex_unlock(&engine->lock);

    if (j->sync) {
        pthread_mutex_lock(&engine->lock);
        j->sync->rc = rc;
        j->sync->err = err;
        for (int i = 0; i < j->nz; i++)
            j->sync->out[i] = rc < 0 ? NULL : slices[i];
        j->sync->finished = 1;
        pthread_cond_broadcast(&j->sync->cond);
        pthread_mutex_unlock(&engine->lock);
        free(slices);
        return;
    }
    for (int i = 0; i < j->nz; i++) {
        pthread_mutex_lock(&engine->lock);
        waiter *w = take_waiters(engine, j->variant, j->z0 + i);
        pthread_mutex_unlock(&engine->lock);
        answer(w, rc < 0 ? NULL : slices[i], rc < 0 ? &err : NULL);
        if (slices)
            tomo_slice_unref(slices[i]);
    }
    free(slices);
}

static void cancel_job(tomo_engine *engine, job *j)
{
    tomo_error err;
    tomo_error_clear(&err);
    tomo_error_set(&err, TOMO_E_CANCELLED, "the filesystem is shutting down");
    if (j->sync) {
        pthread_mutex_lock(&engine->lock);
        j->sync->rc = -TOMO_E_CANCELLED;
        j->sync->err = err;
        j->sync->finished = 1;
        pthread_cond_broadcast(&j->sync->cond);
        pthread_mutex_unlock(&engine->lock);
        return;
    }
    for (int i = 0; i < j->nz; i++) {
        pthread_mutex_lock(&engine->lock);
        waiter *w = take_waiters(engine, j->variant, j->z0 + i);
        pthread_mutex_unlock(&engine->lock);
        answer(w, NULL, &err);
    }
}

static void *engine_main(void *arg)
{
    tomo_engine *engine = arg;
    pthread_mutex_lock(&engine->lock);
    for (;;) {
        while (!engine->stopping && !engine->queue_head)
            pthread_cond_wait(&engine->wake, &engine->lock);
        job *j = engine->queue_head;
        if (!j)
            break; /* stopping with nothing left */
        engine->queue_head = j->next;
        if (!engine->queue_head)
            engine->queue_tail = NULL;
        int stopping = engine->stopping;
        pthread_mutex_unlock(&engine->lock);
        if (stopping)
            cancel_job(engine, j);
        else
            run_job(engine, j);
        free(j);
        pthread_mutex_lock(&engine->lock);
    }
    pthread_mutex_unlock(&engine->lock);
    return NULL;
}

/*
 * The GPU when asked for or, with the automatic choice, when one is usable; the CPU otherwise.
 * Only an explicitly requested device that does not exist is an error.
 */
static int choose_backend(tomo_engine *engine, int threads, tomo_error *err)
{
    engine->gpu = -1;
    snprintf(engine->backend, sizeof engine->backend, "cpu (%d threads)", threads);
    if (engine->config.device == TOMO_DEVICE_CPU)
        return 0;
    char name[96];
    int count = tomo_cuda_device_count(name, sizeof name);
    int want = engine->config.device == TOMO_DEVICE_AUTO ? 0 : engine->config.device;
    if (want >= count) {
        if (engine->config.device != TOMO_DEVICE_AUTO)
            return tomo_error_set(err, TOMO_E_UNSUPPORTED, "device=cuda:%d: %s", want,
                                  count ? "no such CUDA device" : name);
        tomo_log_info("no usable GPU (%s): reconstructing on the CPU", name);
        return 0;
    }
    engine->gpu = want;
    /* the GPU packs slices by four: smaller chunks would leave lanes idle */
    if (engine->config.first_chunk < 4)
        engine->config.first_chunk = 4;
    snprintf(engine->backend, sizeof engine->backend, "cuda:%d %s (%s)", want, name,
             tomo_precision_name(engine->config.precision));
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Public functions                                                                            */

int tomo_engine_create(const tomo_scan *scan, const tomo_recon_params *variants, int n_variants,
                       const tomo_engine_config *config, const tomo_engine_sink *sink,
                       tomo_engine **out, tomo_error *err)
{
    *out = NULL;
    tomo_engine *engine = calloc(1, sizeof *engine);
    if (!engine)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    engine->scan = scan;
    if (config)
        engine->config = *config;
    else
        tomo_engine_config_default(&engine->config);
    if (engine->config.first_chunk < 1)
        engine->config.first_chunk = 1;
    if (engine->config.max_chunk < engine->config.first_chunk)
        engine->config.max_chunk = engine->config.first_chunk;
    if (sink)
        engine->sink = *sink;
    pthread_mutex_init(&engine->lock, NULL);
    pthread_cond_init(&engine->wake, NULL);

    int rc = 0;
    double *angles = malloc((size_t)scan->n_proj * sizeof *angles);
    engine->variants = calloc((size_t)n_variants, sizeof *engine->variants);
    if (!angles || !engine->variants) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
        goto fail;
    }
    engine->n_variants = n_variants;

    for (int v = 0; v < n_variants; v++) {
        variant_state *vs = &engine->variants[v];
        vs->params = variants[v];
        vs->scan = scan;
        if (vs->params.split_count > 1) {
            rc = tomo_scan_subset(scan, vs->params.split_index, vs->params.split_count, &vs->subset,
                                  err);
            if (rc < 0)
                goto fail;
            vs->scan = vs->subset;
        }
        /* angles from the first view of the whole scan, so a split is not rotated */
        for (int m = 0; m < vs->scan->n_proj; m++)
            angles[m] = (vs->scan->proj_angle_deg[m] - scan->proj_angle_deg[0]) * (M_PI / 180.0);
        vs->size = tomo_recon_slice_size(scan, &vs->params);
        vs->count = tomo_recon_slice_count(scan, &vs->params);
        vs->chunk = engine->config.first_chunk;
        vs->last_start = vs->last_end = -1;
        vs->filter = tomo_filter_create(scan->width, vs->params.filter, vs->params.pad, err);
        if (!vs->filter) {
            rc = err && err->code ? -err->code : -TOMO_E_NOMEM;
            goto fail;
        }
        size_t need = tomo_filter_scratch_size(vs->filter);
        if (need > engine->filter_scratch)
            engine->filter_scratch = need;
        need = tomo_rings_scratch_size(&vs->params.rings, vs->scan->n_proj, scan->width);
        if (need > engine->rings_scratch)
            engine->rings_scratch = need;
        rc = tomo_bp_plan_init(&vs->plan, scan->width, angles, NULL, vs->scan->n_proj,
                               vs->params.center, vs->params.pixel_um * 1e-4, vs->params.bin, err);
        if (rc < 0)
            goto fail;
    }

    engine->pool = tomo_pool_create(engine->config.threads);
    if (!engine->pool) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "cannot start worker threads");
        goto fail;
    }
    int slots = tomo_pool_size(engine->pool);
    rc = choose_backend(engine, slots, err);
    if (rc < 0)
        goto fail;
    /* GPU memory is taken now, so the first read does not wait for it (splits: at first use) */
    for (int v = 0; v < n_variants && engine->gpu >= 0; v++)
        if (engine->variants[v].params.split_count <= 1 &&
            gpu_takes(engine, &engine->variants[v], 1))
            start_gpu(engine, &engine->variants[v]);
    engine->scratch = calloc((size_t)slots, sizeof *engine->scratch);
    if (!engine->scratch) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
        goto fail;
    }
    size_t scratch_bytes = engine->filter_scratch > engine->rings_scratch ? engine->filter_scratch
                                                                          : engine->rings_scratch;
    scratch_bytes = (scratch_bytes + 63) & ~(size_t)63;
    for (int i = 0; i < slots; i++) {
        engine->scratch[i] = aligned_alloc(64, scratch_bytes ? scratch_bytes : 64);
        if (!engine->scratch[i]) {
            rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
            goto fail;
        }
    }
    if (pthread_create(&engine->thread, NULL, engine_main, engine) != 0) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "cannot start the engine thread");
        goto fail;
    }
    engine->thread_started = 1;
    free(angles);
    *out = engine;
    return 0;
fail:
    free(angles);
    tomo_engine_destroy(engine);
    return rc;
}

void tomo_engine_request(tomo_engine *engine, int variant, int z, tomo_engine_done_fn done,
                         void *arg)
{
    tomo_error err;
    tomo_error_clear(&err);
    if (variant < 0 || variant >= engine->n_variants || z < 0 ||
        z >= engine->variants[variant].count) {
        tomo_error_set(&err, TOMO_E_INVALID, "no slice %d in variant %d", z, variant);
        done(arg, NULL, &err);
        return;
    }
    pthread_mutex_lock(&engine->lock);
    engine->stats.requests++;
    if (engine->stopping) {
        pthread_mutex_unlock(&engine->lock);
        tomo_error_set(&err, TOMO_E_CANCELLED, "the filesystem is shutting down");
        done(arg, NULL, &err);
        return;
    }
    pending *p = find_pending(engine, variant, z);
    if (p) {
        engine->stats.joined++;
        if (add_waiter(p, done, arg) < 0)
            goto nomem;
        pthread_mutex_unlock(&engine->lock);
        return;
    }
    if (engine->sink.lookup) {
        tomo_slice *s = engine->sink.lookup(engine->sink.ctx, variant, z);
        if (s) {
            pthread_mutex_unlock(&engine->lock);
            done(arg, s, NULL);
            tomo_slice_unref(s);
            return;
        }
    }

    /* Plan a chunk starting at z: larger while the reader moves forward through the volume. */
    variant_state *vs = &engine->variants[variant];
    int cap = memory_cap(engine) / (vs->params.zbin > 1 ? vs->params.zbin : 1); /* rows/slice */
    if (cap < 1)
        cap = 1;
    if (vs->last_start >= 0 && z >= vs->last_start && z <= vs->last_end + vs->chunk)
        vs->chunk = vs->chunk * 2 < cap ? vs->chunk * 2 : cap;
    else
        vs->chunk = engine->config.first_chunk < cap ? engine->config.first_chunk : cap;
    int nz = 1;
    while (nz < vs->chunk && z + nz < vs->count && !find_pending(engine, variant, z + nz) &&
           !stored(engine, variant, z + nz))
        nz++;
    vs->last_start = z;
    vs->last_end = z + nz;

    job *j = calloc(1, sizeof *j);
    pending **created = calloc((size_t)nz, sizeof *created);
    if (!j || !created) {
        free(j);
        free(created);
        goto nomem;
    }
    for (int i = 0; i < nz; i++) {
        created[i] = calloc(1, sizeof **created);
        if (!created[i] || (i == 0 && add_waiter(created[i], done, arg) < 0)) {
            for (int k = 0; k <= i; k++) {
                if (created[k])
                    free(created[k]->waiters);
                free(created[k]);
            }
            free(created);
            free(j);
            goto nomem;
        }
        created[i]->variant = variant;
        created[i]->z = z + i;
    }
    for (int i = 0; i < nz; i++) {
        created[i]->next = engine->pending;
        engine->pending = created[i];
    }
    free(created);
    j->variant = variant;
    j->z0 = z;
    j->nz = nz;
    enqueue(engine, j);
    pthread_mutex_unlock(&engine->lock);
    return;
nomem:
    pthread_mutex_unlock(&engine->lock);
    tomo_error_set(&err, TOMO_E_NOMEM, "out of memory queueing slice %d", z);
    done(arg, NULL, &err);
}

int tomo_engine_compute(tomo_engine *engine, int variant, int z0, int nz, tomo_slice **out,
                        tomo_error *err)
{
    if (variant < 0 || variant >= engine->n_variants || z0 < 0 || nz < 1 ||
        z0 + nz > engine->variants[variant].count)
        return tomo_error_set(
            err, TOMO_E_INVALID, "slices %d-%d are outside the volume (0-%d)", z0, z0 + nz - 1,
            variant >= 0 && variant < engine->n_variants ? engine->variants[variant].count - 1
                                                         : engine->scan->rows - 1);
    sync_wait wait = {.finished = 0, .rc = 0, .out = out};
    pthread_cond_init(&wait.cond, NULL);
    tomo_error_clear(&wait.err);
    job *j = calloc(1, sizeof *j);
    if (!j) {
        pthread_cond_destroy(&wait.cond);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    }
    j->variant = variant;
    j->z0 = z0;
    j->nz = nz;
    j->sync = &wait;
    pthread_mutex_lock(&engine->lock);
    enqueue(engine, j);
    while (!wait.finished)
        pthread_cond_wait(&wait.cond, &engine->lock);
    pthread_mutex_unlock(&engine->lock);
    pthread_cond_destroy(&wait.cond);
    if (wait.rc < 0)
        return tomo_error_set(err, wait.err.code, "%s", wait.err.message);
    return 0;
}

void tomo_engine_get_stats(tomo_engine *engine, tomo_engine_stats *stats)
{
    pthread_mutex_lock(&engine->lock);
    *stats = engine->stats;
    uint64_t queued = 0;
    for (pending *p = engine->pending; p; p = p->next)
        for (waiter *w = p->waiters; w; w = w->next)
            queued++;
    stats->queued = queued;
    pthread_mutex_unlock(&engine->lock);
}

void tomo_engine_destroy(tomo_engine *engine)
{
    if (!engine)
        return;
    if (engine->thread_started) {
        pthread_mutex_lock(&engine->lock);
        engine->stopping = 1;
        pthread_cond_broadcast(&engine->wake);
        pthread_mutex_unlock(&engine->lock);
        pthread_join(engine->thread, NULL);
    }
    /* Requests that joined nothing queued (cannot happen once the thread drained) are freed. */
    while (engine->pending) {
        pending *p = engine->pending;
        engine->pending = p->next;
        tomo_error err;
        tomo_error_clear(&err);
        tomo_error_set(&err, TOMO_E_CANCELLED, "the filesystem is shutting down");
        answer(p->waiters, NULL, &err);
        free(p);
    }
    if (engine->scratch) {
        for (int i = 0; i < tomo_pool_size(engine->pool); i++)
            free(engine->scratch[i]);
        free(engine->scratch);
    }
    tomo_pool_destroy(engine->pool);
    for (int v = 0; v < engine->n_variants; v++) {
        tomo_cuda_destroy(engine->variants[v].cuda);
        tomo_filter_destroy(engine->variants[v].filter);
        tomo_bp_plan_free(&engine->variants[v].plan);
        tomo_scan_close(engine->variants[v].subset);
    }
    free(engine->variants);
    pthread_mutex_destroy(&engine->lock);
    pthread_cond_destroy(&engine->wake);
    free(engine);
}

const char *tomo_engine_backend(const tomo_engine *engine)
{
    return engine->backend;
}
