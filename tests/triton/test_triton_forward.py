"""Every loss through the Triton kernels vs the float64 reference on the same quantised inputs.

Grid: every loss (spec defaults plus the branch-covering settings of ``_triton_cases``) x
{float32, bfloat16} x K in {7 (several rows per program), 1000 (row-resident), 8200 (column-tiled
path of the default heuristic)} x eps in {scalar, per-row tensor}.

Tolerances: the kernels compute in fp32, so fp32 inputs agree to ~1e-6 (asserted: 2e-5, see
``fp32_grad_rtol`` for the one exception). bf16 inputs give bf16 gradients, rounded once in the
forward and once more when the random upstream gradient rescales the buffer: at most 2 x 2^-8
relative, asserted at 8e-3 (a wrong coefficient or a missing term is off by O(1)); their losses are
fp32 and stay at 2e-5.
"""

import pytest
import torch
from _triton_cases import assert_rows_close, fp32_grad_rtol, make_inputs, param_cases, reference_rows

import robustkernels as rk
from robustkernels.triton import launch

LOSS_NAMES = list(rk.LOSSES)
BLOCKED_K = 8200  # next_pow2 = 16384 > the single-pass limit: the column-tiled path


def _run(name, params, dtype, n, k, per_row_eps, seed=0):
    logits, target = make_inputs(n, k, dtype, seed=seed)
    if per_row_eps:
        epsilon = torch.linspace(-1.0, 3.0, n, dtype=torch.float32)
    else:
        epsilon = 1.7
    rows = rk.robust_loss(logits, target, name, epsilon=epsilon, reduction="none", backend="triton", **params)
    upstream = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) + 0.5
    (rows * upstream).sum().backward()
    ref_rows, ref_grad = reference_rows(logits, target, name, params, epsilon)
    assert rows.dtype == torch.float32
    assert logits.grad.dtype == dtype
    assert_rows_close(rows, ref_rows, 2e-5, f"{name} loss")
    rtol = fp32_grad_rtol(name, params) if dtype == torch.float32 else 8e-3
    assert_rows_close(logits.grad, ref_grad * upstream.double()[:, None], rtol, f"{name} grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_small_and_row_resident(name, dtype):
    assert launch.forward_config(6, 7, dtype).single_pass and launch.forward_config(6, 7, dtype).rows > 1
    assert launch.forward_config(6, 1000, dtype).single_pass
    for i, params in enumerate(param_cases(name)):
        for k in (7, 1000):
            _run(name, params, dtype, n=6, k=k, per_row_eps=(i + k) % 2 == 0, seed=i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_column_tiled_path(name, dtype):
    assert not launch.forward_config(3, BLOCKED_K, dtype).single_pass
    for i, params in enumerate(param_cases(name)):
        _run(name, params, dtype, n=3, k=BLOCKED_K, per_row_eps=i % 2 == 1, seed=i)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_column_tiled_path_many_small_tiles(name, monkeypatch):
    """K = 37 in tiles of 8: five tiles, the last one mostly padding, for every loss."""
    from robustkernels.triton import op

    monkeypatch.setattr(op, "max_single_pass_override", 16)
    assert launch.forward_config(4, 37, torch.float32, max_single_pass=16).block_k == 8
    for i, params in enumerate(param_cases(name)):
        _run(name, params, torch.float32, n=4, k=37, per_row_eps=i % 2 == 0, seed=i)
