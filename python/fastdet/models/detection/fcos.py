"""FCOS (Tian et al. 2019, "FCOS: Fully Convolutional One-Stage Object Detection"; the improved
version of Tian et al. 2020: centre sampling, centerness on the regression branch, GIoU loss) built
from fastdet ops, with torchvision's builder, keyword arguments, state-dict keys and outputs; and the
ATSS assignment (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free Detection
via Adaptive Training Sample Selection") as an option (``assigner="atss"``).

The classification head is RetinaNet's (FCOS's tower layout, GroupNorm). Losses: focal loss
(``fastdet.ops.sigmoid_focal_loss``), GIoU (``fastdet.ops.giou_loss``) and centerness BCE, all divided
by the number of positives in the batch; post-processing scores sqrt(class prob * centerness).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from ._utils import LinearBoxCoder, anchor_major, pairwise_iou
from .anchors import AnchorGenerator
from .backbones import DCN_OFFSET_KEYS, check_stage_with_dcn
from .dense import DenseDetector, matched_targets
from .retinanet import DOC, RetinaNetClassificationHead, conv_tower, init_normal, p3_p7_backbone
from .transform import RCNNTransform
from .._weights import load_weights, resolve_weights

ASSIGNERS = ("fcos", "atss")


class FCOSRegressionHead(nn.Module):
    """Box distances and centerness for every point: a conv tower (FCOS layout) then 3x3 convs to
    (l, t, r, b) / stride (through a ReLU) and one centerness logit.

    forward(features) -> (Tensor[B, sum_l H_l * W_l, 4], Tensor[B, sum_l H_l * W_l, 1]).
    """

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4, norm_layer=None):
        super().__init__()
        self.conv = conv_tower(in_channels, num_convs, norm_layer or partial(nn.GroupNorm, 32), flat=True)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        self.bbox_ctrness = nn.Conv2d(in_channels, num_anchors, kernel_size=3, padding=1)
        init_normal(self)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        regression, centerness = [], []
        for f in features:
            t = self.conv(f)
            regression.append(anchor_major(F.relu(self.bbox_reg(t)), 4))
            centerness.append(anchor_major(self.bbox_ctrness(t), 1))
        return torch.cat(regression, dim=1), torch.cat(centerness, dim=1)


def centerness_target(ltrb: Tensor) -> Tensor:
    """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) of distances Tensor[N, 4] (FCOS eq. 3)."""
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    return torch.sqrt((lr.amin(dim=1) / lr.amax(dim=1)) * (tb.amin(dim=1) / tb.amax(dim=1)))


class FCOSHead(nn.Module):
    """classification_head (RetinaNet's, FCOS tower layout) + regression_head (boxes and centerness).

    forward(features) -> {"cls_logits": [B, N, num_classes], "bbox_regression": [B, N, 4],
    "bbox_ctrness": [B, N, 1]}; compute_loss(targets, head_outputs, anchors, matched_idxs) ->
    {"classification", "bbox_regression", "bbox_ctrness"}, each summed over the batch's points and
    divided by its number of positives.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4):
        super().__init__()
        self.box_coder = LinearBoxCoder(normalize_by_size=True)
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors, num_classes,
                                                               norm_layer=partial(nn.GroupNorm, 32),
                                                               num_convs=num_convs, flat_tower=True)
        self.regression_head = FCOSRegressionHead(in_channels, num_anchors, num_convs)

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        logits = head_outputs["cls_logits"]
        foreground = torch.stack(matched_idxs) >= 0
        num_foreground = foreground.sum().clamp(min=1).to(logits.dtype)
        # class-index targets: num_classes means background
        labels = torch.where(foreground, matched_targets(targets, matched_idxs, "labels"), logits.shape[-1])
        loss_cls = ops.sigmoid_focal_loss(logits, labels, reduction="sum")
        gt = matched_targets(targets, matched_idxs, "boxes")[foreground]
        points = torch.stack(anchors)[foreground]
        regression = head_outputs["bbox_regression"][foreground]
        gt = gt.to(regression.dtype)
        loss_box = ops.giou_loss(self.box_coder.decode(regression, points), gt, reduction="sum")
        centerness = centerness_target(self.box_coder.encode(points, gt))
        loss_ctr = F.binary_cross_entropy_with_logits(head_outputs["bbox_ctrness"][foreground][:, 0], centerness,
                                                      reduction="sum")
        return {"classification": loss_cls / num_foreground, "bbox_regression": loss_box / num_foreground,
                "bbox_ctrness": loss_ctr / num_foreground}

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        regression, centerness = self.regression_head(features)
        return {"cls_logits": self.classification_head(features), "bbox_regression": regression,
                "bbox_ctrness": centerness}


# ---- assignment -----------------------------------------------------------------------------------------


def _distances(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """(l, t, r, b) from every point Tensor[N, 2] to the sides of every box Tensor[M, 4]: Tensor[N, M, 4]."""
    return torch.cat((points[:, None] - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - points[:, None]), dim=2)


def _centres(boxes: Tensor) -> Tensor:
    return (boxes[:, :2] + boxes[:, 2:]) / 2


def fcos_assign(anchors: Tensor, gt_boxes: Tensor, num_anchors_per_level: list[int], center_sampling_radius: float
                ) -> Tensor:
    """FCOS's assignment with centre sampling, torchvision's rule: a point (anchor centre, anchor size
    = its level's stride s) is a candidate for a gt box when it lies inside the box, within
    radius * s of the box centre (in x and y), and the box's largest side distance from it is in
    (4s, 8s) (no lower bound on the first level, no upper bound on the last). Among several
    candidates the gt of smallest area wins.

    anchors Tensor[N, 4], gt_boxes Tensor[M, 4] (M >= 1) -> Tensor[N] int64: gt index or -1.
    (torchvision ranks areas as float32 1e8 - area, which ties areas within ~8 px^2; here the
    smallest area wins exactly.)
    """
    points = _centres(anchors)
    stride = anchors[:, 2] - anchors[:, 0]
    near = (points[:, None] - _centres(gt_boxes)[None]).abs().amax(dim=2) < center_sampling_radius * stride[:, None]
    ltrb = _distances(points, gt_boxes)
    reach = ltrb.amax(dim=2)
    lower = stride * 4
    lower[: num_anchors_per_level[0]] = 0
    upper = stride * 8
    upper[-num_anchors_per_level[-1]:] = float("inf")
    ok = near & (ltrb.amin(dim=2) > 0) & (reach > lower[:, None]) & (reach < upper[:, None])
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    best, idx = torch.where(ok, area[None], torch.full_like(area[None], float("inf"))).min(dim=1)
    return torch.where(torch.isinf(best), torch.full_like(idx, -1), idx)


def atss_assign(anchors: Tensor, gt_boxes: Tensor, num_anchors_per_level: list[int], topk: int = 9,
                anchor_scale: float = 8.0) -> Tensor:
    """Adaptive training sample selection (Zhang et al. 2020), for anchor points: each point stands
    for a square anchor box of anchor_scale x its stride (8, the paper's FCOS setting). Per gt box
    and level, the topk points nearest to its centre are candidates; the gt's IoU threshold is the
    mean + standard deviation (unbiased, as the paper's code) of the candidates' IoUs; candidates
    at or above it whose point lies inside the box (by more than 0.01 px) are positives. A point
    positive for several boxes takes the one it overlaps most.

    anchors Tensor[N, 4] (squares of side = stride), gt_boxes Tensor[M, 4] (M >= 1) ->
    Tensor[N] int64: gt index or -1.
    """
    points = _centres(anchors)
    half = (anchors[:, 2:] - anchors[:, :2]) * (anchor_scale / 2)
    iou = pairwise_iou(torch.cat((points - half, points + half), dim=1), gt_boxes)  # [N, M]
    distance = torch.cdist(points, _centres(gt_boxes))  # [N, M]
    candidates, start = [], 0
    for n in num_anchors_per_level:
        k = min(topk, n)
        candidates.append(distance[start: start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    candidates = torch.cat(candidates)  # [K, M] point indices
    candidate_iou = iou.gather(0, candidates)
    threshold = candidate_iou.mean(dim=0) + candidate_iou.std(dim=0)
    gt_index = torch.arange(gt_boxes.shape[0], device=gt_boxes.device).expand_as(candidates)
    inside = _distances(points, gt_boxes)[candidates, gt_index].amin(dim=2) > 0.01
    positive = (candidate_iou >= threshold) & inside
    score = torch.full_like(iou, -1.0)  # IoU of the positive (point, gt) pairs, -1 elsewhere
    score[candidates[positive], gt_index[positive]] = candidate_iou[positive]
    best, idx = score.max(dim=1)
    return torch.where(best < 0, torch.full_like(idx, -1), idx)


# ---- the model ------------------------------------------------------------------------------------------


def check_num_classes(name: str, num_classes) -> int:
    """num_classes (counting the background) as an int >= 2, else a ValueError naming the model."""
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(f"{name}: num_classes counts the background and must be >= 2, got {num_classes}")
    return int(num_classes)


class FCOS(DenseDetector):
    """FCOS with torchvision's constructor (same arguments, defaults and sub-module names; see
    torchvision.models.detection.FCOS). One anchor per location whose size is the level's stride
    (default sizes 8..128 for P3-P7), standing for the point at its centre.

    assigner (not in torchvision): "fcos" (default: centre sampling within
    center_sampling_radius strides plus FCOS's scale ranges, see fcos_assign) or "atss" (adaptive
    training sample selection, see atss_assign, with atss_topk candidates per level and gt).
    num_convs (not in torchvision's FCOS, in its FCOSHead): the convs of each head tower.
    Extra keyword arguments go to the transform (``size_divisible``, ``fixed_size``).
    """

    def __init__(self, backbone, num_classes, min_size=800, max_size=1333, image_mean=None, image_std=None,
                 anchor_generator=None, head=None, center_sampling_radius=1.5, score_thresh=0.2, nms_thresh=0.6,
                 detections_per_img=100, topk_candidates=1000, assigner="fcos", atss_topk=9, num_convs=4, **kwargs):
        name = type(self).__name__
        if assigner not in ASSIGNERS:
            raise ValueError(f"{name}: assigner must be one of {ASSIGNERS}, got {assigner!r}")
        if int(atss_topk) < 1:
            raise ValueError(f"{name}: atss_topk must be >= 1, got {atss_topk}")
        if anchor_generator is None:
            sizes = ((8,), (16,), (32,), (64,), (128,))  # the strides of P3-P7
            anchor_generator = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
        if not isinstance(anchor_generator, AnchorGenerator):
            raise TypeError(f"{name}: anchor_generator must be an AnchorGenerator, got {type(anchor_generator).__name__}")
        if anchor_generator.num_anchors_per_location()[0] != 1:
            raise ValueError(f"{name}: anchor_generator must have one anchor per location, got "
                             f"{anchor_generator.num_anchors_per_location()[0]}")
        if head is None:
            head = FCOSHead(backbone.out_channels, 1, check_num_classes(name, num_classes), num_convs=num_convs)
        transform = RCNNTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                  image_std or [0.229, 0.224, 0.225], **kwargs)
        super().__init__(backbone, head, anchor_generator, transform, score_thresh=score_thresh, nms_thresh=nms_thresh,
                         detections_per_img=detections_per_img, topk_candidates=topk_candidates)
        self.center_sampling_radius = center_sampling_radius
        self.assigner = assigner
        self.atss_topk = int(atss_topk)
        self.box_coder = LinearBoxCoder(normalize_by_size=True)

    def assign(self, anchors: Tensor, gt_boxes: Tensor, num_anchors_per_level: list[int]) -> Tensor:
        """Per anchor point the gt index it learns, or -1 (background)."""
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.int64, device=anchors.device)
        if self.assigner == "atss":
            return atss_assign(anchors, gt_boxes, num_anchors_per_level, self.atss_topk)
        return fcos_assign(anchors, gt_boxes, num_anchors_per_level, self.center_sampling_radius)

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        matched = [self.assign(a, t["boxes"], num_anchors_per_level) for a, t in zip(anchors, targets)]
        return self.head.compute_loss(targets, head_outputs, anchors, matched)

    def class_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return torch.sqrt(torch.sigmoid(head_outputs["cls_logits"]) * torch.sigmoid(head_outputs["bbox_ctrness"]))

    def decode_boxes(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode(regression, anchors)


# ---- building -------------------------------------------------------------------------------------------


def fcos_family_builder(name: str, title: str, *, depth: int, cls=None, extra: str = ""):
    """A torchvision-style builder ``name`` of the FCOS subclass cls (default FCOS) on a ResNet-depth
    FPN (P3-P7); extra: the cls-specific keyword arguments named in the docstring."""
    cls = cls or FCOS

    def build(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
              trainable_backbone_layers=None, **kwargs):
        # progress: torchvision's download progress bar; accepted for compatibility (nothing downloads)
        plan = resolve_weights(name, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                               trainable_backbone_layers=trainable_backbone_layers,
                               classifier_key="head.classification_head.cls_logits.weight")
        dcn = check_stage_with_dcn(name, kwargs.pop("stage_with_dcn", None))
        backbone = p3_p7_backbone(name, depth, plan, v2=False, channels=kwargs.pop("fpn_channels", 256),
                                  stage_with_dcn=dcn)
        model = cls(backbone, plan.num_classes, **kwargs)
        if plan.path is not None:
            load_weights(name, model, plan.path, missing_ok=DCN_OFFSET_KEYS if dcn else None)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = DOC.format(title=title, backbone=f"ResNet-{depth}", cls=cls.__name__, frozen="FrozenBatchNorm2d",
                               extra=extra + "center_sampling_radius, assigner ('fcos' or 'atss'), atss_topk, num_convs, ")
    return build


fcos_resnet50_fpn = fcos_family_builder("fcos_resnet50_fpn", "FCOS, ResNet-50 FPN (P3-P7).", depth=50)
fcos_resnet18_fpn = fcos_family_builder("fcos_resnet18_fpn", "FCOS, ResNet-18 FPN (small, for fast experiments).", depth=18)

BUILDERS = {f.__name__: f for f in (fcos_resnet50_fpn, fcos_resnet18_fpn)}
