"""Anchor generation for the RPN (Faster R-CNN, Ren et al. 2015), torchvision's anchor layout."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors for every feature map location, one set per feature map.

    Args:
        sizes: per feature map, the anchor sizes in pixels (sqrt of the area), e.g.
            ((32,), (64,), (128,), (256,), (512,)) for an FPN.
        aspect_ratios: per feature map, the height / width ratios.

    forward(images: ImageList, features: list[Tensor[B, C, H_l, W_l]]) -> list[Tensor[A, 4]] (one
    per image, xyxy in the padded-batch pixel frame). For a location (x, y) of level l with stride
    s = padded size // H_l, anchor k is (x*s, y*s, x*s, y*s) + round((-w_k, -h_k, w_k, h_k) / 2);
    anchors are ordered location-major, then size/ratio (aspect ratio major), as torchvision's.
    The grid of a given layout is cached.
    """

    def __init__(self, sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),)):
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (tuple(aspect_ratios),) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"AnchorGenerator: sizes ({len(sizes)} levels) and aspect_ratios "
                             f"({len(aspect_ratios)} levels) must have one entry per feature map")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(a) for a in aspect_ratios)
        self.cell_anchors = [self.base_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]
        self._cache: dict = {}

    @staticmethod
    def base_anchors(sizes, aspect_ratios, dtype=torch.float32, device=None) -> Tensor:
        """Tensor[len(ratios) * len(sizes), 4]: zero-centred anchors, rounded to whole pixels."""
        scales = torch.as_tensor(sizes, dtype=dtype, device=device)
        ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        h = torch.sqrt(ratios)
        w = 1 / h
        ws = (w[:, None] * scales[None, :]).reshape(-1)
        hs = (h[:, None] * scales[None, :]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes: list[tuple[int, int]], strides: list[tuple[int, int]], dtype, device
                     ) -> Tensor:
        """All anchors of all levels, Tensor[sum_l H_l * W_l * A_l, 4]."""
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(f"AnchorGenerator: got {len(grid_sizes)} feature maps but anchors are defined for "
                             f"{len(self.cell_anchors)}; sizes and aspect_ratios need one entry per feature map")
        out = []
        for (gh, gw), (sh, sw), base in zip(grid_sizes, strides, self.cell_anchors):
            base = base.to(dtype=dtype, device=device)
            xs = torch.arange(gw, dtype=torch.int64, device=device) * sw
            ys = torch.arange(gh, dtype=torch.int64, device=device) * sh
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
            out.append((shifts + base.reshape(1, -1, 4)).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, images, features: list[Tensor]) -> list[Tensor]:
        ph, pw = images.tensors.shape[-2:]
        grid_sizes = [tuple(int(s) for s in f.shape[-2:]) for f in features]
        strides = [(ph // g[0], pw // g[1]) for g in grid_sizes]
        dtype, device = features[0].dtype, features[0].device
        key = (tuple(grid_sizes), tuple(strides), dtype, device)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = self.grid_anchors(grid_sizes, strides, dtype, device)
            self._cache = {key: anchors}  # one layout kept: the common case is a fixed input size
        return [anchors for _ in images.image_sizes]
