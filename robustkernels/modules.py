"""``nn.Module`` losses in the style of :class:`torch.nn.CrossEntropyLoss`.

:class:`RobustLoss` takes the loss name; one subclass per loss (``MAELoss``, ``GCELoss``,
``NCEAGCELoss``, ...) is generated from :data:`robustkernels.LOSSES` with the loss fixed.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from ._numbers import is_real
from .api import EpsilonArg, robust_loss
from .functional import param_docs
from .specs import LOSSES, LossSpec, get_spec

__all__ = ["RobustLoss"] + [s.class_name for s in LOSSES.values()]


class RobustLoss(nn.Module):
    """Noise-robust loss with the logit bias, as a module.

    Args:
        loss: loss name (see :data:`robustkernels.LOSSES`).
        epsilon: logit bias: float, ``[N]`` tensor given per call is not possible here, so a
            float or ``"auto"``; set :attr:`epsilon` between steps to schedule it.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        ignore_index: label whose rows are skipped.
        weight: ``[K]`` class weights, as :class:`torch.nn.CrossEntropyLoss` (a buffer: it moves
            with ``.to()``).
        label_smoothing: ``alpha`` in ``[0, 1]``, as :class:`torch.nn.CrossEntropyLoss`.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"native"``.
        **params: hyper-parameters of the loss (validated here, at construction).

    Shape:
        - Input: ``[N, K]``, ``[K]`` or ``[N, K, d1, ...]`` logits.
        - Target: class indices of the input's shape without dimension 1 (``[N]``, ``[]``,
          ``[N, d1, ...]``), or probabilities of the input's shape.
        - Output: scalar, or the target's row shape with ``reduction="none"``.

    ``forward(input, target, epsilon=None)`` also accepts a per-call ``epsilon`` (e.g. a
    ``[N]`` per-sample tensor) overriding :attr:`epsilon`.
    """

    def __init__(
        self,
        loss: str = "mae",
        *,
        epsilon: EpsilonArg = 0.0,
        reduction: str = "mean",
        ignore_index: int = -100,
        weight: Tensor | None = None,
        label_smoothing: float = 0.0,
        backend: str = "auto",
        **params: float,
    ) -> None:
        super().__init__()
        self.spec: LossSpec = get_spec(loss)
        self._params = self.spec.as_dict(self.spec.resolve(params))
        self.epsilon = epsilon
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing
        self.backend = backend

    @property
    def loss(self) -> str:
        return self.spec.name

    @property
    def params(self) -> dict[str, float]:
        """The hyper-parameters in spec order (a copy: set them as attributes, ``m.q = 0.5``)."""
        return dict(self._params)

    # Hyper-parameters read and write as attributes (``m.q``, ``m.q = 0.5``), validated on
    # assignment as at construction, so that a schedule or a sweep that sets one is never
    # silently ignored.
    def __getattr__(self, name: str):
        params = self.__dict__.get("_params")
        if params is not None and name in params:
            return params[name]
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: object) -> None:
        spec = self.__dict__.get("spec")
        if spec is not None and name in spec.param_index:
            self._params[name] = spec.params[spec.param_index[name]].check(value, spec.name)
        elif name == "reduction" and value not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {value!r}")
        else:
            super().__setattr__(name, value)

    def forward(self, input: Tensor, target: Tensor, epsilon: EpsilonArg | None = None) -> Tensor:
        return robust_loss(
            input,
            target,
            self.spec,
            epsilon=self.epsilon if epsilon is None else epsilon,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            weight=self.weight,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            **self._params,
        )

    def extra_repr(self) -> str:
        parts = [] if type(self) is not RobustLoss else [repr(self.spec.name)]
        parts += [f"{k}={v:g}" for k, v in self._params.items()]
        eps = self.epsilon
        if is_real(eps):
            parts.append(f"epsilon={eps:g}")
        else:
            parts.append(f"epsilon={eps!r}" if isinstance(eps, str) else "epsilon=<tensor>")
        parts.append(f"reduction={self.reduction!r}")
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.weight is not None:
            parts.append(f"weight=<[{self.weight.shape[0]}] tensor>")
        if self.label_smoothing != 0.0:
            parts.append(f"label_smoothing={self.label_smoothing:g}")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


def _make_class(spec: LossSpec) -> type:
    def __init__(
        self,
        *,
        epsilon=0.0,
        reduction="mean",
        ignore_index=-100,
        weight=None,
        label_smoothing=0.0,
        backend="auto",
        **params,
    ):
        RobustLoss.__init__(
            self,
            spec.name,
            epsilon=epsilon,
            reduction=reduction,
            ignore_index=ignore_index,
            weight=weight,
            label_smoothing=label_smoothing,
            backend=backend,
            **params,
        )

    common = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("epsilon", inspect.Parameter.KEYWORD_ONLY, default=0.0),
        inspect.Parameter("reduction", inspect.Parameter.KEYWORD_ONLY, default="mean"),
        inspect.Parameter("ignore_index", inspect.Parameter.KEYWORD_ONLY, default=-100),
        inspect.Parameter("weight", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("label_smoothing", inspect.Parameter.KEYWORD_ONLY, default=0.0),
        inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto"),
    ]
    extra = [inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=p.default) for p in spec.params]
    __init__.__signature__ = inspect.Signature(common + extra)
    doc = (
        f"{spec.title} (``{spec.formula}``) with the logit bias, as a module.\n\n"
        f"    {spec.citation}.\n\n"
        "    Hyper-parameters:\n"
        + param_docs(spec)
        + "\n    See :class:`RobustLoss` for epsilon, reduction, ignore_index, weight, label_smoothing\n"
        "    and backend.\n"
    )
    return type(spec.class_name, (RobustLoss,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


for _spec in LOSSES.values():
    globals()[_spec.class_name] = _make_class(_spec)
del _spec
