"""The learning test of the dense detectors: a small FCOS (RetinaNet: see below) trained from scratch on generated
shapes, on CPU, reach a stated COCO AP50 on a held-out split. A broken matching, loss, box coding or
post-processing keeps AP50 near 0, so the thresholds are far from what a defect reaches. Sized
smaller than the R-CNN test (96 px images, 128 of them, the shapes preset: FPN/heads 128 wide,
2-conv towers). Still over CI's budget on 2 cores (~490 s of CPU for FCOS alone, see below), so
it is marked `long` and runs only on request: `pytest -m long tests/engine/test_learning_dense.py`."""

import pytest
import torch

from fastdet.engine import TrainConfig, fit
from fastdet.engine.trainer import SHAPES_MODEL_KWARGS

IMAGE_SIZE = 96


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from fastdet.data import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, split="train", num_images=128, image_size=IMAGE_SIZE, seed=0)
    generate_shapes(root, split="val", num_images=64, image_size=IMAGE_SIZE, seed=1)
    return root


# Measured on this 2-core machine while shared with other jobs (load average 5-7), 2026-12-06, with
# exactly this set-up (128 training images of 96 px, 6 epochs of batch 4 = 192 steps, AdamW 1e-3,
# warm-up 50 iterations), one run each (`/usr/bin/time -v pytest -k <model>`):
#   fcos_resnet18_fpn:      box AP50 0.112; 487 s user + 7 s sys CPU, 981 s wall
#   retinanet_resnet18_fpn: box AP50 0.014 (322 s user + 5 s sys CPU, 568 s wall): not learned yet in
#                           192 steps, so it is not asserted here (a longer set-up is still to be found)
# That is over the CI budget (~300 s CPU per model): to be cut (fewer steps or a smaller set-up)
# once measured on an unloaded machine. Other FCOS runs: 256 images of 96 px, 6 epochs: AP50 0.218
# (609 s CPU); 128 images of 128 px, 6 epochs, 256-wide 4-conv heads: AP50 0.140 (600 s CPU).
@pytest.mark.long
@pytest.mark.parametrize("model, threshold", [("fcos_resnet18_fpn", 0.05)])
def test_dense_learns_shapes(model, threshold, shapes, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, data=str(shapes), output=str(tmp_path), epochs=6, batch_size=4, workers=0,
                      warmup_iters=50, eval_every=0, progress=False, seed=0,
                      model_kwargs=dict(min_size=IMAGE_SIZE, max_size=IMAGE_SIZE,
                                        **SHAPES_MODEL_KWARGS[model.split("_")[0]]))
    ap50 = fit(cfg)["metrics"]["bbox"]["AP50"]
    print(model, "box AP50", ap50)
    assert ap50 >= threshold, f"{model}: box AP50 {ap50:.3f} < {threshold}"
