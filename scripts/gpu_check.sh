#!/usr/bin/env bash
# The GPU verification run, in one call on a machine with an NVIDIA GPU and its own torch
# (e.g. the lent H100/H200: torch 2.11, no network): build with CUDA for the local arch, run the
# CUDA tests, the CUDA benchmarks, and the CUDA tests again under compute-sanitizer (memcheck).
# Every step has a time limit so a slow step cannot eat the others' time. Results go to
# ${OUT:-gpu-results}/ (copy the bench JSON/Markdown into bench/results/ afterwards).
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/gpu_check.sh
# Optional: TESTS (pytest paths, default tests), OPS (comma list for `fastdet bench --ops`),
# BUILD_S / TEST_S / BENCH_S / SANITIZER_S (seconds per step; 0 skips the step — `timeout 0`
# would mean no limit at all).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTDET_CUDA=ON PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
tests=${TESTS:-tests}
step() { echo "==> $* ($(date +%T))"; }

step "build ($TORCH_CUDA_ARCH_LIST)"
timeout "${BUILD_S:-300}" "$py" -m pip install -v --no-build-isolation --no-deps . >"$out/build.txt" 2>&1 \
  || { tail -60 "$out/build.txt"; exit 1; }
(cd /tmp && "$py" -m fastdet info) | tee "$out/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$out/info.txt" 2>&1

step "CUDA tests"
[ "${TEST_S:-240}" = 0 ] || timeout "${TEST_S:-240}" "$py" -m pytest -q -p no:cacheprovider -m cuda $tests 2>&1 | tee "$out/tests.txt" | tail -25

step "benchmarks"
stamp=$(date +%Y-%m-%d)
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
[ "${BENCH_S:-180}" = 0 ] || timeout "${BENCH_S:-180}" "$py" -m fastdet bench --device cuda ${OPS:+--ops "$OPS"} \
  --json "$out/cuda-$gpu-$stamp.json" --markdown "$out/cuda-$gpu-$stamp.md" 2>&1 | tail -60

step "compute-sanitizer memcheck over the CUDA tests"
if [ "${SANITIZER_S:-240}" = 0 ]; then
  echo "skipped (SANITIZER_S=0)" | tee "$out/sanitizer.txt"
elif command -v compute-sanitizer >/dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZER_S:-240}" compute-sanitizer --tool memcheck \
    --error-exitcode 1 "$py" -m pytest -q -p no:cacheprovider -m cuda $tests 2>&1 \
    | tee "$out/sanitizer.txt" | grep -E "ERROR SUMMARY|Invalid|passed|failed" | tail -15
else
  echo "compute-sanitizer not found" | tee "$out/sanitizer.txt"
fi
step done
