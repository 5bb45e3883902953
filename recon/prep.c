#include "prep.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Keeps I0/num inside double range, so the logarithm of any input is finite. */
#define PREP_CLAMP_MAX 1e300

void tomo_prep_params_default(tomo_prep_params *pp)
{
    pp->floor_counts = TOMO_PREP_FLOOR_DEFAULT;
    pp->black_fraction = TOMO_PREP_BLACK_FRACTION_DEFAULT;
}

void tomo_flat_group_times(const tomo_scan *scan, double *group_time)
{
    /* Few groups and at most a few hundred flats: a pass per group costs nothing. */
    for (int g = 0; g < scan->n_flat_groups; g++) {
        double sum = 0.0;
        int n = 0;
        for (int i = 0; i < scan->n_flat; i++) {
            if (scan->flat_group[i] != g)
                continue;
            sum += scan->flat_time ? scan->flat_time[i] : 0.0;
            n++;
        }
        /* An empty group (never made by the readers) borrows the previous time, which keeps
         * the times ascending. */
        group_time[g] = n ? sum / n : (g ? group_time[g - 1] : 0.0);
    }
}

void tomo_flat_bracket(const double *group_time, int n_groups, double t, int *a, int *b, double *w)
{
    *a = *b = 0;
    *w = 0.0;
    /* Written so that a NaN time selects the first group instead of propagating. */
    if (n_groups <= 1 || !(t >= group_time[0]))
        return;
    if (t >= group_time[n_groups - 1]) {
        /* Nearest group, no extrapolation: a drifting beam extrapolated far past the last
         * flat can produce a reference that is worse than the last measured one. */
        *a = *b = n_groups - 1;
        return;
    }
    int lo = 0;
    for (int i = 1; i < n_groups - 1; i++) {
        if (group_time[i] <= t)
            lo = i;
        else
            break;
    }
    double dt = group_time[lo + 1] - group_time[lo];
    double ww = dt > 0 ? (t - group_time[lo]) / dt : 0.0;
    if (!(ww >= 0))
        ww = 0.0;
    if (ww > 1)
        ww = 1.0;
    *a = lo;
    *b = lo + 1;
    *w = ww;
}

/* Everything the per-frame tasks share. */
typedef struct prep_job {
    const tomo_scan *scan;
    int z0, nz, width;
    size_t npx; /* nz * width */

    /* Reference frames: task 0 is the dark, task 1 + i is needed group i. */
    double *dark;       /* [npx] mean dark */
    double *group_mean; /* [n_needed][npx] mean flat, dark not subtracted */
    int *needed_group;  /* [n_needed] scan flat group of each needed slot */
    int n_needed;

    /* Projection tasks. */
    const int *proj;
    int n_sel;
    int *slot_a, *slot_b; /* [n_sel] index into group_mean for the bracketing groups */
    double *weight;       /* [n_sel] */
    double floor_counts;
    double black_limit;   /* a line with more clipped pixels than this is black */
    int *line_clipped;    /* [nz * n_sel] clipped pixels per (row, projection) line */
    unsigned char *black; /* [nz * n_sel] */
    float *out;
    float *raw_out; /* when set: raw rows [nz][n_sel][width] are copied here, not normalised */

    float *scratch; /* [n_slots][npx] raw frame rows */

    atomic_int failed;
    tomo_error first_err; /* written only by the task that set `failed` */
} prep_job;

static float *slot_scratch(prep_job *job, int slot)
{
    return job->scratch + (size_t)slot * job->npx;
}

/* Records the first failure of a parallel run; later ones are dropped. */
static void record_failure(prep_job *job, int rc, const tomo_error *local, tomo_frame_kind kind,
                           int index)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&job->failed, &expected, 1))
        return;
    int code = local->code != TOMO_OK ? local->code : (rc < 0 ? -rc : TOMO_E_IO);
    tomo_error_clear(&job->first_err);
    if (local->message[0])
        tomo_error_set(&job->first_err, code, "%s", local->message);
    else
        tomo_error_set(&job->first_err, code, "%s: reading %s %d (rows %d-%d) failed",
                       job->scan->path,
                       kind == TOMO_FRAME_DARK   ? "dark"
                       : kind == TOMO_FRAME_FLAT ? "flat"
                                                 : "projection",
                       index, job->z0, job->z0 + job->nz - 1);
}

static int read_frame(prep_job *job, tomo_frame_kind kind, int index, float *dst)
{
    tomo_error local;
    tomo_error_clear(&local);
    int rc = tomo_scan_read_rows(job->scan, kind, index, job->z0, job->nz, dst, &local);
    if (rc != 0) {
        record_failure(job, rc, &local, kind, index);
        return -1;
    }
    return 0;
}

/*
 * Averages the dark frames or the flats of one group. Each task sums its frames in a fixed
 * order, so the result does not depend on the number of threads.
 */
static void reference_task(void *arg, int task, int slot)
{
    prep_job *job = arg;
    if (atomic_load(&job->failed))
        return;
    const tomo_scan *scan = job->scan;
    float *raw = slot_scratch(job, slot);
    double *acc;
    tomo_frame_kind kind;
    int group = -1;
    if (task == 0) {
        acc = job->dark;
        kind = TOMO_FRAME_DARK;
    } else {
        acc = job->group_mean + (size_t)(task - 1) * job->npx;
        kind = TOMO_FRAME_FLAT;
        group = job->needed_group[task - 1];
    }
    for (size_t i = 0; i < job->npx; i++)
        acc[i] = 0.0;
    int n_frames = kind == TOMO_FRAME_DARK ? scan->n_dark : scan->n_flat;
    int used = 0;
    for (int f = 0; f < n_frames; f++) {
        if (kind == TOMO_FRAME_FLAT && scan->flat_group[f] != group)
            continue;
        if (read_frame(job, kind, f, raw) < 0)
            return;
        for (size_t i = 0; i < job->npx; i++)
            acc[i] += raw[i];
        used++;
    }
    if (used > 1) {
        double inv = 1.0 / used;
        for (size_t i = 0; i < job->npx; i++)
            acc[i] *= inv;
    }
}

static void projection_task(void *arg, int k, int slot)
{
    prep_job *job = arg;
    if (atomic_load(&job->failed))
        return;
    int m = job->proj ? job->proj[k] : k;
    float *raw = slot_scratch(job, slot);
    int width = job->width;
    if (job->raw_out) {
        if (read_frame(job, TOMO_FRAME_PROJECTION, m, raw) < 0)
            return;
        for (int z = 0; z < job->nz; z++)
            memcpy(job->raw_out + ((size_t)z * (size_t)job->n_sel + (size_t)k) * (size_t)width,
                   raw + (size_t)z * (size_t)width, (size_t)width * sizeof *raw);
        return;
    }
    if (read_frame(job, TOMO_FRAME_PROJECTION, m, raw) < 0)
        return;

    const double *ga = job->group_mean + (size_t)job->slot_a[k] * job->npx;
    const double *gb = job->group_mean + (size_t)job->slot_b[k] * job->npx;
    double w = job->weight[k], w1 = 1.0 - w;
    double fl = job->floor_counts;
    for (int z = 0; z < job->nz; z++) {
        size_t row = (size_t)z * (size_t)width;
        float *dst = job->out + ((size_t)z * (size_t)job->n_sel + (size_t)k) * (size_t)width;
        int clipped = 0;
        for (int x = 0; x < width; x++) {
            size_t i = row + (size_t)x;
            double d = job->dark[i];
            double i0 = w1 * ga[i] + w * gb[i] - d;
            double num = (double)raw[i] - d;
            int clip = 0;
            /* The negated comparisons also catch NaN. */
            if (!(num >= fl)) {
                num = fl;
                clip = 1;
            }
            if (!(i0 >= fl)) {
                i0 = fl;
                clip = 1;
            }
            if (num > PREP_CLAMP_MAX)
                num = PREP_CLAMP_MAX;
            if (i0 > PREP_CLAMP_MAX)
                i0 = PREP_CLAMP_MAX;
            clipped += clip;
            dst[x] = (float)log(i0 / num);
        }
        size_t line = (size_t)z * (size_t)job->n_sel + (size_t)k;
        job->line_clipped[line] = clipped;
        job->black[line] = clipped > job->black_limit;
    }
}

/* Replaces each black line by the mean of the good lines of its row (zeros if none). */
static long replace_black_lines(prep_job *job)
{
    long n_black = 0;
    int width = job->width, n_sel = job->n_sel;
    double *mean = NULL;
    for (int z = 0; z < job->nz; z++) {
        const unsigned char *black = job->black + (size_t)z * (size_t)n_sel;
        float *rowbase = job->out + (size_t)z * (size_t)n_sel * (size_t)width;
        int n_good = 0, n_bad = 0;
        for (int k = 0; k < n_sel; k++) {
            if (black[k])
                n_bad++;
            else
                n_good++;
        }
        if (!n_bad)
            continue;
        n_black += n_bad;
        if (n_good == 0) {
            memset(rowbase, 0, (size_t)n_sel * (size_t)width * sizeof *rowbase);
            continue;
        }
        if (!mean) {
            mean = malloc((size_t)width * sizeof *mean);
            if (!mean)
                return -1;
        }
        for (int x = 0; x < width; x++)
            mean[x] = 0.0;
        for (int k = 0; k < n_sel; k++) {
            if (black[k])
                continue;
            const float *src = rowbase + (size_t)k * (size_t)width;
            for (int x = 0; x < width; x++)
                mean[x] += src[x];
        }
        double inv = 1.0 / n_good;
        for (int k = 0; k < n_sel; k++) {
            if (!black[k])
                continue;
            float *dst = rowbase + (size_t)k * (size_t)width;
            for (int x = 0; x < width; x++)
                dst[x] = (float)(mean[x] * inv);
        }
    }
    free(mean);
    return n_black;
}

static int check_args(const tomo_scan *scan, const tomo_prep_params *pp, const int *proj, int n_sel,
                      int z0, int nz, const float *out, tomo_error *err)
{
    if (!scan || !out || !scan->ops || !scan->ops->read_rows)
        return tomo_error_set(err, TOMO_E_INTERNAL, "tomo_prep_rows: missing scan or output");
    if (!(pp->floor_counts > 0) || !isfinite(pp->floor_counts))
        return tomo_error_set(err, TOMO_E_INVALID, "floor %g counts: must be a positive number",
                              pp->floor_counts);
    if (!(pp->black_fraction > 0 && pp->black_fraction <= 1))
        return tomo_error_set(err, TOMO_E_INVALID, "black fraction %g: must be in (0, 1]",
                              pp->black_fraction);
    if (scan->width <= 0 || scan->rows <= 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: empty detector (%d x %d)", scan->path,
                              scan->width, scan->rows);
    if (nz <= 0 || z0 < 0 || z0 > scan->rows - nz)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: rows %d-%d are outside the detector (%d rows)", scan->path, z0,
                              z0 + nz - 1, scan->rows);
    if (n_sel <= 0 || (!proj && n_sel > scan->n_proj))
        return tomo_error_set(err, TOMO_E_INVALID, "%s: %d projections selected of %d", scan->path,
                              n_sel, scan->n_proj);
    if (proj) {
        for (int k = 0; k < n_sel; k++)
            if (proj[k] < 0 || proj[k] >= scan->n_proj)
                return tomo_error_set(err, TOMO_E_INVALID,
                                      "%s: projection %d does not exist (%d projections)",
                                      scan->path, proj[k], scan->n_proj);
    }
    if (scan->n_flat <= 0 || scan->n_flat_groups <= 0)
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: the scan has no flat-field frames",
                              scan->path);
    for (int f = 0; f < scan->n_flat; f++)
        if (scan->flat_group[f] < 0 || scan->flat_group[f] >= scan->n_flat_groups)
            return tomo_error_set(err, TOMO_E_INTERNAL, "%s: flat %d is in group %d of %d",
                                  scan->path, f, scan->flat_group[f], scan->n_flat_groups);
    return 0;
}

/* Copies the averaged references of a raw read into `refs`, indexed by scan flat group. */
static int hand_over_refs(const prep_job *job, const int *group_a, const int *group_b, int ng,
                          tomo_prep_refs *refs, tomo_error *err)
{
    size_t npx = job->npx;
    refs->nz = job->nz;
    refs->width = job->width;
    refs->n_groups = ng;
    refs->dark = malloc(npx * sizeof *refs->dark);
    refs->group_mean = calloc((size_t)ng * npx, sizeof *refs->group_mean);
    refs->flat_a = malloc((size_t)job->n_sel * sizeof *refs->flat_a);
    refs->flat_b = malloc((size_t)job->n_sel * sizeof *refs->flat_b);
    refs->flat_w = malloc((size_t)job->n_sel * sizeof *refs->flat_w);
    if (!refs->dark || !refs->group_mean || !refs->flat_a || !refs->flat_b || !refs->flat_w) {
        tomo_prep_refs_free(refs);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory for reference rows");
    }
    memcpy(refs->dark, job->dark, npx * sizeof *refs->dark);
    for (int s = 0; s < job->n_needed; s++)
        memcpy(refs->group_mean + (size_t)job->needed_group[s] * npx,
               job->group_mean + (size_t)s * npx, npx * sizeof *refs->group_mean);
    for (int k = 0; k < job->n_sel; k++) {
        refs->flat_a[k] = group_a[k];
        refs->flat_b[k] = group_b[k];
        refs->flat_w[k] = job->weight[k];
    }
    return 0;
}

/*
 * Reads and averages the reference frames, then reads every selected projection: normalised
 * into `out`, or with `raw_out` copied raw and the references handed over in `refs`.
 */
static int prep_run(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pool *pool,
                    const int *proj, int n_sel, int z0, int nz, float *out, float *raw_out,
                    tomo_prep_refs *refs, tomo_prep_stats *stats, tomo_error *err)
{
    tomo_prep_params defaults;
    if (!pp) {
        tomo_prep_params_default(&defaults);
        pp = &defaults;
    }
    int rc = check_args(scan, pp, proj, n_sel, z0, nz, out ? out : raw_out, err);
    if (rc < 0)
        return rc;

    int ng = scan->n_flat_groups;
    int n_slots = tomo_pool_size(pool);
    prep_job *job = calloc(1, sizeof *job);
    double *group_time = malloc((size_t)ng * sizeof *group_time);
    int *slot_of_group = malloc((size_t)ng * sizeof *slot_of_group);
    int *group_a = malloc((size_t)n_sel * sizeof *group_a);
    int *group_b = malloc((size_t)n_sel * sizeof *group_b);
    if (!job || !group_time || !slot_of_group || !group_a || !group_b) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory preparing %d projections", n_sel);
        goto out;
    }
    job->scan = scan;
    job->z0 = z0;
    job->nz = nz;
    job->width = scan->width;
    job->npx = (size_t)nz * (size_t)scan->width;
    job->proj = proj;
    job->n_sel = n_sel;
    job->floor_counts = pp->floor_counts;
    job->black_limit = pp->black_fraction * scan->width;
    job->out = out;
    job->raw_out = raw_out;
    atomic_init(&job->failed, 0);
    tomo_error_clear(&job->first_err);

    job->slot_a = malloc((size_t)n_sel * sizeof *job->slot_a);
    job->slot_b = malloc((size_t)n_sel * sizeof *job->slot_b);
    job->weight = malloc((size_t)n_sel * sizeof *job->weight);
    job->needed_group = malloc((size_t)ng * sizeof *job->needed_group);
    size_t n_lines = (size_t)nz * (size_t)n_sel;
    job->line_clipped = malloc(n_lines * sizeof *job->line_clipped);
    job->black = malloc(n_lines);
    if (!job->slot_a || !job->slot_b || !job->weight || !job->needed_group || !job->line_clipped ||
        !job->black) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory preparing %d projections", n_sel);
        goto out;
    }

    /* Only the flat groups that some selected projection actually weighs are read. */
    tomo_flat_group_times(scan, group_time);
    for (int g = 0; g < ng; g++)
        slot_of_group[g] = 0;
    for (int k = 0; k < n_sel; k++) {
        int m = proj ? proj[k] : k;
        double t = scan->proj_time ? scan->proj_time[m] : 0.0;
        double w;
        tomo_flat_bracket(group_time, ng, t, &group_a[k], &group_b[k], &w);
        /* A group with zero weight is neither read nor allowed to leak a NaN through 0 * NaN. */
        if (w == 1.0) {
            group_a[k] = group_b[k];
            w = 0.0;
        }
        if (w == 0.0)
            group_b[k] = group_a[k];
        job->weight[k] = w;
        slot_of_group[group_a[k]] = 1;
        slot_of_group[group_b[k]] = 1;
    }
    for (int g = 0; g < ng; g++) {
        if (!slot_of_group[g]) {
            slot_of_group[g] = -1;
            continue;
        }
        slot_of_group[g] = job->n_needed;
        job->needed_group[job->n_needed++] = g;
    }
    for (int k = 0; k < n_sel; k++) {
        job->slot_a[k] = slot_of_group[group_a[k]];
        job->slot_b[k] = slot_of_group[group_b[k]];
    }

    job->dark = malloc(job->npx * sizeof *job->dark);
    job->group_mean = malloc((size_t)job->n_needed * job->npx * sizeof *job->group_mean);
    job->scratch = malloc((size_t)n_slots * job->npx * sizeof *job->scratch);
    if (!job->dark || !job->group_mean || !job->scratch) {
        rc = tomo_error_set(err, TOMO_E_NOMEM,
                            "out of memory for the flat and dark rows of %d x %d pixels", nz,
                            scan->width);
        goto out;
    }

    tomo_pool_run(pool, 1 + job->n_needed, reference_task, job);
    if (!atomic_load(&job->failed))
        tomo_pool_run(pool, n_sel, projection_task, job);
    if (atomic_load(&job->failed)) {
        rc = tomo_error_set(err, job->first_err.code, "%s", job->first_err.message);
        goto out;
    }

    if (raw_out) {
        rc = hand_over_refs(job, group_a, group_b, ng, refs, err);
        goto out;
    }

    long n_black = replace_black_lines(job);
    if (n_black < 0) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory replacing black lines");
        goto out;
    }
    if (stats) {
        long clipped = 0;
        for (size_t i = 0; i < n_lines; i++)
            clipped += job->line_clipped[i];
        stats->clipped_pixels += clipped;
        stats->black_lines += n_black;
    }
    rc = 0;

out:
    if (job) {
        free(job->slot_a);
        free(job->slot_b);
        free(job->weight);
        free(job->needed_group);
        free(job->line_clipped);
        free(job->black);
        free(job->dark);
        free(job->group_mean);
        free(job->scratch);
        free(job);
    }
    free(group_time);
    free(slot_of_group);
    free(group_a);
    free(group_b);
    return rc;
}

int tomo_prep_rows(const tomo_scan *scan, const tomo_prep_params *pp, tomo_pool *pool,
                   const int *proj, int n_sel, int z0, int nz, float *out, tomo_prep_stats *stats,
                   tomo_error *err)
{
    return prep_run(scan, pp, pool, proj, n_sel, z0, nz, out, NULL, NULL, stats, err);
}

int tomo_prep_raw_rows(const tomo_scan *scan, tomo_pool *pool, int z0, int nz, float *raw,
                       tomo_prep_refs *refs, tomo_error *err)
{
    memset(refs, 0, sizeof *refs);
    return prep_run(scan, NULL, pool, NULL, scan->n_proj, z0, nz, NULL, raw, refs, NULL, err);
}

void tomo_prep_refs_free(tomo_prep_refs *refs)
{
    free(refs->dark);
    free(refs->group_mean);
    free(refs->flat_a);
    free(refs->flat_b);
    free(refs->flat_w);
    memset(refs, 0, sizeof *refs);
}
