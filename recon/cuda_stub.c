/*
 * recon/cuda_stub.c - the GPU interface in a build without CUDA: no device is ever usable.
 */
#include <stdio.h>

#include "cuda.h"

static int not_built(tomo_error *err)
{
    return tomo_error_set(err, TOMO_E_UNSUPPORTED, "GPU: this tomofs was built without CUDA");
}

const char *tomo_precision_name(tomo_precision precision)
{
    return precision == TOMO_PRECISION_EXACT ? "exact" : "fast";
}

int tomo_cuda_device_count(char *name, size_t name_size)
{
    if (name && name_size)
        snprintf(name, name_size, "built without CUDA");
    return 0;
}

int tomo_cuda_create(const tomo_cuda_config *config, tomo_cuda **out, tomo_error *err)
{
    (void)config;
    *out = NULL;
    return not_built(err);
}

float *tomo_cuda_raw_buffer(tomo_cuda *cuda)
{
    (void)cuda;
    return NULL;
}

int tomo_cuda_reconstruct(tomo_cuda *cuda, int nz, const tomo_cuda_refs *refs, float *const *images,
                          tomo_prep_stats *stats, tomo_error *err)
{
    (void)cuda, (void)nz, (void)refs, (void)images, (void)stats;
    return not_built(err);
}

int tomo_cuda_begin(tomo_cuda *cuda, int first, int nz, const tomo_cuda_refs *refs, tomo_error *err)
{
    (void)cuda, (void)first, (void)nz, (void)refs;
    return not_built(err);
}

int tomo_cuda_raw_wait(tomo_cuda *cuda, tomo_error *err)
{
    (void)cuda;
    return not_built(err);
}

int tomo_cuda_finish(tomo_cuda *cuda, float *const *images, tomo_prep_stats *stats, tomo_error *err)
{
    (void)cuda, (void)images, (void)stats;
    return not_built(err);
}

int tomo_cuda_bench_backproject(tomo_cuda *cuda, const float *filtered, int nz, int repeat,
                                float *images, double *ms, tomo_error *err)
{
    (void)cuda, (void)filtered, (void)nz, (void)repeat, (void)images, (void)ms;
    return not_built(err);
}

void tomo_cuda_destroy(tomo_cuda *cuda)
{
    (void)cuda;
}

int tomo_cuda_supports_rings(const tomo_rings_params *rings)
{
    (void)rings;
    return 0;
}

int tomo_cuda_bench_rings(tomo_cuda *cuda, float *sino, int repeat, double *ms, tomo_error *err)
{
    (void)cuda, (void)sino, (void)repeat, (void)ms;
    return not_built(err);
}
