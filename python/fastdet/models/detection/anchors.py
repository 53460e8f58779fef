"""Anchors: the RPN's (Faster R-CNN, Ren et al. 2015) and SSD's default boxes (Liu et al. 2016), in
torchvision's layouts."""

from __future__ import annotations

import math

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


class DefaultBoxGenerator(nn.Module):
    """SSD's default boxes (Liu et al. 2016, section 2.2 "Choosing scales and aspect ratios").

    Args:
        aspect_ratios: per feature map k, the ratios r (e.g. [2, 3]); each adds a box of width
            s_k * sqrt(r), height s_k / sqrt(r) and its transpose.
        min_ratio, max_ratio: without ``scales``, s_k runs linearly from min_ratio to max_ratio over
            the feature maps (then 1.0 for the last map's extra box). Fractions of the input size.
        scales: explicit s_0..s_K (one more than the feature maps).
        steps: per feature map, the pixel distance between box centres (SSD300: 8, 16, 32, 64, 100,
            300); without, the centres tile each feature map evenly.
        clip: clamp every width and height to at most the whole image (1.0).

    Per location of map k: a box of size s_k, one of sqrt(s_k * s_{k+1}), then the pairs of each
    ratio, so ``2 + 2 * len(aspect_ratios[k])`` boxes.

    forward(images: ImageList, features: list[Tensor[B, C, H_k, W_k]]) -> list[Tensor[A, 4]] (one
    per image, xyxy pixels of the padded batch), location-major per map, maps in order, with
    torchvision's float32 arithmetic so the same head outputs decode to the same boxes. The boxes of
    one layout are cached.
    """

    def __init__(self, aspect_ratios, min_ratio: float = 0.15, max_ratio: float = 0.9, scales=None, steps=None,
                 clip: bool = True):
        super().__init__()
        num_maps = len(aspect_ratios)
        if steps is not None and len(steps) != num_maps:
            raise ValueError(f"DefaultBoxGenerator: steps ({len(steps)}) and aspect_ratios ({num_maps}) need one "
                             f"entry per feature map")
        if scales is None:
            if num_maps > 1:
                scales = [min_ratio + (max_ratio - min_ratio) * k / (num_maps - 1.0) for k in range(num_maps)] + [1.0]
            else:
                scales = [min_ratio, max_ratio]
        if len(scales) != num_maps + 1:
            raise ValueError(f"DefaultBoxGenerator: scales needs {num_maps + 1} entries (one per feature map and "
                             f"one more), got {len(scales)}")
        self.aspect_ratios = [list(r) for r in aspect_ratios]
        self.scales = list(scales)
        self.steps = steps
        self.clip = clip
        # per map: Tensor[n_k, 2] of (w, h) as fractions of the image, in double arithmetic like torchvision
        self.box_sizes = [self._box_sizes(k) for k in range(num_maps)]
        self._cache: dict = {}

    def _box_sizes(self, k: int) -> Tensor:
        s, s_next = self.scales[k], self.scales[k + 1]
        s_mid = math.sqrt(s * s_next)
        pairs = [[s, s], [s_mid, s_mid]]
        for ratio in self.aspect_ratios[k]:
            root = math.sqrt(ratio)
            pairs += [[s * root, s / root], [s / root, s * root]]
        sizes = torch.as_tensor(pairs, dtype=torch.float32)
        return sizes.clamp(min=0, max=1) if self.clip else sizes

    def num_anchors_per_location(self) -> list[int]:
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _centres(self, k: int, grid: tuple[int, int], image_size: tuple[int, int], dtype) -> Tensor:
        """Tensor[H_k * W_k, 2] of (cx, cy) as fractions of the image, row-major over the map."""
        (gh, gw), (ih, iw) = grid, image_size
        tiles_y, tiles_x = (ih / self.steps[k], iw / self.steps[k]) if self.steps is not None else (gh, gw)
        xs = ((torch.arange(gw) + 0.5) / tiles_x).to(dtype)
        ys = ((torch.arange(gh) + 0.5) / tiles_y).to(dtype)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)

    def default_boxes(self, grid_sizes: list[tuple[int, int]], image_size: tuple[int, int], dtype, device) -> Tensor:
        """All maps' boxes, Tensor[sum_k H_k * W_k * n_k, 4] xyxy in pixels."""
        if len(grid_sizes) != len(self.box_sizes):
            raise ValueError(f"DefaultBoxGenerator: got {len(grid_sizes)} feature maps but default boxes are defined "
                             f"for {len(self.box_sizes)}; aspect_ratios needs one entry per feature map")
        out = []
        for k, grid in enumerate(grid_sizes):
            # centres in the features' dtype, sizes in float32: the result takes the wider type (as torchvision's)
            centres = self._centres(k, grid, image_size, dtype)[:, None, :]  # [HW, 1, 2]
            half = 0.5 * self.box_sizes[k][None]  # [1, n_k, 2]
            out.append(torch.cat((centres - half, centres + half), dim=-1).reshape(-1, 4))
        ih, iw = image_size
        scale = torch.tensor([iw, ih, iw, ih])
        return (torch.cat(out) * scale).to(device)

    def forward(self, images, features: list[Tensor]) -> list[Tensor]:
        grid_sizes = [tuple(int(s) for s in f.shape[-2:]) for f in features]
        image_size = tuple(int(s) for s in images.tensors.shape[-2:])
        dtype, device = features[0].dtype, features[0].device
        key = (tuple(grid_sizes), image_size, dtype, device)
        boxes = self._cache.get(key)
        if boxes is None:
            boxes = self.default_boxes(grid_sizes, image_size, dtype, device)
            self._cache = {key: boxes}  # one layout kept: SSD's input size is fixed
        return [boxes for _ in images.image_sizes]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(aspect_ratios={self.aspect_ratios}, clip={self.clip}, scales={self.scales}, "
                f"steps={self.steps})")
