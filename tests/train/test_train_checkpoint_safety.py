"""Checkpoints: no code runs from a file, damaged files are named, two are kept, ``--resume auto`` falls back."""

from __future__ import annotations

import logging
import os
import pickle
import random
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from robustkernels.train import train
from robustkernels.train.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    capture_rng,
    load_checkpoint,
    previous_path,
    restore_rng,
)
from robustkernels.train.cli import main


class _Evil:
    """Unpickling this runs ``touch marker``: what a crafted checkpoint can do under full pickle."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def _write_evil(path, marker, fmt):
    if fmt == "torch.save":
        torch.save({"model": _Evil(marker), "step": 0}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(_Evil(marker), f)


@pytest.mark.parametrize("fmt", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, fmt):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    _write_evil(evil, marker, fmt)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(str(evil))
    assert not marker.exists()
    message = str(info.value)
    assert str(evil) in message and "--trust-checkpoint" in message and "trusted=True" in message


def test_cli_resume_of_malicious_file_exits_2_without_running_it(tmp_path, tiny_flags):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    _write_evil(evil, marker, "torch.save")
    proc = subprocess.run(
        [sys.executable, "-m", "robustkernels.train", *tiny_flags, "--resume", str(evil)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert not marker.exists()
    assert "Traceback" not in proc.stderr and str(evil) in proc.stderr and "--trust-checkpoint" in proc.stderr


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached Gaussian in both generators: part of the state
    np.random.standard_normal()
    torch.save(capture_rng(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), random.gauss(0, 1), np.random.standard_normal(), torch.rand(3))
    assert expected[:3] == again[:3] and torch.equal(expected[3], again[3])


@pytest.fixture
def finished_run(tiny_cfg):
    """A finished tiny run: checkpoints at steps 12 and 16 (newest)."""
    cfg = tiny_cfg(checkpoint_every=12)
    train(cfg)
    return cfg


def _damage(kind, good, path):
    if kind == "truncated":
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("12\n")
    elif kind == "state_dict":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)


KINDS = ["truncated", "garbage", "empty", "text", "state_dict"]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_or_foreign_checkpoint_is_named(tmp_path, finished_run, kind):
    bad = tmp_path / f"{kind}.pt"
    _damage(kind, os.path.join(finished_run.output_dir, "checkpoint.pt"), bad)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(bad))
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("kind", ["truncated", "state_dict"])
def test_cli_damaged_checkpoint_exits_2(tmp_path, finished_run, tiny_flags, capsys, kind):
    bad = tmp_path / f"{kind}.pt"
    _damage(kind, os.path.join(finished_run.output_dir, "checkpoint.pt"), bad)
    assert main([*tiny_flags, "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and ("corrupt" in err or "not a training checkpoint" in err)


def test_missing_checkpoint_is_named(tmp_path, tiny_cfg):
    with pytest.raises(CheckpointError, match="no such file"):
        train(tiny_cfg(resume=str(tmp_path / "nope.pt")))


def test_last_two_checkpoints_are_kept(finished_run):
    newest = os.path.join(finished_run.output_dir, "checkpoint.pt")
    older = previous_path(newest)
    assert older.endswith("checkpoint.prev.pt")
    assert load_checkpoint(newest)["step"] == 16 and load_checkpoint(older)["step"] == 12
    assert not any(name.endswith(".tmp") for name in os.listdir(finished_run.output_dir))


def test_resume_auto_falls_back_to_the_previous_checkpoint(tiny_cfg, tmp_path, caplog):
    full = train(tiny_cfg(output_dir=str(tmp_path / "full")))
    # Checkpoints at steps 8 (end of epoch 1) and 12; then the newest is damaged.
    train(tiny_cfg(max_steps=12, checkpoint_every=4))
    newest = os.path.join(tiny_cfg().output_dir, "checkpoint.pt")
    older = previous_path(newest)
    assert load_checkpoint(older)["step"] == 8
    _damage("truncated", newest, tmp_path / "half.pt")
    os.replace(tmp_path / "half.pt", newest)
    with caplog.at_level(logging.WARNING, logger="robustkernels.train.loop"):
        resumed = train(tiny_cfg(resume="auto"))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert newest in warning and older in warning and "previous checkpoint" in warning
    assert resumed["steps"] == 16
    # The damaged file was set aside, so the rotation kept the readable step-8 checkpoint.
    assert load_checkpoint(older)["step"] == 8 and load_checkpoint(newest)["step"] == 16
    assert os.path.exists(newest + ".unreadable")
    # Resumed from step 8 exactly: the same weights as the uninterrupted run.
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_auto_uses_previous_when_newest_is_missing(tiny_cfg, caplog):
    train(tiny_cfg(max_steps=12, checkpoint_every=4))
    newest = os.path.join(tiny_cfg().output_dir, "checkpoint.pt")
    os.remove(newest)  # a crash between the two renames of a write
    with caplog.at_level(logging.WARNING, logger="robustkernels.train.loop"):
        assert train(tiny_cfg(resume="auto"))["steps"] == 16
    assert any(newest in r.getMessage() and "missing" in r.getMessage() for r in caplog.records)


def test_resume_auto_with_both_checkpoints_damaged_is_an_error(tiny_cfg, tmp_path):
    train(tiny_cfg(max_steps=12, checkpoint_every=4))
    newest = os.path.join(tiny_cfg().output_dir, "checkpoint.pt")
    for path in (newest, previous_path(newest)):
        open(path, "wb").close()
    with pytest.raises(CheckpointError, match="no readable checkpoint") as info:
        train(tiny_cfg(resume="auto"))
    assert newest in str(info.value) and previous_path(newest) in str(info.value)


def _as_legacy(state):
    """``state`` as an older version wrote it: RNG states as Python's and NumPy's own tuples."""
    for rank in state["per_rank"]:
        rank["rng"]["python"] = random.getstate()
        rank["rng"]["numpy"] = np.random.get_state()
    return state


def test_trusted_legacy_checkpoint_loads_and_resumes(tiny_cfg, tmp_path):
    train(tiny_cfg(max_steps=4, checkpoint_every=4))
    newest = os.path.join(tiny_cfg().output_dir, "checkpoint.pt")
    legacy = str(tmp_path / "legacy.pt")
    torch.save(_as_legacy(load_checkpoint(newest)), legacy)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_checkpoint(legacy)
    assert load_checkpoint(legacy, trusted=True)["step"] == 4
    assert train(tiny_cfg(resume=legacy, trust_checkpoint=True))["steps"] == 16
