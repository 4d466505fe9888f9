// The row kernels for float logits (see row_kernels.cuh).
#include "row_kernels.cuh"

RK_ROW_KERNELS(, float)
