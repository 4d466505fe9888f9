"""Eq. 4 of Staats et al.: the logit bias ``eps(K)`` from the number of classes alone.

:func:`epsilon_for_classes` is the bias at which the mean biased softmax probability of the
labelled class of a freshly initialised network (i.i.d. ``N(0, logit_std^2)`` logits) equals
``C``; ``epsilon="auto"`` of every loss calls it. This module depends on nothing of the loss API,
so the API can import it; the theory tools that evaluate losses (:mod:`robustkernels.calibration`)
sit above both.

Every Monte Carlo average uses a sample drawn once from a seeded generator ("common random
numbers"): the estimate is then a smooth, deterministic function of ``eps``, so bisection finds
its root to machine precision and the only error left is the sampling error of that one sample.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["epsilon_for_classes", "closed_form_epsilon"]

# ---- argument checks -----------------------------------------------------------------------------

# What torch.Generator.manual_seed accepts.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


def _as_count(value: object, name: str, low: int = 1) -> int:
    """``value`` as a Python int ``>= low``; NumPy integers pass, bools and floats do not."""
    if not isinstance(value, bool):
        try:
            count = operator.index(value)
        except TypeError:
            count = None
        if count is not None and count >= low:
            return count
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_classes(num_classes: object, name: str = "num_classes") -> int:
    return _as_count(num_classes, name, low=2)


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_seed(seed: object) -> int:
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not _SEED_MIN <= value <= _SEED_MAX:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1], got {seed!r}")
    return value


# ---- Eq. 4: eps(K) ------------------------------------------------------------------------------
#
# Write n = K - 1, s = logit_std, S = sum_{i != k} exp(z_i) and L = log S. The biased probability
# of the label is exp(z_k + eps) / (exp(z_k + eps) + S) = sigmoid(z_k + eps - L), so Eq. 4 reads
#     mean_p(eps) = E_{z_k, L}[ sigmoid(z_k + eps - L) ] = C,
# with z_k ~ N(0, s^2) independent of L. mean_p increases with eps, so eps is a 1-D root. Two ways
# to take the expectation over L:
#
# * Sampled form (K <= _LARGE_K_MIN_CLASSES, or wherever S is far from concentrated): draw L from
#   its definition, ``samples`` rows of K - 1 logits each, and do the z_k integral by Gauss-Hermite.
#   Its cost grows like samples * K (at least 500 rows): on the busy 2-core machine it took 24 s
#   and 4.1 GB at K = 1e6 and 505 s at K = 1e7.
#
# * Large-K form: each exp(z_i) is lognormal with mean m = exp(s^2 / 2) and variance
#   m^2 (exp(s^2) - 1), so S has mean n m and relative variance
#       v = Var(S) / E[S]^2 = (exp(s^2) - 1) / n,
#   which -> 0 as K grows (S / (n m) -> 1, with relative fluctuations sqrt(v)). Replace S by the
#   lognormal with the same mean and variance (Fenton-Wilkinson):
#       L ~ N(mu, sigma^2),  sigma^2 = log(1 + v),  mu = log n + s^2 / 2 - sigma^2 / 2.
#   Then z_k - L ~ N(-mu, tau^2) with tau^2 = s^2 + sigma^2, and
#       mean_p(eps) = E_G[ sigmoid(eps - mu + tau G) ],  G ~ N(0, 1),
#   a 1-D integral, so eps = mu + a(C, tau) with a the root of E[sigmoid(a + tau G)] = C. As
#   K -> inf, sigma -> 0 and eps = log(K - 1) + s^2 / 2 + a(C, s) + O(1/K): eps grows like log K.
#   Error: writing X = S / (n m) - 1, E[L] - log(n m) = E[log(1 + X)] = -v/2 + E[X^3]/3 - ... and
#   the lognormal's -log(1 + v)/2 agree up to (exp(s^2) - 1)^3 / (3 n^2) (2e-8 at s = 1, K = 1e4).
#   For a heavy tail (large s) that series is only asymptotic, but Jensen's inequality still pins
#   E[log(1 + X)] to about [-v/2, 0], so the error in mu is at most ~v/2; the one in sigma^2 (also
#   at most ~v) moves eps by less (|da/d tau^2| ~ 0.3). Measured against the sampled form (see
#   docs/calibration.md) the difference is ~v/3 at s = 2.5-3 and 1e-4 at s = 1, K >= 1e4.
#
# The large-K form is used above _LARGE_K_MIN_CLASSES where v <= _LARGE_K_MAX_VARIANCE (so any
# logit_std <= 1.548 switches at K = 1e4, larger ones later), which keeps every K <= 1e4
# bit-identical to the sampled form. Where v is larger (logit_std > 1.548 with K > 1e4), the sampled
# form is kept while its draws stay within _DRAWS_LIMIT; beyond, the call raises.

# Draws of N(0, 1) spent on the sample of L = logsumexp_{i != k} z_i: up to 1e6 rows for small K
# (where L fluctuates most), fewer for large K (L concentrates: std ~0.04 at K = 1000), never
# under 500 rows. Building the sample costs ~0.3 s; the sample itself is then compressed (below).
_MAX_SAMPLES = 1_000_000
_MIN_SAMPLES = 500
_DRAW_BUDGET = 20_000_000
_CHUNK_DRAWS = 4_000_000
_QUADRATURE_NODES = 64
# The sorted sample of L is replaced by the means of this many equal-count chunks. The integrand
# h(eps - L) is smooth (|h''| < 0.1), so the error of evaluating it at a chunk mean is second
# order in the chunk width, far below the sampling error, while each bisection step stays cheap.
_L_QUANTILES = 4096
# Upper bounds on what the sampled form may be asked for: the rows of L kept in memory (80 MB of
# float64) and the normal draws (samples * (K - 1); 4e8 took 24 s on the busy 2-core machine).
_SAMPLES_LIMIT = 10_000_000
_DRAWS_LIMIT = 400_000_000
# Where the large-K form replaces the sampled one (see above and docs/calibration.md).
_LARGE_K_MIN_CLASSES = 10_000
_LARGE_K_MAX_VARIANCE = 1e-3
# Above this spread E[sigmoid(a + tau G)] is integrated over the logistic variable instead of G:
# 64 Gauss-Hermite nodes resolve sigmoid(a + tau x) to 1e-10 for tau <= 2, but only to 5e-5 at
# tau = 5 (the sigmoid becomes a step on the scale of the node spacing).
_GAUSS_HERMITE_MAX_SPREAD = 2.0
_BISECTION_STEPS = 100
_MAX_WIDENINGS = 64


def _sample_lse_rest(num_classes: int, logit_std: float, samples: int, seed: int) -> torch.Tensor:
    """``samples`` draws of ``logsumexp`` of ``K - 1`` i.i.d. ``N(0, logit_std^2)`` logits."""
    gen = torch.Generator().manual_seed(seed)
    rest = num_classes - 1
    rows_per_chunk = max(1, _CHUNK_DRAWS // rest)
    parts = []
    remaining = samples
    while remaining > 0:
        rows = min(rows_per_chunk, remaining)
        z = torch.randn(rows, rest, generator=gen, dtype=torch.float64) * logit_std
        parts.append(torch.logsumexp(z, dim=1))
        remaining -= rows
    return torch.cat(parts)


def _compress_sorted(values: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and weights of ``groups`` (nearly) equal-count chunks of the sorted ``values``."""
    if values.numel() <= groups:
        return values, torch.full_like(values, 1.0 / values.numel())
    ordered = torch.sort(values).values
    n = ordered.numel()
    bounds = torch.arange(groups + 1) * n // groups
    cumulative = torch.cat([ordered.new_zeros(1), torch.cumsum(ordered, 0)])
    counts = (bounds[1:] - bounds[:-1]).to(values.dtype)
    return (cumulative[bounds[1:]] - cumulative[bounds[:-1]]) / counts, counts / n


@functools.cache
def _hermite_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    # Cached: the large-K form evaluates its integral ~100 times per root.
    return np.polynomial.hermite_e.hermegauss(nodes)


def _gauss_hermite(logit_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with ``E[f(z)] ~= sum_i w_i f(x_i)`` for ``z ~ N(0, logit_std^2)``."""
    x, w = _hermite_rule(_QUADRATURE_NODES)
    return torch.from_numpy(x * logit_std), torch.from_numpy(w / w.sum())


def _default_eps_samples(num_classes: int) -> int:
    return max(_MIN_SAMPLES, min(_MAX_SAMPLES, _DRAW_BUDGET // (num_classes - 1)))


def _widen_bracket(f: Callable[[float], float], target: float, lo: float, hi: float) -> tuple[float, float]:
    """``[lo, hi]`` with ``f(lo) < target <= f(hi)`` for an increasing ``f``, moving each failing end
    outwards by a doubling step. A bracket that already holds comes back unchanged."""
    step = hi - lo
    for _ in range(_MAX_WIDENINGS):
        lo_holds, hi_holds = f(lo) < target, f(hi) >= target  # NaN fails both
        if lo_holds and hi_holds:
            return lo, hi
        lo, hi, step = (lo if lo_holds else lo - step), (hi if hi_holds else hi + step), 2.0 * step
    raise ValueError(
        f"eps(K) not found: the mean biased probability does not cross target={target!r} for eps in "
        f"[{lo:.3g}, {hi:.3g}] (is logit_std far too large?)"
    )


def _solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """``x`` with ``f(x) = target`` for an increasing ``f``: bisection from ``[lo, hi]`` (widened
    first if it does not bracket the root), to machine precision."""
    lo, hi = _widen_bracket(f, target, lo, hi)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=256)
def _epsilon_cached(num_classes: int, target: float, logit_std: float, samples: int, seed: int) -> float:
    # The sampled form. The expectation over z_k is a 1-D Gaussian integral done exactly by
    # Gauss-Hermite quadrature; only L is sampled, which removes the dominant part of the Monte
    # Carlo noise.
    lse_rest, lse_weights = _compress_sorted(_sample_lse_rest(num_classes, logit_std, samples, seed), _L_QUANTILES)
    nodes, node_weights = _gauss_hermite(logit_std)
    u = nodes.unsqueeze(1) - lse_rest.unsqueeze(0)  # [nodes, chunks]

    def mean_p(eps: float) -> float:
        return float(node_weights @ torch.sigmoid(u + eps) @ lse_weights)

    # mean_p is increasing in eps; 0.5 is reached near eps = log K, so this bracket holds for
    # logit_std ~ 1 (it is widened otherwise).
    return _solve_increasing(mean_p, target, -50.0, 50.0 + math.log(num_classes))


def _relative_variance(num_classes: int, logit_std: float) -> float:
    """``v = Var(S) / E[S]^2 = (exp(s^2) - 1) / (K - 1)`` for ``S`` the sum of ``exp`` of the other
    logits. Formed as ``expm1(s^2) * exp(-log(K - 1))``: ``K`` may exceed the float range."""
    s2 = logit_std * logit_std
    if s2 > 700.0:  # expm1 overflows a double near 709.8; S is then nowhere near concentrated
        return math.inf
    return math.expm1(s2) * math.exp(-math.log(num_classes - 1))


def _uses_large_k_form(num_classes: int, logit_std: float) -> bool:
    return num_classes > _LARGE_K_MIN_CLASSES and _relative_variance(num_classes, logit_std) <= _LARGE_K_MAX_VARIANCE


@functools.cache
def _logistic_grid() -> tuple[torch.Tensor, torch.Tensor]:
    """Points and trapezoid weights for ``E[f(X)]``, ``X`` standard logistic, ``f`` smooth on a
    scale >~ 1. The density sigmoid(x) sigmoid(-x) is analytic in ``|Im x| < pi``, so the trapezoid
    rule with step 1/4 converges like exp(-2 pi d / h) (below 1e-16 here); the cut at |x| = 40
    drops 2 exp(-40) = 8e-18 of the mass."""
    x = torch.arange(-160, 161, dtype=torch.float64) / 4.0
    return x, torch.sigmoid(x) * torch.sigmoid(-x) / 4.0


def _mean_sigmoid_of_normal(a: float, spread: float) -> float:
    """``E[sigmoid(a + spread * G)]`` for ``G ~ N(0, 1)``."""
    if spread <= _GAUSS_HERMITE_MAX_SPREAD:
        nodes, weights = _gauss_hermite(spread)
        return float(weights @ torch.sigmoid(a + nodes))
    # sigmoid(y) = P(X <= y) for X standard logistic, so E[sigmoid(a + spread G)] =
    # P(X - spread G <= a) = E_X[Phi((a - X) / spread)], an integrand smooth on the scale of
    # `spread` (> 2) instead of a near-step in G.
    x, weights = _logistic_grid()
    return float(weights @ torch.special.ndtr((a - x) / spread))


@functools.lru_cache(maxsize=256)
def _epsilon_large_k(num_classes: int, target: float, logit_std: float) -> float:
    """Eq. 4 with the other logits' ``log S`` replaced by its lognormal approximation (see the
    derivation above): ``eps = mu + a(C, tau)``."""
    variance = math.log1p(_relative_variance(num_classes, logit_std))  # sigma^2
    mu = math.log(num_classes - 1) + 0.5 * logit_std * logit_std - 0.5 * variance
    spread = math.sqrt(logit_std * logit_std + variance)  # tau
    a = _solve_increasing(lambda x: _mean_sigmoid_of_normal(x, spread), target, -50.0, 50.0)
    return mu + a


def _check_eps_samples(samples: object) -> int:
    samples = _as_count(samples, "samples")
    if samples > _SAMPLES_LIMIT:
        raise ValueError(f"samples must be <= {_SAMPLES_LIMIT:.0e} (the sample of L is held in memory), got {samples}")
    return samples


def _check_eps_draws(samples: int, num_classes: int, logit_std: float) -> None:
    """Refuse a sampled form that would take more than ``_DRAWS_LIMIT`` normal draws."""
    draws = samples * (num_classes - 1)
    if draws <= _DRAWS_LIMIT:
        return
    hint = "pass fewer samples"
    if num_classes > _LARGE_K_MIN_CLASSES:
        v = _relative_variance(num_classes, logit_std)
        hint = (
            f"the large-K form, which has no such cost, needs (exp(logit_std^2) - 1) / (K - 1) <= "
            f"{_LARGE_K_MAX_VARIANCE:g} (here {v:.3g}): pass fewer samples, a smaller logit_std or a larger K"
        )
    raise ValueError(
        f"eps(K) for num_classes={num_classes}, logit_std={logit_std:g}: {samples} rows of K - 1 "
        f"logits take {draws:.3g} normal draws (the limit is {_DRAWS_LIMIT:.0e}); {hint}"
    )


def _assume_constant_result(fn: Callable) -> Callable:
    """``torch._dynamo.assume_constant_result`` without importing Dynamo: it only sets this
    marker, and the import costs about 4 s on every ``import robustkernels`` (measured with
    ``python -X importtime``), a cost every worker process and command-line call would pay."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def epsilon_for_classes(
    num_classes: int,
    target: float = 0.15,
    *,
    logit_std: float = 1.0,
    samples: int | None = None,
    seed: int = 0,
) -> float:
    """Logit bias ``eps(K)`` of Eq. 4: the mean biased probability of the label equals ``target``.

    Solves ``< exp(z_k + eps) / (exp(z_k + eps) + sum_{i != k} exp(z_i)) > = C`` with the logits
    i.i.d. ``N(0, logit_std^2)``, in one of two ways (docs/calibration.md has the derivation and
    the measurements):

    * ``K <= 10000``: the expectation over ``z_k`` by Gauss-Hermite quadrature and a seeded Monte
      Carlo sample of ``L = logsumexp_{i != k} z_i``. At ``logit_std = 1`` the sampling error is
      below 0.003 for every ``K`` (seed to seed standard deviation), so the result is accurate to
      +-0.01; K = 1000 takes about 0.5 s the first time.
    * ``K > 10000``: the large-K form. The sum of the other ``exp(z_i)`` is replaced by the
      lognormal with its mean and variance, which leaves a 1-D Gaussian integral. Deterministic,
      about 10 ms for any ``K`` (``10**12`` included); it agrees with the sampled form to 2e-4
      (K = 1e4 to 1e5). It needs ``(exp(logit_std^2) - 1) / (K - 1) <= 1e-3``; for a larger
      ``logit_std`` (above 1.548) the sampled form is kept up to the ``K`` where that holds.

    Args:
        num_classes: number of classes ``K`` (>= 2; any size).
        target: the constant ``C`` of Eq. 4 (the paper uses 0.15 for MAE), in ``(0, 1)``.
        logit_std: standard deviation of the initial logits (1 in the paper), finite and > 0.
        samples: Monte Carlo draws of ``logsumexp_{i != k} z_i`` for the sampled form; default
            ``2e7 / (K - 1)`` clipped to ``[500, 1e6]``, at most ``1e7``, and at most ``4e8``
            normal draws in all (``samples * (K - 1)``). Checked but not used by the large-K form.
        seed: seed of the Monte Carlo sample; the result is deterministic for a seed. Not used by
            the large-K form, which has no sample.

    Returns:
        ``eps`` as a float. Results are cached per argument tuple.

    Raises:
        ValueError: an argument outside its range, or a sampled form over the limits above. With
            the default samples that happens only for ``logit_std > 2.586`` and ``K > 8e5``, until
            ``K`` is large enough for the large-K form; the message says what to change.

    Example:
        >>> round(epsilon_for_classes(100), 1)
        3.0
    """
    num_classes = _check_classes(num_classes)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    logit_std = _check_positive_float(logit_std, "logit_std")
    samples = None if samples is None else _check_eps_samples(samples)
    seed = _check_seed(seed)
    if _uses_large_k_form(num_classes, logit_std):
        return _epsilon_large_k(num_classes, float(target), logit_std)
    if samples is None:
        samples = _default_eps_samples(num_classes)
    _check_eps_draws(samples, num_classes, logit_std)
    return _epsilon_cached(num_classes, float(target), logit_std, samples, seed)


def closed_form_epsilon(num_classes: int, target: float = 0.15) -> float:
    """``ln(C (K - 1) / (1 - C))``: ``eps`` that makes ``p_y = C`` when every logit is 0.

    Only a rough approximation of Eq. 4: it ignores the spread of the logits. For large K the
    other logits raise the softmax denominator by ``exp(logit_std^2 / 2)`` (``eps`` +0.5 at
    ``logit_std = 1``), while the spread of ``z_k`` flattens the mean of the sigmoid
    (``eps`` about -0.31), so Eq. 4 lies ~0.19 above this formula (5.36 against 5.17 at
    K = 1000). Shown beside :func:`epsilon_for_classes` in the docs.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2 or not 0.0 < target < 1.0:
        raise ValueError(f"need num_classes >= 2 and target in (0, 1), got {num_classes!r}, {target!r}")
    # Two logs, not the log of the product: K - 1 may exceed the float range.
    return math.log(target / (1.0 - target)) + math.log(num_classes - 1)
