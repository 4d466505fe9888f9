"""What ``--resume`` checks before it continues a run, and how it puts the saved state back.

A checkpoint records the settings of its run. Resuming with different settings that change what
is computed (another loss, lr, model, data, batch size, schedule, ...) would silently continue a
different run from the middle of the old one, so it is refused with the list of differences
unless ``--resume-override`` asks for exactly that; then the new values are used everywhere,
including the optimiser's hyper-parameters and the LR and ε schedules, which the saved state
would otherwise bring back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .checkpoint import ResumePoint
from .config import TrainConfig
from .errors import CheckpointError, ResumeMismatchError

__all__ = ["RUN_CONTROL", "config_changes", "check_resume_config", "restore_training_state"]

#: Settings that change how a run executes or reports, not what it computes: free to change on resume.
#: (``max_steps`` is how a run is stopped early and continued; ``device``, ``loss_backend``,
#: ``compile`` and ``channels_last`` pick an implementation of the same computation.)
RUN_CONTROL = frozenset(
    {
        "resume",
        "resume_override",
        "trust_checkpoint",
        "output_dir",
        "max_steps",
        "checkpoint_every",
        "device",
        "threads",
        "num_workers",
        "compile",
        "channels_last",
        "loss_backend",
        "progress",
        "plot",
        "log_format",
        "time_loss_every",
        "eval_every",
    }
)

_DEFAULTS = {
    f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
    for f in dataclasses.fields(TrainConfig)
}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(old: object, new: object) -> bool:
    # 1 in an old YAML and 1.0 now are the same setting.
    if _is_number(old) and _is_number(new):
        return float(old) == float(new)
    return old == new


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[object, object]]:
    """``{setting: (checkpoint's value, new value)}`` for every setting outside :data:`RUN_CONTROL` that differs.

    A setting the checkpoint predates counts with its default value.
    """
    changes = {}
    for name, new in cfg.to_dict().items():
        old = saved.get(name, _DEFAULTS[name])
        if name not in RUN_CONTROL and not _same(old, new):
            changes[name] = (old, new)
    return changes


def _listing(changes: dict[str, tuple[object, object]]) -> str:
    return "; ".join(
        f"--{name.replace('_', '-')}: {old!r} in the checkpoint, {new!r} now" for name, (old, new) in changes.items()
    )


def check_resume_config(point: ResumePoint, cfg: TrainConfig) -> tuple[dict[str, tuple[object, object]], list[str]]:
    """The settings that changed since the checkpoint, and the warnings to log.

    Raises:
        ResumeMismatchError: settings changed and ``cfg.resume_override`` is false; the message
            names every changed setting with its old and new value.
    """
    saved = point.state.get("config")
    if not isinstance(saved, dict):
        return {}, [f"checkpoint {point.path} does not record its settings, so they were not compared with this run's"]
    changes = config_changes(saved, cfg)
    if not changes:
        return {}, []
    if not cfg.resume_override:
        raise ResumeMismatchError(
            f"checkpoint {point.path} was written with other settings: {_listing(changes)}. Resume with the "
            "checkpoint's settings, start a new run in another --output-dir, or pass --resume-override to "
            "continue this run with the new values"
        )
    return changes, [
        f"--resume-override: continuing {point.path} with changed settings, the new values are used: "
        f"{_listing(changes)}. The resumed epoch's train_loss and train_acc_noisy cover only the steps "
        "after the resume"
    ]


def _compact(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_weights(point: ResumePoint, model: nn.Module) -> None:
    try:
        model.load_state_dict(point.state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(point.path, f"its weights do not fit this model ({_compact(exc)})") from None


def _load_optimizer(point: ResumePoint, optimizer: torch.optim.Optimizer) -> None:
    try:
        optimizer.load_state_dict(point.state["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(point.path, f"its optimiser state does not fit this run ({_compact(exc)})") from None


def _keep_new_hyperparameters(optimizer: torch.optim.Optimizer, lr_sched: Any, fresh: list[dict[str, Any]]) -> None:
    """Put back the optimiser settings of this run after loading a checkpoint with other ones.

    ``load_state_dict`` restores the saved ``lr``, momentum, weight decay, ... and LambdaLR its
    saved base learning rates; an override must use the new ones, at the saved position.
    """
    for group, new in zip(optimizer.param_groups, fresh):
        group.update(new)
    lr_sched.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, lr_sched.base_lrs, lr_sched.lr_lambdas):
        group["lr"] = base * factor(lr_sched.last_epoch)


def restore_training_state(
    point: ResumePoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_sched: Any,
    eps_sched: Any,
    changes: dict[str, tuple[object, object]],
) -> list[str]:
    """Load weights, optimiser and schedules from ``point``; with ``changes``, keep this run's settings.

    Returns warnings to log. Raises :class:`CheckpointError` when the saved weights or optimiser
    state do not fit this run's model.
    """
    warnings = []
    _load_weights(point, model)
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    if "optimizer" in changes:
        # Another optimiser's state (SGD momentum vs LAMB moments) does not carry over.
        warnings.append(f"the optimiser changed, so its state in {point.path} is not restored; it starts afresh")
    else:
        _load_optimizer(point, optimizer)
    lr_sched.load_state_dict(point.state["lr_scheduler"])
    if changes:
        _keep_new_hyperparameters(optimizer, lr_sched, fresh)
        # The saved ε schedule would bring its old settings back; keep the new one at the saved position.
        if hasattr(eps_sched, "last_step"):
            eps_sched.last_step = point.state["step"]
    else:
        eps_sched.load_state_dict(point.state["eps_scheduler"])
    return warnings
