"""Box coding, matching, sampling and input checks shared by the detectors.

The numerics follow torchvision.models.detection._utils (Faster R-CNN, Ren et al. 2015; the
delta parametrisation of R-CNN, Girshick et al. 2014; FCOS's linear coding, Tian et al. 2019;
SSD's matching, Liu et al. 2016) so
that torchvision weights give the same detections; the implementation is fastdet's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from fastdet import ops


class ImageList(NamedTuple):
    """A padded image batch and the sizes of the images inside it before padding.

    tensors: Tensor[B, 3, H_pad, W_pad] (H_pad, W_pad multiples of the size divisor).
    image_sizes: list of (h, w) of each resized image, in pixels.
    """

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU matrix Tensor[N, M] of xyxy boxes via fastdet.ops.box_iou with eps=0 (torchvision's exact
    values, which matching thresholds are tuned for)."""
    return ops.box_iou(boxes1, boxes2, eps=0.0)


def anchor_major(x: Tensor, c: int) -> Tensor:
    """A head's per-level map Tensor[B, A * c, H, W] -> Tensor[B, H * W * A, c] in anchor order
    (location-major, then anchor), the order of AnchorGenerator's anchors."""
    b, _, h, w = x.shape
    return x.reshape(b, -1, c, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, c)


def check_detector_inputs(name: str, images, targets, training: bool) -> None:
    """The call contract every detector shares: images a non-empty list of Tensor[C, H, W];
    targets (required in training) one dict per image with boxes Tensor[N, 4]. Errors name the model."""
    if not isinstance(images, (list, tuple)) or not all(isinstance(im, Tensor) for im in images):
        raise ValueError(f"{name}: images must be a list of Tensor[3, H, W], got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError(f"{name}: images is empty; pass at least one Tensor[3, H, W]")
    for i, im in enumerate(images):
        if im.dim() != 3:
            raise ValueError(f"{name}: images[{i}] must have shape [C, H, W], got {list(im.shape)}")
    if training and targets is None:
        raise ValueError(f"{name}: targets are required in training mode (model.eval() for inference)")
    if targets is None:
        return
    if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
        raise ValueError(f"{name}: targets must be a list with one dict per image ({len(images)})")
    for i, t in enumerate(targets):
        boxes = t.get("boxes") if isinstance(t, Mapping) else None
        if not isinstance(boxes, Tensor):
            raise ValueError(f"{name}: targets[{i}]['boxes'] must be a Tensor[N, 4], got {type(boxes).__name__}")
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"{name}: targets[{i}]['boxes'] must have shape [N, 4], got {list(boxes.shape)}")


def check_detection_targets(name: str, targets: list[dict], label_offset: int, num_classes: int) -> None:
    """Targets of a detector without a background class: every dict has labels Tensor[N] in
    [label_offset, label_offset + num_classes) and its boxes a positive width and height."""
    for i, t in enumerate(targets):
        boxes, labels = t["boxes"], t.get("labels")
        if not isinstance(labels, Tensor) or labels.shape != boxes.shape[:1]:
            raise ValueError(f"{name}: targets[{i}]['labels'] must be a Tensor[N] (N = {len(boxes)} boxes)")
        bad_box = (boxes[:, 2:] <= boxes[:, :2]).any()
        low = label_offset
        bad_label = ((labels < low) | (labels >= low + num_classes)).any()
        if bool(bad_box | bad_label):  # one host synchronisation for both checks
            if bad_box:
                raise ValueError(f"{name}: targets[{i}]['boxes'] has a box with no positive width and height")
            raise ValueError(f"{name}: targets[{i}]['labels'] must be in [{low}, {low + num_classes}), "
                             f"got {labels.tolist()}")


def check_positive_boxes(name: str, targets: list[dict]) -> None:
    """Every target box (after resizing) has a positive width and height."""
    for i, t in enumerate(targets):
        bad = (t["boxes"][:, 2:] <= t["boxes"][:, :2]).any(dim=1)
        if bad.any():
            box = t["boxes"][torch.where(bad)[0][0]].tolist()
            raise ValueError(f"{name}: targets[{i}]['boxes'] has a box with no positive width and height: {box} "
                             f"(after resizing)")


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp xyxy boxes (Tensor[..., 4]) to an image of size (h, w)."""
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def keep_large(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both >= min_size."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return torch.where((wh >= min_size).all(dim=1))[0]


class BoxCoder:
    """Encode boxes as (dx, dy, dw, dh) deltas relative to reference boxes, and decode them back.

    dx = wx * (gx - px) / pw, dw = ww * log(gw / pw) (centres and sizes of the xyxy boxes);
    decoding clamps dw, dh at ``bbox_xform_clip`` (default log(1000 / 16)) before the exp.
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = bbox_xform_clip

    @staticmethod
    def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h

    def encode(self, matched: Tensor, references: Tensor) -> Tensor:
        """Deltas Tensor[N, 4] that move references[i] onto matched[i] (both Tensor[N, 4] xyxy)."""
        wx, wy, ww, wh = self.weights
        rx, ry, rw, rh = self._centre_size(references)
        gx, gy, gw, gh = self._centre_size(matched)
        return torch.stack((wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                            ww * torch.log(gw / rw), wh * torch.log(gh / rh)), dim=1)

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """Boxes Tensor[N, K, 4] from deltas Tensor[N, K * 4] applied to references Tensor[N, 4]."""
        references = references.to(deltas.dtype)
        cx, cy, w, h = self._centre_size(references)
        wx, wy, ww, wh = self.weights
        d = deltas.reshape(deltas.shape[0], deltas.shape[1] // 4, 4)  # explicit K: N may be 0
        dw = torch.clamp(d[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(d[..., 3] / wh, max=self.bbox_xform_clip)
        px = d[..., 0] / wx * w[:, None] + cx[:, None]
        py = d[..., 1] / wy * h[:, None] + cy[:, None]
        half_w = 0.5 * (torch.exp(dw) * w[:, None])
        half_h = 0.5 * (torch.exp(dh) * h[:, None])
        return torch.stack((px - half_w, py - half_h, px + half_w, py + half_h), dim=2)


class LinearBoxCoder:
    """FCOS's box coding (Tian et al. 2019): the distances (l, t, r, b) from a reference box's centre
    to the four sides of a box, divided by the reference box's width / height when
    ``normalize_by_size``. Works on any leading shape Tensor[..., 4]."""

    def __init__(self, normalize_by_size: bool = True):
        self.normalize_by_size = normalize_by_size

    def _scale(self, references: Tensor) -> Tensor:
        w = references[..., 2] - references[..., 0]
        h = references[..., 3] - references[..., 1]
        return torch.stack((w, h, w, h), dim=-1)

    def encode(self, references: Tensor, boxes: Tensor) -> Tensor:
        """(l, t, r, b) of boxes seen from the centres of references (argument order as torchvision's)."""
        cx = 0.5 * (references[..., 0] + references[..., 2])
        cy = 0.5 * (references[..., 1] + references[..., 3])
        d = torch.stack((cx - boxes[..., 0], cy - boxes[..., 1], boxes[..., 2] - cx, boxes[..., 3] - cy), dim=-1)
        return d / self._scale(references) if self.normalize_by_size else d

    def decode(self, codes: Tensor, references: Tensor) -> Tensor:
        """xyxy boxes from (l, t, r, b) codes around the centres of references (same shapes)."""
        references = references.to(codes.dtype)
        cx = 0.5 * (references[..., 0] + references[..., 2])
        cy = 0.5 * (references[..., 1] + references[..., 3])
        if self.normalize_by_size:
            codes = codes * self._scale(references)
        return torch.stack((cx - codes[..., 0], cy - codes[..., 1], cx + codes[..., 2], cy + codes[..., 3]), dim=-1)


class Matcher:
    """Assign each prediction (column of an IoU matrix [M gt, N pred]) its best ground truth.

    Returns Tensor[N] int64: the gt index where IoU >= high_threshold, BELOW_LOW_THRESHOLD (-1)
    where IoU < low_threshold, BETWEEN_THRESHOLDS (-2) in between. With
    ``allow_low_quality_matches`` every gt also keeps the predictions that overlap it most (ties
    included), whatever their IoU (Faster R-CNN's RPN rule).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        if iou.shape[0] == 0 or iou.shape[1] == 0:
            raise ValueError(f"Matcher: the IoU matrix must not be empty, got shape {list(iou.shape)}")
        best, matches = iou.max(dim=0)
        result = matches.clone()
        result[best < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        result[(best >= self.low_threshold) & (best < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1).values
            preds = torch.where(iou == best_per_gt[:, None])[1]
            result[preds] = matches[preds]
        return result


class SSDMatcher(Matcher):
    """SSD's matching (Liu et al. 2016, section 2.2): a prediction is matched to its best ground
    truth where their IoU >= ``threshold`` (else BELOW_LOW_THRESHOLD); then every ground truth also
    takes the single prediction that overlaps it most, whatever the IoU (the later ground truth wins
    when two share one), so that no object is left without a positive."""

    def __init__(self, threshold: float):
        super().__init__(threshold, threshold, allow_low_quality_matches=False)

    def __call__(self, iou: Tensor) -> Tensor:
        result = super().__call__(iou)
        best_pred = iou.max(dim=1).indices  # [M]: the prediction each ground truth overlaps most
        result[best_pred] = torch.arange(best_pred.shape[0], dtype=result.dtype, device=result.device)
        return result


class BalancedPositiveNegativeSampler:
    """Pick up to ``batch_size_per_image`` labels per image, at most ``positive_fraction`` of them
    positive (label >= 1), the rest negative (label 0); label -1 is ignored.

    Uses torch's RNG in the order torchvision does (one randperm over the positives, then one over
    the negatives, image by image), so the same seed samples the same anchors and proposals.
    Returns per image a bool mask of the positives and one of the negatives picked.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        pos_masks, neg_masks = [], []
        for lab in labels:
            positive = torch.where(lab >= 1)[0]
            negative = torch.where(lab == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            pick_pos = positive[torch.randperm(positive.numel(), device=lab.device)[:num_pos]]
            pick_neg = negative[torch.randperm(negative.numel(), device=lab.device)[:num_neg]]
            pos = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
            neg = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
            pos[pick_pos] = True
            neg[pick_neg] = True
            pos_masks.append(pos)
            neg_masks.append(neg)
        return pos_masks, neg_masks



def transform_and_features(model, images, targets) -> tuple[ImageList, list[dict] | None, list[tuple[int, int]], list[Tensor]]:
    """The start of a one-stage detector's forward (``model`` has ``transform`` and ``backbone``):
    checks the inputs, remembers the original (h, w) of each image, resizes and batches them (and
    the targets' boxes), and runs the backbone. Returns (batch, targets, original_sizes, feature maps
    as a list, coarsest last)."""
    name = type(model).__name__
    check_detector_inputs(name, images, targets, model.training)
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    batch, targets = model.transform(list(images), targets)
    if targets is not None:
        check_positive_boxes(name, targets)
    features = model.backbone(batch.tensors)
    features = [features] if isinstance(features, Tensor) else list(features.values())
    return batch, targets, original_sizes, features


def pad_targets(targets: list[dict], dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image targets -> (boxes Tensor[B, G, 4], labels Tensor[B, G] int64, mask Tensor[B, G] bool),
    padded to the largest count G (at least 1)."""
    g = max([1] + [len(t["boxes"]) for t in targets])
    boxes = torch.zeros((len(targets), g, 4), dtype=dtype, device=device)
    labels = torch.zeros((len(targets), g), dtype=torch.int64, device=device)
    mask = torch.zeros((len(targets), g), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["boxes"])
        boxes[i, :n] = t["boxes"]
        labels[i, :n] = t["labels"]
        mask[i, :n] = True
    return boxes, labels, mask
