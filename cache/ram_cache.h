/*
 * cache/ram_cache.h - the RAM tier: finished slices kept in memory, least recently used
 * evicted first, within a byte budget.
 *
 * Thread-safe. Entries are keyed by (variant, z) and hold a reference to the slice, so a
 * slice evicted while a reader still uses it lives on until that reader drops it.
 */
#ifndef TOMO_RAM_CACHE_H
#define TOMO_RAM_CACHE_H

#include <stdint.h>

#include "../recon/slice.h"

typedef struct tomo_ram_cache tomo_ram_cache;

/* A cache that holds at most `capacity` bytes of pixels (0 keeps nothing). */
tomo_ram_cache *tomo_ram_cache_create(uint64_t capacity);

/* Stores a slice (takes its own reference), replacing an older one with the same key. */
void tomo_ram_cache_put(tomo_ram_cache *cache, tomo_slice *slice);

/* A new reference to the slice (caller unrefs), or NULL. Marks it most recently used. */
tomo_slice *tomo_ram_cache_get(tomo_ram_cache *cache, int variant, int z);

typedef struct tomo_ram_cache_stats {
    uint64_t bytes;
    uint64_t capacity;
    uint64_t entries;
    uint64_t hits;
    uint64_t misses;
    uint64_t evictions;
} tomo_ram_cache_stats;

void tomo_ram_cache_get_stats(tomo_ram_cache *cache, tomo_ram_cache_stats *stats);

void tomo_ram_cache_destroy(tomo_ram_cache *cache);

#endif
