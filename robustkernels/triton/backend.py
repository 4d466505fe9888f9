"""The ``"triton"`` backend: the contract of :mod:`robustkernels.backends` on top of :mod:`.op`."""

from __future__ import annotations

import os
import re

import torch
from torch import Tensor

from .._numbers import to_float
from ..specs import LossSpec

__all__ = ["unavailable_reason", "interpreter_defect", "robust_loss"]


def _import_error() -> str | None:
    try:
        from . import op  # noqa: F401  (imports triton and registers the ops)
    except ImportError as err:
        return f"triton could not be imported ({err})"
    return None


def unavailable_reason(device: torch.device) -> str | None:
    """``None`` on CUDA devices when Triton imports, and on CPU only under ``TRITON_INTERPRET=1``."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return f"the triton backend runs on CUDA devices (and on CPU under TRITON_INTERPRET=1), not on {device.type}"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cpu" and not interpret:
        return (
            "the triton backend needs a CUDA device; CPU tensors run only in the Triton interpreter "
            "(TRITON_INTERPRET=1)"
        )
    reason = _import_error()
    if reason is not None:
        return reason
    from . import op

    if device.type == "cpu" and not op.INTERPRETED:
        return (
            "TRITON_INTERPRET=1 was set after robustkernels.triton had compiled its kernels for the GPU; "
            "set it before the first use of the triton backend to run on CPU"
        )
    if device.type == "cpu":
        return interpreter_defect()
    return None


def interpreter_defect() -> str | None:
    """Why this Triton's interpreter cannot run the kernels, or ``None``.

    Triton 3.6's interpreter turns a runtime ``int`` argument used as a loop bound (``range(0,
    num_classes, BLOCK_K)``, ``range(num_iters)``) into an index with ``int()`` of a 1-element
    array, which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to Python
    scalars"); Triton 3.7 squeezes the array first. Compiled GPU kernels are not affected.
    """
    import warnings

    import numpy as np
    import triton

    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", triton.__version__).groups())
    if (major, minor) >= (3, 7):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NumPy 1.25-2.3 only warn that the conversion is deprecated
        try:
            int(np.zeros(1))
        except TypeError:
            return (
                f"the Triton {triton.__version__} interpreter cannot run these kernels with NumPy {np.__version__} "
                "(it converts loop bounds with int() of a 1-element array, which NumPy >= 2.4 refuses); "
                "use triton >= 3.7 or numpy < 2.4 to run the triton backend on CPU"
            )
    return None


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
    """Backend contract (see :mod:`robustkernels.backends`): the fused loss, differentiable w.r.t. the
    logits (and a per-row ``epsilon`` tensor, except with a probability target or label smoothing).
    Without grad the op runs with ``compute_grad=False`` and no gradient buffer is allocated."""
    from . import op

    eps_rows = epsilon if isinstance(epsilon, Tensor) else None
    # No float() of a float: see robustkernels.native (traced values under dynamic=True).
    eps = 0.0 if eps_rows is not None else epsilon
    terms, slots = spec.kernel_call_args(params)
    needs_grad = torch.is_grad_enabled() and (logits.requires_grad or (eps_rows is not None and eps_rows.requires_grad))
    args = (logits, target, eps_rows, weight, eps, terms, slots, ignore_index)
    return op.fused_loss(*args, to_float(label_smoothing), reduction, needs_grad)[0]
