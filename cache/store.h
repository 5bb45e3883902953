/*
 * cache/store.h - the disk tier: finished slices kept in one LMDB environment per user,
 * compressed, within a byte budget, shared by every scan and every mount.
 *
 * Slices are stored in chunks of TOMO_STORE_CHUNK_BYTES raw bytes, each byte-shuffled,
 * compressed with zstd and checked by a CRC-32C of its raw bytes (cache/codec.h). Small
 * chunks keep LMDB's free space reusable (a freed run of pages fits the next chunk) and let
 * a slice be decompressed in parallel. A slice is found by its variant key, a 64-bit hash of
 * everything that determines its pixels, and its index. The full text behind each key (the
 * identity) is stored once and compared on every hit, so a hash collision can never serve
 * wrong pixels: it is a miss.
 *
 * Threads
 *   Reads run on the caller's thread inside one short read-only transaction, never held
 *   beyond the call; chunks are decompressed in parallel. Writes are asynchronous:
 *   tomo_store_put() queues the slice and returns; compression threads encode it and one
 *   writer thread commits batches. The writer also evicts the least recently used slices in
 *   the same transaction as the puts, so the stored bytes stay within the capacity; records
 *   access times, which readers collect in memory, every few seconds; and syncs every few
 *   seconds and at close. Several processes may use one folder at the same time; LMDB's lock
 *   file coordinates them. A process must open a folder only once, and must not fork while it
 *   has a store open (a daemon opens it after daemonizing). The folder must be on a local
 *   filesystem: LMDB's locks and shared map do not work over NFS.
 *
 * Durability
 *   Commits are not synced one by one (MDB_NOSYNC, without MDB_WRITEMAP): a killed process
 *   loses nothing it committed and never leaves the database inconsistent; a machine crash may
 *   lose the last seconds of writes, not consistency. A chunk damaged on disk is caught by its
 *   checksum, logged once, deleted and recomputed by the caller.
 *
 * Failures
 *   Opening fails with one message naming the folder and the problem. After that nothing is
 *   fatal: a lookup that fails is a miss, and a commit that fails (a full disk) logs one
 *   warning and stops the writes of this store, while lookups go on.
 *
 * Capacity
 *   The capacity bounds the bytes the stored slices occupy in the file: each chunk counts the
 *   pages it takes. The file itself is larger by LMDB's bookkeeping and by the pages freed by
 *   the last transactions, which become reusable a transaction or two later; docs/performance.md
 *   gives measured figures. The file never shrinks: `tomofs cache clear` frees the pages inside
 *   it for reuse.
 *
 * On-disk layout, format 1 (DIR/data.mdb and DIR/lock.mdb; integers in keys are big-endian so
 * that keys sort by variant, then slice, then chunk; values are little-endian):
 *
 *   DBI "meta"    "format"       -> "1"
 *                 "totals"       -> tomo_store_totals, 10 x u64 in field order
 *                 'v' key(8)     -> u32 identity length, identity, info
 *   DBI "slices"  key(8) z(4)    -> u64 access time (ms since 1970), u64 raw bytes,
 *                                   u64 stored bytes, u64 disk bytes, u32 chunks, u32 side
 *   DBI "chunks"  key(8) z(4) chunk(4) -> an encoded chunk (cache/codec.h)
 *   DBI "atime"   time(8) key(8) z(4)  -> empty; the eviction order, oldest first
 *
 * A slice's record, chunks and access-time entry are written and deleted in one transaction.
 */
#ifndef TOMO_STORE_H
#define TOMO_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"
#include "../recon/slice.h"

/* Raw bytes per chunk (the last chunk of a slice may be shorter). */
#define TOMO_STORE_CHUNK_BYTES (1u << 20)

/* Capacity when none is given: room for about 600 compressed 2048 x 2048 slices. */
#define TOMO_STORE_DEFAULT_CAPACITY ((uint64_t)16 << 30)

/* Bytes of a chunk key: variant key, slice, chunk. */
#define TOMO_STORE_CHUNK_KEY_BYTES 16

/* Most variants one store handle table holds (one per folder of a mounted volume). */
#define TOMO_STORE_MAX_VARIANTS 16

typedef struct tomo_store tomo_store;

typedef struct tomo_store_config {
    const char *dir;   /* folder of the environment; created with mode 0700 if missing */
    uint64_t capacity; /* most bytes the slices may occupy (see Capacity above) */
    int level;         /* zstd level; 1 to 3 are the useful ones */
    int threads;       /* compression threads; 0 = half the CPUs, at least 1, at most 4 */
    int background;    /* 1: start the compression and writer threads, so puts work; 0: for
                          tools that only look, verify or clear */
} tomo_store_config;

/* Capacity TOMO_STORE_DEFAULT_CAPACITY, level 1, automatic threads, background on, no dir. */
void tomo_store_config_default(tomo_store_config *cfg);

/*
 * Writes the default folder into buf: $XDG_CACHE_HOME/tomofs when that variable holds an
 * absolute path, else $HOME/.cache/tomofs, else the home folder of the user's account.
 */
int tomo_store_default_dir(char *buf, size_t size, tomo_error *err);

/*
 * Opens (creating if needed) the store in cfg->dir: creates the folder, opens the LMDB
 * environment with a map large enough for the capacity, clears reader slots left by dead
 * processes, checks the format, and starts the threads if cfg->background. Fails with a
 * message such as "/x/tomofs: cannot create the cache folder: Not a directory".
 */
int tomo_store_open(const tomo_store_config *cfg, tomo_store **out, tomo_error *err);

/* The folder of the store. */
const char *tomo_store_dir(const tomo_store *store);

/*
 * Declares a variant: `key` is its 64-bit hash, and `identity` spells out in full what that
 * hash covers (everything that determines the pixels); `info` is free text shown by
 * `tomofs cache stats` (scan path, folder name, size).
 * Returns a handle >= 0 for tomo_store_get and tomo_store_put. Call before those; the
 * identity is written to the database with the variant's first slice.
 */
int tomo_store_add_variant(tomo_store *store, uint64_t key, const char *identity, const char *info,
                           tomo_error *err);

/*
 * Looks up slice z of a variant and decodes it into slice->pixels (slice->size gives the side
 * expected). Returns 1 on a hit; 0 on a miss, which includes: not stored, stored under the
 * same key with another identity, stored with another size, damaged (logged once, queued for
 * deletion), or the database unreadable. On 0, the pixels are garbage.
 */
int tomo_store_get(tomo_store *store, int handle, int z, tomo_slice *slice);

/*
 * Reading a slice progressively, so that a reader of its first bytes is answered before its
 * last chunk is decoded:
 *
 *     tomo_store_slice *r;
 *     if (tomo_store_slice_open(store, handle, z, side, &r) == 1) {
 *         ok = tomo_store_slice_decode(r, pixels, progress, ctx) == 0;
 *         tomo_store_slice_close(r);
 *     }
 *
 * tomo_store_slice_open() looks the slice up and returns 1, or 0 on a miss (with the same
 * meaning as for tomo_store_get). It holds a read-only transaction until
 * tomo_store_slice_close(): keep the three calls together, never across requests.
 */
typedef struct tomo_store_slice tomo_store_slice;

int tomo_store_slice_open(tomo_store *store, int handle, int z, int side, tomo_store_slice **out);

/* Number of chunks of the slice; chunk i holds pixel bytes from i * TOMO_STORE_CHUNK_BYTES. */
uint64_t tomo_store_slice_chunks(const tomo_store_slice *r);

/*
 * Decodes every chunk into `pixels` (side * side floats), on the calling thread and the
 * store's decoding threads, handing chunks out in increasing order. After each chunk is
 * decoded and its checksum verified, progress(ctx, chunk) is called (may be NULL), from any of
 * those threads and not necessarily in order. Returns 0, or -1 when a chunk is damaged: the
 * chunks already reported are good, the others must not be used.
 */
int tomo_store_slice_decode(tomo_store_slice *r, void *pixels,
                            void (*progress)(void *ctx, int chunk), void *ctx);

/* Ends the transaction; counts a hit or a miss, and reports and deletes damage. */
void tomo_store_slice_close(tomo_store_slice *r);

/*
 * Queues a slice for storage and returns at once; takes its own reference. Slices already
 * stored are only marked as used. A slice is dropped (and counted) when more than the queue's
 * memory budget is waiting, when it is larger than the capacity, or after a failed commit.
 * Needs a store opened with background set.
 */
void tomo_store_put(tomo_store *store, int handle, tomo_slice *slice);

/* Waits until everything queued before the call is committed and access times are recorded. */
void tomo_store_flush(tomo_store *store);

/* What the whole database holds, as counted in it by every process that wrote. */
typedef struct tomo_store_totals {
    uint64_t slices;       /* slices stored */
    uint64_t chunks;       /* chunks stored */
    uint64_t raw_bytes;    /* pixel bytes of the stored slices */
    uint64_t stored_bytes; /* bytes of the encoded chunks */
    uint64_t disk_bytes;   /* bytes of the pages they occupy; what the capacity bounds */
    uint64_t hits;         /* lookups that found a slice, over the store's life */
    uint64_t misses;       /* lookups that did not */
    uint64_t evictions;    /* slices evicted to stay within the capacity */
    uint64_t damaged;      /* slices found damaged and deleted */
    uint64_t capacity;     /* capacity of the last process that committed */
} tomo_store_totals;

/* What this process did, and the totals as of the call. */
typedef struct tomo_store_stats {
    uint64_t hits;    /* lookups that found the slice */
    uint64_t misses;  /* lookups that did not */
    uint64_t damaged; /* damaged slices found */
    uint64_t writes;  /* slices committed */
    uint64_t queued;  /* slices waiting for compression or commit */
    uint64_t dropped; /* slices not stored: queue full, larger than the capacity, or writes
                         stopped */
    uint64_t errors;  /* failed lookups and commits */
    int writable;     /* 0 once a commit failed */
    tomo_store_totals totals;
} tomo_store_stats;

void tomo_store_get_stats(tomo_store *store, tomo_store_stats *stats);

/* Reads the totals of the database. */
int tomo_store_read_totals(tomo_store *store, tomo_store_totals *totals, tomo_error *err);

/* Usage of one variant key, for `tomofs cache stats`. */
typedef struct tomo_store_usage {
    uint64_t key;
    const char *identity; /* "" when the metadata is missing */
    const char *info;
    uint64_t slices;
    uint64_t raw_bytes;
    uint64_t stored_bytes;
    uint64_t disk_bytes;
    uint64_t last_used_ms; /* newest access time of its slices */
} tomo_store_usage;

/* Calls fn once per variant key present, in key order. The pointers live during the call. */
int tomo_store_list_usage(tomo_store *store, void (*fn)(void *ctx, const tomo_store_usage *usage),
                          void *ctx, tomo_error *err);

typedef struct tomo_store_verify_report {
    uint64_t slices;        /* slice records checked */
    uint64_t chunks;        /* chunks decoded and checked */
    uint64_t bad_slices;    /* slices with a missing or damaged chunk, or a bad record */
    uint64_t orphan_chunks; /* chunks whose slice record is missing or lists fewer chunks */
    uint64_t stale_entries; /* access-time entries of slices that are gone (harmless) */
    uint64_t deleted;       /* bad slices, orphan chunks and stale entries deleted (repair) */
    int totals_ok;          /* the totals record matches the records (after repair, if set) */
} tomo_store_verify_report;

/*
 * Decodes and checks every chunk of every slice, and the totals. Each problem is passed to
 * `problem` as one line (may be NULL). `progress` (may be NULL) is called after every slice
 * checked with the number checked and the number the totals record (a guide for progress
 * bars: the walk may find more). With `repair`, bad slices and orphan chunks are deleted and
 * the totals recomputed. Reads in short transactions, so mounts using the store are not held
 * up; it needs no background threads.
 */
int tomo_store_verify(tomo_store *store, int repair, void (*problem)(void *ctx, const char *line),
                      void (*progress)(void *ctx, uint64_t checked, uint64_t total), void *ctx,
                      tomo_store_verify_report *report, tomo_error *err);

/*
 * Deletes every slice, chunk and variant record and resets the totals, in one transaction
 * (safe while mounts use the store). The file keeps its size; its pages are reused.
 */
int tomo_store_clear(tomo_store *store, tomo_store_totals *before, tomo_error *err);

/* The key of a chunk, as laid out above (for tools and tests that look at the raw database). */
void tomo_store_chunk_key(uint64_t key, int z, int chunk,
                          unsigned char out[TOMO_STORE_CHUNK_KEY_BYTES]);

/* Drains the queue (every queued slice is committed), syncs, stops the threads. NULL allowed. */
void tomo_store_close(tomo_store *store);

#endif
