"""Pure-PyTorch SimOTA reference: a loop over images that follows YOLOX 0.3.0's
``YOLOXHead.get_assignments`` / ``get_in_boxes_info`` / ``dynamic_k_matching`` step by step
(including its ``G x A_candidates x C`` BCE tensor), on xyxy boxes and padded GT masks.

Computed in float64 (inputs are upcast) so its ranking is the exact one; scores are clamped into
[0, 1] as the kernels document. Used by the tests and as the benchmark fallback peer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _geometry(gt: Tensor, priors: Tensor, center_radius: float):
    """in_box, in_center [G, A] as get_in_boxes_info computes them (strict inequalities)."""
    ax, ay, sx, sy = priors.unbind(1)
    x1, y1, x2, y2 = (c[:, None] for c in gt.unbind(1))
    box_deltas = torch.stack([ax - x1, ay - y1, x2 - ax, y2 - ay], 2)
    in_box = box_deltas.min(dim=-1).values > 0.0
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    rx, ry = center_radius * sx, center_radius * sy
    center_deltas = torch.stack([ax - (cx - rx), ay - (cy - ry), (cx + rx) - ax, (cy + ry) - ay], 2)
    in_center = center_deltas.min(dim=-1).values > 0.0
    return in_box, in_center


def _iou(gt: Tensor, pred: Tensor) -> Tensor:
    """yolox.utils.bboxes_iou(gt, pred, xyxy=True); NaN -> 0."""
    tl = torch.max(gt[:, None, :2], pred[:, :2])
    br = torch.min(gt[:, None, 2:], pred[:, 2:])
    area_g = torch.prod(gt[:, 2:] - gt[:, :2], 1)
    area_p = torch.prod(pred[:, 2:] - pred[:, :2], 1)
    en = (tl < br).type(tl.type()).prod(dim=2)
    inter = torch.prod(br - tl, 2) * en
    return torch.nan_to_num(inter / (area_g[:, None] + area_p - inter), nan=0.0)


def _image_cost(scores, pred, priors, gt, labels, center_radius, iou_weight, cls_weight, center_only, outside_cost):
    """(candidate mask [A], cost [G, Acand], ious [G, Acand]) of one image with G >= 1 valid GTs."""
    in_box, in_center = _geometry(gt, priors, center_radius)
    if center_only:
        candidate = in_center.any(0)
        related = in_center[:, candidate]
    else:
        candidate = in_box.any(0) | in_center.any(0)
        related = in_box[:, candidate] & in_center[:, candidate]
    g, n = gt.shape[0], int(candidate.sum())
    ious = _iou(gt, pred[candidate])
    onehot = F.one_hot(labels, scores.shape[1]).to(scores.dtype).unsqueeze(1).repeat(1, n, 1)
    p = scores[candidate].clamp(0, 1).unsqueeze(0).repeat(g, 1, 1)
    cls_cost = F.binary_cross_entropy(p, onehot, reduction="none").sum(-1)
    cost = cls_weight * cls_cost + iou_weight * -torch.log(ious + 1e-8) + outside_cost * (~related)
    return candidate, cost, ious


def _upcast(*tensors):
    return [t.double() for t in tensors]


def simota_cost(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius=2.5, iou_weight=3.0,
                cls_weight=1.0, center_only=False, outside_cost=1e5) -> Tensor:
    """Reference of fastdet.ops.simota_cost: [B, G, A] float64, inf off the candidates / valid GTs."""
    B, A, _ = pred_scores.shape
    G = gt_boxes.shape[1]
    scores, pred, pri, gts = _upcast(pred_scores, pred_boxes, priors, gt_boxes)
    out = torch.full((B, G, A), float("inf"), dtype=torch.float64)
    for b in range(B):
        valid = torch.nonzero(gt_mask[b]).flatten()
        if valid.numel() == 0:
            continue
        candidate, cost, _ = _image_cost(scores[b], pred[b], pri, gts[b, valid], gt_labels[b, valid], center_radius,
                                         iou_weight, cls_weight, center_only, outside_cost)
        block = out[b, valid]
        block[:, candidate] = cost
        out[b, valid] = block
    return out


def simota_assign(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius=2.5, candidate_topk=10,
                  iou_weight=3.0, cls_weight=1.0, center_only=False, outside_cost=1e5):
    """Reference of fastdet.ops.simota_assign (same outputs; assigned_ious in float64)."""
    B, A, _ = pred_scores.shape
    scores, pred, pri, gts = _upcast(pred_scores, pred_boxes, priors, gt_boxes)
    assigned_gt = torch.full((B, A), -1, dtype=torch.int64)
    assigned_labels = torch.full((B, A), -1, dtype=torch.int64)
    assigned_ious = torch.zeros((B, A), dtype=torch.float64)
    num_fg = torch.zeros(B, dtype=torch.int64)
    for b in range(B):
        valid = torch.nonzero(gt_mask[b]).flatten()
        num_gt = valid.numel()
        if num_gt == 0:
            continue
        labels = gt_labels[b, valid]
        fg_mask, cost, ious = _image_cost(scores[b], pred[b], pri, gts[b, valid], labels, center_radius, iou_weight,
                                          cls_weight, center_only, outside_cost)
        if cost.shape[1] == 0:  # no candidate anchor (YOLOX would fail here): all background
            continue
        # dynamic_k_matching
        matching = torch.zeros_like(cost, dtype=torch.uint8)
        n_candidate_k = min(candidate_topk, ious.size(1))
        topk_ious, _ = torch.topk(ious, n_candidate_k, dim=1)
        dynamic_ks = torch.clamp(topk_ious.sum(1).int(), min=1).tolist()
        for g in range(num_gt):
            _, pos = torch.topk(cost[g], k=dynamic_ks[g], largest=False)
            matching[g][pos] = 1
        anchor_matching_gt = matching.sum(0)
        if (anchor_matching_gt > 1).sum() > 0:
            _, cost_argmin = torch.min(cost[:, anchor_matching_gt > 1], dim=0)
            matching[:, anchor_matching_gt > 1] *= 0
            matching[cost_argmin, anchor_matching_gt > 1] = 1
        fg_in_candidates = matching.sum(0) > 0
        anchors = torch.nonzero(fg_mask).flatten()[fg_in_candidates]
        matched = matching[:, fg_in_candidates].argmax(0)
        assigned_gt[b, anchors] = valid[matched]
        assigned_labels[b, anchors] = labels[matched]
        assigned_ious[b, anchors] = (matching * ious).sum(0)[fg_in_candidates]
        num_fg[b] = int(fg_in_candidates.sum())
    return assigned_gt, assigned_labels, assigned_ious, num_fg
