/*
 * denoise/unet.h - the 2.5D U-Net of denoised/: its shape, its parameters, and running it.
 *
 * The network maps C adjacent slices (channels; 11 = z-5..z+5) to one denoised slice z:
 *
 *   down[0]  block(C -> f)              full resolution          skip 0 --------------.
 *   pool 2x2, down[1]  block(f -> 2f)                             skip 1 ---------.    |
 *   ...                                                                            |    |
 *   pool 2x2, down[L]  block(2^(L-1) f -> 2^L f)    the bottom, 1/2^L resolution   |    |
 *   for l = L-1 .. 0:  up[l]  transposed conv 2x2 stride 2 (2^(l+1) f -> 2^l f), + bias
 *                      dec[l] block(concat(skip l, up[l]) = 2^(l+1) f -> 2^l f)  <---'
 *   head: 1x1 conv (f -> 1), + bias
 *
 * where block(a -> b) is two units of conv 3x3 (zero padding 1, no bias) -> BatchNorm ->
 * ReLU, the first a -> b, the second b -> b, and f = base_features, L = levels. In the
 * concatenation the skip's channels come first. Height and width must be multiples of 2^L;
 * callers pad (reflecting) to get there.
 *
 * BatchNorm: training uses the batch's statistics over (n, y, x), biased variance, eps 1e-5,
 * and updates the running statistics with momentum 0.1 (running variance from the unbiased
 * batch variance); inference uses the running statistics. This is PyTorch's BatchNorm2d, and
 * the parameter layout below is PyTorch's too, so a network can be checked against an
 * independent implementation.
 *
 * Parameters live in one flat float array, in execution order:
 *   down[0..L], then for l = L-1 .. 0: up[l], dec[l]; then the head.
 * A unit is weight [out][in][3][3], gamma [out], beta [out]; a block is its two units; up[l]
 * is weight [in][out][2][2] (ConvTranspose2d's order), bias [out]; the head is weight [1][f],
 * bias [1]. BatchNorm running statistics live in a second flat array, `buffers`, unit by unit
 * in the same order: mean [out], variance [out]. tomo_unet_layout gives every offset, so
 * backends never recompute them.
 */
#ifndef TOMO_UNET_H
#define TOMO_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"
#include "../common/rng.h"

#define TOMO_UNET_MAX_LEVELS 6

typedef struct tomo_unet_config {
    int in_channels;   /* slices stacked as channels: 11 for z-5..z+5 */
    int base_features; /* f: channels at full resolution, doubled at every level */
    int levels;        /* L: 2x2 max-pools, 1..TOMO_UNET_MAX_LEVELS */
} tomo_unet_config;

/* The default: 11 channels, 32 features, 4 levels (7.8 M parameters). */
void tomo_unet_config_default(tomo_unet_config *config);

/* Offsets of one conv 3x3 -> BatchNorm -> ReLU unit. */
typedef struct tomo_unet_unit {
    int in_c, out_c;
    size_t weight;      /* params: [out_c][in_c][3][3] */
    size_t gamma, beta; /* params: [out_c] each */
    size_t mean, var;   /* buffers: [out_c] each */
} tomo_unet_unit;

typedef struct tomo_unet_block {
    tomo_unet_unit a; /* in -> out */
    tomo_unet_unit b; /* out -> out */
} tomo_unet_block;

/* Transposed convolution 2x2, stride 2: doubles height and width. */
typedef struct tomo_unet_up {
    int in_c, out_c;
    size_t weight; /* params: [in_c][out_c][2][2] */
    size_t bias;   /* params: [out_c] */
} tomo_unet_up;

typedef struct tomo_unet_layout {
    int levels;
    tomo_unet_block down[TOMO_UNET_MAX_LEVELS + 1]; /* down[l] runs at 1/2^l; down[L] = bottom */
    tomo_unet_up up[TOMO_UNET_MAX_LEVELS];          /* up[l]: level l+1 -> level l */
    tomo_unet_block dec[TOMO_UNET_MAX_LEVELS];      /* dec[l] runs at 1/2^l */
    int head_in;                                    /* f */
    size_t head_weight;                             /* params: [1][f] */
    size_t head_bias;                               /* params: [1] */
    size_t n_params;
    size_t n_buffers;
} tomo_unet_layout;

/*
 * Checks a configuration and computes its layout. Returns 0, or TOMO_E_INVALID naming the
 * bad field (channels 1..64, features 1..256, levels 1..TOMO_UNET_MAX_LEVELS).
 */
int tomo_unet_layout_make(const tomo_unet_config *config, tomo_unet_layout *layout,
                          tomo_error *err);

/* A network with its optimiser state: everything a checkpoint must hold of it. */
typedef struct tomo_unet {
    tomo_unet_config config;
    tomo_unet_layout layout;
    float *params;      /* [layout.n_params] */
    float *buffers;     /* [layout.n_buffers]: BatchNorm running means and variances */
    float *adam_m;      /* [layout.n_params]: Adam's first-moment estimate */
    float *adam_v;      /* [layout.n_params]: Adam's second-moment estimate */
    uint64_t adam_step; /* Adam updates applied so far */
} tomo_unet;

/* Allocates a network of this shape with all arrays zero. */
int tomo_unet_create(const tomo_unet_config *config, tomo_unet **out, tomo_error *err);

/*
 * Draws initial weights: conv 3x3 and head weights normal with standard deviation
 * sqrt(2 / fan_in) (He), transposed-conv weights normal with sqrt(1 / in_c), biases and
 * beta 0, gamma 1, running mean 0 and variance 1; Adam's state is reset.
 */
void tomo_unet_init(tomo_unet *net, tomo_rng *rng);

void tomo_unet_destroy(tomo_unet *net);

/* Adam's settings; the defaults are PyTorch's: lr 1e-3, betas 0.9 and 0.999, eps 1e-8. */
typedef struct tomo_adam_params {
    float lr;
    float beta1;
    float beta2;
    float eps;
} tomo_adam_params;

void tomo_adam_params_default(tomo_adam_params *adam);

/*
 * One Adam update of n parameters at step t (1 for the first update), without weight decay:
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * The CUDA backend applies the same formula, in the same order, in float.
 */
void tomo_adam_update(float *p, const float *g, float *m, float *v, size_t n, uint64_t t,
                      const tomo_adam_params *adam);

/* ---- Running the network ---------------------------------------------------------------- */

#define TOMO_UNET_DEVICE_AUTO (-1) /* the first CUDA device when there is one, else the CPU */
#define TOMO_UNET_DEVICE_CPU  (-2)

typedef struct tomo_unet_exec_config {
    int device;        /* TOMO_UNET_DEVICE_AUTO, TOMO_UNET_DEVICE_CPU or a CUDA index */
    int threads;       /* CPU threads; 0 = every core */
    int batch;         /* images per call, at most */
    int height, width; /* image size of every call; multiples of 2^levels */
    int training;      /* 1: keep what the backward pass needs (gradient, train_step) */
    int exact;         /* CUDA: 1 = fp32 arithmetic only; 0 = tensor cores (TF32) allowed */
} tomo_unet_exec_config;

/* An executor: a network bound to a backend, with its buffers for one image size. */
typedef struct tomo_unet_exec tomo_unet_exec;

/*
 * Prepares `net` to run with this configuration. A CUDA executor copies the parameters,
 * running statistics and Adam state to the GPU and works on those copies: call
 * tomo_unet_exec_pull() before reading net's arrays (e.g. to save a checkpoint) and
 * tomo_unet_exec_push() after changing them. A CPU executor works on net's arrays directly
 * (push and pull do nothing). `net` must outlive the executor. With device AUTO and no usable
 * GPU, the CPU is used. TOMO_E_NOMEM when the buffers do not fit (host or GPU memory);
 * TOMO_E_UNSUPPORTED for a CUDA device in a build without CUDA.
 */
int tomo_unet_exec_create(tomo_unet *net, const tomo_unet_exec_config *config, tomo_unet_exec **out,
                          tomo_error *err);

/*
 * Inference, with BatchNorm's running statistics: out[i] = f(in[i]) for i < n (n <= batch).
 * in: n x in_channels x height x width floats; out: n x height x width; host memory.
 */
int tomo_unet_forward(tomo_unet_exec *exec, const float *in, int n, float *out, tomo_error *err);

/*
 * The training loss and its gradient, changing nothing: forward with batch statistics, then
 * loss = mean over n x height x width of (f(in) - target)^2, and grad (n_params floats, host
 * memory; NULL to skip) = d loss / d params. target: n x height x width. Requires training.
 */
int tomo_unet_gradient(tomo_unet_exec *exec, const float *in, const float *target, int n,
                       double *loss, float *grad, tomo_error *err);

/*
 * One training step: the loss and gradient as tomo_unet_gradient(), then the running
 * statistics updated, then one Adam update (adam_step + 1). *loss is the loss before the
 * update.
 */
int tomo_unet_train_step(tomo_unet_exec *exec, const float *in, const float *target, int n,
                         const tomo_adam_params *adam, double *loss, tomo_error *err);

/* Copies the executor's parameters, statistics and Adam state into the network. */
int tomo_unet_exec_pull(tomo_unet_exec *exec, tomo_error *err);

/* Copies the network's parameters, statistics and Adam state into the executor. */
int tomo_unet_exec_push(tomo_unet_exec *exec, tomo_error *err);

/* Where it runs, e.g. "cpu (16 threads)" or "cuda:0 NVIDIA H100 80GB HBM3 (tf32)". */
const char *tomo_unet_exec_backend(const tomo_unet_exec *exec);

/* NULL allowed. */
void tomo_unet_exec_destroy(tomo_unet_exec *exec);

#endif
