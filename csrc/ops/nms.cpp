// Schemas of fastdet::nms and fastdet::batched_nms. Kernels: cpu/nms_kernel.cpp, cuda/nms_kernel.cu;
// fake kernels and autocast: python/fastdet/ops/nms.py. Not differentiable (the outputs are indices).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.nms");
  // boxes [N, 4] (x1, y1, x2, y2), scores [N] -> keep [K] int64 indices into boxes, by decreasing
  // score (ties: lower index first); max_output = -1 keeps all, >= 0 keeps at most that many.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold, int max_output=-1) -> Tensor");
  // boxes [N, 4], scores [N], idxs [N] int64 class ids -> keep [K] int64: the union of per-class
  // nms, by decreasing score (ties: lower index first).
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
