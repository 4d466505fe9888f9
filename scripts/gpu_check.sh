#!/usr/bin/env bash
# Everything this project checks on a GPU, prepared for a session that is lent one (device time
# is scarce: no exploring on the machine, one script whose stages each fit a time limit).
#
#   GPU_CHECK_STAGES="build tests" bash scripts/gpu_check.sh   # first call  (about 9 min at most)
#   GPU_CHECK_STAGES="build bench" bash scripts/gpu_check.sh   # second call (about 8 min at most)
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh             # dry run of every stage on a CPU
#
# Stages, each under its own time limit so that a slow one still leaves the others' results:
#   build  pip install -e . against the machine's own torch (no downloads; incremental when the
#          build folder is still there), then the build gate (.ci/check_build.py)
#   tests  tests/gpu (both fused backends at full sizes against the float64 reference, more than
#          2^31 elements, compile fullgraph, the asynchronous label check) and the CUDA-marked
#          native tests of tests/test_native.py
#   bench  benchmarks.run on the issue-#7 headline grid: K = 1000, N in {256, 4096, 65536},
#          fp32 and bf16, forward + backward, $GPU_CHECK_LOSSES (the losses with targets and ce)
# Output in $OUT (the device tool's folder) or out/gpu, at most 7 files: gpu_check.log (every
# stage's output), tests-gpu.xml and tests-native-cuda.xml (junit), and the benchmark report
# (<device>.json, .md and two PNGs). Exit code: the first failing stage's, 0 when all pass.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
STAGES=" ${GPU_CHECK_STAGES:-build tests bench} "
LOSSES=${GPU_CHECK_LOSSES:-ce,mae,gce,nce_agce,bitemp}
LOG="$OUT/gpu_check.log"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-$(nproc)}
status=0

stage() {  # stage NAME SECONDS COMMAND...: run under a time limit, output appended to $LOG
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s) $(date +%T)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$LOG"
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return "$rc"
}

"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'device', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>&1 | tee -a "$LOG"

if [[ $STAGES == *" build "* ]] && [ "$DEVICE" = cuda ]; then  # a dry run uses the local build
  stage build 240 "$PY" -m pip install -q --no-build-isolation --no-deps -e . || exit "$status"
  stage build-gate 60 "$PY" .ci/check_build.py || exit "$status"
fi

if [[ $STAGES == *" tests "* ]]; then
  if [ "$DEVICE" = cuda ]; then
    # -n 8: the Triton JIT compiles of the many (loss, dtype, tile) variants run in parallel.
    stage tests-gpu 200 "$PY" -m pytest -q -p no:cacheprovider -n 8 tests/gpu --junitxml="$OUT/tests-gpu.xml"
    stage tests-native-cuda 90 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_native.py \
      --junitxml="$OUT/tests-native-cuda.xml"
  else  # the same tests on the CPU (small sizes, Triton in its interpreter): a check of the tests
    RK_GPU_TEST_DEVICE=cpu TRITON_INTERPRET=1 stage tests-gpu 900 "$PY" -m pytest -q -p no:cacheprovider \
      tests/gpu --junitxml="$OUT/tests-gpu.xml"
  fi
fi

if [[ $STAGES == *" bench "* ]]; then
  if [ "$DEVICE" = cuda ]; then
    stage bench 420 "$PY" -m benchmarks.run --device cuda --losses "$LOSSES" --k 1000 --n 256,4096,65536 \
      --dtypes float32,bfloat16 --modes fwd+bwd --keep-going --out "$OUT"
  else
    stage bench 300 "$PY" -m benchmarks.run --device cpu --quick --keep-going --out "$OUT"
  fi
fi
echo "== gpu_check: status $status" | tee -a "$LOG"
exit "$status"
