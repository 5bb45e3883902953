#define FUSE_USE_VERSION 312

#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"

/*
 * Inode numbers encode what a node is, so no table is needed: fixed numbers for the folders
 * and small files, and (variant + 1) << 32 | z for slice files.
 */
enum {
    INO_ROOT = 1,
    INO_SCAN_JSON = 2,
    INO_CONTROL_DIR = 3, /* .tomofs */
    INO_STATUS = 4,      /* .tomofs/status */
    INO_DENOISED_DIR = 5,
    INO_DENOISED_README = 6,
    INO_VOLUMES_DIR = 10,  /* volumes/ */
    INO_VARIANT_DIR0 = 16, /* + variant index */
    INO_VOLUME_FILE0 = 64, /* + variant index: volumes/<variant>.nrrd */
};

#define SLICE_INO(v, z)   (((fuse_ino_t)(v) + 1) << 32 | (fuse_ino_t)(uint32_t)(z))
#define INO_VARIANT(ino)  ((int)((ino) >> 32) - 1)
#define INO_SLICE(ino)    ((int)((ino)&0xffffffffu))
#define IS_SLICE_INO(ino) ((ino) >> 32 != 0)

/* Names and contents never change while mounted, so the kernel may keep them forever. */
#define FOREVER DBL_MAX

typedef struct fs_state {
    tomo_volume *vol;
    uid_t uid;
    gid_t gid;
    const char *mountpoint;
    time_t started;
    pthread_mutex_t error_lock;
    char last_error[1024]; /* "2024-05-01 12:00:00 slices/slice_00012.tif: why", or "" */
} fs_state;

static fs_state *state_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

/* ---- attributes ---- */

static int variant_of_dir(const fs_state *st, fuse_ino_t ino)
{
    if (ino < INO_VARIANT_DIR0 || ino >= INO_VARIANT_DIR0 + (fuse_ino_t)st->vol->n_variants)
        return -1;
    int v = (int)(ino - INO_VARIANT_DIR0);
    return st->vol->variants[v].hidden ? -1 : v; /* internal variants are not served */
}

static int valid_slice_ino(const fs_state *st, fuse_ino_t ino)
{
    if (!IS_SLICE_INO(ino))
        return 0;
    int v = INO_VARIANT(ino);
    return v >= 0 && v < st->vol->n_variants && !st->vol->variants[v].hidden &&
           INO_SLICE(ino) < st->vol->variants[v].n_slices;
}

/* The variant whose volume file is `ino`, or -1. */
static int variant_of_volume(const fs_state *st, fuse_ino_t ino)
{
    if (ino < INO_VOLUME_FILE0 || ino >= INO_VOLUME_FILE0 + (fuse_ino_t)st->vol->n_variants)
        return -1;
    int v = (int)(ino - INO_VOLUME_FILE0);
    return st->vol->variants[v].volume_size ? v : -1; /* hidden ones have none */
}

/* Whether any folder has a volume file, i.e. volumes/ exists. */
static int have_volumes(const fs_state *st)
{
    for (int v = 0; v < st->vol->n_variants; v++)
        if (st->vol->variants[v].volume_size)
            return 1;
    return 0;
}

static void fill_attr(const fs_state *st, struct stat *attr, fuse_ino_t ino, int is_dir,
                      uint64_t size)
{
    memset(attr, 0, sizeof *attr);
    attr->st_ino = ino;
    attr->st_mode = is_dir ? S_IFDIR | 0555 : S_IFREG | 0444;
    attr->st_nlink = is_dir ? 2 : 1;
    attr->st_uid = st->uid;
    attr->st_gid = st->gid;
    attr->st_size = (off_t)size;
    attr->st_blksize = 1 << 20;
    attr->st_blocks = (blkcnt_t)((size + 511) / 512);
    attr->st_mtim.tv_sec = st->vol->scan->mtime;
    attr->st_ctim.tv_sec = st->vol->scan->mtime;
    attr->st_atim.tv_sec = st->vol->scan->mtime;
}

/* Attributes of any inode; returns 0 or an errno. */
static int stat_ino(const fs_state *st, fuse_ino_t ino, struct stat *attr)
{
    if (valid_slice_ino(st, ino)) {
        fill_attr(st, attr, ino, 0, st->vol->variants[INO_VARIANT(ino)].file_size);
        return 0;
    }
    if (variant_of_dir(st, ino) >= 0 || (ino == INO_VOLUMES_DIR && have_volumes(st))) {
        fill_attr(st, attr, ino, 1, 0);
        return 0;
    }
    int volume = variant_of_volume(st, ino);
    if (volume >= 0) {
        fill_attr(st, attr, ino, 0, st->vol->variants[volume].volume_size);
        return 0;
    }
    switch (ino) {
    case INO_ROOT:
    case INO_CONTROL_DIR:
    case INO_DENOISED_DIR:
        fill_attr(st, attr, ino, 1, 0);
        return 0;
    case INO_SCAN_JSON:
        fill_attr(st, attr, ino, 0, st->vol->scan_json_len);
        return 0;
    case INO_DENOISED_README:
        if (!st->vol->denoised_readme)
            return ENOENT; /* denoised/ is a folder of slices */
        fill_attr(st, attr, ino, 0, st->vol->denoised_readme_len);
        return 0;
    case INO_STATUS:
        /* generated at open and served with direct_io, so its size does not matter */
        fill_attr(st, attr, ino, 0, 0);
        return 0;
    }
    return ENOENT;
}

static void reply_entry(fuse_req_t req, const fs_state *st, fuse_ino_t ino)
{
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr_timeout = FOREVER;
    e.entry_timeout = FOREVER;
    if (ino == INO_STATUS)
        e.attr_timeout = 0;
    if (ino != 0 && stat_ino(st, ino, &e.attr) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    /* ino 0 is a negative entry: the kernel remembers that the name does not exist */
    fuse_reply_entry(req, &e);
}

/* ---- directory structure ---- */

typedef struct dirent_info {
    const char *name;
    fuse_ino_t ino;
} dirent_info;

/* Fixed entries of the root and of .tomofs and denoised/; returns how many were written. */
static int fixed_entries(const fs_state *st, fuse_ino_t dir, dirent_info *out, int max)
{
    int n = 0;
    if (dir == INO_ROOT) {
        if (n < max)
            out[n++] = (dirent_info){".tomofs", INO_CONTROL_DIR};
        if (n < max && st->vol->denoised_variant < 0) /* else the variant lists it */
            out[n++] = (dirent_info){"denoised", INO_DENOISED_DIR};
        if (n < max)
            out[n++] = (dirent_info){"scan.json", INO_SCAN_JSON};
        for (int v = 0; v < st->vol->n_variants && n < max; v++)
            if (!st->vol->variants[v].hidden)
                out[n++] =
                    (dirent_info){st->vol->variants[v].name, INO_VARIANT_DIR0 + (fuse_ino_t)v};
        if (n < max && have_volumes(st))
            out[n++] = (dirent_info){"volumes", INO_VOLUMES_DIR};
    } else if (dir == INO_VOLUMES_DIR) {
        for (int v = 0; v < st->vol->n_variants && n < max; v++)
            if (st->vol->variants[v].volume_size)
                out[n++] = (dirent_info){st->vol->variants[v].volume_name,
                                         INO_VOLUME_FILE0 + (fuse_ino_t)v};
    } else if (dir == INO_CONTROL_DIR) {
        if (n < max)
            out[n++] = (dirent_info){"status", INO_STATUS};
    } else if (dir == INO_DENOISED_DIR) {
        if (n < max)
            out[n++] = (dirent_info){"README.txt", INO_DENOISED_README};
    }
    return n;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    fs_state *st = state_of(req);
    int v = variant_of_dir(st, parent);
    if (v >= 0) {
        int z = tomo_volume_parse_file_name(st->vol, v, name);
        reply_entry(req, st, z >= 0 ? SLICE_INO(v, z) : 0);
        return;
    }
    dirent_info entries[TOMO_VOLUME_MAX_VARIANTS + 4];
    int n = fixed_entries(st, parent, entries, TOMO_VOLUME_MAX_VARIANTS + 4);
    for (int i = 0; i < n; i++)
        if (strcmp(entries[i].name, name) == 0) {
            reply_entry(req, st, entries[i].ino);
            return;
        }
    if (parent == INO_ROOT || parent == INO_CONTROL_DIR || parent == INO_DENOISED_DIR ||
        (parent == INO_VOLUMES_DIR && have_volumes(st)))
        reply_entry(req, st, 0);
    else
        fuse_reply_err(req, ENOTDIR);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)fi;
    fs_state *st = state_of(req);
    struct stat attr;
    int e = stat_ino(st, ino, &attr);
    if (e)
        fuse_reply_err(req, e);
    else
        fuse_reply_attr(req, &attr, ino == INO_STATUS ? 0 : FOREVER);
}

static int is_dir_ino(const fs_state *st, fuse_ino_t ino)
{
    return ino == INO_ROOT || ino == INO_CONTROL_DIR || ino == INO_DENOISED_DIR ||
           variant_of_dir(st, ino) >= 0 || (ino == INO_VOLUMES_DIR && have_volumes(st));
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fs_state *st = state_of(req);
    if (!is_dir_ino(st, ino)) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    fi->cache_readdir = 1;
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

/*
 * Lists a directory from offset `off` (entry index + 1 of the last entry returned). With
 * `plus`, each entry carries its attributes, so list-then-stat clients need no lookups.
 */
static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus)
{
    fs_state *st = state_of(req);
    if (!is_dir_ino(st, ino)) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    int v = variant_of_dir(st, ino);
    dirent_info fixed[TOMO_VOLUME_MAX_VARIANTS + 4];
    long n_fixed = v >= 0 ? 0 : fixed_entries(st, ino, fixed, TOMO_VOLUME_MAX_VARIANTS + 4);
    long total = 2 + (v >= 0 ? st->vol->variants[v].n_slices : n_fixed);
    size_t used = 0;
    for (long i = off; i < total; i++) {
        char name[64];
        fuse_ino_t child;
        if (i == 0) {
            snprintf(name, sizeof name, ".");
            child = ino;
        } else if (i == 1) {
            snprintf(name, sizeof name, "..");
            child = INO_ROOT;
        } else if (v >= 0) {
            tomo_volume_file_name(st->vol, v, (int)(i - 2), name, sizeof name);
            child = SLICE_INO(v, i - 2);
        } else {
            snprintf(name, sizeof name, "%s", fixed[i - 2].name);
            child = fixed[i - 2].ino;
        }
        size_t need;
        if (plus) {
            struct fuse_entry_param e;
            memset(&e, 0, sizeof e);
            e.ino = child;
            e.attr_timeout = child == INO_STATUS ? 0 : FOREVER;
            e.entry_timeout = FOREVER;
            stat_ino(st, child, &e.attr);
            need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, i + 1);
        } else {
            struct stat attr;
            stat_ino(st, child, &attr);
            need = fuse_add_direntry(req, buf + used, size - used, name, &attr, i + 1);
        }
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)fi;
    list_dir(req, ino, size, off, 0);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
    (void)fi;
    list_dir(req, ino, size, off, 1);
}

/* ---- files ---- */

/* Appends the disk tier's lines of the status file to text; NULL (text freed) on failure. */
static char *append_cache_status(const fs_state *st, char *text, size_t *len)
{
    tomo_store *store = st->vol->store;
    char *lines = NULL;
    int n;
    if (!store) {
        n = asprintf(&lines, "cache: off\n");
    } else {
        tomo_store_stats cs;
        tomo_store_get_stats(store, &cs);
        n = asprintf(
            &lines,
            "cache: %s\n"
            "cache_hits: %llu\n"
            "cache_misses: %llu\n"
            "cache_damaged: %llu\n"
            "cache_writes: %llu\n"
            "cache_writes_queued: %llu\n"
            "cache_dropped: %llu\n"
            "cache_errors: %llu\n"
            "cache_writable: %d\n"
            "cache_entries: %llu\n"
            "cache_bytes: %llu\n"
            "cache_stored_bytes: %llu\n"
            "cache_raw_bytes: %llu\n"
            "cache_capacity: %llu\n",
            tomo_store_dir(store), (unsigned long long)cs.hits, (unsigned long long)cs.misses,
            (unsigned long long)cs.damaged, (unsigned long long)cs.writes,
            (unsigned long long)cs.queued, (unsigned long long)cs.dropped,
            (unsigned long long)cs.errors, cs.writable, (unsigned long long)cs.totals.slices,
            (unsigned long long)cs.totals.disk_bytes, (unsigned long long)cs.totals.stored_bytes,
            (unsigned long long)cs.totals.raw_bytes, (unsigned long long)st->vol->opts.cache_bytes);
    }
    char *joined = NULL;
    if (n < 0 || asprintf(&joined, "%s%s", text, lines) < 0)
        joined = NULL;
    free(text);
    free(n < 0 ? NULL : lines);
    if (joined)
        *len = strlen(joined);
    return joined;
}

static char *status_text(fs_state *st, size_t *len)
{
    tomo_engine_stats es = {0};
    tomo_ram_cache_stats rs = {0};
    if (st->vol->engine)
        tomo_engine_get_stats(st->vol->engine, &es);
    if (st->vol->ram)
        tomo_ram_cache_get_stats(st->vol->ram, &rs);
    char last_error[sizeof st->last_error];
    pthread_mutex_lock(&st->error_lock);
    snprintf(last_error, sizeof last_error, "%s", st->last_error[0] ? st->last_error : "none");
    pthread_mutex_unlock(&st->error_lock);
    char *text = NULL;
    int n = asprintf(
        &text,
        "pid: %ld\n"
        "version: %s\n"
        "mountpoint: %s\n"
        "uptime_seconds: %lld\n"
        "scan: %s\n"
        "backend: %s\n"
        "requests: %llu\n"
        "queued: %llu\n"
        "joined: %llu\n"
        "chunks: %llu\n"
        "slices_computed: %llu\n"
        "errors: %llu\n"
        "last_error: %s\n"
        "busy_seconds: %.3f\n"
        "read_seconds: %.3f\n"
        "read_ahead_used: %llu\n"
        "read_ahead_dropped: %llu\n"
        "ram_entries: %llu\n"
        "ram_bytes: %llu\n"
        "ram_capacity: %llu\n"
        "ram_hits: %llu\n"
        "ram_misses: %llu\n"
        "ram_evictions: %llu\n",
        (long)getpid(), TOMOFS_VERSION, st->mountpoint, (long long)(time(NULL) - st->started),
        st->vol->scan->path, st->vol->engine ? tomo_engine_backend(st->vol->engine) : "starting",
        (unsigned long long)es.requests, (unsigned long long)es.queued,
        (unsigned long long)es.joined, (unsigned long long)es.chunks, (unsigned long long)es.slices,
        (unsigned long long)es.errors, last_error, es.busy_seconds, es.read_seconds,
        (unsigned long long)es.read_ahead_used, (unsigned long long)es.read_ahead_dropped,
        (unsigned long long)rs.entries, (unsigned long long)rs.bytes,
        (unsigned long long)rs.capacity, (unsigned long long)rs.hits, (unsigned long long)rs.misses,
        (unsigned long long)rs.evictions);
    if (n < 0)
        return NULL;
    *len = (size_t)n;
    return append_cache_status(st, text, len);
}

typedef struct status_handle {
    char *text;
    size_t len;
} status_handle;

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    fs_state *st = state_of(req);
    struct stat attr;
    if (stat_ino(st, ino, &attr) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (S_ISDIR(attr.st_mode)) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (ino == INO_STATUS) {
        status_handle *h = calloc(1, sizeof *h);
        if (!h || !(h->text = status_text(st, &h->len))) {
            free(h);
            fuse_reply_err(req, ENOMEM);
            return;
        }
        fi->fh = (uint64_t)(uintptr_t)h;
        fi->direct_io = 1;
    } else {
        /* contents never change: let the page cache keep them across opens */
        fi->keep_cache = 1;
    }
    fuse_reply_open(req, fi);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino == INO_STATUS && fi->fh) {
        status_handle *h = (status_handle *)(uintptr_t)fi->fh;
        free(h->text);
        free(h);
    }
    fuse_reply_err(req, 0);
}

static void reply_static(fuse_req_t req, const char *data, size_t len, off_t off, size_t size)
{
    if ((size_t)off >= len) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > len - (size_t)off)
        size = len - (size_t)off;
    fuse_reply_buf(req, data + off, size);
}

/*
 * The kernel completes a read inside the reply's writev, so the reader may close the status
 * file, and RELEASE free its handle, before writev returns here; AddressSanitizer then checks
 * the freed text. A copy owned by this request stays valid throughout.
 */
static void reply_status(fuse_req_t req, const status_handle *h, off_t off, size_t size)
{
    if ((size_t)off >= h->len) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > h->len - (size_t)off)
        size = h->len - (size_t)off;
    char *copy = malloc(size);
    if (!copy) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    memcpy(copy, h->text + off, size);
    fuse_reply_buf(req, copy, size);
    free(copy);
}

/* A read waiting for its slice. */
typedef struct read_request {
    fuse_req_t req;
    fs_state *st;
    int variant;
    int z;
    uint64_t offset;
    size_t size;
} read_request;

/*
 * Logs a failed read as one line naming the file under the mount point, and keeps it for the
 * status file's last_error.
 */
static void read_failed(fs_state *st, int variant, int z, const char *message)
{
    char name[64], when[32] = "";
    if (z >= 0) /* a slice file, else the variant's volume file */
        tomo_volume_file_name(st->vol, variant, z, name, sizeof name);
    else
        snprintf(name, sizeof name, "%s", st->vol->variants[variant].volume_name);
    const char *folder = z >= 0 ? st->vol->variants[variant].name : "volumes";
    tomo_log_error("%s/%s/%s: %s", st->mountpoint, folder, name, message);
    time_t now = time(NULL);
    struct tm tm;
    if (localtime_r(&now, &tm))
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    pthread_mutex_lock(&st->error_lock);
    snprintf(st->last_error, sizeof st->last_error, "%s %s/%s: %s", when, folder, name, message);
    pthread_mutex_unlock(&st->error_lock);
}

/* Called by the RAM tier or an engine thread once the pixels exist (or failed). */
static void read_done(void *arg, tomo_slice *slice, const tomo_error *err)
{
    read_request *r = arg;
    tomo_volume *vol = r->st->vol;
    if (!slice) {
        if (err && err->code != TOMO_E_CANCELLED)
            read_failed(r->st, r->variant, r->z, err->message);
        fuse_reply_err(r->req, err && err->code == TOMO_E_CANCELLED ? EINTR : EIO);
        free(r);
        return;
    }
    /* only the first read of a file covers the header; the kernel's readahead does not */
    unsigned char header[TOMO_TIFF_DATA_OFFSET];
    tomo_error herr;
    tomo_error_clear(&herr);
    if (r->offset < TOMO_TIFF_DATA_OFFSET &&
        tomo_volume_slice_header(vol, r->variant, r->z, header, &herr) < 0) {
        read_failed(r->st, r->variant, r->z, herr.message);
        fuse_reply_err(r->req, EIO);
        free(r);
        return;
    }
    if (vol->variants[r->variant].dtype != TOMO_SAMPLE_FLOAT32) {
        /* converted samples: assembled in a buffer of this request */
        unsigned char *buf = malloc(r->size ? r->size : 1);
        if (!buf)
            fuse_reply_err(r->req, ENOMEM);
        else
            fuse_reply_buf(
                r->req, (const char *)buf,
                tomo_volume_file_bytes(vol, r->variant, header, slice, r->offset, r->size, buf));
        free(buf);
        free(r);
        return;
    }
    struct iovec iov[2];
    int n = 0;
    uint64_t off = r->offset, end = r->offset + r->size;
    if (off < TOMO_TIFF_DATA_OFFSET) {
        uint64_t stop = end < TOMO_TIFF_DATA_OFFSET ? end : TOMO_TIFF_DATA_OFFSET;
        iov[n].iov_base = header + off;
        iov[n].iov_len = (size_t)(stop - off);
        n++;
        off = stop;
    }
    if (off < end) {
        iov[n].iov_base = (unsigned char *)slice->pixels + (off - TOMO_TIFF_DATA_OFFSET);
        iov[n].iov_len = (size_t)(end - off);
        n++;
    }
    fuse_reply_iov(r->req, iov, n);
    free(r);
}

/* A read of a volume file waiting for its slices. */
typedef struct volume_request {
    fuse_req_t req;
    fs_state *st;
    int variant;
} volume_request;

static void volume_read_done(void *arg, const unsigned char *data, size_t length,
                             const tomo_error *err)
{
    volume_request *q = arg;
    if (data) {
        fuse_reply_buf(q->req, (const char *)data, length);
    } else {
        if (err && err->code != TOMO_E_CANCELLED)
            read_failed(q->st, q->variant, -1, err->message);
        fuse_reply_err(q->req, err && err->code == TOMO_E_CANCELLED ? EINTR : EIO);
    }
    free(q);
}

/* Reads of volumes/<variant>.nrrd: the header, and the slices the range covers. */
static void read_volume(fuse_req_t req, fs_state *st, int v, size_t size, off_t off)
{
    uint64_t file_size = st->vol->variants[v].volume_size;
    if (off < 0 || (uint64_t)off >= file_size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > file_size - (uint64_t)off)
        size = (size_t)(file_size - (uint64_t)off);
    volume_request *q = malloc(sizeof *q);
    if (!q) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    *q = (volume_request){req, st, v};
    tomo_volume_read_volume(st->vol, v, (uint64_t)off, size, volume_read_done, q);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    fs_state *st = state_of(req);
    if (ino == INO_SCAN_JSON) {
        reply_static(req, st->vol->scan_json, st->vol->scan_json_len, off, size);
        return;
    }
    if (ino == INO_DENOISED_README && st->vol->denoised_readme) {
        reply_static(req, st->vol->denoised_readme, st->vol->denoised_readme_len, off, size);
        return;
    }
    if (ino == INO_STATUS) {
        reply_status(req, (const status_handle *)(uintptr_t)fi->fh, off, size);
        return;
    }
    int volume = variant_of_volume(st, ino);
    if (volume >= 0) {
        read_volume(req, st, volume, size, off);
        return;
    }
    if (!valid_slice_ino(st, ino)) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    int v = INO_VARIANT(ino);
    uint64_t file_size = st->vol->variants[v].file_size;
    if (off < 0 || (uint64_t)off >= file_size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (size > file_size - (uint64_t)off)
        size = (size_t)(file_size - (uint64_t)off);
    read_request *r = malloc(sizeof *r);
    if (!r) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    *r = (read_request){req, st, v, INO_SLICE(ino), (uint64_t)off, size};
    tomo_volume_read(st->vol, v, r->z, r->offset, r->size, read_done, r);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
    (void)ino;
    fs_state *st = state_of(req);
    struct statvfs s;
    memset(&s, 0, sizeof s);
    s.f_bsize = 1 << 20;
    s.f_frsize = 1 << 20;
    uint64_t bytes = 0, files = 8;
    for (int v = 0; v < st->vol->n_variants; v++)
        if (!st->vol->variants[v].hidden) {
            const tomo_volume_variant *var = &st->vol->variants[v];
            bytes += var->file_size * (uint64_t)var->n_slices + var->volume_size;
            files += (uint64_t)var->n_slices + (var->volume_size ? 1 : 0);
        }
    s.f_blocks = (fsblkcnt_t)((bytes + (1u << 20) - 1) >> 20);
    s.f_files = (fsfilcnt_t)files;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
}

/* ---- write-type operations: the filesystem is read-only ---- */

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    (void)ino, (void)attr, (void)to_set, (void)fi;
    fuse_reply_err(req, EROFS);
}

static void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
    (void)parent, (void)name, (void)mode, (void)rdev;
    fuse_reply_err(req, EROFS);
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
    (void)parent, (void)name, (void)mode;
    fuse_reply_err(req, EROFS);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    (void)parent, (void)name;
    fuse_reply_err(req, EROFS);
}

static void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                      const char *newname, unsigned int flags)
{
    (void)parent, (void)name, (void)newparent, (void)newname, (void)flags;
    fuse_reply_err(req, EROFS);
}

static void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
                      struct fuse_file_info *fi)
{
    (void)parent, (void)name, (void)mode, (void)fi;
    fuse_reply_err(req, EROFS);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    (void)ino, (void)buf, (void)size, (void)off, (void)fi;
    fuse_reply_err(req, EROFS);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
    (void)ino, (void)name, (void)value, (void)size, (void)flags;
    fuse_reply_err(req, EROFS);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
    (void)userdata;
    /*
     * Always answer listings with attributes: clients such as ImageJ list a folder and then
     * stat every name, which would otherwise cost one lookup per file.
     */
    if (conn->capable & FUSE_CAP_READDIRPLUS)
        conn->want |= FUSE_CAP_READDIRPLUS;
    conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
    conn->max_background = 64;
}

static const struct fuse_lowlevel_ops fs_ops = {
    .init = fs_init,
    .lookup = fs_lookup,
    .getattr = fs_getattr,
    .setattr = fs_setattr,
    .mknod = fs_mknod,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_unlink,
    .rename = fs_rename,
    .open = fs_open,
    .read = fs_read,
    .write = fs_write,
    .release = fs_release,
    .opendir = fs_opendir,
    .readdir = fs_readdir,
    .readdirplus = fs_readdirplus,
    .statfs = fs_statfs,
    .setxattr = fs_setxattr,
    .create = fs_create,
};

int tomo_fs_serve(tomo_volume *vol, struct fuse_args *args, const char *mountpoint, int foreground,
                  tomo_error *err)
{
    fs_state st = {vol, getuid(), getgid(), mountpoint, time(NULL), PTHREAD_MUTEX_INITIALIZER, ""};
    struct fuse_session *se = fuse_session_new(args, &fs_ops, sizeof fs_ops, &st);
    if (!se)
        return tomo_error_set(err, TOMO_E_INVALID, "invalid FUSE options");
    int rc = 0;
    if (fuse_set_signal_handlers(se) != 0) {
        rc = tomo_error_set(err, TOMO_E_INTERNAL, "cannot install signal handlers");
        goto destroy;
    }
    if (fuse_session_mount(se, mountpoint) != 0) {
        rc = tomo_error_set(err, TOMO_E_IO,
                            "%s: cannot mount (does the folder exist, and is FUSE available?)",
                            mountpoint);
        goto handlers;
    }
    /* Threads, like the engine's, must be started after the fork that detaches us. */
    if (fuse_daemonize(foreground) != 0) {
        rc = tomo_error_set(err, TOMO_E_INTERNAL, "cannot detach from the terminal");
        goto unmount;
    }
    if (!foreground)
        tomo_log_to_syslog();
    tomo_error start_err;
    tomo_error_clear(&start_err);
    if (tomo_volume_start(vol, &start_err) < 0) {
        tomo_log_error("%s: %s", vol->scan->path, start_err.message);
        rc = tomo_error_set(err, start_err.code, "%s", start_err.message);
        goto unmount;
    }
    tomo_log_info("serving %s at %s", vol->scan->path, mountpoint);

    struct fuse_loop_config *loop = fuse_loop_cfg_create();
    if (loop) {
        fuse_loop_cfg_set_max_threads(loop, 16);
        fuse_loop_cfg_set_clone_fd(loop, 0);
    }
    fuse_session_loop_mt(se, loop);
    fuse_loop_cfg_destroy(loop);
    tomo_engine_stats es = {0};
    if (vol->engine)
        tomo_engine_get_stats(vol->engine, &es);
    tomo_log_info("stopped serving %s at %s: %llu slices computed, %llu failed chunks",
                  vol->scan->path, mountpoint, (unsigned long long)es.slices,
                  (unsigned long long)es.errors);
    /* Answer (cancel) what is still waiting before the channel goes away. */
    tomo_volume_stop(vol);
unmount:
    fuse_session_unmount(se);
handlers:
    fuse_remove_signal_handlers(se);
destroy:
    fuse_session_destroy(se);
    return rc;
}
