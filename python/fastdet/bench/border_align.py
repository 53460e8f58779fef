"""border_align benchmarks: forward + backward against the pure-PyTorch reference (no other
library has a CPU kernel; mmcv's is CUDA only)."""

from __future__ import annotations

import torch

from fastdet import ops
from fastdet.ops._reference import border_align as reference

from ._harness import Case


def _inputs(n: int, c: int, size: int, device: str, g: torch.Generator):
    """Features [n, 4c, size, size] and one detector-like box per location (around it, partly
    outside the map at the edges), in feature-map coordinates."""
    feat = torch.randn(n, 4 * c, size, size, generator=g).to(device)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    centre = torch.stack([xs, ys], -1).reshape(1, size * size, 2).expand(n, -1, -1)
    half = 1 + torch.rand(n, size * size, 2, generator=g) * size / 4
    boxes = torch.cat([centre - half, centre + half], -1).to(device)
    return feat, boxes


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    """BorderDet's head: 2 images, 64 channels per border, 40 x 40 map, pool_size 10 (size = the
    map side); forward + backward as in training."""
    if sizes is None:
        sizes = [40] if quick or not device.startswith("cuda") else [40, 100]
    g = torch.Generator().manual_seed(0)
    n, c, pool_size = 2, 64, 10
    out = []
    for size in sizes:
        feat, boxes = _inputs(n, c, size, device, g)
        x = feat.clone().requires_grad_()
        grad = torch.randn(n, c, size * size, 4, generator=g).to(device)

        def step(fn, x=x, boxes=boxes, grad=grad):
            x.grad = None
            fn(x, boxes, pool_size).backward(grad)

        elem = feat.element_size()
        out.append(Case("border_align", f"fwd+bwd N={n} C=4x{c} {size}x{size} pool={pool_size} fp32", size, device,
                        fastdet=lambda s=step: s(ops.border_align),
                        peer=lambda s=step: s(reference.border_align),
                        peer_name="reference (pure PyTorch)",
                        # input read once + output [n, c, size*size, 4] written once
                        bytes_moved=feat.numel() * elem + n * c * size * size * 4 * elem))
    return out
