#include "slice.h"

#include <stdlib.h>

tomo_slice *tomo_slice_new(int variant, int z, int size)
{
    tomo_slice *slice = malloc(sizeof *slice);
    if (!slice)
        return NULL;
    size_t bytes = (size_t)size * (size_t)size * sizeof(float);
    bytes = (bytes + 63) & ~(size_t)63;
    slice->pixels = aligned_alloc(64, bytes ? bytes : 64);
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
        free(slice->pixels);
        free(slice);
    }
}
