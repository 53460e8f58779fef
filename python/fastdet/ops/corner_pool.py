"""Corner pooling (CornerNet, Law & Deng 2018): `torch.ops.fastdet.corner_pool` and the fused
`torch.ops.fastdet.corner_pool_sum`.

For an input [N, C, H, W] and each position (h, w):
    top    max(input[..., h:, w])     the position and everything below it in its column
    bottom max(input[..., :h+1, w])   the position and everything above it
    left   max(input[..., h, w:])     the position and everything to its right in its row
    right  max(input[..., h, :w+1])   the position and everything to its left
exactly as mmcv's ``CornerPool`` computes it with ``flip + torch.cummax + flip`` (the reference in
``fastdet.ops._reference.corner_pool``), but in one pass: no flips and no int64 index tensor.

Ties and NaN follow torch.cummax, so values and gradients match the cummax formulation exactly:
    * The scan runs in the pooling direction (for ``top`` from the last row upwards) and takes a
      new value when it is >= the running max, so among equal maxima the argmax is the one
      closest to the output position (the most recent in scan order). The gradient of each
      output goes to that argmax.
    * NaN propagates: once the scan has seen a NaN, every later output of the scan is NaN and its
      gradient goes to the most recent NaN. ``-0.0`` and ``0.0`` are equal (the more recent one
      is returned). ``inf`` and ``-inf`` are ordinary values.
fp16/bf16: values are compared in fp32 and only moved, never rounded, so results are bit-exact;
``corner_pool_sum`` adds in fp32 and rounds once (as ``half + half`` does). Gradients accumulate
in fp32 for half inputs. Any strides are accepted (channels-last is made contiguous). Empty inputs
give empty results. No autocast rule is needed: pooling is exact in every dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import check, op, register_no_double_backward

_MODES = ("top", "bottom", "left", "right")
_CORNERS = ("top_left", "bottom_right", "top_right", "bottom_left")


def corner_pool(input: Tensor, mode: str) -> Tensor:
    """Corner pooling of one direction.

    Args:
        input: Tensor[N, C, H, W], floating point (fp16, bf16, fp32, fp64), any strides.
        mode: "top", "bottom", "left" or "right" (see the module docstring).

    Returns:
        Tensor[N, C, H, W] (contiguous), same dtype and device. Differentiable: the gradient of
        each output goes to its argmax (ties: the one nearest the output, as torch.cummax).
        NaN propagates along the scan.
    """
    return op("corner_pool").default(input, mode)


def corner_pool_sum(a: Tensor, b: Tensor, corner: str = "top_left") -> Tensor:
    """The sum of a vertical and a horizontal corner pool, as CornerNet's corner modules use it,
    computed in one pass without materialising either pool.

    Args:
        a: Tensor[N, C, H, W], pooled vertically ("top" for top_*, "bottom" for bottom_*).
        b: Tensor[N, C, H, W], same shape, dtype and device, pooled horizontally ("left" for
            *_left, "right" for *_right).
        corner: "top_left" (top(a) + left(b)), "bottom_right" (bottom(a) + right(b)),
            "top_right" or "bottom_left".

    Returns:
        Tensor[N, C, H, W] = corner_pool(a, vertical) + corner_pool(b, horizontal).
        Differentiable with respect to a and b.
    """
    return op("corner_pool_sum").default(a, b, corner)


class CornerPool(nn.Module):
    """Drop-in for mmcv.ops.CornerPool: ``CornerPool(mode)(x) == corner_pool(x, mode)``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        check(mode in _MODES, "corner_pool", f"mode must be one of 'top', 'bottom', 'left', 'right', got '{mode}'")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        return corner_pool(x, self.mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


def _check_input(name: str, arg: str, t: Tensor) -> None:
    check(t.dim() == 4, name, f"{arg} must have shape [N, C, H, W], got {list(t.shape)}")
    check(t.dtype.is_floating_point, name,
          f"{arg} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")


def _check_mode(name: str, mode: str) -> None:
    check(mode in _MODES, name, f"mode must be one of 'top', 'bottom', 'left', 'right', got '{mode}'")


def _check_sum(name: str, a: Tensor, b: Tensor, corner: str) -> None:
    check(corner in _CORNERS, name,
          f"corner must be one of 'top_left', 'bottom_right', 'top_right', 'bottom_left', got '{corner}'")
    check(a.device == b.device, name, f"a and b must be on the same device, got {a.device} and {b.device}")
    check(a.dtype == b.dtype, name, f"a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    _check_input(name, "a", a)
    _check_input(name, "b", b)
    check(a.shape == b.shape, name, f"a and b must have the same shape, got {list(a.shape)} and {list(b.shape)}")


def _check_grad(name: str, grad: Tensor, x: Tensor) -> None:
    check(grad.shape == x.shape, name, f"grad must have the forward output's shape {list(x.shape)}, got {list(grad.shape)}")
    check(grad.device == x.device, name, f"grad and input must be on the same device, got {grad.device} and {x.device}")


def _empty(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastdet::corner_pool")
def _corner_pool_fake(input, mode):
    _check_mode("corner_pool", mode)
    _check_input("corner_pool", "input", input)
    return _empty(input)


@torch.library.register_fake("fastdet::_corner_pool_backward")
def _corner_pool_backward_fake(grad, input, mode):
    name = "_corner_pool_backward"
    _check_mode(name, mode)
    _check_input(name, "input", input)
    _check_grad(name, grad, input)
    return _empty(input)


@torch.library.register_fake("fastdet::corner_pool_sum")
def _corner_pool_sum_fake(a, b, corner="top_left"):
    _check_sum("corner_pool_sum", a, b, corner)
    return _empty(a)


@torch.library.register_fake("fastdet::_corner_pool_sum_backward")
def _corner_pool_sum_backward_fake(grad, a, b, corner):
    name = "_corner_pool_sum_backward"
    _check_sum(name, a, b, corner)
    _check_grad(name, grad, a)
    return _empty(a), _empty(b)


# ---- autograd: backwards are the ops fastdet::_corner_pool_backward / _corner_pool_sum_backward --


def _setup_context(ctx, inputs, output):
    input, mode = inputs
    ctx.save_for_backward(input)
    ctx.mode = mode


def _backward(ctx, grad):
    (input,) = ctx.saved_tensors
    return op("_corner_pool_backward").default(grad, input, ctx.mode), None


def _sum_setup_context(ctx, inputs, output):
    a, b, corner = inputs
    ctx.save_for_backward(a, b)
    ctx.corner = corner


def _sum_backward(ctx, grad):
    a, b = ctx.saved_tensors
    ga, gb = op("_corner_pool_sum_backward").default(grad, a, b, ctx.corner)
    return (ga if ctx.needs_input_grad[0] else None, gb if ctx.needs_input_grad[1] else None, None)


torch.library.register_autograd("fastdet::corner_pool", _backward, setup_context=_setup_context)
torch.library.register_autograd("fastdet::corner_pool_sum", _sum_backward, setup_context=_sum_setup_context)
register_no_double_backward("_corner_pool_backward")
register_no_double_backward("_corner_pool_sum_backward")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Tiny CPU examples for `fastdet smoke` (the installed-wheel check): (output, differentiable inputs)."""
    g = torch.Generator().manual_seed(0)
    x, a, b = (torch.randn(1, 2, 5, 4, generator=g).requires_grad_() for _ in range(3))
    return [(corner_pool(x, "left"), (x,)), (corner_pool_sum(a, b, "top_left"), (a, b))]
