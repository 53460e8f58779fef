"""YOLOX in fastdet's engine: the shapes preset, the command line end to end (train -> eval ->
detect) on a tiny generated dataset, and the learning test (YOLOX-tiny from scratch on shapes)."""

import json

import pytest
import torch

from fastdet.cli import main
from fastdet.engine import TrainConfig, fit
from fastdet.engine.trainer import model_kwargs_for


def test_shapes_preset_sets_input_size():
    kwargs = model_kwargs_for(TrainConfig(model="yolox_nano", shapes_image_size=96), num_classes=4)
    # the datasets' labels 1..3 are YOLOX's class channels 0..2
    assert kwargs["input_size"] == 96 and kwargs["num_classes"] == 3 and kwargs["label_offset"] == 1
    assert "min_size" not in kwargs and "max_size" not in kwargs
    user = model_kwargs_for(TrainConfig(model="yolox_s", model_kwargs={"input_size": 64}), num_classes=4)
    assert user["input_size"] == 64
    assert "input_size" not in model_kwargs_for(TrainConfig(model="yolox_s", data="somewhere"), num_classes=4)


def test_cli_train_eval_detect(tmp_path, eval_and_detect):
    data, run = tmp_path / "shapes", tmp_path / "run"
    assert main(["shapes", str(data), "--split", "train", "--num-images", "4", "--image-size", "64",
                 "--no-progress"]) == 0
    assert main(["shapes", str(data), "--split", "val", "--num-images", "2", "--image-size", "64", "--seed", "1",
                 "--no-progress"]) == 0
    assert main(["train", "--model", "yolox_nano", "--model-arg", "input_size=64", "--data", str(data),
                 "--output", str(run), "--epochs", "1", "--batch-size", "2", "--workers", "0", "--warmup-iters", "1",
                 "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert set(record["losses"]) == {"loss", "loss_iou", "loss_obj", "loss_cls"}
    assert record["iterations"] == 2 and record["metrics"]["bbox"].keys() >= {"AP", "AP50"}

    eval_and_detect(run / "last.pt", data, 2)


EPOCHS = 18
THRESHOLD = 0.2


# Measured on this 2-core machine (shared, load ~6) with exactly this set-up (256 training images
# of 128 px, batch 8, AdamW 2e-3, lr / 10 after epochs 12 and 16, one thread), 2026-12-06:
# box AP50 0.320 at 18 epochs, 146.6 s user + 1.8 s sys, 251 s wall (with the load; alone, one
# thread, wall is about the CPU time). The same recipe gave 0.279 at 16 epochs and 0.429 at 20
# (lr steps 14, 18); epochs 5 and 10 of a correct run are at 0.02 and 0.14, a broken assignment
# stays near 0. YOLOX-nano (depthwise, width 0.25) learns far slower here: 0.15 after 30 epochs.
@pytest.mark.slow
def test_yolox_learns_shapes(learning_shapes, tmp_path):
    data = learning_shapes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured with one thread; on 2 busy cores a second thread only adds overhead
    try:
        torch.manual_seed(0)
        cfg = TrainConfig(model="yolox_tiny", data=str(data), output=str(tmp_path / "run"), epochs=EPOCHS, batch_size=8,
                          lr=2e-3, workers=0, warmup_iters=50, eval_every=0, progress=False, seed=0,
                          model_kwargs=dict(input_size=128))
        result = fit(cfg)
    finally:
        torch.set_num_threads(threads)
    ap50 = result["metrics"]["bbox"]["AP50"]
    print("yolox_tiny box AP50", ap50)
    assert ap50 >= THRESHOLD, f"yolox_tiny: box AP50 {ap50:.3f} < {THRESHOLD}"
