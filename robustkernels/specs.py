"""The single source of truth for every loss: primitives, their combinations, parameters, defaults.

A loss is a weighted sum of **primitives**, functions of the label's log-probability written
once per backend (:data:`PRIMITIVES`): the label-only terms (ce, mae, gce, agce, aul, ael, rce,
focal), normalised forms ``L(p_y) / sum_k L(p_k)`` (nce, nfl, ngce; nmae and nrce are constant
rescalings, mae and rce being symmetric) and the bi-tempered loss. A :class:`LossSpec` names its
terms, which of its parameters weights each and which parameters each primitive reads. Every
backend composes the terms the same way; the kernels receive them as a bit mask of the
primitives present (:func:`term_mask`) and a fixed table of runtime float slots
(:data:`KERNEL_SLOTS`), so a new combination -- here or through :func:`combine` -- needs no
kernel change and no rebuild. What C++ needs from this module is generated into
``csrc/loss_kinds.h`` (``python -m robustkernels._codegen``).

Notation: ``p = softmax(z + eps * e_y)``, ``y`` the label, ``K`` the number of classes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ._numbers import is_finite, is_nan, is_real, runtime_floats, to_float

__all__ = [
    "Param",
    "Primitive",
    "Term",
    "BoundTerm",
    "LossSpec",
    "PRIMITIVES",
    "LOSSES",
    "KERNEL_SLOTS",
    "SOFT_TARGET_TERMS",
    "get_spec",
    "combine",
    "term_mask",
    "kernel_args",
    "terms_from_kernel_args",
    "LN_1E_MINUS_4",
]

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


# ---- primitives ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Primitive:
    """One function of ``log p_y`` (and, for a normalised form, of every ``log p_k``).

    Attributes:
        name: key in :data:`PRIMITIVES` and in :func:`combine`.
        bit: its bit in the kernels' term mask; also its order in :data:`KERNEL_SLOTS`.
        formula: the term in the README's notation.
        params: its own parameters, with their ranges and the defaults :func:`combine` uses.
        normalizes: for a normalised form ``L(p_y) / sum_k L(p_k)``, the primitive ``L``.
        bounded: whether the term is bounded in ``p_y``.
        soft_targets: whether the expected loss over a target distribution (probability targets,
            label smoothing) has a one-pass closed form every backend implements
            (``docs/drop-in.md``): the label-only terms and nce.
        affine: whether the term is ``c (1 - p_y)``, ``c`` a constant of ``K`` and its
            parameters; its expected loss over a target at ``eps = 0`` is then
            ``c (sum_k u_k - sum_k u_k p_k)``, which the kernels form without a pass per class.
    """

    name: str
    bit: int
    formula: str
    params: tuple[Param, ...] = ()
    normalizes: str = ""
    bounded: bool = True
    soft_targets: bool = True
    affine: bool = False


def _q(default: float, high: float = 1.0) -> Param:
    return Param("q", default, 0.0, high, high_open=high == math.inf, doc="exponent")


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


def _agce_params(a: float = 0.6, q: float = 0.6) -> tuple[Param, ...]:
    return (Param("a", a, 0.0, math.inf), Param("q", q, 0.0, math.inf))


def _aul_params(a: float = 5.5, q: float = 3.0) -> tuple[Param, ...]:
    return (Param("a", a, 1.0, math.inf, doc="must be > 1"), Param("q", q, 0.0, math.inf))


def _ael_a(a: float = 2.5) -> Param:
    return Param("a", a, 0.0, math.inf)


def _bitemp_params() -> tuple[Param, ...]:
    return (
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
    )


_PRIMITIVES = (
    Primitive("ce", 0, "-log p_y", bounded=False),
    Primitive("mae", 1, "1 - p_y", affine=True),
    Primitive("gce", 2, "(1 - p_y^q) / q", (_q(0.7),)),
    Primitive("agce", 3, "((a + 1)^q - (a + p_y)^q) / q", _agce_params()),
    Primitive("aul", 4, "((a - p_y)^q - (a - 1)^q) / q", _aul_params()),
    Primitive("ael", 5, "exp(-p_y / a)", (_ael_a(),)),
    Primitive("rce", 6, "-A (1 - p_y)", (_rce_a(),), affine=True),
    Primitive("focal", 7, "-(1 - p_y)^gamma log p_y", (_gamma(),), bounded=False),
    Primitive("nce", 8, "log p_y / sum_k log p_k", normalizes="ce"),
    Primitive("nfl", 9, "focal_y / sum_k focal_k", (_gamma(),), normalizes="focal", soft_targets=False),
    Primitive("ngce", 10, "(1 - p_y^q) / (K - sum_k p_k^q)", (_q(0.7),), normalizes="gce", soft_targets=False),
    # mae and rce are symmetric (sum_k (1 - p_k) = K - 1), so their normalised forms are constant
    # rescalings. nrce is the published code's: its 1 / 4 * (K - 1) multiplies by (K - 1) / 4.
    Primitive("nmae", 11, "(1 - p_y) / (K - 1)", affine=True),
    Primitive("nrce", 12, "(K - 1) / 4 * -A (1 - p_y)", (_rce_a(),), affine=True),
    Primitive("bitemp", 13, "bi-tempered logistic loss", _bitemp_params(), bounded=False, soft_targets=False),
)

#: Every primitive, by name (read-only), in bit order.
PRIMITIVES: Mapping[str, Primitive] = MappingProxyType({p.name: p for p in _PRIMITIVES})

assert [p.bit for p in _PRIMITIVES] == list(range(len(_PRIMITIVES))), "bits must be 0..n-1"

#: Term mask of the primitives with a one-pass expected loss over a target distribution.
SOFT_TARGET_TERMS: int = sum(1 << p.bit for p in _PRIMITIVES if p.soft_targets)


def _slot_names() -> tuple[str, ...]:
    names = []
    for prim in _PRIMITIVES:
        names.append(f"{prim.name}_weight")
        names += [f"{prim.name}_{p.name}" for p in prim.params]
    # Differences that vanish at an end of a parameter's range, formed here in double: rounding
    # the parameter to fp32 first and subtracting in the kernel keeps only the rounding error
    # (a = 1 + 1e-7 is 1 + 1.19e-7 in fp32: aul's a - 1 came out 19 % too large).
    names += ["aul_a_minus_1", "bitemp_two_minus_t1"]
    return tuple(names)


#: The kernels' runtime float arguments, in order: each primitive's weight and parameters, then
#: the derived slots. Slots of primitives a loss does not use hold 0.
KERNEL_SLOTS: tuple[str, ...] = _slot_names()
_SLOT = {name: i for i, name in enumerate(KERNEL_SLOTS)}


@dataclass(frozen=True)
class BoundTerm:
    """A primitive with its weight and parameter values: what the kernels evaluate."""

    primitive: Primitive
    weight: float
    params: Mapping[str, float]


def term_mask(terms: Sequence[BoundTerm]) -> int:
    """Bit mask of the primitives present: the only thing the kernels specialise on."""
    mask = 0
    for term in terms:
        mask |= 1 << term.primitive.bit
    return mask


def kernel_args(terms: Sequence[BoundTerm]) -> tuple[int, list[float]]:
    """``(term mask, slots)`` of :data:`KERNEL_SLOTS` for bound terms.

    The values pass through unchanged (a float traced by ``torch.compile(dynamic=True)`` stays
    traced); the derived slots are differences formed in double here.
    """
    slots: list[float] = [0.0] * len(KERNEL_SLOTS)
    for term in terms:
        name = term.primitive.name
        slots[_SLOT[f"{name}_weight"]] = term.weight
        for pname, value in term.params.items():
            slots[_SLOT[f"{name}_{pname}"]] = value
        if name == "aul":
            slots[_SLOT["aul_a_minus_1"]] = term.params["a"] - 1.0
        if name == "bitemp":
            slots[_SLOT["bitemp_two_minus_t1"]] = 2.0 - term.params["t1"]
    return term_mask(terms), slots


def terms_from_kernel_args(mask: int, slots: Sequence[float]) -> tuple[BoundTerm, ...]:
    """The inverse of :func:`kernel_args`: the bound terms a kernel call evaluates."""
    terms = []
    for prim in _PRIMITIVES:
        if mask >> prim.bit & 1:
            params = {p.name: slots[_SLOT[f"{prim.name}_{p.name}"]] for p in prim.params}
            terms.append(BoundTerm(prim, slots[_SLOT[f"{prim.name}_weight"]], MappingProxyType(params)))
    return tuple(terms)


# ---- losses -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One weighted primitive of a loss.

    ``weight`` is the name of the loss parameter that weights the term, or a constant. Each
    parameter of the primitive is read from the loss parameter of the same name unless ``bind``
    maps it to another (``(("q", "agce_q"),)``).
    """

    primitive: str
    weight: str | float = 1.0
    bind: tuple[tuple[str, str], ...] = ()

    def source(self, param: str) -> str:
        return dict(self.bind).get(param, param)


@dataclass(frozen=True)
class LossSpec:
    """Definition of one loss.

    Attributes:
        name: registry key and ``loss=`` argument of :func:`robustkernels.robust_loss`.
        kind: its index in :data:`LOSSES` (the README's order); -1 for :func:`combine`'s losses.
        class_name: name of the generated ``nn.Module``.
        title: human-readable name.
        formula: per-sample loss in the README's notation.
        params: hyper-parameters, in the order of :meth:`resolve`'s values.
        citation: where the loss comes from (for published defaults, the file they are from).
        terms: the weighted primitives the loss is the sum of; a loss that is one primitive with
            weight 1 leaves it empty and names that primitive.
        symmetric_sum: for symmetric losses, ``sum_k L(z, k)`` as a function of ``(K, params)``;
            ``None`` otherwise. Used by the property tests.
        bounded: whether the loss is bounded in ``p_y`` (the paper's subject).
        notes: differences from published code users should know about.
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
    terms: tuple[Term, ...] = ()
    recipe: tuple[object, ...] | None = field(default=None, repr=False, compare=False)
    param_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.terms:
            object.__setattr__(self, "terms", (Term(self.name),))
        object.__setattr__(self, "param_index", MappingProxyType({p.name: i for i, p in enumerate(self.params)}))
        self._check_terms()

    def _check_terms(self) -> None:
        used: set[str] = set()
        names = [t.primitive for t in self.terms]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: a primitive may appear once, got {names}")
        for term in self.terms:
            prim = PRIMITIVES.get(term.primitive)
            if prim is None:
                raise ValueError(f"{self.name}: unknown primitive {term.primitive!r}; valid: {', '.join(PRIMITIVES)}")
            if isinstance(term.weight, str):
                used.add(term.weight)
            used.update(term.source(p.name) for p in prim.params)
        if "bitemp" in names and len(names) > 1:
            raise ValueError(f"{self.name}: bitemp has its own softmax and cannot be combined with other terms")
        missing = used - set(self.param_index)
        unused = set(self.param_index) - used
        if missing or unused:
            raise ValueError(
                f"{self.name}: terms read {sorted(missing)} (not parameters), leave {sorted(unused)} unused"
            )

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # A spec is pickled by name (or by its combine() call): the registry entry is the one
        # definition (the lambdas in symmetric_sum and the read-only param_index could not be
        # pickled anyway), and a copied or unpickled module then holds an equal spec.
        if self.recipe is not None:
            return _combine_from_recipe, (self.recipe,)
        if LOSSES.get(self.name) is not self:
            raise TypeError(f"only the registered specs of robustkernels.LOSSES can be pickled, not {self.name!r}")
        return get_spec, (self.name,)

    @property
    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    @property
    def primitives(self) -> tuple[Primitive, ...]:
        """The primitives of the loss's terms, in the terms' order."""
        return tuple(PRIMITIVES[t.primitive] for t in self.terms)

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

    def as_dict(self, values: Sequence[float]) -> dict[str, float]:
        return {p.name: v for p, v in zip(self.params, values)}

    def bind(self, values: Sequence[float]) -> tuple[BoundTerm, ...]:
        """The loss's terms with the weights and primitive parameters taken from ``values``
        (in spec order, as :meth:`resolve` returns them)."""
        named = self.as_dict(values)
        bound = []
        for term, prim in zip(self.terms, self.primitives):
            weight = named[term.weight] if isinstance(term.weight, str) else term.weight
            params = {p.name: named[term.source(p.name)] for p in prim.params}
            bound.append(BoundTerm(prim, weight, MappingProxyType(params)))
        return tuple(bound)

    def kernel_args(self, values: Sequence[float]) -> tuple[int, list[float]]:
        """``(term mask, slots)`` the fused kernels receive for parameter values ``values``."""
        return kernel_args(self.bind(values))

    def kernel_call_args(self, values: Sequence[float]) -> tuple[int, list[float]]:
        """:meth:`kernel_args` with the slots as the fused ops' ``float[]`` argument (see
        :func:`~robustkernels._numbers.runtime_floats`); the list is shared, never to be modified.

        Memoised for plain float values, which a training loop passes unchanged at every step, so
        the terms are bound and the slots formed once instead of at every call. Traced (symbolic)
        values are formed afresh each time and never stored.
        """
        values = tuple(values)
        if all(type(v) is float for v in values):
            return _memoised_call_args(self, values)
        mask, slots = self.kernel_args(values)
        return mask, runtime_floats(slots)

    @property
    def mask(self) -> int:
        """The term mask of the loss (it does not depend on the parameter values)."""
        return sum(1 << prim.bit for prim in self.primitives)

    @property
    def soft_targets(self) -> bool:
        """Whether probability targets and label smoothing are supported (every term has a
        one-pass expected loss over a target distribution, ``docs/drop-in.md``)."""
        return all(prim.soft_targets for prim in self.primitives)


# Parameter factories keep the table below readable.
def _alpha(default: float) -> Param:
    return Param("alpha", default, 0.0, math.inf, low_open=False, doc="weight of the active term")


def _beta(default: float) -> Param:
    return Param("beta", default, 0.0, math.inf, low_open=False, doc="weight of the passive term")


def _scale(default: float, doc: str = "weight of the loss") -> Param:
    return Param("scale", default, 0.0, math.inf, doc=doc)


def _pair(first: str, second: str) -> tuple[Term, Term]:
    """``alpha * first + beta * second``: the published combinations' weighting."""
    return (Term(first, "alpha"), Term(second, "beta"))


_APL = "Ma et al., Normalized Loss Functions for Deep Learning with Noisy Labels, ICML 2020"
_ALF = "Zhou et al., Asymmetric Loss Functions for Learning with Noisy Labels, ICML 2021"
_SCE = "Wang et al., Symmetric Cross Entropy for Robust Learning with Noisy Labels, ICCV 2019"
_APL_CODE = "HanxunH/Active-Passive-Losses"
_ALF_CODE = "hitcszx/ALFs"

_MAE_AS_PUBLISHED = "The MAE term is (1 - p_y), as in APL/ALFs whose alpha/beta users copy."
_GCE_CLAMP = "No clamp of p at 1e-7 as in published code: p^q is formed as exp(q log p)."
_APL_IGNORES_ALPHA = "APL's class ignores alpha (its GCE term is unweighted): alpha = 1 matches it."
_APL_IGNORES_BOTH = "APL's class ignores alpha and beta (both terms unweighted): alpha = beta = 1 matches it."
_EXACT_NFL = "Exact gradient; APL/ALFs detach every (1 - p_k)^gamma factor."

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
        (_scale(2.0, "2 is the l1 distance to the one-hot label"),),
        "Ghosh et al., Robust Loss Functions under Label Noise for Deep Neural Networks, AAAI 2017",
        symmetric_sum=lambda k, prm: prm["scale"] * (k - 1),
        terms=(Term("mae", "scale"),),
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
        notes=_GCE_CLAMP + " So the gradient never vanishes artificially.",
    ),
    LossSpec(
        "agce",
        3,
        "AGCELoss",
        "Asymmetric generalized cross entropy",
        "((a + 1)^q - (a + p_y)^q) / q",
        _agce_params(),
        _ALF,
    ),
    LossSpec(
        "aul",
        4,
        "AULLoss",
        "Asymmetric unhinged loss",
        "((a - p_y)^q - (a - 1)^q) / q",
        _aul_params(),
        _ALF,
    ),
    LossSpec("ael", 5, "AELLoss", "Asymmetric exponential loss", "exp(-p_y / a)", (_ael_a(),), _ALF),
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
        notes=_EXACT_NFL,
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
        terms=_pair("ce", "rce"),
    ),
    LossSpec(
        "nce_mae",
        11,
        "NCEMAELoss",
        "NCE + MAE",
        "alpha * nce + beta * (1 - p_y)",
        (_alpha(1.0), _beta(1.0)),
        _APL,
        notes=_MAE_AS_PUBLISHED,
        terms=_pair("nce", "mae"),
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
        terms=_pair("nfl", "mae"),
    ),
    LossSpec(
        "nce_rce",
        13,
        "NCERCELoss",
        "NCE + RCE",
        "alpha * nce + beta * rce",
        (_alpha(1.0), _beta(1.0), _rce_a()),
        _APL,
        terms=_pair("nce", "rce"),
    ),
    LossSpec(
        "nce_agce",
        14,
        "NCEAGCELoss",
        "NCE + AGCE",
        "alpha * nce + beta * agce",
        (_alpha(1.0), _beta(4.0), *_agce_params(6.0, 1.5)),
        _ALF,
        terms=_pair("nce", "agce"),
    ),
    LossSpec(
        "bitemp",
        15,
        "BiTemperedLoss",
        "Bi-tempered logistic loss",
        "-log_t1(p_y) - (1 - sum_k p_k^(2 - t1)) / (2 - t1),  p = tempered_softmax_t2(z + eps e_y)",
        _bitemp_params(),
        "Amid et al., Robust Bi-Tempered Logistic Loss Based on Bregman Divergences, NeurIPS 2019",
        bounded=False,
        notes="num_iters fixed-point steps for t2 > 1, as Google's implementation; for t2 < 1 the "
        "bisection runs to convergence (num_iters is ignored; Google runs num_iters bisection "
        "steps: at 5 its loss is off by 6.4e-3, median, see the README); t2 = 1 is the softmax. "
        "Gradient is the implicit-function one (forget factor p^(t2-t1), escorts p^t2 / sum p^t2); "
        "for t2 < t1 a class of probability 0 gets gradient 0 where Google's code gives NaN.",
    ),
    LossSpec(
        "ngce",
        16,
        "NGCELoss",
        "Normalized generalized cross entropy",
        "scale * (1 - p_y^q) / (K - sum_k p_k^q)",
        (_scale(1.0), Param("q", 0.1, 0.0, 1.0, high_open=False, doc="Box-Cox exponent")),
        f"{_APL}; defaults from {_APL_CODE} configs/cifar10/sym/ngce.yaml",
        symmetric_sum=lambda k, prm: prm["scale"],
        notes=_GCE_CLAMP + " The normaliser K - sum_k p_k^q is formed as sum_k (1 - p_k^q), which "
        "does not cancel for small q.",
        terms=(Term("ngce", "scale"),),
    ),
    LossSpec(
        "nmae",
        17,
        "NMAELoss",
        "Normalized mean absolute error",
        "scale * (1 - p_y) / (K - 1)",
        (_scale(1.0),),
        f"{_APL}; formula and default of {_ALF_CODE} lnl/losses.py NMAE",
        symmetric_sum=lambda k, prm: prm["scale"],
        notes="ALFs' normaliser 1 / (K - 1), the exact normalised MAE; APL's "
        "NormalizedMeanAbsoluteError uses 1 / (2 (K - 1)): its scale s is scale = s / 2 here.",
        terms=(Term("nmae", "scale"),),
    ),
    LossSpec(
        "nrce",
        18,
        "NRCELoss",
        "Normalized reverse cross entropy (as published)",
        "scale * (K - 1) / 4 * -A * (1 - p_y)",
        (_scale(1.0), _rce_a()),
        f"{_APL}; formula of {_APL_CODE} loss.py NormalizedReverseCrossEntropy and {_ALF_CODE} lnl/losses.py NRCELoss",
        symmetric_sum=lambda k, prm: prm["scale"] * (k - 1) ** 2 / 4 * -prm["A"],
        notes="As APL and ALFs compute it: their normaliser `1 / 4 * (K - 1)` multiplies RCE by "
        "(K - 1) / 4 (the 1 / (4 (K - 1)) of the paper read with Python's precedence). The exact "
        "normalised RCE, (1 - p_y) / (K - 1), is nmae.",
        terms=(Term("nrce", "scale"),),
    ),
    LossSpec(
        "gce_mae",
        19,
        "GCEMAELoss",
        "GCE + MAE",
        "alpha * gce + beta * (1 - p_y)",
        (_alpha(1.0), _beta(1.0), _q(0.7)),
        f"{_APL}; {_APL_CODE} loss.py GCEandMAE (q = 0.7; no config)",
        notes=f"{_MAE_AS_PUBLISHED} {_APL_IGNORES_ALPHA} {_GCE_CLAMP}",
        terms=_pair("gce", "mae"),
    ),
    LossSpec(
        "gce_rce",
        20,
        "GCERCELoss",
        "GCE + RCE",
        "alpha * gce + beta * rce",
        (_alpha(1.0), _beta(1.0), _q(0.7), _rce_a()),
        f"{_APL}; {_APL_CODE} loss.py GCEandRCE (q = 0.7; no config)",
        notes=f"{_APL_IGNORES_ALPHA} {_GCE_CLAMP}",
        terms=_pair("gce", "rce"),
    ),
    LossSpec(
        "gce_nce",
        21,
        "GCENCELoss",
        "GCE + NCE",
        "alpha * gce + beta * nce",
        (_alpha(1.0), _beta(1.0), _q(0.7)),
        f"{_APL}; {_APL_CODE} loss.py GCEandNCE (q = 0.7; no config)",
        notes=f"{_APL_IGNORES_BOTH} {_GCE_CLAMP}",
        terms=_pair("gce", "nce"),
    ),
    LossSpec(
        "ngce_nce",
        22,
        "NGCENCELoss",
        "NGCE + NCE",
        "alpha * ngce + beta * nce",
        (_alpha(1.0), _beta(1.0), _q(0.7)),
        f"{_APL}; {_APL_CODE} loss.py NGCEandNCE (q = 0.7; no config)",
        notes=_GCE_CLAMP,
        terms=_pair("ngce", "nce"),
    ),
    LossSpec(
        "ngce_mae",
        23,
        "NGCEMAELoss",
        "NGCE + MAE",
        "alpha * ngce + beta * (1 - p_y)",
        (_alpha(1.0), _beta(1.0), _q(0.1)),
        f"{_APL}; defaults from {_APL_CODE} configs/cifar10/sym/ngce+mae.yaml",
        notes=f"{_MAE_AS_PUBLISHED} {_GCE_CLAMP}",
        terms=_pair("ngce", "mae"),
    ),
    LossSpec(
        "ngce_rce",
        24,
        "NGCERCELoss",
        "NGCE + RCE",
        "alpha * ngce + beta * rce",
        (_alpha(1.0), _beta(1.0), _q(0.1), _rce_a()),
        f"{_APL}; defaults from {_APL_CODE} configs/cifar10/sym/ngce+rce.yaml",
        notes=_GCE_CLAMP,
        terms=_pair("ngce", "rce"),
    ),
    LossSpec(
        "mae_rce",
        25,
        "MAERCELoss",
        "MAE + RCE",
        "alpha * (1 - p_y) + beta * rce",
        (_alpha(1.0), _beta(1.0), _rce_a()),
        f"{_APL}; {_APL_CODE} loss.py MAEandRCE (no config)",
        symmetric_sum=lambda k, prm: (prm["alpha"] - prm["beta"] * prm["A"]) * (k - 1),
        notes=_MAE_AS_PUBLISHED,
        terms=_pair("mae", "rce"),
    ),
    LossSpec(
        "nfl_nce",
        26,
        "NFLNCELoss",
        "NFL + NCE",
        "alpha * nfl + beta * nce",
        (_alpha(1.0), _beta(1.0), _gamma()),
        f"{_APL}; {_APL_CODE} loss.py NFLandNCE (gamma = 0.5; no config)",
        symmetric_sum=lambda k, prm: prm["alpha"] + prm["beta"],
        notes=_EXACT_NFL,
        terms=_pair("nfl", "nce"),
    ),
    LossSpec(
        "nfl_rce",
        27,
        "NFLRCELoss",
        "NFL + RCE",
        "alpha * nfl + beta * rce",
        (_alpha(1.0), _beta(1.0), _gamma(), _rce_a()),
        f"{_APL}; defaults from {_ALF_CODE} config.py CIFAR10_CONFIG['NFL+RCE']",
        notes=_EXACT_NFL,
        terms=_pair("nfl", "rce"),
    ),
    LossSpec(
        "nce_aul",
        28,
        "NCEAULLoss",
        "NCE + AUL",
        "alpha * nce + beta * aul",
        (_alpha(1.0), _beta(4.0), *_aul_params(6.3, 1.5)),
        f"{_ALF}; defaults from {_ALF_CODE} config.py CIFAR10_CONFIG['NCEandAUL'] (class NCEandAUE)",
        terms=_pair("nce", "aul"),
    ),
    LossSpec(
        "nce_ael",
        29,
        "NCEAELLoss",
        "NCE + AEL",
        "alpha * nce + beta * ael",
        (_alpha(1.0), _beta(4.0), _ael_a(5.0)),
        f"{_ALF}; defaults from {_ALF_CODE} config.py CIFAR10_CONFIG['NCEandAEL']",
        terms=_pair("nce", "ael"),
    ),
    LossSpec(
        "nfl_agce",
        30,
        "NFLAGCELoss",
        "NFL + AGCE",
        "alpha * nfl + beta * agce",
        (_alpha(1.0), _beta(1.0), _gamma(), *_agce_params(3.0, 2.0)),
        f"{_ALF}; defaults of {_ALF_CODE} lnl/losses.py NFLandAGCE (no config)",
        notes=_EXACT_NFL,
        terms=_pair("nfl", "agce"),
    ),
    LossSpec(
        "nfl_aul",
        31,
        "NFLAULLoss",
        "NFL + AUL",
        "alpha * nfl + beta * aul",
        (_alpha(1.0), _beta(1.0), _gamma(), *_aul_params(1.5, 0.9)),
        f"{_ALF}; defaults of {_ALF_CODE} lnl/losses.py NFLandAUE (no config)",
        notes=_EXACT_NFL,
        terms=_pair("nfl", "aul"),
    ),
    LossSpec(
        "nfl_ael",
        32,
        "NFLAELLoss",
        "NFL + AEL",
        "alpha * nfl + beta * ael",
        (_alpha(1.0), _beta(1.0), _gamma(), _ael_a(3.0)),
        f"{_ALF}; defaults of {_ALF_CODE} lnl/losses.py NFLandAEL (no config)",
        notes=_EXACT_NFL,
        terms=_pair("nfl", "ael"),
    ),
)

#: Every loss of the library, by name (read-only).
LOSSES: Mapping[str, LossSpec] = MappingProxyType({s.name: s for s in _SPECS})

assert [s.kind for s in _SPECS] == list(range(len(_SPECS))), "kinds must be 0..n-1 in table order"


@functools.lru_cache(maxsize=1024)
def _memoised_call_args(spec: LossSpec, values: tuple[float, ...]) -> tuple[int, list[float]]:
    mask, slots = spec.kernel_args(values)
    return mask, runtime_floats(slots)


def get_spec(loss: str | LossSpec) -> LossSpec:
    """Return the spec of ``loss`` or raise ``ValueError`` listing the valid names."""
    if isinstance(loss, LossSpec):
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a str or a LossSpec, got {type(loss).__name__}")
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; valid losses: {', '.join(LOSSES)}") from None


# ---- user-defined combinations ------------------------------------------------------------------


def combine(weights: Mapping[str, float], **params: Mapping[str, float]) -> LossSpec:
    """A loss that is a weighted sum of primitives, usable wherever a loss name is.

    Args:
        weights: primitive name -> weight (a finite number), e.g. ``{"nce": 1.0, "agce": 0.1}``.
        **params: for a primitive with parameters, its values by name (``agce={"a": 6.0}``);
            parameters not given take the primitive's defaults (:data:`PRIMITIVES`).

    Returns:
        A :class:`LossSpec` for ``loss=`` of :func:`robustkernels.robust_loss`, the functional
        API and :class:`robustkernels.RobustLoss`, on every backend, with no rebuild. Its
        parameters are named ``<primitive>_<parameter>`` (``agce_q``) and may be overridden per
        call like any loss's.

    Raises:
        ValueError: an unknown primitive or an empty ``weights``; a weight that is not finite;
            ``bitemp`` with other terms.
        TypeError: parameters for a primitive not in ``weights``, for one without parameters, or
            an unknown parameter name.

    Example::

        >>> spec = rk.combine({"nce": 1.0, "agce": 0.1}, agce={"a": 6.0, "q": 1.5})
        >>> loss = rk.robust_loss(logits, target, loss=spec, epsilon="auto")
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("combine: weights must be a non-empty mapping of primitive name -> weight")
    unknown = [name for name in weights if name not in PRIMITIVES]
    if unknown:
        raise ValueError(
            f"combine: unknown primitive(s) {', '.join(map(repr, unknown))}; valid: {', '.join(PRIMITIVES)}"
        )
    stray = sorted(set(params) - set(weights))
    if stray:
        raise TypeError(f"combine: parameters given for {', '.join(stray)}, which is not in weights")
    for name, weight in weights.items():
        if not is_real(weight) or not is_finite(to_float(weight)):
            raise ValueError(f"combine: weights[{name!r}] must be a finite number, got {weight!r}")
    loss_params: list[Param] = []
    terms = []
    for name, weight in weights.items():
        prim = PRIMITIVES[name]
        given = dict(params.get(name, {}))
        if given and not prim.params:
            raise TypeError(f"combine: {name} takes no parameters, got {', '.join(sorted(given))}")
        bad = sorted(set(given) - {p.name for p in prim.params})
        if bad:
            valid = ", ".join(p.name for p in prim.params)
            raise TypeError(f"combine: unknown parameter(s) {', '.join(bad)} of {name}; valid: {valid}")
        for p in prim.params:
            value = p.check(given.get(p.name, p.default), name)
            loss_params.append(_renamed(p, f"{name}_{p.name}", value))
        terms.append(Term(name, to_float(weight), tuple((p.name, f"{name}_{p.name}") for p in prim.params)))
    label = ", ".join(f"{name}={to_float(w):g}" for name, w in weights.items())
    recipe = (
        tuple((n, to_float(w)) for n, w in weights.items()),
        tuple((n, tuple(sorted(dict(v).items()))) for n, v in params.items()),
    )
    return LossSpec(
        f"combine({label})",
        -1,
        "CombinedLoss",
        "Combination",
        " + ".join(f"{to_float(w):g} * {name}" for name, w in weights.items()),
        tuple(loss_params),
        "robustkernels.combine",
        bounded=all(PRIMITIVES[n].bounded for n in weights),
        terms=tuple(terms),
        recipe=recipe,
    )


def _renamed(param: Param, name: str, default: float) -> Param:
    return Param(name, default, param.low, param.high, param.low_open, param.high_open, param.integer, param.doc)


def _combine_from_recipe(recipe: tuple[object, ...]) -> LossSpec:
    weights, params = recipe
    return combine(dict(weights), **{name: dict(values) for name, values in params})
