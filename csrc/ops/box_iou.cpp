// Schemas of fastdet::box_iou and its backward. Kernels: cpu/box_iou_kernel.cpp, cuda/box_iou_kernel.cu;
// fake kernel, autograd and autocast: python/fastdet/ops/box_iou.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.box_iou");
  // boxes1 [N,4] x boxes2 [M,4] -> [N,M]; [B,N,4] x [B,M,4] -> [B,N,M]; aligned: [...,4] x [...,4] -> [...]
  m.def("box_iou(Tensor boxes1, Tensor boxes2, str mode='iou', bool aligned=False, float eps=1e-07) -> Tensor");
  // grad has the forward output's shape; returns (grad_boxes1, grad_boxes2).
  m.def("_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str mode, bool aligned, float eps) -> (Tensor, Tensor)");
}
