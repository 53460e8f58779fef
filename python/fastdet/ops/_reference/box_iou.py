"""Reference IoU family: the formulas of fastdet.ops.box_iou written with broadcasting."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_iou(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", aligned: bool = False, eps: float = 1e-7) -> Tensor:
    """Same contract as fastdet.ops.box_iou; computed in float64 (or float32 for half inputs'
    math) with autograd-friendly torch ops."""
    dtype = boxes1.dtype
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    a, b = boxes1.to(math_dtype), boxes2.to(math_dtype)
    if not aligned:  # [.., N, 1, 4] against [.., 1, M, 4]
        a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    ax1, ay1, ax2, ay2 = a.unbind(-1)
    bx1, by1, bx2, by2 = b.unbind(-1)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / (union + eps)
    if mode == "iou":
        return iou.to(dtype)
    cw = (torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)).clamp(min=0)
    ch = (torch.maximum(ay2, by2) - torch.minimum(ay1, by1)).clamp(min=0)
    if mode == "giou":
        enclose = cw * ch
        return (iou - (enclose - union) / (enclose + eps)).to(dtype)
    diag2 = cw**2 + ch**2 + eps
    rho2 = ((ax1 + ax2 - bx1 - bx2) / 2) ** 2 + ((ay1 + ay2 - by1 - by2) / 2) ** 2
    diou = iou - rho2 / diag2
    if mode == "diou":
        return diou.to(dtype)
    if mode != "ciou":
        raise ValueError(f"unknown mode {mode!r}")

    def angle(w, h):  # atan(w / h), 0 for a 0 x 0 box
        degenerate = (w == 0) & (h == 0)
        return torch.where(degenerate, torch.zeros_like(w), torch.atan(w / torch.where(degenerate, torch.ones_like(h), h)))

    v = (4 / math.pi**2) * (angle(bx2 - bx1, by2 - by1) - angle(ax2 - ax1, ay2 - ay1)) ** 2
    alpha = v / (1 - iou + v + eps)
    return (diou - alpha * v).to(dtype)
