"""fastdet ops: drop-in replacements for torchvision.ops where torchvision has the op.

Every function calls a custom op registered with the PyTorch dispatcher (`torch.ops.fastdet.*`),
which has CPU and CUDA kernels, a fake kernel for torch.compile / torch.export, and autograd
where it is differentiable. Pure-PyTorch references of every op are in `fastdet.ops._reference`.
"""

from .border_align import BorderAlign, border_align
from .box_iou import (
    box_iou,
    complete_box_iou,
    ciou_loss,
    diou_loss,
    distance_box_iou,
    generalized_box_iou,
    giou_loss,
    iou_loss,
)
from .deform_conv2d import (
    DeformConv2d,
    DeformConv2dPack,
    ModulatedDeformConv2dPack,
    deform_conv2d,
    deform_conv2d_onnx_translation,
)
from .corner_pool import CornerPool, corner_pool, corner_pool_sum
from .multiclass_nms import multiclass_nms
from .nms import batched_nms, nms
from .roi_pool import RoIPool, roi_pool
from .sigmoid_focal_loss import SigmoidFocalLoss, sigmoid_focal_loss
from .roi_align import MultiScaleRoIAlign, RoIAlign, multi_scale_roi_align, roi_align
from .simota import SimOTAAssigner, simota_assign, simota_cost
from .soft_nms import soft_nms

__all__ = [
    "border_align",
    "BorderAlign",
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "iou_loss",
    "giou_loss",
    "diou_loss",
    "ciou_loss",
    "nms",
    "batched_nms",
    "multiclass_nms",
    "soft_nms",
    "corner_pool",
    "corner_pool_sum",
    "CornerPool",
    "sigmoid_focal_loss",
    "SigmoidFocalLoss",
    "deform_conv2d",
    "DeformConv2d",
    "DeformConv2dPack",
    "ModulatedDeformConv2dPack",
    "deform_conv2d_onnx_translation",
    "roi_pool",
    "RoIPool",
    "roi_align",
    "RoIAlign",
    "multi_scale_roi_align",
    "MultiScaleRoIAlign",
    "simota_cost",
    "simota_assign",
    "SimOTAAssigner",
]
