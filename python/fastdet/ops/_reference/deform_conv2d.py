"""Pure-PyTorch deformable convolution v1/v2 (torchvision's semantics): bilinear sampling with
zero padding as an explicit gather, then a grouped matrix product. Readable, differentiable,
memory-hungry (it builds the whole [N, C * KH * KW, HO * WO] column tensor)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair


def _bilinear_zero_pad(plane: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """plane [N, C, H, W] sampled at y, x [N, C, P] (per channel): zero outside (-1, H) x (-1, W),
    each integer corner contributing only when it lies inside the map."""
    n, c, h, w = plane.shape
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    y = torch.where(inside, y, torch.zeros_like(y))
    x = torch.where(inside, x, torch.zeros_like(x))
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    flat = plane.reshape(n, c, h * w)
    out = torch.zeros_like(y)
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0.long() + dy, x0.long() + dx
            ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = torch.where(ok, yy * w + xx, torch.zeros_like(yy))
            v = torch.gather(flat, 2, idx)
            out = out + torch.where(ok, wy * wx * v, torch.zeros_like(v))
    return out


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride=(1, 1),
                  padding=(0, 0), dilation=(1, 1), mask: Tensor | None = None) -> Tensor:
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = input.shape
    cout, cg, kh, kw = weight.shape
    groups, kk = c // cg, kh * kw
    og = offset.shape[1] // (2 * kk)
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    dev, dt = input.device, input.dtype
    oy = torch.arange(ho, device=dev, dtype=dt).view(ho, 1) * sh - ph
    ox = torch.arange(wo, device=dev, dtype=dt).view(1, wo) * sw - pw
    ki = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dh  # [KK]
    kj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dw
    base_y = (oy.view(1, ho, 1) + ki.view(kk, 1, 1)).expand(kk, ho, wo)
    base_x = (ox.view(1, 1, wo) + kj.view(kk, 1, 1)).expand(kk, ho, wo)
    off = offset.view(n, og, kk, 2, ho, wo)
    y = (base_y + off[:, :, :, 0]).reshape(n, og, 1, kk * ho * wo)
    x = (base_x + off[:, :, :, 1]).reshape(n, og, 1, kk * ho * wo)
    cog = c // og
    y = y.expand(n, og, cog, kk * ho * wo).reshape(n, c, kk * ho * wo)
    x = x.expand(n, og, cog, kk * ho * wo).reshape(n, c, kk * ho * wo)
    cols = _bilinear_zero_pad(input, y, x).view(n, og, cog, kk, ho * wo)
    if mask is not None:
        cols = cols * mask.view(n, og, 1, kk, ho * wo)
    cols = cols.reshape(n, groups, cg * kk, ho * wo)
    out = torch.einsum("gok,ngkp->ngop", weight.reshape(groups, cout // groups, cg * kk), cols)
    out = out.reshape(n, cout, ho, wo)
    if bias is not None:
        out = out + bias.view(1, cout, 1, 1)
    return out
