#pragma once
// Validation of RoI tensors shared by the RoI ops (roi_align, roi_pool, multi-level RoIAlign).
// rois: [K, 5] rows (batch_index, x1, y1, x2, y2) in input coordinates (before spatial_scale).
#include <ATen/core/Tensor.h>
#include <ATen/ops/any.h>
#include <ATen/ops/floor.h>
#include <ATen/ops/ge.h>
#include <ATen/ops/lt.h>
#include <ATen/ops/ne.h>

#include "checks.h"

namespace fastdet {

// input [N, C, H, W] floating; rois [K, 5] of the input's dtype and device; every batch index an
// integer in [0, N). Checking the indices reads one bool back from the device (a sync on CUDA):
// it is what turns a bad index into an error instead of an out-of-bounds read. Kernels still treat
// an index outside [0, N) as an empty RoI, so nothing is read out of bounds even without the check.
// same_dtype = false lets rois be any floating dtype (ops that read them in their math type).
inline void check_rois(const at::Tensor& input, const at::Tensor& rois, const char* op,
                       const char* input_arg = "input", const char* rois_arg = "rois", bool same_dtype = true) {
  TORCH_CHECK(input.dim() == 4, "fastdet::", op, ": ", input_arg, " must have shape [N, C, H, W], got ",
              shape_str(input));
  check_floating(input, op, input_arg);
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "fastdet::", op, ": ", rois_arg,
              " must have shape [K, 5] (batch_index, x1, y1, x2, y2), got ", shape_str(rois));
  check_same_device(input, rois, op, input_arg, rois_arg);
  if (same_dtype) {
    check_same_dtype(input, rois, op, input_arg, rois_arg);
  } else {
    check_floating(rois, op, rois_arg);
  }
  if (rois.size(0) == 0) return;
  const at::Tensor idx = rois.select(1, 0);
  // NaN != floor(NaN), so a NaN index is caught by the integrality test.
  const at::Tensor bad_index = at::lt(idx, 0).logical_or_(at::ge(idx, static_cast<double>(input.size(0))))
                                   .logical_or_(at::ne(idx, at::floor(idx)));
  const bool bad = at::any(bad_index).item().toBool();
  TORCH_CHECK(!bad, "fastdet::", op, ": ", rois_arg, "[:, 0] must hold integer batch indices in [0, ",
              input.size(0), ")");
}

// The RoI ops' layout rule: channels-last (read natively, no copy to NCHW) when the strides are
// NHWC-dense and the tensor is not also NCHW-contiguous; anything else is made NCHW-contiguous.
// The Python fake kernels and autograd restate it (python/fastdet/ops/_rois.py is_channels_last).
inline bool rois_input_channels_last(const at::Tensor& input) {
  return input.dim() == 4 && !input.is_contiguous() && input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// output_size (pooled_h, pooled_w) and spatial_scale of the RoI pooling ops.
inline void check_roi_pool_params(int64_t pooled_h, int64_t pooled_w, double spatial_scale, const char* op) {
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, "fastdet::", op, ": output_size must be positive, got (", pooled_h,
              ", ", pooled_w, ")");
  TORCH_CHECK(spatial_scale > 0 && std::isfinite(spatial_scale), "fastdet::", op,
              ": spatial_scale must be a positive finite number, got ", spatial_scale);
}

}  // namespace fastdet
