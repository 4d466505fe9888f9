"""``robust_loss``: the one entry point every functional and module goes through."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ._labels import check_epsilon_rows, check_labels, check_probabilities, under_functorch
from ._numbers import as_int64, is_finite, is_real, to_float
from .backends import resolve_backend
from .epsilon import epsilon_for_classes
from .reference import compute_dtype
from .specs import LossSpec, get_spec

__all__ = ["robust_loss", "EpsilonArg"]

EpsilonArg = float | Tensor | Literal["auto"]
_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _num_classes(logits: Tensor) -> int:
    return logits.shape[0 if logits.dim() == 1 else 1]


def _check_logits(logits: object) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a Tensor, got {type(logits).__name__}")
    if logits.dim() == 0:
        raise ValueError("logits must be [K], [N, K] or [N, K, d1, ...], got a 0-d tensor")
    num_classes = _num_classes(logits)
    if num_classes < 2:
        raise ValueError(
            f"logits must have at least 2 classes, got K={num_classes} (the class dimension is 1, or 0 for 1-D)"
        )
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits must be float64, float32, bfloat16 or float16, got {logits.dtype}")


def _row_shape(logits: Tensor) -> tuple[int, ...]:
    """The shape of the rows: the logits' shape without the class dimension."""
    return () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])


def _check_target(target: object, logits: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor, got {type(target).__name__}")
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but logits are on {logits.device}; they must be on the same device"
        )
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"target: a probability target must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if target.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"target: probabilities must be float64, float32, bfloat16 or float16, got {target.dtype}")
        return
    if target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices or float probabilities, got {target.dtype}")
    rows = _row_shape(logits)
    if tuple(target.shape) != rows:
        kind = {1: "a 0-d tensor for 1-D logits", 2: "[N]"}.get(logits.dim(), "[N, d1, ...]")
        raise ValueError(
            f"target: class indices must be {kind} of shape {rows} (the logits' shape {tuple(logits.shape)} "
            f"without the class dimension), got {tuple(target.shape)}"
        )


def _check_weight(weight: object, logits: Tensor) -> Tensor | None:
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor or None, got {type(weight).__name__}")
    num_classes = _num_classes(logits)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"weight must be 1-D with one entry per class (K={num_classes}), got shape {tuple(weight.shape)}"
        )
    if weight.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"weight must be float64, float32, bfloat16 or float16, got {weight.dtype}")
    if weight.device != logits.device:
        raise ValueError(f"weight is on {weight.device} but logits are on {logits.device}")
    # Read once per row (or per class) by every backend, in the compute dtype.
    return weight.to(compute_dtype(logits.dtype)).contiguous()


def _check_label_smoothing(label_smoothing: object) -> float:
    if not is_real(label_smoothing):
        raise TypeError(f"label_smoothing must be a float, got {type(label_smoothing).__name__}")
    value = to_float(label_smoothing)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing!r}")
    return value


def _resolve_epsilon(epsilon: object, logits: Tensor) -> float | Tensor:
    if isinstance(epsilon, str):
        if epsilon != "auto":
            raise ValueError(f"epsilon must be a float, a [N] tensor or 'auto', got {epsilon!r}")
        # eps(K) is a number computed on the host, so the graph is specialised on K. Under
        # torch.compile(dynamic=True) K is a symbol, which Dynamo makes a constant (with a guard)
        # through len(range(K)); int(K) would stay symbolic.
        return epsilon_for_classes(len(range(_num_classes(logits))))
    if isinstance(epsilon, Tensor):
        rows = _row_shape(logits)
        if epsilon.dim() == 0 and rows:
            raise ValueError(
                "epsilon: pass a scalar bias as a Python float (a 0-d tensor would need a host "
                "sync); a tensor must hold one bias per row"
            )
        if tuple(epsilon.shape) != rows:
            raise ValueError(
                f"epsilon must be a float or a tensor of the row shape {rows} (the logits' shape without "
                f"the class dimension), got shape {tuple(epsilon.shape)}"
            )
        if not epsilon.dtype.is_floating_point:
            raise TypeError(f"epsilon tensor must be floating point, got {epsilon.dtype}")
        if epsilon.device != logits.device:
            raise ValueError(f"epsilon is on {epsilon.device} but logits are on {logits.device}")
        if epsilon.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"epsilon tensor must be float64, float32, bfloat16 or float16, got {epsilon.dtype}")
        return epsilon
    if not is_real(epsilon):
        raise TypeError(f"epsilon must be a float, a [N] tensor or 'auto', got {type(epsilon).__name__}")
    epsilon = to_float(epsilon)
    if not is_finite(epsilon):
        raise ValueError(f"epsilon must be finite, got {epsilon!r}")
    return epsilon


def _resolve_backend(backend: object, logits: Tensor, epsilon: float | Tensor) -> tuple[str, Callable]:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if not under_functorch(logits, epsilon):
        return resolve_backend(backend, logits.device)
    # torch.func (grad, vjp, jacrev, hessian, vmap) composes with plain PyTorch ops, which the
    # torch backend is made of; the fused backends are custom ops with an analytic gradient
    # buffer, which functorch cannot transform.
    if backend not in ("auto", "torch"):
        raise RuntimeError(
            f"robustkernels: backend={backend!r} does not support torch.func transforms (grad, vjp, "
            "jacrev, hessian, vmap); use backend='torch' or backend='auto' (which picks 'torch' "
            "under torch.func), or compute per-sample gradients with reduction='none' and autograd"
        )
    return resolve_backend("torch", logits.device)


def robust_loss(
    logits: Tensor,
    target: Tensor,
    loss: str | LossSpec = "mae",
    *,
    epsilon: EpsilonArg = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    backend: str = "auto",
    **params: float,
) -> Tensor:
    r"""Noise-robust classification loss with the logit bias of Staats et al.

    Computes ``L(softmax(z + epsilon * e_y), y)`` for every row, where ``L`` is one of
    :data:`robustkernels.LOSSES`; with a target distribution ``t`` (probability targets, label
    smoothing) the expected loss ``sum_k t_k L(softmax(z + epsilon * e_k), k)``. The arguments
    follow :func:`torch.nn.functional.cross_entropy`, which ``loss="ce"`` at ``epsilon=0``
    equals. The bias is added during training only; predict with the raw logits.

    Args:
        logits: ``[N, K]``, ``[K]`` or ``[N, K, d1, ...]`` unnormalised scores (the class
            dimension is 1, or 0 for a 1-D input), float64/float32/bfloat16/float16, any strides.
        target: class indices of the logits' shape without the class dimension (``[N]``, a 0-d
            tensor, ``[N, d1, ...]``), in ``[0, K)`` or ``ignore_index``; or class probabilities
            of the logits' shape (non-negative; rows need not sum to 1).
        loss: loss name (see :data:`robustkernels.LOSSES`) or a spec from
            :func:`~robustkernels.combine`. Default: ``"mae"``.
        epsilon: logit bias added to the labelled class: a float, a tensor of per-row biases of
            the target's row shape, or ``"auto"`` for
            :func:`~robustkernels.calibration.epsilon_for_classes` of ``K`` (Eq. 4 with ``C =
            0.15``, computed once per ``K`` and cached). Default: 0.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``. ``"mean"`` averages over non-ignored
            rows, weighted by ``weight[target]`` when given, as
            :func:`torch.nn.functional.cross_entropy` (all rows ignored gives NaN); over every
            row for probability targets.
        ignore_index: label whose rows contribute loss 0 and gradient 0 (class indices only).
            Default: -100.
        weight: ``[K]`` class weights, as :func:`torch.nn.functional.cross_entropy`: a row with
            label ``y`` is weighted by ``weight[y]``; a probability target weights each class's
            term. Default: None.
        label_smoothing: ``alpha`` in ``[0, 1]``: the target becomes ``(1 - alpha) t + alpha / K``
            (``t`` the one-hot label or the probabilities), without an ``[N, K]`` target in
            memory. Default: 0.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"native"``. ``"auto"`` picks the
            fastest available one for the device; naming an unavailable one raises
            ``RuntimeError`` saying why.
        **params: hyper-parameters of ``loss``; missing ones take the spec defaults.

    Returns:
        The loss: a scalar, or the row shape for ``reduction="none"``; float32 (float64 for
        float64 logits), whatever the logits' dtype, since all math runs in fp32.

    Raises:
        TypeError / ValueError: naming the argument, for an unknown loss or parameter, a
            parameter out of its valid range, a wrong shape, dtype or device, a label outside
            ``[0, K)`` or a negative or NaN probability, a loss without a one-pass expected loss
            (nfl, ngce, bitemp and their combinations) given a probability target or label
            smoothing. On CPU labels and probabilities are checked at once; on CUDA without a
            host sync (bad rows become NaN and the error is raised by a later call, see
            :func:`robustkernels.set_label_validation`).

    Example:
        >>> logits = torch.randn(8, 1000, requires_grad=True)
        >>> target = torch.randint(0, 1000, (8,))
        >>> loss = robust_loss(logits, target, "gce", q=0.48, epsilon="auto")
        >>> loss.backward()
    """
    spec = get_spec(loss)
    values = spec.resolve(params)
    _check_logits(logits)
    _check_target(target, logits)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    ignore_index = as_int64(ignore_index, "ignore_index")
    class_weight = _check_weight(weight, logits)
    alpha = _check_label_smoothing(label_smoothing)
    soft = target.is_floating_point() or alpha != 0.0
    if soft and not spec.soft_targets:
        missing = ", ".join(p.name for p in spec.primitives if not p.soft_targets)
        raise ValueError(
            f"loss {spec.name!r}: probability targets and label smoothing need a one-pass expected loss "
            f"over the target, which {missing} does not have (docs/drop-in.md); use class indices "
            "without label_smoothing"
        )
    eps = _resolve_epsilon(epsilon, logits)
    name, fn = _resolve_backend(backend, logits, eps)
    if soft and isinstance(eps, Tensor) and eps.requires_grad and name != "torch":
        raise ValueError(
            f"epsilon: backend {name!r} does not differentiate a per-row bias with probability targets "
            "or label smoothing (each class's term carries its own bias); use backend='torch'"
        )
    _check_differentiable(name, target=target if target.is_floating_point() else None, weight=class_weight)
    check_after = _kernel_checks_target(name, target, logits)
    if not check_after:
        _check_target_values(target, logits, ignore_index)
    if not target.is_floating_point() and target.dtype not in (torch.int64, torch.int32):
        target = target.long()
    if isinstance(eps, Tensor):
        check_epsilon_rows(eps.reshape(-1))
    extra = {} if class_weight is None and not soft else {"weight": class_weight, "label_smoothing": alpha}
    loss_rows = fn(
        _as_rows(logits, logits),
        target.reshape(-1) if not target.is_floating_point() else _as_rows(target, logits),
        spec,
        values,
        eps.reshape(-1) if isinstance(eps, Tensor) else eps,
        reduction,
        ignore_index,
        **extra,
    )
    if check_after and _holds_nan(loss_rows):
        _check_target_values(target, logits, ignore_index)  # a NaN logit also makes a NaN row: no error then
    return loss_rows.reshape(_row_shape(logits)) if reduction == "none" else loss_rows


def _check_target_values(target: Tensor, logits: Tensor, ignore_index: int) -> None:
    """Raise naming the first bad label or probability row of ``target`` (see ``_labels``)."""
    if target.is_floating_point():
        check_probabilities(_as_rows(target, logits))
    else:
        check_labels(target.reshape(-1), _num_classes(logits), ignore_index)


def _holds_nan(loss: Tensor) -> bool:
    loss = loss.detach()
    # A scalar loss (mean, sum) is read as one number: one op, where isnan().any() is two more.
    return math.isnan(loss.item()) if loss.dim() == 0 else bool(loss.isnan().any())


def _kernel_checks_target(backend: str, target: Tensor, logits: Tensor) -> bool:
    """Whether a CPU target is checked after the call instead of before it.

    The fused kernels turn a row with a label outside ``[0, K)`` (not ``ignore_index``) or with a
    negative or NaN probability into a NaN row, which a mean or sum carries too, so on CPU the
    separate check -- one more read of an ``[N, K]`` target; for labels, half a dozen small
    tensor ops at every call -- is needed only when the result holds a NaN, and it then names
    the row as before. Traced and transformed calls keep the check before
    the call.
    """
    return (
        backend in ("native", "triton")
        and target.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not under_functorch(target, logits)
    )


def _check_differentiable(backend: str, **tensors: Tensor | None) -> None:
    """The fused backends give the gradient of the logits (and of a per-row bias) only: refuse a
    probability target or class weights that require grad there, rather than drop their gradient."""
    if backend == "torch" or not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise ValueError(
                f"{name}: backend {backend!r} does not differentiate {name}; detach it, or use backend='torch'"
            )


def _as_rows(x: Tensor, logits: Tensor) -> Tensor:
    """``x`` (logits, or a probability target of their shape) as ``[rows, K]``: a view for 1-D and
    2-D inputs; the class dimension moved last and flattened (a copy) for N-d inputs."""
    if logits.dim() == 1:
        return x.unsqueeze(0)
    if logits.dim() == 2:
        return x
    return x.movedim(1, -1).reshape(-1, logits.shape[1])
