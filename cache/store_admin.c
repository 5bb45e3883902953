/*
 * Looking at the whole store, for `tomofs cache stats|verify|clear`: usage per variant,
 * a full check of every chunk, and clearing. Walks use short read transactions, so mounts
 * writing at the same time are not held up and the file does not grow meanwhile.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

#define MAX_KEY 64

typedef int (*walk_fn)(tomo_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *ctx);

/* Calls fn on every entry of a DBI in key order, `per_txn` entries per read transaction. */
static int walk(tomo_store *s, MDB_dbi dbi, int per_txn, walk_fn fn, void *ctx)
{
    unsigned char last[MAX_KEY];
    size_t last_len = 0;
    int started = 0;
    for (;;) {
        MDB_txn *txn;
        MDB_cursor *cur;
        int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
        if (rc)
            return rc;
        if ((rc = mdb_cursor_open(txn, dbi, &cur)) != 0) {
            mdb_txn_abort(txn);
            return rc;
        }
        MDB_val k = {last_len, last}, v;
        rc = mdb_cursor_get(cur, &k, &v, started ? MDB_SET_RANGE : MDB_FIRST);
        /* resume after the last key seen, which may have been deleted meanwhile */
        if (rc == 0 && started && k.mv_size == last_len && memcmp(k.mv_data, last, last_len) == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        int n = 0;
        while (rc == 0 && n < per_txn) {
            if (k.mv_size <= MAX_KEY) {
                memcpy(last, k.mv_data, k.mv_size);
                last_len = k.mv_size;
                started = 1;
            }
            if ((rc = fn(s, txn, &k, &v, ctx)) != 0)
                break;
            n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return 0;
        if (rc)
            return rc;
    }
}

static int lmdb_failed(tomo_store *s, tomo_error *err, int rc)
{
    return tomo_error_set(err, TOMO_E_IO, "%s: cannot read the slice cache: %s", s->dir,
                          mdb_strerror(rc));
}

/* The identity and info stored for a variant key, as NUL-terminated copies ("" if absent). */
static void read_identity(tomo_store *s, MDB_txn *txn, uint64_t key, char **identity, char **info)
{
    unsigned char vk[9];
    store_variant_key(key, vk);
    MDB_val k = {sizeof vk, vk}, v;
    variant_record r = {"", 0, "", 0};
    if (mdb_get(txn, s->meta, &k, &v) != 0 || store_variant_record_decode(&v, &r) < 0)
        r = (variant_record){"", 0, "", 0};
    *identity = strndup(r.identity, r.identity_len);
    *info = strndup(r.info, r.info_len);
}

/* ---- usage ---- */

typedef struct usage_walk {
    tomo_store_usage cur;
    int have;
    char *identity, *info;
    void (*fn)(void *ctx, const tomo_store_usage *usage);
    void *ctx;
} usage_walk;

static void usage_emit(usage_walk *u)
{
    if (!u->have)
        return;
    u->cur.identity = u->identity ? u->identity : "";
    u->cur.info = u->info ? u->info : "";
    u->fn(u->ctx, &u->cur);
    free(u->identity);
    free(u->info);
    u->identity = u->info = NULL;
    u->have = 0;
}

static int usage_step(tomo_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *ctx)
{
    usage_walk *u = ctx;
    slice_record rec;
    if (k->mv_size != SLICE_KEY_BYTES || store_record_decode(v, &rec) < 0)
        return 0; /* verify reports these */
    uint64_t key = store_get_be64(k->mv_data);
    if (u->have && u->cur.key != key)
        usage_emit(u);
    if (!u->have) {
        memset(&u->cur, 0, sizeof u->cur);
        u->cur.key = key;
        u->have = 1;
        read_identity(s, txn, key, &u->identity, &u->info);
    }
    u->cur.slices++;
    u->cur.raw_bytes += rec.raw_bytes;
    u->cur.stored_bytes += rec.stored_bytes;
    u->cur.disk_bytes += rec.disk_bytes;
    if (rec.atime_ms > u->cur.last_used_ms)
        u->cur.last_used_ms = rec.atime_ms;
    return 0;
}

int tomo_store_list_usage(tomo_store *s, void (*fn)(void *ctx, const tomo_store_usage *usage),
                          void *ctx, tomo_error *err)
{
    usage_walk u = {.fn = fn, .ctx = ctx};
    int rc = walk(s, s->slices, 4096, usage_step, &u);
    usage_emit(&u);
    free(u.identity);
    free(u.info);
    return rc ? lmdb_failed(s, err, rc) : 0;
}

/* ---- verify ---- */

/* Keys found bad, to delete afterwards in one write transaction. */
typedef struct key_list {
    unsigned char (*keys)[ATIME_KEY_BYTES];
    size_t len, cap;
    int failed;
} key_list;

static void key_list_add(key_list *l, const void *key, size_t len)
{
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        void *grown = realloc(l->keys, cap * sizeof *l->keys);
        if (!grown) {
            l->failed = 1;
            return;
        }
        l->keys = grown;
        l->cap = cap;
    }
    memset(l->keys[l->len], 0, ATIME_KEY_BYTES);
    memcpy(l->keys[l->len++], key, len);
}

typedef struct verify_walk {
    tomo_store_verify_report *report;
    void (*problem)(void *ctx, const char *line);
    void (*progress)(void *ctx, uint64_t checked, uint64_t total);
    uint64_t total; /* slices the totals record */
    void *ctx;
    unsigned char *buf;
    size_t buf_cap;
    key_list bad_slices, orphans, stale;
} verify_walk;

static void problem(verify_walk *w, tomo_store *s, MDB_txn *txn, uint64_t key, int z,
                    const char *detail)
{
    if (!w->problem)
        return;
    char *identity, *info, line[1024];
    read_identity(s, txn, key, &identity, &info);
    snprintf(line, sizeof line, "slice %d of key %016llx (%s): %s", z, (unsigned long long)key,
             info && info[0] ? info : "no parameters recorded", detail);
    w->problem(w->ctx, line);
    free(identity);
    free(info);
}

static int has_identity(tomo_store *s, MDB_txn *txn, uint64_t key)
{
    unsigned char vk[9];
    store_variant_key(key, vk);
    MDB_val k = {sizeof vk, vk}, v;
    return mdb_get(txn, s->meta, &k, &v) == 0;
}

static int verify_slice(tomo_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *ctx)
{
    verify_walk *w = ctx;
    w->report->slices++;
    if (w->progress)
        w->progress(w->ctx, w->report->slices, w->total);
    slice_record rec;
    if (k->mv_size != SLICE_KEY_BYTES) {
        w->report->bad_slices++;
        return 0; /* not a key this program writes; nothing to name it by */
    }
    uint64_t key = store_get_be64(k->mv_data);
    int z = (int)store_get_be32((const unsigned char *)k->mv_data + 8);
    const char *bad = NULL;
    slice_damage damage = {-1, NULL};
    if (store_record_decode(v, &rec) < 0)
        bad = "bad record";
    else if (!has_identity(s, txn, key))
        bad = "no parameters recorded for its key";
    if (!bad) {
        if (w->buf_cap < rec.raw_bytes) {
            free(w->buf);
            w->buf_cap = 0;
            if (!(w->buf = malloc(rec.raw_bytes)))
                return ENOMEM;
            w->buf_cap = rec.raw_bytes;
        }
        if (store_decode_slice(s, txn, key, z, &rec, w->buf, &damage) < 0)
            bad = damage.what;
        w->report->chunks += bad && damage.chunk >= 0 ? (uint64_t)damage.chunk + 1 : rec.n_chunks;
    }
    if (bad) {
        char detail[128];
        if (damage.chunk >= 0)
            snprintf(detail, sizeof detail, "chunk %d: %s", damage.chunk, bad);
        else
            snprintf(detail, sizeof detail, "%s", bad);
        w->report->bad_slices++;
        problem(w, s, txn, key, z, detail);
        key_list_add(&w->bad_slices, k->mv_data, SLICE_KEY_BYTES);
    }
    return 0;
}

static int verify_chunk(tomo_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)v;
    verify_walk *w = ctx;
    MDB_val sk = {SLICE_KEY_BYTES, k->mv_data}, sv;
    slice_record rec;
    int orphan =
        k->mv_size != TOMO_STORE_CHUNK_KEY_BYTES || mdb_get(txn, s->slices, &sk, &sv) != 0 ||
        store_record_decode(&sv, &rec) < 0 ||
        store_get_be32((const unsigned char *)k->mv_data + SLICE_KEY_BYTES) >= rec.n_chunks;
    if (orphan) {
        w->report->orphan_chunks++;
        key_list_add(&w->orphans, k->mv_data,
                     k->mv_size < ATIME_KEY_BYTES ? k->mv_size : ATIME_KEY_BYTES);
    }
    return 0;
}

static int verify_atime(tomo_store *s, MDB_txn *txn, const MDB_val *k, const MDB_val *v, void *ctx)
{
    (void)v;
    verify_walk *w = ctx;
    const unsigned char *p = k->mv_data;
    MDB_val sk = {SLICE_KEY_BYTES, (void *)(p + 8)}, sv;
    slice_record rec;
    if (k->mv_size != ATIME_KEY_BYTES || mdb_get(txn, s->slices, &sk, &sv) != 0 ||
        store_record_decode(&sv, &rec) < 0 || rec.atime_ms != store_get_be64(p)) {
        w->report->stale_entries++;
        key_list_add(&w->stale, p, k->mv_size < ATIME_KEY_BYTES ? k->mv_size : ATIME_KEY_BYTES);
    }
    return 0;
}

/* Sums the slice records into the size fields of *t. */
static int sum_records(tomo_store *s, MDB_txn *txn, tomo_store_totals *t)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->slices, &cur);
    if (rc)
        return rc;
    t->slices = t->chunks = t->raw_bytes = t->stored_bytes = t->disk_bytes = 0;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        slice_record rec;
        if (store_record_decode(&v, &rec) < 0)
            continue;
        t->slices++;
        t->chunks += rec.n_chunks;
        t->raw_bytes += rec.raw_bytes;
        t->stored_bytes += rec.stored_bytes;
        t->disk_bytes += rec.disk_bytes;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int same_sizes(const tomo_store_totals *a, const tomo_store_totals *b)
{
    return a->slices == b->slices && a->chunks == b->chunks && a->raw_bytes == b->raw_bytes &&
           a->stored_bytes == b->stored_bytes && a->disk_bytes == b->disk_bytes;
}

static int delete_keys(MDB_txn *txn, MDB_dbi dbi, const key_list *l, size_t key_len,
                       uint64_t *deleted)
{
    for (size_t i = 0; i < l->len; i++) {
        MDB_val k = {key_len, l->keys[i]};
        int rc = mdb_del(txn, dbi, &k, NULL);
        if (rc == 0)
            (*deleted)++;
        else if (rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}

/* Deletes what the walks found and rewrites the sizes in the totals, in one transaction. */
static int repair(tomo_store *s, verify_walk *w)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return rc;
    tomo_store_totals t;
    rc = store_totals_load(s, txn, &t);
    for (size_t i = 0; i < w->bad_slices.len && rc == 0; i++) {
        const unsigned char *k = w->bad_slices.keys[i];
        rc = store_txn_delete_slice(s, txn, &t, store_get_be64(k), (int)store_get_be32(k + 8));
        w->report->deleted++;
    }
    if (rc == 0)
        rc = delete_keys(txn, s->chunks, &w->orphans, TOMO_STORE_CHUNK_KEY_BYTES,
                         &w->report->deleted);
    if (rc == 0)
        rc = delete_keys(txn, s->atime, &w->stale, ATIME_KEY_BYTES, &w->report->deleted);
    if (rc == 0)
        rc = sum_records(s, txn, &t);
    if (rc == 0)
        rc = store_totals_save(s, txn, &t);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return rc ? rc : mdb_env_sync(s->env, 1);
}

static int check_totals(tomo_store *s, int *ok)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return rc;
    tomo_store_totals recorded, summed;
    rc = store_totals_load(s, txn, &recorded);
    summed = recorded;
    if (rc == 0)
        rc = sum_records(s, txn, &summed);
    mdb_txn_abort(txn);
    *ok = rc == 0 && same_sizes(&recorded, &summed);
    return rc;
}

int tomo_store_verify(tomo_store *s, int do_repair, void (*problem_fn)(void *ctx, const char *line),
                      void (*progress_fn)(void *ctx, uint64_t checked, uint64_t total), void *ctx,
                      tomo_store_verify_report *report, tomo_error *err)
{
    memset(report, 0, sizeof *report);
    verify_walk w = {.report = report, .problem = problem_fn, .progress = progress_fn, .ctx = ctx};
    if (progress_fn) {
        MDB_txn *txn;
        tomo_store_totals totals;
        if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) == 0) {
            if (store_totals_load(s, txn, &totals) == 0)
                w.total = totals.slices;
            mdb_txn_abort(txn);
        }
    }
    int rc = walk(s, s->slices, 16, verify_slice, &w);
    if (rc == 0)
        rc = walk(s, s->chunks, 4096, verify_chunk, &w);
    if (rc == 0)
        rc = walk(s, s->atime, 4096, verify_atime, &w);
    if (rc == 0 && (w.bad_slices.failed || w.orphans.failed || w.stale.failed))
        rc = ENOMEM;
    int problems = report->bad_slices || report->orphan_chunks || report->stale_entries;
    if (rc == 0 && do_repair && problems)
        rc = repair(s, &w);
    if (rc == 0)
        rc = check_totals(s, &report->totals_ok);
    if (rc == 0 && do_repair && !report->totals_ok) {
        rc = repair(s, &(verify_walk){.report = report});
        if (rc == 0)
            rc = check_totals(s, &report->totals_ok);
    }
    free(w.buf);
    free(w.bad_slices.keys);
    free(w.orphans.keys);
    free(w.stale.keys);
    return rc ? lmdb_failed(s, err, rc) : 0;
}

/* ---- clear ---- */

int tomo_store_clear(tomo_store *s, tomo_store_totals *before, tomo_error *err)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (rc)
        return tomo_error_set(err, TOMO_E_IO, "%s: cannot write to the slice cache: %s", s->dir,
                              mdb_strerror(rc));
    rc = store_totals_load(s, txn, before);
    MDB_dbi dbis[] = {s->slices, s->chunks, s->atime, s->meta};
    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0] && rc == 0; i++)
        rc = mdb_drop(txn, dbis[i], 0);
    if (rc == 0) {
        MDB_val k = {6, "format"}, v = {strlen(STORE_FORMAT), STORE_FORMAT};
        rc = mdb_put(txn, s->meta, &k, &v, 0);
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    if (rc == 0)
        rc = mdb_env_sync(s->env, 1);
    return rc ? tomo_error_set(err, TOMO_E_IO, "%s: cannot clear the slice cache: %s", s->dir,
                               mdb_strerror(rc))
              : 0;
}
