// Operator schemas of robustkernels::* (implementations register per backend in cpu/ and cuda/).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import robustkernels._C` runs the static TORCH_LIBRARY registrars below; the module itself
// exposes no functions (the ops live under torch.ops.robustkernels).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(robustkernels, m) {
  m.def("probe(Tensor x) -> Tensor");
}
