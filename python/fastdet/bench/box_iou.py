"""box_iou benchmarks: the fused kernel against torchvision's broadcast composites."""

from __future__ import annotations

import torch
import torchvision

from fastdet import ops
from fastdet.testing import random_boxes

from ._harness import Case

_PAIRWISE = {"iou": torchvision.ops.box_iou, "giou": torchvision.ops.generalized_box_iou,
             "ciou": torchvision.ops.complete_box_iou}


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    """Pairwise N x N IoU/GIoU/CIoU (2000: a box head's matching; 8400: YOLOX candidates) and the
    aligned CIoU loss over N boxes (forward + backward, as in training)."""
    if sizes is None:
        sizes = [2000] if quick else ([2000, 8400] if device.startswith("cuda") else [2000])
    g = torch.Generator().manual_seed(0)
    out = []
    for n in sizes:
        a = random_boxes(n, generator=g, device=device)
        b = random_boxes(n, generator=g, device=device)
        for mode, peer in _PAIRWISE.items():
            out.append(Case("box_iou", f"{mode} {n}x{n} fp32", n, device,
                            fastdet=lambda a=a, b=b, m=mode: ops.box_iou(a, b, m),
                            peer=lambda a=a, b=b, p=peer: p(a, b),
                            bytes_moved=n * n * 4 + 2 * n * 16))
    for n in [s * 50 for s in sizes]:  # 2000 -> 100k boxes, a RetinaNet-sized batch
        a = random_boxes(n, generator=g, device=device).requires_grad_()
        b = random_boxes(n, generator=g, device=device)

        def train_step(loss_fn, a=a, b=b):
            loss_fn(a, b, reduction="mean").backward()

        out.append(Case("box_iou", f"ciou_loss fwd+bwd {n} fp32", n, device,
                        fastdet=lambda f=train_step: f(ops.ciou_loss),
                        peer=lambda f=train_step: f(torchvision.ops.complete_box_iou_loss)))
    return out
