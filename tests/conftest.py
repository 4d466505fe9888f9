import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # for tests/independent.py

# Without a GPU the Triton kernels run in the interpreter, so that every behaviour suite covers
# the triton backend on CPU tensors too. Triton decides at kernel creation, which is the first
# triton call, after this. With a GPU the kernels compile (tests/gpu checks they do).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # The interpreter evaluates both sides of every tl.where with NumPy, so NaN/inf in the branch
    # that is not selected (e.g. log(0) on padded lanes) raise NumPy RuntimeWarnings: noise.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
