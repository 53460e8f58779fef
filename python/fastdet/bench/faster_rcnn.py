"""End-to-end benchmark cases of fastdet.models' Faster / Mask R-CNN against torchvision's model with
the same weights: eval-mode inference (detections at box_score_thresh 0, so post-processing and
mask pasting do their full work) and one training step (forward, losses, backward; the backbone body frozen).

The two models share the torchvision backbone code; the difference is everything after it (RPN,
RoI heads, NMS, RoIAlign, mask paste). `size` is the image's shorter side in pixels (--sizes picks
sizes in [64, 1333]). quick: ResNet-18 FPN, one 256 px image (training 192 px), a few seconds per
call on 2 cores. CPU default: ResNet-50 FPN and Mask R-CNN ResNet-18 inference at 320 px,
ResNet-18 training at 256 px. CUDA: ResNet-50 FPN at 800 px,
2 images.
"""

from __future__ import annotations

from ._harness import Case
from ._zoo import inputs, model_case, model_pair


def _models(name: str, size: int, device: str):
    """(fastdet model, torchvision model) with identical random weights."""
    from torchvision.models import detection as tvd
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    cls = tvd.MaskRCNN if name.startswith("mask") else tvd.FasterRCNN
    return model_pair(name, size, device, lambda body, **kw: cls(_resnet_fpn_extractor(body, 5), **kw),
                      box_score_thresh=0.0)


def _cases_for(device: str, name: str, size: int, n: int, train: bool) -> Case:
    from fastdet import models

    ours, tv = _models(name, size, device)
    images, targets = inputs(n, size, device, models.is_mask_model(name))
    short = name.replace("_fpn", "").replace("fasterrcnn_", "faster ").replace("maskrcnn_", "mask ")
    label = f"{short} {'train step (frozen body)' if train else 'eval'} {n}x{size}x{size * 4 // 3}"
    return model_case("faster_rcnn", label, size, device, ours, tv, images, targets, train)


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    cuda = device.startswith("cuda")
    if quick:
        plan = [("fasterrcnn_resnet18_fpn", 256, 1, False), ("fasterrcnn_resnet18_fpn", 192, 1, True)]
    elif cuda:
        plan = [("fasterrcnn_resnet50_fpn", 800, 2, False), ("fasterrcnn_resnet50_fpn", 800, 2, True),
                ("maskrcnn_resnet50_fpn", 800, 2, False), ("maskrcnn_resnet50_fpn", 800, 2, True)]
    else:
        plan = [("fasterrcnn_resnet50_fpn", 320, 1, False), ("fasterrcnn_resnet18_fpn", 256, 1, True),
                ("maskrcnn_resnet18_fpn", 320, 1, False)]
    if sizes is not None:
        chosen = [s for s in sizes if 64 <= s <= 1333]
        plan = [(name, s, n, train) for s in chosen for (name, _, n, train) in plan[:2]]
    return [_cases_for(device, *p) for p in plan]
