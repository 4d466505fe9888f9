"""Numerically careful scalar/elementwise device functions shared by the Triton kernels.

Why hand-written ``expm1`` / ``log1p``: ``triton.language.extra.libdevice`` is not implemented by
the Triton interpreter (``TRITON_INTERPRET=1``, the CPU test mode), and the usual Kahan trick
``(u - 1) * x / log(u)`` needs a ``log`` with small *relative* error near 1, which an approximate
``lg2`` does not give. A short series near 0 and the plain formula elsewhere use only ``tl.exp`` /
``tl.log`` / ``+ * /``, which behave the same compiled and interpreted.

Every function works on fp32 or fp64 tensors (the dtype of its argument).

Why ``row_sum`` / ``row_max`` / ``zeros_like`` instead of ``tl.sum`` / ``tl.max`` / ``tl.zeros``: those
are ``@triton.jit`` functions of Triton's standard library, created in compiled or interpreted form
when *Triton* is first imported. If anything imported Triton before ``TRITON_INTERPRET=1`` was set
(torchvision does), the interpreter cannot call them. ``tl.reduce`` / ``tl.full`` are builtins it
patches at launch, so with these helpers only *our* kernels' import has to follow the variable.
The reductions are the same as the standard library's (``tl.max`` combines with ``maximum``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


# The standard library's own combine functions when present: the interpreter recognises them by
# identity and reduces with NumPy (fast, pairwise); any other combine function falls back to a
# sequential Python loop. Compiled, both are the same tree reduction.
_SUM_COMBINE = getattr(tl.standard, "_sum_combine", _add)
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _maximum)


@triton.jit
def row_sum(x):
    """Sum over axis 1 of a ``[ROWS, BLOCK]`` tile."""
    return tl.reduce(x, 1, _SUM_COMBINE)


@triton.jit
def row_max(x):
    """Max over axis 1 of a ``[ROWS, BLOCK]`` tile (NaN lanes ignored, as ``tl.max``)."""
    return tl.reduce(x, 1, _MAX_COMBINE)


@triton.jit
def zeros_like(x):
    return tl.full(x.shape, 0, x.dtype)


@triton.jit
def expm1(x):
    """``exp(x) - 1`` without cancellation for small ``|x|`` (the ``1 - p_y`` of every bounded loss)."""
    # |x| < 0.5: Taylor series in nested form x (1 + x/2 (1 + x/3 (... (1 + x/n)))).
    # Truncation error relative to the result: |x|^n / (n+1)! <= 0.5^9 / 10! = 5e-10 (fp32, n = 9)
    # and 0.5^17 / 18! = 1.2e-21 (fp64, n = 17). For fp64 the divisors stay exact integers (a
    # reciprocal literal would be rounded to fp32); for fp32 the reciprocal's rounding (6e-8) is
    # at the fp32 resolution anyway and avoids a division per term.
    # |x| >= 0.5: exp(x) - 1 loses at most a factor |e^x / (e^x - 1)| <= 2.6 in relative error.
    small = tl.abs(x) < 0.5
    xs = tl.where(small, x, 0.0)
    if x.dtype == tl.float64:
        t = 1.0 + xs / 17
        for n in tl.static_range(16, 1, -1):
            t = 1.0 + xs / n * t
    else:
        t = 1.0 + xs * (1.0 / 9.0)
        for n in tl.static_range(8, 1, -1):
            t = 1.0 + xs * (1.0 / n) * t
    return tl.where(small, xs * t, tl.exp(x) - 1.0)


@triton.jit
def log1p(x):
    """``log(1 + x)`` for ``x > -1`` without cancellation for small ``|x|`` (AGCE/AUL terms)."""
    # |x| < 0.25: log1p(x) = 2 atanh(s), s = x / (2 + x), |s| <= 1/7, so the series
    # 2 s (1 + s^2/3 + s^4/5 + ...) has terms below (1/49)^n: 12 terms reach 1e-20.
    # |x| >= 0.25: |log(1 + x)| >= 0.22, so rounding 1 + x costs at most ~5 ulp relative.
    small = tl.abs(x) < 0.25
    xs = tl.where(small, x, 0.0)
    s = xs / (2.0 + xs)
    s2 = s * s
    acc = zeros_like(s)
    power = zeros_like(s) + 1.0
    for n in tl.static_range(0, 12):
        acc += power / (2 * n + 1)
        power = power * s2
    return tl.where(small, 2.0 * s * acc, tl.log(1.0 + x))


@triton.jit
def pow_nonneg(base, exponent):
    """``base ** exponent`` for ``base >= 0`` and ``exponent >= 0`` with ``0 ** 0 = 1``.

    ``exp(e * log(0)) = exp(e * -inf)`` is NaN at ``e = 0``; the focal weight ``(1 - p)^gamma`` hits
    exactly that at ``p = 1, gamma = 0``.
    """
    positive = base > 0.0
    safe = tl.where(positive, base, 1.0)
    at_zero = tl.where(exponent == 0.0, 1.0, 0.0)
    return tl.where(positive, tl.exp(exponent * tl.log(safe)), at_zero)


@triton.jit
def log_over_one_minus(logp, one_minus_p):
    """``log p / (1 - p)``, which tends to ``-1`` as ``p -> 1`` (where both are 0).

    It appears in the exact focal derivative: ``g (1-p)^(g-1) p log p = g (1-p)^g p log p / (1-p)``,
    which keeps ``(1-p)^(g-1)`` (infinite at ``p = 1`` for ``g < 1``) out of the computation.
    """
    zero = one_minus_p == 0.0
    return tl.where(zero, -1.0, logp / tl.where(zero, 1.0, one_minus_p))


@triton.jit
def as_tensor_of(x, like):
    """The runtime scalar ``x`` on a tensor of ``like``'s shape and dtype.

    A runtime float argument is an fp32 scalar, and arithmetic on scalars alone stays fp32:
    compiled, the parameters themselves are fp32; interpreted, they arrive as Python doubles, but
    every value assigned to a name becomes a Triton scalar, fp32 for a float (``c = 1 - t`` of
    t = 1.2 is off by 1.5e-8 relative). Parameter expressions such as ``q - 1`` are therefore formed
    on a tensor of the compute dtype, where fp64 rows keep them in fp64, and a bare parameter is
    never assigned to a name before it meets such a tensor.
    """
    return zeros_like(like) + x


@triton.jit
def expm1_over(x, c):
    """``expm1(c x) / c``, and its limit ``x`` at ``c = 0`` (``log_t`` and its relatives), for a
    tensor ``c`` (see :func:`as_tensor_of`)."""
    is_zero = c == 0.0
    return tl.where(is_zero, x, expm1(c * x) / tl.where(is_zero, 1.0, c))


@triton.jit
def log_exp_t(u, t):
    """``log exp_t(u) = log([1 + (1 - t) u]_+) / (1 - t)``; ``u`` at ``t = 1``; ``-inf`` off the support."""
    # log1p, not log(1 + (1 - t) u): for t near 1 the sum rounds at ulp(1), which keeps only
    # ulp(1) / ((1 - t) u) of the tempering (and as p -> 1, u -> 0 it rounds log p to 0).
    # Clamping the argument at -1 gives log1p(-1) = -inf off the support.
    one_minus_t = 1.0 - as_tensor_of(t, u)
    is_one = one_minus_t == 0.0
    tempered = log1p(tl.maximum(one_minus_t * u, -1.0)) / tl.where(is_one, 1.0, one_minus_t)
    return tl.where(is_one, u, tempered)


@triton.jit
def neg_log_t_of_reciprocal(z, t):
    """``-log_t(1 / z) = -expm1(-(1 - t) log z) / (1 - t)`` (``log z`` at ``t = 1``), ``z > 0``."""
    return expm1_over(tl.log(z), as_tensor_of(t, z) - 1.0)


@triton.jit
def round_to_bf16(x):
    """fp32 ``x`` rounded to the nearest bfloat16 (ties to even), still as fp32.

    The GPU's fp32 -> bf16 conversion rounds to nearest, but the Triton interpreter truncates, which
    doubles the error of every bf16 gradient on CPU. Rounding here makes the final conversion exact
    on both, at a few integer ops per element. NaN is passed through untouched: the GPU's canonical
    NaN 0x7FFFFFFF plus the rounding increment overflows into the sign bit and would become -0.0,
    silently zeroing a NaN gradient row. +-inf round to themselves.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(x != x, x, rounded)


@triton.jit
def to_output(x, out_dtype: tl.constexpr):
    """Convert a compute-dtype tile to ``out_dtype`` with round-to-nearest on every backend."""
    if out_dtype == tl.bfloat16:
        x = round_to_bf16(x.to(tl.float32))
    return x.to(out_dtype)
