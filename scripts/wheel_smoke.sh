#!/usr/bin/env bash
# Builds the fastdet wheel (CPU kernels only by default, to keep it fast), repairs it into a
# manylinux tag (scripts/repair_wheel.sh), installs it into a clean virtual environment that holds
# only the matching torch, and smoke-tests it there from outside the source tree: import,
# `fastdet info`, torch.ops.fastdet.nms, and `fastdet smoke` (forward + backward of every
# differentiable op on CPU, discovered from the smoke() examples of python/fastdet/ops/).
#
#   bash scripts/wheel_smoke.sh [--fresh]
#
# The clean environment is cached, because installing torch takes minutes: by default in
# ~/.cache/fastdet/wheel-smoke/py<X.Y>-torch<version> (FASTDET_SMOKE_VENV overrides). It is
# created with only `pip install torch==<the build's torch>`, fastdet is uninstalled from it after
# every run, and a run refuses it (rebuilds it) when it holds anything beyond torch and the
# wheel's own dependencies. --fresh rebuilds it unconditionally.
# Environment: PYTHON (the build interpreter with torch and the build tools, default .venv/bin/python),
# FASTDET_CUDA (default OFF), WHEELHOUSE (where the repaired wheel goes, default build/wheelhouse),
# WHEEL (smoke-test this already built wheel instead of building one), TORCH_INDEX_URL (where the
# clean environment gets torch, e.g. https://download.pytorch.org/whl/cpu; default: pip's index).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
start=$(date +%s)
step() { echo "==> $* ($(( $(date +%s) - start )) s)"; }
fresh=0
[ "${1:-}" = "--fresh" ] && fresh=1
py=${PYTHON:-.venv/bin/python}
unset PYTHONPATH
torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
pyver=$("$py" -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
wheelhouse=${WHEELHOUSE:-build/wheelhouse}

if [ -z "${WHEEL:-}" ]; then
  step "building the wheel (FASTDET_CUDA=${FASTDET_CUDA:-OFF}, torch $torch_version, Python $pyver)"
  rm -rf build/wheel-raw "$wheelhouse"
  # Its own build folder, so the development install's (CUDA) build stays incremental.
  FASTDET_CUDA=${FASTDET_CUDA:-OFF} "$py" -m pip wheel -q --no-build-isolation --no-deps \
    -C build-dir=build/wheel-${FASTDET_CUDA:-OFF} -w build/wheel-raw .
  step "repairing it with auditwheel"
  PYTHON="$py" bash scripts/repair_wheel.sh build/wheel-raw/fastdet-*.whl "$wheelhouse"
  WHEEL=$(ls "$wheelhouse"/fastdet-*.whl)
fi
WHEEL=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
case "$WHEEL" in
  *manylinux*) ;;
  *) echo "wheel_smoke: $WHEEL has no manylinux tag" >&2; exit 1 ;;
esac
echo "wheel: $WHEEL ($(du -h "$WHEEL" | cut -f1))"

venv=${FASTDET_SMOKE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fastdet/wheel-smoke/py$pyver-torch$torch_version}
vpy=$venv/bin/python
usable() {  # a venv made by this script, still holding the right torch and nothing unexpected
  [ -f "$venv/.torch-only" ] && [ -x "$vpy" ] || return 1
  "$vpy" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null || return 1
  "$vpy" -m pip uninstall -q -y fastdet >/dev/null 2>&1 || true
  # Allowed: torch, fastdet's declared dependencies (numpy, rich), pip, and what those require.
  extra=$("$vpy" - <<'EOF'
import re
from importlib import metadata

def name(s):
    return re.split(r"[ ;<>=!~\[(]", s.strip(), maxsplit=1)[0].lower().replace("_", "-")

installed = {name(d.metadata["Name"]): d for d in metadata.distributions()}
allowed, todo = set(), ["pip", "setuptools", "torch", "numpy", "rich"]
while todo:
    n = todo.pop()
    if n in allowed or n not in installed:
        continue
    allowed.add(n)
    todo += [name(r) for r in installed[n].requires or [] if "extra ==" not in r]
print(" ".join(sorted(set(installed) - allowed)))
EOF
)
  [ -z "$extra" ] || { echo "wheel_smoke: $venv holds more than torch ($extra); rebuilding it"; return 1; }
}
if [ $fresh = 1 ] || ! usable; then
  step "creating the clean environment $venv (torch==$torch_version only; a few minutes)"
  rm -rf "$venv"
  base=$("$py" -c "import sys; print(sys._base_executable)")
  "$base" -m venv "$venv"
  "$vpy" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$torch_version"
  touch "$venv/.torch-only"
else
  step "reusing the clean environment $venv"
fi
"$vpy" -m pip uninstall -q -y fastdet 2>/dev/null || true
trap '"$vpy" -m pip uninstall -q -y fastdet >/dev/null 2>&1 || true' EXIT

step "installing the wheel"
"$vpy" -m pip install -q "$WHEEL"

step "smoke test (outside the source tree)"
work=$(mktemp -d)
cd "$work"
"$vpy" - "$root" <<'EOF'
import sys
from pathlib import Path

import torch

import fastdet

source_tree = Path(sys.argv[1]).resolve()
where = Path(fastdet.__file__).resolve()
assert source_tree not in where.parents, f"imported fastdet from the source tree ({where}), not from the wheel"
assert "site-packages" in where.parts, where
print(f"fastdet {fastdet.__version__} from {where.parent}")
try:
    import torchvision  # noqa: F401
except ImportError:
    pass
else:
    raise AssertionError("the clean environment has torchvision: it is not clean")

boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
scores = torch.tensor([0.9, 0.8, 0.7])
keep = torch.ops.fastdet.nms(boxes, scores, 0.5)
assert keep.tolist() == [0, 2], keep
print("torch.ops.fastdet.nms: ok")
EOF
"$venv/bin/fastdet" info
"$venv/bin/fastdet" smoke
cd "$root" && rm -rf "$work"
step "wheel smoke test passed: $(basename "$WHEEL")"
