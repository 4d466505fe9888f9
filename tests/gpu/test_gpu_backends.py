"""Both fused backends on a GPU, at full sizes, against the float64 reference.

Run on a CUDA machine as a pytest process of its own (``tests/triton`` forces the Triton
interpreter for the whole process it runs in)::

    pytest -q tests/gpu

Without a GPU every test here is skipped: there is nothing to run them on. ``RK_GPU_TEST_DEVICE=cpu``
with ``TRITON_INTERPRET=1`` runs the same code on CPU for the small sizes (a check of the tests
themselves, not of the GPU kernels).
"""

from __future__ import annotations

import os

import pytest
import torch

import robustkernels as rk
from robustkernels.backends import unavailable_reason

DEVICE = torch.device(os.environ.get("RK_GPU_TEST_DEVICE", "cuda"))
ON_GPU = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

LOSS_NAMES = list(rk.LOSSES)
FUSED = ("triton", "native")
# Full sizes on a GPU: a warp row, K = 1000, the largest single-pass Triton row and beyond it
# (column tiles; the CUDA block row), and 32768. On the CPU check only the first two.
K_VALUES = (7, 1000, 8200, 32768) if ON_GPU else (7, 1000)


def _need(backend: str) -> None:
    reason = unavailable_reason(backend, DEVICE)
    if reason is not None:
        pytest.fail(f"backend {backend!r} cannot run on {DEVICE}: {reason}")
    if ON_GPU and backend == "triton":
        from robustkernels.triton import op

        # tests/triton/conftest.py sets TRITON_INTERPRET=1 for the whole process it is collected
        # in; the kernels would then run in the interpreter, and a pass here would prove nothing.
        if op.INTERPRETED:
            pytest.fail("the Triton kernels are interpreted in this process: run `pytest tests/gpu` on its own")


def _inputs(n: int, k: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(n, k, generator=gen)).to(dtype)
    target = torch.randint(0, k, (n,), generator=gen)
    target[::7] = -100  # ignored rows
    eps = 4.0 * torch.rand(n, generator=gen, dtype=torch.float64) - 1.0
    upstream = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    return logits, target, eps, upstream


def _reference(logits, target, name, eps, upstream):
    """float64 rows and d(rows . upstream)/d logits on the CPU, from the same quantised inputs."""
    z = logits.detach().to("cpu", torch.float64, copy=True).requires_grad_()
    eps = eps.double().cpu() if isinstance(eps, torch.Tensor) else eps
    rows = rk.robust_loss(z, target.cpu(), name, epsilon=eps, reduction="none", backend="torch")
    (rows * upstream.cpu()).sum().backward()
    return rows.detach(), z.grad


def _assert_rows_close(actual, expected, rtol, what, atol=1e-30):
    """Row-normwise: max_j |a - e| <= rtol * max_j |e| + atol, NaN where expected is NaN."""
    actual, expected = actual.double().cpu(), expected.double()
    if expected.dim() == 1:
        actual, expected = actual[:, None], expected[:, None]
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), f"{what}: NaN pattern differs"
    ok = ~torch.isnan(expected).any(dim=1)
    err = (actual[ok] - expected[ok]).abs().amax(dim=1)
    bound = rtol * expected[ok].abs().amax(dim=1) + atol
    worst = int(torch.argmax(err - bound)) if err.numel() else 0
    assert (err <= bound).all(), f"{what}: row {worst} error {float(err[worst]):.3g} > {float(bound[worst]):.3g}"


def _tolerances(name: str, dtype: torch.dtype) -> tuple[float, float]:
    """(loss, gradient) row-norm tolerances; bf16 gradients are rounded to 8 bits."""
    if dtype == torch.bfloat16:
        return 2e-5, 8e-3
    return 2e-5, (1e-4 if name == "bitemp" else 2e-5)


@pytest.mark.parametrize("k", K_VALUES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_matches_float64_reference(name, backend, dtype, k):
    """Per-row eps, ignored rows and a random per-row upstream gradient."""
    _need(backend)
    n = 4096 if k <= 1000 and ON_GPU else 64
    logits, target, eps, upstream = _inputs(n, k, dtype, seed=k)
    x = logits.to(DEVICE, copy=True).requires_grad_()
    rows = rk.robust_loss(x, target.to(DEVICE), name, epsilon=eps.to(DEVICE), reduction="none", backend=backend)
    (rows * upstream.to(DEVICE, rows.dtype)).sum().backward()
    ref_rows, ref_grad = _reference(logits, target, name, eps, upstream)
    loss_tol, grad_tol = _tolerances(name, dtype)
    _assert_rows_close(rows.detach(), ref_rows, loss_tol, f"{name}/{backend} K={k} loss", atol=1e-6)
    _assert_rows_close(x.grad, ref_grad, grad_tol, f"{name}/{backend} K={k} grad", atol=1e-7)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("columns", [slice(None, None, 2), slice(500, 1500)], ids=["column-stride", "row-slice"])
def test_reductions_scalar_upstream_and_strided_rows(backend, reduction, columns):
    """A column stride is copied; the row stride of a slice is read in place. The view is made on
    the device: ``.to(device)`` of a CPU view would hand the op a contiguous copy."""
    _need(backend)
    logits, target, _, _ = _inputs(513, 2 * 1000, torch.float32, seed=1)
    target = torch.where(target >= 0, target % 1000, target)  # labels of the 1000-column view
    x = logits.to(DEVICE, copy=True)[:, columns].detach().requires_grad_()
    assert not x.is_contiguous()
    loss = rk.robust_loss(x, target.to(DEVICE), "gce", epsilon=1.5, reduction=reduction, backend=backend)
    (0.75 * loss).backward()
    z = logits[:, columns].to(torch.float64, copy=True).requires_grad_()
    ref = rk.robust_loss(z, target, "gce", epsilon=1.5, reduction=reduction, backend="torch")
    (0.75 * ref).backward()
    torch.testing.assert_close(loss.double().cpu(), ref.detach(), rtol=2e-6, atol=0)
    _assert_rows_close(x.grad, z.grad, 2e-5, f"gce/{backend} {reduction} grad")


@pytest.mark.skipif(not ON_GPU, reason="2^31 elements: GPU memory only")
@pytest.mark.parametrize("backend", FUSED)
def test_more_than_2_to_the_31_elements(backend):
    """int64 offsets: the last rows of a [65537, 32768] bf16 batch (2^31 + 32768 elements)."""
    _need(backend)
    n, k = 65537, 32768
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    logits = torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16, generator=gen).requires_grad_()
    target = torch.randint(0, k, (n,), device=DEVICE, generator=gen)
    rows = rk.robust_loss(logits, target, "mae", epsilon=2.0, reduction="none", backend=backend)
    rows.sum().backward()
    tail = slice(n - 3, n)
    ref_rows, ref_grad = _reference(logits.detach()[tail], target[tail], "mae", 2.0, torch.ones(3, dtype=torch.float64))
    _assert_rows_close(rows.detach()[tail], ref_rows, 2e-5, f"{backend} last rows loss", atol=1e-6)
    _assert_rows_close(logits.grad[tail], ref_grad, 8e-3, f"{backend} last rows grad", atol=1e-9)


@pytest.mark.parametrize("backend", FUSED)
def test_compile_fullgraph_matches_eager(backend):
    _need(backend)
    logits, target, eps, _ = _inputs(256, 1000, torch.bfloat16, seed=3)

    def step(z, y, e):
        return rk.robust_loss(z, y, "nce_agce", epsilon=e, backend=backend)

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        x = logits.to(DEVICE, copy=True).requires_grad_()
        loss = fn(x, target.to(DEVICE), eps.to(DEVICE).float())
        loss.backward()
        results.append((loss.detach().double().cpu(), x.grad.double().cpu()))
    (eager_loss, eager_grad), (comp_loss, comp_grad) = results
    torch.testing.assert_close(comp_loss, eager_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(comp_grad, eager_grad, rtol=1e-2, atol=1e-6)


@pytest.mark.skipif(not ON_GPU, reason="the asynchronous label check is CUDA-only")
@pytest.mark.parametrize("backend", FUSED)
def test_bad_label_is_nan_then_reported(backend):
    _need(backend)
    logits, target, _, _ = _inputs(8, 10, torch.float32, seed=4)
    target[3] = 10
    rows = rk.robust_loss(logits.to(DEVICE), target.to(DEVICE), "mae", reduction="none", backend=backend)
    assert torch.isnan(rows[3]).item() and torch.isfinite(rows[:3]).all().item()
    with pytest.raises(ValueError, match="target"):
        rk.check_labels()
