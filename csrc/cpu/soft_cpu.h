// The soft-target rows of the CPU soft_loss_forward op (soft_cpu.cpp); the op itself, with its
// validation and reduction, is in loss_cpu.cpp.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace rk {

// What the soft rows read: target int64/int32 [N] labels (with alpha > 0) or a float [N, K]
// probability target; weight contiguous [K] in the compute type or undefined; eps_rows
// contiguous [N] in the compute type or undefined (then `epsilon`).
struct SoftRowsCall {
  at::Tensor logits, target, weight, eps_rows;
  double epsilon;
  unsigned mask;
  c10::ArrayRef<double> params;
  int64_t ignore_index;
  double alpha;
  double denominator;  // the gradient is divided by it: the mean's denominator, or 1
};

// The per-row losses into rows ([N], compute type) and, when grad is defined, the gradient
// divided by call.denominator into grad ([N, K] contiguous, the logits' dtype).
void soft_rows_cpu(const SoftRowsCall& call, at::Tensor& rows, at::Tensor& grad);

}  // namespace rk
