"""multiclass_nms: YOLO post-processing (B images x N candidates x 80 classes, score_threshold 0.25)
against the usual per-image loop of score filter + torchvision.ops.batched_nms + per-class top-k +
top-k."""

from __future__ import annotations

import torch
import torchvision

from fastdet import ops
from fastdet.testing import clustered_boxes

from ._harness import Case

NUM_CLASSES = 80
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_PER_CLASS, MAX_TOTAL = 0.25, 0.45, 100, 300


def yolo_outputs(batch: int, n: int, num_classes: int = NUM_CLASSES, device: str = "cpu", seed: int = 0):
    """Detector-like raw outputs: clustered boxes [B, N, 4] and scores [B, N, C] where each
    candidate has one likely class (uniform score) and small scores for the others."""
    g = torch.Generator().manual_seed(seed)
    boxes = torch.stack([clustered_boxes(n, generator=g)[0] for _ in range(batch)])
    scores = torch.rand(batch, n, num_classes, generator=g) * 0.1
    best = torch.randint(0, num_classes, (batch, n, 1), generator=g)
    scores.scatter_(2, best, torch.rand(batch, n, 1, generator=g))
    return boxes.to(device), scores.to(device)


def torchvision_loop(boxes, scores, score_threshold, iou_threshold, max_per_class, max_total):
    """Per image: score filter, batched_nms, per-class top-k, top-k (variable-size outputs)."""
    results = []
    for b in range(scores.shape[0]):
        n_idx, c_idx = torch.nonzero(scores[b] > score_threshold).unbind(1)
        bx, sc = boxes[b, n_idx], scores[b, n_idx, c_idx]
        keep = torchvision.ops.batched_nms(bx, sc, c_idx, iou_threshold)
        labels = c_idx[keep]
        # rank of each kept detection within its class (keep is in decreasing score order)
        order = torch.sort(labels, stable=True).indices
        sorted_labels = labels[order]
        first = torch.searchsorted(sorted_labels, sorted_labels)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device) - first
        keep = keep[rank < max_per_class][:max_total]
        results.append((bx[keep], sc[keep], c_idx[keep], n_idx[keep]))
    return results


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    sizes = sizes or ([2100] if quick else [2100, 8400])
    batch = 2 if quick and not device.startswith("cuda") else 16
    out = []
    for n in sizes:
        boxes, scores = yolo_outputs(batch, n, device=device)
        args = (SCORE_THRESHOLD, IOU_THRESHOLD, MAX_PER_CLASS, MAX_TOTAL)
        out.append(Case(
            op="multiclass_nms", label=f"B={batch} N={n} C={NUM_CLASSES} thr=0.25", size=n, device=device,
            fastdet=lambda b=boxes, s=scores: ops.multiclass_nms(b, s, *args),
            peer=lambda b=boxes, s=scores: torchvision_loop(b, s, *args),
            peer_name="torchvision (per-image batched_nms loop)",
        ))
    return out
