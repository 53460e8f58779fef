"""Deformable convolution v1 (Dai et al., ICCV 2017) and modulated v2 (DCNv2, Zhu et al., CVPR 2019):
`torch.ops.fastdet.deform_conv2d`, with torchvision's ``deform_conv2d`` signature and semantics.

* ``offset [N, 2 * OG * KH * KW, HO, WO]``: for offset group ``og`` and kernel tap ``k = i * KW + j``,
  channel ``og * 2 * KH * KW + 2 * k`` is the y displacement and the next one the x displacement.
  Offset groups ``OG = offset.shape[1] // (2 * KH * KW)``; channel ``c`` uses group ``c // (C // OG)``.
* ``mask [N, OG * KH * KW, HO, WO]`` (optional, DCNv2) scales each sample; without it this is DCNv1.
* Weight groups ``G = C // weight.shape[1]`` (as ``conv2d``).
* Bilinear sampling with zero padding (torchvision's convention): a point with ``y <= -1``,
  ``y >= H``, ``x <= -1`` or ``x >= W`` samples 0 and gets no gradient; otherwise each of its four
  integer corners that lies inside the map contributes.

Definitions where torchvision leaves things open:

* A NaN or infinite offset makes the point lie outside the map (value 0, no gradient); a corner
  with interpolation weight 0 contributes nothing, even when the feature there is NaN/inf.
* Any batch size (no ``im2col_step`` rule); 64-bit indexing (one input plane must hold < 2^31 values).
* fp16/bf16 inputs accumulate in fp32. On CPU they are computed in fp32 and rounded once; on CUDA
  the GEMMs run in the input dtype on tensor cores (fp32 accumulation). Under autocast the op runs
  in fp32 on CPU and in the autocast dtype on CUDA.
* ONNX: ``torch.onnx.export(model, args, dynamo=True, opset_version=19,
  custom_translation_table=deform_conv2d_onnx_translation())`` maps the op to the standard
  ``DeformConv`` operator (opset 19), which onnxruntime runs.
* Determinism. By default the CUDA backward accumulates grad_input with atomics (its last bits vary
  from run to run); the CPU backward is deterministic for a given thread count. Under
  ``torch.use_deterministic_algorithms(True)`` both compute grad_input by a gather instead (the
  sampling points sorted by the cell of their bilinear support; each element summed by one thread
  in a fixed order), bitwise reproducible on CUDA and independent of the thread count on CPU. It is
  slower (CPU, 2 x 64 x 64 x 64, 3 x 3, v2 forward + backward: 260 ms against 39 ms), and CUDA
  GEMMs in that mode need ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, as for any torch op.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from ._registry import check, op, register_no_double_backward


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask: Tensor | None = None) -> Tensor:
    """Deformable 2-D convolution (v1, or modulated v2 when ``mask`` is given); drop-in for
    ``torchvision.ops.deform_conv2d``.

    Args:
        input: Tensor[N, C, H, W], floating point (fp16, bf16, fp32, fp64).
        offset: Tensor[N, 2 * OG * KH * KW, HO, WO], (y, x) displacement per offset group and kernel tap.
        weight: Tensor[COUT, C / G, KH, KW]; G (groups) = C / weight.shape[1].
        bias: optional Tensor[COUT].
        stride, padding, dilation: int or (h, w) pair, as in ``conv2d``.
        mask: optional Tensor[N, OG * KH * KW, HO, WO], the DCNv2 modulation (commonly a sigmoid).

    All tensors share one device and dtype. Returns Tensor[N, COUT, HO, WO] with
    ``HO = (H + 2 * padding_h - (dilation_h * (KH - 1) + 1)) // stride_h + 1`` (WO likewise).
    Differentiable with respect to input, offset, weight, bias and mask.
    """
    return op("deform_conv2d").default(input, offset, weight, bias, mask, list(_pair(stride)), list(_pair(padding)),
                                       list(_pair(dilation)))


class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d``: a deformable convolution whose offsets (and optional mask)
    the caller passes to ``forward(input, offset, mask=None)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(f"fastdet::DeformConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation, self.groups = _pair(padding), _pair(dilation), groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as torchvision / nn.Conv2d
        if self.bias is not None:
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


class DeformConv2dPack(DeformConv2d):
    """DCNv1 layer that predicts its own offsets: a regular convolution with the same kernel,
    stride, padding and dilation (zero-initialised, so it starts as a plain convolution) gives
    ``2 * offset_groups * KH * KW`` offset channels. ``forward(input)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        if in_channels % offset_groups != 0:
            raise ValueError(f"fastdet::{type(self).__name__}: in_channels ({in_channels}) must be divisible by "
                             f"offset_groups ({offset_groups})")
        self.offset_groups = offset_groups
        kk = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, self._offset_channels(kk), self.kernel_size, self.stride,
                                     self.padding, self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def _offset_channels(self, kk: int) -> int:
        return 2 * self.offset_groups * kk

    def forward(self, input: Tensor) -> Tensor:
        return deform_conv2d(input, self.conv_offset(input), self.weight, self.bias, self.stride, self.padding,
                             self.dilation)


class ModulatedDeformConv2dPack(DeformConv2dPack):
    """DCNv2 layer: one zero-initialised convolution predicts ``3 * offset_groups * KH * KW``
    channels, the offsets (first two thirds) and the mask logits (last third, mask =
    ``mask_scale * sigmoid``). ``forward(input)``.

    mask_scale 1 (default) is the DCNv2 paper's (and mmcv's) mask, which starts at 0.5 everywhere,
    so the layer starts as half the plain convolution; mask_scale 2 starts it at exactly 1, so a
    layer given a plain convolution's weights starts equal to that convolution (DCN backbones).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, offset_groups: int = 1, bias: bool = True, mask_scale: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, offset_groups, bias)
        self.mask_scale = float(mask_scale)

    def _offset_channels(self, kk: int) -> int:
        return 3 * self.offset_groups * kk

    def forward(self, input: Tensor) -> Tensor:
        out = self.conv_offset(input)
        n_off = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, mask = out[:, :n_off], self.mask_scale * torch.sigmoid(out[:, n_off:])
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


def deform_conv2d_onnx_translation() -> dict:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True, opset_version=19)``
    that exports ``fastdet::deform_conv2d`` as the standard ONNX ``DeformConv`` operator::

        from fastdet.ops import deform_conv2d_onnx_translation
        torch.onnx.export(model, (x,), "model.onnx", dynamo=True, opset_version=19,
                          custom_translation_table=deform_conv2d_onnx_translation())

    Needs ``onnxscript``. The weight, offset and input channel counts must be static (they give
    ``group``, ``offset_group`` and ``kernel_shape``); batch and spatial sizes may be dynamic.
    """
    from onnxscript import opset19 as onnx_op

    def deform_conv(input, offset, weight, bias=None, mask=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        kh, kw = int(weight.shape[2]), int(weight.shape[3])
        groups = int(input.shape[1]) // int(weight.shape[1])
        offset_groups = int(offset.shape[1]) // (2 * kh * kw)
        return onnx_op.DeformConv(input, weight, offset, bias, mask, dilations=list(dilation), group=groups,
                                  kernel_shape=[kh, kw], offset_group=offset_groups,
                                  pads=[padding[0], padding[1], padding[0], padding[1]], strides=list(stride))

    return {torch.ops.fastdet.deform_conv2d.default: deform_conv}


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------


def _check_args(name, input, offset, weight, mask, stride, padding, dilation):
    check(input.dim() == 4, name, f"input must have shape [N, C, H, W], got {list(input.shape)}")
    check(weight.dim() == 4, name, f"weight must have shape [COUT, C / groups, KH, KW], got {list(weight.shape)}")
    check(offset.dim() == 4, name,
          f"offset must have shape [N, 2 * offset_groups * KH * KW, HO, WO], got {list(offset.shape)}")
    check(input.dtype.is_floating_point, name,
          f"input must be a floating-point tensor (float16, bfloat16, float32 or float64), got {input.dtype}")
    for arg, t in (("offset", offset), ("weight", weight)):
        check(input.device == t.device, name, f"input and {arg} must be on the same device, got {input.device} and {t.device}")
        check(input.dtype == t.dtype, name, f"input and {arg} must have the same dtype, got {input.dtype} and {t.dtype}")
    for arg, v, lo in (("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)):
        check(len(v) == 2, name, f"{arg} must have 2 elements (h, w), got {len(v)}")
        check(v[0] >= lo and v[1] >= lo, name, f"{arg} must be >= {lo}, got ({v[0]}, {v[1]})")
    n, c, h, w = input.shape
    cout, cin_g, kh, kw = weight.shape
    check(kh >= 1 and kw >= 1, name, f"weight's kernel size must be >= 1, got {list(weight.shape)}")
    check(cin_g >= 1 and c >= cin_g and c % cin_g == 0, name,
          f"weight.size(1) must divide the input's channel count (groups = C / weight.size(1) >= 1), got weight "
          f"{list(weight.shape)} for input {list(input.shape)}")
    groups = c // cin_g
    check(cout % groups == 0, name, f"weight.size(0) must be divisible by groups = {groups}, got weight {list(weight.shape)}")
    kk = kh * kw
    check(offset.shape[1] >= 2 * kk and offset.shape[1] % (2 * kk) == 0, name,
          f"offset.size(1) must be a positive multiple of 2 * KH * KW = {2 * kk}, got offset {list(offset.shape)}")
    og = offset.shape[1] // (2 * kk)
    check(c % og == 0, name, f"the input's channel count {c} must be divisible by offset groups = "
                             f"offset.size(1) / (2 * KH * KW) = {og}")
    ho = (h + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    wo = (w + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    check(ho >= 1 and wo >= 1, name, f"the output would be empty ({ho} x {wo})")
    check(offset.shape[0] == n and offset.shape[2] == ho and offset.shape[3] == wo, name,
          f"offset must have shape [N, 2 * offset_groups * KH * KW, HO, WO] = [{n}, {offset.shape[1]}, {ho}, {wo}], "
          f"got {list(offset.shape)}")
    if mask is not None:
        check(mask.dim() == 4 and mask.shape[0] == n and mask.shape[1] == og * kk and mask.shape[2] == ho
              and mask.shape[3] == wo, name,
              f"mask must have shape [N, offset_groups * KH * KW, HO, WO] = [{n}, {og * kk}, {ho}, {wo}], "
              f"got {list(mask.shape)}")
        check(input.device == mask.device, name, f"input and mask must be on the same device, got {input.device} and {mask.device}")
        check(input.dtype == mask.dtype, name, f"input and mask must have the same dtype, got {input.dtype} and {mask.dtype}")
    return n, cout, ho, wo


@torch.library.register_fake("fastdet::deform_conv2d")
def _deform_conv2d_fake(input, offset, weight, bias, mask, stride, padding, dilation):
    name = "deform_conv2d"
    n, cout, ho, wo = _check_args(name, input, offset, weight, mask, stride, padding, dilation)
    if bias is not None:
        check(bias.dim() == 1 and bias.shape[0] == cout, name, f"bias must have shape [COUT] = [{cout}], got {list(bias.shape)}")
        check(input.device == bias.device, name, f"input and bias must be on the same device, got {input.device} and {bias.device}")
        check(input.dtype == bias.dtype, name, f"input and bias must have the same dtype, got {input.dtype} and {bias.dtype}")
    return input.new_empty((n, cout, ho, wo))


@torch.library.register_fake("fastdet::_deform_conv2d_backward")
def _deform_conv2d_backward_fake(grad, input, offset, weight, mask, stride, padding, dilation):
    name = "_deform_conv2d_backward"
    n, cout, ho, wo = _check_args(name, input, offset, weight, mask, stride, padding, dilation)
    check(tuple(grad.shape) == (n, cout, ho, wo), name,
          f"grad must have the output's shape [{n}, {cout}, {ho}, {wo}], got {list(grad.shape)}")
    check(input.device == grad.device, name, f"input and grad must be on the same device, got {input.device} and {grad.device}")
    check(input.dtype == grad.dtype, name, f"input and grad must have the same dtype, got {input.dtype} and {grad.dtype}")
    grad_mask = torch.empty_like(mask, memory_format=torch.contiguous_format) if mask is not None else input.new_empty((0,))
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            torch.empty_like(offset, memory_format=torch.contiguous_format), grad_mask,
            torch.empty_like(weight, memory_format=torch.contiguous_format), weight.new_empty((cout,)))


# ---- autograd: backward is the op fastdet::_deform_conv2d_backward -------------------------------


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.has_bias = bias is not None
    ctx.args = (stride, padding, dilation)


def _backward(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    gi, go, gm, gw, gb = op("_deform_conv2d_backward").default(grad, input, offset, weight, mask, *ctx.args)
    return (gi, go, gw, gb if ctx.has_bias else None, gm if mask is not None else None, None, None, None)


torch.library.register_autograd("fastdet::deform_conv2d", _backward, setup_context=_setup_context)
register_no_double_backward("_deform_conv2d_backward")
torch.library.register_autocast("fastdet::deform_conv2d", "cpu", torch.float32)


def _autocast_cuda(input, offset, weight, bias, mask, stride, padding, dilation):
    """Under CUDA autocast: run in the autocast dtype (fp16/bf16 GEMMs on tensor cores), as conv2d."""
    dtype = torch.get_autocast_dtype("cuda")

    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() else t

    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCUDA)):
        return op("deform_conv2d").default(cast(input), cast(offset), cast(weight), cast(bias), cast(mask), stride,
                                           padding, dilation)


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """A tiny CPU example for `fastdet smoke` (modulated, with bias): (output, differentiable inputs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 5, 6, generator=g).requires_grad_()
    offset = (torch.randn(2, 2 * 9, 5, 6, generator=g) * 0.7).requires_grad_()
    mask = torch.rand(2, 9, 5, 6, generator=g).requires_grad_()
    weight = torch.randn(3, 4, 3, 3, generator=g).requires_grad_()
    bias = torch.randn(3, generator=g).requires_grad_()
    out = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    return [(out, (x, offset, weight, bias, mask))]


_lib = torch.library.Library("fastdet", "IMPL")
_lib.impl("deform_conv2d", _autocast_cuda, "AutocastCUDA")
