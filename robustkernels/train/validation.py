"""Checks of every training setting when a config is built: type, finiteness, range, known names.

A bad value is reported as a :class:`~robustkernels.train.errors.ConfigError` naming the flag,
the YAML key and the value, before any data is read or any step is taken; without these checks
it surfaced much later as a message about an internal, scaled value (a negative lr), a
``ZeroDivisionError`` (batch size 0), or a run that "succeeded" without training (negative
epochs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..backends import BACKENDS
from ..noise import ASYMMETRIC_MAPPINGS, NOISE_TYPES
from ..schedules import MODES
from ..specs import get_spec
from .errors import ConfigError

__all__ = ["DATASETS", "DEFAULT_NOISE_MAPPING", "setting_name", "validate_config"]

#: Values of ``dataset`` (see :func:`robustkernels.train.datasets.build_data`).
DATASETS = (
    "composite_digits",
    "digits",
    "cifar10",
    "cifar100",
    "fashion_mnist",
    "webvision",
    "mini_webvision",
    "imagefolder",
    "filelist",
)

#: The asymmetric-noise mapping a dataset implies when ``noise_mapping`` is not set.
DEFAULT_NOISE_MAPPING = {
    "digits": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "fashion_mnist": "fashion_mnist",
}

# Settings that must name one of a fixed set of values.
_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "noise": NOISE_TYPES,
    "noise_mapping": tuple(ASYMMETRIC_MAPPINGS),
    "eps_schedule": ("none", *MODES),
    "loss_backend": ("auto", *BACKENDS),
    "optimizer": ("sgd", "lars", "lamb"),
    "lr_scaling": ("linear", "none"),
    "lr_schedule": ("cosine", "step", "constant"),
    "device": ("auto", "cpu", "cuda"),
    "log_format": ("jsonl", "csv"),
}

# Settings a dataset cannot do without.
_DATASET_NEEDS: dict[str, tuple[str, ...]] = {
    "cifar10": ("data_root",),
    "cifar100": ("data_root",),
    "fashion_mnist": ("data_root",),
    "webvision": ("data_root",),
    "mini_webvision": ("data_root",),
    "imagefolder": ("data_root", "val_root"),
    "filelist": ("data_root", "train_list", "val_list"),
}


@dataclass(frozen=True)
class _Range:
    """A closed or half-open interval of allowed numbers (``None``: unbounded on that side)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v: float) -> bool:
        above_low = self.low is None or (v > self.low if self.low_open else v >= self.low)
        below_high = self.high is None or (v < self.high if self.high_open else v <= self.high)
        return above_low and below_high

    def text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


_AT_LEAST_0 = _Range(0)
_AT_LEAST_1 = _Range(1)
_POSITIVE = _Range(0, low_open=True)

_RANGES: dict[str, _Range] = {
    "num_digits": _Range(1, 4),
    "train_size": _AT_LEAST_1,
    "val_size": _AT_LEAST_1,
    "image_size": _AT_LEAST_1,
    "num_workers": _AT_LEAST_0,
    "noise_rate": _Range(0, 1),
    "noise_seed": _AT_LEAST_0,
    "hidden": _AT_LEAST_1,
    "eps_step_size": _AT_LEAST_1,
    "eps_gamma": _Range(0, 1, low_open=True),
    "lr": _POSITIVE,
    "base_batch": _AT_LEAST_1,
    "momentum": _Range(0, 1, high_open=True),
    "weight_decay": _AT_LEAST_0,
    "warmup_epochs": _AT_LEAST_0,
    "lr_step_epochs": _POSITIVE,
    "lr_gamma": _POSITIVE,
    "grad_clip": _AT_LEAST_0,
    "batch_size": _AT_LEAST_1,
    "epochs": _AT_LEAST_1,
    "max_steps": _AT_LEAST_1,
    "seed": _AT_LEAST_0,
    "threads": _AT_LEAST_1,
    "checkpoint_every": _AT_LEAST_0,
    "time_loss_every": _AT_LEAST_0,
    "eval_every": _AT_LEAST_0,
}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def setting_name(name: str) -> str:
    """How a user spells setting ``name``: its flag and its YAML key."""
    return f"--{name.replace('_', '-')} (YAML key {name})"


def _bad(name: str, requirement: str, value: object) -> ConfigError:
    return ConfigError(f"{setting_name(name)} must be {requirement}, got {value!r}")


def _from_text(name: str, kind: str, text: str) -> object:
    """A value YAML left as text (PyYAML reads ``1e-3`` as a string), parsed like its flag."""
    low = text.strip().lower()
    if kind == "bool":
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise _bad(name, "true or false", text)
    try:
        return int(low) if kind == "int" else float(low)
    except ValueError:
        raise _bad(name, "a whole number" if kind == "int" else "a number", text) from None


def _number(name: str, value: object, what: str = "a finite number") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, what, value)
    return float(value)


def _params(name: str, value: object) -> dict[str, float]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _bad(name, "a mapping of parameter name: number (flag: q=0.7,a=2)", value)
    return {k: _number(name, v, f"a finite number for parameter {k!r}") for k, v in value.items()}


def _typed(name: str, kind: str, value: object) -> object:
    """``value`` checked (and where unambiguous converted) against annotation ``kind``."""
    if kind.endswith(" | None"):
        if value is None:
            return None
        kind = kind.removesuffix(" | None")
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise _bad(name, "a non-empty string", value)
        return value
    if kind == "dict[str, float]":
        return _params(name, value)
    if kind == "float | str" and value == "auto":
        return value
    if isinstance(value, str):
        value = _from_text(name, "float" if kind == "float | str" else kind, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad(name, "true or false", value)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, "a whole number", value)
        return value
    return _number(name, value, "a finite number or 'auto'" if kind == "float | str" else "a finite number")


def _check_value(name: str, value: object) -> None:
    choices = _CHOICES.get(name)
    if choices is not None and value is not None and value not in choices:
        raise _bad(name, f"one of {', '.join(choices)}", value)
    allowed = _RANGES.get(name)
    if allowed is not None and value is not None and not allowed.contains(value):
        raise _bad(name, allowed.text(), value)


def _check_loss(cfg: Any) -> None:
    try:
        spec = get_spec(cfg.loss)
    except ValueError as exc:
        raise ConfigError(f"{setting_name('loss')}: {exc}") from None
    try:
        spec.resolve(cfg.loss_params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{setting_name('loss_params')}: {exc}") from None


def _check_combinations(cfg: Any) -> None:
    for needed in _DATASET_NEEDS.get(cfg.dataset, ()):
        if getattr(cfg, needed) is None:
            raise ConfigError(f"--dataset {cfg.dataset} needs {setting_name(needed)}")
    if cfg.noise == "asymmetric" and cfg.noise_mapping is None and cfg.dataset not in DEFAULT_NOISE_MAPPING:
        raise ConfigError(
            f"--noise asymmetric on dataset {cfg.dataset} needs {setting_name('noise_mapping')} "
            f"(one of {', '.join(ASYMMETRIC_MAPPINGS)})"
        )
    if cfg.eps_schedule == "step" and cfg.eps_step_size is None:
        raise ConfigError(f"--eps-schedule step needs {setting_name('eps_step_size')}")
    _check_loss(cfg)


def validate_config(cfg: Any) -> None:
    """Check every field of the :class:`~robustkernels.train.config.TrainConfig` ``cfg`` in place.

    Text that YAML did not convert (``lr: 1e-3``) becomes the field's type; anything else of
    the wrong type, non-finite, out of range or not among the known names raises
    :class:`ConfigError` naming the setting and the value.
    """
    for f in dataclasses.fields(cfg):
        value = _typed(f.name, str(f.type), getattr(cfg, f.name))
        _check_value(f.name, value)
        setattr(cfg, f.name, value)
    _check_combinations(cfg)
