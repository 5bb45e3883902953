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
    config->read_ahead = 0;
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
    int ahead_z0;    /* the chunk a sequential reader will ask for next (ahead_nz 0: none) */
    int ahead_nz;
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
    int done_start; /* the last chunk planned from requests, once computed */
    int done_end;
    int sink_cap; /* most slices per chunk the sink was seen to keep; 0 = no limit seen */
} variant_state;

/*
 * Reading ahead. While a chunk computes, a reader thread reads the rows of the chunk that
 * comes next when it is known: the next queued job, the next chunk of a tomo_engine_compute
 * series, or the chunk a sequential reader will ask for next. For the GPU the rows go to the
 * variant's pinned raw buffer as soon as the GPU has taken the current chunk's rows from it;
 * for the CPU (read_ahead=1) they are normalised into a buffer of their own. The reader goes
 * in pieces of AHEAD_PIECE rows and stops between two when cancelled, so a chunk that needs
 * the buffer waits for one piece at most. A read that fails is dropped without a word: the
 * chunk, if it is asked for, is read again and fails or not on its own account.
 */
#define AHEAD_PIECE TOMO_CUDA_GROUP

enum { AHEAD_IDLE, AHEAD_QUEUED, AHEAD_READING, AHEAD_READY };

typedef struct read_ahead {
    int state;
    int cancel; /* stop after the current piece and drop what was read */
    int variant, z0, nz;
    int on_gpu;                   /* raw rows into the GPU buffer, else normalised rows */
    float *sino;                  /* CPU: [nz][n_proj][width], owned */
    tomo_prep_stats *piece_stats; /* CPU: per piece */
    tomo_prep_refs refs;          /* GPU: the reference rows of all nz rows */
    tomo_pool *pool;              /* the reader's threads */
    pthread_t thread;
    int started;
    int stopping;
    pthread_cond_t wake; /* to the reader: something is queued, or stop */
    pthread_cond_t done; /* from the reader: a read ended */
} read_ahead;

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

    job *current;  /* the job the engine thread runs */
    int ahead_gpu; /* read ahead for chunks that run on the GPU */
    int ahead_cpu; /* and for those that run on the CPU */
    read_ahead ahead;
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

/*
 * A request for a slice of the last chunk computed for requests, which the sink no longer
 * holds: the sink keeps fewer slices than such a chunk, and a sequential reader would find
 * each chunk's first slices gone before it gets to them (and have them computed again).
 * Chunks of this variant are capped from now on at three quarters of what the sink still
 * holds of that chunk (a multiple of the GPU's group where that leaves one). Called with the
 * lock.
 */
static void learn_sink_cap(tomo_engine *engine, int v)
{
    variant_state *vs = &engine->variants[v];
    if (!engine->sink.lookup) /* nothing is kept anyway */
        return;
    int kept = 0;
    for (int z = vs->done_start; z < vs->done_end; z++)
        kept += stored(engine, v, z);
    int cap = kept * 3 / 4;
    if (engine->gpu >= 0 && cap >= TOMO_CUDA_GROUP)
        cap -= cap % TOMO_CUDA_GROUP;
    if (cap < 1)
        cap = 1;
    if (vs->sink_cap == 0 || cap < vs->sink_cap) {
        vs->sink_cap = cap;
        tomo_log_info("the slice cache keeps fewer slices than a chunk makes: chunks of at most %d "
                      "slices from now on",
                      cap);
    }
    vs->done_start = vs->done_end = -1; /* once per chunk */
}

/*
 * The end of the rows being read ahead for variant v when they include slice z (and a chunk
 * starting at z can use them), else -1. Called with the lock.
 */
static int ahead_limit(const tomo_engine *engine, int v, int z)
{
    const read_ahead *a = &engine->ahead;
    if (a->state == AHEAD_IDLE || a->cancel || a->variant != v || z < a->z0 || z >= a->z0 + a->nz)
        return -1;
    if (!a->on_gpu && (z - a->z0) % AHEAD_PIECE != 0)
        return -1;
    return a->z0 + a->nz;
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
 * Creates the GPU pipeline of a variant. One that cannot be created (out of device memory,
 * say) marks the variant for the CPU, with one warning, instead of failing reads.
 */
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

/* ---- reading ahead (see read_ahead) ---- */

/* Whether the rows of a chunk of nz slices of vs may be read ahead, and for which backend. */
static int ahead_applies(const tomo_engine *engine, const variant_state *vs, int nz, int *on_gpu)
{
    *on_gpu = gpu_takes(engine, vs, nz);
    if (*on_gpu)
        return engine->ahead_gpu && vs->cuda != NULL;
    return engine->ahead_cpu && vs->params.zbin <= 1 && vs->params.sweep.count == 0 &&
           nz <= memory_cap(engine);
}

/* Drops what the read-ahead holds. Called with the lock, never while the reader reads. */
static void ahead_discard(tomo_engine *engine)
{
    read_ahead *a = &engine->ahead;
    if (a->state != AHEAD_IDLE)
        engine->stats.read_ahead_dropped++;
    free(a->sino);
    a->sino = NULL;
    free(a->piece_stats);
    a->piece_stats = NULL;
    tomo_prep_refs_free(&a->refs);
    a->state = AHEAD_IDLE;
}

static int ahead_cancelled(tomo_engine *engine)
{
    pthread_mutex_lock(&engine->lock);
    int cancelled = engine->ahead.cancel || engine->ahead.stopping;
    pthread_mutex_unlock(&engine->lock);
    return cancelled;
}

/*
 * The reader's work: rows [z0, z0 + nz) of variant v, piece by piece, into the GPU's raw
 * buffer (and *refs) or into a new *sino (and per-piece *stats). Returns 1 when cancelled,
 * a negative code on failure; what was allocated is returned either way.
 */
static int ahead_read(tomo_engine *engine, int v, int z0, int nz, int on_gpu, float **sino,
                      tomo_prep_stats **stats, tomo_prep_refs *refs, tomo_error *err)
{
    variant_state *vs = &engine->variants[v];
    const tomo_scan *scan = vs->scan;
    size_t w = (size_t)scan->width, row = (size_t)scan->n_proj * w;
    int n_pieces = (nz + AHEAD_PIECE - 1) / AHEAD_PIECE;
    float *rows;
    if (on_gpu) {
        /* the GPU may still be uploading the current chunk's rows from this buffer */
        int rc = tomo_cuda_raw_wait(vs->cuda, err);
        if (rc < 0)
            return rc;
        rows = tomo_cuda_raw_buffer(vs->cuda);
        refs->nz = nz;
        refs->width = scan->width;
        refs->n_groups = scan->n_flat_groups;
        refs->dark = malloc((size_t)nz * w * sizeof *refs->dark);
        refs->group_mean = calloc((size_t)scan->n_flat_groups * nz * w, sizeof *refs->group_mean);
        if (!refs->dark || !refs->group_mean)
            return tomo_error_set(err, TOMO_E_NOMEM, "out of memory reading ahead");
    } else {
        size_t bytes = (size_t)nz * row * sizeof(float);
        rows = *sino = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        *stats = calloc((size_t)n_pieces, sizeof **stats);
        if (!*sino || !*stats)
            return tomo_error_set(err, TOMO_E_NOMEM, "out of memory reading ahead");
    }
    for (int p = 0; p < n_pieces; p++) {
        if (ahead_cancelled(engine))
            return 1;
        int r0 = p * AHEAD_PIECE, n = nz - r0 < AHEAD_PIECE ? nz - r0 : AHEAD_PIECE;
        if (!on_gpu) {
            int rc = tomo_prep_rows(scan, &vs->params.prep, engine->ahead.pool, NULL, scan->n_proj,
                                    z0 + r0, n, rows + (size_t)r0 * row, &(*stats)[p], err);
            if (rc < 0)
                return rc;
            continue;
        }
        tomo_prep_refs piece;
        int rc = tomo_prep_raw_rows(scan, engine->ahead.pool, z0 + r0, n, rows + (size_t)r0 * row,
                                    &piece, err);
        if (rc < 0)
            return rc;
        memcpy(refs->dark + (size_t)r0 * w, piece.dark, (size_t)n * w * sizeof *piece.dark);
        for (int g = 0; g < piece.n_groups && g < refs->n_groups; g++)
            memcpy(refs->group_mean + ((size_t)g * nz + r0) * w,
                   piece.group_mean + (size_t)g * n * w, (size_t)n * w * sizeof *piece.group_mean);
        if (!refs->flat_a) { /* the same for every piece: they depend on the projections only */
            refs->flat_a = piece.flat_a;
            refs->flat_b = piece.flat_b;
            refs->flat_w = piece.flat_w;
            piece.flat_a = piece.flat_b = NULL;
            piece.flat_w = NULL;
        }
        tomo_prep_refs_free(&piece);
    }
    return 0;
}

static void *ahead_main(void *arg)
{
    tomo_engine *engine = arg;
    read_ahead *a = &engine->ahead;
    pthread_mutex_lock(&engine->lock);
    for (;;) {
        while (!a->stopping && a->state != AHEAD_QUEUED)
            pthread_cond_wait(&a->wake, &engine->lock);
        if (a->stopping)
            break;
        a->state = AHEAD_READING;
        int v = a->variant, z0 = a->z0, nz = a->nz, on_gpu = a->on_gpu;
        pthread_mutex_unlock(&engine->lock);

        float *sino = NULL;
        tomo_prep_stats *stats = NULL;
        tomo_prep_refs refs;
        memset(&refs, 0, sizeof refs);
        tomo_error err;
        tomo_error_clear(&err);
        int rc = ahead_read(engine, v, z0, nz, on_gpu, &sino, &stats, &refs, &err);

        pthread_mutex_lock(&engine->lock);
        a->sino = sino;
        a->piece_stats = stats;
        a->refs = refs;
        if (rc != 0 || a->cancel || a->stopping)
            ahead_discard(engine);
        else
            a->state = AHEAD_READY;
        pthread_cond_broadcast(&a->done);
    }
    pthread_mutex_unlock(&engine->lock);
    return NULL;
}

/* What a chunk got from the read-ahead. */
typedef struct ahead_rows {
    int taken;
    int offset;            /* the chunk's first row within what was read ahead */
    float *sino;           /* CPU: all rows read ahead (the chunk's from `offset`); free it */
    tomo_prep_refs refs;   /* GPU: the reference rows of all rows read ahead */
    tomo_prep_stats stats; /* CPU: of the pieces the chunk covers */
} ahead_rows;

/*
 * Gives the rows of chunk [z0, z0 + nz) of variant v to its reconstruction when the
 * read-ahead holds them, waiting for it to finish if need be. A read-ahead of anything else
 * is cancelled; when it fills the GPU buffer this chunk needs, this waits until it stops.
 */
static void ahead_take(tomo_engine *engine, int v, int z0, int nz, int on_gpu, ahead_rows *out)
{
    read_ahead *a = &engine->ahead;
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&engine->lock);
    if (a->state == AHEAD_IDLE) {
        pthread_mutex_unlock(&engine->lock);
        return;
    }
    int end = a->z0 + a->nz;
    int covers = a->variant == v && a->on_gpu == on_gpu && z0 >= a->z0 && z0 + nz <= end;
    if (covers && !on_gpu) /* whole pieces only, so the statistics are the chunk's */
        covers = (z0 - a->z0) % AHEAD_PIECE == 0 &&
                 ((z0 + nz - a->z0) % AHEAD_PIECE == 0 || z0 + nz == end);
    if (!covers) {
        if (a->state == AHEAD_READING) {
            a->cancel = 1;
            while (a->on_gpu && on_gpu && a->variant == v && a->state == AHEAD_READING)
                pthread_cond_wait(&a->done, &engine->lock);
        } else {
            ahead_discard(engine);
        }
        pthread_mutex_unlock(&engine->lock);
        return;
    }
    while (a->state == AHEAD_QUEUED || a->state == AHEAD_READING)
        pthread_cond_wait(&a->done, &engine->lock);
    if (a->state == AHEAD_READY) {
        out->taken = 1;
        out->offset = z0 - a->z0;
        out->sino = a->sino;
        a->sino = NULL;
        out->refs = a->refs;
        memset(&a->refs, 0, sizeof a->refs);
        for (int p = out->offset / AHEAD_PIECE; a->piece_stats && p * AHEAD_PIECE < z0 + nz - a->z0;
             p++) {
            out->stats.clipped_pixels += a->piece_stats[p].clipped_pixels;
            out->stats.black_lines += a->piece_stats[p].black_lines;
        }
        free(a->piece_stats);
        a->piece_stats = NULL;
        a->state = AHEAD_IDLE;
        engine->stats.read_ahead_used++;
    }
    pthread_mutex_unlock(&engine->lock);
}

/*
 * Starts reading the rows of the chunk after the current one, when it is known. Called by
 * the engine thread once the current chunk's rows are in use.
 */
static void ahead_next(tomo_engine *engine)
{
    read_ahead *a = &engine->ahead;
    const job *j = engine->current;
    if (!a->started || !j)
        return;
    pthread_mutex_lock(&engine->lock);
    int v = j->variant, z0 = 0, nz = 0, on_gpu;
    const job *next = engine->queue_head;
    if (next) { /* asked for already */
        v = next->variant;
        z0 = next->z0;
        nz = next->nz;
    } else if (j->sync) { /* a series of tomo_engine_compute walks the volume */
        z0 = j->z0 + j->nz;
        nz = z0 + j->nz <= engine->variants[v].count ? j->nz : engine->variants[v].count - z0;
    } else if (j->ahead_nz > 0) { /* a sequential reader: what it will not find stored */
        z0 = j->ahead_z0;
        while (nz < j->ahead_nz && z0 + nz < engine->variants[v].count &&
               !find_pending(engine, v, z0 + nz) && !stored(engine, v, z0 + nz))
            nz++;
    }
    if (nz > 0 && ahead_applies(engine, &engine->variants[v], nz, &on_gpu)) {
        while (a->state == AHEAD_READING) /* a cancelled read ending its piece */
            pthread_cond_wait(&a->done, &engine->lock);
        ahead_discard(engine);
        a->state = AHEAD_QUEUED;
        a->cancel = 0;
        a->variant = v;
        a->z0 = z0;
        a->nz = nz;
        a->on_gpu = on_gpu;
        pthread_cond_signal(&a->wake);
    }
    pthread_mutex_unlock(&engine->lock);
}

/* Stops a read-ahead into variant v's GPU buffer and drops it (before the buffer goes). */
static void ahead_release(tomo_engine *engine, int v)
{
    read_ahead *a = &engine->ahead;
    pthread_mutex_lock(&engine->lock);
    if (a->state != AHEAD_IDLE && a->variant == v) {
        a->cancel = 1;
        while (a->state == AHEAD_READING)
            pthread_cond_wait(&a->done, &engine->lock);
        ahead_discard(engine);
    }
    pthread_mutex_unlock(&engine->lock);
}

/*
 * Reconstructs a chunk on the GPU: its raw rows (read ahead, or read now into the pinned
 * buffer), then the GPU work begun; while it runs, the next chunk's rows are read ahead and
 * this chunk's slices copied out as they arrive.
 */
static int reconstruct_gpu(tomo_engine *engine, variant_state *vs, int z0, int nz,
                           float *const *images, tomo_prep_stats *stats, double *read_seconds,
                           tomo_error *err)
{
    if (!vs->cuda)
        start_gpu(engine, vs);
    if (!vs->cuda)
        return -TOMO_E_UNSUPPORTED;
    int v = (int)(vs - engine->variants);
    double t0 = now_seconds();
    ahead_rows ar;
    ahead_take(engine, v, z0, nz, 1, &ar);
    int rc = 0;
    if (!ar.taken)
        rc = tomo_prep_raw_rows(vs->scan, engine->pool, z0, nz, tomo_cuda_raw_buffer(vs->cuda),
                                &ar.refs, err);
    *read_seconds = now_seconds() - t0;
    if (rc < 0)
        return rc;
    size_t w = (size_t)vs->scan->width, at = (size_t)ar.offset * w;
    tomo_cuda_refs cr = {ar.refs.dark + at, ar.refs.group_mean + at, ar.refs.flat_a,
                         ar.refs.flat_b,    ar.refs.flat_w,          (long)(ar.refs.nz * w)};
    rc = tomo_cuda_begin(vs->cuda, ar.offset, nz, &cr, err);
    tomo_prep_refs_free(&ar.refs);
    if (rc >= 0) {
        ahead_next(engine);
        rc = tomo_cuda_finish(vs->cuda, images, stats, err);
    }
    if (rc == -TOMO_E_NOMEM) {
        tomo_log_warning("%s; reconstructing on the CPU instead", err->message);
        ahead_release(engine, v);
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
    float *sino = NULL, *sino_block = NULL, *images = NULL;
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
    double t0 = now_seconds();
    ahead_rows ar;
    ahead_take(engine, v, z0, nz, 0, &ar);
    sino_block = ar.taken ? ar.sino : aligned_alloc(64, (sino_bytes + 63) & ~(size_t)63);
    sino = ar.taken ? sino_block + (size_t)ar.offset * (size_t)slice_stride : sino_block;
    images = malloc((size_t)nz * image_px * sizeof(float));
    if (!sino || !images) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory for a chunk of %d slices (%zu MB)",
                            nz, sino_bytes >> 20);
        goto out;
    }
    if (ar.taken)
        stats = ar.stats;
    else
        rc = tomo_prep_rows(scan, &vs->params.prep, engine->pool, NULL, (int)m, row0, n_sino * zb,
                            sino, &stats, err);
    *read_seconds = now_seconds() - t0;
    if (rc < 0)
        goto out;
    ahead_next(engine); /* the next chunk's rows while this one computes */
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
    free(sino_block);
    free(images);
    return rc;
}

static void run_job(tomo_engine *engine, job *j)
{
    tomo_slice **slices = calloc((size_t)j->nz, sizeof *slices);
    tomo_error err;
    tomo_error_clear(&err);
    double t0 = now_seconds(), read_seconds = 0;
    engine->current = j;
    int rc = slices ? reconstruct(engine, j->variant, j->z0, j->nz, slices, &read_seconds, &err)
                    : tomo_error_set(&err, TOMO_E_NOMEM, "out of memory");
    engine->current = NULL;
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
        if (!j->sync) {
            engine->variants[j->variant].done_start = j->z0;
            engine->variants[j->variant].done_end = j->z0 + j->nz;
        }
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
    /* Every slice leaves the pending list before the first answer: a request that follows one
       finds the chunk's slices in the sink (or gone from it), never still pending. */
    waiter **ws = calloc((size_t)j->nz, sizeof *ws);
    pthread_mutex_lock(&engine->lock);
    for (int i = 0; ws && i < j->nz; i++)
        ws[i] = take_waiters(engine, j->variant, j->z0 + i);
    pthread_mutex_unlock(&engine->lock);
    for (int i = 0; i < j->nz; i++) {
        waiter *w = ws ? ws[i] : NULL;
        if (!ws) {
            pthread_mutex_lock(&engine->lock);
            w = take_waiters(engine, j->variant, j->z0 + i);
            pthread_mutex_unlock(&engine->lock);
        }
        answer(w, rc < 0 ? NULL : slices[i], rc < 0 ? &err : NULL);
        if (slices)
            tomo_slice_unref(slices[i]);
    }
    free(ws);
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
    pthread_cond_init(&engine->ahead.wake, NULL);
    pthread_cond_init(&engine->ahead.done, NULL);

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
        vs->done_start = vs->done_end = -1;
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
    for (int v = 0; v < n_variants && engine->gpu >= 0 && !engine->config.gpu_at_first_use; v++)
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
    engine->ahead_gpu = engine->config.read_ahead >= 0 && engine->gpu >= 0;
    engine->ahead_cpu = engine->config.read_ahead > 0;
    if (engine->ahead_gpu || engine->ahead_cpu) {
        engine->ahead.pool = tomo_pool_create(engine->config.threads);
        if (!engine->ahead.pool ||
            pthread_create(&engine->ahead.thread, NULL, ahead_main, engine) != 0) {
            rc = tomo_error_set(err, TOMO_E_NOMEM, "cannot start the reading threads");
            goto fail;
        }
        engine->ahead.started = 1;
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
    if (z >= vs->done_start && z < vs->done_end)
        learn_sink_cap(engine, variant);
    if (vs->sink_cap > 0 && vs->sink_cap < cap)
        cap = vs->sink_cap;
    int sequential = vs->last_start >= 0 && z >= vs->last_start && z <= vs->last_end + vs->chunk;
    if (sequential)
        vs->chunk = vs->chunk * 2 < cap ? vs->chunk * 2 : cap;
    else
        vs->chunk = engine->config.first_chunk < cap ? engine->config.first_chunk : cap;
    int nz = 1, ahead_end = ahead_limit(engine, variant, z);
    while (nz < vs->chunk && z + nz < vs->count && !find_pending(engine, variant, z + nz) &&
           !stored(engine, variant, z + nz) && (ahead_end < 0 || z + nz < ahead_end))
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
    if (sequential) { /* the reader will ask for the next chunk: its rows are read ahead */
        j->ahead_z0 = z + nz;
        j->ahead_nz = vs->chunk * 2 < cap ? vs->chunk * 2 : cap;
    }
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
    /* The reader stops after its current piece; what it holds is dropped. */
    if (engine->ahead.started) {
        pthread_mutex_lock(&engine->lock);
        engine->ahead.stopping = 1;
        pthread_cond_broadcast(&engine->ahead.wake);
        pthread_mutex_unlock(&engine->lock);
        pthread_join(engine->ahead.thread, NULL);
    }
    ahead_discard(engine);
    tomo_pool_destroy(engine->ahead.pool);
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
    pthread_cond_destroy(&engine->ahead.wake);
    pthread_cond_destroy(&engine->ahead.done);
    free(engine);
}

const char *tomo_engine_backend(const tomo_engine *engine)
{
    return engine->backend;
}
