"""CI gate: the compiled extension imports, and its CUDA kernels were compiled in whenever a
CUDA toolkit is on this machine (CI has nvcc but no GPU: compiling is all it can check)."""

import shutil
import sys

import torch

import robustkernels  # noqa: F401  (loads robustkernels._C through the native backend)

try:
    import robustkernels._C  # noqa: F401
except ImportError as err:
    sys.exit(f"robustkernels._C did not build or import: {err}")

ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("robustkernels::"))
if not ops:
    sys.exit("robustkernels._C registered no operators")
has = {key: [op for op in ops if torch._C._dispatch_has_kernel_for_dispatch_key(op, key)] for key in ("CPU", "CUDA")}
print("operators:", ", ".join(ops))
print("with CPU kernels:", len(has["CPU"]), "with CUDA kernels:", len(has["CUDA"]))
if not has["CPU"]:
    sys.exit("no CPU kernels registered")
if shutil.which("nvcc") and torch.version.cuda and not has["CUDA"]:
    sys.exit("nvcc is available but no CUDA kernels were compiled into robustkernels._C")
