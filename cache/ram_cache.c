#include "ram_cache.h"

#include <pthread.h>
#include <stdlib.h>

#define N_BUCKETS 4096

typedef struct entry {
    tomo_slice *slice;
    struct entry *hash_next;
    struct entry *prev, *next; /* LRU list: head is the most recently used */
} entry;

struct tomo_ram_cache {
    pthread_mutex_t lock;
    entry *buckets[N_BUCKETS];
    entry *head, *tail;
    tomo_ram_cache_stats stats;
};

static unsigned bucket_of(int variant, int z)
{
    uint32_t h = (uint32_t)z * 2654435761u ^ (uint32_t)variant * 40503u;
    return h % N_BUCKETS;
}

static void lru_unlink(tomo_ram_cache *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(tomo_ram_cache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static entry **find_slot(tomo_ram_cache *c, int variant, int z)
{
    entry **pe = &c->buckets[bucket_of(variant, z)];
    while (*pe && !((*pe)->slice->variant == variant && (*pe)->slice->z == z))
        pe = &(*pe)->hash_next;
    return pe;
}

static void remove_entry(tomo_ram_cache *c, entry **slot)
{
    entry *e = *slot;
    *slot = e->hash_next;
    lru_unlink(c, e);
    c->stats.bytes -= tomo_slice_bytes(e->slice);
    c->stats.entries--;
    tomo_slice_unref(e->slice);
    free(e);
}

tomo_ram_cache *tomo_ram_cache_create(uint64_t capacity)
{
    tomo_ram_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->stats.capacity = capacity;
    return c;
}

void tomo_ram_cache_put(tomo_ram_cache *c, tomo_slice *slice)
{
    uint64_t bytes = tomo_slice_bytes(slice);
    pthread_mutex_lock(&c->lock);
    entry **slot = find_slot(c, slice->variant, slice->z);
    if (*slot)
        remove_entry(c, slot);
    if (bytes > c->stats.capacity) {
        pthread_mutex_unlock(&c->lock);
        return;
    }
    while (c->stats.bytes + bytes > c->stats.capacity && c->tail) {
        entry *victim = c->tail;
        remove_entry(c, find_slot(c, victim->slice->variant, victim->slice->z));
        c->stats.evictions++;
    }
    entry *e = calloc(1, sizeof *e);
    if (e) {
        e->slice = tomo_slice_ref(slice);
        slot = find_slot(c, slice->variant, slice->z);
        *slot = e;
        lru_push_front(c, e);
        c->stats.bytes += bytes;
        c->stats.entries++;
    }
    pthread_mutex_unlock(&c->lock);
}

tomo_slice *tomo_ram_cache_get(tomo_ram_cache *c, int variant, int z)
{
    tomo_slice *found = NULL;
    pthread_mutex_lock(&c->lock);
    entry *e = *find_slot(c, variant, z);
    if (e) {
        lru_unlink(c, e);
        lru_push_front(c, e);
        found = tomo_slice_ref(e->slice);
        c->stats.hits++;
    } else {
        c->stats.misses++;
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

void tomo_ram_cache_get_stats(tomo_ram_cache *c, tomo_ram_cache_stats *stats)
{
    pthread_mutex_lock(&c->lock);
    *stats = c->stats;
    pthread_mutex_unlock(&c->lock);
}

void tomo_ram_cache_destroy(tomo_ram_cache *c)
{
    if (!c)
        return;
    for (int b = 0; b < N_BUCKETS; b++)
        while (c->buckets[b])
            remove_entry(c, &c->buckets[b]);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
