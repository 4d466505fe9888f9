"""Reference training script for noisy labels: ``python -m robustkernels.train``.

:func:`train` runs one job from a :class:`TrainConfig` (flags or YAML); :func:`run_demo` is the
embedded CE vs MAE vs MAE+eps(K) demonstration. See ``docs/training.md``.
"""

from .config import TrainConfig, config_from_args, load_config
from .demo import run_demo
from .errors import CheckpointError, ConfigError, DivergedError, ResumeMismatchError, TrainError
from .loop import train

__all__ = [
    "TrainConfig",
    "config_from_args",
    "load_config",
    "run_demo",
    "train",
    "TrainError",
    "ConfigError",
    "CheckpointError",
    "ResumeMismatchError",
    "DivergedError",
]
