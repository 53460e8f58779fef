"""Box and mask heads of Faster / Mask R-CNN (Ren et al. 2015; He et al. 2017), torchvision
state-dict compatible, pooling with fastdet.ops.MultiScaleRoIAlign and NMS with
fastdet.ops.batched_nms."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastdet import ops

from ._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher, clip_boxes, keep_large, pairwise_iou
from .rpn import conv_block, rename_legacy_keys


# ---- heads ----------------------------------------------------------------------------------------------


def _init_convs(module: nn.Module) -> None:
    """He (fan-out) initialisation of every Conv2d, zero biases (torchvision's head init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class TwoMLPHead(nn.Module):
    """Flatten the pooled RoI features, then two fully connected layers with ReLU (fc6, fc7).

    forward(Tensor[K, C, P, P]) -> Tensor[K, representation_size].
    """

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class FastRCNNConvFCHead(nn.Sequential):
    """Convolutions (3x3, optional norm, ReLU) then fully connected layers (Faster R-CNN v2's box head).

    Args:
        input_size: (C, H, W) of the pooled features.
        conv_layers: output channels of each convolution.
        fc_layers: output sizes of each fully connected layer.
        norm_layer: e.g. nn.BatchNorm2d, or None (then the convs have a bias).
    """

    def __init__(self, input_size: tuple[int, int, int], conv_layers: list[int], fc_layers: list[int],
                 norm_layer=None):
        c, h, w = input_size
        blocks: list[nn.Module] = []
        for out in conv_layers:
            blocks.append(conv_block(c, out, norm_layer))
            c = out
        blocks.append(nn.Flatten())
        n = c * h * w
        for out in fc_layers:
            blocks += [nn.Linear(n, out), nn.ReLU(inplace=True)]
            n = out
        super().__init__(*blocks)
        _init_convs(self)


class FastRCNNPredictor(nn.Module):
    """Class logits (cls_score) and per-class box deltas (bbox_pred) from the box head's output.

    forward(Tensor[K, in_channels] or [K, in_channels, 1, 1]) -> (Tensor[K, num_classes],
    Tensor[K, num_classes * 4]).
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() == 4 and list(x.shape[2:]) != [1, 1]:
            raise ValueError(f"FastRCNNPredictor: 4-D input must be [K, C, 1, 1], got {list(x.shape)}")
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNHeads(nn.Sequential):
    """The mask branch's convolutions: one 3x3 conv (+ optional norm) + ReLU per entry of ``layers``.

    Checkpoints with the old keys ``mask_fcn{i}.weight`` (before torchvision 0.13) load too.
    """

    _version = 2

    def __init__(self, in_channels: int, layers, dilation: int, norm_layer=None):
        blocks = []
        for out in layers:
            blocks.append(conv_block(in_channels, out, norm_layer, dilation=dilation))
            in_channels = out
        super().__init__(*blocks)
        _init_convs(self)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        renames = [(f"mask_fcn{i + 1}.{kind}", f"{i}.0.{kind}") for i in range(len(self)) for kind in ("weight", "bias")]
        rename_legacy_keys(state_dict, prefix, renames)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class MaskRCNNPredictor(nn.Sequential):
    """2x transposed conv + ReLU, then 1x1 conv to one mask logit map per class.

    forward(Tensor[K, in_channels, S, S]) -> Tensor[K, num_classes, 2S, 2S].
    """

    def __init__(self, in_channels: int, dim_reduced: int, num_classes: int):
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(in_channels, dim_reduced, 2, 2, 0)),
            ("relu", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(dim_reduced, num_classes, 1, 1, 0)),
        ]))
        for name, p in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")


# ---- losses and mask post-processing -----------------------------------------------------------------


def fastrcnn_loss(class_logits: Tensor, box_deltas: Tensor, labels: Tensor, reg_targets: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the sampled RoIs and smooth-L1 (beta 1/9) on the positives' deltas of their
    gt class, summed and divided by the number of sampled RoIs."""
    cls_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[pos, labels[pos]]
    box_loss = F.smooth_l1_loss(deltas, reg_targets[pos], beta=1 / 9, reduction="sum") / labels.numel()
    return cls_loss, box_loss


def mask_targets(gt_masks: Tensor, boxes: Tensor, matched: Tensor, size: int) -> Tensor:
    """The gt masks cropped to the RoIs and resampled to size x size (fastdet.ops.roi_align, legacy
    alignment as in Mask R-CNN), Tensor[K, size, size] in [0, 1]."""
    rois = torch.cat([matched.to(boxes)[:, None], boxes], dim=1)
    return ops.roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0)[:, 0]


def maskrcnn_loss(mask_logits: Tensor, proposals: list[Tensor], gt_masks: list[Tensor], gt_labels: list[Tensor],
                  matched: list[Tensor]) -> Tensor:
    """Binary cross-entropy between each positive RoI's mask logits of its gt class and the gt mask
    cropped to the RoI."""
    m = mask_logits.shape[-1]
    labels = torch.cat([lab[idx] for lab, idx in zip(gt_labels, matched)])
    targets = torch.cat([mask_targets(g, p, i, m) for g, p, i in zip(gt_masks, proposals, matched)])
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    picked = mask_logits[torch.arange(labels.shape[0], device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(picked, targets)


def paste_masks_in_image(masks: Tensor, boxes: Tensor, image_size, padding: int = 1) -> Tensor:
    """Paste fixed-size mask probabilities Tensor[N, 1, M, M] into full images at their boxes
    Tensor[N, 4] (xyxy pixels): Tensor[N, 1, H, W] (zero outside the boxes).

    As in Mask R-CNN / torchvision: the mask is padded by ``padding`` pixels and the box enlarged
    by the same ratio, the box is truncated to whole pixels, the mask is resized bilinearly
    (align_corners=False) to the box and the part inside the image is copied. The output is
    allocated once (no per-mask full-image temporaries).
    """
    h, w = int(image_size[0]), int(image_size[1])
    n, m = masks.shape[0], masks.shape[-1]
    out = masks.new_zeros((n, 1, h, w))
    if n == 0:
        return out
    masks = F.pad(masks, (padding,) * 4)
    scale = float(m + 2 * padding) / m
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    ints = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=1).to(torch.int64).tolist()
    for i, (x0, y0, x1, y1) in enumerate(ints):
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x1 + 1, w), min(y1 + 1, h)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        resized = F.interpolate(masks[i : i + 1], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
        out[i, 0, iy0:iy1, ix0:ix1] = resized[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    return out


# ---- RoI heads ------------------------------------------------------------------------------------------


class RoIHeads(nn.Module):
    """Second stage: pool each proposal (``box_roi_pool``), classify and refine it; with the three
    mask modules, predict a mask for each detection.

    Training: the gt boxes are added to the proposals, proposals are matched to gt (IoU >=
    fg_iou_thresh foreground, < bg_iou_thresh background), ``batch_size_per_image`` are sampled with
    ``positive_fraction`` positives, and the losses loss_classifier, loss_box_reg (and loss_mask)
    are returned. Eval: per class softmax scores > score_thresh, boxes decoded with
    ``bbox_reg_weights`` (default (10, 10, 5, 5)) and clipped, boxes under 0.01 px dropped, NMS per
    class at nms_thresh, the best ``detections_per_img`` kept; results
    list[dict(boxes, labels, scores[, masks Tensor[N, 1, M, M] probabilities])] in the resized frame.
    """

    def __init__(self, box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, batch_size_per_image,
                 positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                 mask_roi_pool=None, mask_head=None, mask_predictor=None):
        super().__init__()
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(bbox_reg_weights if bbox_reg_weights is not None else (10.0, 10.0, 5.0, 5.0))
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_head = mask_head
        self.mask_predictor = mask_predictor

    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None and self.mask_head is not None and self.mask_predictor is not None

    def check_targets(self, targets) -> None:
        if targets is None:
            raise ValueError("RoIHeads: targets are required in training mode")
        for i, t in enumerate(targets):
            for key in ("boxes", "labels") + (("masks",) if self.has_mask() else ()):
                if key not in t:
                    raise ValueError(f"RoIHeads: targets[{i}] has no '{key}'")
            if not t["boxes"].is_floating_point():
                raise TypeError(f"RoIHeads: targets[{i}]['boxes'] must be floating point, got {t['boxes'].dtype}")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"RoIHeads: targets[{i}]['labels'] must be int64, got {t['labels'].dtype}")

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict]):
        """Per image: sampled proposals, their matched gt index, class label and regression target."""
        dtype, device = proposals[0].dtype, proposals[0].device
        out_props, out_matched, out_labels, out_targets = [], [], [], []
        sampled_labels, sampled_info = [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(dtype)
            props = torch.cat((props, gt))
            if gt.numel() == 0:
                matched = torch.zeros(props.shape[0], dtype=torch.int64, device=device)
                labels = torch.zeros(props.shape[0], dtype=torch.int64, device=device)
            else:
                m = self.proposal_matcher(pairwise_iou(gt, props))
                matched = m.clamp(min=0)
                labels = t["labels"][matched].to(torch.int64)
                labels[m == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[m == Matcher.BETWEEN_THRESHOLDS] = -1
            sampled_labels.append(labels)
            sampled_info.append((props, matched, gt))
        pos, neg = self.fg_bg_sampler(sampled_labels)
        for (props, matched, gt), labels, p, n in zip(sampled_info, sampled_labels, pos, neg):
            keep = torch.where(p | n)[0]
            props, matched, labels = props[keep], matched[keep], labels[keep]
            if gt.numel() == 0:
                gt = torch.zeros((1, 4), dtype=dtype, device=device)
            out_props.append(props)
            out_matched.append(matched)
            out_labels.append(labels)
            out_targets.append(self.box_coder.encode(gt[matched], props))
        return out_props, out_matched, out_labels, out_targets

    def postprocess_detections(self, class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor],
                               image_sizes) -> list[dict]:
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        boxes_all = self.box_coder.decode(box_deltas, torch.cat(proposals)).split(counts)
        scores_all = F.softmax(class_logits, -1).split(counts)
        results = []
        for boxes, scores, size in zip(boxes_all, scores_all, image_sizes):
            boxes = clip_boxes(boxes, size)[:, 1:].reshape(-1, 4)  # drop the background column
            labels = torch.arange(1, num_classes, device=scores.device).repeat(scores.shape[0])
            scores = scores[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = keep_large(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
        return results

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_sizes, targets=None):
        matched = labels = reg_targets = None
        if self.training:
            self.check_targets(targets)
            proposals, matched, labels, reg_targets = self.select_training_samples(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_sizes))
        class_logits, box_deltas = self.box_predictor(x)
        losses: dict[str, Tensor] = {}
        result: list[dict] = []
        if self.training:
            cls_loss, box_loss = fastrcnn_loss(class_logits, box_deltas, torch.cat(labels), torch.cat(reg_targets))
            losses = {"loss_classifier": cls_loss, "loss_box_reg": box_loss}
        else:
            result = self.postprocess_detections(class_logits, box_deltas, proposals, image_sizes)
        if self.has_mask():
            if self.training:
                pos = [torch.where(lab > 0)[0] for lab in labels]
                mask_props = [p[i] for p, i in zip(proposals, pos)]
                mask_matched = [m[i] for m, i in zip(matched, pos)]
            else:
                mask_props = [r["boxes"] for r in result]
            logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_props, image_sizes)))
            if self.training:
                losses["loss_mask"] = maskrcnn_loss(logits, mask_props, [t["masks"] for t in targets],
                                                    [t["labels"] for t in targets], mask_matched)
            else:
                det_labels = torch.cat([r["labels"] for r in result])
                probs = logits[torch.arange(det_labels.shape[0], device=det_labels.device), det_labels][:, None].sigmoid()
                for r, p in zip(result, probs.split([r["labels"].shape[0] for r in result])):
                    r["masks"] = p
        return result, losses
