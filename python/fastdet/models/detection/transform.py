"""Input normalisation, resizing and batching for the R-CNN models, and mapping the detections back
to the original image sizes (the contract of torchvision's GeneralizedRCNNTransform)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import ImageList


def resize_boxes(boxes: Tensor, old_size, new_size) -> Tensor:
    """Scale xyxy boxes Tensor[N, 4] from an image of size old_size (h, w) to new_size (h, w)."""
    rh = torch.tensor(float(new_size[0]), device=boxes.device) / torch.tensor(float(old_size[0]), device=boxes.device)
    rw = torch.tensor(float(new_size[1]), device=boxes.device) / torch.tensor(float(old_size[1]), device=boxes.device)
    scale = torch.stack((rw, rh, rw, rh)).to(boxes.dtype)
    return boxes * scale


class RCNNTransform(nn.Module):
    """Normalise, resize and pad a list of images into one batch.

    Args:
        min_size: int or sequence of ints: the shorter side is scaled to this size (in training a
            value is drawn at random from the sequence, with torch's RNG; in eval the last one).
        max_size: the longer side is never scaled beyond this size.
        image_mean, image_std: per-channel normalisation of images in [0, 1].
        size_divisible: the padded batch's height and width are multiples of this (32 for FPN).
        fixed_size: (w, h) to resize every image to instead (ignores min_size/max_size).
        _skip_resize: keyword only, as torchvision's: no resizing in training mode.

    forward(images: list[Tensor[3, H, W]], targets=None) -> (ImageList, targets with boxes and masks
    resized). Resizing is bilinear (align_corners=False) with torchvision's scale-factor arithmetic,
    so the same weights see the same pixels; masks use nearest.
    """

    def __init__(self, min_size, max_size: int, image_mean, image_std, size_divisible: int = 32,
                 fixed_size: tuple[int, int] | None = None, **kwargs):
        super().__init__()
        self._skip_resize = bool(kwargs.pop("_skip_resize", False))  # torchvision's: no resize in training
        if kwargs:
            raise TypeError(f"RCNNTransform: unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(min_size, (list, tuple)):
            min_size = (min_size,)
        if len(min_size) == 0 or any(int(s) <= 0 for s in min_size) or int(max_size) <= 0:
            raise ValueError(f"RCNNTransform: min_size and max_size must be positive, got {min_size}, {max_size}")
        self.min_size = tuple(int(s) for s in min_size)
        self.max_size = int(max_size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.size_divisible = int(size_divisible)
        self.fixed_size = fixed_size

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"RCNNTransform: images must be floating point in [0, 1], got {image.dtype}")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def _target_size(self) -> int:
        if self.training:
            # the same RNG draw as torchvision, so that seeded runs agree
            return self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        return self.min_size[-1]

    def resize(self, image: Tensor, target: dict | None):
        h, w = image.shape[-2:]
        if self.training and self._skip_resize:
            return image, target
        if self.fixed_size is not None:
            kw = dict(size=[self.fixed_size[1], self.fixed_size[0]], scale_factor=None, recompute_scale_factor=None)
        else:
            size = self._target_size()
            scale = min(size / min(h, w), self.max_size / max(h, w))
            kw = dict(size=None, scale_factor=scale, recompute_scale_factor=True)
        image = F.interpolate(image[None], mode="bilinear", align_corners=False, **kw)[0]
        if target is None:
            return image, None
        target = dict(target)
        if "masks" in target:
            masks = target["masks"]
            target["masks"] = F.interpolate(masks[:, None].float(), **kw)[:, 0].byte()
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-pad to a common size, rounded up to a multiple of size_divisible."""
        c = max(int(im.shape[0]) for im in images)
        stride = self.size_divisible
        h = int(math.ceil(max(int(im.shape[1]) for im in images) / stride) * stride)
        w = int(math.ceil(max(int(im.shape[2]) for im in images) / stride) * stride)
        out = images[0].new_zeros((len(images), c, h, w))
        for i, im in enumerate(images):
            out[i, : im.shape[0], : im.shape[1], : im.shape[2]].copy_(im)
        return out

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        out_images, out_targets = [], [] if targets is not None else None
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(f"RCNNTransform: images[{i}] must have shape [C, H, W], got {list(image.shape)}")
            image, target = self.resize(self.normalize(image), targets[i] if targets is not None else None)
            out_images.append(image)
            if out_targets is not None:
                out_targets.append(target)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in out_images]
        return ImageList(self.batch(out_images), sizes), out_targets

    def postprocess(self, result: list[dict], image_sizes, original_sizes) -> list[dict]:
        """Detections from the resized frame back to the original images (boxes; masks pasted)."""
        from .roi_heads import paste_masks_in_image

        if self.training:
            return result
        for pred, size, orig in zip(result, image_sizes, original_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], size, orig)
            if "masks" in pred:
                pred["masks"] = paste_masks_in_image(pred["masks"], pred["boxes"], orig)
        return result

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(mean={self.image_mean}, std={self.image_std}, min_size={self.min_size}, "
                f"max_size={self.max_size}, size_divisible={self.size_divisible})")
