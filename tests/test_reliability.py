"""What a new user and a hostile input do to the public API: copies and pickles of the modules,
NumPy numbers, non-finite per-row biases, torch.compile(dynamic=True), torch.func transforms,
module attributes, and the documented differences from Google's bi-tempered loss."""

import copy
import io
import pickle
from pathlib import Path

import independent
import numpy as np
import pytest
import torch
from torch.func import grad, hessian, jacrev, vjp, vmap

import robustkernels as rk

BACKENDS = rk.available_backends("cpu")
FUSED = [b for b in BACKENDS if b != "torch"]


def _batch(n=6, k=7, dtype=torch.float64):
    return torch.randn(n, k, dtype=dtype), torch.randint(0, k, (n,))


# ---- modules: copy, pickle, save, EMA/SWA wrappers -------------------------------------------


@pytest.mark.parametrize("name", list(rk.LOSSES))
def test_modules_deepcopy_pickle_and_torch_save(name):
    crit = getattr(rk, rk.LOSSES[name].class_name)(epsilon=0.7, backend="torch")
    x, y = _batch()
    expected = crit(x, y)
    buffer = io.BytesIO()
    torch.save(crit, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(crit), pickle.loads(pickle.dumps(crit)), torch.load(buffer, weights_only=False)]
    for other in copies:
        assert type(other) is type(crit) and other.spec is crit.spec
        assert other.params == crit.params and repr(other) == repr(crit)
        torch.testing.assert_close(other(x, y), expected, rtol=0, atol=0)


def test_swa_and_deepcopy_of_a_model_holding_the_criterion():
    model = torch.nn.Linear(3, 5)
    model.criterion = rk.GCELoss(q=0.5, epsilon="auto")
    averaged = torch.optim.swa_utils.AveragedModel(model)
    assert averaged.module.criterion.q == 0.5
    assert copy.deepcopy(model).criterion.spec is rk.LOSSES["gce"]


def test_specs_pickle_by_name():
    for spec in rk.LOSSES.values():
        assert pickle.loads(pickle.dumps(spec)) is spec
        assert copy.deepcopy(spec) is spec


# ---- module attributes ------------------------------------------------------------------------


def test_hyper_parameters_are_attributes_that_apply():
    crit = rk.GCELoss(q=0.5, backend="torch")
    x, y = _batch()
    crit.q = 0.9
    assert crit.q == 0.9 and crit.params == {"q": 0.9}
    torch.testing.assert_close(crit(x, y), rk.robust_loss(x, y, "gce", q=0.9, backend="torch"))
    assert "q=0.9" in repr(crit)
    with pytest.raises(ValueError, match="'q'=5.0 is outside its valid range"):
        crit.q = 5.0
    assert crit.q == 0.9
    with pytest.raises(TypeError, match="'q' must be a Python number"):
        crit.q = "0.5"


def test_params_view_is_a_copy_and_reduction_is_validated():
    crit = rk.NCEAGCELoss()
    crit.params["alpha"] = 123.0  # a copy: changing it must not change the loss silently
    assert crit.alpha == 1.0
    with pytest.raises(ValueError, match="reduction must be"):
        crit.reduction = "avg"
    with pytest.raises(AttributeError):
        _ = crit.q_typo


# ---- NumPy numbers and large integers ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_scalars_are_numbers(backend):
    x, y = _batch(dtype=torch.float32)
    expected = rk.robust_loss(x, y, "agce", a=0.5, q=0.25, epsilon=1.5, ignore_index=-100, backend=backend)
    for cast in (np.float32, np.float64, np.float16):
        got = rk.robust_loss(
            x, y, "agce", a=cast(0.5), q=cast(0.25), epsilon=cast(1.5), ignore_index=np.int64(-100), backend=backend
        )
        torch.testing.assert_close(got, expected)
    got = rk.robust_loss(x, y, "bitemp", num_iters=np.int32(5), backend=backend)
    torch.testing.assert_close(got, rk.robust_loss(x, y, "bitemp", num_iters=5, backend=backend))


def test_bad_numbers_name_the_argument():
    x, y = _batch()
    with pytest.raises(ValueError, match="ignore_index=.* outside the int64 range"):
        rk.robust_loss(x, y, ignore_index=2**70)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        rk.robust_loss(x, y, ignore_index=np.float64(-100))
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        rk.robust_loss(x, y, ignore_index=True)
    with pytest.raises(TypeError, match="epsilon must be"):
        rk.robust_loss(x, y, epsilon=np.bool_(True))
    with pytest.raises(ValueError, match="epsilon must be finite"):
        rk.robust_loss(x, y, epsilon=np.float32("inf"))
    with pytest.raises(ValueError, match="'q'=nan is outside"):
        rk.robust_loss(x, y, "gce", q=np.float32("nan"))


# ---- per-row bias -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_per_row_epsilon_is_refused(backend, bad):
    x, y = _batch()
    eps = torch.ones(x.shape[0], dtype=torch.float64)
    eps[3] = bad
    with pytest.raises(ValueError, match=r"epsilon: 1 per-row bias\(es\) are NaN or infinite; first at row 3"):
        rk.robust_loss(x, y, epsilon=eps, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_per_row_epsilon(backend, dtype):
    x, y = _batch(dtype=torch.float32)
    x.requires_grad_(True)
    eps = torch.linspace(0, 3, x.shape[0]).to(dtype).requires_grad_(True)
    loss = rk.robust_loss(x, y, "gce", epsilon=eps, backend=backend)
    loss.backward()
    eps32 = eps.detach().float().requires_grad_(True)
    x32 = x.detach().clone().requires_grad_(True)
    expected = rk.robust_loss(x32, y, "gce", epsilon=eps32, backend="torch")
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad, x32.grad, rtol=1e-5, atol=1e-6)
    assert eps.grad.dtype == dtype
    torch.testing.assert_close(eps.grad, eps32.grad.to(dtype))


# ---- torch.compile ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_dynamic(backend):
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y, q, e: rk.robust_loss(x, y, "gce", q=q, epsilon=e, backend=backend),
        dynamic=True,
        fullgraph=True,
        backend="aot_eager",
    )
    for n, q, e in ((8, 0.5, 1.0), (8, 0.6, 1.5), (13, 0.7, 0.25)):
        x, y = _batch(n, 10, torch.float32)
        x.requires_grad_(True)
        got = compiled(x, y, q, e)
        (gx,) = torch.autograd.grad(got, x)
        x_ref = x.detach().clone().requires_grad_(True)
        expected = rk.robust_loss(x_ref, y, "gce", q=q, epsilon=e, backend="torch")
        expected.backward()
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(gx, x_ref.grad)


def test_compile_dynamic_does_not_recompile_per_hyper_parameter():
    torch._dynamo.reset()
    compiles = []

    def counting(gm, example_inputs):
        compiles.append(gm)
        return gm

    compiled = torch.compile(
        lambda x, y, q, e: rk.robust_loss(x, y, "gce", q=q, epsilon=e, backend="torch"),
        dynamic=True,
        fullgraph=True,
        backend=counting,
    )
    x, y = _batch(dtype=torch.float32)
    for q, e in ((0.5, 1.0), (0.6, 1.5), (0.9, -2.0)):
        torch.testing.assert_close(compiled(x, y, q, e), rk.robust_loss(x, y, "gce", q=q, epsilon=e, backend="torch"))
    assert len(compiles) == 1


def test_compile_dynamic_with_automatic_epsilon():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, y: rk.robust_loss(x, y, "mae", epsilon="auto", backend="torch"),
        dynamic=True,
        fullgraph=True,
        backend="aot_eager",
    )
    for k in (10, 12):
        x, y = _batch(8, k, torch.float32)
        torch.testing.assert_close(compiled(x, y), rk.robust_loss(x, y, "mae", epsilon="auto", backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_cpu_call_refuses_a_bad_label(backend):
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: rk.robust_loss(x, y, "mae", backend=backend), fullgraph=True)
    x, y = _batch(dtype=torch.float32)
    compiled(x, y)
    y[2] = 70
    with pytest.raises(RuntimeError, match=r"target: a label outside \[0, K\)"):
        compiled(x, y)


# ---- torch.func -------------------------------------------------------------------------------


def _torch_func_results(backend):
    x, y = _batch(5, 6)

    def loss(z):
        return rk.robust_loss(z, y, "nce_agce", epsilon=0.5, backend=backend)

    def sample_loss(z, label):
        return rk.robust_loss(z[None], label[None], "gce", epsilon=0.5, backend=backend)

    _, pullback = vjp(loss, x)
    return {
        "grad": grad(loss)(x),
        "jacrev": jacrev(loss)(x),
        "vjp": pullback(torch.tensor(2.0, dtype=x.dtype))[0],
        "hessian": hessian(lambda z: rk.robust_loss(z, y, "ce", backend=backend))(x),
        "per_sample": vmap(grad(sample_loss))(x, y),
    }, (x, y)


def test_torch_func_transforms_match_autograd():
    results, (x, y) = _torch_func_results("auto")
    x.requires_grad_(True)
    (g,) = torch.autograd.grad(rk.robust_loss(x, y, "nce_agce", epsilon=0.5, backend="torch"), x)
    torch.testing.assert_close(results["grad"], g)
    torch.testing.assert_close(results["jacrev"], g)
    torch.testing.assert_close(results["vjp"], 2 * g)
    h = torch.autograd.functional.hessian(lambda z: rk.robust_loss(z, y, "ce", backend="torch"), x.detach())
    torch.testing.assert_close(results["hessian"], h)
    rows = rk.robust_loss(x, y, "gce", epsilon=0.5, reduction="none", backend="torch")
    per_sample = torch.stack([torch.autograd.grad(rows[i], x, retain_graph=True)[0][i] for i in range(len(y))])
    torch.testing.assert_close(results["per_sample"], per_sample)


@pytest.mark.parametrize("backend", FUSED)
def test_torch_func_on_a_fused_backend_says_what_to_use(backend):
    x, y = _batch()
    with pytest.raises(RuntimeError, match=f"backend='{backend}' does not support torch.func.*use backend='torch'"):
        grad(lambda z: rk.robust_loss(z, y, backend=backend))(x)


def test_vmap_checks_the_batched_labels():
    x, y = _batch()
    y[4] = 99
    with pytest.raises(ValueError, match="label.* outside"):
        vmap(grad(lambda z, label: rk.robust_loss(z[None], label[None])))(x, y)


# ---- bi-tempered: documented differences from Google's code -----------------------------------


def test_bitemp_differences_from_google():
    """The numbers in the README's "Differences from published code" (bi-tempered bullet)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(256, 10)) * 3
    y = rng.integers(0, 10, 256)
    onehot = np.eye(10)[y]

    def google(t1, t2, num_iters):
        p = independent.tempered_softmax(z, t2, num_iters)
        loss = -independent.log_t(p[np.arange(len(y)), y], t1) - (1 - (p ** (2 - t1)).sum(1)) / (2 - t1)
        with np.errstate(divide="ignore", invalid="ignore"):
            w = (p - onehot) * p ** (t2 - t1)
        escort = p**t2 / (p**t2).sum(1, keepdims=True)
        return loss, w - escort * w.sum(1, keepdims=True)

    def ours(t1, t2):
        x = torch.tensor(z, requires_grad=True)
        rows = rk.robust_loss(x, torch.tensor(y), "bitemp", t1=t1, t2=t2, reduction="none", backend="torch")
        rows.sum().backward()
        return rows.detach().numpy(), x.grad.numpy()

    # t2 < 1: Google's 5 bisection steps against the converged normalisation used here.
    loss5, grad5 = google(0.5, 0.8, 5)
    converged, grad_converged = google(0.5, 0.8, 200)
    loss, gradient = ours(0.5, 0.8)
    np.testing.assert_allclose(loss, converged, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gradient, grad_converged, rtol=1e-9, atol=1e-12)
    loss_gap = np.abs(loss5 - converged)
    norm = np.linalg.norm(grad_converged, axis=1)
    moving = norm > 1e-6  # rows whose converged gradient is 0 have no relative gap
    grad_gap = np.linalg.norm(grad5 - grad_converged, axis=1)[moving] / norm[moving]
    assert 3e-3 < np.median(loss_gap) < 1e-2 and np.max(loss_gap) < 0.05
    assert 5e-3 < np.median(grad_gap) < 3e-2 and np.max(grad_gap) < 0.3
    # t2 < t1 and classes of probability 0: 0 * inf in Google's forget factor.
    _, grad_google = google(0.8, 0.6, 200)
    _, gradient = ours(0.8, 0.6)
    assert np.isnan(grad_google).any(axis=1).all()
    assert np.isfinite(gradient).all()


def test_docs_state_the_bitemp_differences():
    """The README and the spec's notes must not call the t2 < 1 solve Google's."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    bullet = readme[readme.index("- **Bi-tempered.**") :].split("\n\n")[0]
    assert "Google runs `num_iters` bisection steps" in bullet
    assert "Google's gradient is NaN" in bullet
    notes = rk.LOSSES["bitemp"].notes
    assert "Google runs num_iters bisection steps" in notes and "NaN" in notes


def test_epsilon_for_classes_carries_dynamos_constant_marker():
    """robustkernels.epsilon sets the marker of torch._dynamo.assume_constant_result itself, so that
    importing the package does not import Dynamo: the marker must be the one this torch reads."""
    from torch._dynamo.decorators import assume_constant_result

    marked = assume_constant_result(lambda: 0)
    names = [name for name in vars(marked) if name.startswith("_dynamo")]
    assert names == ["_dynamo_marked_constant"]
    assert rk.epsilon_for_classes._dynamo_marked_constant is True
