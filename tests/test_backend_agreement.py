"""Every backend that runs on this CPU against the float64 reference, where backends diverged:
precision at an end of a parameter's range, and the row policy for non-finite logits.

The backends are those ``rk.available_backends("cpu")`` lists: ``torch``, ``native`` when it
is built, and ``triton`` in the Triton interpreter (which tests/conftest.py turns on where there
is no GPU). The float64 reference itself was checked against 60-digit mpmath at the aul and
agce cases below (agreement to 6e-15).
"""

from __future__ import annotations

import math

import pytest
import torch

import robustkernels as rk

BACKENDS = rk.available_backends("cpu")

# Defects of the Triton kernels (robustkernels/triton/) that these tests expose, by test case;
# strict, so that a fix shows up as an XPASS that asks for the entry to be removed.
_TRITON_DEFECTS: dict[str, str] = {}


def _params(*values, defect: str | None = None) -> list:
    """``values + (backend,)`` for every backend, triton marked as an expected failure where
    it has the defect named."""
    out = []
    for b in BACKENDS:
        marks = ()
        if b == "triton" and defect is not None:
            marks = pytest.mark.xfail(strict=True, reason=_TRITON_DEFECTS[defect])
        ids = [v if isinstance(v, str) else "-".join(f"{k}={x!r}" for k, x in v.items()) for v in values]
        out.append(pytest.param(*values, b, marks=marks, id="-".join([*ids, b])))
    return out


def _run(backend, logits, target, name, epsilon=0.0, **prm):
    """Per-row losses and d(sum of them)/d logits (and d/d epsilon when it is a tensor)."""
    x = logits.clone().requires_grad_()
    eps = epsilon.clone().requires_grad_() if isinstance(epsilon, torch.Tensor) else epsilon
    out = rk.robust_loss(x, target, name, epsilon=eps, reduction="none", backend=backend, **prm)
    out.sum().backward()
    eps_grad = eps.grad if isinstance(eps, torch.Tensor) else None
    return out.detach(), x.grad, eps_grad


# ---- parameters near an end of their range -----------------------------------------------------


def _precision_inputs(n_per_kind=8, k=10):
    """float32 logits: confident rows (1 - p_y from 5e-2 down to 2e-8, where a - p_y cancels),
    unlikely rows (p_y from 1e-2 down to 1e-6, where a + p_y is small for a -> 0) and random rows."""
    g = torch.Generator().manual_seed(0)
    n = 3 * n_per_kind
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, k, (n,), generator=g)
    rows = torch.arange(n_per_kind)
    logits[rows] = 0.0
    logits[rows, target[rows]] = torch.linspace(5.0, 20.0, n_per_kind, dtype=torch.float64)
    rows = rows + n_per_kind
    logits[rows] = torch.randn(n_per_kind, k, generator=g, dtype=torch.float64)
    logits[rows, target[rows]] = torch.linspace(-3.0, -12.0, n_per_kind, dtype=torch.float64)
    return logits.float(), target


PRECISION_CASES = [
    # aul: ((a - p_y)^q - (a - 1)^q) / q is a function of a - 1, and a = 1 + 1e-7 is 1 + 1.19e-7
    # in fp32: a - 1 must be formed before the parameter is rounded.
    *[("aul", {"a": a, "q": q}) for a in (1.001, 1.0001, 1.0000001) for q in (1e-8, 0.5, 3.0)],
    # agce for a -> 0: the log of (a + p_y) / (a + 1) and the gradient (a + p_y)^(q-1) p_y.
    ("agce", {"a": 1e-7, "q": 1e-8}),
    ("agce", {"a": 1e-30, "q": 3.0}),
    ("nce_agce", {"a": 1e-7, "q": 1e-8}),
    # bitemp: the loss divides by 2 - t1; for t2 near 1 the tempered log must keep its accuracy.
    ("bitemp", {"t1": 2.0 - 1e-7, "t2": 1.2}),
    ("bitemp", {"t1": 0.5, "t2": 1.0 + 1e-7}),
    ("bitemp", {"t1": 0.5, "t2": 1.0 - 1e-7}),
]
# Measured: the fixed backends' worst errors over these cases are 3.4e-6 in the loss (aul at
# a = 1 + 1e-7, q = 3, where fp32's error in log p_y is amplified by q log1p((1 - p_y) / (a - 1))
# ~ 48) and 2.7e-6 in the gradient. Before the fix: native aul 2.3e-5 (a = 1.001) to 0.38,
# agce 5e-3 in the loss (a = 1e-7, every backend) and 100 % in the torch backend's gradient
# (a = 1e-30), bitemp 0.16 (native, t1 -> 2) and 0.9 (torch, t2 -> 1).
PRECISION_TOL = 1e-5


@pytest.mark.parametrize(
    "name, prm, backend",
    [c for name, prm in PRECISION_CASES for c in _params(name, prm)],
)
def test_parameters_near_a_boundary_match_float64(name, prm, backend):
    logits, target = _precision_inputs()
    loss, grad, _ = _run(backend, logits, target, name, **prm)
    want_loss, want_grad, _ = _run("torch", logits.double(), target, name, **prm)
    if name == "bitemp":
        # Not the confident rows: there the bi-tempered loss and its gradient are differences of
        # terms of order 1 - p_y that nearly cancel, in every backend and at any temperature
        # (relative error 1e-3 at t2 = 1): not a property of the parameters tested here.
        loss, grad, want_loss, want_grad = loss[8:], grad[8:], want_loss[8:], want_grad[8:]
    loss_err = ((loss.double() - want_loss).abs() / want_loss.abs()).max().item()
    # Gradient: relative to the largest entry of each row (the label's on confident rows).
    grad_err = ((grad.double() - want_grad).abs().amax(dim=1) / want_grad.abs().amax(dim=1)).max().item()
    assert loss_err <= PRECISION_TOL, f"loss: relative error {loss_err:.2e}"
    assert grad_err <= PRECISION_TOL, f"gradient: relative error {grad_err:.2e}"


# ---- rows with non-finite logits ---------------------------------------------------------------

INF, NAN = math.inf, math.nan
# K = 11: one vector block of 8 float32 lanes (4 float64) and a tail in the CPU kernels, so the
# special values sit in the vector body and in the scalar tail.
_BASE = [0.3, -1.2, 2.0, 0.0, 1.1, -0.4, 0.7, -2.0, 0.5, 1.6, -0.9]
# (name, label, {column: value}, NaN row by the policy)
SPECIAL_ROWS = [
    ("+inf at the label", 2, {2: INF}, True),
    ("+inf at the label in the tail", 9, {9: INF}, True),
    ("+inf elsewhere", 0, {2: INF}, True),
    ("+inf elsewhere in the tail", 0, {10: INF}, True),
    ("+inf at the label and elsewhere", 1, {1: INF, 5: INF}, True),
    ("+inf and -inf", 0, {3: INF, 4: -INF}, True),
    ("NaN at the label", 4, {4: NAN}, True),
    ("NaN elsewhere", 4, {8: NAN}, True),
    ("NaN and +inf", 4, {6: NAN, 10: INF}, True),
    ("all -inf", 3, dict.fromkeys(range(11), -INF), True),
    ("-inf elsewhere", 0, {1: -INF, 9: -INF}, False),
    ("-inf at the label", 6, {6: -INF}, False),
    ("-inf at the label and elsewhere", 6, {6: -INF, 0: -INF}, False),
    ("only the label finite", 5, {j: -INF for j in range(11) if j != 5}, False),
    ("finite", 7, {}, False),
]
# log p_y / sum_k log p_k is -inf / -inf at a -inf label logit: NaN in every backend.
_NCE_FAMILY = {"nce", "nce_mae", "nce_rce", "nce_agce"}


def _special_inputs(dtype):
    logits = torch.tensor([[changes.get(j, v) for j, v in enumerate(_BASE)] for _, _, changes, _ in SPECIAL_ROWS])
    target = torch.tensor([label for _, label, _, _ in SPECIAL_ROWS])
    # A per-row bias (differentiable): the policy reads the biased logits, and a NaN row's bias
    # gets a NaN gradient too (it is the label logit's).
    eps = torch.linspace(-0.5, 1.5, len(SPECIAL_ROWS), dtype=torch.float64)
    return logits.to(dtype), target, eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name, backend", [c for name in rk.LOSSES for c in _params(name)])
def test_non_finite_rows_follow_the_policy(name, backend, dtype):
    """NaN, +inf (at the label or not) and all -inf: NaN loss and NaN gradient in every lane and
    for the bias. -inf entries beside finite ones are legal (p = 0): the float64 reference's
    values, finite gradients (bar NCE's -inf / -inf)."""
    logits, target, eps = _special_inputs(dtype)
    loss, grad, eps_grad = _run(backend, logits, target, name, eps.to(torch.float32))
    want_loss, want_grad, want_eps_grad = _run("torch", logits.double(), target, name, eps)
    for i, (row, label, _, nan_row) in enumerate(SPECIAL_ROWS):
        if nan_row:
            assert torch.isnan(loss[i]), row
            assert torch.isnan(grad[i]).all(), (row, grad[i])
            assert torch.isnan(eps_grad[i]), row
            continue
        if not (name in _NCE_FAMILY and logits[i, label] == -INF):
            assert torch.isfinite(grad[i]).all() and torch.isfinite(eps_grad[i]), (row, grad[i])
        torch.testing.assert_close(loss[i].double(), want_loss[i], rtol=1e-5, atol=1e-6, equal_nan=True, msg=row)
        torch.testing.assert_close(grad[i].double(), want_grad[i], rtol=1e-5, atol=1e-6, equal_nan=True, msg=row)
        torch.testing.assert_close(
            eps_grad[i].double(), want_eps_grad[i], rtol=1e-5, atol=1e-6, equal_nan=True, msg=row
        )
