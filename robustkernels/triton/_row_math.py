"""Per-row loss values and gradient coefficients of every loss except ``bitemp`` (Triton device code).

With ``p = softmax(z + eps e_y)`` every loss of :data:`robustkernels.LOSSES` (bar ``bitemp``) has

    dL/dz_j = A (p_j - delta_jy) + B p_j + C + E h_j

with per-row scalars ``A, B, C, E`` (Fast-LLM's "two per-row coefficients", extended):

* losses of ``p_y`` alone, ``L = f(p_y)``: ``dL/dz_j = f'(p_y) p_y (delta_jy - p_j)``, so
  ``A = -f'(p_y) p_y = -dL/dlog p_y`` and ``B = C = E = 0``;
* NCE adds ``B p_j + C`` (its normaliser depends on every class);
* NFL adds ``B p_j + E h_j`` with ``h`` the per-class focal derivative (recomputed per element).

The bias does not change these formulas: ``z -> z + eps e_y`` is a shift, so ``dL/dz = dL/dz~`` at
``p~``. The label lane's ``p_y - 1`` is formed by the caller as ``expm1(log p_y)`` in fp32 so that it
does not cancel when ``p_y -> 1`` (bf16 would round it to 0 otherwise).

Loss kinds are compile-time constants read from the spec registry (the single source of truth);
every hyper-parameter is a runtime scalar.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..specs import LOSSES
from ._math import expm1, log1p, log_over_one_minus, pow_nonneg, zeros_like

CE = tl.constexpr(LOSSES["ce"].kind)
MAE = tl.constexpr(LOSSES["mae"].kind)
GCE = tl.constexpr(LOSSES["gce"].kind)
AGCE = tl.constexpr(LOSSES["agce"].kind)
AUL = tl.constexpr(LOSSES["aul"].kind)
AEL = tl.constexpr(LOSSES["ael"].kind)
NCE = tl.constexpr(LOSSES["nce"].kind)
FOCAL = tl.constexpr(LOSSES["focal"].kind)
NFL = tl.constexpr(LOSSES["nfl"].kind)
RCE = tl.constexpr(LOSSES["rce"].kind)
SCE = tl.constexpr(LOSSES["sce"].kind)
NCE_MAE = tl.constexpr(LOSSES["nce_mae"].kind)
NF_MAE = tl.constexpr(LOSSES["nf_mae"].kind)
NCE_RCE = tl.constexpr(LOSSES["nce_rce"].kind)
NCE_AGCE = tl.constexpr(LOSSES["nce_agce"].kind)
BITEMP = tl.constexpr(LOSSES["bitemp"].kind)

#: Loss kinds whose gradient has the NCE terms (a row sum of log p) / the NFL terms (row sums of
#: focal_k and h_k). The launcher turns membership into the kernels' LOGP_SUM / FOCAL_SUMS constexprs.
#: Both follow from the terms each spec names, as the C++ families do (csrc/loss_kinds.h).
LOGP_SUM_KINDS = frozenset(s.kind for s in LOSSES.values() if "nce" in s.terms)
FOCAL_SUMS_KINDS = frozenset(s.kind for s in LOSSES.values() if "nfl" in s.terms)


@triton.jit
def focal_parts(logp, gamma):
    """``focal = -(1-p)^g log p`` and ``h = -d focal / d log p = (1-p)^g (1 - g p log p / (1-p))``.

    ``d focal_k / dz_j = h_k (p_j - delta_jk)``; ``h`` is the *exact* derivative (the published code
    detaches the weight ``(1-p)^g``; see the spec notes).
    """
    one_minus_p = -expm1(logp)
    weight = pow_nonneg(one_minus_p, gamma)
    focal = -weight * logp
    # p log p / (1 - p) -> 0 as p -> 0, but at p = 0 (log p = -inf) the product is 0 * -inf = NaN:
    # select the limit, so that h = w and the gradient is p_j - [j == y] as in the reference.
    p = tl.exp(logp)
    p_log_ratio = tl.where(p > 0.0, p * log_over_one_minus(logp, one_minus_p), 0.0)
    h = weight * (1.0 - gamma * p_log_ratio)
    return focal, h


@triton.jit
def _agce_term(py, one_minus_py, a, q):
    # (a+1)^q - (a+p)^q = -(a+1)^q expm1(q l), l = log r, r = (a+p)/(a+1). While r >= 1/2, l is
    # log1p(-(1-p)/(a+1)): no cancellation near p = 1. Below, log r directly: as a -> 0 and p -> 0
    # the argument of log1p tends to -1, and 1 + x keeps only ulp(1) / r of its relative accuracy
    # (the loss tends to log(1/r) for q -> 0, so that error is the loss's).
    a_plus_p = a + py
    ratio = a_plus_p / (a + 1.0)
    small = ratio < 0.5
    log_ratio = tl.where(small, tl.log(tl.where(small, ratio, 1.0)), log1p(-one_minus_py / (a + 1.0)))
    loss = -tl.exp(q * tl.log(a + 1.0)) * expm1(q * log_ratio) / q
    coef = tl.exp((q - 1.0) * tl.log(a_plus_p)) * py
    return loss, coef


@triton.jit
def _nce_term(lpy, sum_logp, num_classes):
    # L = c / S with c = -log p_y, S = -sum_k log p_k. Using d log p_k / dz_j = delta_jk - p_j:
    #   dL/dz_j = [(p_j - delta_jy) S - c (K p_j - 1)] / S^2
    #           = (1/S)(p_j - delta_jy) - (c/S^2) K p_j + c/S^2.
    # A -inf logit makes S = +inf: loss 0 and all coefficients 0, the limit the reference gives.
    # (c/S)/S instead of c/S^2: S^2 overflows fp32 for S > 1.8e19.
    inv_s = -1.0 / sum_logp
    c_over_s2 = (-lpy * inv_s) * inv_s
    return lpy / sum_logp, inv_s, -c_over_s2 * num_classes, c_over_s2


@triton.jit
def _nfl_term(focal_y, h_y, focal_sum, h_sum, zero_p):
    # L = N / D, N = focal_y, D = sum_k focal_k, d focal_k/dz_j = h_k (p_j - delta_jk), so
    #   dN/dz_j = h_y (p_j - delta_jy),  dD/dz_j = p_j H - h_j  (H = sum_k h_k),
    #   dL/dz_j = (h_y/D)(p_j - delta_jy) - (N H / D^2) p_j + (N / D^2) h_j.
    # A class with p_k = 0 (a -inf logit) has focal_k = inf: loss 0 with zero gradient (its limit).
    ratio = focal_y / focal_sum
    loss = tl.where(zero_p, 0.0, ratio)
    coef_a = tl.where(zero_p, 0.0, h_y / focal_sum)
    coef_b = tl.where(zero_p, 0.0, -ratio * (h_sum / focal_sum))
    coef_e = tl.where(zero_p, 0.0, ratio / focal_sum)
    return loss, coef_a, coef_b, coef_e


@triton.jit
def row_terms(
    KIND: tl.constexpr,
    lpy,
    sum_logp,
    num_classes,
    focal_sum,
    h_sum,
    zero_p,
    scale,
    q,
    a,
    a_minus_1,
    gamma,
    rce_a,
    alpha,
    beta,
):
    """Per-row ``(loss, A, B, C, E)`` of loss ``KIND`` from ``log p_y`` and the row reductions.

    ``a_minus_1`` is ``a - 1`` (AUL), formed once per program rather than from ``a`` here.

    ``sum_logp`` is only read by the NCE kinds, ``focal_sum / h_sum / zero_p`` only by the NFL
    kinds (callers pass zeros otherwise).
    """
    py = tl.exp(lpy)
    one_minus_py = -expm1(lpy)
    zero = zeros_like(lpy)
    loss = zero
    coef_a = zero
    coef_b = zero
    coef_c = zero
    coef_e = zero
    if KIND == CE:
        loss = -lpy
        coef_a = zero + 1.0
    elif KIND == MAE:
        loss = scale * one_minus_py
        coef_a = scale * py
    elif KIND == GCE:
        loss = -expm1(q * lpy) / q
        coef_a = tl.exp(q * lpy)
    elif KIND == AGCE:
        loss, coef_a = _agce_term(py, one_minus_py, a, q)
    elif KIND == AUL:
        # (a-p)^q - (a-1)^q = (a-1)^q expm1(q log1p((1-p)/(a-1))), and a - p = (a-1) + (1-p): both
        # parts positive, where a - p itself would cancel for a -> 1 and p -> 1.
        loss = tl.exp(q * tl.log(a_minus_1)) * expm1(q * log1p(one_minus_py / a_minus_1)) / q
        coef_a = tl.exp((q - 1.0) * tl.log(a_minus_1 + one_minus_py)) * py
    elif KIND == AEL:
        loss = tl.exp(-py / a)
        coef_a = loss * py / a
    elif KIND == NCE:
        loss, coef_a, coef_b, coef_c = _nce_term(lpy, sum_logp, num_classes)
    elif KIND == FOCAL:
        focal_y, h_y = focal_parts(lpy, gamma)
        loss = focal_y
        coef_a = h_y
    elif KIND == NFL:
        focal_y, h_y = focal_parts(lpy, gamma)
        loss, coef_a, coef_b, coef_e = _nfl_term(focal_y, h_y, focal_sum, h_sum, zero_p)
    elif KIND == RCE:
        loss = -rce_a * one_minus_py
        coef_a = -rce_a * py
    elif KIND == SCE:
        loss = -alpha * lpy - beta * rce_a * one_minus_py
        coef_a = alpha - beta * rce_a * py
    elif KIND == NCE_MAE:
        loss, coef_a, coef_b, coef_c = _nce_term(lpy, sum_logp, num_classes)
        loss = alpha * loss + beta * one_minus_py
        coef_a = alpha * coef_a + beta * py
        coef_b = alpha * coef_b
        coef_c = alpha * coef_c
    elif KIND == NF_MAE:
        focal_y, h_y = focal_parts(lpy, gamma)
        loss, coef_a, coef_b, coef_e = _nfl_term(focal_y, h_y, focal_sum, h_sum, zero_p)
        loss = alpha * loss + beta * one_minus_py
        coef_a = alpha * coef_a + beta * py
        coef_b = alpha * coef_b
        coef_e = alpha * coef_e
    elif KIND == NCE_RCE:
        loss, coef_a, coef_b, coef_c = _nce_term(lpy, sum_logp, num_classes)
        loss = alpha * loss - beta * rce_a * one_minus_py
        coef_a = alpha * coef_a - beta * rce_a * py
        coef_b = alpha * coef_b
        coef_c = alpha * coef_c
    elif KIND == NCE_AGCE:
        loss, coef_a, coef_b, coef_c = _nce_term(lpy, sum_logp, num_classes)
        agce_loss, agce_a = _agce_term(py, one_minus_py, a, q)
        loss = alpha * loss + beta * agce_loss
        coef_a = alpha * coef_a + beta * agce_a
        coef_b = alpha * coef_b
        coef_c = alpha * coef_c
    return loss, coef_a, coef_b, coef_c, coef_e
