"""Calibration of the logit bias and of hyper-parameters from the number of classes (Staats et al.).

Three tools, all built on a freshly initialised network whose logits are i.i.d.
``N(0, logit_std^2)``:

* :func:`epsilon_for_classes` solves Eq. 4: the bias ``eps(K)`` at which the mean biased softmax
  probability of the labelled class equals ``C``.
* :func:`mean_error` evaluates Eq. 3: ``<delta_k>(z_k)``, the derivative of a loss with respect
  to the labelled logit averaged over the other ``K - 1`` logits, for any loss of
  :data:`robustkernels.LOSSES`, from the library's own gradients (the ``"torch"`` backend and
  autograd), not from a second set of formulas.
* :func:`transfer` moves one hyper-parameter from ``K1`` to ``K2`` classes so that
  ``<delta_k>(at)`` is unchanged (Sec. 3.3: genCE ``q = 0.7`` at ``K = 100`` becomes ``0.48`` at
  ``K = 1000``).

Every Monte Carlo average uses a sample drawn once from a seeded generator ("common random
numbers"): the estimate is then a smooth, deterministic function of ``eps`` or of the parameter,
so bisection / Brent find its root to machine precision and the only error left is the sampling
error of that one fixed sample.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .specs import LossSpec, Param, get_spec

__all__ = ["epsilon_for_classes", "mean_error", "transfer", "closed_form_epsilon"]

# ---- Eq. 4: eps(K) ------------------------------------------------------------------------------

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


def _gauss_hermite(logit_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights with ``E[f(z)] ~= sum_i w_i f(x_i)`` for ``z ~ N(0, logit_std^2)``."""
    x, w = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    return torch.from_numpy(x * logit_std), torch.from_numpy(w / w.sum())


def _default_eps_samples(num_classes: int) -> int:
    return max(_MIN_SAMPLES, min(_MAX_SAMPLES, _DRAW_BUDGET // (num_classes - 1)))


@functools.lru_cache(maxsize=256)
def _epsilon_cached(num_classes: int, target: float, logit_std: float, samples: int, seed: int) -> float:
    # Writing L = logsumexp_{i != k} z_i, the biased probability is sigmoid(z_k + eps - L). The
    # expectation over z_k is a 1-D Gaussian integral done exactly by Gauss-Hermite quadrature;
    # only L is sampled, which removes the dominant part of the Monte Carlo noise.
    lse_rest, lse_weights = _compress_sorted(_sample_lse_rest(num_classes, logit_std, samples, seed), _L_QUANTILES)
    nodes, node_weights = _gauss_hermite(logit_std)
    u = nodes.unsqueeze(1) - lse_rest.unsqueeze(0)  # [nodes, chunks]

    def mean_p(eps: float) -> float:
        return float(node_weights @ torch.sigmoid(u + eps) @ lse_weights)

    # mean_p is increasing in eps; 0.5 is reached near eps = log K, so this bracket holds.
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

    Solves ``< exp(z_k + eps) / (exp(z_k + eps) + sum_{i != k} exp(z_i)) > = C`` with the logits
    i.i.d. ``N(0, logit_std^2)``. The sampling error is below 0.003 for every ``K`` (seed to
    seed standard deviation), so the result is accurate to +-0.01; K = 1000 takes about 0.5 s
    the first time.

    Args:
        num_classes: number of classes ``K`` (>= 2).
        target: the constant ``C`` of Eq. 4 (the paper uses 0.15 for MAE), in ``(0, 1)``.
        logit_std: standard deviation of the initial logits (1 in the paper).
        samples: Monte Carlo draws of ``logsumexp_{i != k} z_i``; default ``2e7 / (K - 1)``
            clipped to ``[500, 1e6]``.
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
        samples = _default_eps_samples(num_classes)
    elif samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples!r}")
    return _epsilon_cached(num_classes, float(target), float(logit_std), int(samples), int(seed))


def closed_form_epsilon(num_classes: int, target: float = 0.15) -> float:
    """``ln(C (K - 1) / (1 - C))``: ``eps`` that makes ``p_y = C`` when every logit is 0.

    Only a rough approximation of Eq. 4: it ignores the spread of the logits. For large K the
    other logits raise the softmax denominator by ``exp(logit_std^2 / 2)`` (``eps`` +0.5 at
    ``logit_std = 1``), while the spread of ``z_k`` flattens the mean of the sigmoid
    (``eps`` about -0.31), so Eq. 4 lies ~0.19 above this formula (5.36 against 5.17 at
    K = 1000). Shown beside :func:`epsilon_for_classes` in the docs.
    """
    if num_classes < 2 or not 0.0 < target < 1.0:
        raise ValueError(f"need num_classes >= 2 and target in (0, 1), got {num_classes!r}, {target!r}")
    return math.log(target * (num_classes - 1) / (1.0 - target))


# ---- Eq. 3: <delta_k>(z_k) ----------------------------------------------------------------------

# Default Monte Carlo rows for Eq. 3: about 4e6 logits per evaluation, clipped to [64, 65536]
# rows. The error shrinks with K as the other logits' logsumexp concentrates, so large K needs
# fewer rows; each row costs one forward and backward of the reference loss over K logits.
_ERROR_DRAWS = 4_000_000
_ERROR_MIN_SAMPLES = 64
_ERROR_MAX_SAMPLES = 65536
# Logits per autograd call (bounds the memory of one chunk of the [grid * samples, K] batch).
_ERROR_CHUNK = 2_000_000


def _default_error_samples(num_classes: int) -> int:
    return max(_ERROR_MIN_SAMPLES, min(_ERROR_MAX_SAMPLES, _ERROR_DRAWS // num_classes))


def _check_classes(num_classes: object, name: str = "num_classes") -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"{name} must be an integer >= 2, got {num_classes!r}")
    return num_classes


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _resolve_samples(samples: object, num_classes: int) -> int:
    if samples is None:
        return _default_error_samples(num_classes)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    return samples


def _resolve_bias(epsilon: object, num_classes: int, logit_std: float) -> float:
    if isinstance(epsilon, str):
        if epsilon != "auto":
            raise ValueError(f"epsilon must be a float or 'auto', got {epsilon!r}")
        return epsilon_for_classes(num_classes, logit_std=logit_std)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon):
        raise ValueError(f"epsilon must be a finite float or 'auto', got {epsilon!r}")
    return float(epsilon)


def _other_logits(num_classes: int, logit_std: float, samples: int, seed: int) -> Tensor:
    """``[samples, K - 1]`` float64 draws of the non-label logits (the common random numbers)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(samples, num_classes - 1, generator=gen, dtype=torch.float64) * logit_std


def _error_on_sample(spec: LossSpec, others: Tensor, z: Tensor, epsilon: float, params: dict) -> Tensor:
    """``<dL/dz_k>`` at each ``z`` (1-D float64), averaged over the rows of ``others``.

    The label is class 0; row ``r`` of the flattened ``[len(z) * M]`` batch pairs grid point
    ``r // M`` with sample row ``r % M``, so every grid point sees the same sample.
    """
    from .api import robust_loss  # calibration is imported by api: import at call time

    m, rest = others.shape
    total = z.numel() * m
    rows_per_chunk = max(1, _ERROR_CHUNK // (rest + 1))
    sums = torch.zeros(z.numel(), dtype=torch.float64)
    for start in range(0, total, rows_per_chunk):
        rows = torch.arange(start, min(total, start + rows_per_chunk))
        grid_index = rows // m
        logits = torch.cat([z[grid_index].unsqueeze(1), others[rows % m]], dim=1).requires_grad_(True)
        target = torch.zeros(rows.numel(), dtype=torch.long)
        loss = robust_loss(logits, target, spec, epsilon=epsilon, reduction="sum", backend="torch", **params)
        (grad,) = torch.autograd.grad(loss, logits)
        sums.index_add_(0, grid_index, grad[:, 0])
    return sums / m


def mean_error(
    loss: str | LossSpec,
    num_classes: int,
    z: float | Sequence[float] | Tensor,
    *,
    epsilon: float | str = 0.0,
    logit_std: float = 1.0,
    samples: int | None = None,
    seed: int = 0,
    **params: float,
) -> Tensor:
    r"""Mean backpropagation error ``<delta_k>(z_k)`` of Eq. 3 at the labelled neuron.

    ``delta_k = dL/dz_k`` with ``L = loss(softmax(z + eps e_k), k)``, averaged over the other
    ``K - 1`` logits drawn i.i.d. ``N(0, logit_std^2)`` while the labelled logit is held at
    each value of ``z``. The gradient is the library's own (``robust_loss(...,
    backend="torch")`` and autograd), so every loss of :data:`robustkernels.LOSSES` works.
    Negative values push ``z_k`` up; a value near 0 means the loss does not learn from the
    sample (the paper's Fig. 1 and 2). ``mean_error(..., z, epsilon=e)`` equals
    ``mean_error(..., z + e)``: the bias shifts the curve, not its shape.

    Args:
        loss: loss name or spec.
        num_classes: ``K`` (>= 2).
        z: raw labelled logit(s) ``z_k``: a float, a sequence or a tensor of any shape.
        epsilon: logit bias added to ``z_k`` before the softmax, or ``"auto"`` for
            :func:`epsilon_for_classes` of ``K`` (with this ``logit_std``).
        logit_std: standard deviation of the other logits.
        samples: Monte Carlo rows of other logits; default ``4e6 / K`` clipped to
            ``[64, 65536]``. The same seeded sample serves every ``z`` (the curve is smooth).
        seed: seed of that sample.
        **params: loss hyper-parameters (spec defaults otherwise).

    Returns:
        float64 tensor of the shape of ``z``.

    Example:
        >>> mean_error("mae", 10, [0.0, 2.0]).shape
        torch.Size([2])
    """
    spec = get_spec(loss)
    spec.resolve(params)
    num_classes = _check_classes(num_classes)
    logit_std = _check_positive_float(logit_std, "logit_std")
    samples = _resolve_samples(samples, num_classes)
    bias = _resolve_bias(epsilon, num_classes, logit_std)
    grid = torch.as_tensor(z, dtype=torch.float64).detach().cpu()
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("z must hold finite values")
    others = _other_logits(num_classes, logit_std, samples, seed)
    return _error_on_sample(spec, others, grid.reshape(-1), bias, params).reshape(grid.shape)


# ---- hyper-parameter transfer --------------------------------------------------------------------


def _brent(f: Callable[[float], float], a: float, b: float, fa: float, fb: float, xtol: float) -> float:
    """Root of ``f`` in ``[a, b]`` with ``fa * fb <= 0`` (Brent's method: bisection safeguarded
    inverse quadratic / secant steps), to an absolute ``xtol``."""
    if fa == 0.0:
        return a
    if fb == 0.0:
        return b
    c, fc = a, fa
    d = e = b - a
    for _ in range(200):
        if fb * fc > 0:
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2.0 * np.finfo(float).eps * abs(b) + 0.5 * xtol
        m = 0.5 * (c - b)
        if abs(m) <= tol or fb == 0.0:
            return b
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:
                p, q = 2.0 * m * s, 1.0 - s
            else:
                q, r = fa / fc, fb / fc
                p = s * (2.0 * m * q * (q - r) - (b - a) * (r - 1.0))
                q = (q - 1.0) * (r - 1.0) * (s - 1.0)
            if p > 0:
                q = -q
            p = abs(p)
            if 2.0 * p < min(3.0 * m * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = m
        else:
            d = e = m
        a, fa = b, fb
        b += d if abs(d) > tol else math.copysign(tol, m)
        fb = f(b)
    return b


def _outward_points(param: Param, start: float, count: int = 32) -> tuple[list[float], list[float]]:
    """Trial values moving away from ``start`` towards each end of ``param``'s valid range.

    The distance from ``start`` doubles from ``1e-2 * max(|start|, 1)``; once a doubling would
    pass half the way to a finite end, each further point halves the distance left to that end
    instead, so the ends are approached geometrically (within ~1e-5 of the gap). A closed end is
    tried last on its side; an open one is only approached.
    """

    def side(bound: float, is_open: bool, direction: float) -> list[float]:
        points = []
        step = 1e-2 * max(abs(start), 1.0)
        gap = abs(bound - start)
        x = start
        while len(points) < count:
            if step < 0.5 * gap:
                x = start + direction * step
                step *= 2.0
            else:
                x = x + 0.5 * (bound - x)
            points.append(x)
        if not is_open and math.isfinite(bound):
            points.append(bound)
        return points

    return side(param.low, param.low_open, -1.0), side(param.high, param.high_open, 1.0)


def transfer(
    loss: str | LossSpec,
    param: str,
    value: float,
    from_classes: int,
    to_classes: int,
    *,
    at: float = 0.0,
    epsilon: float | str = 0.0,
    logit_std: float = 1.0,
    samples: int | None = None,
    seed: int = 0,
    **params: float,
) -> float:
    """Value of ``param`` at ``to_classes`` that gives the same ``<delta_k>(at)`` as ``value`` at ``from_classes``.

    Sec. 3.3 of the paper: a hyper-parameter known to work for ``K1`` classes is moved to ``K2``
    classes by keeping the mean error of the labelled neuron at ``z_k = at`` (Eq. 3, other
    logits i.i.d. ``N(0, logit_std^2)``) unchanged. Each side uses its own seeded sample of other
    logits, fixed during the search, so the root is deterministic; the search starts at
    ``value``, steps outwards to a sign change inside the valid range and refines it with
    Brent's method. When several values match, the one nearest ``value`` is returned.

    Args:
        loss: loss name or spec.
        param: name of the one unknown, e.g. ``"q"`` for ``gce``.
        value: its value at ``from_classes``.
        from_classes, to_classes: ``K1`` and ``K2``.
        at: the raw labelled logit where the errors are matched (0 in the paper).
        epsilon: logit bias on both sides (``"auto"``: ``eps(K)`` of each side).
        logit_std, samples, seed: as :func:`mean_error`.
        **params: the other hyper-parameters, held fixed (spec defaults otherwise).

    Returns:
        The transferred value (a float; an int parameter cannot be transferred).

    Raises:
        ValueError: unknown or integer parameter, a value outside its range, or no value in the
            valid range reaches the target error (the message gives the reachable range).

    Example:
        >>> round(transfer("gce", "q", 0.7, 100, 1000), 2)  # doctest: +SKIP
        0.48
    """
    spec = get_spec(loss)
    if param not in spec.param_index:
        known = ", ".join(p.name for p in spec.params) or "none"
        raise ValueError(f"param: {spec.name} has no parameter {param!r}; valid parameters: {known}")
    if param in params:
        raise ValueError(f"param: {param!r} is the unknown; do not also pass it as a fixed parameter")
    info = spec.params[spec.param_index[param]]
    if info.integer:
        raise ValueError(f"param: {spec.name}.{param} is an integer parameter and cannot be transferred")
    value = info.check(value, spec.name)
    spec.resolve(params)
    k_from = _check_classes(from_classes, "from_classes")
    k_to = _check_classes(to_classes, "to_classes")
    logit_std = _check_positive_float(logit_std, "logit_std")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise ValueError(f"at must be a finite float, got {at!r}")
    grid = torch.tensor([float(at)], dtype=torch.float64)

    def error(k: int, others: Tensor, x: float) -> float:
        bias = _resolve_bias(epsilon, k, logit_std)
        return float(_error_on_sample(spec, others, grid, bias, {**params, param: x})[0])

    others_from = _other_logits(k_from, logit_std, _resolve_samples(samples, k_from), seed)
    goal = error(k_from, others_from, value)
    others_to = _other_logits(k_to, logit_std, _resolve_samples(samples, k_to), seed)
    f = functools.lru_cache(maxsize=None)(lambda x: error(k_to, others_to, x) - goal)

    f0 = f(value)
    seen = [(value, f0)]
    # Walk both sides in lock step so that the sign change nearest to `value` is found first.
    lower, upper = _outward_points(info, value)
    prev = {"low": (value, f0), "high": (value, f0)}
    for i in range(max(len(lower), len(upper))):
        for name, points in (("low", lower), ("high", upper)):
            if i >= len(points):
                continue
            x = points[i]
            try:
                fx = f(x)
            except (ValueError, OverflowError):
                continue
            if not math.isfinite(fx):
                continue
            seen.append((x, fx))
            x_prev, f_prev = prev[name]
            if f_prev == 0.0:
                return x_prev
            if f_prev * fx <= 0.0:
                lo, hi = (x, x_prev) if x < x_prev else (x_prev, x)
                flo, fhi = (fx, f_prev) if x < x_prev else (f_prev, fx)
                return _brent(f, lo, hi, flo, fhi, xtol=1e-9 * max(1.0, abs(lo), abs(hi)))
            prev[name] = (x, fx)
    reach = [fx + goal for _, fx in seen]
    raise ValueError(
        f"no {spec.name}.{param} in {info.range_text()} gives <delta_k>({at:g}) = {goal:.6g} at "
        f"K = {k_to} (the target from {param} = {value:g} at K = {k_from}); the values tried reach "
        f"[{min(reach):.6g}, {max(reach):.6g}]"
    )
