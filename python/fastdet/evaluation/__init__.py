"""Detection metrics: COCO mAP through pycocotools / faster-coco-eval, Pascal VOC AP, and
per-class precision / recall / F1.

* :class:`CocoEvaluator` — accumulate torchvision-style predictions, ``summarize()`` the 12 COCO
  numbers per iou type ("bbox", "segm"); :func:`format_metrics` renders them as Markdown.
* :func:`voc_ap`, :func:`voc_evaluate` — VOC07 11-point and VOC2010+ all-point AP with the devkit's
  difficult-object handling.
* :func:`precision_recall_f1` — per-class counts and ratios at a score threshold.
* :class:`SegmentationEvaluator` — semantic segmentation mIoU, per-class IoU, pixel and mean
  accuracy from one confusion matrix; :func:`format_segmentation_metrics` renders them.
"""

from .coco import COCO_METRICS, CocoEvaluator, format_metrics
from .segmentation import (SEGMENTATION_METRICS, SegmentationEvaluator, confusion_matrix,
                           format_segmentation_metrics, metrics_from_confusion)
from .voc import precision_recall_f1, voc_ap, voc_evaluate

__all__ = ["COCO_METRICS", "CocoEvaluator", "format_metrics", "precision_recall_f1", "voc_ap", "voc_evaluate",
           "SEGMENTATION_METRICS", "SegmentationEvaluator", "confusion_matrix", "format_segmentation_metrics",
           "metrics_from_confusion"]
