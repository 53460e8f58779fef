"""End-to-end benchmark cases of fastdet.models' SSD300 VGG-16 and SSDlite320 MobileNetV3 against
torchvision's models with the same weights: eval-mode inference at each model's fixed input size
(300 / 320 px; torchvision's builders cannot change it) on images of ``size`` px, at the builders'
default score thresholds (0.01 / 0.001), so post-processing does its full work.

The two models share the torchvision VGG / MobileNetV3 layers; the difference is the rest (feature
extractor, heads, default boxes, decoding, per-class top-k and NMS). quick: SSDlite, one 256 px
image. CPU default: SSDlite with 1 and 4 images, SSD300 with 1. CUDA: both with 8 images.
"""

from __future__ import annotations

import warnings

import torch

from fastdet.testing import calibrate_batchnorm

from ._harness import Case


def _models(name: str, size: int, device: str):
    """(fastdet model, torchvision model) with identical random weights, in eval mode."""
    from torchvision.models import detection as tvd

    from fastdet import models

    kw = dict(weights=None, weights_backbone=None, num_classes=91)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tv = getattr(tvd, name)(**kw)
    calibrate_batchnorm(tv, size, num_images=2)  # SSDlite's 1x1 maps need 2 images per batch
    ours = models.build_model(name, **kw)
    ours.load_state_dict(tv.state_dict())
    return ours.eval().to(device), tv.eval().to(device)


def _infer(model, images):
    def run():
        with torch.no_grad():
            return model(images)
    return run


def _case(device: str, name: str, size: int, n: int) -> Case:
    ours, tv = _models(name, size, device)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size * 4 // 3, generator=g).to(device) for _ in range(n)]
    short = "ssdlite320 mnv3" if "lite" in name else "ssd300 vgg16"
    return Case("ssd", f"{short} eval {n}x{size}x{size * 4 // 3}", size, device, fastdet=_infer(ours, images),
                peer=_infer(tv, images))


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    lite, vgg = "ssdlite320_mobilenet_v3_large", "ssd300_vgg16"
    if quick:
        plan = [(lite, 256, 1)]
    elif device.startswith("cuda"):
        plan = [(lite, 480, 8), (vgg, 480, 8)]
    else:
        plan = [(lite, 480, 1), (lite, 480, 4), (vgg, 480, 1)]
    if sizes is not None:
        plan = [(name, s, n) for s in sizes if 64 <= s <= 1333 for (name, _, n) in plan[:1]]
    return [_case(device, *p) for p in plan]
