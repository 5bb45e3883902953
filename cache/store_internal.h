/*
 * cache/store_internal.h - what the parts of the disk tier share: the store itself, the
 * on-disk records (see the layout in store.h) and the functions the reader, the writer and
 * the inspection tools have in common. Not for use outside cache/.
 */
#ifndef TOMO_STORE_INTERNAL_H
#define TOMO_STORE_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>

#include "../common/pool.h"
#include "codec.h"
#include "store.h"

#define STORE_FORMAT "1"

/* Bytes of a slice key (variant key, slice) and of an access-time key (time, slice key). */
#define SLICE_KEY_BYTES 12
#define ATIME_KEY_BYTES 20
#define RECORD_BYTES    40
#define TOTALS_FIELDS   10

/* Damaged slices remembered until their deletion is committed (see report_damage). */
#define STORE_DAMAGE_MARKS 16

/* A slice's entry in the "slices" DBI. */
typedef struct slice_record {
    uint64_t atime_ms;
    uint64_t raw_bytes;
    uint64_t stored_bytes;
    uint64_t disk_bytes;
    uint32_t n_chunks;
    uint32_t side;
} slice_record;

typedef struct store_variant {
    uint64_t key;
    char *identity;
    size_t identity_len;
    char *info;
    atomic_int collided; /* the database holds another identity under this key */
} store_variant;

enum { OP_PUT = 1, OP_DELETE = 2 };

/* A slice on its way to the database (compressed or not yet), or a deletion. */
typedef struct store_op {
    struct store_op *next;
    int kind;
    int handle;
    int z;
    tomo_slice *slice; /* until compressed */
    int side;
    uint64_t raw_bytes;
    int n_chunks;
    unsigned char **chunk; /* encoded chunks, once compressed */
    size_t *chunk_len;
    uint64_t mem; /* bytes this op holds, counted against the queue budget */
} store_op;

typedef struct op_queue {
    store_op *head, *tail;
    uint64_t len;
} op_queue;

/* Slices read since the access times were last recorded: an open-addressing set. */
typedef struct touched_set {
    uint64_t *slots; /* (handle + 1) << 32 | z; 0 = empty */
    size_t cap;
    size_t len;
} touched_set;

struct tomo_store {
    char dir[4096];
    tomo_store_config cfg;
    MDB_env *env;
    MDB_dbi meta, slices, chunks, atime;
    size_t page_size;

    store_variant variants[TOMO_STORE_MAX_VARIANTS];
    atomic_int n_variants;

    /* decoding, on the callers' threads */
    tomo_pool *read_pool;
    pthread_mutex_t codec_lock;
    tomo_codec **codecs; /* idle codecs */
    int n_codecs, codecs_cap;

    /* counters of this process */
    atomic_uint_least64_t hits, misses, damaged, writes, dropped, errors;
    atomic_int writable;
    atomic_flag read_error_logged;

    /* the pipeline; everything below is guarded by lock */
    pthread_mutex_t lock;
    pthread_cond_t work_cond;   /* compression threads wait here */
    pthread_cond_t writer_cond; /* the writer waits here */
    pthread_cond_t idle_cond;   /* tomo_store_flush waits here */
    op_queue compress_q, commit_q;
    uint64_t queued_mem;
    int compressing; /* ops held by compression threads */
    uint64_t flush_gen, flushed_gen;
    int stop_workers, stop_writer;
    touched_set touched;
    uint64_t damage_marks[STORE_DAMAGE_MARKS]; /* damaged slices awaiting deletion */
    unsigned next_mark;

    pthread_t workers[4];
    int n_workers;
    pthread_t writer;
    int writer_started;
};

/* ---- layout (store_layout.c) ---- */

void store_put_be64(unsigned char *p, uint64_t v);
uint64_t store_get_be64(const unsigned char *p);
void store_put_be32(unsigned char *p, uint32_t v);
uint32_t store_get_be32(const unsigned char *p);
void store_slice_key(uint64_t key, int z, unsigned char out[SLICE_KEY_BYTES]);
void store_atime_key(uint64_t atime_ms, uint64_t key, int z, unsigned char out[ATIME_KEY_BYTES]);
void store_variant_key(uint64_t key, unsigned char out[9]);
void store_record_encode(const slice_record *r, unsigned char out[RECORD_BYTES]);
int store_record_decode(const MDB_val *val, slice_record *r);
/* A variant's entry in "meta": u32 identity length, identity, info; pointers into the value. */
typedef struct variant_record {
    const char *identity;
    size_t identity_len;
    const char *info;
    size_t info_len;
} variant_record;

size_t store_variant_record_size(const store_variant *v);
void store_variant_record_encode(const store_variant *v, unsigned char *out);
int store_variant_record_decode(const MDB_val *val, variant_record *r);
/* 1 when the entry holds exactly the identity of v. */
int store_variant_record_matches(const MDB_val *val, const store_variant *v);
void store_totals_encode(const tomo_store_totals *t, unsigned char out[TOTALS_FIELDS * 8]);
void store_totals_decode(const MDB_val *val, tomo_store_totals *t);
/* Bytes of file an encoded chunk of `len` bytes occupies (its pages, or its share of one). */
uint64_t store_chunk_disk_bytes(const tomo_store *s, size_t len);
/* Number of chunks of a slice of `raw_bytes`. */
uint32_t store_chunk_count(uint64_t raw_bytes);
/* Raw bytes of chunk `i` of a slice of `raw_bytes`. */
size_t store_chunk_raw(uint64_t raw_bytes, uint32_t i);
uint64_t store_now_ms(void);

/* ---- transactions shared by the writer and the tools (store_txn.c) ---- */

int store_totals_load(tomo_store *s, MDB_txn *txn, tomo_store_totals *t);
int store_totals_save(tomo_store *s, MDB_txn *txn, const tomo_store_totals *t);
/* Deletes a slice: its chunks (all with its prefix), record and access-time entry. */
int store_txn_delete_slice(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, uint64_t key, int z);
/* Moves a stored slice to the young end of the eviction order; 0 also when it is absent. */
int store_txn_touch(tomo_store *s, MDB_txn *txn, uint64_t key, int z, uint64_t now_ms);
/* Evicts the least recently used slices until t->disk_bytes <= target. */
int store_txn_evict(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, uint64_t target);

/* ---- reading (store.c) ---- */

tomo_codec *store_codec_take(tomo_store *s);
void store_codec_give(tomo_store *s, tomo_codec *codec);

/* Why a stored slice could not be used. */
typedef struct slice_damage {
    int chunk;        /* -1: the record itself */
    const char *what; /* "missing", tomo_chunk_status_text(), "bad record" */
} slice_damage;

/*
 * Decodes the slice `rec` describes (read in `txn`) into dst (rec->raw_bytes). Returns 0, or
 * -1 with *damage saying which chunk failed and why.
 */
int store_decode_slice(tomo_store *s, MDB_txn *txn, uint64_t key, int z, const slice_record *rec,
                       unsigned char *dst, slice_damage *damage);

/* ---- the pipeline (store_writer.c) ---- */

int store_start_threads(tomo_store *s, tomo_error *err);
void store_stop_threads(tomo_store *s);
/* Queues the deletion of a damaged slice. */
void store_queue_delete(tomo_store *s, int handle, int z);
/* Forgets the damage mark of a slice whose deletion was committed (or abandoned). */
void store_unmark_damaged(tomo_store *s, int handle, int z);
void store_op_free(store_op *op);

#endif
