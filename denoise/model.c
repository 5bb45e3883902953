/*
 * denoise/model.c - model files: create, save (atomically), load (checked), id, places.
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/hash.h"
#include "../common/io.h"
#include "png.h"

static const char model_magic[16] = {'T', 'O', 'M', 'O', 'F', 'S', '-', 'N',
                                     '2', 'I', '-', 'M', 'O', 'D', 'E', 'L'};

#define HEADER_BYTES 32 /* magic, version, reserved, file size */

void tomo_train_options_default(tomo_train_options *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->epochs = 25;
    opts->slices_per_epoch = 200;
    opts->batch = 2;
    opts->patch = 2216;
    opts->patch_used = 0;
    tomo_adam_params_default(&opts->adam);
    opts->seed = 1;
}

int tomo_model_create(const tomo_unet_config *config, tomo_model **out, tomo_error *err)
{
    *out = NULL;
    if (config->in_channels % 2 == 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "network: %d input channels (must be odd: z and as many slices "
                              "either side)",
                              config->in_channels);
    tomo_model *m = calloc(1, sizeof *m);
    if (!m)
        return tomo_error_set(err, TOMO_E_NOMEM, "model: out of memory");
    int rc = tomo_unet_create(config, &m->net, err);
    if (rc < 0) {
        free(m);
        return rc;
    }
    m->mean = 0.0;
    m->std = 1.0;
    m->split.k = 2;
    m->split.strategy = TOMO_SPLIT_X1;
    m->split.context = (config->in_channels - 1) / 2;
    tomo_train_options_default(&m->options);
    tomo_rng_seed(&m->rng, m->options.seed);
    *out = m;
    return 0;
}

void tomo_model_free(tomo_model *model)
{
    if (!model)
        return;
    tomo_unet_destroy(model->net);
    free(model->history);
    free(model);
}

int tomo_model_add_loss(tomo_model *model, const tomo_loss_record *record, tomo_error *err)
{
    if (model->n_history == model->history_capacity) {
        size_t cap = model->history_capacity ? 2 * model->history_capacity : 256;
        tomo_loss_record *h = realloc(model->history, cap * sizeof *h);
        if (!h)
            return tomo_error_set(err, TOMO_E_NOMEM, "model: out of memory for the loss history");
        model->history = h;
        model->history_capacity = cap;
    }
    model->history[model->n_history++] = *record;
    return 0;
}

/* ---- little-endian encoding ---------------------------------------------------------------- */

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const unsigned char *)&one == 1;
}

static void le_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void le_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint64_t get_le_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static uint64_t f64_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* ---- the id ------------------------------------------------------------------------------- */

static uint64_t hash_u32le(uint64_t h, uint32_t v)
{
    unsigned char b[4];
    le_u32(b, v);
    return tomo_hash_bytes(h, b, 4);
}

static uint64_t hash_u64le(uint64_t h, uint64_t v)
{
    unsigned char b[8];
    le_u64(b, v);
    return tomo_hash_bytes(h, b, 8);
}

static uint64_t hash_floats(uint64_t h, const float *a, size_t n)
{
    if (host_is_little_endian())
        return tomo_hash_bytes(h, a, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        h = hash_u32le(h, f32_bits(a[i]));
    return h;
}

uint64_t tomo_model_id(const tomo_model *m)
{
    static const char tag[] = "tomofs-n2i-model-id 1";
    uint64_t h = tomo_hash_bytes(TOMO_HASH_INIT, tag, sizeof tag - 1);
    const tomo_unet_config *c = &m->net->config;
    h = hash_u32le(h, (uint32_t)c->in_channels);
    h = hash_u32le(h, (uint32_t)c->base_features);
    h = hash_u32le(h, (uint32_t)c->levels);
    h = hash_u32le(h, (uint32_t)m->split.k);
    h = hash_u32le(h, (uint32_t)m->split.strategy);
    h = hash_u32le(h, (uint32_t)m->split.context);
    h = hash_u64le(h, f64_bits(m->mean));
    h = hash_u64le(h, f64_bits(m->std));
    h = hash_u64le(h, m->scan_fingerprint);
    h = hash_u64le(h, m->base_key);
    h = tomo_hash_bytes(h, m->base_variant, strnlen(m->base_variant, sizeof m->base_variant));
    h = hash_u32le(h, 0);
    h = tomo_hash_bytes(h, m->base_params, strnlen(m->base_params, sizeof m->base_params));
    h = hash_u32le(h, 0);
    h = hash_floats(h, m->net->params, m->net->layout.n_params);
    h = hash_floats(h, m->net->buffers, m->net->layout.n_buffers);
    return h;
}

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct writer {
    FILE *f;
    uint32_t crc;
    uint64_t bytes;
    int failed;
    int error; /* errno of the first failure */
} writer;

static void put(writer *w, const void *data, size_t len)
{
    if (w->failed || len == 0)
        return;
    if (fwrite(data, 1, len, w->f) != len) {
        w->failed = 1;
        w->error = errno ? errno : EIO;
        return;
    }
    w->crc = tomo_crc32(w->crc, data, len);
    w->bytes += len;
}

static void put_u32(writer *w, uint32_t v)
{
    unsigned char b[4];
    le_u32(b, v);
    put(w, b, 4);
}

static void put_i32(writer *w, int v)
{
    put_u32(w, (uint32_t)v);
}

static void put_u64(writer *w, uint64_t v)
{
    unsigned char b[8];
    le_u64(b, v);
    put(w, b, 8);
}

static void put_f32(writer *w, float v)
{
    put_u32(w, f32_bits(v));
}

static void put_f64(writer *w, double v)
{
    put_u64(w, f64_bits(v));
}

static void put_text(writer *w, const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    put_u32(w, (uint32_t)n);
    put(w, s, n);
}

static void put_floats(writer *w, const float *a, size_t n)
{
    put_u64(w, n);
    if (host_is_little_endian()) {
        put(w, a, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        put_f32(w, a[i]);
}

/* The size of the file, so the header can say it before the body is written. */
static uint64_t file_size(const tomo_model *m)
{
    const tomo_unet_layout *lay = &m->net->layout;
    uint64_t n = HEADER_BYTES;
    n += 3 * 4;             /* config */
    n += 3 * 4;             /* split */
    n += 5 * 4 + 4 * 4 + 8; /* options */
    n += 2 * 8;             /* normalisation */
    n += 8 + 4 + strnlen(m->base_variant, sizeof m->base_variant) + 8 + 4 +
         strnlen(m->base_params, sizeof m->base_params) + 4 + 4; /* base */
    n += 4 + 8 + 8 + 8 + 4 * 8 + 8;                              /* state */
    n += 8;                                                      /* id */
    n += 8 + 4 * lay->n_params + 8 + 4 * lay->n_buffers + 2 * (8 + 4 * lay->n_params);
    n += 8 + m->n_history * (4 + 8 + 8 + 8);
    n += 4; /* CRC */
    return n;
}

static void write_body(writer *w, const tomo_model *m)
{
    const tomo_unet *net = m->net;
    const tomo_unet_layout *lay = &net->layout;
    unsigned char head[HEADER_BYTES];
    memcpy(head, model_magic, 16);
    le_u32(head + 16, TOMO_MODEL_FORMAT_VERSION);
    le_u32(head + 20, 0);
    le_u64(head + 24, file_size(m));
    put(w, head, sizeof head);

    put_i32(w, net->config.in_channels);
    put_i32(w, net->config.base_features);
    put_i32(w, net->config.levels);

    put_i32(w, m->split.k);
    put_i32(w, (int)m->split.strategy);
    put_i32(w, m->split.context);

    const tomo_train_options *o = &m->options;
    put_i32(w, o->epochs);
    put_i32(w, o->slices_per_epoch);
    put_i32(w, o->batch);
    put_i32(w, o->patch);
    put_i32(w, o->patch_used);
    put_f32(w, o->adam.lr);
    put_f32(w, o->adam.beta1);
    put_f32(w, o->adam.beta2);
    put_f32(w, o->adam.eps);
    put_u64(w, o->seed);

    put_f64(w, m->mean);
    put_f64(w, m->std);

    put_u64(w, m->scan_fingerprint);
    put_text(w, m->base_variant, sizeof m->base_variant);
    put_u64(w, m->base_key);
    put_text(w, m->base_params, sizeof m->base_params);
    put_i32(w, m->slice_size);
    put_i32(w, m->n_slices);

    put_i32(w, m->epoch);
    put_u64(w, m->step_in_epoch);
    put_u64(w, m->step);
    put_f64(w, m->seconds);
    for (int i = 0; i < 4; i++)
        put_u64(w, m->rng.s[i]);
    put_u64(w, net->adam_step);

    put_u64(w, m->id);

    put_floats(w, net->params, lay->n_params);
    put_floats(w, net->buffers, lay->n_buffers);
    put_floats(w, net->adam_m, lay->n_params);
    put_floats(w, net->adam_v, lay->n_params);

    put_u64(w, m->n_history);
    for (size_t i = 0; i < m->n_history; i++) {
        const tomo_loss_record *r = &m->history[i];
        put_i32(w, r->epoch);
        put_u64(w, r->step);
        put_f64(w, r->loss);
        put_f64(w, r->seconds);
    }
    unsigned char crc[4];
    le_u32(crc, w->crc);
    put(w, crc, 4);
}

/* fsync of the folder holding `path`, so the rename itself survives a crash. */
static void sync_parent(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int tomo_model_save(tomo_model *model, const char *path, tomo_error *err)
{
    model->id = tomo_model_id(model);
    char tmp[PATH_MAX + 32];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write the model: %s", path,
                              strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write the model: %s", path, strerror(e));
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    writer w = {f, 0, 0, 0, 0};
    errno = 0;
    write_body(&w, model);
    if (!w.failed && w.bytes != file_size(model)) {
        w.failed = 1;
        w.error = EIO; /* file_size() and write_body() disagree: a bug */
    }
    if (!w.failed && (fflush(f) != 0 || fsync(fd) != 0)) {
        w.failed = 1;
        w.error = errno;
    }
    if (fclose(f) != 0 && !w.failed) {
        w.failed = 1;
        w.error = errno;
    }
    if (!w.failed && rename(tmp, path) != 0) {
        w.failed = 1;
        w.error = errno;
    }
    if (w.failed) {
        unlink(tmp);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write the model: %s", path,
                              strerror(w.error));
    }
    sync_parent(path);
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------ */

typedef struct reader {
    const unsigned char *p;
    size_t left;
    int short_read;
} reader;

static const unsigned char *take(reader *r, size_t n)
{
    if (r->short_read || n > r->left) {
        r->short_read = 1;
        return NULL;
    }
    const unsigned char *at = r->p;
    r->p += n;
    r->left -= n;
    return at;
}

static uint32_t get_u32(reader *r)
{
    const unsigned char *p = take(r, 4);
    return p ? get_le_u32(p) : 0;
}

static int get_i32(reader *r)
{
    return (int)(int32_t)get_u32(r);
}

static uint64_t get_u64(reader *r)
{
    const unsigned char *p = take(r, 8);
    return p ? get_le_u64(p) : 0;
}

static float get_f32(reader *r)
{
    uint32_t u = get_u32(r);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static double get_f64(reader *r)
{
    uint64_t u = get_u64(r);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* A text into buf (cap bytes with the terminator); -1 when it does not fit. */
static int get_text(reader *r, char *buf, size_t cap)
{
    uint32_t n = get_u32(r);
    if (n >= cap) {
        r->short_read = 1;
        return -1;
    }
    const unsigned char *p = take(r, n);
    if (!p)
        return -1;
    memcpy(buf, p, n);
    buf[n] = 0;
    return 0;
}

/* n floats into a; -1 when the stored count is not n. */
static int get_floats(reader *r, float *a, size_t n)
{
    if (get_u64(r) != n)
        return -1;
    const unsigned char *p = take(r, n * 4);
    if (!p)
        return -1;
    if (host_is_little_endian())
        memcpy(a, p, n * 4);
    else
        for (size_t i = 0; i < n; i++) {
            uint32_t u = get_le_u32(p + 4 * i);
            memcpy(a + i, &u, 4);
        }
    return 0;
}

static int damaged(tomo_error *err, const char *path, const char *what)
{
    return tomo_error_set(err, TOMO_E_FORMAT, "%s: damaged model file: %s", path, what);
}

static int read_whole(const char *path, unsigned char **out, size_t *len, tomo_error *err)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot open the model: %s", path,
                              strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        int e = errno;
        close(fd);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot read the model: %s", path,
                              S_ISDIR(st.st_mode) ? "is a folder" : strerror(e));
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf) {
        close(fd);
        return tomo_error_set(err, TOMO_E_NOMEM, "%s: out of memory for a %zu-byte model", path, n);
    }
    ssize_t k = tomo_pread_full(fd, buf, n, 0);
    if (k < 0) {
        int e = errno;
        free(buf);
        close(fd);
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot read the model: %s", path, strerror(e));
    }
    size_t got = (size_t)k;
    close(fd);
    *out = buf;
    *len = got;
    return 0;
}

static int parse(const char *path, const unsigned char *buf, size_t len, tomo_model **out,
                 tomo_error *err)
{
    reader r = {buf + HEADER_BYTES, len - HEADER_BYTES - 4, 0};
    tomo_unet_config cfg;
    cfg.in_channels = get_i32(&r);
    cfg.base_features = get_i32(&r);
    cfg.levels = get_i32(&r);
    if (r.short_read)
        return damaged(err, path, "truncated");
    tomo_unet_layout lay;
    tomo_error sub;
    tomo_error_clear(&sub);
    if (tomo_unet_layout_make(&cfg, &lay, &sub) < 0 || cfg.in_channels % 2 == 0)
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: damaged model file: bad network shape "
                              "%d:%d:%d",
                              path, cfg.in_channels, cfg.base_features, cfg.levels);
    /* Every array is in the file: a shape that asks for more than it holds is damage, caught
       before allocating. */
    if ((uint64_t)lay.n_params * 12 + (uint64_t)lay.n_buffers * 4 > len)
        return damaged(err, path, "network larger than the file");
    tomo_model *m;
    int rc = tomo_model_create(&cfg, &m, err);
    if (rc < 0)
        return rc;
    const char *bad = NULL;

    m->split.k = get_i32(&r);
    m->split.strategy = (tomo_split_strategy)get_i32(&r);
    m->split.context = get_i32(&r);
    if (m->split.k < 2 || m->split.k > 16)
        bad = "split count out of range";
    else if (m->split.strategy != TOMO_SPLIT_X1)
        bad = "unknown split strategy";
    else if (2 * m->split.context + 1 != cfg.in_channels)
        bad = "context does not match the input channels";

    tomo_train_options *o = &m->options;
    o->epochs = get_i32(&r);
    o->slices_per_epoch = get_i32(&r);
    o->batch = get_i32(&r);
    o->patch = get_i32(&r);
    o->patch_used = get_i32(&r);
    o->adam.lr = get_f32(&r);
    o->adam.beta1 = get_f32(&r);
    o->adam.beta2 = get_f32(&r);
    o->adam.eps = get_f32(&r);
    o->seed = get_u64(&r);
    if (!bad && (o->epochs < 0 || o->slices_per_epoch < 1 || o->batch < 1 || o->patch < 1 ||
                 o->patch_used < 0 || !(o->adam.lr > 0) || !isfinite(o->adam.lr)))
        bad = "training options out of range";

    m->mean = get_f64(&r);
    m->std = get_f64(&r);
    if (!bad && (!isfinite(m->mean) || !isfinite(m->std) || !(m->std > 0)))
        bad = "normalisation is not finite and positive";

    m->scan_fingerprint = get_u64(&r);
    if (get_text(&r, m->base_variant, sizeof m->base_variant) < 0 && !bad)
        bad = "base variant name too long";
    m->base_key = get_u64(&r);
    if (get_text(&r, m->base_params, sizeof m->base_params) < 0 && !bad)
        bad = "base parameters too long";
    m->slice_size = get_i32(&r);
    m->n_slices = get_i32(&r);
    if (!bad && (m->slice_size < 0 || m->n_slices < 0))
        bad = "negative volume size";

    m->epoch = get_i32(&r);
    m->step_in_epoch = get_u64(&r);
    m->step = get_u64(&r);
    m->seconds = get_f64(&r);
    for (int i = 0; i < 4; i++)
        m->rng.s[i] = get_u64(&r);
    m->net->adam_step = get_u64(&r);
    if (!bad && m->epoch < 0)
        bad = "negative epoch";
    uint64_t stored_id = get_u64(&r);

    if (!bad && (get_floats(&r, m->net->params, lay.n_params) < 0 ||
                 get_floats(&r, m->net->buffers, lay.n_buffers) < 0 ||
                 get_floats(&r, m->net->adam_m, lay.n_params) < 0 ||
                 get_floats(&r, m->net->adam_v, lay.n_params) < 0))
        bad = "array sizes do not match the network";

    uint64_t n_history = bad ? 0 : get_u64(&r);
    if (!bad && n_history > r.left / 28)
        bad = "loss history longer than the file";
    for (uint64_t i = 0; !bad && i < n_history; i++) {
        tomo_loss_record rec;
        rec.epoch = get_i32(&r);
        rec.step = get_u64(&r);
        rec.loss = get_f64(&r);
        rec.seconds = get_f64(&r);
        if (tomo_model_add_loss(m, &rec, err) < 0) {
            tomo_model_free(m);
            return -TOMO_E_NOMEM;
        }
    }
    if (!bad && r.short_read)
        bad = "truncated";
    if (!bad && r.left != 0)
        bad = "unexpected bytes after the last field";
    if (!bad) {
        m->id = tomo_model_id(m);
        if (m->id != stored_id)
            bad = "id does not match the contents";
    }
    if (bad) {
        tomo_model_free(m);
        return damaged(err, path, bad);
    }
    *out = m;
    return 0;
}

int tomo_model_load(const char *path, tomo_model **out, tomo_error *err)
{
    *out = NULL;
    unsigned char *buf;
    size_t len;
    int rc = read_whole(path, &buf, &len, err);
    if (rc < 0)
        return rc;
    if (len < 16 || memcmp(buf, model_magic, 16) != 0) {
        free(buf);
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: not a tomofs model file (no TOMOFS-N2I-MODEL magic)", path);
    }
    if (len < HEADER_BYTES + 4) {
        free(buf);
        return tomo_error_set(err, TOMO_E_FORMAT, "%s: damaged model file: truncated at %zu bytes",
                              path, len);
    }
    uint32_t version = get_le_u32(buf + 16);
    if (version != TOMO_MODEL_FORMAT_VERSION) {
        free(buf);
        return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                              "%s: model file format version %u; this tomofs reads version %d",
                              path, version, TOMO_MODEL_FORMAT_VERSION);
    }
    uint64_t size = get_le_u64(buf + 24);
    if (size != len) {
        free(buf);
        return tomo_error_set(err, TOMO_E_FORMAT,
                              "%s: damaged model file: %zu bytes, the header says %llu%s", path,
                              len, (unsigned long long)size, len < size ? " (truncated)" : "");
    }
    uint32_t crc = tomo_crc32(0, buf, len - 4);
    if (crc != get_le_u32(buf + len - 4)) {
        free(buf);
        return damaged(err, path, "checksum mismatch");
    }
    rc = parse(path, buf, len, out, err);
    free(buf);
    return rc;
}

int tomo_model_check_base(const tomo_model *model, const char *path, uint64_t scan_fingerprint,
                          const char *base_params, tomo_error *err)
{
    if (model->scan_fingerprint != scan_fingerprint)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: the model was trained on another scan (fingerprint %016llx, "
                              "this scan %016llx)",
                              path, (unsigned long long)model->scan_fingerprint,
                              (unsigned long long)scan_fingerprint);
    if (strcmp(model->base_params, base_params) != 0)
        return tomo_error_set(err, TOMO_E_INVALID,
                              "%s: the model was trained with other reconstruction parameters "
                              "(%s; now %s)",
                              path, model->base_params, base_params);
    return 0;
}

/* ---- places -------------------------------------------------------------------------------- */

int tomo_model_default_path(const char *cache_dir, uint64_t scan_fingerprint,
                            const char *base_variant, uint64_t base_key, char *buf, size_t size,
                            tomo_error *err)
{
    int n =
        snprintf(buf, size, "%s/models/%016llx-%s-%016llx.model", cache_dir,
                 (unsigned long long)scan_fingerprint, base_variant, (unsigned long long)base_key);
    if (n < 0 || (size_t)n >= size)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: cache folder path too long", cache_dir);
    return 0;
}

static int make_dir(const char *dir, tomo_error *err)
{
    if (mkdir(dir, 0700) == 0 || errno == EEXIST) {
        struct stat st;
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot create the folder: Not a directory", dir);
    }
    return tomo_error_set(err, TOMO_E_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
}

int tomo_model_make_dir(const char *cache_dir, tomo_error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/models", cache_dir) >= (int)sizeof path)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: cache folder path too long", cache_dir);
    /* Every missing parent, as mkdir -p. */
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(path, 0700) < 0 && errno != EEXIST) {
            int rc = tomo_error_set(err, TOMO_E_IO, "%s: cannot create the folder: %s", path,
                                    strerror(errno));
            *p = '/';
            return rc;
        }
        *p = '/';
    }
    return make_dir(path, err);
}

int tomo_model_sibling_path(const char *model_path, const char *suffix, char *buf, size_t size,
                            tomo_error *err)
{
    size_t n = strlen(model_path);
    static const char ext[] = ".model";
    size_t e = sizeof ext - 1;
    const char *slash = strrchr(model_path, '/');
    size_t base = slash ? (size_t)(slash - model_path) + 1 : 0;
    if (n >= base + e + 1 && strcmp(model_path + n - e, ext) == 0)
        n -= e;
    int w = snprintf(buf, size, "%.*s%s", (int)n, model_path, suffix);
    if (w < 0 || (size_t)w >= size)
        return tomo_error_set(err, TOMO_E_INVALID, "%s: path too long", model_path);
    return 0;
}
