"""The native soft_loss_forward op (class weights, label smoothing, probability targets) against a
float64 brute force through the integer-label torch backend:

    row loss = sum_k u_k L(z + eps e_k, k),   u the class coefficients of docs/drop-in.md,

with its autograd gradient. The reference runs on the kernel's inputs rounded to their dtype and
cast to float64, so tolerances reflect fp32 arithmetic only.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import robustkernels as rk
from robustkernels import _torch_backend, native
from robustkernels.specs import PRIMITIVES, get_spec

pytestmark = pytest.mark.skipif(
    native.unavailable_reason(torch.device("cpu")) is not None,
    reason=f"native backend unavailable: {native.unavailable_reason(torch.device('cpu'))}",
)

OPS = torch.ops.robustkernels
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
SOFT_LOSSES = [name for name, spec in rk.LOSSES.items() if spec.soft_targets]
HARD_ONLY = [name for name, spec in rk.LOSSES.items() if not spec.soft_targets]
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-5}


def _logits(n, k, dtype=torch.float64, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)


def _probabilities(n, k, seed=1, zeros=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, k, generator=g, dtype=torch.float64)
    if zeros:
        t = t * (torch.rand(n, k, generator=g) > 0.4)  # classes with t_k = 0
    return t / t.sum(1, keepdim=True).clamp_min(1e-12) * 0.9  # rows need not sum to 1


def _labels(n, k, seed=2):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def _weight(k, dtype=torch.float64, seed=3):
    return (torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.25).to(dtype)


def _coefficients(target, k, weight, alpha, ignore_index):
    """u [N, K] (float64) and the mean's denominator, as docs/drop-in.md's table."""
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    if target.is_floating_point():
        return w * ((1 - alpha) * target.double() + alpha / k), float(target.shape[0])
    y = target.long()
    ignored = y == ignore_index
    ys = y.masked_fill(ignored, 0)
    u = (alpha / k) * w.expand(len(y), k).clone()
    u[torch.arange(len(y)), ys] += (1 - alpha) * w[ys]
    u[ignored] = 0
    return u, w[ys][~ignored].sum().item()


def _brute(z, target, loss, eps=0.0, weight=None, alpha=0.0, ignore_index=-100, reduction="none", upstream=None):
    """Loss and d(loss . upstream)/dz in float64 through the integer-label torch backend."""
    n, k = z.shape
    z64 = z.detach().double().requires_grad_()
    eps64 = eps.double() if isinstance(eps, torch.Tensor) else eps
    u, denominator = _coefficients(target, k, weight, alpha, ignore_index)
    per_class = torch.stack(
        [
            rk.robust_loss(
                z64, torch.full((n,), c), loss, epsilon=eps64, reduction="none", backend="torch", ignore_index=-1
            )
            for c in range(k)
        ],
        1,
    )
    rows = torch.where(u != 0, u * per_class, 0.0).sum(1)
    out = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denominator}[reduction]
    g = torch.ones_like(out) if upstream is None else upstream.double()
    (grad,) = torch.autograd.grad((out * g).sum(), z64)
    return out.detach(), grad


def _native(z, target, loss, eps=0.0, weight=None, alpha=0.0, ignore_index=-100, reduction="none", upstream=None):
    """Loss and d(loss . upstream)/dz of the native backend (autograd through the op)."""
    spec = get_spec(loss)
    x = z.detach().clone().requires_grad_()
    out = native.robust_loss(x, target, spec, spec.resolve({}), eps, reduction, ignore_index, weight, alpha)
    g = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (out * g).sum().backward()
    return out.detach(), x.grad


def _assert_close(got, want, tol):
    for a, b in zip(got, want):
        b = b.to(a.dtype) if a.dtype == torch.float64 else b
        scale = b.abs().max().clamp_min(1.0).item() if b.numel() else 1.0
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * scale, equal_nan=True)


def _op(z, target, loss, eps=0.0, eps_rows=None, weight=None, alpha=0.0, reduction=0, grad=True, ignore_index=-100):
    spec = get_spec(loss)
    terms, slots = spec.kernel_args(spec.resolve({}))
    return OPS.soft_loss_forward(z, target, eps_rows, weight, eps, terms, slots, ignore_index, alpha, reduction, grad)


# ---- agreement with the brute force -----------------------------------------------------------------


@pytest.mark.parametrize("loss", SOFT_LOSSES)
@pytest.mark.parametrize("eps", [0.0, 0.8])
def test_probability_target_every_soft_loss(loss, eps):
    z, t = _logits(5, 7), _probabilities(5, 7)
    up = torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    _assert_close(_native(z, t, loss, eps, upstream=up), _brute(z, t, loss, eps, upstream=up), TOL[torch.float64])


@pytest.mark.parametrize("loss", SOFT_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_smoothing_without_weight_every_soft_loss(loss, dtype):
    """Unweighted smoothing keeps no coefficient row: every class reads alpha / K and the label's
    1 - alpha is added on its own lane. Labels on the row's maximum and off it, in the SIMD body
    and in the tail (K = 37), an ignored and an invalid row, alpha = 1 (no label share)."""
    n, k = 7, 37
    z, y = _logits(n, k), _labels(n, k)
    z[0, y[0]] = z[0].max() + 4.0  # the label is j*
    z[1, 5] = z[1].max() + 12.0  # a confident row whose label is not j*
    y[1], y[2], y[3] = 3, k - 1, -100
    rows = torch.linspace(-1.0, 2.0, n, dtype=torch.float64)
    for alpha, eps in ((0.3, 0.0), (0.3, 0.8), (1.0, 0.8), (0.1, rows)):
        got = _native(z.to(dtype), y, loss, eps, alpha=alpha, reduction="none")
        want = _brute(z.to(dtype), y, loss, eps, alpha=alpha, reduction="none")
        _assert_close(got, want, TOL[dtype])
        assert got[1][3].abs().max() == 0  # the ignored row
    bad = y.clone()
    bad[4] = k
    with pytest.raises(ValueError, match="target"):
        rk.robust_loss(z.to(dtype), bad, loss, epsilon=0.8, label_smoothing=0.3, backend="native")


@pytest.mark.parametrize("loss", ["ce", "gce", "nce_mae", "focal", "agce", "aul"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_label_smoothing_with_weight_and_ignore_index(loss, reduction):
    z, y = _logits(6, 9), _labels(6, 9)
    y[2] = -100
    w = _weight(9)
    eps = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64)
    got = _native(z, y, loss, eps, weight=w, alpha=0.3, reduction=reduction)
    _assert_close(got, _brute(z, y, loss, eps, weight=w, alpha=0.3, reduction=reduction), TOL[torch.float64])
    assert got[1][2].abs().max() == 0  # the ignored row


@pytest.mark.parametrize("loss", ["mae", "nce_rce", "sce"])
def test_probability_target_weight_per_row_eps_mean(loss):
    z, t, w = _logits(6, 8), _probabilities(6, 8), _weight(8)
    eps = torch.linspace(-0.5, 3.0, 6, dtype=torch.float64)
    for alpha in (0.0, 0.25, 1.0):
        got = _native(z, t, loss, eps, weight=w, alpha=alpha, reduction="mean")
        _assert_close(got, _brute(z, t, loss, eps, weight=w, alpha=alpha, reduction="mean"), TOL[torch.float64])


@pytest.mark.parametrize("loss", ["bitemp", "nfl", "ngce", "ngce_mae", "nfl_nce", "gce", "nce"])
def test_integer_target_with_weight_every_loss(loss):
    """alpha = 0: the integer-label row scaled by w_y; mean divides by sum w_y."""
    z, y, w = _logits(7, 6), _labels(7, 6), _weight(6)
    y[3] = -100
    spec = get_spec(loss)
    for reduction in ("none", "mean", "sum"):
        x = z.clone().requires_grad_()
        got = native.robust_loss(x, y, spec, spec.resolve({}), 0.4, reduction, -100, w, 0.0)
        got.sum().backward()
        r = z.clone().requires_grad_()
        rows = rk.robust_loss(r, y, loss, epsilon=0.4, reduction="none", backend="torch")
        ys = y.masked_fill(y == -100, 0)
        wy = torch.where(y == -100, 0.0, w[ys])
        want = {"none": wy * rows, "sum": (wy * rows).sum(), "mean": (wy * rows).sum() / wy.sum()}[reduction]
        want.sum().backward()
        _assert_close((got.detach(), x.grad), (want.detach(), r.grad), 1e-9)


@pytest.mark.parametrize("loss", ["ce", "mae", "gce", "nce_agce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduced_precision(loss, dtype):
    z, t = _logits(8, 37, dtype), _probabilities(8, 37).to(dtype)  # odd K, a vector tail
    up = torch.randn(8, generator=torch.Generator().manual_seed(4))
    got = _native(z, t, loss, 1.3, upstream=up)
    want = _brute(z.double(), t.double(), loss, 1.3, upstream=up)
    tol = TOL[dtype] if dtype == torch.float32 else 1e-2  # the bf16 gradient is rounded once more
    _assert_close((got[0], got[1].double()), want, tol)
    assert got[1].dtype == dtype and got[0].dtype == torch.float32


@pytest.mark.parametrize("loss", ["ce", "mae", "gce", "agce", "rce", "nce_mae", "focal"])
@pytest.mark.parametrize("eps", [0.5, 1.0, 5.0, 16.0])
def test_float32_many_classes_small_and_large_biased_probabilities(loss, eps):
    # K = 301 at logit scale 1: x_k = (e^eps - 1) a_k stays below 1/16 in most vectors at eps <= 1
    # (the series branches of the AVX2 log1p, 1 / (1 + x) and expm1) and not at eps = 5, where
    # the full functions run; one peaked row mixes both within a row. At eps = 16 most q_k are
    # near 1, where log q is small: the loss is 1e-5 of what it is at eps = 0, and log q of the
    # rounded q would keep only the rounding's absolute error of it.
    z = _logits(6, 301, torch.float32, scale=1.0)
    z[0, 17] += 9.0
    t, y = _probabilities(6, 301).float(), _labels(6, 301)
    up = torch.randn(6, generator=torch.Generator().manual_seed(5))
    for target, alpha in ((t, 0.0), (y, 0.1)):
        got = _native(z, target, loss, eps, alpha=alpha, upstream=up)
        want = _brute(z.double(), target, loss, eps, alpha=alpha, upstream=up)
        _assert_close(got, want, TOL[torch.float32])
        # Relative to each row's own loss, however small: _assert_close's absolute floor of
        # 2e-5 would pass a loss of 1e-5 that is 100 % off.
        torch.testing.assert_close(got[0].double(), want[0], rtol=TOL[torch.float32], atol=0)


@pytest.mark.parametrize("loss", ["mae", "rce", "agce", "ce", "gce", "nce_mae"])
def test_float32_large_negative_eps_on_a_confident_row(loss):
    """At eps << 0 the likeliest class's 1 + x = 1 - (1 - e^eps) a cancels as a -> 1 (to 0 or
    below at eps = -19: an infinite loss); (1 - a) + e^eps a does not. Rows of 3 to 31 classes,
    one confident, with label smoothing and a probability target."""
    for k in (3, 31):
        z = _logits(4, k, torch.float32, scale=3.0)
        z[0, 0] += 12.0
        z[1, 1] += 6.0
        y, t = _labels(4, k), _probabilities(4, k).float()
        up = torch.randn(4, generator=torch.Generator().manual_seed(5))
        for eps in (-12.0, -19.0):
            for target, alpha in ((y, 0.1), (t, 0.0), (t, 1.0)):
                got = _native(z, target, loss, eps, alpha=alpha, upstream=up)
                want = _brute(z.double(), target, loss, eps, alpha=alpha, upstream=up)
                _assert_close(got, want, TOL[torch.float32])
                torch.testing.assert_close(got[0].double(), want[0], rtol=TOL[torch.float32], atol=0)


@pytest.mark.parametrize("k", [2, 3, 64])
def test_float32_focal_of_classes_biased_to_certainty(k):
    """A class biased to q_k = 1 in float32 (logit scale 10, eps = 5.358 and 19.5): log q of the
    rounded q can come out >= 0, which makes 1 - q = -expm1(log q) negative and focal's
    (1 - q)^gamma NaN; log q must be -log1p((1 - q) / q) there."""
    z = _logits(5, k, torch.float32, scale=10.0)
    y, t = _labels(5, k), _probabilities(5, k).float()
    for eps in (5.358, 19.5):
        for target, alpha in ((y, 0.5), (t, 0.0)):
            got = _native(z, target, "focal", eps, alpha=alpha)
            want = _brute(z.double(), target, "focal", eps, alpha=alpha)
            _assert_close(got, want, TOL[torch.float32])
            torch.testing.assert_close(got[0].double(), want[0], rtol=TOL[torch.float32], atol=0)


@pytest.mark.parametrize("loss", ["nce", "nce_mae"])
def test_float32_nce_at_a_large_eps(loss):
    """nce's N_k = -log q_k with q_k near 1 (a large eps, few classes): log a + eps + log r
    cancels to its rounding, most of a row's loss (8x off at eps = 16, K = 2, in that form); it
    must be -log1p((1 - q) / q) there."""
    for k in (2, 31):
        z = _logits(4, k, torch.float32, scale=1.0)
        y, t = _labels(4, k), _probabilities(4, k).float()
        for eps in (8.0, 16.0):
            for target, alpha in ((y, 0.1), (t, 0.0)):
                got = _native(z, target, loss, eps, alpha=alpha)
                want = _brute(z.double(), target, loss, eps, alpha=alpha)
                _assert_close(got, want, TOL[torch.float32])
                torch.testing.assert_close(got[0].double(), want[0], rtol=TOL[torch.float32], atol=0)


def test_smoothed_ce_float32_biased_many_classes():
    """Unweighted smoothing of ce at eps != 0 sums the classes' log r_k (r_k = 1 / (1 + x_k)) as
    the log of a product of r_k, closed every 80 / |eps| vectors (every 4 at eps = -20). K = 1003
    crosses many such products and leaves a tail of 3; row 1's label is its maximum, row 2 is
    peaked. At eps = 10 and 16 the two parts of -log q_k cancel (q_k -> 1 in most classes: the
    loss is 1.4 % and 3e-5 of sum_k -log a_k) and the row takes the class pass with a log per
    class instead (the split form is 4e-3 off at eps = 16)."""
    n, k = 5, 1003
    z = _logits(n, k, torch.float32, scale=1.0)
    z[2, 17] += 9.0
    y = _labels(n, k)
    y[1] = z[1].argmax()
    up = torch.randn(n, generator=torch.Generator().manual_seed(5))
    rows = torch.tensor([5.358, 16.0, -20.0, 0.25, -3.0], dtype=torch.float64)
    for eps in (5.358, 0.25, -3.0, -20.0, 10.0, 16.0, rows):
        for alpha in (0.1, 1.0):
            got = _native(z, y, "ce", eps, alpha=alpha, upstream=up)
            want = _brute(z.double(), y, "ce", eps, alpha=alpha, upstream=up)
            _assert_close(got, want, TOL[torch.float32])
            torch.testing.assert_close(got[0].double(), want[0], rtol=TOL[torch.float32], atol=0)


@pytest.mark.parametrize("q", [0.125, 0.1, 0.7, 1.0])
def test_gce_float32_at_eps_zero_against_its_formula(q):
    """gce alone at eps = 0 (q >= 1/8) has a class pass without log or expm1: a_k^q = S^-q
    exp(q (z_k - m)), its loss (w / q) U + sum_k d_k / q. Against (1 - p^q) / q in float64 (the
    authors' form), with a row peaked on its label, one peaked off it, label smoothing and a
    probability target; q = 0.1 takes the class pass with expm1."""
    n, k = 6, 301
    z = _logits(n, k, torch.float32, scale=2.0)
    z[0, 3] += 20.0
    z[1, 7] += 20.0
    y = _labels(n, k)
    y[0] = 3
    t = _probabilities(n, k).float()
    up = torch.randn(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for target, alpha in ((y, 0.1), (t, 0.0), (t, 0.3)):
        x = z.clone().requires_grad_()
        got = rk.robust_loss(x, target, "gce", q=q, label_smoothing=alpha, reduction="none", backend="native")
        (got * up.float()).sum().backward()
        z64 = z.double().requires_grad_()
        u, _ = _coefficients(target, k, None, alpha, -100)
        want = (u * (1 - torch.softmax(z64, 1) ** q) / q).sum(1)
        (grad,) = torch.autograd.grad((want * up).sum(), z64)
        _assert_close((got.detach(), x.grad), (want.detach(), grad), TOL[torch.float32])


AFFINE_LOSSES = [
    name
    for name, spec in rk.LOSSES.items()
    if spec.soft_targets and all(PRIMITIVES[t.primitive].affine for t in spec.terms)
]


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("loss", AFFINE_LOSSES)
def test_affine_losses_many_classes(loss, eps):
    # A loss of affine terms alone takes the kernels' own passes (at eps = 0 a closed form with
    # no class pass): float32, K = 301 (a vector tail), class weights, a peaked row (a_{j*} -> 1,
    # where the loss must not cancel), a -inf logit with and without target mass, random upstream.
    assert AFFINE_LOSSES, "no loss of affine terms alone"
    z = _logits(6, 301, torch.float32, scale=1.0)
    z[0, 17] += 30.0
    z[1, 5] = -float("inf")
    t, y, w = _probabilities(6, 301).float(), _labels(6, 301), _weight(301, torch.float32)
    t[0] = 0.0
    t[0, 17] = 1.0
    up = torch.randn(6, generator=torch.Generator().manual_seed(5))
    for target, alpha, weight in ((t, 0.0, None), (t, 0.2, w), (y, 0.1, None), (y, 0.1, w)):
        got = _native(z, target, loss, eps, weight=weight, alpha=alpha, upstream=up)
        want = _brute(z.double(), target, loss, eps, weight=weight, alpha=alpha, upstream=up)
        _assert_close(got, want, TOL[torch.float32])
        assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    # The peaked one-hot row: loss ~ C (1 - q_17) ~ C K e^-30, kept to float32's relative precision.
    got = _native(z, t, loss, eps)[0][0].double()
    want = _brute(z.double(), t, loss, eps)[0][0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_ce_at_eps_zero_is_cross_entropy():
    z, t, w = _logits(6, 11), _probabilities(6, 11), _weight(11)
    y = _labels(6, 11)
    for target, alpha in ((t, 0.0), (t, 0.2), (y, 0.2)):
        x, r = z.clone().requires_grad_(), z.clone().requires_grad_()
        got = native.robust_loss(x, target, get_spec("ce"), (), 0.0, "mean", -100, w, alpha)
        want = torch.nn.functional.cross_entropy(r, target, weight=w, label_smoothing=alpha)
        got.backward(), want.backward()
        _assert_close((got.detach(), x.grad), (want.detach(), r.grad), 1e-12)


def test_one_hot_target_near_certainty_keeps_the_small_gradient():
    """The row's maximum carries the target: grad = p - 1 ~ -K e^-20, no cancellation in fp32."""
    z = _logits(4, 10, scale=1.0)
    y = _labels(4, 10)
    z[torch.arange(4), y] = 20.0
    t = torch.nn.functional.one_hot(y, 10).double()
    for loss in ("ce", "mae", "nce"):
        got = _native(z.float(), t.float(), loss)
        want = _brute(z, t, loss)
        g, wg = got[1][torch.arange(4), y].double(), want[1][torch.arange(4), y]
        torch.testing.assert_close(g, wg, rtol=1e-4, atol=0)


# ---- special rows ------------------------------------------------------------------------------------


def test_minus_inf_logits():
    z, t = _logits(4, 6), _probabilities(4, 6, zeros=False)
    z[0, 1] = -float("inf")
    t[0, 1] = 0.0  # no mass on the impossible class: finite, as the brute force
    for loss in ("ce", "mae", "gce", "nce_mae"):
        got, want = _native(z, t, loss, 0.5), _brute(z, t, loss, 0.5)
        _assert_close(got, want, 1e-9)
        assert torch.isfinite(got[1]).all()
    t[0, 1] = 0.2  # mass on it: ce is infinite there
    loss, grad = _native(z, t, "ce")
    assert loss[0] == float("inf") and torch.isfinite(loss[1:]).all() and torch.isfinite(grad).all()


@pytest.mark.parametrize("target", ["probabilities", "smoothed"])
def test_nan_rows(target):
    z = _logits(5, 7)
    t = _probabilities(5, 7) if target == "probabilities" else _labels(5, 7)
    z[1, 3] = float("nan")
    z[2, 0] = float("inf")
    z[3] = -float("inf")
    rows, grad = _op(z, t, "gce", 0.5, alpha=0.1)
    for i in (1, 2, 3):
        assert rows[i].isnan() and grad[i].isnan().all()
    assert torch.isfinite(rows[[0, 4]]).all() and torch.isfinite(grad[[0, 4]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("target", ["probabilities", "smoothed"])
def test_each_row_as_alone_next_to_nan_inf_and_ignored_rows(dtype, target):
    """A row's max comes from the previous row's exp pass: every row, before or after a NaN (in
    the SIMD body or the tail), an inf, a -inf or an ignored row, its max in the body or the tail,
    gets exactly what it gets alone."""
    n, k = 10, 37
    z = _logits(n, k).to(dtype)
    z[1, k - 2] = z[1].max() + 3.0  # the max in the tail
    z[2, 3] = float("nan")
    z[4, k - 1] = float("nan")
    z[6, 0] = float("inf")
    z[7] = -float("inf")
    z[9, 2] = z[9].max() + 3.0  # the max in the SIMD body
    if target == "probabilities":
        t = _probabilities(n, k).to(dtype)
    else:
        t = _labels(n, k)
        t[8] = -100
    for loss, eps in (("mae", 0.0), ("gce", 0.8), ("ce", 0.0)):
        rows, grad = _op(z, t, loss, eps, alpha=0.1)
        for i in range(n):
            alone_row, alone_grad = _op(z[i : i + 1], t[i : i + 1], loss, eps, alpha=0.1)
            assert torch.equal(rows[i : i + 1].nan_to_num(7.0), alone_row.nan_to_num(7.0)), (loss, i)
            assert torch.equal(grad[i : i + 1].nan_to_num(7.0), alone_grad.nan_to_num(7.0)), (loss, i)
        assert rows[[2, 4, 6, 7]].isnan().all() and torch.isfinite(rows[[0, 1, 3, 5, 8, 9]]).all()


@pytest.mark.parametrize("loss", ["ce", "gce", "focal", "sce"])
@pytest.mark.parametrize("eps", [5.358, -2.0])
def test_class_whose_exp_underflows_keeps_a_finite_loss(loss, eps):
    """At a large |eps| most vectors take log q itself; a class 100 below the row's max (its exp
    flushes to 0 in float32) must keep its finite l_k = -log q_k, from log a, not log 0."""
    n, k = 4, 37
    z = _logits(n, k, scale=1.0)
    z[:, 5] = z.max(1).values - 100.0
    z[1, 30] = z[1].max() - 100.0  # in the tail
    t = _probabilities(n, k, zeros=False)
    t[:, 5] += 0.2
    t[1, 30] += 0.2
    got = _native(z.float(), t.float(), loss, eps)
    want = _brute(z.float(), t.float(), loss, eps)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    _assert_close(got, want, TOL[torch.float32])


@pytest.mark.parametrize("dtype, alpha", [(torch.float64, 5e-324), (torch.float32, 1e-46)])
def test_label_smoothing_whose_share_per_class_rounds_to_zero(dtype, alpha):
    """alpha / K below the compute type's smallest subnormal: the rows, with and without class
    weights, take the stored coefficients (alpha / K = 0 exactly), and equal the unsmoothed rows."""
    z, y = _logits(3, 9).to(dtype), _labels(3, 9)
    for weight in (None, _weight(9).to(torch.float64 if dtype == torch.float64 else torch.float32)):
        got = _native(z, y, "mae", 0.0, weight=weight, alpha=alpha)
        want = _native(z, y, "mae", 0.0, weight=weight, alpha=0.0)
        _assert_close(got, want, TOL[dtype])


def test_negative_or_nan_probability_is_a_nan_row():
    z, t = _logits(4, 9), _probabilities(4, 9)
    t[1, 8] = -0.1  # in the vector tail
    t[2, 0] = float("nan")
    rows, grad = _op(z.float(), t.float(), "mae", 0.3, alpha=0.5)
    assert rows[1].isnan() and rows[2].isnan() and grad[[1, 2]].isnan().all()
    assert torch.isfinite(rows[[0, 3]]).all() and torch.isfinite(grad[[0, 3]]).all()


def test_invalid_label_is_a_nan_row():
    z, y = _logits(3, 5), torch.tensor([1, 7, -100])
    rows, grad = _op(z, y, "ce", alpha=0.1)
    assert rows[1].isnan() and grad[1].isnan().all() and rows[2] == 0 and (grad[2] == 0).all()


def test_non_contiguous_inputs():
    z = _logits(7, 18)[:, ::2]  # column stride 2
    t = _probabilities(18, 7).t()[:, ::2]  # column stride 14
    assert not z.is_contiguous() and not t.is_contiguous() and t.shape == z.shape
    _assert_close(_native(z, t, "nce_mae", 0.7), _brute(z, t, "nce_mae", 0.7), 1e-9)
    y = torch.stack([_labels(7, 9), _labels(7, 9)], 1)[:, 0].int()
    _assert_close(_native(z, y, "gce", 0.7, alpha=0.4), _brute(z, y, "gce", 0.7, alpha=0.4), 1e-9)


def test_mean_of_all_ignored_is_nan():
    z, y = _logits(3, 4), torch.full((3,), -100)
    loss, grad = _op(z, y, "ce", alpha=0.2, reduction=1)
    assert loss.isnan() and (grad == 0).all()


# ---- autograd, tracing ------------------------------------------------------------------------------


def test_retain_graph_second_backward_recomputes():
    z, t = _logits(4, 6), _probabilities(4, 6)
    x = z.clone().requires_grad_()
    out = native.robust_loss(x, t, get_spec("gce"), get_spec("gce").resolve({}), 0.3, "none", -100, None, 0.1)
    up = torch.randn(4, dtype=torch.float64)
    (first,) = torch.autograd.grad(out, x, up, retain_graph=True)
    (second,) = torch.autograd.grad(out, x, 2 * up)
    torch.testing.assert_close(second, 2 * first)
    _assert_close((out.detach(), first), _brute(z, t, "gce", 0.3, alpha=0.1, upstream=up), 1e-9)


@pytest.mark.skipif(
    "label_smoothing" not in inspect.signature(_torch_backend.loss_of_terms).parameters,
    reason="the torch backend's soft targets are not in this tree yet",
)
def test_double_backward_through_the_reference():
    z, t = _logits(3, 5), _probabilities(3, 5)
    x = z.clone().requires_grad_()
    out = native.robust_loss(x, t, get_spec("mae"), get_spec("mae").resolve({}), 0.3, "sum", -100, None, 0.1)
    (g,) = torch.autograd.grad(out, x, create_graph=True)
    (hv,) = torch.autograd.grad((g * g).sum(), x)
    r = z.clone().requires_grad_()
    rows = torch.stack(
        [rk.robust_loss(r, torch.full((3,), c), "mae", epsilon=0.3, reduction="none") for c in range(5)], 1
    )
    u, _ = _coefficients(t, 5, None, 0.1, -100)
    (gr,) = torch.autograd.grad((u * rows).sum(), r, create_graph=True)
    (hr,) = torch.autograd.grad((gr * gr).sum(), r)
    torch.testing.assert_close(hv, hr)


def test_compile_fullgraph():
    z, t, w = _logits(4, 6).float(), _probabilities(4, 6).float(), _weight(6, torch.float32)
    spec = get_spec("gce")
    values = spec.resolve({})

    def step(x, target, alpha):
        return native.robust_loss(x, target, spec, values, 0.5, "mean", -100, w, alpha)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x1, x2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    step(x1, t, 0.1).backward()
    compiled(x2, t, 0.1).backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.parametrize(
    "case",
    ["probabilities", "smoothed", "weighted-labels", "float64-eps-rows"],
)
def test_opcheck(case):
    z = _logits(4, 6, torch.float32)
    eps_rows, weight, alpha, target = None, None, 0.0, _labels(4, 6)
    if case == "probabilities":
        target = _probabilities(4, 6).float()
    if case == "smoothed":
        alpha = 0.2
    if case == "weighted-labels":
        weight = _weight(6, torch.float32)
    if case == "float64-eps-rows":
        z, target, eps_rows = z.double(), _probabilities(4, 6), torch.rand(4, dtype=torch.float64)
    terms, slots = get_spec("nce_mae").kernel_args(get_spec("nce_mae").resolve({}))
    for reduction in (0, 1):
        args = (z.requires_grad_(), target, eps_rows, weight, 0.3, terms, slots, -100, alpha, reduction, True)
        torch.library.opcheck(OPS.soft_loss_forward, args)


# ---- argument errors ---------------------------------------------------------------------------------


def test_errors_name_the_argument():
    z, t, y = _logits(4, 6, torch.float32), _probabilities(4, 6).float(), _labels(4, 6)
    w = _weight(6, torch.float32)
    with pytest.raises(RuntimeError, match="weight must be 1-D \\[K\\] with K=6"):
        _op(z, t, "ce", weight=w[:5])
    with pytest.raises(RuntimeError, match="weight must be Float"):
        _op(z, t, "ce", weight=w.double())
    with pytest.raises(RuntimeError, match="probability target must have the shape of logits"):
        _op(z, t[:, :5], "ce")
    with pytest.raises(RuntimeError, match="target must be int64/int32 labels"):
        _op(z, y.view(2, 2), "ce")
    with pytest.raises(RuntimeError, match="label_smoothing must be in \\[0, 1\\]"):
        _op(z, y, "ce", alpha=1.5)
    with pytest.raises(RuntimeError, match="label_smoothing must be in \\[0, 1\\]"):
        _op(z, y, "ce", alpha=float("nan"))
    for loss in ("nfl", "ngce_mae", "bitemp"):
        bad = [p for p in get_spec(loss).primitives if not p.soft_targets][0].name
        with pytest.raises(RuntimeError, match=f"terms: {bad} has no one-pass form"):
            _op(z, t, loss)
        with pytest.raises(RuntimeError, match=f"terms: {bad} has no one-pass form"):
            _op(z, y, loss, alpha=0.1)
        _op(z, y, loss, weight=w)  # integer target with weight: every loss
    with pytest.raises(RuntimeError, match="epsilon_rows must be 1-D"):
        _op(z, t, "ce", eps_rows=torch.zeros(3))
    with pytest.raises(RuntimeError, match="reduction must be"):
        _op(z, t, "ce", reduction=3)


def test_soft_target_mask_is_the_spec():
    """kSoftTargetTerms is generated from specs.SOFT_TARGET_TERMS: every primitive without a soft
    form is refused by name, every other one accepted."""
    z, t = _logits(2, 4, torch.float32), _probabilities(2, 4).float()
    slots = [0.5] * len(get_spec("ce").kernel_args(())[1])
    for prim in PRIMITIVES.values():
        call = (z, t, None, None, 0.0, 1 << prim.bit, slots, -100, 0.0, 0, False)
        if prim.name == "bitemp":
            continue  # its own slots (num_iters) are checked first
        if prim.soft_targets:
            OPS.soft_loss_forward(*call)
        else:
            with pytest.raises(RuntimeError, match=f"terms: {prim.name} has no one-pass form"):
                OPS.soft_loss_forward(*call)
