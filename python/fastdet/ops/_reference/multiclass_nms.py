"""Reference multi-class NMS: the semantics of fastdet.ops.multiclass_nms as a per-image loop."""

from __future__ import annotations

import torch
from torch import Tensor


def _nms_iou_matrix(boxes: Tensor) -> Tensor:
    """torchvision's NMS IoU, inter / (area_a + area_b - inter), of all pairs of boxes [M, 4]."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    w = (torch.minimum(x2[:, None], x2[None, :]) - torch.maximum(x1[:, None], x1[None, :])).clamp(min=0)
    h = (torch.minimum(y2[:, None], y2[None, :]) - torch.maximum(y1[:, None], y1[None, :])).clamp(min=0)
    inter = w * h
    return inter / (area[:, None] + area[None, :] - inter)


def _greedy(boxes: Tensor, iou_threshold: float, cap: int) -> list[int]:
    """Greedy NMS of boxes [M, 4] already in processing order: positions kept, at most cap."""
    suppresses = (_nms_iou_matrix(boxes).double() > iou_threshold).tolist()
    removed = [False] * boxes.shape[0]
    keep = []
    for i in range(boxes.shape[0]):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) == cap:
            break
        removed = [r or s for r, s in zip(removed, suppresses[i])]
    return keep


def multiclass_nms(boxes: Tensor, scores: Tensor, score_threshold: float, iou_threshold: float,
                   max_per_class: int, max_total: int, class_agnostic: bool = False):
    """Same contract as fastdet.ops.multiclass_nms (see its docstring for the semantics)."""
    B, N, C = scores.shape
    K = max_total
    math_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    dev = scores.device
    num_dets = torch.zeros(B, dtype=torch.int64, device=dev)
    out_boxes = torch.zeros(B, K, 4, dtype=scores.dtype, device=dev)
    out_scores = torch.zeros(B, K, dtype=scores.dtype, device=dev)
    out_labels = torch.full((B, K), -1, dtype=torch.int64, device=dev)
    out_indices = torch.full((B, K), -1, dtype=torch.int64, device=dev)
    for b in range(B):
        s_all = scores[b].to(math_dtype)  # [N, C]
        per_class = boxes.dim() == 4

        def box_of(n: Tensor, c: Tensor) -> Tensor:
            return (boxes[b, n, c] if per_class else boxes[b, n]).to(math_dtype)

        dets = []  # (score, c, n)
        groups = [None] if class_agnostic else range(C)
        for c in groups:
            if c is None:  # candidates (n, c) ordered by flat index n * C + c
                s = s_all.reshape(-1)
                flat = torch.nonzero(s.double() > score_threshold).flatten()
                ns, cs = flat // C, flat % C
            else:
                s = s_all[:, c]
                ns = torch.nonzero(s.double() > score_threshold).flatten()
                cs = torch.full_like(ns, c)
                flat = ns
            cand_scores = s[flat]
            # Decreasing score, ties to the lower (flat) index: a stable descending sort.
            order = torch.sort(cand_scores, descending=True, stable=True).indices
            ns, cs, cand_scores = ns[order], cs[order], cand_scores[order]
            cap = max_total if c is None else max_per_class
            for i in _greedy(box_of(ns, cs), iou_threshold, cap):
                dets.append((cand_scores[i].item(), int(cs[i]), int(ns[i])))
        if not class_agnostic:
            dets.sort(key=lambda d: (-d[0], d[1], d[2]))
        dets = dets[:K]
        num_dets[b] = len(dets)
        for k, (score, c, n) in enumerate(dets):
            out_boxes[b, k] = boxes[b, n, c] if per_class else boxes[b, n]
            out_scores[b, k] = score
            out_labels[b, k] = c
            out_indices[b, k] = n
    return num_dets, out_boxes, out_scores, out_labels, out_indices
