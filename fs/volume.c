#include "volume.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/hash.h"
#include "../common/log.h"
#include "../denoise/model.h"
#include "../denoise/serve.h"

/* The denoiser of a volume: its model, and the thread that serves denoised/. */
struct tomo_volume_denoiser {
    tomo_model *model;
    tomo_n2i *n2i;        /* created by the thread at the first slice */
    tomo_error n2i_error; /* why it could not be, then every slice fails with it */
    unsigned char *mask;  /* the reconstruction circle */
    /*
     * The split slices of the last denoised slice, [K * C]: a reader moving through the
     * volume needs K new ones per slice instead of K * C, however small the RAM tier is.
     * Touched by the denoiser's thread only.
     */
    tomo_slice **window;

    pthread_mutex_t lock; /* the queue */
    pthread_cond_t wake;
    struct denoise_job *jobs;   /* queued or running, oldest first */
    pthread_mutex_t issue_lock; /* held while the thread asks for split slices */
    int stopping;               /* set with both locks held */
    atomic_int cancel;          /* set with stopping: ends a slice between network passes */
    pthread_t thread;
    int thread_started;
};

/* Computes a slice that no cache tier holds: the engine, or the denoiser for denoised/. */
static void compute(tomo_volume *vol, int variant, int z, tomo_engine_done_fn done, void *arg);

void tomo_volume_options_default(tomo_volume_options *opts)
{
    memset(opts, 0, sizeof *opts);
    tomo_recon_params_default(&opts->params);
    opts->ram_cache_bytes = (uint64_t)1 << 30;
    opts->cache_bytes = TOMO_STORE_DEFAULT_CAPACITY;
    opts->cache_level = 1;
    opts->threads = 0;
    opts->max_chunk = 32;
    opts->device = TOMO_DEVICE_AUTO;
    opts->precision = TOMO_PRECISION_FAST;
    tomo_rings_params_default(&opts->rings);
    opts->rings.method = TOMO_RINGS_SORT;
    opts->splits = 2;
    opts->dtype = TOMO_SAMPLE_FLOAT32;
    opts->range_lo = NAN;
    opts->range_hi = NAN;
}

/* ---- a growing text buffer for scan.json ---- */

typedef struct text {
    char *buf;
    size_t len, cap;
    int failed;
} text;

static void text_add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->buf && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < t->len + (size_t)n + 1)
            cap *= 2;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

static void text_add_json_string(text *t, const char *s)
{
    text_add(t, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            text_add(t, "\\%c", ch);
        else if (ch < 0x20)
            text_add(t, "\\u%04x", ch);
        else
            text_add(t, "%c", ch);
    }
    text_add(t, "\"");
}

/*
 * The files of a variant in scan.json: how many, their sample type and range, their geometry
 * (micrometres; x along the rows, y down the columns, z along the slices, the centre of the
 * first pixel at origin_um), the key of their bytes, the volume file, and the centres of a
 * sweep.
 */
static void add_output_json(text *t, const tomo_volume *vol, int v)
{
    const tomo_volume_variant *var = &vol->variants[v];
    char first[80], last[80];
    tomo_volume_file_name(vol, v, 0, first, sizeof first);
    tomo_volume_file_name(vol, v, var->n_slices - 1, last, sizeof last);
    text_add(t,
             ", \"files\": %d, \"first_file\": \"%s\", \"last_file\": \"%s\", "
             "\"dtype\": \"%s\", \"pixel_um\": %.9g, \"slice_spacing_um\": %.9g, "
             "\"origin_um\": [%.9g, %.9g, %.9g], \"file_key\": \"%016llx\"",
             var->n_slices, first, last, tomo_sample_name(var->dtype), var->pixel_um,
             var->spacing_um, var->origin_um[0], var->origin_um[1], var->origin_um[2],
             (unsigned long long)var->file_key);
    if (var->dtype == TOMO_SAMPLE_UINT16)
        text_add(t,
                 ", \"range\": [%.9g, %.9g], \"range_source\": \"%s\", "
                 "\"value\": \"cm^-1 = %.9g + sample * %.17g\"",
                 var->lo, var->hi, var->range_automatic ? "automatic" : "option", var->lo,
                 (var->hi - var->lo) / 65535.0);
    if (var->volume_size)
        text_add(t,
                 ", \"volume\": {\"file\": \"volumes/%s\", \"bytes\": %llu, "
                 "\"header_bytes\": %d, \"sizes\": [%d, %d, %d], \"type\": \"%s\", "
                 "\"endian\": \"little\"}",
                 var->volume_name, (unsigned long long)var->volume_size, TOMO_NRRD_HEADER_BYTES,
                 var->size, var->size, var->n_slices, tomo_sample_name(var->dtype));
    const tomo_center_sweep *sw = &var->params.sweep;
    if (sw->count > 0) {
        tomo_center_sweep step = *sw;
        step.first = sw->step;
        text_add(t,
                 ", \"center_search\": {\"slice\": %d, \"first\": %.*f, \"last\": %.*f, "
                 "\"step\": %.*f, \"count\": %d}",
                 sw->slice, sw->decimals, tomo_recon_sweep_center(sw, 0), sw->decimals,
                 tomo_recon_sweep_center(sw, sw->count - 1), sw->decimals,
                 tomo_recon_sweep_center(&step, 0), sw->count);
    }
}

static int build_scan_json(tomo_volume *vol, tomo_error *err)
{
    const tomo_scan *scan = vol->scan;
    text t = {0};
    double first = scan->proj_angle_deg[0];
    double last = scan->proj_angle_deg[scan->n_proj - 1];
    double min_step = INFINITY, max_step = 0;
    for (int m = 1; m < scan->n_proj; m++) {
        double step = scan->proj_angle_deg[m] - scan->proj_angle_deg[m - 1];
        min_step = step < min_step ? step : min_step;
        max_step = step > max_step ? step : max_step;
    }
    if (scan->n_proj < 2)
        min_step = max_step = 0;
    const tomo_recon_params *p0 = &vol->variants[0].params;

    text_add(&t, "{\n  \"software\": \"tomofs %s\",\n", TOMOFS_VERSION);
    text_add(&t, "  \"scan\": {\n    \"path\": ");
    text_add_json_string(&t, scan->path);
    text_add(&t, ",\n    \"format\": ");
    text_add_json_string(&t, scan->format);
    text_add(&t, ",\n    \"fingerprint\": \"%016llx\"\n  },\n",
             (unsigned long long)scan->fingerprint);
    text_add(&t, "  \"detector\": {\"width\": %d, \"rows\": %d, \"pixel_um\": %.6f},\n",
             scan->width, scan->rows, p0->pixel_um);
    text_add(&t,
             "  \"projections\": {\"count\": %d, \"first_angle_deg\": %.6f, "
             "\"last_angle_deg\": %.6f, \"range_deg\": %.6f, \"mean_step_deg\": %.6f, "
             "\"min_step_deg\": %.6f, \"max_step_deg\": %.6f},\n",
             scan->n_proj, first, last, last - first,
             scan->n_proj > 1 ? (last - first) / (scan->n_proj - 1) : 0.0, min_step, max_step);
    char runs[512];
    text_add(&t, "  \"source\": {\"files\": ");
    text_add_json_string(&t, scan->source);
    text_add(&t, ", \"angles\": ");
    text_add_json_string(&t, scan->angle_source);
    text_add(&t, ", \"time_basis\": ");
    text_add_json_string(&t, scan->time_basis[0] ? scan->time_basis : "none");
    text_add(&t, "},\n");
    tomo_frame_runs(scan->flat_frame, scan->n_flat, runs, sizeof runs);
    text_add(&t, "  \"flats\": {\"count\": %d, \"groups\": %d, \"frames\": ", scan->n_flat,
             scan->n_flat_groups);
    text_add_json_string(&t, runs);
    double *group_time = malloc((size_t)scan->n_flat_groups * sizeof *group_time);
    if (group_time) {
        tomo_flat_group_times(scan, group_time);
        text_add(&t, ", \"group_times\": [");
        for (int g = 0; g < scan->n_flat_groups; g++)
            text_add(&t, "%s%.6f", g ? ", " : "", group_time[g]);
        text_add(&t, "]");
        free(group_time);
    }
    text_add(&t, "},\n");
    text_add(&t, "  \"darks\": {\"count\": %d", scan->n_dark);
    if (scan->dark_frame) {
        tomo_frame_runs(scan->dark_frame, scan->n_dark, runs, sizeof runs);
        text_add(&t, ", \"frames\": ");
        text_add_json_string(&t, runs);
    }
    text_add(&t, "},\n");
    text_add(&t, "  \"center\": %.6f,\n  \"center_source\": \"%s\",\n", p0->center,
             vol->center_automatic ? "automatic" : "option");
    text_add(&t, "  \"units\": \"cm^-1\",\n  \"slices\": %d,\n  \"variants\": {\n", scan->rows);
    int listed = 0;
    for (int v = 0; v < vol->n_variants; v++) {
        const tomo_volume_variant *var = &vol->variants[v];
        if (var->hidden)
            continue;
        text_add(&t,
                 "%s    \"%s\": {\"filter\": \"%s\", \"pad\": \"%s\", \"bin\": %d, "
                 "\"slice_size\": %d, \"file_bytes\": %llu, \"floor_counts\": %.6f, "
                 "\"black_fraction\": %.6f, \"key\": \"%016llx\", \"parameters\": ",
                 listed++ ? ",\n" : "", var->name, tomo_filter_name(var->params.filter),
                 var->params.pad == TOMO_PAD_EDGE ? "edge" : "zero", var->params.bin, var->size,
                 (unsigned long long)var->file_size, var->params.prep.floor_counts,
                 var->params.prep.black_fraction, (unsigned long long)var->key);
        text_add_json_string(&t, var->params_text);
        add_output_json(&t, vol, v);
        text_add(&t, "}");
    }
    text_add(&t, "\n  },\n");
    text_add(&t, "  \"denoising\": {\"method\": \"noise2inverse\", \"splits\": %d, \"base\": ",
             vol->n_splits);
    text_add_json_string(&t, vol->variants[vol->base_variant].name);
    text_add(&t, ", \"model\": ");
    if (vol->model_path[0])
        text_add_json_string(&t, vol->model_path);
    else
        text_add(&t, "null");
    if (vol->denoiser)
        text_add(&t, ", \"model_loaded\": true, \"model_id\": \"%016llx\", \"epochs\": %d}\n",
                 (unsigned long long)vol->denoiser->model->id, vol->denoiser->model->epoch);
    else
        text_add(&t, ", \"model_loaded\": false}\n");
    text_add(&t, "}\n");
    if (t.failed) {
        free(t.buf);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory writing scan.json");
    }
    vol->scan_json = t.buf;
    vol->scan_json_len = t.len;
    return 0;
}

static int digits_of(int n)
{
    int d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* The variant's key: a hash of the scan fingerprint, its name and its parameter text. */
static void set_key(const tomo_volume *vol, tomo_volume_variant *var)
{
    uint64_t h = tomo_hash_u64(TOMO_HASH_INIT, vol->scan->fingerprint);
    h = tomo_hash_bytes(h, var->name, strlen(var->name));
    var->key = tomo_hash_bytes(h, var->params_text, strlen(var->params_text));
}

static tomo_volume_variant *add_variant(tomo_volume *vol, const char *name,
                                        const tomo_recon_params *params)
{
    tomo_volume_variant *var = &vol->variants[vol->n_variants++];
    snprintf(var->name, sizeof var->name, "%s", name);
    var->params = *params;
    tomo_recon_params_text(params, var->params_text, sizeof var->params_text);
    set_key(vol, var);
    var->size = tomo_recon_slice_size(vol->scan, params); /* files: setup_outputs() */
    return var;
}

/* The K Noise2Inverse splits of the base variant, as internal variants. */
static int add_splits(tomo_volume *vol, int K, tomo_error *err)
{
    if (K < 2 || K > TOMO_VOLUME_MAX_SPLITS || K > vol->scan->n_proj)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "splits=%d: Noise2Inverse needs 2 to %d projection subsets, and "
                              "at most one per projection (the scan has %d)",
                              K, TOMO_VOLUME_MAX_SPLITS, vol->scan->n_proj);
    if (vol->n_variants + K > TOMO_VOLUME_MAX_VARIANTS)
        return tomo_error_set(err, TOMO_E_INTERNAL, "too many variants");
    vol->n_splits = K;
    vol->split_variant0 = vol->n_variants;
    for (int k = 0; k < K; k++) {
        tomo_recon_params params = vol->variants[vol->base_variant].params;
        params.split_index = k;
        params.split_count = K;
        char name[32];
        snprintf(name, sizeof name, "split_%d_of_%d", k, K);
        add_variant(vol, name, &params)->hidden = 1;
    }
    return 0;
}

/* centre-search/: slices/ reconstructed at each centre of the sweep given by -o center_search. */
static int add_center_search(tomo_volume *vol, tomo_error *err)
{
    if (vol->opts.center_search.count <= 0)
        return 0;
    if (vol->n_variants >= TOMO_VOLUME_MAX_VARIANTS)
        return tomo_error_set(err, TOMO_E_INTERNAL, "too many variants");
    tomo_recon_params params = vol->variants[0].params;
    params.sweep = vol->opts.center_search;
    params.center = tomo_recon_sweep_center(&params.sweep, 0);
    const tomo_center_sweep *sw = &params.sweep;
    double last = tomo_recon_sweep_center(sw, sw->count - 1);
    int n_slices = tomo_recon_slice_count(vol->scan, &vol->variants[0].params);
    if (!(params.center > 0 && last < vol->scan->width - 1))
        return tomo_error_set(err, TOMO_E_INVALID,
                              "center_search: centres %.*f to %.*f must lie inside the detector "
                              "(0 to %d columns)",
                              sw->decimals, params.center, sw->decimals, last,
                              vol->scan->width - 1);
    if (sw->slice >= n_slices)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "center_search: slice %d is outside the volume (slices/ has %d)",
                              sw->slice, n_slices);
    int rc = tomo_recon_resolve(vol->scan, &params, err);
    if (rc < 0)
        return rc;
    add_variant(vol, "centre-search", &params);
    return 0;
}

/* x * 10^d as an integer, if it is one (to rounding); -1 otherwise. */
static int scaled_integer(double x, int d, long long *out)
{
    double y = x * pow(10.0, d);
    if (!(fabs(y) < 9e15))
        return -1;
    long long r = llround(y);
    if (fabs(y - (double)r) > 1e-6 * fmax(1.0, fabs(y)))
        return -1;
    *out = r;
    return 0;
}

int tomo_volume_parse_center_search(const char *text, tomo_center_sweep *sweep, tomo_error *err)
{
    char *end;
    double v[4];
    const char *at = text;
    for (int i = 0; i < 4; i++) {
        v[i] = strtod(at, &end);
        if (end == at || !isfinite(v[i]) || *end != (i < 3 ? ':' : '\0'))
            return tomo_error_set(err, TOMO_E_INVALID,
                                  "expected Z:FROM:TO:STEP, e.g. 600:1020:1030:0.5 (slice 600, "
                                  "centres 1020 to 1030 by 0.5 columns)");
        at = end + 1;
    }
    if (v[0] < 0 || v[0] > 1e8 || v[0] != floor(v[0]))
        return tomo_error_set(err, TOMO_E_INVALID, "the slice Z must be a whole number >= 0");
    if (!(v[3] > 0) || v[2] < v[1])
        return tomo_error_set(err, TOMO_E_INVALID, "needs FROM <= TO and a positive STEP");
    int d = 2;
    long long first, last, step;
    while (d <= 6 && (scaled_integer(v[1], d, &first) < 0 || scaled_integer(v[2], d, &last) < 0 ||
                      scaled_integer(v[3], d, &step) < 0))
        d++;
    if (d > 6)
        return tomo_error_set(err, TOMO_E_INVALID, "centres take at most six decimals");
    if (step < 1 || (last - first) / step >= 10000)
        return tomo_error_set(err, TOMO_E_INVALID, "at most 10000 centres");
    *sweep = (tomo_center_sweep){.count = (int)((last - first) / step) + 1,
                                 .slice = (int)v[0],
                                 .first = first,
                                 .step = step,
                                 .decimals = d};
    return 0;
}

/* ---- the uint16 range ---- */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* "%.6g" of v, read back: the value every file states. */
static double printed(double v)
{
    char text[64];
    snprintf(text, sizeof text, "%.6g", v);
    return strtod(text, NULL);
}

void tomo_volume_auto_range(float *values, size_t n, double *lo, double *hi)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(values[i]))
            values[m++] = values[i];
    double a = 0, b = 1;
    if (m > 0) {
        qsort(values, m, sizeof *values, cmp_float);
        a = values[(size_t)(0.001 * (double)(m - 1))];
        b = values[(size_t)(0.999 * (double)(m - 1))];
    }
    double w = b - a;
    if (!(w > 0))
        w = fabs(a) > 0 ? fabs(a) : 1.0; /* constant values */
    a -= 0.1 * w;
    b += 0.1 * w;
    double q = pow(10.0, floor(log10(b - a)) - 2);
    *lo = printed(floor(a / q) * q);
    *hi = printed(ceil(b / q) * q);
    if (!(*hi > *lo))
        *hi = printed(*lo + q);
}

/*
 * The reconstruction circle of S x S slices of pixel `bin` from a detector N columns wide, axis
 * at `center`, as recon/backproject.h defines it: 1 inside, 0 outside. NULL when out of memory.
 */
static unsigned char *circle_mask(int N, int S, int bin, double center)
{
    double r = fmin(center, (double)(N - 1) - center);
    unsigned char *mask = malloc((size_t)S * (size_t)S);
    if (!mask)
        return NULL;
    for (int v = 0; v < S; v++) {
        double y = 0.5 * N - (v + 0.5) * bin;
        for (int h = 0; h < S; h++) {
            double x = (h + 0.5) * bin - 0.5 * N;
            mask[(size_t)v * S + h] = x * x + y * y <= r * r;
        }
    }
    return mask;
}

/*
 * The automatic range of a mount: from 5 slices of slices/ spread evenly over the volume
 * (the centres of five equal parts), reconstructed on the CPU on a coarser grid (the
 * smallest multiple of bin that divides the width and gives at most 512 pixels; the values
 * are samples of the same reconstruction, so their distribution is the same), pixels inside
 * the reconstruction circle only. A temporary engine does it; its threads end before the
 * daemon forks. The CPU's results do not depend on the number of threads, so the range, and
 * so every file header, is the same at every mount of the scan with these options.
 */
static int sample_range(tomo_volume *vol, double *lo, double *hi, tomo_error *err)
{
    const tomo_scan *scan = vol->scan;
    tomo_recon_params p = vol->variants[0].params;
    int N = scan->width, b = p.bin;
    for (int m = p.bin; m <= N; m += p.bin)
        if (N % m == 0 && N / m <= 512) {
            b = m;
            break;
        }
    p.bin = b;
    int S = N / b, count = tomo_recon_slice_count(scan, &p), K = count < 5 ? count : 5;
    float *values = malloc((size_t)K * (size_t)S * (size_t)S * sizeof *values);
    unsigned char *inside = circle_mask(N, S, b, p.center);
    if (!values || !inside) {
        free(values);
        free(inside);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory sampling the uint16 range");
    }
    tomo_engine_config cfg;
    tomo_engine_config_default(&cfg);
    cfg.device = TOMO_DEVICE_CPU;
    cfg.threads = vol->opts.threads;
    tomo_engine *engine = NULL;
    int rc = tomo_engine_create(scan, &p, 1, &cfg, NULL, &engine, err);
    size_t n = 0;
    for (int k = 0; k < K && rc >= 0; k++) {
        int z = (int)((2L * k + 1) * count / (2L * K));
        tomo_slice *slice;
        rc = tomo_engine_compute(engine, 0, z, 1, &slice, err);
        if (rc < 0)
            break;
        for (size_t i = 0; i < (size_t)S * (size_t)S; i++)
            if (inside[i])
                values[n++] = slice->pixels[i];
        tomo_slice_unref(slice);
    }
    tomo_engine_destroy(engine);
    if (rc >= 0) {
        tomo_volume_auto_range(values, n, lo, hi);
        tomo_log_info("%s: uint16 range %g to %g cm^-1 (automatic, from %d slices)", scan->path,
                      *lo, *hi, K);
    }
    free(values);
    free(inside);
    return rc < 0 ? rc : 0;
}

/* What every variant's files are: sample type, range, names, sizes, the volume file. */
static int setup_outputs(tomo_volume *vol, tomo_error *err)
{
    const tomo_volume_options *o = &vol->opts;
    double lo = 0, hi = 0;
    int automatic = 0;
    if (o->dtype == TOMO_SAMPLE_UINT16) {
        if (isfinite(o->range_lo) && isfinite(o->range_hi)) {
            lo = o->range_lo;
            hi = o->range_hi;
            if (!(lo < hi))
                return tomo_error_set(err, TOMO_E_INVALID,
                                      "range=%g:%g: the low end must be below the high end", lo,
                                      hi);
        } else {
            int rc = sample_range(vol, &lo, &hi, err);
            if (rc < 0)
                return rc;
            automatic = 1;
        }
    }
    for (int v = 0; v < vol->n_variants; v++) {
        tomo_volume_variant *var = &vol->variants[v];
        const tomo_recon_params *p = &var->params;
        int zb = p->zbin > 1 ? p->zbin : 1;
        var->n_slices = tomo_recon_slice_count(vol->scan, p);
        var->dtype = o->dtype;
        var->lo = lo;
        var->hi = hi;
        var->range_automatic = automatic;
        var->pixel_um = p->pixel_um * p->bin;
        var->spacing_um = p->pixel_um * zb;
        var->origin_um[0] = var->origin_um[1] =
            (0.5 * p->bin - 0.5 * vol->scan->width) * p->pixel_um;
        var->origin_um[2] = 0.5 * (zb - 1) * p->pixel_um;
        var->output_text[0] = '\0';
        var->file_key = var->key;
        if (var->dtype == TOMO_SAMPLE_UINT16) {
            snprintf(var->output_text, sizeof var->output_text, "dtype=uint16 range=%.9g:%.9g", lo,
                     hi);
            var->file_key = tomo_hash_bytes(tomo_hash_u64(TOMO_HASH_INIT, var->key),
                                            var->output_text, strlen(var->output_text));
        }
        var->file_size = tomo_tiff_file_size_of(var->size, var->size, var->dtype);
        var->volume_name[0] = '\0';
        var->volume_size = 0;
        if (!var->hidden && p->sweep.count == 0) {
            snprintf(var->volume_name, sizeof var->volume_name, "%s.nrrd", var->name);
            var->volume_size = tomo_nrrd_file_size(&(tomo_nrrd_info){
                .sizes = {var->size, var->size, var->n_slices}, .sample = var->dtype});
        }
    }
    return 0;
}

/* ---- denoising: the model ---- */

/* Where the model is or would be: opts.model (made absolute), else its default place. */
static int model_location(tomo_volume *vol, tomo_error *err)
{
    const tomo_volume_options *o = &vol->opts;
    size_t size = sizeof vol->model_path;
    if (o->model[0]) {
        if (o->model[0] == '/') {
            snprintf(vol->model_path, size, "%s", o->model);
            return 0;
        }
        char cwd[2048];
        if (!getcwd(cwd, sizeof cwd) ||
            snprintf(vol->model_path, size, "%s/%s", cwd, o->model) >= (int)size)
            return tomo_error_set(err, TOMO_E_INVALID, "model=%s: cannot make the path absolute",
                                  o->model);
        return 0;
    }
    char dir[sizeof o->cache_dir];
    if (o->cache_dir[0])
        snprintf(dir, sizeof dir, "%s", o->cache_dir);
    else if (tomo_store_default_dir(dir, sizeof dir, err) < 0)
        return -err->code;
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    return tomo_model_default_path(dir, vol->scan->fingerprint, base->name, base->key,
                                   vol->model_path, size, err);
}

/*
 * Loads the model given by model=, or the one at the default place when there is one, and
 * checks that it can denoise this volume. *model stays NULL when there is none to load.
 */
static int load_model(tomo_volume *vol, tomo_model **model, tomo_error *err)
{
    *model = NULL;
    tomo_error where;
    tomo_error_clear(&where);
    if (model_location(vol, &where) < 0) {
        vol->model_path[0] = '\0';
        if (vol->opts.model[0] && !vol->opts.model_off)
            return tomo_error_set(err, where.code, "%s", where.message);
        if (!vol->opts.model_off)
            tomo_log_warning("%s; no denoising model is looked for", where.message);
        return 0;
    }
    if (vol->opts.model_off)
        return 0;
    if (!vol->opts.model[0] && access(vol->model_path, F_OK) != 0)
        return 0; /* none trained yet */
    const char *path = vol->model_path;
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    int rc = tomo_model_load(path, model, err);
    if (rc == 0)
        rc = tomo_model_check_base(*model, path, vol->scan->fingerprint, base->params_text, err);
    if (rc == 0)
        rc = tomo_n2i_check_model(*model, path, err);
    if (rc == 0 && (*model)->split.k > TOMO_VOLUME_MAX_SPLITS)
        rc = tomo_error_set(err, TOMO_E_UNSUPPORTED, "%s: %d splits (at most %d are served)", path,
                            (*model)->split.k, TOMO_VOLUME_MAX_SPLITS);
    if (rc == 0 && (*model)->slice_size != base->size)
        rc = tomo_error_set(err, TOMO_E_INVALID, "%s: trained on %d x %d slices; %s/ has %d x %d",
                            path, (*model)->slice_size, (*model)->slice_size, base->name,
                            base->size, base->size);
    if (rc < 0) {
        tomo_model_free(*model);
        *model = NULL;
    }
    return rc;
}

/* denoised/ as a folder of slices: the base variant's geometry, keyed by the model's id. */
static int add_denoised(tomo_volume *vol, tomo_model *model, tomo_error *err)
{
    struct tomo_volume_denoiser *d = calloc(1, sizeof *d);
    if (!d) {
        tomo_model_free(model);
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    }
    d->model = model;
    pthread_mutex_init(&d->lock, NULL);
    pthread_mutex_init(&d->issue_lock, NULL);
    pthread_cond_init(&d->wake, NULL);
    vol->denoiser = d;
    if (vol->n_variants >= TOMO_VOLUME_MAX_VARIANTS)
        return tomo_error_set(err, TOMO_E_INTERNAL, "too many variants");
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    vol->denoised_variant = vol->n_variants;
    tomo_volume_variant *var = add_variant(vol, "denoised", &base->params);
    size_t len = strlen(var->params_text);
    int n = snprintf(var->params_text + len, sizeof var->params_text - len,
                     " denoise=n2i splits=%d context=%d model=%016llx", model->split.k,
                     model->split.context, (unsigned long long)model->id);
    if (n < 0 || (size_t)n >= sizeof var->params_text - len)
        return tomo_error_set(err, TOMO_E_INTERNAL, "denoised/: parameter text too long");
    set_key(vol, var);
    return 0;
}

/* denoised/README.txt, while there is no model. */
static int build_denoised_readme(tomo_volume *vol, tomo_error *err)
{
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    int n;
    if (vol->opts.model_off)
        n = asprintf(&vol->denoised_readme,
                     "Denoised slices are not served by this mount (no model is looked for).\n");
    else
        n = asprintf(
            &vol->denoised_readme,
            "Denoised slices appear here once a Noise2Inverse model has been trained for this\n"
            "scan. Train one (a GPU makes it much faster) with the options of this mount:\n"
            "\n"
            "    tomofs train %s [-o OPTIONS]\n"
            "\n"
            "It is stored at\n"
            "\n"
            "    %s\n"
            "\n"
            "where the next mount of this scan with the same reconstruction options finds it.\n"
            "To use a model stored elsewhere, mount with -o model=FILE.\n"
            "\n"
            "The model learns from %d reconstructions of %s/ from interleaved subsets of the\n"
            "projections (Noise2Inverse). Meanwhile, %s/ holds the slices it will denoise.\n"
            "docs/denoising.md explains the method.\n",
            vol->scan->path, vol->model_path[0] ? vol->model_path : "(no cache folder)",
            vol->n_splits, base->name, base->name);
    if (n < 0) {
        vol->denoised_readme = NULL;
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    }
    vol->denoised_readme_len = (size_t)n;
    return 0;
}

/* Makes the cache folder absolute now: the daemon changes to / when it detaches. */
static void resolve_cache_dir(tomo_volume_options *opts)
{
    if (opts->cache_off)
        return;
    tomo_error err;
    tomo_error_clear(&err);
    if (!opts->cache_dir[0]) {
        if (tomo_store_default_dir(opts->cache_dir, sizeof opts->cache_dir, &err) < 0) {
            tomo_log_warning("%s; slices are not cached on disk", err.message);
            opts->cache_off = 1;
        }
        return;
    }
    if (opts->cache_dir[0] == '/')
        return;
    char cwd[2048], joined[sizeof opts->cache_dir];
    if (!getcwd(cwd, sizeof cwd) ||
        snprintf(joined, sizeof joined, "%s/%s", cwd, opts->cache_dir) >= (int)sizeof joined) {
        tomo_log_warning("%s: cannot make the cache folder absolute; slices are not cached on "
                         "disk",
                         opts->cache_dir);
        opts->cache_off = 1;
        return;
    }
    memcpy(opts->cache_dir, joined, sizeof joined);
}

int tomo_volume_open(const char *scan_path, const tomo_volume_options *opts, tomo_volume **out,
                     tomo_error *err)
{
    *out = NULL;
    tomo_volume *vol = calloc(1, sizeof *vol);
    if (!vol)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    vol->opts = *opts;
    resolve_cache_dir(&vol->opts);
    int rc = tomo_scan_open(scan_path, opts->format[0] ? opts->format : NULL, &vol->scan, err);
    if (rc < 0)
        goto fail;
    tomo_recon_params params = opts->params;
    vol->center_automatic = isnan(params.center);
    rc = tomo_recon_resolve(vol->scan, &params, err);
    if (rc < 0)
        goto fail;
    tomo_rings_params_default(&params.rings);
    add_variant(vol, "slices", &params);
    if (opts->rings.method != TOMO_RINGS_NONE) {
        tomo_recon_params with_rings = params;
        with_rings.rings = opts->rings;
        rc = tomo_recon_resolve(vol->scan, &with_rings, err);
        if (rc < 0)
            goto fail;
        add_variant(vol, "rings-removed", &with_rings);
    }
    vol->denoised_variant = -1;
    vol->base_variant = vol->n_variants - 1; /* rings-removed/, or slices/ without it */
    tomo_model *model = NULL;
    rc = load_model(vol, &model, err);
    if (rc < 0)
        goto fail;
    rc = add_splits(vol, model ? model->split.k : opts->splits, err);
    if (rc < 0) {
        tomo_model_free(model);
        goto fail;
    }
    rc = model ? add_denoised(vol, model, err) : build_denoised_readme(vol, err);
    if (rc < 0)
        goto fail;
    rc = add_center_search(vol, err);
    if (rc < 0)
        goto fail;
    rc = setup_outputs(vol, err);
    if (rc < 0)
        goto fail;
    vol->name_digits = digits_of(vol->scan->rows - 1) > 5 ? digits_of(vol->scan->rows - 1) : 5;
    rc = build_scan_json(vol, err);
    if (rc < 0)
        goto fail;
    *out = vol;
    return 0;
fail:
    tomo_volume_close(vol);
    return rc;
}

static void sink_store(void *ctx, tomo_slice *slice)
{
    tomo_volume *vol = ctx;
    tomo_ram_cache_put(vol->ram, slice);
    if (vol->store && vol->store_handle[slice->variant] >= 0)
        tomo_store_put(vol->store, vol->store_handle[slice->variant], slice);
}

static tomo_slice *sink_lookup(void *ctx, int variant, int z)
{
    tomo_volume *vol = ctx;
    return tomo_ram_cache_get(vol->ram, variant, z);
}

/* ---- the disk tier ---- */

/* A read waiting for a slice that is being decoded from the store. */
typedef struct load_waiter {
    uint64_t chunks; /* leading chunks of the slice it needs */
    tomo_engine_done_fn done;
    void *arg;
    struct load_waiter *next;
} load_waiter;

/* A slice being decoded from the store, and the reads waiting for parts of it. */
typedef struct load {
    tomo_volume *vol;
    int variant;
    int z;
    tomo_slice *slice; /* set once the store has it */
    uint64_t n_chunks;
    uint64_t ready;         /* leading chunks decoded and checked */
    unsigned char *decoded; /* per chunk: chunks may finish out of order */
    load_waiter *waiters;
    struct load *next;
} load;

struct tomo_volume_loads {
    pthread_mutex_t lock;
    load *active;
};

/* Everything that determines the pixels of a variant: what its key is a hash of. */
static void variant_identity(const tomo_volume *vol, int v, char *buf, size_t size)
{
    const tomo_volume_variant *var = &vol->variants[v];
    snprintf(buf, size, "scan=%016llx variant=%s %s", (unsigned long long)vol->scan->fingerprint,
             var->name, var->params_text);
}

/* Opens the store; a store that cannot be used is one warning, never a failed start. */
static void start_store(tomo_volume *vol)
{
    for (int v = 0; v < TOMO_VOLUME_MAX_VARIANTS; v++)
        vol->store_handle[v] = -1;
    if (vol->opts.cache_off)
        return;
    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = vol->opts.cache_dir;
    cfg.capacity = vol->opts.cache_bytes;
    cfg.level = vol->opts.cache_level;
    tomo_error err;
    tomo_error_clear(&err);
    vol->loads = calloc(1, sizeof *vol->loads);
    if (!vol->loads) {
        tomo_log_warning("out of memory; slices are not cached on disk");
        return;
    }
    pthread_mutex_init(&vol->loads->lock, NULL);
    if (tomo_store_open(&cfg, &vol->store, &err) < 0) {
        tomo_log_warning("%s; slices are not cached on disk", err.message);
        return;
    }
    for (int v = 0; v < vol->n_variants; v++) {
        char identity[1024], info[4200];
        variant_identity(vol, v, identity, sizeof identity);
        snprintf(info, sizeof info, "%s %s %dx%d", vol->scan->path, vol->variants[v].name,
                 vol->variants[v].size, vol->variants[v].size);
        vol->store_handle[v] =
            tomo_store_add_variant(vol->store, vol->variants[v].key, identity, info, NULL);
    }
}

/* Answers the reads that waited for a decode: with the slice, or by asking the engine. */
static void answer_loaded(tomo_volume *vol, load_waiter *w, tomo_slice *slice, int variant, int z)
{
    while (w) {
        load_waiter *next = w->next;
        if (slice)
            w->done(w->arg, slice, NULL);
        else
            compute(vol, variant, z, w->done, w->arg);
        free(w);
        w = next;
    }
}

/* Leading chunks of a slice that a read of file bytes [offset, offset + length) needs. */
static uint64_t chunks_needed(const tomo_volume_variant *var, uint64_t offset, size_t length)
{
    uint64_t end = offset + length;
    if (end <= TOMO_TIFF_DATA_OFFSET)
        return 0;
    /* the store holds float pixels: the end of the range in them */
    unsigned bytes = tomo_sample_bytes(var->dtype);
    uint64_t pixels = (end - TOMO_TIFF_DATA_OFFSET + bytes - 1) / bytes;
    return (pixels * sizeof(float) + TOMO_STORE_CHUNK_BYTES - 1) / TOMO_STORE_CHUNK_BYTES;
}

/* Detaches the waiters whose chunks are all decoded. Called with the lock held. */
static load_waiter *take_ready(load *l)
{
    load_waiter *ready = NULL, **pp = &l->waiters;
    while (*pp) {
        load_waiter *w = *pp;
        if (l->slice && w->chunks <= l->ready) {
            *pp = w->next;
            w->next = ready;
            ready = w;
        } else {
            pp = &w->next;
        }
    }
    return ready;
}

/* Called by the store as chunks are verified: answers the reads they complete. */
static void chunk_decoded(void *ctx, int chunk)
{
    load *l = ctx;
    pthread_mutex_lock(&l->vol->loads->lock);
    l->decoded[chunk] = 1;
    while (l->ready < l->n_chunks && l->decoded[l->ready])
        l->ready++;
    load_waiter *w = take_ready(l);
    pthread_mutex_unlock(&l->vol->loads->lock);
    answer_loaded(l->vol, w, l->slice, l->variant, l->z);
}

/* Decodes the slice of `l` from the store; 1 when all of it was found intact. */
static int decode_from_store(load *l)
{
    tomo_volume *vol = l->vol;
    tomo_slice *slice = tomo_slice_new(l->variant, l->z, vol->variants[l->variant].size);
    tomo_store_slice *r;
    if (!slice || tomo_store_slice_open(vol->store, vol->store_handle[l->variant], l->z,
                                        slice->size, &r) != 1) {
        tomo_slice_unref(slice);
        return 0;
    }
    uint64_t n = tomo_store_slice_chunks(r);
    unsigned char *decoded = calloc(n ? n : 1, 1);
    pthread_mutex_lock(&vol->loads->lock);
    l->slice = slice;
    l->n_chunks = n;
    l->decoded = decoded;
    load_waiter *header_only = take_ready(l);
    pthread_mutex_unlock(&vol->loads->lock);
    answer_loaded(vol, header_only, slice, l->variant, l->z);
    int ok = tomo_store_slice_decode(r, slice->pixels, decoded ? chunk_decoded : NULL, l) == 0;
    tomo_store_slice_close(r);
    return ok;
}

/*
 * The disk tier's part of tomo_volume_read. The kernel sends the first read of a file alone
 * and the rest (readahead) once it is answered, several at a time: the first read is answered
 * as soon as its chunks are decoded, the others join the decode under way and are answered
 * chunk by chunk, so decoding and copying to the kernel overlap, and no slice is decoded twice.
 */
static void load_from_store(tomo_volume *vol, int variant, int z, uint64_t chunks,
                            tomo_engine_done_fn done, void *arg)
{
    struct tomo_volume_loads *loads = vol->loads;
    load_waiter *w = malloc(sizeof *w);
    load *mine = calloc(1, sizeof *mine);
    if (!w || !mine) {
        free(w);
        free(mine);
        compute(vol, variant, z, done, arg);
        return;
    }
    *w = (load_waiter){chunks, done, arg, NULL};
    pthread_mutex_lock(&loads->lock);
    for (load *a = loads->active; a; a = a->next) {
        if (a->variant != variant || a->z != z)
            continue;
        free(mine);
        if (a->slice && chunks <= a->ready) {
            tomo_slice *slice = tomo_slice_ref(a->slice);
            pthread_mutex_unlock(&loads->lock);
            free(w);
            done(arg, slice, NULL);
            tomo_slice_unref(slice);
            return;
        }
        w->next = a->waiters;
        a->waiters = w;
        pthread_mutex_unlock(&loads->lock);
        return;
    }
    *mine = (load){.vol = vol, .variant = variant, .z = z, .waiters = w, .next = loads->active};
    loads->active = mine;
    pthread_mutex_unlock(&loads->lock);

    int ok = decode_from_store(mine);
    /* in the RAM tier before the load ends, so no later read decodes it again */
    if (ok)
        tomo_ram_cache_put(vol->ram, mine->slice);
    pthread_mutex_lock(&loads->lock);
    load **pp = &loads->active;
    while (*pp != mine)
        pp = &(*pp)->next;
    *pp = mine->next;
    load_waiter *rest = mine->waiters;
    pthread_mutex_unlock(&loads->lock);
    answer_loaded(vol, rest, ok ? mine->slice : NULL, variant, z);
    tomo_slice_unref(mine->slice);
    free(mine->decoded);
    free(mine);
}

/* ---- denoising: serving denoised/ ---- */

typedef struct denoise_waiter {
    tomo_engine_done_fn done;
    void *arg;
    struct denoise_waiter *next;
} denoise_waiter;

/* A denoised slice queued or being computed, with the reads waiting for it. */
typedef struct denoise_job {
    int z;
    denoise_waiter *waiters;
    struct denoise_job *next;
} denoise_job;

static void answer_waiters(denoise_waiter *w, tomo_slice *slice, const tomo_error *err)
{
    while (w) {
        denoise_waiter *next = w->next;
        w->done(w->arg, slice, err);
        free(w);
        w = next;
    }
}

static void answer_cancelled(tomo_engine_done_fn done, void *arg)
{
    tomo_error err;
    tomo_error_clear(&err);
    tomo_error_set(&err, TOMO_E_CANCELLED, "the filesystem is shutting down");
    done(arg, NULL, &err);
}

/* Queues slice z of denoised/, or joins the computation of it already queued (single flight). */
static void denoise_request(tomo_volume *vol, int z, tomo_engine_done_fn done, void *arg)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    denoise_waiter *w = malloc(sizeof *w);
    denoise_job *fresh = malloc(sizeof *fresh);
    if (!w || !fresh) {
        free(w);
        free(fresh);
        tomo_error err;
        tomo_error_clear(&err);
        tomo_error_set(&err, TOMO_E_NOMEM, "out of memory queueing slice %d", z);
        done(arg, NULL, &err);
        return;
    }
    *w = (denoise_waiter){done, arg, NULL};
    pthread_mutex_lock(&d->lock);
    if (d->stopping || !d->thread_started) {
        pthread_mutex_unlock(&d->lock);
        free(w);
        free(fresh);
        answer_cancelled(done, arg);
        return;
    }
    denoise_job **pp = &d->jobs;
    while (*pp && (*pp)->z != z)
        pp = &(*pp)->next;
    if (*pp) {
        /* answered in arrival order */
        denoise_waiter **tail = &(*pp)->waiters;
        while (*tail)
            tail = &(*tail)->next;
        *tail = w;
        free(fresh);
    } else {
        *fresh = (denoise_job){z, w, NULL};
        *pp = fresh;
        pthread_cond_signal(&d->wake);
    }
    pthread_mutex_unlock(&d->lock);
}

static void compute(tomo_volume *vol, int variant, int z, tomo_engine_done_fn done, void *arg)
{
    if (variant == vol->denoised_variant)
        denoise_request(vol, z, done, arg);
    else if (vol->engine)
        tomo_engine_request(vol->engine, variant, z, done, arg);
    else
        answer_cancelled(done, arg);
}

/*
 * Slices asked for at once and waited for: the split slices of a denoised slice, or the one
 * slice of tomo_volume_fetch.
 */
typedef struct gather {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int remaining;
    tomo_slice **slices;
    tomo_error err; /* the first failure */
} gather;

typedef struct gather_slot {
    gather *g;
    int index;
} gather_slot;

static void gather_done(void *arg, tomo_slice *slice, const tomo_error *err)
{
    gather_slot *slot = arg;
    gather *g = slot->g;
    pthread_mutex_lock(&g->lock);
    if (slice)
        g->slices[slot->index] = tomo_slice_ref(slice);
    else if (!g->err.code)
        tomo_error_set(&g->err, err && err->code ? err->code : TOMO_E_INTERNAL, "%s",
                       err ? err->message : "no slice and no reason");
    if (--g->remaining == 0)
        pthread_cond_signal(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

/* `remaining` answers to wait for, into slices[] (which the caller has set to NULL). */
static void gather_init(gather *g, tomo_slice **slices, int remaining)
{
    g->remaining = remaining;
    g->slices = slices;
    tomo_error_clear(&g->err);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
}

static void gather_wait(gather *g)
{
    pthread_mutex_lock(&g->lock);
    while (g->remaining > 0)
        pthread_cond_wait(&g->cond, &g->lock);
    pthread_mutex_unlock(&g->lock);
}

static void gather_destroy(gather *g)
{
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cond);
}

/* A new reference to slice z of a split variant if the window holds it, else NULL. */
static tomo_slice *window_find(struct tomo_volume_denoiser *d, int n, int variant, int z)
{
    for (int i = 0; d->window && i < n; i++)
        if (d->window[i] && d->window[i]->variant == variant && d->window[i]->z == z)
            return tomo_slice_ref(d->window[i]);
    return NULL;
}

/* Makes `slices` (n references, taken over) the window, releasing the previous one. */
static void window_replace(struct tomo_volume_denoiser *d, int n, tomo_slice **slices)
{
    for (int i = 0; d->window && i < n; i++)
        tomo_slice_unref(d->window[i]);
    free(d->window);
    d->window = slices;
}

/* The executor, made at the first slice so that a mount nobody denoises with costs nothing. */
static int denoiser_ready(tomo_volume *vol, tomo_error *err)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    if (!d->n2i && !d->n2i_error.code) {
        tomo_n2i_config cfg;
        tomo_n2i_config_default(&cfg);
        cfg.device = vol->opts.device == TOMO_DEVICE_CPU    ? TOMO_UNET_DEVICE_CPU
                     : vol->opts.device == TOMO_DEVICE_AUTO ? TOMO_UNET_DEVICE_AUTO
                                                            : vol->opts.device;
        cfg.threads = vol->opts.threads;
        cfg.exact = vol->opts.precision == TOMO_PRECISION_EXACT;
        cfg.cancel = &d->cancel;
        if (tomo_n2i_create(d->model, vol->variants[vol->denoised_variant].size, &cfg, &d->n2i,
                            &d->n2i_error) == 0)
            tomo_log_info("denoised/: %s", tomo_n2i_backend(d->n2i));
        else
            tomo_log_error("denoised/: %s", d->n2i_error.message);
    }
    if (!d->n2i)
        return tomo_error_set(err, d->n2i_error.code, "%s", d->n2i_error.message);
    return 0;
}

/*
 * slices[k * C + c] = split k at slice reflect(z - context + c), from the window, the cache
 * tiers or the engine. The network's executor is made (denoiser_ready) while the engine
 * reconstructs them: at the first slice that is cuDNN's start and the GPU's memory, seconds
 * that would otherwise come on top. On failure every reference taken is released.
 */
static int gather_inputs(tomo_volume *vol, int z, tomo_slice **slices, tomo_error *err)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    const int K = d->model->split.k, context = d->model->split.context, C = 2 * context + 1;
    const int n = K * C, n_slices = vol->variants[vol->base_variant].n_slices;
    gather_slot *slots = malloc((size_t)n * sizeof *slots);
    if (!slots)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    gather g;
    gather_init(&g, slices, 0);
    for (int i = 0; i < n; i++) {
        int k = i / C, zz = tomo_model_reflect(z - context + i % C, n_slices);
        slices[i] = window_find(d, n, tomo_volume_split_variant(vol, k), zz);
        slots[i] = (gather_slot){&g, i};
        g.remaining += slices[i] == NULL;
    }
    /* While the engine lives: tomo_volume_stop sets `stopping` under this lock first. */
    pthread_mutex_lock(&d->issue_lock);
    int stopping = d->stopping;
    for (int i = 0; i < n && !stopping; i++)
        if (!slices[i])
            tomo_volume_get(vol, tomo_volume_split_variant(vol, i / C),
                            tomo_model_reflect(z - context + i % C, n_slices), gather_done,
                            &slots[i]);
    pthread_mutex_unlock(&d->issue_lock);
    tomo_error ready_err;
    tomo_error_clear(&ready_err);
    int ready = stopping ? 0 : denoiser_ready(vol, &ready_err);
    if (!stopping)
        gather_wait(&g);
    gather_destroy(&g);
    free(slots);
    int rc = 0;
    if (stopping)
        rc = tomo_error_set(err, TOMO_E_CANCELLED, "the filesystem is shutting down");
    else if (g.err.code)
        rc = tomo_error_set(err, g.err.code, "split reconstruction: %s", g.err.message);
    else if (ready < 0)
        rc = tomo_error_set(err, ready_err.code, "%s", ready_err.message);
    if (rc < 0)
        for (int i = 0; i < n; i++) {
            tomo_slice_unref(slices[i]);
            slices[i] = NULL;
        }
    return rc;
}

/* Computes slice z of denoised/. */
static int denoise_one(tomo_volume *vol, int z, tomo_slice **out, tomo_error *err)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    *out = NULL;
    int rc;
    int n = d->model->split.k * (2 * d->model->split.context + 1);
    tomo_slice **slices = calloc((size_t)n, sizeof *slices);
    const float **inputs = calloc((size_t)n, sizeof *inputs);
    tomo_slice *slice =
        tomo_slice_new(vol->denoised_variant, z, vol->variants[vol->denoised_variant].size);
    if (!slices || !inputs || !slice) {
        rc = tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
        goto out;
    }
    rc = gather_inputs(vol, z, slices, err);
    if (rc < 0)
        goto out;
    for (int i = 0; i < n; i++)
        inputs[i] = slices[i]->pixels;
    rc = tomo_n2i_denoise_slice(d->n2i, inputs, d->mask, slice->pixels, err);
    window_replace(d, n, slices);
    slices = NULL;
out:
    free(slices);
    free(inputs);
    if (rc < 0)
        tomo_slice_unref(slice);
    else
        *out = slice;
    return rc;
}

static void *denoise_main(void *arg)
{
    tomo_volume *vol = arg;
    struct tomo_volume_denoiser *d = vol->denoiser;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (!d->stopping && !d->jobs)
            pthread_cond_wait(&d->wake, &d->lock);
        if (d->stopping)
            break;
        /* the job stays at the head while it runs, so requests for its slice join it */
        int z = d->jobs->z;
        pthread_mutex_unlock(&d->lock);
        tomo_slice *slice = NULL;
        tomo_error err;
        tomo_error_clear(&err);
        int rc = denoise_one(vol, z, &slice, &err);
        if (rc == 0)
            sink_store(vol, slice);
        pthread_mutex_lock(&d->lock);
        denoise_job *job = d->jobs;
        d->jobs = job->next;
        pthread_mutex_unlock(&d->lock);
        answer_waiters(job->waiters, slice, rc < 0 ? &err : NULL);
        free(job);
        tomo_slice_unref(slice);
        pthread_mutex_lock(&d->lock);
    }
    denoise_job *rest = d->jobs;
    d->jobs = NULL;
    pthread_mutex_unlock(&d->lock);
    tomo_error err;
    tomo_error_clear(&err);
    tomo_error_set(&err, TOMO_E_CANCELLED, "the filesystem is shutting down");
    while (rest) {
        denoise_job *next = rest->next;
        answer_waiters(rest->waiters, NULL, &err);
        free(rest);
        rest = next;
    }
    return NULL;
}

static int start_denoiser(tomo_volume *vol, tomo_error *err)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    const tomo_volume_variant *base = &vol->variants[vol->base_variant];
    d->mask = circle_mask(vol->scan->width, base->size, base->params.bin, base->params.center);
    if (!d->mask)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    pthread_mutex_lock(&d->lock);
    d->thread_started = pthread_create(&d->thread, NULL, denoise_main, vol) == 0;
    pthread_mutex_unlock(&d->lock);
    if (!d->thread_started)
        return tomo_error_set(err, TOMO_E_NOMEM, "cannot start the denoising thread");
    const tomo_model *m = d->model;
    tomo_log_info("denoised/: %s (%d splits, %d-slice context, %d epochs)", vol->model_path,
                  m->split.k, 2 * m->split.context + 1, m->epoch);
    return 0;
}

int tomo_volume_start(tomo_volume *vol, tomo_error *err)
{
    vol->ram = tomo_ram_cache_create(vol->opts.ram_cache_bytes);
    if (!vol->ram)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    start_store(vol);
    tomo_recon_params variants[TOMO_VOLUME_MAX_VARIANTS];
    for (int v = 0; v < vol->n_variants; v++)
        variants[v] = vol->variants[v].params;
    /*
     * denoised/ is computed by the denoiser, never by the engine, which needs parameters at
     * its index all the same: split 0's, whose GPU pipeline is only made if it is used.
     */
    if (vol->denoised_variant >= 0)
        variants[vol->denoised_variant] = vol->variants[vol->split_variant0].params;
    tomo_engine_config config;
    tomo_engine_config_default(&config);
    config.threads = vol->opts.threads;
    if (vol->opts.max_chunk > 0)
        config.max_chunk = vol->opts.max_chunk;
    config.device = vol->opts.device;
    config.precision = vol->opts.precision;
    config.gpu_at_first_use = vol->opts.gpu_at_first_use;
    tomo_engine_sink sink = {vol, sink_store, sink_lookup};
    int rc =
        tomo_engine_create(vol->scan, variants, vol->n_variants, &config, &sink, &vol->engine, err);
    for (int v = 0; rc == 0 && v < vol->n_variants; v++) {
        const tomo_recon_params *p = &vol->variants[v].params;
        if (strncmp(tomo_engine_backend(vol->engine), "cuda", 4) == 0 && !vol->variants[v].hidden &&
            v != vol->denoised_variant && (p->zbin > 1 || p->sweep.count > 0))
            tomo_log_info("%s/ is reconstructed on the CPU: the GPU pipeline has no %s",
                          vol->variants[v].name, p->sweep.count ? "centre sweep" : "row binning");
    }
    if (rc == 0 && vol->denoiser)
        rc = start_denoiser(vol, err);
    return rc;
}

int tomo_volume_find_variant(const tomo_volume *vol, const char *name)
{
    for (int v = 0; v < vol->n_variants; v++)
        if (!vol->variants[v].hidden && strcmp(vol->variants[v].name, name) == 0)
            return v;
    return -1;
}

int tomo_volume_split_variant(const tomo_volume *vol, int k)
{
    return k >= 0 && k < vol->n_splits ? vol->split_variant0 + k : -1;
}

int tomo_volume_fetch(tomo_volume *vol, int variant, int z, tomo_slice **slice, tomo_error *err)
{
    *slice = NULL;
    if (variant < 0 || variant >= vol->n_variants || z < 0 || z >= vol->variants[variant].n_slices)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: no slice %d in variant %d", vol->scan->path,
                              z, variant);
    gather g;
    gather_init(&g, slice, 1);
    gather_slot slot = {&g, 0};
    tomo_volume_get(vol, variant, z, gather_done, &slot);
    gather_wait(&g);
    gather_destroy(&g);
    if (g.err.code)
        return tomo_error_set(err, g.err.code, "%s", g.err.message);
    return 0;
}

void tomo_volume_slice_name(const tomo_volume *vol, int z, char *buf, size_t size)
{
    snprintf(buf, size, "slice_%0*d.tif", vol->name_digits, z);
}

int tomo_volume_parse_slice_name(const tomo_volume *vol, const char *name)
{
    if (strncmp(name, "slice_", 6) != 0)
        return -1;
    const char *digits = name + 6;
    int z = 0, n = 0;
    while (digits[n] >= '0' && digits[n] <= '9') {
        if (z > 100000000)
            return -1;
        z = z * 10 + (digits[n] - '0');
        n++;
    }
    if (n != vol->name_digits || strcmp(digits + n, ".tif") != 0)
        return -1;
    return z < vol->scan->rows ? z : -1;
}

void tomo_volume_file_name(const tomo_volume *vol, int variant, int z, char *buf, size_t size)
{
    const tomo_center_sweep *sw = &vol->variants[variant].params.sweep;
    if (sw->count <= 0) {
        tomo_volume_slice_name(vol, z, buf, size);
        return;
    }
    int d = sw->decimals > 2 ? sw->decimals : 2;
    int width = digits_of((int)tomo_recon_sweep_center(sw, sw->count - 1)) + 1 + d;
    snprintf(buf, size, "center_%0*.*f.tif", width, d, tomo_recon_sweep_center(sw, z));
}

int tomo_volume_parse_file_name(const tomo_volume *vol, int variant, const char *name)
{
    const tomo_volume_variant *var = &vol->variants[variant];
    const tomo_center_sweep *sw = &var->params.sweep;
    if (sw->count <= 0) {
        int z = tomo_volume_parse_slice_name(vol, name);
        return z < var->n_slices ? z : -1;
    }
    if (strncmp(name, "center_", 7) != 0 || strlen(name) > 64)
        return -1;
    char *end;
    double c = strtod(name + 7, &end);
    if (end == name + 7 || strcmp(end, ".tif") != 0 || !(c >= 0 && c < 1e9))
        return -1;
    double scale = pow(10.0, sw->decimals);
    long long units = llround(c * scale) - sw->first;
    if (units < 0 || units % sw->step != 0 || units / sw->step >= sw->count)
        return -1;
    int z = (int)(units / sw->step);
    char canonical[80];
    tomo_volume_file_name(vol, variant, z, canonical, sizeof canonical);
    return strcmp(canonical, name) == 0 ? z : -1;
}

int tomo_volume_slice_header(const tomo_volume *vol, int variant, int z,
                             unsigned char header[TOMO_TIFF_DATA_OFFSET], tomo_error *err)
{
    const tomo_volume_variant *var = &vol->variants[variant];
    const tomo_center_sweep *sw = &var->params.sweep;
    char description[TOMO_TIFF_DESCRIPTION_MAX + 1];
    int n = tomo_tiff_imagej_description(description, sizeof description, var->dtype,
                                         var->spacing_um, var->lo, var->hi);
    if (n < 0 || (size_t)n >= sizeof description)
        return tomo_error_set(err, TOMO_E_INTERNAL, "slice description too long");
    snprintf(description + n, sizeof description - (size_t)n,
             "tomofs %s\nvariant=%s\nslice=%0*d\nunits=cm^-1\npixel_um=%.6f\ncenter=%.6f\n"
             "scan=%016llx\nkey=%016llx\n%s%s%s\n",
             TOMOFS_VERSION, var->name, vol->name_digits, sw->count > 0 ? sw->slice : z,
             var->pixel_um, sw->count > 0 ? tomo_recon_sweep_center(sw, z) : var->params.center,
             (unsigned long long)vol->scan->fingerprint, (unsigned long long)var->file_key,
             var->output_text, var->output_text[0] ? "\n" : "", var->params_text);
    return tomo_tiff_header_of(header, var->size, var->size, var->dtype, var->pixel_um, description,
                               err);
}

void tomo_volume_get(tomo_volume *vol, int variant, int z, tomo_engine_done_fn done, void *arg)
{
    tomo_volume_read(vol, variant, z, 0, vol->variants[variant].file_size, done, arg);
}

void tomo_volume_read(tomo_volume *vol, int variant, int z, uint64_t offset, size_t length,
                      tomo_engine_done_fn done, void *arg)
{
    tomo_slice *slice = tomo_ram_cache_get(vol->ram, variant, z);
    if (slice) {
        done(arg, slice, NULL);
        tomo_slice_unref(slice);
        return;
    }
    if (vol->store && vol->store_handle[variant] >= 0)
        load_from_store(vol, variant, z, chunks_needed(&vol->variants[variant], offset, length),
                        done, arg);
    else
        compute(vol, variant, z, done, arg);
}

int tomo_volume_compute(tomo_volume *vol, int variant, int z0, int nz, tomo_slice **out,
                        tomo_error *err)
{
    if (variant != vol->denoised_variant)
        return tomo_engine_compute(vol->engine, variant, z0, nz, out, err);
    for (int i = 0; i < nz; i++) {
        int rc = tomo_volume_fetch(vol, variant, z0 + i, &out[i], err);
        if (rc < 0) {
            while (i-- > 0) {
                tomo_slice_unref(out[i]);
                out[i] = NULL;
            }
            return rc;
        }
    }
    return 0;
}

size_t tomo_volume_file_bytes(const tomo_volume *vol, int variant, const unsigned char *header,
                              const tomo_slice *slice, uint64_t offset, size_t length,
                              unsigned char *dst)
{
    uint64_t size = vol->variants[variant].file_size;
    if (offset >= size)
        return 0;
    if (length > size - offset)
        length = (size_t)(size - offset);
    size_t done = 0;
    if (offset < TOMO_TIFF_DATA_OFFSET) {
        size_t n = TOMO_TIFF_DATA_OFFSET - (size_t)offset;
        if (n > length)
            n = length;
        memcpy(dst, header + offset, n);
        done = n;
    }
    if (done < length) {
        const tomo_volume_variant *var = &vol->variants[variant];
        uint64_t at = offset + done - TOMO_TIFF_DATA_OFFSET; /* byte of the pixel data */
        if (var->dtype == TOMO_SAMPLE_FLOAT32) {
            memcpy(dst + done, (const unsigned char *)slice->pixels + at, length - done);
            return length;
        }
        /* uint16: converted in blocks; a range may start or end inside a sample */
        double scale = tomo_u16_scale(var->lo, var->hi);
        uint16_t block[2048];
        while (done < length) {
            uint64_t first = at / 2;
            size_t n = (length - done + (size_t)(at % 2) + 1) / 2;
            if (n > sizeof block / sizeof *block)
                n = sizeof block / sizeof *block;
            tomo_u16_from_float(slice->pixels + first, n, var->lo, scale, block);
            size_t skip = (size_t)(at % 2), take = n * 2 - skip;
            if (take > length - done)
                take = length - done;
            memcpy(dst + done, (const unsigned char *)block + skip, take);
            done += take;
            at += take;
        }
    }
    return done;
}

int tomo_volume_nrrd_header(const tomo_volume *vol, int variant,
                            unsigned char header[TOMO_NRRD_HEADER_BYTES], tomo_error *err)
{
    const tomo_volume_variant *var = &vol->variants[variant];
    if (!var->volume_size)
        return tomo_error_set(err, TOMO_E_INVALID, "%s/ has no volume file", var->name);
    char content[64], comments[1024];
    snprintf(content, sizeof content, "tomofs %s", var->name);
    int n = snprintf(comments, sizeof comments,
                     "tomofs %s: the slices of %s/ (slice z of this file is %s/", TOMOFS_VERSION,
                     var->name, var->name);
    char name[64];
    tomo_volume_file_name(vol, variant, 0, name, sizeof name);
    n += snprintf(comments + n, sizeof comments - (size_t)n,
                  "%s for z = 0, and so on)\nvalues: linear attenuation coefficient, cm^-1%s\n"
                  "scan %016llx, key %016llx\n",
                  name,
                  var->dtype == TOMO_SAMPLE_UINT16 ? "; uint16 sample s means "
                                                     "old min + s (old max - old min) / 65535"
                                                   : "",
                  (unsigned long long)vol->scan->fingerprint, (unsigned long long)var->file_key);
    tomo_nrrd_info info = {
        .sizes = {var->size, var->size, var->n_slices},
        .sample = var->dtype,
        .spacing_um = {var->pixel_um, var->pixel_um, var->spacing_um},
        .origin_um = {var->origin_um[0], var->origin_um[1], var->origin_um[2]},
        .quantized = var->dtype == TOMO_SAMPLE_UINT16,
        .old_min = var->lo,
        .old_max = var->hi,
        .content = content,
        .comments = comments,
    };
    return tomo_nrrd_header(header, &info, err);
}

/* ---- reads of volume files ---- */

typedef struct volume_read {
    tomo_volume *vol;
    int variant;
    uint64_t offset; /* in the file */
    size_t length;
    uint64_t data0; /* [data0, data1): the part of the range after the header, in the data */
    uint64_t data1;
    int z0, n; /* slices covered */
    tomo_slice **slices;
    struct volume_part *parts;
    atomic_int pending;
    pthread_mutex_t lock;
    int failed;
    tomo_error err;
    tomo_volume_bytes_fn done;
    void *arg;
} volume_read;

typedef struct volume_part {
    volume_read *r;
    int i;
} volume_part;

/* Bytes of one slice's samples in a volume file. */
static uint64_t slice_data_bytes(const tomo_volume_variant *var)
{
    return (uint64_t)var->size * var->size * tomo_sample_bytes(var->dtype);
}

/* Bytes [*a, *b) of the samples of slice r->z0 + i that the read covers. */
static void part_range(const volume_read *r, int i, uint64_t *a, uint64_t *b)
{
    uint64_t slice_bytes = slice_data_bytes(&r->vol->variants[r->variant]);
    uint64_t start = (uint64_t)(r->z0 + i) * slice_bytes;
    *a = r->data0 > start ? r->data0 - start : 0;
    *b = r->data1 < start + slice_bytes ? r->data1 - start : slice_bytes;
}

/* Assembles and delivers the bytes once every slice is there (or one failed). */
static void volume_read_finish(volume_read *r)
{
    tomo_volume *vol = r->vol;
    const tomo_volume_variant *var = &vol->variants[r->variant];
    unsigned char *buf = r->failed ? NULL : malloc(r->length ? r->length : 1);
    if (!r->failed && !buf)
        tomo_error_set(&r->err, TOMO_E_NOMEM, "out of memory reading %s", var->volume_name);
    if (buf && r->offset < TOMO_NRRD_HEADER_BYTES) {
        unsigned char header[TOMO_NRRD_HEADER_BYTES];
        size_t n = TOMO_NRRD_HEADER_BYTES - (size_t)r->offset;
        if (n > r->length)
            n = r->length;
        if (tomo_volume_nrrd_header(vol, r->variant, header, &r->err) < 0) {
            free(buf);
            buf = NULL;
        } else {
            memcpy(buf, header + r->offset, n);
        }
    }
    uint64_t slice_bytes = slice_data_bytes(var);
    for (int i = 0; buf && i < r->n; i++) {
        uint64_t a, b;
        part_range(r, i, &a, &b);
        uint64_t at = TOMO_NRRD_HEADER_BYTES + (uint64_t)(r->z0 + i) * slice_bytes + a - r->offset;
        tomo_volume_file_bytes(vol, r->variant, NULL, r->slices[i], TOMO_TIFF_DATA_OFFSET + a,
                               (size_t)(b - a), buf + at);
    }
    if (buf)
        r->done(r->arg, buf, r->length, NULL);
    else
        r->done(r->arg, NULL, 0, &r->err);
    free(buf);
    for (int i = 0; i < r->n; i++)
        tomo_slice_unref(r->slices[i]);
    pthread_mutex_destroy(&r->lock);
    free(r->slices);
    free(r->parts);
    free(r);
}

static void volume_part_done(void *arg, tomo_slice *slice, const tomo_error *err)
{
    volume_part *part = arg;
    volume_read *r = part->r;
    if (slice) {
        r->slices[part->i] = tomo_slice_ref(slice);
    } else {
        pthread_mutex_lock(&r->lock);
        if (!r->failed) {
            r->failed = 1;
            if (err)
                r->err = *err;
            else
                tomo_error_set(&r->err, TOMO_E_INTERNAL, "no slice and no reason");
        }
        pthread_mutex_unlock(&r->lock);
    }
    if (atomic_fetch_sub(&r->pending, 1) == 1)
        volume_read_finish(r);
}

void tomo_volume_read_volume(tomo_volume *vol, int variant, uint64_t offset, size_t length,
                             tomo_volume_bytes_fn done, void *arg)
{
    const tomo_volume_variant *var = &vol->variants[variant];
    tomo_error err;
    tomo_error_clear(&err);
    volume_read *r = calloc(1, sizeof *r);
    if (!r) {
        tomo_error_set(&err, TOMO_E_NOMEM, "out of memory reading %s", var->volume_name);
        done(arg, NULL, 0, &err);
        return;
    }
    r->vol = vol;
    r->variant = variant;
    r->offset = offset;
    r->length = length;
    r->done = done;
    r->arg = arg;
    tomo_error_clear(&r->err);
    pthread_mutex_init(&r->lock, NULL);
    uint64_t slice_bytes = slice_data_bytes(var);
    uint64_t end = offset + length;
    if (end > TOMO_NRRD_HEADER_BYTES && slice_bytes) {
        r->data0 = offset > TOMO_NRRD_HEADER_BYTES ? offset - TOMO_NRRD_HEADER_BYTES : 0;
        r->data1 = end - TOMO_NRRD_HEADER_BYTES;
        r->z0 = (int)(r->data0 / slice_bytes);
        r->n = (int)((r->data1 - 1) / slice_bytes) - r->z0 + 1;
        if (r->z0 + r->n > var->n_slices)
            r->n = var->n_slices - r->z0 > 0 ? var->n_slices - r->z0 : 0;
    }
    r->slices = calloc((size_t)(r->n ? r->n : 1), sizeof *r->slices);
    r->parts = calloc((size_t)(r->n ? r->n : 1), sizeof *r->parts);
    if (!r->slices || !r->parts) {
        r->failed = 1;
        tomo_error_set(&r->err, TOMO_E_NOMEM, "out of memory reading %s", var->volume_name);
        r->n = 0;
    }
    /* one count per slice and one for this function, so the last one finishes */
    atomic_init(&r->pending, r->n + 1);
    int n = r->n;
    for (int i = 0; i < n; i++) {
        uint64_t a, b;
        part_range(r, i, &a, &b);
        r->parts[i] = (volume_part){r, i};
        tomo_volume_read(vol, variant, r->z0 + i, TOMO_TIFF_DATA_OFFSET + a, (size_t)(b - a),
                         volume_part_done, &r->parts[i]);
    }
    if (atomic_fetch_sub(&r->pending, 1) == 1)
        volume_read_finish(r);
}

void tomo_volume_stop(tomo_volume *vol)
{
    struct tomo_volume_denoiser *d = vol->denoiser;
    int denoising = d && d->thread_started;
    if (denoising) {
        /* no split slice is asked for after this, so destroying the engine is safe */
        pthread_mutex_lock(&d->issue_lock);
        pthread_mutex_lock(&d->lock);
        d->stopping = 1;
        atomic_store(&d->cancel, 1);
        pthread_cond_broadcast(&d->wake);
        pthread_mutex_unlock(&d->lock);
        pthread_mutex_unlock(&d->issue_lock);
    }
    /* answers the split slices the denoiser may be waiting for */
    tomo_engine_destroy(vol->engine);
    vol->engine = NULL;
    if (denoising) {
        pthread_join(d->thread, NULL);
        d->thread_started = 0;
    }
}

static void free_denoiser(struct tomo_volume_denoiser *d)
{
    if (!d)
        return;
    if (d->n2i)
        window_replace(d, tomo_n2i_inputs(d->n2i), NULL);
    tomo_n2i_destroy(d->n2i);
    tomo_model_free(d->model);
    free(d->mask);
    pthread_mutex_destroy(&d->lock);
    pthread_mutex_destroy(&d->issue_lock);
    pthread_cond_destroy(&d->wake);
    free(d);
}

void tomo_volume_close(tomo_volume *vol)
{
    if (!vol)
        return;
    tomo_volume_stop(vol);
    /* after the engine, whose last slices are queued to it; this commits them */
    tomo_store_close(vol->store);
    if (vol->loads) {
        pthread_mutex_destroy(&vol->loads->lock);
        free(vol->loads);
    }
    tomo_ram_cache_destroy(vol->ram);
    free_denoiser(vol->denoiser);
    tomo_scan_close(vol->scan);
    free(vol->scan_json);
    free(vol->denoised_readme);
    free(vol);
}
