"""The native backend (robustkernels._C, CPU kernels) against the float64 reference.

Every comparison runs the reference on the same quantised inputs as the kernel (the logits cast
to float64 after rounding to the tested dtype), so tolerances reflect only fp32 arithmetic and
the final rounding of the gradient to the input dtype.
"""

from __future__ import annotations

import math

import independent
import numpy as np
import pytest
import torch

import robustkernels as rk
from robustkernels import _torch_backend, native
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


@pytest.mark.parametrize("eps_case", ["0", "1.7", "per-row"])
@pytest.mark.parametrize("k", [7, 13, 1000, 4099])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_matches_float64_reference(name, dtype, k, eps_case):
    """Values and gradients (random per-row upstream gradient) vs the reference and the
    independent NumPy oracle, on the same quantised inputs."""
    n = 6
    logits, target = _inputs(n, k, dtype, seed=k)
    eps = _eps(eps_case, n)
    upstream = torch.rand(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    loss, grad = _run("native", logits, target, name, eps, upstream=upstream)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype
    ref_loss, ref_grad = _run("torch", logits.double(), target, name, eps, upstream=upstream)
    _assert_close(loss, grad, ref_loss, ref_grad, dtype)
    if k <= 1000:  # the NumPy oracle is slow on the widest rows; the reference covers them
        eps_np = eps.numpy() if isinstance(eps, torch.Tensor) else eps
        spec = rk.get_spec(name)
        want_loss, want_grad = independent.loss_and_grad(
            name, spec.defaults, logits.double().numpy(), target.numpy(), eps_np
        )
        _assert_close(loss, grad, want_loss, want_grad * upstream.numpy()[:, None], dtype)


OTHER_PARAMS = independent.NON_DEFAULT_PARAMS
BITEMP_CASES = [
    {"t1": 0.5, "t2": 1.5, "num_iters": 5},
    {"t1": 0.8, "t2": 1.2, "num_iters": 30},
    {"t1": 1.0, "t2": 1.0, "num_iters": 5},
    {"t1": 0.5, "t2": 1.0, "num_iters": 5},
    {"t1": 0.2, "t2": 0.5, "num_iters": 5},
    {"t1": 1.5, "t2": 0.7, "num_iters": 5},
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(
    "name, prm",
    [(n, p) for n, p in OTHER_PARAMS.items()] + [("bitemp", p) for p in BITEMP_CASES],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{a}={b}" for a, b in v.items()),
)
@pytest.mark.parametrize("k", [29, 1500])
def test_other_parameters(name, prm, dtype, k):
    logits, target = _inputs(5, k, dtype, seed=3)
    loss, grad = _run("native", logits, target, name, 0.9, **prm)
    ref_loss, ref_grad = _run("torch", logits.double(), target, name, 0.9, **prm)
    _assert_close(loss, grad, ref_loss, ref_grad, dtype)


COMBINATIONS = {
    "nfl+ngce+nce+agce": rk.combine({"nfl": 1.0, "ngce": 0.5, "nce": 0.3, "agce": 0.2}),
    "nfl+ngce": rk.combine({"nfl": 0.8, "ngce": 1.7}, nfl={"gamma": 1.9}, ngce={"q": 0.25}),
    "every-label-primitive": rk.combine({n: 0.1 * (i + 1) for i, n in enumerate(PRIMITIVES) if n != "bitemp"}),
}


@pytest.mark.parametrize("k", [7, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("combo", list(COMBINATIONS))
def test_combinations_match_the_reference(combo, dtype, k):
    """combine(...) runs on the kernels without a rebuild, several normalised forms at once
    (their per-element gradient terms add), with a class of p = 0 (the normalised forms of ce
    and focal are 0 there, ngce's is not), an ignored row and per-row eps."""
    spec = COMBINATIONS[combo]
    n = 6
    logits, target = _inputs(n, k, dtype, seed=k + 1)
    logits[2, (target[2] + 1) % k] = -math.inf
    target[4] = -100
    eps = _eps("per-row", n)
    upstream = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss, grad = _run("native", logits, target, spec, eps, upstream=upstream)
    ref_loss, ref_grad = _run("torch", logits.double(), target, spec, eps, upstream=upstream)
    _assert_close(loss, grad, ref_loss, ref_grad, dtype)
    assert torch.equal(grad[4], torch.zeros_like(grad[4]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_confident_rows_do_not_cancel(name, dtype):
    """p_y -> 1: the label gradient p_y - 1 (and 1 - p_y^q ...) must keep its relative accuracy."""
    logits, target = _inputs(4, 50, dtype, seed=9, scale=1.0)
    logits[torch.arange(4), target] = torch.tensor([12.0, 16.0, 20.0, 24.0], dtype=dtype)
    loss, grad = _run("native", logits, target, name, 0.5)
    ref_loss, ref_grad = _run("torch", logits.double(), target, name, 0.5)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-30)
    # elementwise relative accuracy of the label entries (tiny numbers, no absolute slack)
    rows = torch.arange(4)
    tol = 2e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(grad[rows, target].double(), ref_grad[rows, target], rtol=tol, atol=1e-30)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_special_rows_follow_the_policy(name, dtype):
    """NaN rows, all -inf rows, -inf at non-label positions, ignored rows holding garbage and
    invalid labels: the same loss and gradient as the torch backend (NaN where it is NaN)."""
    k = 9
    logits, target = _inputs(8, k, dtype, seed=4)
    logits[0, 3] = math.nan  # NaN row -> NaN
    logits[1] = -math.inf  # all -inf -> NaN
    logits[2, (target[2] + 1) % k] = -math.inf  # one class with p = 0
    logits[3, [(target[3] + 1) % k, (target[3] + 2) % k]] = -math.inf
    target[4] = -100  # ignored, holding NaN and inf
    logits[4, 0], logits[4, 1] = math.nan, math.inf
    logits[5, (target[5] + 1) % k] = math.inf  # +inf: log_softmax is NaN -> NaN row
    target[6] = k  # invalid: out of range
    target[7] = -3  # invalid: negative, not ignore_index
    for reduction in ("none", "sum"):
        got = []
        for fn in (native.robust_loss, _torch_backend.robust_loss):
            # the backend functions directly: robust_loss would raise on the invalid labels
            x = logits.clone().requires_grad_()
            out = fn(x, target, rk.get_spec(name), rk.get_spec(name).resolve({}), 1.3, reduction, -100)
            out.sum().backward()
            got.append((out.detach(), x.grad))
        (loss, grad), (ref_loss, ref_grad) = got
        torch.testing.assert_close(loss.double(), ref_loss.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.isnan(grad[[0, 1, 5, 6, 7]]).all() and torch.equal(grad[4], torch.zeros_like(grad[4]))


@pytest.mark.parametrize("name", ["ce", "nce", "nfl", "nce_agce", "bitemp"])
@pytest.mark.parametrize("k", [37, 4099])
def test_far_from_zero_logits(name, k):
    """Logits around -120 behind a block of -inf (the max must be the true max, or exp underflows),
    and around +3e4 (NCE's sum of log p must not be formed as sum z - K m, which cancels)."""
    for offset, minus_inf_cols in ((-120.0, 8), (3e4, 0)):
        logits, target = _inputs(3, k, torch.float32, seed=5, scale=1.0)
        logits += offset
        logits[:, :minus_inf_cols] = -math.inf
        target[:] = torch.tensor([k - 1, k // 2, minus_inf_cols])
        got, want = _run("native", logits, target, name, 0.5), _run("torch", logits.double(), target, name, 0.5)
        _assert_close(*got, *want, torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mae", "nce_agce", "nf_mae", "bitemp"])
def test_reductions_and_ignore_index(name, reduction):
    logits, target = _inputs(10, 31, torch.float32, seed=8)
    target[[1, 4, 5]] = 3  # ignore_index=3 below: these rows are skipped and not counted
    got, want = [], []
    for backend, out in (("native", got), ("torch", want)):
        x = logits.clone().requires_grad_()
        loss = rk.robust_loss(x, target, name, epsilon=0.7, reduction=reduction, ignore_index=3, backend=backend)
        (2.5 * loss).backward()
        out += [loss.detach(), x.grad]
    _assert_close(got[0], got[1], want[0], want[1], torch.float32)
    assert torch.equal(got[1][[1, 4, 5]], torch.zeros(3, 31))


def test_mean_of_all_ignored_rows_is_nan_with_zero_gradient():
    logits, _ = _inputs(4, 10, torch.float32)
    target = torch.full((4,), -100)
    x = logits.clone().requires_grad_()
    loss = rk.robust_loss(x, target, "gce", backend="native")
    loss.backward()
    assert torch.isnan(loss) and torch.equal(x.grad, torch.zeros_like(x.grad))


def test_per_row_epsilon_gradient():
    logits, target = _inputs(6, 20, torch.float64, seed=2)
    target[2] = -100
    got = []
    for backend in ("native", "torch"):
        x = logits.clone().requires_grad_()
        eps = _eps("per-row", 6).requires_grad_()
        loss = rk.robust_loss(x, target, "nce_agce", epsilon=eps, reduction="sum", backend=backend)
        loss.backward()
        got.append((x.grad, eps.grad))
    torch.testing.assert_close(got[0][0], got[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-10, atol=1e-12)
    assert got[0][1][2] == 0


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck_float64(name):
    """Finite differences through the op, logits and per-row eps. bitemp's implicit gradient
    is exact only for a converged normalisation: 200 fixed-point steps."""
    logits, target = _inputs(4, 6, torch.float64, seed=11, scale=1.0)
    target[1] = -100
    prm = {"num_iters": 200} if name == "bitemp" else {}
    eps = _eps("per-row", 4).requires_grad_()
    for reduction in ("none", "mean"):

        def f(x, e, reduction=reduction):
            return rk.robust_loss(x, target, name, epsilon=e, reduction=reduction, backend="native", **prm)

        assert torch.autograd.gradcheck(f, [logits.clone().requires_grad_(), eps], eps=1e-6, atol=1e-7, rtol=1e-6)


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


@pytest.mark.parametrize("name", [n for n in rk.LOSSES if n != "bitemp"])
@pytest.mark.parametrize("eps_case", ["1.3", "per-row"])
def test_double_backward_matches_torch(name, eps_case):
    """create_graph=True: the gradient is differentiable (through the reference), so gradient
    penalties and Hessian-vector products agree with the torch backend, per-row eps included."""
    logits, target = _inputs(4, 6, torch.float64)
    target[1] = -100  # an ignored row
    prm = OTHER_PARAMS.get(name, {})
    results = {}
    for backend in ("native", "torch"):
        x = logits.clone().requires_grad_()
        eps = _eps(eps_case, 4)
        eps = eps.clone().requires_grad_() if isinstance(eps, torch.Tensor) else eps
        upstream = torch.linspace(0.5, 2.0, 4, dtype=torch.float64)
        rows = rk.robust_loss(x, target, name, epsilon=eps, reduction="none", backend=backend, **prm)
        (g,) = torch.autograd.grad(rows, x, upstream, create_graph=True)
        penalty = (g * torch.cos(torch.arange(24.0, dtype=torch.float64).view(4, 6))).sum()
        inputs = [x, eps] if isinstance(eps, torch.Tensor) else [x]
        results[backend] = (g.detach(), *(t.detach() for t in torch.autograd.grad(penalty, inputs)))
    for got, want in zip(results["native"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert results["native"][1].abs().sum() > 0, "second derivatives must not vanish"


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
