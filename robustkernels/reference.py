"""Pure-PyTorch reference of every loss in :data:`robustkernels.LOSSES` (the ``"torch"`` backend).

This module is the oracle every kernel is tested against, so it favours clarity and accuracy
over speed. Everything is computed in float32 (float64 for float64 input) from ``log_softmax``,
with ``log p_y = -log1p(sum_{k != y} exp(z_k - z_y))`` where the label holds the maximum; terms
such as ``1 - p_y`` and ``1 - p_y^q`` are formed with ``expm1`` from ``log p_y`` so that they do
not cancel when ``p_y -> 1``, and no probability is clamped (a clamp silently zeroes the
gradient). Gradients come from autograd, except for ``bitemp`` whose normalisation is an
iterative solve: there the implicit-function gradient of Amid et al. is used, as autograd
through the bisection would be wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .specs import BoundTerm, LossSpec

__all__ = [
    "loss_rows",
    "term_rows",
    "soft_term_rows",
    "biased_logits",
    "tempered_softmax",
    "log_t",
    "exp_t",
    "compute_dtype",
]

# Bisection steps for the t2 < 1 normalisation. The bracket [0, -log_t(1/d)] is at most a few
# units wide, so 64 halvings reach the float64 resolution: the solve is converged for every
# dtype, with a fixed count (no data-dependent loop, no host sync).
BISECTION_STEPS = 64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 for float64 input, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def biased_logits(logits: Tensor, target: Tensor, epsilon: float | Tensor) -> Tensor:
    """``z + eps * e_y``: add the logit bias to the labelled class of every row.

    ``epsilon`` is a float or a ``[N]`` tensor (per-sample bias; differentiable).
    """
    n = logits.shape[0]
    if isinstance(epsilon, Tensor):
        eps = epsilon.to(logits.dtype).reshape(n, 1)
    else:
        if epsilon == 0.0:
            return logits
        eps = logits.new_full((n, 1), float(epsilon))
    return logits.scatter_add(1, target.unsqueeze(1), eps)


def _one_minus(log_x: Tensor) -> Tensor:
    """``1 - x`` from ``log x``, accurate in value and in gradient.

    The value is ``-expm1(log x)``, which does not cancel as ``x -> 1``. The gradient is
    ``-x``, formed as ``exp(log x)``: autograd's own expm1 backward, ``grad * (expm1 + 1)``,
    rebuilds ``x`` from the rounded ``expm1`` and returns 0 once ``x`` is below the precision
    of 1 (float32: ``x < 3e-8``), which would silently stop a confidently wrong row learning.
    """
    value = -torch.expm1(log_x)
    if not log_x.requires_grad:
        return value
    x = torch.exp(log_x)
    return value.detach() - (x - x.detach())  # the value of `value`, the gradient of -x


def _label_log_prob(zb: Tensor, target: Tensor, logp: Tensor) -> Tensor:
    """``log p_y``, accurate as ``p_y -> 1``.

    ``log_softmax`` forms ``(z_y - m) - log(sum_k exp(z_k - m))``; when the label holds the
    maximum the sum is ``1 + s``, ``s = sum_{k != y} exp(z_k - z_y)``, and ``log(1 + s)`` keeps only
    ``ulp(1) / s`` of ``s``: 2.4e-4 relative error in ``1 - p_y`` at ``1 - p_y = 1e-4`` in float32,
    and exactly 0 below 6e-8. There ``-log1p(s)`` is used instead, as the fused kernels do. The
    other rows get exponents of 0 (not ``z_k - z_y``, which may overflow), so that the branch
    ``where`` discards stays finite and passes no NaN gradient. The autograd gradient is exact,
    ties with the label included: ``-p_k`` and ``1 - p_y`` (a clamp at 0 would block it at ties).
    """
    zy = zb.gather(1, target.unsqueeze(1))
    label_is_max = zy.squeeze(1) >= zb.amax(dim=1)
    shifted = torch.where(label_is_max.unsqueeze(1), zb - zy, 0.0)
    others = torch.exp(shifted).scatter(1, target.unsqueeze(1), 0.0).sum(dim=1)
    return torch.where(label_is_max, -torch.log1p(others), logp.gather(1, target.unsqueeze(1)).squeeze(1))


def _pow_safe(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` for ``base >= 0`` whose gradient is 0 (not NaN) where ``base == 0``.

    Used for the focal weight ``(1 - p)^gamma``: at ``p = 1`` the exact derivative of the focal
    loss is 0, but ``pow``'s backward would give ``inf * 0``.
    """
    positive = base > 0
    safe = torch.where(positive, base, torch.ones_like(base))
    zero_value = 1.0 if exponent == 0 else 0.0
    return torch.where(positive, safe.pow(exponent), torch.full_like(base, zero_value))


# ---- primitives on (log p, log p_y) ---------------------------------------------------------------
# Each label-only primitive is a function of log p_y [N] (and K); each normalised primitive
# L(p_y) / sum_k L(p_k) is built from the elementwise L on log p [N, K]. A loss is the weighted
# sum of its spec's terms (loss_rows below), so each formula is written once.


def _gce(lpy: Tensor, q: float) -> Tensor:
    return _one_minus(q * lpy) / q  # (1 - p^q) / q


def _agce(lpy: Tensor, a: float, q: float) -> Tensor:
    # (a+1)^q - (a+p)^q = -(a+1)^q * expm1(q * l), l = log((a+p)/(a+1)): no cancellation near
    # p = 1. l is log1p(-(1-p)/(a+1)) while (a+p)/(a+1) >= 1/2 and the log of the ratio below,
    # where 1 + x -> 0 would keep only ulp(1) / (a+p) of its relative accuracy (a -> 0, p -> 0).
    a_plus_p = a + torch.exp(lpy)
    ratio = a_plus_p / (a + 1.0)
    log_ratio = torch.where(ratio < 0.5, torch.log(ratio), torch.log1p(-_one_minus(lpy) / (a + 1.0)))
    value = -((a + 1.0) ** q) * torch.expm1(q * log_ratio) / q
    if not lpy.requires_grad:
        return value
    # The gradient is that of -(a+p)^q / q (the loss up to a constant): d/dlog p = -(a+p)^(q-1) p,
    # with a + p a sum of positive terms. Through the expm1 form autograd would rebuild
    # ((a+p)/(a+1))^q as expm1(...) + 1, which rounds to 0 once it is below ulp(1): for a -> 0
    # and a small p (float32, a = 1e-30, q = 3, p_y = 2e-4: gradient 0 instead of 1e-11).
    surrogate = -torch.pow(a_plus_p, q) / q
    return value.detach() + (surrogate - surrogate.detach())


def _aul(lpy: Tensor, a_minus_1: float, q: float) -> Tensor:
    # (a-p)^q - (a-1)^q = (a-1)^q * expm1(q * log1p((1-p)/(a-1))); a - 1 comes formed in double.
    return (a_minus_1**q) * torch.expm1(q * torch.log1p(_one_minus(lpy) / a_minus_1)) / q


def _focal_terms(logp: Tensor, gamma: float) -> Tensor:
    return -_pow_safe(_one_minus(logp), gamma) * logp


def _focal(lpy: Tensor, gamma: float) -> Tensor:
    # At p_y = 0 (a -inf label logit) the loss is +inf and d/dlog p_y = -w - log p_y dw/dlog p_y
    # tends to -1 (dw/dlog p_y = -gamma (1-p)^(gamma-1) p, and p log p -> 0), but autograd would
    # form -inf * 0 there. The weight is taken as its limit 1 on a stand-in log p = 0, so that
    # only -log p_y carries the gradient: -(p_j - [j == y]), as the kernels give.
    zero = lpy == -torch.inf
    weight = _pow_safe(_one_minus(torch.where(zero, 0.0, lpy)), gamma)
    return -torch.where(zero, 1.0, weight) * lpy


def _label_term(name: str, lpy: Tensor, k: int, prm: Mapping[str, float]) -> Tensor:
    """A label-only primitive: a function of ``log p_y`` (and ``K``)."""
    if name == "ce":
        return -lpy
    if name == "mae":
        return _one_minus(lpy)
    if name == "gce":
        return _gce(lpy, prm["q"])
    if name == "agce":
        return _agce(lpy, prm["a"], prm["q"])
    if name == "aul":
        return _aul(lpy, prm["a_minus_1"], prm["q"])
    if name == "ael":
        return torch.exp(-torch.exp(lpy) / prm["a"])
    if name == "rce":
        return -prm["A"] * _one_minus(lpy)
    if name == "focal":
        return _focal(lpy, prm["gamma"])
    if name == "nmae":
        return _one_minus(lpy) / (k - 1)
    if name == "nrce":
        return (k - 1) / 4 * -prm["A"] * _one_minus(lpy)
    raise ValueError(f"no label-only primitive {name!r}")


def _elementwise(name: str, logp: Tensor, prm: Mapping[str, float]) -> Tensor:
    """``L(log p)`` elementwise, for the primitives that have a normalised form."""
    if name == "ce":
        return -logp
    if name == "focal":
        return _focal_terms(logp, prm["gamma"])
    if name == "gce":
        return _gce(logp, prm["q"])
    raise ValueError(f"no normalised form of {name!r}")


def _normalized(base: str, logp: Tensor, lpy: Tensor, prm: Mapping[str, float]) -> Tensor:
    """``L(p_y) / sum_k L(p_k)``.

    Where a class has ``p_k = 0`` and ``L(0)`` is infinite (ce, focal) the ratio tends to 0 with
    zero gradient. Such rows are computed on a stand-in ``log p = -1`` (every term finite and
    positive) and then replaced by 0, so that neither inf / inf nor 0 / 0 (a row whose only
    finite class has p = 1) enters the backward, where the discarded branch would still pass
    0 * NaN = NaN.
    """
    with torch.no_grad():
        infinite = torch.isinf(_elementwise(base, logp, prm).sum(dim=1))
    logp_safe = torch.where(infinite.unsqueeze(1), -1.0, logp)
    lpy_safe = torch.where(infinite, -1.0, lpy)
    numerator = _label_term(base, lpy_safe, logp.shape[1], prm)
    ratio = numerator / _elementwise(base, logp_safe, prm).sum(dim=1)
    return torch.where(infinite, 0.0, ratio)


def _term_rows(term: BoundTerm, logp: Tensor, lpy: Tensor) -> Tensor:
    prim = term.primitive
    prm = dict(term.params)
    if prim.name == "aul":
        prm["a_minus_1"] = prm["a"] - 1.0
    if prim.normalizes:
        return _normalized(prim.normalizes, logp, lpy, prm)
    return _label_term(prim.name, lpy, logp.shape[1], prm)


# ---- bi-tempered logistic loss ----------------------------------------------------------------


def log_t(u: Tensor, t: float) -> Tensor:
    """Tempered logarithm ``(u^(1-t) - 1) / (1 - t)`` (``log`` at ``t = 1``)."""
    if t == 1.0:
        return torch.log(u)
    return torch.expm1((1.0 - t) * torch.log(u)) / (1.0 - t)


def _log_exp_t(u: Tensor, t: float) -> Tensor:
    """``log exp_t(u)``; ``-inf`` outside the support (t < 1).

    ``log1p``, not ``log(1 + (1 - t) u)``: for t near 1 the sum rounds to the precision of 1
    and keeps only ``ulp(1) / ((1 - t) u)`` of the tempering (float32: 50 % error in the loss at
    ``t = 1 +- 1e-7``; log1p is exact to rounding).
    """
    if t == 1.0:
        return u
    return torch.log1p(torch.clamp_min((1.0 - t) * u, -1.0)) / (1.0 - t)


def exp_t(u: Tensor, t: float) -> Tensor:
    """Tempered exponential ``[1 + (1 - t) u]_+^(1 / (1 - t))`` (``exp`` at ``t = 1``)."""
    return torch.exp(_log_exp_t(u, t))


def _shifted_normalization(a0: Tensor, t: float, num_iters: int) -> Tensor:
    """``lambda_t`` of the max-shifted row ``a0 = a - max(a)`` (``sum_k exp_t(a0_k - lambda) = 1``),
    as Google's implementation.

    t > 1: ``num_iters`` fixed-point steps; t < 1: bisection to convergence; t = 1: logsumexp.
    """
    if t == 1.0:
        return torch.logsumexp(a0, dim=1, keepdim=True)
    if t > 1.0:
        a_hat = a0
        for _ in range(num_iters):
            partition = exp_t(a_hat, t).sum(dim=1, keepdim=True)
            a_hat = a0 * partition.pow(1.0 - t)
        partition = exp_t(a_hat, t).sum(dim=1, keepdim=True)
        return -log_t(1.0 / partition, t)
    effective_dim = (a0 > -1.0 / (1.0 - t)).sum(dim=1, keepdim=True).to(a0.dtype)
    lower = torch.zeros_like(a0[:, :1])
    upper = -log_t(1.0 / effective_dim, t)
    for _ in range(BISECTION_STEPS):
        mid = 0.5 * (lower + upper)
        below = exp_t(a0 - mid, t).sum(dim=1, keepdim=True) < 1.0
        upper = torch.where(below, mid, upper)
        lower = torch.where(below, lower, mid)
    return 0.5 * (lower + upper)


def _tempered_log_softmax(a: Tensor, t: float, num_iters: int) -> Tensor:
    # (a - max) - lambda0, never a - (lambda0 + max): at logits of 3e4 the fp32 sum lambda0 + max
    # rounds to ulp(max) = 2e-3, which is the whole error budget of the loss.
    a0 = a - a.amax(dim=1, keepdim=True)
    return _log_exp_t(a0 - _shifted_normalization(a0, t, num_iters), t)


def tempered_softmax(logits: Tensor, t: float, num_iters: int = 5) -> Tensor:
    """Tempered softmax ``exp_t(z - lambda_t(z))`` of Amid et al. over the last dimension."""
    shape = logits.shape
    a = logits.reshape(-1, shape[-1]).to(compute_dtype(logits.dtype))
    return torch.exp(_tempered_log_softmax(a, t, num_iters)).reshape(shape)


class _BiTemperedRows(torch.autograd.Function):
    """Bi-tempered loss rows with the implicit-function gradient.

    With ``L = -log_t1(p_y) - (1 - sum_k p_k^(2-t1)) / (2-t1)`` and ``dp_k/da_j =
    p_k^t2 (delta_kj - s_j)``, ``s = p^t2 / sum p^t2`` (implicit function theorem on the
    normalisation), ``dL/da_j = (p_j - delta_jy) f_j - s_j sum_k (p_k - delta_ky) f_k`` with the
    forget factor ``f = p^(t2 - t1)``. Where ``p_k = 0`` (outside the support for t2 < 1) ``p_k``
    is locally constant, so ``f_k = 0``: this also removes the ``0 * inf`` of ``0^(t2-t1)``.
    """

    @staticmethod
    def forward(ctx, a: Tensor, target: Tensor, t1: float, t2: float, num_iters: int) -> Tensor:
        logp = _tempered_log_softmax(a, t2, num_iters)
        lpy = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        minus_log_t1_py = -lpy if t1 == 1.0 else -torch.expm1((1.0 - t1) * lpy) / (1.0 - t1)
        sum_pow = torch.exp((2.0 - t1) * logp).sum(dim=1)
        ctx.save_for_backward(logp, target)
        ctx.temperatures = (t1, t2)
        return minus_log_t1_py - (1.0 - sum_pow) / (2.0 - t1)

    @staticmethod
    def backward(ctx, grad_rows: Tensor):
        if torch.is_grad_enabled():
            # create_graph=True. once_differentiable would only catch a grad_output that requires
            # grad; with a plain seed the gradient would come back without a graph, and a
            # gradient penalty built on it would silently get zero second derivatives.
            raise RuntimeError(
                "bitemp: double backward (create_graph=True) is not supported; its implicit "
                "gradient is once-differentiable"
            )
        logp, target = ctx.saved_tensors
        t1, t2 = ctx.temperatures
        positive = torch.isfinite(logp)
        logp0 = torch.where(positive, logp, torch.zeros_like(logp))
        forget = torch.where(positive, torch.exp((t2 - t1) * logp0), torch.zeros_like(logp))
        # p - e_y with the label entry formed as expm1(log p_y) (no cancellation at p_y -> 1).
        p_minus_y = torch.exp(logp)
        label = target.unsqueeze(1)
        p_minus_y = p_minus_y.scatter(1, label, torch.expm1(logp.gather(1, label)))
        weighted = p_minus_y * forget
        escort = torch.softmax(t2 * logp, dim=1)
        grad = weighted - escort * weighted.sum(dim=1, keepdim=True)
        return grad * grad_rows.unsqueeze(1), None, None, None, None


def _bitemp(a: Tensor, target: Tensor, t1: float, t2: float, num_iters: int) -> Tensor:
    return _BiTemperedRows.apply(a, target, t1, t2, int(num_iters))


# ---- entry point --------------------------------------------------------------------------------


def loss_rows(
    logits: Tensor,
    target: Tensor,
    spec: LossSpec,
    params: tuple[float, ...],
    epsilon: float | Tensor = 0.0,
) -> Tensor:
    """Per-row loss ``L(softmax(z + eps e_y), y)`` for already validated inputs.

    Args:
        logits: ``[N, K]`` floating tensor.
        target: ``[N]`` int64 labels, all in ``[0, K)`` (ignored rows already replaced).
        spec: the loss.
        params: hyper-parameters in spec order (see :meth:`LossSpec.resolve`).
        epsilon: logit bias, a float or a ``[N]`` tensor.

    Returns:
        ``[N]`` losses in float32 (float64 for float64 logits).
    """
    return term_rows(logits, target, spec.bind(params), epsilon)


def term_rows(logits: Tensor, target: Tensor, terms: Sequence[BoundTerm], epsilon: float | Tensor = 0.0) -> Tensor:
    """:func:`loss_rows` of the weighted sum of bound primitives ``terms`` (:meth:`LossSpec.bind`)."""
    z = logits.to(compute_dtype(logits.dtype))
    zb = biased_logits(z, target, epsilon)
    nan_rows = _nan_rows(zb)
    # The NaN rows are computed on zeros, so that whatever they hold cannot reach the gradient
    # of another row or give a finite value; their result is then the poison term.
    zb_safe = zb.masked_fill(nan_rows.unsqueeze(1), 0.0)
    if terms and terms[0].primitive.name == "bitemp":
        prm = terms[0].params
        rows = terms[0].weight * _bitemp(zb_safe, target, prm["t1"], prm["t2"], int(prm["num_iters"]))
    else:
        logp = torch.log_softmax(zb_safe, dim=1)
        lpy = _label_log_prob(zb_safe, target, logp)
        rows = sum((term.weight * _term_rows(term, logp, lpy) for term in terms), torch.zeros_like(lpy))
    # sum_j zb_j * NaN on the NaN rows (loss NaN, and NaN for every logit and the row's bias),
    # 0 * 0 elsewhere (no 0 * inf: the other rows' logits are masked to 0 first).
    poison = torch.where(nan_rows, float("nan"), 0.0).to(rows.dtype)
    rows = rows.masked_fill(nan_rows, 0.0) + zb.masked_fill(~nan_rows.unsqueeze(1), 0.0).sum(dim=1) * poison
    return rows


def _nan_rows(zb: Tensor) -> Tensor:
    """Rows that are NaN rows by the policy every backend follows: a NaN or a ``+inf`` among the
    biased logits, or only ``-inf`` (no distribution). ``-inf`` entries in a row with a finite
    maximum are legal: classes with ``p = 0``. Left to ``log_softmax`` a ``+inf`` at the label
    would give ``log p_y = -log1p(0) = 0``, a finite loss with a NaN gradient."""
    return zb.isnan().any(dim=1) | zb.isposinf().any(dim=1) | zb.isneginf().all(dim=1)


# ---- expected loss over a target distribution -----------------------------------------------------


def _log_prob_with_own_bias(z: Tensor, epsilon: float | Tensor) -> Tensor:
    """``log q_k``: the log-probability of class ``k`` in ``softmax(z + eps e_k)``, for every ``k``.

    ``log q_k = -log1p(exp(x_k))`` with ``x_k = log sum_{j != k} exp(z_j - z_k) - eps``. For the
    row's argmax the sum ``s`` is formed directly and ``-log1p(exp(-eps) s)`` is exact as
    ``q -> 1`` (``log_softmax`` would round ``log(1 + s)`` to ``ulp(1)``); for every other class
    the sum of the others holds the max term 1, so ``S - exp(z_k - m)`` does not cancel, and
    ``-softplus(x)`` is formed without overflow for a very unlikely class.
    """
    eps = epsilon.to(z.dtype).unsqueeze(1) if isinstance(epsilon, Tensor) else epsilon
    m = z.amax(dim=1, keepdim=True)
    e = torch.exp(z - m)
    is_max = torch.arange(z.shape[1], device=z.device) == z.argmax(dim=1, keepdim=True)
    s = e.masked_fill(is_max, 0.0).sum(dim=1, keepdim=True)  # sum over the argmax's others
    # Stand-ins keep the branch `where` discards finite (its gradient would still be 0 * inf).
    others = torch.where(is_max, 1.0, e.sum(dim=1, keepdim=True) - e)
    x = torch.log(others) + torch.where(is_max, 0.0, m - z) - eps
    minus_softplus = -(torch.relu(x) + torch.log1p(torch.exp(-torch.abs(x))))
    at_max = -torch.log1p(torch.exp(-torch.as_tensor(eps, dtype=z.dtype)) * torch.where(is_max, s, 0.0))
    return torch.where(is_max, at_max, minus_softplus)


def _soft_nce(z: Tensor, log_q: Tensor, epsilon: float | Tensor) -> Tensor:
    """nce with label k, for every k: ``-log q_k / D_k``, ``D_k = -sum_j log p^(k)_j``.

    ``p^(k)_j = a_j q_k / (a_k e^eps)`` off the label, so ``D_k = -sum_j log a_j + (K - 1) eps +
    K (log a_k - log q_k)``. A row with a class of ``p = 0`` has ``D = inf`` and nce 0 (as
    :func:`_normalized`), computed on stand-ins so that no inf / inf reaches the backward.
    """
    eps = epsilon.to(z.dtype).unsqueeze(1) if isinstance(epsilon, Tensor) else epsilon
    num_classes = z.shape[1]
    log_a = torch.log_softmax(z, dim=1)
    infinite = torch.isinf(log_a.sum(dim=1, keepdim=True))
    log_a = torch.where(infinite, -1.0, log_a)
    log_q = torch.where(infinite, -1.0, log_q)
    denominator = -log_a.sum(dim=1, keepdim=True) + (num_classes - 1) * eps + num_classes * (log_a - log_q)
    return torch.where(infinite, 0.0, -log_q / denominator)


def soft_term_rows(
    logits: Tensor, coefficients: Tensor, terms: Sequence[BoundTerm], epsilon: float | Tensor = 0.0
) -> Tensor:
    """``sum_k u_k L(z + eps e_k, k)`` per row: the expected loss over the class coefficients ``u``
    (``docs/drop-in.md``), one row pass, differentiable by autograd.

    Args:
        logits: ``[N, K]`` floating tensor (rows of a NaN, a ``+inf`` or only ``-inf`` give NaN).
        coefficients: ``[N, K]`` non-negative ``u`` in the compute dtype; a class with
            ``u_k = 0`` contributes exactly 0, whatever its logit.
        terms: bound primitives, each with a one-pass form (``Primitive.soft_targets``).
        epsilon: logit bias, a float or a ``[N]`` tensor.
    """
    z = logits.to(compute_dtype(logits.dtype))
    eps_col = epsilon.to(z.dtype).unsqueeze(1) if isinstance(epsilon, Tensor) else epsilon
    nan_rows = _nan_rows(z + eps_col)
    z_safe = z.masked_fill(nan_rows.unsqueeze(1), 0.0)
    eps_safe = epsilon.masked_fill(nan_rows, 0.0) if isinstance(epsilon, Tensor) else epsilon
    u = coefficients.to(z.dtype)
    present = u != 0
    log_q = torch.where(present, _log_prob_with_own_bias(z_safe, eps_safe), -1.0)
    per_class = torch.zeros_like(z)
    for term in terms:
        prm = dict(term.params)
        if term.primitive.name == "aul":
            prm["a_minus_1"] = prm["a"] - 1.0
        if term.primitive.name == "nce":
            value = _soft_nce(z_safe, log_q, eps_safe)
        elif term.primitive.normalizes or not term.primitive.soft_targets:
            raise ValueError(f"{term.primitive.name}: no one-pass expected loss over a target distribution")
        else:
            value = _label_term(term.primitive.name, log_q, z.shape[1], prm)
        per_class = per_class + term.weight * value
    rows = torch.where(present, u * per_class, 0.0).sum(dim=1)
    poison = torch.where(nan_rows, float("nan"), 0.0).to(rows.dtype)
    return rows.masked_fill(nan_rows, 0.0) + z.masked_fill(~nan_rows.unsqueeze(1), 0.0).sum(dim=1) * poison
