"""The kernel composed from primitives: every registered loss and a runtime combination that no loss
names (three normalised forms with their own row sums, plus a label term) against the reference.

One kernel specialised on the term mask serves all of them, so this is the check that each term
mask composes: float64 (the interpreter keeps the parameters as doubles, so the agreement is to
rounding) and float32, on the single-pass path and on the column-tiled one (tiles of 4 lanes,
the last one padded), with -inf logits (classes with p = 0), a per-row bias and an ignored row.
"""

import pytest
import torch
from _triton_cases import assert_rows_close

import robustkernels as rk
from robustkernels.triton import op

SPECS = {
    "combine(nfl, ngce, nce, agce)": rk.combine({"nfl": 1.0, "ngce": 0.5, "nce": 0.3, "agce": 0.2}),
    **rk.LOSSES,
}
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(dtype):
    gen = torch.Generator().manual_seed(1)
    n, k = 9, 11
    logits = (3.0 * torch.randn(n, k, generator=gen)).to(dtype)
    logits[2, 4] = logits[5, 0] = logits[5, 7] = float("-inf")
    target = torch.randint(0, k, (n,), generator=gen)
    target[[2, 5]] = torch.tensor([3, 1])  # the -inf classes are not the labels
    target[6] = -100
    eps = torch.linspace(-1.0, 3.0, n, dtype=dtype)
    return logits, target, eps


def _rows_and_grads(spec, logits, target, eps, backend):
    z = logits.clone().requires_grad_()
    e = eps.clone().requires_grad_()
    rows = rk.robust_loss(z, target, spec, epsilon=e, reduction="none", backend=backend)
    (rows * torch.arange(1.0, len(rows) + 1, dtype=rows.dtype)).sum().backward()
    return rows.detach(), z.grad, e.grad


@pytest.mark.parametrize("tiled", [False, True], ids=["single_pass", "tiled"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(SPECS))
def test_term_mask_matches_the_reference(name, dtype, tiled, monkeypatch):
    if tiled:
        monkeypatch.setattr(op, "max_single_pass_override", 8)
    logits, target, eps = _inputs(dtype)
    got = _rows_and_grads(SPECS[name], logits, target, eps, "triton")
    want = _rows_and_grads(SPECS[name], logits, target, eps, "torch")
    for what, a, b in zip(("loss", "logits grad", "eps grad"), got, want):
        assert_rows_close(a, b, RTOL[dtype], f"{name} {what}")
    assert (got[0][6] == 0) and (got[1][6] == 0).all()
