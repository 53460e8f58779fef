"""fastdet's model zoo: torchvision-compatible detectors and semantic segmenters built from fastdet ops.

    from fastdet import models
    model = models.build_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=256, max_size=256)
    seg = models.build_model("deeplabv3_resnet50", num_classes=4, aux_loss=True)

Builders take torchvision's keyword arguments; ``weights`` / ``weights_backbone`` accept only None
or a local file (nothing is downloaded). State dicts of the matching torchvision models load
unchanged.
"""

from __future__ import annotations

from . import detection, segmentation
from .detection import *  # noqa: F401,F403
from .detection import __all__ as _detection_all
from .segmentation import *  # noqa: F401,F403
from .segmentation import __all__ as _segmentation_all

_BUILDERS = {**detection.BUILDERS, **segmentation.BUILDERS}

# The task of every builder: what its forward returns and what its targets are.
#   detection              list of dicts with boxes / labels / scores; losses in train mode
#   instance_segmentation  the same plus per-instance masks
#   semantic_segmentation  {"out": per-pixel logits [B, C, H, W], "aux": ...}; loss computed outside
TASKS = ("detection", "instance_segmentation", "semantic_segmentation")
_TASK_OF = {**{name: "instance_segmentation" if name.startswith("maskrcnn_") else "detection"
               for name in detection.BUILDERS},
            **{name: "semantic_segmentation" for name in segmentation.BUILDERS}}


def list_models(task: str | None = None) -> list[str]:
    """The names build_model accepts, sorted; only those of ``task`` (one of TASKS) when given."""
    if task is not None and task not in TASKS:
        raise ValueError(f"fastdet.models.list_models: task must be one of {', '.join(TASKS)}, got {task!r}")
    return sorted(name for name in _BUILDERS if task is None or _TASK_OF[name] == task)


def _checked_name(name: str, fn: str) -> str:
    if name not in _BUILDERS:
        raise ValueError(f"fastdet.models.{fn}: unknown model {name!r}; available: {', '.join(list_models())}")
    return name


def build_model(name: str, **kwargs):
    """Build a model by name with the builder's keyword arguments (see list_models())."""
    return _BUILDERS[_checked_name(name, "build_model")](**kwargs)


def model_task(name: str) -> str:
    """"detection", "instance_segmentation" or "semantic_segmentation" for a model name."""
    return _TASK_OF[_checked_name(name, "model_task")]


def is_mask_model(name: str) -> bool:
    """Whether the named model predicts instance masks (its targets need ``masks``)."""
    return _TASK_OF[_checked_name(name, "is_mask_model")] == "instance_segmentation"


__all__ = ["TASKS", "list_models", "build_model", "model_task", "is_mask_model", *_detection_all,
           *_segmentation_all]
