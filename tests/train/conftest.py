"""Tiny training runs (10 classes, 256 images, 8 steps per epoch) for the reliability tests."""

from __future__ import annotations

import dataclasses

import pytest

from robustkernels.train import TrainConfig

_TINY = dict(
    dataset="composite_digits",
    num_digits=1,
    train_size=256,
    val_size=64,
    noise="symmetric",
    noise_rate=0.2,
    model="mlp",
    hidden=32,
    loss="mae",
    epsilon="auto",
    batch_size=32,  # 8 steps per epoch
    epochs=2,
    lr=0.4,
    lr_schedule="constant",
    threads=1,
    progress=False,
    plot=False,
    num_workers=0,
    time_loss_every=0,
    device="cpu",
)


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(**overrides)``: a :class:`TrainConfig` of a run that takes well under a second."""

    def make(**overrides) -> TrainConfig:
        return dataclasses.replace(TrainConfig(**_TINY, output_dir=str(tmp_path / "run")), **overrides)

    return make


@pytest.fixture
def tiny_flags(tmp_path):
    """The same run as command-line flags, writing to ``tmp_path / "run"``."""
    flags = []
    for name, value in {**_TINY, "output_dir": str(tmp_path / "run")}.items():
        flags += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags
