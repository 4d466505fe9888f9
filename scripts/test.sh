#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the whole test suite on the CPU; the
# Triton kernels run in the interpreter (TRITON_INTERPRET=1 is set by tests/triton/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -n 2 --dist loadfile -q tests "$@"
