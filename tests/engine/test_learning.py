"""The learning test: small R-CNNs trained from scratch on the generated shapes data, on CPU, reach
a stated COCO AP50 on a held-out split. A broken assignment, sampler, loss, box coding or
post-processing keeps AP50 near 0 (the first epochs of a correct run are at 0.0-0.05), so the
thresholds below are far from what a defect can reach. Sized for CI's 2-core machines (minutes)."""

import pytest
import torch

from fastdet.engine import TrainConfig, fit
from fastdet.engine.trainer import SHAPES_MODEL_KWARGS


# Measured on this 2-core machine with exactly this set-up (256 training images of 128 px, 12 epochs,
# AdamW 1e-3, lr / 10 after epochs 8 and 11), 2026-11-27, two runs (this test; a run evaluated on
# another generated validation split): Faster R-CNN box AP50 0.418 / 0.41; Mask R-CNN box AP50
# 0.419 / 0.475 and mask AP50 0.391 / 0.439. The thresholds leave room for run-to-run and machine
# differences; reaching 0.5 takes more epochs than CI's time allows on 2 cores (~16 min for both here).
# CI runs the Mask R-CNN case (~9 min): its box AP50 checks the whole Faster R-CNN pipeline (RPN, box
# head, sampling, box coding, NMS) and its mask AP50 the mask branch; the Faster R-CNN case (~6 min)
# is marked `long` (run with `pytest -m long`) to keep CI within its time budget.
@pytest.mark.slow
@pytest.mark.parametrize("model, epochs, thresholds", [
    pytest.param("fasterrcnn_resnet18_fpn", 12, {("bbox", "AP50"): 0.3}, marks=pytest.mark.long),
    ("maskrcnn_resnet18_fpn", 12, {("bbox", "AP50"): 0.3, ("segm", "AP50"): 0.3}),
])
def test_rcnn_learns_shapes(model, epochs, thresholds, learning_shapes, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model=model, data=str(learning_shapes), output=str(tmp_path), epochs=epochs, batch_size=4, workers=0,
                      warmup_iters=50, eval_every=0, progress=False, seed=0,
                      model_kwargs=dict(min_size=128, max_size=128, **SHAPES_MODEL_KWARGS[model.split("_")[0]]))
    result = fit(cfg)
    reached = {k: result["metrics"][k[0]][k[1]] for k in thresholds}
    print(model, reached)
    for key, threshold in thresholds.items():
        assert reached[key] >= threshold, f"{model}: {key[0]} {key[1]} {reached[key]:.3f} < {threshold}"

