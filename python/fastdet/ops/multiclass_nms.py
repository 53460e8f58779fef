"""Multi-class NMS in its deployment form (`torch.ops.fastdet.multiclass_nms`): ONNX
NonMaxSuppression / TensorRT EfficientNMS semantics, fixed-shape outputs, no host synchronisation
on CUDA (capturable in a CUDA graph, exportable with static shapes).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import check, op, register_fp32_autocast


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float,
                   max_per_class: int, max_total: int, class_agnostic: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Batched multi-class non-maximum suppression with fixed-shape, padded outputs.

    Semantics, per image b (C classes, N candidates):

    * Per class c (``class_agnostic=False``): the candidates are the n with
      ``scores[b, n, c] > score_threshold``, in order of decreasing score, ties to the lower n.
      Greedy NMS walks them in that order and keeps a candidate unless its IoU with an already
      kept box of the same class is ``> iou_threshold``; it stops once ``max_per_class`` boxes are
      kept. Then the kept detections of all classes are merged in order of decreasing score, ties to
      the lower class, then the lower n, and the first ``max_total`` are returned.
    * ``class_agnostic=True``: all (n, c) pairs with ``scores[b, n, c] > score_threshold`` compete
      in one greedy NMS, in order of decreasing score, ties to the lower n, then the lower c;
      ``max_per_class`` is ignored and the walk stops at ``max_total`` kept. The output is in that
      order.

    IoU is torchvision's NMS IoU, ``inter / (area_a + area_b - inter)`` (no eps); scores and IoUs
    are computed in float32 for float16/bfloat16 inputs (float64 for float64) and compared with
    the thresholds in float64. On tie-free scores the result equals, per image, a score filter,
    ``torchvision.ops.batched_nms``, a per-class top-``max_per_class`` and a top-``max_total``.

    NaN/Inf: a NaN score never passes the threshold (the candidate is dropped); +/-Inf scores
    compare as usual. A box with a NaN coordinate has NaN IoU with every box, so it neither
    suppresses nor is suppressed. A zero union (two zero-area boxes) gives IoU NaN: no suppression.

    Args:
        boxes: Tensor[B, N, 4] (one box per candidate, shared by all classes) or Tensor[B, N, C, 4]
            (one box per candidate and class), (x1, y1, x2, y2).
        scores: Tensor[B, N, C], same dtype and device as boxes.
        score_threshold: keep candidates with score strictly above this. Must not be NaN.
        iou_threshold: suppress when IoU is strictly above this. Must not be NaN.
        max_per_class: >= 1, the most detections kept per image and class.
        max_total: >= 1, the most detections returned per image (K below).
        class_agnostic: one NMS over all classes of an image (see above).

    Returns:
        (num_dets, boxes, scores, labels, indices):
        num_dets Tensor[B] int64 (detections of each image, <= K); boxes Tensor[B, K, 4] and
        scores Tensor[B, K] in the input dtype; labels Tensor[B, K] int64 (class c); indices
        Tensor[B, K] int64 (candidate n in [0, N)). Row k >= num_dets[b] is padding: boxes and
        scores 0, labels and indices -1. Not differentiable.
    """
    return op("multiclass_nms").default(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total,
                                        class_agnostic)


# ---- fake kernel: the C++ checks restated, and the (static) output metadata -----------------------


@torch.library.register_fake("fastdet::multiclass_nms")
def _multiclass_nms_fake(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total,
                         class_agnostic=False):
    name = "multiclass_nms"
    check(boxes.dim() in (3, 4) and boxes.shape[-1] == 4, name,
          f"boxes must have shape [B, N, 4] or [B, N, C, 4], got {list(boxes.shape)}")
    check(boxes.dtype.is_floating_point, name, f"boxes must be a floating-point tensor, got {boxes.dtype}")
    check(scores.dim() == 3, name, f"scores must have shape [B, N, C], got {list(scores.shape)}")
    check(boxes.device == scores.device, name, f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    check(boxes.dtype == scores.dtype, name, f"boxes and scores must have the same dtype, got {boxes.dtype} and {scores.dtype}")
    check(boxes.shape[0] == scores.shape[0] and boxes.shape[1] == scores.shape[1]
          and (boxes.dim() == 3 or boxes.shape[2] == scores.shape[2]), name,
          f"boxes and scores must agree on B, N (and C for per-class boxes), got {list(boxes.shape)} and {list(scores.shape)}")
    check(score_threshold == score_threshold, name, "score_threshold must be a number, got NaN")
    check(iou_threshold == iou_threshold, name, "iou_threshold must be a number, got NaN")
    check(max_per_class >= 1, name, f"max_per_class must be >= 1, got {max_per_class}")
    check(max_total >= 1, name, f"max_total must be >= 1, got {max_total}")
    b, k = scores.shape[0], max_total
    long = dict(dtype=torch.int64, device=scores.device)
    return (scores.new_empty((b,), **long), scores.new_empty((b, k, 4)), scores.new_empty((b, k)),
            scores.new_empty((b, k), **long), scores.new_empty((b, k), **long))


register_fp32_autocast("multiclass_nms")
