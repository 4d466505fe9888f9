"""The autograd design shared by the fused backends (robustkernels._fused_autograd), run over
every fused backend available here against autograd through the reference."""

import math

import pytest
import torch

import robustkernels as rk

FUSED = [b for b in rk.available_backends("cpu") if b != "torch"]
REDUCTIONS = ("none", "mean", "sum")

pytestmark = pytest.mark.parametrize("backend", FUSED)


def _inputs(n=4, k=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    target = torch.randint(0, k, (n,), generator=gen)
    eps = torch.rand(n, generator=gen, dtype=torch.float64) * 2.0
    return logits, target, eps


def _upstreams(reduction, n):
    shape = (n,) if reduction == "none" else ()
    per_row = torch.linspace(-1.5, 2.5, n, dtype=torch.float64) if reduction == "none" else torch.tensor(-1.5)
    values = [1.0, 0.0, 3.0, math.inf, math.nan, -2.0]
    return [torch.full(shape, v, dtype=torch.float64) for v in values] + [per_row.to(torch.float64)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_retain_graph_with_any_upstream_gradients(backend, reduction):
    """Every backward of one graph is ``upstream * d loss / d inputs``, whatever came before:
    0, inf and NaN upstreams included (the chain rule applied to the reference's gradient at
    upstream 1; autograd through the reference itself turns inf into NaN by cancellation)."""
    logits, target, eps = _inputs()
    x, e = logits.clone().requires_grad_(), eps.clone().requires_grad_()
    loss = rk.robust_loss(x, target, "nce_agce", epsilon=e, reduction=reduction, backend=backend)
    x_ref, e_ref = logits.clone().requires_grad_(), eps.clone().requires_grad_()
    ref_rows = rk.robust_loss(x_ref, target, "nce_agce", epsilon=e_ref, reduction="none", backend="torch")
    weight = {"none": 1.0, "mean": 1.0 / len(target), "sum": 1.0}[reduction]
    # Row i's loss depends on row i alone: its gradient there, at upstream 1.
    own = [torch.autograd.grad(r, (x_ref, e_ref), retain_graph=True) for r in ref_rows]
    unit_x = torch.stack([g[i] for i, (g, _) in enumerate(own)]) * weight
    unit_e = torch.stack([g[i] for i, (_, g) in enumerate(own)]) * weight
    for i, upstream in enumerate(_upstreams(reduction, len(target))):
        per_row = upstream if reduction == "none" else upstream.expand(len(target))
        want_x, want_e = per_row[:, None] * unit_x, per_row * unit_e
        got_x, got_e = torch.autograd.grad(loss, (x, e), upstream, retain_graph=True)
        torch.testing.assert_close(got_x, want_x, rtol=1e-9, atol=1e-12, equal_nan=True, msg=f"logits, backward {i}")
        torch.testing.assert_close(got_e, want_e, rtol=1e-9, atol=1e-12, equal_nan=True, msg=f"eps, backward {i}")


def test_editing_a_returned_gradient_changes_no_later_backward(backend):
    logits, target, _ = _inputs()
    x = logits.clone().requires_grad_()
    loss = rk.robust_loss(x, target, "gce", epsilon=1.0, backend=backend)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    expected = first.clone()
    first.mul_(7.0)  # e.g. clipping in place
    (second,) = torch.autograd.grad(loss, x, retain_graph=True)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    loss.backward()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    assert x.grad.data_ptr() != first.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_every_reduction(backend, reduction):
    logits, target, eps = _inputs(3, 4)
    target[1] = -100

    def fn(z, e):
        return rk.robust_loss(z, target, "nce_agce", epsilon=e, reduction=reduction, backend=backend)

    assert torch.autograd.gradcheck(fn, (logits.requires_grad_(), eps.requires_grad_()))


def test_jacobian_matches_the_reference(backend):
    logits, target, _ = _inputs()

    def rows(b):
        return lambda z: rk.robust_loss(z, target, "nf_mae", epsilon=0.5, reduction="none", backend=b)

    got = torch.autograd.functional.jacobian(rows(backend), logits)
    want = torch.autograd.functional.jacobian(rows("torch"), logits)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["gce", "nce_agce", "focal"])
def test_double_backward_matches_the_reference(backend, name):
    logits, target, eps = _inputs()
    target[2] = -100
    results = {}
    for b in (backend, "torch"):
        x, e = logits.clone().requires_grad_(), eps.clone().requires_grad_()
        rows = rk.robust_loss(x, target, name, epsilon=e, reduction="none", backend=b)
        upstream = torch.linspace(0.5, 2.0, len(target), dtype=torch.float64)
        (g,) = torch.autograd.grad(rows, x, upstream, create_graph=True)
        penalty = (g * torch.cos(torch.arange(g.numel(), dtype=torch.float64).view_as(g))).sum()
        results[b] = (g.detach(), *torch.autograd.grad(penalty, (x, e)))
    for got, want in zip(results[backend], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert results[backend][1].abs().sum() > 0, "second derivatives must not vanish"


def test_bitemp_double_backward_refuses_on_every_backend(backend):
    logits, target, _ = _inputs()
    x = logits.clone().requires_grad_()
    loss = rk.robust_loss(x, target, "bitemp", backend=backend)
    with pytest.raises(RuntimeError, match="bitemp: double backward"):
        torch.autograd.grad(loss, x, create_graph=True)
