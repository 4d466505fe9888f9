"""robust_loss: argument validation, reductions, ignore_index, epsilon, backend selection."""

import math

import pytest
import torch
import torch.nn.functional as F

import robustkernels as rk
from robustkernels import calibration


def _data(n=6, k=5, dtype=torch.float32):
    return torch.randn(n, k, dtype=dtype), torch.randint(0, k, (n,))


# ---- every bad input raises its documented error, naming the argument -----------------------

BAD_CALLS = [
    (lambda x, y: rk.robust_loss(x.numpy(), y), TypeError, "logits must be a Tensor"),
    (lambda x, y: rk.robust_loss(x, y.tolist()), TypeError, "target must be a Tensor"),
    (lambda x, y: rk.robust_loss(x[0, 0], y), ValueError, "logits must be \\[K\\], \\[N, K\\] or"),
    (lambda x, y: rk.robust_loss(x[0], y), ValueError, r"target: class indices must be a 0-d tensor for 1-D logits"),
    (lambda x, y: rk.robust_loss(x.unsqueeze(0), y), ValueError, r"of shape \(1, 5\) \(the logits' shape \(1, 6, 5\)"),
    (lambda x, y: rk.robust_loss(x[:, :1], y), ValueError, "at least 2 classes"),
    (lambda x, y: rk.robust_loss(x.int(), y), TypeError, "logits must be float"),
    (lambda x, y: rk.robust_loss(x, y[:-1]), ValueError, r"target: class indices must be \[N\] of shape \(6,\)"),
    (lambda x, y: rk.robust_loss(x, y[:, None]), ValueError, r"target: class indices must be \[N\]"),
    (lambda x, y: rk.robust_loss(x, y.float()), ValueError, r"probability target must have the logits' shape \(6, 5\)"),
    (lambda x, y: rk.robust_loss(x, y.bool()), TypeError, "target must hold integer class indices or float"),
    (lambda x, y: rk.robust_loss(x, y.to(torch.complex64)), TypeError, "target must hold integer"),
    (lambda x, y: rk.robust_loss(x, x.softmax(1).to("meta")), ValueError, "same device"),
    (lambda x, y: rk.robust_loss(x, -x.softmax(1)), ValueError, r"target: 6 row\(s\) of the probability target"),
    (
        lambda x, y: rk.robust_loss(x, x.softmax(1).index_fill(0, torch.tensor([3]), math.nan)),
        ValueError,
        "first at row 3: nan",
    ),
    (
        lambda x, y: rk.robust_loss(x, y, weight=torch.ones(4)),
        ValueError,
        r"weight must be 1-D with one entry per class \(K=5\)",
    ),
    (lambda x, y: rk.robust_loss(x, y, weight=torch.ones(5, 1)), ValueError, "weight must be 1-D"),
    (lambda x, y: rk.robust_loss(x, y, weight=torch.ones(5, dtype=torch.int64)), TypeError, "weight must be float"),
    (lambda x, y: rk.robust_loss(x, y, weight=torch.ones(5, device="meta")), ValueError, "weight is on meta"),
    (lambda x, y: rk.robust_loss(x, y, weight=[1.0] * 5), TypeError, "weight must be a Tensor or None"),
    (lambda x, y: rk.robust_loss(x, y, label_smoothing=1.5), ValueError, "label_smoothing must be between 0.0 and 1.0"),
    (lambda x, y: rk.robust_loss(x, y, label_smoothing=-0.1), ValueError, "label_smoothing must be between"),
    (lambda x, y: rk.robust_loss(x, y, label_smoothing=math.nan), ValueError, "label_smoothing must be between"),
    (lambda x, y: rk.robust_loss(x, y, label_smoothing="0.1"), TypeError, "label_smoothing must be a float"),
    (lambda x, y: rk.robust_loss(x, y, "nfl", label_smoothing=0.1), ValueError, "loss 'nfl': probability targets"),
    (lambda x, y: rk.robust_loss(x, x.softmax(1), "bitemp"), ValueError, "which bitemp does not have"),
    (lambda x, y: rk.robust_loss(x, x.softmax(1), "ngce_mae"), ValueError, "which ngce does not have"),
    (lambda x, y: rk.robust_loss(x.view(3, 2, 5).transpose(1, 2), y.view(3, 2)[:, :1]), ValueError, r"shape \(3, 2\)"),
    (
        lambda x, y: rk.robust_loss(x.view(3, 2, 5).transpose(1, 2), y.view(3, 2), epsilon=torch.ones(6)),
        ValueError,
        r"row shape \(3, 2\)",
    ),
    (lambda x, y: rk.robust_loss(x, y.to("meta")), ValueError, "same device"),
    (lambda x, y: rk.robust_loss(x, y, "mse"), ValueError, "unknown loss 'mse'"),
    (lambda x, y: rk.robust_loss(x, y, 3), TypeError, "loss must be a str"),
    (lambda x, y: rk.robust_loss(x, y, "gce", q=2.0), ValueError, "'q'"),
    (lambda x, y: rk.robust_loss(x, y, "gce", qq=0.5), TypeError, "unknown parameter"),
    (lambda x, y: rk.robust_loss(x, y, "gce", q=torch.tensor(0.5)), TypeError, "'q' must be a Python number"),
    (lambda x, y: rk.robust_loss(x, y, reduction="avg"), ValueError, "reduction"),
    (lambda x, y: rk.robust_loss(x, y, ignore_index=1.0), TypeError, "ignore_index"),
    (lambda x, y: rk.robust_loss(x, y, backend="cuda"), ValueError, "backend must be one of"),
    (lambda x, y: rk.robust_loss(x, y, backend=None), TypeError, "backend must be a str"),
    (lambda x, y: rk.robust_loss(x, y, epsilon="big"), ValueError, "epsilon"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=math.inf), ValueError, "epsilon must be finite"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=[1.0]), TypeError, "epsilon"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=torch.tensor(1.0)), ValueError, "epsilon"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=torch.ones(3)), ValueError, "epsilon must be"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=torch.ones(6, dtype=torch.int64)), TypeError, "epsilon"),
    (lambda x, y: rk.robust_loss(x, y, epsilon=torch.ones(6, device="meta")), ValueError, "epsilon is on"),
    (lambda x, y: rk.robust_loss(x, torch.full_like(y, 5)), ValueError, r"target: 6 label\(s\) outside \[0, 5\)"),
    (lambda x, y: rk.robust_loss(x, torch.full_like(y, -1)), ValueError, "first at row 0: -1"),
]


@pytest.mark.parametrize("call, exc, text", BAD_CALLS)
def test_bad_input(call, exc, text):
    x, y = _data()
    with pytest.raises(exc, match=text):
        call(x, y)


def test_bad_params_in_modules_raise_at_construction():
    with pytest.raises(ValueError, match="'a'"):
        rk.AULLoss(a=0.5)
    with pytest.raises(TypeError, match="unknown parameter"):
        rk.MAELoss(q=1.0)
    with pytest.raises(ValueError, match="reduction"):
        rk.RobustLoss("ce", reduction="batchmean")


def test_unavailable_backend_says_why():
    x, y = _data()
    for name in ("triton", "native"):
        reason = rk.backends.unavailable_reason(name, x.device)
        if reason is None:
            continue
        with pytest.raises(RuntimeError, match=f"backend='{name}' is unavailable on cpu"):
            rk.robust_loss(x, y, backend=name)


def test_auto_backend_on_cpu_is_available_one():
    name, _ = rk.backends.resolve_backend("auto", torch.device("cpu"))
    assert name in rk.available_backends("cpu")
    assert "torch" in rk.available_backends("cpu")


# ---- reductions and ignore_index --------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_ce_matches_f_cross_entropy(reduction):
    x, y = _data(12, 7, torch.float64)
    y[[1, 4, 5]] = -100
    y[7] = 3
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    got = rk.robust_loss(xa, y, "ce", reduction=reduction, backend="torch")
    want = F.cross_entropy(xb, y, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    upstream = torch.rand_like(got)
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-12, atol=1e-12)


def test_custom_ignore_index_and_all_ignored():
    x, y = _data(4, 5, torch.float64)
    y[:] = 7
    y[0] = 2
    got = rk.robust_loss(x, y, "ce", ignore_index=7, backend="torch")
    torch.testing.assert_close(got, F.cross_entropy(x, y, ignore_index=7))
    y[0] = 7
    assert math.isnan(rk.robust_loss(x, y, "mae", ignore_index=7, backend="torch"))
    assert math.isnan(F.cross_entropy(x, y, ignore_index=7))  # same convention


def test_ignored_rows_with_garbage_give_zero_gradient():
    x, y = _data(4, 5, torch.float64)
    x[1] = math.nan
    x[2, 0] = math.inf
    y[1] = y[2] = -100
    for name in rk.LOSSES:
        xg = x.clone().requires_grad_()
        loss = rk.robust_loss(xg, y, name, epsilon=1.0, backend="torch")
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.equal(xg.grad[1:3], torch.zeros_like(xg.grad[1:3])), name


def test_mean_is_sum_over_non_ignored_rows():
    x, y = _data(8, 6, torch.float64)
    y[::2] = -100
    for name in rk.LOSSES:
        s = rk.robust_loss(x, y, name, reduction="sum", backend="torch")
        m = rk.robust_loss(x, y, name, reduction="mean", backend="torch")
        torch.testing.assert_close(m, s / 4, rtol=1e-12, atol=1e-12)


def test_output_dtype():
    for dtype, out in [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
    ]:
        x, y = _data(dtype=dtype)
        assert rk.robust_loss(x, y, backend="torch").dtype == out


def test_int32_and_uint8_targets():
    x, y = _data(dtype=torch.float64)
    ref = rk.robust_loss(x, y, "gce", backend="torch")
    torch.testing.assert_close(rk.robust_loss(x, y.int(), "gce", backend="torch"), ref)
    torch.testing.assert_close(rk.robust_loss(x, y.to(torch.uint8), "gce", backend="torch"), ref)


def test_non_contiguous_logits():
    base = torch.randn(10, 14, dtype=torch.float64)
    x = base[::2, ::2]  # strided in both dims
    y = torch.randint(0, 7, (5,))
    assert not x.is_contiguous()
    for name in rk.LOSSES:
        torch.testing.assert_close(
            rk.robust_loss(x, y, name, epsilon=0.5, backend="torch"),
            rk.robust_loss(x.contiguous(), y, name, epsilon=0.5, backend="torch"),
        )


def test_empty_batch():
    x = torch.empty(0, 5, requires_grad=True)
    y = torch.empty(0, dtype=torch.long)
    assert rk.robust_loss(x, y, reduction="sum", backend="torch").item() == 0.0
    assert rk.robust_loss(x, y, reduction="none", backend="torch").shape == (0,)


# ---- epsilon ------------------------------------------------------------------------------


def test_epsilon_auto_uses_eq4_value():
    x, y = _data(6, 100, torch.float64)
    eps = calibration.epsilon_for_classes(100)
    torch.testing.assert_close(
        rk.robust_loss(x, y, "mae", epsilon="auto", backend="torch"),
        rk.robust_loss(x, y, "mae", epsilon=eps, backend="torch"),
    )


def test_epsilon_tensor_gets_gradient():
    x, y = _data(6, 9, torch.float64)
    eps = torch.rand(6, dtype=torch.float64, requires_grad=True)
    rk.robust_loss(x, y, "gce", epsilon=eps, backend="torch").backward()
    assert eps.grad is not None and torch.isfinite(eps.grad).all() and (eps.grad != 0).all()


def test_epsilon_is_a_shift_of_the_label_logit_only():
    x, y = _data(6, 9, torch.float64)
    eps = torch.linspace(-1, 3, 6, dtype=torch.float64)
    shifted = x.clone()
    shifted[torch.arange(6), y] += eps
    for name in rk.LOSSES:
        torch.testing.assert_close(
            rk.robust_loss(x, y, name, epsilon=eps, reduction="none", backend="torch"),
            rk.robust_loss(shifted, y, name, reduction="none", backend="torch"),
        )


# ---- compile ------------------------------------------------------------------------------


def test_torch_compile_fullgraph_torch_backend():
    model = torch.nn.Linear(8, 10)
    crit = rk.NCEAGCELoss(epsilon="auto", backend="torch")

    def step(inp, tgt):
        return crit(model(inp), tgt)

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    inp, tgt = torch.randn(4, 8), torch.randint(0, 10, (4,))
    torch.testing.assert_close(compiled(inp, tgt), step(inp, tgt))
