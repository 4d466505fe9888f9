"""Runs the Triton kernels on CPU through the Triton interpreter.

``TRITON_INTERPRET=1`` must be set before ``robustkernels.triton`` creates its kernels (Triton
decides at decoration time), so it is set here, at collection, before any test imports them.
"""

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

_ops = sys.modules.get("robustkernels.triton.op")
if _ops is not None and not _ops.INTERPRETED:
    raise RuntimeError(
        "robustkernels.triton was imported before tests/triton/conftest.py set TRITON_INTERPRET=1; "
        "set TRITON_INTERPRET=1 in the environment (or in tests/conftest.py) to run these tests on CPU"
    )


from robustkernels.triton.backend import interpreter_defect  # noqa: E402

_defect = interpreter_defect()
if _defect is not None:  # one clear message instead of an InterpreterError in every test
    raise RuntimeError(_defect)


def pytest_collection_modifyitems(items):
    # The interpreter evaluates both sides of every tl.where with NumPy, so NaN/inf in the branch
    # that is not selected (e.g. log(0) on padded lanes) raise NumPy RuntimeWarnings; they are noise.
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.filterwarnings("ignore::RuntimeWarning"))
