"""The Triton kernels: fused biased softmax + loss + analytic gradient, and the backward rescale.

What a kernel computes
----------------------
``fused_loss_kernel`` evaluates the weighted sum of the primitives in its term mask ``TERMS`` (a
``tl.constexpr``: :func:`robustkernels.specs.term_mask`), so any combination -- a registered loss or
one built by :func:`robustkernels.specs.combine` -- is the same kernel specialised on its mask; the
weights and parameters are runtime scalars named after :data:`robustkernels.specs.KERNEL_SLOTS`. The
per-row math is :mod:`._row_math`, the bi-tempered loss :mod:`._bitemp`, the row tiles :mod:`._tiles`.

The same kernel takes the drop-in arguments of ``F.cross_entropy``: with integer labels and at most
class weights (``LABEL_ONLY``) it runs the rows above, scaled by ``w_y`` where there are weights; with
label smoothing or a probability target it evaluates the expected loss over the class coefficients
``u_k`` (:mod:`._soft`), each primitive's value and slope still those of :mod:`._row_math`.

Memory traffic (why the common case is one read of the logits and one write of the gradient)
----------------------------------------------------------------------------------------------
``SINGLE_PASS`` (``K`` up to the heuristic's limit, 8192): each logit is read once, the whole row
stays in registers, and every row reduction the terms need (max, sum of exponentials, ``sum log p``
for nce, ``sum L(p_k)`` / ``sum g(p_k)`` for nfl and ngce, the tempered normalisation for bitemp) is
computed there; the fp32 per-row loss and -- when the logits require grad -- the finished gradient
``dL/dz`` in the logits' dtype are written into a fresh buffer. For ``reduction="mean"`` the ``1 /
(number of non-ignored rows)`` is read from a 1-element device tensor and folded in, so for
``loss.backward()`` on a mean or sum loss the buffer already *is* the gradient.
``rescale_grad_kernel`` (the first backward) reads ``grad_output`` on the device; where it is 1
every lane is masked off and the kernel moves no gradient bytes, and the buffer is handed to
autograd as the gradient (it becomes ``.grad`` without a copy). Forward + backward therefore cost
one read of the logits and one write of the gradient plus ``O(N)`` (labels, losses, the row
count). Otherwise (a weighted or per-row upstream gradient) it scales the kernel's own buffer in
place (one more read + write); the user's logits are never written. A later backward of the same
graph (``retain_graph=True``) recomputes the gradient (see :mod:`robustkernels._fused_autograd`).

For ``K`` beyond the single-pass limit the row is processed in column tiles: an online max /
sum-of-exponentials pass (which also sums ``log p`` for nce), then the gradient pass (two reads;
three with nfl or ngce, whose row sums need the final log-sum-exp; bitemp re-reads the row for
each normalisation step).

Numerics: every load is converted to fp32 (fp64 for fp64 logits: the math then runs in fp64, and
only the hyper-parameters and the scalar eps, which compiled Triton passes as fp32, are rounded to
fp32). Row offsets are int64. Padded lanes are set to -inf again after the bias is added so they
never enter a reduction. ``log p = (z - m) - log s`` as ``log_softmax`` does, and ``p_y - 1 =
expm1(log p_y)``. ``exp(x - m)`` uses ``m := 0`` when the row maximum is -inf, so a -inf logit at a
non-label position is simply a class with p = 0 (no ``-inf + inf``). Row policy: a row holding a
NaN, a +inf or only -inf logits gives a NaN loss and a NaN gradient row (as ``log_softmax`` does);
ignored rows are not read (loss 0, gradient 0); invalid labels (outside ``[0, K)``, not
``ignore_index``) give a NaN loss row and a NaN gradient row -- the label is only ever compared with
column indices, never used as an address.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._bitemp import BISECTION_STEPS, bitemp_row
from ._math import expm1, log1p, to_output, zeros_like
from ._row_math import BITEMP, NFL, NGCE, normalised_lane_grad, normalised_lane_sums, row_terms
from ._soft import soft_rows
from ._tiles import first_tile, row_block, row_pass, row_scalars, row_stats, store_grad

__all__ = ["fused_loss_kernel", "rescale_grad_kernel", "BISECTION_STEPS", "to_output"]


@triton.jit
def _log_partition(sum_exp, others_exp, label_shifted):
    """``log sum_k exp(z_k - m)``.

    When the label holds the row maximum (``z_y - m == 0``) the sum is ``1 + others``, and
    ``log1p(others)`` keeps ``log p_y = -log1p(others)`` accurate as ``p_y -> 1``: ``log(1 + others)``
    keeps only ``ulp(1) / others`` of it (9e-4 relative, measured at ``1 - p_y = 1e-4``) and rounds it to 0
    below ``others = 6e-8``, where ``1 - p_y`` would come out exactly 0. The native kernels do the
    same (``log_partition`` in ``csrc/loss_math.h``).
    """
    return tl.where(label_shifted == 0.0, log1p(others_exp), tl.log(sum_exp))


@triton.jit
def _lane_log_p(tile, m, log_s):
    # log p = (z - m) - log s, never (z - (m + log s)): rounding m + log s at the scale of m costs
    # ulp(m) absolute in log p, i.e. ulp(m) / (1 - p_y) relative in 1 - p_y.
    return (tile[0] - m[:, None]) - log_s[:, None]


@triton.jit
def _normalised_sums_visit(sums, tile, ctx, TERMS):
    m, log_s, norms, num_classes = ctx
    return normalised_lane_sums(TERMS, _lane_log_p(tile, m, log_s), tile[2], norms, num_classes, sums)


@triton.jit
def _softmax_grad_visit(state, tile, ctx, TERMS):
    """``dL/dz_j = A (p_j - delta_jy) + B p_j + sum_n E_n g_n(log p_j)`` (see :mod:`._row_math`),
    the label lane's ``p_y - 1`` as ``expm1(log p_y)``."""
    m, log_s, lpy, coefs, norms, dst, nan_rows = ctx
    x, is_label, lane, cols, start = tile
    lp = _lane_log_p(tile, m, log_s)
    p = tl.exp(lp)
    grad = coefs[0][:, None] * tl.where(is_label, expm1(lpy)[:, None], p) + coefs[1][:, None] * p
    store_grad(dst, nan_rows, cols, normalised_lane_grad(TERMS, lp, norms, dst[5], coefs, grad))
    return state


@triton.jit
def _softmax_row(src, dst, invalid, labels, norms, TERMS, HAS_GRAD, FP64, BLOCK_K, SINGLE_PASS):
    """Per-row ``(loss, nan_rows)`` of the softmax primitives in ``TERMS``; writes the gradient with
    ``HAS_GRAD``. Passes: the online softmax statistics, the lanes' sums of nfl / ngce when present,
    the gradient."""
    tile = first_tile(src, FP64, BLOCK_K, SINGLE_PASS)
    stats = row_stats(tile, src, invalid, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    m, sum_exp, others_exp, label_logit, sum_shifted, nan_rows = stats
    log_s = _log_partition(sum_exp, others_exp, label_logit - m)
    lpy = (label_logit - m) - log_s  # as the lanes: never round m + log s first
    num_classes = src[2]
    zero = zeros_like(lpy)
    # nce's D = -sum_k log p_k = K log s - sum_k (z_k - m): two terms >= 0, no cancellation; its
    # G = sum_k d(-log p_k)/d log p_k = -K.
    nce_sums = (num_classes * log_s - sum_shifted, zero - num_classes)
    lane_sums = (zero, zero, zero, zero)
    if (NFL | NGCE) & TERMS:
        ctx = (m, log_s, norms, num_classes)
        lane_sums = row_pass(_normalised_sums_visit, lane_sums, tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    nfl_d, nfl_g, ngce_d, ngce_g = lane_sums
    sums = (nce_sums, (nfl_d, nfl_g), (ngce_d, ngce_g))
    loss, coefs = row_terms(TERMS, lpy, num_classes, labels, norms, sums)
    if HAS_GRAD:
        ctx = (m, log_s, lpy, coefs, norms, dst, nan_rows)
        row_pass(_softmax_grad_visit, zero, tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    return loss, nan_rows


@triton.jit
def _label_rows(
    logits,
    labels_in,
    bias,
    outputs,
    row_weight_ptr,
    num_rows,
    num_classes,
    ignore_index,
    slots,
    TERMS,
    EPS_PER_ROW,
    HAS_GRAD,
    HAS_INV_COUNT,
    HAS_ROW_WEIGHT,
    FP64,
    ROWS,
    BLOCK_K,
    SINGLE_PASS,
):
    """Integer labels: the per-row loss (and gradient) of ``ROWS`` rows, scaled by the row weight
    ``w_y`` (read from ``row_weight_ptr``, gathered on the host) with ``HAS_ROW_WEIGHT``.

    ``logits = (ptr, row stride)``, ``labels_in = (ptr, stride)``, ``bias = (per-row ptr, stride,
    scalar)``, ``outputs = (loss ptr, gradient ptr, 1 / count ptr)``, ``slots = (labels, norms,
    bitemp)`` as the kernel groups them."""
    logits_ptr, stride_row = logits
    target_ptr, stride_target = labels_in
    eps_ptr, stride_eps, eps_scalar = bias
    loss_ptr, grad_ptr, inv_count_ptr = outputs
    labels, norms, bitemp = slots
    rows64, row_ok, label, ignored, invalid = row_block(
        target_ptr, stride_target, num_rows, num_classes, ignore_index, ROWS
    )
    active = row_ok & (~ignored) & (~invalid)
    eps, norm = row_scalars(
        eps_ptr, stride_eps, eps_scalar, inv_count_ptr, rows64, active, EPS_PER_ROW, HAS_INV_COUNT, FP64
    )
    row_weight = norm
    if HAS_ROW_WEIGHT:
        row_weight = tl.load(row_weight_ptr + rows64, mask=active, other=0.0).to(norm.dtype)
        norm = norm * row_weight
    src = (logits_ptr, rows64 * stride_row, num_classes, active, label, eps)
    dst = (grad_ptr, rows64, row_ok, ignored, norm, num_classes)
    if BITEMP & TERMS:
        loss, nan_rows = bitemp_row(src, dst, invalid, bitemp, TERMS, HAS_GRAD, FP64, BLOCK_K, SINGLE_PASS)
    else:
        loss, nan_rows = _softmax_row(src, dst, invalid, labels, norms, TERMS, HAS_GRAD, FP64, BLOCK_K, SINGLE_PASS)
    if HAS_ROW_WEIGHT:
        # A row of weight 0 contributes exactly 0, even where its loss is infinite (p_y = 0).
        loss = tl.where(row_weight == 0.0, 0.0, loss * row_weight)
    loss = tl.where(nan_rows, float("nan"), loss)
    loss = tl.where(ignored, 0.0, loss)
    tl.store(loss_ptr + rows64, loss, mask=row_ok)


@triton.jit(do_not_specialize=["ignore_index", "bitemp_num_iters"])
def fused_loss_kernel(
    logits_ptr,
    stride_row,
    target_ptr,
    stride_target,
    stride_target_col,
    weight_ptr,
    row_weight_ptr,
    eps_ptr,
    stride_eps,
    eps_scalar,
    loss_ptr,
    grad_ptr,
    inv_count_ptr,
    grad_scale,
    num_rows,
    num_classes,
    ignore_index,
    target_scale,
    uniform_share,
    ce_weight,
    mae_weight,
    gce_weight,
    gce_q,
    agce_weight,
    agce_a,
    agce_q,
    aul_weight,
    aul_a,
    aul_q,
    ael_weight,
    ael_a,
    rce_weight,
    rce_A,
    focal_weight,
    focal_gamma,
    nce_weight,
    nfl_weight,
    nfl_gamma,
    ngce_weight,
    ngce_q,
    nmae_weight,
    nrce_weight,
    nrce_A,
    bitemp_weight,
    bitemp_t1,
    bitemp_t2,
    bitemp_num_iters,
    aul_a_minus_1,
    bitemp_two_minus_t1,
    TERMS: tl.constexpr,
    LABEL_ONLY: tl.constexpr,
    FLOAT_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    EPS_PER_ROW: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_INV_COUNT: tl.constexpr,
    FP64: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SINGLE_PASS: tl.constexpr,
):
    """Per-row loss (and, with ``HAS_GRAD``, the gradient) of ``ROWS`` rows per program; the scalars
    after ``uniform_share`` are :data:`~robustkernels.specs.KERNEL_SLOTS`. ``SINGLE_PASS``: ``BLOCK_K
    >= K``, the row stays in registers; otherwise it is walked in ``BLOCK_K`` tiles.

    ``LABEL_ONLY`` (integer labels, no smoothing): the integer-label rows, scaled by the row weights
    ``w_y`` at ``row_weight_ptr`` with ``HAS_WEIGHT`` (every loss, the cost of the integer path). Otherwise
    the expected loss ``sum_k u_k L(z + eps e_k, k)`` of :mod:`._soft` with ``u_k = w_k (target_scale
    t_k + uniform_share)``, ``t`` the float target row (``FLOAT_TARGET``) or the one-hot label, the
    class weights ``w`` at ``weight_ptr`` (``HAS_WEIGHT``), ``target_scale = 1 - alpha`` and
    ``uniform_share = alpha / K`` formed on the host in double. ``grad_scale`` multiplies the gradient
    (``1 / N`` for the mean over probability targets).
    """
    # Each primitive's slots as one tuple, as ._row_math reads them: its weight, its parameters in
    # spec order, then its derived slots (aul's a - 1 and bitemp's 2 - t1, formed on the host in double).
    labels = (
        (ce_weight,),
        (mae_weight,),
        (gce_weight, gce_q),
        (agce_weight, agce_a, agce_q),
        (aul_weight, aul_a, aul_q, aul_a_minus_1),
        (ael_weight, ael_a),
        (rce_weight, rce_A),
        (focal_weight, focal_gamma),
        (nmae_weight,),
        (nrce_weight, nrce_A),
    )
    norms = ((nce_weight,), (nfl_weight, nfl_gamma), (ngce_weight, ngce_q))
    bitemp = (bitemp_weight, bitemp_t1, bitemp_t2, bitemp_num_iters, bitemp_two_minus_t1)
    if LABEL_ONLY:
        _label_rows(
            (logits_ptr, stride_row),
            (target_ptr, stride_target),
            (eps_ptr, stride_eps, eps_scalar),
            (loss_ptr, grad_ptr, inv_count_ptr),
            row_weight_ptr,
            num_rows,
            num_classes,
            ignore_index,
            (labels, norms, bitemp),
            TERMS=TERMS,
            EPS_PER_ROW=EPS_PER_ROW,
            HAS_GRAD=HAS_GRAD,
            HAS_INV_COUNT=HAS_INV_COUNT,
            HAS_ROW_WEIGHT=HAS_WEIGHT,
            FP64=FP64,
            ROWS=ROWS,
            BLOCK_K=BLOCK_K,
            SINGLE_PASS=SINGLE_PASS,
        )
    else:
        soft_rows(
            (logits_ptr, stride_row),
            (target_ptr, stride_target, stride_target_col, weight_ptr, target_scale, uniform_share),
            (eps_ptr, stride_eps, eps_scalar),
            (loss_ptr, grad_ptr, inv_count_ptr, grad_scale),
            num_rows,
            num_classes,
            ignore_index,
            labels,
            norms,
            TERMS=TERMS,
            FLOAT_TARGET=FLOAT_TARGET,
            HAS_WEIGHT=HAS_WEIGHT,
            EPS_PER_ROW=EPS_PER_ROW,
            HAS_GRAD=HAS_GRAD,
            HAS_INV_COUNT=HAS_INV_COUNT,
            FP64=FP64,
            ROWS=ROWS,
            BLOCK_K=BLOCK_K,
            SINGLE_PASS=SINGLE_PASS,
        )


# ---- the backward kernel -----------------------------------------------------------------------


@triton.jit
def rescale_grad_kernel(
    grad_ptr,
    grad_out_ptr,
    stride_grad_out,
    num_rows,
    num_classes,
    PER_ROW: tl.constexpr,
    FP64: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``grad *= grad_output`` in place on the rows where ``grad_output != 1`` (first backward only).

    ``grad_output`` is read on the device (no host sync); where it is 1 every lane is masked off, so
    no gradient byte moves: the ``loss.backward()`` case.
    """
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < num_rows
    rows64 = rows.to(tl.int64)
    if PER_ROW:
        factor = tl.load(grad_out_ptr + rows64 * stride_grad_out, mask=row_ok, other=1.0)
    else:
        factor = tl.full([ROWS], 0, grad_out_ptr.dtype.element_ty) + tl.load(grad_out_ptr)
    if FP64:
        factor = factor.to(tl.float64)
    else:
        factor = factor.to(tl.float32)
    change = row_ok & (factor != 1.0)
    mask = change[:, None] & (cols < num_classes)[None, :]
    ptrs = grad_ptr + rows64[:, None] * num_classes + cols[None, :]
    values = tl.load(ptrs, mask=mask, other=0.0).to(factor.dtype)
    tl.store(ptrs, to_output(values * factor[:, None], grad_ptr.dtype.element_ty), mask=mask)
