// The row kernels for half logits (see row_kernels.cuh).
#include "row_kernels.cuh"

RK_ROW_KERNELS(, at::Half)
