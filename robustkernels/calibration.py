"""Calibration of the logit bias: epsilon(K) from Eq. 4 of Staats et al.

Eq. 4 asks for the bias ``eps`` at which the mean biased softmax probability of the labelled
class equals ``C``, with the logits of a freshly initialised network i.i.d. ``N(0, sigma^2)``:

    < exp(z_k + eps) / (exp(z_k + eps) + sum_{i != k} exp(z_i)) > = C.

Writing ``L = logsumexp_{i != k} z_i``, the probability is ``sigmoid(z_k - L + eps)``. The
expectation over ``z_k`` is a one-dimensional Gaussian integral, done exactly by Gauss-Hermite
quadrature; the expectation over ``L`` is a Monte Carlo average over a sample drawn once with a
fixed seed. The result is a smooth monotone equation in ``eps`` that bisection solves to machine
precision. Integrating ``z_k`` exactly removes the dominant source of Monte Carlo noise: ``L``
concentrates as ``K`` grows (its standard deviation is about 0.04 at K = 1000), so the seed moves
``eps`` by well under 0.01 (see the tests).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["epsilon_for_classes"]

# Monte Carlo rows of L: 20000 by default, fewer for very large K (L concentrates there) so that
# the draw budget keeps K = 1000 well under a second.
_DEFAULT_SAMPLES = 20000
_MIN_SAMPLES = 500
_DRAW_BUDGET = 20_000_000
_CHUNK_DRAWS = 4_000_000
_QUADRATURE_NODES = 64


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


def _gauss_hermite(logit_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with ``E[f(z)] ~= sum_i w_i f(x_i)`` for ``z ~ N(0, logit_std^2)``."""
    x, w = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    return torch.from_numpy(x * logit_std), torch.from_numpy(w / w.sum())


@functools.lru_cache(maxsize=256)
def _epsilon_cached(num_classes: int, target: float, logit_std: float, samples: int, seed: int) -> float:
    lse_rest = _sample_lse_rest(num_classes, logit_std, samples, seed)
    nodes, weights = _gauss_hermite(logit_std)
    u = nodes.unsqueeze(1) - lse_rest.unsqueeze(0)  # [nodes, samples]

    def mean_p(eps: float) -> float:
        return float((torch.sigmoid(u + eps).mean(dim=1) * weights).sum())

    lo, hi = -50.0, 50.0 + math.log(num_classes)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if mean_p(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@torch._dynamo.assume_constant_result
def epsilon_for_classes(
    num_classes: int,
    target: float = 0.15,
    *,
    logit_std: float = 1.0,
    samples: int | None = None,
    seed: int = 0,
) -> float:
    """Logit bias ``eps(K)`` of Eq. 4: the mean biased probability of the label equals ``target``.

    Args:
        num_classes: number of classes ``K`` (>= 2).
        target: the constant ``C`` of Eq. 4 (the paper uses 0.15 for MAE), in ``(0, 1)``.
        logit_std: standard deviation of the initial logits (1 in the paper).
        samples: Monte Carlo draws of ``logsumexp_{i != k} z_i``; default 20000, fewer for
            very large ``K`` (never under 500).
        seed: seed of the Monte Carlo sample; the result is deterministic for a seed.

    Returns:
        ``eps`` as a float. Results are cached per argument tuple.

    Example:
        >>> round(epsilon_for_classes(100), 1)
        3.0
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    if not logit_std > 0.0:
        raise ValueError(f"logit_std must be > 0, got {logit_std!r}")
    if samples is None:
        samples = max(_MIN_SAMPLES, min(_DEFAULT_SAMPLES, _DRAW_BUDGET // num_classes))
    elif samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    return _epsilon_cached(num_classes, float(target), float(logit_std), int(samples), int(seed))
