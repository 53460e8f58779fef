"""Small helpers every op module uses to attach its Python-side pieces to a C++ op."""

from __future__ import annotations

import torch


def op(name: str):
    """The OpOverloadPacket torch.ops.fastdet.<name>."""
    return getattr(torch.ops.fastdet, name)


def register_no_double_backward(name: str) -> None:
    """Backward ops are differentiable only once: a second derivative raises a clear error."""

    def _backward(ctx, *grads):
        raise RuntimeError(f"fastdet::{name}: double backward is not supported")

    def _setup_context(ctx, inputs, output):
        pass

    torch.library.register_autograd(f"fastdet::{name}", _backward, setup_context=_setup_context)


def register_fp32_autocast(name: str) -> None:
    """Under autocast, run the op on float32 inputs on CPU and CUDA (geometry in low precision
    loses boxes)."""
    for device_type in ("cpu", "cuda"):
        torch.library.register_autocast(f"fastdet::{name}", device_type, torch.float32)


def check(cond: bool, op_name: str, message: str) -> None:
    """torch._check with fastdet's message format, for fake kernels and Python-side validation."""
    torch._check(cond, lambda: f"fastdet::{op_name}: {message}")


def check_scored_boxes(op_name: str, boxes, scores, idxs=None) -> None:
    """Fake-kernel twin of the C++ check_scored_boxes (csrc/common/checks.h): boxes [N, 4], scores
    [N] of the same dtype and device, optional int64 class ids idxs [N]."""
    n = boxes.shape[0] if boxes.dim() >= 1 else 0
    check(boxes.dim() == 2 and boxes.shape[-1] == 4, op_name, f"boxes must have shape [N, 4], got {list(boxes.shape)}")
    check(boxes.dtype.is_floating_point, op_name,
          f"boxes must be a floating-point tensor (float16, bfloat16, float32 or float64), got {boxes.dtype}")
    check(scores.dim() == 1 and scores.shape[0] == n, op_name,
          f"scores must have shape [N] with N = boxes.size(0) = {n}, got {list(scores.shape)}")
    check(boxes.device == scores.device, op_name, f"boxes and scores must be on the same device, got {boxes.device} and {scores.device}")
    check(boxes.dtype == scores.dtype, op_name, f"boxes and scores must have the same dtype, got {boxes.dtype} and {scores.dtype}")
    if idxs is not None:
        check(idxs.dim() == 1 and idxs.shape[0] == n, op_name,
              f"idxs must have shape [N] with N = boxes.size(0) = {n}, got {list(idxs.shape)}")
        check(idxs.dtype == torch.int64, op_name, f"idxs must be an int64 tensor, got {idxs.dtype}")
        check(boxes.device == idxs.device, op_name, f"boxes and idxs must be on the same device, got {boxes.device} and {idxs.device}")


def reduce_loss(loss: torch.Tensor, reduction: str, op_name: str) -> torch.Tensor:
    """torchvision's loss reduction: 'none' | 'mean' | 'sum'; the mean of nothing is 0."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise RuntimeError(f"fastdet::{op_name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
