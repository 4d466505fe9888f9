"""Checks of Python-number arguments that also hold for NumPy scalars and for torch.compile.

Hyper-parameters and scalar biases are runtime numbers: a ``float``, an ``int``, a NumPy scalar
(``np.float32`` is not a ``float`` subclass, ``np.float64`` is), or, while ``torch.compile``
traces with ``dynamic=True``, a symbolic float. ``math.isnan`` / ``math.isfinite`` / ``float()``
would force a symbolic float to a constant (a graph break, or one recompile per value), so every
test here is written with comparisons, which trace to guards on the symbol.
"""

from __future__ import annotations

import math
import numbers
import operator

__all__ = ["is_real", "to_float", "runtime_floats", "is_nan", "is_finite", "as_int64"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def is_real(value: object) -> bool:
    """A real number that is not a bool (``True`` as a learning rate is always a mistake)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # np.bool_ is not Real


def to_float(value: float) -> float:
    """A real number (see :func:`is_real`) as a float. Floats, symbolic ones included, are
    returned unchanged, so no traced value is ever forced to a constant."""
    return value if isinstance(value, float) else float(value)


def runtime_floats(values: tuple[float, ...]) -> list[float]:
    """Hyper-parameters as the ``float[]`` argument of a fused op (see :func:`to_float`)."""
    return [to_float(v) for v in values]


def is_nan(value: float) -> bool:
    return not value == value  # noqa: PLR0124  (NaN is the one value unequal to itself)


def is_finite(value: float) -> bool:
    return -math.inf < value < math.inf


def as_int64(value: object, what: str) -> int:
    """``value`` as a Python int in the int64 range (the kernels' label type), or an error
    naming ``what``: ``TypeError`` for a non-integer, ``ValueError`` out of range."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None
    if not _INT64_MIN <= result <= _INT64_MAX:
        raise ValueError(f"{what}={result} is outside the int64 range [-2**63, 2**63 - 1]")
    return result
