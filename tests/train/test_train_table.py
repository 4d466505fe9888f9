"""The Table-2-style grid: resume from a partial runs.jsonl, the report, the configs, one real tiny grid."""

from __future__ import annotations

import json
import os

import pytest

from robustkernels.train import cli, table, table_grid
from robustkernels.train.errors import DivergedError
from robustkernels.train.loop import train
from robustkernels.train.table_grid import LOSS_CHOICES, GridSetting, grid_runs, run_config
from robustkernels.train.table_report import summarise, write_report

SETTING = GridSetting(train_size=256, val_size=64, epochs=2)


class FakeTrain:
    """Stands in for :func:`train`: records the configs and returns a two-epoch history."""

    def __init__(self, diverge_loss: str | None = None) -> None:
        self.calls: list[tuple[int, str, float, int]] = []
        self.diverge_loss = diverge_loss

    def __call__(self, cfg):
        self.calls.append((10**cfg.num_digits, cfg.loss, cfg.noise_rate, cfg.seed))
        if cfg.loss == self.diverge_loss:
            raise DivergedError("the training loss became NaN")
        top1 = 50.0 + 10 * cfg.seed + (5.0 if cfg.loss == "ce" else 0.0)
        history = [
            {"epoch": e, "train_loss": 1.0 / e, "val_top1": top1 * e / 2, "val_top5": 90.0, "train_memorised": 10.0 * e}
            for e in (1, 2)
        ]
        for row in history:
            row["epsilon"] = 0.0
        return {"history": history, "final": history[-1], "noise_rate": cfg.noise_rate, "loss_backend": "fake"}


@pytest.fixture
def fake_train(monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(table, "train", fake)
    return fake


def _keys(path):
    return [r["key"] for r in table.load_records(path)]


def test_a_partial_runs_file_makes_a_rerun_do_only_the_missing_runs(tmp_path, fake_train):
    runs = grid_runs([10, 100], ["sym40"], ["ce", "mae+eps"], range(2))
    path = tmp_path / "runs.jsonl"
    table.run_grid(runs, SETTING, str(tmp_path), workers=1, progress=False)
    assert len(fake_train.calls) == 8 and sorted(_keys(path)) == sorted(r.key for r in runs)

    # An interrupted grid: three finished records, then a line cut off mid-write.
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    fake_train.calls.clear()
    new = table.run_grid(runs, SETTING, str(tmp_path), workers=1, progress=False)

    kept = {json.loads(line)["key"] for line in lines[:3]}
    assert sorted(r["key"] for r in new) == sorted(r.key for r in runs if r.key not in kept)
    assert len(fake_train.calls) == 5
    assert sorted(set(_keys(path))) == sorted(r.key for r in runs)  # the cut line is skipped, not glued to
    # A third run has nothing left to do.
    fake_train.calls.clear()
    assert table.run_grid(runs, SETTING, str(tmp_path), workers=1, progress=False) == []
    assert fake_train.calls == []


def test_runs_of_another_data_setting_do_not_count_as_done(tmp_path, fake_train):
    runs = grid_runs([10], ["sym0"], ["ce"], range(1))
    table.run_grid(runs, SETTING, str(tmp_path), workers=1, progress=False)
    other = GridSetting(train_size=SETTING.train_size, val_size=SETTING.val_size, epochs=SETTING.epochs + 1)
    assert len(table.run_grid(runs, other, str(tmp_path), workers=1, progress=False)) == 1
    assert len(fake_train.calls) == 2


def test_report_has_a_block_per_k_best_in_bold_and_the_figures(tmp_path, monkeypatch):
    fake = FakeTrain(diverge_loss="nce_agce")
    monkeypatch.setattr(table, "train", fake)
    runs = grid_runs([10, 100], ["sym0", "sym40"], ["ce", "mae", "nce_agce"], range(2))
    records = table.run_grid(runs, SETTING, str(tmp_path), workers=1, progress=False)
    paths = write_report(records, str(tmp_path), SETTING)

    text = open(paths["table.md"], encoding="utf-8").read()
    assert "## K = 10\n" in text and "## K = 100\n" in text
    assert "| loss | 0 % | 40 % |" in text
    # ce scores 55 / 65 over the two seeds: mean 60, sample std 7.07, best in every column.
    assert "| ce | **60.00 ± 7.07** | **60.00 ± 7.07** |" in text
    assert "| nce_agce | diverged | diverged |" in text
    # Memorised share: no wrong labels without noise.
    assert "| ce | — | 20.00 ± 0.00 |" in text
    summary = json.load(open(paths["table.json"], encoding="utf-8"))
    assert summary["losses"] == ["ce", "mae", "nce_agce"] and summary["noise"] == ["sym0", "sym40"]
    assert len(summary["cells"]) == 2 * 2 * 3
    for name in ("top1_vs_classes.png", "learning_curves.png"):
        assert os.path.getsize(paths[name]) > 10_000


def test_configs_use_the_demo_setup_and_published_values_per_class_count(tmp_path, monkeypatch):
    monkeypatch.setattr(table_grid, "transferred_q", lambda k: {10: 0.7, 100: 0.38, 1000: 0.26}[k])
    configs = {
        (spec.classes, spec.loss): run_config(spec, SETTING, str(tmp_path))
        for spec in grid_runs([10, 100, 1000], ["pair40"], list(LOSS_CHOICES), [0])
    }
    assert len(configs) == 36
    assert {(c.model, c.hidden, c.lr, c.batch_size, c.lr_schedule, c.loss_backend) for c in configs.values()} == {
        ("mlp", 512, 0.8, 128, "cosine", "auto")
    }
    assert configs[(10, "nce_agce")].loss_params == {"alpha": 1.0, "beta": 4.0, "a": 6.0, "q": 1.5}
    assert configs[(1000, "nce_agce")].loss_params == {"alpha": 10.0, "beta": 0.1, "a": 1.8, "q": 3.0}
    assert configs[(1000, "gce+transfer")].loss_params == {"q": 0.26}
    assert configs[(1000, "gce")].loss_params == {"q": 0.7}
    assert configs[(100, "mae+eps")].epsilon == "auto" and configs[(100, "mae")].epsilon == 0.0
    assert configs[(1000, "nf_mae+eps")].num_digits == 3 and configs[(1000, "nf_mae+eps")].noise == "pairflip"
    with pytest.raises(ValueError, match="unknown loss"):
        grid_runs([10], ["sym0"], ["nope"], [0])
    with pytest.raises(ValueError, match="sym40 or pair40"):
        grid_runs([10], ["40"], ["ce"], [0])


def test_the_training_log_records_the_memorised_share(tiny_cfg):
    noisy = train(tiny_cfg(noise="symmetric", noise_rate=0.4))["history"]
    assert all(0.0 <= r["train_memorised"] <= 100.0 for r in noisy)
    clean = train(tiny_cfg(noise="none", noise_rate=0.0))["history"]
    assert all("train_memorised" not in r for r in clean)


def test_cli_quick_grid_trains_for_real_in_two_worker_processes(tmp_path, capsys):
    # `table --quick` as CI runs it, in this process (the two spawned workers still import torch
    # afresh, which costs most of the time).
    argv = ["--quick", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(["table", *argv, "--workers", "2"]) == 0
    records = table.load_records(str(tmp_path / "runs.jsonl"))
    assert sorted(r["key"] for r in records) == [
        "K10/sym40/ce/seed0",
        "K10/sym40/mae+eps/seed0",
        "K100/sym40/ce/seed0",
        "K100/sym40/mae+eps/seed0",
    ]
    assert all(r["top1"] is not None and r["memorised"] is not None for r in records)
    assert summarise(records) and (tmp_path / "table.md").exists() and (tmp_path / "learning_curves.png").exists()
    capsys.readouterr()
    # Re-running the same command trains nothing.
    assert cli.main(["table", *argv, "--workers", "2"]) == 0
    assert "0 run(s) trained" in capsys.readouterr().out


def test_cli_rejects_an_unknown_loss_as_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        table.main(["--out", str(tmp_path), "--losses", "nope"])
    assert exc.value.code == 2
