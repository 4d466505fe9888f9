// The row kernels for bfloat16 logits (see row_kernels.cuh).
#include "row_kernels.cuh"

RK_ROW_KERNELS(, at::BFloat16)
