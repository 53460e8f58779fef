#!/usr/bin/env bash
# Configures, builds and runs the C++ example (examples/cpp/nms_example.cpp) into build/cpp-example.
# Uses $PYTHON (default: python in PATH) to find torch and fastdet; FASTDET_LIBRARY overrides the
# libfastdet.so it links. Extra arguments go to the program (e.g. `cuda`). Exits non-zero on failure.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-$(command -v python || command -v python3)}"
build="${root}/build/cpp-example"
args=(-S "${root}/examples/cpp" -B "${build}" -DPython_EXECUTABLE="${python}")
if [[ -n "${FASTDET_LIBRARY:-}" ]]; then
  args+=(-DFASTDET_LIBRARY="${FASTDET_LIBRARY}")
fi
if command -v ninja >/dev/null 2>&1; then
  args+=(-G Ninja)
fi
cmake "${args[@]}"
cmake --build "${build}" -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
echo "+ ${build}/nms_example $*"
"${build}/nms_example" "$@"
