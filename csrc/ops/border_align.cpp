// Schemas of fastdet::border_align and its backward. Kernels: cpu/border_align_kernel.cpp,
// cuda/border_align_kernel.cu; fake kernels and autograd: python/fastdet/ops/border_align.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.border_align");
  // input [N, 4C, H, W], boxes [N, H*W, 4] (x1, y1, x2, y2) ->
  //   (output [N, C, H*W, 4] (top, left, bottom, right), argmax [N, C, H*W, 4] int32 in 0..pool_size)
  m.def("border_align(Tensor input, Tensor boxes, int pool_size) -> (Tensor, Tensor)");
  // grad, argmax [N, C, H*W, 4], boxes [N, H*W, 4] -> grad_input [N, 4C, height, width]
  m.def("_border_align_backward(Tensor grad, Tensor boxes, Tensor argmax, int pool_size, SymInt height, SymInt width) -> Tensor");
}
