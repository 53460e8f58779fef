"""Reference Soft-NMS: the loop of Bodla et al. 2017 written out one step at a time."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5, min_score: float = 0.001,
             method: str = "linear", idxs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as fastdet.ops.soft_nms; math in float64 for float64 inputs, else float32."""
    if method not in ("linear", "gaussian"):
        raise ValueError(f"unknown method {method!r}")
    math_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    b = boxes.to(math_dtype)
    s = scores.to(math_dtype).clone()
    n = s.shape[0]
    cls = idxs if idxs is not None else torch.zeros(n, dtype=torch.long, device=s.device)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = s >= min_score  # NaN scores and scores below min_score are never selected
    keep, kept = [], []
    while bool(alive.any()):
        # Highest current score; among equal scores the lowest index (argmax returns the first).
        cand = torch.where(alive, s, torch.full_like(s, -float("inf")))
        best = int(torch.nonzero(alive & (cand == cand.max()))[0])
        keep.append(best)
        kept.append(s[best].clone())
        alive[best] = False
        # IoU of the selected box with every box, as torchvision's nms: inter / (a1 + a2 - inter).
        w = (torch.minimum(b[best, 2], b[:, 2]) - torch.maximum(b[best, 0], b[:, 0])).clamp(min=0)
        h = (torch.minimum(b[best, 3], b[:, 3]) - torch.maximum(b[best, 1], b[:, 1])).clamp(min=0)
        inter = w * h
        iou = inter / (area[best] + area - inter)
        if method == "linear":
            weight = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
        else:
            weight = torch.exp(-(iou * iou) / sigma)
        weight = torch.where(torch.isnan(iou), torch.ones_like(weight), weight)  # NaN IoU: no decay
        decay = alive & (cls == cls[best])
        s = torch.where(decay, s * weight, s)
        alive &= s >= min_score
    keep_t = torch.tensor(keep, dtype=torch.long, device=boxes.device)
    kept_t = torch.stack(kept).to(scores.dtype) if kept else scores.new_empty(0)
    return keep_t, kept_t
