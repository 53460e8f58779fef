"""CornerNet (Law & Deng, ECCV 2018, "CornerNet: Detecting Objects as Paired Keypoints"): a stacked
hourglass, top-left and bottom-right corner pooling modules on ``fastdet.ops.corner_pool_sum``, and
per corner a class heatmap, a 1-d embedding and a sub-pixel offset. A box is a top-left and a
bottom-right corner of the same class whose embeddings are close.

Everything is batched with fixed shapes: the targets (Gaussian bumps drawn for all objects at once
and max-reduced into their classes), the losses (padded objects with masks, no per-object loop) and
the decoding (top-k corners of each type, all k x k pairs scored at once). Only the Soft-NMS
(``fastdet.ops.soft_nms``) runs per image.

The heatmaps have no background class: channel c is label c + label_offset (``fastdet train``
builds CornerNet with num_classes=K, label_offset=1 for datasets labelled 1..K).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet.ops import corner_pool_sum, soft_nms

from .._weights import load_weights, local_path, num_classes_from
from ._utils import check_detection_targets, check_detector_inputs, clip_boxes, pad_targets
from .hourglass import STEM_STRIDE, StackedHourglass, conv_bn
from .rpn import conv_block
from .transform import RCNNTransform

CORNERS = ("top_left", "bottom_right")
HEATMAP_BIAS = -2.19  # sigmoid ~ 0.1 at the start (CornerNet's and CenterNet's initialisation)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- corner pooling and heads ---------------------------------------------------------------------------


class CornerPooling(nn.Module):
    """The corner pooling module of the paper's Fig. 7: two 3 x 3 conv-BN-ReLU branches, pooled
    (vertical pool of the first + horizontal pool of the second, fused in ``corner_pool_sum``),
    3 x 3 conv-BN, plus a 1 x 1 conv-BN of the input, ReLU, then a 3 x 3 conv-BN-ReLU.

    corner: "top_left" (pools towards the top-left: top + left) or "bottom_right".
    forward(Tensor[B, channels, H, W]) -> same shape.
    """

    def __init__(self, channels: int, corner: str, pool_channels: int = 128):
        super().__init__()
        if corner not in CORNERS:
            raise ValueError(f"CornerPooling: corner must be one of {CORNERS}, got {corner!r}")
        self.corner = corner
        self.vertical = conv_block(channels, pool_channels, nn.BatchNorm2d)
        self.horizontal = conv_block(channels, pool_channels, nn.BatchNorm2d)
        self.pool_conv = conv_bn(pool_channels, channels, 3)
        self.skip = conv_bn(channels, channels, 1)
        self.out = conv_block(channels, channels, nn.BatchNorm2d)

    def forward(self, x: Tensor) -> Tensor:
        pooled = corner_pool_sum(self.vertical(x), self.horizontal(x), self.corner)
        return self.out(F.relu(self.pool_conv(pooled) + self.skip(x)))

    def extra_repr(self) -> str:
        return f"corner={self.corner!r}"


def _prediction(in_channels: int, out_channels: int, bias: float | None = None) -> nn.Sequential:
    """3 x 3 conv (with bias) + ReLU, then a 1 x 1 conv to the outputs (CornerNet's make_kp_layer)."""
    layers = nn.Sequential(conv_block(in_channels, in_channels), nn.Conv2d(in_channels, out_channels, 1))
    if bias is not None:
        nn.init.constant_(layers[1].bias, bias)
    return layers


class CornerMaps(NamedTuple):
    """A stack's predictions, corners stacked on dim 1 (0: top-left, 1: bottom-right).

    heatmaps: Tensor[B, 2, K, H, W] class logits; embeddings: Tensor[B, 2, H, W];
    offsets: Tensor[B, 2, 2, H, W] (x, y) sub-pixel offsets, in output cells.
    """

    heatmaps: Tensor
    embeddings: Tensor
    offsets: Tensor


class CornerHead(nn.Module):
    """One stack's head: per corner type a CornerPooling module, then the heatmap (K classes,
    sigmoid, bias -2.19), embedding (1) and offset (2) predictions.

    forward(Tensor[B, channels, H, W]) -> CornerMaps.
    """

    def __init__(self, channels: int, num_classes: int, pool_channels: int = 128):
        super().__init__()
        self.num_classes = num_classes
        self.pools = nn.ModuleList(CornerPooling(channels, c, pool_channels) for c in CORNERS)
        self.heatmaps = nn.ModuleList(_prediction(channels, num_classes, HEATMAP_BIAS) for _ in CORNERS)
        self.embeddings = nn.ModuleList(_prediction(channels, 1) for _ in CORNERS)
        self.offsets = nn.ModuleList(_prediction(channels, 2) for _ in CORNERS)

    def forward(self, x: Tensor) -> CornerMaps:
        pooled = [pool(x) for pool in self.pools]
        heat = torch.stack([m(p) for m, p in zip(self.heatmaps, pooled)], dim=1)
        embed = torch.cat([m(p) for m, p in zip(self.embeddings, pooled)], dim=1)
        offset = torch.stack([m(p) for m, p in zip(self.offsets, pooled)], dim=1)
        return CornerMaps(heat, embed, offset)


# ---- targets --------------------------------------------------------------------------------------------


def gaussian_radius(width: Tensor, height: Tensor, min_overlap: float = 0.3) -> Tensor:
    """The largest r such that moving each corner of a (width x height) box by up to r (in x and y)
    keeps its IoU with the box >= min_overlap (CornerNet, section 3.2). Three cases, each the root of
    a quadratic in r: both corners inside the box (it shrinks by 2r), both outside (it grows by 2r),
    one in and one out (it moves by r); the radius is the smallest of the three. (CornerNet's code
    solves the same three quadratics with slips in the coefficients; these are the exact roots.)"""
    o, s, area = min_overlap, width + height, width * height
    shrink = (s - torch.sqrt(s * s - 4 * (1 - o) * area)) / 4
    grow = (-2 * o * s + torch.sqrt(4 * o * o * s * s + 16 * o * (1 - o) * area)) / (8 * o)
    shift = ((1 + o) * s - torch.sqrt((1 + o) ** 2 * s * s - 4 * (1 + o) * (1 - o) * area)) / (2 * (1 + o))
    return torch.minimum(torch.minimum(shrink, grow), shift)


class CornerTargets(NamedTuple):
    """Training targets for boxes padded to G per image (see corner_targets).

    heatmaps: Tensor[B, 2, K, H, W] (1 at each corner, Gaussian bumps around it, 0 elsewhere);
    index: Tensor[B, 2, G] int64, each corner's cell y * W + x; offsets: Tensor[B, 2, G, 2] (x, y)
    fractional parts; mask: Tensor[B, G] bool (False: padding).
    """

    heatmaps: Tensor
    index: Tensor
    offsets: Tensor
    mask: Tensor


def corner_targets(boxes: Tensor, labels: Tensor, mask: Tensor, num_classes: int, size: tuple[int, int],
                   min_overlap: float = 0.3) -> CornerTargets:
    """CornerNet's targets for all images and objects at once.

    Args:
        boxes: Tensor[B, G, 4] xyxy in output cells (input pixels / stride), padded; labels Tensor[B, G]
            int64 class channels in [0, K); mask Tensor[B, G] bool.
        size: (H, W) of the output maps.

    A corner at (fx, fy) lies in cell (floor(fx), floor(fy)) (clamped into the map) with the offset
    (fx - x, fy - y). Around it an unnormalised Gaussian exp(-(dx^2 + dy^2) / (2 sigma^2)) within
    |dx|, |dy| <= r, r = floor(gaussian_radius(ceil(w), ceil(h))) of the box's size w x h in cells,
    sigma = (2r + 1) / 6 (the paper: a third of the radius); bumps of one class are max-combined.
    """
    h, w = size
    b, g = mask.shape
    corners = boxes.reshape(b, g, 2, 2).transpose(1, 2)                             # [B, 2, G, (x, y)]
    limit = torch.tensor([w - 1, h - 1], device=boxes.device)
    cells = corners.floor().long().clamp(min=torch.zeros_like(limit), max=limit)    # [B, 2, G, 2]
    offsets = corners - cells.to(corners.dtype)
    index = cells[..., 1] * w + cells[..., 0]

    wh = (boxes[..., 2:] - boxes[..., :2]).ceil()
    radius = gaussian_radius(wh[..., 0], wh[..., 1], min_overlap).floor().clamp(min=0)  # [B, G]
    sigma = ((2 * radius + 1) / 6)[:, None, :, None]                                     # [B, 1, G, 1]
    r = radius[:, None, :, None]

    def bump(coord: Tensor, n: int) -> Tensor:  # [B, 2, G] cell coordinates -> [B, 2, G, n]
        d = torch.arange(n, device=coord.device, dtype=boxes.dtype) - coord[..., None].to(boxes.dtype)
        return torch.where(d.abs() <= r, torch.exp(-d * d / (2 * sigma * sigma)), torch.zeros_like(d))

    gauss = bump(cells[..., 1], h)[..., :, None] * bump(cells[..., 0], w)[..., None, :]  # [B, 2, G, H, W]
    gauss = gauss * mask[:, None, :, None, None]
    heat = boxes.new_zeros((b, 2, num_classes, h * w))
    heat.scatter_reduce_(2, labels[:, None, :, None].expand(-1, 2, -1, h * w), gauss.flatten(3), "amax")
    return CornerTargets(heat.view(b, 2, num_classes, h, w), index, offsets, mask)


# ---- losses ---------------------------------------------------------------------------------------------


def focal_heatmap_loss(logits: Tensor, target: Tensor, num_objects: Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> Tensor:
    """CornerNet's variant of the focal loss with penalty reduction (eq. 1):
    -1/N sum[(1 - p)^alpha log p where y = 1; (1 - y)^beta p^alpha log(1 - p) elsewhere], N the
    number of objects (at least 1). log p and log(1 - p) as log-sigmoids of the logits (CornerNet's
    code clamps p to [1e-4, 1 - 1e-4] instead)."""
    p = logits.sigmoid()
    positive = target == 1
    pos = (1 - p).pow(alpha) * F.logsigmoid(logits)
    neg = (1 - target).pow(beta) * p.pow(alpha) * F.logsigmoid(-logits)
    return -torch.where(positive, pos, neg).sum() / num_objects.clamp(min=1)


def embedding_losses(tl: Tensor, br: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The pull and push losses (eq. 4, 5; Delta = 1) of corner embeddings Tensor[B, G] at the
    ground-truth corners, mask Tensor[B, G] bool.

    pull: mean over the objects of (e_tl - e_k)^2 + (e_br - e_k)^2, e_k the mean of the two;
    push: mean over ordered pairs k != j of objects in the same image of max(0, 1 - |e_k - e_j|).
    Means over all objects (pairs) of the batch; with one image exactly the paper's (CornerNet's
    code sums the per-image means over the batch). 0 without objects (pairs)."""
    m = mask.to(tl.dtype)
    mean = (tl + br) / 2
    pull = (((tl - mean) ** 2 + (br - mean) ** 2) * m).sum() / m.sum().clamp(min=1)
    eye = torch.eye(mask.shape[1], dtype=tl.dtype, device=tl.device)
    pairs = m[:, :, None] * m[:, None, :] * (1 - eye)                               # [B, G, G]
    gap = F.relu(1 - (mean[:, :, None] - mean[:, None, :]).abs())
    push = (gap * pairs).sum() / pairs.sum().clamp(min=1)
    return pull, push


def cornernet_loss(maps: CornerMaps, targets: CornerTargets, pull_weight: float = 0.1, push_weight: float = 0.1,
                   offset_weight: float = 1.0) -> dict[str, Tensor]:
    """One stack's losses: {"loss_heatmap": focal (both corners), "loss_pull", "loss_push" (weighted
    0.1), "loss_offset": smooth-L1 (beta 1) of the offsets at the ground-truth corners, both corners,
    divided by the number of objects}."""
    b, _, _, h, w = maps.heatmaps.shape
    mask = targets.mask
    num_objects = mask.sum().to(maps.heatmaps.dtype)
    embed = maps.embeddings.reshape(b, 2, h * w).gather(2, targets.index)         # [B, 2, G]
    pull, push = embedding_losses(embed[:, 0], embed[:, 1], mask)
    index = targets.index[:, :, None, :].expand(-1, -1, 2, -1)
    offsets = maps.offsets.reshape(b, 2, 2, h * w).gather(3, index).transpose(2, 3)  # [B, 2, G, 2]
    offset = F.smooth_l1_loss(offsets, targets.offsets.to(offsets.dtype), reduction="none", beta=1.0).sum(-1)
    offset = (offset * mask[:, None]).sum() / num_objects.clamp(min=1)
    return {"loss_heatmap": focal_heatmap_loss(maps.heatmaps, targets.heatmaps, num_objects),
            "loss_pull": pull_weight * pull, "loss_push": push_weight * push, "loss_offset": offset_weight * offset}


# ---- decoding -------------------------------------------------------------------------------------------


class Candidates(NamedTuple):
    """Fixed-shape box candidates of a batch: boxes Tensor[B, N, 4] xyxy in output cells, scores
    Tensor[B, N] (-1: rejected pair), labels Tensor[B, N] int64 class channels."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def decode_corners(maps: CornerMaps, top_k: int = 100, embedding_threshold: float = 0.5,
                   num_candidates: int = 1000) -> Candidates:
    """CornerNet's decoding (section 4.1), batched: sigmoid heatmaps; corners that are not the
    maximum of their 3 x 3 neighbourhood dropped; the top_k corners of each type over all classes
    and cells; their offsets added; every (top-left, bottom-right) pair of the k x k scored by the
    mean of the two corner scores, and rejected (score -1) when the classes differ, the embeddings
    are more than ``embedding_threshold`` apart, or the bottom-right corner is not strictly right of
    and below the top-left one. Returns the best ``num_candidates`` pairs per image."""
    b, _, c, h, w = maps.heatmaps.shape
    heat = maps.heatmaps.sigmoid().reshape(b, 2 * c, h, w)
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1) == heat
    heat = (heat * peaks).reshape(b, 2, c * h * w)
    k = min(top_k, c * h * w)
    scores, index = heat.topk(k, dim=2)                                             # [B, 2, k]
    labels, cell = index // (h * w), index % (h * w)
    embed = maps.embeddings.reshape(b, 2, h * w).gather(2, cell)
    offset = maps.offsets.reshape(b, 2, 2, h * w).gather(3, cell[:, :, None].expand(-1, -1, 2, -1))
    xs = (cell % w).to(heat.dtype) + offset[:, :, 0]
    ys = (cell // w).to(heat.dtype) + offset[:, :, 1]

    # pairs [B, k (top-left), k (bottom-right)]
    tl_x, br_x = xs[:, 0, :, None].expand(-1, -1, k), xs[:, 1, None, :].expand(-1, k, -1)
    tl_y, br_y = ys[:, 0, :, None].expand(-1, -1, k), ys[:, 1, None, :].expand(-1, k, -1)
    valid = ((labels[:, 0, :, None] == labels[:, 1, None, :])
             & ((embed[:, 0, :, None] - embed[:, 1, None, :]).abs() <= embedding_threshold)
             & (br_x > tl_x) & (br_y > tl_y))
    pair_scores = (scores[:, 0, :, None] + scores[:, 1, None, :]) / 2
    pair_scores = torch.where(valid, pair_scores, torch.full_like(pair_scores, -1.0)).reshape(b, k * k)
    boxes = torch.stack((tl_x, tl_y, br_x, br_y), dim=-1).reshape(b, k * k, 4)
    best, order = pair_scores.topk(min(num_candidates, k * k), dim=1)
    pair_labels = labels[:, 0, :, None].expand(-1, -1, k).reshape(b, k * k)
    return Candidates(boxes.gather(1, order[..., None].expand(-1, -1, 4)), best, pair_labels.gather(1, order))


# ---- the model ------------------------------------------------------------------------------------------


class CornerNet(nn.Module):
    """CornerNet detector: ``transform`` (RCNNTransform: normalise, resize, pad to the hourglass's
    size divisor), ``backbone`` (StackedHourglass) and one ``heads`` entry (CornerHead) per stack.

    Args:
        num_classes: classes (no background).
        num_stacks, channels, blocks, stem_channels, out_channels: the StackedHourglass.
        pool_channels: width of the corner pooling branches (CornerNet: 128).
        min_size, max_size: the input resize (RCNNTransform); images are zero-padded (after
            normalisation) to multiples of 4 * 2 ** levels, nothing is cropped.
        image_mean, image_std: normalisation of RGB images in [0, 1] (default ImageNet's).
        top_k: corners of each type kept for pairing (CornerNet: 100).
        embedding_threshold: largest embedding distance of a pair (CornerNet: 0.5).
        num_candidates: best pairs per image passed to the Soft-NMS (CornerNet: 1000).
        nms_sigma, score_thresh: Gaussian Soft-NMS per class (CornerNet's test setting "exp_soft_nms":
            exp(-IoU^2 / 0.5)) and the score below which detections are dropped.
        detections_per_img: the most detections per image (100).
        min_overlap: IoU of the Gaussian radius (0.3).
        pull_weight, push_weight, offset_weight: loss weights (0.1, 0.1, 1).
        label_offset: labels (of targets and detections) are class channel + label_offset.

    forward(images: list[Tensor[3, H, W]] RGB in [0, 1], targets=None):
      train mode: targets list[dict(boxes Tensor[N, 4] xyxy pixels, labels Tensor[N] int64 in
      [label_offset, label_offset + num_classes))] -> {"loss_heatmap", "loss_pull", "loss_push",
      "loss_offset"}, each summed over the stacks (intermediate supervision);
      eval mode: list[dict(boxes Tensor[D, 4] in original pixels, scores Tensor[D], labels Tensor[D]
      int64)] from the last stack's head only.
    """

    def __init__(self, num_classes: int = 80, num_stacks: int = 2, channels=(256, 256, 384, 384, 384, 512),
                 blocks=(2, 2, 2, 2, 2, 4), stem_channels: int = 128, out_channels: int = 256,
                 pool_channels: int = 128, min_size=511, max_size: int = 511, image_mean=IMAGENET_MEAN,
                 image_std=IMAGENET_STD, top_k: int = 100, embedding_threshold: float = 0.5,
                 num_candidates: int = 1000, nms_sigma: float = 0.5, score_thresh: float = 0.001,
                 detections_per_img: int = 100, min_overlap: float = 0.3, pull_weight: float = 0.1,
                 push_weight: float = 0.1, offset_weight: float = 1.0, label_offset: int = 0):
        super().__init__()
        name = type(self).__name__
        if int(num_classes) < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        for arg, value in (("top_k", top_k), ("num_candidates", num_candidates),
                           ("detections_per_img", detections_per_img)):
            if int(value) < 1:
                raise ValueError(f"{name}: {arg} must be >= 1, got {value}")
        if not nms_sigma > 0 or not 0 < min_overlap < 1 or not embedding_threshold >= 0:
            raise ValueError(f"{name}: need nms_sigma > 0, 0 < min_overlap < 1 and embedding_threshold >= 0, got "
                             f"{nms_sigma}, {min_overlap}, {embedding_threshold}")
        if not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"{name}: score_thresh must be in [0, 1], got {score_thresh}")
        if int(label_offset) < 0:
            raise ValueError(f"{name}: label_offset must be >= 0, got {label_offset}")
        self.backbone = StackedHourglass(num_stacks, tuple(channels), tuple(blocks), stem_channels, out_channels)
        self.transform = RCNNTransform(min_size, max_size, image_mean, image_std,
                                       size_divisible=self.backbone.size_divisor)
        self.heads = nn.ModuleList(CornerHead(out_channels, int(num_classes), pool_channels)
                                   for _ in range(num_stacks))
        self.top_k, self.num_candidates = int(top_k), int(num_candidates)
        self.embedding_threshold = float(embedding_threshold)
        self.nms_sigma, self.score_thresh = float(nms_sigma), float(score_thresh)
        self.detections_per_img = int(detections_per_img)
        self.min_overlap = float(min_overlap)
        self.loss_weights = dict(pull_weight=float(pull_weight), push_weight=float(push_weight),
                                 offset_weight=float(offset_weight))
        self.label_offset = int(label_offset)

    @property
    def num_classes(self) -> int:
        return self.heads[0].num_classes

    def loss(self, features: list[Tensor], targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """The losses of every stack's head, summed over the stacks; targets in the batch's frame."""
        h, w = features[0].shape[-2:]
        boxes, labels, mask = pad_targets(targets, features[0].dtype, features[0].device)
        labels = labels - self.label_offset * mask  # padding rows keep class 0, masked out
        gt = corner_targets(boxes / STEM_STRIDE, labels, mask, self.num_classes, (h, w), self.min_overlap)
        total: dict[str, Tensor] = {}
        for head, feature in zip(self.heads, features):
            for key, value in cornernet_loss(head(feature), gt, **self.loss_weights).items():
                total[key] = total[key] + value if key in total else value
        return total

    def detect(self, feature: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections in the batch's frame from the last stack's feature map: decode_corners, boxes
        scaled by the stride and clipped to each image, per-class Gaussian Soft-NMS, the best
        detections_per_img by their decayed scores."""
        cand = decode_corners(self.heads[-1](feature), self.top_k, self.embedding_threshold, self.num_candidates)
        detections = []
        for boxes, scores, labels, size in zip(cand.boxes, cand.scores, cand.labels, image_sizes):
            boxes = clip_boxes(boxes * STEM_STRIDE, size)
            keep, decayed = soft_nms(boxes, scores, sigma=self.nms_sigma, min_score=self.score_thresh,
                                     method="gaussian", idxs=labels)
            decayed, order = decayed.sort(descending=True)
            keep = keep[order[:self.detections_per_img]]
            detections.append({"boxes": boxes[keep], "scores": decayed[:self.detections_per_img],
                               "labels": labels[keep] + self.label_offset})
        return detections

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        name = type(self).__name__
        check_detector_inputs(name, images, targets, self.training)
        if targets is not None:
            check_detection_targets(name, targets, self.label_offset, self.num_classes)
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        batch, targets = self.transform(list(images), targets)
        features = self.backbone(batch.tensors)
        if self.training:
            return self.loss(features, targets)
        return self.transform.postprocess(self.detect(features[-1], batch.image_sizes), batch.image_sizes,
                                          original_sizes)


# ---- builders -------------------------------------------------------------------------------------------

_CONFIGS = {  # name: (num_stacks, channels, blocks, stem_channels, out_channels, pool_channels, input size)
    # the paper's Hourglass-104 (CornerNet: 511 x 511 training crops)
    "cornernet_hourglass104": (2, (256, 256, 384, 384, 384, 512), (2, 2, 2, 2, 2, 4), 128, 256, 128, 511),
    # fastdet's light variant for fast experiments: one stack, 3 levels (size divisor 32), ~40x fewer
    # parameters; the corner modules and heads are the paper's at width 64
    "cornernet_hourglass_light": (1, (64, 96, 128, 128), (1, 1, 1, 2), 32, 64, 32, 256),
}


def _builder(name: str):
    stacks, channels, blocks, stem, out, pool, size = _CONFIGS[name]

    def build(*, weights=None, num_classes=None, **kwargs) -> CornerNet:
        path = local_path(name, "weights", weights)
        num_classes = num_classes_from(name, path, num_classes, "heads.0.heatmaps.0.1.weight", default=80)
        kwargs.setdefault("min_size", size)
        kwargs.setdefault("max_size", size)
        model = CornerNet(num_classes, stacks, channels, blocks, stem, out, pool, **kwargs)
        if path is not None:
            load_weights(name, model, path)
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""CornerNet with a {stacks}-stack hourglass of {len(channels) - 1} levels (widths
    {channels}, residual blocks {blocks}), inputs resized to {size} px by default.

    Args:
        weights: None or a local state dict file; loaded strictly, never downloaded.
        num_classes: classes without background (default: the checkpoint's, else 80).
        **kwargs: CornerNet arguments (min_size, max_size, top_k, embedding_threshold, score_thresh,
            detections_per_img, label_offset, ...).

    Returns a CornerNet in training mode.
    """
    return build


cornernet_hourglass104 = _builder("cornernet_hourglass104")
cornernet_hourglass_light = _builder("cornernet_hourglass_light")

BUILDERS = {f.__name__: f for f in (cornernet_hourglass104, cornernet_hourglass_light)}
