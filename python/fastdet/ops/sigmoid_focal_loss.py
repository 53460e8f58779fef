"""Sigmoid focal loss (Lin et al., ICCV 2017) as one fused kernel: `torch.ops.fastdet.sigmoid_focal_loss`.

Two target forms:

* dense float targets of the logits' shape, as ``torchvision.ops.sigmoid_focal_loss`` (soft
  targets in [0, 1] allowed: quality/varifocal-style labels);
* int64 class indices of shape ``inputs.shape[:-1]`` (``[N]`` for logits ``[N, C]``), as mmcv's
  ``sigmoid_focal_loss``: index ``c`` is the one-hot target of class ``c`` and the value ``C``
  means background (all-zero target row).

Per element, with ``p = sigmoid(x)``, ``p_t = p t + (1 - p)(1 - t)``:
``loss = alpha_t * BCE_with_logits(x, t) * (1 - p_t) ** gamma``,
``alpha_t = alpha t + (1 - alpha)(1 - t)``; ``alpha < 0`` disables the alpha term (alpha_t = 1),
as torchvision. ``gamma = 0`` is the (alpha-weighted) binary cross-entropy.

Numerics: forward and backward compute in fp32 for fp16/bf16 inputs (fp64 for fp64) from
``exp(-|x|)`` and ``log1p`` only, so no ``log(0)`` is ever taken: logits of +-100 give finite
losses and gradients in every dtype (mmcv's kernel returns NaN there in fp16, mmcv#1488). NaN
logits give NaN losses. The result is returned in the inputs' dtype; 'mean'/'sum' accumulate in
fp32/fp64 and, on CPU and CUDA alike, in a fixed order (deterministic).

Differences from torchvision: the mean of an empty input is 0 (torchvision: NaN); dense targets
of another floating dtype are converted to the inputs' dtype first; targets and weight receive no
gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import check, op, register_fp32_autocast, register_no_double_backward

_REDUCTIONS = ("none", "mean", "sum")


def sigmoid_focal_loss(inputs: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "none", weight: Tensor | None = None) -> Tensor:
    """Sigmoid focal loss of logits against dense (soft) or class-index targets.

    Args:
        inputs: Tensor[..., C] of logits (fp16, bf16, fp32 or fp64); a 0-d or 1-d tensor is fine
            with dense targets.
        targets: either a floating Tensor of the inputs' shape with values in [0, 1] (dense /
            soft targets, torchvision semantics), or an int64 Tensor of shape inputs.shape[:-1]
            (e.g. [N] for inputs [N, C]) of class indices in [0, C], C meaning background (mmcv
            semantics). Out-of-range indices raise a RuntimeError (on CUDA this check costs one
            device-to-host synchronisation; it is skipped while a CUDA graph is being captured,
            where such indices count as background).
        alpha: weight of the positive term, in [0, 1]; alpha < 0 disables the alpha term. Default 0.25.
        gamma: focusing exponent, >= 0. Default 2 (2 has a fast path; other values use a power).
        reduction: "none" (loss per element, the inputs' shape), "mean" (sum / inputs.numel(),
            the mean of nothing being 0) or "sum".
        weight: optional multiplier of the per-element loss, of one of these shapes:
            the inputs' shape (per element); inputs.shape[:-1] or inputs.shape[:-1] + [1] (per
            sample, e.g. [N] or [N, 1]); [C] or [1, ..., 1, C] (per class). A 1-d weight of
            length N = C for 2-d inputs [N, N] is ambiguous and raises: pass [N, 1] or [1, C].
            'mean' divides the weighted sum by inputs.numel() (mmcv's convention; divide a
            'sum' by your own normaliser, e.g. the number of positives, for mmdet's avg_factor).

    Returns:
        The loss in the inputs' dtype: Tensor of the inputs' shape for "none", a scalar otherwise.
        Differentiable with respect to inputs only.

    ``sigmoid_focal_loss(x, t, a, g, r)`` with dense targets is ``torchvision.ops.sigmoid_focal_loss(x, t, a, g, r)``.
    """
    return op("sigmoid_focal_loss").default(inputs, targets, float(alpha), float(gamma), reduction, weight)


class SigmoidFocalLoss(nn.Module):
    """nn.Module form of :func:`sigmoid_focal_loss`:
    ``SigmoidFocalLoss(alpha=0.25, gamma=2.0, reduction="mean")(inputs, targets, weight=None)``."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "mean"):
        super().__init__()
        check(reduction in _REDUCTIONS, "sigmoid_focal_loss", f"reduction must be 'none', 'mean' or 'sum', got '{reduction}'")
        self.alpha, self.gamma, self.reduction = float(alpha), float(gamma), reduction

    def forward(self, inputs: Tensor, targets: Tensor, weight: Tensor | None = None) -> Tensor:
        return sigmoid_focal_loss(inputs, targets, self.alpha, self.gamma, self.reduction, weight)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


def _check(name: str, inputs, targets, alpha, gamma, reduction, weight) -> None:
    check(reduction in _REDUCTIONS, name, f"reduction must be 'none', 'mean' or 'sum', got '{reduction}'")
    check(inputs.dtype.is_floating_point, name,
          f"inputs must be a floating-point tensor (float16, bfloat16, float32 or float64), got {inputs.dtype}")
    check(alpha == alpha, name, "alpha must be a number (< 0 disables the alpha term), got NaN")
    check(gamma >= 0 and gamma != float("inf"), name, f"gamma must be finite and >= 0, got {gamma}")
    check(inputs.device == targets.device, name,
          f"inputs and targets must be on the same device, got {inputs.device} and {targets.device}")
    lead = list(inputs.shape[:-1]) if inputs.dim() > 0 else []
    cols = inputs.shape[-1] if inputs.dim() > 0 else 1
    if targets.dtype == torch.int64:
        check(inputs.dim() >= 1 and list(targets.shape) == lead, name,
              f"class-index targets (int64) must have shape inputs.shape[:-1] (e.g. [N] for inputs [N, C]), "
              f"got targets {list(targets.shape)} for inputs {list(inputs.shape)}")
    else:
        check(targets.dtype.is_floating_point, name,
              "targets must be a floating tensor of the inputs' shape (dense, soft targets in [0, 1]) or an int64 "
              f"tensor of class indices, got {targets.dtype}")
        check(targets.shape == inputs.shape, name,
              f"dense targets must have the inputs' shape {list(inputs.shape)}, got {list(targets.shape)}")
    if weight is None:
        return
    check(inputs.device == weight.device, name, f"inputs and weight must be on the same device, got {inputs.device} and {weight.device}")
    check(weight.dtype.is_floating_point, name,
          f"weight must be a floating-point tensor (float16, bfloat16, float32 or float64), got {weight.dtype}")
    ws, d = list(weight.shape), inputs.dim()
    element = ws == list(inputs.shape)
    sample = d >= 1 and (ws == lead or (len(ws) == d and ws[:-1] == lead and ws[-1] == 1)) and not element
    klass = d >= 1 and ((len(ws) == 1 and ws[0] == cols) or (len(ws) == d and ws[-1] == cols and weight.numel() == cols)) and not element
    check(element or sample or klass, name,
          f"weight must have the inputs' shape {list(inputs.shape)} (per element), inputs.shape[:-1] (per sample) "
          f"or [C] = [{cols}] (per class), got {ws}")
    check(not (sample and klass), name, f"weight of shape {ws} is ambiguous for inputs {list(inputs.shape)}")


@torch.library.register_fake("fastdet::sigmoid_focal_loss")
def _sigmoid_focal_loss_fake(inputs, targets, alpha=0.25, gamma=2.0, reduction="none", weight=None):
    _check("sigmoid_focal_loss", inputs, targets, alpha, gamma, reduction, weight)
    return inputs.new_empty(inputs.shape if reduction == "none" else ())


@torch.library.register_fake("fastdet::_sigmoid_focal_loss_backward")
def _sigmoid_focal_loss_backward_fake(grad, inputs, targets, alpha, gamma, reduction, weight):
    name = "_sigmoid_focal_loss_backward"
    _check(name, inputs, targets, alpha, gamma, reduction, weight)
    expected = list(inputs.shape) if reduction == "none" else []
    check(list(grad.shape) == expected, name, f"grad must have the forward output's shape {expected}, got {list(grad.shape)}")
    return torch.empty_like(inputs, memory_format=torch.contiguous_format)


# ---- autograd: backward is the op fastdet::_sigmoid_focal_loss_backward ---------------------------


def _setup_context(ctx, inputs, output):
    x, targets, alpha, gamma, reduction, weight = inputs
    ctx.save_for_backward(x, targets, weight)
    ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction


def _backward(ctx, grad):
    x, targets, weight = ctx.saved_tensors
    grad_inputs = None
    if ctx.needs_input_grad[0]:
        grad_inputs = op("_sigmoid_focal_loss_backward").default(grad, x, targets, ctx.alpha, ctx.gamma,
                                                                  ctx.reduction, weight)
    return grad_inputs, None, None, None, None, None


torch.library.register_autograd("fastdet::sigmoid_focal_loss", _backward, setup_context=_setup_context)
register_no_double_backward("_sigmoid_focal_loss_backward")
register_fp32_autocast("sigmoid_focal_loss")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Tiny CPU examples for `fastdet smoke`, dense and class-index targets: (output, differentiable inputs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g).requires_grad_()
    dense = (torch.rand(6, 4, generator=g) > 0.7).float()
    labels = torch.tensor([0, 3, 4, 1, 4, 2])  # 4 = background
    return [(sigmoid_focal_loss(x, dense), (x,)), (sigmoid_focal_loss(x, labels, reduction="sum"), (x,))]
