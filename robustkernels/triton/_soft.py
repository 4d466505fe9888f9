"""The expected loss over a target distribution (probability targets, label smoothing): device code.

The row loss is ``sum_k u_k l_k`` with ``l_k = L(z + eps e_k, k)``, each class's term with its own
logit bias, and ``u_k = w_k ((1 - alpha) t_k + alpha / K)`` (``t`` the probability row, or the
one-hot label; ``w`` the class weights). With ``a = softmax(z)`` (unbiased) and, for each class,

    log r_k = -log1p(expm1(eps) a_k),    log q_k = eps + log a_k + log r_k,

the biased distribution with label ``k`` is ``p^(k)_j = a_j r_k`` (``j != k``), ``p^(k)_k = q_k``, so
every class needs only ``a_k`` and the row's scalars (``docs/drop-in.md``).

Each primitive's value and slope are those of :mod:`._row_math`, evaluated by :func:`row_terms` on
the tile of ``log q`` instead of a row of ``log p_y`` (its functions are elementwise). Its per-row
coefficient ``A`` (``dL/dz = A (p - e_y) + ...``) becomes, per class, ``c_k = -u_k A_k r_k`` and

    dL/dz_j = c_j - a_j sum_k c_k                                         (label-only terms)
            + sum_k b_k - K a_j sum_k b_k r_k - K b_j expm1(eps) a_j r_j   (nce's denominator)

with ``b_k = -u_k E_k`` from nce's ``E = -w (N/D) / D``, ``D_k = -sum_j log p^(k)_j = D_0 - eps - K
log r_k``, ``D_0 = K log S - sum_j (z_j - m)``. (``d log q_k / dz_j = delta_jk - p^(k)_j``; the
coefficient of ``c_j`` collects ``1 - q_j + a_j r_j = r_j``.)

Passes: the online max / sum-exp (and ``sum_j (z_j - m)`` with nce); the class terms and their row
sums; the gradient. On the single-pass path the row (logits and target) is read once and the class
terms are kept in registers for the gradient; column-tiled, each pass re-reads the tiles.

Numerics. ``log S = log1p(S - 1)`` with ``S - 1`` summed over the lanes below the row maximum (plus
the ties), as the integer path does for its label: ``1 - a`` of a confident class is then
``-expm1(log a)``, accurate to the fp32 resolution of ``1 - a``, not of ``a``. For the same reason
``log q`` of a likely class (``1 - q = (1 - a) r < 1/2``) is ``log1p(-(1 - a) r)``: ``eps + log a +
log r`` cancels there. The gradient lane of the row maximum is ``c_j (1 - a_j) - a_j (sum_{k != j}
c_k)``, the others' sum kept apart (``c_j - a_j sum_k c_k`` would cancel as ``a_j -> 1``). A class
with ``u_k = 0`` contributes exactly 0 (selected, never multiplied: ``0 * inf`` at a ``-inf``
logit). With a scalar ``eps == 0`` the bias terms are skipped by a uniform runtime branch.

Tiles are ``(x, u, t, lane, cols, start)``: the unbiased logits (-inf on padded lanes and inactive
rows), the coefficients ``u`` (0 there), the raw target (its sign is checked: a negative or NaN
entry makes a NaN row), the masks and the first column. Upper-case arguments are compile-time
constants.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import expm1, log1p, row_max, row_sum, zeros_like
from ._row_math import NCE, row_terms
from ._tiles import nan_lanes, row_block, row_scalars, safe_max, store_grad


@triton.jit
def _load_tile(src, start, FLOAT_TARGET, HAS_WEIGHT, FP64, BLOCK_K):
    """Columns ``start + [0, BLOCK_K)``: the logits in the compute dtype and the class coefficients."""
    logits_ptr, row_off, num_classes, active, target, weights = src
    weight_ptr, target_scale, uniform_share = weights
    cols = start + tl.arange(0, BLOCK_K)
    col_ok = cols < num_classes
    lane = active[:, None] & col_ok[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=lane, other=float("-inf"))
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    if FLOAT_TARGET:
        target_ptr, target_off, stride_col = target
        ptrs = target_ptr + target_off[:, None] + cols.to(tl.int64)[None, :] * stride_col
        t = tl.load(ptrs, mask=lane, other=0.0).to(x.dtype)
    else:
        # The label is only ever compared with column indices, never used as an address.
        t = tl.where(cols[None, :] == target[:, None], 1.0, 0.0).to(x.dtype)
    u = t * target_scale + uniform_share
    if HAS_WEIGHT:
        u = u * tl.load(weight_ptr + cols, mask=col_ok, other=0.0).to(x.dtype)[None, :]
    u = tl.where(lane, u, 0.0)
    return x, u, t, lane, cols, start


@triton.jit
def _at_max(tile, x_max):
    x, _, _, lane, _, _ = tile
    return lane & (x == x_max[:, None])


@triton.jit
def _stats_visit(state, tile, TERMS):
    """Online max and ``S - 1``: ``others`` sums ``exp(x - m)`` below the running max ``m``, ``n_max``
    counts the lanes at it (``S = others + n_max``). When the max grows, its old lanes join the others
    at ``exp(m_old - m_new)``. The pivot of the exponentials is the safe max (0 for an all -inf start).
    """
    x_max, others, n_max, sum_shifted, nan_count = state
    x, _, _, lane, _, start = tile
    m_old = x_max
    x_max = tl.maximum(x_max, row_max(x))
    pivot_old = safe_max(m_old)
    pivot = safe_max(x_max)
    rescale = tl.exp(m_old - pivot)  # 0 after an all -inf start, never exp(-inf + inf)
    grew = x_max > m_old
    at_max = _at_max(tile, x_max)
    e = tl.exp(x - pivot[:, None])
    others = (others + tl.where(grew, n_max, 0.0)) * rescale + row_sum(tl.where(at_max, 0.0, e))
    n_max = tl.where(grew, 0.0, n_max) + row_sum(at_max.to(x.dtype))
    if NCE & TERMS:
        # Against the pivot, as the integer path: raw sum z - K m cancels at the scale of the logits.
        sum_shifted += start * (pivot_old - pivot) + row_sum(tl.where(lane, x - pivot[:, None], 0.0))
    return x_max, others, n_max, sum_shifted, nan_count + nan_lanes(x)


@triton.jit
def _row_values(stats, eps, num_classes, invalid):
    """``(x_max, pivot, log S, eps, expm1(eps), D_0, K)`` and the NaN rows (a NaN, a +inf or only -inf
    logits, an invalid label)."""
    x_max, others, n_max, sum_shifted, nan_count = stats
    nan_rows = invalid | (nan_count > 0) | (x_max == float("-inf")) | (x_max == float("inf"))
    log_s = log1p(others + (n_max - 1.0))
    d0 = num_classes * log_s - sum_shifted  # nce's unbiased denominator, two terms >= 0
    return (x_max, safe_max(x_max), log_s, eps, expm1(eps), d0, num_classes), nan_rows


@triton.jit
def _own_bias(log_a, eps, em1):
    """``(log r, log q)`` of every class with its own bias."""
    a = tl.exp(log_a)
    one_minus_a = -expm1(log_a)
    # 1 + x = 1 + (e^eps - 1) a cancels as a -> 1 at eps << 0 (to 0 at eps = -19: an infinite
    # loss); (1 - a) + e^eps a does not. Only the row's likeliest class can have a > 1/2, and
    # elsewhere log1p keeps a small x exact.
    split = (a > 0.5) & (eps[:, None] < 0.0)
    one_plus_x = tl.where(split, one_minus_a + tl.exp(eps[:, None]) * a, 1.0)  # 1: no log of another lane
    log_r = -tl.where(split, tl.log(one_plus_x), log1p(em1[:, None] * a))
    one_minus_q = one_minus_a * tl.exp(log_r)  # 1 - q = (1 - a) r
    direct = (eps[:, None] + log_a) + log_r
    return log_r, tl.where(one_minus_q < 0.5, log1p(-one_minus_q), direct)


@triton.jit
def _class_lanes(tile, row, labels, norms, eps_scalar, TERMS, EPS_PER_ROW):
    """Per class: ``(u_k l_k, c_k, b_k, log a_k, r_k)`` (0 where ``u_k = 0``)."""
    x, u, _, _, _, _ = tile
    _, pivot, log_s, eps, em1, d0, num_classes = row
    log_a = (x - pivot[:, None]) - log_s[:, None]
    log_r = zeros_like(log_a)
    log_q = log_a
    if EPS_PER_ROW:
        log_r, log_q = _own_bias(log_a, eps, em1)
    elif eps_scalar != 0.0:  # uniform runtime branch: eps == 0 skips a log1p per logit
        log_r, log_q = _own_bias(log_a, eps, em1)
    zero = zeros_like(log_a)
    # nce's (D, G) per class; nfl and ngce have no one-pass form (the host refuses their bits).
    sums = ((d0[:, None] - eps[:, None] - num_classes * log_r, zero - num_classes), (zero, zero), (zero, zero))
    loss, coefs = row_terms(TERMS, log_q, num_classes, labels, norms, sums)
    coef_a, _, e_nce, _, _ = coefs
    r = tl.exp(log_r)
    present = u != 0.0
    value = tl.where(present, u * loss, 0.0)
    c = tl.where(present, -(u * coef_a) * r, 0.0)
    b = tl.where(present, -(u * e_nce), 0.0)
    return value, c, b, log_a, r


@triton.jit
def _sums_visit(sums, tile, lanes, x_max, TERMS, FLOAT_TARGET):
    """``(loss, sum c at the max, sum c elsewhere, sum b, sum b r, bad target entries)`` plus this tile."""
    loss, c_max, c_other, b_sum, br_sum, bad = sums
    _, _, t, lane, _, _ = tile
    value, c, b, _, r = lanes
    at_max = _at_max(tile, x_max)
    loss += row_sum(value)
    c_max += row_sum(tl.where(at_max, c, 0.0))
    c_other += row_sum(tl.where(at_max, 0.0, c))
    if NCE & TERMS:
        b_sum += row_sum(b)
        br_sum += row_sum(b * r)
    if FLOAT_TARGET:
        bad += row_sum((lane & ~(t >= 0.0)).to(tl.int32))  # negative or NaN
    return loss, c_max, c_other, b_sum, br_sum, bad


@triton.jit
def _grad_visit(tile, lanes, row, sums, dst, nan_rows, TERMS):
    x_max, _, _, _, em1, _, num_classes = row
    _, c_max, c_other, b_sum, br_sum, _ = sums
    _, c, b, log_a, r = lanes
    a = tl.exp(log_a)
    at_max = _at_max(tile, x_max)
    from_max = -c * expm1(log_a) - a * ((c_max[:, None] - c) + c_other[:, None])
    grad = tl.where(at_max, from_max, c - a * (c_max + c_other)[:, None])
    if NCE & TERMS:
        grad += b_sum[:, None] - num_classes * a * br_sum[:, None] - num_classes * (em1[:, None] * b) * (a * r)
    store_grad(dst, nan_rows, tile[4], grad)


@triton.jit
def soft_rows(
    logits,
    targets,
    bias,
    outputs,
    num_rows,
    num_classes,
    ignore_index,
    labels,
    norms,
    TERMS,
    FLOAT_TARGET,
    HAS_WEIGHT,
    EPS_PER_ROW,
    HAS_GRAD,
    HAS_INV_COUNT,
    FP64,
    ROWS,
    BLOCK_K,
    SINGLE_PASS,
):
    """Loss (and, with ``HAS_GRAD``, gradient) of this program's ``ROWS`` rows; see the module doc.

    ``logits = (ptr, row stride)``, ``targets = (ptr, row stride, column stride, class weights ptr,
    1 - alpha, alpha / K)``, ``bias = (per-row eps ptr, its stride, scalar eps)``, ``outputs = (loss
    ptr, grad ptr, 1 / count ptr, gradient scale)``.
    """
    logits_ptr, stride_row = logits
    target_ptr, stride_target, stride_target_col, weight_ptr, target_scale, uniform_share = targets
    eps_ptr, stride_eps, eps_scalar = bias
    loss_ptr, grad_ptr, inv_count_ptr, grad_scale = outputs
    if FLOAT_TARGET:
        rows64 = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        row_ok = rows64 < num_rows
        ignored = rows64 < 0  # probability targets ignore ignore_index
        invalid = ignored
        target = (target_ptr, rows64 * stride_target, stride_target_col)
    else:
        rows64, row_ok, target, ignored, invalid = row_block(
            target_ptr, stride_target, num_rows, num_classes, ignore_index, ROWS
        )
    active = row_ok & (~ignored) & (~invalid)
    eps, norm = row_scalars(
        eps_ptr, stride_eps, eps_scalar, inv_count_ptr, rows64, active, EPS_PER_ROW, HAS_INV_COUNT, FP64
    )
    norm = norm * grad_scale
    src = (logits_ptr, rows64 * stride_row, num_classes, active, target, (weight_ptr, target_scale, uniform_share))
    dst = (grad_ptr, rows64, row_ok, ignored, norm, num_classes)
    zero = zeros_like(eps)
    stats = (zero + float("-inf"), zero, zero, zero, tl.full(zero.shape, 0, tl.int32))
    sums = (zero, zero, zero, zero, zero, tl.full(zero.shape, 0, tl.int32))
    if SINGLE_PASS:
        tile = _load_tile(src, 0, FLOAT_TARGET, HAS_WEIGHT, FP64, BLOCK_K)
        stats = _stats_visit(stats, tile, TERMS)
        row, nan_rows = _row_values(stats, eps, num_classes, invalid)
        lanes = _class_lanes(tile, row, labels, norms, eps_scalar, TERMS, EPS_PER_ROW)
        sums = _sums_visit(sums, tile, lanes, row[0], TERMS, FLOAT_TARGET)
        nan_rows = nan_rows | (sums[5] > 0)
        if HAS_GRAD:
            _grad_visit(tile, lanes, row, sums, dst, nan_rows, TERMS)
    else:
        for start in range(0, num_classes, BLOCK_K):
            stats = _stats_visit(stats, _load_tile(src, start, FLOAT_TARGET, HAS_WEIGHT, FP64, BLOCK_K), TERMS)
        row, nan_rows = _row_values(stats, eps, num_classes, invalid)
        for start in range(0, num_classes, BLOCK_K):
            tile = _load_tile(src, start, FLOAT_TARGET, HAS_WEIGHT, FP64, BLOCK_K)
            lanes = _class_lanes(tile, row, labels, norms, eps_scalar, TERMS, EPS_PER_ROW)
            sums = _sums_visit(sums, tile, lanes, row[0], TERMS, FLOAT_TARGET)
        nan_rows = nan_rows | (sums[5] > 0)
        if HAS_GRAD:
            for start in range(0, num_classes, BLOCK_K):
                tile = _load_tile(src, start, FLOAT_TARGET, HAS_WEIGHT, FP64, BLOCK_K)
                lanes = _class_lanes(tile, row, labels, norms, eps_scalar, TERMS, EPS_PER_ROW)
                _grad_visit(tile, lanes, row, sums, dst, nan_rows, TERMS)
    loss = tl.where(nan_rows, float("nan"), sums[0])
    loss = tl.where(ignored, 0.0, loss)
    tl.store(loss_ptr + rows64, loss, mask=row_ok)
