// Schemas of fastdet::deform_conv2d and its backward. Kernels: cpu/deform_conv2d_kernel.cpp,
// cuda/deform_conv2d_kernel.cu; fake kernels, autograd, autocast and ONNX export:
// python/fastdet/ops/deform_conv2d.py. Shapes: ops/deform_conv2d.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.deform_conv2d");
  // input [N, C, H, W], offset [N, 2*OG*KH*KW, HO, WO], weight [COUT, C/G, KH, KW], bias [COUT]?,
  // mask [N, OG*KH*KW, HO, WO]? -> output [N, COUT, HO, WO]
  m.def("deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, int[2] stride, "
        "int[2] padding, int[2] dilation) -> Tensor");
  // grad [N, COUT, HO, WO] -> (grad_input, grad_offset, grad_mask ([0] without a mask), grad_weight, grad_bias [COUT])
  m.def("_deform_conv2d_backward(Tensor grad, Tensor input, Tensor offset, Tensor weight, Tensor? mask, "
        "int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
