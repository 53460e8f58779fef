#!/usr/bin/env bash
# The GPU verification run, in one call on a machine with an NVIDIA GPU and its own torch
# (e.g. the lent H100/H200: torch 2.11, no network): build with CUDA for the local arch, run the
# CUDA tests, the same tests under compute-sanitizer, and the CUDA benchmarks. Results go to
# ${OUT:-gpu-results}/ (copy the bench JSON/Markdown into bench/results/ afterwards).
#   TORCH_CUDA_ARCH_LIST=9.0 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
py=${PYTHON:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FASTDET_CUDA=ON PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
step() { echo "==> $*"; }

step "build ($TORCH_CUDA_ARCH_LIST)"
"$py" -m pip install -q --no-build-isolation --no-deps . 2>&1 | tail -5 || exit 1
(cd /tmp && "$py" -m fastdet info) | tee "$out/info.txt"

step "tests (CUDA and CPU)"
"$py" -m pytest -q -x tests 2>&1 | tee "$out/tests.txt" | tail -15

step "compute-sanitizer over the CUDA tests"
if command -v compute-sanitizer >/dev/null; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$py" -m pytest -q -m cuda tests/ops 2>&1 | tee "$out/sanitizer.txt" | tail -15
else
  echo "compute-sanitizer not found" | tee "$out/sanitizer.txt"
fi

step "benchmarks"
stamp=$(date +%Y-%m-%d)
gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")
"$py" -m fastdet bench --device cuda --json "$out/cuda-$gpu-$stamp.json" --markdown "$out/cuda-$gpu-$stamp.md" \
  2>&1 | tail -40
