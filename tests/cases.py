"""The parameter cases of the behaviour suite (tests/test_behaviour.py), in one table.

:data:`CASES` holds, for every loss of ``rk.LOSSES``, its spec defaults and the non-default
settings of ``independent.NON_DEFAULT_PARAMS``; the settings that take other branches of the
kernels (bi-tempered t2 < 1 bisection, t2 = 1 softmax and t1 = t2 = 1, the focal weight at
gamma = 0, GCE / NGCE at q = 1); parameters near an end of their range (aul a = 1 + 1e-7, agce
a -> 0, GCE / NGCE q -> 0, bitemp t1 -> 2 and t2 -> 1); and ``rk.combine`` specs.

A test asks for a set (:func:`cases`): "all", :data:`CORE` (every loss at its defaults, the
branches, some range ends, the combine specs), and for the Triton interpreter, where a call costs
0.1 s (seconds column-tiled, or for bitemp's t2 < 1 bisection), smaller ones: :data:`TRITON`
(every loss, branches and combine specs), :data:`SMALL` and :data:`TINY` (for behaviour that does
not depend on the loss), :data:`TILED` (its column-tiled runs).

Tolerances are relative, per row (max-norm over the row for gradients), against the float64
reference on the same quantised inputs; they are the ones tests/test_native.py and
tests/triton/ already hold, with the measured exceptions recorded on the case.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import independent
import torch

import robustkernels as rk

#: The sets of cases a test can ask for (see :func:`cases`).
CORE = "core"  # every loss at its defaults, the branch cases and the combine specs
TILED = "tiled"  # the few cases that run past the single-pass limit on the Triton interpreter
TRITON = "triton"  # the cases the Triton interpreter runs where a test covers CORE elsewhere
SMALL = "small"  # a few cases for behaviour that does not depend on the loss (masking, autograd)
TINY = "tiny"  # the least the Triton interpreter runs a loss-independent test on


@dataclass(frozen=True)
class Case:
    """One loss and its parameters, as ``rk.robust_loss(..., loss, **params)`` receives them.

    Attributes:
        id: the pytest id.
        loss: a loss name or an ``rk.combine`` spec.
        params: keyword parameters (over the spec defaults).
        sets: the sets of :func:`cases` it belongs to besides "all".
        terms: for a combine spec, primitive -> (weight, its parameters): what the NumPy oracle
            (``independent.combination_loss_and_grad``) evaluates.
        grad_rtol: gradient tolerance of fp32 math.
        loss_rtol: loss tolerance of fp32 math.
        loss_atol: absolute floor of the fp32 loss (bitemp: see :data:`BITEMP_LOSS_ATOL`).
        slow_on_triton: seconds a call in the Triton interpreter (bitemp's t2 < 1 bisection): run
            there by the tests of values and gradients only.
        oracle_ok: whether the NumPy oracle holds 1e-10 here: its probability-space formulas
            cancel near the ends of a parameter's range (a - p_y at a -> 1, u^(1-t) - 1 at t -> 1).
        fd_ok: whether finite differences (gradcheck) resolve the gradient.
    """

    id: str
    loss: str | rk.LossSpec
    params: Mapping[str, float] = field(default_factory=dict)
    sets: frozenset[str] = frozenset()
    terms: Mapping[str, tuple[float, Mapping[str, float]]] | None = None
    grad_rtol: float = 2e-5
    loss_rtol: float = 2e-5
    loss_atol: float = 0.0
    slow_on_triton: bool = False
    oracle_ok: bool = True
    fd_ok: bool = True

    @property
    def spec(self) -> rk.LossSpec:
        return rk.get_spec(self.loss)

    @property
    def is_bitemp(self) -> bool:
        return self.spec.primitives[0].name == "bitemp"

    @property
    def temperatures(self) -> tuple[float, float]:
        """bitemp's ``(t1, t2)`` (also of a combine spec)."""
        prm = {k.removeprefix("bitemp_"): v for k, v in self.all_params.items()}
        return prm["t1"], prm["t2"]

    @property
    def all_params(self) -> dict[str, float]:
        """Every parameter's value (defaults filled in)."""
        return {**self.spec.defaults, **self.params}

    def converged(self) -> dict[str, float]:
        """``params`` with bitemp's fixed-point iteration converged (t2 > 1): its implicit
        gradient is exact only then, which finite differences see (gradcheck)."""
        if not self.is_bitemp:
            return dict(self.params)
        name = "num_iters" if "num_iters" in self.spec.defaults else "bitemp_num_iters"
        return {**self.params, name: 200}

    def oracle(self, logits, target, epsilon):
        """The NumPy float64 oracle's per-row loss and gradient (tests/independent.py)."""
        if self.terms is not None:
            return independent.combination_loss_and_grad(self.terms, logits, target, epsilon)
        return independent.loss_and_grad(self.loss, self.all_params, logits, target, epsilon)


#: bitemp's loss -log_t1(p_y) - (1 - sum_k p_k^(2 - t1)) / (2 - t1) is a difference of O(1) terms:
#: fp32 leaves ulp(1) of 1 - sum_k p_k^(2 - t1), an absolute floor of a few 2^-24 where the loss
#: is small (measured: 3.2e-8 in the Triton kernel on a row of loss 3.2e-5, t2 = 0.8; 1e-7 in the
#: fp32 torch backend at t1 = t2 = 1 on a row of loss 1e-9).
BITEMP_LOSS_ATOL = 4 * 2.0**-24


def _bitemp_rtols(t2: float) -> dict[str, object]:
    # t2 < 1: p_k = exp_t(a_k - lambda) near the edge of the support is ill-conditioned in
    # lambda; the pure-PyTorch reference run in fp32 is off from its float64 run as much as the
    # kernels (tests/triton/_triton_cases.py): here by up to 3.0e-4 in the gradient and 1.1e-4 in
    # the loss (K = 7, t1 = 0.5, t2 = 0.8, measured).
    rtols = {"grad_rtol": 1e-3, "loss_rtol": 3e-4, "slow_on_triton": True} if t2 < 1.0 else {}
    return {**rtols, "loss_atol": BITEMP_LOSS_ATOL}


def _case(loss, params=None, *, sets=(), suffix=None, **kw) -> Case:
    params = dict(params or {})
    name = loss if isinstance(loss, str) else "combine"
    if suffix is None:
        suffix = "-".join(f"{k}={v:.10g}" for k, v in params.items())
    if name == "bitemp":
        kw = {**_bitemp_rtols({**rk.LOSSES["bitemp"].defaults, **params}["t2"]), **kw}
    return Case(f"{name}-{suffix}" if suffix else name, loss, params, frozenset(sets), **kw)


def _combined(label: str, weights: dict, sets=(), **params) -> Case:
    """A ``rk.combine`` case with the terms the NumPy oracle needs (defaults filled in)."""
    spec = rk.combine(weights, **params)
    terms = {
        n: (float(w), {**{p.name: p.default for p in rk.PRIMITIVES[n].params}, **params.get(n, {})})
        for n, w in weights.items()
    }
    kw = _bitemp_rtols(terms["bitemp"][1]["t2"]) if "bitemp" in weights else {}
    return Case(f"combine-{label}", spec, {}, frozenset(sets), terms, **kw)


_EVERYWHERE = (CORE, TRITON)

# Every loss at its defaults: core everywhere, the Triton interpreter included.
_SMALL = {"mae", "nce", "ngce", "bitemp"}  # with bitemp at t2 = 1 and every primitive at once
_DEFAULTS = [_case(name, sets=(*_EVERYWHERE, SMALL) if name in _SMALL else _EVERYWHERE) for name in rk.LOSSES]

# The parameter plumbing: every parameter of every loss away from its default.
_NON_DEFAULT = [_case(name, prm, suffix="other") for name, prm in independent.NON_DEFAULT_PARAMS.items()]

# Branches the defaults do not take.
_BRANCHES = [
    _case("bitemp", {"t1": 0.5, "t2": 0.8}, sets=_EVERYWHERE),  # t2 < 1: bisection, finite support
    _case("bitemp", {"t1": 0.7, "t2": 1.0}, sets=(*_EVERYWHERE, SMALL)),  # t2 = 1: the softmax
    _case("bitemp", {"t1": 1.0, "t2": 1.0}, sets=(CORE,)),  # cross entropy
    _case("bitemp", {"t1": 0.9, "t2": 0.6}, sets=(CORE,)),  # t2 < t1: forget factor 0 where p = 0
    # 1 / (t2 - 1) a whole number (the default t2 = 1.2 has 5): the partition by products; 2.0
    # at the end of that range (a power of 1), 1.4 off it (2.5: the log1p and exp).
    _case("bitemp", {"t1": 0.6, "t2": 2.0}, sets=(CORE,)),
    _case("bitemp", {"t1": 0.6, "t2": 1.4}, sets=(CORE,)),
    _case("focal", {"gamma": 0.0}, sets=_EVERYWHERE),  # weight 1: cross entropy
    _case("nfl", {"gamma": 0.0}, sets=(CORE,)),  # nce
    _case("nfl_agce", {"gamma": 0.0}, sets=(CORE,)),
    _case("gce", {"q": 1.0}, sets=_EVERYWHERE),  # mae / 1
    # nmae. At q = 1 the normaliser's gradient -q (p_j^q - p_j sum_k p_k^q) is 0 analytically and
    # fp32 leaves ulp(1) L p_j / den of it: up to 2.5e-4 of a row's gradient in the fp32 torch
    # backend (p_y = 3e-4, gradient 1e-4), measured.
    _case("ngce", {"q": 1.0}, sets=_EVERYWHERE, grad_rtol=1e-3),
    _case("ngce_mae", {"q": 1.0}, sets=(CORE,)),
]

# Parameters near an end of their range, where a difference vanishes: formed in double on the host
# (aul's a - 1, bitemp's 2 - t1), without cancellation in the kernel (agce's log of
# (a + p_y) / (a + 1) for a -> 0, NGCE's sum_k (1 - p_k^q) for q -> 0).
_RANGE_ENDS = [
    _case("aul", {"a": 1.0 + 1e-7, "q": 0.5}, sets=_EVERYWHERE, oracle_ok=False),
    _case("aul", {"a": 1.0 + 1e-7, "q": 3.0}, oracle_ok=False),
    _case("nce_aul", {"a": 1.0 + 1e-7}, sets=(CORE,), oracle_ok=False),
    _case("nfl_aul", {"a": 1.0001, "q": 3.0}, oracle_ok=False),
    _case("agce", {"a": 1e-7, "q": 1e-8}, sets=_EVERYWHERE, oracle_ok=False),
    _case("agce", {"a": 1e-30, "q": 3.0}, oracle_ok=False),
    _case("nce_agce", {"a": 1e-7, "q": 1e-8}, oracle_ok=False),
    _case("nfl_agce", {"a": 1e-7, "q": 1e-8}, sets=(CORE,), oracle_ok=False),
    _case("gce", {"q": 1e-6}, sets=(CORE,), oracle_ok=False),
    _case("ngce", {"q": 1e-6}, sets=_EVERYWHERE, oracle_ok=False),
    _case("ngce_rce", {"q": 1e-6}, oracle_ok=False),
    # (1 - sum_k p_k^(2 - t1)) / (2 - t1) is 1e8: finite differences keep 1e-2 of its gradient
    _case("bitemp", {"t1": 2.0 - 1e-7, "t2": 1.2}, sets=(CORE,), oracle_ok=False, fd_ok=False),
    _case("bitemp", {"t1": 0.5, "t2": 1.0 + 1e-7}, sets=_EVERYWHERE, oracle_ok=False),
    _case("bitemp", {"t1": 0.5, "t2": 1.0 - 1e-7}, oracle_ok=False),
]

#: Every primitive but bitemp in one spec, with distinct weights and non-default parameters: on the
#: Triton interpreter it stands in for the losses where a call costs seconds (column-tiled rows).
ALL_PRIMITIVES = {n: round(0.1 + 0.15 * i, 2) for i, n in enumerate(rk.PRIMITIVES) if n != "bitemp"}
_ALL_PRIMITIVE_PARAMS = {
    "gce": {"q": 0.4},
    "agce": {"a": 2.0, "q": 1.2},
    "aul": {"a": 1.7, "q": 2.0},
    "ael": {"a": 1.5},
    "rce": {"A": -3.0},
    "focal": {"gamma": 1.5},
    "nfl": {"gamma": 0.8},
    "ngce": {"q": 0.8},
    "nrce": {"A": -2.0},
}

_COMBINED = [
    _combined(
        "nfl-ngce-nce-agce",
        {"nfl": 1.0, "ngce": 0.5, "nce": 0.3, "agce": 0.2},
        _EVERYWHERE,
        nfl={"gamma": 1.5},
        ngce={"q": 0.3},
        agce={"a": 2.0, "q": 1.2},
    ),
    _combined("ce-mae", {"ce": 0.5, "mae": 2.0}, (*_EVERYWHERE, TINY)),  # two terms, the cheapest kernel
    _combined("nmae-nrce", {"nmae": 1.0, "nrce": 0.1}, _EVERYWHERE, nrce={"A": -3.0}),
    _combined("bitemp", {"bitemp": 1.0}, _EVERYWHERE, bitemp={"t1": 0.6, "t2": 1.4}),
    _combined("bitemp-weighted-t2<1", {"bitemp": 2.5}, (CORE,), bitemp={"t1": 0.8, "t2": 0.9}),
    _combined("focal-alone", {"focal": 2.0}, (CORE,), focal={"gamma": 3.0}),
    _combined("all-primitives", ALL_PRIMITIVES, (*_EVERYWHERE, TILED, SMALL), **_ALL_PRIMITIVE_PARAMS),
]

#: The masks the Triton interpreter runs past its single-pass limit (seconds a call): every
#: primitive at once, the normalised forms alone (their sums over the row are the tiled code), and
#: the bi-tempered branches but t2 < 1 (its tiled bisection costs 16 s a row in the interpreter; it
#: runs in a single pass there, and tiled on the other backends).
_TILED_EXTRA = [
    _case("nce", sets=(TILED,), suffix="tiled"),
    _case("nfl", sets=(TILED,), suffix="tiled"),
    _case("ngce", sets=(TILED,), suffix="tiled"),
    _case("mae", sets=(TILED,), suffix="tiled"),
    _case("bitemp", sets=(TILED,), suffix="tiled"),
    _case("bitemp", {"t1": 0.7, "t2": 1.0}, sets=(TILED,), suffix="t2=1-tiled"),
]

#: The one table (ids are unique).
CASES: list[Case] = [*_DEFAULTS, *_NON_DEFAULT, *_BRANCHES, *_RANGE_ENDS, *_COMBINED]
_BY_ID = {c.id: c for c in [*CASES, *_TILED_EXTRA]}
assert len(_BY_ID) == len(CASES) + len(_TILED_EXTRA), "case ids must be unique"
assert {c.loss for c in _DEFAULTS} == set(rk.LOSSES)


def cases(which: str = "all") -> list[Case]:
    """The cases of set ``which``: "all" (the table), :data:`CORE`, :data:`TRITON`, :data:`SMALL`,
    :data:`TINY` or :data:`TILED` (with cases of its own: the Triton interpreter's column-tiled
    runs)."""
    if which == "all":
        return list(CASES)
    if which == TILED:
        return [c for c in _BY_ID.values() if TILED in c.sets]
    return [c for c in CASES if which in c.sets]


# ---- tolerances ------------------------------------------------------------------------------------

#: Gradient tolerance by input dtype where the math is fp32 (the gradient is rounded once to the
#: input dtype, twice for reduction="none" with an upstream gradient): tests/test_native.py.
GRAD_RTOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}

#: float64 inputs: float64 math. The Triton kernels receive the hyper-parameters and a scalar eps
#: as fp32 (compiled Triton passes fp32 scalars; tests/triton/test_triton_edge_cases.py): 1 ulp of
#: fp32 (6e-8) in a parameter, amplified by an exponent, is its floor.
FP64_RTOL = {"torch": 1e-10, "native": 1e-10, "triton": 1e-6}


def loss_atol(case: Case, dtype: torch.dtype) -> float:
    return 0.0 if dtype == torch.float64 else case.loss_atol


def loss_rtol(case: Case, dtype: torch.dtype, backend: str) -> float:
    if dtype == torch.float64:
        return FP64_RTOL[backend]
    return case.loss_rtol


def grad_rtol(case: Case, dtype: torch.dtype, backend: str) -> float:
    if dtype == torch.float64:
        return FP64_RTOL[backend]
    return max(case.grad_rtol, GRAD_RTOL.get(dtype, 0.0))
