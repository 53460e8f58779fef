"""Reference RoIAlign (single- and multi-level), written from the definition with plain torch ops,
one RoI at a time (slow, readable, autograd-friendly).

Bin (ph, pw) of a RoI averages grid_h x grid_w bilinear samples at
    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h      (x alike)
with start = coordinate * spatial_scale - (0.5 if aligned else 0), bin = RoI size / output size
(the RoI size is at least 1 when not aligned), grid = sampling_ratio, or ceil(bin size) (capped at
512) when sampling_ratio <= 0, and the divisor max(grid_h * grid_w, 1). A sample outside
[-1, H] x [-1, W] is 0; RoIs with a non-finite coordinate give 0. Same math dtype as the kernels
(fp32, fp64 for fp64 inputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_ADAPTIVE_GRID = 512


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axis(v: Tensor, size: int):
    """Bilinear support along one axis (RoIAlign convention): valid, low, high, w_low, w_high."""
    valid = (v >= -1) & (v <= size)  # False for NaN
    v = torch.where(valid & (v > 0), v, torch.zeros_like(v))
    low = v.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    v = torch.where(edge, low.to(v.dtype), v)
    lw = v - low
    return valid, low, high, 1 - lw, lw


def _grid(bin_size: float, sampling_ratio: int) -> int:
    if sampling_ratio > 0:
        return sampling_ratio
    if not bin_size > 0:
        return 0
    return min(math.ceil(bin_size), MAX_ADAPTIVE_GRID)


def _one_roi(feature: Tensor, roi: Tensor, scale: float, ph: int, pw: int, sampling_ratio: int,
             aligned: bool) -> Tensor:
    """feature [C, H, W] in the math dtype, roi [4] (x1, y1, x2, y2) -> [C, ph, pw]."""
    c, h, w = feature.shape
    out = feature.new_zeros(c, ph, pw)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (roi * scale - offset).unbind()
    roi_w, roi_h = x2 - x1, y2 - y1
    if not all(math.isfinite(float(t)) for t in (x1, y1, roi_w, roi_h)) or h * w == 0:
        return out
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    gh, gw = _grid(float(bin_h), sampling_ratio), _grid(float(bin_w), sampling_ratio)
    if gh * gw <= 0:
        return out
    dt = feature.dtype
    ys = y1 + torch.arange(ph, dtype=dt)[:, None] * bin_h + (torch.arange(gh, dtype=dt)[None, :] + 0.5) * bin_h / gh
    xs = x1 + torch.arange(pw, dtype=dt)[:, None] * bin_w + (torch.arange(gw, dtype=dt)[None, :] + 0.5) * bin_w / gw
    vy, yl, yh, wyl, wyh = _axis(ys.reshape(-1), h)  # [ph * gh]
    vx, xl, xh, wxl, wxh = _axis(xs.reshape(-1), w)  # [pw * gw]
    plane = feature.reshape(c, h * w)

    def corner(yi, xi, wy, wx):
        idx = (yi[:, None] * w + xi[None, :]).reshape(-1)
        return plane[:, idx].reshape(c, yi.numel(), xi.numel()) * (wy[:, None] * wx[None, :])

    val = corner(yl, xl, wyl, wxl) + corner(yl, xh, wyl, wxh) + corner(yh, xl, wyh, wxl) + corner(yh, xh, wyh, wxh)
    val = torch.where(vy[:, None] & vx[None, :], val, torch.zeros_like(val))  # [C, ph*gh, pw*gw]
    val = val.reshape(c, ph, gh, pw, gw).sum(dim=(2, 4))
    return val / max(gh * gw, 1)


def multi_scale_roi_align(features: list[Tensor], rois: Tensor, levels: Tensor | None, spatial_scales: list[float],
                          output_size, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Same contract as torch.ops.fastdet.multi_scale_roi_align: RoI k pools level levels[k]."""
    ph, pw = _pair(output_size)
    dtype = features[0].dtype
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    feats = [f.to(math_dtype) for f in features]
    rois = rois.to(math_dtype)
    outs = []
    for k in range(rois.shape[0]):
        lvl = 0 if levels is None else int(levels[k])
        b = int(rois[k, 0])
        outs.append(_one_roi(feats[lvl][b], rois[k, 1:], spatial_scales[lvl], ph, pw, sampling_ratio, aligned))
    n, c = features[0].shape[:2]
    out = torch.stack(outs) if outs else feats[0].new_zeros(0, c, ph, pw)
    return out.to(dtype)


def roi_align(input: Tensor, rois: Tensor, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """Same contract as fastdet.ops.roi_align with rois [K, 5]."""
    return multi_scale_roi_align([input], rois, None, [spatial_scale], output_size, sampling_ratio, aligned)
