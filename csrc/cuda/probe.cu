#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>
at::Tensor probe_cuda(const at::Tensor& x) { return x.clone(); }
TORCH_LIBRARY_IMPL(robustkernels, CUDA, m) { m.impl("probe", &probe_cuda); }
