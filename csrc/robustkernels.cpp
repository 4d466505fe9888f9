// Operator schemas of robustkernels::* (one place); the CPU and CUDA kernels register their
// implementations in cpu/ and cuda/, the fake (meta) kernels and autograd live in
// robustkernels/native.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "loss_math.h"

extern "C" {
// `import robustkernels._C` runs the static TORCH_LIBRARY registrars below; the module itself
// exposes no functions (the ops live under torch.ops.robustkernels).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace {
// The generated tables of the C++ side (loss_kinds.h), exposed so the tests can check them
// against specs.PRIMITIVES and specs.KERNEL_SLOTS; "" out of range.
int64_t num_slots_op() { return rk::kNumSlots; }
std::string slot_name_op(int64_t slot) {
  return slot >= 0 && slot < rk::kNumSlots ? rk::slot_name(static_cast<int>(slot)) : "";
}
std::string primitive_name_op(int64_t bit) {
  return bit >= 0 && bit < rk::kNumPrimitives ? rk::primitive_name(static_cast<int>(bit)) : "";
}
}  // namespace

TORCH_LIBRARY(robustkernels, m) {
  // The fake kernels and autograd formulas are registered by this Python module.
  m.set_python_module("robustkernels.native");
  // Per-row losses (reduction 0 = none) or their mean (1, over rows whose label is not
  // ignore_index) or sum (2), and, when compute_grad, d loss / d logits already scaled for the
  // reduction, in a fresh contiguous buffer of the logits' dtype ([0] otherwise). The loss is
  // the weighted sum of the primitives whose bits are set in `terms`; `params` holds the values
  // of every slot of robustkernels.specs.KERNEL_SLOTS (weights and parameters, runtime floats).
  // Only the passes over a row that `terms` needs select code.
  m.def(
      "loss_forward(Tensor logits, Tensor target, Tensor? epsilon_rows, float epsilon, int terms, "
      "float[] params, int ignore_index, int reduction, bool compute_grad) -> (Tensor loss, Tensor grad)");
  // loss_forward with the drop-in arguments of F.cross_entropy (docs/drop-in.md): target int64 or
  // int32 labels [N] or a float probability target [N, K]; weight [K] class weights in the compute
  // dtype (float64 for float64 logits, else float32); label_smoothing alpha in [0, 1]. The row
  // loss is sum_k u_k L(z + eps e_k, k) with the class coefficients u of the target; mean divides
  // by sum_i w_{y_i} over non-ignored rows for labels (their count without weight), by N for a
  // probability target. A probability target or alpha > 0 admits only the primitives of
  // kSoftTargetTerms; labels with weight and alpha = 0 admit every mask (rows scaled by w_y).
  m.def(
      "soft_loss_forward(Tensor logits, Tensor target, Tensor? epsilon_rows, Tensor? weight, float epsilon, "
      "int terms, float[] params, int ignore_index, float label_smoothing, int reduction, bool compute_grad) "
      "-> (Tensor loss, Tensor grad)");
  // grad *= grad_output (a scalar, or one factor per row). A scalar equal to 1 -- the common
  // loss.backward() -- is detected on the device and leaves grad untouched, without a host sync.
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_output) -> ()");
  m.def("num_slots() -> int", &num_slots_op);
  m.def("slot_name(int slot) -> str", &slot_name_op);
  m.def("primitive_name(int bit) -> str", &primitive_name_op);
}
