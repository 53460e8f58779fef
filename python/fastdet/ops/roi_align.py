"""RoIAlign (Mask R-CNN, He et al. 2017) and multi-level RoIAlign (FPN, Lin et al. 2017):
`torch.ops.fastdet.roi_align` and `torch.ops.fastdet.multi_scale_roi_align`.

Drop-in replacements for ``torchvision.ops.roi_align``, ``RoIAlign`` and ``MultiScaleRoIAlign``:
same signatures, same sampling (``aligned`` half-pixel shift, ``sampling_ratio <= 0`` adaptive),
same FPN level mapping. Bin ``(ph, pw)`` of a RoI averages ``grid_h x grid_w`` bilinear samples at
``y = y1 * scale - offset + ph * bin_h + (iy + 0.5) * bin_h / grid_h`` (x alike).

Beyond torchvision:

* fp16 and bf16 kernels on CPU and CUDA (fp32 accumulation, rounded once); ``boxes`` may have any
  floating dtype (e.g. fp32 boxes with bf16 features; they are read in fp32, fp64 for fp64
  features). Under autocast the op runs in the features' dtype (no cast): the output has the
  input's dtype, as torchvision's autocast wrapper gives.
* Channels-last features are read natively (channel-vector loads, no copy to NCHW); the output and
  the input gradient are then channels-last too.
* MultiScaleRoIAlign pools every level in one kernel launch (forward and backward).
* Deterministic backward: on CPU always (each gradient plane is owned by one thread); on CUDA when
  ``torch.are_deterministic_algorithms_enabled()``: a gather kernel (one thread per input pixel
  walks the RoIs of its image in index order, visiting only the samples whose bilinear support
  covers it), bitwise reproducible, with no memory beyond the gradient itself. Otherwise CUDA uses
  the faster atomic scatter.

Defined results where torchvision leaves things open:

* A sample outside ``[-1, H] x [-1, W]`` contributes 0 (RoIs partly or wholly outside the map give
  the average over the samples inside, wholly outside gives 0) and receives no gradient.
* A RoI with a NaN or infinite coordinate (after scaling) gives 0 and no gradient.
* Zero-size RoIs: with ``aligned=False`` a RoI is at least 1x1 (torchvision's legacy rule); with
  ``aligned=True`` an adaptive grid of a zero-size RoI is empty and gives 0; a fixed
  ``sampling_ratio`` samples the degenerate point repeatedly.
* The adaptive grid is capped at 512 samples per axis per bin, so huge finite RoIs cost bounded
  time (torchvision: unbounded); an explicit ``sampling_ratio`` above 512 is an error (torchvision
  accepts it, then allocates or loops without bound).
* A batch index (``boxes[:, 0]``) that is not an integer in ``[0, N)`` is an error, never an
  out-of-bounds read.
* Boxes get no gradient (as torchvision).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._registry import check, op, register_no_double_backward
from ._rois import check_roi_pool_params, is_channels_last, rois_from_boxes



def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    check(len(output_size) in (1, 2), "roi_align", f"output_size must be an int or a pair (h, w), got {output_size}")
    return (int(output_size[0]), int(output_size[-1]))


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """Region of Interest (RoI) Align, as ``torchvision.ops.roi_align``.

    Args:
        input: Tensor[N, C, H, W] features (fp16, bf16, fp32, fp64), NCHW or channels-last.
        boxes: Tensor[K, 5] rows ``(batch_index, x1, y1, x2, y2)``, or a list of Tensor[L, 4]
            ``(x1, y1, x2, y2)`` per image (the list position is the batch index), in image
            coordinates. Any floating dtype.
        output_size: int or (height, width) of the pooled output.
        spatial_scale: feature-map size / image size (e.g. 1/16 for a stride-16 map), > 0.
        sampling_ratio: samples per bin along each axis; <= 0 means ceil(bin size) (adaptive).
        aligned: shift the box by -0.5 pixel so that pixel centres align (Detectron2's
            ROIAlignV2). False reproduces the original (legacy) RoIAlign.

    Returns:
        Tensor[K, C, output_size[0], output_size[1]] in the input's dtype (channels-last when the
        input is). Differentiable with respect to input.
    """
    rois = rois_from_boxes(boxes, "roi_align")
    ph, pw = _pair(output_size)
    return op("roi_align").default(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned))


def multi_scale_roi_align(features: list[Tensor], boxes: Tensor | list[Tensor], levels: Tensor,
                          spatial_scales: list[float], output_size, sampling_ratio: int = -1,
                          aligned: bool = False) -> Tensor:
    """RoIAlign over several feature levels in one launch: RoI k pools ``features[levels[k]]``
    with ``spatial_scales[levels[k]]``.

    Args:
        features: 1 to 16 Tensors [N, C, H_l, W_l] of one dtype and device (N and C shared).
        boxes: as :func:`roi_align`.
        levels: Tensor[K] int64 level of each RoI, in ``[0, len(features))``.
        spatial_scales: one scale per level.
        output_size, sampling_ratio, aligned: as :func:`roi_align`.

    Returns:
        Tensor[K, C, PH, PW] in the features' dtype. Differentiable with respect to every level.
    """
    rois = rois_from_boxes(boxes, "multi_scale_roi_align")
    ph, pw = _pair(output_size)
    return op("multi_scale_roi_align").default(list(features), rois, levels, [float(s) for s in spatial_scales],
                                               ph, pw, int(sampling_ratio), bool(aligned))


class RoIAlign(nn.Module):
    """nn.Module form of :func:`roi_align` (``torchvision.ops.RoIAlign``)."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


# ---- MultiScaleRoIAlign (torchvision.ops.MultiScaleRoIAlign's contract) ------------------------------


def _infer_scale(feature: Tensor, original_size: tuple[int, int]) -> float:
    """The power of two nearest to feature size / image size (torchvision's rule: the height's)."""
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def _map_levels(boxes: list[Tensor], k_min: int, k_max: int, canonical_scale: int, canonical_level: int,
                eps: float = 1e-6) -> Tensor:
    """FPN paper eq. (1): level = floor(k0 + log2(sqrt(area) / 224)), clamped to [k_min, k_max],
    returned relative to k_min (int64)."""
    area = torch.cat([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in boxes])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return lvl.to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """Multi-level RoIAlign for FPN, a drop-in for ``torchvision.ops.MultiScaleRoIAlign``: same
    constructor, same ``forward(x, boxes, image_shapes)``, same level mapping and outputs, but
    every level is pooled in one kernel launch (forward and backward).

    Args:
        featmap_names: the keys of ``x`` to pool from (in ``x``'s order).
        output_size: int or (height, width).
        sampling_ratio: as :func:`roi_align`.
        canonical_scale, canonical_level: FPN level mapping, level = floor(canonical_level +
            log2(sqrt(box area) / canonical_scale)) clamped to the available levels.

    forward(x: dict[str, Tensor], boxes: list[Tensor[L_i, 4]], image_shapes: list[(h, w)]) ->
    Tensor[sum L_i, C, PH, PW]. Level scales are inferred from the feature and image sizes (the
    nearest power of two), as torchvision does.
    """

    def __init__(self, featmap_names: list[str], output_size, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.scales: list[float] | None = None

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        check(len(feats) > 0, "multi_scale_roi_align", f"x has none of the featmap_names {self.featmap_names}")
        max_h = max(s[0] for s in image_shapes)
        max_w = max(s[1] for s in image_shapes)
        scales = [_infer_scale(f, (max_h, max_w)) for f in feats]
        self.scales = scales
        if len(feats) == 1:
            return roi_align(feats[0], boxes, self.output_size, scales[0], self.sampling_ratio)
        k_min, k_max = int(-math.log2(scales[0])), int(-math.log2(scales[-1]))
        levels = _map_levels(list(boxes), k_min, k_max, self.canonical_scale, self.canonical_level)
        dtype = feats[0].dtype  # levels may differ in dtype under autocast: pool in the first level's
        feats = [f.to(dtype) for f in feats]
        return multi_scale_roi_align(feats, boxes, levels, scales, self.output_size, self.sampling_ratio)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, output_size={self.output_size}, "
                f"sampling_ratio={self.sampling_ratio})")


# ---- fake kernels: the C++ checks restated, and the output metadata ------------------------------------


def _memory_format(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def _check_rois(name: str, rois: Tensor, device) -> None:
    check(rois.dim() == 2 and rois.shape[1] == 5, name,
          f"rois must have shape [K, 5] (batch_index, x1, y1, x2, y2), got {list(rois.shape)}")
    check(rois.device == device, name, f"the features and rois must be on the same device, got {device} and {rois.device}")
    check(rois.dtype.is_floating_point, name,
          f"rois must be a floating-point tensor (float16, bfloat16, float32 or float64), got {rois.dtype}")


def _check_features(name: str, features: list[Tensor]) -> None:
    check(1 <= len(features) <= 16, name, f"features must hold 1 to 16 levels, got {len(features)}")
    f0 = features[0]
    arg = "input" if name == "roi_align" else "features[0]"
    check(f0.dim() == 4, name, f"{arg} must have shape [N, C, H, W], got {list(f0.shape)}")
    check(f0.dtype.is_floating_point, name,
          f"{arg} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {f0.dtype}")
    for i, f in enumerate(features[1:], 1):
        check(f.dim() == 4 and f.shape[0] == f0.shape[0] and f.shape[1] == f0.shape[1], name,
              f"features[{i}] must have shape [N, C, H, W] with N, C of features[0] ({f0.shape[0]}, {f0.shape[1]}), "
              f"got {list(f.shape)}")
        check(f.device == f0.device, name, f"features[0] and features[{i}] must be on the same device")
        check(f.dtype == f0.dtype, name, f"features[0] and features[{i}] must have the same dtype, got {f0.dtype} and {f.dtype}")


def _check_levels(name: str, rois: Tensor, levels: Tensor) -> None:
    check(levels.dim() == 1 and levels.shape[0] == rois.shape[0], name,
          f"levels must have shape [K] with K = rois.size(0) = {rois.shape[0]}, got {list(levels.shape)}")
    check(levels.dtype == torch.int64, name, f"levels must be an int64 tensor, got {levels.dtype}")


# The kernels' cap on an explicit grid (kRoiAlignMaxAdaptiveGrid, csrc/ops/roi_align.h).
_MAX_SAMPLING_RATIO = 512


def _check_sampling_ratio(name: str, sampling_ratio: int) -> None:
    check(sampling_ratio <= _MAX_SAMPLING_RATIO, name, f"sampling_ratio must be <= {_MAX_SAMPLING_RATIO} (samples "
          f"per bin axis; <= 0 for adaptive), got {sampling_ratio}")


def _pooled(features: list[Tensor], rois: Tensor, ph, pw) -> Tensor:
    f0 = features[0]
    return torch.empty((rois.shape[0], f0.shape[1], ph, pw), dtype=f0.dtype, device=f0.device,
                       memory_format=_memory_format(is_channels_last(f0)))


@torch.library.register_fake("fastdet::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    name = "roi_align"
    _check_features(name, [input])
    _check_rois(name, rois, input.device)
    check_roi_pool_params(name, pooled_height, pooled_width, [spatial_scale])
    _check_sampling_ratio(name, sampling_ratio)
    return _pooled([input], rois, pooled_height, pooled_width)


@torch.library.register_fake("fastdet::multi_scale_roi_align")
def _multi_scale_roi_align_fake(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                                aligned):
    name = "multi_scale_roi_align"
    _check_features(name, features)
    _check_rois(name, rois, features[0].device)
    check(len(spatial_scales) == len(features), name,
          f"spatial_scales must hold one scale per level ({len(features)}), got {len(spatial_scales)}")
    check_roi_pool_params(name, pooled_height, pooled_width, spatial_scales)
    _check_sampling_ratio(name, sampling_ratio)
    _check_levels(name, rois, levels)
    return _pooled(features, rois, pooled_height, pooled_width)


def _check_grad(name: str, grad: Tensor, rois: Tensor, channels) -> None:
    check(grad.dtype.is_floating_point, name, f"grad must be a floating-point tensor, got {grad.dtype}")
    check(grad.dim() == 4 and grad.shape[0] == rois.shape[0] and grad.shape[1] == channels, name,
          f"grad must have shape [K, C, PH, PW] with K = rois.size(0) = {rois.shape[0]} and C = {channels}, "
          f"got {list(grad.shape)}")
    _check_rois(name, rois, grad.device)


def _check_sizes(name: str, batch, channels, heights, widths) -> None:
    check(batch >= 0 and channels >= 0, name, f"batch_size and channels must be >= 0, got {batch} and {channels}")
    for h, w in zip(heights, widths):
        check(h >= 0 and w >= 0, name, f"height and width must be >= 0, got {h} and {w}")


def _grad_buffer(grad: Tensor, batch, channels, h, w, channels_last: bool) -> Tensor:
    return torch.empty((batch, channels, h, w), dtype=grad.dtype, device=grad.device,
                       memory_format=_memory_format(channels_last))


@torch.library.register_fake("fastdet::_roi_align_backward")
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                             width, sampling_ratio, aligned, channels_last=False):
    name = "_roi_align_backward"
    check(grad.dim() != 4 or (grad.shape[2] == pooled_height and grad.shape[3] == pooled_width), name,
          f"grad must have shape [K, C, pooled_height, pooled_width] = [K, C, {pooled_height}, {pooled_width}], "
          f"got {list(grad.shape)}")
    _check_sizes(name, batch_size, channels, [height], [width])
    _check_grad(name, grad, rois, channels)
    _check_sampling_ratio(name, sampling_ratio)
    return _grad_buffer(grad, batch_size, channels, height, width, channels_last)


@torch.library.register_fake("fastdet::_multi_scale_roi_align_backward")
def _multi_scale_roi_align_backward_fake(grad, rois, levels, spatial_scales, heights, widths, batch_size, channels,
                                         sampling_ratio, aligned, channels_last):
    name = "_multi_scale_roi_align_backward"
    check(len(heights) == len(spatial_scales) and len(widths) == len(spatial_scales), name,
          f"heights and widths must hold one size per level ({len(spatial_scales)}), got {len(heights)} and {len(widths)}")
    _check_sizes(name, batch_size, channels, heights, widths)
    _check_grad(name, grad, rois, channels)
    _check_sampling_ratio(name, sampling_ratio)
    _check_levels(name, rois, levels)
    return [_grad_buffer(grad, batch_size, channels, h, w, channels_last) for h, w in zip(heights, widths)]


# ---- autograd: the backward ops -----------------------------------------------------------------------------


def _roi_align_setup(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw)
    ctx.shape = tuple(input.shape)
    ctx.sampling_ratio, ctx.aligned, ctx.channels_last = sampling_ratio, aligned, is_channels_last(input)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    n, c, h, w = ctx.shape
    spatial_scale, ph, pw = ctx.args
    grad_input = op("_roi_align_backward").default(grad, rois, spatial_scale, ph, pw, n, c, h, w, ctx.sampling_ratio,
                                                   ctx.aligned, ctx.channels_last)
    return grad_input, None, None, None, None, None, None


def _multi_setup(ctx, inputs, output):
    features, rois, levels, spatial_scales, ph, pw, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois, levels)
    ctx.scales = list(spatial_scales)
    ctx.heights = [f.shape[2] for f in features]
    ctx.widths = [f.shape[3] for f in features]
    ctx.n, ctx.c = features[0].shape[0], features[0].shape[1]
    ctx.sampling_ratio, ctx.aligned, ctx.channels_last = sampling_ratio, aligned, is_channels_last(features[0])


def _multi_backward(ctx, grad):
    rois, levels = ctx.saved_tensors
    grads = op("_multi_scale_roi_align_backward").default(grad, rois, levels, ctx.scales, ctx.heights, ctx.widths,
                                                          ctx.n, ctx.c, ctx.sampling_ratio, ctx.aligned,
                                                          ctx.channels_last)
    return list(grads), None, None, None, None, None, None, None


torch.library.register_autograd("fastdet::roi_align", _roi_align_backward, setup_context=_roi_align_setup)
torch.library.register_autograd("fastdet::multi_scale_roi_align", _multi_backward, setup_context=_multi_setup)
register_no_double_backward("_roi_align_backward")
register_no_double_backward("_multi_scale_roi_align_backward")


def smoke() -> list[tuple[Tensor, tuple[Tensor, ...]]]:
    """Tiny CPU examples for `fastdet smoke`: (output, differentiable inputs); boxes get no gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 10, generator=g).requires_grad_()
    x2 = torch.randn(2, 3, 4, 5, generator=g).requires_grad_()
    rois = torch.tensor([[0, 1.0, 1.5, 6.0, 5.0], [1, 0.0, 0.5, 9.0, 7.5]])
    levels = torch.tensor([0, 1])
    return [(roi_align(x, rois, 3, spatial_scale=1.0, sampling_ratio=2, aligned=True), (x,)),
            (multi_scale_roi_align([x, x2], rois, levels, [1.0, 0.5], 2, sampling_ratio=-1), (x, x2))]
