"""What the engine's one training / evaluation / inference loop needs to know about a model's task
(`fastdet.models.model_task`): how its data is read and batched, how a batch gives losses, how it
is evaluated and how its metrics print.

* DetectionTask (detection, instance_segmentation): COCO-format folders, per-image lists of
  images and target dicts, the model returns its losses in train mode, COCO mAP.
* SemanticSegmentationTask: COCO folders read as class maps, image + PNG label map folders or
  Pascal VOC; batches of one size (training crops; evaluation pads with the ignore index); the
  loss is computed here from the model's logits (cross-entropy + 0.5 aux by default, the recipe of
  torchvision's segmentation reference); mIoU from one confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import distributed


class DetectionTask:
    name = "detection"

    def __init__(self, model_name: str, masks: bool):
        self.model_name = model_name
        self.masks = masks

    def check_data(self, root: Path, split: str) -> None:
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"data folder {str(root)!r} has no {ann.relative_to(root)} (expected COCO layout: "
                                    "<root>/<split>/ images, <root>/annotations/instances_<split>.json)")

    def has_split(self, root: Path, split: str) -> bool:
        return (root / "annotations" / f"instances_{split}.json").is_file()

    def dataset(self, root, split: str, *, train: bool, cfg=None):
        from fastdet.data import build_coco_dataset

        return build_coco_dataset(root, split, train=train, masks=self.masks)

    def collate(self, batch):
        from fastdet.data import collate_fn

        return collate_fn(batch)

    def model_kwargs(self, cfg, generated: bool) -> dict:
        """Builder arguments the task adds on the generated shapes data: the images' own size (square,
        ``cfg.shapes_image_size`` px). SSD resizes every image to a fixed ``size`` (SSDlite takes it;
        SSD300 keeps its 300 px, as its VGG extra layers shrink to nothing below ~260 px); YOLOX
        letterboxes to a square input_size; the others scale to min_size / max_size."""
        if not generated:
            return {}
        family, side = self.model_name.split("_")[0], cfg.shapes_image_size
        if family == "ssd300":
            return {}
        if family in ("ssdlite320", "ssd"):  # ssdlite320_mobilenet_v3_large, ssd_resnet18
            return {"size": (side, side)}
        if family == "yolox":
            return {"input_size": side}
        return {"min_size": side, "max_size": side}

    def to_device(self, images, targets, device):
        images = [img.to(device, non_blocking=True) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return images, targets

    def losses(self, model, images, targets, cfg) -> dict[str, torch.Tensor]:
        return model(images, targets)

    def evaluate(self, model, loader, dataset, ctx: distributed.Context, *, progress: bool = True,
                 backend: str = "auto") -> dict:
        from .evaluate import evaluate

        return evaluate(model, loader, ctx, coco_gt=dataset.coco, label_to_cat_id=dataset.label_to_cat_id,
                        masks=self.masks, progress=progress, backend=backend)

    def format_metrics(self, metrics: dict) -> str:
        from fastdet.evaluation import format_metrics

        return format_metrics(metrics)


class SemanticSegmentationTask:
    name = "semantic_segmentation"

    def __init__(self, model_name: str):
        self.model_name = model_name

    def check_data(self, root: Path, split: str) -> None:
        if not self.has_split(root, split):
            raise FileNotFoundError(
                f"data folder {str(root)!r} has no split {split!r}: expected annotations/instances_{split}.json "
                f"(COCO), {split}/images/ + {split}/masks/ (PNG label maps) or ImageSets/Segmentation/{split}.txt "
                "(Pascal VOC)")

    def has_split(self, root: Path, split: str) -> bool:
        return ((root / "annotations" / f"instances_{split}.json").is_file() or (root / split / "images").is_dir()
                or (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file())

    def dataset(self, root, split: str, *, train: bool, cfg=None):
        from fastdet.data import build_segmentation_dataset
        from fastdet.data.segmentation_transforms import segmentation_transforms

        if not train:
            return build_segmentation_dataset(root, split, segmentation_transforms(False))
        transforms = segmentation_transforms(True, crop_size(cfg), scale_range=cfg.scale_range)
        return build_segmentation_dataset(root, split, transforms)

    def collate(self, batch):
        from fastdet.data import segmentation_collate

        return segmentation_collate(batch)

    def model_kwargs(self, cfg, generated: bool) -> dict:
        return {}

    def to_device(self, images, targets, device):
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def losses(self, model, images, targets, cfg) -> dict[str, torch.Tensor]:
        from fastdet.models.segmentation.losses import segmentation_loss

        return segmentation_loss(model(images), targets, loss=cfg.loss, aux_weight=cfg.aux_weight)

    def evaluate(self, model, loader, dataset, ctx: distributed.Context, *, progress: bool = True,
                 backend: str = "auto") -> dict:
        from .evaluate import evaluate_segmentation

        return evaluate_segmentation(model, loader, ctx, classes=dataset.classes, progress=progress)

    def format_metrics(self, metrics: dict) -> str:
        from fastdet.evaluation import format_segmentation_metrics

        return format_segmentation_metrics(metrics)


def crop_size(cfg) -> int:
    """The training crop of a segmenter: cfg.crop_size, else the generated images' size on the
    shapes data, else 480 (torchvision's segmentation reference)."""
    if cfg.crop_size is not None:
        return cfg.crop_size
    return cfg.shapes_image_size if cfg.data is None else 480


def for_model(name: str):
    """The task object of a zoo model name (ValueError for an unknown name)."""
    from fastdet import models

    task = models.model_task(name)
    if task == "semantic_segmentation":
        return SemanticSegmentationTask(name)
    return DetectionTask(name, masks=task == "instance_segmentation")
