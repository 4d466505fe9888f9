"""The generated functional API: one function per loss, signature and docs from the spec."""

import inspect

import pytest
import torch

import robustkernels as rk
from robustkernels import functional


@pytest.mark.parametrize("name", list(rk.LOSSES))
def test_one_function_per_loss_with_spec_signature(name):
    fn = getattr(functional, name)
    spec = rk.LOSSES[name]
    sig = inspect.signature(fn)
    for p in spec.params:
        assert sig.parameters[p.name].default == p.default
        assert sig.parameters[p.name].kind is inspect.Parameter.KEYWORD_ONLY
    assert spec.formula in fn.__doc__ and spec.citation in fn.__doc__
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 7, (5,))
    torch.testing.assert_close(
        fn(x, y, epsilon=0.3, reduction="sum", backend="torch"),
        rk.robust_loss(x, y, name, epsilon=0.3, reduction="sum", backend="torch"),
    )


def test_functional_passes_params():
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.randint(0, 7, (5,))
    a = functional.gce(x, y, q=0.3, backend="torch")
    b = rk.robust_loss(x, y, "gce", q=0.3, backend="torch")
    c = rk.robust_loss(x, y, "gce", backend="torch")
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(TypeError, match="unknown parameter"):
        functional.gce(x, y, a=1.0)
