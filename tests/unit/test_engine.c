/*
 * The engine's reading ahead and chunk planning, on the CPU backend with read_ahead=1 (the
 * GPU reads ahead the same way into its pinned buffer; tests/gpu/run.sh covers that path).
 * The reference is the same engine with reading ahead off: slices must be equal bit for bit,
 * and close to the phantom's exact slices.
 */
#include "check.h"

#include <pthread.h>

#include "../../recon/engine.h"
#include "../../recon/phantom.h"

#define W     64  /* detector columns */
#define ROWS  40  /* detector rows = slices */
#define NPROJ 90  /* over 180 degrees */
#define NFLAT 4   /* two before the projections, two after */
#define DARK  100 /* counts */
#define BEAM  20000.0

/* ---- an in-memory scan of the analytic phantom ---- */

typedef struct mem_scan {
    tomo_scan scan;
    tomo_phantom ph;
    float *proj; /* [NPROJ][ROWS][W] raw counts */
    /* a damaged projection: reads of rows from fail_row on fail */
    int fail_index;
    int fail_row;
} mem_scan;

static int mem_read_rows(void *reader, tomo_frame_kind kind, int index, int z0, int nz, float *dst,
                         tomo_error *err)
{
    mem_scan *ms = reader;
    if (kind == TOMO_FRAME_PROJECTION && index == ms->fail_index && z0 + nz > ms->fail_row)
        return tomo_error_set(err, TOMO_E_IO, "scan/q%04d.img: rows from %d cannot be read",
                              index + 1, ms->fail_row);
    for (int z = 0; z < nz; z++)
        for (int x = 0; x < W; x++) {
            float v = kind == TOMO_FRAME_DARK   ? (float)DARK
                      : kind == TOMO_FRAME_FLAT ? (float)(DARK + BEAM)
                                                : ms->proj[((size_t)index * ROWS + z0 + z) * W + x];
            dst[(size_t)z * W + x] = v;
        }
    return 0;
}

static void mem_close(void *reader)
{
    (void)reader;
}

static const tomo_scan_reader_ops mem_ops = {mem_read_rows, mem_close};

static void mem_scan_init(mem_scan *ms)
{
    memset(ms, 0, sizeof *ms);
    ms->fail_index = -1;
    tomo_phantom_init(&ms->ph, W, ROWS, (W - 1) / 2.0 + 0.25, 1.0);
    tomo_scan *s = &ms->scan;
    snprintf(s->path, sizeof s->path, "/data/mem-scan");
    snprintf(s->format, sizeof s->format, "memory");
    s->width = W;
    s->rows = ROWS;
    s->n_proj = NPROJ;
    s->n_flat = NFLAT;
    s->n_dark = 1;
    s->n_flat_groups = 2;
    s->proj_angle_deg = calloc(NPROJ, sizeof(double));
    s->proj_time = calloc(NPROJ, sizeof(double));
    s->proj_frame = calloc(NPROJ, sizeof(int));
    s->flat_time = calloc(NFLAT, sizeof(double));
    s->flat_group = calloc(NFLAT, sizeof(int));
    s->flat_frame = calloc(NFLAT, sizeof(int));
    s->ops = &mem_ops;
    s->reader = ms;
    for (int f = 0; f < NFLAT; f++) {
        s->flat_time[f] = f < 2 ? f : NPROJ + f;
        s->flat_group[f] = f < 2 ? 0 : 1;
        s->flat_frame[f] = f < 2 ? f : NPROJ + f;
    }
    ms->proj = malloc((size_t)NPROJ * ROWS * W * sizeof *ms->proj);
    float p[W];
    for (int m = 0; m < NPROJ; m++) {
        s->proj_angle_deg[m] = 180.0 * m / NPROJ;
        s->proj_time[m] = 2 + m;
        s->proj_frame[m] = 2 + m;
        for (int z = 0; z < ROWS; z++) {
            tomo_phantom_project(&ms->ph, z, s->proj_angle_deg[m] * M_PI / 180.0, p);
            for (int x = 0; x < W; x++)
                ms->proj[((size_t)m * ROWS + z) * W + x] = (float)(DARK + BEAM * exp(-p[x]));
        }
    }
}

static void mem_scan_free(mem_scan *ms)
{
    free(ms->proj);
    free(ms->scan.proj_angle_deg);
    free(ms->scan.proj_time);
    free(ms->scan.proj_frame);
    free(ms->scan.flat_time);
    free(ms->scan.flat_group);
    free(ms->scan.flat_frame);
}

/* ---- a sink that keeps the last `capacity` slices, like a small RAM tier ---- */

#define SINK_MAX 64

typedef struct fifo_sink {
    pthread_mutex_t lock;
    int capacity, count;
    tomo_slice *slot[SINK_MAX]; /* oldest first */
} fifo_sink;

static void sink_store(void *ctx, tomo_slice *slice)
{
    fifo_sink *fs = ctx;
    pthread_mutex_lock(&fs->lock);
    if (fs->count == fs->capacity) {
        tomo_slice_unref(fs->slot[0]);
        memmove(fs->slot, fs->slot + 1, (size_t)(fs->count - 1) * sizeof fs->slot[0]);
        fs->count--;
    }
    fs->slot[fs->count++] = tomo_slice_ref(slice);
    pthread_mutex_unlock(&fs->lock);
}

static tomo_slice *sink_lookup(void *ctx, int variant, int z)
{
    fifo_sink *fs = ctx;
    tomo_slice *found = NULL;
    pthread_mutex_lock(&fs->lock);
    for (int i = 0; i < fs->count && !found; i++)
        if (fs->slot[i]->variant == variant && fs->slot[i]->z == z)
            found = tomo_slice_ref(fs->slot[i]);
    pthread_mutex_unlock(&fs->lock);
    return found;
}

static void sink_clear(fifo_sink *fs)
{
    for (int i = 0; i < fs->count; i++)
        tomo_slice_unref(fs->slot[i]);
    fs->count = 0;
}

/* ---- helpers ---- */

static tomo_engine *start(mem_scan *ms, int read_ahead, fifo_sink *fs)
{
    tomo_recon_params params;
    tomo_recon_params_default(&params);
    params.pad = TOMO_PAD_ZERO;
    params.center = ms->ph.center;
    static tomo_recon_params keep[2]; /* must outlive the engine; two engines at most at once */
    static int turn;
    tomo_recon_params *p = &keep[turn++ % 2];
    *p = params;
    tomo_engine_config config;
    tomo_engine_config_default(&config);
    config.device = TOMO_DEVICE_CPU;
    config.threads = 2;
    config.read_ahead = read_ahead;
    tomo_engine_sink sink = {fs, sink_store, sink_lookup};
    tomo_engine *engine = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_engine_create(&ms->scan, p, 1, &config, fs ? &sink : NULL, &engine, &err) < 0)
        fprintf(stderr, "engine: %s\n", err.message);
    return engine;
}

/* Slices [z0, z0 + nz) computed as one chunk; NULL entries on failure (message in err). */
static int compute(tomo_engine *engine, int z0, int nz, tomo_slice **out, tomo_error *err)
{
    tomo_error_clear(err);
    return tomo_engine_compute(engine, 0, z0, nz, out, err);
}

/* Largest difference between the pixels of two slices (INFINITY when one is missing). */
static double max_diff(const tomo_slice *a, const tomo_slice *b)
{
    if (!a || !b || a->size != b->size)
        return INFINITY;
    double d = 0;
    for (size_t i = 0; i < (size_t)a->size * a->size; i++)
        d = fmax(d, fabs((double)a->pixels[i] - b->pixels[i]));
    return d;
}

/*
 * A slice against the phantom inside 0.8 of the circle: the relative error of the mean and
 * the relative RMS error (at 64 pixels and 90 views edges blur: up to 4 % and 0.45).
 */
static void against_truth(const mem_scan *ms, const tomo_slice *s, double *mean_err, double *rms)
{
    float truth[W * W];
    tomo_phantom_truth(&ms->ph, s->z, truth);
    double sum_t = 0, sum_r = 0, num = 0, den = 0, c = ms->ph.center, r = 0.8 * fmin(c, W - 1 - c);
    for (int v = 0; v < W; v++)
        for (int h = 0; h < W; h++) {
            double x = h + 0.5 - 0.5 * W, y = 0.5 * W - v - 0.5;
            if (x * x + y * y > r * r)
                continue;
            double t = truth[v * W + h], e = s->pixels[v * W + h] - t;
            sum_t += t;
            sum_r += s->pixels[v * W + h];
            num += e * e;
            den += t * t;
        }
    *mean_err = fabs(sum_r - sum_t) / sum_t;
    *rms = sqrt(num / den);
}

/* A request answered through a condition variable. */
typedef struct answer_box {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int answered;
    tomo_slice *slice;
    tomo_error err;
} answer_box;

static void answered(void *arg, tomo_slice *slice, const tomo_error *err)
{
    answer_box *box = arg;
    pthread_mutex_lock(&box->lock);
    box->slice = slice ? tomo_slice_ref(slice) : NULL;
    if (err)
        box->err = *err;
    box->answered = 1;
    pthread_cond_signal(&box->cond);
    pthread_mutex_unlock(&box->lock);
}

/* Asks for slice z the way a read of the mount does, and waits for the answer. */
static tomo_slice *request(tomo_engine *engine, int z)
{
    answer_box box = {.answered = 0};
    pthread_mutex_init(&box.lock, NULL);
    pthread_cond_init(&box.cond, NULL);
    tomo_engine_request(engine, 0, z, answered, &box);
    pthread_mutex_lock(&box.lock);
    while (!box.answered)
        pthread_cond_wait(&box.cond, &box.lock);
    pthread_mutex_unlock(&box.lock);
    pthread_mutex_destroy(&box.lock);
    pthread_cond_destroy(&box.cond);
    return box.slice;
}

/* ---- tests ---- */

static mem_scan scan;
static tomo_slice *reference[ROWS]; /* every slice, reconstructed without reading ahead */

static void test_reference(void)
{
    mem_scan_init(&scan);
    tomo_engine *engine = start(&scan, -1, NULL);
    CHECK(engine != NULL);
    if (!engine)
        return;
    tomo_error err;
    CHECK_INT(compute(engine, 0, ROWS, reference, &err), 0);
    for (int z = 2; z < ROWS - 2 && reference[z]; z++) {
        double mean_err, rms;
        against_truth(&scan, reference[z], &mean_err, &rms);
        CHECK(mean_err < 0.06);
        CHECK(rms < 0.5);
    }
    tomo_engine_stats st;
    tomo_engine_get_stats(engine, &st);
    CHECK_INT(st.read_ahead_used, 0);
    tomo_engine_destroy(engine);
}

/* A series of compute calls, as export makes: every chunk after the first was read ahead. */
static void test_compute_series(void)
{
    tomo_engine *engine = start(&scan, 1, NULL);
    if (!engine)
        return;
    /* 12 rows per chunk: read ahead in a piece of 8 rows and one of 4; the last chunk is short */
    int chunks = 0;
    for (int z0 = 0; z0 < ROWS; z0 += 12) {
        int nz = ROWS - z0 < 12 ? ROWS - z0 : 12;
        tomo_slice *got[12] = {0};
        tomo_error err;
        CHECK_INT(compute(engine, z0, nz, got, &err), 0);
        for (int i = 0; i < nz; i++) {
            CHECK(max_diff(got[i], reference[z0 + i]) == 0);
            tomo_slice_unref(got[i]);
        }
        chunks++;
    }
    tomo_engine_stats st;
    tomo_engine_get_stats(engine, &st);
    CHECK_INT(st.read_ahead_used, chunks - 1);
    CHECK_INT(st.errors, 0);
    tomo_engine_destroy(engine); /* with the read ahead of rows 40-... never asked for */
}

/*
 * A chunk that is not the one read ahead: the read-ahead is dropped, the chunk read as
 * usual; a chunk inside what was read ahead (whole pieces) uses it.
 */
static void test_other_chunks(void)
{
    tomo_engine *engine = start(&scan, 1, NULL);
    if (!engine)
        return;
    tomo_error err;
    tomo_slice *got[16] = {0};
    CHECK_INT(compute(engine, 0, 16, got, &err), 0); /* reads 16-31 ahead */
    for (int i = 0; i < 16; i++)
        tomo_slice_unref(got[i]);
    CHECK_INT(compute(engine, 30, 4, got, &err), 0); /* not read ahead: 16-31 dropped */
    for (int i = 0; i < 4; i++) {
        CHECK(max_diff(got[i], reference[30 + i]) == 0);
        tomo_slice_unref(got[i]);
    }
    CHECK_INT(compute(engine, 2, 8, got, &err), 0); /* 34-37 read ahead, dropped */
    for (int i = 0; i < 8; i++) {
        CHECK(max_diff(got[i], reference[2 + i]) == 0);
        tomo_slice_unref(got[i]);
    }
    /* 10-17 read ahead, dropped: the chunk is larger; then 26-39 read ahead in two pieces */
    CHECK_INT(compute(engine, 10, 16, got, &err), 0);
    for (int i = 0; i < 16; i++)
        tomo_slice_unref(got[i]);
    CHECK_INT(compute(engine, 34, 6, got, &err), 0); /* the second piece: used */
    for (int i = 0; i < 6; i++) {
        CHECK(max_diff(got[i], reference[34 + i]) == 0);
        tomo_slice_unref(got[i]);
    }
    tomo_engine_stats st;
    tomo_engine_get_stats(engine, &st);
    CHECK_INT(st.read_ahead_used, 1);
    CHECK_INT(st.read_ahead_dropped, 3);
    CHECK_INT(st.errors, 0);
    tomo_engine_destroy(engine);
}

/*
 * A projection whose rows from 20 on cannot be read: reading them ahead fails without a
 * word; the error reaches the caller only when those slices are asked for.
 */
static void test_read_ahead_failure(void)
{
    tomo_engine *engine = start(&scan, 1, NULL);
    if (!engine)
        return;
    scan.fail_index = 17;
    scan.fail_row = 20;
    tomo_error err;
    tomo_slice *got[8] = {0};
    CHECK_INT(compute(engine, 4, 8, got, &err), 0); /* reads 12-19 ahead */
    for (int i = 0; i < 8; i++)
        tomo_slice_unref(got[i]);
    CHECK_INT(compute(engine, 12, 8, got, &err), 0); /* uses them; 20-27 fail ahead */
    for (int i = 0; i < 8; i++) {
        CHECK(max_diff(got[i], reference[12 + i]) == 0);
        tomo_slice_unref(got[i]);
    }
    tomo_engine_stats st;
    tomo_engine_get_stats(engine, &st);
    CHECK_INT(st.errors, 0);
    CHECK_INT(st.read_ahead_used, 1);
    CHECK_INT(compute(engine, 0, 4, got, &err), 0); /* something else: no error */
    for (int i = 0; i < 4; i++) {
        CHECK(max_diff(got[i], reference[i]) == 0);
        tomo_slice_unref(got[i]);
    }
    CHECK(compute(engine, 20, 8, got, &err) < 0); /* asked for: the reader's own error */
    CHECK_CONTAINS(err.message, "scan/q0018.img: rows from 20 cannot be read");
    for (int i = 0; i < 8; i++)
        CHECK(got[i] == NULL);
    tomo_engine_get_stats(engine, &st);
    CHECK_INT(st.errors, 1);
    scan.fail_index = -1;
    tomo_engine_destroy(engine);
}

/*
 * Requests of consecutive slices, each asked for twice (a file is read in several parts)
 * with a sink that keeps 6 slices: the first chunks outgrow the sink, the engine learns its
 * size, and from then on the chunks fit; every chunk but the first two was read ahead.
 */
static void test_sequential_requests(void)
{
    static fifo_sink fs = {.capacity = 6};
    pthread_mutex_init(&fs.lock, NULL);
    tomo_engine *engine = start(&scan, 1, &fs);
    if (!engine)
        return;
    int wrong = 0;
    for (int z = 0; z < ROWS; z++)
        for (int part = 0; part < 2; part++) {
            tomo_slice *s = request(engine, z);
            wrong += max_diff(s, reference[z]) != 0;
            tomo_slice_unref(s);
        }
    CHECK_INT(wrong, 0);
    tomo_engine_stats st;
    tomo_engine_get_stats(engine, &st);
    /* chunks of 2, 4, 8 (outgrows the sink: at most 4 from then on), a few short chunks to
       refill what the sink dropped, then 4 at a time from slice 16, each read ahead */
    fprintf(stderr, "sequential requests: %d slices computed in %d chunks, %d read ahead\n",
            (int)st.slices, (int)st.chunks, (int)st.read_ahead_used);
    CHECK(st.slices <= ROWS + 12);
    CHECK(st.read_ahead_used >= (ROWS - 16) / 4);
    CHECK_INT(st.errors, 0);
    tomo_engine_destroy(engine);
    sink_clear(&fs);
    pthread_mutex_destroy(&fs.lock);
}

/* A request for another slice while rows are read ahead: answered correctly, nothing leaks. */
static void test_request_during_read_ahead(void)
{
    tomo_engine *engine = start(&scan, 1, NULL);
    if (!engine)
        return;
    tomo_error err;
    tomo_slice *got[8] = {0};
    for (int round = 0; round < 5; round++) {
        CHECK_INT(compute(engine, 8 * round % 32, 8, got, &err), 0);
        for (int i = 0; i < 8; i++)
            tomo_slice_unref(got[i]);
        int z = (37 - 7 * round) % ROWS;
        tomo_slice *s = request(engine, z);
        CHECK(max_diff(s, reference[z]) == 0);
        tomo_slice_unref(s);
    }
    tomo_engine_destroy(engine);
}

static void test_cleanup(void)
{
    for (int z = 0; z < ROWS; z++)
        tomo_slice_unref(reference[z]);
    mem_scan_free(&scan);
}

TOMO_TEST_MAIN(test_reference, test_compute_series, test_other_chunks, test_read_ahead_failure,
               test_sequential_requests, test_request_during_read_ahead, test_cleanup)
