"""Two-stage detectors (Faster R-CNN, Mask R-CNN with FPN) built from fastdet ops."""

from .anchors import AnchorGenerator
from .faster_rcnn import (
    BUILDERS,
    FasterRCNN,
    GeneralizedRCNN,
    MaskRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet18_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet18_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from .roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    MaskRCNNHeads,
    MaskRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    paste_masks_in_image,
)
from .rpn import RegionProposalNetwork, RPNHead
from .transform import RCNNTransform

__all__ = [
    "AnchorGenerator", "FasterRCNN", "GeneralizedRCNN", "MaskRCNN", "RCNNTransform", "RegionProposalNetwork",
    "RPNHead", "RoIHeads", "TwoMLPHead", "FastRCNNConvFCHead", "FastRCNNPredictor", "MaskRCNNHeads",
    "MaskRCNNPredictor", "paste_masks_in_image", *BUILDERS,
]
