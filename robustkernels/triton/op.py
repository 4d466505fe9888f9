"""torch.library registration of the Triton kernels: ops, fake kernels and autograd.

One op in the ``robustkernels_triton`` namespace:

``fused_loss(logits, target, eps_rows, weight, eps, terms, params, ignore_index, label_smoothing,
reduction, compute_grad) -> (loss, grad)``
    the loss, plus ``dL/dlogits`` (already divided for ``mean``) in a fresh buffer of the logits'
    dtype when ``compute_grad``; without it the gradient output is an empty 1-D tensor and no
    gradient byte is written. ``target`` is int64 / int32 labels or a float ``[N, K]`` probability
    target (any strides), ``weight`` ``[K]`` or None, ``label_smoothing`` in ``[0, 1]``
    (``docs/drop-in.md``). Integer labels run the integer-label rows, scaled by ``w_y`` with a
    weight (every loss); label smoothing and probability targets run the expected loss over the
    class coefficients ``u_k``, for the primitives with a one-pass form
    (:data:`~robustkernels.specs.SOFT_TARGET_TERMS`; any other bit is a ``ValueError``). ``mean``
    divides by ``sum_i w_{y_i}`` over the non-ignored rows for labels (their count without
    weight), by ``N`` for probability targets.

    Its autograd formula is the design shared with the native backend
    (:mod:`robustkernels._fused_autograd`); the in-place scaling by ``grad_output`` is
    ``rescale_grad_kernel``, which reads ``grad_output`` on the device (no host sync) and moves no
    gradient byte where it is 1. A per-row bias is not differentiated with soft targets (the
    backward raises, the API refuses first).

``terms`` is the bit mask of the primitives present and ``params`` the values of
:data:`~robustkernels.specs.KERNEL_SLOTS`, as :meth:`~robustkernels.specs.LossSpec.kernel_args`
returns them. The kernel specialises on the mask only; it receives every slot by its name as a
runtime scalar, so no second table of positions or defaults exists here, and a combination built
by :func:`~robustkernels.specs.combine` runs without a new kernel.

Compiled kernels are registered with ``torch.library.triton_op`` + ``wrap_triton`` (the op body is
then also the fake kernel, and Inductor sees the Triton call). Under ``TRITON_INTERPRET=1`` the
kernels are interpreter objects that ``wrap_triton`` cannot trace, so the ops are plain
``custom_op`` with explicit fakes; ``torch.compile`` then treats them as opaque (no graph break
either way).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import Tensor

from .._fused_autograd import FusedOp, OpCall, register_autograd
from ..reference import compute_dtype
from ..specs import KERNEL_SLOTS, PRIMITIVES, SOFT_TARGET_TERMS
from . import kernels
from .launch import forward_config, rescale_config

__all__ = ["INTERPRETED", "fused_loss", "REDUCTIONS"]

NAMESPACE = "robustkernels_triton"
REDUCTIONS = ("none", "mean", "sum")

#: True when the kernels were created under ``TRITON_INTERPRET=1`` (they then run on CPU tensors).
INTERPRETED = type(kernels.fused_loss_kernel).__name__ == "InterpretedFunction"

#: Slots the kernel takes as integers (loop counts); every other slot is a float.
_INT_SLOTS = frozenset(f"{prim.name}_{p.name}" for prim in PRIMITIVES.values() for p in prim.params if p.integer)
_ALL_TERMS = (1 << len(PRIMITIVES)) - 1
_BITEMP = 1 << PRIMITIVES["bitemp"].bit


_KERNEL_ARGS = list(inspect.signature(kernels.fused_loss_kernel.fn).parameters)
_FIRST_SLOT = _KERNEL_ARGS.index(KERNEL_SLOTS[0])
assert tuple(_KERNEL_ARGS[_FIRST_SLOT : _FIRST_SLOT + len(KERNEL_SLOTS)]) == KERNEL_SLOTS, (
    "fused_loss_kernel must take specs.KERNEL_SLOTS by name, in order"
)

#: Test hook: overrides the single-pass limit of the launch heuristic (None: the heuristic's own).
max_single_pass_override: int | None = None


def _check_terms(terms: int, params: list[float]) -> None:
    """Raise ``ValueError`` naming the argument for a mask or a slot list the kernel cannot run."""
    if len(params) != len(KERNEL_SLOTS):
        raise ValueError(
            f"params must hold the {len(KERNEL_SLOTS)} values of robustkernels.specs.KERNEL_SLOTS, got {len(params)}"
        )
    if terms <= 0 or terms & ~_ALL_TERMS:
        raise ValueError(
            f"terms={terms:#x} must be a non-empty mask of the primitive bits 0..{len(PRIMITIVES) - 1} "
            "(robustkernels.specs.term_mask)"
        )
    if terms & _BITEMP and terms != _BITEMP:
        raise ValueError(f"terms={terms:#x}: bitemp has its own softmax and cannot be combined with other terms")


def _check_args(terms: int, params: list[float], reduction: str) -> None:
    _check_terms(terms, params)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _slot_kwargs(params: list[float]) -> dict[str, float | int]:
    """The kernel's slot arguments by name. Compiled Triton types a Python float as fp32 and an int as
    i32: each slot keeps one type whatever its value (a weight of 0 or 1 must not recompile)."""
    return {name: int(v) if name in _INT_SLOTS else float(v) for name, v in zip(KERNEL_SLOTS, params)}


def _launcher(kernel):
    if INTERPRETED:
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def _on_device(t: Tensor):
    # Triton launches on the *current* CUDA device, not on the tensor's: make them the same.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


# ---- the drop-in arguments: class weights, label smoothing, probability targets ------------------


def _check_call(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    weight: Tensor | None,
    terms: int,
    params: list[float],
    label_smoothing: float,
    reduction: str,
) -> None:
    """Raise ``ValueError`` naming the argument the kernel cannot run."""
    _check_args(terms, params, reduction)
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, K], got shape {tuple(logits.shape)}")
    num_rows, num_classes = logits.shape
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"target: a probability target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
    elif target.dtype in (torch.int64, torch.int32):
        if target.shape != (num_rows,):
            raise ValueError(f"target: labels must have shape ({num_rows},), got {tuple(target.shape)}")
    else:
        raise ValueError(f"target must be int64 / int32 labels or a floating probability target, got {target.dtype}")
    if weight is not None and (weight.shape != (num_classes,) or not weight.is_floating_point()):
        raise ValueError(
            f"weight must be a floating [K] tensor (K = {num_classes}), got {weight.dtype} {tuple(weight.shape)}"
        )
    if eps_rows is not None and eps_rows.shape != (num_rows,):
        raise ValueError(f"eps_rows must have shape ({num_rows},), got {tuple(eps_rows.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    no_one_pass = terms & ~SOFT_TARGET_TERMS
    if no_one_pass and (target.is_floating_point() or label_smoothing != 0.0):
        names = ", ".join(p.name for p in PRIMITIVES.values() if no_one_pass >> p.bit & 1)
        raise ValueError(
            f"terms={terms:#x}: {names} has no one-pass expected loss over a target distribution "
            "(probability targets, label smoothing); integer labels with weight= alone work for every loss"
        )


def _empty_outputs(logits: Tensor, reduction: str, compute_grad: bool) -> tuple[Tensor, Tensor]:
    loss_shape = (logits.shape[0],) if reduction == "none" else ()
    loss = logits.new_empty(loss_shape, dtype=compute_dtype(logits.dtype))
    return loss, logits.new_empty(logits.shape if compute_grad else (0,))


def _row_weights(target: Tensor, weight: Tensor, ignore_index: int) -> Tensor:
    """``w_y`` per row, 0 on ignored rows and on invalid labels (whose rows are NaN anyway); on the
    device, the label used as an index only where it is in range."""
    num_classes = weight.shape[0]
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    picked = weight[target.long().clamp(0, max(num_classes - 1, 0))]
    return torch.where(valid, picked, 0.0)


def _fused_loss(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    weight: Tensor | None,
    eps: float,
    terms: int,
    params: list[float],
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    _check_call(logits, target, eps_rows, weight, terms, params, label_smoothing, reduction)
    float_target = target.is_floating_point()
    label_only = not float_target and label_smoothing == 0.0
    num_rows, num_classes = logits.shape
    if logits.stride(1) != 1:
        # Any row stride is read in place; only a non-unit column stride needs a copy.
        logits = logits.contiguous()
    cdtype = compute_dtype(logits.dtype)
    if weight is not None:
        weight = weight.to(cdtype).contiguous()  # as the API hands it over: no copy
    rows = torch.empty(num_rows, dtype=cdtype, device=logits.device)
    grad = torch.empty((num_rows, num_classes) if compute_grad else (0,), dtype=logits.dtype, device=logits.device)
    # Pointers the kernel does not touch (no per-row eps, no gradient, not mean) get the read-only
    # logits, never the written `rows`: wrap_triton's mutation analysis must not see two names for
    # one written buffer.
    unused = logits
    row_weights = None
    if not float_target and weight is not None and (label_only or reduction == "mean"):
        row_weights = _row_weights(target, weight, ignore_index)
    # mean: integer labels divide by sum_i w_{y_i} over the non-ignored rows (their count without
    # weight), on the device; probability targets by N.
    count = None
    inv_count = unused
    grad_scale = 1.0
    if reduction == "mean":
        if float_target:
            count = num_rows
            grad_scale = 1.0 / max(num_rows, 1)
        else:
            count = row_weights.sum() if row_weights is not None else (target != ignore_index).sum().to(cdtype)
            if compute_grad:
                inv_count = 1.0 / count
    if num_rows > 0:
        cfg = forward_config(num_rows, num_classes, logits.dtype, max_single_pass_override, soft=not label_only)
        with _on_device(logits):
            _launcher(kernels.fused_loss_kernel)[(cfg.grid_rows,)](
                logits,
                logits.stride(0),
                target,
                target.stride(0),
                target.stride(1) if float_target else 0,
                unused if weight is None else weight,
                row_weights if label_only and row_weights is not None else unused,
                unused if eps_rows is None else eps_rows,
                0 if eps_rows is None else eps_rows.stride(0),
                float(eps),
                rows,
                grad if compute_grad else unused,
                inv_count,
                grad_scale,
                num_rows,
                num_classes,
                ignore_index,
                # u_k = w_k ((1 - alpha) t_k + alpha / K), both factors formed here in double.
                float(1.0 - label_smoothing),
                float(label_smoothing / max(num_classes, 1)),
                **_slot_kwargs(params),
                TERMS=terms,
                LABEL_ONLY=label_only,
                FLOAT_TARGET=float_target,
                HAS_WEIGHT=weight is not None,
                EPS_PER_ROW=eps_rows is not None,
                HAS_GRAD=compute_grad,
                HAS_INV_COUNT=compute_grad and reduction == "mean" and not float_target,
                FP64=cdtype == torch.float64,
                ROWS=cfg.rows,
                BLOCK_K=cfg.block_k,
                SINGLE_PASS=cfg.single_pass,
                num_warps=cfg.num_warps,
            )
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / count
    return loss, grad


def _rescale_in_place(grad: Tensor, grad_output: Tensor) -> None:
    """``grad *= grad_output`` where ``grad_output != 1`` (a scalar, or one factor per row)."""
    num_rows, num_classes = grad.shape
    if num_rows == 0:
        return
    per_row = grad_output.dim() == 1
    cfg = rescale_config(num_rows, num_classes)
    with _on_device(grad):
        # A direct launch, not a mutating op: the buffer is private to the autograd formula,
        # so no functionalization or version-counter bookkeeping is owed.
        kernels.rescale_grad_kernel[(cfg.grid_rows, cfg.grid_cols)](
            grad,
            grad_output,
            grad_output.stride(0) if per_row else 0,
            num_rows,
            num_classes,
            PER_ROW=per_row,
            FP64=grad.dtype == torch.float64,
            ROWS=cfg.rows,
            BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps,
        )


# ---- registration --------------------------------------------------------------------------------

if INTERPRETED:
    fused_loss = torch.library.custom_op(f"{NAMESPACE}::fused_loss", _fused_loss, mutates_args=())

    @fused_loss.register_fake
    def _(logits, target, eps_rows, weight, eps, terms, params, ignore_index, label_smoothing, reduction, compute_grad):
        _check_call(logits, target, eps_rows, weight, terms, params, label_smoothing, reduction)
        return _empty_outputs(logits, reduction, compute_grad)

else:
    from torch.library import triton_op

    fused_loss = triton_op(f"{NAMESPACE}::fused_loss", _fused_loss, mutates_args=())


def _recompute_grad(logits: Tensor, target: Tensor, eps_rows: Tensor | None, op_args: tuple) -> Tensor:
    return fused_loss(logits, target, eps_rows, *op_args[:-1], True)[1]


def _decode(op_args: tuple) -> OpCall:
    weight, eps, terms, params, ignore_index, label_smoothing, reduction, _ = op_args
    return OpCall(eps, terms, params, ignore_index, reduction, weight, label_smoothing)


register_autograd(
    FusedOp(
        op=fused_loss,
        recompute=_recompute_grad,
        # Looked up at call time, so that a test can record the launches by patching the module.
        scale_in_place=lambda grad, grad_output: _rescale_in_place(grad, grad_output),
        decode=_decode,
    )
)
