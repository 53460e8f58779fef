"""The learning tests of the dense detectors: small RetinaNet, FCOS and BorderDet (ResNet-18 FPN, the
CLI's shapes preset SHAPES_MODEL_KWARGS: FPN/heads 128 wide, 2-conv towers) trained from scratch on
the generated shapes, on CPU, reach a stated COCO box AP50 on a held-out split. A broken matching,
assignment, loss, box coding or post-processing keeps AP50 near 0, so the thresholds are far from
what a defect reaches. The BorderDet case has DCNv2 in res4 and res5 (``stage_with_dcn``): it is
also the learning test of the deformable-conv backbone (issue "Model zoo III"). The data is the
session's learning_shapes (tests/conftest.py: 256 training and 64 validation images of 128 px),
shared with the R-CNN and SSD learning tests. GFL, over CI's time budget with the three others, is
marked `long` and runs only on request: `pytest -m long tests/engine/test_learning_dense.py`."""

import pytest
import torch

from fastdet.engine import TrainConfig, fit
from fastdet.engine.trainer import SHAPES_MODEL_KWARGS

IMAGE_SIZE = 128
DCN = (False, False, True, True)


# Measured on this 2-core machine, 2026-12-06, with exactly this set-up (12 epochs of batch 8 = 384
# steps, AdamW 1e-3, warm-up 50 iterations, lr / 10 after epochs 8 and 11), OMP_NUM_THREADS=1 (one
# thread: the test's wall time is its CPU time), one run of this file (`/usr/bin/time -v pytest -m slow`):
#   retinanet_resnet18_fpn:            box AP50 0.224; 191 s
#   fcos_resnet18_fpn:                 box AP50 0.346; 184 s
#   borderdet_resnet18_fpn + DCN r4-5: box AP50 0.307; 292 s
# Whole file: 653 s user + 16 s sys CPU, 11 min 13 s wall on one thread; with torch's default 2
# threads (load ~1.5 from another job): 6 min 35 s wall (RetinaNet 101 s, FCOS 106 s, BorderDet 186 s),
# 762 s user + 16 s sys CPU, FCOS AP50 0.319, BorderDet 0.307. Evaluations during earlier
# runs of the same set-up: AP50 after 3 / 6 / 9 epochs RetinaNet 0.038 / 0.062 / 0.191, FCOS 0.114 /
# 0.210 / 0.300, BorderDet + DCN 0.047 / 0.172 / 0.257; a RetinaNet that does not learn (below) stays at
# 0.00-0.02. The thresholds leave room for run-to-run and machine differences.
# What made RetinaNet learn (same set-up, RetinaNet AP50): the preset's former 8..128 px anchors and
# v1 heads without a norm 0.018; GroupNorm heads 0.123 (lr 3e-4: 0.083; batch 4, 768 steps: 0.112);
# GroupNorm heads + 16..256 px anchors 0.222; 16..256 px anchors without a norm 0.000 (diverged).
# The previous set-up (128 images of 96 px, 6 epochs of batch 4) reached FCOS 0.112, RetinaNet 0.014.
@pytest.mark.slow
@pytest.mark.parametrize("model, model_kwargs, threshold", [
    ("retinanet_resnet18_fpn", {}, 0.1),
    ("fcos_resnet18_fpn", {}, 0.15),
    pytest.param("borderdet_resnet18_fpn", {"stage_with_dcn": DCN}, 0.15, id="borderdet_resnet18_fpn-dcn"),
])
def test_dense_learns_shapes(model, model_kwargs, threshold, learning_shapes, tmp_path):
    ap50 = train_and_evaluate(model, model_kwargs, learning_shapes, tmp_path)
    assert ap50 >= threshold, f"{model} {model_kwargs}: box AP50 {ap50:.3f} < {threshold}"


def train_and_evaluate(model: str, model_kwargs: dict, data, output) -> float:
    """Box AP50 on the validation split after the set-up above."""
    torch.manual_seed(0)
    kwargs = dict(SHAPES_MODEL_KWARGS[model.split("_")[0]], min_size=IMAGE_SIZE, max_size=IMAGE_SIZE, **model_kwargs)
    cfg = TrainConfig(model=model, data=str(data), output=str(output), epochs=12, batch_size=8, workers=0,
                      warmup_iters=50, eval_every=0, progress=False, seed=0, model_kwargs=kwargs)
    ap50 = fit(cfg)["metrics"]["bbox"]["AP50"]
    print(model, model_kwargs, "box AP50", ap50)
    return ap50


# The same set-up for the dense cases that CI leaves out (measured as above, OMP_NUM_THREADS=1, one run:
# `pytest -m long -k <model>`):
#   gfl_resnet18_fpn (ATSS, QFL + DFL): box AP50 0.337; 178 s (fits the CI budget alone, not with the three above)
@pytest.mark.long
@pytest.mark.parametrize("model, model_kwargs, threshold", [("gfl_resnet18_fpn", {}, 0.15)])
def test_dense_learns_shapes_long(model, model_kwargs, threshold, learning_shapes, tmp_path):
    ap50 = train_and_evaluate(model, model_kwargs, learning_shapes, tmp_path)
    assert ap50 >= threshold, f"{model} {model_kwargs}: box AP50 {ap50:.3f} < {threshold}"
