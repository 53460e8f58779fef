"""Detectors built from fastdet ops. Each family module has a ``BUILDERS`` dict (name -> builder);
this package merges them into one."""

from .anchors import AnchorGenerator, DefaultBoxGenerator
from . import borderdet, cornernet, faster_rcnn, fcos, gfl, retinanet, ssd, ssdlite, yolox
from .borderdet import BorderAlignModule, BorderDet, BorderDetHead, borderdet_resnet18_fpn, borderdet_resnet50_fpn
from .cornernet import CornerHead, CornerNet, CornerPooling, cornernet_hourglass104, cornernet_hourglass_light
from .dense import DenseDetector
from .faster_rcnn import (
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
from .hourglass import StackedHourglass
from .fcos import FCOS, FCOSHead, FCOSRegressionHead, fcos_resnet18_fpn, fcos_resnet50_fpn
from .gfl import GFL, GFLHead, GFLRegressionHead, gfl_resnet18_fpn, gfl_resnet50_fpn
from .retinanet import (
    RetinaNet,
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
    retinanet_resnet18_fpn,
    retinanet_resnet50_fpn,
    retinanet_resnet50_fpn_v2,
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
from .ssd import (
    SSD,
    SSDFeatureExtractorResNet,
    SSDFeatureExtractorVGG,
    SSDHead,
    SSDScoringHead,
    ssd300_vgg16,
    ssd_resnet18,
)
from .ssdlite import SSDLiteFeatureExtractorMobileNet, SSDLiteHead, ssdlite320_mobilenet_v3_large
from .transform import RCNNTransform
from .yolox import (
    YOLOX,
    YOLOXExport,
    YOLOXHead,
    YOLOXTransform,
    yolox_l,
    yolox_m,
    yolox_nano,
    yolox_s,
    yolox_tiny,
    yolox_x,
)

BUILDERS = {**faster_rcnn.BUILDERS, **retinanet.BUILDERS, **fcos.BUILDERS, **gfl.BUILDERS, **borderdet.BUILDERS,
            **ssd.BUILDERS, **ssdlite.BUILDERS, **yolox.BUILDERS, **cornernet.BUILDERS}

__all__ = [
    "AnchorGenerator", "FasterRCNN", "GeneralizedRCNN", "MaskRCNN", "RCNNTransform", "RegionProposalNetwork",
    "RPNHead", "RoIHeads", "TwoMLPHead", "FastRCNNConvFCHead", "FastRCNNPredictor", "MaskRCNNHeads",
    "MaskRCNNPredictor", "paste_masks_in_image", "DenseDetector", "RetinaNet", "RetinaNetHead",
    "RetinaNetClassificationHead", "RetinaNetRegressionHead", "FCOS", "FCOSHead", "FCOSRegressionHead",
    "GFL", "GFLHead", "GFLRegressionHead", "BorderDet", "BorderDetHead", "BorderAlignModule",
    "DefaultBoxGenerator", "SSD", "SSDHead", "SSDScoringHead", "SSDLiteHead", "SSDFeatureExtractorVGG",
    "SSDFeatureExtractorResNet", "SSDLiteFeatureExtractorMobileNet", "YOLOX", "YOLOXExport", "YOLOXHead", "YOLOXTransform",
    "CornerNet", "CornerHead", "CornerPooling", "StackedHourglass", *BUILDERS,
]
