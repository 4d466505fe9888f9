"""Row tiles: the program's rows and their scalars, the biased load, the one loop every pass runs,
the online softmax statistics and the gradient store (Triton device code shared by the softmax,
the bi-tempered and the soft-target paths).

A *pass* over a row is a visit function ``VISIT(state, tile, ctx, TERMS) -> state`` applied to
every column tile of the row: ``tile = (x, is_label, lane, cols, start)`` is ``z + eps e_y`` in the
compute dtype with its masks, ``ctx`` the per-row values the pass reads. :func:`row_pass` applies
it to the register tile when the whole row is one tile (``SINGLE_PASS``: the logits are read once,
whatever the number of passes) and otherwise re-reads the row tile by tile.

The row source ``src = (logits_ptr, row_off, num_classes, active, label, eps)`` and the gradient
destination ``dst = (grad_ptr, rows64, row_ok, ignored, norm, num_classes)`` are tuples so that
every pass takes the same few arguments. Upper-case arguments are compile-time constants (the
kernel's ``tl.constexpr`` parameters, passed on).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._math import row_max, row_sum, to_output, zeros_like
from ._row_math import NCE


@triton.jit
def load_tile(src, start, FP64, BLOCK_K):
    """Columns ``start + [0, BLOCK_K)`` of ``z + eps e_y`` in the compute dtype, -inf on padded lanes
    and on inactive rows."""
    logits_ptr, row_off, num_classes, active, label, eps = src
    cols = start + tl.arange(0, BLOCK_K)
    lane = active[:, None] & (cols < num_classes)[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=lane, other=float("-inf"))
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    # The label is only ever compared with column indices, never used as an address.
    is_label = cols[None, :] == label[:, None]
    x = tl.where(is_label, x + eps[:, None], x)
    # Re-mask after the bias: whatever an elementwise transform does, padded lanes must stay -inf.
    x = tl.where(lane, x, float("-inf"))
    return x, is_label, lane, cols, start


@triton.jit
def first_tile(src, FP64, BLOCK_K, SINGLE_PASS):
    """The whole row, loaded once, when it fits one tile; nothing otherwise (every pass re-reads)."""
    tile = None
    if SINGLE_PASS:
        tile = load_tile(src, 0, FP64, BLOCK_K)
    return tile


@triton.jit
def row_pass(VISIT, state, tile, src, ctx, TERMS, FP64, BLOCK_K, SINGLE_PASS):
    """``VISIT`` over the row: on the register ``tile`` (single pass) or over every column tile."""
    if SINGLE_PASS:
        state = VISIT(state, tile, ctx, TERMS)
    else:
        for start in range(0, src[2], BLOCK_K):
            state = VISIT(state, load_tile(src, start, FP64, BLOCK_K), ctx, TERMS)
    return state


@triton.jit
def safe_max(m):
    # exp(x - m) with m = -inf is exp(-inf + inf) = NaN; with m := 0 every -inf lane gives 0 instead.
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def nan_lanes(x):
    # Counted explicitly: the GPU's max ignores NaN and the tempered clamps / bisection comparisons
    # would swallow it, so "a NaN logit gives a NaN row" cannot be left to propagation.
    return row_sum((x != x).to(tl.int32))


@triton.jit
def _stats_visit(state, tile, ctx, TERMS):
    """Online max / sum-exp (Milakov & Gimelshein): ``s <- s exp(m_old - m_new) + sum exp(x - m_new)``.

    The running max stays the raw max (-inf while every lane so far is -inf); only the pivot of the
    exponentials is made safe. Clamping the running max itself to 0 would pin it there for good, and
    a row of logits below -88 would then underflow to sum_exp = 0.
    """
    x_max, pivot, sum_exp, others_exp, label_logit, sum_shifted, nan_count = state
    x, is_label, lane, cols, start = tile
    m_old = x_max
    x_max = tl.maximum(x_max, row_max(x))
    pivot_new = safe_max(x_max)
    # exp(m_old - pivot_new), not exp(pivot - pivot_new): after an all -inf start the old pivot is
    # the stand-in 0 and exp(0 - (-120)) would overflow to inf (inf * 0 = NaN).
    rescale = tl.exp(m_old - pivot_new)
    e = tl.exp(x - pivot_new[:, None])
    sum_exp = sum_exp * rescale + row_sum(e)
    others_exp = others_exp * rescale + row_sum(tl.where(is_label, 0.0, e))
    label_logit += row_sum(tl.where(is_label, x, 0.0))
    if NCE & TERMS:  # sum_k log p_k, with no other read of the row
        # Summed against the pivot, never as raw logits: sum z - K m cancels at the scale of the
        # logits (2.5e-4 relative at logits around 3e4). The `start` lanes seen before this tile
        # move with the pivot.
        sum_shifted += start * (pivot - pivot_new) + row_sum(tl.where(lane, x - pivot_new[:, None], 0.0))
    return x_max, pivot_new, sum_exp, others_exp, label_logit, sum_shifted, nan_count + nan_lanes(x)


@triton.jit
def row_stats(tile, src, invalid, TERMS, FP64, BLOCK_K, SINGLE_PASS):
    """``(m, sum_exp, others_exp, label_logit, sum_shifted, nan_rows)`` of the biased row.

    ``m`` is the (safe) max, ``sum_exp = sum_k exp(z_k - m)``, ``others_exp`` the same without the
    label, ``sum_shifted = sum_k (z_k - m)`` (only with nce). ``nan_rows``: the row policy, applied
    explicitly because the GPU's ``max`` ignores NaN and clamps swallow it -- an invalid label, a
    NaN, a +inf (inf - inf in every exponent) or only -inf logits give a NaN row, as ``log_softmax``.
    """
    zero = zeros_like(src[5])
    start = (zero + float("-inf"), zero, zero, zero, zero, zero, tl.full(zero.shape, 0, tl.int32))
    stats = row_pass(_stats_visit, start, tile, src, None, TERMS, FP64, BLOCK_K, SINGLE_PASS)
    x_max, m, sum_exp, others_exp, label_logit, sum_shifted, nan_count = stats
    nan_rows = invalid | (nan_count > 0) | (x_max == float("-inf")) | (x_max == float("inf"))
    return m, sum_exp, others_exp, label_logit, sum_shifted, nan_rows


@triton.jit
def store_grad(dst, nan_rows, cols, grad):
    """Scales by ``norm`` (``1 / count`` for mean) and stores in the gradient's dtype. Ignored rows get
    gradient 0 whatever they hold; NaN rows (invalid labels included) a NaN row."""
    grad_ptr, rows64, row_ok, ignored, norm, num_classes = dst
    grad = tl.where(nan_rows[:, None], float("nan"), grad * norm[:, None])
    grad = tl.where(ignored[:, None], 0.0, grad)
    mask = row_ok[:, None] & (cols < num_classes)[None, :]
    out = grad_ptr + rows64[:, None] * num_classes + cols[None, :]
    tl.store(out, to_output(grad, grad_ptr.dtype.element_ty), mask=mask)


@triton.jit
def row_block(target_ptr, stride_target, num_rows, num_classes, ignore_index, ROWS):
    """This program's ``ROWS`` rows: int64 indices (N * K may exceed 2^31), labels and their policy."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < num_rows
    rows64 = rows.to(tl.int64)
    label = tl.load(target_ptr + rows64 * stride_target, mask=row_ok, other=ignore_index)
    ignored = label == ignore_index
    invalid = ((label < 0) | (label >= num_classes)) & (~ignored)
    return rows64, row_ok, label, ignored, invalid


@triton.jit
def row_scalars(eps_ptr, stride_eps, eps_scalar, inv_count_ptr, rows64, active, EPS_PER_ROW, HAS_INV_COUNT, FP64):
    """The rows' bias ``eps`` and gradient scale ``norm`` (``1 / count`` for mean), in the compute dtype."""
    if FP64:
        zero = tl.full(rows64.shape, 0, tl.float64)
    else:
        zero = tl.full(rows64.shape, 0, tl.float32)
    if EPS_PER_ROW:
        eps = tl.load(eps_ptr + rows64 * stride_eps, mask=active, other=0.0).to(zero.dtype)
    else:
        eps = zero + eps_scalar
    norm = zero + 1.0
    if HAS_INV_COUNT:
        norm = norm * tl.load(inv_count_ptr)
    return eps, norm
