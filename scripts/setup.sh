#!/usr/bin/env bash
# Sets up a fresh machine for fastdet: a virtual environment in .venv with torch 2.14.1 and
# torchvision 0.29.1, the build and test tools, and fastdet itself built against that torch
# (CUDA kernels too when nvcc is present; FASTDET_CUDA=0/1 forces either way,
# TORCH_CUDA_ARCH_LIST picks the archs). Safe to re-run: it reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }

echo "==> torch and torchvision"
pip install -q torch==2.14.1 torchvision==0.29.1
echo "==> build and test tools"
pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja numpy rich pytest pytest-benchmark hypothesis
echo "==> model zoo: COCO evaluation (pycocotools, faster-coco-eval)"
pip install -q pycocotools faster-coco-eval
echo "==> test peers: onnx + onnxruntime (export parity), yolox 0.3.0 (the SimOTA reference)"
pip install -q onnx onnxruntime onnxscript loguru thop opencv-python-headless
# yolox 0.3.0's pinned dependencies don't resolve on Python 3.11; the module imports without them.
pip install -q --no-deps --no-build-isolation yolox==0.3.0
echo "==> building fastdet (a few minutes with CUDA kernels on 2 cores)"
start=$(date +%s)
pip install -q --no-build-isolation --no-deps .
echo "==> built in $(( $(date +%s) - start )) s"
.venv/bin/fastdet info
