"""COCO-format detection dataset reader (images folder + instances JSON)."""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
from typing import Any, Callable

import numpy as np
import torch

from . import transforms as T

__all__ = ["CocoDetection", "build_coco_dataset", "collate_fn"]


def _load_coco(ann_file: pathlib.Path, data: dict):
    try:
        from pycocotools.coco import COCO
    except ImportError as e:  # pragma: no cover - pycocotools is a zoo dependency
        raise ImportError("CocoDetection needs pycocotools (pip install 'fastdet[zoo]')") from e
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


def _validate(ann_file: pathlib.Path, data: Any) -> None:
    """Structural checks so a bad file fails here with its name, not deep inside pycocotools."""
    where = f"CocoDetection: ann_file {str(ann_file)!r}"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{where} has no '{key}' list (is it a COCO instances file?)")
    image_ids = set()
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name"} <= img.keys():
            raise ValueError(f"{where}: every image needs 'id' and 'file_name', got {img!r}")
        if img["id"] in image_ids:
            raise ValueError(f"{where}: duplicate image id {img['id']}")
        image_ids.add(img["id"])
    cat_ids = set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat:
            raise ValueError(f"{where}: every category needs an 'id', got {cat!r}")
        if isinstance(cat["id"], bool) or not isinstance(cat["id"], int):
            raise ValueError(f"{where}: category ids must be ints, got {cat['id']!r}")
        if cat["id"] in cat_ids:
            raise ValueError(f"{where}: duplicate category id {cat['id']}")
        cat_ids.add(cat["id"])
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not {"id", "image_id", "category_id", "bbox"} <= ann.keys():
            raise ValueError(f"{where}: every annotation needs 'id', 'image_id', 'category_id' and 'bbox', got {ann!r}")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{where}: annotation {ann['id']} refers to unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in cat_ids:
            raise ValueError(f"{where}: annotation {ann['id']} refers to unknown category_id {ann['category_id']!r}")
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{where}: annotation {ann['id']} bbox must be [x, y, w, h], got {bbox!r}")


def decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` -> uint8 mask ``[height, width]``.

    Accepts polygons (a list of flat ``[x0, y0, x1, y1, ...]`` lists, unioned), compressed RLE
    (``{"size": [h, w], "counts": str | bytes}``) and uncompressed RLE (``counts`` a list of ints,
    as COCO uses for crowd regions). Raises ValueError for anything else or a size mismatch."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        polygons = [list(map(float, p)) for p in segmentation if isinstance(p, (list, tuple))]
        if len(polygons) != len(segmentation) or any(len(p) % 2 for p in polygons):
            raise ValueError("decode_segmentation: a polygon must be a flat list [x0, y0, x1, y1, ...]")
        # Polygons with fewer than 3 vertices have no area; pycocotools would read a 4-value list
        # as a box, so drop them here.
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rles = coco_mask.frPyObjects(polygons, height, width)
        return coco_mask.decode(coco_mask.merge(rles))
    if isinstance(segmentation, dict) and {"size", "counts"} <= segmentation.keys():
        size = list(segmentation["size"])
        if size != [height, width]:
            raise ValueError(f"decode_segmentation: RLE size {size} does not match the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if sum(counts) != height * width or any(c < 0 for c in counts):
                raise ValueError(
                    f"decode_segmentation: uncompressed RLE counts sum to {sum(counts)}, expected {height * width}"
                )
            rle = coco_mask.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:
            raise ValueError(f"decode_segmentation: RLE counts must be str, bytes or a list, got {type(counts).__name__}")
        return coco_mask.decode(rle)
    raise ValueError(f"decode_segmentation: unsupported segmentation of type {type(segmentation).__name__}")


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset: ``ds[i] -> (image, target)``.

    Args:
        image_dir: folder holding the images named by ``file_name`` in the JSON.
        ann_file: COCO instances JSON (``images``, ``annotations``, ``categories``).
        transforms: optional ``callable(image, target) -> (image, target)`` (see
            :mod:`fastdet.data.transforms`), applied after the image is converted to a tensor.
        masks: decode instance masks (polygon, compressed or uncompressed RLE) into ``target["masks"]``.

    ``image`` is float32 ``[3, H, W]`` RGB in [0, 1] (before transforms). ``target``:
    ``boxes`` float32 ``[N, 4]`` absolute-pixel xyxy (COCO ``[x, y, w, h]`` converted and clipped to
    the image), ``labels`` int64 ``[N]`` contiguous 1..K (categories in sorted id order; 0 is
    background), ``masks`` uint8 ``[N, H, W]`` (only with ``masks=True``), ``image_id`` int (the COCO
    id), ``area`` float32 ``[N]``, ``iscrowd`` int64 ``[N]``. Crowd annotations and boxes with no
    area after clipping are left out of the target (they stay in ``.coco`` for evaluation).

    Attributes: ``coco`` (pycocotools COCO), ``classes`` (names, ``classes[0] == "__background__"``),
    ``label_to_cat_id``, ``cat_id_to_label``, ``ids`` (image ids, sorted; images without
    annotations included).
    """

    def __init__(self, image_dir, ann_file, transforms: Callable | None = None, masks: bool = False):
        self.image_dir = pathlib.Path(image_dir)
        self.ann_file = pathlib.Path(ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"CocoDetection: image_dir {str(self.image_dir)!r} is not a folder")
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"CocoDetection: ann_file {str(self.ann_file)!r} does not exist")
        if transforms is not None and not callable(transforms):
            raise ValueError(f"CocoDetection: transforms must be callable or None, got {transforms!r}")
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"CocoDetection: ann_file {str(self.ann_file)!r} is not valid JSON: {e}") from e
        _validate(self.ann_file, data)
        self.coco = _load_coco(self.ann_file, data)
        self.transforms = transforms
        self.masks = bool(masks)
        self.ids = sorted(self.coco.imgs.keys())
        cat_ids = sorted(self.coco.cats.keys())
        self.cat_id_to_label = {cat_id: i + 1 for i, cat_id in enumerate(cat_ids)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.classes = ["__background__"] + [str(self.coco.cats[c].get("name", c)) for c in cat_ids]

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int):
        """The PIL image (RGB) of a COCO image id."""
        from PIL import Image

        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"CocoDetection: image {str(path)!r} (image_id {image_id}) does not exist")
        with Image.open(path) as img:
            return img.convert("RGB")

    def load_target(self, image_id: int, height: int, width: int) -> dict:
        """The target dict of ``image_id`` for an image of ``height`` x ``width`` (before transforms)."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes, labels, areas, masks = [], [], [], []
        for ann in anns:
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
            x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
            if not (x2 > x1 and y2 > y1):  # also drops NaN boxes
                continue
            boxes.append((x1, y1, x2, y2))
            labels.append(self.cat_id_to_label[ann["category_id"]])
            areas.append(float(ann["area"]) if "area" in ann else (x2 - x1) * (y2 - y1))
            if self.masks:
                seg = ann.get("segmentation")
                if seg is None or (isinstance(seg, list) and not seg):
                    raise ValueError(
                        f"CocoDetection: masks=True but annotation {ann['id']} (image_id {image_id}) "
                        "has no segmentation"
                    )
                try:
                    masks.append(decode_segmentation(seg, height, width))
                except ValueError as e:
                    raise ValueError(f"CocoDetection: annotation {ann['id']} (image_id {image_id}): {e}") from e
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": int(image_id),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
        }
        if self.masks:
            target["masks"] = (
                torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, height, width), dtype=torch.uint8)
            )
        return target

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        pil = self.load_image(image_id)
        width, height = pil.size
        info = self.coco.imgs[image_id]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise ValueError(
                f"CocoDetection: image_id {image_id} is {height}x{width} on disk but "
                f"{info.get('height')}x{info.get('width')} in {str(self.ann_file)!r}"
            )
        image = T.to_tensor(pil)
        target = self.load_target(image_id, height, width)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, classes={len(self.classes) - 1}, "
            f"image_dir={str(self.image_dir)!r}, masks={self.masks})"
        )


def build_coco_dataset(root, split: str = "train", train: bool = False, masks: bool = False) -> CocoDetection:
    """The dataset at ``root/<split>/`` + ``root/annotations/instances_<split>.json`` (the layout of
    :func:`fastdet.data.generate_shapes`, and of COCO itself with ``split="val2017"``).

    ``train=True`` adds ``RandomHorizontalFlip(0.5)``; resizing and normalisation are left to the
    model (torchvision-style detectors do both)."""
    root = pathlib.Path(root)
    transforms = T.Compose([T.RandomHorizontalFlip(0.5)]) if train else None
    return CocoDetection(root / split, root / "annotations" / f"instances_{split}.json", transforms, masks=masks)


def collate_fn(batch):
    """``[(image, target), ...] -> ((image, ...), (target, ...))`` for detection DataLoaders
    (images keep their own sizes)."""
    return tuple(zip(*batch))
