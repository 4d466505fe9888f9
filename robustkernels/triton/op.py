"""torch.library registration of the Triton kernels: ops, fake kernels and autograd.

One op in the ``robustkernels_triton`` namespace, with the native ``loss_forward``'s contract:

``fused_loss(logits, target, eps_rows, eps, terms, params, ignore_index, reduction, compute_grad)
-> (loss, grad)``
    the loss, plus ``dL/dlogits`` (already divided by the row count for ``mean``) in a fresh buffer
    of the logits' dtype when ``compute_grad``; without it the gradient output is an empty 1-D
    tensor and no gradient byte is written. Its autograd formula is the design shared with the
    native backend (:mod:`robustkernels._fused_autograd`); the in-place scaling by ``grad_output``
    is ``rescale_grad_kernel``, which reads ``grad_output`` on the device (no host sync) and moves
    no gradient byte where it is 1.

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
from ..specs import KERNEL_SLOTS, PRIMITIVES
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


def _fused_loss(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    eps: float,
    terms: int,
    params: list[float],
    ignore_index: int,
    reduction: str,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    _check_args(terms, params, reduction)
    num_rows, num_classes = logits.shape
    if logits.stride(1) != 1:
        # Any row stride is read in place; only a non-unit column stride needs a copy.
        logits = logits.contiguous()
    cdtype = compute_dtype(logits.dtype)
    rows = torch.empty(num_rows, dtype=cdtype, device=logits.device)
    grad = torch.empty((num_rows, num_classes) if compute_grad else (0,), dtype=logits.dtype, device=logits.device)
    # Pointers the kernel does not touch (no per-row eps, no gradient, not mean) get the read-only
    # logits, never the written `rows`: wrap_triton's mutation analysis must not see two names for
    # one written buffer.
    unused = logits
    count = None
    inv_count = unused
    if reduction == "mean":
        # On device: no .item(). All rows ignored gives 0 / 0 = NaN, as F.cross_entropy.
        count = (target != ignore_index).sum().to(cdtype)
        if compute_grad:
            inv_count = 1.0 / count
    if num_rows > 0:
        cfg = forward_config(num_rows, num_classes, logits.dtype, max_single_pass_override)
        with _on_device(logits):
            _launcher(kernels.fused_loss_kernel)[(cfg.grid_rows,)](
                logits,
                logits.stride(0),
                target,
                target.stride(0),
                unused if eps_rows is None else eps_rows,
                0 if eps_rows is None else eps_rows.stride(0),
                float(eps),
                rows,
                grad if compute_grad else unused,
                inv_count,
                num_rows,
                num_classes,
                ignore_index,
                **_slot_kwargs(params),
                TERMS=terms,
                EPS_PER_ROW=eps_rows is not None,
                HAS_GRAD=compute_grad,
                HAS_INV_COUNT=compute_grad and reduction == "mean",
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
    def _(logits, target, eps_rows, eps, terms, params, ignore_index, reduction, compute_grad):
        _check_args(terms, params, reduction)
        loss_shape = (logits.shape[0],) if reduction == "none" else ()
        loss = logits.new_empty(loss_shape, dtype=compute_dtype(logits.dtype))
        return loss, logits.new_empty(logits.shape if compute_grad else (0,))

else:
    from torch.library import triton_op

    fused_loss = triton_op(f"{NAMESPACE}::fused_loss", _fused_loss, mutates_args=())


def _recompute_grad(logits: Tensor, target: Tensor, eps_rows: Tensor | None, op_args: tuple) -> Tensor:
    return fused_loss(logits, target, eps_rows, *op_args[:-1], True)[1]


register_autograd(
    FusedOp(
        op=fused_loss,
        recompute=_recompute_grad,
        # Looked up at call time, so that a test can record the launches by patching the module.
        scale_in_place=lambda grad, grad_output: _rescale_in_place(grad, grad_output),
        # (eps, terms, slots, ignore_index, reduction by name); the last argument is compute_grad.
        decode=lambda op_args: OpCall(*op_args[:-1]),
    )
)
