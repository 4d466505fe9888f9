"""The triton backend's availability checks."""

import warnings

import numpy as np
import pytest
import triton

from robustkernels.triton.backend import interpreter_defect


def _numpy_refuses_sized_int() -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            int(np.zeros(1))
        except TypeError:
            return True
    return False


@pytest.mark.parametrize("version", ["3.6.0", "3.6.0+git1234abcd"])
def test_triton_3_6_interpreter_defect_follows_numpy(monkeypatch, version):
    monkeypatch.setattr(triton, "__version__", version)
    reason = interpreter_defect()
    assert (reason is not None) == _numpy_refuses_sized_int()
    if reason is not None:
        assert "numpy < 2.4" in reason and "triton >= 3.7" in reason


@pytest.mark.parametrize("version", ["3.7.0", "3.8.0", "4.0.0"])
def test_fixed_interpreters_have_no_defect(monkeypatch, version):
    monkeypatch.setattr(triton, "__version__", version)
    assert interpreter_defect() is None
