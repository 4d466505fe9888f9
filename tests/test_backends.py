"""Backend registry: the package works without the compiled extension, and reasons are given."""

import subprocess
import sys
import textwrap

import pytest
import torch

import robustkernels as rk


def test_package_works_without_the_extension():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["robustkernels._C"] = None  # makes `import robustkernels._C` fail
        import torch, robustkernels as rk
        reason = rk.backends.unavailable_reason("native", torch.device("cpu"))
        assert reason is not None and reason, reason
        x, y = torch.randn(4, 6), torch.randint(0, 6, (4,))
        out = rk.robust_loss(x, y, "gce", epsilon="auto")
        assert torch.isfinite(out)
        print("auto ->", rk.backends.resolve_backend("auto", torch.device("cpu"))[0], "|", reason)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "auto -> torch" in res.stdout


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend must be one of"):
        rk.backends.unavailable_reason("cudnn", torch.device("cpu"))


def test_torch_backend_always_available():
    assert rk.backends.unavailable_reason("torch", torch.device("cpu")) is None
    assert rk.backends.unavailable_reason("torch", torch.device("meta")) is None
