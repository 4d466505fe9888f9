"""The ``"torch"`` backend: :mod:`robustkernels.reference` plus masking and reduction."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import reference
from ._labels import invalid_label_mask
from .specs import BoundTerm, LossSpec


def unavailable_reason(device: torch.device) -> str | None:
    return None  # runs wherever PyTorch runs


def robust_loss(
    logits: Tensor,
    target: Tensor,
    spec: LossSpec,
    params: tuple[float, ...],
    epsilon: float | Tensor,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    return loss_of_terms(logits, target, spec.bind(params), epsilon, reduction, ignore_index)


def loss_of_terms(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[BoundTerm],
    epsilon: float | Tensor,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    """:func:`robust_loss` of bound primitives (:meth:`LossSpec.bind`)."""
    num_classes = logits.shape[1]
    target = target.long()
    ignored = target == ignore_index
    invalid = invalid_label_mask(target, num_classes, ignore_index)
    skip = ignored | invalid
    # Skipped rows are computed on zeros with label 0 so that whatever they hold (NaN, inf, a bad
    # label) cannot leak into the gradient through 0 * NaN; their result is then overwritten.
    safe_logits = logits.masked_fill(skip.unsqueeze(1), 0.0)
    safe_target = target.masked_fill(skip, 0)
    if isinstance(epsilon, Tensor):
        epsilon = epsilon.masked_fill(skip, 0.0)
    rows = reference.term_rows(safe_logits, safe_target, terms, epsilon)
    rows = rows.masked_fill(ignored, 0.0)
    # Invalid rows: loss NaN and gradient NaN, as the kernels do. The poison term is
    # sum_j z_j * NaN on those rows and 0 * 0 elsewhere, so it leaves valid rows untouched.
    poison = torch.where(invalid, float("nan"), 0.0).to(rows.dtype)
    bad_logits = logits.masked_fill(~invalid.unsqueeze(1), 0.0).to(rows.dtype)
    rows = rows + bad_logits.sum(dim=1) * poison
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    # Mean over non-ignored rows, on device (no .item()); all rows ignored gives 0/0 = NaN,
    # exactly as F.cross_entropy.
    return total / (~ignored).sum().to(rows.dtype)
