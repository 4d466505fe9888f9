#!/usr/bin/env bash
# Creates .venv and installs robustkernels with its test and training extras, building the
# C++ (and, where nvcc is found, CUDA) extension. Idempotent: a second run with the same sources,
# build settings and torch reuses the extension (the editable build compiles in a fresh temporary
# folder every time, so without this check CI's setup-then-test compiled the CUDA code twice).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip setuptools wheel ninja
# torch first: the extension is built against it (--no-build-isolation below).
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"

# What the extension is built from: its sources, the build files and the settings setup.py reads.
stamp_file=.venv/robustkernels-build.stamp
stamp=$(
  {
    find csrc -type f | LC_ALL=C sort | xargs sha256sum
    sha256sum setup.py pyproject.toml
    env | grep -E '^(ROBUSTKERNELS_|TORCH_CUDA_ARCH_LIST=|CUDA_HOME=|DEBUG=)' | LC_ALL=C sort || true
    .venv/bin/python -c "import torch; print(torch.__version__)"
  } | sha256sum | cut -d' ' -f1
)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] && .venv/bin/python -c "import robustkernels" 2>/dev/null &&
  { [ "${ROBUSTKERNELS_NO_EXT:-0}" = 1 ] || .venv/bin/python -c "import robustkernels._C" 2>/dev/null; }; then
  echo "robustkernels: extension up to date (sources unchanged since the last build)"
else
  rm -f "$stamp_file"
  MAX_JOBS=${MAX_JOBS:-2} .venv/bin/pip install -q --no-build-isolation -e ".[test,train]"
  echo "$stamp" >"$stamp_file"
fi
.venv/bin/python -c "import robustkernels as rk; print('robustkernels', rk.__version__, 'backends on cpu:', rk.available_backends('cpu'))"
