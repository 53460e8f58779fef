"""Shared fixtures of the engine tests."""

import pytest

from fastdet.cli import main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A tiny generated shapes dataset (COCO layout): 6 training and 3 validation images of 64 px."""
    root = tmp_path_factory.mktemp("shapes")
    assert main(["shapes", str(root), "--split", "train", "--num-images", "6", "--image-size", "64", "--no-progress"]) == 0
    assert main(["shapes", str(root), "--split", "val", "--num-images", "3", "--image-size", "64", "--seed", "1",
                 "--no-progress"]) == 0
    return root
