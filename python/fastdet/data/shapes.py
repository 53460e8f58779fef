"""Synthetic "shapes" detection dataset: images of rectangles, ellipses and triangles with
COCO-format boxes and instance masks, generated deterministically from a seed.

Layout written by :func:`generate_shapes` (the same layout :func:`fastdet.data.build_coco_dataset`
reads, and the one real COCO uses with ``split="train2017"``)::

    root/<split>/000000.png, 000001.png, ...
    root/annotations/instances_<split>.json

Each image is drawn from its own random stream ``(seed, split, index)``, so image ``i`` is the
same whatever ``num_images`` is, and different splits never repeat each other's images.

Command line: ``python -m fastdet.data.shapes --root DIR --split train --num-images 64``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SHAPES_CLASSES = ("rectangle", "ellipse", "triangle")

# Visibility rule for occluded instances: an instance is annotated only if its visible part is at
# least this fraction of what was drawn and at least this many pixels.
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 16

# Object size as a fraction of the shorter image side: (probability, low, high). For a 128 px image
# "small" objects have areas below COCO's 32**2 px threshold, "large" ones reach 96**2 px.
_SIZE_BINS = ((0.35, 0.08, 0.22), (0.45, 0.3, 0.6), (0.2, 0.65, 0.95))
_ELLIPSE_VERTICES = 48
_PLACEMENT_TRIES = 20


@dataclass
class _Instance:
    label: int  # 1..3, index into SHAPES_CLASSES + 1
    polygon: list[float]  # flat [x0, y0, x1, y1, ...] in pixel coordinates, as drawn
    drawn: np.ndarray  # bool [H, W]: everything the shape covered when it was painted
    colour: np.ndarray  # uint8 [3]


def _coco_mask():
    try:
        from pycocotools import mask as coco_mask
    except ImportError as e:  # pragma: no cover - pycocotools is a zoo dependency
        raise ImportError(
            "fastdet.data needs pycocotools (pip install 'fastdet[zoo]' or pip install pycocotools)"
        ) from e
    return coco_mask


def _rasterize(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Polygon -> bool [H, W] mask with pycocotools' own rasteriser, so a stored polygon decodes to
    exactly the pixels that were painted."""
    coco_mask = _coco_mask()
    rle = coco_mask.frPyObjects([list(map(float, polygon))], height, width)
    return coco_mask.decode(rle)[:, :, 0].astype(bool)


def _sample_polygon(rng: np.random.Generator, label: int, height: int, width: int) -> list[float]:
    """Vertices (flat xy list) of one random shape of class ``label`` placed in an H x W image."""
    _, lo, hi = _SIZE_BINS[rng.choice(len(_SIZE_BINS), p=[b[0] for b in _SIZE_BINS])]
    size = rng.uniform(lo, hi) * min(height, width)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    cx = rng.uniform(0.1, 0.9) * width
    cy = rng.uniform(0.1, 0.9) * height
    name = SHAPES_CLASSES[label - 1]
    if name == "rectangle":
        # Mostly axis-aligned; about one in four rotated.
        angle = rng.uniform(0.0, math.pi / 2) if rng.random() < 0.25 else 0.0
        local = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    elif name == "ellipse":
        angle = rng.uniform(0.0, math.pi) if rng.random() < 0.5 else 0.0
        t = np.linspace(0.0, 2 * math.pi, _ELLIPSE_VERTICES, endpoint=False)
        local = list(zip(w / 2 * np.cos(t), h / 2 * np.sin(t)))
    else:  # triangle: three vertices around the centre, jittered so the triangles vary
        angle = rng.uniform(0.0, 2 * math.pi)
        local = []
        for k in range(3):
            a = 2 * math.pi * k / 3 + rng.uniform(-0.35, 0.35)
            r = rng.uniform(0.75, 1.0)
            local.append((w / 2 * r * math.cos(a), h / 2 * r * math.sin(a)))
    c, s = math.cos(angle), math.sin(angle)
    flat: list[float] = []
    for x, y in local:
        flat += [round(cx + c * x - s * y, 2), round(cy + s * x + c * y, 2)]
    return flat


def _sample_colour(rng: np.random.Generator, background: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """A colour clearly different from the background (L1 distance > 150) and from the shapes
    already drawn (> 80), when 32 tries find one."""
    for _ in range(32):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background.astype(np.int64)).sum() > 150 and all(
            np.abs(colour - o.astype(np.int64)).sum() > 80 for o in others
        ):
            break
    return colour.astype(np.uint8)


def _visible_ok(visible: int, drawn: int) -> bool:
    return visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * drawn


def _render(rng: np.random.Generator, height: int, width: int, min_objects: int, max_objects: int):
    """Draw one image. Returns (image uint8 [H, W, 3], list of (instance, visible bool mask)).

    Shapes are painted in order, later ones covering earlier ones. A new shape is rejected (and
    re-sampled) if it would leave any earlier instance below the visibility rule, so every painted
    shape is annotated and its mask is exactly its visible part."""
    background = rng.integers(0, 256, size=3).astype(np.uint8)
    target = int(rng.integers(min_objects, max_objects + 1))
    owner = np.full((height, width), -1, dtype=np.int64)  # index of the instance on top, -1 = none
    instances: list[_Instance] = []
    for _ in range(target):
        for _try in range(_PLACEMENT_TRIES):
            label = int(rng.integers(1, len(SHAPES_CLASSES) + 1))
            polygon = _sample_polygon(rng, label, height, width)
            drawn = _rasterize(polygon, height, width)
            if drawn.sum() < MIN_VISIBLE_PIXELS:
                continue
            new_owner = np.where(drawn, len(instances), owner)
            if all(
                _visible_ok(int((new_owner == k).sum()), int(inst.drawn.sum()))
                for k, inst in enumerate(instances)
            ):
                instances.append(_Instance(label, polygon, drawn, _sample_colour(rng, background, [i.colour for i in instances])))
                owner = new_owner
                break

    image = np.empty((height, width, 3), dtype=np.float32)
    image[:] = background
    for k, inst in enumerate(instances):
        image[owner == k] = inst.colour
    # Mild per-pixel noise plus a smooth brightness gradient, so the background is not flat.
    gradient = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None] * rng.uniform(0, 20)
    image += gradient + rng.normal(0.0, rng.uniform(2.0, 10.0), size=image.shape).astype(np.float32)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    visible = [(inst, owner == k) for k, inst in enumerate(instances)]
    # The placement rule already guarantees this; kept as the documented annotation rule.
    visible = [(inst, m) for inst, m in visible if _visible_ok(int(m.sum()), int(inst.drawn.sum()))]
    return image, visible


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


def _mask_bbox(mask: np.ndarray) -> list[float]:
    """COCO xywh of a bool mask, in pixel-edge coordinates (a one-pixel mask has w = h = 1)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _segmentation(inst: _Instance, visible: np.ndarray, height: int, width: int):
    """Polygon when the instance is fully visible and inside the image (the polygon then decodes to
    exactly the visible mask), compressed RLE (``counts`` as str) otherwise."""
    xs, ys = inst.polygon[0::2], inst.polygon[1::2]
    inside = min(xs) >= 0 and min(ys) >= 0 and max(xs) <= width and max(ys) <= height
    if inside and np.array_equal(visible, inst.drawn):
        return [list(inst.polygon)]
    rle = _coco_mask().encode(np.asfortranarray(visible.astype(np.uint8)))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"generate_shapes: {name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"generate_shapes: {name} must be >= {minimum}, got {value}")
    return int(value)


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"generate_shapes: image_size must be an int or (height, width), got {image_size!r}")
        return _check_int("image_size", image_size[0], 16), _check_int("image_size", image_size[1], 16)
    size = _check_int("image_size", image_size, 16)
    return size, size


def generate_shapes(
    root,
    split: str = "train",
    num_images: int = 64,
    image_size=128,
    min_objects: int = 1,
    max_objects: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> pathlib.Path:
    """Write a synthetic shapes detection dataset in COCO format and return the annotation path.

    Args:
        root: dataset folder (created if missing).
        split: split name; images go to ``root/<split>/NNNNNN.png`` and annotations to
            ``root/annotations/instances_<split>.json``.
        num_images: number of images (>= 0).
        image_size: image side in pixels (int) or ``(height, width)``; at least 16.
        min_objects, max_objects: number of shapes drawn per image (inclusive range). A shape that
            cannot be placed without hiding an earlier one too much is re-sampled a few times and
            then skipped, so an image can occasionally hold fewer than ``min_objects``.
        seed: random seed; the output is a deterministic function of all the arguments.
        progress: show a rich progress bar.

    Annotations: categories rectangle=1, ellipse=2, triangle=3 (``SHAPES_CLASSES``); image ids and
    annotation ids start at 1; ``bbox`` is COCO ``[x, y, w, h]`` in absolute pixels with pixel-edge
    coordinates (the box of the visible mask: pixel columns x..x+w-1); ``area`` is the visible mask's
    pixel count; ``iscrowd`` is 0. Later shapes occlude earlier ones: each mask is the visible part of
    its instance, and an instance is kept only if at least 30% and 16 px of it stay visible.
    ``segmentation`` is a polygon for fully visible instances and compressed RLE otherwise.
    """
    if not isinstance(split, str) or not split or any(c in split for c in "/\\") or split in (".", ".."):
        raise ValueError(f"generate_shapes: split must be a plain folder name, got {split!r}")
    num_images = _check_int("num_images", num_images, 0)
    height, width = _image_hw(image_size)
    min_objects = _check_int("min_objects", min_objects, 0)
    max_objects = _check_int("max_objects", max_objects, 0)
    if max_objects < min_objects:
        raise ValueError(f"generate_shapes: max_objects ({max_objects}) must be >= min_objects ({min_objects})")
    seed = _check_int("seed", seed, 0)

    from PIL import Image

    root = pathlib.Path(root)
    image_dir = root / split
    ann_path = root / "annotations" / f"instances_{split}.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_path.parent.mkdir(parents=True, exist_ok=True)

    images, annotations = [], []
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=False)
    else:
        bar = contextlib.nullcontext()
    with bar:
        task = bar.add_task(f"shapes/{split}", total=num_images) if progress else None
        for index in range(num_images):
            image, instances = _render(_image_rng(seed, split, index), height, width, min_objects, max_objects)
            file_name = f"{index:06d}.png"
            Image.fromarray(image, mode="RGB").save(image_dir / file_name, format="PNG")
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            for inst, visible in instances:
                annotations.append(
                    {
                        "id": len(annotations) + 1,  # COCOeval treats an annotation id of 0 as "no match"
                        "image_id": image_id,
                        "category_id": inst.label,
                        "bbox": _mask_bbox(visible),
                        "area": float(visible.sum()),
                        "iscrowd": 0,
                        "segmentation": _segmentation(inst, visible, height, width),
                    }
                )
            if progress:
                bar.advance(task)

    dataset = {
        "info": {
            "description": "fastdet synthetic shapes",
            "split": split,
            "seed": seed,
            "image_size": [height, width],
            "min_objects": min_objects,
            "max_objects": max_objects,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES_CLASSES)
        ],
    }
    with open(ann_path, "w", encoding="utf-8") as f:
        json.dump(dataset, f)
    return ann_path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastdet.data.shapes --root DIR [--split train] [--num-images 64] ...``"""
    p = argparse.ArgumentParser(prog="python -m fastdet.data.shapes", description=generate_shapes.__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--split", default="train")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    try:
        path = generate_shapes(
            args.root,
            split=args.split,
            num_images=args.num_images,
            image_size=args.image_size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except ValueError as e:
        p.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
