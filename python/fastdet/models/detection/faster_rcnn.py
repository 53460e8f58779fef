"""Faster R-CNN and Mask R-CNN with FPN, built from fastdet ops; torchvision-compatible builders,
keyword arguments, state-dict keys and outputs.

Backbones (ResNet / MobileNetV3 + FPN) are torchvision's own modules, built the way torchvision's
builders build them, so ``backbone.*`` keys and numerics are identical. Everything after the
backbone (transform, anchors, RPN, RoI heads, mask head, losses, post-processing) is fastdet's,
on ``fastdet.ops.box_iou``, ``batched_nms``, ``MultiScaleRoIAlign`` and ``roi_align``.
Nothing is ever downloaded: ``weights`` / ``weights_backbone`` take a local file or None.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fastdet.ops import MultiScaleRoIAlign

from .._weights import load_weights, resolve_weights
from ._utils import check_detector_inputs, check_positive_boxes
from .anchors import AnchorGenerator
from .backbones import DCN_OFFSET_KEYS, check_stage_with_dcn, resnet_fpn
from .roi_heads import FastRCNNConvFCHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import RCNNTransform

try:
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops import FrozenBatchNorm2d
except ImportError as e:  # pragma: no cover - torchvision is a declared dependency of the zoo
    raise ImportError("fastdet.models needs torchvision for its backbones: pip install 'fastdet[zoo]'") from e


# ---- the model classes ----------------------------------------------------------------------------------


class GeneralizedRCNN(nn.Module):
    """transform -> backbone -> rpn -> roi_heads -> transform.postprocess, torchvision's call contract.

    forward(images: list[Tensor[3, H, W]] (float, [0, 1], sizes may differ), targets=None):
      train mode: targets list[dict(boxes Tensor[N, 4] float xyxy pixels, labels Tensor[N] int64 in
      1..num_classes-1, masks Tensor[N, H, W] uint8 for mask models)] -> dict of scalar losses;
      eval mode: list[dict(boxes Tensor[K, 4] xyxy in original pixels, labels Tensor[K] int64,
      scores Tensor[K], masks Tensor[K, 1, H, W] probabilities for mask models)].
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform: nn.Module):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        check_detector_inputs(type(self).__name__, images, targets, self.training)
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.transform(list(images), targets)
        if targets is not None:
            check_positive_boxes(type(self).__name__, targets)
        features = self.backbone(batch.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, proposal_losses = self.rpn(batch, features, targets)
        detections, detector_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def default_anchor_generator(sizes=(32, 64, 128, 256, 512)) -> AnchorGenerator:
    """One size per FPN level (torchvision's 32..512 px by default), three aspect ratios."""
    sizes = tuple((int(s),) for s in sizes)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN (Ren et al. 2015) with torchvision's constructor (same arguments, defaults and
    sub-module names; see torchvision.models.detection.FasterRCNN for each one).

    backbone must have ``out_channels``; either num_classes (including background) or
    box_predictor is given. ``min_size``/``max_size``: the resize of every input image (shorter side
    to min_size unless the longer side would exceed max_size). ``representation_size`` (not in
    torchvision, which fixes it at 1024): the width of the default box head's two fully connected
    layers; at 1024 they dominate a training step on small inputs, 256 trains ~5x faster there.
    ``anchor_sizes`` (not in torchvision): one anchor size per FPN level in input pixels instead of
    32..512, e.g. (8, 16, 32, 64, 128) for objects of 8-100 px in 128 px images.
    Extra keyword arguments go to the transform (``size_divisible``, ``fixed_size``).
    """

    def __init__(self, backbone, num_classes=None, min_size=800, max_size=1333, image_mean=None, image_std=None,
                 rpn_anchor_generator=None, rpn_head=None, rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=1000,
                 rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000, rpn_nms_thresh=0.7,
                 rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3, rpn_batch_size_per_image=256, rpn_positive_fraction=0.5,
                 rpn_score_thresh=0.0, box_roi_pool=None, box_head=None, box_predictor=None, box_score_thresh=0.05,
                 box_nms_thresh=0.5, box_detections_per_img=100, box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
                 box_batch_size_per_image=512, box_positive_fraction=0.25, bbox_reg_weights=None,
                 representation_size=1024, anchor_sizes=None, **kwargs):
        name = type(self).__name__
        if not hasattr(backbone, "out_channels"):
            raise ValueError(f"{name}: backbone must have an attribute out_channels (the channels of every feature map)")
        if num_classes is not None and box_predictor is not None:
            raise ValueError(f"{name}: give num_classes or box_predictor, not both")
        if num_classes is None and box_predictor is None:
            raise ValueError(f"{name}: num_classes is required when box_predictor is not given")
        if num_classes is not None and int(num_classes) < 2:
            raise ValueError(f"{name}: num_classes counts the background and must be >= 2, got {num_classes}")
        out_channels = backbone.out_channels
        if rpn_anchor_generator is None:
            rpn_anchor_generator = default_anchor_generator(*([anchor_sizes] if anchor_sizes is not None else []))
        elif anchor_sizes is not None:
            raise ValueError(f"{name}: give rpn_anchor_generator or anchor_sizes, not both")
        if rpn_head is None:
            rpn_head = RPNHead(out_channels, rpn_anchor_generator.num_anchors_per_location()[0])
        rpn = RegionProposalNetwork(
            rpn_anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image,
            rpn_positive_fraction, dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test), rpn_nms_thresh,
            score_thresh=rpn_score_thresh)
        if box_roi_pool is None:
            box_roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        if box_head is None:
            resolution = box_roi_pool.output_size[0]
            box_head = TwoMLPHead(out_channels * resolution**2, representation_size)
        if box_predictor is None:
            box_predictor = FastRCNNPredictor(representation_size, num_classes)
        roi_heads = RoIHeads(box_roi_pool, box_head, box_predictor, box_fg_iou_thresh, box_bg_iou_thresh,
                             box_batch_size_per_image, box_positive_fraction, bbox_reg_weights, box_score_thresh,
                             box_nms_thresh, box_detections_per_img)
        transform = RCNNTransform(min_size, max_size, image_mean or [0.485, 0.456, 0.406],
                                  image_std or [0.229, 0.224, 0.225], **kwargs)
        super().__init__(backbone, rpn, roi_heads, transform)


class MaskRCNN(FasterRCNN):
    """Mask R-CNN (He et al. 2017): Faster R-CNN plus a mask branch (mask_roi_pool 14x14,
    mask_head, mask_predictor), torchvision's constructor. Training targets need ``masks``
    Tensor[N, H, W] uint8; eval outputs carry ``masks`` Tensor[K, 1, H, W] probabilities pasted into
    the original image (threshold at 0.5 for binary masks). ``mask_head_width`` (not in torchvision,
    which fixes it at 256): the channels of the default mask head's four convolutions and of the
    predictor's transposed convolution; on small CPU runs 64 makes the mask branch ~10x cheaper."""

    def __init__(self, backbone, num_classes=None, *args, mask_roi_pool=None, mask_head=None, mask_predictor=None,
                 mask_head_width=256, **kwargs):
        if num_classes is not None and mask_predictor is not None:
            raise ValueError(f"{type(self).__name__}: give num_classes or mask_predictor, not both")
        out_channels = backbone.out_channels
        if mask_roi_pool is None:
            mask_roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=14, sampling_ratio=2)
        if mask_head is None:
            mask_head = MaskRCNNHeads(out_channels, (mask_head_width,) * 4, 1)
        if mask_predictor is None:
            mask_predictor = MaskRCNNPredictor(mask_head_width, mask_head_width, num_classes)
        super().__init__(backbone, num_classes, *args, **kwargs)
        self.roi_heads.mask_roi_pool = mask_roi_pool
        self.roi_heads.mask_head = mask_head
        self.roi_heads.mask_predictor = mask_predictor


# ---- building -------------------------------------------------------------------------------------------


def _build(fn: str, *, depth: int | None, mask: bool, v2: bool, weights, weights_backbone, num_classes,
           trainable_backbone_layers, kwargs) -> GeneralizedRCNN:
    plan = resolve_weights(fn, weights=weights, weights_backbone=weights_backbone, num_classes=num_classes,
                           trainable_backbone_layers=trainable_backbone_layers,
                           classifier_key="roi_heads.box_predictor.cls_score.weight",
                           max_layers=6 if depth is None else 5)
    path, num_classes = plan.path, plan.num_classes
    dcn = check_stage_with_dcn(fn, kwargs.pop("stage_with_dcn", None))
    if dcn is not None and depth is None:
        raise ValueError(f"{fn}: stage_with_dcn is for the ResNet backbones, not MobileNetV3")
    frozen_or_bn = FrozenBatchNorm2d if plan.is_trained else nn.BatchNorm2d
    if depth is None:  # MobileNetV3-Large FPN
        body = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=frozen_or_bn)
        if plan.backbone_path is not None:
            load_weights(fn, body, plan.backbone_path)
        backbone = _mobilenet_extractor(body, True, plan.trainable_layers)
        sizes = ((32, 64, 128, 256, 512),) * 3
        kwargs.setdefault("rpn_anchor_generator", AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes)))
    else:  # v2 (Li et al. 2021 recipe): BatchNorm everywhere, also in the FPN
        backbone = resnet_fpn(fn, depth, plan.backbone_path, plan.trainable_layers,
                              body_norm_layer=nn.BatchNorm2d if v2 else frozen_or_bn,
                              fpn_norm_layer=nn.BatchNorm2d if v2 else None, stage_with_dcn=dcn)
    if v2:
        anchors = default_anchor_generator()
        kwargs.setdefault("rpn_anchor_generator", anchors)
        kwargs.setdefault("rpn_head", RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0], conv_depth=2))
        kwargs.setdefault("box_head", FastRCNNConvFCHead((backbone.out_channels, 7, 7), [256] * 4, [1024],
                                                         norm_layer=nn.BatchNorm2d))
        if mask:
            kwargs.setdefault("mask_head", MaskRCNNHeads(backbone.out_channels, [256] * 4, 1, norm_layer=nn.BatchNorm2d))
    cls = MaskRCNN if mask else FasterRCNN
    model = cls(backbone, num_classes=num_classes, **kwargs)
    if path is not None:
        # torchvision's published v1 ResNet-50 COCO checkpoints were trained with FrozenBatchNorm eps = 0
        load_weights(fn, model, path, frozen_bn_eps=0.0 if depth == 50 and not v2 else None,
                     missing_ok=DCN_OFFSET_KEYS if dcn else None)
    return model


# ---- builders (torchvision's names and keyword arguments) -------------------------------------------------

_DOC = """{title}

    Keyword arguments as torchvision's builder of the same name:
        weights: None or a local checkpoint path (a state dict, or a dict with one under "model").
            Loaded strictly (old-style torchvision key names accepted); num_classes defaults to the
            checkpoint's. Never downloads: a torchvision enum or URL is a ValueError. As in
            torchvision, the backbone then uses FrozenBatchNorm2d{v2note} (the v1 ResNet-50
            builders with eps 0, the setting of torchvision's published COCO checkpoints).
        num_classes: classes including the background (default 91, COCO).
        weights_backbone: None or a local path to the {backbone} classification state dict;
            with it the backbone uses FrozenBatchNorm2d{v2note}.
        trainable_backbone_layers: layers (from the top) to train when weights are loaded
            (0..{max_layers}, default 3); without weights all train.
        stage_with_dcn (not in torchvision; ResNet backbones): 4 bools for res2..res5, the stages
            whose blocks get a DCNv2 3x3 convolution, e.g. (False, True, True, True). weights /
            weights_backbone may then be plain (non-DCN) checkpoints: the offset predictors they
            lack start at zero and the model starts equal to the plain one.
        **kwargs: {cls} arguments (min_size, max_size, box_score_thresh, rpn_* / box_* settings, ...).

    Returns a {cls} in training mode.
    """


def _builder(name: str, title: str, *, depth, mask: bool, v2: bool, defaults: dict | None = None):
    def build(*, weights=None, progress: bool = True, num_classes=None, weights_backbone=None,
              trainable_backbone_layers=None, **kwargs):
        # progress: torchvision's download progress bar; accepted for compatibility (nothing downloads)
        kwargs = {**(defaults or {}), **kwargs}
        return _build(name, depth=depth, mask=mask, v2=v2, weights=weights, weights_backbone=weights_backbone,
                      num_classes=num_classes, trainable_backbone_layers=trainable_backbone_layers, kwargs=kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = _DOC.format(title=title, backbone="MobileNetV3-Large" if depth is None else f"ResNet-{depth}",
                                v2note=" (v2: BatchNorm2d)" if v2 else "", max_layers=6 if depth is None else 5,
                                cls="MaskRCNN" if mask else "FasterRCNN")
    return build


fasterrcnn_resnet50_fpn = _builder("fasterrcnn_resnet50_fpn", "Faster R-CNN, ResNet-50 FPN.",
                                   depth=50, mask=False, v2=False)
fasterrcnn_resnet50_fpn_v2 = _builder(
    "fasterrcnn_resnet50_fpn_v2", "Faster R-CNN v2, ResNet-50 FPN with BatchNorm FPN, 2-conv RPN head, 4conv1fc box head.",
    depth=50, mask=False, v2=True)
fasterrcnn_mobilenet_v3_large_fpn = _builder(
    "fasterrcnn_mobilenet_v3_large_fpn", "Faster R-CNN, MobileNetV3-Large FPN (rpn_score_thresh 0.05).",
    depth=None, mask=False, v2=False, defaults={"rpn_score_thresh": 0.05})
fasterrcnn_mobilenet_v3_large_320_fpn = _builder(
    "fasterrcnn_mobilenet_v3_large_320_fpn", "Faster R-CNN, MobileNetV3-Large FPN tuned for 320 px inputs.",
    depth=None, mask=False, v2=False, defaults={"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150,
                                                "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05})
fasterrcnn_resnet18_fpn = _builder("fasterrcnn_resnet18_fpn", "Faster R-CNN, ResNet-18 FPN (small, for fast experiments).",
                                   depth=18, mask=False, v2=False)
maskrcnn_resnet50_fpn = _builder("maskrcnn_resnet50_fpn", "Mask R-CNN, ResNet-50 FPN.", depth=50, mask=True, v2=False)
maskrcnn_resnet50_fpn_v2 = _builder("maskrcnn_resnet50_fpn_v2", "Mask R-CNN v2, ResNet-50 FPN (BatchNorm heads).",
                                    depth=50, mask=True, v2=True)
maskrcnn_resnet18_fpn = _builder("maskrcnn_resnet18_fpn", "Mask R-CNN, ResNet-18 FPN (small, for fast experiments).",
                                 depth=18, mask=True, v2=False)

BUILDERS = {f.__name__: f for f in (
    fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2, fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_resnet18_fpn, maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2,
    maskrcnn_resnet18_fpn)}
