"""Every loss agrees with an independent implementation of the formulas.

``tests/independent.py`` (NumPy float64, closed-form gradients, written from the paper formulas and
not from the reference code) is evaluated on the float32-quantised inputs, so it is at least as
strict as an independent float32 implementation. Values and gradients must agree to 2e-5 relative
(per row, max-norm: see ``assert_rows_close``) for K in {13, 1000} and eps in {0, 1.7, per-row}.
"""

import pytest
import torch
from _triton_cases import assert_rows_close, independent_rows, make_inputs

import robustkernels as rk

EPSILONS = {"eps0": 0.0, "eps1.7": 1.7, "per_row": "per_row"}


@pytest.mark.parametrize("k", [13, 1000])
@pytest.mark.parametrize("name", list(rk.LOSSES))
def test_agrees_with_independent_formulas(name, k):
    params = rk.LOSSES[name].defaults
    n = 5
    for seed, epsilon in enumerate(EPSILONS.values()):
        logits, target = make_inputs(n, k, torch.float32, scale=2.0, seed=seed)
        if epsilon == "per_row":
            epsilon = torch.tensor([0.0, 1.7, -0.5, 3.0, 5.2])
        rows = rk.robust_loss(logits, target, name, epsilon=epsilon, reduction="sum", backend="triton", **params)
        rows.backward()
        ind_loss, ind_grad = independent_rows(logits, target, name, params, epsilon)
        total = torch.tensor([ind_loss.sum().item()])
        assert_rows_close(rows.detach().reshape(1), total, 2e-5, f"{name} K={k} eps={epsilon} loss")
        assert_rows_close(logits.grad, ind_grad, 2e-5, f"{name} K={k} eps={epsilon} grad")
        # The per-row values too (reduction="none", forward only).
        with torch.no_grad():
            per_row = rk.robust_loss(
                logits, target, name, epsilon=epsilon, reduction="none", backend="triton", **params
            )
        assert_rows_close(per_row, ind_loss, 2e-5, f"{name} K={k} eps={epsilon} rows")
