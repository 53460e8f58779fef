"""Detection metrics: COCO mAP through pycocotools / faster-coco-eval, Pascal VOC AP, and
per-class precision / recall / F1.

* :class:`CocoEvaluator` — accumulate torchvision-style predictions, ``summarize()`` the 12 COCO
  numbers per iou type ("bbox", "segm"); :func:`format_metrics` renders them as Markdown.
* :func:`voc_ap`, :func:`voc_evaluate` — VOC07 11-point and VOC2010+ all-point AP with the devkit's
  difficult-object handling.
* :func:`precision_recall_f1` — per-class counts and ratios at a score threshold.
"""

from .coco import COCO_METRICS, CocoEvaluator, format_metrics
from .voc import precision_recall_f1, voc_ap, voc_evaluate

__all__ = ["COCO_METRICS", "CocoEvaluator", "format_metrics", "precision_recall_f1", "voc_ap", "voc_evaluate"]
