"""Train a small Faster R-CNN on the generated shapes dataset, evaluate it and draw its detections,
through the Python API (the same steps as `fastdet train`, `fastdet eval`, `fastdet detect`).

    .venv/bin/python examples/zoo/train_shapes.py --output runs/example --epochs 12

On a 2-core CPU this takes about the time the learning test in tests/engine/test_learning.py does.
"""

import argparse
from pathlib import Path

from fastdet.engine import TrainConfig, detect, find_images, fit, model_from_checkpoint
from fastdet.engine.checkpoint import load
from fastdet.evaluation import format_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/example")
    parser.add_argument("--model", default="fasterrcnn_resnet18_fpn")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    # The shapes dataset is generated under OUTPUT/shapes (train + val splits) on the first run.
    # Defaults: AdamW lr 1e-3, batch 4, and the small-input preset of fastdet.engine.trainer.SHAPES_MODEL_KWARGS.
    cfg = TrainConfig(model=args.model, output=args.output, epochs=args.epochs)
    result = fit(cfg)
    print(format_metrics(result["metrics"]))

    state = load(result["checkpoint"])
    model = model_from_checkpoint(state)
    images = find_images([Path(args.output) / "shapes" / "val"])[:8]
    records = detect(model, images, Path(args.output) / "detect", classes=state["classes"], device="cpu")
    print(f"drew {sum(len(r['detections']) for r in records)} detections into {Path(args.output) / 'detect'}")


if __name__ == "__main__":
    main()
