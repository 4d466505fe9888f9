"""The Triton kernels: fused biased softmax + loss + analytic gradient, and the backward rescale.

Memory traffic (why the common case is one read of the logits and one write of the gradient)
----------------------------------------------------------------------------------------------
``fused_loss_kernel`` reads each logit once, keeps the whole row (``SINGLE_PASS``: ``K`` up to
the heuristic's limit, 8192) in registers, computes every row reduction the loss needs there (max,
sum of exponentials, ``sum log p`` for NCE, ``sum focal_k`` / ``sum h_k`` for NFL, the tempered
normalisation for bi-tempered), writes the fp32 per-row loss and -- when the logits require grad --
the finished gradient ``dL/dz`` in the logits' dtype into a fresh buffer. For ``reduction="mean"``
the ``1 / (number of non-ignored rows)`` is read from a 1-element device tensor and folded in, so
for ``loss.backward()`` on a mean or sum loss the buffer already *is* the gradient.
``rescale_grad_kernel`` (the first backward) reads ``grad_output`` on the device; where it is 1
every lane is masked off and the kernel moves no gradient bytes, and the buffer is handed to
autograd as the gradient (it becomes ``.grad`` without a copy). Forward + backward therefore cost
one read of the logits and one write of the gradient plus ``O(N)`` (labels, losses, the row
count). Otherwise (a weighted or per-row upstream gradient) it scales the kernel's own buffer in
place (one more read + write); the user's logits are never written. A later backward of the same
graph (``retain_graph=True``) rescales out of place by ``new / first`` grad_output (see
:mod:`robustkernels.triton.op`).

For ``K`` beyond the single-pass limit the row is processed in column tiles: an online max /
sum-of-exponentials pass, then the gradient pass (two reads; three for NFL, whose focal sums need
the final log-sum-exp; bi-tempered re-reads the row for each normalisation step).

Numerics: every load is converted to fp32 (fp64 for fp64 logits: the math then runs in fp64, and
only the hyper-parameters and the scalar eps, which Triton passes as fp32, are rounded to fp32). Row
offsets are int64. Padded lanes are set to -inf again after the bias is added so they never enter a
reduction. ``log p = (z - m) - log s`` as ``log_softmax`` does, and ``p_y - 1 = expm1(log p_y)``.
``exp(x - m)`` uses ``m := 0`` when the row maximum is -inf, so a -inf logit at a non-label position
is simply a class with p = 0 (no ``-inf + inf``). Row policy, applied explicitly because the GPU's
``max`` ignores NaN and clamps swallow it: a row holding a NaN, a +inf or only -inf logits gives a
NaN loss and a NaN gradient row (as ``log_softmax`` does); ignored rows are not read (loss 0,
gradient 0); invalid labels (outside ``[0, K)``, not ``ignore_index``) give a NaN loss row and a
NaN gradient row -- the label is only ever compared with column indices, never used as an address.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import expm1, log1p, log_exp_t, neg_log_t_of_reciprocal, row_max, row_sum, to_output, zeros_like
from ._row_math import BITEMP, focal_parts, row_terms

__all__ = ["fused_loss_kernel", "rescale_grad_kernel", "BISECTION_STEPS"]

#: Bisection steps of the t2 < 1 tempered normalisation: the bracket [0, -log_t(1/d)] is at most
#: 1/(1 - t2) wide and halves each step, so 64 steps leave 2^-64 / (1 - t2) (< 1e-16 for t2 <= 0.99),
#: far below the fp32 (and fp64) resolution of lambda: the solve is converged with a fixed count
#: (no data-dependent loop). Matches robustkernels.reference.BISECTION_STEPS.
BISECTION_STEPS = tl.constexpr(64)


@triton.jit
def _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64: tl.constexpr):
    """Tile ``z + eps e_y`` in the compute dtype, -inf on padded lanes and on inactive rows."""
    lane = active[:, None] & (cols < num_classes)[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=lane, other=float("-inf"))
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    is_label = cols[None, :] == label[:, None]
    x = tl.where(is_label, x + eps[:, None], x)
    # Re-mask after the bias: whatever an elementwise transform does, padded lanes must stay -inf.
    x = tl.where(lane, x, float("-inf"))
    return x, is_label, lane


@triton.jit
def _safe_max(m):
    # exp(x - m) with m = -inf is exp(-inf + inf) = NaN; with m := 0 every -inf lane gives 0 instead.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _finish_rows(grad, ignored, nan_rows):
    """Ignored rows: gradient 0 whatever they hold; invalid labels, NaN and all -inf rows: NaN row."""
    grad = tl.where(nan_rows[:, None], float("nan"), grad)
    return tl.where(ignored[:, None], 0.0, grad)


@triton.jit
def _nan_lanes(x):
    # Counted explicitly: the GPU's max ignores NaN and the tempered clamps / bisection comparisons
    # would swallow it, so "a NaN logit gives a NaN row" cannot be left to propagation.
    return row_sum((x != x).to(tl.int32))


@triton.jit
def _store_grad(grad_ptr, rows64, cols, num_classes, row_ok, grad):
    mask = row_ok[:, None] & (cols < num_classes)[None, :]
    out = grad_ptr + rows64[:, None] * num_classes + cols[None, :]
    tl.store(out, to_output(grad, grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_from_terms(
    p, is_label, lpy, coef_a, coef_b, coef_c, coef_e, h, LOGP_SUM: tl.constexpr, FOCAL_SUMS: tl.constexpr
):
    """``A (p_j - delta_jy) + B p_j + C + E h_j`` with the label lane's ``p_y - 1 = expm1(log p_y)``."""
    p_minus_y = tl.where(is_label, expm1(lpy)[:, None], p)
    grad = coef_a[:, None] * p_minus_y
    if LOGP_SUM:
        grad += coef_b[:, None] * p + coef_c[:, None]
    if FOCAL_SUMS:
        grad += coef_b[:, None] * p + coef_e[:, None] * h
    return grad


@triton.jit
def _safe_focal(x, m, log_s, lane, gamma):
    """``(focal_k, h_k)`` per lane and the lanes with p_k = 0 (a -inf logit), which the NFL limit zeroes."""
    zero_p = lane & (x == float("-inf"))
    logp = tl.where(lane & (x != float("-inf")), (x - m[:, None]) - log_s[:, None], 0.0)
    focal, h = focal_parts(logp, gamma)
    return tl.where(lane, focal, 0.0), tl.where(lane, h, 0.0), zero_p


# ---- bi-tempered: normalisation lambda_t2 (relative to the row max mu) -------------------------


@triton.jit
def _sum_exp_t(
    SINGLE_PASS: tl.constexpr,
    a0,
    logits_ptr,
    row_off,
    num_classes,
    active,
    label,
    eps,
    mu,
    factor,
    shift,
    t,
    FP64: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``sum_k exp_t(factor * a0_k - shift, t)`` per row, ``a0 = z~ - mu``; from the register tile
    ``a0`` (single pass) or by re-reading the row tile by tile."""
    if SINGLE_PASS:
        u = a0 * factor[:, None] - shift[:, None]
        total = row_sum(tl.exp(log_exp_t(u, t)))
    else:
        total = zeros_like(mu)
        for start in range(0, num_classes, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
            u = (x - mu[:, None]) * factor[:, None] - shift[:, None]
            total += row_sum(tl.exp(log_exp_t(u, t)))
    return total


@triton.jit
def _support_size(
    SINGLE_PASS: tl.constexpr,
    a0,
    logits_ptr,
    row_off,
    num_classes,
    active,
    label,
    eps,
    mu,
    t,
    FP64: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Number of classes inside the support of exp_t at lambda = 0 (``a0 > -1/(1-t)``), t < 1."""
    edge = -1.0 / (1.0 - t)
    if SINGLE_PASS:
        count = row_sum(tl.where(a0 > edge, 1.0, 0.0)).to(mu.dtype)
    else:
        count = zeros_like(mu)
        for start in range(0, num_classes, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
            count += row_sum(tl.where(x - mu[:, None] > edge, 1.0, 0.0)).to(mu.dtype)
    return count


@triton.jit
def _bitemp_lambda(
    SINGLE_PASS: tl.constexpr,
    a0,
    logits_ptr,
    row_off,
    num_classes,
    active,
    label,
    eps,
    mu,
    t2,
    num_iters,
    FP64: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """``lambda_t2(a) - mu`` with ``sum_k exp_t2(a_k - lambda) = 1``, exactly as Google's algorithm:

    * t2 = 1: log-sum-exp;
    * t2 > 1: ``num_iters`` fixed-point steps ``a^ = a0 * Z^(1 - t2)``, ``Z = sum exp_t(a^)``, then
      ``lambda = -log_t(1/Z)``. ``a^`` is ``a0`` times a per-row scalar, so the blocked path needs
      no buffer: it re-reads ``a0`` and carries the scalar;
    * t2 < 1: bisection of ``sum exp_t(a0 - lambda) = 1`` on ``[0, -log_t(1/d)]``, ``d`` the support
      size, ``BISECTION_STEPS`` halvings.

    t2 is a runtime scalar, so the three cases are runtime branches (uniform over the program).
    """
    zero = zeros_like(mu)
    one = zero + 1.0
    lam = zero
    if t2 == 1.0:
        lam = tl.log(
            _sum_exp_t(
                SINGLE_PASS, a0, logits_ptr, row_off, num_classes, active, label, eps, mu, one, zero, t2, FP64, BLOCK_K
            )
        )
    elif t2 > 1.0:
        factor = one
        for _ in range(num_iters):
            partition = _sum_exp_t(
                SINGLE_PASS,
                a0,
                logits_ptr,
                row_off,
                num_classes,
                active,
                label,
                eps,
                mu,
                factor,
                zero,
                t2,
                FP64,
                BLOCK_K,
            )
            factor = tl.exp((1.0 - t2) * tl.log(partition))
        partition = _sum_exp_t(
            SINGLE_PASS, a0, logits_ptr, row_off, num_classes, active, label, eps, mu, factor, zero, t2, FP64, BLOCK_K
        )
        lam = neg_log_t_of_reciprocal(partition, t2)
    else:
        support = _support_size(
            SINGLE_PASS, a0, logits_ptr, row_off, num_classes, active, label, eps, mu, t2, FP64, BLOCK_K
        )
        lower = zero
        upper = neg_log_t_of_reciprocal(support, t2)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lower + upper)
            total = _sum_exp_t(
                SINGLE_PASS, a0, logits_ptr, row_off, num_classes, active, label, eps, mu, one, mid, t2, FP64, BLOCK_K
            )
            below = total < 1.0
            upper = tl.where(below, mid, upper)
            lower = tl.where(below, lower, mid)
        lam = 0.5 * (lower + upper)
    return lam


@triton.jit
def _bitemp_lanes(x, is_label, lane, mu, lam, lpy, logp_max, t1, t2, two_minus_t1):
    """Per-lane pieces of the bi-tempered loss and its implicit-function gradient.

    With ``f = p^(t2 - t1)`` (0 where p = 0: there p is locally constant, which also removes the
    ``0 * inf`` of ``0^(t2-t1)``) and escorts ``s = p^t2 / sum p^t2``:
    ``dL/da_j = (p_j - delta_jy) f_j - s_j sum_k (p_k - delta_ky) f_k``
    (robustkernels.reference._BiTemperedRows). Returns ``p^(2-t1)``, ``w = (p - e_y) f`` and the
    unnormalised escort ``p^t2 / max_k p_k^t2``, each 0 on padded lanes.
    """
    logp = log_exp_t(x - mu[:, None] - lam[:, None], t2)
    positive = lane & (logp != float("-inf"))
    logp0 = tl.where(positive, logp, 0.0)
    pow_2_t1 = tl.where(positive, tl.exp(two_minus_t1 * logp0), 0.0)
    forget = tl.where(positive, tl.exp((t2 - t1) * logp0), 0.0)
    p_minus_y = tl.where(is_label, expm1(lpy)[:, None], tl.exp(logp))
    weighted = tl.where(lane, p_minus_y * forget, 0.0)
    escort = tl.where(positive, tl.exp(t2 * (logp0 - logp_max[:, None])), 0.0)
    return pow_2_t1, weighted, escort


@triton.jit
def _bitemp_loss(lpy, sum_pow, t1, two_minus_t1):
    # -log_t1(p_y) - (1 - sum_k p_k^(2-t1)) / (2 - t1), log_t1(p) = expm1((1-t1) log p) / (1-t1).
    one_minus_t1 = 1.0 - t1
    is_one = one_minus_t1 == 0.0
    minus_log_t1 = tl.where(is_one, -lpy, -expm1(one_minus_t1 * lpy) / tl.where(is_one, 1.0, one_minus_t1))
    return minus_log_t1 - (1.0 - sum_pow) / two_minus_t1


# ---- the forward kernel ------------------------------------------------------------------------


@triton.jit
def _log_partition(sum_exp, others_exp, label_shifted):
    """``log sum_k exp(z_k - m)`` for the label and focal families.

    When the label holds the row maximum (``z_y - m == 0``) the sum is ``1 + others``, and
    ``log1p(others)`` keeps ``log p_y = -log1p(others)`` accurate as ``p_y -> 1``: ``log(1 + others)``
    keeps only ``ulp(1) / others`` of it (9e-4 relative, measured at ``1 - p_y = 1e-4``) and rounds it to 0
    below ``others = 6e-8``, where ``1 - p_y`` would come out exactly 0. The native kernels do the
    same (``log_partition`` in ``csrc/loss_math.h``).
    """
    return tl.where(label_shifted == 0.0, log1p(others_exp), tl.log(sum_exp))


@triton.jit(do_not_specialize=["ignore_index", "num_iters"])
def fused_loss_kernel(
    logits_ptr,
    stride_row,
    target_ptr,
    stride_target,
    eps_ptr,
    stride_eps,
    eps_scalar,
    loss_ptr,
    grad_ptr,
    inv_count_ptr,
    num_rows,
    num_classes,
    ignore_index,
    scale,
    q,
    a,
    gamma,
    rce_a,
    alpha,
    beta,
    t1,
    t2,
    a_minus_1,
    two_minus_t1,
    num_iters,
    KIND: tl.constexpr,
    LOGP_SUM: tl.constexpr,
    FOCAL_SUMS: tl.constexpr,
    EPS_PER_ROW: tl.constexpr,
    HAS_GRAD: tl.constexpr,
    HAS_INV_COUNT: tl.constexpr,
    FP64: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SINGLE_PASS: tl.constexpr,
):
    """Per-row loss (and, with ``HAS_GRAD``, the gradient) of ``ROWS`` rows per program.

    ``SINGLE_PASS``: ``BLOCK_K >= K``, the row tile stays in registers. Otherwise the row is walked in
    ``BLOCK_K`` tiles (see the module docstring for the number of passes).
    """
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < num_rows
    rows64 = rows.to(tl.int64)  # int64 offsets: N * K may exceed 2^31
    label = tl.load(target_ptr + rows64 * stride_target, mask=row_ok, other=ignore_index)
    ignored = label == ignore_index
    invalid = ((label < 0) | (label >= num_classes)) & (~ignored)
    active = row_ok & (~ignored) & (~invalid)
    if EPS_PER_ROW:
        eps = tl.load(eps_ptr + rows64 * stride_eps, mask=active, other=0.0)
    else:
        eps = tl.full([ROWS], 0, tl.float32) + eps_scalar
    if FP64:
        eps = eps.to(tl.float64)
    else:
        eps = eps.to(tl.float32)
    row_off = rows64 * stride_row
    zero_rows = zeros_like(eps)
    norm = zero_rows + 1.0
    if HAS_INV_COUNT:
        norm = norm * tl.load(inv_count_ptr)
    if KIND == BITEMP:
        # ---- bi-tempered logistic loss -----------------------------------------------------
        if SINGLE_PASS:
            cols = tl.arange(0, BLOCK_K)
            x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
            mu = row_max(x)
            label_logit = row_sum(tl.where(is_label, x, 0.0))
            nan_count = _nan_lanes(x)
            a0 = x - mu[:, None]
        else:
            mu = zero_rows + float("-inf")
            label_logit = zero_rows
            nan_count = tl.full([ROWS], 0, tl.int32)
            for start in range(0, num_classes, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                mu = tl.maximum(mu, row_max(x))
                label_logit += row_sum(tl.where(is_label, x, 0.0))
                nan_count += _nan_lanes(x)
            a0 = tl.full([ROWS, BLOCK_K], 0, eps.dtype)  # unused: the blocked helpers re-read
        nan_rows = invalid | (nan_count > 0) | (mu == float("-inf")) | (mu == float("inf"))
        lam = _bitemp_lambda(
            SINGLE_PASS, a0, logits_ptr, row_off, num_classes, active, label, eps, mu, t2, num_iters, FP64, BLOCK_K
        )
        lpy = log_exp_t(label_logit - mu - lam, t2)
        logp_max = log_exp_t(-lam, t2)  # exp_t is increasing: the largest p is at a0 = 0
        if SINGLE_PASS:
            pow_2_t1, weighted, escort = _bitemp_lanes(x, is_label, lane, mu, lam, lpy, logp_max, t1, t2, two_minus_t1)
            sum_pow = row_sum(pow_2_t1)
            sum_weighted = row_sum(weighted)
            sum_escort = row_sum(escort)
        else:
            sum_pow = zero_rows
            sum_weighted = zero_rows
            sum_escort = zero_rows
            for start in range(0, num_classes, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                pow_2_t1, weighted, escort = _bitemp_lanes(
                    x, is_label, lane, mu, lam, lpy, logp_max, t1, t2, two_minus_t1
                )
                sum_pow += row_sum(pow_2_t1)
                sum_weighted += row_sum(weighted)
                sum_escort += row_sum(escort)
        loss = _bitemp_loss(lpy, sum_pow, t1, two_minus_t1)
        if HAS_GRAD:
            escort_scale = sum_weighted / sum_escort
            if SINGLE_PASS:
                grad = (weighted - escort * escort_scale[:, None]) * norm[:, None]
                _store_grad(grad_ptr, rows64, cols, num_classes, row_ok, _finish_rows(grad, ignored, nan_rows))
            else:
                for start in range(0, num_classes, BLOCK_K):
                    cols = start + tl.arange(0, BLOCK_K)
                    x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                    pow_2_t1, weighted, escort = _bitemp_lanes(
                        x, is_label, lane, mu, lam, lpy, logp_max, t1, t2, two_minus_t1
                    )
                    grad = (weighted - escort * escort_scale[:, None]) * norm[:, None]
                    _store_grad(grad_ptr, rows64, cols, num_classes, row_ok, _finish_rows(grad, ignored, nan_rows))
    else:
        # ---- softmax losses: row stats -> (loss, A, B, C, E) -> gradient -------------------
        sum_logp = zero_rows
        focal_sum = zero_rows
        h_sum = zero_rows
        zero_p = ignored & (~ignored)  # all False, [ROWS]
        if SINGLE_PASS:
            cols = tl.arange(0, BLOCK_K)
            x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
            x_max = row_max(x)
            nan_rows = invalid | (_nan_lanes(x) > 0) | (x_max == float("-inf")) | (x_max == float("inf"))
            m = _safe_max(x_max)
            shifted = x - m[:, None]
            e = tl.exp(shifted)
            sum_exp = row_sum(e)
            label_shifted = row_sum(tl.where(is_label, shifted, 0.0))
            log_s = _log_partition(sum_exp, row_sum(tl.where(is_label, 0.0, e)), label_shifted)
            # log p = (z - m) - log s, never (z - (m + log s)): rounding m + log s at the scale of m
            # costs ulp(m) absolute in log p_y, i.e. ulp(m) / (1 - p_y) relative in 1 - p_y.
            lpy = label_shifted - log_s
            if LOGP_SUM:
                sum_logp = row_sum(tl.where(lane, shifted - log_s[:, None], 0.0))
            if FOCAL_SUMS:
                focal, h, zero_lanes = _safe_focal(x, m, log_s, lane, gamma)
                focal_sum = row_sum(focal)
                h_sum = row_sum(h)
                # (sum_exp > 0: an all -inf or NaN row is NaN by policy, not "a class with p = 0")
                zero_p = (row_max(zero_lanes.to(tl.int32)) > 0) & (sum_exp > 0.0)
        else:
            # Online max / sum-exp (Milakov & Gimelshein): s <- s exp(m_old - m_new) + sum exp(x - m_new).
            # The running max stays the raw max (-inf while every lane so far is -inf); only the
            # pivot of the exponentials is made safe. Clamping the running max itself to 0 would pin
            # it there for good, and a row of logits below -88 would then underflow to sum_exp = 0.
            m = zero_rows + float("-inf")
            pivot = zero_rows  # _safe_max(m)
            sum_exp = zero_rows  # sum exp(x - pivot)
            others_exp = zero_rows  # the same sum without the label's lane
            label_logit = zero_rows
            sum_shifted = zero_rows  # sum (x - pivot) over the lanes seen so far
            nan_count = tl.full([ROWS], 0, tl.int32)
            for start in range(0, num_classes, BLOCK_K):
                cols = start + tl.arange(0, BLOCK_K)
                x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                nan_count += _nan_lanes(x)
                m_old = m
                m = tl.maximum(m, row_max(x))
                pivot_new = _safe_max(m)
                # exp(m_old - pivot_new), not exp(pivot - pivot_new): after an all -inf start the old
                # pivot is the stand-in 0 and exp(0 - (-120)) would overflow to inf (inf * 0 = NaN).
                rescale = tl.exp(m_old - pivot_new)
                e = tl.exp(x - pivot_new[:, None])
                sum_exp = sum_exp * rescale + row_sum(e)
                others_exp = others_exp * rescale + row_sum(tl.where(is_label, 0.0, e))
                label_logit += row_sum(tl.where(is_label, x, 0.0))
                if LOGP_SUM:
                    # Summed against the pivot, never as raw logits: sum z - K m cancels at the scale
                    # of the logits (2.5e-4 relative at logits around 3e4). The `start` lanes seen
                    # before this tile move with the pivot.
                    sum_shifted += start * (pivot - pivot_new) + row_sum(tl.where(lane, x - pivot_new[:, None], 0.0))
                pivot = pivot_new
            # +inf: inf - inf in every exponent; NaN by policy, as log_softmax gives.
            nan_rows = invalid | (nan_count > 0) | (m == float("-inf")) | (m == float("inf"))
            m = pivot
            log_s = _log_partition(sum_exp, others_exp, label_logit - m)
            lpy = (label_logit - m) - log_s  # as in the single pass: never round m + log s first
            if LOGP_SUM:
                # sum_k (z_k - m - log s), every term <= 0: no cancellation.
                sum_logp = sum_shifted - num_classes * log_s
            if FOCAL_SUMS:
                zero_count = zero_rows
                for start in range(0, num_classes, BLOCK_K):
                    cols = start + tl.arange(0, BLOCK_K)
                    x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                    focal, h, zero_lanes = _safe_focal(x, m, log_s, lane, gamma)
                    focal_sum += row_sum(focal)
                    h_sum += row_sum(h)
                    zero_count += row_sum(zero_lanes.to(eps.dtype))
                zero_p = (zero_count > 0) & (sum_exp > 0.0)
        loss, coef_a, coef_b, coef_c, coef_e = row_terms(
            KIND,
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
        )
        if HAS_GRAD:
            coef_a = coef_a * norm
            coef_b = coef_b * norm
            coef_c = coef_c * norm
            coef_e = coef_e * norm
            if SINGLE_PASS:
                p = e * (1.0 / sum_exp)[:, None]
                if not FOCAL_SUMS:
                    h = p  # unused placeholder
                grad = _grad_from_terms(p, is_label, lpy, coef_a, coef_b, coef_c, coef_e, h, LOGP_SUM, FOCAL_SUMS)
                _store_grad(grad_ptr, rows64, cols, num_classes, row_ok, _finish_rows(grad, ignored, nan_rows))
            else:
                for start in range(0, num_classes, BLOCK_K):
                    cols = start + tl.arange(0, BLOCK_K)
                    x, is_label, lane = _load_biased(logits_ptr, row_off, cols, num_classes, active, label, eps, FP64)
                    p = tl.exp((x - m[:, None]) - log_s[:, None])
                    h = p  # unused placeholder unless FOCAL_SUMS
                    if FOCAL_SUMS:
                        focal, h, zero_lanes = _safe_focal(x, m, log_s, lane, gamma)
                    grad = _grad_from_terms(p, is_label, lpy, coef_a, coef_b, coef_c, coef_e, h, LOGP_SUM, FOCAL_SUMS)
                    _store_grad(grad_ptr, rows64, cols, num_classes, row_ok, _finish_rows(grad, ignored, nan_rows))

    loss = tl.where(nan_rows, float("nan"), loss)
    loss = tl.where(ignored, 0.0, loss)
    tl.store(loss_ptr + rows64, loss, mask=row_ok)


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
