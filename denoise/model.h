/*
 * denoise/model.h - a Noise2Inverse model file: a trained (or training) network and everything
 * needed to use it, or to go on training it exactly where it stopped.
 *
 * What a model holds:
 *   - the network (config, weights, BatchNorm running statistics) and Adam's state and step;
 *   - where training stands: epochs completed, steps taken in the current epoch, steps in all,
 *     seconds spent, the random generator's state, and the loss of every step;
 *   - the normalisation x' = (x - mean) / std applied to inputs and targets, measured on the
 *     split reconstructions when training started; the network works in x' units;
 *   - the split: K interleaved angle subsets (subset j holds the projections j, j+K, j+2K, ...
 *     in angle order), the strategy (X:1) and the context (slices either side of z);
 *   - the training options it was (and will go on being) trained with;
 *   - what it was trained on: the scan fingerprint and the base variant (its folder name, key
 *     and canonical parameter text; the split sub-reconstructions are that variant with split
 *     k of K);
 *   - an id: a hash of everything that determines the denoised pixels (network shape, weights,
 *     running statistics, normalisation, split, base variant). Serving puts it in cache keys,
 *     so a retrained model never serves stale pixels; training state (Adam, loss history, RNG)
 *     does not enter it.
 *
 * How the network is used (training and serving must agree on this, so it is spelled out):
 *   X:1 input for slice z, left-out split k: channel c (0 <= c < 2 * context + 1) is the mean
 *   over the K - 1 splits j != k of the normalised sub-reconstruction j at slice
 *   tomo_model_reflect(z - context + c, n_slices). The training target is the normalised
 *   sub-reconstruction k at z. Denoised slice z = std * (mean over k of f(input_k)) + mean.
 *   Inference uses BatchNorm's running statistics. Images are padded (reflecting) to a multiple
 *   of 2^levels by the caller.
 *
 * File format (version TOMO_MODEL_FORMAT_VERSION), every number little-endian:
 *   magic "TOMOFS-N2I-MODEL" (16 bytes), u32 format version, u32 0, u64 file size,
 *   then the fields in the order written by model.c, then u32 CRC-32 (zlib's) of every byte
 *   before it. Texts are u32 length + bytes; float arrays are IEEE-754 binary32. Files are
 *   written atomically (a temporary file in the same folder, fsync, rename), so a reader never
 *   sees half a model and a crash during a checkpoint keeps the previous one.
 */
#ifndef TOMO_MODEL_H
#define TOMO_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"
#include "../common/rng.h"
#include "unet.h"

#define TOMO_MODEL_FORMAT_VERSION 1

/* Noise2Inverse strategies. Only X:1 is implemented: the paper found it the better one. */
typedef enum tomo_split_strategy {
    TOMO_SPLIT_X1 = 0, /* input: mean of the other K - 1 splits; target: the one left out */
} tomo_split_strategy;

/* The split definition. */
typedef struct tomo_split {
    int k;                        /* K: angle subsets, 2..16 (default 2: even and odd) */
    tomo_split_strategy strategy; /* TOMO_SPLIT_X1 */
    int context;                  /* slices either side of z: in_channels = 2 * context + 1 */
} tomo_split;

/* How a model is trained. */
typedef struct tomo_train_options {
    int epochs;           /* epochs to reach (default 25) */
    int slices_per_epoch; /* samples per epoch: random slice, left-out split cycling (200) */
    int batch;            /* samples per step (2) */
    int patch;            /* patch side asked for (2216); see patch_used */
    int patch_used;       /* side trained on: clamped to the slice, a multiple of 2^levels */
    tomo_adam_params adam;
    uint64_t seed; /* seeds the weights and every random draw (default 1) */
} tomo_train_options;

void tomo_train_options_default(tomo_train_options *opts);

/* One step's loss: the rows of the loss history (and of its CSV). */
typedef struct tomo_loss_record {
    int epoch;      /* 1-based epoch the step belongs to */
    uint64_t step;  /* 1-based step number over the whole training */
    double loss;    /* mean squared error of the batch, in normalised units, before the update */
    double seconds; /* training time until the end of this step (resumed runs add up) */
} tomo_loss_record;

typedef struct tomo_model {
    tomo_unet *net; /* config, weights, running statistics, Adam state and adam_step */

    /* Where training stands. */
    int epoch;                 /* epochs completed */
    uint64_t step_in_epoch;    /* steps taken in epoch `epoch` + 1 */
    uint64_t step;             /* steps taken in all */
    double seconds;            /* training time spent in all */
    tomo_rng rng;              /* state after the last step taken */
    tomo_loss_record *history; /* [n_history], one per step, in order */
    size_t n_history;
    size_t history_capacity; /* allocated rows */

    double mean, std; /* normalisation: x' = (x - mean) / std */
    tomo_split split;
    tomo_train_options options;

    /* What it was trained on. */
    uint64_t scan_fingerprint;
    char base_variant[32]; /* folder name of the base variant, e.g. "rings-removed" */
    uint64_t base_key;     /* that variant's key (covers the fingerprint too) */
    char base_params[512]; /* that variant's canonical parameter text */
    int slice_size;        /* side of the base variant's slices */
    int n_slices;          /* slices of the volume */

    uint64_t id; /* tomo_model_id(); set by save and checked by load */
} tomo_model;

/*
 * A new model with a zeroed network of this shape, no history, epoch 0, step 0, mean 0, std 1,
 * split K=2 X:1 with context (in_channels - 1) / 2 (in_channels must be odd), the default
 * options. The caller fills in the rest and initialises the weights (tomo_unet_init).
 */
int tomo_model_create(const tomo_unet_config *config, tomo_model **out, tomo_error *err);

/* NULL allowed. */
void tomo_model_free(tomo_model *model);

/* Appends one row to the loss history. */
int tomo_model_add_loss(tomo_model *model, const tomo_loss_record *record, tomo_error *err);

/* The hash of what determines the denoised pixels (see above); does not change the model. */
uint64_t tomo_model_id(const tomo_model *model);

/*
 * Writes the model to `path` atomically (path.tmp.PID, fsync, rename, fsync of the folder),
 * after setting model->id. The folder must exist. A failure names the file and the reason and
 * leaves any previous file at `path` as it was.
 */
int tomo_model_save(tomo_model *model, const char *path, tomo_error *err);

/*
 * Reads a model. A file that is missing, truncated, damaged (checksum), of another format or
 * version, or whose fields are inconsistent fails with one message naming the file, e.g.
 * "/m/x.model: damaged model file: checksum mismatch".
 */
int tomo_model_load(const char *path, tomo_model **out, tomo_error *err);

/*
 * Checks that a model belongs to this scan and base variant: TOMO_E_INVALID with a message
 * naming `path` and what differs (the scan, or the reconstruction parameters) otherwise.
 */
int tomo_model_check_base(const tomo_model *model, const char *path, uint64_t scan_fingerprint,
                          const char *base_params, tomo_error *err);

/*
 * The default place of a model: CACHE_DIR/models/FINGERPRINT-VARIANT-KEY.model, e.g.
 * ~/.cache/tomofs/models/0123456789abcdef-rings-removed-fedcba9876543210.model, where
 * FINGERPRINT is the scan's and KEY the base variant's, in hex. Writes it to buf; fails if it
 * does not fit.
 */
int tomo_model_default_path(const char *cache_dir, uint64_t scan_fingerprint,
                            const char *base_variant, uint64_t base_key, char *buf, size_t size,
                            tomo_error *err);

/* Creates CACHE_DIR/models (and CACHE_DIR) when missing, mode 0700. */
int tomo_model_make_dir(const char *cache_dir, tomo_error *err);

/*
 * Files next to a model: the same path with ".model" (if present) replaced by `suffix`, e.g.
 * ".loss.csv" or ".loss.png".
 */
int tomo_model_sibling_path(const char *model_path, const char *suffix, char *buf, size_t size,
                            tomo_error *err);

/*
 * Slice index z of a volume of n slices, reflected at the edges without repeating the edge
 * (-1 -> 1, n -> n - 2), as often as needed; 0 when n == 1.
 */
static inline int tomo_model_reflect(int z, int n)
{
    if (n <= 1)
        return 0;
    int period = 2 * (n - 1);
    z %= period;
    if (z < 0)
        z += period;
    return z < n ? z : period - z;
}

#endif
