"""Box coding, matching and sampling for the two-stage detectors, and the input checks every
detector's forward shares.

The numerics follow torchvision.models.detection._utils (Faster R-CNN, Ren et al. 2015; the
delta parametrisation of R-CNN, Girshick et al. 2014) so that torchvision weights give the same
detections; the implementation is fastdet's.
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


def check_detection_inputs(name: str, images, targets, training: bool) -> None:
    """The forward contract of the zoo's detectors: images a non-empty list of Tensor[C, H, W];
    targets required in training mode, one dict per image with boxes Tensor[N, 4]. A violation is
    a ValueError naming the model ``name``."""
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


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU matrix Tensor[N, M] of xyxy boxes via fastdet.ops.box_iou with eps=0 (torchvision's exact
    values, which matching thresholds are tuned for)."""
    return ops.box_iou(boxes1, boxes2, eps=0.0)


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
