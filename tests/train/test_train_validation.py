"""Every bad setting is named with its value (exit 2, no traceback); a diverged run fails; help texts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from robustkernels.train import TrainConfig, train
from robustkernels.train.checkpoint import load_checkpoint
from robustkernels.train.cli import main
from robustkernels.train.config import config_from_args
from robustkernels.train.demo import main as demo_main
from robustkernels.train.errors import ConfigError, DivergedError


def _run(argv) -> int:
    """``main(argv)`` as the shell sees it: argparse's own errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


BAD_FLAGS = [
    (["--lr", "-0.5"], ["--lr", "-0.5"]),
    (["--lr", "nan"], ["--lr", "nan"]),
    (["--lr", "inf"], ["--lr", "inf"]),
    (["--batch-size", "0"], ["--batch-size", "0"]),
    (["--epochs", "-1"], ["--epochs", "-1"]),
    (["--momentum", "1.5"], ["--momentum", "1.5"]),
    (["--noise-rate", "1.5"], ["--noise-rate", "1.5"]),
    (["--num-digits", "7"], ["--num-digits", "7"]),
    (["--max-steps", "0"], ["--max-steps", "0"]),
    (["--threads", "0"], ["--threads", "0"]),
    (["--weight-decay", "-1"], ["--weight-decay", "-1"]),
    (["--optimizer", "adamw"], ["--optimizer", "adamw"]),
    (["--dataset", "imagenet"], ["--dataset", "imagenet"]),
    (["--loss", "nosuch"], ["--loss", "nosuch"]),
    (["--loss", "gce", "--loss-params", "q=5"], ["--loss-params", "'q'=5"]),
    (["--dataset", "cifar10"], ["--data-root"]),
    (["--eps-schedule", "step"], ["--eps-step-size"]),
    (["--batch-size", "512"], ["--batch-size", "512", "256 training images"]),
]


@pytest.mark.parametrize("flags,expected", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_value_exits_2_naming_it(tiny_flags, capsys, flags, expected):
    assert _run([*tiny_flags, *flags]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert not os.path.exists(os.path.join(tiny_flags[tiny_flags.index("--output-dir") + 1], "checkpoint.pt"))


BAD_YAML = [
    ("lr: abc\n", ["--lr (YAML key lr)", "'abc'"]),
    ("batch_size: 0\n", ["batch_size", "0"]),
    ("epochs: 2.5\n", ["epochs", "whole number", "2.5"]),
    ("amp: maybe\n", ["amp", "true or false", "'maybe'"]),
    ("loss_params: 0.7\n", ["loss_params", "0.7"]),
    ("lossname: mae\n", ["unknown setting", "lossname"]),
    ("lr: [0.1\n", ["not valid YAML"]),
]


@pytest.mark.parametrize("text,expected", BAD_YAML, ids=[t.strip() for t, _ in BAD_YAML])
def test_bad_yaml_value_exits_2_naming_it(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert _run(["--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    for part in expected:
        assert part in err, err


def test_yaml_numbers_written_as_text_are_read():
    # PyYAML reads 1e-3 (no dot) as a string; it is the lr the user meant.
    assert TrainConfig(lr="1e-3", amp="true").lr == 0.001


def test_python_api_validates_too():
    with pytest.raises(ConfigError, match=r"--epochs \(YAML key epochs\) must be >= 1, got -1"):
        TrainConfig(epochs=-1)


@pytest.mark.parametrize("flag,value", [("--loss-params", "q=abc"), ("--max-steps", "x")])
def test_unparsable_flag_messages_name_no_internals(capsys, flag, value):
    assert _run([flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err
    assert "_parse" not in err and "<lambda>" not in err


def test_bare_boolean_flag_means_true():
    cfg = config_from_args(["--resume-override", "--amp", "false"])
    assert cfg.resume_override is True and cfg.amp is False


def test_cli_bad_value_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "robustkernels.train", "--lr", "-0.5", "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--lr" in proc.stderr and "-0.5" in proc.stderr and "Traceback" not in proc.stderr


def test_diverged_run_fails_naming_the_step(tiny_cfg):
    cfg = tiny_cfg(loss="ce", epsilon=0.0, lr=1e6, checkpoint_every=4)
    with pytest.raises(DivergedError, match=r"at step \d+ \(epoch 1\).*Lower --lr"):
        train(cfg)
    # Checked before every checkpoint: none holds the diverged model.
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = os.path.join(cfg.output_dir, name)
        if os.path.exists(path):
            assert all(torch.isfinite(w).all() for w in load_checkpoint(path)["model"].values())


def test_cli_diverged_run_exits_1(tiny_flags, capsys):
    assert _run([*tiny_flags, "--loss", "ce", "--epsilon", "0", "--lr", "1e6"]) == 1
    assert "NaN or infinite" in capsys.readouterr().err


def test_demo_help_shows_a_single_percent_sign(capsys):
    assert _run_demo_help() == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    assert "40% label noise" in out and "%%" not in out


def _run_demo_help() -> int:
    try:
        demo_main(["--help"])
    except SystemExit as exc:
        return exc.code
    return -1
