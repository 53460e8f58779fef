"""Training, evaluation and inference for the model zoo (`fastdet train`, `fastdet eval`, `fastdet detect`).

    from fastdet.engine import TrainConfig, fit
    result = fit(TrainConfig(model="fasterrcnn_resnet18_fpn", epochs=12, output="runs/shapes"))
    result = fit(TrainConfig(model="unet", epochs=12, output="runs/seg"))  # a semantic segmenter: mIoU

The model's task (`fastdet.engine.tasks`) decides the data reader, the loss and the metrics.

See `fastdet.engine.cli` for the command-line options and `fastdet.engine.checkpoint` for the
checkpoint format.
"""

from .checkpoint import build_model as model_from_checkpoint
from .detect import detect, find_images, segment
from .evaluate import evaluate, evaluate_segmentation
from .trainer import TrainConfig, fit

__all__ = ["TrainConfig", "fit", "evaluate", "evaluate_segmentation", "detect", "segment", "find_images",
           "model_from_checkpoint"]
