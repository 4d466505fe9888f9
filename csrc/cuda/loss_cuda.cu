// Host side of the CUDA ops: validation, outputs, the dtype and kernel-variant dispatch, and the
// gradient rescale. The row kernels are in row_kernels.cuh, compiled in rows_<dtype>.cu.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "loss_math.h"
#include "op_checks.h"
#include "row_kernels.cuh"
#include "soft_kernels.cuh"

RK_ROW_KERNELS(extern, float)
RK_ROW_KERNELS(extern, double)
RK_ROW_KERNELS(extern, at::Half)
RK_ROW_KERNELS(extern, at::BFloat16)
RK_SOFT_KERNELS(extern, float)
RK_SOFT_KERNELS(extern, double)
RK_SOFT_KERNELS(extern, at::Half)
RK_SOFT_KERNELS(extern, at::BFloat16)

namespace rk {
namespace {

using cuda_rows::KernelArgs;
using cuda_rows::launch_soft;
using cuda_rows::launch_variant;
using cuda_rows::SoftArgs;

// The arguments every row launch shares (KernelArgs and SoftArgs name them alike); the caller
// adds the target's kind, what `mean` divides by and the class weights. A grad of no elements
// (a forward without gradient) is a null pointer.
template <class Args>
void fill_row_args(Args& args, const at::Tensor& logits, const at::Tensor& target, const at::Tensor& eps,
                   double epsilon, unsigned mask, c10::ArrayRef<double> params, int64_t ignore_index,
                   at::Tensor& rows, at::Tensor& grad) {
  using T = decltype(args.eps);
  args.logits = logits.const_data_ptr();
  args.N = logits.size(0);
  args.K = logits.size(1);
  args.row_stride = logits.stride(0);
  args.target = target.const_data_ptr();
  args.target_stride = target.stride(0);
  args.eps_rows = eps.defined() ? eps.const_data_ptr<T>() : nullptr;
  args.eps_stride = eps.defined() ? eps.stride(0) : 0;
  args.eps = static_cast<T>(epsilon);
  load_slots(params.data(), args.prm);
  args.mask = mask;
  args.ignore_index = ignore_index;
  args.rows_out = rows.mutable_data_ptr<T>();
  args.grad = grad.defined() && grad.numel() > 0 ? grad.mutable_data_ptr() : nullptr;
}

template <class T>
KernelArgs<T> label_kernel_args(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& eps,
                                double epsilon, unsigned mask, c10::ArrayRef<double> params, int64_t ignore_index,
                                at::Tensor& rows, at::Tensor& grad) {
  KernelArgs<T> args{};
  fill_row_args(args, logits, target, eps, epsilon, mask, params, ignore_index, rows, grad);
  args.target_is_int32 = target.scalar_type() == at::kInt;
  return args;
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cuda(const at::Tensor& logits_in, const at::Tensor& target,
                                                     const std::optional<at::Tensor>& epsilon_rows, double epsilon,
                                                     int64_t terms, c10::ArrayRef<double> params, int64_t ignore_index,
                                                     int64_t reduction, bool compute_grad) {
  check_forward_inputs(logits_in, target, epsilon_rows, terms, params, reduction);
  const auto mask = static_cast<unsigned>(terms);
  const at::cuda::OptionalCUDAGuard guard(logits_in.device());
  const at::Tensor logits = rows_unit_stride(logits_in);
  const int64_t N = logits.size(0), K = logits.size(1);
  const auto acc_dtype = loss_dtype(logits.scalar_type());
  at::Tensor rows = at::empty({N}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({N, K}, logits.options()) : at::empty({0}, logits.options());
  at::Tensor eps;
  if (epsilon_rows.has_value()) eps = epsilon_rows->to(acc_dtype);
  // Rows counted by the mean (every label but ignore_index), on the device.
  at::Tensor count;
  // Compared in int64 as the kernels do: int32 labels would wrap an ignore_index beyond int32.
  if (reduction == kMean) count = target.to(at::kLong).ne(ignore_index).sum();
  if (N == 0) {
    at::Tensor loss = reduction == kNone ? rows : (reduction == kSum ? rows.sum() : rows.sum() / count.to(acc_dtype));
    return {loss, grad};
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "robustkernels_loss_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    KernelArgs<T> args = label_kernel_args<T>(logits, target, eps, epsilon, mask, params, ignore_index, rows, grad);
    args.count = count.defined() ? count.const_data_ptr<int64_t>() : nullptr;
    dispatch_variant(mask, [&](auto variant) { launch_variant<scalar_t, decltype(variant)::value>(args, stream); });
  });

  if (reduction == kNone) return {rows, grad};
  if (reduction == kSum) return {rows.sum(), grad};
  return {rows.sum() / count.to(acc_dtype), grad};  // 0 / 0 = NaN when every row is ignored
}

// What `mean` divides by, on the device (no host sync): sum_i w_{y_i} over the rows whose label is
// not ignore_index and in [0, K) with weight, their count (invalid labels included, as
// loss_forward) without; N for a probability target.
at::Tensor soft_denominator(const at::Tensor& target, const at::Tensor& weight, int64_t ignore_index, int64_t K,
                            at::ScalarType acc_dtype) {
  if (target.is_floating_point()) {
    return at::full({}, static_cast<double>(target.size(0)), target.options().dtype(acc_dtype));
  }
  const at::Tensor labels = target.to(at::kLong);
  const at::Tensor counted = labels.ne(ignore_index);
  if (!weight.defined()) return counted.sum().to(acc_dtype);
  const at::Tensor valid = counted.logical_and(labels.ge(0)).logical_and(labels.lt(K));
  const at::Tensor picked = weight.index_select(0, labels.clamp(0, K - 1));
  return picked.where(valid, at::zeros({}, picked.options())).sum();
}

void launch_soft_rows(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& eps,
                      const at::Tensor& weight, const at::Tensor& denominator, double epsilon, unsigned mask,
                      c10::ArrayRef<double> params, int64_t ignore_index, double alpha, at::Tensor& rows,
                      at::Tensor& grad, cudaStream_t stream) {
  const int64_t K = logits.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "robustkernels_soft_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    SoftArgs<T> args{};
    fill_row_args(args, logits, target, eps, epsilon, mask, params, ignore_index, rows, grad);
    args.target_col_stride = target.dim() == 2 ? target.stride(1) : 0;
    switch (target.scalar_type()) {
      case at::kLong: args.target_kind = cuda_rows::kLabelsInt64; break;
      case at::kInt: args.target_kind = cuda_rows::kLabelsInt32; break;
      case at::kFloat: args.target_kind = cuda_rows::kProbFloat; break;
      case at::kDouble: args.target_kind = cuda_rows::kProbDouble; break;
      case at::kHalf: args.target_kind = cuda_rows::kProbHalf; break;
      default: args.target_kind = cuda_rows::kProbBFloat16; break;
    }
    args.weight = weight.defined() ? weight.const_data_ptr<T>() : nullptr;
    args.keep = static_cast<T>(1.0 - alpha);
    args.spread = static_cast<T>(alpha / static_cast<double>(K));
    args.denominator = denominator.defined() ? denominator.const_data_ptr<T>() : nullptr;
    launch_soft<scalar_t>(args, stream);
  });
}

void launch_weighted_label_rows(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& eps,
                                const at::Tensor& weight, const at::Tensor& denominator, double epsilon,
                                unsigned mask, c10::ArrayRef<double> params, int64_t ignore_index, at::Tensor& rows,
                                at::Tensor& grad, cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "robustkernels_weighted_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    KernelArgs<T> args = label_kernel_args<T>(logits, target, eps, epsilon, mask, params, ignore_index, rows, grad);
    args.denominator = denominator.defined() ? denominator.const_data_ptr<T>() : nullptr;
    args.weight = weight.const_data_ptr<T>();
    dispatch_variant(mask, [&](auto variant) { launch_variant<scalar_t, decltype(variant)::value>(args, stream); });
  });
}

std::tuple<at::Tensor, at::Tensor> soft_loss_forward_cuda(
    const at::Tensor& logits_in, const at::Tensor& target, const std::optional<at::Tensor>& epsilon_rows,
    const std::optional<at::Tensor>& weight, double epsilon, int64_t terms, c10::ArrayRef<double> params,
    int64_t ignore_index, double label_smoothing, int64_t reduction, bool compute_grad) {
  const bool soft =
      check_soft_inputs(logits_in, target, epsilon_rows, weight, terms, params, label_smoothing, reduction);
  const auto mask = static_cast<unsigned>(terms);
  const at::cuda::OptionalCUDAGuard guard(logits_in.device());
  const at::Tensor logits = rows_unit_stride(logits_in);
  const int64_t N = logits.size(0), K = logits.size(1);
  const auto acc_dtype = loss_dtype(logits.scalar_type());
  at::Tensor rows = at::empty({N}, logits.options().dtype(acc_dtype));
  at::Tensor grad = compute_grad ? at::empty({N, K}, logits.options()) : at::Tensor();
  at::Tensor eps, w, denominator;
  if (epsilon_rows.has_value()) eps = epsilon_rows->to(acc_dtype);
  if (weight.has_value()) w = weight->contiguous();
  if (reduction == kMean) denominator = soft_denominator(target, w, ignore_index, K, acc_dtype);
  if (N > 0) {
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (soft) {
      launch_soft_rows(logits, target, eps, w, denominator, epsilon, mask, params, ignore_index, label_smoothing,
                       rows, grad, stream);
    } else {
      launch_weighted_label_rows(logits, target, eps, w, denominator, epsilon, mask, params, ignore_index, rows,
                                 grad, stream);
    }
  }
  const at::Tensor empty_grad = at::empty({0}, logits.options());
  if (reduction == kNone) return {rows, compute_grad ? grad : empty_grad};
  if (reduction == kSum) return {rows.sum(), compute_grad ? grad : empty_grad};
  return {rows.sum() / denominator, compute_grad ? grad : empty_grad};  // 0 / 0 = NaN when every row is ignored
}

// The factor is read on the device: a scalar 1 returns at once, without touching grad.
template <class scalar_t, class T>
__global__ void scale_all_kernel(scalar_t* grad, int64_t n, const T* factor) {
  const T s = *factor;
  if (s == T(1)) return;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    grad[i] = static_cast<scalar_t>(static_cast<T>(grad[i]) * s);
  }
}

template <class scalar_t, class T>
__global__ void scale_rows_kernel(scalar_t* grad, int64_t n, int64_t K, const T* factor, int64_t factor_stride) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    grad[i] = static_cast<scalar_t>(static_cast<T>(grad[i]) * factor[(i / K) * factor_stride]);
  }
}

void scale_grad_cuda(at::Tensor& grad, const at::Tensor& grad_output) {
  check_scale_inputs(grad, grad_output);
  const at::cuda::OptionalCUDAGuard guard(grad.device());
  const int64_t n = grad.numel();
  if (n == 0) return;
  const auto acc_dtype = loss_dtype(grad.scalar_type());
  const at::Tensor factor = grad_output.to(acc_dtype);
  constexpr int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + threads - 1) / threads, max_blocks));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad.scalar_type(), "robustkernels_scale_grad_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    if (factor.dim() == 0) {
      scale_all_kernel<scalar_t, T>
          <<<blocks, threads, 0, stream>>>(grad.mutable_data_ptr<scalar_t>(), n, factor.const_data_ptr<T>());
    } else {
      scale_rows_kernel<scalar_t, T><<<blocks, threads, 0, stream>>>(
          grad.mutable_data_ptr<scalar_t>(), n, grad.size(1), factor.const_data_ptr<T>(), factor.stride(0));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace rk

TORCH_LIBRARY_IMPL(robustkernels, CUDA, m) {
  m.impl("loss_forward", &rk::loss_forward_cuda);
  m.impl("soft_loss_forward", &rk::soft_loss_forward_cuda);
  m.impl("scale_grad_", &rk::scale_grad_cuda);
}
