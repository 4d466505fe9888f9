"""Label validation without a device->host sync on the GPU hot path.

CPU tensors are checked eagerly: the check is a cheap pass over ``N`` integers and raises at
once, naming the first bad row.

On an accelerator an eager check would need ``.item()``, which stalls the host until the GPU has
caught up. Instead (mode ``"async"``, the default):

1. every backend turns a row whose label is outside ``[0, K)`` (and is not ``ignore_index``)
   into a NaN loss and a NaN gradient row, so a bad label can never produce a silently wrong
   number nor an out-of-bounds read or device-side assert;
2. the number of bad labels is copied, non-blocking, into pinned host memory together with a
   CUDA event;
3. every later call (and :func:`robustkernels.check_labels`) polls the events that have already
   completed -- ``Event.query()`` never blocks -- and raises ``ValueError`` if one saw a bad
   label.

``set_label_validation("sync")`` checks eagerly on every device (a host sync: for debugging),
``"off"`` skips the host-side bookkeeping (the NaN rows remain). Under ``torch.compile`` the
host-side part is skipped: on CPU the compiled graph asserts instead (``RuntimeError`` with the
same message, raised by the call), on an accelerator the NaN rows remain (a device-side assert
would kill the process's CUDA context). Under ``torch.func`` transforms (``grad``, ``vmap``, ...)
the check runs on the values beneath the transform's wrappers, so a batched ``vmap`` call is
checked whole, as an eager one.

A per-row ``epsilon`` tensor is checked the same way, for finiteness: a NaN or infinite bias
raises on CPU (and in ``"sync"`` mode); on an accelerator in ``"async"`` mode it is not checked
(that needs a host sync) and propagates as IEEE arithmetic does: a NaN or ``+inf`` bias makes
its row NaN.
"""

from __future__ import annotations

import collections
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "set_label_validation",
    "get_label_validation",
    "check_labels",
    "check_epsilon_rows",
    "check_probabilities",
    "invalid_label_mask",
    "invalid_probability_rows",
    "under_functorch",
]

_Mode = Literal["async", "sync", "off"]
_mode: _Mode = "async"
# (event, pinned count of bad entries, message with a {count} field) of each pending check.
_pending: collections.deque[tuple[torch.cuda.Event, Tensor, str]] = collections.deque()
_MAX_PENDING = 64


def set_label_validation(mode: _Mode) -> None:
    """Choose how labels are validated on accelerators: ``"async"`` (default), ``"sync"``, ``"off"``."""
    global _mode
    if mode not in ("async", "sync", "off"):
        raise ValueError(f"mode must be 'async', 'sync' or 'off', got {mode!r}")
    _mode = mode


def get_label_validation() -> _Mode:
    return _mode


def invalid_label_mask(target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``True`` where a label is neither in ``[0, K)`` nor ``ignore_index``."""
    return ((target < 0) | (target >= num_classes)) & (target != ignore_index)


def under_functorch(*values: object) -> bool:
    """Whether any tensor among ``values`` is wrapped by a torch.func transform (grad, vmap, ...)."""
    if torch.compiler.is_compiling():
        return False
    return any(isinstance(v, Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(v) for v in values)


def _unwrapped(t: Tensor) -> Tensor:
    """The plain tensor beneath torch.func wrappers: a ``vmap``-batched target keeps its batch
    dimension there, so reading it checks every sample of the batch, and needs no transform."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


# A constant: under torch.compile(dynamic=True) K is a symbol that cannot be formatted into it.
_BAD_LABEL_COMPILED = "target: a label outside [0, K) that is not ignore_index (checked in a compiled graph)"


def _first_bad(bad: Tensor) -> tuple[int, tuple[int, ...]]:
    """How many entries of ``bad`` are set, and the index of the first. A vmap-batched tensor has
    a leading batch dimension: the row is the index's last coordinate."""
    positions = bad.nonzero()
    return positions.shape[0], tuple(int(i) for i in positions[0])


def _raise_bad(target: Tensor, bad: Tensor, num_classes: int, ignore_index: int) -> None:
    count, first = _first_bad(bad)
    raise ValueError(
        f"target: {count} label(s) outside [0, {num_classes}) that are not "
        f"ignore_index={ignore_index}; first at row {first[-1]}: {int(target[first])}"
    )


def _poll(block: bool = False) -> None:
    while _pending:
        event, count, message = _pending[0]
        if not block and not event.query():
            return
        event.synchronize()
        _pending.popleft()
        if int(count) > 0:
            _pending.clear()
            raise ValueError(
                message.format(count=int(count)) + "; its loss rows are NaN. Use "
                "robustkernels.set_label_validation('sync') to raise at the offending call."
            )


def _check_later(bad: Tensor, message: str) -> None:
    """Count ``bad`` on the device and copy the count to pinned memory without a sync; a later
    call raises ``message`` if it was not 0."""
    count = bad.sum()
    host = torch.empty((), dtype=count.dtype, pin_memory=True)
    host.copy_(count, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    if len(_pending) >= _MAX_PENDING:
        _poll(block=True)
    _pending.append((event, host, message))


def check_labels(target: Tensor | None = None, num_classes: int = 0, ignore_index: int = -100) -> None:
    """Validate ``target`` (see the module docstring), or with no argument wait for and report
    every pending asynchronous check."""
    if target is None:
        _poll(block=True)
        return
    if torch.compiler.is_compiling():
        if target.device.type == "cpu":
            bad = invalid_label_mask(target, num_classes, ignore_index)
            torch._assert_async(~bad.any(), _BAD_LABEL_COMPILED)
        return
    target = _unwrapped(target)
    on_cpu = target.device.type == "cpu"
    if _mode == "off" and not on_cpu:
        return
    if on_cpu or _mode == "sync":
        bad = invalid_label_mask(target, num_classes, ignore_index)
        if bool(bad.any()):
            _raise_bad(target, bad, num_classes, ignore_index)
        return
    _poll()
    if target.device.type != "cuda":
        return  # other accelerators: the NaN rows are the signal
    message = f"target: an earlier call saw {{count}} label(s) outside [0, {num_classes}) that are not ignore_index"
    _check_later(invalid_label_mask(target, num_classes, ignore_index), message)


def invalid_probability_rows(target: Tensor) -> Tensor:
    """``True`` for the rows of a ``[N, K]`` probability target with a negative or NaN entry."""
    return ((target < 0) | target.isnan()).any(dim=-1)


_BAD_PROBABILITY_COMPILED = "target: a negative or NaN probability (checked in a compiled graph)"


def check_probabilities(target: Tensor) -> None:
    """Validate a ``[N, K]`` probability target as :func:`check_labels` validates labels: a
    negative or NaN entry raises at once on CPU, and through the asynchronous check on CUDA."""
    if torch.compiler.is_compiling():
        if target.device.type == "cpu":
            torch._assert_async(~invalid_probability_rows(target).any(), _BAD_PROBABILITY_COMPILED)
        return
    target = _unwrapped(target).detach()
    on_cpu = target.device.type == "cpu"
    if _mode == "off" and not on_cpu:
        return
    if on_cpu or _mode == "sync":
        # One reduction (min propagates NaN) where the row mask costs four passes and two
        # [N, K] temporaries, a third of a fused call; the mask only to name the first bad row.
        if target.numel() == 0 or bool(target.min() >= 0):
            return
        bad = invalid_probability_rows(target)
        if bool(bad.any()):
            count, first = _first_bad(bad)
            row = target[first]
            entry = row[(row < 0) | row.isnan()][0]
            raise ValueError(
                f"target: {count} row(s) of the probability target hold a negative or NaN entry; "
                f"first at row {first[-1]}: {float(entry)}"
            )
        return
    _poll()
    if target.device.type == "cuda":
        message = "target: an earlier call saw {count} probability-target row(s) with a negative or NaN entry"
        _check_later(invalid_probability_rows(target), message)


def check_epsilon_rows(epsilon: Tensor) -> None:
    """Raise ``ValueError`` naming the first row whose per-row bias is NaN or infinite, where that
    costs no host sync (CPU) or one is asked for (``"sync"``); see the module docstring."""
    if torch.compiler.is_compiling():
        return
    epsilon = _unwrapped(epsilon).detach()
    if epsilon.device.type != "cpu" and _mode != "sync":
        return
    bad = ~torch.isfinite(epsilon)
    if bool(bad.any()):
        count, first = _first_bad(bad)
        raise ValueError(
            f"epsilon: {count} per-row bias(es) are NaN or infinite; first at row {first[-1]}: {float(epsilon[first])}"
        )
