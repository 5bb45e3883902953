#include "slice.h"

#include <pthread.h>
#include <stdlib.h>

/*
 * Pixel buffers of freed slices are kept for reuse, up to SPARE_BYTES: a fresh allocation of
 * tens of megabytes costs a page fault per 4 KiB on first touch, which is more than the
 * reconstruction of the slice costs on a GPU.
 */
#define SPARE_MAX   32
#define SPARE_BYTES ((size_t)1 << 30)

static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static float *spare[SPARE_MAX];
static size_t spare_size[SPARE_MAX];
static int n_spare;
static size_t spare_total;

static size_t pixel_bytes(int size)
{
    size_t bytes = (size_t)size * (size_t)size * sizeof(float);
    return bytes ? (bytes + 63) & ~(size_t)63 : 64;
}

static float *take_spare(size_t bytes)
{
    float *found = NULL;
    pthread_mutex_lock(&spare_lock);
    for (int i = n_spare - 1; i >= 0; i--)
        if (spare_size[i] == bytes) {
            found = spare[i];
            spare_total -= bytes;
            spare[i] = spare[n_spare - 1];
            spare_size[i] = spare_size[n_spare - 1];
            n_spare--;
            break;
        }
    pthread_mutex_unlock(&spare_lock);
    return found;
}

static void give_spare(float *pixels, size_t bytes)
{
    pthread_mutex_lock(&spare_lock);
    if (n_spare < SPARE_MAX && spare_total + bytes <= SPARE_BYTES) {
        spare[n_spare] = pixels;
        spare_size[n_spare] = bytes;
        n_spare++;
        spare_total += bytes;
        pixels = NULL;
    }
    pthread_mutex_unlock(&spare_lock);
    free(pixels);
}

tomo_slice *tomo_slice_new(int variant, int z, int size)
{
    tomo_slice *slice = malloc(sizeof *slice);
    if (!slice)
        return NULL;
    size_t bytes = pixel_bytes(size);
    slice->pixels = take_spare(bytes);
    if (!slice->pixels)
        slice->pixels = aligned_alloc(64, bytes);
    if (!slice->pixels) {
        free(slice);
        return NULL;
    }
    atomic_init(&slice->refs, 1);
    slice->variant = variant;
    slice->z = z;
    slice->size = size;
    return slice;
}

tomo_slice *tomo_slice_ref(tomo_slice *slice)
{
    atomic_fetch_add_explicit(&slice->refs, 1, memory_order_relaxed);
    return slice;
}

void tomo_slice_unref(tomo_slice *slice)
{
    if (slice && atomic_fetch_sub_explicit(&slice->refs, 1, memory_order_acq_rel) == 1) {
        give_spare(slice->pixels, pixel_bytes(slice->size));
        free(slice);
    }
}
