// The soft-target row kernels of every logits dtype (see soft_kernels.cuh).
#include "soft_kernels.cuh"

RK_SOFT_KERNELS(, float)
RK_SOFT_KERNELS(, double)
RK_SOFT_KERNELS(, at::Half)
RK_SOFT_KERNELS(, at::BFloat16)
