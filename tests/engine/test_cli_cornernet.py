"""CornerNet in fastdet's engine: the shapes preset (no background class) and the command line end to
end (train -> eval -> detect) on a tiny generated dataset."""

import json

from fastdet.cli import main
from fastdet.engine import TrainConfig
from fastdet.engine.trainer import model_kwargs_for


def test_shapes_preset():
    kwargs = model_kwargs_for(TrainConfig(model="cornernet_hourglass_light", shapes_image_size=96), num_classes=4)
    # the datasets' labels 1..3 are the heatmaps' class channels 0..2; images keep their size
    assert kwargs == {"min_size": 96, "max_size": 96, "num_classes": 3, "label_offset": 1}


def test_cli_train_eval_detect(shapes, tmp_path, eval_and_detect):
    data, run = shapes, tmp_path / "run"
    assert main(["train", "--model", "cornernet_hourglass_light", "--data", str(data), "--output", str(run),
                 "--min-size", "64", "--max-size", "64", "--epochs", "1", "--batch-size", "3", "--workers", "0",
                 "--warmup-iters", "1", "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert set(record["losses"]) == {"loss", "loss_heatmap", "loss_pull", "loss_push", "loss_offset"}
    assert record["iterations"] == 2 and record["metrics"]["bbox"].keys() >= {"AP", "AP50"}

    eval_and_detect(run / "last.pt", data, 3)
