"""The skeleton shared by one-stage (dense) detectors - RetinaNet, FCOS, and any detector that predicts
classes and boxes at every anchor or point of its feature maps:

    transform -> backbone -> head -> anchors -> training: compute_loss (family's matching + losses)
                                             -> eval: per-level top-k over score_thresh, decode, clip,
                                                fastdet.ops.batched_nms, detections_per_img,
                                                transform.postprocess

A family subclasses DenseDetector and supplies compute_loss, and the two post-processing hooks
class_scores (probabilities per anchor and class) and decode_boxes (the head's box regression ->
xyxy boxes); a detector whose post-processing differs (e.g. softmax scores per class) overrides
postprocess_detections. The call contract (inputs, outputs, errors) is torchvision's, as for the
R-CNNs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fastdet import ops

from ._utils import clip_boxes, transform_and_features


class DenseDetector(nn.Module):
    """transform -> backbone -> head -> anchors -> losses (train) or detections (eval).

    Args:
        backbone: module returning a Tensor or an OrderedDict of feature maps, with ``out_channels``.
        head: module mapping the list of feature maps to a dict of per-anchor outputs
            Tensor[B, sum_l H_l * W_l * A, K], at least ``cls_logits`` (K = num_classes) and
            ``bbox_regression`` (K = 4), in the anchor generator's order.
        anchor_generator: AnchorGenerator (anchors per image, Tensor[sum_l H_l * W_l * A, 4]).
        transform: RCNNTransform (normalise, resize, batch; detections back to the input sizes).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: post-processing: per level
            keep the topk_candidates best (anchor, class) scores above score_thresh, then NMS per
            class at nms_thresh over all levels, then the detections_per_img best.

    forward(images: list[Tensor[3, H, W]] in [0, 1], targets=None):
      train mode: targets list[dict(boxes Tensor[N, 4] float xyxy, labels Tensor[N] int64 in
      [0, num_classes))] -> dict of scalar losses; eval mode: list[dict(boxes Tensor[K, 4] xyxy in
      input pixels, scores Tensor[K], labels Tensor[K] int64)].
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, anchor_generator: nn.Module, transform: nn.Module, *,
                 score_thresh: float, nms_thresh: float, detections_per_img: int, topk_candidates: int):
        super().__init__()
        name = type(self).__name__
        if not hasattr(backbone, "out_channels"):
            raise ValueError(f"{name}: backbone must have an attribute out_channels (the channels of every feature map)")
        for arg, value in (("detections_per_img", detections_per_img), ("topk_candidates", topk_candidates)):
            if int(value) < 1:
                raise ValueError(f"{name}: {arg} must be >= 1, got {value}")
        self.transform = transform
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.head = head
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = int(detections_per_img)
        self.topk_candidates = int(topk_candidates)

    # ---- what a family supplies ----

    def compute_loss(self, targets: list[dict], head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     num_anchors_per_level: list[int]) -> dict[str, Tensor]:
        raise NotImplementedError

    def class_scores(self, head_outputs: dict[str, Tensor]) -> Tensor:
        """Tensor[B, A, C] detection scores in [0, 1] for every anchor and class."""
        raise NotImplementedError

    def decode_boxes(self, regression: Tensor, anchors: Tensor) -> Tensor:
        """xyxy boxes Tensor[N, 4] from the head's regression Tensor[N, 4] at anchors Tensor[N, 4]."""
        raise NotImplementedError

    # ---- shared ----

    def check_targets(self, targets: list[dict], num_classes: int) -> None:
        name = type(self).__name__
        for i, t in enumerate(targets):
            labels = t.get("labels")
            if not isinstance(labels, Tensor):
                raise ValueError(f"{name}: targets[{i}] has no 'labels' Tensor[N]")
            if labels.dtype != torch.int64:
                raise TypeError(f"{name}: targets[{i}]['labels'] must be int64, got {labels.dtype}")
            if labels.shape != t["boxes"].shape[:1]:
                raise ValueError(f"{name}: targets[{i}]['labels'] must have shape [{t['boxes'].shape[0]}] (one per box), "
                                 f"got {list(labels.shape)}")
            if labels.numel() and not bool(((labels >= 0) & (labels < num_classes)).all()):
                raise ValueError(f"{name}: targets[{i}]['labels'] must be in [0, {num_classes}), got "
                                 f"{labels.min().item()}..{labels.max().item()}")
            if not t["boxes"].is_floating_point():
                raise TypeError(f"{name}: targets[{i}]['boxes'] must be floating point, got {t['boxes'].dtype}")

    def postprocess_detections(self, head_outputs: dict[str, Tensor], anchors: list[Tensor],
                               num_anchors_per_level: list[int], image_sizes) -> list[dict[str, Tensor]]:
        scores = self.class_scores(head_outputs)
        regression = head_outputs["bbox_regression"]
        results = []
        for img_scores, img_regression, img_anchors, size in zip(scores, regression, anchors, image_sizes):
            boxes, kept, labels = [], [], []
            for lvl_scores, lvl_regression, lvl_anchors in zip(img_scores.split(num_anchors_per_level),
                                                                img_regression.split(num_anchors_per_level),
                                                                img_anchors.split(num_anchors_per_level)):
                top, anchor_idx, lvl_labels = top_scores(lvl_scores, self.score_thresh, self.topk_candidates)
                boxes.append(clip_boxes(self.decode_boxes(lvl_regression[anchor_idx], lvl_anchors[anchor_idx]), size))
                kept.append(top)
                labels.append(lvl_labels)
            boxes, kept, labels = torch.cat(boxes), torch.cat(kept), torch.cat(labels)
            keep = ops.batched_nms(boxes, kept, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": kept[keep], "labels": labels[keep]})
        return results

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        batch, targets, original_sizes, features = transform_and_features(self, images, targets)
        head_outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)
        locations = [int(f.shape[-2] * f.shape[-1]) for f in features]
        per_location = head_outputs["cls_logits"].shape[1] // sum(locations)
        num_anchors_per_level = [n * per_location for n in locations]
        if self.training:
            self.check_targets(targets, head_outputs["cls_logits"].shape[-1])
            return self.compute_loss(targets, head_outputs, anchors, num_anchors_per_level)
        detections = self.postprocess_detections(head_outputs, anchors, num_anchors_per_level, batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def top_scores(scores: Tensor, score_thresh: float, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The (at most) k best entries above score_thresh of a level's scores Tensor[A, C], best first:
    (scores Tensor[K], anchor indices Tensor[K], class labels Tensor[K])."""
    num_classes = scores.shape[-1]
    flat = scores.flatten()
    idx = torch.where(flat > score_thresh)[0]
    top, order = flat[idx].topk(min(k, idx.numel()))
    idx = idx[order]
    return top, torch.div(idx, num_classes, rounding_mode="floor"), idx % num_classes


def matched_targets(targets: list[dict], matched_idxs: list[Tensor], key: str) -> Tensor:
    """targets[i][key][matched_idxs[i]] for every image, stacked: Tensor[B, A, ...]. Unmatched
    anchors (index < 0) get the first target's values, or zeros in an image without targets; mask
    them out with matched_idxs >= 0."""
    out = []
    for t, m in zip(targets, matched_idxs):
        values = t[key]
        if values.shape[0] == 0:
            out.append(values.new_zeros((m.shape[0], *values.shape[1:])))
        else:
            out.append(values[m.clamp(min=0)])
    return torch.stack(out)
