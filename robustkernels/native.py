"""The ``"native"`` backend: fused C++/CUDA kernels of :mod:`robustkernels._C`.

The ops live under ``torch.ops.robustkernels`` (schemas in ``csrc/robustkernels.cpp``); this
module registers their fake kernels and autograd formulas, and implements the backend contract
of :mod:`robustkernels.backends`.

One read, one write. When a gradient is needed, ``loss_forward`` reads the logits once and
writes the per-row loss and ``d loss / d logits`` -- already scaled by ``1 / count`` for
``mean``, the count taken on the device -- into a fresh buffer. The backward then only applies
``grad_output`` to that buffer in place (``scale_grad_``): a scalar ``grad_output`` equal to 1,
the usual ``loss.backward()``, is recognised by the kernel itself and nothing more is read or
written, without a host sync. The buffer is handed to autograd as the gradient, so autograd may
adopt it as ``logits.grad`` and later modify it in place; a second backward through the same
graph (``retain_graph=True``) therefore never reuses it but recomputes the gradient from the
saved logits. A backward with ``create_graph=True`` (double backward) goes through the
pure-PyTorch reference on the saved inputs, so second derivatives are exact.
"""

from __future__ import annotations

import platform

import torch
from torch import Tensor

from .reference import compute_dtype
from .specs import LossSpec

__all__ = ["unavailable_reason", "robust_loss", "REDUCTION_CODES"]

#: ``reduction`` argument -> integer code of the ``loss_forward`` op.
REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}


def _load_extension() -> str | None:
    """Import ``robustkernels._C``; return why it cannot be used, or ``None``."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in ("AVX2", "AVX512"):
            return f"robustkernels._C is compiled for AVX2 and this CPU only supports {capability}"
    try:
        from . import _C  # noqa: F401  (registers torch.ops.robustkernels.*)
    except ImportError as err:
        return (
            f"robustkernels._C is not built ({err}); build it with "
            "`pip install --no-build-isolation -e .` (see setup.py)"
        )
    return None


_LOAD_ERROR = _load_extension()


def unavailable_reason(device: torch.device) -> str | None:
    """``None`` when the native kernels can run on ``device``, else why not."""
    if _LOAD_ERROR is not None:
        return _LOAD_ERROR
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch._C._dispatch_has_kernel_for_dispatch_key("robustkernels::loss_forward", "CUDA"):
            return "robustkernels._C was built without CUDA kernels (rebuild with ROBUSTKERNELS_CUDA=1)"
        if not torch.cuda.is_available():
            return "CUDA is not available"
        return None
    return f"no native kernel for device type {device.type!r}"


def _fake_loss_forward(
    logits: Tensor,
    target: Tensor,
    epsilon_rows: Tensor | None,
    epsilon: float,
    kind: int,
    params: list[float],
    ignore_index: int,
    reduction: int,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    n, k = logits.shape
    loss_shape = (n,) if reduction == REDUCTION_CODES["none"] else ()
    loss = logits.new_empty(loss_shape, dtype=compute_dtype(logits.dtype))
    grad = logits.new_empty((n, k) if compute_grad else (0,))  # new_empty is contiguous
    return loss, grad


def _fake_scale_grad_(grad: Tensor, grad_output: Tensor) -> None:
    return None


def _setup_context(ctx, inputs, output) -> None:
    logits, target, epsilon_rows, epsilon, kind, params, ignore_index, reduction, compute_grad = inputs
    _, grad = output
    # The gradient buffer is an implementation detail, not a differentiable result; marking it
    # also stops autograd from materialising a zero [N, K] gradient for it in backward.
    ctx.mark_non_differentiable(grad)
    # Without this autograd would still pass backward a zero [N, K] tensor for that output
    # (measured: 14 ms per call at N=8192, K=1000 on CPU).
    ctx.set_materialize_grads(False)
    ctx.grad_buffer = grad if compute_grad else None
    ctx.save_for_backward(logits, target, epsilon_rows)
    ctx.op_args = (epsilon, kind, params, ignore_index, reduction)


def _differentiable_backward(ctx, grad_loss: Tensor):
    """``create_graph=True`` (gradient penalties, Hessian-vector products): the gradient must be
    a differentiable function of the logits, which the kernel's buffer is not. It is recomputed
    through the pure-PyTorch reference on the saved inputs, whose autograd graph carries the
    second derivatives. Only this rare path pays for it; ``bitemp``'s reference gradient is
    once-differentiable and says so."""
    from . import _torch_backend
    from .specs import LOSSES

    logits, target, epsilon_rows = ctx.saved_tensors
    epsilon, kind, params, ignore_index, reduction = ctx.op_args
    ctx.grad_buffer = None
    spec = next(s for s in LOSSES.values() if s.kind == kind)
    reduction_name = next(name for name, code in REDUCTION_CODES.items() if code == reduction)
    loss = _torch_backend.robust_loss(
        logits,
        target,
        spec,
        tuple(params),
        epsilon if epsilon_rows is None else epsilon_rows,
        reduction_name,
        ignore_index,
    )
    wanted = [(i, t) for i, t in ((0, logits), (2, epsilon_rows)) if ctx.needs_input_grad[i]]
    grads = torch.autograd.grad(loss, [t for _, t in wanted], grad_loss, create_graph=True, allow_unused=True)
    out: list[Tensor | None] = [None] * 9
    for (i, _), g in zip(wanted, grads):
        out[i] = g
    return tuple(out)


def _backward(ctx, grad_loss: Tensor, _grad_of_grad_buffer: Tensor | None):
    if grad_loss is None:  # not reachable from the loss (grads are not materialised)
        return None, None, None, None, None, None, None, None, None
    if torch.is_grad_enabled():
        return _differentiable_backward(ctx, grad_loss)
    logits, target, epsilon_rows = ctx.saved_tensors
    epsilon, kind, params, ignore_index, reduction = ctx.op_args
    grad = ctx.grad_buffer
    ctx.grad_buffer = None  # handed to autograd below: never reused by a later backward
    if grad is None:
        _, grad = torch.ops.robustkernels.loss_forward(
            logits, target, epsilon_rows, epsilon, kind, params, ignore_index, reduction, True
        )
    if _in_functional_trace(grad):
        # Under torch.compile / AOT tracing the graph must stay functional: the product is a
        # fresh tensor that Inductor fuses into its consumer.
        grad = grad * (grad_loss if grad_loss.dim() == 0 else grad_loss.unsqueeze(1)).to(grad.dtype)
    else:
        torch.ops.robustkernels.scale_grad_(grad, grad_loss)
    grad_epsilon = None
    if ctx.needs_input_grad[2]:
        # eps adds to the label logit, so d loss / d eps_i = d loss / d z_{i, y_i}; ignored and
        # invalid rows get 0, as in the torch backend (their eps is masked out there).
        labels = target.long()
        valid = (labels >= 0) & (labels < logits.shape[1])
        picked = grad.gather(1, labels.where(valid, 0).unsqueeze(1)).squeeze(1)
        grad_epsilon = torch.where(valid, picked, 0).to(epsilon_rows.dtype)
    return grad, None, grad_epsilon, None, None, None, None, None, None


def _in_functional_trace(t: Tensor) -> bool:
    """Whether ``t`` belongs to a graph being traced (fake/functional tensors), where an
    in-place op on a saved tensor must be avoided."""
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, (FakeTensor, FunctionalTensor))


if _LOAD_ERROR is None:
    torch.library.register_fake("robustkernels::loss_forward")(_fake_loss_forward)
    torch.library.register_fake("robustkernels::scale_grad_")(_fake_scale_grad_)
    torch.library.register_autograd("robustkernels::loss_forward", _backward, setup_context=_setup_context)


def robust_loss(
    logits: Tensor,
    target: Tensor,
    spec: LossSpec,
    params: tuple[float, ...],
    epsilon: float | Tensor,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    """The backend contract of :mod:`robustkernels.backends` on ``torch.ops.robustkernels``."""
    epsilon_rows = epsilon if isinstance(epsilon, Tensor) else None
    if epsilon_rows is not None and epsilon_rows.dtype in (torch.float16, torch.bfloat16):
        # The kernels read biases as float32 or float64; the cast is differentiable, so the
        # bias's gradient still comes back in its own dtype.
        epsilon_rows = epsilon_rows.float()
    # No float(): under torch.compile(dynamic=True) it would turn a traced bias or
    # hyper-parameter into a constant and recompile for every value.
    scalar_epsilon = 0.0 if epsilon_rows is not None else epsilon
    needs_grad = torch.is_grad_enabled() and (
        logits.requires_grad or (epsilon_rows is not None and epsilon_rows.requires_grad)
    )
    loss, _ = torch.ops.robustkernels.loss_forward(
        logits,
        target,
        epsilon_rows,
        scalar_epsilon,
        spec.kind,
        [p if isinstance(p, float) else float(p) for p in params],
        ignore_index,
        REDUCTION_CODES[reduction],
        needs_grad,
    )
    return loss
