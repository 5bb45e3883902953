/*
 * The disk tier: the shuffle and the chunk codec, then the LMDB store itself: round trips,
 * damage that must never be served, keys that must not mix, the capacity under churn, and two
 * processes writing at once.
 */
#include <lmdb.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../cache/codec.h"
#include "../../cache/store.h"
#include "../../common/hash.h"
#include "check.h"

/* ---- helpers ---- */

static uint32_t rng_next(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* A reconstruction-like slice: a disc of attenuation with noise, zero outside the circle. */
static tomo_slice *noisy_slice(int z, int size, uint32_t seed)
{
    tomo_slice *s = tomo_slice_new(0, z, size);
    uint32_t state = seed * 2654435761u + (uint32_t)z;
    double r2 = (size / 2.0) * (size / 2.0);
    for (int y = 0; y < size; y++)
        for (int x = 0; x < size; x++) {
            double dx = x + 0.5 - size / 2.0, dy = y + 0.5 - size / 2.0;
            float noise = (float)(rng_next(&state) % 10000) * 1e-6f;
            float v = dx * dx + dy * dy > r2 ? 0.0f : 0.03f + noise;
            if (dx * dx + dy * dy < r2 / 9)
                v += 0.02f;
            s->pixels[(size_t)y * size + x] = v;
        }
    return s;
}

static char *temp_dir(void)
{
    char *dir = strdup("/tmp/tomofs-store-XXXXXX");
    return mkdtemp(dir);
}

static void remove_store(char *dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/lock.mdb", dir);
    unlink(path);
    rmdir(dir);
    free(dir);
}

static tomo_store *open_store(const char *dir, uint64_t capacity)
{
    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = dir;
    cfg.capacity = capacity;
    tomo_store *s = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_store_open(&cfg, &s, &err) < 0)
        fprintf(stderr, "open: %s\n", err.message);
    return s;
}

static uint64_t key_of(const char *identity)
{
    return tomo_hash_bytes(TOMO_HASH_INIT, identity, strlen(identity));
}

static int add_variant(tomo_store *s, const char *identity)
{
    return tomo_store_add_variant(s, key_of(identity), identity, "test scan", NULL);
}

/* 1 when slice z of `handle` is stored with exactly the pixels of `want`. */
static int stored_equals(tomo_store *s, int handle, const tomo_slice *want)
{
    tomo_slice *got = tomo_slice_new(0, want->z, want->size);
    int hit = tomo_store_get(s, handle, want->z, got);
    int same = hit == 1 && memcmp(got->pixels, want->pixels, tomo_slice_bytes(want)) == 0;
    tomo_slice_unref(got);
    return same;
}

static int is_hit(tomo_store *s, int handle, int z, int size)
{
    tomo_slice *got = tomo_slice_new(0, z, size);
    int hit = tomo_store_get(s, handle, z, got);
    tomo_slice_unref(got);
    return hit;
}

static tomo_store_totals totals_of(tomo_store *s)
{
    tomo_store_totals t;
    memset(&t, 0, sizeof t);
    CHECK(tomo_store_read_totals(s, &t, NULL) == 0);
    return t;
}

static long long file_size(const char *dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

/* ---- codec ---- */

static void test_shuffle_round_trip(void)
{
    size_t n = 1001;
    unsigned char *src = malloc(4 * n), *shuf = malloc(4 * n), *back = malloc(4 * n);
    uint32_t state = 7;
    for (size_t i = 0; i < 4 * n; i++)
        src[i] = (unsigned char)rng_next(&state);
    tomo_shuffle4(src, shuf, n);
    int planes_ok = 1;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < 4; b++)
            planes_ok &= shuf[b * n + i] == src[4 * i + b];
    CHECK(planes_ok);
    tomo_unshuffle4(shuf, back, n);
    CHECK(memcmp(src, back, 4 * n) == 0);
    free(src);
    free(shuf);
    free(back);
}

static void test_crc32c_known_values(void)
{
    unsigned char zeros[32] = {0}, ones[32];
    memset(ones, 0xff, sizeof ones);
    CHECK_INT(tomo_crc32c(0, "123456789", 9), 0xe3069283u);
    CHECK_INT(tomo_crc32c(0, zeros, 32), 0x8a9136aau);
    CHECK_INT(tomo_crc32c(0, ones, 32), 0x62a8ab43u);
    /* in pieces, at every split point and alignment, equals in one go */
    const char *text = "tomofs checks every chunk it serves, byte for byte";
    size_t len = strlen(text);
    uint32_t whole = tomo_crc32c(0, text, len);
    for (size_t cut = 0; cut <= len; cut++)
        CHECK_INT(tomo_crc32c(tomo_crc32c(0, text, cut), text + cut, len - cut), whole);
}

static void test_chunk_round_trip(void)
{
    tomo_slice *s = noisy_slice(3, 512, 1); /* exactly one full chunk */
    size_t raw = tomo_slice_bytes(s);
    tomo_codec *c = tomo_codec_create(1);
    size_t cap = tomo_chunk_bound(raw);
    unsigned char *enc = malloc(cap), *dec = malloc(raw);
    size_t plain = 0;
    for (int shuffle = 0; shuffle <= 1; shuffle++) {
        size_t n = tomo_chunk_encode(c, s->pixels, raw, shuffle, enc, cap);
        CHECK(n > TOMO_CHUNK_HEADER_BYTES && n < raw);
        CHECK_INT(tomo_chunk_raw_length(enc, n), raw);
        CHECK_INT(tomo_chunk_decode(c, enc, n, dec, raw), TOMO_CHUNK_OK);
        CHECK(memcmp(dec, s->pixels, raw) == 0);
        if (!shuffle)
            plain = n;
        else
            CHECK(n < plain); /* the point of the shuffle */
    }
    size_t n = tomo_chunk_encode(c, s->pixels, raw, 1, enc, cap);
    CHECK_INT(tomo_chunk_decode(c, enc, n, dec, raw - 4), TOMO_CHUNK_BAD_LENGTH);
    CHECK(tomo_chunk_decode(c, enc, n - 100, dec, raw) != TOMO_CHUNK_OK);
    CHECK_INT(tomo_chunk_decode(c, enc, 8, dec, raw), TOMO_CHUNK_BAD_HEADER);
    enc[9] ^= 0x10; /* the stored checksum */
    CHECK_INT(tomo_chunk_decode(c, enc, n, dec, raw), TOMO_CHUNK_BAD_CHECKSUM);
    enc[9] ^= 0x10;
    /* any single flipped bit of the payload is refused, by zstd or by the checksum */
    int all_refused = 1;
    for (size_t at = TOMO_CHUNK_HEADER_BYTES; at < n; at += n / 97 + 1) {
        enc[at] ^= 0x04;
        all_refused &= tomo_chunk_decode(c, enc, n, dec, raw) != TOMO_CHUNK_OK;
        enc[at] ^= 0x04;
    }
    CHECK(all_refused);
    CHECK(tomo_chunk_encode(c, s->pixels, raw, 1, enc, 20) == 0); /* no room */
    free(enc);
    free(dec);
    tomo_codec_destroy(c);
    tomo_slice_unref(s);
}

/* ---- store ---- */

static void test_store_round_trip(void)
{
    char *dir = temp_dir();
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    CHECK(s != NULL);
    if (!s)
        return;
    int h = add_variant(s, "scan=1 variant=slices format=1 filter=chesler");
    /* 300 px: one short chunk; 600 px: a full chunk and a short one */
    tomo_slice *a = noisy_slice(0, 300, 2), *b = noisy_slice(1, 600, 2);
    tomo_slice *small = noisy_slice(2, 8, 2);
    tomo_store_put(s, h, a);
    tomo_store_put(s, h, b);
    tomo_store_put(s, h, small);
    tomo_store_flush(s);
    CHECK(stored_equals(s, h, a));
    CHECK(stored_equals(s, h, b));
    CHECK(stored_equals(s, h, small));
    CHECK_INT(is_hit(s, h, 7, 300), 0);
    CHECK_INT(is_hit(s, h, 0, 301), 0); /* another size is never served */
    tomo_store_totals t = totals_of(s);
    CHECK_INT(t.slices, 3);
    CHECK_INT(t.chunks, 4);
    CHECK_INT(t.raw_bytes, tomo_slice_bytes(a) + tomo_slice_bytes(b) + tomo_slice_bytes(small));
    CHECK(t.stored_bytes < t.raw_bytes);
    tomo_store_close(s);

    /* everything survives a reopen, and the counters were saved */
    s = open_store(dir, (uint64_t)1 << 30);
    h = add_variant(s, "scan=1 variant=slices format=1 filter=chesler");
    CHECK(stored_equals(s, h, b));
    tomo_store_flush(s);
    t = totals_of(s);
    CHECK_INT(t.hits, 4);
    CHECK_INT(t.misses, 2);
    tomo_store_stats st;
    tomo_store_get_stats(s, &st);
    CHECK_INT(st.hits, 1);
    CHECK(st.writable);
    tomo_store_close(s);
    tomo_slice_unref(a);
    tomo_slice_unref(b);
    tomo_slice_unref(small);
    remove_store(dir);
}

/* Flips one byte of a stored chunk behind the store's back, as damage on disk would. */
static void damage_chunk(const char *dir, uint64_t key, int z, int chunk, size_t at)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    CHECK(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 4);
    mdb_env_set_mapsize(env, (size_t)1 << 40);
    CHECK(mdb_env_open(env, dir, MDB_NOTLS, 0600) == 0);
    CHECK(mdb_txn_begin(env, NULL, 0, &txn) == 0);
    CHECK(mdb_dbi_open(txn, "chunks", 0, &dbi) == 0);
    unsigned char k[TOMO_STORE_CHUNK_KEY_BYTES];
    tomo_store_chunk_key(key, z, chunk, k);
    MDB_val kv = {sizeof k, k}, v;
    CHECK(mdb_get(txn, dbi, &kv, &v) == 0);
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[at < v.mv_size ? at : v.mv_size - 1] ^= 0x20;
    MDB_val nv = {v.mv_size, copy};
    CHECK(mdb_put(txn, dbi, &kv, &nv, 0) == 0);
    CHECK(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
    free(copy);
}

static void test_damaged_chunk_is_never_served(void)
{
    char *dir = temp_dir();
    const char *id = "scan=2 variant=slices format=1";
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    int h = add_variant(s, id);
    tomo_slice *sl[3];
    for (int z = 0; z < 3; z++) {
        sl[z] = noisy_slice(z, 600, 3); /* two chunks each */
        tomo_store_put(s, h, sl[z]);
    }
    tomo_store_flush(s);
    tomo_store_close(s);

    damage_chunk(dir, key_of(id), 0, 1, 5000); /* inside the zstd frame */
    damage_chunk(dir, key_of(id), 1, 0, 10);   /* the stored checksum */
    damage_chunk(dir, key_of(id), 2, 0, 4);    /* the raw length */
    s = open_store(dir, (uint64_t)1 << 30);
    h = add_variant(s, id);
    for (int z = 0; z < 3; z++)
        CHECK_INT(is_hit(s, h, z, 600), 0);
    tomo_store_flush(s);
    tomo_store_stats st;
    tomo_store_get_stats(s, &st);
    CHECK_INT(st.damaged, 3);
    /* deleted, so the next look is a plain miss, and a new put stores good data again */
    CHECK_INT(st.totals.slices, 0);
    CHECK_INT(st.totals.damaged, 3);
    tomo_store_put(s, h, sl[1]);
    tomo_store_flush(s);
    CHECK(stored_equals(s, h, sl[1]));
    tomo_store_close(s);
    for (int z = 0; z < 3; z++)
        tomo_slice_unref(sl[z]);
    remove_store(dir);
}

typedef struct progress_log {
    pthread_mutex_t lock;
    int calls[8];
} progress_log;

static void log_progress(void *ctx, int chunk)
{
    progress_log *p = ctx;
    pthread_mutex_lock(&p->lock);
    if (chunk >= 0 && chunk < 8)
        p->calls[chunk]++;
    pthread_mutex_unlock(&p->lock);
}

static void test_progressive_decode_reports_only_good_chunks(void)
{
    char *dir = temp_dir();
    const char *id = "scan=7 variant=slices format=1";
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    int h = add_variant(s, id);
    tomo_slice *sl = noisy_slice(0, 1100, 11); /* 4.6 MiB: five chunks */
    tomo_store_put(s, h, sl);
    tomo_store_close(s);

    s = open_store(dir, (uint64_t)1 << 30);
    h = add_variant(s, id);
    tomo_store_slice *r;
    CHECK_INT(tomo_store_slice_open(s, h, 0, 1100, &r), 1);
    CHECK_INT(tomo_store_slice_chunks(r), 5);
    tomo_slice *out = tomo_slice_new(0, 0, 1100);
    progress_log log = {.lock = PTHREAD_MUTEX_INITIALIZER};
    CHECK_INT(tomo_store_slice_decode(r, out->pixels, log_progress, &log), 0);
    tomo_store_slice_close(r);
    for (int i = 0; i < 5; i++)
        CHECK_INT(log.calls[i], 1);
    CHECK(memcmp(out->pixels, sl->pixels, tomo_slice_bytes(sl)) == 0);
    tomo_store_close(s);

    damage_chunk(dir, key_of(id), 0, 3, 2000);
    s = open_store(dir, (uint64_t)1 << 30);
    h = add_variant(s, id);
    memset(&log.calls, 0, sizeof log.calls);
    CHECK_INT(tomo_store_slice_open(s, h, 0, 1100, &r), 1);
    CHECK_INT(tomo_store_slice_decode(r, out->pixels, log_progress, &log), -1);
    tomo_store_slice_close(r);
    CHECK_INT(log.calls[3], 0);
    CHECK(log.calls[0] == 1 && log.calls[1] == 1 && log.calls[2] == 1);
    /* until the deletion is committed the slice is a plain miss, reported once */
    CHECK_INT(tomo_store_slice_open(s, h, 0, 1100, &r), 0);
    tomo_store_flush(s);
    tomo_store_stats st;
    tomo_store_get_stats(s, &st);
    CHECK_INT(st.damaged, 1);
    CHECK_INT(st.totals.slices, 0);
    CHECK_INT(st.hits, 0);
    CHECK_INT(st.misses, 2);
    tomo_store_close(s);
    tomo_slice_unref(out);
    tomo_slice_unref(sl);
    remove_store(dir);
}

static void test_other_parameters_are_a_miss(void)
{
    char *dir = temp_dir();
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    const char *chesler = "scan=3 variant=slices format=1 filter=chesler";
    const char *ramlak = "scan=3 variant=slices format=1 filter=ram-lak";
    CHECK(key_of(chesler) != key_of(ramlak));
    int a = add_variant(s, chesler), b = add_variant(s, ramlak);
    /* a forged collision: the key of chesler with other parameters behind it */
    int c = tomo_store_add_variant(s, key_of(chesler), "scan=3 variant=slices filter=other",
                                   "collision", NULL);
    tomo_slice *sl = noisy_slice(4, 200, 4);
    tomo_store_put(s, a, sl);
    tomo_store_flush(s);
    CHECK(stored_equals(s, a, sl));
    CHECK_INT(is_hit(s, b, 4, 200), 0);
    CHECK_INT(is_hit(s, c, 4, 200), 0);
    /* the colliding variant cannot overwrite it either */
    tomo_slice *other = noisy_slice(4, 200, 5);
    tomo_store_put(s, c, other);
    tomo_store_flush(s);
    CHECK(stored_equals(s, a, sl));
    CHECK_INT(is_hit(s, c, 4, 200), 0);
    tomo_store_close(s);
    tomo_slice_unref(sl);
    tomo_slice_unref(other);
    remove_store(dir);
}

static void test_capacity_holds_under_churn(void)
{
    char *dir = temp_dir();
    const uint64_t cap = (uint64_t)4 << 20;
    tomo_store *s = open_store(dir, cap);
    int h = add_variant(s, "scan=4 variant=slices format=1");
    /* 256 x 256: 256 KiB raw, about 170 KiB stored; 240 of them are ten times the capacity */
    uint64_t max_disk = 0;
    long long max_file = 0;
    for (int z = 0; z < 240; z++) {
        tomo_slice *sl = noisy_slice(z, 256, 6);
        tomo_store_put(s, h, sl);
        tomo_slice_unref(sl);
        if (z % 8 == 7) {
            tomo_store_flush(s);
            tomo_store_totals t = totals_of(s);
            max_disk = t.disk_bytes > max_disk ? t.disk_bytes : max_disk;
            long long f = file_size(dir);
            max_file = f > max_file ? f : max_file;
        }
        if (z % 16 == 5 && z > 8) /* reading keeps a slice young */
            CHECK_INT(is_hit(s, h, 5, 256), 1);
    }
    tomo_store_flush(s);
    tomo_store_totals t = totals_of(s);
    fprintf(stderr,
            "     cap %llu: stored %llu on disk at most, file %lld at most, %llu slices "
            "kept, %llu evicted\n",
            (unsigned long long)cap, (unsigned long long)max_disk, max_file,
            (unsigned long long)t.slices, (unsigned long long)t.evictions);
    CHECK(max_disk <= cap);
    CHECK(t.slices >= 15 && t.slices + t.evictions == 240);
    /* the stated overhead: LMDB's tree and free pages, and two batches' worth of freed pages */
    CHECK(max_file <= (long long)(cap + cap / 2 + ((uint64_t)1 << 20)));
    CHECK_INT(is_hit(s, h, 5, 256), 1); /* the slice read all along survived */
    CHECK_INT(is_hit(s, h, 6, 256), 0); /* its neighbour, never read, did not */
    tomo_store_verify_report r;
    CHECK(tomo_store_verify(s, 0, NULL, NULL, NULL, &r, NULL) == 0);
    CHECK_INT(r.bad_slices + r.orphan_chunks + r.stale_entries, 0);
    CHECK(r.totals_ok);
    tomo_store_close(s);
    remove_store(dir);
}

/* One of two processes: stores slices 0-39 (in its own order) and reads them all back. */
static int writer_process(const char *dir, int which)
{
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    if (!s)
        return 2;
    int h = add_variant(s, "scan=5 variant=slices format=1");
    for (int i = 0; i < 40; i++) {
        int z = which ? 39 - i : i;
        tomo_slice *sl = noisy_slice(z, 300, 8);
        tomo_store_put(s, h, sl);
        tomo_slice_unref(sl);
        if (i % 5 == 4)
            tomo_store_flush(s);
    }
    tomo_store_flush(s);
    int bad = 0;
    for (int z = 0; z < 40; z++) {
        tomo_slice *want = noisy_slice(z, 300, 8);
        bad += !stored_equals(s, h, want);
        tomo_slice_unref(want);
    }
    tomo_store_close(s);
    return bad ? 1 : 0;
}

static void test_two_processes_share_one_store(void)
{
    char *dir = temp_dir();
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] == 0)
            _exit(writer_process(dir, i));
    }
    for (int i = 0; i < 2; i++) {
        int status = -1;
        waitpid(pids[i], &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    int h = add_variant(s, "scan=5 variant=slices format=1");
    int all = 1;
    for (int z = 0; z < 40; z++) {
        tomo_slice *want = noisy_slice(z, 300, 8);
        all &= stored_equals(s, h, want);
        tomo_slice_unref(want);
    }
    CHECK(all);
    tomo_store_totals t = totals_of(s);
    CHECK_INT(t.slices, 40); /* each slice once, whoever stored it first */
    tomo_store_verify_report r;
    CHECK(tomo_store_verify(s, 0, NULL, NULL, NULL, &r, NULL) == 0);
    CHECK_INT(r.bad_slices + r.orphan_chunks + r.stale_entries, 0);
    CHECK(r.totals_ok);
    tomo_store_close(s);
    remove_store(dir);
}

static void count_line(void *ctx, const char *line)
{
    (void)line;
    (*(int *)ctx)++;
}

static void test_verify_repairs_and_clear_empties(void)
{
    char *dir = temp_dir();
    const char *id = "scan=6 variant=slices format=1";
    tomo_store *s = open_store(dir, (uint64_t)1 << 30);
    int h = add_variant(s, id);
    for (int z = 0; z < 4; z++) {
        tomo_slice *sl = noisy_slice(z, 300, 9);
        tomo_store_put(s, h, sl);
        tomo_slice_unref(sl);
    }
    tomo_store_close(s);
    damage_chunk(dir, key_of(id), 2, 0, 3000);

    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = dir;
    cfg.background = 0;
    CHECK(tomo_store_open(&cfg, &s, NULL) == 0);
    tomo_store_verify_report r;
    int lines = 0;
    CHECK(tomo_store_verify(s, 0, count_line, NULL, &lines, &r, NULL) == 0);
    CHECK_INT(r.slices, 4);
    CHECK_INT(r.bad_slices, 1);
    CHECK_INT(lines, 1);
    CHECK(tomo_store_verify(s, 1, NULL, NULL, NULL, &r, NULL) == 0);
    CHECK_INT(r.deleted, 1);
    CHECK(r.totals_ok);
    CHECK(tomo_store_verify(s, 0, NULL, NULL, NULL, &r, NULL) == 0);
    CHECK_INT(r.slices, 3);
    CHECK_INT(r.bad_slices, 0);
    tomo_store_totals before, after;
    CHECK(tomo_store_clear(s, &before, NULL) == 0);
    CHECK_INT(before.slices, 3);
    after = totals_of(s);
    CHECK_INT(after.slices, 0);
    CHECK_INT(after.disk_bytes, 0);
    h = add_variant(s, id);
    CHECK_INT(is_hit(s, h, 0, 300), 0);
    tomo_store_close(s);
    remove_store(dir);
}

static void test_unusable_folder_is_one_clear_error(void)
{
    char *dir = temp_dir();
    char file[256], below[300];
    snprintf(file, sizeof file, "%s/plain-file", dir);
    FILE *f = fopen(file, "w");
    fclose(f);
    snprintf(below, sizeof below, "%s/cache", file);
    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = below;
    tomo_store *s = NULL;
    tomo_error err;
    tomo_error_clear(&err);
    CHECK(tomo_store_open(&cfg, &s, &err) < 0);
    CHECK(s == NULL);
    CHECK_CONTAINS(err.message, below);
    CHECK_CONTAINS(err.message, "cannot create the cache folder");
    unlink(file);
    rmdir(dir);
    free(dir);
}

TOMO_TEST_MAIN(test_shuffle_round_trip, test_crc32c_known_values, test_chunk_round_trip,
               test_store_round_trip, test_damaged_chunk_is_never_served,
               test_progressive_decode_reports_only_good_chunks, test_other_parameters_are_a_miss,
               test_capacity_holds_under_churn, test_two_processes_share_one_store,
               test_verify_repairs_and_clear_empties, test_unusable_folder_is_one_clear_error)
