"""The zoo's command line with a semantic segmenter end to end on tiny data: train 1 epoch ->
resume -> eval (mIoU table, JSON) -> detect (blended images, class maps, JSON), on the generated
shapes (COCO layout) and on an image + PNG label map folder; the errors users hit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastdet.cli import main

MODEL = ["--model", "unet", "--model-arg", "depth=2", "--model-arg", "base_width=4"]
COMMON = ["--epochs", "1", "--batch-size", "3", "--workers", "0", "--warmup-iters", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--crop-size", "32", *COMMON]) == 0
    return out


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_logs_segmentation_losses_and_miou(trained):
    (record,) = _log(trained)
    assert record["epoch"] == 1 and record["iterations"] == 2
    assert set(record["losses"]) == {"loss", "loss_seg"}
    metrics = record["metrics"]
    assert 0.0 <= metrics["mIoU"] <= 1.0 and 0.0 <= metrics["pixel_acc"] <= 1.0
    assert set(metrics["IoU"]) == {"__background__", "rectangle", "ellipse", "triangle"}
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["model_kwargs"] == {"depth": 2, "base_width": 4, "num_classes": 4}


def test_resume_and_other_losses(shapes, trained, tmp_path):
    out = tmp_path / "resumed"
    assert main(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--crop-size", "32", "--loss", "ce_dice",
                 "--scale-range", "1,1",
                 *COMMON[:-1], "--epochs", "2", "--resume", str(trained / "last.pt"), "--eval-every", "0",
                 "--no-progress"]) == 0
    assert [r["epoch"] for r in _log(out)] == [2]


def test_aux_loss_is_logged_for_models_with_an_auxiliary_classifier(shapes, tmp_path):
    out = tmp_path / "aux"
    assert main(["train", "--model", "deeplabv3_mobilenet_v3_large", "--model-arg", "aux_loss=True", "--data",
                 str(shapes), "--output", str(out), "--crop-size", "32", "--loss", "focal", "--eval-every", "0",
                 *COMMON]) == 0
    (record,) = _log(out)
    assert set(record["losses"]) == {"loss", "loss_seg", "loss_aux"}


def test_eval_prints_miou_table_and_writes_json(shapes, trained, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(trained / "last.pt"), "--data", str(shapes), "--json", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["mIoU"] == pytest.approx(_log(trained)[0]["metrics"]["mIoU"])  # same split, same model
    printed = capsys.readouterr().out
    assert "| mIoU |" in printed and "| triangle |" in printed


def test_detect_writes_blended_images_class_maps_and_json(shapes, trained, tmp_path):
    from PIL import Image

    out = tmp_path / "seg"
    assert main(["detect", str(trained / "last.pt"), str(shapes / "val"), "--output", str(out), "--no-progress"]) == 0
    records = json.loads((out / "segmentation.json").read_text())
    assert len(records) == 3
    for r in records:
        with Image.open(r["output"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
        with Image.open(r["mask"]) as m:
            class_map = np.asarray(m)
            assert m.mode == "P" and class_map.shape == (64, 64)
        assert sum(c["pixels"] for c in r["classes"].values()) == 64 * 64
        for name, c in r["classes"].items():
            assert c["pixels"] == int((class_map == ["__background__", "rectangle", "ellipse", "triangle"].index(name)).sum())


def _label_folder(root: Path, split: str, n: int, classes: str | None = "bg\nsquare\n"):
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    for i in range(n):
        label = np.zeros((40, 40), dtype=np.uint8)
        y, x = rng.integers(0, 20, size=2)
        label[y:y + 15, x:x + 15] = 1
        image = np.where(label[..., None] == 1, 200, 30).astype(np.uint8).repeat(3, axis=2)
        Image.fromarray(image).save(root / split / "images" / f"{i}.jpg")
        Image.fromarray(label, mode="L").save(root / split / "masks" / f"{i}.png")
    if classes:
        (root / "classes.txt").write_text(classes)


def test_train_and_eval_on_an_image_and_label_map_folder(tmp_path):
    data = tmp_path / "data"
    _label_folder(data, "train", 4)
    _label_folder(data, "val", 2, classes=None)
    out = tmp_path / "run"
    assert main(["train", *MODEL, "--data", str(data), "--output", str(out), "--crop-size", "32", *COMMON]) == 0
    (record,) = _log(out)
    assert set(record["metrics"]["IoU"]) == {"bg", "square"}


def test_segmenter_user_errors_are_one_line(shapes, trained, tmp_path, capsys):
    cases = [
        (["train", *MODEL, "--data", str(tmp_path), "--output", str(tmp_path / "x")], "has no split 'train': expected"),
        (["train", "--model", "fcn_resnet50", "--data", str(shapes), "--output", str(tmp_path / "x"), "--resume",
          str(trained / "last.pt")], "holds a 'unet' model, not 'fcn_resnet50'"),
        (["train", *MODEL, "--model-arg", "base_width=8", "--data", str(shapes), "--output", str(tmp_path / "x"),
          "--resume", str(trained / "last.pt"), "--epochs", "2"], "was trained with"),
        (["train", "--model", "unet", "--min-size", "64", "--data", str(shapes), "--output", str(tmp_path / "x")],
         "unet: unexpected keyword argument(s) min_size"),
        (["eval", str(trained / "last.pt"), "--data", str(tmp_path / "nothing")], "is not a folder"),
    ]
    for argv, message in cases:
        assert main(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_models_lists_the_task(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "unet  (semantic segmentation)" in out and "maskrcnn_resnet18_fpn  (masks)" in out


def test_torchrun_two_processes_sum_one_confusion_matrix(shapes, tmp_path, torchrun):
    out = tmp_path / "ddp"
    proc = torchrun(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--crop-size", "32", "--epochs", "1",
                     "--batch-size", "2", "--workers", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = _log(out)
    # 6 images over 2 ranks -> 3 per rank -> 2 steps; the 3 validation images are split 2 + 1 (no
    # padding sampler duplicating one), so the summed matrix counts every pixel exactly once
    assert record["world_size"] == 2 and record["iterations"] == 2
    assert record["metrics"]["pixels"] == 3 * 64 * 64
