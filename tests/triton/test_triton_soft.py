"""The soft-target op (class weights, label smoothing, probability targets) under the interpreter.

The oracle is a float64 brute force through the integer-label path of the torch backend: ``rows =
sum_k u_k L(z + eps e_k, k)`` with ``u`` built from ``docs/drop-in.md``'s table, each class's loss
evaluated only on the rows where ``u_k != 0`` (so a -inf logit with ``t_k = 0`` cannot reach it),
differentiated by autograd.
"""

from __future__ import annotations

import pytest
import torch
from _triton_cases import assert_rows_close

import robustkernels as rk
from robustkernels.triton import backend as triton_backend
from robustkernels.triton import op

SOFT_LOSSES = [name for name, spec in rk.LOSSES.items() if spec.soft_targets]
LABEL_ONLY_LOSSES = [name for name, spec in rk.LOSSES.items() if not spec.soft_targets]
COMBINED = rk.combine({"nce": 0.7, "focal": 0.4, "rce": 0.2, "nmae": 0.3}, focal={"gamma": 1.5})


def _spec(loss):
    return loss if isinstance(loss, rk.LossSpec) else rk.LOSSES[loss]


def _coefficients(target, num_classes, weight, alpha, ignore_index):
    w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
    if target.is_floating_point():
        return w * ((1 - alpha) * target.double() + alpha / num_classes)
    kept = target != ignore_index
    onehot = torch.nn.functional.one_hot(target.clamp(0, num_classes - 1), num_classes).double()
    return ((1 - alpha) * onehot + alpha / num_classes) * w * kept[:, None]


def brute_force(
    logits, target, loss, eps=0.0, weight=None, alpha=0.0, reduction="none", ignore_index=-100, upstream=None
):
    """``(loss, d loss / d logits)`` in float64 on the same (rounded) inputs (``upstream`` weights the
    rows' backward)."""
    z = logits.detach().double().requires_grad_()
    num_rows, num_classes = z.shape
    u = _coefficients(target, num_classes, weight, alpha, ignore_index)
    spec = _spec(loss)
    rows = torch.zeros(num_rows, dtype=torch.float64)
    for k in range(num_classes):
        sel = (u[:, k] != 0).nonzero().flatten()
        if len(sel):
            e = eps[sel].double() if isinstance(eps, torch.Tensor) else eps
            labels = torch.full((len(sel),), k)
            lk = rk.robust_loss(z[sel], labels, spec, epsilon=e, reduction="none", backend="torch")
            rows = rows.index_add(0, sel, u[sel, k] * lk)
    if reduction == "none":
        out = rows
    elif reduction == "sum":
        out = rows.sum()
    elif target.is_floating_point():
        out = rows.sum() / num_rows
    else:
        w = torch.ones(num_classes, dtype=torch.float64) if weight is None else weight.double()
        out = rows.sum() / (w[target.clamp(0, num_classes - 1)] * (target != ignore_index)).sum()
    upstream = torch.ones_like(out) if upstream is None else upstream.double()
    return out.detach(), torch.autograd.grad(out, z, upstream, allow_unused=True)[0]


def fused(logits, target, loss, eps=0.0, weight=None, alpha=0.0, reduction="none", ignore_index=-100, upstream=None):
    """``(loss, d loss / d logits)`` of the Triton backend (``upstream`` weights the rows' backward)."""
    x = logits.detach().requires_grad_()
    spec = _spec(loss)
    out = triton_backend.robust_loss(
        x, target, spec, spec.resolve({}), eps, reduction, ignore_index, weight=weight, label_smoothing=alpha
    )
    out.backward(torch.ones_like(out) if upstream is None else upstream)
    return out.detach(), x.grad


def _inputs(n, k, seed, dtype=torch.float32, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, k, generator=gen)).to(dtype)
    probs = torch.rand(n, k, generator=gen)
    probs[0, 1] = 0.0  # a class with t_k = 0
    labels = torch.randint(0, k, (n,), generator=gen)
    weight = torch.rand(k, generator=gen) + 0.25
    eps_rows = torch.rand(n, generator=gen, dtype=torch.float64 if dtype == torch.float64 else torch.float32) * 2 - 0.5
    return logits, probs, labels, weight, eps_rows


def _check(got, want, rtol=1e-5, what=""):
    got_loss, got_grad = got
    want_loss, want_grad = want
    assert_rows_close(got_loss.reshape(-1), want_loss.reshape(-1), rtol, f"{what} loss")
    assert_rows_close(got_grad, want_grad, rtol, f"{what} grad")


# ---- agreement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", [*SOFT_LOSSES, COMBINED], ids=[*SOFT_LOSSES, "combined"])
def test_matches_brute_force(loss):
    logits, probs, labels, weight, eps_rows = _inputs(5, 7, seed=len(str(loss)))
    labels[2] = -100
    cases = [
        dict(target=probs, eps=0.7, weight=weight, alpha=0.1, reduction="mean"),
        dict(target=labels, eps=0.0, weight=None, alpha=0.25, reduction="sum"),
        dict(target=labels, eps=eps_rows, weight=weight, alpha=0.3, reduction="mean"),
        dict(target=probs, eps=eps_rows, weight=None, alpha=0.0, reduction="none"),
    ]
    for i, case in enumerate(cases):
        target = case.pop("target")
        _check(fused(logits, target, loss, **case), brute_force(logits, target, loss, **case), what=f"case {i}")


@pytest.mark.parametrize("loss", LABEL_ONLY_LOSSES)
def test_weight_alone_works_for_every_loss(loss):
    """Integer labels with weight= and no smoothing: the integer row scaled by w_y (nfl, ngce, bitemp
    have no soft form), mean by sum w_y over the non-ignored rows."""
    logits, _, labels, weight, _ = _inputs(4, 6, seed=3)
    labels[1] = -100
    rtol = 1e-4 if loss == "bitemp" else 2e-5
    for eps, reduction in ((0.0, "mean"), (1.1, "none")):
        _check(
            fused(logits, labels, loss, eps=eps, weight=weight, reduction=reduction),
            brute_force(logits, labels, loss, eps=eps, weight=weight, reduction=reduction),
            rtol,
            f"eps {eps} {reduction}",
        )
    with pytest.raises(ValueError, match=rk.LOSSES[loss].primitives[0].name):
        fused(logits, labels, loss, alpha=0.1)


def test_weight_alone_differentiates_a_per_row_bias():
    """The bias adds to the label's logit only: its gradient is the label lane, scaled by w_y."""
    logits, _, labels, weight, eps_rows = _inputs(4, 6, seed=4, dtype=torch.float64)
    labels[0] = -100
    spec = rk.LOSSES["nfl_rce"]
    grads = []
    for backend in ("triton", "torch"):
        x = logits.clone().requires_grad_()
        e = eps_rows.clone().requires_grad_()
        if backend == "triton":
            out = triton_backend.robust_loss(x, labels, spec, spec.resolve({}), e, "mean", -100, weight=weight.double())
        else:
            rows = rk.robust_loss(x, labels, spec, epsilon=e, reduction="none", backend="torch")
            w = weight.double()[labels.clamp(0)] * (labels != -100)
            out = (rows * w).sum() / w.sum()
        out.backward()
        grads.append((x.grad, e.grad))
    (got_x, got_e), (want_x, want_e) = grads
    torch.testing.assert_close(got_x, want_x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_e, want_e, rtol=1e-10, atol=1e-12)


def test_random_upstream_gradients_and_retain_graph():
    """Per-row upstream gradients (an infinite one on an ignored row); the first backward scales the
    buffer in place, the later ones recompute it."""
    logits, probs, labels, weight, _ = _inputs(5, 9, seed=5)
    labels[3] = -100
    spec = rk.LOSSES["nce_agce"]
    for target in (probs, labels):
        x = logits.clone().requires_grad_()
        rows = triton_backend.robust_loss(x, target, spec, spec.resolve({}), 0.4, "none", -100, weight, 0.2)
        for seed in range(3):
            upstream = torch.randn(5, generator=torch.Generator().manual_seed(seed))
            if not target.is_floating_point():
                upstream[3] = float("inf")
            x.grad = None
            rows.backward(upstream, retain_graph=True)
            finite = upstream.nan_to_num(posinf=0.0)
            want_rows, want_grad = brute_force(logits, target, spec, 0.4, weight, 0.2, upstream=finite)
            assert_rows_close(rows.detach(), want_rows, 1e-5, "rows")
            assert_rows_close(x.grad, want_grad, 1e-5, f"upstream {seed}")


def test_column_tiled_path(monkeypatch):
    """Several column tiles per row (the single-pass limit lowered to 8 lanes: tiles of 4 for K=13)."""
    monkeypatch.setattr(op, "max_single_pass_override", 8)
    logits, probs, labels, weight, eps_rows = _inputs(3, 13, seed=6)
    logits[1, 12] = 9.0  # the row maximum in the last tile, after the running max was set
    labels[0] = -100
    cases = [
        ("nce_agce", probs, dict(eps=0.9, weight=weight, alpha=0.05, reduction="mean")),
        ("ce", labels, dict(eps=0.0, weight=None, alpha=0.3, reduction="sum")),
        ("nfl_nce", labels, dict(eps=eps_rows, weight=weight, reduction="none")),
    ]
    for loss, target, case in cases:
        _check(fused(logits, target, loss, **case), brute_force(logits, target, loss, **case), 2e-5, loss)


def test_dtypes():
    logits, probs, labels, weight, eps_rows = _inputs(4, 11, seed=7, dtype=torch.float64)
    got = fused(logits, probs.double(), "nce_rce", eps=eps_rows, weight=weight.double(), alpha=0.1)
    _check(got, brute_force(logits, probs, "nce_rce", eps=eps_rows, weight=weight, alpha=0.1), 1e-11, "fp64")
    assert got[0].dtype == torch.float64
    for dtype in (torch.bfloat16, torch.float16):
        low = logits.to(dtype)
        got = fused(low, probs.to(dtype), "gce", eps=0.5, weight=weight, alpha=0.1, reduction="sum")
        want = brute_force(low, probs.to(dtype), "gce", eps=0.5, weight=weight, alpha=0.1, reduction="sum")
        assert got[0].dtype == torch.float32 and got[1].dtype == dtype
        assert_rows_close(got[0].reshape(1), want[0].reshape(1), 1e-5, f"{dtype} loss")
        assert_rows_close(got[1], want[1], 8e-3, f"{dtype} grad")  # the gradient rounded to dtype


def test_non_contiguous_logits_and_target():
    base = 3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(8))
    probs = torch.rand(11, 6, generator=torch.Generator().manual_seed(9)).t()  # column stride 6
    for logits in (base[:, 2:13], base[:, :11].t().contiguous().t()):
        _check(fused(logits, probs, "sce", eps=0.3, alpha=0.1), brute_force(logits, probs, "sce", eps=0.3, alpha=0.1))
    expanded = torch.rand(1, 11).expand(6, 11)  # column stride 1, row stride 0
    _check(fused(base[:, :11], expanded, "mae", eps=0.3), brute_force(base[:, :11], expanded, "mae", eps=0.3))


# ---- edge cases ----------------------------------------------------------------------------------


def test_minus_inf_logits():
    """A -inf logit is a class with a = 0: it contributes exactly 0 where t_k = 0 (no 0 * inf), an
    infinite loss (ce, focal) or a finite one (bounded losses) where t_k > 0, with a finite gradient;
    nce is 0 on such a row."""
    logits, probs, _, _, _ = _inputs(3, 7, seed=10)
    logits[0, 1] = float("-inf")  # t = 0 there
    logits[1, 4] = float("-inf")  # t > 0 there
    for loss in ("mae", "nce_agce", "ce", "focal"):
        for eps in (0.0, 0.6):
            (rows, grad), (want_rows, want_grad) = (
                fused(logits, probs, loss, eps=eps),
                brute_force(logits, probs, loss, eps=eps),
            )
            bounded = loss in ("mae", "nce_agce")
            assert torch.isfinite(rows[1]) == bounded and torch.isfinite(rows[[0, 2]]).all()
            torch.testing.assert_close(rows.double(), want_rows, rtol=1e-5, atol=0)
            assert_rows_close(grad, want_grad, 1e-5, f"{loss} grad")


def test_nan_rows():
    """A NaN logit, a +inf logit, an all -inf row, a negative or NaN probability: NaN loss and NaN
    gradient on that row only."""
    logits, probs, _, _, _ = _inputs(6, 5, seed=11)
    logits[0, 2] = float("nan")
    logits[1, 0] = float("inf")
    logits[2] = float("-inf")
    probs[3, 1] = -0.1
    probs[4, 4] = float("nan")
    for loss in ("gce", "nce"):
        rows, grad = fused(logits, probs, loss, eps=0.5, alpha=0.1)
        assert rows[:5].isnan().all() and grad[:5].isnan().all()
        assert torch.isfinite(rows[5]) and torch.isfinite(grad[5]).all()
        _, want = brute_force(logits[5:], probs[5:], loss, eps=0.5, alpha=0.1)
        assert_rows_close(grad[5:], want, 1e-5, loss)


def test_ignore_index_and_means():
    logits, probs, labels, weight, _ = _inputs(4, 5, seed=12)
    labels[:] = 7
    rows, grad = fused(logits, labels, "ce", alpha=0.1, ignore_index=7)
    assert torch.equal(rows, torch.zeros(4)) and torch.equal(grad, torch.zeros(4, 5))
    mean, _ = fused(logits, labels, "ce", alpha=0.1, weight=weight, reduction="mean", ignore_index=7)
    assert mean.isnan()  # every row ignored: 0 / 0, as F.cross_entropy
    labels[0] = 2  # probability targets ignore ignore_index, and integer labels equal to it are ignored
    _check(fused(logits, probs, "mae", ignore_index=2), brute_force(logits, probs, "mae", ignore_index=2))
    labels[1] = 9  # out of range: a NaN row
    rows, grad = fused(logits, labels, "mae", alpha=0.2, ignore_index=7)
    assert rows[1].isnan() and grad[1].isnan().all() and torch.isfinite(rows[[0, 2, 3]]).all()


def test_matches_f_cross_entropy():
    logits, probs, labels, weight, _ = _inputs(5, 8, seed=13)
    labels[1] = -100
    f = torch.nn.functional.cross_entropy
    for target, alpha, w in ((labels, 0.2, weight), (labels, 1.0, None), (probs, 0.1, weight), (labels, 0.0, weight)):
        got, _ = fused(logits, target, "ce", weight=w, alpha=alpha, reduction="mean")
        torch.testing.assert_close(got, f(logits, target, weight=w, label_smoothing=alpha), rtol=1e-5, atol=1e-6)


def test_agrees_with_the_torch_backend():
    logits, probs, labels, weight, eps_rows = _inputs(4, 7, seed=14)
    for target in (probs, labels):
        kw = dict(epsilon=eps_rows, weight=weight, label_smoothing=0.15, reduction="mean")
        z = logits.double().requires_grad_()
        want = rk.robust_loss(z, target, "nce_mae", backend="torch", **kw)
        (want_grad,) = torch.autograd.grad(want, z)
        _check(
            fused(logits, target, "nce_mae", eps=eps_rows, weight=weight, alpha=0.15, reduction="mean"),
            (want.detach(), want_grad),
        )


def test_double_backward_goes_through_the_reference():
    logits, probs, _, weight, _ = _inputs(3, 6, seed=15, dtype=torch.float64)
    x = logits.clone().requires_grad_()
    spec = rk.LOSSES["nce_ael"]
    loss = triton_backend.robust_loss(
        x, probs.double(), spec, spec.resolve({}), 0.5, "mean", -100, weight.double(), 0.1
    )
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (hvp,) = torch.autograd.grad(g.square().sum(), x)
    z = logits.clone().requires_grad_()
    ref = rk.robust_loss(
        z, probs.double(), spec, epsilon=0.5, weight=weight.double(), label_smoothing=0.1, backend="torch"
    )
    (rg,) = torch.autograd.grad(ref, z, create_graph=True)
    (rhvp,) = torch.autograd.grad(rg.square().sum(), z)
    torch.testing.assert_close(g, rg)
    torch.testing.assert_close(hvp, rhvp)


# ---- the op ----------------------------------------------------------------------------------------


def _op_args(logits, target, loss="nce_agce", eps_rows=None, weight=None, alpha=0.1, reduction="mean", grad=True):
    spec = _spec(loss)
    terms, slots = spec.kernel_args(spec.resolve({}))
    return (logits, target, eps_rows, weight, 0.3, terms, [float(v) for v in slots], -100, alpha, reduction, grad)


def test_opcheck():
    logits, probs, labels, weight, eps_rows = _inputs(4, 9, seed=16)
    labels[1] = -100
    x = logits.requires_grad_()
    cases = [
        _op_args(x, probs, weight=weight),
        _op_args(x, labels, eps_rows=eps_rows, alpha=0.2, reduction="none"),
        _op_args(x, labels, "bitemp", eps_rows=eps_rows.clone().requires_grad_(), weight=weight, alpha=0.0),
        _op_args(x.detach().bfloat16(), probs, "ce", weight=weight, reduction="sum", grad=False),
    ]
    for args in cases:
        torch.library.opcheck(op.fused_loss, args)


def test_errors_name_the_argument():
    logits, probs, labels, weight, eps_rows = _inputs(3, 5, seed=17)
    cases = [
        (_op_args(logits, probs, "nfl_nce"), "nfl has no one-pass"),
        (_op_args(logits, labels, "ngce", alpha=0.2), "ngce has no one-pass"),
        (_op_args(logits, labels, alpha=1.5), "label_smoothing must be in"),
        (_op_args(logits, labels, alpha=float("nan")), "label_smoothing must be in"),
        (_op_args(logits, probs[:, :4]), "target: a probability target"),
        (_op_args(logits, labels[:2]), "target: labels must have shape"),
        (_op_args(logits, labels.short()), "target must be"),
        (_op_args(logits, labels, weight=weight[:4]), "weight must be"),
        (_op_args(logits, labels, eps_rows=eps_rows[:2]), "eps_rows must have shape"),
        (_op_args(logits, labels, reduction="avg"), "reduction must be one of"),
        (_op_args(logits[0], labels), "logits must be"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            op.fused_loss(*args)


def test_soft_bias_gradient_is_refused():
    logits, probs, _, _, eps_rows = _inputs(3, 5, seed=18)
    x = logits.requires_grad_()
    spec = rk.LOSSES["ce"]
    e = eps_rows.requires_grad_()
    loss = triton_backend.robust_loss(x, probs, spec, spec.resolve({}), e, "mean", -100)
    with pytest.raises(RuntimeError, match="epsilon"):
        loss.backward()


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    linear = torch.nn.Linear(6, 11)
    x = torch.randn(8, 6)
    probs = torch.softmax(torch.randn(8, 11), dim=1)
    weight = torch.rand(11) + 0.5
    spec = rk.LOSSES["nce_mae"]

    def step(x, target, weight):
        logits = linear(x)
        return triton_backend.robust_loss(logits, target, spec, spec.resolve({}), 0.4, "mean", -100, weight, 0.1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for target in (probs, torch.randint(0, 11, (8,))):
        loss = compiled(x, target, weight)
        loss.backward()
        grads = [p.grad.clone() for p in linear.parameters()]
        linear.zero_grad()
        eager = step(x, target, weight)
        eager.backward()
        torch.testing.assert_close(loss, eager)
        for got, want in zip(grads, [p.grad for p in linear.parameters()]):
            torch.testing.assert_close(got, want)
        linear.zero_grad()


def test_confident_rows_keep_one_minus_p():
    """1 - a of the row maximum from log1p of the others' sum and 1 - q as (1 - a) r: at 1 - p ~ 1e-7
    (below ulp(1) / 2 in fp32) a bounded loss and its gradient keep their fp32 relative accuracy."""
    logits = torch.tensor([[16.0, 0.0, -1.0, 0.5, -3.0], [2.0, 19.0, 19.0, -4.0, 0.0]])
    labels = torch.tensor([0, 1])
    probs = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0.7, 0.3, 0, 0]])  # a tie at the maximum in row 1
    for target, alpha in ((labels, 1e-6), (probs, 0.0)):
        for loss in ("mae", "nce_rce"):
            for eps in (0.0, 1.5, -0.5):
                got = fused(logits, target, loss, eps=eps, alpha=alpha)
                _check(got, brute_force(logits, target, loss, eps=eps, alpha=alpha), 2e-5, f"{loss} eps {eps}")
