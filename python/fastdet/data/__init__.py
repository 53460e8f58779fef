"""Detection data: the synthetic shapes dataset, a COCO-format reader and detection transforms.

Boxes are absolute-pixel xyxy float32, labels contiguous 1..K with 0 = background (torchvision's
detection convention), images float32 ``[3, H, W]`` RGB in [0, 1].
"""

from . import transforms
from .coco import CocoDetection, build_coco_dataset, collate_fn, decode_segmentation

__all__ = [
    "SHAPES_CLASSES",
    "generate_shapes",
    "CocoDetection",
    "build_coco_dataset",
    "collate_fn",
    "decode_segmentation",
    "transforms",
]


def __getattr__(name):
    # fastdet.data.shapes is imported on first use, so `python -m fastdet.data.shapes` runs it
    # without the module already sitting in sys.modules (runpy warns about that).
    if name in ("SHAPES_CLASSES", "generate_shapes"):
        from . import shapes

        return getattr(shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
