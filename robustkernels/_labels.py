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
host-side part is skipped; the NaN rows remain.
"""

from __future__ import annotations

import collections
from typing import Literal

import torch
from torch import Tensor

__all__ = ["set_label_validation", "get_label_validation", "check_labels", "invalid_label_mask"]

_Mode = Literal["async", "sync", "off"]
_mode: _Mode = "async"
_pending: collections.deque[tuple[torch.cuda.Event, Tensor, int]] = collections.deque()
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


def _raise_bad(target: Tensor, bad: Tensor, num_classes: int, ignore_index: int) -> None:
    rows = bad.nonzero().flatten()
    row = int(rows[0])
    raise ValueError(
        f"target: {rows.numel()} label(s) outside [0, {num_classes}) that are not "
        f"ignore_index={ignore_index}; first at row {row}: {int(target[row])}"
    )


def _poll(block: bool = False) -> None:
    while _pending:
        event, count, num_classes = _pending[0]
        if not block and not event.query():
            return
        event.synchronize()
        _pending.popleft()
        if int(count) > 0:
            _pending.clear()
            raise ValueError(
                f"target: an earlier call saw {int(count)} label(s) outside [0, {num_classes}) "
                "that are not ignore_index; its loss rows are NaN. Use "
                "robustkernels.set_label_validation('sync') to raise at the offending call."
            )


def check_labels(target: Tensor | None = None, num_classes: int = 0, ignore_index: int = -100) -> None:
    """Validate ``target`` (see the module docstring), or with no argument wait for and report
    every pending asynchronous check."""
    if target is None:
        _poll(block=True)
        return
    if torch.compiler.is_compiling():
        return
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
    count = invalid_label_mask(target, num_classes, ignore_index).sum()
    host = torch.empty((), dtype=count.dtype, pin_memory=True)
    host.copy_(count, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    if len(_pending) >= _MAX_PENDING:
        _poll(block=True)
    _pending.append((event, host, num_classes))
