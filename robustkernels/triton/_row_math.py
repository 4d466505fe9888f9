"""Per-row loss and gradient coefficients composed from the primitives of a term mask (device code).

With ``p = softmax(z + eps e_y)`` every loss but ``bitemp`` is a weighted sum of primitives
(:data:`robustkernels.specs.PRIMITIVES`) and has

    dL/dz_j = A (p_j - delta_jy) + B p_j + sum_n E_n g_n(log p_j)

with per-row scalars ``A, B`` and one ``E_n`` per normalised primitive ``n`` present:

* a label-only primitive ``f(log p_y)`` (ce, mae, gce, agce, aul, ael, rce, focal, nmae, nrce) adds
  ``A += -w f'(log p_y)``, since ``d log p_y / dz_j = delta_jy - p_j``;
* a normalised primitive ``w N / D`` (nce, nfl, ngce) with base ``L`` and ``g = dL/dlog p``,
  ``N = L(log p_y)``, ``D = sum_k L(log p_k)``, ``G = sum_k g(log p_k)``, adds ``A += -w g_y / D``,
  ``B += w (N/D)(G/D)`` and its per-element term ``E g(log p_j)``, ``E = -w (N/D) / D``.

The bias does not change these formulas: ``z -> z + eps e_y`` is a shift, so ``dL/dz = dL/dz~`` at
``p~``. The label lane's ``p_y - 1`` is formed by the caller as ``expm1(log p_y)`` in the compute
dtype so that it does not cancel when ``p_y -> 1`` (bf16 would round it to 0 otherwise).

Every primitive is one ``(log p, prm, K) -> (value, slope)`` function, ``slope = d value / d log p``,
evaluated on the label's log-probability (a row) or on every lane (the bases of the normalised forms).
``prm`` is the primitive's slot tuple: its weight, its parameters in spec order, then its derived
slots (:data:`robustkernels.specs.KERNEL_SLOTS`). Which primitives run is the compile-time mask
``TERMS`` (bit ``1 << Primitive.bit``); every weight and parameter is a runtime scalar. Upper-case
arguments are compile-time constants: the mask, a presence flag, or a primitive function.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..specs import PRIMITIVES
from ._math import as_tensor_of, expm1, log1p, log_over_one_minus, pow_nonneg, row_sum, zeros_like

# Each primitive's bit in the term mask. The mask is written on the left of `&` in device code
# (`NCE & TERMS`): the interpreter hands constexpr arguments over as plain ints, and only the
# constexpr side knows the operator.
assert " ".join(PRIMITIVES) == "ce mae gce agce aul ael rce focal nce nfl ngce nmae nrce bitemp", (
    "the names below follow specs.PRIMITIVES in bit order"
)
CE, MAE, GCE, AGCE, AUL, AEL, RCE, FOCAL, NCE, NFL, NGCE, NMAE, NRCE, BITEMP = (
    tl.constexpr(1 << p.bit) for p in PRIMITIVES.values()
)


# ---- primitives: (value, d value / d log p) --------------------------------------------------


@triton.jit
def ce_term(lp, prm, num_classes):
    """``-log p``; the base of nce, whose per-element slope is the constant -1."""
    return -lp, zeros_like(lp) - 1.0


@triton.jit
def mae_term(lp, prm, num_classes):
    return -expm1(lp), -tl.exp(lp)


@triton.jit
def gce_term(lp, prm, num_classes):
    """``(1 - p^q) / q`` as ``-expm1(q log p) / q`` (no cancellation as q -> 0); the base of ngce."""
    _, q = prm
    return -expm1(q * lp) / q, -tl.exp(q * lp)


@triton.jit
def agce_term(lp, prm, num_classes):
    # (a+1)^q - (a+p)^q = -(a+1)^q expm1(q l), l = log r, r = (a+p)/(a+1). While r >= 1/2, l is
    # log1p(-(1-p)/(a+1)): no cancellation near p = 1. Below, log r directly: as a -> 0 and p -> 0
    # the argument of log1p tends to -1, and 1 + x keeps only ulp(1) / r of its relative accuracy
    # (the loss tends to log(1/r) for q -> 0, so that error is the loss's).
    _, a, q = prm
    p = tl.exp(lp)
    a_plus_1 = as_tensor_of(a, lp) + 1.0
    a_plus_p = a + p
    ratio = a_plus_p / a_plus_1
    small = ratio < 0.5
    log_ratio = tl.where(small, tl.log(tl.where(small, ratio, 1.0)), log1p(expm1(lp) / a_plus_1))
    value = -tl.exp(q * tl.log(a_plus_1)) * expm1(q * log_ratio) / q
    return value, -tl.exp((as_tensor_of(q, lp) - 1.0) * tl.log(a_plus_p)) * p


@triton.jit
def aul_term(lp, prm, num_classes):
    # (a-p)^q - (a-1)^q = (a-1)^q expm1(q log1p((1-p)/(a-1))), and a - p = (a-1) + (1-p): both
    # parts positive, where a - p itself would cancel for a -> 1 and p -> 1. a - 1 is a slot formed
    # on the host in double: the kernel's a is rounded to fp32 when compiled.
    _, _, q, a_minus_1 = prm
    a_minus_1 = as_tensor_of(a_minus_1, lp)
    one_minus_p = -expm1(lp)
    value = tl.exp(q * tl.log(a_minus_1)) * expm1(q * log1p(one_minus_p / a_minus_1)) / q
    return value, -tl.exp((as_tensor_of(q, lp) - 1.0) * tl.log(a_minus_1 + one_minus_p)) * tl.exp(lp)


@triton.jit
def ael_term(lp, prm, num_classes):
    _, a = prm
    p = tl.exp(lp)
    value = tl.exp(-p / a)
    return value, -value * p / a


@triton.jit
def rce_term(lp, prm, num_classes):
    # -A (1 - p) = A expm1(log p).
    _, rce_a = prm
    return rce_a * expm1(lp), rce_a * tl.exp(lp)


@triton.jit
def focal_parts(lp, gamma):
    """``focal = -(1-p)^g log p`` and ``h = -d focal / d log p = (1-p)^g (1 - g p log p / (1-p))``.

    ``h`` is the *exact* derivative (the published code detaches the weight ``(1-p)^g``; see the
    spec notes).
    """
    one_minus_p = -expm1(lp)
    weight = pow_nonneg(one_minus_p, gamma)
    focal = -weight * lp
    # p log p / (1 - p) -> 0 as p -> 0, but at p = 0 (log p = -inf) the product is 0 * -inf = NaN:
    # select the limit, so that h = w and the gradient is p_j - [j == y] as in the reference.
    p = tl.exp(lp)
    p_log_ratio = tl.where(p > 0.0, p * log_over_one_minus(lp, one_minus_p), 0.0)
    return focal, weight * (1.0 - gamma * p_log_ratio)


@triton.jit
def focal_term(lp, prm, num_classes):
    """The focal loss; the base of nfl."""
    _, gamma = prm
    focal, h = focal_parts(lp, gamma)
    return focal, -h


@triton.jit
def nmae_term(lp, prm, num_classes):
    # mae is symmetric (sum_k (1 - p_k) = K - 1): its normalised form is a constant rescaling.
    return -expm1(lp) / (num_classes - 1), -tl.exp(lp) / (num_classes - 1)


@triton.jit
def nrce_term(lp, prm, num_classes):
    # The published normaliser `1 / 4 * (K - 1)` multiplies rce by (K - 1) / 4.
    _, rce_a = prm
    return rce_a * expm1(lp) * (num_classes - 1) / 4, rce_a * tl.exp(lp) * (num_classes - 1) / 4


# ---- composition -------------------------------------------------------------------------------


@triton.jit
def _label_term(ON, TERM, lpy, prm, num_classes, acc):
    """``(loss, A, B) + w * (f, -f', 0)`` for the label-only primitive ``TERM`` when present."""
    if ON:
        value, slope = TERM(lpy, prm, num_classes)
        loss, coef_a, coef_b = acc
        acc = (loss + prm[0] * value, coef_a - prm[0] * slope, coef_b)
    return acc


@triton.jit
def _normalised_term(ON, BASE, lpy, prm, num_classes, sums, acc):
    """Adds ``w N / D`` of the normalised form of ``BASE`` to ``(loss, A, B)``; returns its ``E`` too.

    ``sums`` is ``(D, G)``. With ``d log p_k / dz_j = delta_jk - p_j``: ``dN/dz_j = g_y (delta_jy -
    p_j)`` and ``dD/dz_j = g_j - p_j G``, so ``d(N/D)/dz_j = -(g_y/D)(p_j - delta_jy) + (N/D)(G/D) p_j
    - ((N/D)/D) g_j``: (N/D)/D, never N/D^2, which overflows fp32 for D > 1.8e19. An infinite ``D``
    (nce, nfl: a class with p_k = 0, where L = inf) is the limit of the ratio, 0, with zero gradient.
    """
    e = zeros_like(lpy)
    if ON:
        d, g_sum = sums
        value_y, slope_y = BASE(lpy, prm, num_classes)
        finite = d != float("inf")
        ratio = tl.where(finite, value_y / d, 0.0)
        inv_d = tl.where(finite, 1.0 / d, 0.0)
        loss, coef_a, coef_b = acc
        acc = (loss + prm[0] * ratio, coef_a - prm[0] * slope_y * inv_d, coef_b + prm[0] * ratio * (g_sum * inv_d))
        e = -(prm[0] * ratio) * inv_d
    return acc, e


@triton.jit
def row_terms(TERMS, lpy, num_classes, labels, norms, sums):
    """Per-row ``loss`` and ``(A, B, E_nce, E_nfl, E_ngce)`` of the primitives in ``TERMS``.

    ``labels`` / ``norms`` are the slot tuples of the label-only / normalised primitives, ``sums``
    the ``(D, G)`` row sums of nce, nfl and ngce (only those present are read).
    """
    ce, mae, gce, agce, aul, ael, rce, focal, nmae, nrce = labels
    nce, nfl, ngce = norms
    nce_sums, nfl_sums, ngce_sums = sums
    zero = zeros_like(lpy)
    acc = (zero, zero, zero)
    acc = _label_term(CE & TERMS, ce_term, lpy, ce, num_classes, acc)
    acc = _label_term(MAE & TERMS, mae_term, lpy, mae, num_classes, acc)
    acc = _label_term(GCE & TERMS, gce_term, lpy, gce, num_classes, acc)
    acc = _label_term(AGCE & TERMS, agce_term, lpy, agce, num_classes, acc)
    acc = _label_term(AUL & TERMS, aul_term, lpy, aul, num_classes, acc)
    acc = _label_term(AEL & TERMS, ael_term, lpy, ael, num_classes, acc)
    acc = _label_term(RCE & TERMS, rce_term, lpy, rce, num_classes, acc)
    acc = _label_term(FOCAL & TERMS, focal_term, lpy, focal, num_classes, acc)
    acc = _label_term(NMAE & TERMS, nmae_term, lpy, nmae, num_classes, acc)
    acc = _label_term(NRCE & TERMS, nrce_term, lpy, nrce, num_classes, acc)
    acc, e_nce = _normalised_term(NCE & TERMS, ce_term, lpy, nce, num_classes, nce_sums, acc)
    acc, e_nfl = _normalised_term(NFL & TERMS, focal_term, lpy, nfl, num_classes, nfl_sums, acc)
    acc, e_ngce = _normalised_term(NGCE & TERMS, gce_term, lpy, ngce, num_classes, ngce_sums, acc)
    loss, coef_a, coef_b = acc
    return loss, (coef_a, coef_b, e_nce, e_nfl, e_ngce)


# ---- per-lane pieces of the normalised primitives ---------------------------------------------


@triton.jit
def _add_lane_sums(ON, BASE, lp, lane, prm, num_classes, d, g_sum):
    if ON:
        value, slope = BASE(lp, prm, num_classes)
        d += row_sum(tl.where(lane, value, 0.0))
        g_sum += row_sum(tl.where(lane, slope, 0.0))
    return d, g_sum


@triton.jit
def normalised_lane_sums(TERMS, lp, lane, norms, num_classes, sums):
    """``sums = (D_nfl, G_nfl, D_ngce, G_ngce)`` plus this tile's lanes (nce's come from the online
    softmax pass, as ``K log s - sum_k (z_k - m)``, with no extra read of the row)."""
    _, nfl, ngce = norms
    nfl_d, nfl_g, ngce_d, ngce_g = sums
    nfl_d, nfl_g = _add_lane_sums(NFL & TERMS, focal_term, lp, lane, nfl, num_classes, nfl_d, nfl_g)
    ngce_d, ngce_g = _add_lane_sums(NGCE & TERMS, gce_term, lp, lane, ngce, num_classes, ngce_d, ngce_g)
    return nfl_d, nfl_g, ngce_d, ngce_g


@triton.jit
def _add_slope(ON, BASE, lp, prm, num_classes, coef, grad):
    if ON:
        grad += coef[:, None] * BASE(lp, prm, num_classes)[1]
    return grad


@triton.jit
def normalised_lane_grad(TERMS, lp, norms, num_classes, coefs, grad):
    """``grad + sum_n E_n g_n(log p_j)`` over the normalised primitives present."""
    nce, nfl, ngce = norms
    _, _, e_nce, e_nfl, e_ngce = coefs
    grad = _add_slope(NCE & TERMS, ce_term, lp, nce, num_classes, e_nce, grad)
    grad = _add_slope(NFL & TERMS, focal_term, lp, nfl, num_classes, e_nfl, grad)
    grad = _add_slope(NGCE & TERMS, gce_term, lp, ngce, num_classes, e_ngce, grad)
    return grad
