"""One behaviour suite over every backend that runs on this CPU, for the cases of tests/cases.py.

The backends are those ``rk.available_backends("cpu")`` lists: ``torch`` (the reference itself,
run in fp32 against its float64 run), ``native`` when it is built, and ``triton`` in the Triton
interpreter (tests/conftest.py turns it on where there is no GPU). Every result is compared with
the float64 reference on the same quantised inputs (float64 inputs of the torch backend: with the
NumPy oracle of tests/independent.py, as it would otherwise be compared with itself).

Comparisons are relative, per row (max-norm over the row for gradients: gradient entries are
sums that cancel far below the row's scale), with the tolerances of tests/cases.py. Where the
reference is NaN or infinite (a NaN row), the backend must be non-finite too, and the reverse. On
a row whose upstream gradient is inf or NaN the backend may also be non-finite where the
reference is finite: inf * 0 is NaN, and 0 where autograd's masking discards a branch (only an
ignored row must then be 0, as through F.cross_entropy: a test of its own).

The Triton interpreter costs 0.1 s a call (seconds past the single-pass limit and for bitemp's
t2 < 1 bisection), so there each test runs a set of tests/cases.py sized to what it checks: every
loss and setting for the values and gradients, every loss where the loss matters (confident rows,
extreme logits, bf16, double backward), a few cases where it does not (masking, autograd).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cases as case_table
import numpy as np
import pytest
import torch
from cases import CORE, SMALL, TILED, TINY, TRITON, Case, grad_rtol, loss_rtol

import robustkernels as rk
from robustkernels.backends import resolve_backend

BACKENDS = rk.available_backends("cpu")
INF, NAN = math.inf, math.nan


def _params(full: str = CORE, triton: str = TRITON, slow: bool = False) -> list:
    """``(backend, case)`` for every backend, the Triton interpreter running the set ``triton``
    (without its ``slow_on_triton`` cases unless ``slow``)."""
    out = []
    for backend in BACKENDS:
        for case in case_table.cases(triton if backend == "triton" else full):
            if backend == "triton" and case.slow_on_triton and not slow:
                continue
            out.append(pytest.param(backend, case, id=f"{backend}-{case.id}"))
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: intra-op threads only contend (a call of the torch backend took
    7x longer with 2 threads than with 1 on two busy cores, measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---- running a backend and its reference ---------------------------------------------------------


@dataclass
class Result:
    loss: torch.Tensor
    grad: torch.Tensor | None
    eps_grad: torch.Tensor | None


def _inputs(n: int, k: int, dtype=torch.float32, seed: int = 0, scale: float = 3.0):
    """Logits quantised to ``dtype`` and labels in ``[0, K)``."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    return logits, torch.randint(0, k, (n,), generator=g)


def _eps_rows(n: int, dtype=torch.float32, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g, dtype=torch.float64) * 4 - 1).to(dtype)


def _eps_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _run(
    backend: str,
    case: Case,
    logits: torch.Tensor,
    target: torch.Tensor,
    eps=0.0,
    reduction: str = "none",
    upstream=None,
    ignore_index: int = -100,
    params=None,
    direct: bool = False,
) -> Result:
    """The loss and the gradients of ``(loss * upstream).sum()`` w.r.t. the logits and a per-row
    eps. ``direct`` calls the backend function itself (no label check: invalid labels reach it)."""
    x = logits.detach().clone().requires_grad_()
    e = eps.detach().clone().requires_grad_() if isinstance(eps, torch.Tensor) else eps
    params = dict(case.params if params is None else params)
    if direct:
        fn = resolve_backend(backend, torch.device("cpu"))[1]
        spec = case.spec
        e_arg = rk.epsilon_for_classes(logits.shape[1]) if isinstance(e, str) else e
        out = fn(x, target, spec, spec.resolve(params), e_arg, reduction, ignore_index)
    else:
        out = rk.robust_loss(
            x, target, case.loss, epsilon=e, reduction=reduction, ignore_index=ignore_index, backend=backend, **params
        )
    w = torch.ones_like(out) if upstream is None else torch.as_tensor(upstream, dtype=out.dtype)
    inputs = [x, e] if isinstance(e, torch.Tensor) else [x]
    grads = torch.autograd.grad(out, inputs, w, allow_unused=True)
    return Result(out.detach(), grads[0], grads[1] if len(grads) > 1 else None)


def _reference(case: Case, logits, target, eps=0.0, **kw) -> Result:
    """The float64 torch reference on the same quantised inputs."""
    eps64 = eps.detach().double() if isinstance(eps, torch.Tensor) else eps
    upstream = kw.pop("upstream", None)
    if upstream is not None:
        upstream = torch.as_tensor(upstream, dtype=torch.float64)
    return _run("torch", case, logits.detach().double(), target, eps64, upstream=upstream, **kw)


def assert_rows_close(actual, expected, rtol: float, what: str, atol=0.0, scale=None, lenient_rows=None) -> None:
    """Per-row max-norm relative comparison with the NaN / inf rule of the module docstring.

    ``scale`` (one value per row) replaces the row's largest reference entry as the unit of the
    error; a row whose unit is 0 must be exact (bar ``atol``, a number or one per row). On
    ``lenient_rows`` (a row mask: rows whose upstream gradient is not finite) a non-finite entry
    is accepted where the reference has a finite one: inf * 0 is NaN in IEEE arithmetic, and 0
    where autograd's masking ops discard a branch.
    """
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if expected.dim() == 0:
        actual, expected = actual.reshape(1, 1), expected.reshape(1, 1)
    actual, expected = actual.reshape(len(actual), -1), expected.reshape(len(expected), -1)
    finite = torch.isfinite(expected)
    wrong_kind = torch.isfinite(actual) != finite
    if lenient_rows is not None:
        wrong_kind &= ~(lenient_rows[:, None] & ~torch.isfinite(actual))
    assert not wrong_kind.any(), (
        f"{what}: finite where the reference is not (or the reverse) at {wrong_kind.nonzero().tolist()}: "
        f"got {actual[wrong_kind].tolist()}, want {expected[wrong_kind].tolist()}"
    )
    compared = finite & torch.isfinite(actual)
    a = torch.where(compared, actual, 0.0)
    e = torch.where(compared, expected, 0.0)
    err = (a - e).abs().amax(dim=1)
    unit = e.abs().amax(dim=1) if scale is None else scale.detach().double().abs()
    bad = err > rtol * unit + torch.as_tensor(atol, dtype=torch.float64)
    assert not bad.any(), (
        f"{what}: rows {bad.nonzero().flatten().tolist()} relative error "
        f"{(err / unit.clamp_min(1e-300))[bad].tolist()} > {rtol:g} (atol {atol:g})"
    )


def _compare(got: Result, want: Result, case: Case, dtype, backend, what: str = "", grad_atol=0.0, upstream=None):
    """Loss, gradient and eps gradient against the reference. With ``upstream`` (per row) the
    rows where it is not finite are compared leniently (see :func:`assert_rows_close`)."""
    lr, gr = loss_rtol(case, dtype, backend), grad_rtol(case, dtype, backend)
    lenient = None
    if upstream is not None:
        w = torch.as_tensor(upstream).double()
        lenient = ~torch.isfinite(w.expand(want.grad.shape[0]))
    assert_rows_close(got.loss, want.loss, lr, f"{what} loss", atol=case_table.loss_atol(case, dtype))
    assert_rows_close(got.grad, want.grad, gr, f"{what} gradient", atol=grad_atol, lenient_rows=lenient)
    if want.eps_grad is not None:
        # d loss_i / d eps_i is the label entry of row i's gradient: in units of that row.
        unit = torch.where(torch.isfinite(want.grad), want.grad, 0.0).abs().amax(dim=1)
        assert_rows_close(
            got.eps_grad, want.eps_grad, gr, f"{what} eps gradient", atol=grad_atol, scale=unit, lenient_rows=lenient
        )


# ---- values and gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend, case", _params("all", TRITON, slow=True))
def test_values_and_gradients(backend, case):
    """Odd K, a scalar eps, eps="auto" and a per-row eps (and its gradient); a per-row upstream
    gradient with both signs."""
    n = 6
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.25, -1.5, 3.0])
    runs = [(7, 1.3), (13, "auto"), (13, _eps_rows(n))]
    if backend == "triton":  # the interpreter: "auto" (a scalar eps too) at K = 7
        runs = [(7, "auto"), (13, _eps_rows(n))]
    for k, eps in runs:
        logits, target = _inputs(n, k, seed=k)
        got = _run(backend, case, logits, target, eps, upstream=upstream)
        assert got.loss.dtype == torch.float32 and got.grad.dtype == torch.float32
        want = _reference(case, logits, target, eps, upstream=upstream)
        assert torch.isfinite(want.loss).all() and torch.isfinite(want.grad).all()
        _compare(
            got, want, case, torch.float32, backend, f"K={k} eps={eps if isinstance(eps, str | float) else 'rows'}"
        )


#: Rows past each backend's single-pass limit: the CPU kernels' vector body and tail at K = 4099
#: (and the CUDA kernels' limit, where they run); the Triton interpreter at K = 5 with the limit
#: lowered to 4 lanes (column tiles of 2, the last one masked).
_WIDE_K = {"torch": 1000, "native": 4099, "triton": 5}


@pytest.mark.parametrize("backend, case", _params(CORE, TILED))
def test_rows_past_the_single_pass_limit(backend, case, monkeypatch):
    if backend == "triton":
        monkeypatch.setattr("robustkernels.triton.op.max_single_pass_override", 4)
    n = 3
    k = _WIDE_K[backend]
    logits, target = _inputs(n, k, seed=5)
    target[:] = torch.tensor([0, k // 2, k - 1])  # the label in the first, a middle and the last tile
    eps = _eps_rows(n)
    upstream = torch.tensor([1.0, -2.0, 0.5])
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    want = _reference(case, logits, target, eps, upstream=upstream)
    _compare(got, want, case, torch.float32, backend, f"K={k}")


def _dtype_params() -> list:
    out = []
    # The interpreter: SMALL (the kernels' loads and stores do not depend on the loss).
    for backend, case in ((p.values[0], p.values[1]) for p in _params(CORE, SMALL)):
        for dtype in (torch.float64, torch.bfloat16, torch.float16):
            if backend == "torch" and dtype == torch.float64 and not case.oracle_ok:
                continue  # the torch backend in float64 is the reference: compared with the oracle
            out.append(pytest.param(backend, case, dtype, id=f"{backend}-{case.id}-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize("backend, case, dtype", _dtype_params())
def test_other_dtypes(backend, case, dtype):
    """float64 (float64 math), bfloat16 and float16 (fp32 math, the gradient rounded to the
    input dtype). The loss is float64 for float64 logits, float32 otherwise."""
    n, k = 6, 11
    logits, target = _inputs(n, k, dtype, seed=2)
    eps = _eps_rows(n, _eps_dtype(logits))
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.25, -1.5, 3.0])
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    assert got.loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.grad.dtype == dtype
    if dtype == torch.float64 and backend == "torch":
        loss, grad = case.oracle(logits.numpy(), target.numpy(), eps.numpy())
        grad = grad * upstream.double().numpy()[:, None]
        want = Result(torch.from_numpy(np.asarray(loss)), torch.from_numpy(grad), None)
        want.eps_grad = want.grad[torch.arange(n), target]
    else:
        want = _reference(case, logits, target, eps, upstream=upstream)
    # float16 gradients below 6e-5 are subnormal (spacing 2^-24): an absolute floor of one step.
    grad_atol = 2.0**-24 if dtype == torch.float16 else 0.0
    _compare(got, want, case, dtype, backend, str(dtype), grad_atol=grad_atol)


# ---- ignored rows, invalid labels, reductions --------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend, case", _params(CORE, TINY))
def test_ignored_rows_invalid_labels_and_reductions(backend, case, reduction):
    """A custom ignore_index (5, a real class) on rows holding NaN and +inf: loss 0, gradient 0;
    labels K and -100 (not the ignore_index here): NaN rows, never an out-of-bounds access. The
    backend function is called directly, as the public API raises on bad labels on CPU."""
    n, k = 8, 7
    logits, target = _inputs(n, k, seed=8)
    logits[1, 2] = NAN
    logits[4, 0] = INF
    target[[1, 4]] = 5
    target[2] = k
    target[6] = -100
    eps = _eps_rows(n)
    upstream = 2.5 if reduction != "none" else torch.linspace(0.5, 2.0, n)
    got = _run(backend, case, logits, target, eps, reduction, upstream, ignore_index=5, direct=True)
    want = _reference(case, logits, target, eps, reduction=reduction, upstream=upstream, ignore_index=5, direct=True)
    _compare(got, want, case, torch.float32, backend, reduction)
    ignored, invalid = [1, 4], [2, 6]
    assert (got.grad[ignored] == 0).all() and torch.isnan(got.grad[invalid]).all()
    assert (got.eps_grad[ignored + invalid] == 0).all()
    if reduction == "none":
        assert (got.loss[ignored] == 0).all() and torch.isnan(got.loss[invalid]).all()
    else:
        assert got.loss.shape == () and torch.isnan(got.loss)
    # The public API with the same ignore_index and valid labels elsewhere: the mean divides by
    # the rows not ignored.
    target[invalid] = torch.tensor([0, 3])
    got = _run(backend, case, logits, target, eps, reduction, upstream, ignore_index=5)
    want = _reference(case, logits, target, eps, reduction=reduction, upstream=upstream, ignore_index=5)
    _compare(got, want, case, torch.float32, backend, f"{reduction} (API)")
    assert torch.isfinite(got.loss).all() and (got.grad[ignored] == 0).all()


@pytest.mark.parametrize("backend, case", _params(SMALL, TINY))
def test_all_rows_ignored(backend, case):
    """mean: 0 / 0 = NaN, as F.cross_entropy, with a zero gradient; sum: 0; none: zeros."""
    logits, target = _inputs(4, 7, seed=1)
    target[:] = -100
    eps = _eps_rows(4)
    for reduction in ("mean", "sum", "none"):
        got = _run(backend, case, logits, target, eps, reduction)
        if reduction == "mean":
            assert got.loss.shape == () and torch.isnan(got.loss), got.loss
        else:
            assert torch.equal(got.loss, torch.zeros(4 if reduction == "none" else ())), (reduction, got.loss)
        assert torch.equal(got.grad, torch.zeros_like(got.grad)), reduction
        assert torch.equal(got.eps_grad, torch.zeros_like(got.eps_grad)), reduction


# ---- hard inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend, case", _params(CORE, TRITON))
def test_confident_rows_do_not_cancel(backend, case):
    """The label holds the max and 1 - p_y runs from 1e-2 down to 1e-9: 1 - p_y, 1 - p_y^q and
    the label's gradient p_y - 1 must keep their relative accuracy in fp32."""
    n, k = 8, 13
    logits, target = _inputs(n, k, seed=9, scale=1.0)
    logits[torch.arange(n), target] = logits.amax(dim=1) + torch.linspace(6.0, 22.0, n)
    got = _run(backend, case, logits, target, 0.25)
    want = _reference(case, logits, target, 0.25)
    if not case.is_bitemp:
        assert_rows_close(got.loss, want.loss, case.loss_rtol, "loss")
        assert_rows_close(got.grad, want.grad, case.grad_rtol, "gradient")
        return
    # bitemp's loss, -log_t1(p_y) - (1 - sum_k p_k^(2 - t1)) / (2 - t1), is a difference of O(1)
    # terms: fp32 leaves ulp(1) of 1 - sum_k p_k^(2 - t1) (1e-7 at t1 = t2 = 1, where the loss is
    # CE's 1e-9) and 0.5e-4 to 1.3e-4 relative elsewhere, in every backend, the fp32 torch one
    # included (tests/triton/test_triton_edge_cases.py). Its implicit gradient w - s sum_k w_k
    # cancels terms of order 1 - p_y: measured in units of 1 - p_y, the fp32 torch backend's error
    # is 4.1e-6 at most with ATen's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) and 2.1e-5 with its
    # AVX-512 ones, on one Zen 4 machine with torch 2.14.1.
    assert_rows_close(got.loss, want.loss, 2e-4, "loss", atol=case.loss_atol)
    zb = rk.reference.biased_logits(logits.double(), target, 0.25)
    one_minus_py = -torch.expm1(torch.log_softmax(zb, dim=1)[torch.arange(n), target])
    unit = torch.maximum(want.grad.abs().amax(dim=1), one_minus_py)
    rtol = max(case.grad_rtol, 4e-5) if backend == "torch" else case.grad_rtol
    assert_rows_close(got.grad, want.grad, rtol, "gradient", scale=unit)


def _offset_inputs(k: int = 7):
    """Rows shifted by +2e4, -2e4 and +3e4 (the distribution of unshifted rows: log p_k must be
    formed against the max, not as z_k - (max + log sum), which rounds to ulp(3e4) = 2e-3)."""
    logits, target = _inputs(3, k, seed=3, scale=2.0)
    logits += torch.tensor([[2e4], [-2e4], [3e4]])
    return logits, torch.tensor([0, 3, k - 1])


@pytest.mark.parametrize("backend, case", _params(CORE, SMALL))
def test_large_logit_offsets(backend, case):
    """Logits around +-2e4 and 3e4 in fp32: the values of the reference on the same inputs."""
    logits, target = _offset_inputs()
    # Quarter integers: z + eps is exact in fp32 at |z| ~ 1e4 (ulp 2^-10), so the backends and the
    # float64 reference see the same biased logits.
    eps = torch.tensor([0.25, -0.5, 1.0])
    upstream = torch.tensor([1.0, 0.5, -2.0])
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    want = _reference(case, logits, target, eps, upstream=upstream)
    _compare(got, want, case, torch.float32, backend)


def _extreme_inputs(k: int = 7):
    """Rows: a +-1e4 spread with the label at the max (p one-hot) and at -1e4 (p_y = 0 in every
    dtype); -inf off the label (one, and all but one); then NaN, +inf and all -inf rows, NaN
    rows by the policy."""
    logits, target = _inputs(7, k, seed=4, scale=2.0)
    target[:] = torch.tensor([2, 3, 4, 5, 3, 0, 1]) % k
    logits[0, 2], logits[0, 0] = 1e4, -1e4
    logits[1, 3], logits[1, 1] = -1e4, 1e4
    logits[2, 0] = -INF
    logits[3, [j for j in range(k) if j not in (5, 2)]] = -INF
    logits[4, 3] = NAN
    logits[5, 4] = INF
    logits[6] = -INF
    return logits, target


@pytest.mark.parametrize("backend, case", _params(CORE, TRITON))
def test_extreme_logits(backend, case):
    """p one-hot (label at +1e4, or at -1e4 behind a class at +1e4), classes of p = 0 (-inf
    logits), and NaN / +inf / all -inf rows: NaN loss, NaN gradient and NaN eps gradient there,
    the reference's values elsewhere."""
    logits, target = _extreme_inputs()
    eps = torch.tensor([0.25, -0.5, 1.0, 0.75, -0.25, 0.5, 1.5])
    upstream = torch.linspace(0.5, 2.0, 7)
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    want = _reference(case, logits, target, eps, upstream=upstream)
    nan_rows, finite = [4, 5, 6], [0, 1, 2, 3]
    assert torch.isnan(got.loss[nan_rows]).all() and torch.isnan(got.grad[nan_rows]).all()
    assert torch.isnan(got.eps_grad[nan_rows]).all()
    assert torch.isfinite(got.grad[finite]).all() and torch.isfinite(got.loss[finite]).all()
    assert got.grad[2, 0] == 0 and (got.grad[3][logits[3] == -INF] == 0).all(), "a class of p = 0"
    # Where p is one-hot the gradient is 0 or small, and fp32 leaves rounding of the terms it is
    # formed from: 4 ulp(1) of the row's loss (native ngce + nce: 7e-10 at a loss of 0.3 in a
    # 1.3e-5 gradient; the torch backend's log_softmax backward 2e-9 at 0.7). bitemp's loss and
    # implicit gradient are differences of O(1) terms: 4 ulp(1) absolute (tests/triton/).
    ulp4 = 4 * 2.0**-24
    grad_atol = ulp4 * (torch.ones_like(want.loss) if case.is_bitemp else want.loss.abs())
    assert_rows_close(got.loss, want.loss, case.loss_rtol, "loss", atol=case.loss_atol)
    assert_rows_close(got.grad, want.grad, case.grad_rtol, "gradient", atol=grad_atol)
    unit = torch.where(torch.isfinite(want.grad), want.grad, 0.0).abs().amax(dim=1)
    assert_rows_close(got.eps_grad, want.eps_grad, case.grad_rtol, "eps gradient", atol=grad_atol, scale=unit)


@pytest.mark.parametrize("backend, case", _params(CORE, TINY))
def test_non_contiguous_inputs(backend, case):
    """A column slice of a wider NaN-padded tensor (row stride 12), a transposed tensor (column
    stride N), strided int64 / int32 labels and a strided per-row eps: the same as the reference,
    and no byte outside the view read or written."""
    n, k = 6, 7
    logits, target = _inputs(n, k, seed=6)
    eps = _eps_rows(n)
    upstream = torch.linspace(-1.0, 2.0, n)
    want = _reference(case, logits, target, eps, upstream=upstream)
    labels = torch.stack([target, torch.full_like(target, 99)], 1)[:, 0]
    eps_strided = torch.stack([eps, torch.full_like(eps, NAN)], 1)[:, 0].detach().requires_grad_()

    wide = torch.full((n, k + 5), NAN)
    wide[:, 2 : 2 + k] = logits
    wide.requires_grad_()
    transposed = logits.t().contiguous().requires_grad_()
    for leaf, view, y in ((wide, wide[:, 2 : 2 + k], labels), (transposed, transposed.t(), labels.int())):
        before = leaf.detach().clone()
        out = rk.robust_loss(view, y, case.loss, epsilon=eps_strided, reduction="none", backend=backend, **case.params)
        leaf.grad, eps_strided.grad = None, None
        out.backward(upstream)
        grad = leaf.grad[:, 2 : 2 + k] if leaf is wide else leaf.grad.t()
        _compare(Result(out.detach(), grad, eps_strided.grad), want, case, torch.float32, backend, str(view.stride()))
        torch.testing.assert_close(leaf.detach(), before, rtol=0.0, atol=0.0, equal_nan=True)
        if leaf is wide:
            assert (leaf.grad[:, :2] == 0).all() and (leaf.grad[:, 2 + k :] == 0).all()


@pytest.mark.parametrize("backend, case", _params(CORE, TINY))
def test_random_upstream_gradients(backend, case):
    """reduction="none" with an upstream gradient holding 0, inf, -inf, NaN, a tiny and negative
    values: what autograd through the reference gives (non-finite where it is)."""
    n, k = 8, 7
    logits, target = _inputs(n, k, seed=10)
    logits[2, (target[2] + 1) % k] = -INF  # an inf upstream times a zero entry
    eps = _eps_rows(n)
    upstream = torch.tensor([0.7, 0.0, INF, NAN, -INF, -2.0, 1e-30, 3.5])
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    want = _reference(case, logits, target, eps, upstream=upstream)
    _compare(got, want, case, torch.float32, backend, upstream=upstream)
    assert (got.grad[1] == 0).all() and torch.isnan(got.grad[3]).all()


@pytest.mark.parametrize("backend, case", _params(SMALL, TINY))
def test_ignored_rows_get_zero_gradient_whatever_the_upstream(backend, case):
    """An ignored row's loss is the constant 0: its gradient is 0 for an upstream gradient of
    inf or NaN too, as through the reference (masked_fill's backward) and F.cross_entropy."""
    n, k = 6, 7
    logits, target = _inputs(n, k, seed=12)
    target[[1, 3]] = -100
    eps = _eps_rows(n)
    upstream = torch.tensor([1.0, INF, 2.0, NAN, -1.0, 0.5])
    got = _run(backend, case, logits, target, eps, upstream=upstream)
    assert torch.equal(got.grad[[1, 3]], torch.zeros(2, k)), got.grad[[1, 3]]
    assert torch.equal(got.eps_grad[[1, 3]], torch.zeros(2)), got.eps_grad
    want = _reference(case, logits, target, eps, upstream=upstream)
    _compare(got, want, case, torch.float32, backend, upstream=torch.where(target == -100, 1.0, upstream))


# ---- autograd ------------------------------------------------------------------------------------

_UPSTREAM_SEQUENCES = {
    "none": [
        torch.tensor([1.0, -0.5, 2.0, 0.25, 3.0]),
        torch.zeros(5),
        torch.tensor([INF, 1.0, NAN, -INF, 0.0]),
        torch.ones(5),
        torch.tensor([0.5, 0.0, -3.0, 1e-20, 7.0]),
    ],
    "mean": [1.0, 0.0, INF, NAN, -2.5, 1.0],
    "sum": [1.0, 0.0, NAN, INF, 3.0, 1.0],
}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend, case", _params(SMALL, TINY))
def test_a_sequence_of_backwards_with_retain_graph(backend, case, reduction):
    """One forward, then backwards with upstream gradients 0, inf, NaN, per row: each gives what
    autograd through the reference gives for it (a non-finite upstream must not poison a later
    backward), and backward() accumulates into .grad."""
    n, k = 5, 7
    logits, target = _inputs(n, k, seed=13)
    x = logits.clone().requires_grad_()
    eps = _eps_rows(n).requires_grad_()
    out = rk.robust_loss(x, target, case.loss, epsilon=eps, reduction=reduction, backend=backend, **case.params)
    x64 = logits.double().requires_grad_()
    eps64 = eps.detach().double().requires_grad_()
    ref = rk.robust_loss(x64, target, case.loss, epsilon=eps64, reduction=reduction, backend="torch", **case.params)
    for i, w in enumerate(_UPSTREAM_SEQUENCES[reduction]):
        w = torch.as_tensor(w)
        gx, ge = torch.autograd.grad(out, [x, eps], w.float(), retain_graph=True)
        wx, we = torch.autograd.grad(ref, [x64, eps64], w.double(), retain_graph=True)
        got, want = Result(out.detach(), gx, ge), Result(ref.detach(), wx, we)
        _compare(got, want, case, torch.float32, backend, f"#{i}", upstream=w)
    out.backward(torch.ones_like(out), retain_graph=True)
    first = x.grad.clone()
    out.backward(torch.ones_like(out))
    ref.backward(torch.ones_like(ref))
    assert_rows_close(first, x64.grad, case.grad_rtol, "first backward")
    torch.testing.assert_close(x.grad, 2 * first, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("backend, case", _params(SMALL, TINY))
def test_a_returned_gradient_edited_in_place_does_not_change_the_next_backward(backend, case, reduction):
    """The first backward may hand its buffer to the caller; editing it (g.mul_(7), gradient
    clipping on .grad) must not reach a later backward."""
    logits, target = _inputs(5, 7, seed=14)
    x = logits.clone().requires_grad_()
    out = rk.robust_loss(x, target, case.loss, epsilon=0.8, reduction=reduction, backend=backend, **case.params)
    w = torch.ones_like(out) if reduction != "none" else torch.linspace(0.5, 1.5, 5)
    (g,) = torch.autograd.grad(out, x, w, retain_graph=True)
    first = g.clone()
    g.mul_(7)
    (again,) = torch.autograd.grad(out, x, w, retain_graph=True)
    torch.testing.assert_close(again, first, rtol=1e-6, atol=0.0)
    out.backward(w, retain_graph=True)
    x.grad.mul_(100.0)  # .grad adopted from the buffer and clipped in place
    x.grad = None
    out.backward(w)
    torch.testing.assert_close(x.grad, first, rtol=1e-6, atol=0.0)
    want = _reference(case, logits, target, 0.8, reduction=reduction, upstream=w)
    assert_rows_close(first, want.grad, case.grad_rtol, "gradient")


def _gradcheck_ok(backend: str, case: Case) -> bool:
    """Finite differences resolve the gradient (not at t1 -> 2, tests/cases.py); on the Triton
    interpreter not bitemp with t2 > 1, whose converged fixed point (200 iterations) costs 5 s a
    call there (its t2 <= 1 branches converge by construction and run)."""
    if not case.fd_ok:
        return False
    return not (backend == "triton" and case.is_bitemp and case.temperatures[1] > 1.0)


def _gradcheck_inputs():
    logits, target = _inputs(3, 5, torch.float64, seed=11, scale=1.0)
    target[1] = -100
    eps = _eps_rows(3, torch.float64)
    return logits, target, eps


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("backend, case", [p for p in _params(CORE, TINY) if _gradcheck_ok(*p.values)])
def test_gradcheck(backend, case, reduction):
    """Finite differences through the whole call, logits and per-row eps (an ignored row
    included); bitemp's fixed point converged (its implicit gradient is exact only then).
    gradcheck's fast mode (random projections of the Jacobian): the elementwise slow mode runs
    for every loss in tests/test_reference.py (torch) and tests/test_native.py."""
    logits, target, eps = _gradcheck_inputs()
    params = case.converged()

    def f(x, e):
        return rk.robust_loss(x, target, case.loss, epsilon=e, reduction=reduction, backend=backend, **params)

    inputs = [logits.clone().requires_grad_(), eps.clone().requires_grad_()]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@pytest.mark.parametrize("backend, case", _params(CORE, TINY))
def test_jacobian(backend, case):
    """torch.autograd.functional.jacobian of the per-row losses (fp32): block diagonal (a row
    depends on its own logits only), the blocks the reference's rows."""
    n, k = 3, 5
    logits, target = _inputs(n, k, seed=15)

    def f(backend_, dtype):
        def rows(x):
            return rk.robust_loss(x, target, case.loss, epsilon=0.6, reduction="none", backend=backend_, **case.params)

        return torch.autograd.functional.jacobian(rows, logits.to(dtype))

    jac = f(backend, torch.float32)
    want = f("torch", torch.float64)
    assert jac.shape == (n, n, k)
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    assert (jac[off_diagonal] == 0).all() and (want[off_diagonal] == 0).all()
    rows = torch.arange(n)
    assert_rows_close(jac[rows, rows], want[rows, rows], case.grad_rtol, "jacobian")


@pytest.mark.parametrize("backend, case", _params(CORE, SMALL))
def test_double_backward(backend, case):
    """create_graph=True, then the gradient of a function of the gradient (a gradient penalty)
    w.r.t. the logits and a per-row eps: as through the reference (the torch backend: against
    finite differences, gradgradcheck). bitemp's implicit gradient is once-differentiable and
    raises a clear error instead."""
    logits, target, eps = _gradcheck_inputs()
    upstream = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    weights = torch.cos(torch.arange(15.0, dtype=torch.float64)).view(3, 5)

    def second(backend_):
        x = logits.clone().requires_grad_()
        e = eps.clone().requires_grad_()
        rows = rk.robust_loss(x, target, case.loss, epsilon=e, reduction="none", backend=backend_, **case.params)
        (g,) = torch.autograd.grad(rows, x, upstream, create_graph=True)
        penalty = (g * weights).sum() + (g**2).sum()
        return Result(penalty.detach().reshape(1), *torch.autograd.grad(penalty, [x, e]))

    if case.is_bitemp:
        with pytest.raises(RuntimeError, match="bitemp: double backward"):
            second(backend)
        return
    got = second(backend)
    want = second("torch")
    assert got.grad.abs().sum() > 0, "second derivatives must not vanish"
    tol = case_table.FP64_RTOL[backend]
    assert_rows_close(got.loss, want.loss, tol, "penalty")
    assert_rows_close(got.grad, want.grad, tol, "d penalty / d logits")
    assert_rows_close(got.eps_grad[None], want.eps_grad[None], tol, "d penalty / d eps")
    if backend == "torch":

        def f(x, e):
            return rk.robust_loss(x, target, case.loss, epsilon=e, reduction="none", backend="torch", **case.params)

        inputs = [logits.clone().requires_grad_(), eps.clone().requires_grad_()]
        assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_every_loss_runs_on_every_backend():
    """Guard of the parametrisation: each backend gets every loss of rk.LOSSES at least once."""
    for backend in BACKENDS:
        names = {c.spec.name for b, c in (p.values for p in _params("all", TRITON)) if b == backend}
        assert set(rk.LOSSES) <= names, (backend, set(rk.LOSSES) - names)
