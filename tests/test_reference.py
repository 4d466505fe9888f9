"""The torch backend against closed forms, an independent NumPy implementation and gradcheck."""

import math

import independent
import numpy as np
import pytest
import torch

import robustkernels as rk
from robustkernels import reference

LOSS_NAMES = list(rk.LOSSES)


def _inputs(n, k, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


def _eps_cases(n):
    g = torch.Generator().manual_seed(123)
    return {"0": 0.0, "1.7": 1.7, "per-row": torch.rand(n, generator=g, dtype=torch.float64) * 4 - 1}


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("k", [13, 1000])
@pytest.mark.parametrize("eps_case", ["0", "1.7", "per-row"])
def test_matches_independent_float64(name, k, eps_case):
    """All 16 losses agree with an independent implementation to 1e-9 (values, grads)."""
    n = 16
    logits, target = _inputs(n, k, seed=k)
    eps = _eps_cases(n)[eps_case]
    spec = rk.get_spec(name)
    x = logits.clone().requires_grad_()
    rows = rk.robust_loss(x, target, name, epsilon=eps, reduction="none", backend="torch")
    upstream = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (rows * upstream).sum().backward()
    eps_np = eps.numpy() if isinstance(eps, torch.Tensor) else eps
    want_loss, want_grad = independent.loss_and_grad(name, spec.defaults, logits.numpy(), target.numpy(), eps_np)
    np.testing.assert_allclose(rows.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), want_grad * upstream.numpy()[:, None], rtol=1e-9, atol=1e-12)


OTHER_PARAMS = independent.NON_DEFAULT_PARAMS


@pytest.mark.parametrize("name", list(OTHER_PARAMS))
def test_matches_independent_other_params(name):
    logits, target = _inputs(12, 29, seed=3)
    spec = rk.get_spec(name)
    prm = {**spec.defaults, **OTHER_PARAMS[name]}
    x = logits.clone().requires_grad_()
    rows = rk.robust_loss(x, target, name, epsilon=0.9, reduction="none", backend="torch", **OTHER_PARAMS[name])
    rows.sum().backward()
    want_loss, want_grad = independent.loss_and_grad(name, prm, logits.numpy(), target.numpy(), 0.9)
    np.testing.assert_allclose(rows.detach().numpy(), want_loss, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-8, atol=1e-12)


def test_closed_forms_on_tiny_input():
    """Hand-derived values at z = 0 (p_y = 1/K) and with a bias (p_y = e^eps / (e^eps + K - 1))."""
    K = 4
    z = torch.zeros(1, K, dtype=torch.float64)
    y = torch.tensor([2])

    def L(name, eps=0.0, **prm):
        return float(rk.robust_loss(z, y, name, epsilon=eps, backend="torch", **prm))

    p = 0.25
    assert L("ce") == pytest.approx(math.log(4), abs=1e-15)
    assert L("mae") == pytest.approx(2 * (1 - p), abs=1e-15)
    assert L("gce") == pytest.approx((1 - p**0.7) / 0.7, abs=1e-15)
    assert L("agce") == pytest.approx((1.6**0.6 - 0.85**0.6) / 0.6, abs=1e-15)
    assert L("aul") == pytest.approx((5.25**3 - 4.5**3) / 3, abs=1e-12)
    assert L("ael") == pytest.approx(math.exp(-p / 2.5), abs=1e-15)
    assert L("nce") == pytest.approx(0.25, abs=1e-15)  # uniform p: every log p_k is equal
    assert L("focal") == pytest.approx(0.75**0.5 * math.log(4), abs=1e-15)
    assert L("nfl") == pytest.approx(0.25, abs=1e-15)
    assert L("rce") == pytest.approx(-math.log(1e-4) * 0.75, abs=1e-12)
    assert L("sce") == pytest.approx(0.1 * math.log(4) - math.log(1e-4) * 0.75, abs=1e-12)
    assert L("nce_mae") == pytest.approx(0.25 + 0.75, abs=1e-15)
    assert L("nce_agce") == pytest.approx(0.25 + 4 * (7**1.5 - 6.25**1.5) / 1.5, abs=1e-12)
    # bitemp at z = 0: every tempered probability is 1/K whatever t2 (by symmetry).
    t1 = 0.8
    log_t1 = (p ** (1 - t1) - 1) / (1 - t1)
    assert L("bitemp", t2=1.0) == pytest.approx(-log_t1 - (1 - K * p ** (2 - t1)) / (2 - t1), abs=1e-12)
    assert L("bitemp", t2=0.7) == pytest.approx(-log_t1 - (1 - K * p ** (2 - t1)) / (2 - t1), abs=1e-12)
    eps = 1.3
    pb = math.exp(eps) / (math.exp(eps) + 3)
    assert L("mae", eps) == pytest.approx(2 * (1 - pb), abs=1e-15)
    assert L("ce", eps) == pytest.approx(-math.log(pb), abs=1e-15)


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("eps_case", ["0", "1.7", "per-row"])
def test_gradcheck(name, eps_case):
    logits, target = _inputs(5, 7, seed=11, scale=1.0)
    eps = _eps_cases(5)[eps_case]
    inputs = [logits.clone().requires_grad_()]
    if isinstance(eps, torch.Tensor):
        inputs.append(eps.clone().requires_grad_())

    # bitemp's implicit gradient is exact for a converged normalisation (5 fixed-point steps
    # are not): converge it for the finite-difference comparison.
    prm = {"num_iters": 200} if name == "bitemp" else {}

    def f(x, *e):
        return rk.robust_loss(x, target, name, epsilon=e[0] if e else eps, reduction="none", backend="torch", **prm)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_bitemp_t2_below_one_gradcheck_with_zero_probabilities():
    """t2 < 1 has finite support: far-below logits get p = 0 and must not produce NaN."""
    logits = torch.tensor([[3.0, 0.0, -9.0, 1.0], [0.5, -7.0, 2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 2])
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: rk.robust_loss(x, target, "bitemp", t1=0.5, t2=0.5, reduction="none", backend="torch"),
        [x],
        eps=1e-6,
        atol=1e-7,
    )
    p = reference.tempered_softmax(logits, 0.5)
    assert (p == 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_low_precision_against_float64_same_quantised_inputs(name, dtype):
    logits, target = _inputs(32, 50, seed=5, scale=3.0)
    q = logits.to(dtype)
    x = q.clone().requires_grad_()
    out = rk.robust_loss(x, target, name, epsilon=1.7, reduction="none", backend="torch")
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == dtype
    x64 = q.double().requires_grad_()
    ref = rk.robust_loss(x64, target, name, epsilon=1.7, reduction="none", backend="torch")
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    # the gradient is rounded once to the input dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=tol, atol=tol * x64.grad.abs().max().item())


def test_one_minus_p_does_not_cancel():
    """p_y -> 1: 1 - p_y must keep its relative accuracy (formed with expm1 in log space)."""
    logits = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float32)
    target = torch.tensor([0])
    one_minus_p = 2 * math.exp(-30.0)  # 1 - p_y to first order
    mae = rk.robust_loss(logits, target, "mae", scale=1.0, backend="torch")
    assert float(mae) == pytest.approx(one_minus_p, rel=1e-5)
    gce = rk.robust_loss(logits, target, "gce", q=0.5, backend="torch")
    assert float(gce) == pytest.approx(one_minus_p, rel=1e-5)  # (1 - p^q)/q ~ 1 - p
    x = logits.clone().requires_grad_()
    rk.robust_loss(x, target, "mae", scale=1.0, backend="torch").backward()
    # d/dz_0 of (1 - p_0) = -p_0 (1 - p_0)
    assert float(x.grad[0, 0]) == pytest.approx(-one_minus_p, rel=1e-5)


@pytest.mark.parametrize("name", [n for n in rk.LOSSES if n != "bitemp"])
def test_float32_confident_rows_match_float64(name):
    """The label holds the max, 1 - p_y from 1e-2 down to 1e-9: float32 log p_y must not round
    log(1 + s) (2.4e-4 relative error in 1 - p_y at 1e-4, measured before the fix)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(8, 37, generator=gen)
    target = torch.randint(0, 37, (8,), generator=gen)
    z[torch.arange(8), target] = z.amax(dim=1) + torch.linspace(6.0, 22.0, 8)
    rows, grads = [], []
    for dtype in (torch.float32, torch.float64):
        x = z.to(dtype, copy=True).requires_grad_()
        r = rk.robust_loss(x, target, name, epsilon=0.25, reduction="none", backend="torch")
        r.sum().backward()
        rows.append(r.detach().double())
        grads.append(x.grad.double())
    assert ((rows[0] - rows[1]).abs() <= 2e-5 * rows[1].abs()).all(), (rows[0] - rows[1]) / rows[1]
    err = (grads[0] - grads[1]).abs().amax(dim=1)
    assert (err <= 2e-5 * grads[1].abs().amax(dim=1)).all(), err


def test_extreme_logits_are_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 2.0, 0.0]], dtype=torch.bfloat16)
    target = torch.tensor([0, 0])
    for name in LOSS_NAMES:
        x = logits.clone().requires_grad_()
        rows = rk.robust_loss(x, target, name, reduction="none", backend="torch")
        rows.sum().backward()
        if name in ("ce", "focal", "sce"):  # unbounded: -log p_y = 2e4 is the right answer
            assert torch.isfinite(rows).all(), name
        assert torch.isfinite(x.grad).all(), name


def test_neg_inf_logit_at_non_label():
    logits = torch.tensor([[1.0, -math.inf, 0.5, 0.0]], dtype=torch.float64)
    target = torch.tensor([0])
    finite = logits.clone()
    finite[0, 1] = -1e300  # numerically the same distribution
    for name in ["ce", "mae", "gce", "agce", "aul", "ael", "focal", "rce", "sce", "bitemp"]:
        x = logits.clone().requires_grad_()
        out = rk.robust_loss(x, target, name, epsilon=1.0, backend="torch")
        out.backward()
        ref = rk.robust_loss(finite, target, name, epsilon=1.0, backend="torch")
        assert torch.isfinite(out) and float(out.detach()) == pytest.approx(float(ref), rel=1e-12), name
        assert torch.isfinite(x.grad).all() and float(x.grad[0, 1]) == 0.0, name
    # normalised losses: the -inf class makes the normaliser infinite, the loss tends to 0
    for name in ["nce", "nfl"]:
        x = logits.clone().requires_grad_()
        out = rk.robust_loss(x, target, name, backend="torch")
        out.backward()
        assert float(out.detach()) == 0.0 and torch.equal(x.grad, torch.zeros_like(x.grad)), name


def test_all_neg_inf_and_nan_rows_are_nan():
    logits = torch.tensor([[-math.inf] * 3, [0.0, math.nan, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float32)
    target = torch.tensor([0, 0, 1])
    for name in LOSS_NAMES:
        rows = rk.robust_loss(logits, target, name, reduction="none", backend="torch")
        assert torch.isnan(rows[:2]).all(), name
        assert torch.isfinite(rows[2]), name


def test_bitemp_t_equal_one_is_cross_entropy():
    logits, target = _inputs(6, 9)
    a = rk.robust_loss(logits, target, "bitemp", t1=1.0, t2=1.0, epsilon=0.4, reduction="none", backend="torch")
    b = rk.robust_loss(logits, target, "ce", epsilon=0.4, reduction="none", backend="torch")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---- Google's published test vectors (google/bi-tempered-loss tensorflow/loss_test.py) --------

_G_LOGITS = np.array([[-0.5, 0.1, 2.0], [0.1, 1.5, -5.0], [4.0, -3.0, -6.0]])
_G_LABELS = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.2, 0.8, 0.0]])


def test_google_vectors_through_soft_label_helper():
    np.testing.assert_allclose(
        independent.bitemp_soft(_G_LOGITS, _G_LABELS, 0.5, 1.5), [0.02301914, 0.18972909, 0.93874922], atol=1e-6
    )
    np.testing.assert_allclose(
        independent.bitemp_soft(_G_LOGITS, _G_LABELS, 0.5, 0.8, num_iters=20),
        [0.21646356, 0.41836615, 1.33997854],
        atol=1e-6,
    )
    onehot = np.eye(3)[[0, 1, 2]]
    # This vector was generated with 10 fixed-point iterations (with 5 the first entry is 3.6e-6 off).
    np.testing.assert_allclose(
        independent.bitemp_soft(_G_LOGITS, onehot, 0.5, 1.5, num_iters=10, label_smoothing=0.1),
        [0.76652711, 0.08627685, 1.35443510],
        atol=1e-6,
    )
    sweep = [
        independent.bitemp_soft(np.array([[-0.5, 0.1, 2.0]]), np.array([[0.2, 0.5, 0.3]]), t1, t2)[0]
        for t1, t2 in [(0.9, 1.1), (0.8, 1.2), (0.7, 1.3)]
    ]
    np.testing.assert_allclose(sweep, [0.45677936, 0.34298314, 0.26295574], atol=1e-6)


def test_tempered_softmax_google_vector():
    p = reference.tempered_softmax(torch.tensor(_G_LOGITS[:1]), 4.0)
    np.testing.assert_allclose(p.numpy()[0], [0.3205458, 0.32714278, 0.3523402], atol=1e-6)


@pytest.mark.parametrize("t1, t2", [(0.5, 1.5), (0.8, 1.2), (0.5, 0.8), (1.0, 1.5), (0.5, 1.0)])
def test_bitemp_one_hot_equals_soft_label_helper(t1, t2):
    """Our one-hot bitemp is Google's soft-label loss at a one-hot label (the 1e-10 label floor
    of Google's code contributes O(1e-10))."""
    logits, target = _inputs(8, 11, seed=2)
    iters = 5 if t2 > 1 else 200
    want = independent.bitemp_soft(logits.numpy(), np.eye(11)[target.numpy()], t1, t2, num_iters=iters)
    got = rk.robust_loss(logits, target, "bitemp", t1=t1, t2=t2, reduction="none", backend="torch")
    np.testing.assert_allclose(got.numpy(), want, atol=1e-8)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_float32_gradient_survives_a_tiny_label_probability(name):
    """p_y ~ 4e-8 (a confidently wrong row): the float32 gradient must match float64, not
    vanish. autograd's expm1 backward rebuilds p_y from expm1(log p_y) + 1, which is 0 in
    float32 here (found by the bfloat16 property test)."""
    z = torch.tensor(
        [[-25.99, -4.20, -11.93, -8.18, -0.2246, 2.37, 1.99, -9.34, 2.69, 8.25,
          -14.87, -17.95, -7.73, 16.74, -5.04, -10.02, 7.59, 11.78, 1.74]],
        dtype=torch.float64,
    )  # fmt: skip
    y = torch.tensor([4])
    grads = []
    for dtype in (torch.float32, torch.float64):
        x = z.clone().to(dtype).requires_grad_()
        rk.robust_loss(x, y, name, backend="torch").backward()
        grads.append(x.grad.double())
    scale = grads[1].abs().max()
    assert scale > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * scale
