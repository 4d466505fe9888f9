#!/usr/bin/env bash
# Creates .venv and installs robustkernels with its test and training extras, building the
# C++ (and, where nvcc is found, CUDA) extension. Idempotent: a second run only rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel ninja
# torch first: the extension is built against it (--no-build-isolation below).
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
MAX_JOBS=${MAX_JOBS:-2} .venv/bin/pip install -q --no-build-isolation -e ".[test,train]"
.venv/bin/python -c "import robustkernels as rk; print('robustkernels', rk.__version__, 'backends on cpu:', rk.available_backends('cpu'))"
