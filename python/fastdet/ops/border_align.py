"""BorderAlign (BorderDet, Qiu et al. ECCV 2020): `torch.ops.fastdet.border_align`.

The op as defined by mmcv's ``border_align``: ``input [N, 4C, H, W]`` holds four channel blocks,
block k = channels ``[k*C, (k+1)*C)`` for border k (0 top, 1 left, 2 bottom, 3 right);
``boxes [N, H*W, 4]`` holds one box ``(x1, y1, x2, y2)`` per feature-map location, in feature-map
coordinates. Border k of each box is sampled at ``pool_size + 1`` evenly spaced points, both ends
included:

* top:    x from x1 to x2 at y = y1;      left:  y from y1 to y2 at x = x1;
* bottom: x from x2 to x1 at y = y2;      right: y from y2 to y1 at x = x2,

with RoIAlign bilinear interpolation (a point outside ``[-1, H] x [-1, W]`` samples 0), and the
maximum is taken: ``output[n, c, j, k]``. Ties keep the first maximum in sampling order (as mmcv).

Definitions where mmcv leaves things open:

* A NaN or infinite box coordinate makes the affected points lie outside the map: they sample 0
  and receive no gradient (never an out-of-bounds access). NaN feature values: a sample is NaN
  when any of its 4 bilinear corners is (even at weight 0, as in RoIAlign), and the first NaN
  sample wins the maximum (as ``torch.max``); infinite features follow IEEE arithmetic.
* Point i is ``start + i * step`` (mmcv accumulates the step; the points can differ in the last bit).
* The backward only writes inside the map (mmcv's CUDA kernel writes out of bounds for points
  outside it). By default its CUDA version uses atomics, so it is nondeterministic in the last bits;
  under ``torch.use_deterministic_algorithms(True)`` one thread owns each gradient plane and sums
  in box order (bitwise reproducible, slower). The CPU version always works that way, so it is
  deterministic and independent of the thread count.
* fp16/bf16 are computed in fp32 and rounded once; under autocast the op runs in fp32.
* Boxes get no gradient (as mmcv): BorderDet uses them as detached sampling locations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import check, op, register_fp32_autocast, register_no_double_backward


def border_align(input: Tensor, boxes: Tensor, pool_size: int) -> Tensor:
    """Max-pooled bilinear samples along the four borders of one box per location.

    Args:
        input: Tensor[N, 4C, H, W], floating point (fp16, bf16, fp32, fp64); channel blocks for the
            top, left, bottom and right borders, in that order.
        boxes: Tensor[N, H*W, 4] in (x1, y1, x2, y2) feature-map coordinates, same dtype and device.
        pool_size: number of intervals per border (pool_size + 1 points), >= 1.

    Returns:
        Tensor[N, C, H*W, 4] in the input's dtype; the last dimension is (top, left, bottom, right).
        Differentiable with respect to input (not boxes). Empty inputs give an empty result.
    """
    return op("border_align").default(input, boxes, pool_size)[0]


class BorderAlign(nn.Module):
    """nn.Module form of :func:`border_align`: ``BorderAlign(pool_size)(input, boxes)``."""

    def __init__(self, pool_size: int):
        super().__init__()
        self.pool_size = pool_size

    def forward(self, input: Tensor, boxes: Tensor) -> Tensor:
        return border_align(input, boxes, self.pool_size)

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


def _check_boxes(name: str, boxes: Tensor, n, hw) -> None:
    check(boxes.dim() == 3 and boxes.shape[0] == n and boxes.shape[1] == hw and boxes.shape[2] == 4, name,
          f"boxes must have shape [N, H*W, 4] = [{n}, {hw}, 4], got {list(boxes.shape)}")


def _check_pool_size(name: str, pool_size: int) -> None:
    check(1 <= pool_size < 2**31 - 1, name, f"pool_size must be >= 1 (and fit in int32), got {pool_size}")


@torch.library.register_fake("fastdet::border_align")
def _border_align_fake(input, boxes, pool_size):
    name = "border_align"
    check(input.dim() == 4, name, f"input must have shape [N, 4C, H, W], got {list(input.shape)}")
    check(input.shape[1] % 4 == 0, name,
          f"input's channel count must be divisible by 4 (top, left, bottom, right blocks), got {list(input.shape)}")
    check(input.dtype.is_floating_point, name,
          f"input must be a floating-point tensor (float16, bfloat16, float32 or float64), got {input.dtype}")
    n, c4, h, w = input.shape
    _check_boxes(name, boxes, n, h * w)
    check(input.device == boxes.device, name, f"input and boxes must be on the same device, got {input.device} and {boxes.device}")
    check(input.dtype == boxes.dtype, name, f"input and boxes must have the same dtype, got {input.dtype} and {boxes.dtype}")
    _check_pool_size(name, pool_size)
    shape = (n, c4 // 4, h * w, 4)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("fastdet::_border_align_backward")
def _border_align_backward_fake(grad, boxes, argmax, pool_size, height, width):
    name = "_border_align_backward"
    check(height >= 0 and width >= 0, name, f"height and width must be >= 0, got {height} and {width}")
    check(grad.dim() == 4 and grad.shape[2] == height * width and grad.shape[3] == 4, name,
          f"grad must have shape [N, C, H*W, 4] with H*W = {height * width}, got {list(grad.shape)}")
    check(argmax.shape == grad.shape, name, f"argmax must have grad's shape {list(grad.shape)}, got {list(argmax.shape)}")
    check(argmax.dtype == torch.int32, name, f"argmax must be an int32 tensor, got {argmax.dtype}")
    _check_boxes(name, boxes, grad.shape[0], height * width)
    check(grad.device == boxes.device, name, f"grad and boxes must be on the same device, got {grad.device} and {boxes.device}")
    check(grad.dtype == boxes.dtype, name, f"grad and boxes must have the same dtype, got {grad.dtype} and {boxes.dtype}")
    _check_pool_size(name, pool_size)
    return grad.new_empty((grad.shape[0], 4 * grad.shape[1], height, width))


# ---- autograd: backward is the op fastdet::_border_align_backward ---------------------------------


def _setup_context(ctx, inputs, output):
    input, boxes, pool_size = inputs
    ctx.save_for_backward(boxes, output[1])
    ctx.pool_size = pool_size
    ctx.height, ctx.width = input.shape[2], input.shape[3]


def _backward(ctx, grad, _grad_argmax):
    boxes, argmax = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = op("_border_align_backward").default(grad, boxes, argmax, ctx.pool_size, ctx.height, ctx.width)
    return grad_input, None, None


torch.library.register_autograd("fastdet::border_align", _backward, setup_context=_setup_context)
register_no_double_backward("_border_align_backward")
register_fp32_autocast("border_align")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """A tiny CPU example for `fastdet smoke` (the installed-wheel check): (output, differentiable inputs).
    Boxes get no gradient, so only the features are listed."""
    g = torch.Generator().manual_seed(0)
    h, w = 4, 5
    x = torch.randn(1, 4 * 2, h, w, generator=g).requires_grad_()
    xy = torch.rand(1, h * w, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    boxes = torch.cat([xy, xy + 1.0 + torch.rand(1, h * w, 2, generator=g)], -1)
    return [(border_align(x, boxes, pool_size=3), (x,))]
