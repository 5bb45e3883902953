#include <errno.h>
#include <string.h>

#include "store_internal.h"

static const MDB_val totals_name = {6, "totals"};

int store_totals_load(tomo_store *s, MDB_txn *txn, tomo_store_totals *t)
{
    MDB_val val;
    int rc = mdb_get(txn, s->meta, (MDB_val *)&totals_name, &val);
    memset(t, 0, sizeof *t);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc == 0)
        store_totals_decode(&val, t);
    return rc;
}

int store_totals_save(tomo_store *s, MDB_txn *txn, const tomo_store_totals *t)
{
    unsigned char buf[TOTALS_FIELDS * 8];
    store_totals_encode(t, buf);
    MDB_val val = {sizeof buf, buf};
    return mdb_put(txn, s->meta, (MDB_val *)&totals_name, &val, 0);
}

static uint64_t minus(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

/* Deletes every chunk whose key starts with the slice key; records missing do not matter. */
static int delete_chunks(tomo_store *s, MDB_txn *txn, uint64_t key, int z)
{
    unsigned char first[TOMO_STORE_CHUNK_KEY_BYTES];
    tomo_store_chunk_key(key, z, 0, first);
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, s->chunks, &cur);
    if (rc)
        return rc;
    MDB_val k = {sizeof first, first}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == TOMO_STORE_CHUNK_KEY_BYTES &&
           memcmp(k.mv_data, first, SLICE_KEY_BYTES) == 0) {
        rc = mdb_cursor_del(cur, 0);
        if (rc == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_GET_CURRENT);
    }
    mdb_cursor_close(cur);
    /* MDB_GET_CURRENT past the last entry, or no entry at all, ends the walk */
    return rc == MDB_NOTFOUND || rc == EINVAL ? 0 : rc;
}

int store_txn_delete_slice(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, uint64_t key, int z)
{
    unsigned char skey[SLICE_KEY_BYTES];
    store_slice_key(key, z, skey);
    MDB_val k = {sizeof skey, skey}, v;
    slice_record rec;
    int rc = mdb_get(txn, s->slices, &k, &v);
    int have_record = rc == 0;
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    /*
     * A record that fails to decode still goes; its sizes and access-time entry are then
     * unknown, and eviction drops that entry when it reaches it.
     */
    int valid = have_record && store_record_decode(&v, &rec) == 0;
    rc = delete_chunks(s, txn, key, z);
    if (rc)
        return rc;
    if (!have_record)
        return 0;
    if (valid) {
        unsigned char akey[ATIME_KEY_BYTES];
        store_atime_key(rec.atime_ms, key, z, akey);
        MDB_val ak = {sizeof akey, akey};
        rc = mdb_del(txn, s->atime, &ak, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
        t->chunks = minus(t->chunks, rec.n_chunks);
        t->raw_bytes = minus(t->raw_bytes, rec.raw_bytes);
        t->stored_bytes = minus(t->stored_bytes, rec.stored_bytes);
        t->disk_bytes = minus(t->disk_bytes, rec.disk_bytes);
    }
    t->slices = minus(t->slices, 1);
    rc = mdb_del(txn, s->slices, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_txn_touch(tomo_store *s, MDB_txn *txn, uint64_t key, int z, uint64_t now_ms)
{
    unsigned char skey[SLICE_KEY_BYTES];
    store_slice_key(key, z, skey);
    MDB_val k = {sizeof skey, skey}, v;
    slice_record rec;
    int rc = mdb_get(txn, s->slices, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (store_record_decode(&v, &rec) < 0 || rec.atime_ms >= now_ms)
        return 0;
    unsigned char akey[ATIME_KEY_BYTES];
    store_atime_key(rec.atime_ms, key, z, akey);
    MDB_val ak = {sizeof akey, akey}, empty = {0, NULL};
    rc = mdb_del(txn, s->atime, &ak, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    store_atime_key(now_ms, key, z, akey);
    if ((rc = mdb_put(txn, s->atime, &ak, &empty, 0)) != 0)
        return rc;
    rec.atime_ms = now_ms;
    unsigned char buf[RECORD_BYTES];
    store_record_encode(&rec, buf);
    MDB_val rv = {sizeof buf, buf};
    return mdb_put(txn, s->slices, &k, &rv, 0);
}

int store_txn_evict(tomo_store *s, MDB_txn *txn, tomo_store_totals *t, uint64_t target)
{
    while (t->disk_bytes > target) {
        MDB_cursor *cur;
        int rc = mdb_cursor_open(txn, s->atime, &cur);
        if (rc)
            return rc;
        MDB_val k, v;
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        unsigned char akey[ATIME_KEY_BYTES];
        int valid = rc == 0 && k.mv_size == ATIME_KEY_BYTES;
        if (valid)
            memcpy(akey, k.mv_data, sizeof akey);
        else if (rc == 0)
            rc = mdb_cursor_del(cur, 0); /* not ours: drop it so the walk moves on */
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) {
            /* nothing left to evict: the totals overstate what is stored */
            t->disk_bytes = 0;
            return 0;
        }
        if (rc)
            return rc;
        if (!valid)
            continue;
        uint64_t key = store_get_be64(akey + 8);
        int z = (int)store_get_be32(akey + 16);
        if ((rc = store_txn_delete_slice(s, txn, t, key, z)) != 0)
            return rc;
        /* the entry must go even when the slice record had vanished */
        MDB_val ak = {sizeof akey, akey};
        rc = mdb_del(txn, s->atime, &ak, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
        t->evictions++;
    }
    return 0;
}
