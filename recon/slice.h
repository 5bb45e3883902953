/*
 * recon/slice.h - a reconstructed slice: a reference-counted square of float32 pixels.
 *
 * The engine creates slices, the cache keeps them, the filesystem serves them; each holder
 * owns one reference. Pixels never change once the slice is published.
 */
#ifndef TOMO_SLICE_H
#define TOMO_SLICE_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct tomo_slice {
    atomic_int refs;
    int variant;   /* index of the variant in the volume */
    int z;         /* slice (detector row) index */
    int size;      /* side, pixels */
    float *pixels; /* size * size, row-major, 64-byte aligned */
} tomo_slice;

/* A new slice with one reference and uninitialised pixels; NULL when out of memory. */
tomo_slice *tomo_slice_new(int variant, int z, int size);

/* Takes another reference and returns the slice. */
tomo_slice *tomo_slice_ref(tomo_slice *slice);

/* Drops a reference; the last one frees the slice. NULL is allowed. */
void tomo_slice_unref(tomo_slice *slice);

/* Bytes of pixel data. */
static inline size_t tomo_slice_bytes(const tomo_slice *slice)
{
    return (size_t)slice->size * (size_t)slice->size * sizeof(float);
}

#endif
