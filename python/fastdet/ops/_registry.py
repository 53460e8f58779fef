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


def reduce_loss(loss: torch.Tensor, reduction: str, op_name: str) -> torch.Tensor:
    """torchvision's loss reduction: 'none' | 'mean' | 'sum'; the mean of nothing is 0."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise RuntimeError(f"fastdet::{op_name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
