"""Shared test fixtures: devices (CUDA skipped without a GPU), tolerances per dtype, and the zoo
tests' generated datasets and torchrun launcher (one conftest: a second `conftest` module, e.g. in
tests/engine, would shadow this one for the `from conftest import tol` of the op tests)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

import fastdet  # noqa: F401  (loads the ops)

CUDA = torch.cuda.is_available()
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count must not change it for the tests after it (the
    parity tests' fp32 sums depend on it)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


# (rtol, atol) for comparing against an fp32/fp64 reference.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def tol(dtype):
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


# ---- the zoo tests' data and launcher ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated shapes dataset (COCO layout): 6 training and 3 validation images of 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    from fastdet.cli import main

    assert main(["shapes", str(root), "--split", "train", "--num-images", "6", "--image-size", "64", "--no-progress"]) == 0
    assert main(["shapes", str(root), "--split", "val", "--num-images", "3", "--image-size", "64", "--seed", "1",
                 "--no-progress"]) == 0
    return root


@pytest.fixture(scope="session")
def learning_shapes(tmp_path_factory):
    """The learning tests' data: 256 generated training images of 128 px (seed 0) and 64 held-out
    validation images (seed 1), made once per session."""
    from fastdet.data import generate_shapes

    root = tmp_path_factory.mktemp("learning_shapes")
    generate_shapes(root, split="train", num_images=256, seed=0, progress=False)
    generate_shapes(root, split="val", num_images=64, seed=1, progress=False)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun():
    """run(args) -> CompletedProcess of `fastdet <args>` in two CPU processes under torchrun (gloo)."""
    def run(args):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "fastdet.cli", *args, "--device", "cpu", "--no-progress"]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    return run


@pytest.fixture
def eval_and_detect(tmp_path):
    """check(checkpoint, data, num_val_images): `fastdet eval` writes box AP50 to its JSON, and
    `fastdet detect` on the data's val images writes one drawn image per image and detections of
    the shapes classes with scores in [0, 1]; returns detect's records (detections.json)."""
    import json
    from pathlib import Path

    from fastdet.cli import main

    def check(checkpoint, data, num_val_images):
        metrics = tmp_path / "metrics.json"
        assert main(["eval", str(checkpoint), "--data", str(data), "--json", str(metrics), "--workers", "0",
                     "--no-progress"]) == 0
        assert "AP50" in json.loads(metrics.read_text())["bbox"]
        out = tmp_path / "det"
        assert main(["detect", str(checkpoint), str(Path(data) / "val"), "--output", str(out), "--score-thresh", "0",
                     "--no-progress"]) == 0
        records = json.loads((out / "detections.json").read_text())
        assert len(records) == num_val_images
        for r in records:
            assert Path(r["output"]).is_file()
            for d in r["detections"]:
                assert 0 <= d["score"] <= 1 and d["class"] in ("rectangle", "ellipse", "triangle")
        return records

    return check
