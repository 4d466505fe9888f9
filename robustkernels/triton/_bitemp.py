"""The bi-tempered logistic loss (Amid et al.) and its implicit-function gradient (Triton device code).

``p = exp_t2(a - lambda)`` with ``sum_k p_k = 1``; the normalisation ``lambda`` is found exactly as
Google's implementation does (:func:`_bitemp_lambda`), each of its steps a pass over the row (from
registers on the single-pass path, re-read tile by tile otherwise). ``bitemp`` is never combined
with other primitives: it has its own softmax. Its slot tuple is ``(weight, t1, t2, num_iters,
2 - t1)``, ``2 - t1`` formed on the host in double (compiled, the kernel's t1 is fp32, and 2 - t1
formed from it would keep only its rounding error near t1 = 2). Upper-case arguments are
compile-time constants.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import as_tensor_of, expm1, expm1_over, log_exp_t, neg_log_t_of_reciprocal, row_sum, zeros_like
from ._tiles import first_tile, row_pass, row_stats, store_grad

#: Bisection steps of the t2 < 1 tempered normalisation: the bracket [0, -log_t(1/d)] is at most
#: 1/(1 - t2) wide and halves each step, so 64 steps leave 2^-64 / (1 - t2) (< 1e-16 for t2 <= 0.99),
#: far below the fp32 (and fp64) resolution of lambda: the solve is converged with a fixed count
#: (no data-dependent loop). Matches robustkernels.reference.BISECTION_STEPS.
BISECTION_STEPS = tl.constexpr(64)


@triton.jit
def _exp_t_visit(total, tile, ctx, TERMS):
    # sum_k exp_t(factor * (z~_k - mu) - shift, t): padded lanes (-inf) give exp_t = 0 for every t.
    mu, factor, shift, t = ctx
    u = (tile[0] - mu[:, None]) * factor[:, None] - shift[:, None]
    return total + row_sum(tl.exp(log_exp_t(u, t)))


@triton.jit
def _support_visit(count, tile, ctx, TERMS):
    # Classes inside the support of exp_t at lambda = 0 (a0 > -1/(1-t)), t < 1.
    mu, edge = ctx
    return count + row_sum(tl.where(tile[0] - mu[:, None] > edge[:, None], 1.0, 0.0)).to(count.dtype)


@triton.jit
def _exp_t_sum(tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS):
    return row_pass(_exp_t_visit, zeros_like(ctx[0]), tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS)


@triton.jit
def _bitemp_lambda(tile, src, mu, t2, num_iters, TERMS, FP64, BLOCK_K, SINGLE_PASS):
    """``lambda_t2(a) - mu`` with ``sum_k exp_t2(a_k - lambda) = 1``, exactly as Google's algorithm:

    * t2 = 1: log-sum-exp;
    * t2 > 1: ``num_iters`` fixed-point steps ``a^ = a0 * Z^(1 - t2)``, ``Z = sum exp_t(a^)``, then
      ``lambda = -log_t(1/Z)``. ``a^`` is ``a0`` times a per-row scalar, so the tiled path needs
      no buffer: it re-reads ``a0`` and carries the scalar;
    * t2 < 1: bisection of ``sum exp_t(a0 - lambda) = 1`` on ``[0, -log_t(1/d)]``, ``d`` the support
      size, ``BISECTION_STEPS`` halvings.

    t2 is a runtime scalar, so the three cases are runtime branches (uniform over the program).
    """
    zero = zeros_like(mu)
    one = zero + 1.0
    lam = zero
    if t2 == 1.0:
        lam = tl.log(_exp_t_sum(tile, src, (mu, one, zero, t2), TERMS, FP64, BLOCK_K, SINGLE_PASS))
    elif t2 > 1.0:
        factor = one
        for _ in range(num_iters):
            partition = _exp_t_sum(tile, src, (mu, factor, zero, t2), TERMS, FP64, BLOCK_K, SINGLE_PASS)
            factor = tl.exp((1.0 - as_tensor_of(t2, mu)) * tl.log(partition))
        partition = _exp_t_sum(tile, src, (mu, factor, zero, t2), TERMS, FP64, BLOCK_K, SINGLE_PASS)
        lam = neg_log_t_of_reciprocal(partition, t2)
    else:
        edge = -1.0 / (1.0 - as_tensor_of(t2, mu))
        support = row_pass(_support_visit, zero, tile, src, (mu, edge), TERMS, FP64, BLOCK_K, SINGLE_PASS)
        lower = zero
        upper = neg_log_t_of_reciprocal(support, t2)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lower + upper)
            below = _exp_t_sum(tile, src, (mu, one, mid, t2), TERMS, FP64, BLOCK_K, SINGLE_PASS) < 1.0
            upper = tl.where(below, mid, upper)
            lower = tl.where(below, lower, mid)
        lam = 0.5 * (lower + upper)
    return lam


@triton.jit
def _bitemp_lanes(tile, ctx):
    """Per-lane pieces of the bi-tempered loss and its implicit-function gradient.

    With ``f = p^(t2 - t1)`` (0 where p = 0: there p is locally constant, which also removes the
    ``0 * inf`` of ``0^(t2-t1)``) and escorts ``s = p^t2 / sum p^t2``:
    ``dL/da_j = (p_j - delta_jy) f_j - s_j sum_k (p_k - delta_ky) f_k``
    (robustkernels.reference._BiTemperedRows). Returns ``p^(2-t1)``, ``w = (p - e_y) f`` and the
    unnormalised escort ``p^t2 / max_k p_k^t2``, each 0 on padded lanes.
    """
    x, is_label, lane, cols, start = tile
    mu, lam, lpy, logp_max, t2_minus_t1, prm = ctx
    _, _, t2, _, two_minus_t1 = prm
    logp = log_exp_t(x - mu[:, None] - lam[:, None], t2)
    positive = lane & (logp != float("-inf"))
    logp0 = tl.where(positive, logp, 0.0)
    pow_2_t1 = tl.where(positive, tl.exp(two_minus_t1 * logp0), 0.0)
    forget = tl.where(positive, tl.exp(t2_minus_t1[:, None] * logp0), 0.0)
    p_minus_y = tl.where(is_label, expm1(lpy)[:, None], tl.exp(logp))
    weighted = tl.where(lane, p_minus_y * forget, 0.0)
    escort = tl.where(positive, tl.exp(t2 * (logp0 - logp_max[:, None])), 0.0)
    return pow_2_t1, weighted, escort


@triton.jit
def _sums_visit(state, tile, ctx, TERMS):
    sum_pow, sum_weighted, sum_escort = state
    pow_2_t1, weighted, escort = _bitemp_lanes(tile, ctx)
    return sum_pow + row_sum(pow_2_t1), sum_weighted + row_sum(weighted), sum_escort + row_sum(escort)


@triton.jit
def _grad_visit(state, tile, ctx, TERMS):
    lanes, escort_scale, dst, nan_rows = ctx
    _, weighted, escort = _bitemp_lanes(tile, lanes)
    store_grad(dst, nan_rows, tile[3], lanes[5][0] * (weighted - escort * escort_scale[:, None]))
    return state


@triton.jit
def _bitemp_loss(lpy, sum_pow, t1, two_minus_t1):
    # -log_t1(p_y) - (1 - sum_k p_k^(2-t1)) / (2 - t1), log_t1(p) = expm1((1-t1) log p) / (1-t1).
    return -expm1_over(lpy, 1.0 - as_tensor_of(t1, lpy)) - (1.0 - sum_pow) / two_minus_t1


@triton.jit
def bitemp_row(src, dst, invalid, prm, TERMS, HAS_GRAD, FP64, BLOCK_K, SINGLE_PASS):
    """Per-row ``(loss, nan_rows)`` of ``weight * bitemp``; writes the gradient with ``HAS_GRAD``."""
    weight, t1, t2, num_iters, two_minus_t1 = prm
    tile = first_tile(src, FP64, BLOCK_K, SINGLE_PASS)
    mu, _, _, label_logit, _, nan_rows = row_stats(tile, src, invalid, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    lam = _bitemp_lambda(tile, src, mu, t2, num_iters, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    lpy = log_exp_t(label_logit - mu - lam, t2)
    logp_max = log_exp_t(-lam, t2)  # exp_t is increasing: the largest p is at a0 = 0
    lanes = (mu, lam, lpy, logp_max, as_tensor_of(t2, mu) - t1, prm)
    zero = zeros_like(mu)
    sums = row_pass(_sums_visit, (zero, zero, zero), tile, src, lanes, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    sum_pow, sum_weighted, sum_escort = sums
    if HAS_GRAD:
        ctx = (lanes, sum_weighted / sum_escort, dst, nan_rows)
        row_pass(_grad_visit, zero, tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    return weight * _bitemp_loss(lpy, sum_pow, t1, two_minus_t1), nan_rows
