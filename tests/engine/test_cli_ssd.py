"""SSD models through the zoo's command line on a tiny generated shapes set: the shapes preset gives
them a fixed input `size` (not min_size / max_size), and train -> resume -> eval -> detect work."""

import json

import pytest
import torch

from fastdet.cli import main
from fastdet.engine import TrainConfig
from fastdet.engine.trainer import model_kwargs_for

SSDLITE = "ssdlite320_mobilenet_v3_large"


@pytest.mark.parametrize("model, expected", [
    (SSDLITE, dict(size=(96, 96), min_ratio=0.1, max_ratio=0.9)),
    ("ssd_resnet18", dict(size=(96, 96))),
    ("ssd300_vgg16", {}),  # keeps its 300 px: VGG's extra layers need >= ~260 px
    ("fasterrcnn_resnet18_fpn", dict(min_size=96, max_size=96)),
])
def test_shapes_preset_input_size(model, expected):
    kwargs = model_kwargs_for(TrainConfig(model=model, shapes_image_size=96), num_classes=4)
    assert {k: kwargs[k] for k in expected} == expected and kwargs["num_classes"] == 4
    assert not ({"size", "min_size", "max_size"} - set(expected)) & set(kwargs)
    user = model_kwargs_for(TrainConfig(model=model, data="somewhere", model_kwargs={"score_thresh": 0.2}), 4)
    assert user == {"score_thresh": 0.2, "num_classes": 4}  # no preset on a user's data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssd")
    rc = main(["train", "--model", SSDLITE, "--output", str(out), "--epochs", "1", "--batch-size", "4",
               "--shapes-images", "8", "--shapes-image-size", "64", "--workers", "0", "--warmup-iters", "1",
               "--no-progress"])
    assert rc == 0
    return out


def test_train_eval_detect(trained, tmp_path):
    (record,) = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert record["iterations"] == 2 and set(record["losses"]) == {"loss", "bbox_regression", "classification"}
    assert record["metrics"]["bbox"].keys() >= {"AP", "AP50"}
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["model_kwargs"]["size"] == (64, 64)

    metrics = tmp_path / "metrics.json"
    assert main(["eval", str(trained / "last.pt"), "--data", str(trained / "shapes"), "--json", str(metrics),
                 "--workers", "0", "--no-progress"]) == 0
    assert json.loads(metrics.read_text())["bbox"]["AP50"] == pytest.approx(record["metrics"]["bbox"]["AP50"])

    det = tmp_path / "det"
    assert main(["detect", str(trained / "last.pt"), str(trained / "shapes" / "val"), "--output", str(det),
                 "--score-thresh", "0", "--no-progress"]) == 0
    records = json.loads((det / "detections.json").read_text())
    assert len(records) == 8 and sum(len(r["detections"]) for r in records) > 0
    for d in records[0]["detections"]:
        assert all(-1e-3 <= v <= 64 + 1e-3 for v in d["box"]) and d["class"] in ("rectangle", "ellipse", "triangle")


def test_resume(trained, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "shapes").symlink_to(trained / "shapes")  # the same generated data
    assert main(["train", "--model", SSDLITE, "--output", str(out), "--epochs", "2", "--batch-size", "4",
                 "--shapes-images", "8", "--shapes-image-size", "64", "--workers", "0", "--eval-every", "0",
                 "--resume", str(trained / "last.pt"), "--no-progress"]) == 0
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert record["epoch"] == 2


def test_min_size_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--model", SSDLITE, "--min-size", "64", "--output", str(tmp_path / "x"),
                 "--shapes-images", "4", "--shapes-image-size", "64", "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "SSD: min_size does not apply" in err and "Traceback" not in err
