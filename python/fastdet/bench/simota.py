"""simota_assign: YOLOX label assignment (B images x 8400 anchors (640 px, strides 8/16/32) x 80
classes x G ground truths) against YOLOX's own per-image loop, YOLOXHead.get_assignments called once
per image as YOLOXHead.get_losses does (yolox 0.3.0; mode="gpu", which also runs on CPU tensors).
Without the yolox package the peer is fastdet's step-by-step loop reference. Both sides start from
the raw logits: fastdet's time includes sqrt(sigmoid(cls) * sigmoid(obj))."""

from __future__ import annotations

import importlib.util
import math

import torch

from fastdet import ops

from ._harness import Case

NUM_CLASSES = 80
STRIDES = (8, 16, 32)


def yolox_grid(image_size: int, strides=STRIDES, dtype=torch.float32, device="cpu"):
    """YOLOX anchor points: priors [A, 4] (center_x, center_y, stride, stride) with
    center = (shift + 0.5) * stride, and YOLOX's own x_shifts, y_shifts, expanded_strides [1, A]."""
    xs, ys, ss = [], [], []
    for s in strides:
        n = image_size // s
        yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((n * n,), s))
    x, y, s = (torch.cat(v).to(dtype=dtype, device=device) for v in (xs, ys, ss))
    priors = torch.stack([x * s + 0.5 * s, y * s + 0.5 * s, s, s], 1)
    return priors, x[None], y[None], s[None]


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def yolox_scene(batch: int, image_size: int, num_gt: int, num_classes: int = NUM_CLASSES, device="cpu", seed=0):
    """Detector-like raw outputs and ground truths: logits, predicted boxes around the anchor
    points (x1, y1, x2, y2), num_gt GTs per image with sides log-uniform in 8-256 px (COCO-like:
    median about 45 px at 640)."""
    g = torch.Generator().manual_seed(seed)
    priors, xs, ys, strides = yolox_grid(image_size)
    A = priors.shape[0]
    centers = torch.rand(batch, num_gt, 2, generator=g) * image_size
    wh = torch.exp(math.log(8) + torch.rand(batch, num_gt, 2, generator=g) * math.log(256 / 8))
    gt_boxes = torch.cat([centers - wh / 2, centers + wh / 2], -1)
    gt_labels = torch.randint(0, num_classes, (batch, num_gt), generator=g)
    pc = priors[:, :2] + torch.randn(batch, A, 2, generator=g) * priors[:, 2:] * 0.5
    pwh = priors[:, 2:] * 4 * torch.exp(torch.randn(batch, A, 2, generator=g) * 0.6)
    pred_boxes = torch.cat([pc - pwh / 2, pc + pwh / 2], -1)
    cls_logits = torch.randn(batch, A, num_classes, generator=g) * 2 - 3
    obj_logits = torch.randn(batch, A, 1, generator=g) * 2 - 2
    t = dict(priors=priors, x_shifts=xs, y_shifts=ys, strides=strides, gt_boxes=gt_boxes, gt_labels=gt_labels,
             gt_mask=torch.ones(batch, num_gt, dtype=torch.bool), pred_boxes=pred_boxes, cls_logits=cls_logits,
             obj_logits=obj_logits)
    return {k: v.to(device) for k, v in t.items()}


def fastdet_assign(s):
    scores = torch.sigmoid(s["cls_logits"]).mul_(s["obj_logits"].sigmoid()).sqrt_()
    return ops.simota_assign(scores, s["pred_boxes"], s["priors"], s["gt_boxes"], s["gt_labels"], s["gt_mask"])


class YoloxHeadMethods:
    """The YOLOXHead methods get_assignments needs, bound to a stand-in (no network is built)."""

    def __init__(self, num_classes: int):
        from yolox.models.yolo_head import YOLOXHead

        self.num_classes = num_classes
        self._cls = YOLOXHead

    def __getattr__(self, name):
        return getattr(self._cls, name).__get__(self)


def yolox_loop(head, s):
    """YOLOXHead.get_losses' assignment loop: get_assignments per image with its valid GTs
    (boxes as cxcywh, as YOLOX stores them)."""
    B, A, _ = s["cls_logits"].shape
    gt_xywh, pred_xywh = xyxy_to_cxcywh(s["gt_boxes"]), xyxy_to_cxcywh(s["pred_boxes"])
    out = []
    for b in range(B):
        valid = torch.nonzero(s["gt_mask"][b]).flatten()
        if valid.numel() == 0:
            out.append(None)
            continue
        out.append(head.get_assignments(
            b, valid.numel(), A, gt_xywh[b, valid], s["gt_labels"][b, valid].float(), pred_xywh[b], s["strides"],
            s["x_shifts"], s["y_shifts"], s["cls_logits"], pred_xywh, s["obj_logits"], None, None, mode="gpu"))
    return out


def reference_loop(s):
    from fastdet.ops._reference import simota as ref

    scores = (s["cls_logits"].sigmoid() * s["obj_logits"].sigmoid()).sqrt()
    return ref.simota_assign(scores, s["pred_boxes"], s["priors"], s["gt_boxes"], s["gt_labels"], s["gt_mask"])


def cases(device: str, sizes: list[int] | None = None, quick: bool = False) -> list[Case]:
    cuda = device.startswith("cuda")
    if quick and not cuda:
        configs = [(2, 320, 20)]
    elif cuda:
        configs = [(16, 640, 50), (16, 640, 100)]
    else:
        configs = [(8, 640, 50)]
    has_yolox = importlib.util.find_spec("yolox") is not None
    out = []
    for batch, image_size, num_gt in configs:
        n_anchors = sum((image_size // st) ** 2 for st in STRIDES)
        if sizes and n_anchors not in sizes:
            continue
        s = yolox_scene(batch, image_size, num_gt, device=device)
        if has_yolox:
            head = YoloxHeadMethods(NUM_CLASSES)
            peer, peer_name = (lambda s=s, h=head: yolox_loop(h, s)), "yolox 0.3.0 get_assignments (per-image loop)"
        else:
            peer, peer_name = (lambda s=s: reference_loop(s)), "fastdet loop reference (yolox not installed)"
        out.append(Case(
            op="simota_assign", label=f"B={batch} A={n_anchors} C={NUM_CLASSES} G={num_gt}", size=n_anchors, device=device,
            fastdet=lambda s=s: fastdet_assign(s), peer=peer, peer_name=peer_name,
        ))
    return out
