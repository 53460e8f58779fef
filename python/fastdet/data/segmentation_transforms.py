"""Semantic segmentation transforms: ``__call__(image, label) -> (image, label)`` with ``image``
float32 ``[3, H, W]`` and ``label`` an int64 class map ``[H, W]`` (or None), transformed together:
bilinear for the image, nearest for the labels, ``ignore_index`` (255) where a crop pads the
labels. They compose with :class:`fastdet.data.transforms.Compose` and ``Normalize`` (which leaves
the label alone). Randomness comes from torch's global generator.

The training recipe of torchvision's segmentation reference: random rescale of the shorter side
(0.5x to 2x a base size), random crop, horizontal flip, ImageNet normalisation
(:func:`segmentation_transforms`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import transforms as T
from .transforms import Compose, Normalize, to_tensor

__all__ = ["RandomResize", "RandomCrop", "RandomHorizontalFlip", "segmentation_transforms"]

IGNORE_INDEX = 255


def _positive_int(cls: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{cls}: {name} must be a positive int, got {value!r}")
    return value


def resize_pair(image: torch.Tensor, label, size: tuple[int, int]):
    """image bilinearly (antialiased when shrinking), label by nearest-exact sampling, to (h, w)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(label.dtype)
    return image, label


class RandomResize:
    """Resize so the shorter side is a random int in [min_size, max_size] (aspect ratio kept)."""

    def __init__(self, min_size: int, max_size: int | None = None):
        self.min_size = _positive_int("RandomResize", "min_size", min_size)
        self.max_size = _positive_int("RandomResize", "max_size", max_size if max_size is not None else min_size)
        if self.max_size < self.min_size:
            raise ValueError(f"RandomResize: max_size ({max_size}) must be >= min_size ({min_size})")

    def __call__(self, image, label=None):
        image = to_tensor(image)
        side = int(torch.randint(self.min_size, self.max_size + 1, ()).item())
        h, w = image.shape[-2:]
        scale = side / min(h, w)
        return resize_pair(image, label, (max(1, round(h * scale)), max(1, round(w * scale))))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_size={self.min_size}, max_size={self.max_size})"


class RandomCrop:
    """A random ``size`` x ``size`` crop (int or (h, w)); smaller inputs are first padded on the
    right / bottom with 0 (image) and ``ignore_index`` (label), so every output has that size."""

    def __init__(self, size, ignore_index: int = IGNORE_INDEX):
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2:
            raise ValueError(f"RandomCrop: size must be an int or (height, width), got {size!r}")
        self.size = tuple(_positive_int("RandomCrop", "size", s) for s in hw)
        self.ignore_index = ignore_index

    def __call__(self, image, label=None):
        image = to_tensor(image)
        (th, tw), (h, w) = self.size, image.shape[-2:]
        pad_h, pad_w = max(th - h, 0), max(tw - w, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            if label is not None:
                label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
            h, w = h + pad_h, w + pad_w
        y = int(torch.randint(0, h - th + 1, ()).item())
        x = int(torch.randint(0, w - tw + 1, ()).item())
        image = image[:, y:y + th, x:x + tw]
        return image, (label[y:y + th, x:x + tw] if label is not None else None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip(T.RandomHorizontalFlip):
    """Flip image and label left-right together with probability ``p``."""

    def __call__(self, image, label=None):
        image = to_tensor(image)
        if not self.flips():
            return image, label
        return image.flip(-1), (label.flip(-1) if label is not None else None)


def segmentation_transforms(train: bool, crop_size: int | None = None, base_size: int | None = None,
                            scale_range: tuple[float, float] = (0.5, 2.0)) -> Compose:
    """Training: RandomResize(scale_range * base_size) (left out for (1, 1)), RandomCrop(crop_size),
    RandomHorizontalFlip(0.5), Normalize (ImageNet); evaluation: Normalize only (full-size images).
    Training needs crop_size (every image of a batch then has that size); base_size defaults to it."""
    if not train:
        return Compose([Normalize()])
    if crop_size is None:
        raise ValueError("segmentation_transforms: train=True needs crop_size (images in a batch must share a size)")
    low, high = (float(s) for s in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"segmentation_transforms: scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    base = base_size if base_size is not None else crop_size
    resize = [RandomResize(max(1, round(base * low)), max(1, round(base * high)))] if (low, high) != (1.0, 1.0) else []
    return Compose([*resize, RandomCrop(crop_size), RandomHorizontalFlip(0.5), Normalize()])
