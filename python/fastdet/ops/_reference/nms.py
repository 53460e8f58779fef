"""Reference NMS: the greedy algorithm of fastdet.ops.nms / batched_nms written plainly."""

from __future__ import annotations

import torch
from torch import Tensor


def visiting_order(scores: Tensor) -> Tensor:
    """Indices by decreasing score, ties by lower index, NaN first (torch.sort's order; a stable
    descending sort keeps equal scores in index order). -0.0 counts as 0.0."""
    s = scores.to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    s = torch.where(s == 0, torch.zeros_like(s), s)
    return torch.sort(s, descending=True, stable=True).indices


def _iou_one_to_many(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box a [4] with boxes b [M, 4]: inter / (area_a + area_b - inter), no eps (NaN for 0/0)."""
    iw = (torch.minimum(a[2], b[:, 2]) - torch.maximum(a[0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[3], b[:, 3]) - torch.maximum(a[1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int = -1) -> Tensor:
    """Same contract as fastdet.ops.nms. Math in float64 for float64 boxes, else float32."""
    b = boxes.to(torch.float64 if boxes.dtype == torch.float64 else torch.float32)
    suppressed = torch.zeros(len(b), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in visiting_order(scores).tolist():
        if max_output >= 0 and len(keep) >= max_output:
            break
        if suppressed[i]:
            continue
        keep.append(i)
        # NaN IoU compares False: it suppresses nothing. Boxes already visited are unaffected.
        suppressed |= _iou_one_to_many(b[i], b) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Same contract as fastdet.ops.batched_nms: nms per class, then all kept boxes by visiting order."""
    kept = []
    for c in torch.unique(idxs).tolist():
        members = torch.nonzero(idxs == c).flatten()
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    if not kept:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    kept = torch.cat(kept)
    order = visiting_order(scores)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(len(order), device=order.device)
    rank = rank_of[kept]
    return kept[torch.argsort(rank)]
