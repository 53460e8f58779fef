"""Benchmark cases of fastdet.ops.nms and batched_nms against torchvision.ops.nms / batched_nms.

Inputs are detector-like (fastdet.testing.clustered_boxes): nms at 1k / 5k / 20k boxes,
batched_nms at 5k / 20k boxes over 80 classes (YOLOX-like), IoU threshold 0.5.
"""

from __future__ import annotations

import torch

from ._harness import Case

DEFAULT_SIZES = [1000, 5000, 20000]
BATCHED_SIZES = [5000, 20000]
NUM_CLASSES = 80
THRESHOLD = 0.5


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    import torchvision

    from fastdet import ops
    from fastdet.testing import clustered_boxes

    nms_sizes = sizes if sizes is not None else (DEFAULT_SIZES[:1] if quick else DEFAULT_SIZES)
    batched_sizes = sizes if sizes is not None else (BATCHED_SIZES[:1] if quick else BATCHED_SIZES)
    out = []
    for n in nms_sizes:
        g = torch.Generator().manual_seed(n)
        boxes, scores = clustered_boxes(n, generator=g, device=device)
        out.append(Case(
            op="nms", label=f"N={n} clustered", size=n, device=device,
            fastdet=lambda b=boxes, s=scores: ops.nms(b, s, THRESHOLD),
            peer=lambda b=boxes, s=scores: torchvision.ops.nms(b, s, THRESHOLD),
        ))
    for n in batched_sizes:
        g = torch.Generator().manual_seed(n + 1)
        boxes, scores = clustered_boxes(n, generator=g, device=device)
        idxs = torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device)
        out.append(Case(
            op="batched_nms", label=f"N={n} C={NUM_CLASSES} clustered", size=n, device=device,
            fastdet=lambda b=boxes, s=scores, i=idxs: ops.batched_nms(b, s, i, THRESHOLD),
            peer=lambda b=boxes, s=scores, i=idxs: torchvision.ops.batched_nms(b, s, i, THRESHOLD),
        ))
    return out
