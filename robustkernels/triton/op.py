"""torch.library registration of the Triton kernels: ops, fake kernels and autograd.

Two ops in the ``robustkernels_triton`` namespace:

``fused_loss(logits, target, eps_rows, eps, kind, params, ignore_index, reduction) -> loss``
    forward only: no gradient buffer is allocated or written.
``fused_loss_with_grad(...same...) -> (loss, grad)``
    the loss plus ``dL/dlogits`` (already divided by the row count for ``mean``) in a fresh buffer
    of the logits' dtype. Its autograd formula (``_backward``) turns that buffer into the gradient:

    * first backward of the graph: ``rescale_grad_kernel`` multiplies the buffer in place by
      ``grad_output`` where that is not 1 (read on the device: no host sync; for ``grad_output == 1``
      no gradient byte moves) and returns the buffer itself. The buffer is saved with
      ``save_for_backward`` so that autograd releases it right after the backward and
      AccumulateGrad can adopt it as ``.grad`` without a copy. The launch is direct (not a
      mutating op) so the saved tensor's version counter does not move and a retained graph can
      be unpacked again;
    * later backward calls (``retain_graph=True``): the buffer holds ``g_first * dL/dz``; the result
      is the fresh tensor ``buffer * g_new / g_first`` (the first ``grad_output`` is kept on the
      device). Out of place, so a gradient returned earlier is never modified behind the caller's
      back. After ``g_first = 0`` (or inf / NaN) the buffer has lost ``dL/dz``: the result is NaN
      wherever ``g_new != g_first``, a loud failure instead of a silently wrong gradient;
    * under tracing (torch.compile / AOTAutograd / opcheck, where the tensors are functional or fake
      wrappers) the backward is always the functional ``buffer * grad_output``: correct under every
      replay of the compiled graph, at one more read + write.

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
        # A direct launch, not a mutating op: see the module docstring (version counter).
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


def _rescaled_copy(grad: Tensor, new: Tensor, old: Tensor | None) -> Tensor:
    """``grad * new / old`` out of place (``old = None``: the buffer holds the unscaled gradient)."""
    cdtype = compute_dtype(grad.dtype)
    factor = new.to(cdtype)
    if old is not None:
        old = old.to(cdtype)
        recoverable = (old != 0) & old.isfinite()
        ratio = torch.where(recoverable, factor / torch.where(recoverable, old, 1.0), float("nan"))
        factor = torch.where(factor == old, 1.0, ratio)
    if factor.dim() == 1:
        factor = factor.unsqueeze(1)
    return (grad.to(cdtype) * factor).to(grad.dtype)


def _is_traced(t: Tensor) -> bool:
    # Functional / fake / proxy wrappers (torch.compile, AOTAutograd, opcheck) are Tensor subclasses.
    return type(t) is not torch.Tensor


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


def _setup_context(ctx, inputs, output) -> None:
    logits, target, eps_rows = inputs[0], inputs[1], inputs[2]
    _, grad = output
    ctx.mark_non_differentiable(grad)
    # The grad of `grad` is never used: do not materialise [N, K] zeros for it.
    ctx.set_materialize_grads(False)
    ctx.num_classes = logits.shape[1]
    ctx.eps_dtype = None if eps_rows is None else eps_rows.dtype
    ctx.first_grad_output = None  # set by the first (in-place) backward
    # save_for_backward, not a ctx attribute: released right after a backward without
    # retain_graph, so AccumulateGrad can adopt the returned buffer as .grad without a copy.
    ctx.save_for_backward(grad, target)


def _backward(ctx, grad_loss, _grad_of_grad):
    grad, target = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 8
    if torch.is_grad_enabled() and not _is_traced(grad):
        # The buffer is a number, not a function of the logits (which are not even saved):
        # returning it under create_graph=True would make every second derivative silently 0.
        raise RuntimeError(
            "robustkernels triton backend: double backward (create_graph=True) is not supported; "
            "use backend='native' or backend='torch'"
        )
    if _is_traced(grad):
        grad_logits = _rescaled_copy(grad, grad_loss, None)
    elif ctx.first_grad_output is None:
        _rescale_in_place(grad, grad_loss)
        ctx.first_grad_output = grad_loss.detach().clone()  # O(1) or O(N); the caller may reuse its tensor
        grad_logits = grad
    else:
        grad_logits = _rescaled_copy(grad, grad_loss, ctx.first_grad_output)
    grad_eps = None
    if ctx.eps_dtype is not None and ctx.needs_input_grad[2]:
        # eps_i enters only through z_{i, y_i}: d L / d eps_i = d L / d z_{i, y_i}. Ignored rows
        # have a zero gradient row and invalid ones a NaN row, so a clamped label reads the right
        # value (0 or NaN) and never indexes out of bounds.
        label = target.long().clamp(0, ctx.num_classes - 1).unsqueeze(1)
        grad_eps = grad_logits.gather(1, label).squeeze(1).to(ctx.eps_dtype)
    if not ctx.needs_input_grad[0]:
        grad_logits = None
    return grad_logits, None, grad_eps, None, None, None, None, None


fused_loss_with_grad.register_autograd(_backward, setup_context=_setup_context)
