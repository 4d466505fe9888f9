"""Resuming with changed settings is refused, naming each one, unless ``--resume-override``."""

from __future__ import annotations

import logging
import os

import pytest

from robustkernels.train import train
from robustkernels.train.checkpoint import load_checkpoint
from robustkernels.train.cli import main
from robustkernels.train.errors import CheckpointError, ResumeMismatchError
from robustkernels.train.optim import scaled_lr


@pytest.fixture
def stopped_mae_run(tiny_cfg):
    """An MAE run stopped mid-epoch at step 4, with its checkpoint."""
    cfg = tiny_cfg(max_steps=4, checkpoint_every=4)
    train(cfg)
    return cfg


def test_changed_settings_are_refused_naming_each(stopped_mae_run, tiny_cfg):
    with pytest.raises(ResumeMismatchError) as info:
        train(tiny_cfg(resume="auto", loss="ce", lr=0.01, epsilon=0.0))
    message = str(info.value)
    for text in ("--loss: 'mae' in the checkpoint, 'ce' now", "--lr: 0.4 in the checkpoint, 0.01 now", "--epsilon"):
        assert text in message, message
    assert "--resume-override" in message
    assert load_checkpoint(os.path.join(stopped_mae_run.output_dir, "checkpoint.pt"))["step"] == 4  # untouched
    # max_steps, checkpoint_every, eval_every, ... say how the run proceeds, not what it computes.
    assert train(tiny_cfg(resume="auto", eval_every=2, loss_backend="torch"))["steps"] == 16


def test_cli_changed_settings_exit_2(stopped_mae_run, tiny_flags, capsys):
    assert main([*tiny_flags, "--resume", "auto", "--loss", "ce", "--lr", "0.01", "--epsilon", "0"]) == 2
    err = capsys.readouterr().err
    assert "--loss: 'mae' in the checkpoint, 'ce' now" in err and "--lr: 0.4" in err


def test_override_uses_the_new_values(stopped_mae_run, tiny_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="robustkernels.train.loop"):
        result = train(tiny_cfg(resume="auto", loss="ce", lr=0.01, epsilon=0.0, resume_override=True))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "--loss: 'mae' in the checkpoint, 'ce' now" in warning and "--lr: 0.4" in warning
    assert result["steps"] == 16
    new_lr = scaled_lr(0.01, 32, 256, "linear")
    # The constant schedule's lr of every epoch logged after the resume is the new one, not 0.4's.
    assert [r["lr"] for r in result["history"]] == [pytest.approx(new_lr)] * 2
    saved = load_checkpoint(os.path.join(stopped_mae_run.output_dir, "checkpoint.pt"))
    assert saved["config"]["loss"] == "ce" and saved["config"]["lr"] == 0.01
    assert all(group["lr"] == pytest.approx(new_lr) for group in saved["optimizer"]["param_groups"])


def test_override_of_the_optimizer_starts_its_state_afresh(stopped_mae_run, tiny_cfg):
    result = train(tiny_cfg(resume="auto", optimizer="lamb", lr=0.002, resume_override=True))
    assert result["steps"] == 16


def test_override_cannot_load_weights_of_another_model(stopped_mae_run, tiny_cfg):
    with pytest.raises(ResumeMismatchError, match="--hidden: 32 in the checkpoint, 48 now"):
        train(tiny_cfg(resume="auto", hidden=48))
    with pytest.raises(CheckpointError, match="do not fit this model"):
        train(tiny_cfg(resume="auto", hidden=48, resume_override=True))
