"""SSD (Liu et al. 2016, "SSD: Single Shot MultiBox Detector") built from fastdet ops, with
torchvision's builder ``ssd300_vgg16``, constructor, state-dict keys and outputs.

The VGG-16 layers are torchvision's module; the SSD300 feature extractor around it (L2-normalised
conv4_3, the atrous fc6/fc7 and the extra layers), the default boxes, the heads, the matching and
the loss with hard negative mining, and the post-processing (``fastdet.ops.batched_nms``) are
fastdet's, with torchvision's numerics so that its weights give the same detections and losses.
Nothing is ever downloaded: ``weights`` / ``weights_backbone`` take a local file or None.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from .._weights import load_weights, resolve_weights
from ._utils import (
    BoxCoder,
    SSDMatcher,
    clip_boxes,
    pairwise_iou,
    transform_and_features,
)
from .anchors import DefaultBoxGenerator
from .transform import RCNNTransform

try:
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.misc import Conv2dNormActivation
except ImportError as e:  # pragma: no cover - torchvision is a declared dependency of the zoo
    raise ImportError("fastdet.models needs torchvision for its backbones: pip install 'fastdet[zoo]'") from e


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every convolution (SSD's initialisation of the
    layers it adds to VGG, as in the reference Caffe implementation and torchvision)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---- heads ----------------------------------------------------------------------------------------------


class SSDScoringHead(nn.Module):
    """One predictor per feature map; their outputs concatenated in the default boxes' order.

    forward(features: list[Tensor[B, C_k, H_k, W_k]]) -> Tensor[B, sum_k H_k * W_k * A_k, num_columns]
    (location-major, then the A_k boxes of a location), where predictor k outputs A_k * num_columns
    channels.
    """

    def __init__(self, module_list: nn.ModuleList, num_columns: int):
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.module_list):
            raise ValueError(f"{type(self).__name__}: got {len(features)} feature maps for "
                             f"{len(self.module_list)} predictors")
        out = []
        for predictor, x in zip(self.module_list, features):
            y = predictor(x)
            b, _, h, w = y.shape
            # [B, A * K, H, W] -> [B, H, W, A, K] -> [B, H * W * A, K]
            out.append(y.view(b, -1, self.num_columns, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, self.num_columns))
        return torch.cat(out, dim=1)


def _conv3x3(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class SSDHead(nn.Module):
    """SSD's classification and box regression heads: per feature map a 3x3 convolution (or what
    ``predictor(in_channels, out_channels)`` builds) with A_k * num_classes and A_k * 4 outputs.

    forward(features) -> {"bbox_regression": Tensor[B, A, 4], "cls_logits": Tensor[B, A, num_classes]}.
    """

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int, predictor=_conv3x3,
                 init=xavier_init):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{type(self).__name__}: in_channels ({len(in_channels)}) and num_anchors "
                             f"({len(num_anchors)}) need one entry per feature map")
        self.classification_head = SSDScoringHead(
            nn.ModuleList(predictor(c, a * num_classes) for c, a in zip(in_channels, num_anchors)), num_classes)
        self.regression_head = SSDScoringHead(
            nn.ModuleList(predictor(c, a * 4) for c, a in zip(in_channels, num_anchors)), 4)
        init(self)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(features), "cls_logits": self.classification_head(features)}


# ---- the model ------------------------------------------------------------------------------------------


def _backbone_out_channels(backbone: nn.Module, size: tuple[int, int]) -> list[int]:
    """The channels of each feature map: ``backbone.out_channels``, else measured on a blank image
    of the model's input size (as torchvision does for backbones without the attribute)."""
    if hasattr(backbone, "out_channels"):
        return list(backbone.out_channels)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            p = next(backbone.parameters())
            features = backbone(torch.zeros(1, 3, size[1], size[0], dtype=p.dtype, device=p.device))
    finally:
        backbone.train(was_training)
    features = features.values() if isinstance(features, dict) else [features]
    return [int(f.shape[1]) for f in features]


class SSD(nn.Module):
    """SSD (Liu et al. 2016) with torchvision's constructor (same arguments, defaults and sub-module
    names; see torchvision.models.detection.SSD).

    Args:
        backbone: returns a Tensor or an OrderedDict of feature maps; ``out_channels`` (one per map)
            is used when present, else measured once on a blank image.
        anchor_generator: a DefaultBoxGenerator with one entry per feature map.
        size: (width, height) every image is resized to (no aspect ratio kept).
        num_classes: classes including the background.
        image_mean, image_std: the input normalisation (default ImageNet's).
        head: default SSDHead over the backbone's maps.
        score_thresh, nms_thresh, detections_per_img, topk_candidates: post-processing: per class the
            topk_candidates best scores above score_thresh, then class-wise NMS, then the best
            detections_per_img.
        iou_thresh: default boxes with IoU >= iou_thresh to a ground truth are its positives (and
            each ground truth's best default box).
        positive_fraction: hard negative mining keeps (1 - f) / f negatives per positive (3:1).
        **kwargs: to the transform (RCNNTransform; e.g. ``_skip_resize``).

    forward(images: list[Tensor[3, H, W]] (float, [0, 1]), targets=None):
      train mode: targets list[dict(boxes Tensor[N, 4] float xyxy pixels, labels Tensor[N] int64 in
      1..num_classes-1)] -> {"bbox_regression", "classification"} scalar losses;
      eval mode: list[dict(boxes Tensor[K, 4] xyxy in original pixels, scores Tensor[K], labels Tensor[K])].
    """

    def __init__(self, backbone: nn.Module, anchor_generator: DefaultBoxGenerator, size: tuple[int, int],
                 num_classes: int, image_mean=None, image_std=None, head: nn.Module | None = None,
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, detections_per_img: int = 200,
                 iou_thresh: float = 0.5, topk_candidates: int = 400, positive_fraction: float = 0.25, **kwargs):
        super().__init__()
        name = type(self).__name__
        for key in ("min_size", "max_size"):
            if key in kwargs:
                raise ValueError(f"{name}: {key} does not apply: every image is resized to size=(width, height) "
                                 f"{tuple(size)}")
        if len(size) != 2 or any(int(s) <= 0 for s in size):
            raise ValueError(f"{name}: size must be (width, height) with positive entries, got {size}")
        if int(num_classes) < 2:
            raise ValueError(f"{name}: num_classes counts the background and must be >= 2, got {num_classes}")
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"{name}: positive_fraction must be in (0, 1), got {positive_fraction}")
        size = (int(size[0]), int(size[1]))
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        if head is None:
            out_channels = _backbone_out_channels(backbone, size)
            num_anchors = anchor_generator.num_anchors_per_location()
            if len(out_channels) != len(num_anchors):
                raise ValueError(f"{name}: the backbone gives {len(out_channels)} feature maps but the anchor "
                                 f"generator has aspect ratios for {len(num_anchors)}")
            head = SSDHead(out_channels, num_anchors, num_classes)
        self.head = head
        self.proposal_matcher = SSDMatcher(iou_thresh)
        self.transform = RCNNTransform(min(size), max(size), image_mean or [0.485, 0.456, 0.406],
                                       image_std or [0.229, 0.224, 0.225], size_divisible=1, fixed_size=size, **kwargs)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.neg_to_pos_ratio = (1.0 - positive_fraction) / positive_fraction

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        batch, targets, original_sizes, features = transform_and_features(self, images, targets)
        for i, t in enumerate(targets or ()):
            if not isinstance(t.get("labels"), Tensor) or t["labels"].dtype != torch.int64:
                raise TypeError(f"{type(self).__name__}: targets[{i}]['labels'] must be int64, got "
                                f"{getattr(t.get('labels'), 'dtype', type(t.get('labels')).__name__)}")
        head_outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)
        if self.training:
            return self.compute_loss(targets, head_outputs, anchors, self.match(targets, anchors))
        detections = self.postprocess_detections(head_outputs, anchors, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def match(self, targets: list[dict], anchors: list[Tensor]) -> list[Tensor]:
        """Per image Tensor[A] int64: the ground truth index of each default box, -1 for background."""
        matched = []
        for t, a in zip(targets, anchors):
            if t["boxes"].numel() == 0:
                matched.append(torch.full((a.shape[0],), -1, dtype=torch.int64, device=a.device))
            else:
                matched.append(self.proposal_matcher(pairwise_iou(t["boxes"], a)))
        return matched

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        """Smooth-L1 on the positives' box deltas and cross-entropy on the positives plus the hardest
        negatives (at most neg_to_pos_ratio per positive, per image), both summed over the batch and
        divided by the number of positives (SSD's loss, section 2.2)."""
        bbox_regression, cls_logits = head_outputs["bbox_regression"], head_outputs["cls_logits"]
        matched = torch.stack(matched_idxs)  # [B, A]
        foreground = matched >= 0
        gt_index = [m[m >= 0] for m in matched_idxs]
        gt_boxes = torch.cat([t["boxes"][i] for t, i in zip(targets, gt_index)])  # [P, 4], image-major
        fg_anchors = torch.cat([a[m >= 0] for a, m in zip(anchors, matched_idxs)])
        reg_targets = self.box_coder.encode(gt_boxes, fg_anchors)
        bbox_loss = F.smooth_l1_loss(bbox_regression[foreground], reg_targets, reduction="sum")

        cls_targets = torch.zeros(matched.shape, dtype=torch.int64, device=matched.device)
        cls_targets[foreground] = torch.cat([t["labels"][i] for t, i in zip(targets, gt_index)])
        num_classes = cls_logits.shape[-1]
        cls_loss = F.cross_entropy(cls_logits.reshape(-1, num_classes), cls_targets.reshape(-1),
                                   reduction="none").view(cls_targets.shape)  # [B, A]
        # hard negative mining: per image the negatives with the largest loss, ranked by a descending
        # sort in which the positives (-inf) come last
        positive = cls_targets > 0
        num_negative = self.neg_to_pos_ratio * positive.sum(dim=1, keepdim=True)
        negative_loss = cls_loss.masked_fill(positive, -float("inf"))
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
        hard_negative = rank < num_negative
        num_foreground = max(1, gt_boxes.shape[0])
        return {"bbox_regression": bbox_loss / num_foreground,
                "classification": (cls_loss[positive].sum() + cls_loss[hard_negative].sum()) / num_foreground}

    def postprocess_detections(self, head_outputs: dict[str, Tensor], anchors: list[Tensor],
                               image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Per image: boxes decoded and clipped; per foreground class the topk_candidates best scores
        above score_thresh; class-wise NMS; the detections_per_img best."""
        scores_all = F.softmax(head_outputs["cls_logits"], dim=-1)
        results = []
        for deltas, scores, a, size in zip(head_outputs["bbox_regression"], scores_all, anchors, image_sizes):
            boxes = clip_boxes(self.box_coder.decode(deltas, a)[:, 0], size)  # [A, 4]
            class_scores = scores[:, 1:].t()  # [C - 1, A]
            k = min(self.topk_candidates, class_scores.shape[1])
            # the k best of each class, then those above the threshold: the same candidates as thresholding
            # first, in the same order (class by class, scores descending)
            top, idx = class_scores.topk(k, dim=1)
            labels = torch.arange(1, scores.shape[1], device=scores.device)[:, None].expand(-1, k)
            keep = top > self.score_thresh
            top, idx, labels = top[keep], idx[keep], labels[keep]
            boxes = boxes[idx]
            keep = ops.batched_nms(boxes, top, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": top[keep], "labels": labels[keep]})
        return results


# ---- SSD300's VGG-16 feature extractor --------------------------------------------------------------


def _extra_layer(in_channels: int, mid_channels: int, out_channels: int, **conv3x3) -> nn.Sequential:
    """A 1x1 bottleneck and a 3x3 convolution, both ReLU (conv8_2 .. conv11_2 of the paper's Fig. 2)."""
    return nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1), nn.ReLU(inplace=True),
                         nn.Conv2d(mid_channels, out_channels, kernel_size=3, **conv3x3), nn.ReLU(inplace=True))


class SSDFeatureExtractorVGG(nn.Module):
    """SSD300's six feature maps from VGG-16's ``features`` (Liu et al. 2016, Fig. 2; 300 px input:
    38, 19, 10, 5, 3 and 1 px maps with 512, 1024, 512, 256, 256, 256 channels).

    "0": conv4_3, L2-normalised over channels and scaled by a learnt per-channel weight (init 20,
    ParseNet, Liu et al. 2015), pool3 in ceil mode for the paper's 38 px; "1": fc7 (pool5 3x3 stride
    1, fc6 a 3x3 convolution with dilation 6, fc7 1x1); "2".."5": conv8_2 .. conv11_2.
    Module names follow torchvision: ``features`` (VGG up to conv4_3), ``extra`` (conv5 + fc6/fc7,
    then the four extra layers), ``scale_weight``.
    """

    out_channels = [512, 1024, 512, 256, 256, 256]

    def __init__(self, vgg_features: nn.Sequential):
        super().__init__()
        pools = [i for i, m in enumerate(vgg_features) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5:
            raise ValueError(f"{type(self).__name__}: expected VGG features with 5 max-pool layers, got {len(pools)}")
        vgg_features[pools[2]].ceil_mode = True
        self.scale_weight = nn.Parameter(torch.full((512,), 20.0))
        self.features = nn.Sequential(*vgg_features[: pools[3]])
        fc = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5, stride 1 (keeps 19 px)
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
            nn.ReLU(inplace=True),
        )
        extra = [
            _extra_layer(1024, 256, 512, stride=2, padding=1),  # conv8_2
            _extra_layer(512, 128, 256, stride=2, padding=1),  # conv9_2
            _extra_layer(256, 128, 256),  # conv10_2
            _extra_layer(256, 128, 256),  # conv11_2
        ]
        xavier_init(fc)
        for layer in extra:
            xavier_init(layer)
        # conv5_1 .. conv5_3 (pool4 first, pool5 replaced by fc's) then fc6 / fc7
        self.extra = nn.ModuleList([nn.Sequential(*vgg_features[pools[3]: pools[4]], fc), *extra])

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.features(x)
        out = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            out.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def _vgg16_features(fn: str, path: Path | None, trainable: int) -> nn.Sequential:
    """VGG-16's ``features`` (torchvision's module), from a local classification state dict or
    initialised as torchvision's VGG (Kaiming normal, fan out); all but the last ``trainable`` of
    its five conv stages frozen (0: all)."""
    if path is not None:
        vgg = torchvision.models.vgg16(weights=None)
        load_weights(fn, vgg, path)
        features = vgg.features
    else:  # without the classifier's 120M parameters, which SSD drops (seconds to initialise)
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    stage_starts = [0] + [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)][:-1]
    first_trained = len(features) if trainable == 0 else stage_starts[len(stage_starts) - trainable]
    for p in features[:first_trained].parameters():
        p.requires_grad_(False)
    return features


# ---- builder (torchvision's name and keyword arguments) ---------------------------------------------------


def ssd300_vgg16(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                 trainable_backbone_layers=None, **kwargs) -> SSD:
    """SSD300 with a VGG-16 backbone (Liu et al. 2016).

    Keyword arguments as torchvision's builder of the same name:
        weights: None or a local checkpoint path (a state dict, or a dict with one under "model"),
            loaded strictly; num_classes defaults to the checkpoint's. Never downloads: a
            torchvision enum or URL is a ValueError.
        num_classes: classes including the background (default 91, COCO).
        weights_backbone: None or a local path to a torchvision VGG-16 classification state dict
            (torchvision's default, its IMAGENET1K_FEATURES weights, is not downloaded: None here).
        trainable_backbone_layers: VGG conv stages (from the top) to train when weights are loaded
            (0..5, default 4); without weights all train.
        **kwargs: SSD arguments (score_thresh, nms_thresh, detections_per_img, iou_thresh,
            topk_candidates, positive_fraction, image_mean, image_std). The input size is fixed at
            300x300 (the default boxes' steps are tied to it): ``size`` is an error.

    Inputs are normalised as torchvision's (mean 0.48235, 0.45882, 0.40784, std 1/255: the Caffe
    VGG's 0-255 range). Returns an SSD in training mode.
    """
    fn = "ssd300_vgg16"
    # progress: torchvision's download progress bar; accepted for compatibility (nothing downloads)
    if "size" in kwargs:
        raise ValueError(f"{fn}: the input size is fixed at 300x300 (the default boxes' steps are tied to it); "
                         f"size is not accepted")
    anchor_generator = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                           scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
                                           steps=[8, 16, 32, 64, 100, 300])
    plan = resolve_weights(fn, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                           trainable_backbone_layers=trainable_backbone_layers,
                           classifier_key="head.classification_head.module_list.0.weight",
                           per_class=anchor_generator.num_anchors_per_location()[0], max_layers=5, default_layers=4)
    path, backbone_path, num_classes, layers = plan.path, plan.backbone_path, plan.num_classes, plan.trainable_layers
    backbone = SSDFeatureExtractorVGG(_vgg16_features(fn, backbone_path, layers))
    kwargs = {"image_mean": [0.48235, 0.45882, 0.40784], "image_std": [1.0 / 255.0] * 3, **kwargs}
    model = SSD(backbone, anchor_generator, (300, 300), num_classes, **kwargs)
    if path is not None:
        load_weights(fn, model, path)
    return model


# ---- fastdet's small configuration: SSD on ResNet-18 ---------------------------------------------------


def _extra_bn_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 1x1 bottleneck to out/2 channels and a 3x3 stride-2 convolution, each with BatchNorm and ReLU."""
    mid = out_channels // 2
    return nn.Sequential(Conv2dNormActivation(in_channels, mid, kernel_size=1),
                         Conv2dNormActivation(mid, out_channels, kernel_size=3, stride=2))


class SSDFeatureExtractorResNet(nn.Module):
    """Five feature maps from a torchvision ResNet-18/34 (not a torchvision configuration): layer2,
    layer3 and layer4 (strides 8, 16, 32; 128, 256, 512 channels) and two extra BatchNorm layers
    (strides 64, 128; 256 channels each). ``stem`` holds conv1 .. layer2."""

    out_channels = [128, 256, 512, 256, 256]

    def __init__(self, resnet: nn.Module):
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2)
        self.stages = nn.ModuleList([resnet.layer3, resnet.layer4])
        self.extra = nn.ModuleList([_extra_bn_layer(512, 256), _extra_bn_layer(256, 256)])

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = [self.stem(x)]
        for block in (*self.stages, *self.extra):
            out.append(block(out[-1]))
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def ssd_resnet18(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
                 trainable_backbone_layers=None, size=(300, 300), min_ratio: float = 0.1, max_ratio: float = 0.9,
                 **kwargs) -> SSD:
    """SSD on ResNet-18 (fastdet's small configuration for fast experiments; torchvision has none):
    five feature maps (SSDFeatureExtractorResNet), six default boxes per location (ratios 1, 2, 3)
    with scales from ``min_ratio`` to ``max_ratio`` of the input, SSD's 3x3 heads and loss, ImageNet
    input normalisation. From scratch on the generated shapes (128 px) it learns far faster than
    SSDlite's MobileNetV3: box AP50 0.36 after 16 epochs against SSDlite's 0.09 after 24 (measured
    on CPU with the data, batch and lr of tests/engine/test_learning_ssd.py).

    Keyword arguments as the other builders: weights (local checkpoint; num_classes defaults to its),
    num_classes (default 91), weights_backbone (a torchvision ResNet-18 state dict; the ResNet then
    uses FrozenBatchNorm2d), trainable_backbone_layers (0..5, default 3 with weights; all without),
    ``size`` (width, height), default (300, 300), and SSD's keyword arguments.
    """
    fn = "ssd_resnet18"
    anchor_generator = DefaultBoxGenerator([[2, 3]] * 5, min_ratio=min_ratio, max_ratio=max_ratio)
    plan = resolve_weights(fn, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                           trainable_backbone_layers=trainable_backbone_layers,
                           classifier_key="head.classification_head.module_list.0.weight",
                           per_class=anchor_generator.num_anchors_per_location()[0])
    path, backbone_path, num_classes, layers = plan.path, plan.backbone_path, plan.num_classes, plan.trainable_layers
    is_trained = plan.is_trained
    resnet = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d if is_trained else nn.BatchNorm2d)
    if backbone_path is not None:
        load_weights(fn, resnet, backbone_path)
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:layers] + (["bn1"] if layers == 5 else [])
    for name, p in resnet.named_parameters():
        if not any(name.startswith(t) for t in trained):
            p.requires_grad_(False)
    model = SSD(SSDFeatureExtractorResNet(resnet), anchor_generator, size, num_classes, **kwargs)
    if path is not None:
        load_weights(fn, model, path)
    return model


BUILDERS = {"ssd300_vgg16": ssd300_vgg16, "ssd_resnet18": ssd_resnet18}
