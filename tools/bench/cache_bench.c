/*
 * cache_bench - times the slice cache on this machine (docs/performance.md, "Slice cache").
 *
 *   cache_bench codec SCAN [--rows N] [--first Z]
 *       reconstructs N slices of SCAN (default 4, from the middle) and encodes them at zstd
 *       levels 1-3 with and without the byte shuffle: ratio, compression and decoding speed
 *       (decoding includes the unshuffle and the CRC-32C check), one thread.
 *   cache_bench churn DIR --capacity SIZE [--side N] [--slices M] [--random-reads]
 *       stores M noisy slices of N x N (default 2048, 200) into a fresh store with the given
 *       capacity and reports the stored bytes and the file size against the capacity. With
 *       --random-reads, each put is followed by a read of a random earlier slice, so eviction
 *       follows no simple order (the worst case for LMDB's free-space reuse).
 *   cache_bench read DIR [--side N] [--slices M]
 *       stores M slices, closes and reopens the store, and times tomo_store_get per slice.
 */
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../cache/codec.h"
#include "../../cache/store.h"
#include "../../common/hash.h"
#include "../../fs/volume.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- codec ---- */

typedef struct codec_result {
    double ratio;
    double compress_mbs;
    double decode_mbs;
} codec_result;

static codec_result time_codec(tomo_slice **slices, int n, int level, int shuffle)
{
    tomo_codec *c = tomo_codec_create(level);
    size_t cap = tomo_chunk_bound(TOMO_STORE_CHUNK_BYTES);
    size_t raw_total = 0, enc_total = 0;
    int n_chunks = 0;
    for (int i = 0; i < n; i++)
        n_chunks += (int)((tomo_slice_bytes(slices[i]) + TOMO_STORE_CHUNK_BYTES - 1) /
                          TOMO_STORE_CHUNK_BYTES);
    unsigned char **enc = calloc((size_t)n_chunks, sizeof *enc);
    size_t *enc_len = calloc((size_t)n_chunks, sizeof *enc_len),
           *raw_len = calloc((size_t)n_chunks, sizeof *raw_len);
    unsigned char *out = malloc(TOMO_STORE_CHUNK_BYTES);
    double best_c = INFINITY, best_d = INFINITY;
    for (int rep = 0; rep < 3; rep++) {
        int k = 0;
        raw_total = enc_total = 0;
        double t0 = now();
        for (int i = 0; i < n; i++) {
            size_t bytes = tomo_slice_bytes(slices[i]);
            for (size_t off = 0; off < bytes; off += TOMO_STORE_CHUNK_BYTES, k++) {
                size_t len =
                    bytes - off < TOMO_STORE_CHUNK_BYTES ? bytes - off : TOMO_STORE_CHUNK_BYTES;
                if (!enc[k])
                    enc[k] = malloc(cap);
                enc_len[k] = tomo_chunk_encode(c, (unsigned char *)slices[i]->pixels + off, len,
                                               shuffle, enc[k], cap);
                raw_len[k] = len;
                raw_total += len;
                enc_total += enc_len[k];
            }
        }
        double t1 = now();
        for (k = 0; k < n_chunks; k++)
            if (tomo_chunk_decode(c, enc[k], enc_len[k], out, raw_len[k]) != TOMO_CHUNK_OK)
                fprintf(stderr, "cache_bench: chunk %d did not decode\n", k);
        double t2 = now();
        best_c = t1 - t0 < best_c ? t1 - t0 : best_c;
        best_d = t2 - t1 < best_d ? t2 - t1 : best_d;
    }
    for (int k = 0; k < n_chunks; k++)
        free(enc[k]);
    free(enc);
    free(enc_len);
    free(raw_len);
    free(out);
    tomo_codec_destroy(c);
    return (codec_result){(double)raw_total / (double)enc_total, raw_total / best_c / 1e6,
                          raw_total / best_d / 1e6};
}

static void time_primitives(tomo_slice *s)
{
    size_t bytes = tomo_slice_bytes(s);
    unsigned char *buf = malloc(bytes);
    double best_s = INFINITY, best_u = INFINITY, best_crc = INFINITY;
    uint32_t crc = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        tomo_shuffle4(s->pixels, buf, bytes / 4);
        double t1 = now();
        tomo_unshuffle4(buf, s->pixels, bytes / 4);
        double t2 = now();
        crc ^= tomo_crc32c(0, s->pixels, bytes);
        double t3 = now();
        best_s = fmin(best_s, t1 - t0);
        best_u = fmin(best_u, t2 - t1);
        best_crc = fmin(best_crc, t3 - t2);
    }
    printf("shuffle %.1f GB/s, unshuffle %.1f GB/s, crc32c %.1f GB/s (%08x)\n",
           bytes / best_s / 1e9, bytes / best_u / 1e9, bytes / best_crc / 1e9, crc);
    free(buf);
}

static int run_codec(const char *scan_path, int rows, int first)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    opts.cache_off = 1;
    char path[PATH_MAX];
    if (!realpath(scan_path, path)) {
        fprintf(stderr, "cache_bench: %s: no such folder\n", scan_path);
        return 1;
    }
    tomo_volume *vol;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_volume_open(path, &opts, &vol, &err) < 0 || tomo_volume_start(vol, &err) < 0) {
        fprintf(stderr, "cache_bench: %s\n", err.message);
        return 1;
    }
    if (rows > vol->scan->rows)
        rows = vol->scan->rows;
    if (first < 0 || first + rows > vol->scan->rows)
        first = (vol->scan->rows - rows) / 2;
    tomo_slice **slices = calloc((size_t)rows, sizeof *slices);
    if (tomo_engine_compute(vol->engine, 0, first, rows, slices, &err) < 0) {
        fprintf(stderr, "cache_bench: %s\n", err.message);
        return 1;
    }
    printf("%s: slices %d-%d, %d x %d\n", path, first, first + rows - 1, slices[0]->size,
           slices[0]->size);
    time_primitives(slices[0]);
    printf("| level | shuffle | ratio | compress MB/s | decode MB/s |\n|---|---|---|---|---|\n");
    for (int level = 1; level <= 3; level++)
        for (int shuffle = 0; shuffle <= 1; shuffle++) {
            codec_result r = time_codec(slices, rows, level, shuffle);
            printf("| %d | %s | %.3f | %.0f | %.0f |\n", level, shuffle ? "yes" : "no", r.ratio,
                   r.compress_mbs, r.decode_mbs);
        }
    for (int i = 0; i < rows; i++)
        tomo_slice_unref(slices[i]);
    free(slices);
    tomo_volume_close(vol);
    return 0;
}

/* ---- store ---- */

/* A noisy disc: compresses like a noisy reconstruction (about 1.3-1.6). */
static tomo_slice *synthetic_slice(int z, int side)
{
    tomo_slice *s = tomo_slice_new(0, z, side);
    uint32_t state = (uint32_t)z * 2654435761u + 1;
    double r2 = side * side / 4.0;
    for (int y = 0; y < side; y++)
        for (int x = 0; x < side; x++) {
            double dx = x + 0.5 - side / 2.0, dy = y + 0.5 - side / 2.0;
            state = state * 1664525u + 1013904223u;
            float noise = (float)((state >> 8) % 20000) * 1e-7f;
            s->pixels[(size_t)y * side + x] = dx * dx + dy * dy > r2 ? 0.0f : 0.03f + noise;
        }
    return s;
}

static tomo_store *open_store(const char *dir, uint64_t capacity)
{
    tomo_store_config cfg;
    tomo_store_config_default(&cfg);
    cfg.dir = dir;
    cfg.capacity = capacity;
    tomo_store *s;
    tomo_error err;
    tomo_error_clear(&err);
    if (tomo_store_open(&cfg, &s, &err) < 0) {
        fprintf(stderr, "cache_bench: %s\n", err.message);
        return NULL;
    }
    return s;
}

static long long file_size(const char *dir)
{
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

static int run_churn(const char *dir, uint64_t capacity, int side, int n, int random_reads)
{
    tomo_store *s = open_store(dir, capacity);
    if (!s)
        return 1;
    const char *identity = "cache_bench churn";
    int h = tomo_store_add_variant(s, tomo_hash_bytes(TOMO_HASH_INIT, identity, strlen(identity)),
                                   identity, "synthetic", NULL);
    printf("capacity %llu bytes, %d slices of %d x %d\n", (unsigned long long)capacity, n, side,
           side);
    printf(
        "| slices written | stored (disk bytes) | file | file / capacity |\n|---|---|---|---|\n");
    double t0 = now();
    long long max_file = 0;
    uint32_t seed = 12345;
    /* never the slice just put: the store reads its pixels while compressing */
    tomo_slice *out = tomo_slice_new(0, 0, side);
    for (int z = 0; z < n; z++) {
        tomo_slice *sl = synthetic_slice(z, side);
        tomo_store_put(s, h, sl);
        if (random_reads && z > 0) {
            seed = seed * 1664525u + 1013904223u;
            tomo_store_get(s, h, (int)((seed >> 8) % (uint32_t)z), out);
        }
        tomo_slice_unref(sl);
        if (z % 4 == 3)
            tomo_store_flush(s); /* puts are dropped when the queue is full; keep up */
        if ((z + 1) % (n / 10 > 0 ? n / 10 : 1) == 0 || z + 1 == n) {
            tomo_store_flush(s);
            tomo_store_totals t;
            tomo_store_read_totals(s, &t, NULL);
            long long f = file_size(dir);
            max_file = f > max_file ? f : max_file;
            printf("| %d | %llu | %lld | %.3f |\n", z + 1, (unsigned long long)t.disk_bytes, f,
                   (double)f / (double)capacity);
        }
    }
    double elapsed = now() - t0;
    tomo_slice_unref(out);
    tomo_store_stats st;
    tomo_store_get_stats(s, &st);
    printf("kept %llu slices, %llu evicted, %llu dropped, %llu hits; largest file %.3f x "
           "capacity; %.1f slices/s (%.0f MB/s raw, synthesis and reads included)\n",
           (unsigned long long)st.totals.slices, (unsigned long long)st.totals.evictions,
           (unsigned long long)st.dropped, (unsigned long long)st.hits,
           (double)max_file / (double)capacity, n / elapsed,
           n * (double)side * side * 4 / elapsed / 1e6);
    tomo_store_close(s);
    return 0;
}

static int run_read(const char *dir, int side, int n)
{
    const char *identity = "cache_bench read";
    uint64_t key = tomo_hash_bytes(TOMO_HASH_INIT, identity, strlen(identity));
    tomo_store *s = open_store(dir, (uint64_t)64 << 30);
    if (!s)
        return 1;
    int h = tomo_store_add_variant(s, key, identity, "synthetic", NULL);
    for (int z = 0; z < n; z++) {
        tomo_slice *sl = synthetic_slice(z, side);
        tomo_store_put(s, h, sl);
        tomo_slice_unref(sl);
        tomo_store_flush(s);
    }
    tomo_store_close(s);
    s = open_store(dir, (uint64_t)64 << 30);
    h = tomo_store_add_variant(s, key, identity, "synthetic", NULL);
    tomo_slice *out = tomo_slice_new(0, 0, side);
    double best = INFINITY, total = 0;
    int hits = 0;
    for (int z = 0; z < n; z++) {
        double t0 = now();
        hits += tomo_store_get(s, h, z, out);
        double t = now() - t0;
        best = fmin(best, t);
        total += t;
    }
    printf("%d of %d slices of %d x %d read from the store: %.1f ms each on average, best %.1f ms "
           "(%.0f MB/s)\n",
           hits, n, side, side, total / n * 1e3, best * 1e3,
           (double)side * side * 4 / (total / n) / 1e6);
    tomo_slice_unref(out);
    tomo_store_close(s);
    return hits == n ? 0 : 1;
}

static const char usage[] =
    "usage: cache_bench codec SCAN [--rows N] [--first Z]\n"
    "       cache_bench churn DIR --capacity SIZE [--side N] [--slices M] [--random-reads]\n"
    "       cache_bench read DIR [--side N] [--slices M]\n";

int main(int argc, char **argv)
{
    int rows = 4, first = -1, side = 2048, slices = 200, random_reads = 0;
    double capacity = 0;
    static const struct option long_opts[] = {{"rows", required_argument, NULL, 'r'},
                                              {"first", required_argument, NULL, 'f'},
                                              {"capacity", required_argument, NULL, 'c'},
                                              {"side", required_argument, NULL, 's'},
                                              {"slices", required_argument, NULL, 'n'},
                                              {"random-reads", no_argument, NULL, 'R'},
                                              {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'r':
            rows = atoi(optarg);
            break;
        case 'f':
            first = atoi(optarg);
            break;
        case 'c':
            capacity = strtod(optarg, &end);
            capacity *= *end == 'G' ? 1 << 30 : *end == 'M' ? 1 << 20 : 1;
            break;
        case 's':
            side = atoi(optarg);
            break;
        case 'n':
            slices = atoi(optarg);
            break;
        case 'R':
            random_reads = 1;
            break;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind + 2 != argc || rows < 1 || side < 1 || slices < 1) {
        fputs(usage, stderr);
        return 2;
    }
    const char *mode = argv[optind], *path = argv[optind + 1];
    if (strcmp(mode, "codec") == 0)
        return run_codec(path, rows, first);
    char dir[PATH_MAX];
    if (!realpath(path, dir)) {
        fprintf(stderr, "cache_bench: %s: no such folder\n", path);
        return 1;
    }
    if (strcmp(mode, "churn") == 0 && capacity > 0)
        return run_churn(dir, (uint64_t)capacity, side, slices, random_reads);
    if (strcmp(mode, "read") == 0)
        return run_read(dir, side, slices);
    fputs(usage, stderr);
    return 2;
}
