"""Backend registry: which implementation computes a loss, and why one is unavailable.

Every backend module exposes two functions with the same contract:

``unavailable_reason(device: torch.device) -> str | None``
    ``None`` when the backend can run on ``device``, else a sentence saying why not.

``robust_loss(logits, target, spec, params, epsilon, reduction, ignore_index) -> Tensor``
    ``logits`` ``[N, K]`` float64/float32/bfloat16/float16 with any strides; ``target`` ``[N]``
    int64 or int32 on the same device, whose rows are either in ``[0, K)``, equal to
    ``ignore_index`` (loss 0, gradient 0) or out of range (loss NaN, gradient NaN: see
    :mod:`robustkernels._labels`; never an out-of-bounds access); ``spec`` a
    :class:`~robustkernels.specs.LossSpec`; ``params`` the floats in spec order; ``epsilon`` a
    float or a ``[N]`` float32/float64 tensor; ``reduction`` ``"none" | "mean" | "sum"``
    (``mean`` divides by the number of non-ignored rows, on device). Returns the loss in
    float32 (float64 for float64 logits), differentiable w.r.t. ``logits``; the gradient has
    the logits' dtype.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

__all__ = ["BACKENDS", "available_backends", "resolve_backend", "unavailable_reason"]

#: Backend name -> module implementing the contract above.
BACKENDS: dict[str, str] = {
    "torch": "robustkernels._torch_backend",
    "triton": "robustkernels.triton.backend",
    "native": "robustkernels.native",
}

#: Order tried by ``backend="auto"`` for each device type (first available wins).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("native", "torch"),
    "cuda": ("triton", "native", "torch"),
}
_AUTO_DEFAULT = ("torch",)


# name -> (module or None, reason it could not be imported). Filled by load_all() when the
# package is imported, so that nothing is imported while torch.compile traces robust_loss
# (Dynamo refuses to trace importlib).
_LOADED: dict[str, tuple[object, str | None]] = {}


def load_all() -> None:
    """Import every backend module once (called by ``import robustkernels``)."""
    for name, path in BACKENDS.items():
        if name in _LOADED:
            continue
        try:
            _LOADED[name] = (importlib.import_module(path), None)
        except ImportError as err:  # the optional module or one of its dependencies is missing
            _LOADED[name] = (None, f"backend {name!r} could not be imported ({err})")


def _module(name: str):
    if name not in _LOADED:
        load_all()
    return _LOADED[name]


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """``None`` if backend ``name`` can run on ``device``, else why it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of 'auto', {', '.join(map(repr, BACKENDS))}; got {name!r}")
    module, reason = _module(name)
    if module is None:
        return reason
    return module.unavailable_reason(device)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the backends that can run on ``device``."""
    device = torch.device(device)
    return [name for name in BACKENDS if unavailable_reason(name, device) is None]


def resolve_backend(name: str, device: torch.device) -> tuple[str, Callable]:
    """Map ``"auto"`` or a backend name to ``(name, robust_loss function)`` for ``device``.

    Raises:
        ValueError: unknown name.
        RuntimeError: the requested backend cannot run here; the message says why.
    """
    if name == "auto":
        for candidate in AUTO_ORDER.get(device.type, _AUTO_DEFAULT):
            if unavailable_reason(candidate, device) is None:
                return candidate, _module(candidate)[0].robust_loss
        raise RuntimeError(f"no backend can run on device {device}")  # torch always can
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise RuntimeError(f"backend={name!r} is unavailable on {device}: {reason}")
    return name, _module(name)[0].robust_loss
