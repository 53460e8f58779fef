"""Generalized Focal Loss (Li et al. 2020, "Generalized Focal Loss: Learning Qualified and
Distributed Bounding Boxes for Dense Object Detection") on the FCOS skeleton with ATSS assignment.

The head predicts, per point, a joint class-quality score (sigmoid; its target for the gt class of
a positive is the IoU of the decoded box with its gt, 0 elsewhere), trained with Quality Focal Loss,
and per box side a discretised distribution over 0..reg_max distances (in strides), trained with
Distribution Focal Loss; the box is the distributions' expectation, also trained with the GIoU loss
(``fastdet.ops.giou_loss``). Losses and weights as the paper's GFL config: QFL (beta 2) divided by
the positives; GIoU (x 2) and DFL (x 0.25) weighted per positive by its best predicted score
(detached) and divided by the sum of those weights (at least 1). Not in this version: the paper's
learnable per-level scale of the regression.

QFL is computed here in PyTorch: ``fastdet.ops.sigmoid_focal_loss`` with soft targets modulates by
``(1 - p_t) ** gamma = (p + t - 2 p t) ** gamma``, which is ``|t - p| ** gamma`` only for t in {0, 1}.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from ._utils import LinearBoxCoder, anchor_major
from .dense import matched_targets
from .fcos import FCOS, check_num_classes, fcos_family_builder
from .retinanet import RetinaNetClassificationHead, conv_tower, init_normal

_REDUCTIONS = ("none", "mean", "sum")


def _reduce(name: str, loss: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def quality_focal_loss(logits: Tensor, targets: Tensor, beta: float = 2.0, reduction: str = "none") -> Tensor:
    """Quality Focal Loss (GFL paper, eq. 5): ``-|y - s|^beta ((1 - y) log(1 - s) + y log s)`` with
    s = sigmoid(logits) and soft targets y in [0, 1] of the logits' shape. The modulation is a
    differentiable part of the loss, as in the paper's code."""
    if targets.shape != logits.shape:
        raise ValueError(f"quality_focal_loss: targets must have the logits' shape {list(logits.shape)}, "
                         f"got {list(targets.shape)}")
    if beta < 0:
        raise ValueError(f"quality_focal_loss: beta must be >= 0, got {beta}")
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _reduce("quality_focal_loss", bce * (targets - torch.sigmoid(logits)).abs().pow(beta), reduction)


def distribution_focal_loss(logits: Tensor, targets: Tensor, reduction: str = "none") -> Tensor:
    """Distribution Focal Loss (GFL paper, eq. 6): for a target y between the bins y_l = floor(y)
    and y_r = y_l + 1, ``-((y_r - y) log S_l + (y - y_l) log S_r)`` with S = softmax(logits).

    logits Tensor[N, n + 1] over the bins 0..n, targets Tensor[N] in [0, n] (y = n uses the bins
    n - 1 and n) -> Tensor[N] (reduction "none") or a scalar."""
    if logits.dim() != 2 or logits.shape[1] < 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"distribution_focal_loss: logits must be [N, n + 1] (n >= 1) and targets [N], got "
                         f"{list(logits.shape)} and {list(targets.shape)}")
    targets = targets.to(logits.dtype)
    left = targets.floor().long().clamp(0, logits.shape[1] - 2)
    right_weight = targets - left.to(logits.dtype)
    log_probs = F.log_softmax(logits, dim=1)
    loss = -((1 - right_weight) * log_probs.gather(1, left[:, None])[:, 0]
             + right_weight * log_probs.gather(1, left[:, None] + 1)[:, 0])
    return _reduce("distribution_focal_loss", loss, reduction)


def distribution_expectation(logits: Tensor) -> Tensor:
    """The expected bin of softmax(logits) over the last dimension (bins 0..n): Tensor[...]."""
    bins = torch.arange(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    return torch.softmax(logits, dim=-1) @ bins


class GFLRegressionHead(nn.Module):
    """Per point and box side, logits of a distribution over the distances 0..reg_max strides: a conv
    tower (FCOS layout, GroupNorm) then a 3x3 conv to 4 * (reg_max + 1).

    forward(features) -> Tensor[B, sum_l H_l * W_l, 4, reg_max + 1] (sides l, t, r, b).
    """

    def __init__(self, in_channels: int, num_convs: int = 4, reg_max: int = 16):
        super().__init__()
        self.reg_max = int(reg_max)
        self.conv = conv_tower(in_channels, num_convs, partial(nn.GroupNorm, 32), flat=True)
        self.bbox_reg = nn.Conv2d(in_channels, 4 * (self.reg_max + 1), kernel_size=3, padding=1)
        init_normal(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        out = [anchor_major(self.bbox_reg(self.conv(f)), 4 * (self.reg_max + 1)) for f in features]
        out = torch.cat(out, dim=1)
        return out.reshape(out.shape[0], out.shape[1], 4, self.reg_max + 1)


class GFLHead(nn.Module):
    """classification_head (joint class-quality logits; RetinaNet's head with FCOS's tower layout) +
    regression_head (box side distributions).

    forward(features) -> {"cls_logits": [B, N, num_classes], "bbox_distribution": [B, N, 4, reg_max + 1],
    "bbox_regression": [B, N, 4] (the expected (l, t, r, b) in strides)}; compute_loss(targets,
    head_outputs, anchors, matched_idxs) -> {"classification" (QFL), "bbox_regression" (GIoU),
    "bbox_distribution" (DFL)}.
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, reg_max: int = 16,
                 giou_weight: float = 2.0, dfl_weight: float = 0.25):
        super().__init__()
        self.box_coder = LinearBoxCoder(normalize_by_size=True)
        self.classification_head = RetinaNetClassificationHead(in_channels, 1, num_classes,
                                                               norm_layer=partial(nn.GroupNorm, 32),
                                                               num_convs=num_convs, flat_tower=True)
        self.regression_head = GFLRegressionHead(in_channels, num_convs, reg_max)
        self.giou_weight = giou_weight
        self.dfl_weight = dfl_weight

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        logits = head_outputs["cls_logits"]
        foreground = torch.stack(matched_idxs) >= 0
        num_foreground = foreground.sum().clamp(min=1).to(logits.dtype)
        labels = matched_targets(targets, matched_idxs, "labels")[foreground]
        gt = matched_targets(targets, matched_idxs, "boxes")[foreground].to(logits.dtype)
        points = torch.stack(anchors)[foreground]
        boxes = self.box_coder.decode(head_outputs["bbox_regression"][foreground], points)

        # quality targets: IoU(decoded box, gt) at the gt class of each positive, 0 elsewhere
        quality = torch.zeros_like(logits)
        image_idx, point_idx = torch.where(foreground)
        quality[image_idx, point_idx, labels] = ops.box_iou(boxes.detach(), gt, aligned=True).clamp(min=0)
        loss_cls = quality_focal_loss(logits, quality, reduction="sum") / num_foreground

        # box losses weighted by each positive's best predicted score (GFL's weighting)
        weight = torch.sigmoid(logits[foreground].detach()).amax(dim=1)
        norm = weight.sum().clamp(min=1)
        loss_box = (ops.giou_loss(boxes, gt) * weight).sum() / norm
        reg_max = self.regression_head.reg_max
        sides = self.box_coder.encode(points, gt).clamp(0, reg_max - 0.01)  # [P, 4] in strides
        distribution = head_outputs["bbox_distribution"][foreground]  # [P, 4, reg_max + 1]
        loss_dfl = distribution_focal_loss(distribution.reshape(-1, reg_max + 1), sides.reshape(-1))
        loss_dfl = (loss_dfl.reshape(-1, 4).mean(dim=1) * weight).sum() / norm
        return {"classification": loss_cls, "bbox_regression": self.giou_weight * loss_box,
                "bbox_distribution": self.dfl_weight * loss_dfl}

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        distribution = self.regression_head(features)
        return {"cls_logits": self.classification_head(features), "bbox_distribution": distribution,
                "bbox_regression": distribution_expectation(distribution)}


class GFL(FCOS):
    """FCOS with a GFL head (see the module docstring): ATSS assignment by default, scores are the
    class-quality sigmoids, boxes the expected side distances. Arguments as FCOS's, plus reg_max
    (the largest distance bin, in strides; 16 as the paper)."""

    def __init__(self, backbone, num_classes, *, reg_max: int = 16, head=None, assigner: str = "atss",
                 num_convs: int = 4, **kwargs):
        name = type(self).__name__
        if int(reg_max) < 1:
            raise ValueError(f"{name}: reg_max must be >= 1, got {reg_max}")
        if head is None:
            head = GFLHead(backbone.out_channels, check_num_classes(name, num_classes), num_convs=num_convs,
                           reg_max=reg_max)
        super().__init__(backbone, num_classes, head=head, assigner=assigner, num_convs=num_convs, **kwargs)

    def class_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return torch.sigmoid(head_outputs["cls_logits"])


gfl_resnet50_fpn = fcos_family_builder("gfl_resnet50_fpn", "GFL (ATSS, QFL + DFL), ResNet-50 FPN (P3-P7).",
                                       depth=50, cls=GFL, extra="reg_max, ")
gfl_resnet18_fpn = fcos_family_builder("gfl_resnet18_fpn", "GFL (ATSS, QFL + DFL), ResNet-18 FPN (small).",
                                       depth=18, cls=GFL, extra="reg_max, ")

BUILDERS = {f.__name__: f for f in (gfl_resnet50_fpn, gfl_resnet18_fpn)}
