"""The zoo's command line end to end on a tiny generated dataset: shapes -> train -> resume -> eval
-> detect, the errors users hit, and two-process DDP training on gloo under torchrun."""

import json
from pathlib import Path

import pytest

from fastdet.cli import main

MODEL = ["--model", "fasterrcnn_resnet18_fpn", "--min-size", "64", "--max-size", "64",
         "--model-arg", "representation_size=64", "--model-arg", "box_batch_size_per_image=32"]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--epochs", "1", "--batch-size", "3",
               "--workers", "0", "--warmup-iters", "1", "--lr", "0.005", "--no-progress"])
    assert rc == 0
    return out


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_train_writes_checkpoint_log_and_metrics(trained):
    assert (trained / "last.pt").is_file()
    (record,) = _log(trained)
    assert record["epoch"] == 1 and record["iterations"] == 2 and record["world_size"] == 1
    assert set(record["losses"]) >= {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert record["metrics"]["bbox"].keys() >= {"AP", "AP50", "AP75", "AR100"}


def test_resume_continues_from_the_next_epoch(shapes, trained, tmp_path):
    out = tmp_path / "resumed"
    rc = main(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--epochs", "2", "--batch-size", "3",
               "--workers", "0", "--resume", str(trained / "last.pt"), "--eval-every", "0", "--no-progress"])
    assert rc == 0
    assert [r["epoch"] for r in _log(out)] == [2]


def test_eval_prints_table_and_writes_json(shapes, trained, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["eval", str(trained / "last.pt"), "--data", str(shapes), "--json", str(out), "--workers", "0",
                 "--no-progress"]) == 0
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["bbox"]["AP50"] <= 1.0 or metrics["bbox"]["AP50"] == -1
    assert "AP50" in capsys.readouterr().out


def test_detect_writes_images_and_json(shapes, trained, tmp_path):
    out = tmp_path / "det"
    assert main(["detect", str(trained / "last.pt"), str(shapes / "val"), "--output", str(out),
                 "--score-thresh", "0", "--no-progress"]) == 0
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == 3
    for r in records:
        assert Path(r["output"]).is_file() and r["width"] == 64
        for d in r["detections"]:
            assert len(d["box"]) == 4 and 0 <= d["score"] <= 1 and d["class"] in ("rectangle", "ellipse", "triangle")


@pytest.mark.parametrize("argv, message", [
    (["eval", "{tmp}/missing.pt", "--data", "{tmp}"], "does not exist"),
    (["detect", "{ckpt}", "{tmp}/nothing-here.png"], "does not exist"),
    (["train", "--model", "no_such_model", "--output", "{tmp}/x"], "unknown model 'no_such_model'"),
    (["train", "--data", "{tmp}/empty", "--output", "{tmp}/x"], "has no annotations/instances_train.json"),
    (["train", "--model", "maskrcnn_resnet18_fpn", "--data", "{shapes}", "--output", "{tmp}/x", "--resume", "{ckpt}"],
     "holds a 'fasterrcnn_resnet18_fpn' model, not 'maskrcnn_resnet18_fpn'"),
    (["train", *MODEL, "--data", "{shapes}", "--output", "{tmp}/x", "--resume", "{ckpt}", "--epochs", "1"],
     "already completed 1 epoch"),
    (["eval", "{raw}", "--data", "{shapes}"], "not a fastdet checkpoint"),
])
def test_user_errors_are_one_line(argv, message, shapes, trained, tmp_path, capsys):
    import torch

    (tmp_path / "empty").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "raw.pt")
    fill = dict(tmp=tmp_path, ckpt=trained / "last.pt", shapes=shapes, raw=tmp_path / "raw.pt")
    assert main([a.format(**fill) for a in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_model_arg_needs_key_and_value(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--model-arg", "representation_size"])
    assert e.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err


def test_torchrun_two_processes_gloo(shapes, tmp_path, torchrun):
    out = tmp_path / "ddp"
    proc = torchrun(["train", *MODEL, "--data", str(shapes), "--output", str(out), "--epochs", "1",
                     "--batch-size", "2", "--workers", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = _log(out)
    # 6 images over 2 ranks -> 3 per rank -> 2 steps of batch 2 each; metrics gathered from both ranks
    assert record["world_size"] == 2 and record["iterations"] == 2
    assert record["metrics"]["bbox"]["AP50"] is not None
    assert (out / "last.pt").is_file()
