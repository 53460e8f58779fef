"""SimOTA label assignment (YOLOX, Ge et al. 2021, "YOLOX: Exceeding YOLO Series in 2021"):
`torch.ops.fastdet.simota_assign` and the cost matrix it ranks, `torch.ops.fastdet.simota_cost`.

Batched over images with padded ground truths: no Python loop over images or GTs, no host
synchronisation, fixed-shape outputs, and nothing of size G x A x C is ever formed (the summed
BCE classification cost reduces to a per-anchor sum plus a per-pair correction). The rule is
YOLOX's ``YOLOXHead.get_assignments`` (release 0.3.0 on PyPI; the same rule as mmdet's
``SimOTAAssigner``), per image b:

1. Candidates: anchors whose centre lies strictly inside some valid GT box, or strictly within
   ``center_radius * stride`` of some valid GT's centre (per axis, with the prior's stride_x /
   stride_y). Only candidates take part below; every other anchor is background.
2. ``cost[g, a] = cls_weight * BCE(pred_scores[a], onehot(label g)).sum(classes)
   + iou_weight * -log(IoU(gt g, pred a) + 1e-8) + outside_cost * (a not inside both gt g's box and
   its centre region)``. The BCE logs are clamped at -100 as torch's ``binary_cross_entropy``
   does; scores are clamped into [0, 1] (torch would raise).
3. Dynamic k per GT: ``max(1, int(sum of its top min(candidate_topk, #candidates) IoUs))``; the GT
   takes its k lowest-cost candidates (ties to the lower anchor index).
4. An anchor taken by several GTs goes to the valid GT of lowest cost (over all GTs, as YOLOX does;
   ties to the lower GT index).

``center_only=True, center_radius=1.5, outside_cost=1e6`` is the current YOLOX rule (main branch
``get_geometry_constraint``: candidates and the no-penalty region are the centre regions only);
``SimOTAAssigner(rule="yolox")`` sets it.

On tie-free inputs the result equals YOLOX's exactly (tested against the ``yolox`` package and a
step-by-step loop reference, ``fastdet.ops._reference.simota``). Geometry and IoU are computed in
float32 for float16/bfloat16/float32 inputs (float64 for float64), as YOLOX does; costs are
combined in float64 so the 1e5 offset does not merge the costs of penalised candidates.

NaN/Inf: a NaN coordinate fails every inside test; an IoU that is NaN (NaN boxes, two zero-area
boxes) counts as 0; a NaN cost ranks after every finite cost. Images without valid GTs are all
background.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import check, op, register_fp32_autocast

MAX_CANDIDATE_TOPK = 64  # csrc/ops/simota.h kSimotaMaxTopk

# Keyword presets of SimOTAAssigner.
RULES = {
    "yolox-0.3.0": dict(center_radius=2.5, center_only=False, outside_cost=1e5),
    "yolox": dict(center_radius=1.5, center_only=True, outside_cost=1e6),
}


def simota_cost(pred_scores: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                gt_mask: Tensor, center_radius: float = 2.5, iou_weight: float = 3.0, cls_weight: float = 1.0,
                center_only: bool = False, outside_cost: float = 1e5) -> Tensor:
    """The SimOTA cost matrix that :func:`simota_assign` ranks, for inspection and tests.

    Args: as :func:`simota_assign` (without ``candidate_topk``).

    Returns:
        Tensor[B, G, A]: ``cost[b, g, a]`` as in step 2 of the module docstring; ``inf`` where GT g
        is padding (``gt_mask`` false) or anchor a is not a candidate of image b. float64 for
        float64 inputs, else float32 (the 1e5 offset overflows float16).
    """
    return op("simota_cost").default(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius,
                                     iou_weight, cls_weight, center_only, outside_cost)


def simota_assign(pred_scores: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                  gt_mask: Tensor, center_radius: float = 2.5, candidate_topk: int = 10, iou_weight: float = 3.0,
                  cls_weight: float = 1.0, center_only: bool = False, outside_cost: float = 1e5
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SimOTA assignment of anchors to padded ground truths, batched over images (see the module
    docstring for the rule).

    Args:
        pred_scores: Tensor[B, A, C], the per-class probabilities the classification cost is
            computed on. YOLOX passes ``(cls_logits.sigmoid() * obj_logits.sigmoid()).sqrt()``.
        pred_boxes: Tensor[B, A, 4], predicted boxes (x1, y1, x2, y2).
        priors: Tensor[A, 4], anchor points (center_x, center_y, stride_x, stride_y). In YOLOX's
            terms ``center = (shift + 0.5) * stride``.
        gt_boxes: Tensor[B, G, 4], ground truths (x1, y1, x2, y2), padded to G per image.
        gt_labels: Tensor[B, G] int64, class indices in [0, C) where ``gt_mask`` is set.
            Out-of-range labels of masked GTs raise on CPU; on CUDA (which cannot raise without a
            host synchronisation) such GTs are ignored.
        gt_mask: Tensor[B, G] bool, which GTs are real (False: padding).
        center_radius: the centre region is ``center_radius * stride`` around each GT centre.
        candidate_topk: how many top IoUs the dynamic k sums, in [1, 64].
        iou_weight, cls_weight: weights of the IoU and classification costs.
        center_only: candidates and the no-penalty region are the centre regions only (current
            YOLOX) instead of "box or centre" / "box and centre" (YOLOX 0.3.0, mmdet).
        outside_cost: added to the cost of an anchor outside that GT's region.

    All floating inputs share one dtype (float16, bfloat16, float32 or float64) and every input
    one device. Not differentiable (an assignment).

    Returns:
        (assigned_gt, assigned_labels, assigned_ious, num_fg):
        assigned_gt Tensor[B, A] int64, the GT index g in [0, G) of each anchor or -1 (background);
        assigned_labels Tensor[B, A] int64, that GT's label or -1; assigned_ious Tensor[B, A]
        (input dtype), IoU of the anchor's predicted box with its GT, 0 for background (YOLOX's
        ``pred_ious_this_matching``, the soft classification target); num_fg Tensor[B] int64,
        the foreground anchors of each image.
    """
    return op("simota_assign").default(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius,
                                       candidate_topk, iou_weight, cls_weight, center_only, outside_cost)


class SimOTAAssigner(nn.Module):
    """:func:`simota_assign` with its settings stored; ``rule`` picks a preset:
    ``"yolox-0.3.0"`` (default; YOLOX 0.3.0 / mmdet: box-or-centre candidates, radius 2.5, 1e5
    penalty) or ``"yolox"`` (current YOLOX: centre region of radius 1.5 only, 1e6 penalty).
    Keyword arguments override the preset."""

    def __init__(self, rule: str = "yolox-0.3.0", candidate_topk: int = 10, iou_weight: float = 3.0,
                 cls_weight: float = 1.0, **overrides):
        super().__init__()
        if rule not in RULES:
            raise RuntimeError(f"fastdet::simota_assign: rule must be one of {sorted(RULES)}, got {rule!r}")
        unknown = set(overrides) - set(RULES[rule])
        if unknown:
            raise TypeError(f"SimOTAAssigner got unexpected arguments {sorted(unknown)}")
        self.settings = dict(RULES[rule], **overrides, candidate_topk=candidate_topk, iou_weight=iou_weight,
                             cls_weight=cls_weight)

    def forward(self, pred_scores: Tensor, pred_boxes: Tensor, priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor,
                gt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return simota_assign(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, **self.settings)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items())


# ---- fake kernels: the C++ checks restated, and the (static) output metadata ------------------------


def _check_inputs(name, pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius,
                  iou_weight, cls_weight, outside_cost, candidate_topk=1):
    check(pred_scores.dim() == 3, name, f"pred_scores must have shape [B, A, C], got {list(pred_scores.shape)}")
    check(pred_scores.dtype.is_floating_point, name,
          f"pred_scores must be a floating-point tensor (float16, bfloat16, float32 or float64), got {pred_scores.dtype}")
    b, a = pred_scores.shape[0], pred_scores.shape[1]
    check(pred_boxes.dim() == 3 and pred_boxes.shape[0] == b and pred_boxes.shape[1] == a and pred_boxes.shape[2] == 4,
          name, f"pred_boxes must have shape [B, A, 4] = [{b}, {a}, 4] (B, A of pred_scores), got {list(pred_boxes.shape)}")
    check(priors.dim() == 2 and priors.shape[0] == a and priors.shape[1] == 4, name,
          f"priors must have shape [A, 4] = [{a}, 4] (center_x, center_y, stride_x, stride_y), got {list(priors.shape)}")
    check(gt_boxes.dim() == 3 and gt_boxes.shape[0] == b and gt_boxes.shape[2] == 4, name,
          f"gt_boxes must have shape [B, G, 4] with B = {b}, got {list(gt_boxes.shape)}")
    g = gt_boxes.shape[1]
    check(gt_labels.dim() == 2 and gt_labels.shape[0] == b and gt_labels.shape[1] == g, name,
          f"gt_labels must have shape [B, G] = [{b}, {g}], got {list(gt_labels.shape)}")
    check(gt_labels.dtype == torch.int64, name, f"gt_labels must be an int64 tensor, got {gt_labels.dtype}")
    check(gt_mask.dim() == 2 and gt_mask.shape[0] == b and gt_mask.shape[1] == g, name,
          f"gt_mask must have shape [B, G] = [{b}, {g}], got {list(gt_mask.shape)}")
    check(gt_mask.dtype == torch.bool, name, f"gt_mask must be a bool tensor, got {gt_mask.dtype}")
    for arg, t in (("pred_boxes", pred_boxes), ("priors", priors), ("gt_boxes", gt_boxes)):
        check(t.dtype == pred_scores.dtype, name, f"pred_scores and {arg} must have the same dtype, got {pred_scores.dtype} and {t.dtype}")
    for arg, t in (("pred_boxes", pred_boxes), ("priors", priors), ("gt_boxes", gt_boxes), ("gt_labels", gt_labels),
                   ("gt_mask", gt_mask)):
        check(t.device == pred_scores.device, name,
              f"pred_scores and {arg} must be on the same device, got {pred_scores.device} and {t.device}")
    check(center_radius == center_radius and abs(center_radius) != float("inf") and center_radius >= 0, name,
          f"center_radius must be a finite number >= 0, got {center_radius}")
    check(1 <= candidate_topk <= MAX_CANDIDATE_TOPK, name,
          f"candidate_topk must be in [1, {MAX_CANDIDATE_TOPK}], got {candidate_topk}")
    check(abs(iou_weight) != float("inf") and iou_weight == iou_weight, name, f"iou_weight must be finite, got {iou_weight}")
    check(abs(cls_weight) != float("inf") and cls_weight == cls_weight, name, f"cls_weight must be finite, got {cls_weight}")
    check(outside_cost == outside_cost, name, "outside_cost must be a number, got NaN")
    return b, a, g


@torch.library.register_fake("fastdet::simota_cost")
def _simota_cost_fake(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius=2.5,
                      iou_weight=3.0, cls_weight=1.0, center_only=False, outside_cost=1e5):
    b, a, g = _check_inputs("simota_cost", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                            center_radius, iou_weight, cls_weight, outside_cost)
    dtype = torch.float64 if pred_scores.dtype == torch.float64 else torch.float32
    return pred_scores.new_empty((b, g, a), dtype=dtype)


@torch.library.register_fake("fastdet::simota_assign")
def _simota_assign_fake(pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask, center_radius=2.5,
                        candidate_topk=10, iou_weight=3.0, cls_weight=1.0, center_only=False, outside_cost=1e5):
    b, a, _ = _check_inputs("simota_assign", pred_scores, pred_boxes, priors, gt_boxes, gt_labels, gt_mask,
                            center_radius, iou_weight, cls_weight, outside_cost, candidate_topk)
    long = dict(dtype=torch.int64)
    return (pred_scores.new_empty((b, a), **long), pred_scores.new_empty((b, a), **long),
            pred_scores.new_empty((b, a)), pred_scores.new_empty((b,), **long))


register_fp32_autocast("simota_cost")
register_fp32_autocast("simota_assign")
