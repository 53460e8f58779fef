// Schemas of fastdet::corner_pool, fastdet::corner_pool_sum and their backwards. Kernels:
// cpu/corner_pool_kernel.cpp, cuda/corner_pool_kernel.cu; fake kernels and autograd:
// python/fastdet/ops/corner_pool.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.corner_pool");
  // input [N, C, H, W] -> [N, C, H, W]; mode: 'top' | 'bottom' | 'left' | 'right'
  m.def("corner_pool(Tensor input, str mode) -> Tensor");
  // grad [N, C, H, W] (of the output), input [N, C, H, W] -> grad_input [N, C, H, W]
  m.def("_corner_pool_backward(Tensor grad, Tensor input, str mode) -> Tensor");
  // a, b [N, C, H, W] -> corner_pool(a, vertical) + corner_pool(b, horizontal) in one pass;
  // corner: 'top_left' | 'bottom_right' | 'top_right' | 'bottom_left'
  m.def("corner_pool_sum(Tensor a, Tensor b, str corner='top_left') -> Tensor");
  // grad [N, C, H, W] -> (grad_a, grad_b)
  m.def("_corner_pool_sum_backward(Tensor grad, Tensor a, Tensor b, str corner) -> (Tensor, Tensor)");
}
