/*
 * common/hash.h - 64-bit FNV-1a, for fingerprints and cache keys.
 *
 * Not cryptographic. Where a collision would serve wrong pixels, the cache also stores the
 * full text that was hashed and compares it.
 */
#ifndef TOMO_HASH_H
#define TOMO_HASH_H

#include <stddef.h>
#include <stdint.h>

#define TOMO_HASH_INIT UINT64_C(0xcbf29ce484222325)

/* Continues a hash over `len` bytes; start with TOMO_HASH_INIT. */
static inline uint64_t tomo_hash_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static inline uint64_t tomo_hash_u64(uint64_t h, uint64_t v)
{
    return tomo_hash_bytes(h, &v, sizeof v);
}

#endif
