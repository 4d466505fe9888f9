// Argument validation and output allocation shared by the CPU and CUDA implementations of the
// robustkernels ops (host code only). Errors name the offending argument: the ops can be
// called directly through torch.ops.robustkernels, bypassing robust_loss's checks.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

#include "loss_math.h"

namespace rk {

inline void check_logits(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 2, "logits must be 2-D [N, K], got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) >= 2, "logits must have at least 2 classes, got K=", logits.size(1));
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "logits must be float64, float32, bfloat16 or float16, got ", dtype);
}

inline void check_labels(const at::Tensor& logits, const at::Tensor& target) {
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), "target must be 1-D [N] with N=",
              logits.size(0), " (the rows of logits), got shape ", target.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kInt,
              "target must be int64 or int32, got ", target.scalar_type());
  TORCH_CHECK(target.device() == logits.device(), "target is on ", target.device(), " but logits are on ",
              logits.device());
}

inline void check_epsilon_rows(const at::Tensor& logits, const std::optional<at::Tensor>& epsilon_rows) {
  if (!epsilon_rows.has_value()) return;
  const auto& eps = *epsilon_rows;
  TORCH_CHECK(eps.dim() == 1 && eps.size(0) == logits.size(0), "epsilon_rows must be 1-D [N] with N=",
              logits.size(0), ", got shape ", eps.sizes());
  TORCH_CHECK(eps.scalar_type() == at::kFloat || eps.scalar_type() == at::kDouble,
              "epsilon_rows must be float32 or float64, got ", eps.scalar_type());
  TORCH_CHECK(eps.device() == logits.device(), "epsilon_rows is on ", eps.device(), " but logits are on ",
              logits.device());
}

inline void check_terms(int64_t terms, c10::ArrayRef<double> params) {
  TORCH_CHECK(terms > 0 && (terms & ~static_cast<int64_t>(kKnownTerms)) == 0,
              "terms must be a non-zero bit mask of primitives (bits 0..", kNumPrimitives - 1,
              " of robustkernels.specs.PRIMITIVES), got ", terms);
  TORCH_CHECK((terms & kBiTempTerms) == 0 || terms == kBiTempTerms, "terms: ", primitive_name(kBITEMP), " (bit ",
              int(kBITEMP), ") has its own softmax and cannot be combined with other primitives, got mask ", terms);
  TORCH_CHECK(static_cast<int64_t>(params.size()) == kNumSlots, "params must hold the ", int(kNumSlots),
              " slot values of robustkernels.specs.KERNEL_SLOTS, got ", params.size());
  if (terms == kBiTempTerms) {
    const double iters = params[kSlot_bitemp_num_iters];
    TORCH_CHECK(iters >= 1 && iters <= 1000 && iters == static_cast<double>(static_cast<int64_t>(iters)),
                "params: ", slot_name(kSlot_bitemp_num_iters), " must be an integer in [1, 1000], got ", iters);
  }
}

inline void check_reduction(int64_t reduction) {
  TORCH_CHECK(reduction == kNone || reduction == kMean || reduction == kSum,
              "reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

inline void check_forward_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 const std::optional<at::Tensor>& epsilon_rows, int64_t terms,
                                 c10::ArrayRef<double> params, int64_t reduction) {
  check_logits(logits);
  check_labels(logits, target);
  check_epsilon_rows(logits, epsilon_rows);
  check_terms(terms, params);
  check_reduction(reduction);
}

// The loss is float64 for float64 logits and float32 otherwise (all math runs in fp32).
inline at::ScalarType loss_dtype(at::ScalarType logits_dtype) {
  return logits_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The names of the primitives of `terms` outside kSoftTargetTerms, comma-separated.
inline std::string primitives_without_soft_targets(int64_t terms) {
  std::string names;
  for (int bit = 0; bit < kNumPrimitives; ++bit) {
    if ((terms >> bit & 1) != 0 && (kSoftTargetTerms >> bit & 1) == 0) {
      names += names.empty() ? "" : ", ";
      names += primitive_name(bit);
    }
  }
  return names;
}

// soft_loss_forward's arguments; returns whether the call is soft (a probability target or
// label smoothing: every class carries a term), else it is the integer-label loss scaled by w_y.
inline bool check_soft_inputs(const at::Tensor& logits, const at::Tensor& target,
                              const std::optional<at::Tensor>& epsilon_rows, const std::optional<at::Tensor>& weight,
                              int64_t terms, c10::ArrayRef<double> params, double label_smoothing,
                              int64_t reduction) {
  check_logits(logits);
  if (target.is_floating_point()) {
    TORCH_CHECK(target.dim() == 2 && target.sizes() == logits.sizes(),
                "target: a probability target must have the shape of logits ", logits.sizes(), ", got shape ",
                target.sizes());
    TORCH_CHECK(target.device() == logits.device(), "target is on ", target.device(), " but logits are on ",
                logits.device());
  } else {
    TORCH_CHECK(target.dim() == 1, "target must be int64/int32 labels [N] or float probabilities [N, K], got ",
                target.scalar_type(), " of shape ", target.sizes());
    check_labels(logits, target);
  }
  check_epsilon_rows(logits, epsilon_rows);
  check_terms(terms, params);
  check_reduction(reduction);
  if (weight.has_value()) {
    const auto& w = *weight;
    const auto want = loss_dtype(logits.scalar_type());
    TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(1), "weight must be 1-D [K] with K=", logits.size(1),
                " (the classes of logits), got shape ", w.sizes());
    TORCH_CHECK(w.scalar_type() == want, "weight must be ", want, " (the compute dtype of ", logits.scalar_type(),
                " logits), got ", w.scalar_type());
    TORCH_CHECK(w.device() == logits.device(), "weight is on ", w.device(), " but logits are on ", logits.device());
  }
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, "label_smoothing must be in [0, 1], got ",
              label_smoothing);
  const bool soft = target.is_floating_point() || label_smoothing > 0.0;
  TORCH_CHECK(!soft || (terms & ~static_cast<int64_t>(kSoftTargetTerms)) == 0, "terms: ",
              primitives_without_soft_targets(terms),
              " has no one-pass form with a probability target or label smoothing (mask ", terms,
              "); only integer targets with weight are supported for it");
  return soft;
}

inline void check_scale_inputs(const at::Tensor& grad, const at::Tensor& grad_output) {
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous(), "grad must be a contiguous [N, K] tensor, got shape ",
              grad.sizes());
  TORCH_CHECK(grad_output.dim() == 0 || (grad_output.dim() == 1 && grad_output.size(0) == grad.size(0)),
              "grad_output must be a scalar or [N] with N=", grad.size(0), ", got shape ", grad_output.sizes());
  TORCH_CHECK(grad_output.is_floating_point(), "grad_output must be floating point, got ", grad_output.scalar_type());
  TORCH_CHECK(grad_output.device() == grad.device(), "grad_output is on ", grad_output.device(), " but grad is on ",
              grad.device());
}

// Logits are read through their row stride; only a column stride != 1 forces a copy.
inline at::Tensor rows_unit_stride(const at::Tensor& logits) {
  return logits.stride(1) == 1 || logits.size(1) == 1 ? logits : logits.contiguous();
}

}  // namespace rk
