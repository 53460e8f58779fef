"""Detection transforms: each is ``__call__(image, target) -> (image, target)``.

``image`` is a float32 tensor ``[3, H, W]`` (a PIL image is converted first, as :class:`ToTensor`
does); ``target`` is ``None`` or a dict as produced by :class:`fastdet.data.CocoDetection`:
``boxes`` float32 ``[N, 4]`` absolute-pixel xyxy, optional ``masks`` uint8 ``[N, H, W]`` and
``area`` float32 ``[N]``; other keys pass through unchanged. Targets are never modified in place.
Randomness comes from torch's global generator, so ``torch.manual_seed`` makes it repeatable.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Compose", "ToTensor", "RandomHorizontalFlip", "Resize", "Normalize", "to_tensor"]


def to_tensor(image) -> torch.Tensor:
    """PIL image (any mode) or uint8 / float tensor -> float32 ``[3, H, W]`` RGB in [0, 1].

    A uint8 tensor (``[3,H,W]``) is divided by 255; a floating tensor is returned as float32."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"to_tensor: image tensor must be [3, H, W], got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float().div_(255)
        if not image.is_floating_point():
            raise ValueError(f"to_tensor: image tensor must be uint8 or floating point, got {image.dtype}")
        return image.float()
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise ImportError("to_tensor: converting PIL images needs pillow") from e
    if not isinstance(image, Image.Image):
        raise ValueError(f"to_tensor: image must be a PIL image or a tensor, got {type(image).__name__}")
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


class Compose:
    """Apply transforms in order: ``Compose([ToTensor(), RandomHorizontalFlip(0.5)])``."""

    def __init__(self, transforms: Sequence[Callable]):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise ValueError(f"Compose: every transform must be callable, got {t!r}")
        self.transforms = transforms

    def __call__(self, image, target=None):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n])"


class ToTensor:
    """PIL image -> float32 tensor ``[3, H, W]`` in [0, 1] (tensors pass through as float32)."""

    def __call__(self, image, target=None):
        return to_tensor(image), target

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomHorizontalFlip:
    """Flip image, boxes and masks left-right with probability ``p``.

    A box ``[x1, y1, x2, y2]`` in an image of width W becomes ``[W - x2, y1, W - x1, y2]`` (exact
    for pixel-edge coordinates, so flipping twice is the identity)."""

    def __init__(self, p: float = 0.5):
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def flips(self) -> bool:
        """Draws whether this call flips (no random draw when p is 0 or 1)."""
        return self.p == 1.0 or (self.p > 0.0 and torch.rand(()).item() < self.p)

    def __call__(self, image, target=None):
        image = to_tensor(image)
        if not self.flips():
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        if target is not None:
            target = dict(target)
            if "boxes" in target:
                boxes = target["boxes"]
                target["boxes"] = torch.stack(
                    (width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=1
                )
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class Resize:
    """Resize keeping the aspect ratio: the shorter side becomes ``min_size`` unless the longer side
    would then exceed ``max_size``, in which case the longer side becomes ``max_size`` (the rule of
    torchvision's GeneralizedRCNNTransform).

    ``min_size`` may be a sequence of ints: one is drawn at random per call (multi-scale training).
    The image is resized bilinearly (antialiased when shrinking), masks with nearest-exact
    interpolation; boxes are scaled by the actual width/height ratios and ``area`` by their product.
    """

    def __init__(self, min_size, max_size: int | None = None):
        sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size) if isinstance(min_size, (list, tuple)) else None
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"Resize: min_size must be a positive int or a sequence of them, got {min_size!r}")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"Resize: max_size must be a positive int or None, got {max_size!r}")
        self.min_size = sizes
        self.max_size = max_size

    def output_size(self, height: int, width: int, min_size: int) -> tuple[int, int]:
        """(new_height, new_width) for an input of ``height`` x ``width``."""
        scale = min_size / min(height, width)
        if self.max_size is not None and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def __call__(self, image, target=None):
        image = to_tensor(image)
        height, width = image.shape[-2:]
        if len(self.min_size) == 1:
            min_size = self.min_size[0]
        else:
            min_size = self.min_size[int(torch.randint(len(self.min_size), ()).item())]
        new_h, new_w = self.output_size(height, width, min_size)
        if (new_h, new_w) == (height, width):
            return image, target
        shrink = new_h < height or new_w < width
        image = F.interpolate(
            image[None], size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=shrink
        )[0]
        if target is not None:
            target = dict(target)
            sx, sy = new_w / width, new_h / height
            if "boxes" in target:
                target["boxes"] = target["boxes"] * torch.tensor(
                    [sx, sy, sx, sy], dtype=target["boxes"].dtype, device=target["boxes"].device
                )
            if "area" in target:
                target["area"] = target["area"] * (sx * sy)
            if "masks" in target:
                masks = target["masks"]
                if masks.shape[0] == 0:
                    target["masks"] = masks.new_zeros((0, new_h, new_w))
                else:
                    # nearest-exact samples source pixel floor((i + 0.5) / scale): the resized mask
                    # keeps its centre where the scaled box puts it.
                    target["masks"] = F.interpolate(
                        masks[None].float(), size=(new_h, new_w), mode="nearest-exact"
                    )[0].to(masks.dtype)
        return image, target

    def __repr__(self) -> str:
        size = self.min_size[0] if len(self.min_size) == 1 else self.min_size
        return f"{type(self).__name__}(min_size={size}, max_size={self.max_size})"


class Normalize:
    """``(image - mean) / std`` per channel; targets unchanged. Defaults: ImageNet statistics."""

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)):
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Normalize: mean and std need 3 values (RGB), got {len(mean)} and {len(std)}")
        if any(s == 0.0 or not math.isfinite(s) for s in std) or not all(math.isfinite(m) for m in mean):
            raise ValueError(f"Normalize: std must be finite and non-zero and mean finite, got mean={mean}, std={std}")
        self.mean, self.std = mean, std

    def __call__(self, image, target=None):
        image = to_tensor(image)
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device)[:, None, None]
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device)[:, None, None]
        return (image - mean) / std, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
