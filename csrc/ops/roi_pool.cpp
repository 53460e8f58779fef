// Schemas of fastdet::roi_pool and its backward. Kernels: cpu/roi_pool_kernel.cpp,
// cuda/roi_pool_kernel.cu; fake kernels, autograd and autocast: python/fastdet/ops/roi_pool.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.roi_pool");
  // input [N, C, H, W], rois [K, 5] (batch_index, x1, y1, x2, y2) ->
  //   (output [K, C, PH, PW], argmax [K, C, PH, PW] int32: h * W + w in the RoI's image, -1 if empty)
  m.def("roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) -> (Tensor, Tensor)");
  // grad, argmax [K, C, PH, PW], rois [K, 5] -> grad_input [batch_size, channels, height, width]
  // (channels-last strides when channels_last)
  m.def("_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool channels_last) -> Tensor");
}
