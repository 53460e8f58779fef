"""Region Proposal Network (Faster R-CNN, Ren et al. 2015) with torchvision-compatible weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from ._utils import (BalancedPositiveNegativeSampler, BoxCoder, Matcher, anchor_major, clip_boxes, keep_large,
                     pairwise_iou)


def conv_block(in_channels: int, out_channels: int, norm_layer=None, kernel_size: int = 3, dilation: int = 1,
               stride: int = 1) -> nn.Sequential:
    """Conv (bias only without a norm) -> optional norm -> ReLU, with the child names (0, 1, 2) of
    torchvision's Conv2dNormActivation so that state-dict keys agree."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                         padding=(kernel_size - 1) // 2 * dilation, dilation=dilation,
                                         bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def rename_legacy_keys(state_dict: dict, prefix: str, renames: list[tuple[str, str]]) -> None:
    """Move old-style checkpoint keys (prefix + old) to their current names (prefix + new), in place,
    where the new key is not already there."""
    for old, new in renames:
        if prefix + old in state_dict and prefix + new not in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class RPNHead(nn.Module):
    """Objectness logits and box deltas for every anchor: ``conv_depth`` 3x3 conv+ReLU blocks shared
    by all levels, then 1x1 convs to A logits and 4A deltas.

    forward(features: list[Tensor[B, C, H_l, W_l]]) -> (list[Tensor[B, A, H_l, W_l]],
    list[Tensor[B, 4A, H_l, W_l]]). Checkpoints with the old key ``conv.weight`` (before
    torchvision 0.13) load too.
    """

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1, norm_layer=None):
        super().__init__()
        self.conv = nn.Sequential(*[conv_block(in_channels, in_channels, norm_layer) for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        rename_legacy_keys(state_dict, prefix, [("conv.weight", "conv.0.0.weight"), ("conv.bias", "conv.0.0.bias")])
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = self.conv(f)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_predictions(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """[B, A*C, H, W] per level -> Tensor[B * sum(H*W*A), C] in anchor order (location-major, then
    anchor), for the logits (C = 1 here) and the deltas (C = 4)."""

    a = [d.shape[1] // 4 for d in deltas]
    cls = torch.cat([anchor_major(x, x.shape[1] // n) for x, n in zip(logits, a)], dim=1)
    reg = torch.cat([anchor_major(x, 4) for x in deltas], dim=1)
    return cls.flatten(0, -2), reg.reshape(-1, 4)


class RegionProposalNetwork(nn.Module):
    """Proposals from anchors: decode the head's deltas, keep the ``pre_nms_top_n`` best anchors per
    level and image, clip to the image, drop boxes smaller than 1e-3 px and scores below
    ``score_thresh``, NMS per level (``fastdet.ops.batched_nms``), keep ``post_nms_top_n``.

    Training adds the RPN losses: anchors matched to ground truth (IoU >= fg_iou_thresh positive,
    < bg_iou_thresh negative, each gt's best anchors positive), ``batch_size_per_image`` sampled
    with ``positive_fraction`` positives; binary cross-entropy on objectness and smooth-L1
    (beta 1/9) on the positives' deltas, both normalised by the sample count.

    pre_nms_top_n / post_nms_top_n: dicts with "training" and "testing" counts.
    forward(images: ImageList, features: dict[str, Tensor], targets=None) ->
    (list[Tensor[P_i, 4]] proposals in the resized frame, dict of losses (empty in eval)).
    """

    def __init__(self, anchor_generator, head: nn.Module, fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float, pre_nms_top_n: dict, post_nms_top_n: dict,
                 nms_thresh: float, score_thresh: float = 0.0):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_sizes, num_per_level: list[int]
                         ) -> tuple[list[Tensor], list[Tensor]]:
        """proposals Tensor[B, A, 4], objectness logits Tensor[B * A] -> per image (boxes, scores)."""
        b = proposals.shape[0]
        objectness = objectness.detach().reshape(b, -1)
        top_idx, top_lvl = [], []
        offset = 0
        for lvl, ob in enumerate(objectness.split(num_per_level, dim=1)):
            k = min(self.pre_nms_top_n(), ob.shape[1])
            idx = ob.topk(k, dim=1).indices
            top_idx.append(idx + offset)
            top_lvl.append(torch.full_like(idx, lvl))
            offset += ob.shape[1]
        idx = torch.cat(top_idx, dim=1)
        levels = torch.cat(top_lvl, dim=1)
        scores = torch.sigmoid(torch.gather(objectness, 1, idx))
        boxes = torch.gather(proposals, 1, idx[..., None].expand(-1, -1, 4))
        out_boxes, out_scores = [], []
        for bx, sc, lv, size in zip(boxes, scores, levels, image_sizes):
            bx = clip_boxes(bx, size)
            keep = keep_large(bx, self.min_size)
            keep = keep[sc[keep] >= self.score_thresh]  # also drops NaN scores
            bx, sc, lv = bx[keep], sc[keep], lv[keep]
            keep = ops.batched_nms(bx, sc, lv, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(bx[keep])
            out_scores.append(sc[keep])
        return out_boxes, out_scores

    def assign_targets(self, anchors: list[Tensor], targets: list[dict]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: labels Tensor[A] (1 fg, 0 bg, -1 ignored) and the matched gt boxes Tensor[A, 4]."""
        labels, matched = [], []
        for anc, t in zip(anchors, targets):
            gt = t["boxes"]
            if gt.numel() == 0:
                labels.append(torch.zeros(anc.shape[0], dtype=torch.float32, device=anc.device))
                matched.append(torch.zeros(anc.shape, dtype=torch.float32, device=anc.device))
                continue
            m = self.proposal_matcher(pairwise_iou(gt, anc))
            matched.append(gt[m.clamp(min=0)])
            lab = (m >= 0).to(torch.float32)
            lab[m == Matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
        return labels, matched

    def compute_loss(self, objectness: Tensor, deltas: Tensor, labels: list[Tensor], reg_targets: Tensor
                     ) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        neg = torch.where(torch.cat(neg))[0]
        sampled = torch.cat([pos, neg])
        labels = torch.cat(labels)
        box_loss = F.smooth_l1_loss(deltas[pos], reg_targets[pos], beta=1 / 9, reduction="sum") / sampled.numel()
        obj_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return obj_loss, box_loss

    def forward(self, images, features: dict[str, Tensor], targets: list[dict] | None = None):
        feats = list(features.values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_per_level = [int(o.shape[1] * o.shape[2] * o.shape[3]) for o in logits]
        objectness, deltas = flatten_predictions(logits, deltas)
        b = len(anchors)
        all_anchors = torch.cat(anchors)
        proposals = self.box_coder.decode(deltas.detach(), all_anchors).reshape(b, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork: targets are required in training mode")
            labels, matched = self.assign_targets(anchors, targets)
            reg_targets = self.box_coder.encode(torch.cat(matched), all_anchors)
            obj_loss, box_loss = self.compute_loss(objectness, deltas, labels, reg_targets)
            losses = {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}
        return boxes, losses
