/*
 * Model files (denoise/model.h) and the training loop (denoise/train.h): round trips, damaged
 * files, the checksums against independent bitwise implementations, the PNG writer, and
 * training on a synthetic source: an interrupted and resumed run equals an uninterrupted one
 * bit for bit, and the stop flag leaves a valid checkpoint.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../denoise/model.h"
#include "../../denoise/png.h"
#include "../../denoise/train.h"
#include "check.h"

static char tmpdir[256];

static void make_tmpdir(void)
{
    if (tmpdir[0])
        return;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tomofs-test-model-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static void path_in_tmp(char *buf, size_t size, const char *name)
{
    make_tmpdir();
    snprintf(buf, size, "%s/%s", tmpdir, name);
}

static unsigned char *read_file(const char *path, size_t *len)
{
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, len, f);
    fclose(f);
}

/* Independent, bit-at-a-time CRC-32 (zlib's). */
static uint32_t crc32_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return ~c;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A small model with every field set to something recognisable. */
static tomo_model *sample_model(void)
{
    tomo_unet_config cfg = {5, 3, 2};
    tomo_model *m;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_model_create(&cfg, &m, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        exit(1);
    }
    tomo_rng rng;
    tomo_rng_seed(&rng, 42);
    tomo_unet_init(m->net, &rng);
    for (size_t i = 0; i < m->net->layout.n_params; i++) {
        m->net->adam_m[i] = (float)tomo_rng_normal(&rng);
        m->net->adam_v[i] = (float)tomo_rng_uniform(&rng);
    }
    for (size_t i = 0; i < m->net->layout.n_buffers; i++)
        m->net->buffers[i] = (float)tomo_rng_uniform(&rng);
    m->net->adam_step = 1234;
    m->epoch = 3;
    m->step_in_epoch = 7;
    m->step = 37;
    m->seconds = 12.5;
    m->rng = rng;
    m->mean = 0.0123;
    m->std = 0.0045;
    m->split.k = 3;
    m->options.epochs = 9;
    m->options.slices_per_epoch = 20;
    m->options.batch = 2;
    m->options.patch = 100;
    m->options.patch_used = 96;
    m->options.adam.lr = 5e-4f;
    m->options.seed = 77;
    m->scan_fingerprint = 0x0123456789abcdefull;
    snprintf(m->base_variant, sizeof m->base_variant, "rings-removed");
    m->base_key = 0xfedcba9876543210ull;
    snprintf(m->base_params, sizeof m->base_params, "v3 filter=chesler rings=sort");
    m->slice_size = 128;
    m->n_slices = 64;
    for (int i = 1; i <= 37; i++) {
        tomo_loss_record r = {(i - 1) / 10 + 1, (uint64_t)i, 1.0 / i, 0.25 * i};
        tomo_model_add_loss(m, &r, &err);
    }
    return m;
}

static int same_floats(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof(float)) == 0;
}

static void check_same_model(const tomo_model *a, const tomo_model *b)
{
    CHECK_INT(a->net->config.in_channels, b->net->config.in_channels);
    CHECK_INT(a->net->config.base_features, b->net->config.base_features);
    CHECK_INT(a->net->config.levels, b->net->config.levels);
    size_t np = a->net->layout.n_params, nb = a->net->layout.n_buffers;
    CHECK(np == b->net->layout.n_params && nb == b->net->layout.n_buffers);
    CHECK(same_floats(a->net->params, b->net->params, np));
    CHECK(same_floats(a->net->buffers, b->net->buffers, nb));
    CHECK(same_floats(a->net->adam_m, b->net->adam_m, np));
    CHECK(same_floats(a->net->adam_v, b->net->adam_v, np));
    CHECK(a->net->adam_step == b->net->adam_step);
    CHECK_INT(a->epoch, b->epoch);
    CHECK(a->step_in_epoch == b->step_in_epoch);
    CHECK(a->step == b->step);
    CHECK(a->seconds == b->seconds);
    CHECK(memcmp(&a->rng, &b->rng, sizeof a->rng) == 0);
    CHECK(a->mean == b->mean && a->std == b->std);
    CHECK_INT(a->split.k, b->split.k);
    CHECK_INT(a->split.strategy, b->split.strategy);
    CHECK_INT(a->split.context, b->split.context);
    CHECK_INT(a->options.epochs, b->options.epochs);
    CHECK_INT(a->options.slices_per_epoch, b->options.slices_per_epoch);
    CHECK_INT(a->options.batch, b->options.batch);
    CHECK_INT(a->options.patch, b->options.patch);
    CHECK_INT(a->options.patch_used, b->options.patch_used);
    CHECK(a->options.adam.lr == b->options.adam.lr);
    CHECK(a->options.adam.beta1 == b->options.adam.beta1);
    CHECK(a->options.adam.beta2 == b->options.adam.beta2);
    CHECK(a->options.adam.eps == b->options.adam.eps);
    CHECK(a->options.seed == b->options.seed);
    CHECK(a->scan_fingerprint == b->scan_fingerprint);
    CHECK(strcmp(a->base_variant, b->base_variant) == 0);
    CHECK(a->base_key == b->base_key);
    CHECK(strcmp(a->base_params, b->base_params) == 0);
    CHECK_INT(a->slice_size, b->slice_size);
    CHECK_INT(a->n_slices, b->n_slices);
    CHECK(a->n_history == b->n_history);
    for (size_t i = 0; i < a->n_history && i < b->n_history; i++)
        CHECK(memcmp(&a->history[i], &b->history[i], sizeof a->history[i]) == 0 ||
              (a->history[i].epoch == b->history[i].epoch &&
               a->history[i].step == b->history[i].step &&
               a->history[i].loss == b->history[i].loss &&
               a->history[i].seconds == b->history[i].seconds));
    CHECK(a->id == b->id);
}

static void test_round_trip(void)
{
    tomo_model *m = sample_model();
    char path[512], path2[512];
    path_in_tmp(path, sizeof path, "a.model");
    path_in_tmp(path2, sizeof path2, "b.model");
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_model_save(m, path, &err), 0);
    CHECK(m->id != 0);
    CHECK(m->id == tomo_model_id(m));
    tomo_model *back = NULL;
    CHECK_INT(tomo_model_load(path, &back, &err), 0);
    if (!back) {
        fprintf(stderr, "%s\n", err.message);
        tomo_model_free(m);
        return;
    }
    check_same_model(m, back);
    /* Saved again, the bytes are the same: the format has no padding or time in it. */
    CHECK_INT(tomo_model_save(back, path2, &err), 0);
    size_t la, lb;
    unsigned char *a = read_file(path, &la), *b = read_file(path2, &lb);
    CHECK(a && b && la == lb && memcmp(a, b, la) == 0);
    /* The header and trailer as documented, checked with an independent CRC. */
    CHECK(memcmp(a, "TOMOFS-N2I-MODEL", 16) == 0);
    CHECK_INT(le32(a + 16), TOMO_MODEL_FORMAT_VERSION);
    CHECK(le32(a + 24) == la && le32(a + 28) == 0);
    CHECK(le32(a + la - 4) == crc32_bitwise(a, la - 4));
    /* No temporary file is left behind. */
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while ((e = readdir(d)))
        CHECK(!strstr(e->d_name, ".tmp."));
    closedir(d);
    free(a);
    free(b);

    /* The id covers the pixels' determinants, not the training state. */
    uint64_t id = tomo_model_id(m);
    m->net->adam_m[0] += 1.0f;
    m->step += 5;
    CHECK(tomo_model_id(m) == id);
    m->net->params[3] = nextafterf(m->net->params[3], 1e9f);
    CHECK(tomo_model_id(m) != id);
    m->net->params[3] = back->net->params[3];
    m->net->buffers[1] += 1.0f;
    CHECK(tomo_model_id(m) != id);
    m->net->buffers[1] = back->net->buffers[1];
    m->std *= 2;
    CHECK(tomo_model_id(m) != id);
    m->std = back->std;
    snprintf(m->base_params, sizeof m->base_params, "v3 filter=ram-lak rings=sort");
    CHECK(tomo_model_id(m) != id);
    tomo_model_free(back);
    tomo_model_free(m);
    unlink(path);
    unlink(path2);
}

/* Loads `path` expecting failure with `code` and a message naming the file and `what`. */
static void expect_load_error(const char *path, int code, const char *what)
{
    tomo_model *m = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    int rc = tomo_model_load(path, &m, &err);
    CHECK_INT(rc, -code);
    CHECK(m == NULL);
    CHECK_CONTAINS(err.message, path);
    CHECK_CONTAINS(err.message, what);
    CHECK(!strchr(err.message, '\n'));
    tomo_model_free(m);
}

static void test_damaged(void)
{
    tomo_model *m = sample_model();
    char path[512], bad[512];
    path_in_tmp(path, sizeof path, "good.model");
    path_in_tmp(bad, sizeof bad, "bad.model");
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_model_save(m, path, &err), 0);
    size_t len;
    unsigned char *good = read_file(path, &len);
    unsigned char *buf = malloc(len + 16);

    /* One flipped bit anywhere after the header: the checksum. */
    size_t spots[] = {40, len / 2, len - 5, len - 1};
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        memcpy(buf, good, len);
        buf[spots[i]] ^= 0x10;
        write_file(bad, buf, len);
        expect_load_error(bad, TOMO_E_FORMAT, "damaged model file: checksum mismatch");
    }
    /* Truncated, at several places. */
    size_t cuts[] = {len - 1, len / 2, 40, 20};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(bad, good, cuts[i]);
        expect_load_error(bad, TOMO_E_FORMAT, "damaged model file");
    }
    write_file(bad, good, len / 2);
    expect_load_error(bad, TOMO_E_FORMAT, "truncated");
    /* Bytes appended. */
    memcpy(buf, good, len);
    memset(buf + len, 0, 16);
    write_file(bad, buf, len + 16);
    expect_load_error(bad, TOMO_E_FORMAT, "damaged model file");
    /* Foreign files. */
    write_file(bad, "epoch,step,loss,seconds\n1,1,0.5,0.1\n", 36);
    expect_load_error(bad, TOMO_E_FORMAT, "not a tomofs model file");
    write_file(bad, "", 0);
    expect_load_error(bad, TOMO_E_FORMAT, "not a tomofs model file");
    write_file(bad, "TOMOFS", 6);
    expect_load_error(bad, TOMO_E_FORMAT, "not a tomofs model file");
    /* A future version, with a valid checksum. */
    memcpy(buf, good, len);
    put_le32(buf + 16, 99);
    put_le32(buf + len - 4, crc32_bitwise(buf, len - 4));
    write_file(bad, buf, len);
    expect_load_error(bad, TOMO_E_UNSUPPORTED, "format version 99");
    /* Inconsistent contents behind a valid checksum: the split count (offset 32 + 12). */
    memcpy(buf, good, len);
    put_le32(buf + 44, 1);
    put_le32(buf + len - 4, crc32_bitwise(buf, len - 4));
    write_file(bad, buf, len);
    expect_load_error(bad, TOMO_E_FORMAT, "split count");
    /* A weight changed behind a valid checksum: the stored id no longer matches. */
    memcpy(buf, good, len);
    size_t params_at = len - 4 - 8 - m->n_history * 28 -
                       (3 * m->net->layout.n_params + m->net->layout.n_buffers) * 4 - 3 * 8;
    CHECK(le32(buf + params_at - 8) == m->net->layout.n_params);
    buf[params_at + 1] ^= 1;
    put_le32(buf + len - 4, crc32_bitwise(buf, len - 4));
    write_file(bad, buf, len);
    expect_load_error(bad, TOMO_E_FORMAT, "id does not match");
    /* Missing, and a folder. */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none.model", tmpdir);
    expect_load_error(missing, TOMO_E_IO, "cannot open the model");
    expect_load_error(tmpdir, TOMO_E_IO, "cannot");

    /* A failed save names the file and leaves the previous model as it was. */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/folder.model", tmpdir);
    tomo_error_clear(&err);
    CHECK_INT(tomo_model_save(m, nodir, &err), -TOMO_E_IO);
    CHECK_CONTAINS(err.message, nodir);
    size_t len2;
    unsigned char *again = read_file(path, &len2);
    CHECK(len2 == len && memcmp(again, good, len) == 0);
    free(again);
    free(good);
    free(buf);
    tomo_model_free(m);
    unlink(path);
    unlink(bad);
}

static void test_checksums(void)
{
    /* The standard check values. */
    CHECK(tomo_crc32(0, "123456789", 9) == 0xcbf43926u);
    CHECK(tomo_adler32(1, "Wikipedia", 9) == 0x11e60398u);
    /* Against the bitwise CRC over lengths that exercise the 8-byte path and its tail, and
       continuation. */
    unsigned char data[1000];
    tomo_rng rng;
    tomo_rng_seed(&rng, 5);
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)tomo_rng_next(&rng);
    for (size_t n = 0; n < 40; n++)
        CHECK(tomo_crc32(0, data, n) == crc32_bitwise(data, n));
    CHECK(tomo_crc32(tomo_crc32(0, data, 333), data + 333, 667) == crc32_bitwise(data, 1000));
    /* Adler-32 against its definition, over more than one 5552-byte run. */
    static unsigned char big[20000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (unsigned char)(255 - i % 7);
    uint64_t a = 1, b = 0;
    for (size_t i = 0; i < sizeof big; i++) {
        a = (a + big[i]) % 65521;
        b = (b + a) % 65521;
    }
    CHECK(tomo_adler32(1, big, sizeof big) == (uint32_t)(b << 16 | a));
}

static void test_png(void)
{
    /* A 300 x 200 image needs two stored blocks; the file's structure is checked here and its
       pixels by the integration test (a Python decoder). */
    int w = 300, h = 200;
    unsigned char *rgb = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++)
        rgb[i] = (unsigned char)(i * 7);
    char path[512];
    path_in_tmp(path, sizeof path, "t.png");
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_png_write_rgb(path, rgb, w, h, &err), 0);
    size_t len;
    unsigned char *f = read_file(path, &len);
    CHECK(f && len > 8 + 25 + 12);
    CHECK(memcmp(f, "\x89PNG\r\n\x1a\n", 8) == 0);
    /* Walk the chunks, checking each CRC. */
    size_t at = 8;
    int chunks = 0, saw_end = 0;
    while (at + 12 <= len) {
        uint32_t n = (uint32_t)f[at] << 24 | (uint32_t)f[at + 1] << 16 | (uint32_t)f[at + 2] << 8 |
                     f[at + 3];
        CHECK(at + 12 + n <= len);
        if (at + 12 + n > len)
            break;
        uint32_t crc = (uint32_t)f[at + 8 + n] << 24 | (uint32_t)f[at + 9 + n] << 16 |
                       (uint32_t)f[at + 10 + n] << 8 | f[at + 11 + n];
        CHECK(crc == crc32_bitwise(f + at + 4, 4 + n));
        if (memcmp(f + at + 4, "IEND", 4) == 0)
            saw_end = 1;
        at += 12 + n;
        chunks++;
    }
    CHECK(saw_end && at == len && chunks == 3);
    unlink(path);
    tomo_error_clear(&err);
    CHECK_INT(tomo_png_write_rgb("/nonexistent-dir/x.png", rgb, w, h, &err), -TOMO_E_IO);
    CHECK_CONTAINS(err.message, "/nonexistent-dir/x.png");
    tomo_error_clear(&err);
    CHECK_INT(tomo_png_write_rgb(path, rgb, 0, h, &err), -TOMO_E_INVALID);
    free(f);
    free(rgb);
}

static void test_paths(void)
{
    char buf[512];
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(tomo_model_default_path("/c", 0x0123456789abcdefull, "rings-removed",
                                      0xfedcba9876543210ull, buf, sizeof buf, &err),
              0);
    CHECK(strcmp(buf, "/c/models/0123456789abcdef-rings-removed-fedcba9876543210.model") == 0);
    CHECK(tomo_model_default_path("/c", 1, "slices", 2, buf, 20, &err) < 0);
    CHECK_INT(tomo_model_sibling_path("/a/b.model", ".loss.csv", buf, sizeof buf, &err), 0);
    CHECK(strcmp(buf, "/a/b.loss.csv") == 0);
    CHECK_INT(tomo_model_sibling_path("/a/b.bin", ".loss.png", buf, sizeof buf, &err), 0);
    CHECK(strcmp(buf, "/a/b.bin.loss.png") == 0);
    CHECK_INT(tomo_model_sibling_path("/a/.model", ".loss.png", buf, sizeof buf, &err), 0);
    CHECK(strcmp(buf, "/a/.model.loss.png") == 0);

    char cache[600];
    path_in_tmp(cache, sizeof cache, "cache/deeper");
    CHECK_INT(tomo_model_make_dir(cache, &err), 0);
    char models[700];
    snprintf(models, sizeof models, "%s/models", cache);
    struct stat st;
    CHECK(stat(models, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    CHECK_INT(tomo_model_make_dir(cache, &err), 0); /* again: fine */
    rmdir(models);
    rmdir(cache);
    path_in_tmp(cache, sizeof cache, "cache");
    rmdir(cache);
}

static void test_reflect(void)
{
    /* numpy.pad(mode="reflect") of 0..n-1. */
    CHECK_INT(tomo_model_reflect(-1, 10), 1);
    CHECK_INT(tomo_model_reflect(-5, 10), 5);
    CHECK_INT(tomo_model_reflect(10, 10), 8);
    CHECK_INT(tomo_model_reflect(14, 10), 4);
    CHECK_INT(tomo_model_reflect(3, 10), 3);
    CHECK_INT(tomo_model_reflect(-5, 3), 1); /* 1 0 1 2 1 0 [1] ... */
    CHECK_INT(tomo_model_reflect(-4, 3), 0);
    CHECK_INT(tomo_model_reflect(5, 3), 1);
    CHECK_INT(tomo_model_reflect(7, 1), 0);
    CHECK_INT(tomo_model_reflect(-3, 2), 1);
}

/* ---- training on a synthetic source --------------------------------------------------------- */

/* K noisy copies of a smooth volume: split j, slice z, pixel (y, x). */
#define SYN_SIZE   40
#define SYN_SLICES 9
#define SYN_K      2

typedef struct syn {
    float *pixels; /* [K][slices][size][size] */
    int fetches;
} syn;

static int syn_fetch(void *ctx, int split, int z, const float **pixels, void **handle,
                     tomo_error *err)
{
    syn *s = ctx;
    if (split < 0 || split >= SYN_K || z < 0 || z >= SYN_SLICES)
        return tomo_error_set(err, TOMO_E_INVALID, "synthetic: no slice %d of split %d", z, split);
    *pixels = s->pixels + ((size_t)split * SYN_SLICES + z) * SYN_SIZE * SYN_SIZE;
    *handle = NULL;
    __atomic_fetch_add(&s->fetches, 1, __ATOMIC_SEQ_CST);
    return 0;
}

static void syn_release(void *ctx, void *handle)
{
    (void)ctx;
    (void)handle;
}

static syn *syn_make(tomo_train_source *src)
{
    syn *s = calloc(1, sizeof *s);
    size_t area = SYN_SIZE * SYN_SIZE;
    s->pixels = malloc(SYN_K * SYN_SLICES * area * sizeof(float));
    tomo_rng rng;
    tomo_rng_seed(&rng, 9);
    for (int j = 0; j < SYN_K; j++)
        for (int z = 0; z < SYN_SLICES; z++)
            for (int y = 0; y < SYN_SIZE; y++)
                for (int x = 0; x < SYN_SIZE; x++) {
                    double r2 = (x - 20.0) * (x - 20.0) + (y - 18.0) * (y - 18.0);
                    double v = (r2 < 150.0 + 10 * z ? 3.0 : 1.0) + 0.1 * sin(0.3 * x + z);
                    s->pixels[((size_t)j * SYN_SLICES + z) * area + (size_t)y * SYN_SIZE + x] =
                        (float)(v + 0.5 * tomo_rng_normal(&rng));
                }
    src->size = SYN_SIZE;
    src->n_slices = SYN_SLICES;
    src->k = SYN_K;
    src->ctx = s;
    src->fetch = syn_fetch;
    src->release = syn_release;
    return s;
}

static void syn_free(syn *s)
{
    free(s->pixels);
    free(s);
}

static int have_cpu_backend(void)
{
    tomo_unet_config cfg = {3, 2, 1};
    tomo_unet *net;
    tomo_unet_exec *exec = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    tomo_unet_create(&cfg, &net, &err);
    tomo_unet_exec_config ec = {TOMO_UNET_DEVICE_CPU, 1, 1, 8, 8, 1, 0};
    int ok = tomo_unet_exec_create(net, &ec, &exec, &err) == 0;
    tomo_unet_exec_destroy(exec);
    tomo_unet_destroy(net);
    return ok;
}

/* A model prepared for the synthetic source: 3 epochs of 3 steps of 2 samples. */
static tomo_model *syn_model(const tomo_train_source *src, int patch)
{
    tomo_unet_config cfg = {3, 4, 2};
    tomo_model *m;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_model_create(&cfg, &m, &err) < 0)
        return NULL;
    m->split.k = SYN_K;
    m->options.epochs = 3;
    m->options.slices_per_epoch = 5;
    m->options.batch = 2;
    m->options.patch = patch;
    m->options.seed = 3;
    m->options.adam.lr = 1e-2f;
    snprintf(m->base_variant, sizeof m->base_variant, "synthetic");
    if (tomo_train_prepare(m, src, &err) < 0) {
        fprintf(stderr, "%s\n", err.message);
        tomo_model_free(m);
        return NULL;
    }
    return m;
}

static void test_prepare(void)
{
    tomo_train_source src;
    syn *s = syn_make(&src);
    tomo_model *m = syn_model(&src, 1000);
    CHECK(m != NULL);
    if (!m) {
        syn_free(s);
        return;
    }
    CHECK_INT(m->options.patch_used, 40); /* clamped to the slice, a multiple of 4 */
    CHECK_INT(m->slice_size, SYN_SIZE);
    CHECK_INT(m->n_slices, SYN_SLICES);
    CHECK(tomo_train_steps_per_epoch(&m->options) == 3);
    /* The normalisation against a direct computation over the measured slices (all 9 here;
       no pixel is exactly 0). */
    double sum = 0, sum2 = 0, n = (double)SYN_K * SYN_SLICES * SYN_SIZE * SYN_SIZE;
    for (size_t i = 0; i < (size_t)n; i++) {
        sum += s->pixels[i];
        sum2 += (double)s->pixels[i] * s->pixels[i];
    }
    CHECK_NEAR(m->mean, sum / n, 1e-9);
    CHECK_NEAR(m->std, sqrt(sum2 / n - (sum / n) * (sum / n)), 1e-9);
    /* Initial weights are the seed's: the same as tomo_unet_init after seeding. */
    tomo_unet *ref;
    tomo_error err;
    tomo_error_clear(&err);
    tomo_unet_create(&m->net->config, &ref, &err);
    tomo_rng rng;
    tomo_rng_seed(&rng, 3);
    tomo_unet_init(ref, &rng);
    CHECK(same_floats(ref->params, m->net->params, ref->layout.n_params));
    CHECK(memcmp(&rng, &m->rng, sizeof rng) == 0);
    tomo_unet_destroy(ref);
    tomo_model_free(m);

    m = syn_model(&src, 30);
    CHECK(m && m->options.patch_used == 28);
    tomo_model_free(m);
    /* Too small for the network. */
    tomo_unet_config cfg = {3, 4, 6};
    tomo_error_clear(&err);
    CHECK_INT(tomo_model_create(&cfg, &m, &err), 0);
    m->split.k = SYN_K;
    CHECK_INT(tomo_train_prepare(m, &src, &err), -TOMO_E_INVALID);
    CHECK_CONTAINS(err.message, "smaller than the network");
    tomo_model_free(m);
    syn_free(s);
}

/* The batches against an independent reading of train.h's sampling rules. */
static void test_batch(void)
{
    tomo_train_source src;
    syn *s = syn_make(&src);
    tomo_model *m = syn_model(&src, 16);
    if (!m) {
        CHECK(m != NULL);
        syn_free(s);
        return;
    }
    const int P = 16, C = 3, B = 2;
    float in[2 * 3 * 16 * 16], target[2 * 16 * 16];
    tomo_rng rng = m->rng, mine = m->rng;
    tomo_error err;
    tomo_error_clear(&err);
    int flips_seen = 0;
    for (uint64_t step = 0; step < 12; step++) {
        CHECK_INT(tomo_train_batch(m, &src, step, &rng, in, target, &err), 0);
        for (int b = 0; b < B; b++) {
            int k = (int)((step * B + b) % SYN_K);
            int z = (int)tomo_rng_below(&mine, SYN_SLICES);
            int y0 = (int)tomo_rng_below(&mine, SYN_SIZE - P + 1);
            int x0 = (int)tomo_rng_below(&mine, SYN_SIZE - P + 1);
            int d = (int)tomo_rng_below(&mine, 8);
            flips_seen |= 1 << d;
            for (int a = 0; a < P; a++)
                for (int c2 = 0; c2 < P; c2++) {
                    /* out(a, c2) = src(u, v): transpose, then flip rows, then columns. */
                    int u = a, v = c2;
                    if (d & 4) {
                        u = c2;
                        v = a;
                    }
                    if (d & 2)
                        u = P - 1 - u;
                    if (d & 1)
                        v = P - 1 - v;
                    size_t px = (size_t)(y0 + u) * SYN_SIZE + (x0 + v);
                    const float *tk =
                        s->pixels + ((size_t)k * SYN_SLICES + z) * SYN_SIZE * SYN_SIZE;
                    double want = (tk[px] - m->mean) / m->std;
                    CHECK_NEAR(target[(size_t)b * P * P + a * P + c2], want, 1e-5);
                    for (int ch = 0; ch < C; ch++) {
                        int zc = z - 1 + ch;
                        zc = zc < 0 ? -zc : zc >= SYN_SLICES ? 2 * (SYN_SLICES - 1) - zc : zc;
                        const float *other =
                            s->pixels + ((size_t)(1 - k) * SYN_SLICES + zc) * SYN_SIZE * SYN_SIZE;
                        double w = (other[px] - m->mean) / m->std;
                        CHECK_NEAR(in[((size_t)b * C + ch) * P * P + a * P + c2], w, 1e-5);
                    }
                }
        }
    }
    CHECK(memcmp(&rng, &mine, sizeof rng) == 0);
    CHECK(flips_seen > 0x0f); /* more than the plain flips: transposes too */
    tomo_model_free(m);
    syn_free(s);
}

typedef struct stop_at {
    volatile sig_atomic_t flag;
    uint64_t step;
    int steps_seen;
} stop_at;

static void stop_on_step(void *ctx, const tomo_train_status *st)
{
    stop_at *s = ctx;
    s->steps_seen++;
    if (st->step == s->step)
        s->flag = 1;
}

/* Trains `m` (a prepared model) with checkpoints to path, stopping after step `stop` (0: no). */
static int syn_run(tomo_model *m, const tomo_train_source *src, const char *path, uint64_t stop,
                   tomo_error *err)
{
    stop_at s = {0, stop, 0};
    tomo_train_run_config rc = {0};
    rc.model_path = path;
    rc.device = TOMO_UNET_DEVICE_CPU;
    rc.threads = 2;
    rc.stop = &s.flag;
    rc.ctx = &s;
    rc.on_step = stop_on_step;
    if (stop == (uint64_t)-1)
        s.flag = 1; /* before the first step */
    return tomo_train_run(m, src, &rc, err);
}

static void check_same_training(const tomo_model *a, const tomo_model *b)
{
    size_t np = a->net->layout.n_params, nb = a->net->layout.n_buffers;
    CHECK(same_floats(a->net->params, b->net->params, np));
    CHECK(same_floats(a->net->buffers, b->net->buffers, nb));
    CHECK(same_floats(a->net->adam_m, b->net->adam_m, np));
    CHECK(same_floats(a->net->adam_v, b->net->adam_v, np));
    CHECK(a->net->adam_step == b->net->adam_step);
    CHECK(memcmp(&a->rng, &b->rng, sizeof a->rng) == 0);
    CHECK(a->step == b->step && a->epoch == b->epoch && a->step_in_epoch == b->step_in_epoch);
    CHECK(a->n_history == b->n_history);
    for (size_t i = 0; i < a->n_history && i < b->n_history; i++)
        CHECK(a->history[i].loss == b->history[i].loss &&
              a->history[i].epoch == b->history[i].epoch &&
              a->history[i].step == b->history[i].step);
    CHECK(tomo_model_id(a) == tomo_model_id(b));
}

static void test_resume(void)
{
    if (!have_cpu_backend())
        SKIP("no CPU network backend in this build");
    tomo_train_source src;
    syn *s = syn_make(&src);
    char path_a[512], path_b[512], csv[600];
    path_in_tmp(path_a, sizeof path_a, "full.model");
    path_in_tmp(path_b, sizeof path_b, "cut.model");
    tomo_error err;
    tomo_error_clear(&err);

    tomo_model *a = syn_model(&src, 32);
    CHECK_INT(syn_run(a, &src, path_a, 0, &err), 0);
    CHECK_INT(a->epoch, 3);
    CHECK(a->step == 9 && a->n_history == 9 && a->step_in_epoch == 0);
    CHECK(a->net->adam_step == 9);
    tomo_model *a_file = NULL;
    CHECK_INT(tomo_model_load(path_a, &a_file, &err), 0);
    if (a_file)
        check_same_training(a, a_file);
    tomo_model_free(a_file);

    /* Stopped mid-epoch (4: epoch 2, step 1), at an epoch's end (6), before any step (-1),
       and twice in a row (2 then 7): each resumed run ends with the same bits. */
    const uint64_t stops[][2] = {{4, 0}, {6, 0}, {(uint64_t)-1, 0}, {2, 7}};
    for (size_t t = 0; t < sizeof stops / sizeof stops[0]; t++) {
        tomo_model *b = syn_model(&src, 32);
        tomo_error_clear(&err);
        CHECK_INT(syn_run(b, &src, path_b, stops[t][0], &err), -TOMO_E_CANCELLED);
        uint64_t at = stops[t][0] == (uint64_t)-1 ? 0 : stops[t][0];
        tomo_model_free(b);
        /* The checkpoint is valid and holds the step it stopped at. */
        b = NULL;
        CHECK_INT(tomo_model_load(path_b, &b, &err), 0);
        if (!b)
            continue;
        CHECK(b->step == at && b->n_history == at);
        CHECK(b->epoch == (int)(at / 3) && b->step_in_epoch == at % 3);
        tomo_model_sibling_path(path_b, ".loss.csv", csv, sizeof csv, &err);
        size_t len;
        char *text = (char *)read_file(csv, &len);
        int lines = 0;
        for (size_t i = 0; text && i < len; i++)
            lines += text[i] == '\n';
        CHECK_INT(lines, (int)at + 1);
        free(text);
        if (stops[t][1]) {
            tomo_error_clear(&err);
            CHECK_INT(syn_run(b, &src, path_b, stops[t][1], &err), -TOMO_E_CANCELLED);
            tomo_model_free(b);
            b = NULL;
            CHECK_INT(tomo_model_load(path_b, &b, &err), 0);
            if (!b)
                continue;
        }
        tomo_error_clear(&err);
        CHECK_INT(syn_run(b, &src, path_b, 0, &err), 0);
        check_same_training(a, b);
        tomo_model *b_file = NULL;
        CHECK_INT(tomo_model_load(path_b, &b_file, &err), 0);
        if (b_file)
            check_same_training(a, b_file);
        tomo_model_free(b_file);
        tomo_model_free(b);
    }
    /* A finished model trains no further, and more epochs continue it. */
    tomo_error_clear(&err);
    CHECK_INT(syn_run(a, &src, path_a, 0, &err), 0);
    CHECK(a->step == 9);
    a->options.epochs = 4;
    CHECK_INT(syn_run(a, &src, path_a, 0, &err), 0);
    CHECK(a->step == 12 && a->epoch == 4);
    tomo_model_free(a);
    syn_free(s);
}

/* A source that fails part way: the error names the slice and nothing is left half-saved. */
static int failing_fetch(void *ctx, int split, int z, const float **pixels, void **handle,
                         tomo_error *err)
{
    syn *s = ctx;
    if (__atomic_load_n(&s->fetches, __ATOMIC_SEQ_CST) >= 40)
        return tomo_error_set(err, TOMO_E_IO, "scan/q0007.img: truncated (slice %d, split %d)", z,
                              split);
    return syn_fetch(ctx, split, z, pixels, handle, err);
}

static void test_fetch_failure(void)
{
    if (!have_cpu_backend())
        SKIP("no CPU network backend in this build");
    tomo_train_source src;
    syn *s = syn_make(&src);
    tomo_model *m = syn_model(&src, 32);
    src.fetch = failing_fetch;
    s->fetches = 0;
    char path[512];
    path_in_tmp(path, sizeof path, "fail.model");
    tomo_error err;
    tomo_error_clear(&err);
    CHECK_INT(syn_run(m, &src, path, 0, &err), -TOMO_E_IO);
    CHECK_CONTAINS(err.message, "scan/q0007.img: truncated");
    tomo_model *back = NULL;
    /* 40 fetches are 10 samples (4 fetches each), 5 steps: the first epoch of 3 was saved. */
    CHECK_INT(tomo_model_load(path, &back, &err), 0);
    CHECK(back && back->epoch == 1 && back->step == 3);
    tomo_model_free(back);
    tomo_model_free(m);
    syn_free(s);
}

/* A signal while a batch is being gathered (a slow reconstruction): training stops without
   waiting for the batch, the checkpoint holds the last finished step, and resuming from it
   ends as the uninterrupted run does. */
static volatile sig_atomic_t gather_stop;
static int gather_stop_at;

static int stopping_fetch(void *ctx, int split, int z, const float **pixels, void **handle,
                          tomo_error *err)
{
    syn *s = ctx;
    if (__atomic_load_n(&s->fetches, __ATOMIC_SEQ_CST) >= gather_stop_at)
        gather_stop = 1;
    return syn_fetch(ctx, split, z, pixels, handle, err);
}

static void test_stop_while_gathering(void)
{
    if (!have_cpu_backend())
        SKIP("no CPU network backend in this build");
    tomo_train_source src;
    syn *s = syn_make(&src);
    char path_a[512], path_b[512];
    path_in_tmp(path_a, sizeof path_a, "gather_full.model");
    path_in_tmp(path_b, sizeof path_b, "gather_cut.model");
    tomo_error err;
    tomo_error_clear(&err);
    tomo_model *a = syn_model(&src, 32);
    CHECK_INT(syn_run(a, &src, path_a, 0, &err), 0);

    tomo_model *b = syn_model(&src, 32);
    src.fetch = stopping_fetch;
    s->fetches = 0;
    gather_stop = 0;
    gather_stop_at = 4 * 2 * 4 + 2; /* within the 5th step's batch (4 fetches a sample) */
    tomo_train_run_config rc = {0};
    rc.model_path = path_b;
    rc.device = TOMO_UNET_DEVICE_CPU;
    rc.threads = 2;
    rc.stop = &gather_stop;
    tomo_error_clear(&err);
    CHECK_INT(tomo_train_run(b, &src, &rc, &err), -TOMO_E_CANCELLED);
    /* The 5th batch was abandoned at once (each of the 2 gathering threads finishes at most
       the fetch it is in) and the 4th step, trained meanwhile, is saved. */
    CHECK(s->fetches > gather_stop_at && s->fetches <= gather_stop_at + 2);
    tomo_model_free(b);
    b = NULL;
    CHECK_INT(tomo_model_load(path_b, &b, &err), 0);
    if (b) {
        CHECK(b->step == 4);
        CHECK(b->n_history == b->step && b->net->adam_step == b->step);
        src.fetch = syn_fetch;
        CHECK_INT(syn_run(b, &src, path_b, 0, &err), 0);
        check_same_training(a, b);
    }
    tomo_model_free(b);
    tomo_model_free(a);
    syn_free(s);
}

TOMO_TEST_MAIN(test_round_trip, test_damaged, test_checksums, test_png, test_paths, test_reflect,
               test_prepare, test_batch, test_resume, test_fetch_failure, test_stop_while_gathering)
