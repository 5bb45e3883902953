/*
 * denoise/train.h - Noise2Inverse training (X:1, 2.5D) of a model on split sub-reconstructions.
 *
 * One step draws `batch` samples. Sample number s (counted from 0 over the whole training)
 * leaves out split k = s mod K (so k cycles) and draws from the model's generator, in this
 * order: the slice z (uniform over the volume), the patch's top row and left column (uniform,
 * the patch inside the slice) and one of the 8 dihedral transforms (bit 0 flips x, bit 1 flips
 * y, bit 2 transposes). The input is model.h's X:1 input at z, the target split k at z, both
 * normalised, cut to the patch and transformed alike. The step minimises their mean squared
 * error with Adam (tomo_unet_train_step).
 *
 * An epoch is ceil(slices_per_epoch / batch) steps. After every epoch the model is saved (a
 * checkpoint) with its loss history as CSV and PNG beside it. When *stop becomes nonzero the
 * current step finishes, the checkpoint is written and training returns TOMO_E_CANCELLED.
 * Everything a step depends on is in the model (weights, statistics, Adam, generator, step
 * counters), so tomo_train_run on a loaded checkpoint continues exactly where the saved run
 * stopped: on the CPU, an interrupted and resumed run ends with the same bits as one that ran
 * through.
 */
#ifndef TOMO_TRAIN_H
#define TOMO_TRAIN_H

#include <signal.h>
#include <stdint.h>

#include "../common/error.h"
#include "model.h"
#include "unet.h"

/* Where the split sub-reconstructions come from (a volume, or a test's arrays). */
typedef struct tomo_train_source {
    int size;     /* side of every slice, pixels */
    int n_slices; /* slices of the volume */
    int k;        /* splits: sub-reconstructions 0..k-1 */
    void *ctx;
    /*
     * Slice z of sub-reconstruction `split`: size x size floats, row-major, valid until
     * release(ctx, handle). Blocking. Fails with a message naming the slice.
     */
    int (*fetch)(void *ctx, int split, int z, const float **pixels, void **handle, tomo_error *err);
    void (*release)(void *ctx, void *handle);
} tomo_train_source;

/* Where training stands, for progress displays. */
typedef struct tomo_train_status {
    int epoch;              /* 1-based epoch being trained */
    int epochs;             /* epochs to reach */
    uint64_t step_in_epoch; /* steps done in this epoch */
    uint64_t steps_per_epoch;
    uint64_t step;           /* steps done in all */
    uint64_t steps_total;    /* steps when the last epoch is done */
    uint64_t steps_this_run; /* steps done since tomo_train_run started (for rates) */
    double loss;             /* the last step's loss */
    double epoch_loss;       /* mean loss over this epoch's steps so far */
} tomo_train_status;

typedef struct tomo_train_run_config {
    const char *model_path;            /* checkpoints go here; CSV and PNG beside it */
    int device;                        /* TOMO_UNET_DEVICE_AUTO, _CPU or a CUDA index */
    int threads;                       /* CPU threads; 0 = all */
    const volatile sig_atomic_t *stop; /* may be NULL */
    void *ctx;
    /* After every step (may be NULL). */
    void (*on_step)(void *ctx, const tomo_train_status *status);
    /* After every checkpoint written (may be NULL): model->step_in_epoch is 0 after an epoch. */
    void (*on_checkpoint)(void *ctx, const tomo_model *model, const char *path);
    /* Once, with the executor's description (may be NULL). */
    void (*on_backend)(void *ctx, const char *backend);
} tomo_train_run_config;

/*
 * Measures the normalisation: mean and standard deviation (population) of every nonzero pixel
 * (0 is outside the reconstruction circle) of up to 16 evenly spaced slices of every split,
 * summed in double in a fixed order. TOMO_E_INVALID when they are all 0 or all the same.
 */
int tomo_train_measure(const tomo_train_source *src, double *mean, double *std, tomo_error *err);

/*
 * Prepares a new model for training on `src`: checks that the source suits the model (K, at
 * least one slice, a slice at least 2^levels wide), sets patch_used (the options' patch clamped
 * to the slice and rounded down to a multiple of 2^levels), seeds the generator with
 * options.seed, draws the initial weights from it, and measures the normalisation. The caller
 * has set the network shape, split, options and base variant.
 */
int tomo_train_prepare(tomo_model *model, const tomo_train_source *src, tomo_error *err);

/*
 * Trains until model->options.epochs epochs are done (returns 0 at once if they are), saving
 * a checkpoint after each and whenever *stop is seen (then TOMO_E_CANCELLED). A diverging run
 * (a loss that is not finite) stops with TOMO_E_INVALID and keeps the last checkpoint.
 */
int tomo_train_run(tomo_model *model, const tomo_train_source *src,
                   const tomo_train_run_config *cfg, tomo_error *err);

/*
 * The batch of step `step_index` (0-based over the whole training) as training draws it from
 * *rng (which advances): in (batch x C x P x P) and target (batch x P x P), P = patch_used.
 * For tests and for looking at what the network is shown.
 */
int tomo_train_batch(const tomo_model *model, const tomo_train_source *src, uint64_t step_index,
                     tomo_rng *rng, float *in, float *target, tomo_error *err);

/* Steps per epoch: ceil(slices_per_epoch / batch). */
uint64_t tomo_train_steps_per_epoch(const tomo_train_options *opts);

/* The loss history as CSV: "epoch,step,loss,seconds", one row per step; atomically. */
int tomo_train_write_csv(const tomo_model *model, const char *path, tomo_error *err);

/*
 * The loss history as a PNG plot (log scale): every step in grey, the epoch means as a line
 * with dots, epoch boundaries as ticks; atomically.
 */
int tomo_train_write_plot(const tomo_model *model, const char *path, tomo_error *err);

#endif
