"""Soft-NMS (`torch.ops.fastdet.soft_nms`): Bodla et al. 2017, "Soft-NMS -- Improving Object
Detection With One Line of Code", with linear and gaussian decay, on CPU and CUDA.

Algorithm. Start with every box whose score is >= min_score. Repeat: select the remaining box with
the highest current score (on equal scores the lower index), emit it with its current score and
remove it; multiply the score of every remaining box of the same class by
    linear:   w = 1 - iou   if iou >= iou_threshold, else 1
    gaussian: w = exp(-iou^2 / sigma)                 (iou_threshold is not used)
and drop every box whose score is no longer >= min_score. Stop when no box remains.
IoU is torchvision's nms IoU: inter / (area1 + area2 - inter), no eps.

Differences from mmcv.ops.soft_nms: mmcv decays with `iou > iou_threshold` (here `>=`, as in the
paper's pseudo-code for the threshold test of NMS), and mmcv only applies min_score after a decay, so
a box whose *initial* score is below min_score can still be selected there; here it never is.
mmcv returns the boxes with their scores ([K, 5]); this op returns indices and scores.

NaN / Inf: a NaN score is never >= min_score, so that box is never selected. A NaN IoU (a NaN
coordinate, or a zero union such as two zero-area boxes) gives weight 1, i.e. no decay. Zero-area
boxes have IoU 0 with any box of positive area (no decay). Infinite coordinates and scores follow
IEEE arithmetic (inf * 0 = NaN drops the box). Nothing here reads out of bounds or raises for
non-finite values.

Precision: fp16/bf16 inputs are computed in fp32 (returned scores are rounded to the input dtype
once, at the end); fp32 in fp32; fp64 in fp64.

CUDA: one persistent 1024-thread block runs the whole loop (scores and boxes in shared memory when
they fit); the only host synchronisation is one read of the number of kept boxes at the end, to
size the returned tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import check, check_scored_boxes, op, register_fp32_autocast

_METHODS = ("linear", "gaussian")


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 0.001,
             method: str = "linear", idxs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Soft non-maximum suppression.

    Args:
        boxes: Tensor[N, 4] in (x1, y1, x2, y2), floating point.
        scores: Tensor[N], same dtype and device as boxes.
        iou_threshold: linear method only: boxes overlapping a selected box with IoU >= this are
            decayed by (1 - IoU). Not NaN.
        sigma: gaussian method only: decay exp(-IoU^2 / sigma). Must be > 0.
        min_score: boxes whose (current or initial) score is below this are dropped. Not NaN.
        method: "linear" or "gaussian".
        idxs: optional Tensor[N] int64 class ids; boxes of different classes never decay each
            other (per-class Soft-NMS, results interleaved by selection order).

    Returns:
        (keep, scores): keep is Tensor[K] int64, the indices of the kept boxes in selection order
        (decayed scores non-increasing within each class and, without idxs, overall); scores is
        Tensor[K] with their decayed scores, in the scores' dtype. Not differentiable.
    """
    return op("soft_nms").default(boxes, scores, iou_threshold, sigma, min_score, method, idxs)


# ---- fake kernel: the C++ checks restated, and a data-dependent output size --------------------------


@torch.library.register_fake("fastdet::soft_nms")
def _soft_nms_fake(boxes, scores, iou_threshold=0.3, sigma=0.5, min_score=0.001, method="linear", idxs=None):
    name = "soft_nms"
    check(method in _METHODS, name, f"method must be 'linear' or 'gaussian', got '{method}'")
    check(iou_threshold == iou_threshold, name, "iou_threshold must be a number, got NaN")
    check(min_score == min_score, name, "min_score must be a number, got NaN")
    check(sigma > 0, name, f"sigma must be > 0, got {sigma}")
    check_scored_boxes(name, boxes, scores, idxs)
    ctx = torch.library.get_ctx()
    k = ctx.new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64), scores.new_empty((k,))


register_fp32_autocast("soft_nms")
