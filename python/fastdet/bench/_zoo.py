"""Helpers shared by the end-to-end model benchmarks (faster_rcnn, dense): model pairs with the same
random weights (BatchNorm calibrated by fastdet.testing.calibrate_batchnorm), inputs with targets,
and the eval / training-step closures."""

from __future__ import annotations

import warnings

import torch

from fastdet.testing import calibrate_batchnorm

from ._harness import Case


def inputs(n: int, size: int, device: str, mask: bool):
    """n random images of size x 4/3 size with 6 boxes each (classes 1..90, masks filling the boxes)."""
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


def infer(model, images):
    model.eval()

    def run():
        with torch.no_grad():
            return model(images)
    return run


def train_step(model, images, targets):
    # The backbone body (torchvision's ResNet, the same code in both models) is frozen, so that
    # the step times what differs - FPN, heads, matching, RoIAlign backward, losses - and stays short.
    model.backbone.body.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        model.train()
        torch.manual_seed(0)  # both models sample the same anchors and proposals (R-CNN)
        for p in params:
            p.grad = None
        loss = sum(model(images, targets).values())
        loss.backward()
        return loss
    return run


def model_pair(name: str, size: int, device: str, tv_resnet18, **kwargs):
    """(fastdet model, torchvision model) with identical random weights, calibrated BatchNorm, 91
    classes, inputs resized to ``size``; torchvision has no ResNet-18 detectors, so
    ``tv_resnet18(body, **kw)`` composes its model around a ResNet-18 body for those names."""
    import torchvision
    from torchvision.models import detection as tvd

    from fastdet import models

    kw = dict(weights=None, weights_backbone=None, num_classes=91, min_size=size, max_size=size * 5 // 3, **kwargs)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if "resnet18" in name:
            tv = tv_resnet18(torchvision.models.resnet18(weights=None), **{k: v for k, v in kw.items() if "weights" not in k})
        else:
            tv = getattr(tvd, name)(**kw)
    calibrate_batchnorm(tv, size)
    ours = models.build_model(name, **kw)
    ours.load_state_dict(tv.state_dict())
    return ours.to(device), tv.to(device)


def model_case(op: str, label: str, size: int, device: str, ours, tv, images, targets, train: bool) -> Case:
    """The Case timing ours against tv: a training step (train) or eval-mode inference."""
    if train:
        return Case(op, label, size, device, fastdet=train_step(ours, images, targets), peer=train_step(tv, images, targets))
    return Case(op, label, size, device, fastdet=infer(ours, images), peer=infer(tv, images))
