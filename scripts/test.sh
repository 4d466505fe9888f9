#!/usr/bin/env bash
# Sets up the environment (scripts/setup.sh) and runs the whole test suite on the CPU; the
# Triton kernels run in the interpreter (TRITON_INTERPRET=1 is set by tests/triton/conftest.py).
# tests/gpu runs in a process of its own: it must see the compiled Triton kernels on a GPU, and
# the interpreter setting above holds for every test of the process it is made in. Without a
# GPU its tests are skipped: there is no device to run them on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One intra-op thread per pytest worker: with -n 2 on 2 cores, idle OpenMP threads otherwise
# spin against the other worker (measured: some tests 6x slower).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/python -m pytest -n 2 --dist loadfile -q tests --ignore=tests/gpu "$@"
.venv/bin/python -m pytest -q tests/gpu "$@"
