"""The zoo's command line with the dense detectors (RetinaNet, FCOS, GFL, BorderDet) end to end on a tiny generated
dataset: train -> eval -> detect; and the shapes preset they get when `fastdet train` generates the data."""

import json

import pytest

from fastdet.cli import main
from fastdet.engine.trainer import TrainConfig, model_kwargs_for


@pytest.mark.parametrize("model, losses", [("retinanet_resnet18_fpn", {"classification", "bbox_regression"}),
                                           ("fcos_resnet18_fpn", {"classification", "bbox_regression", "bbox_ctrness"}),
                                           ("gfl_resnet18_fpn", {"classification", "bbox_regression", "bbox_distribution"}),
                                           ("borderdet_resnet18_fpn", {"classification", "bbox_regression", "bbox_ctrness",
                                                                       "border_classification", "border_regression"})])
def test_train_eval_detect(model, losses, shapes, tmp_path, capsys, eval_and_detect):
    out = tmp_path / "run"
    rc = main(["train", "--model", model, "--min-size", "64", "--max-size", "64", "--model-arg", "num_convs=1",
               "--model-arg", "score_thresh=0.0", "--data", str(shapes), "--output", str(out), "--epochs", "1",
               "--batch-size", "2", "--workers", "0", "--warmup-iters", "1", "--no-progress"])
    assert rc == 0
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert set(record["losses"]) == losses | {"loss"} and record["iterations"] == 3  # 6 images, batch 2
    assert record["metrics"]["bbox"].keys() >= {"AP", "AP50"}

    records = eval_and_detect(out / "last.pt", shapes, 3)
    assert "AP50" in capsys.readouterr().out
    assert sum(len(r["detections"]) for r in records) > 0  # score_thresh 0: the model reports boxes


@pytest.mark.parametrize("model", ["retinanet_resnet18_fpn", "fcos_resnet50_fpn", "gfl_resnet18_fpn",
                                   "borderdet_resnet18_fpn"])
def test_shapes_preset(model):
    kwargs = model_kwargs_for(TrainConfig(model=model, model_kwargs={"topk_candidates": 50}), num_classes=4)
    assert kwargs["num_convs"] == 2 and kwargs["topk_candidates"] == 50 and kwargs["min_size"] == 128
    assert kwargs["fpn_channels"] == 128
    assert ("anchor_sizes" in kwargs) == ("head_norm" in kwargs) == model.startswith("retinanet")
    from fastdet import models

    m = models.build_model(model, **kwargs)
    assert len(m.head.classification_head.conv) == (2 if model.startswith("retinanet") else 6)
    assert m.backbone.out_channels == 128 and m.head.regression_head.bbox_reg.in_channels == 128
