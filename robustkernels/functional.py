"""One function per loss, generated from :data:`robustkernels.LOSSES`.

``functional.mae(logits, target, *, epsilon=0.0, reduction="mean", ignore_index=-100,
weight=None, label_smoothing=0.0, backend="auto", scale=2.0)`` is ``robust_loss(logits, target,
"mae", ...)`` with the loss's parameters as keyword arguments, defaults and docs taken from its
spec.
"""

from __future__ import annotations

import inspect

import torch

from .api import robust_loss
from .specs import LOSSES, LossSpec

__all__ = list(LOSSES)

_COMMON = [
    inspect.Parameter("logits", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    inspect.Parameter("target", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=torch.Tensor),
    inspect.Parameter("epsilon", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation="float | Tensor | str"),
    inspect.Parameter("reduction", inspect.Parameter.KEYWORD_ONLY, default="mean", annotation=str),
    inspect.Parameter("ignore_index", inspect.Parameter.KEYWORD_ONLY, default=-100, annotation=int),
    inspect.Parameter("weight", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Tensor | None"),
    inspect.Parameter("label_smoothing", inspect.Parameter.KEYWORD_ONLY, default=0.0, annotation=float),
    inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=str),
]


def param_docs(spec: LossSpec) -> str:
    """The ``Args`` lines of a loss's hyper-parameters, for generated docstrings."""
    if not spec.params:
        return "        (no hyper-parameters)\n"
    lines = []
    for p in spec.params:
        extra = f"; {p.doc}" if p.doc else ""
        lines.append(f"        {p.name}: default {p.default:g}, valid range {p.range_text()}{extra}.")
    return "\n".join(lines) + "\n"


def _make(spec: LossSpec):
    def loss_fn(
        logits,
        target,
        *,
        epsilon=0.0,
        reduction="mean",
        ignore_index=-100,
        weight=None,
        label_smoothing=0.0,
        backend="auto",
        **params,
    ):
        return robust_loss(
            logits,
            target,
            spec,
            epsilon=epsilon,
            reduction=reduction,
            ignore_index=ignore_index,
            weight=weight,
            label_smoothing=label_smoothing,
            backend=backend,
            **params,
        )

    loss_fn.__name__ = loss_fn.__qualname__ = spec.name
    loss_fn.__module__ = __name__
    extra = [
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default, annotation=float)
        for p in spec.params
    ]
    loss_fn.__signature__ = inspect.Signature(_COMMON + extra, return_annotation=torch.Tensor)
    notes = f"\n    Note: {spec.notes}\n" if spec.notes else ""
    loss_fn.__doc__ = (
        f"{spec.title}: ``{spec.formula}`` with ``p = softmax(z + epsilon e_y)``.\n\n"
        f"    {spec.citation}.\n{notes}\n"
        "    See :func:`robustkernels.robust_loss` for logits, target, epsilon, reduction,\n"
        "    ignore_index, weight, label_smoothing and backend.\n\n"
        "    Hyper-parameters:\n" + param_docs(spec)
    )
    return loss_fn


for _spec in LOSSES.values():
    globals()[_spec.name] = _make(_spec)
del _spec
