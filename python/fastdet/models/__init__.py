"""fastdet's model zoo: torchvision-compatible detectors built from fastdet ops.

    from fastdet import models
    model = models.build_model("fasterrcnn_resnet18_fpn", num_classes=4, min_size=256, max_size=256)

Builders take torchvision's keyword arguments; ``weights`` / ``weights_backbone`` accept only None
or a local file (nothing is downloaded). State dicts of the matching torchvision models load
unchanged.
"""

from __future__ import annotations

from .detection import *  # noqa: F401,F403
from .detection import BUILDERS as _BUILDERS
from .detection import __all__ as _detection_all

_MASK_MODELS = frozenset(name for name in _BUILDERS if name.startswith("maskrcnn_"))


def list_models() -> list[str]:
    """The names build_model accepts, sorted."""
    return sorted(_BUILDERS)


def _checked_name(name: str, fn: str) -> str:
    if name not in _BUILDERS:
        raise ValueError(f"fastdet.models.{fn}: unknown model {name!r}; available: {', '.join(list_models())}")
    return name


def build_model(name: str, **kwargs):
    """Build a model by name with the builder's keyword arguments (see list_models())."""
    return _BUILDERS[_checked_name(name, "build_model")](**kwargs)


def is_mask_model(name: str) -> bool:
    """Whether the named model predicts instance masks (its targets need ``masks``)."""
    return _checked_name(name, "is_mask_model") in _MASK_MODELS


__all__ = ["list_models", "build_model", "is_mask_model", *_detection_all]
