"""YOLOX (Ge et al. 2021, "YOLOX: Exceeding YOLO Series in 2021"): CSPDarknet + PAFPN + decoupled
anchor-free head, trained with SimOTA label assignment, built from fastdet ops.

Layout, numerics and state-dict keys follow the official code (Megvii-BaseDetection/YOLOX, the
``yolox`` 0.3.0 package): ``ckpt["model"]`` of an official checkpoint loads unchanged. fastdet's
parts: the training loss is batched over images on ``fastdet.ops.simota_assign`` (padded ground
truths, fixed shapes, no per-image loop and no host synchronisation) and ``box_iou``; inference is
decode + ``fastdet.ops.multiclass_nms`` (fixed-shape, exportable to ONNX with the NMS inside).

The classifier has no background class: class channel c is label c (as the official checkpoints),
or c + label_offset. fastdet's COCO datasets number their classes 1..K (0 is the R-CNNs'
background), so ``fastdet train`` builds YOLOX with num_classes=K, label_offset=1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet.ops import SimOTAAssigner, box_iou, multiclass_nms

from .._weights import load_weights, local_path, num_classes_from
from ._utils import check_detection_targets, check_detector_inputs, pad_targets
from .csp_darknet import PAFPN, ConvBNAct, conv_block

STRIDES = (8, 16, 32)
PAD_VALUE = 114.0
IOU_LOSS_WEIGHT = 5.0  # the official reg_weight
L1_EPS = 1e-8


# ---- head -----------------------------------------------------------------------------------------------


class YOLOXHead(nn.Module):
    """Decoupled head: per level a 1 x 1 stem, then two 3 x 3 convolutions for classification and two
    for regression; the regression branch predicts the box (4) and the objectness (1).

    forward(features: stride 8/16/32 maps) -> Tensor[B, A, 5 + C], the raw predictions of every
    location (A = sum of H_l * W_l, levels in order, each row-major): box offsets (tx, ty) and log
    sizes (tw, th) in stride units, the objectness logit, the C class logits.
    """

    def __init__(self, num_classes: int, width: float, in_channels=(256, 512, 1024), depthwise: bool = False,
                 prior_prob: float = 1e-2):
        super().__init__()
        self.num_classes = num_classes
        hidden = int(256 * width)
        conv = conv_block(depthwise)

        def branch():
            return nn.Sequential(conv(hidden, hidden, 3), conv(hidden, hidden, 3))

        self.stems = nn.ModuleList(ConvBNAct(int(c * width), hidden, 1) for c in in_channels)
        self.cls_convs = nn.ModuleList(branch() for _ in in_channels)
        self.reg_convs = nn.ModuleList(branch() for _ in in_channels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in in_channels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in in_channels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in in_channels)
        # Focal-loss style prior (Lin et al. 2017), as the official initialize_biases(1e-2)
        bias = -math.log((1 - prior_prob) / prior_prob)
        for pred in (*self.cls_preds, *self.obj_preds):
            nn.init.constant_(pred.bias, bias)

    def forward(self, features) -> Tensor:
        outputs = []
        for k, x in enumerate(features):
            x = self.stems[k](x)
            reg_feat = self.reg_convs[k](x)
            out = torch.cat((self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat),
                             self.cls_preds[k](self.cls_convs[k](x))), dim=1)    # [B, 5 + C, H, W]
            outputs.append(out.flatten(2))
        return torch.cat(outputs, dim=2).transpose(1, 2)                        # [B, A, 5 + C]


def grid_points(sizes, strides, dtype: torch.dtype, device) -> tuple[Tensor, Tensor]:
    """The locations of every level's feature map: (grid Tensor[A, 2] (x, y) cell indices, stride
    Tensor[A, 1]), in the head's row order."""
    grids, level_strides = [], []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        grids.append(torch.stack((xs, ys), dim=-1).reshape(-1, 2))
        level_strides.append(torch.full((h * w, 1), float(s), device=device))
    return torch.cat(grids).to(dtype), torch.cat(level_strides).to(dtype)


def decode_boxes(reg: Tensor, grid: Tensor, stride: Tensor) -> Tensor:
    """Raw box predictions [..., A, 4] -> (cx, cy, w, h) in input pixels: centre (t + cell) * stride,
    size exp(t) * stride."""
    return torch.cat(((reg[..., :2] + grid) * stride, reg[..., 2:].exp() * stride), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    half = boxes[..., 2:] / 2
    return torch.cat((boxes[..., :2] - half, boxes[..., :2] + half), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return torch.cat(((boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]), dim=-1)


# ---- loss -----------------------------------------------------------------------------------------------


def yolox_loss(raw: Tensor, grid: Tensor, stride: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor,
               assigner: SimOTAAssigner, use_l1: bool = False) -> dict[str, Tensor]:
    """The YOLOX training loss, batched over images.

    Args:
        raw: Tensor[B, A, 5 + C], the head's raw predictions.
        grid, stride: the locations (see :func:`grid_points`).
        gt_boxes: Tensor[B, G, 4] xyxy in input pixels, padded to G per image; gt_labels Tensor[B, G]
            int64; gt_mask Tensor[B, G] bool (False: padding).
        assigner: the SimOTA assignment (of anchors to ground truths, per image).
        use_l1: add the L1 loss on the raw box predictions (the official last no-augmentation epochs).

    Returns:
        {"loss_iou": 5 * sum(1 - IoU^2), "loss_obj": sum BCE(objectness, foreground), "loss_cls":
        sum over the foreground of BCE(class logits, one-hot * IoU), and with use_l1 "loss_l1"}, each
        divided by the number of foreground anchors in the batch (at least 1), as the official
        ``get_losses``; their sum is the official total loss. Every term is computed densely over
        [B, A] and masked by the foreground, so shapes never depend on the data.
    """
    if raw.dtype in (torch.float16, torch.bfloat16):
        raw = raw.float()  # the losses in float32 under autocast, as the official
    gt_boxes = gt_boxes.to(raw.dtype)
    reg, obj, cls = raw[..., :4], raw[..., 4], raw[..., 5:]
    boxes = cxcywh_to_xyxy(decode_boxes(reg, grid, stride))                    # [B, A, 4]
    with torch.no_grad():
        scores = (cls.sigmoid() * obj.sigmoid().unsqueeze(-1)).sqrt()          # the official cost's scores
        priors = torch.cat(((grid + 0.5) * stride, stride.expand(-1, 2)), dim=1)
        matched, labels, ious, num_fg = assigner(scores, boxes.detach(), priors, gt_boxes, gt_labels, gt_mask)
    fg = matched >= 0                                                          # [B, A]
    normaliser = num_fg.sum().clamp(min=1).to(raw.dtype)
    index = matched.clamp(min=0)
    target = torch.gather(gt_boxes, 1, index.unsqueeze(-1).expand(-1, -1, 4))  # [B, A, 4] matched GT (or GT 0)
    zero = raw.new_zeros(())
    # The official IOUloss: 1 - IoU^2 with IoU = inter / (union + 1e-16)
    iou = box_iou(boxes, target, "iou", aligned=True, eps=1e-16)
    loss_iou = torch.where(fg, 1 - iou * iou, zero).sum() / normaliser
    loss_obj = F.binary_cross_entropy_with_logits(obj, fg.to(raw.dtype), reduction="sum") / normaliser
    cls_target = F.one_hot(labels.clamp(min=0), cls.shape[-1]).to(raw.dtype) * ious.to(raw.dtype).unsqueeze(-1)
    cls_bce = F.binary_cross_entropy_with_logits(cls, cls_target, reduction="none").sum(-1)
    losses = {"loss_iou": IOU_LOSS_WEIGHT * loss_iou, "loss_obj": loss_obj,
              "loss_cls": torch.where(fg, cls_bce, zero).sum() / normaliser}
    if use_l1:
        t = xyxy_to_cxcywh(target)
        l1_target = torch.cat((t[..., :2] / stride - grid, torch.log(t[..., 2:] / stride + L1_EPS)), dim=-1)
        l1 = (reg - l1_target).abs().sum(-1)
        losses["loss_l1"] = torch.where(fg, l1, zero).sum() / normaliser
    return losses


# ---- pre-processing -------------------------------------------------------------------------------------


class YOLOXTransform(nn.Module):
    """The official YOLOX pre-processing on fastdet's image format.

    forward(images: list[Tensor[3, H, W]] RGB in [0, 1], targets=None) -> (batch Tensor[B, 3, h, w]
    BGR in [0, 255], scales list[float], targets with boxes scaled). Each image is resized keeping
    its aspect ratio by r = min(h / H, w / W) to (int(H r), int(W r)) (bilinear, half-pixel centres
    as cv2.INTER_LINEAR; the official rounds the resized pixels to uint8, this does not) and put in
    the top-left corner of an (h, w) canvas filled with 114.
    """

    def __init__(self, input_size: tuple[int, int]):
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def letterbox(self, image: Tensor) -> tuple[Tensor, float]:
        h, w = image.shape[-2:]
        r = min(self.input_size[0] / h, self.input_size[1] / w)
        nh, nw = int(h * r), int(w * r)
        bgr = image.flip(0) * 255.0
        if (nh, nw) != (h, w):
            bgr = F.interpolate(bgr[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        canvas = bgr.new_full((3, *self.input_size), PAD_VALUE)
        canvas[:, :nh, :nw] = bgr
        return canvas, r

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        batch, scales = [], []
        for image in images:
            if not image.is_floating_point():
                raise TypeError(f"YOLOXTransform: images must be floating point RGB in [0, 1], got {image.dtype}")
            canvas, r = self.letterbox(image)
            batch.append(canvas)
            scales.append(r)
        if targets is not None:
            targets = [{**t, "boxes": t["boxes"] * r} for t, r in zip(targets, scales)]
        return torch.stack(batch), scales, targets

    def postprocess(self, detections: list[dict], scales: list[float]) -> list[dict]:
        """Boxes from the input frame back to each original image (divided by its scale; not clipped,
        as the official evaluator)."""
        return [{**d, "boxes": d["boxes"] / r} for d, r in zip(detections, scales)]

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, BGR 0-255, pad {PAD_VALUE:g}"


# ---- the model ------------------------------------------------------------------------------------------


class YOLOX(nn.Module):
    """YOLOX detector: ``transform`` (letterbox, BGR 0-255), ``backbone`` (CSPDarknet + PAFPN),
    ``head`` (decoupled head). State-dict keys are the official ones.

    Args:
        num_classes: classes (no background), 80 for COCO.
        depth, width: the multipliers of the official exps (nano/tiny 0.33 x 0.25/0.375, s 0.33 x
            0.5, m 0.67 x 0.75, l 1.0 x 1.0, x 1.33 x 1.25).
        depthwise: depthwise-separable 3 x 3 convolutions (YOLOX-nano).
        input_size: (h, w) or int, the letterbox size (multiples of 32); 640, 416 for nano/tiny.
        score_thresh, nms_thresh: inference thresholds on obj * cls and the NMS IoU (official eval:
            0.01, 0.65).
        detections_per_img: the most detections kept per image (the official keeps all; COCO's
            evaluation reads the best 100).
        use_l1: add the L1 loss (the official switches it on for the last 15 no-augmentation epochs).
        simota_rule: ``SimOTAAssigner`` preset, "yolox-0.3.0" (the official package's, default) or
            "yolox" (the current YOLOX main branch's centre-region rule).
        label_offset: labels (of targets and detections) are class channel + label_offset (1 for
            fastdet's datasets, whose label 0 is the background).

    forward(images: list[Tensor[3, H, W]] RGB in [0, 1], targets=None):
      train mode: targets list[dict(boxes Tensor[N, 4] xyxy pixels, labels Tensor[N] int64 in
      [label_offset, label_offset + num_classes))] -> {"loss_iou", "loss_obj", "loss_cls"(, "loss_l1")}
      (their sum is the official total loss); eval mode: list[dict(boxes Tensor[K, 4] xyxy in original pixels,
      scores Tensor[K], labels Tensor[K] int64)].
    :meth:`network` is the raw network (batch tensor in, the official inference output out), and
    :meth:`detect` the fixed-shape detections of a batch tensor (what :class:`YOLOXExport` exports).
    """

    def __init__(self, num_classes: int = 80, depth: float = 1.0, width: float = 1.0, depthwise: bool = False,
                 input_size=640, score_thresh: float = 0.01, nms_thresh: float = 0.65, detections_per_img: int = 100,
                 use_l1: bool = False, simota_rule: str = "yolox-0.3.0", label_offset: int = 0):
        super().__init__()
        name = type(self).__name__
        if int(num_classes) < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        if not depth > 0 or not width > 0:
            raise ValueError(f"{name}: depth and width must be > 0, got {depth}, {width}")
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(size) != 2 or any(int(s) <= 0 or int(s) % 32 for s in size):
            raise ValueError(f"{name}: input_size must be a positive multiple of 32 (int or (h, w)), got {input_size}")
        if not 0.0 <= score_thresh <= 1.0 or not 0.0 <= nms_thresh <= 1.0:
            raise ValueError(f"{name}: score_thresh and nms_thresh must be in [0, 1], got {score_thresh}, {nms_thresh}")
        if int(label_offset) < 0:
            raise ValueError(f"{name}: label_offset must be >= 0, got {label_offset}")
        if int(detections_per_img) < 1:
            raise ValueError(f"{name}: detections_per_img must be >= 1, got {detections_per_img}")
        self.transform = YOLOXTransform(size)
        self.backbone = PAFPN(depth, width, depthwise)
        self.head = YOLOXHead(int(num_classes), width, depthwise=depthwise)
        self.assigner = SimOTAAssigner(simota_rule)
        self.score_thresh, self.nms_thresh = float(score_thresh), float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.use_l1 = bool(use_l1)
        self.label_offset = int(label_offset)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def raw_outputs(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Tensor[B, 3, h, w] (BGR 0-255, h and w multiples of 32) -> (raw Tensor[B, A, 5 + C], grid,
        stride) (see YOLOXHead and grid_points)."""
        features = self.backbone(batch)
        raw = self.head(features)
        grid, stride = grid_points([f.shape[-2:] for f in features], STRIDES, raw.dtype, raw.device)
        return raw, grid, stride

    def network(self, batch: Tensor) -> Tensor:
        """The official network output in eval mode: Tensor[B, A, 5 + C] = (cx, cy, w, h) in input
        pixels, objectness and class probabilities."""
        raw, grid, stride = self.raw_outputs(batch)
        return torch.cat((decode_boxes(raw[..., :4], grid, stride), raw[..., 4:].sigmoid()), dim=-1)

    def detect(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fixed-shape detections of a batch tensor in the input frame: (num_dets Tensor[B], boxes
        Tensor[B, K, 4] xyxy, scores Tensor[B, K], labels Tensor[B, K]), K = detections_per_img,
        rows past num_dets padding (see fastdet.ops.multiclass_nms).

        As the official ``postprocess``: score = objectness * class probability, one class per
        location (its best), class-aware NMS. Differences: the score test is ``> score_thresh``
        (official ``>=``) and at most K detections are kept (official: all)."""
        out = self.network(batch)
        scores = out[..., 4:5] * out[..., 5:]                                 # [B, A, C]
        scores = torch.where(scores == scores.amax(-1, keepdim=True), scores, torch.zeros_like(scores))
        k = self.detections_per_img
        num, boxes, scores, labels, _ = multiclass_nms(cxcywh_to_xyxy(out[..., :4]), scores, self.score_thresh,
                                                       self.nms_thresh, k, k)
        return num, boxes, scores, torch.where(labels >= 0, labels + self.label_offset, labels)

    def loss(self, batch: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Training losses of a batch tensor with targets in its frame (see yolox_loss)."""
        raw, grid, stride = self.raw_outputs(batch)
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, raw.dtype, raw.device)
        # labels -> class channels (padding rows keep label 0)
        return yolox_loss(raw, grid, stride, gt_boxes, gt_labels - self.label_offset * gt_mask, gt_mask, self.assigner,
                          self.use_l1)

    def _check_inputs(self, images, targets) -> None:
        name = type(self).__name__
        check_detector_inputs(name, images, targets, self.training)
        for i, im in enumerate(images):
            if im.shape[0] != 3:
                raise ValueError(f"{name}: images[{i}] must have shape [3, H, W] (RGB), got {list(im.shape)}")
        if targets is not None:
            check_detection_targets(name, targets, self.label_offset, self.num_classes)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        self._check_inputs(images, targets)
        batch, scales, targets = self.transform(list(images), targets)
        if self.training:
            return self.loss(batch, targets)
        num, boxes, scores, labels = self.detect(batch)
        detections = [{"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
                      for i, n in enumerate(num.tolist())]
        return self.transform.postprocess(detections, scales)


class YOLOXExport(nn.Module):
    """A YOLOX's deployment graph: Tensor[B, 3, h, w] (letterboxed BGR 0-255, as YOLOXTransform makes
    it) -> (num_dets, boxes, scores, labels) of :meth:`YOLOX.detect`, fixed shapes, NMS inside.
    Export with ``torch.onnx.export(YOLOXExport(model.eval()), (batch,), dynamo=True,
    custom_translation_table=fastdet.onnx.onnx_translation_table())``."""

    def __init__(self, model: YOLOX):
        super().__init__()
        self.model = model

    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.model.detect(batch)


# ---- builders (the official exps) -----------------------------------------------------------------------

_CONFIGS = {  # name: (depth, width, depthwise, input size)
    "yolox_nano": (0.33, 0.25, True, 416),
    "yolox_tiny": (0.33, 0.375, False, 416),
    "yolox_s": (0.33, 0.50, False, 640),
    "yolox_m": (0.67, 0.75, False, 640),
    "yolox_l": (1.0, 1.0, False, 640),
    "yolox_x": (1.33, 1.25, False, 640),
}


def _builder(name: str):
    depth, width, depthwise, size = _CONFIGS[name]

    def build(*, weights=None, num_classes=None, **kwargs) -> YOLOX:
        path = local_path(name, "weights", weights)
        num_classes = num_classes_from(name, path, num_classes, "head.cls_preds.0.weight", default=80)
        kwargs.setdefault("input_size", size)
        model = YOLOX(num_classes, depth, width, depthwise, **kwargs)
        if path is not None:
            load_weights(name, model, path)
        return model

    build.__name__ = build.__qualname__ = name
    convs = ", depthwise" if depthwise else ""
    build.__doc__ = f"""YOLOX-{name[6:]} (depth {depth}, width {width}{convs}, input {size} px).

    Args:
        weights: None or a local checkpoint path: an official YOLOX checkpoint (its "model" entry is
            used) or a state dict. Loaded strictly; never downloads (a URL is a ValueError).
        num_classes: classes without background (default: the checkpoint's, else 80).
        **kwargs: YOLOX arguments (input_size, score_thresh, nms_thresh, detections_per_img, use_l1,
            simota_rule, label_offset).

    Returns a YOLOX in training mode.
    """
    return build


yolox_nano = _builder("yolox_nano")
yolox_tiny = _builder("yolox_tiny")
yolox_s = _builder("yolox_s")
yolox_m = _builder("yolox_m")
yolox_l = _builder("yolox_l")
yolox_x = _builder("yolox_x")

BUILDERS = {f.__name__: f for f in (yolox_nano, yolox_tiny, yolox_s, yolox_m, yolox_l, yolox_x)}
