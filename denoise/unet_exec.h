/*
 * denoise/unet_exec.h - what a backend of tomo_unet_exec provides. Internal to denoise/.
 *
 * A backend allocates a struct whose first member is `struct tomo_unet_exec`, fills in
 * ops, net, config and backend, and returns it from its create function. unet.c checks the
 * arguments common to every backend before calling the ops, so a backend may assume
 * 0 < n <= config.batch, non-NULL arrays, and training buffers for gradient and train_step.
 */
#ifndef TOMO_UNET_EXEC_H
#define TOMO_UNET_EXEC_H

#include "unet.h"

typedef struct tomo_unet_exec_ops {
    int (*forward)(tomo_unet_exec *exec, const float *in, int n, float *out, tomo_error *err);
    int (*gradient)(tomo_unet_exec *exec, const float *in, const float *target, int n, double *loss,
                    float *grad, tomo_error *err);
    int (*train_step)(tomo_unet_exec *exec, const float *in, const float *target, int n,
                      const tomo_adam_params *adam, double *loss, tomo_error *err);
    int (*pull)(tomo_unet_exec *exec, tomo_error *err);
    int (*push)(tomo_unet_exec *exec, tomo_error *err);
    void (*destroy)(tomo_unet_exec *exec);
} tomo_unet_exec_ops;

struct tomo_unet_exec {
    const tomo_unet_exec_ops *ops;
    tomo_unet *net;
    tomo_unet_exec_config config;
    char backend[128];
};

/* unet_cpu.c: the reference backend, plain C, threaded. */
int tomo_unet_cpu_exec_create(tomo_unet *net, const tomo_unet_exec_config *config,
                              tomo_unet_exec **out, tomo_error *err);

/*
 * For tests, on a CPU executor created for training: the forward pass with batch statistics
 * (the one tomo_unet_gradient() differentiates), its output (n x height x width) and, when
 * batch_stats is not NULL, the batch means and biased variances in the layout of the
 * network's buffers (n_buffers floats).
 */
int tomo_unet_cpu_forward_train(tomo_unet_exec *exec, const float *in, int n, float *out,
                                float *batch_stats, tomo_error *err);

/*
 * unet_cuda.cu (or unet_cuda_stub.c without CUDA): cuDNN and cuBLAS. `config->device` is a
 * CUDA index >= 0. Returns TOMO_E_UNSUPPORTED when the build or the machine has no such GPU.
 */
int tomo_unet_cuda_exec_create(tomo_unet *net, const tomo_unet_exec_config *config,
                               tomo_unet_exec **out, tomo_error *err);

/* Number of usable CUDA devices (0 without CUDA or without a GPU). */
int tomo_unet_cuda_device_count(void);

#endif
