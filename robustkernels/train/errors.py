"""Errors the training command reports as one line (no traceback), each with its exit status.

Everything here is the user's to fix (a setting, a file, a diverged run), so the command line
prints the message and exits with :attr:`TrainError.exit_status` instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "TrainError",
    "ConfigError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "ResumeMismatchError",
    "DivergedError",
]


class TrainError(Exception):
    """Base of the errors ``python -m robustkernels.train`` reports without a traceback."""

    #: Exit status of the command line: 2 for bad input (settings, files), as argparse uses.
    exit_status = 2


class ConfigError(TrainError, ValueError):
    """A setting has a bad value; the message names the flag, the YAML key and the value."""


class CheckpointError(TrainError, ValueError):
    """A checkpoint file cannot be used: missing, empty, truncated, corrupt or foreign."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"checkpoint {path}: {problem}")
        self.path = path
        self.problem = problem


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds Python objects beyond tensors and plain data; unpickling it could run code."""


class ResumeMismatchError(TrainError, ValueError):
    """``--resume`` with settings that differ from those the checkpoint was written with."""


class DivergedError(TrainError, RuntimeError):
    """The training loss became NaN or infinite."""

    # The settings were valid and the run started: this is a failed run, not bad usage.
    exit_status = 1
