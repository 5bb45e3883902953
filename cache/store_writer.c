/*
 * The write side of the disk tier: compression threads turn queued slices into encoded chunks;
 * one writer thread commits them in batches, evicting in the same transaction, and records
 * access times and counters every few seconds. Nothing here runs on a reader's thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "../common/log.h"
#include "store_internal.h"

/* Memory that slices waiting for compression or commit may hold; beyond it puts are dropped. */
#define QUEUE_BUDGET ((uint64_t)512 << 20)
/* Encoded bytes per write transaction: bounds the pages freed but not yet reusable. */
#define BATCH_BYTES     ((uint64_t)64 << 20)
#define ACCESS_FLUSH_MS 5000
#define SYNC_MS         5000
#define READER_CHECK_MS 60000
#define TOUCHED_SLOTS   8192

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void push(op_queue *q, store_op *op)
{
    op->next = NULL;
    if (q->tail)
        q->tail->next = op;
    else
        q->head = op;
    q->tail = op;
    q->len++;
}

static store_op *pop(op_queue *q)
{
    store_op *op = q->head;
    if (op) {
        q->head = op->next;
        if (!q->head)
            q->tail = NULL;
        q->len--;
        op->next = NULL;
    }
    return op;
}

void store_op_free(store_op *op)
{
    if (!op)
        return;
    tomo_slice_unref(op->slice);
    for (int i = 0; op->chunk && i < op->n_chunks; i++)
        free(op->chunk[i]);
    free(op->chunk);
    free(op->chunk_len);
    free(op);
}

static int usable_handle(tomo_store *s, int handle)
{
    return handle >= 0 && handle < atomic_load(&s->n_variants) &&
           !atomic_load(&s->variants[handle].collided);
}

/* ---- queueing, on the callers' threads ---- */

void tomo_store_put(tomo_store *s, int handle, tomo_slice *slice)
{
    uint64_t bytes = tomo_slice_bytes(slice);
    store_op *op = NULL;
    if (s->cfg.background && atomic_load(&s->writable) && usable_handle(s, handle))
        op = calloc(1, sizeof *op);
    if (!op) {
        atomic_fetch_add(&s->dropped, 1);
        return;
    }
    op->kind = OP_PUT;
    op->handle = handle;
    op->z = slice->z;
    op->mem = bytes;
    pthread_mutex_lock(&s->lock);
    /* never make the engine wait: a slice that does not fit is simply not cached */
    if (s->stop_workers || s->queued_mem + bytes > QUEUE_BUDGET) {
        pthread_mutex_unlock(&s->lock);
        free(op);
        atomic_fetch_add(&s->dropped, 1);
        return;
    }
    op->slice = tomo_slice_ref(slice);
    push(&s->compress_q, op);
    s->queued_mem += bytes;
    pthread_cond_signal(&s->work_cond);
    pthread_mutex_unlock(&s->lock);
}

void store_queue_delete(tomo_store *s, int handle, int z)
{
    if (!s->cfg.background || !atomic_load(&s->writable))
        return;
    store_op *op = calloc(1, sizeof *op);
    if (!op)
        return;
    op->kind = OP_DELETE;
    op->handle = handle;
    op->z = z;
    pthread_mutex_lock(&s->lock);
    push(&s->commit_q, op);
    pthread_cond_signal(&s->writer_cond);
    pthread_mutex_unlock(&s->lock);
}

void tomo_store_flush(tomo_store *s)
{
    if (!s->cfg.background || !s->writer_started)
        return;
    pthread_mutex_lock(&s->lock);
    uint64_t gen = ++s->flush_gen;
    pthread_cond_signal(&s->writer_cond);
    while (s->flushed_gen < gen)
        pthread_cond_wait(&s->idle_cond, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

/* ---- compression threads ---- */

typedef struct worker_scratch {
    tomo_codec *codec;
    unsigned char *buf;
    size_t cap;
} worker_scratch;

/* Replaces op->slice by its encoded chunks. */
static int encode_op(store_op *op, worker_scratch *w)
{
    const unsigned char *pixels = (const unsigned char *)op->slice->pixels;
    op->raw_bytes = tomo_slice_bytes(op->slice);
    op->side = op->slice->size;
    op->n_chunks = (int)store_chunk_count(op->raw_bytes);
    op->chunk = calloc((size_t)op->n_chunks, sizeof *op->chunk);
    op->chunk_len = calloc((size_t)op->n_chunks, sizeof *op->chunk_len);
    if (!op->chunk || !op->chunk_len)
        return -1;
    uint64_t mem = 0;
    for (int i = 0; i < op->n_chunks; i++) {
        size_t raw = store_chunk_raw(op->raw_bytes, (uint32_t)i);
        size_t n = tomo_chunk_encode(w->codec, pixels + (size_t)i * TOMO_STORE_CHUNK_BYTES, raw, 1,
                                     w->buf, w->cap);
        /* exact-size copies: a queue of slices should not hold the worst-case bound each */
        if (!n || !(op->chunk[i] = malloc(n)))
            return -1;
        memcpy(op->chunk[i], w->buf, n);
        op->chunk_len[i] = n;
        mem += n;
    }
    tomo_slice_unref(op->slice);
    op->slice = NULL;
    op->mem = mem;
    return 0;
}

static void *worker_main(void *arg)
{
    tomo_store *s = arg;
    worker_scratch w = {tomo_codec_create(s->cfg.level), NULL,
                        tomo_chunk_bound(TOMO_STORE_CHUNK_BYTES)};
    w.buf = malloc(w.cap);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->compress_q.head && !s->stop_workers)
            pthread_cond_wait(&s->work_cond, &s->lock);
        store_op *op = pop(&s->compress_q);
        if (!op)
            break;
        s->compressing++;
        uint64_t raw_mem = op->mem;
        pthread_mutex_unlock(&s->lock);
        int ok = w.codec && w.buf && encode_op(op, &w) == 0;
        pthread_mutex_lock(&s->lock);
        s->compressing--;
        s->queued_mem -= raw_mem;
        if (ok) {
            s->queued_mem += op->mem;
            push(&s->commit_q, op);
        } else {
            atomic_fetch_add(&s->dropped, 1);
        }
        pthread_cond_signal(&s->writer_cond);
        if (!ok) {
            pthread_mutex_unlock(&s->lock);
            store_op_free(op);
            pthread_mutex_lock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
    tomo_codec_destroy(w.codec);
    free(w.buf);
    return NULL;
}

/* ---- the writer's transactions ---- */

/* What the writer keeps between batches. */
typedef struct writer_state {
    touched_set spare;   /* swapped with the readers' set at each access flush */
    uint64_t hits_saved; /* this process's counters already added to the totals */
    uint64_t misses_saved;
    int unsynced;         /* commits since the last sync */
    uint64_t next_access; /* monotonic ms */
    uint64_t next_sync;
    uint64_t next_check;
} writer_state;

/* Per-transaction answer of "may this variant be written": 0 unknown, 1 yes, -1 collision. */
typedef signed char variant_ok[TOMO_STORE_MAX_VARIANTS];

static int write_identity(tomo_store *s, MDB_txn *txn, store_variant *v, MDB_val *key)
{
    MDB_val val = {store_variant_record_size(v), NULL};
    int rc = mdb_put(txn, s->meta, key, &val, MDB_RESERVE);
    if (rc == 0)
        store_variant_record_encode(v, val.mv_data);
    return rc;
}

/* Records the variant's identity, or finds that its key already holds another one. */
static int check_variant(tomo_store *s, MDB_txn *txn, int handle, variant_ok ok)
{
    if (ok[handle])
        return 0;
    store_variant *v = &s->variants[handle];
    unsigned char vk[9];
    store_variant_key(v->key, vk);
    MDB_val k = {sizeof vk, vk}, val;
    int rc = mdb_get(txn, s->meta, &k, &val);
    if (rc == MDB_NOTFOUND) {
        ok[handle] = 1;
        return write_identity(s, txn, v, &k);
    }
    if (rc)
        return rc;
    if (store_variant_record_matches(&val, v)) {
        ok[handle] = 1;
        return 0;
    }
    ok[handle] = -1;
    if (!atomic_exchange(&v->collided, 1))
        tomo_log_warning("%s: key %016llx of %s already names other parameters (a hash "
                         "collision); its slices are not cached",
                         s->dir, (unsigned long long)v->key, v->info);
    return 0;
}

static int put_chunks(tomo_store *s, MDB_txn *txn, uint64_t key, const store_op *op)
{
    for (int i = 0; i < op->n_chunks; i++) {
        unsigned char ck[TOMO_STORE_CHUNK_KEY_BYTES];
        tomo_store_chunk_key(key, op->z, i, ck);
        MDB_val k = {sizeof ck, ck}, v = {op->chunk_len[i], op->chunk[i]};
        int rc = mdb_put(txn, s->chunks, &k, &v, 0);
        if (rc)
            return rc;
    }
    return 0;
}

/* Stores an encoded slice, evicting first so the capacity holds; *written counts it. */
static int apply_put(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, const store_op *op,
                     uint64_t now_ms, int *written)
{
    uint64_t key = s->variants[op->handle].key;
    unsigned char skey[SLICE_KEY_BYTES];
    store_slice_key(key, op->z, skey);
    MDB_val k = {sizeof skey, skey}, v;
    int rc = mdb_get(txn, s->slices, &k, &v);
    if (rc == 0) /* another mount stored it first */
        return store_txn_touch(s, txn, key, op->z, now_ms);
    if (rc != MDB_NOTFOUND)
        return rc;
    slice_record rec = {now_ms, op->raw_bytes, 0, 0, (uint32_t)op->n_chunks, (uint32_t)op->side};
    for (int i = 0; i < op->n_chunks; i++) {
        rec.stored_bytes += op->chunk_len[i];
        rec.disk_bytes += store_chunk_disk_bytes(s, op->chunk_len[i]);
    }
    if (rec.disk_bytes > s->cfg.capacity) {
        atomic_fetch_add(&s->dropped, 1);
        return 0;
    }
    if ((rc = store_txn_evict(s, txn, t, s->cfg.capacity - rec.disk_bytes)) != 0 ||
        (rc = put_chunks(s, txn, key, op)) != 0)
        return rc;
    unsigned char buf[RECORD_BYTES], akey[ATIME_KEY_BYTES];
    store_record_encode(&rec, buf);
    MDB_val rv = {sizeof buf, buf};
    store_atime_key(now_ms, key, op->z, akey);
    MDB_val ak = {sizeof akey, akey}, empty = {0, NULL};
    if ((rc = mdb_put(txn, s->slices, &k, &rv, 0)) != 0 ||
        (rc = mdb_put(txn, s->atime, &ak, &empty, 0)) != 0)
        return rc;
    t->slices++;
    t->chunks += rec.n_chunks;
    t->raw_bytes += rec.raw_bytes;
    t->stored_bytes += rec.stored_bytes;
    t->disk_bytes += rec.disk_bytes;
    (*written)++;
    return 0;
}

static int apply_op(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, const store_op *op,
                    variant_ok ok, uint64_t now_ms, int *written)
{
    int rc = check_variant(s, txn, op->handle, ok);
    if (rc || ok[op->handle] < 0)
        return rc;
    if (op->kind == OP_PUT)
        return apply_put(s, txn, t, op, now_ms, written);
    uint64_t slices_before = t->slices;
    rc = store_txn_delete_slice(s, txn, t, s->variants[op->handle].key, op->z);
    if (rc == 0 && t->slices < slices_before)
        t->damaged++;
    return rc;
}

static int apply_touches(tomo_store *s, MDB_txn *txn, touched_set *touched, uint64_t now_ms)
{
    for (size_t i = 0; i < touched->cap; i++) {
        uint64_t id = touched->slots[i];
        if (!id)
            continue;
        int handle = (int)(id >> 32) - 1;
        if (!usable_handle(s, handle))
            continue;
        int rc = store_txn_touch(s, txn, s->variants[handle].key, (int)(uint32_t)id, now_ms);
        if (rc)
            return rc;
    }
    return 0;
}

/*
 * Names the cause of a failed commit. LMDB reports a write cut short by a full filesystem as
 * EIO, so the free space decides whether the disk is full.
 */
static void failure_reason(const tomo_store *s, int rc, char *buf, size_t size)
{
    struct statvfs fs;
    if ((rc == EIO || rc == ENOSPC || rc == EDQUOT) && statvfs(s->dir, &fs) == 0 &&
        (uint64_t)fs.f_bavail * fs.f_frsize < BATCH_BYTES) {
        snprintf(buf, size, "the disk is full: %llu KiB free",
                 (unsigned long long)((uint64_t)fs.f_bavail * fs.f_frsize >> 10));
        return;
    }
    snprintf(buf, size, "%s", rc == MDB_MAP_FULL ? "the map is full" : mdb_strerror(rc));
}

static void writes_failed(tomo_store *s, int rc)
{
    atomic_fetch_add(&s->errors, 1);
    if (!atomic_exchange(&s->writable, 0))
        return;
    char reason[128];
    failure_reason(s, rc, reason, sizeof reason);
    tomo_log_warning("%s: cannot write to the slice cache (%s); slices are still served, but "
                     "this process caches no more of them on disk",
                     s->dir, reason);
}

/* One write transaction: the batch and, with `access`, the access times and counters. */
static void commit(tomo_store *s, writer_state *w, store_op *batch, int access)
{
    if (!atomic_load(&s->writable)) {
        for (store_op *op = batch; op; op = op->next)
            if (op->kind == OP_PUT)
                atomic_fetch_add(&s->dropped, 1);
        return;
    }
    uint64_t hits = atomic_load(&s->hits), misses = atomic_load(&s->misses);
    touched_set *touched = w->spare.slots ? &w->spare : NULL;
    int counters =
        access && ((touched && touched->len) || hits != w->hits_saved || misses != w->misses_saved);
    if (!batch && !counters)
        return;
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc) {
        writes_failed(s, rc);
        return;
    }
    tomo_store_totals t;
    uint64_t now = store_now_ms();
    variant_ok ok = {0};
    int written = 0;
    rc = store_totals_load(s, txn, &t);
    if (rc == 0 && counters) {
        if (touched)
            rc = apply_touches(s, txn, touched, now);
        t.hits += hits - w->hits_saved;
        t.misses += misses - w->misses_saved;
    }
    for (store_op *op = batch; op && rc == 0; op = op->next)
        rc = apply_op(s, txn, &t, op, ok, now, &written);
    t.capacity = s->cfg.capacity;
    if (rc == 0)
        rc = store_totals_save(s, txn, &t);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc) {
        writes_failed(s, rc);
        return;
    }
    if (counters) {
        w->hits_saved = hits;
        w->misses_saved = misses;
    }
    for (store_op *op = batch; op; op = op->next)
        if (op->kind == OP_DELETE)
            store_unmark_damaged(s, op->handle, op->z);
    atomic_fetch_add(&s->writes, (uint64_t)written);
    if (!w->unsynced)
        w->next_sync = mono_ms() + SYNC_MS;
    w->unsynced = 1;
}

/* ---- the writer thread ---- */

/* Takes up to BATCH_BYTES of encoded slices (at least one op) off the commit queue. */
static store_op *take_batch(tomo_store *s, uint64_t *mem)
{
    store_op *head = NULL, **tail = &head;
    *mem = 0;
    while (s->commit_q.head && (*mem < BATCH_BYTES || !head)) {
        store_op *op = pop(&s->commit_q);
        *mem += op->mem;
        *tail = op;
        tail = &op->next;
    }
    return head;
}

static void swap_touched(tomo_store *s, writer_state *w)
{
    touched_set t = s->touched;
    s->touched = w->spare;
    w->spare = t;
}

static void housekeeping(tomo_store *s, writer_state *w, int stopping)
{
    uint64_t now = mono_ms();
    if (w->unsynced && (stopping || now >= w->next_sync)) {
        int rc = mdb_env_sync(s->env, 1);
        if (rc)
            tomo_log_warning("%s: cannot sync the slice cache: %s", s->dir, mdb_strerror(rc));
        w->unsynced = 0;
    }
    if (now >= w->next_check) {
        int dead;
        mdb_reader_check(s->env, &dead);
        w->next_check = now + READER_CHECK_MS;
    }
}

/* Sleeps until there is work: a batch, a due flush of access times or sync, or a stop. */
static void wait_for_work(tomo_store *s, writer_state *w)
{
    for (;;) {
        uint64_t now = mono_ms();
        int flush_due = s->flush_gen > s->flushed_gen && !s->compress_q.head && !s->compressing;
        if (s->commit_q.head || flush_due || s->stop_writer || now >= w->next_access ||
            (w->unsynced && now >= w->next_sync))
            return;
        uint64_t until = w->next_access;
        if (w->unsynced && w->next_sync < until)
            until = w->next_sync;
        struct timespec ts = {(time_t)(until / 1000), (long)(until % 1000) * 1000000L};
        pthread_cond_timedwait(&s->writer_cond, &s->lock, &ts);
    }
}

static void *writer_main(void *arg)
{
    tomo_store *s = arg;
    writer_state w = {.spare = {calloc(TOUCHED_SLOTS, sizeof(uint64_t)), TOUCHED_SLOTS, 0}};
    uint64_t start = mono_ms();
    w.next_access = start + ACCESS_FLUSH_MS;
    w.next_check = start + READER_CHECK_MS;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        wait_for_work(s, &w);
        uint64_t mem;
        store_op *batch = take_batch(s, &mem);
        uint64_t gen = s->flush_gen;
        int stopping = s->stop_writer;
        int access = stopping || mono_ms() >= w.next_access ||
                     (gen > s->flushed_gen && !s->compress_q.head && !s->compressing);
        int last_pass = stopping && !s->commit_q.head;
        if (access && w.spare.slots)
            swap_touched(s, &w);
        pthread_mutex_unlock(&s->lock);

        commit(s, &w, batch, access);
        while (batch) {
            store_op *next = batch->next;
            store_op_free(batch);
            batch = next;
        }
        if (access) {
            if (w.spare.slots)
                memset(w.spare.slots, 0, w.spare.cap * sizeof *w.spare.slots);
            w.spare.len = 0;
            w.next_access = mono_ms() + ACCESS_FLUSH_MS;
        }
        housekeeping(s, &w, last_pass);

        pthread_mutex_lock(&s->lock);
        s->queued_mem -= mem;
        if (access && gen > s->flushed_gen && !s->commit_q.head && !s->compress_q.head &&
            !s->compressing) {
            s->flushed_gen = gen;
            pthread_cond_broadcast(&s->idle_cond);
        }
        if (stopping && !s->commit_q.head)
            break;
    }
    /* nobody can wait for a flush any more, but release any waiter left */
    s->flushed_gen = s->flush_gen;
    pthread_cond_broadcast(&s->idle_cond);
    pthread_mutex_unlock(&s->lock);
    free(w.spare.slots);
    return NULL;
}

/* ---- starting and stopping ---- */

int store_start_threads(tomo_store *s, tomo_error *err)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_destroy(&s->writer_cond);
    pthread_cond_init(&s->writer_cond, &attr);
    pthread_condattr_destroy(&attr);

    s->touched.slots = calloc(TOUCHED_SLOTS, sizeof(uint64_t));
    s->touched.cap = TOUCHED_SLOTS;
    if (!s->touched.slots)
        return tomo_error_set(err, TOMO_E_NOMEM, "out of memory");
    int n = s->cfg.threads > 0 ? s->cfg.threads : tomo_cpu_count() / 2;
    n = n < 1 ? 1 : n > 4 ? 4 : n;
    for (int i = 0; i < n; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0)
            break;
        s->n_workers++;
    }
    if (s->n_workers > 0 && pthread_create(&s->writer, NULL, writer_main, s) == 0)
        s->writer_started = 1;
    if (!s->writer_started)
        return tomo_error_set(err, TOMO_E_INTERNAL, "%s: cannot start the cache's threads", s->dir);
    return 0;
}

void store_stop_threads(tomo_store *s)
{
    /* compression first, so that the writer sees every slice before it is told to stop */
    pthread_mutex_lock(&s->lock);
    s->stop_workers = 1;
    pthread_cond_broadcast(&s->work_cond);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->n_workers; i++)
        pthread_join(s->workers[i], NULL);
    s->n_workers = 0;
    pthread_mutex_lock(&s->lock);
    s->stop_writer = 1;
    pthread_cond_signal(&s->writer_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->writer_started)
        pthread_join(s->writer, NULL);
    s->writer_started = 0;
    /* left only when a thread could not be started */
    store_op *op;
    while ((op = pop(&s->compress_q)) != NULL)
        store_op_free(op);
    while ((op = pop(&s->commit_q)) != NULL)
        store_op_free(op);
}
