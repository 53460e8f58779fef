// Schemas of fastdet::sigmoid_focal_loss and its backward. Kernels: cpu/sigmoid_focal_loss_kernel.cpp,
// cuda/sigmoid_focal_loss_kernel.cu; fake kernel, autograd and autocast: python/fastdet/ops/sigmoid_focal_loss.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.sigmoid_focal_loss");
  // inputs [..., C] logits; targets: dense [..., C] floats in [0, 1], or int64 class indices [...]
  // in [0, C] (C = background); weight: [..., C], [...] / [..., 1] or [C] / [1, ..., C].
  // reduction 'none' -> [..., C]; 'mean' / 'sum' -> scalar.
  m.def("sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha=0.25, float gamma=2.0, "
        "str reduction='none', Tensor? weight=None) -> Tensor");
  // grad has the forward output's shape; returns grad_inputs [..., C].
  m.def("_sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
        "str reduction, Tensor? weight) -> Tensor");
}
