"""Semantic segmentation data: ``ds[i] -> (image float32 [3, H, W], label int64 [H, W])`` with
class indices 0..K (0 = background) and 255 = ignore.

* :class:`CocoSemanticSegmentation` - class maps painted from the instance masks of a COCO-format
  folder (the generated shapes dataset, or COCO itself).
* :class:`SegmentationFolder` - image + PNG label map folders: ``<root>/<split>/images/*.jpg|png``
  with ``<root>/<split>/masks/<same stem>.png``, or Pascal VOC's ``JPEGImages/`` +
  ``SegmentationClass/`` + ``ImageSets/Segmentation/<split>.txt``.
* :func:`build_segmentation_dataset` picks the reader from the folder's layout;
  :func:`segmentation_collate` pads a batch to one size (image 0, label 255).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from . import transforms as T
from .coco import CocoDetection, decode_segmentation

__all__ = ["IGNORE_INDEX", "VOC_CLASSES", "CocoSemanticSegmentation", "SegmentationFolder", "build_segmentation_dataset",
           "segmentation_collate", "read_label_map"]

IGNORE_INDEX = 255
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class CocoSemanticSegmentation(CocoDetection):
    """A COCO-format folder read as class maps: each image's annotations are painted in annotation
    order (later ones over earlier ones, the order fastdet's shapes generator paints them) with
    their contiguous label (1..K, categories in sorted id order); unpainted pixels are background 0,
    crowd regions are ``ignore_index``. Attributes as CocoDetection (``classes``, ``coco``, ...).

    ``ds[i] -> (image float32 [3, H, W], label int64 [H, W])``, then ``transforms(image, label)``."""

    def __init__(self, image_dir, ann_file, transforms: Callable | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__(image_dir, ann_file, transforms, masks=False)
        self.ignore_index = ignore_index

    def load_target(self, image_id: int, height: int, width: int) -> torch.Tensor:
        label = np.zeros((height, width), dtype=np.int64)
        for ann in sorted(self.coco.imgToAnns.get(image_id, []), key=lambda a: a["id"]):
            seg = ann.get("segmentation")
            if seg is None or (isinstance(seg, list) and not seg):
                raise ValueError(f"CocoSemanticSegmentation: annotation {ann['id']} (image_id {image_id}) has no "
                                 "segmentation; class maps need instance masks")
            try:
                mask = decode_segmentation(seg, height, width).astype(bool)
            except ValueError as e:
                raise ValueError(f"CocoSemanticSegmentation: annotation {ann['id']} (image_id {image_id}): {e}") from e
            label[mask] = self.ignore_index if ann.get("iscrowd", 0) else self.cat_id_to_label[ann["category_id"]]
        return torch.from_numpy(label)


def read_label_map(path: pathlib.Path) -> torch.Tensor:
    """int64 [H, W] from a single-channel PNG: palette ("P") images give their palette indices, grey
    ("L", "I") images their values. Colour (RGB) label maps are a ValueError (convert them to indices)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"label map {str(path)!r} has mode {im.mode!r}; expected a palette or grey-scale PNG of "
                             "class indices (colour-coded label maps must be converted to indices first)")
        array = np.asarray(im, dtype=np.int64).copy()
    return torch.from_numpy(array)


def _read_classes(path: pathlib.Path) -> list[str]:
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) < 2:
        raise ValueError(f"{str(path)!r} must list at least two classes (index 0 = background), one per line")
    return names


class SegmentationFolder(torch.utils.data.Dataset):
    """Images and PNG label maps in one of two layouts (checked in this order):

        <root>/<split>/images/<stem>.jpg|png ...   <root>/<split>/masks/<stem>.png
        <root>/JPEGImages/<id>.jpg   <root>/SegmentationClass/<id>.png   <root>/ImageSets/Segmentation/<split>.txt

    Labels are class indices with 255 = ignore (VOC's object borders). Class names come from
    ``<root>/classes.txt`` (one per line, index 0 first), else VOC's 21 names for the VOC layout,
    else ``class_0 .. class_K`` with K the largest label found in the split (read once).

    ``ds[i] -> (image float32 [3, H, W], label int64 [H, W])``, then ``transforms(image, label)``.
    Errors: a missing folder or list file, an image without a label map (or the reverse in the
    first layout), an empty split, and (on reading) image and label of different sizes.
    """

    def __init__(self, root, split: str = "train", transforms: Callable | None = None):
        self.root = pathlib.Path(root)
        self.split = split
        self.transforms = transforms
        if not self.root.is_dir():
            raise FileNotFoundError(f"SegmentationFolder: root {str(self.root)!r} is not a folder")
        if (self.root / split / "images").is_dir():
            self.layout = "folders"
            self.pairs = self._folder_pairs(self.root / split / "images", self.root / split / "masks")
        elif (self.root / "JPEGImages").is_dir():
            self.layout = "voc"
            self.pairs = self._voc_pairs(split)
        else:
            raise FileNotFoundError(
                f"SegmentationFolder: {str(self.root)!r} has neither {split}/images/ (with {split}/masks/) nor "
                "JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/ (Pascal VOC)")
        if not self.pairs:
            raise ValueError(f"SegmentationFolder: split {split!r} of {str(self.root)!r} has no images")
        self.classes = self._classes()
        self.ignore_index = IGNORE_INDEX

    def _folder_pairs(self, images: pathlib.Path, masks: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
        if not masks.is_dir():
            raise FileNotFoundError(f"SegmentationFolder: {str(images)!r} has no sibling masks/ folder of label maps")
        image_files = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        mask_files = {p.stem: p for p in sorted(masks.iterdir()) if p.suffix.lower() == ".png"}
        for what, missing in (("label map in masks/", sorted(set(image_files) - set(mask_files))),
                              ("image in images/", sorted(set(mask_files) - set(image_files)))):
            if missing:
                raise ValueError(f"SegmentationFolder: {len(missing)} file(s) of {str(images.parent)!r} have no "
                                 f"{what} with the same stem: {', '.join(missing[:5])}")
        return [(image_files[s], mask_files[s]) for s in sorted(image_files)]

    def _voc_pairs(self, split: str) -> list[tuple[pathlib.Path, pathlib.Path]]:
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        labels = self.root / "SegmentationClass"
        for need in (listing, labels):
            if not need.exists():
                raise FileNotFoundError(f"SegmentationFolder: VOC layout without {str(need)!r}")
        pairs = []
        for stem in (line.strip() for line in listing.read_text().splitlines()):
            if not stem:
                continue
            image = next((self.root / "JPEGImages" / f"{stem}{s}" for s in (".jpg", ".png")
                          if (self.root / "JPEGImages" / f"{stem}{s}").is_file()), None)
            if image is None or not (labels / f"{stem}.png").is_file():
                raise ValueError(f"SegmentationFolder: {stem!r} of {str(listing)!r} has no "
                                 f"{'image in JPEGImages/' if image is None else 'label map in SegmentationClass/'}")
            pairs.append((image, labels / f"{stem}.png"))
        return pairs

    def _classes(self) -> list[str]:
        if (self.root / "classes.txt").is_file():
            return _read_classes(self.root / "classes.txt")
        if self.layout == "voc":
            return list(VOC_CLASSES)
        top = 0
        for _, mask in self.pairs:
            label = read_label_map(mask)
            label = label[label != IGNORE_INDEX]
            top = max(top, int(label.max()) if label.numel() else 0)
        return ["__background__"] + [f"class_{i}" for i in range(1, max(top, 1) + 1)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        from PIL import Image

        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = T.to_tensor(im)
        label = read_label_map(label_path)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise ValueError(f"SegmentationFolder: {str(image_path)!r} is {tuple(image.shape[-2:])} (h, w) but its "
                             f"label map {str(label_path)!r} is {tuple(label.shape)}")
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images={len(self)}, classes={len(self.classes)}, layout={self.layout!r})"


def build_segmentation_dataset(root, split: str = "train", transforms: Callable | None = None):
    """The reader for the folder's layout: COCO (``annotations/instances_<split>.json``, e.g. the
    generated shapes) -> CocoSemanticSegmentation; otherwise SegmentationFolder."""
    root = pathlib.Path(root)
    ann = root / "annotations" / f"instances_{split}.json"
    if ann.is_file():
        return CocoSemanticSegmentation(root / split, ann, transforms)
    return SegmentationFolder(root, split, transforms)


def segmentation_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image [3, h, w], label [h, w]), ...] -> (images [B, 3, H, W], labels [B, H, W])`` with
    H, W the largest sizes; padding (right / bottom) is 0 in the images and 255 in the labels, so it
    never counts in losses or metrics."""
    h = max(image.shape[-2] for image, _ in batch)
    w = max(image.shape[-1] for image, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    labels = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, (image, label) in enumerate(batch):
        images[i, :, :image.shape[-2], :image.shape[-1]] = image
        labels[i, :label.shape[-2], :label.shape[-1]] = label
    return images, labels
