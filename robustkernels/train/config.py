"""Training configuration: one dataclass, filled from defaults, a YAML file, then command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .validation import validate_config

__all__ = ["TrainConfig", "ConfigError", "load_config", "build_parser", "config_from_args"]


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``docs/training.md``); YAML keys are the field names."""

    # data
    dataset: str = "composite_digits"  # composite_digits | digits | cifar10 | cifar100 | fashion_mnist |
    # webvision | mini_webvision | imagefolder | filelist
    data_root: str | None = None
    num_digits: int = 3  # composite_digits: 10**num_digits classes
    train_size: int = 30000  # composite_digits
    val_size: int = 5000  # composite_digits
    imagenet_val_root: str | None = None  # webvision / mini_webvision: ILSVRC2012 val (wnid folders)
    train_list: str | None = None  # filelist
    val_root: str | None = None  # imagefolder / filelist: validation images
    val_list: str | None = None  # filelist
    image_size: int = 224
    augment: bool = False  # in-memory image sets: random crop (pad 4) + flip
    num_workers: int = 4
    # label noise (applied to the training labels only)
    noise: str = "none"  # none | symmetric | symmetric_incl | asymmetric | pairflip
    noise_rate: float = 0.0
    noise_seed: int = 0
    noise_mapping: str | None = None  # asymmetric: cifar10 | cifar100 | mnist | fashion_mnist
    # model
    model: str = "mlp"  # mlp | smallcnn | any torchvision classification model name
    hidden: int = 512
    # loss
    loss: str = "ce"
    loss_params: dict[str, float] = field(default_factory=dict)
    epsilon: float | str = 0.0  # float or "auto" (eps(K), Eq. 4)
    eps_schedule: str = "none"  # none | constant | linear | cosine | step (robustkernels.schedules)
    eps_end: float = 0.0
    eps_step_size: int | None = None
    eps_gamma: float = 0.5
    loss_backend: str = "auto"
    # optimisation
    optimizer: str = "sgd"  # sgd | lars | lamb
    lr: float = 0.1  # at base_batch; scaled by batch_size / base_batch with lr_scaling="linear"
    lr_scaling: str = "linear"  # linear | none
    base_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    lr_schedule: str = "cosine"  # cosine | step | constant
    lr_step_epochs: float = 1.0  # step schedule: multiply by lr_gamma every lr_step_epochs
    lr_gamma: float = 0.97
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    batch_size: int = 256  # global batch (all ranks together)
    epochs: int = 10
    max_steps: int | None = None  # stop after this many steps (tests, smoke runs)
    # system
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # bfloat16 autocast
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads on CPU
    # output
    output_dir: str = "runs/train"
    checkpoint_every: int = 0  # steps; 0 = only at the end
    resume: str | None = None  # checkpoint path, or "auto": the newest readable one in output_dir
    resume_override: bool = False  # resume even if settings differ from the checkpoint's (new values win)
    trust_checkpoint: bool = False  # load a checkpoint with full pickle (runs code in it): own files only
    log_format: str = "jsonl"  # jsonl | csv
    plot: bool = True
    progress: bool = True
    time_loss_every: int = 20  # steps between synchronised timings of the loss share
    eval_every: int = 1  # epochs

    def __post_init__(self) -> None:
        # Every way of building a config (flags, YAML, Python, dataclasses.replace) is checked.
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _read_mapping(path: str | os.PathLike) -> object:
    """The parsed file; :class:`ConfigError` naming it when it cannot be read or parsed."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f) if os.fspath(path).endswith(".json") else yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
        kind = "JSON" if os.fspath(path).endswith(".json") else "YAML"
        raise ConfigError(f"config {path}: not valid {kind}: {exc}") from None


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or JSON) config; an unreadable file or unknown keys raise :class:`ConfigError`."""
    data = _read_mapping(path)
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: a config must be a mapping of setting: value")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_epsilon(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"epsilon must be a number or 'auto', got {text!r}") from None


def _parse_params(text: str) -> dict[str, float]:
    """``q=0.48,a=2.5`` -> ``{"q": 0.48, "a": 2.5}``."""
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"loss parameters must be name=number pairs such as q=0.7,a=2; got {item!r}"
            ) from None
    return out


def _optional(kind):
    """``kind``, or ``None`` for ``none`` / ``null`` / an empty value."""

    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    # argparse names the type function in its message ("invalid int value: 'x'").
    parse.__name__ = kind.__name__
    return parse


# Annotation text (postponed annotations are strings) -> parser of the flag's value.
_FLAG_TYPES = {
    "bool": _parse_bool,
    "int": int,
    "int | None": _optional(int),
    "float": float,
    "float | str": _parse_epsilon,
    "str": str,
    "str | None": _optional(str),
    "dict[str, float]": _parse_params,
}


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per :class:`TrainConfig` field (``--loss-params q=0.7``, ``--amp true``)."""
    parser = argparse.ArgumentParser(
        prog="python -m robustkernels.train",
        description="Train with a noise-robust loss (and the logit bias). "
        "`python -m robustkernels.train demo` runs the embedded CE vs MAE vs MAE+eps(K) demo.",
    )
    parser.add_argument("--config", help="YAML config; flags override its values")
    for name, f in _FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kind = _FLAG_TYPES[str(f.type)]
        # A bare boolean flag (`--resume-override`) means true; `--amp false` still works.
        bare = {"nargs": "?", "const": True} if kind is _parse_bool else {}
        parser.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=f"(default: {default})", **bare)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then the flags given; every value is validated.

    Raises:
        ConfigError: an unreadable config file, an unknown key, or a bad value (named).
        SystemExit: a flag argparse cannot parse (it prints the usage, status 2).
    """
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    path = args.pop("config", None)
    if path:
        values.update(load_config(path))
    values.update(args)
    return TrainConfig(**values)
