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
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    return loss_of_terms(
        logits,
        target,
        spec.bind(params),
        epsilon,
        reduction,
        ignore_index,
        weight=weight,
        label_smoothing=label_smoothing,
    )


def loss_of_terms(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[BoundTerm],
    epsilon: float | Tensor,
    reduction: str,
    ignore_index: int,
    weight: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """:func:`robust_loss` of bound primitives (:meth:`LossSpec.bind`)."""
    if target.is_floating_point():
        return _probability_target_loss(logits, target, terms, epsilon, reduction, weight, label_smoothing)
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
    cdtype = reference.compute_dtype(logits.dtype)
    row_weight = torch.ones((), dtype=cdtype, device=logits.device) if weight is None else weight[safe_target]
    if label_smoothing == 0.0:
        rows = reference.term_rows(safe_logits, safe_target, terms, epsilon)
        if weight is not None:
            rows = rows * row_weight
    else:
        class_weight = torch.ones(num_classes, dtype=cdtype, device=logits.device) if weight is None else weight
        # u = (1 - alpha) w_y e_y + (alpha / K) w: F.cross_entropy's smoothing of an integer target.
        u = (label_smoothing / num_classes) * class_weight.expand(logits.shape[0], num_classes)
        u = u.scatter_add(
            1, safe_target.unsqueeze(1), ((1.0 - label_smoothing) * row_weight).expand(target.shape)[:, None]
        )
        rows = reference.soft_term_rows(safe_logits, u, terms, epsilon)
    rows = rows.masked_fill(ignored, 0.0)
    rows = _poisoned(rows, logits, invalid)
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    # Mean over non-ignored rows (weighted by w_y, as F.cross_entropy), on device (no .item());
    # all rows ignored gives 0/0 = NaN, exactly as F.cross_entropy.
    if weight is None:
        return total / (~ignored).sum().to(rows.dtype)
    return total / torch.where(ignored, 0.0, row_weight.expand(target.shape)).sum()


def _probability_target_loss(
    logits: Tensor,
    target: Tensor,
    terms: Sequence[BoundTerm],
    epsilon: float | Tensor,
    reduction: str,
    weight: Tensor | None,
    label_smoothing: float,
) -> Tensor:
    num_classes = logits.shape[1]
    cdtype = reference.compute_dtype(logits.dtype)
    t = target.to(cdtype)
    # A negative or NaN probability makes its row NaN, as an out-of-range label does.
    invalid = ((t < 0) | t.isnan()).any(dim=1)
    u = (1.0 - label_smoothing) * t.masked_fill(invalid.unsqueeze(1), 0.0) + label_smoothing / num_classes
    if weight is not None:
        u = u * weight
    safe_logits = logits.masked_fill(invalid.unsqueeze(1), 0.0)
    if isinstance(epsilon, Tensor):
        epsilon = epsilon.masked_fill(invalid, 0.0)
    rows = _poisoned(reference.soft_term_rows(safe_logits, u, terms, epsilon), logits, invalid)
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / logits.shape[0]


def _poisoned(rows: Tensor, logits: Tensor, invalid: Tensor) -> Tensor:
    """Invalid rows: loss NaN and gradient NaN, as the kernels do. The poison term is
    ``sum_j z_j * NaN`` on those rows and ``0 * 0`` elsewhere, so it leaves valid rows untouched."""
    poison = torch.where(invalid, float("nan"), 0.0).to(rows.dtype)
    bad_logits = logits.masked_fill(~invalid.unsqueeze(1), 0.0).to(rows.dtype)
    return rows + bad_logits.sum(dim=1) * poison
