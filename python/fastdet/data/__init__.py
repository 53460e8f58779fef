"""Detection and segmentation data: the synthetic shapes dataset, a COCO-format reader, semantic
segmentation readers (class maps from COCO instance masks, image + PNG label map folders, Pascal
VOC) and transforms.

Boxes are absolute-pixel xyxy float32, labels contiguous 1..K with 0 = background (torchvision's
detection convention), images float32 ``[3, H, W]`` RGB in [0, 1]; semantic labels are int64
``[H, W]`` class maps with 255 = ignore.
"""

from . import segmentation_transforms, transforms
from .coco import CocoDetection, build_coco_dataset, collate_fn, decode_segmentation
from .segmentation import (CocoSemanticSegmentation, SegmentationFolder, build_segmentation_dataset, read_label_map,
                           segmentation_collate)

__all__ = [
    "SHAPES_CLASSES",
    "generate_shapes",
    "CocoDetection",
    "build_coco_dataset",
    "collate_fn",
    "decode_segmentation",
    "transforms",
    "CocoSemanticSegmentation",
    "SegmentationFolder",
    "build_segmentation_dataset",
    "read_label_map",
    "segmentation_collate",
    "segmentation_transforms",
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
