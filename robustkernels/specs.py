"""The single source of truth for every loss: name, parameters, defaults, ranges, formula, citation.

The reference implementation, the Triton and native kernels, the generated functional API and
nn.Modules, the README table and the tests all read :data:`LOSSES`. Adding a loss means adding
a :class:`LossSpec` here and its per-row math in each backend, nothing else.

Notation: ``p = softmax(z + eps * e_y)``, ``y`` the label, ``K`` the number of classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._numbers import is_finite, is_nan, is_real, to_float

__all__ = ["Param", "LossSpec", "LOSSES", "get_spec", "LN_1E_MINUS_4"]

#: ``ln(1e-4)``: the RCE constant the published SCE / NCE+RCE hyper-parameters were tuned with
#: (the reference code clamps the one-hot label at 1e-4 before its natural log; the SCE paper's
#: "A = -4" is the base-10 reading of the same clamp).
LN_1E_MINUS_4 = math.log(1e-4)


@dataclass(frozen=True)
class Param:
    """One hyper-parameter of a loss.

    ``low`` / ``high`` bound the valid range; ``*_open`` makes that end exclusive.
    ``integer`` parameters must be whole numbers (only ``bitemp.num_iters``).
    """

    name: str
    default: float
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    integer: bool = False
    doc: str = ""

    def range_text(self) -> str:
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"

    def check(self, value: object, loss: str) -> float:
        """Return ``value`` as a float (int for integer params) or raise naming the parameter.

        Python and NumPy numbers are accepted; a float traced by ``torch.compile(dynamic=True)``
        passes through unchanged (its range test becomes a guard, not a recompile per value).
        """
        # Tensors are rejected on purpose: hyper-parameters are runtime floats, not graph inputs,
        # and reading a tensor's value here would be a host sync.
        if not is_real(value):
            raise TypeError(f"{loss}: parameter '{self.name}' must be a Python number, got {type(value).__name__}")
        v = to_float(value)
        if self.integer and (not is_finite(v) or v != int(v)):
            raise ValueError(f"{loss}: parameter '{self.name}' must be an integer, got {value}")
        below = v < self.low or (self.low_open and v == self.low)
        above = v > self.high or (self.high_open and v == self.high)
        if is_nan(v) or below or above:
            raise ValueError(f"{loss}: parameter '{self.name}'={value} is outside its valid range {self.range_text()}")
        return int(v) if self.integer else v


def _fmt(x: float) -> str:
    if x == math.inf:
        return "inf"
    if x == -math.inf:
        return "-inf"
    return f"{x:g}"


@dataclass(frozen=True)
class LossSpec:
    """Definition of one loss.

    Attributes:
        name: registry key and ``loss=`` argument of :func:`robustkernels.robust_loss`.
        kind: stable integer id; the only compile-time constant the kernels specialise on.
        class_name: name of the generated ``nn.Module``.
        title: human-readable name.
        formula: per-sample loss in the README's notation.
        params: hyper-parameters in the order the kernels receive them.
        citation: where the loss comes from.
        symmetric_sum: for symmetric losses, ``sum_k L(z, k)`` as a function of ``(K, params)``;
            ``None`` otherwise. Used by the property tests.
        bounded: whether the loss is bounded in ``p_y`` (the paper's subject).
        notes: differences from published code users should know about.
        terms: the primitive losses the loss is a weighted sum of (``("nce", "agce")`` for
            ``nce_agce``); a loss that is one primitive names itself. The kernels' passes over a
            row follow from them (``nce`` needs ``sum_k log p_k``, ``nfl`` the focal sums).
    """

    name: str
    kind: int
    class_name: str
    title: str
    formula: str
    params: tuple[Param, ...]
    citation: str
    symmetric_sum: object = None
    bounded: bool = True
    notes: str = ""
    terms: tuple[str, ...] = ()
    param_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.terms:
            object.__setattr__(self, "terms", (self.name,))
        object.__setattr__(self, "param_index", MappingProxyType({p.name: i for i, p in enumerate(self.params)}))

    def __reduce__(self) -> tuple[object, tuple[str]]:
        # A spec is pickled by name: its registry entry is the one definition (the lambdas in
        # symmetric_sum and the read-only param_index could not be pickled anyway), and a copied
        # or unpickled module then holds the very spec object the registry holds.
        if LOSSES.get(self.name) is not self:
            raise TypeError(f"only the registered specs of robustkernels.LOSSES can be pickled, not {self.name!r}")
        return get_spec, (self.name,)

    @property
    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, object]) -> tuple[float, ...]:
        """Validate user keyword parameters and return all values in spec order.

        Raises:
            TypeError: unknown parameter name or non-numeric value.
            ValueError: value outside its valid range.
        """
        unknown = set(params) - set(self.param_index)
        if unknown:
            known = ", ".join(p.name for p in self.params) or "none"
            raise TypeError(
                f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; valid parameters: {known}"
            )
        return tuple(p.check(params.get(p.name, p.default), self.name) for p in self.params)

    def as_dict(self, values: tuple[float, ...]) -> dict[str, float]:
        return {p.name: v for p, v in zip(self.params, values)}


# Parameter factories keep the table below readable.
def _alpha(default: float) -> Param:
    return Param("alpha", default, 0.0, math.inf, low_open=False, doc="weight of the active term")


def _beta(default: float) -> Param:
    return Param("beta", default, 0.0, math.inf, low_open=False, doc="weight of the passive term")


def _rce_a() -> Param:
    return Param(
        "A",
        LN_1E_MINUS_4,
        -math.inf,
        0.0,
        doc="log of the clamped zero label; ln(1e-4) as in the published code",
    )


def _gamma() -> Param:
    return Param("gamma", 0.5, 0.0, math.inf, low_open=False, doc="focusing exponent")


_APL = "Ma et al., Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020"
_ALF = "Zhou et al., Asymmetric Loss Functions for Learning with Noisy Labels, ICML 2021"
_SCE = "Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019"

_SPECS = (
    LossSpec(
        "ce",
        0,
        "CELoss",
        "Cross entropy",
        "-log p_y",
        (),
        "standard (equals F.cross_entropy at eps = 0)",
        bounded=False,
    ),
    LossSpec(
        "mae",
        1,
        "MAELoss",
        "Mean absolute error",
        "scale * (1 - p_y)",
        (Param("scale", 2.0, 0.0, math.inf, doc="2 is the l1 distance to the one-hot label"),),
        "Ghosh et al., Robust Loss Functions under Label Noise for Deep Neural Networks, AAAI 2017",
        symmetric_sum=lambda k, prm: prm["scale"] * (k - 1),
    ),
    LossSpec(
        "gce",
        2,
        "GCELoss",
        "Generalized cross entropy",
        "(1 - p_y^q) / q",
        (Param("q", 0.7, 0.0, 1.0, high_open=False, doc="Box-Cox exponent; q -> 0 is CE, 1 is MAE/2"),),
        "Zhang & Sabuncu, Generalized Cross Entropy Loss for Training Deep Neural Networks "
        "with Noisy Labels, NeurIPS 2018",
        notes="No clamp of p at 1e-7 as in published code: p^q is formed as exp(q log p), "
        "so the gradient never vanishes artificially.",
    ),
    LossSpec(
        "agce",
        3,
        "AGCELoss",
        "Asymmetric generalized cross entropy",
        "((a + 1)^q - (a + p_y)^q) / q",
        (Param("a", 0.6, 0.0, math.inf), Param("q", 0.6, 0.0, math.inf)),
        _ALF,
    ),
    LossSpec(
        "aul",
        4,
        "AULLoss",
        "Asymmetric unhinged loss",
        "((a - p_y)^q - (a - 1)^q) / q",
        (Param("a", 5.5, 1.0, math.inf, doc="must be > 1"), Param("q", 3.0, 0.0, math.inf)),
        _ALF,
    ),
    LossSpec(
        "ael",
        5,
        "AELLoss",
        "Asymmetric exponential loss",
        "exp(-p_y / a)",
        (Param("a", 2.5, 0.0, math.inf),),
        _ALF,
    ),
    LossSpec(
        "nce",
        6,
        "NCELoss",
        "Normalized cross entropy",
        "log p_y / sum_k log p_k",
        (),
        _APL,
        symmetric_sum=lambda k, prm: 1.0,
    ),
    LossSpec(
        "focal",
        7,
        "FocalLoss",
        "Focal loss",
        "-(1 - p_y)^gamma * log p_y",
        (_gamma(),),
        "Lin et al., Focal Loss for Dense Object Detection, ICCV 2017",
        bounded=False,
        notes="Exact gradient. Published noisy-label code (APL, ALFs) detaches (1 - p_y)^gamma, "
        "which drops the term -gamma (1 - p_y)^(gamma-1) p_y log p_y from the gradient.",
    ),
    LossSpec(
        "nfl",
        8,
        "NFLLoss",
        "Normalized focal loss",
        "focal_y / sum_k focal_k,  focal_k = -(1 - p_k)^gamma log p_k",
        (_gamma(),),
        _APL,
        symmetric_sum=lambda k, prm: 1.0,
        notes="Exact gradient; APL/ALFs detach every (1 - p_k)^gamma factor.",
    ),
    LossSpec(
        "rce",
        9,
        "RCELoss",
        "Reverse cross entropy",
        "-A * (1 - p_y)",
        (_rce_a(),),
        _SCE,
        symmetric_sum=lambda k, prm: -prm["A"] * (k - 1),
        notes="Default A = ln(1e-4) = -9.2103, what the published hyper-parameters were tuned "
        "with; the paper's A = -4 is a base-10 reading of the same clamp.",
    ),
    LossSpec(
        "sce",
        10,
        "SCELoss",
        "Symmetric cross entropy",
        "alpha * ce + beta * rce",
        (_alpha(0.1), _beta(1.0), _rce_a()),
        _SCE,
        bounded=False,
        terms=("ce", "rce"),
    ),
    LossSpec(
        "nce_mae",
        11,
        "NCEMAELoss",
        "NCE + MAE",
        "alpha * nce + beta * (1 - p_y)",
        (_alpha(1.0), _beta(1.0)),
        _APL,
        notes="The MAE term is (1 - p_y), as in APL/ALFs whose alpha/beta users copy.",
        terms=("nce", "mae"),
    ),
    LossSpec(
        "nf_mae",
        12,
        "NFMAELoss",
        "NFL + MAE",
        "alpha * nfl + beta * (1 - p_y)",
        (_alpha(1.0), _beta(1.0), _gamma()),
        _APL,
        notes="The MAE term is (1 - p_y); exact focal gradient.",
        terms=("nfl", "mae"),
    ),
    LossSpec(
        "nce_rce",
        13,
        "NCERCELoss",
        "NCE + RCE",
        "alpha * nce + beta * rce",
        (_alpha(1.0), _beta(1.0), _rce_a()),
        _APL,
        terms=("nce", "rce"),
    ),
    LossSpec(
        "nce_agce",
        14,
        "NCEAGCELoss",
        "NCE + AGCE",
        "alpha * nce + beta * agce",
        (_alpha(1.0), _beta(4.0), Param("a", 6.0, 0.0, math.inf), Param("q", 1.5, 0.0, math.inf)),
        _ALF,
        terms=("nce", "agce"),
    ),
    LossSpec(
        "bitemp",
        15,
        "BiTemperedLoss",
        "Bi-tempered logistic loss",
        "-log_t1(p_y) - (1 - sum_k p_k^(2 - t1)) / (2 - t1),  p = tempered_softmax_t2(z + eps e_y)",
        (
            Param("t1", 0.8, 0.0, 2.0, low_open=False, doc="temperature of the log (bounded for t1 < 1)"),
            Param("t2", 1.2, 0.0, math.inf, doc="temperature of the softmax (heavy tail for t2 > 1)"),
            Param(
                "num_iters",
                5,
                1,
                1000,
                low_open=False,
                high_open=False,
                integer=True,
                doc="fixed-point iterations of the normalisation for t2 > 1",
            ),
        ),
        "Amid et al., Robust Bi-Tempered Logistic Loss Based on Bregman Divergences, NeurIPS 2019",
        bounded=False,
        notes="num_iters fixed-point steps for t2 > 1, as Google's implementation; for t2 < 1 the "
        "bisection runs to convergence (num_iters is ignored; Google runs num_iters bisection "
        "steps: at 5 its loss is off by 6.4e-3, median, see the README); t2 = 1 is the softmax. "
        "Gradient is the implicit-function one (forget factor p^(t2-t1), escorts p^t2 / sum p^t2); "
        "for t2 < t1 a class of probability 0 gets gradient 0 where Google's code gives NaN.",
    ),
)

#: Every loss of the library, by name (read-only).
LOSSES: Mapping[str, LossSpec] = MappingProxyType({s.name: s for s in _SPECS})

assert sorted(s.kind for s in _SPECS) == list(range(len(_SPECS))), "kinds must be 0..n-1"


def get_spec(loss: str | LossSpec) -> LossSpec:
    """Return the spec of ``loss`` or raise ``ValueError`` listing the valid names."""
    if isinstance(loss, LossSpec):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a str, got {type(loss).__name__}")
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}") from None
