// Schema of fastdet::soft_nms. Kernels: cpu/soft_nms_kernel.cpp, cuda/soft_nms_kernel.cu;
// fake kernel and autocast: python/fastdet/ops/soft_nms.py. Not differentiable.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.soft_nms");
  // boxes [N, 4], scores [N], idxs [N] int64 (class ids; boxes of different classes never decay
  // each other) -> (keep [K] int64 in selection order, decayed scores [K] in the scores' dtype).
  m.def("soft_nms(Tensor boxes, Tensor scores, float iou_threshold=0.3, float sigma=0.5, float min_score=0.001, "
        "str method='linear', Tensor? idxs=None) -> (Tensor, Tensor)");
}
