"""YOLOX training step, fastdet.models against the official ``yolox`` package (0.3.0) with the same
weights, images and targets: forward, losses and backward of the whole model ("train step"), and
of the head alone on fixed backbone features ("head + loss"), where the label assignment is most of
the work: the official loops over images (``get_assignments`` per image, with host synchronisations
for ``num_gt`` and the dynamic k), fastdet runs one batched ``simota_assign`` and dense masked losses.

`size` is the square input in pixels (--sizes picks multiples of 32 in [64, 1280]). quick:
YOLOX-nano, 2 images of 256 px, 10 objects each. CPU default: YOLOX-nano, 8 images of 416 px,
20 objects. CUDA: YOLOX-s, 16 images of 640 px, 30 objects. Skipped without the yolox package.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from ._harness import Case

NUM_CLASSES = 80
# name: (depth, width, depthwise), the official exps
_CONFIGS = {"yolox_nano": (0.33, 0.25, True), "yolox_s": (0.33, 0.50, False)}


def _models(name: str, device: str):
    """(fastdet model, official model) with identical random weights, in training mode."""
    import warnings

    from yolox.models import YOLOX, YOLOPAFPN, YOLOXHead

    from fastdet import models

    depth, width, depthwise = _CONFIGS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = YOLOX(YOLOPAFPN(depth, width, depthwise=depthwise), YOLOXHead(NUM_CLASSES, width, depthwise=depthwise))
    ref.head.initialize_biases(1e-2)
    ours = models.build_model(name, num_classes=NUM_CLASSES)
    ours.load_state_dict(ref.state_dict())
    return ours.to(device).train(), ref.to(device).train()


def _inputs(n: int, size: int, num_gt: int, device: str):
    """Images [n, 3, size, size] (BGR 0-255), fastdet targets (xyxy) and the same as the official
    labels [n, num_gt, 5] (class, cx, cy, w, h); box sides log-uniform in 8..size/2 px."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g) * 255
    wh = torch.exp(math.log(8) + torch.rand(n, num_gt, 2, generator=g) * math.log(size / 16))
    centres = wh / 2 + torch.rand(n, num_gt, 2, generator=g) * (size - wh)
    classes = torch.randint(0, NUM_CLASSES, (n, num_gt), generator=g)
    boxes = torch.cat([centres - wh / 2, centres + wh / 2], -1)
    targets = [{"boxes": b.to(device), "labels": c.to(device)} for b, c in zip(boxes, classes)]
    labels = torch.cat([classes[..., None].float(), centres, wh], -1)
    return images.to(device), targets, labels.to(device)


def _step(loss_fn, params):
    def run():
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        return loss
    return run


def _cases_for(device: str, name: str, size: int, n: int, num_gt: int) -> list[Case]:
    from fastdet.models.detection._utils import pad_targets
    from fastdet.models.detection.yolox import STRIDES, grid_points, yolox_loss

    ours, ref = _models(name, device)
    images, targets, labels = _inputs(n, size, num_gt, device)
    peer = "yolox 0.3.0"
    label = f"{name[6:]} {n}x{size}x{size}, {num_gt} objects/image"
    cases = [Case("yolox", f"{label}, train step", size, device, peer_name=peer,
                  fastdet=_step(lambda: sum(ours.loss(images, targets).values()), list(ours.parameters())),
                  peer=_step(lambda: ref(images, labels)["total_loss"], list(ref.parameters())))]
    with torch.no_grad():
        features = ours.backbone(images)
    grid, stride = grid_points([f.shape[-2:] for f in features], STRIDES, images.dtype, images.device)
    gt = pad_targets(targets, images.dtype, images.device)

    def ours_head_loss():
        return sum(yolox_loss(ours.head(features), grid, stride, *gt, ours.assigner).values())

    cases.append(Case("yolox", f"{label}, head + loss", size, device, peer_name=peer,
                      fastdet=_step(ours_head_loss, list(ours.head.parameters())),
                      peer=_step(lambda: ref.head(features, labels, images)[0], list(ref.head.parameters()))))
    return cases


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    if importlib.util.find_spec("yolox") is None:
        return []
    if quick:
        plan = [("yolox_nano", 256, 2, 10)]
    elif device.startswith("cuda"):
        plan = [("yolox_s", 640, 16, 30)]
    else:
        plan = [("yolox_nano", 416, 8, 20)]
    if sizes is not None:
        name, _, n, num_gt = plan[0]
        plan = [(name, s, n, num_gt) for s in sizes if 64 <= s <= 1280 and s % 32 == 0]
    return [case for p in plan for case in _cases_for(device, *p)]
