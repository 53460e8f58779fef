"""Losses for semantic segmentation: per-pixel logits Tensor[B, C, H, W] against a label map
Tensor[B, H, W] int64 (class indices, ``ignore_index`` for pixels that do not count).

Every loss is a mean over the pixels that count, and is 0 (with a gradient graph) when none does.

* cross_entropy: softmax cross-entropy (torchvision's segmentation reference recipe).
* dice_loss: soft Dice (Milletari et al. 2016, V-Net), 1 - mean over classes of
  (2 * sum p*t + smooth) / (sum p + sum t + smooth), sums over the batch's counted pixels.
* ce_dice_loss: cross_entropy + dice_weight * dice_loss.
* focal_loss: softmax focal loss (Lin et al. 2017), -alpha_t * (1 - p_t)**gamma * log p_t.
* segmentation_loss: a model's output dict -> {"loss_seg", "loss_aux"} (aux weighted 0.5 by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def _check(fn: str, logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """The bool mask [B, H, W] of counted pixels; errors for bad shapes or labels out of range."""
    if not isinstance(logits, Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"{fn}: logits must be a float Tensor[B, C, H, W], got "
                         f"{list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}")
    if not isinstance(target, Tensor) or target.dim() != 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        got = list(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{fn}: target must be a Tensor[B, H, W] = {[logits.shape[0], *logits.shape[2:]]} "
                         f"matching logits {list(logits.shape)}, got {got}")
    if target.dtype != torch.int64:
        raise ValueError(f"{fn}: target must be int64 class indices, got {target.dtype}")
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= logits.shape[1]))
    if bad.any():
        raise ValueError(f"{fn}: target holds label {int(target[bad][0])} outside [0, {logits.shape[1] - 1}] "
                         f"(and not ignore_index {ignore_index})")
    return valid


def _zero(logits: Tensor) -> Tensor:
    return logits.sum() * 0.0  # keeps the graph so backward() works on a batch with nothing to learn


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
                  weight: Tensor | None = None) -> Tensor:
    """Mean softmax cross-entropy over the counted pixels (class ``weight``s as in F.cross_entropy)."""
    valid = _check("cross_entropy", logits, target, ignore_index)
    if not valid.any():
        return _zero(logits)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def _probs_and_onehot(logits: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax probabilities and one-hot targets [B, C, H, W], both zero at ignored pixels."""
    probs = logits.float().softmax(dim=1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
    return probs, onehot


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> Tensor:
    """1 - the mean over classes of the soft Dice coefficient (see the module docstring)."""
    valid = _check("dice_loss", logits, target, ignore_index)
    if not valid.any():
        return _zero(logits)
    probs, onehot = _probs_and_onehot(logits, target, valid)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + smooth) / (total + smooth)).mean()


def ce_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, dice_weight: float = 1.0) -> Tensor:
    """cross_entropy + dice_weight * dice_loss."""
    return cross_entropy(logits, target, ignore_index) + dice_weight * dice_loss(logits, target, ignore_index)


def focal_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, gamma: float = 2.0,
               alpha: Sequence[float] | Tensor | None = None) -> Tensor:
    """Mean over counted pixels of -alpha[t] * (1 - p_t)**gamma * log p_t, p_t the softmax
    probability of the true class; ``alpha`` per class (None: 1 for all). gamma=0, alpha=None is
    the cross-entropy."""
    valid = _check("focal_loss", logits, target, ignore_index)
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    if not valid.any():
        return _zero(logits)
    log_p = logits.float().log_softmax(dim=1).permute(0, 2, 3, 1)[valid]  # [N, C] counted pixels
    t = target[valid]
    log_pt = log_p.gather(1, t[:, None])[:, 0]
    loss = -((1.0 - log_pt.exp()) ** gamma) * log_pt
    if alpha is not None:
        alpha = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if alpha.shape != (logits.shape[1],):
            raise ValueError(f"focal_loss: alpha needs one value per class ({logits.shape[1]}), got {list(alpha.shape)}")
        loss = loss * alpha[t]
    return loss.mean()


LOSSES = {"ce": cross_entropy, "dice": dice_loss, "ce_dice": ce_dice_loss, "focal": focal_loss}


def segmentation_loss(outputs: Mapping[str, Tensor], target: Tensor, loss: str = "ce", aux_weight: float = 0.5,
                      ignore_index: int = IGNORE_INDEX) -> dict[str, Tensor]:
    """The training losses of a segmenter's output dict: {"loss_seg": loss(out), "loss_aux":
    aux_weight * loss(aux)} ("loss_aux" only when the model returns "aux"). Their sum is what to
    minimise; with "ce" and 0.5 this is torchvision's reference recipe."""
    if loss not in LOSSES:
        raise ValueError(f"segmentation_loss: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not isinstance(outputs, Mapping) or "out" not in outputs:
        raise ValueError("segmentation_loss: outputs must be the model's dict with an 'out' entry")
    fn = LOSSES[loss]
    losses = {"loss_seg": fn(outputs["out"], target, ignore_index)}
    if outputs.get("aux") is not None:
        losses["loss_aux"] = aux_weight * fn(outputs["aux"], target, ignore_index)
    return losses
