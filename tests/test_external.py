"""fastdet's ops used from outside fastdet's Python code: a bare `torch.ops.load_library` in a fresh
process, TorchScript (script, save, load, also in a fresh process), and the C++ example.

The C++ example test builds examples/cpp with CMake against the installed libfastdet (about a
minute), unless FASTDET_CPP_EXAMPLE names an already built binary.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

import fastdet
from fastdet.testing import clustered_boxes

# TorchScript is deprecated in torch 2.14 but is still how C++ deployments load models.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")

IOU_THRESHOLD = 0.5

# Run in a fresh interpreter where `import fastdet` is made impossible, so nothing of fastdet's Python
# code can register, wrap or fake the op: only libfastdet.so and torch. argv: library, inputs, [script].
CHILD = textwrap.dedent("""
    import json, sys
    sys.modules["fastdet"] = None  # any `import fastdet` now raises ImportError
    import torch
    torch.ops.load_library(sys.argv[1])
    data = torch.load(sys.argv[2])
    if len(sys.argv) > 3:
        fn = torch.jit.load(sys.argv[3])
        keep = fn(data["boxes"], data["scores"], data["iou_threshold"])
    else:
        keep = torch.ops.fastdet.nms(data["boxes"], data["scores"], data["iou_threshold"])
    assert sys.modules["fastdet"] is None, "fastdet's Python package was imported"
    print(json.dumps({"dtype": str(keep.dtype), "keep": keep.tolist()}))
""")


def tie_free_input(n=200, seed=0):
    """Detector-like overlapping boxes with distinct scores (no score ties, so the keep list is unique)."""
    g = torch.Generator().manual_seed(seed)
    boxes, _ = clustered_boxes(n, num_clusters=10, generator=g)
    scores = (torch.randperm(n, generator=g).float() + 1) / n
    return boxes, scores


def expected_keep(boxes, scores):
    keep = torchvision.ops.nms(boxes, scores, IOU_THRESHOLD)
    # The input must exercise suppression, or a kernel returning everything would pass.
    assert 0 < keep.numel() < boxes.shape[0]
    return keep.tolist()


def run_child(tmp_path, *extra):
    boxes, scores = tie_free_input()
    inputs = tmp_path / "inputs.pt"
    torch.save({"boxes": boxes, "scores": scores, "iou_threshold": IOU_THRESHOLD}, inputs)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, os.fspath(fastdet.LIBRARY_PATH), os.fspath(inputs), *map(os.fspath, extra)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"child process failed:\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "torch.int64"
    return out["keep"], expected_keep(boxes, scores)


def test_load_library_without_fastdet_python(tmp_path):
    assert fastdet.LIBRARY_PATH.exists()
    keep, expected = run_child(tmp_path)
    assert keep == expected


@pytest.fixture(scope="module")
def scripted_nms():
    # Scripted in a fixture, not at import, so a missing op fails these tests rather than collection.
    @torch.jit.script
    def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        return torch.ops.fastdet.nms(boxes, scores, iou_threshold, -1)

    return nms


def test_torchscript_save_load(tmp_path, scripted_nms):
    boxes, scores = tie_free_input()
    expected = expected_keep(boxes, scores)
    assert scripted_nms(boxes, scores, IOU_THRESHOLD).tolist() == expected
    # The graph calls the op by its qualified name, and survives a save/load round trip.
    assert "fastdet::nms" in scripted_nms.graph.str()
    path = tmp_path / "nms.pt"
    torch.jit.save(scripted_nms, os.fspath(path))
    loaded = torch.jit.load(os.fspath(path))
    assert "fastdet::nms" in loaded.graph.str()
    assert loaded(boxes, scores, IOU_THRESHOLD).tolist() == expected


def test_torchscript_load_in_fresh_process(tmp_path, scripted_nms):
    # Deployment: a saved TorchScript program runs with only torch + libfastdet.so, no fastdet Python.
    path = tmp_path / "nms.pt"
    torch.jit.save(scripted_nms, os.fspath(path))
    keep, expected = run_child(tmp_path, path)
    assert keep == expected


def build_cpp_example(build_dir) -> str:
    """Configures and builds examples/cpp into build_dir with the cmake beside this Python."""
    bin_dir = os.path.dirname(sys.executable)
    cmake = shutil.which("cmake", path=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    assert cmake, "cmake is needed to build the C++ example (scripts/setup.sh installs it)"
    source = os.path.join(os.path.dirname(__file__), "..", "examples", "cpp")
    configure = [cmake, "-S", source, "-B", str(build_dir), f"-DPython_EXECUTABLE={sys.executable}",
                 f"-DFASTDET_LIBRARY={fastdet.LIBRARY_PATH}"]
    for cmd in (configure, [cmake, "--build", str(build_dir)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return os.path.join(str(build_dir), "nms_example")


def test_cpp_example(tmp_path):
    binary = os.environ.get("FASTDET_CPP_EXAMPLE") or build_cpp_example(tmp_path / "cpp-example")
    proc = subprocess.run([binary], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{binary} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    # Expected keep lists derived by hand in nms_example.cpp; check them against torchvision too.
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30],
                          [21, 21, 31, 31], [0, 20, 10, 30], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.90, 0.80, 0.70, 0.95, 0.50, 0.60])
    keep = torchvision.ops.nms(boxes, scores, 0.5).tolist()
    assert keep == [3, 0, 5, 4]
    assert lines == ["keep: " + " ".join(map(str, keep)),
                     "keep max_output=2: " + " ".join(map(str, keep[:2])),
                     "OK"]
