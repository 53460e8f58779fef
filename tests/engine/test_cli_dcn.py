"""`fastdet train` / `fastdet eval` with a DCN backbone (--model-arg stage_with_dcn=...) on a tiny
generated dataset: the option reaches the builder, is stored in the checkpoint and rebuilds the model."""

import json

import torch

from fastdet.cli import main


def test_train_and_eval_with_dcn(shapes, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--model", "fasterrcnn_resnet18_fpn", "--model-arg", "stage_with_dcn=(False,False,True,True)",
               "--min-size", "64", "--max-size", "64", "--data", str(shapes), "--output", str(out), "--epochs", "1",
               "--batch-size", "2", "--workers", "0", "--warmup-iters", "1", "--no-progress"])
    assert rc == 0
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert record["iterations"] == 3 and all(torch.isfinite(torch.tensor(v)) for v in record["losses"].values())
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["model_kwargs"]["stage_with_dcn"] == (False, False, True, True)
    offsets = [k for k in state["model"] if ".conv_offset." in k]
    assert len(offsets) == 8 and all(k.startswith(("backbone.body.layer3.", "backbone.body.layer4.")) for k in offsets)
    # trained: the offset predictors left their zero initialisation
    assert any(state["model"][k].abs().sum() > 0 for k in offsets if k.endswith("weight"))

    metrics = tmp_path / "metrics.json"
    assert main(["eval", str(out / "last.pt"), "--data", str(shapes), "--json", str(metrics), "--workers", "0",
                 "--no-progress"]) == 0
    assert "AP50" in json.loads(metrics.read_text())["bbox"]
