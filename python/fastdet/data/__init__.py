"""Detection data: the synthetic shapes dataset, a COCO-format reader and detection transforms.

Boxes are absolute-pixel xyxy float32, labels contiguous 1..K with 0 = background (torchvision's
detection convention), images float32 ``[3, H, W]`` RGB in [0, 1].
"""

from . import transforms
from .coco import CocoDetection, build_coco_dataset, collate_fn, decode_segmentation
from .shapes import SHAPES_CLASSES, generate_shapes

__all__ = [
    "SHAPES_CLASSES",
    "generate_shapes",
    "CocoDetection",
    "build_coco_dataset",
    "collate_fn",
    "decode_segmentation",
    "transforms",
]
