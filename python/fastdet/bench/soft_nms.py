"""Soft-NMS benchmark cases: detector-like clustered boxes, linear and gaussian decay.

torchvision has no soft_nms, so the peer is the pure-PyTorch reference loop
(fastdet.ops._reference.soft_nms), which is what a PyTorch user would otherwise write.
"""

from __future__ import annotations

import torch

from ..ops import soft_nms
from ..ops._reference import soft_nms as ref
from ..testing import clustered_boxes
from ._harness import Case

DEFAULT_SIZES = [1000, 5000]
PEER_NAME = "reference (no torchvision soft_nms)"


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    sizes = sizes if sizes is not None else DEFAULT_SIZES
    if quick:
        sizes = sorted(sizes)[:1]
    out = []
    for n in sizes:
        boxes, scores = clustered_boxes(n, generator=torch.Generator().manual_seed(n), device=device)
        for method in ("linear", "gaussian"):
            out.append(Case(
                op="soft_nms", label=f"N={n} clustered {method}", size=n, device=device,
                fastdet=lambda b=boxes, s=scores, m=method: soft_nms(b, s, method=m),
                peer=lambda b=boxes, s=scores, m=method: ref.soft_nms(b, s, method=m),
                peer_name=PEER_NAME,
            ))
    return out
