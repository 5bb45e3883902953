#include "volume.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/hash.h"
#include "../common/log.h"

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
        text_add(&t, "}");
    }
    text_add(&t, "\n  }\n}\n");
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

static tomo_volume_variant *add_variant(tomo_volume *vol, const char *name,
                                        const tomo_recon_params *params)
{
    tomo_volume_variant *var = &vol->variants[vol->n_variants++];
    snprintf(var->name, sizeof var->name, "%s", name);
    var->params = *params;
    tomo_recon_params_text(params, var->params_text, sizeof var->params_text);
    uint64_t h = tomo_hash_u64(TOMO_HASH_INIT, vol->scan->fingerprint);
    h = tomo_hash_bytes(h, name, strlen(name));
    var->key = tomo_hash_bytes(h, var->params_text, strlen(var->params_text));
    var->size = tomo_recon_slice_size(vol->scan, params);
    var->file_size = tomo_tiff_file_size(var->size, var->size);
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
    rc = add_splits(vol, opts->splits, err);
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
            tomo_engine_request(vol->engine, variant, z, w->done, w->arg);
        free(w);
        w = next;
    }
}

/* Leading chunks of a slice that a read of file bytes [offset, offset + length) needs. */
static uint64_t chunks_needed(uint64_t offset, size_t length)
{
    uint64_t end = offset + length;
    if (end <= TOMO_TIFF_DATA_OFFSET)
        return 0;
    return (end - TOMO_TIFF_DATA_OFFSET + TOMO_STORE_CHUNK_BYTES - 1) / TOMO_STORE_CHUNK_BYTES;
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
        tomo_engine_request(vol->engine, variant, z, done, arg);
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

int tomo_volume_start(tomo_volume *vol, tomo_error *err)
{
    vol->ram = tomo_ram_cache_create(vol->opts.ram_cache_bytes);
    if (!vol->ram)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    start_store(vol);
    tomo_recon_params variants[TOMO_VOLUME_MAX_VARIANTS];
    for (int v = 0; v < vol->n_variants; v++)
        variants[v] = vol->variants[v].params;
    tomo_engine_config config;
    tomo_engine_config_default(&config);
    config.threads = vol->opts.threads;
    if (vol->opts.max_chunk > 0)
        config.max_chunk = vol->opts.max_chunk;
    config.device = vol->opts.device;
    config.precision = vol->opts.precision;
    tomo_engine_sink sink = {vol, sink_store, sink_lookup};
    return tomo_engine_create(vol->scan, variants, vol->n_variants, &config, &sink, &vol->engine,
                              err);
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

/* A blocking caller of tomo_volume_fetch. */
typedef struct fetch_wait {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int finished;
    tomo_slice *slice;
    tomo_error err;
} fetch_wait;

static void fetch_done(void *arg, tomo_slice *slice, const tomo_error *err)
{
    fetch_wait *w = arg;
    pthread_mutex_lock(&w->lock);
    w->slice = slice ? tomo_slice_ref(slice) : NULL;
    if (!slice) {
        if (err)
            w->err = *err;
        else
            tomo_error_set(&w->err, TOMO_E_INTERNAL, "no slice and no reason");
    }
    w->finished = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int tomo_volume_fetch(tomo_volume *vol, int variant, int z, tomo_slice **slice, tomo_error *err)
{
    *slice = NULL;
    if (variant < 0 || variant >= vol->n_variants || z < 0 || z >= vol->scan->rows)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: no slice %d in variant %d", vol->scan->path,
                              z, variant);
    fetch_wait w = {.finished = 0, .slice = NULL};
    tomo_error_clear(&w.err);
    pthread_mutex_init(&w.lock, NULL);
    pthread_cond_init(&w.cond, NULL);
    tomo_volume_get(vol, variant, z, fetch_done, &w);
    pthread_mutex_lock(&w.lock);
    while (!w.finished)
        pthread_cond_wait(&w.cond, &w.lock);
    pthread_mutex_unlock(&w.lock);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cond);
    if (!w.slice)
        return tomo_error_set(err, w.err.code ? w.err.code : TOMO_E_INTERNAL, "%s", w.err.message);
    *slice = w.slice;
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

int tomo_volume_slice_header(const tomo_volume *vol, int variant, int z,
                             unsigned char header[TOMO_TIFF_DATA_OFFSET], tomo_error *err)
{
    const tomo_volume_variant *var = &vol->variants[variant];
    char description[1024];
    double pixel_um = var->params.pixel_um * var->params.bin;
    snprintf(description, sizeof description,
             "tomofs %s\nvariant=%s\nslice=%0*d\nunits=cm^-1\npixel_um=%.6f\ncenter=%.6f\n"
             "scan=%016llx\nkey=%016llx\n%s\n",
             TOMOFS_VERSION, var->name, vol->name_digits, z, pixel_um, var->params.center,
             (unsigned long long)vol->scan->fingerprint, (unsigned long long)var->key,
             var->params_text);
    return tomo_tiff_header(header, var->size, var->size, pixel_um, description, err);
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
        load_from_store(vol, variant, z, chunks_needed(offset, length), done, arg);
    else
        tomo_engine_request(vol->engine, variant, z, done, arg);
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
        uint64_t pixel_offset = offset + done - TOMO_TIFF_DATA_OFFSET;
        memcpy(dst + done, (const unsigned char *)slice->pixels + pixel_offset, length - done);
        done = length;
    }
    return done;
}

void tomo_volume_close(tomo_volume *vol)
{
    if (!vol)
        return;
    tomo_engine_destroy(vol->engine);
    /* after the engine, whose last slices are queued to it; this commits them */
    tomo_store_close(vol->store);
    if (vol->loads) {
        pthread_mutex_destroy(&vol->loads->lock);
        free(vol->loads);
    }
    tomo_ram_cache_destroy(vol->ram);
    tomo_scan_close(vol->scan);
    free(vol->scan_json);
    free(vol);
}
