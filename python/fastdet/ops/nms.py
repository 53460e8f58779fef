"""Non-maximum suppression: `torch.ops.fastdet.nms` and `torch.ops.fastdet.batched_nms`.

Drop-in replacements for ``torchvision.ops.nms`` and ``torchvision.ops.batched_nms``: the same
greedy selection (visit boxes by decreasing score, keep a box unless a kept box has
``IoU > iou_threshold`` with it, IoU = inter / (area1 + area2 - inter) with no eps), with
these definitions where torchvision leaves things open:

* Ties in score are broken by the lower index first, so CPU and CUDA give identical results.
* NaN scores sort first (as ``torch.sort`` treats NaN as the largest value), ties among them by
  index; ``-0.0`` and ``0.0`` are equal scores.
* A box with a NaN coordinate has NaN IoU with every box, so it never suppresses and is never
  suppressed (it is kept). Infinite coordinates follow IEEE arithmetic; an undefined IoU
  (``inf - inf``, ``0 / 0`` for zero-area boxes) is NaN and suppresses nothing.
* fp16/bf16 boxes are compared in fp32 math (the result equals fp32 NMS of the rounded values).

``batched_nms`` is computed per class directly (no coordinate-offset trick, which loses precision
in fp16 and costs O((sum n)^2)); its work grows with sum over classes of n_c^2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import check, check_scored_boxes, op, register_fp32_autocast


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int = -1) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: Tensor[N, 4] in (x1, y1, x2, y2), floating point (fp16, bf16, fp32, fp64).
        scores: Tensor[N], same dtype and device as boxes.
        iou_threshold: boxes with IoU strictly greater than this with a kept, higher-scored box
            are discarded. Must not be NaN.
        max_output: -1 keeps all; k >= 0 stops after k boxes are kept.

    Returns:
        Tensor[K] int64: indices of the kept boxes, by decreasing score (ties: lower index first,
        NaN scores first). Empty inputs give an empty result.

    Torchvision compatibility: ``nms(b, s, t)`` equals ``torchvision.ops.nms(b, s, t)`` whenever the
    scores have no ties.
    """
    return op("nms").default(boxes, scores, iou_threshold, max_output)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression done independently per class.

    Args:
        boxes: Tensor[N, 4] in (x1, y1, x2, y2), floating point.
        scores: Tensor[N], same dtype and device as boxes.
        idxs: Tensor[N] int64 class ids (any values); boxes of different classes never suppress
            each other.
        iou_threshold: as in :func:`nms`.

    Returns:
        Tensor[K] int64: the union of ``nms`` over each class, by decreasing score (ties: lower
        index first, NaN scores first).

    Torchvision compatibility: equals ``torchvision.ops.batched_nms`` when the scores have no ties
    (and where the coordinate-offset trick torchvision uses for small inputs does not lose
    precision).
    """
    return op("batched_nms").default(boxes, scores, idxs, iou_threshold)


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


@torch.library.register_fake("fastdet::nms")
def _nms_fake(boxes, scores, iou_threshold, max_output=-1):
    check(max_output >= -1, "nms", f"max_output must be -1 (keep all) or >= 0, got {max_output}")
    check_scored_boxes("nms", boxes, scores)
    check(iou_threshold == iou_threshold, "nms", "iou_threshold must be a number, got NaN")
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("fastdet::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    check_scored_boxes("batched_nms", boxes, scores, idxs)
    check(iou_threshold == iou_threshold, "batched_nms", "iou_threshold must be a number, got NaN")
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)


register_fp32_autocast("nms")
register_fp32_autocast("batched_nms")
