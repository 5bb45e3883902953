/*
 * denoise/serve.h - denoised slices from a trained Noise2Inverse model: the computation only.
 *
 * The filesystem gathers the split reconstructions around a slice (through its caches) and
 * hands them here; this computes, exactly as denoise/model.h spells out,
 *
 *   denoised(z) = std * (1/K) sum_k f(input_k) + mean,
 *   input_k[c]  = ((1/(K-1)) sum_{j != k} split_j(reflect(z - context + c)) - mean) / std,
 *
 * for c = 0 .. 2 context (11 channels by default), with f the network (BatchNorm's running
 * statistics) and reflect tomo_model_reflect() at the volume's first and last slice.
 *
 * Each input is padded by reflection (tomo_model_reflect of the column and row index, so
 * padding never repeats the edge pixel) to P x P, P the slice side rounded up to a multiple
 * of 2^levels, with (P - S) / 2 columns and rows before the slice and the rest after it, and
 * the network runs on the whole padded slice at once. Only when the executor for a full
 * slice cannot be created (out of memory) are tiles used instead: T x T windows on the padded
 * slice's grid, each contributing its centre, (T - 2 margin)^2 pixels, and reading `margin`
 * pixels beyond it on every side (reflected at the slice edges). An output pixel of the
 * network depends on the inputs within 7 * 2^levels - 5 pixels of it (each 3x3 convolution at
 * level l reaches 2^l further, each pooling from level l 2^l), so with the default margin,
 * 7 * 2^levels, tiles give exactly the full slice's pixels except within that distance of the
 * padded slice's border, where the full slice sees the network's zero padding and a tile sees
 * reflected pixels. tomo_n2i_backend() says which was used.
 */
#ifndef TOMO_SERVE_H
#define TOMO_SERVE_H

#include <stdatomic.h>

#include "../common/error.h"
#include "model.h"
#include "unet.h"

typedef struct tomo_n2i_config {
    int device;  /* TOMO_UNET_DEVICE_AUTO, TOMO_UNET_DEVICE_CPU or a CUDA index */
    int threads; /* CPU threads; 0 = every core */
    int exact;   /* CUDA: 1 = fp32 only; 0 = TF32 tensor cores allowed */
    int tile;    /* 0: a full slice, tiles only when that does not fit; > 0: tiles of this
                    side (rounded up to a multiple of 2^levels), always */
    int margin;  /* context read on each side of a tile, rounded up to a multiple of
                    2^levels; 0 = 7 * 2^levels */
    /*
     * Once *cancel is nonzero, tomo_n2i_denoise_slice() stops before its next pass of the
     * network and fails with TOMO_E_CANCELLED (a pass under way is finished). NULL: never.
     */
    const atomic_int *cancel;
} tomo_n2i_config;

void tomo_n2i_config_default(tomo_n2i_config *config);

/*
 * Checks, without creating anything, that `model` can denoise: K >= 2 splits, a context that
 * gives the network's input channels, a finite positive std and finite mean. TOMO_E_INVALID
 * naming `path` and the problem otherwise.
 */
int tomo_n2i_check_model(const tomo_model *model, const char *path, tomo_error *err);

/* A model bound to an executor for slices of one size. */
typedef struct tomo_n2i tomo_n2i;

/*
 * Prepares to denoise slices of side `size` (the base variant's) with `model`, which must
 * outlive the result and must not be changed while it is used. Creates the executor (device
 * memory, threads). TOMO_E_INVALID when tomo_n2i_check_model() fails; TOMO_E_NOMEM when not
 * even the smallest tile fits; TOMO_E_UNSUPPORTED for a CUDA device this build or machine
 * does not have.
 */
int tomo_n2i_create(tomo_model *model, int size, const tomo_n2i_config *config, tomo_n2i **out,
                    tomo_error *err);

/* Number of input slices tomo_n2i_denoise_slice() takes: K * (2 context + 1). */
int tomo_n2i_inputs(const tomo_n2i *n2i);

/*
 * Denoises one slice. inputs[k * C + c] (C = 2 context + 1) is the size x size
 * sub-reconstruction of split k at slice reflect(z - context + c), in cm^-1. `mask` (size x
 * size, NULL for none) zeroes the output where it is 0: the filesystem passes the
 * reconstruction circle, outside which every other folder is 0 as well. `out` receives
 * size x size pixels in cm^-1. One call at a time per tomo_n2i.
 */
int tomo_n2i_denoise_slice(tomo_n2i *n2i, const float *const *inputs, const unsigned char *mask,
                           float *out, tomo_error *err);

/* Where and how it runs, e.g. "cpu (16 threads), full 2048 x 2048 slice". */
const char *tomo_n2i_backend(const tomo_n2i *n2i);

/* NULL allowed. */
void tomo_n2i_destroy(tomo_n2i *n2i);

#endif
