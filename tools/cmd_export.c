#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../common/io.h"
#include "cmd.h"
#include "options.h"
#include "progress.h"

static const char export_usage[] =
    "usage: tomofs export SCAN OUTDIR [--variant NAME] [--range A:B] [--volume] [-o OPTIONS]\n"
    "\n"
    "Reconstructs slices of SCAN and writes them to OUTDIR as slice_NNNNN.tif, byte for byte\n"
    "the files a mount of SCAN with the same options serves, plus scan.json.\n"
    "\n"
    "  --variant NAME   folder to export (default slices; also rings-removed, centre-search)\n"
    "  --range A:B      files A to B-1 of the folder (default all; A: and :B allowed)\n"
    "  --volume         write the whole folder as one file, OUTDIR/NAME.nrrd, byte for byte\n"
    "                   the mount's volumes/NAME.nrrd\n"
    "  --chunk N        slices reconstructed together (default: as memory allows, up to 32)\n"
    "\n";

/*
 * Writes `len` bytes to dir/name through a temporary name, so a partial file is never left.
 * Write-back to the disk starts at once: otherwise the kernel would hold gigabytes of dirty
 * pages and the disk would sit idle while slices are being reconstructed.
 */
static int write_file(const char *dir, const char *name, const void *a, size_t alen, const void *b,
                      size_t blen)
{
    char path[PATH_MAX], tmp[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.partial", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "\ntomofs: %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    if (tomo_write_full(fd, a, alen) < 0 || (b && tomo_write_full(fd, b, blen) < 0) ||
        (sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) < 0 && errno != EINVAL &&
         errno != ENOSYS && errno != ESPIPE)) {
        fprintf(stderr, "\ntomofs: %s: %s\n", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        fprintf(stderr, "\ntomofs: %s: %s\n", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Threads that write finished slices while the next chunk is reconstructed. */
#define WRITERS 2

typedef struct writer {
    const tomo_volume *vol;
    int variant;
    const char *outdir;
    int volume_fd; /* >= 0: slices go into this volume file, at their place */
    pthread_t threads[WRITERS];
    int n_threads;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    tomo_slice **queue; /* ring of `capacity` slices */
    int capacity, head, count;
    int closing, failed;
    long written;
    tomo_progress progress;
} writer;

/*
 * Writes one slice: as its own file, or into the volume file at its place. Float samples are
 * written from the slice; uint16 samples are converted into a buffer first.
 */
static int write_slice(writer *w, const tomo_slice *slice, unsigned char *header)
{
    const tomo_volume_variant *var = &w->vol->variants[w->variant];
    char name[64];
    tomo_error err;
    tomo_error_clear(&err);
    tomo_volume_file_name(w->vol, w->variant, slice->z, name, sizeof name);
    if (tomo_volume_slice_header(w->vol, w->variant, slice->z, header, &err) < 0) {
        fprintf(stderr, "\ntomofs: %s: %s\n", name, err.message);
        return -1;
    }
    size_t data_bytes = (size_t)(var->file_size - TOMO_TIFF_DATA_OFFSET);
    unsigned char *converted = NULL;
    const void *data = slice->pixels;
    if (var->dtype != TOMO_SAMPLE_FLOAT32) {
        converted = malloc(data_bytes);
        if (!converted) {
            fprintf(stderr, "\ntomofs: %s: out of memory\n", name);
            return -1;
        }
        tomo_volume_file_bytes(w->vol, w->variant, header, slice, TOMO_TIFF_DATA_OFFSET, data_bytes,
                               converted);
        data = converted;
    }
    int rc;
    if (w->volume_fd >= 0) {
        rc = tomo_pwrite_full(w->volume_fd, data, data_bytes,
                              (int64_t)(TOMO_NRRD_HEADER_BYTES + (uint64_t)slice->z * data_bytes));
        if (rc < 0)
            fprintf(stderr, "\ntomofs: %s/%s: %s\n", w->outdir, var->volume_name, strerror(errno));
    } else {
        rc = write_file(w->outdir, name, header, TOMO_TIFF_DATA_OFFSET, data, data_bytes);
    }
    free(converted);
    return rc;
}

static void *writer_main(void *arg)
{
    writer *w = arg;
    unsigned char header[TOMO_TIFF_DATA_OFFSET];
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->count && !w->closing)
            pthread_cond_wait(&w->changed, &w->lock);
        if (!w->count)
            break;
        tomo_slice *slice = w->queue[w->head];
        w->head = (w->head + 1) % w->capacity;
        w->count--;
        int skip = w->failed;
        pthread_cond_broadcast(&w->changed);
        pthread_mutex_unlock(&w->lock);

        int rc = 0;
        if (!skip)
            rc = write_slice(w, slice, header);
        tomo_slice_unref(slice);

        pthread_mutex_lock(&w->lock);
        if (rc < 0)
            w->failed = 1;
        else if (!skip)
            tomo_progress_update(&w->progress, ++w->written, NULL);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static int writer_start(writer *w, const tomo_volume *vol, int variant, const char *outdir,
                        int volume_fd, int capacity)
{
    memset(w, 0, sizeof *w);
    w->volume_fd = volume_fd;
    w->vol = vol;
    w->variant = variant;
    w->outdir = outdir;
    w->capacity = capacity;
    w->queue = calloc((size_t)capacity, sizeof *w->queue);
    if (!w->queue)
        return -1;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->changed, NULL);
    for (int i = 0; i < WRITERS; i++)
        if (pthread_create(&w->threads[w->n_threads], NULL, writer_main, w) == 0)
            w->n_threads++;
    return w->n_threads ? 0 : -1;
}

/* Queues a slice for writing (takes the reference); waits while the queue is full. */
static int writer_push(writer *w, tomo_slice *slice)
{
    pthread_mutex_lock(&w->lock);
    while (w->count == w->capacity)
        pthread_cond_wait(&w->changed, &w->lock);
    w->queue[(w->head + w->count) % w->capacity] = slice;
    w->count++;
    int failed = w->failed;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
    return failed ? -1 : 0;
}

/* Writes what is queued, stops the threads; -1 if any write failed. */
static int writer_finish(writer *w)
{
    pthread_mutex_lock(&w->lock);
    w->closing = 1;
    pthread_cond_broadcast(&w->changed);
    pthread_mutex_unlock(&w->lock);
    for (int i = 0; i < w->n_threads; i++)
        pthread_join(w->threads[i], NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->changed);
    free(w->queue);
    return w->failed ? -1 : 0;
}

static int parse_range(const char *text, int rows, int *a, int *b)
{
    const char *colon = strchr(text, ':');
    if (!colon)
        return -1;
    char *end;
    *a = 0;
    *b = rows;
    if (colon != text) {
        long v = strtol(text, &end, 10);
        if (end != colon || v < 0)
            return -1;
        *a = (int)v;
    }
    if (colon[1]) {
        long v = strtol(colon + 1, &end, 10);
        if (*end || v < 0)
            return -1;
        *b = (int)v;
    }
    if (*b > rows)
        *b = rows;
    return *a < *b ? 0 : -1;
}

int tomo_cmd_export(int argc, char **argv)
{
    tomo_volume_options opts;
    tomo_volume_options_default(&opts);
    /* a whole-volume export would flush what users browse out of the cache; -o cache= opts in */
    opts.cache_off = 1;
    /* only the exported folder's GPU pipeline is set up */
    opts.gpu_at_first_use = 1;
    const char *variant_name = "slices", *range = NULL;
    int chunk = 0, as_volume = 0;
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},        {"variant", required_argument, NULL, 'v'},
        {"range", required_argument, NULL, 'r'}, {"chunk", required_argument, NULL, 'c'},
        {"volume", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", long_opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("%s%s", export_usage, tomo_options_help);
            return 0;
        case 'o':
            if (tomo_options_parse(optarg, &opts, NULL, 0) < 0)
                return 2;
            break;
        case 'v':
            variant_name = optarg;
            break;
        case 'r':
            range = optarg;
            break;
        case 'V':
            as_volume = 1;
            break;
        case 'c':
            chunk = atoi(optarg);
            if (chunk < 1) {
                fprintf(stderr, "tomofs: --chunk %s: expected a positive integer\n", optarg);
                return 2;
            }
            break;
        default:
            fprintf(stderr, "%s", export_usage);
            return 2;
        }
    }
    if (optind + 2 != argc) {
        fprintf(stderr, "%s", export_usage);
        return 2;
    }
    tomo_volume *vol = tomo_open_scan_argument(argv[optind], &opts);
    if (!vol)
        return 1;
    tomo_error err;
    tomo_error_clear(&err);
    int status = 1;
    const char *outdir = argv[optind + 1];
    if (mkdir(outdir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "tomofs: %s: %s\n", outdir, strerror(errno));
        goto out;
    }
    int v = tomo_volume_find_variant(vol, variant_name);
    if (v < 0) {
        char names[512] = "";
        for (int i = 0; i < vol->n_variants; i++)
            if (!vol->variants[i].hidden)
                snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                         names[0] ? ", " : "", vol->variants[i].name);
        fprintf(stderr, "tomofs: no variant '%s' (with these options: %s)\n", variant_name, names);
        status = 2;
        goto out;
    }
    const tomo_volume_variant *var = &vol->variants[v];
    int z0 = 0, z1 = var->n_slices;
    if (range && parse_range(range, var->n_slices, &z0, &z1) < 0) {
        fprintf(stderr, "tomofs: --range %s: expected A:B with 0 <= A < B <= %d\n", range,
                var->n_slices);
        status = 2;
        goto out;
    }
    if (as_volume && (range || !var->volume_size)) {
        fprintf(stderr, "tomofs: --volume writes a whole folder of slices%s\n",
                range ? ", without --range" : "; centre-search/ has no volume file");
        status = 2;
        goto out;
    }
    if (tomo_volume_start(vol, &err) < 0) {
        fprintf(stderr, "tomofs: %s\n", err.message);
        goto out;
    }
    if (write_file(outdir, "scan.json", vol->scan_json, vol->scan_json_len, NULL, 0) < 0)
        goto out;
    if (chunk <= 0) {
        uint64_t per_row = (uint64_t)vol->scan->n_proj * (uint64_t)vol->scan->width * 4u *
                           (uint64_t)(var->params.zbin > 1 ? var->params.zbin : 1);
        uint64_t fit = ((uint64_t)2 << 30) / (per_row ? per_row : 1);
        chunk = fit < 1 ? 1 : fit > 32 ? 32 : (int)fit;
    }
    /* --volume: the header now, the slices at their places, the name once complete */
    char volume_path[PATH_MAX], volume_tmp[PATH_MAX + 16];
    int volume_fd = -1;
    if (as_volume) {
        unsigned char header[TOMO_NRRD_HEADER_BYTES];
        snprintf(volume_path, sizeof volume_path, "%s/%s", outdir, var->volume_name);
        snprintf(volume_tmp, sizeof volume_tmp, "%s.partial", volume_path);
        if (tomo_volume_nrrd_header(vol, v, header, &err) < 0) {
            fprintf(stderr, "tomofs: %s: %s\n", volume_path, err.message);
            goto out;
        }
        volume_fd = open(volume_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (volume_fd < 0 || tomo_pwrite_full(volume_fd, header, sizeof header, 0) < 0 ||
            ftruncate(volume_fd, (off_t)var->volume_size) < 0) {
            fprintf(stderr, "tomofs: %s: %s\n", volume_tmp, strerror(errno));
            if (volume_fd >= 0) {
                close(volume_fd);
                unlink(volume_tmp);
            }
            goto out;
        }
    }
    tomo_slice **slices = calloc((size_t)chunk, sizeof *slices);
    writer w;
    if (!slices || writer_start(&w, vol, v, outdir, volume_fd, 2 * chunk) < 0) {
        fprintf(stderr, "tomofs: out of memory\n");
        free(slices);
        if (volume_fd >= 0) {
            close(volume_fd);
            unlink(volume_tmp);
        }
        goto out;
    }
    tomo_progress_start(&w.progress, "export", z1 - z0);
    int failed = 0;
    /* The next chunk is reconstructed while the writers store the previous one. */
    for (int z = z0; z < z1 && !failed; z += chunk) {
        int nz = z1 - z < chunk ? z1 - z : chunk;
        if (tomo_volume_compute(vol, v, z, nz, slices, &err) < 0) {
            fprintf(stderr, "\ntomofs: slices %d-%d: %s\n", z, z + nz - 1, err.message);
            failed = 1;
            break;
        }
        for (int i = 0; i < nz; i++)
            failed |= writer_push(&w, slices[i]) < 0;
    }
    failed |= writer_finish(&w) < 0;
    free(slices);
    if (volume_fd >= 0) {
        if (close(volume_fd) < 0 || (!failed && rename(volume_tmp, volume_path) < 0)) {
            fprintf(stderr, "\ntomofs: %s: %s\n", volume_path, strerror(errno));
            failed = 1;
        }
        if (failed)
            unlink(volume_tmp);
    }
    /* done means on the disk */
    int dir_fd = open(outdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!failed && (dir_fd < 0 || syncfs(dir_fd) < 0)) {
        fprintf(stderr, "\ntomofs: %s: %s\n", outdir, strerror(errno));
        failed = 1;
    }
    if (dir_fd >= 0)
        close(dir_fd);
    if (!failed) {
        tomo_progress_finish(&w.progress, z1 - z0);
        fprintf(stderr, "tomofs: wrote %d slices to %s in %.1f s\n", z1 - z0,
                as_volume ? volume_path : outdir, tomo_now() - w.progress.start);
        status = 0;
    }
out:
    tomo_volume_close(vol);
    return status;
}
