"""Reference BorderAlign, written from the definition with plain torch ops (autograd-friendly).

For each box and border k (0 top, 1 left, 2 bottom, 3 right) the pool_size + 1 points
    top:    (y1, x1 + i*dx)   left:  (y1 + i*dy, x1)   bottom: (y2, x2 - i*dx)   right: (y2 - i*dy, x2)
with dx = (x2 - x1) / pool_size, dy = (y2 - y1) / pool_size, i = 0..pool_size, are sampled with
RoIAlign bilinear interpolation in channel block k of the input, and the maximum is kept (first
maximum in sampling order on ties, a NaN sample wins). The gradient flows to the input only
through the winning sample (the boxes' gradient is not part of the op's contract).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _bilinear(planes: Tensor, ys: Tensor, xs: Tensor, h: int, w: int) -> Tensor:
    """planes [N, 4, C, H*W]; ys, xs [N, 4, S] -> samples [N, 4, C, S] (RoIAlign convention)."""
    valid = (ys >= -1) & (ys <= h) & (xs >= -1) & (xs <= w)  # False for NaN
    y = torch.where(valid & (ys > 0), ys, torch.zeros_like(ys))
    x = torch.where(valid & (xs > 0), xs, torch.zeros_like(xs))
    y_low, x_low = y.floor().long(), x.floor().long()
    y_edge, x_edge = y_low >= h - 1, x_low >= w - 1
    y_low = torch.where(y_edge, torch.full_like(y_low, h - 1), y_low)
    x_low = torch.where(x_edge, torch.full_like(x_low, w - 1), x_low)
    y_high = torch.where(y_edge, y_low, y_low + 1)
    x_high = torch.where(x_edge, x_low, x_low + 1)
    y = torch.where(y_edge, y_low.to(y.dtype), y)
    x = torch.where(x_edge, x_low.to(x.dtype), x)
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    c = planes.shape[2]

    def gather(yi, xi):
        idx = (yi * w + xi).unsqueeze(2).expand(-1, -1, c, -1)
        return planes.gather(3, idx)

    wt = lambda t: t.unsqueeze(2)  # noqa: E731  (broadcast over channels)
    val = (wt(hy * hx) * gather(y_low, x_low) + wt(hy * lx) * gather(y_low, x_high)
           + wt(ly * hx) * gather(y_high, x_low) + wt(ly * lx) * gather(y_high, x_high))
    return torch.where(wt(valid), val, torch.zeros_like(val))


def border_align(input: Tensor, boxes: Tensor, pool_size: int, return_argmax: bool = False):
    """Same contract as fastdet.ops.border_align: input [N, 4C, H, W], boxes [N, H*W, 4] ->
    output [N, C, H*W, 4] (last dim: top, left, bottom, right). With return_argmax, also the
    int32 index (0..pool_size) of the winning point, as the op's second output."""
    dtype = input.dtype
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    n, c4, h, w = input.shape
    c, hw, p = c4 // 4, h * w, pool_size
    planes = input.to(math_dtype).reshape(n, 4, c, hw)
    x1, y1, x2, y2 = boxes.to(math_dtype).unbind(-1)  # [N, HW]
    dx, dy = (x2 - x1) / p, (y2 - y1) / p
    zero = torch.zeros_like(dx)
    # Start point and step per border, [N, HW, 4]; point i = start + i * step (as the kernels).
    y0 = torch.stack([y1, y1, y2, y2], -1)
    x0 = torch.stack([x1, x1, x2, x2], -1)
    sy = torch.stack([zero, dy, zero, -dy], -1)
    sx = torch.stack([dx, zero, -dx, zero], -1)
    i = torch.arange(p + 1, dtype=math_dtype, device=input.device)
    ys = y0.unsqueeze(-1) + i * sy.unsqueeze(-1)  # [N, HW, 4, P+1]
    xs = x0.unsqueeze(-1) + i * sx.unsqueeze(-1)
    # -> [N, 4, HW*(P+1)] so each border samples its own channel block
    ys = ys.permute(0, 2, 1, 3).reshape(n, 4, hw * (p + 1))
    xs = xs.permute(0, 2, 1, 3).reshape(n, 4, hw * (p + 1))
    vals = _bilinear(planes, ys, xs, h, w).reshape(n, 4, c, hw, p + 1)
    # Running maximum in sampling order: strict '>' keeps the first maximum; the first NaN wins.
    best = vals[..., 0].detach()
    arg = torch.zeros(best.shape, dtype=torch.long, device=input.device)
    for k in range(1, p + 1):
        v = vals[..., k].detach()
        better = (v > best) | (v.isnan() & ~best.isnan())
        best = torch.where(better, v, best)
        arg = torch.where(better, torch.full_like(arg, k), arg)
    out = vals.gather(4, arg.unsqueeze(-1)).squeeze(-1)  # [N, 4, C, HW], differentiable
    out = out.permute(0, 2, 3, 1).to(dtype)  # [N, C, HW, 4]
    if return_argmax:
        return out, arg.permute(0, 2, 3, 1).to(torch.int32)
    return out
