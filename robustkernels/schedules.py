"""Schedules of the logit bias for the paper's "**" variants (Sec. 4, WebVision).

A large bias (``eps = 5.2`` at ``K = 1000``) makes a fresh network learn, but a model trained
with it to the end under-confidently predicts the label once the bias is removed at test time;
the paper therefore lowers ``eps`` during training. :class:`EpsilonScheduler` does this in the
style of :mod:`torch.optim.lr_scheduler`: call :meth:`~EpsilonScheduler.step` once per optimiser
step or once per epoch (your choice; ``total_steps`` counts the same unit) and pass
:attr:`~EpsilonScheduler.epsilon` to the loss::

    sched = EpsilonScheduler(1000, total_steps=epochs, mode="cosine")  # from eps(1000) to 0
    for epoch in range(epochs):
        for x, y in loader:
            loss = robust_loss(model(x), y, "mae", epsilon=sched.epsilon)
            ...
        sched.step()

The value is a Python float, as ``robust_loss`` wants (a runtime argument: changing it never
recompiles a kernel or a ``torch.compile`` graph).
"""

from __future__ import annotations

import math
from typing import Any

from .epsilon import epsilon_for_classes

__all__ = ["EpsilonScheduler", "MODES"]

#: The schedule shapes :class:`EpsilonScheduler` knows.
MODES = ("constant", "linear", "cosine", "step")

_STATE_KEYS = ("num_classes", "total_steps", "mode", "start", "end", "step_size", "gamma", "last_step")


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class EpsilonScheduler:
    """Logit bias that moves from ``start`` to ``end`` as training proceeds.

    With ``t = last_step``, ``T = total_steps``, ``s = start`` and ``e = end``:

    * ``"constant"``: ``s``;
    * ``"linear"``: ``s + (e - s) * min(t, T) / T``;
    * ``"cosine"``: ``e + (s - e) * (1 + cos(pi * min(t, T) / T)) / 2`` (half cosine);
    * ``"step"``: ``e + (s - e) * gamma ** (t // step_size)`` (``total_steps`` unused).

    Args:
        num_classes: ``K``; used for ``start="auto"``.
        total_steps: number of :meth:`step` calls over which ``linear`` / ``cosine`` reach ``end``.
        mode: one of :data:`MODES`.
        start: the bias at step 0, or ``"auto"`` for :func:`~robustkernels.epsilon_for_classes`
            of ``num_classes`` (Eq. 4, ``C = 0.15``).
        end: the final bias.
        step_size: steps between decays in ``"step"`` mode (required there).
        gamma: decay factor of ``"step"`` mode, in ``(0, 1]``.

    Attributes:
        last_step: number of :meth:`step` calls so far.

    Example:
        >>> s = EpsilonScheduler(10, total_steps=4, start=2.0, end=0.0)
        >>> [s.epsilon] + [s.step() for _ in range(5)]
        [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    """

    def __init__(
        self,
        num_classes: int,
        *,
        total_steps: int,
        mode: str = "linear",
        start: float | str = "auto",
        end: float = 0.0,
        step_size: int | None = None,
        gamma: float = 0.5,
    ) -> None:
        self.num_classes = _check_int(num_classes, "num_classes", 2)
        self.total_steps = _check_int(total_steps, "total_steps", 1)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        if isinstance(start, str):
            if start != "auto":
                raise ValueError(f"start must be a float or 'auto', got {start!r}")
            start = epsilon_for_classes(self.num_classes)
        self.start = _check_float(start, "start")
        self.end = _check_float(end, "end")
        if mode == "step":
            if step_size is None:
                raise ValueError("step_size is required for mode='step'")
            step_size = _check_int(step_size, "step_size", 1)
        elif step_size is not None:
            step_size = _check_int(step_size, "step_size", 1)
        self.step_size = step_size
        gamma = _check_float(gamma, "gamma")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.gamma = gamma
        self.last_step = 0

    def value_at(self, step: int) -> float:
        """The bias after ``step`` calls of :meth:`step` (does not change the state)."""
        step = _check_int(step, "step", 0)
        s, e = self.start, self.end
        if self.mode == "constant":
            return s
        if self.mode == "step":
            return e + (s - e) * self.gamma ** (step // self.step_size)
        fraction = min(step, self.total_steps) / self.total_steps
        if self.mode == "linear":
            # Written as an interpolation so that the last value is exactly `end`.
            return s * (1.0 - fraction) + e * fraction
        return e + (s - e) * 0.5 * (1.0 + math.cos(math.pi * fraction))

    @property
    def epsilon(self) -> float:
        """The current bias (the value for step ``last_step``)."""
        return self.value_at(self.last_step)

    def step(self) -> float:
        """Advance one step and return the new bias."""
        self.last_step += 1
        return self.epsilon

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the configuration (``start`` resolved) and ``last_step``."""
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (configuration and position), validating it first."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise KeyError(f"state_dict is missing {', '.join(missing)}")
        restored = EpsilonScheduler(
            state["num_classes"],
            total_steps=state["total_steps"],
            mode=state["mode"],
            start=state["start"],
            end=state["end"],
            step_size=state["step_size"],
            gamma=state["gamma"],
        )
        restored.last_step = _check_int(state["last_step"], "last_step", 0)
        self.__dict__.update(restored.__dict__)

    def __repr__(self) -> str:
        return (
            f"EpsilonScheduler(num_classes={self.num_classes}, total_steps={self.total_steps}, mode={self.mode!r}, "
            f"start={self.start:g}, end={self.end:g}, step_size={self.step_size}, gamma={self.gamma:g}, "
            f"last_step={self.last_step})"
        )
