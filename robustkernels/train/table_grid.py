"""The Table-2-style grid: which losses, noise settings, class counts and seeds, and one run's config.

Every run uses the demo's model, optimiser and schedule (:func:`robustkernels.train.demo.demo_configs`):
an MLP 512-512 on composite handwritten digits, SGD with Nesterov, lr 0.4 at batch 128, half an
epoch of warm-up and a cosine schedule. Only the loss (with its published hyper-parameters), the
class count ``K = 10**digits``, the label noise and the seed change; no loss is tuned.

The rows of the table -- which library losses, with which bias and published hyper-parameters,
and why the "new" active-passive combination is the one it is -- are an experiment's
configuration, not library code: ``configs/grids/paper_table.yaml``. Runs with ``K <= 10`` take the
CIFAR-10 values, runs with more classes the CIFAR-100 values.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .demo import demo_configs

__all__ = [
    "LOSS_CHOICES",
    "PUBLISHED",
    "NOISE_SETTINGS",
    "LossChoice",
    "GridSetting",
    "RunSpec",
    "noise_setting",
    "grid_runs",
    "run_config",
    "transferred_q",
]

#: The grid's configuration file (see the module docstring).
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "grids" / "paper_table.yaml"


def _load_config(path: Path = CONFIG) -> dict[str, Any]:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


_CONFIG = _load_config()

#: Published hyper-parameters per loss: ``(CIFAR-10 values, CIFAR-100 values)``; losses not
#: listed use the library defaults.
PUBLISHED: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    loss: (dict(values["cifar10"]), dict(values["cifar100"])) for loss, values in _CONFIG["published"].items()
}

#: The K the transferred GCE exponent starts from, and its published value there.
GCE_FROM_CLASSES, GCE_Q = int(_CONFIG["transfer_from"]["classes"]), float(_CONFIG["transfer_from"]["q"])


def published_params(loss: str, num_classes: int) -> dict[str, float]:
    """The published hyper-parameters of ``loss`` for a ``num_classes``-class problem (``{}``: defaults)."""
    cifar10, cifar100 = PUBLISHED.get(loss, ({}, {}))
    return dict(cifar10 if num_classes <= 10 else cifar100)


@functools.cache
def transferred_q(num_classes: int) -> float:
    """GCE's ``q`` moved from ``q = 0.7`` at ``K = 10`` to ``num_classes`` by Eq. 3 (cached: ~15 s each)."""
    if num_classes == GCE_FROM_CLASSES:
        return GCE_Q
    from ..calibration import transfer

    return transfer("gce", "q", GCE_Q, GCE_FROM_CLASSES, num_classes)


@dataclass(frozen=True)
class LossChoice:
    """One row of the table: a library loss, its logit bias and how its parameters depend on ``K``."""

    loss: str
    epsilon: float | str = 0.0  # "auto": eps(K) of Eq. 4
    params: Callable[[int], dict[str, float]] | None = None  # K -> parameters; None: published_params

    def resolve(self, num_classes: int) -> dict[str, float]:
        """The loss parameters at ``num_classes``."""
        if self.params is not None:
            return self.params(num_classes)
        return published_params(self.loss, num_classes)


def _choice(entry: dict[str, Any]) -> LossChoice:
    params = {"published": None, "transfer": lambda k: {"q": transferred_q(k)}}[entry.get("params", "published")]
    return LossChoice(entry["loss"], entry.get("epsilon", 0.0), params)


#: The rows of the table, in table order (labels are the ``--losses`` names).
LOSS_CHOICES: dict[str, LossChoice] = {label: _choice(entry) for label, entry in _CONFIG["losses"].items()}

#: Noise settings of the grid: name -> (noise type of the library, rate).
NOISE_SETTINGS: dict[str, tuple[str, float]] = {
    "sym0": ("none", 0.0),
    "sym20": ("symmetric", 0.2),
    "sym40": ("symmetric", 0.4),
    "sym60": ("symmetric", 0.6),
    "pair40": ("pairflip", 0.4),
}

_NOISE_NAME = re.compile(r"^(sym|pair)(\d{1,2})$")


def noise_setting(name: str) -> tuple[str, float]:
    """``sym<percent>`` (symmetric, true class excluded) or ``pair<percent>`` (pair flip) -> (type, rate)."""
    match = _NOISE_NAME.match(name)
    if not match:
        raise ValueError(f"noise setting must look like sym40 or pair40, got {name!r}")
    kind, percent = match.group(1), int(match.group(2))
    if percent == 0:
        return "none", 0.0
    return ("symmetric" if kind == "sym" else "pairflip"), percent / 100


@dataclass(frozen=True)
class GridSetting:
    """What every run of one grid shares besides the demo's model and optimiser."""

    train_size: int = 20000
    val_size: int = 5000
    epochs: int = 10

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid for one seed."""

    classes: int
    noise: str
    loss: str  # a key of LOSS_CHOICES
    seed: int

    @property
    def key(self) -> str:
        """Identifier of the run in ``runs.jsonl``."""
        return f"K{self.classes}/{self.noise}/{self.loss}/seed{self.seed}"


def grid_runs(
    classes: Sequence[int], noises: Sequence[str], losses: Sequence[str], seeds: Sequence[int]
) -> list[RunSpec]:
    """Every combination: seed outermost, so an interrupted grid has whole tables for its first seeds,
    and K innermost, so every few runs mix cheap and expensive ones and the progress bar's ETA holds early."""
    for label in losses:
        if label not in LOSS_CHOICES:
            raise ValueError(f"unknown loss {label!r}; valid: {', '.join(LOSS_CHOICES)}")
    for k in classes:
        digits = round(math.log10(k)) if k > 0 else 0
        if k not in (10, 100, 1000, 10000) or 10**digits != k:
            raise ValueError(f"classes must be 10, 100, 1000 or 10000 (composite digits), got {k}")
    for name in noises:
        noise_setting(name)
    return [RunSpec(k, n, label, s) for s in seeds for n in noises for label in losses for k in classes]


def _base_config() -> TrainConfig:
    # The demo's model, optimiser and schedule (its "ce" run; the loss is replaced per run).
    return demo_configs("runs/unused", quick=False, threads=1)["ce"]


def run_config(spec: RunSpec, setting: GridSetting, output_dir: str) -> TrainConfig:
    """The :class:`TrainConfig` of one run (``loss_backend="auto"``, one thread, no plot or bar)."""
    choice = LOSS_CHOICES[spec.loss]
    noise, rate = noise_setting(spec.noise)
    return dataclasses.replace(
        _base_config(),
        num_digits=round(math.log10(spec.classes)),
        train_size=setting.train_size,
        val_size=setting.val_size,
        epochs=setting.epochs,
        noise=noise,
        noise_rate=rate,
        noise_seed=spec.seed,
        loss=choice.loss,
        loss_params=choice.resolve(spec.classes),
        epsilon=choice.epsilon,
        loss_backend="auto",
        seed=spec.seed,
        threads=1,
        plot=False,
        progress=False,
        output_dir=output_dir,
        checkpoint_every=0,
        time_loss_every=0,
    )


def run_metadata(spec: RunSpec, cfg: TrainConfig) -> dict[str, Any]:
    """The fields of a ``runs.jsonl`` record that describe the run (not its result)."""
    return {
        "key": spec.key,
        **dataclasses.asdict(spec),
        "loss_name": cfg.loss,
        "loss_params": dict(cfg.loss_params),
    }
