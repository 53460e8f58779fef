"""Evaluation over a dataset (`fastdet eval`, and after each training epoch): COCO metrics of a
detector, mIoU / pixel accuracy of a semantic segmenter."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from . import distributed
from .progress import bar


def drop_background(det: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detector's output for one image without label-0 detections. fastdet's datasets reserve
    label 0 for the background; torchvision-style dense heads (RetinaNet, FCOS, SSD) still have a
    class-0 channel, which an untrained or low-threshold model can report."""
    keep = det["labels"] != 0
    return {k: v[keep] for k, v in det.items()}


@torch.no_grad()
def evaluate(model, loader: DataLoader, ctx: distributed.Context, *, coco_gt, label_to_cat_id: dict[int, int],
             masks: bool, progress: bool = True, backend: str = "auto") -> dict[str, dict[str, float]]:
    """Runs `model` in eval mode over `loader` and returns COCO metrics per IoU type
    ({"bbox": {"AP": ..., "AP50": ...}, "segm": {...}}), gathered over all ranks under torchrun."""
    from fastdet.evaluation import CocoEvaluator

    was_training = model.training
    model.eval()
    evaluator = CocoEvaluator(coco_gt, iou_types=("bbox", "segm") if masks else ("bbox",),
                              label_to_cat_id=label_to_cat_id, backend=backend)
    with bar(progress and ctx.is_main) as pb:
        task = pb.add_task("evaluating", total=len(loader), info="")
        for images, targets in loader:
            outputs = model([img.to(ctx.device) for img in images])
            evaluator.update({int(t["image_id"]): {k: v.cpu() for k, v in drop_background(out).items()}
                              for t, out in zip(targets, outputs)})
            pb.advance(task)
    evaluator.synchronize()
    model.train(was_training)
    return evaluator.summarize()


@torch.no_grad()
def evaluate_segmentation(model, loader: DataLoader, ctx: distributed.Context, *, classes: list[str],
                          progress: bool = True) -> dict:
    """Runs a segmenter in eval mode over `loader` (batches of (images [B, 3, H, W], labels
    [B, H, W]) padded with the ignore index) and returns SegmentationEvaluator.summarize() of the
    confusion matrix summed over all ranks under torchrun."""
    from fastdet.evaluation import SegmentationEvaluator

    was_training = model.training
    model.eval()
    evaluator = SegmentationEvaluator(len(classes), classes=classes)
    with bar(progress and ctx.is_main) as pb:
        task = pb.add_task("evaluating", total=len(loader), info="")
        for images, labels in loader:
            logits = model(images.to(ctx.device))["out"]
            evaluator.update(logits.argmax(1), labels.to(ctx.device))
            pb.advance(task)
    evaluator.synchronize()
    model.train(was_training)
    return evaluator.summarize()
