"""benchmarks.drop_in: its naive baselines compute the library's loss, and its bytes model."""

import pytest
import torch

import robustkernels as rk
from benchmarks import drop_in


@pytest.mark.parametrize("loss", ["mae", "gce", "ce"])
@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_naive_probability_target_forms_are_the_expected_loss(loss, eps):
    logits = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    t = torch.rand(6, 9, dtype=torch.float64)
    naive = drop_in.naive_soft(loss, eps)(logits, t)
    want = rk.robust_loss(logits, t, loss, epsilon=eps, backend="torch")
    torch.testing.assert_close(naive, want, rtol=1e-10, atol=1e-12)
    (g_naive,) = torch.autograd.grad(naive, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_naive, g_want, rtol=1e-10, atol=1e-12)


def test_bandwidth_counts_the_target_once_for_probability_targets():
    labels = drop_in._bandwidth(1.0, 1.0, 100, 10, probabilities=False)
    probs = drop_in._bandwidth(1.0, 1.0, 100, 10, probabilities=True)
    assert probs["model_gb"] - labels["model_gb"] == pytest.approx(100 * 10 * 4 / 1e9)
    assert labels["copy_gbps"] == pytest.approx(2 * 100 * 10 * 4 / 1e9)
