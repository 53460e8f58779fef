"""Reference sigmoid focal loss, written from the definition with plain torch ops (autograd-friendly).

Same contract as fastdet.ops.sigmoid_focal_loss: dense (soft) float targets of the logits' shape or
int64 class indices of shape inputs.shape[:-1] (value C = background), optional per-element,
per-sample or per-class weight, reduction none / mean (over inputs.numel(), 0 when empty) / sum.
Math in float64 for float64 inputs and float32 otherwise; the result in the inputs' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dense_targets(inputs: Tensor, targets: Tensor) -> Tensor:
    """Class indices [...] in [0, C] -> one-hot [..., C] (index C: an all-zero row)."""
    c = inputs.shape[-1]
    return F.one_hot(targets, c + 1)[..., :c].to(inputs.dtype)


def _expand_weight(inputs: Tensor, weight: Tensor) -> Tensor:
    if weight.shape == inputs.shape:
        return weight
    if list(weight.shape) == list(inputs.shape[:-1]):  # per sample
        return weight.unsqueeze(-1).expand(inputs.shape)
    return weight.expand(inputs.shape)  # [..., 1] per sample, [C] / [1, ..., C] per class


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none", weight: Tensor | None = None) -> Tensor:
    dtype = inputs.dtype
    math = torch.float64 if dtype == torch.float64 else torch.float32
    x = inputs.to(math)
    t = dense_targets(x, targets) if targets.dtype == torch.int64 else targets.to(dtype).to(math)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if weight is not None:
        loss = loss * _expand_weight(x, weight.to(dtype).to(math))
    if reduction == "mean":
        loss = loss.sum() / max(loss.numel(), 1)
    elif reduction == "sum":
        loss = loss.sum()
    return loss.to(dtype)
