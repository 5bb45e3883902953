#include <string.h>
#include <time.h>

#include "store_internal.h"

/* LMDB's page header and leaf-node header, used to estimate the file space a value takes. */
#define LMDB_PAGE_HEADER 16
#define LMDB_NODE_HEADER 8

void store_put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

uint64_t store_get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

void store_put_be32(unsigned char *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}

uint32_t store_get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void store_slice_key(uint64_t key, int z, unsigned char out[SLICE_KEY_BYTES])
{
    store_put_be64(out, key);
    store_put_be32(out + 8, (uint32_t)z);
}

void tomo_store_chunk_key(uint64_t key, int z, int chunk,
                          unsigned char out[TOMO_STORE_CHUNK_KEY_BYTES])
{
    store_slice_key(key, z, out);
    store_put_be32(out + SLICE_KEY_BYTES, (uint32_t)chunk);
}

void store_atime_key(uint64_t atime_ms, uint64_t key, int z, unsigned char out[ATIME_KEY_BYTES])
{
    store_put_be64(out, atime_ms);
    store_slice_key(key, z, out + 8);
}

void store_variant_key(uint64_t key, unsigned char out[9])
{
    out[0] = 'v';
    store_put_be64(out + 1, key);
}

void store_record_encode(const slice_record *r, unsigned char out[RECORD_BYTES])
{
    put_le64(out, r->atime_ms);
    put_le64(out + 8, r->raw_bytes);
    put_le64(out + 16, r->stored_bytes);
    put_le64(out + 24, r->disk_bytes);
    put_le32(out + 32, r->n_chunks);
    put_le32(out + 36, r->side);
}

int store_record_decode(const MDB_val *val, slice_record *r)
{
    if (val->mv_size != RECORD_BYTES)
        return -1;
    const unsigned char *p = val->mv_data;
    r->atime_ms = get_le64(p);
    r->raw_bytes = get_le64(p + 8);
    r->stored_bytes = get_le64(p + 16);
    r->disk_bytes = get_le64(p + 24);
    r->n_chunks = get_le32(p + 32);
    r->side = get_le32(p + 36);
    /* a record must describe a whole square of floats, cut into the standard chunks */
    uint64_t side = r->side;
    if (r->raw_bytes != side * side * 4 || r->n_chunks != store_chunk_count(r->raw_bytes))
        return -1;
    return 0;
}

size_t store_variant_record_size(const store_variant *v)
{
    return 4 + v->identity_len + strlen(v->info);
}

void store_variant_record_encode(const store_variant *v, unsigned char *out)
{
    put_le32(out, (uint32_t)v->identity_len);
    memcpy(out + 4, v->identity, v->identity_len);
    memcpy(out + 4 + v->identity_len, v->info, strlen(v->info));
}

int store_variant_record_decode(const MDB_val *val, variant_record *r)
{
    const unsigned char *p = val->mv_data;
    if (val->mv_size < 4 || get_le32(p) > val->mv_size - 4)
        return -1;
    r->identity_len = get_le32(p);
    r->identity = (const char *)p + 4;
    r->info = r->identity + r->identity_len;
    r->info_len = val->mv_size - 4 - r->identity_len;
    return 0;
}

int store_variant_record_matches(const MDB_val *val, const store_variant *v)
{
    variant_record r;
    return store_variant_record_decode(val, &r) == 0 && r.identity_len == v->identity_len &&
           memcmp(r.identity, v->identity, r.identity_len) == 0;
}

void store_totals_encode(const tomo_store_totals *t, unsigned char out[TOTALS_FIELDS * 8])
{
    const uint64_t fields[TOTALS_FIELDS] = {
        t->slices, t->chunks, t->raw_bytes, t->stored_bytes, t->disk_bytes,
        t->hits,   t->misses, t->evictions, t->damaged,      t->capacity};
    for (int i = 0; i < TOTALS_FIELDS; i++)
        put_le64(out + 8 * i, fields[i]);
}

void store_totals_decode(const MDB_val *val, tomo_store_totals *t)
{
    uint64_t f[TOTALS_FIELDS] = {0};
    const unsigned char *p = val->mv_data;
    /* a shorter record (an older writer) leaves the fields it lacks at zero */
    for (size_t i = 0; i < TOTALS_FIELDS && 8 * (i + 1) <= val->mv_size; i++)
        f[i] = get_le64(p + 8 * i);
    *t = (tomo_store_totals){f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9]};
}

uint64_t store_chunk_disk_bytes(const tomo_store *s, size_t len)
{
    /* LMDB moves a value to its own overflow pages once the node exceeds half a page */
    size_t node = LMDB_NODE_HEADER + TOMO_STORE_CHUNK_KEY_BYTES + len;
    if (node <= (s->page_size - LMDB_PAGE_HEADER) / 2)
        return node + 2; /* and its 2-byte slot in the page index */
    uint64_t pages = (LMDB_PAGE_HEADER + len + s->page_size - 1) / s->page_size;
    return pages * s->page_size;
}

uint32_t store_chunk_count(uint64_t raw_bytes)
{
    return (uint32_t)((raw_bytes + TOMO_STORE_CHUNK_BYTES - 1) / TOMO_STORE_CHUNK_BYTES);
}

size_t store_chunk_raw(uint64_t raw_bytes, uint32_t i)
{
    uint64_t start = (uint64_t)i * TOMO_STORE_CHUNK_BYTES;
    uint64_t left = raw_bytes - start;
    return (size_t)(left < TOMO_STORE_CHUNK_BYTES ? left : TOMO_STORE_CHUNK_BYTES);
}

uint64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
