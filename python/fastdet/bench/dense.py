"""End-to-end benchmark cases of fastdet.models' RetinaNet and FCOS against torchvision's model with
the same weights: eval-mode inference at score_thresh 0 (so every level's top 1000 candidates go
through decoding and NMS, as with a trained model's many low scores) and one training step
(forward, matching, losses, backward; the backbone body frozen).

The models share the torchvision backbone code; the difference is the heads, anchor matching,
losses (focal, IoU) and post-processing. `size` is the image's shorter side in pixels (--sizes
picks sizes in [64, 1333]). quick: ResNet-18 FPN, one 256 px image. CPU default: ResNet-50 FPN
inference at 320 px, ResNet-18 training at 256 px. CUDA: ResNet-50 FPN at 800 px, 2 images.
"""

from __future__ import annotations

from ._harness import Case
from ._zoo import inputs, model_case, model_pair


def _models(name: str, size: int, device: str):
    """(fastdet model, torchvision model) with identical random weights."""
    from torchvision.models import detection as tvd
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    cls = tvd.RetinaNet if name.startswith("retinanet") else tvd.FCOS

    def tv_resnet18(body, num_classes, **kw):
        backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        return cls(backbone, num_classes, **kw)

    return model_pair(name, size, device, tv_resnet18, score_thresh=0.0)


def _case(device: str, name: str, size: int, n: int, train: bool) -> Case:
    ours, tv = _models(name, size, device)
    images, targets = inputs(n, size, device, mask=False)
    short = name.replace("_fpn", "").replace("_", " ", 1)
    label = f"{short} {'train step (frozen body)' if train else 'eval'} {n}x{size}x{size * 4 // 3}"
    return model_case("dense", label, size, device, ours, tv, images, targets, train)


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    if quick:
        plan = [("retinanet_resnet18_fpn", 256, 1, False), ("fcos_resnet18_fpn", 256, 1, False)]
    elif device.startswith("cuda"):
        plan = [("retinanet_resnet50_fpn", 800, 2, False), ("fcos_resnet50_fpn", 800, 2, False),
                ("retinanet_resnet50_fpn", 800, 2, True), ("fcos_resnet50_fpn", 800, 2, True)]
    else:
        plan = [("retinanet_resnet50_fpn", 320, 1, False), ("fcos_resnet50_fpn", 320, 1, False),
                ("retinanet_resnet18_fpn", 256, 1, True), ("fcos_resnet18_fpn", 256, 1, True)]
    if sizes is not None:
        chosen = [s for s in sizes if 64 <= s <= 1333]
        plan = [(name, s, n, train) for s in chosen for (name, _, n, train) in plan[:2]]
    return [_case(device, *p) for p in plan]
