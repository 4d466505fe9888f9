// The row kernels for double logits (see row_kernels.cuh).
#include "row_kernels.cuh"

RK_ROW_KERNELS(, double)
