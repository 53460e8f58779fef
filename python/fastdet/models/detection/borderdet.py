"""BorderDet (Qiu et al. 2020, "BorderDet: Border Feature for Dense Object Detection") on FCOS.

FCOS predicts coarse boxes; the Border Alignment Module (BAM) of each branch (classification and
regression) then pools, with ``fastdet.ops.border_align`` (pool size 10), the max of border
features along the four sides of each location's coarse box (detached, in feature-map
coordinates), concatenates them with the location's own feature and predicts a border class logit
(classification branch) and a refinement of the coarse box (regression branch).

What is implemented (after the paper and its cvpods code, written here from the description):

* BAM: 1x1 conv + GroupNorm + ReLU to 4 * C border channels (one C-block per side: top, left,
  bottom, right), border_align, concatenated with a 1x1 conv + GroupNorm + ReLU of C channels at
  the location, fused by a 1x1 conv + ReLU back to the tower's width; C = border_channels
  (default the FPN width). The BAMs read the last features of the FCOS towers.
* Refinement targets: ``(gt - coarse) / (size * 0.5)`` per side (x sides by the coarse box's
  width, y sides by its height; border box std 0.5); refined box = coarse + delta * 0.5 * size.
* Loss: FCOS's losses + "border_classification" (sigmoid focal loss, alpha 0.25, gamma 2) +
  "border_regression" (smooth L1, beta 1/9, on positives), both divided by the number of border
  positives (at least 1). Border positives are re-assigned from the coarse boxes: a location whose
  coarse box has IoU >= 0.6 with a gt learns that (best) gt; the others are background.
* Score: the geometric mean of FCOS's score sqrt(class prob * centerness) and the border class
  prob; boxes: the refined ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from ._utils import anchor_major, pairwise_iou
from .fcos import FCOS, FCOSHead, check_num_classes, fcos_family_builder
from .retinanet import init_normal

BORDER_BOX_STD = 0.5
BORDER_IOU_THRESH = 0.6


def _conv1x1_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1), nn.GroupNorm(32, out_channels), nn.ReLU())


class BorderAlignModule(nn.Module):
    """BAM (BorderDet fig. 4): forward(feature Tensor[B, C_in, H, W], boxes Tensor[B, H * W, 4] xyxy in
    feature-map coordinates) -> Tensor[B, C_in, H, W] (location + border features, fused)."""

    def __init__(self, in_channels: int, border_channels: int, pool_size: int = 10):
        super().__init__()
        self.point_conv = _conv1x1_gn_relu(in_channels, border_channels)
        self.border_conv = _conv1x1_gn_relu(in_channels, 4 * border_channels)
        self.fuse = nn.Sequential(nn.Conv2d(5 * border_channels, in_channels, kernel_size=1), nn.ReLU())
        self.pool_size = int(pool_size)

    def forward(self, feature: Tensor, boxes: Tensor) -> Tensor:
        b, _, h, w = feature.shape
        border = ops.border_align(self.border_conv(feature), boxes, self.pool_size)  # [B, C, H*W, 4]
        border = border.permute(0, 3, 1, 2).reshape(b, -1, h, w)  # [B, 4C, H, W], side-major blocks
        return self.fuse(torch.cat((border, self.point_conv(feature)), dim=1))


def border_deltas(coarse: Tensor, gt: Tensor) -> Tensor:
    """Refinement targets Tensor[N, 4]: (gt - coarse) per side over (coarse size * BORDER_BOX_STD)."""
    return (gt - coarse) / (_sizes(coarse) * BORDER_BOX_STD)


def refine_boxes(coarse: Tensor, deltas: Tensor) -> Tensor:
    """The inverse of border_deltas: coarse + deltas * coarse size * BORDER_BOX_STD (any leading shape)."""
    return coarse + deltas * _sizes(coarse) * BORDER_BOX_STD


def _sizes(boxes: Tensor) -> Tensor:
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return torch.stack((w, h, w, h), dim=-1)


def _feature_scale(points: Tensor, h: int, w: int) -> Tensor:
    """(sx, sy, sx, sy), Tensor[4]: image pixels per feature-map pixel of a level whose anchor points
    Tensor[h * w, 4] (row-major) sit at (x * sx, y * sy): the spacing of the points (the anchor
    generator's stride, padded size // map size), or the anchor side (the nominal stride) along an
    axis with one point."""
    centres = (points[:, :2] + points[:, 2:]) / 2
    side = points[0, 2] - points[0, 0]
    sx = centres[1, 0] - centres[0, 0] if w > 1 else side
    sy = centres[w, 1] - centres[0, 1] if h > 1 else side
    return torch.stack((sx, sy, sx, sy))


class BorderDetHead(FCOSHead):
    """FCOSHead + one BorderAlignModule per branch, a 3x3 conv to border class logits and a 3x3 conv
    to 4 refinement deltas.

    forward(features) -> FCOSHead's outputs plus "cls_tower" / "reg_tower" (lists of the towers'
    per-level features, for the border branches); border_outputs(head_outputs, anchors,
    num_anchors_per_level) -> {"coarse_boxes" [B, N, 4] (detached, image coordinates),
    "border_cls_logits" [B, N, num_classes], "border_regression" [B, N, 4]}.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 border_channels: int | None = None, pool_size: int = 10, prior_probability: float = 0.01):
        super().__init__(in_channels, num_anchors, num_classes, num_convs)
        border_channels = border_channels or in_channels
        self.num_classes = num_classes
        self.border_cls = BorderAlignModule(in_channels, border_channels, pool_size)
        self.border_reg = BorderAlignModule(in_channels, border_channels, pool_size)
        self.border_cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.border_bbox_reg = nn.Conv2d(in_channels, 4, kernel_size=3, padding=1)
        init_normal(self.border_bbox_reg)
        init_normal(self.border_cls_logits, bias=-math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> dict:
        cls_head, reg_head = self.classification_head, self.regression_head
        cls_tower = [cls_head.conv(f) for f in features]
        reg_tower = [reg_head.conv(f) for f in features]
        return {"cls_logits": torch.cat([anchor_major(cls_head.cls_logits(t), self.num_classes) for t in cls_tower], 1),
                "bbox_regression": torch.cat([anchor_major(F.relu(reg_head.bbox_reg(t)), 4) for t in reg_tower], 1),
                "bbox_ctrness": torch.cat([anchor_major(reg_head.bbox_ctrness(t), 1) for t in reg_tower], 1),
                "cls_tower": cls_tower, "reg_tower": reg_tower}

    def border_outputs(self, head_outputs: dict, anchors: list[Tensor], num_anchors_per_level: list[int]
                       ) -> dict[str, Tensor]:
        points = torch.stack(anchors)  # [B, N, 4], squares of side = the level's stride
        coarse = self.box_coder.decode(head_outputs["bbox_regression"].detach(), points)
        cls_logits, regression, start = [], [], 0
        for cls_feature, reg_feature, n in zip(head_outputs["cls_tower"], head_outputs["reg_tower"],
                                               num_anchors_per_level):
            scale = _feature_scale(points[0, start: start + n], *cls_feature.shape[-2:])
            boxes = (coarse[:, start: start + n] / scale).to(cls_feature.dtype)  # feature-map coordinates
            cls_logits.append(anchor_major(self.border_cls_logits(self.border_cls(cls_feature, boxes)), self.num_classes))
            regression.append(anchor_major(self.border_bbox_reg(self.border_reg(reg_feature, boxes)), 4))
            start += n
        return {"coarse_boxes": coarse, "border_cls_logits": torch.cat(cls_logits, 1),
                "border_regression": torch.cat(regression, 1)}

    def border_loss(self, targets: list[dict], border: dict[str, Tensor]) -> dict[str, Tensor]:
        """Focal loss on the border class logits and smooth L1 on the refinement deltas of the
        locations whose coarse box has IoU >= BORDER_IOU_THRESH with a gt (see the module docstring)."""
        logits = border["border_cls_logits"]
        labels, deltas, positives = [], [], []
        for t, coarse in zip(targets, border["coarse_boxes"]):
            if t["boxes"].shape[0] == 0:
                labels.append(torch.full(coarse.shape[:1], self.num_classes, dtype=torch.int64, device=coarse.device))
                positives.append(torch.zeros(coarse.shape[:1], dtype=torch.bool, device=coarse.device))
                continue
            best_iou, best = pairwise_iou(t["boxes"].to(coarse.dtype), coarse).max(dim=0)
            positive = best_iou >= BORDER_IOU_THRESH
            labels.append(torch.where(positive, t["labels"][best], self.num_classes))
            positives.append(positive)
            deltas.append(border_deltas(coarse[positive], t["boxes"][best[positive]].to(coarse.dtype)))
        positive = torch.stack(positives)
        num_positive = positive.sum().clamp(min=1).to(logits.dtype)
        loss_cls = ops.sigmoid_focal_loss(logits, torch.stack(labels), reduction="sum") / num_positive
        target = torch.cat(deltas) if deltas else logits.new_zeros((0, 4))
        loss_reg = F.smooth_l1_loss(border["border_regression"][positive], target, beta=1 / 9, reduction="sum")
        return {"border_classification": loss_cls, "border_regression": loss_reg / num_positive}


class BorderDet(FCOS):
    """FCOS with BorderDet's border branches (see the module docstring). Arguments as FCOS's, plus
    border_channels (C of the BAMs, default the FPN width; a multiple of 32) and pool_size (10)."""

    def __init__(self, backbone, num_classes, *, border_channels: int | None = None, pool_size: int = 10,
                 head=None, num_convs: int = 4, **kwargs):
        name = type(self).__name__
        if int(pool_size) < 1:
            raise ValueError(f"{name}: pool_size must be >= 1, got {pool_size}")
        if border_channels is not None and (int(border_channels) < 32 or int(border_channels) % 32):
            raise ValueError(f"{name}: border_channels must be a positive multiple of 32 (GroupNorm), "
                             f"got {border_channels}")
        if head is None:
            head = BorderDetHead(backbone.out_channels, 1, check_num_classes(name, num_classes), num_convs=num_convs,
                                 border_channels=border_channels, pool_size=pool_size)
        super().__init__(backbone, num_classes, head=head, num_convs=num_convs, **kwargs)

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        losses = super().compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
        border = self.head.border_outputs(head_outputs, anchors, num_anchors_per_level)
        return {**losses, **self.head.border_loss(targets, border)}

    def postprocess_detections(self, head_outputs, anchors, num_anchors_per_level, image_sizes):
        border = self.head.border_outputs(head_outputs, anchors, num_anchors_per_level)
        refined = refine_boxes(border["coarse_boxes"], border["border_regression"])
        # DenseDetector decodes "bbox_regression" at the anchors: give it the refined boxes' codes
        codes = self.box_coder.encode(torch.stack(anchors).to(refined.dtype), refined)
        outputs = {**head_outputs, "bbox_regression": codes, "border_cls_logits": border["border_cls_logits"]}
        return super().postprocess_detections(outputs, anchors, num_anchors_per_level, image_sizes)

    def class_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return torch.sqrt(super().class_scores(head_outputs) * torch.sigmoid(head_outputs["border_cls_logits"]))


borderdet_resnet50_fpn = fcos_family_builder("borderdet_resnet50_fpn", "BorderDet (FCOS + BAM), ResNet-50 FPN (P3-P7).",
                                             depth=50, cls=BorderDet, extra="border_channels, pool_size, ")
borderdet_resnet18_fpn = fcos_family_builder("borderdet_resnet18_fpn", "BorderDet (FCOS + BAM), ResNet-18 FPN (small).",
                                             depth=18, cls=BorderDet, extra="border_channels, pool_size, ")

BUILDERS = {f.__name__: f for f in (borderdet_resnet50_fpn, borderdet_resnet18_fpn)}
