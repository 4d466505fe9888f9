"""The ``"native"`` backend: fused C++/CUDA kernels of :mod:`robustkernels._C`.

The ops live under ``torch.ops.robustkernels`` (schemas in ``csrc/robustkernels.cpp``); this
module registers their fake kernels and autograd formulas, and implements the backend contract
of :mod:`robustkernels.backends`.

One read, one write. When a gradient is needed, ``loss_forward`` reads the logits once and
writes the per-row loss and ``d loss / d logits`` -- already scaled by ``1 / count`` for
``mean``, the count taken on the device -- into a fresh buffer; ``scale_grad_`` applies
``grad_output`` to it in place (a scalar ``grad_output`` equal to 1 is recognised by the kernel
itself and nothing more is read or written, without a host sync). What the backward does with
the buffer (retain_graph, double backward, tracing) is the design shared with the Triton
backend, :mod:`robustkernels._fused_autograd`.
"""

from __future__ import annotations

import platform

import torch
from torch import Tensor

from ._fused_autograd import FusedOp, OpCall, register_autograd
from ._numbers import to_float
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
    terms: int,
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


def _fake_soft_loss_forward(
    logits: Tensor,
    target: Tensor,
    epsilon_rows: Tensor | None,
    weight: Tensor | None,
    epsilon: float,
    terms: int,
    params: list[float],
    ignore_index: int,
    label_smoothing: float,
    reduction: int,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    return _fake_loss_forward(
        logits, target, epsilon_rows, epsilon, terms, params, ignore_index, reduction, compute_grad
    )


def _fake_scale_grad_(grad: Tensor, grad_output: Tensor) -> None:
    return None


def _recompute_grad(logits: Tensor, target: Tensor, epsilon_rows: Tensor | None, op_args: tuple) -> Tensor:
    epsilon, terms, slots, ignore_index, reduction, _ = op_args
    return torch.ops.robustkernels.loss_forward(
        logits, target, epsilon_rows, epsilon, terms, slots, ignore_index, reduction, True
    )[1]


def _decode(op_args: tuple) -> OpCall:
    epsilon, terms, slots, ignore_index, reduction, _ = op_args
    return OpCall(epsilon, terms, slots, ignore_index, _REDUCTION_NAMES[reduction])


def _recompute_soft_grad(logits: Tensor, target: Tensor, epsilon_rows: Tensor | None, op_args: tuple) -> Tensor:
    weight, epsilon, terms, slots, ignore_index, label_smoothing, reduction, _ = op_args
    return torch.ops.robustkernels.soft_loss_forward(
        logits, target, epsilon_rows, weight, epsilon, terms, slots, ignore_index, label_smoothing, reduction, True
    )[1]


def _decode_soft(op_args: tuple) -> OpCall:
    weight, epsilon, terms, slots, ignore_index, label_smoothing, reduction, _ = op_args
    return OpCall(epsilon, terms, slots, ignore_index, _REDUCTION_NAMES[reduction], weight, label_smoothing)


_REDUCTION_NAMES = {code: name for name, code in REDUCTION_CODES.items()}


if _LOAD_ERROR is None:
    torch.library.register_fake("robustkernels::scale_grad_")(_fake_scale_grad_)
    for _name, _fake, _recompute, _decoder in (
        ("robustkernels::loss_forward", _fake_loss_forward, _recompute_grad, _decode),
        ("robustkernels::soft_loss_forward", _fake_soft_loss_forward, _recompute_soft_grad, _decode_soft),
    ):
        torch.library.register_fake(_name)(_fake)
        register_autograd(
            FusedOp(op=_name, recompute=_recompute, scale_in_place=torch.ops.robustkernels.scale_grad_, decode=_decoder)
        )


def robust_loss(
    logits: Tensor,
    target: Tensor,
    spec: LossSpec,
    params: tuple[float, ...],
    epsilon: float | Tensor,
    reduction: str,
    ignore_index: int,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The backend contract of :mod:`robustkernels.backends` on ``torch.ops.robustkernels``.

    Integer labels without ``weight`` and smoothing call ``loss_forward``; every other call
    (class weights, label smoothing, a probability target ``[N, K]``) ``soft_loss_forward``.
    """
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
    # The primitives present (the only thing that selects kernel code) and every slot's value.
    terms, slots = spec.kernel_call_args(params)
    if weight is None and not target.is_floating_point() and label_smoothing == 0.0:
        loss, _ = torch.ops.robustkernels.loss_forward(
            logits,
            target,
            epsilon_rows,
            scalar_epsilon,
            terms,
            slots,
            ignore_index,
            REDUCTION_CODES[reduction],
            needs_grad,
        )
        return loss
    loss, _ = torch.ops.robustkernels.soft_loss_forward(
        logits,
        target,
        epsilon_rows,
        weight,
        scalar_epsilon,
        terms,
        slots,
        ignore_index,
        to_float(label_smoothing),
        REDUCTION_CODES[reduction],
        needs_grad,
    )
    return loss
