"""nn.Module losses: RobustLoss and one generated class per loss."""

import inspect

import pytest
import torch

import robustkernels as rk


@pytest.mark.parametrize("name", list(rk.LOSSES))
def test_class_per_loss(name):
    spec = rk.LOSSES[name]
    cls = getattr(rk, spec.class_name)
    assert issubclass(cls, rk.RobustLoss) and issubclass(cls, torch.nn.Module)
    sig = inspect.signature(cls)
    assert [p.name for p in spec.params] == [
        n
        for n in sig.parameters
        if n not in ("epsilon", "reduction", "ignore_index", "weight", "label_smoothing", "backend")
    ]
    crit = cls(epsilon=1.2, backend="torch")
    x, y = torch.randn(4, 9, dtype=torch.float64), torch.randint(0, 9, (4,))
    torch.testing.assert_close(crit(x, y), rk.robust_loss(x, y, name, epsilon=1.2, backend="torch"))
    assert crit.loss == name


def test_repr():
    assert repr(rk.GCELoss(q=0.48, epsilon="auto")) == "GCELoss(q=0.48, epsilon='auto', reduction='mean')"
    assert repr(rk.RobustLoss("mae", epsilon=0.5, reduction="sum", ignore_index=3, backend="torch")) == (
        "RobustLoss('mae', scale=2, epsilon=0.5, reduction='sum', ignore_index=3, backend='torch')"
    )
    assert repr(rk.CELoss()) == "CELoss(epsilon=0, reduction='mean')"


def test_weight_is_a_buffer_and_label_smoothing_is_passed_on():
    weight = torch.rand(5, dtype=torch.float64)
    crit = rk.CELoss(weight=weight, label_smoothing=0.1, reduction="sum", backend="torch")
    assert "weight" in dict(crit.named_buffers())
    assert repr(crit) == "CELoss(epsilon=0, reduction='sum', weight=<[5] tensor>, label_smoothing=0.1, backend='torch')"
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    want = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1, reduction="sum")(x, y)
    torch.testing.assert_close(crit(x, y), want)
    assert crit.to(torch.float32).weight.dtype == torch.float32


def test_per_call_epsilon_and_schedulable_attribute():
    crit = rk.MAELoss(backend="torch")
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 5, (6,))
    eps = torch.linspace(0, 2, 6, dtype=torch.float64)
    torch.testing.assert_close(crit(x, y, epsilon=eps), rk.robust_loss(x, y, "mae", epsilon=eps, backend="torch"))
    crit.epsilon = 0.7
    torch.testing.assert_close(crit(x, y), rk.robust_loss(x, y, "mae", epsilon=0.7, backend="torch"))


def test_module_in_a_training_step():
    model = torch.nn.Linear(3, 10)
    crit = rk.NCEAGCELoss(epsilon="auto")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randint(0, 10, (16,))
    before = crit(model(x), y).item()
    for _ in range(20):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    assert crit(model(x), y).item() < before
