"""Checkpoints that let ``--resume`` continue exactly: weights, optimiser, schedules, RNG, position."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "save_checkpoint", "load_checkpoint"]


def capture_rng() -> dict[str, Any]:
    """States of every RNG a step may use: Python, NumPy, torch CPU and all CUDA devices."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a kill mid-write never leaves a broken checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    # weights_only=False: the checkpoint holds RNG states (tuples, NumPy arrays) besides tensors.
    # Only load checkpoints you wrote.
    return torch.load(path, map_location="cpu", weights_only=False)
