"""What is particular to the native backend (robustkernels._C): its op schemas and generated
tables, opcheck, the in-place scaling op, the gradient buffer's lifetime, bit-identical results
across strides and thread counts, torch.compile, the op's own argument checks, and the CUDA
kernels where a GPU is present. The behaviour every backend shares (values, gradients, edge
cases, autograd) is tests/test_behaviour.py.

Comparisons run the reference on the same quantised inputs as the kernel (the logits cast to
float64 after rounding to the tested dtype), so tolerances reflect only fp32 arithmetic and the
final rounding of the gradient to the input dtype.
"""

from __future__ import annotations

import math

import independent
import numpy as np
import pytest
import torch

import robustkernels as rk
from robustkernels import native
from robustkernels.specs import KERNEL_SLOTS, PRIMITIVES

pytestmark = pytest.mark.skipif(
    native.unavailable_reason(torch.device("cpu")) is not None,
    reason=f"native backend unavailable: {native.unavailable_reason(torch.device('cpu'))}",
)

LOSS_NAMES = list(rk.LOSSES)
OPS = torch.ops.robustkernels
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# Final rounding of the gradient to the input dtype (twice for reduction="none": once in the
# forward, once when the per-row upstream gradient is applied), relative to the largest entry.
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 5e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# The loss is accumulated in fp32 (fp64 for float64) whatever the input dtype.
LOSS_TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def _inputs(n, k, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


def _eps(case, n):
    if case == "per-row":
        return torch.rand(n, generator=torch.Generator().manual_seed(123), dtype=torch.float64) * 4 - 1
    return float(case)


def _run(backend, logits, target, name, eps, reduction="none", upstream=None, **prm):
    """Loss and d(loss . upstream)/d logits of one backend."""
    x = logits.clone().requires_grad_()
    out = rk.robust_loss(x, target, name, epsilon=eps, reduction=reduction, backend=backend, **prm)
    weight = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (out * weight).sum().backward()
    return out.detach(), x.grad


def _assert_close(got_loss, got_grad, want_loss, want_grad, dtype):
    want_loss, want_grad = torch.as_tensor(want_loss), torch.as_tensor(want_grad)
    tol = LOSS_TOL[dtype]
    torch.testing.assert_close(got_loss.double(), want_loss.double(), rtol=tol, atol=tol, equal_nan=True)
    gtol = GRAD_TOL[dtype]
    atol = gtol * float(want_grad.abs().max())
    if dtype == torch.float16:
        atol = max(atol, 2.0**-23)  # float16 gradients below 6e-5 are subnormal: spacing 2^-24
    torch.testing.assert_close(got_grad.double(), want_grad.double(), rtol=gtol, atol=atol, equal_nan=True)


def _op_args(name, **prm):
    """``(terms, params)`` of the op for a loss: its term mask and every kernel slot's value."""
    spec = rk.get_spec(name)
    return spec.kernel_args(spec.resolve(prm))


def test_slot_tables_match_specs():
    """The C++ slot table and primitive bits are the ones of specs.KERNEL_SLOTS / PRIMITIVES."""
    assert OPS.num_slots() == len(KERNEL_SLOTS)
    assert [OPS.slot_name(i) for i in range(OPS.num_slots())] == list(KERNEL_SLOTS)
    assert [OPS.primitive_name(p.bit) for p in PRIMITIVES.values()] == list(PRIMITIVES)
    assert OPS.primitive_name(len(PRIMITIVES)) == ""


def test_gradcheck_bitemp_below_one_with_zero_probabilities():
    logits = torch.tensor([[3.0, 0.0, -9.0, 1.0], [0.5, -7.0, 2.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([0, 2])

    def f(x):
        return rk.robust_loss(x, target, "bitemp", t1=0.5, t2=0.5, reduction="none", backend="native")

    assert torch.autograd.gradcheck(f, [logits.clone().requires_grad_()], eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "name, reduction, dtype, eps_rows, compute_grad",
    [
        ("gce", 0, torch.float64, False, True),
        ("nce_agce", 1, torch.float32, True, True),
        ("nf_mae", 2, torch.float64, False, True),
        ("bitemp", 1, torch.float64, False, True),
        ("mae", 1, torch.bfloat16, False, True),
        ("mae", 0, torch.float32, False, False),
    ],
)
def test_opcheck(name, reduction, dtype, eps_rows, compute_grad):
    logits, target = _inputs(5, 11, dtype)
    eps = _eps("per-row", 5).float() if eps_rows else None
    terms, params = _op_args(name)
    args = (logits.requires_grad_(), target, eps, 0.8, terms, params, -100)
    torch.library.opcheck(OPS.loss_forward.default, (*args, reduction, compute_grad))


def test_opcheck_scale_grad():
    grad = torch.randn(4, 7)
    torch.library.opcheck(OPS.scale_grad_.default, (grad, torch.tensor(2.0)))
    torch.library.opcheck(OPS.scale_grad_.default, (grad, torch.rand(4)))


def test_scale_grad_one_leaves_the_buffer_untouched_and_other_values_scale():
    grad = torch.randn(3, 5)
    before = grad.clone()
    OPS.scale_grad_(grad, torch.tensor(1.0))
    assert torch.equal(grad, before)
    OPS.scale_grad_(grad, torch.tensor(-2.0))
    assert torch.equal(grad, -2 * before)
    rows = torch.tensor([1.0, 0.5, 3.0])
    OPS.scale_grad_(grad, rows)
    torch.testing.assert_close(grad, -2 * before * rows[:, None])


def test_forward_only_has_no_gradient_buffer():
    logits, target = _inputs(4, 10, torch.float32)
    loss, grad = OPS.loss_forward(logits, target, None, 0.0, *_op_args("mae"), -100, 1, False)
    assert grad.numel() == 0
    with torch.no_grad():
        x = logits.clone().requires_grad_()
        out = rk.robust_loss(x, target, "mae", backend="native")
    assert not out.requires_grad
    torch.testing.assert_close(out, loss)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_repeated_backward_with_retain_graph(reduction):
    """The first backward hands its buffer to autograd; later ones recompute: every call adds
    the right gradient whatever happened to the buffer in between."""
    logits, target = _inputs(6, 17, torch.float32, seed=5)
    x = logits.clone().requires_grad_()
    loss = rk.robust_loss(x, target, "nce_agce", epsilon=1.0, reduction=reduction, backend="native")
    ref_x = logits.clone().requires_grad_()
    ref = rk.robust_loss(ref_x, target, "nce_agce", epsilon=1.0, reduction=reduction, backend="torch")
    ref.sum().backward()
    loss.sum().backward(retain_graph=True)
    first = x.grad.clone()
    x.grad.mul_(100.0)  # the adopted buffer modified in place, e.g. by gradient clipping
    x.grad = None
    (3 * loss).sum().backward(retain_graph=True)
    (-1 * loss).sum().backward()
    torch.testing.assert_close(first, ref_x.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(x.grad, 2 * ref_x.grad, rtol=1e-5, atol=1e-7)


def test_gradient_is_a_fresh_buffer_and_inputs_are_untouched():
    logits, target = _inputs(4, 12, torch.float32)
    x = logits.clone().requires_grad_()
    eps = _eps("per-row", 4).float()
    eps_before = eps.clone()
    loss = rk.robust_loss(x, target, "gce", epsilon=eps, backend="native")
    loss.backward()
    assert x.grad.data_ptr() != x.data_ptr()
    assert torch.equal(x.detach(), logits) and torch.equal(eps, eps_before)


def test_gradgradcheck_and_bitemp_refuses_double_backward():
    logits, target = _inputs(3, 5, torch.float64)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: rk.robust_loss(z, target, "gce", epsilon=0.4, backend="native"), x)
    for backend in ("native", "torch"):
        loss = rk.robust_loss(x, target, "bitemp", backend=backend)
        with pytest.raises(RuntimeError, match="bitemp: double backward"):
            torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("name", ["mae", "nf_mae", "bitemp"])
def test_strided_inputs_give_the_same_bits(name):
    """Rows read through their row stride (no copy), a transposed view (copied), strided
    labels (int32 and int64) and a strided per-row eps."""
    logits, target = _inputs(8, 40, torch.float32, seed=6)
    eps = _eps("per-row", 8).float()
    want_loss, want_grad = _run("native", logits, target, name, eps)
    wide = torch.full((8, 50), math.nan)
    wide[:, 5:45] = logits
    transposed = logits.t().contiguous().t()
    labels = torch.stack([target, torch.zeros_like(target)], 1)[:, 0]
    eps_strided = torch.stack([eps, eps], 1)[:, 1]
    for view in (wide[:, 5:45], transposed):
        for t in (labels, labels.int()):
            loss, grad = _run("native", view, t, name, eps_strided)
            assert torch.equal(loss, want_loss) and torch.equal(grad, want_grad)


def test_same_bits_with_one_and_two_threads():
    logits, target = _inputs(300, 1000, torch.float32, seed=1)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for name in ("gce", "nf_mae", "bitemp"):
                for reduction in ("none", "mean"):
                    results.append(_run("native", logits, target, name, 1.0, reduction=reduction))
    finally:
        torch.set_num_threads(previous)
    half = len(results) // 2
    for (l1, g1), (l2, g2) in zip(results[:half], results[half:]):
        assert torch.equal(l1, l2) and torch.equal(g1, g2)


def test_torch_compile_fullgraph_small_model():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x = torch.randn(64, 12)
    target = torch.randint(0, 10, (64,))

    def step(inputs, labels, eps):
        return rk.robust_loss(model(inputs), labels, "nce_agce", epsilon=eps, backend="native", alpha=2.0)

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(x, target, 1.5)
    got.backward()
    got_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = step(x, target, 1.5)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, p in zip(got_grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_backend_contract():
    assert native.unavailable_reason(torch.device("cpu")) is None
    assert "meta" in native.unavailable_reason(torch.device("meta"))
    assert "native" in rk.available_backends("cpu")
    logits, target = _inputs(3, 4, torch.float32)
    assert rk.robust_loss(logits, target, "ce", backend="native").dtype == torch.float32


# ---- bad input -------------------------------------------------------------------------------------

_GCE_TERMS, _GCE_PARAMS = _op_args("gce")
_BITEMP_TERMS, _BITEMP_PARAMS = _op_args("bitemp")
_ITERS = KERNEL_SLOTS.index("bitemp_num_iters")
_GOOD = dict(
    logits=torch.zeros(3, 4),
    target=torch.zeros(3, dtype=torch.long),
    epsilon_rows=None,
    epsilon=0.0,
    terms=_GCE_TERMS,
    params=_GCE_PARAMS,
    ignore_index=-100,
    reduction=1,
    compute_grad=True,
)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"logits": torch.zeros(3)}, "logits must be 2-D"),
        ({"logits": torch.zeros(3, 1)}, "at least 2 classes"),
        ({"logits": torch.zeros(3, 4, dtype=torch.int32)}, "logits must be float64"),
        ({"target": torch.zeros(2, dtype=torch.long)}, "target must be 1-D"),
        ({"target": torch.zeros(3)}, "target must be int64 or int32"),
        ({"epsilon_rows": torch.zeros(2)}, "epsilon_rows must be 1-D"),
        ({"epsilon_rows": torch.zeros(3, dtype=torch.float16)}, "epsilon_rows must be float32 or float64"),
        ({"terms": 0}, "terms must be a non-zero bit mask of primitives"),
        ({"terms": -1}, "terms must be a non-zero bit mask of primitives"),
        ({"terms": 1 << len(PRIMITIVES)}, "terms must be a non-zero bit mask of primitives"),
        ({"terms": _BITEMP_TERMS | 1}, "terms: bitemp .* cannot be combined"),
        ({"params": []}, f"params must hold the {len(KERNEL_SLOTS)} slot values"),
        ({"params": [0.7]}, f"params must hold the {len(KERNEL_SLOTS)} slot values"),
        ({"params": _GCE_PARAMS + [0.0]}, f"params must hold the {len(KERNEL_SLOTS)} slot values"),
        (
            {"terms": _BITEMP_TERMS, "params": [*_BITEMP_PARAMS[:_ITERS], 2.5, *_BITEMP_PARAMS[_ITERS + 1 :]]},
            "bitemp_num_iters must be an integer",
        ),
        (
            {"terms": _BITEMP_TERMS, "params": [*_BITEMP_PARAMS[:_ITERS], 0.0, *_BITEMP_PARAMS[_ITERS + 1 :]]},
            "bitemp_num_iters must be an integer",
        ),
        ({"reduction": 3}, "reduction must be"),
    ],
)
def test_op_rejects_bad_input(change, message):
    with pytest.raises(RuntimeError, match=message):
        OPS.loss_forward(**{**_GOOD, **change})


@pytest.mark.parametrize(
    "grad, grad_output, message",
    [
        (torch.zeros(3), torch.tensor(1.0), "grad must be a contiguous"),
        (torch.zeros(4, 3).t(), torch.tensor(1.0), "grad must be a contiguous"),
        (torch.zeros(3, 4), torch.zeros(4), "grad_output must be a scalar or"),
        (torch.zeros(3, 4), torch.tensor(1), "grad_output must be floating point"),
    ],
)
def test_scale_grad_rejects_bad_input(grad, grad_output, message):
    with pytest.raises(RuntimeError, match=message):
        OPS.scale_grad_(grad, grad_output)


def test_public_api_errors_reach_the_native_backend_user():
    logits, target = _inputs(3, 4, torch.float32)
    with pytest.raises(ValueError, match="target"):
        rk.robust_loss(logits, torch.tensor([0, 4, 1]), "mae", backend="native")
    with pytest.raises(ValueError, match="'q'"):
        rk.robust_loss(logits, target, "gce", q=2.0, backend="native")


# ---- CUDA (compiled in CI, run where a GPU exists) ----------------------------------------------

_CUDA_NATIVE = torch.cuda.is_available() and native.unavailable_reason(torch.device("cuda")) is None


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA_NATIVE, reason="needs a CUDA device and the CUDA kernels")
@pytest.mark.parametrize("k", [7, 13, 1000, 1024, 4099])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_cuda_matches_float64_reference(name, dtype, k):
    n = 37
    logits, target = _inputs(n, k, dtype, seed=k)
    target[3] = -100
    eps = _eps("per-row", n)
    upstream = torch.rand(n, dtype=torch.float64)
    loss, grad = _run("native", logits.cuda(), target.cuda(), name, eps.cuda(), upstream=upstream.cuda())
    ref_loss, ref_grad = _run("torch", logits.double(), target, name, eps, upstream=upstream)
    _assert_close(loss.cpu(), grad.cpu(), ref_loss, ref_grad, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA_NATIVE, reason="needs a CUDA device and the CUDA kernels")
@pytest.mark.parametrize("name", ["mae", "nfl", "bitemp"])
def test_cuda_special_rows_mean_and_strides(name):
    logits, target = _inputs(9, 1000, torch.float32, seed=3)
    logits[0, 5] = math.nan
    logits[1, (target[1] + 1) % 1000] = -math.inf
    target[2] = -100
    wide = torch.zeros(9, 1003)
    wide[:, 1:1001] = logits
    for view in (logits, wide[:, 1:1001]):  # aligned (128-bit loads) and misaligned rows
        got = _run("native", view.cuda(), target.int().cuda(), name, 1.0, reduction="mean")
        want = _run("native", view, target, name, 1.0, reduction="mean")
        torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(got[1].cpu(), want[1], rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.cuda
@pytest.mark.skipif(not _CUDA_NATIVE, reason="needs a CUDA device and the CUDA kernels")
def test_cuda_scale_grad_and_opcheck():
    grad = torch.randn(5, 9, device="cuda")
    before = grad.clone()
    OPS.scale_grad_(grad, torch.tensor(1.0, device="cuda"))
    assert torch.equal(grad, before)
    OPS.scale_grad_(grad, torch.tensor(0.5, device="cuda"))
    assert torch.equal(grad, 0.5 * before)
    logits, target = _inputs(5, 300, torch.float32)
    args = (logits.cuda().requires_grad_(), target.cuda(), None, 0.8, *_op_args("gce"), -100, 1, True)
    torch.library.opcheck(OPS.loss_forward.default, args)


def test_numpy_oracle_is_exercised():
    """Guard: the oracle comparison above runs for K <= 1000 (not silently skipped)."""
    loss, grad = independent.loss_and_grad("mae", {"scale": 2.0}, np.zeros((1, 3)), np.array([0]))
    assert loss[0] == pytest.approx(2 * (1 - 1 / 3))
