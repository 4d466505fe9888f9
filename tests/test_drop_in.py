"""The drop-in arguments of F.cross_entropy on every backend: class weights, label smoothing,
probability targets, 1-D and N-d inputs.

Two oracles: ``F.cross_entropy`` itself for ``ce`` at eps = 0 (every combination of its
arguments), and for every other loss the brute force ``sum_k u_k L(z + eps e_k, k)`` computed in
float64 through the integer-label path of the torch backend, K calls, one per class -- an
oracle that shares nothing with the one-pass closed forms (docs/drop-in.md) under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import robustkernels as rk

BACKENDS = rk.available_backends("cpu")
FUSED = [b for b in BACKENDS if b != "torch"]
SOFT_LOSSES = [name for name, spec in rk.LOSSES.items() if spec.soft_targets]
#: Few enough for the Triton interpreter (0.1 s a call): a label-only, a normalised and a mixed loss.
TRITON_LOSSES = ["gce", "nce", "nce_agce"]
COMBINED = rk.combine({"nce": 0.7, "gce": 0.4, "focal": 0.2}, gce={"q": 0.6}, focal={"gamma": 1.5})


def _losses(backend: str) -> list[str]:
    return TRITON_LOSSES if backend == "triton" else SOFT_LOSSES


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str) -> None:
    """Relative to the max-norm of each row (of the whole tensor for a scalar): gradient entries
    are sums that cancel far below their row's scale."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if want.dim() <= 1:
        scale = want.abs().amax() if want.numel() else torch.tensor(1.0)
    else:
        scale = want.abs().flatten(1).amax(dim=1).reshape(-1, *([1] * (want.dim() - 1)))
    err = (got - want).abs() / scale.clamp_min(1e-30)
    assert bool((err <= rtol).all()), f"{what}: max relative error {err.max().item():.3g} > {rtol:g}"


def _loss_and_grad(logits, target, loss="ce", upstream=None, **kwargs):
    x = logits.detach().clone().requires_grad_()
    out = rk.robust_loss(x, target, loss, **kwargs)
    seed = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (grad,) = torch.autograd.grad(out, x, seed)
    return out.detach(), grad


def _cross_entropy(logits, target, upstream=None, **kwargs):
    x = logits.detach().double().requires_grad_()
    t = target.double() if target.is_floating_point() else target
    w = kwargs.pop("weight", None)
    out = F.cross_entropy(x, t, weight=None if w is None else w.double(), **kwargs)
    seed = torch.ones_like(out) if upstream is None else upstream.double()
    (grad,) = torch.autograd.grad(out, x, seed)
    return out.detach(), grad


# ---- ce at eps = 0 is F.cross_entropy, for every combination of its arguments ------------------

SHAPES = {"2d": (6, 5), "1d": (5,), "nd": (3, 5, 2, 3)}


def _inputs(shape, dtype, probabilities: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
    k = shape[0] if len(shape) == 1 else shape[1]
    if probabilities:
        return logits, torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)
    rows = () if len(shape) == 1 else (shape[0], *shape[2:])
    labels = torch.randint(0, k, rows, generator=g)
    if labels.dim() >= 1 and labels.numel() > 2:
        labels.view(-1)[1] = 3  # a label that some tests ignore
    return logits, labels


def _ce_params():
    out = []
    for backend, shape, probabilities, dtype in itertools.product(
        BACKENDS, SHAPES, (False, True), (torch.float64, torch.float32, torch.bfloat16)
    ):
        if backend == "triton" and (dtype != torch.float32 or shape == "1d"):
            continue  # the interpreter's cost; fp64 and bf16 are covered by the brute force below
        kind = "probs" if probabilities else "labels"
        out.append(pytest.param(backend, shape, probabilities, dtype, id=f"{backend}-{shape}-{kind}-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize("backend, shape, probabilities, dtype", _ce_params())
def test_ce_is_f_cross_entropy(backend, shape, probabilities, dtype):
    """Every combination of weight x label_smoothing x ignore_index x reduction, value and
    gradient, with a random upstream gradient for reduction="none"."""
    logits, target = _inputs(SHAPES[shape], dtype, probabilities)
    k = logits.shape[0 if logits.dim() == 1 else 1]
    weight = torch.linspace(0.2, 2.0, k, dtype=torch.float64).to(dtype)
    # bf16 gradients are rounded to 8 bits; the losses are fp32 everywhere (fp64 for fp64).
    loss_rtol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 2e-6}[dtype]
    grad_rtol = {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 8e-3}[dtype]
    if backend != "torch" and dtype == torch.float64:
        loss_rtol = grad_rtol = 1e-10
    ignores = (-100,) if probabilities or logits.dim() == 1 else (-100, 3)
    for w, alpha, ignore_index, reduction in itertools.product(
        (None, weight), (0.0, 0.3), ignores, ("none", "mean", "sum")
    ):
        kwargs = dict(weight=w, label_smoothing=alpha, ignore_index=ignore_index, reduction=reduction)
        upstream = None
        if reduction == "none":
            rows = () if logits.dim() == 1 else (logits.shape[0], *logits.shape[2:])
            upstream = torch.randn(rows, dtype=torch.float64)
        got = _loss_and_grad(logits, target, "ce", upstream, backend=backend, **kwargs)
        want = _cross_entropy(logits, target, upstream, **kwargs)
        what = f"{backend} {dtype} weight={w is not None} alpha={alpha} ignore={ignore_index} {reduction}"
        _close(got[0], want[0], loss_rtol, f"{what} loss")
        _close(got[1], want[1], grad_rtol, f"{what} gradient")
        assert got[1].dtype == dtype


# ---- every other loss: the brute force over classes ---------------------------------------------


def _coefficients(target, k, weight, alpha, ignore_index):
    """``u`` of docs/drop-in.md and the mean's denominator."""
    w = torch.ones(k, dtype=torch.float64) if weight is None else weight.double()
    if target.is_floating_point():
        return w * ((1 - alpha) * target.double() + alpha / k), target.shape[0]
    kept = target != ignore_index
    label = target.clamp(0, k - 1)
    u = (1 - alpha) * F.one_hot(label, k).double() * w[label, None] + alpha / k * w
    u = u * kept[:, None]
    return u, (w[label] * kept).sum()


def _brute_force(logits, target, loss, eps, weight, alpha, ignore_index, reduction, upstream, params):
    x = logits.detach().double().requires_grad_()
    k = x.shape[1]
    u, count = _coefficients(target, k, weight, alpha, ignore_index)
    e = eps.double() if isinstance(eps, torch.Tensor) else eps
    rows = sum(
        u[:, c]
        * rk.robust_loss(x, torch.full((x.shape[0],), c), loss, epsilon=e, reduction="none", backend="torch", **params)
        for c in range(k)
    )
    out = rows if reduction == "none" else rows.sum() if reduction == "sum" else rows.sum() / count
    seed = torch.ones_like(out) if upstream is None else upstream.double()
    (grad,) = torch.autograd.grad(out, x, seed)
    return out.detach(), grad


SOFT_SETTINGS = [
    # (probabilities, weight, alpha, eps kind, reduction)
    (True, False, 0.0, "scalar", "none"),
    (True, True, 0.2, "rows", "mean"),
    (False, False, 0.3, "scalar", "none"),
    (False, True, 0.15, "rows", "mean"),
    (False, True, 0.0, "scalar", "sum"),
]


def _soft_params():
    out = []
    for backend in BACKENDS:
        for loss in _losses(backend) + ["combined"]:
            for i, setting in enumerate(SOFT_SETTINGS):
                out.append(pytest.param(backend, loss, setting, id=f"{backend}-{loss}-{i}"))
    return out


@pytest.mark.parametrize("backend, loss, setting", _soft_params())
def test_expected_loss_is_the_brute_force(backend, loss, setting):
    probabilities, weighted, alpha, eps_kind, reduction = setting
    spec = COMBINED if loss == "combined" else rk.LOSSES[loss]
    params = {p.name: p.default for p in spec.params}
    n, k = 5, 7  # odd K
    g = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(n, k, generator=g)
    if probabilities:
        target = torch.rand(n, k, generator=g)
        target[1] = 0.0
        target[1, 2] = 1.0  # a one-hot row
        target[2, 4] = 0.0  # a class with no mass
    else:
        target = torch.randint(0, k, (n,), generator=g)
        target[3] = -100
    logits[0, 0] = logits[0].max() + 9.0  # a confident row
    weight = torch.linspace(0.5, 1.5, k) if weighted else None
    eps = torch.linspace(-0.5, 1.5, n) if eps_kind == "rows" else 1.3
    upstream = torch.randn(n, generator=g) if reduction == "none" else None
    kwargs = dict(weight=weight, label_smoothing=alpha, reduction=reduction, epsilon=eps)
    got = _loss_and_grad(logits, target, spec, upstream, backend=backend, **kwargs, **params)
    want = _brute_force(logits, target, spec, eps, weight, alpha, -100, reduction, upstream, params)
    _close(got[0], want[0], 2e-5, f"{backend} {loss} loss")
    _close(got[1], want[1], 2e-5, f"{backend} {loss} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["ce", "mae", "rce", "focal"])
@pytest.mark.parametrize("eps", [-19.0, 16.0])
def test_expected_loss_of_a_confident_row_at_an_extreme_eps(backend, loss, eps):
    """At eps = -19 the likeliest class's 1 + (e^eps - 1) a cancels as a -> 1 (formed so, rce's
    loss is infinite); at eps = 16 most q_k are near 1, where log q of the rounded q keeps only
    its rounding. Each row's loss relative to itself, and the gradient."""
    g = torch.Generator().manual_seed(3)
    spec = rk.LOSSES[loss]
    params = {p.name: p.default for p in spec.params}
    for k in (3, 7):
        logits = 3 * torch.randn(4, k, generator=g)
        logits[0, 0] += 12.0
        for target, alpha in ((torch.randint(0, k, (4,), generator=g), 0.1), (torch.rand(4, k, generator=g), 0.0)):
            upstream = torch.randn(4, generator=g)
            kwargs = dict(label_smoothing=alpha, reduction="none", epsilon=eps)
            got = _loss_and_grad(logits, target, spec, upstream, backend=backend, **kwargs, **params)
            want = _brute_force(logits, target, spec, eps, None, alpha, -100, "none", upstream, params)
            torch.testing.assert_close(got[0].double(), want[0], rtol=2e-5, atol=0, msg=f"{backend} {loss} loss")
            _close(got[1], want[1], 2e-5, f"{backend} {loss} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", ["nfl", "bitemp", "ngce_mae", "nce_agce"])
def test_class_weights_alone_work_for_every_loss(backend, loss):
    """Integer targets with weight= and no smoothing: row i weighted by w[y_i], mean by the sum of
    w[y_i] over non-ignored rows -- also for the losses without a one-pass expected loss."""
    n, k = 6, 9
    logits = 2 * torch.randn(n, k, dtype=torch.float64)
    target = torch.randint(0, k, (n,))
    target[2] = -100
    weight = torch.rand(k, dtype=torch.float64) + 0.1
    for reduction in ("none", "mean", "sum"):
        got = _loss_and_grad(
            logits, target, loss, None, backend=backend, weight=weight, reduction=reduction, epsilon=0.7
        )
        rows = rk.robust_loss(logits, target, loss, reduction="none", backend="torch", epsilon=0.7)
        w_rows = torch.where(target == -100, 0.0, weight[target.clamp(0)])
        want = {"none": rows * w_rows, "sum": (rows * w_rows).sum(), "mean": (rows * w_rows).sum() / w_rows.sum()}
        _close(got[0], want[reduction], 1e-10, f"{backend} {loss} {reduction}")


# ---- shapes: 1-D, N-d, strides, per-row eps of the row shape -------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_nd_input_matches_the_flattened_rows(backend):
    n, k, d1, d2 = 2, 5, 3, 2
    logits = torch.randn(n, d1, d2, k).permute(0, 3, 1, 2)  # [N, K, d1, d2], class stride 1
    probs = torch.rand(n, k, d1, d2)
    labels = torch.randint(0, k, (n, d1, d2))
    eps = torch.rand(n, d1, d2)
    flat = logits.movedim(1, -1).reshape(-1, k)
    for target, flat_target in ((labels, labels.reshape(-1)), (probs, probs.movedim(1, -1).reshape(-1, k))):
        for alpha in (0.0, 0.2):
            got = _loss_and_grad(
                logits, target, "gce", backend=backend, epsilon=eps, reduction="none", label_smoothing=alpha
            )
            want = _loss_and_grad(
                flat,
                flat_target,
                "gce",
                backend="torch",
                epsilon=eps.reshape(-1),
                reduction="none",
                label_smoothing=alpha,
            )
            assert got[0].shape == (n, d1, d2)
            _close(got[0].reshape(-1), want[0], 2e-6, f"{backend} N-d loss")
            _close(got[1].movedim(1, -1).reshape(-1, k), want[1], 2e-6, f"{backend} N-d gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_dimensional_input(backend):
    logits = torch.randn(7, dtype=torch.float64)
    for target in (torch.tensor(3), torch.rand(7, dtype=torch.float64)):
        for reduction in ("none", "mean", "sum"):
            got = _loss_and_grad(logits, target, "ce", backend=backend, reduction=reduction, label_smoothing=0.1)
            want = _cross_entropy(logits, target, reduction=reduction, label_smoothing=0.1)
            _close(got[0], want[0], 1e-10, f"{backend} 1-D {reduction} loss")
            _close(got[1], want[1], 1e-10, f"{backend} 1-D {reduction} gradient")


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_logits_and_probabilities(backend):
    logits = torch.randn(9, 14)[:, ::2]  # column stride 2
    probs = torch.rand(7, 9).t()  # column stride 9
    got = _loss_and_grad(logits, probs, "nce_mae", backend=backend, epsilon=0.8, label_smoothing=0.1)
    want = _loss_and_grad(
        logits.contiguous(), probs.contiguous(), "nce_mae", backend="torch", epsilon=0.8, label_smoothing=0.1
    )
    _close(got[0], want[0], 2e-6, f"{backend} loss")
    _close(got[1], want[1], 2e-6, f"{backend} gradient")


# ---- extreme logits ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_minus_inf_logits_with_and_without_mass(backend):
    """A -inf logit is a class with p = 0: with t_k = 0 there it contributes nothing (no 0 * inf);
    with t_k > 0 a bounded loss stays finite. A NaN logit makes its row NaN."""
    logits = torch.randn(4, 6, dtype=torch.float64)
    logits[0, 1] = -math.inf
    logits[1, 2] = -math.inf
    logits[3, 0] = math.nan
    probs = torch.rand(4, 6, dtype=torch.float64)
    probs[0, 1] = 0.0
    for loss in ("ce", "mae", "nce_agce"):
        got = _loss_and_grad(
            logits, probs, loss, backend=backend, reduction="none", epsilon=0.5, upstream=torch.ones(4)
        )
        want = _loss_and_grad(
            logits, probs, loss, backend="torch", reduction="none", epsilon=0.5, upstream=torch.ones(4)
        )
        assert torch.isfinite(got[0][0]) and torch.isfinite(got[1][0]).all(), f"{backend} {loss}: t_k = 0 at -inf"
        assert torch.isnan(got[0][3]) and torch.isnan(got[1][3]).all(), f"{backend} {loss}: NaN row"
        assert torch.equal(torch.isfinite(got[0]), torch.isfinite(want[0])), f"{backend} {loss}"
        finite = torch.isfinite(want[0])
        _close(got[0][finite], want[0][finite], 1e-10, f"{backend} {loss} loss")
        rows = torch.isfinite(want[1]).all(dim=1)
        _close(got[1][rows], want[1][rows], 1e-10, f"{backend} {loss} gradient")


# ---- autograd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_and_double_backward(backend):
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    probs = torch.rand(3, 5, dtype=torch.float64)
    weight = torch.rand(5, dtype=torch.float64) + 0.5
    for reduction in ("none", "mean", "sum"):

        def f(z, reduction=reduction):
            return rk.robust_loss(
                z,
                probs,
                "nce_mae",
                weight=weight,
                label_smoothing=0.1,
                epsilon=0.6,
                reduction=reduction,
                backend=backend,
            )

        assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-7, rtol=1e-6)
    assert torch.autograd.gradgradcheck(f, (logits,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_with_any_upstream(backend):
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    probs = torch.rand(4, 6, dtype=torch.float64)
    rows = rk.robust_loss(logits, probs, "gce", reduction="none", label_smoothing=0.2, backend=backend)
    want = torch.autograd.functional.jacobian(
        lambda z: rk.robust_loss(z, probs, "gce", reduction="none", label_smoothing=0.2, backend="torch"), logits
    )
    for i, upstream in enumerate((torch.ones(4), torch.zeros(4), torch.tensor([2.0, -1.0, 0.5, 3.0]))):
        (grad,) = torch.autograd.grad(rows, logits, upstream.double(), retain_graph=True)
        _close(grad, torch.einsum("i,ijk->jk", upstream.double(), want), 1e-10, f"{backend} backward {i}")


@pytest.mark.parametrize("backend", FUSED)
def test_fused_backends_refuse_what_they_cannot_differentiate(backend):
    logits = torch.randn(4, 6, requires_grad=True)
    probs = torch.rand(4, 6)
    with pytest.raises(ValueError, match="epsilon: backend .* does not differentiate a per-row bias"):
        rk.robust_loss(logits, probs, "mae", epsilon=torch.rand(4, requires_grad=True), backend=backend)
    with pytest.raises(ValueError, match="weight: backend .* does not differentiate weight"):
        rk.robust_loss(logits, probs, "mae", weight=torch.rand(6, requires_grad=True), backend=backend)
    with pytest.raises(ValueError, match="target: backend .* does not differentiate target"):
        rk.robust_loss(logits, probs.requires_grad_(), "mae", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("bad", [-0.25, float("nan")])
def test_bad_probability_raises_at_once_and_a_nan_logit_does_not(backend, reduction, bad):
    """On CPU a negative or NaN probability raises naming the target and its first row, whether
    the backend checks before the call or after it (the fused ones, from their NaN rows); a NaN
    logit with a valid target is a NaN row, not an error."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 7, generator=g)
    target = torch.rand(6, 7, generator=g)
    target[4, 2] = bad
    with pytest.raises(ValueError, match=r"target: 1 row\(s\) of the probability target .* first at row 4"):
        rk.robust_loss(logits, target, "gce", epsilon=1.0, reduction=reduction, backend=backend)
    target[4, 2] = 0.5
    logits[3, 1] = float("nan")
    out = rk.robust_loss(logits, target, "gce", epsilon=1.0, reduction="none", backend=backend)
    assert out.isnan().tolist() == [False, False, False, True, False, False]


def test_torch_backend_differentiates_the_target_the_weights_and_the_bias():
    """Distillation through a teacher's probabilities, learned class weights, a learned per-row bias."""
    logits = torch.randn(3, 4, dtype=torch.float64)
    probs = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(4, dtype=torch.float64, requires_grad=True)
    eps = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def f(t, w, e):
        return rk.robust_loss(logits, t, "nce_agce", weight=w, epsilon=e, label_smoothing=0.1, backend="torch")

    assert torch.autograd.gradcheck(f, (probs, weight, eps))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    linear = torch.nn.Linear(4, 7)
    x, probs = torch.randn(5, 4), torch.rand(5, 7)
    weight = torch.rand(7) + 0.5

    def step(x, probs):
        return rk.robust_loss(linear(x), probs, "gce", weight=weight, label_smoothing=0.1, epsilon=1.0, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x, probs)
    loss.backward()
    grads = [p.grad.clone() for p in linear.parameters()]
    linear.zero_grad()
    step(x, probs).backward()
    for a, b in zip(grads, [p.grad for p in linear.parameters()]):
        torch.testing.assert_close(a, b)


# ---- properties ----------------------------------------------------------------------------------

_SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def _rows(draw, k_max=9):
    n = draw(st.integers(1, 4))
    k = draw(st.integers(2, k_max))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    scale = draw(st.floats(0.1, 8.0))
    return scale * torch.randn(n, k, generator=g, dtype=torch.float64), g


@_SETTINGS
@given(_rows(), st.sampled_from(SOFT_LOSSES), st.floats(-2.0, 3.0), st.floats(0.0, 2.0), st.floats(0.0, 2.0))
def test_property_linear_in_the_target(rows, loss, eps, a, b):
    logits, g = rows
    t1, t2 = (
        torch.rand(logits.shape, generator=g, dtype=torch.float64),
        torch.rand(logits.shape, generator=g, dtype=torch.float64),
    )

    def f(t):
        return rk.robust_loss(logits, t, loss, epsilon=eps, reduction="none", backend="torch")

    torch.testing.assert_close(f(a * t1 + b * t2), a * f(t1) + b * f(t2), rtol=1e-10, atol=1e-12)


@_SETTINGS
@given(_rows(), st.sampled_from(SOFT_LOSSES), st.floats(-2.0, 3.0))
def test_property_one_hot_target_is_the_integer_path(rows, loss, eps):
    logits, g = rows
    labels = torch.randint(0, logits.shape[1], (logits.shape[0],), generator=g)
    one_hot = F.one_hot(labels, logits.shape[1]).double()
    for backend in ("torch", *(b for b in FUSED if b != "triton")):
        got = rk.robust_loss(logits, one_hot, loss, epsilon=eps, reduction="none", backend=backend)
        want = rk.robust_loss(logits, labels, loss, epsilon=eps, reduction="none", backend="torch")
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@_SETTINGS
@given(_rows(), st.sampled_from(["mae", "rce", "nmae", "nrce", "mae_rce"]), st.floats(0.0, 1.0))
def test_property_smoothing_a_symmetric_loss_only_rescales_it(rows, loss, alpha):
    """At eps = 0, sum_k L(p, k) is a constant for a symmetric loss, so L_alpha = (1 - alpha) L_0
    + alpha c with c independent of the logits (here: that of all-zero logits)."""
    logits, _ = rows
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    for backend in [b for b in BACKENDS if b != "triton"]:

        def rows_of(z, smoothing, backend=backend):
            return rk.robust_loss(
                z, labels[: z.shape[0]], loss, label_smoothing=smoothing, reduction="none", backend=backend
            )

        offset = rows_of(logits, alpha) - (1 - alpha) * rows_of(logits, 0.0)
        zeros = torch.zeros_like(logits[:1])
        constant = rows_of(zeros, alpha) - (1 - alpha) * rows_of(zeros, 0.0)
        torch.testing.assert_close(offset, constant.expand_as(offset), rtol=1e-10, atol=1e-12)
