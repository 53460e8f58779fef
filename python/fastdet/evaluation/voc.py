"""Pascal VOC average precision and per-class precision / recall / F1.

Conventions (shared with the rest of fastdet): boxes are absolute-pixel ``xyxy`` with continuous
coordinates, so a box's width is ``x2 - x1`` (the VOC devkit's integer-pixel ``+ 1`` is not used, as
in torchvision and COCO); labels are contiguous ints ``1..num_classes-1`` and ``num_classes`` counts
the background class 0, like the ``num_classes`` of torchvision's detectors.

Matching follows the VOC devkit (``VOCevaldet.m``): detections of one class, over all images, in
descending score order; each is assigned to the ground-truth box of its image and class with the
highest IoU; if that IoU >= ``iou_threshold`` and the box is not difficult, the detection is a true
positive the first time the box is matched and a false positive afterwards (a duplicate); if the box
is difficult the detection is ignored (neither true nor false positive); below the threshold it is a
false positive. Difficult boxes are not counted as positives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["precision_recall_f1", "voc_ap", "voc_evaluate"]


def voc_ap(recall: Any, precision: Any, use_07_metric: bool = False) -> float:
    """Average precision from a precision/recall curve (the VOC devkit's definitions).

    Args:
        recall: [D] recall after each detection in descending score order (non-decreasing).
        precision: [D] precision after each detection.
        use_07_metric: ``True``: VOC2007 11-point interpolation, the mean over t in {0, 0.1, ..., 1}
            of the highest precision at recall >= t (0 if recall never reaches t). ``False``
            (VOC2010 and later): the area under the monotone precision envelope (precision made
            non-increasing from the right), summed where recall changes.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve.
    """
    rec = np.asarray(recall.detach().cpu() if isinstance(recall, torch.Tensor) else recall, dtype=np.float64)
    prec = np.asarray(precision.detach().cpu() if isinstance(precision, torch.Tensor) else precision, dtype=np.float64)
    if rec.ndim != 1 or prec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(
            f"voc_ap: recall and precision must be 1-D of the same length, got {rec.shape} and {prec.shape}"
        )
    if not (np.all(np.isfinite(rec)) and np.all(np.isfinite(prec))):
        raise ValueError("voc_ap: recall and precision must be finite")
    if rec.size == 0:
        return 0.0
    if use_07_metric:
        ap = 0.0
        for t in np.linspace(0.0, 1.0, 11):
            above = prec[rec >= t]
            ap += (above.max() if above.size else 0.0) / 11.0
        return float(ap)
    # Sentinels: recall 0 -> 1, precision 0 at both ends; then the envelope from the right.
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _numpy(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False)


def _pairs(detections: Any, ground_truths: Any, fn: str) -> list[tuple[Any, Mapping | None, Mapping]]:
    """(image key, detection dict or None, ground-truth dict) for every image."""
    if isinstance(ground_truths, Mapping):
        if not isinstance(detections, Mapping):
            raise ValueError(f"{fn}: ground_truths is a dict keyed by image, so detections must be one too")
        unknown = [k for k in detections if k not in ground_truths]
        if unknown:
            raise ValueError(f"{fn}: detections for images not in ground_truths: {unknown[:5]}")
        return [(k, detections.get(k), gt) for k, gt in ground_truths.items()]
    if isinstance(ground_truths, Sequence) and isinstance(detections, Sequence):
        if len(detections) != len(ground_truths):
            raise ValueError(
                f"{fn}: detections ({len(detections)} images) and ground_truths ({len(ground_truths)} images) "
                "must have the same length"
            )
        return [(i, d, g) for i, (d, g) in enumerate(zip(detections, ground_truths))]
    raise ValueError(
        f"{fn}: detections and ground_truths must be lists (one dict per image) or dicts keyed by image id, "
        f"got {type(detections).__name__} and {type(ground_truths).__name__}"
    )


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    bad = labels[(labels < 1) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{where} label {int(bad[0])} is outside 1..{num_classes - 1} (num_classes={num_classes} counts "
            "the background class 0, torchvision convention)"
        )


def _read_boxes(d: Mapping, where: str) -> tuple[np.ndarray, np.ndarray]:
    for key in ("boxes", "labels"):
        if key not in d:
            raise ValueError(f"{where} has no {key!r}")
    boxes = _numpy(d["boxes"], np.float64)
    if boxes.ndim == 1 and boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where} boxes must have shape [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{where} boxes contain NaN or inf")
    labels_raw = _numpy(d["labels"], np.float64)
    if labels_raw.shape != (boxes.shape[0],):
        raise ValueError(f"{where} labels must have shape [{boxes.shape[0]}], got {tuple(labels_raw.shape)}")
    if not np.all(labels_raw == np.round(labels_raw)):
        raise ValueError(f"{where} labels must be integers")
    return boxes, labels_raw.astype(np.int64)


def _prepare(detections: Any, ground_truths: Any, num_classes: int, fn: str):
    """Validated per-image arrays: list of (det_boxes, det_scores, det_labels, gt_boxes, gt_labels, gt_difficult)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"{fn}: num_classes must be an int >= 2 (it counts the background), got {num_classes!r}")
    images = []
    for key, det, gt in _pairs(detections, ground_truths, fn):
        if not isinstance(gt, Mapping):
            raise ValueError(f"{fn}: ground_truths[{key!r}] must be a dict with boxes, labels[, difficult]")
        g_boxes, g_labels = _read_boxes(gt, f"{fn}: ground_truths[{key!r}]")
        _check_labels(g_labels, num_classes, f"{fn}: ground_truths[{key!r}]")
        if gt.get("difficult") is None:
            g_diff = np.zeros(g_boxes.shape[0], dtype=bool)
        else:
            g_diff = _numpy(gt["difficult"], bool)
            if g_diff.shape != (g_boxes.shape[0],):
                raise ValueError(
                    f"{fn}: ground_truths[{key!r}] difficult must have shape [{g_boxes.shape[0]}], "
                    f"got {tuple(g_diff.shape)}"
                )
        if det is None:
            d_boxes, d_labels, d_scores = np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)
        else:
            if not isinstance(det, Mapping):
                raise ValueError(f"{fn}: detections[{key!r}] must be a dict with boxes, scores, labels")
            d_boxes, d_labels = _read_boxes(det, f"{fn}: detections[{key!r}]")
            _check_labels(d_labels, num_classes, f"{fn}: detections[{key!r}]")
            if "scores" not in det:
                raise ValueError(f"{fn}: detections[{key!r}] has no 'scores'")
            d_scores = _numpy(det["scores"], np.float64)
            if d_scores.shape != (d_boxes.shape[0],):
                raise ValueError(
                    f"{fn}: detections[{key!r}] scores must have shape [{d_boxes.shape[0]}], got {tuple(d_scores.shape)}"
                )
            if not np.all(np.isfinite(d_scores)):
                raise ValueError(f"{fn}: detections[{key!r}] scores contain NaN or inf")
        images.append((d_boxes, d_scores, d_labels, g_boxes, g_labels, g_diff))
    return images


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [N, M] in float64 (fastdet.ops.box_iou with eps 0; 0/0 -> 0 for empty boxes)."""
    from fastdet.ops import box_iou

    iou = box_iou(torch.from_numpy(a), torch.from_numpy(b), eps=0.0).numpy()
    return np.nan_to_num(iou, nan=0.0)


def _match_class(images, cls: int, iou_threshold: float, score_threshold: float | None):
    """VOC-devkit greedy matching for one class.

    Returns (scores [D] descending, outcome [D] with 1 = TP, 0 = FP, -1 = ignored (matched a
    difficult box), number of non-difficult ground-truth boxes).
    """
    scores, image_idx, det_idx = [], [], []
    gts = []
    npos = 0
    for i, (d_boxes, d_scores, d_labels, g_boxes, g_labels, g_diff) in enumerate(images):
        keep = d_labels == cls
        if score_threshold is not None:
            keep &= d_scores >= score_threshold
        sel = np.nonzero(keep)[0]
        scores.append(d_scores[sel])
        image_idx.append(np.full(sel.size, i))
        det_idx.append(sel)
        g_sel = g_labels == cls
        gts.append((g_boxes[g_sel], g_diff[g_sel]))
        npos += int(np.count_nonzero(~g_diff[g_sel]))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    image_idx = np.concatenate(image_idx).astype(np.int64) if image_idx else np.zeros(0, np.int64)
    det_idx = np.concatenate(det_idx).astype(np.int64) if det_idx else np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")  # ties keep image order, then detection order
    scores, image_idx, det_idx = scores[order], image_idx[order], det_idx[order]

    # IoU of every detection with the boxes of its own image, one matrix per image.
    ious = {}
    for i in np.unique(image_idx).tolist():
        g_boxes = gts[i][0]
        d_boxes = images[i][0]
        ious[i] = _iou(d_boxes, g_boxes) if g_boxes.shape[0] else None
    taken = [np.zeros(g[0].shape[0], dtype=bool) for g in gts]
    outcome = np.zeros(scores.size, dtype=np.int64)
    for k, (i, j) in enumerate(zip(image_idx.tolist(), det_idx.tolist())):
        if ious[i] is None:
            continue  # no box of this class in the image: false positive
        row = ious[i][j]
        best = int(np.argmax(row))
        if row[best] >= iou_threshold:
            if gts[i][1][best]:
                outcome[k] = -1
            elif not taken[i][best]:
                taken[i][best] = True
                outcome[k] = 1
            # else: duplicate detection of an already matched box, false positive
    return scores, outcome, npos


def _check_thresholds(fn: str, iou_threshold: float, score_threshold: float | None = None) -> None:
    if not (0.0 < float(iou_threshold) <= 1.0):
        raise ValueError(f"{fn}: iou_threshold must be in (0, 1], got {iou_threshold}")
    if score_threshold is not None and not np.isfinite(score_threshold):
        raise ValueError(f"{fn}: score_threshold must be finite, got {score_threshold}")


def voc_evaluate(
    detections: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict[str, Any]:
    """Pascal VOC detection AP per class and its mean.

    Args:
        detections: per image, ``{"boxes": [N, 4] xyxy, "scores": [N], "labels": [N]}`` (tensors or
            arrays); a list aligned with ``ground_truths``, or a dict keyed by image id (an image
            missing from it has no detection).
        ground_truths: per image, ``{"boxes": [M, 4] xyxy, "labels": [M], "difficult": [M] bool
            (optional, default all False)}``; same container type as ``detections``.
        num_classes: number of classes including the background 0 (torchvision's ``num_classes``);
            classes ``1..num_classes-1`` are evaluated.
        iou_threshold: minimum IoU (>=) for a true positive.
        use_07_metric: VOC2007 11-point AP instead of the VOC2010+ all-point AP (see :func:`voc_ap`).

    Returns:
        ``{"ap": {label: AP}, "mAP": mean AP, "num_positives": {label: non-difficult boxes}}``.
        A class with no non-difficult ground-truth box has AP -1.0 (undefined, as in COCO) and is
        left out of the mean; mAP is -1.0 if every class is.
    """
    fn = "voc_evaluate"
    _check_thresholds(fn, iou_threshold)
    images = _prepare(detections, ground_truths, num_classes, fn)
    ap, num_pos = {}, {}
    for cls in range(1, num_classes):
        _, outcome, npos = _match_class(images, cls, iou_threshold, None)
        num_pos[cls] = npos
        if npos == 0:
            ap[cls] = -1.0
            continue
        counted = outcome >= 0  # ignored (difficult) detections drop out of the curve
        tp = np.cumsum(outcome[counted] == 1)
        fp = np.cumsum(outcome[counted] == 0)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap[cls] = voc_ap(recall, precision, use_07_metric)
    defined = [v for v in ap.values() if v >= 0]
    return {"ap": ap, "mAP": float(np.mean(defined)) if defined else -1.0, "num_positives": num_pos}


def precision_recall_f1(
    detections: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]] | Mapping[Any, Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
) -> dict[int, dict[str, float]]:
    """Per-class precision, recall and F1 of the detections with score >= ``score_threshold``.

    Inputs and matching are those of :func:`voc_evaluate` (difficult boxes are neither positives
    nor make their matched detections false positives).

    Returns:
        ``{label: {"precision", "recall", "f1", "tp", "fp", "fn"}}`` for labels 1..num_classes-1.
        precision = tp / (tp + fp), recall = tp / (tp + fn), f1 = their harmonic mean; a ratio
        with a zero denominator is 0.0 (no detection: precision 0; no positive: recall 0).
    """
    fn = "precision_recall_f1"
    _check_thresholds(fn, iou_threshold, score_threshold)
    images = _prepare(detections, ground_truths, num_classes, fn)
    out = {}
    for cls in range(1, num_classes):
        _, outcome, npos = _match_class(images, cls, iou_threshold, float(score_threshold))
        tp = int(np.count_nonzero(outcome == 1))
        fp = int(np.count_nonzero(outcome == 0))
        fn_ = npos - tp
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / npos if npos else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[cls] = {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn_}
    return out
