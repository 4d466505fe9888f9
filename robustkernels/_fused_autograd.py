"""The one autograd design of the fused backends (``native`` and ``triton``).

Each fused op computes, in one pass over the logits, the loss and ``d loss / d logits`` --
already divided by the row count for ``mean`` -- into a fresh buffer. The backward turns that
buffer into the gradient:

* first backward of the graph, eager: the buffer is scaled in place by ``grad_output`` (a
  scalar equal to 1, the usual ``loss.backward()``, is recognised on the device and moves no
  byte; no host sync) and handed to autograd, which may adopt it as ``logits.grad`` without a
  copy and later modify it in place (gradient clipping, ``g.mul_``). The backward therefore
  forgets it;
* any later backward (``retain_graph=True``): the gradient is recomputed from the saved inputs
  by the same op, so every sequence of backwards, with any upstream gradients (0, inf, NaN, one
  per row), gives what autograd through the reference gives, and a gradient returned earlier
  is never read or modified again;
* ``create_graph=True`` (gradient penalties, Hessian-vector products): the buffer is a number,
  not a function of the logits, so the gradient is recomputed through the pure-PyTorch
  reference on the saved inputs, whose graph carries exact second derivatives (``bitemp``'s
  implicit gradient is once-differentiable and says so);
* under tracing (``torch.compile``, AOTAutograd, ``opcheck``: the tensors are functional or
  fake wrappers) the graph must stay functional: the gradient is the fresh product
  ``buffer * grad_output``, which Inductor fuses into its consumer.

The bias's gradient follows one rule: ``eps_i`` adds to ``z_{i, y_i}``, so ``d loss / d eps_i =
d loss / d z_{i, y_i}``; ignored and invalid rows get 0, as in the reference (their bias is
masked out there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from .specs import terms_from_kernel_args

__all__ = ["FusedOp", "OpCall", "register_autograd"]


class OpCall(NamedTuple):
    """What a fused op computes, in the reference's terms (for double backward and masking)."""

    epsilon: float
    terms: int  # the term mask of robustkernels.specs.kernel_args
    slots: list[float]  # the KERNEL_SLOTS values
    ignore_index: int
    reduction: str  # by name
    weight: Tensor | None = None
    label_smoothing: float = 0.0

    def is_soft(self, target: Tensor) -> bool:
        """A probability target or label smoothing: every class carries a term."""
        return target.is_floating_point() or self.label_smoothing != 0.0


@dataclass(frozen=True)
class FusedOp:
    """How the shared autograd formula talks to one backend's op.

    The op's first three inputs are ``(logits, target, eps_rows)``; the rest (``op_args``) are
    its non-tensor arguments, and its outputs are ``(loss, grad_buffer)``.

    Attributes:
        op: the op whose autograd formula is registered (``torch.library`` name or object).
        recompute: ``(logits, target, eps_rows, op_args) -> grad`` -- the gradient buffer
            computed afresh (unscaled by ``grad_output``).
        scale_in_place: ``(grad, grad_output) -> None`` -- ``grad *= grad_output`` (a scalar or
            one factor per row), skipping the work where ``grad_output == 1``.
        decode: ``op_args -> OpCall`` -- what the op computes, for the reference.
    """

    op: object
    recompute: Callable[[Tensor, Tensor, Tensor | None, tuple], Tensor]
    scale_in_place: Callable[[Tensor, Tensor], None]
    decode: Callable[[tuple], OpCall]


def is_traced(t: Tensor) -> bool:
    """Whether ``t`` belongs to a graph being traced, where an in-place op on a saved tensor or a
    host-side decision on it must be avoided: functional, fake and proxy tensors are subclasses."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor


def register_autograd(fused: FusedOp) -> None:
    """Register the design of the module docstring as ``fused.op``'s autograd formula."""

    def setup_context(ctx, inputs, output) -> None:
        logits, target, eps_rows = inputs[0], inputs[1], inputs[2]
        _, grad = output
        # The buffer is an implementation detail, not a differentiable result; marking it also
        # stops autograd from materialising a zero [N, K] gradient for it in backward (measured
        # by the native backend: 14 ms per call at N=8192, K=1000 on CPU).
        ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)
        ctx.grad_buffer = grad if grad.dim() == 2 else None  # a forward without gradient: 1-D, empty
        ctx.save_for_backward(logits, target, eps_rows)
        ctx.op_args = tuple(inputs[3:])

    def backward(ctx, grad_loss: Tensor | None, _grad_of_grad_buffer: Tensor | None):
        nones = (None,) * (3 + len(ctx.op_args))
        if grad_loss is None:  # the loss is not on the path to what is differentiated
            return nones
        logits, target, eps_rows = ctx.saved_tensors
        buffer, ctx.grad_buffer = ctx.grad_buffer, None  # handed out below: never reused
        if torch.is_grad_enabled() and not is_traced(grad_loss):
            return _differentiable_backward(ctx, fused, grad_loss)
        call = fused.decode(ctx.op_args)
        if grad_loss.dim() == 1 and not target.is_floating_point():
            # An ignored row's loss is the constant 0, so its gradient is 0 whatever its upstream
            # factor: the buffer's zeros times an inf or NaN factor would be NaN. O(N), no sync.
            grad_loss = grad_loss.masked_fill(target == call.ignore_index, 0)
        if is_traced(grad_loss) and buffer is not None:
            upstream = grad_loss if grad_loss.dim() == 0 else grad_loss.unsqueeze(1)
            grad = buffer * upstream.to(buffer.dtype)
        else:
            grad = buffer if buffer is not None else fused.recompute(logits, target, eps_rows, ctx.op_args)
            fused.scale_in_place(grad, grad_loss)
        grad_eps = None
        if ctx.needs_input_grad[2]:
            if call.is_soft(target):
                # Each class's term carries its own bias: d loss / d eps is not a lane of the
                # gradient. The API refuses such a call before the forward.
                raise RuntimeError("epsilon: the fused backends do not differentiate a per-row bias with soft targets")
            grad_eps = _epsilon_gradient(grad, target, eps_rows)
        return (grad if ctx.needs_input_grad[0] else None, None, grad_eps, *nones[3:])

    torch.library.register_autograd(fused.op, backward, setup_context=setup_context)


def _epsilon_gradient(grad: Tensor, target: Tensor, eps_rows: Tensor) -> Tensor:
    labels = target.long()
    valid = (labels >= 0) & (labels < grad.shape[1])
    picked = grad.gather(1, labels.where(valid, 0).unsqueeze(1)).squeeze(1)
    return torch.where(valid, picked, 0).to(eps_rows.dtype)


def _differentiable_backward(ctx, fused: FusedOp, grad_loss: Tensor) -> tuple[Tensor | None, ...]:
    from . import _torch_backend

    logits, target, eps_rows = ctx.saved_tensors
    call = fused.decode(ctx.op_args)
    loss = _torch_backend.loss_of_terms(
        logits,
        target,
        terms_from_kernel_args(call.terms, call.slots),
        call.epsilon if eps_rows is None else eps_rows,
        call.reduction,
        call.ignore_index,
        weight=call.weight,
        label_smoothing=call.label_smoothing,
    )
    wanted = [(i, t) for i, t in ((0, logits), (2, eps_rows)) if ctx.needs_input_grad[i]]
    grads = torch.autograd.grad(loss, [t for _, t in wanted], grad_loss, create_graph=True, allow_unused=True)
    out: list[Tensor | None] = [None] * (3 + len(ctx.op_args))
    for (i, _), g in zip(wanted, grads):
        out[i] = g
    return tuple(out)
