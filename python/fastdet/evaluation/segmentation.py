"""Semantic segmentation metrics from one confusion matrix accumulated over a dataset.

    evaluator = SegmentationEvaluator(num_classes=4)
    for logits, labels in ...:
        evaluator.update(logits.argmax(1), labels)     # ignore_index (255) pixels are skipped
    evaluator.synchronize()                            # sums the matrix over ranks under torch.distributed
    metrics = evaluator.summarize()                    # {"mIoU", "pixel_acc", "mean_acc", "IoU": {...}, ...}

IoU_c = TP / (TP + FP + FN), per-class accuracy_c = TP / (TP + FN), pixel accuracy = sum TP / all
counted pixels. Means are over the classes present in the labels or the predictions of the whole
dataset (a class absent from both has no defined IoU and is left out; a class only predicted counts
with IoU 0 and, as it has no labelled pixels, stays out of the mean accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

SEGMENTATION_METRICS = (
    ("mIoU", "mean intersection over union over the classes present in labels or predictions"),
    ("pixel_acc", "pixels predicted right / pixels counted (ignore index left out)"),
    ("mean_acc", "mean over labelled classes of the fraction of their pixels predicted right"),
)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """int64 [num_classes, num_classes], rows = label, columns = prediction (one bincount).

    pred and target: integer tensors of one shape; pixels whose label is ignore_index are skipped,
    any other label or prediction outside [0, num_classes) is a ValueError."""
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {list(pred.shape)} and target {list(target.shape)} differ in shape")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("confusion_matrix: pred and target must be integer class maps (argmax the logits first)")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, t in (("target", target), ("pred", pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            bad = t[(t < 0) | (t >= num_classes)][0]
            raise ValueError(f"confusion_matrix: {name} holds class {int(bad)} outside [0, {num_classes - 1}]")
    return torch.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(matrix: Tensor, classes: Sequence[str] | None = None) -> dict:
    """mIoU, pixel_acc, mean_acc and per-class IoU / accuracy (None for absent classes) of a
    confusion matrix (rows = label, columns = prediction)."""
    m = matrix.double()
    tp = m.diagonal()
    labelled, predicted = m.sum(1), m.sum(0)
    union = labelled + predicted - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    acc = torch.where(labelled > 0, tp / labelled.clamp(min=1), torch.zeros_like(tp))
    total = m.sum()
    names = list(classes) if classes is not None else [str(i) for i in range(m.shape[0])]
    if len(names) != m.shape[0]:
        raise ValueError(f"metrics_from_confusion: {len(names)} class names for {m.shape[0]} classes")

    def mean(values: Tensor, mask: Tensor) -> float:
        return float(values[mask].mean()) if mask.any() else 0.0

    return {
        "mIoU": mean(iou, present),
        "pixel_acc": float(tp.sum() / total) if total > 0 else 0.0,
        "mean_acc": mean(acc, labelled > 0),
        "IoU": {n: (float(v) if p else None) for n, v, p in zip(names, iou, present)},
        "acc": {n: (float(v) if p else None) for n, v, p in zip(names, acc, labelled > 0)},
        "pixels": int(total),
    }


class SegmentationEvaluator:
    """Accumulates one confusion matrix over a dataset; see the module docstring.

    Args:
        num_classes: classes including the background (labels 0..num_classes-1).
        classes: optional names (default "0", "1", ...), used as keys of the per-class results.
        ignore_index: label of pixels left out (default 255; None counts every pixel).
    """

    def __init__(self, num_classes: int, classes: Sequence[str] | None = None, ignore_index: int | None = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SegmentationEvaluator: num_classes must be an int >= 1, got {num_classes!r}")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(f"SegmentationEvaluator: {len(classes)} class names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: integer class maps of one shape ([H, W] or [B, H, W]), on any device."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def synchronize(self) -> None:
        """Sum the matrices of all ranks (a no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            m = self.matrix.to(device)
            dist.all_reduce(m)
            self.matrix = m.cpu()

    def summarize(self) -> dict:
        """The metrics of the accumulated matrix (see metrics_from_confusion)."""
        return metrics_from_confusion(self.matrix, self.classes)


def format_segmentation_metrics(metrics: dict, digits: int = 3) -> str:
    """A Markdown table: the summary metrics, then IoU and accuracy per class (n/a: class absent)."""
    for key in ("mIoU", "pixel_acc", "mean_acc", "IoU", "acc"):
        if key not in metrics:
            raise ValueError(f"format_segmentation_metrics: metrics has no {key!r} (pass SegmentationEvaluator.summarize())")

    def cell(v) -> str:
        return "n/a" if v is None else f"{float(v):.{digits}f}"

    lines = ["| Metric | value | Definition |", "|---|---:|---|"]
    lines += [f"| {k} | {cell(metrics[k])} | {d} |" for k, d in SEGMENTATION_METRICS]
    lines += ["", "| Class | IoU | accuracy |", "|---|---:|---:|"]
    lines += [f"| {name} | {cell(iou)} | {cell(metrics['acc'][name])} |" for name, iou in metrics["IoU"].items()]
    return "\n".join(lines)
