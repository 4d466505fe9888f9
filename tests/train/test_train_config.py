"""Config loading, flags, LR schedule, LARS, LAMB, top-k, and the shipped YAML configs."""

import math
import pathlib

import numpy as np
import pytest
import torch

from robustkernels.train.config import TrainConfig, config_from_args, load_config
from robustkernels.train.metrics import topk_correct
from robustkernels.train.optim import LAMB, LARS, build_optimizer, lr_lambda, scaled_lr

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


def _lamb_by_hand(w, grads, lr, betas, eps, wd, matrix):
    """Algorithm 2 of You et al. (2020), in float64 NumPy, one parameter tensor."""
    w = w.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        r = (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
        if matrix:
            r = r + wd * w
            r = r * (np.linalg.norm(w) / np.linalg.norm(r))
        w = w - lr * r
    return w


def test_lamb_matches_algorithm():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    grads_w, grads_b = [rng.normal(size=(3, 4)) for _ in range(3)], [rng.normal(size=4) for _ in range(3)]
    w = torch.nn.Parameter(torch.tensor(w0))
    b = torch.nn.Parameter(torch.tensor(b0))
    opt = LAMB([w, b], lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    for gw, gb in zip(grads_w, grads_b):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
    np.testing.assert_allclose(w.detach().numpy(), _lamb_by_hand(w0, grads_w, 0.05, (0.8, 0.99), 1e-6, 0.1, True))
    # 1-D tensors: plain bias-corrected Adam, no weight decay, no trust ratio.
    np.testing.assert_allclose(b.detach().numpy(), _lamb_by_hand(b0, grads_b, 0.05, (0.8, 0.99), 1e-6, 0.1, False))
    # The trust ratio makes each matrix step exactly lr * ||w|| long.
    before = w.detach().clone()
    w.grad = torch.tensor(grads_w[0])
    b.grad = None
    opt.step()
    assert torch.linalg.vector_norm(w.detach() - before).item() == pytest.approx(0.05 * before.norm().item())


def test_lamb_zero_weights_and_state_dict():
    w = torch.nn.Parameter(torch.zeros(2, 2))  # zero-init layer: trust ratio 1, no NaN
    opt = build_optimizer(torch.nn.Linear(1, 1), "lamb", 0.1, 0.9, True, 0.0)
    assert isinstance(opt, LAMB) and opt.param_groups[0]["betas"] == (0.9, 0.999)
    opt = LAMB([w], lr=0.1)
    w.grad = torch.ones(2, 2)
    opt.step()
    assert torch.isfinite(w).all() and not torch.equal(w.detach(), torch.zeros(2, 2))
    again = LAMB([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert next(iter(again.state.values()))["step"] == 1
    with pytest.raises(ValueError, match="optimizer must be"):
        build_optimizer(torch.nn.Linear(1, 1), "adamw", 0.1, 0.9, True, 0.0)


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.7], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    top1, top2, top5 = topk_correct(logits, target, (1, 2, 5))
    assert (top1.item(), top2.item(), top5.item()) == (1, 2, 3)
    assert not math.isnan(top1.item())
