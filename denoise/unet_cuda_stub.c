/* denoise/unet_cuda_stub.c - the CUDA backend of builds without CUDA. */
#include "unet_exec.h"

int tomo_unet_cuda_exec_create(tomo_unet *net, const tomo_unet_exec_config *config,
                               tomo_unet_exec **out, tomo_error *err)
{
    (void)net;
    *out = NULL;
    return tomo_error_set(err, TOMO_E_UNSUPPORTED,
                          "cuda:%d: this build of tomofs has no CUDA support", config->device);
}

int tomo_unet_cuda_device_count(void)
{
    return 0;
}
