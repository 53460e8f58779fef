"""IoU, GIoU, DIoU and CIoU in one fused kernel (`torch.ops.fastdet.box_iou`), and the IoU losses.

Boxes are (x1, y1, x2, y2). Pairwise: [N, 4] x [M, 4] -> [N, M], batched [B, N, 4] x [B, M, 4]
-> [B, N, M]; aligned (the losses' form): [..., 4] x [..., 4] -> [...].

Definitions (Rezatofighi et al. 2019 for GIoU, Zheng et al. 2020 for DIoU/CIoU):
    iou  = inter / (union + eps)
    giou = iou - (C - union) / (C + eps)              C: area of the smallest enclosing box
    diou = iou - rho^2 / (c^2 + eps)                  rho: centre distance, c: enclosing diagonal
    ciou = diou - alpha * v, v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2, alpha = v / (1 - iou + v + eps)
The gradient is the exact derivative of these values; for CIoU that includes alpha, which
torchvision's complete_box_iou_loss treats as a constant (so CIoU gradients differ from it slightly). fp16/bf16 inputs are computed
in fp32 and the result is returned in the input dtype.

NaN/Inf: a NaN coordinate gives NaN for every pair it takes part in (never an error); infinite
coordinates follow IEEE arithmetic. A 0 x 0 box has aspect angle 0 in CIoU (not NaN), and with
the default eps, zero-area boxes give iou 0 instead of torchvision's 0/0 = NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._registry import check, op, reduce_loss, register_fp32_autocast, register_no_double_backward

_MODES = ("iou", "giou", "diou", "ciou")


def box_iou(boxes1: Tensor, boxes2: Tensor, mode: str = "iou", aligned: bool = False, eps: float = 1e-7) -> Tensor:
    """IoU-family overlap of two sets of boxes.

    Args:
        boxes1: Tensor[N, 4] or Tensor[B, N, 4] (aligned: Tensor[..., 4]) in (x1, y1, x2, y2).
        boxes2: Tensor[M, 4] or Tensor[B, M, 4] (aligned: same shape as boxes1).
        mode: "iou", "giou", "diou" or "ciou".
        aligned: compare boxes1[k] with boxes2[k] only (returns Tensor[...]) instead of all pairs.
        eps: added to the denominators (union, enclosing area, enclosing diagonal). eps=0 gives
            exactly torchvision's box_iou / generalized_box_iou.

    Returns:
        Tensor[N, M], Tensor[B, N, M] or (aligned) Tensor[...], in the dtype of the boxes.
        Differentiable with respect to both inputs.

    Torchvision compatibility: ``box_iou(a, b)`` is ``torchvision.ops.box_iou(a, b)`` (up to eps).
    """
    return op("box_iou").default(boxes1, boxes2, mode, aligned, eps)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Drop-in for torchvision.ops.generalized_box_iou: pairwise GIoU, Tensor[N, M]."""
    return box_iou(boxes1, boxes2, "giou", eps=0.0)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Drop-in for torchvision.ops.distance_box_iou: pairwise DIoU, Tensor[N, M]."""
    return box_iou(boxes1, boxes2, "diou", eps=eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Drop-in for torchvision.ops.complete_box_iou: pairwise CIoU, Tensor[N, M]."""
    return box_iou(boxes1, boxes2, "ciou", eps=eps)


def _iou_family_loss(mode: str, boxes1: Tensor, boxes2: Tensor, reduction: str, eps: float) -> Tensor:
    loss = 1.0 - box_iou(boxes1, boxes2, mode, aligned=True, eps=eps)
    return reduce_loss(loss, reduction, f"{mode}_loss")


def iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """1 - IoU of aligned boxes [..., 4]; reduction "none" | "mean" | "sum" (torchvision semantics)."""
    return _iou_family_loss("iou", boxes1, boxes2, reduction, eps)


def giou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Drop-in for torchvision.ops.generalized_box_iou_loss: 1 - GIoU of aligned boxes."""
    return _iou_family_loss("giou", boxes1, boxes2, reduction, eps)


def diou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Drop-in for torchvision.ops.distance_box_iou_loss: 1 - DIoU of aligned boxes."""
    return _iou_family_loss("diou", boxes1, boxes2, reduction, eps)


def ciou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none", eps: float = 1e-7) -> Tensor:
    """Drop-in for torchvision.ops.complete_box_iou_loss: 1 - CIoU of aligned boxes."""
    return _iou_family_loss("ciou", boxes1, boxes2, reduction, eps)


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


def _check_and_out_shape(boxes1: Tensor, boxes2: Tensor, mode: str, aligned: bool) -> list:
    name = "box_iou"
    check(mode in _MODES, name, f"mode must be one of 'iou', 'giou', 'diou', 'ciou', got '{mode}'")
    check(boxes1.device == boxes2.device, name, f"boxes1 and boxes2 must be on the same device, got {boxes1.device} and {boxes2.device}")
    check(boxes1.dtype == boxes2.dtype, name, f"boxes1 and boxes2 must have the same dtype, got {boxes1.dtype} and {boxes2.dtype}")
    check(boxes1.dtype.is_floating_point, name, f"boxes1 must be a floating-point tensor, got {boxes1.dtype}")
    for arg, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        lo, hi = (1, 8) if aligned else (2, 3)
        check(lo <= b.dim() <= hi and b.shape[-1] == 4, name, f"{arg} must have shape [..., 4] with {lo} to {hi} dimensions, got {list(b.shape)}")
    if aligned:
        check(boxes1.shape == boxes2.shape, name, f"with aligned=True boxes1 and boxes2 must have the same shape, got {list(boxes1.shape)} and {list(boxes2.shape)}")
        return list(boxes1.shape[:-1])
    check(boxes1.dim() == boxes2.dim(), name, "boxes1 and boxes2 must both be [N, 4] and [M, 4] or both [B, N, 4] and [B, M, 4]")
    if boxes1.dim() == 3:
        check(boxes1.shape[0] == boxes2.shape[0], name, "boxes1 and boxes2 must have the same batch size")
        return [boxes1.shape[0], boxes1.shape[1], boxes2.shape[1]]
    return [boxes1.shape[0], boxes2.shape[0]]


@torch.library.register_fake("fastdet::box_iou")
def _box_iou_fake(boxes1, boxes2, mode="iou", aligned=False, eps=1e-7):
    return boxes1.new_empty(_check_and_out_shape(boxes1, boxes2, mode, aligned))


@torch.library.register_fake("fastdet::_box_iou_backward")
def _box_iou_backward_fake(grad, boxes1, boxes2, mode, aligned, eps):
    _check_and_out_shape(boxes1, boxes2, mode, aligned)
    return torch.empty_like(boxes1, memory_format=torch.contiguous_format), torch.empty_like(boxes2, memory_format=torch.contiguous_format)


# ---- autograd: backward is the op fastdet::_box_iou_backward --------------------------------------


def _setup_context(ctx, inputs, output):
    boxes1, boxes2, mode, aligned, eps = inputs
    ctx.save_for_backward(boxes1, boxes2)
    ctx.mode, ctx.aligned, ctx.eps = mode, aligned, eps


def _backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    g1, g2 = op("_box_iou_backward").default(grad, boxes1, boxes2, ctx.mode, ctx.aligned, ctx.eps)
    return (g1 if ctx.needs_input_grad[0] else None, g2 if ctx.needs_input_grad[1] else None, None, None, None)


torch.library.register_autograd("fastdet::box_iou", _backward, setup_context=_setup_context)
register_no_double_backward("_box_iou_backward")
register_fp32_autocast("box_iou")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Tiny CPU examples for `fastdet smoke` (the installed-wheel check): (output, differentiable inputs)."""
    from fastdet.testing import random_boxes

    g = torch.Generator().manual_seed(0)
    b1 = random_boxes(5, generator=g).requires_grad_()
    b2 = random_boxes(6, generator=g).requires_grad_()
    a1 = random_boxes(4, generator=g).requires_grad_()
    a2 = random_boxes(4, generator=g).requires_grad_()
    return [(box_iou(b1, b2, mode="giou"), (b1, b2)), (ciou_loss(a1, a2, reduction="none"), (a1, a2))]
