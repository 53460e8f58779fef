"""RoI max pooling (Fast R-CNN, Girshick 2015): `torch.ops.fastdet.roi_pool`.

A drop-in for ``torchvision.ops.roi_pool`` / ``RoIPool``: same signature, same bins, same values
and gradients. For each RoI ``(batch_index, x1, y1, x2, y2)`` (input-image coordinates):

* ``start = round(x1 * spatial_scale)``, ``end = round(x2 * spatial_scale)`` (round half away from
  zero; the same along y), ``roi_w = max(end - start + 1, 1)``, ``bin_w = roi_w / PW`` (in fp32,
  fp64 for fp64 inputs, exactly as torchvision computes it);
* bin ``pw`` covers columns ``[floor(pw * bin_w), ceil((pw + 1) * bin_w)) + start``, clipped to
  the map; neighbouring bins may share a row or column;
* the output is the maximum over the bin, and the gradient of each output goes to that element
  (the first maximum in row-major order on ties). An empty bin (wholly outside the map) gives 0
  and no gradient.

Definitions where torchvision's kernels leave things undefined or odd:

* RoIs partly outside the map pool only their inside part; wholly outside, every bin is 0.
* A NaN coordinate makes the whole RoI empty (every bin 0, no gradient); torchvision converts NaN
  to an integer (undefined behaviour). Infinite or huge coordinates are clamped to +-2^30 map
  cells, so they behave like a box reaching far beyond the map. Zero-size and inverted RoIs are
  1 x 1 cells, as in torchvision.
* NaN features propagate: a bin holding a NaN outputs NaN (its first NaN gets the gradient), as
  ``torch.max``. torchvision skips NaNs and outputs ``-FLT_MAX`` (argmax -1) for a bin of NaNs or
  ``-inf`` only; here such a bin gives ``-inf``. Values below ``-FLT_MAX`` (fp64) are kept exactly.
* A batch index that is not an integer in ``[0, N)`` raises a ``RuntimeError`` (checked on the
  device, one small sync), never an out-of-bounds read.

dtypes: fp32, fp64, fp16 and bf16 run natively on CPU and CUDA (the maximum is exact in any dtype;
gradients accumulate in fp32 and are rounded once). The bins of fp16/bf16 inputs are computed in
fp32 from the stored coordinates (torchvision's fp16 kernel rounds the scaled coordinates and bin
sizes to fp16, so its bins can differ by a cell when those are not exact in fp16; it has no bf16
kernel). Under autocast the op runs in fp32, as torchvision's. Layouts: NCHW and channels-last inputs are both read natively
(channels-last without a copy); the output is always a contiguous ``[K, C, PH, PW]`` tensor, and the
input's gradient has the input's layout. Backward: deterministic on CPU; on CUDA atomics by
default and, under ``torch.use_deterministic_algorithms(True)``, a gather kernel whose result is
bitwise identical from run to run (extra memory: one transposed copy of the output gradient).
Boxes get no gradient (as torchvision).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._registry import check, op, register_fp32_autocast, register_no_double_backward
from ._rois import check_roi_pool_params, is_channels_last, rois_from_boxes


def roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size: int | tuple[int, int],
             spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling, as ``torchvision.ops.roi_pool``.

    Args:
        input: Tensor[N, C, H, W], floating point (fp16, bf16, fp32, fp64), NCHW or channels-last.
        boxes: Tensor[K, 5] rows ``(batch_index, x1, y1, x2, y2)``, or a list of per-image
            Tensor[L, 4] ``(x1, y1, x2, y2)`` (the list position is the batch index); same dtype
            and device as input, in input-image coordinates.
        output_size: ``(PH, PW)`` or an int for a square output, > 0.
        spatial_scale: the map's scale relative to the box coordinates (e.g. 1/16), > 0.

    Returns:
        Tensor[K, C, PH, PW] (contiguous), input's dtype and device. Differentiable with respect
        to input. K = 0 gives an empty result. See the module docstring for edge cases.
    """
    rois = rois_from_boxes(boxes, "roi_pool")
    ph, pw = _pair(output_size)
    return op("roi_pool").default(input, rois, float(spatial_scale), ph, pw)[0]


class RoIPool(nn.Module):
    """nn.Module form of :func:`roi_pool`: ``RoIPool(output_size, spatial_scale)(input, rois)``."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


@torch.library.register_fake("fastdet::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    name = "roi_pool"
    check(input.dim() == 4, name, f"input must have shape [N, C, H, W], got {list(input.shape)}")
    check(input.dtype.is_floating_point, name,
          f"input must be a floating-point tensor (float16, bfloat16, float32 or float64), got {input.dtype}")
    check(rois.dim() == 2 and rois.shape[1] == 5, name,
          f"rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got {list(rois.shape)}")
    check(input.device == rois.device, name, f"input and rois must be on the same device, got {input.device} and {rois.device}")
    check(input.dtype == rois.dtype, name, f"input and rois must have the same dtype, got {input.dtype} and {rois.dtype}")
    check_roi_pool_params(name, pooled_height, pooled_width, [spatial_scale])
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("fastdet::_roi_pool_backward")
def _roi_pool_backward_fake(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                            height, width, channels_last):
    name = "_roi_pool_backward"
    check(batch_size >= 0 and channels >= 0 and height >= 0 and width >= 0, name,
          f"batch_size, channels, height and width must be >= 0, got {batch_size}, {channels}, {height}, {width}")
    check_roi_pool_params(name, pooled_height, pooled_width, [spatial_scale])
    check(rois.dim() == 2 and rois.shape[1] == 5, name,
          f"rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got {list(rois.shape)}")
    k = rois.shape[0]
    check(grad.dim() == 4 and list(grad.shape) == [k, channels, pooled_height, pooled_width], name,
          f"grad must have shape [K, C, PH, PW] = [{k}, {channels}, {pooled_height}, {pooled_width}], got {list(grad.shape)}")
    check(argmax.shape == grad.shape, name, f"argmax must have grad's shape {list(grad.shape)}, got {list(argmax.shape)}")
    check(argmax.dtype == torch.int32, name, f"argmax must be an int32 tensor, got {argmax.dtype}")
    check(grad.dtype == rois.dtype, name, f"grad and rois must have the same dtype, got {grad.dtype} and {rois.dtype}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((batch_size, channels, height, width), dtype=grad.dtype, device=grad.device, memory_format=fmt)


# ---- autograd: backward is the op fastdet::_roi_pool_backward --------------------------------------


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width = inputs
    ctx.save_for_backward(rois, output[1])
    ctx.spatial_scale, ctx.pooled = spatial_scale, (pooled_height, pooled_width)
    ctx.input_shape = tuple(input.shape)
    ctx.channels_last = is_channels_last(input)


def _backward(ctx, grad, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        n, c, h, w = ctx.input_shape
        grad_input = op("_roi_pool_backward").default(grad, rois, argmax, ctx.spatial_scale, *ctx.pooled, n, c, h, w,
                                                      ctx.channels_last)
    return grad_input, None, None, None, None


torch.library.register_autograd("fastdet::roi_pool", _backward, setup_context=_setup_context)
register_no_double_backward("_roi_pool_backward")
register_fp32_autocast("roi_pool")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """A tiny CPU example for `fastdet smoke`: (output, differentiable inputs); boxes get no gradient."""
    x = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(0)).requires_grad_()
    rois = torch.tensor([[0, 1.0, 1.5, 6.0, 5.0], [1, 0.0, 0.5, 9.0, 7.5]])
    return [(roi_pool(x, rois, 3), (x,))]
