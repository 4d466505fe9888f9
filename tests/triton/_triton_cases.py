"""Shared inputs, parameter cases and comparison helpers of the Triton tests."""

from __future__ import annotations

import numpy as np
import torch

import robustkernels as rk

#: Extra hyper-parameter settings beyond each spec's defaults: the branches the defaults miss
#: (bi-tempered t2 < 1 bisection and t2 = 1 softmax, the focal weight at gamma = 0, GCE at q = 1).
EXTRA_PARAMS = {
    "bitemp": [{"t1": 0.5, "t2": 0.8}, {"t1": 0.7, "t2": 1.0}],
    "focal": [{"gamma": 0.0}],
    "nfl": [{"gamma": 2.0}],
    "gce": [{"q": 1.0}],
}


def fp32_grad_rtol(name: str, params: dict) -> float:
    """Gradient tolerance for fp32 math against the float64 reference.

    2e-5 everywhere except the bi-tempered t2 < 1 branch: there p_k = exp_t(a_k - lambda) near the
    edge of the support is ill-conditioned in lambda, and the pure-PyTorch reference run in fp32 is
    off from its own float64 run by the same 3.0e-5 as the kernel (K = 7, t1 = 0.5, t2 = 0.8).
    """
    if name == "bitemp" and params["t2"] < 1.0:
        return 1e-4
    return 2e-5


def param_cases(name: str) -> list[dict[str, float]]:
    """The spec defaults (read from LOSSES) followed by the extra settings for ``name``."""
    return [rk.LOSSES[name].defaults, *[{**rk.LOSSES[name].defaults, **p} for p in EXTRA_PARAMS.get(name, [])]]


def make_inputs(n: int, k: int, dtype: torch.dtype, scale: float = 3.0, seed: int = 0):
    """Logits quantised to ``dtype`` (leaf, requires grad) and labels in ``[0, K)``."""
    gen = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(n, k, generator=gen)).to(dtype).requires_grad_()
    target = torch.randint(0, k, (n,), generator=gen)
    return logits, target


def reference_rows(logits: torch.Tensor, target: torch.Tensor, name: str, params: dict, epsilon):
    """Float64 reference per-row loss and d(sum of rows)/d logits on the same quantised inputs."""
    z = logits.detach().double().requires_grad_()
    eps = epsilon.detach().double() if isinstance(epsilon, torch.Tensor) else epsilon
    rows = rk.robust_loss(z, target, name, epsilon=eps, reduction="none", backend="torch", **params)
    rows.sum().backward()
    return rows.detach(), z.grad


def independent_rows(logits: torch.Tensor, target: torch.Tensor, name: str, params: dict, epsilon):
    """tests/independent.py (NumPy float64, closed-form gradients) on the same quantised inputs."""
    import independent

    eps = epsilon.detach().double().numpy() if isinstance(epsilon, torch.Tensor) else epsilon
    loss, grad = independent.loss_and_grad(name, params, logits.detach().double().numpy(), target.numpy(), eps)
    return torch.from_numpy(np.asarray(loss, dtype=np.float64)), torch.from_numpy(np.asarray(grad, dtype=np.float64))


def assert_rows_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str, atol: float = 1e-30
) -> None:
    """Per-row max-norm relative error ``max_j |a - e| <= rtol * max_j |e| + atol``.

    Row-normwise rather than elementwise because gradient entries are sums of per-row terms that can
    cancel to far below the row's scale (NCE's ``B p_j + C``), where elementwise relative error is
    not a property of the algorithm.
    """
    actual = actual.double()
    expected = expected.double()
    if expected.dim() == 1:
        expected, actual = expected[:, None], actual[:, None]
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), f"{what}: non-finite values {actual}"
    err = (actual - expected).abs().amax(dim=1)
    scale = expected.abs().amax(dim=1)
    bad = err > rtol * scale + atol
    assert not bad.any(), (
        f"{what}: rows {bad.nonzero().flatten().tolist()} relative error "
        f"{(err / scale.clamp_min(1e-30))[bad].tolist()} > {rtol}"
    )


def record_fused_launches(monkeypatch, record) -> list:
    """Patch the Triton launcher so that every launch of the fused loss kernel appends
    ``record(args, kwargs)``, taken after the kernel ran, to the returned list."""
    from robustkernels.triton import kernels, op

    seen = []
    real_launcher = op._launcher

    def recording_launcher(kernel):
        launch = real_launcher(kernel)

        class Grid:
            def __getitem__(self, grid):
                def run(*args, **kwargs):
                    out = launch[grid](*args, **kwargs)
                    if kernel is kernels.fused_loss_kernel:
                        seen.append(record(args, kwargs))
                    return out

                return run

        return Grid()

    monkeypatch.setattr(op, "_launcher", recording_launcher)
    return seen
