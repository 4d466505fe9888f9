"""Config loading, flags, LR schedule, LARS, top-k, and the shipped YAML configs."""

import math
import pathlib

import pytest
import torch

from robustkernels.train.config import TrainConfig, config_from_args, load_config
from robustkernels.train.metrics import topk_correct
from robustkernels.train.optim import LARS, lr_lambda, scaled_lr

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: gce\nloss_params: {q: 0.48}\nepsilon: auto\nepochs: 3\namp: true\n")
    cfg = config_from_args(["--config", str(path), "--epochs", "5", "--loss-params", "q=0.7", "--max-steps", "none"])
    assert (cfg.loss, cfg.loss_params, cfg.epsilon, cfg.epochs, cfg.amp) == ("gce", {"q": 0.7}, "auto", 5, True)
    assert config_from_args(["--epsilon", "2.5", "--nesterov", "false"]).epsilon == 2.5


def test_bad_settings_are_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lossname: mae\n")
    with pytest.raises(ValueError, match="lossname"):
        load_config(path)
    with pytest.raises(SystemExit):
        config_from_args(["--epsilon", "big"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = TrainConfig(**load_config(path))
    assert cfg.loss and cfg.batch_size > 0
    if cfg.dataset == "composite_digits":
        assert cfg.num_digits == 3


def test_lr_schedule_warmup_then_cosine_and_step():
    f = lr_lambda("cosine", total_steps=100, steps_per_epoch=10, warmup_epochs=2)
    assert [f(0), f(9), f(19)] == [pytest.approx(0.05), pytest.approx(0.5), pytest.approx(1.0)]
    assert f(20) == pytest.approx(1.0) and f(60) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = lr_lambda("step", total_steps=100, steps_per_epoch=10, warmup_epochs=0, step_epochs=1, gamma=0.97)
    assert g(9) == 1.0 and g(10) == pytest.approx(0.97) and g(35) == pytest.approx(0.97**3)
    assert scaled_lr(0.1, 1024, 256, "linear") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_lambda("poly", 10, 1, 0)


def test_lars_trust_ratio():
    w = torch.nn.Parameter(torch.full((2, 2), 3.0))  # ||w|| = 6
    b = torch.nn.Parameter(torch.ones(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.01)
    w.grad = torch.full((2, 2), 0.5)  # ||g|| = 1
    b.grad = torch.full((2,), 0.5)
    opt.step()
    # Matrix: update = lr * eta * ||w|| / ||g|| * g = 0.06 * 0.5; vector (bias): plain SGD.
    assert torch.allclose(w.detach(), torch.full((2, 2), 3.0 - 0.03))
    assert torch.allclose(b.detach(), torch.full((2,), 0.5))


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.7], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    top1, top2, top5 = topk_correct(logits, target, (1, 2, 5))
    assert (top1.item(), top2.item(), top5.item()) == (1, 2, 3)
    assert not math.isnan(top1.item())
