"""RoI formats shared by the RoI ops (roi_align, roi_pool, MultiScaleRoIAlign).

The kernels take ``rois: Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)``; users may also pass,
as with torchvision, a list of per-image ``Tensor[L_i, 4]`` boxes, whose list position is the batch
index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._registry import check


def rois_from_boxes(boxes: Tensor | list[Tensor] | tuple[Tensor, ...], op_name: str) -> Tensor:
    """``Tensor[K, 5]`` rois from either accepted form (a ``Tensor[K, 5]`` is returned as is)."""
    if isinstance(boxes, Tensor):
        check(boxes.dim() == 2 and boxes.shape[1] == 5, op_name,
              f"boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[L, 4], "
              f"got a tensor of shape {list(boxes.shape)}")
        return boxes
    check(isinstance(boxes, (list, tuple)) and all(isinstance(b, Tensor) for b in boxes), op_name,
          f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    check(len(boxes) > 0, op_name, "boxes is an empty list: pass one Tensor[L, 4] per image")
    for i, b in enumerate(boxes):
        check(b.dim() == 2 and b.shape[1] == 4, op_name, f"boxes[{i}] must have shape [L, 4], got {list(b.shape)}")
        check(b.dtype == boxes[0].dtype and b.device == boxes[0].device, op_name,
              f"boxes[{i}] must have the dtype and device of boxes[0] ({boxes[0].dtype}, {boxes[0].device}), "
              f"got {b.dtype}, {b.device}")
    index = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(list(boxes))], dim=1)


def is_channels_last(input: Tensor) -> bool:
    """The kernels' layout rule (csrc/common/rois.h rois_input_channels_last): NHWC-dense strides and
    not also NCHW-contiguous."""
    return input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)


def check_roi_pool_params(op_name: str, pooled_height, pooled_width, spatial_scales) -> None:
    """Fake-kernel twin of check_roi_pool_params (csrc/common/rois.h), one scale per level."""
    check(pooled_height > 0 and pooled_width > 0, op_name,
          f"output_size must be positive, got ({pooled_height}, {pooled_width})")
    for s in spatial_scales:
        check(s > 0 and math.isfinite(s), op_name, f"spatial_scale must be a positive finite number, got {s}")
