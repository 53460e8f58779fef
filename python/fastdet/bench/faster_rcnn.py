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

import warnings

import torch

from fastdet.testing import calibrate_batchnorm

from ._harness import Case


def _models(name: str, size: int, device: str):
    """(fastdet model, torchvision model) with identical random weights."""
    from torchvision.models import detection as tvd
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    from fastdet import models

    kw = dict(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size * 5 // 3,
              box_score_thresh=0.0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "resnet18" in name:
            import torchvision

            cls = tvd.MaskRCNN if name.startswith("mask") else tvd.FasterRCNN
            body = torchvision.models.resnet18(weights=None)
            tv = cls(_resnet_fpn_extractor(body, 5), **{k: v for k, v in kw.items() if "weights" not in k})
        else:
            tv = getattr(tvd, name)(**kw)
    calibrate_batchnorm(tv, size)
    ours = models.build_model(name, **kw)
    ours.load_state_dict(tv.state_dict())
    return ours.to(device), tv.to(device)


def _inputs(n: int, size: int, device: str, mask: bool):
    g = torch.Generator().manual_seed(0)
    h, w = size, size * 4 // 3
    images = [torch.rand(3, h, w, generator=g).to(device) for _ in range(n)]
    targets = []
    for _ in range(n):
        xy = torch.rand(6, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(6, 2, generator=g) * torch.tensor([w * 0.35, h * 0.35])
        boxes = torch.cat([xy, xy + wh], 1)
        t = {"boxes": boxes.to(device), "labels": torch.randint(1, 91, (6,), generator=g).to(device)}
        if mask:
            m = torch.zeros(6, h, w, dtype=torch.uint8)
            for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                m[j, y0:y1, x0:x1] = 1
            t["masks"] = m.to(device)
        targets.append(t)
    return images, targets


def _infer(model, images):
    model.eval()

    def run():
        with torch.no_grad():
            return model(images)
    return run


def _train_step(model, images, targets):
    # The backbone body (torchvision's ResNet, the same code in both models) is frozen, so that
    # the step times what differs - FPN, RPN, RoI heads, RoIAlign backward, losses - and stays short.
    model.backbone.body.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        model.train()
        torch.manual_seed(0)  # both models sample the same anchors and proposals
        for p in params:
            p.grad = None
        loss = sum(model(images, targets).values())
        loss.backward()
        return loss
    return run


def _cases_for(device: str, name: str, size: int, n: int, train: bool) -> Case:
    from fastdet import models

    ours, tv = _models(name, size, device)
    images, targets = _inputs(n, size, device, models.is_mask_model(name))
    short = name.replace("_fpn", "").replace("fasterrcnn_", "faster ").replace("maskrcnn_", "mask ")
    label = f"{short} {'train step (frozen body)' if train else 'eval'} {n}x{size}x{size * 4 // 3}"
    if train:
        return Case("faster_rcnn", label, size, device, fastdet=_train_step(ours, images, targets),
                    peer=_train_step(tv, images, targets))
    return Case("faster_rcnn", label, size, device, fastdet=_infer(ours, images), peer=_infer(tv, images))


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
