"""``robust_loss``: the one entry point every functional and module goes through."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ._labels import check_epsilon_rows, check_labels, under_functorch
from ._numbers import as_int64, is_finite, is_real, to_float
from .backends import resolve_backend
from .epsilon import epsilon_for_classes
from .specs import LossSpec, get_spec

__all__ = ["robust_loss", "EpsilonArg"]

EpsilonArg = float | Tensor | Literal["auto"]
_REDUCTIONS = ("none", "mean", "sum")
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _check_logits_target(logits: object, target: object) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a Tensor, got {type(logits).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor, got {type(target).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"logits must have at least 2 classes, got K={logits.shape[1]}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"logits must be float64, float32, bfloat16 or float16, got {logits.dtype}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target must be 1-D [N] with N={logits.shape[0]} (the rows of logits), got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but logits are on {logits.device}; they must be on the same device"
        )


def _resolve_epsilon(epsilon: object, logits: Tensor) -> float | Tensor:
    if isinstance(epsilon, str):
        if epsilon != "auto":
            raise ValueError(f"epsilon must be a float, a [N] tensor or 'auto', got {epsilon!r}")
        # eps(K) is a number computed on the host, so the graph is specialised on K. Under
        # torch.compile(dynamic=True) K is a symbol, which Dynamo makes a constant (with a guard)
        # through len(range(K)); int(K) would stay symbolic.
        return epsilon_for_classes(len(range(logits.shape[1])))
    if isinstance(epsilon, Tensor):
        n = logits.shape[0]
        if epsilon.dim() == 0:
            raise ValueError(
                "epsilon: pass a scalar bias as a Python float (a 0-d tensor would need a host "
                "sync); a tensor must be [N] per-sample biases"
            )
        if epsilon.dim() != 1 or epsilon.shape[0] != n:
            raise ValueError(f"epsilon must be a float or a [N]={n} tensor, got shape {tuple(epsilon.shape)}")
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


def _resolve_backend(backend: object, logits: Tensor, epsilon: float | Tensor):
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if not under_functorch(logits, epsilon):
        return resolve_backend(backend, logits.device)[1]
    # torch.func (grad, vjp, jacrev, hessian, vmap) composes with plain PyTorch ops, which the
    # torch backend is made of; the fused backends are custom ops with an analytic gradient
    # buffer, which functorch cannot transform.
    if backend not in ("auto", "torch"):
        raise RuntimeError(
            f"robustkernels: backend={backend!r} does not support torch.func transforms (grad, vjp, "
            "jacrev, hessian, vmap); use backend='torch' or backend='auto' (which picks 'torch' "
            "under torch.func), or compute per-sample gradients with reduction='none' and autograd"
        )
    return resolve_backend("torch", logits.device)[1]


def robust_loss(
    logits: Tensor,
    target: Tensor,
    loss: str | LossSpec = "mae",
    *,
    epsilon: EpsilonArg = 0.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    backend: str = "auto",
    **params: float,
) -> Tensor:
    r"""Noise-robust classification loss with the logit bias of Staats et al.

    Computes ``L(softmax(z + epsilon * e_y), y)`` for every row, where ``L`` is one of
    :data:`robustkernels.LOSSES`. The bias is added during training only; predict with the raw
    logits.

    Args:
        logits: ``[N, K]`` unnormalised scores, float64/float32/bfloat16/float16. Any strides.
        target: ``[N]`` integer class indices in ``[0, K)`` or ``ignore_index``.
        loss: loss name (see :data:`robustkernels.LOSSES`). Default: ``"mae"``.
        epsilon: logit bias added to the labelled class: a float, a ``[N]`` tensor of
            per-sample biases, or ``"auto"`` for :func:`~robustkernels.calibration.epsilon_for_classes`
            of ``K`` (Eq. 4 with ``C = 0.15``, computed once per ``K`` and cached). Default: 0.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``. ``"mean"`` averages over non-ignored
            rows, as :func:`torch.nn.functional.cross_entropy` (all rows ignored gives NaN).
        ignore_index: label whose rows contribute loss 0 and gradient 0. Default: -100.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"native"``. ``"auto"`` picks the
            fastest available one for the device; naming an unavailable one raises
            ``RuntimeError`` saying why.
        **params: hyper-parameters of ``loss``; missing ones take the spec defaults.

    Returns:
        The loss: a scalar, or ``[N]`` for ``reduction="none"``; float32 (float64 for float64
        logits), whatever the logits' dtype, since all math runs in fp32.

    Raises:
        TypeError / ValueError: naming the argument, for an unknown loss or parameter, a
            parameter out of its valid range, a wrong shape, dtype or device, or a label outside
            ``[0, K)``. On CPU labels are checked at once; on CUDA without a host sync (bad rows
            become NaN and the error is raised by a later call, see
            :func:`robustkernels.set_label_validation`).

    Example:
        >>> logits = torch.randn(8, 1000, requires_grad=True)
        >>> target = torch.randint(0, 1000, (8,))
        >>> loss = robust_loss(logits, target, "gce", q=0.48, epsilon="auto")
        >>> loss.backward()
    """
    spec = get_spec(loss)
    values = spec.resolve(params)
    _check_logits_target(logits, target)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    ignore_index = as_int64(ignore_index, "ignore_index")
    eps = _resolve_epsilon(epsilon, logits)
    fn = _resolve_backend(backend, logits, eps)
    check_labels(target, logits.shape[1], ignore_index)
    if isinstance(eps, Tensor):
        check_epsilon_rows(eps)
    if target.dtype not in (torch.int64, torch.int32):
        target = target.long()
    return fn(logits, target, spec, values, eps, reduction, ignore_index)
