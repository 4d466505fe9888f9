"""Label validation policy (robustkernels._labels)."""

import pytest
import torch

import robustkernels as rk
from robustkernels._labels import invalid_label_mask


def test_invalid_mask():
    t = torch.tensor([0, 4, 5, -1, -100, 7])
    assert invalid_label_mask(t, 5, -100).tolist() == [False, False, True, True, False, True]
    assert invalid_label_mask(t, 5, 7).tolist() == [False, False, True, True, True, False]


def test_cpu_check_raises_naming_first_bad_row():
    with pytest.raises(ValueError, match=r"target: 2 label\(s\) outside \[0, 5\).*first at row 2: 5"):
        rk.check_labels(torch.tensor([0, 1, 5, 9]), 5, -100)
    rk.check_labels(torch.tensor([0, 4, -100]), 5, -100)  # valid: no error


def test_mode_setter():
    assert rk.get_label_validation() == "async"
    with pytest.raises(ValueError, match="mode must be"):
        rk.set_label_validation("lazy")
    rk.set_label_validation("sync")
    try:
        assert rk.get_label_validation() == "sync"
    finally:
        rk.set_label_validation("async")


def test_backend_marks_invalid_rows_nan_when_checks_are_bypassed():
    """What a GPU call sees before the asynchronous check reports: the bad row is NaN (loss and
    gradient), the good rows are untouched, nothing is read out of bounds."""
    from robustkernels import _torch_backend

    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1, 9, 2])
    spec = rk.get_spec("mae")
    rows = _torch_backend.robust_loss(x, y, spec, spec.resolve({}), 0.0, "none", -100)
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    # The bad row's gradient is NaN even with a zero upstream gradient, as in the kernels (which
    # write the NaN row in the forward pass and scale it in the backward).
    rows[[0, 2]].sum().backward()
    assert torch.isnan(x.grad[1]).all() and torch.isfinite(x.grad[[0, 2]]).all()
    ref = rk.robust_loss(x.detach()[[0, 2]], y[[0, 2]], "mae", reduction="none", backend="torch")
    torch.testing.assert_close(rows[[0, 2]].detach(), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_async_check_raises_on_a_later_call():
    x = torch.randn(4, 5, device="cuda")
    bad = torch.tensor([0, 7, 1, 2], device="cuda")
    out = rk.robust_loss(x, bad, "mae", reduction="none", backend="torch")
    assert torch.isnan(out[1]).item()
    with pytest.raises(ValueError, match="earlier call saw 1 label"):
        rk.check_labels()


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend", rk.available_backends("cpu"))
def test_cpu_call_raises_for_a_bad_label_and_only_then(backend, reduction):
    """The fused CPU backends check labels after the call, from the NaN a bad row leaves in the
    loss; the error, and the absence of one, must be those of a check before the call."""
    logits = torch.randn(4, 5, requires_grad=True)
    with pytest.raises(ValueError, match=r"target: 1 label\(s\) outside \[0, 5\).*first at row 2: 7"):
        rk.robust_loss(logits, torch.tensor([0, 1, 7, -100]), "ce", reduction=reduction, backend=backend)
    with pytest.raises(ValueError, match=r"target: 2 label\(s\).*first at row 0: -3"):  # NaN logits too
        rk.robust_loss(logits.detach().fill_(float("nan")), torch.tensor([-3, 1, 7, 2]), "ce", backend=backend)
    # A NaN logit alone makes a NaN row, and every ignored row a NaN mean: no error for either.
    nan_logit = logits.detach().clone()
    nan_logit[1, 3] = float("nan")
    loss = rk.robust_loss(nan_logit, torch.tensor([0, 1, 2, 3]), "ce", reduction=reduction, backend=backend)
    assert loss.isnan().any()
    ignored = rk.robust_loss(logits, torch.full((4,), -100), "ce", backend=backend)
    assert ignored.isnan()
