"""torch.library registration of the Triton kernels: ops, fake kernels and autograd.

Two ops in the ``robustkernels_triton`` namespace:

``fused_loss(logits, target, eps_rows, eps, kind, params, ignore_index, reduction) -> loss``
    forward only: no gradient buffer is allocated or written.
``fused_loss_with_grad(...same...) -> (loss, grad)``
    the loss plus ``dL/dlogits`` (already divided by the row count for ``mean``) in a fresh buffer
    of the logits' dtype. Its autograd formula is the design shared with the native backend
    (:mod:`robustkernels._fused_autograd`); the in-place scaling by ``grad_output`` is
    ``rescale_grad_kernel``, which reads ``grad_output`` on the device (no host sync) and moves no
    gradient byte where it is 1.

Compiled kernels are registered with ``torch.library.triton_op`` + ``wrap_triton`` (the op body is
then also the fake kernel, and Inductor sees the Triton call). Under ``TRITON_INTERPRET=1`` the
kernels are interpreter objects that ``wrap_triton`` cannot trace, so the ops are plain
``custom_op`` with explicit fakes; ``torch.compile`` then treats them as opaque (no graph break
either way).

``params`` are the loss's hyper-parameters in spec order (:meth:`LossSpec.resolve`); the kernel
receives them by name, so no second table of positions or defaults exists here.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .._fused_autograd import FusedOp, register_autograd
from ..reference import compute_dtype
from ..specs import LOSSES, LossSpec
from . import kernels
from ._row_math import FOCAL_SUMS_KINDS, LOGP_SUM_KINDS
from .launch import forward_config, rescale_config

__all__ = ["INTERPRETED", "fused_loss", "fused_loss_with_grad", "REDUCTIONS"]

NAMESPACE = "robustkernels_triton"
REDUCTIONS = ("none", "mean", "sum")

#: True when the kernels were created under ``TRITON_INTERPRET=1`` (they then run on CPU tensors).
INTERPRETED = type(kernels.fused_loss_kernel).__name__ == "InterpretedFunction"

#: Kernel argument <- spec parameter name. Every parameter of every spec must appear here (checked
#: below), so a new loss parameter cannot be silently dropped on its way to the kernel.
_KERNEL_ARGS = {
    "scale": "scale",
    "q": "q",
    "a": "a",
    "gamma": "gamma",
    "A": "rce_a",
    "alpha": "alpha",
    "beta": "beta",
    "t1": "t1",
    "t2": "t2",
}
_INT_KERNEL_ARGS = {"num_iters": "num_iters"}
_SPEC_BY_KIND: dict[int, LossSpec] = {spec.kind: spec for spec in LOSSES.values()}

_unknown = {p.name for s in LOSSES.values() for p in s.params} - set(_KERNEL_ARGS) - set(_INT_KERNEL_ARGS)
assert not _unknown, f"parameters {_unknown} have no kernel argument in robustkernels.triton.op"

#: Test hook: overrides the single-pass limit of the launch heuristic (None: the heuristic's own).
max_single_pass_override: int | None = None


def _kernel_params(kind: int, params: list[float]) -> dict[str, float | int]:
    named = _SPEC_BY_KIND[kind].as_dict(tuple(params))
    out: dict[str, float | int] = {arg: 0.0 for arg in _KERNEL_ARGS.values()}
    out.update({arg: 1 for arg in _INT_KERNEL_ARGS.values()})
    for name, value in named.items():
        if name in _INT_KERNEL_ARGS:
            out[_INT_KERNEL_ARGS[name]] = int(value)
        else:
            out[_KERNEL_ARGS[name]] = float(value)
    # The differences the AUL and bi-tempered terms need where they vanish (a -> 1, t1 -> 2),
    # formed here in double: compiled Triton receives fp32 scalars, and a = 1 + 1e-7 is
    # 1 + 1.19e-7 in fp32, so a - 1 formed in the kernel would be 19 % too large.
    out["a_minus_1"] = float(named["a"]) - 1.0 if "a" in named else 0.0
    out["two_minus_t1"] = 2.0 - float(named["t1"]) if "t1" in named else 0.0
    return out


def _launcher(kernel):
    if INTERPRETED:
        return kernel
    from torch.library import wrap_triton

    return wrap_triton(kernel)


def _on_device(t: Tensor):
    # Triton launches on the *current* CUDA device, not on the tensor's: make them the same.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _forward(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    eps: float,
    kind: int,
    params: list[float],
    ignore_index: int,
    reduction: str,
    with_grad: bool,
) -> tuple[Tensor, Tensor]:
    num_rows, num_classes = logits.shape
    if logits.stride(1) != 1:
        # Any row stride is read in place; only a non-unit column stride needs a copy.
        logits = logits.contiguous()
    cdtype = compute_dtype(logits.dtype)
    rows = torch.empty(num_rows, dtype=cdtype, device=logits.device)
    grad = torch.empty((num_rows, num_classes) if with_grad else (0,), dtype=logits.dtype, device=logits.device)
    # Pointers the kernel does not touch (no per-row eps, no gradient, not mean) get the read-only
    # logits, never the written `rows`: wrap_triton's mutation analysis must not see two names for
    # one written buffer.
    unused = logits
    count = None
    inv_count = unused
    if reduction == "mean":
        # On device: no .item(). All rows ignored gives 0 / 0 = NaN, as F.cross_entropy.
        count = (target != ignore_index).sum().to(cdtype)
        if with_grad:
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
                grad if with_grad else unused,
                inv_count,
                num_rows,
                num_classes,
                ignore_index,
                **_kernel_params(kind, params),
                KIND=kind,
                LOGP_SUM=kind in LOGP_SUM_KINDS,
                FOCAL_SUMS=kind in FOCAL_SUMS_KINDS,
                EPS_PER_ROW=eps_rows is not None,
                HAS_GRAD=with_grad,
                HAS_INV_COUNT=with_grad and reduction == "mean",
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


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _fused_loss(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    eps: float,
    kind: int,
    params: list[float],
    ignore_index: int,
    reduction: str,
) -> Tensor:
    _check_reduction(reduction)
    return _forward(logits, target, eps_rows, eps, kind, params, ignore_index, reduction, with_grad=False)[0]


def _fused_loss_with_grad(
    logits: Tensor,
    target: Tensor,
    eps_rows: Tensor | None,
    eps: float,
    kind: int,
    params: list[float],
    ignore_index: int,
    reduction: str,
) -> tuple[Tensor, Tensor]:
    _check_reduction(reduction)
    return _forward(logits, target, eps_rows, eps, kind, params, ignore_index, reduction, with_grad=True)


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
    fused_loss_with_grad = torch.library.custom_op(
        f"{NAMESPACE}::fused_loss_with_grad", _fused_loss_with_grad, mutates_args=()
    )

    def _loss_shape(logits: Tensor, reduction: str) -> tuple[int, ...]:
        return (logits.shape[0],) if reduction == "none" else ()

    @fused_loss.register_fake
    def _(logits, target, eps_rows, eps, kind, params, ignore_index, reduction):
        return logits.new_empty(_loss_shape(logits, reduction), dtype=compute_dtype(logits.dtype))

    @fused_loss_with_grad.register_fake
    def _(logits, target, eps_rows, eps, kind, params, ignore_index, reduction):
        shape = _loss_shape(logits, reduction)
        cdtype = compute_dtype(logits.dtype)
        return logits.new_empty(shape, dtype=cdtype), logits.new_empty(logits.shape)

else:
    from torch.library import triton_op

    fused_loss = triton_op(f"{NAMESPACE}::fused_loss", _fused_loss, mutates_args=())
    fused_loss_with_grad = triton_op(f"{NAMESPACE}::fused_loss_with_grad", _fused_loss_with_grad, mutates_args=())


def _recompute_grad(logits: Tensor, target: Tensor, eps_rows: Tensor | None, op_args: tuple) -> Tensor:
    return fused_loss_with_grad(logits, target, eps_rows, *op_args)[1]


register_autograd(
    FusedOp(
        op=fused_loss_with_grad,
        recompute=_recompute_grad,
        # Looked up at call time, so that a test can record the launches by patching the module.
        scale_in_place=lambda grad, grad_output: _rescale_in_place(grad, grad_output),
        decode=tuple,  # (eps, kind, params, ignore_index, reduction), the reduction by name
    )
)
