"""Calibration of the logit bias and of hyper-parameters from the number of classes (Staats et al.).

Three tools, all built on a freshly initialised network whose logits are i.i.d.
``N(0, logit_std^2)``:

* :func:`epsilon_for_classes` solves Eq. 4: the bias ``eps(K)`` at which the mean biased softmax
  probability of the labelled class equals ``C`` (defined in :mod:`robustkernels.epsilon`, which
  the loss API imports; this module sits above the API).
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

from .api import robust_loss
from .epsilon import (
    _as_count,
    _check_classes,
    _check_positive_float,
    _check_seed,
    closed_form_epsilon,
    epsilon_for_classes,
)
from .specs import LossSpec, Param, get_spec

__all__ = ["epsilon_for_classes", "mean_error", "transfer", "closed_form_epsilon"]

# ---- Eq. 3: <delta_k>(z_k) ----------------------------------------------------------------------

# Default Monte Carlo rows for Eq. 3: about 4e6 logits per evaluation, clipped to [64, 65536]
# rows. The error shrinks with K as the other logits' logsumexp concentrates, so large K needs
# fewer rows; each row costs one forward and backward of the reference loss over K logits.
_ERROR_DRAWS = 4_000_000
_ERROR_MIN_SAMPLES = 64
_ERROR_MAX_SAMPLES = 65536
# Logits per autograd call (bounds the memory of one chunk of the [grid * samples, K] batch).
_ERROR_CHUNK = 2_000_000
# Bounds on one call, checked before any work: the sample of other logits is held at once
# (2**27 float64 values = 1 GiB), and each grid point runs the loss forward and backward over all of
# it (1e9 logits take about 2 min at the 7.5e6 logits/s measured for MAE on the busy 2-core machine).
# transfer evaluates its K2 side 16-25 times when it finds a root (the documented examples) and 66
# times when there is none; it is budgeted for _TRANSFER_EVALUATIONS evaluations.
_ERROR_SAMPLE_LIMIT = 2**27
_ERROR_WORK_LIMIT = 1_000_000_000
_TRANSFER_EVALUATIONS = 64


def _default_error_samples(num_classes: int) -> int:
    return max(_ERROR_MIN_SAMPLES, min(_ERROR_MAX_SAMPLES, _ERROR_DRAWS // num_classes))


def _resolve_samples(samples: object, num_classes: int) -> int:
    return _default_error_samples(num_classes) if samples is None else _as_count(samples, "samples")


def _check_error_budget(num_classes: int, samples: int, evaluations: int, what: str = "grid points") -> None:
    """Refuse, before any work, Eq. 3 by sampling that would not fit the memory or time bound.

    The ``[samples, K - 1]`` sample of other logits is held at once, and each of ``evaluations``
    points runs the loss forward and backward over ``samples`` rows of ``K`` logits.
    """
    held, work = samples * (num_classes - 1), evaluations * samples * num_classes
    if held <= _ERROR_SAMPLE_LIMIT and work <= _ERROR_WORK_LIMIT:
        return
    fit_memory = _ERROR_SAMPLE_LIMIT // (num_classes - 1)
    fit = min(fit_memory, _ERROR_WORK_LIMIT // (evaluations * num_classes))
    if fit >= 1:
        remedy = f"pass samples <= {fit}" + (" or fewer grid points" if what.startswith("grid points") else "")
    elif fit_memory == 0:
        remedy = f"one sample row alone holds K - 1 = {num_classes - 1:.3g} logits"
    else:
        remedy = f"even one sample row is too much for {evaluations} {what} at this K"
    raise ValueError(
        f"<delta_k> at K = {num_classes}: {samples} sample rows hold {held:.3g} other logits (the limit "
        f"is {_ERROR_SAMPLE_LIMIT:.3g}, 1 GiB of float64) and {evaluations} {what} take {work:.3g} "
        f"loss gradients (the limit is {_ERROR_WORK_LIMIT:.0e}); {remedy}"
    )


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

    Raises:
        ValueError: an argument outside its range, or a call too large to sample: more than
            ``2**27`` other logits in the sample (``samples * (K - 1)``, 1 GiB) or more than
            ``1e9`` loss gradients (``z.numel() * samples * K``). Checked before any work; the
            message says how many samples would fit.

    Example:
        >>> mean_error("mae", 10, [0.0, 2.0]).shape
        torch.Size([2])
    """
    spec = get_spec(loss)
    spec.resolve(params)
    num_classes = _check_classes(num_classes)
    logit_std = _check_positive_float(logit_std, "logit_std")
    samples = _resolve_samples(samples, num_classes)
    seed = _check_seed(seed)
    grid = torch.as_tensor(z, dtype=torch.float64).detach().cpu()
    if not bool(torch.isfinite(grid).all()):
        raise ValueError("z must hold finite values")
    _check_error_budget(num_classes, samples, grid.numel())
    bias = _resolve_bias(epsilon, num_classes, logit_std)
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
        ValueError: unknown or integer parameter, a value outside its range, no value in the
            valid range reaches the target error (the message gives the reachable range), or a
            ``K`` too large to sample (:func:`mean_error`'s bounds, with the ``K2`` side counted
            as 64 evaluations), checked before any work.

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
    seed = _check_seed(seed)
    samples_from, samples_to = _resolve_samples(samples, k_from), _resolve_samples(samples, k_to)
    _check_error_budget(k_from, samples_from, 1, "evaluation")
    _check_error_budget(k_to, samples_to, _TRANSFER_EVALUATIONS, "evaluations (transfer's search)")
    grid = torch.tensor([float(at)], dtype=torch.float64)

    def error(k: int, others: Tensor, x: float) -> float:
        bias = _resolve_bias(epsilon, k, logit_std)
        return float(_error_on_sample(spec, others, grid, bias, {**params, param: x})[0])

    others_from = _other_logits(k_from, logit_std, samples_from, seed)
    goal = error(k_from, others_from, value)
    others_to = _other_logits(k_to, logit_std, samples_to, seed)
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
