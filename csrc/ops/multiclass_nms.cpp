// Schema of fastdet::multiclass_nms (ONNX NonMaxSuppression / TensorRT EfficientNMS semantics with
// fixed-shape outputs). Kernels: cpu/multiclass_nms_kernel.cpp, cuda/multiclass_nms_kernel.cu;
// fake kernel and autocast: python/fastdet/ops/multiclass_nms.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastdet, m) {
  m.set_python_module("fastdet.ops.multiclass_nms");
  // boxes [B, N, 4] or [B, N, C, 4], scores [B, N, C] -> num_dets [B] int64, boxes [B, K, 4],
  // scores [B, K], labels [B, K] int64, indices [B, K] int64 (n in [0, N)); K = max_total.
  m.def("multiclass_nms(Tensor boxes, Tensor scores, float score_threshold, float iou_threshold, "
        "int max_per_class, int max_total, bool class_agnostic=False) "
        "-> (Tensor num_dets, Tensor boxes, Tensor scores, Tensor labels, Tensor indices)");
}
