"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") built from fastdet ops, with
torchvision's builders, keyword arguments, state-dict keys and outputs.

Backbone: torchvision's ResNet + FPN on C3-C5 with P6/P7 (LastLevelP6P7), as torchvision builds
it. Everything after it is fastdet's: the heads (whose classification head FCOS shares), anchor
matching on ``fastdet.ops.box_iou`` (eps=0), the focal loss ``fastdet.ops.sigmoid_focal_loss``, the
IoU box losses of ``fastdet.ops`` and post-processing on ``fastdet.ops.batched_nms`` (DenseDetector).
Nothing is ever downloaded: ``weights`` / ``weights_backbone`` take a local file or None.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from fastdet import ops

from .._weights import load_weights, resolve_weights
from ._utils import BoxCoder, Matcher, anchor_major, pairwise_iou
from .anchors import AnchorGenerator
from .backbones import DCN_OFFSET_KEYS, check_stage_with_dcn, resnet_fpn
from .dense import DenseDetector, matched_targets
from .rpn import conv_block, rename_legacy_keys
from .transform import RCNNTransform

BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")
# RetinaNet's head_norm: the norm layer after every head tower conv (v2's heads: GroupNorm(32))
HEAD_NORMS = {None: None, "group": partial(nn.GroupNorm, 32)}


def default_anchor_generator(sizes=(32, 64, 128, 256, 512)) -> AnchorGenerator:
    """RetinaNet's anchors: per level the base size x 2^0, 2^(1/3), 2^(2/3) (truncated to whole pixels,
    as torchvision) and aspect ratios 0.5, 1, 2: nine per location."""
    sizes = tuple((int(x), int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in sizes)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def conv_tower(channels: int, num_convs: int, norm_layer=None, flat: bool = False) -> nn.Sequential:
    """The 3x3 conv + (norm) + ReLU stack at the start of each head branch.

    flat=False: RetinaNet's layout, blocks ``conv.<i>.{0 conv, 1 norm}`` (Conv2dNormActivation; the
    conv has a bias only without a norm). flat=True: FCOS's layout, ``conv.<3i> conv (with bias),
    conv.<3i+1> norm, conv.<3i+2> ReLU`` (a norm is required)."""
    if not flat:
        return nn.Sequential(*[conv_block(channels, channels, norm_layer) for _ in range(num_convs)])
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, kernel_size=3, padding=1), norm_layer(channels), nn.ReLU()]
    return nn.Sequential(*layers)


def init_normal(module: nn.Module, bias: float = 0.0) -> None:
    """N(0, 0.01) weights and constant biases for every conv in module (RetinaNet's and FCOS's init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)


def image_weights(foreground: Tensor) -> Tensor:
    """Per image 1 / (max(1, its foreground count) * B), Tensor[B]: torchvision's normalisation of
    the RetinaNet losses (each image's sum over its positives, then the mean over images)."""
    return 1.0 / (foreground.sum(dim=1).clamp(min=1).to(torch.float32) * foreground.shape[0])


class RetinaNetClassificationHead(nn.Module):
    """Class logits for every anchor: a conv tower then a 3x3 conv to A * num_classes logits (bias
    initialised to the prior -log((1 - p) / p)). FCOS uses it with its own tower layout
    (``flat_tower=True``, GroupNorm).

    forward(features: list[Tensor[B, C, H_l, W_l]]) -> Tensor[B, sum_l H_l * W_l * A, num_classes].
    Checkpoints from before torchvision 0.13 (tower keys ``conv.<2i>``) load too.
    """

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, prior_probability: float = 0.01,
                 norm_layer=None, num_convs: int = 4, flat_tower: bool = False):
        super().__init__()
        self.conv = conv_tower(in_channels, num_convs, norm_layer, flat_tower)
        init_normal(self.conv)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, padding=1)
        init_normal(self.cls_logits, bias=-math.log((1 - prior_probability) / prior_probability))
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.flat_tower = flat_tower

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not self.flat_tower:
            rename_legacy_keys(state_dict, prefix, legacy_tower_keys())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]) -> Tensor:
        """Sigmoid focal loss (alpha 0.25, gamma 2) over the anchors not between the IoU thresholds,
        per image summed and divided by its positives, averaged over images."""
        logits = head_outputs["cls_logits"]
        matched = torch.stack(matched_idxs)
        foreground = matched >= 0
        # class-index targets: num_classes means background (no one-hot Tensor[B, A, C] needed)
        labels = torch.where(foreground, matched_targets(targets, matched_idxs, "labels"), logits.shape[-1])
        valid = matched != Matcher.BETWEEN_THRESHOLDS
        weight = image_weights(foreground)[:, None].expand_as(matched)[valid]
        return ops.sigmoid_focal_loss(logits[valid], labels[valid], weight=weight[:, None].to(logits.dtype),
                                      reduction="sum")

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat([anchor_major(self.cls_logits(self.conv(f)), self.num_classes) for f in features], dim=1)


def legacy_tower_keys() -> list[tuple[str, str]]:
    # torchvision < 0.13 stored the tower as a flat Sequential(conv, ReLU, ...): conv.<2i>.*
    return [(f"conv.{2 * i}.{p}", f"conv.{i}.0.{p}") for i in range(4) for p in ("weight", "bias")]


class RetinaNetRegressionHead(nn.Module):
    """Box deltas for every anchor: a conv tower then a 3x3 conv to 4A outputs.

    loss_type: "l1" (torchvision's default), "smooth_l1" (beta 1) on the (dx, dy, dw, dh) deltas,
    or "giou" (RetinaNet v2), "diou", "ciou" on the decoded boxes (fastdet.ops IoU losses, eps 1e-7).
    forward(features) -> Tensor[B, sum_l H_l * W_l * A, 4].
    """

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int, norm_layer=None, loss_type: str = "l1", num_convs: int = 4):
        super().__init__()
        if loss_type not in BOX_LOSSES:
            raise ValueError(f"RetinaNetRegressionHead: loss_type must be one of {BOX_LOSSES}, got {loss_type!r}")
        self.conv = conv_tower(in_channels, num_convs, norm_layer)
        init_normal(self.conv)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        init_normal(self.bbox_reg)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self._loss_type = loss_type  # torchvision's attribute name (its v2 builder sets "giou")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        rename_legacy_keys(state_dict, prefix, legacy_tower_keys())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def box_loss(self, deltas: Tensor, anchors: Tensor, gt: Tensor) -> Tensor:
        """Per-anchor loss Tensor[N] of predicted deltas Tensor[N, 4] against the matched gt boxes."""
        kind = self._loss_type
        if kind in ("l1", "smooth_l1"):
            target = self.box_coder.encode(gt, anchors)
            if kind == "l1":
                return F.l1_loss(deltas, target, reduction="none").sum(dim=1)
            return F.smooth_l1_loss(deltas, target, beta=1.0, reduction="none").sum(dim=1)
        boxes = self.box_coder.decode(deltas, anchors)[:, 0]
        loss = {"giou": ops.giou_loss, "diou": ops.diou_loss, "ciou": ops.ciou_loss}[kind]
        return loss(boxes, gt, eps=1e-7)

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> Tensor:
        """The box loss of the positive anchors, per image summed and divided by its positives,
        averaged over images."""
        matched = torch.stack(matched_idxs)
        foreground = matched >= 0
        gt = matched_targets(targets, matched_idxs, "boxes")[foreground]
        deltas = head_outputs["bbox_regression"][foreground]
        per_anchor = self.box_loss(deltas, torch.stack(anchors)[foreground].to(deltas.dtype), gt.to(deltas.dtype))
        return (per_anchor * image_weights(foreground)[torch.where(foreground)[0]]).sum()

    def forward(self, features: list[Tensor]) -> Tensor:
        return torch.cat([anchor_major(self.bbox_reg(self.conv(f)), 4) for f in features], dim=1)


class RetinaNetHead(nn.Module):
    """classification_head + regression_head (torchvision's module names), each with a tower of
    num_convs (torchvision: 4) convs.

    forward(features) -> {"cls_logits": Tensor[B, A_total, num_classes], "bbox_regression": Tensor[B, A_total, 4]}.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, norm_layer=None, loss_type: str = "l1",
                 num_convs: int = 4):
        super().__init__()
        self.classification_head = RetinaNetClassificationHead(in_channels, num_anchors, num_classes,
                                                               norm_layer=norm_layer, num_convs=num_convs)
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, norm_layer=norm_layer,
                                                       loss_type=loss_type, num_convs=num_convs)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs) -> dict[str, Tensor]:
        return {"classification": self.classification_head.compute_loss(targets, head_outputs, matched_idxs),
                "bbox_regression": self.regression_head.compute_loss(targets, head_outputs, anchors, matched_idxs)}

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {"cls_logits": self.classification_head(features), "bbox_regression": self.regression_head(features)}


class RetinaNet(DenseDetector):
    """RetinaNet with torchvision's constructor (same arguments, defaults and sub-module names; see
    torchvision.models.detection.RetinaNet for each one).

    num_classes includes the background (class 0 is never a positive). Anchors are matched to
    ground truth by IoU (>= fg_iou_thresh positive, < bg_iou_thresh negative, in between ignored;
    every gt keeps its best anchors). Losses: "classification" (focal) and "bbox_regression"
    (``head.regression_head`` loss type). ``anchor_sizes`` (not in torchvision): one base anchor
    size per level instead of 32..512, e.g. (8, 16, 32, 64, 128) for objects of 8-120 px in 128 px
    images; ``num_convs`` (not in torchvision, which has 4): the convs of each default head tower
    (2 halves a CPU training step on small inputs, where the towers dominate); ``head_norm`` (not
    in torchvision): None (v1's towers, no norm) or "group" (GroupNorm(32) after every tower conv,
    as RetinaNet v2 and FCOS: without it a model trained from scratch does not learn, see
    fastdet.engine.trainer.SHAPES_MODEL_KWARGS).
    Extra keyword arguments go to the transform (``size_divisible``, ``fixed_size``).
    """

    def __init__(self, backbone, num_classes, min_size=800, max_size=1333, image_mean=None, image_std=None,
                 anchor_generator=None, head=None, proposal_matcher=None, score_thresh=0.05, nms_thresh=0.5,
                 detections_per_img=300, fg_iou_thresh=0.5, bg_iou_thresh=0.4, topk_candidates=1000,
                 anchor_sizes=None, num_convs=4, head_norm=None, **kwargs):
        name = type(self).__name__
        if anchor_generator is not None and anchor_sizes is not None:
            raise ValueError(f"{name}: give anchor_generator or anchor_sizes, not both")
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"{name}: head_norm must be one of {tuple(HEAD_NORMS)}, got {head_norm!r}")
        if head is not None and head_norm is not None:
            raise ValueError(f"{name}: give head or head_norm, not both")
        if anchor_generator is None:
            anchor_generator = default_anchor_generator(*([anchor_sizes] if anchor_sizes is not None else []))
        if not isinstance(anchor_generator, AnchorGenerator):
            raise TypeError(f"{name}: anchor_generator must be an AnchorGenerator, got {type(anchor_generator).__name__}")
        if head is None:
            if num_classes is None or int(num_classes) < 2:
                raise ValueError(f"{name}: num_classes counts the background and must be >= 2, got {num_classes}")
            head = RetinaNetHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], num_classes,
                                 norm_layer=HEAD_NORMS[head_norm], num_convs=num_convs)
        transform = RCNNTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                  image_std or [0.229, 0.224, 0.225], **kwargs)
        super().__init__(backbone, head, anchor_generator, transform, score_thresh=score_thresh, nms_thresh=nms_thresh,
                         detections_per_img=detections_per_img, topk_candidates=topk_candidates)
        self.proposal_matcher = proposal_matcher or Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))

    def match(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        """Per anchor the matched gt index, Matcher.BELOW_LOW_THRESHOLD (-1) or BETWEEN_THRESHOLDS (-2)."""
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=anchors.device)
        return self.proposal_matcher(pairwise_iou(gt_boxes, anchors))

    def compute_loss(self, targets, head_outputs, anchors, num_anchors_per_level):
        matched = [self.match(a, t["boxes"]) for a, t in zip(anchors, targets)]
        return self.head.compute_loss(targets, head_outputs, anchors, matched)

    def class_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        return torch.sigmoid(head_outputs["cls_logits"])

    def decode_boxes(self, regression: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode(regression, anchors)[:, 0]


# ---- building -------------------------------------------------------------------------------------------


def p3_p7_backbone(fn: str, depth: int, plan, *, v2: bool, channels: int = 256, stage_with_dcn=None) -> nn.Module:
    """ResNet C3-C5 + FPN + P6/P7, torchvision's RetinaNet / FCOS backbone. v1: the body uses
    FrozenBatchNorm2d when weights are loaded and P6 comes from P5; v2: BatchNorm2d, P6 from C5.
    channels: the FPN's (and so the heads') width, 256 in torchvision; stage_with_dcn: see resnet_fpn."""
    c5 = 2048 if depth == 50 else 512
    body_norm = FrozenBatchNorm2d if plan.is_trained and not v2 else nn.BatchNorm2d
    return resnet_fpn(fn, depth, plan.backbone_path, plan.trainable_layers, body_norm_layer=body_norm,
                      returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(c5 if v2 else channels, channels),
                      out_channels=channels, stage_with_dcn=stage_with_dcn)


def _build(fn: str, *, depth: int, v2: bool, weights, weights_backbone, num_classes, trainable_backbone_layers,
           kwargs) -> RetinaNet:
    if kwargs.get("anchor_generator") is None:
        sizes = kwargs.pop("anchor_sizes", None)
        kwargs["anchor_generator"] = default_anchor_generator(*([sizes] if sizes is not None else []))
    anchors_per_location = kwargs["anchor_generator"].num_anchors_per_location()[0]
    plan = resolve_weights(fn, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                           trainable_backbone_layers=trainable_backbone_layers,
                           classifier_key="head.classification_head.cls_logits.weight", per_class=anchors_per_location)
    dcn = check_stage_with_dcn(fn, kwargs.pop("stage_with_dcn", None))
    backbone = p3_p7_backbone(fn, depth, plan, v2=v2, channels=kwargs.pop("fpn_channels", 256), stage_with_dcn=dcn)
    if v2:  # the improved recipe (Zhang et al. 2020) as torchvision's: GroupNorm heads, GIoU box loss
        if kwargs.pop("head_norm", "group") != "group":
            raise ValueError(f"{fn}: v2's heads have GroupNorm; head_norm can only be 'group'")
        kwargs.setdefault("head", RetinaNetHead(backbone.out_channels, anchors_per_location, plan.num_classes,
                                                norm_layer=HEAD_NORMS["group"], loss_type="giou",
                                                num_convs=kwargs.pop("num_convs", 4)))
    model = RetinaNet(backbone, plan.num_classes, **kwargs)
    if plan.path is not None:
        # torchvision's published v1 ResNet-50 COCO checkpoints were trained with FrozenBatchNorm eps = 0
        load_weights(fn, model, plan.path, frozen_bn_eps=0.0 if depth == 50 and not v2 else None,
                     missing_ok=DCN_OFFSET_KEYS if dcn else None)
    return model


DOC = """{title}

    Keyword arguments as torchvision's builder of the same name:
        weights: None or a local checkpoint path (a state dict, or a dict with one under "model").
            Loaded strictly (old-style torchvision key names accepted); num_classes defaults to the
            checkpoint's. Never downloads: a torchvision enum or URL is a ValueError.
        num_classes: classes including the background (default 91, COCO).
        weights_backbone: None or a local path to the {backbone} classification state dict.
            With either checkpoint the body uses {frozen}, as in torchvision.
        trainable_backbone_layers: layers (from the top) to train when weights are loaded
            (0..5, default 3); without weights all train.
        stage_with_dcn (not in torchvision): 4 bools for res2..res5, the stages whose blocks get a
            DCNv2 3x3 convolution; weights / weights_backbone may then be plain checkpoints (the
            offset predictors start at zero, the model equal to the plain one).
        fpn_channels (not in torchvision, which has 256): the width of the FPN and the heads.
        **kwargs: {cls} arguments (min_size, max_size, score_thresh, nms_thresh, detections_per_img,
            topk_candidates, {extra}...).

    Returns a {cls} in training mode.
    """


def _builder(name: str, title: str, *, depth: int, v2: bool):
    def build(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
              trainable_backbone_layers=None, **kwargs):
        # progress: torchvision's download progress bar; accepted for compatibility (nothing downloads)
        return _build(name, depth=depth, v2=v2, weights=weights, weights_backbone=weights_backbone,
                      num_classes=num_classes, trainable_backbone_layers=trainable_backbone_layers, kwargs=kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = DOC.format(title=title, backbone=f"ResNet-{depth}", cls="RetinaNet",
                               frozen="BatchNorm2d (v2)" if v2 else "FrozenBatchNorm2d (ResNet-50: eps 0 with weights)",
                               extra="fg_iou_thresh, bg_iou_thresh, anchor_sizes, num_convs, head_norm, ")
    return build


retinanet_resnet50_fpn = _builder("retinanet_resnet50_fpn", "RetinaNet, ResNet-50 FPN (P3-P7, P6 from P5).",
                                  depth=50, v2=False)
retinanet_resnet50_fpn_v2 = _builder(
    "retinanet_resnet50_fpn_v2", "RetinaNet v2, ResNet-50 FPN (P6 from C5), GroupNorm heads, GIoU box loss.",
    depth=50, v2=True)
retinanet_resnet18_fpn = _builder("retinanet_resnet18_fpn", "RetinaNet, ResNet-18 FPN (small, for fast experiments).",
                                  depth=18, v2=False)

BUILDERS = {f.__name__: f for f in (retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2, retinanet_resnet18_fpn)}
